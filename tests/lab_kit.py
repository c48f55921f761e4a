"""What the emulated-fleet tests share: the repository root, the ``netns``
skip mark (root, iproute2 and ``ip netns`` needed) and a leftovers probe."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _netns_usable() -> str | None:
    if os.geteuid() != 0:
        return "not root: network namespaces need root (run the tests as root: sudo ./scripts/test)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) not installed: apt-get install iproute2 (./scripts/install does)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return (
            f"'ip netns' unavailable ({probe.stderr.strip()}): run as root where network "
            "namespaces are allowed (a container needs CAP_SYS_ADMIN)"
        )
    return None


_skip = _netns_usable()
netns = pytest.mark.skipif(_skip is not None, reason=_skip or "")


def leftovers(prefix: str) -> list[str]:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found = [line.split()[0] for line in ns.splitlines() if line.startswith(f"{prefix}-")]
    found += [line.split()[1] for line in links.splitlines() if f" {prefix}-" in line]
    return found

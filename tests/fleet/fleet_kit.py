"""What the fleet tests over loopback sshd share (their fleet is conftest's
``loopback_fleet``): a build, an inventory, running ``roost`` against them,
and running a command in a host's own mount namespace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fleet.sshd_harness import SshdFleet


def build_tree(root: Path) -> Path:
    src = root / "build"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_bytes(b"#!/bin/sh\necho app\n")
    (src / "bin" / "app").chmod(0o755)
    (src / "data.bin").write_bytes(os.urandom(3 << 20))
    return src


def inventory(root: Path, f: SshdFleet) -> Path:
    path = root / "inventory.ini"
    lines = "\n".join(f.inventory_line(h) for h in f.hosts)
    path.write_text(f"[tracker]\n{f.inventory_line(f.hosts[0])}\n\n[peer]\n{lines}\n")
    return path


def start(f: SshdFleet, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "roost", *args],
        env={**f.env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def in_host(f: SshdFleet, index: int, *argv: str) -> None:
    """Run ``argv`` in host ``index``'s mount namespace (its own /opt)."""
    pid = f.hosts[index].holder_pid
    assert pid is not None
    subprocess.run(["nsenter", "-t", str(pid), "-m", "--", *argv], check=True)

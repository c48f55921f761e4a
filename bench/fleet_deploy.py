"""Benchmark (not a test): ``roost deploy -i`` to N emulated sshd hosts vs
``roost deploy --local N`` with the same artifact.

    python bench/fleet_deploy.py [--hosts 8] [--size-mib 64]

With ``--bootstrap-only``, times a forced ``roost bootstrap`` with wheel relays
off and on instead, the controller's own link shaped to ``--controller-mbit``
(the case relays are for: one controller, many hosts):

    python bench/fleet_deploy.py --bootstrap-only --hosts 8 --controller-mbit 50

Needs root (network namespaces). Prints one JSON object with the times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fleet.sshd_harness import SshdFleet


def _artifact(root: Path, size_mib: int) -> Path:
    src = root / "build"
    src.mkdir()
    for i in range(4):
        (src / f"part{i}.bin").write_bytes(os.urandom(size_mib * 1024 * 1024 // 4))
    return src


def _time(cmd: list[str], env: dict[str, str]) -> tuple[float, dict]:
    t = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - t
    try:
        summary = json.loads(out.stdout)
    except ValueError:
        summary = {"ok": False, "stderr": out.stderr[-500:]}
    return seconds, summary


def _bootstrap_relays(f: SshdFleet, work: Path, a: argparse.Namespace) -> dict:
    """Forced bootstraps, relays off then on, the controller's link shaped."""
    if f.lab is None:
        raise SystemExit("--bootstrap-only needs network namespaces")
    link = f.lab.controller_link
    rate = f"{a.controller_mbit}mbit"
    burst = str(max(32 * 1024, int(a.controller_mbit * 1e6 / 8 / 200)))
    tbf = ["tbf", "rate", rate, "burst", burst, "latency", "50ms"]
    subprocess.run(["tc", "qdisc", "replace", "dev", link, "root", *tbf], check=True)
    inv = work / "hosts"
    inv.write_text("".join(f"root@{h.address}:{h.port}\n" for h in f.hosts))
    roost = [sys.executable, "-m", "roost", "bootstrap", "-i", str(inv), "--json"]
    roost += ["--wheel-cache", a.wheel_cache, "--force"]
    out: dict = {"hosts": a.hosts, "controller_mbit": a.controller_mbit}
    try:
        # the first bootstrap also creates every venv: not counted
        warm, _ = _time([*roost, "--bootstrap-relay", "4"], f.env())
        out["first_bootstrap_seconds"] = round(warm, 2)
        for relay in ("0", "4", "0", "4"):
            seconds, summary = _time([*roost, "--bootstrap-relay", relay], f.env())
            rows = summary.get("hosts", [])
            relayed = sum(1 for r in rows if str(r.get("result", "")).startswith("installed from"))
            key = f"relay_{relay}"
            out.setdefault(key, []).append(
                {"seconds": round(seconds, 2), "ok": summary.get("ok"), "relayed": relayed}
            )
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", link, "root"], capture_output=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--wheel-cache", default="/var/tmp/roost-test-wheels")
    ap.add_argument("--bootstrap-only", action="store_true")
    ap.add_argument("--controller-mbit", type=float, default=50.0)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="roost-bench-"))
    f = SshdFleet(a.hosts).up()
    try:
        if a.bootstrap_only:
            print(json.dumps(_bootstrap_relays(f, work, a), indent=1))
            return 0
        src = _artifact(work, a.size_mib)
        inv = work / "hosts"
        inv.write_text("[peer]\n" + "".join(f.inventory_line(h) + "\n" for h in f.hosts))
        env = f.env()
        roost = [sys.executable, "-m", "roost"]
        t = time.monotonic()
        boot = subprocess.run(
            [*roost, "bootstrap", "-i", str(inv), "--wheel-cache", a.wheel_cache, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        boot_s = time.monotonic() - t
        fleet_cmd = [
            *roost,
            "deploy",
            str(src),
            "-i",
            str(inv),
            "--tag",
            "b1",
            "--dest",
            "/opt/app",
            "--linger",
            "0",
            "--json",
            "--wheel-cache",
            a.wheel_cache,
        ]
        fleet_s, fleet_sum = _time(fleet_cmd, env)
        local_dest = work / "local"
        local_cmd = [
            *roost,
            "deploy",
            str(src),
            "--local",
            str(a.hosts),
            "--tag",
            "b1",
            "--dest",
            str(local_dest),
            "--linger",
            "0",
            "--json",
        ]
        local_s, local_sum = _time(local_cmd, env)
        print(
            json.dumps(
                {
                    "hosts": a.hosts,
                    "size_mib": a.size_mib,
                    "bootstrap_seconds": round(boot_s, 2),
                    "bootstrap_ok": boot.returncode == 0,
                    "fleet_ssh_seconds": round(fleet_s, 2),
                    "fleet_ssh_ok": fleet_sum.get("ok"),
                    "fleet_ssh_transfer_seconds": fleet_sum.get("seconds"),
                    "local_seconds": round(local_s, 2),
                    "local_ok": local_sum.get("ok"),
                    "local_transfer_seconds": local_sum.get("seconds"),
                },
                indent=1,
            )
        )
    finally:
        f.down()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

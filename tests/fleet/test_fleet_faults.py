"""``roost deploy -i`` over real sshd hosts, in faults: the controller
SIGKILLed as the first release appears and re-run (every hook exactly once,
the hosts byte-identical), and one host's destination on a full disk (named
with a one-line reason while the others finish).

The hosts are sshd on loopback ports, each in its own mount namespace with
its own /tmp and /opt (no network namespaces: they collide between runs on
one machine).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.fleet.fleet_kit import build_tree, in_host, inventory, start
from tests.fleet.sshd_harness import SshdFleet

pytestmark = pytest.mark.timeout(400)


def test_controller_killed_as_a_release_appears_then_rerun_runs_each_hook_once(
    loopback_fleet: SshdFleet, tmp_path: Path, wheel_cache: Path
) -> None:
    f = loopback_fleet
    src, inv = build_tree(tmp_path), inventory(tmp_path, f)
    args = ["deploy", str(src), "-i", str(inv), "--tag", "K1", "--dest", "/opt/kill"]
    args += ["--wheel-cache", str(wheel_cache), "--linger", "1"]
    args += ["--hook", 'echo "$ROOST_PATH" >> /opt/kill/hooks.log']
    # The controller's temp and run directories, to see what it leaves.
    tmp, run = tmp_path / "tmp", tmp_path / "run"
    tmp.mkdir()
    run.mkdir()
    env = {"TMPDIR": str(tmp), "XDG_RUNTIME_DIR": str(run)}
    proc = start(f, *args, env=env)
    releases = [h.path("/opt/kill/K1") for h in f.hosts]
    deadline = time.monotonic() + 300
    while not any(r.is_dir() for r in releases):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    installed = sum(r.is_dir() for r in releases)
    time.sleep(1)  # what was in flight on the hosts lands, or dies of the broken pipe
    left = [p.name for p in tmp.iterdir()]
    assert [n[:13] for n in left] == ["roost-deploy-"]  # the release, on the controller

    logs = [h.path("/opt/kill/hooks.log") for h in f.hosts]
    before = [len(p.read_text().splitlines()) if p.exists() else 0 for p in logs]
    rerun = start(f, *args, "--json", env=env)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out + err
    assert "removed what 1 killed deploy(s) left" in err
    assert list(tmp.iterdir()) == [] and list((run / "roost").iterdir()) == []
    summary = json.loads(out)
    assert summary["hosts_ok"] == len(f.hosts)
    counts = [p.read_text().splitlines() for p in logs]
    print(f"installed at the kill: {installed}; hooks before the re-run {before}, after {counts}")
    assert counts == [["/opt/kill/K1"]] * len(f.hosts)  # every host exactly once
    for r in releases:
        assert (r / "data.bin").read_bytes() == (src / "data.bin").read_bytes()
        assert (r / "bin" / "app").read_bytes() == (src / "bin" / "app").read_bytes()


def test_one_host_with_a_full_disk_is_named_while_the_others_finish(
    loopback_fleet: SshdFleet, tmp_path: Path, wheel_cache: Path
) -> None:
    f = loopback_fleet
    in_host(f, 1, "sh", "-c", "mkdir -p /opt/full && mount -t tmpfs -o size=1m t /opt/full")
    src, inv = build_tree(tmp_path), inventory(tmp_path, f)
    args = ["deploy", str(src), "-i", str(inv), "--tag", "F1", "--dest", "/opt/full"]
    args += ["--wheel-cache", str(wheel_cache), "--linger", "0", "--json"]
    run = start(f, *args)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 1, out + err
    hosts = {h["name"]: h for h in json.loads(out)["hosts"]}
    full = f.hosts[1].name
    print(f"{full}: {hosts[full]['error']}")
    assert not hosts[full]["ok"]
    # Found before the download: the check of room on the destination's device.
    assert hosts[full]["error"].startswith(
        "not enough space on the device of /opt/full for F1: 3.0 MiB needed, "
    ), hosts[full]["error"]
    assert hosts[full]["bytes_down"] == 0
    for h in (f.hosts[0], f.hosts[2]):
        assert hosts[h.name]["ok"], hosts[h.name]
        got = h.path("/opt/full/F1") / "data.bin"
        assert got.read_bytes() == (src / "data.bin").read_bytes()
    # Nothing half-written left on the full host: no staging tree, no release.
    assert list(f.hosts[1].path("/opt/full").iterdir()) == []

"""``roost deploy -i --activate``, ``roost releases`` and ``roost rollback``
over real sshd hosts: v1 active everywhere, v2 distributed to every host and
halted at wave 2 by a failing health check (wave 1 switched back), then a
switch forward and an instant rollback, downloading nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.fleet.fleet_kit import build_tree, in_host, inventory, start
from tests.fleet.sshd_harness import SshdFleet

pytestmark = pytest.mark.timeout(400)


def _roost(f: SshdFleet, *args: str) -> tuple[int, str, str]:
    proc = start(f, *args)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _current(f: SshdFleet, index: int) -> str:
    link = f.hosts[index].path("/opt/app/current")
    return (link / "bin" / "app").read_text()


def test_activate_waves_rollback_over_ssh(
    loopback_fleet: SshdFleet, tmp_path: Path, wheel_cache: Path
) -> None:
    f = loopback_fleet
    src, inv = build_tree(tmp_path), inventory(tmp_path, f)
    ssh = ["-i", str(inv), "--wheel-cache", str(wheel_cache)]
    deploy = ["deploy", str(src), *ssh, "--dest", "/opt/app", "--linger", "0", "--activate"]
    rc, out, err = _roost(f, *deploy, "--tag", "v1", "--json")
    assert rc == 0, out + err
    assert json.loads(out)["rollout"]["ok"]
    assert all(_current(f, i) == "#!/bin/sh\necho app\n" for i in range(3))

    (src / "bin" / "app").write_text("#!/bin/sh\necho v2\n")
    in_host(f, 1, "touch", "/opt/app/SICK")
    waves = ["--waves", "1,2,100%", "--health", "test ! -e ../../SICK", "--rollback-on-fail"]
    rc, out, err = _roost(f, *deploy, "--tag", "v2", *waves, "--json")
    assert rc == 1, out + err
    doc = json.loads(out)
    rollout = doc["rollout"]
    # Every host installed v2 (distribution is not gated); the rollout halted.
    assert all(h["bytes_down"] > 0 or h["ok"] for h in doc["hosts"]), json.dumps(doc["hosts"])
    assert rollout["halted_at"] == 2, json.dumps(doc["hosts"])
    hosts = {h["host"]: h for h in rollout["hosts"]}
    names = [h.name for h in f.hosts]
    assert hosts[names[0]]["wave"] == 1 and hosts[names[0]]["rolled_back"]
    assert hosts[names[1]]["health"] == "exited with status 1"
    assert hosts[names[2]]["wave"] is None
    for i in range(3):  # v2 is on every host; every host runs v1
        assert f.hosts[i].path("/opt/app/releases/v2/bin/app").read_text().endswith("v2\n")
        assert _current(f, i).endswith("app\n")

    rc, out, err = _roost(f, "releases", *ssh, "--dest", "/opt/app", "--json")
    assert rc == 0, err
    listed = {h["host"]: h for h in json.loads(out)["hosts"]}
    assert all(
        listed[n]["current"] == "v1" and listed[n]["installed"] == ["v1", "v2"] for n in names
    )
    # Wave 1's switch back undid v2's activation (`roost rollback --reject v2`):
    # v2, which failed, is nobody's previous release for a later rollback.
    assert all(listed[n]["previous"] is None for n in names), listed

    rc, out, err = _roost(f, "activate", "v2", *ssh, "--dest", "/opt/app")
    assert rc == 0, out + err
    assert all(_current(f, i).endswith("v2\n") for i in range(3))
    started = time.monotonic()
    rc, out, err = _roost(f, "rollback", *ssh, "--dest", "/opt/app")
    seconds = time.monotonic() - started
    assert rc == 0, out + err
    assert f"{names[2]}  v2 -> v1" in out and "3 of 3 hosts ok" in out
    assert all(_current(f, i).endswith("app\n") for i in range(3))
    print(f"roost rollback across {len(names)} SSH hosts: {seconds:.2f} s")
    # A host without the release is named, and left as it was.
    rc, out, _ = _roost(f, "rollback", *ssh, "--dest", "/opt/app", "--to", "v9")
    assert rc == 1 and "release v9 is not installed in /opt/app/releases" in out

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


def test_rollback_on_fail_over_ssh_leaves_each_hosts_previous_as_it_was(
    loopback_fleet: SshdFleet, tmp_path: Path, wheel_cache: Path
) -> None:
    # The switch back undoes the failed activation (`roost rollback --reject`):
    # a later plain rollback takes every host to v1, never to the sick v3.
    f = loopback_fleet  # shared with the test above: a destination of its own
    src, inv = build_tree(tmp_path), inventory(tmp_path, f)
    ssh = ["-i", str(inv), "--wheel-cache", str(wheel_cache)]
    deploy = ["deploy", str(src), *ssh, "--dest", "/opt/rb", "--linger", "0", "--activate"]
    for tag in ("v1", "v2"):
        (src / "bin" / "app").write_text(f"#!/bin/sh\necho {tag}\n")
        rc, out, err = _roost(f, *deploy, "--tag", tag, "--json")
        assert rc == 0, out + err
    (src / "bin" / "app").write_text("#!/bin/sh\necho v3\n")
    in_host(f, 1, "touch", "/opt/rb/SICK")
    waves = ["--waves", "1,2,100%", "--health", "test ! -e ../../SICK", "--rollback-on-fail"]
    rc, out, err = _roost(f, *deploy, "--tag", "v3", *waves, "--json")
    assert rc == 1, out + err
    rc, out, err = _roost(f, "releases", *ssh, "--dest", "/opt/rb", "--json")
    assert rc == 0, err
    rows = json.loads(out)["hosts"]
    assert [(r["current"], r["previous"]) for r in rows] == [("v2", "v1")] * len(rows), rows
    rc, out, err = _roost(f, "rollback", *ssh, "--dest", "/opt/rb")
    assert rc == 0 and out.count("v2 -> v1") == len(rows), out + err

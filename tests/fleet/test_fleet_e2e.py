"""``roost deploy -i`` and the fleet verbs against real sshd hosts.

Four healthy hosts (own /opt and /tmp each), one refusing the test key and
one address where nobody listens: the deploy bootstraps roost over SSH,
succeeds on the four, names the two others with their reasons, and a re-run
completes only what is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.fleet.sshd_harness import ONE_MODE, SshdFleet, SshHost

pytestmark = pytest.mark.timeout(300)


def _build(root: Path) -> Path:
    src = root / "build"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_bytes(b"#!/bin/sh\necho app\n")
    (src / "bin" / "app").chmod(0o755)
    (src / "data.bin").write_bytes(bytes(range(256)) * 4096 * 3)  # 3 MiB
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: x\n")
    return src


def _inventory(root: Path, f: SshdFleet) -> Path:
    """ansible-lssd's layout: production + group_vars/all."""
    hosts = "\n".join(f.inventory_line(h) for h in f.hosts)
    assert f.refusing is not None
    text = (
        "# ansible host\n[ansible_host]\nlocalhost ansible_connection=local\n\n"
        f"[tracker]\n{f.inventory_line(f.hosts[0])} node_type=tracker\n\n"
        f"[seeder]\n{f.inventory_line(f.hosts[0])} node_type=seeder\n\n"
        f"[peer]\n{hosts}\n{f.inventory_line(f.refusing)}\n"
        f"down ansible_host={f.down_address} ansible_port={f.down_port}\n"
    )
    (root / "group_vars").mkdir()
    (root / "group_vars" / "all").write_text(
        "# deploy tag\ntag: Deploy1\n\nseeder_files_path:  ~/builds\n"
        "destination_path:   /opt/hoge\n"
    )
    path = root / "production"
    path.write_text(text)
    return path


def _roost(f: SshdFleet, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roost", *args],
        env=f.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _by_host(summary: dict) -> dict[str, dict]:
    return {h["name"]: h for h in summary["hosts"]}


def test_deploy_over_ssh_partial_failure_then_rerun(
    sshd_fleet: SshdFleet, tmp_path: Path, wheel_cache: Path
) -> None:
    f = sshd_fleet
    src = _build(tmp_path)
    inv = _inventory(tmp_path, f)
    common = ["-i", str(inv), "--wheel-cache", str(wheel_cache), "--connect-timeout", "4"]
    run = _roost(f, "deploy", str(src), *common, "--linger", "1", "--json")
    assert run.returncode == 1, run.stderr
    summary = json.loads(run.stdout)
    hosts = _by_host(summary)
    assert [n for n, h in hosts.items() if h["ok"]] == ["h1", "h2", "h3", "h4"], run.stdout
    assert "authentication refused" in hosts["refuse"]["error"]
    assert "cannot reach" in hosts["down"]["error"] or "timed out" in hosts["down"]["error"]
    for h in f.hosts:
        installed = h.path("/opt/hoge/Deploy1")
        assert (installed / "data.bin").read_bytes() == (src / "data.bin").read_bytes()
        assert (installed / "bin" / "app").stat().st_mode & 0o777 == 0o755
        assert not (installed / ".git").exists()
        # roost went into the host's own /opt by bootstrap
        assert h.path("/opt/roost/venv/bin/roost").exists()
    # hosts do not share a destination: each has its own /opt
    assert len({h.path("/opt").stat().st_dev for h in f.hosts}) == len(f.hosts)
    # the origin (a seed on this machine) handed back what it sent: every
    # piece left it at least once, and the hosts relayed the rest
    assert summary["seeder"]["bytes_up"] >= summary["size"], summary["seeder"]
    # over its feed, which takes only requests with this deploy's token
    assert summary["seeder"]["feed_up"] >= summary["size"], summary["seeder"]

    # one host lost its copy: a re-run completes it and leaves the others alone
    shutil.rmtree(f.hosts[2].path("/opt/hoge/Deploy1"))
    # (its lingering seed from the deploy above may still write resume data
    # naming that deploy's tracker token: the new .torrent's tracker must win;
    # and it may remove its own pid file while the tree goes)
    shutil.rmtree(f.hosts[2].path("/tmp/roost"), ignore_errors=True)
    run = _roost(f, "deploy", str(src), *common, "--linger", "1", "--json", timeout=120)
    summary = json.loads(run.stdout)
    hosts = _by_host(summary)
    assert all(hosts[h.name]["ok"] for h in f.hosts), run.stdout
    assert hosts["h3"]["bytes_down"] > 0
    assert not hosts["h3"]["already_installed"]
    for name in ("h1", "h2", "h4"):
        assert hosts[name]["already_installed"], hosts[name]
        assert hosts[name]["bytes_down"] == 0, hosts[name]
    assert (f.hosts[2].path("/opt/hoge/Deploy1") / "data.bin").exists()

    # the next release changes one small file: each host takes the rest from
    # Deploy1 beside it, and only the change travels (issue 14, over SSH)
    (src / "bin" / "app").write_bytes(b"#!/bin/sh\necho app v2\n")
    run = _roost(f, "deploy", str(src), *common, "--tag", "Deploy2", "--linger", "1", "--json")
    hosts = _by_host(json.loads(run.stdout))
    data_size = (src / "data.bin").stat().st_size
    for h in f.hosts:
        assert hosts[h.name]["ok"], run.stdout
        assert hosts[h.name]["bytes_reused"] >= data_size, hosts[h.name]
        assert hosts[h.name]["bytes_down"] < data_size // 4, hosts[h.name]
        installed = h.path("/opt/hoge/Deploy2")
        assert (installed / "bin" / "app").read_bytes() == (src / "bin" / "app").read_bytes()
        assert (installed / "data.bin").read_bytes() == (src / "data.bin").read_bytes()
    # the tracker was stopped at the end
    out = _roost(f, "fleet", "stop-tracker", "-i", str(inv), "--json")
    assert json.loads(out.stdout)["hosts"][0]["result"]["stopped"] == []


@ONE_MODE
def test_fleet_verbs_murder_style(sshd_fleet: SshdFleet, tmp_path: Path, wheel_cache: Path) -> None:
    """Murder's manual flow: tracker, create on the seeder, seed, peer, stop."""
    f = sshd_fleet
    hosts = f.hosts[:3]
    inv = tmp_path / "hosts.txt"
    inv.write_text("".join(f"root@{h.address}:{h.port}\n" for h in hosts))
    base = ["-i", str(inv), "--json"]
    controller = f.lab.controller_address if f.lab is not None else "127.0.0.1"
    out = tmp_path / "torrents"
    assert _roost(f, "bootstrap", *base, "--wheel-cache", str(wheel_cache)).returncode == 0
    # the files to ship live on the seeder (the first host)
    seeder_build = hosts[0].path("/tmp/builds")
    (seeder_build / "sub").mkdir(parents=True)
    (seeder_build / "sub" / "f.txt").write_text("hello fleet\n")
    steps = [
        ("stop-tracker",),  # not running: not an error
        ("start-tracker", "--stats-allow", f"{controller}/32"),
        ("start-tracker",),  # already running: fine
        ("create", "--tag", "m1", "--files-path", "/tmp/builds", "--out", str(out)),
        ("start-seeding", "--tag", "m1", "--super-seed"),
        ("peer", "--tag", "m1", "--dest", "/opt/app", "--out", str(out), "--linger", "1"),
        ("stop-seeding", "--tag", "m1"),
        ("stop-all-seeding",),
        ("stop-all-peering",),
        ("stop-tracker",),
        ("clean",),
    ]
    results = {}
    for step in steps:
        r = _roost(f, "fleet", *step, *base)
        assert r.returncode == 0, (step, r.stdout, r.stderr)
        results.setdefault(step[0], []).append(json.loads(r.stdout))
        if step[0] == "start-tracker":
            # this machine may read the swarm's stats (roost status, the page)
            url = f"http://{hosts[0].address}:8998/stats.json"
            with urllib.request.urlopen(url, timeout=5) as page:
                assert "swarms" in json.loads(page.read())
    assert (out / "m1.torrent").is_file()
    for h in hosts:
        assert (h.path("/opt/app/m1") / "sub" / "f.txt").read_text() == "hello fleet\n"
    first_stop = results["stop-tracker"][0]["hosts"][0]["result"]
    assert first_stop["stopped"] == []
    assert results["start-tracker"][1]["hosts"][0]["result"]["state"] == "already running"
    assert results["stop-seeding"][0]["hosts"][0]["result"]["stopped"] == ["seed-m1"]
    assert results["stop-tracker"][1]["hosts"][0]["result"]["stopped"] == ["tracker"]
    assert not hosts[0].path("/tmp/roost/pids").exists() or not list(
        hosts[0].path("/tmp/roost/pids").iterdir()
    )


@ONE_MODE
def test_deploy_seeding_from_the_seeder_host(sshd_fleet: SshdFleet, tmp_path: Path) -> None:
    """``--seed-from seeder``: the payload is uploaded to the seeder, which seeds it."""
    f = sshd_fleet
    src = _build(tmp_path)
    inv = tmp_path / "inv.yml"

    def entry(h: SshHost) -> str:
        return f"        {h.name}: {{ansible_host: {h.address}, ansible_port: {h.port}}}\n"

    peers = "".join(entry(h) for h in f.hosts)
    inv.write_text(
        "all:\n  children:\n    seeder:\n      hosts:\n"
        f"{entry(f.hosts[1])}"
        f"    peer:\n      hosts:\n{peers}"
    )
    run = _roost(
        f,
        "deploy",
        str(src),
        "-i",
        str(inv),
        "--tag",
        "s2",
        "--dest",
        "/opt/s",
        "--seed-from",
        "seeder",
        "--no-bootstrap",
        "--super-seed",
        "--linger",
        "0",
        "--json",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout)
    assert summary["seed_from"] == "seeder" and summary["hosts_ok"] == len(f.hosts)
    for h in f.hosts:
        assert (h.path("/opt/s/s2") / "data.bin").stat().st_size == 3 * 1024 * 1024
    log = (f.hosts[1].path("/tmp/roost/logs") / "seed-s2.log").read_text()
    assert "super-seeding" in log, log
    # what the seeder host's origin sent came back with its stop, and its file went
    assert summary["seeder"]["bytes_up"] >= summary["size"], summary["seeder"]
    assert "stopped: uploaded" in log, log
    assert not (f.hosts[1].path("/tmp/roost/logs") / "seed-s2.stats.json").exists()
    # the seeder's process was stopped at the end, by its pid file
    assert not (f.hosts[1].path("/tmp/roost/pids") / "seed-s2.pid").exists()


@ONE_MODE
def test_deploy_the_build_already_on_the_seeder(
    sshd_fleet: SshdFleet, tmp_path: Path, wheel_cache: Path
) -> None:
    """ansible-lssd's full_deploy: the build was copied to the seeder's
    seeder_files_path; ``roost deploy seeder:`` packs and seeds it there."""
    f = sshd_fleet
    seeder = f.hosts[1]
    build = seeder.path("/tmp/builds-lssd")
    (build / "conf").mkdir(parents=True)
    (build / "conf" / "app.ini").write_text("[app]\nport = 80\n")
    (build / "blob.bin").write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    lines = "\n".join(f.inventory_line(h) for h in f.hosts)
    (tmp_path / "production").write_text(
        f"[tracker]\n{f.inventory_line(f.hosts[0])}\n\n[seeder]\n{f.inventory_line(seeder)}\n\n"
        f"[peer]\n{lines}\n"
    )
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all").write_text(
        "tag: Deploy9\nseeder_files_path: /tmp/builds-lssd\ndestination_path: /opt/lssd\n"
    )
    inv = str(tmp_path / "production")
    cache = ["--wheel-cache", str(wheel_cache)]
    run = _roost(f, "deploy", "seeder:", "-i", inv, *cache, "--linger", "0", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout)
    assert summary["seed_from"] == "seeder" and summary["size"] > 2 * 1024 * 1024
    for h in f.hosts:
        got = h.path("/opt/lssd/Deploy9")
        assert (got / "blob.bin").read_bytes() == (build / "blob.bin").read_bytes(), h.name
        assert (got / "conf" / "app.ini").read_text() == "[app]\nport = 80\n"
    # packed on the seeder, seeded from there (its feed with the deploy's
    # token: the hosts took every piece from it), stopped at the end
    assert summary["seeder"]["feed_up"] >= summary["size"], summary["seeder"]
    assert (seeder.path("/tmp/roost/releases") / "Deploy9.tar").is_file()
    assert not (seeder.path("/tmp/roost/pids") / "seed-Deploy9.pid").exists()


@ONE_MODE
def test_bootstrap_relays_wheels_between_hosts(
    sshd_fleet: SshdFleet, tmp_path: Path, wheel_cache: Path
) -> None:
    """The controller sends the wheels to one host; the others get them from
    hosts that have them, checked by sha256; the relays stop afterwards."""
    f = sshd_fleet
    inv = tmp_path / "hosts.txt"
    inv.write_text("".join(f"root@{h.address}:{h.port}\n" for h in f.hosts))
    base = ["-i", str(inv), "--wheel-cache", str(wheel_cache), "--json"]
    relay = ["--bootstrap-direct", "1", "--bootstrap-relay", "2"]
    run = _roost(f, "bootstrap", *base, *relay, "--force")
    assert run.returncode == 0, run.stdout + run.stderr
    results = {row["host"]: row["result"] for row in json.loads(run.stdout)["hosts"]}
    direct = [h for h, r in results.items() if r == "installed"]
    relayed = {h: r.split()[-1] for h, r in results.items() if r.startswith("installed from ")}
    # the first host's relay (2 slots) comes up while the controller's only
    # slot is still held: two hosts get the wheels from it
    assert len(direct) + len(relayed) == len(f.hosts) and len(relayed) >= 2, results
    assert all(src in results and src != h for h, src in relayed.items())
    for h in f.hosts:
        assert not (h.path("/tmp/roost/pids") / "wheel-relay.pid").exists(), h.name
    again = _roost(f, "bootstrap", *base, *relay)
    rows = json.loads(again.stdout)["hosts"]
    assert [row["result"] for row in rows] == ["already installed"] * len(f.hosts)

"""``roost peer`` as a real process against a real tracker and seeder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from roost import procs
from tests.peer_kit import Start, progress_until, run
from tests.release_kit import make_tree, snapshot
from tests.swarm_kit import MakeSwarm, random_file


def peer_args(torrent: Path, dest: Path, temp: Path, *extra: str) -> list[str]:
    return ["peer", str(torrent), "--dest", str(dest), "--temp-path", str(temp), *extra]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events if e["event"] not in ("progress", "started")]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src")


def test_peer_installs_a_byte_identical_tree(
    tree: Path, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    swarm = make_swarm(tree)
    dest = tmp_path / "dest"
    rc, events, err = run(
        roost_procs,
        *peer_args(swarm.torrent, dest, tmp_path / "temp", "--events", "json", "--linger", "0"),
    )
    assert rc == 0, err
    assert kinds(events) == ["complete", "installed", "done"]
    assert events[-1]["ok"] is True and events[-1]["down"] >= swarm.release.total_size  # type: ignore[attr-defined]
    assert events[-2]["path"] == str(dest / "t1")
    assert snapshot(dest / "t1") == snapshot(tree, skip_git=True)
    assert sorted(os.listdir(dest)) == [".t1.roost", "t1"]  # no staging left behind


@pytest.mark.parametrize("copy", [False, True])
def test_peer_links_the_download_into_place_unless_told_to_copy(
    tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start, copy: bool
) -> None:
    artifact = random_file(tmp_path / "build" / "app.bin", 3 << 20)
    swarm = make_swarm(artifact, is_file=True)
    temp = tmp_path / "temp"
    extra = ["--copy"] if copy else []
    rc, _, err = run(
        roost_procs,
        *peer_args(swarm.torrent, tmp_path / "dest", temp, "--linger", "0", *extra),
    )
    assert rc == 0, err
    placed = tmp_path / "dest" / "t1" / "app.bin"
    cached = temp / swarm.release.info_hash / "app.bin"  # type: ignore[attr-defined]
    assert placed.read_bytes() == artifact.read_bytes()
    assert (placed.stat().st_ino == cached.stat().st_ino) is not copy


@pytest.mark.parametrize("kind", ["file", "tree"])
def test_the_download_hashes_its_files_as_they_arrive_for_the_install(
    tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start, kind: str
) -> None:
    """The install's sha256 of every file was a read of the whole release
    after its last piece, on every host at once (bench/NOTES.md, session 21):
    the worker hashes each file as its pieces arrive, and the install takes
    that digest for the same, unchanged file."""
    if kind == "file":
        swarm = make_swarm(random_file(tmp_path / "build" / "app.bin", 3 << 20), is_file=True)
    else:
        tree = make_tree(tmp_path / "src")
        random_file(tree / "big.bin", 2 << 20)
        swarm = make_swarm(tree, tar=False)
    temp, dest = tmp_path / "temp", tmp_path / "dest" / "t1"
    rc, _, err = run(roost_procs, *peer_args(swarm.torrent, dest.parent, temp, "--linger", "0"))
    assert rc == 0, err
    work = temp / swarm.release.info_hash  # type: ignore[attr-defined]
    root = work if kind == "file" else work / "t1"
    hashed = json.loads((work / "hashed.json").read_bytes())
    installed = [p for p in dest.rglob("*") if p.is_file() and not p.is_symlink()]
    assert sorted(hashed) == sorted(str(p.relative_to(dest)) for p in installed if p.stat().st_size)
    for name, record in hashed.items():
        st = (root / name).stat()
        digest = hashlib.sha256((root / name).read_bytes()).hexdigest()
        # (the install set the manifest's mtime on the linked file after it
        # took the digest, made for the mtime the download had)
        assert record[:3] == [digest, st.st_ino, st.st_size], name
        assert (dest / name).stat().st_ino == st.st_ino  # linked, not copied


def test_peer_returns_while_a_detached_worker_lingers(
    tree: Path, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    swarm = make_swarm(tree)
    temp = tmp_path / "temp"
    started = time.monotonic()
    rc, events, err = run(
        roost_procs,
        *peer_args(swarm.torrent, tmp_path / "dest", temp, "--events", "json", "--linger", "60"),
    )
    assert rc == 0, err
    assert time.monotonic() - started < 30  # the caller is not held up by the linger
    pid_file = temp / swarm.release.info_hash / "worker.pid"  # type: ignore[attr-defined]
    pid = procs.read_pid_file(pid_file)
    assert pid is not None, "the lingering worker should still run"
    assert os.getsid(pid) != os.getsid(0)  # in its own session, like Murder's fork

    # Run again while it lingers: the old worker is stopped (by its pid file),
    # the payload is still in the temp path and the tree in place.
    rc, events, err = run(
        roost_procs,
        *peer_args(swarm.torrent, tmp_path / "dest", temp, "--events", "json", "--linger", "0"),
    )
    assert rc == 0, err
    installed = next(e for e in events if e["event"] == "installed")
    assert installed["already"] is True
    assert events[-1]["down"] == 0
    assert not procs.alive(pid)


def test_a_lingering_worker_whose_download_directory_is_replaced_stops(
    tree: Path, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    """An operator clears the download area while a worker lingers, and a new
    download of the release starts there: the old worker must not serve
    the new one's half-written files (its peers would refuse the pieces and
    ban the host), nor write its resume data among them."""
    swarm = make_swarm(tree)
    temp = tmp_path / "temp"
    rc, _, err = run(
        roost_procs,
        *peer_args(swarm.torrent, tmp_path / "dest", temp, "--events", "json", "--linger", "60"),
    )
    assert rc == 0, err
    work = temp / swarm.release.info_hash  # type: ignore[attr-defined]
    pid = procs.read_pid_file(work / "worker.pid")
    assert pid is not None, "the lingering worker should still run"
    shutil.rmtree(work)
    work.mkdir()
    (work / "new.partial").write_bytes(b"")
    deadline = time.monotonic() + 10
    while procs.alive(pid):
        assert time.monotonic() < deadline, "the worker still seeds another download's files"
        time.sleep(0.05)
    assert sorted(p.name for p in work.iterdir()) == ["new.partial"]


def test_non_empty_destination_is_refused_and_clean_replaces_it(
    tree: Path, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    swarm = make_swarm(tree)
    dest = tmp_path / "dest"
    (dest / "t1").mkdir(parents=True)
    (dest / "t1" / "keep.txt").write_text("mine\n")
    args = peer_args(swarm.torrent, dest, tmp_path / "temp", "--events", "json", "--linger", "0")
    rc, events, err = run(roost_procs, *args)
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("roost: error: ") and "not empty" in lines[0]
    assert events[-2]["event"] == "failed" and "not empty" in events[-2]["error"]
    assert events[-1] == {**events[-1], "event": "done", "ok": False}
    assert "complete" not in kinds(events)  # refused before spending a download
    assert events[-1]["down"] == 0
    assert os.listdir(dest / "t1") == ["keep.txt"]
    assert sorted(os.listdir(dest)) == ["t1"]

    rc, events, err = run(roost_procs, *args, "--clean")
    assert rc == 0, err
    assert snapshot(dest / "t1") == snapshot(tree, skip_git=True)


def test_installed_release_is_recognised_without_a_swarm(
    tree: Path, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    """A re-run on a host that holds the release needs no seeder, no cache and
    runs no hook again: the tree itself proves what it holds, its record that
    the hook ran."""
    swarm = make_swarm(tree)
    dest = tmp_path / "dest"
    marker = tmp_path / "hook-ran"
    hook = ("--hook", f"echo ran >> {marker}")
    args = peer_args(swarm.torrent, dest, tmp_path / "temp", "--events", "json", "--linger", "0")
    rc, _, err = run(roost_procs, *args, *hook)
    assert rc == 0, err
    assert marker.read_text() == "ran\n"
    swarm.seeder.stop()  # type: ignore[attr-defined]
    fresh = peer_args(swarm.torrent, dest, tmp_path / "fresh-temp", "--events", "json")
    rc, events, err = run(roost_procs, *fresh, "--timeout", "20", *hook, timeout=30)
    assert rc == 0, err
    assert kinds(events) == ["installed", "done"]
    assert events[1]["already"] is True and events[-1]["down"] == 0  # events[0]: started
    assert marker.read_text() == "ran\n"

    # One byte changed in the tree: it no longer holds the release, and the
    # peer refuses it, saying so, still without downloading.
    victim = next(p for p in sorted((dest / "t1").rglob("*")) if p.is_file() and not p.is_symlink())
    victim.write_bytes(victim.read_bytes() + b"x")
    rc, events, err = run(roost_procs, *fresh, "--timeout", "20", timeout=30)
    assert rc != 0 and "holds this release, changed since it was installed" in err
    assert "complete" not in kinds(events)


def test_hook_runs_with_the_release_in_its_environment(
    tree: Path, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    swarm = make_swarm(tree)
    out = tmp_path / "hook.out"
    hook = f"env | grep ^ROOST_ | sort > {out}; pwd >> {out}"
    rc, _events, err = run(
        roost_procs,
        *peer_args(swarm.torrent, tmp_path / "dest", tmp_path / "temp", "--linger", "0"),
        "--hook",
        hook,
    )
    assert rc == 0, err
    target = tmp_path / "dest" / "t1"
    assert out.read_text().splitlines() == [
        f"ROOST_INFO_HASH={swarm.release.info_hash}",  # type: ignore[attr-defined]
        f"ROOST_PATH={target}",
        "ROOST_TAG=t1",
        str(target),
    ]


def test_failing_hook_is_reported_with_status_and_stderr(
    tree: Path, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    swarm = make_swarm(tree)
    rc, events, err = run(
        roost_procs,
        *peer_args(swarm.torrent, tmp_path / "dest", tmp_path / "temp", "--linger", "0"),
        "--events",
        "json",
        "--hook",
        "echo starting; echo restart failed >&2; exit 3",
    )
    assert rc == 1
    assert "exited with status 3: restart failed" in err
    failed = next(e for e in events if e["event"] == "failed")
    assert "status 3" in failed["error"]


def test_unreadable_torrent_is_a_one_line_error(tmp_path: Path, roost_procs: Start) -> None:
    rc, _events, err = run(
        roost_procs, *peer_args(tmp_path / "missing.torrent", tmp_path / "d", tmp_path / "t")
    )
    assert rc == 2
    assert err.strip().startswith("roost: error: cannot read torrent") and err.count("\n") == 1
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("mode", ["foreground", "detached"])
def test_killed_peer_resumes_from_what_it_has(
    mode: str, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    source = random_file(tmp_path / "src" / "big.bin", 8 * 1024 * 1024)
    swarm = make_swarm(source.parent, upload_limit=2 * 1024 * 1024)
    size = swarm.release.total_size  # type: ignore[attr-defined]
    info_hash = swarm.release.info_hash  # type: ignore[attr-defined]
    temp, dest = tmp_path / "temp", tmp_path / "dest"
    args = peer_args(swarm.torrent, dest, temp, "--events", "json", "--linger", "0")
    extra = ["--foreground"] if mode == "foreground" else []

    first = roost_procs(*args, *extra)
    reached = progress_until(first, 0.3)
    first.send_signal(signal.SIGKILL)
    first.wait()
    if mode == "detached":
        # The worker notices its front is gone, saves resume data and stops.
        pid_file = temp / info_hash / "worker.pid"
        deadline = time.monotonic() + 15
        while procs.read_pid_file(pid_file) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert procs.read_pid_file(pid_file) is None
        assert (temp / info_hash / f"{info_hash}.resume").is_file()
    assert not dest.exists()

    rc, events, err = run(roost_procs, *args, *extra)
    assert rc == 0, err
    done = events[-1]
    assert done["event"] == "done" and done["ok"] is True
    assert done["down"] < size * (1 - reached) + 1024 * 1024, (reached, done)
    assert (dest / "t1" / "big.bin").read_bytes() == source.read_bytes()


def test_roost_seed_serves_a_peer_and_stops_by_pid_file(
    tree: Path, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    swarm = make_swarm(tree)
    swarm.seeder.stop()  # type: ignore[attr-defined]  # only the `roost seed` process serves
    release_dir = swarm.release.payload.parent  # type: ignore[attr-defined]
    pid_file = tmp_path / "run" / "seed.pid"
    seed = roost_procs(
        *("seed", str(swarm.torrent), "--from", str(release_dir)),
        *("--listen", "127.0.0.1", "--pid-file", str(pid_file)),
    )
    assert seed.stdout is not None
    banner = seed.stdout.readline().decode()
    assert banner.startswith("seeding t1 (") and swarm.release.info_hash in banner  # type: ignore[attr-defined]
    assert procs.read_pid_file(pid_file) == seed.pid
    rc, events, err = run(
        roost_procs,
        *peer_args(swarm.torrent, tmp_path / "dest", tmp_path / "temp", "--events", "json"),
        *("--linger", "0"),
    )
    assert rc == 0, err
    assert events[-1]["ok"] is True
    assert procs.stop_by_pid_file(pid_file)
    assert seed.wait(5) == 0
    assert not pid_file.exists()


def test_roost_seed_serves_a_tree_named_by_a_relative_payload_path(
    tree: Path, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    # libtorrent reads a renamed file's relative path under the save path:
    # `--payload build` from the build's parent looked for build/build/...
    swarm = make_swarm(tree, tar=False)
    assert swarm.release.kind == "tree"  # type: ignore[attr-defined]
    swarm.seeder.stop()  # type: ignore[attr-defined]  # only the `roost seed` process serves
    payload = swarm.release.payload  # type: ignore[attr-defined]
    relative = payload.relative_to(tmp_path.parent)
    assert len(relative.parts) > 1
    seed = roost_procs(
        *("seed", str(swarm.torrent), "--payload", str(relative), "--listen", "127.0.0.1"),
        cwd=tmp_path.parent,
    )
    assert seed.stdout is not None
    assert seed.stdout.readline().decode().startswith("seeding t1 (")
    rc, _events, err = run(
        roost_procs,
        *peer_args(swarm.torrent, tmp_path / "dest", tmp_path / "temp", "--events", "json"),
        *("--linger", "0", "--timeout", "30"),
    )
    assert rc == 0, err
    assert snapshot(tmp_path / "dest" / "t1") == snapshot(tree, skip_git=True)


def test_roost_seed_refuses_a_payload_of_the_wrong_size(
    tree: Path, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    swarm = make_swarm(tree)
    wrong = tmp_path / "other" / swarm.release.payload.name  # type: ignore[attr-defined]
    wrong.parent.mkdir()
    wrong.write_bytes(b"short")
    rc, _events, err = run(roost_procs, "seed", str(swarm.torrent), "--payload", str(wrong))
    assert rc == 2
    assert err.count("\n") == 1 and "has 5 bytes, the torrent says" in err


def test_roost_seed_refuses_a_negative_disk_thread_count(
    tree: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    swarm = make_swarm(tree)
    rc, _events, err = run(
        roost_procs,
        "seed",
        str(swarm.torrent),
        "--payload",
        str(swarm.release.payload),  # type: ignore[attr-defined]
        "--disk-threads",
        "-1",
    )
    assert rc == 2
    assert err.count("\n") == 1 and "--disk-threads must be at least 0, got -1" in err


def test_peer_with_no_seeder_times_out_with_one_line(
    tree: Path, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    swarm = make_swarm(tree)
    swarm.seeder.stop()  # type: ignore[attr-defined]  # a dead seeder
    temp = tmp_path / "temp"
    started = time.monotonic()
    rc, events, err = run(
        roost_procs,
        *peer_args(swarm.torrent, tmp_path / "dest", temp, "--events", "json"),
        *("--linger", "0", "--timeout", "3"),
    )
    assert rc == 1
    assert time.monotonic() - started < 20
    assert err.count("\n") == 1 and "timed out after 3s" in err
    assert events[-1]["event"] == "done" and events[-1]["ok"] is False
    assert not (tmp_path / "dest").exists()
    info_hash = swarm.release.info_hash  # type: ignore[attr-defined]
    assert procs.read_pid_file(temp / info_hash / "worker.pid") is None  # worker stopped too


def test_download_limit_caps_the_peer_on_a_local_network(
    tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    source = random_file(tmp_path / "src" / "four.bin", 4 * 1024 * 1024)
    swarm = make_swarm(source.parent)
    rc, events, err = run(
        roost_procs,
        *peer_args(swarm.torrent, tmp_path / "dest", tmp_path / "temp", "--events", "json"),
        *("--linger", "0", "--download-limit", "1M"),
    )
    assert rc == 0, err
    rates = [e["rate_down"] for e in events if e["event"] == "progress"]
    assert max(rates) < 1.5 * 1024 * 1024, rates
    assert events[-1]["seconds"] >= 2.5  # 4 MiB at 1 MiB/s, loopback included


def test_roost_seed_exits_with_its_parent(
    tree: Path, tmp_path: Path, make_swarm: MakeSwarm
) -> None:
    """A deploy killed outright (SIGKILL) must not leave its origin seeding."""
    import sys

    swarm = make_swarm(tree)
    release_dir = swarm.release.payload.parent  # type: ignore[attr-defined]
    pid_file = tmp_path / "seed.pid"
    seed = [sys.executable, "-m", "roost", "seed", str(swarm.torrent), "--from", str(release_dir)]
    seed += ["--listen", "127.0.0.1", "--pid-file", str(pid_file), "--exit-with-parent"]
    # The parent starts the seeder in the background, waits until it runs, dies.
    script = (
        "import subprocess, sys, time;"
        "subprocess.Popen(sys.argv[2:]); time.sleep(float(sys.argv[1]))"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, "4", *seed], start_new_session=True)
    pid = None
    deadline = time.monotonic() + 15
    while pid is None and time.monotonic() < deadline:
        pid = procs.read_pid_file(pid_file)
        time.sleep(0.1)
    try:
        assert pid is not None, "the seeder did not start"
        assert parent.wait(15) == 0
        deadline = time.monotonic() + 15
        while procs.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not procs.alive(pid), "the orphaned seeder kept running"
    finally:
        if pid is not None and procs.alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_resumed_peer_announces_to_the_torrent_it_is_given(
    tree: Path, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    """Resume data keeps the tracker list of the run that wrote it; a later
    deploy (new tracker, new token) hands the peer a .torrent with the same
    info-hash but another announce URL, and that one must win."""
    from roost import bencode

    swarm = make_swarm(tree)
    meta = bencode.decode(swarm.torrent.read_bytes())
    meta[b"announce"] = b"http://127.0.0.1:9/announce?token=stale"  # nobody listens
    meta.pop(b"announce-list", None)
    stale = tmp_path / "stale.torrent"
    stale.write_bytes(bencode.encode(meta))
    temp, dest = tmp_path / "temp", tmp_path / "dest"
    rc, _, err = run(
        roost_procs,
        *peer_args(stale, dest, temp, "--events", "json", "--linger", "0", "--timeout", "2"),
    )
    assert rc == 1 and "timed out" in err
    info_hash = swarm.release.info_hash  # type: ignore[attr-defined]
    assert (temp / info_hash / f"{info_hash}.resume").is_file()

    rc, events, err = run(
        roost_procs,
        *peer_args(swarm.torrent, dest, temp, "--events", "json", "--linger", "0"),
        *("--timeout", "20"),
    )
    assert rc == 0, err
    assert events[-1]["event"] == "done" and events[-1]["ok"] is True
    assert snapshot(dest / "t1") == snapshot(tree, skip_git=True)


def test_super_seeding_a_one_piece_release_still_delivers(
    tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    """libtorrent's super-seeding never offers the only piece of a one-piece
    torrent; the seeder says so and seeds it normally."""
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "f.txt").write_text("hello fleet\n")
    swarm = make_swarm(tmp_path / "tiny")
    assert swarm.release.num_pieces == 1  # type: ignore[attr-defined]
    swarm.seeder.stop()  # type: ignore[attr-defined]
    release_dir = swarm.release.payload.parent  # type: ignore[attr-defined]
    seed = roost_procs(
        *("seed", str(swarm.torrent), "--from", str(release_dir)),
        *("--listen", "127.0.0.1", "--super-seed"),
    )
    assert seed.stdout is not None
    assert "(one piece: not super-seeding)" in seed.stdout.readline().decode()
    rc, _, err = run(
        roost_procs,
        *peer_args(swarm.torrent, tmp_path / "dest", tmp_path / "temp", "--events", "json"),
        *("--linger", "0", "--timeout", "30"),
    )
    assert rc == 0, err
    seed.terminate()
    assert seed.wait(5) == 0


def test_the_worker_config_round_trips_through_json(tmp_path: Path) -> None:
    # The detached worker receives its whole config as JSON on its command
    # line: the nested install options and engine config must survive it.
    from roost.enginetypes import EngineConfig
    from roost.peer import InstallOptions, PeerConfig

    config = PeerConfig(
        torrent=tmp_path / "r.torrent",
        dest=tmp_path / "dest",
        install=InstallOptions(clean=True, trust=("k.pub",), hook="true", timeout=9.5),
        engine=EngineConfig(
            listen_interface="127.0.0.1",
            listen_port=6881,
            announce_ip="198.18.0.5",
            upload_limit=1000,
            download_limit=2000,
            verify_https=False,
            ca_file="/etc/ca.pem",
            dht=True,
            dht_bootstrap=("127.0.0.1:9", "127.0.0.2:9"),
        ),
        temp_path=tmp_path / "temp",
        trackers=("http://t/announce",),
        web_seeds=("http://o/",),
        feed="http://o:1/",
    )
    assert PeerConfig.from_json(config.to_json()) == config
    bare = PeerConfig(torrent=tmp_path / "r.torrent", dest=tmp_path / "dest")
    assert PeerConfig.from_json(bare.to_json()) == bare


def test_install_options_reach_each_host_as_flags() -> None:
    # The local and the SSH fleet hand a deploy's install options to every
    # host's `roost peer` as flags: each option must come back the same.
    from roost.cli import build_parser
    from roost.cli.flags import install_options
    from roost.peer import InstallOptions

    options = InstallOptions(
        tag_directory=False,
        clean=True,
        keep_setid=True,
        copy=True,
        trust=("k.pub",),
        hook="true",
        hook_timeout=7.0,
        linger=3.0,
        timeout=9.5,
    )
    args = build_parser("peer").parse_args(["peer", "r.torrent", "--dest", "d", *options.flags()])
    assert install_options(args) == options

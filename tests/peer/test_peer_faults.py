"""``roost peer`` under injected faults: SIGKILL, a full disk, a read-only
destination, a swarm that lost its only seed, a foreign multi-file torrent.
Real processes, a real tracker and seeder on 127.0.0.1, real file systems."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from roost import procs
from roost.metainfo import read_torrent_file
from tests.peer_kit import Start, progress_until, run
from tests.swarm_kit import MakeSwarm, random_file

MiB = 1024 * 1024


def peer_args(torrent: Path | str, dest: Path, temp: Path, *extra: str) -> list[str]:
    args = ["peer", str(torrent), "--dest", str(dest), "--temp-path", str(temp)]
    return [*args, "--events", "json", "--linger", "0", *extra]


def verified_bytes(torrent: Path, payload: Path) -> int:
    """Bytes of ``payload`` in pieces that match the torrent: what is on disk."""
    meta = read_torrent_file(torrent)
    good = 0
    with open(payload, "rb") as f:
        for i in range(meta.num_pieces):
            piece = f.read(meta.piece_size)
            if hashlib.sha1(piece).digest() == meta.pieces[20 * i : 20 * i + 20]:
                good += len(piece)
    return good


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Callable[[Path, str], None]]:
    """``mount(where, options)``: a tmpfs, unmounted after the test (needs
    root: skipped with the reason otherwise)."""
    done: list[Path] = []

    def mount(where: Path, options: str) -> None:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root: run the tests as root (sudo ./scripts/test)")
        where.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True,
            check=False,
        )
        if mounted.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs ({mounted.stderr.decode().strip()}): run as root where "
                "mount(2) is allowed (a container needs CAP_SYS_ADMIN)"
            )
        done.append(where)

    yield mount
    for where in reversed(done):
        subprocess.run(["umount", "-l", str(where)], check=False)


# Item 1: a SIGKILLed peer restarts from what is on disk --------------------------


@pytest.mark.parametrize("kill", ["front and worker", "foreground"])
def test_sigkilled_peer_restarts_from_what_is_on_disk(
    kill: str, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    source = random_file(tmp_path / "src" / "big.bin", 24 * MiB)
    # At 2 MiB/s, 70% is reached ~8 s in: after a resume-data save, not at it.
    swarm = make_swarm(source.parent, upload_limit=2 * MiB, piece_size=64 * 1024)
    size = swarm.release.total_size  # type: ignore[attr-defined]
    info_hash = swarm.release.info_hash  # type: ignore[attr-defined]
    temp, dest = tmp_path / "temp", tmp_path / "dest"
    extra = ["--foreground"] if kill == "foreground" else []
    args = peer_args(swarm.torrent, dest, temp, *extra)

    first = roost_procs(*args)
    progress_until(first, 0.7)
    worker = procs.read_pid_file(temp / info_hash / "worker.pid")
    # Everything at once, as a power cut or the OOM killer would.
    first.send_signal(signal.SIGKILL)
    if worker is not None:
        os.kill(worker, signal.SIGKILL)
    first.wait()
    if worker is not None:
        assert procs.wait_gone(worker, 5)
    payload = temp / info_hash / swarm.release.payload.name  # type: ignore[attr-defined]
    missing = size - verified_bytes(swarm.torrent, payload)
    assert 0 < missing < size * 0.5

    rc, events, err = run(roost_procs, *args)
    assert rc == 0, err
    done = events[-1]
    assert done["event"] == "done" and done["ok"] is True
    again = done["down"]
    print(f"{kill}: missing {missing} B, restart downloaded {again} B of {size}")
    assert again <= missing + 0.05 * size, (missing, again, size)
    assert (dest / "t1" / "big.bin").read_bytes() == source.read_bytes()


def test_a_second_peer_of_a_release_being_downloaded_is_refused_not_the_first_killed(
    tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    """Two peers of one release share the default download area: the second
    stopped the first's worker, which failed 'download stopped: signal
    SIGTERM'. Now the second is refused, naming the first; once the first
    is done and only lingers, a new peer takes over as before."""
    source = random_file(tmp_path / "src" / "big.bin", 8 * MiB)
    swarm = make_swarm(source.parent, upload_limit=2 * MiB, piece_size=64 * 1024)
    temp = tmp_path / "temp"
    first = roost_procs(*peer_args(swarm.torrent, tmp_path / "a", temp)[:-2], "--linger", "30")
    progress_until(first, 0.1)
    rc, events, err = run(roost_procs, *peer_args(swarm.torrent, tmp_path / "b", temp))
    assert rc == 1, err
    assert f"another roost peer (pid {first.pid}) is downloading this release" in err
    assert events[-2]["event"] == "failed" and "--temp-path" in events[-2]["error"]
    _, err1 = first.communicate(timeout=60)
    assert first.returncode == 0, err1  # the first was left to finish
    rc, events, err = run(roost_procs, *peer_args(swarm.torrent, tmp_path / "b", temp))
    assert rc == 0, err  # its worker only lingered: stopped, and taken over
    assert (tmp_path / "b" / "t1" / "big.bin").read_bytes() == source.read_bytes()


# SIGTERM: the way a service manager or a deploy stops a peer -----------------


def test_sigterm_during_the_download_stops_the_worker_and_says_so(
    tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    """As Ctrl-C does: the worker stopped, the last events say why, status 143."""
    source = random_file(tmp_path / "src" / "big.bin", 16 * MiB)
    swarm = make_swarm(source.parent, upload_limit=2 * MiB, piece_size=64 * 1024)
    info_hash = swarm.release.info_hash  # type: ignore[attr-defined]
    temp, dest = tmp_path / "temp", tmp_path / "dest"
    peer = roost_procs(*peer_args(swarm.torrent, dest, temp))
    progress_until(peer, 0.2)
    worker = procs.read_pid_file(temp / info_hash / "worker.pid")
    assert worker is not None
    peer.send_signal(signal.SIGTERM)
    out, err = peer.communicate(timeout=30)
    assert peer.returncode == 143, err
    assert err.decode().strip().splitlines()[-1] == "roost: stopped by SIGTERM"
    last = [json.loads(line) for line in out.decode().splitlines()][-2:]
    assert [e["event"] for e in last] == ["failed", "done"], last
    assert last[0]["error"] == "stopped by SIGTERM" and last[1]["ok"] is False
    assert procs.wait_gone(worker, 10)
    assert not (dest / "t1").exists()


def test_sigterm_during_the_install_leaves_no_staging_behind(
    tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    """Stopped while it copies the release into place (``--copy``): the
    half-written staging directory goes, as it does on Ctrl-C (it stayed,
    tens of MiB, beside DEST/TAG for good)."""
    source = random_file(tmp_path / "src" / "big.bin", 256 * MiB)
    swarm = make_swarm(source.parent, piece_size=1024 * 1024)
    dest = tmp_path / "dest"
    dest.mkdir()
    peer = roost_procs(*peer_args(swarm.torrent, dest, tmp_path / "temp", "--copy"))
    deadline = time.monotonic() + 60
    staging: list[str] = []
    while not staging and peer.poll() is None:
        staging = [n for n in os.listdir(dest) if ".roost-staging-" in n]
        assert time.monotonic() < deadline, "no install began"
    assert staging, "the install ended before it could be caught"
    peer.send_signal(signal.SIGSTOP)  # caught in the copy: hold it there
    assert (dest / staging[0]).exists()
    peer.send_signal(signal.SIGTERM)
    peer.send_signal(signal.SIGCONT)
    _, err = peer.communicate(timeout=30)
    assert peer.returncode == 143, err
    assert os.listdir(dest) == [], os.listdir(dest)


# Item 2: a disk that fills up during the download ------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path, mounts: Callable[[Path, str], None]) -> Path:
    """A 12 MiB tmpfs of its own."""
    mounts(tmp_path / "tmpfs", "size=12m")
    return tmp_path / "tmpfs"


def test_a_tree_needing_more_inodes_than_are_free_is_refused_before_the_download(
    tmp_path: Path, mounts: Callable[[Path, str], None]
) -> None:
    """Free bytes are not enough: 200 small files on a file system of 100
    inodes failed after the download as 'no space left' with MiB to spare."""
    from roost.checks import check_room
    from roost.errors import DestinationError
    from roost.layout import TorrentFile
    from roost.metainfo import TorrentMeta

    where = tmp_path / "fs"
    mounts(where, "size=50m,nr_inodes=60")
    files = tuple(TorrentFile(f"d/f{i}", 100) for i in range(40))
    tree = TorrentMeta("0" * 40, "t1", 4000, 16384, 40, files=files, kind="tree")
    temp, dest = where / "temp" / ("0" * 40), where / "dest"
    # linked into place, the files take their inodes once: 42 + 3 of 59
    check_room(tree, temp, dest, tag_directory=True, link=True)
    with pytest.raises(DestinationError, match=r"not enough inodes on the device of .*: 85 files"):
        check_room(tree, temp, dest, tag_directory=True)  # copied: twice
    assert sorted(os.listdir(where)) == []


def fill(directory: Path) -> Path:
    """Take every free byte of ``directory``'s file system."""
    filler = directory / "filler"
    # The peer may already have taken the last byte: then even creating the
    # filler fails (ENOSPC), and the disk is as full as this wants it.
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


@pytest.mark.parametrize("mode", ["detached", "foreground"])
def test_disk_full_during_download_is_one_line_and_leaves_nothing_stale(
    mode: str, tmp_path: Path, small_tmpfs: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    source = random_file(tmp_path / "src" / "big.bin", 8 * MiB)
    swarm = make_swarm(source.parent, upload_limit=2 * MiB)
    info_hash = swarm.release.info_hash  # type: ignore[attr-defined]
    temp, dest = small_tmpfs / "temp", tmp_path / "dest"
    extra = ["--foreground"] if mode == "foreground" else []
    peer = roost_procs(*peer_args(swarm.torrent, dest, temp, "--timeout", "60", *extra))
    progress_until(peer, 0.1)
    fill(small_tmpfs)  # another program takes the rest of the disk
    _out, err = peer.communicate(timeout=60)
    lines = err.decode().splitlines()
    assert peer.returncode == 1
    assert len(lines) == 1, lines
    assert lines[0] == f"roost: error: no space left on the device of {temp / info_hash}", lines
    assert not dest.exists()
    left = sorted(p.name for p in (temp / info_hash).iterdir())
    assert "worker.pid" not in left and not [n for n in left if n.endswith(".tmp")], left


# Issue 12, class 10: a foreign multi-file torrent is refused before download ----


@pytest.fixture
def foreign_swarm(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, str]]:
    """A multi-file torrent made by mktorrent or by a client (transmission),
    seeded on an open tracker: (the .torrent, its magnet link)."""
    from roost.magnet import magnet_uri
    from roost.seeder import SeedConfig, SeederThread, origin_engine
    from roost.tracker import TrackerConfig, run_tracker_in_thread

    content = tmp_path / "origin" / "bundle"
    random_file(content / "a.bin", 3 * MiB, seed=1)
    random_file(content / "docs" / "b.txt", MiB, seed=2)
    tracker = run_tracker_in_thread(TrackerConfig(port=0, interval=2, min_interval=1))
    torrent = tmp_path / "bundle.torrent"
    maker = request.param
    if shutil.which(maker) is None:
        package = {"mktorrent": "mktorrent", "transmission-create": "transmission-cli"}[maker]
        pytest.skip(f"{maker} not installed (apt-get install {package}; scripts/install does)")
    argv = {
        "mktorrent": ["mktorrent", "-a", tracker.announce_url, "-o", str(torrent), str(content)],
        # a client's torrent maker (transmission's)
        "transmission-create": [
            "transmission-create",
            "-t",
            tracker.announce_url,
            "-o",
            str(torrent),
            str(content),
        ],
    }[maker]
    made = subprocess.run(argv, capture_output=True, check=False)
    assert made.returncode == 0, made.stderr
    seeder = SeederThread(
        SeedConfig(
            torrent=torrent,
            payload_dir=content.parent,
            engine=origin_engine(listen_interface="127.0.0.1"),
        )
    )
    meta = read_torrent_file(torrent)
    try:
        yield torrent, magnet_uri(meta.info_hash, trackers=[tracker.announce_url])
    finally:
        seeder.stop()
        tracker.stop()


@pytest.mark.parametrize("foreign_swarm", ["mktorrent", "transmission-create"], indirect=True)
@pytest.mark.parametrize("given", ["torrent", "magnet"])
def test_foreign_multi_file_torrent_installs(
    given: str, tmp_path: Path, foreign_swarm: tuple[Path, str], roost_procs: Start
) -> None:
    torrent, magnet = foreign_swarm
    temp, dest = tmp_path / "temp", tmp_path / "dest"
    source = str(torrent) if given == "torrent" else magnet
    rc, events, err = run(roost_procs, *peer_args(source, dest, temp, "--timeout", "30"))
    assert rc == 0, err
    assert events[-1]["event"] == "done" and events[-1]["ok"] is True
    origin = tmp_path / "origin" / "bundle"
    for rel in ("a.bin", "docs/b.txt"):
        assert (dest / "bundle" / rel).read_bytes() == (origin / rel).read_bytes()
        assert stat.S_IMODE((dest / "bundle" / rel).stat().st_mode) == 0o644


# Item 6: faults found before the download, and a swarm that cannot finish -------


def test_read_only_destination_is_refused_before_the_download(
    tmp_path: Path, mounts: Callable[[Path, str], None], make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    source = random_file(tmp_path / "src" / "big.bin", 8 * MiB)
    swarm = make_swarm(source.parent, upload_limit=2 * MiB)  # a whole download: 4 s
    dest = tmp_path / "ro"
    mounts(dest, "ro,size=1m")
    started = time.monotonic()
    rc, events, err = run(roost_procs, *peer_args(swarm.torrent, dest, tmp_path / "temp"))
    lines = err.splitlines()
    assert rc == 1 and lines == [
        f"roost: error: destination {dest} is not writable: Read-only file system"
    ], lines
    assert time.monotonic() - started < 3
    assert events[-1]["event"] == "done" and events[-1]["down"] == 0
    assert not (tmp_path / "temp").exists()


def test_download_area_without_room_is_refused_before_the_download(
    tmp_path: Path, mounts: Callable[[Path, str], None], make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    source = random_file(tmp_path / "src" / "big.bin", 8 * MiB)
    swarm = make_swarm(source.parent, upload_limit=2 * MiB)
    temp = tmp_path / "small"
    mounts(temp, "size=4m")
    rc, events, err = run(roost_procs, *peer_args(swarm.torrent, tmp_path / "dest", temp))
    lines = err.splitlines()
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith(
        f"roost: error: not enough space on the device of {temp} for t1.tar:"
    )
    assert "MiB needed, 4.0 MiB free" in lines[0]
    assert events[-1]["down"] == 0 and os.listdir(temp) == []


@pytest.mark.parametrize("web_seed", [False, True])
def test_swarm_that_lost_its_seed_is_named_or_finished_by_the_web_seed(
    web_seed: bool, tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    from roost.origin import OriginConfig, OriginServer

    source = random_file(tmp_path / "src" / "big.bin", 8 * MiB)
    swarm = make_swarm(source.parent, upload_limit=1 * MiB)
    release_dir = swarm.release.payload.parent  # type: ignore[attr-defined]
    with OriginServer(OriginConfig(root=release_dir, port=0, rate_limit=512 * 1024)) as origin:
        extra = ["--web-seed", origin.url("")] if web_seed else []
        args = peer_args(swarm.torrent, tmp_path / "dest", tmp_path / "temp", *extra)
        peer = roost_procs(*args, "--timeout", "60", "--stall-timeout", "2")
        progress_until(peer, 0.2)
        swarm.seeder.stop()  # type: ignore[attr-defined]  # the only seed dies
        died = time.monotonic()
        out, err = peer.communicate(timeout=60)
    events = [json.loads(line) for line in out.decode().splitlines()]
    if web_seed:
        assert peer.returncode == 0, err
        assert (tmp_path / "dest" / "t1" / "big.bin").read_bytes() == source.read_bytes()
        return
    lines = err.decode().splitlines()
    assert peer.returncode == 1 and len(lines) == 1, lines
    assert time.monotonic() - died < 15  # not the 60 s timeout
    print(lines[0])
    last = [e for e in events if e["event"] == "progress"][-1]
    pieces = swarm.release.num_pieces  # type: ignore[attr-defined]
    missing = int(lines[0].split("swarm cannot finish: ")[1].split()[0])
    assert f"swarm cannot finish: {missing} of {pieces} pieces are held by nobody" in lines[0]
    assert abs(missing - (1 - last["progress"]) * pieces) <= max(2, pieces // 50), (missing, last)

"""Interop with the standard clients (issue 2 point 7), all real processes:

1. aria2c downloads a roost release from a roost seeder through the roost tracker;
2. transmission-cli does the same from a network namespace (it refuses the
   127.x peers a tracker hands out, so the swarm runs on 198.18.x addresses);
3. a roost peer downloads and installs a release seeded by aria2c alone;
4. the roost tracker alone serves a swarm of aria2c clients on a torrent
   made by mktorrent.

Every process is started in its own session and killed by its pid at the
end; the lab's namespaces are removed by its context manager.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from roost.errors import LabError
from roost.feed import TAIL_SHARE
from roost.lab.netns import Lab
from roost.release import create_release
from roost.tracker import TrackerConfig, TrackerHandle, run_tracker_in_thread
from tests.interop_helpers import (
    ARIA2C,
    MKTORRENT,
    TRANSMISSION,
    Procs,
    aria2c_argv,
    free_port,
    procs_in,
    sha256_file,
    stock_libtorrent_argv,
    swarm_stats,
    transmission_settings,
    wait_for,
)
from tests.release_kit import make_tree, snapshot
from tests.swarm_kit import MakeSwarm, info_hash, random_file

needs_aria2c = pytest.mark.skipif(ARIA2C is None, reason="aria2c not installed")
needs_transmission = pytest.mark.skipif(
    TRANSMISSION is None, reason="transmission-cli not installed"
)
needs_mktorrent = pytest.mark.skipif(MKTORRENT is None, reason="mktorrent not installed")


def _source(root: Path) -> Path:
    """A release source: the sample tree plus a few MiB, so there are many pieces."""
    make_tree(root)
    random_file(root / "lib" / "big.bin", 3 * 1024 * 1024 + 12345, seed=7)
    return root


@pytest.fixture
def tracker() -> Iterator[TrackerHandle]:
    """An allow-list roost tracker on 127.0.0.1 with a 2 s interval."""
    handle = run_tracker_in_thread(
        TrackerConfig(port=0, interval=2, min_interval=1, allow_list_only=True)
    )
    try:
        yield handle
    finally:
        handle.stop()


# 1. aria2c <- roost seeder --------------------------------------------------------


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root``: what a client downloads
    of a tree release. ``.git*`` and links are left out, and BEP 47's
    ``.pad/`` files, which aria2c and transmission write as zeros, and empty
    files, which transmission does not create."""
    out = {}
    for p in root.rglob("*"):
        parts = p.relative_to(root).parts
        if p.is_symlink() or not p.is_file() or parts[0] == ".pad" or not p.stat().st_size:
            continue
        if not any(part.startswith(".git") for part in parts):
            out[str(p.relative_to(root))] = sha256_file(p)
    return out


@needs_aria2c
@pytest.mark.parametrize("tar", [True, False], ids=["tar", "tree"])
def test_aria2c_downloads_from_roost_seeder(
    tmp_path: Path, make_swarm: MakeSwarm, tar: bool
) -> None:
    swarm = make_swarm(_source(tmp_path / "src"), "v1", tar=tar)
    release = swarm.release
    download = tmp_path / "aria2c"
    with procs_in(tmp_path / "logs") as procs:
        client = procs.start("aria2c", aria2c_argv(swarm.torrent, download, free_port()))
        try:
            rc = client.wait(timeout=45)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"aria2c did not finish\n{procs.describe()}") from None
        assert rc == 0, procs.describe()
    payload = release.payload  # type: ignore[attr-defined]
    if tar:
        got = download / payload.name
        assert sha256_file(got) == sha256_file(payload)
        size = got.stat().st_size
    else:  # a tree release: the build's files, each in its place
        got = download / "v1"
        assert file_digests(got) == file_digests(payload)
        size = sum(
            p.stat().st_size for p in got.rglob("*") if p.is_file() and ".pad" not in p.parts
        )
    snap = swarm.seeder.seeder.snapshot()  # type: ignore[attr-defined]
    assert snap.uploaded >= size  # it came from the roost seeder
    stats = swarm_stats(swarm.tracker.announce_url, release.info_hash)  # type: ignore[attr-defined]
    assert stats is not None and stats["completed"] == 1


@needs_aria2c
def test_aria2c_and_fed_roost_peers_share_one_swarm(
    tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """The origin serves its feed to roost's peers and BitTorrent to aria2c,
    which knows nothing of feeds: both finish, and fed peers never take a
    byte from the origin's BitTorrent seeder."""
    source = _source(tmp_path / "src")
    swarm = make_swarm(source, "v1", feed=True)
    release = swarm.release
    want = sha256_file(release.payload)  # type: ignore[attr-defined]
    download = tmp_path / "aria2c"
    with procs_in(tmp_path / "logs") as procs:
        client = procs.start("aria2c", aria2c_argv(swarm.torrent, download, free_port()))
        fed = [
            roost_procs(
                "peer",
                str(swarm.torrent),
                "--dest",
                str(tmp_path / f"dest-{k}"),
                "--temp-path",
                str(tmp_path / f"temp-{k}"),
                "--feed",
                swarm.feed_url,
                "--linger",
                "5",
            )
            for k in range(2)
        ]
        try:
            assert client.wait(timeout=45) == 0, procs.describe()
            assert [p.wait(timeout=45) for p in fed] == [0, 0]
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the swarm did not finish\n{procs.describe()}") from None
    assert sha256_file(download / release.payload.name) == want  # type: ignore[attr-defined]
    for k in range(2):
        assert snapshot(tmp_path / f"dest-{k}" / "v1") == snapshot(source, skip_git=True)
    stats: Any = swarm.feed_stats()
    # one copy from the feed, and at the end second copies of at most its tail's share
    assert stats.done and stats.tail <= int(stats.pieces * TAIL_SHARE)
    piece = release.piece_size  # type: ignore[attr-defined]
    assert stats.bytes_sent <= release.total_size + stats.tail * piece  # type: ignore[attr-defined]


# 2. transmission-cli <- roost seeder, in a network namespace ------------------------


def _lab(tmp_path: Path) -> Lab:
    """A one-host lab on a free 198.18.x.0/24 (other tests may hold theirs)."""
    first = 200 + os.getpid() % 40
    last_error: LabError | None = None
    for third in range(first, first + 10):
        lab = Lab(
            1,
            prefix=f"io{os.getpid() % 10**8}",
            subnet=f"198.18.{third}.0/24",
            private_mounts=(),
            state_dir=tmp_path / "lab-state",
        )
        try:
            return lab.up()
        except LabError as exc:
            if "overlaps" not in str(exc):
                raise
            last_error = exc
    raise AssertionError(f"no free lab subnet: {last_error}")


def _netns_unusable() -> str | None:
    import shutil

    if os.geteuid() != 0:
        return "not root: network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) not installed"
    return None


@needs_transmission
@pytest.mark.netns
@pytest.mark.skipif(_netns_unusable() is not None, reason=_netns_unusable() or "")
def test_transmission_downloads_from_roost_seeder(tmp_path: Path) -> None:
    from roost.seeder import SeedConfig, SeederThread, origin_engine

    lab = _lab(tmp_path)
    try:
        addr = lab.controller_address
        host = lab.hosts[0]
        tracker = run_tracker_in_thread(
            TrackerConfig(bind=addr, port=0, interval=2, min_interval=1, allow_list_only=True)
        )
        seeder: SeederThread | None = None
        try:
            release = create_release(
                _source(tmp_path / "src"), "v2", tmp_path / "out", announce=[tracker.announce_url]
            )
            tracker.allow(release.info_hash, "v2")
            seeder = SeederThread(
                SeedConfig.of(release, engine=origin_engine(listen_interface=addr))
            )
            config, download, done = tmp_path / "tr-config", tmp_path / "tr-down", tmp_path / "done"
            download.mkdir()
            transmission_settings(config, port=51413)
            finish = tmp_path / "finished.sh"
            finish.write_text(f'#!/bin/sh\necho "$TR_TORRENT_NAME" > {done}\n')
            finish.chmod(0o755)
            want = file_digests(release.payload)  # a tree release: the build's files
            got = download / release.tag
            argv = [TRANSMISSION or "transmission-cli", "-g", str(config), "-w", str(download)]
            argv += ["-f", str(finish), str(release.torrent)]
            with procs_in(tmp_path / "logs") as procs:
                procs.start("transmission-cli", argv, popen=host.popen)
                wait_for(
                    "transmission-cli to finish",
                    lambda: done.exists() and file_digests(got) == want,
                    timeout=45,
                    procs=procs,
                )
            assert done.read_text().strip() == release.tag
            assert seeder.seeder.snapshot().uploaded >= release.size
            stats = swarm_stats(tracker.announce_url, release.info_hash)
            assert stats is not None
            addresses = {p["address"] for p in stats["peers"]}
            assert host.address in addresses  # it announced from its namespace
        finally:
            if seeder is not None:
                seeder.stop()
            tracker.stop()
    finally:
        lab.down()


# 3. roost peer <- aria2c seeder ---------------------------------------------------


def _aria2c_seeder(procs: Procs, torrent: Path, payload_dir: Path) -> None:
    """aria2c checking the payload in place (-V), then seeding until killed."""
    procs.start("aria2c-seeder", aria2c_argv(torrent, payload_dir, free_port(), seed=True))


@needs_aria2c
def test_roost_peer_downloads_from_aria2c_seeder(
    tmp_path: Path, tracker: TrackerHandle, clean_env: dict[str, str]
) -> None:
    tree = _source(tmp_path / "src")
    release = create_release(
        tree, "v3", tmp_path / "out", tar=True, announce=[tracker.announce_url]
    )
    tracker.allow(release.info_hash, "v3")
    dest = tmp_path / "dest"
    with procs_in(tmp_path / "logs") as procs:
        _aria2c_seeder(procs, release.torrent, release.payload.parent)
        wait_for(
            "aria2c to check the payload and announce as a seeder",
            lambda: (s := swarm_stats(tracker.announce_url, release.info_hash)) and s["seeders"],
            timeout=20,
            procs=procs,
        )
        argv = [sys.executable, "-m", "roost", "peer", str(release.torrent), "--dest", str(dest)]
        argv += ["--linger", "0", "--events", "json", "--temp-path", str(tmp_path / "peer-tmp")]
        peer = procs.start("roost-peer", argv, env=clean_env)
        try:
            rc = peer.wait(timeout=45)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"roost peer did not finish\n{procs.describe()}") from None
        out = procs.output("roost-peer")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert rc == 0, out
    kinds = [e["event"] for e in events]
    assert "complete" in kinds and "installed" in kinds, out
    assert events[-1]["event"] == "done" and events[-1]["ok"] is True, out
    assert events[-1]["down"] >= release.total_size  # every byte came from aria2c
    assert snapshot(dest / "v3") == snapshot(tree, skip_git=True)


# 4. the roost tracker alone, a swarm of aria2c clients ----------------------------


def _mktorrent(payload: Path, announce_url: str) -> tuple[Path, str]:
    """A torrent of ``payload`` made by mktorrent (256 KiB pieces), and its info-hash."""
    torrent = payload.parent.parent / f"{payload.name}.torrent"
    mktorrent = [MKTORRENT or "mktorrent", "-a", announce_url, "-l", "18"]
    subprocess.run(
        [*mktorrent, "-o", str(torrent), str(payload)], check=True, capture_output=True, timeout=30
    )
    return torrent, info_hash(torrent.read_bytes())


def _all_finish(procs: Procs, clients: list[subprocess.Popen[bytes]], *, timeout: float) -> None:
    for client in clients:
        try:
            rc = client.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"a client is stuck\n{procs.describe()}") from None
        assert rc == 0, procs.describe()


@needs_aria2c
@needs_mktorrent
def test_roost_tracker_serves_aria2c_swarm(tmp_path: Path) -> None:
    tracker = run_tracker_in_thread(TrackerConfig(port=0, interval=2, min_interval=1))
    try:
        payload = random_file(tmp_path / "seed" / "artifact.bin", 4 * 1024 * 1024 + 777, seed=4)
        torrent, ih = _mktorrent(payload, tracker.announce_url)
        want = sha256_file(payload)
        leechers = 3
        with procs_in(tmp_path / "logs") as procs:
            _aria2c_seeder(procs, torrent, payload.parent)
            wait_for(
                "the aria2c seeder to announce",
                lambda: (s := swarm_stats(tracker.announce_url, ih)) and s["seeders"],
                timeout=20,
                procs=procs,
            )
            clients = [
                procs.start(
                    f"aria2c-{i}",
                    aria2c_argv(torrent, tmp_path / f"leech-{i}", free_port()),
                )
                for i in range(leechers)
            ]
            _all_finish(procs, clients, timeout=45)
            for i in range(leechers):
                assert sha256_file(tmp_path / f"leech-{i}" / payload.name) == want
            stats = wait_for(
                "the tracker to count every completion",
                lambda: (
                    (s := swarm_stats(tracker.announce_url, ih))
                    and s["completed"] >= leechers
                    and s
                ),
                timeout=10,
                procs=procs,
            )
        assert stats["completed"] == leechers
    finally:
        tracker.stop()


# 5. a stock client's seeder stays in the swarm between its announces (issue 12, class 9)


@needs_aria2c
@needs_mktorrent
def test_stock_libtorrent_seeder_is_found_by_leechers_joining_later(tmp_path: Path) -> None:
    """The tracker at its deploy-fast defaults (interval 5 s: roost's peers
    are forgotten after 15 s). A stock libtorrent seeder announces once and
    not again for 300 s; leechers that join 20 s later still find it."""
    tracker = run_tracker_in_thread(TrackerConfig(port=0))
    try:
        payload = random_file(tmp_path / "seed" / "artifact.bin", 2 * 1024 * 1024 + 99, seed=5)
        torrent, ih = _mktorrent(payload, tracker.announce_url)
        want = sha256_file(payload)
        with procs_in(tmp_path / "logs") as procs:
            argv = stock_libtorrent_argv(torrent, payload.parent, free_port(), seconds=60)
            procs.start("libtorrent-seeder", argv)
            wait_for(
                "the stock seeder to announce",
                lambda: (s := swarm_stats(tracker.announce_url, ih)) and s["seeders"],
                timeout=20,
                procs=procs,
            )
            time.sleep(20)  # past the 15 s after which roost's own peers are forgotten
            stats = swarm_stats(tracker.announce_url, ih)
            assert stats is not None and stats["seeders"] == 1, stats
            clients = [
                procs.start(
                    f"aria2c-{i}", aria2c_argv(torrent, tmp_path / f"leech-{i}", free_port())
                )
                for i in range(2)
            ]
            _all_finish(procs, clients, timeout=35)
            for i in range(2):
                assert sha256_file(tmp_path / f"leech-{i}" / payload.name) == want
            wait_for(  # and the data came from the stock seeder
                "the stock seeder to count its upload",
                lambda: "uploaded=0" not in procs.output("libtorrent-seeder").splitlines()[-1],
                timeout=5,
                procs=procs,
            )
    finally:
        tracker.stop()

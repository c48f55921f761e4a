"""Shared fixtures: random payloads, hand-made torrents, a live swarm
(embedded tracker + seeder on 127.0.0.1), roost subprocesses and their
clean-up."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    """``size`` pseudo-random bytes at ``path`` (fast, reproducible)."""
    import random

    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n))
            left -= n
    return path


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    """A 4 MiB random file in its own directory."""
    return random_file(tmp_path / "origin" / "payload.bin", 4 * 1024 * 1024)


@pytest.fixture
def clean_env() -> Iterator[dict[str, str]]:
    """Environment for roost subprocesses (no inherited ROOST_* variables)."""
    yield {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}


def make_torrent(
    payload: Path,
    *,
    piece_size: int = 256 * 1024,
    announce: tuple[str, ...] = (),
) -> bytes:
    """A v1 single-file .torrent of ``payload`` (independent of roost.release)."""
    import hashlib

    from roost import bencode

    pieces = bytearray()
    with open(payload, "rb") as f:
        while chunk := f.read(piece_size):
            pieces += hashlib.sha1(chunk).digest()
    info = {
        b"name": payload.name.encode(),
        b"length": payload.stat().st_size,
        b"piece length": piece_size,
        b"pieces": bytes(pieces),
    }
    meta: dict[bytes, object] = {b"info": info}
    if announce:
        meta[b"announce"] = announce[0].encode()
        meta[b"announce-list"] = [[url.encode()] for url in announce]
    return bencode.encode(meta)


def info_hash(torrent: bytes) -> str:
    import hashlib

    from roost import bencode

    return hashlib.sha1(bencode.encode(bencode.decode(torrent)[b"info"])).hexdigest()


# A live swarm: tracker + seeder in this process --------------------------------


@dataclass
class Swarm:
    source: Path
    release: object  # roost.release.Release
    tracker: object  # roost.tracker.TrackerHandle
    seeder: object  # roost.seeder.SeederThread

    @property
    def torrent(self) -> Path:
        return self.release.torrent  # type: ignore[attr-defined, no-any-return]

    @property
    def feed_url(self) -> str:
        url = self.seeder.seeder.feed_url()  # type: ignore[attr-defined]
        assert url is not None, "make_swarm(..., feed=True)"
        return str(url)

    def feed_stats(self) -> object:
        """The origin feed's FeedStats (roost.feed)."""
        seeder = self.seeder.seeder  # type: ignore[attr-defined]
        return seeder.feed.stats(seeder.info_hash)


MakeSwarm = Callable[..., Swarm]


@pytest.fixture
def make_swarm(tmp_path: Path) -> Iterator[MakeSwarm]:
    """``make_swarm(source, tag="t1", upload_limit=0, is_file=False, tar=True)``: create
    the release, start an allow-list tracker and a seeder; all stopped after."""
    from roost.release import create_release
    from roost.seeder import SeedConfig, SeederThread
    from roost.tracker import TrackerConfig, run_tracker_in_thread

    stops: list[Callable[[], None]] = []

    def make(
        source: Path,
        tag: str = "t1",
        *,
        upload_limit: int = 0,
        is_file: bool = False,
        piece_size: int | None = None,
        feed: bool = False,
        tar: bool = True,
    ) -> Swarm:
        tracker = run_tracker_in_thread(
            TrackerConfig(port=0, interval=2, min_interval=1, allow_list_only=True)
        )
        stops.append(tracker.stop)
        release = create_release(
            source,
            tag,
            tmp_path / f"release-{tag}",
            announce=[tracker.announce_url],
            is_file=is_file,
            piece_size=piece_size,
            tar=tar,
        )
        tracker.allow(release.info_hash, tag)
        seeder = SeederThread(
            SeedConfig.of(
                release,
                upload_limit=upload_limit,
                listen_interface="127.0.0.1",
                feed_port=0 if feed else None,
            )
        )
        stops.append(seeder.stop)
        return Swarm(source, release, tracker, seeder)

    yield make
    for stop in reversed(stops):
        stop()


# roost subprocesses ------------------------------------------------------------


@pytest.fixture
def roost_procs(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``python -m roost ARGS`` processes; after the test, every one
    still running is killed (by its pid) and every roost pid file under
    ``tmp_path`` is stopped (lingering peer workers)."""
    from roost import procs

    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, **kwargs: object) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen([sys.executable, "-m", "roost", *args], **kwargs)  # type: ignore[call-overload]
        started.append(proc)
        return proc  # type: ignore[no-any-return]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()
    for pid_file in procs.pid_files(tmp_path):
        procs.stop_by_pid_file(pid_file, timeout=5)

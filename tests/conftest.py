"""Shared fixtures: a random payload, a live swarm (embedded tracker +
seeder on 127.0.0.1), roost subprocesses and their clean-up. Plain helpers
live in modules (tests/swarm_kit.py and the other *_kit.py), not here."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.swarm_kit import MakeSwarm, Swarm, random_file


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    """A 4 MiB random file in its own directory."""
    return random_file(tmp_path / "origin" / "payload.bin", 4 * 1024 * 1024)


@pytest.fixture
def clean_env() -> Iterator[dict[str, str]]:
    """Environment for roost subprocesses (no inherited ROOST_* variables)."""
    yield {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}


# A live swarm: tracker + seeder in this process --------------------------------


@pytest.fixture
def make_swarm(tmp_path: Path) -> Iterator[MakeSwarm]:
    """``make_swarm(source, tag="t1", upload_limit=0, is_file=False, tar=True)``: create
    the release, start an allow-list tracker and a seeder; all stopped after."""
    from roost.release import create_release
    from roost.seeder import SeedConfig, SeederThread, origin_engine
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
                engine=origin_engine(listen_interface="127.0.0.1", upload_limit=upload_limit),
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

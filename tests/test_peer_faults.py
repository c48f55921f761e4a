"""``roost peer`` under injected faults: SIGKILL, a full disk, a read-only
destination, a swarm that lost its only seed, a foreign multi-file torrent.
Real processes, a real tracker and seeder on 127.0.0.1, real file systems."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import MakeSwarm, random_file

from roost import procs
from roost.release import read_torrent_file

Start = Callable[..., subprocess.Popen[bytes]]
MiB = 1024 * 1024


def peer_args(torrent: Path | str, dest: Path, temp: Path, *extra: str) -> list[str]:
    args = ["peer", str(torrent), "--dest", str(dest), "--temp-path", str(temp)]
    return [*args, "--events", "json", "--linger", "0", *extra]


def run(start: Start, *args: str, timeout: float = 60) -> tuple[int, list[dict[str, Any]], str]:
    proc = start(*args)
    out, err = proc.communicate(timeout=timeout)
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    return proc.returncode, events, err.decode()


def progress_until(proc: subprocess.Popen[bytes], fraction: float) -> float:
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and event["progress"] >= fraction:
            return float(event["progress"])
        assert event["event"] in ("started", "progress", "tracker_warning"), event
    raise AssertionError("the peer ended before reaching the kill point")


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

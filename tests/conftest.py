"""Shared fixtures: payloads of random bytes, torrents made by libtorrent."""

from __future__ import annotations

import os
from collections.abc import Iterator
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

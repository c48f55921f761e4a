"""Payloads, hand-made torrents and the live swarm record the peer-side
tests share (the fixtures that make them are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


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

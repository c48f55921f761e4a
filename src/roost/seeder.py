"""The seeder: serve one release until told to stop.

A seeder's payload is known good (it was just packed, or it was verified
when downloaded), so it is added in libtorrent's ``seed_mode``: ready at once
instead of after hashing the whole file (0.07 s instead of seconds per GB),
each piece checked the first time a peer asks for it, so a corrupt file is
still caught (as a ``HashFailed`` event, logged). Super-seeding is for the
origin of a big fleet: it hands each piece out once, so peers fetch the rest
from each other and the origin uploads about one copy.

:class:`Seeder` owns its engine and is driven from one thread (``run``); other
threads read :meth:`Seeder.snapshot` and call :meth:`Seeder.stop`. The
snapshot is as old as the last poll (up to 0.25 s: sending raises no alert
to wake it); ``run`` takes a last one as it ends, so once it has returned
(after :meth:`SeederThread.stop`) the snapshot holds the final counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roost.engine import Engine, EngineConfig, HashFailed, TorrentError, TrackerProblem
from roost.enginetypes import origin_engine
from roost.errors import RoostError, UsageError

if TYPE_CHECKING:
    from roost.feed import FeedServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedConfig:
    torrent: Path
    payload_dir: Path  # the directory holding the payload under the torrent's name
    #: a tree release's directory, seeded in place whatever its name (the
    #: build tree ``roost create`` hashed); None: ``payload_dir/NAME``
    tree: Path | None = None
    trackers: tuple[str, ...] | None = None  # replace the torrent's announce list
    #: the origin's engine: where it listens and announces, its upload
    #: limit (its feed's too), the DHT, its upload slots (``origin_engine``)
    engine: EngineConfig = field(default_factory=origin_engine)
    super_seeding: bool = False
    seed_mode: bool = True
    #: Serve the origin's feed (roost.feed) on this port (0: any); None: no
    #: feed. ``feed_bind`` defaults to the engine's ``listen_interface``;
    #: with ``feed_token`` the feed answers only requests that carry it.
    feed_port: int | None = None
    feed_bind: str | None = None
    feed_token: str | None = None

    @classmethod
    def of(cls, release: Any, **settings: Any) -> SeedConfig:
        """Seed ``release`` (a ``roost.release.Release`` just made) where it
        lies: a tree release from its build tree, a tar or file beside it."""
        tree = release.payload if release.kind == "tree" else None
        return cls(release.torrent, release.payload.parent, tree=tree, **settings)


@dataclass(frozen=True)
class SeedSnapshot:
    info_hash: str
    uploaded: int
    rate_up: int
    peers: int
    seeding: bool
    hash_failures: int
    feed_sent: int = 0  # bytes the feed served


def tree_for(meta: Any, *, payload: Path | None, from_dir: Path | None) -> Path:
    """A multi-file torrent's directory, checked: ``--payload DIR`` (any
    name: a tree release is seeded from its build tree) or ``--from DIR``
    (then ``DIR/NAME``). ``UsageError`` if it or a file is missing or of the
    wrong size (seed_mode trusts the files, so the cheap checks are here)."""
    if (payload is None) == (from_dir is None):
        raise UsageError("give exactly one of --payload DIR or --from DIR")
    root = payload if payload is not None else Path(from_dir or ".") / meta.name
    if not root.is_dir():
        raise UsageError(f"payload {root} is not a directory ({meta.name!r} has many files)")
    for f in meta.files:
        if f.is_pad:
            continue
        try:
            size = os.stat(root / f.path).st_size
        except OSError as exc:
            raise UsageError(f"payload {root / f.path}: {exc.strerror}") from None
        if size != f.length:
            raise UsageError(
                f"payload {root / f.path} has {size} bytes, the torrent says {f.length}"
            )
    return root


def payload_dir_for(
    torrent_name: str, length: int, *, payload: Path | None, from_dir: Path | None
) -> Path:
    """Where the payload lives, checked: ``--payload FILE`` or ``--from DIR``.

    Raises ``UsageError`` if it is missing, misnamed or of the wrong size
    (seed_mode trusts the file, so the cheap checks are done here).
    """
    if (payload is None) == (from_dir is None):
        raise UsageError("give exactly one of --payload FILE or --from DIR")
    path = payload if payload is not None else Path(from_dir or ".") / torrent_name
    if not path.is_file():
        raise UsageError(f"payload {path} is not a file")
    if path.name != torrent_name:
        raise UsageError(f"payload {path} must be named {torrent_name!r} as in the torrent")
    size = path.stat().st_size
    if size != length:
        raise UsageError(f"payload {path} has {size} bytes, the torrent says {length}")
    return path.parent


def _num_pieces(torrent_bytes: bytes) -> int:
    from roost.metainfo import read_torrent

    try:
        return read_torrent(torrent_bytes).num_pieces
    except RoostError:
        return 0  # the engine names what is wrong with it


def _start_feed(config: SeedConfig, torrent_bytes: bytes) -> FeedServer:
    """The origin's feed for a single-file or multi-file torrent (a tree
    release); ``UsageError`` for one with a pad file that does not end a
    piece (the feed sends a piece's files and the receiver adds the zeros)."""
    from roost.feed import FeedServer, FeedSource
    from roost.metainfo import read_torrent

    meta = read_torrent(torrent_bytes)
    layout = meta.layout
    if layout is not None and not layout.pads_end_pieces:
        raise UsageError(
            "the feed cannot serve this torrent: a pad file ends inside a piece"
            " (roost create makes torrents it can)"
        )
    bind = config.feed_bind or config.engine.listen_interface
    root = _payload(config, meta.name)
    server = FeedServer(
        bind, config.feed_port or 0, rate_limit=config.engine.upload_limit, token=config.feed_token
    ).start()
    server.add(FeedSource(meta.info_hash, root, meta.piece_size, meta.length, layout))
    return server


def _check_payload(config: SeedConfig, torrent_bytes: bytes) -> None:
    """seed_mode trusts the payload: refuse one that is not there at all
    (a tree release looked for under ``payload_dir/NAME``, say)."""
    from roost.metainfo import read_torrent

    try:
        meta = read_torrent(torrent_bytes)
    except RoostError:
        return  # the engine names what is wrong with it
    path = _payload(config, meta.name)
    if meta.files is not None and not path.is_dir():
        raise UsageError(f"payload {path} is not a directory ({meta.name!r} has many files)")


def _payload(config: SeedConfig, name: str) -> Path:
    return config.tree if config.tree is not None else Path(config.payload_dir) / name


class Seeder:
    def __init__(self, config: SeedConfig):
        self.config = config
        try:
            torrent_bytes = config.torrent.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read torrent {config.torrent}: {exc.strerror}") from exc
        self.engine = Engine(config.engine)
        _check_payload(config, torrent_bytes)
        # libtorrent's super-seeding starts by offering each peer two pieces it
        # lacks; with a single piece it never offers any and the swarm stalls.
        self.super_seeding = config.super_seeding and _num_pieces(torrent_bytes) >= 2
        self.feed: FeedServer | None = None
        try:
            self.info_hash = self.engine.add(
                torrent_bytes,
                config.payload_dir,
                seed_mode=config.seed_mode,
                super_seeding=self.super_seeding,
                trackers=config.trackers,
                role="origin" if config.feed_port is not None else None,
                files_root=config.tree,
            )
            if config.feed_port is not None:
                self.feed = _start_feed(config, torrent_bytes)
        except BaseException:
            self.engine.close()
            raise
        self.port = self.engine.port
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._hash_failures = 0
        self._snapshot = SeedSnapshot(self.info_hash, 0, 0, 0, True, 0)

    def feed_url(self, host: str | None = None) -> str | None:
        """The feed's URL for peers (``host``: the address they reach it at)."""
        return self.feed.url(host) if self.feed is not None else None

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> SeedSnapshot:
        with self._lock:
            return self._snapshot

    def run(self, poll: float = 0.25) -> None:
        """Seed until :meth:`stop`; closes the engine when done, after a last
        :meth:`snapshot` (the counts as the seeding ended)."""
        try:
            while not self._stop.is_set():
                for event in self.engine.events(poll):
                    self._log(event)
                self._refresh()
        finally:
            with contextlib.suppress(RoostError):  # the final counts, while the engine is open
                self._refresh()
            if self.feed is not None:
                self.feed.stop()
            self.engine.close()

    def _refresh(self) -> None:
        st = self.engine.status(self.info_hash)
        feed = self.feed.stats(self.info_hash) if self.feed is not None else None
        with self._lock:
            self._snapshot = SeedSnapshot(
                self.info_hash,
                st.uploaded,
                st.rate_up,
                st.num_peers,
                st.is_seeding,
                self._hash_failures,
                feed.bytes_sent if feed is not None else 0,
            )

    def _log(self, event: object) -> None:
        if isinstance(event, HashFailed):
            self._hash_failures += 1
            log.error("seeder payload is corrupt: piece %d failed its hash check", event.piece)
        elif isinstance(event, TorrentError):
            log.error("seeder: %s", event.message)
        elif isinstance(event, TrackerProblem):
            log.warning("tracker %s: %s", event.url, event.message)


class SeederThread:
    """A :class:`Seeder` running in its own thread (the engine's one owner)."""

    def __init__(self, config: SeedConfig):
        self.seeder = Seeder(config)
        self._thread = threading.Thread(target=self.seeder.run, name="roost-seeder", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.seeder.port

    def snapshot(self) -> SeedSnapshot:
        return self.seeder.snapshot()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop seeding and wait (up to ``timeout`` s) for the engine to
        close; :meth:`snapshot` then holds the final counts."""
        self.seeder.stop()
        deadline = time.monotonic() + timeout
        self._thread.join(max(0.0, deadline - time.monotonic()))

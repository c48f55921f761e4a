"""One download in one engine (``Download``): the core of the worker, of
``--foreground`` and of the agent's shared engine (roost.peer). The engine
(libtorrent) is imported here lazily, when a download starts.

A fed download (``PeerConfig.feed``) announces ``role=feed``, so roost's
tracker never hands it the origin's seeder: its pieces come from the feed
and the swarm. Once the feed cannot be reached (``FeedClient.unreachable``)
that would leave it with no source at all, so it says so once (a warning in
the log, a ``tracker_warning`` event naming the feed's URL) and rejoins the
swarm as a plain peer (``Engine.set_role``: its announces carry no role
from then on), the origin's seeder included; the feed client keeps trying,
and what the feed sends still counts."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roost import events
from roost._fs import atomic_write
from roost.checks import StallWatch, check_installable, check_room
from roost.errors import DiskFull, EngineError, ReleaseError, RoostError
from roost.peer.config import (
    PROGRESS_INTERVAL,
    RESUME_INTERVAL,
    Emit,
    PeerConfig,
    _read_meta,
    work_dir,
)

if TYPE_CHECKING:
    # The engine (libtorrent) is imported by whoever owns it: the worker, or
    # --foreground. The front process never needs it.
    from roost.engine import Engine
    from roost.feedclient import FeedClient
    from roost.peer.hashahead import HashAhead
    from roost.prefill import Prefill

log = logging.getLogger(__name__)

#: pieces from the feed that fail their hash before the download gives up on
#: the origin: its payload is not the release (one could be a fluke)
BAD_FEED_PIECES = 2


class _Download:
    """One download in one engine; the worker's (or foreground's) core."""

    def __init__(
        self,
        config: PeerConfig,
        torrent_bytes: bytes | None,
        info_hash: str,
        engine: Engine | None = None,
    ):
        """``engine``: share a long-lived engine (the agent's); not closed here."""
        from roost.engine import Engine

        self.config = config
        self.dir = work_dir(config, info_hash)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._dir_id = _identity(self.dir)
        self.owns_engine = engine is None
        self.engine = engine or Engine(config.engine)
        self.has_metadata = torrent_bytes is not None
        self.reused = self._prefill(torrent_bytes)
        if torrent_bytes is None:
            assert config.magnet is not None
            self.tid = self.engine.add_magnet(
                config.magnet,
                self.dir,
                resume_dir=self.dir,
                web_seeds=config.web_seeds,
                trackers=config.trackers,
            )
        else:
            self.tid = self.engine.add(
                torrent_bytes,
                self.dir,
                resume_dir=self.dir,
                trackers=config.trackers,
                web_seeds=config.web_seeds,
                role="feed" if config.feed else None,
                have=self.reused.pieces if self.reused else (),
            )
        self.hash_failures = 0
        self.bad_feed_pieces: list[int] = []  # from the feed, failed their hash
        #: Refused: close() deletes the torrent's data and the work directory.
        self.discard = False
        self.feed: FeedClient | None = None
        #: the feed could not be reached: this peer announces as a plain one
        self.feedless = False
        if config.feed and torrent_bytes is not None:
            self.feed = self._start_feed(config.feed)
        self.hash_ahead = self._start_hash_ahead(torrent_bytes)

    def _start_hash_ahead(self, torrent_bytes: bytes | None) -> HashAhead | None:
        """The files' sha256 while they arrive (the install's, moved off the
        end; roost.peer.hashahead). Not for a magnet, nor a copying install."""
        from roost.peer.hashahead import HASHED, HashAhead

        with contextlib.suppress(OSError):  # an earlier run's: this one hashes anew
            (self.dir / HASHED).unlink()
        if torrent_bytes is None or self.config.install.copy:
            return None
        engine, tid = self.engine, self.tid
        ahead = HashAhead.of(_read_meta(torrent_bytes), self.dir, lambda: engine.have(tid))
        return ahead.start() if ahead is not None else None

    def _prefill(self, torrent_bytes: bytes | None) -> Prefill | None:
        """A tree release downloaded afresh starts from the unchanged files
        of the releases installed beside its target (roost.prefill)."""
        if torrent_bytes is None:
            return None
        meta = _read_meta(torrent_bytes)
        root = self.dir / meta.name
        if meta.manifest is None or root.exists() or any(self.dir.glob("*.resume")):
            return None
        from roost.destination import install_target
        from roost.prefill import prefill

        try:
            target = install_target(
                meta, self.config.dest, tag_directory=self.config.install.tag_directory
            )
        except RoostError:
            return None  # the install names the destination's problem
        return prefill(meta, root, target)

    def _start_feed(self, url: str) -> FeedClient:
        from roost.feedclient import FeedClient

        engine, tid = self.engine, self.tid
        return FeedClient(
            url,
            tid,
            add_piece=lambda index, data: engine.add_piece(tid, index, data),
            orphans=lambda: engine.orphan_pieces(tid),
            lacking=lambda: engine.missing_pieces(tid),
            alone=lambda: engine.alone(tid),
            complete=lambda: engine.pieces_if_complete(tid),
            ready=lambda: engine.checked(tid),
            download_limit=self.config.engine.download_limit,
            have=self.reused.pieces if self.reused else (),
        ).start()

    def _stop_feed(self) -> None:
        if self.feed is not None:
            self.feed.stop()

    def _check_feed(self, emit: Emit) -> bool:
        """Once the feed cannot be reached: say so, once, and announce
        without ``role=feed`` (roost's tracker then hands this peer the
        origin's seeder too). True when it did so just now."""
        if self.feed is None or self.feedless:
            return False
        reason = self.feed.unreachable()
        if reason is None:
            return False
        from roost.feedclient import shown_feed_url

        url = shown_feed_url(self.config.feed or "")
        message = f"feed {url} cannot be reached ({reason}): going on over BitTorrent alone"
        log.warning("%s", message)
        emit(events.TrackerWarning(url=url, message=message, source="feed"))
        self.engine.set_role(self.tid, None)
        self.feedless = True
        return True

    def _save_metadata(self) -> None:
        """Magnet: write the torrent (info dict from peers) where the front reads it."""
        if self.has_metadata:
            return
        data = self.engine.metadata(self.tid)
        if data is None:
            return
        meta = _read_meta(data)
        try:
            check_installable(meta)
        except ReleaseError:
            self.discard = True  # close() removes what arrived with it
            raise
        check_room(
            meta,
            self.dir,
            self.config.dest,
            tag_directory=self.config.install.tag_directory,
            link=not self.config.install.copy,
        )
        atomic_write(self.config.torrent, data)
        self.has_metadata = True

    def run_until_complete(self, emit: Emit, should_stop: Callable[[], str | None]) -> None:
        """Download; raise ``EngineError`` on a torrent error or a stop request.

        The loop sleeps in libtorrent's ``wait_for_alert`` (no busy polling)
        and reads the torrent's status once per ``PROGRESS_INTERVAL``, or at
        once when libtorrent reports the torrent finished: on a 2-core
        machine running 64 peers, every wake-up of every peer counts.
        """
        from roost.engine import Finished, MetadataReceived, TorrentError

        last_resume = time.monotonic()
        next_tick = 0.0
        stall = StallWatch(self.config.stall_timeout)
        if self.reused is not None and (self.reused.files or self.reused.rejected):
            r = self.reused
            emit(events.Reused(bytes=r.bytes, files=r.files, rejected=r.rejected))
        while True:
            finished = False
            wait = max(0.0, min(PROGRESS_INTERVAL, next_tick - time.monotonic()))
            for event in self.engine.events(wait):
                finished = finished or isinstance(event, Finished)
                if isinstance(event, TorrentError) and event.errno == errno.ENOSPC:
                    self._save_resume_quietly()
                    raise DiskFull(self.dir)
                if isinstance(event, MetadataReceived):
                    self._save_metadata()  # refused before pieces flow
                self._relay(event, emit)
            now = time.monotonic()
            if now < next_tick and not finished:
                continue
            next_tick = now + PROGRESS_INTERVAL
            status = self.engine.status(self.tid)
            if status.error:
                self._save_resume_quietly()
                if status.errno == errno.ENOSPC:
                    raise DiskFull(self.dir)
                raise EngineError(f"download failed: {status.error}", info_hash=self.tid)
            self._save_metadata()
            if self.has_metadata and status.is_finished and status.state in ("seeding", "finished"):
                # Finished means hashed; the file may still lack the last writes.
                self._stop_feed()
                self.engine.flush(self.tid)
                if self.hash_ahead is not None:
                    from roost.peer.hashahead import HASHED

                    self.hash_ahead.finish(self.dir / HASHED)
                    self.hash_ahead = None
                self._emit_progress(emit)
                self._save_resume_quietly()
                return
            reason = should_stop()
            if reason:
                self._save_resume_quietly()
                raise EngineError(f"download stopped: {reason}", info_hash=self.tid)
            if self.feed is not None and (why := self.feed.broken()) is not None:
                self._save_resume_quietly()
                raise ReleaseError(f"the origin stopped feeding this release: {why}")
            if self._check_feed(emit):
                stall = StallWatch(self.config.stall_timeout)  # a new swarm to judge
                continue
            reason = self._cannot_finish(stall, now, status)
            if reason:
                self._save_resume_quietly()
                raise EngineError(reason, info_hash=self.tid)
            self._emit_progress(emit, status)
            if now - last_resume >= RESUME_INTERVAL:
                last_resume = now
                self._save_resume_quietly()

    def _cannot_finish(self, stall: StallWatch, now: float, status: Any) -> str | None:
        """Why the swarm can no longer finish this download, or None."""
        arrived = status.downloaded + (self.feed.counters.bytes if self.feed else 0)
        if not self.has_metadata or stall.progressed(now, arrived, status.num_peers):
            return None
        return stall.verdict(now, *self.engine.unavailable_pieces(self.tid))

    def linger(self, seconds: float, should_stop: Callable[[], str | None]) -> None:
        """Seed for ``seconds``, or until told to stop, or until the download's
        directory is no longer the one this download made: removed, perhaps
        made again by a new download of the same release, whose half-written
        files are not this one's to serve (their peers would refuse the
        pieces and ban this host)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not should_stop():
            self.engine.events(min(left, 1.0))
            if not self.owns_dir():
                return

    def owns_dir(self) -> bool:
        """Whether the download's directory is still the one it made."""
        return _identity(self.dir) == self._dir_id

    def _relay(self, event: object, emit: Emit) -> None:
        from roost.engine import HashFailed, PeerBanned, TrackerProblem

        if isinstance(event, HashFailed):
            self.hash_failures += 1
            emit(events.HashFailed(piece=event.piece))
            if self.feed is not None and self.feed.was_fed(event.piece):
                self.bad_feed_pieces.append(event.piece)
                if len(self.bad_feed_pieces) >= BAD_FEED_PIECES:
                    pieces = ", ".join(map(str, self.bad_feed_pieces))
                    raise ReleaseError(
                        f"the origin's feed sent pieces that fail their hash check ({pieces}):"
                        " its payload is not this release (changed after it was made?)"
                    )
        elif isinstance(event, PeerBanned):
            emit(events.PeerBanned(address=event.address))
        elif isinstance(event, TrackerProblem):
            emit(events.TrackerWarning(url=event.url, message=event.message))

    def _emit_progress(self, emit: Emit, st: Any = None) -> None:
        st = st or self.engine.status(self.tid)
        fed = self.feed.counters.bytes if self.feed is not None else None
        emit(
            events.Progress(
                progress=round(st.progress, 4),
                down=st.downloaded + (fed or 0),
                up=st.uploaded,
                rate_down=st.rate_down,
                peers=st.num_peers,
                feed=fed,
            )
        )

    def _save_resume_quietly(self) -> None:
        # Resume data only saves a re-hash: failing to write it (a full disk)
        # must not hide the error being reported.
        with contextlib.suppress(RoostError):
            self.engine.save_resume(self.tid)

    def close(self) -> None:
        self._stop_feed()
        if self.hash_ahead is not None:
            self.hash_ahead.stop()
        # A directory removed or made anew is someone else's now: nothing is
        # written into it, nor deleted from it.
        ours = self.owns_dir()
        if self.discard and ours:
            self.engine.remove(self.tid, delete_files=True)
        elif ours:
            self._save_resume_quietly()
        else:
            self.engine.remove(self.tid)
        if self.owns_engine:
            self.engine.close()
        if self.discard and ours:
            shutil.rmtree(self.dir, ignore_errors=True)


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``; None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


#: One download in an engine (public name, for the agent's shared engine).
Download = _Download

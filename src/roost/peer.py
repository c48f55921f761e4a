"""The peer: download a release, verify, install it, run the hook, linger.

Theory of operation
-------------------
``roost peer`` is two processes, like Murder's peer which forks its seeding
off so Capistrano can go on:

* the **front** (the command the caller runs) reads the torrent, stops any
  older worker of the same release (by its pid file), starts the worker,
  relays its events, and on ``complete`` installs the payload into the
  destination (``roost.extract.install_release``: atomic, checked against the
  manifest), runs ``--hook`` and exits;
* the **worker** (a fork of the front, which imports no libtorrent and has
  no thread yet; ``python -m roost.peer --worker JSON`` when the caller is
  threaded), in its own session
  so a caller's terminal or SSH channel never waits for it, owns the engine:
  it downloads into ``TEMP/INFOHASH/`` with resume data saved every few
  seconds and on exit, reports progress as JSON lines on its stdout (a pipe to
  the front), then keeps seeding for ``--linger`` seconds and exits. It
  records itself in ``TEMP/INFOHASH/worker.pid``.

The worker's stdin is a pipe from the front: end-of-file before the download
completed means the front died (or was killed), and the worker saves its
resume data and stops, so a killed peer never leaves a download running. A
restarted peer continues from the pieces it has (resume data skips the
re-hash; the pieces it does not list, and the whole file without it, are
hashed from the disk).

Before the download (and for a magnet, when its metadata arrives) the peer
runs ``roost.checks``: installable, room and writability; during it, a
``StallWatch`` ends a download the swarm can no longer finish. The worker's
errors reach the front as ``failed`` events on the pipe (never only in
``worker.log``, which a full disk cannot take), keeping their class.

``--foreground`` runs everything in one process (tests, debugging).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roost import events, procs
from roost._fs import atomic_write
from roost._parse import load_json
from roost.checks import StallWatch, check_installable, check_room
from roost.errors import (
    DestinationError,
    DiskFull,
    EngineError,
    PeerProtocolError,
    ReleaseError,
    RoostError,
    UsageError,
    VerifyError,
    disk_error,
)
from roost.installed import HOOK_TIMEOUT, run_hook_once

if TYPE_CHECKING:
    # The engine (libtorrent) is imported by whoever owns it: the worker, or
    # --foreground. The front process never needs it.
    from roost.engine import Engine
    from roost.feedclient import FeedClient
    from roost.prefill import Prefill

Emit = Callable[[events.Event], None]

DEFAULT_TEMP_PATH = Path("/tmp/roost")
PROGRESS_INTERVAL = 0.5
RESUME_INTERVAL = 5.0
STALL_TIMEOUT = 30.0


def install_flags(
    *,
    linger: float,
    tag_directory: bool = True,
    clean: bool = False,
    hook: str | None = None,
    timeout: float | None = None,
    upload_limit: int = 0,
    download_limit: int = 0,
    keep_setid: bool = False,
    trust: tuple[str, ...] = (),
    hook_timeout: float = HOOK_TIMEOUT,
) -> list[str]:
    """The ``roost peer`` flags for these install options (pure): how the
    local fleet and the SSH fleet hand their options to each host's peer."""
    flags = ["--linger", f"{linger:g}"]
    if not tag_directory:
        flags.append("--no-tag-directory")
    if clean:
        flags.append("--clean")
    if hook:
        flags += ["--hook", hook]
    if timeout:
        flags += ["--timeout", f"{timeout:g}"]
    if upload_limit:
        flags += ["--upload-limit", str(upload_limit)]
    if download_limit:
        flags += ["--download-limit", str(download_limit)]
    if keep_setid:
        flags.append("--keep-setid")
    for key in trust:
        flags += ["--trust", key]
    if hook and hook_timeout != HOOK_TIMEOUT:
        flags += ["--hook-timeout", f"{hook_timeout:g}"]
    return flags


@dataclass(frozen=True)
class PeerConfig:
    torrent: Path
    dest: Path
    tag_directory: bool = True
    clean: bool = False
    linger: float = 30.0
    hook: str | None = None
    temp_path: Path = DEFAULT_TEMP_PATH
    announce_ip: str | None = None
    listen_interface: str = "0.0.0.0"
    listen_port: int = 0
    upload_limit: int = 0
    download_limit: int = 0
    timeout: float | None = None
    trackers: tuple[str, ...] | None = None
    foreground: bool = False
    #: BEP 19 web seeds (HTTP(S) origins) added to the torrent's own.
    web_seeds: tuple[str, ...] = ()
    verify_https: bool = True
    ca_file: str | None = None
    #: A magnet link instead of a .torrent: ``torrent`` is then where the
    #: metadata fetched from peers is written (``magnet_torrent_path``).
    magnet: str | None = None
    dht: bool = False
    dht_bootstrap: tuple[str, ...] = ()
    #: The origin's feed (``http://HOST:PORT/``): pieces nobody has yet come
    #: from it, one peer each, and this peer relays them (roost.feed).
    feed: str | None = None
    #: Give up this many seconds after the swarm stopped being able to finish
    #: (pieces held by nobody, nothing arriving); 0: wait for ``timeout``.
    stall_timeout: float = STALL_TIMEOUT
    #: keep the release's setuid/setgid/sticky bits (stripped by default)
    keep_setid: bool = False
    #: OpenSSH public key files: refuse releases none of them signed
    trust: tuple[str, ...] = ()
    #: seconds the hook may run before it is killed and the host fails
    hook_timeout: float = HOOK_TIMEOUT

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str) -> PeerConfig:
        data = load_json(text, "peer worker config", UsageError)
        for key in ("torrent", "dest", "temp_path"):
            data[key] = Path(data[key])
        if data.get("trackers") is not None:
            data["trackers"] = tuple(data["trackers"])
        for key in ("web_seeds", "dht_bootstrap", "trust"):
            data[key] = tuple(data.get(key) or ())
        return cls(**data)


@dataclass(frozen=True)
class PeerResult:
    ok: bool
    path: Path | None
    already_installed: bool
    seconds: float
    down: int
    up: int
    error: str | None = None
    reused: int = 0  # bytes taken from an earlier release instead of downloaded


def work_dir(config: PeerConfig, info_hash: str) -> Path:
    return config.temp_path / info_hash


def worker_pid_file(temp_path: Path, info_hash: str) -> Path:
    return temp_path / info_hash / "worker.pid"


def magnet_torrent_path(temp_path: Path, info_hash: str) -> Path:
    """Where a magnet peer writes the torrent once its metadata arrived."""
    return temp_path / info_hash / "metadata.torrent"


def _info_hash_of(config: PeerConfig, torrent_bytes: bytes | None) -> str:
    if config.magnet:
        from roost.magnet import parse_magnet

        return parse_magnet(config.magnet).info_hash
    return str(_read_meta(torrent_bytes or b"").info_hash)


def _torrent_bytes(config: PeerConfig) -> bytes | None:
    """The .torrent's bytes; None for a magnet (its metadata comes later)."""
    if config.magnet:
        return None
    try:
        return config.torrent.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read torrent {config.torrent}: {exc.strerror}") from exc


# The worker: engine owner ------------------------------------------------------


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
        from roost.engine import Engine, EngineConfig

        self.config = config
        self.dir = work_dir(config, info_hash)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.owns_engine = engine is None
        self.engine = engine or Engine(
            EngineConfig(
                listen_interface=config.listen_interface,
                listen_port=config.listen_port,
                announce_ip=config.announce_ip,
                upload_limit=config.upload_limit,
                download_limit=config.download_limit,
                verify_https=config.verify_https,
                ca_file=config.ca_file,
                dht=config.dht,
                dht_bootstrap=config.dht_bootstrap,
            )
        )
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
        #: Refused: close() deletes the torrent's data and the work directory.
        self.discard = False
        self.feed: FeedClient | None = None
        if config.feed and torrent_bytes is not None:
            self.feed = self._start_feed(config.feed)

    def _prefill(self, torrent_bytes: bytes | None) -> Prefill | None:
        """A tree release downloaded afresh starts from the unchanged files
        of the releases installed beside its target (roost.prefill)."""
        if torrent_bytes is None:
            return None
        meta = _read_meta(torrent_bytes)
        root = self.dir / meta.name
        if meta.manifest is None or root.exists() or any(self.dir.glob("*.resume")):
            return None
        from roost.extract import install_target
        from roost.prefill import prefill

        try:
            target = install_target(meta, self.config.dest, tag_directory=self.config.tag_directory)
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
            download_limit=self.config.download_limit,
            have=self.reused.pieces if self.reused else (),
        ).start()

    def _stop_feed(self) -> None:
        if self.feed is not None:
            self.feed.stop()

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
        check_room(meta, self.dir, self.config.dest, tag_directory=self.config.tag_directory)
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
                self._emit_progress(emit)
                self._save_resume_quietly()
                return
            reason = should_stop()
            if reason:
                self._save_resume_quietly()
                raise EngineError(f"download stopped: {reason}", info_hash=self.tid)
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
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not should_stop():
            self.engine.events(min(left, 1.0))

    def _relay(self, event: object, emit: Emit) -> None:
        from roost.engine import HashFailed, PeerBanned, TrackerProblem

        if isinstance(event, HashFailed):
            self.hash_failures += 1
            emit(events.HashFailed(piece=event.piece))
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
        if self.discard:
            self.engine.remove(self.tid, delete_files=True)
        else:
            self._save_resume_quietly()
        if self.owns_engine:
            self.engine.close()
        if self.discard:
            shutil.rmtree(self.dir, ignore_errors=True)


#: One download in an engine (public name, for the agent's shared engine).
Download = _Download


def run_worker(config: PeerConfig) -> int:
    """The detached worker's main: events as JSON lines on stdout."""
    torrent_bytes = _torrent_bytes(config)
    info_hash = _info_hash_of(config, torrent_bytes)
    pid_file = worker_pid_file(config.temp_path, info_hash)
    stop: dict[str, str | None] = {"reason": None}
    completed = threading.Event()
    out_open = True

    def emit(event: events.Event) -> None:
        nonlocal out_open
        if not out_open:
            return
        try:
            sys.stdout.write(events.dump(event) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, OSError):
            out_open = False

    def on_term(signum: int, _frame: object) -> None:
        stop["reason"] = f"signal {signal.Signals(signum).name}"

    def watch_front() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.buffer.read()
        if not completed.is_set():
            stop["reason"] = "the peer front process went away"

    try:
        procs.write_pid_file(pid_file)
    except OSError as exc:
        emit(failed_event(disk_error(exc, pid_file.parent, f"cannot write {pid_file}")))
        return 1
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threading.Thread(target=watch_front, daemon=True).start()
    download: _Download | None = None
    try:
        download = _Download(config, torrent_bytes, info_hash)
        download.run_until_complete(emit, lambda: stop["reason"])
        completed.set()
        emit(events.Complete())
        # The front exits after installing; stop writing into its pipe.
        out_open = False
        with contextlib.suppress(OSError):
            sys.stdout.close()
        if config.linger > 0:
            download.linger(config.linger, lambda: stop["reason"])
        return 0
    except RoostError as exc:
        emit(failed_event(exc))
        return 1
    except Exception as exc:
        # A bug: its traceback goes to worker.log, which a full disk may
        # swallow; the pipe still carries the reason to the front.
        emit(events.Failed(error=f"peer worker crashed: {type(exc).__name__}: {exc}"))
        raise
    finally:
        try:
            if download is not None:
                download.close()
        finally:
            procs.remove_pid_file(pid_file)


# The front ---------------------------------------------------------------------


def _read_meta(torrent_bytes: bytes) -> Any:
    from roost.release import read_torrent

    return read_torrent(torrent_bytes)


def _check_trusted(config: PeerConfig, meta: Any) -> None:
    """With ``--trust``: refuse, before a byte is downloaded, a release that no
    trusted key signed (``roost.signing``). A magnet carries no signature."""
    from roost.release import check_signature
    from roost.signing import load_trusted

    trusted = load_trusted(config.trust)
    if meta is None:
        raise UsageError("--trust needs the release's .torrent: a magnet link carries no signature")
    check_signature(meta, trusted)


def run_peer(config: PeerConfig, emit: Emit) -> PeerResult:
    """Download, install, run the hook; lingering continues detached.

    Emits the events of the peer process protocol (ARCHITECTURE.md). Raises
    ``RoostError`` subclasses: ``UsageError`` (no torrent), ``EngineError``
    (download failed or timed out), ``DestinationError``/``VerifyError``/
    ``UnsafeArchiveError`` from installing, ``HookError``.
    """
    started = time.monotonic()
    torrent_bytes = _torrent_bytes(config)
    info_hash = _info_hash_of(config, torrent_bytes)
    deadline = started + config.timeout if config.timeout else None
    procs.stop_by_pid_file(worker_pid_file(config.temp_path, info_hash))
    totals = {"down": 0, "up": 0, "reused": 0}

    def relay(event: events.Event) -> None:
        if isinstance(event, events.Progress):
            totals["down"], totals["up"] = event.down, event.up
        elif isinstance(event, events.Reused):
            totals["reused"] = event.bytes
        emit(event)

    # A magnet's worker checks these once the metadata arrives.
    meta = _read_meta(torrent_bytes) if torrent_bytes is not None else None
    if config.trust:
        _check_trusted(config, meta)
    if meta is not None:
        check_installable(meta)
    early = _check_destination(config, torrent_bytes)
    if early is not None:
        # Already there, verified: nothing to download; the hook only if it
        # never succeeded there (an install in the moment a run died).
        emit(events.Installed(path=str(early), already=True))
        if config.hook:
            meta = _read_meta(torrent_bytes or b"")
            run_hook_once(
                config.hook,
                tag=meta.tag or meta.name,
                path=early,
                info_hash=info_hash,
                timeout=config.hook_timeout,
            )
        return PeerResult(True, early, True, time.monotonic() - started, 0, 0)
    if meta is not None:
        check_room(
            meta, work_dir(config, info_hash), config.dest, tag_directory=config.tag_directory
        )
    download: _Download | None = None
    if config.foreground:
        download = _Download(config, torrent_bytes, info_hash)
        try:
            download.run_until_complete(relay, lambda: _timed_out(deadline, config))
        except BaseException:
            download.close()
            raise
        relay(events.Complete())
    else:
        _run_detached(config, info_hash, relay, deadline)
    # A magnet's torrent exists now (the worker wrote it before completing).
    meta = meta or _read_meta(config.torrent.read_bytes())
    try:
        path, already = _install(config, meta)
        emit(events.Installed(path=str(path), already=already))
        if config.hook:
            tag = meta.tag or meta.name
            run_hook_once(
                config.hook,
                tag=tag,
                path=path,
                info_hash=meta.info_hash,
                timeout=config.hook_timeout,
            )
    finally:
        if download is not None:
            if config.linger > 0:
                download.linger(config.linger, lambda: None)
            download.close()
    seconds = time.monotonic() - started
    return PeerResult(
        True, path, already, seconds, totals["down"], totals["up"], reused=totals["reused"]
    )


def _timed_out(deadline: float | None, config: PeerConfig) -> str | None:
    if deadline is not None and time.monotonic() > deadline:
        return f"timed out after {config.timeout:g}s"
    return None


def _run_detached(config: PeerConfig, info_hash: str, relay: Emit, deadline: float | None) -> None:
    wdir = work_dir(config, info_hash)
    wdir.mkdir(parents=True, exist_ok=True)
    proc: subprocess.Popen[bytes] | _ForkedWorker
    if threading.active_count() == 1 and hasattr(os, "fork"):
        proc = _ForkedWorker.start(config, wdir / "worker.log")
    else:  # forking a threaded process is unsafe: a fresh interpreter instead
        log = open(wdir / "worker.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "roost.peer", "--worker", config.to_json()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
    assert proc.stdout is not None and proc.stdin is not None
    # The reader thread hands each line over; the main thread sleeps until a
    # line arrives (the worker writes about two a second), never polls.
    lines: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def read() -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    error: str | None = None
    failure: RoostError | None = None
    complete = False
    try:
        while not complete and error is None:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                if (reason := _timed_out(deadline, config)) is not None:
                    error = reason
                continue
            if line is None:
                status = proc.wait()
                error = f"peer worker exited with status {status} (see {wdir / 'worker.log'})"
                break
            try:
                event = events.load(line)
            except PeerProtocolError:
                continue  # not an event: a stray line from the worker
            if isinstance(event, events.Complete):
                complete = True
            elif isinstance(event, events.Failed):
                failure = error_from_event(event, info_hash)
                break
            elif event is not None:
                relay(event)
                if (reason := _timed_out(deadline, config)) is not None:
                    error = reason
    finally:
        if not complete:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with contextlib.suppress(OSError):
            proc.stdin.close()
    if failure is not None:
        raise failure
    if error is not None:
        raise EngineError(error, info_hash=info_hash)
    relay(events.Complete())


#: The class a worker's error keeps across the pipe, by its kind (classes
#: whose constructor takes the message alone); any other is an EngineError.
_WORKER_ERRORS: dict[str, type[RoostError]] = {
    "DestinationError": DestinationError,
    "DiskFull": DestinationError,
    "ReleaseError": ReleaseError,
    "VerifyError": VerifyError,
}


def failed_event(exc: RoostError) -> events.Failed:
    """The ``failed`` event for ``exc``; its ``kind`` lets the front re-raise it."""
    return events.Failed(error=str(exc), kind=type(exc).__name__)


def error_from_event(event: events.Failed, info_hash: str) -> RoostError:
    """The error a worker's ``failed`` event reports, as the front raises it."""
    message = event.error
    cls = _WORKER_ERRORS.get(event.kind or "")
    if cls is not None:
        return cls(message)
    if info_hash not in message:
        return EngineError(message, info_hash=info_hash)
    error = EngineError(message)  # the worker's message names it already
    error.info_hash = info_hash
    return error


class _ForkedWorker:
    """The worker as a fork of the front (``Popen``'s subset used above).

    Same process protocol as ``python -m roost.peer --worker``: own session,
    events on a pipe to the front, end-of-file on its stdin means the front
    went away, stderr into ``worker.log``. Forking skips a second interpreter
    start and the re-import of roost (~0.1 CPU-s a peer: 64 peers starting
    together on 2 cores wait on that). Only forked while single-threaded.
    """

    def __init__(self, pid: int, stdin: Any, stdout: Any):
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.returncode: int | None = None

    @classmethod
    def start(cls, config: PeerConfig, log: Path) -> _ForkedWorker:
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the caller's code
            code = 1
            try:
                os.setsid()
                os.dup2(to_worker_r, 0)
                os.dup2(from_worker_w, 1)
                os.dup2(log_fd, 2)
                for fd in (to_worker_r, to_worker_w, from_worker_r, from_worker_w, log_fd):
                    os.close(fd)
                signal.signal(signal.SIGPIPE, signal.SIG_IGN)
                code = run_worker(config)
            except BaseException:  # report, then leave the fork
                import traceback

                traceback.print_exc()
            finally:
                with contextlib.suppress(BaseException):
                    sys.stderr.flush()
                os._exit(code)
        os.close(to_worker_r)
        os.close(from_worker_w)
        os.close(log_fd)
        return cls(pid, os.fdopen(to_worker_w, "wb"), os.fdopen(from_worker_r, "rb"))

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


def _check_destination(config: PeerConfig, torrent_bytes: bytes | None) -> Path | None:
    """Before downloading: the installed path if the release is already there;
    ``DestinationError`` if the destination is taken and ``--clean`` is off."""
    from roost.extract import check_destination

    if torrent_bytes is None:  # a magnet: the manifest hash comes with the metadata
        return None
    found = check_destination(
        _read_meta(torrent_bytes),
        config.dest,
        tag_directory=config.tag_directory,
        clean=config.clean,
        keep_setid=config.keep_setid,
    )
    return None if found is None else found.path


def _install(config: PeerConfig, meta: Any) -> tuple[Path, bool]:
    from roost.extract import install_release

    payload = work_dir(config, meta.info_hash) / meta.name
    result = install_release(
        payload,
        meta,
        config.dest,
        tag_directory=config.tag_directory,
        clean=config.clean,
        keep_setid=config.keep_setid,
    )
    return _installed_path(result)


def _installed_path(result: Any) -> tuple[Path, bool]:
    """``install_release`` returns the path (or an object with ``path`` and
    ``already_installed``); accept both."""
    if isinstance(result, Path):
        return result, False
    if isinstance(result, tuple):
        return Path(result[0]), bool(result[1])
    return Path(result.path), bool(getattr(result, "already_installed", False))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m roost.peer --worker CONFIG_JSON", file=sys.stderr)
        return 2
    return run_worker(PeerConfig.from_json(argv[1]))


if __name__ == "__main__":
    raise SystemExit(main())

"""The worker, the detached process that owns the engine (``run_worker``;
``python -m roost.peer --worker CONFIG_JSON``), and the front's side of it:
starting it (a fork while single-threaded, else a fresh interpreter) and
reading its events, its errors keeping their class across the pipe
(roost.peer)."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from roost import events, procs
from roost.errors import (
    DestinationError,
    EngineError,
    PeerProtocolError,
    ReleaseError,
    RoostError,
    VerifyError,
    disk_error,
)
from roost.peer.config import (
    Emit,
    PeerConfig,
    _info_hash_of,
    _timed_out,
    _torrent_bytes,
    work_dir,
    worker_pid_file,
    worker_seeding_file,
)
from roost.peer.download import _Download

log = logging.getLogger(__name__)


def run_worker(config: PeerConfig) -> int:
    """The detached worker's main: events as JSON lines on stdout."""
    torrent_bytes = _torrent_bytes(config)
    info_hash = _info_hash_of(config, torrent_bytes)
    pid_file = worker_pid_file(config.temp_path, info_hash)
    seeding = worker_seeding_file(config.temp_path, info_hash)
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
        with contextlib.suppress(OSError):  # a new peer of it may stop this one now
            seeding.touch()
        emit(events.Complete())
        # The front exits after installing; stop writing into its pipe.
        out_open = False
        with contextlib.suppress(OSError):
            sys.stdout.close()
        if config.install.linger > 0:
            download.linger(config.install.linger, lambda: stop["reason"])
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
            with contextlib.suppress(OSError):
                seeding.unlink()
            procs.remove_pid_file(pid_file)


def _run_detached(config: PeerConfig, info_hash: str, relay: Emit, deadline: float | None) -> None:
    wdir = work_dir(config, info_hash)
    wdir.mkdir(parents=True, exist_ok=True)
    proc: subprocess.Popen[bytes] | _ForkedWorker
    if threading.active_count() == 1 and hasattr(os, "fork"):
        proc = _ForkedWorker.start(config, wdir / "worker.log")
    else:  # forking a threaded process is unsafe: a fresh interpreter instead
        log_file = open(wdir / "worker.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "roost.peer", "--worker", config.to_json()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
            )
        finally:
            log_file.close()
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
                if isinstance(event, events.TrackerWarning) and event.source == "feed":
                    log.warning("%s", event.message)  # the worker's own log is worker.log
                relay(event)
                if (reason := _timed_out(deadline, config)) is not None:
                    error = reason
    finally:
        if not complete:
            procs.stop_child(proc, grace=15)
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m roost.peer --worker CONFIG_JSON", file=sys.stderr)
        return 2
    return run_worker(PeerConfig.from_json(argv[1]))

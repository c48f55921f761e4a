"""Pid files for the processes roost starts, and stopping processes: by pid
file, by recorded identity, or a child roost holds (:func:`stop_child`).

roost never stops a process by matching its name (Murder's ``pkill -f
murder_client`` would kill a neighbour's deploy too). Every long-lived roost
process (a seeder, a lingering peer worker) records itself in a pid file; a
stop reads that file, checks the process still runs roost, and signals that
one pid only.

A pid file holds one line: ``PID START_TIME`` where START_TIME is the
process's start time in clock ticks since boot (from ``/proc/PID/stat``), so
a recycled pid is never mistaken for ours. Where /proc is missing the start
time is ``0`` and only the pid is checked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from roost._fs import atomic_write
from roost.errors import RoostError


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), to tell a reused
    pid; None if there is no such process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def _start_time(pid: int) -> int:
    return start_time(pid) or 0


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        return state != "Z"
    return True


def write_pid_file(path: Path, pid: int | None = None) -> Path:
    """Record ``pid`` (default: this process) in ``path``, atomically."""
    pid = os.getpid() if pid is None else pid
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, f"{pid} {_start_time(pid)}\n".encode())


def read_pid_file(path: Path) -> int | None:
    """The pid recorded in ``path`` if that process still runs, else None."""
    try:
        fields = Path(path).read_text().split()
        pid, started = int(fields[0]), int(fields[1]) if len(fields) > 1 else 0
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 0 or not alive(pid):
        return None
    if started and _start_time(pid) not in (0, started):
        return None  # the pid was recycled by another process
    return pid


def remove_pid_file(path: Path, pid: int | None = None) -> None:
    """Remove ``path`` if it still names ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    with contextlib.suppress(OSError, ValueError, IndexError):
        if int(Path(path).read_text().split()[0]) == pid:
            Path(path).unlink()


def stop_by_pid_file(path: Path, *, timeout: float = 10.0) -> bool:
    """SIGTERM the process in ``path``, SIGKILL it after ``timeout`` s.

    Returns True if a live process was stopped, False if none was running.
    The pid file is removed either way.
    """
    pid = read_pid_file(path)
    if pid is None:
        with contextlib.suppress(OSError):
            Path(path).unlink()
        return False
    _signal(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout):
        _signal(pid, signal.SIGKILL)
        if not wait_gone(pid, 5.0):
            raise RoostError(f"process {pid} from {path} did not stop")
    with contextlib.suppress(OSError):
        Path(path).unlink()
    return True


def stop_all(paths: list[Path], *, timeout: float = 10.0) -> int:
    """Stop the processes of several pid files at once (SIGTERM to all, then
    wait; SIGKILL what is left after ``timeout``). Returns how many ran."""
    running = [(path, pid) for path in paths if (pid := read_pid_file(path)) is not None]
    for _path, pid in running:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for _path, pid in running:
        if not wait_gone(pid, max(0.0, deadline - time.monotonic())):
            _signal(pid, signal.SIGKILL)
            wait_gone(pid, 5.0)
    for path in paths:
        with contextlib.suppress(OSError):
            Path(path).unlink()
    return len(running)


def stop_recorded(
    records: Sequence[tuple[int, int]], *, grace: float = 2.0, group: bool = False
) -> None:
    """SIGTERM, then after ``grace`` s SIGKILL, the recorded ``(pid, start
    time)`` processes that still run (a pid reused by another process is
    left alone). ``group``: signal each one's process group (it leads one),
    falling back to the process alone."""
    running = [(p, s) for p, s in records if start_time(p) == s]
    for pid, _ in running:
        _signal_quietly(pid, signal.SIGTERM, group)
    deadline = time.monotonic() + grace
    while running and time.monotonic() < deadline:
        running = [(p, s) for p, s in running if start_time(p) == s and alive(p)]
        if running:
            time.sleep(0.05)
    for pid, _ in running:
        _signal_quietly(pid, signal.SIGKILL, group)


def _signal_quietly(pid: int, sig: int, group: bool) -> None:
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
            return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class Child(Protocol):
    """What :func:`stop_child` needs of a child (``subprocess.Popen``, the
    peer's worker handle)."""

    def poll(self) -> int | None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def wait(self, timeout: float | None = None) -> int: ...


def stop_child(proc: Child | None, *, grace: float = 10.0) -> None:
    """Stop a child this process started and still holds: SIGTERM, then
    SIGKILL if it still runs after ``grace`` seconds; reaped either way.
    One that already ended (or None) is left as it is."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (a hook or health command run
    with ``start_new_session``: its children go with it); gone already: fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if not alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise RoostError(f"cannot signal process {pid}: {exc}") from exc


def pid_files(root: Path, pattern: str = "**/*.pid") -> Iterator[Path]:
    """Pid files under ``root`` (for ``roost stop-peering`` and clean-up)."""
    root = Path(root)
    if root.is_dir():
        yield from sorted(root.glob(pattern))

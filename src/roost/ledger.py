"""A run's own record of what it leaves on the machine, for the next run.

A ``roost deploy --local`` makes work directories (the release in the temp
directory, the hosts' downloads in /dev/shm) and starts processes (the
hosts' peers, which start lingering workers); a ``roost deploy -i`` makes
one (the release, the seeder's log) and starts the controller's seeder.
It removes them when it ends; a SIGKILL or a power loss ends it without
that. So before making each directory, and as soon as it started each
process, the run writes it down in its ledger,
``RUN_DIR/NAME-PID-START.json`` (atomically), owned by the run's
``(pid, start time)`` (``roost.procs``).

The next run calls :func:`reap` first: every ledger whose owner is gone (no
such pid, a zombie, or the pid reused: another start time) is cleaned by its
own records, never by a name match: the recorded processes still running
with their recorded start times are stopped, then the processes named by
the pid files inside the recorded directories (the workers record
themselves there, with start times), then the recorded directories, when
they are still directories owned by this user, are removed, then the ledger.

``RUN_DIR`` is per user: ``$XDG_RUNTIME_DIR/roost`` or ``TMP/roost-UID``,
mode 0700; one that is not this user's alone is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost import procs
from roost._fs import atomic_write
from roost.errors import UsageError

__all__ = ["Ledger", "Reaped", "begin", "default_run_dir", "reap"]

log = logging.getLogger(__name__)

_MAX_LEDGER = 1 << 20


def default_run_dir() -> Path:
    """This user's run directory (not created here)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "roost"
    return Path(tempfile.gettempdir()) / f"roost-{os.getuid()}"


def _open_run_dir(run_dir: Path) -> Path:
    """Create ``run_dir`` (0700) or check an existing one is ours alone.
    Raises ``UsageError``."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(run_dir)
    except OSError as exc:
        raise UsageError(f"cannot create the run directory {run_dir}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise UsageError(f"run directory {run_dir} is not a directory of this user's alone")
    return run_dir


class Ledger:
    """This run's ledger in ``run_dir``; ``close`` once everything it names
    is gone. Raises ``UsageError`` (run directory unusable) or ``OSError``."""

    def __init__(self, run_dir: Path, name: str):
        pid = os.getpid()
        self.path = _open_run_dir(run_dir) / f"{name}-{pid}-{procs.start_time(pid) or 0}.json"
        self._doc: dict[str, Any] = {
            "owner": [pid, procs.start_time(pid) or 0],
            "dirs": [],
            "processes": [],
        }
        self._save()

    def make_dir(self, parent: Path, prefix: str) -> Path:
        """A new directory ``parent/PREFIXrandom`` (0700), recorded first.
        Raises ``UsageError`` (cannot create it) or ``OSError`` (ledger)."""
        dirs: list[str] = self._doc["dirs"]
        while True:
            path = Path(parent).absolute() / f"{prefix}{secrets.token_hex(6)}"
            dirs.append(str(path))
            self._save()
            try:
                Path(parent).mkdir(parents=True, exist_ok=True)
                os.mkdir(path, 0o700)
                return path
            except OSError as exc:
                dirs.remove(str(path))
                if isinstance(exc, FileExistsError) and exc.filename == str(path):
                    continue  # not ours: draw another name
                self._save()
                raise UsageError(
                    f"cannot create a work directory in {parent}: {exc.strerror or exc}"
                ) from exc

    def add_process(self, pid: int) -> None:
        """Record a process just started (with its start time)."""
        started = procs.start_time(pid)
        if started is not None:
            self._doc["processes"].append([pid, started])
            self._save()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _save(self) -> None:
        atomic_write(self.path, json.dumps(self._doc).encode(), mode=0o600)


@dataclass(frozen=True)
class Reaped:
    """What :func:`reap` cleaned: ledgers of dead runs, processes stopped,
    directories removed and the bytes they held."""

    ledgers: int = 0
    processes: int = 0
    dirs: int = 0
    bytes: int = 0


def reap(run_dir: Path) -> Reaped:
    """Clean what the dead owners of ledgers in ``run_dir`` left (see the
    module's docstring). Raises ``UsageError`` (run directory unusable);
    a ledger that cannot be read is left alone, with a warning."""
    run_dir = _open_run_dir(run_dir)
    total = Reaped()
    for path in sorted(run_dir.glob("*.json")):
        doc = _read(path)
        if doc is None:
            log.warning("ignoring the unreadable run record %s", path)
            continue
        pid, started = doc["owner"]
        if procs.alive(pid) and started in (0, procs.start_time(pid)):
            continue  # its run is still going (0: no /proc, the pid alone tells)
        records = [(int(p), int(s)) for p, s in doc["processes"]]
        running = [(p, s) for p, s in records if procs.start_time(p) == s and procs.alive(p)]
        procs.stop_recorded(running)
        stopped, removed, freed = len(running), 0, 0
        for name in doc["dirs"]:
            where = Path(name)
            try:
                st = os.lstat(where)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            with contextlib.suppress(Exception):
                stopped += procs.stop_all(list(procs.pid_files(where)), timeout=5)
            freed += _usage(where)
            shutil.rmtree(where, ignore_errors=True)
            removed += 1
        with contextlib.suppress(OSError):
            path.unlink()
        total = Reaped(
            total.ledgers + 1, total.processes + stopped, total.dirs + removed, total.bytes + freed
        )
    return total


def begin(run_dir: Path | None, name: str) -> Ledger:
    """Clean up after dead runs (one warning line if there were any), then
    open this run's ledger; ``run_dir`` None: :func:`default_run_dir`.
    Raises ``UsageError`` or ``OSError``."""
    run_dir = run_dir or default_run_dir()
    reaped = reap(run_dir)
    if reaped.ledgers:
        log.warning(
            "removed what %d killed deploy(s) left: %d processes, %d directories, %.1f MiB",
            reaped.ledgers, reaped.processes, reaped.dirs, reaped.bytes / (1 << 20),
        )  # fmt: skip
    return Ledger(run_dir, name)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(_MAX_LEDGER))
        pid, started = doc["owner"]
        if not (isinstance(pid, int) and isinstance(started, int) and pid > 0):
            return None
        if not isinstance(doc["dirs"], list) or not isinstance(doc["processes"], list):
            return None
        if not all(isinstance(d, str) for d in doc["dirs"]):
            return None
        if not all(isinstance(p, list) and len(p) == 2 for p in doc["processes"]):
            return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _usage(root: Path) -> int:
    """Bytes of storage the files under ``root`` take."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total

"""The record beside each installed release, and its hook run exactly once.

Beside the target ``DIR/NAME`` of an install (``roost.extract``) is the
directory ``DIR/.NAME.roost/``, made fresh by each install once the tree is
in place:

* ``install.json`` (atomic): ``manifest_sha256``, the release's, from its
  torrent; ``tree_sha256``, the manifest the tree has *as installed*. They
  differ when setuid/setgid/sticky bits were stripped; the record lets the
  next run still recognise the tree as this release before downloading;
* ``hook-SHA`` (empty), one per hook command that exited 0 on this install
  (SHA: of the command).

:func:`run_hook_once` holds an ``flock`` on the target while it checks for
the hook's file and runs the hook, and the hook's shell makes that file
itself, right after the hook exits 0: so a peer killed while its hook runs
(its controller died, a re-run stopped it) neither breaks the hook nor
loses its success, and a second run on the host waits on the lock, which
the hook's shell holds until the hook exits (not the hook: a daemon it
starts holds nothing), then finds the file. A host installed in the
moment its controller died has no hook file: the re-run, which finds the
release installed, runs the hook there and only there. A release installed
by a roost without records has none either: its hook runs once more.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from roost import procs
from roost._fs import atomic_write
from roost.errors import HookError
from roost.manifest import MAX_MANIFEST

__all__ = [
    "installed_manifest",
    "read_record",
    "remove_records",
    "run_hook",
    "run_hook_once",
    "state_dir",
    "write_record",
]

_MAX_RECORD = 1 << 20
#: seconds a hook may run before it is killed and reported (``--hook-timeout``)
HOOK_TIMEOUT = 600.0


def state_dir(target: Path) -> Path:
    """The directory of records of the release installed at ``target``."""
    target = Path(target)
    return target.parent / f".{target.name}.roost"


def read_record(target: Path) -> dict[str, Any] | None:
    """The install record of ``target``; None if missing or unreadable."""
    try:
        with open(state_dir(target) / "install.json", "rb") as f:
            data = json.loads(f.read(_MAX_RECORD))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def write_record(
    target: Path,
    *,
    manifest_sha256: str | None,
    tree_sha256: str | None,
    manifest: bytes | None = None,
) -> None:
    """Fresh records for a release just installed at ``target`` (no hook
    has run on it); ``manifest``: the tree's manifest as installed, which a
    later release's download reuses unchanged files by (``roost.prefill``).
    Raises ``OSError``."""
    where = state_dir(target)
    remove_records(target)
    where.mkdir(mode=0o755)
    if manifest is not None:
        atomic_write(where / "manifest.json", manifest)
    doc = {"manifest_sha256": manifest_sha256, "tree_sha256": tree_sha256}
    atomic_write(where / "install.json", json.dumps(doc, sort_keys=True).encode() + b"\n")


def installed_manifest(target: Path) -> bytes | None:
    """The manifest ``target``'s release was installed with, if on record."""
    try:
        with open(state_dir(target) / "manifest.json", "rb") as f:
            data = f.read(MAX_MANIFEST + 1)
    except OSError:
        return None
    return data if len(data) <= MAX_MANIFEST else None


def remove_records(target: Path) -> None:
    """Remove the records of ``target`` (a pruned or replaced release)."""
    shutil.rmtree(state_dir(target), ignore_errors=True)


def _hook_file(target: Path, command: str) -> Path:
    return state_dir(target) / f"hook-{hashlib.sha256(command.encode()).hexdigest()[:32]}"


# The hook, then (only if it exited 0) the file that says so, by the shell
# that ran it: it outlives a peer killed meanwhile. The lock is this shell's
# stdin; the hook's is /dev/null, so a daemon the hook starts never holds it.
_ONCE = 'sh -c "$1" </dev/null && : > "$2"'


def run_hook_once(
    command: str,
    *,
    tag: str,
    path: Path,
    info_hash: str,
    extra_env: dict[str, str] | None = None,
    timeout: float | None = HOOK_TIMEOUT,
) -> bool:
    """Run ``command`` for the release at ``path`` unless it already
    succeeded on this install; record it once it has. Returns whether it ran.

    Raises ``HookError`` (the hook failed: nothing recorded, the next run
    tries again) or ``OSError`` (the records cannot be made)."""
    path = Path(path)
    done = _hook_file(path, command)
    if done.exists():
        return False
    with _locked(path) as lock_fd:
        if done.exists():
            return False
        done.parent.mkdir(mode=0o755, exist_ok=True)
        argv = ["/bin/sh", "-c", _ONCE, "roost-hook", command, str(done)]
        _run(argv, command, tag, path, info_hash, extra_env, timeout, lock=lock_fd)
        return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def run_hook(
    command: str,
    *,
    tag: str,
    path: Path,
    info_hash: str,
    extra_env: dict[str, str] | None = None,
    timeout: float | None = HOOK_TIMEOUT,
) -> None:
    """Run ``command`` through the shell with ROOST_TAG/PATH/INFO_HASH set
    (plus ``extra_env``, e.g. the agent's ROOST_PREVIOUS), in the release's
    directory, every time (the agent's rollbacks).

    Raises ``HookError`` naming the exit status and the tail of stderr.
    """
    _run(["/bin/sh", "-c", command], command, tag, Path(path), info_hash, extra_env, timeout)


def _run(
    argv: list[str],
    command: str,
    tag: str,
    path: Path,
    info_hash: str,
    extra_env: dict[str, str] | None,
    timeout: float | None,
    lock: int | None = None,
) -> None:
    """``lock``: the shell's stdin (held until it exits). The stderr goes to
    an unlinked file, not a pipe: a hook whose peer was killed is not killed
    by SIGPIPE, nor does the peer wait for daemons the hook started. A hook
    still running after ``timeout`` seconds is killed, its whole process
    group, and reported as timed out."""
    env = dict(os.environ, ROOST_TAG=tag, ROOST_PATH=str(path), ROOST_INFO_HASH=info_hash)
    env.update(extra_env or {})
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=path if path.is_dir() else None,
            stdin=subprocess.DEVNULL if lock is None else lock,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            procs.kill_group(proc.pid)
            proc.wait()
            raise HookError(command, -1, _tail(err), timeout=timeout) from None
        if returncode != 0:
            raise HookError(command, returncode, _tail(err))


def _tail(err: Any) -> str:
    err.seek(max(0, os.fstat(err.fileno()).st_size - 2000))
    return str(err.read().decode(errors="replace"))

"""The record beside each installed release, and its hook run exactly once.

An install (``roost.extract``) ends by writing ``.NAME.roost.json`` beside
the target ``DIR/NAME`` (atomically, after the tree is in place):

* ``manifest_sha256``: the release's, from its torrent;
* ``tree_sha256``: the manifest the tree has *as installed*. It differs from
  the release's when setuid/setgid/sticky bits were stripped, and lets the
  next run still recognise the tree as this release before downloading;
* ``hooks``: the hook commands that have succeeded on this install, added
  (atomically) only once a hook exited 0.

:func:`run_hook_once` holds an ``flock`` on the target while it reads the
record, runs the hook and records it, so two runs on one host (a re-run
beside a dying one) never both run it; the hook's shell inherits the lock,
so it is held until the hook itself is gone. A host installed in the moment
its controller died has a record without the hook: the re-run, which finds
the release installed, runs the hook there and only there. A fresh install
writes a fresh record (no hooks), so a replaced release runs its hook again.
A release installed by a roost without records has no record: its hook runs
once more, then is recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from roost._fs import atomic_write
from roost.errors import HookError

__all__ = ["read_record", "record_path", "run_hook", "run_hook_once", "write_record"]

_MAX_RECORD = 1 << 20


def record_path(target: Path) -> Path:
    """Where the record of the release installed at ``target`` lives."""
    target = Path(target)
    return target.parent / f".{target.name}.roost.json"


def read_record(target: Path) -> dict[str, Any] | None:
    """The record beside ``target``; None if missing or unreadable."""
    try:
        with open(record_path(target), "rb") as f:
            data = json.loads(f.read(_MAX_RECORD))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def write_record(target: Path, *, manifest_sha256: str | None, tree_sha256: str | None) -> None:
    """A fresh record for a release just installed at ``target`` (no hook
    run yet). Raises ``OSError``."""
    doc: dict[str, Any] = {"manifest_sha256": manifest_sha256, "tree_sha256": tree_sha256}
    doc["hooks"] = []
    atomic_write(record_path(target), json.dumps(doc, sort_keys=True).encode() + b"\n")


def hook_done(target: Path, command: str) -> bool:
    record = read_record(target)
    hooks = record.get("hooks") if record else None
    return isinstance(hooks, list) and command in hooks


def run_hook_once(
    command: str,
    *,
    tag: str,
    path: Path,
    info_hash: str,
    extra_env: dict[str, str] | None = None,
) -> bool:
    """Run ``command`` for the release at ``path`` unless its record says it
    already succeeded there; record it once it has. Returns whether it ran.

    Raises ``HookError`` (the hook failed: nothing recorded, the next run
    tries again) or ``OSError`` (the record cannot be written)."""
    with _locked(Path(path)) as lock_fd:
        if hook_done(path, command):
            return False
        run_hook(
            command, tag=tag, path=path, info_hash=info_hash, extra_env=extra_env, keep=lock_fd
        )
        record = read_record(path) or {"manifest_sha256": None, "tree_sha256": None}
        hooks = record.get("hooks")
        record["hooks"] = [*(hooks if isinstance(hooks, list) else []), command]
        atomic_write(record_path(path), json.dumps(record, sort_keys=True).encode() + b"\n")
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
    keep: int | None = None,
) -> None:
    """Run ``command`` through the shell with ROOST_TAG/PATH/INFO_HASH set
    (plus ``extra_env``, e.g. the agent's ROOST_PREVIOUS), in the release's
    directory. ``keep``: a descriptor the hook inherits (the lock).

    Raises ``HookError`` naming the exit status and the tail of stderr.
    """
    env = dict(os.environ, ROOST_TAG=tag, ROOST_PATH=str(path), ROOST_INFO_HASH=info_hash)
    env.update(extra_env or {})
    proc = subprocess.run(
        command,
        shell=True,
        env=env,
        cwd=path if path.is_dir() else None,
        capture_output=True,
        check=False,
        pass_fds=() if keep is None else (keep,),
    )
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace")[-2000:]
        raise HookError(command, proc.returncode, tail)

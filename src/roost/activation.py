"""Activation: which installed release a host runs, switched in one rename.

Theory of operation. With activation, a destination holds every installed
release side by side and one symlink that says which is live::

    DEST/releases/v41/           installed trees (atomic installs, as always)
    DEST/releases/v42/
    DEST/current -> releases/v42 the live release
    DEST/.roost-activations.json the order in which releases were made current

:func:`activate` writes ``current.tmp -> releases/TAG`` and renames it over
``current``: a reader of ``DEST/current`` sees the old release or the new
one, never neither. It refuses a TAG that is not installed, so a host that
never had a release is reported and never half-switched. The history file
(written with :func:`roost._fs.atomic_write`) is what "previous" means for
:func:`rollback`: the most recent release before the current one that is
still installed. :func:`prune` keeps the newest ``keep`` releases and never
removes the current or the previous one.

A plain rollback is an activation like any other, so rolling back twice
returns to where it began. ``rollback(..., reject=TAG)`` (a rollout's
``--rollback-on-fail``) instead undoes TAG's activation: its entry is marked
``"rejected": true`` rather than a new one appended, so the previous release
is again the one the host had before TAG, and :func:`previous` skips TAG for
as long as its latest entry is a rejection (activating it again lifts that).

The agent (``roost.agent``) and push deploys with ``--activate`` use these
functions; ``roost rollback`` and ``roost releases`` call them on each host.
Errors are ``DestinationError`` with one line naming the path and the tag.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from roost._fs import atomic_write
from roost._parse import load_json
from roost.errors import DestinationError
from roost.installed import remove_records, state_dir

__all__ = [
    "CURRENT",
    "HISTORY",
    "RELEASES",
    "Releases",
    "Switch",
    "activate",
    "current",
    "installed",
    "previous",
    "prune",
    "releases",
    "remove_release",
    "rollback",
]

RELEASES = "releases"
CURRENT = "current"
DEFAULT_HEALTH_TIMEOUT = 60.0  # seconds a health check may run (roost.rollout, the agent)
HISTORY = ".roost-activations.json"
_HISTORY_KEEP = 50


@dataclass(frozen=True)
class Switch:
    """What :func:`activate` or :func:`rollback` did on one destination."""

    #: what is current now; None when a first activation was undone
    #: (:func:`rollback` with ``reject`` and nothing before it)
    tag: str | None
    previous: str | None
    changed: bool  # False: ``tag`` was already current


@dataclass(frozen=True)
class Releases:
    """What :func:`releases` reports of one destination."""

    dest: str
    current: str | None
    previous: str | None
    installed: tuple[str, ...]  # oldest first

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "installed": list(self.installed)}


def current(dest: Path) -> str | None:
    """The tag ``DEST/current`` points at, or None."""
    link = Path(dest) / CURRENT
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if link.exists():
            raise DestinationError(f"{link} exists and is not a symlink") from None
        raise DestinationError(f"cannot read {link}: {exc.strerror}") from exc
    prefix = f"{RELEASES}/"
    if not target.startswith(prefix) or "/" in target[len(prefix) :]:
        raise DestinationError(f"{link} points at {target!r}, not at {RELEASES}/TAG")
    return target[len(prefix) :]


def installed(dest: Path) -> list[str]:
    """Installed release tags, oldest first (by install time)."""
    root = Path(dest) / RELEASES
    try:
        entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise DestinationError(f"cannot read {root}: {exc.strerror}") from exc
    dirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
    return [
        e.name for e in sorted(dirs, key=lambda e: (e.stat(follow_symlinks=False).st_ctime, e.name))
    ]


def _history(dest: Path) -> list[dict[str, Any]]:
    """The activations recorded in ``DEST/.roost-activations.json``, oldest first."""
    path = Path(dest) / HISTORY
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise DestinationError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        doc = load_json(raw, str(path), DestinationError, max_bytes=1 << 20)
    except DestinationError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("activated"), list):
        raise DestinationError(f"{path} is not an activation history; remove it to begin anew")
    return [e for e in doc["activated"] if isinstance(e, dict) and isinstance(e.get("tag"), str)]


def _record(dest: Path, tag: str | None, rejected: str | None = None) -> None:
    """Append ``tag``'s activation; with ``rejected``, undo that release's
    activation instead (see the module's docstring); ``tag`` None: nothing
    is current now."""
    path = Path(dest) / HISTORY
    try:
        entries = _history(dest)
    except DestinationError:
        entries = []  # unreadable: begin anew rather than refuse to switch
    at = round(time.time(), 3)
    if rejected is None:
        entries.append({"tag": tag, "at": at})
    else:
        if entries and entries[-1]["tag"] == rejected:
            entries[-1] = {**entries[-1], "rejected": True}
        else:
            entries.append({"tag": rejected, "at": at, "rejected": True})
        active = [e["tag"] for e in entries if e.get("rejected") is not True]
        if tag is not None and (not active or active[-1] != tag):  # not current before it
            entries.append({"tag": tag, "at": at})
    try:
        body = json.dumps({"activated": entries[-_HISTORY_KEEP:]}, indent=1) + "\n"
        atomic_write(path, body.encode())
    except OSError as exc:
        raise DestinationError(f"cannot write {path}: {exc.strerror}") from exc


def previous(dest: Path) -> str | None:
    """The release that was current before the current one and is still
    installed, never one whose latest entry in the history is a rejection."""
    now = current(dest)
    have = set(installed(dest))
    seen: set[str] = set()
    for entry in reversed(_history(dest)):
        tag = entry["tag"]
        if tag in seen:
            continue
        seen.add(tag)
        if tag != now and tag in have and entry.get("rejected") is not True:
            return tag
    return None


def releases(dest: Path) -> Releases:
    return Releases(str(dest), current(dest), previous(dest), tuple(installed(dest)))


def activate(dest: Path, tag: str, *, keep: int | None = None) -> Switch:
    """Make ``DEST/releases/TAG`` the current release, atomically; then, with
    ``keep``, :func:`prune` to that many releases."""
    switch = _switch(Path(dest), tag)
    if keep is not None:
        prune(dest, keep)
    return switch


def _switch(dest: Path, tag: str, rejected: str | None = None) -> Switch:
    target = dest / RELEASES / tag
    if "/" in tag or tag in ("", ".", "..") or not target.is_dir() or target.is_symlink():
        raise DestinationError(f"release {tag} is not installed in {dest / RELEASES}")
    if not (state_dir(target) / "install.json").is_file():  # a directory roost never finished
        raise DestinationError(
            f"{target} is not a release roost installed (no {state_dir(target).name}/install.json)"
        )
    before = current(dest)
    if before == tag:
        if rejected is not None and rejected != tag:
            _record(dest, tag, rejected)
        return Switch(tag, previous(dest), changed=False)
    link = dest / CURRENT
    tmp = dest / f"{CURRENT}.tmp"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(f"{RELEASES}/{tag}", tmp)
        os.replace(tmp, link)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise DestinationError(f"cannot switch {link} to {tag}: {exc.strerror}") from exc
    _record(dest, tag, rejected)
    return Switch(tag, before, changed=True)


def rollback(dest: Path, to: str | None = None, *, reject: str | None = None) -> Switch:
    """Switch back to ``to``, or to the previous release; nothing is downloaded.

    With ``reject`` (the release being rolled back from, which failed), its
    activation is undone in the history rather than this switch appended:
    the previous release is again the one from before it, and ``reject`` is
    never the previous release until it is activated again; if ``reject``
    was the first release made current, none is current afterwards. Raises
    ``DestinationError`` (nothing changed) if there is nowhere to go back to
    or ``to`` is not installed, or ``to`` is ``reject``."""
    dest = Path(dest)
    target = to or previous(dest)
    if target is None and reject is not None and current(dest) == reject:
        return _undo_first(dest, reject)
    if target is None:
        raise DestinationError(f"{dest}: no previous release to roll back to")
    if target == reject:
        raise DestinationError(f"{dest}: cannot roll back to {reject}, the release rejected")
    return _switch(dest, target, reject)


def _undo_first(dest: Path, reject: str) -> Switch:
    """``reject`` was the first release made current here and failed: as
    before it, no release is current (``DEST/current`` removed)."""
    link = dest / CURRENT
    try:
        link.unlink()
    except OSError as exc:
        raise DestinationError(f"cannot remove {link}: {exc.strerror}") from exc
    _record(dest, None, reject)
    return Switch(None, reject, changed=True)


def remove_release(dest: Path, tag: str) -> None:
    """Remove ``DEST/releases/TAG`` and its install records: renamed aside
    first, so a half-removed tree is never visible under its tag."""
    target = Path(dest) / RELEASES / tag
    remove_records(target)
    if not target.exists() and not target.is_symlink():
        return
    doomed = target.parent / f".{tag}.roost-pruning-{os.getpid()}"
    try:
        os.rename(target, doomed)
    except OSError as exc:
        raise DestinationError(f"cannot remove release {tag}: {exc.strerror}") from exc

    def writable(func: Any, path: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            func(path)

    shutil.rmtree(doomed, onerror=writable)


def prune(dest: Path, keep: int, *, protect: tuple[str | None, ...] = ()) -> list[str]:
    """Remove all but the newest ``keep`` releases, never the current, the
    previous or any in ``protect``; returns the tags removed."""
    dest = Path(dest)
    guarded = {t for t in (current(dest), previous(dest), *protect) if t}
    tags = installed(dest)
    room = max(0, keep - len(guarded & set(tags)))
    others = [t for t in reversed(tags) if t not in guarded]
    removed = []
    for tag in others[room:]:
        remove_release(dest, tag)
        removed.append(tag)
    return removed

"""The agent's on-disk state under DEST: ``.roost-agent.json`` (what
``roost agent status`` prints), the lock that keeps one agent per
destination, and the names of the files and directories it manages."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roost._fs import atomic_write, open_regular
from roost._parse import load_json
from roost.errors import AgentStateError, DestinationError, UsageError

STATE_FILE = ".roost-agent.json"
LOCK_FILE = ".roost-agent.lock"
CACHE_DIR = ".roost-cache"
RELEASES = "releases"
CURRENT = "current"
MAX_STATE = 16 * 1024 * 1024  # a state file larger than this is refused


@dataclass
class AgentState:
    """What ``DEST/.roost-agent.json`` holds (``roost agent status`` prints it)."""

    channel: str | None = None
    current: str | None = None
    previous: str | None = None
    installed: list[dict[str, Any]] = field(default_factory=list)  # tag, info_hash, installed
    rejected: dict[str, Any] | None = None  # tag, info_hash, error
    last_error: str | None = None
    last_error_at: float | None = None
    last_poll: float | None = None
    last_ok: float | None = None
    last_download: dict[str, Any] | None = None
    seeding: list[dict[str, Any]] = field(default_factory=list)  # tag, info_hash, uploaded, peers

    @classmethod
    def load(cls, dest: Path) -> AgentState:
        """The saved state, or a fresh one; ``AgentStateError`` if it is corrupt."""
        path = Path(dest) / STATE_FILE
        try:
            with open_regular(path) as f:
                data = f.read(MAX_STATE + 1)
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise AgentStateError(
                f"agent state {path} is unreadable: {exc.strerror or exc}"
            ) from None
        if len(data) > MAX_STATE:
            raise AgentStateError(f"agent state {path} is larger than {MAX_STATE} bytes")
        try:
            doc = load_json(data, str(path), AgentStateError)
        except AgentStateError as exc:
            raise AgentStateError(f"agent state is unreadable: {exc}") from None
        if not isinstance(doc, dict):
            raise AgentStateError(f"agent state {path} is not a JSON object")
        problem = _problem(doc)
        if problem is not None:
            raise AgentStateError(f"agent state {path} is malformed: {problem}")
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})

    def save(self, dest: Path) -> None:
        path = Path(dest) / STATE_FILE
        data = json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"
        atomic_write(path, data.encode())

    def installed_entry(self, tag: str) -> dict[str, Any] | None:
        return next((e for e in self.installed if e.get("tag") == tag), None)

    def info_hash(self, tag: str | None) -> str | None:
        entry = self.installed_entry(tag) if tag else None
        return None if entry is None else str(entry["info_hash"])


def _problem(doc: dict[str, Any]) -> str | None:
    """What is wrong with a state document's shape, or None."""
    for key in ("channel", "current", "previous", "last_error"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            return f"{key!r} is not a string"
    for key in ("last_error_at", "last_poll", "last_ok"):
        value = doc.get(key)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            return f"{key!r} is not a number"
    for key in ("rejected", "last_download"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            return f"{key!r} is not an object"
    for key in ("installed", "seeding"):
        if not isinstance(doc.get(key, []), list):
            return f"{key!r} is not a list"
    for i, entry in enumerate(doc.get("installed", [])):
        if not isinstance(entry, dict):
            return f"installed[{i}] is not an object"
        for key in ("tag", "info_hash"):
            if not isinstance(entry.get(key), str):
                return f"installed[{i}] has no {key!r} string"
        installed = entry.get("installed", 0)
        if not isinstance(installed, int | float) or isinstance(installed, bool):
            return f"installed[{i}]: 'installed' is not a number"
    for i, entry in enumerate(doc.get("seeding", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("tag"), str):
            return f"seeding[{i}] is not an object with a 'tag'"
    return None


def lock_destination(path: Path) -> Any:
    """Hold ``path`` locked for this agent's life; ``DestinationError`` if another has it."""
    f = open(path, "a+")  # noqa: SIM115 - held open for the agent's life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise DestinationError(f"another roost agent is running for {path.parent}") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def read_status(dest: Path) -> dict[str, Any]:
    """The saved agent state of ``dest`` plus where ``DEST/current`` points.

    Raises ``UsageError`` if no agent has run there.
    """
    dest = Path(dest)
    if not (dest / STATE_FILE).is_file():
        raise UsageError(f"no roost agent state in {dest} ({STATE_FILE} is missing)")
    doc = dict(AgentState.load(dest).__dict__)
    link = dest / CURRENT
    doc["link"] = os.readlink(link) if link.is_symlink() else None
    doc["running"] = running_agent(dest / LOCK_FILE)
    return doc


def running_agent(path: Path) -> int | None:
    """The pid of the agent holding ``path`` (:func:`lock_destination`), or
    None if no agent holds it now."""
    try:
        f = open(path)  # noqa: SIM115 - closed below, the probe's lock with it
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = f.read().strip()
            return int(text) if text.isdigit() else 0
        return None

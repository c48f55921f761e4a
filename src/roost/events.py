"""The peer protocol: what ``roost peer --events json`` says, one JSON object a line.

Every event is a frozen dataclass; :func:`dump` writes one as a line
(``{"event": NAME, ...fields, "t": seconds since the peer started}``) and
:func:`load` reads a line back into its dataclass, checking every field's
type. Producers (the peer's front and worker) and consumers (the local
fleet, the SSH fleet, the progress view, the agent) use these types, so mypy
checks the protocol end to end; nobody parses error text.

A line whose ``event`` is unknown loads as None: a newer peer may say more
than an older controller knows, and that is not an error. A line that is not
a JSON object, or whose fields have the wrong types, raises ``ProtocolError``
(``roost.errors``), naming the field.

The sequence of a peer's life: ``started``, then ``progress`` (every second
or so; ``hash_failed``, ``peer_banned``, ``tracker_warning`` as they happen),
``complete`` (every piece verified), ``installed``, and last ``done``; a
failure is ``failed`` (with its reason and, where known, its kind) and then
``done`` with ``ok`` false.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from roost.errors import PeerProtocolError

__all__ = [
    "Complete",
    "Done",
    "Event",
    "Failed",
    "HashFailed",
    "Installed",
    "PeerBanned",
    "Progress",
    "Started",
    "TrackerWarning",
    "as_dict",
    "dump",
    "load",
]

_MAX_LINE = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class _Event:
    name: ClassVar[str]
    #: seconds since the peer started, stamped by :func:`dump`'s caller
    t: float | None = None


@dataclass(frozen=True)
class Started(_Event):
    name: ClassVar[str] = "started"
    at: float  # wall clock, seconds since the epoch


@dataclass(frozen=True)
class Progress(_Event):
    name: ClassVar[str] = "progress"
    progress: float  # 0..1 of the pieces verified
    down: int  # bytes received, over BitTorrent and the feed
    up: int
    rate_down: int  # bytes/s
    peers: int
    feed: int | None = None  # bytes of ``down`` that came from the origin's feed


@dataclass(frozen=True)
class Reused(_Event):
    """Files of an earlier installed release put in place of a download
    (their sha256 matched the new manifest), before any byte arrived."""

    name: ClassVar[str] = "reused"
    bytes: int  # what need not be downloaded
    files: int
    rejected: int = 0  # files whose bytes on disk no longer matched their record


@dataclass(frozen=True)
class HashFailed(_Event):
    name: ClassVar[str] = "hash_failed"
    piece: int


@dataclass(frozen=True)
class PeerBanned(_Event):
    name: ClassVar[str] = "peer_banned"
    address: str


@dataclass(frozen=True)
class TrackerWarning(_Event):
    name: ClassVar[str] = "tracker_warning"
    url: str
    message: str
    #: whose warning: "tracker", or "feed" (the origin's feed cannot be reached)
    source: str = "tracker"


@dataclass(frozen=True)
class Complete(_Event):
    name: ClassVar[str] = "complete"


@dataclass(frozen=True)
class Installed(_Event):
    name: ClassVar[str] = "installed"
    path: str
    already: bool = False


@dataclass(frozen=True)
class Failed(_Event):
    name: ClassVar[str] = "failed"
    error: str  # one line, for people
    kind: str | None = None  # the RoostError subclass, for programs (e.g. "DestinationError")


@dataclass(frozen=True)
class Done(_Event):
    name: ClassVar[str] = "done"
    ok: bool
    seconds: float
    down: int
    up: int
    reused: int = 0  # bytes taken from an earlier release instead of downloaded


Event = (
    Started
    | Reused
    | Progress
    | HashFailed
    | PeerBanned
    | TrackerWarning
    | Complete
    | Installed
    | Failed
    | Done
)
_KINDS: dict[str, type[_Event]] = {cls.name: cls for cls in typing.get_args(Event)}


_HINTS: dict[str, dict[str, Any]] = {}


def _hints(cls: type[_Event]) -> dict[str, Any]:
    """``cls``'s field types, resolved when first loaded (not at import: every
    peer imports this module, few load events)."""
    hints = _HINTS.get(cls.name)
    if hints is None:
        hints = _HINTS[cls.name] = typing.get_type_hints(cls)
    return hints


def as_dict(event: Event) -> dict[str, Any]:
    """The event as its JSON object (``{"event": NAME, ...}``); None fields left out."""
    doc: dict[str, Any] = {"event": event.name}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if value is not None:
            doc[f.name] = value
    return doc


def dump(event: Event) -> str:
    """One JSON line (without the newline)."""
    return json.dumps(as_dict(event), separators=(",", ":"))


def load(line: str | bytes) -> Event | None:
    """The event on ``line``; None for an event this roost does not know."""
    if len(line) > _MAX_LINE:
        raise PeerProtocolError(f"peer event line of {len(line)} bytes is too long")
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise PeerProtocolError(f"peer event is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("event"), str):
        raise PeerProtocolError("peer event is not an object with an 'event' name")
    cls = _KINDS.get(doc["event"])
    if cls is None:
        return None
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in doc:
            if f.default is dataclasses.MISSING:
                raise PeerProtocolError(f"peer event {cls.name!r} has no {f.name!r}")
            continue
        values[f.name] = _checked(cls.name, f.name, doc[f.name], _hints(cls)[f.name])
    return cls(**values)  # type: ignore[return-value]


def _checked(kind: str, field: str, value: Any, hint: Any) -> Any:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for t in allowed:
        if t is type(None) and value is None:
            return None
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
    wanted = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise PeerProtocolError(f"peer event {kind!r}: {field!r} is not {wanted}")

"""The announce parser by the book, as a test oracle for the tracker's one
parser (roost.tracker.protocol.parse_announce): every parameter through
``parse_query``'s lists, each field read with "exactly once" checked, in the
order the tracker checks them."""

from __future__ import annotations

from roost.errors import ProtocolError
from roost.tracker import protocol as proto


def _one(params: dict[bytes, list[bytes]], name: bytes) -> bytes | None:
    values = params.get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise ProtocolError(f"parameter {name.decode()} given more than once")
    return values[0]


def _int(params: dict[bytes, list[bytes]], name: bytes, default: int | None) -> int | None:
    raw = _one(params, name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 20:
        raise ProtocolError(f"parameter {name.decode()} is not a non-negative integer")
    return int(raw)


def _label(params: dict[bytes, list[bytes]], name: str) -> str | None:
    return proto._label(_one(params, name.encode()), name)


def parse_announce_by_the_book(query: bytes) -> proto.Announce:
    params = proto.parse_query(query)
    info_hash = proto._hash20(_one(params, b"info_hash"), "info_hash")
    peer_id = proto._hash20(_one(params, b"peer_id"), "peer_id")
    port = _int(params, b"port", None)
    if port is None:
        raise ProtocolError("missing port")
    if not 0 < port < 65536:
        raise ProtocolError(f"port {port} out of range")
    uploaded = _int(params, b"uploaded", 0) or 0
    downloaded = _int(params, b"downloaded", 0) or 0
    left = _int(params, b"left", None)
    if left is None:
        raise ProtocolError("missing left")
    event_b = _one(params, b"event") or b""
    try:
        event = event_b.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError("unknown event") from exc
    if event == "empty":
        event = ""
    if event not in proto.EVENTS:
        raise ProtocolError(f"unknown event {event[:20]!r}")
    numwant = _int(params, b"numwant", None)
    compact_b = _one(params, b"compact")
    if compact_b not in (None, b"0", b"1"):
        raise ProtocolError("compact must be 0 or 1")
    no_peer_id_b = _one(params, b"no_peer_id")
    ip = proto._ip(_one(params, b"ip"))
    token_b = _one(params, b"token")
    token: str | None = None
    if token_b is not None:
        try:
            token = token_b.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ProtocolError("token is not ASCII") from exc
    return proto.Announce(
        info_hash=info_hash,
        peer_id=peer_id,
        port=port,
        uploaded=uploaded,
        downloaded=downloaded,
        left=left,
        event=event,
        numwant=numwant,
        compact=compact_b != b"0",
        no_peer_id=no_peer_id_b not in (None, b"0"),
        ip=ip,
        key=_one(params, b"key"),
        token=token,
        host=_label(params, "host"),
        dc=_label(params, "dc"),
        rack=_label(params, "rack"),
        role=proto._role(_one(params, b"role")),
    )

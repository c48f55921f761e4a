"""The tracker's wire protocol, sans-IO: bytes in, values or bytes out.

Three layers, none of which touches a socket:

* ``RequestParser`` turns a byte stream (fed in chunks split anywhere) into
  ``Request`` heads: request line and headers of HTTP/1.0 or 1.1 GET
  requests, with keep-alive worked out. Pipelined requests come out in order.
* ``parse_announce`` / ``parse_scrape`` turn a raw query string into an
  ``Announce`` or a list of info-hashes (BEP 3, BEP 23, BEP 7, BEP 48), plus
  roost's optional locality labels ``host``, ``dc`` and ``rack``.
* ``render_*`` build bencoded bodies and full HTTP responses.

Error contract (as h11's): anything malformed raises ``ProtocolError`` (a
``TrackerError``) carrying the HTTP status to answer with; the server turns
it into that status and a bencoded ``failure reason``. Any other exception
escaping this module for any input is a bug.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from urllib.parse import unquote_to_bytes

from roost import bencode
from roost.errors import ProtocolError

__all__ = [
    "EVENTS",
    "Announce",
    "HandoutPeer",
    "ProtocolError",
    "Request",
    "RequestParser",
    "http_response",
    "parse_announce",
    "parse_query",
    "parse_scrape",
    "render_announce",
    "render_failure",
    "render_scrape",
]

MAX_HEAD = 8192  # bytes of request line + headers
MAX_HEADERS = 64
MAX_LABEL = 64  # host / dc / rack labels
EVENTS = ("", "started", "completed", "stopped", "paused")
_BAD_TARGET = re.compile(rb"[^\x21-\x7e]")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_HTTP_SPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() strips


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: bytes
    http_version: str  # "1.0" or "1.1"
    headers: dict[str, str]
    keep_alive: bool


class RequestParser:
    """Incremental parser of HTTP/1.x GET request heads.

    ``feed(data)`` returns the requests completed by ``data`` (maybe none).
    A malformed head raises ``ProtocolError``; one after complete requests
    in the same ``data`` is kept in :attr:`failed` instead, so that those are
    answered first (a pipelining client reads the answers in order). Either
    way the parser is dead then: answer and close.
    """

    __slots__ = ("_buf", "_dead", "failed")

    def __init__(self) -> None:
        self._buf = b""
        self._dead = False
        #: the error that ended the stream after the requests ``feed`` returned
        self.failed: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete request."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Request]:
        if self._dead:
            raise ProtocolError("connection already failed")
        buf = self._buf + data if self._buf else data
        out: list[Request] = []
        try:
            buf = self._parse(buf, out)
        except ProtocolError as exc:
            self._dead, self._buf = True, b""
            if not out:
                raise
            self.failed = exc
        else:
            self._buf = buf
        return out

    def _parse(self, buf: bytes, out: list[Request]) -> bytes:
        """Append the complete requests at the head of ``buf`` to ``out``;
        the bytes left (a request not yet whole)."""
        while buf:
            # Tolerate leading empty lines between requests (RFC 9112 2.2).
            stripped = buf.lstrip(b"\r\n")
            if not stripped:
                buf = b""
                break
            buf = stripped
            end = buf.find(b"\r\n\r\n")
            sep = 4
            if end < 0:
                end = buf.find(b"\n\n")
                sep = 2
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise ProtocolError("request head too large", 431)
                break
            if end > MAX_HEAD:
                raise ProtocolError("request head too large", 431)
            head = buf[:end]
            buf = buf[end + sep :]
            out.append(_parse_head(head))
        return buf


def _parse_head(head: bytes) -> Request:
    line, newline, rest = head.partition(b"\n")
    parts = line.rstrip(b"\r").split(b" ")
    if len(parts) != 3:
        raise ProtocolError("malformed request line")
    method_b, target, version_b = parts
    if version_b == b"HTTP/1.1":
        version = "1.1"
    elif version_b == b"HTTP/1.0":
        version = "1.0"
    else:
        raise ProtocolError("unsupported HTTP version", 505)
    if not method_b.isalpha() or not method_b.isupper():
        raise ProtocolError("malformed request method")
    if not target.startswith(b"/"):
        raise ProtocolError("request target must be an absolute path")
    if _BAD_TARGET.search(target):
        raise ProtocolError("illegal character in request target")
    headers: dict[str, str] = {}
    if newline:
        # One decode for all header lines; latin-1 maps every byte to one char.
        lines = rest.decode("latin-1").split("\n")
        if len(lines) > MAX_HEADERS:
            raise ProtocolError("too many headers", 431)
        for raw in lines:
            name, colon, value = raw.rstrip("\r").partition(":")
            if not colon or not name or name[0] in " \t":
                raise ProtocolError("malformed header line")
            if " " in name or "\t" in name:
                raise ProtocolError("malformed header name")
            if not name.isascii():
                raise ProtocolError("non-ASCII header name")
            key = name.lower()
            if key == "content-length" and key in headers:  # which one frames the body?
                raise ProtocolError("repeated Content-Length")
            headers[key] = value.strip(_HTTP_SPACE)
    method = method_b.decode("ascii")
    if method not in ("GET", "HEAD"):
        raise ProtocolError(f"method {method} not allowed (GET only)", 405)
    if headers.get("content-length", "0").strip() not in ("", "0") or (
        "transfer-encoding" in headers
    ):
        raise ProtocolError("request bodies are not accepted")
    conn = headers.get("connection", "").lower()
    keep_alive = "close" not in conn if version == "1.1" else "keep-alive" in conn
    q = target.find(b"?")
    if q >= 0:
        path_b, query = target[:q], target[q + 1 :]
    else:
        path_b, query = target, b""
    return Request(method, path_b.decode("ascii"), query, version, headers, keep_alive)


def parse_query(query: bytes) -> dict[bytes, list[bytes]]:
    """Split ``a=1&b=%20`` into raw keys and percent-decoded byte values.

    ``+`` stays a literal plus: binary info-hashes are percent-encoded by
    every client, and treating ``+`` as a space would corrupt the odd one.
    """
    params: dict[bytes, list[bytes]] = {}
    if not query:
        return params
    for pair in query.split(b"&"):
        if not pair:
            continue
        eq = pair.find(b"=")
        if eq < 0:
            key, value = pair, b""
        else:
            key, value = pair[:eq], pair[eq + 1 :]
        if b"%" in value:
            value = _unquote(value)
        params.setdefault(key, []).append(value)
    return params


def _unquote(value: bytes) -> bytes:
    # unquote_to_bytes leaves bad escapes as they are; refuse them instead.
    if _BAD_ESCAPE.search(value):
        raise ProtocolError("bad percent-escape in query")
    return unquote_to_bytes(value)


@dataclass(frozen=True, slots=True)
class Announce:
    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: str
    numwant: int | None
    compact: bool
    no_peer_id: bool
    ip: str | None
    key: bytes | None
    token: str | None
    host: str | None
    dc: str | None
    rack: str | None
    #: roost's own peers say what they are: ``origin`` (a seeder serving a
    #: feed) or ``feed`` (a peer fed by it); the two are never paired.
    role: str | None = None


ROLES = ("origin", "feed")


def _role(raw: bytes | None) -> str | None:
    """A known role, else None (unknown roles are ignored, not refused)."""
    if raw is None:
        return None
    text = raw.decode("ascii", "replace")
    return text if text in ROLES else None


def _one(params: dict[bytes, list[bytes]], name: bytes) -> bytes | None:
    values = params.get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise ProtocolError(f"parameter {name.decode()} given more than once")
    return values[0]


def _hash20(raw: bytes | None, name: str) -> bytes:
    if raw is None:
        raise ProtocolError(f"missing {name}")
    if len(raw) != 20:
        raise ProtocolError(f"{name} must be 20 bytes, got {len(raw)}")
    return raw


def _ip(raw: bytes | None) -> str | None:
    """The ``ip=`` parameter as peers would dial it; None when absent or empty."""
    if not raw:
        return None
    try:
        addr = ipaddress.ip_address(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("ip is not an IP address") from exc
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        # A zone id names an interface of the sender: meaningless to other peers.
        raise ProtocolError("ip must not carry an IPv6 zone id (%)")
    return str(addr)


def _label(raw: bytes | None, name: str) -> str | None:
    if raw is None or raw == b"":
        return None
    if len(raw) > MAX_LABEL:
        raise ProtocolError(f"{name} label longer than {MAX_LABEL} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{name} label is not UTF-8") from exc
    if not text.isprintable():
        raise ProtocolError(f"{name} label holds control characters")
    return text


_ANNOUNCE_KEYS = frozenset(
    {
        b"info_hash", b"peer_id", b"port", b"uploaded", b"downloaded", b"left", b"event",
        b"numwant", b"compact", b"no_peer_id", b"ip", b"key", b"token", b"host", b"dc", b"rack",
        b"role",
    }
)  # fmt: skip
_EVENT_OF = {b"": "", b"empty": "", **{e.encode(): e for e in EVENTS}}
_ESCAPED20 = b"%" * 20


def _decode(value: bytes) -> bytes:
    """Percent-decode ``value``; a fully escaped 20-byte hash takes a C fast path."""
    if len(value) == 60 and value[::3] == _ESCAPED20 and value.count(b"%") == 20:
        try:
            return bytes.fromhex(value.replace(b"%", b"").decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass  # falls through to the strict path, which names the error
    return _unquote(value)


def _split_announce(query: bytes) -> tuple[dict[bytes, bytes], set[bytes] | None]:
    """Announce parameters by raw key (first value each) and the keys given twice.

    Same rules as ``parse_query`` (every value percent-decoded, bad escapes
    refused, ``+`` literal), without the lists. Unknown keys are decoded
    only to be refused for bad escapes, then dropped.
    """
    params: dict[bytes, bytes] = {}
    dups: set[bytes] | None = None
    if not query:
        return params, dups
    for pair in query.split(b"&"):
        if not pair:
            continue
        key, _, value = pair.partition(b"=")
        if b"%" in value:
            value = _decode(value)
        if key not in _ANNOUNCE_KEYS:
            continue
        if key in params:
            if dups is None:
                dups = set()
            dups.add(key)
        else:
            params[key] = value
    return params, dups


def _refusing(params: dict[bytes, bytes], dups: set[bytes]) -> Callable[[bytes], bytes | None]:
    """``params.get`` that refuses a repeated key when its field is read, so a
    query's first error is named in field order whether or not a key repeats."""

    def get(key: bytes) -> bytes | None:
        if key in dups:
            raise ProtocolError(f"parameter {key.decode()} given more than once")
        return params.get(key)

    return get


def _num(raw: bytes | None, name: str, default: int | None) -> int | None:
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 20:
        # Some clients send negative 'left' for unknown sizes; refuse cleanly.
        raise ProtocolError(f"parameter {name} is not a non-negative integer")
    return int(raw)


def parse_announce(query: bytes) -> Announce:
    """Parse an announce query string; raise ``ProtocolError`` if malformed.

    The one announce parser, and a hot path: one pass over the query, no
    per-parameter lists. Values are decoded by ``parse_query``'s rules; the
    fields are checked in a fixed order and the first bad one is named (a
    key given twice is refused when its field is read).
    """
    params, dups = _split_announce(query)
    get = params.get if dups is None else _refusing(params, dups)
    info_hash = get(b"info_hash")
    if info_hash is None or len(info_hash) != 20:
        info_hash = _hash20(info_hash, "info_hash")
    peer_id = get(b"peer_id")
    if peer_id is None or len(peer_id) != 20:
        peer_id = _hash20(peer_id, "peer_id")
    port = _num(get(b"port"), "port", None)
    if port is None:
        raise ProtocolError("missing port")
    if not 0 < port < 65536:
        raise ProtocolError(f"port {port} out of range")
    uploaded = _num(get(b"uploaded"), "uploaded", 0) or 0
    downloaded = _num(get(b"downloaded"), "downloaded", 0) or 0
    left = _num(get(b"left"), "left", None)
    if left is None:
        raise ProtocolError("missing left")
    event_b = get(b"event") or b""
    event = _EVENT_OF.get(event_b)
    if event is None:
        try:
            text = event_b.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ProtocolError("unknown event") from exc
        raise ProtocolError(f"unknown event {text[:20]!r}")
    numwant = _num(get(b"numwant"), "numwant", None)
    compact_b = get(b"compact")
    if compact_b not in (None, b"0", b"1"):
        raise ProtocolError("compact must be 0 or 1")
    no_peer_id_b = get(b"no_peer_id")
    ip = _ip(get(b"ip"))
    token_b = get(b"token")
    token: str | None = None
    if token_b is not None:
        try:
            token = token_b.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ProtocolError("token is not ASCII") from exc
    host_b, dc_b, rack_b = get(b"host"), get(b"dc"), get(b"rack")
    return Announce(
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
        key=get(b"key"),
        token=token,
        host=_label(host_b, "host") if host_b else None,
        dc=_label(dc_b, "dc") if dc_b else None,
        rack=_label(rack_b, "rack") if rack_b else None,
        role=_role(get(b"role")),
    )


def parse_scrape(query: bytes) -> tuple[list[bytes], str | None]:
    """Info-hashes asked for (maybe none: scrape everything) and the token."""
    params = parse_query(query)
    hashes = [_hash20(h, "info_hash") for h in params.get(b"info_hash", [])]
    token_b = _one(params, b"token")
    try:
        token = token_b.decode("ascii") if token_b is not None else None
    except UnicodeDecodeError as exc:
        raise ProtocolError("token is not ASCII") from exc
    return hashes, token


def compact_address(ip: str, port: int) -> tuple[bytes, bool]:
    """(packed address + port, is_ipv6) for BEP 23 / BEP 7 peer lists."""
    if ":" in ip:
        return socket.inet_pton(socket.AF_INET6, ip) + port.to_bytes(2, "big"), True
    return socket.inet_aton(ip) + port.to_bytes(2, "big"), False


class HandoutPeer:
    """What a response needs of a peer: anything with these four attributes."""

    __slots__ = ("compact", "ip", "is_v6", "peer_id", "port")

    def __init__(self, peer_id: bytes, ip: str, port: int):
        self.peer_id = peer_id
        self.ip = ip
        self.port = port
        self.compact, self.is_v6 = compact_address(ip, port)


_COMPACT = attrgetter("compact")
_HEADS: dict[tuple[int, int], bytes] = {}  # prebuilt "interval" + "min interval"


def render_announce(
    peers: list[HandoutPeer] | list,  # objects with peer_id, ip, port, compact, is_v6
    *,
    complete: int,
    incomplete: int,
    interval: int,
    min_interval: int,
    compact: bool,
    no_peer_id: bool = False,
) -> bytes:
    """Bencoded announce response. Keys in sorted order, built by hand: hot path."""
    head = _HEADS.get((interval, min_interval))
    if head is None:
        if len(_HEADS) > 64:
            _HEADS.clear()
        head = _HEADS[interval, min_interval] = b"8:intervali%de12:min intervali%de" % (
            interval,
            min_interval,
        )
    head = b"d8:completei%de10:incompletei%de%s" % (complete, incomplete, head)
    if compact:
        v4 = b"".join(map(_COMPACT, peers))
        if len(v4) == 6 * len(peers):  # no IPv6 peer among them (18 bytes each)
            return b"%s5:peers%d:%se" % (head, len(v4), v4)
        v4 = b"".join([p.compact for p in peers if not p.is_v6])
        v6 = b"".join([p.compact for p in peers if p.is_v6])
        body = b"5:peers%d:%s" % (len(v4), v4)
        if v6:
            body += b"6:peers6%d:%s" % (len(v6), v6)
        return head + body + b"e"
    items = []
    for p in peers:
        ip = p.ip.encode("ascii")
        if no_peer_id:
            items.append(b"d2:ip%d:%s4:porti%dee" % (len(ip), ip, p.port))
        else:
            items.append(b"d2:ip%d:%s7:peer id20:%s4:porti%dee" % (len(ip), ip, p.peer_id, p.port))
    return head + b"5:peersl" + b"".join(items) + b"ee"


def render_failure(reason: str) -> bytes:
    return bencode.encode({"failure reason": reason})


def render_scrape(files: dict[bytes, tuple[int, int, int]]) -> bytes:
    """``files`` maps info-hash -> (complete, downloaded, incomplete)."""
    return bencode.encode(
        {
            "files": {
                h: {"complete": c, "downloaded": d, "incomplete": i}
                for h, (c, d, i) in files.items()
            }
        }
    )


_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    505: b"HTTP Version Not Supported",
}


def http_response(
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain",
    keep_alive: bool = True,
    head_only: bool = False,
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A full HTTP/1.1 response with Content-Length."""
    reason = _REASONS.get(status, b"Error")
    lines = [
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        % (status, reason, content_type.encode("latin-1"), len(body))
    ]
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    for name, value in extra_headers:
        lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    lines.append(b"\r\n")
    if not head_only:
        lines.append(body)
    return b"".join(lines)

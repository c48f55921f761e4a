"""One read-only HTTP file server, for the origin and the channel.

Theory of operation
-------------------
:class:`FileServer` serves the regular files under one root, over the bounded
plumbing of :mod:`roost.httpserve` (connection cap, idle, request and send
timeouts, no bodies). The origin (BEP 19 web seeds, :mod:`roost.origin`) and
the channel server (:class:`roost.channel.ChannelServer`) are both one of
these, so both refuse the same things the same way:

* ``GET``/``HEAD`` of regular files only; a directory, a dot-file (temporary
  names of a file being written), a path with ``..``, a NUL, a symlink
  leading outside the root, and a FIFO, device or socket (even inside the
  root: opening a FIFO would block the thread) are a 404: no listing,
  nothing leaks, nothing hangs. ``flat`` roots (a channel) serve only the
  files directly in the root;
* a single byte range -> ``206`` with ``Content-Range``; an unsatisfiable one
  -> ``416`` with ``Content-Range: bytes */SIZE``; several ranges, a bad
  ``Range`` header or a stale ``If-Range`` -> the whole file (``200``), as
  RFC 9110 allows; ``ETag`` and ``Last-Modified`` on every answer, and a
  matching ``If-None-Match`` -> ``304``;
* bodies go out with ``sendfile`` (a send loop under TLS), or in chunks
  through a :class:`~roost.limits.TokenBucket` when upload is capped.

The pure parts (:func:`parse_range`, :func:`resolve_request_path`) have no
I/O and are tested with tables. Every server counts what it serves
(:class:`ServeStats`).
"""

from __future__ import annotations

import email.utils
import errno
import json
import logging
import os
import re
import stat
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost.httpserve import BoundedHandler, BoundedHTTPServer, ServerLimits
from roost.limits import TokenBucket

log = logging.getLogger(__name__)

_THROTTLE_CHUNK = 16 * 1024


# Sans-IO: the Range header ---------------------------------------------------


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` .. ``end`` of the file, both included."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class Unsatisfiable:
    """The request's only range lies past the end of the file (-> 416)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unsatisfiable)

    def __hash__(self) -> int:
        return 416

    def __repr__(self) -> str:
        return "UNSATISFIABLE"


UNSATISFIABLE = Unsatisfiable()
_SPEC = re.compile(r"^(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> ByteRange | Unsatisfiable | None:
    """What to send for a ``Range`` header on a file of ``size`` bytes.

    ``None``: send the whole file (no header, another unit, bad syntax, or
    several ranges: RFC 9110 lets a server ignore ``Range``). A
    :class:`ByteRange`: send that part (``end`` clamped to the last byte).
    :data:`UNSATISFIABLE`: answer 416. Never raises.
    """
    if header is None:
        return None
    unit, sep, specs = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = [p.strip() for p in specs.split(",")]
    parts = [p for p in parts if p]
    if len(parts) != 1:
        return None
    match = _SPEC.match(parts[0])
    if match is None:
        return None
    first, last = match.groups()
    if len(first) > 20 or len(last) > 20:
        return None
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return UNSATISFIABLE
    end = size - 1 if not last else min(int(last), size - 1)
    return ByteRange(start, end)


def resolve_request_path(target: str) -> tuple[str, ...] | None:
    """The path parts a request target names under the root, or ``None``.

    ``None`` for anything that must not be served: ``..``, empty or dot
    components (hidden and temporary files), NUL, backslashes, a target that
    is not an absolute path. The query string is ignored.
    """
    path = target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return None
    try:
        decoded = urllib.parse.unquote(path, errors="strict")
    except UnicodeDecodeError:
        return None
    if "\x00" in decoded or "\\" in decoded:
        return None
    parts = tuple(decoded.split("/")[1:])
    if not parts or any(not p or p.startswith(".") for p in parts):
        return None
    return parts


def etag_for(st: os.stat_result) -> str:
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


def if_range_matches(if_range: str | None, etag: str, last_modified: str) -> bool:
    """Whether a ``Range`` may be honoured given ``If-Range`` (strong compare)."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith('"'):
        return value == etag
    return value == last_modified


def if_none_match(header: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak compare, ``*``) -> 304."""
    if header is None:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


# Counting ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServeStats:
    bytes_served: int
    requests: int
    responses: dict[int, int]
    clients: dict[str, int]  # client address -> body bytes sent

    def to_json(self) -> dict[str, Any]:
        return {
            "bytes_served": self.bytes_served,
            "requests": self.requests,
            "responses": {str(k): v for k, v in sorted(self.responses.items())},
            "clients": dict(sorted(self.clients.items())),
        }


class _Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_served = 0
        self.requests = 0
        self.responses: dict[int, int] = {}
        self.clients: dict[str, int] = {}

    def response(self, status: int) -> None:
        with self._lock:
            self.requests += 1
            self.responses[status] = self.responses.get(status, 0) + 1

    def sent(self, client: str, n: int) -> None:
        with self._lock:
            self.bytes_served += n
            self.clients[client] = self.clients.get(client, 0) + n

    def snapshot(self) -> ServeStats:
        with self._lock:
            return ServeStats(
                self.bytes_served, self.requests, dict(self.responses), dict(self.clients)
            )


# The server ----------------------------------------------------------------------


@dataclass(frozen=True)
class FileRoot:
    """What a :class:`FileServer` serves, and how."""

    root: Path  # resolved
    flat: bool = False  # only the files directly in ``root``
    rate_limit: int = 0  # bytes/s for all clients together, 0 = none
    stats_path: str | None = None  # where the counters are served as JSON
    cache_control: str | None = None  # e.g. "no-cache" for documents that change
    name: str = "roost"  # Server: NAME/version, and in log lines


class _Handler(BoundedHandler):
    server: FileServer

    def version_string(self) -> str:
        return self.server.software

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _refuse(self, status: int, extra: dict[str, str] | None = None) -> None:
        self.server.counters.response(status)
        body = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
        self.send_response(status)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, *, body: bool) -> None:
        files = self.server.files
        if files.stats_path is not None and self.path.split("?", 1)[0] == files.stats_path:
            self._stats(body)
            return
        opened = open_served(files, self.path)
        if opened is None:
            self._refuse(404)
            return
        fd, st = opened
        with os.fdopen(fd, "rb") as f:
            self._send_file(f, st, body=body)

    def _send_file(self, f: Any, st: os.stat_result, *, body: bool) -> None:
        size = st.st_size
        etag = etag_for(st)
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        common = {"Accept-Ranges": "bytes", "ETag": etag, "Last-Modified": last_modified}
        if self.server.files.cache_control:
            common["Cache-Control"] = self.server.files.cache_control
        if if_none_match(self.headers.get("If-None-Match"), etag):
            self.server.counters.response(304)
            self.send_response(304)
            for key, value in common.items():
                self.send_header(key, value)
            self.end_headers()
            return
        wanted = parse_range(self.headers.get("Range"), size)
        if not if_range_matches(self.headers.get("If-Range"), etag, last_modified):
            wanted = None
        if isinstance(wanted, Unsatisfiable):
            self._refuse(416, {**common, "Content-Range": f"bytes */{size}"})
            return
        status = 200 if wanted is None else 206
        start, length = (0, size) if wanted is None else (wanted.start, wanted.length)
        self.server.counters.response(status)
        self.send_response(status)
        for key, value in common.items():
            self.send_header(key, value)
        if wanted is not None:
            self.send_header("Content-Range", wanted.content_range(size))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if not body or length == 0:
            return
        self.wfile.flush()
        self._send_body(f, start, length)

    def _send_body(self, f: Any, start: int, length: int) -> None:
        client = self.client_address[0]
        throttle = self.server.throttle
        if throttle is not None:
            self._send_throttled(f, start, length, throttle)
            return
        sent_total = 0
        try:
            # socket.sendfile: zero-copy on plain TCP, a send loop under TLS.
            sent_total = self.connection.sendfile(f, offset=start, count=length)
        except OSError as exc:
            if not isinstance(exc, TimeoutError) and exc.errno not in _GONE:
                log.warning("%s: sending to %s failed: %s", self.server.files.name, client, exc)
            self.close_connection = True
            sent_total = max(0, f.tell() - start)
        finally:
            self.server.counters.sent(client, sent_total)
        if sent_total < length:
            self.close_connection = True

    def _send_throttled(self, f: Any, start: int, length: int, throttle: TokenBucket) -> None:
        client = self.client_address[0]
        offset, end = start, start + length
        try:
            while offset < end:
                chunk = os.pread(f.fileno(), min(_THROTTLE_CHUNK, end - offset), offset)
                if not chunk:
                    break  # the file shrank under us
                throttle.take(len(chunk))
                self.connection.sendall(chunk)
                offset += len(chunk)
                self.server.counters.sent(client, len(chunk))
        except OSError:
            pass
        if offset < end:
            self.close_connection = True

    def _stats(self, body: bool) -> None:
        doc = json.dumps(self.server.counters.snapshot().to_json()).encode()
        self.server.counters.response(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(doc)))
        self.end_headers()
        if body:
            self.wfile.write(doc)


_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ETIMEDOUT)


def open_served(files: FileRoot, target: str) -> tuple[int, os.stat_result] | None:
    """An open descriptor and its stat for the regular file ``target`` names
    under ``files.root``, or ``None`` if it must not be served (see the module
    docstring). Never blocks on a FIFO, never follows a link out of the root."""
    parts = resolve_request_path(target)
    if parts is None or (files.flat and len(parts) != 1):
        return None
    try:
        path = files.root.joinpath(*parts).resolve(strict=True)
        if not path.is_relative_to(files.root) or not stat.S_ISREG(path.stat().st_mode):
            return None
        # Where a link leads obeys the names' rules too: no hidden or
        # temporary file, and nothing below a flat root's top.
        landed = path.relative_to(files.root).parts
        if any(p.startswith(".") for p in landed) or (files.flat and len(landed) != 1):
            return None
        # O_NONBLOCK: should a FIFO be swapped in after the check, open() does not wait.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (OSError, ValueError, RuntimeError):
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


class FileServer(BoundedHTTPServer):
    """Serve ``files`` read-only under ``limits``; run it with
    :func:`roost.httpserve.serve_in_thread`. Raises ``OSError`` if the address
    cannot be bound (callers turn that into their own one-line error)."""

    def __init__(
        self,
        address: tuple[str, int],
        files: FileRoot,
        limits: ServerLimits,
        *,
        wrap: Callable[[Any], Any] | None = None,
        version: str = "",
    ):
        self.files = files
        self.software = f"{files.name}/{version}" if version else files.name
        self.counters = _Counters()
        self.throttle = TokenBucket(files.rate_limit) if files.rate_limit > 0 else None
        super().__init__(address, _Handler, limits, wrap=wrap)

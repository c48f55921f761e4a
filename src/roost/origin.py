"""The origin: a read-only HTTP(S) file server for release payloads.

Theory of operation
-------------------
Between datacenters, a release travels over HTTP(S) from one central origin
(DESIGN.md, "multi-datacenter"): each datacenter's seed adds the origin as a
BEP 19 web seed and fetches pieces with ``Range`` requests while it already
seeds to its own datacenter. libtorrent needs real ``Range`` support (a 200
with the whole file where it asked for a piece gets the web seed banned, as
``python -m http.server`` is), so this server does exactly what BEP 19 needs
and nothing more:

* ``GET``/``HEAD`` of regular files under one root; a directory, a dot-file
  (temporary names of a release being written), a path with ``..``, a NUL or
  a symlink leading outside the root is a 404 (no listing, nothing leaks);
* a single byte range -> ``206`` with ``Content-Range``; an unsatisfiable one
  -> ``416`` with ``Content-Range: bytes */SIZE``; several ranges, a bad
  ``Range`` header or a stale ``If-Range`` -> the whole file (``200``), as
  RFC 9110 allows; ``ETag`` and ``Last-Modified`` on every answer;
* HTTP/1.1 keep-alive (libtorrent pipelines its requests), one thread per
  connection, TLS optional (the handshake happens in the connection's thread,
  never in the accept loop), idle connections closed after a timeout.

The pure parts (:func:`parse_range`, :func:`resolve_request_path`) have no
I/O and are tested with tables. :class:`OriginServer` counts what it serves
(:meth:`OriginServer.stats`, also at ``/.roost-origin/stats.json``), so a
multi-datacenter deploy can check that the origin sent about one copy per
datacenter.
"""

from __future__ import annotations

import email.utils
import errno
import json
import logging
import os
import re
import ssl
import stat
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from roost import __version__
from roost.errors import UsageError
from roost.httpserve import TokenBucket, serve_in_thread, stop_serving

log = logging.getLogger(__name__)

STATS_PATH = "/.roost-origin/stats.json"
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


# The server ------------------------------------------------------------------


@dataclass(frozen=True)
class OriginConfig:
    root: Path
    bind: str = "127.0.0.1"
    port: int = 8080
    tls_cert: Path | None = None
    tls_key: Path | None = None
    idle_timeout: float = 60.0
    #: Cap on the origin's whole egress in bytes/s (0 = none): keeps a
    #: release from filling the link between datacenters.
    rate_limit: int = 0


@dataclass(frozen=True)
class OriginStats:
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

    def snapshot(self) -> OriginStats:
        with self._lock:
            return OriginStats(
                self.bytes_served, self.requests, dict(self.responses), dict(self.clients)
            )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"roost-origin/{__version__}"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

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
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _method_not_allowed(self) -> None:
        self._refuse(405, {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed

    def _serve(self, *, body: bool) -> None:
        if self.path.split("?", 1)[0] == STATS_PATH:
            self._stats(body)
            return
        parts = resolve_request_path(self.path)
        if parts is None:
            self._refuse(404)
            return
        root = self.server.root
        try:
            path = root.joinpath(*parts).resolve(strict=True)
            if not path.is_relative_to(root):
                self._refuse(404)
                return
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (OSError, ValueError, RuntimeError):
            self._refuse(404)
            return
        st = os.fstat(fd)
        if not _is_regular(st.st_mode):
            os.close(fd)
            self._refuse(404)
            return
        with os.fdopen(fd, "rb") as f:
            self._send_file(f, st, body=body)

    def _send_file(self, f: Any, st: os.stat_result, *, body: bool) -> None:
        size = st.st_size
        etag = etag_for(st)
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        wanted = parse_range(self.headers.get("Range"), size)
        if not if_range_matches(self.headers.get("If-Range"), etag, last_modified):
            wanted = None
        common = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Last-Modified": last_modified,
        }
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
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ETIMEDOUT):
                log.warning("origin: sending to %s failed: %s", client, exc)
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


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, config: OriginConfig, root: Path, context: ssl.SSLContext | None):
        self.root = root
        self.idle_timeout = config.idle_timeout
        self.counters = _Counters()
        self.throttle = TokenBucket(config.rate_limit) if config.rate_limit > 0 else None
        self._context = context
        super().__init__((config.bind, config.port), _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        if self._context is not None:
            # The handshake runs lazily in the connection's own thread.
            sock = self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("origin: connection from %s ended with an error", client_address, exc_info=True)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context; raises ``UsageError`` naming an unreadable cert/key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from exc
    return context


class OriginServer:
    """The origin, serving ``config.root`` from a background thread.

    ``start()`` binds (port 0 allowed; ``.port`` is the bound one) and raises
    ``UsageError`` if the root is not a directory, the certificate cannot be
    loaded or the address cannot be bound. ``stop()`` closes it.
    """

    def __init__(self, config: OriginConfig):
        self.config = config
        root = Path(config.root)
        if not root.is_dir():
            raise UsageError(f"origin root {root} is not a directory")
        if (config.tls_cert is None) != (config.tls_key is None):
            raise UsageError("TLS needs both --tls-cert and --tls-key")
        self._root = root.resolve()
        self._context = (
            tls_context(config.tls_cert, config.tls_key)
            if config.tls_cert is not None and config.tls_key is not None
            else None
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._context is not None else "http"

    @property
    def port(self) -> int:
        if self._server is None:
            raise UsageError("origin server not started")
        return int(self._server.server_address[1])

    def url(self, name: str = "", host: str | None = None) -> str:
        """The URL of ``name`` under the root (``host`` defaults to the bind address)."""
        host = host or self.config.bind
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}/{urllib.parse.quote(name)}"

    def start(self) -> OriginServer:
        try:
            self._server = _Server(self.config, self._root, self._context)
        except OSError as exc:
            where = f"{self.config.bind}:{self.config.port}"
            raise UsageError(f"origin cannot listen on {where}: {exc.strerror or exc}") from exc
        self._thread = serve_in_thread(self._server, "roost-origin")
        return self

    def stats(self) -> OriginStats:
        if self._server is None:
            return OriginStats(0, 0, {}, {})
        return self._server.counters.snapshot()

    def serve_until(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set (the CLI's main loop)."""
        while not stop.wait(0.5):
            pass

    def stop(self) -> None:
        stop_serving(self._server, self._thread)
        self._thread = None

    def __enter__(self) -> OriginServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""What roost's HTTP servers (origin, channel, feed) share: bounds on clients.

Theory of operation
-------------------
Each server is a ``ThreadingHTTPServer``, one thread per connection, that no
client can starve, hang or confuse (:class:`BoundedHTTPServer` with
:class:`BoundedHandler`, limits in :class:`ServerLimits`):

* **A connection cap.** At ``max_connections`` the accept loop first evicts
  the oldest connection that has waited ``evict_after`` seconds or more
  without sending a complete request (an idle keep-alive, a client dripping
  its headers): a real request gets in while some connection merely waits.
  If none does (every connection busy answering, or a burst just arrived),
  the newcomer gets ``503`` and is closed, without a thread.
* **Timeouts per phase.** Between requests a connection may be idle for
  ``idle_timeout``; from its first byte the request line and headers must
  all arrive within ``request_timeout`` (a :class:`DeadlineReader` bounds all
  the reads together, not each ``recv``); each write of the answer gets
  ``send_timeout``, so a client that stops reading frees its thread.
* **No bodies.** These servers answer ``GET`` and ``HEAD`` only and never read
  a body: a ``GET``/``HEAD`` announcing one (``Content-Length`` other than 0,
  ``Transfer-Encoding``) is a ``400`` and the connection is closed, as it is
  after any other method, so a body is never parsed as a second request.
* **A real backlog** (``backlog``, 128+), so a burst of connects is queued,
  not dropped.

Also running a server in a background thread (:func:`serve_in_thread`,
:func:`stop_serving`); the upload cap's token bucket is in ``roost.limits``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from roost.limits import ServerLimits

log = logging.getLogger(__name__)

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n\r\n"
)


class DeadlineReader(io.RawIOBase):
    """A socket's reads, all of them over by ``deadline`` (``time.monotonic``).

    Each ``recv`` gets what is left of the time, and once it is gone a read
    raises ``TimeoutError``: a peer that sends one byte a second cannot keep
    a ``readline`` (or a whole response) going past the deadline. Like
    ``sock.makefile("rb")``, it keeps the socket's descriptor open until it
    is closed itself.
    """

    def __init__(self, sock: socket.socket, deadline: float = math.inf):
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        self._sock.settimeout(None if math.isinf(remaining) else remaining)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class BoundedHandler(BaseHTTPRequestHandler):
    """A request handler under its server's :class:`ServerLimits` (see the
    module docstring). Subclasses define ``do_GET`` / ``do_HEAD``."""

    protocol_version = "HTTP/1.1"
    sys_version = ""
    server: BoundedHTTPServer
    #: the methods a subclass answers (``do_GET``...), for a 405's ``Allow``
    allowed_methods = "GET, HEAD"
    # An error is one line of text, not the standard library's HTML page.
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the makefile() reader: reads go through the deadline instead
        self._reader = DeadlineReader(self.connection)
        self._buffered = io.BufferedReader(self._reader)
        self.rfile = self._buffered

    def handle_one_request(self) -> None:
        limits = self.server.limits
        self._reader.deadline = time.monotonic() + limits.idle_timeout
        try:
            waiting = self.server.waiting(self.request) and bool(self._buffered.peek(1))
        except (OSError, ValueError):  # idle too long, reset, or evicted
            waiting = False
        if not waiting:
            self.close_connection = True
            return
        self._reader.deadline = time.monotonic() + limits.request_timeout
        super().handle_one_request()

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if not self.server.claim(self.request):  # evicted while its headers came in
            self.close_connection = True
            return False
        self.connection.settimeout(self.server.limits.send_timeout)
        if self.request_version == "HTTP/0.9":  # "GET /path": never served as HTTP/0.9
            self.send_error(400, "no HTTP version in the request line")
            return False
        if self.headers.defects:  # a line that is no header: the rest would be a request
            self.close_connection = True
            self.send_error(400, "malformed header line")
            return False
        if not hasattr(self, f"do_{self.command}"):  # its body, if any, is never read
            self.send_error(405, f"{self.command} is not served here")
            return False
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") is not None or any(
            n.strip() != "0" for n in lengths
        ):
            self.send_error(400, f"a {self.command} request must not have a body")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's, one line of text; a 405 says what is
        allowed. Always with a status line (HTTP/0.9 has none: the stdlib
        takes every request as one until its version is read)."""
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
            self.close_connection = True
        if code == 405:
            self.close_connection = True
            body = f"405 {message or 'Method Not Allowed'}\n".encode()
            self.send_response(405, message)
            self.send_header("Allow", self.allowed_methods)
            self.send_header("Content-Type", self.error_content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        super().send_error(code, message, explain)

    def handle_expect_100(self) -> bool:
        self.send_error(417, "this server takes no request bodies")
        return False

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class BoundedHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` under ``limits`` (see the module docstring).

    ``wrap`` (e.g. a lazy TLS ``wrap_socket``) is applied to each accepted
    socket in the accept loop; it must not block.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BoundedHandler],
        limits: ServerLimits,
        *,
        wrap: Callable[[socket.socket], socket.socket] | None = None,
    ):
        self.limits = limits
        self.request_queue_size = max(limits.backlog, 1)
        self._wrap = wrap
        self._lock = threading.Lock()
        # Open connections: since when each has been waiting for a complete
        # request (oldest first), or None while a request is being answered.
        self._open: dict[Any, float | None] = {}
        self.refused = 0  # connections answered 503 at the cap
        self.evicted = 0  # waiting connections closed to make room
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        return (self._wrap(sock) if self._wrap is not None else sock), addr

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            room = len(self._open) < self.limits.max_connections or self._evict_one()
            if room:
                self._open[request] = time.monotonic()
            else:
                self.refused += 1
        if not room:
            log.debug("%s: at %d connections, refusing %s", self, len(self._open), client_address)
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.shutdown_request(request)
            raise

    def _evict_one(self) -> bool:
        """Close the oldest connection waiting since ``evict_after`` (lock
        held); False if there is none."""
        waiting = ((conn, since) for conn, since in self._open.items() if since is not None)
        victim, since = next(waiting, (None, math.inf))
        if victim is None or time.monotonic() - since < self.limits.evict_after:
            return False
        del self._open[victim]
        self.evicted += 1
        with contextlib.suppress(OSError):
            # The plain socket's shutdown: its thread's read sees the end at once.
            socket.socket.shutdown(victim, socket.SHUT_RDWR)
        return True

    def _refuse_busy(self, request: Any) -> None:
        if not isinstance(request, ssl.SSLSocket):  # no handshake happened: no TLS reply
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(_BUSY)
        self.close_request(request)

    def waiting(self, request: Any) -> bool:
        """``request``'s connection waits for its next request (newest of the
        waiting ones); False if it was evicted."""
        with self._lock:
            if request not in self._open:
                return False
            del self._open[request]
            self._open[request] = time.monotonic()
            return True

    def claim(self, request: Any) -> bool:
        """``request``'s connection has a complete request: no longer evictable.
        False if it was evicted first."""
        with self._lock:
            if request not in self._open:
                return False
            self._open[request] = None
            return True

    def connections(self) -> int:
        with self._lock:
            return len(self._open)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


def serve_in_thread(server: ThreadingHTTPServer, name: str) -> threading.Thread:
    """Run ``server`` until :func:`stop_serving`, in a daemon thread."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=name, daemon=True
    )
    thread.start()
    return thread


def stop_serving(server: ThreadingHTTPServer | None, thread: threading.Thread | None) -> None:
    """Stop accepting, close the socket, wait (bounded) for the thread."""
    if server is not None:
        server.shutdown()
        server.server_close()
    if thread is not None:
        thread.join(5)

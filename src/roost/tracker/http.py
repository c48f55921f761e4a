"""The tracker's connections: bytes in, requests out, responses in order.

Theory of operation
-------------------
Each TCP connection is a ``Connection``, an ``asyncio.Protocol`` holding a
sans-IO ``RequestParser`` (``protocol.py``). Bytes arrive, complete request
heads come out (pipelined and keep-alive requests included), and each is
handed to the server that accepted the connection (``Owner.handle``: the
routes are in ``server.py``), synchronously; its response is written at
once. A pipelined batch is answered with one write, in request order.

A /stats.json whose snapshot must be built first (``Owner.deferred``,
``snapshot.py``) is answered when the build ends: reading pauses, the
requests read after it wait, and they are answered in order after it. End
of input during such a wait closes the connection once they are answered.

A request stream that cannot be parsed gets its 4xx and a bencoded
``failure reason``, then the connection closes: the stream can no longer be
trusted. At ``Owner.max_connections`` open connections, a new one closes
the connection that has been quiet longest, so accepting never stops;
``last_active`` and ``head_since`` are what the server's sweep reads to
close idle and slow connections.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, Protocol, cast

from roost.tracker import protocol as proto

if TYPE_CHECKING:
    from roost.tracker.snapshot import Snapshot
    from roost.tracker.swarm import Registry

__all__ = ["Connection", "Owner"]

_monotonic = time.monotonic


class Owner(Protocol):
    """What a connection needs of the server that accepted it (``TrackerServer``)."""

    conns: set[Connection]
    max_connections: int
    registry: Registry

    def handle(
        self,
        req: proto.Request,
        ip: str,
        t0: float | None = None,
        *,
        built: Snapshot | None = None,
    ) -> tuple[bytes, bool]: ...

    def deferred(self, req: proto.Request, ip: str) -> asyncio.Task[Snapshot] | None: ...


class Connection(asyncio.Protocol):
    """One client's connection: bytes in, responses out, in request order."""

    __slots__ = (
        "eof",
        "head_since",
        "ip",
        "last_active",
        "parser",
        "server",
        "transport",
        "waiting",
    )

    def __init__(self, server: Owner):
        self.server = server
        self.parser = proto.RequestParser()
        self.transport: asyncio.Transport | None = None
        # Requests behind a response being built (snapshot.py); None when none is.
        self.waiting: list[proto.Request | proto.ProtocolError] | None = None
        self.eof = False
        self.ip = ""
        self.last_active = time.monotonic()
        self.head_since: float | None = None  # first byte of a request head not yet whole

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else ""
        conns = self.server.conns
        if len(conns) >= self.server.max_connections:
            # Full: the connection quiet longest makes room (accepting never stops).
            quiet = min(conns, key=lambda c: c.last_active)
            conns.discard(quiet)
            if quiet.transport is not None:
                quiet.transport.abort()
        conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        self.transport = None

    def eof_received(self) -> bool | None:
        if self.waiting is None:
            return None  # the transport closes itself
        self.eof = True  # answer the requests already read, then close (_built)
        return True

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self.waiting is None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        self.last_active = t0 = _monotonic()
        parser = self.parser
        try:
            requests = parser.feed(data)
            # When the head now pending began: a completed request restarts the clock.
            if not parser.pending:
                self.head_since = None
            elif requests or self.head_since is None:
                self.head_since = t0
        except proto.ProtocolError as exc:
            self.server.registry.counters.request("malformed", 0.0)
            transport.write(_failure(exc))
            transport.close()
            return
        items: list[proto.Request | proto.ProtocolError] = list(requests)
        if parser.failed is not None:  # a bad head after good ones: answered after them
            self.server.registry.counters.request("malformed", 0.0)
            items.append(parser.failed)
        if self.waiting is not None:  # answered in order, after the one being built
            self.waiting.extend(items)
            return
        if (
            len(items) == 1
            and isinstance(req := items[0], proto.Request)
            and (req.path != "/stats.json")
        ):
            response, keep = self.server.handle(req, self.ip, t0)
            transport.write(response)
            if not keep:
                transport.close()
            return
        self._serve(items, t0)

    def _serve(self, requests: list[proto.Request | proto.ProtocolError], t0: float) -> None:
        """Answer ``requests`` in order; one write (one syscall) for a pipelined batch.

        A /stats.json whose snapshot must be built is answered when the build
        ends (``_built``); reading pauses and the requests after it wait.
        """
        transport = self.transport
        if transport is None:
            return
        out: list[bytes] = []
        for i, req in enumerate(requests):
            if isinstance(req, proto.ProtocolError):  # the stream's end: a bad head
                out.append(_failure(req))
                transport.write(b"".join(out))
                transport.close()
                return
            build = self.server.deferred(req, self.ip)
            if build is not None:
                if out:
                    transport.write(b"".join(out))
                self.waiting = list(requests[i + 1 :])
                transport.pause_reading()
                build.add_done_callback(functools.partial(self._built, req, t0))
                return
            response, keep = self.server.handle(req, self.ip, t0)
            out.append(response)
            if not keep:
                transport.write(b"".join(out))
                transport.close()
                return
        if out:
            transport.write(b"".join(out))

    def _built(self, req: proto.Request, t0: float, task: asyncio.Task[Snapshot]) -> None:
        waiting, self.waiting = self.waiting or [], None
        if task.cancelled():
            return
        failed = task.exception()  # retrieved even if the client is gone
        transport = self.transport
        if transport is None:
            return
        # A failed build is tried again synchronously: a bug then gets its 500.
        built = None if failed is not None else task.result()
        response, keep = self.server.handle(req, self.ip, t0, built=built)
        transport.write(response)
        if not keep:
            transport.close()
            return
        transport.resume_reading()
        if waiting:
            self._serve(waiting, t0)
        if self.eof and self.waiting is None and self.transport is not None:
            self.transport.close()


def _failure(exc: proto.ProtocolError) -> bytes:
    """The answer to a malformed request, after which the connection closes."""
    return proto.http_response(exc.status, proto.render_failure(str(exc)), keep_alive=False)

"""The feed: the origin hands every piece to one peer, and that peer relays it.

Theory of operation
-------------------
A deploy's time is bound by the origin's link: it is one host among many,
and every copy of a piece it sends twice costs one more link-time (measured:
time ≈ origin copies x size ÷ rate, bench/NOTES.md "One link-time"). As a
plain BitTorrent seeder the origin cannot tell which peer should get which
piece: peers ask for what is rarest to *them*, and early on that is the same
pieces for everyone. Mutualcast (Li, Chou & Zhang 2005) shows the way out:
the origin sends each block to exactly one peer, and that peer relays it to
all the others.

The feed does that over plain HTTP beside the seeder:

* :class:`Dispatcher` (sans-IO) owns the pieces' fates. A peer asks for
  ``next``; it gets the first piece nobody was given yet. The peer confirms
  what it received with its next request (``got=``), so a piece given to a
  peer that stalls or dies is given again after a few times the observed
  transfer time (work stealing), and the origin stays busy until every piece
  left it once and was received. A peer keeps two asks pipelined on one
  connection, so the origin never waits for a round trip, nor for a busy
  peer to be scheduled, between two pieces; TCP's flow control does the
  rest: a peer whose downlink is crowded drains slower, asks less often and
  so is given fewer pieces.
* :class:`FeedServer` serves ``GET /feed/v1/<info-hash>/next`` (a piece, or
  ``204`` with ``X-Roost-Feed: wait`` / ``done``), ``/got`` (confirmations
  only: a peer that completes says what it received last), ``/piece/<i>``
  (one piece by index, for repairs) and ``/stats``, with ``sendfile`` from
  the payload and an optional upload cap.
* :class:`FeedClient` runs in the peer next to libtorrent: it hands each
  piece to the engine (``add_piece``), which hashes it, announces it and
  serves it to the swarm like any other piece. Once the feed is ``done``
  the client only repairs: a piece the peer still lacks, that no connected
  peer has and that is not on its way for ``repair_after`` seconds (its only
  holder died before passing it on) is fetched by index.

The origin's BitTorrent seeder stays for foreign clients and peers without a
feed; roost's tracker keeps it away from feed peers (``role=feed`` /
``role=origin`` in the announce), so a feed peer's pieces come from the feed
and the swarm only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost import __version__
from roost.errors import UsageError
from roost.httpserve import (
    BoundedHandler,
    BoundedHTTPServer,
    ServerLimits,
    TokenBucket,
    serve_in_thread,
    stop_serving,
)
from roost.layout import Layout

log = logging.getLogger(__name__)

API = "/feed/v1"
WAIT = "wait"
DONE = "done"


# Sans-IO: who gets which piece -------------------------------------------------


@dataclass(frozen=True)
class FeedStats:
    pieces: int
    dispatched: int  # pieces handed out by ``next`` (re-dispatches included)
    confirmed: int  # pieces received by some peer
    reassigned: int  # given again because their first peer never confirmed
    repairs: int  # served by index (``/piece/<i>``)
    bytes_sent: int
    done: bool

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Dispatcher:
    """Hands each piece to one peer; re-hands those never confirmed.

    Not thread-safe on its own: :class:`FeedServer` calls it under a lock.
    ``reassign_after`` is the floor of the timeout after which an unconfirmed
    piece goes to the next asker; above it, four times the mean of the
    transfers confirmed so far.
    """

    def __init__(self, num_pieces: int, *, reassign_after: float = 3.0):
        if num_pieces < 1:
            raise ValueError("a feed needs at least one piece")
        self.num_pieces = num_pieces
        self.reassign_after = reassign_after
        self._unsent: deque[int] = deque(range(num_pieces))
        self._assigned: dict[int, float] = {}  # piece -> when it was handed out
        self._confirmed = bytearray(num_pieces)
        self._num_confirmed = 0
        self._mean = 0.0  # mean seconds from hand-out to confirmation
        self._samples = 0
        self.dispatched = 0
        self.reassigned = 0

    @property
    def confirmed(self) -> int:
        return self._num_confirmed

    @property
    def done(self) -> bool:
        return self._num_confirmed == self.num_pieces

    def timeout(self) -> float:
        if not self._samples:
            return max(self.reassign_after, 10.0)
        return max(self.reassign_after, 4 * self._mean)

    def confirm(self, piece: int, now: float) -> None:
        if not 0 <= piece < self.num_pieces or self._confirmed[piece]:
            return
        self._confirmed[piece] = 1
        self._num_confirmed += 1
        started = self._assigned.pop(piece, None)
        if started is not None:
            self._samples += 1
            self._mean += (now - started - self._mean) / min(self._samples, 32)
        with contextlib.suppress(ValueError):
            self._unsent.remove(piece)

    def next(self, now: float) -> int | str:
        """The piece to send to this asker, or ``WAIT`` (pieces are on their
        way to others, ask again) or ``DONE`` (every piece was received)."""
        if self.done:
            return DONE
        if not self._unsent:
            self._reap(now)
        if not self._unsent:
            return WAIT
        piece = self._unsent.popleft()
        self._assigned[piece] = now
        self.dispatched += 1
        return piece

    def _reap(self, now: float) -> None:
        limit = self.timeout()
        stale = [p for p, t in self._assigned.items() if now - t > limit]
        for piece in sorted(stale):
            del self._assigned[piece]
            self._unsent.append(piece)
            self.reassigned += 1


# The origin's side: an HTTP server ---------------------------------------------


@dataclass(frozen=True)
class FeedSource:
    """One torrent's payload as the feed serves it: a single file at
    ``path``, or with ``layout`` a tree release whose files are under
    ``path`` (each piece is then a prefix of one file's bytes; the pad that
    ends it is not sent, the receiver adds the zeros: ``Engine.add_piece``)."""

    info_hash: str
    path: Path
    piece_length: int
    total_size: int
    layout: Layout | None = None

    @property
    def num_pieces(self) -> int:
        return -(-self.total_size // self.piece_length)

    def extent(self, piece: int) -> tuple[Path, int, int]:
        """The file holding piece ``piece``'s bytes, their offset and length."""
        if self.layout is not None:
            index, offset, length = self.layout.piece_extent(piece)
            return self.path / self.layout.files[index].path, offset, length
        start = piece * self.piece_length
        return self.path, start, min(self.piece_length, self.total_size - start)


class _Feed:
    def __init__(self, source: FeedSource, reassign_after: float):
        self.source = source
        self.dispatcher = Dispatcher(source.num_pieces, reassign_after=reassign_after)
        self.repairs = 0
        self.bytes_sent = 0

    def stats(self) -> FeedStats:
        d = self.dispatcher
        return FeedStats(
            d.num_pieces,
            d.dispatched,
            d.confirmed,
            d.reassigned,
            self.repairs,
            self.bytes_sent,
            d.done,
        )


_PATH = re.compile(r"^/feed/v1/([0-9a-f]{40})/(next|got|stats|piece/(\d{1,9}))$")


class _Handler(BoundedHandler):
    server_version = f"roost-feed/{__version__}"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        target, _, query = self.path.partition("?")
        match = _PATH.match(target)
        feed = self.server.feeds.get(match.group(1)) if match else None
        if match is None or feed is None:
            self._empty(404)
            return
        if match.group(2) == "stats":
            with self.server.lock:
                doc = json.dumps(feed.stats().to_json()).encode()
            self._reply(200, doc, "application/json")
            return
        if match.group(3) is not None:
            piece = int(match.group(3))
            if piece >= feed.source.num_pieces:
                self._empty(404)
                return
            with self.server.lock:
                feed.repairs += 1
            self._send_piece(feed, piece)
            return
        now = time.monotonic()
        with self.server.lock:
            for got in _got(query, feed.source.num_pieces):
                feed.dispatcher.confirm(got, now)
            grant = feed.dispatcher.next(now) if match.group(2) == "next" else DONE
        if isinstance(grant, str):
            self._empty(204, {"X-Roost-Feed": grant})
            return
        self._send_piece(feed, grant)

    def _send_piece(self, feed: _Feed, piece: int) -> None:
        path, start, length = feed.source.extent(piece)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError:
            self._empty(503)
            return
        with f:
            self.send_response(200)
            self.send_header("X-Roost-Piece", str(piece))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.flush()
            # Counted before it leaves, corrected if it does not all leave: a
            # client that has read the piece never sees a count without it.
            with self.server.lock:
                feed.bytes_sent += length
            sent = 0
            try:
                throttle = self.server.throttle
                if throttle is None:
                    sent = self.connection.sendfile(f, offset=start, count=length)
                else:
                    while sent < length:
                        n = min(16384, length - sent)
                        throttle.take(n)
                        sent += self.connection.sendfile(f, offset=start + sent, count=n)
            except OSError:
                pass
            finally:
                if sent < length:
                    with self.server.lock:
                        feed.bytes_sent -= length - sent
            if sent < length:
                self.close_connection = True

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if status != 204:
            self.send_header("Content-Length", "0")
        self.end_headers()


def _got(query: str, num_pieces: int) -> list[int]:
    """The pieces a ``got=`` list names: ``i`` or ``i-j`` (inclusive), comma
    separated; out-of-range and malformed parts are ignored."""
    out: list[int] = []
    for key, value in urllib.parse.parse_qsl(query):
        if key != "got":
            continue
        for part in value.split(","):
            first, dash, last = part.partition("-")
            if not (first.isdigit() and len(first) < 10):
                continue
            if not dash:
                out.append(int(first))
            elif last.isdigit() and len(last) < 10:
                out.extend(range(int(first), min(int(last), num_pieces - 1) + 1))
    return out


def _chunks(parts: list[str], size: int) -> list[str]:
    """``parts`` joined by commas into strings of about ``size`` at most."""
    out: list[str] = []
    for part in parts:
        if out and len(out[-1]) + len(part) < size:
            out[-1] += "," + part
        else:
            out.append(part)
    return out


def piece_ranges(pieces: Sequence[int]) -> list[str]:
    """``got=`` parts for sorted ``pieces``: runs as ``i-j``."""
    parts: list[str] = []
    start = prev = None
    for piece in [*pieces, None]:
        if piece is not None and prev is not None and piece == prev + 1:
            prev = piece
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = piece
    return parts


class _Server(BoundedHTTPServer):
    def __init__(self, address: tuple[str, int], rate_limit: int, limits: ServerLimits):
        self.feeds: dict[str, _Feed] = {}
        self.lock = threading.Lock()
        self.throttle = TokenBucket(rate_limit, burst_seconds=0.125) if rate_limit > 0 else None
        super().__init__(address, _Handler, limits)


class FeedServer:
    """The origin's feed, in a background thread. ``start()`` binds (port 0
    allowed; ``.port`` is the bound one) and raises ``UsageError`` if the
    address cannot be bound."""

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int = 0,
        *,
        rate_limit: int = 0,
        idle_timeout: float = 120.0,
        reassign_after: float = 3.0,
    ):
        self.bind = bind
        self._port = port
        self._rate_limit = rate_limit
        self._idle_timeout = idle_timeout
        self._reassign_after = reassign_after
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FeedServer:
        try:
            limits = ServerLimits(
                max_connections=1024, backlog=1024, idle_timeout=self._idle_timeout
            )
            self._server = _Server((self.bind, self._port), self._rate_limit, limits)
        except OSError as exc:
            where = f"{self.bind}:{self._port}"
            raise UsageError(f"feed cannot listen on {where}: {exc.strerror or exc}") from exc
        self._thread = serve_in_thread(self._server, "roost-feed")
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise UsageError("feed server not started")
        return int(self._server.server_address[1])

    def url(self, host: str | None = None) -> str:
        host = host or self.bind
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def add(self, source: FeedSource) -> None:
        assert self._server is not None, "start() first"
        with self._server.lock:
            self._server.feeds[source.info_hash] = _Feed(source, self._reassign_after)

    def stats(self, info_hash: str) -> FeedStats | None:
        if self._server is None:
            return None
        with self._server.lock:
            feed = self._server.feeds.get(info_hash)
            return feed.stats() if feed is not None else None

    def stop(self) -> None:
        stop_serving(self._server, self._thread)
        self._thread = None

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# The peer's side ---------------------------------------------------------------


@dataclass
class FeedCounters:
    pieces: int = 0  # pieces received from the feed
    bytes: int = 0
    repairs: int = 0
    errors: int = 0
    last_error: str | None = None


def parse_feed_url(url: str) -> urllib.parse.SplitResult:
    """``url`` split; ``UsageError`` unless it is ``http://HOST[:PORT]/``."""
    parsed = urllib.parse.urlsplit(url)
    try:
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parsed = parsed._replace(scheme="")
    if parsed.scheme != "http" or not parsed.hostname:
        raise UsageError(f"feed URL must be http://HOST:PORT/, not {url!r}")
    return parsed


class FeedClient:
    """Pulls pieces from an origin's feed into the engine, on worker threads.

    ``add_piece(index, data)`` and ``orphans()`` are the engine's (both safe
    to call from these threads); ``orphans()`` lists the pieces this peer
    lacks that no connected peer has and that are not being downloaded.
    Errors talking to the feed are counted and retried with backoff, never
    raised: the swarm (and the origin's seeder) may still deliver.
    """

    def __init__(
        self,
        url: str,
        info_hash: str,
        *,
        add_piece: Callable[[int, bytes], None],
        orphans: Callable[[], Sequence[int]],
        connections: int = 1,
        depth: int = 2,
        repair_after: float = 3.0,
        timeout: float = 30.0,
        download_limit: int = 0,
        have: Sequence[int] = (),
    ):
        """``have``: pieces this peer holds already (pre-filled from an
        earlier release); they are confirmed to the feed first, so it never
        sends them, to anyone: the peers that hold them serve them."""
        parsed = parse_feed_url(url)
        assert parsed.hostname is not None
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.base = f"{parsed.path.rstrip('/')}{API}/{info_hash}"
        self.add_piece = add_piece
        self.orphans = orphans
        self.connections = connections
        self.depth = depth
        self.repair_after = repair_after
        self.timeout = timeout
        self.counters = FeedCounters()
        self._throttle = (
            TokenBucket(download_limit, burst_seconds=0.125) if download_limit > 0 else None
        )
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._have = _chunks(piece_ranges(sorted(have)), 4000)

    def start(self) -> FeedClient:
        for k in range(self.connections):
            t = threading.Thread(target=self._pull, name=f"roost-feed-{k}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._repair, name="roost-feed-repair", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)

    def _connect(self) -> _Pipe:
        return _Pipe(self.host, self.port, self.timeout)

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.counters.errors += 1
            self.counters.last_error = str(exc) or type(exc).__name__

    def _received(self, piece: int, data: bytes, *, repair: bool = False) -> None:
        if self._throttle is not None:
            self._throttle.take(len(data))
        self.add_piece(piece, data)
        with self._lock:
            self.counters.pieces += 1
            self.counters.bytes += len(data)
            if repair:
                self.counters.repairs += 1

    def _pull(self) -> None:
        """Ask for the next piece until the feed is done (or we are stopped),
        with ``depth`` asks always on the wire: the origin never waits for a
        round trip, nor for this process to be scheduled, between pieces."""
        pipe: _Pipe | None = None
        got: list[int] = []
        backoff = 0.2
        while not self._stop.is_set() and not self._done.is_set():
            try:
                if pipe is None:
                    pipe = self._connect()
                    self._confirm_have(pipe)
                while pipe.inflight < self.depth:
                    query = f"?got={','.join(map(str, got))}" if got else ""
                    pipe.send(f"{self.base}/next{query}")
                    got = []
                status, headers, body = pipe.read()
                backoff = 0.2
            except (OSError, ValueError) as exc:
                self._failed(exc)
                if pipe is not None:
                    pipe.close()
                    pipe = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            piece = headers.get("x-roost-piece", "")
            state = headers.get("x-roost-feed", "")
            if status == 200 and piece.isdigit():
                self._received(int(piece), body)
                got.append(int(piece))
            elif status == 204 and state == DONE:
                self._done.set()
            elif status == 204:
                self._stop.wait(0.2)
            else:  # not a feed for this torrent (404), or broken: give up on it
                self._failed(RuntimeError(f"feed answered HTTP {status}"))
                self._done.set()
        if pipe is not None:
            if got:  # what we received since the last ask: or it is sent again
                with contextlib.suppress(OSError, ValueError):
                    pipe.send(f"{self.base}/got?got={','.join(map(str, got))}")
                    while pipe.inflight:
                        pipe.read()
            pipe.close()

    def _confirm_have(self, pipe: _Pipe) -> None:
        with self._lock:
            chunks, self._have = self._have, []
        for chunk in chunks:
            pipe.send(f"{self.base}/got?got={chunk}")
            pipe.read()

    def _repair(self) -> None:
        """After the feed is done: fetch by index what nobody can give us."""
        first_seen: dict[int, float] = {}
        pipe: _Pipe | None = None
        while not self._stop.wait(0.5):
            if not self._done.is_set():
                continue
            now = time.monotonic()
            orphans = set(self.orphans())
            first_seen = {p: first_seen.get(p, now) for p in orphans}
            due = sorted(p for p, t in first_seen.items() if now - t >= self.repair_after)
            for piece in due:
                if self._stop.is_set():
                    break
                try:
                    if pipe is None:
                        pipe = self._connect()
                    pipe.send(f"{self.base}/piece/{piece}")
                    status, _, body = pipe.read()
                except (OSError, ValueError) as exc:
                    self._failed(exc)
                    if pipe is not None:
                        pipe.close()
                        pipe = None
                    break
                if status == 200:
                    self._received(piece, body, repair=True)
                    first_seen.pop(piece, None)
        if pipe is not None:
            pipe.close()


class _Pipe:
    """One keep-alive HTTP/1.1 connection whose GETs are pipelined: sent
    before the answers to earlier ones are read (RFC 9112 §9.3.2; the feed's
    answers come back in order). Raises ``OSError`` (the network) or
    ``ValueError`` (an answer that is not HTTP)."""

    MAX_BODY = 64 * 1024 * 1024

    def __init__(self, host: str, port: int, timeout: float):
        self.host = host
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb", buffering=256 * 1024)
        self.inflight = 0

    def send(self, path: str) -> None:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        self.inflight += 1

    def read(self) -> tuple[int, dict[str, str], bytes]:
        """The next answer: status, headers (lower-case names), body."""
        line = self.rfile.readline(4096)
        if not line:
            raise ConnectionResetError("the feed closed the connection")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP answer: {line[:60]!r}")
        headers: dict[str, str] = {}
        for _ in range(100):
            raw = self.rfile.readline(8192)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or "0")
        if not 0 <= length <= self.MAX_BODY:
            raise ValueError(f"answer of {length} bytes")
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise ConnectionResetError("the feed closed the connection mid-answer")
        self.inflight -= 1
        return int(parts[1]), headers, body

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.rfile.close()
            self.sock.close()

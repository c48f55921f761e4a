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
  what it received with its next request (``got=``). A piece given to a
  peer whose connection closes (the peer died) is given again at once, to
  the next asker; one given to a peer that stalls is given again after a
  few times the observed transfer time (work stealing). So the origin stays
  busy until every piece left it once and was received. A peer keeps two
  asks pipelined on one connection (a piece is held by the connection it
  was sent on), so the origin never waits for a round trip, nor for a busy
  peer to be scheduled, between two pieces; TCP's flow control does the
  rest: a peer whose downlink is crowded drains slower, asks less often and
  so is given fewer pieces. Once every piece has left the origin, its link
  would idle while the last pieces are relayed; a peer then says what it
  still lacks (``lack=``) and is sent the most recently handed-out piece of
  those (the tail: the last hop of the relay pipeline is skipped for the
  pieces that are slowest to spread). Second copies of any kind share one
  budget, ``tail_share`` of the pieces: the tail sends what re-hands and
  repairs left of it, so the origin's extra copies stay within it.
* :class:`FeedServer` serves ``GET /feed/v1/<info-hash>/next`` (a piece, or
  ``204`` with ``X-Roost-Feed: wait`` / ``later`` / ``done``), ``/got`` (confirmations
  only: a peer that completes says what it received last), ``/piece/<i>``
  (one piece by index, for repairs) and ``/stats``, with ``sendfile`` from
  the payload and an optional upload cap.
* :class:`~roost.feedclient.FeedClient` (its own module, so that a peer
  never imports the HTTP server) runs in the peer next to libtorrent: it hands each
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
import hmac
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from roost import __version__
from roost.errors import UsageError
from roost.feedclient import API, DONE, FEED_ERROR, LATER, WAIT, valid_token
from roost.httpserve import (
    BoundedHandler,
    BoundedHTTPServer,
    ServerLimits,
    serve_in_thread,
    stop_serving,
)
from roost.layout import Layout
from roost.limits import TokenBucket

log = logging.getLogger(__name__)

#: The budget of second copies (re-hands, repairs, the tail): this share of
#: the pieces. Only the tail is optional: it sends what the others left.
TAIL_SHARE = 0.05
#: A peer handed more than SHARE_SLACK x the mean share (+ SHARE_PIECES) of
#: the peers that asked in the last ACTIVE_AFTER seconds is told LATER.
SHARE_SLACK = 1.25
SHARE_PIECES = 4
ACTIVE_AFTER = 1.0


# Sans-IO: who gets which piece -------------------------------------------------


@dataclass(frozen=True)
class FeedStats:
    pieces: int
    dispatched: int  # pieces handed out by ``next`` (re-dispatches included)
    confirmed: int  # pieces received by some peer
    reassigned: int  # given again because their first peer never confirmed
    held_back: int  # asks told LATER: that peer had well over its share
    repairs: int  # served by index (``/piece/<i>``)
    tail: int  # second copies sent to peers that still lacked them at the end
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

    def __init__(
        self, num_pieces: int, *, reassign_after: float = 3.0, tail_share: float = TAIL_SHARE
    ):
        if num_pieces < 1:
            raise ValueError("a feed needs at least one piece")
        self.num_pieces = num_pieces
        self.reassign_after = reassign_after
        #: second copies of any kind the origin may send (a share of the
        #: pieces); the tail spends what re-hands and repairs leave of it
        self.tail_budget = int(num_pieces * tail_share)
        self._handed = [0] * num_pieces  # piece -> order of its last hand-out (0: never)
        self._sent = bytearray(num_pieces)  # piece -> handed out at least once
        self._holder: list[object] = [None] * num_pieces  # piece -> whom it was handed to
        self._order = 0
        self.tail_sent = 0
        self._unsent: deque[int] = deque(range(num_pieces))
        self._assigned: dict[int, float] = {}  # piece -> when it was handed out
        self._confirmed = bytearray(num_pieces)
        self._num_confirmed = 0
        self._mean = 0.0  # mean seconds from hand-out to confirmation
        self._samples = 0
        self.dispatched = 0
        self.redispatched = 0  # hand-outs of a piece handed out before
        self.reassigned = 0
        self.repairs = 0  # pieces sent by index (``/piece/<i>``)
        self._shares: dict[object, int] = {}  # asker -> pieces handed to it
        self._seen: dict[object, float] = {}  # asker -> when it last asked
        self._shared = 0  # pieces handed to the askers in _seen (those asking now)
        self._pruned = 0.0  # when _seen last lost its silent askers
        self.held_back = 0

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
        self.confirm_all((piece,), now)

    def confirm_all(self, pieces: Iterable[int], now: float) -> None:
        """Some peer received these pieces (out-of-range ones are ignored):
        none of them is handed out again. One pass over the unsent pieces,
        however many are confirmed (a peer that holds every piece confirms
        them all at once)."""
        unsent = False
        for piece in pieces:
            if not 0 <= piece < self.num_pieces or self._confirmed[piece]:
                continue
            self._confirmed[piece] = 1
            self._num_confirmed += 1
            started = self._assigned.pop(piece, None)
            if started is not None:
                self._samples += 1
                self._mean += (now - started - self._mean) / min(self._samples, 32)
            else:
                unsent = True  # never handed out, or re-queued: it may be in _unsent
        if unsent:
            self._unsent = deque(p for p in self._unsent if not self._confirmed[p])

    def next(self, now: float, lack: Iterable[int] = (), asker: object = None) -> int | str:
        """The piece to send to this asker, or ``WAIT`` (pieces are on their
        way to others, ask again) or ``DONE`` (every piece was received).

        ``lack``: pieces the asker still lacks. Once every piece has been
        handed out (received or not), the asker gets the most recently
        handed-out of those (the one least likely to have reached it through
        the swarm yet), while the tail budget lasts; never one handed to the
        same ``asker`` (it may still be on its way there)."""
        if self.done:
            tail = self._tail(lack, asker)
            return DONE if tail == WAIT else tail
        if not self._unsent:
            self._reap(now)
        if not self._unsent:
            return self._tail(lack, asker)
        if self._over_share(asker, now):
            self.held_back += 1
            return LATER
        piece = self._unsent.popleft()
        self._assigned[piece] = now
        self.dispatched += 1
        if self._sent[piece]:
            self.redispatched += 1
        self._sent[piece] = 1
        self._order += 1
        self._handed[piece] = self._order
        self._holder[piece] = asker
        if asker is not None:  # in _seen: _over_share registered it
            self._shares[asker] = self._shares.get(asker, 0) + 1
            self._shared += 1
        return piece

    def _over_share(self, asker: object, now: float) -> bool:
        """Whether ``asker`` was handed well over the mean share of the peers
        asking now: then the next pieces go to the others. Every piece a
        peer is handed it must relay to all the others; a peer that started
        early (alone with the origin for a moment) or whose feed connection
        runs faster would otherwise carry more than its uplink can, starve
        its own downloads behind its uploads and finish last."""
        if asker is None:
            return False
        if asker not in self._seen:  # (back) among the askers: its share counts again
            self._shared += self._shares.get(asker, 0)
        self._seen[asker] = now
        if now - self._pruned >= ACTIVE_AFTER / 10:  # a scan at most ten times a second
            self._pruned = now
            for gone in [a for a, t in self._seen.items() if now - t > ACTIVE_AFTER]:
                del self._seen[gone]
                self._shared -= self._shares.get(gone, 0)
        if len(self._seen) < 2:
            return False
        mean = self._shared / len(self._seen)
        return self._shares.get(asker, 0) > SHARE_SLACK * mean + SHARE_PIECES

    def gone(self, asker: object) -> int:
        """``asker`` is gone (its connection closed): what it was handed and
        never confirmed is sent again first, to the next askers, without
        waiting for the timeout (a peer killed while it held pieces nobody
        else has); its share no longer counts. Returns how many pieces."""
        if asker is None:
            return 0
        lost = sorted(
            p for p in self._assigned if self._holder[p] == asker and not self._confirmed[p]
        )
        for piece in reversed(lost):
            del self._assigned[piece]
            self._unsent.appendleft(piece)
        self.reassigned += len(lost)
        if self._seen.pop(asker, None) is not None:
            self._shared -= self._shares.get(asker, 0)
        self._shares.pop(asker, None)
        return len(lost)

    def repaired(self) -> None:
        """A piece was sent by index (a repair): a second copy, from the budget."""
        self.repairs += 1

    def _tail(self, lack: Iterable[int], asker: object) -> int | str:
        if self.tail_sent + self.redispatched + self.repairs >= self.tail_budget:
            return WAIT
        best, best_order = -1, 0
        for piece in lack:
            if (
                0 <= piece < self.num_pieces
                and self._handed[piece] > best_order
                and (asker is None or self._holder[piece] != asker)
            ):
                best, best_order = piece, self._handed[piece]
        if best < 0:
            return WAIT
        self._handed[best] = 0  # sent twice now: not again, to anyone
        self.tail_sent += 1
        return best

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
    ``path`` (each piece is then the bytes of one or more files and a pad,
    which is not sent: the receiver adds the zeros, ``Engine.add_piece``)."""

    info_hash: str
    path: Path
    piece_length: int
    total_size: int
    layout: Layout | None = None

    @property
    def num_pieces(self) -> int:
        return -(-self.total_size // self.piece_length)

    def extents(self, piece: int) -> list[tuple[Path, int, int]]:
        """Where piece ``piece``'s bytes are: (file, offset, length) in order."""
        if self.layout is not None:
            return [
                (self.path / self.layout.files[index].path, offset, length)
                for index, offset, length in self.layout.piece_segments(piece)
            ]
        start = piece * self.piece_length
        return [(self.path, start, min(self.piece_length, self.total_size - start))]


class _Feed:
    def __init__(self, source: FeedSource, reassign_after: float):
        self.source = source
        self.dispatcher = Dispatcher(source.num_pieces, reassign_after=reassign_after)
        self.bytes_sent = 0
        #: each payload file's (size, mtime) as the feed began: a file that
        #: changes since is no longer the release's (rebuilt in place)
        self.stamps = _stamps(source)
        #: why the feed stopped serving (a payload file changed), or None
        self.broken: str | None = None

    def check(self, path: Path, f: BinaryIO) -> bool:
        """Whether ``f`` (opened from ``path``) is still as the feed began;
        else the feed stops for good, and says so once."""
        if self.broken is None:
            st = os.fstat(f.fileno())
            stamp = self.stamps.get(path)
            if stamp is None or stamp == (st.st_size, st.st_mtime_ns):
                return True
            self.broken = f"{path} changed since seeding began"
            log.error(
                "feed %s: %s: its pieces are not the release's",
                self.source.info_hash[:12],
                self.broken,
            )
        return False

    def stats(self) -> FeedStats:
        d = self.dispatcher
        return FeedStats(
            d.num_pieces,
            d.dispatched,
            d.confirmed,
            d.reassigned,
            d.held_back,
            d.repairs,
            d.tail_sent,
            self.bytes_sent,
            d.done,
        )


def _stamps(source: FeedSource) -> dict[Path, tuple[int, int]]:
    if source.layout is None:
        paths = [source.path]
    else:
        paths = [source.path / source.layout.files[i].path for i in source.layout.data_files()]
    stamps: dict[Path, tuple[int, int]] = {}
    for path in paths:
        with contextlib.suppress(OSError):  # missing: the seeder's own check says so
            st = path.stat()
            stamps[path] = (st.st_size, st.st_mtime_ns)
    return stamps


_PATH = re.compile(rf"^{API}/([0-9a-f]{{40}})/(next|got|stats|piece/(\d{{1,9}}))$")


class _Handler(BoundedHandler):
    server_version = f"roost-feed/{__version__}"
    server: _Server
    allowed_methods = "GET"

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self) -> None:
        super().finish()
        with self.server.lock:  # its unconfirmed pieces go to the others now
            for feed in self.server.feeds.values():
                feed.dispatcher.gone(self.client_address)

    def do_GET(self) -> None:
        if not self._authorized():  # before anything: not even which feeds exist
            self.send_error(403, "feed token missing or wrong")
            return
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
        if feed.broken is not None:  # every asker hears why, and stops
            self._empty(503, {FEED_ERROR: feed.broken})
            return
        if match.group(3) is not None:
            piece = int(match.group(3))
            if piece >= feed.source.num_pieces:
                self._empty(404)
                return
            with self.server.lock:
                feed.dispatcher.repaired()
            self._send_piece(feed, piece)
            return
        got = _got(query, feed.source.num_pieces)  # parsed outside the feed's lock
        lack = _got(query, feed.source.num_pieces, "lack") if match.group(2) == "next" else []
        now = time.monotonic()
        with self.server.lock:
            feed.dispatcher.confirm_all(got, now)
            if match.group(2) == "next":
                grant = feed.dispatcher.next(now, lack, asker=self.client_address)
            else:
                grant = DONE
        if isinstance(grant, str):
            self._empty(204, {"X-Roost-Feed": grant})
            return
        self._send_piece(feed, grant)

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode("latin-1", "replace"), f"Bearer {token}".encode())

    def _send_piece(self, feed: _Feed, piece: int) -> None:
        extents = feed.source.extents(piece)
        length = sum(n for _, _, n in extents)
        with contextlib.ExitStack() as files:
            try:
                opened = [(files.enter_context(open(path, "rb")), at, n) for path, at, n in extents]
            except OSError:
                self._empty(503)
                return
            with self.server.lock:
                intact = all(
                    feed.check(path, f)
                    for (path, _, _), (f, _, _) in zip(extents, opened, strict=True)
                )
            if not intact:  # check() says why in feed.broken
                self._empty(503, {FEED_ERROR: str(feed.broken)})
                return
            with _corked(self.connection):
                # The head is as short as HTTP allows and leaves in the segments
                # of the piece itself (corked): the origin's link is the deploy's
                # bottleneck, and a head of its own cost ~2% of it (bench/NOTES.md).
                self.wfile.write(
                    f"HTTP/1.1 200 OK\r\nX-Roost-Piece: {piece}\r\n"
                    f"Content-Length: {length}\r\n\r\n".encode()
                )
                # Counted before it leaves, corrected if it does not all leave: a
                # client that has read the piece never sees a count without it.
                with self.server.lock:
                    feed.bytes_sent += length
                sent = 0
                try:
                    for f, at, n in opened:
                        sent += self._send_range(f, at, n)
                except OSError:
                    pass
                finally:
                    if sent < length:
                        with self.server.lock:
                            feed.bytes_sent -= length - sent
                if sent < length:
                    self.close_connection = True

    def _send_range(self, f: BinaryIO, start: int, length: int) -> int:
        """``length`` bytes of ``f`` from ``start`` (fewer if it ends early),
        within the feed's rate limit; ``OSError`` from the connection."""
        throttle = self.server.throttle
        if throttle is None:
            return self.connection.sendfile(f, offset=start, count=length)
        sent = 0
        while sent < length:
            n = min(16384, length - sent)
            throttle.take(n)
            got = self.connection.sendfile(f, offset=start + sent, count=n)
            if not got:
                break
            sent += got
        return sent

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


@contextlib.contextmanager
def _corked(sock: socket.socket) -> Iterator[None]:
    """Hold back partial segments until the block ends (Linux TCP_CORK)."""
    cork = getattr(socket, "TCP_CORK", None)
    if cork is None:
        yield
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, cork, 0)


_RANGE = re.compile(r"(\d{1,9})(?:-(\d{1,9}))?", re.ASCII)


def _got(query: str, num_pieces: int, name: str = "got") -> list[int]:
    """The pieces a ``got=`` (or ``lack=``) list names, sorted, each once:
    ``i`` or ``i-j`` (inclusive), comma separated; out-of-range and
    malformed parts are ignored. The work is bounded by the request's length
    and the piece count, however the ranges overlap."""
    spans: list[tuple[int, int]] = []
    for key, value in urllib.parse.parse_qsl(query):
        if key != name:
            continue
        for part in value.split(","):
            found = _RANGE.fullmatch(part)
            if found is None:
                continue
            first = int(found.group(1))
            last = min(int(found.group(2) or first), num_pieces - 1)
            if first <= last:
                spans.append((first, last))
    out: list[int] = []
    for first, last in sorted(spans):
        start = max(first, out[-1] + 1) if out else first
        out.extend(range(start, last + 1))
    return out


class _Server(BoundedHTTPServer):
    def __init__(
        self, address: tuple[str, int], rate_limit: int, limits: ServerLimits, token: str | None
    ):
        self.feeds: dict[str, _Feed] = {}
        self.token = token
        self.lock = threading.Lock()
        self.throttle = TokenBucket(rate_limit, burst_seconds=0.125) if rate_limit > 0 else None
        super().__init__(address, _Handler, limits)


class FeedServer:
    """The origin's feed, in a background thread. ``start()`` binds (port 0
    allowed; ``.port`` is the bound one) and raises ``UsageError`` if the
    address cannot be bound. With a ``token``, every request must carry it
    (``Authorization: Bearer TOKEN``; the client takes it from the feed URL's
    ``?token=``, which :meth:`url` gives): others are answered 403."""

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int = 0,
        *,
        rate_limit: int = 0,
        idle_timeout: float = 120.0,
        reassign_after: float = 3.0,
        token: str | None = None,
    ):
        if token is not None and not valid_token(token):
            raise UsageError("feed token must be 1-200 printable ASCII characters, no spaces")
        self.token = token
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
            self._server = _Server((self.bind, self._port), self._rate_limit, limits, self.token)
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
        query = f"?token={urllib.parse.quote(self.token, safe='')}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"

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

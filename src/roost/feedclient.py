"""The peer's side of the origin's feed (roost.feed): :class:`FeedClient`
pulls the pieces the origin hands this peer and gives them to libtorrent,
which relays them to the swarm.

A feed that cannot be reached never stops a download: every failure
(no connection, no answer within ``timeout``, an answer that is not the
feed's) is counted and retried with backoff, and once requests have failed
with none answered for ``unreachable_after`` seconds,
:meth:`FeedClient.unreachable` says why, so that its peer can go on over
BitTorrent alone (roost.peer: it stops announcing ``role=feed``, which
keeps the origin's seeder from it).

Also the feed's wire vocabulary, shared with the server: the path prefix,
the ``X-Roost-Feed`` states and the ``got=``/``lack=`` piece ranges. A
module of its own so that a peer, which starts by the hundred at once,
imports neither ``http.server`` nor the origin's code.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from roost.errors import UsageError
from roost.limits import TokenBucket

API = "/feed/v1"
WAIT = "wait"
DONE = "done"
#: this peer was handed well over its share: others first, ask again soon
LATER = "later"
#: seconds between two attempts on a feed that fails, at most
MAX_BACKOFF = 5.0
#: the header of a feed that stopped for good (its payload changed): why
FEED_ERROR = "X-Roost-Feed-Error"


@dataclass
class FeedCounters:
    pieces: int = 0  # pieces received from the feed
    bytes: int = 0
    repairs: int = 0
    errors: int = 0
    last_error: str | None = None


def parse_feed_url(url: str) -> urllib.parse.SplitResult:
    """``url`` split; ``UsageError`` unless it is ``http://HOST[:PORT]/``,
    with at most a ``?token=`` (the feed's, ``roost seed --feed-token``)."""
    parsed = urllib.parse.urlsplit(url)
    try:
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parsed = parsed._replace(scheme="")
    if parsed.scheme != "http" or not parsed.hostname:
        raise UsageError(f"feed URL must be http://HOST:PORT/, not {shown_feed_url(url)!r}")
    query = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
    if parsed.query and (len(query) != 1 or query[0][0] != "token" or not valid_token(query[0][1])):
        raise UsageError(
            f"feed URL {shown_feed_url(url)!r}: its query may only be ?token=TOKEN"
            " (printable ASCII, no spaces)"
        )
    return parsed


def feed_token(parsed: urllib.parse.SplitResult) -> str | None:
    """The token a feed URL (parsed) carries, or None."""
    query = dict(urllib.parse.parse_qsl(parsed.query))
    return query.get("token") or None


def shown_feed_url(url: str) -> str:
    """A feed URL as it may be shown and logged: its token left out."""
    base, sep, _ = url.partition("?")
    return f"{base}?token=..." if sep else url


def valid_token(token: str) -> bool:
    """A feed token is 1-200 printable ASCII characters, no spaces (it
    travels in a header, ``Authorization: Bearer TOKEN``)."""
    return 0 < len(token) <= 200 and token.isascii() and token.isprintable() and " " not in token


class FeedClient:
    """Pulls pieces from an origin's feed into the engine, on worker threads.

    ``add_piece(index, data)`` and ``orphans()`` are the engine's (both safe
    to call from these threads); ``orphans()`` lists the pieces this peer
    lacks that no connected peer has and that are not being downloaded;
    ``alone()`` (the engine's too) whether it has no swarm at all, so that
    its repairs need not wait for one. Errors talking to the feed are
    counted and retried with backoff, never raised: the swarm (and the
    origin's seeder) may still deliver; :meth:`unreachable` says when the
    feed has failed for ``unreachable_after`` seconds.
    """

    def __init__(
        self,
        url: str,
        info_hash: str,
        *,
        add_piece: Callable[[int, bytes], None],
        orphans: Callable[[], Sequence[int]],
        lacking: Callable[[], Sequence[int]] | None = None,
        alone: Callable[[], bool] | None = None,
        complete: Callable[[], int] | None = None,
        ready: Callable[[], bool] | None = None,
        connections: int = 1,
        depth: int = 2,
        repair_after: float = 3.0,
        timeout: float = 10.0,
        unreachable_after: float = 5.0,
        download_limit: int = 0,
        have: Sequence[int] = (),
    ):
        """``have``: pieces this peer holds already (pre-filled from an
        earlier release); they are confirmed to the feed first, so it never
        sends them, to anyone: the peers that hold them serve them.
        ``complete()``: the torrent's piece count once this peer holds every
        piece, else 0 (the engine's); a peer that stops pulling with every
        piece says so, so that the feed sends its pieces to nobody else.
        ``ready()``: whether the engine can take pieces yet (libtorrent drops
        those added while it checks the torrent); nothing is asked before.
        ``timeout``: a connection not made, or an answer whose next byte
        does not come, within it is a failure (the feed answers every ask
        at once, with a piece or a ``204``)."""
        parsed = parse_feed_url(url)
        assert parsed.hostname is not None
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.token = feed_token(parsed)
        self.base = f"{parsed.path.rstrip('/')}{API}/{info_hash}"
        self.add_piece = add_piece
        self.orphans = orphans
        self.lacking = lacking
        self.alone = alone
        self.complete = complete
        self.ready = ready
        self._tail = False  # the feed has handed out every piece: say what we lack
        self._fed: set[int] = set()  # pieces the feed gave us (lacking until hashed)
        self.connections = connections
        self.depth = depth
        self.repair_after = repair_after
        self.timeout = timeout
        self.unreachable_after = unreachable_after
        self.counters = FeedCounters()
        # Reachability: when the feed last answered (or the client started),
        # whether its latest request failed (either thread's) and since when
        # it has been failing (a timeout: since the silence began).
        self._answered_at = time.monotonic()
        self._failing = False
        self._failing_since = 0.0
        self._throttle = (
            TokenBucket(download_limit, burst_seconds=0.125) if download_limit > 0 else None
        )
        self._stop = threading.Event()
        self._done = threading.Event()
        self._broken: str | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._have = _chunks(piece_ranges(sorted(have)), 4000)

    def start(self) -> FeedClient:
        self._answered_at = time.monotonic()
        for k in range(self.connections):
            t = threading.Thread(target=self._pull, name=f"roost-feed-{k}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._repair, name="roost-feed-repair", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        pieces = self.complete() if self.complete is not None and not self._done.is_set() else 0
        if pieces and not self._failing:  # a feed that fails would only make the install wait
            self._confirm_all(pieces)
        self._stop.set()
        for t in self._threads:
            t.join(2)

    def _connect(self, timeout: float | None = None) -> _Pipe:
        return _Pipe(self.host, self.port, self.timeout if timeout is None else timeout, self.token)

    def unreachable(self) -> str | None:
        """Why this peer cannot count on the feed, or None: its requests
        fail (no connection, no answer, not a feed for this torrent) and
        none was answered for ``unreachable_after`` seconds (a request that
        timed out counts its ``timeout`` of silence). The client goes on
        trying; this answers None again once the feed answers."""
        with self._lock:
            if not self._failing or self._done.is_set():
                return None
            if time.monotonic() - self._failing_since < self.unreachable_after:
                return None
            return self.counters.last_error or "no answer"

    def broken(self) -> str | None:
        """Why the feed stopped for good (it said so: its payload changed
        since seeding began, so its pieces are not the release's), or None.
        The client has stopped then; its peer cannot finish from that origin."""
        with self._lock:
            return self._broken

    def _broken_by(self, headers: dict[str, str]) -> bool:
        reason = headers.get(FEED_ERROR.lower())
        if reason is None:
            return False
        with self._lock:
            self._broken = reason[:300]
        self._stop.set()
        return True

    def _answered(self) -> None:
        with self._lock:
            self._answered_at = time.monotonic()
            self._failing = False

    def _failed(self, exc: BaseException) -> None:
        silent = self.timeout if isinstance(exc, TimeoutError) else 0.0
        with self._lock:
            self.counters.errors += 1
            self.counters.last_error = _reason(exc, self.timeout)
            if not self._failing:  # a connection lost after a long wait is not a long failure
                self._failing_since = max(self._answered_at, time.monotonic() - silent)
            self._failing = True

    def was_fed(self, piece: int) -> bool:
        """Whether the feed gave this peer ``piece`` (so a hash failure of it
        is the origin's)."""
        with self._lock:
            return piece in self._fed

    def _received(self, piece: int, data: bytes, *, repair: bool = False) -> None:
        if self._throttle is not None:
            self._throttle.take(len(data))
        self.add_piece(piece, data)
        with self._lock:
            self._fed.add(piece)
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
                    self._wait_ready()
                while pipe.inflight < self.depth:
                    pipe.send(f"{self.base}/next{self._query(got)}")
                    got = []
                status, headers, body = pipe.read()
                if self._broken_by(headers):
                    break
                if status not in (200, 204):  # not a feed for this torrent (404), or busy
                    raise _NotTheFeed(f"it answered HTTP {status}{_said(headers, body)}")
                if status == 200:  # a piece: a bad one is the feed's failure, as a 404 is
                    piece = _piece_number(headers.get("x-roost-piece", ""))
                    self._received(piece, body)
                    got.append(piece)
                backoff = 0.2
            except (OSError, ValueError) as exc:
                self._failed(exc)
                if pipe is not None:
                    pipe.close()
                    pipe = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            self._answered()
            if status == 200:
                continue  # a piece, handed over above
            state = headers.get("x-roost-feed", "")
            if state == LATER:
                self._stop.wait(0.05)
            elif not self._tail and self.lacking is not None:
                self._tail = True  # every piece is out: ask again, saying what we lack
            elif state == DONE:
                self._done.set()
            else:
                self._stop.wait(0.2)
        if pipe is not None:
            if got:  # what we received since the last ask: or it is sent again
                with contextlib.suppress(OSError, ValueError):
                    pipe.send(f"{self.base}/got?got={','.join(map(str, got))}")
                    while pipe.inflight:
                        pipe.read()
            pipe.close()

    def _wait_ready(self) -> None:
        """Until the engine can take pieces (or we are stopped): a piece
        handed over before then would be lost, and the feed would count it
        as sent."""
        while self.ready is not None and not self.ready():
            if self._stop.wait(0.01):
                return

    def _confirm_all(self, pieces: int) -> None:
        """This peer holds every piece (the swarm gave it what the feed had
        not): say so on a connection of its own. Else the pieces still on
        their way to it on the pull's connection (asked for, not arrived)
        would be handed to another peer as the connection closes, and those
        never sent would still be sent; on the pull's connection the word
        would wait behind them. Before the pull stops: a connection of its
        own answers at once."""
        with contextlib.suppress(OSError, ValueError):
            pipe = self._connect(min(self.timeout, 2.0))  # the install waits
            try:
                pipe.send(f"{self.base}/got?got=0-{pieces - 1}")
                pipe.read()
            finally:
                pipe.close()

    def _query(self, got: list[int]) -> str:
        parts = [f"got={','.join(map(str, got))}"] if got else []
        if self._tail and self.lacking is not None:
            missing = self.lacking()  # the engine's, not under our lock
            with self._lock:
                lack = [p for p in missing if p not in self._fed]
            if lack:
                parts.append(f"lack={_chunks(piece_ranges(lack), 2000)[0]}")
        return f"?{'&'.join(parts)}" if parts else ""

    def _confirm_have(self, pipe: _Pipe) -> None:
        with self._lock:
            chunks, self._have = self._have, []
        for chunk in chunks:
            pipe.send(f"{self.base}/got?got={chunk}")
            pipe.read()

    def _repair(self) -> None:
        """After the feed is done: fetch by index what nobody can give us.

        A piece is due once it stayed an orphan ``repair_after`` seconds
        (its holder may be a peer we have not connected to yet), or at once
        when ``alone()`` says this peer has no swarm at all. Requests are
        pipelined ``depth`` deep, as the asks for the next piece are."""
        first_seen: dict[int, float] = {}
        pipe: _Pipe | None = None
        backoff, retry_at = 0.5, 0.0
        while not self._stop.wait(0.5):
            if not self._done.is_set() or time.monotonic() < retry_at:
                continue
            now = time.monotonic()
            orphans = set(self.orphans())
            first_seen = {p: first_seen.get(p, now) for p in orphans}
            alone = self.alone is not None and bool(orphans) and self.alone()
            due = deque(
                sorted(p for p, t in first_seen.items() if alone or now - t >= self.repair_after)
            )
            asked: deque[int] = deque()
            while (due or asked) and not self._stop.is_set():
                try:
                    if pipe is None:
                        pipe = self._connect()
                    while due and pipe.inflight < self.depth:
                        asked.append(due.popleft())
                        pipe.send(f"{self.base}/piece/{asked[-1]}")
                    status, headers, body = pipe.read()
                except (OSError, ValueError) as exc:
                    self._failed(exc)
                    if pipe is not None:
                        pipe.close()
                        pipe = None
                    retry_at = time.monotonic() + backoff
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    break
                if self._broken_by(headers):
                    break
                backoff = 0.5
                piece = asked.popleft()
                if status == 200:
                    self._answered()
                    self._received(piece, body, repair=True)
                    first_seen.pop(piece, None)
                else:
                    self._failed(_NotTheFeed(f"it answered HTTP {status} for piece {piece}"))
        if pipe is not None:
            pipe.close()


class _NotTheFeed(ValueError):
    """An HTTP answer that is not the feed's (a 404: no feed for this
    torrent there; a 503: the feed is full)."""


def _said(headers: dict[str, str], body: bytes) -> str:
    """A refusal's one-line text, as ``: TEXT`` (the feed's 403 names the
    token), or nothing."""
    if not headers.get("content-type", "").startswith("text/plain") or len(body) > 200:
        return ""
    text = re.sub(r"^\d{3} ", "", body.decode("utf-8", "replace").strip())  # "403 ..."
    return f": {text}" if text and "\n" not in text else ""


def _reason(exc: BaseException, timeout: float) -> str:
    """What went wrong talking to the feed, in a few words."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]  # "connection refused"
    return str(exc) or type(exc).__name__


class _Pipe:
    """One keep-alive HTTP/1.1 connection whose GETs are pipelined: sent
    before the answers to earlier ones are read (RFC 9112 §9.3.2; the feed's
    answers come back in order). Raises ``OSError`` (the network) or
    ``ValueError`` (an answer that is not HTTP)."""

    MAX_BODY = 64 * 1024 * 1024

    def __init__(self, host: str, port: int, timeout: float, token: str | None = None):
        self.host = host
        self.auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb", buffering=256 * 1024)
        self.inflight = 0

    def send(self, path: str) -> None:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.auth}\r\n".encode())
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


def _piece_number(text: str) -> int:
    """``X-Roost-Piece``'s index; ``ValueError`` unless plain ASCII digits."""
    if not (text.isascii() and text.isdigit() and len(text) < 10):
        raise ValueError(f"the feed sent a piece numbered {text[:20]!r}")
    return int(text)


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

"""The tracker's HTTP server: asyncio, no framework, one event loop.

Theory of operation
-------------------
Each TCP connection is a ``Connection`` (``http.py``: the framing, the
pipelining, the deferred /stats.json). Each complete request it reads is
routed here, synchronously, and its response written at once: the announce
path is parse query -> update the ``Registry`` -> pick peers (``handout``)
-> render bencode, with no awaits, no threads and no per-request
allocations beyond the response. All swarm state belongs to the loop's
thread; other threads go through ``TrackerHandle`` (``thread.py``), which
hops onto the loop.

Routes, all in ``ROUTES`` (path -> route, also the request counter's
label) and dispatched by ``handle``: ``/announce`` and ``/scrape`` (BEP
3/23/7/48); ``/stats.json``, ``/metrics`` (``roost.tracker.stats``), ``/``
and ``/index.html`` (``roost.tracker.web``: one self-contained page, its
assets inlined, so there is no ``/static/``); any other path is a 404. The
status routes' modules are imported on first use and limited to
``config.stats_allow`` networks when given (others get 403). The server is
given the ``Registry`` (swarm.py) it serves: ``run_tracker_in_thread`` and
``roost tracker`` build it.

Failures: a malformed request gets its 4xx status and a bencoded
``failure reason`` (then the connection closes, since the stream can no longer
be trusted); a refused announce (token, allow-list) gets 200 and a failure
reason, as BitTorrent clients expect; an unexpected exception is logged with
its traceback and answered 500, and the server keeps serving.

Caps: at most ``config.max_connections`` open connections (fewer if the
open-file limit, raised towards its hard limit at start, is lower): a new
one beyond that closes the connection that has been quiet longest, so
accepting never stops. The sweep closes connections quiet for
``idle_timeout`` and those whose request head has not arrived in full
within ``request_timeout`` (so a head trickled in a byte at a time, which
is never idle, is cut too). Swarms of
unregistered info-hashes are capped by ``config.max_swarms`` (swarm.py).

A periodic sweep expires silent peers, closes idle and slow connections
and saves the state file (also saved on ``stop()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import resource
import time
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from roost.errors import Refused, TrackerError
from roost.tracker import protocol as proto
from roost.tracker.config import TrackerConfig, parse_network
from roost.tracker.http import Connection
from roost.tracker.snapshot import Snapshot, StatusCache
from roost.tracker.store import load_state, restore_state, save_state
from roost.tracker.swarm import Registry

__all__ = [
    "ROUTES",
    "TrackerConfig",
    "TrackerServer",
    "new_event_loop",
    "parse_info_hash",
    "run_loop",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
_monotonic = time.monotonic

_BENCODE = "text/plain"
_JSON = "application/json"
_METRICS = "text/plain; version=0.0.4; charset=utf-8"
_HTML = "text/html; charset=utf-8"
#: Every path the tracker serves and its route; any other path is a 404 ("other").
ROUTES = {
    "/announce": "announce",
    "/scrape": "scrape",
    "/stats.json": "stats",
    "/metrics": "metrics",
    "/": "page",
    "/index.html": "page",
}
_STATUS_ROUTES = frozenset(("stats", "metrics", "page"))  # stats_allow applies
_OK_KEEP = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
_OK_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
    b"Connection: close\r\n\r\n"
)
_STATUS_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))
_BACKLOG = 1024
_SPARE_FILES = 32  # open files kept for the listener, the state file, logging


def raise_open_files(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (at most the hard limit);
    return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return wanted if soft == resource.RLIM_INFINITY else soft


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when installed (``pip install roost[fast]``), else asyncio's.

    ``ROOST_EVENT_LOOP=asyncio`` forces asyncio's loop (to compare, or to
    rule uvloop out). uvloop roughly halves the per-request cost of the
    event loop and of the socket calls around each announce.
    """
    if os.environ.get("ROOST_EVENT_LOOP", "") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return cast(asyncio.AbstractEventLoop, uvloop.new_event_loop())
    return asyncio.new_event_loop()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on ``new_event_loop()``'s loop."""
    loop = new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def parse_info_hash(info_hash_hex: str) -> bytes:
    """40 hex digits -> 20 bytes; raise ``TrackerError`` otherwise."""
    try:
        raw = bytes.fromhex(info_hash_hex.strip())
    except ValueError:
        raw = b""
    if len(raw) != 20:
        raise TrackerError(f"info-hash {info_hash_hex!r} is not 40 hex digits")
    return raw


class TrackerServer:
    """The tracker: ``await start()``, serve, ``await stop()``.

    ``registry``: the swarms to serve (swarm.py), built for ``config``
    (``Registry(config, now)`` for an empty one). Raises ``TrackerError``
    when ``registry`` was built for another config.
    """

    def __init__(self, config: TrackerConfig, registry: Registry, *, clock: Any = time.time):
        if registry.config != config:
            raise TrackerError("the registry was built for another tracker config")
        self.config = config
        self._clock = clock
        self.registry = registry
        self._server: asyncio.base_events.Server | None = None
        self.conns: set[Connection] = set()  # open, for the sweep and stop()
        self._sweeper: asyncio.Task[None] | None = None
        self._dirty = False
        self._last_save = 0.0
        self._stats_nets = [
            parse_network(c, "stats-allow network") for c in self.config.stats_allow
        ]
        self._stats_ok: dict[str, bool] = {}
        self._stats_cache = StatusCache(self.config.stats_ttl)
        self._metrics_cache = StatusCache(self.config.stats_ttl)
        self.port = 0
        # config.max_connections, lowered at start() to what open files allow
        self.max_connections = self.config.max_connections

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Load the state file, bind, start sweeping. Raises ``TrackerError``."""
        cfg = self.config
        if cfg.state_file is not None:
            data = load_state(cfg.state_file)
            if data is not None:
                n = restore_state(self.registry, data, cfg.state_file)
                log.info(
                    "restored %d swarms, %d peers from %s",
                    len(self.registry.swarms),
                    n,
                    cfg.state_file,
                )
            # Written once now: a state file that cannot be written is refused
            # at the start, not found out when the tracker stops.
            self.save()
        files = raise_open_files(cfg.max_connections + _SPARE_FILES)
        self.max_connections = max(1, min(cfg.max_connections, files - _SPARE_FILES))
        if self.max_connections < cfg.max_connections:
            log.warning(
                "open-file limit %d: serving at most %d connections", files, self.max_connections
            )
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: Connection(self), cfg.bind, cfg.port, reuse_address=True, backlog=_BACKLOG
            )
        except OSError as exc:
            raise TrackerError(
                f"cannot listen on {cfg.bind}:{cfg.port}: {exc.strerror or exc}"
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        self._last_save = self._clock()
        self._sweeper = asyncio.create_task(self._sweep_forever())
        log.info("tracker listening on %s", self.announce_url)

    async def stop(self) -> None:
        """Stop serving, close connections, save the state file."""
        self._stats_cache.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            for conn in list(self.conns):
                if conn.transport is not None:
                    conn.transport.close()
            await self._server.wait_closed()
            self._server = None
        self.save()

    async def __aenter__(self) -> TrackerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def status_builds(self) -> dict[str, int]:
        """How many times /stats.json and /metrics were rendered (``snapshot.py``)."""
        return {"stats": self._stats_cache.builds, "metrics": self._metrics_cache.builds}

    @property
    def announce_url(self) -> str:
        host = self.config.announce_host or self.config.bind
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/announce"

    def announce_url_with_token(self, token: str | None) -> str:
        return f"{self.announce_url}?token={token}" if token else self.announce_url

    def allow(
        self,
        info_hash_hex: str,
        tag: str | None = None,
        token: str | None = None,
        size: int | None = None,
    ) -> None:
        """Register an info-hash (allow-list) with its tag, token and size."""
        if token is not None and not (token.isascii() and token.isprintable() and token):
            raise TrackerError("token must be non-empty printable ASCII")
        raw = parse_info_hash(info_hash_hex)
        self.registry.allow(raw, self._clock(), tag=tag, token=token, size=size)
        self._dirty = True

    def save(self) -> None:
        """Write the state file now (if one is configured)."""
        if self.config.state_file is not None:
            now = self._clock()
            save_state(self.registry, self.config.state_file, now)
            self._last_save = now
            self._dirty = False

    async def _sweep_forever(self) -> None:
        cfg = self.config
        period = max(0.05, min(1.0, cfg.peer_timeout / 4))
        while True:
            await asyncio.sleep(period)
            try:
                now = self._clock()
                if self.registry.expire(now):
                    self._dirty = True
                self._close_stale(time.monotonic())
                if self._dirty and now - self._last_save >= cfg.save_every:
                    self.save()
            except TrackerError as exc:
                log.error("%s", exc)
                self._last_save = self._clock()
            except Exception:
                log.exception("tracker sweep failed")

    def _close_stale(self, now: float) -> None:
        """Close connections idle for ``idle_timeout`` or slower than
        ``request_timeout`` to send a request head."""
        idle_before = now - self.config.idle_timeout
        slow_before = now - self.config.request_timeout
        for conn in list(self.conns):
            since = conn.head_since
            if conn.last_active < idle_before or (since is not None and since < slow_before):
                self.conns.discard(conn)
                if conn.transport is not None:
                    conn.transport.abort()

    # -- requests ------------------------------------------------------------

    def handle(
        self,
        req: proto.Request,
        ip: str,
        t0: float | None = None,
        *,
        built: Snapshot | None = None,
    ) -> tuple[bytes, bool]:
        """Route one request; return the response bytes and whether to keep alive.

        ``t0``: when its bytes arrived (``time.monotonic()``), for the latency
        histogram; now when not given. ``built``: the /stats.json snapshot the
        request waited for (``deferred``); without it a stale snapshot is
        rebuilt here, synchronously.
        """
        if t0 is None:
            t0 = _monotonic()
        path = req.path
        route = ROUTES.get(path, "other")
        keep = req.keep_alive
        counters = self.registry.counters
        try:
            if route == "announce":
                status, body, ctype = self._announce(req.query, ip)
                if status == 200 and req.method == "GET":  # the hot path: a prebuilt head
                    response = (
                        _OK_KEEP if keep else _OK_CLOSE
                    ) % len(body) + body  # fmt: skip
                    counters.request(route, _monotonic() - t0)
                    return response, keep
            elif route == "scrape":
                status, body, ctype = self._scrape(req.query)
            elif route == "other":
                status, ctype = 404, _BENCODE
                body = proto.render_failure(f"no such path {path[:100]}")
            else:
                status, body, ctype = self._status(route, ip, built)
        except Exception:
            log.exception("tracker failed on %s %s", req.method, req.path)
            status, body, ctype = 500, proto.render_failure("internal tracker error"), _BENCODE
            keep = False
        if status >= 400 and route in ("announce", "scrape"):
            keep = False
        response = proto.http_response(
            status,
            body,
            content_type=ctype,
            keep_alive=keep,
            head_only=req.method == "HEAD",
            extra_headers=_STATUS_HEADERS if route in _STATUS_ROUTES else (),
        )
        counters.request(route, _monotonic() - t0)
        return response, keep

    def _announce(self, query: bytes, ip: str) -> tuple[int, bytes, str]:
        counters = self.registry.counters
        try:
            a = proto.parse_announce(query)
        except proto.ProtocolError as exc:
            counters.announce("invalid", "malformed")
            return exc.status, proto.render_failure(str(exc)), _BENCODE
        try:
            peers, complete, incomplete = self.registry.announce(a, ip, self._clock())
        except Refused as exc:
            counters.announce(a.event, "refused")
            return 200, proto.render_failure(str(exc)), _BENCODE
        except proto.ProtocolError as exc:
            counters.announce(a.event, "malformed")
            return exc.status, proto.render_failure(str(exc)), _BENCODE
        self._dirty = True
        counters.announce(a.event, "ok")
        cfg = self.config
        body = proto.render_announce(
            peers,
            complete=complete,
            incomplete=incomplete,
            interval=cfg.interval,
            min_interval=cfg.min_interval,
            compact=a.compact,
            no_peer_id=a.no_peer_id,
        )
        return 200, body, _BENCODE

    def _scrape(self, query: bytes) -> tuple[int, bytes, str]:
        counters = self.registry.counters
        try:
            hashes, token = proto.parse_scrape(query)
            files = self.registry.scrape(hashes, token)
        except Refused as exc:
            counters.scrape("refused")
            return 200, proto.render_failure(str(exc)), _BENCODE
        except proto.ProtocolError as exc:
            counters.scrape("malformed")
            return exc.status, proto.render_failure(str(exc)), _BENCODE
        counters.scrape("ok")
        return 200, proto.render_scrape(files), _BENCODE

    def _stats_allowed(self, ip: str) -> bool:
        if not self._stats_nets:
            return True
        ok = self._stats_ok.get(ip)
        if ok is None:
            try:
                addr = ipaddress.ip_address(ip.removeprefix("::ffff:") if "." in ip else ip)
            except ValueError:
                ok = False
            else:
                ok = any(addr in net for net in self._stats_nets)
            self._stats_ok[ip] = ok
        return ok

    def deferred(self, req: proto.Request, ip: str) -> asyncio.Task[Snapshot] | None:
        """The build a /stats.json request must wait for, or None to answer it now.

        None for other paths, a fresh snapshot or a refused address; else the
        running build (``snapshot.StatusCache``).
        """
        if req.path != "/stats.json" or self._stats_cache.fresh() is not None:
            return None
        if not self._stats_allowed(ip):
            return None
        from roost.tracker.stats import stats_json_steps  # see _status

        registry, clock = self.registry, self._clock
        return self._stats_cache.start(lambda: stats_json_steps(registry, clock()))

    def _status(self, route: str, ip: str, built: Snapshot | None) -> tuple[int, bytes, str]:
        """The status routes: ``stats`` (/stats.json), ``metrics`` (/metrics),
        ``page`` (/ and /index.html).

        Their modules are imported on first use, not with the server: stats.py
        brings prometheus_client, which a tracker nobody looks at never needs.
        """
        if not self._stats_allowed(ip):
            return 403, b"forbidden: this network may not read tracker status\n", "text/plain"
        registry, clock = self.registry, self._clock
        if route == "stats":
            from roost.tracker.stats import render_stats_json

            snap = built or self._stats_cache.build(lambda: render_stats_json(registry, clock()))
            return 200, snap.body, _JSON
        if route == "metrics":
            from roost.tracker.stats import render_metrics

            snap = self._metrics_cache.build(lambda: render_metrics(registry, clock()))
            return 200, snap.body, _METRICS
        from roost.tracker.web import render_page

        return 200, render_page(), _HTML

"""What the tracker knows, for people and for Prometheus: /stats.json, /metrics.

Theory of operation
-------------------
Everything here is a pure function of the tracker's ``Registry`` (see
``swarm.py`` for its read API) and the current time: nothing is counted on the
announce path by this module. The server keeps plain counters
(``registry.counters``) and peer records; at request time
``stats_json_steps`` writes them into the /stats.json document a few hundred
peers at a time (schema in docs/ARCHITECTURE.md; the same document as a
plain dict, the tests' oracle, is tests/tracker/oracles.py) and
``render_metrics`` exposes them through a prometheus-client ``Collector``
registered in a fresh ``CollectorRegistry`` (no global registry, so several
trackers in one process never mix).

* **Size** of a swarm: the size registered with ``allow(size=...)``; else the
  largest ``left + downloaded`` among its peers (a seeder that fetched
  everything tells its ``downloaded``; a peer that reused data beside it
  tells less than the size, so the largest wins). None when no peer tells.
  Stopped peers count too.
* **Progress** of a peer: ``1 - left / size`` clipped to 0..1 (None when the
  size is unknown).
* **Rates**: each peer's ``(downloaded - prev_downloaded) / (last_seen -
  prev_seen)`` between its last two announces (0 for a first announce, a
  counter that went backwards, a stopped peer, or a peer silent for more than
  two intervals); a swarm's rate is the sum over its peers.
* **Stalled**: a downloading peer whose ``left`` has not decreased for
  ``stall_after`` seconds (``last_progress`` is set by swarm.py).

Everything a peer sends (host labels, ...) is copied as data: JSON escapes it
and the web page never interprets it as markup.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import CollectorRegistry, exposition, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from roost import __version__

if TYPE_CHECKING:
    from roost.tracker.swarm import Peer, Registry, Swarm

__all__ = [
    "METRICS_CONTENT_TYPE",
    "STATS_CONTENT_TYPE",
    "TrackerCollector",
    "peer_progress",
    "peer_rates",
    "render_metrics",
    "render_stats_json",
    "stats_json_steps",
    "swarm_size",
    "tracker_head",
]

STATS_CONTENT_TYPE = "application/json"
STEP_PEERS = 500  # peer rows per step of ``stats_json_steps`` (a few ms)
METRICS_CONTENT_TYPE: str = getattr(
    exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST
)


# --------------------------------------------------------------------------
# /stats.json


def stall_after_of(registry: Registry, stall_after: float | None = None) -> float:
    """The stall threshold: the argument, else ``config.stall_after``."""
    return float(stall_after if stall_after is not None else registry.config.stall_after)


def swarm_size(swarm: Swarm) -> int | None:
    """The payload size in bytes as far as the tracker can tell (see module doc)."""
    if swarm.size is not None:
        return int(swarm.size)
    # A peer that reused an earlier release's data (or was pre-filled)
    # downloads only part of it, done or not: so the largest of all.
    best = max((p.left + p.downloaded for p in swarm.peers()), default=0)
    return int(best) if best > 0 else None


def peer_rates(peer: Peer, now: float, interval: float) -> tuple[float, float]:
    """(download, upload) bytes/s between the peer's last two announces."""
    if peer.state == "stopped" or now - peer.last_seen > 2 * interval + 1:
        return 0.0, 0.0
    dt = peer.last_seen - peer.prev_seen
    if dt <= 0:
        return 0.0, 0.0
    down = max(0, peer.downloaded - peer.prev_downloaded) / dt
    up = max(0, peer.uploaded - peer.prev_uploaded) / dt
    return down, up


def peer_progress(peer: Peer, size: int | None) -> float | None:
    """1.0 for a seeder, the fraction done when the size is known, else None."""
    if peer.left == 0:
        return 1.0
    if size:
        return round(min(1.0, max(0.0, 1.0 - peer.left / size)), 6)
    return None


def tracker_head(registry: Registry, now: float, stall: float) -> dict[str, Any]:
    """The document's ``tracker`` object."""
    return {
        "version": __version__,
        "started": registry.started,
        "now": now,
        "announces": registry.counters.total_announces,
        "interval": registry.config.interval,
        "stall_after": stall,
    }


def render_stats_json(registry: Registry, now: float, *, stall_after: float | None = None) -> bytes:
    """The /stats.json body: compact JSON of the registry at ``now``.

    ASCII only, and ``<``, ``>``, ``&`` escaped as ``\\u003c`` ...: peer labels can
    never read as markup, even to a browser sniffing the body. The same bytes as
    ``json.dumps`` of the plain document (tests/tracker/oracles.py) with those escapes,
    written by ``stats_json_steps`` run to the end.
    """
    steps = stats_json_steps(registry, now, stall_after=stall_after)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(bytes, done.value)


_encode_str = json.encoder.encode_basestring_ascii


def _js(text: str | None) -> str:
    """A JSON string (ASCII, markup characters escaped) or ``null``."""
    if text is None:
        return "null"
    out = _encode_str(text)
    if "<" in out or ">" in out or "&" in out:
        out = out.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return out


def _jnum(value: float | None) -> str:
    """A JSON number (as ``json.dumps`` writes it) or ``null``."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return json.dumps(value, allow_nan=False)


def _peer_row(
    peer: Peer, size: int | None, now: float, interval: float, is_stalled: bool
) -> tuple[str, float, float]:
    """A peer's JSON object and its two rates."""
    progress = peer_progress(peer, size)
    rate_down, rate_up = peer_rates(peer, now, interval)
    rate_down, rate_up = round(rate_down, 1), round(rate_up, 1)
    row = (
        f'{{"peer_id":"{peer.peer_id.hex()}","address":{_js(peer.ip)},'
        f'"port":{peer.port:d},"host":{_js(peer.host)},'
        f'"datacenter":{_js(peer.dc)},"rack":{_js(peer.rack)},'
        f'"left":{peer.left:d},"uploaded":{peer.uploaded:d},'
        f'"downloaded":{peer.downloaded:d},"progress":{_jnum(progress)},'
        f'"state":{_js(peer.state)},"first_seen":{_jnum(round(peer.first_seen, 3))},'
        f'"last_seen":{_jnum(round(peer.last_seen, 3))},'
        f'"last_progress":{_jnum(round(peer.last_progress, 3))},'
        f'"stalled":{"true" if is_stalled else "false"},'
        f'"rate_down":{_jnum(rate_down)},"rate_up":{_jnum(rate_up)}}}'
    )
    return row, rate_down, rate_up


def stats_json_steps(
    registry: Registry, now: float, *, stall_after: float | None = None, step: int = STEP_PEERS
) -> Generator[None, None, bytes]:
    """Write the /stats.json body a few hundred peers at a time.

    A generator: each ``next()`` does a few milliseconds of work (about
    ``step`` peer rows, or the sort keys of ``8 * step`` peers) and yields, so
    the server can serve announces between steps; its return value (the
    ``StopIteration`` value) is the body, byte for byte what
    ``render_stats_json`` documents. The swarms are listed at the start, and
    each swarm's peers (with their sort keys) when the swarm's turn comes; a
    peer's row is read when its step runs, so rows of one document may be a
    few milliseconds apart, and the swarm counts (seeders, leechers,
    completed) are read after the swarm's last row. ``now`` is the same for
    every row. One step is not divided: sorting a swarm's keys (C code, about
    2 ms per 10,000 peers, 5 ms if the order changed a lot).
    """
    cfg = registry.config
    interval = float(cfg.interval)
    stall = stall_after_of(registry, stall_after)
    live_for = 2 * interval + 1  # as in peer_rates
    head = tracker_head(registry, now, stall)
    out = [b'{"tracker":', _dumps(head).encode(), b',"swarms":[']
    swarms = sorted(registry.swarms.values(), key=lambda s: (s.tag or "", s.info_hash_hex))
    key_step = 8 * step
    for i, swarm in enumerate(swarms):
        peers = list(swarm.peers())
        # Sort keys as flat tuples (sorted in C, no key function); the index
        # keeps the swarm's own order among equal keys, as a stable sort would.
        keys: list[tuple[str, str, int, int]] = []
        for first in range(0, len(peers), key_step):
            keys += [
                (p.host or "", p.ip, p.port, j)
                for j, p in enumerate(peers[first : first + key_step], first)
            ]
            if len(peers) > key_step:
                yield
        keys.sort()
        size = swarm_size(swarm)
        chunks: list[bytes] = []
        rows: list[str] = []
        sum_down: float = 0  # an int, as sum() of no rows: "rate_down":0 for an empty swarm
        sum_up: float = 0
        stalled = 0
        for _, _, _, j in keys:
            peer = peers[j]
            state = peer.state
            is_stalled = state == "downloading" and now - peer.last_progress >= stall
            live = state != "stopped" and now - peer.last_seen <= live_for
            key = (size, is_stalled, live, state)
            cached = peer.status_row
            if cached is not None and cached[0] == key:
                _, row, rate_down, rate_up = cached
            else:
                row, rate_down, rate_up = _peer_row(peer, size, now, interval, is_stalled)
                peer.status_row = (key, row, rate_down, rate_up)
            rows.append(row)
            sum_down += rate_down
            sum_up += rate_up
            stalled += is_stalled
            if len(rows) >= step:
                chunks.append(",".join(rows).encode("ascii"))
                rows = []
                yield
        if rows:
            chunks.append(",".join(rows).encode("ascii"))
        summary = {
            "info_hash": swarm.info_hash_hex,
            "tag": swarm.tag,
            "seeders": swarm.num_seeders,
            "leechers": swarm.num_leechers,
            "completed": swarm.completed,
            "size": size,
            "rate_down": round(sum_down, 1),
            "rate_up": round(sum_up, 1),
            "stalled": stalled,
        }
        if i:
            out.append(b",")
        out += [_dumps(summary)[:-1].encode(), b',"peers":[']
        for k, chunk in enumerate(chunks):  # one copy of the rows, in the final join
            out += (b",", chunk) if k else (chunk,)
        out.append(b"]}")
    out.append(b"]}")
    return b"".join(out)


def _dumps(doc: dict[str, Any]) -> str:
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --------------------------------------------------------------------------
# /metrics


class TrackerCollector:
    """A prometheus-client collector reading a ``Registry`` at scrape time.

    Exposes (names per the Prometheus conventions: base units, ``_total`` for
    counters):

    * ``roost_tracker_announces_total{event,result}``
    * ``roost_tracker_scrapes_total{result}``
    * ``roost_tracker_requests_total{route}``
    * ``roost_tracker_request_seconds`` (histogram, every HTTP request)
    * ``roost_tracker_start_time_seconds``, ``roost_tracker_swarms``
    * ``roost_swarm_peers{info_hash,tag,state}`` (state: seeding,
      downloading, stopped)
    * ``roost_swarm_stalled_peers{info_hash,tag}``
    * ``roost_swarm_completed_total{info_hash,tag}``
    * ``roost_swarm_size_bytes{info_hash,tag}`` (when known)
    * ``roost_swarm_uploaded_bytes`` / ``roost_swarm_downloaded_bytes``
      ``{info_hash,tag}``: sums of what the swarm's current peers reported
      (gauges: a peer leaving takes its bytes with it)
    * ``roost_swarm_download_rate_bytes_per_second`` /
      ``roost_swarm_upload_rate_bytes_per_second`` ``{info_hash,tag}``
    """

    def __init__(self, registry: Registry, clock: Callable[[], float] | None = None) -> None:
        self._registry = registry
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        reg = self._registry
        counters = reg.counters
        now = self._clock() if self._clock is not None else time.time()
        interval = float(reg.config.interval)
        stall = stall_after_of(reg)

        announces = CounterMetricFamily(
            "roost_tracker_announces",
            "Announce requests by event and result.",
            labels=["event", "result"],
        )
        for (event, result), n in sorted(counters.announces.items()):
            announces.add_metric([event, result], n)
        yield announces

        scrapes = CounterMetricFamily(
            "roost_tracker_scrapes", "Scrape requests by result.", labels=["result"]
        )
        for result, n in sorted(counters.scrapes.items()):
            scrapes.add_metric([result], n)
        yield scrapes

        requests = CounterMetricFamily(
            "roost_tracker_requests", "HTTP requests by route.", labels=["route"]
        )
        for route, n in sorted(counters.requests.items()):
            requests.add_metric([route], n)
        yield requests

        buckets = []
        cumulative = 0
        for bound, n in zip(counters.LATENCY_BUCKETS, counters.latency_counts, strict=False):
            cumulative += n
            buckets.append((repr(float(bound)), cumulative))
        buckets.append(("+Inf", counters.latency_count))
        yield HistogramMetricFamily(
            "roost_tracker_request_seconds",
            "Time to answer an HTTP request, in seconds.",
            buckets=buckets,
            sum_value=counters.latency_sum,
        )

        yield GaugeMetricFamily(
            "roost_tracker_start_time_seconds",
            "When the tracker started, in seconds since the epoch.",
            value=reg.started,
        )
        yield GaugeMetricFamily(
            "roost_tracker_swarms", "Swarms the tracker knows.", value=len(reg.swarms)
        )

        labels = ["info_hash", "tag"]
        peers = GaugeMetricFamily(
            "roost_swarm_peers", "Peers in a swarm by state.", labels=[*labels, "state"]
        )
        stalled = GaugeMetricFamily(
            "roost_swarm_stalled_peers",
            "Downloading peers whose left has not decreased for stall_after seconds.",
            labels=labels,
        )
        completed = CounterMetricFamily(
            "roost_swarm_completed", "Peers that completed the download.", labels=labels
        )
        size = GaugeMetricFamily(
            "roost_swarm_size_bytes", "Payload size of a swarm, when known.", labels=labels
        )
        uploaded = GaugeMetricFamily(
            "roost_swarm_uploaded_bytes",
            "Sum of the bytes uploaded reported by a swarm's current peers.",
            labels=labels,
        )
        downloaded = GaugeMetricFamily(
            "roost_swarm_downloaded_bytes",
            "Sum of the bytes downloaded reported by a swarm's current peers.",
            labels=labels,
        )
        rate_down = GaugeMetricFamily(
            "roost_swarm_download_rate_bytes_per_second",
            "Download rate of a swarm from its peers' last two announces.",
            labels=labels,
        )
        rate_up = GaugeMetricFamily(
            "roost_swarm_upload_rate_bytes_per_second",
            "Upload rate of a swarm from its peers' last two announces.",
            labels=labels,
        )
        for swarm in reg.swarms.values():
            key = [swarm.info_hash_hex, swarm.tag or ""]
            peers.add_metric([*key, "seeding"], len(swarm.seeders))
            peers.add_metric([*key, "downloading"], len(swarm.leechers))
            peers.add_metric([*key, "stopped"], len(swarm.stopped))
            stalled.add_metric(
                key, sum(1 for p in swarm.leechers.values() if now - p.last_progress >= stall)
            )
            completed.add_metric(key, swarm.completed)
            known = swarm_size(swarm)
            if known is not None:
                size.add_metric(key, known)
            up = down = 0
            r_down = r_up = 0.0
            for p in swarm.peers():
                up += p.uploaded
                down += p.downloaded
                d, u = peer_rates(p, now, interval)
                r_down += d
                r_up += u
            uploaded.add_metric(key, up)
            downloaded.add_metric(key, down)
            rate_down.add_metric(key, r_down)
            rate_up.add_metric(key, r_up)
        yield from (peers, stalled, completed, size, uploaded, downloaded, rate_down, rate_up)


def render_metrics(registry: Registry, now: float | None = None) -> bytes:
    """The /metrics body (Prometheus text format 0.0.4) of ``registry``.

    Builds a private ``CollectorRegistry`` holding one ``TrackerCollector``;
    serve it with ``METRICS_CONTENT_TYPE``.
    """
    prom = CollectorRegistry(auto_describe=False)
    prom.register(TrackerCollector(registry, None if now is None else (lambda: now)))
    return generate_latest(prom)

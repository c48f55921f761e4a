"""/stats.json and /metrics: tables over a real Registry fed parsed announces
with a hand-driven clock, then a real tracker on 127.0.0.1:0 with HTTP
announces from simulated peers and a real libtorrent download."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from roost.tracker import TrackerConfig, TrackerHandle, run_tracker_in_thread
from roost.tracker.protocol import parse_announce
from roost.tracker.stats import (
    METRICS_CONTENT_TYPE,
    render_metrics,
    render_stats_json,
    stats_json_steps,
)
from roost.tracker.swarm import Registry
from tests.swarm_kit import info_hash, make_torrent, random_file
from tests.tracker.oracles import build_stats
from tests.tracker.stats_kit import IH, IH2, STATS_TTL, T0, query


def announce(reg: Registry, now: float, peer: bytes, left: int, **kw: Any) -> None:
    reg.announce(parse_announce(query(peer, left, **kw)), "198.18.0.9", now)


def peers_by_host(doc: dict[str, Any], swarm: int = 0) -> dict[str, dict[str, Any]]:
    return {p["host"]: p for p in doc["swarms"][swarm]["peers"]}


class Samples:
    """Every sample of a /metrics body: ``m("name", label=value)``."""

    def __init__(self, text: str) -> None:
        self._values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self._values[(s.name, frozenset(s.labels.items()))] = s.value

    def __call__(self, name: str, **labels: str) -> float:
        return self._values[(name, frozenset(labels.items()))]


def metrics(text: str) -> Samples:
    return Samples(text)


@pytest.fixture
def reg() -> Registry:
    return Registry(TrackerConfig(port=0, interval=5), T0)


# ------------------------------------------------------------- sans-IO tables


def test_progress_with_registered_size(reg: Registry) -> None:
    reg.allow(IH, T0, tag="v42", size=1000)
    announce(reg, T0, b"a", 1000, host="a", event="started")
    announce(reg, T0, b"b", 250, down=750, host="b", dc="dc1", rack="r2")
    announce(reg, T0, b"s", 0, host="s")
    doc = build_stats(reg, T0 + 1)
    swarm = doc["swarms"][0]
    assert (swarm["tag"], swarm["info_hash"], swarm["size"]) == ("v42", IH.hex(), 1000)
    assert (swarm["seeders"], swarm["leechers"], swarm["completed"]) == (1, 2, 0)
    peers = peers_by_host(doc)
    assert [peers[h]["progress"] for h in "abs"] == [0.0, 0.75, 1.0]
    assert [peers[h]["state"] for h in "abs"] == ["downloading", "downloading", "seeding"]
    b = peers["b"]
    assert (b["datacenter"], b["rack"]) == ("dc1", "r2")
    assert (b["address"], b["port"]) == ("198.18.0.9", 6881)
    assert b["peer_id"] == b"b".ljust(20, b"-").hex()
    assert (b["left"], b["downloaded"], b["uploaded"]) == (250, 750, 0)
    assert doc["tracker"]["announces"] == 0  # counted by the server, not the registry
    assert doc["tracker"]["now"] == T0 + 1 and doc["tracker"]["started"] == T0


@pytest.mark.parametrize(
    ("announces", "size"),
    [
        ([(b"s", 0, 0)], None),  # an origin seeder tells nothing
        ([(b"s", 0, 0), (b"x", 700, 300)], 1000),  # a leecher: left + downloaded
        ([(b"s", 0, 1024), (b"x", 700, 300)], 1024),  # a seeder that downloaded it all
        ([(b"x", 700, 300), (b"y", 900, 150)], 1050),  # the largest leecher estimate
        # a host that reused an earlier release fetched 16 KiB: not the size
        ([(b"r", 0, 16384), (b"x", 900_000, 100_000)], 1_000_000),
    ],
)
def test_size_inferred_when_not_registered(
    reg: Registry, announces: list[tuple[bytes, int, int]], size: int | None
) -> None:
    for pid, left, down in announces:
        announce(reg, T0, pid, left, down=down, host=pid.decode())
    doc = build_stats(reg, T0)
    assert doc["swarms"][0]["size"] == size
    if size is None:
        assert peers_by_host(doc)["s"]["progress"] == 1.0  # left == 0 is done anyway


def test_rates_from_successive_announces(reg: Registry) -> None:
    announce(reg, T0, b"a", 1000, host="a", event="started")
    doc = build_stats(reg, T0)
    assert peers_by_host(doc)["a"]["rate_down"] == 0.0  # first announce: no delta yet
    announce(reg, T0 + 2, b"a", 600, down=400, up=100, host="a")
    announce(reg, T0 + 2, b"b", 900, down=0, host="b")
    announce(reg, T0 + 4, b"b", 500, down=400, host="b")
    doc = build_stats(reg, T0 + 4)
    peers = peers_by_host(doc)
    assert (peers["a"]["rate_down"], peers["a"]["rate_up"]) == (200.0, 50.0)
    assert peers["b"]["rate_down"] == 200.0
    assert (doc["swarms"][0]["rate_down"], doc["swarms"][0]["rate_up"]) == (400.0, 50.0)
    # a counter going backwards (client restart) is not a negative rate
    announce(reg, T0 + 6, b"b", 500, down=10, host="b")
    assert peers_by_host(build_stats(reg, T0 + 6))["b"]["rate_down"] == 0.0
    # silent for more than two intervals: no longer counted as moving
    assert peers_by_host(build_stats(reg, T0 + 2 + 12))["a"]["rate_down"] == 0.0


@pytest.mark.parametrize(
    ("steps", "at", "stalled"),
    [
        ([(0, 1000), (10, 1000), (20, 1000)], 30, True),  # no decrease for 30 s
        ([(0, 1000), (10, 1000), (20, 900)], 30, False),  # moved 10 s ago
        ([(0, 1000), (29, 1000)], 29.5, False),  # not yet 30 s
        ([(0, 1000), (10, 0)], 100, False),  # seeding is never stalled
    ],
)
def test_stalled_after_no_left_decrease(
    reg: Registry, steps: list[tuple[float, int]], at: float, stalled: bool
) -> None:
    for dt, left in steps:
        announce(reg, T0 + dt, b"p", left, down=1000 - left, host="p")
    doc = build_stats(reg, T0 + at)
    assert doc["tracker"]["stall_after"] == 30.0
    assert peers_by_host(doc)["p"]["stalled"] is stalled
    assert doc["swarms"][0]["stalled"] == int(stalled)


def test_stall_after_argument_overrides_default(reg: Registry) -> None:
    announce(reg, T0, b"p", 1000, host="p")
    assert peers_by_host(build_stats(reg, T0 + 6, stall_after=5))["p"]["stalled"] is True
    assert peers_by_host(build_stats(reg, T0 + 6))["p"]["stalled"] is False


def test_stopped_peer_is_listed_with_no_rate(reg: Registry) -> None:
    announce(reg, T0, b"p", 1000, host="p")
    announce(reg, T0 + 1, b"p", 500, down=500, host="p", event="stopped")
    doc = build_stats(reg, T0 + 1)
    p = peers_by_host(doc)["p"]
    assert (p["state"], p["rate_down"], p["stalled"], p["progress"]) == ("stopped", 0.0, False, 0.5)
    assert (doc["swarms"][0]["seeders"], doc["swarms"][0]["leechers"]) == (0, 0)


def test_json_is_ascii_and_peer_labels_stay_data(reg: Registry) -> None:
    evil = '<img src=x onerror="alert(1)">'
    announce(reg, T0, b"p", 10, host=evil, rack="r\u00e9</script>")
    body = render_stats_json(reg, T0)
    assert body.isascii() and b"<" not in body and b">" not in body
    doc = json.loads(body)
    assert doc == build_stats(reg, T0)
    assert doc["swarms"][0]["peers"][0]["host"] == evil
    assert doc["swarms"][0]["peers"][0]["rack"] == "r\u00e9</script>"


def test_swarms_sorted_by_tag_peers_by_host(reg: Registry) -> None:
    reg.allow(IH2, T0, tag="a-first")
    reg.allow(IH, T0, tag="b-second")
    for host in ("zz", "aa", "mm"):
        announce(reg, T0, host.encode(), 5, host=host)
    doc = build_stats(reg, T0)
    assert [s["tag"] for s in doc["swarms"]] == ["a-first", "b-second"]
    assert [p["host"] for p in doc["swarms"][1]["peers"]] == ["aa", "mm", "zz"]
    assert doc["swarms"][0]["peers"] == [] and doc["swarms"][0]["size"] is None


def reference_json(reg: Registry, now: float) -> bytes:
    """/stats.json as it was written before stats_json_steps: json.dumps of the dict."""
    text = json.dumps(build_stats(reg, now), separators=(",", ":"), ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def test_stats_json_bytes_unchanged_as_peers_change(reg: Registry) -> None:
    """The stepped writer and its per-peer row cache give the old bytes, always."""
    reg.allow(IH2, T0, tag="v<1>&", size=4000)
    announce(reg, T0, b"o", 0, ih=IH2, host="origin", dc="dc1", rack="r1", event="started")
    for i in range(6):
        announce(reg, T0 + i * 0.25, b"w%d" % i, 4000, ih=IH2, host=f"w\u00e9-{i}", rack="r2")
    announce(reg, T0, b"x", 700, down=300, host=None)  # IH: inferred size, no labels
    announce(reg, T0, b"y", 0, down=1000, up=7, host="y</script>")
    checks = 0

    def check(now: float) -> None:
        nonlocal checks
        assert render_stats_json(reg, now) == reference_json(reg, now)
        checks += 1

    check(T0 + 1)
    check(T0 + 1)  # every row from the cache now
    # same clock value, new report: the row must not come from the cache
    announce(reg, T0 + 1.5, b"w1", 1000, down=3000, up=5, ih=IH2, host="renamed")
    announce(reg, T0 + 1.5, b"w1", 500, down=3500, up=9, ih=IH2, host="renamed-again")
    check(T0 + 1.5)
    assert b'"host":"renamed-again"' in render_stats_json(reg, T0 + 1.5)
    announce(reg, T0 + 2, b"w2", 0, down=4000, ih=IH2, event="completed")  # leecher -> seeder
    announce(reg, T0 + 2, b"w3", 4000, ih=IH2, event="stopped")
    announce(reg, T0 + 2, b"z", 0, down=5000)  # IH's inferred size grows: progress changes
    check(T0 + 2)
    check(T0 + 12.4)  # rates drop to 0 (silent > 2 intervals + 1 s) for some peers only
    check(T0 + 31.2)  # stalled from here on
    check(T0 + 31.2)
    reg.allow(IH, T0, size=9000)  # a registered size replaces the inferred one
    reg.expire(T0 + 16.5)  # every peer silent for peer_timeout: stopped
    check(T0 + 16.6)
    assert checks == 8


def test_stats_json_steps_yield_between_rows(reg: Registry) -> None:
    for i in range(7):
        announce(reg, T0, b"p%d" % i, 100, host=f"h{i}")
    reg.allow(IH2, T0, tag="empty")
    steps = stats_json_steps(reg, T0, step=2)
    yields = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            body = done.value
            break
        yields += 1
    assert yields == 3  # after rows 2, 4 and 6 of 7
    assert body == reference_json(reg, T0)
    empty = json.loads(body)["swarms"][1]
    assert (empty["tag"], empty["peers"], empty["rate_down"]) == ("empty", [], 0)


def test_metrics_from_registry(reg: Registry) -> None:
    reg.allow(IH, T0, tag="v1", size=1000)
    announce(reg, T0, b"a", 1000, host="a")
    announce(reg, T0 + 5, b"a", 500, down=500, up=50, host="a")
    announce(reg, T0, b"b", 1000, host="b")  # stalled by T0 + 40
    announce(reg, T0, b"s", 0, host="s")
    announce(reg, T0, b"c", 0, down=1000, host="c", event="completed")
    reg.counters.announce("started", "ok")
    reg.counters.announce("", "refused")
    reg.counters.scrape("ok")
    reg.counters.request("announce", 0.0003)
    reg.counters.request("stats", 2.0)
    m = metrics(render_metrics(reg, T0 + 40).decode())
    swarm = {"info_hash": IH.hex(), "tag": "v1"}
    assert m("roost_tracker_announces_total", event="started", result="ok") == 1
    assert m("roost_tracker_announces_total", event="none", result="refused") == 1
    assert m("roost_tracker_scrapes_total", result="ok") == 1
    assert m("roost_tracker_requests_total", route="stats") == 1
    assert m("roost_tracker_request_seconds_bucket", le="0.0005") == 1
    assert m("roost_tracker_request_seconds_bucket", le="1.0") == 1
    assert m("roost_tracker_request_seconds_bucket", le="+Inf") == 2
    assert m("roost_tracker_request_seconds_count") == 2
    assert m("roost_tracker_request_seconds_sum") == pytest.approx(2.0003)
    assert m("roost_tracker_swarms") == 1
    assert m("roost_tracker_start_time_seconds") == T0
    assert m("roost_swarm_peers", **swarm, state="seeding") == 2
    assert m("roost_swarm_peers", **swarm, state="downloading") == 2
    assert m("roost_swarm_peers", **swarm, state="stopped") == 0
    assert m("roost_swarm_stalled_peers", **swarm) == 2  # a: 35 s, b: 40 s
    assert m("roost_swarm_completed_total", **swarm) == 1
    assert m("roost_swarm_size_bytes", **swarm) == 1000
    assert m("roost_swarm_uploaded_bytes", **swarm) == 50
    assert m("roost_swarm_downloaded_bytes", **swarm) == 1500
    # T0 + 40 is more than two intervals after a's last announce: rate 0
    assert m("roost_swarm_download_rate_bytes_per_second", **swarm) == 0
    m = metrics(render_metrics(reg, T0 + 6).decode())
    assert m("roost_swarm_download_rate_bytes_per_second", **swarm) == 100.0
    assert m("roost_swarm_upload_rate_bytes_per_second", **swarm) == 10.0


def test_metrics_registries_are_per_tracker() -> None:
    one = Registry(TrackerConfig(port=0), T0)
    two = Registry(TrackerConfig(port=0), T0)
    one.counters.announce("started", "ok")
    assert b'roost_tracker_announces_total{event="started",result="ok"} 1.0' in render_metrics(one)
    assert b"roost_tracker_announces_total{" not in render_metrics(two)


# ------------------------------------------------------------- real tracker


@pytest.fixture
def tracker() -> Iterator[TrackerHandle]:
    handle = run_tracker_in_thread(
        TrackerConfig(port=0, interval=1, min_interval=0, stats_ttl=STATS_TTL)
    )
    try:
        yield handle
    finally:
        handle.stop()


def get(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read(), response.headers["Content-Type"]


def http_announce(base: str, peer: bytes, left: int, **kw: Any) -> bytes:
    with urllib.request.urlopen(f"{base}/announce?{query(peer, left, **kw).decode()}") as r:
        return r.read()


def test_real_tracker_stats_and_metrics_over_http(tracker: TrackerHandle, tmp_path: Path) -> None:
    from roost.engine import Engine, EngineConfig

    base = f"http://127.0.0.1:{tracker.port}"
    # A real libtorrent seeder and leecher, the leecher rate-limited so that
    # the tracker sees the download in progress ...
    payload = random_file(tmp_path / "origin" / "blob.bin", 3 * 1024 * 1024, seed=7)
    torrent = make_torrent(payload, announce=(f"{base}/announce",))
    real = info_hash(torrent)
    tracker.allow(real, tag="real")
    lo = EngineConfig(listen_interface="127.0.0.1")
    with Engine(lo) as seeder, Engine(lo) as leecher:
        seeder.add(torrent, payload.parent, seed_mode=True)
        lid = leecher.add(torrent, tmp_path / "dl", download_limit=1024 * 1024)
        mid: dict[str, Any] | None = None
        done: dict[str, Any] | None = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and done is None:
            body, ctype = get(f"{base}/stats.json")
            assert ctype.startswith("application/json")
            doc = json.loads(body)
            swarm = next(s for s in doc["swarms"] if s["info_hash"] == real)
            leechers = [p for p in swarm["peers"] if p["downloaded"] > 0]
            if leechers and 0 < leechers[0]["progress"] < 1 and leechers[0]["rate_down"] > 0:
                mid = mid or swarm
            if swarm["completed"] == 1 and swarm["seeders"] == 2:
                done = swarm
            time.sleep(0.2)
        assert leecher.status(lid).is_seeding
    assert mid is not None, "never saw the libtorrent download in progress"
    assert done is not None, "the libtorrent leecher never reported completion"
    size = payload.stat().st_size
    assert done["tag"] == "real" and done["leechers"] == 0 and done["size"] >= size
    assert all(p["progress"] == 1.0 and p["state"] == "seeding" for p in done["peers"])
    assert max(p["downloaded"] for p in done["peers"]) >= size
    assert 0 < mid["rate_down"] < 4 * 1024 * 1024  # limited to about 1 MiB/s
    assert mid["size"] is not None and mid["size"] >= size

    # ... and simulated peers (real HTTP announces) in another swarm.
    tracker.allow(IH.hex(), tag="sim", size=4000)
    http_announce(base, b"seed", 0, host="origin", dc="dc1", rack="r1", event="started")
    for i in range(3):
        http_announce(base, b"w%d" % i, 4000, host=f"web-{i}", dc="dc1", rack="r2", event="started")
    time.sleep(0.2)
    http_announce(base, b"w0", 1000, down=3000, host="web-0", dc="dc1", rack="r2")
    http_announce(base, b"w1", 0, down=4000, host="web-1", event="completed")
    http_announce(base, b"w2", 4000, down=0, host="web-2", event="stopped")
    time.sleep(STATS_TTL)  # past the snapshot the loop above may have left
    doc = json.loads(get(f"{base}/stats.json")[0])
    assert doc["tracker"]["interval"] == 1 and doc["tracker"]["announces"] >= 7
    sim = next(s for s in doc["swarms"] if s["tag"] == "sim")
    peers = peers_by_host({"swarms": [sim]})
    assert (sim["seeders"], sim["leechers"], sim["completed"], sim["size"]) == (2, 1, 1, 4000)
    assert peers["web-0"]["progress"] == 0.75 and peers["web-0"]["rate_down"] > 0
    assert (peers["web-0"]["datacenter"], peers["web-0"]["rack"]) == ("dc1", "r2")
    assert peers["web-2"]["state"] == "stopped"
    assert peers["origin"]["address"] == "127.0.0.1"

    body, ctype = get(f"{base}/metrics")
    assert ctype == METRICS_CONTENT_TYPE
    m = metrics(body.decode())
    key = {"info_hash": IH.hex(), "tag": "sim"}
    assert m("roost_tracker_announces_total", event="started", result="ok") >= 4
    assert m("roost_tracker_announces_total", event="completed", result="ok") >= 2
    assert m("roost_tracker_announces_total", event="stopped", result="ok") >= 1
    assert m("roost_swarm_peers", **key, state="seeding") == 2
    assert m("roost_swarm_peers", **key, state="downloading") == 1
    assert m("roost_swarm_peers", **key, state="stopped") == 1
    assert m("roost_swarm_completed_total", **key) == 1
    assert m("roost_swarm_downloaded_bytes", **key) == 7000
    real_key = {"info_hash": real, "tag": "real"}
    assert m("roost_swarm_completed_total", **real_key) == 1
    assert m("roost_swarm_downloaded_bytes", **real_key) >= size
    stats_requests = m("roost_tracker_requests_total", route="stats")
    assert stats_requests >= 2
    assert m("roost_tracker_request_seconds_count") >= stats_requests + 7

"""/stats.json and /metrics under polling: the snapshot cache (snapshot.py) on
a fake clock, then a real tracker on 127.0.0.1:0 with real HTTP readers."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Generator, Iterator

import pytest

from roost import bencode
from roost.errors import TrackerError
from roost.tracker import TrackerConfig, TrackerHandle, run_tracker_in_thread
from roost.tracker.snapshot import StatusCache
from tests.tracker.tracker_kit import (
    get,
    pid,
    query,
    raw_exchange,
    split_responses,
)

# ------------------------------------------------------------- StatusCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def steps_of(body: bytes, calls: list[int], n_steps: int = 3) -> Generator[None, None, bytes]:
    calls.append(1)
    for _ in range(n_steps):
        yield
    return body


def test_cache_single_flight_and_ttl() -> None:
    clock = Clock()
    cache = StatusCache(1.0, clock)
    calls: list[int] = []

    async def main() -> None:
        assert cache.fresh() is None
        first = cache.start(lambda: steps_of(b"one", calls))
        clock.now += 0.5
        assert cache.start(lambda: steps_of(b"two", calls)) is first  # joins: 0.5 s < ttl
        snap = await first
        assert (snap.body, snap.started, cache.builds, len(calls)) == (b"one", 100.0, 1, 1)
        clock.now = 100.99  # age counts from the start of the build
        assert cache.fresh() is snap
        clock.now = 101.0
        assert cache.fresh() is None
        slow = cache.start(lambda: steps_of(b"slow", calls, 50))
        await asyncio.sleep(0)
        clock.now += 1.5  # the running build started more than ttl ago: not joined
        fast = cache.start(lambda: steps_of(b"fast", calls, 1))
        assert fast is not slow
        assert (await fast).body == b"fast"
        assert (await slow).body == b"slow"
        assert cache.fresh() is not None and cache.fresh().body == b"fast"  # type: ignore[union-attr]
        assert cache.builds == 3

    asyncio.run(main())


def test_cache_ttl_zero_builds_every_time_and_sync_build() -> None:
    clock = Clock()
    cache = StatusCache(0.0, clock)
    assert cache.build(lambda: b"a").body == b"a"
    assert cache.build(lambda: b"b").body == b"b"
    cache = StatusCache(5.0, clock)
    assert cache.build(lambda: b"a").body == b"a"
    assert cache.build(lambda: b"b").body == b"a"
    assert cache.builds == 1
    with pytest.raises(ValueError):
        StatusCache(-1.0)
    with pytest.raises(TrackerError, match="stats ttl"):
        TrackerConfig(stats_ttl=61)


# ------------------------------------------------------------- real tracker


def start(ttl: float) -> TrackerHandle:
    return run_tracker_in_thread(TrackerConfig(port=0, interval=60, stats_ttl=ttl))


@pytest.fixture
def slow_ttl() -> Iterator[TrackerHandle]:
    with start(30.0) as t:  # long enough that no test here outlives a snapshot
        yield t


def base(t: TrackerHandle) -> str:
    return t.announce_url.rsplit("/", 1)[0]


def builds(t: TrackerHandle) -> dict[str, int]:
    return dict(t.call(lambda: t.server.status_builds))


def fill(t: TrackerHandle, n: int) -> None:
    """n peers announce once, pipelined on one connection."""
    with socket.create_connection(("127.0.0.1", t.port), timeout=30) as s:
        s.sendall(
            b"".join(
                f"GET /announce?{query(i, host=f'h{i:05d}')} HTTP/1.1\r\n\r\n".encode()
                for i in range(n)
            )
        )
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == n


def hosts(body: bytes) -> set[str]:
    return {p["host"] for s in json.loads(body)["swarms"] for p in s["peers"]}


def test_announce_is_visible_once_the_ttl_has_passed() -> None:
    ttl = 0.6
    with start(ttl) as t:
        url = base(t) + "/stats.json"
        get(f"{t.announce_url}?{query(1, host='first')}")
        t0 = time.monotonic()
        status, one = get(url)
        assert status == 200 and hosts(one) == {"first"}
        get(f"{t.announce_url}?{query(2, host='second')}")
        _, two = get(url)
        if time.monotonic() - t0 < ttl:  # still the same snapshot: same bytes
            assert two == one and builds(t)["stats"] == 1
        time.sleep(ttl)
        _, three = get(url)
        assert hosts(three) == {"first", "second"}
        assert builds(t)["stats"] == (2 if two == one else 3)


def test_ttl_zero_is_always_current() -> None:
    with start(0.0) as t:
        url = base(t) + "/stats.json"
        for i in range(3):
            get(f"{t.announce_url}?{query(i, host=f'h{i}')}")
            assert len(hosts(get(url)[1])) == i + 1
        assert builds(t)["stats"] == 3


def test_concurrent_readers_share_one_build(slow_ttl: TrackerHandle) -> None:
    fill(slow_ttl, 3000)  # six steps of 500 rows: the build spans several loop turns
    url = base(slow_ttl) + "/stats.json"
    bodies: list[bytes] = []
    go = threading.Barrier(8)

    def reader() -> None:
        go.wait()
        bodies.append(get(url)[1])

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert len(bodies) == 8 and len(set(bodies)) == 1
    assert len(hosts(bodies[0])) == 3000
    assert builds(slow_ttl) == {"stats": 1, "metrics": 0}
    for _ in range(3):
        assert get(base(slow_ttl) + "/metrics")[0] == 200
    assert builds(slow_ttl) == {"stats": 1, "metrics": 1}


def test_pipelined_requests_behind_a_build_keep_their_order(slow_ttl: TrackerHandle) -> None:
    fill(slow_ttl, 1200)
    stats = b"GET /stats.json HTTP/1.1\r\n\r\n"
    ann = f"GET /announce?{query(5000, host='late')} HTTP/1.1\r\n\r\n".encode()
    scrape = b"GET /scrape HTTP/1.1\r\nConnection: close\r\n\r\n"
    out = split_responses(raw_exchange(slow_ttl.port, [stats + ann + stats + scrape]))
    assert len(out) == 4
    assert b"application/json" in out[0][0] and b"application/json" in out[2][0]
    assert out[0][1] == out[2][1]  # the second read is served from the snapshot ...
    assert "late" not in hosts(out[2][1])  # ... taken before the announce behind it
    assert bencode.decode(out[1][1])[b"incomplete"] == 1201
    assert bencode.decode(out[3][1])[b"files"]  # every request answered, in order
    assert builds(slow_ttl)["stats"] == 1


def test_a_reader_gone_before_its_build_ends_harms_nobody(slow_ttl: TrackerHandle) -> None:
    fill(slow_ttl, 2000)
    with socket.create_connection(("127.0.0.1", slow_ttl.port)) as s:
        s.sendall(b"GET /stats.json HTTP/1.1\r\n\r\n")
    time.sleep(0.05)
    status, body = get(base(slow_ttl) + "/stats.json")
    assert status == 200 and len(hosts(body)) == 2000
    got = get(f"{slow_ttl.announce_url}?{query(1)}")
    assert got[0] == 200 and b"failure" not in got[1]
    assert pid(1).hex() in body.decode()

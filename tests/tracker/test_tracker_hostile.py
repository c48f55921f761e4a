"""Issue 12 against a real tracker on 127.0.0.1:0, raw HTTP announces:
a stranger cannot move or remove a peer (class 3), a bad value answers 400
and changes nothing (class 5), caps on connections and unknown swarms
(class 4), stock clients stay in the swarm (class 9)."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any

import pytest
from tests.tracker.test_tracker_server import IH, compact_ports, pid, query

from roost import bencode
from roost.tracker import TrackerConfig, TrackerHandle, run_tracker_in_thread


@pytest.fixture
def tracker() -> Iterator[TrackerHandle]:
    with run_tracker_in_thread(TrackerConfig(port=0, interval=5)) as t:
        yield t


def announce_from(
    tracker_port: int, source: str, n: int, /, **kw: object
) -> tuple[int, dict[bytes, Any]]:
    """Announce as peer ``n`` from address ``source`` (any 127.x is local)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", tracker_port, timeout=10, source_address=(source, 0)
    )
    try:
        conn.request("GET", f"/announce?{query(n, **kw)}")
        resp = conn.getresponse()
        return resp.status, bencode.decode(resp.read())
    finally:
        conn.close()


def ports_seen(port: int, *, info_hash: bytes = IH) -> list[int]:
    """The ports peer 99 is handed (it asks for everyone)."""
    status, d = announce_from(port, "127.0.0.1", 99, info_hash=info_hash, numwant=200)
    assert status == 200, d
    return [p for p in compact_ports(d) if p != 6099]


# class 3: a stranger can move or remove a peer ----------------------------------


def test_keyless_announce_cannot_move_or_stop_a_keyed_peer(tracker: TrackerHandle) -> None:
    port = tracker.port
    assert announce_from(port, "127.0.0.1", 0, key="K1")[0] == 200
    hostile = [
        {"ip": "127.0.0.66", "port": 1},  # re-point it
        {"event": "stopped"},  # remove it
        {"key": "K2", "port": 2},  # the wrong key
        {"key": "K2", "event": "stopped"},
    ]
    for source in ("127.0.0.1", "127.0.0.9"):  # from its own address too: the key decides
        for extra in hostile:
            status, d = announce_from(port, source, 0, **extra)  # type: ignore[arg-type]
            assert status == 200 and b"in use by another peer" in d[b"failure reason"], extra
    assert ports_seen(port) == [6000]
    # Its key moves it, from anywhere.
    assert announce_from(port, "127.0.0.9", 0, key="K1", port=7000)[0] == 200
    assert ports_seen(port) == [7000]
    status, d = announce_from(port, "127.0.0.9", 0, key="K1", event="stopped")
    assert status == 200 and b"failure reason" not in d
    assert ports_seen(port) == []


def test_keyless_peer_is_owned_by_its_first_address(tracker: TrackerHandle) -> None:
    port = tracker.port
    assert announce_from(port, "127.0.0.2", 0)[0] == 200
    for extra in ({"ip": "127.0.0.66", "port": 1}, {"event": "stopped"}, {"key": "K9"}):
        status, d = announce_from(port, "127.0.0.3", 0, **extra)  # type: ignore[arg-type]
        assert status == 200 and b"in use by another peer" in d[b"failure reason"], extra
    assert ports_seen(port) == [6000]
    # ...and while it is listed as stopped, nobody else takes its id over.
    assert announce_from(port, "127.0.0.2", 0, event="stopped")[0] == 200
    _, d = announce_from(port, "127.0.0.3", 0)
    assert b"in use by another peer" in d[b"failure reason"]
    assert ports_seen(port) == []
    assert announce_from(port, "127.0.0.2", 0, port=6500)[0] == 200  # its owner comes back
    assert ports_seen(port) == [6500]


# class 5: one bad value answers 500 and half-updates a peer ---------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"ip": "fe80::1%25eth0"},
        {"ip": "fe80::1%25"},
        {"ip": "%00"},
        {"ip": "1.2.3.4.5"},
        {"port": "0"},
        {"port": "65536"},
        {"port": "-1"},
        {"left": "1e9"},
        {"numwant": "%ff"},
        {"event": "%ff"},
        {"host": "%0a"},
        {"compact": "2"},
    ],
)
def test_bad_value_answers_400_and_changes_nothing(
    tracker: TrackerHandle, extra: dict[str, str]
) -> None:
    port = tracker.port
    assert announce_from(port, "127.0.0.1", 0, left=50, uploaded=7)[0] == 200
    before = tracker.call(lambda: vars_of(tracker, pid(0)))
    status, d = announce_from(port, "127.0.0.1", 0, **{"left": 0, "event": "", **extra})
    assert status == 400, d
    assert d[b"failure reason"].decode().isprintable()
    assert tracker.call(lambda: vars_of(tracker, pid(0))) == before
    assert ports_seen(port) == [6000]


def vars_of(tracker: TrackerHandle, peer_id: bytes) -> tuple[object, ...]:
    swarm = tracker.server.registry.swarms[IH]
    p = swarm.get(peer_id)
    assert p is not None
    return (p.ip, p.port, p.compact, p.left, p.uploaded, p.last_seen, p.state, swarm.completed)

"""Issue 12 against a real tracker on 127.0.0.1:0, raw HTTP announces:
a stranger cannot move or remove a peer (class 3), a bad value answers 400
and changes nothing (class 5), caps on connections and unknown swarms
(class 4), stock clients stay in the swarm (class 9)."""

from __future__ import annotations

import http.client
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roost import bencode
from roost.tracker import TrackerConfig, TrackerHandle, run_tracker_in_thread
from tests.tracker.tracker_kit import IH, compact_ports, pid, query


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


def test_ownership_survives_a_restart(tmp_path: Path) -> None:
    config = TrackerConfig(port=0, state_file=tmp_path / "state.json")
    with run_tracker_in_thread(config) as t:
        assert announce_from(t.port, "127.0.0.2", 0, ip="127.0.0.50")[0] == 200
        assert announce_from(t.port, "127.0.0.1", 1, key="K1")[0] == 200
    with run_tracker_in_thread(config) as t:
        for n, extra in ((0, {}), (1, {"key": "K2"})):
            status, d = announce_from(t.port, "127.0.0.3", n, event="stopped", **extra)
            assert status == 200 and b"in use by another peer" in d[b"failure reason"]
        assert sorted(ports_seen(t.port)) == [6000, 6001]
        assert announce_from(t.port, "127.0.0.2", 0, event="stopped")[0] == 200
        assert ports_seen(t.port) == [6001]


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


# class 4: caps and timeouts ------------------------------------------------------

_SMALL_LIMIT = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))  # soft and hard: no way up
sys.argv = ["roost", "tracker", *sys.argv[1:]]
runpy.run_module("roost", run_name="__main__")
"""


def _closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_connections_beyond_the_open_file_limit_do_not_stop_announces(
    tmp_path: Path,
) -> None:
    """At 128 open files, 300 idle connections: every announce is answered,
    the quietest connections make room, and idle ones are closed."""
    argv = [sys.executable, "-c", _SMALL_LIMIT, "--port", "0", "--idle-timeout", "2"]
    log = tmp_path / "tracker.err"
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    idle: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        for n in range(300):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            if n % 50 == 49:
                status, d = announce_from(port, "127.0.0.1", n, event="")
                assert status == 200 and b"interval" in d, d
        for s in idle:
            s.settimeout(0.01)
        evicted = sum(_closed_by_server(s) for s in idle)
        assert evicted >= 300 - 128  # the cap is under the open-file limit
        open_ = [s for s in idle if not _closed_by_server(s)]
        deadline = time.monotonic() + 5  # --idle-timeout 2 and a sweep a second
        while open_ and time.monotonic() < deadline:
            time.sleep(0.2)
            open_ = [s for s in open_ if not _closed_by_server(s)]
        assert not open_, f"{len(open_)} idle connections still open"
        assert announce_from(port, "127.0.0.1", 1)[0] == 200
    finally:
        for s in idle:
            s.close()
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    text = log.read_text()
    assert "open-file limit 128: serving at most 96 connections" in text, text
    assert "out of system resource" not in text and "Traceback" not in text, text


def test_a_request_head_must_arrive_within_the_request_timeout() -> None:
    config = TrackerConfig(port=0, request_timeout=1.0, idle_timeout=30.0)
    with run_tracker_in_thread(config) as t:
        slow = socket.create_connection(("127.0.0.1", t.port), timeout=5)
        head = f"GET /announce?{query(0)} HTTP/1.1\r\n".encode()
        started = time.monotonic()
        try:
            for byte in head:  # one byte every 0.1 s: never idle, never done
                slow.sendall(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() - started < 4
        slow.settimeout(1)
        assert _closed_by_server(slow)
        slow.close()
        assert announce_from(t.port, "127.0.0.1", 1)[0] == 200


def test_a_flood_of_random_info_hashes_stays_within_the_cap() -> None:
    allowed = bytes(range(20))
    with run_tracker_in_thread(TrackerConfig(port=0, max_swarms=100)) as t:
        t.allow(allowed.hex(), "v1")  # registered swarms do not count
        rng = random.Random(12)
        conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
        refused = 0
        for n in range(300):
            conn.request("GET", f"/announce?{query(n, info_hash=rng.randbytes(20))}")
            d = bencode.decode(conn.getresponse().read())
            if b"failure reason" in d:
                assert d[b"failure reason"].startswith(b"tracker full: 100 swarms"), d
                refused += 1
        conn.close()
        assert refused == 200
        assert t.call(lambda: len(t.server.registry.swarms)) == 101
        assert ports_seen(t.port, info_hash=allowed) == []  # still served when full
        # Forgotten swarms make room again.
        for later in (10_000, 20_000):  # expired, then no longer listed
            t.call(lambda later=later: t.server.registry.expire(time.time() + later))
        status, d = announce_from(t.port, "127.0.0.1", 0, info_hash=rng.randbytes(20))
        assert status == 200 and b"failure reason" not in d


def test_a_flood_of_peer_ids_stays_within_the_swarms_cap() -> None:
    """One client inventing peer ids (50,000 took ~80 MB before) fills one
    swarm to ``--max-peers`` and no further; the peers in it keep being
    served and updated, and a stopped one's place is taken again."""
    with run_tracker_in_thread(TrackerConfig(port=0, max_peers=40)) as t:
        conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
        answers = []
        for n in range(100):
            conn.request("GET", f"/announce?{query(n)}")
            answers.append(bencode.decode(conn.getresponse().read()))
        refused = [d[b"failure reason"] for d in answers if b"failure reason" in d]
        assert refused == [b"swarm full: 40 peers (--max-peers)"] * 60
        assert t.call(lambda: len(t.server.registry.swarms[IH].leechers)) == 40
        conn.request("GET", f"/announce?{query(3, left=0, event='completed')}")  # a member
        assert b"failure reason" not in bencode.decode(conn.getresponse().read())
        conn.request("GET", f"/announce?{query(5, event='stopped')}")
        conn.getresponse().read()
        conn.request("GET", f"/announce?{query(77)}")  # the room it left
        assert b"failure reason" not in bencode.decode(conn.getresponse().read())
        conn.close()

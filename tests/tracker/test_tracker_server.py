"""A real tracker on 127.0.0.1:0, hit with raw sockets and urllib."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost import bencode
from roost.errors import TrackerError
from roost.tracker import (
    StateFileError,
    TrackerConfig,
    TrackerHandle,
    TrackerServer,
    run_tracker_in_thread,
)
from roost.tracker.swarm import Registry
from tests.tracker.tracker_kit import (
    IH,
    IH2,
    announce,
    compact_ports,
    get,
    pid,
    q,
    query,
    raw_exchange,
    split_responses,
)


@pytest.fixture
def tracker() -> Iterator[TrackerHandle]:
    with run_tracker_in_thread(TrackerConfig(port=0, interval=5)) as t:
        yield t


@pytest.fixture(scope="module")
def shared_tracker() -> Iterator[TrackerHandle]:
    """One tracker for the tests that only read from it: refusals, its port."""
    with run_tracker_in_thread(TrackerConfig(port=0, interval=5)) as t:
        yield t


def test_announce_compact_and_dict(tracker: TrackerHandle) -> None:
    d = announce(tracker, 0, left=0)
    assert (d[b"complete"], d[b"incomplete"], d[b"interval"]) == (1, 0, 5)
    assert d[b"peers"] == b""
    d = announce(tracker, 1, compact=1)
    assert d[b"peers"] == b"\x7f\x00\x00\x01" + (6000).to_bytes(2, "big")
    d = announce(tracker, 2, compact=0)
    assert sorted(p[b"port"] for p in d[b"peers"]) == [6000, 6001]  # seeder and leecher
    assert all(p[b"ip"] == b"127.0.0.1" and len(p[b"peer id"]) == 20 for p in d[b"peers"])
    d = announce(tracker, 2, compact=0, no_peer_id=1, event="")
    assert all(b"peer id" not in p for p in d[b"peers"])
    d = announce(tracker, 3, ip="::1")
    assert compact_ports(d) == [6000, 6001, 6002]
    d = announce(tracker, 0, left=0, event="")
    assert d[b"peers6"] == bytes(15) + b"\x01" + (6003).to_bytes(2, "big")


def test_seeders_first_numwant_and_never_self(tracker: TrackerHandle) -> None:
    for n in range(2):
        announce(tracker, n, left=0)
    for n in range(2, 12):
        announce(tracker, n)
    for _ in range(5):
        d = announce(tracker, 5, numwant=3, event="")
        assert compact_ports(d) == [6000, 6001, *compact_ports(d)[2:]]
        assert len(compact_ports(d)) == 3
    d = announce(tracker, 5, numwant=100, event="")
    assert 6005 not in compact_ports(d)
    assert len(compact_ports(d)) == 11
    d = announce(tracker, 0, left=0, event="")  # a seeder gets leechers only
    assert compact_ports(d) == list(range(6002, 6012))


def test_events_and_scrape(tracker: TrackerHandle) -> None:
    scrape_url = tracker.announce_url.replace("/announce", "/scrape")
    announce(tracker, 0, left=0)
    announce(tracker, 1)
    announce(tracker, 2, info_hash=IH2)
    announce(tracker, 1, left=0, event="completed")
    status, body = get(f"{scrape_url}?info_hash={q(IH)}&info_hash={q(IH2)}")
    files = bencode.decode(body)[b"files"]
    assert files[IH] == {b"complete": 2, b"downloaded": 1, b"incomplete": 0}
    assert files[IH2] == {b"complete": 0, b"downloaded": 0, b"incomplete": 1}
    announce(tracker, 1, left=0, event="stopped")
    d = announce(tracker, 3)
    assert compact_ports(d) == [6000]
    status, body = get(scrape_url)
    assert status == 200
    assert set(bencode.decode(body)[b"files"]) == {IH, IH2}


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /announce?info_hash=short HTTP/1.1\r\n\r\n",
        b"GET /announce?" + query(0, port="x").encode() + b" HTTP/1.1\r\n\r\n",
        b"GET /announce HTTP/1.1\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"POST /announce HTTP/1.1\r\n\r\n",
        b"GET /announce HTTP/9.9\r\n\r\n",
        b"\x00\xff" * 5000,
    ],
)
def test_malformed_gets_4xx_failure_reason_and_server_lives(
    shared_tracker: TrackerHandle, request_bytes: bytes
) -> None:
    out = raw_exchange(shared_tracker.port, [request_bytes])
    head, body = split_responses(out)[0]
    assert head.startswith((b"HTTP/1.1 4", b"HTTP/1.1 50"))
    assert b"Connection: close" in head
    assert b"failure reason" in bencode.decode(body)
    scrape = shared_tracker.announce_url.replace("/announce", "/scrape")
    status, body = get(f"{scrape}?info_hash={q(IH)}")
    assert status == 200 and b"files" in bencode.decode(body)  # still serving


def test_keep_alive_pipelining_and_awkward_splits(tracker: TrackerHandle) -> None:
    one = f"GET /announce?{query(1)} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    two = f"GET /announce?{query(2)} HTTP/1.1\r\n\r\n".encode()
    scrape = f"GET /scrape?info_hash={q(IH)} HTTP/1.1\r\nConnection: close\r\n\r\n".encode()
    stream = one + two + scrape
    cuts = [1, 5, len(one) - 1, len(one) + 3, len(one) + len(two) + 10]
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    responses = split_responses(raw_exchange(tracker.port, chunks, pause=0.01))
    assert len(responses) == 3
    assert compact_ports(bencode.decode(responses[1][1])) == [6001]
    assert bencode.decode(responses[2][1])[b"files"][IH][b"incomplete"] == 2
    assert b"Connection: close" in responses[2][0]


@pytest.mark.parametrize(
    "bad",
    [
        b"BAD\r\n\r\n",
        b"GET /announce HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 41\r\n\r\n",
    ],
)
def test_a_bad_request_in_a_pipeline_is_answered_after_the_good_ones(
    tracker: TrackerHandle, bad: bytes
) -> None:
    """The requests before it are applied and answered, in order; then its
    400, and the connection closes: the client never reads the error as the
    answer to its first announce. A second Content-Length (a body smuggled
    behind a first of 0) is such a request."""
    one = f"GET /announce?{query(1)} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    two = f"GET /announce?{query(2)} HTTP/1.1\r\n\r\n".encode()
    after = f"GET /announce?{query(3)} HTTP/1.1\r\n\r\n".encode()
    responses = split_responses(raw_exchange(tracker.port, [one + two + bad + after]))
    assert [head.split(b" ", 2)[1] for head, _ in responses] == [b"200", b"200", b"400"]
    assert compact_ports(bencode.decode(responses[1][1])) == [6001]
    assert b"Connection: close" in responses[2][0]
    assert b"failure reason" in bencode.decode(responses[2][1])
    # the two were applied; the one after the bad request was not
    assert sorted(compact_ports(announce(tracker, 0))) == [6001, 6002]


def test_unknown_paths_and_status_routes(tracker: TrackerHandle) -> None:
    base = tracker.announce_url.rsplit("/", 1)[0]
    for path in ("/nope", "/static/app.js"):  # the page inlines its assets
        status, body = get(f"{base}{path}")
        assert status == 404
        assert b"failure reason" in body
    announce(tracker, 0)
    expected = {"/stats.json": "application/json", "/metrics": "text/plain", "/": "text/html"}
    for path, ctype in expected.items():
        with urllib.request.urlopen(base + path, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith(ctype)
            assert resp.headers["Cache-Control"] == "no-store"
            body = resp.read()
        if path == "/stats.json":
            (swarm,) = json.loads(body)["swarms"]
            assert swarm["info_hash"] == IH.hex()
            assert swarm["peers"][0]["port"] == 6000


def test_stats_allow_networks() -> None:
    cfg = TrackerConfig(port=0, stats_allow=("10.0.0.0/8",))
    with run_tracker_in_thread(cfg) as t:
        base = t.announce_url.rsplit("/", 1)[0]
        for path in ("/stats.json", "/metrics", "/"):
            status, body = get(base + path)
            assert status == 403, path
            assert b"forbidden" in body
        assert announce(t, 0)[b"complete"] == 0  # announces are not restricted
    cfg = TrackerConfig(port=0, stats_allow=("127.0.0.0/8",))
    with run_tracker_in_thread(cfg) as t:
        status, _ = get(t.announce_url.rsplit("/", 1)[0] + "/metrics")
        assert status != 403


def test_allow_list_and_tokens() -> None:
    cfg = TrackerConfig(port=0, allow_list_only=True, tokens_required=True)
    with run_tracker_in_thread(cfg) as t:
        d = announce(t, 0)
        assert d == {b"failure reason": f"unregistered info-hash {IH.hex()}".encode()}
        t.allow(IH.hex(), tag="v42", token="deploy-42")
        assert b"missing token" in announce(t, 0)[b"failure reason"]
        assert b"wrong token" in announce(t, 0, token="deploy-41")[b"failure reason"]
        assert announce(t, 0, token="deploy-42")[b"incomplete"] == 1
        assert t.call(lambda: t.server.registry.swarms[IH].tag) == "v42"
        counts = t.call(lambda: dict(t.server.registry.counters.announces))
        assert counts == {("started", "refused"): 3, ("started", "ok"): 1}
        with pytest.raises(TrackerError, match="40 hex digits"):
            t.allow("xyz")


def test_peers_expire(tracker: TrackerHandle) -> None:
    cfg = TrackerConfig(port=0, interval=1, min_interval=0, peer_timeout=0.3)
    with run_tracker_in_thread(cfg) as t:
        announce(t, 0)
        assert compact_ports(announce(t, 1)) == [6000]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.1)
            announce(t, 1, event="")
            if not compact_ports(announce(t, 1, event="")):
                break
        else:
            pytest.fail("peer 0 never expired")


def test_restart_keeps_swarms(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    cfg = TrackerConfig(port=0, state_file=state, allow_list_only=True)
    with run_tracker_in_thread(cfg) as t:
        t.allow(IH.hex(), tag="v1", token="tok")
        announce(t, 0, left=0, token="tok")
        announce(t, 1, token="tok", dc="dc1", rack="r1", host="web-1")
        announce(t, 1, token="tok", left=0, event="completed")
    assert state.stat().st_mode & 0o777 == 0o600
    with run_tracker_in_thread(cfg) as t:
        d = announce(t, 2, token="tok")
        assert compact_ports(d) == [6000, 6001]
        assert (d[b"complete"], d[b"incomplete"]) == (2, 1)
        swarm = t.call(lambda: t.server.registry.swarms[IH])
        assert (swarm.tag, swarm.completed, swarm.registered) == ("v1", 1, True)
        p = swarm.seeders[pid(1)]
        assert (p.host, p.dc, p.rack) == ("web-1", "dc1", "r1")
        assert b"wrong token" in announce(t, 3, token="x")[b"failure reason"]


def test_corrupt_state_file_is_one_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    for content in (
        b"{not json",
        b'{"format": "other"}',
        b'{"format": "roost-tracker-state", "version": 1, "swarms": [{"info_hash": "zz"}]}',
    ):
        state.write_bytes(content)
        with pytest.raises(StateFileError, match=str(state)) as info:
            run_tracker_in_thread(TrackerConfig(port=0, state_file=state))
        assert "\n" not in str(info.value)


def test_a_state_file_that_cannot_be_written_is_refused_at_the_start(tmp_path: Path) -> None:
    state = tmp_path / "no-such-directory" / "state.json"
    with pytest.raises(StateFileError, match="cannot write") as info:
        run_tracker_in_thread(TrackerConfig(port=0, state_file=state))
    assert str(state) in str(info.value) and "\n" not in str(info.value)


def test_port_in_use_is_a_tracker_error(shared_tracker: TrackerHandle) -> None:
    with pytest.raises(TrackerError, match="cannot listen"):
        run_tracker_in_thread(TrackerConfig(port=shared_tracker.port))


def test_asyncio_api_embedded(tmp_path: Path) -> None:
    async def main() -> tuple[str, bytes]:
        config = TrackerConfig(port=0, state_file=tmp_path / "s")
        async with TrackerServer(config, Registry(config, time.time())) as server:
            url = server.announce_url
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(f"GET /announce?{query(0)} HTTP/1.0\r\n\r\n".encode())
            body = await reader.read()
            writer.close()
            await writer.wait_closed()
        return url, body

    url, body = asyncio.run(main())
    assert url.startswith("http://127.0.0.1:") and url.endswith("/announce")
    assert b"Connection: close" in body
    assert json.loads((tmp_path / "s").read_text())["swarms"][0]["info_hash"] == IH.hex()


def test_config_validation() -> None:
    with pytest.raises(TrackerError, match="interval"):
        TrackerConfig(interval=0)
    with pytest.raises(TrackerError, match="not a network"):
        TrackerConfig(dc_prefixes=(("10.0.0.0/33", "dc1"),))
    with pytest.raises(TrackerError, match="not a network"):
        TrackerConfig(stats_allow=("nope",))
    assert TrackerConfig(interval=4).peer_timeout == 12
    assert TrackerConfig().bind == "127.0.0.1"
    assert TrackerConfig().port == 8998


def test_state_saved_periodically(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    cfg = TrackerConfig(port=0, interval=1, min_interval=0, state_file=state, save_every=0.1)
    with run_tracker_in_thread(cfg) as t:
        assert json.loads(state.read_text())["swarms"] == []  # written at the start
        announce(t, 0)
        deadline = time.monotonic() + 5
        while not json.loads(state.read_text())["swarms"] and time.monotonic() < deadline:
            time.sleep(0.05)
        saved = json.loads(state.read_text())
        assert saved["swarms"][0]["peers"][0]["port"] == 6000
        assert not list(tmp_path.glob(".state.json.*"))  # no temporary files left


def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop when installed; ROOST_EVENT_LOOP=asyncio forces asyncio's own loop."""
    from roost.tracker.server import new_event_loop, run_loop

    async def answer() -> str:
        return type(asyncio.get_running_loop()).__module__

    monkeypatch.setenv("ROOST_EVENT_LOOP", "asyncio")
    assert run_loop(answer()).startswith("asyncio")
    monkeypatch.delenv("ROOST_EVENT_LOOP")
    loop = new_event_loop()
    try:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            assert type(loop).__module__.startswith("asyncio")
        else:
            assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


def test_the_server_serves_the_registry_it_is_given() -> None:
    config = TrackerConfig(port=0, interval=5)
    registry = Registry(config, time.time())
    registry.allow(IH, time.time(), tag="v7")
    with run_tracker_in_thread(config, registry=registry) as t:
        assert t.server.registry is registry
        announce(t, 0, left=0)
        assert registry.swarms[IH].num_seeders == 1 and registry.swarms[IH].tag == "v7"
    with pytest.raises(TrackerError, match="another tracker config"):
        TrackerServer(TrackerConfig(port=0, interval=9), registry=registry)


def test_a_peers_role_is_what_its_last_announce_said() -> None:
    # A fed peer is never handed the origin; once its feed is gone it
    # announces without role=feed (roost.peer) and is handed it from then on.
    with run_tracker_in_thread(TrackerConfig(port=0, interval=1, min_interval=0)) as t:
        announce(t, 1, left=0, role="origin")
        fed = announce(t, 2, role="feed")
        assert 6001 not in compact_ports(fed)
        again = announce(t, 2, event=None)
        assert compact_ports(again) == [6001]
        assert 6001 not in compact_ports(announce(t, 2, event=None, role="feed"))

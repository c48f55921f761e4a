"""The origin's feed (roost.feed): the dispatcher as a table, the server and
client over real HTTP on 127.0.0.1, and real peers fed by a real seeder,
including a peer killed while it holds pieces nobody else has and a seeder
killed half-way."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from roost.feed import TAIL_SHARE, Dispatcher, FeedServer, FeedSource
from roost.feedclient import DONE, LATER, WAIT, FeedClient
from tests.swarm_kit import MakeSwarm, make_torrent, random_file

Start = Callable[..., subprocess.Popen[bytes]]
KIB = 1024

# The dispatcher (sans-IO) ------------------------------------------------------


def test_each_piece_is_handed_out_once_in_order() -> None:
    d = Dispatcher(3)
    assert [d.next(0.0), d.next(0.0), d.next(0.0)] == [0, 1, 2]
    assert d.next(0.1) == WAIT  # all on their way, none confirmed
    for piece in (0, 1, 2):
        d.confirm(piece, 0.5)
    assert d.next(0.6) == DONE and d.done
    assert d.dispatched == 3 and d.reassigned == 0


def test_an_unconfirmed_piece_goes_to_the_next_asker_after_the_timeout() -> None:
    d = Dispatcher(2, reassign_after=3.0)
    assert d.next(0.0) == 0
    assert d.next(0.0) == 1
    d.confirm(1, 1.0)  # one transfer seen: 1 s
    assert d.timeout() == pytest.approx(4.0)  # 4 x the mean transfer, above the floor
    assert d.next(3.9) == WAIT
    assert d.next(4.1) == 0  # piece 0's peer stalled or died: given again
    assert d.reassigned == 1
    d.confirm(0, 4.5)
    assert d.next(4.6) == DONE


def test_a_gone_askers_unconfirmed_pieces_are_handed_out_first() -> None:
    d = Dispatcher(6)
    a, b = object(), object()
    assert [d.next(0.0, asker=a) for _ in range(3)] == [0, 1, 2]
    assert d.next(0.0, asker=b) == 3
    d.confirm(1, 0.5)
    assert d.gone(a) == 2 and d.reassigned == 2
    assert d.gone(a) == 0  # (once)
    assert [d.next(0.6, asker=b) for _ in range(3)] == [0, 2, 4]
    assert d.gone(None) == 0


def test_before_any_confirmation_the_timeout_is_generous() -> None:
    d = Dispatcher(1, reassign_after=3.0)
    assert d.next(0.0) == 0
    assert d.next(9.0) == WAIT
    assert d.next(10.5) == 0


def test_confirmations_are_idempotent_and_bounds_checked() -> None:
    d = Dispatcher(2)
    d.confirm(0, 0.0)
    d.confirm(0, 0.0)
    d.confirm(7, 0.0)
    d.confirm(-1, 0.0)
    assert d.next(0.0) == 1  # piece 0 was confirmed before it was handed out
    d.confirm(1, 0.1)
    assert d.done


def test_once_all_are_out_an_asker_gets_the_newest_piece_it_lacks() -> None:
    d = Dispatcher(40, tail_share=0.05)  # a budget of 2 second copies
    assert [d.next(0.0) for _ in range(40)] == list(range(40))
    assert d.next(0.1) == WAIT  # lacking nothing it says
    assert d.next(0.1, lack=[3, 38, 17]) == 38  # handed out last: the slowest to spread
    assert d.next(0.1, lack=[3, 38, 17]) == 17  # 38 was sent twice: never a third time
    assert d.next(0.1, lack=[3]) == WAIT  # the budget is spent
    assert d.tail_sent == 2 and d.dispatched == 40


def test_re_hands_and_repairs_spend_the_tails_budget() -> None:
    d = Dispatcher(80, tail_share=0.05)  # a budget of 4 second copies, of any kind
    assert [d.next(0.0, asker="a") for _ in range(2)] == [0, 1]
    assert [d.next(0.0) for _ in range(78)] == list(range(2, 80))
    assert d.gone("a") == 2  # pieces 0 and 1, never confirmed
    assert [d.next(0.1, asker="c") for _ in range(2)] == [0, 1]  # second copies: 2 spent
    d.repaired()  # one sent by index: 3 spent
    assert d.redispatched == 2 and d.repairs == 1
    assert d.next(0.2, lack=[70, 60], asker="c") == 70  # the budget's last copy
    assert d.next(0.2, lack=[60], asker="c") == WAIT
    assert d.tail_sent == 1


def test_the_tail_never_sends_a_piece_back_to_whom_it_was_handed() -> None:
    d = Dispatcher(40)
    for k in range(40):
        d.next(0.0, asker="a" if k == 39 else "b")
    assert d.next(0.1, lack=[39, 12], asker="a") == 12  # 39 may still be on its way to a
    assert d.next(0.1, lack=[39], asker="c") == 39


def test_a_peer_well_over_its_share_waits_while_the_others_catch_up() -> None:
    d = Dispatcher(100)
    assert [d.next(0.0, asker="early") for _ in range(20)] == list(range(20))  # alone: all
    assert d.next(0.1, asker="late") == 20  # a second peer asks...
    assert d.next(0.1, asker="early") == LATER  # ...and the early one waits its turn
    for _ in range(9):
        d.next(0.2, asker="late")
    # 10 handed to late, 20 to early: the mean is 15, early is within 1.25 x 15 + 4
    assert d.next(0.3, asker="early") == 30
    assert d.held_back == 1


def test_only_peers_asking_now_count_towards_the_share() -> None:
    d = Dispatcher(100)
    d.next(0.0, asker="gone")
    for k in range(30):
        assert d.next(2.0 + k * 0.01, asker="busy") == k + 1  # "gone" asked > 1 s ago
    assert d.next(2.5, asker=None) == 31  # an asker nobody knows is never held back


def test_a_peer_silent_for_a_while_keeps_its_share_when_it_asks_again() -> None:
    d = Dispatcher(100)
    for _ in range(20):
        d.next(0.0, asker="early")
    assert d.next(5.0, asker="late") == 20  # early is silent (reading a piece, say)
    assert d.next(5.0, asker="early") == LATER  # back: its 20 pieces still count


def test_the_tail_waits_while_pieces_were_never_sent() -> None:
    d = Dispatcher(3)
    assert d.next(0.0, lack=[0, 1, 2]) == 0  # unsent pieces first, lack or not
    assert d.next(0.0, lack=[5, -1]) == 1  # out-of-range lacks are ignored


def test_a_feed_needs_pieces() -> None:
    with pytest.raises(ValueError):
        Dispatcher(0)


# Server and client over HTTP ----------------------------------------------------


@pytest.fixture
def payload_file(tmp_path: Path) -> Path:
    return random_file(tmp_path / "payload.bin", 10 * 16 * KIB + 1234, seed=7)


def _source(path: Path, piece: int = 16 * KIB) -> FeedSource:
    return FeedSource("ab" * 20, path, piece, path.stat().st_size)


def _pieces(path: Path, piece: int = 16 * KIB) -> list[bytes]:
    data = path.read_bytes()
    return [data[i : i + piece] for i in range(0, len(data), piece)]


class _Asker:
    """One peer's keep-alive connection to the feed (a piece is held by the
    connection it was sent on: closed unconfirmed, it is sent again)."""

    def __init__(self, server: FeedServer):
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)

    def __call__(self, path: str) -> tuple[int, dict[str, str], bytes]:
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()

    def close(self) -> None:
        self.conn.close()


def _get(server: FeedServer, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_at_the_end_the_server_sends_what_an_asker_lacks(tmp_path: Path) -> None:
    payload = random_file(tmp_path / "forty.bin", 40 * 16 * KIB, seed=8)
    source = _source(payload)
    with FeedServer() as server:
        server.add(source)
        base = f"/feed/v1/{source.info_hash}"
        first, other = _Asker(server), _Asker(server)
        for _ in range(40):
            assert first(f"{base}/next")[0] == 200
        status, headers, body = other(f"{base}/next?got=0-39&lack=5,30-31")
        assert status == 200 and headers["X-Roost-Piece"] == "31"
        assert body == _pieces(payload)[31]
        stats = json.loads(_get(server, f"{base}/stats")[2])
        assert stats["tail"] == 1 and stats["done"] is True
        # every piece was received by someone: an asker still gets what it lacks...
        status, headers, _ = other(f"{base}/next?lack=5,31")
        assert status == 200 and headers["X-Roost-Piece"] == "5"  # (31: twice already)
        # ...until the budget (5% of 40 pieces: 2) is spent
        status, headers, _ = other(f"{base}/next?lack=7")
        assert (status, headers["X-Roost-Feed"]) == (204, DONE)
        first.close()
        other.close()


def test_server_hands_out_pieces_with_their_index_then_waits(payload_file: Path) -> None:
    source = _source(payload_file)
    with FeedServer() as server:
        server.add(source)
        base = f"/feed/v1/{source.info_hash}"
        ask = _Asker(server)
        status, headers, body = ask(f"{base}/next")
        assert status == 200 and headers["X-Roost-Piece"] == "0"
        assert body == _pieces(payload_file)[0]
        got = []
        for _ in range(source.num_pieces - 1):
            status, headers, body = ask(f"{base}/next?got=0")
            index = int(headers["X-Roost-Piece"])
            assert body == _pieces(payload_file)[index]
            got.append(index)
        assert got == list(range(1, source.num_pieces))
        assert len(body) == 1234  # the short last piece
        status, headers, _ = ask(f"{base}/next")
        assert (status, headers["X-Roost-Feed"]) == (204, WAIT)
        confirm = ",".join(str(i) for i in range(source.num_pieces))
        status, headers, _ = ask(f"{base}/next?got={confirm}")
        assert (status, headers["X-Roost-Feed"]) == (204, DONE)
        ask.close()
        status, _, body = _get(server, f"{base}/piece/3")  # a repair, by index
        assert status == 200 and body == _pieces(payload_file)[3]
        status, _, body = _get(server, f"{base}/stats")
        stats = json.loads(body)
        assert stats["done"] is True and stats["repairs"] == 1
        assert stats["bytes_sent"] == payload_file.stat().st_size + 16 * KIB
        assert server.stats(source.info_hash).dispatched == source.num_pieces  # type: ignore[union-attr]


def test_a_payload_changed_since_seeding_began_stops_the_feed_and_its_clients(
    payload_file: Path,
) -> None:
    """Rebuilt in place mid-deploy: its pieces are not the release's, so the
    feed stops, saying why to every asker, and a client stops with that
    reason (peers hashed the bad pieces, failed, and asked for ever)."""
    source = _source(payload_file)
    with FeedServer() as server:
        server.add(source)
        base = f"/feed/v1/{source.info_hash}"
        assert _get(server, f"{base}/piece/0")[0] == 200
        with open(payload_file, "r+b") as f:
            f.seek(5 * 16 * KIB)
            f.write(b"\0" * 100)
        st = payload_file.stat()  # a rebuild takes longer than the clock's tick
        os.utime(payload_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        for path in (f"{base}/next", f"{base}/piece/1", f"{base}/next"):
            status, headers, _ = _get(server, path)
            assert status == 503, path
            assert headers["X-Roost-Feed-Error"] == f"{payload_file} changed since seeding began"
        fed: dict[int, bytes] = {}
        client = FeedClient(
            server.url(), source.info_hash, add_piece=fed.__setitem__, orphans=list
        ).start()
        try:
            assert _until(client.broken, 5) == f"{payload_file} changed since seeding began"
            assert fed == {}
        finally:
            client.stop()


def test_a_client_asks_for_nothing_before_its_engine_can_take_pieces(
    payload_file: Path,
) -> None:
    """libtorrent drops a piece added while it checks the torrent (the
    engine's ``checked``): a client asked, the feed counted the pieces as
    handed out, and the peer waited for their repair."""
    source = _source(payload_file)
    can_take = threading.Event()
    with FeedServer() as server:
        server.add(source)
        fed: dict[int, bytes] = {}
        client = FeedClient(
            server.url(),
            source.info_hash,
            add_piece=fed.__setitem__,
            orphans=list,
            ready=can_take.is_set,
        ).start()
        try:
            time.sleep(0.3)
            # nothing handed to the client: another peer is given the first
            # piece (and, as it does not confirm it, the client is, later)
            assert _get(server, f"/feed/v1/{source.info_hash}/next")[1]["X-Roost-Piece"] == "0"
            assert fed == {}
            can_take.set()
            _until(lambda: len(fed) == len(_pieces(payload_file)), 5)
        finally:
            client.stop()


def test_what_a_closed_connection_held_unconfirmed_goes_out_again_first(
    payload_file: Path,
) -> None:
    """A peer killed while it held pieces nobody else has: the feed learns it
    from the connection closing, not from a timeout."""
    source = _source(payload_file)
    with FeedServer() as server:
        server.add(source)
        base = f"/feed/v1/{source.info_hash}"
        doomed, other = _Asker(server), _Asker(server)
        assert doomed(f"{base}/next")[1]["X-Roost-Piece"] == "0"
        assert doomed(f"{base}/next")[1]["X-Roost-Piece"] == "1"
        assert doomed(f"{base}/next?got=0")[1]["X-Roost-Piece"] == "2"
        assert other(f"{base}/next")[1]["X-Roost-Piece"] == "3"
        doomed.close()
        deadline = time.monotonic() + 10
        while server.stats(source.info_hash).reassigned < 2:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # 1 and 2 (never confirmed) before anything never sent; 0 stays received
        got = [other(f"{base}/next")[1].get("X-Roost-Piece") for _ in range(3)]
        assert got == ["1", "2", "4"]
        other.close()


@pytest.mark.parametrize(
    "path",
    [
        "/feed/v1/" + "cd" * 20 + "/next",  # not served here
        "/feed/v1/" + "ab" * 20 + "/piece/11",  # past the last piece
        "/feed/v1/" + "AB" * 20 + "/next",
        "/feed/v1/" + "ab" * 20 + "/../../etc/passwd",
        "/",
    ],
)
def test_server_answers_404_for_anything_else(payload_file: Path, path: str) -> None:
    with FeedServer() as server:
        server.add(_source(payload_file))
        assert _get(server, path)[0] == 404


def test_feed_port_taken_is_a_one_line_error() -> None:
    from roost.errors import UsageError

    with FeedServer() as first, pytest.raises(UsageError, match="feed cannot listen on"):
        FeedServer(port=first.port).start()


def test_clients_share_the_pieces_each_received_once(payload_file: Path) -> None:
    """Three peers pulling at once: every piece reaches exactly one of them."""
    source = _source(payload_file)
    received: list[dict[int, bytes]] = [{}, {}, {}]
    with FeedServer() as server:
        server.add(source)
        clients = [
            FeedClient(
                server.url(),
                source.info_hash,
                add_piece=received[k].__setitem__,
                orphans=list,
            ).start()
            for k in range(3)
        ]
        deadline = time.monotonic() + 20
        while not server.stats(source.info_hash).done:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for client in clients:
            client.stop()
    indices = [i for r in received for i in r]
    assert sorted(indices) == list(range(source.num_pieces))
    pieces = _pieces(payload_file)
    assert all(data == pieces[i] for r in received for i, data in r.items())
    assert sum(c.counters.pieces for c in clients) == source.num_pieces


def test_a_client_that_holds_every_piece_says_so_as_it_stops(payload_file: Path) -> None:
    """A peer that the swarm completed stops pulling with asks still on the
    wire: it confirms every piece, so the feed neither hands what it was
    sending that peer to another one once the connection closes, nor sends
    the pieces nobody was given yet (the swarm has them)."""
    source = _source(payload_file)
    fed: list[int] = []
    with FeedServer(rate_limit=64 * KIB) as server:  # a piece in 0.25 s: asks stay on the wire
        server.add(source)
        client = FeedClient(
            server.url(),
            source.info_hash,
            add_piece=lambda index, data: fed.append(index),
            orphans=list,
            complete=lambda: source.num_pieces if fed else 0,
        ).start()
        deadline = time.monotonic() + 10
        while not fed:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        client.stop()
        stats = server.stats(source.info_hash)
        assert stats is not None and stats.done and stats.confirmed == source.num_pieces
        assert stats.dispatched < source.num_pieces
        status, headers, _ = _get(server, f"/feed/v1/{source.info_hash}/next")
        assert (status, headers.get("X-Roost-Feed")) == (204, DONE)
        time.sleep(0.3)  # the closed connection's pieces: confirmed, so none goes out again
        assert server.stats(source.info_hash).reassigned == 0  # type: ignore[union-attr]


def test_confirming_every_piece_at_once_leaves_nothing_to_send() -> None:
    d = Dispatcher(1000)
    assert [d.next(0.0, asker="a"), d.next(0.0, asker="a")] == [0, 1]
    assert d.gone("a") == 2  # 0 and 1 back among the unsent
    d.confirm_all(range(1000), 0.1)
    assert d.done and d.confirmed == 1000 and d.next(0.2) == DONE


def test_a_client_repairs_what_nobody_else_has(payload_file: Path) -> None:
    """Once the feed is done, a piece that stays an orphan is fetched by index."""
    source = _source(payload_file)
    got: dict[int, bytes] = {}
    lost = {4, 7}

    def add_piece(index: int, data: bytes) -> None:
        if index in lost:
            lost.discard(index)  # the first copy vanishes with its holder
            orphans.add(index)
        else:
            got[index] = data
            orphans.discard(index)

    orphans: set[int] = set()
    with FeedServer() as server:
        server.add(source)
        client = FeedClient(
            server.url(),
            source.info_hash,
            add_piece=add_piece,
            orphans=lambda: sorted(orphans),
            repair_after=0.2,
        ).start()
        deadline = time.monotonic() + 20
        while len(got) < source.num_pieces:
            assert time.monotonic() < deadline, f"have {sorted(got)}"
            time.sleep(0.05)
        client.stop()
        stats = server.stats(source.info_hash)
    assert stats is not None and stats.repairs == 2
    assert client.counters.repairs == 2
    assert got[4] == _pieces(payload_file)[4]


def test_a_client_with_no_swarm_repairs_at_once(payload_file: Path) -> None:
    """A peer that comes once the feed is done and every other peer has gone
    (a host added or retried after the deploy): nobody but the origin can
    give it anything, so its repairs do not wait for a swarm (here a minute)."""
    source = _source(payload_file)
    with FeedServer() as server:
        server.add(source)
        first: dict[int, bytes] = {}
        early = FeedClient(
            server.url(), source.info_hash, add_piece=first.__setitem__, orphans=list
        ).start()
        deadline = time.monotonic() + 20
        while not server.stats(source.info_hash).done:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        early.stop()
        late: dict[int, bytes] = {}
        client = FeedClient(
            server.url(),
            source.info_hash,
            add_piece=late.__setitem__,
            orphans=lambda: [i for i in range(source.num_pieces) if i not in late],
            alone=lambda: True,
            repair_after=60,
        ).start()
        while len(late) < source.num_pieces:
            assert time.monotonic() < deadline, f"the late peer has {sorted(late)}"
            time.sleep(0.02)
        client.stop()
        stats = server.stats(source.info_hash)
    assert late == dict(enumerate(_pieces(payload_file)))
    assert client.counters.repairs == source.num_pieces
    assert stats is not None and stats.repairs == source.num_pieces


def test_piece_lists_are_bounded_by_the_piece_count_and_ascii() -> None:
    """``got=``/``lack=``: a short request naming every piece many times over
    costs the piece count once (it made the origin allocate ~1 GB and hold
    the feed's lock for a second); a Unicode digit is ignored, not an error
    that closed the connection without an answer."""
    from roost.feed import _got

    many = ",".join(["0-999999999"] * 1500)
    assert _got(f"got={many}", 16384) == list(range(16384))
    assert _got("lack=9,3-5,4,\u00b2,1-\u00b2,%C2%B2,7-6,x", 10, "lack") == [3, 4, 5, 9]
    assert _got("got=0-3&got=2-12", 10) == list(range(10))


@pytest.mark.parametrize("number", ["\u00b2", "99999", "-1"])
def test_client_backs_off_from_a_feed_that_sends_a_bad_piece(
    number: str, payload_file: Path, tmp_path: Path
) -> None:
    """A piece the torrent has no place for (a Unicode digit, past the
    end) is the feed's failure, as a 404 is: the client backs off and says
    so, where it stopped asking silently or asked as fast as it could."""
    import threading

    from roost.engine import Engine  # the real check: Engine.add_piece's
    from roost.enginetypes import EngineConfig

    answer = f"HTTP/1.1 200 OK\r\nX-Roost-Piece: {number}\r\nContent-Length: 1\r\n\r\nx"
    asks: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(1)
                    while data := conn.recv(65536):
                        for _ in range(data.count(b"GET ")):
                            asks.append(data)
                            conn.sendall(answer.encode("latin-1"))

    engine = Engine(EngineConfig(listen_interface="127.0.0.1"))
    tid = engine.add(make_torrent(payload_file, piece_size=16384), tmp_path / "dl")
    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client = FeedClient(
        f"http://127.0.0.1:{listener.getsockname()[1]}/",
        tid,
        add_piece=lambda i, d: engine.add_piece(tid, i, d),
        orphans=list,
        unreachable_after=0.3,
    ).start()
    try:
        time.sleep(1.5)
        assert client.counters.pieces == 0
        assert 1 <= len(asks) <= 20, len(asks)  # backoff 0.2, 0.4, 0.8 s: a few asks
        reason = _until(client.unreachable, 2)
        assert "the feed sent a piece numbered" in reason or "is not one of" in reason, reason
    finally:
        client.stop()
        stop.set()
        server.join(2)
        listener.close()
        engine.close()


def test_client_survives_a_feed_that_is_not_there() -> None:
    client = FeedClient("http://127.0.0.1:9/", "ab" * 20, add_piece=lambda i, d: None, orphans=list)
    client.start()
    time.sleep(0.5)
    client.stop()
    assert client.counters.errors >= 1 and client.counters.pieces == 0


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound, never listening
    (so held: nothing else takes it meanwhile)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _until(what: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return got


@contextlib.contextmanager
def _pulling(
    url: str,
    info_hash: str = "ab" * 20,
    add_piece: Callable[[int, bytes], None] | None = None,
    **options: Any,
) -> Iterator[FeedClient]:
    """A started ``FeedClient`` of ``url``, stopped after."""
    client = FeedClient(
        url, info_hash, add_piece=add_piece or (lambda i, d: None), orphans=list, **options
    ).start()
    try:
        yield client
    finally:
        client.stop()


def test_a_feed_refusing_connections_is_unreachable_after_a_while(refusing_port: int) -> None:
    with _pulling(f"http://127.0.0.1:{refusing_port}/", unreachable_after=30) as client:
        _until(lambda: client.counters.errors >= 2, 10)  # it keeps trying
        assert client.unreachable() is None  # not for long enough yet
        client.unreachable_after = 0.0
        assert client.unreachable() == "connection refused"


def test_a_feed_that_does_not_answer_is_unreachable() -> None:
    with socket.socket() as silent:  # connections queue in its backlog, unanswered
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        with _pulling(url, timeout=0.3, unreachable_after=0.0) as client:
            assert _until(client.unreachable, 10) == "no answer within 0.3s"


def test_a_feed_without_this_torrent_is_unreachable_and_asked_again() -> None:
    with FeedServer() as server, _pulling(server.url(), unreachable_after=0) as client:
        # it serves no torrent: every ask is a 404
        assert _until(client.unreachable, 10) == "it answered HTTP 404"
        errors = client.counters.errors
        _until(lambda: client.counters.errors > errors, 10)  # backing off, not given up


def test_a_feed_that_comes_back_is_reachable_again(payload_file: Path) -> None:
    source = _source(payload_file)
    received: dict[int, bytes] = {}
    idle = socket.socket()  # bound, not listening: refuses, until the feed starts
    idle.bind(("127.0.0.1", 0))
    port = idle.getsockname()[1]
    try:
        url = f"http://127.0.0.1:{port}/"
        with _pulling(url, source.info_hash, received.__setitem__, unreachable_after=0.0) as c:
            assert _until(c.unreachable, 10) == "connection refused"
            idle.close()
            with FeedServer(port=port) as server:
                server.add(source)
                _until(lambda: len(received) == source.num_pieces, 30)  # its backoff: 5 s at most
                assert c.unreachable() is None
    finally:
        idle.close()


def test_a_feed_that_answers_is_never_unreachable(payload_file: Path) -> None:
    source = _source(payload_file)
    with FeedServer(rate_limit=256 * KIB) as server:  # ~0.7 s of answers
        server.add(source)
        with _pulling(server.url(), source.info_hash, unreachable_after=0.0) as client:
            while not server.stats(source.info_hash).done:  # type: ignore[union-attr]
                assert client.unreachable() is None
                time.sleep(0.01)
    assert client.counters.errors == 0


@pytest.mark.parametrize("url", ["https://origin:1/", "ftp://x/", "not a url"])
def test_client_refuses_a_feed_url_it_cannot_use(url: str) -> None:
    from roost.errors import UsageError

    with pytest.raises(UsageError, match="feed URL"):
        FeedClient(url, "ab" * 20, add_piece=lambda i, d: None, orphans=list)


# Real peers, a real seeder ------------------------------------------------------


def _peer_cmd(swarm: Any, dest: Path, temp: Path, *extra: str) -> list[str]:
    return [
        "peer",
        str(swarm.torrent),
        "--dest",
        str(dest),
        "--temp-path",
        str(temp),
        "--events",
        "json",
        "--feed",
        swarm.feed_url,
        *extra,
    ]


def _wait(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        codes.append(proc.wait(max(0.1, deadline - time.monotonic())))
    return codes


def _tree_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fed_peers_get_one_copy_from_the_origin_and_the_rest_from_each_other(
    tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    art = random_file(tmp_path / "art.bin", 3 * 1024 * 1024, seed=3)
    swarm = make_swarm(art, is_file=True, piece_size=32 * KIB, feed=True)
    peers = [
        roost_procs(*_peer_cmd(swarm, tmp_path / f"d{k}", tmp_path / f"t{k}", "--linger", "5"))
        for k in range(3)
    ]
    assert _wait(peers, 60) == [0, 0, 0], [p.stderr.read() for p in peers if p.stderr]
    for k in range(3):
        assert _tree_sha(tmp_path / f"d{k}" / "t1" / "art.bin") == _tree_sha(art)
    stats: Any = swarm.feed_stats()
    # one copy, and at the end second copies of at most the tail's share
    assert stats.done and stats.tail <= int(stats.pieces * TAIL_SHARE)
    # (a second copy still on the wire when its asker completed is cut short)
    assert art.stat().st_size <= stats.bytes_sent <= art.stat().st_size + stats.tail * 32 * KIB
    # the origin's BitTorrent seeder is never handed to fed peers
    assert swarm.seeder.snapshot().uploaded == 0  # type: ignore[attr-defined]


def test_peers_finish_when_a_peer_dies_holding_pieces_nobody_else_has(
    tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    """The victim uploads almost nothing, so what the feed gave it dies with it."""
    art = random_file(tmp_path / "art.bin", 2 * 1024 * 1024, seed=4)
    swarm = make_swarm(art, is_file=True, piece_size=32 * KIB, feed=True)
    victim = roost_procs(
        *_peer_cmd(swarm, tmp_path / "dv", tmp_path / "tv", "--upload-limit", "1K", "--foreground"),
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while swarm.feed_stats().confirmed < 4:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline and victim.poll() is None
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    others = [
        roost_procs(*_peer_cmd(swarm, tmp_path / f"d{k}", tmp_path / f"t{k}", "--linger", "3"))
        for k in range(2)
    ]
    started = time.monotonic()
    assert _wait(others, 60) == [0, 0]
    took = time.monotonic() - started
    for k in range(2):
        assert _tree_sha(tmp_path / f"d{k}" / "t1" / "art.bin") == _tree_sha(art)
    stats = swarm.feed_stats()
    assert stats.repairs >= 1  # type: ignore[attr-defined]
    # the re-send of the lost pieces plus a few seconds, not a timeout
    assert took < 30


def test_peers_that_hold_every_piece_between_them_finish_without_the_seeder(
    tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    art = random_file(tmp_path / "art.bin", 3 * 1024 * 1024, seed=5)
    swarm = make_swarm(art, is_file=True, piece_size=32 * KIB, feed=True)
    # Each peer takes at most 400 KiB/s (from the feed too), so the feed has
    # spread every piece among the three long before any of them is complete.
    peers = [
        roost_procs(
            *_peer_cmd(swarm, tmp_path / f"d{k}", tmp_path / f"t{k}", "--download-limit", "400K"),
            "--linger",
            "60",  # each stays until the others have what only it holds
        )
        for k in range(3)
    ]
    deadline = time.monotonic() + 30
    while not swarm.feed_stats().done:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    swarm.seeder.stop()  # type: ignore[attr-defined]
    assert all(p.poll() is None for p in peers), "a peer finished before the seeder died"
    assert _wait(peers, 90) == [0, 0, 0]
    for k in range(3):
        assert _tree_sha(tmp_path / f"d{k}" / "t1" / "art.bin") == _tree_sha(art)


def test_a_peer_whose_feed_refuses_connections_finishes_from_the_seeder(
    tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start, refusing_port: int
) -> None:
    """The origin serves a feed, so roost's tracker keeps its seeder from fed
    peers; a peer given a feed URL where nothing listens says so once and
    downloads from the seeder over BitTorrent instead of waiting for ever."""
    art = random_file(tmp_path / "art.bin", 2 * 1024 * 1024, seed=9)
    swarm = make_swarm(art, is_file=True, piece_size=32 * KIB, feed=True)
    dead = f"http://127.0.0.1:{refusing_port}/"
    cmd = _peer_cmd(swarm, tmp_path / "d", tmp_path / "t", "--linger", "0", "--timeout", "45")
    cmd[cmd.index(swarm.feed_url)] = dead
    started = time.monotonic()
    proc = roost_procs(*cmd)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 0, err.decode()
    assert _tree_sha(tmp_path / "d" / "t1" / "art.bin") == _tree_sha(art)
    lines = [json.loads(line) for line in out.decode().splitlines()]
    warnings = [e for e in lines if e["event"] == "tracker_warning" and e["url"] == dead]
    message = f"feed {dead} cannot be reached (connection refused): going on over BitTorrent alone"
    assert [(w["message"], w["source"]) for w in warnings] == [(message, "feed")]
    assert err.decode().count("cannot be reached") == 1 and message in err.decode()
    # from the seeder (libtorrent counts its uploads about once a second)
    _until(lambda: swarm.seeder.snapshot().uploaded >= art.stat().st_size, 10)  # type: ignore[attr-defined]
    assert swarm.feed_stats().dispatched == 0  # type: ignore[attr-defined]
    assert took < 40  # a few seconds to judge the feed, then the download


def test_a_peer_fed_pieces_that_fail_their_hash_stops_and_names_the_origin(
    tmp_path: Path, make_swarm: MakeSwarm, roost_procs: Start
) -> None:
    """An origin whose payload is not the release (rewritten with its size and
    time kept, which the feed cannot see): the peer's pieces from it fail
    their hash, and it stops saying so, where it hashed and asked again for
    ever (2,880 failures in 30 s)."""
    art = random_file(tmp_path / "art.bin", 2 * 1024 * 1024, seed=11)
    swarm = make_swarm(art, is_file=True, piece_size=32 * KIB, feed=True)
    st = art.stat()
    random_file(art, st.st_size, seed=12)
    os.utime(art, ns=(st.st_atime_ns, st.st_mtime_ns))
    cmd = _peer_cmd(swarm, tmp_path / "d", tmp_path / "t", "--linger", "0", "--timeout", "60")
    proc = roost_procs(*cmd)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, err.decode()
    failed = [json.loads(line) for line in out.decode().splitlines()][-2]
    assert failed["event"] == "failed", failed
    assert failed["error"].startswith("the origin's feed sent pieces that fail their hash check")
    assert not (tmp_path / "d" / "t1").exists()


def test_a_feed_refuses_a_torrent_with_a_pad_inside_a_piece(tmp_path: Path) -> None:
    from roost import bencode
    from roost.errors import UsageError
    from roost.seeder import SeedConfig, Seeder, origin_engine

    torrent = tmp_path / "multi.torrent"
    torrent.write_bytes(
        bencode.encode(
            {
                b"announce": b"http://127.0.0.1:1/announce",
                b"info": {
                    b"name": b"multi",
                    b"piece length": 16384,
                    b"pieces": hashlib.sha1(b"ab").digest(),
                    b"files": [
                        {b"length": 1, b"path": [b"a"]},
                        {b"length": 1, b"path": [b".pad", b"1"], b"attr": b"p"},
                        {b"length": 1, b"path": [b"b"]},
                    ],
                },
            }
        )
    )
    (tmp_path / "multi").mkdir()
    (tmp_path / "multi" / "a").write_bytes(b"a")
    (tmp_path / "multi" / "b").write_bytes(b"b")
    with pytest.raises(UsageError, match="a pad file ends inside a piece"):
        Seeder(
            SeedConfig(
                torrent=torrent,
                payload_dir=tmp_path,
                engine=origin_engine(listen_interface="127.0.0.1"),
                feed_port=0,
            )
        )


@pytest.mark.parametrize("url", ["ftp://origin/", "http://origin:99999/", "origin:8997"])
def test_peer_refuses_a_bad_feed_url_before_anything_else(
    url: str, tmp_path: Path, roost_procs: Start
) -> None:
    proc = roost_procs(
        "peer", str(tmp_path / "missing.torrent"), "--dest", str(tmp_path / "d"), "--feed", url
    )
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.decode().strip() == f"roost: error: feed URL must be http://HOST:PORT/, not {url!r}"
    assert not (tmp_path / "d").exists()


def test_a_peer_refuses_a_feed_url_with_another_query_and_never_shows_its_token(
    tmp_path: Path, roost_procs: Start
) -> None:
    for url, said in [
        ("http://origin:8997/?got=1", "http://origin:8997/?token=..."),
        ("http://origin:8997/?token=a b", "http://origin:8997/?token=..."),
        ("http://origin:8997/?token=s3cret&token=s3cret", "http://origin:8997/?token=..."),
    ]:
        proc = roost_procs(
            "peer", str(tmp_path / "missing.torrent"), "--dest", str(tmp_path / "d"), "--feed", url
        )
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 2
        assert err.decode().strip() == (
            f"roost: error: feed URL {said!r}: its query may only be ?token=TOKEN"
            " (printable ASCII, no spaces)"
        )
        assert "s3cret" not in err.decode()
    assert not (tmp_path / "d").exists()


def test_a_feed_with_a_token_serves_only_the_requests_that_carry_it(payload_file: Path) -> None:
    """Else anyone who reaches the origin could take its pieces (its link is
    the deploy's) or say it got them (``got=``), so that nobody is sent them."""
    source = _source(payload_file)
    with FeedServer(token="s3cret") as server:
        server.add(source)
        assert server.url() == f"http://127.0.0.1:{server.port}/?token=s3cret"
        base = f"/feed/v1/{source.info_hash}"
        for path in (f"{base}/next", f"{base}/got?got=0-10", f"{base}/piece/0", f"{base}/stats"):
            status, _headers, body = _get(server, path)
            assert (status, body) == (403, b"403 feed token missing or wrong\n"), path
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", f"{base}/next", headers={"Authorization": "Bearer wrong"})
        assert conn.getresponse().status == 403
        conn.close()
        stats = server.stats(source.info_hash)
        assert stats is not None
        assert (stats.dispatched, stats.confirmed, stats.repairs, stats.bytes_sent) == (0, 0, 0, 0)
        fed: dict[int, bytes] = {}
        client = FeedClient(
            server.url(), source.info_hash, add_piece=fed.__setitem__, orphans=list
        ).start()
        try:
            _until(lambda: len(fed) == len(_pieces(payload_file)), 5)
            assert [fed[i] for i in sorted(fed)] == _pieces(payload_file)
        finally:
            client.stop()
        wrong = FeedClient(
            f"http://127.0.0.1:{server.port}/?token=guess",
            source.info_hash,
            add_piece=fed.__setitem__,
            orphans=list,
            unreachable_after=0.2,
        ).start()
        try:
            assert _until(wrong.unreachable, 5) == (
                "it answered HTTP 403: feed token missing or wrong"
            )
        finally:
            wrong.stop()

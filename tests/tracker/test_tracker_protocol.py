"""Sans-IO tables for the tracker's HTTP and announce parsing: bytes in, values out."""

from __future__ import annotations

import random
from urllib.parse import quote_from_bytes

import pytest

from roost import bencode
from roost.tracker import protocol as proto
from roost.tracker.protocol import HandoutPeer, ProtocolError, RequestParser
from tests.tracker.oracles import parse_announce_by_the_book

IH = bytes(range(20))
PID = b"-RO0100-" + b"\x00\xff%&=+ ?#abc"
assert len(PID) == 20


def q(b: bytes) -> str:
    return quote_from_bytes(b, safe="")


def announce_query(**over: str) -> bytes:
    params = {
        "info_hash": q(IH),
        "peer_id": q(PID),
        "port": "6881",
        "uploaded": "10",
        "downloaded": "20",
        "left": "30",
        "event": "started",
        "compact": "1",
    }
    params.update(over)
    return "&".join(f"{k}={v}" for k, v in params.items() if v is not None).encode()


GET = b"GET /announce?a=1 HTTP/1.1\r\nHost: t\r\n\r\n"


# -- HTTP request heads -------------------------------------------------------


def test_one_request_split_at_every_byte() -> None:
    for cut in range(len(GET) + 1):
        p = RequestParser()
        got = p.feed(GET[:cut]) + p.feed(GET[cut:])
        assert len(got) == 1, cut
        r = got[0]
        assert (r.method, r.path, r.query, r.http_version) == ("GET", "/announce", b"a=1", "1.1")
        assert r.headers == {"host": "t"}
        assert r.keep_alive
        assert p.pending == 0


def test_pipelined_requests_byte_by_byte() -> None:
    stream = GET + b"\r\n" + b"GET /scrape HTTP/1.0\r\n\r\n" + GET
    p = RequestParser()
    got = []
    for i in range(len(stream)):
        got += p.feed(stream[i : i + 1])
    assert [r.path for r in got] == ["/announce", "/scrape", "/announce"]
    assert [r.keep_alive for r in got] == [True, False, True]


@pytest.mark.parametrize(
    ("head", "keep"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nconnection: Close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET / HTTP/1.1\n\n", True),  # bare LF, as some scripts send
        (b"HEAD /x HTTP/1.1\r\n\r\n", True),
    ],
)
def test_keep_alive(head: bytes, keep: bool) -> None:
    (r,) = RequestParser().feed(head)
    assert r.keep_alive is keep


@pytest.mark.parametrize(
    ("head", "status", "words"),
    [
        (b"GET /announce\r\n\r\n", 400, "request line"),
        (b"GET  /announce HTTP/1.1\r\n\r\n", 400, "request line"),
        (b"GET /a HTTP/2.0\r\n\r\n", 505, "version"),
        (b"POST /announce HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, "GET only"),
        (b"get / HTTP/1.1\r\n\r\n", 400, "method"),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400, "absolute path"),
        (b"GET /\x01 HTTP/1.1\r\n\r\n", 400, "illegal character"),
        (b"GET /\xff HTTP/1.1\r\n\r\n", 400, "illegal character"),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400, "header line"),
        (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", 400, "header line"),
        (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400, "header name"),
        (b"GET / HTTP/1.1\r\n\xff: x\r\n\r\n", 400, "non-ASCII"),
        (b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 400, "bodies"),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "bodies"),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"\r\n", 431, "too many"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 431, "too large"),
    ],
)
def test_malformed_heads(head: bytes, status: int, words: str) -> None:
    p = RequestParser()
    with pytest.raises(ProtocolError, match=words) as info:
        p.feed(head)
    assert info.value.status == status
    with pytest.raises(ProtocolError):  # a failed parser stays failed
        p.feed(GET)


def _reference_parse_head(head: bytes) -> proto.Request:
    """The head parser as first written (bytes throughout): the oracle for the fast one."""
    lines = head.split(b"\n")
    parts = lines[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3:
        raise ProtocolError("malformed request line")
    method_b, target, version_b = parts
    if version_b not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ProtocolError("unsupported HTTP version", 505)
    version = version_b[5:].decode()
    if not method_b.isalpha() or not method_b.isupper():
        raise ProtocolError("malformed request method")
    if not target.startswith(b"/"):
        raise ProtocolError("request target must be an absolute path")
    if any(not 0x21 <= c <= 0x7E for c in target):
        raise ProtocolError("illegal character in request target")
    headers: dict[str, str] = {}
    if len(lines) - 1 > proto.MAX_HEADERS:
        raise ProtocolError("too many headers", 431)
    for raw in lines[1:]:
        raw = raw.rstrip(b"\r")
        colon = raw.find(b":")
        if colon <= 0 or raw[0] in b" \t":
            raise ProtocolError("malformed header line")
        name = raw[:colon]
        if b" " in name or b"\t" in name:
            raise ProtocolError("malformed header name")
        try:
            key = name.decode("ascii").lower()
        except UnicodeDecodeError as exc:
            raise ProtocolError("non-ASCII header name") from exc
        if key == "content-length" and key in headers:
            raise ProtocolError("repeated Content-Length")
        headers[key] = raw[colon + 1 :].strip().decode("latin-1")
    method = method_b.decode("ascii")
    if method not in ("GET", "HEAD"):
        raise ProtocolError(f"method {method} not allowed (GET only)", 405)
    if headers.get("content-length", "0").strip() not in ("", "0") or (
        "transfer-encoding" in headers
    ):
        raise ProtocolError("request bodies are not accepted")
    conn = headers.get("connection", "").lower()
    keep_alive = "close" not in conn if version == "1.1" else "keep-alive" in conn
    path_b, _, query = target.partition(b"?")
    return proto.Request(method, path_b.decode(), query, version, headers, keep_alive)


def test_head_parser_agrees_with_the_reference() -> None:
    rng = random.Random(5)
    starts = [b"GET /announce?a=1 HTTP/1.1", b"GET / HTTP/1.0", b"HEAD /x HTTP/1.1",
              b"POST / HTTP/1.1", b"GET x HTTP/1.1", b"GET /a\x7f HTTP/1.1", b"get / HTTP/1.1",
              b"GET / HTTP/2", b"GET /  HTTP/1.1", b"GET / HTTP/1.1\r"]  # fmt: skip
    headers = [b"Host: t", b"Connection: close", b"connection: Keep-Alive", b"X: \xa0v\xa0",
               b"Content-Length: 0", b"Content-Length: 5", b"Transfer-Encoding: chunked",
               b" folded", b"No colon", b": empty", b"Bad Name: x", b"N\xe9: x", b"A:\tb \x0b",
               b"", b"\r", b"User-Agent: libtorrent/2.0.9.0"]  # fmt: skip
    for _ in range(3000):
        lines = [rng.choice(starts)]
        lines += [rng.choice(headers) for _ in range(rng.choice([0, 1, 2, 4, 70]))]
        head = rng.choice([b"\r\n", b"\n"]).join(lines)
        got = _outcome(proto._parse_head, head)
        assert got == _outcome(_reference_parse_head, head), head


def test_a_bad_head_after_good_ones_is_kept_for_after_them() -> None:
    p = RequestParser()
    got = p.feed(GET + GET + b"BAD\r\n\r\n" + GET)
    assert len(got) == 2 and p.failed is not None and p.failed.status == 400
    with pytest.raises(ProtocolError):  # and the parser is dead
        p.feed(GET)


def test_oversized_head_without_end_is_refused_early() -> None:
    p = RequestParser()
    p.feed(b"GET /" + b"a" * 4000)
    with pytest.raises(ProtocolError) as info:
        p.feed(b"a" * 5000)
    assert info.value.status == 431


def test_random_garbage_only_raises_protocol_error() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        data = rng.randbytes(rng.randrange(1, 80))
        if rng.random() < 0.5:
            data = b"GET /announce?" + data + b" HTTP/1.1\r\n\r\n"
        try:
            for r in RequestParser().feed(data + b"\r\n\r\n"):
                proto.parse_announce(r.query)
        except ProtocolError:
            pass


# -- announce -----------------------------------------------------------------


def test_full_announce() -> None:
    a = proto.parse_announce(
        announce_query(
            numwant="7",
            key="k%01",
            token="s3cret",
            ip="198.18.0.9",
            host="web-01",
            dc="dc1",
            rack="r%20a",
            no_peer_id="1",
        )
    )
    assert (a.info_hash, a.peer_id) == (IH, PID)
    assert (a.port, a.uploaded, a.downloaded, a.left) == (6881, 10, 20, 30)
    assert (a.event, a.numwant, a.compact, a.no_peer_id) == ("started", 7, True, True)
    assert (a.ip, a.key, a.token) == ("198.18.0.9", b"k\x01", "s3cret")
    assert (a.host, a.dc, a.rack) == ("web-01", "dc1", "r a")


@pytest.mark.parametrize(
    ("over", "field", "value"),
    [
        ({"event": None}, "event", ""),
        ({"event": "empty"}, "event", ""),
        ({"event": ""}, "event", ""),
        ({"event": "completed"}, "event", "completed"),
        ({"event": "stopped"}, "event", "stopped"),
        ({"compact": "0"}, "compact", False),
        ({"compact": None}, "compact", True),
        ({"uploaded": None, "downloaded": None}, "uploaded", 0),
        ({"numwant": None}, "numwant", None),
        ({"numwant": "0"}, "numwant", 0),
        ({"ip": "::1"}, "ip", "::1"),
        ({"ip": ""}, "ip", None),
        ({"left": "0"}, "left", 0),
        ({"left": "99999999999999"}, "left", 99999999999999),
        ({"info_hash": q(b"+" * 20)}, "info_hash", b"+" * 20),
        ({"info_hash": "+" * 20}, "info_hash", b"+" * 20),  # '+' is not a space
        ({"dc": ""}, "dc", None),
    ],
)
def test_announce_fields(over: dict[str, str], field: str, value: object) -> None:
    assert getattr(proto.parse_announce(announce_query(**over)), field) == value


@pytest.mark.parametrize(
    ("query", "words"),
    [
        (announce_query(info_hash=None), "missing info_hash"),
        (announce_query(info_hash=q(b"x" * 19)), "20 bytes, got 19"),
        (announce_query(info_hash=q(b"x" * 21)), "20 bytes, got 21"),
        (announce_query(peer_id=None), "missing peer_id"),
        (announce_query(peer_id="short"), "peer_id must be 20 bytes"),
        (announce_query(port=None), "missing port"),
        (announce_query(port="0"), "out of range"),
        (announce_query(port="65536"), "out of range"),
        (announce_query(port="12a"), "port is not"),
        (announce_query(left=None), "missing left"),
        (announce_query(left="-1"), "left is not"),
        (announce_query(left=""), "left is not"),
        (announce_query(uploaded="1e3"), "uploaded is not"),
        (announce_query(numwant="-5"), "numwant is not"),
        (announce_query(left="1" * 21), "left is not"),
        (announce_query(event="finished"), "unknown event"),
        (announce_query(event="%ff"), "unknown event"),
        (announce_query(compact="yes"), "compact"),
        (announce_query(ip="999.1.1.1"), "not an IP"),
        (announce_query(ip="example.com"), "not an IP"),
        (announce_query(info_hash="%zz" + "a" * 19), "percent-escape"),
        (announce_query(info_hash="a" * 19 + "%4"), "percent-escape"),
        (announce_query() + b"&port=6882", "more than once"),
        (announce_query(token="%ff"), "token is not ASCII"),
        (announce_query(host="x" * 65), "longer than"),
        (announce_query(rack="%ff"), "not UTF-8"),
        (announce_query(dc="a%0Ab"), "control"),
        (b"", "missing info_hash"),
    ],
)
def test_malformed_announces(query: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=words) as info:
        proto.parse_announce(query)
    assert info.value.status == 400


def _outcome(parse, query: bytes) -> object:
    try:
        return parse(query)
    except ProtocolError as exc:
        return ("error", str(exc), exc.status)


def test_announce_parser_agrees_with_the_book() -> None:
    """The one-pass parser gives the same Announce, or the same error, as the
    by-the-book oracle (tests/tracker/oracles.py), repeated keys included."""
    rng = random.Random(11)
    pieces = [
        f"info_hash={q(IH)}", "info_hash=" + "".join(f"%{b:02X}" for b in IH),
        "info_hash=" + "".join(f"%{b:02x}" for b in IH), "info_hash=%%%" + "%41" * 19,
        "info_hash=" + "%4G" + "%41" * 19, "info_hash=" + "%41" * 19, "info_hash=",
        f"peer_id={q(PID)}", "peer_id=-WK0001-000000000001", "peer_id=short", "port=6881",
        "port=0", "port=x", "uploaded=5", "downloaded=-1", "left=0", "left=30", "left=",
        "event=started", "event=empty", "event=", "event=bogus", "event=%ff", "numwant=9",
        "compact=0", "compact=1", "compact=2", "no_peer_id=1", "ip=198.18.0.9", "ip=zz",
        "key=k%20", "token=t", "token=%ff", "host=h1", "dc=dc%0A", "rack=r", "other=%zz",
        "other=1", "x", "&", "=",
    ]  # fmt: skip
    valid = [pieces[:3], pieces[7:9], ["port=6881"], ["left=0", "left=30"]]
    ok = 0
    for _ in range(3000):
        parts = [rng.choice(v) for v in valid if rng.random() < 0.95]
        parts += [rng.choice(pieces) for _ in range(rng.randint(0, 4))]
        rng.shuffle(parts)
        query = "&".join(parts).encode()
        fast = _outcome(proto.parse_announce, query)
        assert fast == _outcome(parse_announce_by_the_book, query), query
        ok += isinstance(fast, proto.Announce)
    assert 300 < ok < 2700  # both outcomes well represented
    full = announce_query(host="h", dc="d", rack="r", key="k", numwant="5", ip="::1")
    assert _outcome(proto.parse_announce, full) == _outcome(parse_announce_by_the_book, full)
    assert isinstance(proto.parse_announce(full), proto.Announce)


def test_scrape_many_hashes() -> None:
    h2 = b"\x01" * 20
    hashes, token = proto.parse_scrape(f"info_hash={q(IH)}&info_hash={q(h2)}&token=t".encode())
    assert hashes == [IH, h2]
    assert token == "t"
    assert proto.parse_scrape(b"") == ([], None)
    with pytest.raises(ProtocolError, match="20 bytes"):
        proto.parse_scrape(b"info_hash=abc")


# -- rendering ----------------------------------------------------------------


PEERS = [
    HandoutPeer(b"A" * 20, "198.18.0.2", 6881),
    HandoutPeer(b"B" * 20, "2001:db8::7", 51413),
    HandoutPeer(b"C" * 20, "127.0.0.1", 1),
]


def _render(compact: bool, no_peer_id: bool = False) -> dict:
    body = proto.render_announce(
        PEERS,
        complete=3,
        incomplete=4,
        interval=5,
        min_interval=2,
        compact=compact,
        no_peer_id=no_peer_id,
    )
    return bencode.decode(body)  # strict: sorted keys, no trailing data


def test_render_compact_with_peers6() -> None:
    d = _render(True)
    assert (d[b"complete"], d[b"incomplete"], d[b"interval"], d[b"min interval"]) == (3, 4, 5, 2)
    assert d[b"peers"] == bytes([198, 18, 0, 2, 0x1A, 0xE1, 127, 0, 0, 1, 0, 1])
    assert d[b"peers6"] == bytes.fromhex("20010db8000000000000000000000007") + b"\xc8\xd5"


def test_render_compact_without_v6_has_no_peers6() -> None:
    body = proto.render_announce(
        PEERS[:1], complete=0, incomplete=0, interval=5, min_interval=2, compact=True
    )
    assert b"peers6" not in bencode.decode(body)


def test_render_dictionary_peers() -> None:
    d = _render(False)
    assert d[b"peers"] == [
        {b"ip": b"198.18.0.2", b"peer id": b"A" * 20, b"port": 6881},
        {b"ip": b"2001:db8::7", b"peer id": b"B" * 20, b"port": 51413},
        {b"ip": b"127.0.0.1", b"peer id": b"C" * 20, b"port": 1},
    ]
    assert [p.get(b"peer id") for p in _render(False, no_peer_id=True)[b"peers"]] == [None] * 3


def test_render_empty_and_failure_and_scrape() -> None:
    body = proto.render_announce(
        [], complete=0, incomplete=0, interval=5, min_interval=2, compact=False
    )
    assert bencode.decode(body)[b"peers"] == []
    assert bencode.decode(proto.render_failure("no")) == {b"failure reason": b"no"}
    d = bencode.decode(proto.render_scrape({IH: (1, 2, 3)}))
    assert d == {b"files": {IH: {b"complete": 1, b"downloaded": 2, b"incomplete": 3}}}


def test_http_response() -> None:
    r = proto.http_response(400, b"d1:ae", keep_alive=False)
    head, body = r.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request"
    assert b"Content-Length: 5" in head
    assert b"Connection: close" in head
    assert body == b"d1:ae"
    assert proto.http_response(200, b"xyz", head_only=True).endswith(b"\r\n\r\n")

"""Seeded, bounded fuzzing of the tracker's parsers (issue 12, class 5).

Announce and scrape queries are mutated from valid ones (values from a list
of known troublemakers and random bytes, keys dropped, repeated or
invented); request heads are mutated and split at random. The contract
(protocol.py's docstring): a value or ``ProtocolError`` with a 4xx status
and a one-line message, nothing else; a real tracker answers 200 or 400,
never 500, and logs no traceback. A few seconds in all.
"""

from __future__ import annotations

import http.client
import logging
import random
from urllib.parse import quote_from_bytes

import pytest

from roost import bencode
from roost.errors import ProtocolError, Refused
from roost.tracker import TrackerConfig, run_tracker_in_thread
from roost.tracker import protocol as proto
from roost.tracker.swarm import Registry

SEED = 12

_TROUBLE = [
    b"", b"0", b"1", b"-1", b"+1", b" 1", b"1 ", b"65535", b"65536", b"0x10", b"1e3", b"\xd9\xa3",
    b"9" * 20, b"9" * 21, b"%", b"%2", b"%zz", b"%00", b"%ff", b"%25", b"%2525", b"+", b"&", b"=",
    b"fe80::1%25eth0", b"fe80::1%eth0", b"fe80::1%25", b"::1", b"::", b"1.2.3.4", b"0.0.0.0",
    b"::ffff:1.2.3.4", b"999.1.1.1", b"1.2.3", b"[::1]", b"127.0.0.1:80", b"started",
    b"completed", b"stopped", b"paused", b"empty", b"STARTED", b"origin", b"feed",
    b"x" * 65, b"%0a", b"%c3%28", b"%e2%80%8f", b"\xff\xfe", b"%ef%bf%bf",
]  # fmt: skip
_KEYS = [
    b"info_hash", b"peer_id", b"port", b"uploaded", b"downloaded", b"left", b"event",
    b"numwant", b"compact", b"no_peer_id", b"ip", b"key", b"token", b"host", b"dc", b"rack",
    b"role", b"junk", b"", b"info_hash%00",
]  # fmt: skip


def _escaped(raw: bytes) -> bytes:
    return quote_from_bytes(raw, safe="").encode()


_ADDRESSES = [v for v in _TROUBLE if b":" in v or b"." in v]


def _value(rng: random.Random, key: bytes) -> bytes:
    pick = rng.random()
    if key == b"ip" and pick < 0.5:
        return rng.choice(_ADDRESSES)
    if pick < 0.5:
        return rng.choice(_TROUBLE)
    if pick < 0.7:
        return _escaped(rng.randbytes(rng.choice((19, 20, 21, rng.randrange(40)))))
    if pick < 0.85:
        return rng.randbytes(rng.randrange(1, 12))  # unescaped, anything at all
    return b"%d" % rng.randrange(-10, 1 << 70)


def _valid_announce(rng: random.Random) -> dict[bytes, bytes]:
    optional = {b"ip": rng.choice((b"127.0.0.2", b"::1")), b"key": b"k%d" % rng.randrange(9)}
    return {
        **{k: v for k, v in optional.items() if rng.random() < 0.5},
        b"info_hash": _escaped(rng.randbytes(20)),
        b"peer_id": _escaped(rng.randbytes(20)),
        b"port": b"%d" % rng.randrange(1, 65536),
        b"uploaded": b"0",
        b"downloaded": b"0",
        b"left": b"%d" % rng.randrange(0, 3),
        b"event": rng.choice((b"started", b"", b"completed", b"stopped")),
        b"compact": b"1",
    }


def mutated_query(rng: random.Random, base: dict[bytes, bytes]) -> bytes:
    pairs = list(base.items())
    for _ in range(rng.randrange(0, 4)):
        op = rng.random()
        if op < 0.55 and pairs:
            i = rng.randrange(len(pairs))
            pairs[i] = (pairs[i][0], _value(rng, pairs[i][0]))
        elif op < 0.7 and pairs:
            del pairs[rng.randrange(len(pairs))]
        elif op < 0.85 and pairs:
            pairs.append(rng.choice(pairs))
        else:
            key = rng.choice(_KEYS)
            pairs.append((key, _value(rng, key)))
    rng.shuffle(pairs)
    parts = [k if rng.random() < 0.03 else k + b"=" + v for k, v in pairs]
    if rng.random() < 0.05:
        parts.insert(rng.randrange(len(parts) + 1), b"")
    return b"&".join(parts)


def _one_line_4xx(exc: ProtocolError) -> None:
    text = str(exc)
    assert 400 <= exc.status < 500, (exc.status, text)
    assert text and "\n" not in text and len(text) < 200, text


def test_fuzz_announce_parser_and_registry() -> None:
    rng = random.Random(SEED)
    registry = Registry(TrackerConfig(port=0, max_swarms=50), 1000.0, random.Random(0))
    parsed = refused = 0
    for n in range(5000):
        query = mutated_query(rng, _valid_announce(rng))
        try:
            a = proto.parse_announce(query)
        except ProtocolError as exc:
            _one_line_4xx(exc)
            continue
        parsed += 1
        assert len(a.info_hash) == 20 and len(a.peer_id) == 20 and 0 < a.port < 65536
        remote = rng.choice(("127.0.0.1", "::1", "::ffff:10.0.0.1", "fe80::2%lo"))
        try:
            peers, complete, incomplete = registry.announce(a, remote, 1000.0 + n)
        except Refused as exc:
            assert "\n" not in str(exc)
            refused += 1
            continue
        for compact in (True, False):
            body = proto.render_announce(
                peers,
                complete=complete,
                incomplete=incomplete,
                interval=5,
                min_interval=2,
                compact=compact,
            )
            assert bencode.decode(body)[b"complete"] == complete
        if n % 500 == 0:
            registry.expire(1000.0 + n)
    assert parsed > 1000 and refused > 0  # both sides of the contract were reached


def test_fuzz_scrape_parser() -> None:
    rng = random.Random(SEED + 1)
    for _ in range(2000):
        base = {b"info_hash": _escaped(rng.randbytes(20)), b"token": b"t"}
        query = mutated_query(rng, base)
        try:
            hashes, token = proto.parse_scrape(query)
        except ProtocolError as exc:
            _one_line_4xx(exc)
            continue
        assert all(len(h) == 20 for h in hashes)
        assert token is None or token.isascii()


def test_fuzz_request_heads_split_anywhere() -> None:
    rng = random.Random(SEED + 2)
    good = b"GET /announce?a=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
    for _ in range(2000):
        data = bytearray(good * rng.randrange(1, 3))
        for _ in range(rng.randrange(0, 4)):
            i = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[i] = rng.randrange(256)
            elif op < 0.7:
                del data[i : i + rng.randrange(1, 8)]
            else:
                data[i:i] = rng.choice(
                    (b"\r\n", b"\n", b" ", b":", b"\x00", b"%", rng.randbytes(3))
                )
        parser = proto.RequestParser()
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(0, 4)))
        try:
            for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
                for req in parser.feed(bytes(data[a:b])):
                    assert req.method in ("GET", "HEAD") and req.path.startswith("/")
        except ProtocolError as exc:
            assert 400 <= exc.status < 506 and "\n" not in str(exc), exc


def test_fuzz_a_real_tracker_never_answers_500(caplog: pytest.LogCaptureFixture) -> None:
    """Mutated announces and scrapes over HTTP: 200 or 400, a bencoded body,
    no traceback logged; known peers keep serving."""
    rng = random.Random(SEED + 3)
    caplog.set_level(logging.WARNING)
    with run_tracker_in_thread(TrackerConfig(port=0, max_swarms=50)) as t:
        statuses: dict[int, int] = {}
        conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
        for n in range(1500):
            path, base = (
                ("/announce", _valid_announce(rng))
                if n % 4
                else ("/scrape", {b"info_hash": _escaped(rng.randbytes(20))})
            )
            raw = mutated_query(rng, base)
            # What a client can put in a request target: escape the rest.
            target = bytes(b if 0x21 <= b <= 0x7E and b != 0x23 else 0 for b in raw)
            target = target.replace(b"\x00", b"%00")
            conn.putrequest("GET", f"{path}?{target.decode('ascii')}", skip_accept_encoding=True)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            assert resp.status in (200, 400), (resp.status, raw, body)
            decoded = bencode.decode(body)
            reason = decoded.get(b"failure reason")
            assert resp.status == 200 or reason is not None
            if reason is not None:
                assert b"\n" not in reason and reason.decode().isprintable()
            if resp.will_close:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
        conn.close()
    assert statuses.get(200, 0) > 300 and statuses.get(400, 0) > 300, statuses
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

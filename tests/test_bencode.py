"""Bencode tables: every value round-trips, every malformed input is refused."""

from __future__ import annotations

import pytest

from roost.bencode import BencodeError, decode, decode_prefix, encode
from roost.errors import RoostError

ROUND_TRIPS = [
    (0, b"i0e"),
    (-42, b"i-42e"),
    (2**70, b"i1180591620717411303424e"),
    (b"", b"0:"),
    (b"spam", b"4:spam"),
    ([], b"le"),
    ([1, b"a", [b"b"]], b"li1e1:al1:bee"),
    ({}, b"de"),
    ({b"b": 1, b"a": b"x"}, b"d1:a1:x1:bi1ee"),
    ({b"\xff": 1, b"a": 2}, b"d1:ai2e1:\xffi1ee"),
]


@pytest.mark.parametrize(("value", "wire"), ROUND_TRIPS)
def test_round_trip(value: object, wire: bytes) -> None:
    assert encode(value) == wire
    assert decode(wire) == value


def test_str_keys_and_values_encode_as_utf8() -> None:
    assert encode({"ä": "ö"}) == b"d2:\xc3\xa42:\xc3\xb6e"


@pytest.mark.parametrize("value", [True, 1.5, None, {1: 2}, object()])
def test_unencodable(value: object) -> None:
    with pytest.raises(TypeError):
        encode(value)


MALFORMED = [
    b"",
    b"i",
    b"ie",
    b"i-e",
    b"i01e",
    b"i-0e",
    b"i1x2e",
    b"01:a",
    b"5:abc",
    b"-1:a",
    b"l",
    b"li1e",
    b"d",
    b"d1:a",
    b"di1ei2ee",
    b"d1:b1:x1:a1:ye",
    b"d1:a1:x1:a1:ye",
    b"x",
    b"i1ei2e",
    b"4:spamjunk",
    b"l" * 100 + b"e" * 100,
    b"i" + b"1" * 40 + b"e",
]


@pytest.mark.parametrize("wire", MALFORMED)
def test_malformed_is_refused(wire: bytes) -> None:
    with pytest.raises(BencodeError):
        decode(wire)


def test_error_is_a_roost_error_and_a_value_error() -> None:
    with pytest.raises(RoostError):
        decode(b"i01e")
    with pytest.raises(ValueError):
        decode(b"i01e")


def test_decode_prefix_reports_where_it_ended() -> None:
    assert decode_prefix(b"4:spamREST") == (b"spam", 6)

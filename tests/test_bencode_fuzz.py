"""Seeded, bounded fuzzing of ``bencode.decode`` (issue 12): mutated valid
encodings and deep or huge shapes give a value or a one-line
``BencodeError``, never another exception; whatever decodes re-encodes to
the same bytes (the decoder is strict). About a second."""

from __future__ import annotations

import random

from roost import bencode
from roost.errors import BencodeError


def _sample(rng: random.Random, depth: int = 0) -> object:
    pick = rng.randrange(5 if depth < 4 else 2)
    if pick == 0:
        return rng.randrange(-(1 << 70), 1 << 70)
    if pick == 1:
        return rng.randbytes(rng.randrange(8))
    if pick == 2:
        return [_sample(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.randbytes(rng.randrange(1, 5)): _sample(rng, depth + 1) for _ in range(3)}


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        i = rng.randrange(len(out) + 1)
        op = rng.random()
        if op < 0.35 and i < len(out):
            out[i] = rng.choice(b"ilde:-0123456789x\x00\xff")
        elif op < 0.6:
            del out[i : i + rng.randrange(1, 4)]
        elif op < 0.85:
            out[i:i] = rng.choice((b"i", b"l", b"d", b"e", b"0:", b"1:", b"-", b"i-0e", b"i01e"))
        else:
            out = out[: rng.randrange(len(out) + 1)]
    return bytes(out)


def _check(data: bytes) -> None:
    try:
        value = bencode.decode(data)
    except BencodeError as exc:
        text = str(exc)
        assert text and "\n" not in text and len(text) < 120, text
        return
    assert bencode.encode(value) == data


def test_fuzz_bencode_decode() -> None:
    rng = random.Random(12)
    decoded = 0
    for _ in range(5000):
        data = bencode.encode(_sample(rng))
        _check(data)
        mutated = _mutate(rng, data)
        _check(mutated)
        decoded += mutated == data
    assert decoded < 5000  # mutation did something


def test_hostile_shapes() -> None:
    shapes = [
        b"l" * 100_000,  # nesting: refused at the depth limit, no RecursionError
        b"d" * 100_000,
        b"l" * 64 + b"e" * 64,
        b"99999999999999999999:x",  # a length far past the end
        b"i" + b"9" * 100_000 + b"e",  # an integer too long to be one
        b"d" + b"1:a" * 3 + b"e",  # repeated keys
        b"d" + b"100000:" + b"k" * 100_000 + b"i1e" + b"1:ai1ee",  # unsorted, huge key
        b"",
        b"e",
        b"i-0e",
        b"0:0:",
    ]
    for data in shapes:
        _check(data)

"""Bencoding (BEP 3), sans-IO.

``encode`` accepts int, bytes, str (encoded UTF-8), list/tuple and dict with
bytes or str keys (sorted as raw bytes, as the spec requires). ``decode``
is strict: it raises ``BencodeError`` (a ``ValueError``) for anything that is
not exactly one well-formed value, so a torrent with trailing garbage, leading
zeros or unsorted keys never reaches the engine silently.
"""

from __future__ import annotations

from typing import Any

from roost.errors import BencodeError

__all__ = ["BencodeError", "decode", "encode"]


def encode(value: Any) -> bytes:
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Any, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise TypeError("cannot bencode a bool")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, str):
        _encode(value.encode("utf-8"), out)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        items = []
        for key, item in value.items():
            if isinstance(key, str):
                raw_key = key.encode("utf-8")
            elif isinstance(key, bytes):
                raw_key = key
            else:
                raise TypeError(f"cannot bencode a {type(key).__name__} dictionary key")
            items.append((raw_key, item))
        items.sort(key=lambda kv: kv[0])
        out.append(b"d")
        for raw_key, item in items:
            _encode(raw_key, out)
            _encode(item, out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes) -> Any:
    """Decode exactly one value; dict keys stay ``bytes``."""
    value, end = _decode(memoryview(data), 0, 0)
    if end != len(data):
        raise BencodeError(f"trailing data at offset {end}")
    return value


def decode_prefix(data: bytes) -> tuple[Any, int]:
    """Decode one value at the start of ``data``; return it and where it ended."""
    return _decode(memoryview(data), 0, 0)


_MAX_DEPTH = 64


def _decode(buf: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    if depth > _MAX_DEPTH:
        raise BencodeError("nesting too deep")
    if pos >= len(buf):
        raise BencodeError("unexpected end of data")
    lead = buf[pos]
    if lead == 0x69:  # i
        end = _find(buf, 0x65, pos + 1)
        digits = bytes(buf[pos + 1 : end])
        if not _valid_int(digits):
            raise BencodeError(f"bad integer at offset {pos}")
        return int(digits), end + 1
    if 0x30 <= lead <= 0x39:
        colon = _find(buf, 0x3A, pos)
        digits = bytes(buf[pos:colon])
        if not digits.isdigit() or (len(digits) > 1 and digits[0] == 0x30):
            raise BencodeError(f"bad string length at offset {pos}")
        length = int(digits)
        start = colon + 1
        if start + length > len(buf):
            raise BencodeError(f"string at offset {pos} runs past the end")
        return bytes(buf[start : start + length]), start + length
    if lead == 0x6C:  # l
        items: list[Any] = []
        pos += 1
        while True:
            if pos >= len(buf):
                raise BencodeError("unterminated list")
            if buf[pos] == 0x65:
                return items, pos + 1
            item, pos = _decode(buf, pos, depth + 1)
            items.append(item)
    if lead == 0x64:  # d
        result: dict[bytes, Any] = {}
        pos += 1
        last: bytes | None = None
        while True:
            if pos >= len(buf):
                raise BencodeError("unterminated dictionary")
            if buf[pos] == 0x65:
                return result, pos + 1
            if not 0x30 <= buf[pos] <= 0x39:
                raise BencodeError(f"dictionary key at offset {pos} is not a string")
            key_at = pos
            key, pos = _decode(buf, pos, depth + 1)
            if last is not None and key <= last:
                # the offset, not the key: a key may be megabytes of anything
                raise BencodeError(f"dictionary keys unsorted or repeated at offset {key_at}")
            last = key
            result[key], pos = _decode(buf, pos, depth + 1)
    raise BencodeError(f"unexpected byte {bytes([lead])!r} at offset {pos}")


def _find(buf: memoryview, byte: int, start: int) -> int:
    for i in range(start, min(len(buf), start + 32)):
        if buf[i] == byte:
            return i
    raise BencodeError(f"unterminated token at offset {start}")


def _valid_int(digits: bytes) -> bool:
    body = digits[1:] if digits.startswith(b"-") else digits
    if not body.isdigit():
        return False
    return not (body.startswith(b"0") and (len(body) > 1 or digits.startswith(b"-")))

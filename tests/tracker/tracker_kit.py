"""Talking to a real tracker the way the tracker tests do: peer ids,
announce queries, raw HTTP exchanges (tests/tracker/)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from urllib.parse import quote_from_bytes

from roost import bencode
from roost.tracker import TrackerHandle

IH = bytes.fromhex("aa" * 20)
IH2 = bytes.fromhex("bb" * 20)


def q(b: bytes) -> str:
    return quote_from_bytes(b, safe="")


def pid(n: int) -> bytes:
    return f"-RO0100-{n:012d}".encode()


def query(
    n: int, *, info_hash: bytes = IH, left: int = 100, event: str = "started", **extra: object
) -> str:
    params = {
        "info_hash": q(info_hash),
        "peer_id": q(pid(n)),
        "port": 6000 + n,
        "uploaded": 0,
        "downloaded": 0,
        "left": left,
        "event": event,
    }
    params.update(extra)
    return "&".join(f"{k}={v}" for k, v in params.items() if v is not None)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def announce(t: TrackerHandle, n: int, **kw: object) -> dict:
    status, body = get(f"{t.announce_url}?{query(n, **kw)}")
    assert status == 200, body
    return bencode.decode(body)


def compact_ports(d: dict) -> list[int]:
    raw = d[b"peers"]
    return sorted(int.from_bytes(raw[i + 4 : i + 6], "big") for i in range(0, len(raw), 6))


def raw_exchange(port: int, chunks: list[bytes], *, pause: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for c in chunks:
            s.sendall(c)
            if pause:
                time.sleep(pause)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while data := s.recv(65536):
            out += data
        return out


def split_responses(stream: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    while stream:
        head, rest = stream.split(b"\r\n\r\n", 1)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        out.append((head, rest[:length]))
        stream = rest[length:]
    return out

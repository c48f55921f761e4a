"""Announces as the stats tests send them: fixed info-hashes and a query
builder (tests/tracker/test_stats.py, test_web_page.py, the status CLI's)."""

from __future__ import annotations

import urllib.parse
from typing import Any

T0 = 1_700_000_000.0
IH = bytes(range(20))
IH2 = bytes(range(20, 40))
STATS_TTL = 0.25  # the real tracker's snapshot lifetime in these tests


def query(
    peer: bytes,
    left: int,
    *,
    ih: bytes = IH,
    down: int = 0,
    up: int = 0,
    event: str | None = None,
    port: int = 6881,
    **labels: str,
) -> bytes:
    q: dict[str, Any] = {
        "info_hash": ih,
        "peer_id": peer.ljust(20, b"-"),
        "port": port,
        "uploaded": up,
        "downloaded": down,
        "left": left,
        "compact": 1,
    }
    if event:
        q["event"] = event
    q.update(labels)
    return urllib.parse.urlencode(q, quote_via=urllib.parse.quote).encode()

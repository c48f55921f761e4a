"""How much any client may take of roost's HTTP servers, and the token bucket
that caps a rate: a module of its own (no ``http.server``), so that building
``roost``'s parsers, which show these defaults, and the peer's side of the
feed do not import the servers."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

__all__ = ["ServerLimits", "TokenBucket"]


@dataclass(frozen=True)
class ServerLimits:
    """How much any client may take of a server (seconds, connections)."""

    max_connections: int = 512
    backlog: int = 128
    idle_timeout: float = 60.0  # between requests on a keep-alive connection
    request_timeout: float = 10.0  # request line and headers, from their first byte
    send_timeout: float = 60.0  # each write of an answer to a client that stopped reading
    evict_after: float = 1.0  # at the cap, a connection waiting this long may be closed


class TokenBucket:
    """Bytes/s shared by every thread that calls :meth:`take`; bursts of up to
    ``burst_seconds`` of the rate. ``take`` sleeps the caller as needed."""

    def __init__(self, rate: int, *, burst_seconds: float = 0.25):
        self.rate = rate
        self.burst = rate * burst_seconds
        self._lock = threading.Lock()
        self._allowance = 0.0
        self._last = time.monotonic()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._allowance = min(self.burst, self._allowance + (now - self._last) * self.rate)
            self._last = now
            self._allowance -= n
            wait = -self._allowance / self.rate if self._allowance < 0 else 0.0
        if wait > 0:
            time.sleep(wait)

"""What roost's small read-only HTTP servers (origin, feed) share.

A :class:`TokenBucket` for upload caps, and running a ``ThreadingHTTPServer``
in a background thread (:func:`serve_in_thread`, :func:`stop_serving`).
"""

from __future__ import annotations

import threading
import time
from http.server import ThreadingHTTPServer


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


def serve_in_thread(server: ThreadingHTTPServer, name: str) -> threading.Thread:
    """Run ``server`` until :func:`stop_serving`, in a daemon thread."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=name, daemon=True
    )
    thread.start()
    return thread


def stop_serving(server: ThreadingHTTPServer | None, thread: threading.Thread | None) -> None:
    """Stop accepting, close the socket, wait (bounded) for the thread."""
    if server is not None:
        server.shutdown()
        server.server_close()
    if thread is not None:
        thread.join(5)

"""A tracker on its own thread and event loop, for callers that are not asyncio.

``run_tracker_in_thread`` is a composition root: it builds the ``Registry``
when not given one, starts a ``TrackerServer`` on a daemon thread (its
loop: ``server.new_event_loop``) and returns once the server listens, or
raises what ``start`` raised. The ``TrackerHandle`` it returns hops every
call onto that loop, since all swarm state belongs to the loop's thread.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from roost.tracker.config import TrackerConfig
from roost.tracker.server import TrackerServer, new_event_loop
from roost.tracker.swarm import Registry

__all__ = ["TrackerHandle", "run_tracker_in_thread"]

P = ParamSpec("P")
T = TypeVar("T")


def _on_loop(
    method: Callable[Concatenate[TrackerServer, P], T],
) -> Callable[Concatenate[TrackerHandle, P], T]:
    """A ``TrackerServer`` method as a ``TrackerHandle`` one: the same call,
    made on the tracker's loop (``TrackerHandle.call``)."""

    @functools.wraps(method)
    def on_loop(handle: TrackerHandle, *args: P.args, **kwargs: P.kwargs) -> T:
        return handle.call(method, handle.server, *args, **kwargs)

    return on_loop


class TrackerHandle:
    """A tracker running on its own thread and loop, for non-asyncio callers."""

    def __init__(
        self, server: TrackerServer, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ):
        self.server = server
        self._loop = loop
        self._thread = thread

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def announce_url(self) -> str:
        return self.server.announce_url

    def announce_url_with_token(self, token: str | None) -> str:
        return self.server.announce_url_with_token(token)

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the tracker's loop; return its result."""

        async def run() -> T:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    allow = _on_loop(TrackerServer.allow)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def __enter__(self) -> TrackerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_tracker_in_thread(
    config: TrackerConfig | None = None, *, registry: Registry | None = None
) -> TrackerHandle:
    """Start a tracker on a daemon thread; raise ``TrackerError`` if it cannot start.

    ``registry``: the swarms to serve, built for ``config`` (which defaults
    to the registry's, else to ``TrackerConfig()``); a new, empty one when
    not given.
    """
    if config is None:
        config = registry.config if registry is not None else TrackerConfig()
    if registry is None:
        registry = Registry(config, time.time())
    server = TrackerServer(config, registry)
    loop = new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:
            failure.append(exc)
            started.set()
            loop.close()
            return
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="roost-tracker", daemon=True)
    thread.start()
    started.wait()
    if failure:
        thread.join()
        raise failure[0]
    return TrackerHandle(server, loop, thread)

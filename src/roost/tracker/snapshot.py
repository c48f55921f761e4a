"""Status documents under polling: one short-lived snapshot, built in steps.

Theory of operation
-------------------
/stats.json walks every peer of every swarm. Built on each request, on the
event loop, it cost ~80 ms per 10,000 peers, and every browser tab and
``roost status --watch`` paid it again each second while announces waited
(bench/stats_bench.py, bench/NOTES.md). Three things keep it off the hot path:

* **One snapshot per ``ttl``.** A ``StatusCache`` keeps the last rendered
  body. A reader gets it while the snapshot is younger than ``ttl`` (its age
  counts from the moment its build *started*), so however many readers poll,
  a document is built at most once per ``ttl`` and every reader of that
  snapshot gets the same bytes, serialized once.
* **Single flight.** A reader that finds the snapshot stale starts a build,
  or joins the one already running if that one started less than ``ttl``
  ago; all of them are answered when it ends. So every response is read
  from the registry by a build that started at most ``ttl`` before the
  request arrived: an announce is visible to any request made ``ttl`` after
  it (tests/tracker/test_stats.py checks this and the build count).
* **Built in steps on the loop.** ``stats.stats_json_steps`` yields every few
  hundred peers; ``start`` drives it as an asyncio task that gives the loop
  back between steps, so an announce waits for one step (~3 ms) instead of
  the whole build. Threads would not help: the build is pure Python and
  holds the GIL, and it reads the swarms while announces change them.
  Unchanged peers cost little anyway: stats.py caches each peer's row.

``builds`` counts the builds (for tests and the bench). ``ttl == 0`` turns
the cache off: every request builds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

__all__ = ["Snapshot", "StatusCache"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    body: bytes
    started: float  # the cache's clock when the build began


class StatusCache:
    """The latest rendering of one status document, at most ``ttl`` seconds old."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not ttl >= 0:
            raise ValueError(f"ttl must be >= 0, not {ttl!r}")
        self.ttl = ttl
        self.builds = 0
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._running: asyncio.Task[Snapshot] | None = None
        self._running_started = 0.0

    def fresh(self) -> Snapshot | None:
        """The snapshot if it is younger than ``ttl``, else None."""
        snap = self._snapshot
        if snap is not None and self._clock() - snap.started < self.ttl:
            return snap
        return None

    def build(self, render: Callable[[], bytes]) -> Snapshot:
        """A fresh snapshot, else one built now, synchronously, with ``render()``."""
        snap = self.fresh()
        if snap is None:
            started = self._clock()
            self.builds += 1
            snap = self._keep(Snapshot(render(), started))
        return snap

    def start(self, steps: Callable[[], Generator[None, None, bytes]]) -> asyncio.Task[Snapshot]:
        """The running build, if it started less than ``ttl`` ago, else a new one.

        ``steps()`` makes the generator (``stats.stats_json_steps``); the task
        runs one step per loop iteration. Must be called on the loop.
        """
        running = self._running
        if (
            running is not None
            and not running.done()
            and self._clock() - self._running_started < self.ttl
        ):
            return running
        started = self._clock()
        self.builds += 1
        task = asyncio.get_running_loop().create_task(self._drive(steps(), started))
        self._running, self._running_started = task, started
        return task

    async def _drive(self, gen: Generator[None, None, bytes], started: float) -> Snapshot:
        try:
            while True:
                try:
                    next(gen)
                except StopIteration as done:
                    return self._keep(Snapshot(done.value, started))
                await asyncio.sleep(0)
        finally:
            gen.close()

    def _keep(self, snap: Snapshot) -> Snapshot:
        current = self._snapshot
        if current is None or snap.started >= current.started:
            self._snapshot = snap
        return snap

    def cancel(self) -> None:
        """Stop a running build (the tracker is stopping)."""
        if self._running is not None:
            self._running.cancel()
            self._running = None

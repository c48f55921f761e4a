"""One deploy driver: the steps every ``roost deploy`` takes, over a runner
that knows where the hosts are.

Theory of operation
-------------------
A deploy is the same steps on an embedded local fleet (:mod:`roost.local`,
``LocalRunner``) and on an inventory's hosts over SSH
(:mod:`roost.fleet.deploy`, ``SSHRunner``); only where each step runs
differs, and that is the runner's (:class:`DeployRunner`):

1. ``prepare``: make (or find) the release, start the tracker and the origin;
   it returns the :class:`ReleaseInfo` and the origin's feed URL (None: the
   origin is a plain BitTorrent seeder);
2. ``run_peers``: every host's peer at once; each peer-protocol event goes to
   the :class:`Report`, which folds it into one :class:`FleetProgress`, and
   so does each host's failure, with its step and reason;
3. ``stop``: the origin and the tracker stopped and the deploy's temporary
   files removed, whatever happened; it returns what failed to stop.

A step that cannot go on raises :class:`~roost.errors.DeployStopped`: every
host not yet finished fails with its reason. Any other error propagates
after ``stop`` (a bad source, a tag refused before anything started). The
driver owns what is the same everywhere: the live view (``on_update(progress,
now, final)`` every 0.2 s and at the end), the runner's ``poll`` for
failures it learns of on the side (the SSH fleet's), the hosts that never
reported an end, and the :class:`~roost.progress.DeploySummary`, which the
runner completes with what only it knows (``describe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from roost import events
from roost.errors import DeployStopped
from roost.progress import DONE, FAILED, DeploySummary, FleetProgress

OnUpdate = Callable[[FleetProgress, float, bool], None]


@dataclass(frozen=True)
class ReleaseInfo:
    """The release a deploy ships, as the driver needs it."""

    torrent: Path  # on this machine
    info_hash: str
    size: int  # the bytes a host receives (the torrent's length, pads included)


class Report:
    """Where a runner reports what its hosts do (the driver's progress model)."""

    def __init__(self, progress: FleetProgress):
        self.progress = progress
        #: the step each failed host failed at (``peer`` unless said)
        self.steps: dict[str, str] = {}

    def event(self, host: str, event: events.Event) -> None:
        self.progress.apply(host, event, time.monotonic())

    def fail(self, host: str, reason: str, step: str = "peer") -> None:
        """``host`` failed at ``step`` (a host that already finished keeps its end)."""
        if host in self.progress.hosts:
            self.progress.fail(host, reason, time.monotonic())
            self.steps.setdefault(host, step)

    def fail_all(self, reason: str, step: str) -> None:
        for host in self.progress.hosts:
            self.fail(host, reason, step)


class DeployRunner(Protocol):
    """Where a deploy's steps run (see the module's docstring)."""

    @property
    def hosts(self) -> Sequence[str]: ...

    async def prepare(self, report: Report) -> tuple[ReleaseInfo, str | None]: ...

    async def run_peers(self, release: ReleaseInfo, feed: str | None, report: Report) -> None: ...

    def poll(self, report: Report) -> None: ...

    async def stop(self) -> list[str]: ...

    def describe(self, summary: DeploySummary) -> None: ...


async def run(runner: DeployRunner, on_update: OnUpdate | None = None) -> DeploySummary:
    """Run a deploy through ``runner``; its summary. Host failures are in the
    summary; what ``prepare`` raises besides ``DeployStopped`` propagates."""
    progress = FleetProgress(list(runner.hosts), 0, time.monotonic())
    report = Report(progress)
    release: ReleaseInfo | None = None
    aborted: str | None = None

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.2)
            runner.poll(report)
            if on_update is not None:
                on_update(progress, time.monotonic(), False)

    ticker = asyncio.ensure_future(tick())
    try:
        release, feed = await runner.prepare(report)
        progress.total_size = release.size
        await runner.run_peers(release, feed, report)
    except DeployStopped as exc:
        aborted = exc.aborted
        report.fail_all(exc.reason, exc.step)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        cleanup_errors = await runner.stop()
    runner.poll(report)
    now = time.monotonic()
    for name, state in progress.hosts.items():
        if state.state not in (DONE, FAILED):  # its peer stopped without a final event
            report.fail(name, "peer ended without reporting")
    if on_update is not None:
        on_update(progress, now, True)
    summary = progress.summary(now)
    summary.info_hash = release.info_hash if release is not None else None
    summary.aborted = aborted
    summary.cleanup_errors = cleanup_errors
    for h in summary.hosts:
        if not h.ok:
            h.step = report.steps.get(h.name, "peer")
    runner.describe(summary)
    return summary

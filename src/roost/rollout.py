"""Rollouts: activate an installed release wave by wave, behind a health gate.

Theory of operation. Distribution and activation are separate steps: the
release reaches every host at full swarm speed (``roost deploy --activate``
installs it at ``DEST/releases/TAG`` everywhere), then :func:`run_rollout`
switches ``DEST/current`` (``roost.activation``) one wave at a time:

1. :func:`plan_waves` turns ``1,5%,25%,100%`` into cumulative waves over the
   hosts in their given order: 1 host, then up to 5% of all, 25%, all.
   A wave that would add no host is dropped.
2. For each wave, every host in it is activated, then ``--health CMD`` runs on
   each (``ROOST_TAG``, ``ROOST_PATH``, ``ROOST_PREVIOUS`` set, in the
   release's directory, bounded by its time limit).
3. If the wave's failures (activation or health) are more than
   ``max_fail_percent`` of the wave, the rollout halts: later waves are not
   touched and, with ``rollback_on_fail``, every host this rollout switched
   goes back to the release it had before. That switch undoes the
   activation (``activation.rollback(..., reject=TAG)``; over SSH ``roost
   rollback --to PREV --reject TAG``): the host's previous release is again
   the one from before the rollout, and a later ``roost rollback`` never
   picks the release that failed.

The runner (:class:`HostRunner`) is where the hosts are: this machine's local
fleet (:class:`LocalRunner`) or SSH hosts (``roost.fleet.rollout``). The
result is one :class:`HostRollout` per host, in a :class:`Rollout`.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from roost import activation, procs
from roost.activation import DEFAULT_HEALTH_TIMEOUT
from roost.errors import RoostError, UsageError

__all__ = [
    "HealthResult",
    "HostRollout",
    "HostRunner",
    "LocalRunner",
    "Rollout",
    "parse_waves",
    "plan_waves",
    "run_check",
    "run_rollout",
]

_WAVE = re.compile(r"(\d+(?:\.\d+)?)(%?)")


def parse_waves(text: str) -> tuple[tuple[float, bool], ...]:
    """``1,5%,25%,100%`` as ``((1, False), (5, True), ...)``: cumulative host
    counts or percentages of the fleet. ``UsageError`` names a bad item."""
    items: list[tuple[float, bool]] = []
    for part in text.split(","):
        m = _WAVE.fullmatch(part.strip())
        if not m or float(m.group(1)) <= 0 or (m.group(2) and float(m.group(1)) > 100):
            raise UsageError(
                f"bad wave {part.strip()!r} in --waves {text!r}: expected a host count "
                "or a percentage up to 100%, e.g. 1,5%,25%,100%"
            )
        if not m.group(2) and not m.group(1).isdigit():
            raise UsageError(f"bad wave {part.strip()!r} in --waves {text!r}: hosts are whole")
        value, percent = float(m.group(1)), bool(m.group(2))
        earlier = [v for v, p in items if p == percent]
        if earlier and value < earlier[-1]:
            raise UsageError(
                f"bad wave {part.strip()!r} in --waves {text!r}: waves are cumulative, "
                "none smaller than one before it"
            )
        items.append((value, percent))
    return tuple(items)


def plan_waves(spec: Sequence[tuple[float, bool]], hosts: Sequence[str]) -> list[list[str]]:
    """Cumulative waves over ``hosts``; the last wave always ends with every host."""
    waves: list[list[str]] = []
    done = 0
    for value, percent in spec:
        upto = math.ceil(len(hosts) * value / 100) if percent else int(value)
        upto = min(len(hosts), max(upto, done))
        if upto > done:
            waves.append(list(hosts[done:upto]))
            done = upto
    if done < len(hosts):
        waves.append(list(hosts[done:]))
    return waves


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    reason: str = ""  # why not, one line
    seconds: float = 0.0


@dataclass
class HostRollout:
    """One host's story in a rollout."""

    host: str
    wave: int | None = None  # 1-based; None: not reached (the rollout halted before)
    activated: bool = False
    previous: str | None = None
    health: str | None = None  # "ok", or why it failed; None: not run
    rolled_back: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.health in (None, "ok")


@dataclass
class Rollout:
    tag: str
    waves: list[list[str]]
    hosts: dict[str, HostRollout] = field(default_factory=dict)
    halted_at: int | None = None  # the wave whose failures halted it
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.halted_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "ok": self.ok,
            "halted_at": self.halted_at,
            "waves": self.waves,
            "seconds": round(self.seconds, 3),
            "hosts": [asdict(h) for h in self.hosts.values()],
        }


class HostRunner(Protocol):
    """Where the hosts of a rollout are, and how to act on one of them."""

    async def activate(self, host: str, tag: str) -> activation.Switch: ...

    async def health(self, host: str, command: str, env: dict[str, str]) -> HealthResult: ...

    async def switch_back(self, host: str, tag: str | None, reject: str) -> activation.Switch:
        """Send ``host`` back to ``tag``, the release it had before this
        rollout, undoing the activation of ``reject``, the rollout's (None:
        it had none, and has none current again)."""


async def run_rollout(
    runner: HostRunner,
    hosts: Sequence[str],
    tag: str,
    waves: Sequence[tuple[float, bool]],
    *,
    health: str | None = None,
    max_fail_percent: float = 0.0,
    rollback_on_fail: bool = False,
    on_wave: Any = None,
) -> Rollout:
    """Activate ``tag`` wave by wave; see the module's docstring."""
    started = time.monotonic()
    plan = plan_waves(waves, hosts)
    result = Rollout(tag, plan, {h: HostRollout(h) for h in hosts})
    for number, wave in enumerate(plan, 1):
        for host in wave:
            result.hosts[host].wave = number
        await asyncio.gather(*(_one(runner, result.hosts[h], tag, health) for h in wave))
        failed = sum(1 for h in wave if not result.hosts[h].ok)
        if on_wave is not None:
            on_wave(number, wave, failed)
        if failed and failed * 100 > max_fail_percent * len(wave):
            result.halted_at = number
            break
    if result.halted_at is not None and rollback_on_fail:
        switched = [h for h in result.hosts.values() if h.activated]
        await asyncio.gather(*(_back(runner, h, tag) for h in switched))
    result.seconds = time.monotonic() - started
    return result


async def _one(runner: HostRunner, h: HostRollout, tag: str, health: str | None) -> None:
    try:
        switch = await runner.activate(h.host, tag)
    except RoostError as exc:
        h.error = f"activate: {exc}"
        return
    h.activated = switch.changed
    h.previous = switch.previous
    if health:
        env = {"ROOST_TAG": tag, "ROOST_PREVIOUS": switch.previous or ""}
        checked = await runner.health(h.host, health, env)
        h.health = "ok" if checked.ok else checked.reason


async def _back(runner: HostRunner, h: HostRollout, tag: str) -> None:
    try:
        await runner.switch_back(h.host, h.previous, tag)
        h.rolled_back = True
    except RoostError as exc:
        h.error = (h.error + "; " if h.error else "") + f"rollback: {exc}"


async def run_check(
    command: str, *, env: dict[str, str], cwd: Path | None, timeout: float
) -> HealthResult:
    """Run ``command`` through the shell, in its own process group, killed
    (the whole group) after ``timeout`` seconds."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_shell(
        command,
        env={**os.environ, **env},
        cwd=cwd if cwd is not None and cwd.is_dir() else None,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        procs.kill_group(proc.pid)
        await proc.wait()
        return HealthResult(False, f"timed out after {timeout:g}s", time.monotonic() - started)
    seconds = time.monotonic() - started
    if proc.returncode == 0:
        return HealthResult(True, "", seconds)
    lines = (err or b"").decode(errors="replace").strip().splitlines()
    tail = f": {lines[-1]}" if lines else ""
    return HealthResult(False, f"exited with status {proc.returncode}{tail}", seconds)


class LocalRunner:
    """Destinations on this machine (a local fleet): host NAME is ``dests[NAME]``.
    With ``keep``, each activation prunes to that many releases."""

    def __init__(
        self,
        dests: dict[str, Path],
        *,
        timeout: float = DEFAULT_HEALTH_TIMEOUT,
        keep: int | None = None,
    ):
        self.dests = dests
        self.timeout = timeout
        self.keep = keep

    async def activate(self, host: str, tag: str) -> activation.Switch:
        return await asyncio.to_thread(activation.activate, self.dests[host], tag, keep=self.keep)

    async def health(self, host: str, command: str, env: dict[str, str]) -> HealthResult:
        path = self.dests[host] / activation.RELEASES / env["ROOST_TAG"]
        return await run_check(
            command, env={**env, "ROOST_PATH": str(path)}, cwd=path, timeout=self.timeout
        )

    async def switch_back(self, host: str, tag: str | None, reject: str) -> activation.Switch:
        return await asyncio.to_thread(activation.rollback, self.dests[host], tag, reject=reject)

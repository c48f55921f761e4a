"""Fleet progress: a sans-IO model of a deploy, and its renderings.

:class:`FleetProgress` takes the peer protocol's events (``roost.events``)
per host, with the time passed in, and answers: how many hosts wait,
download, are done or failed; the aggregate rate; an ETA; the summary
(:class:`DeploySummary`, one :class:`HostSummary` per host: the same record
for a local fleet and for an inventory's hosts). ``render_live`` and
``render_summary`` turn it into lines of text (pure); :class:`TerminalDisplay`
is the thin I/O shell that redraws them in place on a TTY, or prints a plain
line now and then otherwise.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from roost import events

WAITING, DOWNLOADING, INSTALLING, DONE, FAILED = (
    "waiting",
    "downloading",
    "installing",
    "done",
    "failed",
)


@dataclass
class HostProgress:
    name: str
    state: str = WAITING
    progress: float = 0.0
    down: int = 0
    up: int = 0
    reused: int = 0  # bytes taken from an earlier release instead of downloaded
    rate_down: int = 0
    peers: int = 0
    hash_failures: int = 0
    started: float | None = None
    finished: float | None = None
    downloaded: float | None = None  # when the download completed
    path: str | None = None
    already: bool = False  # the destination held the verified release (a re-run)
    error: str | None = None
    warning: str | None = None  # the tracker's last complaint, if any

    @property
    def ok(self) -> bool:
        return self.state == DONE

    def seconds(self, origin: float) -> float | None:
        return None if self.finished is None else self.finished - origin

    def summary(self, origin: float) -> HostSummary:
        seconds = self.seconds(origin)
        return HostSummary(
            name=self.name,
            ok=self.ok,
            seconds=None if seconds is None else round(seconds, 3),
            download_seconds=(
                None if self.downloaded is None else round(self.downloaded - origin, 3)
            ),
            bytes_down=self.down,
            bytes_reused=self.reused,
            bytes_up=self.up,
            path=self.path,
            error=self.error,
            warning=self.warning,
            already_installed=self.already,
        )


@dataclass
class HostSummary:
    """One host's line of a deploy's summary (``--json``: ``to_json``)."""

    name: str
    ok: bool
    seconds: float | None  # from the deploy's start to the host's end
    download_seconds: float | None  # from the deploy's start to the download's end
    bytes_down: int
    bytes_reused: int  # taken from an earlier release instead of downloaded
    bytes_up: int
    path: str | None  # where the release was installed
    error: str | None
    warning: str | None  # the tracker's last complaint, if any
    #: the step that failed (``peer``, ``bootstrap``, ...; None when ok)
    step: str | None = None
    #: the address roost reached the host at (SSH); None on a local fleet
    address: str | None = None
    #: the host held the verified release already (a re-run)
    already_installed: bool = False
    #: the rollout's wave, health check and roll-back (``--activate``)
    wave: int | None = None
    health: str | None = None
    rolled_back: bool = False

    def to_json(self, *, rollout: bool = False) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        if not rollout:
            for key in ("wave", "health", "rolled_back"):
                del doc[key]
        return doc


@dataclass
class OriginBytes:
    """What the origin uploaded: over BitTorrent and its feed together, and the feed's part."""

    bytes_up: int
    feed_up: int


@dataclass
class DeploySummary:
    """A deploy's outcome: every host's, and the deploy's own (``--json``: ``to_json``).

    The same record for a local fleet and for an inventory's hosts; what only
    one of them knows is None on the other (``dest``, ``seeder``, ``torrent``
    locally; ``tracker``, ``seed_from`` over SSH)."""

    seconds: float
    size: int
    hosts: list[HostSummary]
    tag: str | None = None
    info_hash: str | None = None
    #: the local fleet's destination root
    dest: str | None = None
    #: what the local origin uploaded
    seeder: OriginBytes | None = None
    #: the release's .torrent, when kept (``--out``)
    torrent: str | None = None
    #: the SSH fleet's tracker host, and where the origin seeded from
    tracker: str | None = None
    seed_from: str | None = None
    #: why the deploy stopped before every host ran (``--max-fail-percent``)
    aborted: str | None = None
    #: what failed to stop afterwards (tracker, seeder)
    cleanup_errors: list[str] = field(default_factory=list)
    #: the rollout (``Rollout.to_json()``) of ``--activate``, and whether it held
    rollout: dict[str, Any] | None = None
    rollout_ok: bool = True

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts) and self.rollout_ok

    @property
    def hosts_ok(self) -> int:
        return sum(1 for h in self.hosts if h.ok)

    @property
    def hosts_failed(self) -> int:
        return len(self.hosts) - self.hosts_ok

    def host(self, name: str) -> HostSummary:
        return next(h for h in self.hosts if h.name == name)

    def to_json(self) -> dict[str, Any]:
        rollout = self.rollout is not None
        return {
            "ok": self.ok,
            "seconds": self.seconds,
            "size": self.size,
            "hosts_ok": self.hosts_ok,
            "hosts_failed": self.hosts_failed,
            "hosts": [h.to_json(rollout=rollout) for h in self.hosts],
            "tag": self.tag,
            "info_hash": self.info_hash,
            "dest": self.dest,
            "seeder": None if self.seeder is None else dataclasses.asdict(self.seeder),
            "torrent": self.torrent,
            "tracker": self.tracker,
            "seed_from": self.seed_from,
            "aborted": self.aborted,
            "cleanup_errors": list(self.cleanup_errors),
            **({"rollout": self.rollout} if rollout else {}),
        }


class FleetProgress:
    def __init__(self, hosts: list[str], total_size: int, now: float):
        self.hosts = {name: HostProgress(name) for name in hosts}
        self.total_size = total_size
        self.started = now

    def apply(self, host: str, event: events.Event, now: float) -> None:
        """Fold one peer-protocol event into the host's state."""
        h = self.hosts[host]
        if h.state in (DONE, FAILED):
            return
        if h.started is None:
            h.started = now
        if isinstance(event, events.Progress):
            h.state = DOWNLOADING
            h.progress, h.down, h.up = event.progress, event.down, event.up
            h.rate_down, h.peers = event.rate_down, event.peers
        elif isinstance(event, events.HashFailed):
            h.hash_failures += 1
        elif isinstance(event, events.Reused):
            h.reused = event.bytes
        elif isinstance(event, events.TrackerWarning):
            # A feed's warning names the feed itself.
            why = event.message or "no reason given"
            h.warning = why if event.source == "feed" else f"tracker: {why}"
        elif isinstance(event, events.Complete):
            h.state, h.progress, h.rate_down, h.downloaded = INSTALLING, 1.0, 0, now
        elif isinstance(event, events.Installed):
            h.path, h.already = event.path, event.already
        elif isinstance(event, events.Failed):
            self.fail(host, event.error or "failed", now)
        elif isinstance(event, events.Done):
            h.down, h.up, h.reused = event.down, event.up, event.reused or h.reused
            if event.ok:
                h.state, h.progress, h.finished, h.rate_down = DONE, 1.0, now, 0
            else:
                self.fail(host, h.error or "failed", now)

    def fail(self, host: str, error: str, now: float) -> None:
        h = self.hosts[host]
        if h.state in (DONE, FAILED):
            return
        if h.warning and "timed out" in error and h.warning not in error:
            # a peer that never found the swarm: the tracker usually says why
            error = f"{error} (last {h.warning})"
        h.state, h.error, h.finished, h.rate_down = FAILED, error, now, 0

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys((WAITING, DOWNLOADING, INSTALLING, DONE, FAILED), 0)
        for h in self.hosts.values():
            out[h.state] += 1
        return out

    @property
    def finished(self) -> bool:
        return all(h.state in (DONE, FAILED) for h in self.hosts.values())

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts.values())

    def rate(self) -> int:
        return sum(h.rate_down for h in self.hosts.values() if h.state == DOWNLOADING)

    def remaining(self) -> int:
        return sum(
            int(self.total_size * (1 - h.progress))
            for h in self.hosts.values()
            if h.state in (WAITING, DOWNLOADING)
        )

    def eta(self) -> float | None:
        rate, left = self.rate(), self.remaining()
        if left == 0:
            return 0.0
        return left / rate if rate > 0 else None

    def summary(self, now: float) -> DeploySummary:
        """The hosts' summary at ``now``; the deploy adds what it knows."""
        return DeploySummary(
            seconds=round(now - self.started, 3),
            size=self.total_size,
            hosts=[h.summary(self.started) for h in self.hosts.values()],
        )


# Rendering (pure) -------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _bar(fraction: float, width: int = 20) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "#" * filled + "." * (width - filled)


def headline(fleet: FleetProgress, now: float, title: str = "deploy") -> str:
    c = fleet.counts()
    eta = fleet.eta()
    eta_text = "-" if eta is None else f"{eta:.0f}s"
    return (
        f"{title}: {c[DONE]}/{len(fleet.hosts)} done, {c[FAILED]} failed, "
        f"{c[DOWNLOADING] + c[INSTALLING]} active, {c[WAITING]} waiting | "
        f"{human_bytes(fleet.rate())}/s | ETA {eta_text} | {now - fleet.started:.1f}s"
    )


def render_live(
    fleet: FleetProgress, now: float, title: str = "deploy", max_hosts: int = 16
) -> list[str]:
    """The lines of the live display: a headline, then one line per host
    while the fleet is small (the hosts still working first otherwise)."""
    lines = [headline(fleet, now, title)]
    hosts = list(fleet.hosts.values())
    if len(hosts) > max_hosts:
        active = [h for h in hosts if h.state in (DOWNLOADING, INSTALLING)]
        hosts = sorted(active, key=lambda h: h.progress)[:max_hosts]
    width = max((len(h.name) for h in hosts), default=4)
    for h in hosts:
        if h.state == FAILED:
            detail = h.error or ""
        else:
            detail = f"{human_bytes(h.rate_down)}/s, {h.peers} peers"
            if h.warning and h.state == DOWNLOADING and not h.peers:
                detail += f" | {h.warning}"
        percent = f"{h.progress * 100:5.1f}%"
        lines.append(f"  {h.name:<{width}} [{_bar(h.progress)}] {percent} {h.state:<11} {detail}")
    return lines


def render_summary(summary: DeploySummary) -> list[str]:
    """The per-host table printed at the end of a deploy (from ``summary``);
    a host that held the release already says so where a failure's reason goes."""
    reused = any(h.bytes_reused for h in summary.hosts)
    rows: list[tuple[str, ...]] = [("host", "result", "seconds", "down", "reused", "up", "error")]
    for h in summary.hosts:
        rows.append(
            (
                h.name,
                "ok" if h.ok else "FAILED",
                "-" if h.seconds is None else f"{h.seconds:.1f}",
                human_bytes(h.bytes_down),
                human_bytes(h.bytes_reused),
                human_bytes(h.bytes_up),
                h.error or ("already installed" if h.ok and h.already_installed else ""),
            )
        )
    if not reused:  # the column only when an earlier release was reused
        rows = [row[:4] + row[5:] for row in rows]
    n = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(n)]
    out = [
        "  ".join([*(row[i].ljust(widths[i]) for i in range(n)), row[n]]).rstrip() for row in rows
    ]
    out.append(
        f"{summary.hosts_ok} of {len(summary.hosts)} hosts ok, "
        f"{summary.hosts_failed} failed, in {summary.seconds:.1f}s"
    )
    if summary.seeder is not None:
        copies = summary.seeder.bytes_up / max(1, summary.size)
        out.append(f"origin uploaded {copies:.2f} copies of {summary.size} bytes")
    return out


# The I/O shell ---------------------------------------------------------------


class TerminalDisplay:
    """Redraw the live lines in place on a TTY; else a plain line every few s."""

    def __init__(
        self, stream: TextIO | None = None, *, interval: float = 0.2, plain_interval: float = 5.0
    ):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if self.tty else plain_interval
        self._drawn = 0
        self._last = float("-inf")

    def update(self, lines: list[str], now: float, *, force: bool = False) -> None:
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if not self.tty:
            self.stream.write(lines[0] + "\n")
        else:
            if self._drawn:
                self.stream.write(f"\x1b[{self._drawn}F")
            for line in lines:
                self.stream.write("\x1b[2K" + line + "\n")
            # Clear lines left over from a taller previous frame.
            for _ in range(self._drawn - len(lines)):
                self.stream.write("\x1b[2K\n")
            extra = max(0, self._drawn - len(lines))
            if extra:
                self.stream.write(f"\x1b[{extra}F")
            self._drawn = len(lines)
        self.stream.flush()

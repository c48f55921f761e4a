"""The embedded local fleet: a whole deploy on this machine.

``roost deploy SRC --tag TAG --local N --dest DIR`` runs, in one command:
a tracker (embedded, on 127.0.0.1, serving only this release's info-hash),
a seeder (its engine on its own thread, the session's one owner), and N
peers as separate ``python -m roost peer ... --events json`` processes, each
with its own destination ``DIR/host-K`` and its own temp path. The peers'
JSON events feed a :class:`~roost.progress.FleetProgress`; the caller gets a
summary with one entry per host. A host failing never stops the others.

At the end every process this deploy started is stopped: the peer fronts by
their pid, the lingering peer workers by the pid files under their temp
paths. Temp paths are removed (the release too, unless ``out_dir`` was
given).

A deploy killed before that end (SIGKILL) leaves them behind; so each one
writes its work directories and peer pids in its ledger (``roost.ledger``)
before making them, and begins by cleaning what dead deploys' ledgers name.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from roost import deploy, events, ledger, procs
from roost.activation import RELEASES
from roost.deploy import OnUpdate
from roost.errors import PeerProtocolError, RoostError, UsageError
from roost.metainfo import validate_tag
from roost.peer.config import InstallOptions
from roost.progress import DeploySummary, OriginBytes
from roost.release import Release, create_release
from roost.seeder import SeedConfig, SeederThread, origin_engine
from roost.tracker import TrackerConfig, TrackerHandle, run_tracker_in_thread

DEFAULT_HOSTS = 4
MAX_HOSTS = 256


@dataclass(frozen=True)
class LocalDeployConfig:
    source: Path
    tag: str
    dest: Path
    hosts: int = DEFAULT_HOSTS
    is_file: bool = False
    tar: bool = False  # pack a directory into TAG.tar instead of a tree release
    #: how each host installs (handed to its peer as ``roost peer`` flags)
    install: InstallOptions = field(default_factory=InstallOptions)
    out_dir: Path | None = None
    piece_size: int | None = None
    super_seed: bool = False
    #: where the hosts' download areas go; None: RAM (/dev/shm) when it has
    #: room for every host's copy, else the system temp directory
    work_dir: Path | None = None
    upload_limit: int = 0
    download_limit: int = 0
    extra_peer_args: tuple[str, ...] = field(default=())
    #: The origin hands each piece to one peer over its feed (roost.feed);
    #: off: the origin is a plain BitTorrent seeder.
    feed: bool = True
    #: install into DEST/host-K/releases/TAG, for ``roost.activation`` to
    #: switch DEST/host-K/current afterwards (``roost deploy --activate``)
    activate: bool = False

    def host_dest(self, name: str) -> Path:
        """Where host ``name`` installs: DEST/NAME, or DEST/NAME/releases."""
        return Path(self.dest) / name / (RELEASES if self.activate else "")

    #: SSH key to sign the release with (``roost create --sign``)
    sign_key: Path | None = None
    #: where this deploy's ledger goes (``roost.ledger``); None: per user
    run_dir: Path | None = None


@dataclass
class _Host:
    name: str
    dest: Path
    temp: Path
    proc: subprocess.Popen[bytes]
    stderr_tail: list[str] = field(default_factory=list)


def peer_command(
    config: LocalDeployConfig, torrent: Path, dest: Path, temp: Path, feed: str | None = None
) -> list[str]:
    """The ``roost peer`` command line of one local host (pure)."""
    cmd = [sys.executable, "-m", "roost", "peer", str(torrent)]
    cmd += ["--dest", str(dest), "--temp-path", str(temp), "--events", "json"]
    cmd += ["--listen", "127.0.0.1"]
    if feed:
        cmd += ["--feed", feed]
    cmd += config.install.flags(
        upload_limit=config.upload_limit, download_limit=config.download_limit
    )
    return cmd + list(config.extra_peer_args)


def deploy_local(config: LocalDeployConfig, on_update: OnUpdate | None = None) -> DeploySummary:
    """Run the deploy (``roost.deploy.run`` over a :class:`LocalRunner`);
    its summary. ``on_update(fleet, now, final)`` is called as events arrive
    (the display). Raises ``UsageError`` for bad arguments and whatever
    creating the release raises; host failures are in the summary."""
    return asyncio.run(deploy.run(LocalRunner(config), on_update))


class LocalRunner:
    """A deploy's steps on this machine: an embedded tracker and seeder, and
    one ``roost peer`` process per host (``roost.deploy.DeployRunner``)."""

    def __init__(self, config: LocalDeployConfig):
        validate_tag(config.tag)
        if not 1 <= config.hosts <= MAX_HOSTS:
            raise UsageError(f"--local wants 1 to {MAX_HOSTS} hosts, not {config.hosts}")
        if not Path(config.source).exists():
            raise UsageError(f"source {config.source} does not exist")
        self.config = config
        self.hosts = [f"host-{k}" for k in range(1, config.hosts + 1)]
        self._records: ledger.Ledger | None = None
        self._made: list[Path] = []  # work directories, removed at the end
        self._tracker: TrackerHandle | None = None
        self._seeder: SeederThread | None = None
        self._origin: OriginBytes | None = None
        self._peers: list[_Host] = []
        self._release: Release | None = None
        self._hosts_root: Path | None = None  # the hosts' download areas

    async def prepare(self, report: deploy.Report) -> tuple[deploy.ReleaseInfo, str | None]:
        return await asyncio.to_thread(self._prepare)

    def _prepare(self) -> tuple[deploy.ReleaseInfo, str | None]:
        config = self.config
        self._records = records = ledger.begin(config.run_dir, "deploy-local")
        root = records.make_dir(Path(tempfile.gettempdir()), "roost-local-")
        self._made.append(root)
        self._tracker = tracker = run_tracker_in_thread(
            TrackerConfig(
                bind="127.0.0.1", port=0, interval=2, min_interval=1, allow_list_only=True
            )
        )
        self._release = release = create_release(
            Path(config.source),
            config.tag,
            config.out_dir or root / "release",
            announce=[tracker.announce_url],
            is_file=config.is_file,
            piece_size=config.piece_size,
            sign_key=config.sign_key,
            tar=config.tar,
        )
        tracker.allow(release.info_hash, config.tag, size=release.total_size)
        self._seeder = seeder = SeederThread(
            SeedConfig.of(
                release,
                super_seeding=config.super_seed,
                engine=origin_engine(listen_interface="127.0.0.1"),
                feed_port=0 if config.feed else None,
                feed_token=secrets.token_hex(12),
            )
        )
        self._hosts_root = root
        if config.work_dir is not None or _ram_has_room(config.hosts * release.total_size):
            parent = config.work_dir or Path("/dev/shm")
            parent.mkdir(parents=True, exist_ok=True)
            self._hosts_root = records.make_dir(parent, "roost-local-")
            self._made.append(self._hosts_root)
        info = deploy.ReleaseInfo(release.torrent, release.info_hash, release.size)
        return info, seeder.seeder.feed_url()

    async def run_peers(
        self, release: deploy.ReleaseInfo, feed: str | None, report: deploy.Report
    ) -> None:
        assert self._records is not None and self._hosts_root is not None
        loop = asyncio.get_running_loop()
        queued: asyncio.Queue[_Item] = asyncio.Queue()

        def put(item: _Item) -> None:
            loop.call_soon_threadsafe(queued.put_nowait, item)

        for name in self.hosts:
            dest, temp = self.config.host_dest(name), self._hosts_root / name
            proc = subprocess.Popen(
                peer_command(self.config, release.torrent, dest, temp, feed),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            self._records.add_process(proc.pid)
            host = _Host(name, dest, temp, proc)
            self._peers.append(host)
            _start_readers(host, put)
        await _watch(self._peers, queued, self.config.install.timeout, report)

    def poll(self, report: deploy.Report) -> None:
        pass  # every failure is reported as it happens

    async def stop(self) -> list[str]:
        await asyncio.to_thread(self._stop)
        return []

    def _stop(self) -> None:
        seeder = self._seeder
        if seeder is not None:
            seeder.seeder.stop()  # it winds down while the peers stop
        for host in self._peers:
            procs.stop_child(host.proc, grace=15)
        # The lingering workers (their pid files are under the hosts' temp paths).
        with contextlib.suppress(RoostError):
            procs.stop_all([f for host in self._peers for f in procs.pid_files(host.temp)])
        if seeder is not None:
            seeder.stop()
            # Read once it has stopped: its last snapshot, taken as it ended,
            # holds every byte it sent (a live one can predate the transfer).
            snap = seeder.snapshot()
            self._origin = OriginBytes(snap.uploaded + snap.feed_sent, snap.feed_sent)
        if self._tracker is not None:
            self._tracker.stop()
        for made in self._made:
            shutil.rmtree(made, ignore_errors=True)
        if self._records is not None:
            self._records.close()

    def describe(self, summary: DeploySummary) -> None:
        summary.tag = self.config.tag
        summary.dest = str(self.config.dest)
        summary.seeder = self._origin
        if self.config.out_dir and self._release is not None:
            summary.torrent = str(self._release.torrent)


def _ram_has_room(size: int) -> bool:
    """Whether /dev/shm (RAM) can hold ``size`` bytes with memory to spare.

    The hosts of a local fleet share one disk, which real hosts do not; their
    download areas in RAM keep the disk for the destinations only."""
    try:
        free = shutil.disk_usage("/dev/shm").free
        meminfo = Path("/proc/meminfo").read_text().split()
        available = int(meminfo[meminfo.index("MemAvailable:") + 1]) * 1024
    except (OSError, ValueError, IndexError):
        return False
    return size * 1.2 + (1 << 30) < free and size * 2 + (1 << 30) < available


#: what a host's reader puts on the queue: an event, or None when its peer exited
_Item = tuple[str, "events.Event | None"]


def _start_readers(host: _Host, put: Callable[[_Item], None]) -> None:
    def read_stdout() -> None:
        assert host.proc.stdout is not None
        with host.proc.stdout:
            for line in host.proc.stdout:
                try:
                    event = events.load(line)
                except PeerProtocolError:
                    continue  # not an event (the peer's text goes to stderr)
                if event is not None:
                    put((host.name, event))
        put((host.name, None))

    def read_stderr() -> None:
        assert host.proc.stderr is not None
        with host.proc.stderr:
            for line in host.proc.stderr:
                text = line.decode(errors="replace").strip()
                if text:
                    host.stderr_tail = [*host.stderr_tail[-19:], text]

    threading.Thread(target=read_stdout, daemon=True).start()
    threading.Thread(target=read_stderr, daemon=True).start()


async def _watch(
    hosts: list[_Host], queued: asyncio.Queue[_Item], timeout: float | None, report: deploy.Report
) -> None:
    """Until every host's peer has exited: its events to ``report``, and its
    exit, when it came without a final event, as its failure."""
    by_name = {h.name: h for h in hosts}
    exited: set[str] = set()
    deadline = None if not timeout else report.progress.started + timeout + 10
    while len(exited) < len(hosts):
        try:
            name, event = await asyncio.wait_for(queued.get(), 0.2)
        except asyncio.TimeoutError:
            name, event = "", None  # nothing arrived: only the clock moved
        if name and event is None:
            exited.add(name)
            host = by_name[name]
            status = await asyncio.to_thread(host.proc.wait)
            # It died without a failed event (those come first and win): its
            # last line on stderr is the context, not the reason.
            tail = f": {host.stderr_tail[-1]}" if host.stderr_tail else ""
            report.fail(name, f"peer exited with status {status}{tail}")
        elif event is not None:
            report.event(name, event)
        if deadline is not None and time.monotonic() > deadline:
            for host in hosts:
                if host.name not in exited:
                    report.fail(host.name, f"timed out after {timeout:g}s")
                    await asyncio.to_thread(procs.stop_child, host.proc, grace=15)

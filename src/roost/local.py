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

import contextlib
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roost import events, ledger, procs
from roost.activation import RELEASES
from roost.errors import PeerProtocolError, RoostError, UsageError
from roost.metainfo import validate_tag
from roost.peer.config import InstallOptions
from roost.progress import FleetProgress
from roost.release import create_release
from roost.seeder import SeedConfig, SeederThread
from roost.tracker import TrackerConfig, run_tracker_in_thread

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


def deploy_local(
    config: LocalDeployConfig,
    on_update: Callable[[FleetProgress, float, bool], None] | None = None,
) -> dict[str, Any]:
    """Run the deploy; return the summary (``FleetProgress.summary`` plus the
    release and the seeder's upload). ``on_update(fleet, now, final)`` is
    called as events arrive (the display). Raises ``UsageError`` for bad
    arguments and whatever creating the release raises; host failures are
    reported in the summary, not raised."""
    validate_tag(config.tag)
    if not 1 <= config.hosts <= MAX_HOSTS:
        raise UsageError(f"--local wants 1 to {MAX_HOSTS} hosts, not {config.hosts}")
    if not Path(config.source).exists():
        raise UsageError(f"source {config.source} does not exist")
    records = ledger.begin(config.run_dir, "deploy-local")
    hosts: list[_Host] = []
    tracker = seeder = None
    root = hosts_root = None
    try:
        root = hosts_root = records.make_dir(Path(tempfile.gettempdir()), "roost-local-")
        tracker = run_tracker_in_thread(
            TrackerConfig(
                bind="127.0.0.1", port=0, interval=2, min_interval=1, allow_list_only=True
            )
        )
        out_dir = config.out_dir or root / "release"
        release = create_release(
            Path(config.source),
            config.tag,
            out_dir,
            announce=[tracker.announce_url],
            is_file=config.is_file,
            piece_size=config.piece_size,
            sign_key=config.sign_key,
            tar=config.tar,
        )
        tracker.allow(release.info_hash, config.tag, size=release.total_size)
        seeder = SeederThread(
            SeedConfig.of(
                release,
                super_seeding=config.super_seed,
                listen_interface="127.0.0.1",
                feed_port=0 if config.feed else None,
            )
        )
        feed_url = seeder.seeder.feed_url()
        if config.work_dir is not None or _ram_has_room(config.hosts * release.total_size):
            parent = config.work_dir or Path("/dev/shm")
            parent.mkdir(parents=True, exist_ok=True)
            hosts_root = records.make_dir(parent, "roost-local-")
        names = [f"host-{k}" for k in range(1, config.hosts + 1)]
        fleet = FleetProgress(names, release.size, time.monotonic())
        queued: queue.Queue[_Item] = queue.Queue()
        for name in names:
            dest, temp = config.host_dest(name), hosts_root / name
            proc = subprocess.Popen(
                peer_command(config, release.torrent, dest, temp, feed_url),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            records.add_process(proc.pid)
            host = _Host(name, dest, temp, proc)
            hosts.append(host)
            _start_readers(host, queued)
        _watch(fleet, hosts, queued, config.install.timeout, on_update)
        summary = fleet.summary(time.monotonic())
        summary["tag"] = config.tag
        summary["info_hash"] = release.info_hash
        summary["dest"] = str(config.dest)
        snap = seeder.snapshot()
        summary["seeder"] = {"bytes_up": snap.uploaded + snap.feed_sent, "feed_up": snap.feed_sent}
        if config.out_dir:
            summary["torrent"] = str(release.torrent)
        return summary
    finally:
        if seeder is not None:
            seeder.seeder.stop()  # it winds down while the peers stop
        for host in hosts:
            procs.stop_child(host.proc, grace=15)
        # The lingering workers (their pid files are under the hosts' temp paths).
        with contextlib.suppress(RoostError):
            procs.stop_all([f for host in hosts for f in procs.pid_files(host.temp)])
        if seeder is not None:
            seeder.stop()
        if tracker is not None:
            tracker.stop()
        for made in (root, hosts_root):
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
        records.close()


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


def _start_readers(host: _Host, queued: queue.Queue[_Item]) -> None:
    def read_stdout() -> None:
        assert host.proc.stdout is not None
        with host.proc.stdout:
            for line in host.proc.stdout:
                try:
                    event = events.load(line)
                except PeerProtocolError:
                    continue  # not an event (the peer's text goes to stderr)
                if event is not None:
                    queued.put((host.name, event))
        queued.put((host.name, None))

    def read_stderr() -> None:
        assert host.proc.stderr is not None
        with host.proc.stderr:
            for line in host.proc.stderr:
                text = line.decode(errors="replace").strip()
                if text:
                    host.stderr_tail = [*host.stderr_tail[-19:], text]

    threading.Thread(target=read_stdout, daemon=True).start()
    threading.Thread(target=read_stderr, daemon=True).start()


def _watch(
    fleet: FleetProgress,
    hosts: list[_Host],
    queued: queue.Queue[_Item],
    timeout: float | None,
    on_update: Callable[[FleetProgress, float, bool], None] | None,
) -> None:
    by_name = {h.name: h for h in hosts}
    exited: set[str] = set()
    deadline = None if not timeout else fleet.started + timeout + 10
    while len(exited) < len(hosts):
        try:
            item: _Item | None = queued.get(timeout=0.2)
        except queue.Empty:
            item = None  # nothing arrived: only the clock moved
        now = time.monotonic()
        name, event = item if item is not None else ("", None)
        if item is not None and event is None:
            exited.add(name)
            host = by_name[name]
            status = host.proc.wait()
            if fleet.hosts[name].state != "done":
                # It died without a failed event (those come first and win):
                # its last line on stderr is the context, not the reason.
                tail = f": {host.stderr_tail[-1]}" if host.stderr_tail else ""
                fleet.fail(name, f"peer exited with status {status}{tail}", now)
        elif event is not None:
            fleet.apply(name, event, now)
        if deadline is not None and now > deadline:
            for host in hosts:
                if host.name not in exited:
                    fleet.fail(host.name, f"timed out after {timeout:g}s", now)
                    procs.stop_child(host.proc, grace=15)
        if on_update is not None:
            on_update(fleet, now, False)
    if on_update is not None:
        on_update(fleet, time.monotonic(), True)

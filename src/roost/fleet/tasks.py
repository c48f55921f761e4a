"""Murder's verbs across the fleet, over SSH (``roost fleet <verb>``).

| Murder task / ansible-lssd playbook       | roost                                   |
|-------------------------------------------|-----------------------------------------|
| distribute_files / setup.yml              | ``roost fleet bootstrap`` (``roost bootstrap``) |
| start_tracker / start_tracker.yml         | ``roost fleet start-tracker``           |
| stop_tracker                              | ``roost fleet stop-tracker``            |
| create_torrent / create_torrent.yml       | ``roost fleet create``                  |
| download_torrent                          | ``roost fleet fetch-torrent``           |
| start_seeding / start_seeder.yml          | ``roost fleet start-seeding``           |
| stop_seeding                              | ``roost fleet stop-seeding``            |
| stop_all_seeding                          | ``roost fleet stop-all-seeding``        |
| stop_seeder_and_tracker.yml               | ``roost fleet stop-all-seeding`` + ``stop-tracker`` |
| peer / deploy.yml                         | ``roost fleet peer``                    |
| stop_all_peering / stop_all_peers.yml     | ``roost fleet stop-all-peering``        |
| (temp files)                              | ``roost fleet clean``                   |
| full_deploy.yml / cap deploy              | ``roost deploy SRC -i INVENTORY``       |

``roost fleet peer`` uploads the release's .torrent to every peer as
``TEMP/torrents/TAG.torrent``, TAG being the torrent's own tag (the name it
installs under, DEST/TAG), and runs the host's peer on that file: the
torrent is read and checked here first, so a file that is not a torrent, or
is another release than the one asked for, is refused before any host is
reached.

Every process started on a host is recorded by ``roost.fleet.remote`` in a
pid file under the temp path; stopping reads that file only, and stopping
what is not running reports "not running", never an error.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roost import events
from roost._parse import load_json
from roost.errors import PeerProtocolError, RemoteError, UsageError
from roost.fleet.config import FleetConfig
from roost.fleet.hosts import Host, Inventory
from roost.fleet.remote import stats_path
from roost.fleet.ssh import Fleet, HostResult, Session
from roost.metainfo import read_torrent_file, validate_tag
from roost.peer.config import InstallOptions

q = shlex.quote


@dataclass(frozen=True)
class Remote:
    """Paths and commands on the hosts, from the fleet config."""

    cfg: FleetConfig

    @property
    def temp(self) -> str:
        return self.cfg.temp_path.rstrip("/") or "/"

    @property
    def releases(self) -> str:
        return f"{self.temp}/releases"

    @property
    def torrents(self) -> str:
        return f"{self.temp}/torrents"

    def stats_file(self, name: str) -> str:
        """Where ``name`` (started by :meth:`start`) writes its final counts;
        the helper's ``stop`` hands them back."""
        return str(stats_path(Path(self.temp), name))

    def roost(self, *args: str) -> str:
        return " ".join([q(self.cfg.remote_roost), *map(q, args)])

    def helper(self, *args: str) -> str:
        return " ".join(
            [q(f"{self.cfg.venv}/bin/python"), "-m", "roost.fleet.remote", *map(q, args)]
        )

    def start(
        self,
        name: str,
        argv: Sequence[str],
        ready_url: str | None = None,
        wait: float = 1.0,
        ready_log: str | None = None,
    ) -> str:
        extra = ["--ready-url", ready_url] if ready_url else []
        if ready_log:
            extra += ["--ready-log", ready_log]
        return self.helper(
            "start",
            *extra,
            "--wait",
            f"{wait:g}",
            self.temp,
            name,
            "--",
            self.cfg.remote_roost,
            *argv,
        )


def _json_result(s: Session, text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        try:
            data = load_json(line, f"{s.host.name}'s answer", PeerProtocolError)
        except PeerProtocolError:
            continue
        if isinstance(data, dict):
            if not data.get("ok", True):
                raise RemoteError(s.host.name, s.step, str(data.get("error") or "failed"))
            return data
    raise RemoteError(s.host.name, s.step, f"unexpected output: {text.strip()[-200:]!r}")


async def _helper(
    fleet: Fleet,
    step: str,
    hosts: Iterable[Host],
    command: str | Callable[[Session], str],
    timeout: float | None = None,
) -> dict[str, HostResult[dict[str, Any]]]:
    async def fn(s: Session) -> dict[str, Any]:
        cmd = command(s) if callable(command) else command
        out = await s.run(cmd, check=False)
        if out.exit_status != 0 and not out.stdout.strip():
            last = out.stderr.strip().splitlines()[-1:] or [f"exit status {out.exit_status}"]
            raise RemoteError(
                s.host.name,
                step,
                f"exited with status {out.exit_status}: {last[0]}",
                exit_status=out.exit_status,
                stderr_tail=out.stderr[-2000:],
            )
        return _json_result(s, out.stdout)

    return await fleet.each(step, fn, hosts=list(hosts), timeout=timeout)


# ---------------------------------------------------------------- tracker


def announce_url(inv: Inventory, cfg: FleetConfig, token: str | None = None) -> str:
    url = f"{tracker_page(inv, cfg)}announce"
    return f"{url}?token={token}" if token else url


def tracker_page(inv: Inventory, cfg: FleetConfig) -> str:
    """The tracker's live page (``roost status --tracker`` takes it too)."""
    host = inv.tracker.address
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{cfg.tracker_port}/"


def locality_lines(hosts: Iterable[Host]) -> list[str]:
    """``ADDR/32 dc=.. rack=..`` lines for the tracker's --locality file."""
    out = []
    for h in hosts:
        labels = h.labels
        if labels and h.address.replace(".", "").isdigit():
            parts = [f"dc={labels['datacenter']}"] if "datacenter" in labels else []
            parts += [f"rack={labels['rack']}"] if "rack" in labels else []
            out.append(f"{h.address}/32 {' '.join(parts)}")
    return out


async def start_tracker(
    fleet: Fleet,
    inv: Inventory,
    cfg: FleetConfig,
    *,
    allow: Sequence[str] = (),
    token: str | None = None,
    stats_allow: Sequence[str] = (),
) -> dict[str, HostResult[dict[str, Any]]]:
    """Start ``roost tracker`` detached on the tracker host (Murder start_tracker);
    ``stats_allow``: networks that may read its page, /stats.json and /metrics."""
    r = Remote(cfg)
    argv = ["tracker", "--bind", "0.0.0.0", "--port", str(cfg.tracker_port)]
    for h in allow:
        argv += ["--allow", h]
    if token:
        argv += ["--token", token, "--require-tokens"]
    # the host itself stays allowed: the readiness check below reads /stats.json
    for cidr in ["127.0.0.0/8", *stats_allow] if stats_allow else []:
        argv += ["--stats-allow", cidr]
    loc = locality_lines(inv.peers)
    prefix = ""
    if loc:
        path = f"{r.temp}/tracker-locality.txt"
        argv += ["--locality", path]
        prefix = f"mkdir -p {q(r.temp)} && printf '%s\\n' {' '.join(map(q, loc))} > {q(path)} && "
    ready = f"http://127.0.0.1:{cfg.tracker_port}/stats.json"
    cmd = prefix + r.start("tracker", argv, ready_url=ready, wait=15)
    return await _helper(fleet, "start-tracker", [inv.tracker], cmd)


async def stop(
    fleet: Fleet, cfg: FleetConfig, step: str, hosts: Iterable[Host], patterns: Sequence[str]
) -> dict[str, HostResult[dict[str, Any]]]:
    """Stop the processes whose pid files match ``patterns`` (not running: fine)."""
    r = Remote(cfg)
    return await _helper(fleet, step, hosts, r.helper("stop", r.temp, *patterns))


async def stop_tracker(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig
) -> dict[str, HostResult[dict[str, Any]]]:
    return await stop(fleet, cfg, "stop-tracker", [inv.tracker], ["tracker"])


# ---------------------------------------------------------------- releases


async def create(
    fleet: Fleet,
    inv: Inventory,
    cfg: FleetConfig,
    *,
    tag: str,
    files_path: str,
    local_dir: Path,
    is_file: bool = False,
    tracker: str | None = None,
    piece_size: int | None = None,
) -> dict[str, HostResult[dict[str, Any]]]:
    """``roost create`` on the seeder from a path there (a directory packed
    into ``releases/TAG.tar``), then fetch the .torrent (Murder
    create_torrent + download_torrent)."""
    r = Remote(cfg)
    argv = [
        files_path,
        "--tag",
        tag,
        "--out",
        r.releases,
        "--tracker",
        tracker or announce_url(inv, cfg),
        "--json",
    ]
    # Murder's layout on the seeder: releases/TAG.tar, seeded --from there
    argv.append("--file" if is_file else "--tar")
    if piece_size:
        argv += ["--piece-size", str(piece_size)]
    src = files_path
    if src.startswith("~/"):
        # let the remote shell expand ~ (quoted paths would not be)
        cmd = " ".join([q(cfg.remote_roost), "create", f"~/{q(src[2:])}", *map(q, argv[1:])])
    else:
        cmd = r.roost("create", *argv)

    async def fn(s: Session) -> dict[str, Any]:
        out = await s.run(f"mkdir -p {q(r.releases)} && {cmd}")
        data = _json_result(s, out.stdout)
        local_dir.mkdir(parents=True, exist_ok=True)
        await s.get(f"{r.releases}/{tag}.torrent", local_dir / f"{tag}.torrent")
        data["torrent"] = str(local_dir / f"{tag}.torrent")
        return data

    return await fleet.each("create", fn, hosts=[inv.seeder])


async def fetch_torrent(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig, *, tag: str, local_dir: Path
) -> dict[str, HostResult[dict[str, Any]]]:
    r = Remote(cfg)

    async def fn(s: Session) -> dict[str, Any]:
        local_dir.mkdir(parents=True, exist_ok=True)
        await s.get(f"{r.releases}/{tag}.torrent", local_dir / f"{tag}.torrent")
        return {"ok": True, "torrent": str(local_dir / f"{tag}.torrent")}

    return await fleet.each("fetch-torrent", fn, hosts=[inv.seeder])


# ---------------------------------------------------------------- seeding


async def start_seeding(
    fleet: Fleet,
    inv: Inventory,
    cfg: FleetConfig,
    *,
    tag: str,
    upload: Sequence[Path] = (),
    super_seed: bool = False,
    feed_port: int | None = None,
    feed_token: str | None = None,
) -> dict[str, HostResult[dict[str, Any]]]:
    """Seed ``TEMP/releases/TAG.torrent`` on the seeder, detached, announcing the
    address the controller reaches it at (uploading ``upload`` there first;
    ``super_seed``: hand out each piece once; ``feed_port``: serve the
    origin's feed there too, on that address, to requests with ``feed_token``)."""
    r = Remote(cfg)

    async def fn(s: Session) -> dict[str, Any]:
        if upload:
            await s.put(list(upload), r.releases)
        argv = [
            "seed",
            f"{r.releases}/{tag}.torrent",
            "--from",
            r.releases,
            "--announce-ip",
            s.peer_address,
            "--stats-file",
            r.stats_file(f"seed-{tag}"),
        ]
        if super_seed:
            argv.append("--super-seed")
        if feed_port is not None:
            argv += ["--feed-port", str(feed_port), "--feed-bind", s.peer_address]
            if feed_token:
                argv += ["--feed-token", feed_token]
        out = await s.run(r.start(f"seed-{tag}", argv, wait=1.5), check=False)
        return _json_result(s, out.stdout or out.stderr)

    return await fleet.each("start-seeding", fn, hosts=[inv.seeder])


async def stop_seeding(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig, *, tag: str | None
) -> dict[str, HostResult[dict[str, Any]]]:
    """Stop seeding ``tag`` (all seeding when ``tag`` is None) on the seeders."""
    pattern = f"seed-{tag}" if tag else "seed-*"
    step = "stop-seeding" if tag else "stop-all-seeding"
    return await stop(fleet, cfg, step, inv.seeders, [pattern])


# ---------------------------------------------------------------- peers


@dataclass(frozen=True)
class PeerOptions:
    tag: str
    dest: str
    #: how each host installs; its ``trust`` names key files *on the hosts*
    install: InstallOptions = field(default_factory=InstallOptions)
    upload_limit: int = 0
    download_limit: int = 0
    #: the origin's feed (``roost peer --feed``), None: BitTorrent only
    feed: str | None = None


def release_tag(torrent: Path, tag: str | None = None) -> str:
    """The tag ``torrent`` installs under on the hosts, DEST/TAG: its x-roost
    tag, or the name of a torrent made by another tool. Reads and checks
    ``torrent`` here.

    Raises ``ReleaseError`` if ``torrent`` is not valid metainfo,
    ``UsageError`` if it cannot be read, its tag is not usable or it is not
    release ``tag`` (when given).
    """
    meta = read_torrent_file(torrent)
    own = meta.tag or meta.name
    if tag is not None and own != tag:
        raise UsageError(f"{torrent} is release {own!r}, not {tag!r}")
    try:
        return validate_tag(own)
    except UsageError as exc:
        raise UsageError(f"{torrent}: {exc}") from None


async def peer(
    fleet: Fleet,
    cfg: FleetConfig,
    hosts: Sequence[Host],
    torrent: Path,
    opts: PeerOptions,
    on_event: Callable[[str, events.Event], None],
) -> dict[str, HostResult[dict[str, Any]]]:
    """Upload ``torrent`` as ``TEMP/torrents/TAG.torrent`` and run ``roost
    peer --events json`` on that file on every host at once, passing each
    event to ``on_event(host, event)`` (Murder peer); a host's result is its
    ``done`` event as a JSON object. ``torrent`` is release ``opts.tag``:
    the caller made it, or checked it with :func:`release_tag`.
    """
    r = Remote(cfg)
    remote_torrent = f"{r.torrents}/{opts.tag}.torrent"

    async def fn(s: Session) -> dict[str, Any]:
        await s.put_as(torrent, remote_torrent)
        argv = [
            "peer",
            remote_torrent,
            "--dest",
            opts.dest,
            "--events",
            "json",
            "--temp-path",
            r.temp,
            "--announce-ip",
            s.peer_address,
            *opts.install.flags(upload_limit=opts.upload_limit, download_limit=opts.download_limit),
            *(["--feed", opts.feed] if opts.feed else []),
        ]
        done: events.Done | None = None
        reason: str | None = None

        def line(text: str) -> None:
            nonlocal done, reason
            try:
                event = events.load(text)
            except PeerProtocolError:
                return  # not an event: a line of the shell or of ssh
            if isinstance(event, events.Done):
                done = event
            elif isinstance(event, events.Failed):
                reason = event.error
            if event is not None:
                on_event(s.host.name, event)

        cmd = r.helper("exec", r.temp, f"peer-{opts.tag}", "--", cfg.remote_roost, *argv)
        result = await s.stream(cmd, line, check=False)
        if done is not None and done.ok:
            return events.as_dict(done)
        if not reason:
            err = result.stderr.strip().splitlines()
            reason = err[-1] if err else f"peer exited with status {result.exit_status}"
        raise RemoteError(
            s.host.name,
            "peer",
            str(reason),
            exit_status=result.exit_status,
            stderr_tail=result.stderr[-2000:],
        )

    timeout = (opts.install.timeout + 60) if opts.install.timeout else fleet.options.step_timeout
    return await fleet.each("peer", fn, hosts=hosts, timeout=timeout)


async def stop_all_peering(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig
) -> dict[str, HostResult[dict[str, Any]]]:
    return await stop(fleet, cfg, "stop-all-peering", inv.peers, ["peer-*", "linger"])


async def clean(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig
) -> dict[str, HostResult[dict[str, Any]]]:
    r = Remote(cfg)
    return await _helper(fleet, "clean", inv.remote_hosts, r.helper("clean", r.temp))


# ---------------------------------------------------------------- activation


async def roost_on(
    fleet: Fleet, cfg: FleetConfig, step: str, hosts: Iterable[Host], argv: Sequence[str]
) -> dict[str, HostResult[dict[str, Any]]]:
    """Run ``roost ARGV --json`` on each host (``roost releases``, ``activate``,
    ``rollback``); its JSON object is the host's result."""
    return await _helper(fleet, step, hosts, Remote(cfg).roost(*argv, "--json"))

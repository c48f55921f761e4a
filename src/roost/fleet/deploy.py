"""One-shot ``roost deploy SRC --tag TAG -i INVENTORY --dest DIR``.

Theory of operation. The plan (``DeployPlan``) is resolved first from the
arguments, ``roost.toml`` and the inventory's group_vars (ansible-lssd's
``tag``, ``destination_path``), without I/O beyond reading those files. Then,
over one ``Fleet`` (one SSH connection per host, reused by every step):

1. the release is packed on the controller, announcing to the tracker host
   with a per-deploy token;
2. roost is bootstrapped on every host (idempotent, skipped where the same
   wheels are installed);
3. the tracker starts on the tracker host (``--bind 0.0.0.0``, allow-listing
   only this info-hash, requiring the token);
4. the origin seeds: from the controller (``--seed-from controller``, the
   default: a local ``roost seed`` announcing the address the hosts see the
   controller at) or from the seeder host (payload uploaded there first);
5. every peer gets the .torrent and runs ``roost peer --events json
   --announce-ip ADDR`` (ADDR: the address SSH reached it at), all at once;
   their JSON lines feed a ``FleetProgress`` model for the live view;
6. seeder and tracker are stopped, whatever happened.

A host that fails a step is reported with its reason and left out of later
steps; the others go on. A re-run finds hosts already holding the verified
release (the peer reports them installed) and completes only the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roost import deploy, ledger, procs
from roost.deploy import OnUpdate
from roost.errors import DeployStopped, FleetAborted, RemoteError, RoostError
from roost.fleet import tasks
from roost.fleet.bootstrap import bootstrap
from roost.fleet.config import FleetConfig
from roost.fleet.hosts import Inventory
from roost.fleet.ssh import Fleet, SSHOptions
from roost.progress import DeploySummary, OriginBytes


@dataclass(frozen=True)
class DeployPlan:
    source: Path
    tag: str
    inventory: Inventory
    cfg: FleetConfig
    ssh: SSHOptions
    peer: tasks.PeerOptions
    is_file: bool = False
    #: a directory as TAG.tar (always when a seeder host seeds it: Murder's
    #: releases/TAG.tar layout there) instead of a tree release
    tar: bool = False
    seed_from: str = "controller"
    super_seed: bool = False
    #: the origin hands each piece to one host over its feed (roost.feed)
    feed: bool = True
    do_bootstrap: bool = True
    out_dir: Path | None = None
    piece_size: int | None = None
    #: a path on the seeder host (``seeder:PATH``): packed and seeded there,
    #: as ansible-lssd's full_deploy.yml does with seeder_files_path
    seeder_path: str | None = None
    sign_key: Path | None = None  # sign the release made on this machine
    extra: dict[str, Any] = field(default_factory=dict)
    #: where this deploy's ledger goes (``roost.ledger``); None: per user
    run_dir: Path | None = None


def _controller_seed(
    torrent: Path,
    payload: Path,
    announce_ip: str,
    log: Path,
    stats: Path,
    super_seed: bool = False,
    feed_port: int | None = None,
    feed_token: str | None = None,
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "roost",
                "seed",
                str(torrent),
                "--payload",
                str(payload),
                "--announce-ip",
                announce_ip,
                # Listen (and so announce) only where the hosts reach us: on
                # every interface, libtorrent also announced through the
                # default route, off the fleet's network.
                "--listen",
                announce_ip,
                "--exit-with-parent",
                "--stats-file",
                str(stats),
                *(["--super-seed"] if super_seed else []),
                *(["--feed-port", str(feed_port)] if feed_port is not None else []),
                *(["--feed-token", feed_token] if feed_token else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def _free_port(address: str) -> int:
    """A TCP port free on ``address`` now (the controller's feed binds it next)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _feed_url(host: str, port: int, token: str) -> str:
    """The feed's URL for the hosts (its token in it: ``roost peer --feed``)."""
    base = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    return f"{base}?token={token}"


async def run_deploy(plan: DeployPlan, on_update: OnUpdate | None = None) -> DeploySummary:
    """Execute ``plan`` (``roost.deploy.run`` over an :class:`SSHRunner`);
    its summary (``ok``, ``hosts`` with their step and reason).

    Raises ``RoostError`` only for what stops the whole deploy before any host
    is touched (bad source, tag); host failures are in the summary.
    """
    return await deploy.run(SSHRunner(plan), on_update)


class SSHRunner:
    """A deploy's steps on an inventory's hosts, over one SSH connection per
    host (``roost.deploy.DeployRunner``; the steps: the module's docstring)."""

    def __init__(self, plan: DeployPlan):
        self.plan = plan
        inv = plan.inventory
        self.hosts = [h.name for h in inv.peers]
        self.seed_from = "seeder" if plan.seeder_path is not None else plan.seed_from
        self.fleet = Fleet(inv.remote_hosts, plan.ssh)
        self._seed_proc: subprocess.Popen[bytes] | None = None
        self._records: ledger.Ledger | None = None
        self._work: Path | None = None
        #: what the origin uploaded, as it stopped (its ``--stats-file``)
        self._origin: OriginBytes | None = None

    async def prepare(self, report: deploy.Report) -> tuple[deploy.ReleaseInfo, str | None]:
        from roost.release import create_release

        plan, fleet = self.plan, self.fleet
        inv, cfg = plan.inventory, plan.cfg
        url = tasks.announce_url(inv, cfg, token := secrets.token_hex(12))
        # The release and the seeder's log; a killed deploy's are removed by
        # the next one, by its ledger.
        self._records = records = ledger.begin(plan.run_dir, "deploy-fleet")
        self._work = work = records.make_dir(Path(tempfile.gettempdir()), "roost-deploy-")
        out_dir = plan.out_dir or work
        out_dir.mkdir(parents=True, exist_ok=True)
        release: _Release | None = None
        if plan.seeder_path is None:
            made = await asyncio.to_thread(
                create_release,
                plan.source,
                plan.tag,
                out_dir,
                announce=[url],
                is_file=plan.is_file,
                piece_size=plan.piece_size,
                sign_key=plan.sign_key,
                tar=plan.tar or plan.seed_from == "seeder",
            )
            release = _Release(made.torrent, made.info_hash, made.size, made.payload)
            report.progress.total_size = release.total_size
        try:
            if plan.do_bootstrap:
                await bootstrap(fleet, cfg)
            self.poll(report)
            if release is None:
                release = await _create_on_seeder(fleet, plan, url, out_dir)
                if release is None:
                    err = fleet.failures.get(inv.seeder.name)
                    raise DeployStopped("create", f"seeder {err.reason if err else 'failed'}")
                report.progress.total_size = release.total_size
            feed = await self._start_origin(release, token, work)
        except FleetAborted as exc:
            raise DeployStopped("aborted", f"not run: {exc}", aborted=str(exc)) from exc
        return deploy.ReleaseInfo(release.torrent, release.info_hash, release.total_size), feed

    async def _start_origin(self, release: _Release, token: str, work: Path) -> str | None:
        """The tracker on the tracker host, then the origin; its feed's URL."""
        plan, fleet = self.plan, self.fleet
        inv, cfg = plan.inventory, plan.cfg
        # the address the hosts see the controller at: the SSH connection's own end
        seen = await fleet.each("controller-address", _local_address, hosts=[inv.tracker])
        addr = seen[inv.tracker.name].value if seen[inv.tracker.name].ok else None
        tr = await tasks.start_tracker(
            fleet,
            inv,
            cfg,
            allow=[release.info_hash],
            token=token,
            # this machine may watch the swarm (roost status, the page)
            stats_allow=[_host_cidr(addr)] if addr else [],
        )
        if not tr[inv.tracker.name].ok:
            raise DeployStopped("start-tracker", f"tracker {tr[inv.tracker.name].reason}")
        feed_token = secrets.token_hex(12)  # only this deploy's hosts take from its feed
        if self.seed_from == "seeder":
            sr = await tasks.start_seeding(
                fleet,
                inv,
                cfg,
                tag=plan.tag,
                # packed on the seeder already, or uploaded there now
                upload=[release.torrent, release.payload] if release.payload else [],
                super_seed=plan.super_seed,
                feed_port=cfg.feed_port if plan.feed else None,
                feed_token=feed_token,
            )
            if not sr[inv.seeder.name].ok:
                raise DeployStopped("start-seeding", f"seeder {sr[inv.seeder.name].reason}")
            return _feed_url(inv.seeder.address, cfg.feed_port, feed_token) if plan.feed else None
        if not addr:
            raise DeployStopped("seed", "cannot learn the controller's address as hosts see it")
        assert release.payload is not None  # packed here: seeder:PATH seeds there
        feed_port = _free_port(addr) if plan.feed else None
        self._seed_proc = seed_proc = _controller_seed(
            release.torrent,
            release.payload,
            addr,
            work / "seed.log",
            work / "seed-stats.json",
            plan.super_seed,
            feed_port,
            feed_token,
        )
        assert self._records is not None
        self._records.add_process(seed_proc.pid)
        await asyncio.sleep(0.5)
        if seed_proc.poll() is not None:
            tail = (work / "seed.log").read_text(errors="replace").strip()[-300:]
            raise DeployStopped("seed", f"seeding on the controller failed: {tail}")
        return _feed_url(addr, feed_port, feed_token) if feed_port is not None else None

    async def run_peers(
        self, release: deploy.ReleaseInfo, feed: str | None, report: deploy.Report
    ) -> None:
        plan = self.plan
        try:
            await tasks.peer(
                self.fleet,
                plan.cfg,
                [h for h in plan.inventory.peers if h.name not in self.fleet.failures],
                release.torrent,
                dataclasses.replace(plan.peer, feed=feed),
                report.event,
            )
        except FleetAborted as exc:
            raise DeployStopped("aborted", f"not run: {exc}", aborted=str(exc)) from exc
        self.poll(report)

    def poll(self, report: deploy.Report) -> None:
        """The fleet's failures so far, into the report (step: reason)."""
        for name, err in self.fleet.failures.items():
            report.fail(name, f"{err.step}: {err.reason}", err.step)

    async def stop(self) -> list[str]:
        """Seeder and tracker stopped, the connections closed, the work
        directory removed; what failed to stop."""
        procs.stop_child(self._seed_proc)
        fleet, plan = self.fleet, self.plan
        if self._seed_proc is not None and self._work is not None:
            self._origin = _origin_bytes(_read_json(self._work / "seed-stats.json"))
        # clean-up reaches the tracker and seeder even if they failed a step
        failures = dict(fleet.failures)
        fleet.failures.clear()
        try:
            if self.seed_from == "seeder":
                stopped = await tasks.stop_seeding(fleet, plan.inventory, plan.cfg, tag=plan.tag)
                result = stopped.get(plan.inventory.seeder.name)
                value = result.value if result is not None and result.ok else None
                stats = value.get("stats", {}) if isinstance(value, dict) else {}
                self._origin = _origin_bytes(stats.get(f"seed-{plan.tag}"))
            await tasks.stop_tracker(fleet, plan.inventory, plan.cfg)
        except RoostError:
            pass
        errors = [str(e) for e in fleet.failures.values()]
        fleet.failures.clear()
        fleet.failures.update(failures)
        await fleet.close()
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)  # with --out, the release is elsewhere
        if self._records is not None:
            self._records.close()
        return errors

    def describe(self, summary: DeploySummary) -> None:
        addresses = {h.name: h.address for h in self.plan.inventory.remote_hosts}
        for h in summary.hosts:
            h.address = addresses.get(h.name)
        summary.tag = self.plan.tag
        summary.tracker = self.plan.inventory.tracker.name
        summary.seed_from = self.seed_from
        summary.seeder = self._origin


def _origin_bytes(data: object) -> OriginBytes | None:
    """The seed's ``--stats-file`` counts; None when it left none (killed,
    or an older roost on the seeder)."""
    if not isinstance(data, dict):
        return None
    try:
        return OriginBytes(int(data["bytes_up"]), int(data["feed_up"]))
    except (KeyError, TypeError, ValueError):
        return None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class _Release:
    torrent: Path  # on the controller
    info_hash: str
    total_size: int
    payload: Path | None  # on the controller; None when packed on the seeder


async def _create_on_seeder(
    fleet: Fleet, plan: DeployPlan, url: str, out_dir: Path
) -> _Release | None:
    """``roost create`` on the seeder from ``plan.seeder_path``; the .torrent
    comes back to ``out_dir``. None when the seeder failed (see fleet.failures)."""
    from roost.metainfo import read_torrent_file

    assert plan.seeder_path is not None
    made = await tasks.create(
        fleet,
        plan.inventory,
        plan.cfg,
        tag=plan.tag,
        files_path=plan.seeder_path,
        local_dir=out_dir,
        is_file=plan.is_file,
        tracker=url,
        piece_size=plan.piece_size,
    )
    result = made[plan.inventory.seeder.name]
    if not result.ok or result.value is None:
        return None
    meta = read_torrent_file(Path(result.value["torrent"]))
    return _Release(Path(result.value["torrent"]), meta.info_hash, meta.data_length, None)


async def _local_address(s: Any) -> str:
    return str(s.local_address)


def _host_cidr(address: str) -> str:
    return f"{address}/128" if ":" in address else f"{address}/32"


__all__ = ["DeployPlan", "RemoteError", "run_deploy"]

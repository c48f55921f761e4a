"""``roost bootstrap`` and ``roost fleet <verb>``: Murder's tasks over SSH; and the
printing side of ``roost deploy -i`` (``deploy_main``).

    roost fleet bootstrap        Murder distribute_files, lssd setup.yml (also: roost bootstrap)
    roost fleet start-tracker    start_tracker
    roost fleet stop-tracker     stop_tracker
    roost fleet create           create_torrent (on the seeder, .torrent fetched back)
    roost fleet fetch-torrent    download_torrent
    roost fleet start-seeding    start_seeding
    roost fleet stop-seeding     stop_seeding
    roost fleet stop-all-seeding stop_all_seeding
    roost fleet peer             peer / deploy.yml
    roost fleet stop-all-peering stop_all_peering / stop_all_peers.yml
    roost fleet clean            remove temp files on every host
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roost.activation import RELEASES
from roost.cli.flags import add_install_flags, install_options
from roost.errors import UsageError

if TYPE_CHECKING:
    # Imported where used: every ``roost`` command builds this module's
    # parsers, and asyncssh (via roost.fleet.ssh) alone costs ~0.5 CPU-s.
    from roost.fleet.config import FleetConfig
    from roost.fleet.deploy import DeployPlan
    from roost.fleet.inventory import Inventory
    from roost.fleet.ssh import Fleet, HostResult, SSHOptions


def add_fleet_flags(p: argparse.ArgumentParser, *, inventory: bool = True) -> None:
    """SSH and fleet flags shared by ``roost fleet *`` and ``roost deploy -i``."""
    g = p.add_argument_group("fleet (SSH)")
    if inventory:
        g.add_argument(
            "-i", "--inventory", type=Path, help="Ansible INI/YAML inventory or a plain host list"
        )
    g.add_argument(
        "--hosts",
        nargs="+",
        metavar="[USER@]HOST[:PORT]",
        help="hosts instead of an inventory (first is tracker and seeder)",
    )
    g.add_argument("--config", type=Path, help="roost.toml (default ./roost.toml if present)")
    g.add_argument("-f", "--forks", type=int, help="hosts worked on at once (default 100)")
    g.add_argument(
        "--max-fail-percent",
        type=float,
        help="abort the remaining steps when more hosts than this have failed",
    )
    g.add_argument("--user", help="SSH user when the inventory names none")
    g.add_argument("--identity", help="SSH private key file")
    g.add_argument("--known-hosts", help="known_hosts file (default: ssh's)")
    g.add_argument(
        "--insecure-no-host-key-check",
        action="store_true",
        default=None,
        help="accept any host key (unsafe; default is strict checking)",
    )
    g.add_argument("--jump", help="jump host [user@]host[:port] (ProxyJump)")
    g.add_argument("--connect-timeout", type=float, help="seconds to connect (default 10)")
    g.add_argument("--step-timeout", type=float, help="seconds per host and step (default 600)")
    g.add_argument("--remote-path", help="install path on hosts (default /opt/roost)")
    g.add_argument("--remote-temp-path", help="temp path on hosts (default /tmp/roost)")
    g.add_argument("--tracker-port", type=int, help="tracker port (default 8998)")
    g.add_argument("--wheel-cache", help="controller's wheel cache (default ~/.cache/roost/wheels)")
    g.add_argument(
        "--bootstrap-direct",
        type=at_least(1),
        metavar="N",
        help="bootstrap: hosts this machine sends the wheels to at once (default 8)",
    )
    g.add_argument(
        "--bootstrap-relay",
        type=at_least(0),
        metavar="N",
        help="bootstrap: each host that has roost passes the wheels on to N others at a "
        "time over HTTP, checked by sha256 (default 4; 0: all from this machine)",
    )


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def add_deploy_flags(p: argparse.ArgumentParser) -> None:
    """Fleet-only flags of ``roost deploy`` (used with ``-i``)."""
    add_fleet_flags(p, inventory=False)
    g = p.add_argument_group("fleet deploy")
    g.add_argument(
        "--seed-from",
        choices=("controller", "seeder"),
        default=None,
        help="origin: this machine (default) or the inventory's seeder host (seeder:PATH "
        "always seeds there)",
    )
    g.add_argument(
        "--no-bootstrap", action="store_true", help="assume roost is installed on the hosts already"
    )


def fleet_config(args: argparse.Namespace) -> FleetConfig:
    from roost.fleet.config import load_config, with_overrides

    cfg = load_config(getattr(args, "config", None))
    return with_overrides(
        cfg,
        forks=getattr(args, "forks", None),
        max_fail_percent=getattr(args, "max_fail_percent", None),
        remote_path=getattr(args, "remote_path", None),
        temp_path=getattr(args, "remote_temp_path", None),
        tracker_port=getattr(args, "tracker_port", None),
        wheel_cache=getattr(args, "wheel_cache", None),
        bootstrap_direct=getattr(args, "bootstrap_direct", None),
        bootstrap_relay=getattr(args, "bootstrap_relay", None),
    )


def ssh_options(args: argparse.Namespace, cfg: FleetConfig) -> SSHOptions:
    from roost.fleet.ssh import SSHOptions

    s = cfg.ssh
    insecure = getattr(args, "insecure_no_host_key_check", None)
    forks = cfg.forks
    if forks < 1:
        raise UsageError("--forks must be at least 1")
    return SSHOptions(
        config=s.config,
        identity=getattr(args, "identity", None) or s.identity,
        known_hosts=getattr(args, "known_hosts", None) or s.known_hosts,
        insecure_no_host_key_check=bool(insecure) or s.insecure_no_host_key_check,
        jump=getattr(args, "jump", None) or s.jump,
        user=getattr(args, "user", None) or s.user,
        connect_timeout=getattr(args, "connect_timeout", None) or s.connect_timeout,
        step_timeout=getattr(args, "step_timeout", None) or s.step_timeout,
        forks=forks,
        max_fail_percent=cfg.max_fail_percent,
    )


def load_inv(args: argparse.Namespace) -> Inventory:
    from roost.fleet.inventory import hosts_from_strings, load_inventory

    if getattr(args, "hosts", None):
        return hosts_from_strings(args.hosts)
    if getattr(args, "inventory", None) is None:
        raise UsageError("no hosts: pass -i INVENTORY or --hosts")
    return load_inventory(args.inventory)


# ---------------------------------------------------------------- reporting


def _report(
    results: dict[str, HostResult[Any]], fleet: Fleet, as_json: bool, describe: Callable[[Any], str]
) -> int:
    rows: list[dict[str, Any]] = []
    for name in [h.name for h in fleet.hosts]:
        r = results.get(name)
        if r is None:
            err = fleet.failures.get(name)
            if err is None:
                continue
            rows.append({"host": name, "ok": False, "step": err.step, "error": str(err)})
        elif r.ok:
            rows.append({"host": name, "ok": True, "result": r.value})
        else:
            rows.append(
                {
                    "host": name,
                    "ok": False,
                    "step": r.error.step if r.error else None,
                    "error": r.reason,
                }
            )
    ok = all(row["ok"] for row in rows)
    if as_json:
        print(json.dumps({"ok": ok, "hosts": rows}, indent=2, default=str))
    else:
        width = max((len(row["host"]) for row in rows), default=4)
        for row in rows:
            text = describe(row["result"]) if row["ok"] else f"FAILED {row['error']}"
            print(f"{row['host']:<{width}}  {text}")
        failed = sum(1 for row in rows if not row["ok"])
        print(f"{len(rows) - failed} of {len(rows)} hosts ok, {failed} failed")
    return 0 if ok else 1


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "stopped" in value:
            stopped, idle = value.get("stopped") or [], value.get("not_running") or []
            if not stopped and not idle:
                return "nothing running"
            return ", ".join(
                [*(f"stopped {n}" for n in stopped), *(f"{n} not running" for n in idle)]
            )
        if "removed" in value:
            return f"removed {len(value['removed'])} entries"
        if "state" in value:
            return f"{value.get('name')} {value['state']} (pid {value.get('pid')})"
        if "torrent" in value:
            return f"torrent at {value['torrent']}"
        if value.get("event") == "done":
            return f"done in {value.get('seconds')} s"
    return json.dumps(value, default=str)


Verb = Callable[
    ["Fleet", "Inventory", "FleetConfig", argparse.Namespace],
    Awaitable[dict[str, "HostResult[Any]"]],
]


def _run_verb(args: argparse.Namespace, verb: Verb, hosts: str = "remote") -> int:
    import asyncio

    from roost.fleet.ssh import Fleet

    inv = load_inv(args)
    cfg = fleet_config(args)
    options = ssh_options(args, cfg)

    async def main() -> int:
        targets = {
            "remote": inv.remote_hosts,
            "tracker": (inv.tracker,),
            "seeder": inv.seeders,
            "peers": inv.peers,
        }[hosts]
        async with Fleet(targets, options) as fleet:
            results = await verb(fleet, inv, cfg, args)
            return _report(results, fleet, args.json, _describe)

    return asyncio.run(main())


def _tag(args: argparse.Namespace, inv: Inventory, cfg: FleetConfig) -> str:
    from roost.release import validate_tag

    tag = getattr(args, "tag", None) or inv.get("tag") or cfg.default_tag
    if not tag:
        raise UsageError("no tag: pass --tag, or set tag in group_vars/all or roost.toml")
    return validate_tag(str(tag))


def _local_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) if getattr(args, "out", None) else Path("/tmp/roost/torrents")


# ---------------------------------------------------------------- verbs


async def _v_bootstrap(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig, args: argparse.Namespace
) -> dict[str, HostResult[Any]]:
    from roost.fleet.bootstrap import bootstrap

    return await bootstrap(fleet, cfg, force=args.force, python=_hosts_python(args))


def _hosts_python(args: argparse.Namespace) -> str:
    if not args.python:
        return "python3"
    if len(args.python) > 1:
        raise UsageError("one --python for the hosts (several only with --download-only)")
    return str(args.python[0])


def _bootstrap_main(args: argparse.Namespace) -> int:
    if args.download_only:
        return _download_only(args)
    if args.platforms:
        raise UsageError("--platform goes with --download-only (hosts are probed for theirs)")
    _hosts_python(args)  # refused before connecting
    return _run_verb(args, _v_bootstrap, "remote")


def _download_only(args: argparse.Namespace) -> int:
    """``roost bootstrap --download-only``: fill the wheel cache for targets
    named by hand, on a machine that reaches the registry."""
    from roost.fleet.wheels import default_cache, download_only, target_for, this_target

    if getattr(args, "hosts", None) or getattr(args, "inventory", None):
        raise UsageError(
            "--download-only takes no hosts: it fills --wheel-cache for --python and --platform"
        )
    pythons = args.python or [this_target().python]
    targets = [target_for(py, tag) for py in pythons for tag in (args.platforms or [None])]
    cache = default_cache(fleet_config(args))
    done = download_only(targets, cache)
    rows = [
        {"target": t.describe(), "key": t.key, "wheels": [w.name for w in wheels]}
        for t, wheels in done
    ]
    if args.json:
        print(json.dumps({"ok": True, "wheel_cache": str(cache), "targets": rows}, indent=2))
        return 0
    for row in rows:
        print(f"{row['target']}: {len(row['wheels'])} wheels in {cache}/deps-{row['key']}")
    print(f"carry {cache} to the controller and pass --wheel-cache with its path there")
    return 0


async def _v_start_tracker(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig, args: argparse.Namespace
) -> dict[str, HostResult[Any]]:
    from roost.fleet import tasks

    res = await tasks.start_tracker(
        fleet, inv, cfg, allow=args.allow or (), token=args.token, stats_allow=args.stats_allow
    )
    if not args.json:
        print(f"announce URL: {tasks.announce_url(inv, cfg, args.token)}", file=sys.stderr)
        if args.stats_allow:
            print(f"swarm page: {tasks.tracker_page(inv, cfg)}", file=sys.stderr)
    return res


async def _v_stop_tracker(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig, args: argparse.Namespace
) -> dict[str, HostResult[Any]]:
    from roost.fleet import tasks

    return await tasks.stop_tracker(fleet, inv, cfg)


async def _v_create(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig, args: argparse.Namespace
) -> dict[str, HostResult[Any]]:
    from roost.fleet import tasks

    files = args.files_path or inv.get("seeder_files_path") or cfg.default_seeder_files_path
    if not files:
        raise UsageError(
            "no files path: pass --files-path, or set seeder_files_path in "
            "group_vars/all or default_seeder_files_path in roost.toml"
        )
    return await tasks.create(
        fleet,
        inv,
        cfg,
        tag=_tag(args, inv, cfg),
        files_path=str(files),
        local_dir=_local_dir(args),
        is_file=args.is_file,
        tracker=args.tracker,
    )


async def _v_fetch(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig, args: argparse.Namespace
) -> dict[str, HostResult[Any]]:
    from roost.fleet import tasks

    return await tasks.fetch_torrent(
        fleet, inv, cfg, tag=_tag(args, inv, cfg), local_dir=_local_dir(args)
    )


async def _v_start_seeding(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig, args: argparse.Namespace
) -> dict[str, HostResult[Any]]:
    from roost.fleet import tasks

    return await tasks.start_seeding(
        fleet, inv, cfg, tag=_tag(args, inv, cfg), super_seed=args.super_seed
    )


async def _v_stop_seeding(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig, args: argparse.Namespace
) -> dict[str, HostResult[Any]]:
    from roost.fleet import tasks

    return await tasks.stop_seeding(fleet, inv, cfg, tag=_tag(args, inv, cfg))


async def _v_stop_all_seeding(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig, args: argparse.Namespace
) -> dict[str, HostResult[Any]]:
    from roost.fleet import tasks

    return await tasks.stop_seeding(fleet, inv, cfg, tag=None)


async def _v_peer(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig, args: argparse.Namespace
) -> dict[str, HostResult[Any]]:
    from roost.fleet import tasks

    tag = _tag(args, inv, cfg)
    dest = args.dest or inv.get("destination_path") or cfg.default_destination_path
    if not dest:
        raise UsageError("no destination: pass --dest or set destination_path")
    torrent = Path(args.torrent) if args.torrent else _local_dir(args) / f"{tag}.torrent"
    if not torrent.is_file():
        raise UsageError(f"no torrent at {torrent}: run 'roost fleet create' or pass --torrent")
    opts = tasks.PeerOptions(
        tag=tag,
        dest=str(dest),
        install=install_options(args, trust=cfg.trust),
        upload_limit=args.upload_limit,
        download_limit=args.download_limit,
    )

    from roost import events

    def on_event(host: str, event: events.Event) -> None:
        if isinstance(event, events.Installed | events.Failed | events.Done) and not args.json:
            print(f"{host}: {events.dump(event)}", file=sys.stderr)

    return await tasks.peer(fleet, cfg, list(inv.peers), torrent, opts, on_event)


async def _v_stop_all_peering(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig, args: argparse.Namespace
) -> dict[str, HostResult[Any]]:
    from roost.fleet import tasks

    return await tasks.stop_all_peering(fleet, inv, cfg)


async def _v_clean(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig, args: argparse.Namespace
) -> dict[str, HostResult[Any]]:
    from roost.fleet import tasks

    return await tasks.clean(fleet, inv, cfg)


def _verb_parser(sub: Any, name: str, help: str, verb: Verb, hosts: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    add_fleet_flags(p)
    p.add_argument("--json", action="store_true", help="print a JSON result per host")
    p.set_defaults(handler=lambda a: _run_verb(a, verb, hosts))
    return p


def _add_bootstrap(sub: Any, name: str) -> None:
    p = _verb_parser(
        sub,
        name,
        "install roost on the hosts from wheels shipped by this machine (Murder distribute_files)",
        _v_bootstrap,
        "remote",
    )
    p.set_defaults(handler=_bootstrap_main)
    p.add_argument("--force", action="store_true", help="reinstall even if up to date")
    p.add_argument(
        "--python",
        action="append",
        help="the hosts' Python (default python3); with --download-only, its version "
        "(e.g. 3.11; repeatable; default this machine's)",
    )
    p.add_argument(
        "--download-only",
        action="store_true",
        help="no hosts: fetch the wheels for --python and --platform into --wheel-cache, "
        "to carry to a controller that cannot reach the registry",
    )
    p.add_argument(
        "--platform",
        dest="platforms",
        action="append",
        metavar="TAG",
        help="with --download-only: the hosts' wheel platform, e.g. manylinux_2_28_x86_64 "
        "(repeatable; default this machine's)",
    )


def register(sub: Any) -> None:
    _add_bootstrap(sub, "bootstrap")
    fp = sub.add_parser("fleet", help="Murder's tasks across an inventory's hosts over SSH")
    fsub = fp.add_subparsers(dest="fleet_command", metavar="VERB")
    fp.set_defaults(handler=lambda a: (fp.print_help(), 2)[1])
    _add_bootstrap(fsub, "bootstrap")
    p = _verb_parser(
        fsub, "start-tracker", "start the tracker on the tracker host", _v_start_tracker, "tracker"
    )
    p.add_argument("--allow", action="append", metavar="HASH", help="serve only this info-hash")
    p.add_argument("--token", help="require this announce token")
    p.add_argument(
        "--stats-allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="networks that may read the swarm page, /stats.json and /metrics (repeatable)",
    )
    _verb_parser(
        fsub, "stop-tracker", "stop the tracker (not running: fine)", _v_stop_tracker, "tracker"
    )
    p = _verb_parser(
        fsub,
        "create",
        "pack a path on the seeder into a release and fetch its .torrent here",
        _v_create,
        "seeder",
    )
    p.add_argument("--tag")
    p.add_argument("--files-path", help="path on the seeder (default seeder_files_path)")
    p.add_argument("--file", dest="is_file", action="store_true", help="ship one file as is")
    p.add_argument("--tracker", help="announce URL (default the inventory's tracker)")
    p.add_argument("--out", help="local directory for the .torrent (default /tmp/roost/torrents)")
    p = _verb_parser(fsub, "fetch-torrent", "fetch TAG.torrent from the seeder", _v_fetch, "seeder")
    p.add_argument("--tag")
    p.add_argument("--out", help="local directory (default /tmp/roost/torrents)")
    p = _verb_parser(
        fsub, "start-seeding", "seed TAG on the seeder, detached", _v_start_seeding, "seeder"
    )
    p.add_argument("--tag")
    p.add_argument("--super-seed", action="store_true", help="hand out each piece once")
    p = _verb_parser(
        fsub, "stop-seeding", "stop seeding TAG (not running: fine)", _v_stop_seeding, "seeder"
    )
    p.add_argument("--tag")
    _verb_parser(
        fsub,
        "stop-all-seeding",
        "stop every seeding process roost started",
        _v_stop_all_seeding,
        "seeder",
    )
    p = _verb_parser(
        fsub, "peer", "download, verify and install TAG on every peer", _v_peer, "peers"
    )
    p.add_argument("--tag")
    p.add_argument("--dest", help="install into DEST/TAG (default destination_path)")
    p.add_argument("--torrent", help="local .torrent (default /tmp/roost/torrents/TAG.torrent)")
    p.add_argument("--out", help=argparse.SUPPRESS)
    from roost.cli.release import add_trust_flag

    add_install_flags(p)

    add_trust_flag(p, on_hosts=True)
    _verb_parser(
        fsub,
        "stop-all-peering",
        "stop every peer and lingering seed on the peers",
        _v_stop_all_peering,
        "peers",
    )
    _verb_parser(fsub, "clean", "remove roost's temp files on every host", _v_clean, "remote")


# ---------------------------------------------------------------- roost deploy -i


def plan_from_args(args: argparse.Namespace) -> DeployPlan:
    """Resolve a ``DeployPlan`` from ``roost deploy -i`` arguments. Raises
    ``UsageError``/``ConfigError``."""
    from roost.fleet import tasks
    from roost.fleet.deploy import DeployPlan

    inv = load_inv(args)
    cfg = fleet_config(args)
    tag = args.tag or inv.get("tag") or cfg.default_tag
    dest = args.dest or inv.get("destination_path") or cfg.default_destination_path
    if not tag:
        raise UsageError("no tag: pass --tag, or set tag in group_vars/all or roost.toml")
    if not dest:
        raise UsageError(
            "no destination: pass --dest, or set destination_path in "
            "group_vars/all or default_destination_path in roost.toml"
        )
    seeder_path: str | None = None
    source = str(args.source)
    if source.startswith("seeder:"):
        seeder_path = source[len("seeder:") :] or str(
            inv.get("seeder_files_path") or cfg.default_seeder_files_path or ""
        )
        if not seeder_path:
            raise UsageError(
                "seeder: names no path: give seeder:PATH, or set seeder_files_path in "
                "group_vars/all or default_seeder_files_path in roost.toml"
            )
        if getattr(args, "seed_from", None) == "controller":
            raise UsageError("seeder:PATH is packed and seeded on the seeder: drop --seed-from")
        if args.sign is not None:
            raise UsageError("--sign signs a release made here; sign seeder:PATH releases there")
    elif not Path(args.source).exists():
        raise UsageError(f"source {args.source} does not exist")
    dest = str(dest).rstrip("/") or "/"
    peer = tasks.PeerOptions(
        tag=str(tag),
        # --activate: DEST/releases/TAG, switched by DEST/current afterwards
        dest=f"{dest}/{RELEASES}" if getattr(args, "activate", False) else dest,
        install=install_options(args, trust=cfg.trust),
        upload_limit=args.upload_limit,
        download_limit=args.download_limit,
    )
    return DeployPlan(
        source=Path(args.source),
        tag=str(tag),
        inventory=inv,
        cfg=cfg,
        ssh=ssh_options(args, cfg),
        peer=peer,
        is_file=args.is_file,
        tar=bool(getattr(args, "tar", False)),
        seed_from=getattr(args, "seed_from", None) or ("seeder" if seeder_path else "controller"),
        super_seed=bool(getattr(args, "super_seed", False)),
        feed=bool(getattr(args, "feed", True)),
        do_bootstrap=not getattr(args, "no_bootstrap", False),
        out_dir=args.out,
        piece_size=args.piece_size,
        seeder_path=seeder_path,
        sign_key=args.sign,
    )


def deploy_main(args: argparse.Namespace) -> int:
    import asyncio

    from roost.cli.releases import deploy_waves, print_rollout_hosts
    from roost.fleet.deploy import run_deploy
    from roost.progress import TerminalDisplay, render_live, render_summary

    waves = deploy_waves(args)
    plan = plan_from_args(args)
    display = TerminalDisplay(sys.stderr)
    title = f"roost deploy {plan.tag} ({len(plan.inventory.peers)} hosts)"

    def on_update(progress: Any, now: float, final: bool) -> None:
        if not args.json:
            display.update(render_live(progress, now, title), now, force=final)

    if not args.json:
        from roost.fleet.tasks import tracker_page

        page = tracker_page(plan.inventory, plan.cfg)
        print(f"swarm page (from this machine): {page}", file=sys.stderr)
    summary = asyncio.run(run_deploy(plan, on_update))
    if waves is not None:
        asyncio.run(_fleet_rollout(args, plan, summary, waves))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        for line in render_summary(summary):
            print(line)
        print_rollout_hosts(summary)
        if summary.get("aborted"):
            print(f"aborted: {summary['aborted']}")
        for err in summary.get("cleanup_errors") or []:
            print(f"clean-up: {err}")
    return 0 if summary["ok"] else 1


async def _fleet_rollout(
    args: argparse.Namespace, plan: DeployPlan, summary: dict[str, Any], waves: Any
) -> None:
    """``roost deploy -i --activate``: switch the installed hosts wave by wave."""
    from roost.cli.releases import merge_rollout, run_ssh_rollout

    ok = {h["name"] for h in summary["hosts"] if h["ok"]}
    hosts = [h for h in plan.inventory.peers if h.name in ok]
    base = plan.peer.dest.removesuffix(f"/{RELEASES}")
    result = await run_ssh_rollout(
        args, hosts, plan.cfg, plan.ssh, base, plan.tag, waves, keep=args.keep
    )
    merge_rollout(summary, result)

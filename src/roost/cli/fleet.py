"""``roost bootstrap`` and ``roost fleet <verb>``: Murder's tasks over SSH.

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

Each verb runs on the hosts of its role and prints one line (or, with
``--json``, one record) per host; the exit status is 0 when every host is ok.
The shared inventory and SSH flags are ``roost.cli.fleet_args``; ``roost
deploy -i`` is ``roost.cli.fleet_deploy`` (both still importable from here,
the second only when asked for).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roost.cli.flags import add_install_flags, add_trust_flag, install_options
from roost.cli.fleet_args import add_fleet_flags, fleet_config, load_inv, ssh_options
from roost.errors import UsageError

if TYPE_CHECKING:
    # Imported where used: every ``roost`` command builds this module's
    # parsers, and asyncssh (via roost.fleet.ssh) alone costs ~0.5 CPU-s.
    from roost.fleet.config import FleetConfig
    from roost.fleet.inventory import Inventory
    from roost.fleet.ssh import Fleet, HostResult

__all__ = ["COMMANDS", "register"]


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
    from roost.metainfo import validate_tag

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


def _peer_torrent(args: argparse.Namespace, inv: Inventory, cfg: FleetConfig) -> tuple[str, Path]:
    """The release ``fleet peer`` installs and its tag, read and checked here
    before any host is reached: ``--torrent FILE`` under its own tag (which
    ``--tag``, if given, must be; group_vars' and roost.toml's tag give way),
    else TAG.torrent as ``fleet create`` or ``fetch-torrent`` left it."""
    from roost.fleet import tasks

    if args.torrent:
        torrent = Path(args.torrent)
        return tasks.release_tag(torrent, args.tag), torrent
    tag = _tag(args, inv, cfg)
    torrent = _local_dir(args) / f"{tag}.torrent"
    if not torrent.is_file():
        raise UsageError(f"no torrent at {torrent}: run 'roost fleet create' or pass --torrent")
    return tasks.release_tag(torrent, tag), torrent


async def _v_peer(
    fleet: Fleet, inv: Inventory, cfg: FleetConfig, args: argparse.Namespace
) -> dict[str, HostResult[Any]]:
    from roost.fleet import tasks

    tag, torrent = _peer_torrent(args, inv, cfg)
    dest = args.dest or inv.get("destination_path") or cfg.default_destination_path
    if not dest:
        raise UsageError("no destination: pass --dest or set destination_path")
    opts = tasks.PeerOptions(
        tag=tag,
        dest=str(dest),
        install=install_options(args, trust=cfg.trust),
        upload_limit=args.upload_limit,
        download_limit=args.download_limit,
    )

    from roost import events

    def on_event(host: str, event: events.Event) -> None:
        if args.json:
            return
        if isinstance(event, events.Installed):
            already = " (already installed)" if event.already else ""
            print(f"{host}: installed {event.path}{already}", file=sys.stderr)
        elif isinstance(event, events.Failed):
            print(f"{host}: failed: {event.error}", file=sys.stderr)

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


#: Murder's names for the verbs (``cap murder:start_tracker``...), taken too.
MURDER_NAMES = {
    "bootstrap": ["distribute_files"],
    "start-tracker": ["start_tracker"],
    "stop-tracker": ["stop_tracker"],
    "create": ["create_torrent"],
    "fetch-torrent": ["download_torrent"],
    "start-seeding": ["start_seeding"],
    "stop-seeding": ["stop_seeding"],
    "stop-all-seeding": ["stop_all_seeding"],
    "stop-all-peering": ["stop_all_peering"],
    "clean": ["clean_temp_files"],
}


def _verb_parser(sub: Any, name: str, help: str, verb: Verb, hosts: str) -> argparse.ArgumentParser:
    aliases = MURDER_NAMES.get(name, []) if sub.dest == "fleet_command" else []
    p = sub.add_parser(name, aliases=aliases, help=help, description=help)
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


def _register_bootstrap(sub: Any) -> None:
    _add_bootstrap(sub, "bootstrap")


def _register_fleet(sub: Any) -> None:
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
    p.add_argument(
        "--torrent",
        metavar="FILE",
        help="local .torrent, installed under its own tag "
        "(default /tmp/roost/torrents/TAG.torrent)",
    )
    p.add_argument("--out", help=argparse.SUPPRESS)

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


def register(sub: Any) -> None:
    _register_bootstrap(sub)
    _register_fleet(sub)


#: Each command's registration, for ``roost CMD`` building CMD's parser alone.
COMMANDS: dict[str, Callable[[Any], None]] = {
    "bootstrap": _register_bootstrap,
    "fleet": _register_fleet,
}

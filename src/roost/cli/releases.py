"""``roost releases``, ``roost activate``, ``roost rollback`` and ``roost
rollout``: which release each host runs (``roost.activation``, ``roost.rollout``),
on this machine, a local fleet or an inventory's hosts over SSH."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roost import activation
from roost.cli.flags import path, seconds
from roost.cli.flags import tag as tag_type
from roost.errors import RoostError, UsageError

if TYPE_CHECKING:
    from roost.progress import DeploySummary


def register(sub: Any) -> None:
    p = sub.add_parser(
        "releases",
        help="show the installed releases of each host and which one is current",
        description=(
            "List DEST/releases/* (oldest first) and where DEST/current points, on this "
            "machine (--dest), on a local fleet (--local N: DEST/host-1..N) or on an "
            "inventory's peers (-i)."
        ),
    )
    _common(p)
    p.set_defaults(handler=lambda a: _main(a, "releases"))

    p = sub.add_parser(
        "activate",
        help="make an installed release current on each host (one atomic rename)",
        description=(
            "Switch DEST/current to releases/TAG with one atomic rename. A host that does "
            "not have TAG installed is reported and left as it was."
        ),
    )
    p.add_argument("tag", type=tag_type, metavar="TAG")
    add_keep_flag(p)
    _common(p)
    p.set_defaults(handler=lambda a: _main(a, "activate"))

    p = sub.add_parser(
        "rollback",
        help="switch each host back to its previous release, downloading nothing",
        description=(
            "Switch DEST/current back to the release that was current before (or to "
            "--to TAG) with one atomic rename. Nothing is downloaded; a host without the "
            "target release is reported with its reason and left as it was."
        ),
    )
    p.add_argument(
        "--to", type=tag_type, metavar="TAG", help="the release to switch to (default: previous)"
    )
    p.add_argument(
        "--reject",
        type=tag_type,
        metavar="TAG",
        help="TAG, the release rolled back from, failed: undo its activation, so that it is "
        "never the previous release (what roost rollout --rollback-on-fail does)",
    )
    _common(p)
    p.set_defaults(handler=lambda a: _main(a, "rollback"))

    p = sub.add_parser(
        "rollout",
        help="activate an installed release wave by wave, behind a health check",
        description=(
            "Switch DEST/current to releases/TAG one wave of hosts at a time (hosts in "
            "inventory order; waves are cumulative). After each wave, --health runs on "
            "each of its hosts; more failures than --max-fail-percent of the wave halt the "
            "rollout, and --rollback-on-fail switches the hosts it switched back. Exits "
            "non-zero if the rollout halted."
        ),
    )
    p.add_argument("tag", type=tag_type, metavar="TAG")
    add_rollout_flags(p)
    _common(p)
    p.set_defaults(handler=_rollout_main)


def _common(p: argparse.ArgumentParser) -> None:
    from roost.cli.fleet_args import add_fleet_flags

    p.add_argument("--dest", type=path, required=True, help="the destination (DEST/releases)")
    p.add_argument(
        "--local",
        type=int,
        metavar="N",
        help="a local fleet: DEST/host-1 .. DEST/host-N (as roost deploy --local made it)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_fleet_flags(p)


def add_keep_flag(p: argparse.ArgumentParser) -> None:
    from roost.cli.fleet_args import at_least

    p.add_argument(
        "--keep",
        type=at_least(1),
        metavar="N",
        help="after switching, remove all but the newest N releases (never the current "
        "or the previous one)",
    )


def add_rollout_flags(p: argparse.ArgumentParser) -> None:
    """The wave and health flags of ``roost rollout`` and ``roost deploy``."""
    from roost.activation import DEFAULT_HEALTH_TIMEOUT

    g = p.add_argument_group("rollout")
    g.add_argument(
        "--waves",
        default="100%",
        metavar="LIST",
        help="cumulative waves, host counts or percentages, e.g. 1,5%%,25%%,100%% "
        "(default 100%%: all at once)",
    )
    g.add_argument(
        "--health",
        metavar="CMD",
        help="shell command run on each host of a wave after it is switched, in the release's "
        "directory, with ROOST_TAG, ROOST_PATH and ROOST_PREVIOUS set; non-zero is a failure",
    )
    g.add_argument(
        "--health-timeout",
        type=seconds,
        default=DEFAULT_HEALTH_TIMEOUT,
        metavar="S",
        help=f"seconds a health command may run (default {DEFAULT_HEALTH_TIMEOUT:g})",
    )
    g.add_argument(
        "--rollback-on-fail",
        action="store_true",
        help="when the rollout halts, switch the hosts it switched back to their previous release",
    )


def one(
    verb: str,
    dest: Path,
    tag: str | None = None,
    keep: int | None = None,
    reject: str | None = None,
) -> dict[str, Any]:
    """Run ``verb`` on one destination; its result as a JSON-able dict."""
    if verb == "releases":
        return {"ok": True, **activation.releases(dest).to_json()}
    if verb == "activate":
        if tag is None:
            raise UsageError("activate needs a TAG")
        switch = activation.activate(dest, tag, keep=keep)
    else:
        switch = activation.rollback(dest, tag, reject=reject)
    return {"ok": True, "tag": switch.tag, "previous": switch.previous, "changed": switch.changed}


def describe(verb: str, result: dict[str, Any]) -> str:
    if verb == "releases":
        installed = " ".join(result["installed"]) or "none"
        return (
            f"current {result['current'] or 'none'}, previous {result['previous'] or 'none'}, "
            f"installed {installed}"
        )
    if not result["changed"]:
        return f"{result['tag']} was already current"
    return f"{result['previous'] or 'nothing'} -> {result['tag'] or 'nothing (none current)'}"


def _main(args: argparse.Namespace, verb: str) -> int:
    tag = getattr(args, "tag", None) or getattr(args, "to", None)
    keep = getattr(args, "keep", None)
    reject = getattr(args, "reject", None)
    if _remote(args):
        return _fleet(args, verb, tag)
    if args.local is None:
        try:
            result = one(verb, args.dest, tag, keep, reject)
        except RoostError as exc:
            if args.json:  # the error as a field, for roost.fleet.rollout to read
                print(json.dumps({"ok": False, "error": str(exc)}))
            raise
        print(json.dumps(result) if args.json else describe(verb, result))
        return 0
    if args.local < 1:
        raise UsageError("--local needs at least 1 host")
    rows = []
    for n in range(1, args.local + 1):
        name = f"host-{n}"
        try:
            rows.append({"host": name, **one(verb, args.dest / name, tag, keep, reject)})
        except RoostError as exc:
            rows.append({"host": name, "ok": False, "error": str(exc)})
    return _print_rows(rows, args.json, lambda r: describe(verb, r))


def _print_rows(
    rows: list[dict[str, Any]], as_json: bool, text: Callable[[dict[str, Any]], str]
) -> int:
    ok = all(r["ok"] for r in rows)
    if as_json:
        print(json.dumps({"ok": ok, "hosts": rows}, indent=2))
        return 0 if ok else 1
    width = max((len(r["host"]) for r in rows), default=4)
    for r in rows:
        print(f"{r['host']:<{width}}  {text(r) if r['ok'] else 'FAILED ' + r['error']}")
    failed = sum(1 for r in rows if not r["ok"])
    print(f"{len(rows) - failed} of {len(rows)} hosts ok, {failed} failed")
    return 0 if ok else 1


def _fleet(args: argparse.Namespace, verb: str, tag: str | None) -> int:
    import asyncio

    from roost.cli.fleet_args import fleet_config, load_inv, ssh_options
    from roost.fleet import tasks
    from roost.fleet.ssh import Fleet

    inv = load_inv(args)
    cfg = fleet_config(args)
    options = ssh_options(args, cfg)
    argv = [verb, *([tag] if verb == "activate" and tag else [])]
    argv += ["--dest", str(args.dest), *(["--to", tag] if verb == "rollback" and tag else [])]
    if getattr(args, "keep", None) is not None:
        argv += ["--keep", str(args.keep)]
    if getattr(args, "reject", None):
        argv += ["--reject", args.reject]

    async def main() -> int:
        async with Fleet(inv.peers, options) as fleet:
            results = await tasks.roost_on(fleet, cfg, verb, inv.peers, argv)
        rows: list[dict[str, Any]] = []
        for host in inv.peers:
            r = results.get(host.name)
            err = fleet.failures.get(host.name)
            if r is not None and r.ok and r.value is not None:
                rows.append({"host": host.name, **r.value})
            else:
                reason = r.reason if r is not None else str(err or "not reached")
                rows.append({"host": host.name, "ok": False, "error": reason})
        return _print_rows(rows, args.json, lambda row: describe(verb, row))

    return asyncio.run(main())


def _rollout_main(args: argparse.Namespace) -> int:
    import asyncio

    from roost.rollout import parse_waves

    waves = parse_waves(args.waves)
    if _remote(args):
        return asyncio.run(_rollout_fleet(args, waves))
    n = args.local if args.local is not None else 0
    dests = {f"host-{i}": args.dest / f"host-{i}" for i in range(1, n + 1)} or {"local": args.dest}
    return print_rollout(run_local_rollout(args, dests, args.tag, waves), args.json)


def _remote(args: argparse.Namespace) -> bool:
    """Whether the hosts are an inventory's (-i/--hosts), not this machine's."""
    remote = args.inventory is not None or args.hosts is not None
    if remote and args.local is not None:
        raise UsageError("pass --local N or -i INVENTORY, not both")
    return remote


def rollout_options(args: argparse.Namespace) -> dict[str, Any]:
    """``run_rollout``'s options from the rollout flags (add_rollout_flags)."""
    limit = args.max_fail_percent if args.max_fail_percent is not None else 0.0
    return {
        "health": args.health,
        "max_fail_percent": limit,
        "rollback_on_fail": args.rollback_on_fail,
        "on_wave": None if args.json else _say_wave,
    }


def _say_wave(number: int, wave: list[str], failed: int) -> None:
    hosts = "1 host" if len(wave) == 1 else f"{len(wave)} hosts"
    print(f"wave {number}: {hosts}, {failed} failed", flush=True)


def print_rollout(result: Any, as_json: bool) -> int:
    """Print a ``roost.rollout.Rollout``; the exit status (1 if it halted)."""
    doc = result.to_json()
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(rollout_lines(doc)))
    return 0 if result.ok else 1


def print_rollout_hosts(summary: DeploySummary) -> None:
    """After a deploy's summary: its rollout, if it had one."""
    if summary.rollout:
        print("\n".join(rollout_lines(summary.rollout)))


def rollout_lines(doc: dict[str, Any]) -> list[str]:
    """A rollout (``Rollout.to_json()``) as lines: one per host, then the outcome."""
    hosts = doc["hosts"]
    width = max((len(h["host"]) for h in hosts), default=4)
    lines = []
    for h in hosts:
        if h["wave"] is None:
            text = "not reached"
        elif h["error"]:
            text = f"wave {h['wave']}  FAILED {h['error']}"
            if h["health"] not in (None, "ok"):
                text += f" (health: {h['health']})"
        else:
            text = f"wave {h['wave']}  {h['previous'] or 'nothing'} -> {doc['tag']}"
            if h["health"] is not None:
                ok = h["health"] == "ok"
                text += "  health ok" if ok else f"  health FAILED {h['health']}"
        if h["rolled_back"]:
            text += f"  rolled back to {h['previous'] or 'none current'}"
        lines.append(f"{h['host']:<{width}}  {text}")
    waves = len(doc["waves"])
    if doc["ok"]:
        plural = "wave" if waves == 1 else "waves"
        lines.append(f"rolled out {doc['tag']} in {waves} {plural} in {doc['seconds']:.2f} s")
    else:
        lines.append(f"rollout of {doc['tag']} halted at wave {doc['halted_at']} of {waves}")
    return lines


async def _rollout_fleet(args: argparse.Namespace, waves: Any) -> int:
    from roost.cli.fleet_args import fleet_config, load_inv, ssh_options

    inv = load_inv(args)
    cfg = fleet_config(args)
    ssh = ssh_options(args, cfg)
    result = await run_ssh_rollout(args, inv.peers, cfg, ssh, str(args.dest), args.tag, waves)
    return print_rollout(result, args.json)


def run_local_rollout(
    args: argparse.Namespace, dests: dict[str, Path], tag: str, waves: Any, keep: int | None = None
) -> Any:
    """Roll ``tag`` out over destinations on this machine (host name -> DEST)."""
    import asyncio

    from roost.rollout import LocalRunner, run_rollout

    runner = LocalRunner(dests, timeout=args.health_timeout, keep=keep)
    return asyncio.run(run_rollout(runner, list(dests), tag, waves, **rollout_options(args)))


async def run_ssh_rollout(
    args: argparse.Namespace,
    hosts: Any,
    cfg: Any,
    ssh: Any,
    dest: str,
    tag: str,
    waves: Any,
    keep: int | None = None,
) -> Any:
    """Roll ``tag`` out over SSH ``hosts`` (``roost.fleet.rollout.SSHRunner``); the
    rollout has its own failure gate, so the fleet's abort threshold is off."""
    import dataclasses

    from roost.fleet.rollout import SSHRunner
    from roost.fleet.ssh import Fleet
    from roost.rollout import run_rollout

    hosts = list(hosts)
    async with Fleet(hosts, dataclasses.replace(ssh, max_fail_percent=100.0)) as fleet:
        runner = SSHRunner(fleet, cfg, dest, timeout=args.health_timeout, keep=keep)
        names = [h.name for h in hosts]
        return await run_rollout(runner, names, tag, waves, **rollout_options(args))


# roost deploy --activate ---------------------------------------------------------


def add_deploy_activation_flags(p: argparse.ArgumentParser) -> None:
    """``roost deploy``'s activation flags: --activate, --keep and the rollout's."""
    p.add_argument(
        "--activate",
        action="store_true",
        help="install into DEST/releases/TAG and then switch DEST/current to it (one atomic "
        "rename per host; --waves to do it wave by wave)",
    )
    add_keep_flag(p)
    add_rollout_flags(p)


def deploy_waves(args: argparse.Namespace) -> Any:
    """The waves of ``roost deploy --activate``, checked before anything is
    downloaded; None without --activate."""
    from roost.rollout import parse_waves

    if not args.activate:
        if args.health or args.waves != "100%" or args.rollback_on_fail or args.keep is not None:
            raise UsageError("--waves, --health, --rollback-on-fail and --keep need --activate")
        return None
    if not args.tag_directory:
        raise UsageError("--activate installs into DEST/releases/TAG: drop --no-tag-directory")
    return parse_waves(args.waves)


def local_rollout(args: argparse.Namespace, summary: DeploySummary, waves: Any) -> None:
    """Activate a local deploy's installed hosts wave by wave (into ``summary``)."""
    dests = {h.name: Path(args.dest) / h.name for h in summary.hosts if h.ok}
    merge_rollout(summary, run_local_rollout(args, dests, args.tag, waves, keep=args.keep))


def merge_rollout(summary: DeploySummary, result: Any) -> None:
    """Fold a ``roost.rollout.Rollout`` into a deploy's summary: each host's
    wave and health, the rollout itself, and ok only if it did not halt."""
    summary.rollout = result.to_json()
    summary.rollout_ok = result.ok
    for h in summary.hosts:
        r = result.hosts.get(h.name)
        if r is None:
            continue
        h.wave, h.health, h.rolled_back = r.wave, r.health, r.rolled_back
        if not r.ok:
            h.ok = False
            h.error = r.error or f"health check {r.health}"

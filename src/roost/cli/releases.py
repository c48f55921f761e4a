"""``roost releases``, ``roost activate`` and ``roost rollback``: which release
each host runs (``roost.activation``), on this machine, a local fleet or an
inventory's hosts over SSH."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roost import activation
from roost.errors import RoostError, UsageError


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
    p.add_argument("tag", metavar="TAG")
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
    p.add_argument("--to", metavar="TAG", help="the release to switch to (default: previous)")
    _common(p)
    p.set_defaults(handler=lambda a: _main(a, "rollback"))


def _common(p: argparse.ArgumentParser) -> None:
    from roost.cli.fleet import add_fleet_flags

    p.add_argument("--dest", type=Path, required=True, help="the destination (DEST/releases)")
    p.add_argument(
        "--local",
        type=int,
        metavar="N",
        help="a local fleet: DEST/host-1 .. DEST/host-N (as roost deploy --local made it)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_fleet_flags(p)


def one(verb: str, dest: Path, tag: str | None = None) -> dict[str, Any]:
    """Run ``verb`` on one destination; its result as a JSON-able dict."""
    if verb == "releases":
        return {"ok": True, **activation.releases(dest).to_json()}
    if verb == "activate":
        assert tag is not None
        switch = activation.activate(dest, tag)
    else:
        switch = activation.rollback(dest, tag)
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
    return f"{result['previous'] or 'nothing'} -> {result['tag']}"


def _main(args: argparse.Namespace, verb: str) -> int:
    tag = getattr(args, "tag", None) or getattr(args, "to", None)
    remote = args.inventory is not None or args.hosts is not None
    if remote and args.local is not None:
        raise UsageError("pass --local N or -i INVENTORY, not both")
    if remote:
        return _fleet(args, verb, tag)
    if args.local is None:
        result = one(verb, args.dest, tag)
        print(json.dumps(result) if args.json else describe(verb, result))
        return 0
    if args.local < 1:
        raise UsageError("--local needs at least 1 host")
    rows = []
    for n in range(1, args.local + 1):
        name = f"host-{n}"
        try:
            rows.append({"host": name, **one(verb, args.dest / name, tag)})
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

    from roost.cli.fleet import fleet_config, load_inv, ssh_options
    from roost.fleet import tasks
    from roost.fleet.ssh import Fleet

    inv = load_inv(args)
    cfg = fleet_config(args)
    options = ssh_options(args, cfg)
    argv = [verb, *([tag] if verb == "activate" and tag else [])]
    argv += ["--dest", str(args.dest), *(["--to", tag] if verb == "rollback" and tag else [])]

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

"""``roost deploy -i INVENTORY`` (or ``--hosts``): the fleet side of ``roost deploy``.

``roost deploy``'s parser (``roost.cli.core``) adds the fleet flags with
``add_deploy_flags`` and hands a deploy with hosts to ``deploy_main``, which
plans it (``plan_from_args``: arguments, inventory and ``roost.toml`` into a
``DeployPlan``), runs it with ``roost.fleet.deploy.run_deploy`` while drawing
its progress, switches the hosts wave by wave with ``--activate``, and prints
the summary.

Promises: the library gets typed requests only (``DeployPlan``, not the
arguments); ``deploy_main`` returns 0 when the summary is ok, 1 otherwise;
``plan_from_args`` raises ``UsageError``/``ConfigError`` before anything
connects.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roost.activation import RELEASES
from roost.cli.flags import install_options
from roost.cli.fleet_args import add_fleet_flags, fleet_config, load_inv, ssh_options
from roost.errors import UsageError

if TYPE_CHECKING:
    from roost.fleet.deploy import DeployPlan
    from roost.progress import DeploySummary


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
        print(json.dumps(summary.to_json(), indent=2, default=str))
    else:
        for line in render_summary(summary):
            print(line)
        print_rollout_hosts(summary)
        if summary.aborted:
            print(f"aborted: {summary.aborted}")
        for err in summary.cleanup_errors:
            print(f"clean-up: {err}")
    return 0 if summary.ok else 1


async def _fleet_rollout(
    args: argparse.Namespace, plan: DeployPlan, summary: DeploySummary, waves: Any
) -> None:
    """``roost deploy -i --activate``: switch the installed hosts wave by wave."""
    from roost.cli.releases import merge_rollout, run_ssh_rollout

    ok = {h.name for h in summary.hosts if h.ok}
    hosts = [h for h in plan.inventory.peers if h.name in ok]
    base = plan.peer.dest.removesuffix(f"/{RELEASES}")
    result = await run_ssh_rollout(
        args, hosts, plan.cfg, plan.ssh, base, plan.tag, waves, keep=args.keep
    )
    merge_rollout(summary, result)

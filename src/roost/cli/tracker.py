"""``roost tracker``: run the BitTorrent tracker in the foreground."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from roost.cli.flags import path
from roost.errors import ConfigError, TrackerError, UsageError

__all__ = ["build_config", "read_allow_list", "read_locality", "register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tracker",
        help="run the BitTorrent tracker (foreground)",
        description=(
            "Run roost's BitTorrent tracker: announce and scrape, seeders first, "
            "same rack/datacenter first, optional allow-list and tokens, "
            "/stats.json, /metrics and a live page on the same port. "
            "Stops cleanly (saving --state) on SIGTERM or Ctrl-C."
        ),
    )
    p.add_argument(
        "--bind",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; use 0.0.0.0 to serve a fleet)",
    )
    p.add_argument("--port", type=int, default=8998, help="port (default 8998, as Murder)")
    p.add_argument("--interval", type=int, default=5, help="announce interval, seconds")
    p.add_argument("--min-interval", type=int, default=None, help="minimum announce interval")
    p.add_argument(
        "--peer-timeout",
        type=float,
        default=0.0,
        help="forget roost's peers silent this long (default 3 x interval); "
        "stock clients are kept at least this long (see --client-interval)",
    )
    p.add_argument(
        "--client-interval",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="announce interval assumed for a stock client until its own is seen; "
        "it is kept that long plus a quarter and 30 s (default 600, as rtorrent)",
    )
    p.add_argument(
        "--max-swarms",
        type=int,
        default=10_000,
        help="most swarms of info-hashes not on the allow-list; announces for more "
        "are refused (default 10000)",
    )
    p.add_argument(
        "--max-peers",
        type=int,
        default=100_000,
        help="most peers in one swarm; a new peer's announce beyond is refused (default 100000)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=4096,
        help="most open connections; the quietest is closed to make room "
        "(default 4096, lowered to fit the open-file limit)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="close a connection silent this long (default 60)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close a connection whose request takes longer to arrive (default 10)",
    )
    p.add_argument("--numwant", type=int, default=50, help="peers handed out by default")
    p.add_argument("--numwant-max", type=int, default=200, help="most peers handed out")
    p.add_argument(
        "--state",
        "--dfile",
        dest="state",
        type=path,
        metavar="FILE",
        help="state file: swarms survive a restart (Murder's --dfile)",
    )
    p.add_argument(
        "--allow-list",
        type=path,
        metavar="FILE",
        help="serve only these info-hashes (lines: HEX [TAG [TOKEN]])",
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="HASH",
        help="serve this info-hash (repeatable; implies allow-list mode)",
    )
    p.add_argument("--token", help="global announce token (token= in the announce URL)")
    p.add_argument(
        "--require-tokens", action="store_true", help="refuse announces without a valid token"
    )
    p.add_argument(
        "--locality",
        type=path,
        metavar="FILE",
        help="address prefixes to labels (lines: CIDR dc=NAME rack=NAME)",
    )
    p.add_argument(
        "--dc",
        action="append",
        default=[],
        metavar="CIDR=NAME",
        help="peers in CIDR are in datacenter NAME (repeatable)",
    )
    p.add_argument(
        "--rack",
        action="append",
        default=[],
        metavar="CIDR=NAME",
        help="peers in CIDR are in rack NAME (repeatable)",
    )
    p.add_argument("--no-locality", action="store_true", help="ignore dc/rack labels")
    p.add_argument(
        "--cross-rack",
        type=int,
        default=2,
        help="peers from other racks in every handout (default 2)",
    )
    p.add_argument(
        "--cross-dc",
        type=int,
        default=1,
        help="peers from other datacenters handed to a gateway (default 1)",
    )
    p.add_argument(
        "--dc-gateways",
        type=int,
        default=2,
        help="peers per rack that talk to other datacenters (default 2)",
    )
    p.add_argument(
        "--untrusted-ip",
        action="store_true",
        help="ignore the ip= announce parameter; use the connection's address",
    )
    p.add_argument(
        "--stats-allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="networks allowed to read /stats.json, /metrics, / (repeatable)",
    )
    p.add_argument(
        "--stats-ttl",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="serve /stats.json and /metrics from a snapshot at most this old "
        "(default 1; 0 = build for every request)",
    )
    p.add_argument("--announce-host", help="host name to print in the announce URL")
    p.set_defaults(handler=run)


def _cidr_name(value: str, flag: str) -> tuple[str, str]:
    cidr, sep, name = value.partition("=")
    if not sep or not cidr or not name:
        raise UsageError(f"{flag} {value!r}: expected CIDR=NAME")
    return cidr.strip(), name.strip()


def read_allow_list(path: Path) -> list[tuple[str, str | None, str | None]]:
    """(hex, tag, token) per line of an allow-list file; raise ``ConfigError``."""
    from roost.tracker.server import parse_info_hash

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read allow-list: {exc.strerror or exc}", path=str(path)) from exc
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 3:
            raise ConfigError("expected: INFO_HASH [TAG [TOKEN]]", path=str(path), line=n)
        try:
            parse_info_hash(fields[0])
        except TrackerError as exc:
            raise ConfigError(str(exc), path=str(path), line=n) from exc
        tag = fields[1] if len(fields) > 1 else None
        token = fields[2] if len(fields) > 2 else None
        entries.append((fields[0].lower(), tag, token))
    return entries


def read_locality(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(dc prefixes, rack prefixes) from lines ``CIDR dc=NAME rack=NAME``."""
    import ipaddress

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read locality: {exc.strerror or exc}", path=str(path)) from exc
    dcs: list[tuple[str, str]] = []
    racks: list[tuple[str, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        cidr = fields[0]
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{cidr!r} is not a CIDR network", path=str(path), line=n) from exc
        if len(fields) == 1:
            raise ConfigError("expected: CIDR dc=NAME rack=NAME", path=str(path), line=n)
        for item in fields[1:]:
            key, sep, name = item.partition("=")
            if not sep or not name or key not in ("dc", "rack"):
                raise ConfigError(
                    f"bad field {item!r} (dc=NAME or rack=NAME)", path=str(path), line=n
                )
            (dcs if key == "dc" else racks).append((cidr, name))
    return dcs, racks


def build_config(args: argparse.Namespace) -> tuple[Any, list[tuple[str, str | None, str | None]]]:
    """The TrackerConfig and the allow-list entries the arguments describe."""
    from roost.tracker import LocalityPolicy, TrackerConfig
    from roost.tracker.server import parse_info_hash

    allows: list[tuple[str, str | None, str | None]] = []
    if args.allow_list is not None:
        allows += read_allow_list(args.allow_list)
    for h in args.allow:
        parse_info_hash(h)
        allows.append((h.lower(), None, None))
    dcs = [_cidr_name(v, "--dc") for v in args.dc]
    racks = [_cidr_name(v, "--rack") for v in args.rack]
    if args.locality is not None:
        more_dcs, more_racks = read_locality(args.locality)
        dcs += more_dcs
        racks += more_racks
    try:
        policy = LocalityPolicy(
            enabled=not args.no_locality,
            cross_rack_min=args.cross_rack,
            cross_dc_min=args.cross_dc,
            dc_gateways_per_rack=args.dc_gateways,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    min_interval = args.min_interval
    if min_interval is None:
        min_interval = max(1, args.interval // 2)
    config = TrackerConfig(
        bind=args.bind,
        port=args.port,
        interval=args.interval,
        min_interval=min_interval,
        peer_timeout=args.peer_timeout,
        client_interval=args.client_interval,
        max_swarms=args.max_swarms,
        max_peers=args.max_peers,
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        request_timeout=args.request_timeout,
        numwant_default=args.numwant,
        numwant_max=args.numwant_max,
        state_file=args.state,
        allow_list_only=bool(allows),
        tokens_required=args.require_tokens,
        token=args.token,
        trust_ip_param=not args.untrusted_ip,
        locality=policy,
        dc_prefixes=tuple(dcs),
        rack_prefixes=tuple(racks),
        stats_allow=tuple(args.stats_allow),
        announce_host=args.announce_host,
        stats_ttl=args.stats_ttl,
    )
    return config, allows


def run(args: argparse.Namespace) -> int:
    # here, not at module load: every roost command builds this parser
    from roost.tracker.server import run_loop  # uvloop when installed

    config, allows = build_config(args)
    return run_loop(_serve(config, allows))


async def _serve(config: Any, allows: list[tuple[str, str | None, str | None]]) -> int:
    import asyncio
    import time

    from roost.tracker import TrackerServer
    from roost.tracker.swarm import Registry

    server = TrackerServer(config, Registry(config, time.time()))
    await server.start()
    for h, tag, token in allows:
        server.allow(h, tag=tag, token=token)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, done.set)
    print(f"roost tracker: announce URL {server.announce_url_with_token(config.token)}", flush=True)
    mode = []
    if config.allow_list_only:
        mode.append(f"allow-list of {len(allows)}")
    if config.tokens_required or config.token:
        mode.append("tokens required")
    if config.state_file is not None:
        mode.append(f"state in {config.state_file}")
    if mode:
        print(f"roost tracker: {', '.join(mode)}", flush=True)
    try:
        await done.wait()
    finally:
        await server.stop()
    print("roost tracker: stopped", file=sys.stderr, flush=True)
    return 0

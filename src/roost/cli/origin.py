"""``roost origin serve``: the HTTP(S) origin datacenters' seeds web-seed from."""

from __future__ import annotations

import argparse
import json
import threading
from typing import Any

from roost.cli.flags import path, port, size
from roost.cli.signals import StopOnSignals


def register(sub: Any) -> None:
    origin = sub.add_parser("origin", help="serve release payloads over HTTP(S) (BEP 19 web seed)")
    verbs = origin.add_subparsers(dest="origin_command", metavar="VERB", required=True)
    serve = verbs.add_parser(
        "serve",
        help="serve DIR read-only with Range support (no listing, no dot-files)",
        description=(
            "Serve the files of DIR (e.g. the --out of roost create) read-only over HTTP, "
            "or HTTPS with --tls-cert/--tls-key, for BEP 19 web seeding: give "
            "--web-seed URL/TAG.tar to roost create, roost peer or roost seed. "
            "Byte counts are at /.roost-origin/stats.json."
        ),
    )
    serve.add_argument("root", type=path, metavar="DIR", help="directory to serve")
    serve.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=port, default=8080, help="port (default 8080; 0: any)")
    serve.add_argument("--tls-cert", type=path, metavar="PEM", help="certificate chain (HTTPS)")
    serve.add_argument("--tls-key", type=path, metavar="PEM", help="private key (HTTPS)")
    add_server_limit_flags(serve)
    serve.add_argument(
        "--rate-limit",
        type=size,
        default=0,
        metavar="RATE",
        help="cap the origin's whole upload, bytes/s (e.g. 50M); 0 = none",
    )
    serve.add_argument(
        "--lifetime",
        type=float,
        default=0.0,
        metavar="S",
        help="stop by itself after S seconds (0: serve until stopped)",
    )
    serve.set_defaults(handler=_serve)


def add_server_limit_flags(p: argparse.ArgumentParser) -> None:
    """``--idle-timeout``, ``--max-connections`` (roost origin serve, roost channel serve)."""
    from roost.limits import ServerLimits

    defaults = ServerLimits()
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=defaults.idle_timeout,
        metavar="S",
        help=f"close a connection idle for S seconds (default {defaults.idle_timeout:g}); "
        f"headers must arrive within {defaults.request_timeout:g}s",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        metavar="N",
        help=f"at N open connections (default {defaults.max_connections}) close the oldest "
        "idle one, or answer 503 if none is idle",
    )


def server_limits(args: argparse.Namespace) -> Any:
    """The ``ServerLimits`` of :func:`add_server_limit_flags`; ``UsageError`` if absurd."""
    from roost.errors import UsageError
    from roost.limits import ServerLimits

    if args.idle_timeout <= 0:
        raise UsageError(f"--idle-timeout must be positive, got {args.idle_timeout:g}")
    if args.max_connections < 1:
        raise UsageError(f"--max-connections must be at least 1, got {args.max_connections}")
    return ServerLimits(idle_timeout=args.idle_timeout, max_connections=args.max_connections)


def _serve(args: argparse.Namespace) -> int:
    from roost.origin import OriginConfig, OriginServer

    stop = threading.Event()
    StopOnSignals().forward(stop.set)
    server = OriginServer(
        OriginConfig(
            root=args.root,
            bind=args.bind,
            port=args.port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            rate_limit=args.rate_limit,
            limits=server_limits(args),
        )
    ).start()
    if args.lifetime > 0:
        timer = threading.Timer(args.lifetime, stop.set)
        timer.daemon = True
        timer.start()
    print(f"origin serving {args.root} at {server.url()}", flush=True)
    try:
        server.serve_until(stop)
    finally:
        server.stop()
    print(json.dumps({"origin": server.stats().to_json()}), flush=True)
    return 0


# Flags shared by roost peer / roost seed (multi-datacenter) ----------------------


def add_web_seed_flags(p: argparse.ArgumentParser) -> None:
    """``--web-seed``, ``--web-seed-ca``, ``--insecure-web-seed-tls``."""
    p.add_argument(
        "--web-seed",
        action="append",
        default=[],
        metavar="URL",
        help="HTTP(S) origin of the payload (BEP 19), added to the torrent's (repeatable)",
    )
    p.add_argument(
        "--web-seed-ca",
        metavar="PEM",
        help="trust this CA bundle for HTTPS web seeds and trackers (not the system's)",
    )
    p.add_argument(
        "--insecure-web-seed-tls",
        action="store_true",
        help="do not check HTTPS web seed/tracker certificates (tests only)",
    )


def add_dht_flags(p: argparse.ArgumentParser) -> None:
    """``--dht`` (off by default) and ``--dht-bootstrap HOST:PORT``."""
    p.add_argument(
        "--dht", action="store_true", help="also find peers over the DHT (off by default)"
    )
    p.add_argument(
        "--dht-bootstrap",
        action="append",
        default=[],
        metavar="HOST:PORT",
        type=_host_port,
        help="DHT node to join through (e.g. the datacenter seed); implies --dht",
    )


def _host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text

"""``roost lab``: bring an emulated fleet up, run commands on it, take it down."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from roost.errors import UsageError

if TYPE_CHECKING:  # imported by the handlers: every roost command builds this parser
    from roost.lab.netns import Lab


def register(sub: Any) -> None:
    lab = sub.add_parser(
        "lab",
        help="emulated fleet in network namespaces (rehearse and benchmark deploys)",
        description=(
            "An emulated fleet on this machine: N hosts in network namespaces behind a "
            "bridge, addresses from 198.18.0.0/15, links shaped with tc. Needs root."
        ),
    )
    lsub = lab.add_subparsers(dest="lab_command", metavar="ACTION")
    lab.set_defaults(handler=lambda a: (lab.print_help(), 2)[1])

    up = lsub.add_parser("up", help="create N hosts and print their addresses")
    up.add_argument("n", type=int, metavar="N", help="number of hosts")
    up.add_argument("--rate", default=None, help="link rate per host both ways, e.g. 100mbit")
    up.add_argument("--delay", default="0", help="one-way delay per host link, e.g. 1ms")
    up.add_argument("--subnet", default="198.18.0.0/24", help="within 198.18.0.0/15")
    up.add_argument(
        "--no-private-mounts",
        action="store_true",
        help="share /tmp and /opt with this machine instead of a tmpfs per host",
    )
    _name(up)
    up.set_defaults(handler=_up)

    down = lsub.add_parser("down", help="remove a lab and its processes (also after a crash)")
    _name(down)
    down.add_argument("--prefix", dest="name", help=argparse.SUPPRESS)
    down.set_defaults(handler=_down)

    run = lsub.add_parser("run", help="run a command on a host (h3, an address) or on all")
    run.add_argument("host", metavar="HOST|all")
    run.add_argument(
        "cmd",
        nargs=argparse.REMAINDER,
        metavar="-- CMD...",
        help="the command; roost's options may also come after HOST, before the --",
    )
    _name(run)
    run.set_defaults(handler=_run)

    status = lsub.add_parser("status", help="list labs and their hosts")
    _name(status, default=None)
    status.set_defaults(handler=_status)


def _name(p: argparse.ArgumentParser, default: str | None = "roostlab") -> None:
    p.add_argument("--name", default=default, help="lab name (default: roostlab)")


def _delay_ms(text: str) -> float:
    t = text.strip().lower().removesuffix("ms")
    try:
        value = float(t)
    except ValueError:
        raise UsageError(f"bad --delay {text!r}: expected e.g. 2ms") from None
    if value < 0:
        raise UsageError(f"bad --delay {text!r}: must not be negative")
    return value


def _up(args: argparse.Namespace) -> int:
    from roost.lab.netns import Lab, parse_rate

    lab = Lab(
        args.n,
        rate_mbit=parse_rate(args.rate),
        delay_ms=_delay_ms(args.delay),
        prefix=args.name,
        subnet=args.subnet,
        private_mounts=() if args.no_private_mounts else ("/tmp", "/opt"),
    )
    lab.up()
    _print_lab(lab)
    print(f"take it down with: roost lab down --name {lab.prefix}")
    return 0


def _print_lab(lab: Lab) -> None:
    rate = f"{lab.rate_mbit:g} Mbit/s" if lab.rate_mbit else "unshaped"
    delay = f", {lab.delay_ms:g} ms delay" if lab.delay_ms else ""
    print(f"lab {lab.prefix}: {len(lab.hosts)} hosts, {rate}{delay}, subnet {lab.subnet}")
    print(f"  controller  {lab.controller_address:<15} (this machine, {lab.controller_link})")
    for h in lab.hosts:
        print(f"  {h.name:<11} {h.address:<15} netns {h.netns}")


def _down(args: argparse.Namespace) -> int:
    from roost.lab.netns import teardown

    removed = teardown(args.name)
    print(f"lab {args.name}: " + (f"removed {', '.join(removed)}" if removed else "nothing left"))
    return 0


def _run(args: argparse.Namespace) -> int:
    cmd = args.cmd
    if "--" in cmd:  # ``HOST --name N -- CMD``: roost's options before the --
        cut = cmd.index("--")
        head, cmd = cmd[:cut], cmd[cut + 1 :]
        if head:
            options = argparse.ArgumentParser(prog="roost lab run", add_help=False)
            _name(options, default=args.name)
            known, extra = options.parse_known_args(head)
            if extra:
                raise UsageError(
                    f"roost lab run: {' '.join(extra)} before --: the command goes after --"
                )
            args.name = known.name
    if not cmd:
        raise UsageError("roost lab run: give a command after --")
    from roost.lab.netns import Lab

    lab = Lab.attach(args.name)
    hosts = lab.hosts if args.host == "all" else [lab.host(args.host)]
    worst = 0
    for h in hosts:
        if len(hosts) > 1:
            print(f"== {h.name} {h.address}", flush=True)
        rc = subprocess.run(h.command(cmd), check=False).returncode
        worst = worst or rc
        if rc and len(hosts) > 1:
            print(f"roost: {h.name}: exit status {rc}", file=sys.stderr)
    return worst


def _status(args: argparse.Namespace) -> int:
    from roost.lab.netns import Lab, list_labs

    names = [args.name] if args.name else list_labs()
    if not names:
        print("no lab is up")
    for name in names:
        try:
            _print_lab(Lab.attach(name))
        except UsageError:
            raise
        except Exception as exc:  # a leftover without state: say so
            print(f"lab {name}: {exc} (clean it with: roost lab down --name {name})")
    return 0

"""The inventory and SSH flags that every command reaching hosts over SSH shares,
and what they resolve to.

``add_fleet_flags`` is the one ``fleet (SSH)`` flag group of ``roost fleet
VERB``, ``roost bootstrap``, ``roost deploy -i`` and ``roost releases``,
``activate``, ``rollback`` and ``rollout``; ``load_inv``, ``fleet_config`` and
``ssh_options`` turn the parsed flags (over ``roost.toml``) into the
``Inventory``, ``FleetConfig`` and ``SSHOptions`` the library takes.

Promises: building a parser with these flags imports argparse alone; the
``roost.fleet`` modules (asyncssh among them, ~0.5 CPU-s) are imported by the
functions that resolve the flags, when a command runs. Errors: argparse's
one line for a ``--jump`` that is not ``[user@]host[:port]`` or a time limit
not above 0; ``UsageError`` (no hosts, ``--forks`` below 1, an identity or
known_hosts file that cannot be read: refused once, before any host is
reached), ``ConfigError`` from the inventory or ``roost.toml``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from roost.cli.flags import path
from roost.errors import UsageError

if TYPE_CHECKING:
    from roost.fleet.config import FleetConfig
    from roost.fleet.inventory import Inventory
    from roost.fleet.ssh import SSHOptions


def add_fleet_flags(p: argparse.ArgumentParser, *, inventory: bool = True) -> None:
    """SSH and fleet flags shared by ``roost fleet *`` and ``roost deploy -i``."""
    g = p.add_argument_group("fleet (SSH)")
    if inventory:
        g.add_argument(
            "-i", "--inventory", type=path, help="Ansible INI/YAML inventory or a plain host list"
        )
    g.add_argument(
        "--hosts",
        nargs="+",
        metavar="[USER@]HOST[:PORT]",
        help="hosts instead of an inventory (first is tracker and seeder)",
    )
    g.add_argument("--config", type=path, help="roost.toml (default ./roost.toml if present)")
    g.add_argument("-f", "--forks", type=at_least(1), help="hosts worked on at once (default 100)")
    g.add_argument(
        "--max-fail-percent",
        type=percent,
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
    g.add_argument(
        "--jump",
        type=jump_hosts,
        help="jump host [user@]host[:port], several joined by commas (ProxyJump)",
    )
    g.add_argument(
        "--connect-timeout", type=positive_seconds, help="seconds to connect (default 10)"
    )
    g.add_argument(
        "--step-timeout", type=positive_seconds, help="seconds per host and step (default 600)"
    )
    g.add_argument("--remote-path", help="install path on hosts (default /opt/roost)")
    g.add_argument("--remote-temp-path", help="temp path on hosts (default /tmp/roost)")
    g.add_argument("--tracker-port", type=tcp_port, help="tracker port (default 8998)")
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


def tcp_port(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    value = at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port {value} out of range (1-65535)")
    return value


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def percent(text: str) -> float:
    """An argparse type: a percentage, 0 to 100."""
    if not 0 <= (value := _number(text, "a number")) <= 100:  # NaN too
        raise argparse.ArgumentTypeError(f"a percentage is 0 to 100, got {text}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    if not 0 < (value := _number(text, "a number of seconds")) < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def jump_hosts(text: str) -> str:
    """An argparse type: ``[user@]host[:port]``, several joined by commas."""
    from roost.fleet.config import jump_problem

    problem = jump_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _ssh_file(args: argparse.Namespace, name: str, setting: str | None, check: bool) -> str | None:
    """``--NAME`` or else roost.toml's ``ssh.NAME``, a file asyncssh reads on
    every connection: one that cannot be read is refused here, once (else
    every host fails as "cannot reach HOST")."""
    given = getattr(args, name, None)
    path: str | None = given or setting
    if path and check:
        flag = f"--{name.replace('_', '-')}" if given else f"roost.toml's ssh.{name}"
        try:
            with open(Path(path).expanduser(), "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None
    return path


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
    insecure = bool(getattr(args, "insecure_no_host_key_check", None)) or (
        s.insecure_no_host_key_check
    )
    forks = cfg.forks
    if forks < 1:
        raise UsageError("--forks must be at least 1")
    return SSHOptions(
        config=s.config,
        identity=_ssh_file(args, "identity", s.identity, check=True),
        known_hosts=_ssh_file(args, "known_hosts", s.known_hosts, check=not insecure),
        insecure_no_host_key_check=insecure,
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

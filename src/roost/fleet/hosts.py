"""Hosts and inventories: the model every inventory format fills in, and host selection.

``Host`` is one host as the inventory names it and how SSH reaches it;
``Inventory`` is the hosts with their roles (tracker, seeder, peer) and the
``all`` vars. ``Builder`` collects what a format reads (groups, children,
group vars, host vars; ``roost.fleet.inventory_formats`` feeds it) and
``Builder.build`` turns it into an ``Inventory``: vars merged ``all`` first,
then parent groups before children, ``host_vars`` and the host's own line
last; roles from the groups ``tracker``, ``seeder`` and ``peer`` (plural names
too), or Murder's default (every host a peer, the first peer also tracker and
seeder); hosts with ``ansible_connection=local`` are the controller and left
out.

Promises: every ``Host`` built here has been checked (``make_host``): a name
without control characters, an address SSH can take (host name or IP), a port
in 1-65535, a user name that is not an option. Group nesting is refused past
``MAX_GROUP_DEPTH``, cycles and unknown children are named with their line,
and an inventory of more than ``MAX_HOSTS`` hosts is refused, all as
``ConfigError`` naming file and line. No I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roost.errors import ConfigError

ROLE_GROUPS = {
    "tracker": ("tracker", "trackers"),
    "seeder": ("seeder", "seeders"),
    "peer": ("peer", "peers"),
}
_LABELS = ("datacenter", "rack")
#: an inventory (or one ``web[a:b]`` pattern) naming more hosts is refused
MAX_HOSTS = 100_000
#: ``[group:children]`` chains deeper than this are refused
MAX_GROUP_DEPTH = 50


@dataclass(frozen=True)
class Host:
    """One host as the inventory names it, and how SSH reaches it."""

    name: str
    address: str
    port: int | None = None
    user: str | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    groups: frozenset[str] = frozenset()

    @property
    def is_local(self) -> bool:
        return str(self.vars.get("ansible_connection", "")) == "local"

    @property
    def labels(self) -> dict[str, str]:
        """Locality labels passed to the peer (datacenter, rack)."""
        return {k: str(self.vars[k]) for k in _LABELS if self.vars.get(k) not in (None, "")}

    @property
    def target(self) -> str:
        """``user@address:port`` for messages."""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.address}{port}"


@dataclass(frozen=True)
class Inventory:
    path: Path | None
    hosts: tuple[Host, ...]
    trackers: tuple[Host, ...]
    seeders: tuple[Host, ...]
    peers: tuple[Host, ...]
    vars: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tracker(self) -> Host:
        return self.trackers[0]

    @property
    def seeder(self) -> Host:
        return self.seeders[0]

    @property
    def remote_hosts(self) -> tuple[Host, ...]:
        """Every host roost must reach over SSH, each once, in inventory order."""
        seen: dict[str, Host] = {}
        for h in (*self.trackers, *self.seeders, *self.peers):
            seen.setdefault(h.name, h)
        return tuple(seen.values())

    def get(self, key: str, default: Any = None) -> Any:
        value = self.vars.get(key)
        return default if value in (None, "") else value


# ---------------------------------------------------------------- groups -> hosts


class Builder:
    """Collects groups, host vars and group vars from any format."""

    def __init__(self, path: str):
        self.path = path
        self.host_order: list[str] = []
        self.host_vars: dict[str, dict[str, Any]] = {}
        self.host_line: dict[str, int] = {}
        # dicts as ordered sets: adding a host is O(1), not a scan of the group
        self.group_hosts: dict[str, dict[str, None]] = {}
        self.group_vars: dict[str, dict[str, Any]] = {}
        self.children: dict[str, list[str]] = {}
        self.child_line: dict[tuple[str, str], int] = {}
        self._members: dict[str, dict[str, None]] = {}
        self._ancestors: dict[str, list[str]] = {}
        self._parents: dict[str, list[str]] | None = None

    def group(self, name: str) -> None:
        self.group_hosts.setdefault(name, {})

    def add_child(self, parent: str, kid: str, line: int) -> None:
        self.children.setdefault(parent, []).append(kid)
        self.child_line.setdefault((parent, kid), line)

    def add_host(self, group: str, name: str, hvars: Mapping[str, Any], line: int) -> None:
        if name not in self.host_vars:
            if len(self.host_order) >= MAX_HOSTS:
                raise ConfigError(
                    f"inventory names more than {MAX_HOSTS} hosts", path=self.path, line=line
                )
            self.host_order.append(name)
            self.host_vars[name] = {}
            self.host_line[name] = line
        self.host_vars[name].update(hvars)
        self.group_hosts.setdefault(group, {})[name] = None

    def check_groups(self) -> None:
        """Refuse unknown child groups, cycles and chains deeper than MAX_GROUP_DEPTH."""
        for parent, kids in self.children.items():
            for kid in kids:
                if kid not in self.group_hosts and kid not in self.children:
                    raise ConfigError(
                        f"group {brief(parent)} names unknown child group {brief(kid)}",
                        path=self.path,
                        line=self.child_line.get((parent, kid)),
                    )
        # Iterative depth-first walk, (group, index of its next child), that
        # gives each group its height: the longest chain of children below it.
        height: dict[str, int] = {}
        for top in self.children:
            if top in height:
                continue
            stack: list[tuple[str, int]] = [(top, 0)]
            on_path = {top}
            while stack:
                g, i = stack[-1]
                kids = self.children.get(g, [])
                if i == len(kids):
                    stack.pop()
                    on_path.discard(g)
                    deepest = max(kids, key=lambda k: height[k], default=None)
                    height[g] = 1 + (height[deepest] if deepest is not None else 0)
                    if height[g] > MAX_GROUP_DEPTH:
                        raise ConfigError(
                            f"groups nested deeper than {MAX_GROUP_DEPTH} (group {brief(g)})",
                            path=self.path,
                            line=self.child_line.get((g, deepest)) if deepest else None,
                        )
                    continue
                stack[-1] = (g, i + 1)
                kid = kids[i]
                if kid in on_path:
                    raise ConfigError(
                        f"group {brief(kid)} is its own child (through {brief(g)})",
                        path=self.path,
                        line=self.child_line.get((g, kid)),
                    )
                if kid not in height:
                    stack.append((kid, 0))
                    on_path.add(kid)

    def ancestors(self, group: str) -> list[str]:
        """Groups whose vars apply through ``group`` (parents first).

        Memoized, so a lattice of groups costs its size, not its paths; the
        recursion is bounded by ``check_groups``.
        """
        if group in self._ancestors:
            return self._ancestors[group]
        if self._parents is None:
            self._parents = {}
            for parent, kids in self.children.items():
                for kid in dict.fromkeys(kids):
                    self._parents.setdefault(kid, []).append(parent)
        out: dict[str, None] = {}
        for parent in self._parents.get(group, []):
            out.update(dict.fromkeys(self.ancestors(parent)))
            out[parent] = None
        self._ancestors[group] = list(out)
        return self._ancestors[group]

    def members(self, group: str) -> list[str]:
        return list(self._member_set(group))

    def _member_set(self, group: str) -> dict[str, None]:
        if group not in self._members:
            out = dict(self.group_hosts.get(group, {}))
            for kid in self.children.get(group, []):
                out.update(self._member_set(kid))
            self._members[group] = out
        return self._members[group]

    def build(
        self,
        path: Path | None,
        extra_group_vars: Mapping[str, Mapping[str, Any]],
        extra_host_vars: Mapping[str, Mapping[str, Any]],
    ) -> Inventory:
        self.check_groups()
        gvars = {g: dict(v) for g, v in extra_group_vars.items()}
        for g, v in self.group_vars.items():
            gvars.setdefault(g, {}).update(v)
        direct: dict[str, list[str]] = {h: [] for h in self.host_order}
        for g in self.group_hosts:
            for h in self.members(g):
                direct[h].append(g)
        hosts: dict[str, Host] = {}
        for name in self.host_order:
            merged: dict[str, Any] = dict(gvars.get("all", {}))
            groups: dict[str, None] = {}
            for g in direct[name]:
                groups.update(dict.fromkeys(self.ancestors(g)))
                groups[g] = None
            for g in groups:
                merged.update(gvars.get(g, {}))
            merged.update(extra_host_vars.get(name, {}))
            merged.update(self.host_vars[name])
            hosts[name] = make_host(
                name, merged, frozenset(groups), self.path, self.host_line.get(name)
            )
        remote = [h for h in hosts.values() if not h.is_local]
        roles: dict[str, list[Host]] = {}
        for role, names in ROLE_GROUPS.items():
            found: dict[str, None] = {}
            for g in names:
                if g in self.group_hosts or g in self.children:
                    found.update(dict.fromkeys(self._member_set(g)))
            roles[role] = [hosts[h] for h in found if not hosts[h].is_local]
        peers = (
            roles["peer"]
            or [h for h in remote if not ({"tracker", "seeder", "trackers", "seeders"} & h.groups)]
            or remote
        )
        if not peers and not roles["tracker"] and not roles["seeder"]:
            raise ConfigError("inventory names no hosts to deploy to", path=self.path)
        trackers = roles["tracker"] or peers[:1]
        seeders = roles["seeder"] or peers[:1]
        all_vars = dict(gvars.get("all", {}))
        return Inventory(
            path=path,
            hosts=tuple(remote),
            trackers=tuple(trackers),
            seeders=tuple(seeders),
            peers=tuple(peers),
            vars=all_vars,
        )


def make_host(
    name: str, hvars: Mapping[str, Any], groups: frozenset[str], path: str, line: int | None
) -> Host:
    address = str(
        hvars.get("ansible_host") or hvars.get("ansible_ssh_host") or hvars.get("__addr") or name
    )
    user_v = hvars.get("ansible_user") or hvars.get("ansible_ssh_user")
    port_v = hvars.get("ansible_port") or hvars.get("ansible_ssh_port")
    if port_v in (None, ""):
        port_v = hvars.get("__port")
    if "__user" in hvars and not user_v:
        user_v = hvars["__user"]
    port: int | None = None
    if port_v not in (None, ""):
        port = _port(name, port_v, path, line)
    reason = _bad_name(name) or _bad_address(address)
    if reason is None and user_v:
        reason = _bad_user(str(user_v))
    if reason:
        raise ConfigError(f"host {brief(name)}: {reason}", path=path, line=line)
    clean = {k: v for k, v in hvars.items() if not k.startswith("__")}
    return Host(
        name=name,
        address=address,
        port=port,
        user=str(user_v) if user_v else None,
        vars=clean,
        groups=groups,
    )


_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,252})")


def brief(value: object) -> str:
    """``repr(value)``, cut to 80 characters: a 1 MiB host name stays a readable error."""
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "...'"


def _port(name: str, value: object, path: str, line: int | None) -> int:
    text = str(value)
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise ConfigError(
            f"host {brief(name)}: port {brief(value)} is not a number", path=path, line=line
        )
    port = int(text)
    if not 0 < port < 65536:
        raise ConfigError(
            f"host {brief(name)}: port {port} out of range (1-65535)", path=path, line=line
        )
    return port


def _bad_name(name: str) -> str | None:
    if not name.isprintable() or any(c.isspace() for c in name):
        return "name has a control or space character"
    if len(name) > 512:
        return "name is longer than 512 characters"
    return None


def _bad_address(address: str) -> str | None:
    """Why SSH could not be pointed at ``address`` (a host name or IP), or None."""
    if _HOSTNAME.fullmatch(address):
        return None
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return f"address {brief(address)} is not a host name or IP address"
    return None


def _bad_user(user: str) -> str | None:
    if not user.isprintable() or any(c.isspace() for c in user) or "@" in user:
        return f"user {brief(user)} has a control, space or '@' character"
    if user.startswith("-") or len(user) > 256:
        return f"user {brief(user)} is not a user name"
    return None

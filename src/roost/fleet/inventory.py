"""Inventories: which hosts play tracker, seeder and peer, and how to reach them.

Reads what Murder and ansible-lssd users already have (sans-IO apart from
``load_inventory`` reading files):

* Ansible INI: ``[group]`` host lines ``name var=value ...`` (``name:port``,
  numeric ranges ``web[01:20]``), ``[group:vars]``, ``[group:children]``,
  ``#``/``;`` comments. ansible-lssd's ``production`` works unchanged: hosts with
  ``ansible_connection=local`` are the controller and are not deployed to.
* Ansible YAML: ``all: {hosts:, vars:, children: {...}}``.
* A plain list: one ``[user@]host[:port]`` per line (a subset of INI).
* ``group_vars/<group>`` (``.yml``/``.yaml`` or a directory of them) and
  ``host_vars/<host>`` beside the inventory, as ansible-lssd's
  ``group_vars/all`` with ``tag``, ``seeder_files_path``, ``destination_path``.

Roles come from the groups ``tracker``, ``seeder`` and ``peer`` (plural names
too). Murder's default: with no such groups every host is a peer, and the first
peer is also tracker and seeder. Errors raise ``ConfigError`` naming file and line.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from roost.errors import ConfigError

ROLE_GROUPS = {
    "tracker": ("tracker", "trackers"),
    "seeder": ("seeder", "seeders"),
    "peer": ("peer", "peers"),
}
_LABELS = ("datacenter", "rack")


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


# ---------------------------------------------------------------- parsing model


class _Builder:
    """Collects groups, host vars and group vars from any format."""

    def __init__(self, path: str):
        self.path = path
        self.host_order: list[str] = []
        self.host_vars: dict[str, dict[str, Any]] = {}
        self.host_line: dict[str, int] = {}
        self.group_hosts: dict[str, list[str]] = {}
        self.group_vars: dict[str, dict[str, Any]] = {}
        self.children: dict[str, list[str]] = {}

    def group(self, name: str) -> None:
        self.group_hosts.setdefault(name, [])

    def add_host(self, group: str, name: str, hvars: Mapping[str, Any], line: int) -> None:
        if name not in self.host_vars:
            self.host_order.append(name)
            self.host_vars[name] = {}
            self.host_line[name] = line
        self.host_vars[name].update(hvars)
        members = self.group_hosts.setdefault(group, [])
        if name not in members:
            members.append(name)

    def ancestors(self, group: str) -> list[str]:
        """Groups whose vars apply through ``group`` (parents first)."""
        out: list[str] = []

        def visit(g: str, depth: int) -> None:
            if depth > 50:
                raise ConfigError(f"group {g!r} is its own child", path=self.path)
            for parent, kids in self.children.items():
                if g in kids:
                    visit(parent, depth + 1)
                    if parent not in out:
                        out.append(parent)

        visit(group, 0)
        return out

    def members(self, group: str, depth: int = 0) -> list[str]:
        if depth > 50:
            raise ConfigError(f"group {group!r} is its own child", path=self.path)
        out = list(self.group_hosts.get(group, []))
        for kid in self.children.get(group, []):
            out.extend(h for h in self.members(kid, depth + 1) if h not in out)
        return out

    def build(
        self,
        path: Path | None,
        extra_group_vars: Mapping[str, Mapping[str, Any]],
        extra_host_vars: Mapping[str, Mapping[str, Any]],
    ) -> Inventory:
        for parent, kids in self.children.items():
            for kid in kids:
                if kid not in self.group_hosts and kid not in self.children:
                    raise ConfigError(
                        f"group {parent!r} names unknown child group {kid!r}", path=self.path
                    )
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
            groups: list[str] = []
            for g in direct[name]:
                for a in [*self.ancestors(g), g]:
                    if a not in groups:
                        groups.append(a)
            for g in groups:
                merged.update(gvars.get(g, {}))
            merged.update(extra_host_vars.get(name, {}))
            merged.update(self.host_vars[name])
            hosts[name] = _make_host(
                name, merged, frozenset(groups), self.path, self.host_line.get(name)
            )
        remote = [h for h in hosts.values() if not h.is_local]
        roles: dict[str, list[Host]] = {}
        for role, names in ROLE_GROUPS.items():
            found: list[Host] = []
            for g in names:
                if g in self.group_hosts or g in self.children:
                    found.extend(hosts[h] for h in self.members(g) if hosts[h] not in found)
            roles[role] = [h for h in found if not h.is_local]
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


def _make_host(
    name: str, hvars: Mapping[str, Any], groups: frozenset[str], path: str, line: int | None
) -> Host:
    address = str(
        hvars.get("ansible_host") or hvars.get("ansible_ssh_host") or hvars.get("__addr") or name
    )
    user_v = hvars.get("ansible_user") or hvars.get("ansible_ssh_user")
    port_v = hvars.get("ansible_port") or hvars.get("ansible_ssh_port")
    port: int | None = None
    if port_v not in (None, ""):
        try:
            port = int(str(port_v))
        except ValueError:
            raise ConfigError(
                f"host {name!r}: port {port_v!r} is not a number", path=path, line=line
            ) from None
        if not 0 < port < 65536:
            raise ConfigError(f"host {name!r}: port {port} out of range", path=path, line=line)
    if "__port" in hvars and port is None:
        port = int(hvars["__port"])
    if "__user" in hvars and not user_v:
        user_v = hvars["__user"]
    clean = {k: v for k, v in hvars.items() if not k.startswith("__")}
    return Host(
        name=name,
        address=address,
        port=port,
        user=str(user_v) if user_v else None,
        vars=clean,
        groups=groups,
    )


# ---------------------------------------------------------------- INI / plain list

_SECTION = re.compile(r"^\[([^\]\s]+)\]\s*$")
_GROUP_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_RANGE = re.compile(r"\[([0-9a-z]+):([0-9a-z]+)(?::([0-9]+))?\]")
_HOSTPART = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?"
    r"(?:\[(?P<v6>[0-9A-Fa-f]*:[0-9A-Fa-f:.]*)\]"
    r"|(?P<host>(?:[^:\s\[\]]|\[[0-9a-z]+:[0-9a-z]+(?::[0-9]+)?\])+))"
    r"(?::(?P<port>[0-9]+))?$"
)


def _expand(pattern: str, path: str, line: int) -> list[str]:
    m = _RANGE.search(pattern)
    if not m:
        return [pattern]
    start, end, step = m.group(1), m.group(2), int(m.group(3) or 1)
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") else 0
        values = [str(i).zfill(width) for i in range(int(start), int(end) + 1, step)]
    elif len(start) == 1 and len(end) == 1 and start.isalpha() and end.isalpha():
        values = [chr(c) for c in range(ord(start), ord(end) + 1, step)]
    else:
        raise ConfigError(f"bad host range {m.group(0)!r}", path=path, line=line)
    if not values:
        raise ConfigError(f"empty host range {m.group(0)!r}", path=path, line=line)
    out: list[str] = []
    for v in values:
        out.extend(_expand(pattern[: m.start()] + v + pattern[m.end() :], path, line))
    return out


def _split_vars(text: str, path: str, line: int) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError as exc:
        raise ConfigError(f"cannot split line: {exc}", path=path, line=line) from None


def _kv(token: str, path: str, line: int) -> tuple[str, str]:
    if "=" not in token:
        raise ConfigError(f"expected key=value, got {token!r}", path=path, line=line)
    key, value = token.split("=", 1)
    if not key or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
        raise ConfigError(f"bad variable name {key!r}", path=path, line=line)
    return key, value


def parse_ini(text: str, path: str = "<inventory>") -> _Builder:
    """Parse an Ansible INI inventory or a plain host list."""
    b = _Builder(path)
    section, kind = "ungrouped", "hosts"
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = _SECTION.match(line)
        if m:
            name = m.group(1)
            section, _, kind = name.partition(":")
            kind = kind or "hosts"
            if kind not in ("hosts", "vars", "children"):
                raise ConfigError(
                    f"unknown section kind {kind!r} in [{name}]", path=path, line=lineno
                )
            if not _GROUP_NAME.match(section):
                raise ConfigError(f"bad group name {section!r}", path=path, line=lineno)
            if kind == "hosts":
                b.group(section)
            elif kind == "children":
                b.children.setdefault(section, [])
            continue
        if line.startswith("[") and not _HOSTPART.match(line.split()[0]):
            raise ConfigError(f"malformed section header {line!r}", path=path, line=lineno)
        tokens = _split_vars(line, path, lineno)
        if not tokens:
            continue
        if kind == "vars":
            key, sep, value = line.partition("=")
            if not sep:
                raise ConfigError(f"expected key=value, got {line!r}", path=path, line=lineno)
            key, _ = _kv(f"{key.strip()}=", path, lineno)
            value = re.sub(r"\s+[#;].*$", "", value.strip())
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            b.group_vars.setdefault(section, {})[key] = value
            continue
        if kind == "children":
            if len(tokens) != 1 or not _GROUP_NAME.match(tokens[0]):
                raise ConfigError(f"expected one group name, got {line!r}", path=path, line=lineno)
            b.children[section].append(tokens[0])
            continue
        hm = _HOSTPART.match(tokens[0])
        if not hm or "=" in tokens[0]:
            raise ConfigError(f"bad host {tokens[0]!r}", path=path, line=lineno)
        hvars: dict[str, Any] = dict(_kv(t, path, lineno) for t in tokens[1:])
        if hm.group("port"):
            hvars["__port"] = int(hm.group("port"))
        if hm.group("user"):
            hvars["__user"] = hm.group("user")
        hostname = hm.group("v6") or hm.group("host")
        for name in _expand(hostname, path, lineno):
            if hm.group("port"):
                # host:port names a host of its own (several sshd on one address)
                b.add_host(section, f"{name}:{hm.group('port')}", {**hvars, "__addr": name}, lineno)
            else:
                b.add_host(section, name, hvars, lineno)
    return b


# ---------------------------------------------------------------- YAML


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _plain(node: yaml.Node, path: str) -> Any:
    """A YAML node as plain Python data (scalars typed as YAML 1.1 safe types)."""
    try:
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"bad YAML value: {exc}", path=path, line=_line(node)) from None


def _mapping(node: yaml.Node | None, what: str, path: str) -> list[tuple[str, yaml.Node]]:
    if node is None or (isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null")):
        return []
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{what} must be a mapping", path=path, line=_line(node))
    out = []
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode):
            raise ConfigError(f"{what}: keys must be names", path=path, line=_line(k))
        out.append((str(k.value), v))
    return out


def _compose(text: str, path: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"bad YAML: {exc.problem or exc}", path=path, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"bad YAML: {exc}", path=path) from None


def parse_yaml(text: str, path: str = "<inventory>") -> _Builder:
    """Parse an Ansible YAML inventory (``all: {hosts, vars, children}``)."""
    b = _Builder(path)
    root = _compose(text, path)
    if root is None:
        raise ConfigError("inventory is empty", path=path)

    def group(name: str, node: yaml.Node | None, depth: int) -> None:
        if depth > 50:
            raise ConfigError("groups nested too deeply", path=path)
        b.group(name)
        for key, value in _mapping(node, f"group {name!r}", path):
            if key == "hosts":
                for hname, hnode in _mapping(value, f"{name}.hosts", path):
                    hvars = _plain(hnode, path) if hnode is not None else None
                    if hvars is None:
                        hvars = {}
                    if not isinstance(hvars, dict):
                        raise ConfigError(
                            f"host {hname!r}: vars must be a mapping", path=path, line=_line(hnode)
                        )
                    for expanded in _expand(hname, path, _line(value)):
                        b.add_host(name, expanded, hvars, _line(value))
            elif key == "vars":
                gv = _plain(value, path) or {}
                if not isinstance(gv, dict):
                    raise ConfigError(
                        f"{name}.vars must be a mapping", path=path, line=_line(value)
                    )
                b.group_vars.setdefault(name, {}).update(gv)
            elif key == "children":
                kids = b.children.setdefault(name, [])
                for kid, knode in _mapping(value, f"{name}.children", path):
                    kids.append(kid)
                    group(kid, knode, depth + 1)
            else:
                raise ConfigError(
                    f"group {name!r}: unknown key {key!r} (expected hosts, vars, children)",
                    path=path,
                    line=_line(value),
                )

    for name, node in _mapping(root, "inventory", path):
        group(name, node, 0)
    return b


# ---------------------------------------------------------------- files


def _read_vars_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=str(path)) from None
    node = _compose(text, str(path))
    if node is None:
        return {}
    data = _plain(node, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("variables file must be a YAML mapping", path=str(path), line=1)
    return data


def _vars_dir(base: Path) -> dict[str, dict[str, Any]]:
    """``group_vars``/``host_vars``: ``NAME``, ``NAME.yml``/``.yaml`` or ``NAME/*.yml``."""
    out: dict[str, dict[str, Any]] = {}
    if not base.is_dir():
        return out
    for entry in sorted(base.iterdir()):
        if entry.name.startswith("."):
            continue
        name = entry.name
        for suffix in (".yml", ".yaml", ".json"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        if entry.is_dir():
            for f in sorted(entry.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    out.setdefault(name, {}).update(_read_vars_file(f))
        elif entry.is_file():
            out.setdefault(name, {}).update(_read_vars_file(entry))
    return out


def looks_like_yaml(text: str) -> bool:
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "---":
            continue
        return bool(re.match(r"^[A-Za-z0-9_.\-]+:\s*(#.*)?$", line))
    return False


def parse_inventory(
    text: str,
    path: str = "<inventory>",
    *,
    group_vars: Mapping[str, Mapping[str, Any]] | None = None,
    host_vars: Mapping[str, Mapping[str, Any]] | None = None,
    yaml_format: bool | None = None,
) -> Inventory:
    """Parse inventory text (INI, YAML or a plain list) into an ``Inventory``.

    Raises ``ConfigError`` naming ``path`` and the line of the first problem.
    """
    if yaml_format is None:
        yaml_format = path.endswith((".yml", ".yaml")) or looks_like_yaml(text)
    builder = parse_yaml(text, path) if yaml_format else parse_ini(text, path)
    return builder.build(
        Path(path) if path != "<inventory>" else None, group_vars or {}, host_vars or {}
    )


def load_inventory(path: Path | str) -> Inventory:
    """Read an inventory file plus ``group_vars``/``host_vars`` beside it."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read inventory: {exc}", path=str(p)) from None
    return parse_inventory(
        text,
        str(p),
        group_vars=_vars_dir(p.parent / "group_vars"),
        host_vars=_vars_dir(p.parent / "host_vars"),
    )


def hosts_from_strings(specs: Iterable[str]) -> Inventory:
    """An inventory from ``[user@]host[:port]`` strings (all peers)."""
    return parse_inventory("\n".join(specs), "<command line>", yaml_format=False)

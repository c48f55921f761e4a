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

Every host is checked as it is read: a name without control characters, an
address SSH can take (host name or IP), a port in 1-65535. Parsing is linear
in the text, and bounded: YAML by ``roost._parse`` (size, depth, aliases), a
range pattern or the whole inventory by ``MAX_HOSTS``, group nesting by
``MAX_GROUP_DEPTH`` (cycles are named with their line).
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from roost._yaml import compose_yaml, construct_yaml
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


# ---------------------------------------------------------------- parsing model


class _Builder:
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
                        f"group {_short(parent)} names unknown child group {_short(kid)}",
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
                            f"groups nested deeper than {MAX_GROUP_DEPTH} (group {_short(g)})",
                            path=self.path,
                            line=self.child_line.get((g, deepest)) if deepest else None,
                        )
                    continue
                stack[-1] = (g, i + 1)
                kid = kids[i]
                if kid in on_path:
                    raise ConfigError(
                        f"group {_short(kid)} is its own child (through {_short(g)})",
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
            hosts[name] = _make_host(
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


def _make_host(
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
        raise ConfigError(f"host {_short(name)}: {reason}", path=path, line=line)
    clean = {k: v for k, v in hvars.items() if not k.startswith("__")}
    return Host(
        name=name,
        address=address,
        port=port,
        user=str(user_v) if user_v else None,
        vars=clean,
        groups=groups,
    )


_VALUE_COMMENT = re.compile(r"\s[#;]")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,252})")


def _short(value: object) -> str:
    """``repr(value)``, cut to 80 characters: a 1 MiB host name stays a readable error."""
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "...'"


def _port(name: str, value: object, path: str, line: int | None) -> int:
    text = str(value)
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise ConfigError(
            f"host {_short(name)}: port {_short(value)} is not a number", path=path, line=line
        )
    port = int(text)
    if not 0 < port < 65536:
        raise ConfigError(
            f"host {_short(name)}: port {port} out of range (1-65535)", path=path, line=line
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
        return f"address {_short(address)} is not a host name or IP address"
    return None


def _bad_user(user: str) -> str | None:
    if not user.isprintable() or any(c.isspace() for c in user) or "@" in user:
        return f"user {_short(user)} has a control, space or '@' character"
    if user.startswith("-") or len(user) > 256:
        return f"user {_short(user)} is not a user name"
    return None


# ---------------------------------------------------------------- INI / plain list

_SECTION = re.compile(r"^\[([^\]\s]+)\]\s*$")
_GROUP_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_RANGE = re.compile(r"\[([0-9a-z]+):([0-9a-z]+)(?::([0-9]+))?\]")
_HOSTPART = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?"
    r"(?:\[(?P<v6>[0-9A-Fa-f]*:[0-9A-Fa-f:.]*)\]"
    # unrolled (plain* (range plain*)*), not (plain|range)+: linear on a 1 MiB name
    r"|(?P<host>(?=[^:\s\]])[^:\s\[\]]*(?:\[[0-9a-z]+:[0-9a-z]+(?::[0-9]+)?\][^:\s\[\]]*)*))"
    r"(?::(?P<port>[0-9]+))?$"
)


def _expand(pattern: str, path: str, line: int) -> Iterator[str]:
    """The names ``web[01:20]``-style ranges stand for, lazily, in order.

    The count is known before the first name: more than ``MAX_HOSTS`` is
    refused, so ``web[0:99999999]`` is an error, not 100 million strings.
    """
    pieces: list[Iterable[str]] = []
    count, pos = 1, 0
    for m in _RANGE.finditer(pattern):
        start, end = m.group(1), m.group(2)
        step = int(m.group(3) or 1) if len(m.group(3) or "") < 10 else 0
        values: range
        if start.isdigit() and end.isdigit() and len(start) < 19 and len(end) < 19:
            values = range(int(start), int(end) + 1, max(step, 1))
            width = len(start) if start.startswith("0") else 0
            strings: Iterable[str] = (str(i).zfill(width) for i in values)
        elif len(start) == 1 and len(end) == 1 and start.isalpha() and end.isalpha():
            values = range(ord(start), ord(end) + 1, max(step, 1))
            strings = map(chr, values)
        else:
            raise ConfigError(f"bad host range {_short(m.group(0))}", path=path, line=line)
        if step < 1:
            raise ConfigError(f"bad step in host range {_short(m.group(0))}", path=path, line=line)
        if not values:
            raise ConfigError(f"empty host range {_short(m.group(0))}", path=path, line=line)
        count *= len(values)
        if count > MAX_HOSTS:
            raise ConfigError(
                f"host pattern {pattern[:80]!r} names more than {MAX_HOSTS} hosts",
                path=path,
                line=line,
            )
        pieces += [(pattern[pos : m.start()],), strings]
        pos = m.end()
    pieces.append((pattern[pos:],))
    for parts in itertools.product(*pieces):
        yield "".join(parts)


# shlex.split is quadratic in the length of a word (it grows a string one
# character at a time), 27 s for a 1 MiB line; this is the same POSIX
# splitting, linear: unquoted text, '...', "..." (backslash escapes " and \),
# \x outside quotes, and # starting a comment.
_WORD = re.compile(
    r"""([^\s'"\\#]+)|'([^']*)'|"([^"\\]*(?:\\[\s\S][^"\\]*)*)"|\\([\s\S])|(\s+)|(#)|(.)""",
    re.DOTALL,
)
_DQ_ESCAPE = re.compile(r'\\([\\"])')


def _split_vars(text: str, path: str, line: int) -> list[str]:
    """``text`` split as ``shlex.split(text, comments=True)`` would, in linear time."""
    words: list[str] = []
    word: list[str] | None = None
    for m in _WORD.finditer(text):
        plain, single, double, escaped, space, comment, stray = m.groups()
        if space is not None or comment is not None:
            if word is not None:
                words.append("".join(word))
                word = None
            if comment is not None:
                break
            continue
        if stray is not None:
            what = "no closing quotation" if stray in "'\"" else "no escaped character"
            raise ConfigError(f"cannot split line: {what}", path=path, line=line)
        if word is None:
            word = []
        if double is not None:
            word.append(_DQ_ESCAPE.sub(r"\1", double))
        else:
            word.append(plain or single or escaped or "")
    if word is not None:
        words.append("".join(word))
    return words


def _kv(token: str, path: str, line: int) -> tuple[str, str]:
    if "=" not in token:
        raise ConfigError(f"expected key=value, got {_short(token)}", path=path, line=line)
    key, value = token.split("=", 1)
    if not key or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
        raise ConfigError(f"bad variable name {_short(key)}", path=path, line=line)
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
                    f"unknown section kind {_short(kind)} in [{_short(name)}]",
                    path=path,
                    line=lineno,
                )
            if not _GROUP_NAME.match(section):
                raise ConfigError(f"bad group name {_short(section)}", path=path, line=lineno)
            if kind == "hosts":
                b.group(section)
            elif kind == "children":
                b.children.setdefault(section, [])
            continue
        if line.startswith("[") and not _HOSTPART.match(line.split()[0]):
            raise ConfigError(f"malformed section header {_short(line)}", path=path, line=lineno)
        tokens = _split_vars(line, path, lineno)
        if not tokens:
            continue
        if kind == "vars":
            key, sep, value = line.partition("=")
            if not sep:
                raise ConfigError(f"expected key=value, got {_short(line)}", path=path, line=lineno)
            key, _ = _kv(f"{key.strip()}=", path, lineno)
            value = value.strip()
            comment = _VALUE_COMMENT.search(value)  # a search, not \s+[#;].*$: linear
            if comment:
                value = value[: comment.start()].rstrip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            b.group_vars.setdefault(section, {})[key] = value
            continue
        if kind == "children":
            if len(tokens) != 1 or not _GROUP_NAME.match(tokens[0]):
                raise ConfigError(
                    f"expected one group name, got {_short(line)}", path=path, line=lineno
                )
            b.add_child(section, tokens[0], lineno)
            continue
        hm = _HOSTPART.match(tokens[0])
        if not hm or "=" in tokens[0]:
            raise ConfigError(f"bad host {_short(tokens[0])}", path=path, line=lineno)
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
    return construct_yaml(node, path)


def _vars(node: yaml.Node | None, what: str, path: str) -> dict[str, Any]:
    """Variables: a YAML mapping (or nothing) whose keys are names."""
    if node is None:
        return {}
    data = _plain(node, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a mapping", path=path, line=_line(node))
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(
                f"{what}: variable name {_short(key)} is not a string", path=path, line=_line(node)
            )
    return data


def _mapping(node: yaml.Node | None, what: str, path: str) -> list[tuple[str, int, yaml.Node]]:
    if node is None or (isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null")):
        return []
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{what} must be a mapping", path=path, line=_line(node))
    out = []
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode):
            raise ConfigError(f"{what}: keys must be names", path=path, line=_line(k))
        out.append((str(k.value), _line(k), v))
    return out


def _compose(text: str, path: str) -> yaml.Node | None:
    """The YAML node tree, bounded in size, depth and alias expansion (``roost._parse``)."""
    return compose_yaml(text, path)


def parse_yaml(text: str, path: str = "<inventory>") -> _Builder:
    """Parse an Ansible YAML inventory (``all: {hosts, vars, children}``)."""
    b = _Builder(path)
    root = _compose(text, path)
    if root is None:
        raise ConfigError("inventory is empty", path=path)

    def group(name: str, node: yaml.Node | None, depth: int, line: int) -> None:
        if depth > MAX_GROUP_DEPTH:
            raise ConfigError(f"groups nested deeper than {MAX_GROUP_DEPTH}", path=path, line=line)
        b.group(name)
        for key, kline, value in _mapping(node, f"group {_short(name)}", path):
            if key == "hosts":
                for hname, hline, hnode in _mapping(value, f"{name}.hosts", path):
                    hvars = _vars(hnode, f"host {_short(hname)}: vars", path)
                    for expanded in _expand(hname, path, hline):
                        b.add_host(name, expanded, hvars, hline)
            elif key == "vars":
                gv = _vars(value, f"{_short(name)}.vars", path)
                b.group_vars.setdefault(name, {}).update(gv)
            elif key == "children":
                b.children.setdefault(name, [])
                for kid, cline, knode in _mapping(value, f"{name}.children", path):
                    b.add_child(name, kid, cline)
                    group(kid, knode, depth + 1, cline)
            else:
                raise ConfigError(
                    f"group {_short(name)}: unknown key {_short(key)}"
                    " (expected hosts, vars, children)",
                    path=path,
                    line=kline,
                )

    for name, line, node in _mapping(root, "inventory", path):
        group(name, node, 0, line)
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
    return _vars(node, "variables file", str(path))


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

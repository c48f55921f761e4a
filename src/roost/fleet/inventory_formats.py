"""Inventory text: Ansible INI, plain host lists and Ansible YAML, read into a ``Builder``.

* Ansible INI: ``[group]`` host lines ``name var=value ...`` (``name:port``,
  numeric ranges ``web[01:20]``), ``[group:vars]``, ``[group:children]``,
  ``#``/``;`` comments.
* A plain list: one ``[user@]host[:port]`` per line (a subset of INI).
* Ansible YAML: ``all: {hosts:, vars:, children: {...}}``; also the vars
  files of ``group_vars``/``host_vars`` (``parse_vars``).

Promises: sans-IO (text in, ``roost.fleet.hosts.Builder`` out); every error a
``ConfigError`` naming path and line. Parsing is linear in the text and
bounded: YAML by ``roost._parse`` (size, depth, aliases), a range pattern by
``MAX_HOSTS`` (counted before any name is made), YAML group nesting by
``MAX_GROUP_DEPTH``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from typing import Any

import yaml

from roost._yaml import compose_yaml, construct_yaml
from roost.errors import ConfigError
from roost.fleet.hosts import MAX_GROUP_DEPTH, MAX_HOSTS, Builder, brief

# ---------------------------------------------------------------- INI / plain list

_VALUE_COMMENT = re.compile(r"\s[#;]")
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
            raise ConfigError(f"bad host range {brief(m.group(0))}", path=path, line=line)
        if step < 1:
            raise ConfigError(f"bad step in host range {brief(m.group(0))}", path=path, line=line)
        if not values:
            raise ConfigError(f"empty host range {brief(m.group(0))}", path=path, line=line)
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
        raise ConfigError(f"expected key=value, got {brief(token)}", path=path, line=line)
    key, value = token.split("=", 1)
    if not key or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
        raise ConfigError(f"bad variable name {brief(key)}", path=path, line=line)
    return key, value


def parse_ini(text: str, path: str = "<inventory>") -> Builder:
    """Parse an Ansible INI inventory or a plain host list."""
    b = Builder(path)
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
                    f"unknown section kind {brief(kind)} in [{brief(name)}]",
                    path=path,
                    line=lineno,
                )
            if not _GROUP_NAME.match(section):
                raise ConfigError(f"bad group name {brief(section)}", path=path, line=lineno)
            if kind == "hosts":
                b.group(section)
            elif kind == "children":
                b.children.setdefault(section, [])
            continue
        if line.startswith("[") and not _HOSTPART.match(line.split()[0]):
            raise ConfigError(f"malformed section header {brief(line)}", path=path, line=lineno)
        tokens = _split_vars(line, path, lineno)
        if not tokens:
            continue
        if kind == "vars":
            key, sep, value = line.partition("=")
            if not sep:
                raise ConfigError(f"expected key=value, got {brief(line)}", path=path, line=lineno)
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
                    f"expected one group name, got {brief(line)}", path=path, line=lineno
                )
            b.add_child(section, tokens[0], lineno)
            continue
        hm = _HOSTPART.match(tokens[0])
        if not hm or "=" in tokens[0]:
            raise ConfigError(f"bad host {brief(tokens[0])}", path=path, line=lineno)
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
                f"{what}: variable name {brief(key)} is not a string", path=path, line=_line(node)
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


def parse_yaml(text: str, path: str = "<inventory>") -> Builder:
    """Parse an Ansible YAML inventory (``all: {hosts, vars, children}``)."""
    b = Builder(path)
    root = _compose(text, path)
    if root is None:
        raise ConfigError("inventory is empty", path=path)

    def group(name: str, node: yaml.Node | None, depth: int, line: int) -> None:
        if depth > MAX_GROUP_DEPTH:
            raise ConfigError(f"groups nested deeper than {MAX_GROUP_DEPTH}", path=path, line=line)
        b.group(name)
        for key, kline, value in _mapping(node, f"group {brief(name)}", path):
            if key == "hosts":
                for hname, hline, hnode in _mapping(value, f"{name}.hosts", path):
                    hvars = _vars(hnode, f"host {brief(hname)}: vars", path)
                    for expanded in _expand(hname, path, hline):
                        b.add_host(name, expanded, hvars, hline)
            elif key == "vars":
                gv = _vars(value, f"{brief(name)}.vars", path)
                b.group_vars.setdefault(name, {}).update(gv)
            elif key == "children":
                b.children.setdefault(name, [])
                for kid, cline, knode in _mapping(value, f"{name}.children", path):
                    b.add_child(name, kid, cline)
                    group(kid, knode, depth + 1, cline)
            else:
                raise ConfigError(
                    f"group {brief(name)}: unknown key {brief(key)}"
                    " (expected hosts, vars, children)",
                    path=path,
                    line=kline,
                )

    for name, line, node in _mapping(root, "inventory", path):
        group(name, node, 0, line)
    return b


def parse_vars(text: str, path: str) -> dict[str, Any]:
    """A ``group_vars``/``host_vars`` file: a YAML mapping of variables (empty: none)."""
    node = _compose(text, path)
    if node is None:
        return {}
    return _vars(node, "variables file", path)

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

This module is the entry point: it picks the format, reads the files and
returns an ``Inventory``. The parts: ``roost.fleet.inventory_formats`` reads
the text (linear and bounded), ``roost.fleet.hosts`` holds ``Host`` and
``Inventory``, merges the vars, picks the roles and checks every host (a name
without control characters, an address SSH can take, a port in 1-65535).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from roost.errors import ConfigError
from roost.fleet.hosts import Host, Inventory
from roost.fleet.inventory_formats import parse_ini, parse_vars, parse_yaml

__all__ = [
    "Host",
    "Inventory",
    "hosts_from_strings",
    "load_inventory",
    "looks_like_yaml",
    "parse_inventory",
]


# ---------------------------------------------------------------- files


def _read_vars_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=str(path)) from None
    return parse_vars(text, str(path))


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


#: Names in an inventory directory that Ansible does not read as inventories.
_NOT_INVENTORIES = ("group_vars", "host_vars")
_SKIPPED_SUFFIXES = ("~", ".orig", ".bak", ".retry", ".pyc", ".cfg", ".md")


def load_inventory(path: Path | str) -> Inventory:
    """Read an inventory file plus ``group_vars``/``host_vars`` beside it; a
    directory (Ansible's ``inventories/production/``) is the one inventory
    file in it, with its ``group_vars``/``host_vars``."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = _the_inventory_in(p)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"cannot read inventory: {why}", path=str(p)) from None
    return parse_inventory(
        text,
        str(p),
        group_vars=_vars_dir(p.parent / "group_vars"),
        host_vars=_vars_dir(p.parent / "host_vars"),
    )


def _the_inventory_in(directory: Path) -> Path:
    try:
        found = sorted(
            e
            for e in directory.iterdir()
            if e.is_file()
            and not e.name.startswith(".")
            and e.name not in _NOT_INVENTORIES
            and not e.name.endswith(_SKIPPED_SUFFIXES)
        )
    except OSError as exc:
        raise ConfigError(f"cannot read inventory: {exc.strerror}", path=str(directory)) from None
    if len(found) != 1:
        names = ", ".join(e.name for e in found) or "no file"
        raise ConfigError(
            f"an inventory directory needs exactly one inventory file, it holds {names}: "
            "give the file",
            path=str(directory),
        )
    return found[0]


def hosts_from_strings(specs: Iterable[str]) -> Inventory:
    """An inventory from ``[user@]host[:port]`` strings (all peers)."""
    return parse_inventory("\n".join(specs), "<command line>", yaml_format=False)

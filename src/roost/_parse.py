"""Bounded loaders for untrusted JSON and TOML (YAML: ``roost._yaml``, on the
same scan; apart, so that only what reads YAML imports PyYAML).

The standard parsers recurse once per level of nesting, so a document nested
100,000 ``[`` deep raises ``RecursionError`` (a traceback, or a dead daemon)
instead of a parse error. Every structured document roost reads from outside
(manifests, channels, inventories, ``roost.toml``, state files) goes through
this module, which refuses it first if it is

* larger than ``max_bytes`` (``MAX_BYTES`` unless the caller says), or
* nested deeper than ``max_depth`` (``MAX_DEPTH``).

JSON and TOML are checked before parsing by a linear scan that drops strings
(and comments) with one regular expression and then measures the depth of the
remaining brackets in C (``itertools.accumulate``). YAML gets the same scan
for its flow collections, then PyYAML's safe loader with a composer that
counts its depth (block nesting too), and that caps how many nodes aliases
may repeat (the "billion laughs" document).

Each loader raises the caller's error class (``ConfigError`` for inventories
and ``roost.toml``, ``ReleaseError`` for manifests, ``ChannelError`` for
channels...) with one line naming the document and, where there is one, the
line: ``inventory.yml:3: nested deeper than 100 levels``.
"""

from __future__ import annotations

import json
import re
import sys
from itertools import accumulate
from typing import Any

from roost.errors import ConfigError, RoostError, StateFileError

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "load_json",
    "load_toml",
]

#: larger documents are refused before parsing
MAX_BYTES = 16 * 1024 * 1024
#: deeper nesting is refused (roost's own documents nest 3 or 4 levels)
MAX_DEPTH = 100

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\[\s\S][^"\\]*)*(?:"|\Z)')
_TOML_SKIP = re.compile(
    r'"""[\s\S]*?(?:"""|\Z)'
    r"|'''[\s\S]*?(?:'''|\Z)"
    r'|"[^"\\\n]*(?:\\[\s\S][^"\\\n]*)*(?:"|$)'
    r"|'[^'\n]*(?:'|$)"
    r"|#[^\n]*",
    re.MULTILINE,
)
# YAML's flow collections ([...], {...}): PyYAML's scanner is quadratic in
# their depth, so they are measured first too, skipping quoted scalars (on one
# line) and comments. Brackets in plain scalars (web[1:3]) are counted, but
# they close; only 100 unclosed ones would be refused.
_YAML_SKIP = re.compile(
    r'"[^"\\\n]*(?:\\.[^"\\\n]*)*(?:"|$)'
    r"|'[^'\n]*(?:'|$)"
    r"|(?:(?<=\s)|^)#[^\n]*",
    re.MULTILINE,
)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _error(error: type[RoostError], name: str, line: int | None, reason: str) -> RoostError:
    if issubclass(error, ConfigError):
        return error(reason, path=name, line=line)
    if issubclass(error, StateFileError):
        return error(name, f"line {line}: {reason}" if line is not None else reason)
    where = f"{name}:{line}" if line is not None else name
    return error(f"{where}: {reason}")


def _text(data: bytes | str, name: str, error: type[RoostError], max_bytes: int) -> str:
    if len(data) > max_bytes:
        raise _error(error, name, None, f"larger than {max_bytes} bytes")
    if isinstance(data, str):
        return data
    try:
        return data.decode(json.detect_encoding(data), "surrogatepass")
    except UnicodeDecodeError as exc:
        raise _error(error, name, None, f"not valid text: {exc}") from None


def _check_depth(
    text: str, skip: re.Pattern[str], name: str, error: type[RoostError], max_depth: int
) -> None:
    """Refuse ``text`` if its brackets, outside what ``skip`` matches, nest too deep."""
    bare = skip.sub("", text)
    brackets = _NOT_BRACKET.sub("", bare)
    if not brackets or max(accumulate(map(_STEP.__getitem__, brackets))) <= max_depth:
        return
    depth = 0  # rare: find the line where it first went too deep
    for m in re.finditer(f"(?:{skip.pattern})|([\\[\\]{{}}])", text, skip.flags):
        depth += _STEP.get(m.group(1) or "", 0)
        if depth > max_depth:
            line = text.count("\n", 0, m.start()) + 1
            raise _error(error, name, line, f"nested deeper than {max_depth} levels")


def load_json(
    data: bytes | str,
    name: str,
    error: type[RoostError],
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Parse JSON ``data`` from ``name``; raises ``error`` naming ``name`` (and line)."""
    text = _text(data, name, error, max_bytes)
    _check_depth(text, _JSON_STRING, name, error, max_depth)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _error(error, name, exc.lineno, f"not valid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of 5,000 digits
        raise _error(error, name, None, f"not valid JSON: {exc}") from None


def load_toml(
    data: bytes | str,
    name: str,
    error: type[RoostError] = ConfigError,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
) -> dict[str, Any]:
    """Parse TOML ``data`` from ``name``; raises ``error`` naming ``name`` and line."""
    # Imported here: every command loads this module, few read TOML.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    text = _text(data, name, error, max_bytes)
    _check_depth(text, _TOML_SKIP, name, error, max_depth)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\((?:at line (\d+), column \d+|at end of document)\)$", str(exc))
        reason = str(exc)[: m.start()].rstrip() if m else str(exc)
        if m and m.group(1):
            line: int | None = int(m.group(1))
        else:
            line = text.count("\n") + 1 if m else None
        raise _error(error, name, line, f"not valid TOML: {reason}") from None
    except (ValueError, RecursionError) as exc:
        raise _error(error, name, None, f"not valid TOML: {exc}") from None

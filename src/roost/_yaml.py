"""Bounded loading of untrusted YAML (inventories): ``roost._parse``'s size and
depth limits, PyYAML's safe loader with a composer that counts its depth
(block nesting too) and caps how many nodes aliases may repeat (the "billion
laughs" document). Errors name the document and line, as ``roost._parse``'s."""

from __future__ import annotations

from typing import Any

import yaml

from roost._parse import _YAML_SKIP, MAX_BYTES, MAX_DEPTH, _check_depth, _error, _text
from roost.errors import ConfigError, RoostError

__all__ = ["MAX_YAML_ALIASED", "compose_yaml", "construct_yaml", "load_yaml"]

#: nodes a YAML document may repeat through aliases, in total
MAX_YAML_ALIASED = 1_000_000


class _LimitExceeded(Exception):
    def __init__(self, line: int, reason: str):
        super().__init__(reason)
        self.line = line
        self.reason = reason


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a depth limit and a budget for aliased nodes."""

    def __init__(self, text: str, max_depth: int):
        super().__init__(text)
        self.max_depth = max_depth
        self.depth = 0
        self.aliased = 0
        self.sizes: dict[int, int] = {}  # id(node) -> nodes in it, aliases expanded
        self.count = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            size = self.sizes.get(id(node), 1)
            self.aliased += size
            self.count += size
            if self.aliased > MAX_YAML_ALIASED:
                raise _LimitExceeded(line, f"aliases repeat more than {MAX_YAML_ALIASED} nodes")
            return node
        self.depth += 1
        if self.depth > self.max_depth:
            raise _LimitExceeded(line, f"nested deeper than {self.max_depth} levels")
        start = self.count
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        self.count += 1
        self.sizes[id(node)] = self.count - start
        return node


def compose_yaml(
    data: bytes | str,
    name: str,
    error: type[RoostError] = ConfigError,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
) -> yaml.Node | None:
    """The node tree of the YAML ``data`` (None if empty), for callers that want lines."""
    text = _text(data, name, error, max_bytes)
    _check_depth(text, _YAML_SKIP, name, error, max_depth)
    loader = None
    try:
        loader = _BoundedLoader(text, max_depth)  # its reader refuses control characters
        return loader.get_single_node()
    except _LimitExceeded as exc:
        raise _error(error, name, exc.line, exc.reason) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise _error(error, name, line, f"not valid YAML: {exc.problem or exc}") from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise _error(error, name, None, f"not valid YAML: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def construct_yaml(node: yaml.Node, name: str, error: type[RoostError] = ConfigError) -> Any:
    """A node from :func:`compose_yaml` as plain data (YAML 1.1 safe types)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark or node.start_mark
        raise _error(error, name, mark.line + 1, f"bad YAML value: {exc.problem or exc}") from None
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        line = node.start_mark.line + 1
        raise _error(error, name, line, f"bad YAML value: {exc}") from None
    finally:
        loader.dispose()


def load_yaml(
    data: bytes | str,
    name: str,
    error: type[RoostError] = ConfigError,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Parse YAML ``data`` from ``name`` with the safe loader, within the limits."""
    node = compose_yaml(data, name, error, max_bytes=max_bytes, max_depth=max_depth)
    return None if node is None else construct_yaml(node, name, error)

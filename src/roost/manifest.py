"""The release manifest and what packing and extraction share.

The manifest lists every entry of a release (type, mode, size and sha256
of files, target of symlinks; the mtime too in a tree release, whose files
travel without tar headers); its own sha256 is in the torrent's info dict,
so it is authenticated by the info-hash. Also here: the path-safety rules
(``unsafe_name_reason``, ``link_escapes``) applied both when a release is
packed and when it is extracted.

Raises ``ReleaseError`` for a malformed manifest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from roost._parse import load_json
from roost.errors import ReleaseError

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "ManifestEntry",
    "link_escapes",
    "parse_manifest",
    "torrent_name_reason",
    "unsafe_name_reason",
]

MANIFEST_NAME = ".roost-manifest.json"
#: a manifest is about 140 bytes an entry: this allows some 1.9 million entries
MAX_MANIFEST = 256 * 1024 * 1024
HEX64 = re.compile(r"[0-9a-f]{64}")


# ------------------------------------------------------------ paths & links


def unsafe_name_reason(name: str) -> str | None:
    """Why a relative member path is unsafe, or None if it is fine."""
    if not name:
        return "has an empty name"
    if "\x00" in name:
        return "contains a NUL byte"
    if name.startswith("/"):
        return "is an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "contains a '..' component"
    if "" in parts or "." in parts:
        return "is not a normalised path"
    return None


#: the longest file name, in bytes, that libtorrent stores as it is (it cuts
#: longer ones to 240, keeping an extension)
MAX_TORRENT_NAME = 240
#: code points libtorrent drops from file names (they turn the writing direction)
_DIRECTION_MARKS = frozenset("\u202a\u202b\u202c\u202d\u202e\u200e\u200f")


def torrent_name_reason(path: str) -> str | None:
    """Why libtorrent would store the torrent file ``path`` under another
    name (it replaces control characters with ``_``, drops backslashes and
    writing-direction marks, cuts names over 240 bytes), or None. A tree
    release must not carry such a name: its files are found by name once
    downloaded. A tar carries any name."""
    for part in path.split("/"):
        if any(c < " " or c == "\x7f" for c in part):
            return "has a control character in its name"
        if "\\" in part:
            return "has a backslash in its name"
        if _DIRECTION_MARKS.intersection(part):
            return "has a writing-direction mark in its name"
        if len(part.encode("utf-8", "surrogateescape")) > MAX_TORRENT_NAME:
            return f"has a name longer than {MAX_TORRENT_NAME} bytes"
    return None


def link_escapes(
    link: str, target: str, symlinks: Mapping[str, str], cache: dict[str, Any] | None = None
) -> bool:
    """True if the symlink ``link`` -> ``target`` resolves outside the root.

    Resolution is done in the virtual tree given by ``symlinks`` (path ->
    target of every symlink in the release), following chains component by
    component as the kernel would, so ``a -> b/..`` where ``b`` is itself a
    link is judged by where ``b`` really leads. Absolute targets, loops and
    chains deeper than 40 count as escaping. Pass the same ``cache`` for all
    the links of one tree: each link is then resolved once (no blow-up on
    links built to nest each other).
    """
    parent = link.split("/")[:-1]
    return _resolve(parent, target, symlinks, {} if cache is None else cache, 0) is None


_PENDING = object()


def _resolve(
    stack: list[str], target: str, symlinks: Mapping[str, str], cache: dict[str, Any], depth: int
) -> list[str] | None:
    if depth > 40 or target.startswith("/"):
        return None
    stack = list(stack)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return None
            stack.pop()
            continue
        stack.append(part)
        here = "/".join(stack)
        if here in symlinks:
            if here not in cache:
                cache[here] = _PENDING
                cache[here] = _resolve(stack[:-1], symlinks[here], symlinks, cache, depth + 1)
            resolved = cache[here]
            if resolved is None or resolved is _PENDING:  # escapes, or a loop
                return None
            stack = list(resolved)
    return stack


# ----------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    type: str  # "file" | "dir" | "symlink"
    mode: int
    size: int = 0
    sha256: str | None = None
    target: str | None = None
    #: whole seconds; tree releases carry it (a tar's is in its headers)
    mtime: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "type": self.type, "mode": self.mode}
        if self.mtime is not None:
            out["mtime"] = self.mtime
        if self.type == "file":
            out["size"] = self.size
            out["sha256"] = self.sha256
        elif self.type == "symlink":
            out["target"] = self.target
        return out


@dataclass(frozen=True)
class Manifest:
    tag: str
    entries: tuple[ManifestEntry, ...]
    root_mode: int = 0o755

    def by_path(self) -> dict[str, ManifestEntry]:
        return {entry.path: entry for entry in self.entries}

    def encode(self) -> bytes:
        doc = {
            "version": 1,
            "tag": self.tag,
            "root_mode": self.root_mode,
            "entries": [entry.to_json() for entry in self.entries],
        }
        return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def parse_manifest(data: bytes, name: str = MANIFEST_NAME) -> Manifest:
    """Parse and check a manifest; raises ``ReleaseError`` naming the problem.

    ``data`` is bounded in size and nesting (``roost._parse``): a hostile
    manifest is one line of error, never a ``RecursionError``.
    """
    doc = load_json(data, name, ReleaseError, max_bytes=MAX_MANIFEST)
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise ReleaseError("manifest: unsupported or missing version")
    tag = doc.get("tag")
    entries_doc = doc.get("entries")
    root_mode = doc.get("root_mode", 0o755)
    if not isinstance(tag, str) or not isinstance(entries_doc, list):
        raise ReleaseError("manifest: missing tag or entries")
    if not is_mode(root_mode):
        raise ReleaseError("manifest: bad root_mode")
    entries: list[ManifestEntry] = []
    seen: dict[str, str] = {}
    for item in entries_doc:
        entry = _parse_entry(item)
        if entry.path in seen:
            raise ReleaseError(f"manifest: duplicate path {entry.path!r}")
        parent = entry.path.rpartition("/")[0]
        if parent and seen.get(parent) != "dir":
            raise ReleaseError(f"manifest: {entry.path!r} has no parent directory entry")
        seen[entry.path] = entry.type
        entries.append(entry)
    return Manifest(tag=tag, entries=tuple(entries), root_mode=root_mode)


def is_mode(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777


def _parse_entry(item: object) -> ManifestEntry:
    entry = _parse_kind(item)
    mtime = item.get("mtime") if isinstance(item, dict) else None
    if mtime is None:
        return entry
    if not isinstance(mtime, int) or isinstance(mtime, bool) or not -(2**62) < mtime < 2**62:
        raise ReleaseError(f"manifest: bad mtime for {entry.path!r}")
    return replace(entry, mtime=mtime)


def _parse_kind(item: object) -> ManifestEntry:
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        raise ReleaseError("manifest: entry without a path")
    path = item["path"]
    reason = unsafe_name_reason(path)
    if reason:
        raise ReleaseError(f"manifest: path {path!r} {reason}")
    kind, mode = item.get("type"), item.get("mode")
    if not isinstance(mode, int) or not is_mode(mode):
        raise ReleaseError(f"manifest: bad mode for {path!r}")
    if kind == "file":
        size, digest = item.get("size"), item.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ReleaseError(f"manifest: bad size for {path!r}")
        if not isinstance(digest, str) or not HEX64.fullmatch(digest):
            raise ReleaseError(f"manifest: bad sha256 for {path!r}")
        return ManifestEntry(path, "file", mode, size=size, sha256=digest)
    if kind == "dir":
        return ManifestEntry(path, "dir", mode)
    if kind == "symlink":
        target = item.get("target")
        if not isinstance(target, str) or not target or "\x00" in target:
            raise ReleaseError(f"manifest: bad symlink target for {path!r}")
        return ManifestEntry(path, "symlink", mode, target=target)
    raise ReleaseError(f"manifest: unknown type {kind!r} for {path!r}")

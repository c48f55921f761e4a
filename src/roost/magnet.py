"""Magnet links (BEP 9 ``magnet:?xt=urn:btih:...``), sans-IO.

``roost create`` prints one for each release; ``roost peer MAGNET`` takes one
and fetches the info dict from its peers (the info-hash authenticates it, so
the ``x-roost`` manifest hash inside stays trustworthy). Only v1 info-hashes
(40 hex digits, or 32 base32 characters) are accepted, as everything else in
roost is v1.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from roost.errors import UsageError

_HEX = re.compile(r"^[0-9a-fA-F]{40}$")
_B32 = re.compile(r"^[A-Za-z2-7]{32}$")


@dataclass(frozen=True)
class Magnet:
    info_hash: str  # lower-case hex, 40 digits
    name: str | None
    trackers: tuple[str, ...]
    web_seeds: tuple[str, ...]


def magnet_uri(
    info_hash: str,
    name: str | None = None,
    trackers: Sequence[str] = (),
    web_seeds: Sequence[str] = (),
) -> str:
    """The magnet link for a v1 info-hash, with ``dn``, ``tr`` and ``ws`` parameters."""
    if not _HEX.match(info_hash):
        raise UsageError(f"not a v1 info-hash: {info_hash!r}")
    parts = [f"xt=urn:btih:{info_hash.lower()}"]
    if name:
        parts.append("dn=" + urllib.parse.quote(name, safe=""))
    parts += ["tr=" + urllib.parse.quote(t, safe="") for t in trackers]
    parts += ["ws=" + urllib.parse.quote(w, safe="") for w in web_seeds]
    return "magnet:?" + "&".join(parts)


def is_magnet(text: str) -> bool:
    return text[:8].lower() == "magnet:?"


def parse_magnet(uri: str) -> Magnet:
    """Parse a magnet link; raises ``UsageError`` naming what is wrong."""
    if not is_magnet(uri):
        raise UsageError(f"not a magnet link (magnet:?xt=urn:btih:...): {uri[:60]!r}")
    try:
        params = urllib.parse.parse_qsl(uri[8:], keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise UsageError(f"malformed magnet link: {exc}") from exc
    hashes: list[str] = []
    name: str | None = None
    trackers: list[str] = []
    seeds: list[str] = []
    for key, value in params:
        if key == "xt" or key.startswith("xt."):
            if value.lower().startswith("urn:btih:"):
                hashes.append(_info_hash(value[9:]))
            elif not value.lower().startswith("urn:btmh:"):
                raise UsageError(f"magnet link: unsupported xt {value[:40]!r}")
        elif key == "dn":
            name = value
        elif key == "tr" or key.startswith("tr."):
            trackers.append(value)
        elif key == "ws":
            seeds.append(value)
    if not hashes:
        raise UsageError("magnet link has no v1 info-hash (xt=urn:btih:...)")
    if len(set(hashes)) > 1:
        raise UsageError("magnet link names several info-hashes")
    return Magnet(hashes[0], name, tuple(trackers), tuple(seeds))


def _info_hash(text: str) -> str:
    if _HEX.match(text):
        return text.lower()
    if _B32.match(text):
        try:
            return base64.b32decode(text.upper()).hex()
        except binascii.Error:
            pass
    raise UsageError(f"magnet link: bad info-hash {text[:48]!r} (40 hex or 32 base32 characters)")

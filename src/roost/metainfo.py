"""Torrent metainfo: a .torrent's bytes read into a checked ``TorrentMeta``.

Theory of operation. ``read_torrent`` parses v1 metainfo (bencode) and
returns a frozen ``TorrentMeta``, or raises ``ReleaseError`` naming the
first thing wrong, so what reads a torrent here never checks it again: a
plain file name, a piece length that is a multiple of 16 KiB, pieces that
match the length, one file or a file list (v2-only torrents refused). The
``x-roost`` dict a roost release carries in its info dict (written by
``roost.release``) is checked when present: version 1, a usable tag
(``validate_tag``), a known kind, the manifest's sha256; a tree release's
manifest itself, which must hash to that sha256 and list exactly the
torrent's files, each starting on a piece boundary. Torrents made by other
tools read too, their x-roost fields None. A release's signature
(``x-roost-sig``) sits outside the info dict, so signing does not change
the info-hash: ``check_signature`` checks it, ``sign_torrent`` writes it
(``roost.signing``).

Bytes and records: no I/O beyond reading one .torrent
(``read_torrent_file``) and rewriting one in place (``sign_torrent``); no
libtorrent.

Raises ``ReleaseError`` for a torrent that is not valid metainfo,
``UsageError`` for a bad tag or a torrent file that cannot be read,
``SignatureError`` (``check_signature``) for a signature not trusted.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from roost import bencode, signing
from roost._fs import atomic_write
from roost.errors import ReleaseError, UsageError
from roost.layout import Layout, TorrentFile, unsafe_file_list
from roost.manifest import HEX64, Manifest, is_mode, parse_manifest

__all__ = [
    "TorrentMeta",
    "check_signature",
    "read_torrent",
    "read_torrent_file",
    "sign_torrent",
    "validate_tag",
]

_TAG_MAX = 128


# --------------------------------------------------------------------- tags


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is usable as a file name on every host.

    Raises ``UsageError`` naming the reason otherwise.
    """
    reason = None
    if not tag:
        reason = "is empty"
    elif len(tag) > _TAG_MAX:
        reason = f"is longer than {_TAG_MAX} characters"
    elif "/" in tag:
        reason = "contains '/'"
    elif ".." in tag:
        reason = "contains '..'"
    elif tag.startswith("-"):
        reason = "starts with '-'"
    elif tag.startswith("."):
        # Hidden names beside the releases are roost's own (records, staging).
        reason = "starts with '.'"
    elif any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in tag):
        reason = "contains whitespace or control characters"
    elif not tag.isprintable():
        reason = "contains unprintable characters"
    if reason:
        raise UsageError(f"bad tag {tag!r}: {reason}")
    return tag


# ------------------------------------------------------------------ reading


@dataclass(frozen=True)
class TorrentMeta:
    info_hash: str
    name: str
    length: int
    piece_size: int
    num_pieces: int
    announce: tuple[str, ...] = ()
    web_seeds: tuple[str, ...] = ()
    private: bool = False
    tag: str | None = None  # x-roost fields: None for torrents made by other tools
    kind: str | None = None
    manifest_sha256: str | None = None
    file_mode: int | None = None
    files: tuple[TorrentFile, ...] | None = None  # multi-file torrents only, pads included
    pieces: bytes = field(default=b"", repr=False)
    signature: bytes | None = field(default=None, repr=False)  # x-roost-sig, outside info
    #: a tree release's manifest (x-roost ``manifest``; its sha256 checked)
    manifest: bytes | None = field(default=None, repr=False)

    @property
    def is_roost(self) -> bool:
        return self.kind is not None

    @functools.cached_property
    def tree_manifest(self) -> Manifest | None:
        """A tree release's manifest, parsed once (checked by read_torrent)."""
        return None if self.manifest is None else parse_manifest(self.manifest)

    @property
    def single_file(self) -> bool:
        """Installs as one file: a ``file`` release or a foreign single-file
        torrent (with ``--no-tag-directory`` it lands at DEST/NAME)."""
        return self.files is None and self.kind != "tar"

    @property
    def layout(self) -> Layout | None:
        """Where a multi-file torrent's bytes are (None for a single file)."""
        if self.files is None:
            return None
        return Layout(self.piece_size, self.files)

    @property
    def data_length(self) -> int:
        """Bytes that land on disk: the length without BEP 47 pad files."""
        if self.files is None:
            return self.length
        return sum(f.length for f in self.files if not f.is_pad)


def read_torrent_file(path: Path) -> TorrentMeta:
    """Read and check a .torrent file; ``UsageError`` if it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read torrent {path}: {exc.strerror}") from exc
    try:
        return read_torrent(data)
    except ReleaseError as exc:
        raise ReleaseError(f"{path}: {exc}") from exc


def read_torrent(data: bytes) -> TorrentMeta:
    """Parse v1 metainfo; raises ``ReleaseError`` naming what is wrong."""
    try:
        top = bencode.decode(data)
    except ReleaseError as exc:
        raise ReleaseError(f"torrent is not valid bencoding: {exc}") from exc
    if not isinstance(top, dict) or not isinstance(top.get(b"info"), dict):
        raise ReleaseError("torrent has no info dictionary")
    info = top[b"info"]
    name = _text(info.get(b"name"), "name")
    if not name or "/" in name or name in (".", "..") or "\x00" in name:
        raise ReleaseError(f"torrent name {name!r} is not a plain file name")
    piece_size = info.get(b"piece length")
    if not _posint(piece_size) or piece_size % 16384:
        raise ReleaseError("torrent piece length is not a positive multiple of 16 KiB")
    pieces = info.get(b"pieces")
    if not isinstance(pieces, bytes) or len(pieces) % 20:
        raise ReleaseError("torrent pieces are not a multiple of 20 bytes")
    files = None
    if b"length" in info:
        length = info[b"length"]
        if not _posint(length):
            raise ReleaseError("torrent length is not a positive integer")
    elif isinstance(info.get(b"files"), list):
        files = tuple(_file_entry(f) for f in info[b"files"])
        length = sum(f.length for f in files)
    else:
        raise ReleaseError("torrent has neither length nor files (v2-only torrents unsupported)")
    if len(pieces) // 20 != -(-length // piece_size):
        raise ReleaseError("torrent piece count does not match its length")
    announce: list[str] = []
    tiers = top.get(b"announce-list")
    if isinstance(tiers, list):
        for tier in tiers:
            for url in tier if isinstance(tier, list) else []:
                if isinstance(url, bytes) and url.decode("utf-8", "replace") not in announce:
                    announce.append(url.decode("utf-8", "replace"))
    if isinstance(top.get(b"announce"), bytes) and not announce:
        announce.append(top[b"announce"].decode("utf-8", "replace"))
    seeds = top.get(b"url-list", [])
    seeds = [seeds] if isinstance(seeds, bytes) else seeds
    web_seeds = tuple(s.decode("utf-8", "replace") for s in seeds if isinstance(s, bytes) and s)
    meta = TorrentMeta(
        info_hash=hashlib.sha1(bencode.encode(info)).hexdigest(),
        name=name,
        length=length,
        piece_size=piece_size,
        num_pieces=len(pieces) // 20,
        announce=tuple(announce),
        web_seeds=web_seeds,
        private=info.get(b"private") == 1,
        files=files,
        pieces=pieces,
        signature=sig if isinstance(sig := top.get(signing.TORRENT_KEY), bytes) else None,
    )
    if b"x-roost" in info:
        meta = _with_x_roost(meta, info[b"x-roost"])
    return meta


def _with_x_roost(meta: TorrentMeta, x: object) -> TorrentMeta:
    if not isinstance(x, dict) or x.get(b"v") != 1:
        raise ReleaseError("torrent x-roost is not version 1")
    tag = _text(x.get(b"tag"), "x-roost tag")
    try:
        validate_tag(tag)
    except UsageError as exc:
        raise ReleaseError(f"torrent x-roost: {exc}") from None
    kind = _text(x.get(b"kind"), "x-roost kind")
    if kind not in ("tar", "file", "tree"):
        raise ReleaseError(f"torrent x-roost kind {kind!r} is unknown")
    digest = _text(x.get(b"manifest-sha256"), "x-roost manifest-sha256")
    if not HEX64.fullmatch(digest):
        raise ReleaseError("torrent x-roost manifest-sha256 is not 64 hex digits")
    mode = x.get(b"mode")
    if mode is not None and not is_mode(mode):
        raise ReleaseError("torrent x-roost mode is not a file mode")
    if kind == "tree":
        return _tree_meta(replace(meta, tag=tag, kind=kind, manifest_sha256=digest), x)
    if meta.files is not None:
        raise ReleaseError(f"torrent x-roost kind {kind!r} on a multi-file torrent")
    return replace(meta, tag=tag, kind=kind, manifest_sha256=digest, file_mode=mode)


def _tree_meta(meta: TorrentMeta, x: dict[bytes, Any]) -> TorrentMeta:
    """A tree release: its manifest is in the info dict, hashes to
    ``manifest-sha256`` and lists exactly the torrent's files, in order,
    each starting on a piece boundary (BEP 47 pads)."""
    data = x.get(b"manifest")
    if meta.files is None or not isinstance(data, bytes):
        raise ReleaseError("torrent x-roost tree release without files or manifest")
    if hashlib.sha256(data).hexdigest() != meta.manifest_sha256:
        raise ReleaseError("torrent x-roost manifest does not match its manifest-sha256")
    meta = replace(meta, manifest=data)
    manifest = meta.tree_manifest
    assert manifest is not None and meta.files is not None
    if manifest.tag != meta.tag or meta.name != meta.tag:
        raise ReleaseError("torrent x-roost manifest is not for this tag")
    if (bad := unsafe_file_list(meta.files)) is not None:
        raise ReleaseError(f"torrent file {bad[0]!r} {bad[1]}")
    listed = [(e.path, e.size) for e in manifest.entries if e.type == "file"]
    if listed != [(f.path, f.length) for f in meta.files if not f.is_pad]:
        raise ReleaseError("torrent files are not the manifest's files")
    layout = meta.layout
    assert layout is not None
    if not layout.pads_end_pieces:
        raise ReleaseError("torrent pad files of a tree release do not end on piece boundaries")
    return meta


def check_signature(meta: TorrentMeta, trusted: signing.TrustedKeys) -> str | None:
    """With trusted keys, refuse (``SignatureError``) a release not signed by
    one of them; returns the signer, or None when no keys are trusted."""
    if not trusted:
        return None
    return signing.check(
        trusted,
        info_hash=meta.info_hash,
        tag=meta.tag,
        manifest_sha256=meta.manifest_sha256,
        signature=meta.signature,
    )


def sign_torrent(path: Path, key: Path) -> TorrentMeta:
    """Add (or replace) the signature of the roost release ``path``, in place
    and atomically; the info-hash does not change."""
    path = Path(path)
    meta = read_torrent_file(path)
    if meta.tag is None or meta.manifest_sha256 is None:
        raise UsageError(f"{path} is not a roost release (no x-roost), so it cannot be signed")
    top = bencode.decode(path.read_bytes())
    top[signing.TORRENT_KEY] = signing.sign(
        signing.statement(meta.info_hash, meta.tag, meta.manifest_sha256), key
    )
    try:
        atomic_write(path, bencode.encode(top))
    except OSError as exc:
        raise ReleaseError(f"cannot write {path}: {exc.strerror}") from exc
    return read_torrent_file(path)


def _text(value: object, what: str) -> str:
    if not isinstance(value, bytes):
        raise ReleaseError(f"torrent {what} is missing or not a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ReleaseError(f"torrent {what} is not UTF-8") from None


def _posint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _file_entry(entry: object) -> TorrentFile:
    length = entry.get(b"length") if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or not isinstance(length, int) or length < 0:
        raise ReleaseError("torrent files entry without a length")
    parts = entry.get(b"path")
    if not isinstance(parts, list) or not parts:
        raise ReleaseError("torrent files entry without a path")
    path = "/".join(_text(p, "file path") for p in parts)
    attr = entry.get(b"attr", b"")
    return TorrentFile(path, length, _text(attr, "file attr") if attr else "")

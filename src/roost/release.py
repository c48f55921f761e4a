"""Releases: packing a directory into a tar, the manifest, the .torrent.

Theory of operation. A release is one payload file plus one v1 torrent:

* a directory becomes ``TAG.tar``: uncompressed, deterministic (members in
  depth-first order with sorted siblings, owner ids zeroed, integer mtimes,
  PAX headers for long names), ``.git*`` names skipped at every level as
  Murder did. Each file's sha256 is computed while its bytes are copied into
  the tar; the manifest (JSON, every entry's type, mode, size, sha256 or
  link target) is the tar's **last** member, ``.roost-manifest.json``;
* a single file (``is_file``) is the payload as is, never copied.

The torrent's info dict carries ``x-roost`` (tag, kind, sha256 of the
manifest, or of the file itself), so the info-hash authenticates the
manifest and a peer can verify every extracted file against it. Each byte
is read once: the tar is assembled in buffers that are written out while
two threads hash them (SHA-1 of the pieces, sha256 of each file;
``roost.hashing``), which beats libtorrent's ``set_piece_hashes``. The
manifest and the path rules shared with extraction live in
``roost.manifest``. Outputs are written
under temporary names and renamed into place, so a half-written release is
never visible. No libtorrent here: the module is pure Python plus files.

Raises ``UsageError`` for bad arguments (tag, source, out dir, piece size)
and ``ReleaseError`` for anything that cannot be packed or read.

Reading a torrent back (``TorrentMeta``, ``read_torrent``, tags, signatures)
is ``roost.metainfo``.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost import __version__, bencode, signing
from roost.errors import ReleaseError, UsageError
from roost.hashing import TarWriter, hash_files, hash_pieces, sha256_range
from roost.layout import TorrentFile, padded_files
from roost.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    link_escapes,
    torrent_name_reason,
)
from roost.metainfo import validate_tag

__all__ = [
    "DEFAULT_OUT_DIR",
    "Release",
    "choose_piece_size",
    "create_release",
    "parse_size",
]

DEFAULT_OUT_DIR = Path("/tmp/roost")  # Murder's temp path, one level down
# 64K beat 256K by ~15% at 16 and 32 hosts; with the origin's feed a piece
# waits for its whole self at each hop, so the tail grows with hosts x piece
# size: 16K beat 64K by 10-12% at 16 and 32 hosts (bench/NOTES.md).
MIN_PIECE = 16 * 1024
MAX_PIECE = 16 * 1024 * 1024
TARGET_PIECES = 2000


# --------------------------------------------------------------- piece size


def choose_piece_size(total: int) -> int:
    """Smallest power of two giving at most ~2000 pieces, in [16 KiB, 16 MiB]."""
    size = MIN_PIECE
    while size < MAX_PIECE and -(-total // size) > TARGET_PIECES:
        size *= 2
    return size


_SIZE_RE = re.compile(r"(\d+)\s*([kmg]?)(i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse ``4M``, ``256K``, ``256KiB``, ``1048576`` (binary units)."""
    match = _SIZE_RE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"bad size {text!r}: expected a number with an optional K, M or G")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
    return int(match.group(1)) * scale


def _check_piece_size(size: int) -> int:
    if size < 16 * 1024 or size > 128 * 1024 * 1024 or size & (size - 1):
        raise UsageError(f"bad piece size {size}: must be a power of two from 16 KiB to 128 MiB")
    return size


# ------------------------------------------------------------------ packing


@dataclass(frozen=True)
class _Item:
    rel: str
    path: Path
    st: os.stat_result
    kind: str  # file | dir | symlink
    target: str | None = None


def _walk(root: Path, directory: Path | None = None, prefix: str = "") -> Iterator[_Item]:
    """Depth-first pre-order, siblings sorted by name, ``.git*`` skipped everywhere."""
    directory = directory or root
    try:
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
    except OSError as exc:
        raise ReleaseError(f"cannot read directory {directory}: {exc.strerror}") from exc
    for name in names:
        if name.startswith(".git"):
            continue
        rel = f"{prefix}{name}"
        if rel == MANIFEST_NAME:
            raise ReleaseError(f"{root / rel}: {MANIFEST_NAME} is a name roost reserves")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ReleaseError(f"{directory}: a file name is not valid UTF-8") from None
        path = directory / name
        try:
            st = os.lstat(path)
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
        except OSError as exc:
            raise ReleaseError(f"cannot read {path}: {exc.strerror}") from exc
        if target is not None:
            yield _Item(rel, path, st, "symlink", target)
        elif stat.S_ISDIR(st.st_mode):
            yield _Item(rel, path, st, "dir")
            yield from _walk(root, path, rel + "/")
        elif stat.S_ISREG(st.st_mode):
            yield _Item(rel, path, st, "file")
        else:
            raise ReleaseError(f"{path} is a special file (device, fifo or socket)")


def _items(source: Path) -> list[_Item]:
    """The tree's entries in release order; symlinks leaving it refused."""
    items = list(_walk(source))
    if not items:
        raise ReleaseError(f"source {source} is empty (.git* skipped): nothing to release")
    links = {it.rel: it.target or "" for it in items if it.kind == "symlink"}
    resolved: dict[str, object] = {}
    for rel, target in links.items():
        if link_escapes(rel, target, links, resolved):
            raise ReleaseError(
                f"{source / rel}: symlink to {target!r} leaves the release; roost refuses it"
            )
    return items


def _tar_header(item: _Item) -> bytes:
    info = tarfile.TarInfo(item.rel)
    info.mode = stat.S_IMODE(item.st.st_mode)
    info.mtime = int(item.st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if item.kind == "file":
        info.type, info.size = tarfile.REGTYPE, item.st.st_size
    elif item.kind == "dir":
        info.type = tarfile.DIRTYPE
    else:
        info.type, info.linkname = tarfile.SYMTYPE, item.target or ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def _padded(size: int) -> int:
    return size + (-size % tarfile.BLOCKSIZE)


def _pack(
    source: Path, tag: str, out: Path, piece_size: int | None
) -> tuple[Manifest, int, int, bytes]:
    """Write the tar to ``out``; return manifest, total size, piece size and
    the piece hashes, computed while writing (the layout, hence the total
    and the piece size, is known before the first byte is written)."""
    items = _items(source)
    headers = [_tar_header(item) for item in items]
    entries = [_entry(item, "0" * 64) for item in items]
    root_mode = stat.S_IMODE(source.stat().st_mode)
    manifest_size = len(Manifest(tag, tuple(entries), root_mode).encode())  # same length
    manifest_header = _manifest_header(manifest_size)
    body = sum(len(h) for h in headers) + sum(
        _padded(i.st.st_size) for i in items if i.kind == "file"
    )
    body += len(manifest_header) + _padded(manifest_size) + 2 * tarfile.BLOCKSIZE
    total = body + (-body % tarfile.RECORDSIZE)
    size = piece_size or choose_piece_size(total)
    out_fd = os.open(out, os.O_RDWR | os.O_TRUNC | os.O_CLOEXEC)  # read back to hash
    tar = TarWriter(out_fd, size)
    try:
        digests = []
        for item, header in zip(items, headers, strict=True):
            tar.add(header)
            if item.kind == "file":
                digests.append(_add_member(tar, item))
                tar.add(bytes(-item.st.st_size % tarfile.BLOCKSIZE))
        tar.wait_digests()
        found = iter(digests)
        for index, item in enumerate(items):
            if item.kind == "file":
                entries[index] = _entry(item, next(found).hexdigest())
        manifest = Manifest(tag, tuple(entries), root_mode)
        data = manifest.encode()
        tar.add(manifest_header)
        tar.add(data + bytes(-len(data) % tarfile.BLOCKSIZE))
        tail = total - tar.tell()
        if tail < 2 * tarfile.BLOCKSIZE:
            raise ReleaseError(f"{source} changed while packing")
        tar.add(bytes(tail))
        pieces = tar.finish()
    finally:
        tar.close()
        os.close(out_fd)
    if len(data) != manifest_size or len(pieces) != 20 * -(-total // size):
        raise ReleaseError(f"{source} changed while packing")
    return manifest, total, size, pieces


def _entry(item: _Item, digest: str, *, mtime: bool = False) -> ManifestEntry:
    mode = stat.S_IMODE(item.st.st_mode)
    when = int(item.st.st_mtime) if mtime else None
    if item.kind == "file":
        return ManifestEntry(
            item.rel, "file", mode, size=item.st.st_size, sha256=digest, mtime=when
        )
    if item.kind == "dir":
        return ManifestEntry(item.rel, "dir", mode, mtime=when)
    return ManifestEntry(item.rel, "symlink", mode, target=item.target, mtime=when)


def _tree(
    source: Path, tag: str, piece_size: int | None
) -> tuple[Manifest, list[TorrentFile], int, bytes]:
    """Hash the build tree in place for a tree release: the manifest (with
    mtimes), the torrent's file list (BEP 47 pads), the piece size and the
    piece hashes. Nothing is copied: every file is read once per hash."""
    items = _items(source)
    files = [it for it in items if it.kind == "file"]
    for it in files:
        reason = torrent_name_reason(it.rel)
        if reason is not None:
            raise ReleaseError(
                f"{str(source / it.rel)!r}: {reason}, which BitTorrent clients change on disk;"
                " rename it, or ship the tree with --tar"
            )
    size = piece_size or _tree_piece_size([it.st.st_size for it in files])
    layout = padded_files(((it.rel, it.st.st_size) for it in files), size)
    groups = _piece_groups(files, layout, size)
    # Runs of small files side by side in a pool (one pass each); a big file
    # on its own, its SHA-1s and sha256 in two threads (hash_pieces).
    with ThreadPoolExecutor(2) as pool:
        futures = [
            None if _big(group) else pool.submit(_hash_group, group, size, pad_last=pad)
            for group, pad in groups
        ]
        hashed = [
            f.result() if f is not None else _hash_group(group, size, pad_last=pad)
            for (group, pad), f in zip(groups, futures, strict=True)
        ]
    pieces = [p for p, _ in hashed]
    found = iter(d for _, digests in hashed for d in digests)
    entries = [_entry(it, next(found) if it.kind == "file" else "", mtime=True) for it in items]
    manifest = Manifest(tag, tuple(entries), stat.S_IMODE(source.stat().st_mode))
    return manifest, layout, size, b"".join(pieces)


def _piece_groups(
    files: list[_Item], layout: list[TorrentFile], piece_size: int
) -> list[tuple[list[_Item], bool]]:
    """``files`` cut where ``layout`` has a piece boundary between them:
    each group's pieces are its own. With each group whether a pad follows
    it (its short last piece is hashed with zeros)."""
    groups: list[tuple[list[_Item], bool]] = []
    current: list[_Item] = []
    real = iter(files)
    at = 0
    for f in layout:
        at += f.length
        if f.is_pad:
            groups.append((current, True))
            current = []
            continue
        current.append(next(real))
        if at % piece_size == 0:
            groups.append((current, False))
            current = []
    groups.append((current, False))
    return [(group, pad) for group, pad in groups if group]


def _big(group: list[_Item]) -> bool:
    return len(group) == 1 and group[0].st.st_size >= _BIG_FILE


def _tree_piece_size(sizes: Sequence[int]) -> int:
    """Smallest power of two in [16 KiB, 16 MiB] giving at most ~2000
    pieces beyond one a file (each file starts a piece of its own)."""
    size = MIN_PIECE
    while size < MAX_PIECE and sum(-(-n // size) for n in sizes) > TARGET_PIECES + len(sizes):
        size *= 2
    return size


_BIG_FILE = 64 << 20


def _hash_group(group: list[_Item], piece_size: int, *, pad_last: bool) -> tuple[bytes, list[str]]:
    """The piece hashes of files laid end to end, and each one's sha256;
    ``ReleaseError`` if one cannot be read or changes while it is hashed."""
    try:
        if _big(group):
            pieces, digest = hash_pieces(
                group[0].path, piece_size, with_sha256=True, pad_last=pad_last
            )
            digests = [digest]
        else:
            pieces, digests = hash_files([it.path for it in group], piece_size, pad_last=pad_last)
    except OSError as exc:
        where = exc.filename or (group[0].path if len(group) == 1 else "a file of the tree")
        raise ReleaseError(f"cannot read {where}: {exc.strerror or exc}") from exc
    for item in group:
        try:
            after = os.lstat(item.path)
        except OSError as exc:
            raise ReleaseError(f"cannot read {item.path}: {exc.strerror or exc}") from exc
        if (after.st_size, after.st_mtime_ns) != (item.st.st_size, item.st.st_mtime_ns):
            raise ReleaseError(f"{item.path} changed while it was being hashed")
    return pieces, digests


def tree_manifest_sha256(root: Path, tag: str, *, mtimes: bool = False) -> str | None:
    """sha256 of the manifest the tree at ``root`` would have as release ``tag``.

    Packing is deterministic, so an installed tree that still holds a release
    has exactly that release's manifest: comparing this with the torrent's
    ``manifest-sha256`` tells, before downloading anything, whether the
    release is already there. None if the tree cannot be a release (special
    files, unreadable entries)."""
    try:
        root_mode = stat.S_IMODE(os.stat(root).st_mode)
        entries = []
        for item in _walk(root):
            digest = ""
            if item.kind == "file":
                fd = os.open(item.path, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    digest = sha256_range(fd, 0, item.st.st_size)
                finally:
                    os.close(fd)
            entries.append(_entry(item, digest, mtime=mtimes))
    except (ReleaseError, OSError):
        return None
    return hashlib.sha256(Manifest(tag, tuple(entries), root_mode).encode()).hexdigest()


def _manifest_header(size: int) -> bytes:
    info = tarfile.TarInfo(MANIFEST_NAME)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def _add_member(tar: TarWriter, item: _Item) -> Any:
    """Append a file's bytes to the tar; its sha256 object (see TarWriter)."""
    size = item.st.st_size
    try:
        fd = os.open(item.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ReleaseError(f"cannot read {item.path}: {exc.strerror}") from exc
    try:
        if os.fstat(fd).st_size != size:
            raise ReleaseError(f"{item.path} changed while packing")
        return tar.add_file(fd, size)
    except OSError as exc:
        raise ReleaseError(f"cannot pack {item.path}: {exc}") from exc
    finally:
        os.close(fd)


# ------------------------------------------------------------------ release


@dataclass(frozen=True)
class Release:
    tag: str
    kind: str  # "tree" | "tar" | "file"
    #: TAG.tar; the file itself; for a tree, the source directory (seeded in place)
    payload: Path
    torrent: Path
    info_hash: str
    total_size: int  # the torrent's length (a tree's BEP 47 pads included)
    piece_size: int
    num_pieces: int
    data_size: int = -1  # bytes of the files themselves; -1: total_size

    @property
    def size(self) -> int:
        """What a host receives and installs: the files' bytes."""
        return self.total_size if self.data_size < 0 else self.data_size


def check_announce(urls: Sequence[str], what: str) -> list[str]:
    """``urls``, each an http(s):// or udp:// URL; ``UsageError`` names one that is not."""
    for url in urls:
        if not re.match(r"(https?|udp)://[^/\s]+", url) or any(c.isspace() for c in url):
            raise UsageError(f"bad {what} URL {url!r}: expected http://, https:// or udp://")
    return list(urls)


def _check_paths(source: Path, out_dir: Path, is_file: bool) -> Path:
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise UsageError(f"source {source} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read source {source}: {exc.strerror}") from exc
    if is_file:
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"source {source} is not a regular file")
        if st.st_size == 0:
            raise UsageError(f"source {source} is empty; a torrent needs at least one byte")
    elif stat.S_ISREG(st.st_mode):
        raise UsageError(f"source {source} is a file; pass --file to release a single file")
    elif not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"source {source} is a special file, not a directory")
    resolved = source.resolve()
    out = out_dir.resolve()
    if not is_file and (out == resolved or resolved in out.parents):
        raise UsageError(f"output directory {out_dir} is inside the source {source}")
    return resolved


def create_release(
    source: Path,
    tag: str,
    out_dir: Path,
    *,
    announce: Sequence[str],
    is_file: bool = False,
    piece_size: int | None = None,
    web_seeds: Sequence[str] = (),
    private: bool = False,
    sign_key: Path | None = None,
    tar: bool = False,
) -> Release:
    """Write ``out_dir/TAG.torrent`` for ``source``: a directory becomes a
    tree release (a multi-file torrent over the tree itself, hashed in
    place, nothing copied) or with ``tar`` a ``TAG.tar``; a file
    (``is_file``) is its own payload. With ``sign_key``, the torrent
    carries an SSH signature (``roost.signing``).

    Raises ``UsageError`` for bad arguments, ``ReleaseError`` if packing fails.
    """
    validate_tag(tag)
    announce = check_announce(announce, "tracker")
    web_seeds = check_announce(web_seeds, "web seed")
    if piece_size is not None:
        _check_piece_size(piece_size)
    source = _check_paths(Path(source), Path(out_dir), is_file)
    out_dir = Path(out_dir).absolute()
    if is_file and (out_dir / f"{tag}.torrent").resolve() == source:
        raise UsageError(f"the torrent {out_dir / tag}.torrent would overwrite the source")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory {out_dir}: {exc.strerror}") from exc
    temps: list[Path] = []
    tree = None
    try:
        if is_file:
            payload = source
            before = payload.stat()
            total = before.st_size
            size = piece_size or choose_piece_size(total)
            pieces, manifest_sha = hash_pieces(payload, size, with_sha256=True)
            after = payload.stat()
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise ReleaseError(f"{payload} changed while it was being hashed")
            kind = "file"
        else:
            tree = None if tar else _tree(source, tag, piece_size)
            kind = "tree" if tree is not None and _has_bytes(tree[1]) else "tar"
        if kind == "tree":
            assert tree is not None
            manifest, files, size, pieces = tree
            manifest_data = manifest.encode()
            manifest_sha = hashlib.sha256(manifest_data).hexdigest()
            total = sum(f.length for f in files)
            payload = source
        elif kind == "tar":  # asked for, or a tree without a byte to put in a torrent
            tmp_tar = _temp_in(out_dir, f".{tag}.tar.", temps)
            manifest, total, size, pieces = _pack(source, tag, tmp_tar, piece_size)
            manifest_sha = hashlib.sha256(manifest.encode()).hexdigest()
            payload = out_dir / f"{tag}.tar"
        x_roost: dict[str, Any] = {"v": 1, "tag": tag, "kind": kind}
        x_roost["manifest-sha256"] = manifest_sha
        if is_file:
            x_roost["mode"] = stat.S_IMODE(source.stat().st_mode)
        info: dict[str, Any] = {"name": payload.name, "length": total}
        if kind == "tree":
            x_roost["manifest"] = manifest_data
            info = {"name": tag, "files": [_file_dict(f) for f in files]}
        info.update({"piece length": size, "pieces": pieces, "x-roost": x_roost})
        if private:
            info["private"] = 1
        meta: dict[str, Any] = {"created by": f"roost {__version__}", "info": info}
        if announce:
            meta["announce"] = announce[0]
            meta["announce-list"] = [[url] for url in announce]
        if web_seeds:
            meta["url-list"] = list(web_seeds)
        info_hash = hashlib.sha1(bencode.encode(info)).hexdigest()
        if sign_key is not None:
            meta[signing.TORRENT_KEY.decode()] = signing.sign(
                signing.statement(info_hash, tag, manifest_sha), sign_key
            )
        torrent_bytes = bencode.encode(meta)
        tmp_torrent = _temp_in(out_dir, f".{tag}.torrent.", temps)
        tmp_torrent.write_bytes(torrent_bytes)
        torrent = out_dir / f"{tag}.torrent"
        if kind == "tar":
            os.replace(temps[0], payload)
        os.replace(tmp_torrent, torrent)
        temps.clear()
    except OSError as exc:
        raise ReleaseError(f"cannot write release {tag} in {out_dir}: {exc}") from exc
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    return Release(
        tag=tag,
        kind=kind,
        payload=payload,
        torrent=torrent,
        info_hash=info_hash,
        total_size=total,
        piece_size=size,
        num_pieces=len(pieces) // 20,
        data_size=sum(f.length for f in files if not f.is_pad) if kind == "tree" else -1,
    )


def _has_bytes(files: Sequence[TorrentFile]) -> bool:
    return any(f.length for f in files)


def _file_dict(f: TorrentFile) -> dict[str, Any]:
    out: dict[str, Any] = {"length": f.length, "path": f.path.split("/")}
    if f.attr:
        out["attr"] = f.attr
    return out


def _temp_in(directory: Path, prefix: str, temps: list[Path]) -> Path:
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    os.close(fd)
    os.chmod(name, 0o644)
    temps.append(Path(name))
    return Path(name)

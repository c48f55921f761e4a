"""The plan of an install (its step 1, ``roost.extract``): what a downloaded
payload will install, checked against its torrent before anything is written.

A tar release's member headers are read and checked (no absolute path, no
``..``, normalised names, no duplicates, no member below a symlink, no
device or fifo, symlinks that stay inside the tree once resolved, hard links
only to earlier regular members); its manifest (the last member) must hash
to the torrent's ``manifest-sha256`` and list exactly the members. A tree
release's manifest comes from the torrent itself; a foreign multi-file
torrent's file list is checked by ``layout.unsafe_file_list`` and gets an
implied manifest. Refusals raise ``UnsafeArchiveError``; disagreements
``VerifyError``. Pure but for reading the payload's headers and sizes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from roost.errors import UnsafeArchiveError, VerifyError
from roost.layout import unsafe_file_list
from roost.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    link_escapes,
    parse_manifest,
    unsafe_name_reason,
)
from roost.metainfo import TorrentMeta

__all__ = ["SETID", "Member", "Plan", "load_plan", "stripped"]

SETID = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


@dataclass(frozen=True)
class Member:
    name: str
    kind: str  # file | dir | symlink | hardlink
    offset: int = 0
    size: int = 0
    mode: int = 0o644
    mtime: float | None = None
    link: str = ""
    sha256: str | None = None
    #: a multi-file download: the file's path under the payload directory
    source: str | None = None


@dataclass(frozen=True)
class Plan:
    """What a payload will install: the manifest and where each member's
    bytes are. ``single`` is set for a file release (kind ``file``)."""

    manifest: Manifest
    members: tuple[Member, ...]
    single: bool = False


def load_plan(payload: Path, meta: TorrentMeta) -> Plan:
    """Check a payload against its torrent; raises ``UnsafeArchiveError``,
    ``VerifyError`` or ``ReleaseError``. Writes nothing."""
    if meta.files is not None:
        return _plan_files(Path(payload), meta)
    try:
        size = os.stat(payload).st_size
    except OSError as exc:
        raise VerifyError(f"payload {payload} cannot be read: {exc.strerror}") from exc
    if size != meta.length:
        raise VerifyError(f"payload {payload} is {size} bytes, the torrent says {meta.length}")
    if meta.kind == "tar":
        return _plan_tar(Path(payload), meta)
    return single_file_plan(meta)


def single_file_plan(meta: TorrentMeta) -> Plan:
    """A single-file release's plan, which its torrent alone gives: the file's
    size, mode (BEP 47) and sha256 (the manifest-sha256 of a file release)."""
    mode = meta.file_mode if meta.file_mode is not None else 0o644
    size = meta.length
    entry = ManifestEntry(meta.name, "file", mode, size=size, sha256=meta.manifest_sha256)
    member = Member(meta.name, "file", 0, size, mode, None, "", meta.manifest_sha256)
    manifest = Manifest(meta.tag or meta.name, (entry,), 0o755)
    return Plan(manifest, (member,), single=True)


def _plan_files(payload: Path, meta: TorrentMeta) -> Plan:
    """A multi-file download (a directory): a tree release's manifest, or a
    foreign torrent's file list (directories implied, mode 0644, 0755 for
    BEP 47 ``x``; its pieces were verified by the engine)."""
    assert meta.files is not None
    bad = unsafe_file_list(meta.files)
    if bad is not None:
        raise UnsafeArchiveError(*bad)
    manifest = meta.tree_manifest or _foreign_manifest(meta)
    symlinks = {e.path: e.target or "" for e in manifest.entries if e.type == "symlink"}
    resolved: dict[str, object] = {}
    members = []
    for e in manifest.entries:
        if e.type == "symlink":
            target = e.target or ""
            _check_symlink(e.path, target, symlinks, resolved)
            members.append(Member(e.path, "symlink", mode=e.mode, mtime=e.mtime, link=target))
        elif e.type == "dir":
            members.append(Member(e.path, "dir", mode=e.mode, mtime=e.mtime))
        else:
            members.append(
                Member(e.path, "file", 0, e.size, e.mode, e.mtime, "", e.sha256, source=e.path)
            )
    for m in members:
        if m.kind == "file" and m.size:
            try:
                size = os.lstat(payload / m.name).st_size
            except OSError as exc:
                raise VerifyError(f"{payload / m.name} cannot be read: {exc.strerror}") from exc
            if size != m.size:
                raise VerifyError(f"{payload / m.name} is {size} bytes, the torrent says {m.size}")
    return Plan(manifest, tuple(members))


def _check_symlink(
    name: str, target: str, symlinks: dict[str, str], resolved: dict[str, object]
) -> None:
    """A symlink of a release stays inside it (``UnsafeArchiveError``)."""
    if target.startswith("/"):
        raise UnsafeArchiveError(name, f"is a symlink to the absolute path {target!r}")
    if link_escapes(name, target, symlinks, resolved):
        raise UnsafeArchiveError(name, f"is a symlink to {target!r}, outside the release")


def _foreign_manifest(meta: TorrentMeta) -> Manifest:
    entries: list[ManifestEntry] = []
    dirs: set[str] = set()
    for f in meta.files or ():
        if f.is_pad:
            continue
        parts = f.path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in dirs:
                dirs.add(parent)
                entries.append(ManifestEntry(parent, "dir", 0o755))
        mode = 0o755 if "x" in f.attr else 0o644
        entries.append(ManifestEntry(f.path, "file", mode, size=f.length))
    return Manifest(meta.name, tuple(entries), 0o755)


def _plan_tar(payload: Path, meta: TorrentMeta) -> Plan:
    try:
        with tarfile.open(payload, "r:") as archive:
            infos = archive.getmembers()
            if not infos or infos[-1].name != MANIFEST_NAME or not infos[-1].isreg():
                raise VerifyError(f"{payload}: the last member is not {MANIFEST_NAME}")
            handle = archive.extractfile(infos[-1])
            data = handle.read() if handle else b""
    except tarfile.TarError as exc:
        raise VerifyError(f"{payload} is not a valid tar: {exc}") from exc
    except OSError as exc:
        raise VerifyError(f"payload {payload} cannot be read: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != meta.manifest_sha256:
        raise VerifyError(f"{payload}: manifest does not match the torrent's manifest-sha256")
    manifest = parse_manifest(data)
    if manifest.tag != meta.tag:
        raise VerifyError(f"{payload}: manifest tag {manifest.tag!r} is not {meta.tag!r}")
    members = _check_members(infos[:-1], meta.length)
    _check_against_manifest(members, manifest)
    return Plan(manifest, tuple(members))


def _check_members(infos: list[tarfile.TarInfo], length: int) -> list[Member]:
    symlinks = {i.name: i.linkname for i in infos if i.issym()}
    resolved: dict[str, object] = {}
    seen: dict[str, str] = {}
    members = []
    for info in infos:
        name = info.name
        reason = unsafe_name_reason(name)
        if reason:
            raise UnsafeArchiveError(name, reason)
        if name == MANIFEST_NAME:
            raise UnsafeArchiveError(name, "repeats the manifest's name")
        if name in seen:
            raise UnsafeArchiveError(name, "appears twice")
        # The parent must be an earlier directory member; by induction so are
        # all ancestors, so nothing is ever written through a symlink.
        parent = name.rpartition("/")[0]
        if parent and seen.get(parent) != "dir":
            if parent in symlinks:
                raise UnsafeArchiveError(name, f"lies below the symlink {parent!r}")
            raise UnsafeArchiveError(name, f"does not follow a directory member {parent!r}")
        mode = stat.S_IMODE(info.mode)
        if info.ischr() or info.isblk() or info.isfifo():
            raise UnsafeArchiveError(name, "is a device or fifo")
        if info.issym():
            target = info.linkname
            if not target or "\x00" in target:
                raise UnsafeArchiveError(name, "is a symlink with an empty target")
            _check_symlink(name, target, symlinks, resolved)
            member = Member(name, "symlink", mode=mode, mtime=info.mtime, link=target)
        elif info.islnk():
            target = info.linkname
            if unsafe_name_reason(target) or seen.get(target) != "file":
                raise UnsafeArchiveError(
                    name, f"is a hard link to {target!r}, not an earlier file of the release"
                )
            member = Member(name, "hardlink", mode=mode, mtime=info.mtime, link=target)
        elif info.isdir():
            member = Member(name, "dir", mode=mode, mtime=info.mtime)
        elif info.isreg() and not info.issparse():
            if info.offset_data + info.size > length:
                raise VerifyError(f"{name}: data runs past the end of the payload")
            member = Member(name, "file", info.offset_data, info.size, mode, info.mtime)
        else:
            raise UnsafeArchiveError(name, f"has an unsupported type {info.type!r}")
        seen[name] = "file" if member.kind in ("file", "hardlink") else member.kind
        members.append(member)
    return members


def _check_against_manifest(members: list[Member], manifest: Manifest) -> None:
    entries = manifest.by_path()
    sizes: dict[str, int] = {}
    for i, member in enumerate(members):
        entry = entries.get(member.name)
        if entry is None:
            raise UnsafeArchiveError(member.name, "is not in the manifest")
        kind = "file" if member.kind == "hardlink" else member.kind
        size = sizes[member.link] if member.kind == "hardlink" else member.size
        sizes[member.name] = size
        problem = None
        if entry.type != kind:
            problem = f"type {kind} in the archive, {entry.type} in the manifest"
        elif kind != "symlink" and entry.mode != member.mode:
            problem = f"mode {member.mode:o} in the archive, {entry.mode:o} in the manifest"
        elif kind == "file" and entry.size != size:
            problem = f"size {size} in the archive, {entry.size} in the manifest"
        elif kind == "symlink" and entry.target != member.link:
            problem = "symlink target differs from the manifest"
        if problem:
            raise VerifyError(f"{member.name}: {problem}")
        if kind == "file":
            members[i] = _with_sha(member, entry.sha256)
    missing = sorted(set(entries) - {m.name for m in members})
    if missing:
        raise VerifyError(f"{missing[0]}: in the manifest but not in the archive")


def _with_sha(member: Member, sha256: str | None) -> Member:
    return dataclasses.replace(member, sha256=sha256)


def stripped(plan: Plan) -> Plan:
    """The plan with setuid/setgid/sticky bits off every file and directory."""

    def strip(kind: str, mode: int) -> int:
        return mode if kind == "symlink" else mode & ~SETID

    members = tuple(dataclasses.replace(m, mode=strip(m.kind, m.mode)) for m in plan.members)
    entries = tuple(
        dataclasses.replace(e, mode=strip(e.type, e.mode)) for e in plan.manifest.entries
    )
    manifest = dataclasses.replace(
        plan.manifest, entries=entries, root_mode=plan.manifest.root_mode & ~SETID
    )
    return Plan(manifest, members, plan.single)

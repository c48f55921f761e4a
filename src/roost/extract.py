"""Safe, atomic installation of a downloaded release into a destination.

Theory of operation, in four steps:

1. **Plan** (nothing written yet). For a tar release every member header is
   read and checked: no absolute path, no ``..``, normalised names, no
   duplicates, no member below a symlink, no device or fifo, symlinks that
   stay inside the tree once resolved (chains included), hard links only to
   earlier regular members. The manifest (last member) must hash to the
   ``manifest-sha256`` of the torrent's info dict, and the members must be
   exactly its entries, same types, modes, sizes and link targets. Refusals
   raise ``UnsafeArchiveError``; disagreements raise ``VerifyError``.
2. **Compare.** A target that already holds exactly the manifest is left
   alone (``already_installed``): re-running a deploy is idempotent. Any
   other non-empty target raises ``DestinationError`` unless ``clean``.
3. **Stage.** Members are written into a hidden staging directory beside the
   target (same file system), several files at once in worker threads, each
   file's bytes read once, hashed and written, the sha256 checked against
   the manifest; modes and mtimes are then set. The staging tree is then
   made durable with one ``syncfs(2)`` of its file system (``os.sync()``
   where libc lacks it).
4. **Swap.** The staging directory is renamed onto the target (atomic); with
   ``clean`` the old tree is renamed aside first and deleted only once the
   new one is in place; the parent directory is then fsynced, so after a
   power loss the target holds the old release or all of the new one. On
   any failure the staging directory is removed (by directory descriptors,
   so a tree deeper than PATH_MAX goes too). Last, the record beside the
   target is written (``roost.installed``: what was installed, which hooks
   ran).

Setuid, setgid and sticky bits in a release are stripped unless
``keep_setid``: a release's modes are the packer's, not the host's policy.
A target that is a symlink is followed: the release goes into the directory
it names (the link stays), so ``DEST -> /data/app`` installs into /data/app.

Nothing is ever written outside the destination (and, with
``tag_directory=False``, the staging sibling of it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import stat
import tarfile
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from roost.errors import (
    DestinationError,
    ReleaseError,
    UnsafeArchiveError,
    UsageError,
    VerifyError,
)
from roost.hashing import copy_and_hash, fsync_directory, sha256_range, sync_filesystem
from roost.installed import read_record, write_record
from roost.layout import unsafe_file_list
from roost.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    link_escapes,
    parse_manifest,
    unsafe_name_reason,
)
from roost.release import TorrentMeta, tree_manifest_sha256, validate_tag

__all__ = [
    "InstallResult",
    "check_destination",
    "install_release",
    "install_target",
    "installed_difference",
    "load_plan",
    "verify_installed",
]

log = logging.getLogger(__name__)

_WRITERS = min(4, os.cpu_count() or 1)  # files written at once
_WINDOW = 64  # files queued ahead of the writers
_SETID = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
_PATH_MAX = 4096  # Linux's; a longer path is unusable by most tools


@dataclass(frozen=True)
class InstallResult:
    """Where the release now is; ``already_installed`` if it was there before.

    Usable as a path (``os.fspath``) for callers that only want the location.
    """

    path: Path
    already_installed: bool

    def __fspath__(self) -> str:
        return os.fspath(self.path)


@dataclass(frozen=True)
class _Member:
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
    members: tuple[_Member, ...]
    single: bool = False


# --------------------------------------------------------------------- plan


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
    mode = meta.file_mode if meta.file_mode is not None else 0o644
    entry = ManifestEntry(meta.name, "file", mode, size=size, sha256=meta.manifest_sha256)
    member = _Member(meta.name, "file", 0, size, mode, None, "", meta.manifest_sha256)
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
            members.append(_Member(e.path, "symlink", mode=e.mode, mtime=e.mtime, link=target))
        elif e.type == "dir":
            members.append(_Member(e.path, "dir", mode=e.mode, mtime=e.mtime))
        else:
            members.append(
                _Member(e.path, "file", 0, e.size, e.mode, e.mtime, "", e.sha256, source=e.path)
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


def _check_members(infos: list[tarfile.TarInfo], length: int) -> list[_Member]:
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
            member = _Member(name, "symlink", mode=mode, mtime=info.mtime, link=target)
        elif info.islnk():
            target = info.linkname
            if unsafe_name_reason(target) or seen.get(target) != "file":
                raise UnsafeArchiveError(
                    name, f"is a hard link to {target!r}, not an earlier file of the release"
                )
            member = _Member(name, "hardlink", mode=mode, mtime=info.mtime, link=target)
        elif info.isdir():
            member = _Member(name, "dir", mode=mode, mtime=info.mtime)
        elif info.isreg() and not info.issparse():
            if info.offset_data + info.size > length:
                raise VerifyError(f"{name}: data runs past the end of the payload")
            member = _Member(name, "file", info.offset_data, info.size, mode, info.mtime)
        else:
            raise UnsafeArchiveError(name, f"has an unsupported type {info.type!r}")
        seen[name] = "file" if member.kind in ("file", "hardlink") else member.kind
        members.append(member)
    return members


def _check_against_manifest(members: list[_Member], manifest: Manifest) -> None:
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


def _with_sha(member: _Member, sha256: str | None) -> _Member:
    return dataclasses.replace(member, sha256=sha256)


# ------------------------------------------------------------------ install


def install_release(
    payload: Path,
    meta: TorrentMeta,
    dest: Path,
    *,
    tag_directory: bool = True,
    clean: bool = False,
    keep_setid: bool = False,
) -> InstallResult:
    """Install ``payload`` at ``dest/TAG`` (or ``dest``) atomically, setuid,
    setgid and sticky bits stripped unless ``keep_setid``.

    Raises ``UnsafeArchiveError`` or ``VerifyError`` (bad payload, before
    anything is written), ``DestinationError`` (target occupied without
    ``clean``, or not writable, or a path in it too long), ``ReleaseError``.
    """
    tag = meta.tag or meta.name  # a torrent made by another tool: its file name
    if tag_directory:
        try:
            validate_tag(tag)
        except UsageError as exc:
            raise ReleaseError(f"cannot use {tag!r} as a directory name: {exc}") from None
    plan = load_plan(Path(payload), meta)
    if not keep_setid:
        plan = _stripped(plan)
    target, as_file = _target(meta, Path(dest), tag_directory=tag_directory)
    longest = max((m.name for m in plan.members), key=len, default="")
    if (size := len(os.fsencode(target / longest))) >= _PATH_MAX:
        raise DestinationError(
            f"{_short(longest)}: would be a path of {size} bytes in {target}, "
            f"longer than PATH_MAX ({_PATH_MAX})"
        )
    try:
        result = _install(Path(payload), plan, target, as_file=as_file, clean=clean)
        if not result.already_installed:
            data = None if as_file else plan.manifest.encode()
            tree = None if data is None else hashlib.sha256(data).hexdigest()
            write_record(
                target, manifest_sha256=meta.manifest_sha256, tree_sha256=tree, manifest=data
            )
        return result
    except OSError as exc:
        raise _dest_error(exc, target) from exc


def _stripped(plan: Plan) -> Plan:
    """The plan with setuid/setgid/sticky bits off every file and directory."""

    def strip(kind: str, mode: int) -> int:
        return mode if kind == "symlink" else mode & ~_SETID

    members = tuple(dataclasses.replace(m, mode=strip(m.kind, m.mode)) for m in plan.members)
    entries = tuple(
        dataclasses.replace(e, mode=strip(e.type, e.mode)) for e in plan.manifest.entries
    )
    manifest = dataclasses.replace(
        plan.manifest, entries=entries, root_mode=plan.manifest.root_mode & ~_SETID
    )
    return Plan(manifest, members, plan.single)


def install_target(meta: TorrentMeta, dest: Path, *, tag_directory: bool = True) -> Path:
    """Where ``meta`` would be installed under ``dest`` (links resolved)."""
    return _target(meta, Path(dest), tag_directory=tag_directory)[0]


def _target(meta: TorrentMeta, dest: Path, *, tag_directory: bool) -> tuple[Path, bool]:
    """Where a release lands, and whether that is the file itself. A target
    that is a symlink is replaced by the path it resolves to (the release
    goes into the directory the link names); a dangling one is refused with
    ``DestinationError``."""
    tag = meta.tag or meta.name
    dest = dest.absolute()
    as_file = meta.single_file and not tag_directory
    if as_file:
        return dest / meta.name, True
    target = dest / tag if tag_directory else dest
    if target.is_symlink():
        resolved = target.resolve()
        if not resolved.is_dir():
            raise DestinationError(
                f"destination {target} is a symlink to {resolved}, which is not a directory"
            )
        return resolved, False
    return target, False


def check_destination(
    meta: TorrentMeta,
    dest: Path,
    *,
    tag_directory: bool = True,
    clean: bool = False,
    keep_setid: bool = False,
) -> InstallResult | None:
    """Judge the destination before anything is downloaded.

    Returns ``InstallResult(target, already_installed=True)`` when the target
    already holds exactly this release, None when installing may go ahead.
    Raises ``DestinationError`` when the target is occupied by something else
    and ``clean`` is not set, so a host refuses before spending a download.
    Torrents made by other tools (no manifest hash) are judged after download.
    """
    if meta.manifest_sha256 is None:
        return None
    target, as_file = _target(meta, Path(dest), tag_directory=tag_directory)
    try:
        if not _occupied(target):
            return None
        if _holds_release(target, meta, as_file=as_file, keep_setid=keep_setid):
            return InstallResult(target, True)
    except OSError as exc:
        raise _dest_error(exc, target) from exc
    if clean:
        return None
    raise _occupied_error(target)


def _holds_release(target: Path, meta: TorrentMeta, *, as_file: bool, keep_setid: bool) -> bool:
    if meta.tree_manifest is not None:  # a tree release: its manifest is at hand
        plan = Plan(meta.tree_manifest, ())
        if _mismatch(target, plan, as_file=False) is None:
            return True
        return not keep_setid and _mismatch(target, _stripped(plan), as_file=False) is None
    if meta.kind == "tar":
        tree = tree_manifest_sha256(target, meta.tag or meta.name)
        if tree == meta.manifest_sha256:
            return True
        # Installed with its setuid/setgid bits stripped: the record names
        # the tree's own manifest (the tree is still read and hashed).
        record = read_record(target) or {}
        return (
            not keep_setid
            and tree is not None
            and record.get("manifest_sha256") == meta.manifest_sha256
            and record.get("tree_sha256") == tree
        )
    path = target if as_file else target / meta.name
    if not as_file and [e.name for e in os.scandir(target)] != [meta.name]:
        return False
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        return False
    mode = meta.file_mode if keep_setid or meta.file_mode is None else meta.file_mode & ~_SETID
    if mode is not None and stat.S_IMODE(st.st_mode) != mode:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        return sha256_range(fd, 0, st.st_size) == meta.manifest_sha256
    finally:
        os.close(fd)


def _install(
    payload: Path, plan: Plan, target: Path, *, as_file: bool, clean: bool
) -> InstallResult:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DestinationError(f"cannot create {target.parent}: {exc.strerror}") from exc
    if not target.parent.is_dir():
        raise DestinationError(f"destination {target.parent} is not a directory")
    if _occupied(target):
        if _mismatch(target, plan, as_file=as_file) is None:
            log.info("%s already holds release %s", target, plan.manifest.tag)
            return InstallResult(target, True)
        if not clean:
            raise _occupied_error(target)
    staging = Path(_make_staging(target, file=as_file))
    try:
        _write_members(payload, plan, staging, as_file=as_file)
        sync_filesystem(staging.parent)
        _swap(staging, target, clean=clean)
        fsync_directory(target.parent)
    finally:
        try:
            _remove_tree(staging)
        except OSError as exc:
            log.warning("could not remove the staging area %s: %s", staging, exc)
    return InstallResult(target, False)


def _make_staging(target: Path, *, file: bool) -> str:
    prefix = f".{target.name}.roost-staging-"
    try:
        if file:
            fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
            os.close(fd)
            os.unlink(name)
            return name
        return tempfile.mkdtemp(prefix=prefix, dir=target.parent)
    except OSError as exc:
        raise _dest_error(exc, target.parent) from exc


def _dest_error(exc: OSError, where: Path) -> DestinationError:
    if exc.errno == errno.ENOSPC:
        return DestinationError(f"no space left on the device of {where}")
    name = exc.filename if isinstance(exc.filename, str) else ""
    member = "" if not name or name.startswith("/") else f" ({_short(name)})"
    return DestinationError(f"cannot install into {where}: {exc.strerror or exc}{member}")


def _short(name: str) -> str:
    return name if len(name) <= 80 else f"{name[:38]}...{name[-38:]}"


def _occupied_error(target: Path) -> DestinationError:
    """The true reason ``target`` cannot take the release without ``clean``."""
    what = "is not empty"
    with contextlib.suppress(OSError):
        st = os.lstat(target)
        if stat.S_ISLNK(st.st_mode):
            what = f"is a symlink (to {os.readlink(target)})"
        elif not stat.S_ISDIR(st.st_mode):
            what = "is a file" if stat.S_ISREG(st.st_mode) else "is a special file"
    return DestinationError(
        f"destination {target} {what} (clean it, or pass --clean to replace it)"
    )


def _occupied(target: Path) -> bool:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return True
    with os.scandir(target) as it:
        return any(True for _ in it)


def _write_members(payload: Path, plan: Plan, root: Path, *, as_file: bool) -> None:
    if as_file:
        src = os.open(payload, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _write_file(src, plan.members[0], str(root), None)
        finally:
            os.close(src)
        return
    # Everything relative to the staging directory's fd: no path walks from /.
    src = os.open(payload, os.O_RDONLY | os.O_CLOEXEC)
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _write_tree(src, top, plan.members)
        for member in reversed(plan.members):
            if member.kind == "dir":
                os.chmod(member.name, member.mode, dir_fd=top)
                if member.mtime is not None:
                    os.utime(member.name, (member.mtime, member.mtime), dir_fd=top)
        os.fchmod(top, plan.manifest.root_mode)
    finally:
        os.close(top)
        os.close(src)


def _write_tree(src: int, top: int, members: tuple[_Member, ...]) -> None:
    """Directories and symlinks here, in archive order (a directory comes
    before its contents); files in worker threads (copy and sha256 drop the
    GIL, so two files move at once); hard links once every file exists.
    The first failure, in archive order, is raised after every started
    file has finished, so nothing writes into the staging area after."""
    links = []
    window: deque[Future[None]] = deque()
    with ThreadPoolExecutor(_WRITERS, thread_name_prefix="roost-extract") as pool:
        try:
            for member in members:
                name = member.name
                if member.kind == "dir":
                    os.mkdir(name, 0o700, dir_fd=top)
                elif member.kind == "file":
                    if len(window) >= _WINDOW:
                        window.popleft().result()
                    window.append(pool.submit(_write_file, src, member, name, top))
                elif member.kind == "symlink":
                    os.symlink(member.link, name, dir_fd=top)
                    if member.mtime is not None:
                        times = (member.mtime, member.mtime)
                        os.utime(name, times, dir_fd=top, follow_symlinks=False)
                else:
                    links.append(member)
            while window:
                window.popleft().result()
        except BaseException:
            for future in window:
                future.cancel()
            raise
    for member in links:
        os.link(member.link, member.name, src_dir_fd=top, dst_dir_fd=top, follow_symlinks=False)


def _write_file(src: int, member: _Member, name: str, top: int | None) -> None:
    """Write one file; ``src`` is the payload (a tar or a file) or, for a
    member with a ``source``, the download directory holding it."""
    own = None
    if member.source is not None and member.size:
        own = os.open(member.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
    try:
        _write_bytes(src if own is None else own, member, name, top)
    finally:
        if own is not None:
            os.close(own)


def _write_bytes(src: int, member: _Member, name: str, top: int | None) -> None:
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=top)
    try:
        # A fresh O_EXCL file receiving exactly ``size`` bytes: its size is
        # right; the digest is of the bytes written (read back after a
        # kernel copy when payload and destination share a file system).
        digest = (
            copy_and_hash(src, member.offset, member.size, fd, writeback=True, read_back=True)
            if member.size
            else hashlib.sha256().hexdigest()
        )
        if member.sha256 is not None and digest != member.sha256:
            raise VerifyError(f"{member.name}: sha256 differs from the manifest (corrupt payload)")
        os.fchmod(fd, member.mode)
        if member.mtime is not None:
            os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)


def _swap(new: Path, target: Path, *, clean: bool) -> None:
    """Rename ``new`` onto ``target``; an occupied target (``clean`` only) is
    moved aside first and deleted only once ``new`` is in place."""
    if not _occupied(target):
        try:
            os.rename(new, target)  # replaces an empty directory atomically
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                raise
    if not clean:
        raise DestinationError(f"destination {target} was filled while installing")
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.roost-old-", dir=target.parent))
    old = aside / "old"
    try:
        os.rename(target, old)
    except OSError:
        os.rmdir(aside)
        raise
    try:
        os.rename(new, target)
    except OSError:
        try:
            os.rename(old, target)
        except OSError as exc:
            raise DestinationError(
                f"could not put {target} back after a failed swap; the old tree is in {old}"
            ) from exc
        os.rmdir(aside)
        raise
    try:
        _remove_tree(aside)
    except OSError as exc:
        log.warning("could not remove the old tree %s: %s", aside, exc)


def _remove_tree(path: Path) -> None:
    """Remove a file or tree, read-only directories and paths deeper than
    PATH_MAX included.

    Walked by directory descriptors, one open at a time (a deep tree would
    exhaust the descriptors, and recursion the stack, as ``shutil.rmtree``
    does): down into a child by its name, back up by ``..``, checked to be
    the directory we came from."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    top = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fd = -1
    try:
        fd = os.open(path.name, flags, dir_fd=top)
        # One frame per directory open on the way down: its name, its
        # (dev, ino), and its subdirectories still to remove.
        stack: list[tuple[str, tuple[int, int], list[str]]] = []
        name = path.name
        while True:
            here = os.fstat(fd)
            os.fchmod(fd, 0o700)
            subdirs = []
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
                    else:
                        os.unlink(entry.name, dir_fd=fd)
            stack.append((name, (here.st_dev, here.st_ino), subdirs))
            while stack and not stack[-1][2]:
                done, _, _ = stack.pop()
                if not stack:
                    os.close(fd)
                    fd = -1
                    os.rmdir(done, dir_fd=top)
                    return
                up = os.open("..", flags, dir_fd=fd)
                os.close(fd)
                fd = up
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != stack[-1][1]:
                    raise OSError(errno.ESTALE, "directory moved while being removed", done)
                os.rmdir(done, dir_fd=fd)
            name = stack[-1][2].pop()
            child = os.open(name, flags, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        if fd >= 0:
            os.close(fd)
        os.close(top)


# ------------------------------------------------------------------- verify


def installed_difference(target: Path, manifest: Manifest) -> str | None:
    """The first way the tree at ``target`` differs from ``manifest`` (extra,
    missing, type, mode, size, sha256), or None if it holds exactly it."""
    return _mismatch(Path(target), Plan(manifest, ()), as_file=False)


def verify_installed(target: Path, payload: Path, meta: TorrentMeta) -> None:
    """Check an installed tree (or file) against the release's manifest.

    A tree installed with its setuid/setgid/sticky bits stripped (the
    default) holds the release as well. Raises ``VerifyError`` naming the
    first difference."""
    if meta.tree_manifest is not None:  # a tree release: the torrent holds the manifest
        plan = Plan(meta.tree_manifest, ())
    else:
        plan = load_plan(Path(payload), meta)
    target = Path(target)
    as_file = plan.single and not target.is_dir()
    problem = _mismatch(target, plan, as_file=as_file)
    if problem and _mismatch(target, _stripped(plan), as_file=as_file) is None:
        problem = None
    if problem:
        raise VerifyError(problem)


def _mismatch(target: Path, plan: Plan, *, as_file: bool) -> str | None:
    """The first way ``target`` differs from the plan, or None."""
    if as_file:
        try:
            return _entry_mismatch(target, plan.manifest.entries[0], str(target))
        except OSError as exc:
            return f"{target}: cannot read: {exc.strerror}"
    entries = plan.manifest.by_path()
    try:
        found = _scan(target)
        return _tree_mismatch(target, found, entries)
    except OSError as exc:
        return f"{target}: cannot read: {exc.strerror}"


def _tree_mismatch(
    target: Path, found: dict[str, os.stat_result], entries: dict[str, ManifestEntry]
) -> str | None:
    extra = sorted(set(found) - set(entries))
    if extra:
        return f"{target / extra[0]}: not in the release"
    for path in entries:
        if path not in found:
            return f"{target / path}: missing"
    for path, entry in entries.items():
        problem = _entry_mismatch(target / path, entry, str(target / path))
        if problem:
            return problem
    return None


def _scan(root: Path, prefix: str = "") -> dict[str, os.stat_result]:
    found = {}
    with os.scandir(root) as it:
        for entry in it:
            rel = prefix + entry.name
            found[rel] = entry.stat(follow_symlinks=False)
            if entry.is_dir(follow_symlinks=False):
                found.update(_scan(Path(entry.path), rel + "/"))
    return found


def _entry_mismatch(path: Path, entry: ManifestEntry, name: str) -> str | None:
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"{name}: {exc.strerror}"
    if entry.type == "symlink":
        if not stat.S_ISLNK(st.st_mode) or os.readlink(path) != entry.target:
            return f"{name}: not the symlink the manifest lists"
        return None
    if entry.type == "dir":
        ok = stat.S_ISDIR(st.st_mode)
    else:
        ok = stat.S_ISREG(st.st_mode) and st.st_size == entry.size
    if not ok:
        return f"{name}: type or size differs from the manifest"
    if stat.S_IMODE(st.st_mode) != entry.mode:
        return f"{name}: mode {stat.S_IMODE(st.st_mode):o}, the manifest says {entry.mode:o}"
    if entry.type == "file" and entry.sha256 and _sha256_file(path) != entry.sha256:
        return f"{name}: sha256 differs from the manifest"
    return None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

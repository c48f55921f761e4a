"""Safe, atomic installation of a downloaded release into a destination.

Theory of operation, in four steps:

1. **Plan** (nothing written yet; ``roost.installplan``). For a tar
   release every member header is read and checked: no absolute path, no
   ``..``, normalised names, no duplicates, no member below a symlink, no
   device or fifo, symlinks that stay inside the tree once resolved (chains
   included), hard links only to earlier regular members. The manifest
   (last member) must hash to the ``manifest-sha256`` of the torrent's info
   dict, and the members must be exactly its entries, same types, modes,
   sizes and link targets. Refusals raise ``UnsafeArchiveError``;
   disagreements raise ``VerifyError``.
2. **Compare** (``roost.verify``). A target that already holds exactly the
   manifest is left alone (``already_installed``): re-running a deploy is
   idempotent. Any other non-empty target raises ``DestinationError`` unless
   ``clean``.
3. **Stage.** Members are written into a hidden staging directory beside the
   target (same file system), several files at once in worker threads, each
   file's bytes read once, hashed and written, the sha256 checked against
   the manifest; modes and mtimes are then set. A file that is a file of
   its own in the download (a file release, a tree release's files) is
   hard-linked from there instead of copied, where the file system allows
   (``link``, which the peer and the agent pass for their download cache):
   its bytes are hashed in place, nothing is written twice, and the release
   takes no second copy's room. The host then seeds from the same inode, so
   a file edited in place after the install would reach the peers it seeds
   (who refuse its pieces): ``roost peer --copy`` copies. The staging tree is then
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
import secrets
import stat
import tempfile
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from roost.destination import occupied, target_of
from roost.errors import (
    DestinationError,
    ReleaseError,
    UsageError,
    VerifyError,
)
from roost.hashing import (
    copy_and_hash,
    fsync_directory,
    sha256_range,
    start_writeback,
    sync_filesystem,
)
from roost.installed import read_record, write_record
from roost.installplan import SETID, Member, Plan, load_plan, stripped
from roost.metainfo import TorrentMeta, validate_tag
from roost.release import tree_manifest_sha256
from roost.verify import mismatch

__all__ = [
    "InstallResult",
    "check_destination",
    "install_release",
]

#: a file's sha256, inode, size and mtime (ns) as the download hashed it
Hashed = tuple[str, int, int, int]

log = logging.getLogger(__name__)

_WRITERS = min(4, os.cpu_count() or 1)  # files written at once
_WINDOW = 64  # files queued ahead of the writers
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


# ------------------------------------------------------------------ install


def install_release(
    payload: Path,
    meta: TorrentMeta,
    dest: Path,
    *,
    tag_directory: bool = True,
    clean: bool = False,
    keep_setid: bool = False,
    link: bool = False,
    hashed: Mapping[str, Hashed] | None = None,
) -> InstallResult:
    """Install ``payload`` at ``dest/TAG`` (or ``dest``) atomically, setuid,
    setgid and sticky bits stripped unless ``keep_setid``; with ``link``,
    the payload's own files are hard-linked, not copied (for a download
    cache that nobody else writes to: not a build directory). ``hashed``:
    what the download already hashed of them (``roost.peer.hashahead``:
    name -> sha256, inode, size, mtime); a linked file found with that
    inode, size and mtime and that sha256 is not read again.

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
        plan = stripped(plan)
    target, as_file = target_of(meta, Path(dest), tag_directory=tag_directory)
    longest = max((m.name for m in plan.members), key=len, default="")
    if (size := len(os.fsencode(target / longest))) >= _PATH_MAX:
        raise DestinationError(
            f"{_short(longest)}: would be a path of {size} bytes in {target}, "
            f"longer than PATH_MAX ({_PATH_MAX})"
        )
    try:
        result = _install(
            Path(payload),
            plan,
            target,
            as_file=as_file,
            clean=clean,
            link=link,
            release=meta.manifest_sha256,
            hashed=hashed or {},
        )
        if not result.already_installed:
            data = None if as_file else plan.manifest.encode()
            tree = None if data is None else hashlib.sha256(data).hexdigest()
            write_record(
                target, manifest_sha256=meta.manifest_sha256, tree_sha256=tree, manifest=data
            )
        return result
    except OSError as exc:
        raise _dest_error(exc, target) from exc


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
    target, as_file = target_of(meta, Path(dest), tag_directory=tag_directory)
    try:
        if not occupied(target):
            return None
        if _holds_release(target, meta, as_file=as_file, keep_setid=keep_setid):
            return InstallResult(target, True)
    except OSError as exc:
        raise _dest_error(exc, target) from exc
    if clean:
        return None
    raise _occupied_error(target, meta.manifest_sha256)


def _holds_release(target: Path, meta: TorrentMeta, *, as_file: bool, keep_setid: bool) -> bool:
    if meta.tree_manifest is not None:  # a tree release: its manifest is at hand
        plan = Plan(meta.tree_manifest, ())
        if mismatch(target, plan, as_file=False) is None:
            return True
        return not keep_setid and mismatch(target, stripped(plan), as_file=False) is None
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
    mode = meta.file_mode if keep_setid or meta.file_mode is None else meta.file_mode & ~SETID
    if mode is not None and stat.S_IMODE(st.st_mode) != mode:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        return sha256_range(fd, 0, st.st_size) == meta.manifest_sha256
    finally:
        os.close(fd)


def _install(
    payload: Path,
    plan: Plan,
    target: Path,
    *,
    as_file: bool,
    clean: bool,
    link: bool,
    release: str | None = None,
    hashed: Mapping[str, Hashed],
) -> InstallResult:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DestinationError(f"cannot create {target.parent}: {exc.strerror}") from exc
    if not target.parent.is_dir():
        raise DestinationError(f"destination {target.parent} is not a directory")
    if occupied(target):
        if mismatch(target, plan, as_file=as_file) is None:
            log.info("%s already holds release %s", target, plan.manifest.tag)
            return InstallResult(target, True)
        if not clean:
            raise _occupied_error(target, release)
    staging = _staging_name(target)  # made in the try: a signal just after leaves nothing
    try:
        if not as_file:  # a file release's is made by its write (O_EXCL)
            _make_staging(staging)
        _write_members(payload, plan, staging, as_file=as_file, link=link, hashed=hashed)
        sync_filesystem(staging.parent)
        _swap(staging, target, clean=clean)
        fsync_directory(target.parent)
    finally:
        try:
            _remove_tree(staging)
        except OSError as exc:
            log.warning("could not remove the staging area %s: %s", staging, exc)
    return InstallResult(target, False)


def _staging_name(target: Path) -> Path:
    """A fresh name beside ``target`` for its staging area (random, so that
    nothing else is named so; made by the caller inside its ``try``, whose
    ``finally`` removes it: made here, a SIGTERM between its making and the
    ``try`` left it behind)."""
    return target.parent / f".{target.name}.roost-staging-{secrets.token_hex(8)}"


def _make_staging(staging: Path) -> None:
    try:
        os.mkdir(staging, 0o700)
    except OSError as exc:
        raise _dest_error(exc, staging.parent) from exc


def _dest_error(exc: OSError, where: Path) -> DestinationError:
    if exc.errno == errno.ENOSPC:
        return DestinationError(f"no space left on the device of {where}")
    name = exc.filename if isinstance(exc.filename, str) else ""
    member = "" if not name or name.startswith("/") else f" ({_short(name)})"
    return DestinationError(f"cannot install into {where}: {exc.strerror or exc}{member}")


def _short(name: str) -> str:
    return name if len(name) <= 80 else f"{name[:38]}...{name[-38:]}"


def _occupied_error(target: Path, release: str | None = None) -> DestinationError:
    """The true reason ``target`` cannot take the release (its
    ``manifest-sha256``: ``release``) without ``clean``."""
    what = "is not empty"
    with contextlib.suppress(OSError):
        st = os.lstat(target)
        if stat.S_ISLNK(st.st_mode):
            what = f"is a symlink (to {os.readlink(target)})"
        elif not stat.S_ISDIR(st.st_mode) and not stat.S_ISREG(st.st_mode):
            what = "is a special file"
        elif (installed := (read_record(target) or {}).get("manifest_sha256")) is not None:
            if installed != release:  # a rebuild deployed again under the same tag
                return DestinationError(
                    f"destination {target} holds another release of that name, installed"
                    " by roost: deploy this build under a new tag, or pass --clean to replace it"
                )
            what = "holds this release, changed since it was installed"
        elif not stat.S_ISDIR(st.st_mode):
            what = "is a file"
    return DestinationError(
        f"destination {target} {what} (clean it, or pass --clean to replace it)"
    )


def _write_members(
    payload: Path,
    plan: Plan,
    root: Path,
    *,
    as_file: bool,
    link: bool,
    hashed: Mapping[str, Hashed],
) -> None:
    members, where = plan.members, payload
    if plan.single:  # the payload is the file: its directory is the source, as for a tree
        members, where = (dataclasses.replace(members[0], source=payload.name),), payload.parent
    src = os.open(where, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if as_file:
            _write_file(src, members[0], str(root), None, link=link, hashed=hashed)
            return
        # Everything relative to the staging directory's fd: no path walks from /.
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _write_tree(src, top, members, link=link, hashed=hashed)
            for member in reversed(members):
                if member.kind == "dir":
                    os.chmod(member.name, member.mode, dir_fd=top)
                    if member.mtime is not None:
                        os.utime(member.name, (member.mtime, member.mtime), dir_fd=top)
            os.fchmod(top, plan.manifest.root_mode)
        finally:
            os.close(top)
    finally:
        os.close(src)


def _write_tree(
    src: int,
    top: int,
    members: tuple[Member, ...],
    *,
    link: bool,
    hashed: Mapping[str, Hashed],
) -> None:
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
                    window.append(
                        pool.submit(_write_file, src, member, name, top, link=link, hashed=hashed)
                    )
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


def _write_file(
    src: int,
    member: Member,
    name: str,
    top: int | None,
    *,
    link: bool,
    hashed: Mapping[str, Hashed],
) -> None:
    """Write one file; ``src`` is the payload (a tar) or, for a member with a
    ``source``, the download directory holding it (then, with ``link``,
    the file is hard-linked from there where the file system allows)."""
    # (A file its owner cannot read is copied: the seeding engine must still
    # open the download's file, which a link would give the new mode.)
    linkable = link and member.source is not None and member.size and member.mode & stat.S_IRUSR
    if linkable and _link_file(src, member, name, top, hashed):
        return
    own = None
    if member.source is not None and member.size:
        own = os.open(member.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
    try:
        _write_bytes(src if own is None else own, member, name, top)
    finally:
        if own is not None:
            os.close(own)


#: why a hard link cannot be made here (then the file is copied): another
#: file system, one without hard links, too many links, or links refused
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOSYS}


def _link_file(
    src: int, member: Member, name: str, top: int | None, hashed: Mapping[str, Hashed]
) -> bool:
    """Hard-link ``member``'s download file as ``name`` and check its bytes
    where they are (or take the download's digest of them, made as they
    arrived, where it is of this very file); False where no link can be
    made (nothing written)."""
    assert member.source is not None
    try:
        os.link(member.source, name, src_dir_fd=src, dst_dir_fd=top, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return False
        raise
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != member.size:
            raise VerifyError(f"{member.name}: the download's file is not {member.size} bytes")
        unread = member.sha256 is not None and not _hashed_already(member, st, hashed)
        if unread and sha256_range(fd, 0, member.size) != member.sha256:
            raise VerifyError(f"{member.name}: sha256 differs from the manifest (corrupt payload)")
        start_writeback(fd)
        os.fchmod(fd, member.mode)
        if member.mtime is not None:
            os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)
    return True


def _hashed_already(member: Member, st: os.stat_result, hashed: Mapping[str, Hashed]) -> bool:
    """Whether the download hashed this very file as it arrived, to the
    manifest's sha256 (the same inode, size and mtime: unchanged since)."""
    known = hashed.get(member.source or "")
    return known is not None and known == (member.sha256, st.st_ino, st.st_size, st.st_mtime_ns)


def _write_bytes(src: int, member: Member, name: str, top: int | None) -> None:
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
    if not occupied(target):
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

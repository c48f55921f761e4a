"""What a peer checks before and during a download, so a fault is named early.

Before (as soon as the torrent's metadata is known: at once for a .torrent,
on arrival for a magnet link):

* :func:`check_installable`: the one place that refuses a torrent roost
  cannot install (today: a multi-file torrent made by another tool);
* :func:`check_room`: the download area and the destination are writable
  (a probe directory is made and removed in the nearest existing ancestor)
  and their devices have room for what is still to be written.

During: :class:`StallWatch` says when the swarm can no longer finish: pieces
this peer lacks are held by no connected peer, and nothing arrived (from
peers, web seeds or the feed) for a while. libtorrent uses web seeds all
along, so a working web seed keeps bytes arriving and never stalls.

No libtorrent here; the callers pass numbers in.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from roost.errors import DestinationError, ReleaseError, disk_error

MiB = 1024 * 1024


def check_installable(meta: Any) -> None:
    """Refuse, before anything is downloaded, a torrent roost cannot install.

    ``meta`` is a ``roost.metainfo.TorrentMeta``: a multi-file torrent whose
    file list extraction would refuse (absolute or ``..`` paths, names not
    normalised, duplicates, a file where a directory must be, BEP 47
    symlinks). Raises ``ReleaseError`` naming the file.
    """
    if meta.files is None:
        return
    from roost.layout import unsafe_file_list

    bad = unsafe_file_list(meta.files)
    if bad is not None:
        raise ReleaseError(f"refusing {meta.name!r}: its file {bad[0]!r} {bad[1]}")


def check_room(
    meta: Any, download_dir: Path, dest: Path, *, tag_directory: bool, link: bool = False
) -> None:
    """Check that ``download_dir`` (``TEMP/INFOHASH``) and ``dest`` can take
    ``meta``'s payload: writable, and enough free space for the bytes still
    to download plus the installed copy (both on one device when they share
    it; none when ``link`` and the release is not a tar: its install then
    hard-links the download's files). Writes nothing that stays. Raises
    ``DestinationError`` naming the directory and what is wrong."""
    # The directory the installer creates its staging area in (extract._target).
    as_file = meta.single_file and not tag_directory
    install_parent = Path(dest) if tag_directory or as_file else Path(dest).parent
    temp = _writable(Path(download_dir), "download area")
    target = _writable(install_parent.absolute(), "destination")
    payload = Path(download_dir) / meta.name
    size = meta.data_length  # BEP 47 pads never reach the disk
    left = max(0, size - _allocated(payload))
    one_device = os.stat(temp).st_dev == os.stat(target).st_dev
    if one_device:
        needs = {temp: left if link and meta.kind != "tar" else left + size}
    else:
        needs = {temp: left, target: size}
    for where, need in needs.items():
        st = os.statvfs(where)
        free = st.f_bavail * st.f_frsize
        if need > free:
            raise DestinationError(
                f"not enough space on the device of {where} for {meta.name}:"
                f" {need / MiB:.1f} MiB needed, {free / MiB:.1f} MiB free"
            )
    if meta.files is not None:
        _check_inodes(meta, temp, target, link=link and meta.kind != "tar", one_device=one_device)


def _check_inodes(meta: Any, temp: Path, target: Path, *, link: bool, one_device: bool) -> None:
    """A tree's files and directories fit the devices' free inodes: the
    download makes each once, the install its directories (and its files,
    unless it hard-links them). A file system that counts no inodes passes."""
    files = [f.path for f in meta.files if not f.is_pad]
    dirs = {p[:i] for p in files for i, c in enumerate(p) if c == "/"}
    download = len(files) + len(dirs) + 1
    install = len(dirs) + 2 + (0 if link else len(files))  # the staging area, the record
    needs = {temp: download + install} if one_device else {temp: download, target: install}
    for where, need in needs.items():
        st = os.statvfs(where)
        if st.f_files and need > st.f_favail:
            raise DestinationError(
                f"not enough inodes on the device of {where} for {meta.name}:"
                f" {need} files and directories to make, {st.f_favail} free"
            )


def _allocated(path: Path) -> int:
    """Bytes already on disk under ``path`` (a file, or a download's tree)."""
    try:
        if not path.is_dir():
            return os.stat(path).st_blocks * 512
        return sum(
            os.lstat(Path(top) / name).st_blocks * 512
            for top, _, names in os.walk(path)
            for name in names
        )
    except OSError:
        return 0


def _writable(directory: Path, what: str) -> Path:
    """The nearest existing ancestor of ``directory`` (itself included),
    once a directory was made and removed in it."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DestinationError(f"{what} {directory}: {existing} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".roost-probe-", dir=existing))
    except OSError as exc:
        raise disk_error(exc, existing, f"{what} {existing} is not writable") from exc
    return existing


class StallWatch:
    """Decides when a download can no longer finish.

    Fed once a tick with the bytes done, the peers connected and the pieces
    held by nobody; answers the reason once ``window`` seconds passed with
    pieces held by nobody and no byte arriving. Not before this peer saw a
    peer at all (a tracker slow to answer is not a dead swarm). ``window``
    <= 0: never.
    """

    def __init__(self, window: float):
        self.window = window
        self._done = -1
        self._since = 0.0
        self._saw_peer = False

    def progressed(self, now: float, done: int, peers: int) -> bool:
        """Record a tick; True if bytes arrived since the last (nothing to judge)."""
        first_peer = peers > 0 and not self._saw_peer
        self._saw_peer = self._saw_peer or peers > 0
        if done != self._done or not self._saw_peer or first_peer:
            self._done = done
            self._since = now
            return True
        return False

    def verdict(self, now: float, unavailable: int, pieces: int) -> str | None:
        """After a tick without progress: why the swarm cannot finish, or None."""
        if not unavailable:
            self._since = now
            return None
        if self.window <= 0 or now - self._since < self.window:
            return None
        return (
            f"swarm cannot finish: {unavailable} of {pieces} pieces are held by nobody"
            f" (nothing arrived for {self.window:g}s)"
        )

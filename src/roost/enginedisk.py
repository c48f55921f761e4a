"""What the engine reads from the disk itself, before libtorrent does.

Two things :meth:`roost.engine.Engine.add` prepares for libtorrent's
``add_torrent_params``: where a multi-file torrent's files lie when they are
seeded in place (:func:`rooted_files`), and which pieces already on disk
resume data does not vouch for (:func:`vouch_for_disk`). Both work on the
bdecoded torrent and on duck-typed libtorrent objects, so this module does
not import libtorrent itself.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["rooted_files", "vouch_for_disk"]


def rooted_files(decoded: Any, root: Path) -> dict[int, str]:
    """Each real file of a multi-file torrent at ``root/PATH`` (absolute:
    libtorrent then ignores the save path), pads left alone. Read from the
    bdecoded torrent (libtorrent's file_storage accessors are deprecated in
    these bindings); its files keep their listed order and indices."""
    info = decoded.get(b"info", {}) if isinstance(decoded, dict) else {}
    renamed = {}
    for index, entry in enumerate(info.get(b"files") or []):
        if b"p" in entry.get(b"attr", b""):
            continue
        parts = [os.fsdecode(part) for part in entry.get(b"path", [])]
        renamed[index] = str(root.joinpath(*parts))
    return renamed


def vouch_for_disk(atp: Any, info: Any, save_path: Path) -> None:
    """Mark as had the pieces that resume data does not vouch for but that
    the files on disk hold, hashed here.

    Resume data is saved every few seconds; a worker killed outright (power
    cut, OOM killer, SIGKILL) leaves pieces on disk that its last save does
    not list, and libtorrent trusts resume data over the disk: it would
    download them again. Without resume data libtorrent checks every piece
    itself, so only pieces that resume data leaves out are read here, and a
    piece lying in a hole of the sparse file is skipped unread.
    """
    if atp.have_pieces and all(atp.have_pieces):
        return
    if info.num_files() != 1:
        return  # single-file only: a multi-file download fetches those pieces again
    count = info.num_pieces()
    have = (list(atp.have_pieces) + [False] * count)[:count]
    found = 0
    try:
        fd = os.open(save_path / info.name(), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no file yet: nothing to vouch for
    try:
        for piece in (i for i in range(count) if not have[i]):
            size = info.piece_size(piece)
            data = _read_unless_hole(fd, piece * info.piece_length(), size)
            if data is not None and hashlib.sha1(data).digest() == info.hash_for_piece(piece):
                have[piece] = True
                found += 1
    except OSError:
        pass  # unreadable from here on: what was found so far stands
    finally:
        os.close(fd)
    if found:
        atp.have_pieces = have


def _read_unless_hole(fd: int, offset: int, size: int) -> bytes | None:
    """``size`` bytes at ``offset``; None if they are short or all a hole."""
    try:
        if os.lseek(fd, offset, os.SEEK_DATA) >= offset + size:
            return None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # nothing but a hole from offset on
            return None
        # No SEEK_DATA on this file system: read and hash.
    data = os.pread(fd, size, offset)
    return data if len(data) == size else None

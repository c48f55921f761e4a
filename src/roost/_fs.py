"""File-system helpers with one policy, used wherever roost replaces a file.

:func:`atomic_write` is the only way roost writes a small file that others
read (pid files, resume data, state files, channel.json, torrents): readers
see the old bytes or the new ones, never a part, and after a crash or a
power loss the path holds one or the other. :func:`open_regular` is how
roost opens a small file others may have put in its way (channel.json, the
agent's state): a FIFO, device or socket there is refused, never waited on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "fsync_directory", "open_regular"]


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file (symlinks followed).

    Raises ``OSError`` as ``open`` does, and with ``strerror`` "not a regular
    file" for a directory, FIFO, device or socket; opening never waits for a
    FIFO's writer.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return os.fdopen(fd, "rb")


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``data``.

    A temporary file in the same directory is written, flushed to the disk
    (fsync), given ``mode`` and renamed over ``path``; then the directory is
    fsynced so the rename is durable too. On any error the temporary file is
    removed and the ``OSError`` raised: nothing half-written is left behind,
    under ``path`` or beside it.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The file is in place; a directory that cannot be fsynced (some FUSE
    # and network file systems) only weakens durability, not atomicity.
    with contextlib.suppress(OSError):
        fsync_directory(path.parent)
    return path


def fsync_directory(path: Path) -> None:
    """fsync a directory, so that a rename in it survives a power loss.
    Raises ``OSError``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

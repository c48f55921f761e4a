"""Where a release lands under a destination, and whether that place is
taken: what every peer asks before it downloads. Light on purpose (no tar,
hashing or manifest code): most deploys find the place free and need nothing
more until the install (roost.extract judges a taken place in full)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from roost.errors import DestinationError

if TYPE_CHECKING:
    from roost.metainfo import TorrentMeta


def install_target(meta: TorrentMeta, dest: Path, *, tag_directory: bool = True) -> Path:
    """Where ``meta`` would be installed under ``dest`` (links resolved)."""
    return target_of(meta, Path(dest), tag_directory=tag_directory)[0]


def target_of(meta: TorrentMeta, dest: Path, *, tag_directory: bool) -> tuple[Path, bool]:
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


def occupied(target: Path) -> bool:
    """Whether anything is at ``target`` (an empty directory is not).
    Raises ``OSError`` when it cannot be told."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return True
    with os.scandir(target) as it:
        return any(True for _ in it)

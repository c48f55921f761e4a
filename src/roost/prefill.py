"""Incremental deploys: start a download from an earlier release's files.

A tree release's larger files each have pieces of their own, and its
small files lie in short runs that start on piece boundaries
(``roost.layout``), so a file whose bytes did not change has the same
pieces in the new release as in the old, or shares them only with its run's
neighbours. Before the download starts, every file of the new
manifest whose sha256 matches a file of a release installed beside the
target (its records keep the manifest it was installed with,
``roost.installed``) is copied into the download directory, at its new
path (renames and mode changes cost nothing): a reflink where the file
system has them (``copy_file_range``), else an in-kernel copy. The copy is
hashed while it is made; a file whose bytes no longer match its record (it
was changed on disk) is dropped and downloaded instead. The pieces whose
every file was put in place are handed to the engine as present (``Engine.add``
``have``), and to the origin's feed as held, so that neither the origin nor
the swarm sends them again: only what changed travels.

Earlier releases are looked for where the target is: the target itself
(``--clean`` over an older release) and its siblings with records
(``DEST/OLD`` beside ``DEST/NEW``, ``DEST/releases/*``), newest first, a few
at most. Reading them never writes to them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from roost.errors import ReleaseError
from roost.hashing import copy_and_hash
from roost.installed import installed_manifest, state_dir
from roost.manifest import Manifest, parse_manifest

__all__ = ["Prefill", "earlier_releases", "prefill"]

log = logging.getLogger(__name__)

#: how many earlier releases are searched for unchanged files
SOURCES = 3


@dataclass
class Prefill:
    """What an earlier release gave a download."""

    bytes: int = 0
    files: int = 0
    rejected: int = 0
    pieces: list[int] = field(default_factory=list)


def earlier_releases(target: Path) -> list[tuple[Path, Manifest]]:
    """Installed releases near ``target`` whose manifests are on record,
    newest install first: ``target`` itself, then its siblings."""
    found: list[tuple[float, Path, Manifest]] = []
    candidates = [target]
    with contextlib.suppress(OSError), os.scandir(target.parent) as it:
        candidates += [
            Path(e.path)
            for e in it
            if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
        ]
    for path in dict.fromkeys(candidates):
        data = installed_manifest(path)
        if data is None:
            continue
        try:
            manifest = parse_manifest(data)
            when = os.stat(state_dir(path)).st_mtime
        except (ReleaseError, OSError):
            continue
        found.append((when, path, manifest))
    found.sort(key=lambda item: -item[0])
    return [(path, manifest) for _, path, manifest in found[:SOURCES]]


def prefill(meta: object, root: Path, target: Path) -> Prefill:
    """Put the unchanged files of earlier releases under ``root`` (the
    download's ``TEMP/INFOHASH/NAME``), which holds nothing yet. ``meta`` is
    a tree release's ``TorrentMeta``; anything else gets nothing."""
    result = Prefill()
    manifest = getattr(meta, "tree_manifest", None)
    layout = getattr(meta, "layout", None)
    if manifest is None or layout is None:
        return result
    sources: dict[str, Path] = {}
    for where, earlier in earlier_releases(target):
        for entry in earlier.entries:
            if entry.type == "file" and entry.size and entry.sha256 not in sources:
                sources[str(entry.sha256)] = where / entry.path
    if not sources:
        return result
    wanted = {e.path: e for e in manifest.entries if e.type == "file"}
    placed: set[int] = set()
    for index in layout.data_files():
        f = layout.files[index]
        want = wanted.get(f.path)
        if want is None or not f.length or (source := sources.get(str(want.sha256))) is None:
            continue
        outcome = _copy(source, root / f.path, f.length, str(want.sha256))
        if outcome is None:
            continue
        if outcome:
            result.bytes += f.length
            result.files += 1
            placed.add(index)
        else:
            result.rejected += 1
    # A piece is held once every file with bytes in it is (small files share
    # pieces, roost.layout); the rest of a shared piece is downloaded.
    pieces = {p for index in placed for p in layout.file_pieces(index)}
    result.pieces = sorted(p for p in pieces if placed.issuperset(layout.piece_files(p)))
    return result


def _copy(source: Path, dest: Path, size: int, sha256: str) -> bool | None:
    """Copy ``source`` (a regular file of ``size`` bytes) to ``dest``; True
    if its bytes hash to ``sha256``, False (and nothing left) if not, None
    if it cannot be read as such a file."""
    try:
        src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(src).st_size != size:
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst = os.open(dest, flags, 0o644)
    except OSError as exc:
        os.close(src)
        log.warning("could not reuse %s: %s", source, exc)
        return None
    try:
        digest = copy_and_hash(src, 0, size, dst, read_back=True)
    except OSError as exc:
        log.warning("could not reuse %s: %s", source, exc)
        digest = ""
    finally:
        os.close(dst)
        os.close(src)
    if digest != sha256:
        if digest:
            log.warning("%s changed on disk since it was installed: downloading it", source)
        os.unlink(dest)
        return False if digest else None
    return True

"""Whether an installed tree (or file) holds a release: every entry of its
manifest, with its type, mode, size and sha256, and nothing else
(``roost verify``, the fleet's checks, ``roost.extract``'s "already
installed" test). Reads only.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from roost.errors import VerifyError
from roost.installed import installed_manifest
from roost.installplan import Plan, load_plan, single_file_plan, stripped
from roost.manifest import Manifest, ManifestEntry, parse_manifest
from roost.metainfo import TorrentMeta

__all__ = ["installed_difference", "mismatch", "verify_installed"]


def installed_difference(target: Path, manifest: Manifest) -> str | None:
    """The first way the tree at ``target`` differs from ``manifest`` (extra,
    missing, type, mode, size, sha256), or None if it holds exactly it."""
    return mismatch(Path(target), Plan(manifest, ()), as_file=False)


def verify_installed(target: Path, payload: Path, meta: TorrentMeta) -> None:
    """Check an installed tree (or file) against the release's manifest.

    A tree installed with its setuid/setgid/sticky bits stripped (the
    default) holds the release as well. Raises ``VerifyError`` naming the
    first difference."""
    target = Path(target)
    plan = _release_plan(target, Path(payload), meta)
    as_file = plan.single and not target.is_dir()
    problem = mismatch(target, plan, as_file=as_file)
    if problem and mismatch(target, stripped(plan), as_file=as_file) is None:
        problem = None
    if problem:
        raise VerifyError(problem)


def _release_plan(target: Path, payload: Path, meta: TorrentMeta) -> Plan:
    """The release's manifest. A tree or file release's is in its torrent; a
    tar release's is in its tar (``payload``), which hosts do not keep: then
    the copy on record beside the install (``roost.installed``), if it is
    the one the torrent names by its sha256."""
    if meta.tree_manifest is not None:
        return Plan(meta.tree_manifest, ())
    if meta.files is None and meta.kind != "tar":
        return single_file_plan(meta)
    if meta.kind == "tar" and not os.path.lexists(payload):
        data = installed_manifest(target)
        if data is not None and hashlib.sha256(data).hexdigest() == meta.manifest_sha256:
            return Plan(parse_manifest(data), ())
        raise VerifyError(
            f"{target}: a tar release's manifest is in its tar, and {payload} does not exist "
            "(give --payload TAG.tar)"
        )
    return load_plan(payload, meta)


def mismatch(target: Path, plan: Plan, *, as_file: bool) -> str | None:
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

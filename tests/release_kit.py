"""Helpers for the release and extraction tests: sample trees, tree
comparison, hand-built (possibly malicious) tar releases."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

from roost.metainfo import TorrentMeta

MTIME = 1_600_000_000


def make_tree(root: Path) -> Path:
    """A source tree with every kind of entry roost must keep."""
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "deep" / "er").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "ro").mkdir()
    (root / "bin" / "run").write_text("#!/bin/sh\necho run\n")
    os.chmod(root / "bin" / "run", 0o755)
    (root / "lib" / "data.bin").write_bytes(os.urandom(300_000))
    (root / "lib" / "deep" / "er" / "x.txt").write_text("deep\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "secret.txt").write_text("mode 600\n")
    os.chmod(root / "secret.txt", 0o600)
    (root / "ro" / "inside.txt").write_text("in a read-only dir\n")
    (root / ("long-" + "n" * 150 + ".txt")).write_text("long name\n")
    (root / "unicodé ✓.txt").write_text("utf-8 name\n")
    os.symlink("bin/run", root / "run-link")
    os.symlink("../data.bin", root / "lib" / "deep" / "up-link")
    os.symlink("lib", root / "lib-link")
    os.symlink("missing-but-inside", root / "dangling")
    # .git* at every level is skipped
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref\n")
    (root / ".gitignore").write_text("*.o\n")
    (root / "lib" / ".git").write_text("gitdir: elsewhere\n")
    (root / "lib" / "deep" / ".gitattributes").write_text("x\n")
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(path, (MTIME, MTIME + len(path.name)), follow_symlinks=False)
    os.chmod(root / "ro", 0o555)
    os.utime(root / "ro", (MTIME, MTIME))
    return root


def snapshot(root: Path, *, skip_git: bool = False) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root``: type, mode, mtime, content or link target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if skip_git and any(part.startswith(".git") for part in Path(rel).parts):
                continue
            st = os.lstat(path)
            mtime = int(st.st_mtime)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), mtime)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), mtime)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), mtime, path.read_bytes())
    return out


def listing(root: Path) -> set[str]:
    """All paths under ``root`` (relative), for 'nothing else was written'."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def entry(path: str, kind: str = "file", mode: int = 0o644, data: bytes = b"", target: str = ""):
    doc: dict[str, object] = {"path": path, "type": kind, "mode": mode}
    if kind == "file":
        doc["size"] = len(data)
        doc["sha256"] = hashlib.sha256(data).hexdigest()
    if kind == "symlink":
        doc["target"] = target
    return doc


def build_tar(
    path: Path,
    members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]],
    entries: list[dict[str, object]] | None = None,
    *,
    tag: str = "evil",
    manifest_last: bool = True,
) -> TorrentMeta:
    """Write a tar release by hand; return the TorrentMeta that authenticates
    its manifest (as a real torrent's x-roost would)."""
    manifest = json.dumps({"version": 1, "tag": tag, "entries": entries or []}).encode()
    info = tarfile.TarInfo(".roost-manifest.json")
    info.size = len(manifest)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        if not manifest_last:
            archive.addfile(info, io.BytesIO(manifest))
        for member in members:
            if isinstance(member, tuple):
                member[0].size = len(member[1])
                archive.addfile(member[0], io.BytesIO(member[1]))
            else:
                archive.addfile(member)
        if manifest_last:
            archive.addfile(info, io.BytesIO(manifest))
    return meta_for(path, hashlib.sha256(manifest).hexdigest(), tag=tag)


def meta_for(path: Path, manifest_sha256: str, *, tag: str, kind: str = "tar") -> TorrentMeta:
    size = path.stat().st_size
    return TorrentMeta(
        info_hash="0" * 40,
        name=path.name,
        length=size,
        piece_size=256 * 1024,
        num_pieces=-(-size // (256 * 1024)),
        tag=tag,
        kind=kind,
        manifest_sha256=manifest_sha256,
    )


def member(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", mode: int = 0o644):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    return info

"""Tree releases (issue 14): multi-file torrents over the build tree itself,
BEP 47 pads, installs from a download directory, incremental deploys that
reuse an earlier release's unchanged files, foreign multi-file torrents."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from roost import bencode
from roost.checks import check_installable
from roost.errors import ReleaseError, UnsafeArchiveError
from roost.extract import install_release
from roost.feed import TAIL_SHARE
from roost.layout import Layout, TorrentFile, padded_files, starts_run, unsafe_file_list
from roost.metainfo import read_torrent, read_torrent_file
from roost.release import create_release
from roost.verify import verify_installed
from tests.release_kit import make_tree, snapshot
from tests.swarm_kit import random_file

Start = Callable[..., subprocess.Popen[bytes]]
KIB = 1024


# ------------------------------------------------------------------- layout


def test_padded_files_give_big_files_pieces_of_their_own() -> None:
    big = 100 * KIB  # OWN_PIECES or more
    files = padded_files([("a", big), ("d/b", 40000), ("e", 0), ("z", 100)], 16 * KIB)
    assert [f.path for f in files] == ["a", ".pad/12288", "d/b", "e", "z"]
    assert [f.is_pad for f in files] == [False, True, False, False, False]
    layout = Layout(16 * KIB, tuple(files))
    assert layout.pads_end_pieces and layout.num_pieces == 10
    assert layout.data_bytes == big + 40100
    # a's pieces are its own; the small files after it lie end to end
    assert list(layout.file_pieces(0)) == list(range(7))
    assert [layout.piece_segments(i) for i in (6, 7, 9)] == [
        [(0, 6 * 16384, 4096)],
        [(2, 0, 16384)],
        [(2, 32768, 7232), (4, 0, 100)],
    ]
    assert layout.piece_files(9) == [2, 4] and list(layout.file_pieces(3)) == []


def test_small_files_lie_in_runs_that_start_where_their_paths_say() -> None:
    """A run of small files starts on a piece boundary before a path that
    hashes to one in RUN (here s1 and s16): adding or removing a file
    reshapes its own run only, and a tree of small files carries one
    partial block per run, not per file."""
    names = [f"s{i}" for i in range(20)]
    files = padded_files([(n, 1000) for n in names], 16 * KIB)
    pads = [i for i, f in enumerate(files) if f.is_pad]
    assert [files[i + 1].path for i in pads] == ["s1", "s16"]
    assert all(starts_run(files[i + 1].path) for i in pads)
    again = padded_files([(n, 1000) for n in names if n != "s5"], 16 * KIB)

    def from_s16(listed: list[TorrentFile]) -> list[TorrentFile]:
        return listed[[f.path for f in listed].index("s16") :]

    assert from_s16(again) == from_s16(files)  # the runs after s5's are as they were
    assert Layout(16 * KIB, tuple(files)).pads_end_pieces


def test_a_layout_with_a_pad_inside_a_piece_is_not_a_tree() -> None:
    layout = Layout(
        16 * KIB, (TorrentFile("a", 100), TorrentFile(".pad/100", 100, "p"), TorrentFile("b", 100))
    )
    assert not layout.pads_end_pieces
    with pytest.raises(ValueError):
        layout.piece_segments(0)


@pytest.mark.parametrize(
    ("paths", "bad"),
    [
        (["../x"], "../x"),
        (["/etc/passwd"], "/etc/passwd"),
        (["a/./b"], "a/./b"),
        (["a", "a"], "a"),
        (["a", "a/b"], "a/b"),
        (["a/b", "a"], "a"),
        ([".roost-manifest.json"], ".roost-manifest.json"),
        # names libtorrent would store otherwise: refused before the download
        (["ok", "d/tab\there"], "d/tab\there"),
        (["x" * 241], "x" * 241),
    ],
)
def test_unsafe_file_lists_are_named(paths: list[str], bad: str) -> None:
    found = unsafe_file_list([TorrentFile(p, 1) for p in paths])
    assert found is not None and found[0] == bad


# ------------------------------------------------------------------ create


def test_a_directory_becomes_a_multi_file_torrent_hashed_in_place(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    out = tmp_path / "out"
    release = create_release(src, "v1", out, announce=["http://127.0.0.1:1/announce"])
    assert release.kind == "tree" and release.payload == src.resolve()
    assert sorted(p.name for p in out.iterdir()) == ["v1.torrent"]  # no tar, no copy
    meta = read_torrent_file(release.torrent)
    assert meta.kind == "tree" and meta.name == "v1" and meta.files is not None
    layout = meta.layout
    assert layout is not None and layout.pads_end_pieces
    real = [f for f in meta.files if not f.is_pad]
    assert not any(f.path.startswith(".git") for f in real)
    # every piece hash is the file's own bytes, zero padded
    data = b"".join(
        (src / f.path).read_bytes() if not f.is_pad else bytes(f.length) for f in meta.files
    )
    for index in range(meta.num_pieces):
        piece = data[index * meta.piece_size : (index + 1) * meta.piece_size]
        assert hashlib.sha1(piece).digest() == meta.pieces[20 * index : 20 * index + 20]
    doc = json.loads(meta.manifest or b"")
    entry = next(e for e in doc["entries"] if e["path"] == "bin/run")
    assert entry["mode"] == 0o755 and entry["mtime"] == int((src / "bin/run").stat().st_mtime)
    assert hashlib.sha256(meta.manifest or b"").hexdigest() == meta.manifest_sha256


def test_tar_is_still_available(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    release = create_release(src, "v1", tmp_path / "out", announce=[], tar=True)
    assert release.kind == "tar" and release.payload.name == "v1.tar"
    assert read_torrent_file(release.torrent).files is None


def test_a_tree_whose_manifest_was_swapped_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    release = create_release(src, "v1", tmp_path / "out", announce=[])
    top = bencode.decode(release.torrent.read_bytes())
    x = top[b"info"][b"x-roost"]
    x[b"manifest"] = x[b"manifest"].replace(b'"mode":493', b'"mode":2541', 1)
    with pytest.raises(ReleaseError, match="manifest does not match"):
        read_torrent(bencode.encode(top))


# ----------------------------------------------------------------- install


def _download(src: Path, meta_name: str, into: Path) -> Path:
    """What the engine leaves for a tree release: the files under NAME/."""
    root = into / meta_name
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".git") for part in rel.parts) or path.is_symlink():
            continue
        if path.is_dir():
            (root / rel).mkdir(parents=True, exist_ok=True)
        else:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(path.read_bytes())
    return root


def test_a_tree_release_installs_exactly_its_manifest(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    release = create_release(src, "v1", tmp_path / "out", announce=[])
    meta = read_torrent_file(release.torrent)
    payload = _download(src, meta.name, tmp_path / "dl")
    result = install_release(payload, meta, tmp_path / "dest")
    assert result.path == tmp_path / "dest" / "v1" and not result.already_installed
    assert snapshot(result.path) == snapshot(src, skip_git=True)
    assert (result.path / "bin/run").stat().st_mtime == int((src / "bin/run").stat().st_mtime)
    verify_installed(result.path, payload, meta)
    again = install_release(payload, meta, tmp_path / "dest")
    assert again.already_installed


@pytest.mark.parametrize("link", [False, True])
def test_a_tree_whose_download_was_corrupted_is_refused(tmp_path: Path, link: bool) -> None:
    src = make_tree(tmp_path / "src")
    meta = read_torrent_file(create_release(src, "v1", tmp_path / "out", announce=[]).torrent)
    payload = _download(src, meta.name, tmp_path / "dl")
    data = bytearray((payload / "lib/data.bin").read_bytes())
    data[1000] ^= 1
    (payload / "lib/data.bin").write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"lib/data\.bin: sha256"):
        install_release(payload, meta, tmp_path / "dest", link=link)
    assert not (tmp_path / "dest" / "v1").exists()
    assert [p.name for p in (tmp_path / "dest").iterdir()] == []  # staging removed
    assert all(p.stat().st_nlink == 1 for p in payload.rglob("*") if p.is_file())


@pytest.mark.parametrize("link", [True, False])
def test_a_tree_download_is_linked_into_place_or_copied(tmp_path: Path, link: bool) -> None:
    src = make_tree(tmp_path / "src")
    meta = read_torrent_file(create_release(src, "v1", tmp_path / "out", announce=[]).torrent)
    payload = _download(src, meta.name, tmp_path / "dl")
    result = install_release(payload, meta, tmp_path / "dest", link=link)
    assert snapshot(result.path) == snapshot(src, skip_git=True)
    assert meta.tree_manifest is not None
    files = [e.path for e in meta.tree_manifest.entries if e.type == "file" and e.size]
    assert files
    for name in files:
        shared = (payload / name).stat().st_ino == (result.path / name).stat().st_ino
        assert shared is link, name
    verify_installed(result.path, payload, meta)


# --------------------------------------------------------- foreign torrents


def _foreign(files: list[tuple[str, bytes]], name: str = "pack", attr: str = "") -> bytes:
    piece = 16 * KIB
    stream = b"".join(data for _, data in files)
    pieces = b"".join(
        hashlib.sha1(stream[i : i + piece]).digest() for i in range(0, len(stream), piece)
    )
    entries = [{"length": len(d), "path": p.split("/")} for p, d in files]
    if attr:
        entries[0]["attr"] = attr
    info = {"name": name, "piece length": piece, "pieces": pieces, "files": entries}
    return bencode.encode({"info": info})


def test_a_foreign_multi_file_torrent_installs(tmp_path: Path) -> None:
    files = [("a/x.bin", os.urandom(30000)), ("b.txt", b"hello\n"), ("a/y", b"")]
    meta = read_torrent(_foreign(files, attr="x"))
    check_installable(meta)
    payload = tmp_path / "dl" / "pack"
    for path, data in files:
        (payload / path).parent.mkdir(parents=True, exist_ok=True)
        (payload / path).write_bytes(data)
    result = install_release(payload, meta, tmp_path / "dest")
    assert result.path == tmp_path / "dest" / "pack"
    assert (result.path / "a/x.bin").read_bytes() == files[0][1]
    assert stat.S_IMODE((result.path / "a/x.bin").stat().st_mode) == 0o755  # BEP 47 x
    assert stat.S_IMODE((result.path / "b.txt").stat().st_mode) == 0o644
    assert (result.path / "a/y").read_bytes() == b""


@pytest.mark.parametrize("bad", ["../escape", "a/../../b", "/abs"])
def test_a_foreign_torrent_with_unsafe_paths_is_refused_before_download(bad: str) -> None:
    meta = read_torrent(_foreign([("ok", b"1"), (bad, b"2")]))
    with pytest.raises(ReleaseError, match="refusing"):
        check_installable(meta)


def test_unsafe_paths_are_refused_by_the_installer_too(tmp_path: Path) -> None:
    meta = read_torrent(_foreign([("ok", b"1"), ("a/../../b", b"2")]))
    (tmp_path / "dl" / "pack").mkdir(parents=True)
    with pytest.raises(UnsafeArchiveError):
        install_release(tmp_path / "dl" / "pack", meta, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


def test_roost_peer_refuses_an_unsafe_foreign_torrent_before_downloading(
    tmp_path: Path, roost_procs: Start
) -> None:
    torrent = tmp_path / "bad.torrent"
    torrent.write_bytes(_foreign([("ok", b"1"), ("../escape", b"2")]))
    temp = tmp_path / "temp"
    proc = roost_procs(
        "peer", str(torrent), "--dest", str(tmp_path / "dest"), "--temp-path", str(temp)
    )
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "'../escape'" in lines[0], lines
    assert not temp.exists() or not any(temp.iterdir())
    assert not (tmp_path / "dest").exists()


# ------------------------------------------------------- incremental deploys


def _deploy(start: Start, src: Path, tag: str, dest: Path, hosts: int = 3) -> dict:
    proc = start(
        "deploy", str(src), "--tag", tag, "--dest", str(dest), "--local", str(hosts), "--json"
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)  # type: ignore[no-any-return]


def _build(root: Path, files: int = 24, size: int = 64 * KIB) -> Path:
    for k in range(files):
        random_file(root / "lib" / f"part-{k:02d}.bin", size, seed=k)
    (root / "bin").mkdir()
    (root / "bin" / "run").write_text("#!/bin/sh\necho v1\n")
    os.chmod(root / "bin" / "run", 0o755)
    return root


def test_an_incremental_deploy_carries_only_what_changed(
    tmp_path: Path, roost_procs: Start
) -> None:
    src = _build(tmp_path / "src")
    dest = tmp_path / "dest"
    first = _deploy(roost_procs, src, "v1", dest)
    assert all(h["ok"] and not h["bytes_reused"] for h in first["hosts"])
    # v2: one file changed, one removed, one renamed, one with a new mode, one new
    random_file(src / "lib" / "part-00.bin", 64 * KIB, seed=100)
    (src / "lib" / "part-01.bin").unlink()
    (src / "lib" / "part-02.bin").rename(src / "lib" / "renamed.bin")
    os.chmod(src / "lib" / "part-03.bin", 0o600)
    random_file(src / "lib" / "new.bin", 10 * KIB, seed=101)
    second = _deploy(roost_procs, src, "v2", dest)
    changed = 64 * KIB + 10 * KIB
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    for host in second["hosts"]:
        assert host["ok"], host
        installed = Path(host["path"])
        assert snapshot(installed) == snapshot(src)
        assert host["bytes_reused"] == total - changed
        # what arrived is the changed files (a block of pad each at most)
        assert host["bytes_down"] <= changed + 2 * 16 * KIB, host
    # the origin: one copy of that, and at most the feed's budget of second
    # copies (a piece re-handed or sent to the tail when the machine is busy)
    second_copies = -(-int(TAIL_SHARE * total) // (16 * KIB)) * 16 * KIB
    bound = changed + 2 * 16 * KIB + second_copies
    assert second["seeder"]["bytes_up"] <= bound < total // 4, second["seeder"]
    # the earlier release is untouched
    for host in first["hosts"]:
        assert (Path(host["path"]) / "lib" / "part-01.bin").exists()
        assert stat.S_IMODE((Path(host["path"]) / "lib" / "part-03.bin").stat().st_mode) == 0o644


def test_a_tree_of_small_files_travels_about_once_and_changes_by_its_runs(
    tmp_path: Path, roost_procs: Start
) -> None:
    """Small files lie end to end in runs (roost.layout): a full deploy
    carries their bytes, not a 16 KiB block apiece, and an incremental one
    carries the run of the file that changed, not the tree."""
    src = tmp_path / "src"
    names = [f"lib/m{k:02d}.py" for k in range(96)]
    for k, name in enumerate(names):
        random_file(src / name, 1000 + 37 * k, seed=200 + k)
    total = sum((src / n).stat().st_size for n in names)
    dest = tmp_path / "dest"
    first = _deploy(roost_procs, src, "v1", dest)
    for host in first["hosts"]:
        assert host["ok"], host
        assert host["bytes_down"] <= 1.2 * total, host  # a pad per file: 96 x 16 KiB
    changed = "lib/m40.py"
    random_file(src / changed, (src / changed).stat().st_size, seed=999)
    second = _deploy(roost_procs, src, "v2", dest)
    at = names.index(changed)
    begin = max(k for k in range(at + 1) if k == 0 or starts_run(names[k]))
    end = min([k for k in range(at + 1, len(names)) if starts_run(names[k])] + [len(names)])
    run = sum((src / n).stat().st_size for n in names[begin:end])
    for host in second["hosts"]:
        assert host["ok"], host
        assert snapshot(Path(host["path"])) == snapshot(src)
        assert host["bytes_down"] <= run + 2 * 16 * KIB, (host, run)
        assert host["bytes_reused"] >= total - run


def test_a_tampered_earlier_release_is_detected_and_downloaded_instead(
    tmp_path: Path, roost_procs: Start
) -> None:
    src = _build(tmp_path / "src", files=6)
    dest = tmp_path / "dest"
    first = _deploy(roost_procs, src, "v1", dest, hosts=2)
    victim = Path(first["hosts"][0]["path"]) / "lib" / "part-04.bin"
    data = bytearray(victim.read_bytes())
    data[7] ^= 0xFF
    victim.write_bytes(bytes(data))
    (src / "bin" / "run").write_text("#!/bin/sh\necho v2\n")
    second = _deploy(roost_procs, src, "v2", dest, hosts=2)
    for host in second["hosts"]:
        assert host["ok"], host
        assert snapshot(Path(host["path"])) == snapshot(src)
    tampered = next(h for h in second["hosts"] if h["name"] == first["hosts"][0]["name"])
    other = next(h for h in second["hosts"] if h is not tampered)
    assert tampered["bytes_reused"] == other["bytes_reused"] - 64 * KIB
    assert tampered["bytes_down"] >= 64 * KIB

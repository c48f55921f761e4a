"""roost.extract: round trips, every refusal, atomic replacement, idempotence.

Malicious archives are built by hand with tarfile; after every refusal the
test checks that nothing at all was written (no destination, no staging
directory, nothing beside it).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

from roost.cli import main
from roost.errors import DestinationError, ReleaseError, UnsafeArchiveError, VerifyError
from roost.extract import install_release
from roost.installplan import load_plan
from roost.metainfo import TorrentMeta, read_torrent
from roost.release import Release, create_release
from roost.verify import installed_difference, verify_installed
from tests.release_kit import build_tar, entry, listing, make_tree, member, snapshot


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src")


@pytest.fixture
def release(src: Path, tmp_path: Path) -> tuple[Release, TorrentMeta]:
    rel = create_release(src, "v1", tmp_path / "out", tar=True, announce=[])
    return rel, read_torrent(rel.torrent.read_bytes())


def _no_staging(*dirs: Path) -> None:
    for d in dirs:
        if d.exists():
            left = [p.name for p in d.iterdir() if ".roost-" in p.name]
            assert not left, f"left behind in {d}: {left}"


# ---------------------------------------------------------- round trips


def test_round_trip_is_identical(src: Path, tmp_path: Path, release) -> None:
    rel, meta = release
    dest = tmp_path / "dest"
    result = install_release(rel.payload, meta, dest)
    assert result.path == dest / "v1" and not result.already_installed
    assert os.fspath(result) == str(dest / "v1")
    assert snapshot(dest / "v1") == snapshot(src, skip_git=True)
    assert (os.stat(dest / "v1").st_mode & 0o7777) == (os.stat(src).st_mode & 0o7777)
    assert not (dest / "v1" / ".roost-manifest.json").exists()
    assert sorted(p.name for p in dest.iterdir()) == [".v1.roost", "v1"]
    verify_installed(dest / "v1", rel.payload, meta)


def test_no_tag_directory(src: Path, tmp_path: Path, release) -> None:
    rel, meta = release
    dest = tmp_path / "app"
    result = install_release(rel.payload, meta, dest, tag_directory=False)
    assert result.path == dest
    assert snapshot(dest) == snapshot(src, skip_git=True)
    _no_staging(tmp_path)


def test_already_installed_is_left_alone(tmp_path: Path, release) -> None:
    rel, meta = release
    dest = tmp_path / "dest"
    install_release(rel.payload, meta, dest)
    before = {p: os.lstat(p).st_ino for p in (dest / "v1").rglob("*")}
    again = install_release(rel.payload, meta, dest)
    assert again.already_installed and again.path == dest / "v1"
    assert {p: os.lstat(p).st_ino for p in (dest / "v1").rglob("*")} == before
    assert install_release(rel.payload, meta, dest, clean=True).already_installed


def test_non_empty_target_refused_then_cleaned(src: Path, tmp_path: Path, release) -> None:
    rel, meta = release
    old = tmp_path / "dest" / "v1"
    old.mkdir(parents=True)
    (old / "stale.txt").write_text("old build\n")
    (old / "ro").mkdir()
    (old / "ro" / "f").write_text("x")
    os.chmod(old / "ro", 0o555)
    with pytest.raises(DestinationError, match="not empty"):
        install_release(rel.payload, meta, tmp_path / "dest")
    assert (old / "stale.txt").read_text() == "old build\n"
    _no_staging(tmp_path / "dest")
    result = install_release(rel.payload, meta, tmp_path / "dest", clean=True)
    assert not result.already_installed
    assert snapshot(old) == snapshot(src, skip_git=True)
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [".v1.roost", "v1"]


def test_no_tag_directory_clean(src: Path, tmp_path: Path, release) -> None:
    rel, meta = release
    dest = tmp_path / "app"
    dest.mkdir()
    (dest / "other").write_text("x")
    with pytest.raises(DestinationError, match="not empty"):
        install_release(rel.payload, meta, dest, tag_directory=False)
    assert listing(dest) == {"other"}
    install_release(rel.payload, meta, dest, tag_directory=False, clean=True)
    assert snapshot(dest) == snapshot(src, skip_git=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".app.roost", "app", "out", "src"]


def test_empty_existing_target_is_used(src: Path, tmp_path: Path, release) -> None:
    rel, meta = release
    (tmp_path / "dest" / "v1").mkdir(parents=True)
    install_release(rel.payload, meta, tmp_path / "dest")
    assert snapshot(tmp_path / "dest" / "v1") == snapshot(src, skip_git=True)


def test_file_release(tmp_path: Path) -> None:
    app = tmp_path / "build" / "app.bin"
    app.parent.mkdir()
    app.write_bytes(os.urandom(5 << 20))
    os.chmod(app, 0o755)
    rel = create_release(app, "f1", tmp_path / "out", announce=[], is_file=True)
    meta = read_torrent(rel.torrent.read_bytes())
    dest = tmp_path / "dest"
    result = install_release(rel.payload, meta, dest)
    placed = dest / "f1" / "app.bin"
    assert result.path == dest / "f1"
    assert placed.read_bytes() == app.read_bytes() and os.stat(placed).st_mode & 0o777 == 0o755
    assert install_release(rel.payload, meta, dest).already_installed
    flat = tmp_path / "bin"
    flat.mkdir()
    (flat / "neighbour").write_text("kept")
    result = install_release(rel.payload, meta, flat, tag_directory=False)
    assert result.path == flat / "app.bin" and (flat / "app.bin").read_bytes() == app.read_bytes()
    assert listing(flat) == {
        "neighbour",
        "app.bin",
        ".app.bin.roost",
        ".app.bin.roost/install.json",
    }
    assert install_release(rel.payload, meta, flat, tag_directory=False).already_installed
    (flat / "app.bin").write_bytes(b"other")
    with pytest.raises(DestinationError, match=r"app\.bin holds this release, changed since"):
        install_release(rel.payload, meta, flat, tag_directory=False)
    install_release(rel.payload, meta, flat, tag_directory=False, clean=True)
    assert (flat / "app.bin").read_bytes() == app.read_bytes()
    assert listing(flat) == {
        "neighbour",
        "app.bin",
        ".app.bin.roost",
        ".app.bin.roost/install.json",
    }


# ------------------------------------------------------------- refusals


def _refused(tmp_path: Path, payload: Path, meta: TorrentMeta, error: type, match: str) -> None:
    """Install must raise ``error`` and write nothing anywhere."""
    before = listing(tmp_path)
    with pytest.raises(error, match=match) as info:
        install_release(payload, meta, tmp_path / "dest" / "root")
    assert "\n" not in str(info.value)
    assert listing(tmp_path) == before
    assert not (tmp_path / "dest").exists()


DIR = member("d", tarfile.DIRTYPE, mode=0o755)


def _file_download(tmp_path: Path, into: Path) -> tuple[Path, TorrentMeta, bytes]:
    """A file release and its download as the engine leaves it (DIR/NAME)."""
    app = tmp_path / "build" / "app.bin"
    app.parent.mkdir()
    app.write_bytes(os.urandom(3 << 20))
    os.chmod(app, 0o755)
    rel = create_release(app, "f1", tmp_path / "out", announce=[], is_file=True)
    meta = read_torrent(rel.torrent.read_bytes())
    into.mkdir(parents=True)
    shutil.copyfile(app, into / meta.name)
    return into / meta.name, meta, app.read_bytes()


def test_file_release_linked_from_the_download(tmp_path: Path) -> None:
    payload, meta, data = _file_download(tmp_path, tmp_path / "dl")
    placed = install_release(payload, meta, tmp_path / "dest", link=True).path / "app.bin"
    assert placed.read_bytes() == data
    assert placed.stat().st_ino == payload.stat().st_ino and payload.stat().st_nlink == 2
    assert placed.stat().st_mode & 0o777 == 0o755
    copied = install_release(payload, meta, tmp_path / "copy").path / "app.bin"
    assert copied.read_bytes() == data and copied.stat().st_ino != payload.stat().st_ino


def test_file_release_across_file_systems_is_copied(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's tmp_path")
    where = Path(tempfile.mkdtemp(dir=shm))
    try:
        payload, meta, data = _file_download(tmp_path, where / "dl")
        placed = install_release(payload, meta, tmp_path / "dest", link=True).path / "app.bin"
        assert placed.read_bytes() == data and payload.stat().st_nlink == 1
    finally:
        shutil.rmtree(where)


def test_corrupt_file_download_is_not_linked_into_place(tmp_path: Path) -> None:
    payload, meta, _ = _file_download(tmp_path, tmp_path / "dl")
    with payload.open("r+b") as f:
        f.seek(12345)
        f.write(b"\0")
    with pytest.raises(VerifyError, match="sha256 differs"):
        install_release(payload, meta, tmp_path / "dest", link=True)
    assert listing(tmp_path / "dest") == set() and payload.stat().st_nlink == 1


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([(member("/tmp/roost-evil"), b"x")], "absolute path"),
        ([(member("../evil"), b"x")], "'..'"),
        ([DIR, (member("d/../../evil"), b"x")], "'..'"),
        ([(member("./a"), b"x")], "not a normalised"),
        ([(member("a//b"), b"x")], "not a normalised"),
        ([member("l", tarfile.SYMTYPE, link="../../etc")], "outside the release"),
        ([DIR, member("d/l", tarfile.SYMTYPE, link="../..")], "outside the release"),
        ([member("l", tarfile.SYMTYPE, link="/etc/passwd")], "absolute path"),
        (
            [
                DIR,
                member("d/deep", tarfile.SYMTYPE, link=".."),
                member("l1", tarfile.SYMTYPE, link="d/deep"),
                member("l2", tarfile.SYMTYPE, link="l1/.."),
            ],
            "outside the release",
        ),
        (
            [member("l", tarfile.SYMTYPE, link="d"), DIR, (member("l/x"), b"via link")],
            "below the symlink",
        ),
        ([(member("x"), b"x"), member("h", tarfile.LNKTYPE, link="../x")], "hard link"),
        ([member("h", tarfile.LNKTYPE, link="/etc/passwd")], "hard link"),
        ([member("h", tarfile.LNKTYPE, link="nonmember")], "hard link"),
        ([member("null", tarfile.CHRTYPE)], "device or fifo"),
        ([member("disk", tarfile.BLKTYPE)], "device or fifo"),
        ([member("pipe", tarfile.FIFOTYPE)], "device or fifo"),
        ([(member("a"), b"one"), (member("a"), b"two")], "appears twice"),
        ([(member("d/x"), b"x")], "does not follow a directory"),
        ([(member(".roost-manifest.json"), b"{}")], "manifest's name"),
        ([(member("stowaway"), b"x")], "not in the manifest"),
    ],
)
def test_unsafe_archives_refused(tmp_path: Path, members: list, match: str) -> None:
    (tmp_path / "pay").mkdir()
    meta = build_tar(tmp_path / "pay" / "evil.tar", members)
    _refused(tmp_path, tmp_path / "pay" / "evil.tar", meta, UnsafeArchiveError, match)


def test_refusal_error_names_the_member(tmp_path: Path) -> None:
    (tmp_path / "pay").mkdir()
    meta = build_tar(tmp_path / "pay" / "evil.tar", [(member("../../x"), b"x")])
    with pytest.raises(UnsafeArchiveError) as info:
        install_release(tmp_path / "pay" / "evil.tar", meta, tmp_path / "dest")
    assert info.value.member == "../../x" and "'../../x'" in str(info.value)


@pytest.mark.parametrize(
    ("members", "entries", "match"),
    [
        ([], [entry("missing.txt", data=b"x")], "not in the archive"),
        ([(member("a", mode=0o755), b"x")], [entry("a", data=b"x")], "mode"),
        ([(member("a"), b"xy")], [entry("a", data=b"x")], "size"),
        ([DIR], [entry("d")], "type"),
        (
            [member("l", tarfile.SYMTYPE, link="a")],
            [entry("l", "symlink", target="b")],
            "target",
        ),
    ],
)
def test_manifest_disagreement(tmp_path: Path, members: list, entries: list, match: str) -> None:
    (tmp_path / "pay").mkdir()
    meta = build_tar(tmp_path / "pay" / "t.tar", members, entries)
    _refused(tmp_path, tmp_path / "pay" / "t.tar", meta, VerifyError, match)


def test_manifest_must_be_last_and_authentic(tmp_path: Path) -> None:
    (tmp_path / "pay").mkdir()
    payload = tmp_path / "pay" / "t.tar"
    meta = build_tar(payload, [(member("a"), b"x")], [entry("a", data=b"x")], manifest_last=False)
    _refused(tmp_path, payload, meta, VerifyError, "last member")
    meta = build_tar(payload, [(member("a"), b"x")], [entry("a", data=b"x")])
    forged = TorrentMeta(**{**meta.__dict__, "manifest_sha256": "0" * 64})
    _refused(tmp_path, payload, forged, VerifyError, "manifest-sha256")
    bad = build_tar(payload, [(member("a"), b"x")], [entry("a", data=b"x")], tag="other")
    _refused(tmp_path, payload, TorrentMeta(**{**bad.__dict__, "tag": "evil"}), VerifyError, "tag")


def test_not_a_tar_and_wrong_length(tmp_path: Path, release) -> None:
    rel, meta = release
    (tmp_path / "pay").mkdir()
    junk = tmp_path / "pay" / "junk.tar"
    junk.write_bytes(os.urandom(meta.length))
    _refused(tmp_path, junk, meta, VerifyError, "not a valid tar|last member")
    short = tmp_path / "pay" / "short.tar"
    short.write_bytes(rel.payload.read_bytes()[:-512])
    _refused(tmp_path, short, meta, VerifyError, "bytes, the torrent says")


def test_corrupted_payload(tmp_path: Path, release) -> None:
    rel, meta = release
    data = bytearray(rel.payload.read_bytes())
    with tarfile.open(rel.payload) as archive:
        target = archive.getmember("lib/data.bin")
    data[target.offset_data + 1000] ^= 0xFF
    rel.payload.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(VerifyError, match=r"lib/data\.bin: sha256"):
        install_release(rel.payload, meta, dest)
    assert listing(dest) == set()  # dest created, nothing left in it
    _no_staging(dest)


def test_hard_link_inside_is_fine(tmp_path: Path) -> None:
    (tmp_path / "pay").mkdir()
    payload = tmp_path / "pay" / "t.tar"
    entries = [entry("a", data=b"same"), entry("b", data=b"same")]
    meta = build_tar(
        payload, [(member("a"), b"same"), member("b", tarfile.LNKTYPE, link="a")], entries
    )
    install_release(payload, meta, tmp_path / "dest")
    assert (tmp_path / "dest" / "evil" / "b").read_bytes() == b"same"


# --------------------------------------------------------------- verify


def test_verify_detects_drift(tmp_path: Path, release, capsys: pytest.CaptureFixture[str]) -> None:
    rel, meta = release
    dest = tmp_path / "dest"
    install_release(rel.payload, meta, dest)
    target = dest / "v1"
    args = ["verify", str(target), "--torrent", str(rel.torrent)]
    assert main(args) == 0 and "ok:" in capsys.readouterr().out
    manifest = load_plan(rel.payload, meta).manifest
    assert installed_difference(target, manifest) is None
    (target / "extra").write_text("x")
    with pytest.raises(VerifyError, match="extra: not in the release"):
        verify_installed(target, rel.payload, meta)
    os.unlink(target / "extra")
    os.chmod(target / "bin" / "run", 0o700)
    with pytest.raises(VerifyError, match="mode 700"):
        verify_installed(target, rel.payload, meta)
    os.chmod(target / "bin" / "run", 0o755)
    (target / "lib" / "deep" / "er" / "x.txt").write_text("peed\n")
    with pytest.raises(VerifyError, match=r"x\.txt: sha256"):
        verify_installed(target, rel.payload, meta)
    assert main(args) == 1 and "sha256" in capsys.readouterr().err
    assert "x.txt: sha256" in (installed_difference(target, manifest) or "")
    # a drifted tree is no longer "already installed": it needs --clean
    with pytest.raises(DestinationError):
        install_release(rel.payload, meta, dest)


def test_destination_that_is_a_file(tmp_path: Path, release) -> None:
    rel, meta = release
    (tmp_path / "dest").write_text("a file")
    with pytest.raises(DestinationError, match="cannot create") as info:
        install_release(rel.payload, meta, tmp_path / "dest")
    assert "\n" not in str(info.value)
    assert (tmp_path / "dest").read_text() == "a file"
    _no_staging(tmp_path)


def test_gnu_tar_extracts_the_same_tree(src: Path, tmp_path: Path, release) -> None:
    import subprocess

    rel, _ = release
    (tmp_path / "gnu").mkdir()
    subprocess.run(["tar", "-xpf", str(rel.payload), "-C", str(tmp_path / "gnu")], check=True)
    os.unlink(tmp_path / "gnu" / ".roost-manifest.json")
    assert snapshot(tmp_path / "gnu") == snapshot(src, skip_git=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_is_a_destination_error(tmp_path: Path, release) -> None:
    import subprocess

    rel, meta = release
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(DestinationError, match="no space left"):
            install_release(rel.payload, meta, small / "dest")
        assert listing(small) == {"dest"}  # staging removed, nothing else written
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_cli_verify_file_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = tmp_path / "app.bin"
    app.write_bytes(os.urandom(100_000))
    rel = create_release(app, "f2", tmp_path / "out", announce=[], is_file=True)
    meta = read_torrent(rel.torrent.read_bytes())
    install_release(rel.payload, meta, tmp_path / "dest")
    args = ["verify", str(tmp_path / "dest" / "f2"), "--torrent", str(rel.torrent)]
    assert main([*args, "--payload", str(app)]) == 0
    assert "ok:" in capsys.readouterr().out
    # The torrent alone names the file's size and sha256: no payload needed.
    assert main(args) == 0
    assert "ok:" in capsys.readouterr().out
    (tmp_path / "dest" / "f2" / "app.bin").write_bytes(b"x" * 100_000)
    assert main([*args, "--payload", str(app)]) == 1
    assert "app.bin: sha256 differs" in capsys.readouterr().err
    assert main(args) == 1
    assert "app.bin: sha256 differs" in capsys.readouterr().err


def test_a_tar_release_is_verified_without_its_tar(
    tmp_path: Path, release, capsys: pytest.CaptureFixture[str]
) -> None:
    # Hosts keep the install, not the tar: the manifest on record beside the
    # install is used when its sha256 is the torrent's manifest-sha256.
    rel, meta = release
    install_release(rel.payload, meta, tmp_path / "dest")
    target = tmp_path / "dest" / "v1"
    lone = tmp_path / "lone" / rel.torrent.name
    lone.parent.mkdir()
    lone.write_bytes(rel.torrent.read_bytes())
    args = ["verify", str(target), "--torrent", str(lone)]
    assert main(args) == 0
    assert "ok:" in capsys.readouterr().out
    (target / "lib" / "deep" / "er" / "x.txt").write_text("peed\n")
    assert main(args) == 1
    assert "x.txt: sha256" in capsys.readouterr().err
    # A record that is not the release's manifest is not taken for it.
    record = target.parent / ".v1.roost" / "manifest.json"
    record.write_bytes(record.read_bytes().replace(b"x.txt", b"y.txt"))
    with pytest.raises(VerifyError, match=r"manifest is in its tar, .* \(give --payload"):
        verify_installed(target, lone.parent / meta.name, meta)


def test_swap_never_replaces_a_tree_filled_meanwhile(tmp_path: Path) -> None:
    from roost.extract import _swap

    new, target = tmp_path / "new", tmp_path / "target"
    new.mkdir()
    (new / "n").write_text("new")
    target.mkdir()
    (target / "o").write_text("filled by someone else after the check")
    with pytest.raises(DestinationError, match="filled while installing"):
        _swap(new, target, clean=False)
    assert listing(target) == {"o"} and listing(new) == {"n"}
    _swap(new, target, clean=True)
    assert listing(target) == {"n"} and sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_foreign_single_file_torrent(tmp_path: Path) -> None:
    from tests.release_kit import meta_for

    (tmp_path / "dl").mkdir()
    payload = tmp_path / "dl" / "disk image.iso"
    payload.write_bytes(os.urandom(50_000))
    meta = meta_for(payload, "0" * 64, tag="x", kind="file")
    foreign = TorrentMeta(**{**meta.__dict__, "tag": None, "kind": None, "manifest_sha256": None})
    with pytest.raises(ReleaseError, match="directory name"):
        install_release(payload, foreign, tmp_path / "dest")
    result = install_release(payload, foreign, tmp_path / "dest", tag_directory=False)
    assert result.path.read_bytes() == payload.read_bytes()


# ----------------------------------------------------- parallel writers


def _wide_release(tmp_path: Path, files: int = 300) -> tuple[Release, TorrentMeta, Path]:
    """More files than the writers' window, one of them bigger than a chunk."""
    src = tmp_path / "wide"
    for i in range(files):
        d = src / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:03}").write_bytes(os.urandom(i * 37 + 1))
        os.chmod(d / f"f{i:03}", 0o640 if i % 2 else 0o755)
    (src / "d3" / "big").write_bytes(os.urandom(9 << 20))
    rel = create_release(src, "w1", tmp_path / "out", tar=True, announce=[])
    return rel, read_torrent(rel.torrent.read_bytes()), src


def test_many_files_round_trip(tmp_path: Path) -> None:
    rel, meta, src = _wide_release(tmp_path)
    result = install_release(rel.payload, meta, tmp_path / "dest")
    assert snapshot(result.path) == snapshot(src)
    _no_staging(tmp_path / "dest")


@pytest.mark.parametrize(("name", "where"), [("d3/f150", 10), ("d3/big", (5 << 20) + 7)])
def test_corrupt_member_among_many_is_named_and_nothing_is_left(
    tmp_path: Path, name: str, where: int
) -> None:
    rel, meta, _ = _wide_release(tmp_path)
    data = bytearray(rel.payload.read_bytes())
    with tarfile.open(rel.payload) as archive:
        data[archive.getmember(name).offset_data + where] ^= 0x01
    rel.payload.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(VerifyError, match=rf"^{name}: sha256 differs"):
        install_release(rel.payload, meta, dest)
    assert listing(dest) == set()
    _no_staging(dest)


# ------------------------------------------------------------ durability

_TRACED = """
import sys
from pathlib import Path
from roost.extract import install_release
from roost.metainfo import read_torrent
meta = read_torrent(Path(sys.argv[2]).read_bytes())
install_release(Path(sys.argv[1]), meta, Path(sys.argv[3]), clean=True)
"""


@pytest.mark.skipif(
    not shutil.which("strace"), reason="needs strace (apt-get install strace; scripts/install does)"
)
@pytest.mark.parametrize("replace", [False, True])
def test_staging_is_flushed_before_the_rename_and_the_rename_after(
    tmp_path: Path, release, replace: bool
) -> None:
    """Power loss at any moment leaves the old release or the whole new
    one: syncfs(staging) -> rename(staging, target) -> fsync(parent)."""
    import re
    import subprocess
    import sys

    rel, meta = release
    dest = tmp_path / "dest"
    if replace:
        (dest / "v1").mkdir(parents=True)
        (dest / "v1" / "old").write_text("old")
    trace = tmp_path / "trace"
    argv = [sys.executable, "-c", _TRACED, str(rel.payload), str(rel.torrent), str(dest)]
    subprocess.run(
        ["strace", "-f", "-y", "-o", str(trace), "-e", "trace=syncfs,sync,rename,renameat,"
         "renameat2,fsync,sync_file_range", *argv],
        check=True,
    )  # fmt: skip
    calls = [
        line.split(None, 1)[1]
        for line in trace.read_text().splitlines()
        if re.match(r"\d+ +(syncfs|sync|rename\w*|fsync|sync_file_range)\(", line)
    ]
    # each file's write-back starts as soon as it is written, before syncfs waits
    early = [i for i, c in enumerate(calls) if c.startswith("sync_file_range")]
    entries = load_plan(rel.payload, meta).manifest.entries
    files = sum(e.type == "file" and e.size > 0 for e in entries)  # nothing to write back: empty
    assert len(early) >= files, calls
    staging = [i for i, c in enumerate(calls) if "roost-staging" in c and c.startswith("rename")]
    assert len(staging) == 1, calls
    flushes = [i for i, c in enumerate(calls) if c.startswith(("syncfs", "sync("))]
    dir_syncs = [i for i, c in enumerate(calls) if c.startswith("fsync") and f"<{dest}>" in c]
    assert flushes and max(early) < flushes[0] < staging[0], calls
    assert dir_syncs and dir_syncs[0] > staging[0], calls
    assert (dest / "v1" / "bin" / "run").exists() and not (dest / "v1" / "old").exists()


def test_without_syncfs_it_falls_back_to_sync(
    tmp_path: Path, release, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where libc has no syncfs (it cannot be removed from this one), the
    whole system is synced instead; the install is the same."""
    import roost.hashing

    rel, meta = release
    monkeypatch.setattr(roost.hashing, "_libc_syncfs", lambda: None)
    synced, real_sync = [], os.sync
    monkeypatch.setattr(os, "sync", lambda: synced.append(real_sync()))
    result = install_release(rel.payload, meta, tmp_path / "dest")
    assert synced == [None] and (result.path / "bin" / "run").exists()

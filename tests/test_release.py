"""roost.release: tags, piece sizes, packing, torrent metainfo, roost create."""

from __future__ import annotations

import hashlib
import json
import os
import random
import tarfile
from pathlib import Path

import libtorrent as lt
import pytest

from roost import bencode
from roost.cli import main
from roost.errors import ReleaseError, UsageError
from roost.hashing import PieceStream, copy_and_hash, hash_pieces
from roost.manifest import MANIFEST_NAME, link_escapes, parse_manifest
from roost.metainfo import read_torrent, validate_tag
from roost.release import DEFAULT_OUT_DIR, choose_piece_size, create_release, parse_size
from tests.release_kit import MTIME, make_tree

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
ANNOUNCE = ["http://127.0.0.1:8998/announce", "http://127.0.0.2:8998/announce"]


# ---------------------------------------------------------------- tags


@pytest.mark.parametrize(
    "tag", ["v42", "Deploy1", "release-2024.01.02", "a", "a" * 128, "v_1+build.7", "été"]
)
def test_good_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        ("", "empty"),
        ("a/b", "'/'"),
        ("/abs", "'/'"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("-rf", "starts with '-'"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\nb", "whitespace"),
        ("a\x00b", "control"),
        ("a\x7fb", "control"),
        (".", "starts with '.'"),
        (".v44.roost", "starts with '.'"),
        ("a" * 129, "longer than 128"),
    ],
)
def test_bad_tags(tag: str, reason: str) -> None:
    with pytest.raises(UsageError, match="bad tag") as info:
        validate_tag(tag)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------- piece size


@pytest.mark.parametrize(
    ("total", "piece"),
    [
        # 16 KiB floor: with the origin's feed, small pieces cut the relay
        # tail (bench/NOTES.md "One link-time"); still at most ~2000 pieces.
        (0, 16 * KiB),
        (1, 16 * KiB),
        (8 * MiB, 16 * KiB),
        (2000 * 16 * KiB, 16 * KiB),
        (2000 * 16 * KiB + 1, 32 * KiB),
        (16 * MiB, 16 * KiB),
        (32 * MiB, 32 * KiB),
        (2000 * 64 * KiB, 64 * KiB),
        (2000 * 64 * KiB + 1, 128 * KiB),
        (2000 * 256 * KiB, 256 * KiB),
        (2000 * 256 * KiB + 1, 512 * KiB),
        (256 * MiB, 256 * KiB),
        (1 * GiB, 1 * MiB),
        (4 * GiB, 4 * MiB),
        (30 * GiB, 16 * MiB),
        (1000 * GiB, 16 * MiB),
    ],
)
def test_piece_size_table(total: int, piece: int) -> None:
    assert choose_piece_size(total) == piece


@pytest.mark.parametrize(
    ("text", "value"),
    [("4M", 4 * MiB), ("256K", 256 * KiB), ("256KiB", 256 * KiB), ("1g", GiB), ("16384", 16384)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "4X", "-1M", "1.5M", "M"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="bad size"):
        parse_size(text)


@pytest.mark.parametrize("size", [1000, 8 * KiB, 3 * MiB, 256 * MiB])
def test_bad_piece_size_refused(tmp_path: Path, size: int) -> None:
    make_tree(tmp_path / "src")
    with pytest.raises(UsageError, match="bad piece size"):
        create_release(
            tmp_path / "src", "v1", tmp_path / "out", tar=True, announce=[], piece_size=size
        )
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------- packing


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src")


def test_tar_is_deterministic(tree: Path, tmp_path: Path) -> None:
    one = create_release(tree, "v1", tmp_path / "a", tar=True, announce=ANNOUNCE)
    two = create_release(tree, "v1", tmp_path / "b", tar=True, announce=ANNOUNCE)
    assert one.info_hash == two.info_hash
    assert one.payload.read_bytes() == two.payload.read_bytes()
    assert one.torrent.read_bytes() == two.torrent.read_bytes()
    assert one.payload == tmp_path / "a" / "v1.tar"
    assert one.torrent == tmp_path / "a" / "v1.torrent"
    assert one.total_size == one.payload.stat().st_size
    assert one.total_size % tarfile.RECORDSIZE == 0
    (tree / "bin" / "run").write_text("changed\n")
    three = create_release(tree, "v1", tmp_path / "c", tar=True, announce=ANNOUNCE)
    assert three.info_hash != one.info_hash


def test_tar_members_git_excluded_and_attributes_kept(tree: Path, tmp_path: Path) -> None:
    release = create_release(tree, "v1", tmp_path / "out", tar=True, announce=ANNOUNCE)
    with tarfile.open(release.payload) as archive:
        members = archive.getmembers()
        manifest_bytes = archive.extractfile(members[-1]).read()  # type: ignore[union-attr]
    names = [m.name for m in members]
    assert names[-1] == MANIFEST_NAME
    assert not [n for n in names if any(p.startswith(".git") for p in n.split("/"))]
    assert not [n for n in names if n.startswith(("/", "./"))]
    # depth first, siblings sorted: a directory precedes its contents
    assert names.index("lib") < names.index("lib/data.bin") < names.index("lib/deep/er/x.txt")
    assert names[:-1] == sorted(names[:-1], key=lambda n: n.split("/"))
    by_name = {m.name: m for m in members}
    assert {m.uid for m in members} == {0} and {m.gid for m in members} == {0}
    assert {m.uname for m in members} == {""} and {m.gname for m in members} == {""}
    assert by_name["bin/run"].mode == 0o755 and by_name["secret.txt"].mode == 0o600
    assert by_name["ro"].isdir() and by_name["ro"].mode == 0o555
    assert by_name["bin/run"].mtime == MTIME + len("run")
    assert by_name["run-link"].issym() and by_name["run-link"].linkname == "bin/run"
    assert by_name["lib/deep/up-link"].linkname == "../data.bin"
    assert ("long-" + "n" * 150 + ".txt") in by_name
    assert "unicodé ✓.txt" in by_name
    # the manifest lists every member and authenticates through x-roost
    manifest = parse_manifest(manifest_bytes)
    assert [e.path for e in manifest.entries] == names[:-1]
    files = {e.path: e for e in manifest.entries if e.type == "file"}
    data = (tree / "lib" / "data.bin").read_bytes()
    assert files["lib/data.bin"].sha256 == hashlib.sha256(data).hexdigest()
    assert files["lib/data.bin"].size == len(data)
    meta = read_torrent(release.torrent.read_bytes())
    assert meta.manifest_sha256 == hashlib.sha256(manifest_bytes).hexdigest()
    assert (meta.tag, meta.kind, meta.name) == ("v1", "tar", "v1.tar")


def test_gnu_tar_reads_the_payload(tree: Path, tmp_path: Path) -> None:
    import subprocess

    release = create_release(tree, "v1", tmp_path / "out", tar=True, announce=[])
    out = subprocess.run(
        ["tar", "-tf", str(release.payload)], capture_output=True, text=True, check=True
    )
    assert "lib/deep/er/x.txt" in out.stdout.splitlines()


def test_torrent_matches_libtorrent(tree: Path, tmp_path: Path) -> None:
    release = create_release(
        tree,
        "v1",
        tmp_path / "out",
        announce=ANNOUNCE,
        web_seeds=["https://origin.example/releases/"],
        private=True,
        piece_size=64 * KiB,
        tar=True,
    )
    data = release.torrent.read_bytes()
    info = lt.torrent_info(lt.bdecode(data))
    assert str(info.info_hash()) == release.info_hash
    assert info.name() == "v1.tar"
    assert info.total_size() == release.total_size
    assert info.piece_length() == 64 * KiB == release.piece_size
    assert info.num_pieces() == release.num_pieces
    params = lt.load_torrent_buffer(data)
    assert list(params.trackers) == ANNOUNCE
    assert list(params.url_seeds) == ["https://origin.example/releases/"]
    assert info.priv()
    top = bencode.decode(data)
    assert top[b"created by"].startswith(b"roost ")
    assert top[b"announce"] == ANNOUNCE[0].encode()
    assert top[b"announce-list"] == [[u.encode()] for u in ANNOUNCE]
    # piece hashes are those of the payload
    payload = release.payload.read_bytes()
    for index in range(release.num_pieces):
        piece = payload[index * 64 * KiB : (index + 1) * 64 * KiB]
        assert bytes(info.hash_for_piece(index)) == hashlib.sha1(piece).digest()


def test_single_file_release(tmp_path: Path) -> None:
    src = tmp_path / "build" / "app.bin"
    src.parent.mkdir()
    src.write_bytes(os.urandom(700_000))
    os.chmod(src, 0o750)
    release = create_release(src, "v7", tmp_path / "out", announce=ANNOUNCE[:1], is_file=True)
    assert release.kind == "file"
    assert release.payload == src.resolve()  # as is: no copy
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v7.torrent"]
    meta = read_torrent(release.torrent.read_bytes())
    assert (meta.name, meta.length, meta.kind, meta.file_mode) == (
        "app.bin",
        700_000,
        "file",
        0o750,
    )
    assert meta.manifest_sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    info = lt.torrent_info(lt.bdecode(release.torrent.read_bytes()))
    assert str(info.info_hash()) == release.info_hash == meta.info_hash
    assert info.num_pieces() == -(-700_000 // (16 * KiB))


@pytest.mark.parametrize("size", [1, 16 * KiB, 5 * MiB + 3])
def test_hash_pieces(tmp_path: Path, size: int) -> None:
    path = tmp_path / "f"
    data = os.urandom(size)
    path.write_bytes(data)
    pieces, whole = hash_pieces(path, 16 * KiB, with_sha256=True)
    expect = b"".join(
        hashlib.sha1(data[i : i + 16 * KiB]).digest() for i in range(0, size, 16 * KiB)
    )
    assert pieces == expect
    assert whole == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------ refusals


def _nothing_in(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        create_release(tmp_path / "nope", "v1", tmp_path / "out", tar=True, announce=[])
    assert not (tmp_path / "out").exists()


def test_out_dir_inside_source(tree: Path) -> None:
    with pytest.raises(UsageError, match="inside the source"):
        create_release(tree, "v1", tree / "releases", tar=True, announce=[])
    with pytest.raises(UsageError, match="inside the source"):
        create_release(tree, "v1", tree, tar=True, announce=[])
    assert not (tree / "releases").exists()


def test_source_special_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    for is_file in (False, True):
        with pytest.raises(UsageError, match="fifo"):
            create_release(
                tmp_path / "fifo", "v1", tmp_path / "out", tar=True, announce=[], is_file=is_file
            )
    assert not (tmp_path / "out").exists()


def test_file_needs_flag_and_content(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(UsageError, match="pass --file"):
        create_release(tmp_path / "f", "v1", tmp_path / "out", tar=True, announce=[])
    (tmp_path / "e").write_bytes(b"")
    with pytest.raises(UsageError, match="empty"):
        create_release(tmp_path / "e", "v1", tmp_path / "out", announce=[], is_file=True)
    with pytest.raises(UsageError, match="not a regular file"):
        create_release(tmp_path, "v1", tmp_path / "out", announce=[], is_file=True)
    os.rename(tmp_path / "f", tmp_path / "f.torrent")
    with pytest.raises(UsageError, match="overwrite the source"):
        create_release(tmp_path / "f.torrent", "f", tmp_path, announce=[], is_file=True)
    assert (tmp_path / "f.torrent").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("tab\there", "control character"),
        ("new\nline", "control character"),
        ("\x7fdel", "control character"),
        ("back\\slash", "backslash"),
        ("evil\u202etxt.exe", "writing-direction mark"),
        ("n" * 241, "longer than 240 bytes"),
    ],
)
def test_a_name_bittorrent_clients_would_change_is_refused_in_a_tree(
    tmp_path: Path, name: str, says: str
) -> None:
    """libtorrent stores such a file under another name, so the install did
    not find it after the whole download; refused at create, before any
    hashing, pointing at --tar, which carries any name (and ships it)."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / name).write_bytes(b"x")
    with pytest.raises(ReleaseError, match=says) as info:
        create_release(src, "v1", tmp_path / "out", announce=[])
    assert "--tar" in str(info.value) and "\n" not in str(info.value)
    assert create_release(src, "v2", tmp_path / "out", announce=[], tar=True).kind == "tar"
    (src / "sub" / name).rename(src / "sub" / ("n" * 240))  # the longest that stays
    assert create_release(src, "v3", tmp_path / "out", announce=[]).kind == "tree"


def test_empty_tree_is_refused(tmp_path: Path) -> None:
    """A directory with nothing in it (or only .git*) is no release: it is
    refused before anything is written, rather than shipped as an empty tar
    that would make every host's current release empty."""
    src = tmp_path / "src"
    (src / ".git").mkdir(parents=True)
    for tar in (False, True):
        with pytest.raises(ReleaseError, match="is empty"):
            create_release(src, "v1", tmp_path / "out", tar=tar, announce=[])
        out = tmp_path / "out"
        assert not out.exists() or not any(out.iterdir())
    (src / "d").mkdir()  # an empty directory is content: a tar release
    assert create_release(src, "v1", tmp_path / "out", announce=[]).kind == "tar"


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("out", "../elsewhere"),
        ("sub/out", "../../x"),
        ("abs", "/etc/passwd"),
        ("sub/up", "./../.././x"),
    ],
)
def test_symlink_leaving_the_tree_is_refused(tmp_path: Path, link: str, target: str) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    os.symlink(target, src / link)
    with pytest.raises(ReleaseError, match="leaves the release"):
        create_release(src, "v1", tmp_path / "out", tar=True, announce=[])
    assert _nothing_in(tmp_path / "out")


def test_special_file_inside_and_reserved_name(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    with pytest.raises(ReleaseError, match="special file"):
        create_release(src, "v1", tmp_path / "out", tar=True, announce=[])
    os.unlink(src / "pipe")
    (src / MANIFEST_NAME).write_text("{}")
    with pytest.raises(ReleaseError, match="reserves"):
        create_release(src, "v1", tmp_path / "out", tar=True, announce=[])
    assert _nothing_in(tmp_path / "out")  # no half-written temporaries


@pytest.mark.parametrize("url", ["ftp://x/announce", "127.0.0.1:8998", "http://", "http://a b/"])
def test_bad_urls_refused(tree: Path, tmp_path: Path, url: str) -> None:
    with pytest.raises(UsageError, match="URL"):
        create_release(tree, "v1", tmp_path / "out", tar=True, announce=[url])
    with pytest.raises(UsageError, match="web seed"):
        create_release(tree, "v1", tmp_path / "out", tar=True, announce=[], web_seeds=[url])


def test_link_escapes_follows_chains() -> None:
    links = {"d/deep": "..", "l1": "d/deep", "l2": "l1/..", "loop": "loop"}
    assert not link_escapes("d/deep", "..", links)
    assert not link_escapes("l1", "d/deep", links)
    assert link_escapes("l2", "l1/..", links)  # lexically "." but really the parent
    assert link_escapes("loop", "loop", links)
    assert not link_escapes("a/b", "../c/./d", {})
    assert link_escapes("a", "/abs", {})


def test_link_escapes_is_linear_on_nested_links() -> None:
    # each link names the previous one ten times: naive resolution is 10**40 steps
    links = {"a0": "."}
    for level in range(1, 41):
        links[f"a{level}"] = "/".join([f"a{level - 1}"] * 10)
    cache: dict[str, object] = {}
    assert not any(link_escapes(k, v, links, cache) for k, v in links.items())
    links["up"] = "a40/.."
    assert link_escapes("up", "a40/..", links, cache)


# ------------------------------------------------------- read_torrent


def _torrent(info: dict, **top: object) -> bytes:
    return bencode.encode({"info": info, **top})


GOOD_INFO = {"name": "x.bin", "length": 20000, "piece length": 16384, "pieces": b"a" * 40}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not bencode", "bencoding"),
        (bencode.encode([1, 2]), "no info"),
        (_torrent({**GOOD_INFO, "pieces": b"a" * 39}), "multiple of 20"),
        (_torrent({**GOOD_INFO, "pieces": b"a" * 60}), "piece count"),
        (_torrent({**GOOD_INFO, "piece length": 1000}), "16 KiB"),
        (_torrent({**GOOD_INFO, "length": 0, "pieces": b""}), "length"),
        (_torrent({**GOOD_INFO, "name": "../x"}), "plain file name"),
        (_torrent({**GOOD_INFO, "name": b"\xff"}), "UTF-8"),
        (_torrent({k: v for k, v in GOOD_INFO.items() if k != "length"}), "neither"),
        (_torrent({**GOOD_INFO, "x-roost": {"v": 2}}), "version 1"),
        (_torrent({**GOOD_INFO, "x-roost": {"v": 1, "tag": "a/b"}}), "bad tag"),
        (
            _torrent({**GOOD_INFO, "x-roost": {"v": 1, "tag": "t", "kind": "zip"}}),
            "kind",
        ),
        (
            _torrent(
                {
                    **GOOD_INFO,
                    "x-roost": {"v": 1, "tag": "t", "kind": "tar", "manifest-sha256": "ab"},
                }
            ),
            "64 hex",
        ),
    ],
)
def test_read_torrent_refuses(data: bytes, message: str) -> None:
    with pytest.raises(ReleaseError, match=message):
        read_torrent(data)


def test_read_foreign_torrents() -> None:
    meta = read_torrent(
        _torrent(GOOD_INFO, announce="http://t/announce", **{"url-list": "http://w/"})
    )
    assert not meta.is_roost and meta.tag is None
    assert meta.announce == ("http://t/announce",) and meta.web_seeds == ("http://w/",)
    assert meta.info_hash == hashlib.sha1(bencode.encode(GOOD_INFO)).hexdigest()
    multi = {
        "name": "dir",
        "piece length": 16384,
        "pieces": b"a" * 40,
        "files": [{"length": 10000, "path": ["a", "b.txt"]}, {"length": 10000, "path": ["c"]}],
    }
    meta = read_torrent(_torrent(multi))
    assert meta.length == 20000 and meta.files is not None
    assert [(f.path, f.length) for f in meta.files] == [("a/b.txt", 10000), ("c", 10000)]


# ----------------------------------------------------------------- CLI


def test_cli_create_and_json(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["create", str(tree), "--tag", "v3", "--out", str(out), "--tracker", ANNOUNCE[0]]
    assert main([*argv, "--piece-size", "64K"]) == 0
    text = capsys.readouterr().out
    meta = read_torrent((out / "v3.torrent").read_bytes())
    assert f"info-hash  {meta.info_hash}" in text and meta.piece_size == 64 * KiB
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["info_hash"] == read_torrent((out / "v3.torrent").read_bytes()).info_hash
    assert doc["kind"] == "tree" and doc["pieces"] * doc["piece_size"] >= doc["size"]
    assert doc["payload"] == str(tree.resolve())  # hashed in place
    assert main([*argv, "--json", "--tar"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "tar" and doc["payload"] == str(out / "v3.tar")
    assert Path("/tmp/roost") == DEFAULT_OUT_DIR


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tag", "../x"], "bad tag"),
        (["--tag", "v1", "--piece-size", "3M"], "bad piece size"),
        (["--tag", "v1", "--tracker", "nope"], "bad tracker URL"),
    ],
)
def test_cli_errors_are_one_line(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = main(["create", str(tree), "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("append", [False, True])  # O_APPEND: no copy_file_range
@pytest.mark.parametrize("read_back", [False, True])  # kernel copy, hashed read back
@pytest.mark.parametrize("size", [0, 1, 4 * MiB, 4 * MiB + 1, 9 * MiB + 5])  # one chunk, several
def test_copy_and_hash(tmp_path: Path, append: bool, read_back: bool, size: int) -> None:
    data = os.urandom(size + 3)
    (tmp_path / "src").write_bytes(data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT | (os.O_APPEND if append else 0))
    try:
        os.write(dst, b"head")
        digest = copy_and_hash(src, 3, size, dst, read_back=read_back)
        with pytest.raises(OSError, match="short read"):
            copy_and_hash(src, 10, len(data), dst)
    finally:
        os.close(src)
        os.close(dst)
    assert digest == hashlib.sha256(data[3:]).hexdigest()
    assert (tmp_path / "dst").read_bytes()[: size + 4] == b"head" + data[3:]


@pytest.mark.parametrize("piece", [16 * KiB, 64 * KiB, 1 * MiB])
def test_piece_stream_any_slicing(piece: int) -> None:
    """Pieces come out the same whatever slices the stream arrives in."""
    data = random.Random(piece).randbytes(3 * piece + 7 * KiB + 3)
    expect = b"".join(
        hashlib.sha1(data[i : i + piece]).digest() for i in range(0, len(data), piece)
    )
    rng = random.Random(1)
    for cuts in (
        [],
        [1],
        [piece - 1, piece],
        [piece, 2 * piece + 5],
        sorted(rng.sample(range(1, len(data)), 40)),
    ):
        stream = PieceStream(piece)
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            stream.update(data[a:b])
        assert stream.finish() == expect, cuts


def test_pieces_hashed_while_writing_match_a_second_pass(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-small").write_bytes(os.urandom(1000))
    (src / "b-big").write_bytes(os.urandom(9 * MiB + 5))  # copy_file_range in chunks
    (src / "c-small").write_bytes(os.urandom(70_000))
    for piece in (16 * KiB, 256 * KiB, 16 * MiB):
        release = create_release(
            src, "v1", tmp_path / "out", tar=True, announce=[], piece_size=piece
        )
        meta = read_torrent(release.torrent.read_bytes())
        assert meta.pieces == hash_pieces(release.payload, piece)[0]
        assert meta.num_pieces == -(-release.payload.stat().st_size // piece)


# ------------------------------------------------------- pinned outputs


def _fixed_tree(root: Path) -> Path:
    """The same bytes, names, modes and mtimes on every machine."""
    rng = random.Random(42)
    files = {
        "a.txt": b"hello\n",
        "bin/tool": rng.randbytes(70_000),
        "big/blob.bin": rng.randbytes(9 * MiB + 5),  # several chunks, unaligned
        "big/zero.bin": b"",
        "l" * 120 + "/" + "n" * 120: b"long names take a PAX header\n",
        "z-mid.bin": rng.randbytes(5 * MiB - 512),
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, 0o755 if rel == "bin/tool" else 0o644)
    os.symlink("../a.txt", root / "big" / "link")
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, 0o750)
        os.utime(path, (MTIME, MTIME + len(str(path.relative_to(root)))), follow_symlinks=False)
    os.chmod(root, 0o755)
    return root


# Computed with the packing and hashing code of ae20d70 (before the hot-path
# rewrite): they may get faster, their output bytes may not change.
PINNED = {
    "tar_sha256": "34b5d82a785514b7c64d3d6b9de923851014363786b2fd67433c253b4956d96a",
    "info_hash_64k": "daff8af8be8d2bc6d5d860a6bf21061771bfbdcc",  # the default until 16K
    "info_hash_16k": "efd26f25f49c7dd25d7c8fac2513ce14f6debe33",
    "file_info_hash": "bdcbfef91a55ce28af1ffc7bbfdf792dae18bd4a",
}


def test_outputs_are_pinned(tmp_path: Path) -> None:
    src = _fixed_tree(tmp_path / "src")
    one = create_release(
        src, "pin", tmp_path / "a", tar=True, announce=ANNOUNCE, piece_size=64 * KiB
    )
    two = create_release(src, "pin", tmp_path / "b", tar=True, announce=ANNOUNCE)
    assert two.piece_size == 16 * KiB  # the default for this size
    got = {
        "tar_sha256": hashlib.sha256(one.payload.read_bytes()).hexdigest(),
        "info_hash_64k": one.info_hash,
        "info_hash_16k": two.info_hash,
    }
    assert one.payload.read_bytes() == two.payload.read_bytes()
    blob = src / "big" / "blob.bin"
    single = create_release(
        blob, "pinf", tmp_path / "c", announce=ANNOUNCE, is_file=True, piece_size=64 * KiB
    )
    got["file_info_hash"] = single.info_hash
    assert got == PINNED


@pytest.mark.skipif(
    not Path("/dev/shm").is_dir(), reason="needs a tmpfs at /dev/shm (mount -t tmpfs t /dev/shm)"
)
def test_kernel_copy_and_buffered_copy_give_the_same_release(tmp_path: Path) -> None:
    """Same file system: big files go through copy_file_range and are read
    back from the tar; across file systems (tmpfs -> here) the kernel
    refuses and they go through the buffer. Same bytes either way."""
    import shutil
    import tempfile

    here = _fixed_tree(tmp_path / "src")
    there = Path(tempfile.mkdtemp(prefix="roost-test-", dir="/dev/shm"))
    try:
        shutil.copytree(here, there / "src", symlinks=True)
        os.chmod(there / "src", 0o755)
        for path in [there / "src", *sorted((there / "src").rglob("*"))]:
            st = os.lstat(here / path.relative_to(there / "src"))
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        across = create_release(
            there / "src", "pin", tmp_path / "across", tar=True, announce=ANNOUNCE
        )
    finally:
        shutil.rmtree(there)
    same = create_release(here, "pin", tmp_path / "same", tar=True, announce=ANNOUNCE)
    assert across.info_hash == same.info_hash == PINNED["info_hash_16k"]
    assert across.payload.read_bytes() == same.payload.read_bytes()

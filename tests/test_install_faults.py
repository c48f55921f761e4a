"""Install faults: setuid bits, paths past PATH_MAX, staging that must go,
symlinked destinations, the record beside a release and its hook once."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from roost.errors import DestinationError, HookError, VerifyError
from roost.extract import _remove_tree, check_destination, install_release
from roost.installed import run_hook_once
from roost.metainfo import read_torrent
from roost.release import create_release
from roost.verify import verify_installed
from tests.proc_kit import assert_all_gone
from tests.release_kit import build_tar, entry, member, snapshot


def _setid_tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "su").write_bytes(b"#!/bin/sh\necho root\n")
    (root / "bin" / "group").write_bytes(b"g\n")
    (root / "shared").mkdir()
    (root / "plain.txt").write_text("plain\n")
    os.chmod(root / "bin" / "su", 0o4755)
    os.chmod(root / "bin" / "group", 0o2755)
    os.chmod(root / "shared", 0o7777)
    os.chmod(root, 0o2755)
    return root


def _modes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode)
        for p in [root, *root.rglob("*")]
        if not p.is_symlink()
    }


def test_setid_bits_are_stripped_by_default_and_the_rerun_knows_the_tree(
    tmp_path: Path,
) -> None:
    src = _setid_tree(tmp_path / "src")
    rel = create_release(src, "v1", tmp_path / "out", announce=[])
    meta = read_torrent(rel.torrent.read_bytes())
    dest = tmp_path / "dest"
    result = install_release(rel.payload, meta, dest)
    modes = _modes(result.path)
    assert modes == {".": 0o755, "bin": 0o755, "bin/su": 0o755, "bin/group": 0o755,
                     "shared": 0o777, "plain.txt": 0o644}  # fmt: skip
    # The tree is no longer byte-for-byte the release's manifest, yet a re-run
    # knows it (the record names the tree as installed) before downloading,
    # and after: no "not empty".
    found = check_destination(meta, dest)
    assert found is not None and found.already_installed
    assert install_release(rel.payload, meta, dest).already_installed
    verify_installed(result.path, rel.payload, meta)  # stripped is still the release
    # A tree changed since is not taken for the release, and is named so.
    (result.path / "plain.txt").write_text("changed\n")
    with pytest.raises(DestinationError) as err:
        check_destination(meta, dest)
    assert str(err.value) == (
        f"destination {result.path} holds this release, changed since it was installed"
        " (clean it, or pass --clean to replace it)"
    )


def test_another_build_under_an_installed_tag_is_named_so(tmp_path: Path) -> None:
    """A rebuild deployed again as v1: 'is not empty' said nothing of why."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "app").write_text("one\n")
    first = create_release(src, "v1", tmp_path / "out1", announce=[])
    install_release(first.payload, read_torrent(first.torrent.read_bytes()), tmp_path / "dest")
    (src / "app").write_text("two\n")
    again = create_release(src, "v1", tmp_path / "out2", announce=[])
    meta = read_torrent(again.torrent.read_bytes())
    said = (
        f"destination {tmp_path / 'dest' / 'v1'} holds another release of that name, installed"
        " by roost: deploy this build under a new tag, or pass --clean to replace it"
    )
    with pytest.raises(DestinationError) as before_download:
        check_destination(meta, tmp_path / "dest")
    with pytest.raises(DestinationError) as at_install:
        install_release(again.payload, meta, tmp_path / "dest")
    assert str(before_download.value) == str(at_install.value) == said
    assert (tmp_path / "dest" / "v1" / "app").read_text() == "one\n"  # nothing lost
    assert install_release(again.payload, meta, tmp_path / "dest", clean=True).path.is_dir()
    assert (tmp_path / "dest" / "v1" / "app").read_text() == "two\n"


def test_keep_setid_installs_the_modes_as_given(tmp_path: Path) -> None:
    src = _setid_tree(tmp_path / "src")
    rel = create_release(src, "v1", tmp_path / "out", announce=[])
    meta = read_torrent(rel.torrent.read_bytes())
    result = install_release(rel.payload, meta, tmp_path / "dest", keep_setid=True)
    assert _modes(result.path) == _modes(src)
    assert _modes(result.path)["shared"] == 0o7777
    found = check_destination(meta, tmp_path / "dest", keep_setid=True)
    assert found is not None and found.already_installed


def test_setid_file_release_is_stripped(tmp_path: Path) -> None:
    app = tmp_path / "build" / "tool"
    app.parent.mkdir()
    app.write_bytes(b"\x7fELF" + os.urandom(4096))
    os.chmod(app, 0o6755)
    rel = create_release(app, "f1", tmp_path / "out", announce=[], is_file=True)
    meta = read_torrent(rel.torrent.read_bytes())
    dest = tmp_path / "dest"
    result = install_release(rel.payload, meta, dest)
    assert stat.S_IMODE((dest / "f1" / "tool").stat().st_mode) == 0o755
    assert check_destination(meta, dest) is not None
    assert install_release(rel.payload, meta, dest).already_installed
    assert result.path == dest / "f1"


def _deep_members(depth: int, part: str) -> tuple[list, list]:
    members, entries, name = [], [], ""
    for _ in range(depth):
        name = f"{name}/{part}" if name else part
        members.append(member(name, b"5", mode=0o755))
        entries.append(entry(name, "dir", 0o755))
    return members, entries


def _install_fails(tmp_path: Path, members: list, entries: list, match: str) -> Path:
    """Install a hand-made tar that must fail with one line matching ``match``;
    the destination it was given."""
    (tmp_path / "pay").mkdir()
    meta = build_tar(tmp_path / "pay" / "r.tar", members, entries)
    dest = tmp_path / "dest"
    with pytest.raises(DestinationError, match=match) as info:
        install_release(tmp_path / "pay" / "r.tar", meta, dest)
    assert "\n" not in str(info.value)
    return dest


def test_a_path_longer_than_path_max_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    members, entries = _deep_members(24, "d" * 200)  # 24 * 201 characters
    dest = _install_fails(tmp_path, members, entries, "longer than PATH_MAX")
    assert not dest.exists() or list(dest.iterdir()) == []


def test_a_failed_install_removes_its_staging_tree(tmp_path: Path) -> None:
    # A name past NAME_MAX: the kernel refuses it mid-install, after the
    # staging tree above it was written.
    members, entries = _deep_members(10, "d" * 200)
    long_name = members[-1].name + "/" + "x" * 300
    members.append((member(long_name), b"data"))
    entries.append(entry(long_name, data=b"data"))
    dest = _install_fails(tmp_path, members, entries, r"File name too long \(d{38}\.\.\.x{38}\)")
    assert list(dest.iterdir()) == []


def test_remove_tree_removes_a_tree_deeper_than_path_max(tmp_path: Path) -> None:
    """Deeper than PATH_MAX, deeper than the recursion limit, with read-only
    directories and files on the way: all gone, one descriptor at a time."""
    top = tmp_path / "staging"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(2500):  # 2500 * 2 characters > PATH_MAX; > recursion limit
            os.mkdir("d", dir_fd=fd)
            if level % 500 == 0:
                file_fd = os.open("f", os.O_WRONLY | os.O_CREAT, 0o400, dir_fd=fd)
                os.write(file_fd, b"x" * 1000)
                os.close(file_fd)
                os.mkdir("side", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            if level % 700 == 0:
                os.fchmod(fd, 0o500)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    _remove_tree(top)
    assert list(tmp_path.iterdir()) == []


def test_a_symlinked_empty_destination_is_installed_into(tmp_path: Path) -> None:
    src = _setid_tree(tmp_path / "src")
    rel = create_release(src, "v1", tmp_path / "out", announce=[])
    meta = read_torrent(rel.torrent.read_bytes())
    real = tmp_path / "real" / "empty"
    real.mkdir(parents=True)
    link = tmp_path / "dest" / "host-1"
    link.parent.mkdir()
    link.symlink_to(real)
    assert check_destination(meta, link, tag_directory=False) is None
    result = install_release(rel.payload, meta, link, tag_directory=False, keep_setid=True)
    assert result.path == real and link.is_symlink() and os.readlink(link) == str(real)
    assert snapshot(real) == snapshot(src)
    assert sorted(p.name for p in real.parent.iterdir()) == [".empty.roost", "empty"]
    again = install_release(rel.payload, meta, link, tag_directory=False, keep_setid=True)
    assert again.already_installed and again.path == real


def test_a_symlink_where_a_file_release_goes_is_named_as_such(tmp_path: Path) -> None:
    app = tmp_path / "build" / "tool"
    app.parent.mkdir()
    app.write_bytes(b"tool\n")
    rel = create_release(app, "f1", tmp_path / "out", announce=[], is_file=True)
    meta = read_torrent(rel.torrent.read_bytes())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tool").symlink_to("/opt/tools/tool")
    with pytest.raises(DestinationError, match=r"tool is a symlink \(to /opt/tools/tool\)"):
        check_destination(meta, bin_dir, tag_directory=False)
    assert os.readlink(bin_dir / "tool") == "/opt/tools/tool"


def test_a_dangling_symlink_destination_is_refused_with_its_reason(tmp_path: Path) -> None:
    src = _setid_tree(tmp_path / "src")
    rel = create_release(src, "v1", tmp_path / "out", announce=[])
    meta = read_torrent(rel.torrent.read_bytes())
    link = tmp_path / "host-1"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(DestinationError, match=r"is a symlink to .*nowhere, which is not a dir"):
        check_destination(meta, link, tag_directory=False)
    assert not (tmp_path / "nowhere").exists()


def test_hook_runs_once_even_when_two_runs_race(tmp_path: Path) -> None:
    target = tmp_path / "v1"
    target.mkdir()
    log = tmp_path / "hook.log"
    hook = f"echo run >> {log}; sleep 0.3"
    ran: list[bool] = []

    def one() -> None:
        ran.append(run_hook_once(hook, tag="v1", path=target, info_hash="0" * 40))

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert log.read_text() == "run\n" and sorted(ran) == [False, False, True]
    assert [p.name[:5] for p in (tmp_path / ".v1.roost").iterdir()] == ["hook-"]


def test_a_peer_killed_while_its_hook_runs_does_not_make_it_run_twice(tmp_path: Path) -> None:
    """The peer dies (SIGKILL) in the middle of the hook; the hook finishes
    and records itself; the re-run waits for it, then does not run it."""
    target = tmp_path / "v1"
    target.mkdir()
    log = tmp_path / "hook.log"
    hook = f"sleep 0.5; echo chatty >&2; echo run >> {log}"
    code = (
        "import sys; from pathlib import Path; from roost.installed import run_hook_once; "
        f"run_hook_once(sys.argv[1], tag='v1', path=Path({str(target)!r}), info_hash='0' * 40)"
    )
    peer = subprocess.Popen([sys.executable, "-c", code, hook])
    deadline = time.monotonic() + 10
    while not (tmp_path / ".v1.roost").exists():
        assert time.monotonic() < deadline and peer.poll() is None
        time.sleep(0.01)
    time.sleep(0.1)  # the hook is running
    peer.kill()
    peer.wait()
    assert not log.exists()
    assert run_hook_once(hook, tag="v1", path=target, info_hash="0" * 40) is False
    assert log.read_text() == "run\n"


def test_a_daemon_started_by_a_failed_hook_does_not_hold_the_next_run(tmp_path: Path) -> None:
    target = tmp_path / "v1"
    target.mkdir()
    pid_file = tmp_path / "daemon.pid"
    hook = f"sleep 20 & echo $! > {pid_file}; exit 3"
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(HookError, match="exited with status 3"):
                run_hook_once(hook, tag="v1", path=target, info_hash="0" * 40)
            assert time.monotonic() - started < 5  # not waiting for the daemon
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_hanging_hook_is_killed_at_its_time_limit_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hook that never ends fails its host after --hook-timeout, with the
    hook and the time named, and nothing it started keeps running; the hook
    is not recorded as done, so a re-run tries it again."""
    import json

    from roost.cli import main

    src = tmp_path / "build"
    src.mkdir()
    (src / "f").write_text("x\n")
    pids = tmp_path / "pids"
    first = tmp_path / "first"
    hook = f"test -e {first} || {{ touch {first}; sleep 60 & echo $! >> {pids}; wait; }}; "
    hook += f"echo ran >> {tmp_path / 'ran'}"
    argv = ["deploy", str(src), "--tag", "v1", "--local", "1", "--dest", str(tmp_path / "d")]
    started = time.monotonic()
    assert main([*argv, "--hook", hook, "--hook-timeout", "1", "--linger", "0", "--json"]) == 1
    assert time.monotonic() - started < 60
    host = json.loads(capsys.readouterr().out)["hosts"][0]
    assert host["error"] == f"hook {hook!r} timed out after 1s"
    assert_all_gone(pids, "the hook")  # its whole process group was killed
    assert not (tmp_path / "ran").exists()
    # Not recorded as done: the re-run runs the same hook again (it ends this time).
    assert main([*argv, "--hook", hook, "--linger", "0"]) == 0
    assert (tmp_path / "ran").read_text() == "ran\n"


def test_a_linked_file_is_not_read_again_where_the_download_hashed_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """roost.peer.hashahead's digest stands for the read only when it is of
    this very file, unchanged (inode, size, mtime), and is the manifest's."""
    import hashlib

    import roost.extract

    app = tmp_path / "dl" / "app.bin"
    app.parent.mkdir()
    app.write_bytes(os.urandom(1 << 20))
    rel = create_release(app, "f1", tmp_path / "out", announce=[], is_file=True)
    meta = read_torrent(rel.torrent.read_bytes())
    st = app.stat()
    right = (hashlib.sha256(app.read_bytes()).hexdigest(), st.st_ino, st.st_size, st.st_mtime_ns)
    reads: list[int] = []
    real = roost.extract.sha256_range

    def counted(fd: int, offset: int, size: int) -> str:
        reads.append(size)
        return real(fd, offset, size)

    monkeypatch.setattr(roost.extract, "sha256_range", counted)
    cases = [
        ("unchanged", right, 0),
        ("other mtime", (*right[:3], right[3] + 1), 1),
        ("other inode", (right[0], right[1] + 1, *right[2:]), 1),
        ("not the manifest's digest", ("0" * 64, *right[1:]), 1),
    ]
    for i, (why, known, expected_reads) in enumerate(cases):
        reads.clear()
        dest = tmp_path / f"dest{i}"
        install_release(app, meta, dest, link=True, hashed={"app.bin": known})
        assert len(reads) == expected_reads, why
        assert (dest / "f1" / "app.bin").stat().st_ino == st.st_ino
        os.utime(app, ns=(st.st_atime_ns, st.st_mtime_ns))  # as the download left it
    # a download changed after it was hashed is caught: the stamp no longer fits
    with open(app, "r+b") as f:
        f.write(b"\0" * 16)
    with pytest.raises(VerifyError, match="sha256 differs"):
        install_release(app, meta, tmp_path / "dest-bad", link=True, hashed={"app.bin": right})

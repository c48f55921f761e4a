"""roost.checks on its own: the stall verdict fed numbers, the room check on
real directories."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from roost.checks import StallWatch, check_installable, check_room
from roost.errors import DestinationError, ReleaseError
from roost.layout import TorrentFile
from roost.metainfo import TorrentMeta


def meta(length: int, *, files: tuple[tuple[str, int], ...] | None = None) -> TorrentMeta:
    return TorrentMeta("0" * 40, "app.tar", length, 16384, -(-length // 16384), files=files)


def test_stall_needs_a_peer_seen_pieces_held_by_nobody_and_no_bytes_for_the_window() -> None:
    watch = StallWatch(5)
    # No peer yet (a tracker slow to answer): never a verdict.
    for t in range(20):
        assert watch.progressed(t, 0, 0)
    assert watch.progressed(20, 0, 1)  # a peer now: the window starts
    assert watch.verdict(20, 3, 10) is None
    assert not watch.progressed(24, 0, 0)
    assert watch.verdict(24, 3, 10) is None  # 4 s of the 5
    assert not watch.progressed(25.5, 0, 0)
    verdict = watch.verdict(25.5, 3, 10)
    assert verdict == (
        "swarm cannot finish: 3 of 10 pieces are held by nobody (nothing arrived for 5s)"
    )
    # Bytes arriving (a web seed) or every missing piece held by someone: no verdict.
    assert watch.progressed(26, 100, 0)
    assert not watch.progressed(40, 100, 0)
    assert watch.verdict(40, 0, 10) is None
    assert not watch.progressed(44, 100, 0)
    assert watch.verdict(44, 2, 10) is None  # the window starts again at 40


def test_stall_window_zero_never_gives_up() -> None:
    watch = StallWatch(0)
    watch.progressed(0, 0, 1)
    assert not watch.progressed(1000, 0, 1)
    assert watch.verdict(1000, 5, 5) is None


def test_multi_file_torrents_are_installable_unless_a_path_is_unsafe() -> None:
    check_installable(meta(10))
    check_installable(meta(10, files=(TorrentFile("a", 5), TorrentFile("b/c", 5))))
    with pytest.raises(ReleaseError, match=r"its file '../c' contains a '..' component"):
        check_installable(meta(10, files=(TorrentFile("a", 5), TorrentFile("../c", 5))))


def test_room_counts_what_is_left_to_download_and_the_installed_copy(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    temp, dest = tmp_path / "temp" / ("0" * 40), tmp_path / "dest"
    check_room(meta(free // 4), temp, dest, tag_directory=True)
    # One device: the download and the installed copy both need room.
    with pytest.raises(DestinationError, match=r"not enough space on the device of "):
        check_room(meta(free // 2 + 16384 * 64), temp, dest, tag_directory=True)
    assert not temp.exists() and not dest.exists()  # nothing made
    assert os.listdir(tmp_path) == []  # the probes are gone
    # An install that hard-links the download takes no second copy's room.
    check_room(meta(free // 2 + 16384 * 64), temp, dest, tag_directory=True, link=True)
    tar = dataclasses.replace(meta(free // 2 + 16384 * 64), kind="tar")
    with pytest.raises(DestinationError, match=r"not enough space on the device of "):
        check_room(tar, temp, dest, tag_directory=True, link=True)


def test_room_refuses_a_destination_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DestinationError, match=r"is not a directory"):
        check_room(meta(10), tmp_path / "t", tmp_path / "file" / "d", tag_directory=True)

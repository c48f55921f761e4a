"""Activation and rollback on real installed releases (roost.activation and
the roost releases / activate / rollback commands on a local fleet)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from roost import activation
from roost.cli import main
from roost.errors import DestinationError
from roost.extract import install_release
from roost.metainfo import read_torrent_file
from roost.release import create_release


def _install(tmp_path: Path, dest: Path, tag: str, text: str) -> Path:
    src = tmp_path / f"src-{tag}"
    src.mkdir(exist_ok=True)
    (src / "version").write_text(text)
    release = create_release(src, tag, tmp_path / "out", announce=[])
    meta = read_torrent_file(release.torrent)
    return Path(install_release(release.payload, meta, dest / activation.RELEASES).path)


def test_activate_switch_history_and_rollback(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    for tag in ("v1", "v2", "v3"):
        _install(tmp_path, dest, tag, f"{tag}\n")
    assert activation.current(dest) is None and activation.previous(dest) is None
    first = activation.activate(dest, "v1")
    assert first == activation.Switch("v1", None, changed=True)
    assert activation.activate(dest, "v1").changed is False
    assert activation.activate(dest, "v2").previous == "v1"
    assert (dest / "current" / "version").read_text() == "v2\n"
    assert os.readlink(dest / "current") == "releases/v2"
    assert activation.releases(dest) == activation.Releases(
        str(dest), "v2", "v1", ("v1", "v2", "v3")
    )
    back = activation.rollback(dest)
    assert back == activation.Switch("v1", "v2", changed=True)
    assert (dest / "current" / "version").read_text() == "v1\n"
    # Rolling back again returns to v2: the previous of v1 is now v2.
    assert activation.rollback(dest).tag == "v2"
    assert activation.rollback(dest, "v3").tag == "v3"
    assert not (dest / "current.tmp").exists()


def test_refusals_leave_the_current_release(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    _install(tmp_path, dest, "v1", "one\n")
    with pytest.raises(DestinationError, match="no previous release to roll back to"):
        activation.rollback(dest)
    activation.activate(dest, "v1")
    for bad in ("v9", "..", "v1/../v1", ""):
        with pytest.raises(DestinationError, match="is not installed"):
            activation.activate(dest, bad)
    # a directory roost did not install (made by hand, or an install cut short)
    (dest / activation.RELEASES / "v7").mkdir()
    with pytest.raises(DestinationError, match="is not a release roost installed"):
        activation.activate(dest, "v7")
    assert activation.current(dest) == "v1"
    # A previous release that was removed meanwhile is not a rollback target.
    _install(tmp_path, dest, "v2", "two\n")
    activation.activate(dest, "v2")
    activation.remove_release(dest, "v1")
    with pytest.raises(DestinationError, match="no previous release"):
        activation.rollback(dest)
    assert activation.current(dest) == "v2"
    # DEST/current that is not roost's symlink is never replaced.
    other = tmp_path / "other"
    _install(tmp_path, other, "v1", "one\n")
    (other / "current").mkdir()
    with pytest.raises(DestinationError, match="is not a symlink"):
        activation.activate(other, "v1")
    (other / "current").rmdir()
    (other / activation.HISTORY).write_text("[1, 2")
    with pytest.raises(DestinationError, match="not an activation history"):
        activation.previous(other)


def test_prune_keeps_current_and_previous(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    for tag in ("v1", "v2", "v3", "v4", "v5"):
        _install(tmp_path, dest, tag, f"{tag}\n")
    activation.activate(dest, "v1")
    activation.activate(dest, "v2")  # current v2, previous v1: both are oldest
    removed = activation.prune(dest, keep=3)
    assert sorted(removed) == ["v3", "v4"]
    assert activation.installed(dest) == ["v1", "v2", "v5"]
    assert activation.prune(dest, keep=0) == ["v5"]
    assert activation.installed(dest) == ["v1", "v2"]
    # Nothing half-removed is left, and the pruned releases' records went too.
    assert sorted(p.name for p in (dest / "releases").iterdir()) == [
        ".v1.roost",
        ".v2.roost",
        "v1",
        "v2",
    ]


def test_cli_on_a_local_fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "fleet"
    for n in (1, 2):
        host = dest / f"host-{n}"
        _install(tmp_path, host, "v1", "one\n")
        activation.activate(host, "v1")
    _install(tmp_path, dest / "host-1", "v2", "two\n")  # host-2 never got v2
    assert main(["activate", "v2", "--dest", str(dest), "--local", "2"]) == 1
    out = capsys.readouterr().out
    assert "host-1  v1 -> v2" in out
    assert "host-2  FAILED release v2 is not installed in" in out
    assert "1 of 2 hosts ok, 1 failed" in out
    assert activation.current(dest / "host-2") == "v1"  # never half-switched
    assert main(["releases", "--dest", str(dest), "--local", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(h["host"], h["current"], h["installed"]) for h in doc["hosts"]] == [
        ("host-1", "v2", ["v1", "v2"]),
        ("host-2", "v1", ["v1"]),
    ]
    assert main(["rollback", "--dest", str(dest / "host-1")]) == 0
    assert capsys.readouterr().out.strip() == "v2 -> v1"
    assert (dest / "host-1" / "current" / "version").read_text() == "one\n"
    assert main(["rollback", "--dest", str(dest / "host-2"), "--to", "v1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False
    # --json answers a refusal on stdout too (the fleet's rollout reads it
    # there), besides the one line on stderr
    assert main(["activate", "v2", "--dest", str(dest / "host-2"), "--json"]) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["ok"] is False and doc["error"].startswith("release v2 is not installed in")
    assert captured.err == f"roost: error: {doc['error']}\n"


def test_activate_with_keep_prunes(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    for tag in ("v1", "v2", "v3", "v4"):
        _install(tmp_path, dest, tag, f"{tag}\n")
    activation.activate(dest, "v3")
    activation.activate(dest, "v4", keep=2)  # current v4 and previous v3
    assert activation.installed(dest) == ["v3", "v4"]


def test_rollback_rejecting_undoes_the_activation(tmp_path: Path) -> None:
    """``rollback(reject=T)``, a rollout's ``--rollback-on-fail``: T's activation
    is undone, so previous is what it was before T, and T is never picked."""
    dest = tmp_path / "dest"
    for tag in ("v1", "v2", "v3", "v4"):
        _install(tmp_path, dest, tag, f"{tag}\n")
    for tag in ("v1", "v3", "v2", "v3"):  # v3 current once before, and good then
        activation.activate(dest, tag)
    back = activation.rollback(dest, "v2", reject="v3")
    assert back == activation.Switch("v2", "v3", changed=True)
    assert (dest / "current" / "version").read_text() == "v2\n"
    # Not v3 from its earlier, good, activation: its latest entry is the rejection.
    assert activation.releases(dest).previous == "v1"
    doc = json.loads((dest / activation.HISTORY).read_text())
    assert [(e["tag"], e.get("rejected", False)) for e in doc["activated"]] == [
        ("v1", False),
        ("v3", False),
        ("v2", False),
        ("v3", True),  # marked where it was, nothing appended
    ]
    assert activation.rollback(dest).tag == "v1"
    assert activation.rollback(dest).tag == "v2"  # a plain rollback is an activation
    # Rejecting again switches nothing; rolling back to the rejected release is refused.
    assert activation.rollback(dest, "v2", reject="v3").changed is False
    with pytest.raises(DestinationError, match="cannot roll back to v3, the release rejected"):
        activation.rollback(dest, "v3", reject="v3")
    assert activation.previous(dest) == "v1"
    # Activated on purpose, a rejected release is an ordinary one again.
    activation.activate(dest, "v3")
    assert activation.rollback(dest).tag == "v2"
    assert activation.previous(dest) == "v3"
    # A history that does not end with the rejected release (cut short, or
    # another switch since): the rejection and the switch back are appended.
    activation.activate(dest, "v4")
    (dest / activation.HISTORY).unlink()
    activation.rollback(dest, "v2", reject="v4")
    doc = json.loads((dest / activation.HISTORY).read_text())
    assert [(e["tag"], e.get("rejected", False)) for e in doc["activated"]] == [
        ("v4", True),
        ("v2", False),
    ]
    assert activation.current(dest) == "v2" and activation.previous(dest) is None

"""Rollouts on a local fleet of real installed releases: waves, a health gate
that halts at wave 2 and rolls wave 1 back, and a hanging check bounded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from roost import activation
from roost.cli import main
from roost.errors import UsageError
from roost.extract import install_release
from roost.metainfo import read_torrent_file
from roost.release import create_release
from roost.rollout import parse_waves, plan_waves
from tests.proc_kit import assert_all_gone

HOSTS = [f"h{i}" for i in range(1, 11)]


@pytest.mark.parametrize(
    ("text", "sizes"),
    [
        ("1,5%,25%,100%", [1, 2, 7]),  # 5% of 10 is 1 host: no new host, wave dropped
        ("100%", [10]),
        ("2,2,50%", [2, 3, 5]),  # a wave that adds nobody is dropped; the rest follow
        ("30", [10]),
        ("1", [1, 9]),  # the last wave always ends with every host
    ],
)
def test_plan_waves(text: str, sizes: list[int]) -> None:
    waves = plan_waves(parse_waves(text), HOSTS)
    assert [len(w) for w in waves] == sizes
    assert [h for w in waves for h in w] == HOSTS


@pytest.mark.parametrize(
    "text", ["", "0", "1,,2", "150%", "-1", "1.5", "ten", "5%%", "50%,20%", "3,1,100%"]
)
def test_bad_waves(text: str) -> None:
    with pytest.raises(UsageError, match="--waves"):
        parse_waves(text)


def _fleet(tmp_path: Path, n: int, tags: tuple[str, ...] = ("v1", "v2")) -> Path:
    """n local hosts with ``tags`` installed and all but the last activated in
    turn: by default v1 current and v2 installed."""
    root = tmp_path / "fleet"
    for tag in tags:
        src = tmp_path / f"src-{tag}"
        src.mkdir()
        (src / "version").write_text(f"{tag}\n")
        release = create_release(src, tag, tmp_path / "out", announce=[])
        meta = read_torrent_file(release.torrent)
        for i in range(1, n + 1):
            install_release(release.payload, meta, root / f"host-{i}" / activation.RELEASES)
    for i in range(1, n + 1):
        for tag in tags[:-1]:
            activation.activate(root / f"host-{i}", tag)
    return root


def test_health_failure_halts_at_wave_2_and_rolls_wave_1_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _fleet(tmp_path, 6)
    (root / "host-3" / "SICK").touch()
    log = tmp_path / "health.log"
    # Runs in DEST/releases/TAG; ../../SICK marks a host whose check fails.
    health = f'echo "$ROOST_TAG $ROOST_PREVIOUS $PWD" >> {log}; test ! -e ../../SICK'
    argv = ["rollout", "v2", "--dest", str(root), "--local", "6", "--waves", "1,50%,100%"]
    argv += ["--health", health, "--rollback-on-fail", "--json"]
    assert main(argv) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["halted_at"] == 2
    assert doc["waves"] == [["host-1"], ["host-2", "host-3"], ["host-4", "host-5", "host-6"]]
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert hosts["host-1"]["wave"] == 1 and hosts["host-1"]["health"] == "ok"
    assert hosts["host-3"]["health"] == "exited with status 1"
    assert all(hosts[f"host-{i}"]["rolled_back"] for i in (1, 2, 3))
    assert all(hosts[f"host-{i}"]["wave"] is None for i in (4, 5, 6))
    for i in range(1, 7):  # every host runs v1 again, or never left it
        assert activation.current(root / f"host-{i}") == "v1"
        assert (root / f"host-{i}" / "current" / "version").read_text() == "v1\n"
    lines = log.read_text().splitlines()
    assert len(lines) == 3 and all(line.startswith("v2 v1 ") for line in lines)
    assert lines[0].endswith("/host-1/releases/v2")


def test_rollback_on_fail_leaves_no_trace_for_a_later_rollback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """v2 current after v1, v3 rolled out and sent back: every host's previous
    is v1 again (not v3, which failed), so ``roost rollback`` takes the whole
    fleet to v1; a second plain rollback is a switch like any other."""
    root = _fleet(tmp_path, 4, ("v1", "v2", "v3"))
    (root / "host-2" / "SICK").touch()
    argv = ["rollout", "v3", "--dest", str(root), "--local", "4", "--waves", "1,50%,100%"]
    argv += ["--health", "test ! -e ../../SICK", "--rollback-on-fail", "--json"]
    assert main(argv) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [h["rolled_back"] for h in doc["hosts"]] == [True, True, False, False]
    releases = ["releases", "--dest", str(root), "--local", "4", "--json"]
    assert main(releases) == 0
    rows = json.loads(capsys.readouterr().out)["hosts"]
    assert [(r["current"], r["previous"]) for r in rows] == [("v2", "v1")] * 4
    rollback = ["rollback", "--dest", str(root), "--local", "4"]
    assert main(rollback) == 0
    out = capsys.readouterr().out
    assert [f"host-{i}  v2 -> v1" in out for i in range(1, 5)] == [True] * 4, out
    assert main(rollback) == 0  # back to the release that was current before: v2
    out = capsys.readouterr().out
    assert [f"host-{i}  v1 -> v2" in out for i in range(1, 5)] == [True] * 4, out
    # The rejected release is still installed, and activating it on purpose
    # makes it an ordinary release again.
    assert main(["activate", "v3", "--dest", str(root / "host-1")]) == 0
    assert main(["rollback", "--dest", str(root / "host-1")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "v3 -> v2"
    assert activation.previous(root / "host-1") == "v3"


def test_rollback_on_fail_of_a_first_activation_leaves_none_current(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No release was current before the rollout: sent back, none is current
    again (the failing release stayed current, 'no previous release'), and
    the line says the health check's reason."""
    root = _fleet(tmp_path, 2, ("v1",))  # v1 installed, never activated
    argv = ["rollout", "v1", "--dest", str(root), "--local", "2", "--waves", "1,100%"]
    assert main([*argv, "--health", "echo sick >&2; exit 3", "--rollback-on-fail"]) == 1
    out = capsys.readouterr().out
    assert "host-1  wave 1  nothing -> v1  health FAILED exited with status 3: sick" in out
    assert "rolled back to none current" in out, out
    for i in (1, 2):
        assert activation.current(root / f"host-{i}") is None
        assert not (root / f"host-{i}" / "current").is_symlink()
    assert activation.previous(root / "host-1") is None  # v1 is no previous release either
    # a plain rollback now has nothing to go back to, and says so
    assert main(["rollback", "--dest", str(root / "host-1")]) == 1
    assert "no previous release" in capsys.readouterr().err
    # over SSH the same undo is ``roost rollback --reject TAG`` with no --to
    assert main(["activate", "v1", "--dest", str(root / "host-2")]) == 0
    assert main(["rollback", "--reject", "v1", "--dest", str(root / "host-2")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "v1 -> nothing (none current)"
    assert activation.current(root / "host-2") is None


def test_rollout_that_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _fleet(tmp_path, 4)
    argv = ["rollout", "v2", "--dest", str(root), "--local", "4", "--waves", "1,50%,100%"]
    assert main([*argv, "--health", "test -x /bin/sh"]) == 0
    out = capsys.readouterr().out
    assert "wave 1: 1 host, 0 failed" in out
    assert "host-4  wave 3  v1 -> v2  health ok" in out
    assert "rolled out v2 in 3 waves" in out
    assert all(activation.current(root / f"host-{i}") == "v2" for i in range(1, 5))
    # Without --rollback-on-fail, a halted rollout leaves what it switched.
    (root / "host-2" / "SICK").touch()
    assert main(["rollback", "--dest", str(root), "--local", "4"]) == 0
    capsys.readouterr()
    assert main([*argv, "--health", "test ! -e ../../SICK", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["halted_at"] == 2
    assert [activation.current(root / f"host-{i}") for i in range(1, 5)] == [
        "v2",
        "v2",
        "v1",
        "v1",
    ]


def test_hanging_health_check_is_bounded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _fleet(tmp_path, 2)
    pids = tmp_path / "pids"
    health = f"sleep 60 & echo $! >> {pids}; wait"
    argv = ["rollout", "v2", "--dest", str(root), "--local", "2", "--health", health]
    started = time.monotonic()
    assert main([*argv, "--health-timeout", "1", "--max-fail-percent", "50", "--json"]) == 1
    assert time.monotonic() - started < 20
    doc = json.loads(capsys.readouterr().out)
    assert {h["health"] for h in doc["hosts"]} == {"timed out after 1s"}
    assert_all_gone(pids, "the health check")  # its whole process group was killed


def test_activate_failure_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _fleet(tmp_path, 2)
    assert main(["rollout", "v3", "--dest", str(root), "--local", "2"]) == 1
    out = capsys.readouterr().out
    assert "host-1  wave 1  FAILED activate: release v3 is not installed in" in out
    assert "halted at wave 1 of 1" in out


def test_deploy_activate_in_waves_halts_and_rolls_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """roost deploy --activate on the local fleet: v1 everywhere, then v2
    distributed to every host but halted at wave 2 by a failing health check,
    wave 1 switched back; nothing downloaded by the switches."""
    src = tmp_path / "build"
    src.mkdir()
    (src / "version").write_text("v1\n")
    dest = tmp_path / "fleet"
    base = ["deploy", str(src), "--local", "3", "--dest", str(dest), "--linger", "0"]
    assert main([*base, "--tag", "v1", "--activate", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (
        doc["ok"]
        and doc["rollout"]["ok"]
        and doc["rollout"]["waves"] == [["host-1", "host-2", "host-3"]]
    )
    for i in (1, 2, 3):
        assert (dest / f"host-{i}" / "current" / "version").read_text() == "v1\n"
    (src / "version").write_text("v2\n")
    (dest / "host-2" / "SICK").touch()
    argv = [*base, "--tag", "v2", "--activate", "--waves", "1,2,100%", "--rollback-on-fail"]
    assert main([*argv, "--health", "test ! -e ../../SICK"]) == 1
    out = capsys.readouterr().out
    assert "host-1  wave 1  v1 -> v2  health ok  rolled back to v1" in out
    assert "host-2  wave 2  v1 -> v2  health FAILED exited with status 1" in out
    assert "host-3  not reached" in out
    assert "rollout of v2 halted at wave 2 of 3" in out
    for i in (1, 2, 3):
        host = dest / f"host-{i}"
        assert activation.current(host) == "v1"
        assert (host / "releases" / "v2" / "version").read_text() == "v2\n"  # distributed
    # Rolled back, v2 is nobody's previous release: it failed, and before it was v1.
    assert [activation.previous(dest / f"host-{i}") for i in (1, 2)] == [None, None]
    # Now roll forward by hand, then back: no download, one rename per host.
    assert main(["activate", "v2", "--dest", str(dest), "--local", "3", "--keep", "2"]) == 0
    assert main(["rollback", "--dest", str(dest), "--local", "3"]) == 0
    assert "host-3  v2 -> v1" in capsys.readouterr().out


def test_deploy_activation_flags_are_checked_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "b").mkdir()
    base = [
        "deploy",
        str(tmp_path / "b"),
        "--tag",
        "v1",
        "--local",
        "1",
        "--dest",
        str(tmp_path / "d"),
    ]
    assert main([*base, "--waves", "1,100%"]) == 2
    assert "need --activate" in capsys.readouterr().err
    assert main([*base, "--activate", "--no-tag-directory"]) == 2
    assert "drop --no-tag-directory" in capsys.readouterr().err
    assert main([*base, "--activate", "--waves", "0"]) == 2
    assert "bad wave" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()

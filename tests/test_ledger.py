"""roost.ledger: what a dead run recorded is cleaned, and only that."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from roost import ledger, procs
from roost.errors import UsageError


def _dead_pid() -> tuple[int, int]:
    proc = subprocess.Popen(["true"])
    started = procs.start_time(proc.pid) or 0
    proc.wait()
    return proc.pid, started


def test_reap_cleans_a_dead_runs_records_and_nothing_else(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ours = subprocess.Popen(["sleep", "30"])
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        work = tmp_path / "work"
        (work / "host-1").mkdir(parents=True)
        (work / "host-1" / "payload").write_bytes(b"x" * 100_000)
        neighbour = tmp_path / "neighbour"
        neighbour.mkdir()
        (neighbour / "keep").write_text("not ours\n")
        link = tmp_path / "link"
        link.symlink_to(neighbour)
        live = ledger.Ledger(run_dir, "live")  # this process: alive, left alone
        live_dir = live.make_dir(tmp_path, "roost-live-")
        owner = _dead_pid()
        doc = {
            "owner": list(owner),
            "dirs": [str(work), str(link), str(tmp_path / "never-made")],
            "processes": [
                [ours.pid, procs.start_time(ours.pid)],
                [stranger.pid, (procs.start_time(stranger.pid) or 0) + 1],  # a reused pid
            ],
        }
        (run_dir / "deploy-local-1-2.json").write_text(json.dumps(doc))
        (run_dir / "garbage.json").write_text("[[[")

        reaped = ledger.reap(run_dir)

        assert reaped.ledgers == 1 and reaped.processes == 1 and reaped.dirs == 1
        assert reaped.bytes >= 100_000
        assert ours.wait(5) is not None and stranger.poll() is None
        assert not work.exists() and (neighbour / "keep").exists() and link.is_symlink()
        assert live_dir.is_dir() and live.path.exists()
        assert sorted(p.name for p in run_dir.iterdir()) == ["garbage.json", live.path.name]
        live.close()
        assert not live.path.exists()
    finally:
        for proc in (ours, stranger):
            proc.kill()
            proc.wait()


def test_a_run_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.chmod(run_dir, 0o777)
    with pytest.raises(UsageError, match="not a directory of this user's alone"):
        ledger.reap(run_dir)


def test_a_directory_is_recorded_before_it_is_made(tmp_path: Path) -> None:
    records = ledger.Ledger(tmp_path / "run", "t")
    made = records.make_dir(tmp_path / "parent", "roost-x-")
    doc = json.loads(records.path.read_text())
    assert doc["dirs"] == [str(made)] and stat_mode(made) == 0o700
    assert doc["owner"] == [os.getpid(), procs.start_time(os.getpid())]
    records.close()


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_work_directory_that_cannot_be_made_is_one_line_and_not_recorded(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    records = ledger.Ledger(tmp_path / "run", "t")
    with pytest.raises(UsageError, match=r"cannot create a work directory in .*file: "):
        records.make_dir(tmp_path / "file", "roost-x-")
    assert json.loads(records.path.read_text())["dirs"] == []
    records.close()

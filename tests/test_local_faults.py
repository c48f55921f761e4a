"""``roost deploy --local`` killed for real (SIGKILL) and re-run: every
host's hook exactly once, and nothing the dead deploy made left behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from roost import procs
from tests.release_kit import make_tree, snapshot


def _env(tmp_path: Path) -> dict[str, str]:
    """This deploy's temp directory and run directory, in the test's own."""
    for name in ("tmp", "run"):
        (tmp_path / name).mkdir(exist_ok=True)
    return dict(os.environ, TMPDIR=str(tmp_path / "tmp"), XDG_RUNTIME_DIR=str(tmp_path / "run"))


def _deploy(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "roost", "deploy", *args, "--work-dir", str(tmp_path / "work")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path))


def _bytes_under(*roots: Path) -> int:
    total = 0
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _recorded_processes(tmp_path: Path) -> list[tuple[int, int]]:
    """The dead deploy's processes, from its own records: its ledger and the
    workers' pid files under the directories the ledger names."""
    found = []
    for ledger in (tmp_path / "run" / "roost").glob("*.json"):
        doc = json.loads(ledger.read_text())
        found += [(int(p), int(s)) for p, s in doc["processes"]]
        for where in doc["dirs"]:
            for pid_file in procs.pid_files(Path(where)):
                pid, started = (int(x) for x in pid_file.read_text().split()[:2])
                found.append((pid, started))
    return found


def _running(records: list[tuple[int, int]]) -> list[int]:
    return [p for p, s in records if procs.start_time(p) == s and procs.alive(p)]


def _finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def test_a_deploy_killed_as_releases_appear_runs_every_hook_exactly_once(
    tmp_path: Path,
) -> None:
    source = make_tree(tmp_path / "src")
    dest, log = tmp_path / "fleet", tmp_path / "hooks.log"
    args = (str(source), "--tag", "v1", "--local", "4", "--dest", str(dest), "--linger", "1")
    hook = ("--hook", f'echo "$ROOST_PATH" >> {log}')
    proc = _deploy(tmp_path, *args, *hook)
    releases = [dest / f"host-{k}" / "v1" for k in range(1, 5)]
    deadline = time.monotonic() + 60
    while not any(os.path.isdir(r) for r in releases):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)  # the controller, as the first release appears
    proc.communicate(timeout=30)
    installed = [r for r in releases if r.is_dir()]
    assert installed  # a host the old re-run took as done, hook or not
    records = _recorded_processes(tmp_path)
    time.sleep(0.5)  # what was in flight lands (or dies of the broken pipe)
    before = Counter(log.read_text().split()) if log.exists() else Counter()

    rc, _out, err = _finish(_deploy(tmp_path, *args, *hook, "--json"))
    assert rc == 0, err
    runs = Counter(log.read_text().split())
    print(f"installed at the kill: {len(installed)}, hooks run before the re-run: {len(before)}")
    assert runs == Counter(str(r) for r in releases)  # each host once, none twice
    expected = snapshot(source, skip_git=True)
    assert all(snapshot(r) == expected for r in releases)
    assert _running(records) == []


def test_a_deploy_killed_mid_download_is_cleaned_by_the_next_by_its_records(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(24 << 20))
    dest = tmp_path / "fleet"
    args = (str(source), "--tag", "v1", "--local", "2", "--dest", str(dest), "--linger", "30")
    proc = _deploy(tmp_path, *args, "--download-limit", "2M")
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    deadline = time.monotonic() + 60
    while _bytes_under(work) < (4 << 20):  # mid-download: some of 2 x 24 MiB there
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        time.sleep(0.05)
    records = _recorded_processes(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    time.sleep(1)
    left = _bytes_under(work, tmp)
    assert left > (4 << 20) and records  # what the dead deploy left behind
    # A neighbour's directory with a roost-like name is not ours to remove.
    (tmp / "roost-local-neighbour").mkdir()

    rc, out, err = _finish(_deploy(tmp_path, *args, "--linger", "0", "--json"))
    assert rc == 0, err
    line = re.search(r"removed what 1 killed deploy\(s\) left: .*", err)
    assert line, err
    print(f"left by the killed deploy: {left} bytes; {line.group(0)}")
    assert _running(records) == []
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp.iterdir()) == [
        "roost-local-neighbour"
    ]
    assert list((tmp_path / "run" / "roost").iterdir()) == []
    assert json.loads(out)["hosts_ok"] == 2


def test_a_host_whose_destination_is_a_symlink_to_an_empty_dir_installs_there(
    tmp_path: Path,
) -> None:
    source = make_tree(tmp_path / "src")
    dest, real = tmp_path / "fleet", tmp_path / "real" / "empty"
    real.mkdir(parents=True)
    dest.mkdir()
    (dest / "host-1").symlink_to(real)
    args = (str(source), "--tag", "v1", "--local", "2", "--dest", str(dest))
    rc, out, err = _finish(
        _deploy(tmp_path, *args, "--no-tag-directory", "--linger", "0", "--json")
    )
    assert rc == 0, err
    assert json.loads(out)["hosts_ok"] == 2
    expected = snapshot(source, skip_git=True)
    assert snapshot(real) == expected and snapshot(dest / "host-2") == expected
    assert os.readlink(dest / "host-1") == str(real)  # the link stays, the tree is behind it


def test_a_peer_that_dies_without_a_failed_event_fails_its_host_with_its_status(
    tmp_path: Path,
) -> None:
    from roost.local import LocalDeployConfig, deploy_local

    build = make_tree(tmp_path / "build")
    config = LocalDeployConfig(
        source=build,
        tag="t1",
        dest=tmp_path / "dest",
        hosts=1,
        work_dir=tmp_path / "work",
        run_dir=tmp_path / "run",
        extra_peer_args=("--no-such-flag",),  # argparse exits 2 before any event
    )
    summary = deploy_local(config)
    assert summary.ok is False
    [host] = summary.to_json()["hosts"]
    assert host["step"] == "peer"
    expected = (
        "peer exited with status 2: roost peer: error: unrecognized arguments: --no-such-flag"
        " (see roost peer --help)"
    )
    assert host["error"] == expected, host
    assert not (tmp_path / "dest" / "host-1" / "t1").exists()

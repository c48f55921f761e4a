"""``roost deploy --local N``: the whole deploy on this machine, and the
sans-IO fleet progress model behind its display."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from roost import events
from roost.peer.config import InstallOptions
from roost.progress import FleetProgress, TerminalDisplay, render_live, render_summary
from tests.release_kit import make_tree, snapshot

Start = Callable[..., subprocess.Popen[bytes]]


def deploy(start: Start, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = start("deploy", *args)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions ``text`` (read-only look at /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


def test_local_deploy_to_8_hosts_is_byte_identical(tmp_path: Path, roost_procs: Start) -> None:
    source = make_tree(tmp_path / "src")
    dest = tmp_path / "fleet"
    rc, out, err = deploy(
        roost_procs, str(source), "--tag", "v1", "--local", "8", "--dest", str(dest), "--json"
    )
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["ok"] is True and summary["hosts_ok"] == 8 and summary["hosts_failed"] == 0
    assert summary["tag"] == "v1" and len(summary["info_hash"]) == 40
    assert summary["seeder"]["bytes_up"] > 0
    expected = snapshot(source, skip_git=True)
    assert sorted(p.name for p in dest.iterdir()) == [f"host-{k}" for k in range(1, 9)]
    for host in summary["hosts"]:
        assert set(host) >= {"name", "ok", "seconds", "bytes_down", "bytes_up", "error"}
        assert host["ok"] is True and host["error"] is None
        assert host["seconds"] > 0
        assert host["bytes_down"] >= summary["size"]
        assert snapshot(dest / host["name"] / "v1") == expected
    # Lingering workers (default linger 30 s) were stopped when the deploy ended.
    assert processes_mentioning(str(dest)) == []


def test_one_failing_host_is_reported_while_the_others_succeed(
    tmp_path: Path, roost_procs: Start
) -> None:
    source = make_tree(tmp_path / "src")
    dest = tmp_path / "fleet"
    (dest / "host-2" / "v1").mkdir(parents=True)
    (dest / "host-2" / "v1" / "local-change").write_text("keep me\n")
    rc, out, err = deploy(
        roost_procs,
        *(str(source), "--tag", "v1", "--local", "3", "--dest", str(dest)),
        *("--linger", "1", "--json"),
    )
    assert rc == 1, err
    summary = json.loads(out)
    hosts = {h["name"]: h for h in summary["hosts"]}
    assert summary["ok"] is False and summary["hosts_failed"] == 1
    assert hosts["host-2"]["ok"] is False and "not empty" in hosts["host-2"]["error"]
    assert hosts["host-1"]["ok"] and hosts["host-3"]["ok"]
    assert [p.name for p in (dest / "host-2" / "v1").iterdir()] == ["local-change"]
    assert snapshot(dest / "host-3" / "v1") == snapshot(source, skip_git=True)


def test_text_summary_and_failing_hook(tmp_path: Path, roost_procs: Start) -> None:
    source = tmp_path / "app.bin"
    source.write_bytes(b"x" * 100_000)
    dest = tmp_path / "fleet"
    hook = 'case "$ROOST_PATH" in *host-1/*) echo broken >&2; exit 4;; esac'
    rc, out, err = deploy(
        roost_procs,
        *(str(source), "--file", "--tag", "v2", "--local", "2", "--dest", str(dest)),
        *("--linger", "0", "--hook", hook),
    )
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].split() == ["host", "result", "seconds", "down", "up", "error"]
    assert lines[1].split()[:2] == ["host-1", "FAILED"] and "status 4: broken" in lines[1]
    assert lines[2].split()[:2] == ["host-2", "ok"]
    assert "1 of 2 hosts ok, 1 failed" in out
    assert (dest / "host-2" / "v2" / "app.bin").read_bytes() == source.read_bytes()
    assert "roost deploy v2" in err  # the plain progress lines (stderr is not a TTY)


@pytest.mark.parametrize("feed", [True, False], ids=["feed", "bittorrent"])
def test_a_short_deploy_counts_what_the_origin_uploaded_however_seldom_it_polls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, feed: bool
) -> None:
    # The deploy is over in a fraction of a second, well within one poll of
    # the origin's seeder: what it sent is read as it stops, not from a poll.
    from roost.local import LocalDeployConfig, deploy_local
    from roost.seeder import Seeder

    monkeypatch.setattr(Seeder, "run", functools.partialmethod(Seeder.run, poll=2.0))
    config = LocalDeployConfig(
        source=make_tree(tmp_path / "src"),
        tag="v1",
        dest=tmp_path / "fleet",
        hosts=1,
        install=InstallOptions(linger=0),
        feed=feed,
        work_dir=tmp_path / "work",
        run_dir=tmp_path / "run",
    )
    summary = deploy_local(config)
    [host] = summary.hosts
    assert host.ok and host.bytes_down >= summary.size  # BitTorrent counts the pad files too
    seeder = summary.to_json()["seeder"]
    # the host's only source: about one copy, over the feed unless it is off
    assert summary.size <= seeder["bytes_up"] <= host.bytes_down < 1.5 * summary.size, seeder
    assert seeder["feed_up"] == (seeder["bytes_up"] if feed else 0), seeder


def test_a_rerun_reports_every_host_already_installed(tmp_path: Path, roost_procs: Start) -> None:
    source = make_tree(tmp_path / "src")
    args = (str(source), "--tag", "v1", "--local", "2", "--dest", str(tmp_path / "fleet"))
    rc, out, err = deploy(roost_procs, *args, "--linger", "0")
    assert rc == 0, err
    assert "already installed" not in out
    # (no linger: the host done first leaves, so each may take a copy from the origin)
    copies = re.search(r"^origin uploaded (\d+\.\d\d) copies of \d+ bytes$", out, re.M)
    assert copies is not None and 1.0 <= float(copies[1]) < 2.5, out

    rc, out, err = deploy(roost_procs, *args, "--linger", "0", "--json")
    assert rc == 0, err
    hosts = json.loads(out)["hosts"]
    assert [h["already_installed"] for h in hosts] == [True, True], hosts
    assert [h["bytes_down"] for h in hosts] == [0, 0]

    rc, out, err = deploy(roost_procs, *args, "--linger", "0")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["host", "result", "seconds", "down", "up", "error"]
    for line, name in zip(lines[1:3], ["host-1", "host-2"], strict=True):
        assert line.split()[:2] == [name, "ok"] and line.endswith("  already installed"), out
    assert "2 of 2 hosts ok, 0 failed" in lines[3]
    assert "origin uploaded 0.00 copies" in out  # nothing was sent


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tag", "a/b"], "tag"),
        (["--tag", "../x"], "tag"),
        (["--tag", "ok", "--local", "0"], "--local"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, roost_procs: Start, args: list[str], message: str
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    dest = tmp_path / "fleet"
    rc, _out, err = deploy(roost_procs, str(source), "--dest", str(dest), *args)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("roost: error: ") and message in err
    assert not dest.exists()


def test_missing_source_is_one_line(tmp_path: Path, roost_procs: Start) -> None:
    rc, _out, err = deploy(
        roost_procs, str(tmp_path / "nope"), "--tag", "v1", "--dest", str(tmp_path / "d")
    )
    assert rc == 2
    assert err.count("\n") == 1 and "does not exist" in err
    assert not (tmp_path / "d").exists()


def test_inventory_hands_over_to_the_fleet_deploy(tmp_path: Path) -> None:
    from roost.cli import build_parser

    args = build_parser().parse_args(
        ["deploy", "src", "--tag", "v1", "--dest", "/opt/app", "-i", "hosts.ini"]
    )
    assert args.inventory == Path("hosts.ini") and args.local is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["seeder:/srv/build", "--local", "2"],
            "roost: error: seeder:/srv/build: a path on the seeder needs an inventory (-i)",
        ),
        (
            ["seeder:", "-i", "{inv}"],
            "roost: error: seeder: names no path: give seeder:PATH, or set seeder_files_path "
            "in group_vars/all or default_seeder_files_path in roost.toml",
        ),
        (
            ["seeder:/b", "-i", "{inv}", "--seed-from", "controller"],
            "roost: error: seeder:PATH is packed and seeded on the seeder: drop --seed-from",
        ),
    ],
)
def test_seeder_path_mistakes_are_one_line(
    argv: list[str], message: str, tmp_path: Path, roost_procs: Start
) -> None:
    inv = tmp_path / "production"
    inv.write_text("[peer]\n198.18.0.7\n")
    args = [a.replace("{inv}", str(inv)) for a in argv]
    proc = roost_procs("deploy", *args, "--tag", "v1", "--dest", str(tmp_path / "d"))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.decode().strip() == message


# The sans-IO progress model ------------------------------------------------------


def _progress(progress: float, down: int = 0, rate_down: int = 0) -> events.Progress:
    return events.Progress(progress=progress, down=down, up=0, rate_down=rate_down, peers=0)


def test_fleet_progress_model() -> None:
    fleet = FleetProgress(["a", "b", "c"], total_size=1000, now=0.0)
    assert fleet.counts()["waiting"] == 3 and fleet.eta() is None
    fleet.apply("a", _progress(0.5, down=500, rate_down=100), 1.0)
    fleet.apply("b", _progress(0.0, rate_down=100), 1.0)
    assert fleet.rate() == 200
    assert fleet.eta() == pytest.approx((500 + 1000 + 1000) / 200)
    fleet.apply("a", events.Complete(), 2.0)
    fleet.apply("a", events.Installed(path="/d/a/t"), 2.0)
    fleet.apply("a", events.Done(ok=True, seconds=2.5, down=1000, up=300), 2.5)
    fleet.apply("b", events.Failed(error="disk full"), 3.0)
    fleet.apply("b", events.Done(ok=False, seconds=3, down=0, up=0), 3.0)  # keeps the first error
    assert fleet.counts() == {
        "waiting": 1,
        "downloading": 0,
        "installing": 0,
        "done": 1,
        "failed": 1,
    }
    assert not fleet.finished
    fleet.fail("c", "peer exited with status 1", 4.0)
    assert fleet.finished and not fleet.ok
    summary = fleet.summary(5.0)
    assert summary.hosts[0].to_json() == {
        "name": "a",
        "ok": True,
        "seconds": 2.5,
        "download_seconds": 2.0,
        "bytes_down": 1000,
        "bytes_reused": 0,
        "bytes_up": 300,
        "path": "/d/a/t",
        "error": None,
        "warning": None,
        "step": None,
        "address": None,
        "already_installed": False,
    }
    assert summary.hosts[1].error == "disk full"
    table = render_summary(summary)
    assert table[-1] == "1 of 3 hosts ok, 2 failed, in 5.0s"
    live = render_live(fleet, 5.0, "deploy t")
    assert live[0].startswith("deploy t: 1/3 done, 2 failed")
    assert len(live) == 4


def test_a_host_that_held_the_release_is_summed_up_as_already_installed() -> None:
    fleet = FleetProgress(["a", "b", "c"], total_size=1000, now=0.0)
    fleet.apply("a", events.Installed(path="/d/a/t", already=True), 0.1)
    fleet.apply("a", events.Done(ok=True, seconds=0.1, down=0, up=0), 0.1)
    fleet.apply("b", events.Installed(path="/d/b/t"), 1.0)
    fleet.apply("b", events.Done(ok=True, seconds=1, down=1000, up=0), 1.0)
    fleet.apply("c", events.Failed(error="disk full"), 1.0)
    summary = fleet.summary(1.0)
    assert [h.already_installed for h in summary.hosts] == [True, False, False]
    assert summary.hosts[0].to_json()["already_installed"] is True
    assert render_summary(summary)[1:4] == [
        "a     ok      0.1      0 B     0 B  already installed",
        "b     ok      1.0      1000 B  0 B",
        "c     FAILED  1.0      0 B     0 B  disk full",
    ]


def test_a_peer_the_tracker_turns_away_says_so() -> None:
    fleet = FleetProgress(["a"], total_size=1000, now=0.0)
    fleet.apply("a", _progress(0.0), 1.0)
    fleet.apply("a", events.TrackerWarning(url="http://t/announce", message="bad token"), 1.5)
    assert "tracker: bad token" in render_live(fleet, 2.0)[1]
    fleet.apply("a", events.Failed(error="timed out after 600s"), 600.0)
    error = fleet.summary(600.0).hosts[0].error
    assert error == "timed out after 600s (last tracker: bad token)"


def test_live_display_of_a_big_fleet_shows_only_active_hosts() -> None:
    names = [f"h{k}" for k in range(100)]
    fleet = FleetProgress(names, 10, 0.0)
    fleet.apply("h7", _progress(0.2), 1.0)
    lines = render_live(fleet, 1.0)
    assert len(lines) == 2 and "h7" in lines[1]


def test_terminal_display_redraws_in_place_on_a_tty() -> None:
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    display = TerminalDisplay(stream, interval=0)
    display.update(["head 1", "  a", "  b"], 0.0)
    display.update(["head 2", "  a"], 1.0)
    out = stream.getvalue()
    assert out.startswith("\x1b[2Khead 1\n")
    assert "\x1b[3F\x1b[2Khead 2\n\x1b[2K  a\n\x1b[2K\n\x1b[1F" in out

    plain = io.StringIO()
    display = TerminalDisplay(plain, plain_interval=5)
    display.update(["head 1", "  a"], 0.0)
    display.update(["head 2", "  a"], 1.0)  # too soon: skipped
    display.update(["head 3", "  a"], 1.0, force=True)
    assert plain.getvalue() == "head 1\nhead 3\n"


def test_python_m_roost_deploy_help_lists_local_and_inventory() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "roost", "deploy", "--help"], capture_output=True, check=True
    ).stdout.decode()
    assert "--local" in out and "--inventory" in out and "--json" in out


def test_a_feed_that_cannot_be_reached_is_not_called_the_tracker() -> None:
    fleet = FleetProgress(["a"], total_size=1000, now=0.0)
    fleet.apply("a", _progress(0.0), 1.0)
    message = "feed http://o:8997/ cannot be reached (connection refused): going on over BitTorrent"
    fleet.apply("a", events.TrackerWarning(url="http://o:8997/", message=message, source="feed"), 2)
    assert message in render_live(fleet, 2.0)[1]
    assert "tracker:" not in render_live(fleet, 2.0)[1]
    assert events.load(events.dump(events.TrackerWarning(url="u", message="m"))) == (
        events.TrackerWarning(url="u", message="m", source="tracker")
    )

"""A mistake on roost's command line is one line on stderr, naming the
command and what was wrong, with exit status 2: never a traceback, never the
whole usage above it (``roost deploy``'s is 23 lines)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def roost(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roost", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["deploy", "b", "--tag", "x", "--linger", "-5"], "roost deploy: error: argument --linger"),
        (["deploy", "b", "--tag", "x", "--bogus"], "roost deploy: error: unrecognized arguments"),
        (["nosuch"], "roost: error: argument COMMAND: invalid choice: 'nosuch'"),
        (["create", "b", "--tag", "x", "--piece-size", "-1"], "argument --piece-size: bad size"),
        (["create", "b", "--tag", "x", "--piece-size", "1.5M"], "argument --piece-size: bad size"),
        (["channel", "serve", "b", "--port", "99999"], "argument --port: port 99999 out of range"),
        (["origin", "serve", "b", "--port", "-1"], "argument --port: port -1 out of range"),
        (["seed", "t", "--payload", "b", "--feed-port", "70000"], "argument --feed-port: port"),
        (["peer", "t", "--dest", "d", "--port", "http"], "argument --port: not a port number"),
        (["activate", "", "--dest", "d"], "roost activate: error: argument TAG: bad tag ''"),
        (["activate", ".v1.roost", "--dest", "d"], "bad tag '.v1.roost': starts with '.'"),
        (["rollback", "--to", "../x", "--dest", "d"], "roost rollback: error: argument --to"),
        (["rollout", "", "--local", "1", "--dest", "d"], "roost rollout: error: argument TAG"),
        (["rollout", "v1", "--dest", "d", "--health-timeout", "-1"], "--health-timeout"),
        (["seed", "t", "--payload", "b", "--tracker-url", "x"], "bad tracker URL 'x'"),
        (["peer", "t", "--dest", "d", "--tracker-url", "ftp://t/"], "bad tracker URL"),
        (["deploy", "b", "--tag", "x", "--local", "1", "--tracker-port", "70000"], "port 70000"),
        (["deploy", "b", "--tag", "x", "--forks", "0"], "argument -f/--forks: must be at least 1"),
        # an unset $DEST: Path("") is the current directory (--clean replaced it)
        (["peer", "t", "--dest", "", "--clean"], "argument --dest: empty path"),
        (["deploy", "b", "--tag", "x", "--local", "1", "--dest", ""], "argument --dest: empty"),
        (["create", "", "--tag", "x"], "argument SRC: empty path"),
    ],
)
def test_a_bad_argument_is_one_line_naming_it(argv: list[str], says: str, tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    done = roost(*argv, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert says in done.stderr
    assert "--help" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # nothing written


def test_a_deploy_tagged_as_a_hidden_name_is_refused_before_anything(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("x")
    done = roost("deploy", "b", "--tag", ".hidden", "--local", "1", "--dest", "d", cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip() == "roost: error: bad tag '.hidden': starts with '.'"
    assert not (tmp_path / "d").exists()


def test_a_seeder_with_no_upload_slots_is_refused(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    done = roost("seed", "t", "--payload", "b", "--upload-slots", "-5", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == "roost: error: --upload-slots must be at least 1, or -1 for all; got -5\n"


def test_a_local_deploy_into_its_own_source_is_refused(tmp_path: Path) -> None:
    """Each deploy re-packed the installs before it (t2 held out/host-1/t1)."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("x")
    done = roost("deploy", "b", "--tag", "t1", "--local", "1", "--dest", "b/out", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        "roost: error: --dest b/out is inside the source b:"
        " each deploy would ship the installs before it\n"
    )
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["f"]


def test_a_seeders_stats_file_must_have_a_directory(tmp_path: Path) -> None:
    """Found at start, not when the seeding ends and the counts are lost."""
    (tmp_path / "b").mkdir()
    done = roost("seed", "t", "--payload", "b", "--stats-file", "no/s.json", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == "roost: error: --stats-file no/s.json: its directory does not exist\n"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--feed-token", "t"], "--feed-token is the feed's: give --feed-port too"),
        (
            ["--feed-port", "0", "--feed-token", "a b"],
            "--feed-token must be 1-200 printable ASCII characters, no spaces",
        ),
    ],
)
def test_a_seeders_feed_token_is_checked_first(tmp_path: Path, args: list[str], said: str) -> None:
    (tmp_path / "b").mkdir()
    done = roost("seed", "t", "--payload", "b", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"roost: error: {said}\n"


@pytest.mark.parametrize(
    ("murder", "roost_verb"),
    [
        ("start_tracker", "start-tracker"),
        ("create_torrent", "create"),
        ("clean_temp_files", "clean"),
    ],
)
def test_murders_verb_names_are_the_fleets_verbs(murder: str, roost_verb: str) -> None:
    from roost.cli import build_parser

    parser = build_parser("fleet")
    by_murder = parser.parse_args(["fleet", murder, "--hosts", "h1"])
    by_roost = parser.parse_args(["fleet", roost_verb, "--hosts", "h1"])
    assert vars(by_murder).keys() == vars(by_roost).keys()

    def runs(args: object) -> list[object]:  # what the verb's handler closes over
        handler = args.handler  # type: ignore[attr-defined]
        return [cell.cell_contents for cell in handler.__closure__ or ()]

    assert runs(by_murder) == runs(by_roost)
    assert runs(by_roost) != runs(parser.parse_args(["fleet", "peer", "--hosts", "h1"]))


@pytest.mark.parametrize("value", ["150", "-5", "nan"])
def test_max_fail_percent_is_a_percentage(value: str, tmp_path: Path) -> None:
    done = roost(
        "rollout", "v1", "--local", "1", "--dest", "d", "--max-fail-percent", value, cwd=tmp_path
    )
    assert done.returncode == 2
    assert "argument --max-fail-percent: a percentage is 0 to 100" in done.stderr


def test_a_reader_that_leaves_early_ends_roost_quietly(tmp_path: Path) -> None:
    # `roost releases ... | head -1`: no BrokenPipeError traceback.
    proc = subprocess.Popen(
        [sys.executable, "-m", "roost", "releases", "--dest", str(tmp_path), "--local", "5000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith("host-1 ")
    proc.stdout.close()
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == ""
    proc.stderr.close()

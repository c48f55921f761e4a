"""``roost fleet peer --torrent FILE`` and the SSH flags every fleet command
shares, refused before any host is reached.

The refusals run against asyncssh hosts on 127.0.0.1 (asyncssh_kit.py, no
root), which count their connections: a refused command made none, and says
so in one line naming the bad flag or file. Then, over real sshd hosts
(root), ``--torrent FILE`` installs exactly FILE's release, under its own
tag, even where group_vars names another whose .torrent a run before left
on the hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.release import create_release
from tests.fleet.asyncssh_kit import ShellFleet, shell_fleet
from tests.fleet.fleet_kit import inventory
from tests.fleet.sshd_harness import SshdFleet

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def shells(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShellFleet]:
    with shell_fleet(tmp_path_factory.mktemp("ssh"), 2) as fleet:
        yield fleet


def _roost(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "roost", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )
    return done.returncode, done.stdout, done.stderr


def _env(home: Path) -> dict[str, str]:
    """This environment without ROOST_* and SSH_* (an agent), with ``home``:
    no ~/.ssh/config of this machine's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROOST_", "SSH_"))}
    return {**env, "HOME": str(home)}


def _refused(shells: ShellFleet, tmp_path: Path, *argv: str, keys: bool = True) -> tuple[int, str]:
    """Run ``roost VERB... ARGV`` against ``shells`` (with the keys they take
    unless not ``keys``); its exit status and its one line on stderr, after
    checking it printed nothing else and reached no host."""
    verb, rest = argv[:2], argv[2:]
    hosts = ["--hosts", *(h.spec for h in shells.hosts)]
    ssh = ["--identity", str(shells.identity), "--known-hosts", str(shells.known_hosts)]
    before = [h.connections for h in shells.hosts]
    # the flags given last win: a test's --identity over the one that works
    argv = (*verb, *hosts, *(ssh if keys else []), *rest)
    rc, out, err = _roost(*argv, cwd=tmp_path, env=_env(tmp_path))
    assert [h.connections for h in shells.hosts] == before, (out, err)
    assert out == "", out
    assert "Traceback" not in err and err.count("\n") == 1, err
    return rc, err.strip()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--jump", "bad:host:x"], "argument --jump: 'bad:host:x' is not [user@]host[:port]"),
        (["--jump", "bastion:x"], "argument --jump: 'bastion:x' has a bad port 'x'"),
        (["--jump", "a@b,@c:22"], "argument --jump: '@c:22' has an empty user"),
        (["--connect-timeout", "-1"], "argument --connect-timeout: must be a number of seconds"),
        (["--connect-timeout", "soon"], "argument --connect-timeout: not a number of seconds"),
        (["--step-timeout", "0"], "argument --step-timeout: must be a number of seconds above 0"),
    ],
)
def test_a_bad_ssh_flag_is_refused_as_it_is_parsed(
    shells: ShellFleet, tmp_path: Path, flags: list[str], says: str
) -> None:
    rc, err = _refused(shells, tmp_path, "fleet", "clean", *flags)
    assert rc == 2
    assert err.startswith("roost fleet clean: error: ") and says in err, err


def test_an_identity_or_known_hosts_file_that_is_missing_is_refused_once(
    shells: ShellFleet, tmp_path: Path
) -> None:
    rc, err = _refused(shells, tmp_path, "fleet", "clean", "--identity", "/nonexistent/id")
    assert (rc, err) == (
        2,
        "roost: error: cannot read --identity /nonexistent/id: No such file or directory",
    )
    rc, err = _refused(shells, tmp_path, "fleet", "clean", "--known-hosts", str(tmp_path))
    assert (rc, err) == (2, f"roost: error: cannot read --known-hosts {tmp_path}: Is a directory")
    # roost.toml's, named as such; unchecked known_hosts are not read
    (tmp_path / "roost.toml").write_text('[ssh]\nidentity = "/nonexistent/key"\n')
    rc, err = _refused(shells, tmp_path, "fleet", "clean", "--config", "roost.toml", keys=False)
    assert err == "roost: error: cannot read roost.toml's ssh.identity /nonexistent/key: " + (
        "No such file or directory"
    )
    _, _, err = _roost(
        "fleet",
        "clean",
        "--hosts",
        shells.hosts[0].spec,
        "--identity",
        str(shells.identity),
        "--known-hosts",
        "/nonexistent/known_hosts",
        "--insecure-no-host-key-check",
        cwd=tmp_path,
        env=_env(tmp_path),
    )
    assert "cannot read" not in err, err


def test_peer_torrent_is_read_and_checked_before_any_host_is_reached(
    shells: ShellFleet, tmp_path: Path
) -> None:
    (tmp_path / "b1").mkdir()
    (tmp_path / "b1" / "a.txt").write_text("not a torrent\n")
    peer = ["fleet", "peer", "--dest", "/opt/app"]
    rc, err = _refused(shells, tmp_path, *peer, "--torrent", "b1/a.txt", "--tag", "Zed")
    assert rc == 1
    assert err.startswith("roost: error: b1/a.txt: torrent is not valid bencoding"), err
    rc, err = _refused(shells, tmp_path, *peer, "--torrent", "b1/gone.torrent")
    assert (rc, err) == (
        2,
        "roost: error: cannot read torrent b1/gone.torrent: No such file or directory",
    )
    # a release is installed under its own tag: --tag, if given, must be it
    release = create_release(
        tmp_path / "b1" / "a.txt", "r2", tmp_path / "out", announce=[], is_file=True
    )
    rc, err = _refused(shells, tmp_path, *peer, "--torrent", str(release.torrent), "--tag", "r1")
    assert (rc, err) == (2, f"roost: error: {release.torrent} is release 'r2', not 'r1'")
    # TAG.torrent (fleet create's, fetch-torrent's) must be release TAG
    shutil.copy(release.torrent, tmp_path / "out" / "r1.torrent")
    rc, err = _refused(shells, tmp_path, *peer, "--tag", "r1", "--out", str(tmp_path / "out"))
    assert (rc, err) == (2, f"roost: error: {tmp_path}/out/r1.torrent is release 'r2', not 'r1'")


# ---------------------------------------------------------------- over sshd


def _fleet(f: SshdFleet, *argv: str) -> dict:
    rc, out, err = _roost("fleet", *argv, "--json", cwd=Path("/"), env=f.env())
    assert rc == 0, (argv, out, err)
    return dict(json.loads(out))


def test_peer_installs_the_torrent_it_was_given(
    loopback_fleet: SshdFleet, tmp_path: Path, wheel_cache: Path
) -> None:
    f = loopback_fleet
    inv = inventory(tmp_path, f)
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all").write_text("tag: Deploy1\ndestination_path: /opt/app\n")
    base = ["-i", str(inv)]
    out = tmp_path / "torrents"
    for tag in ("Deploy1", "Deploy2"):
        build = f.hosts[0].path(f"/tmp/build-{tag}")  # on the seeder
        build.mkdir(parents=True)
        (build / "f.txt").write_text(f"{tag}\n")
    rc, _, err = _roost(
        "bootstrap", *base, "--wheel-cache", str(wheel_cache), cwd=Path("/"), env=f.env()
    )
    assert rc == 0, err
    _fleet(f, "start-tracker", *base)
    try:
        # Murder's flow, the tag from group_vars: Deploy1 everywhere
        _fleet(f, "create", *base, "--files-path", "/tmp/build-Deploy1", "--out", str(out))
        _fleet(f, "start-seeding", *base)
        _fleet(f, "peer", *base, "--out", str(out), "--linger", "0")
        # Deploy2, its .torrent under another name; group_vars still says Deploy1
        new = ["--tag", "Deploy2", "--files-path", "/tmp/build-Deploy2"]
        _fleet(f, "create", *base, *new, "--out", str(out))
        _fleet(f, "start-seeding", *base, "--tag", "Deploy2")
        given = tmp_path / "elsewhere" / "build.torrent"
        given.parent.mkdir()
        shutil.move(out / "Deploy2.torrent", given)
        done = _fleet(f, "peer", *base, "--torrent", str(given), "--linger", "0")
        assert [h["ok"] for h in done["hosts"]] == [True] * len(f.hosts), done
        for h in f.hosts:
            assert h.path("/opt/app/Deploy1/f.txt").read_text() == "Deploy1\n", h.name
            assert h.path("/opt/app/Deploy2/f.txt").read_text() == "Deploy2\n", h.name
            torrents = h.path("/tmp/roost/torrents")
            assert (torrents / "Deploy2.torrent").read_bytes() == given.read_bytes(), h.name
            assert not (torrents / "build.torrent").exists(), h.name
        # Again, as people read it: one line a host, no event JSON.
        again = ("fleet", "peer", *base, "--torrent", str(given), "--linger", "0")
        rc, _, err = _roost(*again, cwd=Path("/"), env=f.env())
        assert rc == 0, err
        lines = sorted(line for line in err.splitlines() if "installed" in line)
        assert len(lines) == len(f.hosts) and "{" not in err, err
        assert all(ln.endswith("/opt/app/Deploy2 (already installed)") for ln in lines), err
    finally:
        for verb in ("stop-all-seeding", "stop-all-peering", "stop-tracker"):
            _roost("fleet", verb, *base, env=f.env(), cwd=Path("/"))

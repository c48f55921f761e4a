"""The agent and its channel: real tracker, real seeders, real agent processes.

A channel directory is served by ``ChannelServer`` on 127.0.0.1:0; the
publisher (this process) creates releases into it and seeds each with a
``SeederThread``; agents run as ``roost agent`` subprocesses (``--once``, and
one long-running daemon) or in-process for the library API.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from roost import activation
from roost.channel import (
    Channel,
    ChannelEntry,
    ChannelServer,
    fetch,
    parse_channel,
    publish,
    render_channel,
    set_current,
)
from roost.enginetypes import EngineConfig
from roost.errors import AgentStateError, ChannelError, UsageError
from tests.release_kit import make_tree, snapshot

Start = Callable[..., subprocess.Popen[bytes]]
H1 = "a" * 40


@dataclass
class Publisher:
    """A channel directory served over HTTP, a tracker, and a seeder per release."""

    root: Path
    tracker: Any
    server: ChannelServer
    seeders: dict[str, Any] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.root / "channel"

    @property
    def url(self) -> str:
        return self.server.url

    def source(self, tag: str) -> Path:
        tree = make_tree(self.root / f"src-{tag}")
        (tree / "version.txt").write_text(f"{tag}\n")
        return tree

    def publish(
        self,
        tag: str,
        *,
        seed: bool = True,
        feed: bool = False,
        feed_token: str | None = None,
        sign: Path | None = None,
        waves: tuple[float, ...] = (),
    ) -> Any:
        from roost.seeder import SeedConfig, SeederThread, origin_engine

        feed_port = free_port() if feed else None
        release = publish(
            self.source(tag),
            tag,
            self.dir,
            announce=[self.tracker.announce_url],
            feed=(
                f"http://127.0.0.1:{feed_port}/" + (f"?token={feed_token}" if feed_token else "")
                if feed_port
                else None
            ),
            sign_key=sign,
            waves=waves,
        )
        if seed:
            self.seeders[tag] = SeederThread(
                SeedConfig.of(
                    release,
                    engine=origin_engine(listen_interface="127.0.0.1"),
                    feed_port=feed_port,
                    feed_token=feed_token,
                )
            )
        return release

    def stop_seeding(self) -> None:
        for seeder in self.seeders.values():
            seeder.seeder.stop()  # all at once: each close waits for its last announce
        for seeder in self.seeders.values():
            seeder.stop()
        self.seeders.clear()


@pytest.fixture
def pub(tmp_path: Path) -> Iterator[Publisher]:
    from roost.tracker import TrackerConfig, run_tracker_in_thread

    tracker = run_tracker_in_thread(TrackerConfig(port=0, interval=2, min_interval=1))
    (tmp_path / "channel").mkdir()
    server = ChannelServer(tmp_path / "channel").start()
    publisher = Publisher(tmp_path, tracker, server)
    yield publisher
    publisher.stop_seeding()
    server.stop()
    tracker.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def agent_args(pub: Publisher, dest: Path, *extra: str) -> list[str]:
    return ["agent", "--channel", pub.url, "--dest", str(dest), "--listen", "127.0.0.1", *extra]


def once(start: Start, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = start(*args)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def state(dest: Path) -> dict[str, Any]:
    return json.loads((dest / ".roost-agent.json").read_text())  # type: ignore[no-any-return]


def hook_runs(log: Path) -> list[dict[str, str]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


HOOK = (
    'python3 -c "import json, os; print(json.dumps({k: v for k, v in os.environ.items() '
    "if k.startswith('ROOST_')}))\" >> {log}"
)


# End to end with --once ------------------------------------------------------------


def test_install_switch_and_rollback_without_download(
    pub: Publisher, tmp_path: Path, roost_procs: Start
) -> None:
    dest, log = tmp_path / "opt-app", tmp_path / "hook.log"
    hook = HOOK.replace("{log}", str(log))
    pub.publish("v1")
    rc, out, err = once(roost_procs, *agent_args(pub, dest, "--once", "--hook", hook))
    assert rc == 0, err
    assert os.readlink(dest / "current") == "releases/v1"
    assert snapshot(dest / "current") == snapshot(pub.root / "src-v1", skip_git=True)
    run = hook_runs(log)[-1]
    assert run["ROOST_TAG"] == "v1" and run["ROOST_PREVIOUS"] == ""
    assert run["ROOST_PATH"] == str(dest / "releases" / "v1")
    assert "activated v1" in out

    pub.publish("v2")
    rc, out, err = once(roost_procs, *agent_args(pub, dest, "--once", "--hook", hook))
    assert rc == 0, err
    assert os.readlink(dest / "current") == "releases/v2"
    assert (dest / "current" / "version.txt").read_text() == "v2\n"
    assert hook_runs(log)[-1]["ROOST_PREVIOUS"] == "v1"
    assert state(dest)["previous"] == "v1"
    # v2 started from v1's files that did not change (issue 14's incremental deploys)
    v1, v2 = pub.root / "src-v1", pub.root / "src-v2"
    same = sum(
        f.stat().st_size
        for f in v2.rglob("*")
        if f.is_file()
        and not f.is_symlink()
        and ".git" not in str(f.relative_to(v2))
        and (v1 / f.relative_to(v2)).is_file()
        and (v1 / f.relative_to(v2)).read_bytes() == f.read_bytes()
    )
    assert same > 0 and state(dest)["last_download"]["reused"] == same

    # Rollback: nothing seeds any more, so a download could not succeed.
    pub.stop_seeding()
    set_current(pub.dir, "v1")
    rc, out, err = once(roost_procs, *agent_args(pub, dest, "--once", "--hook", hook))
    assert rc == 0, err
    assert os.readlink(dest / "current") == "releases/v1"
    assert "downloading" not in out
    assert state(dest)["last_download"]["tag"] == "v2"  # the last download stays v2's
    assert hook_runs(log)[-1]["ROOST_TAG"] == "v1"
    assert hook_runs(log)[-1]["ROOST_PREVIOUS"] == "v2"
    assert sorted(os.listdir(dest / "releases")) == [".v1.roost", ".v2.roost", "v1", "v2"]

    # Nothing changed: nothing happens (the hook does not run again).
    runs = len(hook_runs(log))
    rc, out, err = once(roost_procs, *agent_args(pub, dest, "--once", "--hook", hook))
    assert rc == 0 and "unchanged" in out, err
    assert len(hook_runs(log)) == runs

    status = subprocess.run(
        [sys.executable, "-m", "roost", "agent", "status", "--dest", str(dest)],
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0
    assert "current    v1  (current -> releases/v1)" in status.stdout
    assert "previous   v2" in status.stdout
    assert "agent      not running" in status.stdout  # --once has ended
    assert "seeding " not in status.stdout


def test_status_says_whether_an_agent_holds_the_destination(tmp_path: Path) -> None:
    from roost.agent.state import LOCK_FILE, lock_destination, running_agent

    lock = tmp_path / LOCK_FILE
    assert running_agent(lock) is None  # none ever ran
    held = lock_destination(lock)
    try:
        assert running_agent(lock) == os.getpid()
    finally:
        held.close()
    assert running_agent(lock) is None  # it stopped; its file stays


def test_an_agent_takes_its_pieces_from_the_channels_feed(
    pub: Publisher, tmp_path: Path, roost_procs: Start
) -> None:
    """Its token in the channel: the feed serves nobody without it."""
    release = pub.publish("v1", feed=True, feed_token="chan-s3cret")
    doc = json.loads((pub.dir / "channel.json").read_text())
    assert doc["releases"][0]["feed"].startswith("http://127.0.0.1:")
    assert doc["releases"][0]["feed"].endswith("/?token=chan-s3cret")
    dest = tmp_path / "opt-app"
    rc, _out, err = once(roost_procs, *agent_args(pub, dest, "--once"))
    assert rc == 0, err
    assert snapshot(dest / "current") == snapshot(pub.root / "src-v1", skip_git=True)
    seeder = pub.seeders["v1"].seeder
    stats = seeder.feed.stats(seeder.info_hash)
    assert stats.done and stats.bytes_sent == release.size  # one copy (pads unsent), from the feed
    assert seeder.snapshot().uploaded == 0  # and none from the BitTorrent seeder


def test_failing_hook_keeps_the_old_release(
    pub: Publisher, tmp_path: Path, roost_procs: Start
) -> None:
    dest, log = tmp_path / "dest", tmp_path / "hook.log"
    pub.publish("v1")
    rc, _, err = once(roost_procs, *agent_args(pub, dest, "--once"))
    assert rc == 0, err
    pub.publish("v2")
    failing = f"echo ran >> {log}; echo 'smoke test failed' >&2; exit 3"
    rc, out, err = once(roost_procs, *agent_args(pub, dest, "--once", "--hook", failing))
    assert rc == 1
    assert "rejected v2" in out and "exited with status 3: smoke test failed" in out
    assert os.readlink(dest / "current") == "releases/v1"
    assert state(dest)["rejected"]["tag"] == "v2"
    assert state(dest)["current"] == "v1"

    # A rejected release is not retried while the channel still names it.
    rc, out, _ = once(roost_procs, *agent_args(pub, dest, "--once", "--hook", failing))
    assert rc == 1 and "rejected" in out
    assert log.read_text() == "ran\n"
    assert os.readlink(dest / "current") == "releases/v1"

    # A new release clears the rejection.
    pub.publish("v3")
    rc, _, err = once(roost_procs, *agent_args(pub, dest, "--once", "--hook", "true"))
    assert rc == 0, err
    assert os.readlink(dest / "current") == "releases/v3"
    assert state(dest)["rejected"] is None and state(dest)["previous"] == "v1"


def test_the_agent_follows_signed_releases_only(
    pub: Publisher, tmp_path: Path, roost_procs: Start
) -> None:
    keys = {}
    for name in ("owner", "stranger"):
        keys[name] = tmp_path / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys[name]], check=True
        )
    dest = tmp_path / "dest"
    trust = ("--once", "--trust", f"{keys['owner']}.pub")
    pub.publish("v1", sign=keys["owner"])
    rc, out, err = once(roost_procs, *agent_args(pub, dest, *trust))
    assert rc == 0, err
    assert os.readlink(dest / "current") == "releases/v1"
    for tag, key, why in (
        ("v2", None, "is unsigned and signed releases are required"),
        ("v3", keys["stranger"], "which is not trusted"),
    ):
        pub.publish(tag, sign=key, seed=False)  # refused before any download: no seeder
        rc, out, _ = once(roost_procs, *agent_args(pub, dest, *trust))
        assert rc == 1 and f"rejected {tag}: release {tag} (" in out and why in out, out
        assert os.readlink(dest / "current") == "releases/v1"
        assert not (dest / "releases" / tag).exists()
        assert state(dest)["last_download"]["tag"] == "v1"
    pub.publish("v4", sign=keys["owner"])
    rc, out, err = once(roost_procs, *agent_args(pub, dest, *trust))
    assert rc == 0, err
    assert os.readlink(dest / "current") == "releases/v4"
    assert state(dest)["previous"] == "v1"


def test_prune_keeps_n_releases_never_current_or_previous(
    pub: Publisher, tmp_path: Path, roost_procs: Start
) -> None:
    dest = tmp_path / "dest"
    for tag in ("v1", "v2", "v3", "v4"):
        pub.publish(tag)
        rc, _, err = once(roost_procs, *agent_args(pub, dest, "--once", "--keep", "3"))
        assert rc == 0, err
    records = [".v2.roost", ".v3.roost", ".v4.roost"]
    assert sorted(os.listdir(dest / "releases")) == [*records, "v2", "v3", "v4"]
    # Roll back to v2, then forward to a new v5 with --keep 1: current and
    # previous are kept whatever --keep says.
    set_current(pub.dir, "v2")
    pub.publish("v5")
    set_current(pub.dir, "v5")
    rc, _, err = once(roost_procs, *agent_args(pub, dest, "--once", "--keep", "1"))
    assert rc == 0, err
    assert sorted(os.listdir(dest / "releases")) == [".v4.roost", ".v5.roost", "v4", "v5"]
    assert [e["tag"] for e in state(dest)["installed"]] == ["v4", "v5"]
    # Only the current and previous payloads are kept for seeding.
    assert len(os.listdir(dest / ".roost-cache")) == 2


# The daemon ----------------------------------------------------------------------


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_daemon_survives_bad_channel_and_seeds_the_next_host(
    pub: Publisher, tmp_path: Path, roost_procs: Start
) -> None:
    dest_a, dest_b = tmp_path / "host-a", tmp_path / "host-b"
    (pub.dir / "channel.json").write_text("{not json")
    daemon = roost_procs(*agent_args(pub, dest_a, "--interval", "0.3"), stdout=subprocess.PIPE)
    wait_for(lambda: (dest_a / ".roost-agent.json").exists(), 15, "the first poll")
    assert "not valid JSON" in state(dest_a)["last_error"]
    assert daemon.poll() is None

    (pub.dir / "channel.json").unlink()
    release = pub.publish("v1")
    # The symlink flips inside a poll; the state file is saved when it ends.
    wait_for(lambda: state(dest_a)["current"] == "v1", 30, "host A to record v1")
    assert os.readlink(dest_a / "current") == "releases/v1"
    assert state(dest_a)["last_error"] is None

    # The publisher stops seeding: host B can only get v1 from host A.
    pub.stop_seeding()
    rc, _, err = once(roost_procs, *agent_args(pub, dest_b, "--once", "--download-timeout", "30"))
    assert rc == 0, err
    assert snapshot(dest_b / "current") == snapshot(pub.root / "src-v1", skip_git=True)
    assert state(dest_b)["last_download"]["bytes"] >= release.total_size
    wait_for(
        lambda: sum(s["uploaded"] for s in state(dest_a)["seeding"]) >= release.total_size,
        10,
        "host A's state to show its upload",
    )

    daemon.send_signal(signal.SIGTERM)
    out, _ = daemon.communicate(timeout=15)
    assert daemon.returncode == 0
    lines = out.decode().splitlines()
    assert sum("error: channel.json:1: not valid JSON" in line for line in lines) >= 1
    assert lines[-1].endswith("roost agent: stopped")
    resume = dest_a / ".roost-cache" / release.info_hash / f"{release.info_hash}.resume"
    assert resume.is_file()


def test_daemon_survives_hostile_publishes_and_then_activates(
    pub: Publisher, tmp_path: Path, roost_procs: Start
) -> None:
    """Nesting deep enough to break a recursive parser, a release whose torrent
    is a FIFO: each is one log line and a retry, and the daemon lives on."""
    dest = tmp_path / "host"
    doc_path = pub.dir / "channel.json"
    doc_path.write_bytes(b"[" * 100_000)
    daemon = roost_procs(*agent_args(pub, dest, "--interval", "0.2"), stdout=subprocess.PIPE)
    wait_for(lambda: (dest / ".roost-agent.json").exists(), 15, "the first poll")
    first_error = state(dest)["last_error"]
    assert first_error and "\n" not in first_error
    assert daemon.poll() is None

    os.mkfifo(pub.dir / "v0.torrent")
    entry = {"tag": "v0", "info_hash": H1, "torrent": "v0.torrent", "published": 1.0}
    doc_path.write_text(
        json.dumps({"version": 1, "channel": "c", "releases": [entry], "current": "v0"})
    )
    wait_for(lambda: "v0.torrent" in (state(dest)["last_error"] or ""), 15, "the FIFO's error")
    assert "HTTP 404" in state(dest)["last_error"]
    assert daemon.poll() is None

    doc_path.unlink()
    pub.publish("v1")
    # The state file is saved after the switch: wait for it, not for the symlink.
    wait_for(lambda: state(dest)["current"] == "v1", 40, "v1 to be activated")
    assert (dest / "current").is_symlink() and state(dest)["last_error"] is None

    daemon.send_signal(signal.SIGTERM)
    out, _ = daemon.communicate(timeout=15)
    assert daemon.returncode == 0
    errors = [line for line in out.decode().splitlines() if " roost agent: error: " in line]
    assert len(errors) >= 2 and any("v0.torrent" in line for line in errors)
    assert "Traceback" not in out.decode()


def test_daemon_retries_a_dripping_channel_and_stops_on_request(tmp_path: Path) -> None:
    """Each poll of a channel that never finishes its answer ends at the fetch
    timeout; the daemon logs it, backs off, polls again, and stops when asked."""
    import threading

    from roost.agent import Agent, AgentConfig
    from tests.http_kit import ScriptedServer, drip

    lines: list[str] = []
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    with ScriptedServer(drip(answer), delay=0.2) as server:
        config = AgentConfig(
            channel=server.url,
            dest=tmp_path / "dest",
            interval=0.1,
            fetch_timeout=0.5,
            engine=EngineConfig(listen_interface="127.0.0.1"),
        )
        with Agent(config, say=lines.append) as agent:
            thread = threading.Thread(target=agent.run, daemon=True)
            thread.start()
            wait_for(lambda: len(lines) >= 3, 10, "three failed polls")
            agent.stop()
            thread.join(5)
            assert not thread.is_alive()
    assert all("timed out after 0.5s (retrying in" in line for line in lines), lines
    assert [line.rsplit("retrying in ", 1)[1] for line in lines[:3]] == ["0.1s)", "0.2s)", "0.4s)"]


def test_once_gives_up_on_a_dripping_channel_after_its_fetch_timeout(
    tmp_path: Path, roost_procs: Start
) -> None:
    from tests.http_kit import ScriptedServer, drip, elapsed

    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    with ScriptedServer(drip(answer), delay=0.5) as server:  # one byte each 0.5 s
        start = time.monotonic()
        rc, _, err = once(
            roost_procs,
            "agent",
            "--once",
            "--channel",
            server.url,
            "--dest",
            str(tmp_path / "dest"),
            "--listen",
            "127.0.0.1",
            "--fetch-timeout",
            "2",
            timeout=30,
        )
        took = elapsed(start)
    assert rc == 1
    assert err == f"roost: error: cannot fetch {server.url}channel.json: timed out after 2s\n"
    assert took < 12  # the 2 s fetch plus starting Python and libtorrent


@pytest.mark.parametrize("once_flag", [["--once"], []])
def test_a_channel_url_of_another_scheme_is_refused_at_once(
    tmp_path: Path, roost_procs: Start, once_flag: list[str]
) -> None:
    # Read as a local path it never appeared, and the daemon retried for ever.
    rc, _, err = once(
        roost_procs,
        "agent",
        *once_flag,
        *("--channel", "ftp://deploy/channel/", "--dest", str(tmp_path / "d")),
        *("--listen", "127.0.0.1"),
        timeout=30,
    )
    assert rc == 2
    assert err == (
        "roost: error: channel ftp://deploy/channel/: ftp:// is not supported"
        " (http://, https://, file:// or a path)\n"
    )
    assert not (tmp_path / "d").exists()


def test_once_refuses_a_fifo_channel_at_once(tmp_path: Path, roost_procs: Start) -> None:
    fifo = tmp_path / "channel.json"
    os.mkfifo(fifo)
    rc, _, err = once(
        roost_procs,
        "agent",
        "--once",
        "--channel",
        str(fifo),
        "--dest",
        str(tmp_path / "d"),
        "--listen",
        "127.0.0.1",
        timeout=30,
    )
    assert rc == 1
    assert err == f"roost: error: cannot read {fifo}: not a regular file\n"


@pytest.mark.parametrize(
    ("installed", "problem"),
    [
        ([{"tag": "v1"}], "installed[0] has no 'info_hash' string"),
        ([{"tag": "v1", "info_hash": H1}, "v2"], "installed[1] is not an object"),
        ({"v1": H1}, "'installed' is not a list"),
    ],
)
def test_a_malformed_state_file_is_named_in_one_line(
    tmp_path: Path, roost_procs: Start, installed: object, problem: str
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    path = dest / ".roost-agent.json"
    path.write_text(json.dumps({"current": "v1", "installed": installed}))
    for args in (
        ("agent", "--once", "--channel", str(tmp_path / "none"), "--dest", str(dest)),
        ("agent", "status", "--dest", str(dest)),
    ):
        rc, _, err = once(roost_procs, *args, timeout=30)
        assert rc == 1  # not a bad argument: the file is bad
        assert err == f"roost: error: agent state {path} is malformed: {problem}\n"


def test_sigterm_mid_download_saves_resume_data_and_a_restart_finishes(
    pub: Publisher, tmp_path: Path, roost_procs: Start
) -> None:
    from tests.swarm_kit import random_file

    dest = tmp_path / "dest"
    source = pub.source("big")
    random_file(source / "blob.bin", 2 * 1024 * 1024, seed=7)
    release = publish(source, "v1", pub.dir, announce=[pub.tracker.announce_url])
    from roost.seeder import SeedConfig, SeederThread, origin_engine

    pub.seeders["v1"] = SeederThread(
        SeedConfig.of(release, engine=origin_engine(listen_interface="127.0.0.1"))
    )
    slow = agent_args(pub, dest, "--interval", "0.5", "--download-limit", "256K")
    daemon = roost_procs(*slow)
    work = dest / ".roost-cache" / release.info_hash
    wait_for(lambda: (work / "v1" / "blob.bin").exists(), 15, "the download to start")
    time.sleep(1.5)
    daemon.send_signal(signal.SIGTERM)
    out, err = daemon.communicate(timeout=15)
    assert daemon.returncode == 0, err
    assert out.decode().splitlines()[-1].endswith("roost agent: stopped")
    assert (work / f"{release.info_hash}.resume").is_file()
    assert not (dest / "current").exists() and os.listdir(dest / "releases") == []

    rc, _, err_text = once(roost_procs, *agent_args(pub, dest, "--once"))
    assert rc == 0, err_text
    assert snapshot(dest / "current") == snapshot(source, skip_git=True)
    # The restart did not fetch everything again.
    assert state(dest)["last_download"]["bytes"] < release.total_size


# In-process: bad input ----------------------------------------------------------


def agent_config(pub: Publisher, dest: Path, **kw: Any) -> Any:
    from roost.agent import AgentConfig

    return AgentConfig(
        channel=pub.url,
        dest=dest,
        engine=EngineConfig(listen_interface="127.0.0.1"),
        download_timeout=20,
        **kw,
    )


def test_torrent_not_matching_the_channel_is_refused(pub: Publisher, tmp_path: Path) -> None:
    from roost.agent import Agent

    release = pub.publish("v1")
    doc = json.loads((pub.dir / "channel.json").read_text())
    doc["releases"][0]["info_hash"] = H1
    (pub.dir / "channel.json").write_text(json.dumps(doc))
    lines: list[str] = []
    with Agent(agent_config(pub, tmp_path / "dest"), say=lines.append) as agent:
        with pytest.raises(ChannelError, match=f"has info-hash {release.info_hash}"):
            agent.cycle()
        assert not (tmp_path / "dest" / "current").exists()
        # The channel is fixed: the same agent recovers.
        doc["releases"][0]["info_hash"] = release.info_hash
        (pub.dir / "channel.json").write_text(json.dumps(doc))
        assert agent.cycle() == "activated"
    assert os.readlink(tmp_path / "dest" / "current") == "releases/v1"


def test_unreachable_channel_and_second_agent_are_one_line_errors(
    pub: Publisher, tmp_path: Path, roost_procs: Start
) -> None:
    from roost.agent import Agent

    dest = tmp_path / "dest"
    rc, _, err = once(
        roost_procs, "agent", "--once", "--channel", "http://127.0.0.1:9/", "--dest", str(dest)
    )
    assert rc == 1
    assert err.startswith("roost: error: cannot fetch http://127.0.0.1:9/channel.json")
    assert len(err.splitlines()) == 1
    assert "cannot fetch" in state(dest)["last_error"]

    with Agent(agent_config(pub, dest)):
        rc, _, err = once(roost_procs, *agent_args(pub, dest, "--once"))
        assert rc == 1 and "another roost agent is running" in err

    rc, _, err = once(roost_procs, "agent", "status", "--dest", str(tmp_path / "none"))
    assert rc == 2 and "no roost agent state" in err


def test_an_agent_refused_at_start_leaves_the_destination_free(
    pub: Publisher, tmp_path: Path
) -> None:
    """A corrupt state file refuses the agent after it took the destination's
    lock: the lock (an open file) is released at once, not by the garbage
    collector, and the next agent in this process gets the destination."""
    from roost.agent import Agent

    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / ".roost-agent.json").write_text("{oops")
    with pytest.raises(AgentStateError, match="is unreadable"):
        Agent(agent_config(pub, dest))
    (dest / ".roost-agent.json").unlink()
    with Agent(agent_config(pub, dest)) as agent:
        assert agent.dest == dest.absolute()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"[]", "not a JSON object"),
        (b'{"version": 2}', "version 2"),
        (b'{"version": 1, "channel": "a b", "releases": []}', "bad channel name"),
        (b'{"version": 1, "channel": "c", "releases": {}}', "'releases' is not a list"),
        (
            b'{"version": 1, "channel": "c", "releases": [], "current": "v9"}',
            "has no release 'v9'",
        ),
        (
            b'{"version": 1, "channel": "c", "releases": [{"tag": "../x", "info_hash": "'
            + H1.encode()
            + b'", "torrent": "x.torrent"}]}',
            "releases\\[0\\]",
        ),
        (
            b'{"version": 1, "channel": "c", "releases": [{"tag": "v1", "info_hash": "xyz", '
            b'"torrent": "v1.torrent"}]}',
            "info_hash",
        ),
        (
            b'{"version": 1, "channel": "c", "releases": [{"tag": "v1", "info_hash": "'
            + H1.encode()
            + b'", "torrent": "../../etc/passwd"}]}',
            "plain file name",
        ),
        (
            b'{"version": 1, "channel": "c", "releases": [{"tag": "v1", "info_hash": "'
            + H1.encode()
            + b'", "torrent": "v1.torrent", "feed": "ftp://origin/"}]}',
            "'feed' is not an http:// URL",
        ),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bad_channel_documents(doc: bytes, message: str) -> None:
    with pytest.raises(ChannelError, match=message):
        parse_channel(doc)


def test_channel_round_trip_and_publishing_rules(tmp_path: Path) -> None:
    channel = Channel("web", (ChannelEntry("v1", H1, "v1.torrent", 1.5),), "v1")
    assert parse_channel(render_channel(channel)) == channel
    fed = Channel("web", (ChannelEntry("v1", H1, "v1.torrent", 1.5, "http://o:8997/"),), "v1")
    assert parse_channel(render_channel(fed)) == fed
    src = make_tree(tmp_path / "src")
    publish(src, "v1", tmp_path / "ch", name="web")
    with pytest.raises(UsageError, match="already in channel 'web'"):
        publish(src, "v1", tmp_path / "ch")
    with pytest.raises(UsageError, match="no release 'v7'"):
        set_current(tmp_path / "ch", "v7")
    with pytest.raises(UsageError, match=r"holds no channel\.json"):
        set_current(tmp_path / "empty", "v1")
    assert sorted(os.listdir(tmp_path / "ch")) == ["channel.json", "v1.torrent"]  # a tree


def test_channel_server_serves_files_only(tmp_path: Path) -> None:
    root = tmp_path / "ch"
    (root / "sub").mkdir(parents=True)
    (root / "channel.json").write_text("{}")
    (root / ".channel.json.x.tmp").write_text("partial")
    (root / "sub" / "f").write_text("nested")
    (tmp_path / "secret").write_text("outside")
    with ChannelServer(root) as server:
        first = fetch(server.url + "channel.json")
        assert first.data == b"{}" and first.validator and first.validator.startswith("etag:")
        assert fetch(server.url + "channel.json", first.validator).data is None  # 304
        for path in ("", "sub", "sub/f", "..%2fsecret", "%2e%2e/secret", ".channel.json.x.tmp"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(server.url + path, timeout=5)
            assert info.value.code == 404, path
            info.value.close()
        with pytest.raises(ChannelError, match="HTTP 404"):
            fetch(server.url + "missing.torrent")
    # file:// and plain paths, with change detection on mtime and size
    local = fetch(f"file://{root}/channel.json")
    assert local.data == b"{}"
    assert fetch(str(root / "channel.json"), local.validator).data is None


# Rollouts through the channel -----------------------------------------------------


def test_channel_rollout_stages_everywhere_activates_by_wave_and_halts(
    pub: Publisher, tmp_path: Path
) -> None:
    """Five agents; v2 rolls out in waves 25%,100%: every agent installs it at
    once, the wave's agents switch (one of them fails its health check and
    switches back), the next wave switches the rest without a download, and a
    halt sends them all back to v1."""
    from roost.agent import Agent
    from roost.channel import halt_rollout, host_rank, next_wave, read_channel_dir

    names = [f"web-{i}" for i in range(40)]
    ranks = {n: host_rank("default", "v2", n) for n in names}
    canaries = [n for n in names if ranks[n] < 0.25][:2]
    rest = [n for n in names if ranks[n] >= 0.25][:3]
    assert len(canaries) == 2 and len(rest) == 3
    hosts = canaries + rest
    sick = canaries[0]
    health = 'test "$(cat version.txt)" = v1 || test ! -e ../../SICK'

    def cycle(name: str) -> str:
        dest = tmp_path / name
        config = agent_config(pub, dest, host=name, health=health, health_timeout=10)
        with Agent(config) as agent:
            return agent.cycle()

    def current(name: str) -> str:
        return os.readlink(tmp_path / name / "current")

    pub.publish("v1")
    assert all(cycle(n) == "activated" for n in hosts)
    (tmp_path / sick / "SICK").touch()
    pub.publish("v2", waves=(25.0, 100.0))
    doc = json.loads((pub.dir / "channel.json").read_text())
    assert doc["current"] == "v1" and doc["rollout"] == {"tag": "v2", "waves": [25, 100], "wave": 1}
    outcomes = {n: cycle(n) for n in hosts}
    assert outcomes == {
        n: "rejected" if n == sick else "activated" if n in canaries else "unchanged" for n in hosts
    }
    for n in hosts:
        assert current(n) == ("releases/v2" if n in canaries[1:] else "releases/v1"), n
        assert (tmp_path / n / "releases" / "v2" / "version.txt").read_text() == "v2\n"  # staged
    assert "health check" in state(tmp_path / sick)["rejected"]["error"]
    # Undone, not switched forward: a later `roost rollback` never picks v2.
    assert activation.previous(tmp_path / sick) is None

    channel = next_wave(pub.dir)
    assert channel.rollout is not None and channel.rollout.wave == 2
    pub.stop_seeding()  # the next wave needs no download: v2 is installed everywhere
    assert {n: cycle(n) for n in rest} == {n: "activated" for n in rest}
    assert all(current(n) == "releases/v2" for n in rest)
    assert cycle(sick) == "rejected" and current(sick) == "releases/v1"

    halt_rollout(pub.dir)
    assert read_channel_dir(pub.dir).current == "v1"  # type: ignore[union-attr]
    assert all(cycle(n) in ("activated", "unchanged") for n in hosts)
    assert all(current(n) == "releases/v1" for n in hosts)


def test_publish_waves_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from roost.cli import main

    src = make_tree(tmp_path / "src")
    base = ["publish", "--channel-dir", str(tmp_path / "ch")]
    assert main([*base, str(src), "--tag", "v1"]) == 0
    assert main([*base, "--next-wave"]) == 2
    assert "has no rollout in progress" in capsys.readouterr().err
    assert main([*base, str(src), "--tag", "v2", "--waves", "1,100%"]) == 2
    assert "percentages ending at 100%" in capsys.readouterr().err
    assert main([*base, str(src), "--tag", "v2", "--waves", "10%,50%,100%"]) == 0
    assert "rolling out to 10% of the agents" in capsys.readouterr().out
    assert main([*base, str(src), "--tag", "v3", "--waves", "100%"]) == 2
    assert "is rolling out v2" in capsys.readouterr().err
    assert main([*base, "--next-wave"]) == 0
    assert "v2 wave 2 of 3 open (50% of the agents)" in capsys.readouterr().out
    assert main([*base, "--next-wave"]) == 0 and main([*base, "--next-wave"]) == 0
    assert "rollout done; current is now v2" in capsys.readouterr().out
    assert main([*base, str(src), "--tag", "v3", "--waves", "50%,100%"]) == 0
    assert main([*base, "--halt"]) == 0
    assert "rollout halted; current is v2" in capsys.readouterr().out
    # A rollback is at once: waves given with it would be ignored, so they are refused.
    assert main([*base, "--rollback-to", "v1", "--waves", "10%,100%"]) == 2
    assert "--rollback-to takes no SRC, --tag or --waves" in capsys.readouterr().err
    assert main([*base, "--next-wave", "--halt"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_a_channel_server_names_a_directory_that_is_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "channel.json"
    a_file.write_text("{}")
    with pytest.raises(UsageError, match=r"channel directory .* is not a directory"):
        ChannelServer(a_file)
    with pytest.raises(UsageError, match=r"channel directory .* does not exist"):
        ChannelServer(tmp_path / "missing")

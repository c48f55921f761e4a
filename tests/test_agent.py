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
from tests.release_kit import make_tree, snapshot

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
from roost.errors import ChannelError, UsageError

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

    def publish(self, tag: str, *, seed: bool = True, feed: bool = False) -> Any:
        from roost.seeder import SeedConfig, SeederThread

        feed_port = free_port() if feed else None
        release = publish(
            self.source(tag),
            tag,
            self.dir,
            announce=[self.tracker.announce_url],
            feed=f"http://127.0.0.1:{feed_port}/" if feed_port else None,
        )
        if seed:
            self.seeders[tag] = SeederThread(
                SeedConfig(
                    torrent=release.torrent,
                    payload_dir=release.payload.parent,
                    listen_interface="127.0.0.1",
                    feed_port=feed_port,
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


def test_an_agent_takes_its_pieces_from_the_channels_feed(
    pub: Publisher, tmp_path: Path, roost_procs: Start
) -> None:
    release = pub.publish("v1", feed=True)
    doc = json.loads((pub.dir / "channel.json").read_text())
    assert doc["releases"][0]["feed"].startswith("http://127.0.0.1:")
    dest = tmp_path / "opt-app"
    rc, _out, err = once(roost_procs, *agent_args(pub, dest, "--once"))
    assert rc == 0, err
    assert snapshot(dest / "current") == snapshot(pub.root / "src-v1", skip_git=True)
    seeder = pub.seeders["v1"].seeder
    stats = seeder.feed.stats(seeder.info_hash)
    assert stats.done and stats.bytes_sent == release.total_size  # one copy, from the feed
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
    wait_for(lambda: (dest_a / "current").is_symlink(), 30, "host A to activate v1")
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
    assert sum("error: channel.json is not valid JSON" in line for line in lines) >= 1
    assert lines[-1].endswith("roost agent: stopped")
    resume = dest_a / ".roost-cache" / release.info_hash / f"{release.info_hash}.resume"
    assert resume.is_file()


def test_sigterm_mid_download_saves_resume_data_and_a_restart_finishes(
    pub: Publisher, tmp_path: Path, roost_procs: Start
) -> None:
    from tests.conftest import random_file

    dest = tmp_path / "dest"
    source = pub.source("big")
    random_file(source / "blob.bin", 2 * 1024 * 1024, seed=7)
    release = publish(source, "v1", pub.dir, announce=[pub.tracker.announce_url])
    from roost.seeder import SeedConfig, SeederThread

    pub.seeders["v1"] = SeederThread(
        SeedConfig(release.torrent, release.payload.parent, listen_interface="127.0.0.1")
    )
    slow = agent_args(pub, dest, "--interval", "0.5", "--download-limit", "256K")
    daemon = roost_procs(*slow)
    work = dest / ".roost-cache" / release.info_hash
    wait_for(lambda: (work / "v1.tar").exists(), 15, "the download to start")
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
        channel=pub.url, dest=dest, listen_interface="127.0.0.1", download_timeout=20, **kw
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
        assert rc == 2 and "another roost agent is running" in err

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
    with pytest.raises(UsageError, match="is unreadable"):
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
    assert sorted(os.listdir(tmp_path / "ch")) == ["channel.json", "v1.tar", "v1.torrent"]


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

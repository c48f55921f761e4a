"""Issue 12, classes 1 and 7: hostile structured input is one line of error.

Documents nested far past Python's recursion limit (manifests, channels,
inventories, roost.toml, state files), inventories that parse but could not
work (bad ports, control characters, huge ranges, cycles) and very long
lines, all fed for real: files on disk, the real CLI where a user would meet
them, a real agent daemon.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import shlex
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from roost import bencode
from roost.agent.state import AgentState
from roost.channel import parse_channel
from roost.errors import (
    AgentStateError,
    ChannelError,
    ConfigError,
    ReleaseError,
    StateFileError,
)
from roost.extract import install_release
from roost.fleet.config import load_config
from roost.fleet.inventory import load_inventory
from roost.fleet.inventory_formats import _split_vars
from roost.manifest import MANIFEST_NAME
from roost.metainfo import read_torrent_file
from roost.tracker.store import load_state

Start = Callable[..., subprocess.Popen[bytes]]
DEEP = 100_000


def deep_json(prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    return prefix + b"[" * DEEP + b"]" * DEEP + suffix


def hostile_release(
    tmp_path: Path, manifest: bytes, announce: str = "http://127.0.0.1:1/announce"
) -> tuple[Path, Path]:
    """A tar release whose last member is ``manifest``, and a torrent that
    authenticates it (so only the manifest's parser stands in the way)."""
    payload = tmp_path / "evil.tar"
    member = tarfile.TarInfo(MANIFEST_NAME)
    member.size = len(manifest)
    with tarfile.open(payload, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(member, io.BytesIO(manifest))
    data = payload.read_bytes()
    piece = 256 * 1024
    pieces = b"".join(
        hashlib.sha1(data[i : i + piece]).digest() for i in range(0, len(data), piece)
    )
    info = {
        b"name": b"evil.tar",
        b"length": len(data),
        b"piece length": piece,
        b"pieces": pieces,
        b"x-roost": {
            b"v": 1,
            b"tag": b"evil",
            b"kind": b"tar",
            b"manifest-sha256": hashlib.sha256(manifest).hexdigest().encode(),
        },
    }
    torrent = tmp_path / "evil.torrent"
    torrent.write_bytes(bencode.encode({b"announce": announce.encode(), b"info": info}))
    return payload, torrent


def run(start: Start, *args: str, timeout: float = 60) -> tuple[int, str]:
    proc = start(*args)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode()


def assert_one_line(err: str, *needles: str) -> None:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], err


# ------------------------------------------------------- class 1: nesting


def test_verify_of_a_deeply_nested_manifest_is_one_line(tmp_path: Path, roost_procs: Start) -> None:
    manifest = deep_json(b'{"version": 1, "tag": "evil", "entries": ', b"}")
    payload, torrent = hostile_release(tmp_path, manifest)
    (tmp_path / "target").mkdir()
    rc, err = run(
        roost_procs, "verify", str(tmp_path / "target"), "--torrent", str(torrent),
        "--payload", str(payload),
    )  # fmt: skip
    assert rc != 0
    assert_one_line(err, f"{MANIFEST_NAME}:1: nested deeper than 100 levels")


def test_installing_a_deeply_nested_manifest_writes_nothing(tmp_path: Path) -> None:
    """The path ``roost peer`` and the agent take after the download."""
    payload, torrent = hostile_release(tmp_path, deep_json(b'{"version": 1, "entries": '))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ReleaseError, match="nested deeper than") as caught:
        install_release(payload, read_torrent_file(torrent), dest)
    assert "\n" not in str(caught.value)
    assert list(dest.iterdir()) == []


@contextlib.contextmanager
def hostile_swarm(tmp_path: Path) -> Iterator[Path]:
    """A real tracker and libtorrent seeder serving a release whose manifest is
    nested 100,000 deep; yields its torrent."""
    from roost.seeder import SeedConfig, SeederThread, origin_engine
    from roost.tracker import TrackerConfig, run_tracker_in_thread

    tracker = run_tracker_in_thread(TrackerConfig(port=0, interval=2, min_interval=1))
    try:
        seed = tmp_path / "seed"
        seed.mkdir()
        manifest = deep_json(b'{"version": 1, "tag": "evil", "entries": ', b"}")
        _, torrent = hostile_release(seed, manifest, tracker.announce_url)
        config = SeedConfig(
            torrent=torrent, payload_dir=seed, engine=origin_engine(listen_interface="127.0.0.1")
        )
        seeder = SeederThread(config)
        try:
            yield torrent
        finally:
            seeder.stop()
    finally:
        tracker.stop()


def test_roost_peer_refuses_a_deeply_nested_manifest_after_the_download(
    tmp_path: Path, roost_procs: Start
) -> None:
    dest = tmp_path / "dest"
    with hostile_swarm(tmp_path) as torrent:
        rc, err = run(
            roost_procs, "peer", str(torrent), "--dest", str(dest), "--temp-path",
            str(tmp_path / "temp"), "--linger", "0", "--timeout", "60",
        )  # fmt: skip
    assert rc != 0
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error" in line]  # after progress lines
    assert errors == [f"roost: error: {MANIFEST_NAME}:1: nested deeper than 100 levels"], err
    assert not dest.exists() or list(dest.iterdir()) == []


def test_agent_daemon_survives_a_deeply_nested_release(tmp_path: Path, roost_procs: Start) -> None:
    channel, dest = tmp_path / "channel", tmp_path / "dest"
    channel.mkdir()
    with hostile_swarm(tmp_path) as torrent:
        (channel / "evil.torrent").write_bytes(torrent.read_bytes())
        entry = {"tag": "evil", "info_hash": read_torrent_file(torrent).info_hash}
        entry |= {"torrent": "evil.torrent", "published": 1.0}
        doc = {"version": 1, "channel": "evil", "releases": [entry], "current": "evil"}
        (channel / "channel.json").write_text(json.dumps(doc))
        daemon = roost_procs(
            "agent", "--channel", str(channel), "--dest", str(dest), "--interval", "0.3",
            "--listen", "127.0.0.1", "--download-timeout", "30",
        )  # fmt: skip
        wait_for_error(dest, "nested deeper than 100 levels")
        time.sleep(1)  # more polls of the same bad release
        assert daemon.poll() is None, "the daemon died on a deep release"
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=15)
    assert daemon.returncode == 0
    assert "Traceback" not in err.decode()
    assert not (dest / "current").exists()


def wait_for_error(dest: Path, needle: str, timeout: float = 30) -> None:
    """Until the agent's state file records an error containing ``needle``."""
    state = dest / ".roost-agent.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = json.loads(state.read_text()) if state.exists() else {}
        if needle in str(doc.get("last_error")) + str(doc.get("rejected")):
            return
        time.sleep(0.1)
    raise AssertionError(f"the agent never recorded {needle!r}")


def test_deep_channel_documents_are_channel_errors() -> None:
    with pytest.raises(ChannelError, match=r"^channel.json:1: nested deeper than 100 levels$"):
        parse_channel(deep_json(b'{"version": 1, "releases": ', b"}"))
    with pytest.raises(ChannelError, match=r"^channel.json:1: nested deeper"):
        parse_channel(b'{"a": ' + b'{"a": ' * DEEP)
    with pytest.raises(ChannelError, match=r"^channel.json:3: not valid JSON"):
        parse_channel(b'{"version": 1,\n"channel": "c",\n"releases": ]}')
    # brackets inside strings are not nesting
    name = "x" + "[" * 1000
    with pytest.raises(ChannelError, match="bad channel name"):
        parse_channel(json.dumps({"version": 1, "channel": name, "releases": []}).encode())


def test_agent_daemon_survives_a_deeply_nested_channel(tmp_path: Path, roost_procs: Start) -> None:
    channel, dest = tmp_path / "channel", tmp_path / "dest"
    channel.mkdir()
    (channel / "channel.json").write_bytes(deep_json())
    rc, err = run(roost_procs, "agent", "--channel", str(channel), "--dest", str(dest), "--once")
    assert rc != 0
    assert_one_line(err, "channel.json:1: nested deeper than 100 levels")

    (dest / ".roost-agent.json").unlink()  # wait below for the daemon's own record of it
    daemon = roost_procs(
        "agent", "--channel", str(channel), "--dest", str(dest), "--interval", "0.2",
        "--listen", "127.0.0.1",
    )  # fmt: skip
    wait_for_error(dest, "channel.json:1: nested deeper than 100 levels")
    time.sleep(0.6)  # a few more polls of the same bad document
    assert daemon.poll() is None, "the daemon died on a deep channel"
    daemon.send_signal(signal.SIGTERM)
    _, err_b = daemon.communicate(timeout=15)
    assert daemon.returncode == 0
    assert "Traceback" not in err_b.decode()


def test_deep_yaml_inventory_is_named_by_roost_deploy(tmp_path: Path, roost_procs: Start) -> None:
    inventory = tmp_path / "deep.yml"
    inventory.write_text("all:\n  vars:\n    x: " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "src").mkdir()
    rc, err = run(roost_procs, "deploy", "-i", str(inventory), str(tmp_path / "src"))
    assert rc != 0
    assert_one_line(err, f"{inventory}:3: nested deeper than 100 levels")


def test_deep_roost_toml_is_named_with_its_line(tmp_path: Path, roost_procs: Start) -> None:
    config = tmp_path / "roost.toml"
    config.write_text('default_tag = "v1"\n# [[[[ a comment is not nesting\nx = ' + "[" * 3000)
    with pytest.raises(ConfigError, match=rf"^{config}:3: nested deeper than 100 levels$"):
        load_config(config)
    (tmp_path / "hosts").write_text("web1\n")
    (tmp_path / "src").mkdir()
    rc, err = run(
        roost_procs, "deploy", "--config", str(config), "-i", str(tmp_path / "hosts"),
        str(tmp_path / "src"),
    )  # fmt: skip
    assert rc != 0
    assert_one_line(err, f"{config}:3: nested deeper")


def test_yaml_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["all:", "  vars:", "    l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    (tmp_path / "bomb.yml").write_text("\n".join(lines) + "\n  hosts: {web1: }\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"bomb.yml:\d+: aliases repeat more than"):
        load_inventory(tmp_path / "bomb.yml")
    assert time.monotonic() - started < 5


def test_deep_state_files_are_one_line_errors(tmp_path: Path) -> None:
    tracker_state = tmp_path / "tracker.json"
    tracker_state.write_bytes(deep_json(b'{"format": "roost-tracker", "swarms": ', b"}"))
    with pytest.raises(StateFileError, match="line 1: nested deeper than 100 levels"):
        load_state(tracker_state)
    (tmp_path / ".roost-agent.json").write_bytes(deep_json(b'{"installed": ', b"}"))
    with pytest.raises(AgentStateError, match=r"agent state is unreadable: .*:1: nested deeper"):
        AgentState.load(tmp_path)


# ------------------------------------------------------- class 7: inventories


@pytest.mark.parametrize(
    ("name", "text", "where", "message"),
    [
        ("a.ini", "[web]\nweb1\nweb2:99999\n", "a.ini:3:", "port 99999 out of range"),
        ("b.ini", "[web]\nweb1 ansible_port=0\n", "b.ini:2:", "port 0 out of range"),
        ("c.ini", "[web]\nweb1 ansible_port=22x\n", "c.ini:2:", "is not a number"),
        ("d.ini", "[web]\nwe\x00b1\n", "d.ini:2:", "control or space character"),
        ("e.ini", "[web]\nweb1 ansible_host=-oProxyCommand=x\n", "e.ini:2:", "not a host name"),
        ("f.ini", "[web]\nweb1 ansible_user=-oX\n", "f.ini:2:", "not a user name"),
        ("g.yml", "all:\n  hosts:\n    a:\n    b: {ansible_port: 70000}\n", "g.yml:4:", "70000"),
        ("h.yml", 'all:\n  hosts:\n    "a\\tb":\n', "h.yml:3:", "control or space"),
        ("i.ini", "[web]\nweb[1:5:0]\n", "i.ini:2:", "bad step"),
        ("l.yml", "all:\n  hosts:\n    web1: {22: x}\n", "l.yml:3:", "22 is not a string"),
        ("m.yml", "all:\n  vars:\n    1: x\n  hosts: {web1: }\n", "m.yml:3:", "not a string"),
        ("j.ini", "[web]\nw\n[all:children]\nweb\n\nnope\n", "j.ini:6:", "unknown child group"),
        ("k.ini", "[a]\nh\n[a:children]\nb\n[b:children]\nc\n[c:children]\na\n", "k.ini:8:",
         "its own child"),
    ],
)  # fmt: skip
def test_inventory_problems_are_named_with_file_and_line(
    tmp_path: Path, name: str, text: str, where: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_inventory(tmp_path / name)
    assert str(caught.value).startswith(f"{tmp_path / name}:{where.split(':')[1]}:"), caught.value
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_port_out_of_range_is_named_by_roost_deploy(tmp_path: Path, roost_procs: Start) -> None:
    (tmp_path / "hosts").write_text("[peers]\nweb1\nweb2:99999\n")
    (tmp_path / "src").mkdir()
    rc, err = run(roost_procs, "deploy", "-i", str(tmp_path / "hosts"), str(tmp_path / "src"))
    assert rc != 0
    assert_one_line(err, f"{tmp_path / 'hosts'}:3: host 'web2:99999': port 99999 out of range")


def test_a_huge_host_range_is_refused_at_once(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("[web]\nweb[0:99999999]\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"hosts:2: host pattern .* more than 100000 hosts"):
        load_inventory(tmp_path / "hosts")
    (tmp_path / "hosts").write_text("[web]\nweb[0:999][0:999]\n")
    with pytest.raises(ConfigError, match="more than 100000 hosts"):
        load_inventory(tmp_path / "hosts")
    assert time.monotonic() - started < 2  # not 100 million names first
    (tmp_path / "hosts").write_text("[web]\nweb[001:100]\nweb[a:c]-[1:2]\n")
    names = [h.name for h in load_inventory(tmp_path / "hosts").hosts]
    assert names[:2] == ["web001", "web002"] and len(names) == 106
    assert names[-2:] == ["webc-1", "webc-2"]


def test_a_lattice_of_groups_costs_its_size_not_its_paths(tmp_path: Path) -> None:
    """40 levels of two groups, each the child of both above: 2**40 paths."""
    text = "[g0a]\nh1\n[g0b]\nh2\n"
    for i in range(1, 41):
        for side in "ab":
            text += f"[g{i}{side}:children]\ng{i - 1}a\ng{i - 1}b\n"
    text += "[peers:children]\ng40a\n"
    (tmp_path / "hosts").write_text(text)
    started = time.monotonic()
    inventory = load_inventory(tmp_path / "hosts")
    assert time.monotonic() - started < 2
    assert [h.name for h in inventory.peers] == ["h1", "h2"]
    assert {"g0a", "g40a", "g40b", "peers"} <= inventory.peers[0].groups


@pytest.mark.parametrize("order", ["parents last", "parents first"])
def test_a_long_chain_of_groups_is_refused_with_its_line(tmp_path: Path, order: str) -> None:
    """g1 has child g0, g2 has g1, ... 5,000 deep, however the sections are ordered."""
    steps = range(1, 5000) if order == "parents last" else range(4999, 0, -1)
    text = "[g0]\nh\n" + "".join(f"[g{i}:children]\ng{i - 1}\n" for i in steps)
    (tmp_path / "hosts").write_text(text)
    with pytest.raises(ConfigError, match=r"hosts:\d+: groups nested deeper than 50") as caught:
        load_inventory(tmp_path / "hosts")
    line = int(str(caught.value).split(":")[1])
    assert text.splitlines()[line - 1] in ("g49", "g50")  # the child that made it too deep
    (tmp_path / "hosts").write_text(
        "[g0]\nh\n" + "".join(f"[g{i}:children]\ng{i - 1}\n" for i in range(1, 50))
    )
    assert [h.name for h in load_inventory(tmp_path / "hosts").hosts] == ["h"]


def _parse_seconds(path: Path, text: str) -> float:
    path.write_text(text)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        with contextlib.suppress(ConfigError):
            load_inventory(path)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize(
    "line",
    [
        lambda n: "web1 " + "a=1 " * (n // 4),  # many variables
        lambda n: "web1 note=" + "x" * n,  # one long value
        lambda n: "web1 note='" + "x y" * (n // 3) + "'",  # one long quoted value
        lambda n: "x" * n,  # a long host name (refused, quickly)
        lambda n: "[all:vars]\nnote=a" + " " * n + "b\n[web]\nweb1",  # spaces in a value
    ],
    ids=["vars", "value", "quoted", "hostname", "spaces"],
)
def test_a_long_line_parses_in_linear_time(tmp_path: Path, line: Callable[[int], str]) -> None:
    one = _parse_seconds(tmp_path / "hosts", "[web]\n" + line(1 << 20) + "\n")
    two = _parse_seconds(tmp_path / "hosts", "[web]\n" + line(2 << 20) + "\n")
    assert one < 1.5, f"1 MiB line took {one:.2f} s"  # quadratic was 27 s
    assert two < 3 * one + 0.2, f"1 MiB: {one:.3f} s, 2 MiB: {two:.3f} s (not linear)"


def test_word_splitting_agrees_with_shlex() -> None:
    """The linear splitter is shlex.split(comments=True), seeded random lines."""
    rng = random.Random(1212)
    alphabet = ["a", "b", "=", " ", "\t", "'", '"', "\\", "#", "x y", "é"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        try:
            expected: list[str] | None = shlex.split(text, comments=True)
        except ValueError:
            expected = None
        try:
            got: list[str] | None = _split_vars(text, "p", 1)
        except ConfigError as exc:
            assert str(exc).startswith("p:1: cannot split line")
            got = None
        assert got == expected, repr(text)

"""``roost tracker`` as a real process: start, announce, SIGTERM saves state; bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest

from roost import bencode

IH = "cd" * 20


def roost(*args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "roost", "tracker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[arg-type]
    )


def announce(url: str, **extra: str) -> dict:
    q = {
        "info_hash": quote_from_bytes(bytes.fromhex(IH), safe=""),
        "peer_id": "-XX0000-000000000001",
        "port": "7001",
        "left": "5",
        "event": "started",
    }
    q.update(extra)
    sep = "&" if "?" in url else "?"
    full = url + sep + "&".join(f"{k}={v}" for k, v in q.items())
    with urllib.request.urlopen(full, timeout=10) as resp:
        return bencode.decode(resp.read())


def test_foreground_tracker_saves_state_on_sigterm(tmp_path: Path) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text(f"# deploys\n{IH} v42 tok42\n")
    locality = tmp_path / "locality.txt"
    locality.write_text("127.0.0.0/8 dc=dc-local rack=r1\n")
    state = tmp_path / "state.json"
    proc = roost(
        "--port",
        "0",
        "--interval",
        "2",
        "--state",
        str(state),
        "--allow-list",
        str(allow),
        "--locality",
        str(locality),
        "--stats-allow",
        "127.0.0.0/8",
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("roost tracker: announce URL http://127.0.0.1:"), line
        url = line.split()[-1]
        assert url.endswith("/announce")
        d = announce(url)
        assert b"missing token" in d[b"failure reason"]
        d = announce(url, token="tok42")
        assert (d[b"interval"], d[b"min interval"], d[b"incomplete"]) == (2, 1, 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    saved = json.loads(state.read_text())
    (swarm,) = saved["swarms"]
    assert (swarm["info_hash"], swarm["tag"], swarm["registered"]) == (IH, "v42", True)
    (peer,) = swarm["peers"]
    assert (peer["port"], peer["dc"], peer["rack"]) == (7001, "dc-local", "r1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--allow", "nothex"], "is not 40 hex digits"),
        (["--dc", "10.0.0.0/8"], "expected CIDR=NAME"),
        (["--rack", "300.0.0.0/8=r1"], "not a network"),
        (["--stats-allow", "everyone"], "not a network"),
        (["--interval", "0"], "interval"),
        (["--stats-ttl", "61"], "bad stats ttl"),
        (["--stats-ttl", "-1"], "bad stats ttl"),
        (["--cross-dc", "-1"], "cross_dc_min"),
        (["--allow-list", "/nonexistent/allow"], "cannot read allow-list"),
        (["--state", "{state}"], "not valid JSON"),
        (["--allow-list", "{bad_allow}"], ":2: "),
        (["--locality", "{bad_locality}"], "bad field"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "state").write_text("{oops")
    (tmp_path / "allow").write_text(f"{IH}\nzz\n")
    (tmp_path / "loc").write_text("10.0.0.0/8 datacenter=x\n")
    paths = {
        "state": tmp_path / "state",
        "bad_allow": tmp_path / "allow",
        "bad_locality": tmp_path / "loc",
    }
    args = [a.format(**paths) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "roost", "tracker", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("roost: error: ")
    assert message in lines[0]


@pytest.mark.parametrize(("ttl", "seen_after_second_peer"), [("0", 2), ("30", 1)])
def test_stats_ttl_flag(ttl: str, seen_after_second_peer: int) -> None:
    """--stats-ttl 0 builds /stats.json per request; 30 serves the first snapshot again."""
    proc = roost("--port", "0", "--stats-ttl", ttl)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        stats = url.replace("/announce", "/stats.json")

        def peers() -> int:
            with urllib.request.urlopen(stats, timeout=10) as resp:
                return sum(len(s["peers"]) for s in json.loads(resp.read())["swarms"])

        announce(url)
        assert peers() == 1
        announce(url, peer_id="-XX0000-000000000002")
        assert peers() == seen_after_second_peer
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()

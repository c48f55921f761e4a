"""Bootstrap relays: who sends a host its wheels, the host-side fetch with its
sha256 check against a real ``roost origin serve``, and the remote helper's
``--ready-log`` that learns the relay's URL. The whole relay bootstrap over
real sshd hosts is in ``test_fleet_e2e.py``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roost.fleet.bootstrap import FETCH, Relay, Sources

pytestmark = pytest.mark.timeout(60)


def test_the_controller_serves_at_most_direct_hosts_and_relays_are_preferred() -> None:
    async def scenario() -> None:
        src = Sources(direct=2)
        first = await src.acquire("k")
        second = await src.acquire("k")
        assert first is None and second is None  # both from the controller
        third = asyncio.ensure_future(src.acquire("k"))
        await asyncio.sleep(0.01)
        assert not third.done()  # the controller is busy: wait
        await src.add("k", Relay("h1", "http://h1"), 2)
        assert await asyncio.wait_for(third, 1) == Relay("h1", "http://h1")
        # another target's hosts cannot use that relay
        other = asyncio.ensure_future(src.acquire("other"))
        await asyncio.sleep(0.01)
        assert not other.done()
        await src.release("k", None)
        assert await asyncio.wait_for(other, 1) is None
        # relays first, then the controller; a host told to avoid relays waits
        assert await src.acquire("k") == Relay("h1", "http://h1")
        avoid = asyncio.ensure_future(src.acquire("k", relays=False))
        await asyncio.sleep(0.01)
        assert not avoid.done()
        await src.release("k", None)
        assert await asyncio.wait_for(avoid, 1) is None

    asyncio.run(scenario())


def test_a_failed_relay_is_dropped_with_all_its_slots() -> None:
    async def scenario() -> None:
        src = Sources(direct=1)
        await src.add("k", Relay("bad", "http://bad"), 3)
        await src.add("k", Relay("good", "http://good"), 1)
        taken = await src.acquire("k")
        assert taken == Relay("bad", "http://bad")
        await src.release("k", taken, failed=True)
        assert await src.acquire("k") == Relay("good", "http://good")
        assert await src.acquire("k") is None  # the controller, not "bad"

    asyncio.run(scenario())


def _origin(root: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "roost", "origin", "serve", str(root), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line.rsplit(" at ", 1)[1].strip().rstrip("/")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def _fetch(url: str, dest: Path, want: list[tuple[str, str]]) -> subprocess.CompletedProcess[str]:
    # the host's own python3, roost not importable: -I ignores the editable install's paths
    argv = ["python3", "-I", "-c", FETCH, url, str(dest), json.dumps(want)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_host_fetch_keeps_only_wheels_whose_sha256_matches(tmp_path: Path) -> None:
    relay = tmp_path / "relay"
    relay.mkdir()
    wheels = {"a-1.0-py3-none-any.whl": b"A" * 300_000, "b+local-2.0.whl": b"B" * 10}
    for name, data in wheels.items():
        (relay / name).write_bytes(data)
    want = [(n, hashlib.sha256(d).hexdigest()) for n, d in wheels.items()]
    proc, url = _origin(relay)
    try:
        good = tmp_path / "good"
        good.mkdir()
        r = _fetch(url, good, want)
        assert r.returncode == 0, r.stderr
        assert {p.name: p.read_bytes() for p in good.iterdir()} == wheels

        # a relay serving other bytes than the controller's list says
        (relay / "b+local-2.0.whl").write_bytes(b"tampered")
        bad = tmp_path / "bad"
        bad.mkdir()
        r = _fetch(url, bad, want)
        assert r.returncode == 1
        assert r.stderr.strip().splitlines() == [f"b+local-2.0.whl from {url}: sha256 mismatch"]
        assert sorted(p.name for p in bad.iterdir()) == ["a-1.0-py3-none-any.whl"]
    finally:
        _stop(proc)
    r = _fetch(url, tmp_path / "good", want)  # nobody listens any more
    assert r.returncode == 1 and r.stderr.startswith("cannot fetch a-1.0-py3-none-any.whl")


def test_origin_lifetime_ends_a_forgotten_relay(tmp_path: Path) -> None:
    proc, _ = _origin(tmp_path, "--lifetime", "0.5")
    try:
        assert proc.wait(10) == 0
    finally:
        _stop(proc)


def test_remote_start_waits_for_a_log_line_and_returns_its_match(tmp_path: Path) -> None:
    temp = tmp_path / "temp"
    helper = [sys.executable, "-m", "roost.fleet.remote"]
    argv = [sys.executable, "-m", "roost", "origin", "serve", str(tmp_path), "--port", "0"]
    start = [*helper, "start", "--ready-log", r"at (https?://\S+)", "--wait", "10"]
    out = subprocess.run(
        [*start, str(temp), "relay", "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )
    try:
        result = json.loads(out.stdout)
        assert result["ok"] and result["match"].startswith("http://127.0.0.1:")
    finally:
        stopped = subprocess.run(
            [*helper, "stop", str(temp), "relay"], capture_output=True, text=True, timeout=30
        )
    assert json.loads(stopped.stdout)["stopped"] == ["relay"]
    # a process that never prints the line is reported, not waited on forever
    started = time.monotonic()
    quiet = [*helper, "start", "--ready-log", "never", "--wait", "1", str(temp), "quiet"]
    out = subprocess.run(
        [*quiet, "--", "sleep", "30"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    subprocess.run([*helper, "stop", str(temp), "quiet"], capture_output=True, timeout=30)
    assert out.returncode == 1 and time.monotonic() - started < 10
    assert "not ready with a log line matching 'never'" in json.loads(out.stdout)["error"]

"""roost.httpfetch.get: one deadline for the whole fetch, a size cap, one-line
errors; and channel.fetch on top of it. Real servers on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from roost import httpfetch
from roost.channel import ChannelServer, fetch
from roost.errors import ChannelError, FetchError
from tests.http_kit import ScriptedServer, drip, elapsed

OK = b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: "e1"\r\n\r\nhello'


def test_a_plain_answer() -> None:
    with ScriptedServer([OK]) as server:
        response = httpfetch.get(server.url + "x?y=1", headers={"If-None-Match": '"e0"'})
    assert (response.status, response.body, response.headers["ETag"]) == (200, b"hello", '"e1"')
    assert server.requests[0].startswith(b"GET /x?y=1 HTTP/1.1\r\n")
    assert b'If-None-Match: "e0"' in server.requests[0]


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(drip(OK + b" and more"), id="headers-drip"),
        pytest.param(
            [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", *drip(b"x" * 100)], id="body-drip"
        ),
        pytest.param(
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", *[b"1\r\nx\r\n"] * 100],
            id="chunked-drip",
        ),
    ],
)
def test_a_slow_drip_ends_at_the_deadline_of_the_whole_fetch(script: list[bytes]) -> None:
    """Every byte comes within a per-read timeout; the whole answer does not."""
    with ScriptedServer(script, delay=0.05) as server:
        start = time.monotonic()
        with pytest.raises(FetchError, match=r"timed out after 1s") as info:
            httpfetch.get(server.url, timeout=1)
        assert 0.9 < elapsed(start) < 3
    assert str(info.value).startswith(f"cannot fetch {server.url}: ")


def test_a_body_over_the_cap_is_refused_by_its_length_or_once_it_is_over() -> None:
    script = [b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"]
    with (
        ScriptedServer(script) as server,
        pytest.raises(FetchError, match="1000 bytes are more than 100"),
    ):
        httpfetch.get(server.url, max_bytes=100)
    with ScriptedServer([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"y" * 1000]) as server:
        with pytest.raises(FetchError, match="sent more than 100 bytes"):
            httpfetch.get(server.url, max_bytes=100)
        assert httpfetch.get(server.url, max_bytes=1000).body == b"y" * 1000


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ([b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"], "HTTP 404 Not Found"),
        ([b"garbage\r\n\r\n"], "bad HTTP answer"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort"], "ended after 5 of 50 bytes"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"], "bad HTTP answer"),
        ([], "closed connection without response"),
    ],
)
def test_bad_answers_are_one_line(script: list[bytes], message: str) -> None:
    with ScriptedServer(script) as server, pytest.raises(FetchError, match=message) as info:
        httpfetch.get(server.url, timeout=5)
    assert "\n" not in str(info.value)
    assert info.value.status == (404 if "404" in message else None)


def test_no_server_and_bad_urls() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchError, match=f"cannot fetch http://127.0.0.1:{port}/: .*refused"):
        httpfetch.get(f"http://127.0.0.1:{port}/", timeout=2)
    for url, message in [
        ("ftp://127.0.0.1/x", "not an http"),
        ("http://127.0.0.1:99999/", "bad port"),
        ("http:///x", "not an http"),
    ]:
        with pytest.raises(FetchError, match=message):
            httpfetch.get(url)


def test_channel_fetch_is_conditional_and_bounded(tmp_path: Path) -> None:
    (tmp_path / "channel.json").write_bytes(b"{}")
    with ChannelServer(tmp_path) as server:
        first = fetch(server.url + "channel.json")
        assert first.data == b"{}" and first.validator and first.validator.startswith("etag:")
        assert fetch(server.url + "channel.json", first.validator).data is None  # 304
    with ScriptedServer(drip(OK), delay=0.2) as server:
        start = time.monotonic()
        with pytest.raises(ChannelError, match=r"^cannot fetch .*: timed out after 1s$"):
            fetch(server.url + "channel.json", timeout=1)
        assert elapsed(start) < 3


def test_channel_fetch_refuses_a_local_fifo_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "channel.json"
    os.mkfifo(fifo)
    start = time.monotonic()
    for url in (str(fifo), f"file://{fifo}"):
        with pytest.raises(ChannelError, match="not a regular file"):
            fetch(url)
    with pytest.raises(ChannelError, match="not a regular file"):
        fetch(str(tmp_path))  # a directory
    assert elapsed(start) < 1


def test_the_fleet_readiness_probe_is_bounded_by_its_wait(tmp_path: Path) -> None:
    """``remote start --ready-url`` against a server dripping its answer: the
    probe gives up at its own 1 s deadline and the wait ends on time."""
    import json
    import subprocess
    import sys

    helper = [sys.executable, "-m", "roost.fleet.remote"]
    temp = tmp_path / "temp"

    def start(name: str, url: str, wait: str) -> subprocess.CompletedProcess[str]:
        argv = [*helper, "start", "--ready-url", url, "--wait", wait, str(temp), name]
        try:
            return subprocess.run(
                [*argv, "--", "sleep", "30"], capture_output=True, text=True, timeout=30
            )
        finally:
            subprocess.run([*helper, "stop", str(temp), name], capture_output=True, timeout=30)

    with ScriptedServer(drip(OK), delay=0.3) as server:
        started = time.monotonic()
        out = start("sleeper", server.url, "2")
        took = elapsed(started)
    assert out.returncode == 1, out.stderr
    assert json.loads(out.stdout)["error"] == f"not ready at {server.url}"
    assert took < 6  # the 2 s wait and one last 1 s probe, not a probe per dripped byte
    with ScriptedServer([OK]) as server:
        assert json.loads(start("ready", server.url, "5").stdout)["ok"] is True

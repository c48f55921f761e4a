"""The bounds every roost HTTP file server has (roost.httpserve, roost.fileserve).

Each property is checked against both the origin and the channel server, real
servers on 127.0.0.1:0 with short limits, fed by raw sockets: escaping
symlinks and special files, idle and slow-header connections, bodies on a
GET, clients that never read, a connection cap and the listen backlog.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import select
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

from roost.channel import ChannelServer
from roost.httpserve import ServerLimits
from roost.origin import OriginConfig, OriginServer

BIG = 16 * 1024 * 1024  # larger than any socket buffer: a client that never reads stalls it
LIMITS = ServerLimits(max_connections=20, idle_timeout=0.5, request_timeout=1.0, send_timeout=1.0)


@dataclass
class Served:
    kind: str
    root: Path
    port: int
    server: Any  # the FileServer under the origin or channel wrapper

    def get(self, path: str, **headers: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return sock


def _make_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "channel.json").write_bytes(b'{"ok": true}')
    with open(root / "big.tar", "wb") as f:
        f.truncate(BIG)
    (tmp_path / "secret").write_bytes(b"the secret")
    (root / "x.json").symlink_to(tmp_path / "secret")
    (root / "passwd").symlink_to("/etc/passwd")
    os.mkfifo(root / "fifo.json")
    return root


@contextlib.contextmanager
def serving(kind: str, root: Path, limits: ServerLimits) -> Iterator[Served]:
    if kind == "origin":
        origin = OriginServer(OriginConfig(root=root, port=0, limits=limits)).start()
        try:
            yield Served("origin", root, origin.port, origin._server)
        finally:
            origin.stop()
    else:
        with ChannelServer(root, limits=limits) as channel:
            yield Served("channel", root, channel.port, channel._server)


@pytest.fixture(params=["origin", "channel"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    with serving(request.param, _make_root(tmp_path), LIMITS) as server:
        yield server


def read_all(sock: socket.socket, timeout: float = 5) -> bytes:
    """Everything until the server closes (fails if it does not within ``timeout``)."""
    sock.settimeout(timeout)
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_serves_a_regular_file(served: Served) -> None:
    assert served.get("/channel.json") == (200, b'{"ok": true}')


@pytest.mark.parametrize("name", ["x.json", "passwd"])
def test_a_symlink_out_of_the_root_is_refused(served: Served, name: str) -> None:
    status, body = served.get(f"/{name}")
    assert status == 404
    assert b"secret" not in body and b"root:" not in body


def test_a_symlink_to_a_hidden_file_or_below_a_flat_root_is_refused(served: Served) -> None:
    """What a link leads to obeys the rules its name would: no dot-file (a
    channel's half-written temporary), and on the flat channel nothing below
    its top; the origin serves its tree."""
    (served.root / ".tmp-channel.json").write_bytes(b"half written")
    (served.root / "sub").mkdir()
    (served.root / "sub" / "y.json").write_bytes(b"below")
    (served.root / "tohidden").symlink_to(".tmp-channel.json")
    (served.root / "tosub").symlink_to("sub/y.json")
    assert served.get("/tohidden")[0] == 404
    assert served.get("/tosub") == ((200, b"below") if served.kind == "origin" else (404, ANY))


def test_special_files_are_refused_without_blocking(served: Served) -> None:
    names = ["fifo.json", "sock.json"]
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(served.root / "sock.json"))
    with contextlib.suppress(PermissionError):  # a device node needs root
        os.mknod(served.root / "zero.tar", stat.S_IFCHR | 0o644, os.makedev(1, 5))
        names.append("zero.tar")  # /dev/zero: an endless answer if it were served
    try:
        for name in names:
            start = time.monotonic()
            assert served.get(f"/{name}")[0] == 404, name
            assert time.monotonic() - start < 2, name
        assert served.get("/channel.json")[0] == 200  # no thread was left hanging on the FIFO
    finally:
        listener.close()


def test_an_idle_connection_is_closed_after_the_idle_timeout(served: Served) -> None:
    with served.connect() as sock:
        start = time.monotonic()
        assert read_all(sock) == b""
        assert 0.3 < time.monotonic() - start < 3


def test_a_keep_alive_connection_is_closed_after_the_idle_timeout(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"GET /channel.json HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"ok": true}')
        assert time.monotonic() - start > 0.3


def test_headers_dripping_in_are_cut_at_the_request_timeout(served: Served) -> None:
    """Each header line comes well within the idle timeout; the whole request does not."""
    with served.connect() as sock:
        start = time.monotonic()
        sock.sendall(b"GET /channel.json HTTP/1.1\r\n")
        took = closed_while_dripping(sock, b"X-Drip: 1\r\n", start, 5)
    assert 0.8 < took < 2.5


def closed_while_dripping(sock: socket.socket, drip: bytes, start: float, seconds: float) -> float:
    """Send ``drip`` every 0.1 s until the server closes; seconds since ``start``."""
    while time.monotonic() - start < seconds:
        try:
            sock.sendall(drip)
            if select.select([sock], [], [], 0.1)[0] and not sock.recv(65536):
                return time.monotonic() - start
        except OSError:
            return time.monotonic() - start
    raise AssertionError(f"still open after {seconds}s")


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 41\r\n", b"Transfer-Encoding: chunked\r\n"],
)
def test_a_get_with_a_body_is_400_and_the_body_is_never_a_request(
    served: Served, framing: bytes
) -> None:
    smuggled = b"GET /channel.json HTTP/1.1\r\nHost: x\r\n\r\n"
    with served.connect() as sock:
        sock.sendall(b"GET /channel.json HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n" + smuggled)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.count(b"HTTP/1.") == 1, answer
    assert b'{"ok": true}' not in answer


def test_other_methods_are_refused_and_their_body_is_never_a_request(served: Served) -> None:
    smuggled = b"GET /channel.json HTTP/1.1\r\nHost: x\r\n\r\n"
    with served.connect() as sock:
        head = f"POST /channel.json HTTP/1.1\r\nHost: x\r\nContent-Length: {len(smuggled)}\r\n\r\n"
        sock.sendall(head.encode() + smuggled)
        answer = read_all(sock)
    assert answer.split(b" ", 2)[1] == b"405"
    assert answer.count(b"HTTP/1.") == 1, answer


@pytest.mark.parametrize(
    "head",
    [
        # a line that is no header ends the stdlib's headers: the rest was a request
        b"GET /channel.json HTTP/1.1\r\nHost: x\r\nbogus header line\r\nContent-Length: 41\r\n",
        # a second Content-Length hid behind a first of 0
        b"GET /channel.json HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 41\r\n",
    ],
)
def test_a_smuggled_body_behind_a_bad_header_is_400_never_a_request(
    served: Served, head: bytes
) -> None:
    smuggled = b"GET /channel.json HTTP/1.1\r\nHost: x\r\n\r\n"
    with served.connect() as sock:
        sock.sendall(head + b"\r\n" + smuggled)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.count(b"HTTP/1.") == 1, answer


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"TRACE /channel.json HTTP/1.1", b"405"),
        (b"FOO /channel.json HTTP/1.1", b"405"),
        (b"GET /channel.json HTTP/2.0", b"505"),
        (b"GET /channel.json", b"400"),  # HTTP/0.9: the file's bytes with no status line
    ],
)
def test_errors_are_one_line_of_text_with_a_status_line(
    served: Served, request_line: bytes, status: bytes
) -> None:
    with served.connect() as sock:
        sock.sendall(request_line + b"\r\nHost: x\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1."), answer
    assert answer.split(b" ", 2)[1] == status, answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"text/plain" in head and body.startswith(status) and body.count(b"\n") == 1, answer
    assert b'{"ok": true}' not in answer


@pytest.mark.parametrize("kind", ["origin", "channel"])
def test_many_idle_connections_do_not_stop_a_real_get(kind: str, tmp_path: Path) -> None:
    """Three times the cap of idle connections (that would stay for 30 s):
    those waiting longest make room, so a real GET is served at once."""
    limits = ServerLimits(max_connections=20, idle_timeout=30, evict_after=0.2)
    with serving(kind, _make_root(tmp_path), limits) as served:
        idle = [served.connect() for _ in range(limits.max_connections)]
        try:
            time.sleep(0.3)
            idle += [served.connect() for _ in range(2 * limits.max_connections)]
            wait_for(lambda: served.server.evicted >= limits.max_connections, 5, "evictions")
            time.sleep(0.3)
            start = time.monotonic()
            assert served.get("/channel.json") == (200, b'{"ok": true}')
            assert time.monotonic() - start < 1
            assert served.server.connections() <= limits.max_connections
        finally:
            for sock in idle:
                sock.close()


def test_a_client_that_never_reads_is_cut_at_the_send_timeout(served: Served) -> None:
    with served.connect() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /big.tar HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: served.server.connections() == 1, 2, "the request to be taken")
        assert served.get("/channel.json")[0] == 200  # meanwhile, others are served
        # Gone after the send timeout (1 s) though the client never read a byte.
        took = wait_for(lambda: served.server.connections() == 0, 5, "the stalled send to end")
        assert took < 4


def test_at_the_cap_with_every_connection_busy_a_newcomer_gets_503(tmp_path: Path) -> None:
    root = _make_root(tmp_path)
    limits = ServerLimits(max_connections=2, idle_timeout=5, send_timeout=5)
    with ChannelServer(root, limits=limits) as channel:
        server: Any = channel._server
        stalled = [socket.create_connection(("127.0.0.1", channel.port)) for _ in range(2)]
        try:
            for sock in stalled:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET /big.tar HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: server.connections() == 2, 2, "both to be answering")
            with socket.create_connection(("127.0.0.1", channel.port), timeout=5) as late:
                start = time.monotonic()
                assert read_all(late).startswith(b"HTTP/1.1 503 ")
                assert time.monotonic() - start < 1
            assert server.refused == 1
        finally:
            for sock in stalled:
                sock.close()


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss: apt-get install iproute2")
def test_the_listen_backlog_takes_a_burst(served: Served) -> None:
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{served.port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(out[2]) >= 128  # Send-Q of a listening socket: its backlog


def test_channel_serve_cli_takes_the_limit_flags(tmp_path: Path) -> None:
    import sys

    root = _make_root(tmp_path)
    bad = subprocess.run(
        [sys.executable, "-m", "roost", "channel", "serve", str(root), "--max-connections", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert bad.stderr == "roost: error: --max-connections must be at least 1, got 0\n"
    argv = ["channel", "serve", str(root), "--port", "0", "--idle-timeout", "0.5"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "roost", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().split(" at ")[-1].strip()
        port = int(url.rsplit(":", 1)[1].strip("/"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            start = time.monotonic()
            assert read_all(sock) == b""
            assert time.monotonic() - start < 3  # closed at the 0.5 s idle timeout, not 60 s
    finally:
        proc.terminate()
        proc.communicate(timeout=10)

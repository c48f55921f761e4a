"""The origin: Range parsing tables, path rules, and a real server on 127.0.0.1:0."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roost.errors import UsageError
from roost.fileserve import (
    UNSATISFIABLE,
    ByteRange,
    if_range_matches,
    parse_range,
    resolve_request_path,
)
from roost.origin import OriginConfig, OriginServer
from tests.http_kit import make_cert

SIZE = 1000

RANGE_TABLE = [
    # header, expected
    (None, None),
    ("bytes=0-0", ByteRange(0, 0)),
    ("bytes=0-499", ByteRange(0, 499)),
    ("bytes=500-999", ByteRange(500, 999)),
    ("bytes=500-", ByteRange(500, 999)),
    ("bytes=900-5000", ByteRange(900, 999)),  # end clamped
    ("bytes=-100", ByteRange(900, 999)),  # suffix
    ("bytes=-5000", ByteRange(0, 999)),  # suffix longer than the file
    ("Bytes = 1-2", ByteRange(1, 2)),  # unit is case-insensitive, spaces tolerated
    ("bytes=999-999", ByteRange(999, 999)),
    ("bytes=1000-", UNSATISFIABLE),
    ("bytes=1000-2000", UNSATISFIABLE),
    ("bytes=-0", UNSATISFIABLE),
    ("bytes=5-4", None),  # last < first: invalid -> ignored
    ("bytes=0-1,5-6", None),  # several ranges: whole file
    ("bytes=", None),
    ("bytes=-", None),
    ("bytes=a-b", None),
    ("bytes=1-2-3", None),
    ("items=0-1", None),  # another unit
    ("0-1", None),
    ("bytes=+1-2", None),
    ("bytes=" + "9" * 30 + "-", None),  # absurd numbers are ignored, not crashed on
]


@pytest.mark.parametrize(("header", "expected"), RANGE_TABLE)
def test_parse_range_table(header: str | None, expected: object) -> None:
    assert parse_range(header, SIZE) == expected


def test_parse_range_empty_file() -> None:
    assert parse_range("bytes=0-", 0) == UNSATISFIABLE
    assert parse_range("bytes=-10", 0) == UNSATISFIABLE
    assert parse_range(None, 0) is None


def test_byte_range_fields() -> None:
    r = ByteRange(10, 19)
    assert r.length == 10
    assert r.content_range(100) == "bytes 10-19/100"


PATH_TABLE = [
    ("/a.tar", ("a.tar",)),
    ("/releases/v1.tar?x=1", ("releases", "v1.tar")),
    ("/v%201.tar", ("v 1.tar",)),
    ("/", None),
    ("", None),
    ("a.tar", None),
    ("/../etc/passwd", None),
    ("/%2e%2e/etc/passwd", None),
    ("/a/../b", None),
    ("/a//b", None),
    ("/.hidden", None),
    ("/.v1.tar.123.tmp", None),
    ("/a/", None),  # directories are never listed
    ("/a%00b", None),
    ("/a%5cb", None),
    ("/%ff", None),  # not UTF-8
]


@pytest.mark.parametrize(("target", "expected"), PATH_TABLE)
def test_resolve_request_path_table(target: str, expected: object) -> None:
    assert resolve_request_path(target) == expected


def test_if_range() -> None:
    assert if_range_matches(None, '"e"', "date")
    assert if_range_matches('"e"', '"e"', "date")
    assert not if_range_matches('"f"', '"e"', "date")
    assert not if_range_matches('W/"e"', '"e"', "date")
    assert if_range_matches("date", '"e"', "date")
    assert not if_range_matches("other date", '"e"', "date")


# A real server -------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(300_000)
    (root / "v1.tar").write_bytes(data)
    (root / "empty").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "x.bin").write_bytes(b"inner")
    (root / ".v2.tar.tmp").write_bytes(b"half written")
    (tmp_path / "secret").write_bytes(b"outside")
    (root / "leak").symlink_to(tmp_path / "secret")
    (root / "inside").symlink_to(root / "sub" / "x.bin")
    with OriginServer(OriginConfig(root=root, port=0)) as server:
        yield server, data


def _request(port: int, method: str, path: str, headers: dict[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_server_ranges(served) -> None:
    server, data = served
    status, headers, body = _request(server.port, "GET", "/v1.tar")
    assert (status, body) == (200, data)
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Length"] == str(len(data))
    etag, modified = headers["ETag"], headers["Last-Modified"]

    status, headers, body = _request(server.port, "GET", "/v1.tar", {"Range": "bytes=100-199"})
    assert (status, body) == (206, data[100:200])
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert headers["ETag"] == etag

    status, headers, body = _request(server.port, "GET", "/v1.tar", {"Range": "bytes=-10"})
    assert (status, body) == (206, data[-10:])

    status, headers, body = _request(server.port, "GET", "/v1.tar", {"Range": "bytes=999999-"})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(data)}"

    # If-Range: a matching validator keeps the range, a stale one gets the whole file.
    status, _, body = _request(
        server.port, "GET", "/v1.tar", {"Range": "bytes=0-9", "If-Range": etag}
    )
    assert (status, body) == (206, data[:10])
    status, _, body = _request(
        server.port, "GET", "/v1.tar", {"Range": "bytes=0-9", "If-Range": modified}
    )
    assert (status, body) == (206, data[:10])
    status, _, body = _request(
        server.port, "GET", "/v1.tar", {"Range": "bytes=0-9", "If-Range": '"stale"'}
    )
    assert (status, body) == (200, data)

    status, headers, body = _request(server.port, "HEAD", "/v1.tar", {"Range": "bytes=5-9"})
    assert (status, body, headers["Content-Length"]) == (206, b"", "5")

    status, headers, body = _request(server.port, "GET", "/empty")
    assert (status, body, headers["Content-Length"]) == (200, b"", "0")


def test_server_keep_alive_pipelined_ranges(served) -> None:
    """libtorrent reuses one connection for many range requests."""
    server, data = served
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for start in range(0, len(data), 65536):
            end = min(start + 65535, len(data) - 1)
            conn.request("GET", "/v1.tar", headers={"Range": f"bytes={start}-{end}"})
            resp = conn.getresponse()
            assert resp.status == 206
            assert resp.read() == data[start : end + 1]
    finally:
        conn.close()


@pytest.mark.parametrize(
    "path",
    [
        "/leak",
        "/.v2.tar.tmp",
        "/sub",
        "/sub/",
        "/",
        "/sub/../v1.tar",
        "/%2e%2e/secret",
        "/missing",
        "/v1.tar/x",
    ],
)
def test_server_refuses(served, path: str) -> None:
    server, _ = served
    status, _, body = _request(server.port, "GET", path)
    assert status == 404
    assert b"outside" not in body and b"inner" not in body


def test_server_serves_inner_symlink_and_subdirs(served) -> None:
    server, _ = served
    assert _request(server.port, "GET", "/inside")[::2] == (200, b"inner")
    assert _request(server.port, "GET", "/sub/x.bin")[::2] == (200, b"inner")


def test_server_read_only_methods(served) -> None:
    server, _ = served
    for method in ("POST", "PUT", "DELETE"):
        status, headers, _ = _request(server.port, method, "/v1.tar")
        assert status == 405
        assert headers["Allow"] == "GET, HEAD"


def test_server_counts_bytes(served) -> None:
    server, data = served
    _request(server.port, "GET", "/v1.tar", {"Range": "bytes=0-999"})
    _request(server.port, "GET", "/v1.tar")
    _request(server.port, "HEAD", "/v1.tar")
    _request(server.port, "GET", "/missing")
    stats = server.stats()
    assert stats.bytes_served == 1000 + len(data)
    assert stats.responses == {206: 1, 200: 2, 404: 1}
    assert stats.clients == {"127.0.0.1": 1000 + len(data)}
    status, _, body = _request(server.port, "GET", "/.roost-origin/stats.json")
    assert status == 200
    assert json.loads(body)["bytes_served"] == 1000 + len(data)


def test_bad_config(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a directory"):
        OriginServer(OriginConfig(root=tmp_path / "nope"))
    with pytest.raises(UsageError, match="both --tls-cert and --tls-key"):
        OriginServer(OriginConfig(root=tmp_path, tls_cert=tmp_path / "c.pem"))
    (tmp_path / "c.pem").write_text("not a cert")
    with pytest.raises(UsageError, match="cannot load TLS certificate"):
        OriginServer(OriginConfig(root=tmp_path, tls_cert=tmp_path / "c.pem", tls_key=tmp_path))
    with (
        OriginServer(OriginConfig(root=tmp_path, port=0)) as first,
        pytest.raises(UsageError, match="cannot listen"),
    ):
        OriginServer(OriginConfig(root=tmp_path, port=first.port)).start()


def test_https(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    (tmp_path / "f.bin").write_bytes(b"0123456789")
    config = OriginConfig(root=tmp_path, port=0, tls_cert=cert, tls_key=key)
    with OriginServer(config) as server:
        assert server.url("f.bin").startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
        conn.request("GET", "/f.bin", headers={"Range": "bytes=2-4"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (206, b"234")
        conn.close()
        # A client that does not trust the certificate is refused by TLS.
        conn = http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=ssl.create_default_context(), timeout=10
        )
        with pytest.raises(ssl.SSLError):
            conn.request("GET", "/f.bin")
        conn.close()
        # A silent client (no TLS handshake) does not block the others.
        import socket

        with socket.create_connection(("127.0.0.1", server.port)):
            conn = http.client.HTTPSConnection(
                "127.0.0.1", server.port, context=context, timeout=10
            )
            conn.request("GET", "/f.bin")
            assert conn.getresponse().read() == b"0123456789"
            conn.close()


def test_cli_serve(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"abc")
    proc = subprocess.Popen(
        [sys.executable, "-m", "roost", "origin", "serve", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("origin serving")
        port = int(line.rsplit(":", 1)[1].strip("/\n"))
        assert _request(port, "GET", "/f.bin")[::2] == (200, b"abc")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert json.loads(out)["origin"]["bytes_served"] == 3
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_cli_bad_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from roost.cli import main

    assert main(["origin", "serve", str(tmp_path / "x"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    expected = f"roost: error: origin root {tmp_path / 'x'} is not a directory"
    assert err.strip().splitlines() == [expected]


def test_rate_limit(tmp_path: Path) -> None:
    """--rate-limit caps the whole origin: 768 KiB at 1 MiB/s (256 KiB burst)
    takes at least half a second, and arrives intact."""
    data = os.urandom(768 * 1024)
    (tmp_path / "f.bin").write_bytes(data)
    with OriginServer(OriginConfig(root=tmp_path, port=0, rate_limit=1024 * 1024)) as server:
        started = time.monotonic()
        status, _, body = _request(server.port, "GET", "/f.bin")
        elapsed = time.monotonic() - started
    assert (status, body) == (200, data)
    assert elapsed >= 0.45, elapsed
    assert server.stats().bytes_served == len(data)

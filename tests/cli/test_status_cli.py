"""`roost status`: the renderer fed stats documents, the fetch against real
HTTP servers on loopback (a plain one for bad answers, the tracker itself)."""

from __future__ import annotations

import http.server
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import roost
from roost.cli import main
from roost.cli.status import (
    fetch_stats,
    is_stalled,
    render_status,
    stats_url,
    swarm_summary,
    validate_stats,
)
from roost.errors import RoostError, TrackerError, UsageError

NOW = 1_700_000_100.0


def peer(host: str | None, state: str, left: int, size: int = 1000, **extra: Any) -> dict:
    p = {
        "peer_id": "2d5254",
        "address": "198.18.0.2",
        "port": 6881,
        "host": host,
        "datacenter": "dc1",
        "rack": "r1",
        "left": left,
        "uploaded": 10,
        "downloaded": size - left,
        "progress": 1 - left / size,
        "state": state,
        "first_seen": NOW - 100,
        "last_seen": NOW - 3,
        "last_progress": NOW - 3,
        "stalled": False,
    }
    p.update(extra)
    return p


def doc(*peers: dict, size: int | None = 1000, rate_down: float = 100.0) -> dict:
    return {
        "tracker": {
            "version": "0.1.0",
            "started": NOW - 3700,
            "now": NOW,
            "announces": 12,
            "interval": 5,
        },
        "swarms": [
            {
                "info_hash": "ab" * 20,
                "tag": "v42",
                "seeders": sum(1 for p in peers if p["state"] == "seeding"),
                "leechers": sum(1 for p in peers if p["state"] == "downloading"),
                "completed": 1,
                "size": size,
                "rate_down": rate_down,
                "rate_up": 50.0,
                "peers": list(peers),
            }
        ],
    }


def test_render_table_has_header_summary_and_rows() -> None:
    d = doc(peer("seed", "seeding", 0), peer("web-01", "downloading", 600))
    lines = render_status(validate_stats(d))
    assert lines[0] == "tracker 0.1.0  up 1h01m  12 announces  1 swarm  2 peers"
    summary = lines[2]
    assert summary.startswith("v42  abababababab  size 1000 B  done 1/2  seeders 1  leechers 1")
    assert "ETA 6s" in summary  # 600 bytes left at 100 B/s
    header = "HOST ADDRESS DC RACK STATE PROGRESS DOWN UP SEEN"
    assert lines[3].split() == header.split()
    # downloading peers first, then seeders
    assert lines[4].split()[:5] == ["web-01", "198.18.0.2:6881", "dc1", "r1", "downloading"]
    assert "[####......]  40.0%" in lines[4]
    assert lines[5].split()[0] == "seed" and "[##########] 100.0%" in lines[5]
    assert not any("STALLED" in line for line in lines)


@pytest.mark.parametrize(
    ("state", "last_progress_age", "stall", "tracker_flag", "expected"),
    [
        ("downloading", 31, 30.0, False, True),
        ("downloading", 29, 30.0, False, False),
        ("seeding", 300, 30.0, False, False),
        ("stopped", 300, 30.0, False, False),
        ("downloading", 1, None, True, True),  # no --stall: trust the tracker
        ("downloading", 999, None, False, False),
    ],
)
def test_stall_rules(
    state: str, last_progress_age: float, stall: float | None, tracker_flag: bool, expected: bool
) -> None:
    p = peer("h", state, 500, last_progress=NOW - last_progress_age, stalled=tracker_flag)
    assert is_stalled(p, now=NOW, stall=stall) is expected


def test_stalled_peer_is_flagged_and_listed_first() -> None:
    d = doc(
        peer("fast", "downloading", 100),
        peer("stuck", "downloading", 900, last_progress=NOW - 75),
        peer("seed", "seeding", 0),
    )
    lines = render_status(d, stall=60)
    rows = [line for line in lines if line.startswith("  ") and "198.18" in line]
    assert rows[0].split()[0] == "stuck" and rows[0].rstrip().endswith("STALLED 1m15s")
    assert rows[1].split()[0] == "fast" and "STALLED" not in rows[1]
    assert lines[-1] == "  1 peer STALLED"
    coloured = render_status(d, stall=60, color=True)
    assert any(line.startswith("\x1b[1;31m") and "stuck" in line for line in coloured)


def test_peer_strings_cannot_inject_terminal_escapes() -> None:
    evil = "\x1b]0;pwned\x07\x1b[2Jhost\nname"
    d = doc(peer(evil, "downloading", 10, rack="\x1b[31mred", address="1.2.3.4\r"))
    d["swarms"][0]["tag"] = "v1\x1b[H"
    text = "\n".join(render_status(d))
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "?]0;pwned??[2Jhost?name" in text


def test_max_peers_hides_the_rest_with_a_count() -> None:
    peers = [peer(f"h{i:03d}", "seeding", 0) for i in range(50)]
    peers.append(peer("late", "downloading", 999))
    lines = render_status(doc(*peers), max_peers=5)
    rows = [line for line in lines if "198.18" in line]
    assert len(rows) == 5 and rows[0].split()[0] == "late"
    assert "  ... 46 more peers (46 seeding); --all shows every peer" in lines
    assert len([line for line in render_status(doc(*peers), max_peers=None) if "198.18" in line])


def test_summary_counts_and_eta() -> None:
    s = doc(peer("a", "seeding", 0), peer("b", "downloading", 500), peer("c", "stopped", 500))
    assert swarm_summary(s["swarms"][0]) == (1, 2, 5.0)
    s = doc(peer("a", "downloading", 500), rate_down=0.0)
    assert swarm_summary(s["swarms"][0]) == (0, 1, None)
    s = doc(peer("a", "seeding", 0), size=None)
    assert swarm_summary(s["swarms"][0]) == (1, 1, 0.0)


def test_unknown_size_shows_left_instead_of_a_bar() -> None:
    d = doc(peer("x", "downloading", 2048, progress=None), size=None)
    lines = render_status(d)
    assert "size ?" in lines[2]
    assert "left 2.0 KiB" in lines[4]


def test_no_swarms() -> None:
    lines = render_status({"tracker": {"version": "0.1.0", "now": NOW}, "swarms": []})
    assert lines == ["tracker 0.1.0  0 swarms  0 peers", "no swarms yet"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([], "top level is not an object"),
        ({"swarms": {}}, "'swarms' is not a list"),
        ({"swarms": [1]}, "swarms[0] is not an object"),
        ({"swarms": [{"info_hash": 5}]}, "swarms[0].info_hash is not a string"),
        ({"swarms": [{"info_hash": "a", "seeders": "x"}]}, "swarms[0].seeders is not a number"),
        ({"swarms": [{"info_hash": "a", "peers": [{"left": "1"}]}]}, "peers[0].left"),
        ({"swarms": [{"info_hash": "a", "peers": [{"progress": []}]}]}, "peers[0].progress"),
    ],
)
def test_validate_refuses_bad_shapes(bad: object, message: str) -> None:
    with pytest.raises(TrackerError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_stats(bad)


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("http://127.0.0.1:8998", "http://127.0.0.1:8998/stats.json"),
        ("http://127.0.0.1:8998/", "http://127.0.0.1:8998/stats.json"),
        ("127.0.0.1:8998", "http://127.0.0.1:8998/stats.json"),
        ("http://t:1/announce", "http://t:1/stats.json"),
        ("https://t/x/announce", "https://t/x/stats.json"),
        ("http://t:1/stats.json", "http://t:1/stats.json"),
    ],
)
def test_stats_url(given: str, url: str) -> None:
    assert stats_url(given) == url


@pytest.mark.parametrize("bad", ["", "ftp://x", "http://", "a b", "http:///x"])
def test_stats_url_refuses(bad: str) -> None:
    with pytest.raises(UsageError):
        stats_url(bad)


# ---------------------------------------------------------------- real HTTP


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def plain_server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_fetch_good_document(plain_server: tuple[str, type[_Handler]]) -> None:
    base, handler = plain_server
    handler.body = json.dumps(doc(peer("w", "downloading", 1))).encode()
    got, raw = fetch_stats(stats_url(base))
    assert got["swarms"][0]["tag"] == "v42" and raw == handler.body


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (200, b"<html>not json", "sent bad JSON"),
        (200, b"\xff\xfe", "sent bad JSON"),
        (200, b"[" * 100_000, r"sent bad JSON: /stats.json:1: nested deeper than 100 levels"),
        (200, b"[1]", "top level is not an object"),
        (404, b"{}", "answered HTTP 404"),
    ],
)
def test_fetch_bad_answers_are_one_line_errors(
    plain_server: tuple[str, type[_Handler]], status: int, body: bytes, message: str
) -> None:
    base, handler = plain_server
    handler.status, handler.body = status, body
    with pytest.raises(TrackerError, match=message) as info:
        fetch_stats(stats_url(base))
    assert "\n" not in str(info.value)


def test_fetch_refused_connection() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(TrackerError, match=f"cannot reach tracker at http://127.0.0.1:{port}"):
        fetch_stats(f"http://127.0.0.1:{port}/stats.json", timeout=2)


def test_cli_status_json_and_table(
    plain_server: tuple[str, type[_Handler]], capsys: pytest.CaptureFixture[str]
) -> None:
    base, handler = plain_server
    handler.body = json.dumps(doc(peer("web-07", "downloading", 250))).encode()
    assert main(["status", base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(handler.body)
    assert main(["status", base, "--stall", "1"]) == 0
    out = capsys.readouterr().out
    assert "web-07" in out and "STALLED 3s" in out


def test_cli_status_error_is_one_line_and_nonzero() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.run(
        [sys.executable, "-m", "roost", "status", f"127.0.0.1:{port}", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("roost: error: cannot reach tracker at")
    assert proc.stderr.count("\n") == 1


def test_cli_watch_redraws_until_interrupted(plain_server: tuple[str, type[_Handler]]) -> None:
    base, handler = plain_server
    handler.body = json.dumps(doc(peer("w", "downloading", 1))).encode()
    # -X faulthandler: were it ever to hang after SIGINT, SIGABRT makes it
    # print where each of its threads is, and the failure says so
    argv = [sys.executable, "-X", "faulthandler", "-m", "roost", "status", base, "--watch", "0.2"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A suite started in the background without job control runs with
        # SIGINT ignored, which its children inherit (and Python then
        # installs no KeyboardInterrupt): this child takes SIGINT as a
        # terminal would give it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        seen = 0
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("v42  abab"):
                seen += 1
                if seen == 3:
                    break
        assert seen == 3
    finally:
        proc.send_signal(signal.SIGINT)  # --watch ends cleanly
        try:
            _, err = proc.communicate(timeout=15)  # drained: it never blocks on a full pipe
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=15)
            raise AssertionError(f"roost status --watch ignored SIGINT:\n{err}") from None
    assert proc.returncode == 0, err


def test_bad_watch_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["status", "--watch", "-1"])
    assert info.value.code == 2
    assert "must be a positive number" in capsys.readouterr().err
    assert issubclass(UsageError, RoostError)


def test_cli_status_against_a_real_tracker(capsys: pytest.CaptureFixture[str]) -> None:
    from roost.tracker import TrackerConfig, run_tracker_in_thread
    from tests.tracker.stats_kit import IH, query

    handle = run_tracker_in_thread(TrackerConfig(port=0, interval=1, min_interval=0))
    try:
        base = f"http://127.0.0.1:{handle.port}"
        handle.allow(IH.hex(), tag="v9", size=2048)
        for pid, left, host in ((b"s", 0, "origin"), (b"a", 2048, "app-1"), (b"b", 512, "app-2")):
            q = query(pid, left, down=2048 - left, host=host, rack="r1", event="started")
            with urllib.request.urlopen(f"{base}/announce?{q.decode()}", timeout=10) as r:
                assert b"failure" not in r.read()
        assert main(["status", f"{base}/announce"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith(f"tracker {roost.__version__}  up ")
        assert out[0].endswith("1 swarm  3 peers")
        assert out[2].startswith(f"v9  {IH.hex()[:12]}  size 2.0 KiB  done 1/3  seeders 1")
        rows = {line.split()[0]: line for line in out[4:7]}
        assert "[..........]   0.0%" in rows["app-1"] and "[#######...]  75.0%" in rows["app-2"]
        assert "seeding" in rows["origin"] and "127.0.0.1:6881" in rows["origin"]
        time.sleep(1.1)
        assert main(["status", base, "--stall", "1"]) == 0
        out = capsys.readouterr().out
        # at least 1 s without progress; more when this machine is busy (or the
        # tracker's snapshot is a second old), so the age is not pinned
        assert len(re.findall(r"STALLED [1-9]\d*s", out)) == 2 and "2 peers STALLED" in out, out
    finally:
        handle.stop()

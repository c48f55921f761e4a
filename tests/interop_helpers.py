"""Helpers for the interop tests: free ports, the standard clients' command
lines, a process group that kills by pid, polling, the tracker's stats."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ARIA2C = shutil.which("aria2c")
TRANSMISSION = shutil.which("transmission-cli")
MKTORRENT = shutil.which("mktorrent")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def wait_for(
    what: str, check: Callable[[], Any], timeout: float, *, procs: Procs | None = None
) -> Any:
    """Poll ``check()`` until it returns something truthy; fail naming ``what``
    (and the output of the processes in ``procs``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            tail = procs.describe() if procs is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")
        time.sleep(0.2)


class Procs:
    """Processes a test starts; ``kill_all()`` kills each by its pid (its
    process group: every one is started in a new session) and reaps it.
    Output goes to files under ``log_dir`` so pipes never fill up."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(
        self, name: str, argv: Sequence[str], *, popen: Callable[..., Any] | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as out:
            kw.setdefault("stdin", subprocess.DEVNULL)
            kw.setdefault("stdout", out)
            kw.setdefault("stderr", subprocess.STDOUT)
            kw.setdefault("start_new_session", True)
            proc = (popen or subprocess.Popen)(list(argv), **kw)
        self.started.append((name, proc, log))
        return proc

    def output(self, name: str) -> str:
        for n, _, log in self.started:
            if n == name:
                return log.read_text(errors="replace")
        raise KeyError(name)

    def describe(self) -> str:
        parts = []
        for name, proc, log in self.started:
            text = log.read_text(errors="replace") if log.exists() else ""
            parts.append(f"--- {name} (pid {proc.pid}, rc {proc.poll()}):\n{text[-2000:]}")
        return "\n".join(parts)

    def kill_all(self) -> None:
        for _, proc, _ in reversed(self.started):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


@contextlib.contextmanager
def procs_in(log_dir: Path) -> Iterator[Procs]:
    group = Procs(log_dir)
    try:
        yield group
    finally:
        group.kill_all()


def aria2c_argv(
    torrent: Path, download_dir: Path, port: int, *, seed: bool = False, stop_after: int = 40
) -> list[str]:
    """aria2c for one torrent, LAN-only and bounded: no DHT, LPD or PEX,
    quick tracker timeouts, gives up after ``stop_after`` s without progress.
    ``seed=True``: check the file in place and seed until killed; otherwise
    download and exit at once on completion."""
    assert ARIA2C is not None
    argv = [
        ARIA2C,
        "--no-conf=true",
        f"--dir={download_dir}",
        f"--listen-port={port}",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--disable-ipv6=true",
        "--bt-tracker-connect-timeout=5",
        "--bt-tracker-timeout=5",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=notice",
        "--auto-save-interval=0",
        "--bt-save-metadata=false",
        "--bt-remove-unselected-file=false",
    ]
    if seed:
        argv += ["--check-integrity=true", "--seed-ratio=0.0"]
    else:
        argv += ["--seed-time=0", f"--bt-stop-timeout={stop_after}"]
    return [*argv, str(torrent)]


def transmission_settings(config_dir: Path, port: int) -> None:
    """A transmission config dir: LAN-only (no DHT, LPD, PEX, uTP, port mapping)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "dht-enabled": False,
        "lpd-enabled": False,
        "pex-enabled": False,
        "utp-enabled": False,
        "port-forwarding-enabled": False,
        "peer-port": port,
        "peer-port-random-on-start": False,
        "encryption": 1,
        "rename-partial-files": True,
        "blocklist-enabled": False,
        "speed-limit-up-enabled": False,
        "speed-limit-down-enabled": False,
        "ratio-limit-enabled": False,
        "message-level": 2,
    }
    (config_dir / "settings.json").write_text(json.dumps(settings, indent=1))


def tracker_stats(url: str) -> dict[str, Any]:
    """``/stats.json`` of the tracker whose announce URL is ``url``."""
    stats_url = url.rsplit("/", 1)[0] + "/stats.json"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(stats_url, timeout=5) as resp:
        return json.loads(resp.read())


def swarm_stats(url: str, info_hash: str) -> dict[str, Any] | None:
    for swarm in tracker_stats(url)["swarms"]:
        if swarm["info_hash"] == info_hash:
            return swarm
    return None


# A stock libtorrent client (qBittorrent's and Deluge's engine): its default
# settings, so its default announce schedule (min_announce_interval 300 s),
# with only what a test on one loopback address needs changed: no DHT, LSD
# or port mapping, and several peers allowed from 127.0.0.1.
_STOCK_LIBTORRENT = """
import sys, time
import libtorrent as lt
torrent, save_path, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
session = lt.session({
    "listen_interfaces": f"127.0.0.1:{port}",
    "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
    "allow_multiple_connections_per_ip": True,
})
handle = session.add_torrent({"ti": lt.torrent_info(torrent), "save_path": save_path})
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    s = handle.status()
    print(f"state={s.state} seeding={s.is_seeding} uploaded={s.all_time_upload}", flush=True)
    time.sleep(1)
"""


def stock_libtorrent_argv(torrent: Path, save_path: Path, port: int, seconds: float) -> list[str]:
    """A stock libtorrent client that adds ``torrent`` (seeding it when
    ``save_path`` holds the data) and exits after ``seconds``."""
    import sys

    return [
        sys.executable,
        "-c",
        _STOCK_LIBTORRENT,
        str(torrent),
        str(save_path),
        str(port),
        str(seconds),
    ]

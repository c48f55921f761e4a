"""/stats.json and /metrics under polling: what status readers cost the announce path.

For each fleet size N and each tracker build (the working tree, and with
``--baseline REV`` the ``src/`` of that git revision, extracted to a temporary
directory and put first on ``PYTHONPATH``):

1. start ``roost tracker`` pinned to core 0 (``--interval 60 --peer-timeout
   3600``: nobody expires during the run; ``--no-locality`` unless
   ``--locality``: before 27d88de the labelled handout scanned the whole
   swarm per announce, which at these sizes hid everything else; peers are
   labelled ``dc{p % 3}`` / ``r{p % 40}``, 120 racks);
2. fill one swarm with N peers through the real announce path (pipelined
   HTTP/1.1 announces carrying ``ip``, ``host``, ``dc``, ``rack``; half seeders);
3. time single /stats.json and /metrics requests on an otherwise idle tracker;
4. run ``wrk`` (core 1, one thread, 64 connections, keep-alive) re-announcing
   those N peers (``left`` decreasing, counters growing) for ``--seconds``,
   alone, then with ``--pollers`` readers of /stats.json, then of /metrics,
   each reader polling once per ``--every`` seconds from a random phase
   (browsers and ``roost status --watch`` are not synchronised).

Each load runs ``--repeat`` times and the run with the most announces/s is
kept (other work on the machine only ever makes a run slower). Printed per
row: announces/s, announce latency p50/p99/max (wrk), reader
latency p50/max and polls answered, tracker CPU. Run::

    python bench/stats_bench.py --peers 10000,50000 --baseline HEAD
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hotpaths import cpu_of, free_port, stop_group, wait_port

ROOT = Path(__file__).resolve().parent.parent
INFO_HASH = bytes(range(1, 21))
PEER_ID = b"-RB0001-%012d"

_LUA = r"""
local ih = "%s"
local npeers = %d
local n = 0
local function ip(p)
  return "10." .. math.floor(p / 65536) .. "." .. (math.floor(p / 256) %% 256) .. "." .. (p %% 256)
end
request = function()
  n = n + 1
  local peer = n %% npeers
  local round = math.floor(n / npeers) + 1
  local left = 0
  if peer %% 2 == 1 then left = math.max(1, 1000000000 - round * 1000000) end
  local path = "/announce?info_hash=" .. ih .. "&peer_id=-RB0001-" ..
    string.format("%%012d", peer) .. "&port=6881&ip=" .. ip(peer) ..
    "&uploaded=" .. (round * 1000 + peer) .. "&downloaded=" .. (round * 1000000) ..
    "&left=" .. left .. "&compact=1&numwant=50"
  return wrk.format("GET", path)
end
"""


def _quote(raw: bytes) -> str:
    return "".join(f"%{b:02X}" for b in raw)


def _ip(p: int) -> str:
    return f"10.{p // 65536}.{(p // 256) % 256}.{p % 256}"


def fill(port: int, n: int, batch: int = 500) -> None:
    """Announce peers 0..n-1 once (``event=started``), pipelined in batches."""
    ih = _quote(INFO_HASH)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for start in range(0, n, batch):
            reqs = []
            for p in range(start, min(n, start + batch)):
                left = 0 if p % 2 == 0 else 1_000_000_000
                reqs.append(
                    f"GET /announce?info_hash={ih}&peer_id={(PEER_ID % p).decode()}"
                    f"&port=6881&ip={_ip(p)}&uploaded=0&downloaded=0&left={left}"
                    f"&event=started&compact=1&numwant=50&host=web-{p:06d}"
                    f"&dc=dc{p % 3}&rack=r{p % 40} HTTP/1.1\r\nHost: x\r\n\r\n"
                )
            sock.sendall("".join(reqs).encode())
            _read_responses(sock, len(reqs))


def _read_responses(sock: socket.socket, count: int) -> None:
    buf = b""
    while count:
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("tracker closed the connection during the fill")
            buf += chunk
            continue
        m = re.search(rb"Content-Length: (\d+)", buf[:head_end])
        if not m or not buf.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"bad announce answer: {buf[:200]!r}")
        end = head_end + 4 + int(m.group(1))
        while len(buf) < end:
            buf += sock.recv(1 << 20)
        if b"failure" in buf[head_end:end]:
            raise RuntimeError(f"announce refused: {buf[head_end:end][:200]!r}")
        buf = buf[end:]
        count -= 1


def get(port: int, path: str) -> tuple[float, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        t = time.perf_counter()
        conn.request("GET", path)
        body = conn.getresponse().read()
        return time.perf_counter() - t, body
    finally:
        conn.close()


class Pollers:
    """``count`` threads, each GETting ``path`` every ``every`` s on a keep-alive connection."""

    def __init__(self, port: int, path: str, count: int, every: float) -> None:
        self.port, self.path, self.count, self.every = port, path, count, every
        self.latencies: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def __enter__(self) -> Pollers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def _run(self) -> None:
        if self._stop.wait(random.uniform(0, self.every)):
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        next_at = time.monotonic()
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    self.errors += 1
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            else:
                self.latencies.append(time.perf_counter() - t)
            next_at += self.every
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        conn.close()


def _wrk_ms(text: str) -> float:
    m = re.match(r"([0-9.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def run_wrk(port: int, script: Path, seconds: float, connections: int) -> dict[str, float]:
    argv = ["taskset", "-c", _cores()[1], "wrk", "-t", "1", "-c", str(connections)]
    argv += [
        "-d",
        f"{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    lat = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    p50 = re.search(r"50%\s+(\S+)", out)
    p99 = re.search(r"99%\s+(\S+)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not rps or bad:
        raise RuntimeError(f"wrk failed or got errors:\n{out}")
    return {
        "rps": float(rps.group(1)),
        "p50_ms": _wrk_ms(p50.group(1)) if p50 else float("nan"),
        "p99_ms": _wrk_ms(p99.group(1)) if p99 else float("nan"),
        "max_ms": _wrk_ms(lat.group(1)) if lat else float("nan"),
    }


def _cores() -> tuple[str, str]:
    last = (os.cpu_count() or 1) - 1
    return "0", str(min(1, last))


def bench_one(
    build: str, pythonpath: str | None, n: int, args: argparse.Namespace, work: Path
) -> list[dict[str, Any]]:
    port = free_port()
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    argv = ["taskset", "-c", _cores()[0], sys.executable, "-m", "roost", "tracker"]
    argv += ["--bind", "127.0.0.1", "--port", str(port), "--interval", "60"]
    argv += ["--peer-timeout", "3600"]
    if not args.locality:
        argv.append("--no-locality")
    server = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    rows: list[dict[str, Any]] = []
    try:
        wait_port(port)
        t = time.perf_counter()
        fill(port, n)
        fill_s = time.perf_counter() - t
        singles: dict[str, list[float]] = {"/stats.json": [], "/metrics": []}
        size: dict[str, int] = {}
        for _ in range(3):
            for path, times in singles.items():
                dt, body = get(port, path)
                times.append(dt)
                size[path] = len(body)
                time.sleep(1.1)  # past any cache
        doc = json.loads(get(port, "/stats.json")[1])
        seen = sum(len(s["peers"]) for s in doc["swarms"])
        if seen != n:
            raise RuntimeError(f"expected {n} peers in /stats.json, found {seen}")
        for path, times in singles.items():
            rows.append(
                {"build": build, "peers": n, "load": f"one GET {path}, idle tracker",
                 "read_p50_ms": statistics.median(times) * 1e3, "read_max_ms": max(times) * 1e3,
                 "bytes": size[path], "fill_s": fill_s}
            )  # fmt: skip
        script = work / f"announce-{n}.lua"
        script.write_text(_LUA % (_quote(INFO_HASH), n))
        run_wrk(port, script, 2, args.connections)  # warm-up
        loads: list[tuple[str, str | None]] = [("announces alone", None)]
        loads += [(f"+ {args.pollers} x {p} every {args.every:g} s", p) for p in args.paths]
        for label, path in loads:
            best: dict[str, Any] | None = None
            for _ in range(args.repeat):  # the best run: this machine may be shared
                row = _load_run(server.pid, port, script, path, args)
                if best is None or row["rps"] > best["rps"]:
                    best = row
            assert best is not None
            rows.append({"build": build, "peers": n, "load": label, **best})
    finally:
        stop_group(server, timeout=10)
    return rows


def _load_run(
    pid: int, port: int, script: Path, path: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    cpu0 = cpu_of(pid)
    t0 = time.monotonic()
    if path is None:
        row: dict[str, Any] = run_wrk(port, script, args.seconds, args.connections)
    else:
        with Pollers(port, path, args.pollers, args.every) as pollers:
            row = run_wrk(port, script, args.seconds, args.connections)
        lat = pollers.latencies
        row.update(
            read_p50_ms=statistics.median(lat) * 1e3 if lat else float("nan"),
            read_max_ms=max(lat) * 1e3 if lat else float("nan"),
            reads=len(lat),
            read_errors=pollers.errors,
        )
    row["cpu"] = (cpu_of(pid) - cpu0) / (time.monotonic() - t0)
    return row


def extract_rev(rev: str, into: Path) -> str:
    """``src/`` of git revision ``rev`` under ``into``; returns the path for PYTHONPATH."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into / "src")


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| peers | load | build | announces/s | ann p50 ms | ann p99 ms | ann max ms "
        "| read p50 ms | read max ms | reads | tracker CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["peers"], r["load"], r["build"])):
        reads = r.get("reads")
        if reads is not None and r.get("read_errors"):
            reads = f"{reads} ({r['read_errors']} errors)"
        elif reads is None and "bytes" in r:
            reads = f"{r['bytes'] / 1e6:.1f} MB"
        lines.append(
            f"| {r['peers']:,} | {r['load']} | {r['build']} | {_fmt(r.get('rps'), '.0f')} "
            f"| {_fmt(r.get('p50_ms'), '.2f')} | {_fmt(r.get('p99_ms'), '.1f')} "
            f"| {_fmt(r.get('max_ms'), '.0f')} | {_fmt(r.get('read_p50_ms'), '.1f')} "
            f"| {_fmt(r.get('read_max_ms'), '.0f')} | {reads if reads is not None else '-'} "
            f"| {_fmt(r.get('cpu'), '.0%')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", default="10000,50000", help="fleet sizes, comma-separated")
    p.add_argument("--pollers", type=int, default=4)
    p.add_argument("--every", type=float, default=1.0, help="seconds between a reader's polls")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--repeat", type=int, default=2, help="runs per load; the best is kept")
    p.add_argument("--paths", default="/stats.json,/metrics")
    p.add_argument(
        "--locality",
        action="store_true",
        help="keep the locality handout on (before 27d88de its cost grew with the swarm)",
    )
    p.add_argument("--baseline", metavar="REV", help="also run the tracker of this git revision")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    args.paths = [x for x in args.paths.split(",") if x]
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="roost-statsbench-") as tmp:
        work = Path(tmp)
        builds: list[tuple[str, str | None]] = []
        if args.baseline:
            (work / "base").mkdir()
            builds.append((f"before ({args.baseline})", extract_rev(args.baseline, work / "base")))
        builds.append((f"tree ({head}+)", str(ROOT / "src")))
        for n in [int(x) for x in args.peers.split(",")]:
            for name, path in builds:
                print(f"# {name}: {n:,} peers ...", file=sys.stderr, flush=True)
                rows += bench_one(name, path, n, args, work)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The other hot paths, side by side with the tools users would otherwise use.

* hash:    ``roost create --file`` vs ``mktorrent`` on the same file (page cache warm);
* extract: roost's ``install_release`` vs GNU ``tar -x`` of the same release tar,
           both into tmpfs (/dev/shm), so the disk does not decide;
* tracker: announces per second, ``roost tracker`` vs ``opentracker``, the server
           pinned to core 0 and ``wrk`` (Debian package, one thread, 64
           connections) to core 1, one Lua script per scenario (1 swarm of
           1,000 peers; 1,000 swarms of 10; each with keep-alive and with
           ``Connection: close`` per request as libtorrent sends; compact,
           numwant=50, peers re-announcing after a 2 s warm-up). Alone:
           ``python bench/hotpaths.py tracker [--env ROOST_EVENT_LOOP=asyncio]``.

* pack:    ``roost create DIR`` vs GNU ``tar -c`` + ``mktorrent`` (2000 small
           files and one of 512 MiB, page cache warm).

Alone: ``python bench/hotpaths.py hash [--hash-mib 1024]``, ``... pack``,
``... extract [--dest-dir /var/tmp]`` (default /dev/shm), ``... tracker``.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
ROOST = [sys.executable, "-m", "roost"]


def _timed(argv: list[str], **kw: Any) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, **kw)
    return time.perf_counter() - t


def _random_file(path: Path, size: int) -> None:
    block = os.urandom(4 * MIB)
    with path.open("wb") as f:
        for i in range(0, size, len(block)):
            # vary each block cheaply so the file does not repeat
            f.write(i.to_bytes(8, "little") + block[8 : min(len(block), size - i)])


def bench_hash(scratch: Path, size_mib: int) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="roost-hash-", dir=scratch))
    try:
        src = work / "big.bin"
        _random_file(src, size_mib * MIB)
        subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # warm cache
        announce = "http://198.18.0.1:8998/announce"
        cpus = str(os.cpu_count() or 1)
        best: dict[str, float] = {}
        for attempt in range(2):
            for tool, argv in (
                (
                    "roost create",
                    [
                        *ROOST,
                        "create",
                        str(src),
                        "--file",
                        "--tag",
                        f"h{attempt}",
                        "--out",
                        str(work / f"r{attempt}"),
                        "--tracker",
                        announce,
                        "--piece-size",
                        "4M",
                    ],
                ),
                (
                    "mktorrent",
                    [
                        "mktorrent",
                        "-l",
                        "22",
                        "-t",
                        cpus,
                        "-a",
                        announce,
                        "-o",
                        str(work / f"m{attempt}.torrent"),
                        str(src),
                    ],
                ),
            ):
                s = _timed(argv)
                best[tool] = min(best.get(tool, s), s)
        return [
            {
                "path": f"hash {size_mib} MiB (4 MiB pieces)",
                "tool": tool,
                "value": size_mib * MIB / s / 1e6,
                "unit": "MB/s",
                "note": f"best of 2: {s:.2f} s",
            }
            for tool, s in best.items()
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tree(tree: Path, total_mib: int, files: int, big_mib: int = 0) -> Path:
    """``files`` files of random sizes (``total_mib`` in all) in 280
    directories, plus one ``big_mib`` file if asked; the same every time."""
    rng = random.Random(5)
    sizes = [rng.randint(1, 2 * total_mib * MIB // files) for _ in range(files)]
    blob = os.urandom(max(sizes))
    for i, size in enumerate(sizes):
        d = tree / f"d{i % 40}" / f"e{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.bin").write_bytes(blob[i % 1000 : i % 1000 + size])
    if big_mib:
        _random_file(tree / "big.bin", big_mib * MIB)
    return tree


def bench_pack(
    scratch: Path, total_mib: int = 512, files: int = 2000, big_mib: int = 512
) -> list[dict[str, Any]]:
    """``roost create DIR`` (tar + sha256 of every file + piece SHA-1, one
    pass) vs GNU ``tar -c`` then ``mktorrent`` of the tar (no sha256)."""
    work = Path(tempfile.mkdtemp(prefix="roost-pack-", dir=scratch))
    try:
        tree = _tree(work / "tree", total_mib, files, big_mib)
        subprocess.run(["sync"], check=True)  # the tree's write-back must not be timed
        subprocess.run(["tar", "-cf", "/dev/null", "-C", str(tree), "."], check=True)
        subprocess.run(["sh", "-c", f"cat $(find {tree} -type f) >/dev/null"], check=True)
        announce = "http://198.18.0.1:8998/announce"
        cpus = str(os.cpu_count() or 1)
        best: dict[str, float] = {}
        size = 0
        for attempt in range(2):
            out = work / f"r{attempt}"
            argv = [*ROOST, "create", str(tree), "--tag", "p", "--out", str(out)]
            s = _timed([*argv, "--tracker", announce, "--piece-size", "4M"])
            best["roost create DIR"] = min(best.get("roost create DIR", s), s)
            size = (out / "p.tar").stat().st_size
            shutil.rmtree(out)
            tar = work / f"g{attempt}.tar"
            s = _timed(["tar", "--sort=name", "-cf", str(tar), "-C", str(tree), "."])
            s += _timed(
                ["mktorrent", "-l", "22", "-t", cpus, "-a", announce,
                 "-o", str(work / f"g{attempt}.torrent"), str(tar)]
            )  # fmt: skip
            best["GNU tar -c + mktorrent"] = min(best.get("GNU tar -c + mktorrent", s), s)
            tar.unlink()
        path = f"pack {size / MIB:.0f} MiB, {files + bool(big_mib)} files"
        return _throughput_rows(f"{path} (one of {big_mib} MiB), 4 MiB pieces", size, best)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_extract(
    scratch: Path, total_mib: int = 512, files: int = 2000, dest_dir: str = "/dev/shm"
) -> list[dict[str, Any]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from roost.extract import install_release
    from roost.metainfo import read_torrent_file

    work = Path(tempfile.mkdtemp(prefix="roost-extract-", dir=scratch))
    shm = Path(tempfile.mkdtemp(prefix="roost-extract-", dir=dest_dir))
    try:
        tree = _tree(work / "tree", total_mib, files)
        subprocess.run(
            [
                *ROOST,
                "create",
                str(tree),
                "--tag",
                "x",
                "--out",
                str(work / "rel"),
                "--tracker",
                "http://198.18.0.1:8998/announce",
            ],
            check=True,
            capture_output=True,
        )
        tar = work / "rel" / "x.tar"
        meta = read_torrent_file(work / "rel" / "x.torrent")
        subprocess.run(["cat", str(tar)], stdout=subprocess.DEVNULL, check=True)
        size = tar.stat().st_size
        best: dict[str, float] = {}
        for attempt in range(2):
            dest = shm / f"roost{attempt}"
            os.sync()  # nothing dirty left by the set-up for roost's syncfs to flush
            t = time.perf_counter()
            install_release(tar, meta, dest)
            best["roost install_release (sha256, durable)"] = min(
                best.get("roost install_release (sha256, durable)", 1e9), time.perf_counter() - t
            )
            shutil.rmtree(dest)
            dest = shm / f"tar{attempt}"
            dest.mkdir()
            s = _timed(["tar", "-xf", str(tar), "-C", str(dest)])
            best["GNU tar -x"] = min(best.get("GNU tar -x", 1e9), s)
            shutil.rmtree(dest)
            dest.mkdir()
            os.sync()
            s = _timed(["sh", "-c", f"tar -xf {tar} -C {dest} && sync -f {dest}"])
            best["GNU tar -x && sync -f (durable)"] = min(
                best.get("GNU tar -x && sync -f (durable)", 1e9), s
            )
            shutil.rmtree(dest)
        path = f"extract {size / MIB:.0f} MiB, {files} files into {dest_dir}"
        return _throughput_rows(path, size, best)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


_LUA = r"""
local hashes = {%s}
local npeers = %d
local close = %s
local headers = close and {["Connection"] = "close"} or nil
local n = 0
request = function()
  n = n + 1
  local peer = n %% npeers
  local h = hashes[(peer %% #hashes) + 1]
  local path = "/announce?info_hash=" .. h .. "&peer_id=-WK0001-" ..
    string.format("%%012d", peer) .. "&port=" .. (10000 + peer %% 50000) ..
    "&uploaded=0&downloaded=0&left=1000&compact=1&numwant=50"
  return wrk.format("GET", path, headers)
end
"""

# (label, swarms, peers in all, Connection: close per request)
TRACKER_SCENARIOS = (
    ("1 swarm x 1,000 peers, keep-alive", 1, 1000, False),
    ("1,000 swarms x 10 peers, keep-alive", 1000, 10000, False),
    ("1 swarm x 1,000 peers, Connection: close", 1, 1000, True),
    ("1,000 swarms x 10 peers, Connection: close", 1000, 10000, True),
)


def _hashes(k: int) -> list[bytes]:
    rng = random.Random(7)
    return [bytes(rng.randrange(256) for _ in range(20)) for _ in range(k)]


def _throughput_rows(path: str, size: int, best: dict[str, float]) -> list[dict[str, Any]]:
    """One result row per tool: ``size`` bytes in its best time."""
    return [
        {
            "path": path,
            "tool": tool,
            "value": size / s / 1e6,
            "unit": "MB/s",
            "note": f"best of 2: {s:.2f} s",
        }
        for tool, s in best.items()
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15) -> None:
    """Until something listens on 127.0.0.1:``port`` (a tracker starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"tracker did not listen on 127.0.0.1:{port}") from None
            time.sleep(0.05)


def _cores() -> tuple[str, str]:
    """(server core, load generator core): different cores when there are two."""
    last = (os.cpu_count() or 1) - 1
    return "0", str(min(1, last))


def bench_tracker(
    scratch: Path,
    seconds: int = 8,
    connections: int = 64,
    scenarios: tuple[tuple[str, int, int, bool], ...] = TRACKER_SCENARIOS,
    tools: tuple[str, ...] = ("roost tracker", "opentracker"),
    roost_env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Announces/s per scenario and tool: server on core 0, wrk (1 thread) on core 1.

    Each scenario warms the swarms up (every peer announces once) before the
    measured run, so the steady state (re-announces) is what counts.
    """
    if shutil.which("wrk") is None:
        return [
            {"path": "tracker announces/s", "tool": t, "value": None, "unit": "/s",
             "note": "wrk not installed (apt-get install wrk)"}
            for t in tools
        ]  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="roost-trk-", dir=scratch))
    work.chmod(0o755)
    server_core, wrk_core = _cores()
    rows = []
    try:
        for label, nswarms, npeers, close in scenarios:
            hashes = _hashes(nswarms)
            enc = ", ".join('"' + "".join(f"%{b:02X}" for b in h) + '"' for h in hashes)
            script = work / "announce.lua"
            script.write_text(_LUA % (enc, npeers, "true" if close else "false"))
            (work / "whitelist").write_text("".join(h.hex() + "\n" for h in hashes))
            for tool in tools:
                rows.append(
                    _tracker_run(
                        tool, label, work, script, enc, seconds, connections,
                        server_core, wrk_core, roost_env,
                    )
                )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _wrk(core: str, connections: int, seconds: float, script: Path, port: int) -> str:
    argv = ["taskset", "-c", core, "wrk", "-t", "1", "-c", str(connections)]
    argv += ["-d", f"{seconds}s", "-s", str(script), f"http://127.0.0.1:{port}"]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 30
    ).stdout  # fmt: skip


def _tracker_run(
    tool: str,
    label: str,
    work: Path,
    script: Path,
    enc: str,
    seconds: int,
    connections: int,
    server_core: str,
    wrk_core: str,
    roost_env: dict[str, str] | None,
) -> dict[str, Any]:
    port = free_port()
    env = None
    if tool == "roost tracker":
        argv = [*ROOST, "tracker", "--bind", "127.0.0.1", "--port", str(port)]
        env = {**os.environ, **(roost_env or {})}
    else:
        argv = ["opentracker", "-i", "127.0.0.1", "-p", str(port), "-P", str(port)]
        argv += ["-w", "whitelist", "-d", str(work)]
    server = subprocess.Popen(
        ["taskset", "-c", server_core, *argv],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_port(port)
        probe = subprocess.run(
            ["curl", "-s", f"http://127.0.0.1:{port}/announce?info_hash="
             + enc.split(",")[0].strip().strip('"')
             + "&peer_id=-WK0001-000000000000&port=9&left=1&compact=1"],
            capture_output=True,
        )  # fmt: skip
        ok = b"failure" not in probe.stdout and b"peers" in probe.stdout
        _wrk(wrk_core, connections, 2, script, port)  # warm-up: every peer joins
        cpu0 = cpu_of(server.pid)
        out = _wrk(wrk_core, connections, seconds, script, port)
        cpu = cpu_of(server.pid) - cpu0
        rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
        note = f"{label}; {connections} connections, {seconds} s"
        if not ok:
            note += f"; probe answer not a peer list: {probe.stdout[:80]!r}"
        if errors:
            note += f"; {errors.group(0)}"
        done = re.search(r"(\d+) requests in", out)
        note += f"; server CPU {cpu:.1f} s"
        if done and int(done.group(1)):
            note += f" = {cpu * 1e6 / int(done.group(1)):.0f} us/announce"
        return {
            "path": f"tracker announces/s (one core): {label}",
            "tool": tool,
            "value": float(rps.group(1)) if rps else None,
            "unit": "/s",
            "note": note,
        }
    finally:
        stop_group(server, timeout=5)


def stop_group(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM a server started in its own session, SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    f = stat[stat.rindex(")") + 2 :].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run(names: list[str], *, hash_mib: int, scratch: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in names:
        print(f"== hot path: {name}", flush=True)
        first = len(rows)
        if name == "hash":
            rows += bench_hash(scratch, hash_mib)
        elif name == "extract":
            rows += bench_extract(scratch)
        elif name == "pack":
            rows += bench_pack(scratch)
        elif name == "tracker":
            rows += bench_tracker(scratch)
        else:
            raise SystemExit(f"bench: unknown hot path {name!r} (hash, pack, extract, tracker)")
        for r in rows[first:]:
            v = "—" if r["value"] is None else f"{r['value']:.0f} {r['unit']}"
            print(f"   {r['tool']:<40} {v}  {r['note']}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python bench/hotpaths.py hash|extract|tracker``: one hot path alone."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["hash", "pack", "extract", "tracker"])
    ap.add_argument("--hash-mib", type=int, default=1024, help="hash: file size")
    ap.add_argument("--dest-dir", default="/dev/shm", help="extract: where to extract")
    ap.add_argument("--seconds", type=int, default=8, help="tracker: seconds per run")
    ap.add_argument("--connections", type=int, default=64, help="tracker: wrk connections")
    ap.add_argument("--tools", default="roost tracker,opentracker", help="tracker: servers")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for roost tracker")
    ap.add_argument("--scratch", default="/var/tmp")
    args = ap.parse_args(argv)
    scratch = Path(args.scratch)
    if args.what == "hash":
        rows = bench_hash(scratch, args.hash_mib)
    elif args.what == "pack":
        rows = bench_pack(scratch)
    elif args.what == "extract":
        rows = bench_extract(scratch, dest_dir=args.dest_dir)
    else:
        env = dict(e.split("=", 1) for e in args.env)
        rows = bench_tracker(
            scratch,
            seconds=args.seconds,
            connections=args.connections,
            tools=tuple(args.tools.split(",")),
            roost_env=env,
        )
    for r in rows:
        v = "-" if r["value"] is None else f"{r['value']:.0f} {r['unit']}"
        print(f"{r['tool']:<40} {v:>12}  {r['path']}; {r['note']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

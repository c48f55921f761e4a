"""The other hot paths, side by side with the tools users would otherwise use.

* hash:    ``roost create --file`` vs ``mktorrent`` on the same file (page cache warm);
* extract: roost's ``install_release`` vs GNU ``tar -x`` of the same release tar,
           both into tmpfs (/dev/shm), so the disk does not decide;
* tracker: announces per second, ``roost tracker`` vs ``opentracker``, each pinned
           to one core, loaded by ``wrk`` (Debian package) with one Lua script
           (64 swarms, 10,000 distinct peers re-announcing, compact, numwant=50).
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


def bench_extract(scratch: Path, total_mib: int = 512, files: int = 2000) -> list[dict[str, Any]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from roost.extract import install_release
    from roost.release import read_torrent_file

    work = Path(tempfile.mkdtemp(prefix="roost-extract-", dir=scratch))
    shm = Path(tempfile.mkdtemp(prefix="roost-extract-", dir="/dev/shm"))
    try:
        tree = work / "tree"
        rng = random.Random(5)
        sizes = [rng.randint(1, 2 * total_mib * MIB // files) for _ in range(files)]
        blob = os.urandom(max(sizes))
        for i, size in enumerate(sizes):
            d = tree / f"d{i % 40}" / f"e{i % 7}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i}.bin").write_bytes(blob[i % 1000 : i % 1000 + size])
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
            t = time.perf_counter()
            install_release(tar, meta, dest)
            best["roost install_release (verifies sha256)"] = min(
                best.get("roost install_release (verifies sha256)", 1e9), time.perf_counter() - t
            )
            shutil.rmtree(dest)
            dest = shm / f"tar{attempt}"
            dest.mkdir()
            s = _timed(["tar", "-xf", str(tar), "-C", str(dest)])
            best["GNU tar -x"] = min(best.get("GNU tar -x", 1e9), s)
            shutil.rmtree(dest)
        return [
            {
                "path": f"extract {size / MIB:.0f} MiB, {files} files",
                "tool": tool,
                "value": size / s / 1e6,
                "unit": "MB/s",
                "note": f"best of 2: {s:.2f} s",
            }
            for tool, s in best.items()
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


_LUA = r"""
local hashes = {%s}
local n = 0
request = function()
  n = n + 1
  local peer = n %% 10000
  local h = hashes[(peer %% #hashes) + 1]
  local path = "/announce?info_hash=" .. h .. "&peer_id=-WK0001-" ..
    string.format("%%012d", peer) .. "&port=" .. (10000 + peer) ..
    "&uploaded=0&downloaded=0&left=1000&compact=1&numwant=50"
  return wrk.format("GET", path)
end
"""


def _hashes(k: int) -> list[bytes]:
    rng = random.Random(7)
    return [bytes(rng.randrange(256) for _ in range(20)) for _ in range(k)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"tracker did not listen on 127.0.0.1:{port}") from None
            time.sleep(0.05)


def bench_tracker(scratch: Path, seconds: int = 8, connections: int = 64) -> list[dict[str, Any]]:
    if shutil.which("wrk") is None:
        return [
            {"path": "tracker announces/s", "tool": t, "value": None, "unit": "/s",
             "note": "wrk not installed (apt-get install wrk)"}
            for t in ("roost tracker", "opentracker")
        ]  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="roost-trk-", dir=scratch))
    work.chmod(0o755)
    hashes = _hashes(64)
    enc = ", ".join('"' + "".join(f"%{b:02X}" for b in h) + '"' for h in hashes)
    script = work / "announce.lua"
    script.write_text(_LUA % enc)
    (work / "whitelist").write_text("".join(h.hex() + "\n" for h in hashes))
    last_core = str((os.cpu_count() or 1) - 1)
    rows = []
    try:
        for tool in ("roost tracker", "opentracker"):
            port = _free_port()
            if tool == "roost tracker":
                argv = [*ROOST, "tracker", "--bind", "127.0.0.1", "--port", str(port)]
            else:
                argv = ["opentracker", "-i", "127.0.0.1", "-p", str(port), "-P", str(port)]
                argv += ["-w", "whitelist", "-d", str(work)]
            server = subprocess.Popen(
                ["taskset", "-c", last_core, *argv],
                cwd=work,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                _wait_port(port)
                probe = subprocess.run(
                    ["curl", "-s", f"http://127.0.0.1:{port}/announce?info_hash="
                     + enc.split(",")[0].strip().strip('"')
                     + "&peer_id=-WK0001-000000000000&port=9&left=1&compact=1"],
                    capture_output=True,
                )  # fmt: skip
                ok = b"failure" not in probe.stdout and b"peers" in probe.stdout
                out = subprocess.run(
                    [
                        "taskset",
                        "-c",
                        "0",
                        "wrk",
                        "-t",
                        "1",
                        "-c",
                        str(connections),
                        "-d",
                        f"{seconds}s",
                        "-s",
                        str(script),
                        f"http://127.0.0.1:{port}",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=seconds + 30,
                ).stdout
                rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
                errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
                cpu = _cpu_of(server.pid)
                note = f"{connections} keep-alive connections, {seconds} s"
                if not ok:
                    note += f"; probe answer not a peer list: {probe.stdout[:80]!r}"
                if errors:
                    note += f"; {errors.group(0)}"
                note += f"; server CPU {cpu:.1f} s"
                rows.append(
                    {
                        "path": "tracker announces/s (one core)",
                        "tool": tool,
                        "value": float(rps.group(1)) if rps else None,
                        "unit": "/s",
                        "note": note,
                    }
                )
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _cpu_of(pid: int) -> float:
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
        if name == "hash":
            rows += bench_hash(scratch, hash_mib)
        elif name == "extract":
            rows += bench_extract(scratch)
        elif name == "tracker":
            rows += bench_tracker(scratch)
        else:
            raise SystemExit(f"bench: unknown hot path {name!r} (hash, extract, tracker)")
        for r in rows[-2:]:
            v = "—" if r["value"] is None else f"{r['value']:.0f} {r['unit']}"
            print(f"   {r['tool']:<40} {v}  {r['note']}", flush=True)
    return rows

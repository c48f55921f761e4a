#!/usr/bin/env python3
"""Big builds (issue 14): roost's targets side by side with the usual tools, in one run.

* create:  a build tree of many files (default 2000 files, 4 GiB in all; sizes
           lognormal around the mean), its page cache warmed by one read, then
           interleaved, ``--repeat`` times each:
             (a) ``roost create TREE`` (a tree release, hashed in place),
             (b) ``roost create TREE --tar`` (packed into a tar first),
             (c) ``mktorrent`` over the directory in place, with (a)'s piece size,
             (d) the lssd way: ``tar cf`` then ``mktorrent`` over the tar.
           Reported: best and median seconds, hashing rate (tree bytes / s), the
           disk each wrote (its output directory's allocated blocks).
* deploy:  the embedded local fleet on loopback (``roost deploy --local H``) with a
           smaller tree (default 400 files, 256 MiB): v1 (full), the same tree as
           v1tar with ``--tar`` into a fresh destination, then 5% of the files
           rewritten and v2 deployed into v1's destination (incremental). Reported:
           seconds, the hosts' bytes down and reused, the origin's bytes up. Each
           deploy runs once (a second run into the same destination would find
           it installed).
* install: ``roost.extract.install_release`` called directly (no peer, no
           network) on the tree release laid out as a download (``DIR/TAG/...``)
           and on the tar release's payload: GB/s, durable (syncfs included).
* --lab:   the deploy part on the emulated fleet instead (root, network
           namespaces in 198.18.0.0/15, default 8 hosts at 10 Mbit/s, 32 MiB in
           200 files): ``roost tracker`` and ``roost seed --feed-port`` on the
           origin host, ``roost peer --feed`` on every other host.

Every timed row carries the machine's busy % over its run (all cores, from
/proc/stat, the tool itself included): on a shared machine a high busy % with
a low tool CPU % means other work competed for the cores and the disk.

    python bench/big_builds.py --quick   # 200 files/64 MiB, 40 files/16 MiB, < 60 s
    python bench/big_builds.py           # the issue's sizes: run it on an idle machine
    python bench/big_builds.py --lab     # root: deploy on the emulated fleet

Prints Markdown tables and writes bench/results/big_builds.json. Scratch files
go under ``--scratch`` (default: the system temp dir) and are removed at the
end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from roost.lab.netns import Host, Lab

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tools  # noqa: E402  (bench/tools.py: the lab helpers bench/run.py uses)

MIB = 1 << 20
GIB = 1 << 30
# the announce URL written into every torrent; nothing announces to it
ANNOUNCE = "http://127.0.0.1:8998/announce"
CHANGED_SHARE = 0.05  # share of the files rewritten between v1 and v2
SEED = 14  # the trees are the same on every run
MKTORRENT_EXPONENTS = (15, 28)  # the piece sizes mktorrent 1.1 accepts: 2^15..2^28


def roost_argv() -> list[str]:
    """The ``roost`` console script beside this Python (a venv), else ``-m roost``."""
    script = Path(sys.executable).with_name("roost")
    return [str(script)] if script.exists() else [sys.executable, "-m", "roost"]


ROOST = roost_argv()


# ------------------------------------------------------------------ measuring


@dataclass
class Run:
    """One timed run: wall seconds, the machine's busy % and the tool's own CPU %."""

    seconds: float
    busy_pct: float
    tool_cpu_pct: float | None
    disk_bytes: int = 0
    #: roost create's own "seconds" (--json): the run without Python's start-up
    inner_seconds: float | None = None

    def rounded(self) -> Run:
        tool = None if self.tool_cpu_pct is None else round(self.tool_cpu_pct, 1)
        return Run(round(self.seconds, 3), round(self.busy_pct, 1), tool, self.disk_bytes)


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores so far (iowait counts as idle)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    ticks = [int(x) for x in fields]
    total = sum(ticks)
    return total - ticks[3] - ticks[4], total


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children waited for."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Meter:
    """Times a block: ``with Meter() as m: ...``, then ``m.run``.

    The tool's CPU counts this process and the children it waited for; a
    deploy's peer workers run in sessions of their own and are not counted,
    so deploy rows leave it out (``own_cpu=False``)."""

    def __init__(self, *, own_cpu: bool = True) -> None:
        self.own_cpu = own_cpu
        self.run = Run(0.0, 0.0, None)

    def __enter__(self) -> Meter:
        self._ticks = cpu_ticks()
        self._cpu = own_cpu_seconds()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self._t
        busy, total = (b - a for a, b in zip(self._ticks, cpu_ticks(), strict=True))
        tool = None
        if self.own_cpu:
            ncpu = os.cpu_count() or 1
            tool = (own_cpu_seconds() - self._cpu) / max(seconds, 1e-9) / ncpu * 100
        self.run = Run(seconds, busy / max(total, 1) * 100, tool)


def disk_used(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (st_blocks, hard links once)."""
    seen: set[tuple[int, int]] = set()
    used = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                used += st.st_blocks * 512
    return used


def run_command(argv: Sequence[str], *, timeout: float = 3600) -> str:
    """Run ``argv``; its stdout, or SystemExit with the end of its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise SystemExit(f"big_builds: {shlex.join(argv)} exited {proc.returncode}: {tail}")
    return proc.stdout


# ------------------------------------------------------------------ the trees


def file_sizes(count: int, total: int, rng: random.Random) -> list[int]:
    """``count`` sizes summing to ``total``: lognormal around the mean, each >= 1."""
    weights = [rng.lognormvariate(0.0, 1.0) for _ in range(count)]
    scale = (total - count) / sum(weights)
    sizes = [1 + int(w * scale) for w in weights]
    sizes[sizes.index(max(sizes))] += total - sum(sizes)
    return sizes


def tree_paths(tree: Path, count: int) -> list[Path]:
    """Where the files go: 2 levels of directories, about 25 files in each."""
    return [tree / f"d{i % 40:02d}" / f"s{i % 2}" / f"f{i:05d}.bin" for i in range(count)]


def write_file(path: Path, size: int, block: bytes, tag: bytes) -> None:
    """``size`` bytes of ``block`` repeated, each MiB headed by ``tag`` and its
    index, so no two files, and no two pieces of a file, are the same."""
    view = memoryview(block)
    with path.open("wb") as f:
        for chunk, offset in enumerate(range(0, size, len(block))):
            n = min(len(block), size - offset)
            head = tag + chunk.to_bytes(8, "little")
            f.write(head[:n])
            f.write(view[len(head) : n])


@dataclass
class Tree:
    path: Path
    files: list[Path]
    sizes: list[int]
    block: bytes

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def rewrite(self, share: float, version: int) -> tuple[int, int]:
        """Rewrite ``share`` of the files (the same ones every run), same sizes,
        new bytes; returns (files, bytes) changed."""
        count = max(1, round(len(self.files) * share))
        chosen = random.Random(SEED + version).sample(range(len(self.files)), count)
        for i in chosen:
            write_file(self.files[i], self.sizes[i], self.block, _tag(i, version))
        return count, sum(self.sizes[i] for i in chosen)


def _tag(index: int, version: int) -> bytes:
    return b"roost-bench" + version.to_bytes(4, "little") + index.to_bytes(4, "little")


def make_tree(path: Path, count: int, total: int) -> Tree:
    rng = random.Random(SEED)
    sizes = file_sizes(count, total, rng)
    block = rng.randbytes(MIB)
    files = tree_paths(path, count)
    for i, (file, size) in enumerate(zip(files, sizes, strict=True)):
        file.parent.mkdir(parents=True, exist_ok=True)
        write_file(file, size, block, _tag(i, 1))
    return Tree(path, files, sizes, block)


def warm(tree: Tree) -> None:
    """The tree's write-back done and its pages read once, so runs start alike."""
    os.sync()
    for file in tree.files:
        with file.open("rb") as f:
            while f.read(4 * MIB):
                pass


# --------------------------------------------------------------------- create


@dataclass
class CreateRow:
    tool: str
    command: str
    runs: list[Run] = field(default_factory=list)
    note: str = ""

    def best(self) -> Run:
        return min(self.runs, key=lambda r: r.seconds)

    def median_seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)


def _create_argv(tree: Path, tag: str, out: Path, *extra: str) -> list[str]:
    argv = [*ROOST, "create", str(tree), "--tag", tag, "--out", str(out)]
    return [*argv, "--tracker", ANNOUNCE, "--json", *extra]


def _mktorrent_argv(exponent: int, torrent: Path, target: Path) -> list[str]:
    """mktorrent hashing ``target`` with every core into ``torrent``."""
    cores = str(os.cpu_count() or 1)
    argv = ["mktorrent", "-l", str(exponent), "-t", cores, "-a", ANNOUNCE]
    return [*argv, "-o", str(torrent), str(target)]


def piece_exponent(piece_size: int) -> tuple[int, str]:
    """mktorrent's ``-l`` for roost's piece size, clamped to what it takes."""
    exponent = piece_size.bit_length() - 1
    low, high = MKTORRENT_EXPONENTS
    clamped = min(max(exponent, low), high)
    note = "" if clamped == exponent else f"mktorrent -l {clamped} (roost chose 2^{exponent})"
    return clamped, note


def timed_create(row: CreateRow, out: Path, commands: list[list[str]]) -> str:
    """Run ``commands`` one after the other into the empty ``out`` as one timed
    run of ``row``; returns the last command's stdout."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    os.sync()  # the previous run's write-back is not this run's
    stdout = ""
    with Meter() as meter:
        for argv in commands:
            stdout = run_command(argv)
    meter.run.disk_bytes = disk_used(out)
    row.runs.append(meter.run.rounded())
    shutil.rmtree(out)
    return stdout


def timed_roost(row: CreateRow, out: Path, argv: list[str]) -> dict[str, Any]:
    """One timed ``roost create --json`` run; its JSON summary."""
    doc: dict[str, Any] = json.loads(timed_create(row, out, [argv]))
    row.runs[-1].inner_seconds = doc["seconds"]
    return doc


def bench_create(work: Path, files: int, size: int, repeat: int) -> dict[str, Any]:
    """The four ways to make a torrent of the tree, interleaved ``repeat`` times."""
    print(f"== create: {files} files, {size / MIB:.0f} MiB", flush=True)
    tree = make_tree(work / "tree", files, size)
    warm(tree)
    t, out = tree.path, [work / f"out{i}" for i in range(1, 5)]
    rows = {
        "a": CreateRow("roost create (tree)", "roost create TREE --tag b1 --out OUT1"),
        "b": CreateRow("roost create --tar", "roost create TREE --tag b2 --out OUT2 --tar"),
        "c": CreateRow("mktorrent TREE", ""),
        "d": CreateRow("tar cf + mktorrent (lssd)", ""),
    }
    chosen: dict[str, Any] = {}
    for attempt in range(repeat):
        doc = timed_roost(rows["a"], out[0], _create_argv(t, "b1", out[0]))
        chosen = {k: doc[k] for k in ("kind", "size", "piece_size", "pieces")}
        exponent, note = piece_exponent(doc["piece_size"])
        mktorrent = f"mktorrent -l {exponent} -t {os.cpu_count()}"
        rows["c"].command = f"{mktorrent} -o OUT3/t.torrent TREE"
        rows[
            "d"
        ].command = f"tar cf OUT4/b.tar -C TREE . && {mktorrent} -o OUT4/b.torrent OUT4/b.tar"
        rows["c"].note = rows["d"].note = note
        timed_roost(rows["b"], out[1], _create_argv(t, "b2", out[1], "--tar"))
        timed_create(rows["c"], out[2], [_mktorrent_argv(exponent, out[2] / "t.torrent", t)])
        tar, torrent = out[3] / "b.tar", out[3] / "b.torrent"
        tar_cf = ["tar", "cf", str(tar), "-C", str(t), "."]
        timed_create(rows["d"], out[3], [tar_cf, _mktorrent_argv(exponent, torrent, tar)])
        print(f"   round {attempt + 1}/{repeat}: " + _round_line(rows), flush=True)
    shutil.rmtree(tree.path)
    return {
        "files": files,
        "size": tree.size,
        "repeat": repeat,
        "roost_tree_release": chosen,
        "rows": [_create_json(row, tree.size) for row in rows.values()],
    }


def _round_line(rows: dict[str, CreateRow]) -> str:
    return ", ".join(f"{k} {r.runs[-1].seconds:.2f} s" for k, r in rows.items())


def _create_json(row: CreateRow, size: int) -> dict[str, Any]:
    best = row.best()
    return {
        "tool": row.tool,
        "command": row.command,
        "best_s": best.seconds,
        "median_s": round(row.median_seconds(), 3),
        "inner_s": best.inner_seconds,
        "rate_mb_s": round(size / max(best.seconds, 1e-9) / 1e6, 1),
        "disk_bytes": best.disk_bytes,
        "busy_pct": best.busy_pct,
        "tool_cpu_pct": best.tool_cpu_pct,
        "note": row.note,
        "runs": [asdict(r) for r in row.runs],
    }


# --------------------------------------------------------------------- deploy


def deploy_row(name: str, summary: dict[str, Any], run: Run) -> dict[str, Any]:
    """One deploy's figures from ``roost deploy --json``'s summary."""
    hosts = summary.get("hosts", [])
    down = [h["bytes_down"] for h in hosts] or [0]
    reused = [h.get("bytes_reused") or 0 for h in hosts] or [0]
    size = summary.get("size") or 1
    origin_up = (summary.get("seeder") or {}).get("bytes_up", 0)
    errors = sorted({h["error"] for h in hosts if h.get("error")})
    return {
        "deploy": name,
        "ok": bool(summary.get("ok")),
        "hosts": len(hosts),
        "hosts_failed": summary.get("hosts_failed", len(hosts)),
        "seconds": summary.get("seconds"),
        "wall_s": round(run.seconds, 3),
        "size": summary.get("size"),
        "max_bytes_down": max(down),
        "median_bytes_down": int(statistics.median(down)),
        "median_bytes_reused": int(statistics.median(reused)),
        "down_pct_of_size": round(max(down) / size * 100, 1),
        "origin_bytes_up": origin_up,
        "origin_copies": round(origin_up / size, 2),
        "busy_pct": round(run.busy_pct, 1),
        "host_seconds": [h.get("seconds") for h in hosts],
        "errors": errors,
    }


def local_deploy(
    tree: Path, tag: str, dest: Path, hosts: int, *, tar: bool = False, out: Path | None = None
) -> dict[str, Any]:
    argv = [*ROOST, "deploy", str(tree), "--tag", tag, "--local", str(hosts)]
    argv += ["--dest", str(dest), "--json"]
    argv += ["--tar"] if tar else []
    argv += ["--out", str(out)] if out is not None else []
    with Meter(own_cpu=False) as meter:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    try:
        summary = json.loads(proc.stdout)
    except ValueError:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        summary = {"ok": False, "hosts": [], "error": f"exit {proc.returncode}: {tail}"}
    row = deploy_row(tag, summary, meter.run)
    row["command"] = shlex.join(["roost", *argv[len(ROOST) :]])
    if proc.returncode != 0:
        row["errors"].append(summary.get("error") or f"roost deploy exited {proc.returncode}")
    return row


def bench_deploy_local(
    work: Path, files: int, size: int, hosts: int, repeat: int
) -> dict[str, Any]:
    print(f"== deploy: {hosts} local hosts, {files} files, {size / MIB:.0f} MiB", flush=True)
    warm_up_deploy(work, hosts)
    tree = make_tree(work / "deploy-tree", files, size)
    os.sync()
    dest, releases = work / "dest", work / "releases"
    rows = [local_deploy(tree.path, "v1", dest, hosts, out=releases)]
    rows.append(local_deploy(tree.path, "v1tar", work / "dest-tar", hosts, tar=True, out=releases))
    installs = bench_install(
        work, tree, releases / "v1.torrent", releases / "v1tar.torrent", repeat
    )
    changed_files, changed_bytes = tree.rewrite(CHANGED_SHARE, version=2)
    os.sync()
    rows.append(local_deploy(tree.path, "v2", dest, hosts))
    for row in rows:
        print(f"   {_deploy_line(row)}", flush=True)
    return {
        "mode": "local (loopback)",
        "hosts": hosts,
        "files": files,
        "size": tree.size,
        "changed_files": changed_files,
        "changed_bytes": changed_bytes,
        "rows": _with_v1_share(rows),
        "install": installs,
    }


def warm_up_deploy(work: Path, hosts: int) -> None:
    """One small deploy, not reported, so that v1 does not pay alone for a
    cold start (Python's and libtorrent's files read from the disk)."""
    tree = make_tree(work / "warm-up-tree", 4, MIB)
    local_deploy(tree.path, "warmup", work / "warm-up-dest", hosts)
    shutil.rmtree(work / "warm-up-tree")
    shutil.rmtree(work / "warm-up-dest", ignore_errors=True)


def _with_v1_share(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    v1 = next((r["seconds"] for r in rows if r["deploy"] == "v1"), None)
    for row in rows:
        ok = v1 and row["seconds"] is not None
        row["pct_of_v1_time"] = round(row["seconds"] / v1 * 100, 1) if ok else None
    return rows


def _deploy_line(row: dict[str, Any]) -> str:
    errors = f" errors: {row['errors']}" if row["errors"] else ""
    return (
        f"{row['deploy']:<6} ok={row['ok']} {row['seconds']} s, max down "
        f"{row['max_bytes_down']} B ({row['down_pct_of_size']}%), reused "
        f"{row['median_bytes_reused']} B, origin up {row['origin_bytes_up']} B, "
        f"busy {row['busy_pct']}%{errors}"
    )


# -------------------------------------------------------------------- install


def bench_install(
    work: Path, tree: Tree, tree_torrent: Path, tar_torrent: Path, repeat: int
) -> list[dict[str, Any]]:
    """``install_release`` on the tree release laid out as its download
    (``DIR/TAG/...``, as a peer has it) and on the tar release's TAG.tar."""
    from roost.extract import install_release
    from roost.metainfo import read_torrent_file

    download = work / "download" / tree_torrent.stem
    shutil.copytree(tree.path, download)
    cases = [
        ("tree release (download dir)", download, tree_torrent),
        ("tar release (TAG.tar)", tar_torrent.with_suffix(".tar"), tar_torrent),
    ]
    rows = []
    for name, payload, torrent in cases:
        meta = read_torrent_file(torrent)
        runs = []
        for attempt in range(repeat):
            dest = work / f"install-{attempt}"
            os.sync()  # syncfs would flush the set-up's write-back too
            with Meter() as meter:
                install_release(payload, meta, dest)
            runs.append(meter.run.rounded())
            shutil.rmtree(dest)
        best = min(runs, key=lambda r: r.seconds)
        rows.append(
            {
                "install": name,
                "size": tree.size,
                "best_s": best.seconds,
                "gb_s": round(tree.size / max(best.seconds, 1e-9) / 1e9, 3),
                "busy_pct": best.busy_pct,
                "tool_cpu_pct": best.tool_cpu_pct,
                "runs": [asdict(r) for r in runs],
            }
        )
    shutil.rmtree(download.parent)
    return rows


# ------------------------------------------------------------------------ lab


@dataclass
class LabDeploy:
    """One release deployed over the lab: torrent made on the controller,
    tracker and seeder on the origin host, ``roost peer`` on the others."""

    work: Path
    tag: str
    tar: bool
    rate_mbit: float
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    TRACKER_PORT = 8998
    FEED_PORT = 8997


def bench_deploy_lab(work: Path, sizes: Sizes, args: argparse.Namespace) -> dict[str, Any]:
    from roost.lab.netns import Lab

    files, hosts, rate = sizes.deploy_files, sizes.hosts, sizes.rate
    what = f"{hosts} hosts at {rate:g} Mbit/s, {files} files, {sizes.deploy_bytes / MIB:.0f} MiB"
    print(f"== deploy (lab): {what}", flush=True)
    tree = make_tree(work / "deploy-tree", files, sizes.deploy_bytes)
    os.sync()
    with Lab(hosts + 1, rate_mbit=rate, prefix=args.lab_name, subnet=args.lab_subnet) as lab:
        origin, peers = lab.hosts[0], lab.hosts[1:]

        def deploy(tag: str, tar: bool = False) -> dict[str, Any]:
            return lab_deploy(lab, origin, peers, tree, LabDeploy(work / tag, tag, tar, rate))

        rows = [deploy("v1"), deploy("v1tar", tar=True)]
        installs = bench_install(
            work, tree, work / "v1" / "v1.torrent", work / "v1tar" / "v1tar.torrent", sizes.repeat
        )
        changed_files, changed_bytes = tree.rewrite(CHANGED_SHARE, version=2)
        os.sync()
        rows.append(deploy("v2"))
    for row in rows:
        print(f"   {_deploy_line(row)}", flush=True)
    return {
        "mode": f"lab ({rate:g} Mbit/s links; origin up = its link's bytes, headers too)",
        "hosts": hosts,
        "files": files,
        "size": tree.size,
        "changed_files": changed_files,
        "changed_bytes": changed_bytes,
        "rows": _with_v1_share(rows),
        "install": installs,
    }


def lab_deploy(
    lab: Lab, origin: Host, peers: list[Host], tree: Tree, d: LabDeploy
) -> dict[str, Any]:
    """Deploy ``tree`` as ``d.tag`` to every peer host; the summary in
    ``roost deploy --json``'s shape, so one table shows both fleets."""
    d.work.mkdir(parents=True)
    announce = f"http://{origin.address}:{d.TRACKER_PORT}/announce"
    argv = [*ROOST, "create", str(tree.path), "--tag", d.tag, "--out", str(d.work)]
    doc = json.loads(run_command([*argv, "--tracker", announce, "--json", *(["--tar"] * d.tar)]))
    torrent, payload = doc["torrent"], doc["payload"]
    peer_dest = "/tmp/bigbench/dest-tar" if d.tar else "/tmp/bigbench/dest"
    try:
        _lab_origin(origin, d, torrent, payload)
        up0 = lab.counters()[origin.name][1]
        with Meter(own_cpu=False) as meter:
            started = time.time()
            for host in peers:
                d.procs.append(host.popen(_peer_command(origin, host, d, torrent, peer_dest)))
            limit = doc["size"] * 8 / (d.rate_mbit * 1e6)  # one copy over one link
            times = _wait_done(peers, d, started, timeout=max(120.0, 30 * limit))
        up = lab.counters()[origin.name][1] - up0
    finally:
        for proc in d.procs:
            _kill_group(proc)
        _stop_lingering(peers, d)
    # what a host installs, as roost deploy --json says: the tar, or the files
    # (create's "size" counts a tree's BEP 47 pads too)
    size = doc["size"] if d.tar else tree.size
    summary = _lab_summary(peers, d, size, times, up)
    return deploy_row(d.tag, summary, meter.run)


def _lab_origin(origin: Host, d: LabDeploy, torrent: str, payload: str) -> None:
    def start(argv: list[str], log: str) -> None:
        with (d.work / log).open("w") as out:
            d.procs.append(origin.popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=d.work))

    bind = ["--bind", origin.address, "--port", str(d.TRACKER_PORT)]
    start([*ROOST, "tracker", *bind], "tracker.log")
    tools.wait_port(origin.address, d.TRACKER_PORT)
    seed = [*ROOST, "seed", torrent, "--payload", payload, "--announce-ip", origin.address]
    start([*seed, "--feed-port", str(d.FEED_PORT)], "seeder.log")
    tools.wait_port(origin.address, d.FEED_PORT)


def _peer_command(origin: Host, host: Host, d: LabDeploy, torrent: str, dest: str) -> str:
    base = f"/tmp/bigbench/{d.tag}"
    argv = [*ROOST, "peer", torrent, "--dest", dest, "--temp-path", f"{base}/tmp"]
    argv += ["--announce-ip", host.address, "--events", "json"]
    argv += ["--feed", f"http://{origin.address}:{d.FEED_PORT}/"]
    return (
        f"mkdir -p {base} && {shlex.join(argv)} > {base}/events.jsonl 2> {base}/stderr.log"
        f" && date +%s.%N > {base}/done"
    )


def _wait_done(
    peers: list[Host], d: LabDeploy, started: float, timeout: float
) -> list[float | None]:
    """Each peer host's seconds to its done mark (None: none by the deadline,
    or its command exited without one)."""
    marks = [h.path(f"/tmp/bigbench/{d.tag}/done") for h in peers]
    commands = d.procs[-len(peers) :]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = all(p.poll() is not None for p in commands)
        times = [_mark_time(m, started) for m in marks]
        if None not in times or exited:
            return times
        time.sleep(0.05)
    return [_mark_time(m, started) for m in marks]


def _mark_time(mark: Path, started: float) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        return float(mark.read_text().strip()) - started
    return None


def _lab_summary(
    peers: list[Host], d: LabDeploy, size: int, times: list[float | None], up: int
) -> dict[str, Any]:
    hosts = []
    for host, seconds in zip(peers, times, strict=True):
        done = _done_event(host.path(f"/tmp/bigbench/{d.tag}/events.jsonl"))
        error = None if seconds is not None else _last_line(host, d) or "did not finish"
        hosts.append(
            {
                "name": host.name,
                "ok": seconds is not None,
                "seconds": None if seconds is None else round(seconds, 3),
                "bytes_down": done.get("down", 0),
                "bytes_reused": done.get("reused", 0),
                "error": error,
            }
        )
    finished = [t for t in times if t is not None]
    return {
        "ok": len(finished) == len(peers),
        "seconds": round(max(finished), 3) if len(finished) == len(peers) else None,
        "size": size,
        "hosts_failed": len(peers) - len(finished),
        "seeder": {"bytes_up": up},  # the origin's link, headers included
        "hosts": hosts,
    }


def _done_event(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError):
        for line in reversed(path.read_text().splitlines()):
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and doc.get("event") == "done":
                    return doc
    return {}


def _last_line(host: Host, d: LabDeploy) -> str:
    with contextlib.suppress(OSError):
        lines = host.path(f"/tmp/bigbench/{d.tag}/stderr.log").read_text().strip().splitlines()
        return lines[-1] if lines else ""
    return ""


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a process this bench started (in its own session), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _stop_lingering(peers: list[Host], d: LabDeploy) -> None:
    """This deploy's lingering peer workers, by the pid files they wrote under
    its temp path (a pid is killed only while it still names a roost process)."""
    for host in peers:
        temp = host.path(f"/tmp/bigbench/{d.tag}/tmp")
        for pid_file in temp.rglob("*.pid") if temp.exists() else ():
            with contextlib.suppress(ValueError, OSError):
                pid = int(pid_file.read_text().split()[0])
                if b"roost" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------- report


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def markdown(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    lines = [
        f"# Big builds (issue 14), {meta['date']}",
        "",
        f"`{meta['command']}` on {meta['machine']}, {meta['seconds']} s in all.",
        f"Busy % = the whole machine's CPU use over the row's run (all {meta['cores']} "
        "cores, /proc/stat), the tool itself included; other work may run here, so "
        "where busy % is well above the tool's own CPU %, the numbers measure a busy "
        "machine's CPU and disk, not the tool alone.",
    ]
    if doc.get("create"):
        lines += ["", *_create_table(doc["create"])]
    if doc.get("deploy"):
        lines += ["", *_deploy_table(doc["deploy"])]
        if doc["deploy"]["install"]:
            lines += ["", *_install_table(doc["deploy"]["install"])]
    return "\n".join(lines) + "\n"


def _create_table(create: dict[str, Any]) -> list[str]:
    chosen = create["roost_tree_release"]
    lines = [
        f"## create: {create['files']} files, {human(create['size'])}, page cache warm, "
        f"best of {create['repeat']} (roost's tree release: {chosen.get('pieces')} pieces "
        f"of {human(chosen.get('piece_size', 0))}); hash rate = tree bytes / best s, "
        "start-up included; in-process s = roost's own --json seconds",
        "",
        "| tool | best s | median s | in-process s | hash rate MB/s | disk written | busy % "
        "| tool CPU % | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in create["rows"]:
        inner = "—" if r["inner_s"] is None else f"{r['inner_s']:.2f}"
        lines.append(
            f"| {r['tool']} | {r['best_s']:.2f} | {r['median_s']:.2f} | {inner} "
            f"| {r['rate_mb_s']:.0f} "
            f"| {human(r['disk_bytes'])} | {r['busy_pct']:.0f} | {r['tool_cpu_pct']:.0f} "
            f"| {r['note']} |"
        )
    return lines


def _deploy_table(deploy: dict[str, Any]) -> list[str]:
    lines = [
        f"## deploy: {deploy['hosts']} hosts, {deploy['mode']}, {deploy['files']} files, "
        f"{human(deploy['size'])}; v2 = {deploy['changed_files']} files "
        f"({human(deploy['changed_bytes'])}) rewritten",
        "",
        "| deploy | ok | s | % of v1 | max down | median down | reused | max down % of size "
        "| origin up | busy % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in deploy["rows"]:
        pct = "—" if r["pct_of_v1_time"] is None else f"{r['pct_of_v1_time']:.0f}"
        seconds = "—" if r["seconds"] is None else f"{r['seconds']:.2f}"
        lines.append(
            f"| {r['deploy']} | {'yes' if r['ok'] else 'NO'} | {seconds} | {pct} "
            f"| {human(r['max_bytes_down'])} | {human(r['median_bytes_down'])} "
            f"| {human(r['median_bytes_reused'])} | {r['down_pct_of_size']:.1f} "
            f"| {human(r['origin_bytes_up'])} ({r['origin_copies']}x) | {r['busy_pct']:.0f} |"
        )
    return lines


def _install_table(installs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## install: `roost.extract.install_release` (no peer, durable: syncfs included), "
        f"best of {len(installs[0]['runs'])}",
        "",
        "| payload | size | best s | GB/s | busy % | tool CPU % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in installs:
        lines.append(
            f"| {r['install']} | {human(r['size'])} | {r['best_s']:.2f} | {r['gb_s']:.2f} "
            f"| {r['busy_pct']:.0f} | {r['tool_cpu_pct']:.0f} |"
        )
    return lines


# ----------------------------------------------------------------------- main


@dataclass(frozen=True)
class Sizes:
    create_files: int
    create_bytes: int
    deploy_files: int
    deploy_bytes: int
    hosts: int
    repeat: int
    rate: float  # lab: the links' Mbit/s


def sizes_of(args: argparse.Namespace) -> Sizes:
    if args.quick:
        return Sizes(200, 64 * MIB, 40, 16 * MIB, args.hosts or 4, 1, args.rate or 100.0)
    lab = args.lab
    return Sizes(
        args.files,
        int(args.gib * GIB),
        args.deploy_files or (200 if lab else 400),
        int((args.deploy_mib or (32 if lab else 256)) * MIB),
        args.hosts or (8 if lab else 4),
        args.repeat,
        args.rate or 10.0,
    )


def check_room(scratch: Path, sizes: Sizes, parts: set[str]) -> None:
    """Refuse, in one line, a run whose files would not fit in ``scratch``."""
    margin = 64 * MIB
    need = 0
    if "create" in parts:  # the tree and one output (a tar) at a time
        need = max(need, sizes.create_bytes * 2 + sizes.create_bytes // 50 + margin)
    if "deploy" in parts:  # the tree, its tar, its copy as a download, one timed
        # install; per host: v1, v1tar and v2 installed, a download area
        need = max(need, sizes.deploy_bytes * (4 + 4 * sizes.hosts) + margin)
    free = shutil.disk_usage(scratch).free
    if need > free:
        raise SystemExit(
            f"big_builds: {scratch} has {human(free)} free, this run needs {human(need)}; "
            "use --scratch elsewhere, or fewer --files / --gib"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smoke run, < 60 s")
    ap.add_argument("--files", type=int, default=2000, help="create: files in the tree")
    ap.add_argument("--gib", type=float, default=4.0, help="create: the tree's size, GiB")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each create and install")
    ap.add_argument("--deploy-files", type=int, default=0, help="deploy: files (400; lab 200)")
    ap.add_argument("--deploy-mib", type=float, default=0, help="deploy: MiB (256; lab 32)")
    ap.add_argument("--hosts", type=int, default=0, help="deploy: hosts (4; lab 8)")
    ap.add_argument("--parts", default="create,deploy", help="what to run: create,deploy")
    ap.add_argument("--lab", action="store_true", help="deploy on the emulated fleet (root)")
    ap.add_argument("--rate", type=float, default=0, help="lab: Mbit/s (10; --quick 100)")
    ap.add_argument("--lab-name", default="roostbig", help="lab: namespace prefix")
    ap.add_argument("--lab-subnet", default="198.18.14.0/24", help="lab: in 198.18.0.0/15")
    ap.add_argument("--scratch", type=Path, default=None, help="scratch dir (default: temp)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "big_builds.json")
    ap.add_argument("--keep", action="store_true", help="keep the scratch files")
    return ap.parse_args(argv)


@contextlib.contextmanager
def scratch_dir(args: argparse.Namespace) -> Iterator[Path]:
    parent = args.scratch
    if args.lab and parent is None:
        parent = Path("/var/tmp")  # the hosts' /tmp is private: the tree must be elsewhere
    if args.lab and any(Path(parent).resolve().is_relative_to(m) for m in ("/tmp", "/opt")):
        raise SystemExit(f"big_builds: --scratch {parent} must be outside /tmp and /opt (--lab)")
    work = Path(tempfile.mkdtemp(prefix="roost-big-", dir=parent))
    work.chmod(0o755)
    try:
        yield work
    finally:
        if args.keep:
            print(f"kept scratch files in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_of(args)
    parts = set(args.parts.split(","))
    if unknown := parts - {"create", "deploy"}:
        raise SystemExit(f"big_builds: unknown part(s) {sorted(unknown)}: create, deploy")
    started = time.time()
    load_before = os.getloadavg()
    doc: dict[str, Any] = {}
    with scratch_dir(args) as work:
        check_room(work, sizes, parts)
        if "create" in parts:
            doc["create"] = bench_create(work, sizes.create_files, sizes.create_bytes, sizes.repeat)
        if "deploy" in parts and args.lab:
            doc["deploy"] = bench_deploy_lab(work, sizes, args)
        elif "deploy" in parts:
            doc["deploy"] = bench_deploy_local(
                work, sizes.deploy_files, sizes.deploy_bytes, sizes.hosts, sizes.repeat
            )
    doc["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "command": "python bench/big_builds.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        "cores": os.cpu_count(),
        "seconds": round(time.time() - started, 1),
        "load_before": load_before,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print()
    print(markdown(doc))
    deploys = doc.get("deploy", {}).get("rows", [])
    return 0 if all(r["ok"] for r in deploys) else 1


if __name__ == "__main__":
    sys.exit(main())

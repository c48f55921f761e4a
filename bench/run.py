#!/usr/bin/env python3
"""roost's benchmark suite: one command, one run, every tool side by side.

    python bench/run.py                 # 4-64 hosts at 10 Mbit/s, 32 at 50, + hot paths
    python bench/run.py --quick         # CI smoke: 4 hosts, 4 MiB, < 60 s
    python bench/run.py --hosts 16 --size-mib 64 --rate 100mbit --tools roost,lssd

Needs root (network namespaces). Writes results.{json,md} and completion.png
(the full run: to bench/results; --quick and --hosts: beside the scratch
files, unless --out), and prints the table. See bench/NOTES.md for what was tried.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
import tools  # noqa: E402

from roost.lab.netns import Lab, parse_rate  # noqa: E402

MIB = 1024 * 1024
# (hosts, size MiB, rate Mbit/s). At 10 Mbit/s the links and not the 2 cores
# bind up to ~16 hosts; at 32 and 64 hosts the machine is busy too (see the
# machine-busy column). The 50 Mbit/s point is CPU-bound on 2 cores.
TARGET = [
    (4, 8, 10.0),
    (8, 8, 10.0),
    (16, 8, 10.0),
    (32, 32, 10.0),
    (64, 16, 10.0),
    (32, 32, 50.0),
]
QUICK = [(4, 4, 200.0)]


def make_tools(names: list[str], args: argparse.Namespace) -> list[tools.Tool]:
    def roost(feed: bool, name: str) -> tools.Roost:
        return tools.Roost(
            tracker_args=tuple(shlex.split(args.roost_tracker_args)),
            peer_args=tuple(shlex.split(args.roost_peer_args)),
            seed_args=tuple(shlex.split(args.roost_seed_args)),
            create_args=tuple(shlex.split(args.roost_create_args)),
            feed=feed,
            name=name,
        )

    table: dict[str, Any] = {
        "roost": lambda: roost(True, "roost"),
        # roost with the origin as a plain BitTorrent seeder (no feed): the
        # design before the feed, kept to measure it against side by side
        "roost-bt": lambda: roost(False, "roost-bt"),
        "lt": lambda: tools.BareLibtorrent(
            settings=args.lt_settings,
            super_seed=args.lt_super_seed,
            create_args=tuple(shlex.split(args.roost_create_args)),
            tracker_args=tuple(shlex.split(args.roost_tracker_args)),
        ),
        "lssd": tools.Lssd,
        "nginx": tools.Nginx,
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"bench: unknown tool(s) {unknown}; choose from {sorted(table)}")
    return [table[n]() for n in names]


def run_fleet(args: argparse.Namespace, scenarios: list[tuple[int, int, float]]) -> list[dict]:
    rows: list[dict] = []
    if args.scratch:
        Path(args.scratch).mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="roost-bench-", dir=args.scratch))
    base.chmod(0o755)  # nginx and opentracker drop to nobody
    try:
        for hosts, size_mib, rate in scenarios:
            size = int(size_mib * MIB)
            artifact = base / f"artifact-{size_mib}m.bin"
            if not artifact.exists():
                with artifact.open("wb") as f:
                    for _ in range(max(1, size // MIB)):
                        f.write(os.urandom(min(MIB, size)))
            limit = size * 8 / (rate * 1e6)
            origin_rate = f", the origin's {args.origin_rate:g} Mbit/s" if args.origin_rate else ""
            print(
                f"== {hosts} hosts, {size_mib} MiB, {rate:g} Mbit/s{origin_rate} "
                f"(limit {limit:.2f} s)",
                flush=True,
            )
            with Lab(
                hosts + 1,
                rate_mbit=rate,
                prefix=args.name,
                subnet=args.subnet,
                queue_ms=args.queue_ms,
                host_rates={1: args.origin_rate} if args.origin_rate else None,
            ) as lab:
                origin, peers = lab.hosts[0], lab.hosts[1:]
                for tool in make_tools(args.tools.split(","), args):
                    work = base / f"{tool.name}-{hosts}-{rate:g}"
                    work.mkdir()
                    cgroup = tools.make_cgroup(f"{tool.name}-{hosts}-{rate:g}-{os.getpid()}")
                    ctx = tools.Ctx(
                        lab,
                        origin,
                        peers,
                        artifact,
                        work,
                        size,
                        rate,
                        cgroup=cgroup,
                        origin_nice=args.origin_nice,
                        together=not args.one_by_one,
                    )
                    timeout = args.timeout or (
                        hosts * limit * 1.5 + 60 if tool.name == "nginx" else 30 * limit + 60
                    )
                    try:
                        res = tools.deploy(tool, ctx, timeout=timeout).to_json()
                    finally:
                        tools.remove_cgroup(cgroup)
                    if args.origin_rate:
                        res["origin_rate_mbit"] = args.origin_rate
                        note = f"origin {args.origin_rate:g} Mbit/s"
                        res["note"] = f"{note}; {res['note']}" if res["note"] else note
                    rows.append(res)
                    print(
                        f"   {tool.name:<6} last {res['last_s']} s  median {res['median_s']} s  "
                        f"xlimit {res['ratio']}  origin copies {res['origin_copies']}  "
                        f"cpu {res['cpu_s']} s ({res['cpu_util'] * 100:.0f}%) "
                        f"busy {res['machine_util'] * 100:.0f}% "
                        f"idle-origin {res['origin_idle_s']} s "
                        f"drops {res['link_drops']} "
                        f"origin segs/retrans {res['origin_segments']} {res['note']}",
                        flush=True,
                    )
                    if feed := res["collected"].get("feed"):
                        print(
                            f"          feed: {feed['pieces']} pieces, re-handed "
                            f"{feed['reassigned']}, tail {feed['tail']}, repairs "
                            f"{feed['repairs']}, held back {feed['held_back']}",
                            flush=True,
                        )
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept scratch files in {base}")
    return rows


def _compile_roost() -> None:
    """Byte-compile roost as an installed copy is (pip compiles a wheel at
    install; bootstrap installs one on every host). From a checkout, under
    PYTHONDONTWRITEBYTECODE, every peer would compile roost's modules again
    at start, ~0.1 CPU-s each, all hosts at once on this machine's 2 cores:
    a cost no real fleet pays (bench/NOTES.md "Start-up")."""
    import compileall

    import roost

    compileall.compile_dir(str(Path(roost.__file__).parent), quiet=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI smoke: 4 hosts, 4 MiB, 200 Mbit/s")
    ap.add_argument("--hosts", help="comma-separated fleet sizes (with --size-mib, --rate)")
    ap.add_argument("--size-mib", type=float, default=16)
    ap.add_argument("--rate", default="25mbit")
    ap.add_argument(
        "--tools",
        default="roost,roost-bt,lt,lssd",
        help="roost (with the origin's feed), roost-bt (without), lt (bare libtorrent), "
        "lssd (mktorrent + opentracker + aria2c), nginx (one HTTP server + curl)",
    )
    ap.add_argument(
        "--hot",
        default=None,
        help="hot paths to run: hash,extract,tracker or none (default all; none with --quick)",
    )
    ap.add_argument("--hash-mib", type=int, default=1024, help="file size for the hashing test")
    ap.add_argument("--timeout", type=float, default=0, help="per tool and scenario, seconds")
    ap.add_argument("--subnet", default="198.18.100.0/24")
    ap.add_argument(
        "--origin-nice",
        type=int,
        default=-10,
        help="CPU weight of the origin's processes against a host's, as a nice value "
        "(default -10, about nine hosts': it stands for the origin's own machine; 0: equal)",
    )
    ap.add_argument(
        "--one-by-one",
        action="store_true",
        help="start each host as soon as it is launched, the clock at the first "
        "(default: every host waits at a gate until all are launched, then all start)",
    )
    ap.add_argument(
        "--origin-rate",
        type=parse_rate,
        default=None,
        help="the origin's link rate, where it is not --rate (an origin on a faster link "
        "than its hosts', e.g. 100mbit); the limit stays size / --rate",
    )
    ap.add_argument("--queue-ms", type=float, default=50, help="link queue (tbf latency)")
    ap.add_argument("--name", default="roostbench", help="lab name (namespaces NAME-...)")
    ap.add_argument("--roost-tracker-args", default="", help="extra args for roost tracker")
    ap.add_argument(
        "--roost-peer-args",
        default="",
        help="extra args for roost peer ({addr}: the host's address)",
    )
    ap.add_argument("--roost-seed-args", default="", help="extra args for roost seed")
    ap.add_argument("--roost-create-args", default="", help="extra args for roost create")
    ap.add_argument("--lt-settings", default="{}", help="tool lt: settings pack overrides")
    ap.add_argument("--lt-super-seed", action="store_true", help="tool lt: super-seed origin")
    ap.add_argument(
        "--out",
        type=Path,
        help="where results go (default bench/results for the full run; "
        "SCRATCH/roost-bench-results for --quick and --hosts, which must not "
        "overwrite the full table)",
    )
    ap.add_argument("--scratch", default="/var/tmp", help="where artifacts are written")
    ap.add_argument("--keep", action="store_true", help="keep scratch files (logs)")
    args = ap.parse_args(argv)

    if args.hosts:
        rate = parse_rate(args.rate) or 25.0
        scenarios = [(int(h), int(args.size_mib), rate) for h in args.hosts.split(",")]
    else:
        scenarios = QUICK if args.quick else TARGET
    if args.out is None:
        partial = args.quick or args.hosts
        args.out = Path(args.scratch) / "roost-bench-results" if partial else HERE / "results"
    hot_names = (args.hot or ("none" if args.quick else "hash,extract,tracker")).split(",")

    scratch = Path(args.scratch).resolve()
    if any(scratch == Path(m) or Path(m) in scratch.parents for m in ("/tmp", "/opt")):
        raise SystemExit(f"bench: --scratch {scratch} must be outside /tmp and /opt (per-host)")
    started = time.time()
    _compile_roost()
    fleet = run_fleet(args, scenarios) if args.tools else []
    hot: list[dict] = []
    if "none" not in hot_names:
        import hotpaths

        hot = hotpaths.run(hot_names, hash_mib=args.hash_mib, scratch=Path(args.scratch))
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "command": "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        "seconds": round(time.time() - started, 1),
        "origin_nice": args.origin_nice,
        "together": not args.one_by_one,
        "calibration": tools.calibration(),
    }
    text = report.write(args.out, meta, fleet, hot)
    print()
    print(text)
    bad = [r for r in fleet if r["tool"] == "roost" and not r["ok"]]
    return 1 if bad else 0


if __name__ == "__main__":
    from roost.errors import RoostError

    try:
        sys.exit(main())
    except RoostError as exc:
        sys.exit(f"bench: error: {exc}")

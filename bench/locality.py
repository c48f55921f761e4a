#!/usr/bin/env python3
"""The tracker's locality-aware handout, measured: two datacenters, one slow link.

    python bench/locality.py                    # 8+8 peers, 24 MiB, 50/20 Mbit, 2 rounds
    python bench/locality.py --quick            # CI smoke: 2+2 peers, 2 MiB, < 30 s
    python bench/locality.py --torrents private # only the private torrent (no PEX, no DHT)

One lab with two emulated datacenters (``Lab(datacenters=2)``): dc1 holds the
origin (roost tracker + roost seed) and ``--peers`` receiving hosts, dc2 another
``--peers``; every host link is shaped to ``--rate``, the link between the
datacenters to ``--inter-dc-rate``. The same artifact is deployed with roost's
real commands (bench/tools.py), alternately with the tracker's locality policy
(labels from ``--dc CIDR=NAME``, one prefix per datacenter) and without it
(same labels, ``--no-locality``), ``--rounds`` times each, for a public
torrent (roost's default: libtorrent's peer exchange, PEX, is on) and a
private one (``roost create --private``: no PEX). Reported per run:
time until the last host is complete, the median, the bytes that crossed the
inter-datacenter link (in copies of the artifact; one copy is the minimum
for dc2 to get it at all) and the origin's upload in copies.

Writes bench/results/locality.{json,md}. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tools  # noqa: E402

from roost.lab.netns import Lab, parse_rate  # noqa: E402

MIB = 1024 * 1024
MODES = ("locality", "no-locality")
TORRENTS = ("public", "private")


def make_artifact(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left > 0:
            n = min(MIB, left)
            f.write(os.urandom(n))
            left -= n


def run_one(
    lab: Lab, torrent: str, mode: str, artifact: Path, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One deploy of ``artifact`` to every host but the origin, with or without locality."""
    origin, peers = lab.hosts[0], lab.hosts[1:]
    labels = [f"--dc={cidr}=dc{i}" for i, cidr in enumerate(lab.dc_subnets, 1)]
    tracker_args = [*labels, *(["--no-locality"] if mode == "no-locality" else [])]
    tracker_args += args.tracker_args.split()
    tool = tools.Roost(
        tracker_args=tuple(tracker_args),
        create_args=("--private",) if torrent == "private" else (),
        peer_args=tuple(args.peer_args.split()),
    )
    size = artifact.stat().st_size
    ctx = tools.Ctx(lab, origin, peers, artifact, work, size, args.rate_mbit)
    x0 = lab.inter_dc_counters()
    res = tools.deploy(tool, ctx, timeout=args.timeout)
    x1 = lab.inter_dc_counters()
    to_dc2, to_dc1 = x1[0] - x0[0], x1[1] - x0[1]
    times = res.times
    by_dc: dict[str, list[float]] = {}
    for host, t in zip(peers, times, strict=True):
        if t is not None:
            by_dc.setdefault(host.dc, []).append(t)
    return {
        "torrent": torrent,
        "mode": mode,
        "ok": res.ok,
        "completed": res.completed,
        "hosts": res.hosts,
        "last_s": res.last_s,
        "median_s": res.median_s,
        "last_dc1_s": max(by_dc["dc1"]) if "dc1" in by_dc else None,
        "last_dc2_s": max(by_dc["dc2"]) if "dc2" in by_dc else None,
        "inter_dc_bytes": to_dc2 + to_dc1,
        "to_dc2_bytes": to_dc2,
        "to_dc1_bytes": to_dc1,
        "inter_dc_copies": round((to_dc2 + to_dc1) / size, 2),
        "origin_copies": res.origin_copies,
        "wall_s": res.wall_s,
        "note": res.note,
        "times": times,
        "settings": res.settings,
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for torrent in TORRENTS:
        for mode in MODES:
            rs = [r for r in rows if (r["torrent"], r["mode"]) == (torrent, mode) and r["ok"]]
            if rs:
                out[f"{torrent} {mode}"] = _medians(rs)
    return out


def _medians(rs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": len(rs),
        "last_s": round(statistics.median(r["last_s"] for r in rs), 2),
        "median_s": round(statistics.median(r["median_s"] for r in rs), 2),
        "inter_dc_copies": round(statistics.median(r["inter_dc_copies"] for r in rs), 2),
        "origin_copies": round(statistics.median(r["origin_copies"] for r in rs), 2),
    }


def write_report(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    (out / "locality.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=1) + "\n"
    )
    lines = [
        "# Locality-aware handout: two datacenters, one slow link",
        "",
        f"{meta['date']} · `{meta['command']}` · {meta['machine']}",
        "",
        f"{meta['layout']}",
        "",
        "| run | torrent | mode | ok | last s | median s | last dc1 s | last dc2 s "
        "| inter-DC copies (to dc2 / to dc1) | origin copies | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        size = meta["size"]
        lines.append(
            f"| {i} | {r['torrent']} | {r['mode']} | {r['completed']}/{r['hosts']} | {r['last_s']} "
            f"| {r['median_s']} | {r['last_dc1_s']} | {r['last_dc2_s']} "
            f"| {r['inter_dc_copies']} ({r['to_dc2_bytes'] / size:.2f} / "
            f"{r['to_dc1_bytes'] / size:.2f}) | {r['origin_copies']} | {r['note']} |"
        )
    if summary:
        lines += [
            "",
            "Medians over the runs that completed:",
            "",
            "| torrent, mode | runs | last s | median s | inter-DC copies | origin copies |",
            "|---|---|---|---|---|---|",
        ]
        for mode, s in summary.items():
            lines.append(
                f"| {mode} | {s['runs']} | {s['last_s']} | {s['median_s']} "
                f"| {s['inter_dc_copies']} | {s['origin_copies']} |"
            )
    text = "\n".join(lines) + "\n"
    (out / "locality.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI smoke: 2+2 peers, 2 MiB, 1 round")
    ap.add_argument("--peers", type=int, default=8, help="receiving hosts per datacenter")
    ap.add_argument("--size-mib", type=float, default=24)
    ap.add_argument("--rate", default="50mbit", help="every host's link")
    ap.add_argument("--inter-dc-rate", default="20mbit", help="the link between datacenters")
    ap.add_argument("--rounds", type=int, default=2, help="deploys per mode (interleaved)")
    ap.add_argument(
        "--torrents",
        default="public,private",
        help="public (PEX on, roost's default) and/or private (no PEX)",
    )
    ap.add_argument("--tracker-args", default="", help="extra args for roost tracker")
    ap.add_argument("--peer-args", default="", help="extra args for roost peer")
    ap.add_argument("--timeout", type=float, default=240, help="per deploy, seconds")
    ap.add_argument("--subnet", default="198.18.110.0/24")
    ap.add_argument("--name", default="roostloc", help="lab name (namespaces NAME-...)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--scratch", default="/var/tmp", help="where artifacts are written")
    ap.add_argument("--keep", action="store_true", help="keep scratch files (logs)")
    args = ap.parse_args(argv)
    if args.quick:
        args.peers, args.size_mib, args.rounds = 2, 2, 1
        args.timeout = min(args.timeout, 60)
    if args.peers < 1 or args.rounds < 1:
        raise SystemExit("locality: --peers and --rounds must be at least 1")
    torrents = [t for t in args.torrents.split(",") if t]
    if not torrents or any(t not in TORRENTS for t in torrents):
        raise SystemExit(f"locality: --torrents takes {','.join(TORRENTS)}")
    args.rate_mbit = parse_rate(args.rate)
    inter = parse_rate(args.inter_dc_rate)
    size = int(args.size_mib * MIB)

    started = time.time()
    base = Path(tempfile.mkdtemp(prefix="roost-locality-", dir=args.scratch))
    base.chmod(0o755)
    rows: list[dict[str, Any]] = []
    layout = (
        f"dc1: origin (tracker + seeder) + {args.peers} peers; dc2: {args.peers} peers; "
        f"{size // MIB} MiB artifact; host links {args.rate_mbit:g} Mbit/s, "
        f"inter-DC link {inter:g} Mbit/s each way"
    )
    print(layout, flush=True)
    try:
        artifact = base / "artifact.bin"
        make_artifact(artifact, size)
        with Lab(
            2 * args.peers + 1,
            rate_mbit=args.rate_mbit,
            datacenters=2,
            inter_dc_rate_mbit=inter,
            prefix=args.name,
            subnet=args.subnet,
        ) as lab:
            for rnd in range(args.rounds):
                # alternate which mode goes first: the machine's load drifts
                order = MODES if rnd % 2 == 0 else MODES[::-1]
                for torrent, mode in [(t, m) for t in torrents for m in order]:
                    work = base / f"{torrent}-{mode}-{rnd}"
                    work.mkdir()
                    row = run_one(lab, torrent, mode, artifact, work, args)
                    rows.append(row)
                    print(
                        f"  {torrent:<8} {mode:<12} last {row['last_s']} s  "
                        f"median {row['median_s']} s  "
                        f"inter-DC {row['inter_dc_copies']} copies  "
                        f"origin {row['origin_copies']} copies {row['note']}",
                        flush=True,
                    )
    finally:
        if args.keep:
            print(f"kept scratch files in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "command": "python bench/locality.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, Linux {platform.release()}, "
        f"load {os.getloadavg()[0]:.1f}",
        "layout": layout,
        "size": size,
        "seconds": round(time.time() - started, 1),
    }
    print()
    print(write_report(args.out, meta, rows))
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    from roost.errors import RoostError

    try:
        sys.exit(main())
    except RoostError as exc:
        sys.exit(f"locality: error: {exc}")

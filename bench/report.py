"""Results of a bench run: JSON, a Markdown table, a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


GIB = 1024 * MIB


def cpu_per_gib(r: dict[str, Any]) -> float | None:
    """CPU-seconds of the tool's processes per GiB delivered to the hosts."""
    delivered = r["size"] * r["completed"]
    return r["cpu_s"] / (delivered / GIB) if delivered else None


def fleet_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| tool | hosts | size | rate | limit s | last s | median s | x limit | median x | "
        "origin copies | CPU s / GiB | machine busy | note |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for r in rows:
        median_x = r["median_s"] / r["limit_s"] if r["median_s"] is not None else None
        lines.append(
            f"| {r['tool']} | {r['hosts']} | {r['size'] / MIB:g} MiB | {r['rate_mbit']:g} Mbit/s"
            f" | {_f(r['limit_s'])} | {_f(r['last_s'])} | {_f(r['median_s'])}"
            f" | {_f(r['ratio'])} | {_f(median_x)} | {_f(r['origin_copies'])}"
            f" | {_f(cpu_per_gib(r), '{:.0f}')} | {_f(r['machine_util'] * 100, '{:.0f}%')}"
            f" | {r['note'] or ''} |"
        )
    return head + "\n".join(lines) + "\n"


#: A scenario in which some tool's run kept the machine this busy measures
#: the machine's cores as much as the swarm: the table says so below it.
CPU_BOUND = 0.9


def cpu_bound_note(rows: list[dict[str, Any]]) -> str:
    """One line naming the scenarios that were CPU-bound here, or ""."""
    seen: dict[tuple[int, int, float], float] = {}
    for r in rows:
        key = (r["hosts"], r["size"], r["rate_mbit"])
        seen[key] = max(seen.get(key, 0.0), r["machine_util"])
    bound = [
        f"{hosts} hosts, {size / MIB:g} MiB, {rate:g} Mbit/s ({busy * 100:.0f}% busy)"
        for (hosts, size, rate), busy in seen.items()
        if busy >= CPU_BOUND
    ]
    if not bound:
        return ""
    return (
        f"CPU-bound here (some tool kept the machine ≥ {CPU_BOUND * 100:.0f}% busy), "
        f"so these rows measure this machine's cores as much as the swarm: "
        + "; ".join(bound)
        + ".\n"
    )


def hot_table(rows: list[dict[str, Any]]) -> str:
    head = "| hot path | tool | result | note |\n|---|---|---:|---|\n"
    return head + "".join(
        f"| {r['path']} | {r['tool']} | {r['value']:.0f} {r['unit']} | {r.get('note', '')} |\n"
        if r.get("value") is not None
        else f"| {r['path']} | {r['tool']} | — | {r.get('note', '')} |\n"
        for r in rows
    )


def write(
    out: Path, meta: dict[str, Any], fleet: list[dict[str, Any]], hot: list[dict[str, Any]]
) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "fleet": fleet, "hot_paths": hot}, indent=1) + "\n"
    )
    md = [f"# roost bench — {meta['date']}\n", f"`{meta['command']}`\n"]
    if meta.get("machine"):
        md.append(f"{meta['machine']}\n")
    if meta.get("calibration"):
        c = meta["calibration"]
        md.append(
            f"Machine calibration (compare tables from other machines by it): sha256 "
            f"{c['sha256_mb_s']} MB/s, loopback TCP {c['loopback_tcp_mb_s']} MB/s, "
            f"TCP congestion control {c['tcp_cc']}.\n"
        )
    if fleet:
        md += ["## Deploy to an emulated fleet\n"]
        if meta.get("origin_nice"):
            md.append(
                f"Every tool's origin ran with a CPU weight of nice {meta['origin_nice']} "
                "against the hosts' (it stands for the origin's own machine).\n"
            )
        md.append(fleet_table(fleet))
        note = cpu_bound_note(fleet)
        if note:
            md.append(note)
    if hot:
        md += ["## Hot paths\n", hot_table(hot)]
    text = "\n".join(md)
    (out / "results.md").write_text(text)
    if fleet:
        plot(out / "completion.png", fleet)
    return text


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is the optional "bench" extra
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    tools = sorted({r["tool"] for r in rows})
    for tool in tools:
        pts = sorted((r["hosts"], r["ratio"]) for r in rows if r["tool"] == tool and r["ratio"])
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=tool)
    ax.axhline(1.0, color="grey", linestyle="--", label="physical limit (size / link rate)")
    ax.set_xlabel("hosts receiving the artifact")
    ax.set_ylabel("time until the last host is complete (x limit)")
    ax.set_yscale("log")
    ax.set_title("Deploy time against fleet size (each point: its own size and rate)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

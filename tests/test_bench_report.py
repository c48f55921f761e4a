"""bench/report.py: what the results table says about the machine it ran on."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
assert _spec is not None and _spec.loader is not None
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

MIB = 1024 * 1024


def _row(tool: str, hosts: int, busy: float, rate: float = 10.0) -> dict[str, Any]:
    return {"tool": tool, "hosts": hosts, "size": 8 * MIB, "rate_mbit": rate, "machine_util": busy}


def test_the_table_names_the_scenarios_that_were_cpu_bound() -> None:
    rows = [
        _row("roost", 4, 0.12),
        _row("lt", 4, 0.08),
        _row("roost", 64, 0.95),
        _row("lt", 64, 0.85),  # one tool at >= 90% is enough: the scenario is CPU-bound
        _row("roost", 32, 0.6, rate=50.0),
        _row("lt", 32, 0.99, rate=50.0),
    ]
    note = report.cpu_bound_note(rows)
    named = note.split(": ", 1)[1].rstrip(".\n").split("; ")
    assert named == [
        "64 hosts, 8 MiB, 10 Mbit/s (95% busy)",
        "32 hosts, 8 MiB, 50 Mbit/s (99% busy)",
    ]


def test_a_table_where_the_links_bound_says_nothing_of_the_cpu() -> None:
    assert report.cpu_bound_note([_row("roost", 4, 0.12), _row("lssd", 4, 0.03)]) == ""

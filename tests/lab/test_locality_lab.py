"""The locality bench's CI smoke: two emulated datacenters, roost with and without locality."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.lab_kit import ROOT, leftovers, netns


@netns
def test_locality_bench_quick_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results"
    scratch = Path(tempfile.mkdtemp(prefix="roost-locsmoke-", dir="/var/tmp"))
    try:
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "locality.py"),
                "--quick",
                "--out",
                str(out),
                "--scratch",
                str(scratch),
                "--subnet",
                "198.19.15.0/24",
                "--name",
                "rllocsmoke",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((out / "locality.json").read_text())
    runs = data["runs"]
    assert {(r["torrent"], r["mode"]) for r in runs} == {
        (t, m) for t in ("public", "private") for m in ("locality", "no-locality")
    }
    size = data["meta"]["size"]
    for r in runs:
        assert r["ok"] and r["completed"] == 4, r
        assert r["last_s"] >= r["last_dc2_s"] > 0 and r["last_dc1_s"] > 0
        # dc2's two hosts cannot have the artifact unless a copy crossed the link
        assert r["to_dc2_bytes"] >= 0.95 * size, r
        assert r["inter_dc_copies"] >= 0.95
    md = (out / "locality.md").read_text()
    assert "| private locality |" in md and "| public no-locality |" in md
    assert leftovers("rllocsmoke") == []

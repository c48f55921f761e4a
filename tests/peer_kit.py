"""Helpers for the tests that run ``roost peer`` as a real process: run one
to its end, or read its events until it reaches a point of its download."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

Start = Callable[..., subprocess.Popen[bytes]]


def run(start: Start, *args: str, timeout: float = 60) -> tuple[int, list[dict[str, Any]], str]:
    """Run ``roost ARGS`` to its end: exit status, JSON events, stderr."""
    proc = start(*args)
    out, err = proc.communicate(timeout=timeout)
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    return proc.returncode, events, err.decode()


def progress_until(proc: subprocess.Popen[bytes], fraction: float) -> float:
    """Read a running peer's events until its progress reaches ``fraction``."""
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and event["progress"] >= fraction:
            return float(event["progress"])
        assert event["event"] in ("started", "progress", "tracker_warning"), event
    raise AssertionError("the peer ended before reaching the kill point")

"""Helpers for tests about processes roost starts and must stop."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest


def assert_all_gone(pid_list: Path, what: str, wait: float = 5.0) -> None:
    """Every pid listed (one a line) in ``pid_list`` has exited within ``wait`` s."""
    for pid in map(int, pid_list.read_text().split()):
        deadline = time.monotonic() + wait
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{what}'s child {pid} still runs")
            time.sleep(0.1)

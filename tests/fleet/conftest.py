"""Fixtures for fleet tests: a wheel cache for the whole session, sshd fleets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.sshd_harness import SshdFleet


@pytest.fixture(scope="session")
def wheel_cache() -> Path:
    """The controller's wheel cache, kept across sessions (a cache, like pip's)."""
    path = Path(os.environ.get("ROOST_TEST_WHEEL_CACHE", "/var/tmp/roost-test-wheels"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def sshd_fleet() -> Iterator[SshdFleet]:
    """Four hosts with sshd, plus one refusing the test key."""
    if os.geteuid() != 0:
        pytest.skip("sshd hosts with private /opt and /tmp need root")
    fleet = SshdFleet(4, refuse=True).up()
    try:
        yield fleet
    finally:
        fleet.down()

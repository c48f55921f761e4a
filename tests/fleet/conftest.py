"""Fixtures for fleet tests: a wheel cache for the whole session, sshd fleets."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.sshd_harness import SshdFleet, netns_usable


@pytest.fixture(scope="session")
def wheel_cache() -> Path:
    """The controller's wheel cache, kept across sessions (a cache, like pip's)."""
    path = Path(os.environ.get("ROOST_TEST_WHEEL_CACHE", "/var/tmp/roost-test-wheels"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module", params=["netns", "loopback"])
def sshd_fleet(request: pytest.FixtureRequest) -> Iterator[SshdFleet]:
    """Four hosts with sshd, plus one refusing the test key: in network
    namespaces, and again as sshd on loopback ports (the fallback where
    namespaces cannot be made), each host with its own /opt and /tmp.
    A test runs in one of them with ``sshd_harness.ONE_MODE``."""
    if os.geteuid() != 0:
        pytest.skip("sshd hosts with private /opt and /tmp need root")
    mode = request.param
    if mode == "netns" and not netns_usable():
        pytest.skip("no network namespaces here (ip netns add failed: needs root and iproute2)")
    fleet = SshdFleet(4, refuse=True, mode=mode).up()
    try:
        yield fleet
    finally:
        fleet.down()


@pytest.fixture(scope="module")
def loopback_fleet() -> Iterator[SshdFleet]:
    """Three sshd hosts on loopback ports, each in its own mount namespace
    (own /opt and /tmp; no network namespaces, which collide between runs)."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip(
            "hosts with their own /opt and /tmp (and a tmpfs in one) need root and "
            "unshare/nsenter: run the tests as root (sudo ./scripts/test) with util-linux "
            "installed (apt-get install util-linux)"
        )
    f = SshdFleet(3, mode="loopback").up()
    try:
        yield f
    finally:
        f.down()

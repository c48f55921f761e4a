"""The SSH fan-out against real sshd on loopback ports: bounded forks, per-host
connection reuse, time limits, failure threshold, host key checking, jump host."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.errors import RemoteError
from roost.fleet.inventory import Host, hosts_from_strings
from roost.fleet.ssh import Fleet, FleetAborted, Session, SSHOptions
from tests.fleet.sshd_harness import SshdFleet

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def lo_fleet() -> Iterator[SshdFleet]:
    f = SshdFleet(3, mode="loopback").up()
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(f.home)  # ~/.ssh/config is found through $HOME
    try:
        yield f
    finally:
        if old is not None:
            os.environ["HOME"] = old
        f.down()


def _hosts(f: SshdFleet) -> list[Host]:
    return list(hosts_from_strings([f"{h.address}:{h.port}" for h in f.hosts]).peers)


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_forks_bound_concurrency_and_connections_are_reused(lo_fleet: SshdFleet) -> None:
    hosts = _hosts(lo_fleet)

    async def main(forks: int) -> tuple[list[tuple[float, float]], set[str]]:
        async with Fleet(hosts, SSHOptions(forks=forks)) as fleet:
            cmd = "date +%s.%N; sleep 0.4; date +%s.%N"
            res = await fleet.run("timed", cmd)
            spans = []
            for r in res.values():
                assert r.ok and r.value is not None, r.reason
                a, b = map(float, r.value.stdout.split())
                spans.append((a, b))
            ports = set()
            for _ in range(2):  # same client port each step: one connection per host
                again = await fleet.run("who", "echo $SSH_CONNECTION")
                ports |= {r.value.stdout.split()[1] for r in again.values() if r.value}
            return sorted(spans), ports

    serial, ports = _run(main(1))
    for (_, end), (start, _) in itertools.pairwise(serial):
        assert start >= end - 0.05, serial  # never two at once
    assert len(ports) == len(lo_fleet.hosts)
    parallel, _ = _run(main(3))
    assert max(s for s, _ in parallel) < min(e for _, e in parallel), parallel


def test_failures_are_per_host_with_status_and_stderr(lo_fleet: SshdFleet) -> None:
    hosts = _hosts(lo_fleet)

    async def main() -> None:
        async with Fleet(hosts, SSHOptions(step_timeout=5)) as fleet:

            def cmd(h: Host) -> str:
                if h is hosts[0]:
                    return "echo boom >&2; exit 3"
                if h is hosts[1]:
                    return "sleep 10"
                return "echo fine"

            res = await fleet.run("step1", cmd, timeout=0.7)
            err = res[hosts[0].name].error
            assert isinstance(err, RemoteError)
            assert (err.host, err.step, err.exit_status) == (hosts[0].name, "step1", 3)
            assert "boom" in err.stderr_tail and "status 3: boom" in str(err)
            assert "timed out after 0.7 s" in res[hosts[1].name].reason
            assert res[hosts[2].name].ok
            # failed hosts are left out of later steps; the healthy one goes on
            res2 = await fleet.run("step2", "echo again")
            assert [n for n, r in res2.items() if r.ok] == [hosts[2].name]
            assert res2[hosts[0].name].error is err

    _run(main())


def test_max_fail_percent_aborts_the_next_step(lo_fleet: SshdFleet) -> None:
    hosts = _hosts(lo_fleet)

    async def main() -> None:
        async with Fleet(hosts, SSHOptions(max_fail_percent=50)) as fleet:
            await fleet.run("one", lambda h: "false" if h is hosts[0] else "true")
            await fleet.run("two", "true")  # 1 of 3 failed: 33% <= 50%
            await fleet.run("three", lambda h: "false" if h is hosts[1] else "true")
            with pytest.raises(FleetAborted, match="2 of 3 hosts failed"):
                await fleet.run("four", "true")

    _run(main())


def test_unknown_host_key_refused_unless_opted_out(lo_fleet: SshdFleet, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    hosts = _hosts(lo_fleet)[:1]

    async def main(insecure: bool) -> str:
        opts = SSHOptions(known_hosts=str(empty), insecure_no_host_key_check=insecure)
        async with Fleet(hosts, opts) as fleet:
            res = await fleet.run("hello", "echo hi")
            r = res[hosts[0].name]
            return r.value.stdout.strip() if r.ok and r.value else r.reason

    assert "not verifiable" in _run(main(False))
    assert _run(main(True)) == "hi"


def test_jump_host(lo_fleet: SshdFleet) -> None:
    jump, target = lo_fleet.hosts[0], lo_fleet.hosts[1]
    hosts = _hosts(lo_fleet)[1:2]

    async def main() -> str:
        opts = SSHOptions(jump=f"root@{jump.address}:{jump.port}")
        async with Fleet(hosts, opts) as fleet:

            async def where(s: Session) -> str:
                return (await s.run("echo $SSH_CONNECTION")).stdout

            r = (await fleet.each("via-jump", where))[hosts[0].name]
            assert r.ok, r.reason
            return r.value or ""

    conn = _run(main()).split()
    assert conn[2:4] == [target.address, str(target.port)]

"""roost.fleet.ssh without root: the fan-out against asyncssh servers on
127.0.0.1 port 0 (tests/fleet/asyncssh_kit.py): bounded forks, one
connection per host for every step, per-host failures with their exit
status and stderr, time limits, the failure threshold, host key checking.
test_ssh.py runs the same against a real sshd (root)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.errors import RemoteError
from roost.fleet.inventory import Host, hosts_from_strings
from roost.fleet.ssh import Fleet, FleetAborted, SSHOptions
from tests.fleet.asyncssh_kit import ShellFleet, shell_fleet

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def shells(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShellFleet]:
    with shell_fleet(tmp_path_factory.mktemp("ssh"), 3) as fleet:
        yield fleet


def _hosts(f: ShellFleet) -> list[Host]:
    return list(hosts_from_strings([h.spec for h in f.hosts]).peers)


def _options(f: ShellFleet, **kw: object) -> SSHOptions:
    settings: dict[str, object] = {
        "identity": str(f.identity),
        "known_hosts": str(f.known_hosts),
        "config": str(f.ssh_config),
        **kw,
    }
    return SSHOptions(**settings)  # type: ignore[arg-type]


def test_forks_bound_concurrency_and_each_host_keeps_one_connection(shells: ShellFleet) -> None:
    hosts = _hosts(shells)

    async def main(forks: int) -> list[tuple[float, float]]:
        async with Fleet(hosts, _options(shells, forks=forks)) as fleet:
            res = await fleet.run("timed", "date +%s.%N; sleep 0.4; date +%s.%N")
            spans = []
            for r in res.values():
                assert r.ok and r.value is not None, r.reason
                a, b = map(float, r.value.stdout.split())
                spans.append((a, b))
            for _ in range(2):  # two more steps: over the same connections
                again = await fleet.run("who", "echo $SSH_CONNECTION")
                assert all(r.ok for r in again.values())
            return sorted(spans)

    before = [h.connections for h in shells.hosts]
    serial = asyncio.run(main(1))
    for (_, end), (start, _) in itertools.pairwise(serial):
        assert start >= end - 0.05, serial  # never two at once
    assert [h.connections - n for h, n in zip(shells.hosts, before, strict=True)] == [1, 1, 1]
    parallel = asyncio.run(main(3))
    assert max(s for s, _ in parallel) < min(e for _, e in parallel), parallel


def test_failures_are_per_host_with_status_stderr_and_time_limits(shells: ShellFleet) -> None:
    hosts = _hosts(shells)

    async def main() -> None:
        async with Fleet(hosts, _options(shells, step_timeout=5)) as fleet:

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
            assert res[hosts[2].name].value is not None
            assert res[hosts[2].name].value.stdout == "fine\n"
            # failed hosts are left out of later steps; the healthy one goes on
            res2 = await fleet.run("step2", "echo again")
            assert [n for n, r in res2.items() if r.ok] == [hosts[2].name]
            assert res2[hosts[0].name].error is err

    asyncio.run(main())


def test_max_fail_percent_aborts_the_next_step(shells: ShellFleet) -> None:
    hosts = _hosts(shells)

    async def main() -> None:
        async with Fleet(hosts, _options(shells, max_fail_percent=50)) as fleet:
            await fleet.run("one", lambda h: "false" if h is hosts[0] else "true")
            await fleet.run("two", "true")  # 1 of 3 failed: 33% <= 50%
            await fleet.run("three", lambda h: "false" if h is hosts[1] else "true")
            with pytest.raises(FleetAborted, match="2 of 3 hosts failed"):
                await fleet.run("four", "true")

    asyncio.run(main())


def test_an_unknown_host_key_is_refused_unless_opted_out(
    shells: ShellFleet, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    hosts = _hosts(shells)[:1]

    async def main(insecure: bool) -> str:
        opts = _options(shells, known_hosts=str(empty), insecure_no_host_key_check=insecure)
        async with Fleet(hosts, opts) as fleet:
            r = (await fleet.run("hello", "echo hi"))[hosts[0].name]
            return r.value.stdout.strip() if r.ok and r.value else r.reason

    assert "not verifiable" in asyncio.run(main(False))
    assert asyncio.run(main(True)) == "hi"


def test_a_key_the_host_does_not_accept_fails_that_host(shells: ShellFleet, tmp_path: Path) -> None:
    from roost._asyncssh import asyncssh

    other = tmp_path / "other_key"
    other.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    other.chmod(0o600)
    hosts = _hosts(shells)[:1]

    async def main() -> str:
        async with Fleet(hosts, _options(shells, identity=str(other))) as fleet:
            r = (await fleet.run("hello", "echo hi"))[hosts[0].name]
            assert not r.ok
            return r.reason

    assert "ssh authentication refused" in asyncio.run(main())

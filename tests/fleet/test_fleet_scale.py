"""The SSH fan-out at 1000 hosts (issue 3: ``--forks`` usable at 1000+, as
lssd's ``-f 1000``).

Every host is an inventory alias of one fake SSH server on a loopback port
(bench/fleet_fanout.py: asyncssh in its own process, real key exchange and
public-key auth with a test key and strict known_hosts, exec requests answered
by a tiny command language). The server counts concurrent connections and
sessions, so the tests see how wide the fan-out really went.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from roost.errors import RemoteError
from roost.fleet.inventory import Host, parse_inventory
from roost.fleet.ssh import FD_SPARE, Fleet, FleetAborted, SSHOptions

pytestmark = pytest.mark.timeout(120)

BENCH = Path(__file__).resolve().parents[2] / "bench" / "fleet_fanout.py"


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("roost_bench_fleet_fanout", BENCH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


fanout = _load_bench()


@pytest.fixture(scope="module")
def ff() -> Iterator[Any]:
    with fanout.fake_fleet() as f:
        yield f


@pytest.fixture(autouse=True)
def _ssh_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/config of the machine
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture
def low_nofile() -> Iterator[None]:
    """Start from the common default soft limit (1024): too few for 1000 sockets."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, old[1]), old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _options(ff: Any, **kw: Any) -> SSHOptions:
    return SSHOptions(identity=ff.identity, known_hosts=ff.known_hosts, **kw)


async def _stats(ff: Any, reset: bool = False) -> dict[str, int]:
    probe = parse_inventory(ff.inventory(1), "<probe>").peers
    async with Fleet(probe, _options(ff)) as fleet:
        r = (await fleet.run("stats", "reset" if reset else "stats"))[probe[0].name]
        assert r.ok and r.value is not None, r.reason
        return {} if reset else dict(json.loads(r.value.stdout))


def _hello(hold: float) -> Any:
    def cmd(h: Host) -> str:
        return "fail 3" if h.name == "badexit" else f"hello {h.name} {hold:g}"

    return cmd


@pytest.mark.usefixtures("low_nofile")
def test_a_thousand_hosts_with_forks_1000(ff: Any) -> None:
    closed = _closed_port()
    extra = (
        f"closed ansible_host=127.0.0.1 ansible_port={closed}\n"
        f"badexit ansible_host=127.0.0.1 ansible_port={ff.port}\n"
        f"refused ansible_host=127.0.0.1 ansible_port={ff.port} ansible_user=intruder\n"
    )
    hosts = parse_inventory(ff.inventory(1000, extra), "<scale>").peers
    assert len(hosts) == 1003

    async def main() -> None:
        await _stats(ff, reset=True)
        started = time.monotonic()
        async with Fleet(hosts, _options(ff, forks=1000, connect_timeout=60)) as fleet:
            # the fleet made room for one socket per host (soft limit was 1024)
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 1003 + FD_SPARE
            first = await fleet.run("hello", _hello(1.0))
            during = await _stats(ff)
            second = await fleet.run("again", _hello(1.5))
            after = await _stats(ff)
        elapsed = time.monotonic() - started

        for res in (first, second):
            assert sorted(res) == sorted(h.name for h in hosts)  # one result per host
            ok = [r for r in res.values() if r.ok]
            assert len(ok) == 1000, sorted({r.reason for r in res.values() if not r.ok})[:5]
            assert all(r.value is not None and r.value.stdout == f"{r.host}\n" for r in ok)
        errors = {n: first[n].error for n in ("closed", "badexit", "refused")}
        assert all(isinstance(e, RemoteError) and e.step == "hello" for e in errors.values())
        assert f"cannot reach 127.0.0.1:{closed}" in str(errors["closed"])
        assert "exited with status 3: boom" in str(errors["badexit"])
        assert errors["badexit"] is not None and errors["badexit"].exit_status == 3
        assert "authentication refused for intruder@127.0.0.1" in str(errors["refused"])
        for name, err in errors.items():  # failed hosts keep their first reason
            assert second[name].error is err
        # well above the old default of 100 at once; connections reused, not reopened
        assert during["peak_sessions"] > 300, during
        assert after["peak_sessions"] > 900, after
        assert during["peak_conns"] >= 1000 and after["peak_conns"] <= 1000 + 2, after
        # the second step reached only the 1000 healthy hosts (+ the stats session)
        assert after["total_sessions"] - during["total_sessions"] == 1000 + 1
        assert elapsed < 45, elapsed

    asyncio.run(main())


def test_forks_bound_sessions_at_scale(ff: Any) -> None:
    hosts = parse_inventory(ff.inventory(600), "<scale>").peers

    async def main() -> dict[str, int]:
        await _stats(ff, reset=True)
        async with Fleet(hosts, _options(ff, forks=150, connect_timeout=60)) as fleet:
            res = await fleet.run("hello", _hello(0.3))
            assert all(r.ok for r in res.values()) and len(res) == 600
            return await _stats(ff)

    stats = asyncio.run(main())
    assert 100 < stats["peak_sessions"] <= 150 + 1, stats  # + the stats session


def test_max_fail_percent_at_scale(ff: Any) -> None:
    hosts = parse_inventory(ff.inventory(500), "<scale>").peers
    failing = {h.name for h in hosts[::5]}  # 100 of 500: 20 %

    def step1(h: Host) -> str:
        return "fail 7" if h.name in failing else f"hello {h.name}"

    async def main(limit: float) -> tuple[dict[str, Any], dict[str, Any], Exception | None, int]:
        async with Fleet(hosts, _options(ff, forks=500, max_fail_percent=limit)) as fleet:
            first = await fleet.run("one", step1)
            before = await _stats(ff)
            second: dict[str, Any] = {}
            aborted: Exception | None = None
            try:
                second = dict(await fleet.run("two", _hello(0)))
            except FleetAborted as exc:
                aborted = exc
            after = await _stats(ff)
            ran = after["total_sessions"] - before["total_sessions"] - 1  # - the stats session
            return dict(first), second, aborted, ran

    first, second, aborted, ran = asyncio.run(main(10))
    assert len(first) == 500
    assert {n for n, r in first.items() if not r.ok} == failing
    assert all("exited with status 7" in first[n].reason for n in failing)
    assert isinstance(aborted, FleetAborted) and not second
    assert "100 of 500 hosts failed, more than --max-fail-percent 10" in str(aborted)
    assert ran == 0  # nothing reached any host after the abort

    first, second, aborted, ran = asyncio.run(main(25))  # 20 % <= 25 %: the deploy goes on
    assert aborted is None and ran == 400
    assert len(second) == 500 and {n for n, r in second.items() if not r.ok} == failing
    assert all(second[n].error is first[n].error for n in failing)


def test_hard_limit_below_one_socket_per_host_is_a_clear_error() -> None:
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
        "from roost.errors import RoostError\n"
        "from roost.fleet.inventory import Host\n"
        "from roost.fleet.ssh import Fleet\n"
        "Fleet([Host(f'h{i}', '127.0.0.1') for i in range(150)])\n"
        "print('ok 150')\n"
        "try:\n"
        "    Fleet([Host(f'h{i}', '127.0.0.1') for i in range(1000)])\n"
        "except RoostError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out == [
        "ok 150",
        "1000 hosts need at least 1064 open files, but the hard limit (ulimit -Hn) is 256: "
        "raise it or split the inventory",
    ]

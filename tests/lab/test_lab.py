"""The emulated fleet: real namespaces, real tc, real traffic between hosts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from roost.errors import LabError
from roost.lab.mounts import needed_paths
from roost.lab.netns import Lab, parse_rate, teardown
from tests.lab_kit import ROOT, leftovers, netns


def _serve_and_fetch(lab: Lab, size: int, server_i: int = 2, client_i: int = 0) -> str:
    """h3 serves `size` bytes over TCP; h1 receives them; returns what h1 counted."""
    server = lab.hosts[server_i].popen(
        [
            sys.executable,
            "-c",
            "import socket\n"
            "s = socket.create_server(('0.0.0.0', 9000))\n"
            "print('ready', flush=True)\n"
            f"c, _ = s.accept(); c.sendall(b'x' * {size}); c.close()\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    address = lab.hosts[server_i].address
    with server.stdout:  # closed on failure too (else the garbage collector warns later)
        assert server.stdout.readline().strip() == "ready"
        client = lab.hosts[client_i].run(
            [
                sys.executable,
                "-c",
                "import socket\n"
                f"c = socket.create_connection(('{address}', 9000), timeout=10)\n"
                "n = 0\n"
                "while (d := c.recv(65536)):\n    n += len(d)\n"
                "print(n)\n",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        server.wait(timeout=10)
    return client.stdout.strip()


def test_parse_rate() -> None:
    assert parse_rate("100mbit") == 100
    assert parse_rate("1gbit") == 1000
    assert parse_rate("500kbit") == 0.5
    assert parse_rate(None) is None
    with pytest.raises(LabError, match="bad rate"):
        parse_rate("fast")


@pytest.mark.parametrize(
    "subnet",
    ["10.0.0.0/24", "198.20.0.0/24", "192.168.1.0/24", "198.17.255.0/24", "198.16.0.0/14"],
)
def test_refuses_addresses_outside_the_benchmark_range(subnet: str) -> None:
    with pytest.raises(LabError, match=r"outside 198\.18\.0\.0/15"):
        Lab(2, subnet=subnet)


def test_refuses_bad_names_and_sizes() -> None:
    with pytest.raises(LabError, match="bad lab name"):
        Lab(2, prefix="Bad-Name")
    with pytest.raises(LabError, match="no room"):
        Lab(10, subnet="198.18.0.0/29")
    with pytest.raises(LabError, match="at least one host"):
        Lab(0)


@netns
def test_lab_hosts_talk_through_shaped_links_and_leave_nothing(tmp_path: Path) -> None:
    prefix = "rltest1"
    with Lab(3, rate_mbit=40, prefix=prefix, subnet="198.19.7.0/24", state_dir=tmp_path) as lab:
        assert [h.address for h in lab.hosts] == ["198.19.7.2", "198.19.7.3", "198.19.7.4"]
        assert _serve_and_fetch(lab, 2_000_000) == "2000000"
        # shaping is installed on both ends of every host link
        for h in lab.hosts:
            q = lab.qdiscs(h)
            assert q.count("qdisc tbf") == 2 and "rate 40Mbit" in q, q
        # neighbours are resolved up front (a full tbf queue would drop ARP)
        neigh = lab.hosts[0].run(["ip", "neigh", "show"], capture_output=True, text=True).stdout
        assert "198.19.7.4 dev eth0 lladdr" in neigh and "PERMANENT" in neigh
        rx, tx = lab.counters()["h1"]
        assert rx >= 2_000_000 and tx > 0
        # the controller (root namespace) reaches hosts directly
        probe = subprocess.run(
            ["ip", "route", "get", lab.hosts[1].address], capture_output=True, text=True
        )
        assert f"dev {prefix}-c" in probe.stdout
        # private /tmp: shared by every command of one host, invisible to others
        lab.hosts[0].run("echo one > /tmp/marker", check=True)
        assert lab.hosts[0].path("/tmp/marker").read_text() == "one\n"
        assert not lab.hosts[1].path("/tmp/marker").exists()
        assert not Path("/tmp/marker").exists()
        out = lab.hosts[0].run(["cat", "/tmp/marker"], capture_output=True, text=True)
        assert out.stdout == "one\n"
        sleeper = lab.hosts[1].popen(["sleep", "300"])
        assert len(leftovers(prefix)) == 5  # sw, h1-h3, the controller's veth
    assert leftovers(prefix) == []
    assert sleeper.poll() is not None
    assert list(tmp_path.iterdir()) == []


@netns
def test_shared_paths_stay_visible_read_only_under_private_mounts() -> None:
    """A path under /tmp (a checkout or venv there) is bound into every host's
    private /tmp at the same place, read-only; the rest of /tmp stays private."""
    base = Path(tempfile.mkdtemp(prefix="roost-shared-", dir="/tmp"))
    state = Path(tempfile.mkdtemp(prefix="roost-labstate-", dir="/var/tmp"))
    shared = base / "checkout"
    (shared / "src").mkdir(parents=True)
    (shared / "src" / "mod.py").write_text("X = 42\n")
    (base / "private.txt").write_text("controller only\n")
    importer = f"import sys; sys.path.insert(0, {str(shared / 'src')!r}); import mod; print(mod.X)"
    try:
        # this Python too: from a checkout under /tmp, sys.executable is there
        paths = [*needed_paths(), str(shared)]
        with Lab(2, prefix="rltest5", subnet="198.19.16.0/24", state_dir=state,
                 shared_paths=paths) as lab:  # fmt: skip
            for h in lab.hosts:
                got = h.run(
                    [sys.executable, "-c", importer], cwd="/", capture_output=True, text=True
                )
                assert got.stdout == "42\n", got.stderr
                write = h.run(["touch", str(shared / "src" / "new")], capture_output=True)
                assert write.returncode != 0  # read-only
                assert not h.path(base / "private.txt").exists()
                h.run(f"echo {h.name} > /tmp/mine", check=True)  # /tmp itself is writable
                assert h.path("/tmp/mine").read_text() == f"{h.name}\n"
            assert not (shared / "src" / "new").exists()
        assert leftovers("rltest5") == []
        assert list(state.iterdir()) == []  # the stash directory is gone too
    finally:
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


@netns
def test_says_before_any_host_starts_when_roost_is_out_of_the_hosts_sight(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """roost's checkout made a private mount (as /tmp is for a clone under
    /tmp when sharing is off): one warning, then hosts cannot import roost."""
    with Lab(1, prefix="rltest6", subnet="198.19.17.0/24", state_dir=tmp_path,
             private_mounts=("/tmp", str(ROOT)), shared_paths=()) as lab:  # fmt: skip
        [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warning.startswith(f"the emulated hosts cannot see {ROOT} (under ")
        got = lab.hosts[0].run(
            [sys.executable, "-c", "import roost"], cwd="/", capture_output=True, text=True
        )
        assert got.returncode != 0
    assert leftovers("rltest6") == []


@netns
def test_teardown_after_a_crash_kills_only_recorded_processes(tmp_path: Path) -> None:
    prefix = "rltest2"
    lab = Lab(2, prefix=prefix, subnet="198.19.8.0/24", state_dir=tmp_path).up()
    orphan = lab.hosts[0].popen(["sleep", "300"])
    # a process in the namespace the lab did not start must survive teardown
    outsider = subprocess.Popen(["ip", "netns", "exec", lab.hosts[1].netns, "sleep", "300"])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{outsider.pid}/comm").read_text().strip() != "sleep":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        # simulate a crash: the Lab object is gone, only its state files remain
        assert Lab.attach(prefix, state_dir=tmp_path).hosts[1].address == "198.19.8.3"
        with pytest.raises(LabError, match="already exists"):
            Lab(2, prefix=prefix, subnet="198.19.9.0/24", state_dir=tmp_path).up()
        removed = teardown(prefix, state_dir=tmp_path)
        assert f"{prefix}-sw" in removed and f"{prefix}-c" in removed
        assert leftovers(prefix) == []
        assert orphan.wait(timeout=5) is not None
        time.sleep(0.2)
        assert outsider.poll() is None
        assert teardown(prefix, state_dir=tmp_path) == []
    finally:
        outsider.kill()
        outsider.wait()
        lab.down()


@netns
def test_refuses_subnet_already_routed(tmp_path: Path) -> None:
    with (
        Lab(1, prefix="rltest3", subnet="198.19.10.0/24", state_dir=tmp_path),
        pytest.raises(LabError, match="overlaps the route"),
    ):
        Lab(1, prefix="rltest4", subnet="198.19.10.0/25", state_dir=tmp_path).up()
    assert leftovers("rltest3") == [] and leftovers("rltest4") == []


@netns
def test_cli_up_run_down(tmp_path: Path) -> None:
    env = {**os.environ, "ROOST_LAB_STATE_DIR": str(tmp_path)}
    roost = [sys.executable, "-m", "roost", "lab"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*roost, *args], capture_output=True, text=True, env=env, timeout=60)

    try:
        up = cli("up", "2", "--rate", "100mbit", "--name", "rltest5", "--subnet", "198.19.11.0/24")
        assert up.returncode == 0, up.stderr
        assert "h2          198.19.11.3" in up.stdout
        run = cli("run", "--name", "rltest5", "all", "--", "ip", "-br", "addr", "show", "eth0")
        assert run.returncode == 0, run.stderr
        assert "198.19.11.2/24" in run.stdout and "198.19.11.3/24" in run.stdout
        assert cli("run", "--name", "rltest5", "h1", "--", "false").returncode == 1
        after = cli("run", "h2", "--name", "rltest5", "--", "ip", "-br", "addr", "show", "eth0")
        assert after.returncode == 0 and "198.19.11.3/24" in after.stdout, after.stderr
        stray = cli("run", "h2", "--name", "rltest5", "--bogus", "--", "true")
        assert stray.returncode == 2 and "--bogus before --" in stray.stderr
        bad = cli("up", "2", "--name", "rltest6", "--subnet", "10.1.0.0/24")
        assert bad.returncode == 1 and "outside 198.18.0.0/15" in bad.stderr
    finally:
        down = cli("down", "--name", "rltest5")
    assert down.returncode == 0 and "rltest5-sw" in down.stdout
    assert leftovers("rltest5") == []


@netns
def test_bench_quick_smoke(tmp_path: Path) -> None:
    """The bench suite's CI smoke: roost and nginx to 4 emulated hosts, 4 MiB."""
    out = tmp_path / "results"
    # the hosts have private /tmp and /opt: the scratch dir must be elsewhere
    scratch = Path(tempfile.mkdtemp(prefix="roost-smoke-", dir="/var/tmp"))
    scratch.chmod(0o755)  # nginx's workers run as nobody
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--tools",
            "roost,nginx",
            "--out",
            str(out),
            "--scratch",
            str(scratch),
            "--subnet",
            "198.19.12.0/24",
            "--name",
            "rlsmoke",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    shutil.rmtree(scratch)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    rows = {r["tool"]: r for r in data["fleet"]}
    assert set(rows) == {"roost", "nginx"}
    for r in rows.values():
        assert r["ok"] and r["completed"] == 4, (r, proc.stdout)
        assert r["last_s"] >= r["median_s"] > 0
        assert r["origin_up_bytes"] > 0
        sent, resent = r["origin_segments"]  # read from the origin's netns
        assert sent > 0 and 0 <= resent < sent, r["origin_segments"]
    # nginx sends the whole artifact to each of the 4 hosts; roost's origin
    # hands each piece to one host over its feed, and the hosts relay it
    assert rows["nginx"]["origin_copies"] >= 3.9
    assert rows["roost"]["origin_copies"] < 1.5, rows["roost"]
    assert "| roost | 4 | 4 MiB |" in (out / "results.md").read_text()
    # the machine it ran on, measured: tables from two machines compare by it
    cal = data["meta"]["calibration"]
    assert cal["sha256_mb_s"] > 0 and cal["loopback_tcp_mb_s"] > 0 and cal["tcp_cc"]
    assert f"sha256 {cal['sha256_mb_s']} MB/s" in (out / "results.md").read_text()
    assert (out / "completion.png").stat().st_size > 1000
    assert leftovers("rlsmoke") == []


@netns
def test_delay_needs_netem_or_installs_it(tmp_path: Path) -> None:
    lab = Lab(1, delay_ms=2, prefix="rltest7", subnet="198.19.13.0/24", state_dir=tmp_path)
    try:
        lab.up()
    except LabError as exc:  # this kernel has no netem: say so, leave nothing
        assert "netem" in str(exc)
    else:
        assert "netem" in lab.qdiscs(lab.hosts[0])
    finally:
        lab.down()
    assert leftovers("rltest7") == []


def test_refuses_bad_datacenters() -> None:
    with pytest.raises(LabError, match="1 or 2"):
        Lab(4, datacenters=3)
    with pytest.raises(LabError, match="at least two hosts"):
        Lab(1, datacenters=2)
    with pytest.raises(LabError, match="inter-datacenter rate"):
        Lab(2, datacenters=2, inter_dc_rate_mbit=0)
    with pytest.raises(LabError, match="no room"):
        Lab(12, datacenters=2, subnet="198.18.0.0/28")


@netns
def test_two_datacenters_joined_by_a_shaped_link(tmp_path: Path) -> None:
    prefix = "rltest8"
    with Lab(
        4,
        rate_mbit=100,
        datacenters=2,
        inter_dc_rate_mbit=20,
        prefix=prefix,
        subnet="198.19.14.0/24",
        state_dir=tmp_path,
    ) as lab:
        assert lab.dc_subnets == ["198.19.14.0/25", "198.19.14.128/25"]
        assert [(h.address, h.dc) for h in lab.hosts] == [
            ("198.19.14.2", "dc1"),
            ("198.19.14.3", "dc1"),
            ("198.19.14.129", "dc2"),
            ("198.19.14.130", "dc2"),
        ]
        q = lab.inter_dc_qdiscs()
        assert q.count("qdisc tbf") == 2 and "rate 20Mbit" in q, q
        before = lab.inter_dc_counters()
        # h3 (dc2) serves h1 (dc1): the bytes cross the link, at its rate, not the hosts'
        t0 = time.monotonic()
        assert _serve_and_fetch(lab, 2_500_000) == "2500000"
        elapsed = time.monotonic() - t0
        assert elapsed > 2_500_000 * 8 / 20e6 * 0.8, elapsed  # 1 s at 20 Mbit, 0.2 s at 100
        to_dc2, to_dc1 = (a - b for a, b in zip(lab.inter_dc_counters(), before, strict=True))
        assert to_dc1 >= 2_500_000 and 0 < to_dc2 < to_dc1
        # traffic inside a datacenter does not cross
        before = lab.inter_dc_counters()
        assert _serve_and_fetch(lab, 1_000_000, server_i=3, client_i=2) == "1000000"
        assert sum(lab.inter_dc_counters()) - sum(before) < 10_000
        # the controller (in dc1) reaches dc2 hosts; attach keeps the layout
        probe = subprocess.run(["ip", "route", "get", "198.19.14.130"], capture_output=True)
        assert f"dev {prefix}-c" in probe.stdout.decode()
        again = Lab.attach(prefix, state_dir=tmp_path)
        assert again.host("h4").dc == "dc2" and again.inter_dc_rate_mbit == 20
        assert len(leftovers(prefix)) == 6
    assert leftovers(prefix) == []
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_rate_for_a_host_it_does_not_have() -> None:
    with pytest.raises(LabError, match="bad rate 40 for host 3 of 2"):
        Lab(2, rate_mbit=10, host_rates={3: 40})
    with pytest.raises(LabError, match="bad rate 0 for host 1"):
        Lab(2, rate_mbit=10, host_rates={1: 0})


@netns
def test_one_host_on_a_faster_link_than_the_others(tmp_path: Path) -> None:
    """An origin on a fatter link than its hosts' (the bench's --origin-rate):
    both ends of host 1's link at its own rate, the others' at the lab's."""
    prefix = "rltest9"
    with Lab(
        2,
        rate_mbit=10,
        host_rates={1: 40},
        prefix=prefix,
        subnet="198.19.21.0/24",
        state_dir=tmp_path,
        private_mounts=(),
    ) as lab:
        q1, q2 = lab.qdiscs(lab.hosts[0]), lab.qdiscs(lab.hosts[1])
        assert q1.count("rate 40Mbit") == 2 and "rate 10Mbit" not in q1, q1
        assert q2.count("rate 10Mbit") == 2, q2
        assert Lab.attach(prefix, state_dir=tmp_path).host_rates == {1: 40}
    assert leftovers(prefix) == []

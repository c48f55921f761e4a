"""An emulated fleet on one machine: hosts in network namespaces behind a bridge.

Theory of operation
-------------------
``Lab(n)`` builds, for a name ``P`` (the *prefix*, ``[a-z0-9]{1,12}``):

* a switch namespace ``P-sw`` holding a bridge ``br0`` (the root namespace
  stays clean apart from one veth);
* host namespaces ``P-h1`` .. ``P-hN``; each has ``lo`` and ``eth0``, the
  end of a veth pair whose other end ``hI`` is a port of ``br0``;
* the controller: the root namespace, joined to the bridge by the veth
  ``P-c`` (root side) / ``ctl`` (switch side), unshaped, holding the first
  address of the subnet. Hosts take the following addresses, in order.

Links are shaped with ``tc``: a ``tbf`` at ``rate_mbit`` on the host's
``eth0`` (its upload) and on the switch port ``hI`` (its download), and an
optional ``netem`` delay on ``eth0`` (needs CONFIG_NET_SCH_NETEM).

With ``datacenters=2`` the hosts are split in two (the first half, rounded
up, in ``dc1``): ``dc1`` hosts hang off ``br0``, ``dc2`` hosts off a second
bridge ``br1`` in the same switch namespace, and the two bridges are joined
by the veth pair ``dc1x`` (port of ``br0``) / ``dc2x`` (port of ``br1``),
shaped both ways by a ``tbf`` at ``inter_dc_rate_mbit``. It stays one
layer-2 network, but each datacenter takes its addresses from its own half
of the subnet (``lab.dc_subnets``), so a tracker can label them by prefix.
The controller is on ``br0`` (in ``dc1``). ``lab.inter_dc_counters()``
counts the bytes crossing the link.

With ``private_mounts`` (default ``/tmp`` and ``/opt``), every host gets a
long-lived *holder* process (``sleep infinity`` in a private mount
namespace with a tmpfs on each of those paths). Every command run on the
host enters the holder's network and mount namespaces with ``nsenter``, so
all commands of one host see the same ``/tmp`` and ``/opt``, and the
controller reaches them at ``/proc/HOLDER/root/tmp`` (``Host.path``).
Which paths stay visible under the private mounts, and the holder's script,
are ``roost.lab.mounts``; the namespaces, veths, bridges and ``tc`` shaping
are built and removed by ``roost.lab.links``. This module is the
orchestration: it validates the request, names and numbers everything,
records what it started, and brings the lab up and down.

Cleanup: ``down()`` (also on ``__exit__`` and after an exception in ``up``)
kills the processes the lab started (holders and every ``popen``, recorded
with their start time in ``/run/roost-lab/P.json`` / ``P.pids`` so a later
``teardown(P)`` after a crash kills exactly those and nothing else), then
deletes the namespaces and the root veth. Addresses outside 198.18.0.0/15
are refused.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost import procs
from roost._fs import atomic_write
from roost.errors import LabError
from roost.lab import links
from roost.lab.links import netns_list, run
from roost.lab.mounts import binds_for, holder_script, needed_paths

log = logging.getLogger(__name__)

LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
STATE_DIR = Path(os.environ.get("ROOST_LAB_STATE_DIR", "/run/roost-lab"))
_NAME_RE = re.compile(r"^[a-z0-9]{1,12}$")

__all__ = ["LAB_RANGE", "Host", "Lab", "list_labs", "parse_rate", "teardown"]


def parse_rate(text: str | float | None) -> float | None:
    """``"100mbit"``, ``"1gbit"``, ``"500kbit"`` or a number of Mbit/s -> Mbit/s.

    Raises LabError for anything else.
    """
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmg]?)(?:bit|bps)?\s*", text.lower())
        if not m:
            raise LabError(f"bad rate {text!r}: expected e.g. 100mbit, 1gbit, 500kbit")
        value = float(m.group(1)) * {"k": 1e-3, "": 1.0, "m": 1.0, "g": 1e3}[m.group(2)]
    if value <= 0:
        raise LabError(f"bad rate {text!r}: must be positive")
    return value


def _check_name(prefix: str) -> None:
    if not _NAME_RE.match(prefix):
        raise LabError(f"bad lab name {prefix!r}: use 1-12 lowercase letters or digits")


@dataclass(frozen=True)
class Host:
    """One emulated host. ``run``/``popen`` execute inside its namespaces."""

    lab: Lab
    index: int
    name: str
    address: str
    netns: str
    holder_pid: int | None = None
    dc: str = "dc1"

    def command(self, cmd: Sequence[str] | str) -> list[str]:
        """The argv that runs ``cmd`` (argv, or a string for ``sh -c``) on this host."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if self.holder_pid is not None:
            return [
                "nsenter",
                f"--net=/run/netns/{self.netns}",
                f"--mount=/proc/{self.holder_pid}/ns/mnt",
                "--",
                *argv,
            ]
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, cmd: Sequence[str] | str, **kw: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` on this host (keyword arguments passed through)."""
        return subprocess.run(self.command(cmd), **kw)

    def popen(self, cmd: Sequence[str] | str, **kw: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` on this host, in a new session; the lab kills it on down()."""
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.command(cmd), **kw)
        self.lab._record(proc.pid)
        self.lab._children.append(proc)
        return proc

    def path(self, path: str | os.PathLike[str]) -> Path:
        """Where the controller sees this host's ``path`` (its private mounts included)."""
        p = Path(path)
        if self.holder_pid is None:
            return p
        return Path(f"/proc/{self.holder_pid}/root") / p.relative_to("/")


class Lab:
    """An emulated fleet; use as a context manager or call ``up()``/``down()``.

    Raises LabError: not root, ``ip``/``tc``/``nsenter`` missing, a name or
    subnet refused, a subnet already routed, or a step of the build failing.
    """

    def __init__(
        self,
        n_hosts: int,
        *,
        rate_mbit: float | None = None,
        delay_ms: float = 0,
        prefix: str = "roostlab",
        subnet: str = "198.18.0.0/24",
        private_mounts: Sequence[str] = ("/tmp", "/opt"),
        state_dir: Path | None = None,
        queue_ms: float = 50,
        datacenters: int = 1,
        inter_dc_rate_mbit: float | None = None,
        shared_paths: Sequence[str] | None = None,
        host_rates: Mapping[int, float] | None = None,
    ):
        _check_name(prefix)
        if n_hosts < 1:
            raise LabError(f"a lab needs at least one host, not {n_hosts}")
        try:
            net = ipaddress.ip_network(subnet, strict=True)
        except ValueError as exc:
            raise LabError(f"bad subnet {subnet!r}: {exc}") from exc
        if net.version != 4 or not net.subnet_of(LAB_RANGE):  # type: ignore[arg-type]
            raise LabError(f"subnet {subnet} is outside {LAB_RANGE} (the benchmarking range)")
        if datacenters not in (1, 2):
            raise LabError(f"bad datacenters {datacenters}: the lab emulates 1 or 2")
        if datacenters == 2 and n_hosts < 2:
            raise LabError("two datacenters need at least two hosts")
        if inter_dc_rate_mbit is not None and inter_dc_rate_mbit <= 0:
            raise LabError(f"bad inter-datacenter rate {inter_dc_rate_mbit}: must be positive")
        for index, host_rate in (host_rates or {}).items():
            if not 1 <= index <= n_hosts or host_rate <= 0:
                raise LabError(f"bad rate {host_rate} for host {index} of {n_hosts}")
        sizes = [n_hosts] if datacenters == 1 else [(n_hosts + 1) // 2, n_hosts // 2]
        halves = [net] if datacenters == 1 else list(net.subnets(prefixlen_diff=1))
        # dc1 also holds the controller; each half loses its network/broadcast address
        for i, (half, k) in enumerate(zip(halves, sizes, strict=True)):
            if half.num_addresses - 2 < k + (1 if i == 0 else 0):
                raise LabError(
                    f"subnet {subnet} has no room for {n_hosts} hosts and the controller"
                )
        for m in private_mounts:
            if not m.startswith("/") or m in ("/", "/proc", "/sys", "/dev", "/run"):
                raise LabError(f"cannot make {m!r} private on emulated hosts")
        if delay_ms < 0:
            raise LabError(f"bad delay {delay_ms} ms")
        if queue_ms <= 0:
            raise LabError(f"bad queue {queue_ms} ms: must be positive")
        self.n_hosts = n_hosts
        self.datacenters = datacenters
        self.inter_dc_rate_mbit = inter_dc_rate_mbit
        self.dc_subnets = [str(h) for h in halves]
        self.queue_ms = queue_ms
        self.rate_mbit = rate_mbit
        #: 1-based host index -> its link's rate, where it is not ``rate_mbit``
        self.host_rates = dict(host_rates or {})
        self.delay_ms = delay_ms
        self.prefix = prefix
        self.subnet = net
        self.private_mounts = tuple(private_mounts)
        # paths under private mounts the hosts see anyway (read-only, same place)
        self.shared_paths = tuple(needed_paths() if shared_paths is None else shared_paths)
        self.state_dir = state_dir or STATE_DIR
        addrs = halves[0].hosts()
        self.controller_address = str(next(addrs))
        self.switch_netns = f"{prefix}-sw"
        self.controller_link = f"{prefix}-c"
        self._addresses = [str(next(addrs)) for _ in range(sizes[0])]
        self._dcs = ["dc1"] * sizes[0]
        if datacenters == 2:
            addrs = halves[1].hosts()
            self._addresses += [str(next(addrs)) for _ in range(sizes[1])]
            self._dcs += ["dc2"] * sizes[1]
        self.hosts: list[Host] = []
        self._children: list[subprocess.Popen[Any]] = []
        self._is_up = False

    # -- state ---------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.state_dir / f"{self.prefix}.json"

    @property
    def _pids_file(self) -> Path:
        return self.state_dir / f"{self.prefix}.pids"

    @property
    def _stash(self) -> Path:
        """An empty directory where each holder builds its tmpfs before moving it."""
        return self.state_dir / f"{self.prefix}.mnt"

    def _record(self, pid: int) -> None:
        start = procs.start_time(pid)
        if start is None:
            return
        with self._pids_file.open("a") as f:
            f.write(f"{pid} {start}\n")

    def _write_state(self) -> None:
        state = {
            "prefix": self.prefix,
            "subnet": str(self.subnet),
            "rate_mbit": self.rate_mbit,
            "host_rates": {str(i): r for i, r in self.host_rates.items()},
            "delay_ms": self.delay_ms,
            "queue_ms": self.queue_ms,
            "datacenters": self.datacenters,
            "inter_dc_rate_mbit": self.inter_dc_rate_mbit,
            "private_mounts": list(self.private_mounts),
            "controller": self.controller_address,
            "switch_netns": self.switch_netns,
            "created": time.time(),
            "hosts": [
                {
                    "name": h.name,
                    "address": h.address,
                    "netns": h.netns,
                    "holder": h.holder_pid,
                    "dc": h.dc,
                }
                for h in self.hosts
            ],
        }
        atomic_write(self.state_file, json.dumps(state, indent=1).encode())

    @classmethod
    def attach(cls, prefix: str = "roostlab", state_dir: Path | None = None) -> Lab:
        """The lab ``prefix`` brought up earlier (by ``roost lab up``), from its state file."""
        _check_name(prefix)
        path = (state_dir or STATE_DIR) / f"{prefix}.json"
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab named {prefix!r} is up (no {path})") from None
        except (OSError, ValueError) as exc:
            raise LabError(f"unreadable lab state {path}: {exc}") from exc
        lab = cls(
            len(state["hosts"]),
            rate_mbit=state["rate_mbit"],
            delay_ms=state["delay_ms"],
            prefix=prefix,
            subnet=state["subnet"],
            private_mounts=state["private_mounts"],
            state_dir=state_dir,
            queue_ms=state.get("queue_ms", 50),
            datacenters=state.get("datacenters", 1),
            inter_dc_rate_mbit=state.get("inter_dc_rate_mbit"),
            host_rates={int(i): r for i, r in state.get("host_rates", {}).items()},
        )
        lab.hosts = [
            Host(lab, i + 1, h["name"], h["address"], h["netns"], h["holder"], h.get("dc", "dc1"))
            for i, h in enumerate(state["hosts"])
        ]
        lab._is_up = True
        return lab

    def host(self, key: str | int) -> Host:
        """A host by name (``h3``), address or 1-based index. Raises LabError."""
        for h in self.hosts:
            if key in (h.name, h.address, h.index, str(h.index)):
                return h
        raise LabError(f"no host {key!r} in lab {self.prefix}")

    # -- build ---------------------------------------------------------------

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, tc)")
        for tool in ("ip", "tc", "nsenter", "unshare"):
            if shutil.which(tool) is None:
                raise LabError(f"the lab needs {tool!r} on PATH (iproute2 / util-linux)")
        if self.state_file.exists() or self.switch_netns in netns_list():
            raise LabError(
                f"lab {self.prefix!r} already exists: run 'roost lab down --name {self.prefix}'"
            )
        routes = json.loads(run(["ip", "-j", "-4", "route", "show"]) or "[]")
        for r in routes:
            dst = r.get("dst", "")
            if dst in ("", "default"):
                continue
            try:
                other = ipaddress.ip_network(dst, strict=False)
            except ValueError:
                continue
            if other.overlaps(self.subnet):
                raise LabError(
                    f"subnet {self.subnet} overlaps the route {dst} dev {r.get('dev')}: "
                    "pick another --subnet"
                )

    def up(self) -> Lab:
        """Build the fleet. On any failure, removes what was built and raises LabError."""
        self._preflight()
        # says now, before any host starts, if roost will be missing
        binds_for(self.private_mounts, self.shared_paths, warn=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._pids_file.write_text("")
        self._is_up = True
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        p, sw, n = self.prefix, self.switch_netns, self.n_hosts
        names = [f"{p}-h{i}" for i in range(1, n + 1)]
        # state first: a crash from here on is cleaned up by teardown(prefix)
        self.hosts = [
            Host(self, i, f"h{i}", self._addresses[i - 1], names[i - 1], dc=self._dcs[i - 1])
            for i in range(1, n + 1)
        ]
        self._write_state()
        cl, addr = self.controller_link, self.controller_address
        links.wire(
            sw,
            self.hosts,
            controller_link=cl,
            controller_address=addr,
            prefixlen=self.subnet.prefixlen,
            datacenters=self.datacenters,
        )
        links.shape(
            sw,
            self.hosts,
            rate_mbit=self.rate_mbit,
            delay_ms=self.delay_ms,
            queue_ms=self.queue_ms,
            datacenters=self.datacenters,
            inter_dc_rate_mbit=self.inter_dc_rate_mbit,
            host_rates=self.host_rates,
        )
        links.static_neighbours(self.hosts, controller_link=cl, controller_address=addr)
        if self.private_mounts:
            binds = binds_for(self.private_mounts, self.shared_paths)
            if any(binds.values()):
                self._stash.mkdir(exist_ok=True)
            script = holder_script(self.private_mounts, binds, str(self._stash))
            self.hosts = [self._start_holder(h, script) for h in self.hosts]
        self._write_state()

    def _start_holder(self, h: Host, script: str) -> Host:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", h.netns, "unshare", "--mount", "--", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            cwd="/",
            text=True,
        )
        self._record(proc.pid)
        self._children.append(proc)
        assert proc.stdout is not None and proc.stderr is not None
        with proc.stdout, proc.stderr:
            line = proc.stdout.readline()
            if line.strip() != "ready":
                err = proc.stderr.read().strip()
                raise LabError(f"{h.name}: private mounts failed: {err or 'no output'}")
        # the holder is the pid after exec chain: ip netns exec/unshare/sh all exec in place
        return Host(self, h.index, h.name, h.address, h.netns, proc.pid, h.dc)

    # -- teardown ------------------------------------------------------------

    def down(self) -> None:
        """Kill what the lab started, delete its namespaces and links. Never raises."""
        if not self._is_up:
            return
        teardown(self.prefix, state_dir=self.state_dir)
        self._is_up = False
        for proc in self._children:  # reap what teardown killed
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
        self._children.clear()

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- observation -----------------------------------------------------------

    def counters(self) -> dict[str, tuple[int, int]]:
        """Bytes (received, sent) by each host so far, read from its switch port."""
        out = run(["ip", "-n", self.switch_netns, "-j", "-s", "link", "show"])
        ports = {d["ifname"]: d["stats64"] for d in json.loads(out)}
        result = {}
        for h in self.hosts:
            s = ports.get(f"h{h.index}")
            if s is not None:
                # the switch port sends what the host receives, and vice versa
                result[h.name] = (s["tx"]["bytes"], s["rx"]["bytes"])
        return result

    def link_drops(self) -> tuple[int, int]:
        """Packets dropped so far by the links' queues: (towards the hosts,
        from the hosts). A receiver's downlink is its switch port's egress."""
        down = 0
        for q in json.loads(run(["tc", "-n", self.switch_netns, "-s", "-j", "qdisc", "show"])):
            if q.get("kind") == "tbf" and str(q.get("dev", "")).startswith("h"):
                down += int(q.get("drops", 0))
        up = 0
        for h in self.hosts:
            for q in json.loads(run(["tc", "-n", h.netns, "-s", "-j", "qdisc", "show"])):
                if q.get("kind") == "tbf":
                    up += int(q.get("drops", 0))
        return down, up

    def inter_dc_counters(self) -> tuple[int, int]:
        """Bytes (dc1 to dc2, dc2 to dc1) that crossed the inter-datacenter link so far.

        Raises LabError on a lab with one datacenter.
        """
        if self.datacenters != 2:
            raise LabError(f"lab {self.prefix} has one datacenter: no inter-datacenter link")
        out = run(["ip", "-n", self.switch_netns, "-j", "-s", "link", "show"])
        ports = {d["ifname"]: d["stats64"] for d in json.loads(out)}
        try:
            return ports["dc1x"]["tx"]["bytes"], ports["dc2x"]["tx"]["bytes"]
        except KeyError:
            raise LabError(f"lab {self.prefix} has no inter-datacenter link") from None

    def inter_dc_qdiscs(self) -> str:
        """``tc qdisc show`` of both ends of the inter-datacenter link (for checks)."""
        return run(["tc", "-n", self.switch_netns, "qdisc", "show", "dev", "dc1x"]) + run(
            ["tc", "-n", self.switch_netns, "qdisc", "show", "dev", "dc2x"]
        )

    def qdiscs(self, host: Host) -> str:
        """``tc qdisc show`` of both ends of a host's link (for checks)."""
        a = run(["tc", "-n", host.netns, "qdisc", "show", "dev", "eth0"])
        b = run(["tc", "-n", self.switch_netns, "qdisc", "show", "dev", f"h{host.index}"])
        return a + b


def list_labs(state_dir: Path | None = None) -> list[str]:
    """Names of labs with a state file or leftover namespaces."""
    names = {p.stem for p in (state_dir or STATE_DIR).glob("*.json")}
    for ns in netns_list():
        m = re.fullmatch(r"([a-z0-9]{1,12})-(sw|h[0-9]+)", ns)
        if m:
            names.add(m.group(1))
    return sorted(names)


def teardown(prefix: str, *, state_dir: Path | None = None) -> list[str]:
    """Remove every leftover of lab ``prefix`` (also after a crash); returns what it removed.

    Kills only processes recorded in the lab's own state files (pid and start
    time must both match), then deletes the namespaces ``prefix-sw``,
    ``prefix-hN`` and the link ``prefix-c``.
    """
    _check_name(prefix)
    sdir = state_dir or STATE_DIR
    removed: list[str] = []
    records: list[tuple[int, int]] = []
    pids_file = sdir / f"{prefix}.pids"
    try:
        for line in pids_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                records.append((int(parts[0]), int(parts[1])))
    except (OSError, ValueError):
        pass
    if records:
        procs.stop_recorded(records, group=True)
        removed.append(f"{len(records)} recorded processes")
    removed += links.remove(prefix)
    for f in (sdir / f"{prefix}.json", pids_file, sdir / f"{prefix}.tmp"):
        if f.exists():
            f.unlink()
    with contextlib.suppress(OSError):  # the holders' stash: empty outside their namespaces
        (sdir / f"{prefix}.mnt").rmdir()
    return removed

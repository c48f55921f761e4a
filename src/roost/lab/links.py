"""The lab's plumbing: network namespaces, veth pairs, bridges and ``tc`` shaping.

Everything here is one ``ip`` or ``tc`` invocation (``-batch`` where there are
many lines) on names ``roost.lab.netns`` chose: ``wire`` builds the switch
namespace with its bridges, a veth pair per host and the controller's veth,
and gives every host its address; ``shape`` puts the ``tbf``/``netem``
qdiscs on the links; ``static_neighbours`` fills every ARP table; ``remove``
deletes a lab's namespaces and root veth.

Promises: no state is kept and no process is left running (``Lab`` records
what exists). Every failure is a ``LabError`` naming the command and the first
line ``ip``/``tc`` printed, or that iproute2 is missing. Root is needed.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping, Sequence
from typing import Protocol

from roost.errors import LabError


class Port(Protocol):
    """A host as the plumbing sees it: its namespace, the index of its switch
    port ``hINDEX``, its address and its datacenter (``dc1``/``dc2``)."""

    @property
    def index(self) -> int: ...

    @property
    def netns(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def dc(self) -> str: ...


def run(argv: Sequence[str], *, input: str | None = None, check: bool = True) -> str:
    """``argv``'s standard output; with ``check``, a non-zero exit raises ``LabError``."""
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, check=False, timeout=120
        )
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} not found: install iproute2") from exc
    if check and proc.returncode != 0:
        err = [
            line
            for line in (proc.stderr or proc.stdout).strip().splitlines()
            if line.strip() and not line.startswith("Command failed")
        ]
        tail = err[0] if err else f"exit status {proc.returncode}"
        raise LabError(f"{' '.join(argv[:4])}: {tail}")
    return proc.stdout


def netns_list() -> list[str]:
    """The names of the network namespaces ``ip netns`` knows."""
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def wire(
    switch: str,
    hosts: Sequence[Port],
    *,
    controller_link: str,
    controller_address: str,
    prefixlen: int,
    datacenters: int,
) -> None:
    """Create the namespaces of ``switch`` and ``hosts`` and join them: a
    bridge ``br0`` (and ``br1`` joined to it by ``dc1x``/``dc2x`` with two
    datacenters), a veth ``hI``/``eth0`` per host, the controller's veth
    ``controller_link``/``ctl`` on ``br0``; every end up and addressed."""
    sw, plen = switch, prefixlen
    names = [h.netns for h in hosts]
    run(["ip", "-batch", "-"], input="".join(f"netns add {x}\n" for x in [sw, *names]))
    sw_cmds = [
        "link set lo up",
        "link add br0 type bridge stp_state 0 forward_delay 0",
        "link set br0 up",
    ]
    if datacenters == 2:
        sw_cmds += [
            "link add br1 type bridge stp_state 0 forward_delay 0",
            "link set br1 up",
            "link add dc1x type veth peer name dc2x",
            "link set dc1x master br0",
            "link set dc2x master br1",
            "link set dc1x up",
            "link set dc2x up",
        ]
    for h in hosts:
        bridge = "br1" if h.dc == "dc2" else "br0"
        sw_cmds += [
            f"link add h{h.index} type veth peer name eth0 netns {h.netns}",
            f"link set h{h.index} master {bridge}",
            f"link set h{h.index} up",
        ]
    run(["ip", "-n", sw, "-batch", "-"], input="\n".join(sw_cmds) + "\n")
    cl = controller_link
    run(["ip", "link", "add", cl, "type", "veth", "peer", "name", "ctl", "netns", sw])
    run(["ip", "-n", sw, "-batch", "-"], input="link set ctl master br0\nlink set ctl up\n")
    run(["ip", "link", "set", cl, "addrgenmode", "none"])
    run(["ip", "addr", "add", f"{controller_address}/{plen}", "dev", cl])
    run(["ip", "link", "set", cl, "up"])
    for h in hosts:
        run(
            ["ip", "-n", h.netns, "-batch", "-"],
            input=(
                "link set lo up\n"
                "link set eth0 addrgenmode none\n"
                f"addr add {h.address}/{plen} dev eth0\n"
                "link set eth0 up\n"
            ),
        )


def tbf(rate_mbit: float, queue_ms: float) -> str:
    """The ``tbf`` qdisc for a link of ``rate_mbit`` queueing at most ``queue_ms``."""
    rate_bps = rate_mbit * 1e6
    burst = max(32 * 1024, int(rate_bps / 8 / 200))  # 5 ms of traffic, at least 32K
    return f"tbf rate {rate_bps:.0f}bit burst {burst} latency {queue_ms:g}ms"


def shape(
    switch: str,
    hosts: Sequence[Port],
    *,
    rate_mbit: float | None,
    delay_ms: float,
    queue_ms: float,
    datacenters: int,
    inter_dc_rate_mbit: float | None,
    host_rates: Mapping[int, float] | None = None,
) -> None:
    """A ``tbf`` at ``rate_mbit`` (``host_rates[index]`` for the hosts named
    there) on each host's ``eth0`` and switch port and a ``netem`` delay on
    ``eth0``; with two datacenters, a ``tbf`` at ``inter_dc_rate_mbit`` both
    ways on their link. Raises ``LabError`` (saying so when the kernel has no
    netem)."""
    if datacenters == 2 and inter_dc_rate_mbit is not None:
        qdisc = tbf(inter_dc_rate_mbit, queue_ms)
        run(
            ["tc", "-n", switch, "-batch", "-"],
            input=f"qdisc add dev dc1x root handle 1: {qdisc}\n"
            f"qdisc add dev dc2x root handle 1: {qdisc}\n",
        )
    host_rates = host_rates or {}
    if rate_mbit is None and not delay_ms and not host_rates:
        return
    sw_cmds = []
    for h in hosts:
        host_cmds = []
        rate = host_rates.get(h.index, rate_mbit)
        if rate is not None:
            qdisc = tbf(rate, queue_ms)
            host_cmds.append(f"qdisc add dev eth0 root handle 1: {qdisc}")
            sw_cmds.append(f"qdisc add dev h{h.index} root handle 1: {qdisc}")
        if delay_ms:
            parent = "parent 1:1 handle 10:" if rate is not None else "root"
            host_cmds.append(f"qdisc add dev eth0 {parent} netem delay {delay_ms}ms")
        if not host_cmds:
            continue
        try:
            run(["tc", "-n", h.netns, "-batch", "-"], input="\n".join(host_cmds) + "\n")
        except LabError as exc:
            if "netem" in "".join(host_cmds) and "unknown" in str(exc).lower():
                raise LabError(
                    "--delay needs the netem qdisc, which this kernel lacks (CONFIG_NET_SCH_NETEM)"
                ) from exc
            raise
    if sw_cmds:
        run(["tc", "-n", switch, "-batch", "-"], input="\n".join(sw_cmds) + "\n")


def static_neighbours(
    hosts: Sequence[Port], *, controller_link: str, controller_address: str
) -> None:
    """Permanent ARP entries for every address of the lab, everywhere.

    With a shaped link the tbf queue of a busy uploader is full, and a
    dynamic ARP request or reply queued behind the data is dropped like
    any packet: hosts then fail to resolve each other for seconds (at 64
    hosts half the fleet could not reach the tracker). A real NIC runs
    far faster than the rate a switch enforces, so this is an artefact of
    the emulation: resolve everything once, up front.
    """
    macs: dict[str, str] = {}
    for h in hosts:
        info = json.loads(run(["ip", "-n", h.netns, "-j", "link", "show", "eth0"]))
        macs[h.address] = info[0]["address"]
    info = json.loads(run(["ip", "-j", "link", "show", controller_link]))
    macs[controller_address] = info[0]["address"]
    for h in hosts:
        lines = [
            f"neigh replace {addr} lladdr {mac} dev eth0 nud permanent\n"
            for addr, mac in macs.items()
            if addr != h.address
        ]
        run(["ip", "-n", h.netns, "-batch", "-"], input="".join(lines))
    lines = [
        f"neigh replace {h.address} lladdr {macs[h.address]} dev {controller_link} nud permanent\n"
        for h in hosts
    ]
    run(["ip", "-batch", "-"], input="".join(lines))


def remove(prefix: str) -> list[str]:
    """Delete those of the namespaces ``prefix-sw``, ``prefix-hN`` and the
    link ``prefix-c`` that exist; returns their names."""
    removed: list[str] = []
    pat = re.compile(rf"{re.escape(prefix)}-(sw|h[0-9]+)")
    ours = [ns for ns in netns_list() if pat.fullmatch(ns)]
    if ours:
        run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {x}\n" for x in ours))
        removed += ours
    link = f"{prefix}-c"
    if run(["ip", "link", "show", link], check=False).strip():
        run(["ip", "link", "del", link], check=False)
        removed.append(link)
    return removed

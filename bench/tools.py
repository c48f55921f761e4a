"""The deploy tools under test, each run on the same emulated fleet.

Every tool follows one shape (:class:`Tool`): start its services on the
origin host (h1), then one command per receiving host, all launched at once.
A host's command writes ``/tmp/<tool>/done`` (a wall-clock timestamp) the
moment the artifact is complete on that host; the harness in
:func:`deploy` polls those files, so every tool is timed the same way
whether its client exits on completion (curl, roost peer) or keeps seeding
(aria2c, as ansible-lssd leaves it).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from roost.lab.netns import Host, Lab

PYTHON = sys.executable
ROOST = [PYTHON, "-m", "roost"]


@dataclass
class Ctx:
    lab: Lab
    origin: Host
    peers: list[Host]
    artifact: Path  # on the controller's disk, readable by every host
    work: Path  # controller-side scratch dir for this tool run (shared disk)
    size: int
    rate_mbit: float
    options: dict[str, Any] = field(default_factory=dict)
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    cgroup: Path | None = None
    #: the origin's CPU share against the hosts' (see origin_popen); 0: equal
    origin_nice: int = 0
    #: hosts wait at a gate until every one is launched (see _Gate); False:
    #: each starts as soon as the harness gets to it
    together: bool = True

    def join_kw(self) -> dict[str, Any]:
        """Popen keywords that put the child in the run's CPU-accounting cgroup.

        Joined before nsenter runs (the hosts' mount namespaces remount /sys).
        """
        if self.cgroup is None:
            return {}
        procs = str(self.cgroup / "cgroup.procs")

        def join() -> None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        return {"preexec_fn": join}

    def origin_popen(self, cmd: list[str] | str, log: str) -> subprocess.Popen[Any]:
        """Start one of the origin's processes (every tool's origin starts here).

        The lab's hosts share the machine's cores, each host's processes in a
        session of their own, and the kernel shares the CPU between sessions
        (autogroups) alike: with N hosts the origin, one host that serves all
        the others, gets 1/(N+1) of the machine, and at 32 or 64 hosts its link
        idled while it waited to run. A real origin has a machine of its own,
        so its session is given the weight ``origin_nice`` stands for (-10:
        about nine hosts' worth) before it runs, for every tool alike.
        """
        out = (self.work / log).open("w")
        kw = self.join_kw()
        if self.origin_nice:
            kw["preexec_fn"] = _then(kw.get("preexec_fn"), self._origin_share)
        proc = self.origin.popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.work, **kw)
        out.close()
        self.procs.append(proc)
        return proc

    def _origin_share(self) -> None:
        """In the origin's child, before exec: its session's CPU weight."""
        with contextlib.suppress(OSError):  # the session's autogroup, where the kernel has them
            Path("/proc/self/autogroup").write_text(str(self.origin_nice))
        os.nice(self.origin_nice)  # and the process's own (inherited by its children)


def _then(first: Callable[[], None] | None, second: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        if first is not None:
            first()
        second()

    return both


@dataclass
class Result:
    tool: str
    hosts: int
    size: int
    rate_mbit: float
    limit_s: float
    ok: bool
    completed: int
    last_s: float | None
    median_s: float | None
    ratio: float | None
    origin_up_bytes: int
    origin_copies: float
    cpu_s: float
    cpu_util: float
    machine_util: float
    wall_s: float
    note: str = ""
    launched_at: float = 0.0  # wall clock when the hosts' commands were started
    #: seconds between launch and the last host's completion in which the
    #: origin's link carried less than half its rate (sampled every 0.25 s)
    origin_idle_s: float | None = None
    origin_series: list[tuple[float, int]] = field(default_factory=list)
    host_series: list[Any] = field(default_factory=list)  # (t, {host: (rx, tx)})
    link_drops: tuple[int, int] = (0, 0)  # packets the link queues dropped (down, up)
    #: TCP segments the origin's host sent, and of those retransmitted
    origin_segments: tuple[int, int] = (0, 0)
    times: list[float | None] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    collected: dict[str, Any] = field(default_factory=dict)  # the tool's own counts

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def make_cgroup(name: str) -> Path | None:
    """A cgroup-v1 cpuacct group to charge one tool run's CPU to, or None."""
    if not (CPUACCT / "cpuacct.usage").exists():
        return None
    path = CPUACCT / "roostbench" / name
    with contextlib.suppress(OSError):
        path.mkdir(parents=True, exist_ok=True)
        return path
    return None


def cgroup_seconds(path: Path | None) -> float | None:
    if path is None:
        return None
    return int((path / "cpuacct.usage").read_text()) / 1e9


def remove_cgroup(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.rmdir()
            path.parent.rmdir()  # the shared parent, once no run uses it


def cpu_busy_seconds() -> float:
    """Machine-wide busy CPU seconds so far (all processes, kernel networking too)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # minus idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


def calibration(mib: int = 128) -> dict[str, Any]:
    """What makes tables from different machines comparable: the same lab
    costs more CPU on a slower machine (session 11's 32-host run took 77 CPU
    seconds where session 10's took 63). sha256 of ``mib`` MiB in memory,
    and ``mib`` MiB through one loopback TCP connection in 16 KiB writes (the
    kernel's TCP path, which dominates the lab's CPU), both in MB/s; and the
    TCP congestion control the lab's hosts inherit from the machine."""
    import threading

    data = os.urandom(1 << 20)
    t = time.perf_counter()
    h = hashlib.sha256()
    for _ in range(mib):
        h.update(data)
    sha = mib * 1.048576 / (time.perf_counter() - t)
    with socket.create_server(("127.0.0.1", 0)) as srv:

        def drain() -> None:
            conn, _ = srv.accept()
            with conn:
                while conn.recv(1 << 16):
                    pass

        chunk = memoryview(data)[: 16 * 1024]
        tcp = 0.0
        for _ in range(3):  # the best of three: one run swings with the scheduler
            sink = threading.Thread(target=drain)
            sink.start()
            t = time.perf_counter()
            with socket.create_connection(srv.getsockname()) as c:
                for _ in range(mib * 64):
                    c.sendall(chunk)
            sink.join()
            tcp = max(tcp, mib * 1.048576 / (time.perf_counter() - t))
    try:
        cc = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        cc = "unknown"
    return {"sha256_mb_s": round(sha), "loopback_tcp_mb_s": round(tcp), "tcp_cc": cc}


def wait_port(addr: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((addr, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listening on {addr}:{port} after {timeout}s") from None
            time.sleep(0.05)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Tool:
    name = "?"
    port = 0

    def start_origin(self, ctx: Ctx) -> None:
        raise NotImplementedError

    def peer_command(self, ctx: Ctx, host: Host) -> str:
        """Shell command for one host; must write /tmp/NAME/done when complete."""
        raise NotImplementedError

    def result_file(self, ctx: Ctx, host: Host) -> Path:
        raise NotImplementedError

    def stop(self, ctx: Ctx) -> None:
        """Anything beyond the processes in ctx.procs (killed by the harness)."""

    def settings(self, ctx: Ctx) -> dict[str, Any]:
        return {}

    def collect(self, ctx: Ctx) -> dict[str, Any]:
        """What the tool itself counted, asked before it is stopped."""
        return {}

    def done_marker(self) -> str:
        return f"date +%s.%N > /tmp/{self.name}/done"


class Nginx(Tool):
    """(c) one nginx on the origin, every host fetching with curl."""

    name = "nginx"
    port = 8080

    def start_origin(self, ctx: Ctx) -> None:
        root = ctx.work / "www"
        root.mkdir()
        if _same_fs(ctx.artifact, root):
            os.link(ctx.artifact, root / "artifact.bin")
        else:
            shutil.copyfile(ctx.artifact, root / "artifact.bin")
        conf = ctx.work / "nginx.conf"
        conf.write_text(
            f"""worker_processes 2;
daemon off;
pid {ctx.work}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  send_timeout 600s;
  tcp_nopush on;
  client_body_temp_path {ctx.work}/body;
  proxy_temp_path {ctx.work}/proxy;
  fastcgi_temp_path {ctx.work}/fcgi;
  uwsgi_temp_path {ctx.work}/uwsgi;
  scgi_temp_path {ctx.work}/scgi;
  server {{ listen {ctx.origin.address}:{self.port}; root {root}; }}
}}
"""
        )
        ctx.origin_popen(["nginx", "-c", str(conf), "-p", str(ctx.work)], "nginx.log")
        wait_port(ctx.origin.address, self.port)

    def peer_command(self, ctx: Ctx, host: Host) -> str:
        url = f"http://{ctx.origin.address}:{self.port}/artifact.bin"
        return (
            f"mkdir -p /tmp/nginx && curl -sSf -o /tmp/nginx/artifact.bin {url} && "
            + self.done_marker()
        )

    def result_file(self, ctx: Ctx, host: Host) -> Path:
        return host.path("/tmp/nginx/artifact.bin")


class Lssd(Tool):
    """(b) the ansible-lssd stack: mktorrent, opentracker, aria2c seeder and peers."""

    name = "lssd"
    port = 6969

    def start_origin(self, ctx: Ctx) -> None:
        torrent = ctx.work / "artifact.torrent"
        announce = f"http://{ctx.origin.address}:{self.port}/announce"
        subprocess.run(
            ["mktorrent", "-a", announce, "-o", str(torrent), str(ctx.artifact)],
            check=True,
            capture_output=True,
        )
        info_hash = _info_hash(torrent.read_bytes())
        (ctx.work / "whitelist").write_text(info_hash + "\n")
        ctx.options["torrent"] = torrent
        ctx.origin_popen(
            [
                "opentracker",
                "-i",
                ctx.origin.address,
                "-p",
                str(self.port),
                "-P",
                str(self.port),
                "-w",
                "whitelist",  # opentracker reads it after chroot to -d
                "-d",
                str(ctx.work),
            ],
            "opentracker.log",
        )
        wait_port(ctx.origin.address, self.port)
        hook = ctx.work / "on-complete.sh"
        hook.write_text(f"#!/bin/sh\n{self.done_marker()}\n")
        hook.chmod(0o755)
        ctx.options["hook"] = hook
        # the seeder: aria2c on the original file, seeding forever
        ctx.origin_popen(
            [
                "aria2c",
                *_aria2_common(),
                "--check-integrity=true",
                "--bt-seed-unverified=false",
                "--seed-ratio=0.0",
                f"--dir={ctx.artifact.parent}",
                str(torrent),
            ],
            "aria2-seeder.log",
        )
        time.sleep(1.0)  # let the seeder verify and announce before the peers start

    def peer_command(self, ctx: Ctx, host: Host) -> str:
        # ansible-lssd's peers: aria2c that keeps seeding after completion
        argv = [
            "aria2c",
            *_aria2_common(),
            "--seed-ratio=0.0",
            "--dir=/tmp/lssd",
            f"--on-bt-download-complete={ctx.options['hook']}",
            str(ctx.options["torrent"]),
        ]
        return "mkdir -p /tmp/lssd && exec " + shlex.join(argv) + " > /tmp/lssd/aria2.log 2>&1"

    def result_file(self, ctx: Ctx, host: Host) -> Path:
        return host.path(f"/tmp/lssd/{ctx.artifact.name}")

    def settings(self, ctx: Ctx) -> dict[str, Any]:
        return {"mktorrent": "default piece size", "aria2c": " ".join(_aria2_common())}


def _aria2_common() -> list[str]:
    return [
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--file-allocation=none",
        "--console-log-level=warn",
        "--summary-interval=0",
        "--show-console-readout=false",
        "--listen-port=6881-6999",
    ]


class Roost(Tool):
    """(a) roost: tracker + seeder on the origin, `roost peer` on every host."""

    name = "roost"
    port = 8998

    def __init__(
        self,
        *,
        tracker_args: tuple[str, ...] = (),
        peer_args: tuple[str, ...] = (),
        seed_args: tuple[str, ...] = (),
        create_args: tuple[str, ...] = (),
        feed: bool = True,
        name: str = "roost",
    ):
        self.tracker_args = tracker_args
        self.peer_args = peer_args
        self.seed_args = seed_args
        self.create_args = create_args
        self.feed = feed
        self.name = name

    FEED_PORT = 8997

    def feed_url(self, ctx: Ctx) -> str:
        return f"http://{ctx.origin.address}:{self.FEED_PORT}/"

    def start_origin(self, ctx: Ctx) -> None:
        announce = f"http://{ctx.origin.address}:{self.port}/announce"
        out = ctx.work / "release"
        create = subprocess.run(
            [
                *ROOST,
                "create",
                str(ctx.artifact),
                "--tag",
                "bench",
                "--out",
                str(out),
                "--file",
                "--tracker",
                announce,
                *self.create_args,
            ],
            capture_output=True,
            text=True,
        )
        if create.returncode != 0:
            raise RuntimeError(f"roost create failed: {create.stderr.strip()}")
        torrent = next(out.glob("*.torrent"))
        ctx.options["torrent"] = torrent
        ctx.origin_popen(
            [
                *ROOST,
                "tracker",
                "--bind",
                ctx.origin.address,
                "--port",
                str(self.port),
                *self.tracker_args,
            ],
            "tracker.log",
        )
        wait_port(ctx.origin.address, self.port)
        ctx.origin_popen(
            [
                *ROOST,
                "seed",
                str(torrent),
                "--payload",
                str(ctx.artifact),
                "--announce-ip",
                ctx.origin.address,
                *(["--feed-port", str(self.FEED_PORT)] if self.feed else []),
                *(a.replace("{addr}", ctx.origin.address) for a in self.seed_args),
            ],
            "seeder.log",
        )
        if self.feed:
            wait_port(ctx.origin.address, self.FEED_PORT)
        time.sleep(1.0)

    def peer_command(self, ctx: Ctx, host: Host) -> str:
        argv = [
            *ROOST,
            "peer",
            str(ctx.options["torrent"]),
            "--dest",
            f"/tmp/{self.name}/dest",
            "--temp-path",
            f"/tmp/{self.name}/tmp",
            "--announce-ip",
            host.address,
            "--events",
            "json",
            *(["--feed", self.feed_url(ctx)] if self.feed else []),
            *(a.replace("{addr}", host.address) for a in self.peer_args),
        ]
        return (
            f"mkdir -p /tmp/{self.name} && "
            + shlex.join(argv)
            + f" > /tmp/{self.name}/events.jsonl 2> /tmp/{self.name}/stderr.log && "
            + self.done_marker()
        )

    def result_file(self, ctx: Ctx, host: Host) -> Path:
        base = host.path(f"/tmp/{self.name}/dest")
        found = [p for p in base.rglob("*") if p.is_file()] if base.exists() else []
        return found[0] if len(found) == 1 else base / "bench" / ctx.artifact.name

    def stop(self, ctx: Ctx) -> None:
        # lingering seeders run detached with pid files under the temp path
        for host in ctx.peers:
            for pid_file in host.path(f"/tmp/{self.name}/tmp").rglob("*.pid"):
                with contextlib.suppress(ValueError, OSError):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)

    def collect(self, ctx: Ctx) -> dict[str, Any]:
        """The feed's own counts (pieces re-handed, tail copies, repairs),
        asked from the origin's host before it is stopped."""
        if not self.feed or "torrent" not in ctx.options:
            return {}
        ih = _info_hash(Path(ctx.options["torrent"]).read_bytes())
        url = f"{self.feed_url(ctx)}feed/v1/{ih}/stats"
        code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=5).read().decode())"
        proc = ctx.origin.popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        out, _ = proc.communicate(timeout=10)
        return {"feed": json.loads(out)} if proc.returncode == 0 else {}

    def settings(self, ctx: Ctx) -> dict[str, Any]:
        return {
            "feed": self.feed,
            "create": list(self.create_args),
            "tracker": list(self.tracker_args),
            "seed": list(self.seed_args),
            "peer": list(self.peer_args),
        }


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def _info_hash(torrent: bytes) -> str:
    from roost.bencode import decode, encode

    meta = decode(torrent)
    assert isinstance(meta, dict)
    info = meta.get(b"info", meta.get("info"))  # type: ignore[call-overload]
    return hashlib.sha1(encode(info)).hexdigest()


def deploy(tool: Tool, ctx: Ctx, *, timeout: float) -> Result:
    """Deploy ctx.artifact to every peer host with ``tool``; always cleans up."""
    n = len(ctx.peers)
    limit = ctx.size * 8 / (ctx.rate_mbit * 1e6)
    times: list[float | None] = [None] * n
    note = ""
    cpu0 = cpu_busy_seconds()
    wall0 = time.monotonic()
    up0 = 0
    drops0 = drops1 = (0, 0)
    segs0 = segs1 = (0, 0)
    t0 = time.time()
    peer_procs: list[subprocess.Popen[Any]] = []
    cg0: float | None = None
    sampler: _OriginSampler | None = None
    gate: _Gate | None = None
    try:
        tool.start_origin(ctx)
        gate = _Gate(ctx.work) if ctx.together else None
        if gate is None:  # the clock starts with the first launch
            up0, drops0, segs0, cpu0, wall0, t0, cg0, sampler = _start_clock(ctx)
        for host in ctx.peers:
            command = tool.peer_command(ctx, host)
            peer_procs.append(
                host.popen(
                    gate.wrap(command, host) if gate is not None else command,
                    **ctx.join_kw(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        if gate is not None:
            gate.wait(peer_procs)
            up0, drops0, segs0, cpu0, wall0, t0, cg0, sampler = _start_clock(ctx)
            gate.open()
        done_files = [h.path(f"/tmp/{tool.name}/done") for h in ctx.peers]
        deadline = time.monotonic() + timeout

        def read_done() -> bool:
            for i, f in enumerate(done_files):
                if times[i] is None and f.exists():
                    text = f.read_text().strip()
                    if text:
                        times[i] = float(text) - t0
            return all(t is not None for t in times)

        while time.monotonic() < deadline:
            if read_done():
                break
            if all(p.poll() is not None for p in peer_procs):
                # The last marker may land between the read above and the
                # exit seen here: read them again before judging.
                time.sleep(0.2)
                if read_done():
                    break
                bad = [p.returncode for p in peer_procs if p.returncode]
                note = f"clients exited before completing (statuses {sorted(set(bad))})"
                break
            time.sleep(0.05)
        else:
            note = f"timeout after {timeout:.0f}s"
    except Exception as exc:  # a tool failing to start is a result, not a crash
        note = f"{type(exc).__name__}: {exc}"
    finally:
        if gate is not None:
            gate.open()  # (a start that failed: nothing waits at it any more)
        if sampler is not None:
            sampler.stop()
        cpu1 = cpu_busy_seconds()
        cg1 = cgroup_seconds(ctx.cgroup)
        wall = time.monotonic() - wall0
        try:
            up1 = ctx.lab.counters()[ctx.origin.name][1]
        except Exception:
            up1 = up0
        drops1 = _drops(ctx)
        segs1 = _tcp_segments(ctx)
        collected: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            collected = tool.collect(ctx)
        for proc in [*peer_procs, *ctx.procs]:
            _kill_group(proc)
        with contextlib.suppress(Exception):
            tool.stop(ctx)
    completed = [t for t in times if t is not None]
    # verify what every host got: a fast deploy of wrong bytes is worth nothing
    if completed:
        want = sha256_file(ctx.artifact)
        wrong = 0
        for i, host in enumerate(ctx.peers):
            if times[i] is None:
                continue
            f = tool.result_file(ctx, host)
            if not f.exists() or sha256_file(f) != want:
                wrong += 1
                times[i] = None
        if wrong:
            note = (note + "; " if note else "") + f"{wrong} hosts had wrong bytes"
    completed = [t for t in times if t is not None]
    ok = len(completed) == n
    last = max(completed) if ok else None
    for host in ctx.peers:  # keep the hosts' logs, free their tmpfs for the next tool
        tmp = host.path(f"/tmp/{tool.name}")
        logs = [p for p in tmp.glob("*") if p.suffix in (".log", ".jsonl") and p.is_file()]
        if logs:
            keep = ctx.work / "hosts" / host.name
            keep.mkdir(parents=True, exist_ok=True)
            for p in logs:
                shutil.copyfile(p, keep / p.name)
        shutil.rmtree(tmp, ignore_errors=True)
    ncpu = os.cpu_count() or 1
    machine = (cpu1 - cpu0) / max(wall, 1e-9) / ncpu
    hosts = sampler.hosts if sampler is not None else []
    series = [(t, c[ctx.origin.name][1]) for t, c in hosts if ctx.origin.name in c]
    idle = _idle_seconds(series, ctx.rate_mbit, last) if last is not None else None
    cpu = cg1 - cg0 if cg1 is not None and cg0 is not None else cpu1 - cpu0
    return Result(
        tool=tool.name,
        hosts=n,
        size=ctx.size,
        rate_mbit=ctx.rate_mbit,
        limit_s=round(limit, 3),
        ok=ok,
        completed=len(completed),
        last_s=round(last, 3) if last is not None else None,
        median_s=round(statistics.median(completed), 3) if completed else None,
        ratio=round(last / limit, 3) if last is not None else None,
        origin_up_bytes=up1 - up0,
        origin_copies=round((up1 - up0) / ctx.size, 2),
        cpu_s=round(cpu, 2),
        cpu_util=round(cpu / max(wall, 1e-9) / ncpu, 3),
        machine_util=round(machine, 3),
        wall_s=round(wall, 2),
        note=note,
        launched_at=round(t0, 3),
        origin_idle_s=round(idle, 2) if idle is not None else None,
        link_drops=(drops1[0] - drops0[0], drops1[1] - drops0[1]),
        origin_segments=(segs1[0] - segs0[0], segs1[1] - segs0[1]),
        origin_series=[(round(t, 2), b) for t, b in series],
        host_series=[(round(t, 2), c) for t, c in hosts],
        times=[round(t, 3) if t is not None else None for t in times],
        settings=tool.settings(ctx),
        collected=collected,
    )


#: (origin bytes, link drops, origin segments, CPU s, monotonic, wall clock, cgroup CPU s, sampler)
_Clock = tuple[
    int, tuple[int, int], tuple[int, int], float, float, float, float | None, "_OriginSampler"
]


def _start_clock(ctx: Ctx) -> _Clock:
    """The counters a run is measured from, read when its clock starts."""
    up0 = ctx.lab.counters()[ctx.origin.name][1]
    drops0, segs0 = _drops(ctx), _tcp_segments(ctx)
    cpu0, wall0, t0 = cpu_busy_seconds(), time.monotonic(), time.time()
    return up0, drops0, segs0, cpu0, wall0, t0, cgroup_seconds(ctx.cgroup), _OriginSampler(ctx, t0)


class _Gate:
    """Every host's command waits here until all of them are launched, then
    all go at once.

    Launching a host costs the harness a fork and an exec of ``ip netns exec``
    and a shell, and with 32 or 64 hosts already running on two cores the
    harness, one session among theirs, waited its turn for each: the last
    host started up to 9 s after the first (measured at 32 hosts), where a
    deploy's hosts start together, each on its own machine. So each host's
    shell opens a FIFO (the harness holds its write end, so the open returns
    at once), says it is ready and reads; the harness closes the write end
    once every host is ready, and every read returns (end of file) together.
    What follows, each host's interpreter starting, is inside the clock.
    """

    def __init__(self, work: Path):
        self.work = work
        self.fifo = work / "gate.fifo"
        with contextlib.suppress(FileNotFoundError):
            self.fifo.unlink()
        os.mkfifo(self.fifo)
        self._fd: int | None = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
        self._ready: list[Path] = []

    def wrap(self, command: str, host: Host) -> str:
        ready = self.work / f"ready-{host.name}"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        self._ready.append(ready)
        fifo, mark = shlex.quote(str(self.fifo)), shlex.quote(str(ready))
        return f"exec 3< {fifo}; : > {mark}; read -r _ <&3; exec 3<&-; {command}"

    def wait(self, procs: list[subprocess.Popen[Any]], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(p.exists() for p in self._ready):
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a host's command exited before the start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"hosts not ready after {timeout:.0f}s")
            time.sleep(0.02)

    def open(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for ready in self._ready:
            with contextlib.suppress(FileNotFoundError):
                ready.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.fifo.unlink()


def _drops(ctx: Ctx) -> tuple[int, int]:
    try:
        return ctx.lab.link_drops()
    except Exception:
        return (0, 0)


def _tcp_segments(ctx: Ctx) -> tuple[int, int]:
    """TCP segments (sent, retransmitted) by the origin's host so far, from
    its network namespace's ``/proc/net/snmp`` and ``netstat``: what of its
    link's bytes were sent again after a drop.

    The kernel counts a retransmission in ``RetransSegs`` before it tries to
    send it, and a try that the host's own queue refuses (its link's queue
    is full) never reaches the wire: ``TcpExt.TCPRetransFail`` counts those,
    and they are taken off (bench/NOTES.md, eleventh pass)."""
    try:
        text = ctx.origin.run(
            ["cat", "/proc/net/snmp", "/proc/net/netstat"], capture_output=True, text=True
        ).stdout
        counters: dict[str, int] = {}
        rows = [line.split() for line in text.splitlines()]
        for head, values in itertools.pairwise(rows):  # a names line, then its values line
            if head[0] in ("Tcp:", "TcpExt:") and values[0] == head[0]:
                counters.update(
                    (head[0] + key, int(v)) for key, v in zip(head[1:], values[1:], strict=True)
                )
        failed = counters.get("TcpExt:TCPRetransFail", 0)
        return counters["Tcp:OutSegs"], counters["Tcp:RetransSegs"] - failed
    except Exception:
        return (0, 0)


class _OriginSampler:
    """Every host's link counters every 0.25 s, from a thread (one ``ip`` call each)."""

    def __init__(self, ctx: Ctx, t0: float):
        import threading

        self.hosts: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self._ctx, self._t0 = ctx, t0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            with contextlib.suppress(Exception):
                self.hosts.append((time.time() - self._t0, self._ctx.lab.counters()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def _idle_seconds(series: list[tuple[float, int]], rate_mbit: float, until: float) -> float:
    """Seconds up to ``until`` in which the origin sent under half its link rate."""
    half = rate_mbit * 1e6 / 8 / 2
    idle = 0.0
    for (t1, b1), (t2, b2) in itertools.pairwise(series):
        if t2 > until:
            break
        if (b2 - b1) / max(t2 - t1, 1e-9) < half:
            idle += t2 - t1
    return idle


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


class BareLibtorrent(Roost):
    """Experiment: roost's tracker and release, bare libtorrent peers (bench/ltpeer.py)
    with roost's settings pack plus JSON overrides. Not a tool users pick: it
    measures engine settings before they are proposed for roost's engine."""

    name = "lt"

    def __init__(self, *, settings: str = "{}", super_seed: bool = False, **kw: Any):
        super().__init__(feed=False, name="lt", **kw)
        self.lt_settings = settings
        self.super_seed = super_seed

    def _argv(self, ctx: Ctx, addr: str, *extra: str) -> list[str]:
        script = str(Path(__file__).resolve().parent / "ltpeer.py")
        return [
            PYTHON,
            script,
            str(ctx.options["torrent"]),
            "--addr",
            addr,
            "--settings",
            self.lt_settings,
            *extra,
        ]

    def start_origin(self, ctx: Ctx) -> None:
        seed_args, self.seed_args = self.seed_args, ()
        # reuse Roost's create + tracker, then replace its seeder by a bare one
        super().start_origin(ctx)
        self.seed_args = seed_args
        seeder = ctx.procs.pop()
        _kill_group(seeder)
        ctx.origin_popen(
            self._argv(ctx, ctx.origin.address, "--seed", "--save", str(ctx.artifact.parent))
            + (["--super-seed"] if self.super_seed else []),
            "ltseed.log",
        )
        time.sleep(1.0)

    def peer_command(self, ctx: Ctx, host: Host) -> str:
        argv = self._argv(ctx, host.address, "--save", "/tmp/lt/dl", "--done", "/tmp/lt/done")
        return "mkdir -p /tmp/lt && exec " + shlex.join(argv) + " > /tmp/lt/peer.log 2>&1"

    def result_file(self, ctx: Ctx, host: Host) -> Path:
        return host.path(f"/tmp/lt/dl/{ctx.artifact.name}")

    def stop(self, ctx: Ctx) -> None:
        pass

    def settings(self, ctx: Ctx) -> dict[str, Any]:
        return {"lt": self.lt_settings, "super_seed": self.super_seed, **super().settings(ctx)}

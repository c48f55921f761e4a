"""SSH fan-out at scale: ``Fleet`` against N "hosts" that are one fake SSH server.

The server is asyncssh speaking the real protocol (key exchange, ed25519 host
key, public-key auth with a test key) and answering exec requests with a tiny
command language instead of a shell:

    hello NAME [SECONDS]   sleep SECONDS, print NAME, exit 0
    fail STATUS            print "boom" on stderr, exit STATUS
    stats                  print the counters (``Stats``) as JSON
    reset                  zero the peaks

Every inventory host is an alias ``hNNNN ansible_host=127.0.0.1
ansible_port=PORT``; a user named ``intruder`` is refused. The server runs in
its own process (``serve`` below) so the controller has its own core and its
RSS is its own. Used by tests/fleet/test_fleet_scale.py and run as a bench:

    python bench/fleet_fanout.py 100 500 1000 2000

prints, per N (forks = N): connect+run seconds (step 1, full handshakes),
a second step over the open connections, hosts/s, peak concurrent sessions
seen by the server, and the controller's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost._asyncssh import asyncssh

FAST = {
    "kex_algs": ["curve25519-sha256", "curve25519-sha256@libssh.org"],
    "encryption_algs": ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"],
    "compression_algs": ["none"],
}


@dataclass
class Stats:
    conns: int = 0
    sessions: int = 0
    peak_conns: int = 0
    peak_sessions: int = 0
    total_sessions: int = 0


def _server_class(stats: Stats, allowed: bytes) -> type[asyncssh.SSHServer]:
    class Server(asyncssh.SSHServer):
        def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
            stats.conns += 1
            stats.peak_conns = max(stats.peak_conns, stats.conns)

        def connection_lost(self, exc: Exception | None) -> None:
            stats.conns -= 1

        def begin_auth(self, username: str) -> bool:
            return True

        def public_key_auth_supported(self) -> bool:
            return True

        def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
            return username != "intruder" and key.public_data == allowed

    return Server


async def _handle(stats: Stats, process: asyncssh.SSHServerProcess[str]) -> None:
    stats.sessions += 1
    stats.total_sessions += 1
    stats.peak_sessions = max(stats.peak_sessions, stats.sessions)
    status = 0
    try:
        words = (process.command or "").split()
        verb = words[0] if words else ""
        if verb == "hello" and len(words) >= 2:
            if len(words) > 2:
                await asyncio.sleep(float(words[2]))
            process.stdout.write(words[1] + "\n")
        elif verb == "fail" and len(words) == 2:
            process.stderr.write("boom\n")
            status = int(words[1])
        elif verb == "stats":
            process.stdout.write(json.dumps(stats.__dict__) + "\n")
        elif verb == "reset":
            stats.peak_conns = stats.conns
            stats.peak_sessions = stats.sessions
        else:
            process.stderr.write(f"unknown command: {process.command!r}\n")
            status = 127
    finally:
        stats.sessions -= 1
    process.exit(status)


async def _serve(keydir: Path, ready: Any) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server holds every host
    stats = Stats()
    allowed = asyncssh.read_public_key(str(keydir / "client.pub")).public_data
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        backlog=4096,
        server_host_keys=[str(keydir / "host")],
        server_factory=_server_class(stats, allowed),
        process_factory=lambda p: _handle(stats, p),
        login_timeout=120,
        **FAST,
    )
    ready.write(f"{server.get_port()}\n")
    ready.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


def make_keys(keydir: Path) -> None:
    for name in ("host", "client"):
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(str(keydir / name))
        key.write_public_key(str(keydir / f"{name}.pub"))
        os.chmod(keydir / name, 0o600)


@dataclass
class FakeFleet:
    """A fake SSH server process and everything a client needs to reach it."""

    keydir: Path
    port: int
    proc: subprocess.Popen[str]

    @property
    def identity(self) -> str:
        return str(self.keydir / "client")

    @property
    def known_hosts(self) -> str:
        return str(self.keydir / "known_hosts")

    def inventory(self, n: int, extra: str = "") -> str:
        lines = ["[peer]"]
        lines += [f"h{i:04d} ansible_host=127.0.0.1 ansible_port={self.port}" for i in range(n)]
        return "\n".join(lines) + "\n" + extra


@contextlib.contextmanager
def fake_fleet() -> Iterator[FakeFleet]:
    """Start the fake server in a child process; stop it (by its pid) afterwards."""
    with tempfile.TemporaryDirectory(prefix="roost-fanout-") as tmp:
        keydir = Path(tmp)
        make_keys(keydir)
        proc = subprocess.Popen(
            [sys.executable, __file__, "serve", str(keydir)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.strip():
                raise RuntimeError(f"fake ssh server did not start (exit {proc.poll()})")
            port = int(line)
            host_pub = (keydir / "host.pub").read_text().split()
            (keydir / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
            yield FakeFleet(keydir, port, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _bench_one(ff: FakeFleet, n: int, hold: float, connect_timeout: float) -> dict[str, Any]:
    from roost.fleet.inventory import parse_inventory
    from roost.fleet.ssh import Fleet, SSHOptions

    hosts = parse_inventory(ff.inventory(n), "<bench>").peers
    stats_host = parse_inventory(ff.inventory(1), "<bench>").peers
    opts = SSHOptions(
        identity=ff.identity,
        known_hosts=ff.known_hosts,
        forks=n,
        connect_timeout=connect_timeout,
    )
    async with Fleet(stats_host, opts) as probe:
        await probe.run("reset", "reset")
        c0 = cpu_s()
        t0 = time.monotonic()
        async with Fleet(hosts, opts) as fleet:
            r1 = await fleet.run("connect", lambda h: f"hello {h.name} {hold}")
            t1 = time.monotonic()
            c1 = cpu_s()
            r2 = await fleet.run("again", lambda h: f"hello {h.name} {hold}")
            t2 = time.monotonic()
            peak = json.loads((await probe.run("stats", "stats"))[stats_host[0].name].value.stdout)  # type: ignore[union-attr]
        t3 = time.monotonic()
    ok1 = sum(r.ok for r in r1.values())
    ok2 = sum(r.ok for r in r2.values())
    return {
        "hosts": n,
        "forks": n,
        "ok": min(ok1, ok2),
        "connect_s": round(t1 - t0, 2),
        "hosts_per_s": round(n / (t1 - t0), 1),
        "controller_cpu_ms_per_host": round((c1 - c0) * 1000 / n, 2),
        "reuse_s": round(t2 - t1, 2),
        "close_s": round(t3 - t2, 2),
        "peak_sessions": peak["peak_sessions"],
        "peak_conns": peak["peak_conns"] - 1,  # minus the probe's own connection
        "rss_mib": round(rss_mib(), 1),
        "errors": sorted({r.reason for r in (*r1.values(), *r2.values()) if not r.ok})[:3],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[100, 500, 1000, 2000])
    ap.add_argument("--hold", type=float, default=0.5, help="seconds each command sleeps")
    ap.add_argument(
        "--connect-timeout", type=float, default=10.0, help="per host (roost's default: 10)"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    rows = []
    with fake_fleet() as ff:
        for n in args.sizes:
            row = asyncio.run(_bench_one(ff, n, args.hold, args.connect_timeout))
            rows.append(row)
            if not args.json:
                r = row
                print(
                    f"N={n:5d} forks={n:5d} ok={r['ok']:5d} connect+run {r['connect_s']:6.2f} s "
                    f"({r['hosts_per_s']:7.1f} hosts/s, controller CPU "
                    f"{r['controller_cpu_ms_per_host']:.2f} ms/host)  "
                    f"reuse step {r['reuse_s']:5.2f} s  "
                    f"close {r['close_s']:4.2f} s  peak sessions {r['peak_sessions']:5d}  "
                    f"peak conns {r['peak_conns']:5d}  controller maxRSS {r['rss_mib']:6.1f} MiB"
                    + (f"  errors {r['errors']}" if r["errors"] else ""),
                    flush=True,
                )
    after = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.json:
        print(json.dumps(rows, indent=1))
    print(
        f"RLIMIT_NOFILE soft/hard before {before}, after (Fleet raised it) {after}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        asyncio.run(_serve(Path(sys.argv[2]), sys.stdout))
    else:
        sys.exit(main())

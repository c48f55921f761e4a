"""Put roost on hosts that have Python but no internet (Murder's distribute_files,
ansible-lssd's setup.yml).

Theory of operation. Each host is probed over SSH for its Python version,
machine and C library; the controller assembles a wheel set for every
distinct target in its cache (``roost.fleet.wheels``: roost's own
reproducible wheel and its dependencies' for that target's tags).

Hosts whose ``VENV/roost-bootstrap.json`` already records the same wheel set
are left alone. The others get the wheels by SFTP into ``REMOTE/wheels``, or
from a host that has them already (a *relay*, see ``bootstrap``), and
pip, from its own wheel unpacked beside them, installs them with
``--no-index --find-links`` into ``REMOTE/venv`` (made ``--without-pip``);
the installed ``roost --version`` is checked afterwards. A target for which
no wheel fits, or whose wheels could not be downloaded, fails its hosts with
the reason ``roost.fleet.wheels`` gives.

Promises: ``bootstrap`` returns one result per host and never stops at the
first failure; the relays it started are stopped before it returns (one on a
host that cannot be reached then ends at its ``--lifetime``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

import roost
from roost._parse import load_json
from roost.errors import RemoteError, RoostError
from roost.fleet.config import FleetConfig
from roost.fleet.ssh import Fleet, HostResult, Session
from roost.fleet.tasks import Remote
from roost.fleet.wheels import Target, WheelSet, default_cache, wheel_set

log = logging.getLogger(__name__)

PROBE = (
    "import json,platform,sys;"
    "print(json.dumps({'python':'%d.%d'%sys.version_info[:2],"
    "'impl':sys.implementation.name,'machine':platform.machine(),"
    "'libc':' '.join(platform.libc_ver())}))"
)
STAMP = "roost-bootstrap.json"


# ---------------------------------------------------------------- over SSH


FETCH = (
    "import hashlib,json,os,sys,urllib.parse,urllib.request\n"
    "base,dest,want=sys.argv[1],sys.argv[2],json.loads(sys.argv[3])\n"
    "for name,digest in want:\n"
    "    part=os.path.join(dest,'.'+name+'.part'); h=hashlib.sha256()\n"
    "    try:\n"
    "        with urllib.request.urlopen(base+'/'+urllib.parse.quote(name),timeout=30) as r,"
    " open(part,'wb') as f:\n"
    "            while True:\n"
    "                b=r.read(1<<20)\n"
    "                if not b: break\n"
    "                h.update(b); f.write(b)\n"
    "    except Exception as e:\n"
    "        sys.exit('cannot fetch %s from %s: %s'%(name,base,e))\n"
    "    if h.hexdigest()!=digest:\n"
    "        os.unlink(part); sys.exit('%s from %s: sha256 mismatch'%(name,base))\n"
    "    os.replace(part,os.path.join(dest,name))\n"
)
"""Run by the host's own Python (roost is not there yet): fetch each wheel
from a relay, check its sha256 against the controller's, keep it."""

RELAY = "wheel-relay"


@dataclass(frozen=True)
class Relay:
    host: str
    url: str


class Sources:
    """Who a host gets its wheels from: the controller (``None``, at most
    ``direct`` hosts at once) or a relay host that has them already (``relay``
    hosts at once each). Relays are per target: a wheel set fits one target.
    A relay that failed someone is dropped with all its slots."""

    def __init__(self, direct: int):
        self._cond = asyncio.Condition()
        self._direct = direct
        self._free: dict[str, list[Relay]] = {}
        self._bad: set[str] = set()

    async def acquire(self, key: str, *, relays: bool = True) -> Relay | None:
        async with self._cond:
            while True:
                free = self._free.get(key)
                if relays and free:
                    return free.pop(0)
                if self._direct > 0:
                    self._direct -= 1
                    return None
                await self._cond.wait()

    async def release(self, key: str, source: Relay | None, *, failed: bool = False) -> None:
        async with self._cond:
            if source is None:
                self._direct += 1
            elif failed:
                self._bad.add(source.host)
                self._free[key] = [r for r in self._free.get(key, []) if r.host != source.host]
            elif source.host not in self._bad:
                self._free.setdefault(key, []).append(source)
            self._cond.notify_all()

    async def add(self, key: str, relay: Relay, slots: int) -> None:
        async with self._cond:
            self._free.setdefault(key, []).extend([relay] * slots)
            self._cond.notify_all()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def bootstrap(
    fleet: Fleet, cfg: FleetConfig, *, force: bool = False, python: str = "python3"
) -> dict[str, HostResult[str]]:
    """Install roost into ``cfg.venv`` on every healthy host of ``fleet``.

    The controller sends the wheels to ``cfg.bootstrap_direct`` hosts at a
    time; every host that has them serves them on (``roost origin serve``,
    bound to the address SSH reached it at) to ``cfg.bootstrap_relay`` others
    at a time, who check each wheel's sha256 against the controller's list. A
    host that cannot fetch from its relay gets them from the controller.

    Returns one result per host: ``"installed"``, ``"installed from HOST"``
    or ``"already installed"``, or the failure (``RemoteError``: host, step,
    reason).
    """
    cache = default_cache(cfg)
    venv = cfg.venv
    stamp_path = f"{venv}/{STAMP}"
    probe_cmd = (
        f"{shlex.quote(python)} -c {shlex.quote(PROBE)} && "
        f"(cat {shlex.quote(stamp_path)} 2>/dev/null || true)"
    )
    probes = await fleet.run("probe", probe_cmd, timeout=min(60, fleet.options.step_timeout))
    targets: dict[str, Target] = {}
    stamps: dict[str, str] = {}
    for name, r in probes.items():
        if not r.ok or r.value is None:
            continue
        lines = r.value.stdout.strip().splitlines()
        try:
            info = load_json(lines[0], "probe output", RoostError)
            targets[name] = Target(info["python"], info["impl"], info["machine"], info["libc"])
        except (RoostError, KeyError, IndexError, TypeError):
            fleet.failures.setdefault(name, RemoteError(name, "probe", "cannot read the probe"))
            continue
        if len(lines) > 1:
            try:
                stamp = load_json("\n".join(lines[1:]), "stamp", RoostError)
                stamps[name] = str(stamp.get("digest", ""))
            except (RoostError, AttributeError):
                stamps[name] = ""
    sets: dict[str, WheelSet | RoostError] = {}
    for t in {t.key: t for t in targets.values()}.values():
        try:
            sets[t.key] = wheel_set(t, cache)
        except RoostError as exc:
            sets[t.key] = exc
    for name, t in targets.items():
        ws = sets[t.key]
        if isinstance(ws, RoostError):
            fleet.failures.setdefault(name, RemoteError(name, "wheels", f"refused: {ws}"))
    wheels_dir = f"{cfg.remote_path.rstrip('/')}/wheels"
    remote = Remote(cfg)
    q = shlex.quote
    sources = Sources(max(1, cfg.bootstrap_direct))
    # hosts of each target still to be served: relays are started only while some wait
    waiting: dict[str, int] = {}
    for name, t in targets.items():
        ws = sets[t.key]
        stale = isinstance(ws, WheelSet) and (force or stamps.get(name) != ws.digest)
        if stale and name not in fleet.failures:
            waiting[t.key] = waiting.get(t.key, 0) + 1
    # what relayed hosts check their wheels against (only where someone installs)
    digests = {
        key: [(w.name, _file_sha256(w)) for w in ws.wheels]
        for key, ws in sets.items()
        if isinstance(ws, WheelSet) and waiting.get(key)
    }
    relays: list[str] = []

    async def fetch(s: Session, key: str) -> Relay | None:
        """Wheels into ``wheels_dir``, from a relay (returned) or from the
        controller (None: the caller holds a controller slot until the host is
        installed and relaying, so relays come up as fast as hosts install)."""
        source = await sources.acquire(key, relays=cfg.bootstrap_relay > 0)
        waiting[key] -= 1
        if source is not None:
            argv = [python, "-c", FETCH, source.url, wheels_dir, json.dumps(digests[key])]
            got = None
            try:
                got = await s.run(" ".join(map(q, argv)), check=False)
            finally:
                failed = got is None or got.exit_status != 0
                await sources.release(key, source, failed=failed)
            if got is not None and not failed:
                return source
            reason = (got.stderr.strip().splitlines() if got else None) or ["no reason"]
            log.info("[%s] relay %s failed (%s)", s.host.name, source.host, reason[-1])
            await sources.acquire(key, relays=False)
        ws = sets[key]
        assert isinstance(ws, WheelSet)
        try:
            await s.put(list(ws.wheels), wheels_dir)
        except BaseException:
            await sources.release(key, None)
            raise
        return None

    async def serve_on(s: Session, key: str) -> None:
        """Serve this host's wheels to the hosts still waiting (best effort)."""
        if cfg.bootstrap_relay <= 0 or waiting.get(key, 0) <= 0:
            return
        lifetime = f"{fleet.options.step_timeout + 60:g}"
        argv = ["origin", "serve", wheels_dir, "--bind", s.peer_address, "--port", "0"]
        argv += ["--lifetime", lifetime]
        cmd = remote.start(RELAY, argv, ready_log=r"at (https?://\S+)", wait=10)
        out = await s.run(cmd, check=False)
        try:
            line = out.stdout.strip().splitlines()[-1]
            url = str(load_json(line, "relay output", RoostError).get("match", ""))
        except (RoostError, IndexError, AttributeError):
            url = ""
        if out.exit_status == 0 and url:
            relays.append(s.host.name)
            await sources.add(key, Relay(s.host.name, str(url)), cfg.bootstrap_relay)
        else:
            log.info("[%s] cannot relay wheels: %s", s.host.name, (out.stdout or out.stderr)[-200:])

    async def install(s: Session) -> str:
        key = targets[s.host.name].key
        ws = sets[key]
        assert isinstance(ws, WheelSet)
        if not force and stamps.get(s.host.name) == ws.digest:
            return "already installed"
        await s.run(f"rm -rf {q(wheels_dir)} && mkdir -p {q(wheels_dir)}")
        relay = await fetch(s, key)
        try:
            await install_wheels(s, ws)
            await serve_on(s, key)
        finally:
            if relay is None:
                await sources.release(key, None)
        return "installed" if relay is None else f"installed from {relay.host}"

    async def install_wheels(s: Session, ws: WheelSet) -> None:
        rw = q(f"{wheels_dir}/{ws.roost_wheel.name}")
        pip_wheel = q(f"{wheels_dir}/{ws.installer.name}")
        # pip from its unpacked wheel (unpacked, its bytecode is cached between
        # the two runs), into a venv without pip: no ensurepip needed, and
        # the seconds ensurepip takes to install pip into the venv are saved
        installer = f"{cfg.remote_path.rstrip('/')}/installer"
        pip = (
            f"PIP_CONFIG_FILE=/dev/null {q(venv)}/bin/python {q(installer)}/pip install -q "
            f"--disable-pip-version-check --no-index"
        )
        version = roost.__version__
        stamp = json.dumps({"digest": ws.digest, "version": version, "target": ws.target.key})
        script = " && ".join(
            [
                f"( test -x {q(venv)}/bin/python || {q(python)} -m venv --without-pip {q(venv)} )",
                f"rm -rf {q(installer)}",
                f"{q(python)} -m zipfile -e {pip_wheel} {q(installer)}",
                f"{pip} --find-links {q(wheels_dir)} {rw}",
                f"{pip} --no-deps --force-reinstall {rw}",
                f"rm -rf {q(installer)}",
            ]
        )
        await s.run(script)
        got = (await s.run(f"{q(venv)}/bin/roost --version")).stdout.split()
        if got[-1:] != [version]:
            raise RemoteError(
                s.host.name,
                "bootstrap",
                f"installed roost reports {' '.join(got) or 'nothing'}, expected {version}",
            )
        await s.run(f"printf '%s\\n' {q(stamp)} > {q(stamp_path)}")

    try:
        return await fleet.each(
            "bootstrap", install, hosts=[h for h in fleet.hosts if h.name in targets]
        )
    finally:
        await _stop_relays(fleet, cfg, relays)


async def _stop_relays(fleet: Fleet, cfg: FleetConfig, names: list[str]) -> None:
    """Stop the wheel relays; a host that cannot be reached now keeps its
    relay until ``--lifetime`` ends it, and is not failed for that."""
    if not names:
        return
    cmd = Remote(cfg).helper("stop", Remote(cfg).temp, RELAY)

    async def stop(s: Session) -> None:
        with contextlib.suppress(Exception):
            await s.run(cmd, check=False)

    await fleet.each("stop-relay", stop, hosts=[h for h in fleet.hosts if h.name in names])

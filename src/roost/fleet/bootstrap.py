"""Put roost on hosts that have Python but no internet (Murder's distribute_files,
ansible-lssd's setup.yml).

Theory of operation. Each host is probed over SSH for its Python version,
machine and C library. For every distinct target the controller assembles a
wheel set in its cache (``~/.cache/roost/wheels`` unless configured):

* roost itself, as a reproducible pure-Python wheel built from the installed
  package (``roost_wheel``; same code -> same bytes, so the digest identifies
  the release);
* its dependencies, pinned to the controller's installed versions, fetched
  with ``pip download --only-binary=:all:`` for the target's Python, ABI and
  platform tags (offline from the cache first, from the registry otherwise).

Hosts whose ``VENV/roost-bootstrap.json`` already records the same wheel set
are left alone. The others get the wheels by SFTP into ``REMOTE/wheels`` and
``pip install --no-index --find-links`` into ``REMOTE/venv``; the installed
``roost --version`` is checked afterwards. A target for which no wheel fits
fails its hosts with a reason naming the package, Python and machine.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import roost
from roost.errors import RemoteError, RoostError
from roost.fleet.config import FleetConfig
from roost.fleet.ssh import Fleet, HostResult, Session

log = logging.getLogger(__name__)

PROBE = (
    "import json,platform,sys;"
    "print(json.dumps({'python':'%d.%d'%sys.version_info[:2],"
    "'impl':sys.implementation.name,'machine':platform.machine(),"
    "'libc':' '.join(platform.libc_ver())}))"
)
STAMP = "roost-bootstrap.json"


@dataclass(frozen=True)
class Target:
    python: str  # "3.11"
    impl: str  # "cpython"
    machine: str  # "x86_64"
    libc: str  # "glibc 2.36"

    @property
    def key(self) -> str:
        libc = self.libc.replace(" ", "") or "nolibc"
        return f"{self.impl}{self.python}-{self.machine}-{libc}"

    def describe(self) -> str:
        return f"{self.impl} {self.python} on {self.machine} ({self.libc or 'unknown libc'})"


@dataclass(frozen=True)
class WheelSet:
    target: Target
    wheels: tuple[Path, ...]
    roost_wheel: Path
    digest: str


# ---------------------------------------------------------------- roost's wheel


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def roost_wheel(out_dir: Path) -> Path:
    """Build roost's pure-Python wheel from the installed package (no network,
    reproducible: fixed timestamps, sorted members)."""
    dist = md.distribution("roost")
    version = dist.version
    pkg_root = Path(roost.__file__).resolve().parent
    files: list[tuple[str, bytes]] = []
    for path in sorted(pkg_root.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
            continue
        files.append((f"roost/{path.relative_to(pkg_root).as_posix()}", path.read_bytes()))
    info = f"roost-{version}.dist-info"
    metadata = (
        dist.read_text("METADATA") or f"Metadata-Version: 2.1\nName: roost\nVersion: {version}\n"
    )
    entry = dist.read_text("entry_points.txt") or "[console_scripts]\nroost = roost.cli:main\n"
    wheel_meta = "Wheel-Version: 1.0\nGenerator: roost\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files += [
        (f"{info}/METADATA", metadata.encode()),
        (f"{info}/WHEEL", wheel_meta.encode()),
        (f"{info}/entry_points.txt", entry.encode()),
    ]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files)
    record += f"{info}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in [*files, (f"{info}/RECORD", record.encode())]:
            zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = out_dir / f"roost-{digest}" / f"roost-{version}-py3-none-any.whl"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return target


# ---------------------------------------------------------------- dependency wheels


def requirements(target: Target) -> list[str]:
    """roost's requirements for ``target``, pinned to the controller's versions."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging comes with pip/setuptools
        Requirement = None  # type: ignore[misc,assignment]
    out = []
    env = {
        "python_version": target.python,
        "python_full_version": f"{target.python}.0",
        "platform_machine": target.machine,
        "sys_platform": "linux",
        "platform_system": "Linux",
        "implementation_name": target.impl,
        "extra": "",
    }
    for text in md.requires("roost") or []:
        if Requirement is None:
            name = re.split(r"[ ;<>=!~\[]", text, maxsplit=1)[0]
            if ";" in text:
                continue
        else:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = req.name
        try:
            out.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            out.append(text.split(";")[0].strip())
    return out


def _platforms(target: Target) -> list[str]:
    m = target.machine
    kind, _, ver = target.libc.partition(" ")
    plats: list[str] = []
    nums = re.match(r"(\d+)\.(\d+)", ver)
    if kind == "glibc" and nums:
        minor = int(nums.group(2))
        plats += [f"manylinux_2_{i}_{m}" for i in range(minor, 4, -1)]
        plats += [
            f"manylinux{t}_{m}"
            for t, need in (("2014", 17), ("2010", 12), ("1", 5))
            if minor >= need
        ]
    else:
        plats += [f"musllinux_1_{i}_{m}" for i in range(3, -1, -1)]
    return plats


def _pip_download(
    reqs: list[str], dest: Path, target: Target, online: bool
) -> subprocess.CompletedProcess[str]:
    short = target.python.replace(".", "")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--python-version",
        target.python,
        "--implementation",
        "cp",
        "--abi",
        f"cp{short}",
        "--abi",
        "abi3",
        "--abi",
        "none",
        "-d",
        str(dest),
        "--find-links",
        str(dest),
    ]
    for p in _platforms(target):
        cmd += ["--platform", p]
    if not online:
        cmd.append("--no-index")
    return subprocess.run([*cmd, *reqs], capture_output=True, text=True, timeout=600)


def dependency_wheels(target: Target, cache: Path) -> list[Path]:
    """Wheels of roost's dependencies for ``target``. Raises ``RoostError``
    naming the package when none fits."""
    if target.impl != "cpython":
        raise RoostError(f"no wheels for {target.describe()}: roost needs CPython")
    dest = cache / f"deps-{target.key}"
    dest.mkdir(parents=True, exist_ok=True)
    reqs = requirements(target)
    result = _pip_download(reqs, dest, target, online=False)
    if result.returncode != 0:
        result = _pip_download(reqs, dest, target, online=True)
    if result.returncode != 0:
        m = re.search(r"No matching distribution found for (\S+)", result.stderr)
        what = m.group(1) if m else "a dependency"
        last = [ln for ln in result.stderr.splitlines() if ln.startswith("ERROR")][-1:]
        raise RoostError(
            f"no wheel of {what} fits {target.describe()}"
            + ("" if m else f" ({last[0] if last else 'pip download failed'})")
        )
    # what pip resolved this time (the cache may hold other versions too)
    names = {re.split(r"[=<>!~ ]", r, maxsplit=1)[0].lower().replace("-", "_") for r in reqs}
    wheels = sorted(dest.glob("*.whl"))
    chosen: dict[str, Path] = {}
    pins = {r.split("==")[0].lower().replace("-", "_"): r.split("==")[1] for r in reqs if "==" in r}
    for w in wheels:
        dist, version = w.name.split("-")[:2]
        key = dist.lower().replace("-", "_")
        if key in pins and pins[key] != version:
            continue
        if key not in chosen or _vkey(version) > _vkey(chosen[key].name.split("-")[1]):
            chosen[key] = w
    missing = names - set(chosen)
    if missing:
        raise RoostError(f"no wheel of {sorted(missing)[0]} fits {target.describe()}")
    return sorted(chosen.values())


def _vkey(version: str) -> tuple[int | str, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.+-]", version))


def wheel_set(target: Target, cache: Path) -> WheelSet:
    rw = roost_wheel(cache)
    deps = dependency_wheels(target, cache)
    h = hashlib.sha256()
    for w in [rw, *deps]:
        h.update(w.name.encode() + b"\0")
    h.update(rw.parent.name.encode())
    return WheelSet(target, (rw, *deps), rw, h.hexdigest())


def default_cache(cfg: FleetConfig) -> Path:
    if cfg.wheel_cache:
        return Path(cfg.wheel_cache).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "roost" / "wheels"


# ---------------------------------------------------------------- over SSH


async def bootstrap(
    fleet: Fleet, cfg: FleetConfig, *, force: bool = False, python: str = "python3"
) -> dict[str, HostResult[str]]:
    """Install roost into ``cfg.venv`` on every healthy host of ``fleet``.

    Returns one result per host: value ``"installed"`` or ``"already installed"``,
    or the failure (``RemoteError``: host, step, reason).
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
            info = json.loads(lines[0])
            targets[name] = Target(info["python"], info["impl"], info["machine"], info["libc"])
        except (ValueError, KeyError, IndexError):
            fleet.failures.setdefault(name, RemoteError(name, "probe", "cannot read the probe"))
            continue
        if len(lines) > 1:
            try:
                stamps[name] = json.loads("\n".join(lines[1:])).get("digest", "")
            except ValueError:
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

    async def install(s: Session) -> str:
        ws = sets[targets[s.host.name].key]
        assert isinstance(ws, WheelSet)
        if not force and stamps.get(s.host.name) == ws.digest:
            return "already installed"
        q = shlex.quote
        await s.run(f"rm -rf {q(wheels_dir)} && mkdir -p {q(wheels_dir)}")
        await s.put(list(ws.wheels), wheels_dir)
        rw = q(f"{wheels_dir}/{ws.roost_wheel.name}")
        pip = (
            f"PIP_CONFIG_FILE=/dev/null {q(venv)}/bin/python -m pip install -q "
            f"--disable-pip-version-check --no-index"
        )
        version = md.version("roost")
        stamp = json.dumps({"digest": ws.digest, "version": version, "target": ws.target.key})
        script = " && ".join(
            [
                f"( test -x {q(venv)}/bin/python || {q(python)} -m venv {q(venv)} )",
                f"{pip} --find-links {q(wheels_dir)} {rw}",
                f"{pip} --no-deps --force-reinstall {rw}",
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
        return "installed"

    return await fleet.each(
        "bootstrap", install, hosts=[h for h in fleet.hosts if h.name in targets]
    )

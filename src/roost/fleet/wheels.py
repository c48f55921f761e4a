"""The wheel sets that put roost on hosts without internet access: what a host
needs, built or fetched once per target into the controller's cache.

Theory of operation. A *target* is what a host's probe reports: its Python
version, implementation, machine and C library. For every distinct target the
controller assembles a wheel set in its cache (``~/.cache/roost/wheels``
unless configured):

* roost itself, as a reproducible pure-Python wheel built from the installed
  package (``roost_wheel``; same code -> same bytes, so the digest identifies
  the release);
* its dependencies, pinned to the controller's installed versions, fetched
  with ``pip download --only-binary=:all:`` for the target's Python, ABI and
  platform tags (offline from the cache first, from the registry otherwise);
* pip's own wheel, the *installer*: a host unpacks it and runs pip from it
  into a venv made ``--without-pip``, so no host needs ensurepip (Debian's
  python3-venv), and none spends the seconds ensurepip takes to install pip
  into every venv.

A target for which no wheel fits fails with a reason naming the package,
Python and machine; a registry that cannot be reached fails with pip's reason
instead (``download_failure``).

A controller without registry access is given a cache filled elsewhere:
``download_only`` (``roost bootstrap --download-only --python 3.11 --platform
manylinux_2_28_x86_64 --wheel-cache DIR``) fetches the wheel sets for targets
named by hand (``target_for``), and the offline pass looks through every
``deps-*`` directory of the same Python and machine, so wheels fetched for an
older glibc serve hosts with a newer one.

Promises: runs on the controller only (files and ``pip``, no SSH); errors are
``RoostError`` (no wheel fits, no registry) or ``UsageError`` (a target named
by hand that is not one).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import io
import os
import platform
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import roost
from roost._fs import atomic_write
from roost.errors import RoostError, UsageError
from roost.fleet.config import FleetConfig


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
    wheels: tuple[Path, ...]  # everything a host is sent, the installer included
    roost_wheel: Path
    digest: str
    installer: Path  # pip's wheel: run from, not installed


# ---------------------------------------------------------------- roost's wheel


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def roost_wheel(out_dir: Path) -> Path:
    """Build roost's pure-Python wheel from the installed package (no network,
    reproducible: fixed timestamps, sorted members)."""
    dist = md.distribution("roost")
    version = roost.__version__  # an editable install's metadata may be older
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
    metadata = re.sub(r"(?m)^Version: .*$", f"Version: {version}", metadata, count=1)
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
        atomic_write(target, data)
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
    return [*out, f"pip=={md.version('pip')}"]  # the installer (pip runs this code)


def _installer_links() -> list[Path]:
    """Where this machine keeps pip's wheel already: the interpreter's
    ensurepip bundle, and Debian's python-wheels (python3-pip-whl)."""
    found = []
    try:
        import ensurepip

        found.append(Path(ensurepip.__file__).parent / "_bundled")
    except ImportError:  # pragma: no cover - Debian's python3 without python3-venv
        pass
    found.append(Path("/usr/share/python-wheels"))
    return [p for p in found if p.is_dir()]


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
    reqs: list[str], dest: Path, target: Target, online: bool, links: list[Path]
) -> subprocess.CompletedProcess[str]:
    short = target.python.replace(".", "")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        # online, pip's debug lines say whether the index answered (with
        # --retries 0 nothing else does)
        "-vv" if online else "-q",
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
    ]
    for link in links:
        cmd += ["--find-links", str(link)]
    for p in _platforms(target):
        cmd += ["--platform", p]
    if not online:
        cmd.append("--no-index")
    return subprocess.run([*cmd, *reqs], capture_output=True, text=True, timeout=600)


# pip's lines (stdout at -vv, stderr) saying an index or link did not answer
_FETCH_FAILED = re.compile(r"Could not fetch URL (\S+?):? (.*?)(?: - skipping)?$")
_RETRYING = re.compile(r"Retrying \(.*?\) after connection broken by (.*?)(?:: (/\S*))?$")
_UNTRUSTED = re.compile(r"The repository located at (\S+) is not a trusted or secure host")
_CAUSE = re.compile(r"\w+\('(?:<[^>]*>: )?(.*?)'?\)+'?$")


def _cause(text: str) -> str:
    """``Caused by NewConnectionError('<obj at 0x..>: Failed to ...')`` -> ``Failed to ...``."""
    text = text.strip().strip("'")
    inner = text.rpartition("(Caused by ")[2] if "(Caused by " in text else text
    m = _CAUSE.search(inner)
    return (m.group(1) if m else inner).strip(" '\")")


def download_failure(output: str) -> str | None:
    """Why pip could not reach its index (or a link), from its output; None
    when every index answered, so that a failure means no wheel fits."""
    fetch = retry = untrusted = None
    for line in output.splitlines():
        line = line.strip().removeprefix("WARNING: ").removeprefix("ERROR: ")
        if m := _FETCH_FAILED.search(line):
            if not m.group(2).startswith("404 "):  # 404: answered, no such project there
                fetch = f"{m.group(1)}: {_cause(m.group(2))}"
        elif m := _RETRYING.search(line):
            retry = f"{m.group(2) or 'index'}: {_cause(m.group(1))}"
        elif m := _UNTRUSTED.search(line):
            untrusted = f"{m.group(1)} is plain HTTP and not a trusted host (pip --trusted-host)"
    reason = fetch or retry or untrusted  # the full URL when pip's debug lines give it
    return reason[:300] if reason else None


def _sibling_caches(cache: Path, target: Target) -> list[Path]:
    """The cache's wheel directories for the same Python and machine (any libc
    version): pip picks what fits ``target`` among them."""
    prefix = f"deps-{target.impl}{target.python}-{target.machine}-"
    return sorted(p for p in cache.glob(prefix + "*") if p.is_dir())


def dependency_wheels(target: Target, cache: Path) -> list[Path]:
    """Wheels of roost's dependencies for ``target``: from the cache if it
    holds them, from the registry otherwise. Raises ``RoostError`` naming the
    package when none fits, or pip's reason when the download failed."""
    if target.impl != "cpython":
        raise RoostError(f"no wheels for {target.describe()}: roost needs CPython")
    dest = cache / f"deps-{target.key}"
    dest.mkdir(parents=True, exist_ok=True)
    reqs = requirements(target)
    links = [dest, *(p for p in _sibling_caches(cache, target) if p != dest), *_installer_links()]
    result = _pip_download(reqs, dest, target, online=False, links=links)
    if result.returncode != 0:
        result = _pip_download(reqs, dest, target, online=True, links=[dest])
    if result.returncode != 0:
        m = re.search(r"No matching distribution found for (\S+)", result.stderr)
        what = m.group(1) if m else "a dependency"
        failed = download_failure(result.stdout + "\n" + result.stderr)
        if failed is not None:
            raise RoostError(
                f"could not download {what} for {target.describe()}: {failed} (no registry "
                "here? fill a wheel cache on a machine that reaches one: roost bootstrap "
                f"--download-only --python {target.python} --platform {_platforms(target)[0]} "
                "--wheel-cache DIR, then pass --wheel-cache DIR here)"
            )
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
    [installer] = [w for w in deps if w.name.startswith("pip-")]
    return WheelSet(target, (rw, *deps), rw, h.hexdigest(), installer)


def default_cache(cfg: FleetConfig) -> Path:
    if cfg.wheel_cache:
        return Path(cfg.wheel_cache).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "roost" / "wheels"


# ---------------------------------------------------------------- --download-only


_PLATFORM_TAG = re.compile(r"(manylinux|musllinux)_(\d+)_(\d+)_(\w+)")
_LEGACY_TAGS = {"manylinux2014": "2.17", "manylinux2010": "2.12", "manylinux1": "2.5"}


def target_for(python: str, platform_tag: str | None = None) -> Target:
    """The target a host would probe as, from a Python version (``3.11``) and a
    wheel platform tag (``manylinux_2_28_x86_64``, ``manylinux2014_aarch64``,
    ``musllinux_1_2_x86_64``; None: this machine's): the newest C library that
    tag allows. Raises ``UsageError`` for anything else."""
    if not re.fullmatch(r"3\.\d{1,2}", python):
        raise UsageError(f"bad --python {python!r}: give the hosts' Python version, e.g. 3.11")
    if platform_tag is None:
        here = this_target()
        if not here.libc.startswith("glibc"):
            raise UsageError("give the hosts' --platform, e.g. manylinux_2_28_x86_64")
        return Target(python, "cpython", here.machine, here.libc)
    if m := _PLATFORM_TAG.fullmatch(platform_tag):
        kind, major, minor, machine = m.groups()
        # a probe on musl reports no libc (platform.libc_ver() knows glibc only)
        libc = f"glibc {major}.{minor}" if kind == "manylinux" and major == "2" else ""
        if kind == "manylinux" and major != "2":
            raise UsageError(f"bad --platform {platform_tag!r}: manylinux tags are manylinux_2_*")
        return Target(python, "cpython", machine, libc)
    legacy, _, machine = platform_tag.partition("_")
    if legacy in _LEGACY_TAGS and re.fullmatch(r"\w+", machine):
        return Target(python, "cpython", machine, f"glibc {_LEGACY_TAGS[legacy]}")
    raise UsageError(
        f"bad --platform {platform_tag!r}: give a wheel platform tag, e.g. "
        "manylinux_2_28_x86_64, manylinux2014_aarch64 or musllinux_1_2_x86_64"
    )


def this_target() -> Target:
    """This machine as a host's probe would report it."""
    return Target(
        f"{sys.version_info[0]}.{sys.version_info[1]}",
        sys.implementation.name,
        platform.machine(),
        " ".join(platform.libc_ver()),
    )


def download_only(targets: list[Target], cache: Path) -> list[tuple[Target, list[Path]]]:
    """Fill ``cache`` with the dependency wheels of every target, for a
    controller that cannot reach the registry (carry ``cache`` over and pass it
    as its ``--wheel-cache``). Raises ``RoostError`` as ``dependency_wheels``."""
    return [(t, dependency_wheels(t, cache)) for t in targets]

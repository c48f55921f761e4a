"""README's set-up, for real: ``scripts/install`` with the system's own Python
(Debian's and Ubuntu's python3 refuse pip installs outside a virtual
environment, PEP 668), and roost as a package (``python -m build``, the wheel
installed into a clean venv). Each works on a scratch copy of the checkout,
so the checkout itself is left as it is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

import roost

ROOT = Path(__file__).resolve().parent.parent
# A stock system's PATH: no pyenv shims, no conda, no virtual environment.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What would make the scratch install use another Python than the system's.
FOREIGN_ENV = ("VIRTUAL_ENV", "CONDA_", "PYENV", "PYTHONPATH", "PYTHONHOME", "ROOST_")

pytestmark = pytest.mark.timeout(600)


def system_python() -> tuple[str | None, str]:
    """The system's python3, or None and why there is none.

    It is the first python3 on a PATH of only the system's directories
    (SYSTEM_PATH), provided it is no virtual environment (``sys.prefix`` is
    ``sys.base_prefix``) and is installed in /usr or /usr/local (not a pyenv
    or conda Python linked there)."""
    exe = shutil.which("python3", path=SYSTEM_PATH)
    if exe is None:
        return None, f"no python3 on {SYSTEM_PATH}"
    probe = "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix]))"
    prefix, base = json.loads(subprocess.check_output([exe, "-c", probe], text=True))
    if prefix != base:
        return None, f"{exe} is a virtual environment's python3 ({prefix})"
    if prefix not in ("/usr", "/usr/local"):
        return None, f"{exe} is installed in {prefix}, not the system's /usr"
    return exe, ""


def scratch_checkout(dest: Path) -> Path:
    """A copy of the checkout's files as they are now (tracked and new, not
    ignored ones: no .venv, no build output)."""
    names = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, names):
        src = ROOT / os.fsdecode(name)
        if src.is_file() or src.is_symlink():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target, follow_symlinks=False)
    return dest


def system_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
    return {**env, "PATH": SYSTEM_PATH, **extra}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip(
            "needs git and a git checkout (the copy is made from `git ls-files`): "
            "apt-get install git, and run the tests from a `git clone` of roost"
        )
    return scratch_checkout(tmp_path / "roost")


def test_install_script_with_the_system_python(checkout: Path, tmp_path: Path) -> None:
    """scripts/install makes .venv with the system's python3 and installs roost
    into it; README's first command then runs through .venv/bin/roost. The
    Debian packages of the tests and the lab and roost's extras are left out
    (ROOST_INSTALL_SKIP_APT, ROOST_INSTALL_EXTRAS) to keep it short."""
    python, why = system_python()
    if python is None:
        pytest.skip(
            f"no system Python to install with: {why}; "
            "apt-get install python3 python3-venv (Debian/Ubuntu) provides one"
        )
    env = system_env(ROOST_INSTALL_SKIP_APT="1", ROOST_INSTALL_EXTRAS="")
    fits = subprocess.run(
        [python, "-c", "import sys; sys.exit(not (3, 10) <= sys.version_info[:2] < (3, 14))"]
    )
    run = subprocess.run(
        [str(checkout / "scripts" / "install")],
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    if fits.returncode != 0:  # e.g. Debian 11's 3.9: refused, in one clear line
        assert run.returncode == 1 and "roost needs Python >=3.10,<3.14" in run.stderr
        return
    assert run.returncode == 0, run.stdout + run.stderr
    venv = checkout / ".venv"
    assert f"made {venv} with {python} (" in run.stderr
    base = subprocess.check_output(
        [venv / "bin" / "python", "-c", "import sys; print(sys.base_prefix)"], text=True
    )
    assert (
        base.strip()
        == subprocess.check_output(
            [python, "-c", "import sys; print(sys.prefix)"], text=True
        ).strip()
    )

    version = subprocess.run(
        [venv / "bin" / "roost", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"roost {roost.__version__}"
    dest = tmp_path / "demo"
    deploy = subprocess.run(
        [
            venv / "bin" / "roost",
            "deploy",
            "examples/build",
            "--tag=demo",
            "--local=2",
            f"--dest={dest}",
        ],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    for host in ("host-1", "host-2"):
        assert (dest / host / "demo" / "VERSION").read_bytes() == (
            checkout / "examples" / "build" / "VERSION"
        ).read_bytes()

    # Again: nothing to do, and quickly (no pip, no index).
    t0 = time.monotonic()
    again = subprocess.run(
        [str(checkout / "scripts" / "install")], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert "is installed in .venv already" in again.stderr
    assert time.monotonic() - t0 < 20


def test_wheel_and_sdist_install_into_a_clean_venv(checkout: Path, tmp_path: Path) -> None:
    """``python -m build`` makes both; the wheel, installed by pip into a new
    venv far from the checkout, gives a roost that reports its version and
    makes a release."""
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(checkout)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    version = roost.__version__
    wheel = dist / f"roost-{version}-py3-none-any.whl"
    sdist = dist / f"roost-{version}.tar.gz"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(f"roost-{version}.dist-info/METADATA").decode()
    assert {"roost/py.typed", "roost/tracker/static/app.js", "roost/cli/__init__.py"} <= names
    assert f"Version: {version}\n" in meta and "Requires-Python: <3.14,>=3.10" in meta
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "src/roost/tracker/static/app.js"} <= members

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "ROOST_"))}
    got = subprocess.run(
        [venv / "bin" / "roost", "--version"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert got.stdout.strip() == f"roost {version}", got.stderr
    create = subprocess.run(
        [
            venv / "bin" / "roost",
            "create",
            checkout / "examples" / "build",
            "--tag=v1",
            "--out=rel",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert create.returncode == 0, create.stderr
    assert (elsewhere / "rel" / "v1.torrent").is_file()
    where = subprocess.check_output(
        [venv / "bin" / "python", "-c", "import roost; print(roost.__file__)"], cwd=elsewhere
    )
    assert Path(where.decode().strip()).is_relative_to(venv)

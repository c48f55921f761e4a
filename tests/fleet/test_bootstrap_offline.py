"""A controller that cannot reach the registry. Bootstrap says it could not
download, with pip's reason, instead of "no wheel fits"; a true mismatch
(the index answered, nothing fits) still says "no wheel fits"; and
``roost bootstrap --download-only`` on a machine with access fills a wheel
cache that the offline controller then bootstraps from. Real pip throughout:
its configuration is replaced by the test's (``PIP_CONFIG_FILE=/dev/null``,
no ``PIP_*`` from outside) wherever the index must be a given one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from roost.cli import main
from roost.fleet.wheels import Target, dependency_wheels

pytestmark = pytest.mark.timeout(300)

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"  # the controller's: its pins exist
PLATFORM = "manylinux_2_28_x86_64"
TARGET = f"cpython {PY} on x86_64 (glibc 2.28)"


def pip_env(**pip: str) -> dict[str, str]:
    """This environment, with pip told only what the test says."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "ROOST_"))}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **pip}


def download_only(
    cache: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    argv = ["bootstrap", "--download-only", "--python", PY, "--platform", PLATFORM]
    return subprocess.run(
        [sys.executable, "-m", "roost", *argv, "--wheel-cache", str(cache), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize("retries", ["0", "2"])
def test_an_unreachable_registry_is_a_download_failure_with_pips_reason(
    tmp_path: Path, retries: str
) -> None:
    # port 9 (discard): nothing listens, the connection is refused at once; with
    # retries pip warns on each, with none only its debug lines tell
    env = pip_env(PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES=retries)
    run = download_only(tmp_path / "cache", env)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1, run.stderr
    assert re.match(
        rf"roost: error: could not download \S+==\S+ for {re.escape(TARGET)}: ", run.stderr
    )
    assert "http://127.0.0.1:9/simple/" in run.stderr and "Connection refused" in run.stderr
    assert "no wheel" not in run.stderr
    # and the way out, spelled for this target
    assert f"roost bootstrap --download-only --python {PY} --platform {PLATFORM}" in run.stderr


def test_an_index_without_a_fitting_wheel_is_a_mismatch(tmp_path: Path) -> None:
    """The index answers (a local simple index with no such project; a
    find-links directory holding only a wheel for another Python): no wheel
    fits, and nothing about downloads."""
    index = tmp_path / "simple"
    index.mkdir()
    links = tmp_path / "links"
    links.mkdir()
    (links / "libtorrent-2.1.1-cp39-cp39-manylinux_2_17_x86_64.whl").write_bytes(b"")
    for env in (
        pip_env(PIP_INDEX_URL=index.as_uri()),
        pip_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(links)),
    ):
        run = download_only(tmp_path / "cache", env)
        assert run.returncode == 1, run.stderr
        assert re.fullmatch(
            rf"roost: error: no wheel of \S+==\S+ fits {re.escape(TARGET)}\n", run.stderr
        )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--python", "3"], "bad --python '3': give the hosts' Python version, e.g. 3.11"),
        (["--python", "python3.11"], "bad --python 'python3.11'"),
        (
            ["--platform", "linux_x86_64"],
            "bad --platform 'linux_x86_64': give a wheel platform tag",
        ),
        (["--platform", "manylinux_3_1_x86_64"], "manylinux tags are manylinux_2_*"),
        (["--hosts", "h1"], "--download-only takes no hosts"),
    ],
)
def test_download_only_refuses_bad_values_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["bootstrap", "--download-only", "--wheel-cache", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("roost: error: ") and message in err and err.count("\n") == 1


def test_platform_without_download_only_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bootstrap", "--hosts", "h1", "--platform", PLATFORM]) == 2
    assert "--platform goes with --download-only" in capsys.readouterr().err


def test_download_only_fills_a_cache_an_offline_controller_bootstraps_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filled for glibc 2.28 on a machine with access (this one, with pip's own
    configuration); used by a controller whose index is unreachable, for
    hosts on glibc 2.36 (what fits 2.28 fits 2.36)."""
    cache = tmp_path / "carried"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    run = download_only(cache, env, "--json")
    if run.returncode != 0 and "could not download" in run.stderr:
        pytest.skip(
            "pip cannot reach its index from here (give it PyPI or a mirror: "
            f"PIP_INDEX_URL=...): {run.stderr.strip()}"
        )
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    [row] = doc["targets"]
    assert row["target"] == TARGET and doc["wheel_cache"] == str(cache)
    fetched = {w.split("-")[0].lower() for w in row["wheels"]}
    assert {"libtorrent", "asyncssh", "prometheus_client", "pyyaml"} <= fetched

    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    for key, value in pip_env(PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0").items():
        monkeypatch.setenv(key, value)
    wheels = dependency_wheels(Target(PY, "cpython", "x86_64", "glibc 2.36"), cache)
    assert {w.name.split("-")[0].lower() for w in wheels} == fetched
    assert all(w.parent == cache / f"deps-cpython{PY}-x86_64-glibc2.36" for w in wheels)

"""Start-up cost of the ``roost`` command: building the parser (every command
does) and a peer's front process must not import the heavy dependencies.

In a 64-host deploy on one machine each ``roost peer`` paid ~0.5 CPU-s for
asyncssh it never used (bench/NOTES.md); these tests keep it from coming back.
``roost CMD`` builds CMD's parser alone (``COMMAND_AREAS``), and a peer's
whole path (front, worker, feed client) loads no HTTP server.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

import roost.cli
from roost.cli import COMMAND_AREAS

#: the CLI modules of the SSH fleet: verbs, shared flags, ``roost deploy -i``
FLEET_CLI = ("roost.cli.fleet", "roost.cli.fleet_args", "roost.cli.fleet_deploy")
HEAVY = ("asyncssh", "libtorrent", "prometheus_client", "yaml", "playwright", "cryptography")


def modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def imported_after(code: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    modules = modules_after(code)
    return [name for name in heavy if name in modules]


def test_building_the_parser_imports_nothing_heavy() -> None:
    assert imported_after("import roost.cli; roost.cli.build_parser()") == []


def test_peer_front_imports_neither_ssh_nor_the_engine() -> None:
    # What the front of `roost peer` loads: the CLI, the peer module, and the
    # installer it runs after the worker's download.
    code = (
        "import roost.cli, roost.peer, roost.extract\n"
        "p = roost.cli.build_parser()\n"
        "p.parse_args(['peer', 'x.torrent', '--dest', '/tmp/d'])"
    )
    assert imported_after(code) == []


def test_the_probe_sees_a_heavy_import() -> None:
    # The check above can fail: the worker's own module path does load libtorrent.
    assert "libtorrent" in imported_after("from roost.peer import Download; import roost.engine")


def test_the_command_table_names_every_command_of_every_area() -> None:
    full = roost.cli.build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(roost.cli.COMMAND_AREAS)


@pytest.mark.parametrize("command", sorted(COMMAND_AREAS))
def test_a_command_built_alone_is_the_command_built_with_all(command: str) -> None:
    def help_of(parser: argparse.ArgumentParser) -> str:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return sub.choices[command].format_help()

    alone = roost.cli.build_parser(command)
    assert help_of(alone) == help_of(roost.cli.build_parser())


def test_a_peer_loads_no_http_server_and_no_other_command() -> None:
    # The front builds `roost peer`'s parser; the worker (a fork of it) adds the
    # engine, the feed client, the installer and the pre-fill.
    code = (
        "import roost.cli\n"
        "roost.cli.build_parser('peer').parse_args(['peer', 'x.torrent', '--dest', '/tmp/d'])\n"
        "import roost.peer, roost.engine, roost.feedclient, roost.extract, roost.prefill"
    )
    unwanted = ("http.server", "ssl", "roost.httpserve", "roost.feed", "tomllib", *FLEET_CLI)
    assert imported_after(code, unwanted) == []


def test_main_builds_only_the_command_it_runs() -> None:
    code = "import roost.cli\ntry:\n    roost.cli.main(['peer', '--help'])\nexcept SystemExit: pass"
    assert imported_after(code, (*FLEET_CLI, "roost.cli.tracker")) == []
    full = "import roost.cli\ntry:\n    roost.cli.main(['--help'])\nexcept SystemExit: pass"
    everything = (*FLEET_CLI, "roost.cli.tracker")
    assert imported_after(full, everything) == list(everything)


@pytest.mark.parametrize("command", ["bootstrap", "fleet"])
def test_the_fleet_verbs_build_without_the_fleet_deploy(command: str) -> None:
    code = f"import roost.cli\nroost.cli.build_parser({command!r})"
    assert imported_after(code, ("roost.cli.fleet", "roost.cli.fleet_deploy")) == [
        "roost.cli.fleet"
    ]


_JUDGE = (
    "import hashlib, pathlib, tempfile\n"
    "from roost import bencode\n"
    "from roost.peer.config import PeerConfig\n"
    "from roost.peer.front import _check_destination\n"
    "info = {b'name': b'a.bin', b'length': 3, b'piece length': 16384,"
    " b'pieces': hashlib.sha1(b'abc').digest()}\n"
    "torrent = bencode.encode({b'info': info})\n"
    "dest = pathlib.Path(tempfile.mkdtemp())\n"
    "{prepare}\n"
    "assert _check_destination(PeerConfig(torrent=dest / 't', dest=dest), torrent) is None\n"
)


def test_a_free_destination_is_judged_without_the_install_code() -> None:
    # Every peer judges its destination before downloading; most find it
    # free, and the tar, hashing and manifest code waits for the install.
    free = modules_after(_JUDGE.replace("{prepare}", "pass"))
    assert "roost.extract" not in free and "tarfile" not in free
    taken = modules_after(
        _JUDGE.replace("{prepare}", "(dest / 'a.bin').mkdir()\n(dest / 'a.bin' / 'x').touch()")
    )
    assert "roost.extract" in taken  # a taken place is judged in full

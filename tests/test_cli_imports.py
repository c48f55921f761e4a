"""Start-up cost of the ``roost`` command: building the parser (every command
does) and a peer's front process must not import the heavy dependencies.

In a 64-host deploy on one machine each ``roost peer`` paid ~0.5 CPU-s for
asyncssh it never used (bench/NOTES.md); these tests keep it from coming back.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("asyncssh", "libtorrent", "prometheus_client", "yaml", "playwright", "cryptography")


def imported_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    modules = set(json.loads(out.splitlines()[-1]))
    return [name for name in HEAVY if name in modules]


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

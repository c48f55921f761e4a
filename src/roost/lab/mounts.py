"""The lab hosts' private mounts: what each host's holder mounts, and what stays visible.

A host's *holder* (started by ``roost.lab.netns.Lab``) runs ``holder_script``
in a private mount namespace: a tmpfs on each private path (``/tmp``,
``/opt``), then ``ready``, then ``sleep infinity``.

What this Python and roost are made of (``needed_paths()``: the
interpreter's prefixes, its import path, roost's checkout) stays visible on
the hosts although it may lie under a private path (a checkout and its
``.venv`` under ``/tmp``): the holder mounts the new tmpfs on a stash
directory first, bind-mounts each such path read-only into it at the same
place, then moves the tmpfs onto ``/tmp``. A needed path that cannot be
shared that way (the private path itself) is named in one warning before
any host starts (``binds_for(..., warn=True)``).

Promises: no mounts and no processes here, only the script that makes them
and the paths it binds (read from ``sys`` and the file system).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def needed_paths(*, import_path: bool = True) -> list[str]:
    """Where this Python and roost live: what a host must see to run
    ``sys.executable -m roost`` (and scripts of roost's checkout, such as
    ``bench/``): the interpreter's prefixes, roost's checkout (or the
    site-packages holding it) and, with ``import_path``, ``sys.path``.
    Absolute, resolved, existing; an ancestor stands for its descendants."""
    import roost

    found = {Path(sys.executable).resolve().parent}
    found |= {Path(p) for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix)}
    pkg = Path(roost.__file__).resolve().parent.parent  # site-packages, or a checkout's src/
    found.add(pkg.parent if (pkg.parent / "pyproject.toml").is_file() else pkg)
    if import_path:
        found |= {Path(p) for p in sys.path if p and os.path.isabs(p)}
    paths = sorted({p.resolve() for p in found if p.exists()})
    return [str(p) for p in paths if not any(a in paths for a in p.parents)]


def under(path: str, mount: str) -> bool:
    """Whether ``path`` is ``mount`` or lies below it."""
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def binds_for(
    private_mounts: Sequence[str], shared_paths: Sequence[str], *, warn: bool = False
) -> dict[str, list[str]]:
    """The shared paths to bind into each private mount; with ``warn``,
    names (one line) what this Python and roost need that the hosts will
    not see."""
    binds: dict[str, list[str]] = {}
    for m in private_mounts:
        inside = {p for p in shared_paths if under(p, m) and p != m}
        binds[m] = sorted(p for p in inside if not any(p.startswith(o + "/") for o in inside))
    if not warn:
        return binds
    hidden = [
        p
        for p in needed_paths(import_path=False)
        for m in private_mounts
        if under(p, m) and not any(under(p, b) for b in binds[m])
    ]
    if hidden:
        log.warning(
            "the emulated hosts cannot see %s (under %s, which each host gets empty): "
            "`%s -m roost` will not run there; install roost elsewhere, or use no private "
            "mounts",
            hidden[0],
            ", ".join(m for m in private_mounts if under(hidden[0], m)),
            sys.executable,
        )
    return binds


def holder_script(private_mounts: Sequence[str], binds: dict[str, list[str]], stash: str) -> str:
    """The holder's shell script: a tmpfs on each private mount, holding
    read-only binds of the shared paths under it (``binds``, built on the
    empty directory ``stash`` first), then ``ready``."""
    q = shlex.quote
    steps = ["mount --make-rprivate /"]
    for m in private_mounts:
        steps.append(f"mkdir -p {q(m)}")
        if not binds[m]:
            steps.append(f"mount -t tmpfs -o mode=1777 roostlab {q(m)}")
            continue
        # built aside while the real paths are still visible, then moved in place
        steps.append(f"mount -t tmpfs -o mode=1777 roostlab {q(stash)}")
        for p in binds[m]:
            inside = q(stash + p[len(m.rstrip("/")) :])
            make = f"mkdir -p {inside}" if os.path.isdir(p) else f"mkdir -p $(dirname {inside})"
            if not os.path.isdir(p):
                make += f" && touch {inside}"
            steps.append(f"{make} && mount --bind -o ro {q(p)} {inside}")
        steps.append(f"mount --move {q(stash)} {q(m)}")
    return " && ".join([*steps, "echo ready", "exec sleep infinity"])

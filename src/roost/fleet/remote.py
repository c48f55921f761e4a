"""The host side of the fleet verbs: ``python -m roost.fleet.remote ...``.

Runs on a host inside roost's venv, started over SSH by ``roost.fleet.tasks``.
Every process it starts is recorded in ``TEMP/pids/NAME.pid`` (pid and start
time, ``roost.procs``) with its log in ``TEMP/logs/NAME.log``; stopping reads
the pid file and signals that one pid, never a name match. Stopping what is
not running is not an error. Output is one JSON object on stdout.

    start TEMP NAME [--ready-url URL | --ready-log RE] -- ARGV...
                                                   detached (new session)
    exec  TEMP NAME -- ARGV...                     in the foreground (pid file, exec)
    stop  TEMP GLOB...                             e.g. 'seed-*' 'peer-*'
    clean TEMP                                     remove temp files of stopped work
    check TORRENT MANIFEST TARGET                  does TARGET already hold the release?
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from roost import httpfetch, procs
from roost.errors import FetchError


def _pid_path(temp: Path, name: str) -> Path:
    return temp / "pids" / f"{name}.pid"


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def start(
    temp: Path,
    name: str,
    argv: list[str],
    ready_url: str | None,
    wait: float,
    ready_log: str | None = None,
) -> dict:
    """Start ``argv`` detached; ready when ``ready_url`` answers, or when a log
    line matches ``ready_log`` (its first group is returned as ``match``)."""
    pid_file = _pid_path(temp, name)
    running = procs.read_pid_file(pid_file)
    if running is not None:
        return {"ok": True, "name": name, "pid": running, "state": "already running"}
    (temp / "logs").mkdir(parents=True, exist_ok=True)
    log_path = temp / "logs" / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=str(temp),
        )
    procs.write_pid_file(pid_file, proc.pid)
    deadline = time.monotonic() + wait
    match = ""
    while True:
        if proc.poll() is not None:
            with contextlib.suppress(OSError):
                pid_file.unlink()
            return {
                "ok": False,
                "name": name,
                "error": f"exited with status {proc.returncode}: {_log_tail(log_path)}",
            }
        if ready_url:
            with contextlib.suppress(FetchError):
                httpfetch.get(ready_url, timeout=1)
                break
        if ready_log:
            found = re.search(ready_log, log_path.read_text(errors="replace"), re.MULTILINE)
            if found:
                match = found.group(1) if found.groups() else found.group(0)
                break
        if time.monotonic() >= deadline:
            if ready_url or ready_log:
                what = f"at {ready_url}" if ready_url else f"with a log line matching {ready_log!r}"
                return {"ok": False, "name": name, "error": f"not ready {what}"}
            break
        time.sleep(0.1)
    out = {"ok": True, "name": name, "pid": proc.pid, "state": "started", "log": str(log_path)}
    if ready_log:
        out["match"] = match
    return out


def exec_(temp: Path, name: str, argv: list[str]) -> None:
    procs.write_pid_file(_pid_path(temp, name))
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def _worker_pid_files(temp: Path) -> list[Path]:
    """The peers' lingering seed workers (``TEMP/HASH/worker.pid``, roost.peer)."""
    return sorted(temp.glob("*/worker.pid")) if temp.is_dir() else []


def stop(temp: Path, patterns: list[str]) -> dict:
    stopped: list[str] = []
    not_running: list[str] = []
    files: list[Path] = []
    for pattern in patterns:
        if pattern == "linger":
            files.extend(_worker_pid_files(temp))
        else:
            files.extend(procs.pid_files(temp / "pids", f"{pattern}.pid"))
    stats: dict[str, object] = {}
    for f in files:
        name = f.stem if f.parent.name == "pids" else f"linger-{f.parent.name[:12]}"
        (stopped if procs.stop_by_pid_file(f) else not_running).append(name)
        # what a seed uploaded, written as it stopped (roost seed --stats-file)
        stats_file = stats_path(temp, name)
        with contextlib.suppress(OSError, ValueError):
            stats[name] = json.loads(stats_file.read_text())
            stats_file.unlink()
    return {"ok": True, "stopped": stopped, "not_running": not_running, "stats": stats}


def stats_path(temp: Path, name: str) -> Path:
    """Where process ``name`` started by :func:`start` leaves its final counts."""
    return temp / "logs" / f"{name}.stats.json"


def clean(temp: Path) -> dict:
    if not temp.is_dir():
        return {"ok": True, "removed": [], "kept": []}
    live = set()
    for f in [*procs.pid_files(temp / "pids", "*.pid"), *_worker_pid_files(temp)]:
        if procs.read_pid_file(f) is not None:
            live.add(f)
        else:
            with contextlib.suppress(OSError):
                f.unlink()
    kept = sorted({str(f.relative_to(temp)).split("/")[0] for f in live})
    removed: list[str] = []
    for entry in sorted(temp.iterdir()):
        if entry.name in kept or (entry.name in ("pids", "logs") and live):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry.name)
    return {"ok": True, "removed": removed, "kept": kept}


def check(torrent: Path, manifest_path: Path, target: Path) -> dict:
    """Whether ``target`` already holds exactly the release (tar or tree), judged
    by the release's manifest shipped beside the torrent: no download needed."""
    import hashlib

    from roost.errors import RoostError
    from roost.manifest import parse_manifest
    from roost.metainfo import read_torrent
    from roost.verify import installed_difference

    try:
        meta = read_torrent(torrent.read_bytes())
        data = manifest_path.read_bytes()
        if meta.kind not in ("tar", "tree") or (
            hashlib.sha256(data).hexdigest() != meta.manifest_sha256
        ):
            return {"ok": True, "installed": False, "why": "no usable manifest"}
        manifest = parse_manifest(data)
    except (OSError, RoostError) as exc:
        return {"ok": True, "installed": False, "why": str(exc)}
    if not target.is_dir():
        return {"ok": True, "installed": False, "why": f"{target} missing"}
    problem = installed_difference(target, manifest)
    return {"ok": True, "installed": problem is None, "why": problem, "path": str(target)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m roost.fleet.remote")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("start")
    p.add_argument("temp", type=Path)
    p.add_argument("name")
    ready = p.add_mutually_exclusive_group()
    ready.add_argument("--ready-url")
    ready.add_argument("--ready-log", help="regular expression a log line must match")
    p.add_argument("--wait", type=float, default=1.0)
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p = sub.add_parser("exec")
    p.add_argument("temp", type=Path)
    p.add_argument("name")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p = sub.add_parser("stop")
    p.add_argument("temp", type=Path)
    p.add_argument("patterns", nargs="+")
    p = sub.add_parser("clean")
    p.add_argument("temp", type=Path)
    p = sub.add_parser("check")
    p.add_argument("torrent", type=Path)
    p.add_argument("manifest", type=Path)
    p.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    command: list[str] = list(getattr(args, "argv", None) or [])
    if command[:1] == ["--"]:
        command = command[1:]
    if args.cmd in ("start", "exec") and not command:
        parser.error("no command given after --")
    if args.cmd == "start":
        result = start(args.temp, args.name, command, args.ready_url, args.wait, args.ready_log)
    elif args.cmd == "exec":
        exec_(args.temp, args.name, command)
        return 0  # pragma: no cover - exec does not return
    elif args.cmd == "check":
        result = check(args.torrent, args.manifest, args.target)
    elif args.cmd == "stop":
        result = stop(args.temp, args.patterns)
    else:
        result = clean(args.temp)
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())

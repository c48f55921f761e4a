"""``roost status [TRACKER_URL]``: the tracker's swarms in the terminal.

The I/O shell (``fetch_stats``, ``run``) fetches ``/stats.json`` with
``roost.httpfetch`` (one deadline for the whole fetch, a size cap)
and prints; the core (``validate_stats``, ``render_status``) is pure: a stats
document in, lines of text out. Everything a peer announced (host labels,
addresses) is attacker-controlled and passes through ``_clean`` so that no
control character or terminal escape reaches the screen.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from roost._parse import load_json
from roost.errors import TrackerError, UsageError

DEFAULT_TRACKER = "http://127.0.0.1:8998"
FETCH_TIMEOUT = 5.0
MAX_BODY = 64 * 1024 * 1024
PEER_STATES = ("seeding", "downloading", "stopped")


# --------------------------------------------------------------------------
# sans-IO core


def validate_stats(doc: object) -> dict[str, Any]:
    """Check that ``doc`` has the /stats.json shape; return it.

    Raises ``TrackerError`` naming the first field that is wrong.
    """
    if not isinstance(doc, dict):
        raise TrackerError("bad /stats.json: top level is not an object")
    swarms = doc.get("swarms")
    if not isinstance(swarms, list):
        raise TrackerError("bad /stats.json: 'swarms' is not a list")
    tracker = doc.get("tracker", {})
    if not isinstance(tracker, dict):
        raise TrackerError("bad /stats.json: 'tracker' is not an object")
    for i, swarm in enumerate(swarms):
        where = f"swarms[{i}]"
        if not isinstance(swarm, dict):
            raise TrackerError(f"bad /stats.json: {where} is not an object")
        if not isinstance(swarm.get("info_hash"), str):
            raise TrackerError(f"bad /stats.json: {where}.info_hash is not a string")
        for key in ("seeders", "leechers", "completed"):
            if not _is_number(swarm.get(key, 0)):
                raise TrackerError(f"bad /stats.json: {where}.{key} is not a number")
        peers = swarm.get("peers", [])
        if not isinstance(peers, list):
            raise TrackerError(f"bad /stats.json: {where}.peers is not a list")
        for j, peer in enumerate(peers):
            if not isinstance(peer, dict):
                raise TrackerError(f"bad /stats.json: {where}.peers[{j}] is not an object")
            for key in ("left", "uploaded", "downloaded", "last_seen"):
                value = peer.get(key)
                if value is not None and not _is_number(value):
                    raise TrackerError(f"bad /stats.json: {where}.peers[{j}].{key} is not a number")
            progress = peer.get("progress")
            if progress is not None and not _is_number(progress):
                raise TrackerError(f"bad /stats.json: {where}.peers[{j}].progress is not a number")
    return doc


def render_status(
    doc: Mapping[str, Any],
    *,
    stall: float | None = None,
    max_peers: int | None = 40,
    color: bool = False,
) -> list[str]:
    """Render a validated stats document as terminal lines.

    ``stall``: flag downloading peers whose ``last_progress`` is older than
    this many seconds (default: trust the tracker's ``stalled`` flag).
    ``max_peers``: rows per swarm (stalled and slowest first); None = all.
    """
    tracker = doc.get("tracker") or {}
    now = _num(tracker.get("now"), time.time())
    swarms = doc.get("swarms") or []
    total_peers = sum(len(s.get("peers") or []) for s in swarms)
    head = f"tracker {_clean(str(tracker.get('version', '?')))}"
    if _is_number(tracker.get("started")):
        head += f"  up {_duration(now - float(tracker['started']))}"
    if _is_number(tracker.get("announces")):
        head += f"  {int(tracker['announces'])} announces"
    head += f"  {len(swarms)} swarm{'s' if len(swarms) != 1 else ''}  {total_peers} peers"
    lines = [head]
    if not swarms:
        lines.append("no swarms yet")
    for swarm in swarms:
        lines.append("")
        lines.extend(_render_swarm(swarm, now=now, stall=stall, max_peers=max_peers, color=color))
    return lines


def is_stalled(peer: Mapping[str, Any], *, now: float, stall: float | None) -> bool:
    """Whether a peer counts as stuck: the tracker's flag, or ``stall`` seconds
    without a decrease of ``left`` while downloading."""
    if stall is None:
        return bool(peer.get("stalled"))
    if peer.get("state") != "downloading":
        return False
    since = _opt(peer.get("last_progress"))
    if since is None:
        since = _opt(peer.get("first_seen"))
    return since is not None and now - since >= stall


def swarm_summary(swarm: Mapping[str, Any]) -> tuple[int, int, float | None]:
    """(hosts done, hosts total, ETA seconds or None) of one swarm."""
    peers = [p for p in swarm.get("peers") or [] if p.get("state") != "stopped"]
    done = sum(1 for p in peers if p.get("state") == "seeding" or p.get("left") == 0)
    size = swarm.get("size")
    rate = _num(swarm.get("rate_down"), 0.0)
    eta: float | None = None
    if done == len(peers) and peers:
        eta = 0.0
    elif _is_number(size) and rate > 0:
        remaining = sum(
            _num(p.get("left"), 0.0)
            for p in peers
            if p.get("state") == "downloading" and _is_number(p.get("left"))
        )
        eta = remaining / rate
    return done, len(peers), eta


def _render_swarm(
    swarm: Mapping[str, Any],
    *,
    now: float,
    stall: float | None,
    max_peers: int | None,
    color: bool,
) -> list[str]:
    tag = swarm.get("tag")
    name = _clean(str(tag)) if tag else "(untagged)"
    ih = _clean(str(swarm.get("info_hash", "")))[:12]
    size = swarm.get("size")
    done, total, eta = swarm_summary(swarm)
    parts = [
        f"{name}  {ih}",
        f"size {_bytes(size)}" if _is_number(size) else "size ?",
        f"done {done}/{total}",
        f"seeders {int(_num(swarm.get('seeders'), 0))}",
        f"leechers {int(_num(swarm.get('leechers'), 0))}",
        f"completed {int(_num(swarm.get('completed'), 0))}",
        f"down {_bytes(_num(swarm.get('rate_down'), 0.0))}/s",
        f"up {_bytes(_num(swarm.get('rate_up'), 0.0))}/s",
    ]
    if eta is not None:
        parts.append(f"ETA {_duration(eta)}")
    lines = ["  ".join(parts)]
    peers = list(swarm.get("peers") or [])
    if not peers:
        lines.append("  no peers")
        return lines
    stalled = [is_stalled(p, now=now, stall=stall) for p in peers]
    n_stalled = sum(stalled)
    order = sorted(range(len(peers)), key=lambda i: _sort_key(peers[i], stalled[i]))
    shown = order if max_peers is None else order[:max_peers]
    header = ("HOST", "ADDRESS", "DC", "RACK", "STATE", "PROGRESS", "DOWN", "UP", "SEEN", "")
    rows: list[tuple[str, ...]] = [header]
    for i in shown:
        rows.append(_peer_row(peers[i], now=now, stalled=stalled[i]))
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    for k, row in enumerate(rows):
        text = "  " + "  ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip()
        if color and k > 0 and row[-1]:
            text = f"\x1b[1;31m{text}\x1b[0m"
        lines.append(text)
    hidden = len(peers) - len(shown)
    if hidden > 0:
        hidden_states: dict[str, int] = {}
        for i in order[len(shown) :]:
            st = str(peers[i].get("state", "?"))
            st = st if st in PEER_STATES else "?"
            hidden_states[st] = hidden_states.get(st, 0) + 1
        detail = ", ".join(f"{n} {s}" for s, n in sorted(hidden_states.items()))
        lines.append(f"  ... {hidden} more peers ({detail}); --all shows every peer")
    if n_stalled:
        lines.append(f"  {n_stalled} peer{'s' if n_stalled != 1 else ''} STALLED")
    return lines


def _sort_key(peer: Mapping[str, Any], stalled: bool) -> tuple[int, float, str]:
    state = peer.get("state")
    rank = 0 if stalled else 1 if state == "downloading" else 2 if state == "seeding" else 3
    progress = peer.get("progress")
    return (rank, _num(progress, 0.0), str(peer.get("host") or peer.get("address") or ""))


def _peer_row(peer: Mapping[str, Any], *, now: float, stalled: bool) -> tuple[str, ...]:
    address = _clean(str(peer.get("address", "?")))
    if _is_number(peer.get("port")):
        address = f"{address}:{int(peer['port'])}"
    progress = _opt(peer.get("progress"))
    bar = _bar(progress) if progress is not None else f"left {_bytes(peer.get('left'))}"
    seen = _opt(peer.get("last_seen"))
    seen_text = f"{_duration(max(0.0, now - seen))} ago" if seen is not None else "?"
    flag = ""
    if stalled:
        since = _opt(peer.get("last_progress"))
        flag = f"STALLED {_duration(max(0.0, now - since))}" if since is not None else "STALLED"
    state = str(peer.get("state", "?"))
    return (
        _clean(str(peer.get("host") or "-")),
        address,
        _clean(str(peer.get("datacenter") or "-")),
        _clean(str(peer.get("rack") or "-")),
        state if state in PEER_STATES else "?",
        bar,
        _bytes(peer.get("downloaded")),
        _bytes(peer.get("uploaded")),
        seen_text,
        flag,
    )


def _bar(progress: float, width: int = 10) -> str:
    progress = min(1.0, max(0.0, progress)) if math.isfinite(progress) else 0.0
    filled = int(progress * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {progress * 100:5.1f}%"


def _clean(text: str, limit: int = 40) -> str:
    """Make a peer-supplied string safe and short for a terminal."""
    out = "".join(ch if ch.isprintable() else "?" for ch in text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _opt(value: object) -> float | None:
    return float(value) if _is_number(value) else None  # type: ignore[arg-type]


def _num(value: object, default: float) -> float:
    return float(value) if _is_number(value) else default  # type: ignore[arg-type]


def _bytes(value: object) -> str:
    if not _is_number(value):
        return "?"
    amount = float(value)  # type: ignore[arg-type]
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(amount) < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"  # pragma: no cover - loop always returns


def _duration(value: float) -> str:
    if not math.isfinite(value):
        return "?"
    seconds = round(value)
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# --------------------------------------------------------------------------
# I/O shell


def stats_url(tracker: str) -> str:
    """The /stats.json URL of a tracker given as URL, ``host:port`` or an
    announce URL. Raises ``UsageError`` for anything else."""
    text = tracker.strip()
    if not text or any(ch.isspace() for ch in text):
        raise UsageError(f"bad tracker URL {tracker!r}")
    if "://" not in text:
        text = "http://" + text
    scheme, _, rest = text.partition("://")
    if scheme not in ("http", "https") or not rest or rest.startswith("/"):
        raise UsageError(f"bad tracker URL {tracker!r}: expected http://HOST:PORT")
    host, _, path = rest.partition("/")
    path = "/" + path
    for suffix in ("/announce", "/stats.json", "/metrics"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return f"{scheme}://{host}{path.rstrip('/')}/stats.json"


def fetch_stats(url: str, *, timeout: float = FETCH_TIMEOUT) -> tuple[dict[str, Any], bytes]:
    """GET ``url`` and return (validated document, raw body).

    Raises ``TrackerError`` when the tracker cannot be reached, answers an
    HTTP error, or sends something that is not the /stats.json shape.
    """
    from roost import httpfetch  # here, not at module load: every roost command builds this parser
    from roost.errors import FetchError

    try:
        response = httpfetch.get(
            url, timeout=timeout, max_bytes=MAX_BODY, headers={"Accept": "application/json"}
        )
    except FetchError as exc:
        if exc.status is not None:
            raise TrackerError(f"tracker at {url} answered {exc.reason}") from exc
        raise TrackerError(f"cannot reach tracker at {url}: {exc.reason}") from exc
    body = response.body
    try:
        doc = load_json(body, "/stats.json", TrackerError, max_bytes=MAX_BODY)
    except TrackerError as exc:
        raise TrackerError(f"tracker at {url} sent bad JSON: {exc}") from None
    return validate_stats(doc), body


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "status",
        help="show the tracker's swarms and every peer's progress",
        description="Fetch a tracker's /stats.json and show each swarm and its peers.",
    )
    parser.add_argument(
        "tracker",
        nargs="?",
        default=DEFAULT_TRACKER,
        metavar="TRACKER_URL",
        help=f"tracker base or announce URL (default {DEFAULT_TRACKER})",
    )
    parser.add_argument(
        "--watch",
        nargs="?",
        type=_positive,
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until interrupted",
    )
    parser.add_argument(
        "--stall",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="flag downloading peers without progress for SECONDS "
        "(default: the tracker's own stall flag)",
    )
    parser.add_argument("--all", action="store_true", help="list every peer, not the first 40")
    parser.add_argument("--json", action="store_true", help="print the raw /stats.json")
    parser.add_argument(
        "--timeout", type=_positive, default=FETCH_TIMEOUT, help="HTTP timeout in seconds"
    )
    parser.set_defaults(handler=run)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    url = stats_url(args.tracker)
    max_peers = None if args.all else 40
    color = sys.stdout.isatty()
    if args.watch is None:
        doc, body = fetch_stats(url, timeout=args.timeout)
        if args.json:
            sys.stdout.write(body.decode("utf-8").rstrip("\n") + "\n")
        else:
            _print(render_status(doc, stall=args.stall, max_peers=max_peers, color=color))
        return 0
    try:
        while True:
            try:
                doc, body = fetch_stats(url, timeout=args.timeout)
                if args.json:
                    lines: Sequence[str] = [body.decode("utf-8").rstrip("\n")]
                else:
                    lines = render_status(doc, stall=args.stall, max_peers=max_peers, color=color)
            except TrackerError as exc:
                lines = [f"roost: {exc} (retrying every {args.watch:g}s)"]
            if color:
                sys.stdout.write("\x1b[H\x1b[2J")
            else:
                sys.stdout.write("\n")
            _print([time.strftime("%H:%M:%S") + f"  {url}", *lines])
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _print(lines: Sequence[str]) -> None:
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()

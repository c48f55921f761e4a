"""The tracker's state file (Murder's ``--dfile``): swarms survive a restart.

JSON, written atomically (temporary file in the same directory, fsync,
``os.replace``) with mode 0600, since it holds announce tokens. It keeps,
per swarm: tag, token, size, allow-list membership, completed count and the
live peers with what they last reported. Peers keep their ``last_seen``, so
those that went away while the tracker was down expire on the first sweep.

``load_state`` raises ``StateFileError`` (one line naming the file and what
is wrong) for a file that is not roost tracker state; a missing file is an
empty state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from roost._fs import atomic_write
from roost._parse import load_json
from roost.errors import StateFileError
from roost.tracker.swarm import MAX_CLIENT_INTERVAL, Peer, Registry, keep_for

__all__ = ["StateFileError", "dump_state", "load_state", "restore_state", "save_state"]

FORMAT = "roost-tracker-state"
VERSION = 1


def _peer_dict(p: Peer) -> dict[str, Any]:
    return {
        "peer_id": p.peer_id.hex(),
        "ip": p.ip,
        "origin": p.origin,
        "port": p.port,
        "left": p.left,
        "uploaded": p.uploaded,
        "downloaded": p.downloaded,
        "first_seen": p.first_seen,
        "last_seen": p.last_seen,
        "last_progress": p.last_progress,
        "host": p.host,
        "dc": p.dc,
        "rack": p.rack,
        "announced_dc": p.announced_dc,
        "announced_rack": p.announced_rack,
        "key": p.key.hex() if p.key is not None else None,
        "completed": p.completed,
        "interval": p.interval,
        "events": [[ts, ev] for ts, ev in p.events],
    }


def dump_state(registry: Registry, now: float) -> dict[str, Any]:
    swarms = []
    for swarm in registry.swarms.values():
        swarms.append(
            {
                "info_hash": swarm.info_hash_hex,
                "tag": swarm.tag,
                "token": swarm.token,
                "size": swarm.size,
                "registered": swarm.registered,
                "completed": swarm.completed,
                "created": swarm.created,
                "peers": [
                    _peer_dict(p) for t in (swarm.seeders, swarm.leechers) for p in t.values()
                ],
            }
        )
    return {"format": FORMAT, "version": VERSION, "saved": now, "swarms": swarms}


def save_state(registry: Registry, path: Path, now: float) -> None:
    """Write the state file atomically; raise ``StateFileError`` if it cannot."""
    data = json.dumps(dump_state(registry, now), separators=(",", ":")).encode()
    path = Path(path)
    try:
        atomic_write(path, data, mode=0o600)  # it holds announce tokens
    except OSError as exc:
        raise StateFileError(path, f"cannot write: {exc.strerror or exc}") from exc


def load_state(path: Path) -> dict[str, Any] | None:
    """The parsed state file, or None if it does not exist."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        data = load_json(raw, str(path), StateFileError, max_bytes=1 << 28)  # ~2M peers
    except StateFileError as exc:
        reason = f"corrupt ({exc.reason}); move it away to start empty"
        raise StateFileError(path, reason) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateFileError(path, "not a roost tracker state file")
    if data.get("version") != VERSION:
        raise StateFileError(path, f"unsupported version {data.get('version')!r}")
    return data


def restore_state(registry: Registry, data: dict[str, Any], path: Path) -> int:
    """Load swarms from ``data`` into ``registry``; return the number of peers."""
    count = 0
    try:
        for s in data["swarms"]:
            info_hash = bytes.fromhex(s["info_hash"])
            if len(info_hash) != 20:
                raise ValueError(f"info-hash {s['info_hash']!r} is not 20 bytes")
            swarm = registry.allow(
                info_hash,
                float(s.get("created", registry.started)),
                tag=s.get("tag"),
                token=s.get("token"),
                size=s.get("size"),
            )
            if not s.get("registered", False):
                swarm.registered = False
                registry.unknown += 1
            swarm.completed = int(s.get("completed", 0))
            for p in s.get("peers", []):
                ip = str(p["ip"])
                origin = str(p.get("origin") or ip)
                peer = Peer(bytes.fromhex(p["peer_id"]), ip, int(p["port"]), 0.0, origin)
                peer.left = int(p["left"])
                peer.uploaded = peer.prev_uploaded = int(p["uploaded"])
                peer.downloaded = peer.prev_downloaded = int(p["downloaded"])
                peer.first_seen = float(p["first_seen"])
                peer.last_seen = peer.prev_seen = float(p["last_seen"])
                peer.last_progress = float(p["last_progress"])
                peer.host, peer.dc, peer.rack = p.get("host"), p.get("dc"), p.get("rack")
                peer.announced_dc = p.get("announced_dc")
                peer.announced_rack = p.get("announced_rack")
                peer.key = bytes.fromhex(p["key"]) if p.get("key") else None
                peer.completed = bool(p.get("completed", False))
                peer.interval = min(float(p.get("interval", 0.0)), MAX_CLIENT_INTERVAL)
                peer.timeout = keep_for(peer, registry.config)
                for ts, ev in p.get("events", []):
                    peer.events.append((float(ts), str(ev)))
                if peer.left == 0:
                    peer.state = "seeding"
                swarm.add(peer)
                count += 1
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise StateFileError(path, f"corrupt ({type(exc).__name__}: {exc})") from exc
    return count

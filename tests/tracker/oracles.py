"""Test oracles for the tracker: plain, slow versions of what it does fast.

* ``parse_announce_by_the_book``: the announce parser by the book, for the
  tracker's one parser (roost.tracker.protocol.parse_announce): every
  parameter through ``parse_query``'s lists, each field read with "exactly
  once" checked, in the order the tracker checks them.
* ``build_stats``: the /stats.json document as a plain dict, built in one
  go, for the stepped writer with its row cache
  (roost.tracker.stats.stats_json_steps).
* ``choose_peers``: the handout policy over plain sequences, through a
  throw-away ``HandoutIndex`` (a tracker keeps one per swarm).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypeVar

from roost.errors import ProtocolError
from roost.tracker import protocol as proto
from roost.tracker.handout import Candidate, HandoutIndex, LocalityPolicy
from roost.tracker.stats import (
    peer_progress,
    peer_rates,
    stall_after_of,
    swarm_size,
    tracker_head,
)
from roost.tracker.swarm import Peer, Registry, Swarm

C = TypeVar("C", bound=Candidate)


def _one(params: dict[bytes, list[bytes]], name: bytes) -> bytes | None:
    values = params.get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise ProtocolError(f"parameter {name.decode()} given more than once")
    return values[0]


def _int(params: dict[bytes, list[bytes]], name: bytes, default: int | None) -> int | None:
    raw = _one(params, name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 20:
        raise ProtocolError(f"parameter {name.decode()} is not a non-negative integer")
    return int(raw)


def _label(params: dict[bytes, list[bytes]], name: str) -> str | None:
    return proto._label(_one(params, name.encode()), name)


def parse_announce_by_the_book(query: bytes) -> proto.Announce:
    params = proto.parse_query(query)
    info_hash = proto._hash20(_one(params, b"info_hash"), "info_hash")
    peer_id = proto._hash20(_one(params, b"peer_id"), "peer_id")
    port = _int(params, b"port", None)
    if port is None:
        raise ProtocolError("missing port")
    if not 0 < port < 65536:
        raise ProtocolError(f"port {port} out of range")
    uploaded = _int(params, b"uploaded", 0) or 0
    downloaded = _int(params, b"downloaded", 0) or 0
    left = _int(params, b"left", None)
    if left is None:
        raise ProtocolError("missing left")
    event_b = _one(params, b"event") or b""
    try:
        event = event_b.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError("unknown event") from exc
    if event == "empty":
        event = ""
    if event not in proto.EVENTS:
        raise ProtocolError(f"unknown event {event[:20]!r}")
    numwant = _int(params, b"numwant", None)
    compact_b = _one(params, b"compact")
    if compact_b not in (None, b"0", b"1"):
        raise ProtocolError("compact must be 0 or 1")
    no_peer_id_b = _one(params, b"no_peer_id")
    ip = proto._ip(_one(params, b"ip"))
    token_b = _one(params, b"token")
    token: str | None = None
    if token_b is not None:
        try:
            token = token_b.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ProtocolError("token is not ASCII") from exc
    return proto.Announce(
        info_hash=info_hash,
        peer_id=peer_id,
        port=port,
        uploaded=uploaded,
        downloaded=downloaded,
        left=left,
        event=event,
        numwant=numwant,
        compact=compact_b != b"0",
        no_peer_id=no_peer_id_b not in (None, b"0"),
        ip=ip,
        key=_one(params, b"key"),
        token=token,
        host=_label(params, "host"),
        dc=_label(params, "dc"),
        rack=_label(params, "rack"),
        role=proto._role(_one(params, b"role")),
    )


# /stats.json as one plain dict -------------------------------------------------


def _peer_doc(
    peer: Peer, size: int | None, now: float, interval: float, stall_after: float
) -> dict[str, Any]:
    progress = peer_progress(peer, size)
    rate_down, rate_up = peer_rates(peer, now, interval)
    return {
        "peer_id": peer.peer_id.hex(),
        "address": peer.ip,
        "port": peer.port,
        "host": peer.host,
        "datacenter": peer.dc,
        "rack": peer.rack,
        "left": peer.left,
        "uploaded": peer.uploaded,
        "downloaded": peer.downloaded,
        "progress": progress,
        "state": peer.state,
        "first_seen": round(peer.first_seen, 3),
        "last_seen": round(peer.last_seen, 3),
        "last_progress": round(peer.last_progress, 3),
        "stalled": peer.state == "downloading" and now - peer.last_progress >= stall_after,
        "rate_down": round(rate_down, 1),
        "rate_up": round(rate_up, 1),
    }


def _swarm_doc(swarm: Swarm, now: float, interval: float, stall_after: float) -> dict[str, Any]:
    size = swarm_size(swarm)
    peers = [_peer_doc(p, size, now, interval, stall_after) for p in swarm.peers()]
    return {
        "info_hash": swarm.info_hash_hex,
        "tag": swarm.tag,
        "seeders": swarm.num_seeders,
        "leechers": swarm.num_leechers,
        "completed": swarm.completed,
        "size": size,
        "rate_down": round(sum(p["rate_down"] for p in peers), 1),
        "rate_up": round(sum(p["rate_up"] for p in peers), 1),
        "stalled": sum(1 for p in peers if p["stalled"]),
        "peers": peers,
    }


def build_stats(
    registry: Registry, now: float, *, stall_after: float | None = None
) -> dict[str, Any]:
    """The /stats.json document (a plain dict) of ``registry`` at ``now``.

    Swarms sorted by tag then info-hash; peers by host label then address.
    Pure: reads the registry, changes nothing, raises nothing of its own.
    """
    cfg = registry.config
    interval = float(cfg.interval)
    stall = stall_after_of(registry, stall_after)
    swarms = sorted(registry.swarms.values(), key=lambda s: (s.tag or "", s.info_hash_hex))
    docs = []
    for swarm in swarms:
        doc = _swarm_doc(swarm, now, interval, stall)
        doc["peers"].sort(key=lambda p: (p["host"] or "", p["address"], p["port"]))
        docs.append(doc)
    return {"tracker": tracker_head(registry, now, stall), "swarms": docs}


# The handout over plain sequences ---------------------------------------------


def choose_peers(
    requester: Candidate,
    requester_is_seeder: bool,
    seeders: Sequence[C],
    leechers: Sequence[C],
    numwant: int,
    rng: random.Random,
    policy: LocalityPolicy | None = None,
) -> list[C]:
    """Up to ``numwant`` peers for ``requester``, best first.

    ``seeders`` and ``leechers`` may contain the requester; it is skipped.
    Builds a ``HandoutIndex`` (O(swarm)): a tracker keeps one per swarm.
    """
    index: HandoutIndex[C] = HandoutIndex(policy or LocalityPolicy())
    for p in seeders:
        index.place(p, True)
    for p in leechers:
        index.place(p, False)
    if requester.peer_id not in index:
        index.place(requester, requester_is_seeder)  # type: ignore[arg-type]
    return index.choose(requester, requester_is_seeder, numwant, rng)

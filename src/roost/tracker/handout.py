"""Which peers the tracker hands to an announcing peer: a pure policy.

Theory of operation
-------------------
A deploy swarm starts with one or a few seeders and many empty leechers, and
ends when every leecher holds every piece. Two things matter:

1. **Seeders first.** A leecher is handed seeders before other leechers, so
   the data gets out of the origin at once; a seeder is handed leechers only
   (two seeders have nothing to trade).
2. **Locality.** When peers carry labels (datacenter ``dc``, ``rack``),
   candidates are ranked in tiers: same rack, same datacenter, unlabelled,
   other datacenters. Seeders come first inside each tier. Pure locality
   would split the swarm into islands, so a few slots are *reserved* for
   links leaving the tier: at least ``cross_rack_min`` peers from other racks
   of the same datacenter, and ``cross_dc_min`` peers from other
   datacenters. Only ``dc_gateways_per_rack`` peers of each rack talk to
   other datacenters at all: the *gateways*, the rack's earliest arrivals
   (``first_seen``, when candidates carry it; ties and candidates without it
   go by the lowest CRC-32 of the peer id). A newcomer never displaces a
   gateway, so the set is stable while its members stay and re-chosen only
   when one leaves: ranking by CRC alone made every arrival with a lower CRC
   a new gateway while the old ones kept their cross-datacenter connections,
   and in the lab (bench/locality.py, 8+8 hosts joining within seconds)
   ``dc_gateways_per_rack=1`` then carried 1.9 copies across instead of ~1.
   A gateway is handed other-datacenter gateways only; everyone else never
   sees another datacenter, so slow inter-datacenter links carry each piece
   a few times instead of once per host.

The requester itself is never handed out. The result is deterministic for
a given ``random.Random``; the function does no I/O and keeps no state.
Cost is linear in the swarm's size when labels are in play, and a sample
of ``numwant`` otherwise.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

__all__ = ["Candidate", "LocalityPolicy", "choose_peers", "dc_gateways"]


class Candidate(Protocol):
    peer_id: bytes
    dc: str | None
    rack: str | None


C = TypeVar("C", bound=Candidate)


@dataclass(frozen=True, slots=True)
class LocalityPolicy:
    """How strongly the handout prefers nearby peers.

    ``enabled=False`` ignores labels altogether (seeders first, then random).
    """

    enabled: bool = True
    cross_rack_min: int = 2
    cross_dc_min: int = 1
    dc_gateways_per_rack: int = 2

    def __post_init__(self) -> None:
        for name in ("cross_rack_min", "cross_dc_min", "dc_gateways_per_rack"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


def _rank(p: Candidate) -> tuple[float, int, bytes]:
    first = getattr(p, "first_seen", None)
    return (
        first if isinstance(first, (int, float)) else float("inf"),
        zlib.crc32(p.peer_id),
        p.peer_id,
    )


def dc_gateways(peers: Sequence[Candidate], per_rack: int) -> set[bytes]:
    """Peer ids allowed to talk to other datacenters: ``per_rack`` per (dc, rack).

    The earliest arrivals of each rack (``first_seen``, an optional attribute
    of the candidates), ties broken by CRC-32 of the peer id. Unlabelled
    peers (no ``dc``) are not restricted and not listed.
    """
    racks: dict[tuple[str, str | None], dict[bytes, Candidate]] = {}
    for p in peers:
        if p.dc is not None:
            racks.setdefault((p.dc, p.rack), {}).setdefault(p.peer_id, p)
    chosen: set[bytes] = set()
    for members in racks.values():
        ranked = sorted(members.values(), key=_rank)
        chosen.update(p.peer_id for p in ranked[:per_rack])
    return chosen


def _pick(pool: Sequence[C], k: int, rng: random.Random, skip: set[bytes]) -> list[C]:
    """Up to ``k`` random members of ``pool`` whose ids are not in ``skip``.

    Large pools draw random indices (one C call each) instead of shuffling or
    ``random.sample`` (Python-level per item): this is the announce hot path.
    """
    n = len(pool)
    if k <= 0 or n == 0:
        return []
    if n > 4 * (k + len(skip)):
        # getrandbits + rejection: a third cheaper than int(random() * n).
        bits, width = rng.getrandbits, n.bit_length()
        seen: set[int] = set()
        out: list[C] = []
        for _ in range(16 * k + 32):  # over half the draws land below n
            i = bits(width)
            if i >= n or i in seen:
                continue
            seen.add(i)
            p = pool[i]
            if p.peer_id not in skip:
                out.append(p)
                if len(out) == k:
                    return out
        # Unlucky streak: fall through to the exhaustive way.
    picked = [p for p in pool if p.peer_id not in skip]
    m = len(picked)
    rand = rng.random
    for i in range(min(k, m - 1)):  # partial Fisher-Yates: k draws, not m
        j = i + int(rand() * (m - i))
        picked[i], picked[j] = picked[j], picked[i]
    return picked[:k]


def choose_peers(
    requester: Candidate,
    requester_is_seeder: bool,
    seeders: Sequence[C],
    leechers: Sequence[C],
    numwant: int,
    rng: random.Random,
    policy: LocalityPolicy = LocalityPolicy(),
) -> list[C]:
    """Up to ``numwant`` peers for ``requester``, best first.

    ``seeders`` and ``leechers`` may contain the requester; it is skipped.
    """
    if numwant <= 0:
        return []
    me = requester.peer_id
    pool_s: Sequence[C] = () if requester_is_seeder else seeders
    if not policy.enabled or requester.dc is None:
        skip = {me}
        picked = _pick(pool_s, numwant, rng, skip)
        if len(picked) < numwant:
            picked += _pick(leechers, numwant - len(picked), rng, skip)
        return picked

    # Tiers: 0 same rack, 1 same dc, 2 unlabelled, 3 other dc; seeders, leechers.
    tiers: list[tuple[list[C], list[C]]] = [([], []) for _ in range(4)]
    dc, rack = requester.dc, requester.rack
    for idx, pool in ((0, pool_s), (1, leechers)):
        for p in pool:
            if p.peer_id == me:
                continue
            if p.dc is None:
                tier = 2
            elif p.dc != dc:
                tier = 3
            elif rack is not None and p.rack == rack:
                tier = 0
            else:
                tier = 1
            tiers[tier][idx].append(p)

    other_s, other_l = tiers[3]
    if other_s or other_l:
        everyone: list[Candidate] = [*seeders, *leechers, requester]
        gateways = dc_gateways(everyone, policy.dc_gateways_per_rack)
        if me in gateways:
            other_s[:] = [p for p in other_s if p.peer_id in gateways]
            other_l[:] = [p for p in other_l if p.peer_id in gateways]
        else:
            other_s.clear()
            other_l.clear()

    out: list[C] = []
    taken: set[bytes] = set()

    def take(tier: int, k: int) -> None:
        for pool in tiers[tier]:  # seeders, then leechers
            if k <= 0:
                return
            got = _pick(pool, k, rng, taken)
            out.extend(got)
            taken.update(p.peer_id for p in got)
            k -= len(got)

    take(3, min(policy.cross_dc_min, numwant))
    take(1, min(policy.cross_rack_min, numwant - len(out)))
    for tier in range(4):
        take(tier, numwant - len(out))
    return out

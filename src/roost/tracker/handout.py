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
a given ``random.Random`` and the same order of changes; nothing here does I/O.

Cost: a ``HandoutIndex`` per swarm holds the peers by role, datacenter and
rack, and each rack's gateways, maintained as peers join, move, relabel and
leave (O(1) each; O(rack) when a gateway leaves). A handout then draws from
the bags of each tier instead of scanning the swarm: O(numwant + racks of
the requester's datacenter), plus O(racks) for a gateway's cross-datacenter
tier. Scanning every peer per announce capped a 2,000-peer labelled swarm
at ~870 announces/s (bench/NOTES.md). tests/tracker/oracles.py has the
same policy over plain sequences (``choose_peers``, a throw-away index).
"""

from __future__ import annotations

import heapq
import random
import zlib
from bisect import bisect_right, insort
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Generic, Protocol, TypeVar

__all__ = ["Candidate", "HandoutIndex", "LocalityPolicy", "dc_gateways"]


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


def _pick_union(
    pools: Sequence[Sequence[C]], k: int, rng: random.Random, skip: set[bytes]
) -> list[C]:
    """``_pick`` over the concatenation of ``pools``, without building it when large.

    A draw is an index into the concatenation, mapped to its pool by bisection
    over the running lengths: each member of the union is equally likely, as
    if the pools were one list.
    """
    pools = [p for p in pools if p]
    if k <= 0 or not pools:
        return []
    if len(pools) == 1:
        return _pick(pools[0], k, rng, skip)
    ends = list(accumulate(map(len, pools)))
    n = ends[-1]
    if n > 4 * (k + len(skip)):
        bits, width = rng.getrandbits, n.bit_length()
        seen: set[int] = set()
        out: list[C] = []
        for _ in range(16 * k + 32):
            i = bits(width)
            if i >= n or i in seen:
                continue
            seen.add(i)
            j = bisect_right(ends, i)
            pool = pools[j]
            p = pool[i - ends[j] + len(pool)]
            if p.peer_id not in skip:
                out.append(p)
                if len(out) == k:
                    return out
    return _pick([p for pool in pools for p in pool], k, rng, skip)


SEEDING, LEECHING = 0, 1


class _Bag(Generic[C]):
    """Peers in a list (random draws by index) with O(1) add and remove.

    Removal moves the last member into the hole: the order is arbitrary,
    which random draws do not mind.
    """

    __slots__ = ("items", "pos")

    def __init__(self) -> None:
        self.items: list[C] = []
        self.pos: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, p: C) -> None:
        self.pos[p.peer_id] = len(self.items)
        self.items.append(p)

    def remove(self, peer_id: bytes) -> None:
        i = self.pos.pop(peer_id)
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last.peer_id] = i


class _Rack(Generic[C]):
    """The active members of one labelled ``(dc, rack)`` and its gateways.

    The gateways (``per_rack`` lowest ``_rank``) are kept up to date on
    arrival (a newcomer enters only if it ranks before the last gateway) and
    recomputed, O(members), only after a gateway left.
    """

    __slots__ = ("_gw", "_stale", "members", "per_rack")

    def __init__(self, per_rack: int) -> None:
        self.members: dict[bytes, C] = {}
        self.per_rack = per_rack
        self._gw: list[tuple[float, int, bytes]] = []  # ranks, lowest first
        self._stale = False

    def add(self, p: C) -> None:
        self.members[p.peer_id] = p
        if self._stale or self.per_rack == 0:
            return
        r = _rank(p)
        if len(self._gw) < self.per_rack:
            insort(self._gw, r)
        elif r < self._gw[-1]:
            insort(self._gw, r)
            self._gw.pop()

    def remove(self, peer_id: bytes) -> None:
        del self.members[peer_id]
        if not self._stale and any(g[2] == peer_id for g in self._gw):
            self._stale = True

    def gateways(self) -> list[bytes]:
        if self._stale:
            self._gw = heapq.nsmallest(self.per_rack, map(_rank, self.members.values()))
            self._stale = False
        return [g[2] for g in self._gw]


class HandoutIndex(Generic[C]):
    """One swarm's active peers, indexed so that ``choose`` costs O(numwant).

    Kept by the swarm's owner: ``place(peer, seeding)`` after every announce
    that keeps a peer in the swarm (it joins, moves between seeders and
    leechers, or changes labels; unchanged, it costs a dict look-up),
    ``discard(peer_id)`` when it leaves or expires. Peers are held by role
    (seeding or not), then by ``dc`` and ``rack``: tier 0 is one bag, tier 1
    the other racks' bags of the requester's datacenter, tier 2 the
    unlabelled bags; tier 3 is gathered from the other datacenters' gateways
    (a few per rack), and only for a requester that is a gateway itself.
    A peer's ``first_seen``, when it has one, must not change while placed.
    """

    def __init__(self, policy: LocalityPolicy = LocalityPolicy()) -> None:
        self.policy = policy
        self._where: dict[bytes, tuple[int, str | None, str | None, C]] = {}
        self._all: tuple[_Bag[C], _Bag[C]] = (_Bag(), _Bag())
        # role -> dc -> rack -> bag (dc None: unlabelled, whatever the rack)
        self._bags: tuple[dict[str | None, dict[str | None, _Bag[C]]], ...] = ({}, {})
        self._racks: dict[tuple[str, str | None], _Rack[C]] = {}  # labelled peers only

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._where

    def place(self, p: C, seeding: bool) -> None:
        """Add ``p``, or move it to its current role and labels."""
        role = SEEDING if seeding else LEECHING
        pid = p.peer_id
        dc, rack = (p.dc, p.rack) if self.policy.enabled else (None, None)
        where = self._where.get(pid)
        same_rack = where is not None and where[1] == dc and where[2] == rack and where[3] is p
        if where is not None:
            if same_rack and where[0] == role:
                return
            self.discard(pid, keep_rack=same_rack)
        self._where[pid] = (role, dc, rack, p)
        self._all[role].add(p)
        racks = self._bags[role].get(dc)
        if racks is None:
            racks = self._bags[role][dc] = {}
        bag = racks.get(rack)
        if bag is None:
            bag = racks[rack] = _Bag()
        bag.add(p)
        if dc is not None and not same_rack:
            r = self._racks.get((dc, rack))
            if r is None:
                r = self._racks[(dc, rack)] = _Rack(self.policy.dc_gateways_per_rack)
            r.add(p)

    def discard(self, peer_id: bytes, *, keep_rack: bool = False) -> None:
        """Forget a peer (no error if absent)."""
        where = self._where.pop(peer_id, None)
        if where is None:
            return
        role, dc, rack, _ = where
        self._all[role].remove(peer_id)
        racks = self._bags[role][dc]
        bag = racks[rack]
        bag.remove(peer_id)
        if not bag:
            del racks[rack]
            if not racks:
                del self._bags[role][dc]
        if dc is not None and not keep_rack:
            r = self._racks[(dc, rack)]
            r.remove(peer_id)
            if not r.members:
                del self._racks[(dc, rack)]

    def count(self, seeding: bool) -> int:
        return len(self._all[SEEDING if seeding else LEECHING])

    def gateways(self) -> set[bytes]:
        """Every gateway's peer id (``dc_gateways`` of the placed peers)."""
        return {pid for r in self._racks.values() for pid in r.gateways()}

    def choose(
        self, requester: Candidate, requester_is_seeder: bool, numwant: int, rng: random.Random
    ) -> list[C]:
        """Up to ``numwant`` peers for ``requester`` (placed already), best first."""
        if numwant <= 0:
            return []
        me = requester.peer_id
        roles = (LEECHING,) if requester_is_seeder else (SEEDING, LEECHING)
        policy = self.policy
        if not policy.enabled or requester.dc is None:
            skip = {me}
            picked: list[C] = []
            for role in roles:
                picked += _pick(self._all[role].items, numwant - len(picked), rng, skip)
            return picked

        dc, rack = requester.dc, requester.rack
        cross: tuple[list[C], list[C]] = ([], [])  # tier 3, by role
        own = self._racks.get((dc, rack))
        if own is not None and me in own.gateways():
            where = self._where
            for (other, _), r in self._racks.items():
                if other != dc:
                    for pid in r.gateways():
                        cross[where[pid][0]].append(r.members[pid])

        def pools(tier: int, role: int) -> list[Sequence[C]]:
            by_dc = self._bags[role]
            if tier == 0:
                bag = by_dc.get(dc, {}).get(rack) if rack is not None else None
                return [bag.items] if bag is not None else []
            if tier == 1:
                return [b.items for r, b in by_dc.get(dc, {}).items() if rack is None or r != rack]
            if tier == 2:
                return [b.items for b in by_dc.get(None, {}).values()]
            return [cross[role]]

        out: list[C] = []
        taken: set[bytes] = {me}

        def take(tier: int, k: int) -> None:
            for role in roles:  # seeders, then leechers
                if k <= 0:
                    return
                got = _pick_union(pools(tier, role), k, rng, taken)
                out.extend(got)
                taken.update(p.peer_id for p in got)
                k -= len(got)

        take(3, min(policy.cross_dc_min, numwant))
        take(1, min(policy.cross_rack_min, numwant - len(out)))
        for tier in range(4):
            take(tier, numwant - len(out))
        return out

"""The indexed handout against the plain scan it replaced, through churn; and its cost."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from roost.tracker import TrackerConfig
from roost.tracker.handout import HandoutIndex, LocalityPolicy, _pick, dc_gateways
from roost.tracker.protocol import Announce
from roost.tracker.swarm import Registry


@dataclass
class P:
    peer_id: bytes
    dc: str | None
    rack: str | None
    first_seen: float


def scan(
    me: P, me_seeds: bool, seeders: Sequence[P], leechers: Sequence[P], numwant: int,
    rng: random.Random, policy: LocalityPolicy,
) -> list[P]:  # fmt: skip
    """The scanning handout of 3a0e9d7 (O(swarm) per call), as the oracle."""
    pool_s: Sequence[P] = () if me_seeds else seeders
    if not policy.enabled or me.dc is None:
        got = _pick(pool_s, numwant, rng, {me.peer_id})
        return got + _pick(leechers, numwant - len(got), rng, {me.peer_id})
    tiers: list[tuple[list[P], list[P]]] = [([], []) for _ in range(4)]
    for idx, pool in ((0, pool_s), (1, leechers)):
        for p in pool:
            if p.peer_id == me.peer_id:
                continue
            if p.dc is None:
                tier = 2
            elif p.dc != me.dc:
                tier = 3
            elif me.rack is not None and p.rack == me.rack:
                tier = 0
            else:
                tier = 1
            tiers[tier][idx].append(p)
    gw = dc_gateways([*seeders, *leechers, me], policy.dc_gateways_per_rack)
    for pool in tiers[3]:
        pool[:] = [p for p in pool if p.peer_id in gw] if me.peer_id in gw else []
    out: list[P] = []
    taken: set[bytes] = set()

    def take(tier: int, k: int) -> None:
        for pool in tiers[tier]:
            got = _pick(pool, k, rng, taken) if k > 0 else []
            out.extend(got)
            taken.update(p.peer_id for p in got)
            k -= len(got)

    take(3, min(policy.cross_dc_min, numwant))
    take(1, min(policy.cross_rack_min, numwant - len(out)))
    for tier in range(4):
        take(tier, numwant - len(out))
    return out


def shape(
    me: P, seeders: set[bytes], got: list[P], policy: LocalityPolicy
) -> list[tuple[str, bool]]:
    """Each handed-out peer as (tier, seeding): what the policy decides, not the dice."""
    out = []
    for p in got:
        if not policy.enabled or me.dc is None:
            tier = "any"  # labels ignored: a random mix
        elif p.dc is None:
            tier = "unlabelled"
        elif p.dc != me.dc:
            tier = "other-dc"
        elif me.rack is not None and p.rack == me.rack:
            tier = "rack"
        else:
            tier = "dc"
        out.append((tier, p.peer_id in seeders))
    return out


LABELS = [("dc1", "r1"), ("dc1", "r2"), ("dc1", None), ("dc2", "r1"), ("dc3", "r7"), (None, None),
          (None, "r1")]  # fmt: skip


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "policy",
    [
        LocalityPolicy(),
        LocalityPolicy(cross_rack_min=1, cross_dc_min=2, dc_gateways_per_rack=1),
        LocalityPolicy(cross_rack_min=0, cross_dc_min=0, dc_gateways_per_rack=0),
        LocalityPolicy(enabled=False),
    ],
)
def test_index_matches_the_scan_through_churn(seed: int, policy: LocalityPolicy) -> None:
    rng = random.Random(seed)
    index: HandoutIndex[P] = HandoutIndex(policy)
    active: dict[bytes, tuple[P, bool]] = {}  # insertion order = the scan's list order
    for step in range(400):
        op = rng.random()
        if op < 0.45 or not active:  # join (some with equal first_seen: CRC decides)
            pid = f"p{step}".encode().ljust(20, b".")
            dc, rack = rng.choice(LABELS)
            p = P(pid, dc, rack, float(step // 3))
            active[pid] = (p, rng.random() < 0.3)
        elif op < 0.65:  # leave (gateways too)
            pid = rng.choice(list(active))
            del active[pid]
            index.discard(pid)
            continue
        elif op < 0.8:  # complete, or start over
            pid = rng.choice(list(active))
            p, seeding = active[pid]
            active[pid] = (p, not seeding)
        else:  # new labels
            pid = rng.choice(list(active))
            p, seeding = active[pid]
            p.dc, p.rack = rng.choice(LABELS)
        index.place(*active[pid])
        assert len(index) == len(active)
        if step % 10:
            continue
        everyone = [p for p, _ in active.values()]
        if policy.enabled:
            assert index.gateways() == dc_gateways(everyone, policy.dc_gateways_per_rack)
        seeders = [p for p, s in active.values() if s]
        leechers = [p for p, s in active.values() if not s]
        seeder_ids = {p.peer_id for p in seeders}
        for me, me_seeds in rng.sample(list(active.values()), min(8, len(active))):
            for numwant in (1, 3, 7, 1000):
                got = index.choose(me, me_seeds, numwant, random.Random(step))
                want = scan(me, me_seeds, seeders, leechers, numwant, random.Random(step), policy)
                assert shape(me, seeder_ids, got, policy) == shape(me, seeder_ids, want, policy)
                assert len({p.peer_id for p in got}) == len(got)
                assert me.peer_id not in {p.peer_id for p in got}
                if numwant == 1000:
                    assert {p.peer_id for p in got} == {p.peer_id for p in want}


class Counted:
    """A candidate that counts how often the handout looks at it."""

    reads = 0

    def __init__(self, n: int, dc: str, rack: str) -> None:
        self._id = f"c{n}".encode().ljust(20, b".")
        self.dc, self.rack, self.first_seen = dc, rack, float(n)

    @property
    def peer_id(self) -> bytes:
        Counted.reads += 1
        return self._id


def test_a_handout_looks_at_about_numwant_peers_not_the_swarm() -> None:
    policy = LocalityPolicy()
    index: HandoutIndex[Counted] = HandoutIndex(policy)
    peers = [Counted(n, f"dc{n % 3}", f"r{n % 40}") for n in range(20_000)]
    for n, p in enumerate(peers):
        index.place(p, n % 2 == 0)
    gateways = index.gateways()
    rng = random.Random(0)
    for me in peers[:200]:
        Counted.reads = 0
        got = index.choose(me, False, 50, rng)
        assert len(got) == 50
        # ~166 peers per rack and role: the rack tier is a draw, never a scan
        assert Counted.reads < (2_000 if me._id in gateways else 600), Counted.reads
        # the policy held: 2 cross-rack links (+1 cross-dc for gateways), the rest from the rack
        same_rack = sum(p.rack == me.rack and p.dc == me.dc for p in got)
        assert same_rack == (47 if me._id in gateways else 48)


def ann(n: int, **over: object) -> Announce:
    base = Announce(
        info_hash=b"\x11" * 20, peer_id=f"peer-{n:015d}".encode(), port=6000 + n, uploaded=0,
        downloaded=0, left=100, event="started", numwant=1000, compact=True, no_peer_id=False,
        ip=None, key=None, token=None, host=None, dc=None, rack=None,
    )  # fmt: skip
    return dataclasses.replace(base, **over)  # type: ignore[arg-type]


def test_registry_keeps_its_index_in_step_with_the_tables() -> None:
    """Join, complete, relabel, stop, expire, a change behind its back: same answers as a scan."""
    policy = LocalityPolicy(dc_gateways_per_rack=1)
    r = Registry(TrackerConfig(port=0, interval=5, peer_timeout=10, locality=policy), 0.0)
    rng = random.Random(7)
    now = 1000.0
    for step in range(300):
        n = rng.randrange(60)
        dc, rack = rng.choice(LABELS)
        event = rng.choice(["", "", "started", "completed", "stopped"])
        left = rng.choice([0, 50, 100])
        now += rng.choice([0.0, 0.5, 3.0])
        r.announce(ann(n, dc=dc, rack=rack, event=event, left=left), "127.0.0.1", now)
        if step % 50 == 49:
            r.expire(now)
        swarm = r.swarms.get(b"\x11" * 20)
        if swarm is None or not swarm.leechers:
            continue
        if step == 150:  # someone edits the tables directly: the index catches up
            moved = next(iter(swarm.leechers.values()))
            del swarm.leechers[moved.peer_id]
            moved.left = 0
            swarm.seeders[moved.peer_id] = moved
        active = [*swarm.seeders.values(), *swarm.leechers.values()]
        me = next(iter(swarm.leechers.values()))
        got, _, _ = r.announce(ann(int(me.peer_id[5:]), event="", left=me.left), "127.0.0.1", now)
        want = scan(me, False, list(swarm.seeders.values()), list(swarm.leechers.values()), 1000,
                    random.Random(0), policy)  # fmt: skip
        assert {p.peer_id for p in got} == {p.peer_id for p in want}
        seeder_ids = set(swarm.seeders)
        assert shape(me, seeder_ids, got, policy) == shape(me, seeder_ids, want, policy)  # type: ignore[arg-type]
        assert swarm.index.gateways() == dc_gateways(active, 1)

"""Tables for the pure peer-handout policy: seeders first, never self, locality."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from roost.tracker.handout import LocalityPolicy, dc_gateways
from tests.tracker.oracles import choose_peers


@dataclass(frozen=True)
class P:
    name: str
    dc: str | None = None
    rack: str | None = None

    @property
    def peer_id(self) -> bytes:
        return self.name.encode().ljust(20, b".")


def names(peers: list[P]) -> list[str]:
    return [p.name for p in peers]


def fleet(spec: str) -> list[P]:
    """'dc1/r1:3 dc1/r2:2' -> peers named dc1-r1-0 ..."""
    out = []
    for group in spec.split():
        where, n = group.split(":")
        dc, rack = where.split("/")
        out += [P(f"{dc}-{rack}-{i}", dc, rack) for i in range(int(n))]
    return out


# -- no labels: seeders first, never self ------------------------------------

S = [P(f"s{i}") for i in range(3)]
L = [P(f"l{i}") for i in range(6)]


@pytest.mark.parametrize(
    ("who", "is_seeder", "numwant", "expect_seeders", "expect_leechers"),
    [
        (L[0], False, 50, 3, 5),  # everyone but itself
        (L[0], False, 3, 3, 0),  # seeders fill a small handout first
        (L[0], False, 4, 3, 1),
        (S[0], True, 50, 0, 6),  # a seeder gets leechers only
        (S[0], True, 2, 0, 2),
        (L[0], False, 0, 0, 0),
    ],
)
def test_seeders_first_never_self(
    who: P, is_seeder: bool, numwant: int, expect_seeders: int, expect_leechers: int
) -> None:
    for seed in range(20):
        got = choose_peers(who, is_seeder, S, L, numwant, random.Random(seed))
        assert who not in got
        assert len(set(names(got))) == len(got)
        kinds = [p.name[0] for p in got]
        assert kinds.count("s") == expect_seeders
        assert kinds.count("l") == expect_leechers
        assert kinds == sorted(kinds, key=lambda k: k != "s")  # seeders before leechers


def test_deterministic_and_random() -> None:
    leechers = [P(f"l{i}") for i in range(100)]
    a = choose_peers(leechers[0], False, [], leechers, 10, random.Random(1))
    b = choose_peers(leechers[0], False, [], leechers, 10, random.Random(1))
    assert a == b
    seen = Counter()
    for seed in range(200):
        seen.update(names(choose_peers(leechers[0], False, [], leechers, 10, random.Random(seed))))
    assert "l0" not in seen
    assert len(seen) == 99  # every other peer gets handed out sometimes


# -- locality -----------------------------------------------------------------


def tiers_of(me: P, got: list[P]) -> list[str]:
    out = []
    for p in got:
        if p.dc is None:
            out.append("unknown")
        elif p.dc != me.dc:
            out.append("other-dc")
        elif p.rack == me.rack:
            out.append("rack")
        else:
            out.append("dc")
    return out


POL = LocalityPolicy(cross_rack_min=2, cross_dc_min=1, dc_gateways_per_rack=1)


@pytest.mark.parametrize(
    ("spec", "numwant", "policy", "expected"),
    [
        # Plenty in my rack: fill it with rack-mates but keep 2 cross-rack links.
        ("dc1/r1:20 dc1/r2:20", 10, POL, {"rack": 8, "dc": 2}),
        # Small rack: take all of it, then the rest of the datacenter.
        ("dc1/r1:3 dc1/r2:20", 10, POL, {"rack": 2, "dc": 8}),
        # Enough for everyone: all peers, nothing dropped.
        ("dc1/r1:3 dc1/r2:3", 50, POL, {"rack": 2, "dc": 3}),
        # More cross-rack links when asked.
        ("dc1/r1:20 dc1/r2:20", 10, LocalityPolicy(cross_rack_min=5), {"rack": 5, "dc": 5}),
        # Locality off: labels ignored, a random mix.
        ("dc1/r1:3", 50, LocalityPolicy(enabled=False), {"rack": 2}),
    ],
)
def test_locality_tiers(spec: str, numwant: int, policy: LocalityPolicy, expected: dict) -> None:
    peers = fleet(spec)
    me = peers[0]
    for seed in range(10):
        got = choose_peers(me, False, [], peers, numwant, random.Random(seed), policy)
        assert me not in got
        assert dict(Counter(tiers_of(me, got))) == expected


def test_unlabelled_requester_ignores_labels() -> None:
    peers = fleet("dc1/r1:5 dc2/r1:5")
    me = P("anon")
    got = choose_peers(me, False, [], [*peers, me], 50, random.Random(0))
    assert sorted(names(got)) == sorted(names(peers))


def test_unlabelled_candidates_rank_after_own_datacenter() -> None:
    peers = [*fleet("dc1/r1:3 dc1/r2:3"), P("x1"), P("x2")]
    me = peers[0]
    got = choose_peers(me, False, [], peers, 50, random.Random(0), POL)
    t = tiers_of(me, got)
    assert Counter(t) == {"rack": 2, "dc": 3, "unknown": 2}
    assert t.index("unknown") > max(i for i, x in enumerate(t) if x in ("rack", "dc"))


def test_seeders_first_inside_each_tier() -> None:
    peers = fleet("dc1/r1:6 dc1/r2:6")
    seeders = [peers[1], peers[7]]  # one in my rack, one in the other rack
    leechers = [p for p in peers if p not in seeders]
    me = leechers[0]
    got = choose_peers(me, False, seeders, leechers, 50, random.Random(3), POL)
    assert set(names(got)) == set(names(peers)) - {me.name}
    # The cross-rack reserve takes the other rack's seeder first; my rack's seeder
    # leads the rack tier.
    assert got[0] == peers[7]
    assert got[2] == peers[1]


def test_gateways_are_stable_and_per_rack() -> None:
    peers = fleet("dc1/r1:10 dc1/r2:10 dc2/r1:10")
    gw = dc_gateways(peers, 2)
    assert len(gw) == 6
    by_rack = Counter((p.dc, p.rack) for p in peers if p.peer_id in gw)
    assert set(by_rack.values()) == {2}
    assert dc_gateways(list(reversed(peers)), 2) == gw
    assert dc_gateways([P("anon"), *peers[:1]], 2) == {peers[0].peer_id}


@dataclass(frozen=True)
class Seen(P):
    first_seen: float = 0.0


def test_gateways_are_the_earliest_arrivals_and_newcomers_never_displace_them() -> None:
    # arrival order differs from CRC order: CRC alone would re-pick on arrivals
    arrivals = [Seen(f"dc2-r1-{i}", "dc2", "r1", first_seen=100.0 + i) for i in range(8)]
    present: list[P] = []
    ever: set[bytes] = set()
    for p in arrivals:
        present.append(p)
        gw = dc_gateways(present, 2)
        assert gw == {arrivals[0].peer_id, arrivals[1].peer_id} & {q.peer_id for q in present}
        ever |= gw
    assert len(ever) == 2
    # a gateway leaves: the next-oldest takes its place
    assert dc_gateways(present[1:], 2) == {arrivals[1].peer_id, arrivals[2].peer_id}
    # same arrival time: CRC-32 decides, whatever the order given
    tied = [Seen(f"t{i}", "dc1", "r1", first_seen=5.0) for i in range(6)]
    assert dc_gateways(tied, 2) == dc_gateways(list(reversed(tied)), 2)
    assert dc_gateways(tied, 2) == dc_gateways([P(q.name, "dc1", "r1") for q in tied], 2)


@pytest.mark.parametrize("per_rack", [0, 1, 2, 3])
def test_at_most_n_peers_per_rack_talk_to_other_datacenters(per_rack: int) -> None:
    peers = fleet("dc1/r1:8 dc1/r2:8 dc2/r1:8 dc2/r2:8")
    policy = LocalityPolicy(cross_rack_min=1, cross_dc_min=2, dc_gateways_per_rack=per_rack)
    talks_cross: set[str] = set()
    for i, me in enumerate(peers):
        got = choose_peers(me, False, [], peers, 6, random.Random(i), policy)
        for p in got:
            if p.dc != me.dc:
                talks_cross.update((me.name, p.name))
    per = Counter(n.rsplit("-", 1)[0] for n in talks_cross)
    assert all(v <= per_rack for v in per.values()), per
    if per_rack:
        assert set(per) == {"dc1-r1", "dc1-r2", "dc2-r1", "dc2-r2"}  # every rack is linked
        gw = dc_gateways(peers, per_rack)
        assert {p.name for p in peers if p.peer_id in gw} == talks_cross


def test_gateway_gets_reserved_cross_dc_links_even_with_full_rack() -> None:
    peers = fleet("dc1/r1:30 dc2/r1:30")
    gw = dc_gateways(peers, 1)
    me = next(p for p in peers if p.dc == "dc1" and p.peer_id in gw)
    got = choose_peers(me, False, [], peers, 10, random.Random(0), POL)
    assert Counter(tiers_of(me, got)) == {"rack": 9, "other-dc": 1}
    other = next(p for p in peers if p.dc == "dc1" and p.peer_id not in gw)
    got = choose_peers(other, False, [], peers, 100, random.Random(0), POL)
    assert Counter(tiers_of(other, got)) == {"rack": 29}


def test_lone_datacenter_peer_reaches_the_origin() -> None:
    """dc2 has a single leecher and no seeder: it is its rack's gateway."""
    origin = P("origin", "dc1", "r1")
    leech = P("far", "dc2", "r9")
    got = choose_peers(leech, False, [origin], [leech], 50, random.Random(0), POL)
    assert got == [origin]


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="cross_dc_min"):
        LocalityPolicy(cross_dc_min=-1)

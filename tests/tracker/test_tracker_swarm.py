"""The swarm registry without a server: events, counts, expiry, access control, labels."""

from __future__ import annotations

import dataclasses
import random

import pytest

from roost.tracker import TrackerConfig
from roost.tracker.handout import LocalityPolicy
from roost.tracker.protocol import Announce
from roost.tracker.swarm import Refused, Registry

IH = b"\x11" * 20
IH2 = b"\x22" * 20
BASE = Announce(
    info_hash=IH,
    peer_id=b"P" * 20,
    port=6881,
    uploaded=0,
    downloaded=0,
    left=100,
    event="started",
    numwant=None,
    compact=True,
    no_peer_id=False,
    ip=None,
    key=None,
    token=None,
    host=None,
    dc=None,
    rack=None,
)


def ann(n: int, **over: object) -> Announce:
    pid = f"-RO0100-{n:012d}".encode()  # a roost peer: forgotten after peer_timeout
    return dataclasses.replace(BASE, peer_id=pid, port=6000 + n, **over)  # type: ignore[arg-type]


def reg(**cfg: object) -> Registry:
    return Registry(TrackerConfig(port=0, **cfg), 1000.0, random.Random(0))  # type: ignore[arg-type]


def test_events_counts_and_completion() -> None:
    r = reg()
    peers, c, i = r.announce(ann(0, left=0), "127.0.0.1", 1000)
    assert (peers, c, i) == ([], 1, 0)
    peers, c, i = r.announce(ann(1), "127.0.0.1", 1001)
    assert [p.port for p in peers] == [6000]
    assert (c, i) == (1, 1)
    swarm = r.swarms[IH]
    assert swarm.completed == 0  # a seeder starting is not a completion
    r.announce(ann(1, left=40, event=""), "127.0.0.1", 1002)
    assert swarm.leechers[ann(1).peer_id].last_progress == 1002
    r.announce(ann(1, left=40, event=""), "127.0.0.1", 1003)
    assert swarm.leechers[ann(1).peer_id].last_progress == 1002
    r.announce(ann(1, left=0, event="completed"), "127.0.0.1", 1004)
    r.announce(ann(1, left=0, event="completed"), "127.0.0.1", 1005)  # repeated: counted once
    assert (swarm.num_seeders, swarm.num_leechers, swarm.completed) == (2, 0, 1)
    # completion without the event (some clients) counts too
    r.announce(ann(2, left=5), "127.0.0.1", 1006)
    r.announce(ann(2, left=0, event=""), "127.0.0.1", 1007)
    assert swarm.completed == 2
    p = swarm.seeders[ann(1).peer_id]
    assert [e for _, e in p.events] == ["started", "completed", "completed"]
    assert p.state == "seeding"
    # stopped: out of the handout, kept in ``stopped`` for status pages
    peers, c, i = r.announce(ann(1, left=0, event="stopped"), "127.0.0.1", 1008)
    assert (peers, c) == ([], 2)
    assert swarm.stopped[ann(1).peer_id].state == "stopped"
    got, _, _ = r.announce(ann(3), "127.0.0.1", 1009)
    assert sorted(p.port for p in got) == [6000, 6002]


def test_stopped_after_finishing_counts_as_completed() -> None:
    # aria2c --seed-time=0 goes from left>0 straight to a "stopped" with left=0
    r = reg()
    r.announce(ann(1, left=40), "127.0.0.1", 1000)
    r.announce(ann(1, left=0, event="stopped"), "127.0.0.1", 1001)
    r.announce(ann(2, left=40), "127.0.0.1", 1002)
    r.announce(ann(2, left=40, event="stopped"), "127.0.0.1", 1003)  # gave up: not counted
    assert r.swarms[IH].completed == 1


def test_numwant_default_max_and_never_self() -> None:
    r = reg(numwant_default=3, numwant_max=5)
    for n in range(10):
        r.announce(ann(n), "127.0.0.1", 1000)
    me = ann(0, event="")
    assert len(r.announce(me, "127.0.0.1", 1001)[0]) == 3
    assert len(r.announce(dataclasses.replace(me, numwant=100), "127.0.0.1", 1001)[0]) == 5
    r = reg(numwant_max=50)
    for n in range(10):
        r.announce(ann(n), "127.0.0.1", 1000)
    got = r.announce(dataclasses.replace(me, numwant=50), "127.0.0.1", 1001)[0]
    assert len(got) == 9
    assert me.peer_id not in {p.peer_id for p in got}


def test_expiry() -> None:
    r = reg(interval=5, peer_timeout=10)
    r.announce(ann(0), "127.0.0.1", 1000)
    r.announce(ann(1), "127.0.0.1", 1005)
    assert r.expire(1009) == 0
    assert r.expire(1011) == 1
    swarm = r.swarms[IH]
    assert list(swarm.leechers) == [ann(1).peer_id]
    assert swarm.stopped[ann(0).peer_id].events[-1] == (1011, "expired")
    assert r.expire(1030) == 1
    r.expire(1050)
    assert IH not in r.swarms  # unregistered and empty: forgotten
    r.allow(IH2, 1000, tag="v1")
    r.expire(5000)
    assert IH2 in r.swarms  # registered swarms stay


def test_ip_param_trusted_or_not() -> None:
    r = reg()
    r.announce(ann(0, ip="198.18.0.7"), "127.0.0.1", 1000)
    r.announce(ann(1), "::ffff:127.0.0.5", 1000)
    s = r.swarms[IH]
    assert s.leechers[ann(0).peer_id].ip == "198.18.0.7"
    assert s.leechers[ann(1).peer_id].ip == "127.0.0.5"
    r2 = reg(trust_ip_param=False)
    r2.announce(ann(0, ip="198.18.0.7"), "127.0.0.9", 1000)
    assert r2.swarms[IH].leechers[ann(0).peer_id].ip == "127.0.0.9"


def test_key_protects_peer_id() -> None:
    r = reg()
    r.announce(ann(0, key=b"k1"), "127.0.0.1", 1000)
    with pytest.raises(Refused, match="in use by another peer"):
        r.announce(ann(0, key=b"k2"), "127.0.0.2", 1001)
    r.announce(ann(0, key=b"k1"), "127.0.0.2", 1001)  # same key, new address: fine


@pytest.mark.parametrize(
    ("cfg", "swarm_token", "token", "refusal"),
    [
        ({}, None, None, None),
        ({}, None, "anything", None),
        ({"tokens_required": True}, None, None, "missing token"),
        ({"tokens_required": True}, None, "x", "wrong token"),
        ({"tokens_required": True}, "t1", "t1", None),
        ({}, "t1", None, "missing token"),  # a per-deploy token guards its swarm
        ({}, "t1", "t2", "wrong token"),
        ({"token": "g"}, None, "g", None),
        ({"token": "g"}, "t1", "g", None),  # the global token opens every swarm
        ({"token": "g"}, "t1", "t1", None),
        ({"token": "g"}, None, "", "missing token"),
    ],
)
def test_tokens(cfg: dict, swarm_token: str | None, token: str | None, refusal: str | None) -> None:
    r = reg(**cfg)
    if swarm_token:
        r.allow(IH, 1000, token=swarm_token)
    if refusal is None:
        r.announce(ann(0, token=token), "127.0.0.1", 1000)
        assert r.scrape([IH], token) == {IH: (0, 0, 1)}
    else:
        with pytest.raises(Refused, match=refusal):
            r.announce(ann(0, token=token), "127.0.0.1", 1000)
        assert r.scrape([IH], token) == {}


def test_allow_list() -> None:
    r = reg(allow_list_only=True)
    with pytest.raises(Refused, match=f"unregistered info-hash {IH.hex()}"):
        r.announce(ann(0), "127.0.0.1", 1000)
    assert IH not in r.swarms
    r.allow(IH, 1000, tag="v42", size=123)
    r.announce(ann(0), "127.0.0.1", 1000)
    assert (r.swarms[IH].tag, r.swarms[IH].size) == ("v42", 123)
    with pytest.raises(Refused, match="full scrape"):
        r.scrape([], None)
    assert r.scrape([IH, IH2], None) == {IH: (0, 0, 1)}


def test_labels_from_announce_and_prefixes() -> None:
    r = reg(
        dc_prefixes=(("198.18.0.0/16", "dc1"), ("198.18.128.0/17", "dc2")),
        rack_prefixes=(("198.18.0.0/24", "r0"),),
        locality=LocalityPolicy(cross_rack_min=0),
    )
    r.announce(ann(0, ip="198.18.0.5"), "127.0.0.1", 1000)
    r.announce(ann(1, ip="198.18.200.5"), "127.0.0.1", 1000)
    r.announce(ann(2, ip="198.18.0.6", dc="dcX", host="web-2"), "127.0.0.1", 1000)
    r.announce(ann(3, ip="10.0.0.1"), "127.0.0.1", 1000)
    s = r.swarms[IH]
    got = {p.port - 6000: (p.dc, p.rack, p.host) for p in s.leechers.values()}
    assert got == {
        0: ("dc1", "r0", None),
        1: ("dc2", None, None),  # longest prefix wins
        2: ("dcX", "r0", "web-2"),  # the announce's own label wins
        3: (None, None, None),
    }


def test_counters() -> None:
    r = reg()
    c = r.counters
    c.announce("started", "ok")
    c.announce("", "ok")
    c.announce("", "ok")
    c.request("announce", 0.0002)
    c.request("announce", 5.0)
    assert c.announces == {("started", "ok"): 1, ("none", "ok"): 2}
    assert c.total_announces == 3
    assert c.latency_count == 2
    assert c.latency_counts[1] == 1
    assert c.latency_counts[-1] == 1


def stock(n: int, **over: object) -> Announce:
    """An announce of a stock client (qBittorrent's peer id prefix)."""
    return dataclasses.replace(ann(n, **over), peer_id=f"-qB4500-{n:012d}".encode())


def test_stock_clients_stay_for_their_own_interval() -> None:
    r = reg(interval=5)  # roost's peers: gone after 15 s
    r.announce(ann(0, left=0), "127.0.0.1", 1000)
    r.announce(stock(1, left=0), "127.0.0.2", 1000)  # a libtorrent seeder
    r.announce(stock(2), "127.0.0.3", 1000)  # an rtorrent leecher
    swarm = r.swarms[IH]
    assert r.expire(1016) == 1 and ann(0).peer_id in swarm.stopped
    r.announce(stock(1, left=0, event=""), "127.0.0.2", 1300)  # every 300 s: kept 405 s
    assert r.expire(1704) == 0
    # It keeps its longest plain gap: a quick re-announce does not shorten it.
    r.announce(stock(1, left=0, event=""), "127.0.0.2", 1301)
    assert r.expire(1705.5) == 0
    assert r.expire(1707) == 1 and stock(1).peer_id in swarm.stopped
    # Until a stock client's interval is seen, it is taken as 600 s: kept 780 s.
    assert r.expire(1779) == 0
    assert r.expire(1781) == 1
    assert not swarm.seeders and not swarm.leechers


def test_a_late_completed_counts_once() -> None:
    """rtorrent queues 'completed' for its next announce, 600 s on."""
    r = reg(interval=5)
    r.allow(IH, 1000)
    swarm = r.swarms[IH]
    r.announce(stock(0), "127.0.0.1", 1000)
    r.announce(stock(0, left=0, event="completed"), "127.0.0.1", 1600)
    assert swarm.completed == 1 and stock(0).peer_id in swarm.seeders
    r.announce(stock(0, left=0, event="completed"), "127.0.0.1", 2200)
    assert swarm.completed == 1
    # Even after the tracker forgot it, a late completion counts.
    r.announce(stock(1), "127.0.0.2", 3000)
    r.expire(5000)
    r.expire(7000)
    assert stock(1).peer_id not in swarm.stopped
    r.announce(stock(1, left=0, event="completed"), "127.0.0.2", 7001)
    assert swarm.completed == 2

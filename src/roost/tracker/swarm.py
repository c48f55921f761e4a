"""Swarm state: who is in which swarm, what they reported, who may join.

One ``Registry`` per tracker, owned by the server's event loop (nothing here
locks). It holds ``Swarm`` objects keyed by the raw 20-byte info-hash, each
with its peers keyed by peer id, split into ``seeders`` and ``leechers``
(``left == 0`` or not), plus ``stopped``: peers that sent ``stopped`` or
expired, kept for one more ``peer_timeout`` so status pages can show them.

Read API for stats / metrics / the web page (treat it as read-only):

* ``registry.swarms: dict[bytes, Swarm]``, ``registry.started`` (epoch s),
  ``registry.config`` (``TrackerConfig``), ``registry.counters``
  (``Counters``: announces by (event, result), scrapes, request latency).
* ``Swarm``: ``info_hash`` (bytes), ``info_hash_hex``, ``tag``, ``size``
  (bytes or None), ``completed``, ``registered``, ``seeders``/``leechers``/
  ``stopped`` (dict peer_id -> Peer), ``peers()`` (all three),
  ``num_seeders``, ``num_leechers``. Change membership only through
  ``Swarm.add`` / ``Swarm.discard``: they keep the swarm's ``HandoutIndex``
  (handout.py) in step with ``seeders`` / ``leechers``.
* ``Peer``: ``peer_id`` (bytes), ``ip``, ``port``, ``left``, ``uploaded``,
  ``downloaded``, ``first_seen``, ``last_seen``, ``last_progress`` (when
  ``left`` last decreased, else ``first_seen``), ``prev_uploaded``,
  ``prev_downloaded``, ``prev_seen`` (the announce before: rates are the
  deltas), ``events`` (deque of (ts, event), newest last), ``host``,
  ``dc``, ``rack``, ``state`` ("seeding" | "downloading" | "stopped"),
  ``origin``, ``timeout``, ``interval`` (below).
  ``status_row`` is stats.py's cache of the peer's /stats.json row (valid
  for its state and the swarm's size): whatever changes another field of a
  peer outside ``Registry._update`` must set it to None.

Who may change a peer: peer ids are public, so an announce for a known
peer id (listed, or stopped and still listed) must carry the ``key`` the
peer first gave, or, if it gave none, come from the connection address it
first announced from (``Peer.origin``); others are ``Refused``. Every check
that can fail runs before anything changes.

How long a silent peer stays (``Peer.timeout``, ``keep_for``): roost's own
peers ``peer_timeout``; stock clients at least that, and at least their
longest observed gap between plain announces (``Peer.interval``) plus a
margin, ``client_interval`` until one is seen. Swarms of info-hashes not on
the allow-list are capped at ``max_swarms`` (``Registry.unknown`` counts
them); an announce that would open one more is ``Refused``.

Peer address: the ``ip=`` announce parameter when present and valid and
``config.trust_ip_param`` is on (the default: local fleets announce the
address they listen on, and peers in network namespaces reach the tracker
through other addresses), else the address the connection came from.
Labels: ``host``/``dc``/``rack`` from the announce; missing ``dc``/``rack``
filled from the configured address prefixes (longest prefix wins).
"""

from __future__ import annotations

import hmac
import ipaddress
import random
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from roost.errors import ProtocolError, Refused
from roost.tracker.handout import HandoutIndex, LocalityPolicy
from roost.tracker.protocol import Announce, compact_address

if TYPE_CHECKING:
    from roost.tracker.config import TrackerConfig

__all__ = ["Counters", "Labeler", "Peer", "Refused", "Registry", "Swarm"]

EVENT_HISTORY = 16


class Counters:
    """Plain counters, cheap to bump on the hot path; read by stats.py."""

    LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)

    def __init__(self) -> None:
        self.announces: dict[tuple[str, str], int] = {}  # (event or "none", result)
        self.scrapes: dict[str, int] = {}  # result
        self.requests: dict[str, int] = {}  # route
        self.latency_counts = [0] * (len(self.LATENCY_BUCKETS) + 1)  # last: +Inf
        self.latency_sum = 0.0
        self.latency_count = 0

    def announce(self, event: str, result: str) -> None:
        key = (event or "none", result)
        self.announces[key] = self.announces.get(key, 0) + 1

    @property
    def total_announces(self) -> int:
        return sum(self.announces.values())

    def scrape(self, result: str) -> None:
        self.scrapes[result] = self.scrapes.get(result, 0) + 1

    def request(self, route: str, seconds: float) -> None:
        self.requests[route] = self.requests.get(route, 0) + 1
        self.latency_sum += seconds
        self.latency_count += 1
        # bisect_left: a latency equal to a bound falls in that bound's bucket (le).
        self.latency_counts[bisect_left(self.LATENCY_BUCKETS, seconds)] += 1


class Peer:
    __slots__ = (
        "announced_dc",
        "announced_rack",
        "compact",
        "completed",
        "dc",
        "downloaded",
        "events",
        "first_seen",
        "host",
        "interval",
        "ip",
        "is_v6",
        "key",
        "last_progress",
        "last_seen",
        "left",
        "origin",
        "peer_id",
        "port",
        "prev_downloaded",
        "prev_seen",
        "prev_uploaded",
        "rack",
        "role",
        "state",
        "status_row",
        "timeout",
        "uploaded",
    )

    def __init__(self, peer_id: bytes, ip: str, port: int, now: float, origin: str = ""):
        self.peer_id = peer_id
        self.ip = ip
        self.port = port
        self.compact, self.is_v6 = compact_address(ip, port)
        # The connection address of its first announce: what authenticates
        # its changes when it gave no key (see Registry._owns).
        self.origin = origin or ip
        # Seconds it stays in its swarm without announcing (Registry._keep_for)
        # and the gap between its last two plain announces (0: none seen yet).
        self.timeout = 0.0
        self.interval = 0.0
        self.left = 0
        self.uploaded = self.downloaded = 0
        self.prev_uploaded = self.prev_downloaded = 0
        self.first_seen = self.last_seen = self.last_progress = self.prev_seen = now
        self.events: deque[tuple[float, str]] = deque(maxlen=EVENT_HISTORY)
        self.host: str | None = None
        self.dc: str | None = None
        self.rack: str | None = None
        self.announced_dc: str | None = None  # labels the peer gave itself
        self.announced_rack: str | None = None
        self.key: bytes | None = None
        self.role: str | None = None  # "origin" / "feed" (roost.feed), else None
        self.completed = False  # counted in the swarm's completed count
        self.state = "downloading"
        # stats.py's cached /stats.json row: reset whenever a reported field changes
        self.status_row: tuple[object, str, float, float] | None = None

    def set_address(self, ip: str, port: int) -> None:
        if ip != self.ip or port != self.port:
            compact, is_v6 = compact_address(ip, port)  # raises before anything changes
            self.ip, self.port = ip, port
            self.compact, self.is_v6 = compact, is_v6

    @property
    def peer_id_hex(self) -> str:
        return self.peer_id.hex()


class Swarm:
    def __init__(self, info_hash: bytes, now: float, policy: LocalityPolicy | None = None):
        self.info_hash = info_hash
        self.info_hash_hex = info_hash.hex()
        self.tag: str | None = None
        self.token: str | None = None
        self.size: int | None = None
        self.registered = False
        self.completed = 0
        self.created = now
        self.seeders: dict[bytes, Peer] = {}
        self.leechers: dict[bytes, Peer] = {}
        self.stopped: dict[bytes, Peer] = {}
        # The handout's view of seeders + leechers (by role, dc, rack, gateways).
        self.index: HandoutIndex[Peer] = HandoutIndex(policy or LocalityPolicy())

    def add(self, peer: Peer) -> None:
        """Put ``peer`` among the seeders (``left == 0``) or leechers, moving it
        if it was in the other table; re-file it in the index (labels too)."""
        pid = peer.peer_id
        seeding = peer.left == 0
        table, other = (self.seeders, self.leechers) if seeding else (self.leechers, self.seeders)
        if pid not in table:
            other.pop(pid, None)
            table[pid] = peer
        self.index.place(peer, seeding)

    def check_index(self) -> None:
        """Rebuild the index if someone changed the tables behind ``add``/``discard``."""
        index = self.index
        if len(index) != len(self.seeders) + len(self.leechers) or index.count(True) != len(
            self.seeders
        ):
            self.index = index = HandoutIndex(index.policy)
            for table, seeding in ((self.seeders, True), (self.leechers, False)):
                for p in table.values():
                    index.place(p, seeding)

    @property
    def num_seeders(self) -> int:
        return len(self.seeders)

    @property
    def num_leechers(self) -> int:
        return len(self.leechers)

    def peers(self) -> Iterator[Peer]:
        yield from self.seeders.values()
        yield from self.leechers.values()
        yield from self.stopped.values()

    def get(self, peer_id: bytes) -> Peer | None:
        return self.seeders.get(peer_id) or self.leechers.get(peer_id)

    def discard(self, peer_id: bytes) -> Peer | None:
        """Take a peer out of ``seeders`` / ``leechers`` (not into ``stopped``)."""
        self.index.discard(peer_id)
        return self.seeders.pop(peer_id, None) or self.leechers.pop(peer_id, None)


class Labeler:
    """Datacenter / rack labels from address prefixes, longest prefix first."""

    def __init__(self, dc_prefixes: tuple = (), rack_prefixes: tuple = ()):
        self._dc = self._compile(dc_prefixes)
        self._rack = self._compile(rack_prefixes)
        self._cache: dict[str, tuple[str | None, str | None]] = {}

    @staticmethod
    def _compile(rules: tuple) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]:
        nets = [(ipaddress.ip_network(cidr, strict=False), name) for cidr, name in rules]
        nets.sort(key=lambda r: r[0].prefixlen, reverse=True)
        return nets

    def __bool__(self) -> bool:
        return bool(self._dc or self._rack)

    def labels(self, ip: str) -> tuple[str | None, str | None]:
        hit = self._cache.get(ip)
        if hit is None:
            addr = ipaddress.ip_address(ip)
            dc = next((n for net, n in self._dc if addr in net), None)
            rack = next((n for net, n in self._rack if addr in net), None)
            if len(self._cache) > 100_000:
                self._cache.clear()
            hit = self._cache[ip] = (dc, rack)
        return hit


def _address(remote_ip: str) -> str:
    """The connection's address as peers dial it: IPv4 unmapped, no IPv6 zone id."""
    if remote_ip.startswith("::ffff:") and "." in remote_ip:
        return remote_ip[7:]
    return remote_ip.partition("%")[0]


def _owns(peer: Peer, a: Announce, origin: str) -> bool:
    """Whether announce ``a``, arriving from ``origin``, may change ``peer``.

    Peer ids are public (/stats.json), so the id alone proves nothing: a
    peer that first announced with a ``key`` must give that key; one that
    gave none must announce from the address it first announced from.
    """
    if peer.key is not None:
        return a.key is not None and hmac.compare_digest(a.key, peer.key)
    return origin == peer.origin


#: Peer ids of roost's own peers (engine.py's ``peer_fingerprint``): they
#: announce every ``interval`` and are forgotten after ``peer_timeout``.
ROOST_PEER_ID = b"-RO"
#: Longest announce gap of a stock client that still keeps it in its swarm.
MAX_CLIENT_INTERVAL = 3600.0


def keep_for(peer: Peer, config: TrackerConfig) -> float:
    """Seconds ``peer`` stays in its swarm without announcing.

    roost's peers: ``peer_timeout`` (3 x interval), as fast deploys need.
    Stock clients re-announce on their own schedule, often far slower than
    the tracker's interval (libtorrent's ``min_announce_interval`` is 300 s,
    rtorrent's 600 s): their longest observed gap between plain announces,
    ``client_interval`` until one is seen, plus a quarter and 30 s.
    """
    if peer.peer_id.startswith(ROOST_PEER_ID):
        return config.peer_timeout
    expected = peer.interval or config.client_interval
    return max(config.peer_timeout, expected * 1.25 + 30.0)


class Registry:
    """Every swarm of one tracker; the allow-list and tokens that guard them."""

    def __init__(self, config: TrackerConfig, now: float, rng: random.Random | None = None) -> None:
        self.config = config
        self.started = now
        self.swarms: dict[bytes, Swarm] = {}
        self.counters = Counters()
        self.rng = rng or random.Random()
        self.labeler = Labeler(config.dc_prefixes, config.rack_prefixes)
        self.unknown = 0  # swarms not on the allow-list (capped: config.max_swarms)

    # -- access control ------------------------------------------------------

    def allow(
        self,
        info_hash: bytes,
        now: float,
        *,
        tag: str | None = None,
        token: str | None = None,
        size: int | None = None,
    ) -> Swarm:
        """Register an info-hash (allow-list), with its tag, token and size."""
        swarm = self.swarms.get(info_hash)
        if swarm is None:
            swarm = self.swarms[info_hash] = Swarm(info_hash, now, self.config.locality)
        elif not swarm.registered:
            self.unknown -= 1
        swarm.registered = True
        if tag is not None:
            swarm.tag = tag
        if token is not None:
            swarm.token = token
        if size is not None:
            swarm.size = size
        return swarm

    def _check_token(self, swarm: Swarm | None, token: str | None) -> str | None:
        """None if ``token`` opens ``swarm``, else the failure reason."""
        accepted = [t for t in (self.config.token, swarm.token if swarm else None) if t]
        if not accepted and not self.config.tokens_required:
            return None
        if token is None or token == "":
            return "missing token: this tracker requires token= in the announce URL"
        given = token.encode()
        if any(hmac.compare_digest(given, t.encode()) for t in accepted):
            return None
        return "wrong token for this info-hash"

    def _open_swarm(self, info_hash: bytes, token: str | None, now: float) -> Swarm:
        swarm = self.swarms.get(info_hash)
        cfg = self.config
        if cfg.allow_list_only and (swarm is None or not swarm.registered):
            raise Refused(f"unregistered info-hash {info_hash.hex()}")
        if cfg.token or cfg.tokens_required or (swarm is not None and swarm.token):
            reason = self._check_token(swarm, token)
            if reason is not None:
                raise Refused(reason)
        if swarm is None:
            if self.unknown >= cfg.max_swarms:
                raise Refused(
                    f"tracker full: {cfg.max_swarms} swarms of unregistered info-hashes "
                    "(--max-swarms); try again later"
                )
            swarm = self.swarms[info_hash] = Swarm(info_hash, now, self.config.locality)
            self.unknown += 1
        return swarm

    # -- announce ------------------------------------------------------------

    def announce(self, a: Announce, remote_ip: str, now: float) -> tuple[list[Peer], int, int]:
        """Apply an announce; return (peers to hand out, complete, incomplete).

        Raises ``Refused`` for an unknown info-hash (allow-list mode), a
        missing or wrong token, a full tracker (``max_swarms``) or swarm
        (``max_peers``, for a peer it does not know), or a peer id
        whose owner this announce cannot prove to be (``_owns``). Nothing
        changes when it raises.
        """
        cfg = self.config
        origin = _address(remote_ip)
        ip = a.ip if (a.ip is not None and cfg.trust_ip_param) else origin
        try:  # refuse an address no peer list can carry before anything changes
            compact_address(ip, a.port)
        except (OSError, ValueError) as exc:
            raise ProtocolError(f"cannot hand out address {ip!r}") from exc
        pid = a.peer_id
        swarm = self._open_swarm(a.info_hash, a.token, now)  # a new swarm has no one to check
        peer = swarm.get(pid)
        known = peer or swarm.stopped.get(pid)
        if known is not None and not _owns(known, a, origin):
            raise Refused("peer id in use by another peer (its key or address differs)")
        if a.event == "stopped":
            if peer is not None:
                was_left = peer.left
                self._update(swarm, peer, a, ip, now)
                swarm.discard(pid)
                # finished and left at once (aria2c --seed-time=0 sends no "completed")
                if was_left > 0 and a.left == 0 and not peer.completed:
                    peer.completed = True
                    swarm.completed += 1
                peer.state = "stopped"
                swarm.stopped[pid] = peer
                if len(swarm.stopped) > cfg.max_peers:  # the longest stopped goes first
                    del swarm.stopped[next(iter(swarm.stopped))]
            return [], len(swarm.seeders), len(swarm.leechers)
        if peer is None:
            peer = swarm.stopped.pop(pid, None)
            if peer is None:
                if len(swarm.seeders) + len(swarm.leechers) >= cfg.max_peers:
                    raise Refused(f"swarm full: {cfg.max_peers} peers (--max-peers)")
                peer = Peer(pid, ip, a.port, now, origin)
                peer.left = a.left
            else:
                peer.events.clear()
        was_left = peer.left
        self._update(swarm, peer, a, ip, now)
        if a.left == 0:
            if (was_left > 0 or a.event == "completed") and not peer.completed:
                peer.completed = True
                swarm.completed += 1
            peer.state = "seeding"
        else:
            peer.state = "downloading"
        swarm.add(peer)  # joins, or moves between tables, or re-files new labels
        swarm.check_index()
        numwant = cfg.numwant_default if a.numwant is None else min(a.numwant, cfg.numwant_max)
        if peer.role == "origin":
            # An origin with a feed only answers: foreign clients and peers
            # without a feed find it, feed peers never do (roost.feed).
            return [], len(swarm.seeders), len(swarm.leechers)
        peers = swarm.index.choose(peer, a.left == 0, numwant, self.rng)
        if peer.role == "feed":
            peers = [p for p in peers if p.role != "origin"]
        return peers, len(swarm.seeders), len(swarm.leechers)

    def _update(self, swarm: Swarm, peer: Peer, a: Announce, ip: str, now: float) -> None:
        peer.status_row = None
        peer.set_address(ip, a.port)
        if a.left < peer.left:
            peer.last_progress = now
        peer.left = a.left
        peer.prev_uploaded, peer.prev_downloaded = peer.uploaded, peer.downloaded
        if not a.event and now > peer.last_seen:  # a plain re-announce: its interval
            gap = min(now - peer.last_seen, MAX_CLIENT_INTERVAL)
            peer.interval = max(peer.interval, gap)
        peer.prev_seen = peer.last_seen
        peer.uploaded, peer.downloaded = a.uploaded, a.downloaded
        peer.last_seen = now
        if a.key is not None:
            peer.key = a.key
        if a.event:
            peer.events.append((now, a.event))
        if a.host is not None:
            peer.host = a.host
        # Every announce of a roost peer says its role (a fed peer whose feed
        # is gone drops it, and is handed the origin from then on).
        peer.role = a.role
        # Labels a peer announced stick until it announces others; prefixes fill gaps.
        if a.dc is not None:
            peer.announced_dc = a.dc
        if a.rack is not None:
            peer.announced_rack = a.rack
        peer.timeout = keep_for(peer, self.config)
        dc, rack = peer.announced_dc, peer.announced_rack
        if (dc is None or rack is None) and self.labeler:
            pdc, prack = self.labeler.labels(ip)
            dc = dc if dc is not None else pdc
            rack = rack if rack is not None else prack
        peer.dc, peer.rack = dc, rack

    # -- scrape --------------------------------------------------------------

    def scrape(self, hashes: list[bytes], token: str | None) -> dict[bytes, tuple[int, int, int]]:
        """(complete, downloaded, incomplete) per info-hash the caller may see.

        No hashes means every swarm (refused when tokens or the allow-list
        guard the tracker). Hashes the caller may not see are left out.
        """
        if not hashes:
            if self.config.allow_list_only or self.config.tokens_required or self.config.token:
                raise Refused("full scrape is disabled on this tracker")
            hashes = list(self.swarms)
        files: dict[bytes, tuple[int, int, int]] = {}
        for h in hashes:
            swarm = self.swarms.get(h)
            if swarm is None:
                continue
            if self.config.allow_list_only and not swarm.registered:
                continue
            if self._check_token(swarm, token) is not None:
                continue
            files[h] = (len(swarm.seeders), swarm.completed, len(swarm.leechers))
        return files

    # -- expiry --------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Drop peers silent for their ``timeout`` (``keep_for``); return how many.

        Stopped and expired peers stay listed for ``peer_timeout`` more;
        a swarm not on the allow-list goes when nobody is left in it.
        """
        cutoff = now - self.config.peer_timeout
        expired = 0
        for h, swarm in list(self.swarms.items()):
            for table in (swarm.seeders, swarm.leechers):
                for pid in [pid for pid, p in table.items() if p.last_seen + p.timeout < now]:
                    peer = table[pid]
                    swarm.discard(pid)
                    peer.state = "stopped"
                    peer.events.append((now, "expired"))
                    swarm.stopped[pid] = peer
                    expired += 1
            for pid in [pid for pid, p in swarm.stopped.items() if p.last_seen < cutoff]:
                if swarm.stopped[pid].events and swarm.stopped[pid].events[-1][0] < cutoff:
                    del swarm.stopped[pid]
            if (
                not swarm.registered
                and not swarm.seeders
                and not swarm.leechers
                and not swarm.stopped
            ):
                del self.swarms[h]
                self.unknown -= 1
        return expired

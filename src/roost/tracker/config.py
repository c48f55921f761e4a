"""The tracker's settings: one frozen dataclass with every default, checked
when built (``TrackerError`` naming the bad value). Its own module so that
the swarm, the store and the server all take it without importing each
other."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from roost.errors import TrackerError
from roost.tracker.handout import LocalityPolicy

__all__ = ["TrackerConfig", "parse_network"]


@dataclass(frozen=True)
class TrackerConfig:
    """Every tracker setting, with its default. ``peer_timeout<=0`` means 3 x interval.

    ``token`` is a global announce token (accepted for every info-hash, in
    addition to each info-hash's own token given to ``allow``).
    ``dc_prefixes`` / ``rack_prefixes`` map CIDRs to labels, e.g.
    ``(("198.18.0.0/24", "dc1"),)``. ``stats_allow`` lists the networks that
    may read /stats.json, /metrics and the page (empty: anyone who can
    connect; the default bind is loopback). ``stall_after``: seconds without a
    decrease of ``left`` before /stats.json flags a downloading peer as stalled.
    ``stats_ttl``: seconds a rendered /stats.json or /metrics is served again
    before it is rebuilt (``snapshot.py``; 0: rebuilt for every request).

    ``peer_timeout`` is how long roost's own peers stay without announcing;
    stock clients, which re-announce on their own schedule, stay at least
    that long and at least their observed interval plus a margin,
    ``client_interval`` until one is observed (``swarm.keep_for``).
    Caps: ``max_swarms`` swarms of info-hashes not on the allow-list (more
    are refused with a failure reason), ``max_peers`` peers in one swarm
    (a new one beyond is refused; as many that stopped are remembered),
    ``max_connections`` open
    connections (more are closed at once), ``idle_timeout`` seconds a
    connection may sit without a byte, ``request_timeout`` seconds a
    request head may take to arrive in full.
    """

    bind: str = "127.0.0.1"
    port: int = 8998
    interval: int = 5
    min_interval: int = 2
    peer_timeout: float = 0.0
    numwant_default: int = 50
    numwant_max: int = 200
    state_file: Path | None = None
    save_every: float = 30.0
    allow_list_only: bool = False
    tokens_required: bool = False
    token: str | None = None
    trust_ip_param: bool = True
    locality: LocalityPolicy = field(default_factory=LocalityPolicy)
    dc_prefixes: tuple[tuple[str, str], ...] = ()
    rack_prefixes: tuple[tuple[str, str], ...] = ()
    stats_allow: tuple[str, ...] = ()
    idle_timeout: float = 60.0
    announce_host: str | None = None
    stall_after: float = 30.0
    stats_ttl: float = 1.0
    client_interval: float = 600.0
    max_swarms: int = 10_000
    max_peers: int = 100_000
    max_connections: int = 4096
    request_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.peer_timeout <= 0:
            object.__setattr__(self, "peer_timeout", 3.0 * self.interval)
        if self.interval < 1 or self.min_interval < 0 or self.min_interval > self.interval:
            raise TrackerError(
                f"bad interval {self.interval}/min interval {self.min_interval}: "
                "need interval >= 1 and 0 <= min interval <= interval"
            )
        if not 0 <= self.stats_ttl <= 60:
            raise TrackerError(f"bad stats ttl {self.stats_ttl}: need 0 to 60 seconds")
        if not self.stall_after > 0:
            raise TrackerError(f"bad stall-after {self.stall_after}: need a positive number")
        if not 0 < self.client_interval <= 3600:
            raise TrackerError(f"bad client interval {self.client_interval}: need 0 to 3600 s")
        for name in ("max_swarms", "max_peers", "max_connections"):
            if getattr(self, name) < 1:
                raise TrackerError(f"bad {name.replace('_', ' ')} {getattr(self, name)}: need >= 1")
        if not (self.idle_timeout > 0 and self.request_timeout > 0):
            raise TrackerError("idle and request timeouts must be positive")
        if not 0 <= self.port < 65536:
            raise TrackerError(f"port {self.port} out of range")
        if not 0 < self.numwant_default <= self.numwant_max:
            raise TrackerError("need 0 < numwant default <= numwant max")
        for label, rules in (("dc", self.dc_prefixes), ("rack", self.rack_prefixes)):
            for cidr, name in rules:
                parse_network(cidr, f"{label} prefix")
                if not name or not str(name).isprintable():
                    raise TrackerError(f"{label} prefix {cidr}: empty or unprintable name")
        for cidr in self.stats_allow:
            parse_network(cidr, "stats-allow network")
        if self.token is not None and not (self.token.isascii() and self.token.isprintable()):
            raise TrackerError("token must be printable ASCII")


def parse_network(cidr: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise TrackerError(f"{what} {cidr!r} is not a network (CIDR): {exc}") from exc

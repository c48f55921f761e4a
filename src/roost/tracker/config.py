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

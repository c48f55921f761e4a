"""What the engine is told and what it answers, without libtorrent.

:class:`EngineConfig` (how a session behaves) with the libtorrent settings
it stands for (:func:`lan_settings`), :class:`Status` (one torrent's
numbers) and the events :meth:`roost.engine.Engine.events` yields: plain
frozen dataclasses and pure functions, so the peer's front process (``roost
peer`` before it forks its worker) can build a config, and any module can
name these types, without loading libtorrent. Only :mod:`roost.engine`
imports libtorrent; it re-exports everything here.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass
from typing import Any

from roost import __version__

__all__ = [
    "EngineConfig",
    "Event",
    "Finished",
    "HashFailed",
    "MetadataReceived",
    "PeerBanned",
    "Status",
    "TorrentError",
    "TorrentId",
    "TrackerProblem",
    "announce_urls",
    "lan_settings",
    "with_query_param",
]

TorrentId = str  # v1 info-hash, 40 hex digits


@dataclass(frozen=True)
class EngineConfig:
    """How one engine's session behaves. Rates are bytes/s, 0 = unlimited."""

    listen_interface: str = "0.0.0.0"
    listen_port: int = 0
    announce_ip: str | None = None
    upload_limit: int = 0
    download_limit: int = 0
    dht: bool = False
    lsd: bool = False
    upnp: bool = False
    natpmp: bool = False
    utp: bool = False
    connections_limit: int = 1000
    #: Peers uploaded to at once (libtorrent's unchoke slots); -1: all. An
    #: origin with few slots hands each piece to fewer peers, who pass it on.
    upload_slots: int = -1
    send_buffer: int = 8 * 1024 * 1024
    #: libtorrent's disk I/O threads. 0: writes into the page cache and reads
    #: for uploads run on the network thread itself, without a hand-off to
    #: another thread and back for every 16 KiB block (piece hashing keeps
    #: its own thread). Measured: a third less CPU per byte at 4 hosts, and
    #: a local deploy of 256 MiB no slower (bench/NOTES.md, "disk threads").
    #: Raise it for an origin reading releases from slow, cold disks.
    disk_threads: int = 0
    min_announce_interval: int = 1
    #: libtorrent refuses a loopback tracker whose path is not /announce while
    #: this is on; roost's tracker serves /announce so it can stay on.
    ssrf_mitigation: bool = True
    #: Check the certificates of HTTPS web seeds and trackers (off only for
    #: tests and self-signed origins you cannot give a CA file for).
    verify_https: bool = True
    #: PEM bundle trusted for HTTPS web seeds/trackers instead of the system
    #: store (sets SSL_CERT_FILE for this process: OpenSSL reads it there).
    ca_file: str | None = None
    #: DHT bootstrap nodes ("host:port"); with them the DHT also accepts
    #: private and same-address nodes (a DHT inside one datacenter).
    dht_bootstrap: tuple[str, ...] = ()
    #: Peer exchange. Off: the tracker's handout alone decides who talks to
    #: whom, so its locality policy holds (with PEX on, peers allowed to reach
    #: another datacenter gossip those peers to their whole datacenter:
    #: bench/NOTES.md "Locality") and no peer learns of strangers.
    pex: bool = False


@dataclass(frozen=True)
class Status:
    info_hash: TorrentId
    name: str
    state: str
    progress: float
    total_done: int
    total_wanted: int
    downloaded: int  # payload bytes received this session
    uploaded: int  # payload bytes sent this session
    rate_down: int
    rate_up: int
    num_peers: int
    num_seeds: int
    is_seeding: bool
    is_finished: bool
    error: str | None
    #: The OS errno behind ``error`` when it is a system error (ENOSPC...).
    errno: int | None = None


# Events -------------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    info_hash: TorrentId


@dataclass(frozen=True)
class HashFailed:
    info_hash: TorrentId
    piece: int


@dataclass(frozen=True)
class TorrentError:
    info_hash: TorrentId
    message: str
    #: The OS errno of a file error (ENOSPC: libtorrent retries the write
    #: forever, the torrent never reports an error of its own).
    errno: int | None = None


@dataclass(frozen=True)
class PeerBanned:
    info_hash: TorrentId
    address: str


@dataclass(frozen=True)
class TrackerProblem:
    info_hash: TorrentId
    url: str
    message: str
    fatal: bool  # an error (True) or a warning (False)


@dataclass(frozen=True)
class MetadataReceived:
    """A magnet's info dict arrived from peers (:meth:`Engine.metadata`)."""

    info_hash: TorrentId


Event = Finished | HashFailed | TorrentError | PeerBanned | TrackerProblem | MetadataReceived


def lan_settings(config: EngineConfig) -> dict[str, object]:
    """The libtorrent settings for ``config``, LAN-tuned (pure): all of the
    session's but the alert mask, which names libtorrent's own constants
    (``roost.engine.settings_pack`` adds it)."""
    iface = config.listen_interface
    if ":" in iface and not iface.startswith("["):
        iface = f"[{iface}]"
    pack: dict[str, object] = {
        "listen_interfaces": f"{iface}:{config.listen_port}",
        "enable_dht": config.dht,
        "enable_lsd": config.lsd,
        "enable_upnp": config.upnp,
        "enable_natpmp": config.natpmp,
        "enable_outgoing_utp": config.utp,
        "enable_incoming_utp": config.utp,
        "enable_outgoing_tcp": True,
        "enable_incoming_tcp": True,
        "allow_multiple_connections_per_ip": True,
        "unchoke_slots_limit": config.upload_slots,
        "connections_limit": config.connections_limit,
        "send_buffer_watermark": config.send_buffer,
        "send_buffer_low_watermark": config.send_buffer // 4,
        "send_buffer_watermark_factor": 150,
        "max_queued_disk_bytes": 64 * 1024 * 1024,
        "aio_threads": config.disk_threads,
        "hashing_threads": 1,
        "max_out_request_queue": 1500,
        # A peer keeps this many seconds' worth of block requests queued at
        # each peer it downloads from (libtorrent's default: 3). A block just
        # relayed waits behind them at its holder: at 32 hosts the last
        # pieces spread 1.5 s sooner with 1 (bench/NOTES.md), and a second
        # still covers a LAN's round trips many times over.
        "request_queue_time": 1,
        "announce_to_all_tiers": True,
        "announce_to_all_trackers": True,
        "min_announce_interval": config.min_announce_interval,
        "min_reconnect_time": 1,
        "peer_connect_timeout": 5,
        "stop_tracker_timeout": 1,
        "tracker_backoff": 50,
        "torrent_connect_boost": 100,
        "connection_speed": 200,
        "active_downloads": -1,
        "active_seeds": -1,
        "active_limit": -1,
        "share_ratio_limit": 0,
        "seed_time_limit": 0,
        "upload_rate_limit": config.upload_limit,
        "download_rate_limit": config.download_limit,
        # Production caps must apply between hosts on the same LAN too.
        "ignore_limits_on_local_network": False,
        "rate_limit_ip_overhead": False,
        "alert_queue_size": 10000,
        "ssrf_mitigation": config.ssrf_mitigation,
        "user_agent": f"roost/{__version__}",
        "handshake_client_version": f"roost/{__version__}",
        "peer_fingerprint": "-RO0100-",
        # A port asked for is that port, not the next free one.
        "max_retry_port_bind": 0,
    }
    if config.announce_ip:
        pack["announce_ip"] = config.announce_ip
    pack["validate_https_trackers"] = config.verify_https
    if config.dht_bootstrap:
        pack["dht_bootstrap_nodes"] = ",".join(config.dht_bootstrap)
        pack["dht_restrict_routing_ips"] = False
        pack["dht_restrict_search_ips"] = False
        pack["dht_prefer_verified_node_ids"] = False
        pack["dht_ignore_dark_internet"] = False
    return pack


def announce_urls(torrent: object) -> list[str]:
    """The tracker URLs of a bdecoded torrent (announce-list, else announce)."""
    if not isinstance(torrent, dict):
        return []
    urls: list[str] = []
    for tier in torrent.get(b"announce-list") or []:
        for url in tier if isinstance(tier, list) else []:
            if isinstance(url, bytes) and url.decode("utf-8", "replace") not in urls:
                urls.append(url.decode("utf-8", "replace"))
    announce = torrent.get(b"announce")
    if not urls and isinstance(announce, bytes):
        urls.append(announce.decode("utf-8", "replace"))
    return urls


def announce_unreachable(local_address: str, tracker_url: str) -> bool:
    """Whether a listen socket on ``local_address`` cannot reach the tracker
    at all: a loopback socket and a tracker elsewhere (pure).

    Listening on ``0.0.0.0``, libtorrent announces from a socket on every
    interface, and for the loopback one says "skipping tracker announce
    (unreachable)". The other sockets announce; that is no problem of the
    deploy, and a peer that reported it would carry a tracker warning on
    every host."""
    try:
        local = ipaddress.ip_address(local_address.strip("[]"))
    except ValueError:
        return False
    host = urllib.parse.urlsplit(tracker_url).hostname or ""
    try:
        remote_is_loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        remote_is_loopback = host == "localhost"
    return local.is_loopback and not remote_is_loopback


def with_query_param(url: str, key: str, value: str | None) -> str:
    """``url`` with its ``key=`` parameters replaced by ``key=value`` (none
    for None), the others (a token) kept in their order (pure)."""
    base, _, query = url.partition("?")
    params = [p for p in query.split("&") if p and not p.startswith(f"{key}=")]
    if value is not None:
        params.append(f"{key}={value}")
    return f"{base}?{'&'.join(params)}" if params else base


#: Peers the origin uploads to at once (-1: all). Few slots make the origin
#: hand each piece to fewer peers, who pass it on: measured fewer copies from
#: the origin and no slower deploys (bench/NOTES.md).
ORIGIN_UPLOAD_SLOTS = 4


def origin_engine(**settings: Any) -> EngineConfig:
    """An origin's ``EngineConfig``: ``settings`` over the origin's own
    default of :data:`ORIGIN_UPLOAD_SLOTS` upload slots."""
    return EngineConfig(**{"upload_slots": ORIGIN_UPLOAD_SLOTS, **settings})

"""The BitTorrent engine: roost's one boundary to libtorrent.

Theory of operation
-------------------
An :class:`Engine` owns one ``lt.session`` and is used from one thread only
(the session's alerts are a single queue; one reader keeps them coherent).
The session is always built from a settings pack: a bare ``lt.session()``
starts DHT, LSD, UPnP and NAT-PMP and listens everywhere, which a deploy tool
must never do. The pack is tuned for a LAN (TCP only, several connections per
IP, no unchoke slot limit, large send buffers, fast re-announces).

Torrents are identified by their v1 info-hash in hex (:data:`TorrentId`).
Discrete happenings come out of :meth:`Engine.events` as small frozen
dataclasses; numbers come from :meth:`Engine.status`. Every libtorrent
exception is turned into :class:`~roost.errors.EngineError` here, so nothing
above this module ever sees a libtorrent type.

Resume data: :meth:`Engine.save_resume` asks libtorrent for it, waits for the
answer (buffering other alerts for :meth:`events`) and writes it atomically
to ``resume_dir/INFOHASH.resume``; :meth:`Engine.add` loads it back, so a
restarted download skips the re-hash of what it already had. Resume data
vouches only for what it lists: the pieces it leaves out (completed after
the last save, before a SIGKILL) are hashed from the disk at add, and those
that match are not downloaded again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import libtorrent as lt

from roost import __version__
from roost._fs import atomic_write
from roost.errors import EngineError, disk_error

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

_ALERT_MASK = (
    lt.alert.category_t.status_notification
    | lt.alert.category_t.error_notification
    | lt.alert.category_t.peer_notification
    | lt.alert.category_t.storage_notification
    | lt.alert.category_t.tracker_notification
)


def settings_pack(config: EngineConfig) -> dict[str, object]:
    """The libtorrent settings for ``config`` (pure; tested on its own)."""
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
        "max_out_request_queue": 1500,
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
        "alert_mask": int(_ALERT_MASK),
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


def _hex(info_hashes: object) -> TorrentId:
    v1 = getattr(info_hashes, "v1", info_hashes)
    return str(v1)


def _state_name(state: object) -> str:
    return str(state).rsplit(".", 1)[-1]


class Engine:
    """One libtorrent session. Not thread-safe: one owner thread."""

    def __init__(self, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        if self.config.ca_file:
            os.environ["SSL_CERT_FILE"] = self.config.ca_file
        self._handles: dict[TorrentId, lt.torrent_handle] = {}
        self._resume_dirs: dict[TorrentId, Path] = {}
        #: piece length and total size of each torrent (add_piece's padding)
        self._geometry: dict[TorrentId, tuple[int, int]] = {}
        self._pending: list[Event] = []
        self._closed = False
        # Port 0 on an unspecified address: libtorrent binds every interface
        # to a *different* ephemeral port and announces one of them, so peers
        # reaching this host on another interface hit a closed port (a fleet
        # deploy's rerun hung on it). Pick one free port for all interfaces.
        attempts = 3 if self.config.listen_port == 0 else 1
        for attempt in range(attempts):
            config = self.config
            if config.listen_port == 0:
                config = dataclasses.replace(config, listen_port=_free_port(config))
            try:
                self._session = lt.session(cast(Any, settings_pack(config)))
            except (RuntimeError, TypeError, ValueError) as exc:
                raise EngineError(f"cannot start the BitTorrent session: {exc}") from exc
            self._listen_error: str | None = None
            try:
                self.port = self._wait_listen()
                break
            except EngineError:
                del self._session
                if attempt == attempts - 1:
                    raise

    def _wait_listen(self) -> int:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            port = int(self._session.listen_port())
            if port:
                return port
            for alert in self._session.pop_alerts():
                if isinstance(alert, lt.listen_failed_alert):
                    self._listen_error = alert.message()
            if self._listen_error:
                break
            self._session.wait_for_alert(50)
        iface = f"{self.config.listen_interface}:{self.config.listen_port}"
        raise EngineError(f"cannot listen on {iface}: {self._listen_error or 'no port bound'}")

    def settings(self) -> dict[str, object]:
        """The session's effective settings (for checks and diagnostics)."""
        return dict(self._session.get_settings())

    # Torrents ------------------------------------------------------------

    def add(
        self,
        torrent_bytes: bytes,
        save_path: Path,
        *,
        seed_mode: bool = False,
        super_seeding: bool = False,
        resume_dir: Path | None = None,
        web_seeds: Sequence[str] = (),
        trackers: Sequence[str] | None = None,
        upload_limit: int = 0,
        download_limit: int = 0,
        role: str | None = None,
        files_root: Path | None = None,
        have: Sequence[int] = (),
    ) -> TorrentId:
        """Add a torrent, started (never paused, never auto-managed).

        ``files_root``: a multi-file torrent's files are read and written
        under this directory instead of ``save_path/NAME`` (a tree release
        seeded in place). ``have``: pieces the caller vouches are on disk
        already (the files it pre-filled, whose sha256 matched the
        authenticated manifest); without resume data they are trusted, not
        re-hashed. ``trackers`` replaces the torrent's own announce list. ``role``
        (``origin``/``feed``, roost.feed) is added to every announce URL as
        ``role=...`` so roost's tracker never pairs an origin with its feed
        peers. Raises ``EngineError`` for a torrent libtorrent cannot read or
        add.
        """
        try:
            decoded: Any = lt.bdecode(torrent_bytes)
            info = lt.torrent_info(decoded)
            if role is not None:
                urls = list(trackers) if trackers is not None else _announce_urls(decoded)
                trackers = [with_query_param(url, "role", role) for url in urls]
            if trackers is not None and isinstance(decoded, dict):
                # Announce only where told from the first announce on (a
                # replace_trackers after adding comes after the first one).
                for key in (b"announce", b"announce-list"):
                    decoded.pop(key, None)
                info = lt.torrent_info(cast(Any, decoded))
        except (RuntimeError, TypeError, ValueError) as exc:
            raise EngineError(f"not a valid .torrent: {exc}") from exc
        tid = _hex(info.info_hashes())
        if tid in self._handles:
            raise EngineError("torrent added twice", info_hash=tid)
        resumed = None if seed_mode else self._resumed(resume_dir, tid)
        atp = resumed or lt.add_torrent_params()
        atp.ti = info
        atp.save_path = str(save_path)
        if files_root is not None:
            atp.renamed_files = _rooted_files(decoded, Path(files_root))
        if have and resumed is None and not seed_mode:
            marks = [False] * info.num_pieces()
            for piece in have:
                marks[piece] = True
            atp.have_pieces = marks
        if resumed is not None:
            _vouch_for_disk(atp, info, Path(save_path))
        flags = atp.flags
        flags &= ~lt.torrent_flags.paused
        flags &= ~lt.torrent_flags.auto_managed
        flags &= ~lt.torrent_flags.duplicate_is_error
        if seed_mode:
            flags |= lt.torrent_flags.seed_mode
        if super_seeding:
            flags |= lt.torrent_flags.super_seeding
        if not self.config.pex:
            flags |= lt.torrent_flags.disable_pex
        atp.flags = flags
        if web_seeds:
            atp.url_seeds = list(web_seeds)
        if upload_limit:
            atp.upload_limit = upload_limit
        if download_limit:
            atp.download_limit = download_limit
        if trackers is not None:
            atp.trackers = list(trackers)
            atp.tracker_tiers = list(range(len(atp.trackers)))
        try:
            Path(save_path).mkdir(parents=True, exist_ok=True)
            handle = self._session.add_torrent(atp)
        except (RuntimeError, OSError, TypeError, ValueError) as exc:
            raise EngineError(f"cannot add torrent: {exc}", info_hash=tid) from exc
        self._handles[tid] = handle
        self._geometry[tid] = (info.piece_length(), info.total_size())
        if resume_dir is not None:
            self._resume_dirs[tid] = Path(resume_dir)
        return tid

    def add_magnet(
        self,
        uri: str,
        save_path: Path,
        *,
        resume_dir: Path | None = None,
        web_seeds: Sequence[str] = (),
        trackers: Sequence[str] | None = None,
    ) -> TorrentId:
        """Add a magnet link; the info dict comes from peers (BEP 9).

        :meth:`metadata` answers once it has arrived. Raises ``EngineError``
        for a link libtorrent cannot parse or add.
        """
        try:
            atp = lt.parse_magnet_uri(uri)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise EngineError(f"not a valid magnet link: {exc}") from exc
        tid = _hex(atp.info_hashes)
        if tid in self._handles:
            raise EngineError("torrent added twice", info_hash=tid)
        resumed = self._resumed(resume_dir, tid)
        if resumed is not None:
            resumed.trackers = atp.trackers
            resumed.tracker_tiers = atp.tracker_tiers
            resumed.url_seeds = atp.url_seeds
            atp = resumed
        atp.save_path = str(save_path)
        if resumed is not None and resumed.ti is not None:
            _vouch_for_disk(atp, resumed.ti, Path(save_path))
        flags = atp.flags
        flags &= ~lt.torrent_flags.paused
        flags &= ~lt.torrent_flags.auto_managed
        if not self.config.pex:
            flags |= lt.torrent_flags.disable_pex
        atp.flags = flags
        if web_seeds:
            atp.url_seeds = list(atp.url_seeds) + list(web_seeds)
        try:
            Path(save_path).mkdir(parents=True, exist_ok=True)
            handle = self._session.add_torrent(atp)
            if trackers is not None:
                handle.replace_trackers([lt.announce_entry(url) for url in trackers])
        except (RuntimeError, OSError, TypeError, ValueError) as exc:
            raise EngineError(f"cannot add magnet link: {exc}", info_hash=tid) from exc
        self._handles[tid] = handle
        if resume_dir is not None:
            self._resume_dirs[tid] = Path(resume_dir)
        return tid

    def _resumed(self, resume_dir: Path | None, tid: TorrentId) -> Any:
        """The ``add_torrent_params`` saved in ``resume_dir`` for ``tid``, or
        None. Its tracker list and web seeds are dropped: they are those of the
        run that wrote it (an earlier deploy's tracker and token); the torrent
        or link being added now is the authority on where to announce."""
        resume_file = _resume_path(resume_dir, tid) if resume_dir else None
        if resume_file is None or not resume_file.is_file():
            return None
        try:
            atp = lt.read_resume_data(resume_file.read_bytes())
        except (RuntimeError, ValueError) as exc:
            # Stale or damaged resume data only costs a re-hash.
            self._pending.append(TorrentError(tid, f"ignoring resume data: {exc}"))
            return None
        # read_resume_data sets override_trackers/override_web_seeds, which
        # would make the saved lists win over the torrent's own.
        atp.flags &= ~(lt.torrent_flags.override_trackers | lt.torrent_flags.override_web_seeds)
        atp.trackers = []
        atp.tracker_tiers = []
        atp.url_seeds = []
        return atp

    def metadata(self, tid: TorrentId) -> bytes | None:
        """The torrent (``{"info": ...}``, bencoded) once its info dict is known."""
        handle = self._handle(tid)
        try:
            info = handle.torrent_file()
            if info is None:
                return None
            section = bytes(info.info_section())
        except RuntimeError:
            return None
        return b"d4:info" + section + b"e" if section else None

    def _handle(self, tid: TorrentId) -> lt.torrent_handle:
        try:
            return self._handles[tid]
        except KeyError:
            raise EngineError("no such torrent in this engine", info_hash=tid) from None

    def status(self, tid: TorrentId) -> Status:
        handle = self._handle(tid)
        try:
            st = handle.status()
        except RuntimeError as exc:
            raise EngineError(f"cannot read torrent status: {exc}", info_hash=tid) from exc
        error = st.errc.message() if st.errc.value() else None
        return Status(
            info_hash=tid,
            name=st.name,
            state=_state_name(st.state),
            progress=float(st.progress),
            total_done=int(st.total_wanted_done),
            total_wanted=int(st.total_wanted),
            downloaded=int(st.total_payload_download),
            uploaded=int(st.total_payload_upload),
            rate_down=int(st.download_payload_rate),
            rate_up=int(st.upload_payload_rate),
            num_peers=int(st.num_peers),
            num_seeds=int(st.num_seeds),
            is_seeding=bool(st.is_seeding),
            is_finished=bool(st.is_finished),
            error=error,
            errno=_os_errno(st.errc),
        )

    def connect_peer(self, tid: TorrentId, address: str, port: int) -> None:
        """Connect to a peer directly (no tracker); for tests and web-less setups."""
        try:
            self._handle(tid).connect_peer((address, port))
        except RuntimeError as exc:
            raise EngineError(f"cannot connect to {address}:{port}: {exc}", info_hash=tid) from exc

    # Safe from any thread (the feed's): libtorrent posts handle calls to its
    # own network thread, and these only read the handle table.

    def add_piece(self, tid: TorrentId, index: int, data: bytes) -> None:
        """Hand libtorrent a piece fetched by other means (the origin's feed):
        it is hashed like a downloaded one, then announced and served. A
        piece that fails its hash is reported as ``HashFailed``."""
        handle = self._handles.get(tid)
        if handle is None:
            return
        try:
            length, total = self._geometry.get(tid, (0, 0))
            size = min(length, total - index * length)
            if len(data) < size:  # the rest is a BEP 47 pad: zeros, not sent
                data = bytes(data) + bytes(size - len(data))
            handle.add_piece(index, bytes(data), 0)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise EngineError(f"cannot add piece {index}: {exc}", info_hash=tid) from exc

    def missing_pieces(self, tid: TorrentId) -> list[int]:
        """Pieces this torrent does not have yet (sorted)."""
        handle = self._handles.get(tid)
        if handle is None:
            return []
        try:
            have = handle.status(lt.status_flags_t.query_pieces).pieces
        except RuntimeError:
            return []
        return [i for i, has in enumerate(have) if not has]

    def orphan_pieces(self, tid: TorrentId) -> list[int]:
        """Pieces this torrent lacks that no connected peer has and that are
        not being downloaded: what only the origin can still give."""
        handle = self._handles.get(tid)
        if handle is None:
            return []
        try:
            have = handle.status(lt.status_flags_t.query_pieces).pieces
            if not have or all(have):
                return []
            availability = handle.piece_availability()
            queued = {int(d["piece_index"]) for d in handle.get_download_queue()}
        except RuntimeError:
            return []
        return [
            i
            for i, (has, seen) in enumerate(zip(have, availability, strict=False))
            if not has and not seen and i not in queued
        ]

    def unavailable_pieces(self, tid: TorrentId) -> tuple[int, int]:
        """(pieces this torrent lacks that no connected peer has, all its
        pieces): what only a seed, a web seed or the feed could still give.
        (0, 0) before a magnet's metadata."""
        handle = self._handle(tid)
        try:
            have = handle.status(lt.status_flags_t.query_pieces).pieces
            availability = list(handle.piece_availability())
        except RuntimeError:
            return 0, 0
        availability += [0] * (len(have) - len(availability))  # no peers: []
        held_by_nobody = [
            not has and not seen for has, seen in zip(have, availability, strict=False)
        ]
        return sum(held_by_nobody), len(have)

    def reannounce(self, tid: TorrentId) -> None:
        with contextlib.suppress(RuntimeError):
            self._handle(tid).force_reannounce()

    def set_upload_limit(self, tid: TorrentId, rate: int) -> None:
        self._handle(tid).set_upload_limit(rate)

    def remove(self, tid: TorrentId, *, delete_files: bool = False) -> None:
        """Drop a torrent; ``delete_files`` also deletes what it downloaded."""
        handle = self._handles.pop(tid, None)
        self._resume_dirs.pop(tid, None)
        self._geometry.pop(tid, None)
        if handle is not None:
            flags = lt.session.delete_files if delete_files else 0
            with contextlib.suppress(RuntimeError):
                self._session.remove_torrent(handle, flags)

    # Alerts --------------------------------------------------------------

    def events(self, timeout: float = 0.0) -> list[Event]:
        """Events since the last call, waiting up to ``timeout`` s for one."""
        if not self._pending and timeout > 0:
            self._session.wait_for_alert(int(timeout * 1000))
        out = self._pending
        self._pending = []
        for alert in self._session.pop_alerts():
            event = self._translate(alert)
            if event is not None:
                out.append(event)
        return out

    def _translate(self, alert: object) -> Event | None:
        tid = ""
        handle = getattr(alert, "handle", None)
        if handle is not None:
            with contextlib.suppress(RuntimeError, AttributeError):
                tid = _hex(handle.info_hashes())
        if tid and tid not in self._handles:
            return None
        if isinstance(alert, lt.torrent_finished_alert):
            return Finished(tid)
        if isinstance(alert, lt.metadata_received_alert):
            return MetadataReceived(tid)
        if isinstance(alert, lt.hash_failed_alert):
            return HashFailed(tid, int(alert.piece_index))
        if isinstance(alert, lt.peer_ban_alert):
            return PeerBanned(tid, _endpoint(alert))
        if isinstance(alert, lt.tracker_error_alert):
            return TrackerProblem(tid, str(alert.tracker_url()), alert.message(), True)
        if isinstance(alert, lt.tracker_warning_alert):
            return TrackerProblem(tid, str(alert.tracker_url()), alert.message(), False)
        if isinstance(alert, lt.torrent_error_alert | lt.file_error_alert):
            return TorrentError(tid, alert.message(), _os_errno(alert.error))
        if isinstance(alert, lt.fastresume_rejected_alert):
            return TorrentError(tid, f"resume data rejected, re-checking: {alert.message()}")
        return None

    # Resume data ---------------------------------------------------------

    def save_resume(self, tid: TorrentId, timeout: float = 10.0) -> Path | None:
        """Write the torrent's resume data atomically; None if it has no resume dir.

        Raises ``EngineError`` if libtorrent fails to produce it in time,
        ``DestinationError`` (``DiskFull``) if the file cannot be written.
        """
        resume_dir = self._resume_dirs.get(tid)
        if resume_dir is None:
            return None
        self._handle(tid).save_resume_data(lt.torrent_handle.save_info_dict)
        alert = self._wait_alert(
            tid, (lt.save_resume_data_alert, lt.save_resume_data_failed_alert), timeout
        )
        if alert is None:
            raise EngineError("timed out saving resume data", info_hash=tid)
        if isinstance(alert, lt.save_resume_data_failed_alert):
            raise EngineError(f"cannot save resume data: {alert.message()}", info_hash=tid)
        data = lt.write_resume_data_buf(alert.params)  # type: ignore[attr-defined]
        try:
            return _write_atomic(_resume_path(resume_dir, tid), bytes(data))
        except OSError as exc:
            raise disk_error(exc, resume_dir, f"cannot write resume data in {resume_dir}") from exc

    def flush(self, tid: TorrentId, timeout: float = 60.0) -> None:
        """Wait until every piece received is written to the file.

        libtorrent reports a torrent finished once all pieces passed their
        hash check, which can be before the last writes reach the file;
        whoever reads the file next (extraction) must call this first.
        Raises ``EngineError`` on timeout.
        """
        self._handle(tid).flush_cache()
        if self._wait_alert(tid, (lt.cache_flushed_alert,), timeout) is None:
            raise EngineError("timed out writing the download to disk", info_hash=tid)

    def _wait_alert(self, tid: TorrentId, kinds: tuple[type, ...], timeout: float) -> object | None:
        """The first alert of ``kinds`` for ``tid``; others are kept for events()."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._session.wait_for_alert(100)
            for i, alert in enumerate(alerts := self._session.pop_alerts()):
                if isinstance(alert, kinds) and _alert_tid(alert) == tid:
                    for rest in alerts[i + 1 :]:
                        event = self._translate(rest)
                        if event is not None:
                            self._pending.append(event)
                    return alert
                event = self._translate(alert)
                if event is not None:
                    self._pending.append(event)
        return None

    def close(self) -> None:
        """Stop every torrent (announcing ``stopped``) and end the session."""
        if self._closed:
            return
        self._closed = True
        self._handles.clear()
        with contextlib.suppress(RuntimeError):
            self._session.pause()
        # Dropping the last reference waits (bounded by stop_tracker_timeout)
        # for the `stopped` announces.
        del self._session

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _announce_urls(torrent: object) -> list[str]:
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


def with_query_param(url: str, key: str, value: str) -> str:
    """``url`` with ``key=value`` added to its query (pure)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}{key}={value}"


def _free_port(config: EngineConfig) -> int:
    """A TCP port free on ``config.listen_interface`` (all of them for 0.0.0.0)."""
    host = config.listen_interface.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])
    except OSError:
        return 0  # not an address (an interface name): let libtorrent choose


def _rooted_files(decoded: Any, root: Path) -> dict[int, str]:
    """Each real file of a multi-file torrent at ``root/PATH`` (absolute:
    libtorrent then ignores the save path), pads left alone. Read from the
    bdecoded torrent (libtorrent's file_storage accessors are deprecated in
    these bindings); its files keep their listed order and indices."""
    info = decoded.get(b"info", {}) if isinstance(decoded, dict) else {}
    renamed = {}
    for index, entry in enumerate(info.get(b"files") or []):
        if b"p" in entry.get(b"attr", b""):
            continue
        parts = [os.fsdecode(part) for part in entry.get(b"path", [])]
        renamed[index] = str(root.joinpath(*parts))
    return renamed


def _vouch_for_disk(atp: Any, info: Any, save_path: Path) -> None:
    """Mark as had the pieces that resume data does not vouch for but that
    the files on disk hold, hashed here.

    Resume data is saved every few seconds; a worker killed outright (power
    cut, OOM killer, SIGKILL) leaves pieces on disk that its last save does
    not list, and libtorrent trusts resume data over the disk: it would
    download them again. Without resume data libtorrent checks every piece
    itself, so only pieces that resume data leaves out are read here, and a
    piece lying in a hole of the sparse file is skipped unread.
    """
    if atp.have_pieces and all(atp.have_pieces):
        return
    if info.num_files() != 1:
        return  # single-file only: a multi-file download fetches those pieces again
    count = info.num_pieces()
    have = (list(atp.have_pieces) + [False] * count)[:count]
    found = 0
    try:
        fd = os.open(save_path / info.name(), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no file yet: nothing to vouch for
    try:
        for piece in (i for i in range(count) if not have[i]):
            size = info.piece_size(piece)
            data = _read_unless_hole(fd, piece * info.piece_length(), size)
            if data is not None and hashlib.sha1(data).digest() == info.hash_for_piece(piece):
                have[piece] = True
                found += 1
    except OSError:
        pass  # unreadable from here on: what was found so far stands
    finally:
        os.close(fd)
    if found:
        atp.have_pieces = have


def _read_unless_hole(fd: int, offset: int, size: int) -> bytes | None:
    """``size`` bytes at ``offset``; None if they are short or all a hole."""
    try:
        if os.lseek(fd, offset, os.SEEK_DATA) >= offset + size:
            return None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # nothing but a hole from offset on
            return None
        # No SEEK_DATA on this file system: read and hash.
    data = os.pread(fd, size, offset)
    return data if len(data) == size else None


def _os_errno(code: Any) -> int | None:
    """The OS errno of a libtorrent ``error_code``, None for its own errors."""
    try:
        if code.value() and code.category().name() in ("system", "generic"):
            return int(code.value())
    except (AttributeError, RuntimeError):
        pass
    return None


def _alert_tid(alert: object) -> str:
    try:
        return _hex(alert.handle.info_hashes())  # type: ignore[attr-defined]
    except (RuntimeError, AttributeError):
        return ""


def _endpoint(alert: object) -> str:
    ip = getattr(alert, "ip", None) or getattr(alert, "endpoint", None)
    if isinstance(ip, tuple):
        return f"{ip[0]}:{ip[1]}"
    return str(ip)


def _resume_path(resume_dir: Path, tid: TorrentId) -> Path:
    return Path(resume_dir) / f"{tid}.resume"


def _write_atomic(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, data)

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
dataclasses; numbers come from :meth:`Engine.status`. Those types and
:class:`EngineConfig` live in :mod:`roost.enginetypes`, which does not import
libtorrent (the peer's front process builds a config without loading it);
this module re-exports them.

Every libtorrent exception is translated here, in one place
(:func:`_libtorrent`): a failure becomes :class:`~roost.errors.LibtorrentError`
(an ``EngineError`` carrying the operation, libtorrent's reason and the
info-hash), and a read of a torrent whose handle libtorrent no longer knows
answers nothing (:func:`_unless_gone`). Nothing above this module ever sees
a libtorrent type.

Resume data: :meth:`Engine.save_resume` asks libtorrent for it, waits for the
answer (buffering other alerts for :meth:`events`) and writes it atomically
to ``resume_dir/INFOHASH.resume``; :meth:`Engine.add` loads it back, so a
restarted download skips the re-hash of what it already had. Resume data
vouches only for what it lists: the pieces it leaves out (completed after
the last save, before a SIGKILL) are hashed from the disk at add, and those
that match are not downloaded again (:mod:`roost.enginedisk`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import libtorrent as lt

from roost._fs import atomic_write
from roost.enginedisk import rooted_files, vouch_for_disk
from roost.enginetypes import (
    EngineConfig,
    Event,
    Finished,
    HashFailed,
    MetadataReceived,
    PeerBanned,
    Status,
    TorrentError,
    TorrentId,
    TrackerProblem,
    announce_unreachable,
    announce_urls,
    lan_settings,
    with_query_param,
)
from roost.errors import EngineError, LibtorrentError, disk_error

_ALERT_MASK = (
    lt.alert.category_t.status_notification
    | lt.alert.category_t.error_notification
    | lt.alert.category_t.peer_notification
    | lt.alert.category_t.storage_notification
    | lt.alert.category_t.tracker_notification
)


def settings_pack(config: EngineConfig) -> dict[str, object]:
    """The session's settings for ``config``: :func:`lan_settings` and the
    alerts the engine reads (pure; tested on its own)."""
    return {**lan_settings(config), "alert_mask": int(_ALERT_MASK)}


def _hex(info_hashes: object) -> TorrentId:
    v1 = getattr(info_hashes, "v1", info_hashes)
    return str(v1)


def _state_name(state: object) -> str:
    return str(state).rsplit(".", 1)[-1]


#: What libtorrent's bindings raise: RuntimeError for its C++ errors (a
#: torrent it cannot read or add, an invalid handle), TypeError (boost.python's
#: ArgumentError) and ValueError for arguments they cannot convert. The
#: session's own calls (alerts, settings, listen port) do not raise.
_LIBTORRENT_RAISES: tuple[type[Exception], ...] = (RuntimeError, TypeError, ValueError)


@contextlib.contextmanager
def _libtorrent(
    operation: str, info_hash: TorrentId | None = None, *, also: tuple[type[Exception], ...] = ()
) -> Iterator[None]:
    """Raise what libtorrent raises in the block as ``LibtorrentError``.

    ``operation`` is what failed in the words the user reads before
    libtorrent's reason ("cannot add torrent"); ``also`` names what roost's
    own steps in the block raise for the same operation (the save path's
    ``OSError``).
    """
    try:
        yield
    except _LIBTORRENT_RAISES + also as exc:
        raise LibtorrentError(operation, str(exc), info_hash=info_hash) from exc


def _unless_gone(*also: type[Exception]) -> contextlib.suppress:
    """For a call that answers nothing (None, [], no-op) once libtorrent no
    longer knows the handle (the torrent removed, the session closing): what
    libtorrent raises then is dropped and the caller falls through to its
    empty answer. ``also``: what a duck-typed alert or error code raises
    when it lacks the attribute (``AttributeError``)."""
    return contextlib.suppress(RuntimeError, *also)


_CHECKING = frozenset(
    {lt.torrent_status.states.checking_files, lt.torrent_status.states.checking_resume_data}
)


def _checking(handle: Any) -> bool:
    """Whether libtorrent is checking this torrent (False once it is gone)."""
    with _unless_gone():
        return handle.status(0).state in _CHECKING
    return False


def _held_by_nobody(handle: Any) -> list[bool]:
    """Per piece: whether this torrent lacks it and no connected peer has it
    (whether or not libtorrent has begun it: a piece begun from a peer that
    left stays in its download queue). [] before a magnet's metadata."""
    have = handle.status(lt.status_flags_t.query_pieces).pieces
    if all(have):  # complete (or no metadata yet): nobody is asked
        return [False] * len(have)
    availability = list(handle.piece_availability())
    availability += [0] * (len(have) - len(availability))  # no peer connected: []
    return [not has and not seen for has, seen in zip(have, availability, strict=True)]


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
            with _libtorrent("cannot start the BitTorrent session"):
                self._session = lt.session(cast(Any, settings_pack(config)))
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
        with _libtorrent("not a valid .torrent"):
            decoded: Any = lt.bdecode(torrent_bytes)
            info = lt.torrent_info(decoded)
            if role is not None:
                urls = list(trackers) if trackers is not None else announce_urls(decoded)
                trackers = [with_query_param(url, "role", role) for url in urls]
            if trackers is not None and isinstance(decoded, dict):
                # Announce only where told from the first announce on (a
                # replace_trackers after adding comes after the first one).
                for key in (b"announce", b"announce-list"):
                    decoded.pop(key, None)
                info = lt.torrent_info(cast(Any, decoded))
        tid = _hex(info.info_hashes())
        if tid in self._handles:
            raise EngineError("torrent added twice", info_hash=tid)
        resumed = None if seed_mode else self._resumed(resume_dir, tid)
        atp = resumed or lt.add_torrent_params()
        atp.ti = info
        atp.save_path = str(save_path)
        if files_root is not None:
            # libtorrent takes a relative file path as relative to save_path.
            atp.renamed_files = rooted_files(decoded, Path(files_root).absolute())
        if have and resumed is None and not seed_mode:
            marks = [False] * info.num_pieces()
            for piece in have:
                marks[piece] = True
            atp.have_pieces = marks
        if resumed is not None:
            vouch_for_disk(atp, info, Path(save_path))
        atp.flags &= ~lt.torrent_flags.duplicate_is_error
        if seed_mode:
            atp.flags |= lt.torrent_flags.seed_mode
        if super_seeding:
            atp.flags |= lt.torrent_flags.super_seeding
        if web_seeds:
            atp.url_seeds = list(web_seeds)
        if upload_limit:
            atp.upload_limit = upload_limit
        if download_limit:
            atp.download_limit = download_limit
        if trackers is not None:
            atp.trackers = list(trackers)
            atp.tracker_tiers = list(range(len(atp.trackers)))
        with _libtorrent("cannot add torrent", tid, also=(OSError,)):
            handle = self._add_started(atp)
        self._register(tid, handle, resume_dir)
        self._geometry[tid] = (info.piece_length(), info.total_size())
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
        with _libtorrent("not a valid magnet link"):
            atp = lt.parse_magnet_uri(uri)
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
            vouch_for_disk(atp, resumed.ti, Path(save_path))
        if web_seeds:
            atp.url_seeds = list(atp.url_seeds) + list(web_seeds)
        with _libtorrent("cannot add magnet link", tid, also=(OSError,)):
            handle = self._add_started(atp)
            if trackers is not None:
                handle.replace_trackers([lt.announce_entry(url) for url in trackers])
        self._register(tid, handle, resume_dir)
        return tid

    def _add_started(self, atp: Any) -> lt.torrent_handle:
        """Add ``atp`` to the session, started: never paused, never
        auto-managed, no PEX unless configured. Raises what libtorrent and
        the save path's mkdir raise (the caller translates them)."""
        atp.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
        if not self.config.pex:
            atp.flags |= lt.torrent_flags.disable_pex
        Path(atp.save_path).mkdir(parents=True, exist_ok=True)
        return self._session.add_torrent(atp)

    def _register(self, tid: TorrentId, handle: lt.torrent_handle, resume_dir: Path | None) -> None:
        self._handles[tid] = handle
        if resume_dir is not None:
            self._resume_dirs[tid] = Path(resume_dir)

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
        except _LIBTORRENT_RAISES as exc:
            # Stale or damaged resume data only costs a re-hash: an event, not an error.
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
        with _unless_gone():
            info = handle.torrent_file()
            section = bytes(info.info_section()) if info is not None else b""
            return b"d4:info" + section + b"e" if section else None
        return None

    def _handle(self, tid: TorrentId) -> lt.torrent_handle:
        try:
            return self._handles[tid]
        except KeyError:
            raise EngineError("no such torrent in this engine", info_hash=tid) from None

    def status(self, tid: TorrentId) -> Status:
        handle = self._handle(tid)
        with _libtorrent("cannot read torrent status", tid):
            st = handle.status()
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
        handle = self._handle(tid)
        with _libtorrent(f"cannot connect to {address}:{port}", tid):
            handle.connect_peer((address, port))

    # Safe from any thread (the feed's): libtorrent posts handle calls to its
    # own network thread, and these only read the handle table.

    def add_piece(self, tid: TorrentId, index: int, data: bytes) -> None:
        """Hand libtorrent a piece fetched by other means (the origin's feed):
        it is hashed like a downloaded one, then announced and served. A
        piece that fails its hash is reported as ``HashFailed``."""
        handle = self._handles.get(tid)
        if handle is None:
            return
        length, total = self._geometry.get(tid, (0, 0))
        size = min(length, total - index * length)
        if index < 0 or size <= 0 or len(data) > size:
            raise ValueError(f"piece {index} of {len(data)} bytes is not one of this torrent's")
        if len(data) < size:  # the rest is a BEP 47 pad: zeros, not sent
            data = bytes(data) + bytes(size - len(data))
        # libtorrent drops a piece added while it checks the torrent's files
        # or resume data, silently (its PR 4770): wait for the check's end.
        while _checking(handle):
            time.sleep(0.01)
        with _libtorrent(f"cannot add piece {index}", tid):
            handle.add_piece(index, bytes(data), 0)

    def checked(self, tid: TorrentId) -> bool:
        """Whether libtorrent is done checking this torrent's files and
        resume data (pieces added before then would be lost; :meth:`add_piece`
        waits for it). False for a torrent that is gone."""
        handle = self._handles.get(tid)
        return handle is not None and handle.is_valid() and not _checking(handle)

    def have(self, tid: TorrentId) -> list[bool]:
        """Per piece, whether this torrent holds it ([] if it is gone, or
        before a magnet's metadata). Safe from any thread."""
        handle = self._handles.get(tid)
        if handle is None:
            return []
        with _unless_gone():
            return list(handle.status(lt.status_flags_t.query_pieces).pieces)
        return []

    def missing_pieces(self, tid: TorrentId) -> list[int]:
        """Pieces this torrent does not have yet (sorted)."""
        return [i for i, has in enumerate(self.have(tid)) if not has]

    def pieces_if_complete(self, tid: TorrentId) -> int:
        """How many pieces this torrent has once it holds every one of them;
        0 before then (or before a magnet's metadata)."""
        have = self.have(tid)
        return len(have) if have and all(have) else 0

    def orphan_pieces(self, tid: TorrentId) -> list[int]:
        """Pieces this torrent lacks that no connected peer has: what only
        the origin can still give. (A piece begun from a peer that left stays
        in libtorrent's download queue, half there: it is an orphan too.)"""
        handle = self._handles.get(tid)
        if handle is None:
            return []
        with _unless_gone():
            return [i for i, nobody in enumerate(_held_by_nobody(handle)) if nobody]
        return []

    def alone(self, tid: TorrentId) -> bool:
        """Whether this torrent has heard from a tracker and has no peer,
        connected or to try: no swarm can give it anything (a host that
        comes after the others have gone)."""
        handle = self._handles.get(tid)
        if handle is None:
            return False
        with _unless_gone():
            st = handle.status()
            return bool(st.current_tracker) and st.num_peers == 0 and st.connect_candidates == 0
        return False

    def unavailable_pieces(self, tid: TorrentId) -> tuple[int, int]:
        """(pieces this torrent lacks that no connected peer has, all its
        pieces): what only a seed, a web seed or the feed could still give.
        (0, 0) before a magnet's metadata."""
        handle = self._handle(tid)
        with _unless_gone():
            nobody = _held_by_nobody(handle)
            return sum(nobody), len(nobody)
        return 0, 0

    def reannounce(self, tid: TorrentId) -> None:
        handle = self._handle(tid)
        with _unless_gone():
            handle.force_reannounce()

    def set_role(self, tid: TorrentId, role: str | None) -> None:
        """Announce ``role=ROLE`` from now on (None: no role), at once: a fed
        peer whose feed cannot be reached goes on as a plain peer, which
        roost's tracker hands the origin's seeder too (roost.peer). Every
        announce says the role afresh, so the tracker's view follows."""
        handle = self._handle(tid)
        with _libtorrent("cannot change the announce URLs", tid):
            entries = []
            for old in handle.trackers():
                entry = lt.announce_entry(with_query_param(str(old["url"]), "role", role))
                entry.tier = int(old["tier"])
                entries.append(entry)
            handle.replace_trackers(entries)
            handle.force_reannounce()

    def set_upload_limit(self, tid: TorrentId, rate: int) -> None:
        handle = self._handle(tid)
        with _libtorrent("cannot set the upload limit", tid):
            handle.set_upload_limit(rate)

    def remove(self, tid: TorrentId, *, delete_files: bool = False) -> None:
        """Drop a torrent; ``delete_files`` also deletes what it downloaded."""
        handle = self._handles.pop(tid, None)
        self._resume_dirs.pop(tid, None)
        self._geometry.pop(tid, None)
        if handle is not None:
            flags = lt.session.delete_files if delete_files else 0
            with _unless_gone():
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
            with _unless_gone(AttributeError):
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
        if isinstance(alert, lt.tracker_error_alert | lt.tracker_warning_alert):
            url = str(alert.tracker_url())
            if announce_unreachable(_local_address(alert), url):
                return None  # its other listen sockets announce
            fatal = isinstance(alert, lt.tracker_error_alert)
            return TrackerProblem(tid, url, alert.message(), fatal)
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
        handle = self._handle(tid)
        with _libtorrent("cannot save resume data", tid):
            handle.save_resume_data(lt.torrent_handle.save_info_dict)
        alert = self._wait_alert(
            tid, (lt.save_resume_data_alert, lt.save_resume_data_failed_alert), timeout
        )
        if alert is None:
            raise EngineError("timed out saving resume data", info_hash=tid)
        if isinstance(alert, lt.save_resume_data_failed_alert):
            raise EngineError(f"cannot save resume data: {alert.message()}", info_hash=tid)
        with _libtorrent("cannot save resume data", tid):
            data = bytes(lt.write_resume_data_buf(alert.params))  # type: ignore[attr-defined]
        try:
            resume_dir.mkdir(parents=True, exist_ok=True)
            return atomic_write(_resume_path(resume_dir, tid), data)
        except OSError as exc:
            raise disk_error(exc, resume_dir, f"cannot write resume data in {resume_dir}") from exc

    def flush(self, tid: TorrentId, timeout: float = 60.0) -> None:
        """Wait until every piece received is written to the file.

        libtorrent reports a torrent finished once all pieces passed their
        hash check, which can be before the last writes reach the file;
        whoever reads the file next (extraction) must call this first.
        Raises ``EngineError`` on timeout.
        """
        handle = self._handle(tid)
        with _libtorrent("cannot write the download to disk", tid):
            handle.flush_cache()
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
        with _unless_gone():
            self._session.pause()
        # Dropping the last reference waits (bounded by stop_tracker_timeout)
        # for the `stopped` announces.
        del self._session

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def _os_errno(code: Any) -> int | None:
    """The OS errno of a libtorrent ``error_code``, None for its own errors."""
    with _unless_gone(AttributeError):
        if code.value() and code.category().name() in ("system", "generic"):
            return int(code.value())
    return None


def _alert_tid(alert: object) -> str:
    with _unless_gone(AttributeError):
        return _hex(alert.handle.info_hashes())  # type: ignore[attr-defined]
    return ""


def _local_address(alert: object) -> str:
    """The address of the listen socket an announce alert is about ("" if none)."""
    endpoint = getattr(alert, "local_endpoint", None)
    if isinstance(endpoint, tuple) and endpoint:
        return str(endpoint[0])
    return ""


def _endpoint(alert: object) -> str:
    ip = getattr(alert, "ip", None) or getattr(alert, "endpoint", None)
    if isinstance(ip, tuple):
        return f"{ip[0]}:{ip[1]}"
    return str(ip)


def _resume_path(resume_dir: Path, tid: TorrentId) -> Path:
    return Path(resume_dir) / f"{tid}.resume"

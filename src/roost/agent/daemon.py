"""The agent: a daemon on each host that follows a release channel.

Theory of operation
-------------------
One :class:`Agent` per destination, driven by one thread (``run`` or
``cycle``), owning one long-lived engine (the "management daemon" of the
deployment-with-torrents seed: it downloads *and seeds* the releases). Every
``interval`` seconds it fetches ``channel.json`` (conditional GET) and
reconciles the host with the channel's ``current`` release:

1. already active: nothing to do;
2. installed before (a rollback): no download;
3. otherwise: fetch the ``.torrent`` beside channel.json, check it is the
   info-hash the channel names, download it with the shared engine into
   ``TEMP/INFOHASH/`` (``roost.peer.Download``: resume data, flush before
   reading) and install it atomically at ``DEST/releases/TAG``
   (``roost.extract.install_release``);
4. run the hook (``ROOST_TAG``, ``ROOST_PATH``, ``ROOST_INFO_HASH``,
   ``ROOST_PREVIOUS``) in the release's directory, on every activation, but
   once only per install (``roost.installed``): an agent killed between the
   hook and the switch does not run it twice; if it fails the release is
   *rejected*: the old one stays active and the agent does not retry it until
   the channel's current changes;
5. activate: the symlink ``DEST/current.tmp -> releases/TAG`` is renamed over
   ``DEST/current`` (atomic: a reader sees the old release or the new one);
6. seed the current and previous releases (later hosts pull from this one),
   stop seeding the rest, prune installed releases beyond ``keep`` (never the
   current or previous), save the state file ``DEST/.roost-agent.json``.

Any failure (unreachable channel, bad JSON, bad torrent, unknown tag, failed
download) is one log line and a retry after a backoff; the agent itself never
stops on bad input. ``stop()`` (SIGTERM) ends a download with its resume data
saved, and closes the engine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost.agent.state import (
    CACHE_DIR,
    CURRENT,
    LOCK_FILE,
    RELEASES,
    STATE_FILE,
    AgentState,
    lock_destination,
)
from roost.channel import (
    Channel,
    ChannelEntry,
    channel_base,
    channel_document_url,
    fetch,
    parse_channel,
    resolve,
)
from roost.engine import Engine, EngineConfig
from roost.errors import ChannelError, DestinationError, HookError, RoostError, UsageError
from roost.installed import remove_records, run_hook, run_hook_once
from roost.peer import Download, PeerConfig

Say = Callable[[str], None]

MAX_BACKOFF = 300.0


@dataclass(frozen=True)
class AgentConfig:
    channel: str  # URL of the channel directory (or its channel.json), file:// or path
    dest: Path
    interval: float = 10.0
    keep: int = 3
    hook: str | None = None
    temp_path: Path | None = None  # default DEST/.roost-cache
    listen_interface: str = "0.0.0.0"
    listen_port: int = 0
    announce_ip: str | None = None
    upload_limit: int = 0
    download_limit: int = 0
    download_timeout: float = 3600.0
    trackers: tuple[str, ...] | None = None
    #: keep the releases' setuid/setgid/sticky bits (stripped by default)
    keep_setid: bool = False

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise UsageError(f"--interval must be positive, got {self.interval:g}")
        if self.keep < 1:
            raise UsageError(f"--keep must be at least 1, got {self.keep}")

    @property
    def cache(self) -> Path:
        return self.temp_path or Path(self.dest) / CACHE_DIR


class Agent:
    """Follow one channel for one destination. One thread drives it.

    Raises ``UsageError`` (bad destination, another agent holds it) from the
    constructor; ``cycle`` raises ``RoostError`` subclasses, ``run`` never.
    """

    def __init__(self, config: AgentConfig, say: Say | None = None):
        self.config = config
        self.dest = Path(config.dest).absolute()
        self.say: Say = say or (lambda _line: None)
        try:
            (self.dest / RELEASES).mkdir(parents=True, exist_ok=True)
            config.cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {self.dest}/{RELEASES}: {exc.strerror}") from exc
        self._lock = lock_destination(self.dest / LOCK_FILE)
        self._stop = threading.Event()
        self._channel: Channel | None = None
        self._validator: str | None = None
        self._downloads: dict[str, Download] = {}  # info-hash -> torrent in the engine
        self._tags: dict[str, str] = {}  # info-hash -> tag
        try:
            self.state = AgentState.load(self.dest)
            self.state.channel = config.channel
            self.engine = Engine(
                EngineConfig(
                    listen_interface=config.listen_interface,
                    listen_port=config.listen_port,
                    announce_ip=config.announce_ip,
                    upload_limit=config.upload_limit,
                    download_limit=config.download_limit,
                )
            )
        except BaseException:  # a bad state file, no port: the destination is free again
            self._lock.close()
            raise
        try:
            for tag in (self.state.current, self.state.previous):
                if tag:
                    self._resume_seeding(tag)
        except BaseException:
            self.close()
            raise

    # Driving -----------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` (or a download in progress) to end; safe from any thread."""
        self._stop.set()

    def run(self) -> None:
        """Poll and apply until :meth:`stop`; failures back off and retry."""
        failures = 0
        while not self._stop.is_set():
            try:
                self.cycle()
                failures = 0
                delay = self.config.interval
            except RoostError as exc:
                if self._stop.is_set():
                    break
                failures += 1
                delay = min(self.config.interval * 2 ** min(failures - 1, 10), MAX_BACKOFF)
                delay = max(delay, self.config.interval)
                self.say(f"error: {exc} (retrying in {delay:g}s)")
            self._idle(delay)

    def _idle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.engine.events(min(0.5, max(0.0, deadline - time.monotonic())))

    def cycle(self) -> str:
        """One poll-and-apply; returns what happened (``activated``,
        ``unchanged``, ``rejected``, ``empty``). Raises ``RoostError``."""
        self.state.last_poll = time.time()
        try:
            try:
                outcome = self._cycle()
            except OSError as exc:  # a full or read-only disk, a vanished directory
                where = f" ({exc.filename})" if exc.filename else ""
                raise DestinationError(f"{exc.strerror or exc}{where}") from exc
        except RoostError as exc:
            self.state.last_error = str(exc)
            self.state.last_error_at = time.time()
            self._save()
            raise
        self.state.last_ok = time.time()
        if outcome != "rejected":
            self.state.last_error = None
        self._save()
        return outcome

    def close(self) -> None:
        """Save resume data, stop seeding, release the destination (also when
        stopping the engine fails)."""
        try:
            for info_hash, download in self._downloads.items():
                download.close()
                # Removed before the session goes (an in-process tracker must not
                # wait on a session destructor holding the GIL).
                self.engine.remove(info_hash)
            self._downloads.clear()
            self.engine.close()
            with contextlib.suppress(OSError):
                self._save()
        finally:
            self._lock.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # One cycle -----------------------------------------------------------------

    def _cycle(self) -> str:
        channel = self._poll()
        entry = channel.current_entry
        if entry is None:
            return "empty"
        rejected = self.state.rejected
        if rejected and (rejected.get("tag"), rejected.get("info_hash")) != (
            entry.tag,
            entry.info_hash,
        ):
            self.state.rejected = rejected = None
        if self._is_active(entry):
            self._update_seeding_stats()
            return "unchanged"
        if rejected:
            self._update_seeding_stats()
            return "rejected"
        rollback = self._installed_before(entry)
        path = self._obtain(entry)
        previous = self.state.current
        try:
            if self.config.hook:
                env = {"ROOST_PREVIOUS": previous or "", "ROOST_CHANNEL": self.config.channel}
                (run_hook if rollback else run_hook_once)(
                    self.config.hook,
                    tag=entry.tag,
                    path=path,
                    info_hash=entry.info_hash,
                    extra_env=env,
                )
        except HookError as exc:
            self.state.rejected = {
                "tag": entry.tag,
                "info_hash": entry.info_hash,
                "error": str(exc),
            }
            self.state.last_error = f"release {entry.tag} rejected: {exc}"
            self.state.last_error_at = time.time()
            self.say(f"rejected {entry.tag}: {exc}; {previous or 'nothing'} stays active")
            return "rejected"
        self._activate(entry.tag)
        if previous != entry.tag:
            self.state.previous = previous
        self.state.current = entry.tag
        self.say(f"activated {entry.tag} ({path}); previous {previous or 'none'}")
        self._reconcile_seeding()
        self._prune()
        self._update_seeding_stats()
        return "activated"

    def _poll(self) -> Channel:
        fetched = fetch(channel_document_url(self.config.channel), self._validator)
        if fetched.data is None and self._channel is not None:
            return self._channel
        if fetched.data is None:  # unchanged but nothing cached: ask again in full
            fetched = fetch(channel_document_url(self.config.channel))
        assert fetched.data is not None
        channel = parse_channel(fetched.data)
        self._channel, self._validator = channel, fetched.validator
        return channel

    def _is_active(self, entry: ChannelEntry) -> bool:
        if self.state.current != entry.tag or self.state.info_hash(entry.tag) != entry.info_hash:
            return False
        link = self.dest / CURRENT
        return link.is_symlink() and os.readlink(link) == f"{RELEASES}/{entry.tag}"

    def _installed_before(self, entry: ChannelEntry) -> bool:
        """Installed and recorded in the state by an earlier, whole cycle."""
        target = self.dest / RELEASES / entry.tag
        return self.state.info_hash(entry.tag) == entry.info_hash and target.is_dir()

    def _obtain(self, entry: ChannelEntry) -> Path:
        """The installed tree of ``entry``, downloading it if needed."""
        target = self.dest / RELEASES / entry.tag
        known = self.state.info_hash(entry.tag)
        if self._installed_before(entry):
            return target  # a rollback needs no download
        if known is not None and known != entry.info_hash and entry.tag == self.state.current:
            raise ChannelError(
                f"release {entry.tag} was republished with other content "
                f"({entry.info_hash}); refusing to replace the active release"
            )
        return self._download(entry)

    def _download(self, entry: ChannelEntry) -> Path:
        from roost.extract import install_release
        from roost.release import read_torrent

        url = resolve(channel_base(self.config.channel), entry.torrent)
        torrent = fetch(url).data
        assert torrent is not None
        meta = read_torrent(torrent)
        if meta.info_hash != entry.info_hash:
            raise ChannelError(
                f"{url} has info-hash {meta.info_hash}, the channel says {entry.info_hash}"
            )
        if meta.tag != entry.tag:
            raise ChannelError(f"{url} holds release {meta.tag!r}, the channel says {entry.tag!r}")
        started = time.monotonic()
        download = self._add(entry.tag, entry.info_hash, torrent, feed=entry.feed)
        deadline = started + self.config.download_timeout
        peers = 0

        def emit(event: dict[str, Any]) -> None:
            nonlocal peers
            peers = max(peers, int(event.get("peers", 0)))

        def should_stop() -> str | None:
            if self._stop.is_set():
                return "the agent is stopping"
            if time.monotonic() > deadline:
                return f"timed out after {self.config.download_timeout:g}s"
            return None

        self.say(f"downloading {entry.tag} ({entry.info_hash})")
        download.run_until_complete(emit, should_stop)
        status = self.engine.status(entry.info_hash)
        payload = self.config.cache / entry.info_hash / meta.name
        result = install_release(
            payload, meta, self.dest / RELEASES, clean=True, keep_setid=self.config.keep_setid
        )
        self.state.installed = [e for e in self.state.installed if e.get("tag") != entry.tag]
        self.state.installed.append(
            {"tag": entry.tag, "info_hash": entry.info_hash, "installed": round(time.time(), 3)}
        )
        self.state.last_download = {
            "tag": entry.tag,
            "bytes": status.downloaded,
            "seconds": round(time.monotonic() - started, 3),
            "peers": peers,
        }
        return result.path

    # Seeding -------------------------------------------------------------------

    def _add(self, tag: str, info_hash: str, torrent: bytes, feed: str | None = None) -> Download:
        if info_hash in self._downloads:
            return self._downloads[info_hash]
        wdir = self.config.cache / info_hash
        wdir.mkdir(parents=True, exist_ok=True)
        torrent_file = wdir / "release.torrent"
        torrent_file.write_bytes(torrent)
        peer_config = PeerConfig(
            torrent=torrent_file,
            dest=self.dest / RELEASES,
            temp_path=self.config.cache,
            trackers=self.config.trackers,
            feed=feed,
        )
        download = Download(peer_config, torrent, info_hash, engine=self.engine)
        self._downloads[info_hash] = download
        self._tags[info_hash] = tag
        return download

    def _resume_seeding(self, tag: str) -> None:
        """Seed an installed release again after a restart, if its payload is kept."""
        from roost.release import read_torrent

        info_hash = self.state.info_hash(tag)
        if info_hash is None:
            return
        try:
            torrent = (self.config.cache / info_hash / "release.torrent").read_bytes()
            meta = read_torrent(torrent)
            if not (self.config.cache / info_hash / meta.name).is_file():
                return
            self._add(tag, info_hash, torrent)
        except (OSError, RoostError) as exc:
            self.say(f"not seeding {tag}: {exc}")

    def _reconcile_seeding(self) -> None:
        """Seed exactly the current and previous releases; drop the other payloads."""
        keep = {self.state.info_hash(t) for t in (self.state.current, self.state.previous) if t}
        for info_hash in list(self._downloads):
            if info_hash not in keep:
                self._downloads.pop(info_hash).close()
                self.engine.remove(info_hash)
                self._tags.pop(info_hash, None)
                shutil.rmtree(self.config.cache / info_hash, ignore_errors=True)
        for tag in (self.state.current, self.state.previous):
            wanted = self.state.info_hash(tag) if tag else None
            if tag and wanted and wanted not in self._downloads:
                self._resume_seeding(tag)

    def _update_seeding_stats(self) -> None:
        stats = []
        for info_hash, tag in self._tags.items():
            with contextlib.suppress(RoostError):
                st = self.engine.status(info_hash)
                stats.append(
                    {
                        "tag": tag,
                        "info_hash": info_hash,
                        "uploaded": st.uploaded,
                        "peers": st.num_peers,
                        "seeding": st.is_seeding,
                    }
                )
        self.state.seeding = stats

    # Activation and pruning ----------------------------------------------------

    def _activate(self, tag: str) -> None:
        """Point ``DEST/current`` at ``releases/TAG`` atomically."""
        link = self.dest / CURRENT
        if link.exists() and not link.is_symlink():
            raise DestinationError(f"{link} exists and is not a symlink; not replacing it")
        tmp = self.dest / f"{CURRENT}.tmp"
        try:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(f"{RELEASES}/{tag}", tmp)
            os.replace(tmp, link)
        except OSError as exc:
            raise DestinationError(f"cannot switch {link} to {tag}: {exc.strerror}") from exc

    def _prune(self) -> None:
        protected = {t for t in (self.state.current, self.state.previous) if t}
        others = sorted(
            (e for e in self.state.installed if e.get("tag") not in protected),
            key=lambda e: float(e.get("installed", 0)),
            reverse=True,
        )
        room = max(0, self.config.keep - len(protected))
        for entry in others[room:]:
            tag = str(entry["tag"])
            if self._remove_release(tag):
                self.state.installed.remove(entry)
                self.say(f"pruned {tag}")

    def _remove_release(self, tag: str) -> bool:
        target = self.dest / RELEASES / tag
        remove_records(target)
        if not target.exists() and not target.is_symlink():
            return True
        doomed = self.dest / RELEASES / f".{tag}.roost-pruning-{os.getpid()}"
        try:
            os.rename(target, doomed)
        except OSError as exc:
            self.say(f"cannot prune {tag}: {exc.strerror}")
            return False

        def writable(func: Any, path: str, _exc: Any) -> None:
            with contextlib.suppress(OSError):
                os.chmod(os.path.dirname(path), 0o700)
                func(path)

        shutil.rmtree(doomed, onerror=writable)
        return True

    def _save(self) -> None:
        try:
            self.state.save(self.dest)
        except OSError as exc:
            self.say(f"cannot save {self.dest / STATE_FILE}: {exc.strerror}")

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

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from roost import activation, events
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
    FETCH_TIMEOUT,
    Channel,
    ChannelEntry,
    channel_base,
    channel_document_url,
    fetch,
    host_rank,
    parse_channel,
    resolve,
)
from roost.engine import Engine, EngineConfig
from roost.errors import (
    ChannelError,
    DestinationError,
    HealthError,
    HookError,
    RoostError,
    SignatureError,
    UsageError,
)
from roost.installed import HOOK_TIMEOUT, run_hook, run_hook_once
from roost.peer.config import PeerConfig
from roost.peer.download import Download
from roost.rollout import DEFAULT_HEALTH_TIMEOUT, run_check
from roost.signing import NO_KEYS, TrustedKeys

Say = Callable[[str], None]
log = logging.getLogger(__name__)

MAX_BACKOFF = 300.0


@dataclass(frozen=True)
class AgentConfig:
    channel: str  # URL of the channel directory (or its channel.json), file:// or path
    dest: Path
    interval: float = 10.0
    keep: int = 3
    hook: str | None = None
    temp_path: Path | None = None  # default DEST/.roost-cache
    #: the one engine's listening address, announced address and rates
    engine: EngineConfig = field(default_factory=EngineConfig)
    download_timeout: float = 3600.0
    fetch_timeout: float = FETCH_TIMEOUT  # the whole GET of channel.json or a .torrent
    trackers: tuple[str, ...] | None = None
    trusted: TrustedKeys = NO_KEYS  # release signers to accept; empty: any release
    health: str | None = None  # run after activating; failing switches back
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    host: str = field(default_factory=socket.gethostname)  # this host's name in rollouts
    #: keep the releases' setuid/setgid/sticky bits (stripped by default)
    keep_setid: bool = False
    #: copy releases out of the cache (default: hard-link their own files)
    copy: bool = False
    hook_timeout: float = HOOK_TIMEOUT  # seconds; a hook still running is killed

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise UsageError(f"--interval must be positive, got {self.interval:g}")
        if self.keep < 1:
            raise UsageError(f"--keep must be at least 1, got {self.keep}")
        if self.fetch_timeout <= 0:
            raise UsageError(f"--fetch-timeout must be positive, got {self.fetch_timeout:g}")

    @property
    def cache(self) -> Path:
        return self.temp_path or Path(self.dest) / CACHE_DIR


class Agent:
    """Follow one channel for one destination. One thread drives it.

    Raises ``DestinationError`` (the destination cannot be made, another
    agent holds it) or ``AgentStateError`` from the constructor; ``cycle``
    raises ``RoostError`` subclasses, ``run`` never.
    """

    def __init__(self, config: AgentConfig, say: Say | None = None):
        self.config = config
        self.dest = Path(config.dest).absolute()
        self.say: Say = say or (lambda _line: None)
        try:
            (self.dest / RELEASES).mkdir(parents=True, exist_ok=True)
            config.cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DestinationError(f"cannot create {self.dest}/{RELEASES}: {exc.strerror}") from exc
        self._lock = lock_destination(self.dest / LOCK_FILE)
        self._stop = threading.Event()
        self._channel: Channel | None = None
        self._validator: str | None = None
        self._downloads: dict[str, Download] = {}  # info-hash -> torrent in the engine
        self._tags: dict[str, str] = {}  # info-hash -> tag
        try:
            self.state = AgentState.load(self.dest)
            self.state.channel = config.channel
            self.engine = Engine(config.engine)
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
        """Poll and apply until :meth:`stop`; failures back off and retry.

        Never raises for what a channel or a release holds: a ``RoostError``
        is one log line; anything else is a bug in roost, but one bad
        publish must not stop every agent, so it is one line too (with its
        type) and the agent retries like for any failure."""
        failures = 0
        while not self._stop.is_set():
            try:
                self.cycle()
            except RoostError as exc:
                error = str(exc)
            except Exception as exc:  # a daemon outlives its bugs (see above)
                log.debug("agent cycle failed", exc_info=True)
                error = f"unexpected {type(exc).__name__}: {_one_line(exc)}"
                self._record_error(error)
            else:
                failures = 0
                self._idle(self.config.interval)
                continue
            if self._stop.is_set():
                break
            failures += 1
            delay = min(self.config.interval * 2 ** min(failures - 1, 10), MAX_BACKOFF)
            delay = max(delay, self.config.interval)
            self.say(f"error: {error} (retrying in {delay:g}s)")
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
            self._record_error(str(exc))
            raise
        self.state.last_ok = time.time()
        if outcome != "rejected":
            self.state.last_error = None
        self._save()
        return outcome

    def _record_error(self, message: str) -> None:
        self.state.last_error = message
        self.state.last_error_at = time.time()
        self._save()

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
        entry = self._target(channel)
        if entry is None:
            return "empty"
        outcome = self._apply(entry)
        self._stage(channel, entry)
        return outcome

    def _target(self, channel: Channel) -> ChannelEntry | None:
        """The channel's current release, or the one it rolls out if this
        host's wave is open."""
        r = channel.rollout
        if r is not None and r.includes(host_rank(channel.name, r.tag, self.config.host)):
            return channel.entry(r.tag)
        return channel.current_entry

    def _stage(self, channel: Channel, target: ChannelEntry) -> None:
        """Download and install a rollout's release before this host's wave
        opens, so that opening it is a switch, not a download."""
        r = channel.rollout
        if r is None or r.tag == target.tag:
            return
        entry = channel.entry(r.tag)
        if self.state.info_hash(entry.tag) == entry.info_hash:
            return
        try:
            self._obtain(entry)
        except RoostError as exc:
            self.say(f"cannot stage {entry.tag}: {exc}")
            return
        self.say(f"staged {entry.tag}: installed, to be activated when its wave reaches this host")
        self._save()

    def _apply(self, entry: ChannelEntry) -> str:
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
        previous = self.state.current
        try:
            path = self._obtain(entry)
        except SignatureError as exc:
            return self._reject(entry, exc, previous)
        try:
            if self.config.hook:
                env = {"ROOST_PREVIOUS": previous or "", "ROOST_CHANNEL": self.config.channel}
                (run_hook if rollback else run_hook_once)(
                    self.config.hook,
                    tag=entry.tag,
                    path=path,
                    info_hash=entry.info_hash,
                    extra_env=env,
                    timeout=self.config.hook_timeout,
                )
        except HookError as exc:
            return self._reject(entry, exc, previous)
        self._activate(entry.tag)
        sick = self._health(entry, path, previous)
        if sick is not None:
            if previous:
                # Undone, not switched forward: the sick release is never the
                # previous one that a later `roost rollback` would pick.
                activation.rollback(self.dest, previous, reject=entry.tag)
            return self._reject(entry, sick, previous)
        if previous != entry.tag:
            self.state.previous = previous
        self.state.current = entry.tag
        self.say(f"activated {entry.tag} ({path}); previous {previous or 'none'}")
        self._reconcile_seeding()
        self._prune()
        self._update_seeding_stats()
        return "activated"

    def _health(self, entry: ChannelEntry, path: Path, previous: str | None) -> HealthError | None:
        """Run ``--health`` in the switched-to release; why it failed, or None."""
        if not self.config.health:
            return None
        env = {"ROOST_TAG": entry.tag, "ROOST_PATH": str(path), "ROOST_PREVIOUS": previous or ""}
        run = run_check(self.config.health, env=env, cwd=path, timeout=self.config.health_timeout)
        result = asyncio.run(run)
        return None if result.ok else HealthError(self.config.health, result.reason)

    def _reject(self, entry: ChannelEntry, exc: RoostError, previous: str | None) -> str:
        """Keep ``previous`` active and do not retry ``entry`` until the channel moves."""
        self.state.rejected = {"tag": entry.tag, "info_hash": entry.info_hash, "error": str(exc)}
        self.state.last_error = f"release {entry.tag} rejected: {exc}"
        self.state.last_error_at = time.time()
        self.say(f"rejected {entry.tag}: {exc}; {previous or 'nothing'} stays active")
        return "rejected"

    def _poll(self) -> Channel:
        url, timeout = channel_document_url(self.config.channel), self.config.fetch_timeout
        fetched = fetch(url, self._validator, timeout=timeout)
        if fetched.data is None and self._channel is not None:
            return self._channel
        if fetched.data is None:  # unchanged but nothing cached: ask again in full
            fetched = fetch(url, timeout=timeout)
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
        from roost.metainfo import check_signature, read_torrent
        from roost.peer.hashahead import HASHED, read_hashed

        url = resolve(channel_base(self.config.channel), entry.torrent)
        torrent = fetch(url, timeout=self.config.fetch_timeout).data
        assert torrent is not None
        meta = read_torrent(torrent)
        if meta.info_hash != entry.info_hash:
            raise ChannelError(
                f"{url} has info-hash {meta.info_hash}, the channel says {entry.info_hash}"
            )
        if meta.tag != entry.tag:
            raise ChannelError(f"{url} holds release {meta.tag!r}, the channel says {entry.tag!r}")
        check_signature(meta, self.config.trusted)  # before a byte of it is downloaded
        started = time.monotonic()
        download = self._add(entry.tag, entry.info_hash, torrent, feed=entry.feed)
        deadline = started + self.config.download_timeout
        peers = 0

        def emit(event: events.Event) -> None:
            nonlocal peers
            if isinstance(event, events.Progress):
                peers = max(peers, event.peers)

        def should_stop() -> str | None:
            if self._stop.is_set():
                return "the agent is stopping"
            if time.monotonic() > deadline:
                return f"timed out after {self.config.download_timeout:g}s"
            return None

        self.say(f"downloading {entry.tag} ({entry.info_hash})")
        download.run_until_complete(emit, should_stop)
        status = self.engine.status(entry.info_hash)
        work = self.config.cache / entry.info_hash
        result = install_release(
            work / meta.name,
            meta,
            self.dest / RELEASES,
            clean=True,
            keep_setid=self.config.keep_setid,
            link=not self.config.copy,
            hashed=read_hashed(work / HASHED),
        )
        self.state.installed = [e for e in self.state.installed if e.get("tag") != entry.tag]
        self.state.installed.append(
            {"tag": entry.tag, "info_hash": entry.info_hash, "installed": round(time.time(), 3)}
        )
        self.state.last_download = {
            "tag": entry.tag,
            "bytes": status.downloaded,
            "reused": download.reused.bytes if download.reused else 0,
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
            engine=self.engine.config,  # the feed's client keeps to --download-limit too
        )
        download = Download(peer_config, torrent, info_hash, engine=self.engine)
        self._downloads[info_hash] = download
        self._tags[info_hash] = tag
        return download

    def _resume_seeding(self, tag: str) -> None:
        """Seed an installed release again after a restart, if its payload is kept."""
        from roost.metainfo import read_torrent

        info_hash = self.state.info_hash(tag)
        if info_hash is None:
            return
        try:
            torrent = (self.config.cache / info_hash / "release.torrent").read_bytes()
            meta = read_torrent(torrent)
            if not (self.config.cache / info_hash / meta.name).exists():
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
        """Point ``DEST/current`` at ``releases/TAG`` atomically (``roost.activation``)."""
        activation.activate(self.dest, tag)

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
            try:
                activation.remove_release(self.dest, tag)
            except DestinationError as exc:
                self.say(f"cannot prune {tag}: {exc}")
                continue
            self.state.installed.remove(entry)
            self.say(f"pruned {tag}")

    def _save(self) -> None:
        try:
            self.state.save(self.dest)
        except OSError as exc:
            self.say(f"cannot save {self.dest / STATE_FILE}: {exc.strerror}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + "…" if len(text) > 200 else text

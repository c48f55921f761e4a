"""The front, what ``roost peer`` runs (``run_peer``): read the torrent,
check it, hand the download to the worker (or run it in this process with
``--foreground``), install, run the hook (roost.peer)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from roost import events, procs
from roost.checks import check_installable, check_room
from roost.destination import install_target, occupied
from roost.errors import DestinationError, UsageError
from roost.installed import run_hook_once
from roost.peer.config import (
    Emit,
    PeerConfig,
    PeerResult,
    _info_hash_of,
    _read_meta,
    _timed_out,
    _torrent_bytes,
    front_pid_file,
    work_dir,
    worker_pid_file,
    worker_seeding_file,
)
from roost.peer.download import _Download
from roost.peer.worker import _run_detached


def _check_trusted(config: PeerConfig, meta: Any) -> None:
    """With ``--trust``: refuse, before a byte is downloaded, a release that no
    trusted key signed (``roost.signing``). A magnet carries no signature."""
    from roost.metainfo import check_signature
    from roost.signing import load_trusted

    trusted = load_trusted(config.install.trust)
    if meta is None:
        raise UsageError("--trust needs the release's .torrent: a magnet link carries no signature")
    check_signature(meta, trusted)


def run_peer(config: PeerConfig, emit: Emit) -> PeerResult:
    """Download, install, run the hook; lingering continues detached.

    Emits the events of the peer process protocol (ARCHITECTURE.md). Raises
    ``RoostError`` subclasses: ``UsageError`` (no torrent), ``EngineError``
    (download failed or timed out), ``DestinationError``/``VerifyError``/
    ``UnsafeArchiveError`` from installing, ``HookError``.
    """
    started = time.monotonic()
    torrent_bytes = _torrent_bytes(config)
    info_hash = _info_hash_of(config, torrent_bytes)
    deadline = started + config.install.timeout if config.install.timeout else None
    _stop_lingering(config, info_hash)
    totals = {"down": 0, "up": 0, "reused": 0}

    def relay(event: events.Event) -> None:
        if isinstance(event, events.Progress):
            totals["down"], totals["up"] = event.down, event.up
            if event.progress >= WARM_AT:
                _warm_install()
        elif isinstance(event, events.Reused):
            totals["reused"] = event.bytes
        emit(event)

    # A magnet's worker checks these once the metadata arrives.
    meta = _read_meta(torrent_bytes) if torrent_bytes is not None else None
    if config.install.trust:
        _check_trusted(config, meta)
    if meta is not None:
        check_installable(meta)
    early = _check_destination(config, torrent_bytes)
    if early is not None:
        # Already there, verified: nothing to download; the hook only if it
        # never succeeded there (an install in the moment a run died).
        emit(events.Installed(path=str(early), already=True))
        if config.install.hook:
            meta = _read_meta(torrent_bytes or b"")
            run_hook_once(
                config.install.hook,
                tag=meta.tag or meta.name,
                path=early,
                info_hash=info_hash,
                timeout=config.install.hook_timeout,
            )
        return PeerResult(True, early, True, time.monotonic() - started, 0, 0)
    if meta is not None:
        check_room(
            meta,
            work_dir(config, info_hash),
            config.dest,
            tag_directory=config.install.tag_directory,
            link=not config.install.copy,
        )
    download: _Download | None = None
    if config.foreground:
        download = _Download(config, torrent_bytes, info_hash)
        try:
            download.run_until_complete(relay, lambda: _timed_out(deadline, config))
        except BaseException:
            download.close()
            raise
        relay(events.Complete())
    else:
        # This peer owns the download now (see _stop_lingering); an area that
        # cannot take the file fails the worker's own pid file, with its reason.
        with contextlib.suppress(OSError):
            procs.write_pid_file(front_pid_file(config.temp_path, info_hash))
        _run_detached(config, info_hash, relay, deadline)
    # A magnet's torrent exists now (the worker wrote it before completing).
    meta = meta or _read_meta(config.torrent.read_bytes())
    try:
        path, already = _install(config, meta)
        emit(events.Installed(path=str(path), already=already))
        if config.install.hook:
            tag = meta.tag or meta.name
            run_hook_once(
                config.install.hook,
                tag=tag,
                path=path,
                info_hash=meta.info_hash,
                timeout=config.install.hook_timeout,
            )
    finally:
        if download is not None:
            if config.install.linger > 0:
                download.linger(config.install.linger, lambda: None)
            download.close()
    seconds = time.monotonic() - started
    return PeerResult(
        True, path, already, seconds, totals["down"], totals["up"], reused=totals["reused"]
    )


def _stop_lingering(config: PeerConfig, info_hash: str) -> None:
    """A worker of this release that lingers, seeding, is stopped (this peer
    takes over), as is one whose peer died; one still downloading for a
    live peer into the same download area is that peer's work: refused,
    naming it (it was killed, and that peer failed)."""
    pid_file = worker_pid_file(config.temp_path, info_hash)
    front = procs.read_pid_file(front_pid_file(config.temp_path, info_hash))  # its peer
    seeding = worker_seeding_file(config.temp_path, info_hash).exists()
    if front is not None and procs.read_pid_file(pid_file) is not None and not seeding:
        raise DestinationError(
            f"another roost peer (pid {front}) is downloading this release into"
            f" {pid_file.parent}: wait for it, or give this one another --temp-path"
        )
    procs.stop_by_pid_file(pid_file)  # lingering, or orphaned by a front that died


def _check_destination(config: PeerConfig, torrent_bytes: bytes | None) -> Path | None:
    """Before downloading: the installed path if the release is already there;
    ``DestinationError`` if the destination is taken and ``--clean`` is off."""
    if torrent_bytes is None:  # a magnet: the manifest hash comes with the metadata
        return None
    meta = _read_meta(torrent_bytes)
    try:
        # Most deploys find the place free: then the install code (tar,
        # hashing, manifests) is not imported before the download starts.
        target = install_target(meta, config.dest, tag_directory=config.install.tag_directory)
        if not occupied(target):
            return None
    except OSError:
        pass  # check_destination names what is wrong
    from roost.extract import check_destination

    found = check_destination(
        meta,
        config.dest,
        tag_directory=config.install.tag_directory,
        clean=config.install.clean,
        keep_setid=config.install.keep_setid,
    )
    return None if found is None else found.path


#: Share of the download after which the front imports the install code.
WARM_AT = 0.5


def _warm_install() -> None:
    """Import the install code while the download runs (the front only waits
    then), not after it completes: on a fleet whose hosts finish within a
    second of each other, every host's install is on the deploy's clock."""
    import roost.extract  # noqa: F401


def _install(config: PeerConfig, meta: Any) -> tuple[Path, bool]:
    from roost.extract import install_release
    from roost.peer.hashahead import HASHED, read_hashed

    work = work_dir(config, meta.info_hash)
    result = install_release(
        work / meta.name,
        meta,
        config.dest,
        tag_directory=config.install.tag_directory,
        clean=config.install.clean,
        keep_setid=config.install.keep_setid,
        link=not config.install.copy,
        hashed=read_hashed(work / HASHED),
    )
    return _installed_path(result)


def _installed_path(result: Any) -> tuple[Path, bool]:
    """``install_release`` returns the path (or an object with ``path`` and
    ``already_installed``); accept both."""
    if isinstance(result, Path):
        return result, False
    if isinstance(result, tuple):
        return Path(result[0]), bool(result[1])
    return Path(result.path), bool(getattr(result, "already_installed", False))

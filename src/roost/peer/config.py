"""What the peer's parts share: its config (``PeerConfig``, with the
``InstallOptions`` every deploy hands to each host's peer and the
``EngineConfig`` of its BitTorrent session), its result, where a download
lies under TEMP, the torrent's bytes and metadata (roost.peer)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roost import events
from roost._parse import load_json
from roost.enginetypes import EngineConfig
from roost.errors import ReleaseError, UsageError
from roost.installed import HOOK_TIMEOUT

Emit = Callable[[events.Event], None]

DEFAULT_TEMP_PATH = Path("/tmp/roost")
PROGRESS_INTERVAL = 0.5
RESUME_INTERVAL = 5.0
STALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class InstallOptions:
    """How a host's peer installs a release and how long it runs: one set,
    read from the install flags (``roost peer``, ``roost deploy``, ``roost
    fleet peer``) and handed to every host's peer as :meth:`flags`."""

    #: install into DEST/TAG; off: into DEST itself
    tag_directory: bool = True
    #: replace a non-empty destination
    clean: bool = False
    #: keep the release's setuid/setgid/sticky bits (stripped by default)
    keep_setid: bool = False
    #: OpenSSH public key files: refuse releases none of them signed
    trust: tuple[str, ...] = ()
    #: shell command run after the install
    hook: str | None = None
    #: seconds the hook may run before it is killed and the host fails
    hook_timeout: float = HOOK_TIMEOUT
    #: copy the release out of the download cache (default: hard-link its
    #: own files there, where the file system allows)
    copy: bool = False
    #: seconds to keep seeding after the install
    linger: float = 30.0
    #: give up after this many seconds; None: never
    timeout: float | None = None

    def flags(self, *, upload_limit: int = 0, download_limit: int = 0) -> list[str]:
        """The ``roost peer`` flags for these options and these rates (pure):
        how the local fleet and the SSH fleet hand them to each host's peer."""
        flags = ["--linger", f"{self.linger:g}"]
        if not self.tag_directory:
            flags.append("--no-tag-directory")
        if self.clean:
            flags.append("--clean")
        if self.hook:
            flags += ["--hook", self.hook]
        if self.timeout:
            flags += ["--timeout", f"{self.timeout:g}"]
        if upload_limit:
            flags += ["--upload-limit", str(upload_limit)]
        if download_limit:
            flags += ["--download-limit", str(download_limit)]
        if self.keep_setid:
            flags.append("--keep-setid")
        if self.copy:
            flags.append("--copy")
        for key in self.trust:
            flags += ["--trust", key]
        if self.hook and self.hook_timeout != HOOK_TIMEOUT:
            flags += ["--hook-timeout", f"{self.hook_timeout:g}"]
        return flags


@dataclass(frozen=True)
class PeerConfig:
    torrent: Path
    dest: Path
    install: InstallOptions = InstallOptions()
    #: The peer's BitTorrent session: where it listens and announces, its
    #: rates, DHT, how it checks HTTPS web seeds. Used whole by the engine
    #: the download owns; a shared engine (the agent's) has its own.
    engine: EngineConfig = field(default_factory=EngineConfig)
    temp_path: Path = DEFAULT_TEMP_PATH
    trackers: tuple[str, ...] | None = None
    foreground: bool = False
    #: BEP 19 web seeds (HTTP(S) origins) added to the torrent's own.
    web_seeds: tuple[str, ...] = ()
    #: A magnet link instead of a .torrent: ``torrent`` is then where the
    #: metadata fetched from peers is written (``magnet_torrent_path``).
    magnet: str | None = None
    #: The origin's feed (``http://HOST:PORT/``): pieces nobody has yet come
    #: from it, one peer each, and this peer relays them (roost.feed).
    feed: str | None = None
    #: Give up this many seconds after the swarm stopped being able to finish
    #: (pieces held by nobody, nothing arriving); 0: wait for ``timeout``.
    stall_timeout: float = STALL_TIMEOUT

    def to_json(self) -> str:
        """This config as the worker receives it (:meth:`from_json`)."""
        data = dataclasses.asdict(self)  # the nested configs as dicts
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str) -> PeerConfig:
        """The config :meth:`to_json` wrote; ``UsageError`` if it is not JSON."""
        data = load_json(text, "peer worker config", UsageError)
        for key in ("torrent", "dest", "temp_path"):
            data[key] = Path(data[key])
        if data.get("trackers") is not None:
            data["trackers"] = tuple(data["trackers"])
        data["web_seeds"] = tuple(data.get("web_seeds") or ())
        install = dict(data.pop("install", None) or {})
        install["trust"] = tuple(install.get("trust") or ())
        engine = dict(data.pop("engine", None) or {})
        engine["dht_bootstrap"] = tuple(engine.get("dht_bootstrap") or ())
        return cls(install=InstallOptions(**install), engine=EngineConfig(**engine), **data)


@dataclass(frozen=True)
class PeerResult:
    ok: bool
    path: Path | None
    already_installed: bool
    seconds: float
    down: int
    up: int
    error: str | None = None
    reused: int = 0  # bytes taken from an earlier release instead of downloaded


def work_dir(config: PeerConfig, info_hash: str) -> Path:
    return config.temp_path / info_hash


def worker_pid_file(temp_path: Path, info_hash: str) -> Path:
    return temp_path / info_hash / "worker.pid"


def front_pid_file(temp_path: Path, info_hash: str) -> Path:
    """The peer (front process) whose worker downloads into this area."""
    return temp_path / info_hash / "front.pid"


def worker_seeding_file(temp_path: Path, info_hash: str) -> Path:
    """There while the worker only seeds (its download complete, lingering):
    a new peer of the release may stop it then, and only then."""
    return temp_path / info_hash / "worker.seeding"


def magnet_torrent_path(temp_path: Path, info_hash: str) -> Path:
    """Where a magnet peer writes the torrent once its metadata arrived."""
    return temp_path / info_hash / "metadata.torrent"


def _info_hash_of(config: PeerConfig, torrent_bytes: bytes | None) -> str:
    if config.magnet:
        from roost.magnet import parse_magnet

        return parse_magnet(config.magnet).info_hash
    try:
        return str(_read_meta(torrent_bytes or b"").info_hash)
    except ReleaseError as exc:  # the first read: name the file
        raise ReleaseError(f"{config.torrent}: {exc}") from exc


def _torrent_bytes(config: PeerConfig) -> bytes | None:
    """The .torrent's bytes; None for a magnet (its metadata comes later)."""
    if config.magnet:
        return None
    try:
        return config.torrent.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read torrent {config.torrent}: {exc.strerror}") from exc


def _read_meta(torrent_bytes: bytes) -> Any:
    from roost.metainfo import read_torrent

    return read_torrent(torrent_bytes)


def _timed_out(deadline: float | None, config: PeerConfig) -> str | None:
    if deadline is not None and time.monotonic() > deadline:
        return f"timed out after {config.install.timeout:g}s"
    return None

"""Release channels: what an agent follows, and how a publisher writes one.

A channel is a directory, served over HTTP(S) or read as a local path or
``file://`` URL, holding ``channel.json`` and the releases' ``.torrent`` files
(the publisher also keeps the payloads there, to seed them)::

    {"version": 1, "channel": "web",
     "releases": [{"tag": "v1", "info_hash": "hex40", "torrent": "v1.torrent",
                   "published": 1700000000.0}],
     "current": "v1"}

``current`` is the release every agent should run; pointing it back at an
older tag is a rollback. A release published with waves is staged instead:
``"rollout": {"tag": "v2", "waves": [1, 10, 100], "wave": 1}`` (cumulative
percentages of the hosts). Every agent downloads and installs v2 at once, but
only the agents whose :func:`host_rank` falls within the open wave activate
it; the others keep ``current``. The publisher opens the next wave
(:func:`next_wave`; past the last one, v2 becomes ``current``) or halts the
rollout (:func:`halt_rollout`), which sends the switched hosts back.
``channel.json`` is always replaced atomically (temp file + ``os.replace``),
so a reader sees the old document or the new one.

Three layers: the document (:func:`parse_channel` / :func:`render_channel`,
pure), the publishing side (:func:`publish`, :func:`set_current`), and I/O
for readers (:func:`fetch`, a bounded conditional GET; :class:`ChannelServer`,
roost's read-only file server on the directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from roost import httpfetch
from roost._fs import atomic_write, open_regular
from roost._parse import load_json
from roost.errors import ChannelError, FetchError, UsageError
from roost.fileserve import FileRoot, FileServer
from roost.httpserve import ServerLimits, serve_in_thread, stop_serving
from roost.metainfo import validate_tag
from roost.release import Release, create_release

CHANNEL_FILE = "channel.json"
FORMAT_VERSION = 1
FETCH_TIMEOUT = 10.0
MAX_DOCUMENT = 16 * 1024 * 1024  # a channel.json or .torrent larger than this is refused
_HEX40 = re.compile(r"[0-9a-f]{40}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class ChannelEntry:
    tag: str
    info_hash: str
    torrent: str  # file name beside channel.json
    published: float
    #: the origin's feed for this release (``roost peer --feed``), if any
    feed: str | None = None


@dataclass(frozen=True)
class Rollout:
    """A release activated wave by wave (cumulative percentages of the hosts)."""

    tag: str
    waves: tuple[float, ...]
    wave: int  # 1-based: the open wave

    @property
    def open_percent(self) -> float:
        return self.waves[self.wave - 1]

    def includes(self, rank: float) -> bool:
        """Whether a host of :func:`host_rank` ``rank`` is in an open wave."""
        return rank * 100 < self.open_percent


def host_rank(channel: str, tag: str, host: str) -> float:
    """Where ``host`` falls in ``tag``'s rollout, uniform in [0, 1): the same on
    every poll, different per release, so the canaries change with each one."""
    digest = hashlib.sha256(f"{channel}\0{tag}\0{host}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Channel:
    name: str
    releases: tuple[ChannelEntry, ...]
    current: str | None
    rollout: Rollout | None = None

    def entry(self, tag: str) -> ChannelEntry:
        for entry in self.releases:
            if entry.tag == tag:
                return entry
        raise ChannelError(f"channel {self.name!r} has no release {tag!r}")

    @property
    def current_entry(self) -> ChannelEntry | None:
        return None if self.current is None else self.entry(self.current)


# The document (pure) -----------------------------------------------------------


def parse_channel(data: bytes) -> Channel:
    """Parse and check ``channel.json``; ``ChannelError`` names what is wrong."""
    doc = load_json(data, CHANNEL_FILE, ChannelError, max_bytes=MAX_DOCUMENT)
    if not isinstance(doc, dict):
        raise ChannelError("channel.json is not a JSON object")
    if doc.get("version") != FORMAT_VERSION:
        raise ChannelError(f"channel.json has version {doc.get('version')!r}, expected 1")
    name = doc.get("channel")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ChannelError(f"channel.json has a bad channel name {name!r}")
    raw = doc.get("releases")
    if not isinstance(raw, list):
        raise ChannelError("channel.json: 'releases' is not a list")
    releases = tuple(_parse_entry(item, i) for i, item in enumerate(raw))
    tags = [e.tag for e in releases]
    if len(set(tags)) != len(tags):
        raise ChannelError("channel.json lists a tag twice")
    current = doc.get("current")
    if current is not None and not isinstance(current, str):
        raise ChannelError("channel.json: 'current' is not a string")
    rollout = _parse_rollout(doc.get("rollout"))
    channel = Channel(name, releases, current, rollout)
    if current is not None:
        channel.entry(current)  # raises for an unknown tag
    if rollout is not None:
        channel.entry(rollout.tag)
    return channel


def _parse_rollout(raw: object) -> Rollout | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ChannelError("channel.json: 'rollout' is not an object")
    tag, waves, wave = raw.get("tag"), raw.get("waves"), raw.get("wave")
    if not isinstance(tag, str):
        raise ChannelError("channel.json: rollout 'tag' is not a string")
    if (
        not isinstance(waves, list)
        or not waves
        or not all(isinstance(w, int | float) and not isinstance(w, bool) for w in waves)
        or any(not 0 < w <= 100 for w in waves)
        or sorted(waves) != waves
        or waves[-1] != 100
    ):
        raise ChannelError("channel.json: rollout 'waves' must rise to 100 (percent)")
    if not isinstance(wave, int) or isinstance(wave, bool) or not 1 <= wave <= len(waves):
        raise ChannelError("channel.json: rollout 'wave' is not one of its waves")
    return Rollout(tag, tuple(float(w) for w in waves), wave)


def _parse_entry(item: object, index: int) -> ChannelEntry:
    where = f"channel.json: releases[{index}]"
    if not isinstance(item, dict):
        raise ChannelError(f"{where} is not an object")
    tag, info_hash, torrent = item.get("tag"), item.get("info_hash"), item.get("torrent")
    published = item.get("published", 0)
    if not isinstance(tag, str):
        raise ChannelError(f"{where}: 'tag' is not a string")
    try:
        validate_tag(tag)
    except UsageError as exc:
        raise ChannelError(f"{where}: {exc}") from None
    if not isinstance(info_hash, str) or not _HEX40.fullmatch(info_hash):
        raise ChannelError(f"{where}: 'info_hash' is not 40 lower-case hex digits")
    if not isinstance(torrent, str) or not _NAME.fullmatch(torrent) or ".." in torrent:
        raise ChannelError(f"{where}: 'torrent' must be a plain file name, got {torrent!r}")
    if not isinstance(published, int | float) or isinstance(published, bool):
        raise ChannelError(f"{where}: 'published' is not a number")
    feed = item.get("feed")
    if feed is not None and not (
        isinstance(feed, str) and feed.startswith("http://") and feed.isprintable()
    ):
        raise ChannelError(f"{where}: 'feed' is not an http:// URL")
    return ChannelEntry(tag, info_hash, torrent, float(published), feed)


def _render_entry(e: ChannelEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "tag": e.tag,
        "info_hash": e.info_hash,
        "torrent": e.torrent,
        "published": e.published,
    }
    if e.feed is not None:
        doc["feed"] = e.feed
    return doc


def render_channel(channel: Channel) -> bytes:
    doc: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "channel": channel.name,
        "releases": [_render_entry(e) for e in channel.releases],
        "current": channel.current,
    }
    if channel.rollout is not None:
        r = channel.rollout
        doc["rollout"] = {"tag": r.tag, "waves": [_num(w) for w in r.waves], "wave": r.wave}
    return (json.dumps(doc, indent=2) + "\n").encode()


def _num(value: float) -> float | int:
    return int(value) if value == int(value) else value


# Publishing --------------------------------------------------------------------


def read_channel_dir(channel_dir: Path) -> Channel | None:
    """The channel in ``channel_dir``, or None if it has no channel.json yet."""
    try:
        data = (Path(channel_dir) / CHANNEL_FILE).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ChannelError(f"cannot read {channel_dir / CHANNEL_FILE}: {exc.strerror}") from exc
    return parse_channel(data)


def write_channel_dir(channel_dir: Path, channel: Channel) -> Path:
    """Replace ``channel_dir/channel.json`` atomically."""
    path = Path(channel_dir) / CHANNEL_FILE
    try:
        atomic_write(path, render_channel(channel))
    except OSError as exc:
        raise ChannelError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def publish(
    source: Path,
    tag: str,
    channel_dir: Path,
    *,
    announce: Sequence[str] = (),
    name: str = "default",
    is_file: bool = False,
    piece_size: int | None = None,
    web_seeds: Sequence[str] = (),
    make_current: bool = True,
    feed: str | None = None,
    sign_key: Path | None = None,
    waves: Sequence[float] = (),
    tar: bool = False,
) -> Release:
    """Create release ``tag`` from ``source`` in ``channel_dir`` and list it
    (as ``current`` unless ``make_current`` is False; with ``waves``, as the
    channel's rollout at its first wave).

    Raises ``UsageError`` (bad arguments, tag already published),
    ``ReleaseError`` (packing failed), ``ChannelError`` (bad channel.json).
    """
    validate_tag(tag)
    channel_dir = Path(channel_dir)
    channel = read_channel_dir(channel_dir) if channel_dir.is_dir() else None
    if channel is None:
        if not _NAME.fullmatch(name):
            raise UsageError(f"bad channel name {name!r}: letters, digits, '.', '_', '-'")
        channel = Channel(name, (), None)
    if waves:
        if channel.rollout is not None:
            raise UsageError(
                f"channel {channel.name!r} is rolling out {channel.rollout.tag}; "
                "finish it (--next-wave) or --halt it first"
            )
        if list(waves) != sorted(waves) or waves[-1] != 100 or any(w <= 0 for w in waves):
            raise UsageError("channel waves are rising percentages ending at 100%")
    if any(e.tag == tag for e in channel.releases):
        raise UsageError(
            f"release {tag!r} is already in channel {channel.name!r}; "
            "publish a new tag, or use --rollback-to to make it current again"
        )
    release = create_release(
        source,
        tag,
        channel_dir,
        announce=announce,
        is_file=is_file,
        piece_size=piece_size,
        web_seeds=web_seeds,
        sign_key=sign_key,
        tar=tar,
    )
    entry = ChannelEntry(tag, release.info_hash, release.torrent.name, round(time.time(), 3), feed)
    current = tag if make_current and not waves else channel.current
    rollout = Rollout(tag, tuple(waves), 1) if waves else channel.rollout
    write_channel_dir(
        channel_dir, Channel(channel.name, (*channel.releases, entry), current, rollout)
    )
    return release


def next_wave(channel_dir: Path) -> Channel:
    """Open the rollout's next wave; past its last, its release becomes current."""
    channel = _with_rollout(channel_dir)
    assert channel.rollout is not None
    r = channel.rollout
    if r.wave < len(r.waves):
        channel = replace(channel, rollout=replace(r, wave=r.wave + 1))
    else:
        channel = replace(channel, current=r.tag, rollout=None)
    write_channel_dir(Path(channel_dir), channel)
    return channel


def halt_rollout(channel_dir: Path) -> Channel:
    """End the rollout: every host goes (back) to ``current``."""
    channel = replace(_with_rollout(channel_dir), rollout=None)
    write_channel_dir(Path(channel_dir), channel)
    return channel


def _with_rollout(channel_dir: Path) -> Channel:
    channel = read_channel_dir(Path(channel_dir))
    if channel is None:
        raise UsageError(f"{channel_dir} holds no {CHANNEL_FILE}")
    if channel.rollout is None:
        raise UsageError(f"channel {channel.name!r} has no rollout in progress")
    return channel


def set_current(channel_dir: Path, tag: str) -> Channel:
    """Point the channel's ``current`` at an already published ``tag`` (rollback).

    Raises ``UsageError`` if there is no channel or no such release in it.
    """
    channel = read_channel_dir(Path(channel_dir))
    if channel is None:
        raise UsageError(f"{channel_dir} holds no {CHANNEL_FILE}")
    if not any(e.tag == tag for e in channel.releases):
        known = ", ".join(e.tag for e in channel.releases) or "none"
        raise UsageError(f"channel {channel.name!r} has no release {tag!r} (published: {known})")
    if not (Path(channel_dir) / channel.entry(tag).torrent).is_file():
        raise UsageError(f"release {tag!r}: {channel.entry(tag).torrent} is missing")
    channel = replace(channel, current=tag, rollout=None)  # a rollback ends a rollout
    write_channel_dir(Path(channel_dir), channel)
    return channel


# Reading (agents) --------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """A fetch's answer: ``data`` is None when the document is unchanged."""

    data: bytes | None
    validator: str | None  # ETag / Last-Modified, or a local file's mtime+size


def resolve(channel_url: str, name: str) -> str:
    """The URL (or path) of ``name`` beside ``channel_url``'s channel.json."""
    base = channel_url if channel_url.endswith("/") else channel_url + "/"
    if _is_http(channel_url):
        return urllib.parse.urljoin(base, urllib.parse.quote(name))
    return base + name


def channel_document_url(channel_url: str) -> str:
    """``URL`` may name the directory or its channel.json."""
    if channel_url.rstrip("/").endswith("/" + CHANNEL_FILE) or channel_url == CHANNEL_FILE:
        return channel_url
    return resolve(channel_url, CHANNEL_FILE)


def channel_base(channel_url: str) -> str:
    url = channel_url.rstrip("/")
    if url.endswith("/" + CHANNEL_FILE):
        return url[: -len(CHANNEL_FILE)]
    return url + "/"


def check_channel_url(url: str) -> str:
    """``url`` if the agent can follow it (http, https, file:// or a path);
    ``UsageError`` for another scheme, which would otherwise be read as a
    local path that never appears, retried for ever."""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if scheme and scheme.group(1).lower() not in ("http", "https", "file"):
        raise UsageError(
            f"channel {url}: {scheme.group(1)}:// is not supported "
            "(http://, https://, file:// or a path)"
        )
    return url


def _is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def fetch(url: str, validator: str | None = None, *, timeout: float = FETCH_TIMEOUT) -> Fetched:
    """GET ``url`` (http, https, file:// or a local path), conditionally,
    within ``timeout`` seconds in all and at most :data:`MAX_DOCUMENT` bytes.

    Raises ``ChannelError`` naming the URL and what went wrong (a local path
    that is not a regular file, e.g. a FIFO, is refused without waiting).
    """
    if not _is_http(url):
        path = Path(
            urllib.parse.unquote(url[len("file://") :]) if url.startswith("file://") else url
        )
        return _read_local(url, path, validator)
    headers = {}
    if validator:
        kind, _, value = validator.partition(":")
        headers["If-None-Match" if kind == "etag" else "If-Modified-Since"] = value
    try:
        response = httpfetch.get(url, timeout=timeout, max_bytes=MAX_DOCUMENT, headers=headers)
    except FetchError as exc:
        raise ChannelError(str(exc)) from None
    if response.status == 304:
        return Fetched(None, validator)
    etag = response.headers.get("ETag")
    modified = response.headers.get("Last-Modified")
    if etag:
        return Fetched(response.body, f"etag:{etag}")
    return Fetched(response.body, f"modified:{modified}" if modified else None)


def _read_local(url: str, path: Path, validator: str | None) -> Fetched:
    try:
        with open_regular(path) as f:
            st = os.fstat(f.fileno())
            token = f"{st.st_mtime_ns}-{st.st_size}"
            if validator is not None and validator == token:
                return Fetched(None, token)
            data = f.read(MAX_DOCUMENT + 1)
    except OSError as exc:
        raise ChannelError(f"cannot read {url}: {exc.strerror or exc}") from None
    if len(data) > MAX_DOCUMENT:
        raise ChannelError(f"{url} is larger than {MAX_DOCUMENT} bytes")
    return Fetched(data, token)


# Serving -----------------------------------------------------------------------


class ChannelServer:
    """Serve a channel directory read-only over HTTP, on its own threads.

    roost's one read-only file server (:mod:`roost.fileserve`) on the files
    directly in the directory: no listing, no sub-directories, no dot-files,
    no symlink leading out of it, no FIFO or device; ``ETag`` and ``304``,
    ``Cache-Control: no-cache``; the bounds of :mod:`roost.httpserve`
    (``limits``). ``port=0`` picks a free port (``.port``); ``.url`` is the
    channel's URL. Raises ``UsageError`` if the directory is missing or the
    address is taken.
    """

    def __init__(
        self,
        root: Path,
        *,
        bind: str = "127.0.0.1",
        port: int = 0,
        limits: ServerLimits | None = None,
    ):
        root = Path(root).absolute()
        if not root.is_dir():
            why = "is not a directory" if root.exists() else "does not exist"
            raise UsageError(f"channel directory {root} {why}")
        files = FileRoot(root.resolve(), flat=True, cache_control="no-cache", name="roost-channel")
        try:
            self._server = FileServer((bind, port), files, limits or ServerLimits())
        except OSError as exc:
            raise UsageError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from exc
        self.port = int(self._server.server_address[1])
        host = f"[{bind}]" if ":" in bind else bind
        self.url = f"http://{host}:{self.port}/"
        self._thread: threading.Thread | None = None

    def start(self) -> ChannelServer:
        self._thread = serve_in_thread(self._server, "roost-channel")
        return self

    def stop(self) -> None:
        stop_serving(self._server, self._thread)
        self._thread = None

    def __enter__(self) -> ChannelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

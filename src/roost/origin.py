"""The origin: a read-only HTTP(S) file server for release payloads.

Theory of operation
-------------------
Between datacenters, a release travels over HTTP(S) from one central origin
(DESIGN.md, "multi-datacenter"): each datacenter's seed adds the origin as a
BEP 19 web seed and fetches pieces with ``Range`` requests while it already
seeds to its own datacenter. libtorrent needs real ``Range`` support (a 200
with the whole file where it asked for a piece gets the web seed banned, as
``python -m http.server`` is), so the origin is roost's one read-only file
server (:mod:`roost.fileserve`: regular files under one root, single byte
ranges, ``ETag``; no listing, no escaping symlink, no FIFO or device) under
the bounds every roost server has (:mod:`roost.httpserve`: connection cap,
idle, header and send timeouts, no request bodies), plus:

* HTTP/1.1 keep-alive (libtorrent pipelines its requests), TLS optional (the
  handshake happens in the connection's thread, never in the accept loop);
* an optional cap on the whole upload (``rate_limit``);
* counts of what it served (:meth:`OriginServer.stats`, also at
  ``/.roost-origin/stats.json``), so a multi-datacenter deploy can check that
  the origin sent about one copy per datacenter.
"""

from __future__ import annotations

import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from roost import __version__
from roost.errors import UsageError
from roost.fileserve import FileRoot, FileServer, ServeStats
from roost.httpserve import ServerLimits, serve_in_thread, stop_serving

STATS_PATH = "/.roost-origin/stats.json"


@dataclass(frozen=True)
class OriginConfig:
    root: Path
    bind: str = "127.0.0.1"
    port: int = 8080
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Cap on the origin's whole egress in bytes/s (0 = none): keeps a
    #: release from filling the link between datacenters.
    rate_limit: int = 0
    #: connection cap, backlog, idle, header and send timeouts
    limits: ServerLimits = field(default_factory=ServerLimits)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context; raises ``UsageError`` naming an unreadable cert/key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from exc
    return context


class OriginServer:
    """The origin, serving ``config.root`` from a background thread.

    ``start()`` binds (port 0 allowed; ``.port`` is the bound one) and raises
    ``UsageError`` if the root is not a directory, the certificate cannot be
    loaded or the address cannot be bound. ``stop()`` closes it.
    """

    def __init__(self, config: OriginConfig):
        self.config = config
        root = Path(config.root)
        if not root.is_dir():
            raise UsageError(f"origin root {root} is not a directory")
        if (config.tls_cert is None) != (config.tls_key is None):
            raise UsageError("TLS needs both --tls-cert and --tls-key")
        self._root = root.resolve()
        self._context = (
            tls_context(config.tls_cert, config.tls_key)
            if config.tls_cert is not None and config.tls_key is not None
            else None
        )
        self._server: FileServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._context is not None else "http"

    @property
    def port(self) -> int:
        if self._server is None:
            raise UsageError("origin server not started")
        return int(self._server.server_address[1])

    def url(self, name: str = "", host: str | None = None) -> str:
        """The URL of ``name`` under the root (``host`` defaults to the bind address)."""
        host = host or self.config.bind
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}/{urllib.parse.quote(name)}"

    def start(self) -> OriginServer:
        config = self.config
        context = self._context
        files = FileRoot(
            self._root, rate_limit=config.rate_limit, stats_path=STATS_PATH, name="roost-origin"
        )
        try:
            self._server = FileServer(
                (config.bind, config.port),
                files,
                config.limits,
                # The handshake runs lazily in the connection's own thread.
                wrap=None
                if context is None
                else lambda sock: context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                ),
                version=__version__,
            )
        except OSError as exc:
            where = f"{config.bind}:{config.port}"
            raise UsageError(f"origin cannot listen on {where}: {exc.strerror or exc}") from exc
        self._thread = serve_in_thread(self._server, "roost-origin")
        return self

    def stats(self) -> ServeStats:
        if self._server is None:
            return ServeStats(0, 0, {}, {})
        return self._server.counters.snapshot()

    def serve_until(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set (the CLI's main loop)."""
        while not stop.wait(0.5):
            pass

    def stop(self) -> None:
        stop_serving(self._server, self._thread)
        self._thread = None

    def __enter__(self) -> OriginServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

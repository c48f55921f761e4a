"""How much any client may take of roost's HTTP servers: a module of its own
(no ``http.server``), so that building ``roost``'s parsers, which show these
defaults, does not import the servers."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerLimits"]


@dataclass(frozen=True)
class ServerLimits:
    """How much any client may take of a server (seconds, connections)."""

    max_connections: int = 512
    backlog: int = 128
    idle_timeout: float = 60.0  # between requests on a keep-alive connection
    request_timeout: float = 10.0  # request line and headers, from their first byte
    send_timeout: float = 60.0  # each write of an answer to a client that stopped reading
    evict_after: float = 1.0  # at the cap, a connection waiting this long may be closed

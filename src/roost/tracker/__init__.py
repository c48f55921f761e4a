"""roost's BitTorrent tracker: announce, scrape, locality, tokens, status.

Public API::

    from roost.tracker import TrackerConfig, TrackerServer, run_tracker_in_thread

See ``server.py`` for how it works (its routes; ``http.py``, the
connections; ``thread.py``, the tracker for callers that are not asyncio) and
``docs/ARCHITECTURE.md`` for the contract. Protocol code (``protocol``,
``handout``) is sans-IO.
"""

from roost.errors import StateFileError
from roost.tracker.config import TrackerConfig
from roost.tracker.handout import LocalityPolicy
from roost.tracker.server import TrackerServer, parse_info_hash
from roost.tracker.thread import TrackerHandle, run_tracker_in_thread

__all__ = [
    "LocalityPolicy",
    "StateFileError",
    "TrackerConfig",
    "TrackerHandle",
    "TrackerServer",
    "parse_info_hash",
    "run_tracker_in_thread",
]

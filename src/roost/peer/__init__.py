"""The peer: download a release, verify, install it, run the hook, linger.

Theory of operation
-------------------
``roost peer`` is two processes, like Murder's peer which forks its seeding
off so Capistrano can go on:

* the **front** (the command the caller runs) reads the torrent, stops any
  older worker of the same release (by its pid file), starts the worker,
  relays its events, and on ``complete`` installs the payload into the
  destination (``roost.extract.install_release``: atomic, checked against the
  manifest), runs ``--hook`` and exits;
* the **worker** (a fork of the front, which imports no libtorrent and has
  no thread yet; ``python -m roost.peer --worker JSON`` when the caller is
  threaded), in its own session
  so a caller's terminal or SSH channel never waits for it, owns the engine:
  it downloads into ``TEMP/INFOHASH/`` with resume data saved every few
  seconds and on exit, reports progress as JSON lines on its stdout (a pipe to
  the front), then keeps seeding for ``--linger`` seconds and exits. It
  records itself in ``TEMP/INFOHASH/worker.pid``.

The worker's stdin is a pipe from the front: end-of-file before the download
completed means the front died (or was killed), and the worker saves its
resume data and stops, so a killed peer never leaves a download running. A
restarted peer continues from the pieces it has (resume data skips the
re-hash; the pieces it does not list, and the whole file without it, are
hashed from the disk).

Before the download (and for a magnet, when its metadata arrives) the peer
runs ``roost.checks``: installable, room and writability; during it, a
``StallWatch`` ends a download the swarm can no longer finish. The worker's
errors reach the front as ``failed`` events on the pipe (never only in
``worker.log``, which a full disk cannot take), keeping their class.

``--foreground`` runs everything in one process (tests, debugging).

Modules
-------
The package's parts import one way, each from those before it:
``config`` (``PeerConfig``, ``PeerResult``, the work directory's paths, the
torrent's bytes), ``download`` (``Download``: one download in one engine, the
worker's and the agent's core), ``worker`` (the detached worker and the
front's side of its pipe) and ``front`` (``run_peer``). The names below are
re-exported so that ``from roost.peer import ...`` keeps working.
"""

from __future__ import annotations

from roost.peer.config import (
    DEFAULT_TEMP_PATH,
    PROGRESS_INTERVAL,
    RESUME_INTERVAL,
    STALL_TIMEOUT,
    Emit,
    InstallOptions,
    PeerConfig,
    PeerResult,
    magnet_torrent_path,
    work_dir,
    worker_pid_file,
)
from roost.peer.download import Download
from roost.peer.front import run_peer
from roost.peer.worker import error_from_event, failed_event, main, run_worker

__all__ = [
    "DEFAULT_TEMP_PATH",
    "PROGRESS_INTERVAL",
    "RESUME_INTERVAL",
    "STALL_TIMEOUT",
    "Download",
    "Emit",
    "InstallOptions",
    "PeerConfig",
    "PeerResult",
    "error_from_event",
    "failed_event",
    "magnet_torrent_path",
    "main",
    "run_peer",
    "run_worker",
    "work_dir",
    "worker_pid_file",
]

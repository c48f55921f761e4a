"""``roost seed``, ``roost peer``, ``roost deploy`` (local fleet; ``-i`` hands over).

Argument definitions live here; the work is in ``roost.seeder``,
``roost.peer``, ``roost.local`` and (for ``-i INVENTORY``)
``roost.cli.fleet_deploy.deploy_main(args)``, which plans it (``plan_from_args``) and
runs it (``roost.fleet.deploy.run_deploy``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roost import events
from roost.cli.flags import (
    add_install_flags,
    add_sign_flag,
    add_tar_flag,
    add_trust_flag,
    engine_options,
    install_options,
    path,
    port,
    seconds,
    size,
    tracker_url,
)
from roost.cli.signals import StopOnSignals
from roost.errors import RoostError, UsageError
from roost.peer.config import DEFAULT_TEMP_PATH, STALL_TIMEOUT, PeerConfig
from roost.peer.front import run_peer
from roost.peer.worker import failed_event

if TYPE_CHECKING:
    from roost.seeder import SeedSnapshot


def register(sub: Any) -> None:
    for add in COMMANDS.values():
        add(sub)


# roost seed --------------------------------------------------------------------


def _register_seed(sub: Any) -> None:
    p = sub.add_parser("seed", help="seed a release until stopped (Murder start_seeding)")
    p.add_argument("torrent", type=path, help="the release's .torrent")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--payload", type=path, help="the payload: TAG.tar, the file, or a tree release's directory"
    )
    src.add_argument("--from", dest="from_dir", type=path, help="directory holding the payload")
    p.add_argument(
        "--tracker-url",
        action="append",
        type=tracker_url,
        help="announce here instead of the torrent's trackers",
    )
    p.add_argument("--upload-limit", type=size, default=0, help="bytes/s (e.g. 50M); 0 = none")
    p.add_argument("--super-seed", action="store_true", help="hand out each piece once (origin)")
    from roost.enginetypes import ORIGIN_UPLOAD_SLOTS

    p.add_argument(
        "--upload-slots",
        type=int,
        default=ORIGIN_UPLOAD_SLOTS,
        metavar="N",
        help="upload to at most N peers at once, the others get it from them "
        f"(default {ORIGIN_UPLOAD_SLOTS}; -1: all)",
    )
    p.add_argument("--listen", default="0.0.0.0", help="interface to listen on")
    p.add_argument("--port", type=port, default=0, help="port to listen on (0: any)")
    p.add_argument("--announce-ip", help="the address peers reach this seeder at")
    p.add_argument(
        "--disk-threads",
        type=int,
        default=0,
        metavar="N",
        help="libtorrent disk I/O threads (default 0: on the network thread, "
        "cheapest when the release is in the page cache; raise it to seed from slow, cold disks)",
    )
    p.add_argument(
        "--feed-port",
        type=port,
        metavar="PORT",
        help="also serve the origin's feed here (0: any): each piece goes to one peer, "
        "who relays it (peers: --feed http://HOST:PORT/)",
    )
    p.add_argument("--feed-bind", help="address the feed listens on (default: --listen)")
    p.add_argument(
        "--feed-token",
        metavar="TOKEN",
        help="the feed answers only requests carrying this token"
        " (peers: --feed http://HOST:PORT/?token=TOKEN; roost deploy makes one per deploy)",
    )
    p.add_argument("--pid-file", type=path, help="record this process here (for stop-seeding)")
    p.add_argument(
        "--stats-file",
        type=path,
        metavar="FILE",
        help="when seeding stops, write what was uploaded here as JSON"
        " (bytes_up, feed_up, size: the deploy's origin copies)",
    )
    p.add_argument(
        "--check", action="store_true", help="hash the payload first instead of seed_mode"
    )
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started this one dies (roost deploy's origin)",
    )
    from roost.cli.origin import add_dht_flags

    add_dht_flags(p)
    p.set_defaults(handler=_seed)


def _stop_when_orphaned(stop: Callable[[], None]) -> None:
    """Call ``stop`` once this process's parent is gone (it was re-parented):
    a deploy killed outright must not leave its origin seeding for ever."""
    import os

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        stop()

    threading.Thread(target=watch, name="roost-parent-watch", daemon=True).start()


def _seed(args: argparse.Namespace) -> int:
    from roost import procs
    from roost.metainfo import read_torrent_file
    from roost.seeder import SeedConfig, Seeder, origin_engine, payload_dir_for, tree_for

    if args.upload_slots == 0 or args.upload_slots < -1:
        raise UsageError(
            f"--upload-slots must be at least 1, or -1 for all; got {args.upload_slots}"
        )
    if args.feed_token is not None:
        from roost.feedclient import valid_token

        if args.feed_port is None:
            raise UsageError("--feed-token is the feed's: give --feed-port too")
        if not valid_token(args.feed_token):
            raise UsageError("--feed-token must be 1-200 printable ASCII characters, no spaces")
    if args.stats_file is not None and not args.stats_file.absolute().parent.is_dir():
        raise UsageError(f"--stats-file {args.stats_file}: its directory does not exist")
    signals = StopOnSignals()
    meta = read_torrent_file(args.torrent)
    tree = None
    if meta.files is not None:
        tree = tree_for(meta, payload=args.payload, from_dir=args.from_dir)
        payload_dir = tree.parent
    else:
        payload_dir = payload_dir_for(
            meta.name, meta.length, payload=args.payload, from_dir=args.from_dir
        )
    seeder = Seeder(
        SeedConfig(
            torrent=args.torrent,
            payload_dir=payload_dir,
            tree=tree,
            trackers=tuple(args.tracker_url) if args.tracker_url else None,
            engine=origin_engine(**engine_options(args), upload_slots=args.upload_slots),
            super_seeding=args.super_seed,
            seed_mode=not args.check,
            feed_port=args.feed_port,
            feed_bind=args.feed_bind,
            feed_token=args.feed_token,
        )
    )
    signals.forward(seeder.stop)
    if args.exit_with_parent:
        _stop_when_orphaned(seeder.stop)
    if args.pid_file:
        procs.write_pid_file(args.pid_file)
    mode = ""
    if args.super_seed:
        mode = " (super-seeding)" if seeder.super_seeding else " (one piece: not super-seeding)"
    if seeder.feed is not None:
        # Bound to every address: name the feed by this host's name, which
        # peers can use, not by 0.0.0.0, which they cannot.
        bind = args.feed_bind or args.listen
        host = args.announce_ip or (socket.gethostname() if bind in ("0.0.0.0", "::") else None)
        mode += f", feed at {seeder.feed_url(host)}"
    print(
        f"seeding {meta.tag or meta.name} ({seeder.info_hash}) on port {seeder.port}{mode}",
        flush=True,
    )
    try:
        seeder.run()
    finally:
        if args.pid_file:
            procs.remove_pid_file(args.pid_file)
    _report_uploaded(seeder.snapshot(), meta.length, args.stats_file)
    return 0


def _report_uploaded(snap: SeedSnapshot, size: int, stats_file: Path | None) -> None:
    """The origin's total as seeding stops: one line, and ``--stats-file``."""
    from roost._fs import atomic_write
    from roost.progress import human_bytes

    feed = f", {human_bytes(snap.feed_sent)} of it from the feed" if snap.feed_sent else ""
    up = snap.uploaded + snap.feed_sent
    print(f"stopped: uploaded {human_bytes(up)} ({up / max(1, size):.2f} copies){feed}", flush=True)
    if stats_file is not None:
        data = {"bytes_up": up, "feed_up": snap.feed_sent, "size": size}
        try:
            atomic_write(stats_file, json.dumps(data).encode())
        except OSError as exc:
            print(f"roost: cannot write {stats_file}: {exc.strerror}", file=sys.stderr)


# roost peer --------------------------------------------------------------------


def _register_peer(sub: Any) -> None:
    p = sub.add_parser("peer", help="download, verify and install a release, then seed it a while")
    p.add_argument("torrent", help="the release's .torrent, or a magnet link")
    p.add_argument("--dest", type=path, required=True, help="install into DEST/TAG")
    add_install_flags(p)
    add_trust_flag(p)
    p.add_argument(
        "--temp-path",
        type=path,
        default=DEFAULT_TEMP_PATH,
        help=f"download area, one directory per info-hash (default {DEFAULT_TEMP_PATH})",
    )
    p.add_argument("--announce-ip", help="the address other peers reach this one at")
    p.add_argument("--listen", default="0.0.0.0", help="interface to listen on")
    p.add_argument("--port", type=port, default=0, help="port to listen on (0: any)")
    p.add_argument("--tracker-url", action="append", type=tracker_url, help="announce here instead")
    p.add_argument(
        "--feed",
        metavar="URL",
        help="the origin's feed (roost seed --feed-port; http://HOST:PORT/?token=TOKEN when it"
        " has --feed-token): pieces nobody has yet come from it",
    )
    p.add_argument(
        "--stall-timeout",
        type=seconds,
        default=STALL_TIMEOUT,
        metavar="SECONDS",
        help="give up once pieces are held by nobody and nothing arrived for this long"
        f" (default {STALL_TIMEOUT:g}; 0: wait for --timeout)",
    )
    p.add_argument("--events", choices=("text", "json"), default="text", help="output format")
    from roost.cli.origin import add_dht_flags, add_web_seed_flags

    add_web_seed_flags(p)
    add_dht_flags(p)
    p.add_argument(
        "--foreground",
        action="store_true",
        help="one process: download, install, then linger before returning",
    )
    p.set_defaults(handler=_peer)


def _peer(args: argparse.Namespace) -> int:
    from roost.cli.signals import Terminated, interrupt_on_signals
    from roost.enginetypes import EngineConfig
    from roost.magnet import is_magnet, parse_magnet
    from roost.peer.config import magnet_torrent_path

    interrupt_on_signals()

    if args.feed:
        from roost.feedclient import parse_feed_url

        parse_feed_url(args.feed)  # refused now, not after the download started
    magnet = args.torrent if is_magnet(args.torrent) else None
    torrent = Path(args.torrent)
    if magnet is not None:
        torrent = magnet_torrent_path(args.temp_path, parse_magnet(magnet).info_hash)
    engine = EngineConfig(
        **engine_options(args),
        verify_https=not args.insecure_web_seed_tls,
        ca_file=args.web_seed_ca,
    )
    config = PeerConfig(
        torrent=torrent,
        magnet=magnet,
        web_seeds=tuple(args.web_seed),
        dest=args.dest,
        install=install_options(args),
        engine=engine,
        temp_path=args.temp_path,
        trackers=tuple(args.tracker_url) if args.tracker_url else None,
        foreground=args.foreground,
        feed=args.feed,
        stall_timeout=args.stall_timeout,
    )
    as_json = args.events == "json"
    started = time.monotonic()
    last = {"down": 0, "up": 0, "shown": 0.0}

    def emit(event: events.Event) -> None:
        if isinstance(event, events.Progress):
            last["down"], last["up"] = event.down, event.up
        if as_json:
            event = dataclasses.replace(event, t=round(time.monotonic() - started, 3))
            sys.stdout.write(events.dump(event) + "\n")
            sys.stdout.flush()
        elif isinstance(event, events.Progress) and time.monotonic() - last["shown"] >= 2:
            last["shown"] = time.monotonic()
            print(
                f"{event.progress * 100:5.1f}%  {event.rate_down / 1e6:.1f} MB/s  "
                f"{event.peers} peers",
                file=sys.stderr,
                flush=True,
            )
        elif isinstance(event, events.HashFailed):
            print(f"piece {event.piece} failed its hash check", file=sys.stderr)
        elif isinstance(event, events.Reused):
            changed = f", {event.rejected} changed on disk" if event.rejected else ""
            print(
                f"reused {event.bytes} bytes ({event.files} files) of an earlier release{changed}",
                flush=True,
            )
        elif isinstance(event, events.Installed):
            word = "already installed at" if event.already else "installed at"
            print(f"{word} {event.path}", flush=True)

    def failed(event: events.Failed) -> None:
        if as_json:
            emit(event)
            seconds = round(time.monotonic() - started, 3)
            emit(events.Done(ok=False, seconds=seconds, down=int(last["down"]), up=int(last["up"])))

    if as_json:
        emit(events.Started(at=round(time.time(), 3)))
    try:
        result = run_peer(config, emit)
    except KeyboardInterrupt as exc:  # cleaned up on the way here
        reason = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        failed(events.Failed(error=reason, kind="Interrupted"))
        raise
    except RoostError as exc:
        failed(failed_event(exc))
        raise
    if as_json:
        seconds = round(result.seconds, 3)
        emit(
            events.Done(
                ok=True, seconds=seconds, down=result.down, up=result.up, reused=result.reused
            )
        )
    return 0


# roost deploy ------------------------------------------------------------------


def _register_deploy(sub: Any) -> None:
    p = sub.add_parser(
        "deploy",
        help="deploy a build: on a local fleet (default) or to an inventory's hosts (-i)",
    )
    p.add_argument(
        "source",
        type=path,
        help="directory (a tree release; --tar: packed as a tar) or file (--file); with -i "
        "also seeder:PATH, "
        "a path on the inventory's seeder (seeder: alone: its seeder_files_path)",
    )
    p.add_argument("--tag", help="release name, e.g. v42 (with -i: default group_vars tag)")
    p.add_argument("--dest", type=path, help="install into DEST/TAG on each host")
    p.add_argument("--file", dest="is_file", action="store_true", help="ship SRC as one file")
    add_tar_flag(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--local",
        type=int,
        metavar="N",
        help="embedded local fleet of N hosts, each in DEST/host-K (default when no -i: 4)",
    )
    where.add_argument("-i", "--inventory", type=path, help="deploy to an inventory's hosts")
    add_install_flags(p)
    add_trust_flag(p, on_hosts=True)
    p.add_argument("--out", type=path, help="keep the release (.torrent, tar) here")
    add_sign_flag(p)
    p.add_argument(
        "--work-dir",
        type=path,
        help="local fleet: where the hosts' download areas go (default: RAM if room)",
    )
    p.add_argument("--piece-size", type=size, help="override the chosen piece size")
    p.add_argument(
        "--super-seed",
        action="store_true",
        help="super-seeding on the origin: fewer copies from it, a slower start",
    )
    p.add_argument(
        "--no-feed",
        dest="feed",
        action="store_false",
        help="the origin as a plain BitTorrent seeder, without its feed (roost seed --feed-port)",
    )
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    from roost.cli.fleet_deploy import add_deploy_flags
    from roost.cli.releases import add_deploy_activation_flags

    add_deploy_activation_flags(p)
    add_deploy_flags(p)
    p.set_defaults(handler=_deploy)


def _deploy(args: argparse.Namespace) -> int:
    from roost.cli.signals import interrupt_on_signals

    interrupt_on_signals()  # SIGTERM as Ctrl-C: the peers, seeder and tracker stopped
    if args.inventory is not None or getattr(args, "hosts", None):
        if args.local is not None:
            raise UsageError("--local runs an embedded fleet: drop it or drop -i/--hosts")
        from roost.cli.fleet_deploy import deploy_main

        return deploy_main(args)
    if str(args.source).startswith("seeder:"):
        raise UsageError(f"{args.source}: a path on the seeder needs an inventory (-i)")
    if not args.tag:
        raise UsageError("--tag is required (e.g. --tag v42)")
    if args.dest is None:
        raise UsageError("--dest is required: each local host installs into DEST/host-K/TAG")
    source, dest = args.source.absolute().resolve(), args.dest.absolute().resolve()
    if not args.is_file and (dest == source or source in dest.parents):
        raise UsageError(
            f"--dest {args.dest} is inside the source {args.source}:"
            " each deploy would ship the installs before it"
        )
    from roost.cli.releases import deploy_waves, local_rollout, print_rollout_hosts
    from roost.local import DEFAULT_HOSTS, LocalDeployConfig, deploy_local
    from roost.progress import TerminalDisplay, render_live, render_summary

    waves = deploy_waves(args)
    from roost.signing import load_trusted

    load_trusted(args.trust)  # this machine's hosts: checked before anything is packed

    config = LocalDeployConfig(
        source=args.source,
        tag=args.tag,
        dest=args.dest,
        hosts=DEFAULT_HOSTS if args.local is None else args.local,
        is_file=args.is_file,
        tar=args.tar,
        install=install_options(args),
        sign_key=args.sign,
        out_dir=args.out,
        work_dir=args.work_dir,
        piece_size=args.piece_size,
        super_seed=args.super_seed,
        upload_limit=args.upload_limit,
        download_limit=args.download_limit,
        feed=args.feed,
        activate=args.activate,
    )
    display = TerminalDisplay(sys.stderr)
    title = f"roost deploy {args.tag}"

    def on_update(fleet: Any, now: float, final: bool) -> None:
        display.update(render_live(fleet, now, title), now, force=final)

    summary = deploy_local(config, on_update)
    if waves is not None:
        local_rollout(args, summary, waves)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print("\n".join(render_summary(summary)))
        print_rollout_hosts(summary)
    return 0 if summary.ok else 1


#: Each command's registration, for ``roost CMD`` building CMD's parser alone.
COMMANDS: dict[str, Callable[[Any], None]] = {
    "seed": _register_seed,
    "peer": _register_peer,
    "deploy": _register_deploy,
}

"""``roost agent`` (follow a channel), ``roost publish`` and ``roost channel serve``.

The work is in ``roost.agent`` and ``roost.channel``; this module parses
flags, prints one line per thing that happened and maps signals to a clean
stop.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from roost.cli.flags import (
    add_copy_flag,
    add_hook_timeout_flag,
    add_sign_flag,
    add_tar_flag,
    add_trust_flag,
    engine_options,
    path,
    port,
    seconds,
    size,
)
from roost.cli.origin import add_server_limit_flags, server_limits
from roost.cli.signals import StopOnSignals
from roost.errors import UsageError


def register(sub: Any) -> None:
    _register_agent(sub)
    _register_publish(sub)
    _register_channel(sub)


def _say(line: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} roost agent: {line}", flush=True)


# roost agent -------------------------------------------------------------------


def _register_agent(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="follow a release channel: download, seed, activate (roost agent status: show it)",
        description=(
            "Poll CHANNEL's channel.json; when its current release changes, download it "
            "(seeding it to other hosts), install it at DEST/releases/TAG, run --hook, then "
            "switch the symlink DEST/current to it. A failing hook keeps the old release. "
            "'roost agent status --dest DEST' prints the agent's state."
        ),
    )
    p.add_argument("action", nargs="?", choices=("run", "status"), default="run")
    p.add_argument("--channel", metavar="URL", help="channel directory URL, file:// URL or path")
    p.add_argument("--dest", type=path, required=True, help="e.g. /opt/app")
    p.add_argument(
        "--interval", type=seconds, default=10.0, help="seconds between polls (default 10)"
    )
    p.add_argument(
        "--keep", type=int, default=3, help="installed releases to keep (>= 1, default 3)"
    )
    p.add_argument("--hook", metavar="CMD", help="run before activating (ROOST_TAG, ROOST_PATH, …)")
    add_hook_timeout_flag(p)
    p.add_argument(
        "--temp-path", type=path, help="downloads and seeded payloads (default DEST/.roost-cache)"
    )
    p.add_argument("--listen", default="0.0.0.0", help="interface to listen on")
    p.add_argument("--port", type=port, default=0, help="port to listen on (0: any)")
    p.add_argument("--announce-ip", help="the address other hosts reach this one at")
    p.add_argument("--upload-limit", type=size, default=0, help="bytes/s; 0 = none")
    p.add_argument("--download-limit", type=size, default=0, help="bytes/s; 0 = none")
    p.add_argument(
        "--download-timeout", type=seconds, default=3600.0, help="give up a download after S"
    )
    p.add_argument(
        "--fetch-timeout",
        type=seconds,
        default=10.0,
        metavar="S",
        help="give up fetching channel.json or a .torrent after S seconds in all (default 10)",
    )
    p.add_argument(
        "--tracker-url", action="append", help="announce here instead of the torrents' trackers"
    )
    p.add_argument(
        "--keep-setid",
        action="store_true",
        help="keep the releases' setuid, setgid and sticky bits (stripped by default)",
    )
    add_copy_flag(p)
    p.add_argument(
        "--once", action="store_true", help="one poll-and-apply, then exit (non-zero on failure)"
    )
    add_trust_flag(p)
    p.add_argument(
        "--health",
        metavar="CMD",
        help="run after switching to a release (ROOST_TAG, ROOST_PATH, ROOST_PREVIOUS); "
        "failing or timing out switches back and rejects the release",
    )
    p.add_argument(
        "--health-timeout",
        type=seconds,
        default=60.0,
        metavar="S",
        help="seconds the health check may run (default 60)",
    )
    p.add_argument(
        "--host-name",
        help="this host's name, which places it in a channel's rollout waves "
        "(default: the system's host name)",
    )
    p.add_argument("--json", action="store_true", help="status: print the state as JSON")
    p.set_defaults(handler=_agent)


def _agent(args: argparse.Namespace) -> int:
    if args.action == "status":
        return _status(args)
    from roost.agent import Agent, AgentConfig
    from roost.enginetypes import EngineConfig
    from roost.signing import load_trusted

    if not args.channel:
        raise UsageError("roost agent needs --channel URL")
    from roost.channel import check_channel_url

    check_channel_url(args.channel)
    signals = StopOnSignals()  # before the engine starts: a stop during start-up is clean
    config = AgentConfig(
        channel=args.channel,
        dest=args.dest,
        interval=args.interval,
        keep=args.keep,
        hook=args.hook,
        keep_setid=args.keep_setid,
        copy=args.copy,
        temp_path=args.temp_path,
        engine=EngineConfig(**engine_options(args)),
        download_timeout=args.download_timeout,
        fetch_timeout=args.fetch_timeout,
        trackers=tuple(args.tracker_url) if args.tracker_url else None,
        trusted=load_trusted(args.trust),
        health=args.health,
        health_timeout=args.health_timeout,
        hook_timeout=args.hook_timeout,
        **({"host": args.host_name} if args.host_name else {}),
    )
    with Agent(config, say=_say) as agent:
        signals.forward(agent.stop)
        if args.once:
            outcome = agent.cycle()
            _say(f"{outcome}: current {agent.state.current or 'none'}")
            return 1 if outcome == "rejected" else 0
        _say(f"following {args.channel} into {agent.dest} (listening on port {agent.engine.port})")
        agent.run()
        _say("stopped")
    return 0


def _status(args: argparse.Namespace) -> int:
    from roost.agent import read_status

    doc = read_status(args.dest)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0

    def when(ts: float | None) -> str:
        return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))

    pid = doc.get("running")
    print(f"agent      {'not running' if pid is None else f'running (pid {pid})'}")
    print(f"channel    {doc.get('channel')}")
    print(f"current    {doc.get('current') or 'none'}  (current -> {doc.get('link')})")
    print(f"previous   {doc.get('previous') or 'none'}")
    installed = ", ".join(str(e.get("tag")) for e in doc.get("installed") or []) or "none"
    print(f"installed  {installed}")
    for seed in doc.get("seeding") or []:
        up, peers = seed.get("uploaded", 0), seed.get("peers", 0)
        if pid is None:  # what it seeded when it last ran
            print(f"seeded     {seed['tag']}: {up} bytes up, {peers} peers (when it last ran)")
        else:
            print(f"seeding    {seed['tag']}: {up} bytes up, {peers} peers")
    if doc.get("rejected"):
        print(f"rejected   {doc['rejected'].get('tag')}: {doc['rejected'].get('error')}")
    print(f"last poll  {when(doc.get('last_poll'))}, last success {when(doc.get('last_ok'))}")
    if doc.get("last_error"):
        print(f"last error {doc['last_error']} ({when(doc.get('last_error_at'))})")
    return 0


# roost publish -------------------------------------------------------------------


def _register_publish(sub: Any) -> None:
    p = sub.add_parser(
        "publish",
        help="add a release to a channel directory and make it current (or roll back)",
        description=(
            "Create release TAG from SRC (DIR/TAG.torrent; with --tar also DIR/TAG.tar) and "
            "make it the channel's current release, replacing DIR/channel.json atomically. "
            "With --rollback-to TAG, make an already published release current again. Seed "
            "the release so agents can fetch it: --seed, or roost seed DIR/TAG.torrent "
            "--payload SRC (with --tar: --from DIR)."
        ),
    )
    p.add_argument("source", type=path, nargs="?", metavar="SRC", help="directory (or --file)")
    p.add_argument("--tag", help="release name, e.g. v42")
    p.add_argument("--channel-dir", type=path, required=True, metavar="DIR")
    p.add_argument("--channel-name", default="default", help="name for a new channel")
    p.add_argument("--tracker", action="append", default=[], metavar="URL", help="announce URL")
    p.add_argument("--web-seed", action="append", default=[], metavar="URL", help="BEP 19 origin")
    p.add_argument("--file", dest="is_file", action="store_true", help="SRC is a single file")
    add_tar_flag(p)
    p.add_argument("--piece-size", type=size, default=None, metavar="SIZE")
    p.add_argument("--no-current", action="store_true", help="publish without making it current")
    p.add_argument("--rollback-to", metavar="TAG", help="make a published release current")
    p.add_argument(
        "--waves",
        metavar="LIST",
        help="roll the release out in cumulative waves of the agents, percentages ending at "
        "100%%, e.g. 1%%,10%%,100%%: every agent installs it, those of the open wave activate it",
    )
    p.add_argument(
        "--next-wave",
        action="store_true",
        help="open the rollout's next wave (after the last, its release becomes current)",
    )
    p.add_argument(
        "--halt",
        action="store_true",
        help="halt the rollout: every agent goes (back) to the current release",
    )
    p.add_argument("--seed", action="store_true", help="then seed the release until stopped")
    p.add_argument("--listen", default="0.0.0.0", help="with --seed: interface to listen on")
    p.add_argument("--upload-limit", type=size, default=0, help="with --seed: bytes/s")
    p.add_argument(
        "--feed",
        metavar="URL",
        help="the origin's feed agents take pieces from (http://HOST:PORT/, recorded in the "
        "channel); with --seed it is served on that port",
    )
    add_sign_flag(p)
    p.set_defaults(handler=_publish)


def _feed_url(url: str) -> Any:
    """``url`` parsed; ``UsageError`` unless it is http://HOST:PORT/ (with
    at most a ``?token=``, which the feed served with ``--seed`` requires)."""
    from roost.feedclient import parse_feed_url, shown_feed_url

    parsed = parse_feed_url(url)
    if parsed.port is None:
        raise UsageError(f"--feed must be http://HOST:PORT/, not {shown_feed_url(url)!r}")
    return parsed


def _channel_waves(text: str) -> tuple[float, ...]:
    from roost.rollout import parse_waves

    waves = parse_waves(text)
    if not all(percent for _, percent in waves) or waves[-1][0] != 100:
        raise UsageError(
            f"--waves {text!r}: a channel's waves are percentages ending at 100%, "
            "since agents do not know the fleet's size"
        )
    return tuple(value for value, _ in waves)


def _publish(args: argparse.Namespace) -> int:
    from roost.channel import halt_rollout, next_wave, publish, set_current

    if args.next_wave or args.halt:
        if args.next_wave and args.halt:
            raise UsageError("--next-wave and --halt: give one of them")
        if args.source or args.tag or args.rollback_to or args.waves:
            flag = "--halt" if args.halt else "--next-wave"
            raise UsageError(f"{flag} takes no SRC, --tag, --rollback-to or --waves")
        if args.halt:
            channel = halt_rollout(args.channel_dir)
            print(f"channel {channel.name}: rollout halted; current is {channel.current}")
            return 0
        channel = next_wave(args.channel_dir)
        if channel.rollout is None:
            print(f"channel {channel.name}: rollout done; current is now {channel.current}")
        else:
            r = channel.rollout
            print(
                f"channel {channel.name}: {r.tag} wave {r.wave} of {len(r.waves)} open "
                f"({r.open_percent:g}% of the agents)"
            )
        return 0
    waves = _channel_waves(args.waves) if args.waves else ()
    if args.rollback_to:
        if args.source or args.tag or args.waves:
            # A rollback is at once, on every agent: no waves (their release is installed).
            raise UsageError("--rollback-to takes no SRC, --tag or --waves")
        channel = set_current(args.channel_dir, args.rollback_to)
        print(f"channel {channel.name}: current is now {channel.current}")
        return 0
    if args.source is None or not args.tag:
        raise UsageError("roost publish needs SRC and --tag (or --rollback-to TAG)")
    feed = _feed_url(args.feed) if args.feed else None
    release = publish(
        args.source,
        args.tag,
        args.channel_dir,
        announce=args.tracker,
        name=args.channel_name,
        is_file=args.is_file,
        piece_size=args.piece_size,
        web_seeds=args.web_seed,
        make_current=not args.no_current,
        feed=feed.geturl() if feed else None,
        sign_key=args.sign,
        waves=waves,
        tar=args.tar,
    )
    if waves:
        state = f"published, rolling out to {waves[0]:g}% of the agents"
    else:
        state = "published" if args.no_current else "published and current"
    print(f"{release.tag} {state}: {release.torrent} ({release.info_hash})", flush=True)
    if not args.seed:
        return 0
    from roost.feedclient import feed_token
    from roost.seeder import SeedConfig, Seeder, origin_engine

    signals = StopOnSignals()
    seeder = Seeder(
        SeedConfig.of(
            release,
            engine=origin_engine(listen_interface=args.listen, upload_limit=args.upload_limit),
            feed_port=feed.port if feed else None,
            feed_token=feed_token(feed) if feed else None,
        )
    )
    signals.forward(seeder.stop)
    print(f"seeding {release.tag} on port {seeder.port}", flush=True)
    seeder.run()
    return 0


# roost channel serve -------------------------------------------------------------


def _register_channel(sub: Any) -> None:
    p = sub.add_parser("channel", help="serve a channel directory over HTTP")
    csub = p.add_subparsers(dest="channel_command", metavar="ACTION", required=True)
    serve = csub.add_parser(
        "serve",
        help="serve DIR read-only over HTTP (no listing, files of DIR only)",
    )
    serve.add_argument("directory", type=path, metavar="DIR")
    serve.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=port, default=8999, help="port (0: any)")
    add_server_limit_flags(serve)
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from roost.channel import ChannelServer

    done = threading.Event()
    StopOnSignals().forward(done.set)
    server = ChannelServer(
        args.directory, bind=args.bind, port=args.port, limits=server_limits(args)
    )
    server.start()
    print(f"serving {args.directory} at {server.url}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    print("stopped", file=sys.stderr, flush=True)
    return 0

"""Flag types and flag groups that several commands share.

The install flags are one group, read into one :class:`InstallOptions`:
``roost peer``, ``roost deploy`` (local and ``-i``) and ``roost fleet peer``
take the same words with the same meaning, and a deploy hands them on to each
host's peer with :meth:`InstallOptions.flags`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from roost.errors import RoostError, UsageError
from roost.installed import HOOK_TIMEOUT
from roost.peer.config import InstallOptions


def size(text: str) -> int:
    """argparse type: a byte count such as 10M, 1.5G or 1048576 (bytes/s for rates)."""
    from roost.release import parse_size

    try:
        return parse_size(text)
    except RoostError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def path(text: str) -> Path:
    """argparse type: a path, never empty (``Path("")`` is the current
    directory: an unset ``$DEST`` would install, or ``--clean``, there)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path (an unset variable?)")
    return Path(text)


def port(text: str) -> int:
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} out of range (0-65535)")
    return value


def tracker_url(text: str) -> str:
    """argparse type: a tracker's announce URL (http, https or udp)."""
    from roost.release import check_announce

    try:
        return check_announce([text], "tracker")[0]
    except RoostError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def tag(text: str) -> str:
    """argparse type: a release tag (``roost.metainfo.validate_tag``'s rules)."""
    from roost.metainfo import validate_tag

    try:
        return validate_tag(text)
    except RoostError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def seconds(text: str) -> float:
    """argparse type: a non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"negative seconds: {text!r}")
    return value


def add_hook_timeout_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hook-timeout",
        type=seconds,
        default=HOOK_TIMEOUT,
        metavar="S",
        help=f"kill a hook still running after S seconds, failing the host "
        f"(default {HOOK_TIMEOUT:g})",
    )


def add_install_flags(p: argparse.ArgumentParser) -> None:
    """How a host installs a release, how long its peer runs and how fast it
    may go (``--trust`` is :func:`add_trust_flag`: its help says where the
    keys are read)."""
    p.add_argument(
        "--no-tag-directory",
        dest="tag_directory",
        action="store_false",
        help="install into DEST itself, not DEST/TAG (a symlink there is followed: "
        "the release goes into the directory it names)",
    )
    p.add_argument(
        "--clean",
        action="store_true",
        help="replace a non-empty destination (unsafe_please_delete)",
    )
    p.add_argument(
        "--linger", type=seconds, default=30.0, help="seconds to keep seeding after (default 30)"
    )
    p.add_argument("--hook", help="shell command run after install (ROOST_TAG, ROOST_PATH, ...)")
    add_hook_timeout_flag(p)
    p.add_argument("--timeout", type=seconds, help="give up after this many seconds")
    p.add_argument("--upload-limit", type=size, default=0, help="bytes/s per host; 0 = none")
    p.add_argument("--download-limit", type=size, default=0, help="bytes/s per host; 0 = none")
    p.add_argument(
        "--keep-setid",
        action="store_true",
        help="keep the release's setuid, setgid and sticky bits (stripped by default)",
    )
    add_copy_flag(p)


def add_copy_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--copy",
        action="store_true",
        help="copy the release out of the download cache; by default its files are "
        "hard-linked from there where the file system allows (no second copy written), "
        "so a file edited in place after the install changes what the host seeds",
    )


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``EngineConfig`` fields of the flags every engine-running command
    has: ``--listen``, ``--port``, ``--announce-ip``, ``--upload-limit``, and
    where the command takes them, ``--download-limit``, ``--disk-threads``
    and the DHT flags (``--dht-bootstrap`` implies ``--dht``)."""
    options: dict[str, Any] = {
        "listen_interface": args.listen,
        "listen_port": args.port,
        "announce_ip": args.announce_ip,
        "upload_limit": args.upload_limit,
    }
    if hasattr(args, "download_limit"):
        options["download_limit"] = args.download_limit
    if hasattr(args, "disk_threads"):
        if args.disk_threads < 0:
            raise UsageError(f"--disk-threads must be at least 0, got {args.disk_threads}")
        options["disk_threads"] = args.disk_threads
    if hasattr(args, "dht_bootstrap"):
        options["dht"] = args.dht or bool(args.dht_bootstrap)
        options["dht_bootstrap"] = tuple(args.dht_bootstrap)
    return options


def install_options(args: argparse.Namespace, *, trust: tuple[str, ...] = ()) -> InstallOptions:
    """The :class:`InstallOptions` that :func:`add_install_flags` (and
    ``--trust``) parsed; ``trust``: the keys to use when no ``--trust`` was given."""
    given = tuple(str(k) for k in getattr(args, "trust", None) or ())
    return InstallOptions(
        tag_directory=args.tag_directory,
        clean=args.clean,
        keep_setid=args.keep_setid,
        copy=args.copy,
        trust=given or trust,
        hook=args.hook,
        hook_timeout=args.hook_timeout,
        linger=args.linger,
        timeout=args.timeout or None,
    )


# Releases: signing, trust, the tar format -------------------------------------

SIGN_HELP = (
    "SSH key to sign the release with (a private key, or a .pub whose private half "
    "is in ssh-agent); the signature covers the info-hash, the tag and the manifest"
)
TRUST_HELP = (
    "OpenSSH public key file (one key per line) whose release signatures to accept; with it, "
    "unsigned or otherwise signed releases are refused, before any download (repeatable)"
)


def add_sign_flag(p: argparse.ArgumentParser, flag: str = "--sign") -> None:
    """The signing key of ``roost create``, ``sign``, ``deploy`` and ``publish``."""
    p.add_argument(flag, type=Path, default=None, metavar="KEY", help=SIGN_HELP)


def add_trust_flag(
    p: argparse.ArgumentParser, *, on_hosts: bool = False, help: str = TRUST_HELP
) -> None:
    """``--trust KEY`` (repeatable) of every command that takes a release in;
    ``on_hosts``: the paths name files on the inventory's hosts."""
    where = " (with -i: a path on the hosts)" if on_hosts else ""
    p.add_argument(
        "--trust", action="append", default=[], type=Path, metavar="KEY", help=help + where
    )


def add_tar_flag(p: argparse.ArgumentParser) -> None:
    """``--tar`` of every command that makes a release from a directory."""
    p.add_argument(
        "--tar",
        action="store_true",
        help="pack the directory into TAG.tar (one file; for clients that need one) instead "
        "of a multi-file torrent over the tree itself",
    )

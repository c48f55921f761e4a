"""``roost create`` (Murder's create_torrent), ``roost sign`` and ``roost verify``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from roost.cli.flags import SIGN_HELP, add_sign_flag, add_tar_flag, add_trust_flag, path, size
from roost.metainfo import check_signature, read_torrent_file, sign_torrent
from roost.release import DEFAULT_OUT_DIR, create_release
from roost.signing import load_trusted


def register(sub: Any) -> None:
    create = sub.add_parser(
        "create",
        help="hash a directory (or a file) in place and write its .torrent",
        description=(
            "Write OUT/TAG.torrent for SRC, announcing to the given trackers: a directory "
            "becomes a multi-file torrent over the tree itself (hashed in place, nothing "
            "copied; files of 64 KiB or more, and runs of smaller ones, start on piece "
            "boundaries, BEP 47 pads; .git* skipped; "
            "modes, mtimes and sha256s in its manifest), or with --tar is packed into "
            "OUT/TAG.tar first; with --file, SRC is a single file, taken as is."
        ),
    )
    create.add_argument("source", type=path, metavar="SRC", help="directory (or file with --file)")
    create.add_argument("--tag", required=True, help="release name, e.g. v42 (no '/', no '..')")
    create.add_argument(
        "--file", dest="is_file", action="store_true", help="SRC is a single file, shipped as is"
    )
    add_tar_flag(create)
    create.add_argument(
        "--tracker",
        action="append",
        default=[],
        metavar="URL",
        help="announce URL, e.g. http://tracker:8998/announce (repeatable)",
    )
    create.add_argument(
        "--out",
        type=path,
        default=DEFAULT_OUT_DIR,
        metavar="DIR",
        help=f"where TAG.torrent (and TAG.tar) go (default {DEFAULT_OUT_DIR})",
    )
    create.add_argument(
        "--piece-size",
        type=size,
        default=None,
        metavar="SIZE",
        help="piece size, e.g. 4M (default: chosen from the size, 16K..16M)",
    )
    create.add_argument(
        "--web-seed",
        action="append",
        default=[],
        metavar="URL",
        help="HTTP(S) origin holding the payload (BEP 19 web seed, repeatable)",
    )
    create.add_argument("--private", action="store_true", help="set the private flag (no DHT/PEX)")
    add_sign_flag(create)
    create.add_argument("--json", action="store_true", help="print a JSON summary")
    create.set_defaults(handler=_create)

    sign = sub.add_parser(
        "sign",
        help="sign an existing release's .torrent with an SSH key",
        description=(
            "Add an OpenSSH signature (namespace roost-release) over T's info-hash, tag and "
            "manifest sha256 to T, in place; the info-hash does not change. Peers and agents "
            "given --trust refuse releases that are not signed by a trusted key."
        ),
    )
    sign.add_argument("torrent", type=path, metavar="T", help="the release's .torrent")
    sign.add_argument("--key", type=path, required=True, metavar="KEY", help=SIGN_HELP)
    sign.set_defaults(handler=_sign)

    verify = sub.add_parser(
        "verify",
        help="check an installed release against its manifest",
        description=(
            "Check that TARGET (DEST/TAG, or the file of a --file release) holds exactly "
            "the release: every path, type, mode, size and sha256."
        ),
    )
    verify.add_argument(
        "target", type=path, metavar="TARGET", help="the installed release (DEST/TAG, or a file)"
    )
    verify.add_argument(
        "--torrent", type=path, required=True, metavar="T", help="the release's .torrent"
    )
    verify.add_argument(
        "--payload",
        type=path,
        default=None,
        metavar="P",
        help="a tar release's TAG.tar (default: beside the torrent; without it, the manifest "
        "on record beside TARGET, if it is the release's); tree and file releases need none",
    )
    add_trust_flag(
        verify,
        help="OpenSSH public key file whose release signatures to accept; with it, a "
        "release that no given key signed fails the check (repeatable)",
    )
    verify.set_defaults(handler=_verify)


def _create(args: argparse.Namespace) -> int:
    started = time.monotonic()
    release = create_release(
        args.source,
        args.tag,
        args.out,
        announce=args.tracker,
        is_file=args.is_file,
        piece_size=args.piece_size,
        web_seeds=args.web_seed,
        private=args.private,
        sign_key=args.sign,
        tar=args.tar,
    )
    seconds = time.monotonic() - started
    from roost.magnet import magnet_uri

    name = release.tag if release.kind == "tree" else release.payload.name
    magnet = magnet_uri(release.info_hash, name, args.tracker, args.web_seed)
    if args.json:
        doc = {
            "tag": release.tag,
            "kind": release.kind,
            "torrent": str(release.torrent),
            "payload": str(release.payload),
            "info_hash": release.info_hash,
            "size": release.size,  # the files' bytes
            "length": release.total_size,  # the torrent's (BEP 47 pads included)
            "piece_size": release.piece_size,
            "pieces": release.num_pieces,
            "seconds": round(seconds, 3),
            "magnet": magnet,
            "signed": args.sign is not None,
        }
        print(json.dumps(doc))
        return 0
    if not args.tracker and not args.web_seed:
        print("roost: warning: no --tracker given; peers will not find each other", file=sys.stderr)
    print(f"torrent    {release.torrent}")
    print(f"payload    {release.payload}")
    print(f"info-hash  {release.info_hash}")
    print(f"size       {release.size} bytes ({_human(release.size)}) in {release.kind}")
    print(f"pieces     {release.num_pieces} x {_human(release.piece_size)}")
    print(f"magnet     {magnet}")
    if args.sign is not None:
        print(f"signed     with {args.sign}")
    print(f"took       {seconds:.2f} s")
    return 0


def _sign(args: argparse.Namespace) -> int:
    meta = sign_torrent(args.torrent, args.key)
    print(f"signed {args.torrent}: release {meta.tag} ({meta.info_hash}) with {args.key}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    trusted = load_trusted(args.trust)
    meta = read_torrent_file(args.torrent)
    signer = check_signature(meta, trusted)
    from roost.verify import verify_installed

    payload = args.payload or args.torrent.parent / meta.name
    verify_installed(args.target, payload, meta)
    by = f", signed by {signer}" if signer else ""
    print(f"ok: {args.target} matches release {meta.tag or meta.name} ({meta.info_hash}){by}")
    return 0


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"

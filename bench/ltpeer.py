"""A bare libtorrent peer for engine experiments (bench tool ``lt``).

Starts from roost's own settings pack (``roost.engine.settings_pack``) and
applies JSON overrides, so a setting can be measured before anyone changes
the engine's defaults. Downloads (or seeds, with --seed) one torrent, writes
a timestamp to --done when complete, then keeps seeding until killed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import libtorrent as lt

from roost.engine import EngineConfig, settings_pack


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("torrent")
    ap.add_argument("--save", required=True)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--done")
    ap.add_argument("--seed", action="store_true")
    ap.add_argument("--super-seed", action="store_true")
    ap.add_argument("--settings", default="{}", help="JSON overrides of the settings pack")
    args = ap.parse_args()
    pack = settings_pack(EngineConfig(listen_interface=args.addr, announce_ip=args.addr))
    pack.update(json.loads(args.settings))
    ses = lt.session(pack)
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(args.torrent)
    atp.save_path = args.save
    flags = atp.flags & ~lt.torrent_flags.paused & ~lt.torrent_flags.auto_managed
    if args.seed:
        flags |= lt.torrent_flags.seed_mode
    if args.super_seed:
        flags |= lt.torrent_flags.super_seeding
    atp.flags = flags
    Path(args.save).mkdir(parents=True, exist_ok=True)
    handle = ses.add_torrent(atp)
    while not handle.status().is_seeding:
        time.sleep(0.02)
    if args.done:
        Path(args.done).write_text(f"{time.time():.6f}\n")
    while True:
        time.sleep(5)
        ses.pop_alerts()


if __name__ == "__main__":
    main()

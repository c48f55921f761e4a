"""Real libtorrent sessions announcing to the roost tracker (token in the URL)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from roost import bencode
from roost.tracker import TrackerConfig, TrackerHandle, run_tracker_in_thread

lt = pytest.importorskip("libtorrent")

PIECE = 64 * 1024


def make_torrent(payload: Path, announce: str) -> tuple[bytes, str]:
    pieces = b""
    with open(payload, "rb") as f:
        while chunk := f.read(PIECE):
            pieces += hashlib.sha1(chunk).digest()
    info = {
        b"name": payload.name.encode(),
        b"length": payload.stat().st_size,
        b"piece length": PIECE,
        b"pieces": pieces,
    }
    meta = {b"announce": announce.encode(), b"info": info}
    return bencode.encode(meta), hashlib.sha1(bencode.encode(info)).hexdigest()


def session() -> object:
    s = lt.session(
        {
            "listen_interfaces": "127.0.0.1:0",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "allow_multiple_connections_per_ip": True,
            "alert_mask": lt.alert.category_t.status_notification
            | lt.alert.category_t.error_notification
            | lt.alert.category_t.tracker_notification,
        }
    )
    return s


def add(s: object, torrent: bytes, save: Path, *, seed: bool) -> object:
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = str(save)
    atp.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
    if seed:
        atp.flags |= lt.torrent_flags.seed_mode
    return s.add_torrent(atp)  # type: ignore[attr-defined]


def swarm_counts(t: TrackerHandle, info_hash: str) -> tuple[int, int, int]:
    def read() -> tuple[int, int, int]:
        sw = t.server.registry.swarms.get(bytes.fromhex(info_hash))
        return (0, 0, 0) if sw is None else (sw.num_seeders, sw.num_leechers, sw.completed)

    return t.call(read)  # type: ignore[no-any-return]


def test_libtorrent_swarm_through_roost_tracker_with_token(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    payload = origin / "payload.bin"
    payload.write_bytes(os.urandom(20 * PIECE + 123))
    cfg = TrackerConfig(
        port=0, interval=1, min_interval=1, allow_list_only=True, tokens_required=True
    )
    with run_tracker_in_thread(cfg) as t:
        url = t.announce_url_with_token("s3cret-42")
        assert url.endswith("/announce?token=s3cret-42")  # ssrf_mitigation needs /announce
        torrent, info_hash = make_torrent(payload, url)
        t.allow(info_hash, tag="v1", token="s3cret-42")
        seeder, leecher = session(), session()
        try:
            hs = add(seeder, torrent, origin, seed=True)
            h = add(leecher, torrent, tmp_path / "dest", seed=False)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st = h.status()  # type: ignore[attr-defined]
                if st.is_seeding and swarm_counts(t, info_hash)[2] >= 1:
                    break
                time.sleep(0.1)
            else:
                pytest.fail(f"no transfer: tracker {swarm_counts(t, info_hash)}, {st.state}")
            assert (tmp_path / "dest" / "payload.bin").read_bytes() == payload.read_bytes()
            seeders, leechers, completed = swarm_counts(t, info_hash)
            assert (seeders, leechers, completed) == (2, 0, 1)
            counts = t.call(lambda: dict(t.server.registry.counters.announces))
            assert counts.get(("started", "ok")) == 2
            assert counts.get(("completed", "ok")) == 1
            assert not any(result != "ok" for _, result in counts)
            # Removing a torrent sends "stopped": the swarm empties at once.
            # (Remove before destroying a session: its destructor holds the GIL
            # while it waits for the stopped announce, and this tracker's thread
            # needs the GIL to answer. Embedded trackers must do the same.)
            seeder.remove_torrent(hs)  # type: ignore[attr-defined]
            leecher.remove_torrent(h)  # type: ignore[attr-defined]
            deadline = time.monotonic() + 10
            while swarm_counts(t, info_hash)[:2] != (0, 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert swarm_counts(t, info_hash) == (0, 0, 1)
        finally:
            del seeder, leecher


def test_libtorrent_with_wrong_token_is_refused(tmp_path: Path) -> None:
    payload = tmp_path / "p.bin"
    payload.write_bytes(os.urandom(PIECE))
    cfg = TrackerConfig(port=0, interval=1, min_interval=1, tokens_required=True)
    with run_tracker_in_thread(cfg) as t:
        torrent, info_hash = make_torrent(payload, t.announce_url_with_token("wrong"))
        t.allow(info_hash, token="right")
        s = session()
        add(s, torrent, tmp_path, seed=True)
        deadline = time.monotonic() + 20
        message = ""
        while time.monotonic() < deadline and "wrong token" not in message:
            s.wait_for_alert(200)  # type: ignore[attr-defined]
            for a in s.pop_alerts():  # type: ignore[attr-defined]
                if isinstance(a, lt.tracker_error_alert):
                    message += a.message() + a.failure_reason()
        assert "wrong token" in message
        assert swarm_counts(t, info_hash) == (0, 0, 0)
        del s

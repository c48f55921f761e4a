"""Multi-datacenter: web seeds from the origin (HTTP and HTTPS), magnet links,
the DHT, and a two-datacenter rehearsal in the lab (seed + tracker per DC)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from roost import events
from roost.engine import Engine, EngineConfig
from roost.errors import EngineError, UsageError
from roost.magnet import magnet_uri, parse_magnet
from roost.metainfo import read_torrent_file
from roost.origin import OriginConfig, OriginServer
from roost.peer import InstallOptions, PeerConfig, run_peer
from roost.release import create_release
from roost.seeder import SeedConfig, SeederThread, origin_engine
from roost.tracker import TrackerConfig, run_tracker_in_thread
from tests.http_kit import make_cert

HEX = "0123456789abcdef0123456789abcdef01234567"


# Magnet links (sans-IO) ---------------------------------------------------------


def test_magnet_round_trip() -> None:
    uri = magnet_uri(HEX.upper(), "v1 2.tar", ["http://t:8998/announce?token=a&b"], ["https://o/"])
    assert uri.startswith(f"magnet:?xt=urn:btih:{HEX}&dn=v1%202.tar&tr=http%3A%2F%2F")
    m = parse_magnet(uri)
    assert (m.info_hash, m.name) == (HEX, "v1 2.tar")
    assert m.trackers == ("http://t:8998/announce?token=a&b",)
    assert m.web_seeds == ("https://o/",)


@pytest.mark.parametrize(
    ("uri", "info_hash"),
    [
        (f"magnet:?xt=urn:btih:{HEX}", HEX),
        (f"MAGNET:?xt=urn:btih:{HEX.upper()}&dn=x", HEX),
        ("magnet:?xt=urn:btih:AERUKZ4JVPG66AJDIVTYTK6N54ASGRLH", HEX),
        (f"magnet:?dn=x&xt=urn:btih:{HEX}&xt=urn:btmh:1220{'0' * 64}", HEX),
    ],
)  # fmt: skip
def test_parse_magnet_ok(uri: str, info_hash: str) -> None:
    assert parse_magnet(uri).info_hash == info_hash


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://x/", "not a magnet link"),
        ("magnet:?dn=x", "no v1 info-hash"),
        ("magnet:?xt=urn:btih:1234", "bad info-hash"),
        (f"magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{'f' * 40}", "several info-hashes"),
        ("magnet:?xt=urn:sha1:abc", "unsupported xt"),
    ],
)
def test_parse_magnet_refuses(uri: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_magnet(uri)
    with pytest.raises(UsageError):
        magnet_uri("xyz")


# Fixtures -------------------------------------------------------------------------


def _make_tree(root: Path, size: int) -> Path:
    src = root / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_bytes(os.urandom(size))
    (src / "README").write_text("release\n")
    return src


def _same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*"))
    files_b = sorted(p.relative_to(b) for p in b.rglob("*"))
    assert files_a == files_b
    for rel in files_a:
        if (a / rel).is_file():
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


LOOPBACK = EngineConfig(listen_interface="127.0.0.1")


def _peer(
    tmp: Path,
    name: str,
    torrent: Path,
    *,
    linger: float = 0,
    timeout: float = 60,
    engine: EngineConfig = LOOPBACK,
    **kw: Any,
) -> PeerConfig:
    return PeerConfig(
        torrent=torrent,
        dest=tmp / name / "dest",
        install=InstallOptions(linger=linger, timeout=timeout),
        engine=engine,
        temp_path=tmp / name / "temp",
        foreground=True,
        **kw,
    )


@pytest.fixture
def release(tmp_path: Path):
    src = _make_tree(tmp_path, 3 * 1024 * 1024 + 1234)
    rel = create_release(src, "v1", tmp_path / "out", tar=True, announce=[], piece_size=256 * 1024)
    return src, rel


# Web seeds ------------------------------------------------------------------------


def test_web_seed_only_http(tmp_path: Path, release) -> None:
    """No BitTorrent seeder at all: the origin alone fills the peer."""
    src, rel = release
    with OriginServer(OriginConfig(root=rel.payload.parent, port=0)) as origin:
        config = _peer(tmp_path, "a", rel.torrent, web_seeds=(origin.url(""),))
        result = run_peer(config, lambda e: None)
        assert result.ok
        _same_tree(src, tmp_path / "a" / "dest" / "v1")
        assert origin.stats().bytes_served >= rel.total_size
        assert origin.stats().responses.get(206, 0) >= 1


def test_web_seed_https_with_ca_and_insecure(
    tmp_path: Path, release, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, rel = release
    cert, key = make_cert(tmp_path)
    # The engine sets SSL_CERT_FILE for its process; restore it after the test.
    monkeypatch.setenv("SSL_CERT_FILE", os.environ.get("SSL_CERT_FILE", "/nonexistent"))
    config = OriginConfig(root=rel.payload.parent, port=0, tls_cert=cert, tls_key=key)
    with OriginServer(config) as origin:
        url = origin.url("v1.tar")
        # The certificate is checked: an untrusted origin never delivers.
        untrusted = _peer(tmp_path, "u", rel.torrent, web_seeds=(url,), timeout=3)
        with pytest.raises(EngineError, match="timed out"):
            run_peer(untrusted, lambda e: None)
        assert origin.stats().bytes_served == 0
        trusted = _peer(
            tmp_path,
            "t",
            rel.torrent,
            web_seeds=(url,),
            engine=dataclasses.replace(LOOPBACK, ca_file=str(cert)),
        )
        assert run_peer(trusted, lambda e: None).ok
        _same_tree(src, tmp_path / "t" / "dest" / "v1")
        insecure = _peer(
            tmp_path,
            "i",
            rel.torrent,
            web_seeds=(url,),
            engine=dataclasses.replace(LOOPBACK, verify_https=False),
        )
        assert run_peer(insecure, lambda e: None).ok
        _same_tree(src, tmp_path / "i" / "dest" / "v1")
        assert origin.stats().bytes_served >= 2 * rel.total_size


def test_peers_share_pieces_from_a_slow_origin(tmp_path: Path, release) -> None:
    """Two peers on a capped origin: the second fetches pieces over HTTP and
    from the first at once."""
    src, rel = release
    with (
        run_tracker_in_thread(TrackerConfig(port=0, interval=1, min_interval=1)) as tracker,
        OriginServer(
            OriginConfig(root=rel.payload.parent, port=0, rate_limit=1024 * 1024)
        ) as origin,
    ):
        common = {"web_seeds": (origin.url(""),), "trackers": (tracker.announce_url,)}
        results: dict[str, Any] = {}
        half = threading.Event()

        def on_event(event: events.Event) -> None:
            if isinstance(event, events.Progress) and event.progress >= 0.5:
                half.set()

        def run(name: str, linger: float) -> None:
            try:
                config = _peer(tmp_path, name, rel.torrent, linger=linger, **common)
                results[name] = run_peer(config, on_event if name == "a" else lambda e: None)
            except Exception as exc:  # reported below
                results[name] = exc
            half.set()

        # b starts when a is half done: web seeds hand out pieces in order, so
        # two peers started together would fetch the same pieces from HTTP.
        first = threading.Thread(target=run, args=("a", 4.0))
        first.start()
        assert half.wait(60)
        second = threading.Thread(target=run, args=("b", 0.0))
        second.start()
        for t in (first, second):
            t.join(90)
        for name in ("a", "b"):
            assert getattr(results[name], "ok", False), results[name]
            _same_tree(src, tmp_path / name / "dest" / "v1")
        served = origin.stats().bytes_served
        # b took pieces from a (BitTorrent) and from the origin (HTTP). libtorrent
        # asks a web seed for long ranges, so b still gets some twice: measured
        # 1.8 copies from the origin in all, never the 2 of two lone downloads.
        assert results["a"].up > 0
        assert rel.total_size < served <= 2 * rel.total_size, served


# Magnet and DHT ---------------------------------------------------------------------


def _roost(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roost", *args], capture_output=True, text=True, timeout=timeout
    )


def test_create_prints_magnet_and_peer_takes_it(tmp_path: Path) -> None:
    """roost create's magnet link, given to roost peer (detached worker): the
    info dict comes from the seeder (BEP 9), x-roost and manifest included."""
    src = _make_tree(tmp_path, 700_000)
    with run_tracker_in_thread(TrackerConfig(port=0, interval=1, min_interval=1)) as tracker:
        created = _roost(
            "create", str(src), "--tag", "v2", "--out", str(tmp_path / "out"), "--tar",
            "--tracker", tracker.announce_url, "--json",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        doc = json.loads(created.stdout)
        magnet = doc["magnet"]
        assert parse_magnet(magnet).info_hash == doc["info_hash"]
        assert parse_magnet(magnet).trackers == (tracker.announce_url,)
        seeder = SeederThread(
            SeedConfig(
                torrent=Path(doc["torrent"]),
                payload_dir=tmp_path / "out",
                engine=origin_engine(listen_interface="127.0.0.1"),
            )
        )
        try:
            peer = _roost(
                "peer", magnet, "--dest", str(tmp_path / "dest"),
                "--temp-path", str(tmp_path / "temp"), "--listen", "127.0.0.1",
                "--linger", "0", "--timeout", "60", "--events", "json",
            )  # fmt: skip
        finally:
            seeder.stop()
        assert peer.returncode == 0, peer.stderr
        events = [json.loads(line) for line in peer.stdout.splitlines()]
        assert events[-1]["event"] == "done" and events[-1]["ok"]
        _same_tree(src, tmp_path / "dest" / "v2")
        fetched = read_torrent_file(tmp_path / "temp" / doc["info_hash"] / "metadata.torrent")
        assert (fetched.tag, fetched.info_hash) == ("v2", doc["info_hash"])


def test_peer_refuses_bad_magnet(tmp_path: Path) -> None:
    proc = _roost("peer", "magnet:?xt=urn:btih:nothex", "--dest", str(tmp_path / "d"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "roost: error: magnet link: bad info-hash 'nothex' (40 hex or 32 base32 characters)"
    ]


def test_dht_is_opt_in() -> None:
    with Engine(LOOPBACK) as engine:
        assert engine.settings()["enable_dht"] is False
    config = EngineConfig(listen_interface="127.0.0.1", dht=True, dht_bootstrap=("127.0.0.1:9",))
    with Engine(config) as engine:
        settings = engine.settings()
        assert settings["enable_dht"] is True
        assert settings["dht_bootstrap_nodes"] == "127.0.0.1:9"


def test_trackerless_magnet_over_a_two_node_dht(tmp_path: Path, release) -> None:
    """A seeder and a peer on loopback, no tracker: the peer joins the DHT
    through the seeder, finds it under the info-hash, fetches the metadata."""
    src, rel = release
    seeder = SeederThread(
        SeedConfig(
            torrent=rel.torrent,
            payload_dir=rel.payload.parent,
            engine=origin_engine(
                listen_interface="127.0.0.1",
                dht=True,
                dht_bootstrap=("127.0.0.1:9",),  # nothing there: never the internet's routers
            ),
        )
    )
    try:
        config = _peer(
            tmp_path,
            "d",
            tmp_path / "d" / "temp" / rel.info_hash / "metadata.torrent",
            magnet=magnet_uri(rel.info_hash, rel.payload.name),
            engine=dataclasses.replace(
                LOOPBACK, dht=True, dht_bootstrap=(f"127.0.0.1:{seeder.port}",)
            ),
        )
        assert run_peer(config, lambda e: None).ok
    finally:
        seeder.stop()
    _same_tree(src, tmp_path / "d" / "dest" / "v1")


# Two datacenters in the lab ------------------------------------------------------------


def _lab_skip() -> str | None:
    if os.geteuid() != 0:
        return "not root: network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None or shutil.which("openssl") is None:
        return "ip/tc/openssl missing"
    return None


@pytest.mark.skipif(_lab_skip() is not None, reason=_lab_skip() or "")
def test_two_datacenters_fill_from_one_https_origin(tmp_path: Path) -> None:
    """The multi-datacenter recipe: a central HTTPS origin; in each DC a
    tracker and a DC seed (`roost peer --web-seed ... --linger`) filling from
    the origin while it seeds; the DC's endpoints download from their DC
    swarm only and run a hook. The origin sends about one copy per DC."""
    from roost.lab.netns import Lab

    size = 8 * 1024 * 1024
    src = _make_tree(tmp_path, size)
    out = tmp_path / "out"
    # No url-list and no tracker in the torrent: each DC adds its own at run time.
    rel = create_release(src, "v3", out, tar=True, announce=[])
    roost = [sys.executable, "-m", "roost"]
    with Lab(6, prefix="rmdc", subnet="198.19.40.0/24", state_dir=tmp_path / "lab") as lab:
        cert, key = make_cert(tmp_path, lab.controller_address)
        config = OriginConfig(
            root=out, bind=lab.controller_address, port=0, tls_cert=cert, tls_key=key
        )
        with OriginServer(config) as origin:
            dcs = {"dc1": lab.hosts[0:3], "dc2": lab.hosts[3:6]}
            procs: list[subprocess.Popen[str]] = []
            for hosts in dcs.values():
                seed = hosts[0]
                for h in hosts:
                    h.path("/tmp/rel").mkdir(parents=True, exist_ok=True)
                    shutil.copy(rel.torrent, h.path("/tmp/rel/v3.torrent"))
                shutil.copy(cert, seed.path("/tmp/rel/origin-ca.pem"))
                announce = f"http://{seed.address}:8998/announce"
                procs.append(
                    seed.popen([*roost, "tracker", "--bind", "0.0.0.0", "--interval", "1"])
                )
                procs.append(
                    seed.popen(
                        [
                            *roost, "peer", "/tmp/rel/v3.torrent", "--dest", "/opt/dcseed",
                            "--web-seed", origin.url(""), "--web-seed-ca", "/tmp/rel/origin-ca.pem",
                            "--tracker-url", announce, "--linger", "600", "--foreground",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        text=True,
                    )
                )  # fmt: skip
                for h in hosts[1:]:
                    procs.append(
                        h.popen(
                            [
                                *roost, "peer", "/tmp/rel/v3.torrent", "--dest", "/opt/app",
                                "--tracker-url", announce, "--linger", "3", "--timeout", "120",
                                "--hook", "touch /tmp/rel/hook-ran", "--foreground",
                                "--events", "json",
                            ],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            text=True,
                        )
                    )  # fmt: skip
            endpoints = [p for p in procs if p.stdout is not None]
            try:
                results = [p.communicate(timeout=150) for p in endpoints]
            finally:
                # Closed whatever happens: pipes left to the garbage collector
                # warn (unclosed file) in whichever later test it runs in.
                for p in endpoints:
                    for stream in (p.stdout, p.stderr):
                        if stream is not None:
                            stream.close()
            for p, (out_text, err_text) in zip(endpoints, results, strict=True):
                assert p.returncode == 0, err_text
                assert json.loads(out_text.splitlines()[-1])["ok"]
            for hosts in dcs.values():
                for h in hosts[1:]:
                    _same_tree(src, h.path("/opt/app/v3"))
                    assert h.path("/tmp/rel/hook-ran").exists()
                # The DC seed installed its own copy too (it is a peer with a long linger).
                _same_tree(src, hosts[0].path("/opt/dcseed/v3"))
            served = origin.stats()
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    print(f"origin served {served.bytes_served / rel.total_size:.3f} copies: {served.clients}")
    # One copy per datacenter: only the two DC seeds ever talked to the origin.
    assert set(served.clients) == {dcs["dc1"][0].address, dcs["dc2"][0].address}
    assert 2 * rel.total_size <= served.bytes_served <= 2.25 * rel.total_size, served
    for addr, sent in served.clients.items():
        assert rel.total_size <= sent <= 1.25 * rel.total_size, (addr, sent)

"""The tracker's live page in a real headless Chromium (Debian's, via
Playwright): it loads, shows running swarms, follows peers' progress without
a reload, highlights stalled hosts, switches to a grid for big swarms, keeps
hostile labels as text, and is screenshotted (README's picture is refreshed
with ROOST_UPDATE_SCREENSHOT=1)."""

from __future__ import annotations

import os
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roost.tracker import TrackerConfig, TrackerHandle, run_tracker_in_thread
from roost.tracker.web import PAGE_CONTENT_TYPE, load_assets, page_csp, render_page
from tests.tracker.stats_kit import IH, IH2, query

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "web-page.png"
SIZE = 64 * 1024 * 1024
EVIL = '<img src=x onerror="alert(1)">'
STALL = 3.0


# ----------------------------------------------------------- page rendering


def test_render_page_is_self_contained_and_escapes_operator_values() -> None:
    page = render_page(None, 0.0, title="<b>ops</b> & co", stats_url="x.json?a=1&b=2").decode()
    assert page.startswith("<!doctype html>")
    assert "<title>&lt;b&gt;ops&lt;/b&gt; &amp; co</title>" in page
    assert 'data-stats-url="x.json?a=1&amp;b=2"' in page
    assert "{{" not in page
    assets = load_assets()
    assert f"<style>{assets.css}</style>" in page and f"<script>{assets.js}</script>" in page
    assert "innerHTML" not in assets.js and "insertAdjacentHTML" not in assets.js
    assert "http://" not in assets.js and "https://" not in assets.css  # no CDN
    csp = page_csp(assets)
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "'unsafe-inline'" not in csp


@pytest.mark.parametrize(
    ("kw", "message"), [({"refresh": 0}, "refresh"), ({"grid_above": -1}, "grid")]
)
def test_render_page_refuses_bad_settings(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_page(**kw)


# ----------------------------------------------------------- real browser


@pytest.fixture
def tracker() -> Iterator[TrackerHandle]:
    handle = run_tracker_in_thread(
        TrackerConfig(port=0, interval=2, min_interval=0, peer_timeout=600, stall_after=STALL)
    )
    try:
        yield handle
    finally:
        handle.stop()


class Fleet:
    """Simulated peers announcing to the real tracker over HTTP."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.left: dict[tuple[bytes, bytes], int] = {}
        self.labels: dict[tuple[bytes, bytes], dict[str, str]] = {}

    def announce(self, ih: bytes, pid: bytes, left: int, **labels: str) -> None:
        key = (ih, pid)
        if labels:
            self.labels[key] = labels
        labels = self.labels[key]
        event = "started" if key not in self.left else ("completed" if left == 0 else None)
        self.left[key] = left
        q = query(
            pid,
            left,
            ih=ih,
            down=SIZE - left if "origin" not in pid.decode() else 0,
            up=(SIZE - left) // 3,
            event=event,
            **labels,
        ).decode()
        with urllib.request.urlopen(f"{self.base}/announce?{q}", timeout=10) as r:
            assert b"failure" not in r.read()

    def advance(self, stuck: set[bytes], step: float = 0.02) -> None:
        """Every downloading peer but the stuck ones gains ``step`` of the payload."""
        for (ih, pid), left in list(self.left.items()):
            if left > 0 and pid not in stuck:
                self.announce(ih, pid, max(0, left - int(step * SIZE)))


class Mover(threading.Thread):
    """Advances every peer but the stuck ones twice a second."""

    def __init__(self, fleet: Fleet, stuck: set[bytes]) -> None:
        super().__init__(daemon=True)
        self.fleet, self.stuck = fleet, stuck
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.fleet.advance(self.stuck, step=0.004)
            except BaseException as exc:
                self.errors.append(exc)
                return
            self.stop.wait(0.5)

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=30)
        assert not self.errors, self.errors


def test_live_page_in_chromium(tracker: TrackerHandle, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{tracker.port}"
    with urllib.request.urlopen(base + "/", timeout=10) as r:
        assert r.headers["Content-Type"] == PAGE_CONTENT_TYPE
    tracker.allow(IH.hex(), tag="v42", size=SIZE)
    tracker.allow(IH2.hex(), tag="v41-canary", size=SIZE)
    fleet = Fleet(base)
    fleet.announce(IH, b"origin", 0, host="deploy-origin", dc="dc1", rack="r1")
    progress = [0.0, 0.12, 0.25, 0.4, 0.55, 0.7, 0.85]
    for i, p in enumerate(progress):
        fleet.announce(
            IH,
            b"web%02d" % i,
            int(SIZE * (1 - p)),
            host=f"web-{i:02d}",
            dc="dc1",
            rack=f"r{1 + i % 3}",
        )
    fleet.announce(IH, b"stuck", int(SIZE * 0.33), host="db-07", dc="dc2", rack="r9")
    fleet.announce(IH, b"evil", SIZE // 2, host=EVIL, dc="dc2", rack="r9")
    for i in range(120):  # a big swarm: drawn as a grid
        p = 1.0 if i % 5 == 0 else (i * 37 % 100) / 100
        fleet.announce(
            IH2,
            b"g%03d" % i,
            int(SIZE * (1 - p)),
            host=f"node-{i:03d}",
            dc=f"dc{1 + i // 60}",
            rack=f"r{i // 12}",
        )
    stuck = {b"stuck", b"g007", b"g042"}

    mover: Mover | None = None
    dialogs: list[str] = []
    console_errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
            page.goto(base + "/")
            v42 = f'section.swarm[data-info-hash="{IH.hex()}"]'
            grid = f'section.swarm[data-info-hash="{IH2.hex()}"]'
            page.wait_for_selector(f"{v42} .row[data-peer='web-03']", timeout=20_000)
            assert page.locator("#connection").get_attribute("data-state") == "live"
            assert page.locator(f"{v42} .tag").inner_text() == "v42"
            assert page.locator(f"{v42} .row").count() == 10
            assert page.locator(f"{v42}").get_attribute("data-done") == "1"
            assert page.locator(f"{v42}").get_attribute("data-total") == "10"
            row = page.locator(f"{v42} .row[data-peer='web-03']")
            assert float(row.get_attribute("data-progress") or "nan") == pytest.approx(0.4)
            assert row.locator(".pct").inner_text() == "40.0%"

            # hostile label: shown as text, never parsed as markup
            evil_row = page.locator(f"{v42} .row[data-state='downloading']").filter(has_text=EVIL)
            assert evil_row.count() == 1
            assert evil_row.locator(".host").inner_text() == EVIL
            assert page.locator("img").count() == 0

            # big swarm: one cell per host
            assert page.locator(f"{grid} .cell").count() == 120
            assert page.locator(f"{grid} .row").count() == 0
            assert page.locator(f"{grid} .cell.seeding").count() == 24

            # peers progress: the DOM follows without a reload
            marker = page.evaluate("() => (window.__roostMarker = 1)")
            fleet.announce(IH, b"web03", int(SIZE * 0.1))
            page.wait_for_function(
                "() => Math.abs(document.querySelector(\"section.swarm .row[data-peer='web-03']\")"
                ".dataset.progress - 0.9) < 1e-6",
                timeout=20_000,
            )
            assert row.locator(".pct").inner_text() == "90.0%"
            fleet.announce(IH, b"web06", 0)
            page.wait_for_function(
                f"() => document.querySelector('{v42}').dataset.done === '2'", timeout=20_000
            )
            assert page.evaluate("() => window.__roostMarker") == marker  # same document

            # stalled: STALL seconds on, only the stuck hosts are flagged while
            # everyone else keeps moving
            mover = Mover(fleet, stuck)
            mover.start()
            page.wait_for_function(
                f"() => document.querySelector('{v42}').dataset.stalled === '1'"
                f" && document.querySelector('{grid}').dataset.stalled === '2'",
                timeout=20_000,
            )
            stalled_row = page.locator(f"{v42} .row.stalled")
            assert stalled_row.count() == 1 and stalled_row.locator(".host").inner_text() == "db-07"
            assert stalled_row.locator(".state").inner_text().startswith("stalled ")
            assert page.locator(f"{grid} .cell.stalled").count() == 2
            assert "node-007" in page.locator(f"{grid} .stuck-list").inner_text()
            assert page.locator(f"{v42} .stalled-count").inner_text() == "stalled 1"
            page.wait_for_function(
                "(sel) => document.querySelector(sel).dataset.progress > 0.01",
                arg=f"{v42} .row[data-peer='web-00']",
                timeout=20_000,
            )
            assert not dialogs, dialogs
            assert not console_errors, console_errors  # CSP hashes match, no script errors

            # the tracker goes away: the page says so and keeps its last view
            shot = tmp_path / "web-page.png"
            page.screenshot(path=str(shot), full_page=True)
            mover.finish()
            tracker.stop()
            page.wait_for_function(
                "() => document.querySelector('#connection').dataset.state === 'error'",
                timeout=20_000,
            )
            assert page.locator(f"{v42} .row").count() == 10
        finally:
            if mover is not None:
                mover.finish()
            browser.close()
    assert shot.stat().st_size > 10_000
    # README's picture is refreshed on request only, so a test run leaves the
    # working tree clean: ROOST_UPDATE_SCREENSHOT=1 pytest tests/tracker/test_web_page.py
    if os.environ.get("ROOST_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)

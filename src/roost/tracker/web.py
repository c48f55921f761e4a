"""The tracker's live HTML page (served at ``/``).

One self-contained HTML document: ``static/index.html`` with
``static/style.css`` and ``static/app.js`` inlined, so the tracker serves a
single route and needs no build step, no CDN and no ``/static`` route. The
script polls ``stats.json`` (relative, so the page works behind a path
prefix) and redraws each swarm in place: a progress bar per host, or a
compact grid of one cell per host above ``grid_above`` hosts, stalled hosts
highlighted.

The page carries a Content-Security-Policy that allows only its own inline
script and style (by hash) and fetches to its own origin; together with the
script never using ``innerHTML``, peer-supplied labels cannot become markup.
Operator-supplied values (title, stats URL) are HTML-escaped here.
"""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PAGE_CONTENT_TYPE", "PageAssets", "load_assets", "page_csp", "render_page"]

PAGE_CONTENT_TYPE = "text/html; charset=utf-8"
STATIC_DIR = Path(__file__).with_name("static")


@dataclass(frozen=True)
class PageAssets:
    template: str
    css: str
    js: str


def load_assets(directory: Path = STATIC_DIR) -> PageAssets:
    """Read the page's three files. Raises ``OSError`` if one is missing
    (a broken installation, not a user error)."""
    return PageAssets(
        template=(directory / "index.html").read_text(encoding="utf-8"),
        css=(directory / "style.css").read_text(encoding="utf-8"),
        js=(directory / "app.js").read_text(encoding="utf-8"),
    )


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def page_csp(assets: PageAssets) -> str:
    """The Content-Security-Policy of the page (also fit for an HTTP header)."""
    return (
        "default-src 'none'; "
        f"script-src {_sha256(assets.js)}; "
        f"style-src {_sha256(assets.css)}; "
        "connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'"
    )


def render_page(
    registry: object = None,
    now: float | None = None,
    *,
    title: str = "roost tracker",
    stats_url: str = "stats.json",
    refresh: float = 1.5,
    grid_above: int = 50,
    assets: PageAssets | None = None,
) -> bytes:
    """The HTML page as UTF-8 bytes; serve it with ``PAGE_CONTENT_TYPE``.

    ``registry`` and ``now`` are accepted (the server calls every status
    renderer as ``func(registry, now)``) and unused: the page loads its data
    from ``stats_url``.

    ``refresh``: seconds between polls of ``stats_url``; ``grid_above``: host
    count above which a swarm is drawn as a grid of cells. Raises
    ``ValueError`` for a non-positive ``refresh`` or a negative ``grid_above``.
    """
    if not refresh > 0:
        raise ValueError(f"refresh must be > 0, not {refresh!r}")
    if grid_above < 0:
        raise ValueError(f"grid_above must be >= 0, not {grid_above!r}")
    a = assets or load_assets()
    for text, closer in ((a.css, "</style"), (a.js, "</script")):
        if closer in text.lower():
            raise ValueError(f"asset contains {closer}>")
    values = {
        "{{CSP}}": html.escape(page_csp(a)),
        "{{TITLE}}": html.escape(title),
        "{{STATS_URL}}": html.escape(stats_url),
        "{{REFRESH_MS}}": str(round(refresh * 1000)),
        "{{GRID_ABOVE}}": str(int(grid_above)),
    }
    page = a.template
    for key, value in values.items():
        page = page.replace(key, value)
    # Inlined last, so that nothing in the assets is taken for a placeholder.
    head, _, rest = page.partition("{{CSS}}")
    middle, _, tail = rest.partition("{{JS}}")
    return (head + a.css + middle + a.js + tail).encode("utf-8")

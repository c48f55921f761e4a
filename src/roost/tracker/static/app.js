// roost tracker page: polls stats.json and redraws every swarm in place.
// Peer-supplied strings (host, rack, datacenter, tag...) only ever reach the
// DOM through textContent or setAttribute: never as markup.
"use strict";
(function () {
  const root = document.getElementById("swarms");
  const empty = document.getElementById("empty");
  const conn = document.getElementById("connection");
  const info = document.getElementById("tracker-info");
  const STATS_URL = root.dataset.statsUrl || "stats.json";
  const REFRESH_MS = Math.max(250, Number(root.dataset.refreshMs) || 1500);
  const GRID_ABOVE = Number(root.dataset.gridAbove) || 50;
  const views = new Map(); // info_hash -> view

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function bytes(v) {
    v = num(v);
    if (v === null) return "?";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
  }
  function duration(s) {
    s = num(s);
    if (s === null || s < 0) return "?";
    s = Math.round(s);
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m" + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
  }
  function pct(p) { return p === null ? "?" : (p * 100).toFixed(p >= 1 ? 0 : 1) + "%"; }
  function label(p) { return p.host || (p.address + ":" + p.port); }
  function where(p) { return [p.datacenter, p.rack].filter(Boolean).join(" / ") || p.address; }
  function progressOf(p) {
    const v = num(p.progress);
    return v === null ? null : Math.min(1, Math.max(0, v));
  }
  function peerKey(p) { return p.peer_id + "@" + p.address + ":" + p.port; }

  function makeView(swarm) {
    const section = el("section", "swarm");
    section.dataset.infoHash = swarm.info_hash;
    const h2 = el("h2");
    const title = el("span", "tag");
    const hash = el("span", "hash");
    const size = el("span", "hash");
    h2.append(title, hash, size);
    const summary = el("div", "summary");
    const overall = el("div", "bar overall");
    const overallFill = el("span");
    overall.append(overallFill);
    const body = el("div");
    section.append(h2, summary, overall, body);
    return { section, title, hash, size, summary, overall, overallFill, body, mode: null, items: new Map() };
  }

  function summaryItem(parent, name, value, cls) {
    const span = el("span", cls);
    span.append(document.createTextNode(name + " "), el("b", null, value));
    span.dataset.field = name;
    parent.append(span);
  }

  function updateSummary(view, swarm, peers) {
    const active = peers.filter((p) => p.state !== "stopped");
    const done = active.filter((p) => p.state === "seeding" || p.left === 0).length;
    const stalled = peers.filter((p) => p.stalled).length;
    const rate = num(swarm.rate_down) || 0;
    let remaining = 0;
    for (const p of active) if (p.state === "downloading" && num(p.left) !== null) remaining += p.left;
    let eta = "—";
    if (active.length && done === active.length) eta = "done";
    else if (rate > 0 && num(swarm.size) !== null) eta = duration(remaining / rate);
    const s = view.summary;
    s.replaceChildren();
    summaryItem(s, "hosts done", done + "/" + active.length);
    summaryItem(s, "↓", bytes(rate) + "/s");
    summaryItem(s, "↑", bytes(swarm.rate_up) + "/s");
    summaryItem(s, "ETA", eta);
    summaryItem(s, "seeders", swarm.seeders);
    summaryItem(s, "leechers", swarm.leechers);
    summaryItem(s, "completed", swarm.completed);
    if (stalled) summaryItem(s, "stalled", stalled, "stalled-count");
    let total = 0, known = 0;
    for (const p of active) { const v = progressOf(p); if (v !== null) { total += v; known++; } }
    const mean = known ? total / known : 0;
    view.overallFill.style.width = (mean * 100).toFixed(2) + "%";
    view.overall.classList.toggle("done", active.length > 0 && done === active.length);
    view.section.dataset.done = String(done);
    view.section.dataset.total = String(active.length);
    view.section.dataset.stalled = String(stalled);
  }

  function rowItem(p) {
    const row = el("div", "row");
    const host = el("span", "host");
    const w = el("span", "where");
    const bar = el("div", "bar");
    const fill = el("span");
    bar.append(fill);
    const percent = el("span", "pct");
    const rate = el("span", "rate");
    const state = el("span", "state");
    row.append(host, w, bar, percent, rate, state);
    return { node: row, host, w, bar, fill, percent, rate, state };
  }

  function updateRow(item, p) {
    const prog = progressOf(p);
    item.node.className = "row " + p.state + (p.stalled ? " stalled" : "");
    item.node.dataset.peer = label(p);
    item.node.dataset.progress = prog === null ? "" : String(prog);
    item.node.dataset.state = p.state;
    item.node.dataset.stalled = String(!!p.stalled);
    item.host.textContent = label(p);
    item.host.setAttribute("title", label(p) + " " + p.address + ":" + p.port);
    item.w.textContent = where(p);
    item.fill.style.width = ((prog || 0) * 100).toFixed(2) + "%";
    item.bar.className = "bar" + (p.stalled ? " stalled" : prog === 1 ? " done" : "");
    item.percent.textContent = prog === null ? "left " + bytes(p.left) : pct(prog);
    item.rate.textContent = p.state === "downloading" ? bytes(p.rate_down) + "/s" : "";
    const since = num(p.last_progress);
    item.state.textContent = p.stalled
      ? "stalled " + (since === null ? "" : duration(lastNow - since))
      : p.state;
  }

  function cellItem() {
    const node = el("div", "cell");
    const fill = el("span");
    node.append(fill);
    return { node, fill };
  }

  function updateCell(item, p) {
    const prog = progressOf(p);
    item.node.className = "cell " + p.state + (p.stalled ? " stalled" : "");
    item.node.dataset.peer = label(p);
    item.node.dataset.progress = prog === null ? "" : String(prog);
    item.node.dataset.state = p.state;
    item.node.dataset.stalled = String(!!p.stalled);
    item.fill.style.height = ((prog || 0) * 100).toFixed(1) + "%";
    item.node.setAttribute(
      "title",
      label(p) + " · " + where(p) + " · " + pct(prog) + " · " + (p.stalled ? "STALLED" : p.state)
    );
  }

  function buildBody(view, mode) {
    view.body.replaceChildren();
    view.items.clear();
    view.mode = mode;
    if (mode === "rows") {
      view.container = el("div", "rows");
      for (const h of ["host", "datacenter / rack", "progress", "", "rate", "state"]) {
        view.container.append(el("span", "head", h));
      }
      view.body.append(view.container);
    } else {
      view.container = el("div", "grid");
      const legend = el("div", "legend");
      for (const [cls, text] of [["l-down", "downloading (fill = progress)"], ["l-done", "seeding"],
        ["l-stall", "stalled"], ["l-stop", "stopped"]]) {
        const item = el("span");
        item.append(el("i", cls), document.createTextNode(text));
        legend.append(item);
      }
      view.stuck = el("div", "stuck-list");
      view.body.append(view.container, legend, view.stuck);
    }
  }

  function updatePeers(view, peers) {
    const mode = peers.length > GRID_ABOVE ? "grid" : "rows";
    if (view.mode !== mode) buildBody(view, mode);
    const seen = new Set();
    for (const p of peers) {
      const key = peerKey(p);
      seen.add(key);
      let item = view.items.get(key);
      if (!item) {
        item = mode === "rows" ? rowItem(p) : cellItem();
        view.items.set(key, item);
      }
      if (mode === "rows") updateRow(item, p); else updateCell(item, p);
      view.container.append(item.node); // keeps the document order = peers order
    }
    for (const [key, item] of view.items) {
      if (!seen.has(key)) { item.node.remove(); view.items.delete(key); }
    }
    if (mode === "grid") {
      const stuck = peers.filter((p) => p.stalled).map(label);
      view.stuck.textContent = stuck.length
        ? "Stalled: " + stuck.slice(0, 20).join(", ") + (stuck.length > 20 ? " … +" + (stuck.length - 20) : "")
        : "";
    }
  }

  let lastNow = Date.now() / 1000;

  function render(doc) {
    const tracker = doc.tracker || {};
    lastNow = num(tracker.now) || Date.now() / 1000;
    const up = num(tracker.started) === null ? "" : " · up " + duration(lastNow - tracker.started);
    info.textContent = "v" + (tracker.version || "?") + up + " · " + (tracker.announces || 0) + " announces";
    const swarms = Array.isArray(doc.swarms) ? doc.swarms : [];
    empty.hidden = swarms.length > 0;
    const keep = new Set();
    for (const swarm of swarms) {
      keep.add(swarm.info_hash);
      let view = views.get(swarm.info_hash);
      if (!view) { view = makeView(swarm); views.set(swarm.info_hash, view); }
      const peers = Array.isArray(swarm.peers) ? swarm.peers : [];
      view.title.textContent = swarm.tag || "(untagged)";
      view.hash.textContent = String(swarm.info_hash).slice(0, 16);
      view.size.textContent = num(swarm.size) === null ? "" : bytes(swarm.size);
      updateSummary(view, swarm, peers);
      updatePeers(view, peers);
      root.append(view.section);
    }
    for (const [key, view] of views) {
      if (!keep.has(key)) { view.section.remove(); views.delete(key); }
    }
  }

  // A big swarm costs the tracker time to render: poll no more often than
  // every ten round trips, so one open page never takes more than ~10% of it.
  let delay = REFRESH_MS;

  async function poll() {
    const started = performance.now();
    try {
      const response = await fetch(STATS_URL, { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      conn.dataset.state = "live";
      conn.textContent = "live · " + new Date().toLocaleTimeString();
    } catch (err) {
      conn.dataset.state = "error";
      conn.textContent = "tracker unreachable (" + (err && err.message ? err.message : err) + "), retrying";
    } finally {
      delay = Math.min(30000, Math.max(REFRESH_MS, 10 * (performance.now() - started)));
      setTimeout(poll, delay);
    }
  }
  poll();
})();

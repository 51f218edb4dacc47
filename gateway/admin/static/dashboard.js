// proxy-pool dashboard: polls the admin JSON API (session cookie), draws tables and inline SVG charts.
// Data goes into the page with textContent only, never as HTML.
"use strict";

const POLL_MS = 5000;
let history = [];  // the points fetched so far; each poll asks only for the newer ones
let historyReplica = null;  // whose they are
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

async function call(method, path, body) {
  const options = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const resp = await fetch(path, options);
  if (resp.status === 401 && path !== "/login") { location.reload(); throw new Error("logged out"); }
  const text = await resp.text();
  const data = text ? JSON.parse(text) : {};
  if (!resp.ok) throw new Error(data.error || ("HTTP " + resp.status));
  return data;
}

function showError(err) {
  const box = document.getElementById("action-error");
  if (box) box.textContent = err ? String(err.message || err) : "";
}

async function act(fn) {
  showError(null);
  try { await fn(); await refresh(); } catch (err) { showError(err); }
}

function human(n) {
  if (n === null || n === undefined) return "-";
  const units = ["", "k", "M", "G", "T"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : Math.round(n * 10) / 10) + units[i];
}

// columns: [key, label, format?, optional?]; an optional column shows only when the API gives its field
function table(id, columns, rows, actions) {
  const node = document.getElementById(id);
  if (!node) return;
  columns = columns.filter(([key, , , optional]) => !optional || rows.some((row) => row[key] !== undefined));
  const head = el("tr", {}, ...columns.map(([, label]) => el("th", {}, label)), ...(actions ? [el("th", {}, "")] : []));
  const body = rows.map((row) => el("tr", { "data-key": String(row.name ?? row.id ?? "") },
    ...columns.map(([key, , fmt]) => el("td", { "data-col": key }, fmt ? fmt(row[key], row) : (row[key] ?? ""))),
    ...(actions ? [el("td", { class: "actions" }, ...actions(row))] : [])));
  node.replaceChildren(el("thead", {}, head), el("tbody", {}, ...(rows.length ? body : [el("tr", {}, el("td", { colspan: columns.length + 1, class: "muted" }, "none"))])));
}

function countsTable(id, title, counts, what) {
  const rows = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]).map(([k, v]) => ({ id: k, key: k, n: v }));
  table(id, [["key", title], ["n", what]], rows);
}

function lineChart(id, points, series) {
  const node = document.getElementById(id);
  if (!node) return;
  const w = 420, h = 140, pad = 28;
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, class: "line-chart", role: "img" });
  const values = points.flatMap((p) => series.map(([key]) => p[key] || 0));
  const max = Math.max(1, ...values);
  const t0 = points.length ? points[0].t : 0, t1 = points.length ? points[points.length - 1].t : 1;
  const x = (t) => pad + ((t - t0) / Math.max(1, t1 - t0)) * (w - pad - 6);
  const y = (v) => h - 18 - (v / max) * (h - 30);
  chart.append(svg("line", { x1: pad, y1: h - 18, x2: w - 6, y2: h - 18, class: "axis" }));
  const top = svg("text", { x: 2, y: 14, class: "tick" }); top.textContent = human(max); chart.append(top);
  const zero = svg("text", { x: 2, y: h - 18, class: "tick" }); zero.textContent = "0"; chart.append(zero);
  if (points.length > 1) {
    const span = svg("text", { x: w - 6, y: h - 4, class: "tick", "text-anchor": "end" });
    const seconds = t1 - t0;
    span.textContent = seconds < 120 ? `last ${Math.round(seconds)} s` : `last ${Math.round(seconds / 60)} min`;
    chart.append(span);
  }
  series.forEach(([key, label, cls], i) => {
    const d = points.map((p, j) => `${j ? "L" : "M"}${x(p.t).toFixed(1)},${y(p[key] || 0).toFixed(1)}`).join(" ");
    if (d) chart.append(svg("path", { d, class: "series " + cls }));
    const legend = svg("text", { x: pad + 8 + i * 64, y: 14, class: "legend " + cls });
    legend.textContent = label;
    chart.append(legend);
  });
  node.replaceChildren(chart);
}

function barChart(id, counts) {
  const node = document.getElementById(id);
  if (!node) return;
  const rows = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]).slice(0, 10);
  const w = 420, bar = 14, h = Math.max(30, rows.length * (bar + 4) + 8);
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, class: "bar-chart", role: "img" });
  const max = Math.max(1, ...rows.map(([, n]) => n));
  rows.forEach(([country, n], i) => {
    const yy = 4 + i * (bar + 4);
    const label = svg("text", { x: 0, y: yy + bar - 3, class: "tick" }); label.textContent = country;
    chart.append(label);
    chart.append(svg("rect", { x: 60, y: yy, width: Math.max(2, (n / max) * (w - 110)), height: bar, class: "bar" }));
    const value = svg("text", { x: 64 + (n / max) * (w - 110), y: yy + bar - 3, class: "tick" }); value.textContent = n;
    chart.append(value);
  });
  if (!rows.length) { const t = svg("text", { x: 0, y: 18, class: "tick" }); t.textContent = "no active proxy yet"; chart.append(t); }
  node.replaceChildren(chart);
}

function setText(id, text) { const node = document.getElementById(id); if (node) node.textContent = text; }

function when(iso) { return iso ? new Date(iso).toLocaleString() : "-"; }

function renderStats(stats) {
  const pool = stats.pool;
  setText("pool-total", pool.total);
  setText("pool-active", pool.selectable);
  setText("pool-benched", pool.benched);
  setText("checker-backlog", stats.checker.backlog);
  setText("gw-connections", stats.gateway.active_connections);
  setText("replica", stats.replica || "");
  countsTable("by-status", "status", pool.by_status, "proxies");
  table("sources", [
    ["id", "id"], ["url", "url"], ["health", "health"], ["last_run_at", "last scrape", when], ["last_found", "found"],
    ["last_new", "new"], ["active", "active now", null, true], ["survival_1h", "alive 1 h", pct, true],
    ["survival_24h", "alive 24 h", pct, true], ["median_latency_ms", "median ms", null, true],
    ["last_yield_at", "last yield", when, true], ["last_error", "last error"],
  ], stats.sources.map((s) => ({ ...s, health: sourceHealth(s) })), (s) => [el("button", { type: "button", class: "scrape", onclick: () => act(() => call("POST", `/api/sources/${s.id}/scrape`, {})) }, "Scrape now")]);
  table("notifiers", [["name", "notifier"], ["up", "up", (u) => u === null || u === undefined ? "unknown" : (u ? "up" : "down")],
    ["delivery_failures", "failed deliveries"], ["last_delivery_error", "last error"]], stats.notifiers);
}

function sourceHealth(s) {
  if (s.quarantined) return "quarantined";
  if (s.consecutive_failures) return `failing (${s.consecutive_failures} in a row)`;
  return s.last_success_at ? "ok" : "not scraped yet";
}

function limit(v) { return v === null || v === undefined ? "none" : v; }

function pct(v) { return v === null || v === undefined ? "-" : Math.round(v * 100) + " %"; }

function renderUsers(users) {
  table("users", [
    ["name", "user"], ["credits", "credits"], ["enabled", "state", (e) => e ? "enabled" : "disabled", true],
    ["requests", "requests", null, true], ["tunnels", "tunnels", null, true], ["bytes_up", "up", human, true],
    ["bytes_down", "down", human, true], ["last_seen", "last seen", when, true],
    ["max_connections", "max conn.", limit, true], ["max_requests_per_second", "max req/s", limit, true],
  ], users, (u) => {
    const amount = el("input", { type: "number", class: "amount", value: "100", "aria-label": "amount" });
    const buttons = [
      amount,
      el("button", { type: "button", class: "credit", onclick: () => act(() => call("POST", `/api/users/${encodeURIComponent(u.name)}/credits`, { amount: parseInt(amount.value, 10) })) }, "Credit"),
    ];
    if (u.enabled !== undefined) {  // the API can disable and enable users
      buttons.push(el("button", { type: "button", class: u.enabled ? "disable" : "enable", onclick: () => act(() => call("PATCH", `/api/users/${encodeURIComponent(u.name)}`, { enabled: !u.enabled })) }, u.enabled ? "Disable" : "Enable"));
    }
    return buttons;
  });
}

function renderProxies(listing) {
  setText("proxies-count", listing.total > listing.proxies.length ? `(the first ${listing.proxies.length} of ${listing.total})` : `(${listing.total})`);
  table("proxies", [
    ["id", "id"], ["url", "proxy"], ["status", "status"], ["protocol", "protocol"], ["country", "country"],
    ["anonymity", "anonymity"], ["latency_ms", "latency ms"], ["last_checked", "last checked", when],
  ], listing.proxies, (p) => [el("button", { type: "button", class: "recheck", onclick: () => act(() => call("POST", `/api/proxies/${p.id}/recheck`, {})) }, "Re-check")]);
}

function renderSites(listing) {
  setText("sites-count", listing.total > listing.sites.length ? `(the busiest ${listing.sites.length} of ${listing.total})` : `(${listing.total})`);
  table("sites", [
    ["site", "site"], ["requests", "requests"], ["bans", "bans"], ["resting", "upstreams resting"],
    ["success_rate", "success", pct], ["p50_ms", "p50 ms"], ["p95_ms", "p95 ms"],
  ], listing.sites.map((s) => ({ id: s.site, ...s })));
}

function renderHistory(hist) {
  history = history.concat(hist.points || []).slice(-(hist.capacity || 2880));
  const points = history;
  const last = points[points.length - 1];
  if (last) {
    setText("gw-rps", human(last.rps_ok + last.rps_failed));
    setText("gw-latency", `${last.p50_ms ?? "-"} / ${last.p95_ms ?? "-"} / ${last.p99_ms ?? "-"}`);
    setText("gw-outcomes", Object.entries(last.rps_by_outcome || {}).map(([k, v]) => `${k} ${human(v)}/s`).join(", ") || "none");
    setText("gw-bytes", `${human(last.bytes_up_ps)} / ${human(last.bytes_down_ps)}`);
    setText("checker-rate", human(last.checks_ps));
  }
  lineChart("chart-pool", points, [["total", "total", "s-total"], ["active", "active", "s-active"], ["new", "new", "s-new"],
    ["dead", "dead", "s-dead"], ["benched", "benched", "s-benched"]]);
  const active = hist.active_by || {};
  countsTable("by-protocol", "protocol", active.protocol, "active");
  countsTable("by-anonymity", "anonymity", active.anonymity, "active");
  countsTable("by-country", "country", active.country, "active");
  barChart("chart-countries", active.country);
  lineChart("chart-requests", points, [["rps_ok", "ok", "s-ok"], ["rps_failed", "failed", "s-failed"]]);
  table("checkers", [["checker", "checker"], ["passed", "passed"], ["failed", "failed"], ["skipped", "skipped"], ["pass_rate", "pass rate", pct]],
    (hist.checkers || []).map((c) => ({ id: c.checker, ...c })));
}

function renderEvents(list) {
  const node = document.getElementById("events");
  if (!node) return;
  node.replaceChildren(...list.events.map((e) => el("li", {}, el("time", {}, when(e.at)), " ", el("strong", {}, e.type), " ", el("code", {}, JSON.stringify(e.payload)))));
  if (!list.events.length) node.replaceChildren(el("li", { class: "muted" }, "no events yet"));
}

// One request after the other, so they share one keep-alive connection: with `serve --workers N` the
// admin port is shared and a connection is one worker's, whose figures then all agree.
async function refresh() {
  const stats = await call("GET", "/api/stats");
  const users = await call("GET", "/api/users");
  const proxies = await call("GET", "/api/proxies?limit=100");
  const sites = await call("GET", "/api/sites?limit=20");
  if (stats.replica !== historyReplica) history = [];  // another worker's history: start again
  historyReplica = stats.replica;
  const hist = await call("GET", "/api/history" + (history.length ? `?since=${history[history.length - 1].t}` : ""));
  if (hist.replica !== historyReplica) { history = []; historyReplica = null; }
  const events = await call("GET", "/api/events");
  renderStats(stats);
  renderUsers(users.users);
  renderProxies(proxies);
  renderSites(sites);
  renderHistory(hist);
  renderEvents(events);
  setText("updated", "updated " + new Date().toLocaleTimeString());
  document.body.dataset.ready = "1";
}

function formValues(form) { return Object.fromEntries(new FormData(form).entries()); }

function setupDashboard() {
  document.getElementById("logout").addEventListener("click", async () => { await call("POST", "/logout", {}); location.reload(); });
  document.getElementById("add-source-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = formValues(ev.target);
    const body = { url: v.url };
    if (v.parser) body.parser = v.parser;
    if (v.protocol) body.protocol = v.protocol;
    act(async () => { await call("POST", "/api/sources", body); ev.target.reset(); });
  });
  document.getElementById("add-user-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = formValues(ev.target);
    act(async () => {
      const created = await call("POST", "/api/users", { name: v.name, credits: parseInt(v.credits || "0", 10) });
      const box = document.getElementById("new-password");
      box.textContent = `Password for ${created.name} (shown only this once): ${created.password}`;
      box.hidden = false;
      ev.target.reset();
    });
  });
  document.getElementById("recheck-dead").addEventListener("click", () => act(async () => {
    const dead = await call("GET", "/api/proxies?status=dead&limit=1000");
    let done = 0;
    const queue = dead.proxies.slice();
    const worker = async () => { while (queue.length) { await call("POST", `/api/proxies/${queue.shift().id}/recheck`, {}); done++; } };
    await Promise.all([worker(), worker(), worker(), worker()]);
    setText("recheck-result", `${done} re-checked`);
  }));
  const tick = async () => { try { await refresh(); showError(null); } catch (err) { showError(err); } setTimeout(tick, POLL_MS); };
  tick();
}

function setupLogin() {
  document.getElementById("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = document.getElementById("login-token").value;
    try {
      await call("POST", "/login", { token });
      location.reload();
    } catch (err) {
      setText("login-error", err.message);
    }
  });
}

if (document.getElementById("login-form")) setupLogin();
else if (document.getElementById("dashboard")) setupDashboard();

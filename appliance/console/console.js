// Portcullis console: one page, six views, drawn from the admin API with the login's cookie. Every value
// from the API reaches the page through textContent or SVG attributes, never as markup.

const $ = (sel, root = document) => root.querySelector(sel);
const SVGNS = "http://www.w3.org/2000/svg";

let csrf = null;
let timer = null;
let lastSnapshot = null;
const state = { auditNext: null, sessionsOffset: 0, sessionsTotal: 0 };
const SESSIONS_PAGE = 50;

// ---------------------------------------------------------------- plumbing

class Unauthenticated extends Error {}

async function api(path, { method = "GET", body } = {}) {
  const headers = { accept: "application/json" };
  if (method !== "GET") headers["x-portcullis-csrf"] = csrf || "";
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let doc = null;
  try { doc = text ? JSON.parse(text) : null; } catch { doc = null; }
  if (r.status === 401) {
    showLogin("Your login ended. Log in again.");
    throw new Unauthenticated();
  }
  if (!r.ok) {
    const msg = doc && doc.error ? `${doc.error.code}: ${doc.error.message}` : `HTTP ${r.status}`;
    throw new Error(msg);
  }
  return doc;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

function rows(table, list, cells) {
  const tbody = $("tbody", table);
  tbody.replaceChildren(...list.map((item) => el("tr", {}, ...cells(item).map((c) =>
    c instanceof Node ? el("td", {}, c) : el("td", { text: c === undefined || c === null ? "" : String(c) })))));
  if (list.length === 0) {
    const n = $("thead tr", table).children.length;
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: n, class: "muted", text: "nothing to show" })));
  }
}

function card(title, value, sub) {
  return el("div", { class: "card stat" }, el("div", { class: "label", text: title }),
    el("div", { class: "value", text: value }), sub ? el("div", { class: "muted", text: sub }) : null);
}

const fmt = {
  int: (n) => (n === undefined || n === null ? "–" : Number(n).toLocaleString("en-US")),
  bytes(n) {
    if (n === undefined || n === null) return "–";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
  },
  dur(s) {
    if (s === undefined || s === null) return "–";
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  },
  time: (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–"),
  us: (n) => (n === undefined || n === null ? "–" : n >= 10000 ? `${(n / 1000).toFixed(1)} ms` : `${n} µs`),
};

function notice(text, kind = "info") {
  const n = $("#notice");
  n.textContent = text;
  n.className = `notice ${kind}`;
  n.hidden = !text;
}

// ---------------------------------------------------------------- charts (plain SVG)

// Lines over a shared x axis: series = [{name, values: [number], cls}], labels = x values (ms).
const clock = (ms) => new Date(ms).toISOString().slice(11, 19);
const day = (ms) => new Date(ms).toISOString().slice(5, 16).replace("T", " ");

function lineChart(target, labels, series, { unit = "", xfmt = clock } = {}) {
  const W = 560, H = 200, L = 56, B = 24, T = 10, R = 10;
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img" });
  const all = series.flatMap((x) => x.values);
  const max = Math.max(1, ...all) * 1.1;
  const n = Math.max(2, labels.length);
  const x = (i) => L + ((W - L - R) * i) / (n - 1);
  const y = (v) => H - B - ((H - B - T) * v) / max;
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    s.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    const t = svg("text", { x: L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" });
    t.textContent = v >= 100 ? Math.round(v).toString() : v.toFixed(1);
    s.append(t);
  }
  const ends = labels.length > 1 ? [[0, "start"], [labels.length - 1, "end"]] : labels.length ? [[0, "start"]] : [];
  for (const [i, anchor] of ends) {
    const t = svg("text", { x: x(i), y: H - 6, class: "axis", "text-anchor": anchor });
    t.textContent = xfmt(labels[i]);
    s.append(t);
  }
  // A single point draws no line: mark it.
  if (labels.length === 1) {
    series.forEach((ser) => ser.values.length && s.append(svg("circle", { cx: x(0), cy: y(ser.values[0]), r: 3, class: `dot ${ser.cls}` })));
  }
  series.forEach((ser) => {
    if (!ser.values.length) return;
    const d = ser.values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    s.append(svg("path", { d, class: `line ${ser.cls}` }));
  });
  const legend = el("div", { class: "legend" }, ...series.map((ser) =>
    el("span", { class: `key ${ser.cls}`, text: `${ser.name}: ${ser.values.length ? fmtNum(ser.values[ser.values.length - 1]) : "–"}${unit}` })));
  if (!labels.length) {
    const t = svg("text", { x: W / 2, y: H / 2, class: "axis", "text-anchor": "middle" });
    t.textContent = "collecting samples…";
    s.append(t);
  }
  target.replaceChildren(s, legend);
}

function fmtNum(v) {
  return v >= 100 ? Math.round(v).toLocaleString("en-US") : (Math.round(v * 10) / 10).toString();
}

// Horizontal bars: items = [{label, value, cls}].
function barChart(items, { unit = "" } = {}) {
  const W = 560, row = 26, L = 150, R = 90;
  const H = Math.max(1, items.length) * row + 6;
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot bars", role: "img" });
  const max = Math.max(1, ...items.map((i) => i.value));
  items.forEach((it, k) => {
    const yy = k * row + 4;
    const w = ((W - L - R) * it.value) / max;
    const label = svg("text", { x: L - 8, y: yy + 16, class: "axis", "text-anchor": "end" });
    label.textContent = it.label;
    s.append(label, svg("rect", { x: L, y: yy, width: Math.max(1, w), height: row - 8, class: `bar ${it.cls || ""}` }));
    const v = svg("text", { x: L + w + 6, y: yy + 16, class: "axis" });
    v.textContent = `${fmtNum(it.value)}${unit}`;
    s.append(v);
  });
  return s;
}

// ---------------------------------------------------------------- views

async function viewHealth() {
  const h = await api("/admin/v1/health");
  const ready = $("#ready");
  ready.textContent = h.ready ? "ready" : "not ready";
  ready.className = `pill ${h.ready ? "ok" : "bad"}`;
  const snap = h.snapshot;
  $("#health-cards").replaceChildren(
    card("Version", h.version, `${h.mode}, node ${h.node_id}`),
    card("Uptime", fmt.dur(h.uptime_s)),
    card("Snapshot", snap ? `v${snap.version}` : "none",
      snap ? `approved by ${snap.approved_by || "?"} at ${fmt.time(snap.approved_at)}` : "nothing approved yet"),
    card("Sessions", fmt.int(h.sessions.open), "open now"),
    card("Upstreams", `${h.upstreams_reachable}/${h.upstreams.length}`, "reachable"),
    card("Audit", h.audit.writable ? "writing" : "NOT WRITING",
      `${fmt.bytes(h.audit.bytes)} of ${fmt.bytes(h.audit.max_bytes)}, queue ${h.audit.queue_depth}, lag ${h.audit.lag_ms} ms (${h.audit.mode})`),
    card("TLS certificate", h.tls.not_after === null ? "–" : `expires ${new Date(h.tls.not_after * 1000).toISOString().slice(0, 10)}`,
      h.tls.fingerprint_sha256 ? `in ${fmt.int(h.tls.expires_in_days)} days; SHA-256 ${h.tls.fingerprint_sha256.slice(0, 23)}…` : "no TLS listener"),
  );
  rows($("#health-checks"), h.checks, (c) => [c.name, badge(c.ok ? "ok" : "fail", c.ok), c.detail]);
  rows($("#health-cores"), h.cores, (c) => [c.core, c.driver, fmt.int(c.requests), fmt.int(c.connections_open), fmt.int(c.sessions_open)]);
  rows($("#health-upstreams"), h.upstreams, (u) => [
    u.name, u.kind, u.endpoint,
    u.reachable === null ? badge("checking", null) : badge(u.reachable ? "reachable" : "unreachable", u.reachable),
    u.latency_ms === null ? "–" : `${u.latency_ms.toFixed(2)} ms`, u.failures, fmt.dur(u.next_check_s), u.error || "",
  ]);
}

function badge(text, ok) {
  return el("span", { class: `pill ${ok === null ? "" : ok ? "ok" : "bad"}`, text });
}

async function viewTraffic() {
  const t = await api("/admin/v1/traffic");
  const live = t.live || [];
  const last = live[live.length - 1];
  const d = t.by_decision || {};
  $("#traffic-cards").replaceChildren(
    card("Requests", fmt.int(t.requests), last ? `${fmtNum(last.requests_per_s)}/s now` : "since start"),
    card("Allowed", fmt.int(d.allowed || 0)),
    card("Denied", fmt.int(d.denied || 0)),
    card("Failed", fmt.int(d.failed || 0)),
    card("Added p50 / p99", `${fmt.us(t.latency.added.p50_us)} / ${fmt.us(t.latency.added.p99_us)}`, "since start"),
    card("Upstream p50 / p99", `${fmt.us(t.latency.upstream.p50_us)} / ${fmt.us(t.latency.upstream.p99_us)}`),
  );
  const labels = live.map((s) => s.at_ms);
  lineChart($("#chart-rate"), labels, [
    { name: "requests/s", values: live.map((s) => s.requests_per_s), cls: "s1" },
    { name: "denied/s", values: live.map((s) => s.denied_per_s), cls: "s2" },
    { name: "failed/s", values: live.map((s) => s.failed_per_s), cls: "s3" },
  ]);
  lineChart($("#chart-latency"), labels, [
    { name: "p50", values: live.map((s) => s.added_p50_us), cls: "s1" },
    { name: "p99", values: live.map((s) => s.added_p99_us), cls: "s2" },
  ], { unit: " µs" });
  rows($("#traffic-denials"), Object.entries(t.denials || {}).sort((a, b) => b[1] - a[1]), ([r, n]) => [r, fmt.int(n)]);
  rows($("#traffic-agents"), t.top_agents, (a) => [a.agent, fmt.int(a.requests)]);
  rows($("#traffic-tools"), t.top_tools, (x) => [x.tool, fmt.int(x.calls), fmt.int(x.allowed), fmt.int(x.denied), fmt.int(x.failed)]);
}

function auditQuery() {
  const f = new FormData($("#audit-form"));
  const q = new URLSearchParams();
  for (const k of ["agent", "tool", "decision", "reason"]) {
    const v = (f.get(k) || "").trim();
    if (v) q.set(k, v);
  }
  for (const k of ["from", "to"]) {
    const v = f.get(k);
    if (v) {
      const ms = new Date(v).getTime();
      if (!Number.isNaN(ms)) q.set(k, String(ms));
    }
  }
  return q;
}

async function searchAudit(more = false) {
  const q = auditQuery();
  $("#audit-export").href = `/admin/v1/audit/export?${q}`;
  q.set("limit", "100");
  if (more && state.auditNext) q.set("before", state.auditNext);
  const status = $("#audit-status");
  status.textContent = "searching…";
  let page;
  try {
    page = await api(`/admin/v1/audit?${q}`);
  } catch (e) {
    if (!(e instanceof Unauthenticated)) status.textContent = e.message;
    return;
  }
  const tbody = $("#audit-table tbody");
  if (!more) tbody.replaceChildren();
  for (const r of page.records) {
    tbody.append(el("tr", { "data-agent": r.agent || "" },
      el("td", { text: fmt.time(r.at_ms) }), el("td", { text: r.agent || "–" }),
      el("td", { text: r.method || "" }), el("td", { text: r.tool || "" }),
      el("td", {}, badge(r.decision, r.decision === "allowed")), el("td", { text: r.reason || "" }),
      el("td", { text: r.status }), el("td", { text: fmt.us(r.latency_us) }),
      el("td", { class: "mono", text: (r.snapshot || "").slice(0, 18) })));
  }
  const shown = tbody.children.length;
  state.auditNext = page.next;
  $("#audit-more").hidden = !page.next;
  status.textContent = `${shown} record${shown === 1 ? "" : "s"} shown, newest first` +
    `${page.next ? "; more are older" : ""} (${fmt.int(page.scanned)} read${page.partial ? ", time budget reached" : ""})`;
  if (shown === 0) tbody.replaceChildren(el("tr", {}, el("td", { colspan: 9, class: "muted", text: "no records match" })));
}

async function verifyAudit() {
  const out = $("#audit-verified");
  out.textContent = "verifying…";
  try {
    const v = await api("/admin/v1/audit/verify");
    out.textContent = `${v.verified ? "Verified" : "BROKEN"}: ${v.cores} cores, ${v.segments} segments, ${fmt.int(v.events)} records, ${v.checkpoints} signed checkpoints, ${v.breaks.length} problem(s)`;
    out.className = v.verified ? "ok-text" : "error";
  } catch (e) {
    if (!(e instanceof Unauthenticated)) out.textContent = e.message;
  }
}

async function viewSessions() {
  const f = new FormData($("#sessions-form"));
  const q = new URLSearchParams({ offset: String(state.sessionsOffset), limit: String(SESSIONS_PAGE) });
  for (const k of ["agent", "q"]) {
    const v = (f.get(k) || "").trim();
    if (v) q.set(k, v);
  }
  const p = await api(`/admin/v1/sessions?${q}`);
  state.sessionsTotal = p.total;
  rows($("#sessions-table"), p.sessions, (s) => [
    el("span", { class: "mono", text: s.id }), s.agent || "–", s.revision, s.transport, s.client || "",
    fmt.dur(s.age_s), fmt.dur(s.idle_s), fmt.int(s.requests), s.streams,
    el("button", { class: "danger", "data-session": s.id, text: "Revoke", onclick: () => revokeSession(s.id) }),
  ]);
  const to = Math.min(p.total, state.sessionsOffset + p.sessions.length);
  $("#sessions-status").textContent = p.total
    ? `${state.sessionsOffset + 1}–${to} of ${fmt.int(p.total)} sessions` : "no sessions";
  $("#sessions-prev").disabled = state.sessionsOffset === 0;
  $("#sessions-next").disabled = to >= p.total;
}

async function revokeSession(id) {
  try {
    const r = await api("/admin/v1/sessions/revoke", { method: "POST", body: { id } });
    notice(`Revoked ${r.revoked.length} session(s): ${id}`);
  } catch (e) {
    if (!(e instanceof Unauthenticated)) notice(`Revoking failed: ${e.message}`, "bad");
  }
  await viewSessions();
}

async function viewSnapshots() {
  const list = await api("/admin/v1/snapshots");
  list.sort((a, b) => b.version - a.version);
  rows($("#snapshots-table"), list, (s) => [
    `v${s.version}`, s.active ? badge("active", true) : "", s.approved_by, fmt.time(s.approved_at), s.note,
    (s.policy_ids || []).length, el("span", { class: "mono", title: s.hash, text: s.hash.slice(0, 16) }),
    el("button", { class: "quiet", text: "vs previous", onclick: () => diff(s.version - 1, s.version), disabled: s.version > 1 ? null : "" }),
  ]);
  for (const id of ["#diff-a", "#diff-b"]) {
    const sel = $(id);
    const keep = sel.value;
    sel.replaceChildren(...list.map((s) => el("option", { value: s.version, text: `v${s.version}` })));
    if (keep && list.some((s) => String(s.version) === keep)) sel.value = keep;
  }
  if (!$("#diff-a").dataset.set && list.length > 1) {
    $("#diff-a").value = String(list[1].version);
    $("#diff-b").value = String(list[0].version);
    $("#diff-a").dataset.set = "1";
  }
}

async function diff(a, b) {
  const out = $("#diff-out");
  try {
    const d = await api(`/admin/v1/snapshots/${a}/diff/${b}`);
    out.replaceChildren(el("h3", { text: `v${a} → v${b}` }));
    for (const part of ["capabilities", "agents", "policies", "tools"]) {
      const x = d[part] || { added: [], removed: [], changed: [] };
      const items = [
        ...x.added.map((n) => el("li", { class: "added", text: `+ ${n}` })),
        ...x.removed.map((n) => el("li", { class: "removed", text: `− ${n}` })),
        ...x.changed.map((n) => el("li", { class: "changed", text: `~ ${n}` })),
      ];
      out.append(el("div", { class: "card diff" }, el("h4", { text: part }),
        items.length ? el("ul", {}, ...items) : el("p", { class: "muted", text: "no change" })));
    }
  } catch (e) {
    if (!(e instanceof Unauthenticated)) out.replaceChildren(el("p", { class: "error", text: e.message }));
  }
}

const CONTENDER_CLASS = (name) => (name.startsWith("portcullis") ? "s1" : name.startsWith("nginx") ? "s2" : name.startsWith("direct") ? "s3" : "s4");

async function viewBench() {
  const b = await api("/admin/v1/bench");
  $("#bench-dir").textContent = `Result files in ${b.dir}` + (b.problems.length ? ` (skipped: ${b.problems.join("; ")})` : "");
  const files = b.files.filter((f) => f.result && typeof f.result.results === "object");
  const cards = files.map((f) => {
    const r = f.result;
    const names = Object.keys(r.results);
    const bars = barChart(names.map((n) => ({ label: n, value: r.results[n].throughput_rps || 0, cls: CONTENDER_CLASS(n) })), { unit: " req/s" });
    const table = el("table", {}, el("thead", {}, el("tr", {}, ...["Contender", "Conc.", "req/s", "p50", "p99", "p99.9", "Errors"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...names.map((n) => {
        const x = r.results[n];
        return el("tr", {}, el("td", { text: n }), el("td", { text: x.concurrency ?? "" }), el("td", { text: fmt.int(Math.round(x.throughput_rps || 0)) }),
          el("td", { text: fmt.us(x.p50_us) }), el("td", { text: fmt.us(x.p99_us) }), el("td", { text: fmt.us(x.p999_us) }), el("td", { text: x.errors ?? "" }));
      })));
    const ratios = r.ratios ? el("ul", { class: "ratios" }, ...Object.entries(r.ratios).map(([k, v]) =>
      el("li", {}, el("span", { class: "mono", text: k }), ` ${typeof v === "number" ? (Math.abs(v) < 10 ? v.toFixed(2) + (k.includes("_us") ? "" : "×") : fmtNum(v)) : String(v)}`))) : null;
    return el("article", { class: "card bench-card", "data-bench": f.name },
      el("h3", { text: f.name }),
      el("p", { class: "muted", text: `${r.when || ""} · commit ${r.commit || "?"} · ${r.profile || "release"}${r.payload || (r.config && r.config.payload) ? " · " + (r.payload || r.config.payload) : ""}` }),
      bars, table, ratios);
  });
  $("#bench-files").replaceChildren(...(cards.length ? cards : [el("p", { class: "muted", text: "No result files yet: run bench/run or one of the bench scripts." })]));
  // History: per bench, each contender's throughput over the runs, oldest first.
  const hist = $("#bench-history");
  const byBench = new Map();
  for (const h of b.history) {
    if (!h.bench || !h.results || typeof h.results !== "object") continue;
    if (!byBench.has(h.bench)) byBench.set(h.bench, []);
    byBench.get(h.bench).push(h);
  }
  if (byBench.size) {
    const list = el("div", { class: "history" });
    for (const [name, runs] of byBench) {
      const contenders = [...new Set(runs.flatMap((r) => Object.keys(r.results)))].slice(0, 4);
      const target = el("div", { class: "chart" });
      const labels = runs.map((r) => Date.parse(r.when) || 0);
      lineChart(target, labels, contenders.map((c, i) => ({
        name: `${c} req/s`, values: runs.map((r) => (r.results[c] && r.results[c].throughput_rps) || 0), cls: `s${i + 1}`,
      })), { xfmt: day });
      list.append(el("figure", { "data-history": name }, el("figcaption", { text: `${name}: ${runs.length} run(s)` }), target));
    }
    hist.replaceChildren(el("h3", { text: "History" }), list);
  } else {
    hist.replaceChildren();
  }
}

// ---------------------------------------------------------------- shell

const VIEWS = {
  health: { draw: viewHealth, every: 2000 },
  traffic: { draw: viewTraffic, every: 2000 },
  audit: { draw: async () => { if (!$("#audit-table tbody").children.length) await searchAudit(); }, every: 0 },
  sessions: { draw: viewSessions, every: 5000 },
  snapshots: { draw: viewSnapshots, every: 3000 },
  bench: { draw: viewBench, every: 0 },
};

async function headerTick() {
  try {
    const h = await api("/admin/v1/health");
    const label = h.snapshot ? `snapshot v${h.snapshot.version}` : "no snapshot";
    const pill = $("#snapshot-label");
    pill.textContent = label;
    pill.className = `pill ${h.snapshot ? "ok" : "bad"}`;
    if (lastSnapshot !== null && h.snapshot && lastSnapshot !== h.snapshot.version) {
      notice(`The active snapshot changed: v${lastSnapshot} → v${h.snapshot.version} (approved by ${h.snapshot.approved_by}).`);
    }
    lastSnapshot = h.snapshot ? h.snapshot.version : lastSnapshot;
  } catch { /* shown by api() */ }
}

function show(name) {
  if (!VIEWS[name]) name = "health";
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${name}`;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === name);
  clearInterval(timer);
  const { draw, every } = VIEWS[name];
  const run = async () => {
    try {
      await draw();
      document.body.dataset.drawn = name;
    } catch (e) {
      if (!(e instanceof Unauthenticated)) notice(`${name}: ${e.message}`, "bad");
    }
  };
  run();
  timer = setInterval(() => {
    headerTick();
    if (every) run();
  }, every || 3000);
}

function showLogin(message = "") {
  clearInterval(timer);
  csrf = null;
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  $("#token").focus();
}

function showApp() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  headerTick();
  show(location.hash.slice(1));
}

async function start() {
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = $("#token").value.trim();
    const r = await fetch("/console/login", {
      method: "POST",
      headers: { "content-type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ token }),
    });
    if (r.ok) {
      csrf = (await r.json()).csrf;
      $("#token").value = "";
      showApp();
    } else {
      $("#login-error").textContent = r.status === 401 ? "That is not the admin token." : `Login failed (HTTP ${r.status}).`;
    }
  });
  $("#logout").addEventListener("click", async () => {
    try { await api("/console/logout", { method: "POST", body: {} }); } catch { /* logged out either way */ }
    showLogin("Logged out.");
  });
  $("#audit-form").addEventListener("submit", (ev) => { ev.preventDefault(); searchAudit(false); });
  $("#audit-more").addEventListener("click", () => searchAudit(true));
  $("#audit-verify").addEventListener("click", verifyAudit);
  $("#sessions-form").addEventListener("submit", (ev) => { ev.preventDefault(); state.sessionsOffset = 0; viewSessions(); });
  $("#sessions-prev").addEventListener("click", () => { state.sessionsOffset = Math.max(0, state.sessionsOffset - SESSIONS_PAGE); viewSessions(); });
  $("#sessions-next").addEventListener("click", () => { state.sessionsOffset += SESSIONS_PAGE; viewSessions(); });
  $("#diff-run").addEventListener("click", () => diff($("#diff-a").value, $("#diff-b").value));
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  const r = await fetch("/console/session", { credentials: "same-origin" });
  if (r.ok) {
    csrf = (await r.json()).csrf;
    showApp();
  } else {
    showLogin();
  }
}

start();

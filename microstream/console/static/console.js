// microstream web console: the coordinator's status (the structure of `microstream status --json`) as it changes,
// pushed by server-sent events. No framework, no CDN: everything it needs ships in the package.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const BIG = 2 ** 62;                       // watermarks at or past this mean "none yet" / "ended"
const ui = { status: null, job: null, dagFor: null, placementBusy: false, counts: {}, rates: {}, blocked: {} };

// -- small helpers ------------------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) el.setAttribute(k, v);
  }
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}
function s(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}
const fmt = (n) => Math.round(n).toLocaleString("en-US");
function bytes(n) {
  for (const [u, k] of [["GB", 1e9], ["MB", 1e6], ["kB", 1e3]]) if (Math.abs(n) >= k) return (n / k).toPrecision(3) + " " + u + "/s";
  return Math.round(n) + " B/s";
}
function clock(seconds) { return seconds ? new Date(seconds * 1000).toISOString().slice(11, 19) : "–"; }
function watermark(ns) {
  if (ns === null || ns === undefined || Math.abs(ns) >= BIG) return "–";
  return new Date(ns / 1e6).toISOString().slice(11, 19);
}
function fill(tbody, rows) { tbody.replaceChildren(...rows); }

// -- live rates: from the counts of two successive statuses -------------------------------------------------
function taskKinds(job) {
  const kinds = {};
  for (const n of (job.dag && job.dag.nodes) || []) for (const t of n.tasks || []) kinds[t] = n.kind;
  return kinds;
}
function updateRates(status) {
  const now = status.console_time;
  for (const [id, job] of Object.entries(status.jobs || {})) {
    const kinds = taskKinds(job);
    const counts = ui.counts[id] || {};
    const rates = {};
    const blocked = {};
    for (const [vn, v] of Object.entries(job.vnodes || {})) {
      const running = job.state === "running" && v.state === "running";
      for (const [task, op] of Object.entries(v.operators || {})) {
        const count = kinds[task] === "source" ? op.records_out : op.records_in;
        const last = counts[task];
        let rate = 0;
        if (running && last && now > last.t && count >= last.n) rate = (count - last.n) / (now - last.t);
        else if (running && op.rate) rate = op.rate;
        rates[task] = rate;
        counts[task] = { n: count, t: now };
      }
      const lastB = counts["#bp " + vn];
      blocked[vn] = running && lastB && now > lastB.t ? Math.min(1, Math.max(0, (v.backpressure_s - lastB.n) / (now - lastB.t))) : 0;
      counts["#bp " + vn] = { n: v.backpressure_s || 0, t: now };
    }
    ui.counts[id] = counts;
    ui.rates[id] = rates;
    ui.blocked[id] = blocked;
  }
}
function jobRateIn(id, job) {
  const kinds = taskKinds(job);
  let total = 0;
  for (const [task, r] of Object.entries(ui.rates[id] || {})) if (kinds[task] === "source") total += r;
  return total;
}
function deadTotal(job) { return Object.values(job.vnodes || {}).reduce((a, v) => a + (v.dead_letters || 0), 0); }

// -- the cluster: map and agents ----------------------------------------------------------------------------
function renderCluster(status) {
  const agents = status.agents || {};
  const topo = status.topology;
  const names = [...new Set([...(topo ? topo.nodes.map((n) => n.name) : []), ...Object.keys(agents)])].sort();
  const traffic = {};                      // "a|b" -> bytes/s measured between machines, every running job
  for (const job of Object.values(status.jobs || {})) {
    if (job.state !== "running") continue;
    for (const r of job.traffic || []) {
      if (!r.crosses_link || !r.from_node || !r.to_node) continue;
      const key = [r.from_node, r.to_node].sort().join("|");
      traffic[key] = (traffic[key] || 0) + r.bytes_per_s;
    }
  }
  const W = 640, H = names.length <= 2 ? 140 : Math.max(240, Math.min(440, 120 + names.length * 14));
  const cx = W / 2, cy = H / 2 - 8, R = names.length <= 2 ? 150 : Math.min(W, H) / 2 - 50;
  const pos = {};
  names.forEach((n, i) => {                // on a ring (two machines side by side)
    const a = (names.length <= 2 ? Math.PI : -Math.PI / 2) + (2 * Math.PI * i) / Math.max(1, names.length);
    pos[n] = names.length === 1 ? [cx, cy] : [cx + R * Math.cos(a), cy + R * Math.sin(a)];
  });
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "cluster-map" });
  const links = new Map();
  for (const l of (topo && topo.links) || []) links.set([l.a, l.b].sort().join("|"), l);
  for (const key of Object.keys(traffic)) if (!links.has(key)) links.set(key, null);
  for (const [key, l] of links) {
    const [a, b] = key.split("|");
    if (!pos[a] || !pos[b]) continue;
    const rate = traffic[key] || 0;
    const g = s("g", { class: "link", "data-link": key });
    g.append(s("line", { x1: pos[a][0], y1: pos[a][1], x2: pos[b][0], y2: pos[b][1],
      stroke: rate > 0 ? "#2471a3" : "#aab7b8", "stroke-width": rate > 0 ? 2 + Math.min(6, Math.log10(1 + rate) - 2) : 1.2,
      "stroke-dasharray": l ? "" : "5 4" }));
    const label = (rate > 0 ? bytes(rate) : "") + (l ? (rate > 0 ? " of " : "") + bytes(l.bandwidth).replace("/s", "/s link") : "");
    if (label) {
      g.append(s("text", { x: (pos[a][0] + pos[b][0]) / 2, y: (pos[a][1] + pos[b][1]) / 2 - 4, "text-anchor": "middle",
        "font-size": 10, fill: "#1c2833", stroke: "#fff", "stroke-width": 3, "paint-order": "stroke",
        class: "link-label" }, label));
    }
    svg.append(g);
  }
  for (const n of names) {
    const a = agents[n];
    const health = a ? a.health || (a.up ? "up" : "lost") : "absent";
    const colour = { up: "#1e8449", suspect: "#b9770e", lost: "#c0392b", absent: "#95a5a6" }[health] || "#95a5a6";
    const g = s("g", { class: "machine", "data-node": n, "data-health": health });
    g.append(s("circle", { cx: pos[n][0], cy: pos[n][1], r: 16, fill: colour, stroke: "#fff", "stroke-width": 2 }));
    g.append(s("text", { x: pos[n][0], y: pos[n][1] + 30, "text-anchor": "middle", "font-size": 12, "font-weight": "bold" }, n));
    const why = !a ? "no agent" : a.reason || "";
    if (why) g.append(s("text", { x: pos[n][0], y: pos[n][1] + 43, "text-anchor": "middle", "font-size": 10, fill: colour, class: "reason" }, why));
    g.append(s("title", {}, `${n}: ${health}${why ? " (" + why + ")" : ""}`));
    svg.append(g);
  }
  if (!names.length) document.getElementById("cluster-map").replaceChildren(h("div", { class: "empty" }, "no agents yet"));
  else document.getElementById("cluster-map").replaceChildren(svg);
  fill(document.querySelector("#agents tbody"), Object.entries(agents).sort().map(([n, a]) =>
    h("tr", { "data-node": n },
      h("td", {}, n),
      h("td", { class: "state-" + (a.health || (a.up ? "up" : "down")) }, a.up ? a.health || "up" : "DOWN" + (a.reason ? " (" + a.reason + ")" : "")),
      h("td", { class: "num" }, a.cores ?? "–"), h("td", {}, a.arch ?? "–"), h("td", {}, (a.backends || []).join(", ")),
      h("td", {}, Object.entries(a.labels || {}).map(([k, v]) => k + "=" + v).join(" ")))));
}

// -- jobs -----------------------------------------------------------------------------------------------------
function renderJobs(status) {
  const jobs = Object.entries(status.jobs || {});
  if (!ui.job || !(status.jobs || {})[ui.job]) {
    const running = jobs.filter(([, j]) => j.state === "running");
    ui.job = (running.length ? running[running.length - 1] : jobs[jobs.length - 1] || [null])[0];
  }
  fill(document.querySelector("#jobs tbody"), jobs.slice().reverse().map(([id, j]) => {
    const tr = h("tr", { "data-job": id, class: id === ui.job ? "selected" : "" },
      h("td", {}, id), h("td", { class: "state-" + j.state }, j.state + (j.reason ? " (" + j.reason + ")" : "")),
      h("td", { class: "num rate" }, fmt(jobRateIn(id, j))), h("td", { class: "num" }, Object.keys(j.vnodes || {}).length),
      h("td", { class: "num" }, (j.migrations || []).length), h("td", { class: "num" }, (j.checkpoints || []).length),
      h("td", { class: "num" }, (j.recoveries || []).length), h("td", { class: "num" }, fmt(deadTotal(j))));
    tr.addEventListener("click", () => { ui.job = id; ui.dagFor = null; render(); });
    return tr;
  }));
}

function renderJob(status) {
  const section = document.getElementById("job-section");
  const job = ui.job && status.jobs[ui.job];
  section.hidden = !job;
  if (!job) return;
  document.getElementById("job-title").textContent = `${ui.job} · ${job.state} · epoch ${job.epoch}`;
  document.getElementById("job-reason").textContent = job.reason || "";
  loadDag(job);
  loadPlacement();
  renderVnodes(job);
  renderTimeline(job);
  renderDeadLetters(job);
}

async function fetchSvg(kind) {
  const r = await fetch(`/api/jobs/${encodeURIComponent(ui.job)}/${kind}.svg`, { credentials: "same-origin" });
  return r.ok ? r.text() : null;
}

async function loadDag(job) {
  const key = `${ui.job}@${job.epoch}@${job.state}`;
  if (ui.dagFor !== key) {
    ui.dagFor = key;
    const text = await fetchSvg("dag");
    if (text === null || ui.dagFor !== key) return;
    document.getElementById("dag").innerHTML = text;  // drawn by the server from escaped text (viz.dag)
  }
  overlayDag(job);
}

function overlayDag(job) {
  const rates = ui.rates[ui.job] || {};
  const blocked = ui.blocked[ui.job] || {};
  const vnOf = {};
  const ops = {};
  for (const [vn, v] of Object.entries(job.vnodes || {})) {
    for (const t of v.tasks || []) vnOf[t] = vn;
    Object.assign(ops, v.operators || {});
  }
  for (const n of (job.dag && job.dag.nodes) || []) {
    const g = document.querySelector(`#dag g.node[data-id="${CSS.escape(n.id)}"]`);
    if (!g) continue;
    const box = g.querySelector("rect.node-box");
    const x = +box.getAttribute("x"), y = +box.getAttribute("y"), w = +box.getAttribute("width");
    g.querySelectorAll(".live, .badge-dead, .badge-bp").forEach((el) => el.remove());
    const detail = g.querySelector("text.node-detail");
    if (n.kind === "side") {
      const dead = deadTotal(job);
      g.setAttribute("data-dead", dead);
      if (detail) detail.textContent = `${fmt(dead)} dead letters`;
      continue;
    }
    const tasks = n.tasks || [];
    const rate = tasks.reduce((a, t) => a + (rates[t] || 0), 0);
    const wms = tasks.map((t) => ops[t] && ops[t].watermark).filter((w) => w !== undefined && w !== null);
    const wm = wms.length ? Math.min(...wms) : null;
    const bp = Math.max(0, ...tasks.map((t) => blocked[vnOf[t]] || 0));
    g.setAttribute("data-rate", rate.toFixed(1));
    g.setAttribute("data-watermark", wm === null ? "" : String(wm));
    g.classList.toggle("backpressured", bp > 0.05);
    const text = `${fmt(rate)}/s · wm ${watermark(wm)}`;
    if (detail) detail.textContent = text;
    else g.append(s("text", { class: "live", x: x + w / 2, y: y + 38, "text-anchor": "middle" }, text));
    if (bp > 0.01) g.append(s("text", { class: "badge-bp", x: x + w, y: y - 3, "text-anchor": "end" }, `backpressure ${Math.round(100 * bp)}%`));
    const deadHere = tasks.some((t) => vnOf[t] && (job.vnodes[vnOf[t]].dead_recent || []).some((d) => d.operator === n.name));
    if (deadHere) g.append(s("text", { class: "badge-dead", x, y: y - 3 }, "dead letters"));
  }
}

async function loadPlacement() {
  if (ui.placementBusy) return;
  ui.placementBusy = true;
  try {
    const text = await fetchSvg("placement");
    if (text !== null) document.getElementById("placement").innerHTML = text;
  } finally {
    ui.placementBusy = false;
  }
}

function renderVnodes(job) {
  const rates = ui.rates[ui.job] || {};
  const blocked = ui.blocked[ui.job] || {};
  fill(document.querySelector("#vnodes tbody"), Object.entries(job.vnodes || {}).map(([vn, v]) => {
    const first = (v.tasks || [])[0];
    return h("tr", { "data-vnode": vn },
      h("td", {}, vn), h("td", {}, v.agent || "–"), h("td", { class: "state-" + (v.state || "") }, v.state || "–"),
      h("td", {}, (v.tasks || []).join(" → ")), h("td", { class: "num" }, fmt(first ? rates[first] || 0 : 0)),
      h("td", { class: "num" }, Math.round(100 * (blocked[vn] || 0)) + "%"), h("td", { class: "num" }, fmt(v.dead_letters || 0)));
  }));
}

// -- timeline -------------------------------------------------------------------------------------------------
function events(job) {
  const out = [];
  if (job.submitted) out.push({ at: job.submitted, kind: "submitted", text: "submitted" });
  for (const m of job.migrations || []) {
    const auto = m.reason && m.reason !== "requested";
    const down = m.downtime_s === null || m.downtime_s === undefined ? "no records held" : `inputs held ${Math.round(1000 * m.downtime_s)} ms`;
    out.push({ at: m.at, kind: "move", auto, text: `${m.mode} ${m.vnode}: ${m.from} → ${m.to} (${auto ? "automatic: " + m.reason : "requested"}), ${down}, ${(m.total_s || 0).toFixed(2)} s in all` });
  }
  for (const c of job.checkpoints || []) out.push({ at: c.at, kind: "checkpoint", text: `checkpoint ${c.id}: ${fmt(c.bytes || 0)} bytes in ${(c.seconds || 0).toFixed(2)} s` });
  for (const r of job.recoveries || []) {
    out.push({ at: r.at, kind: "recovery", text: `recovery to epoch ${r.epoch} from ${r.checkpoint === null || r.checkpoint === undefined ? "the start" : "checkpoint " + r.checkpoint}: ${r.reason}` + (r.restarted_s ? `; running again after ${r.restarted_s.toFixed(2)} s` : "") });
  }
  if (job.finished) out.push({ at: job.finished, kind: "ended", text: job.state + (job.reason ? ": " + job.reason : "") });
  return out.sort((a, b) => (a.at || 0) - (b.at || 0));
}

function renderTimeline(job) {
  const list = events(job);
  fill(document.getElementById("timeline"), list.slice().reverse().map((e) =>
    h("li", { class: e.kind + (e.auto ? " automatic" : ""), "data-kind": e.kind }, h("time", {}, clock(e.at)), e.text)));
  const start = job.submitted || (list[0] && list[0].at) || 0;
  const end = job.finished || ui.status.console_time;
  const W = 640, H = 44, span = Math.max(1, end - start);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "timeline-strip" });
  svg.append(s("line", { x1: 10, y1: 22, x2: W - 10, y2: 22, stroke: "#aab7b8" }));
  const colour = { move: "#2471a3", checkpoint: "#1e8449", recovery: "#c0392b", submitted: "#566573", ended: "#566573" };
  for (const e of list) {
    if (!e.at) continue;
    const x = 10 + ((W - 20) * (e.at - start)) / span;
    const mark = e.kind === "move" ? s("rect", { x: x - 4, y: 14, width: 8, height: 16, fill: e.auto ? "#7d3c98" : colour.move })
      : s("circle", { cx: x, cy: 22, r: e.kind === "checkpoint" ? 3 : 5, fill: colour[e.kind] });
    mark.setAttribute("class", "mark " + e.kind);
    mark.append(s("title", {}, clock(e.at) + " " + e.text));
    svg.append(mark);
  }
  svg.append(s("text", { x: 10, y: 42, "font-size": 10, fill: "#5d6d7e" }, clock(start)));
  svg.append(s("text", { x: W - 10, y: 42, "font-size": 10, fill: "#5d6d7e", "text-anchor": "end" }, clock(end)));
  document.getElementById("timeline-strip").replaceChildren(svg);
}

// -- dead letters ---------------------------------------------------------------------------------------------
function renderDeadLetters(job) {
  const filter = document.getElementById("dead-filter").value.trim().toLowerCase();
  const rows = [];
  for (const [vn, v] of Object.entries(job.vnodes || {})) for (const d of v.dead_recent || []) rows.push({ vn, ...d });
  rows.sort((a, b) => (b.at || 0) - (a.at || 0));
  const shown = rows.filter((d) => !filter || [d.operator, d.reason, d.row, d.position].join(" ").toLowerCase().includes(filter));
  const body = document.querySelector("#dead-letters tbody");
  if (!shown.length) {
    fill(body, [h("tr", {}, h("td", { colspan: 5, class: "empty" }, rows.length ? "none match the filter" : "no dead letters"))]);
    return;
  }
  fill(body, shown.slice(0, 100).map((d) => h("tr", { class: "dead-letter" },
    h("td", {}, clock(d.at)), h("td", {}, d.operator || ""), h("td", {}, d.position || ""),
    h("td", {}, d.reason || ""), h("td", { class: "row" }, d.row || ""))));
}

// -- the stream -------------------------------------------------------------------------------------------------
function render() {
  const status = ui.status;
  if (!status) return;
  renderCluster(status);
  renderJobs(status);
  renderJob(status);
  document.getElementById("updated").textContent = "updated " + clock(status.console_time) + " UTC";
}

function connect() {
  const conn = document.getElementById("connection");
  const source = new EventSource("/api/events");
  source.addEventListener("status", (e) => {
    const status = JSON.parse(e.data);
    updateRates(status);
    ui.status = status;
    conn.dataset.state = "live";
    conn.textContent = "live";
    render();
  });
  source.onerror = () => {                 // EventSource reconnects by itself (a coordinator restart too)
    conn.dataset.state = "lost";
    conn.textContent = "reconnecting…";
  };
}

document.getElementById("dead-filter").addEventListener("input", () => { if (ui.status && ui.job) renderDeadLetters(ui.status.jobs[ui.job]); });
connect();

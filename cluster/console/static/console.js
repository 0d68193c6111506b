// Ray Coordinator console: four views over the JSON API, refreshed every REFRESH_MS.
// Every text reaches the page through textContent, never as HTML.
"use strict";

const REFRESH_MS = 1500;
const PAGE = 50;
const view = () => document.getElementById("view");
let busy = false;
let generation = 0;
let flashTimer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "width") node.style.width = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const stateBadge = (s) => el("span", { class: "state " + s, text: s });
// A long id keeps its start and its end (where a batch's ids differ), the whole in the tooltip.
const shortId = (id) => (id.length > 46 ? id.slice(0, 22) + "…" + id.slice(-22) : id);
const wfLink = (id) => el("a", { href: "#/workflow?id=" + encodeURIComponent(id), title: id, text: shortId(id) });
const time = (iso) => (iso ? el("span", { class: "mono", title: iso, text: iso.replace("T", " ") }) : el("span", { class: "muted", text: "—" }));

function retryText(row) {
  if (!row.next_retry_at) return el("span", { class: "muted", text: "—" });
  const s = row.next_retry_in_s;
  const rel = s > 0 ? ` (in ${s.toFixed(1)} s)` : " (due)";
  return el("span", {}, time(row.next_retry_at), el("span", { class: "muted", text: rel }));
}

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  return { path, params: new URLSearchParams(query || "") };
}

async function api(path, options) {
  const res = await fetch(path, Object.assign({ headers: { Accept: "application/json" } }, options));
  let body = {};
  try { body = await res.json(); } catch (_) { body = { error: res.statusText }; }
  if (!res.ok) throw Object.assign(new Error(body.error || res.statusText), { status: res.status });
  return body;
}

function flash(kind, text) {
  const box = document.getElementById("flash");
  box.className = "flash " + kind;
  box.textContent = text;
  box.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { box.hidden = true; }, 15000);
}

function setAccess(readOnly) {
  const a = document.getElementById("access");
  a.textContent = readOnly ? "read-only" : "operator";
  a.title = readOnly ? "started without an operator token: every action is refused"
    : "suspend, resume and each workflow's actions need the operator token";
  a.className = "access" + (readOnly ? " ro" : "");
}

async function act(action) {
  const token = document.getElementById("token").value;
  sessionStorage.setItem("console-token", token);
  try {
    const body = await api("/api/" + action, { method: "POST", headers: { "X-Console-Token": token } });
    const st = body.stats;
    flash("ok", action === "suspend"
      ? `Intake suspended by the operator (mode ${st.mode}); submits are refused until resumed.`
      : `Operator hold released (mode ${st.mode}).`);
  } catch (err) {
    flash("error", `${action[0].toUpperCase() + action.slice(1)} refused: ${err.message}`);
  }
  refresh();
}

async function retryNow(id) {
  const token = document.getElementById("token").value;
  sessionStorage.setItem("console-token", token);
  try {
    const body = await api("/api/retry-now?id=" + encodeURIComponent(id),
      { method: "POST", headers: { "X-Console-Token": token } });
    flash("ok", body.retried ? `Workflow ${id} retries now.` : `Workflow ${id} was not parked: nothing to retry.`);
  } catch (err) {
    flash("error", `Retry refused: ${err.message}`);
  }
  refresh();
}

function card(label, value, ...rest) {
  return el("div", { class: "card" }, el("div", { class: "label", text: label }), value, ...rest);
}

function sparkline(points) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 300 36");
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1, ...points);
  const step = 300 / Math.max(1, points.length - 1);
  const xy = points.map((p, i) => `${(i * step).toFixed(1)},${(34 - (p / max) * 32).toFixed(1)}`);
  const area = document.createElementNS(ns, "polygon");
  area.setAttribute("points", `0,36 ${xy.join(" ")} 300,36`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", xy.join(" "));
  svg.append(area, line);
  return svg;
}

function table(columns, rows, empty) {
  if (!rows.length) return el("div", { class: "empty", text: empty });
  return el("table", {},
    el("thead", {}, el("tr", {}, columns.map(([h, , cls]) => el("th", { class: cls, text: h })))),
    el("tbody", {}, rows.map((r) => el("tr", { "data-id": r.id },
      columns.map(([, cell, cls]) => el("td", { class: cls }, cell(r)))))));
}

const COLS = {
  id: ["Workflow", (r) => wfLink(r.id), "id"],
  type: ["Type", (r) => el("span", { class: "mono", text: r.type })],
  state: ["State", (r) => stateBadge(r.state)],
  attempts: ["Attempts", (r) => r.attempts, "num"],
  steps: ["Steps", (r) => (r.state === "running" ? el("span", { class: "muted", title: "a running workflow's steps show on its page", text: "—" }) : r.steps), "num"],
  submitted: ["Submitted", (r) => time(r.submitted_at)],
  finished: ["Finished", (r) => time(r.finished_at)],
  retry: ["Next retry", retryText],
  error: ["Error", (r) => (r.error_type ? el("span", { class: "mono", text: r.error_type }) : "")],
};

function throughputNote(tp) {
  const span = tp.per_s.length * tp.bucket_s;
  const range = span >= 120 ? `${Math.round(span / 60)} min` : `${Math.round(span)} s`;
  return `finished/s over the last ${range}, peak ${Math.max(0, ...tp.per_s).toFixed(1)}`;
}

function renderOverview(d) {
  const s = d.stats, tp = d.throughput, pct = Math.min(100, (100 * s.in_flight) / Math.max(1, s.max_cmds));
  const intake = d.intake.open ? "open" : "closed";
  const intakeNote = d.intake.held ? "held by the operator" : (d.intake.open ? "accepting submits" : "suspended by a blocked service");
  return [
    el("h1", { text: "Overview" }),
    el("div", { class: "cards" },
      card("Mode", el("div", { class: "value", id: "mode", text: s.mode }),
        el("div", { class: "note", text: `${s.running} running, ${s.parked} parked` })),
      card("Intake", el("div", { class: "value intake-" + intake, id: "intake", text: intake }),
        el("div", { class: "note", id: "intake-note", text: intakeNote }),
        el("div", { class: "actions" },
          el("button", { class: "btn danger", id: "suspend", type: "button", onclick: () => act("suspend"), text: "Suspend intake" }),
          el("button", { class: "btn", id: "resume", type: "button", onclick: () => act("resume"), text: "Resume" }))),
      card("In flight", el("div", { class: "value", id: "in-flight", text: `${s.in_flight} / ${s.max_cmds}` }),
        el("div", { class: "meter" }, el("div", { width: `${pct.toFixed(1)}%` })),
        el("div", { class: "note", text: `${s.waiting_admission} waiting for admission` })),
      card("Throughput", el("div", { class: "value", id: "throughput", text: `${tp.now_per_s} /s` }),
        tp.per_s.length > 1 ? sparkline(tp.per_s) : el("div", { class: "spark muted", text: "sampling…" }),
        el("div", { class: "note", text: throughputNote(tp) }))),
    el("h2", { text: "Workflows by state" }),
    el("div", { class: "counts" }, Object.keys(s.counts).map((st) =>
      el("a", { class: "count", href: "#/workflows?state=" + st },
        stateBadge(st), el("b", { id: "count-" + st, text: s.counts[st] ?? 0 })))),
    el("h2", {}, "In flight", el("span", { class: "sub", text: `running and pending, oldest first (up to ${d.rows_max} of each)` })),
    table([COLS.id, COLS.type, COLS.state, COLS.attempts, COLS.steps, COLS.submitted], d.in_flight, "Nothing in flight."),
    el("h2", {}, "Parked", el("span", { class: "sub", text: "delayed and blocked, next retry first" })),
    table([COLS.id, COLS.type, COLS.state, COLS.attempts, COLS.retry, COLS.submitted], d.parked, "Nothing parked."),
  ];
}

// Pages follow the supervisor's opaque cursor; ``offset`` only numbers the rows.
function listHref(params, cursor, offset) {
  const p = new URLSearchParams(params);
  p.delete("cursor");
  p.delete("offset");
  if (cursor) {
    p.set("cursor", cursor);
    p.set("offset", String(offset));
  }
  return "#/workflows?" + p.toString();
}

function renderList(d, params) {
  const filters = ["state", "type", "id"].filter((k) => params.get(k)).map((k) => `${k} “${params.get(k)}”`);
  const from = d.items.length ? d.offset + 1 : 0, to = d.offset + d.items.length;
  const of = d.total !== null ? ` of ${d.total}` : "";
  const scan = d.truncated ? ` — searched the first ${d.scanned} workflows only` : "";
  const order = "in flight first, then finished ones, the last to end first";
  return [
    el("h1", { text: "Workflows" }),
    el("div", { class: "filters", text: (filters.length ? `Filtered by ${filters.join(", ")}; ${order}` : `All workflows, ${order}`) + scan }),
    table([COLS.id, COLS.type, COLS.state, COLS.attempts, COLS.steps, COLS.submitted, COLS.finished, COLS.error],
      d.items, d.more ? "None on this page: the search goes on on the next." : "No workflow matches."),
    el("div", { class: "pager" },
      d.cursor ? el("a", { href: listHref(params, null, 0), id: "first", text: "⇤ Newest" }) : null,
      el("span", { id: "range", text: `${from}–${to}${of}` }),
      d.more ? el("a", { href: listHref(params, d.next, d.offset + d.items.length), id: "next", text: "Next →" }) : null),
  ];
}

function renderDeployments(d) {
  const cols = [
    ["Deployment", (r) => el("span", { class: "mono", text: r.id }), "id"],
    ["Runtime env", (r) => el("span", { class: "mono", text: r.runtime_env }), "wrap"],
    ["Types", (r) => (r.types.length ? el("span", { class: "mono", text: r.types.join(", ") }) : el("span", { class: "muted", text: "—" })), "wrap"],
    ["Unfinished", (r) => r.unfinished, "num"],
    ["Actors", (r) => r.actors, "num"],
    ["Nodes", (r) => r.nodes, "num"],
    ["Created", (r) => time(r.created_at)],
  ];
  return [
    el("h1", { text: "Deployments" }),
    el("div", { class: "filters", text: "CommandActor pools, each with its runtime_env, newest first: a workflow runs on the deployment it started on; one left with nothing unfinished is drained" }),
    table(cols, d.deployments, "No deployment."),
  ];
}

function renderTimeline(d) {
  if (!d.timeline.length) return el("div", { class: "empty", text: "No steps journaled yet." });
  return el("ol", { class: "timeline", id: "timeline" }, d.timeline.map((t) =>
    el("li", { class: t.kind, "data-service": t.service },
      el("div", { class: "tl-head" },
        el("span", { class: "tl-kind", text: t.kind === "compensation" ? `compensation ${t.step}` : `step ${t.step}` }),
        el("span", { class: "tl-service", text: t.service }),
        el("span", { class: "tl-time mono", title: t.at || "not journaled with the step", text: t.at ? t.at.replace("T", " ") : "-" }),
        el("span", { class: "tl-attempt", text: `attempt ${t.attempt ?? "-"}` }),
        el("span", { class: "tl-seq", text: t.seq !== null ? `journal seq ${t.seq}` : "" }),
        forkHere(d, t)),
      el("pre", { class: "tl-value", text: t.value }))));
}

function renderWorkflow(d) {
  const facts = [
    ["Type", el("span", { class: "mono", text: d.type })], ["State", stateBadge(d.state)], ["Attempts", d.attempts],
    ["Submitted", time(d.submitted_at)], ["Finished", time(d.finished_at)],
    ["Duration", d.duration_s !== null ? `${d.duration_s.toFixed(3)} s${d.finished_at ? "" : " so far"}` : "—"],
    ["Next retry", retryText(d)],
  ];
  const e = d.error;
  return [
    el("h1", { id: "wf-id", text: d.id }),
    el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)])),
    d.retry_offered ? el("div", { class: "actions" },
      el("button", { class: "btn", id: "retry-now", type: "button", onclick: () => retryNow(d.id), text: "Retry now" }),
      el("span", { class: "note", text: " instead of waiting for the next retry" })) : null,
    renderActions(d),
    e ? el("h2", { text: "Error" }) : null,
    e ? el("div", { class: "error-box", id: "error" },
      el("div", {}, el("span", { class: "etype", text: e.type || "error" }), ": ", e.message || ""),
      e.traceback ? el("details", { "data-key": "traceback" }, el("summary", { text: "Traceback" }),
        el("pre", { text: e.traceback })) : null) : null,
    el("h2", {}, "Timeline", el("span", { class: "sub", text: d.timeline_complete ? "steps in order, compensations after"
      : "compensations may be missing: the journal holds more outcomes than the console reads" })),
    renderTimeline(d),
  ];
}

// An operator typing in a field keeps its focus and caret across a refresh.
function keepFocus(was) {
  const now = document.getElementById(was.id);
  if (!now || now === was) return;
  now.focus();
  try { now.setSelectionRange(was.selectionStart, was.selectionEnd); } catch (_) { /* a number field has none */ }
}

async function refresh() {
  if (busy) return;
  busy = true;
  const mine = generation;
  const { path, params } = route();
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", (path === "/" && a.dataset.nav === "overview") || (path.startsWith("/workflow") && a.dataset.nav === "workflows")
      || (path === "/deployments" && a.dataset.nav === "deployments"));
  }
  try {
    let nodes;
    if (path === "/workflow") {
      const d = await api("/api/workflow?id=" + encodeURIComponent(params.get("id") || ""));
      setAccess(d.read_only);
      nodes = renderWorkflow(d);
    } else if (path === "/deployments") {
      const d = await api("/api/deployments");
      setAccess(d.read_only);
      nodes = renderDeployments(d);
    } else if (path === "/workflows") {
      const q = new URLSearchParams(params);
      q.set("limit", params.get("limit") || String(PAGE));
      const d = await api("/api/workflows?" + q.toString());
      const id = params.get("id");
      if (id && d.items.length === 1 && d.items[0].id === id && !params.get("type")) {
        location.replace("#/workflow?id=" + encodeURIComponent(id));
        return;
      }
      nodes = renderList(d, params);
    } else {
      const d = await api("/api/overview");
      setAccess(d.read_only);
      nodes = renderOverview(d);
    }
    if (mine !== generation) return;
    const open = new Set([...view().querySelectorAll("details[open]")].map((x) => x.dataset.key));
    const focused = view().contains(document.activeElement) ? document.activeElement : null;
    view().replaceChildren(...nodes.flat().filter(Boolean));
    for (const x of view().querySelectorAll("details")) if (open.has(x.dataset.key)) x.open = true;
    if (focused && focused.id) keepFocus(focused);
    const foot = document.getElementById("updated");
    foot.textContent = "updated " + new Date().toLocaleTimeString() + " · refreshes every " + REFRESH_MS / 1000 + " s";
    foot.parentElement.className = "foot";
  } catch (err) {
    if (mine !== generation) return;
    if (err.status === 404 || err.status === 400) view().replaceChildren(el("h1", { text: "Not found" }), el("div", { class: "empty", text: err.message }));
    const foot = document.getElementById("updated");
    foot.textContent = "refresh failed: " + err.message;
    foot.parentElement.className = "foot stale";
  } finally {
    busy = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token").value = sessionStorage.getItem("console-token") || "";
  document.getElementById("search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const k of ["id", "type", "state"]) {
      const v = document.getElementById("search-" + k).value.trim();
      if (v) p.set(k, v);
    }
    location.hash = "#/workflows?" + p.toString();
  });
  window.addEventListener("hashchange", () => { generation += 1; busy = false; refresh(); });
  refresh();
  setInterval(refresh, REFRESH_MS);
});

// modelgw console: one page over the gateway's own JSON API.
//
// Credentials typed into the sign-in form live in this tab's sessionStorage and
// travel only in the Authorization header; no token is ever put in a URL. Every
// piece of server text is inserted with textContent, never as HTML.
"use strict";

const AUTH_KEY = "modelgw.authorization";
const REFRESH_MS = 3000;
const PROGRESS_MS = 1000;

const $ = (id) => document.getElementById(id);

const state = {
  authNeeded: null, // {required, methods, inference_required} from /ui/api/auth
  view: null,
  key: null, // the deployment shown by the per-deployment view
  timer: null,
  busy: false, // a refresh is running
  deployments: {},
  example: null, // {content_type, body} of the try-it box when it came from a logged call
  logReplica: null,
};

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

const enc = encodeURIComponent;

function fmtNumber(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toFixed(digits);
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 10) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(0)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

function fmtRate(rate) {
  if (rate === null || rate === undefined) return "–";
  return `${(rate * 100).toFixed(rate > 0 && rate < 0.01 ? 2 : 1)} %`;
}

function fmtRps(rps) {
  if (rps === null || rps === undefined) return "–";
  return rps >= 100 ? rps.toFixed(0) : rps.toFixed(2);
}

function toast(message, bad = false) {
  const el = $("toast");
  el.textContent = message;
  el.classList.toggle("bad", bad);
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, bad ? 8000 : 4000);
}

function confirmDialog(title, text, okLabel) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

function authHeader() {
  return sessionStorage.getItem(AUTH_KEY);
}

// One road to the gateway: adds the credentials, parses JSON, maps errors.
async function api(method, path, { body, contentType, raw } = {}) {
  const headers = { Accept: "application/json" };
  const authorization = authHeader();
  if (authorization) headers.Authorization = authorization;
  if (body !== undefined) headers["Content-Type"] = contentType || "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, "unreachable", `the gateway did not answer (${err.message})`);
  }
  if (raw && response.ok) return response;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = text;
  }
  if (!response.ok) {
    const code = data && data.error ? data.error : `http_${response.status}`;
    const detail = data && data.detail ? data.detail : (typeof data === "string" ? data : response.statusText);
    const error = new ApiError(response.status, code, detail);
    if (response.status === 401) needSignIn(detail);
    throw error;
  }
  return { status: response.status, data, headers: response.headers };
}

// ------------------------------------------------------------------ sign-in

let signInMethod = "bearer";

function setSignInMethod(method) {
  signInMethod = method;
  for (const tab of document.querySelectorAll("#signin .tabs button")) {
    tab.setAttribute("aria-selected", String(tab.dataset.method === method));
  }
  for (const label of document.querySelectorAll("#signin-form label[data-for]")) {
    label.hidden = label.dataset.for !== method;
  }
}

function needSignIn(message) {
  if (authHeader()) {
    sessionStorage.removeItem(AUTH_KEY);
    $("signin-error").textContent = `Not accepted: ${message}`;
    $("signin-error").hidden = false;
  }
  showSignIn();
}

function showSignIn() {
  stopRefresh();
  state.view = null; // after signing in, the view loads all its panels again
  for (const view of document.querySelectorAll(".view")) view.hidden = true;
  const methods = (state.authNeeded && state.authNeeded.methods) || ["bearer"];
  for (const tab of document.querySelectorAll("#signin .tabs button")) {
    tab.hidden = !methods.includes(tab.dataset.method);
  }
  setSignInMethod(methods.includes(signInMethod) ? signInMethod : methods[0]);
  $("signin").hidden = false;
  $("signout").hidden = true;
  $("live").textContent = "signed out";
  (signInMethod === "bearer" ? $("signin-token") : $("signin-user")).focus();
}

async function submitSignIn(event) {
  event.preventDefault();
  let value;
  if (signInMethod === "bearer") {
    const token = $("signin-token").value.trim();
    if (!token) return;
    value = `Bearer ${token}`;
  } else {
    const user = $("signin-user").value;
    const password = $("signin-password").value;
    if (!user) return;
    // btoa needs Latin-1: encode UTF-8 first so any password works.
    const bytes = new TextEncoder().encode(`${user}:${password}`);
    value = `Basic ${btoa(String.fromCharCode(...bytes))}`;
  }
  sessionStorage.setItem(AUTH_KEY, value);
  $("signin-error").hidden = true;
  try {
    await api("GET", "/get_deployed_models");
  } catch (err) {
    if (err.status !== 401) {
      sessionStorage.removeItem(AUTH_KEY);
      $("signin-error").textContent = err.status === 403
        ? "This token does not grant management access (it is the inference token?)."
        : `Could not check the credentials: ${err.message}`;
      $("signin-error").hidden = false;
    }
    return;
  }
  $("signin-token").value = "";
  $("signin-password").value = "";
  $("signin").hidden = true;
  route();
}

function signOut() {
  sessionStorage.removeItem(AUTH_KEY);
  showSignIn();
}

// ------------------------------------------------------------------ routing

function parseRoute() {
  const hash = location.hash.replace(/^#/, "") || "/";
  if (hash.startsWith("/d/")) return { view: "deployment", key: decodeURIComponent(hash.slice(3)) };
  if (hash === "/deploy") return { view: "deploy" };
  return { view: "overview" };
}

function route() {
  if (state.authNeeded && state.authNeeded.required && !authHeader()) {
    showSignIn();
    return;
  }
  $("signout").hidden = !authHeader();
  const { view, key } = parseRoute();
  const changed = view !== state.view || key !== state.key;
  state.view = view;
  state.key = key || null;
  for (const section of document.querySelectorAll(".view")) {
    section.hidden = section.id !== `view-${view}`;
  }
  for (const link of document.querySelectorAll(".bar nav a")) {
    link.classList.toggle("active", link.dataset.nav === view);
  }
  if (changed) {
    if (view === "deploy") openDeploy();
    if (view === "deployment") openDeployment();
  }
  startRefresh();
}

function stopRefresh() {
  clearTimeout(state.timer);
  state.timer = null;
}

function startRefresh() {
  stopRefresh();
  refresh();
}

async function refresh() {
  stopRefresh();
  if (!document.hidden && !state.busy) {
    state.busy = true;
    try {
      if (state.view === "overview") await refreshOverview();
      else if (state.view === "deployment") await refreshDeployment();
      else if (state.view === "deploy") await refreshDeployModels();
      $("live").textContent = `updated ${new Date().toLocaleTimeString()}`;
      $("live").classList.remove("stale");
    } catch (err) {
      if (err.status === 401) return; // the sign-in form is showing
      $("live").textContent = `refresh failed: ${err.message}`;
      $("live").classList.add("stale");
    } finally {
      state.busy = false;
    }
  }
  if ($("signin").hidden) state.timer = setTimeout(refresh, REFRESH_MS);
}

// ----------------------------------------------------------------- overview

function statusBadge(status) {
  return h("span", { class: `badge ${status}`, text: status });
}

function replicaDot(replica) {
  if (replica.status === "running") return replica.healthy ? "ok" : "warn";
  if (replica.status === "fatal") return "bad";
  return "warn";
}

function versionText(entry) {
  if (entry.alias) {
    const alias = `@${entry.alias.name} → version ${entry.alias.serving_version}`;
    return entry.alias.error ? `${alias} (alias check failed: ${entry.alias.error})` : alias;
  }
  return `version ${entry.version}`;
}

function batchingText(entry) {
  const b = entry.batching;
  if (!b) return "batching off";
  return `batching ≤ ${b.max_batch_size} rows, ≤ ${b.max_batch_delay_ms} ms`;
}

function otherOptions(entry) {
  const skip = new Set(["max_batch_size", "max_batch_delay_ms"]);
  return Object.entries(entry.options || {}).filter(([name]) => !skip.has(name));
}

function deploymentCard(key, entry, figures) {
  const f = figures || {};
  const options = otherOptions(entry).map(([k, v]) => `${k.replace(/_/g, " ")} ${v}`);
  return h("article", { class: "card dep", "data-key": key },
    h("div", { class: "dep-head" },
      h("a", { href: `#/d/${enc(key)}`, text: key }),
      statusBadge(entry.status)),
    h("p", { class: "muted" }, `${entry.model_name} · ${versionText(entry)} · ${entry.replicas.length} replica(s)`),
    h("ul", { class: "replicas" }, entry.replicas.map((r) => h("li", {
      title: r.last_error || `${r.status}${r.healthy ? ", healthy" : ""}`,
    },
    h("span", { class: `dot ${replicaDot(r)}` }),
    `#${r.replica} ${r.status}${r.node ? ` · ${r.node}` : ""}${r.restarts ? ` · ${r.restarts} restart(s)` : ""}`))),
    h("div", { class: "metrics" },
      h("div", {}, h("span", { text: "req/s" }), h("strong", { text: fmtRps(f.rps) })),
      h("div", {}, h("span", { text: "errors" }), h("strong", { text: fmtRate(f.error_rate) })),
      h("div", {}, h("span", { text: "p50" }), h("strong", { text: fmtMs(f.p50_ms) })),
      h("div", {}, h("span", { text: "p99" }), h("strong", { text: fmtMs(f.p99_ms) }))),
    h("p", { class: "muted" }, [batchingText(entry), ...options].join(" · ")));
}

function kvList(target, pairs) {
  target.replaceChildren(...pairs.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]));
}

async function refreshOverview() {
  const [deployed, health, ports, stats] = await Promise.all([
    api("GET", "/get_deployed_models"),
    api("GET", "/health"),
    api("GET", "/get_number_free_ports"),
    api("GET", "/ui/api/stats"),
  ]);
  state.deployments = deployed.data;
  const keys = Object.keys(deployed.data).sort();
  $("sum-deployments").textContent = String(keys.length);
  $("sum-running").textContent = `${health.data.running} serving`;
  $("sum-ports").textContent = String(ports.data);
  const log = health.data.inference_log;
  kvList($("sum-log"), log ? [
    ["queue", String(log.pending)],
    ["store", log.store_up ? "up" : "DOWN"],
    ["written", String(log.written)],
    ["submitted", String(log.submitted)],
    ["spooled", String(log.spooled)],
    ["replayed", String(log.replayed ?? 0)],
    ["lost", String(log.lost)],
    ["retried", String(log.retried ?? 0)],
  ] : [["logging", "off (GATEWAY_LOG_INPUTS=0)"]]);
  $("no-deployments").hidden = keys.length > 0;
  $("deployments").replaceChildren(
    ...keys.map((key) => deploymentCard(key, deployed.data[key], stats.data.keys[key])));
}

// ------------------------------------------------------------------- deploy

async function refreshDeployModels() {
  // The deploy form loads its lists once; nothing to poll.
}

async function openDeploy() {
  $("d-result").hidden = true;
  const select = $("d-model");
  try {
    const models = (await api("GET", "/get_model_list")).data;
    const previous = select.value;
    select.replaceChildren(...models.map((name) => h("option", { value: name, text: name })));
    if (models.includes(previous)) select.value = previous;
    if (!models.length) select.append(h("option", { value: "", text: "(the registry has no models)" }));
    await loadVersions();
  } catch (err) {
    if (err.status !== 401) showResult(false, "Could not read the registry", err);
  }
}

async function loadVersions() {
  const model = $("d-model").value;
  const select = $("d-version");
  if (!model) {
    select.replaceChildren();
    return;
  }
  const versions = (await api("GET", `/get_model_version_list/${enc(model)}`)).data;
  if (model !== $("d-model").value) return; // another model was picked meanwhile
  // Keep the operator's choice when the list is loaded again.
  const chosen = select.dataset.model === model ? select.value : null;
  const sorted = [...versions].sort((a, b) => Number(b) - Number(a));
  select.replaceChildren(...sorted.map((v) => h("option", { value: v, text: v })));
  select.dataset.model = model;
  if (chosen && versions.includes(chosen)) select.value = chosen;
}

function deployMode() {
  return document.querySelector('input[name="d-mode"]:checked').value;
}

function showResult(ok, title, err, link) {
  const box = $("d-result");
  box.className = `panel ${ok ? "result-ok" : "result-bad"}`;
  const children = [h("strong", { text: title })];
  if (err) {
    children.push(h("p", { class: "error", text: `${err.status ? `${err.status} ` : ""}${err.code || ""}` }));
    children.push(h("pre", { class: "output", id: "d-error", text: err.detail || err.message }));
  }
  if (link) children.push(h("p", {}, h("a", { href: link.href, text: link.text })));
  box.replaceChildren(...children);
  box.hidden = false;
}

// Runs a long management call while showing the key's replica states.
async function withProgress(title, key, call, { progress = "d-progress", titleEl = "d-progress-title",
  elapsedEl = "d-elapsed", statesEl = "d-replica-states" } = {}) {
  const started = Date.now();
  $(titleEl).textContent = title;
  $(progress).hidden = false;
  let polling = true;
  const tick = async () => {
    while (polling) {
      $(elapsedEl).textContent = `${Math.round((Date.now() - started) / 1000)} s`;
      try {
        const entry = (await api("GET", "/get_deployed_models")).data[key];
        if (polling) {
          $(statesEl).replaceChildren(...(entry ? entry.replicas : []).map((r) =>
            h("li", {}, h("span", { class: `dot ${replicaDot(r)}` }),
              `replica ${r.replica}: ${r.status}${r.healthy ? ", healthy" : ""}`)));
        }
      } catch (_) { /* the call itself reports its failure */ }
      await new Promise((resolve) => setTimeout(resolve, PROGRESS_MS));
    }
  };
  const ticking = tick();
  try {
    return await call();
  } finally {
    polling = false;
    await ticking;
    $(progress).hidden = true;
  }
}

async function submitDeploy(event) {
  event.preventDefault();
  const model = $("d-model").value;
  if (!model) return;
  const alias = deployMode() === "alias";
  const ref = alias ? $("d-alias").value.trim() : $("d-version").value;
  if (!ref) {
    showResult(false, alias ? "Give an alias to follow." : "Pick a version.");
    return;
  }
  const key = alias ? `${model}@${ref}` : `${model}-${ref}`;
  const query = new URLSearchParams({
    replicas: $("d-replicas").value,
    max_batch_size: $("d-batch").value,
    max_batch_delay_ms: $("d-delay").value,
  });
  if ($("d-env").value) query.set("env_manager", $("d-env").value);
  if ($("d-replace").checked) query.set("replace", "true");
  const path = alias ? `/deploy/${enc(`${model}@${ref}`)}?${query}` : `/deploy/${enc(model)}/${enc(ref)}?${query}`;
  $("d-submit").disabled = true;
  $("d-result").hidden = true;
  try {
    const result = await withProgress(`Deploying ${key}…`, key, () => api("POST", path));
    const link = { href: `#/d/${enc(result.data.key)}`, text: `Open ${result.data.key}` };
    showResult(true, result.data.message || `${result.data.key} is ${result.data.status}`, null, link);
  } catch (err) {
    if (err.status !== 401) showResult(false, `Deploying ${key} failed`, err);
  } finally {
    $("d-submit").disabled = false;
  }
}

// --------------------------------------------------------- one deployment

function openDeployment() {
  state.example = null;
  state.logReplica = null;
  $("try-body").value = "";
  $("try-result").hidden = true;
  $("try-status").textContent = "";
  $("scale-status").hidden = true;
  $("scale-replicas").value = "";
  $("log-text").textContent = "";
  $("dep-key").textContent = state.key;
  $("drift").replaceChildren(h("p", { class: "muted", text: "Loading…" }));
  for (const id of ["chart-traffic", "chart-latency"]) $(id).replaceChildren();
  // Independent of the refresh loop: each fills its own panel when it answers.
  loadDrift();
  fillTryBox();
  loadLogs();
}

async function refreshDeployment() {
  const key = state.key;
  const [deployed, stats] = await Promise.all([
    api("GET", "/get_deployed_models"),
    api("GET", `/ui/api/stats?key=${enc(key)}`),
  ]);
  if (key !== state.key) return;
  state.deployments = deployed.data;
  const entry = deployed.data[key];
  $("dep-missing").hidden = Boolean(entry);
  $("dep-body").hidden = !entry;
  $("dep-replace").disabled = !entry;
  $("dep-undeploy").disabled = !entry;
  if (!entry) {
    $("dep-status").textContent = "";
    $("dep-status").className = "badge";
    $("dep-meta").textContent = "";
    return;
  }
  $("dep-status").textContent = entry.status;
  $("dep-status").className = `badge ${entry.status}`;
  $("dep-meta").textContent = `${entry.model_name} · ${versionText(entry)} · env ${entry.env_manager}`
    + ` · deployed ${entry.created_at || "?"}`;
  const figures = stats.data.keys[key] || {};
  $("dep-rps").textContent = fmtRps(figures.rps);
  $("dep-errors").textContent = fmtRate(figures.error_rate);
  $("dep-4xx").textContent = figures.client_error_rate ? `4xx ${fmtRate(figures.client_error_rate)}` : "";
  $("dep-p50").textContent = fmtMs(figures.p50_ms);
  $("dep-p99").textContent = fmtMs(figures.p99_ms);
  const series = stats.data.series || [];
  const now = stats.data.now;
  lineChart($("chart-traffic"), now, [
    { name: "requests/s", color: "#2457c5", points: series.map((p) => [p.t, p.rps]) },
    { name: "5xx/s", color: "#c53030", points: series.map((p) => [p.t, p.rps === null ? null : p.rps * (p.error_rate || 0)]) },
  ], fmtRps);
  lineChart($("chart-latency"), now, [
    { name: "p50", color: "#1f8a4c", points: series.map((p) => [p.t, p.p50_ms]) },
    { name: "p99", color: "#b7791f", points: series.map((p) => [p.t, p.p99_ms]) },
  ], (v) => (v < 10 ? v.toFixed(1) : v.toFixed(0)));
  renderReplicas(entry);
  renderSettings(entry);
  if ($("log-follow").checked) loadLogs();
}

function renderReplicas(entry) {
  const body = $("dep-replicas").querySelector("tbody");
  body.replaceChildren(...entry.replicas.map((r) => h("tr", {},
    h("td", { text: String(r.replica) }),
    h("td", {}, h("span", { class: `dot ${replicaDot(r)}` }), `${r.status}${r.healthy ? "" : " (not healthy)"}`),
    h("td", { text: r.node || "–" }),
    h("td", { text: r.port ? String(r.port) : "–" }),
    h("td", { text: r.pid ? String(r.pid) : "–" }),
    h("td", { text: String(r.restarts) }),
    h("td", { class: "err", text: r.last_error || "" }))));
  // Show the live count, unless the operator is typing a new one or a scale is under way.
  if (document.activeElement !== $("scale-replicas") && !$("scale-submit").disabled) {
    $("scale-replicas").value = String(entry.replicas.length);
  }
  const select = $("log-replica");
  const wanted = ["", ...entry.replicas.map((r) => String(r.replica))];
  const current = [...select.options].map((o) => o.value);
  if (wanted.join() !== current.join()) {
    const chosen = select.value;
    select.replaceChildren(...wanted.map((i) => h("option", { value: i, text: i === "" ? "all" : `#${i}` })));
    if (wanted.includes(chosen)) select.value = chosen;
  }
}

function renderSettings(entry) {
  const pairs = [
    ["replicas", String(entry.replicas.length)],
    ["batching", entry.batching ? `max ${entry.batching.max_batch_size} rows, ${entry.batching.max_batch_delay_ms} ms` : "off"],
  ];
  if (entry.batching) {
    pairs.push(["batches", `${entry.batching.batches} (${entry.batching.merged_calls} calls merged, ${entry.batching.queued} queued)`]);
  }
  for (const [name, value] of otherOptions(entry)) pairs.push([name.replace(/_/g, " "), String(value)]);
  pairs.push(["run", entry.run_uuid || "–"]);
  kvList($("dep-settings"), pairs);
}

// A small line chart in SVG: the last 15 minutes, one line per series.
function lineChart(el, now, seriesList, format) {
  // Drawn at the size it is shown, so its text stays readable on a phone.
  const W = Math.max(300, Math.round(el.getBoundingClientRect().width) || 600);
  const H = 220, left = 48, right = 12, top = 26, bottom = 26;
  el.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const span = 15 * 60;
  const start = now - span;
  const values = seriesList.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null && v !== undefined);
  el.replaceChildren();
  let max = values.length ? Math.max(...values) : 0;
  max = max > 0 ? niceCeil(max) : 1;
  const x = (t) => left + ((t - start) / span) * (W - left - right);
  const y = (v) => top + (1 - v / max) * (H - top - bottom);
  for (let i = 0; i <= 4; i += 1) {
    const v = (max * i) / 4;
    el.append(svg("line", { class: "grid", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
    el.append(svg("text", { class: "axis", x: left - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)));
  }
  for (const minutes of [15, 10, 5, 0]) {
    el.append(svg("text", { class: "axis", x: x(now - minutes * 60), y: H - 6, "text-anchor": "middle" },
      minutes ? `-${minutes} min` : "now"));
  }
  let legendX = left;
  for (const series of seriesList) {
    el.append(svg("rect", { x: legendX, y: 6, width: 12, height: 4, fill: series.color }));
    el.append(svg("text", { class: "legend", x: legendX + 16, y: 12 }, series.name));
    legendX += 24 + series.name.length * 7;
    // Runs of points become lines; a point alone between gaps becomes a dot.
    const runs = [[]];
    for (const [t, v] of series.points) {
      if (t < start || v === null || v === undefined) runs.push([]);
      else runs[runs.length - 1].push([x(t), y(v)]);
    }
    for (const run of runs) {
      if (run.length === 1) {
        el.append(svg("circle", { class: "dot", cx: run[0][0], cy: run[0][1], r: 3, fill: series.color }));
      } else if (run.length > 1) {
        const d = run.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join("");
        el.append(svg("path", { class: "line", d, stroke: series.color }));
      }
    }
  }
  if (!values.length) {
    el.append(svg("text", { class: "nodata", x: W / 2, y: H / 2, "text-anchor": "middle" },
      "no traffic yet: send a request with “Try it”"));
  }
}

function niceCeil(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

async function scale(event) {
  event.preventDefault();
  const key = state.key;
  const replicas = $("scale-replicas").value;
  $("scale-submit").disabled = true;
  $("scale-status").hidden = false;
  $("scale-status").textContent = `Scaling ${key} to ${replicas} replica(s)…`;
  try {
    const result = await api("POST", `/scale/${enc(key)}?replicas=${enc(replicas)}`);
    $("scale-status").textContent = result.data.message;
    toast(result.data.message);
  } catch (err) {
    if (err.status !== 401) $("scale-status").textContent = `Scaling failed: ${err.code}: ${err.detail}`;
  } finally {
    $("scale-submit").disabled = false;
    startRefresh();
  }
}

async function replace() {
  const key = state.key;
  const entry = state.deployments[key];
  if (!entry) return;
  const ok = await confirmDialog(`Replace ${key}?`,
    "New backends start; traffic moves to them once they are ready, and the old ones are drained.",
    "Replace");
  if (!ok) return;
  const path = entry.alias
    ? `/deploy/${enc(`${entry.model_name}@${entry.alias.name}`)}?replace=true`
    : `/deploy/${enc(entry.model_name)}/${enc(entry.version)}?replace=true`;
  $("dep-replace").disabled = true;
  toast(`Replacing ${key}…`);
  try {
    const result = await api("POST", path);
    toast(result.data.message);
  } catch (err) {
    if (err.status !== 401) toast(`Replacing ${key} failed: ${err.detail}`, true);
  } finally {
    $("dep-replace").disabled = false;
    startRefresh();
  }
}

async function undeploy() {
  const key = state.key;
  const ok = await confirmDialog(`Undeploy ${key}?`,
    "Its backends stop and calls to it will get 404 until it is deployed again.", "Undeploy");
  if (!ok) return;
  $("dep-undeploy").disabled = true;
  try {
    const result = await api("POST", `/undeploy/${enc(key)}`);
    toast(result.data.message);
    location.hash = "#/";
  } catch (err) {
    if (err.status !== 401) toast(`Undeploy failed: ${err.detail}`, true);
  } finally {
    $("dep-undeploy").disabled = false;
  }
}

// --------------------------------------------------------------- try it

const TYPE_DEFAULTS = { double: 0.0, float: 0.0, long: 0, integer: 0, boolean: false, string: "", binary: "", datetime: "1970-01-01T00:00:00" };

function requestFromSignature(signature) {
  const inputs = signature && signature.inputs;
  if (Array.isArray(inputs) && inputs.length && inputs.every((i) => i.name)) {
    if (inputs.every((i) => i.type !== "tensor")) {
      return { dataframe_split: { columns: inputs.map((i) => i.name), data: [inputs.map((i) => TYPE_DEFAULTS[i.type] ?? null)] } };
    }
    const named = {};
    for (const input of inputs) named[input.name] = [zeros(input["tensor-spec"])];
    return { inputs: named };
  }
  if (Array.isArray(inputs) && inputs.length && inputs[0].type === "tensor") {
    return { inputs: [zeros(inputs[0]["tensor-spec"])] };
  }
  return null;
}

function zeros(spec) {
  const shape = ((spec && spec.shape) || [-1]).slice(1).map((n) => (n > 0 ? n : 1));
  const build = (dims) => (dims.length ? Array.from({ length: dims[0] }, () => build(dims.slice(1))) : 0);
  return build(shape);
}

async function fromSignature() {
  const key = state.key;
  const signature = (await api("GET", `/model/${enc(key)}/signature`)).data;
  if (key !== state.key) return false;
  const body = requestFromSignature(signature);
  if (!body) {
    $("try-note").textContent = "The model has no usable signature: write the request yourself.";
    return false;
  }
  state.example = { content_type: "application/json" };
  $("try-body").value = JSON.stringify(body, null, 2);
  $("try-note").textContent = "Request body (built from the model's signature; placeholder values)";
  return true;
}

async function fromExample() {
  const key = state.key;
  const { example } = (await api("GET", `/ui/api/example/${enc(key)}`)).data;
  if (key !== state.key) return false;
  if (!example) {
    $("try-note").textContent = "No call of this deployment is logged yet.";
    return false;
  }
  state.example = example;
  let text = example.body;
  if (example.content_type.includes("json")) {
    try { text = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* keep it as logged */ }
  }
  $("try-body").value = text;
  $("try-note").textContent = `Request body (a call logged at ${example.logged_at}, ${example.content_type})`;
  return true;
}

async function fillTryBox() {
  try {
    if (await fromExample()) return;
  } catch (err) {
    if (err.status === 401) return;
  }
  try {
    await fromSignature();
  } catch (err) {
    if (err.status !== 401) $("try-note").textContent = `No signature: ${err.detail}`;
  }
}

async function tryButton(loader) {
  try {
    await loader();
  } catch (err) {
    if (err.status !== 401) toast(err.detail || err.message, true);
  }
}

async function sendTry() {
  const key = state.key;
  const body = $("try-body").value;
  const contentType = (state.example && state.example.content_type) || "application/json";
  $("try-send").disabled = true;
  $("try-status").textContent = "sending…";
  const started = performance.now();
  const out = $("try-result");
  try {
    const result = await api("POST", `/${enc(key)}`, { body, contentType });
    const ms = performance.now() - started;
    const version = result.headers.get("X-Model-Version");
    $("try-status").textContent = `${result.status} in ${fmtMs(ms)}${version ? ` · version ${version}` : ""}`;
    out.textContent = typeof result.data === "string" ? result.data : JSON.stringify(result.data, null, 2);
    out.classList.remove("error");
  } catch (err) {
    if (err.status === 401) return;
    $("try-status").textContent = `${err.status} ${err.code}`;
    out.textContent = err.detail || err.message;
  } finally {
    out.hidden = false;
    $("try-send").disabled = false;
  }
}

// ---------------------------------------------------------------- drift

async function loadDrift() {
  const key = state.key;
  const box = $("drift");
  try {
    const summary = (await api("GET", `/model/${enc(key)}/degradation_report?format=json`)).data;
    if (key !== state.key) return;
    // The summary lists drifted features per time window; show each feature once.
    const windowsOf = new Map();
    for (const [window, features] of Object.entries(summary.drifted_features || {})) {
      for (const feature of features) {
        if (!windowsOf.has(feature)) windowsOf.set(feature, []);
        windowsOf.get(feature).push(window.replace(/_/g, " "));
      }
    }
    const data = summary.data || {};
    const ok = summary.status === "ok";
    const children = [
      h("p", {}, h("span", { class: `badge ${ok ? "running" : summary.status === "insufficient_data" ? "" : "fatal"}`,
        id: "drift-status", text: summary.status.replace(/_/g, " ") }),
      ` ${data.logged_rows ?? 0} logged row(s) against ${data.reference_rows ?? 0} reference row(s),`
        + ` ${data.snapshots ?? 0} feedback snapshot(s); computed ${summary.generated_at || ""}`),
    ];
    if (windowsOf.size) {
      children.push(h("div", { class: "scroll" }, h("table", { class: "table" },
        h("thead", {}, h("tr", {}, h("th", { text: "Drifted feature" }), h("th", { text: "In windows" }))),
        h("tbody", {}, [...windowsOf].map(([feature, windows]) =>
          h("tr", {}, h("td", { text: feature }), h("td", { text: windows.join(", ") })))))));
    } else {
      children.push(h("p", { class: "muted", text: "No feature has drifted." }));
    }
    const degraded = summary.degraded_metrics || [];
    if (degraded.length) {
      children.push(h("p", { text: "Degraded metrics:" }), h("ul", { class: "drift-list" },
        degraded.map((m) => h("li", { text: String(m) }))));
    }
    for (const hint of summary.missing || []) children.push(h("p", { class: "muted", text: `Missing: ${hint}` }));
    box.replaceChildren(...children);
  } catch (err) {
    if (err.status === 401 || key !== state.key) return;
    box.replaceChildren(h("p", { class: "error", text: `No drift summary: ${err.detail || err.message}` }));
  }
}

async function downloadReport() {
  const key = state.key;
  $("drift-download").disabled = true;
  try {
    // Fetched with the credentials, then saved: a plain link could not carry the header.
    const response = await api("GET", `/model/${enc(key)}/degradation_report`, { raw: true });
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const link = h("a", { href: url, download: `${key}-degradation-report.zip` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    if (err.status !== 401) toast(`No report: ${err.detail || err.message}`, true);
  } finally {
    $("drift-download").disabled = false;
  }
}

// ------------------------------------------------------------------ logs

async function loadLogs(event) {
  if (event) event.preventDefault();
  const key = state.key;
  const replica = $("log-replica").value;
  const lines = $("log-lines").value || "100";
  const query = new URLSearchParams({ lines });
  if (replica !== "") query.set("replica", replica);
  try {
    const body = (await api("GET", `/logs/${enc(key)}?${query}`)).data;
    if (key !== state.key) return;
    const text = body.replicas.map((r) => (body.replicas.length > 1
      ? `── replica ${r.replica} (${r.status}${r.node ? `, ${r.node}` : ""}) ──\n${r.log || "(no output)"}`
      : r.log || "(no output yet)")).join("\n\n");
    const pre = $("log-text");
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    pre.textContent = text;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  } catch (err) {
    if (err.status === 401 || key !== state.key) return;
    $("log-text").textContent = err.status === 404 ? "(not deployed)" : `No log: ${err.detail || err.message}`;
  }
}

// ----------------------------------------------------------------- start

async function start() {
  for (const tab of document.querySelectorAll("#signin .tabs button")) {
    tab.addEventListener("click", () => setSignInMethod(tab.dataset.method));
  }
  $("signin-form").addEventListener("submit", submitSignIn);
  $("signout").addEventListener("click", signOut);
  $("deploy-form").addEventListener("submit", submitDeploy);
  $("d-model").addEventListener("change", () => loadVersions().catch((err) => toast(err.message, true)));
  for (const radio of document.querySelectorAll('input[name="d-mode"]')) {
    radio.addEventListener("change", () => {
      for (const label of document.querySelectorAll("#deploy-form [data-mode]")) {
        label.hidden = label.dataset.mode !== deployMode();
      }
    });
  }
  $("scale-form").addEventListener("submit", scale);
  $("dep-replace").addEventListener("click", replace);
  $("dep-undeploy").addEventListener("click", undeploy);
  $("try-signature").addEventListener("click", () => tryButton(fromSignature));
  $("try-example").addEventListener("click", () => tryButton(fromExample));
  $("try-send").addEventListener("click", sendTry);
  $("drift-refresh").addEventListener("click", loadDrift);
  $("drift-download").addEventListener("click", downloadReport);
  $("log-form").addEventListener("submit", loadLogs);
  $("log-replica").addEventListener("change", () => loadLogs());
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => { if (!document.hidden && state.timer) startRefresh(); });
  try {
    const response = await fetch("/ui/api/auth", { cache: "no-store" });
    state.authNeeded = await response.json();
  } catch (_) {
    state.authNeeded = { required: false, methods: [] };
  }
  route();
}

document.addEventListener("DOMContentLoaded", start);

// ndn-edge dashboard: plain JavaScript against /api/v1 (docs/http.md); no build step, no CDN.
// The token lives in sessionStorage (this tab only) and goes out as `Authorization: Bearer`; the event stream is
// read with fetch() so that it carries the header too (EventSource cannot send one).
"use strict";

const API = "/api/v1";
const STATE_OF_EVENT = { join: "online", leave: "left", offline: "offline", sleep: "asleep" };
const MAX_MESSAGES = 50;
let token = sessionStorage.getItem("ndn-edge-token") || "";
const devices = new Map();  // "sim/1" -> {item, card}
let streamAbort = null;
let topicAbort = null;

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
};
const relative = (full) => full.split("/").filter(Boolean).slice(1).join("/");
const when = (ts) => ts ? new Date(ts * 1000).toLocaleTimeString() : "never";

class ApiError extends Error {
  constructor(status, problem) {
    super(`${problem.code || status}: ${problem.detail || problem.title || "request failed"}`);
    this.status = status;
  }
}

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(API + path, { method, headers, signal,
                                        body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => ({}));
  if (res.status === 401) signOut("The token was refused (wrong, revoked, or its client removed).");
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// -- Server-Sent Events over fetch, with reconnection and Last-Event-ID

async function follow(path, onEvent, signal, onStatus) {
  let lastId = null;
  while (!signal.aborted) {
    try {
      const headers = { Authorization: `Bearer ${token}`, Accept: "text/event-stream" };
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      const res = await fetch(API + path, { headers, signal });
      if (res.status === 401) { signOut("The token was refused."); return; }
      if (!res.ok) {
        const problem = await res.json().catch(() => ({}));
        onStatus(false, problem.detail || `HTTP ${res.status}`);
        if (res.status === 403 || res.status === 400) return;
      } else {
        onStatus(true);
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let name = "message", data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) name = line.slice(6).trim();
              else if (line.startsWith("data:")) data += line.slice(5).trim();
              else if (line.startsWith("id:")) lastId = line.slice(3).trim();
            }
            if (data) onEvent(name, JSON.parse(data));
          }
        }
        onStatus(false, "reconnecting");
      }
    } catch (err) {
      if (signal.aborted) return;
      onStatus(false, "reconnecting");
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// -- sign-in

function signOut(why = "") {
  token = "";
  sessionStorage.removeItem("ndn-edge-token");
  if (streamAbort) streamAbort.abort();
  if (topicAbort) topicAbort.abort();
  $("#app-view").hidden = true;
  $("#signin-view").hidden = false;
  $("#signout").hidden = true;
  $("#who").textContent = "";
  $("#signin-error").textContent = why;
}

async function signIn(candidate) {
  token = candidate.trim();
  try {
    const doc = await api("/openapi.json");
    sessionStorage.setItem("ndn-edge-token", token);
    const client = (doc.info.description.match(/client '([^']+)'/) || [])[1] || "";
    $("#who").textContent = client ? `signed in as ${client}` : "";
    $("#signin-view").hidden = true;
    $("#app-view").hidden = false;
    $("#signout").hidden = false;
    $("#signin-error").textContent = "";
    await loadDevices();
    api("/operations?page_size=20").then((page) => page.items
      .filter((op) => !["done", "failed", "cancelled"].includes(op.state)).reverse().forEach(trackOperation))
      .catch(() => {});
    streamAbort = new AbortController();
    follow("/events?members=true", onMemberEvent, streamAbort.signal, setLink);
    watchTopic($("#topic").value);
  } catch (err) {
    if (token) signOut(err.message);
  }
}

function setLink(live, why) {
  const link = $("#link");
  link.textContent = live ? "live" : (why || "offline");
  link.className = "badge" + (live ? " live" : "");
}

// -- devices

async function loadDevices() {
  let pageToken = null;
  do {
    const query = pageToken ? `?page_size=200&page_token=${encodeURIComponent(pageToken)}` : "?page_size=200";
    const page = await api("/devices" + query);
    for (const item of page.items) showDevice(relative(item.name), item);
    pageToken = page.next_page_token;
  } while (pageToken);
}

function showDevice(name, item) {
  let entry = devices.get(name);
  if (!entry) {
    const card = $("#device-template").content.firstElementChild.cloneNode(true);
    card.dataset.device = name;
    $(".device-name", card).textContent = name;
    $(".health-button", card).addEventListener("click", () => showHealth(name, card));
    $(".services-button", card).addEventListener("click", () => toggleServices(name, card));
    entry = { item: {}, card };
    devices.set(name, entry);
    const list = $("#devices");
    const after = [...list.children].find((c) => c.dataset.device.localeCompare(name, undefined,
                                                                                 { numeric: true }) > 0);
    list.insertBefore(card, after || null);
  }
  Object.assign(entry.item, item);
  const state = entry.item.state || "unknown";
  const badge = $(".state", entry.card);
  badge.textContent = state === "asleep" && entry.item.sleep_until
    ? `asleep until ${when(entry.item.sleep_until)}` : state;
  badge.className = `badge state ${state}`;
  entry.card.classList.toggle("gone", state !== "online");
  $(".seen", entry.card).textContent = `last seen ${when(entry.item.last_seen)}`
    + (entry.item.services ? ` · ${entry.item.services} services` : "");
  $("#device-count").textContent = `(${[...devices.values()].filter((d) => d.item.state === "online").length}`
    + ` of ${devices.size} online)`;
}

function onMemberEvent(name, msg) {
  if (name !== "member") return;
  const value = msg.value || {};
  const device = value.device;
  if (!device) return;
  const state = STATE_OF_EVENT[value.event] || "unknown";
  const known = devices.has(device);
  showDevice(device, { state, last_seen: value.event === "join" ? value.time : (devices.get(device)?.item.last_seen),
                       sleep_until: value.sleep_until || null });
  if (!known || value.event === "join") loadDevices().catch(() => {});
}

async function showHealth(name, card) {
  const box = $(".health", card);
  box.hidden = false;
  box.replaceChildren(el("dt", { textContent: "health" }), el("dd", { textContent: "asking…" }));
  try {
    const h = (await api(`/devices/${name}/health`)).value;
    const rows = [["uptime", `${Math.round(h.uptime_ms / 1000)} s`], ["free heap", `${h.mem_free} B`],
                  ["requests", h.requests], ["errors", h.errors], ["out of memory", h.oom],
                  ["operations", h.ops_running], ["reports pending", h.reports_pending],
                  ["drops", Object.values(h.drops || {}).reduce((a, b) => a + b, 0)]];
    box.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { textContent: k }), el("dd", { textContent: v })]));
  } catch (err) {
    box.replaceChildren(el("dt", { textContent: "health" }), el("dd", { className: "error",
                                                                         textContent: err.message }));
  }
}

async function toggleServices(name, card) {
  const box = $(".services", card);
  if (!box.hidden) { box.hidden = true; return; }
  box.hidden = false;
  box.replaceChildren(el("p", { className: "muted", textContent: "loading…" }));
  try {
    const list = await api(`/devices/${name}/services`);
    box.replaceChildren(...list.items.filter((s) => !s.name.startsWith("_")).map((s) => serviceForm(name, s)));
  } catch (err) {
    box.replaceChildren(el("p", { className: "error", textContent: err.message }));
  }
}

// -- a form per service, from its argument schema

function typeOf(schema) {
  return typeof schema === "string" ? schema : (schema && schema.type) || "any";
}

function inputFor(argName, schema) {
  const type = typeOf(schema);
  const input = el("input", { name: argName });
  if (type === "bool") input.type = "checkbox";
  else if (type === "int") Object.assign(input, { type: "number", step: "1" });
  else if (type === "float" || type === "number") Object.assign(input, { type: "number", step: "any" });
  else input.placeholder = ["str", "text", "string", "bytes"].includes(type) ? type : `${type} as JSON`;
  input.dataset.type = type;
  return el("label", {}, `${argName} (${type})`, input);
}

function readArgs(form, declared) {
  if (!declared) {
    const text = form.elements.namedItem("__json").value.trim();
    return text ? JSON.parse(text) : {};
  }
  const args = {};
  for (const input of form.querySelectorAll("input[data-type]")) {
    const type = input.dataset.type;
    if (type === "bool") { args[input.name] = input.checked; continue; }
    if (input.value === "") continue;
    if (type === "int") args[input.name] = parseInt(input.value, 10);
    else if (type === "float" || type === "number") args[input.name] = parseFloat(input.value);
    else if (["str", "text", "string", "bytes"].includes(type)) args[input.name] = input.value;
    else {
      try { args[input.name] = JSON.parse(input.value); } catch { args[input.name] = input.value; }
    }
  }
  return args;
}

function serviceForm(device, svc) {
  const declared = svc.args && typeof svc.args === "object" ? svc.args : null;
  const form = el("form", { className: "service" });
  form.dataset.service = svc.name;
  const notes = [svc.cache_ms ? `cached ${svc.cache_ms} ms` : "", svc.idempotent === false ? "not idempotent" : "",
                 svc.long_running ? "long-running" : ""].filter(Boolean).join(" · ");
  form.append(el("h4", { textContent: svc.name }),
              el("p", { className: "muted doc", textContent: (svc.doc || "") + (notes ? ` (${notes})` : "") }));
  if (declared) for (const [argName, schema] of Object.entries(declared)) form.append(inputFor(argName, schema));
  else form.append(el("label", {}, "arguments (JSON object, optional)",
                      el("textarea", { name: "__json", rows: 1, placeholder: "{}" })));
  const result = el("pre", { className: "result", hidden: true });
  form.append(el("button", { type: "submit", textContent: svc.long_running ? "Start" : "Call" }), result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    result.hidden = false;
    result.classList.remove("error");
    result.textContent = "…";
    try {
      const args = readArgs(form, declared);
      if (svc.long_running) {
        const op = await api(`/start/${device}/${svc.name}`, { method: "POST", body: args });
        result.textContent = `started operation ${op.op}`;
        trackOperation(op);
      } else {
        const r = await api(`/call/${device}/${svc.name}`, { method: "POST", body: args });
        const where = r.cached ? `cached, ${r.age_ms} ms old` : "from the device";
        result.textContent = `${JSON.stringify(r.value, null, 1)}\n(${where}${r.stale ? ", STALE" : ""})`;
      }
    } catch (err) {
      result.classList.add("error");
      result.textContent = err.message;
    }
  });
  return form;
}

// -- long-running operations

async function trackOperation(op) {
  const list = $("#operations");
  if (list.querySelector(".muted")) list.replaceChildren();
  const bar = el("progress", { max: 1 });
  const text = el("span", { className: "mono" });
  const cancel = el("button", { type: "button", className: "secondary", textContent: "Cancel" });
  const item = el("li", {}, el("div", { className: "row spread" }, text, cancel), bar);
  item.dataset.op = op.op;
  list.prepend(item);
  cancel.addEventListener("click", () => api(`/operations/${op.op}`, { method: "DELETE" }).catch(() => {}));
  for (;;) {
    const done = ["done", "failed", "cancelled"].includes(op.state);
    text.textContent = `${op.target}: ${op.state}` + (op.state === "done" ? ` → ${JSON.stringify(op.result)}` : "")
      + (op.error ? ` (${op.error.code}: ${op.error.message})` : "");
    if (typeof op.progress === "number") bar.value = op.progress; else if (!done) bar.removeAttribute("value");
    if (done) { bar.value = op.state === "done" ? 1 : bar.value || 0; cancel.hidden = true; item.dataset.state = op.state; return; }
    try { op = await api(`/operations/${op.op}?wait=10`); } catch (err) { text.textContent = err.message; return; }
  }
}

// -- live topic view

function watchTopic(pattern) {
  if (topicAbort) topicAbort.abort();
  topicAbort = new AbortController();
  const list = $("#messages");
  list.replaceChildren();
  const status = $("#topic-status");
  status.textContent = `watching ${pattern}…`;
  follow(`/events?members=false&topic=${encodeURIComponent(pattern)}`, (name, msg) => {
    if (name !== "message") return;
    const line = el("li", { textContent: `${new Date(msg.time * 1000).toLocaleTimeString()} ${msg.topic} = `
      + `${JSON.stringify(msg.value)}${msg.retained ? " (retained)" : ""}${msg.gap ? ` (gap ${msg.gap})` : ""}` });
    line.dataset.topic = msg.topic;
    list.prepend(line);
    while (list.children.length > MAX_MESSAGES) list.lastElementChild.remove();
  }, topicAbort.signal, (live, why) => {
    status.textContent = live ? `watching ${pattern}` : `${pattern}: ${why}`;
  });
}

// -- start

document.addEventListener("DOMContentLoaded", () => {
  $("#signin").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("#token").value);
  });
  $("#signout").addEventListener("click", () => signOut());
  $("#topic-form").addEventListener("submit", (event) => {
    event.preventDefault();
    watchTopic($("#topic").value);
  });
  if (token) signIn(token);
});

// engbot's playground: the conversation arrives as Server-Sent Events read with fetch (so the token can travel in
// a header); questions and button presses are POSTed. No framework, no build step.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { token: null, conversation: null, admin: false, locked: false, online: false };
const TOKEN_KEY = "engbot-playground-token";

// ---- the token (PLAYGROUND_TOKEN): from #token=... once, then kept for this tab ----

function loadToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = sessionStorage.getItem(TOKEN_KEY);
}

function headers(json) {
  const result = {};
  if (state.token) result.Authorization = "Bearer " + state.token;
  if (json) result["Content-Type"] = "application/json";
  return result;
}

async function post(path, body) {
  let response;
  try {
    response = await fetch(path, { method: "POST", headers: headers(true), body: JSON.stringify(body || {}),
                                   credentials: "same-origin" });
  } catch (error) {
    toast("The bot cannot be reached.");
    return { ok: false, data: {} };
  }
  let data = {};
  try { data = await response.json(); } catch (error) { /* no body */ }
  if (!response.ok) {
    if (data.locked) showLock(data.error);
    else toast(data.error || "Error " + response.status);
  }
  return { ok: response.ok, data };
}

// ---- the event stream ----

async function connect() {
  let response;
  try {
    response = await fetch("/api/events", { headers: headers(false), credentials: "same-origin", cache: "no-store" });
  } catch (error) {
    return reconnect();
  }
  if (!response.ok) {
    let data = {};
    try { data = await response.json(); } catch (error) { /* no body */ }
    if (data.locked) return showLock(data.error);
    toast(data.error || "Error " + response.status);
    return reconnect(5000);
  }
  hideLock();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        received(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (error) { /* the connection dropped */ }
  setOnline(false);
  reconnect();
}

function reconnect(delay) {
  if (!state.locked) setTimeout(connect, delay || 1000);
}

function received(block) {
  let type = "message";
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) type = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (data) handle(type, JSON.parse(data));
}

function handle(type, data) {
  if (type === "hello") {
    state.conversation = data.conversation;
    state.admin = data.admin;
    $("#messages").replaceChildren();
    data.messages.forEach(show);
    setOnline(true);
  } else if (type === "reset") {
    state.conversation = data.conversation;
    $("#messages").replaceChildren();
  } else if (type === "post" || type === "edit") {
    if (data.conversation === state.conversation) show(data.message);
  } else if (type === "delete") {
    if (data.conversation === state.conversation) document.getElementById("m-" + data.id)?.remove();
  } else if (type === "tell") {
    toast(data.text);
  }
  $("#empty").hidden = $("#messages").children.length > 0;
}

// ---- messages ----

function show(message) {
  const list = $("#messages");
  let item = document.getElementById("m-" + message.id);
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  if (!item) {
    item = document.createElement("li");
    item.id = "m-" + message.id;
    item.className = "msg " + message.kind;
    item.append(document.createElement("div"), document.createElement("div"));
    item.firstChild.className = "text";
    item.lastChild.className = "controls";
    list.append(item);
  }
  item.dataset.running = message.controls.some((c) => c.action === "stop") ? "yes" : "no";
  item.firstChild.innerHTML = render(message.text);
  item.lastChild.replaceChildren(...message.controls.map(button));
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function button(control) {
  const element = plainButton(control.label, control.style, () => post("/api/press", { id: control.id }));
  element.dataset.action = control.action;
  const titles = { good: "A good answer", bad: "A bad answer" };
  if (titles[control.action]) element.title = element.ariaLabel = titles[control.action];
  return element;
}

function plainButton(label, style, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = label;
  if (style && style !== "default") element.className = style;
  element.addEventListener("click", onClick);
  return element;
}

function escape(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// A little Markdown, on escaped text: code blocks, inline code, bold, italics.
function render(text) {
  return escape(text).split(/```/).map((part, i) => {
    if (i % 2) return "<pre><code>" + part.replace(/^[\w+-]*\n/, "") + "</code></pre>";
    return part
      .replace(/`([^`\n]+)`/g, "<code>$1</code>")
      .replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[\s(])_([^_\n]+)_(?=$|[\s.,!?:;)])/g, "$1<em>$2</em>");
  }).join("");
}

// ---- asking ----

async function ask(event) {
  event.preventDefault();
  const box = $("#question");
  const text = box.value.trim();
  if (!text) return;
  const { ok } = await post("/api/ask", { text });
  if (ok) box.value = "";
  box.focus();
}

function toast(text) {
  const element = $("#toast");
  element.textContent = text;
  element.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { element.hidden = true; }, 5000);
}

function setOnline(online) {
  state.online = online;
  const pill = $("#online");
  pill.textContent = online ? "connected" : state.locked ? "locked" : "reconnecting…";
  pill.className = "pill" + (online ? "" : " off");
}

function showLock(reason) {
  state.locked = true;
  $("#lock-reason").textContent = reason;
  $("#lock").hidden = false;
  $("#ask").hidden = true;
  setOnline(false);
}

function hideLock() {
  state.locked = false;
  $("#lock").hidden = true;
  $("#ask").hidden = false;
}

// ---- the status panel ----

async function refreshStatus() {
  try {
    const response = await fetch("/api/status", { headers: headers(false), cache: "no-store" });
    renderStatus(await response.json());
  } catch (error) {
    $("#status-ready").replaceChildren(span("The bot cannot be reached.", "not-ready"));
  }
  setTimeout(refreshStatus, 2000);
}

function span(text, className) {
  const element = document.createElement("span");
  element.textContent = text;
  if (className) element.className = className;
  return element;
}

function pairs(target, entries) {
  target.replaceChildren(...entries.filter(([, v]) => v !== null && v !== undefined && v !== "").flatMap(([k, v]) => {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = k;
    dd.textContent = v;
    return [dt, dd];
  }));
}

function seconds(value) {
  return value === null || value === undefined ? "—" : value < 10 ? value.toFixed(2) + " s" : Math.round(value) + " s";
}

function ordinal(n) {
  const suffix = n % 100 >= 11 && n % 100 <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" })[n % 10] || "th";
  return n + suffix;
}

function renderStatus(status) {
  $("#status-updated").textContent = "engbot " + status.version;
  const ready = status.ready;
  const readyLine = [span(ready.ready ? "Ready" : "Not ready", ready.ready ? "ready" : "not-ready")];
  for (const [name, ok] of Object.entries(ready.checks)) readyLine.push(span(" · " + name + (ok ? " ✓" : " ✗")));
  for (const [name, why] of Object.entries(ready.waiting || {})) {
    readyLine.push(document.createElement("br"), span(name + ": " + why, "why"));
  }
  $("#status-ready").replaceChildren(...readyLine);

  const model = status.model;
  pairs($("#status-model"), model.file ? [["file", model.file], ["backend", model.backend],
    ["layout", model.layout], ["context", model.context ? model.context + " tokens" : "the model's own"]]
    : [["answered by", model.where]]);

  $("#status-replicas").replaceChildren(...(status.replicas || []).map((r) => {
    const item = document.createElement("li");
    const meter = document.createElement("meter");
    meter.max = r.slots;
    meter.value = r.busy;
    item.append(span("replica " + r.index + " · " + r.state), meter, span(r.busy + "/" + r.slots + " slots"));
    return item;
  }));
  if (!status.replicas) $("#status-replicas").replaceChildren(span("on the engbot worker hosts", "why"));

  const queue = status.queue;
  const rows = queue.jobs.map((job) => {
    const row = document.createElement("tr");
    const where = job.state === "waiting"
      ? ordinal(job.position) + " in line" + (job.eta_s ? ", ~" + Math.round(job.eta_s) + " s" : "") : "answering";
    for (const text of [job.job.slice(0, 8), job.platform, where, Math.round(job.age_s) + " s"]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    if (status.admin) {
      const cell = document.createElement("td");
      cell.append(plainButton("Stop", "danger", () => post("/api/status/stop", { job: job.job })));
      row.append(cell);
    }
    return row;
  });
  const table = document.createElement("table");
  table.className = "jobs";
  table.append(...rows);
  $("#status-queue").replaceChildren(
    span(queue.waiting + " waiting (at most " + queue.max + "), " + queue.running + " answering"), table);

  const recent = status.recent;
  pairs($("#status-recent"), [["answers", String(recent.answers)], ["first text after", seconds(recent.ttft_s)],
    ["speed", recent.tokens_per_s === null ? "—" : recent.tokens_per_s + " tok/s (one answer)"]]);

  $("#status-settings").replaceChildren(...status.settings.map(([name, value]) => {
    const row = document.createElement("tr");
    row.append(document.createElement("td"), document.createElement("td"));
    row.firstChild.textContent = name;
    row.lastChild.textContent = value;
    return row;
  }));
}

// ---- start ----

document.addEventListener("DOMContentLoaded", () => {
  loadToken();
  $("#ask").addEventListener("submit", ask);
  $("#question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) ask(event);
  });
  $("#new-chat").addEventListener("click", () => post("/api/new"));
  $("#lock-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    state.token = $("#token").value.trim();
    hideLock();
    connect();
  });
  connect();
  refreshStatus();
});

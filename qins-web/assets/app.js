// qins chat page: streams replies from POST /ui/chat (server-sent events
// read from a fetch body), keeps the conversation in memory, polls
// /ui/stats, and renders replies as Markdown with the vendored marked and
// DOMPurify.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "qins-web.apiKey";

const state = {
  history: [],          // {role, content} turns sent back each time
  sessionId: newSessionId(),
  controller: null,     // AbortController of the reply in flight
  lastTps: null,
  defaultsOf: null,     // the model whose chat defaults the settings show
  edited: new Set(),    // settings the user changed: kept across models
};

function newSessionId() {
  if (window.crypto && crypto.randomUUID) return "web-" + crypto.randomUUID();
  return "web-" + Math.random().toString(36).slice(2) + Date.now().toString(36);
}

// ---- Markdown ----

// marked (GitHub-flavoured Markdown: fences, lists, tables) turns a reply
// into HTML, and DOMPurify removes from it whatever could run or load
// (script, event handlers, javascript: URLs) before it reaches the page.
// Both are vendored (assets/vendor/README.md) and loaded before this file.
// `breaks`: a single newline is a line break, as models write them.
const markdown = new marked.Marked({ gfm: true, breaks: true });

function renderMarkdown(src) {
  const html = markdown.parse(src.replace(/\u0000/g, ""), { async: false });
  return DOMPurify.sanitize(html);
}

// Shows a reply: sanitized Markdown, and a Copy button on each code block.
function renderReply(el, src) {
  el.innerHTML = renderMarkdown(src);
  for (const pre of el.querySelectorAll("pre")) {
    const code = pre.querySelector("code") || pre;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "Copy";
    button.addEventListener("click", () => copyText(code.textContent, button));
    pre.appendChild(button);
  }
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {
    // The async clipboard needs a secure context (an https or loopback
    // page); elsewhere, copy through a selection.
    const area = document.createElement("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

// ---- HTTP ----

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorMessage(response) {
  if (response.status === 401) $("api-key").classList.add("wanted");
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return "HTTP " + response.status;
}

// Yields {event, data} from an SSE body. Events end with a blank line.
async function* sseEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const raw = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of raw.split("\n")) {
        if (line.startsWith(":")) continue; // keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}

// ---- Chat ----

function showError(text) {
  const el = $("error");
  el.textContent = text;
  el.hidden = !text;
}

function addMessage(role, content) {
  const welcome = $("welcome");
  if (welcome) welcome.hidden = true;
  const el = document.createElement("div");
  el.className = "msg " + role;
  if (role === "assistant") renderReply(el, content);
  else el.textContent = content;
  $("messages").appendChild(el);
  scrollDown();
  return el;
}

function scrollDown() {
  const m = $("messages");
  m.scrollTop = m.scrollHeight;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("clear").disabled = busy;
}

function numberOr(id, fallback, parse) {
  const v = parse($(id).value);
  return Number.isFinite(v) ? v : fallback;
}

async function send(text) {
  text = text.trim();
  if (!text || state.controller) return;
  showError("");
  $("input").value = "";
  state.history.push({ role: "user", content: text });
  addMessage("user", text);

  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history);
  const request = {
    messages,
    session_id: state.sessionId,
    temperature: numberOr("temperature", 0.7, parseFloat),
    top_p: numberOr("top-p", 0.95, parseFloat),
    max_tokens: numberOr("max-tokens", 512, (v) => parseInt(v, 10)),
  };

  const bubble = addMessage("assistant", "");
  bubble.classList.add("pending");
  let reply = "";
  let frame = 0; // a render waiting for the next animation frame
  const render = () => {
    frame = 0;
    renderReply(bubble, reply);
    scrollDown();
  };
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  let meta = "";
  try {
    const response = await fetch("/ui/chat", {
      method: "POST", headers: headers(true), body: JSON.stringify(request), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const ev of sseEvents(response.body)) {
      const data = JSON.parse(ev.data);
      if (ev.event === "delta") {
        reply += data.text;
        if (!frame) frame = requestAnimationFrame(render);
      } else if (ev.event === "done") {
        const t = data.timings || {};
        const u = data.usage || {};
        state.lastTps = t.tokens_per_second;
        meta = u.completion_tokens + " tokens · " + fmtNum(t.tokens_per_second) + " tok/s · " +
          data.finish_reason;
      } else if (ev.event === "error") {
        throw new Error(data.error ? data.error.message : "error");
      }
    }
  } catch (e) {
    if (e.name === "AbortError") meta = "stopped";
    else showError(e.message || String(e));
  } finally {
    state.controller = null;
    setBusy(false);
    bubble.classList.remove("pending");
    // A frame still pending would re-render after the meta line below and
    // wipe it: render now instead.
    if (frame) cancelAnimationFrame(frame);
    render();
    if (reply) state.history.push({ role: "assistant", content: reply });
    else if (!meta) bubble.remove();
    if (meta) {
      const m = document.createElement("div");
      m.className = "meta";
      m.textContent = meta;
      bubble.appendChild(m);
    }
    refreshStats();
  }
}

function clearChat() {
  if (state.controller) return;
  state.history = [];
  state.sessionId = newSessionId();
  showError("");
  for (const el of Array.from($("messages").querySelectorAll(".msg"))) el.remove();
  const welcome = $("welcome");
  if (welcome) welcome.hidden = false;
  $("input").focus();
}

// ---- Stats ----

function fmtBytes(n) {
  if (!Number.isFinite(n) || n <= 0) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function fmtNum(n) {
  return Number.isFinite(n) ? n.toFixed(1) : "–";
}

async function refreshStats() {
  try {
    const response = await fetch("/ui/stats", { headers: headers(false) });
    if (!response.ok) throw new Error(await errorMessage(response));
    const s = await response.json();
    $("conn").dataset.state = "up";
    $("conn").textContent = "qinsd up";
    const resident = s.model_code_bytes + s.model_sign_bytes + s.model_other_bytes;
    $("model-name").textContent = s.model ? s.model + " (" + s.architecture + ")" : "no model loaded";
    $("stat-model").textContent = s.model || "none";
    $("stat-device").textContent = s.gpu_adapter
      ? s.device + " · " + s.gpu_adapter + " (" + s.gpu_backend + ") · " + fmtBytes(s.gpu_memory_bytes)
      : s.device + " · " + s.threads + " threads";
    $("stat-rss").textContent = fmtBytes(s.process_rss_bytes);
    $("stat-resident").textContent = fmtBytes(resident);
    $("stat-bf16").textContent = fmtBytes(s.bf16_equivalent_bytes);
    $("stat-f32").textContent = fmtBytes(s.f32_equivalent_bytes);
    $("stat-ratio").textContent = resident > 0
      ? s.compression_vs_f32.toFixed(2) + "× / " + (s.bf16_equivalent_bytes / resident).toFixed(2) + "×"
      : "–";
    const tps = state.lastTps != null ? state.lastTps : s.last_tokens_per_second;
    $("stat-tps").textContent = tps ? fmtNum(tps) + " tok/s" : "–";
    $("stat-queue").textContent = s.active_requests + " / " + s.queued_requests;
    if (s.defaults && s.model !== state.defaultsOf) showDefaults(s.model, s.defaults);
  } catch (e) {
    $("conn").dataset.state = "down";
    $("conn").textContent = "qinsd down";
    $("conn").title = e.message || String(e);
  }
}

// The settings start at the loaded model's chat defaults (recorded in its
// .qins file at conversion), except those the user has changed.
function showDefaults(model, d) {
  state.defaultsOf = model;
  const values = { "temperature": d.temperature, "top-p": d.top_p, "max-tokens": d.max_tokens };
  for (const [id, value] of Object.entries(values)) {
    if (state.edited.has(id) || !Number.isFinite(value)) continue;
    $(id).value = String(value);
    const shown = $(id + "-value");
    if (shown) shown.textContent = $(id).value;
  }
  $("settings").title = "model defaults from: " + d.origin;
}

// ---- Wiring ----

function bindRange(id) {
  const update = () => { $(id + "-value").textContent = $(id).value; };
  $(id).addEventListener("input", update);
  update();
}

document.addEventListener("DOMContentLoaded", () => {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("change", () => {
    localStorage.setItem(KEY_STORAGE, key.value.trim());
    key.classList.remove("wanted");
    refreshStats();
  });
  bindRange("temperature");
  bindRange("top-p");
  for (const id of ["temperature", "top-p", "max-tokens"]) {
    $(id).addEventListener("input", () => state.edited.add(id));
  }
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send($("input").value); });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send($("input").value);
    }
  });
  $("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
  $("clear").addEventListener("click", clearChat);
  for (const b of document.querySelectorAll(".example")) {
    b.addEventListener("click", () => send(b.dataset.prompt));
  }
  setBusy(false);
  refreshStats();
  setInterval(refreshStats, 2000);
  $("input").focus();
});

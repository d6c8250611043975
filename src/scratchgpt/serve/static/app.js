// The playground: streams /v1/completions, or /v1/chat/completions in chat mode (a run fine-tuned on
// conversations), as server-sent events over fetch; Stop aborts the fetch. Shows tokens/s, the model's facts
// (/info) and the run's loss curve (/metrics) on a canvas.
"use strict";

const $ = (id) => document.getElementById(id);
let controller = null; // the AbortController of the request in flight, if any

function setRunning(running) {
  const b = $("generate");
  b.textContent = running ? "Stop" : (mode === "chat" ? "Send" : "Generate");
  b.classList.toggle("stop", running);
}

function showError(msg) {
  $("error").textContent = msg;
  $("error").hidden = !msg;
}

function numberOr(id, fallback) {
  const v = $(id).value.trim();
  return v === "" ? fallback : Number(v);
}

let contextLength = null;  // the model's context in tokens, from /info
let mode = "complete";  // complete | chat
let history = [];  // chat mode: the conversation so far, [{role, content}]

function setMode(m) {
  mode = m;
  $("mode-complete").classList.toggle("active", m === "complete");
  $("mode-chat").classList.toggle("active", m === "chat");
  $("chat-panel").hidden = m !== "chat";
  $("output").hidden = m === "chat";
  $("prompt-label").textContent = m === "chat" ? "Message" : "Prompt";
  $("prompt").placeholder = m === "chat" ? "Type a message, then Send (Ctrl+Enter)" : "Type a prompt, then Generate (Ctrl+Enter)";
  setRunning(false);
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("chat-log").append(div);
  return div;
}

function chatBody() {
  const body = requestBody();
  delete body.prompt;
  delete body.truncate_prompt_tokens;
  const system = $("system").value.trim();
  body.messages = (system ? [{ role: "system", content: system }] : []).concat(history);
  return body;
}

function requestBody() {
  const body = {
    prompt: $("prompt").value,
    max_tokens: numberOr("max-tokens", 300),
    temperature: numberOr("temperature", 1),
    top_p: numberOr("top-p", 1),
    stream: true,
    stream_options: { include_usage: true },
  };
  const k = numberOr("top-k", 0);
  if (k > 0) body.top_k = k;
  const seed = numberOr("seed", null);
  if (seed !== null) body.seed = seed;
  // the page continues any text: a prompt longer than the context keeps its end, as `scratchgpt sample` does
  if (contextLength) body.truncate_prompt_tokens = contextLength;
  return body;
}

async function generate() {
  showError("");
  let out = $("completion"), userText = null;
  if (mode === "chat") {
    userText = $("prompt").value;
    if (!userText.trim()) return;
    history.push({ role: "user", content: userText });
    bubble("user", userText);
    out = bubble("assistant", "");
    $("prompt").value = "";
  } else {
    $("echo").textContent = $("prompt").value;
  }
  out.textContent = "";
  $("tps").textContent = "–";
  $("ttft").textContent = "–";
  $("ntokens").textContent = "0";
  $("status").textContent = "waiting…";
  controller = new AbortController();
  setRunning(true);
  const t0 = performance.now();
  let first = null, pieces = 0, usage = null;
  const rate = (n) => {
    const secs = (performance.now() - (first ?? t0)) / 1000;
    if (secs > 0 && n > 0) $("tps").textContent = (n / secs).toFixed(1);
  };
  try {
    const chat = mode === "chat";
    const res = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(chat ? chatBody() : requestBody()),
      signal: controller.signal,
    });
    if (!res.ok) {
      let msg = `HTTP ${res.status}`;
      try { msg = (await res.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    $("status").textContent = "generating…";
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const msg = JSON.parse(data);
          if (msg.error) throw new Error(msg.error.message);
          if (msg.usage) usage = msg.usage;
          for (const c of msg.choices || []) {
            const piece = chat ? (c.delta && c.delta.content) : c.text;
            if (!piece) continue;
            if (first === null) {
              first = performance.now();
              $("ttft").textContent = `${Math.round(first - t0)} ms`;
            }
            out.textContent += piece;
            pieces += 1;
            $("ntokens").textContent = String(pieces);
            rate(pieces);
          }
        }
      }
    }
    if (usage) {
      $("ntokens").textContent = String(usage.completion_tokens);
      rate(usage.completion_tokens);
    }
    $("status").textContent = "done";
    if (mode === "chat") history.push({ role: "assistant", content: out.textContent });
  } catch (e) {
    if (mode === "chat" && userText !== null) {  // the turn did not complete: keep what was said, forget it
      if (out.textContent) history.push({ role: "assistant", content: out.textContent });
      else { history.pop(); out.remove(); }
    }
    if (e.name === "AbortError") {
      $("status").textContent = "stopped";
    } else {
      $("status").textContent = "error";
      showError(e.message);
    }
  } finally {
    controller = null;
    setRunning(false);
  }
}

function toggle() {
  if (controller) controller.abort();
  else generate();
}

function fmt(v) {
  if (typeof v === "number") return Number.isInteger(v) ? v.toLocaleString("en") : v.toFixed(4);
  return v === null || v === undefined ? "–" : String(v);
}

async function loadInfo() {
  const info = await (await fetch("/info")).json();
  contextLength = info.facts.context;
  $("mode-chat").disabled = !info.facts.chat_template;
  $("model-name").textContent = info.model;
  document.title = `${info.model} · scratchgpt playground`;
  const f = info.facts;
  const rows = [
    ["parameters", fmt(f.parameters)],
    ["tokenizer", `${f.tokenizer} (${fmt(f.vocab_size)} tokens)`],
    ["context", `${fmt(f.context)} tokens`],
    ["layers / heads / width", f.n_layer ? `${f.n_layer} / ${f.n_head} / ${f.n_embd}` : "–"],
    ["checkpoint", f.checkpoint ? `${f.checkpoint}, step ${fmt(f.step)}` : "–"],
    ["val loss", fmt(f.val_loss)],
  ];
  const dl = $("facts");
  dl.replaceChildren();
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dd.dataset.fact = k;
    dl.append(dt, dd);
  }
  $("max-tokens").max = info.limits.max_tokens;
  if (Number($("max-tokens").value) > info.limits.max_tokens) $("max-tokens").value = info.limits.max_tokens;
}

function drawLoss(m) {
  const cv = $("loss"), ctx = cv.getContext("2d");
  const W = cv.width, H = cv.height, L = 44, R = 10, T = 12, B = 28;
  ctx.clearRect(0, 0, W, H);
  const series = [
    { name: "train (batch)", color: "rgba(47,111,223,0.35)", pts: m.train, dots: false },
    { name: "train (eval)", color: "#2f6fdf", pts: m.eval.map((r) => [r[0], r[1]]), dots: true },
    { name: "val", color: "#e07a1f", pts: m.eval.map((r) => [r[0], r[2]]), dots: true },
  ].map((s) => ({ ...s, pts: s.pts.filter((p) => Number.isFinite(p[1])) }));
  const all = series.flatMap((s) => s.pts);
  if (all.length === 0) {
    $("loss-note").textContent = "no metrics.jsonl in this run";
    return;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  ctx.strokeStyle = "#ccc"; ctx.fillStyle = "#777"; ctx.font = "11px system-ui"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(L, T); ctx.lineTo(L, H - B); ctx.lineTo(W - R, H - B); ctx.stroke();
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    ctx.fillText(y.toFixed(2), 4, py(y) + 4);
  }
  ctx.fillText(String(x0), L, H - 10);
  ctx.fillText(`step ${x1}`, W - R - 60, H - 10);
  for (const s of series) {
    if (!s.pts.length) continue;
    ctx.strokeStyle = s.color; ctx.fillStyle = s.color; ctx.lineWidth = s.dots ? 1.8 : 1;
    ctx.beginPath();
    s.pts.forEach((p, i) => (i ? ctx.lineTo(px(p[0]), py(p[1])) : ctx.moveTo(px(p[0]), py(p[1]))));
    ctx.stroke();
    if (s.dots) for (const p of s.pts) { ctx.beginPath(); ctx.arc(px(p[0]), py(p[1]), 2.5, 0, 7); ctx.fill(); }
  }
  let lx = W - R - 110;
  series.forEach((s, i) => {
    ctx.fillStyle = s.color; ctx.fillRect(lx, T + 4 + i * 14, 10, 3);
    ctx.fillStyle = "#555"; ctx.fillText(s.name, lx + 14, T + 9 + i * 14);
  });
  const last = m.eval.length ? m.eval[m.eval.length - 1] : null;
  $("loss-note").textContent = last ? `last eval: step ${last[0]}, val loss ${fmt(last[2])}` : "";
}

async function loadLoss() {
  try {
    drawLoss(await (await fetch("/metrics")).json());
  } catch (e) {
    $("loss-note").textContent = "could not load the loss curve";
  }
}

$("generate").addEventListener("click", toggle);
$("mode-complete").addEventListener("click", () => setMode("complete"));
$("mode-chat").addEventListener("click", () => setMode("chat"));
$("reset").addEventListener("click", () => { history = []; $("chat-log").replaceChildren(); });
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); toggle(); }
});
loadInfo().catch((e) => showError(`could not load the model's facts: ${e.message}`));
loadLoss();

// gradlift's console: plain JavaScript over the public API, with the key the user pastes (kept in
// sessionStorage, sent only as the Authorization header to this server).
"use strict";

const KEY_ITEM = "gradlift.key";
const TERMINAL = ["succeeded", "failed", "cancelled"];
const state = { key: sessionStorage.getItem(KEY_ITEM) || "", pairs: [], deltas: [], watching: null };
const $ = (id) => document.getElementById(id);

// ---- talking to the API -------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

const PLAIN = {
  401: "The key was not accepted: paste a key made with `gradlift keys create`.",
  403: "This key may not do that.",
  404: "Not found (it may have been deleted, or belong to another organization).",
  413: "That is larger than the server accepts.",
  429: "The server is busy; try again in a few seconds.",
};

async function errorFrom(response) {
  let detail = "";
  try { detail = (await response.json()).error.message; } catch (_) { detail = ""; }
  const plain = PLAIN[response.status];
  if (plain && detail) return new ApiError(`${plain} (${detail})`, response.status);
  return new ApiError(detail || plain || `The server answered ${response.status}.`, response.status);
}

async function call(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.key}`, ...(options.headers || {}) };
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (_) {
    throw new ApiError("The server did not answer. Is gradlift still running?", 0);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

const get = async (path) => (await call(path)).json();
const post = async (path, body) => (await call(path, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })).json();

// ---- small helpers --------------------------------------------------------------------------------------
function say(id, text, kind = "") {
  const el = $(id);
  el.textContent = text;
  el.className = `status ${kind}`;
}

function notice(text, kind = "") {
  const el = $("notice");
  el.hidden = !text;
  el.textContent = text || "";
  el.className = `notice ${kind}`;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
const pct = (x) => `${Math.round((x || 0) * 100)}%`;
const size = (n) => (n > 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`);
const badge = (text) => el("span", { className: `badge ${text}` }, text);

function fill(tableId, rows, empty) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    const cols = $(tableId).tHead.rows[0].cells.length;
    body.append(el("tr", {}, el("td", { colSpan: cols, className: "empty" }, empty)));
  }
  for (const cells of rows) body.append(el("tr", {}, ...cells.map((c) => el("td", {}, c))));
}

function options(selectId, items, keep = true) {
  const select = $(selectId);
  const before = select.value;
  select.replaceChildren(...items.map(([value, label]) => el("option", { value }, label)));
  if (keep && items.some(([value]) => value === before)) select.value = before;
}

// A file from the API saved through the browser: fetched with the key, handed over as a blob.
async function save(path, filename, statusId) {
  say(statusId, `Downloading ${filename}…`);
  try {
    const blob = await (await call(path)).blob();
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: filename });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    say(statusId, `Saved ${filename} (${size(blob.size)}).`, "ok");
  } catch (error) {
    say(statusId, `Download of ${filename} failed: ${error.message}`, "error");
  }
}

const saveButton = (label, path, filename, statusId) =>
  el("button", { className: "quiet", type: "button", onclick: () => save(path, filename, statusId) }, label);

// ---- the organization, the pairs ------------------------------------------------------------------------
async function connect() {
  notice("");
  let me;
  try {
    me = await get("/v1/organizations/me");
  } catch (error) {
    $("app").hidden = true;
    notice(error.message);
    return;
  }
  $("app").hidden = false;
  $("org").replaceChildren(el("dt", {}, "name"), el("dd", {}, me.name), el("dt", {}, "id"),
    el("dd", {}, el("code", {}, me.id)), el("dt", {}, "key"), el("dd", {}, me.admin ? "admin (provider)" : "organization"));
  $("admin").hidden = !me.admin;
  try {
    await Promise.all([loadPairs(), refresh()]);
  } catch (error) {
    notice(`Could not load the pairs: ${error.message}`);
  }
}

async function loadPairs() {
  const pairs = (await get("/v1/pairs")).data;
  state.pairs = pairs;
  fill("pairs", pairs.map((p) => [
    el("span", { title: `${p.tiny} → ${p.llm}` }, el("strong", {}, p.id), el("br"),
      el("small", {}, `${brief(p.tiny)} → ${brief(p.llm)}`)),
    describeTasks(p.task_details),
    saveButton("tiny_lora_init.safetensors", `/v1/pairs/${p.id}/tiny-lora-init`, `${p.id}-tiny_lora_init.safetensors`,
      "upload-status"),
  ]), "No pairs on this server.");
  options("upload-pair", pairs.map((p) => [p.id, p.id]));
}

// A model's description up to its first detail: "SmolLM2-135M-Instruct (GGUF Q4_1 ...)" -> "SmolLM2-135M-Instruct".
const brief = (text) => text.split(/[,(]/)[0].trim();

// "rotate-6, drop-5 (GT all)": tasks grouped by the GT that serves them.
function describeTasks(tasks) {
  const byGt = new Map();
  for (const t of tasks) {
    const gt = t.gt ? `GT ${t.gt.id}` : "no GT";
    byGt.set(gt, [...(byGt.get(gt) || []), t.id]);
  }
  return [...byGt].map(([gt, ids]) => `${ids.join(", ")} (${gt})`).join("; ");
}

// ---- lists -----------------------------------------------------------------------------------------------
async function refresh() {
  try {
    const [checkpoints, upgrades, deltas, models] = await Promise.all([
      get("/v1/checkpoints"), get("/v1/upgrades"), get("/v1/deltas"), get("/v1/models")]);
    state.deltas = deltas.data;
    showCheckpoints(checkpoints.data);
    showUpgrades(upgrades.data);
    showDeltas(deltas.data);
    options("chat-model", models.data.filter((m) => m.parent).map((m) => [m.id, `${m.id} (on ${m.parent})`])
      .concat(models.data.filter((m) => !m.parent).map((m) => [m.id, `${m.id} (base)`])));
    drawChart();
    if (!$("admin").hidden) await refreshAdmin();
  } catch (error) {
    notice(`Could not load your lists: ${error.message}`);
  }
}

function showCheckpoints(rows) {
  fill("checkpoints", rows.map((c) => [el("code", {}, c.id), c.pair, c.filename || "", size(c.bytes), when(c.created_at),
    el("button", { className: "quiet", type: "button", onclick: () => useCheckpoint(c) }, "upgrade this")]),
  "No checkpoints yet: upload an adapter above.");
  options("upgrade-checkpoint", rows.map((c) => [c.id, `${c.id} (${c.pair})`]));
  tasksFor($("upgrade-checkpoint").value);
}

function showUpgrades(rows) {
  fill("upgrades", rows.map((j) => [el("code", {}, j.id), `${j.pair} / ${j.task || "any"}`, badge(j.status), j.stage,
    pct(j.progress), when(j.created_at)]), "No upgrades yet.");
}

// What made a delta's update: `gt`, `distill`, or a distillation that started from the GT's update.
function madeBy(d) {
  const start = d.quality && d.quality.distill && d.quality.distill.start;
  return start === "gt" ? `${d.mode} from ${d.gt_id}` : d.mode;
}

function showDeltas(rows) {
  fill("deltas", rows.map((d) => [el("code", {}, d.id), `${d.pair} / ${d.task || "any"}`,
    d.collaboration_id ? `${madeBy(d)}, pooled` : madeBy(d),
    d.quality ? badge(d.quality.verdict) : "",
    when(d.created_at),
    el("span", {}, saveButton("archive (.zip)", `/v1/deltas/${d.id}/archive`, `${d.id}.zip`, "upgrade-status"),
      ...d.files.map((f) => saveButton(f.name, `/v1/deltas/${d.id}/files/${f.name}`, f.name, "upgrade-status")))]),
  "No deltas yet: start an upgrade.");
}

function useCheckpoint(checkpoint) {
  $("upgrade-checkpoint").value = checkpoint.id;
  tasksFor(checkpoint.id);
  $("upgrade").scrollIntoView({ behavior: "smooth" });
}

function tasksFor(checkpointId) {
  const pairId = (($("upgrade-checkpoint").selectedOptions[0] || {}).textContent || "").match(/\((.*)\)$/);
  const pair = state.pairs.find((p) => pairId && p.id === pairId[1]);
  const tasks = pair ? pair.task_details.map((t) => [t.id, t.gt ? `${t.id} (GT ${t.gt.id})` : `${t.id} (no GT)`]) : [];
  options("upgrade-task", [["", "any: the pair's GT for all tasks"], ...tasks]);
  $("upgrade-start").disabled = !checkpointId;
}

// ---- upload ----------------------------------------------------------------------------------------------
function upload(files) {
  const adapter = files.find((f) => !f.name.endsWith(".json"));
  const config = files.find((f) => f.name.endsWith(".json"));
  if (!adapter) {
    say("upload-status", "Choose the adapter's weights (adapter_model.safetensors), not only its config.", "error");
    return;
  }
  const form = new FormData();
  form.append("pair", $("upload-pair").value);
  form.append("file", adapter, adapter.name);
  if (config) form.append("config", config, config.name);
  const request = new XMLHttpRequest();
  const bar = $("upload-progress");
  bar.hidden = false;
  bar.value = 0;
  request.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
  request.onerror = () => say("upload-status", "The upload did not reach the server. Is gradlift still running?", "error");
  request.onload = async () => {
    bar.value = 1;
    let body = {};
    try { body = JSON.parse(request.responseText); } catch (_) { body = {}; }
    if (request.status === 200) {
      say("upload-status", `Uploaded ${adapter.name}: checkpoint ${body.id} (${size(body.bytes)}), checked against ` +
        `the ${body.pair} pair's TinyLM.`, "ok");
      await refresh();
      $("upgrade-checkpoint").value = body.id;
      tasksFor(body.id);
    } else {
      const detail = body.error ? body.error.message : `status ${request.status}`;
      say("upload-status", `The server refused ${adapter.name}: ${detail}`, "error");
    }
  };
  say("upload-status", `Uploading ${adapter.name} (${size(adapter.size)})…`);
  request.open("POST", "/v1/checkpoints");
  request.setRequestHeader("Authorization", `Bearer ${state.key}`);
  request.send(form);
}

function setUpDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload([...e.dataTransfer.files]);
  });
  $("upload-file").addEventListener("change", (e) => { upload([...e.target.files]); e.target.value = ""; });
}

// ---- upgrade, watched live ---------------------------------------------------------------------------------
async function startUpgrade() {
  const checkpoint = $("upgrade-checkpoint").value;
  const pair = (state.pairs.find((p) => $("upgrade-checkpoint").selectedOptions[0].textContent.endsWith(`(${p.id})`))
    || {}).id;
  const body = { pair, checkpoint_ids: [checkpoint], mode: $("upgrade-mode").value };
  if ($("upgrade-task").value) body.task = $("upgrade-task").value;
  $("upgrade-start").disabled = true;
  try {
    const job = await post("/v1/upgrades", body);
    say("upgrade-status", `Upgrade ${job.id} queued.`);
    watch(job.id);
  } catch (error) {
    say("upgrade-status", `The upgrade was not started: ${error.message}`, "error");
  } finally {
    $("upgrade-start").disabled = false;
  }
}

async function watch(jobId) {
  state.watching = jobId;
  $("watch").hidden = false;
  while (state.watching === jobId) {
    let job;
    try {
      job = await get(`/v1/upgrades/${jobId}`);
    } catch (error) {
      say("upgrade-status", `Lost sight of the upgrade: ${error.message} Retrying…`, "error");
      await new Promise((r) => setTimeout(r, 3000));
      continue;
    }
    showJob(job);
    if (TERMINAL.includes(job.status)) {
      await refresh();
      if (job.delta_id) $("chat-model").value = job.delta_id;
      return;
    }
    await new Promise((r) => setTimeout(r, 700));
  }
}

function showJob(job) {
  $("watch-title").textContent = `Upgrade ${job.id} (${job.pair}, mode ${job.mode})`;
  const status = $("watch-status");
  status.textContent = job.status;
  status.className = `badge ${job.status}`;
  $("watch-progress").value = job.progress;
  // One line per stage, with that stage's own last progress and message.
  const stages = new Map();
  for (const event of job.events) stages.set(event.stage, event);
  $("watch-stages").replaceChildren(...[...stages.values()].map((e) => {
    // Messages often repeat their stage's name and percentage, which the line already shows.
    const words = (e.message.startsWith(e.stage) ? e.message.slice(e.stage.length) : e.message)
      .replace(/^[:;,]?\s*/, "").replace(/^\(\d+%\)$/, "");
    return el("li", {}, el("span", { className: "pct" }, pct(e.progress)), el("strong", {}, e.stage),
      words ? ` — ${words}` : "");
  }));
  const verdict = $("watch-verdict");
  if (job.quality) {
    verdict.hidden = false;
    // An auto upgrade that made several updates says each one's agreement gain over the base LLM.
    const tried = (job.quality.candidates || [])
      .map((c) => `${c.made_by} ${typeof c.gain === "number" ? c.gain.toFixed(3) : "–"}`).join(", ");
    verdict.replaceChildren("Quality: ", badge(job.quality.verdict), ` ${job.quality.reason || ""}`,
      tried ? ` (made: ${tried})` : "");
  } else verdict.hidden = true;
  if (job.status === "succeeded") say("upgrade-status", `Done: delta ${job.delta_id}. Chat with it below, or download it.`, "ok");
  else if (job.status === "failed") say("upgrade-status", `The upgrade failed: ${job.error ? job.error.message : "no reason given"}`, "error");
  else if (job.status === "cancelled") say("upgrade-status", "The upgrade was cancelled.", "error");
  else say("upgrade-status", `${job.status}: ${job.stage} (${pct(job.progress)})`);
}

// ---- chat: two streams side by side ------------------------------------------------------------------------
async function stream(model, prompt, outId) {
  const out = $(outId);
  out.textContent = "";
  const response = await call("/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model, stream: true, messages: [{ role: "user", content: prompt }],
      max_tokens: Number($("chat-max").value) || 24, temperature: Number($("chat-temp").value) || 0 }),
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).replace(/^data: /, "");
      buffer = buffer.slice(cut + 2);
      if (line === "[DONE]") return;
      const event = JSON.parse(line);
      if (event.error) throw new ApiError(event.error.message, 500);
      for (const choice of event.choices || []) out.textContent += choice.delta.content || "";
    }
  }
}

async function chat(event) {
  event.preventDefault();
  const prompt = $("chat-prompt").value;
  const model = $("chat-model").value;
  if (!prompt.trim() || !model) {
    say("chat-status", !model ? "No model to chat with yet." : "Write a question first.", "error");
    return;
  }
  const info = state.deltas.find((d) => d.id === model);
  const base = info ? `${info.pair}-llm` : model;
  $("chat-left-name").textContent = model;
  $("chat-right-name").textContent = base;
  say("chat-status", "Both models are answering…");
  const results = await Promise.allSettled([stream(model, prompt, "chat-left"), stream(base, prompt, "chat-right")]);
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  if (failed.length) say("chat-status", `Chat failed: ${failed.join("; ")}`, "error");
  else say("chat-status", "Both answers are complete.", "ok");
}

// ---- chart: bars in SVG -----------------------------------------------------------------------------------
function drawChart() {
  const groups = [];
  for (const d of state.deltas) {
    const a = d.quality && d.quality.agreement;
    const sim = d.quality && d.quality.similarity;
    if (!a) continue;
    const bars = [["agreement, upgraded", a.rate, "#2f5fd0"], ["agreement, base LLM", a.base_rate, "#9aa3b5"]];
    if (sim && sim.nearest_cos !== undefined) bars.push([`cosine to a ${sim.nearest_task} run`, sim.nearest_cos, "#c9a227"]);
    groups.push({ title: `${d.id} (${d.pair}${d.task ? ` / ${d.task}` : ""}, ${madeBy(d)}, ${d.quality.verdict})`, bars });
  }
  for (const p of state.pairs) {
    for (const t of p.task_details) {
      const s = t.gt && t.gt.card_summary;
      if (s && s.cos_gt !== undefined) groups.push({ title: `GT ${p.id}/${t.gt.id} (held-out cosine)`, bars: [
        ["GT", s.cos_gt, "#2f5fd0"], ["untrained", s.cos_untrained, "#9aa3b5"], [s.best_baseline, s.cos_best_baseline, "#c9a227"]] });
    }
  }
  const box = $("chart");
  if (!groups.length) {
    box.replaceChildren(el("p", { className: "hint" }, "Nothing measured yet: finish an upgrade to see its agreement."));
    return;
  }
  const ns = "http://www.w3.org/2000/svg";
  const svgEl = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const rowH = 18, width = 700, left = 190, barW = 440;
  let y = 0;
  const svg = svgEl("svg", { width, role: "img", "aria-label": "quality chart" });
  for (const tick of [0, 0.5, 1]) {  // the scale, drawn behind the bars
    svg.append(svgEl("text", { x: left + tick * barW - 6, y: 12, class: "chart-label" }, tick.toFixed(1)));
  }
  y = 16;
  const top = y;
  for (const g of groups.slice(0, 12)) {
    svg.append(svgEl("text", { x: 0, y: y + 13, class: "chart-title" }, g.title));
    y += rowH;
    for (const [label, value, color] of g.bars) {
      const v = Math.max(0, Math.min(1, Number(value) || 0));
      svg.append(svgEl("text", { x: 8, y: y + 12, class: "chart-label" }, label));
      svg.append(svgEl("rect", { x: left, y: y + 2, width: Math.max(1, v * barW), height: rowH - 6, fill: color }));
      svg.append(svgEl("text", { x: left + v * barW + 6, y: y + 12, class: "chart-label" }, (Number(value) || 0).toFixed(2)));
      y += rowH;
    }
    y += 6;
  }
  for (const tick of [0, 0.5, 1]) {
    svg.prepend(svgEl("line", { x1: left + tick * barW, x2: left + tick * barW, y1: top, y2: y, stroke: "#d9dde5" }));
  }
  svg.setAttribute("height", y);
  box.replaceChildren(svg);
}

// ---- the provider's side -------------------------------------------------------------------------------------
async function refreshAdmin() {
  const [builds, trainings] = await Promise.all([get("/v1/admin/shadow-builds"), get("/v1/admin/gt-trainings")]);
  fill("builds", builds.data.map((b) => [el("code", {}, b.id), `${b.pair} / ${b.task}`, badge(b.status),
    el("span", {}, el("progress", { max: b.total || 1, value: b.done }), ` ${b.done} of ${b.total}`), when(b.created_at)]),
  "No shadow builds yet.");
  fill("trainings", trainings.data.map((t) => [el("code", {}, t.id), `${t.pair} / ${t.gt_id}`, badge(t.status),
    el("span", {}, el("progress", { max: 1, value: t.progress }), ` ${pct(t.progress)} ${t.stage}`), t.version || "",
    t.card ? el("details", {}, el("summary", {}, "card"), el("pre", {}, JSON.stringify(t.card.summary || t.card, null, 1))) : ""]),
  "No GT trainings yet.");
}

// ---- start ------------------------------------------------------------------------------------------------------
function start() {
  $("key").value = state.key;
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("key").value.trim();
    if (!state.key) { notice("Paste an API key first."); return; }
    sessionStorage.setItem(KEY_ITEM, state.key);
    connect();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    state.key = "";
    $("key").value = "";
    $("app").hidden = true;
    notice("The key is forgotten in this tab.", "info");
  });
  $("upgrade-checkpoint").addEventListener("change", (e) => tasksFor(e.target.value));
  $("upgrade-start").addEventListener("click", startUpgrade);
  $("chat-form").addEventListener("submit", chat);
  $("refresh").addEventListener("click", refresh);
  setUpDrop();
  if (state.key) connect();
  else notice("Paste an API key to begin (make one with: gradlift keys create --org NAME).", "info");
}

start();

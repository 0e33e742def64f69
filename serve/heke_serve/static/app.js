// The heke-serve page: upload a video as a job (POST /v1/jobs), poll it (GET /v1/jobs/{id}),
// then show the record heke-run writes (the README's Serving section) as scores, warnings and a
// per-snippet timeline beside the chosen file's player. Plain ES module, no build step, and
// nothing fetched from anywhere but this server.

const HEADS = ["gmsd", "st_gmsd", "st_rred", "ms_ssim", "ensemble", "regressor"];
const LABELS = {
  gmsd: "GMSD head", st_gmsd: "ST-GMSD head", st_rred: "ST-RRED head",
  ms_ssim: "MS-SSIM head", ensemble: "Ensemble", regressor: "Regressor",
};
const DIGITS = 3; // as heke-run's table prints them
const TOKEN_KEY = "heke-token";
const POLL_MS = [300, 500, 1000, 2000]; // quick at first, then every 2 s

const $ = (id) => document.getElementById(id);
const els = {
  file: $("video-file"), uploadForm: $("upload-form"), jobId: $("job-id"),
  openForm: $("open-form"), token: $("token"), status: $("status"), error: $("error"),
  result: $("result"), input: $("result-input"), scale: $("scale-note"), demo: $("demo-note"),
  scores: $("scores"), warnings: $("warnings"), player: $("player"),
  caption: $("player-caption"), head: $("head"), timeline: $("timeline"),
  legend: $("timeline-legend"), engine: $("engine"),
};

let record = null; // the record shown
let current = -1; // the highlighted snippet
let polling = 0; // bumped to stop an older job's polling
let playerUrl = null;

const fmt = (v) => (typeof v === "number" ? v.toFixed(DIGITS) : "–");
// Records put a snippet's scores beside its times; accept a nested "scores" object too.
const snippetScores = (s) => s.scores ?? s;

// ------------------------------------------------------------------ talking to the server

class ApiError extends Error {}

async function api(path, init = {}) {
  const headers = new Headers(init.headers);
  const token = els.token.value.trim();
  if (token) headers.set("Authorization", `Bearer ${token}`);
  let response;
  try {
    response = await fetch(path, { ...init, headers });
  } catch (exc) {
    throw new ApiError(`cannot reach the server: ${exc.message}`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status line says enough
  }
  if (!response.ok) {
    const error = new ApiError(body?.error ?? `HTTP ${response.status} ${response.statusText}`);
    error.status = response.status;
    error.retryAfter = Number(response.headers.get("Retry-After")) || 0;
    throw error;
  }
  return body;
}

async function submit(file) {
  const form = new FormData();
  form.append("video", file, file.name);
  const job = await api("/v1/jobs", { method: "POST", body: form });
  // Opening goes through the URL, so a reload or a shared link shows the same job.
  if (location.hash === `#job=${job.id}`) openJob(job.id);
  else location.hash = `job=${job.id}`;
}

async function openJob(id) {
  const mine = ++polling;
  els.jobId.value = id;
  showError(null);
  for (let attempt = 0; mine === polling; attempt++) {
    let job;
    try {
      job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    } catch (exc) {
      if (mine !== polling) return;
      if (exc.status === 429 || exc.status === 503) { // busy or draining: try again later
        setStatus(`Job ${id}: ${exc.message}; retrying`);
        await sleep(Math.max(exc.retryAfter * 1000, 1000));
        continue;
      }
      return fail(exc.message);
    }
    if (mine !== polling) return;
    if (job.status === "done") {
      setStatus(`Job ${id}: done`);
      return show(job.record, job.input);
    }
    if (job.status === "failed") return fail(job.error ?? "the job failed");
    setStatus(`Job ${id}: ${job.status}…`);
    await sleep(POLL_MS[Math.min(attempt, POLL_MS.length - 1)]);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function fail(message) {
  setStatus("");
  showError(message);
}

function setStatus(text) {
  els.status.textContent = text;
}

function showError(message) {
  els.error.hidden = !message;
  els.error.textContent = message ?? "";
}

// ------------------------------------------------------------------ the record

function show(rec, input) {
  record = rec;
  current = -1;
  els.input.textContent = input ?? rec.path;
  els.scale.textContent = `Scale: ${rec.scale ?? "higher = more distorted"}`;
  els.demo.hidden = !rec.note;
  els.demo.textContent = rec.note ?? "";
  showScores(rec);
  showWarnings(rec.warnings ?? []);
  const heads = HEADS.filter((h) => h in (rec.scores ?? {}));
  els.head.replaceChildren(
    ...heads.map((h) => new Option(LABELS[h], h, false, h === "ensemble")),
    new Option("All scores", "all"),
  );
  els.result.hidden = false;
  drawTimeline();
  followPlayer();
}

function showScores(rec) {
  const cards = HEADS.filter((h) => h in rec.scores).map((h) => {
    const card = document.createElement("div");
    card.className = `score head-${h}`;
    card.dataset.head = h;
    const name = document.createElement("span");
    name.className = "name";
    name.id = `score-${h}-label`;
    name.textContent = LABELS[h];
    const value = document.createElement("output");
    value.className = "value";
    value.id = `score-${h}`;
    value.setAttribute("aria-labelledby", name.id);
    value.textContent = fmt(rec.scores[h]);
    card.append(name, value);
    if (rec.spread?.[h] !== undefined) {
      const spread = document.createElement("span");
      spread.className = "spread muted";
      spread.title = "standard deviation over the snippets";
      spread.textContent = `± ${fmt(rec.spread[h])}`;
      card.append(spread);
    }
    return card;
  });
  els.scores.replaceChildren(...cards);
}

function showWarnings(warnings) {
  els.warnings.hidden = warnings.length === 0;
  els.warnings.replaceChildren(...warnings.map((w) => {
    const item = document.createElement("li");
    item.textContent = w;
    return item;
  }));
}

// ------------------------------------------------------------------ the timeline

const BOX = { width: 640, height: 280, left: 48, right: 12, top: 14, bottom: 34 };

function svg(name, attrs, parent, text = null) {
  // The chart's own namespace, so that no URL (even a namespace name) appears in the page.
  const node = document.createElementNS(els.timeline.namespaceURI, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  parent.append(node);
  return node;
}

function ticks(lo, hi, count) {
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
    out.push(Number(t.toFixed(10)));
  }
  return out;
}

// Time (s) to x and score to y in the chart's viewBox; the score axis always shows 0.
function scales(snippets, heads) {
  const values = snippets.flatMap((s) => heads.map((h) => snippetScores(s)[h]))
    .filter((v) => typeof v === "number");
  let lo = Math.min(0, ...values);
  let hi = Math.max(0, ...values);
  if (hi - lo < 1e-9) hi = lo + 1;
  const pad = (hi - lo) * 0.08;
  [lo, hi] = [lo < 0 ? lo - pad : lo, hi + pad];
  const end = record.video?.duration_s || Math.max(1, ...snippets.map((s) => s.end_s));
  const { width, height, left, right, top, bottom } = BOX;
  return {
    lo, hi, end,
    x: (t) => left + (t / end) * (width - left - right),
    y: (v) => top + ((hi - v) / (hi - lo)) * (height - top - bottom),
  };
}

function drawAxes(root, { lo, hi, end, x, y }, heads) {
  const { width, height, left, right, top, bottom } = BOX;
  const axes = svg("g", { class: "axes", "aria-hidden": "true" }, root);
  for (const v of ticks(lo, hi, 4)) {
    const line = { x1: left, x2: width - right, y1: y(v), y2: y(v) };
    svg("line", { ...line, class: v === 0 ? "zero" : "grid" }, axes);
    svg("text", { x: left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, axes, v);
  }
  for (const t of ticks(0, end, 8)) {
    const at = { x: x(t), y: height - bottom + 16, "text-anchor": "middle" };
    svg("text", { ...at, class: "tick" }, axes, t);
  }
  const name = heads.length === 1 ? LABELS[heads[0]] : "score";
  svg("text", { x: width - right, y: height - 4, class: "axis-label", "text-anchor": "end" },
    axes, "time (s)");
  svg("text", { x: left, y: top - 4, class: "axis-label" }, axes,
    `${name} (higher = more distorted)`);
}

// One snippet: a group (the click and keyboard target) holding a full-height hit area and
// either a bar (one score shown) or a dot per score.
function drawSnippet(root, s, i, heads, { x, y }) {
  const scores = snippetScores(s);
  const x0 = x(s.start_s);
  const w = Math.max(x(s.end_s) - x0, 6);
  const span = `${s.start_s.toFixed(2)}–${s.end_s.toFixed(2)} s`;
  const what = heads.map((h) => `${LABELS[h]} ${fmt(scores[h])}`);
  const g = svg("g", {
    class: "snippet", tabindex: "0", role: "button",
    "data-snippet-index": s.index ?? i, "data-start": s.start_s,
    "aria-label": `Snippet ${i + 1}, ${span}: ${what.join(", ")}`,
  }, root);
  const frames = `frames ${s.first_frame}–${s.last_frame}`;
  svg("title", {}, g, [`Snippet ${i + 1} (${span}, ${frames})`, ...what].join("\n"));
  const { top, bottom, height } = BOX;
  svg("rect", { class: "hit", x: x0 - 3, width: w + 6, y: top, height: height - top - bottom }, g);
  if (heads.length === 1) {
    const v = scores[heads[0]];
    svg("rect", {
      class: `bar head-${heads[0]}`, x: x0, width: w,
      y: Math.min(y(v), y(0)), height: Math.max(Math.abs(y(v) - y(0)), 1),
    }, g);
    return;
  }
  for (const h of heads) {
    svg("circle", { class: `dot head-${h}`, cx: x0 + w / 2, cy: y(scores[h]), r: 4 }, g);
  }
}

function drawTimeline() {
  const snippets = record.snippets ?? [];
  const choice = els.head.value;
  const heads = choice === "all" ? HEADS.filter((h) => h in record.scores) : [choice];
  const scale = scales(snippets, heads);
  const root = els.timeline;
  root.replaceChildren();
  drawAxes(root, scale, heads);
  if (heads.length > 1) { // lines first, so the snippets' marks and click areas sit above
    for (const h of heads) {
      const mid = (s) => `${scale.x((s.start_s + s.end_s) / 2)},${scale.y(snippetScores(s)[h])}`;
      const points = snippets.map(mid).join(" ");
      svg("polyline", { points, class: `trend head-${h}`, "aria-hidden": "true" }, root);
    }
  }
  snippets.forEach((s, i) => drawSnippet(root, s, i, heads, scale));
  const { top, bottom, height } = BOX;
  svg("line", { id: "playhead", class: "playhead", y1: top, y2: height - bottom, x1: -10, x2: -10 },
    root);
  drawLegend(heads);
  highlight(current);
  movePlayhead();
}

function drawLegend(heads) {
  els.legend.replaceChildren(...heads.map((h) => {
    const item = document.createElement("span");
    item.className = `key head-${h}`;
    item.textContent = LABELS[h];
    return item;
  }));
}

function highlight(index) {
  current = index;
  for (const g of els.timeline.querySelectorAll("[data-snippet-index]")) {
    const on = Number(g.dataset.snippetIndex) === index;
    g.classList.toggle("current", on);
    if (on) g.setAttribute("aria-current", "true");
    else g.removeAttribute("aria-current");
  }
}

function movePlayhead() {
  const line = document.getElementById("playhead");
  if (!line || !record) return;
  const end = record.video?.duration_s || 0;
  const t = els.player.currentTime;
  const shown = Boolean(els.player.currentSrc) && end > 0;
  const at = BOX.left + (t / (end || 1)) * (BOX.width - BOX.left - BOX.right);
  line.setAttribute("x1", shown ? at : -10);
  line.setAttribute("x2", shown ? at : -10);
}

// The snippet playing now: the last one that starts at or before the playback time (a
// millisecond of slack, so seeking to a snippet's start_s lands on that snippet).
function snippetAt(t) {
  let found = -1;
  for (const [i, s] of (record?.snippets ?? []).entries()) {
    if (s.start_s <= t + 1e-3) found = s.index ?? i;
  }
  return found;
}

function followPlayer() {
  if (!record || !els.player.currentSrc) return;
  highlight(snippetAt(els.player.currentTime));
  movePlayhead();
}

function seekTo(g) {
  const index = Number(g.dataset.snippetIndex);
  highlight(index);
  if (els.player.currentSrc) els.player.currentTime = Number(g.dataset.start);
  movePlayhead();
}

// ------------------------------------------------------------------ wiring

function choosePlayerFile(file) {
  if (playerUrl) URL.revokeObjectURL(playerUrl);
  playerUrl = file ? URL.createObjectURL(file) : null;
  if (playerUrl) els.player.src = playerUrl;
  else els.player.removeAttribute("src");
  els.player.hidden = !playerUrl;
  els.caption.textContent = file
    ? file.name
    : "Choose the same file above to play it beside the timeline.";
}

function openFromHash() {
  const id = new URLSearchParams(location.hash.slice(1)).get("job");
  if (id) openJob(id);
}

els.token.value = sessionStorage.getItem(TOKEN_KEY) ?? "";
els.token.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, els.token.value));

els.file.addEventListener("change", () => choosePlayerFile(els.file.files[0]));

els.uploadForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = els.file.files[0];
  if (!file) return showError("choose a video file first");
  polling++; // a job being polled no longer matters
  showError(null);
  setStatus(`Uploading ${file.name}…`);
  els.result.hidden = true;
  choosePlayerFile(file);
  try {
    await submit(file);
  } catch (exc) {
    fail(exc.message);
  }
});

els.openForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const id = els.jobId.value.trim();
  if (!id) return showError("enter a job id");
  if (location.hash === `#job=${id}`) openJob(id);
  else location.hash = `job=${id}`;
});

els.head.addEventListener("change", drawTimeline);
els.timeline.addEventListener("click", (event) => {
  const g = event.target.closest("[data-snippet-index]");
  if (g) seekTo(g);
});
els.timeline.addEventListener("keydown", (event) => {
  const g = event.target.closest("[data-snippet-index]");
  if (g && (event.key === "Enter" || event.key === " ")) {
    event.preventDefault();
    seekTo(g);
  }
});
for (const name of ["timeupdate", "seeked", "loadedmetadata"]) {
  els.player.addEventListener(name, followPlayer);
}

els.player.addEventListener("error", () => {
  if (!playerUrl) return; // no file chosen: nothing failed
  const name = els.file.files[0]?.name ?? "this file";
  els.caption.textContent = `This browser cannot play ${name}; its scores are unaffected.`;
});

window.addEventListener("hashchange", openFromHash);

api("/readyz").then(
  (r) => { els.engine.textContent = `${r.model} on ${r.device} (heke ${r.version})`; },
  (exc) => { els.engine.textContent = `Engine not ready: ${exc.message}`; },
);
choosePlayerFile(null);
openFromHash();

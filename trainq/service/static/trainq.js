// The dashboard's JavaScript: every page is a client of the JSON API under /api/v1.
// Text that users wrote (names, log lines, specs) is only ever set with textContent, never parsed as HTML.
"use strict";

const CSRF = document.body.dataset.csrf;
const IS_ADMIN = document.body.dataset.admin === "1";
// The states a job ends in, as the service lists them (base.html; a list of its own here lacked "pruned")
const FINISHED = document.body.dataset.finished.split(" ");
// The series a worker samples of a job's process (trainq/workers/system.py)
const SYSTEM_SERIES = ["sys/cpu_percent", "sys/memory_mb", "sys/data_wait_share", "sys/gpu_utilization", "sys/gpu_memory_mb"];
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f", "#a16207",
                "#475569"];

async function api(path, options = {}) {
  const headers = {"Accept": "application/json", ...(options.headers || {})};
  if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = CSRF;
  const response = await fetch(path, {credentials: "same-origin", ...options, headers});
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); }
  return {status: response.status, ok: response.ok, body};
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function planRows(body, plan) {
  // A dry run's layers: each one's id, the layers it reads ("the one before" is left blank), its output and weights.
  // A block's layers carry the block's name where it is used (basic2.main); a row's title is where the spec writes it.
  body.append(el("tr", {}, el("td", {text: ""}), el("td", {text: "in"}), el("td", {text: "input"}), el("td", {text: ""}),
                 el("td", {text: JSON.stringify(plan.input_shape)}), el("td", {text: ""})));
  let previous = "in";
  for (const layer of plan.layers) {
    const reads = layer.inputs || [];
    const plain = reads.length === 1 && reads[0] === previous;
    body.append(el("tr", {title: layer.path || ""}, el("td", {text: layer.index}), el("td", {text: layer.id || "", class: "mono"}),
      el("td", {text: layer.type}), el("td", {text: plain ? "" : reads.join(", "), class: "mono"}),
      el("td", {text: JSON.stringify(layer.output_shape)}), el("td", {text: layer.params.toLocaleString()})));
    previous = layer.id;
  }
}

function every(ms, fn) {
  // Poll while the tab is visible; a failed poll marks the page's live badge stale until one succeeds.
  let timer = null;
  const live = document.querySelector(".live");
  const tick = async () => {
    let again = true;
    try {
      if (!document.hidden) again = (await fn()) !== false;
      if (live) live.classList.remove("stale");
    } catch (e) { if (live) live.classList.add("stale"); }
    if (again) timer = setTimeout(tick, ms);
    else if (live) { live.textContent = "final"; live.classList.add("stale"); }
  };
  timer = setTimeout(tick, ms);
  return () => clearTimeout(timer);
}

// Epochs and steps are whole numbers: the x axes tick at 1, 2, 5, 10, 20, 50...
const INTEGER_STEPS = [1, 2, 5].flatMap(m => [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7].map(p => m * p)).sort((a, b) => a - b);

function fmt(value, digits = 4) {
  return typeof value === "number" ? (Number.isInteger(value) ? String(value) : value.toFixed(digits)) : "";
}

function duration(started, finished) {
  if (!started) return "";
  return human(Math.max(0, ((finished ? Date.parse(finished) : Date.now()) - Date.parse(started)) / 1000));
}

function human(seconds) {
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.round((seconds % 3600) / 60) + " min";
}

function when(iso) {
  // A time in the viewer's zone, with the zone named ("2026-11-30 09:15:02 CET"): never a bare UTC clock reading.
  return iso ? new Date(iso).toLocaleString("sv-SE", {timeZoneName: "short"}) : "";
}

function ago(iso) {
  // "2 s ago", "3 min ago": how fresh a heartbeat is matters more than its clock time (the title has that)
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

function localizeTimes(root = document) {
  for (const t of root.querySelectorAll("time[data-at]")) if (t.dataset.at) { t.textContent = when(t.dataset.at); t.title = t.dataset.at; }
  for (const cell of root.querySelectorAll("td.created[data-at]")) cell.textContent = when(cell.dataset.at);
}

// ---------------------------------------------------------------------------------------------------------------------
// Charts (uPlot, installed from npm by the install step)
// ---------------------------------------------------------------------------------------------------------------------

function markerPlugin(getX, label) {
  // A dashed vertical line at an x value (the best epoch).
  return {hooks: {draw: [u => {
    const x = getX();
    const box = u.root.parentElement;  // the chart's element says where the marker is (or that there is none)
    if (x === null || x === undefined) { delete box.dataset.marker; return; }
    const left = u.valToPos(x, "x", true);
    if (!isFinite(left)) { delete box.dataset.marker; return; }
    box.dataset.marker = x;
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "#16a34a"; ctx.setLineDash([5, 4]); ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.beginPath(); ctx.moveTo(left, u.bbox.top); ctx.lineTo(left, u.bbox.top + u.bbox.height); ctx.stroke();
    ctx.fillStyle = "#16a34a"; ctx.font = `${11 * devicePixelRatio}px system-ui`;
    ctx.fillText(label, left + 4 * devicePixelRatio, u.bbox.top + 12 * devicePixelRatio);
    ctx.restore();
  }]}};
}

class LineChart {
  // One chart of several named series over a shared x axis; series are extended point by point.
  constructor(target, xLabel, plugins = []) {
    this.target = target; this.xLabel = xLabel; this.plugins = plugins;
    this.names = []; this.points = {}; this.plot = null; this.log = false;
  }
  setLog(on) {
    // losses span decades: on a log axis the late epochs are not a flat line
    this.log = on; this.plot && this.plot.destroy(); this.plot = null; this.target.dataset.log = on ? "1" : "0";
    this.render();
  }
  add(name, xs, ys, style = {}) {
    if (!this.points[name]) { this.points[name] = new Map(); this.names.push(name); this.styles = {...this.styles, [name]: style}; this.plot && this.plot.destroy(); this.plot = null; }
    xs.forEach((x, i) => this.points[name].set(x, ys[i]));
  }
  data() {
    const xs = [...new Set(this.names.flatMap(n => [...this.points[n].keys()]))].sort((a, b) => a - b);
    return [xs, ...this.names.map(n => xs.map(x => this.points[n].has(x) ? this.points[n].get(x) : null))];
  }
  render() {
    if (!window.uPlot || !this.names.length) return;
    const data = this.data();
    this.target.dataset.points = this.names.reduce((n, name) => n + this.points[name].size, 0);
    this.target.dataset.series = this.names.length;
    if (this.plot) { this.plot.setData(data); return; }
    this.target.textContent = "";
    const width = Math.max(320, this.target.clientWidth || 480);
    // A series of one or two values draws its dots (a line needs two points: a run stopped after its first epoch
    // had blank loss and accuracy charts)
    const sparse = (u, si) => { let n = 0; for (const v of u.data[si]) if (v != null && ++n > 2) return false; return true; };
    // Without the cursor on the chart, the legend shows each series' latest value rather than "--"
    const latest = u => { if (u.cursor.idx === null || u.cursor.idx === undefined) u.setLegend({idx: u.data[0].length - 1}); };
    this.plot = new uPlot({
      width, height: 240, plugins: [...this.plugins, {hooks: {ready: [latest], setData: [latest], setCursor: [latest]}}],
      scales: {x: {time: false}, ...(this.log ? {y: {distr: 3}} : {})},
      axes: [{label: this.xLabel, incrs: INTEGER_STEPS}, {size: 60, values: (u, splits) => splits.map(v => v === null ? "" : tickLabel(v))}],
      series: [{label: this.xLabel}, ...this.names.map((n, i) => ({label: n, stroke: colour(i), width: 1.5, spanGaps: true, points: {show: sparse}, ...((this.styles || {})[n] || {})}))],
    }, data, this.target);
  }
  count(name) { return this.points[name] ? this.points[name].size : 0; }
}

// ---------------------------------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------------------------------

function cellOf(job, column) {
  // an optional column's value: the job's final metric of that name, else its spec field at that path
  if (job.metrics && column in job.metrics) return job.metrics[column];
  let node = job.spec;
  for (const key of column.split(/\.|(?=\[)/).filter(Boolean)) {
    const index = /^\[(\d+)\]$/.exec(key);
    node = node === null || node === undefined ? undefined : (index ? (Array.isArray(node) ? node[Number(index[1])] : undefined) : node[key]);
  }
  return node;
}

function tagLink(key, value) {
  // the runs page searching for a tag's value (the same link the server writes)
  const name = /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? key : "`" + key + "`";
  return "/?" + new URLSearchParams({filter: `tags.${name} = '${value.replaceAll("'", "''")}'`, sweep: "any"});
}

function tagChips(tags) {
  return Object.entries(tags || {}).flatMap(([k, v]) => [" ", el("a", {class: "chip", href: tagLink(k, v), title: `runs tagged ${k} = ${v}`, text: `${k}: ${v}`})]);
}

function runRow(job, extra = []) {
  const best = job.best_metric ? `${job.best_metric.name} ${fmt(job.best_metric.value)}` : "";
  return el("tr", {"data-id": job.id},
    el("td", {}, el("input", {type: "checkbox", class: "pick", value: job.id, "aria-label": "select " + job.name})),
    el("td", {class: "name"}, el("a", {href: "/jobs/" + job.id, text: job.name}), " ",
      el("small", {class: "id", text: job.id.slice(0, 6)}),
      ...(job.sweep_id ? [" ", el("a", {class: "trial", href: "/sweeps/" + job.sweep_id, text: "trial of sweep " + job.sweep_id.slice(0, 6)})] : []),
      ...(job.project && job.project !== "default" ? [" ", el("a", {class: "project", href: "/projects/" + encodeURIComponent(job.project), text: job.project})] : []),
      ...tagChips(job.tags)),
    el("td", {class: "status"}, el("span", {class: "badge " + job.status, text: job.status})),
    el("td", {class: "pool", text: job.pool}),
    el("td", {class: "worker", text: job.worker || ""}),
    el("td", {class: "epoch", text: `${job.epoch} / ${job.max_epochs}`}),
    el("td", {class: "best", text: best}),
    el("td", {class: "duration", "data-started": job.started_at || "", "data-finished": job.finished_at || ""}),
    el("td", {class: "created", "data-at": job.created_at, text: when(job.created_at)}),
    ...extra.map(c => { const v = cellOf(job, c); return el("td", {class: "extra", text: typeof v === "number" ? fmt(v) : (v ?? "")}); }));
}

function refreshDurations(root) {
  for (const cell of root.querySelectorAll("td.duration")) cell.textContent = duration(cell.dataset.started, cell.dataset.finished);
}

function pageRuns() {
  const table = document.getElementById("runs");
  const body = table.tBodies[0];
  let cursor = table.dataset.cursor;
  const firstPage = table.dataset.firstPage === "1";
  const limit = Number(table.dataset.limit);
  const extra = table.dataset.cols ? table.dataset.cols.split(",") : [];
  const button = document.getElementById("compare-selected");
  const picked = () => [...body.querySelectorAll("input.pick:checked")].map(i => i.value);
  body.addEventListener("change", () => { button.disabled = picked().length < 1; });
  button.addEventListener("click", () => { location.href = "/compare?ids=" + picked().join(","); });
  refreshDurations(body);
  every(2000, async () => {
    const answer = await api(`/api/v1/jobs?${table.dataset.query}&changed_since=${cursor}&limit=500`);
    if (!answer.ok) throw new Error(answer.status);
    cursor = answer.body.cursor;
    // The answer is in the page's sort order; new jobs go on top of the first page of the newest-first view.
    for (const job of answer.body.jobs.slice().reverse()) {
      const old = body.querySelector(`tr[data-id="${job.id}"]`);
      const row = runRow(job, extra);
      if (old) {
        row.querySelector("input.pick").checked = old.querySelector("input.pick").checked;
        old.replaceWith(row);
      } else if (firstPage) {
        body.prepend(row);
        while (body.rows.length > limit) body.deleteRow(-1);
        const info = document.getElementById("page-info");
        const total = Number(info.dataset.total) + 1;
        info.dataset.total = total;
        info.textContent = `1–${body.rows.length} of ${total}`;
      }
    }
    refreshDurations(body);
  });
}

// ---------------------------------------------------------------------------------------------------------------------
// Run
// ---------------------------------------------------------------------------------------------------------------------

function pageRun() {
  let job = JSON.parse(document.getElementById("job-data").textContent);
  const id = job.id;
  let bestEpoch = job.best_epoch;
  // The metric the run is judged by (its early stopping's monitor, else val_loss): the best-epoch marker goes on the
  // chart that shows it, and nowhere else
  const stopping = (job.spec.training || {}).early_stopping || null;
  const monitored = stopping ? stopping.monitor : "val_loss";
  const higherIsBetter = stopping && stopping.mode ? stopping.mode === "max" : /(accuracy|r2)$/.test(monitored);
  const charts = {};
  const marker = key => markerPlugin(() => (charts[key] && charts[key].points[monitored] ? bestEpoch : null), "best " + monitored);
  charts.loss = new LineChart(document.getElementById("chart-loss"), "epoch", [marker("loss")]);
  charts.metric = new LineChart(document.getElementById("chart-metric"), "epoch", [marker("metric")]);
  charts.error = new LineChart(document.getElementById("chart-error"), "epoch", [marker("error")]);
  charts.lr = new LineChart(document.getElementById("chart-lr"), "epoch");
  charts.steps = new LineChart(document.getElementById("chart-steps"), "step");
  for (const [box, key] of [["loss-log", "loss"], ["steps-log", "steps"]]) {
    document.getElementById(box).addEventListener("change", e => charts[key].setLog(e.target.checked));
  }
  const variational = (job.spec.inference || {}).method === "variational";
  charts.kl = new LineChart(document.getElementById("chart-kl"), "epoch");
  charts.calibration = new LineChart(document.getElementById("chart-calibration"), "epoch");
  charts.sysCpu = new LineChart(document.getElementById("chart-sys-cpu"), "seconds");
  charts.sysMemory = new LineChart(document.getElementById("chart-sys-memory"), "seconds");
  charts.sysShare = new LineChart(document.getElementById("chart-sys-share"), "seconds");
  charts.sysGpu = new LineChart(document.getElementById("chart-sys-gpu"), "seconds");
  let sysStart = null;
  const chartOf = name => {
    if (name === "sys/cpu_percent") return charts.sysCpu;
    if (name === "sys/memory_mb" || name === "sys/gpu_memory_mb") return charts.sysMemory;
    if (name === "sys/data_wait_share") return charts.sysShare;
    if (name === "sys/gpu_utilization") { document.getElementById("fig-sys-gpu").hidden = false; return charts.sysGpu; }
    if (name === "train_loss_step") return charts.steps;
    // a variational run's train_loss adds β·KL/N: the data term is charted beside val_loss, the KL on its own
    if (name === "train_loss" && variational) return null;
    if (name === "train_nll") return charts.loss;
    if (name === "train_kl") { document.getElementById("fig-kl").hidden = false; return charts.kl; }
    if (/^val_(ece|brier|coverage95|coverage68)$/.test(name)) { document.getElementById("fig-calibration").hidden = false; return charts.calibration; }
    if (name === "val_nll") return charts.loss;
    if (name === "lr") { document.getElementById("fig-lr").hidden = false; return charts.lr; }
    if (name.endsWith("_loss")) return charts.loss;
    if (/^(train|val)_accuracy$/.test(name)) return charts.metric;
    if (/^(train|val)_r2$/.test(name)) { document.getElementById("metric-caption").textContent = "R² per epoch"; return charts.metric; }
    if (/^(train|val)_mae$/.test(name)) { document.getElementById("fig-error").hidden = false; return charts.error; }
    return null;
  };
  const lastStep = {};
  let lastEvent = 0;
  let lowest = null;  // while running, the best epoch so far by the monitored metric (the job's own is known at its end)
  let shownEpoch = job.epoch;

  const show = (selector, value) => { document.getElementById(selector).textContent = value; };
  const renderJob = () => {
    const badge = document.getElementById("job-status");
    badge.textContent = job.status; badge.className = "badge " + job.status;
    bestEpoch = job.best_epoch ?? (lowest ? lowest.epoch : null);
    show("job-epoch", job.epoch); show("job-best-epoch", bestEpoch ?? "–");
    show("job-stop", job.stop_reason || "–"); show("job-worker", job.worker || "–"); show("job-attempts", job.attempts);
    const waiting = document.getElementById("job-waiting");
    waiting.hidden = !job.waiting_reason;
    waiting.textContent = job.waiting_reason ? `#${job.queue_position} in the queue: ${job.waiting_reason}` : "";
    const error = document.getElementById("job-error");
    error.hidden = !job.error; error.textContent = job.error || "";
    document.getElementById("cancel").hidden = FINISHED.includes(job.status);
    document.getElementById("register").hidden = !["succeeded", "cancelled", "failed", "pruned"].includes(job.status);
    document.getElementById("register-checkpoint").hidden = job.status === "succeeded";
    document.querySelector("#job-started time").dataset.at = job.started_at || "";
    document.querySelector("#job-finished time").dataset.at = job.finished_at || "";
    localizeTimes(document.getElementById("job-times"));
    if (!job.started_at) document.querySelector("#job-started time").textContent = "–";
    if (!job.finished_at) document.querySelector("#job-finished time").textContent = "–";
    const running = job.status === "running" && job.started_at;
    show("job-duration-label", running ? "elapsed" : "duration");
    show("job-duration", job.started_at ? duration(job.started_at, job.finished_at) : "–");
    document.getElementById("job-eta-box").hidden = !(running && job.epoch > 0);
    if (running && job.epoch > 0) {
      const elapsed = (Date.now() - Date.parse(job.started_at)) / 1000;
      show("job-eta", human(elapsed / job.epoch * (job.max_epochs - job.epoch)));
    }
  };

  async function pollMetrics() {
    // the model's series resume after their last step; the system series are stepped by the clock (seconds since
    // 1970), so they are asked for apart, after their own last stamp: each poll carries only new points of both
    const after = Math.min(...Object.entries(lastStep).filter(([n]) => !n.startsWith("sys/")).map(([, v]) => v).concat([Infinity]));
    const since = isFinite(after) ? `&after_step=${Math.max(-1, after - 1)}` : "";
    const stamped = Math.max(...SYSTEM_SERIES.map(n => lastStep[n] ?? -1));
    const [answer, system] = await Promise.all([
      api(`/api/v1/jobs/${id}/metrics?max_points=2000&exclude=sys/${since}`),
      api(`/api/v1/jobs/${id}/metrics?max_points=2000&names=${SYSTEM_SERIES.join(",")}&after_step=${stamped}`)]);
    if (!answer.ok || !system.ok) throw new Error(answer.ok ? system.status : answer.status);
    for (const [name, s] of [...Object.entries(answer.body.series), ...Object.entries(system.body.series)]) {
      const chart = chartOf(name);
      if (!chart) continue;
      const useStep = chart === charts.steps;
      const keep = s.step.map((step, i) => i).filter(i => s.step[i] > (lastStep[name] ?? -1));
      if (!keep.length) continue;
      if (name.startsWith("sys/")) {  // seconds since the run started, from the clock the worker stamped them with
        if (sysStart === null) sysStart = job.started_at ? Math.floor(Date.parse(job.started_at) / 1000) : s.step[keep[0]];
        chart.add(name.slice(4), keep.map(i => s.step[i] - sysStart), keep.map(i => s.value[i]));
        document.getElementById("system").hidden = false;
        lastStep[name] = s.step[keep[keep.length - 1]];
        continue;
      }
      chart.add(name, keep.map(i => useStep ? s.step[i] : s.epoch[i]), keep.map(i => s.value[i]));
      lastStep[name] = s.step[keep[keep.length - 1]];
      if (name === monitored) {
        for (const i of keep) {
          if (!lowest || (higherIsBetter ? s.value[i] > lowest.value : s.value[i] < lowest.value)) lowest = {epoch: s.epoch[i], value: s.value[i]};
        }
      }
    }
    renderJob();
    Object.values(charts).forEach(c => c.render());
  }

  async function pollEvents() {
    const answer = await api(`/api/v1/jobs/${id}/events?after=${lastEvent}`);
    if (!answer.ok) throw new Error(answer.status);
    const box = document.getElementById("events");
    const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    for (const e of answer.body.events) {
      box.append(el("div", {class: e.level}, el("time", {text: when(e.at)}), `[${e.source}] ${e.message}`));
      lastEvent = e.id;
    }
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  async function loadCheckpoints() {
    const answer = await api(`/api/v1/jobs/${id}/checkpoints`);
    if (!answer.ok) return;
    const body = document.querySelector("#checkpoints tbody");
    body.textContent = "";
    const restores = ((job.spec.training || {}).early_stopping || {}).restore_best !== false && (job.spec.training || {}).early_stopping;
    for (const c of answer.body.checkpoints) {
      const roles = [c.is_best ? `best epoch${bestEpoch !== null && bestEpoch !== undefined && c.epoch === bestEpoch ? "" : " written"}` : "",
                     c.is_latest ? "latest" : ""].filter(Boolean);
      if (c.is_latest && job.status === "succeeded") roles.push(restores ? "registered: the best epoch's weights it carries" : "registered");
      body.append(el("tr", {"data-checkpoint": c.id, class: c.is_best ? "best" : null},
        el("td", {text: c.epoch}), el("td", {text: c.step}),
        el("td", {text: c.metric_name ? `${c.metric_name} ${fmt(c.metric)}` : ""}),
        el("td", {class: "roles", text: roles.join("; ")}),
        el("td", {text: (c.size / 1024).toFixed(1) + " KiB"}),
        el("td", {}, el("a", {href: c.download_url, text: "download"}))));
    }
  }

  async function loadModel() {
    const answer = await api("/api/v1/jobs:validate", {method: "POST", headers: {"Content-Type": "application/json"},
                                                        body: JSON.stringify(job.spec)});
    if (!answer.ok) return;
    const plan = answer.body.plan;
    const body = document.querySelector("#model-summary tbody");
    planRows(body, plan);
    const ensemble = plan.members ? ` · an ensemble of ${plan.members} networks, all counted` : "";
    show("model-totals", `${plan.params.toLocaleString()} parameters · about ${(plan.memory_bytes / 2 ** 20).toFixed(1)} MiB to train · ${plan.task}${ensemble}`);
    if (plan.task === "regression") {  // no classes, no confusion matrix; its metric chart is R²
      document.getElementById("confusion-section").hidden = true;
      document.getElementById("metric-caption").textContent = "R² per epoch";
    }
  }

  document.getElementById("cancel").addEventListener("click", async () => {
    const answer = await api(`/api/v1/jobs/${id}/cancel`, {method: "POST"});
    if (answer.ok) { job = {...job, ...answer.body}; renderJob(); }
  });
  registerButton(job);
  annotations(job);

  for (const cell of document.querySelectorAll("table.confusion td")) {
    cell.style.background = `rgba(37, 99, 235, ${Math.min(0.85, Number(cell.dataset.share) * 0.85).toFixed(3)})`;
    if (Number(cell.dataset.share) > 0.5) cell.style.color = "#fff";
  }
  localizeTimes(); renderJob(); loadModel(); loadCheckpoints(); pollMetrics(); pollEvents();
  let finalRound = FINISHED.includes(job.status) ? 0 : 1;
  let ticks = 0;
  every(1000, async () => {
    if (++ticks % 5 === 0) loadCheckpoints();
    const answer = await api(`/api/v1/jobs/${id}`);
    if (!answer.ok) throw new Error(answer.status);
    const wasDone = FINISHED.includes(job.status);
    job = answer.body; renderJob();
    if (job.epoch !== shownEpoch) { shownEpoch = job.epoch; loadCheckpoints(); }  // the table keeps up with the header
    await pollMetrics(); await pollEvents();
    if (FINISHED.includes(job.status)) {
      if (!wasDone) { loadCheckpoints(); if (job.metrics && Object.keys(job.metrics).length) location.reload(); }
      return finalRound-- > 0;
    }
    return true;
  });
}

// ---------------------------------------------------------------------------------------------------------------------
// Compare
// ---------------------------------------------------------------------------------------------------------------------

function smooth(values, weight) {
  if (!weight) return values;
  let last = 0, n = 0;
  return values.map(v => {
    if (v === null || !isFinite(v)) return v;
    last = last * weight + (1 - weight) * v; n += 1;
    return last / (1 - Math.pow(weight, n));
  });
}

async function pageCompare() {
  const form = document.getElementById("compare-form");
  const ids = form.ids.value;
  if (!ids) return;
  const metric = form.metric.value;
  const answer = await api(`/api/v1/compare?ids=${encodeURIComponent(ids)}&names=${encodeURIComponent(metric)}&max_points=400`);
  const caption = document.getElementById("compare-caption");
  if (!answer.ok) { caption.textContent = answer.body ? answer.body.message : "could not load the runs"; return; }
  const runs = answer.body.runs;
  const useStep = metric.endsWith("_step");
  const target = document.getElementById("chart-compare");
  const smoothing = document.getElementById("compare-smooth");
  const logBox = document.getElementById("compare-log");
  let chart = null;
  const draw = () => {
    // smoothing as TensorBoard's: an exponential moving average, debiased so the first points are not pulled to 0
    const weight = Number(smoothing.value);
    document.getElementById("compare-smooth-value").textContent = weight.toFixed(2);
    if (chart && chart.plot) chart.plot.destroy();
    chart = new LineChart(target, useStep ? "step" : "epoch");
    chart.log = logBox.checked;
    runs.forEach(run => {
      const s = run.series[metric];
      chart.add(`${run.name} · ${run.id.slice(0, 6)}`, s ? (useStep ? s.step : s.epoch) : [], s ? smooth(s.value, weight) : []);
    });
    target.dataset.smoothing = weight;
    target.dataset.log = logBox.checked ? "1" : "0";
    chart.render();
  };
  smoothing.addEventListener("input", draw);
  logBox.addEventListener("change", draw);
  draw();
  const differences = answer.body.differences;
  const finals = [...new Set(runs.flatMap(r => Object.keys(r.metrics || {}).filter(k => typeof r.metrics[k] === "number")))]
    .filter(k => k.startsWith("test_") || k.startsWith("best_")).sort();
  // The menu offers what these runs reported, nothing else
  const menu = form.metric;
  menu.textContent = "";
  for (const name of answer.body.metrics.length ? answer.body.metrics : [metric]) {
    menu.append(el("option", {value: name, text: name, ...(name === metric ? {selected: ""} : {})}));
  }
  // Final metrics first, next to the run they belong to; then the parts of the specs that differ
  const head = document.querySelector("#compare-table thead");
  const body = document.querySelector("#compare-table tbody");
  head.append(el("tr", {}, el("th", {text: "run"}), el("th", {text: "status"}),
    ...finals.map(f => el("th", {class: "num", text: f})), ...differences.map(d => el("th", {text: d.path}))));
  runs.forEach((run, i) => {
    body.append(el("tr", {},
      el("td", {}, el("a", {href: "/jobs/" + run.id, text: run.name}), " ", el("small", {class: "id", text: run.id.slice(0, 6)})),
      el("td", {}, el("span", {class: "badge " + run.status, text: run.status})),
      ...finals.map(f => el("td", {class: "num", text: fmt((run.metrics || {})[f])})),
      ...differences.map(d => el("td", {class: "differs", text: typeof d.values[i] === "string" ? d.values[i] : JSON.stringify(d.values[i])}))));
  });
  caption.textContent = `${metric} by ${useStep ? "step" : "epoch"} · ${runs.length} runs · ` +
    (differences.length ? `their specs differ in ${differences.map(d => d.path).join(", ")}` : "the same spec");
}

// ---------------------------------------------------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------------------------------------------------

function pageWorkers() {
  async function load() {
    const answer = await api("/api/v1/workers");
    if (!answer.ok) throw new Error(answer.status);
    const {workers, pools, queue} = answer.body;
    const wbody = document.querySelector("#workers tbody");
    wbody.textContent = "";
    for (const w of workers) {
      const running = w.jobs.length ? w.jobs.map(j => el("a", {href: "/jobs/" + j.id, text: `${j.name} (${j.epoch}/${j.max_epochs})`}))
        : [w.busy ? "busy" : "idle"];
      const drain = IS_ADMIN && (w.state === "online") ? el("button", {type: "button", class: "drain", "data-name": w.name, text: "Drain"}) : "";
      wbody.append(el("tr", {"data-name": w.name},
        el("td", {text: w.name}), el("td", {}, el("span", {class: "badge " + w.state, text: w.state})),
        el("td", {text: w.pool}), el("td", {text: w.device}), el("td", {}, ...running),
        el("td", {text: w.jobs_done}), el("td", {class: "seen", title: when(w.last_seen_at), text: ago(w.last_seen_at)}), el("td", {}, drain)));
    }
    document.getElementById("no-workers").hidden = workers.length > 0;
    const pbody = document.querySelector("#pools tbody");
    pbody.textContent = "";
    for (const [name, p] of Object.entries(pools)) {
      pbody.append(el("tr", {}, el("td", {text: name}), el("td", {text: p.online}),
        el("td", {text: `${p.busy} / ${p.slots}`}), el("td", {text: p.queued})));
    }
    const qbody = document.querySelector("#queue tbody");
    qbody.textContent = "";
    for (const j of queue) {
      qbody.append(el("tr", {}, el("td", {text: j.position}), el("td", {}, el("a", {href: "/jobs/" + j.id, text: j.name})),
        el("td", {text: j.pool}), el("td", {text: j.device}), el("td", {text: j.priority}), el("td", {text: when(j.created_at)})));
    }
  }
  document.querySelector("#workers").addEventListener("click", async event => {
    const button = event.target.closest("button.drain");
    if (!button) return;
    button.disabled = true;
    await api(`/api/v1/workers/${encodeURIComponent(button.dataset.name)}/drain`, {method: "POST"});
    await load();
  });
  load();
  every(2000, load);
}

// ---------------------------------------------------------------------------------------------------------------------
// Submit
// ---------------------------------------------------------------------------------------------------------------------

function lineOf(text, path) {
  // The line of the spec text where the field a path names is written: each key's line in turn, and for an index
  // ([2]) the line where that item of the list starts (a "- " in YAML, a "{" in JSON), so a layer's error points at
  // that layer rather than at "layers:".
  const lines = text.split("\n");
  const indent = line => line.length - line.trimStart().length;
  const parts = path.split(".").flatMap(p => p.split(/(?=\[)/)).filter(p => p && p !== "(root)");
  let at = -1;  // the line of the last part found
  let afterIndex = false;
  for (const part of parts) {
    const index = /^\[(\d+)\]$/.exec(part);
    if (index) {
      const owner = at >= 0 ? indent(lines[at]) : -1;
      let itemIndent = null, count = -1, found = -1;
      for (let i = at + 1; i < lines.length; i++) {
        const line = lines[i];
        if (!line.trim()) continue;
        if (indent(line) <= owner && !line.trimStart().startsWith("- ")) break;
        if (itemIndent === null) itemIndent = indent(line);
        if (indent(line) === itemIndent && /^\s*(- |\{|\[)/.test(line)) count += 1;
        if (count === Number(index[1])) { found = i; break; }
      }
      if (found < 0) break;
      at = found;
      afterIndex = true;
      continue;
    }
    afterIndex = false;
    // the key, inside the block of the line found last (a list item's own line too: `- {type: dense, units: 0}`)
    const pattern = new RegExp(`(^|[\\s{,"'-])"?${part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}"?\\s*:`);
    let found = -1;
    for (let i = afterIndex ? at : at + 1; i < lines.length; i++) {
      if (at >= 0 && i > at && lines[i].trim() && indent(lines[i]) <= indent(lines[at])) break;
      if (pattern.test(i === at ? lines[i].trimStart().slice(1) : lines[i])) { found = i; break; }
    }
    if (found < 0) break;
    at = found;
  }
  return at >= 0 ? at + 1 : null;
}

function layerReference(catalog) {
  // GET /api/v1/layers as a list: each type, where it comes from, what it does and its fields with their defaults
  const list = document.querySelector("#layer-types ul");
  document.querySelector("#layer-types summary").textContent = `The ${catalog.layers.length} layer types of this service`;
  for (const layer of catalog.layers) {
    const fields = layer.about.map(([name, words]) => el("li", {}, el("code", {text: name}), " " + words));
    list.append(el("li", {"data-type": layer.type}, el("code", {text: layer.type}),
      layer.package ? el("span", {class: "badge", text: `${layer.package} ${layer.version}`}) : "",
      " ", ...layer.description.split("`").map((part, i) => i % 2 ? el("code", {text: part}) : part),
      fields.length ? el("ul", {}, ...fields) : ""));
  }
  const refused = document.getElementById("layer-refused");
  for (const r of catalog.refused) {
    refused.append(el("li", {}, el("code", {text: r.name}), ` from ${r.package} ${r.version} is not offered: ${r.reason}`));
  }
}

function pageSubmit() {
  const area = document.getElementById("spec");
  const format = document.getElementById("format");
  const errors = document.getElementById("errors");
  const examples = document.getElementById("example");
  let known = [];
  api("/api/v1/examples").then(answer => {
    if (!answer.ok) return;
    known = answer.body.examples;
    for (const e of known) examples.append(el("option", {value: e.name, text: e.name}));
    if (!area.value.trim() && known.length) { area.value = known.find(e => e.name === "digits-mlp")?.yaml || known[0].yaml; }
  });
  examples.addEventListener("change", () => {
    const e = known.find(x => x.name === examples.value);
    if (e) { area.value = format.value === "json" ? JSON.stringify(e.spec, null, 2) : e.yaml; format.value = format.value; }
  });
  api("/api/v1/layers").then(answer => { if (answer.ok) layerReference(answer.body); });
  const send = path => api(path, {method: "POST", body: area.value,
    headers: {"Content-Type": area.value.trim().startsWith("{") ? "application/json" : "application/yaml"}});
  const clearPlan = note => {
    // a dry run belongs to the spec it was made for: never leave the last one beside a new answer
    document.querySelector("#plan tbody").textContent = "";
    document.getElementById("plan-warnings").textContent = "";
    const totals = document.getElementById("plan-totals");
    totals.className = "empty";
    totals.textContent = note;
  };
  const showErrors = body => {
    document.getElementById("valid").hidden = true;
    clearPlan("No dry run: fix the errors above, then Check again.");
    listErrors(errors, body, area.value);
  };
  const showPlan = plan => {
    const body = document.querySelector("#plan tbody");
    body.textContent = "";
    planRows(body, plan);
    const totals = document.getElementById("plan-totals");
    totals.className = "";
    totals.textContent = `${plan.task}: ${plan.params.toLocaleString()} parameters, about ${(plan.memory_bytes / 2 ** 20).toFixed(1)} MiB to train, ${plan.flops_per_example.toLocaleString()} multiply-adds per example${plan.members ? ` (an ensemble of ${plan.members} networks, all counted)` : ""}`;
    const warnings = document.getElementById("plan-warnings");
    warnings.textContent = "";
    for (const w of plan.warnings || []) warnings.append(el("li", {"data-path": w.path}, el("code", {text: w.path}), " ", w.message));
  };
  document.getElementById("check").addEventListener("click", async () => {
    const answer = await send("/api/v1/jobs:validate");
    if (answer.ok) { errors.textContent = ""; document.getElementById("valid").hidden = false; showPlan(answer.body.plan); }
    else showErrors(answer.body);
  });
  document.getElementById("submit").addEventListener("click", async () => {
    const answer = await send("/api/v1/jobs");
    if (answer.status === 201) location.href = "/jobs/" + answer.body.id;
    else showErrors(answer.body);
  });
}

// ---------------------------------------------------------------------------------------------------------------------
// Sweep
// ---------------------------------------------------------------------------------------------------------------------

function ticks(lo, hi, log, count = 5) {
  // Tick values inside [lo, hi]: 1, 2 and 5 times powers of ten on a log axis (powers alone when that is many),
  // round steps of 1, 2 or 5 on a linear one.
  if (log) {
    const out = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      for (const m of [1, 2, 5]) { const v = +(m * 10 ** e).toPrecision(6); if (v >= lo && v <= hi) out.push(v); }
    }
    return out.length > 7 ? out.filter(v => Number.isInteger(Math.log10(v)) || Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9) : out;
  }
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map(m => m * mag).find(st => st >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function tickLabel(v) {
  // Short and exact enough for an axis: 1e-4, 0.003, 0.25, 64, 2e+5
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a < 0.001 || a >= 1e5) return Number(v.toPrecision(3)).toExponential().replace("e+", "e");
  return String(+v.toPrecision(3));
}

function domain(values, log) {
  // [lo, hi] of the values with a margin, so no point sits on the frame or falls outside it
  const t = values.map(v => log ? Math.log10(v) : v);
  let lo = Math.min(...t), hi = Math.max(...t);
  if (!(hi > lo)) { const half = Math.abs(lo) * 0.1 || 0.5; lo -= half; hi += half; }
  const pad = (hi - lo) * 0.08;
  return log ? [10 ** (lo - pad), 10 ** (hi + pad)] : [lo - pad, hi + pad];
}

function pointChart(canvas, {xLabel, yLabel, points, log = false}) {
  // A metric against one parameter: a point per trial that reported it (pruned: hollow, best: ringed). Numbers on a
  // linear or log axis, anything else as evenly spaced categories. Tick labels that would overlap are left out.
  // The canvas takes its box's width from the page's layout (CSS width 100%), and draws at that size
  canvas.style.display = "block"; canvas.style.width = "100%"; canvas.style.height = "220px";
  const width = Math.max(280, canvas.clientWidth || 320), height = 220;
  canvas.width = width * devicePixelRatio; canvas.height = height * devicePixelRatio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(devicePixelRatio, 0, 0, devicePixelRatio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const left = 58, right = width - 14, top = 10, bottom = height - 42;
  const numeric = points.every(p => typeof p.x === "number");
  const categories = numeric ? null : [...new Set(points.map(p => String(p.x)))].sort();
  const logX = numeric && log && points.every(p => p.x > 0);
  const [xlo, xhi] = numeric && points.length ? domain(points.map(p => p.x), logX) : [-0.5, (categories || [0]).length - 0.5];
  const [ylo, yhi] = points.length ? domain(points.map(p => p.y), false) : [0, 1];
  const fx = x => logX ? (Math.log10(x) - Math.log10(xlo)) / (Math.log10(xhi) - Math.log10(xlo)) : (x - xlo) / (xhi - xlo);
  const X = p => left + (right - left) * (numeric ? fx(p) : (categories.indexOf(String(p)) - xlo) / (xhi - xlo));
  const Y = y => bottom - (bottom - top) * (y - ylo) / (yhi - ylo);
  ctx.strokeStyle = "#9ca3af"; ctx.fillStyle = "#374151"; ctx.lineWidth = 1; ctx.font = "11px system-ui";
  ctx.strokeRect(left, top, right - left, bottom - top);
  let lastRight = -Infinity;  // x tick labels
  ctx.textAlign = "center";
  for (const v of numeric ? ticks(xlo, xhi, logX) : categories) {
    const x = X(v), label = numeric ? tickLabel(v) : v, w = ctx.measureText(label).width;
    ctx.beginPath(); ctx.moveTo(x, bottom); ctx.lineTo(x, bottom + 4); ctx.stroke();
    if (x - w / 2 > lastRight + 6) { ctx.fillText(label, x, bottom + 16); lastRight = x + w / 2; }
  }
  ctx.textAlign = "right";
  let lastTop = Infinity;  // y tick labels, bottom up
  for (const v of ticks(ylo, yhi, false, 4)) {
    const y = Y(v);
    ctx.beginPath(); ctx.moveTo(left - 4, y); ctx.lineTo(left, y); ctx.stroke();
    if (y + 6 < lastTop) { ctx.fillText(tickLabel(v), left - 6, y + 4); lastTop = y - 6; }
  }
  ctx.textAlign = "center"; ctx.fillText(xLabel + (logX ? " (log scale)" : ""), (left + right) / 2, height - 6);
  ctx.save(); ctx.translate(12, (top + bottom) / 2); ctx.rotate(-Math.PI / 2); ctx.fillText(yLabel, 0, 0); ctx.restore();
  let drawn = 0;
  for (const p of points) {
    const x = X(p.x), y = Y(p.y);
    if (!(x >= left && x <= right && y >= top && y <= bottom)) continue;
    ctx.beginPath(); ctx.arc(x, y, 4, 0, 2 * Math.PI);
    if (p.pruned) { ctx.strokeStyle = "#94a3b8"; ctx.stroke(); } else { ctx.fillStyle = "#2563eb"; ctx.fill(); }
    if (p.best) { ctx.beginPath(); ctx.arc(x, y, 7, 0, 2 * Math.PI); ctx.strokeStyle = "#16a34a"; ctx.lineWidth = 2; ctx.stroke(); ctx.lineWidth = 1; }
    drawn += 1;
  }
  canvas.dataset.points = drawn;
  canvas.dataset.scale = numeric ? (logX ? "log" : "linear") : "categories";
}

function logScale(distribution) {
  // log-uniform ranges, and choices of positive numbers that span two decades or more (learning rates, decays)
  if ("log_uniform" in distribution || "int_log_uniform" in distribution) return true;
  const values = distribution.choice || [];
  return values.length > 1 && values.every(v => typeof v === "number" && v > 0) && Math.max(...values) / Math.min(...values) >= 100;
}

function colour(i) {
  // The palette's colours first, then hues spread by the golden angle: no two series of a chart share a colour
  return i < COLORS.length ? COLORS[i] : `hsl(${Math.round((i * 137.508) % 360)}, 65%, 42%)`;
}

function parallelCoordinates(canvas, axes, rows, minimize) {
  // One vertical axis per parameter and one for the metric; one line per trial, darker for better.
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 40, top = 20, bottom = h - 30;
  ctx.clearRect(0, 0, w, h);
  const xOf = i => pad + i * (w - 2 * pad) / Math.max(1, axes.length - 1);
  const scaled = axes.map(a => {
    const values = rows.map(r => a.get(r)).filter(v => v !== null && v !== undefined);
    const num = values.map(v => typeof v === "number" ? (a.log ? Math.log10(v) : v) : null);
    const cats = [...new Set(values.filter(v => typeof v !== "number").map(String))];
    const lo = Math.min(...num.filter(v => v !== null)), hi = Math.max(...num.filter(v => v !== null));
    const scale = v => {
      if (v === null || v === undefined) return null;
      if (typeof v !== "number") return cats.length > 1 ? cats.indexOf(String(v)) / (cats.length - 1) : 0.5;
      const x = a.log ? Math.log10(v) : v;
      return hi > lo ? (x - lo) / (hi - lo) : 0.5;
    };
    // what the axis shows at its ends (numbers), or at each category
    scale.labels = cats.length ? cats.map(c => [c, scale(c)])
      : (isFinite(lo) ? (hi > lo ? [[a.log ? 10 ** lo : lo, 0], [a.log ? 10 ** hi : hi, 1]] : [[a.log ? 10 ** lo : lo, 0.5]]) : []);
    return scale;
  });
  const metric = axes.length - 1;
  const ranked = rows.filter(r => r.value !== null).map(r => r.value).sort((a, b) => minimize ? a - b : b - a);
  for (const r of rows) {
    const rank = r.value === null ? -1 : ranked.indexOf(r.value);
    const shade = rank < 0 ? 0 : 1 - rank / Math.max(1, ranked.length);
    ctx.strokeStyle = r.status === "pruned" ? "rgba(148,163,184,0.55)" : `rgba(37,99,235,${(0.25 + 0.75 * shade).toFixed(2)})`;
    ctx.lineWidth = rank === 0 ? 3 : 1.2;
    ctx.setLineDash(r.status === "pruned" ? [4, 3] : []);
    ctx.beginPath();
    axes.forEach((a, i) => {
      const t = scaled[i](a.get(r));
      if (t === null) return;
      const y = bottom - t * (bottom - top);
      i === 0 ? ctx.moveTo(xOf(i), y) : ctx.lineTo(xOf(i), y);
    });
    ctx.stroke();
  }
  ctx.setLineDash([]);
  ctx.fillStyle = "#1d2330"; ctx.strokeStyle = "#9ca3af"; ctx.lineWidth = 1; ctx.font = "11px system-ui";
  let values = 0;
  axes.forEach((a, i) => {
    ctx.beginPath(); ctx.moveTo(xOf(i), top); ctx.lineTo(xOf(i), bottom); ctx.stroke();
    ctx.textAlign = i === 0 ? "left" : (i === axes.length - 1 ? "right" : "center");
    ctx.fillText(a.label + (a.log ? " (log)" : ""), xOf(i), h - 10);
    ctx.textAlign = i === axes.length - 1 ? "right" : "left";
    for (const [value, t] of scaled[i].labels) {
      ctx.fillText(typeof value === "number" ? tickLabel(value) : value, xOf(i) + (i === axes.length - 1 ? -4 : 4), bottom - t * (bottom - top) + (t === 0 ? -3 : 10));
      values += 1;
    }
  });
  canvas.dataset.values = values;
  canvas.dataset.lines = rows.length;
}

function pageSweep() {
  const id = document.getElementById("sweep-head").dataset.sweep;
  let curvesAt = 0;
  async function load() {
    const answer = await api(`/api/v1/sweeps/${id}`);
    if (!answer.ok) throw new Error(answer.status);
    const s = answer.body;
    const badge = document.getElementById("sweep-status");
    badge.textContent = s.status; badge.className = "badge " + s.status;
    document.getElementById("sweep-cancel").hidden = s.status !== "running";
    document.getElementById("train-best").hidden = !s.best;
    const facts = document.getElementById("sweep-facts");
    facts.textContent = "";
    const fact = (label, value) => facts.append(el("span", {}, label + " ", el("b", {text: value})));
    fact("method", s.method); fact("metric", `${s.metric} (${s.direction})`); fact("pruner", s.pruner);
    fact("trials", `${s.trials_launched} / ${s.trials_total}`);
    const packed = s.trials.filter(t => (t.packed_with || []).length).length;
    fact("packing", s.pack === "off" ? "off" : `${s.pack}: ${packed} of ${s.trials.length} trials packed${s.not_packed ? ` (${s.not_packed})` : ""}`);
    fact("states", Object.entries(s.counts).map(([k, v]) => `${v} ${k}`).join(", ") || "–");
    fact("epochs spent", `${s.budget.epochs_spent} of ${s.budget.epochs_full_search} (${(100 * s.budget.fraction).toFixed(0)} %)`);
    if (s.best) facts.append(el("span", {id: "best-completed", title: "the best trial that ran to its end: Train the best and register_best take it"},
      "best completed ", el("a", {href: "/jobs/" + s.best.job_id, text: `trial ${s.best.trial}: ${fmt(s.best.value)}`})));
    const top = s.highest_reached;
    if (top && (!s.best || top.job_id !== s.best.job_id)) facts.append(el("span", {id: "highest-reached",
      title: "the best value any trial reached at any epoch; a pruned trial stopped there and has no final model"},
      `${s.direction === "maximize" ? "highest" : "lowest"} reached `, el("a", {href: "/jobs/" + top.job_id,
        text: `trial ${top.trial} (${top.status}): ${fmt(top.value)} at epoch ${top.epoch}`})));
    const params = Object.keys(s.search);
    const head = document.querySelector("#trials thead"), body = document.querySelector("#trials tbody");
    head.textContent = ""; body.textContent = "";
    head.append(el("tr", {}, el("th", {text: "trial"}), el("th", {text: "status"}), ...params.map(p => el("th", {text: p})),
      el("th", {text: s.metric}), el("th", {text: "epochs"}), el("th", {text: "test accuracy"}),
      el("th", {text: "packed with", title: "trials trained together as one packed model, each as it would train alone"})));
    for (const t of s.trials) {
      body.append(el("tr", {"data-trial": t.trial, class: s.best && s.best.job_id === t.job_id ? "best" : null},
        el("td", {}, el("a", {href: "/jobs/" + t.job_id, text: "#" + t.trial})),
        el("td", {}, el("span", {class: "badge " + t.status, text: t.status})),
        ...params.map(p => el("td", {text: fmt(t.params[p], 5)})),
        el("td", {text: fmt(t.value)}), el("td", {text: t.epochs}), el("td", {text: fmt(t.test_accuracy)}),
        el("td", {class: "packed", title: s.not_packed ? "not packed: " + s.not_packed : null, text: (t.packed_with || []).length ? (t.packed_with.length > 6
          ? `${t.packed_with.length} trials (#${t.packed_with[0]}–#${t.packed_with[t.packed_with.length - 1]})`
          : t.packed_with.map(n => "#" + n).join(" ")) : "–"})));
    }
    const done = s.trials.filter(t => t.value !== null);
    const charts = document.getElementById("param-charts");
    const figures = params.map(p => {  // every figure in the layout before any is drawn: each takes its column's width
      let fig = charts.querySelector(`[data-param="${CSS.escape(p)}"]`);
      if (!fig) {
        fig = el("figure", {"data-param": p}, el("figcaption", {text: `${s.metric} against ${p}`}), el("div", {class: "chart small"}, el("canvas")));
        charts.append(fig);
      }
      return fig;
    });
    params.forEach((p, i) => {
      const fig = figures[i];
      pointChart(fig.querySelector("canvas"), {xLabel: p, yLabel: s.metric, log: logScale(s.search[p]),
        points: done.filter(t => t.params[p] !== null && t.params[p] !== undefined).map(t => ({x: t.params[p], y: t.value,
          pruned: t.status === "pruned", best: s.best && s.best.job_id === t.job_id}))});
    });
    const axes = params.map(p => ({label: p, get: r => r.params[p], log: logScale(s.search[p])}));
    axes.push({label: s.metric, get: r => r.value, log: false});
    parallelCoordinates(document.getElementById("parallel"), axes, s.trials, s.direction === "minimize");
    if (Date.now() - curvesAt > 4000 || s.status !== "running") {
      curvesAt = Date.now();
      await curves(s);
    }
    return s.status === "running";
  }
  async function curves(s) {
    if (!s.trials.length) return;
    const shown = s.trials.slice(0, 200);  // the compare API takes 200 runs at most
    const ids = shown.map(t => t.job_id).join(",");
    const answer = await api(`/api/v1/compare?ids=${ids}&names=${encodeURIComponent(s.metric)}&max_points=200`);
    if (!answer.ok) return;
    const target = document.getElementById("chart-trials");
    target.textContent = "";
    const chart = new LineChart(target, "epoch");
    answer.body.runs.forEach((run, i) => {
      const series = run.series[s.metric];
      const trial = shown[i];
      const few = series && series.epoch.length < 3;  // a line needs two points: a trial pruned early shows as dots
      chart.add(`#${trial.trial}${trial.status === "pruned" ? " (pruned)" : ""}`, series ? series.epoch : [], series ? series.value : [],
        {...(trial.status === "pruned" ? {dash: [5, 4], width: 1} : {width: 2}), ...(few ? {points: {show: true, size: 7}} : {})});
    });
    chart.render();
  }
  document.getElementById("sweep-cancel").addEventListener("click", async () => { await api(`/api/v1/sweeps/${id}/cancel`, {method: "POST"}); await load(); });
  document.getElementById("train-best").addEventListener("click", async () => {
    const answer = await api(`/api/v1/sweeps/${id}/train_best`, {method: "POST"});
    if (answer.status === 201) location.href = "/jobs/" + answer.body.id;
  });
  load().then(running => {
    if (running) every(2000, load);
    else { const live = document.querySelector(".live"); live.textContent = "final"; live.classList.add("stale"); }
  });
}

// ---------------------------------------------------------------------------------------------------------------------
// Sweeps and datasets: the forms
// ---------------------------------------------------------------------------------------------------------------------

function listErrors(target, body, text) {
  // Every error of an answer, each with its path (and its line in `text` when it names one)
  target.textContent = "";
  const list = body && body.errors && body.errors.length ? body.errors : [{path: "", message: body ? body.message : "the service did not answer"}];
  for (const e of list) {
    const line = e.line || (text && e.path ? lineOf(text, e.path) : null);
    target.append(el("li", {"data-path": e.path || "", "data-line": line || ""}, el("code", {text: e.path || "request"}), " ",
      line ? `(line ${line}${e.column ? `, column ${e.column}` : ""}) ` : "", e.message));
  }
}

function pageSweeps() {
  const area = document.getElementById("sweep-spec");
  document.getElementById("start-sweep").addEventListener("click", async () => {
    const answer = await api("/api/v1/sweeps", {method: "POST", body: area.value,
      headers: {"Content-Type": area.value.trim().startsWith("{") ? "application/json" : "application/yaml"}});
    if (answer.status === 201) location.href = "/sweeps/" + answer.body.id;
    else listErrors(document.getElementById("sweep-errors"), answer.body, area.value);
  });
}

function pageDatasets() {
  const form = document.getElementById("upload-form");
  const errors = document.getElementById("upload-errors");
  form.addEventListener("submit", async event => {
    event.preventDefault();
    const file = form.file.files[0];
    const query = new URLSearchParams({name: form.name.value});
    if (form.target.value) query.set("target", form.target.value);
    if (form.task.value) query.set("task", form.task.value);
    const answer = await api(`/api/v1/datasets?${query}`, {method: "POST", body: await file.arrayBuffer(),
      headers: {"Content-Type": "application/octet-stream"}});
    if (answer.status === 201 || answer.status === 200) location.href = "/datasets/" + answer.body.ref;
    else listErrors(errors, answer.body);
  });
  for (const button of document.querySelectorAll("#datasets button.delete")) {
    button.addEventListener("click", async () => {
      if (!confirm(`Delete dataset ${button.dataset.name}?`)) return;
      const answer = await api(`/api/v1/datasets/${button.dataset.id}`, {method: "DELETE"});
      if (answer.ok || answer.status === 204) location.reload();
      else listErrors(errors, answer.body);
    });
  }
}

function pageDataset() {
  // Class counts as bars: widths set here, since the page's CSP allows no inline style
  for (const bar of document.querySelectorAll(".bar[data-w]")) bar.style.width = bar.dataset.w + "%";
}

// ---------------------------------------------------------------------------------------------------------------------
// Models: promote a version, try one from a form its signature made
// ---------------------------------------------------------------------------------------------------------------------

function pageModel() {
  const data = JSON.parse(document.getElementById("model-data").textContent);
  const errors = document.getElementById("model-errors");
  for (const button of document.querySelectorAll("#versions button.promote")) {
    button.addEventListener("click", async () => {
      const answer = await api(`/api/v1/models/${encodeURIComponent(data.name)}/aliases/champion`, {method: "PUT",
        body: JSON.stringify({version: Number(button.dataset.version)}), headers: {"Content-Type": "application/json"}});
      if (answer.ok) location.reload();
      else listErrors(errors, answer.body);
    });
  }
  for (const edit of document.querySelectorAll("form.version-edit")) {
    edit.addEventListener("submit", async event => {
      event.preventDefault();
      const base = `/api/v1/models/${encodeURIComponent(data.name)}/versions/${edit.dataset.version}`;
      const json = {"Content-Type": "application/json"};
      let answer = await api(`${base}/description`, {method: "PUT", headers: json,
        body: JSON.stringify({description: edit.elements.description.value})});
      const key = edit.elements.key.value.trim();
      if (answer.ok && key) answer = await api(`${base}/tags/${encodeURIComponent(key)}`, {method: "PUT", headers: json,
        body: JSON.stringify({value: edit.elements.value.value})});
      if (answer.ok) location.reload();
      else listErrors(errors, answer.body);
    });
  }
  const form = document.getElementById("try-form");
  if (!form) return;
  form.addEventListener("submit", async event => {
    event.preventDefault();
    const tried = data.tried;
    let body, type = "application/json";
    if (tried.image) {  // the file itself: the service decodes and resizes it as training did
      const file = form.elements.image.files[0];
      body = await file.arrayBuffer();
      type = file.type || "image/png";
    } else if (tried.columns) {  // raw values by column: text for a category, a number or null (missing)
      const value = c => {
        const raw = form.elements[c.name].value;
        if (raw === "") return null;
        return c.kind === "number" ? Number(raw) : raw;
      };
      body = JSON.stringify({records: [Object.fromEntries(tried.columns.map(c => [c.name, value(c)]))]});
    } else if (tried.features && tried.features.length) {
      body = JSON.stringify({records: [Object.fromEntries(tried.features.map(f => [f, Number(form.elements[f].value)]))]});
    } else {
      try { body = JSON.stringify({inputs: JSON.parse(form.elements.rows.value)}); }
      catch (e) { listErrors(document.getElementById("try-errors"), {message: "the rows are not valid JSON: " + e.message}); return; }
    }
    const answer = await api(`/api/v1/models/${encodeURIComponent(data.name)}/versions/${tried.version}/predict`,
      {method: "POST", body: body, headers: {"Content-Type": type}});
    const target = document.getElementById("try-errors");
    const table = document.getElementById("try-result");
    if (!answer.ok) { listErrors(target, answer.body); table.hidden = true; return; }
    target.textContent = "";
    const tbody = table.querySelector("tbody");
    tbody.textContent = "";
    answer.body.predictions.forEach((p, i) => {
      const shown = "label" in p ? p.label : fmt(p.value);
      const detail = p.probabilities ? Object.entries(p.probabilities).sort((x, y) => y[1] - x[1]).slice(0, 3)
        .map(([k, v]) => `${k} ${(100 * v).toFixed(1)}%`).join(", ")
        : ("variance" in p ? `variance ${fmt(p.variance)}` : "");
      tbody.append(el("tr", {"data-row": i}, el("td", {text: `row ${i + 1}`}), el("td", {class: "answer", text: shown}),
                      el("td", {text: detail})));
    });
    table.hidden = false;
  });
}

function annotations(job) {
  // A run's tags (chips that link to a search, each removable) and its markdown note. The note's HTML is the service's
  // rendering (markdown-it with raw HTML off and unsafe links dropped); nothing the user typed is parsed here.
  const chips = document.getElementById("tag-chips");
  const error = document.getElementById("tag-error");
  const render = tags => {
    chips.replaceChildren(...Object.entries(tags).flatMap(([k, v]) => [el("span", {class: "chip", "data-key": k},
      el("a", {href: tagLink(k, v), text: `${k}: ${v}`}),
      el("button", {type: "button", class: "untag", "aria-label": "remove tag " + k, title: "remove this tag", text: "×"})), " "]));
  };
  const said = answer => {
    error.hidden = answer.ok;
    error.textContent = answer.ok ? "" : (answer.body ? answer.body.message : `error ${answer.status}`);
    if (answer.ok) render(answer.body.tags || {});
  };
  chips.addEventListener("click", async e => {
    const chip = e.target.closest("button.untag") && e.target.closest("span.chip");
    if (!chip) return;
    said(await api(`/api/v1/jobs/${job.id}/tags/${encodeURIComponent(chip.dataset.key)}`, {method: "DELETE"}));
  });
  document.getElementById("tag-form").addEventListener("submit", async e => {
    e.preventDefault();
    const form = e.target;
    const answer = await api(`/api/v1/jobs/${job.id}/tags/${encodeURIComponent(form.key.value.trim())}`,
      {method: "PUT", headers: {"Content-Type": "application/json"}, body: JSON.stringify({value: form.value.value})});
    said(answer);
    if (answer.ok) form.reset();
  });
  const noteForm = document.getElementById("note-form");
  const edit = document.getElementById("note-edit");
  const open = shown => { noteForm.hidden = !shown; edit.hidden = shown; };
  edit.addEventListener("click", () => { open(true); noteForm.note.focus(); });
  document.getElementById("note-cancel").addEventListener("click", () => open(false));
  noteForm.addEventListener("submit", async e => {
    e.preventDefault();
    const answer = await api(`/api/v1/jobs/${job.id}/note`, {method: "PUT", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({note: noteForm.note.value})});
    if (!answer.ok) { error.hidden = false; error.textContent = answer.body ? answer.body.message : `error ${answer.status}`; return; }
    document.getElementById("note-html").innerHTML = answer.body.html;  // the service's safe rendering
    document.getElementById("note-empty").hidden = Boolean(answer.body.note);
    open(false);
  });
}

function registerButton(job) {
  // "Register…" opens a form: the model's name (this run becomes its next version), an alias to point at it, and
  // for a run that did not succeed, which of its checkpoints to take. A worker exports it.
  const button = document.getElementById("register");
  const form = document.getElementById("register-form");
  if (!button || !form) return;
  button.addEventListener("click", () => {
    form.hidden = false;
    if (!form.elements.name.value) {
      form.elements.name.value = job.name.toLowerCase().replace(/[^a-z0-9._-]+/g, "-").replace(/^[^a-z0-9]+/, "").slice(0, 64);
    }
    form.elements.name.focus();
  });
  document.getElementById("register-close").addEventListener("click", () => { form.hidden = true; });
  form.addEventListener("submit", async event => {
    event.preventDefault();
    const errors = document.getElementById("register-errors");
    const body = {name: form.elements.name.value, job_id: job.id};
    if (!document.getElementById("register-checkpoint").hidden) body.checkpoint = form.elements.checkpoint.value;
    const answer = await api("/api/v1/models", {method: "POST", body: JSON.stringify(body),
      headers: {"Content-Type": "application/json"}});
    if (answer.status !== 201) { listErrors(errors, answer.body); return; }
    const alias = form.elements.alias.value;
    if (alias) {
      const moved = await api(`/api/v1/models/${encodeURIComponent(answer.body.model)}/aliases/${encodeURIComponent(alias)}`,
        {method: "PUT", body: JSON.stringify({version: answer.body.version}), headers: {"Content-Type": "application/json"}});
      if (!moved.ok) { listErrors(errors, moved.body); return; }
    }
    location.href = "/models/" + encodeURIComponent(answer.body.model);
  });
}

const PAGES = {runs: pageRuns, run: pageRun, compare: pageCompare, workers: pageWorkers, submit: pageSubmit,
               sweep: pageSweep, sweeps: pageSweeps, datasets: pageDatasets, dataset: pageDataset, model: pageModel};
localizeTimes();
(PAGES[document.body.dataset.page] || (() => {}))();

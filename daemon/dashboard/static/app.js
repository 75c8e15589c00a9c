// The dashboard of llmtune-companion: plain DOM and SVG, no framework, nothing loaded from elsewhere.
// Every value from the daemon goes into the page as text (never as HTML).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const PAGES = ["overview", "approvals", "activity", "changes", "jobs", "connect", "settings"];
  const EVENT_TYPES = ["approval.pending", "approval.resolved", "tool.executed", "training.started",
    "training.completed", "training.failed", "model.deployed", "hosted.fallback", "hosted.recovered",
    "settings.reloaded"];
  const COLORS = ["#3b5bdb", "#e67700", "#2b8a3e", "#c2255c", "#7048e8", "#0b7285", "#5c940d"];
  const state = { page: null, overview: null, approvals: new Map(), decisions: [], jobEvents: [], loggedIn: false };

  // -- small helpers ----------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fill(target, rows, columns, emptyText) {
    const body = typeof target === "string" ? $(target) : target;
    body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colspan: columns }, emptyText))]));
  }

  const pad = (n) => String(n).padStart(2, "0");
  function clock(seconds) {
    const d = new Date(seconds * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function dateTime(seconds) {
    const d = new Date(seconds * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(seconds)}`;
  }
  function age(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} days`;
  }

  class ApiError extends Error {
    constructor(status, message, code) { super(message); this.status = status; this.code = code; }
  }

  async function api(path, options = {}) {
    const init = { credentials: "same-origin", headers: { Accept: "application/json" } };
    if (options.body !== undefined) {
      init.method = "POST";
      init.body = JSON.stringify(options.body);
      // The daemon refuses a change through the session without this header (no form can send it).
      init.headers["Content-Type"] = "application/json";
      init.headers["X-Companion-CSRF"] = "1";
    }
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) {
      const error = (data && data.error) || {};
      if (response.status === 401) showLogin();
      throw new ApiError(response.status, error.message || `HTTP ${response.status}`, error.code);
    }
    return data;
  }

  function notice(text, kind) {
    const box = $("notice");
    if (!text) { box.hidden = true; return; }
    box.textContent = text;
    box.className = "notice" + (kind ? " " + kind : "");
    box.hidden = false;
  }

  function report(error) { notice(error.message || String(error), "error"); }

  // -- navigation --------------------------------------------------------------------------------

  function showLogin() {
    state.loggedIn = false;
    for (const page of PAGES) $("page-" + page).hidden = true;
    $("login").hidden = false;
    $("live").textContent = "logged out";
    $("live").className = "live off";
  }

  function show(page) {
    if (!PAGES.includes(page)) page = "overview";
    state.page = page;
    for (const name of PAGES) $("page-" + name).hidden = name !== page;
    for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.page === page);
    notice("");
    LOADERS[page]().catch(report);
  }

  // -- Overview ------------------------------------------------------------------------------------

  function card(label, value, extra) {
    return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value), extra || null);
  }

  function keyText(ws) {
    if (!ws.has_key) return el("span", { class: "pill warn" }, "not set");
    const where = { secrets: "in secrets.json", env: "from LLMTUNE_API_KEY", keyring: "in the system keyring" }[ws.key_source] || ws.key_source;
    return el("span", {}, el("span", { class: "pill ok" }, "set"), " ", el("span", { class: "muted small" }, where));
  }

  async function loadOverview() {
    const data = await api("/companion/v1/dashboard/overview");
    state.overview = data;
    const config = data.config;
    $("ov-cards").replaceChildren(
      card("Running since", dateTime(data.started_at), el("div", { class: "muted small" }, `up ${age(data.uptime_seconds)}`)),
      card("Version", data.version),
      card("Settings", config.valid ? el("span", { class: "pill ok" }, "valid") : el("span", { class: "pill bad" }, "invalid"),
        el("div", { class: "muted small" }, config.valid ? config.file : config.error)),
      card("Pending approvals", String(data.pending_approvals)),
    );
    fill("ov-backends", data.backends.map((b) => el("tr", {},
      el("td", {}, b.name), el("td", {}, b.type), el("td", { class: "mono" }, b.url || "—"),
      el("td", {}, el("span", { class: "dot " + (b.reachable ? "ok" : b.reachable === false ? "bad" : "") }),
        b.reachable ? "reachable" : b.reachable === false ? "unreachable" : "not checked",
        b.error ? el("div", { class: "muted small" }, b.error) : null),
      el("td", {}, b.latency_ms === null ? "—" : `${b.latency_ms} ms`))), 5, "no backends");
    fill("ov-workspaces", data.workspaces.map((ws) => el("tr", {},
      el("td", {}, ws.name), el("td", {}, el("span", { class: "pill" }, ws.tools)), el("td", {}, keyText(ws)),
      el("td", { class: "mono" }, ws.root || "—"))), 4, "no workspaces");
    $("ov-models-note").textContent = `(as workspace ${data.workspace} sees them)`;
    fill("ov-models", data.models.map((m) => el("tr", {},
      el("td", { class: "mono" }, m.id), el("td", {}, m.backend),
      el("td", {}, m.backend === "echo" ? "built in" : age(m.cache_age_seconds), m.stale ? el("span", { class: "pill warn" }, " stale") : null))),
      3, "no models listed");
    updatePendingBadge(data.pending_approvals);
  }

  // -- Approvals -----------------------------------------------------------------------------------

  function updatePendingBadge(count) {
    const badge = $("pending-count");
    const n = count === undefined ? state.approvals.size : count;
    badge.textContent = String(n);
    badge.hidden = n === 0;
  }

  function renderDiff(text) {
    const box = el("div", { class: "diff" });
    const lines = text.split("\n");
    if (lines.length > 1 && lines[lines.length - 1] === "") lines.pop();
    for (const line of lines) {
      let kind = "";
      if (line.startsWith("+++") || line.startsWith("---")) kind = "meta";
      else if (line.startsWith("@@")) kind = "hunk";
      else if (line.startsWith("+")) kind = "add";
      else if (line.startsWith("-")) kind = "del";
      box.append(el("div", { class: kind }, line || " "));
    }
    return box;
  }

  function approvalTarget(item) {
    const args = item.arguments || {};
    return args.command || args.path || (item.preview && item.preview.path) || "";
  }

  function approvalCard(item) {
    const preview = item.preview || {};
    const reason = el("input", { type: "text", placeholder: "Reason (optional, told to the model)", "aria-label": "Reason" });
    const decide = (decision, remember) => async (event) => {
      const buttons = event.target.parentElement.querySelectorAll("button");
      buttons.forEach((b) => { b.disabled = true; });
      try {
        await api("/companion/v1/approvals/" + encodeURIComponent(item.id),
          { body: { decision, remember, reason: reason.value || null } });
      } catch (error) {
        buttons.forEach((b) => { b.disabled = false; });
        report(error);
      }
    };
    let body;
    if (preview.kind === "diff") body = renderDiff(preview.text || "");
    else if (preview.kind === "command") {
      body = el("div", { class: "diff" }, el("div", {}, "$ " + (preview.text || "")), el("div", { class: "meta" }, "in " + (preview.cwd || "")));
    } else body = el("div", { class: "muted small" }, `${preview.kind || "call"}: ${preview.text || ""}`);
    return el("article", { class: "approval", "data-id": item.id },
      el("header", {},
        el("span", { class: "tool" }, item.tool),
        el("span", { class: "target" }, approvalTarget(item)),
        el("span", { class: "pill" }, item.workspace),
        el("span", { class: "countdown", "data-expires": item.expires_at }, "")),
      body,
      el("div", { class: "actions" },
        el("button", { class: "primary", type: "button", onclick: decide("allow", false) }, "Allow"),
        el("button", { type: "button", onclick: decide("allow", true) }, "Allow and remember"),
        reason,
        el("button", { class: "danger", type: "button", onclick: decide("deny", false) }, "Deny")));
  }

  function renderApprovals() {
    const list = $("ap-list");
    const items = [...state.approvals.values()].sort((a, b) => a.created_at - b.created_at);
    list.replaceChildren(...(items.length ? items.map(approvalCard) : [el("div", { class: "empty-state" }, "Nothing is waiting for you.")]));
    fill("ap-recent", state.decisions.slice(0, 30).map((d) => el("tr", {},
      el("td", {}, clock(d.time)), el("td", {}, d.workspace), el("td", {}, d.tool),
      el("td", {}, el("span", { class: "pill " + (d.allow ? "ok" : "bad") }, d.allow ? (d.remember ? "allowed, remembered" : "allowed") : "denied")),
      el("td", {}, d.by), el("td", {}, d.reason || ""))), 6, "no decisions yet");
    tick();
    updatePendingBadge();
  }

  async function loadApprovals() {
    const data = await api("/companion/v1/approvals");
    state.approvals = new Map(data.approvals.map((a) => [a.id, a]));
    renderApprovals();
  }

  function tick() {
    const now = Date.now() / 1000;
    for (const node of document.querySelectorAll("[data-expires]")) {
      const left = Math.max(0, Math.round(Number(node.dataset.expires) - now));
      node.textContent = `${Math.floor(left / 60)}:${pad(left % 60)} left`;
    }
  }

  // -- Activity and its charts --------------------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }

  function legend(names) {
    return el("div", { class: "legend" }, names.map((name, i) => el("span", {}, el("i", { style: null, "data-color": i }), name)));
  }

  function colorLegend(box) {
    // Colours go in through the DOM (the style attribute would need 'unsafe-inline' in the CSP).
    for (const swatch of box.querySelectorAll("i[data-color]")) swatch.style.background = COLORS[Number(swatch.dataset.color) % COLORS.length];
  }

  function lineChart(target, series, labels, unit) {
    const W = 380, H = 150, L = 34, R = 8, T = 8, B = 20;
    const names = Object.keys(series);
    const values = names.flatMap((n) => series[n].filter((v) => v !== null));
    const max = niceMax(Math.max(0, ...values));
    const n = labels.length;
    const x = (i) => L + (n <= 1 ? 0 : (i * (W - L - R)) / (n - 1));
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": target.id });
    for (const f of [0, 0.5, 1]) {
      root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }));
      root.append(svg("text", { x: L - 4, y: y(max * f) + 3, "text-anchor": "end" }, `${+(max * f).toFixed(1)}${unit}`));
    }
    for (const i of [0, Math.floor((n - 1) / 2), n - 1]) {
      if (i >= 0) root.append(svg("text", { x: x(i), y: H - 6, "text-anchor": i === 0 ? "start" : i === n - 1 ? "end" : "middle" }, labels[i]));
    }
    names.forEach((name, k) => {
      let path = "";
      let pen = false;
      series[name].forEach((v, i) => {
        if (v === null) { pen = false; return; }
        path += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
      });
      const color = COLORS[k % COLORS.length];
      if (path) root.append(svg("path", { d: path, fill: "none", stroke: color, "stroke-width": 1.8, "stroke-linejoin": "round" }));
      series[name].forEach((v, i) => { if (v) root.append(svg("circle", { cx: x(i), cy: y(v), r: 2, fill: color })); });
    });
    const box = legend(names.length ? names : ["no requests in the last hour"]);
    target.replaceChildren(root, box);
    colorLegend(target);
  }

  function barChart(target, days) {
    const W = 380, H = 150, L = 36, R = 8, T = 8, B = 20;
    const totals = days.map((d) => d.prompt + d.completion);
    const max = niceMax(Math.max(0, ...totals));
    const slot = (W - L - R) / Math.max(1, days.length);
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "tokens per day" });
    for (const f of [0, 0.5, 1]) {
      root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }));
      root.append(svg("text", { x: L - 4, y: y(max * f) + 3, "text-anchor": "end" }, Math.round(max * f)));
    }
    days.forEach((d, i) => {
      const x0 = L + i * slot + slot * 0.15, w = slot * 0.7;
      root.append(svg("rect", { x: x0, y: y(d.prompt), width: w, height: y(0) - y(d.prompt), fill: COLORS[0] },
        svg("title", {}, `${d.day}: ${d.prompt} in`)));
      root.append(svg("rect", { x: x0, y: y(d.prompt + d.completion), width: w, height: y(0) - y(d.completion), fill: COLORS[1] },
        svg("title", {}, `${d.day}: ${d.completion} out`)));
      if (i === 0 || i === days.length - 1 || i === Math.floor(days.length / 2)) {
        root.append(svg("text", { x: x0 + w / 2, y: H - 6, "text-anchor": "middle" }, d.day.slice(5)));
      }
    });
    target.replaceChildren(root, legend(["prompt tokens", "completion tokens"]));
    colorLegend(target);
  }

  function minuteLabels(start, count) {
    const labels = [];
    for (let i = 0; i < count; i++) labels.push(clock(start + i * 60).slice(0, 5));
    return labels;
  }

  function setOptions(select, values) {
    const current = select.value;
    select.replaceChildren(el("option", { value: "" }, "all"), ...values.map((v) => el("option", { value: v }, v)));
    select.value = values.includes(current) ? current : "";
  }

  async function loadActivity() {
    const form = $("ac-filter");
    const query = new URLSearchParams();
    for (const name of ["workspace", "backend", "model", "status"]) {
      const value = form.elements[name].value.trim();
      if (value) query.set(name, value);
    }
    query.set("limit", "300");
    const [history, stats] = await Promise.all([api("/companion/v1/history?" + query), api("/companion/v1/history/stats")]);
    const labels = minuteLabels(stats.minute_start, stats.minutes);
    lineChart($("ch-rpm"), stats.requests_per_minute, labels, "");
    lineChart($("ch-latency"), stats.latency_ms, labels, "");
    barChart($("ch-tokens"), stats.tokens_per_day);
    if (!state.overview) state.overview = await api("/companion/v1/dashboard/overview");
    setOptions(form.elements.workspace, state.overview.workspaces.map((w) => w.name));
    setOptions(form.elements.backend, state.overview.backends.map((b) => b.name));
    fill("ac-rows", history.requests.map((r) => el("tr", {},
      el("td", {}, dateTime(r.time)), el("td", {}, r.workspace), el("td", { class: "mono small" }, `${r.method} ${r.path}`),
      el("td", { class: "mono" }, r.model || ""), el("td", {}, r.backend || "", r.fallback_from ? el("div", { class: "muted small" }, `fallback from ${r.fallback_from}`) : null),
      el("td", {}, el("span", { class: "pill " + (r.status < 400 ? "ok" : "bad") }, r.status)),
      el("td", {}, `${r.duration_ms.toFixed(1)} ms`),
      el("td", {}, r.prompt_tokens === null && r.completion_tokens === null ? "—" : `${r.prompt_tokens ?? "?"} / ${r.completion_tokens ?? "?"}`))),
      8, "no requests match");
  }

  // -- Changes ---------------------------------------------------------------------------------------

  async function loadChanges() {
    const [undo, audit] = await Promise.all([api("/companion/v1/undo?all=1"), api("/companion/v1/audit?limit=100")]);
    fill("ch-undo", undo.entries.map((e) => {
      const button = el("button", { type: "button", "data-undo": e.id, disabled: e.undone_at ? true : null }, e.undone_at ? "Undone" : "Undo");
      button.addEventListener("click", async () => {
        button.disabled = true;
        try {
          await api("/companion/v1/undo", { body: { id: e.id } });
          notice(`Restored ${e.path}.`);
          await loadChanges();
        } catch (error) {
          button.disabled = false;
          report(error);
        }
      });
      return el("tr", {}, el("td", {}, dateTime(e.time)), el("td", {}, e.workspace), el("td", {}, e.tool),
        el("td", { class: "mono" }, e.path), el("td", {}, e.existed ? `replaced ${e.size} bytes` : "created the file"), el("td", {}, button));
    }), 6, "no changes recorded");
    fill("ch-audit", audit.entries.map((a) => {
      const args = a.arguments || {};
      return el("tr", {}, el("td", {}, a.time ? dateTime(Date.parse(a.time) / 1000) : ""), el("td", {}, a.workspace), el("td", {}, a.tool),
        el("td", { class: "mono small" }, args.path || args.command || ""),
        el("td", {}, el("span", { class: "pill " + (a.decision === "allow" ? "ok" : "bad") }, a.decision)),
        el("td", {}, a.decided_by || ""), el("td", {}, a.ok ? "ok" : "failed"));
    }), 7, "no tool calls recorded");
  }

  // -- Jobs ------------------------------------------------------------------------------------------

  function renderJobEvents() {
    const list = $("jb-events");
    list.replaceChildren(...(state.jobEvents.length
      ? state.jobEvents.slice(0, 50).map((e) => el("li", {}, el("span", { class: "muted" }, clock(e.time) + " "),
        el("b", {}, e.type), " ", (e.data && (e.data.id || e.data.model)) || e.job_id || e.model || ""))
      : [el("li", { class: "muted" }, "no job events since this page opened")]));
  }

  async function loadJobs() {
    const data = await api("/companion/v1/jobs");
    fill("jb-rows", data.jobs.map((j) => el("tr", {},
      el("td", { class: "mono" }, j.id), el("td", {}, j.workspace),
      el("td", {}, el("span", { class: "pill " + (/fail|error|cancel/.test(j.status) ? "bad" : /complete|succeed|deploy/.test(j.status) ? "ok" : "") }, j.status),
        j.error ? el("div", { class: "muted small" }, j.error) : null),
      el("td", { class: "mono" }, j.fine_tuned_model || "—", j.deployed ? el("span", { class: "pill ok" }, " deployed") : null),
      el("td", {}, j.updated_at ? dateTime(j.updated_at) : "—"), el("td", {}, j.watching ? "yes" : "no"))), 6,
      "no fine-tune jobs watched (create one through the companion, or `llmtune-companion jobs add ID`)");
    renderJobEvents();
  }

  // -- Connect ---------------------------------------------------------------------------------------

  function continueSnippet(base) {
    return ["models:", "  - name: LLMTune (through the companion)", "    provider: openai",
      "    model: meta-llama/Llama-3.3-70B-Instruct", `    apiBase: ${base}`,
      "    apiKey: lct_...   # Copy token above, then paste it here", "    roles: [chat, edit, apply]"].join("\n");
  }

  async function loadConnect() {
    const base = location.origin + "/v1";
    $("cn-base").textContent = base;
    $("cn-continue").textContent = continueSnippet(base);
    if (!state.overview) state.overview = await api("/companion/v1/dashboard/overview");
    const select = $("cn-workspace");
    setOptions(select, state.overview.workspaces.map((w) => w.name));
    select.firstChild.remove();
    select.value = state.overview.workspaces[0] ? state.overview.workspaces[0].name : "";
  }

  async function copyToken() {
    const data = await api("/companion/v1/dashboard/token", { body: { workspace: $("cn-workspace").value } });
    try {
      await navigator.clipboard.writeText(data.token);
      $("cn-copied").textContent = `Copied the token of ${data.workspace}.`;
    } catch (_) {
      $("cn-copied").textContent = "The browser refused the clipboard; use `llmtune-companion token` instead.";
    }
  }

  // -- Settings --------------------------------------------------------------------------------------

  async function loadSettings() {
    const data = await api("/companion/v1/dashboard/overview");
    state.overview = data;
    $("st-file").textContent = `Settings file: ${data.config.file} (${data.config.valid ? "valid" : "invalid: " + data.config.error})`;
    $("st-workspaces").replaceChildren(...data.workspaces.map((ws) => {
      const mode = el("select", { "aria-label": `Tool mode of ${ws.name}` },
        ["passthrough", "gate", "execute"].map((m) => el("option", { value: m, selected: m === ws.tools ? true : null }, m)));
      const saveMode = el("button", { type: "button" }, "Save mode");
      saveMode.addEventListener("click", async () => {
        try {
          await api("/companion/v1/workspaces/" + encodeURIComponent(ws.name), { body: { tools: mode.value } });
          notice(`Tool mode of ${ws.name} is now ${mode.value}.`);
          await loadSettings();
        } catch (error) { report(error); }
      });
      const key = el("input", { type: "password", autocomplete: "off", placeholder: "sk_... (write only)", "aria-label": `LLMTune key of ${ws.name}` });
      const saveKey = el("button", { type: "button" }, "Save key");
      saveKey.addEventListener("click", async () => {
        try {
          await api("/companion/v1/workspaces/" + encodeURIComponent(ws.name) + "/key", { body: { api_key: key.value } });
          key.value = "";
          notice(`The LLMTune key of ${ws.name} is saved.`);
          await loadSettings();
        } catch (error) { report(error); }
      });
      return el("div", { class: "ws" }, el("h2", {}, ws.name),
        el("div", { class: "row" }, el("span", {}, "Tool mode"), mode, saveMode,
          ws.root ? el("span", { class: "muted small mono" }, ws.root) : el("span", { class: "muted small" }, "no tool root: gate and execute need one")),
        el("div", { class: "row" }, el("span", {}, "LLMTune key"), keyText(ws)),
        el("div", { class: "row" }, el("span", {}, ""), key, saveKey));
    }));
  }

  const LOADERS = { overview: loadOverview, approvals: loadApprovals, activity: loadActivity, changes: loadChanges,
    jobs: loadJobs, connect: loadConnect, settings: loadSettings };

  // -- live events -----------------------------------------------------------------------------------

  function onEvent(event) {
    if (event.type === "approval.pending") {
      state.approvals.set(event.approval.id, event.approval);
      if (state.page === "approvals") renderApprovals(); else updatePendingBadge();
    } else if (event.type === "approval.resolved") {
      state.approvals.delete(event.id);
      state.decisions.unshift(event);
      if (state.page === "approvals") renderApprovals(); else updatePendingBadge();
    } else if (event.type === "tool.executed") {
      if (state.page === "changes") loadChanges().catch(report);
    } else if (event.type.startsWith("training.") || event.type === "model.deployed") {
      state.jobEvents.unshift(event);
      if (state.page === "jobs") loadJobs().catch(report);
    } else if (event.type === "hosted.fallback") {
      notice(`The hosted API failed (${event.error || "error"}); requests fall back to ${event.fallback}.`);
    } else if (event.type === "settings.reloaded") {
      if (state.page === "overview" || state.page === "settings") LOADERS[state.page]().catch(report);
    }
  }

  function connectEvents() {
    const source = new EventSource("/companion/v1/events");
    source.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "live on"; });
    source.addEventListener("error", () => {
      $("live").textContent = "reconnecting";
      $("live").className = "live off";
      if (source.readyState === EventSource.CLOSED) setTimeout(start, 3000);
    });
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => {
        try { onEvent(JSON.parse(message.data)); } catch (error) { report(error); }
      });
    }
  }

  async function start() {
    let session;
    try {
      session = await (await fetch("/dashboard/session", { credentials: "same-origin" })).json();
    } catch (_) {
      session = { session: false };
    }
    if (!session.session) { showLogin(); return; }
    state.loggedIn = true;
    $("login").hidden = true;
    connectEvents();
    show(location.hash.slice(1));
  }

  window.addEventListener("hashchange", () => { if (state.loggedIn) show(location.hash.slice(1)); });
  document.addEventListener("DOMContentLoaded", () => {
    $("cn-copy").addEventListener("click", () => copyToken().catch(report));
    $("ac-filter").addEventListener("input", () => loadActivity().catch(report));
    $("ac-filter").addEventListener("submit", (event) => event.preventDefault());
    setInterval(tick, 1000);
    setInterval(() => { if (state.page === "activity") loadActivity().catch(report); }, 5000);
    start();
  });
})();

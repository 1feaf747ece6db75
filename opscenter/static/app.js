/* City brain operations center dashboard: plain JS, no external resources. */
"use strict";
(() => {
const API = "/api/v1";
const SVGNS = "http://www.w3.org/2000/svg";
const SEV_COLOUR = { I: "#e02020", II: "#ff8c00", III: "#f5c400", IV: "#1e6fff" };
const SEV_RADIUS = { I: 9, II: 8, III: 7, IV: 6 };
const T = {
  zh: { title: "城市运行指挥中心", subtitle: "一屏观全城", enterToken: "访问令牌", signIn: "登录", signOut: "退出",
    live: "实时", reports: "报告", emergencySwitch: "平急转换", red: "红", orange: "橙", yellow: "黄", blue: "蓝",
    incidentArea: "事件区域", alerts: "告警", incidents: "事件", statusOpen: "未办结", statusAll: "全部",
    st_new: "新", st_dispatched: "已派发", st_acknowledged: "已签收", st_resolved: "已办结", st_closed: "已关闭",
    st_cleared: "已消除", st_reopened: "重新打开", st_open: "处置中",
    allDistricts: "全部区", search: "搜索", alertsShown: "条告警",
    kOpen: "未办结告警", kBreach: "超时未签收", kEsc: "今日升级", kResp: "响应率", kSolve: "解决率", kSat: "满意率",
    ack: "签收", resolve: "办结", comment: "备注", escalate: "升级", reassign: "转派", close: "关闭", reopen: "重新打开",
    slaAck: "签收剩余", slaResolve: "办结剩余", slaBreached: "已超时", evidence: "证据", window: "窗口",
    statistic: "统计量", value: "数值", threshold: "阈值", baseline: "基线", detector: "检测器",
    departments: "责任部门", location: "位置", history: "处置记录", actionsLog: "操作", firstSeen: "首次", lastSeen: "最近",
    sent: "已发送", failed: "失败", commentPrompt: "备注内容", reassignPrompt: "转派给部门代码（如 water）",
    members: "关联告警", tickets: "12345工单", normal: "常态", emergency: "应急", modePrompt: "范围：city 或 district:<代码>",
    noSeries: "无传感器数据", pendingAck: "签收已发送", mode: "模式", severity: "等级", status: "状态" },
  en: { title: "City Operations Center", subtitle: "the whole city on one screen", enterToken: "Access token",
    signIn: "Sign in", signOut: "Sign out", live: "LIVE", reports: "Reports", emergencySwitch: "Emergency mode",
    red: "red", orange: "orange", yellow: "yellow", blue: "blue", incidentArea: "incident area", alerts: "Alerts",
    incidents: "Incidents", statusOpen: "Open", statusAll: "All", st_new: "new", st_dispatched: "dispatched",
    st_acknowledged: "acknowledged", st_resolved: "resolved", st_closed: "closed", st_cleared: "cleared",
    st_reopened: "reopened", st_open: "open", allDistricts: "All districts", search: "Search", alertsShown: "alerts",
    kOpen: "Open alerts", kBreach: "Ack SLA breached", kEsc: "Escalations today", kResp: "Response rate",
    kSolve: "Resolution rate", kSat: "Satisfaction", ack: "Acknowledge", resolve: "Resolve", comment: "Comment",
    escalate: "Escalate", reassign: "Reassign", close: "Close", reopen: "Reopen", slaAck: "ack in",
    slaResolve: "resolve in", slaBreached: "overdue", evidence: "Evidence", window: "Window", statistic: "Statistic",
    value: "Value", threshold: "Threshold", baseline: "Baseline", detector: "Detector", departments: "Departments",
    location: "Location", history: "History", actionsLog: "Actions", firstSeen: "First seen", lastSeen: "Last seen",
    sent: "sent", failed: "failed", commentPrompt: "Comment", reassignPrompt: "Reassign to department code (e.g. water)",
    members: "Member alerts", tickets: "12345 tickets", normal: "Normal", emergency: "EMERGENCY",
    modePrompt: "Scope: city or district:<code>", noSeries: "no sensor data", pendingAck: "ack sent", mode: "Mode",
    severity: "Severity", status: "Status" },
};
let lang = localStorage.getItem("cb.lang") || "zh";
const t = (k) => (T[lang][k] !== undefined ? T[lang][k] : k);
const $ = (s) => document.querySelector(s);
const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

let token = null;
const hash = new URLSearchParams(location.hash.slice(1));
if (hash.get("token")) { sessionStorage.setItem("cb.token", hash.get("token")); history.replaceState(null, "", location.pathname); }
token = sessionStorage.getItem("cb.token");

const state = { me: null, geo: null, alerts: new Map(), incidents: new Map(), pending: new Map(), selected: null, mode: null };

async function api(path, opts = {}) {
  const r = await fetch(API + path, { ...opts, headers: { Authorization: "Bearer " + token, "Content-Type": "application/json", ...(opts.headers || {}) } });
  if (r.status === 401) { showLogin(t("enterToken") + ": 401"); throw new Error("401"); }
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((body && body.reason) || r.status);
  return body;
}

function applyLang() {
  document.documentElement.lang = lang === "zh" ? "zh" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
  $("#lang").textContent = lang === "zh" ? "EN" : "中文";
  renderMode(); renderList(); renderKpis(state.kpis); renderIncidents();
  if (state.selected) openDetail(state.selected);
}

function showLogin(msg) { $("#app").classList.add("hidden"); $("#login").classList.remove("hidden"); $("#login-error").textContent = msg || ""; }

// ---------------------------------------------------------------- map
function project(lat, lon) {
  const p = state.geo.projection;
  return [(lon - p.lon0) * p.k * p.scale, (p.lat0 - lat) * p.scale];
}
function el(name, attrs, parent) {
  const e = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
function drawMap() {
  const g = state.geo, svg = $("#map");
  svg.setAttribute("viewBox", `0 0 ${g.width} ${g.height}`);
  const shades = ["#10263b", "#132c44", "#0f2235", "#162f48"];
  const di = {}; g.districts.forEach((d, i) => { di[d.name] = i; });
  const cells = $("#cells");
  g.streets.forEach((s) => {
    const p = el("polygon", { points: s.cell, fill: shades[(di[s.district] || 0) % shades.length] }, cells);
    el("title", {}, p).textContent = `${s.district} ${s.name}`;
  });
  const b = $("#borders");
  g.borders.forEach((l) => el("line", { x1: l[0], y1: l[1], x2: l[2], y2: l[3] }, b));
  const lab = $("#labels");
  g.districts.forEach((d) => { el("text", { x: d.x, y: d.y, "data-district": d.name }, lab).textContent = d.name; });
  const sel = $("#f-district");
  g.districts.forEach((d) => { const o = document.createElement("option"); o.value = d.name; o.textContent = d.name; sel.appendChild(o); });
}
function updateLabels() {
  document.querySelectorAll("#labels text").forEach((e) => {
    const d = state.geo.districts.find((x) => x.name === e.dataset.district);
    e.textContent = lang === "zh" ? d.name : d.name_en;
  });
}
function drawMarker(a, fresh) {
  const id = "marker-" + a.alert_id;
  let m = document.getElementById(id);
  const [x, y] = project(a.location.lat, a.location.lon);
  const visible = isOpen(a) && passes(a);
  if (!visible) { if (m) m.remove(); return; }
  if (!m) { m = el("circle", { id, class: "marker" }, $("#markers")); m.addEventListener("click", () => openDetail(a.alert_id)); }
  m.setAttribute("cx", x.toFixed(1)); m.setAttribute("cy", y.toFixed(1));
  m.setAttribute("r", SEV_RADIUS[a.severity] || 6); m.setAttribute("fill", SEV_COLOUR[a.severity] || "#999");
  m.setAttribute("data-severity", a.severity); m.setAttribute("data-colour", a.colour || "");
  if (fresh) { m.classList.remove("fresh"); void m.getBBox; m.classList.add("fresh"); }
  let tt = m.querySelector("title"); if (!tt) tt = el("title", {}, m);
  tt.textContent = `${a.severity} ${a.title} — ${a.location.district}${a.location.street || ""}`;
}
function drawIncident(inc) {
  const id = "incident-" + inc.incident_id;
  let c = document.getElementById(id);
  if (inc.status !== "open") { if (c) c.remove(); return; }
  const [x, y] = project(inc.location.lat, inc.location.lon);
  if (!c) { c = el("circle", { id, class: "incident-area" }, $("#incident-layer")); c.addEventListener("click", () => openIncident(inc.incident_id)); }
  const n = (inc.alert_ids || []).length + (inc.ticket_ids || []).length;
  c.setAttribute("cx", x.toFixed(1)); c.setAttribute("cy", y.toFixed(1));
  c.setAttribute("r", (state.geo.km * (1.5 + Math.min(n, 20) * 0.3)).toFixed(1));
}

// ---------------------------------------------------------------- alerts list
const OPEN = new Set(["new", "dispatched", "acknowledged", "reopened"]);
function isOpen(a) { return OPEN.has(a.status); }
function passes(a) {
  const sev = [...document.querySelectorAll(".f-sev:checked")].map((x) => x.value);
  if (!sev.includes(a.severity)) return false;
  const st = $("#f-status").value;
  if (st === "open" && !isOpen(a)) return false;
  if (st && st !== "open" && a.status !== st) return false;
  const d = $("#f-district").value; if (d && a.location.district !== d) return false;
  const q = $("#f-text").value.trim().toLowerCase();
  if (q && !(`${a.title} ${a.rule} ${a.subject} ${a.location.street || ""} ${(a.departments || []).join(" ")}`.toLowerCase().includes(q))) return false;
  return true;
}
function fmtDur(s) {
  const neg = s < 0; s = Math.abs(Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (neg ? "-" : "") + (h ? `${h}:${String(m).padStart(2, "0")}` : `${m}`) + ":" + String(sec).padStart(2, "0");
}
function slaText(a) {
  const s = a.sla; if (!s || !s.due) return { text: t("st_" + a.status), cls: "done" };
  const rem = (new Date(s.due) - Date.now()) / 1000;
  if (rem < 0) return { text: `${t("slaBreached")} ${fmtDur(-rem)}`, cls: "breached" };
  return { text: `${s.clock === "ack" ? t("slaAck") : t("slaResolve")} ${fmtDur(rem)}`, cls: "ok" };
}
function renderList() {
  const ul = $("#alert-list"); if (!ul) return;
  const items = [...state.alerts.values()].filter(passes).sort((a, b) => (b.severity < a.severity ? -1 : 0) || new Date(b.last_seen) - new Date(a.last_seen));
  items.sort((a, b) => sevRank(b) - sevRank(a) || new Date(b.last_seen) - new Date(a.last_seen));
  $("#alert-count").textContent = items.length;
  ul.replaceChildren(...items.slice(0, 300).map((a) => {
    const li = document.createElement("li");
    li.dataset.alertId = a.alert_id; if (state.selected === a.alert_id) li.classList.add("selected");
    const s = slaText(a);
    const pend = state.pending.get(a.alert_id);
    li.innerHTML = `<span class="sev sev-${esc(a.severity)}">${esc(a.severity)}</span><span class="t">${esc(a.title)}</span>` +
      `<span class="sla ${s.cls}" data-sla="${esc(a.alert_id)}">${esc(s.text)}</span>` +
      `<span class="m">${esc(a.location.district)}${esc(a.location.street || "")} · ${esc((a.departments || []).join(", "))} · ` +
      `<span class="status ${pend ? "pending" : ""}" data-status="${esc(a.status)}">${esc(pend ? t("pendingAck") : t("st_" + a.status))}</span></span>`;
    li.addEventListener("click", () => openDetail(a.alert_id));
    return li;
  }));
}
function sevRank(a) { return { I: 4, II: 3, III: 2, IV: 1 }[a.severity] || 0; }
function tickClocks() {
  $("#clock").textContent = new Date().toLocaleString(lang === "zh" ? "zh-CN" : "en-GB", { hour12: false });
  document.querySelectorAll("[data-sla]").forEach((e) => {
    const a = state.alerts.get(e.dataset.sla); if (!a) return;
    const s = slaText(a); e.textContent = s.text; e.className = "sla " + s.cls;
  });
}
function upsertAlert(a, fresh) {
  state.alerts.set(a.alert_id, a);
  if (a.status !== "new" && a.status !== "dispatched") state.pending.delete(a.alert_id);
  drawMarker(a, fresh);
}

// ---------------------------------------------------------------- KPIs
function pct(v) { return v == null ? "—" : (v * 100).toFixed(1) + "%"; }
function renderKpis(k) {
  const box = $("#kpis"); if (!k || !box) return;
  const sum = (rows, f) => rows.reduce((n, r) => n + (r[f] || 0), 0);
  const rows = k.three_rates.by_department;
  const n = sum(rows, "tickets"), rated = sum(rows, "rated");
  const tiles = [
    ["sev-I", "I " + t("red"), k.open_by_severity.I], ["sev-II", "II " + t("orange"), k.open_by_severity.II],
    ["sev-III", "III " + t("yellow"), k.open_by_severity.III], ["sev-IV", "IV " + t("blue"), k.open_by_severity.IV],
    [k.sla_breaches.open_unacknowledged ? "warn" : "", t("kBreach"), k.sla_breaches.open_unacknowledged],
    ["", t("kEsc"), k.escalations],
    ["", `${t("kResp")} · ${t("kSolve")}`, n ? `${pct(sum(rows, "responded") / n)} · ${pct(sum(rows, "resolved") / n)}` : "—"],
    ["", t("kSat"), rated ? pct(sum(rows, "satisfied") / rated) : "—"],
  ];
  box.innerHTML = tiles.map(([c, l, v]) => `<div class="kpi ${c}"><div class="v">${esc(v)}</div><div class="l">${esc(l)}</div></div>`).join("");
}
async function loadKpis() { try { state.kpis = await api("/kpis"); renderKpis(state.kpis); } catch (e) { console.warn(e); } }

// ---------------------------------------------------------------- incidents
function renderIncidents() {
  const ul = $("#incident-list"); if (!ul) return;
  const items = [...state.incidents.values()].sort((a, b) => new Date(b.last_seen) - new Date(a.last_seen));
  ul.replaceChildren(...items.map((i) => {
    const li = document.createElement("li"); li.dataset.incidentId = i.incident_id;
    li.innerHTML = `<span class="sev sev-${esc(i.severity)}">${esc(i.severity)}</span><span class="t">${esc(i.kind)} · ${esc(i.location.district)}${esc(i.location.street || "")}</span>` +
      `<span class="status">${esc(t("st_" + i.status))}</span><span class="m">${(i.alert_ids || []).length} ${esc(t("alerts"))} · ${(i.ticket_ids || []).length} ${esc(t("tickets"))}</span>`;
    li.addEventListener("click", () => openIncident(i.incident_id));
    return li;
  }));
}
async function openIncident(id) {
  const inc = await api("/incidents/" + encodeURIComponent(id));
  const body = $("#detail-body");
  body.innerHTML = `<h2><span class="sev sev-${esc(inc.severity)}">${esc(inc.severity)}</span> ${esc(inc.kind)} · ${esc(inc.location.district)}${esc(inc.location.street || "")}</h2>` +
    `<p>${esc(t("st_" + inc.status))} · ${esc(fmtTime(inc.first_seen))} — ${esc(fmtTime(inc.last_seen))}</p>` +
    `<h3>${esc(t("members"))}</h3><table class="simple">${inc.alerts.map((a) => `<tr data-alert-id="${esc(a.alert_id)}"><td><span class="sev sev-${esc(a.severity)}">${esc(a.severity)}</span></td><td><a href="#" data-open="${esc(a.alert_id)}">${esc(a.title)}</a></td><td>${esc(t("st_" + a.status))}</td></tr>`).join("")}</table>` +
    `<h3>${esc(t("tickets"))}</h3><table class="simple">${inc.tickets.map((x) => `<tr><td>${esc(x.ticket_id)}</td><td>${esc(x.category)}</td><td>${esc(x.status)}</td><td>${esc(x.description)}</td></tr>`).join("")}</table>`;
  body.querySelectorAll("[data-open]").forEach((a) => a.addEventListener("click", (e) => { e.preventDefault(); openDetail(a.dataset.open); }));
  $("#detail").classList.remove("hidden");
}

// ---------------------------------------------------------------- detail
function fmtTime(s) { return s ? new Date(s).toLocaleString(lang === "zh" ? "zh-CN" : "en-GB", { hour12: false }) : "—"; }
function chart(series, ev) {
  const pts = series.points || [];
  if (!pts.length) return `<p class="muted">${esc(t("noSeries"))}</p>`;
  const W = 800, H = 240, L = 50, R = 10, TOP = 10, B = 28;
  const t0 = new Date(series.since).getTime(), t1 = new Date(series.until).getTime();
  const vals = pts.map((p) => p.value).concat([series.threshold, series.baseline].filter((v) => v != null));
  let lo = Math.min(...vals), hi = Math.max(...vals); if (hi === lo) { hi += 1; lo -= 1; } const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const X = (ts) => L + ((new Date(ts).getTime() - t0) / (t1 - t0)) * (W - L - R);
  const Y = (v) => TOP + (1 - (v - lo) / (hi - lo)) * (H - TOP - B);
  let s = `<svg class="chart" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" xmlns="${SVGNS}">`;
  s += `<rect class="win" x="${X(ev.window_start)}" y="${TOP}" width="${Math.max(2, X(ev.window_end) - X(ev.window_start))}" height="${H - TOP - B}"/>`;
  s += `<polyline class="line" points="${pts.map((p) => `${X(p.ts).toFixed(1)},${Y(p.value).toFixed(1)}`).join(" ")}"/>`;
  if (series.threshold != null) s += `<line class="thr" x1="${L}" x2="${W - R}" y1="${Y(series.threshold)}" y2="${Y(series.threshold)}"/><text x="${W - R - 4}" y="${Y(series.threshold) - 4}" text-anchor="end">${esc(t("threshold"))} ${series.threshold}</text>`;
  if (series.baseline != null) s += `<line class="base" x1="${L}" x2="${W - R}" y1="${Y(series.baseline)}" y2="${Y(series.baseline)}"/><text x="${W - R - 4}" y="${Y(series.baseline) - 4}" text-anchor="end">${esc(t("baseline"))} ${series.baseline}</text>`;
  for (let i = 0; i <= 4; i++) { const v = lo + ((hi - lo) * i) / 4; s += `<text x="${L - 6}" y="${Y(v) + 4}" text-anchor="end">${v.toFixed(v > 100 ? 0 : 1)}</text>`; }
  for (let i = 0; i <= 4; i++) { const ts = t0 + ((t1 - t0) * i) / 4; s += `<text x="${X(ts)}" y="${H - 8}" text-anchor="middle">${new Date(ts).toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", { hour12: false, hour: "2-digit", minute: "2-digit" })}</text>`; }
  return s + "</svg>";
}
async function openDetail(id) {
  state.selected = id;
  document.querySelectorAll("#alert-list li").forEach((li) => li.classList.toggle("selected", li.dataset.alertId === id));
  let a;
  try { a = await api("/alerts/" + encodeURIComponent(id)); } catch (e) { toast(String(e.message || e), true); return; }
  const ev = a.evidence, s = slaText(a), canAct = state.me && state.me.role !== "engineer";
  const acts = canAct ? ["ack", "resolve", "comment", "escalate", "reassign"].concat(state.me.role === "ops" ? ["close", "reopen"] : []) : [];
  const pend = state.pending.get(id);
  $("#detail-body").innerHTML =
    `<h2><span class="sev sev-${esc(a.severity)}">${esc(a.severity)} ${esc(t(a.colour))}</span> ${esc(a.title)}</h2>` +
    `<p><span class="status ${pend ? "pending" : ""}" id="detail-status">${esc(pend ? t("pendingAck") : t("st_" + a.status))}</span> · <span class="sla ${s.cls}" data-sla="${esc(a.alert_id)}">${esc(s.text)}</span> · ${esc(a.alert_id)} r${a.revision}</p>` +
    `<div class="actions">${acts.map((k) => `<button data-action="${k}" class="${k === "ack" ? "primary" : ""}">${esc(t(k))}</button>`).join("")}</div>` +
    chart(a.series, ev) +
    `<h3>${esc(t("evidence"))}</h3><dl>` +
    `<dt>${esc(t("detector"))}</dt><dd>${esc(ev.detector)} v${esc(ev.detector_version)} · ${esc(a.rule)}</dd>` +
    `<dt>${esc(t("statistic"))}</dt><dd>${esc(ev.statistic)}</dd>` +
    `<dt>${esc(t("value"))}</dt><dd>${esc(ev.value)}${ev.threshold != null ? ` (${esc(t("threshold"))} ${esc(ev.threshold)})` : ""}</dd>` +
    `<dt>${esc(t("window"))}</dt><dd>${esc(fmtTime(ev.window_start))} — ${esc(fmtTime(ev.window_end))}</dd>` +
    `<dt>${esc(t("location"))}</dt><dd>${esc(a.location.district)} ${esc(a.location.street || "")} ${esc(a.location.grid || "")} (${a.location.lat}, ${a.location.lon})</dd>` +
    `<dt>${esc(t("departments"))}</dt><dd>${esc(a.departments.join(", "))}</dd>` +
    `<dt>${esc(t("firstSeen"))}</dt><dd>${esc(fmtTime(a.first_seen))}</dd><dt>${esc(t("lastSeen"))}</dt><dd>${esc(fmtTime(a.last_seen))} ×${a.count}</dd>` +
    `<dt>details</dt><dd><code>${esc(JSON.stringify(ev.details))}</code></dd></dl>` +
    `<h3>${esc(t("actionsLog"))}</h3><table class="simple" id="detail-actions">${a.actions.map(actionRow).join("")}</table>` +
    `<h3>${esc(t("history"))}</h3><table class="simple">${a.history.map((h) => `<tr><td>r${h.revision}</td><td>${esc(t("st_" + h.status))}</td><td>${esc(h.severity)}</td><td>${esc(h.departments.join(", "))}</td><td>${esc(fmtTime(h.recorded_at))}</td></tr>`).join("")}</table>`;
  document.querySelectorAll("#detail-body [data-action]").forEach((b) => b.addEventListener("click", () => act(a.alert_id, b.dataset.action)));
  $("#detail").classList.remove("hidden");
}
function actionRow(x) { return `<tr><td>${esc(fmtTime(x.ts))}</td><td>${esc(t(x.action))}</td><td>${esc(x.actor)} (${esc(x.actor_department || "")})</td><td>${esc(x.comment || x.target_department || "")}</td></tr>`; }
async function act(id, kind) {
  const body = { action: kind };
  if (kind === "comment" || kind === "escalate" || kind === "resolve") { const c = prompt(t("commentPrompt")); if (c === null) return; if (c) body.comment = c; }
  if (kind === "comment" && !body.comment) return;
  if (kind === "reassign") { const d = prompt(t("reassignPrompt")); if (!d) return; body.target_department = d.trim(); }
  try {
    await api(`/alerts/${encodeURIComponent(id)}/actions`, { method: "POST", body: JSON.stringify(body) });
    if (kind === "ack") { state.pending.set(id, kind); const s = $("#detail-status"); if (s) { s.textContent = t("pendingAck"); s.classList.add("pending"); } renderList(); }
    toast(`${t(kind)}: ${t("sent")}`);
  } catch (e) { toast(`${t(kind)}: ${t("failed")} — ${e.message || e}`, true); }
}
function toast(msg, err) { const x = $("#toast"); x.textContent = msg; x.className = "toast" + (err ? " err" : ""); clearTimeout(toast.h); toast.h = setTimeout(() => x.classList.add("hidden"), 4000); }

// ---------------------------------------------------------------- mode
function renderMode() {
  const m = state.mode, e = $("#mode"); if (!e) return;
  const city = m && m.city && m.city.mode === "emergency";
  const ds = m ? Object.keys(m.districts || {}) : [];
  e.className = "mode " + (city || ds.length ? "emergency" : "normal");
  e.textContent = `${t("mode")}: ${city ? t("emergency") : ds.length ? `${t("emergency")} (${ds.join(", ")})` : t("normal")}`;
}
async function switchMode() {
  const scope = prompt(t("modePrompt"), "city"); if (!scope) return;
  const cur = state.mode && ((scope === "city" && state.mode.city.mode === "emergency") || (state.mode.districts || {})[scope.split(":")[1]]);
  try { await api("/mode", { method: "POST", body: JSON.stringify({ scope, mode: cur ? "normal" : "emergency" }) }); toast(t("sent")); }
  catch (e) { toast(String(e.message || e), true); }
}

// ---------------------------------------------------------------- live feed (SSE over fetch, so the token stays in a header)
async function feed() {
  for (;;) {
    try {
      const r = await fetch(API + "/feed", { headers: { Authorization: "Bearer " + token, Accept: "text/event-stream" } });
      if (r.status === 401) { showLogin("401"); return; }
      if (!r.ok) throw new Error(r.status);
      $("#live").className = "live on";
      const reader = r.body.getReader(), dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read(); if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) { const chunk = buf.slice(0, i); buf = buf.slice(i + 2); onEvent(chunk); }
      }
    } catch (e) { console.warn("feed", e); }
    $("#live").className = "live off";
    await new Promise((res) => setTimeout(res, 2000));
  }
}
function onEvent(chunk) {
  let kind = "message", data = "";
  for (const line of chunk.split("\n")) {
    if (line.startsWith("event: ")) kind = line.slice(7); else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (!data) return;
  const d = JSON.parse(data);
  if (kind === "hello") { state.mode = d.mode; renderMode(); }
  else if (kind === "alert") { upsertAlert(d, true); renderList(); if (state.selected === d.alert_id && !$("#detail").classList.contains("hidden")) openDetail(d.alert_id); scheduleKpis(); }
  else if (kind === "incident") { state.incidents.set(d.incident_id, d); drawIncident(d); renderIncidents(); }
  else if (kind === "action") {
    const tb = $("#detail-actions");
    if (tb && state.selected === d.alert_id) tb.insertAdjacentHTML("beforeend", actionRow(d));
    window.__lastAction = d;
  } else if (kind === "mode") { state.mode = d.state; renderMode(); }
}
let kpiTimer = null;
function scheduleKpis() { if (!kpiTimer) kpiTimer = setTimeout(() => { kpiTimer = null; loadKpis(); }, 3000); }

// ---------------------------------------------------------------- start
async function start() {
  if (!token) { showLogin(); return; }
  try { state.me = await api("/me"); } catch (e) { if (String(e.message) !== "401") showLogin(String(e.message || e)); return; }
  $("#login").classList.add("hidden"); $("#app").classList.remove("hidden");
  $("#who").textContent = `${state.me.name} · ${state.me.role}${state.me.department ? " · " + state.me.department : ""}`;
  if (state.me.role === "ops" || state.me.department === "ema") $("#emergency-btn").classList.remove("hidden");
  state.geo = await api("/geo"); drawMap(); updateLabels();
  feed();
  const [alerts, incs, mode] = await Promise.all([api("/alerts?open=true&limit=500"), api("/incidents?status=open&limit=200"), api("/mode")]);
  for (const a of alerts.items.reverse()) if (!state.alerts.has(a.alert_id)) upsertAlert(a, false);
  for (const i of incs.items) { state.incidents.set(i.incident_id, i); drawIncident(i); }
  state.mode = mode; renderMode(); renderList(); renderIncidents(); loadKpis();
  setInterval(tickClocks, 1000); setInterval(loadKpis, 30000);
  document.body.dataset.ready = "1";
}
$("#login-form").addEventListener("submit", (e) => { e.preventDefault(); token = $("#token-input").value.trim(); sessionStorage.setItem("cb.token", token); start(); });
$("#logout").addEventListener("click", () => { sessionStorage.removeItem("cb.token"); location.reload(); });
$("#lang").addEventListener("click", () => { lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("cb.lang", lang); applyLang(); updateLabels(); });
$("#detail-close").addEventListener("click", () => { $("#detail").classList.add("hidden"); state.selected = null; });
$("#detail").addEventListener("click", (e) => { if (e.target.id === "detail") { $("#detail").classList.add("hidden"); state.selected = null; } });
$("#emergency-btn").addEventListener("click", switchMode);
$("#report-link").addEventListener("click", async (e) => {
  e.preventDefault();
  const r = await fetch(API + "/reports/daily?format=html", { headers: { Authorization: "Bearer " + token } });
  const w = window.open("", "_blank"); if (w) { w.document.write(await r.text()); w.document.close(); }
});
document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll(".tab").forEach((x) => x.classList.toggle("active", x === b));
  $("#tab-alerts").classList.toggle("hidden", b.dataset.tab !== "alerts"); $("#tab-incidents").classList.toggle("hidden", b.dataset.tab !== "incidents");
}));
[...document.querySelectorAll(".f-sev"), $("#f-status"), $("#f-district")].forEach((x) => x.addEventListener("change", () => { renderList(); state.alerts.forEach((a) => drawMarker(a, false)); }));
$("#f-text").addEventListener("input", () => { renderList(); state.alerts.forEach((a) => drawMarker(a, false)); });
applyLang();
start();
})();

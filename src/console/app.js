// The operator console: plain JavaScript over the documented admin API (/api), no build
// step, no network beyond the gateway. The admin token lives in sessionStorage only.
"use strict";

const T = {
  en: {
    title: "xiaozhi-gateway", token: "Admin token", signin: "Sign in", signout: "Sign out",
    devices: "Devices", live: "Live sessions", conversations: "Conversations", search: "Search",
    stats: "Statistics", export: "Export", status: "Status", device: "Device", online: "online",
    offline: "offline", board: "Board", firmware: "Firmware", first_seen: "First seen",
    last_seen: "Last seen", sessions: "Sessions", turns: "Turns", audio_in: "Audio in (s)",
    audio_out: "Audio out (s)", more: "More", started: "Started", status_col: "Status",
    messages: "Messages", play: "Play", delete: "Delete", download: "Download .zip",
    confirm_delete: "Delete this conversation, its messages and its clips?",
    confirm_forget: "Forget this device: every conversation, clip and prompt?",
    prompt: "System prompt", save: "Save", saved: "Saved", activate: "Approve activation",
    code: "Code the device shows", forget: "Forget device", query: "Text", role: "Role",
    any: "any", from: "From", to: "To", go: "Go", no_results: "Nothing found",
    format: "Format", bad_token: "That token was not accepted.", disabled: "The admin API is disabled on this gateway (XIAOZHI_ADMIN_TOKEN).",
    nothing_live: "No device is connected.", seen_since: "Seen since", conversation: "Conversation",
    active_devices: "Active devices", speech_in: "Speech in (s)", speech_out: "Speech out (s)",
    clips: "Clips", bytes: "Bytes", failed_uploads: "Failed uploads", component: "Component", state: "State",
    ready: "Ready", not_ready: "Not ready", mode: "Mode", text_mode: "text", semantic_mode: "meaning", time: "Time", score: "Score",
  },
  "zh-CN": {
    title: "小智网关", token: "管理令牌", signin: "登录", signout: "退出",
    devices: "设备", live: "在线会话", conversations: "对话", search: "搜索",
    stats: "统计", export: "导出", status: "状态", device: "设备", online: "在线",
    offline: "离线", board: "板型", firmware: "固件", first_seen: "首次出现",
    last_seen: "最近出现", sessions: "会话", turns: "轮次", audio_in: "输入音频（秒）",
    audio_out: "输出音频（秒）", more: "更多", started: "开始时间", status_col: "状态",
    messages: "消息", play: "播放", delete: "删除", download: "下载 .zip",
    confirm_delete: "删除这个对话及其消息和录音？",
    confirm_forget: "忘记这个设备：删除所有对话、录音和提示词？",
    prompt: "系统提示词", save: "保存", saved: "已保存", activate: "批准激活",
    code: "设备显示的验证码", forget: "忘记设备", query: "文字", role: "角色",
    any: "全部", from: "从", to: "到", go: "查询", no_results: "没有找到",
    format: "格式", bad_token: "令牌不正确。", disabled: "此网关未启用管理接口（XIAOZHI_ADMIN_TOKEN）。",
    nothing_live: "没有在线设备。", seen_since: "出现于此后", conversation: "对话",
    active_devices: "活跃设备", speech_in: "输入语音（秒）", speech_out: "输出语音（秒）",
    clips: "录音", bytes: "字节", failed_uploads: "上传失败", component: "组件", state: "状态",
    ready: "就绪", not_ready: "未就绪", mode: "方式", text_mode: "文字", semantic_mode: "语义", time: "时间", score: "相似度",
  },
};
const LANG = (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh-CN" : "en";
const t = (k) => T[LANG][k] || T.en[k] || k;
document.documentElement.lang = LANG;

let token = sessionStorage.getItem("xiaozhi-admin-token") || "";
const $ = (sel) => document.querySelector(sel);
const view = () => $("#view");

/// An element with attributes and children (strings become text, never HTML).
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token }, opts.headers || {});
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    if (r.status === 401) signOut(t("bad_token"));
    throw new ApiError(r.status, msg);
  }
  return r;
}
const getJson = async (path) => (await api(path)).json();
const when = (iso) => (iso ? new Date(iso).toLocaleString(LANG) : "");
const qs = (o) => new URLSearchParams(Object.entries(o).filter(([, v]) => v !== "" && v != null)).toString();

/// Downloads what an authenticated request returns, under `name`.
async function download(path, name) {
  const blob = await (await api(path)).blob();
  const a = h("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  a.remove();
}

/// Plays a clip: presigned URLs directly, the gateway's own /api/audio through the token.
async function play(url, where) {
  let src = url;
  if (url.startsWith("/api/")) src = URL.createObjectURL(await (await api(url)).blob());
  const audio = h("audio", { controls: true, src, "data-testid": "clip-audio" });
  where.replaceChildren(audio);
  await audio.play().catch(() => { /* autoplay may be refused; controls remain */ });
}

function playButton(m) {
  if (!m.audio_url) return "";
  const slot = h("span");
  const b = h("button", { type: "button", "data-testid": "play", onclick: () => play(m.audio_url, slot).catch(showError) }, "▶ " + t("play"));
  slot.append(b);
  return slot;
}

function showError(e) { $("#error").textContent = e && e.message ? e.message : String(e); }

function table(headers, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, t(x))))), h("tbody", {}, rows));
}

const views = {
  async devices(_, more) {
    const form = h("form", { class: "filters" },
      h("label", {}, t("seen_since"), h("input", { type: "date", name: "seen_since" })),
      h("button", { type: "submit" }, t("go")));
    const body = h("div");
    const load = async (cursor, append) => {
      const page = await getJson("/api/devices?" + qs({ seen_since: form.seen_since.value, cursor, limit: 50 }));
      const rows = page.items.map((d) => h("tr", { "data-device": d.device_id },
        h("td", {}, h("a", { href: "#device/" + encodeURIComponent(d.device_id) }, d.device_id)),
        h("td", {}, h("span", { class: d.online ? "online" : "offline" }, t(d.online ? "online" : "offline"))),
        h("td", {}, d.board || ""), h("td", {}, d.firmware_version || ""), h("td", {}, when(d.last_seen)),
        h("td", {}, d.sessions), h("td", {}, d.turns), h("td", {}, d.audio_in_secs.toFixed(1)), h("td", {}, d.audio_out_secs.toFixed(1))));
      if (!append) body.replaceChildren(table(["device", "status_col", "board", "firmware", "last_seen", "sessions", "turns", "audio_in", "audio_out"], rows));
      else body.querySelector("tbody").append(...rows);
      body.querySelector("button.more")?.remove();
      if (page.next_cursor) body.append(h("button", { class: "more", type: "button", onclick: () => load(page.next_cursor, true).catch(showError) }, t("more")));
    };
    form.addEventListener("submit", (e) => { e.preventDefault(); load().catch(showError); });
    view().replaceChildren(h("h2", {}, t("devices")), form, body);
    await load();
  },

  async device(id) {
    const d = await getJson("/api/devices/" + encodeURIComponent(id));
    const prompt = h("textarea", { id: "prompt" });
    try { prompt.value = (await getJson(`/api/devices/${encodeURIComponent(id)}/system-prompt`)).prompt; } catch (e) { if (e.status !== 404) throw e; }
    const note = h("span", { class: "muted" });
    const code = h("input", { id: "activation-code", inputmode: "numeric" });
    const convs = await getJson("/api/conversations?" + qs({ device_id: id, limit: 100 }));
    view().replaceChildren(
      h("h2", {}, t("device"), " ", d.device_id, " ", h("span", { class: d.online ? "online" : "offline" }, t(d.online ? "online" : "offline"))),
      h("dl", {}, h("dt", {}, t("board")), h("dd", {}, d.board || ""), h("dt", {}, t("firmware")), h("dd", {}, d.firmware_version || ""),
        h("dt", {}, t("first_seen")), h("dd", {}, when(d.first_seen)), h("dt", {}, t("last_seen")), h("dd", {}, when(d.last_seen)),
        h("dt", {}, t("sessions")), h("dd", {}, d.sessions), h("dt", {}, t("turns")), h("dd", {}, d.turns),
        h("dt", {}, t("audio_in")), h("dd", {}, d.audio_in_secs.toFixed(1)), h("dt", {}, t("audio_out")), h("dd", {}, d.audio_out_secs.toFixed(1))),
      h("h3", {}, t("prompt")), prompt,
      h("p", {}, h("button", { type: "button", onclick: () =>
        api(`/api/devices/${encodeURIComponent(id)}/system-prompt`, { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: prompt.value }) })
          .then(() => { note.textContent = t("saved"); }).catch(showError) }, t("save")), " ", note),
      h("h3", {}, t("activate")),
      h("p", {}, h("label", {}, t("code"), " ", code), " ", h("button", { type: "button", onclick: () =>
        api(`/api/devices/${encodeURIComponent(id)}/activate`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ code: code.value }) })
          .then(() => { note.textContent = t("saved"); }).catch(showError) }, t("activate"))),
      h("h3", {}, t("conversations")), conversationTable(convs.items),
      h("p", {}, h("button", { class: "danger", type: "button", onclick: () => {
        if (!confirm(t("confirm_forget"))) return;
        api(`/api/devices/${encodeURIComponent(id)}/data`, { method: "DELETE" }).then(() => { location.hash = "#devices"; }).catch(showError);
      } }, t("forget"))));
  },

  async live() {
    const page = await getJson("/api/devices?limit=100");
    const live = page.items.filter((d) => d.online);
    view().replaceChildren(h("h2", {}, t("live")), live.length === 0 ? h("p", {}, t("nothing_live")) :
      table(["device", "conversation", "last_seen"], live.map((d) => h("tr", {},
        h("td", {}, h("a", { href: "#device/" + encodeURIComponent(d.device_id) }, d.device_id)),
        h("td", {}, h("a", { href: "#conversation/" + d.live_session_id }, d.live_session_id)),
        h("td", {}, when(d.last_seen))))));
  },

  async conversations() {
    const form = h("form", { class: "filters" },
      h("label", {}, t("device"), h("input", { name: "device_id" })), h("button", { type: "submit" }, t("go")));
    const body = h("div");
    const load = async (cursor, append) => {
      const page = await getJson("/api/conversations?" + qs({ device_id: form.device_id.value, cursor, limit: 50 }));
      const tbl = conversationTable(page.items);
      if (!append) body.replaceChildren(tbl); else body.querySelector("tbody").append(...tbl.querySelectorAll("tbody tr"));
      body.querySelector("button.more")?.remove();
      if (page.next_cursor) body.append(h("button", { class: "more", type: "button", onclick: () => load(page.next_cursor, true).catch(showError) }, t("more")));
    };
    form.addEventListener("submit", (e) => { e.preventDefault(); load().catch(showError); });
    view().replaceChildren(h("h2", {}, t("conversations")), form, body);
    await load();
  },

  async conversation(id) {
    const s = await getJson("/api/conversations/" + id);
    const m = await getJson(`/api/conversations/${id}/messages`);
    view().replaceChildren(
      h("h2", {}, t("conversation"), " ", h("small", {}, id)),
      h("p", {}, h("a", { href: "#device/" + encodeURIComponent(s.device_id) }, s.device_id), " · ", when(s.started_at), " · ", s.status),
      h("p", {},
        h("button", { type: "button", "data-testid": "export-zip", onclick: () => download(`/api/conversations/${id}/export`, `conversation-${id}.zip`).catch(showError) }, t("download")), " ",
        h("button", { type: "button", class: "danger", "data-testid": "delete", onclick: () => {
          if (!confirm(t("confirm_delete"))) return;
          api("/api/conversations/" + id, { method: "DELETE" }).then(() => { location.hash = "#conversations"; }).catch(showError);
        } }, t("delete"))),
      table(["role", "time", "messages", ""], m.items.map((x) => h("tr", { "data-message": x.message_id },
        h("td", {}, h("span", { class: "role " + x.role }, x.role)), h("td", {}, when(x.created_at)),
        h("td", {}, x.content), h("td", {}, playButton(x))))));
  },

  async search() {
    const form = h("form", { class: "filters" },
      h("label", {}, t("query"), h("input", { name: "q", id: "search-q", size: 30 })),
      h("label", {}, t("mode"), h("select", { name: "mode" }, h("option", { value: "text" }, t("text_mode")), h("option", { value: "semantic" }, t("semantic_mode")))),
      h("label", {}, t("device"), h("input", { name: "device_id" })),
      h("label", {}, t("role"), h("select", { name: "role" }, h("option", { value: "" }, t("any")), ["user", "assistant", "tool"].map((r) => h("option", { value: r }, r)))),
      h("label", {}, t("from"), h("input", { type: "date", name: "from" })),
      h("label", {}, t("to"), h("input", { type: "date", name: "to" })),
      h("button", { type: "submit", id: "search-go" }, t("go")));
    const body = h("div", { id: "search-results" });
    const load = async (cursor, append) => {
      const f = form;
      const page = await getJson("/api/search?" + qs({ q: f.q.value, mode: f.mode.value, device_id: f.device_id.value, role: f.role.value, from: f.from.value, to: f.to.value, cursor, limit: 50 }));
      const rows = page.items.map((x) => {
        const snip = h("td", { class: "snippet" });
        snip.innerHTML = x.snippet; // HTML-escaped by the gateway; only <mark> is markup
        return h("tr", { "data-message": x.message_id }, h("td", {}, when(x.created_at)),
          h("td", {}, h("a", { href: "#device/" + encodeURIComponent(x.device_id) }, x.device_id)),
          h("td", {}, h("span", { class: "role " + x.role }, x.role)), snip,
          h("td", {}, h("a", { href: "#conversation/" + x.session_id }, t("conversation"))), h("td", {}, playButton(x)));
      });
      if (!append) body.replaceChildren(rows.length ? table(["time", "device", "role", "messages", "", ""], rows) : h("p", {}, t("no_results")));
      else body.querySelector("tbody").append(...rows);
      body.querySelector("button.more")?.remove();
      if (page.next_cursor) body.append(h("button", { class: "more", type: "button", onclick: () => load(page.next_cursor, true).catch(showError) }, t("more")));
    };
    form.addEventListener("submit", (e) => { e.preventDefault(); load().catch(showError); });
    view().replaceChildren(h("h2", {}, t("search")), form, body);
  },

  async stats() {
    const s = await getJson("/api/stats");
    const metrics = ["sessions", "turns", "active_devices", "speech_in", "speech_out", "clips", "bytes", "failed_uploads"];
    const field = { speech_in: "speech_in_secs", speech_out: "speech_out_secs" };
    view().replaceChildren(h("h2", {}, t("stats"), " ", h("small", { class: "muted" }, `${s.from} – ${s.to} (UTC)`)),
      h("div", { class: "charts" }, metrics.map((k) => {
        const values = s.days.map((d) => d[field[k] || k]);
        const max = Math.max(1, ...values);
        const total = values.reduce((a, b) => a + b, 0);
        return h("div", { class: "chart", "data-metric": k }, h("strong", {}, t(k)), " ", h("span", { class: "muted" }, Math.round(total * 10) / 10),
          h("div", { class: "bars" }, s.days.map((d, i) => h("div", { title: `${d.day}: ${values[i]}`, style: `height:${(100 * values[i]) / max}%` }))));
      })));
  },

  async export() {
    const form = h("form", { class: "filters" },
      h("label", {}, t("device"), h("input", { name: "device_id" })),
      h("label", {}, t("from"), h("input", { type: "date", name: "from" })),
      h("label", {}, t("to"), h("input", { type: "date", name: "to" })),
      h("label", {}, t("format"), h("select", { name: "format" }, h("option", { value: "jsonl" }, "JSON lines"), h("option", { value: "csv" }, "CSV"))),
      h("button", { type: "submit" }, t("export")));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const f = form;
      download("/api/export?" + qs({ device_id: f.device_id.value, from: f.from.value, to: f.to.value, format: f.format.value }), "xiaozhi-messages." + f.format.value).catch(showError);
    });
    view().replaceChildren(h("h2", {}, t("export")), form);
  },

  async status() {
    const r = await fetch("/readyz");
    const body = await r.json().catch(() => ({}));
    const rows = Object.entries(body).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, typeof v === "object" ? JSON.stringify(v) : String(v))));
    view().replaceChildren(h("h2", {}, t("status"), " ", h("span", { class: r.ok ? "online" : "offline" }, t(r.ok ? "ready" : "not_ready"))), table(["component", "state"], rows));
  },
};

function conversationTable(items) {
  return table(["started", "device", "status_col", "messages"], items.map((s) => h("tr", { "data-session": s.session_id },
    h("td", {}, h("a", { href: "#conversation/" + s.session_id }, when(s.started_at))),
    h("td", {}, s.device_id), h("td", {}, s.status), h("td", {}, s.message_count))));
}

async function route() {
  $("#error").textContent = "";
  const [name, ...rest] = (location.hash.slice(1) || "devices").split("/");
  const arg = decodeURIComponent(rest.join("/"));
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.getAttribute("href") === "#" + name);
  const render = views[name] || views.devices;
  try { await render(arg); } catch (e) { showError(e); }
}

function signOut(message) {
  token = "";
  sessionStorage.removeItem("xiaozhi-admin-token");
  $("#app").hidden = true;
  $("#signin").hidden = false;
  $("#signin-error").textContent = message || "";
}

async function signIn(candidate) {
  const r = await fetch("/api/devices?limit=1", { headers: { Authorization: "Bearer " + candidate } });
  if (r.status === 404) throw new Error(t("disabled"));
  if (!r.ok) throw new Error(t("bad_token"));
  token = candidate;
  sessionStorage.setItem("xiaozhi-admin-token", token);
  $("#signin").hidden = true;
  $("#app").hidden = false;
  await route();
}

for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
document.title = t("title");
$("#signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  signIn($("#token").value.trim()).catch((err) => { $("#signin-error").textContent = err.message; });
});
$("#signout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
if (token) signIn(token).catch(() => signOut()); else signOut();

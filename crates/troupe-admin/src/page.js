// The admin page: draws /tree and /warnings every REFRESH_MS, keeps which connections the
// operator folded, and posts actions. Every text from the server goes in through textContent
// (request paths are chosen by clients, so never through innerHTML).
"use strict";

const REFRESH_MS = 2000;
const folded = new Set();
let paused = false;
let lastTree = null;

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return e;
}

function secs(s) {
  if (s === null || s === undefined) return "-";
  if (s < 1) return (s * 1000).toFixed(1) + " ms";
  return s.toFixed(2) + " s";
}

function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}

function actorFigures(a) {
  let t = `actor ${a.id} · up ${secs(a.age_secs)} · mailbox ${a.mailbox_depth}`;
  if (a.oldest_message_age_secs !== null) t += ` (oldest ${secs(a.oldest_message_age_secs)})`;
  t += ` · handled ${a.messages_handled} · busy ${secs(a.busy_secs)}`;
  if (a.handling) t += ` · handling ${a.handling.what} for ${secs(a.handling.for_secs)}`;
  if (a.last_error) t += ` · error: ${a.last_error}`;
  return t;
}

function say(text, failed) {
  const m = document.getElementById("message");
  m.textContent = text;
  m.className = failed ? "failed" : "";
}

async function act(path, body) {
  try {
    const r = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const j = await r.json();
    say(r.ok ? j.message + (j.path ? ": " + j.path : "") : j.error, !r.ok);
  } catch (e) {
    say(String(e), true);
  }
  refresh();
}

function streamRow(conn, s, warned) {
  const dir = (d) => {
    let t = `${d.state} ${bytes(d.bytes)}`;
    if (d.end) t += ` (${d.end}${d.code !== null ? " 0x" + d.code.toString(16) : ""})`;
    return t;
  };
  const a = s.actor;
  return el("tr", { class: warned.has(a.id) ? "warn" : "", "data-stream": String(s.stream_id) },
    el("td", { text: `stream ${s.stream_id}` }),
    el("td", { text: s.method || "" }),
    el("td", {}, el("code", { text: s.path || "" })),
    el("td", { text: dir(s.send) }),
    el("td", { text: dir(s.recv) }),
    el("td", { text: `${s.write_credit}${s.read_credit !== null ? " / " + s.read_credit : ""}` }),
    el("td", { text: bytes(s.buffered) }),
    el("td", { text: s.blocked_for_secs !== null ? `blocked ${secs(s.blocked_for_secs)}` : "" }),
    el("td", { text: a.handling ? `${a.handling.what} ${secs(a.handling.for_secs)}` : "" }),
    el("td", { text: `busy ${secs(a.busy_secs)}` }),
    el("td", {}, el("button", {
      type: "button",
      text: "cancel",
      title: "reset this stream with H3_REQUEST_CANCELLED",
      onclick: () => act("/actions/cancel", { connection: conn.trace_id, stream_id: s.stream_id }),
    })));
}

function connection(c, warned) {
  const id = c.trace_id || c.actor.id;
  const d = el("details", { class: "connection" + (warned.has(c.actor.id) ? " warn" : ""), "data-connection": id });
  d.open = !folded.has(id);
  d.addEventListener("toggle", () => {
    if (d.open) folded.delete(id);
    else folded.add(id);
  });
  let line = `connection ${id}`;
  if (!c.answered) line += " (did not answer in time)";
  if (c.peer) line += ` · peer ${c.peer}`;
  if (c.stage) line += ` · ${c.stage}`;
  if (c.worker !== null && c.worker !== undefined) line += ` · worker ${c.worker}`;
  if (c.alpn) line += ` · ${c.alpn}`;
  if (c.rtt_ms !== null) line += ` · rtt ${c.rtt_ms.toFixed(2)} ms (min ${c.min_rtt_ms.toFixed(2)})`;
  line += ` · streams ${c.streams_open}/${c.streams_limit_bidi}`;
  line += ` · packets ${c.packets_sent}↑ ${c.packets_received}↓ lost ${c.packets_lost}`;
  if (c.idle_timeout_left_secs !== null) line += ` · idle timeout in ${secs(c.idle_timeout_left_secs)}`;
  if (c.close) line += ` · closed: ${c.close}`;
  const summary = el("summary", {}, line, " ",
    el("button", { type: "button", text: "GOAWAY", title: "finish this connection's requests, then close it",
      onclick: (ev) => { ev.preventDefault(); act("/actions/goaway", { connection: id }); } }), " ",
    el("button", { type: "button", text: "qlog", title: "start writing a qlog of this connection",
      onclick: (ev) => { ev.preventDefault(); act("/actions/qlog", { connection: id }); } }));
  d.append(summary);
  d.append(el("div", { class: "figures", text: actorFigures(c.actor) +
    (c.cwnd !== null ? ` · cwnd ${bytes(c.cwnd)}` : "") + ` · in flight ${bytes(c.bytes_in_flight)}` +
    (c.pmtu !== null ? ` · pmtu ${c.pmtu}` : "") }));
  if (c.failures && c.failures.length) {
    d.append(el("div", { class: "failed-list", text: `failures ${c.failures_total}; last: ` +
      c.failures.slice(-3).map((f) => `${f.who}: ${f.why}`).join("; ") }));
  }
  if (c.streams.length) {
    const head = el("tr", {}, ...["stream", "method", "path", "send", "recv", "credit w / r",
      "buffered", "flow control", "handling", "busy", ""].map((h) => el("th", { text: h })));
    d.append(el("table", {}, el("thead", {}, head),
      el("tbody", {}, ...c.streams.map((s) => streamRow(c, s, warned)))));
  } else {
    d.append(el("div", { class: "figures", text: "no open stream" }));
  }
  return d;
}

function endpoint(e, warned) {
  const b = e.receive_loop.budget;
  const s = el("section", { class: "endpoint" + (warned.has(e.actor.id) ? " warn" : "") });
  s.append(el("h2", { text: `endpoint ${e.local_addr} (${e.role})` }));
  s.append(el("div", { class: "figures", text:
    `receive loop restarts ${e.receive_loop.restarts}, budget ${b.used}/${b.max_restarts} per ${b.within_secs} s · ` +
    `supervisor ${e.supervisor || "none"} · failures ${e.failures_total} · connections ${e.connections.length} · ` +
    actorFigures(e.actor) }));
  if (e.failures.length) {
    s.append(el("div", { class: "failed-list", text: "last failures: " +
      e.failures.slice(-5).map((f) => `${f.who} (${f.kind}): ${f.why}`).join("; ") }));
  }
  if (!e.connections.length) s.append(el("div", { class: "figures", text: "no connection" }));
  for (const c of e.connections) s.append(connection(c, warned));
  return s;
}

function render(tree, warnings) {
  const warned = new Set(warnings.filter((w) => w.severity === "warning" && w.actor).map((w) => w.actor));
  const box = document.getElementById("warnings");
  if (warnings.length) {
    box.replaceChildren(el("ul", {}, ...warnings.map((w) =>
      el("li", { class: w.severity, text: `${w.severity}: ${w.message}` }))));
  } else {
    box.replaceChildren(el("div", { class: "figures", text: "no warnings" }));
  }
  document.getElementById("tree").replaceChildren(...tree.endpoints.map((e) => endpoint(e, warned)));
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

async function refresh() {
  const st = document.getElementById("status");
  try {
    const [tree, w] = await Promise.all([getJSON("/tree"), getJSON("/warnings")]);
    lastTree = tree;
    render(tree, w.warnings);
    const n = tree.endpoints.reduce((a, e) => a + e.connections.length, 0);
    st.textContent = `${n} connection${n === 1 ? "" : "s"} · updated ${new Date().toLocaleTimeString()}`;
    st.className = "";
  } catch (e) {
    st.textContent = `refresh failed: ${e.message}`;
    st.className = "failed";
  }
}

function foldAll(fold) {
  if (!lastTree) return;
  for (const e of lastTree.endpoints) {
    for (const c of e.connections) {
      const id = c.trace_id || c.actor.id;
      if (fold) folded.add(id);
      else folded.delete(id);
    }
  }
  refresh();
}

document.getElementById("pause").addEventListener("click", (ev) => {
  paused = !paused;
  ev.target.textContent = paused ? "resume" : "pause";
});
document.getElementById("fold").addEventListener("click", () => foldAll(true));
document.getElementById("unfold").addEventListener("click", () => foldAll(false));
setInterval(() => { if (!paused) refresh(); }, REFRESH_MS);
refresh();

/**
 * The dashboard's page, served at `/` on the admin port: one HTML document
 * with its style and script inside, so it works with no internet (no CDN,
 * no library) and under a content security policy that loads nothing from
 * elsewhere. It listens to `/api/events` (dashboard.ts) and draws tables
 * and small SVG sparklines; its buttons call the admin API with the token
 * the operator types once (kept for the tab only, in sessionStorage).
 *
 * @module
 */

const STYLE = `
:root { --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --off: #6e7781; --line: #d0d7de;
  --bg: #f6f8fa; font: 14px/1.4 system-ui, sans-serif; color: #1f2328; }
body { margin: 0; background: var(--bg); }
header { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; padding: 10px 16px;
  background: #fff; border-bottom: 1px solid var(--line); }
header h1 { font-size: 18px; margin: 0; }
main { padding: 12px 16px; display: grid; gap: 16px; grid-template-columns: minmax(0, 1fr); }
#pools { display: grid; gap: 16px; min-width: 0; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
  min-width: 0; }
h2 { font-size: 15px; margin: 0 0 8px; }
.wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid var(--line); white-space: nowrap; }
td button { padding: 1px 5px; font-size: 12px; }
th { font-weight: 600; color: #57606a; font-size: 12px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state { display: inline-flex; align-items: center; gap: 6px; font-weight: 600; }
.state::before { content: ""; width: 10px; height: 10px; border-radius: 50%; background: var(--off); }
.state.up::before { background: var(--ok); } .state.up { color: var(--ok); }
.state.down::before { background: var(--bad); } .state.down { color: var(--bad); }
.state.draining::before { background: var(--warn); } .state.draining { color: var(--warn); }
.state.disabled { color: var(--off); }
.since { color: #57606a; font-weight: normal; font-size: 12px; }
.checks { display: inline-flex; gap: 2px; }
.checks i { width: 6px; height: 14px; background: var(--ok); display: inline-block; }
.checks i.fail { background: var(--bad); }
.spark { vertical-align: middle; }
button { font: inherit; padding: 2px 8px; border: 1px solid var(--line); border-radius: 4px;
  background: #f6f8fa; cursor: pointer; }
button:disabled { cursor: not-allowed; opacity: .5; }
#live { font-weight: 600; } #live.on { color: var(--ok); } #live.off { color: var(--bad); }
#notice { color: #57606a; } #message { color: var(--bad); }
#events li { list-style: none; padding: 2px 0; border-bottom: 1px solid var(--line); }
#events { margin: 0; padding: 0; max-height: 260px; overflow-y: auto; }
#events time { color: #57606a; margin-right: 8px; font-variant-numeric: tabular-nums; }
input { font: inherit; padding: 2px 6px; width: 14em; max-width: 100%; }
@media (max-width: 600px) { header h1 { font-size: 16px; } main { padding: 8px; } }
`;

const SCRIPT = `
"use strict";
const $ = (id) => document.getElementById(id);
const escape = (text) => String(text).replace(/[&<>"']/g, (c) =>
  ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const token = () => sessionStorage.getItem("lb-token") || "";
let latest;

function since(seconds) {
  if (seconds < 60) return seconds + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min";
  return Math.floor(seconds / 3600) + " h";
}
function rate(bytes) {
  if (bytes < 1024) return bytes + " B/s";
  if (bytes < 1048576) return (bytes / 1024).toFixed(1) + " KiB/s";
  return (bytes / 1048576).toFixed(1) + " MiB/s";
}
// Connections (blue) and errors (red) per second over the last five minutes, in one small SVG.
function spark(connections, errors) {
  const width = 120, height = 22, n = connections.length;
  const top = Math.max(1, ...connections, ...errors);
  const line = (series, colour) => series.length < 2 ? "" : '<polyline fill="none" stroke="' +
    colour + '" stroke-width="1.5" points="' + series.map((v, i) =>
      (i * width / (series.length - 1)).toFixed(1) + "," +
      (height - 1 - v * (height - 2) / top).toFixed(1)).join(" ") + '"/>';
  return '<svg class="spark" width="' + width + '" height="' + height + '" role="img" aria-label="' +
    "connections and errors per second, the last " + n + " s, at most " + top + '/s">' +
    (errors.some((v) => v > 0) ? line(errors, "#cf222e") : "") + line(connections, "#0969da") +
    "</svg>";
}

function causes(byCause) {
  const list = Object.entries(byCause).map(([cause, n]) => escape(cause) + " " + n).join(", ");
  return list === "" ? "" : ' <span class="since">(' + list + ")</span>";
}

// While the operator is pressing or has focused a button, or selected text, the page is not
// redrawn (that would drop the click, the focus or the selection); it catches up after.
// A button focused from the keyboard holds redraws for a few seconds at most.
let pressing = false;
let focusedAt = 0;
document.addEventListener("focusin", () => { focusedAt = Date.now(); });
function busy() {
  const active = document.activeElement;
  const focused = active !== null && active.closest && active.closest("#pools") !== null &&
    Date.now() - focusedAt < 5000;
  return pressing || focused || String(getSelection()).length > 0;
}
document.addEventListener("pointerdown", () => { pressing = true; });
document.addEventListener("pointerup", () => {
  pressing = false;
  setTimeout(() => latest && !busy() && render(latest), 0);
});

function render(snapshot) {
  latest = snapshot;
  if (busy()) return;
  $("version").textContent = "version " + snapshot.version;
  $("listeners").innerHTML = snapshot.listeners.map((l) =>
    "<tr><td>" + escape(l.name) + "</td><td>" + escape(l.address || "") + "</td><td>" +
    escape(l.engine) + (l.threads > 1 ? " × " + l.threads : "") + "</td><td>" + escape(l.pool) +
    '</td><td class="num" data-field="listener-active">' + l.active + '</td><td class="num">' +
    l.accepted_per_s + '</td><td class="num">' +
    Object.values(l.refused).reduce((a, b) => a + b, 0) + '</td><td class="num" data-field="failed">' +
    l.failed + "</td></tr>").join("");
  const can = token() !== "";
  $("pools").innerHTML = snapshot.pools.map((pool) =>
    '<section><h2>pool ' + escape(pool.name) + '</h2><div class="wrap"><table><thead><tr>' +
    "<th>backend</th><th>state</th><th></th><th>checks</th><th>source</th><th>weight</th>" +
    '<th>active</th><th title="connections that have ended">ended</th><th>conn/s</th>' +
    '<th title="bytes of connections as they end">in</th><th title="bytes of connections as they end">out</th>' +
    "<th>connect p50/p99</th><th>errors</th><th>last 5 min</th></tr></thead><tbody>" +
    pool.backends.map((b) =>
      '<tr data-backend="' + escape(b.address) + '" data-pool="' + escape(pool.name) + '">' +
      "<td>" + escape(b.address) + (b.backup ? " (backup)" : "") + "</td>" +
      '<td><span class="state ' + b.state + '" data-field="state">' + b.state +
      '</span> <span class="since">for ' + since(b.for_s) + "</span></td><td>" +
      ["drain", "enable", "disable", "weight"].map((action) =>
        '<button data-action="' + action + '"' + (can ? "" : " disabled") + ">" + action +
        "</button>").join(" ") + "</td>" +
      '<td><span class="checks" title="the last checks, oldest first">' +
      b.checks.map((ok) => '<i class="' + (ok ? "pass" : "fail") + '" title="' +
        (ok ? "passed" : "failed") + '"></i>').join("") + "</span></td>" +
      "<td>" + escape(b.source) + '</td><td class="num">' + b.weight + "</td>" +
      '<td class="num" data-field="active">' + b.active + "</td>" +
      '<td class="num" data-field="connections">' + b.connections + "</td>" +
      '<td class="num">' + b.connections_per_s + "</td>" +
      '<td class="num">' + rate(b.bytes_in_per_s) + '</td><td class="num">' + rate(b.bytes_out_per_s) +
      '</td><td class="num" title="connect time, median and 99th percentile of the last 256">' +
      (b.connect_ms === null ? "–" : b.connect_ms.p50 + " / " + b.connect_ms.p99 + " ms") + "</td>" +
      '<td class="num" title="failed connects, by cause">' + b.connect_failures +
      causes(b.errors_by_cause) + "</td>" +
      "<td>" + spark(b.history.connections_per_s, b.history.errors_per_s) + "</td>" +
      "</tr>").join("") + "</tbody></table></div></section>").join("");
  $("events").innerHTML = snapshot.events.map((e) =>
    '<li><time title="' + escape(e.at) + '">' + escape(e.at.slice(11, 19)) + " UTC</time>" + escape(e.kind) + ": " +
    escape(e.text) + "</li>").join("") || "<li>nothing yet</li>";
}

async function act(button) {
  const row = button.closest("tr");
  const action = button.dataset.action;
  let body;
  if (action === "weight") {
    const weight = prompt("New weight for " + row.dataset.backend + " (a whole number 1-256)");
    if (weight === null) return;
    if (!/^[0-9]+$/.test(weight.trim())) {
      $("message").textContent = "weight: expected a whole number 1-256, got " + JSON.stringify(weight);
      return;
    }
    body = JSON.stringify({ weight: Number(weight) });
  }
  const path = "/api/backends/" + encodeURIComponent(row.dataset.pool) + "/" +
    encodeURIComponent(row.dataset.backend) + "/" + action;
  const response = await fetch(path, {
    method: "POST",
    headers: { authorization: "Bearer " + token() },
    body,
  });
  const answer = await response.json().catch(() => ({}));
  $("message").textContent = response.ok ? "" : action + ": " + (answer.error || response.status);
  button.blur();
}

function showToken() {
  const has = token() !== "";
  $("notice").textContent = has
    ? "Changes use the token you gave (kept for this tab only)."
    : "Read-only: give the admin token to drain, enable, disable or weigh backends.";
  $("forget").hidden = !has;
  if (latest) render(latest);
}

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("snapshot", (event) => {
    $("live").textContent = "live";
    $("live").className = "on";
    render(JSON.parse(event.data));
  });
  source.onerror = () => {
    $("live").textContent = "reconnecting…";
    $("live").className = "off";
    // The browser retries by itself, unless it gave up: then start again.
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
  };
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (button) act(button);
});
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("lb-token", $("token").value.trim());
  $("token").value = "";
  showToken();
});
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem("lb-token");
  showToken();
});
showToken();
connect();
`;

/** The whole page. */
export const DASHBOARD_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Load balancer</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
<header>
  <h1>Load balancer</h1>
  <span id="live" class="off">connecting…</span>
  <span id="version"></span>
  <form id="token-form"><input id="token" type="password" placeholder="admin token"
    autocomplete="off" aria-label="admin token"> <button type="submit">use token</button>
    <button type="button" id="forget" hidden>forget token</button></form>
  <span id="notice"></span>
  <span id="message" role="alert"></span>
</header>
<main>
  <section><h2>listeners</h2><div class="wrap"><table><thead><tr><th>name</th><th>address</th>
    <th>engine</th><th>pool</th><th>active</th><th>accepted/s</th>
    <th title="closed at the front door: ACL, limits, PROXY header, no route">refused</th>
    <th title="no backend could serve them: all down or failing, or the queue">failed</th></tr></thead>
    <tbody id="listeners"></tbody></table></div></section>
  <div id="pools"></div>
  <section><h2>recent events</h2><ul id="events"></ul></section>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;

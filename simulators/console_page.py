"""The maker console's one page: devices, a timeline per session, read-backs and lens cards, the audit
trail. Every text from the bus goes in by `textContent`, never as HTML; the page has no control."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>device-sdk console</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; } td, th { border-bottom: 1px solid #ddd; padding: .2em .8em; text-align: left; }
.session { border: 1px solid #ccc; border-radius: 6px; padding: .5em 1em; margin: .8em 0; }
.event { font-family: ui-monospace, monospace; font-size: 12px; white-space: pre-wrap; overflow-wrap: anywhere; }
.readback { background: #f4f4f4; padding: .4em; white-space: pre-wrap; }
.online { color: #070; } .offline { color: #a00; } .intact { color: #070; } .broken { color: #a00; }
img.card { border: 1px solid #999; max-width: 320px; display: block; margin: .4em 0; }
</style></head>
<body>
<h1>device-sdk console <small>(read-only)</small></h1>
<h2>Devices</h2>
<table><thead><tr><th>device</th><th>kind</th><th>room</th><th>locale</th><th>status</th></tr></thead>
<tbody id="devices"></tbody></table>
<h2>Sessions</h2>
<div id="sessions"></div>
<script>
"use strict";
const devices = document.getElementById("devices");
const sessions = document.getElementById("sessions");
function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text ?? ""; if (cls) td.className = cls; }
function showDevice(d) {
  let row = document.getElementById("device-" + d.device_id);
  if (!row) { row = devices.insertRow(); row.id = "device-" + d.device_id; }
  row.textContent = "";
  cell(row, d.device_id); cell(row, d.kind); cell(row, d.room); cell(row, d.locale);
  const online = d.online === undefined ? "" : (d.online ? "online" : "offline");
  cell(row, online, online);
}
function sessionBox(id) {
  const key = "session-" + (id || "none");
  let box = document.getElementById(key);
  if (!box) {
    box = document.createElement("div"); box.id = key; box.className = "session";
    const title = document.createElement("h3"); title.textContent = id ? "session " + id : "outside a session";
    const events = document.createElement("div"); events.className = "events";
    const audit = document.createElement("div"); audit.className = "audit";
    box.append(title, events, audit); sessions.prepend(box);
  }
  return box;
}
async function showAudit(box, id) {
  const answer = await (await fetch("/audit/" + encodeURIComponent(id))).json();
  const audit = box.querySelector(".audit"); audit.textContent = "";
  const state = document.createElement("p");
  state.textContent = answer.verified === true ? "audit log intact (hash chain and signed checkpoints verified)"
    : answer.verified === false ? "audit log BROKEN: " + answer.problem : "audit: " + answer.problem;
  state.className = answer.verified ? "intact" : "broken";
  audit.append(state);
  for (const record of answer.records) {
    const line = document.createElement("div"); line.className = "event";
    const { seq, kind, at, ...rest } = record;
    line.textContent = "#" + seq + " " + kind + " " + JSON.stringify(rest);
    audit.append(line);
  }
}
function showEvent(e) {
  const box = sessionBox(e.session);
  const line = document.createElement("div"); line.className = "event";
  line.textContent = e.t.toFixed(3) + " s  " + e.route + "  " + e.type + "  " + e.summary;
  box.querySelector(".events").append(line);
  if (e.readback) {
    const said = document.createElement("div"); said.className = "readback";
    said.textContent = "read back: " + e.readback; box.querySelector(".events").append(said);
  }
  if (e.card) {
    const img = document.createElement("img"); img.className = "card"; img.alt = "lens card"; img.src = e.card;
    box.querySelector(".events").append(img);
  }
  if (e.type === "order.result" && e.session) { showAudit(box, e.session); }
}
const source = new EventSource("/events");
source.onmessage = (m) => {
  const e = JSON.parse(m.data);
  if (e.type === "device") showDevice(e.device); else showEvent(e);
};
</script>
</body></html>
"""

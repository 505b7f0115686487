// nslab web: small code of our own over graphviz's SVG (nslab/web/view.py gives every node,
// group and edge an id: n/NAME, g/GROUP, e/INDEX).  No layout here: graphviz lays out.
"use strict";
const $ = (s) => document.querySelector(s);
const enc = encodeURIComponent;
const state = { lab: null, model: null, opened: null, es: null, steps: [], step: -1, timer: null,
                cap: null, capEs: null, changes: false, node: null };

async function api(path, opts) {
  const r = await fetch(path, opts);
  const text = await r.text();
  let j;
  try { j = JSON.parse(text); } catch (e) { j = { error: text.trim() }; }
  if (!r.ok) throw new Error(j.error || `${r.status}`);
  return j;
}
const post = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                         body: JSON.stringify(body) });

function status(text, err) { const s = $("#status"); s.textContent = text; s.className = err ? "error" : ""; }

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function options(select, names) {
  select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
}

async function init() {
  const j = await api("/api/labs");
  state.changes = j.changes;
  $("#mode").textContent = j.changes ? "changes allowed" : "read-only";
  document.querySelectorAll(".link-op").forEach((b) => { b.disabled = !j.changes; });
  options($("#lab"), j.labs);
  if (!j.labs.length) { status("no lab runs (nslab up)"); return; }
  const want = decodeURIComponent(location.hash.slice(1));
  await load(j.labs.includes(want) ? want : j.labs[0]);
}

async function load(lab, opened) {
  status(`drawing ${lab}…`);
  const t0 = performance.now();
  const q = opened === undefined ? "" : `?open=${enc(opened === null ? "*" : [...opened].join(","))}`;
  const j = await api(`/api/lab/${enc(lab)}/picture${q}`);
  state.lab = lab; state.model = j.model; state.opened = j.collapsed ? new Set(opened || []) : null;
  $("#lab").value = lab;
  location.hash = enc(lab);
  const g = $("#graph");
  g.innerHTML = j.svg;
  const svg = g.querySelector("svg");
  svg.querySelectorAll("title").forEach((t) => t.remove());     // no tooltips of dot's ids
  wire(svg);
  const ends = [...j.model.nodes, ...j.model.services];
  options($("#node-names"), j.model.nodes); options($("#end-names"), ends);   // one list each, even at 10,000
  $("#src").value = $("#cap-node").value = j.model.nodes[0] || "";
  $("#dst").value = ends[ends.length - 1] || "";
  const b = j.model.backend;
  $("#encap-note").textContent = b ? `on a cluster node's underlay link, the ${b.type} share is its ${b.device} ` +
    "device's traffic (links between routers show totals)" : "";
  startCounters();
  const ms = Math.round(performance.now() - t0);
  document.body.dataset.lab = lab;
  document.body.dataset.renderMs = ms;
  status(`${lab}: ${j.model.nodes.length} nodes, drawn in ${ms} ms` + (j.collapsed ? " (racks collapsed)" : ""));
}

function wire(svg) {
  svg.querySelectorAll("g.node").forEach((n) => {
    n.addEventListener("click", () => {
      const id = n.id.slice(2);
      if (id.startsWith("group:")) {
        const opened = new Set(state.opened || []); opened.add(id.slice(6));
        load(state.lab, opened).catch((e) => status(e.message, true));
      } else showNode(id);
    });
  });
}

// --- live counters ------------------------------------------------------------------------
function human(x, unit) {
  const k = [[1e9, "G"], [1e6, "M"], [1e3, "k"]].find(([v]) => x >= v);
  return k ? `${(x / k[0]).toFixed(1)}${k[1]}${unit}` : `${Math.round(x)}${unit}`;
}

function loadColour(pps, down) {
  if (down) return "#b00020";
  if (pps < 0.5) return null;
  return pps < 100 ? "#43a047" : pps < 10000 ? "#fb8c00" : "#e53935";
}

function startCounters() {
  if (state.es) state.es.close();
  const q = state.opened === null ? "" : `?open=${enc([...state.opened].join(","))}`;
  state.es = new EventSource(`/api/lab/${enc(state.lab)}/counters${q}`);
  state.es.onmessage = (ev) => paint(JSON.parse(ev.data));
  state.es.addEventListener("gone", () => {
    state.es.close();
    status(`lab ${state.lab} no longer runs`, true);
    document.body.dataset.gone = state.lab;
  });
}

function paint(data) {
  const backend = state.model.backend ? state.model.backend.type : "encap";
  for (const [drawn, members] of Object.entries(state.model.edges)) {
    const rs = members.map((k) => data.rates[k]).filter((r) => r);
    if (!rs.length) continue;
    const [pps, bps, epps, ebps] = [0, 1, 2, 3].map((i) => rs.reduce((s, r) => s + r[i], 0));
    const down = rs.some((r) => r[4]);
    const g = document.getElementById(`e/${drawn}`);
    if (!g) continue;
    Object.assign(g.dataset, { pps, bps, encapPps: epps, encapBps: ebps, down });
    const path = g.querySelector("path");
    const colour = loadColour(pps, down);
    if (!g.dataset.stroke) g.dataset.stroke = path.getAttribute("stroke") || "";
    path.setAttribute("stroke", colour || g.dataset.stroke);
    path.setAttribute("stroke-width", colour ? String(1.5 + Math.min(4, Math.log10(1 + pps))) : "1.2");
    path.setAttribute("stroke-dasharray", down ? "6,4" : "");
    let t = g.querySelector("text.rate");
    const text = down ? "DOWN" : pps >= 0.5 ? `${human(pps, " pkt/s")} ${human(bps * 8, "b/s")}` : "";
    const etext = !down && epps >= 0.5 ? `${backend} ${human(epps, " pkt/s")}` : "";
    if (!text && !t) continue;
    if (!t) {
      const p = path.getPointAtLength(path.getTotalLength() / 2);
      t = document.createElementNS("http://www.w3.org/2000/svg", "text");
      const right = p.x > g.ownerSVGElement.viewBox.baseVal.width * 0.6;    // keep it inside the picture
      t.setAttribute("class", "rate"); t.setAttribute("x", right ? p.x - 4 : p.x + 4); t.setAttribute("y", p.y);
      t.setAttribute("text-anchor", right ? "end" : "start");
      g.appendChild(t);
    }
    t.textContent = text + (etext ? ` (${etext})` : "");
    t.classList.toggle("encap", !!etext);
  }
  $("#status").dataset.took = data.took;
  $("#status").dataset.cpu = data.cpu;
}

// --- a node: what nslab show says ------------------------------------------------------------
async function showNode(name) {
  tab("node");
  document.querySelectorAll("g.node.picked").forEach((n) => n.classList.remove("picked"));
  const g = document.getElementById(`n/${name}`);
  if (g) g.classList.add("picked");
  const box = $("#node");
  box.replaceChildren(el("p", {}, `reading ${name}…`));
  try {
    const j = await api(`/api/lab/${enc(state.lab)}/node/${enc(name)}`);
    const n = j.nodes[name];
    const parts = [el("h2", {}, name)];
    const section = (title, lines) => {
      parts.push(el("h3", {}, title));
      parts.push(el("pre", { class: `show-${title}` }, lines.length ? lines.join("\n") : "(none)"));
    };
    section("about", n.about_lines || []);
    section("interfaces", (n.interfaces || []).map((i) =>
      [i.name, i.kind || "", i.state || "", i.mtu ? `mtu ${i.mtu}` : "", i.mac || "",
       (i.addresses || []).map((a) => a.text).join(" "), i.details || "", i.conditions || ""]
        .filter((x) => x).join("  ")));
    section("routes", (n.routes || []).map((r) => r.text));
    section("neighbours", (n.neighbours || []).map((r) => r.text));
    section("fdb", (n.fdb || []).map((r) => r.text));
    section("netfilter", n.netfilter_lines || []);
    const from = el("button", {}, "trace from here"), to = el("button", {}, "trace to here");
    from.onclick = () => { $("#src").value = name; tab("trace"); };
    to.onclick = () => { $("#dst").value = name; tab("trace"); };
    parts.push(from, to);
    box.replaceChildren(...parts);
    box.dataset.node = name;
  } catch (e) { box.replaceChildren(el("p", { class: "error" }, e.message)); }
}

// --- a trace, drawn and replayed ---------------------------------------------------------------
async function runTrace() {
  const body = { src: $("#src").value, dst: $("#dst").value, proto: $("#proto").value };
  const port = parseInt($("#port").value, 10);
  if (port) body.port = port;
  $("#trace-summary").textContent = `tracing ${body.src} → ${body.dst}…`;
  clearTrace();
  try {
    const j = await post(`/api/lab/${enc(state.lab)}/trace`, body);
    state.steps = j.steps;
    const r = j.result;
    $("#trace-summary").textContent = [r.request && r.request.summary, r.reply && r.reply.summary]
      .filter((x) => x).join(" / ") || (j.complete ? "complete" : "incomplete");
    $("#steps").replaceChildren(...j.steps.map((s, i) => {
      const li = el("li", { "data-node": s.node, "data-iface": s.iface, "data-dir": s.dir, "data-leg": s.leg });
      li.append(`${s.leg} ${s.node} ${s.iface} ${s.dir} `);
      if (s.label) li.append(el("span", { class: "label" }, s.label));
      if (s.note) li.append(` (${s.note})`);
      li.title = s.decisions.join("\n");
      li.onclick = () => goStep(i);
      return li;
    }));
    const marked = new Set(), rows = {};
    for (const s of j.steps) {
      const g = s.edge !== null && document.getElementById(`e/${s.edge}`);
      if (g) g.classList.add("trace");
      const word = s.label.split(" ")[0];          // encap / decap / NAT, once per node and leg
      if (word && !marked.has(`${s.leg} ${s.node} ${word}`)) {
        marked.add(`${s.leg} ${s.node} ${word}`);
        rows[s.node] = (rows[s.node] || 0) + 1;    // one line each beside the node's box
        svgLabel(s.node, `${s.leg === "reply" ? "↩ " : ""}${word} ${s.iface}`, "trace-label", rows[s.node] - 1);
      }
    }
    $("#steps").dataset.count = j.steps.length;
    goStep(0);
  } catch (e) { $("#trace-summary").replaceChildren(el("span", { class: "error" }, e.message)); }
}

function svgLabel(node, text, cls, row) {
  // a label beside a node's box on the picture (trace steps: encap, decap, NAT, the current step)
  const g = document.getElementById(`n/${node}`);
  if (!g) return;
  const box = g.getBBox();
  const t = document.createElementNS("http://www.w3.org/2000/svg", "text");
  t.setAttribute("class", cls);
  t.setAttribute("x", box.x + box.width + 3);
  t.setAttribute("y", box.y + 10 + 11 * row);
  t.textContent = text;
  g.ownerSVGElement.querySelector("g").appendChild(t);
}

function clearTrace() {
  if (state.timer) { clearInterval(state.timer); state.timer = null; }
  document.querySelectorAll("#graph .trace, #graph .step").forEach((g) => g.classList.remove("trace", "step"));
  document.querySelectorAll("#graph text.trace-label, #graph text.step-label").forEach((t) => t.remove());
  state.steps = []; state.step = -1; $("#steps").replaceChildren(); $("#step-text").textContent = "";
}

function goStep(i) {
  if (!state.steps.length) return;
  i = Math.max(0, Math.min(state.steps.length - 1, i));
  state.step = i;
  document.querySelectorAll("#graph .step").forEach((g) => g.classList.remove("step"));
  const s = state.steps[i];
  const n = document.getElementById(`n/${s.node}`);
  if (n) n.classList.add("step");
  const e = s.edge !== null && document.getElementById(`e/${s.edge}`);
  if (e) e.classList.add("step");
  document.querySelectorAll("#steps li").forEach((li, k) => li.classList.toggle("current", k === i));
  document.querySelectorAll("#graph text.step-label").forEach((t) => t.remove());
  svgLabel(s.node, `${i + 1}. ${s.iface} ${s.dir}${s.label ? " " + s.label.split(" ")[0] : ""}`, "step-label", -1);
  $("#step-text").textContent = `${i + 1}/${state.steps.length}: ${s.node} ${s.iface} ${s.dir}` +
    (s.label ? ` — ${s.label}` : "");
}

function play() {
  if (state.timer) { clearInterval(state.timer); state.timer = null; $("#play").textContent = "play"; return; }
  if (state.step >= state.steps.length - 1) goStep(0);
  $("#play").textContent = "pause";
  state.timer = setInterval(() => {
    if (state.step >= state.steps.length - 1) { play(); return; }
    goStep(state.step + 1);
  }, 700);
}

// --- capture -----------------------------------------------------------------------------------
async function startCapture() {
  const body = { node: $("#cap-node").value, iface: $("#cap-iface").value, filter: $("#cap-filter").value };
  const tbody = $("#cap-rows tbody");
  tbody.replaceChildren();
  try {
    const j = await post(`/api/lab/${enc(state.lab)}/capture`, body);
    state.cap = j.id;
    $("#cap-status").textContent = `capturing on ${j.where}`;
    $("#cap-stop").disabled = false;
    const a = $("#cap-pcap"); a.href = `/api/capture/${j.id}/pcap`; a.hidden = false;
    state.capEs = new EventSource(`/api/capture/${j.id}/rows`);
    state.capEs.onmessage = (ev) => {
      const r = JSON.parse(ev.data);
      const ends = (x) => x ? `${x.src_ip || x.src_mac || "-"} → ${x.dst_ip || x.dst_mac || "-"} ` +
        `${x.protocol || ""}` +
        (x.vni !== null && x.vni !== undefined ? ` vni ${x.vni}` : "") + (x.ports ? ` ${x.ports}` : "") : "";
      const tr = el("tr", { class: "cap-row" });
      tr.append(el("td", {}, r.n), el("td", {}, r.time.toFixed(3)), el("td", {}, r.kind || r.summary || ""),
                el("td", {}, r.outer ? ends(r.outer) : ""), el("td", {}, r.inner ? ends(r.inner) : ""));
      tbody.appendChild(tr);
      tbody.dataset.count = tbody.children.length;
    };
    state.capEs.addEventListener("end", () => { state.capEs.close(); $("#cap-status").textContent += " (ended)"; });
  } catch (e) { $("#cap-status").replaceChildren(el("span", { class: "error" }, e.message)); }
}

async function stopCapture() {
  if (!state.cap) return;
  await post(`/api/capture/${state.cap}/stop`, {});
  $("#cap-stop").disabled = true;
}

// --- link changes ------------------------------------------------------------------------------
async function linkOp(op) {
  const body = { target: $("#link-target").value, action: op,
                 values: { rate: $("#link-rate").value, delay: $("#link-delay").value, loss: $("#link-loss").value } };
  const out = $("#link-status");
  try {
    const j = await post(`/api/lab/${enc(state.lab)}/link`, body);
    out.textContent = j.text; out.className = "";
    await load(state.lab, state.opened === null ? undefined : state.opened);
  } catch (e) { out.textContent = e.message; out.className = "error"; }
}

function tab(name) {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("on", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("on", t.id === `tab-${name}`));
}

document.querySelectorAll("nav button").forEach((b) => { b.onclick = () => tab(b.dataset.tab); });
$("#lab").onchange = () => load($("#lab").value).catch((e) => status(e.message, true));
$("#fit").onchange = () => $("#graph").classList.toggle("fit", $("#fit").checked);
$("#graph").classList.add("fit");
$("#trace-go").onclick = runTrace;
$("#prev").onclick = () => goStep(state.step - 1);
$("#next").onclick = () => goStep(state.step + 1);
$("#play").onclick = play;
$("#cap-start").onclick = startCapture;
$("#cap-stop").onclick = stopCapture;
document.querySelectorAll(".link-op").forEach((b) => { b.onclick = () => linkOp(b.dataset.op); });
init().catch((e) => status(e.message, true));

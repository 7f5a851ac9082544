/* rsvision view: the page. Talks only to its own server (/api/...), draws with the vendored Leaflet.
 * Georeferenced views use Web Mercator tiles, the others pixel coordinates (CRS.Simple: lng = column,
 * lat = -row). Detections are fetched per viewport (bbox, score, classes filtered by the server).
 * window.__rsv exposes the page state (tiles loaded, features drawn) for tests. */
"use strict";
const S = { cat: null, map: null, view: null, base: null, masks: {}, vecs: {}, classes: [], timer: null };
window.__rsv = { ready: false, tiles: 0, drawn: {}, requests: 0 };

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  kids.forEach((c) => e.append(c));
  return e;
};
const api = (url) => fetch(url).then((r) => { if (!r.ok) throw new Error(url + ": " + r.status); return r.json(); });
const fmt = (v) => (typeof v === "number" ? (Math.abs(v) >= 100 || Number.isInteger(v) ? String(v) : v.toFixed(4)) : v == null ? "-" : String(v));

/* The hues of rsvision.viz.boxes.class_colors (golden-ratio steps, s 0.85, v 1), so boxes look as in the PNGs. */
function classColor(i) {
  const h = (i * 0.618033988749895) % 1, s = 0.85, v = 1;
  const k = Math.floor(h * 6), f = h * 6 - k, p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
  const [r, g, b] = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][k % 6];
  return [Math.trunc(r * 255), Math.trunc(g * 255), Math.trunc(b * 255)];
}
window.rsvClassColor = classColor;
function colorOf(name) {
  let i = S.classes.indexOf(name);
  if (i < 0) { S.classes.push(name); i = S.classes.length - 1; }
  const [r, g, b] = classColor(i);
  return `rgb(${r},${g},${b})`;
}

async function start() {
  S.cat = await api("/api/catalog");
  S.classes = S.cat.detection_classes.slice();
  $("root").textContent = S.cat.root;
  const list = (id, items, label, onclick) => {
    const ul = $(id);
    if (!items.length) { $(id + "-box").hidden = true; return; }
    items.forEach((it) => ul.append(el("li", { "data-id": it.id, text: label(it), on: { click: () => onclick(it) } })));
  };
  list("views", S.cat.views.filter((v) => !v.example), (v) => v.name + ((n) => (n ? ` (${n} layer${n > 1 ? "s" : ""})` : ""))(v.vectors.length + v.masks.length),
       (v) => { location.hash = "view=" + v.id; });
  list("runs", S.cat.runs, (r) => r.rel, (r) => { location.hash = "run=" + r.id; });
  list("evals", S.cat.evals, (e) => `${e.rel} (${e.task})`, (e) => { location.hash = "eval=" + e.id; });
  list("pictures", S.cat.pictures.map((p) => ({ id: p })), (p) => p.id,
       (p) => window.open("/api/file?path=" + encodeURIComponent(p.id)));
  window.addEventListener("hashchange", route);
  $("panel-close").onclick = () => { $("panel").hidden = true; };
  if (!location.hash) {
    const first = S.cat.views[0] || null;
    if (first) location.hash = "view=" + first.id;
    else if (S.cat.runs.length) location.hash = "run=" + S.cat.runs[0].id;
    else if (S.cat.evals.length) location.hash = "eval=" + S.cat.evals[0].id;
    if (location.hash) return;  // the hashchange event opens it
  }
  route();
}

function route() {
  const [kind, id] = location.hash.slice(1).split("=");
  document.querySelectorAll("#side li").forEach((li) => li.classList.toggle("active", li.dataset.id === id));
  if (kind === "view") { const v = S.cat.views.find((x) => x.id === id); if (v) openView(v); }
  else if (kind === "run") openRun(id);
  else if (kind === "eval") openEval(id);
}

/* ---------------- map views ---------------- */
function openView(v) {
  if (S.map) S.map.remove();
  const token = (S.token = (S.token || 0) + 1);  // a later openView supersedes this one's pending work
  S.view = v; S.masks = {}; S.vecs = {};
  window.__rsv.ready = false; window.__rsv.tiles = 0; window.__rsv.drawn = {};
  $("panel").hidden = true;
  const b = v.base;
  const opts = { preferCanvas: true, attributionControl: !!S.cat.basemap, fadeAnimation: false };  // tiles shown as loaded
  if (!v.georef) Object.assign(opts, { crs: L.CRS.Simple, minZoom: -8, maxZoom: 6 });
  else Object.assign(opts, { maxZoom: 22 });
  S.map = L.map("map", opts);
  if (v.georef && S.cat.basemap) L.tileLayer(S.cat.basemap, { maxZoom: 22, attribution: "basemap: " + S.cat.basemap }).addTo(S.map);
  let bounds = null;
  if (b) bounds = b.georef ? L.latLngBounds([b.bounds[1], b.bounds[0]], [b.bounds[3], b.bounds[2]])
                           : L.latLngBounds([-b.height, 0], [0, b.width]);
  else if (v.masks.length) {
    const m = v.masks[0];
    bounds = m.georef ? L.latLngBounds([m.bounds[1], m.bounds[0]], [m.bounds[3], m.bounds[2]]) : L.latLngBounds([-m.height, 0], [0, m.width]);
  }
  const pending = [];
  if (b) pending.push(addBase(b, bounds));
  v.masks.forEach((m) => pending.push(addMask(m)));
  sceneControls(b);
  $("layer-controls").replaceChildren();
  v.masks.forEach((m) => maskControls(m));
  const loaded = (async () => {
    for (const src of v.vectors) {
      const sm = await api(`/api/vectors/${src.id}/summary`);
      if (token !== S.token) return;
      Object.keys(sm.classes).sort().forEach((c) => colorOf(c));
      S.vecs[src.id] = { src, sm, on: src.role !== "ground truth", hidden: new Set(), minScore: 0, layer: null };
      vectorControls(S.vecs[src.id]);
      if (!bounds && sm.bounds) bounds = L.latLngBounds([sm.bounds[1], sm.bounds[0]], [sm.bounds[3], sm.bounds[2]]);
    }
  })();
  loaded.then(() => {
    if (token !== S.token) return null;
    S.map.fitBounds(bounds || L.latLngBounds([-256, 0], [0, 256]));
    S.map.on("moveend", scheduleFetch);
    return Promise.all([...pending, refreshAll()]);
  }).then(() => { if (token === S.token) window.__rsv.ready = true; }).catch((e) => status("error: " + e.message));
}

function addBase(b, bounds) {
  const q = () => `bands=${b.bands || b.rgb.join(",")}&stretch=${b.stretch || "auto"}`;
  const layer = L.tileLayer(`/api/tiles/${b.id}/{z}/{x}/{y}.png?` + q(), {
    tileSize: 256, bounds, noWrap: true, maxZoom: 22, maxNativeZoom: b.georef ? 22 : 3, minZoom: -8, keepBuffer: 1 });
  layer.on("tileload", () => { window.__rsv.tiles += 1; });
  S.base = { layer, b, q };
  layer.addTo(S.map);
  return new Promise((res) => layer.once("load", res));
}

function sceneControls(b) {
  const box = $("scene-controls");
  box.replaceChildren();
  if (!b) return;
  const d = el("div", { class: "box" }, el("h4", { text: `${b.name}  ${b.width}×${b.height}, ${b.count} band(s), ${b.dtype}${b.georef ? "" : ", pixel coordinates"}` }));
  const redraw = () => { S.base.layer.setUrl(`/api/tiles/${b.id}/{z}/{x}/{y}.png?` + S.base.q()); };
  if (b.count > 1) {
    const sels = ["R", "G", "B"].map((ch, k) => {
      const s = el("select", { "aria-label": ch, on: { change: () => { b.bands = sels.map((x) => x.value).join(","); redraw(); } } });
      b.band_names.forEach((n, i) => s.append(el("option", { value: i + 1, text: `${i + 1}: ${n}` })));
      s.value = String(b.rgb[k]);
      return s;
    });
    d.append(el("label", { class: "row" }, "bands", ...sels));
  }
  const st = el("select", { id: "stretch", on: { change: () => { b.stretch = st.value; redraw(); } } });
  [["auto", "auto (2-98 % unless uint8)"], ["percentile", "2-98 % stretch"], ["none", "as stored"]].forEach(([v, t]) => st.append(el("option", { value: v, text: t })));
  d.append(el("label", { class: "row" }, "contrast", st));
  box.append(d);
}

function addMask(m) {
  const hidden = new Set();
  const url = () => `/api/masks/${m.id}/{z}/{x}/{y}.png?hide=${[...hidden].join(",")}`;
  const layer = L.tileLayer(url(), { tileSize: 256, noWrap: true, maxZoom: 22, maxNativeZoom: m.georef ? 22 : 3, minZoom: -8, opacity: 0.5 });
  layer.addTo(S.map);
  S.masks[m.id] = { m, layer, hidden, url };
  return new Promise((res) => layer.once("load", res));
}

function maskControls(m) {
  const st = S.masks[m.id];
  const on = el("input", { type: "checkbox", checked: "", on: { change: () => (on.checked ? st.layer.addTo(S.map) : st.layer.remove()) } });
  const op = el("input", { type: "range", min: 0, max: 1, step: 0.05, value: 0.5, on: { input: () => st.layer.setOpacity(+op.value) } });
  const legend = el("div", { class: "legend" });
  m.classes.forEach((c, i) => {
    const cb = el("input", { type: "checkbox", checked: "", on: { change: () => {
      cb.checked ? st.hidden.delete(i) : st.hidden.add(i); st.layer.setUrl(st.url()); } } });
    const [r, g, b] = m.palette[i] || [0, 0, 0];
    legend.append(el("label", { class: "cls" }, cb, el("span", { class: "sw", style: `background:rgb(${r},${g},${b})` }), c));
  });
  $("layer-controls").append(el("div", { class: "box", "data-mask": m.id },
    el("h4", {}, el("label", { class: "row" }, on, "mask: " + m.rel)), el("label", { class: "row" }, "opacity", op), legend));
}

function vectorControls(st) {
  const { src, sm } = st;
  const box = el("div", { class: "box", "data-layer": src.id });
  const on = el("input", { type: "checkbox", on: { change: () => { st.on = on.checked; refresh(st); } } });
  on.checked = st.on;
  box.append(el("h4", {}, el("label", { class: "row" }, on, `${src.role}: ${src.name}`)),
             el("div", { class: "muted", text: `${sm.count} features` }));
  if (sm.scored) {
    const val = el("span", { text: "0.00" });
    const sl = el("input", { type: "range", min: 0, max: 1, step: 0.01, value: 0, "aria-label": "minimum score",
                             on: { input: () => { st.minScore = +sl.value; val.textContent = (+sl.value).toFixed(2); scheduleFetch(); } } });
    box.append(el("label", { class: "row" }, "score ≥", sl, val));
  }
  Object.entries(sm.classes).forEach(([c, n]) => {
    const cb = el("input", { type: "checkbox", checked: "", "data-class": c, on: { change: () => {
      cb.checked ? st.hidden.delete(c) : st.hidden.add(c); refresh(st); } } });
    box.append(el("label", { class: "cls" }, cb, el("span", { class: "sw", style: `background:${colorOf(c)}` }), `${c} (${n})`));
  });
  st.count = el("div", { class: "muted" });
  box.append(st.count);
  $("layer-controls").append(box);
}

function scheduleFetch() { clearTimeout(S.timer); S.timer = setTimeout(refreshAll, 120); }
function refreshAll() { return Promise.all(Object.values(S.vecs).map(refresh)); }

async function refresh(st) {
  const map = S.map;
  if (!st.on) { if (st.layer) st.layer.remove(); st.layer = null; window.__rsv.drawn[st.src.id] = 0; st.count.textContent = ""; return; }
  const bb = map.getBounds();
  const classes = Object.keys(st.sm.classes).filter((c) => !st.hidden.has(c));
  const q = new URLSearchParams({ bbox: [bb.getWest(), bb.getSouth(), bb.getEast(), bb.getNorth()].join(","),
                                  min_score: st.minScore, classes: classes.join(","), limit: 5000 });
  const seq = (st.seq = (st.seq || 0) + 1);
  window.__rsv.requests += 1;
  const fc = await api(`/api/vectors/${st.src.id}?${q}`);
  if (seq !== st.seq || map !== S.map) return;  // a newer request (or another view) superseded this one
  const gt = st.src.role === "ground truth";
  const layer = L.geoJSON(fc, {
    style: (f) => ({ color: colorOf(f.properties.class), weight: 2, opacity: 1, fillOpacity: gt ? 0 : 0.12, dashArray: gt ? "4 3" : null }),
    onEachFeature: (f, l) => l.bindPopup(`<b>${f.properties.class}</b>` + (f.properties.score != null ? `<br>score ${f.properties.score.toFixed(3)}` : "")),
  });
  if (st.layer) st.layer.remove();
  st.layer = layer.addTo(map);
  window.__rsv.drawn[st.src.id] = fc.returned;
  st.count.textContent = `${fc.returned} drawn of ${fc.total} in view` + (fc.truncated ? " (best scores; zoom in for the rest)" : "");
}

function status(t) { $("status").textContent = t; }

/* ---------------- runs and evaluations ---------------- */
function showPanel(...kids) { $("panel-body").replaceChildren(...kids); $("panel").hidden = false; }

async function openRun(id) {
  const r = await api(`/api/runs/${id}`);
  const last = el("table", {}, el("tr", {}, el("th", { text: "metric" }), el("th", { text: "last" })));
  Object.entries(r.last).sort().forEach(([k, v]) => last.append(el("tr", {}, el("td", { text: k }), el("td", { text: fmt(v) }))));
  const files = el("ul");
  r.files.filter((f) => !f.endsWith(".ckpt")).forEach((f) => files.append(el("li", {},
    el("a", { href: "/api/file?path=" + encodeURIComponent(r.rel === "." ? f : `${r.rel}/${f}`), target: "_blank", text: f }))));
  showPanel(el("h3", { text: "run " + r.rel }), el("img", { src: `/api/runs/${id}/curves.png`, alt: "training curves" }),
            last, el("b", { text: "files" }), files);
}

async function openEval(id) {
  const e = await api(`/api/evals/${id}`);
  const head = el("table");
  Object.entries(e.headline).forEach(([k, v]) => head.append(el("tr", {}, el("td", { text: k }), el("td", { text: fmt(v) }))));
  const per = el("table", { id: "per-class" }, el("tr", {}, el("th", { text: "class" }), ...e.columns.map((c) => el("th", { text: c }))));
  const worstBox = el("div", { id: "worst" });
  e.rows.forEach((row) => {
    const w = e.worst[row.class];
    const name = w && w.length ? el("a", { class: "cls-link", text: row.class, on: { click: () => showWorst(row.class, w, worstBox) } })
                               : document.createTextNode(row.class);
    per.append(el("tr", {}, el("td", {}, name), ...e.columns.map((c) => el("td", { text: fmt(row[c]) }))));
  });
  const kids = [el("h3", { text: `${e.task} evaluation: ${e.rel}` }), head, per, worstBox];
  if (e.confusion_matrix && e.classes) kids.push(el("h4", { text: "confusion matrix (rows: true, columns: predicted)" }), confusion(e.confusion_matrix, e.classes));
  showPanel(...kids);
}

function showWorst(cls, items, box) {
  const ul = el("ul");
  items.forEach((it) => {
    const what = it.FP ? ` (${it.FP[cls] || 0} false, ${it.missed[cls] || 0} missed)` : it.value != null ? ` (${fmt(it.value)})` : "";
    const label = `${it.image}` + (it.pred != null ? ` → ${it.pred}` : "") + what;
    const link = it.view ? el("a", { href: "#view=" + it.view, text: label })
               : it.rel ? el("a", { href: "/api/file?path=" + encodeURIComponent(it.rel), target: "_blank", text: label })
               : el("span", { text: label });
    ul.append(el("li", {}, link));
  });
  box.replaceChildren(el("h4", { text: `worst examples of ${cls}` }), ul);
}

function confusion(cm, classes) {
  const t = el("table", { class: "cm" }, el("tr", {}, el("th"), ...classes.map((c) => el("th", { text: c }))));
  cm.forEach((row, i) => {
    const n = Math.max(1, row.reduce((a, b) => a + b, 0));
    t.append(el("tr", {}, el("th", { text: classes[i] }), ...row.map((v) => {
      const a = v / n;
      return el("td", { text: v, style: `background:rgba(33,102,172,${a.toFixed(3)});color:${a > 0.5 ? "#fff" : "#000"}` });
    })));
  });
  return t;
}

start().catch((e) => status("error: " + e.message));

// Sky products pages: fetch the plugin's JSON API (same origin, the UI's login cookie) and draw.
// No framework and nothing loaded from elsewhere; plots are inline SVG built here.
"use strict";

const API = "../api/";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function getJSON(path) {
  const resp = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = JSON.stringify((await resp.json()).detail); } catch (e) { /* not JSON */ }
    throw new Error(`${resp.status} ${detail} (${path})`);
  }
  return resp.json();
}

function showError(err) {
  const p = document.getElementById("error");
  p.textContent = String(err.message || err);
  p.hidden = false;
}

const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits));
const mjy = (x, digits = 2) => (x === null || x === undefined ? "–" : (1000 * x).toFixed(digits));
const utc = (iso) => (iso ? iso.replace("T", " ").replace("+00:00", "") : "–");
const params = () => new URLSearchParams(window.location.search);

function badge(qa) {
  return el("span", { class: `badge qa-${qa || "none"}`, text: qa ? `QA ${qa}` : "no QA" });
}

function ago(seconds) {
  if (seconds < 120) return `${Math.round(seconds)} s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h ago`;
  return `${(seconds / 86400).toFixed(1)} days ago`;
}

function fillRows(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c)))));
}

function pager(node, page, pages, go) {
  node.replaceChildren();
  if (pages <= 1) return;
  const prev = el("button", { type: "button", text: "‹ previous" });
  const next = el("button", { type: "button", text: "next ›" });
  prev.disabled = page <= 1;
  next.disabled = page >= pages;
  prev.onclick = () => go(page - 1);
  next.onclick = () => go(page + 1);
  node.append(prev, ` page ${page} of ${pages} `, next);
}

// -- Sky products: status tiles, mosaic gallery, image table ----------------------------------
async function skyPage() {
  const [status, mosaics] = await Promise.all([getJSON(`${API}status`), getJSON(`${API}mosaics?per_page=60`)]);
  document.getElementById("st-inflight").textContent = status.groups_in_flight;
  const n = status.newest_image;
  document.getElementById("st-newest").textContent = n ? `${n.name} · ${ago(n.age_s)}` : "none yet";
  const cal = status.calibration;
  document.getElementById("st-cal").textContent = cal.valid
    ? `valid until ${utc(cal.valid_until)} (${cal.sets.join(", ")})` : "none in force";
  document.getElementById("st-cal").className = `value ${cal.valid ? "ok" : "warn"}`;
  const fail = document.getElementById("st-fail");
  fail.textContent = status.failures_24h;
  fail.title = status.failures.map((f) => `${f.group_id || f.calibration_set}: ${f.message}`).join("\n");
  fail.className = `value ${status.failures_24h ? "warn" : "ok"}`;

  const gallery = document.getElementById("mosaics");
  gallery.replaceChildren(...mosaics.items.map(mosaicCard));
  if (!mosaics.items.length) gallery.append(el("p", { class: "muted", text: "No mosaics yet." }));
  await imagesTable(1);
}

function mosaicCard(m) {
  const link = el("a", { href: `product?id=${m.id}`, class: "card", "data-window": m.window || "" });
  if (m.has_preview) link.append(el("img", { src: `${API}products/${m.id}/preview.png`, alt: `mosaic ${m.name}`, loading: "lazy" }));
  else link.append(el("div", { class: "noimg", text: "no preview" }));
  link.append(el("div", { class: "card-title", text: m.name }),
    el("div", {}, badge(m.qa_status), " ", el("span", { class: `badge st-${m.status}`, text: m.status })),
    el("div", { class: "muted", text: `rms ${mjy(m.qa.rms_jy)} mJy/beam · ${m.qa.n_inputs ?? "?"} images` }));
  return link;
}

async function imagesTable(page) {
  const res = await getJSON(`${API}images?page=${page}&per_page=25`);
  fillRows(document.querySelector("#images tbody"), res.items.map((i) => [
    el("a", { href: `product?id=${i.id}`, text: i.group_id || i.name }), utc(i.mid_time), badge(i.qa_status),
    mjy(i.qa.rms_jy), fmt(i.qa.peak_jy), fmt(i.qa.dynamic_range, 0), i.status]));
  pager(document.getElementById("images-pager"), page, Math.ceil(res.total / res.per_page), imagesTable);
}

// -- Product detail: preview, facts, QA, provenance, inputs, cross-match -------------------------
async function productPage() {
  const id = params().get("id");
  if (!id) throw new Error("no product id given (?id=)");
  const p = await getJSON(`${API}products/${encodeURIComponent(id)}`);
  document.getElementById("title").textContent = `${p.kind} ${p.name}`;
  const img = document.getElementById("preview");
  if (p.has_preview) { img.src = `${API}products/${p.id}/preview.png`; img.hidden = false; }
  else document.getElementById("preview-caption").textContent = "no preview";
  document.getElementById("download").href = `${API}products/${p.id}/fits`;
  const beam = p.beam_arcsec ? `${fmt(p.beam_arcsec[0], 1)}″ × ${fmt(p.beam_arcsec[1], 1)}″, pa ${fmt(p.beam_arcsec[2], 1)}°` : "–";
  kv("facts", [["kind", p.kind], ["group", p.group_id || "–"], ["window", p.window || "–"],
    ["mid time (UTC)", utc(p.mid_time)], ["status", p.status], ["version", p.version], ["QA", badge(p.qa_status)],
    ["beam", beam], ["file", p.published_path || p.path]]);
  const m = p.metrics || {};
  const qaRows = [["rms (mJy/beam)", mjy(m.rms_jy, 3)], ["peak (Jy/beam)", fmt(m.peak_jy)],
    ["dynamic range", fmt(m.dynamic_range, 0)], ["flagged fraction", fmt(m.flagged_fraction)],
    ["inputs", m.n_inputs ?? "–"], ["method", m.method || "–"]];
  if (p.qa_reasons.length) qaRows.push(["reasons", p.qa_reasons.join("; ")]);
  kv("qa", qaRows.filter(([, v]) => v !== "–"));
  provenance(p.provenance);
  if (p.inputs.length) {
    document.getElementById("inputs-title").hidden = false;
    document.getElementById("inputs").hidden = false;
    fillRows(document.querySelector("#inputs tbody"), p.inputs.map((i) => [
      el("a", { href: `product?id=${i.id}`, text: i.name }), utc(i.mid_time), badge(i.qa_status), mjy(i.qa.rms_jy)]));
  }
  const matched = p.sources.filter((s) => s.matched).length;
  document.getElementById("xmatch-summary").textContent = p.sources.length
    ? `${p.sources.length} sources found, ${matched} matched to the reference catalogue` : "No sources recorded for this product.";
  fillRows(document.querySelector("#xmatch tbody"), p.sources.map((s) => [
    fmt(s.ra_deg, 4), fmt(s.dec_deg, 4), mjy(s.flux_jy, 1), mjy(s.flux_err_jy, 1),
    s.ref_name ? el("a", { href: `sources?name=${encodeURIComponent(s.ref_name)}&ra=${s.ra_deg}&dec=${s.dec_deg}&radius=0.1`, text: s.ref_name }) : "–",
    mjy(s.ref_flux_jy, 1), fmt(s.flux_ratio), fmt(s.offset_arcsec, 1)]));
}

function kv(id, rows) {
  fillRows(document.querySelector(`#${id} tbody`), rows);
  document.querySelectorAll(`#${id} tbody tr td:first-child`).forEach((td) => { td.className = "key"; });
}

function provenance(prov) {
  const box = document.getElementById("provenance");
  if (!prov) { box.append(el("p", { class: "muted", text: "No provenance recorded." })); return; }
  const cal = prov.calibration || [];
  if (cal.length) {
    box.append(el("p", { text: "Calibration applied: " }),
      el("ul", {}, ...cal.map((c) => el("li", {}, `${c.type} from `, el("a", { href: `calibration#${c.set}`, text: c.set })))));
  }
  const versions = prov.versions || prov.software;
  if (versions) box.append(el("p", { class: "muted", text: `software: ${Object.entries(versions).map(([k, v]) => `${k} ${v}`).join(", ")}` }));
  const details = el("details", {}, el("summary", { text: "full provenance (JSON)" }), el("pre", { text: JSON.stringify(prov, null, 2) }));
  box.append(details);
}

// -- Calibration: validity timeline (SVG) and table ----------------------------------------------
async function calibrationPage() {
  const sets = await getJSON(`${API}calibration`);
  fillRows(document.querySelector("#calsets tbody"), sets.map((s) => [
    el("span", { id: s.set_name, text: s.set_name }), s.kind,
    el("span", { class: `badge cal-${s.status}`, text: s.status, title: s.reason || "" }),
    utc(s.valid_from), utc(s.valid_to), s.calibrator || "–", s.tables.map((t) => t.type).join(" "),
    el("span", {}, ...s.plots.flatMap((t) => [el("a", { href: `${API}calibration/${encodeURIComponent(s.set_name)}/plots/${t}.png`, target: "_blank", text: `${t} plot` }), " "]))]));
  timeline(sets);
}

function timeline(sets) {
  const box = document.getElementById("timeline");
  if (!sets.length) { box.append(el("p", { class: "muted", text: "No calibration sets registered." })); return; }
  const t0 = Math.min(...sets.map((s) => s.valid_from_mjd));
  const t1 = Math.max(...sets.map((s) => s.valid_to_mjd));
  const W = 900, row = 26, left = 260, H = sets.length * row + 30;
  const x = (t) => left + ((t - t0) / Math.max(t1 - t0, 1e-6)) * (W - left - 10);
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-label": "calibration validity windows" });
  sets.forEach((s, i) => {
    const y = 10 + i * row;
    plot.append(svg("text", { x: 4, y: y + 15, class: "lbl" }, `${s.set_name} (${s.kind})`));
    const bar = svg("rect", { x: x(s.valid_from_mjd), y, width: Math.max(2, x(s.valid_to_mjd) - x(s.valid_from_mjd)), height: row - 8, class: `bar cal-${s.status}` });
    bar.append(svg("title", {}, `${s.set_name}: ${s.status}, ${utc(s.valid_from)} – ${utc(s.valid_to)}`));
    plot.append(bar);
  });
  plot.append(svg("text", { x: left, y: H - 4, class: "axis" }, utc(sets.reduce((a, s) => (s.valid_from_mjd === t0 ? s.valid_from : a), ""))),
    svg("text", { x: W - 10, y: H - 4, class: "axis", "text-anchor": "end" }, utc(sets.reduce((a, s) => (s.valid_to_mjd === t1 ? s.valid_to : a), ""))));
  const now = Date.now() / 86400000 + 40587;
  if (now >= t0 && now <= t1) plot.append(svg("line", { x1: x(now), x2: x(now), y1: 0, y2: H - 20, class: "now" }));
  box.append(plot);
}

// -- Sources: cone search, paging, light curve ------------------------------------------------------
async function sourcesPage() {
  const form = document.getElementById("cone");
  const q = params();
  for (const k of ["ra", "dec", "radius"]) if (q.get(k)) form.elements[k].value = q.get(k);
  form.onsubmit = (ev) => { ev.preventDefault(); Promise.all([cone(1), detections(1)]).catch(showError); };
  if (q.get("ra") && q.get("dec")) await Promise.all([cone(1), detections(1)]);
  if (q.get("name")) await lightCurve(q.get("name"));
}

async function cone(page) {
  const res = await getJSON(`${API}sources?${coneQuery(page)}`);
  document.getElementById("cone-summary").textContent =
    `${res.total} source${res.total === 1 ? "" : "s"} within ${res.radius_deg}° of (${res.ra_deg}, ${res.dec_deg})`;
  fillRows(document.querySelector("#hits tbody"), res.items.map((h) => {
    const a = el("a", { href: "#", text: h.name, class: "src" });
    a.onclick = (ev) => { ev.preventDefault(); lightCurve(h.name).catch(showError); };
    return [a, fmt(h.ra_deg, 4), fmt(h.dec_deg, 4), fmt(h.separation_arcsec, 1), h.n_measurements, mjy(h.mean_flux_jy, 1), utc(h.last_time)];
  }));
  pager(document.getElementById("hits-pager"), res.page, res.pages, (p) => cone(p).catch(showError));
}

function coneQuery(page) {
  const f = document.getElementById("cone").elements;
  return new URLSearchParams({ ra: f.ra.value, dec: f.dec.value, radius: f.radius.value, page, per_page: 25 });
}

async function detections(page) {
  const res = await getJSON(`${API}detections?${coneQuery(page)}`);
  const unmatched = res.items.filter((d) => !d.matched).length;
  document.getElementById("det-summary").textContent =
    `${res.total} detection${res.total === 1 ? "" : "s"} in the cone (this page: ${unmatched} without a reference match)`;
  fillRows(document.querySelector("#detections tbody"), res.items.map((d) => [
    fmt(d.ra_deg, 4), fmt(d.dec_deg, 4), fmt(d.separation_arcsec, 1), mjy(d.flux_jy, 1), mjy(d.flux_err_jy, 1),
    d.matched ? d.ref_name : el("span", { class: "badge qa-bad", text: "no match" }),
    el("a", { href: `product?id=${d.product_id}`, text: d.product_name }), utc(d.time)]));
  pager(document.getElementById("det-pager"), res.page, res.pages, (p) => detections(p).catch(showError));
}

async function lightCurve(name) {
  const lc = await getJSON(`${API}sources/photometry?name=${encodeURIComponent(name)}`);
  document.getElementById("lightcurve").hidden = false;
  document.getElementById("lc-title").textContent = `Light curve: ${lc.name}`;
  const v = lc.variability;
  document.getElementById("lc-stats").textContent =
    `${v.n} measurement${v.n === 1 ? "" : "s"}; mean ${mjy(v.mean_flux_jy, 1)} mJy; V ${fmt(v.V)}; η ${fmt(v.eta, 2)}`;
  document.getElementById("lc-plot").replaceChildren(lightCurveSvg(lc.points));
}

function lightCurveSvg(points) {
  const W = 700, H = 260, L = 60, R = 15, T = 15, B = 40;
  const ts = points.map((p) => p.mid_mjd);
  const lo = Math.min(...points.map((p) => p.flux_jy - (p.flux_err_jy || 0)));
  const hi = Math.max(...points.map((p) => p.flux_jy + (p.flux_err_jy || 0)));
  const pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.1 || 0.001;
  const tmin = Math.min(...ts), tmax = Math.max(...ts), span = tmax - tmin || 1 / 24;
  const x = (t) => L + ((t - tmin + (tmax === tmin ? span / 2 : 0)) / span) * (W - L - R);
  const y = (f) => T + (1 - (f - (lo - pad)) / (hi - lo + 2 * pad)) * (H - T - B);
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-label": "light curve", class: "lc" });
  plot.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "frame" }), svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "frame" }));
  for (const f of [lo - pad, (lo + hi) / 2, hi + pad]) {
    plot.append(svg("text", { x: L - 6, y: y(f) + 4, class: "axis", "text-anchor": "end" }, (1000 * f).toFixed(1)));
  }
  plot.append(svg("text", { x: 12, y: T + (H - T - B) / 2, class: "axis", transform: `rotate(-90 12 ${T + (H - T - B) / 2})`, "text-anchor": "middle" }, "flux (mJy)"));
  plot.append(svg("text", { x: L, y: H - 8, class: "axis" }, utc(points[0].time)),
    svg("text", { x: W - R, y: H - 8, class: "axis", "text-anchor": "end" }, utc(points[points.length - 1].time)));
  if (points.length > 1) {
    plot.append(svg("polyline", { points: points.map((p) => `${x(p.mid_mjd)},${y(p.flux_jy)}`).join(" "), class: "trend" }));
  }
  for (const p of points) {
    const e = p.flux_err_jy || 0;
    plot.append(svg("line", { x1: x(p.mid_mjd), x2: x(p.mid_mjd), y1: y(p.flux_jy - e), y2: y(p.flux_jy + e), class: "err" }));
    const dot = svg("circle", { cx: x(p.mid_mjd), cy: y(p.flux_jy), r: 4, class: "pt" });
    dot.append(svg("title", {}, `${utc(p.time)}: ${mjy(p.flux_jy, 2)} ± ${mjy(p.flux_err_jy, 2)} mJy`));
    plot.append(dot);
  }
  return plot;
}

// -- Run products: what a DAG run made (shown on the run's page in the Airflow UI) ------------------
async function runPage() {
  const q = params();
  const dagId = q.get("dag_id"), runId = q.get("run_id");
  const summary = document.getElementById("run-summary");
  const run = await getJSON(`/api/v2/dags/${encodeURIComponent(dagId)}/dagRuns/${encodeURIComponent(runId)}`);
  let items = [];
  if (dagId === "group" && run.conf && run.conf.group_id) {
    const images = await getJSON(`${API}images?per_page=500`);
    items = images.items.filter((i) => i.group_id === run.conf.group_id);
    summary.textContent = `Group ${run.conf.group_id}`;
  } else if (dagId === "mosaic" && run.data_interval_start) {
    const d = new Date(run.data_interval_start);
    const p2 = (n) => String(n).padStart(2, "0");
    const win = `${d.getUTCFullYear()}-${p2(d.getUTCMonth() + 1)}-${p2(d.getUTCDate())}T${p2(d.getUTCHours())}${p2(d.getUTCMinutes())}`;
    const mosaics = await getJSON(`${API}mosaics?per_page=500`);
    items = mosaics.items.filter((m) => m.window && m.window.startsWith(win));
    summary.textContent = `Mosaic window ${win}`;
  } else {
    summary.textContent = `Run ${runId} of ${dagId} makes no sky products of its own.`;
  }
  if ((dagId === "group" || dagId === "mosaic") && !items.length) summary.textContent += ": no products registered yet.";
  document.getElementById("run-products").replaceChildren(...items.map((i) => el("li", {},
    el("a", { href: `product?id=${i.id}`, text: `${i.kind} ${i.name}` }), " ", badge(i.qa_status), ` ${i.status}`)));
}

const PAGES = { sky: skyPage, product: productPage, calibration: calibrationPage, sources: sourcesPage, run: runPage };

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  (PAGES[page] || (async () => {}))().then(() => { document.body.dataset.ready = "1"; }, (err) => {
    showError(err);
    document.body.dataset.ready = "error";
  });
});

"use strict";
// The search page. A query is an image (dropped, pasted or chosen), an image id or, where
// the store's model reads text (CLIP, SigLIP: /status says text_queries), words; the
// answer is a grid of cards, and a card's click searches for more like it. An id or words
// live in the URL (?id=17&k=10&mode=...&collapse_duplicates=true, ?text=a+red+bicycle&k=10),
// so back/forward and bookmarks work; an image cannot, so its history entry keeps the file
// in memory (`uploads`) for this page's life.
// Data from the server is only ever inserted with textContent.

const $ = (id) => document.getElementById(id);
const uploads = new Map(); // history entry number -> {file, url} of an image query
const MAX_UPLOADS = 20;
let current = null; // {id}, {text} or {upload}: what the grid shows (re-run when k or mode change)
let seq = 0; // number of the newest request: older answers are dropped
let entry = 0; // numbers the image queries
const PAGE = Math.random().toString(36).slice(2); // entries of an earlier page life differ
let downloadUrl = null;
let maxUpload = null; // the server's upload limit in bytes (from /status)

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function options() {
  const p = new URLSearchParams({ k: $("k").value });
  if ($("mode").value) p.set("mode", $("mode").value);
  if ($("collapse").checked) p.set("collapse_duplicates", "true");
  return p;
}

function applyOptions(params) {
  const k = params.get("k");
  if (k && /^[1-9]\d*$/.test(k)) {
    if (![...$("k").options].some((o) => o.value === k)) $("k").add(new Option(k, k));
    $("k").value = k;
  }
  const mode = params.get("mode");
  if (mode && [...$("mode").options].some((o) => o.value === mode)) $("mode").value = mode;
  $("collapse").checked = params.get("collapse_duplicates") === "true";
}

function megabytes(bytes) {
  return `${(bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 2 : 1)} MB`;
}

function errorText(body, res) {
  const d = body && body.detail;
  if (res.status === 413) return `Too large: ${typeof d === "string" ? d : "the upload"}`;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) return d.map((e) => e.msg || JSON.stringify(e)).join("; ");
  return `${res.status} ${res.statusText || "error"}`;
}

// --------------------------------------------------------------- showing an answer

function card(r) {
  const fig = document.createElement("figure");
  fig.className = "result";
  fig.dataset.id = String(r.id);
  fig.tabIndex = 0;
  fig.title = `${r.key}: search for more like this`;
  const img = document.createElement("img");
  img.src = `/image/${encodeURIComponent(r.id)}`;
  img.alt = r.key;
  img.loading = "lazy";
  const cap = document.createElement("figcaption");
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = Number(r.score).toFixed(3);
  const key = document.createElement("span");
  key.className = "key";
  key.textContent = r.key;
  cap.append(score, key);
  fig.append(img, cap);
  return fig;
}

function render(response, name) {
  const items = response ? response.results.flatMap((q) => q.results) : [];
  $("results").replaceChildren(...items.map(card));
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = null;
  if (response) {
    const json = JSON.stringify(response, null, 2);
    downloadUrl = URL.createObjectURL(new Blob([json], { type: "application/json" }));
    $("download").href = downloadUrl;
    $("download").download = `results-${name}.json`;
    const n = items.length;
    setStatus(`${n} result${n === 1 ? "" : "s"} in ${Number(response.took_ms).toFixed(1)} ms`);
  }
  $("download").hidden = !response;
}

function showQuery(src, label) {
  $("query").hidden = false;
  $("query-img").hidden = !src; // words have no picture
  if (src) $("query-img").src = src;
  $("query-label").textContent = label;
}

async function describe(id) {
  try {
    const res = await fetch(`/items/${encodeURIComponent(id)}`);
    const item = res.ok ? await res.json() : null;
    if (item && current && current.id === id) {
      $("query-label").textContent = `Image id ${id} · ${item.key}`;
    }
  } catch {
    // the label keeps the id alone
  }
}

// --------------------------------------------------------------- running a query

async function post(params, init, name) {
  const mine = ++seq;
  setStatus("Searching…");
  let res, body;
  try {
    res = await fetch(`/search?${params}`, { method: "POST", ...init });
    body = await res.json().catch(() => null);
  } catch (err) {
    res = null;
    body = { detail: `cannot reach the server (${err.message})` };
  }
  if (mine !== seq) return; // a newer query was started meanwhile
  if (res && res.ok && body) {
    render(body, name);
  } else {
    render(null);
    setStatus(errorText(body, res || {}), true);
  }
}

// how: "push" (a new history entry), "replace" (the same entry, new options) or "none"
function go(query, how) {
  current = query;
  const url = new URLSearchParams(query.upload ? {} : query); // id=17 or text=...
  options().forEach((v, k) => url.set(k, v));
  const state = query.upload ? { upload: query.upload } : { ...query };
  if (how === "push") history.pushState(state, "", `?${url}`);
  if (how === "replace") history.replaceState(state, "", `?${url}`);
  const params = options();
  if (query.upload) {
    const u = uploads.get(query.upload);
    showQuery(u.url, `Uploaded image: ${u.file.name || "pasted image"}`);
    const form = new FormData();
    form.append("image", u.file, u.file.name || "pasted-image");
    return post(params, { body: form }, "upload");
  }
  const json = { headers: { "Content-Type": "application/json" } };
  if (query.text !== undefined) {
    $("query-text").value = query.text;
    showQuery(null, `Words: ${query.text}`);
    return post(params, { ...json, body: JSON.stringify({ texts: [query.text] }) }, "text");
  }
  $("query-id").value = query.id;
  showQuery(`/image/${encodeURIComponent(query.id)}`, `Image id ${query.id}`);
  describe(query.id);
  params.set("exclude_self", "true");
  return post(params, { ...json, body: JSON.stringify({ ids: [query.id] }) }, `id${query.id}`);
}

function upload(file) {
  if (!file) return;
  if (maxUpload && file.size > maxUpload) {
    // refused here: sent, it would get a 413, or a reset while it is still being sent
    setStatus(`Too large: this image is ${megabytes(file.size)}; the server takes uploads ` +
      `up to ${megabytes(maxUpload)} (its --max-upload-mb).`, true);
    return;
  }
  const n = `${PAGE}:${++entry}`;
  uploads.set(n, { file, url: URL.createObjectURL(file) });
  for (const old of uploads.keys()) {
    if (uploads.size <= MAX_UPLOADS) break;
    URL.revokeObjectURL(uploads.get(old).url);
    uploads.delete(old);
  }
  go({ upload: n }, "push");
}

function fromLocation(state) {
  const params = new URLSearchParams(location.search);
  applyOptions(params);
  const id = params.get("id");
  if (id !== null && /^\d+$/.test(id)) return go({ id: Number(id) }, "none");
  const text = params.get("text");
  if (text !== null && text.trim()) return go({ text }, "none");
  if (state && uploads.has(state.upload)) return go({ upload: state.upload }, "none");
  current = null;
  seq++;
  render(null);
  $("query").hidden = true;
  setStatus(state && state.upload ? "That image is no longer in memory: choose it again." : "");
}

// --------------------------------------------------------------- wiring

async function loadModes() {
  const select = $("mode");
  try {
    const res = await fetch("/status");
    if (!res.ok) throw new Error(`${res.status} ${res.statusText}`);
    const s = await res.json();
    maxUpload = s.max_upload_bytes || null;
    const modes = s.modes || [];
    select.replaceChildren(...modes.map((m) => new Option(m, m, false, m === s.default_mode)));
    $("collapse-label").hidden = !s.duplicate_groups; // only once the groups exist
    $("text-form").hidden = !s.text_queries; // only where the model reads text
  } catch (err) {
    setStatus(`Cannot read the server's status: ${err.message}`, true);
  }
  if (!select.options.length) select.add(new Option("default", ""));
}

function wire() {
  $("file").addEventListener("change", (e) => {
    upload(e.target.files[0]);
    e.target.value = ""; // choosing the same file again is a new query
  });
  $("id-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("query-id").value.trim();
    if (!/^\d+$/.test(text)) return setStatus("Type an image id (a whole number).", true);
    go({ id: Number(text) }, "push");
  });
  $("text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("query-text").value.trim();
    if (!text) return setStatus("Type some words, e.g. a red bicycle.", true);
    go({ text }, "push");
  });
  const pick = (e) => {
    const fig = e.target.closest("figure.result");
    if (fig) go({ id: Number(fig.dataset.id) }, "push");
  };
  $("results").addEventListener("click", pick);
  $("results").addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(e); }
  });
  for (const id of ["k", "mode", "collapse"]) {
    $(id).addEventListener("change", () => current && go(current, "replace"));
  }
  const drop = $("drop");
  for (const t of ["dragenter", "dragover"]) {
    document.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  document.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) drop.classList.remove("over");
  });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) upload(file); else setStatus("Drop an image file.", true);
  });
  document.addEventListener("paste", (e) => {
    const items = e.clipboardData ? [...e.clipboardData.items] : [];
    const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (!item) return; // text pasted into the id box stays text
    e.preventDefault();
    upload(item.getAsFile());
  });
  window.addEventListener("popstate", (e) => fromLocation(e.state));
}

async function main() {
  wire();
  await loadModes();
  fromLocation(history.state);
}

main();

"""The web page at ``/``: pick, drop or paste a photo, or take one with the webcam; see the top classes.

One self-contained HTML document (inline CSS and JS, nothing fetched from elsewhere). It reads the
model from ``GET /v1/model`` and sends the photo to ``POST /v1/predict``. Class names are inserted
as text, never as HTML.
"""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>transferkit classifier</title>
<style>
  :root { --fg:#1d2430; --muted:#6b7380; --accent:#2f6fde; --bg:#f6f7f9; --card:#fff; }
  * { box-sizing:border-box; }
  body { margin:0; font:16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg); }
  main { max-width:760px; margin:0 auto; padding:24px 16px 48px; }
  h1 { font-size:1.35rem; margin:0 0 4px; }
  #model { color:var(--muted); font-size:.9rem; margin-bottom:16px; }
  #drop { border:2px dashed #b8c0cc; border-radius:12px; background:var(--card); padding:22px; text-align:center; cursor:pointer; }
  #drop.over { border-color:var(--accent); background:#eef4ff; }
  .buttons { margin-top:12px; display:flex; gap:8px; justify-content:center; flex-wrap:wrap; }
  button, label.button { font:inherit; padding:7px 14px; border-radius:8px; border:1px solid #c5ccd6; background:#fff; cursor:pointer; }
  button.primary { background:var(--accent); color:#fff; border-color:var(--accent); }
  #camera { display:none; margin-top:12px; text-align:center; }
  #camera video { max-width:100%; border-radius:8px; background:#000; }
  #result { display:none; margin-top:20px; background:var(--card); border-radius:12px; padding:16px; gap:16px; }
  #result.shown { display:flex; flex-wrap:wrap; }
  #preview { max-width:240px; max-height:240px; border-radius:8px; object-fit:contain; }
  #bars { flex:1; min-width:240px; }
  .row { margin:6px 0 10px; }
  .row .name { display:flex; justify-content:space-between; font-size:.95rem; }
  .row .track { height:14px; background:#e7eaef; border-radius:7px; overflow:hidden; }
  .row .fill { height:100%; background:var(--accent); border-radius:7px; }
  .row:first-child .name { font-weight:600; }
  #status { margin-top:12px; min-height:1.4em; color:var(--muted); }
  #status.error { color:#b3261e; }
  input[type=file] { display:none; }
</style>
</head>
<body>
<main>
  <h1>transferkit classifier</h1>
  <div id="model">loading the model...</div>
  <div id="drop" tabindex="0" aria-label="drop, paste or pick a photo">
    <div><strong>Drop a photo here</strong>, paste one (Ctrl+V), or</div>
    <div class="buttons">
      <label class="button" for="file">Choose a photo</label>
      <button type="button" id="webcam">Use the webcam</button>
    </div>
    <input type="file" id="file" name="file" accept="image/*">
  </div>
  <div id="camera">
    <video id="video" autoplay playsinline muted></video>
    <div class="buttons"><button type="button" class="primary" id="snap">Take photo</button>
      <button type="button" id="stop">Close camera</button></div>
  </div>
  <div id="status" role="status"></div>
  <section id="result" aria-live="polite">
    <img id="preview" alt="the photo sent">
    <div id="bars"></div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let stream = null;

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadModel() {
  try {
    const r = await fetch("/v1/model");
    const m = await r.json();
    const names = m.class_names.slice(0, 8).join(", ") + (m.class_names.length > 8 ? ", ..." : "");
    const acc = m.metrics && typeof m.metrics.accuracy === "number" ? " - test accuracy " + (100 * m.metrics.accuracy).toFixed(1) + " %" : "";
    const backbones = m.members ? m.members.join(" + ") : (m.backbone.name || "");
    $("model").textContent = m.class_names.length + " classes (" + names + ") - " + backbones + ", " + (m.precision || "") + acc;
  } catch (e) {
    $("model").textContent = "model information unavailable";
  }
}

function showBars(top) {
  const bars = $("bars");
  bars.replaceChildren();
  for (const t of top) {
    const row = document.createElement("div"); row.className = "row";
    const name = document.createElement("div"); name.className = "name";
    const label = document.createElement("span"); label.className = "label"; label.textContent = t.label;
    const pct = document.createElement("span"); pct.className = "pct"; pct.textContent = (100 * t.probability).toFixed(1) + " %";
    name.append(label, pct);
    const track = document.createElement("div"); track.className = "track";
    const fill = document.createElement("div"); fill.className = "fill"; fill.style.width = (100 * t.probability).toFixed(1) + "%";
    track.append(fill); row.append(name, track); bars.append(row);
  }
}

async function classify(blob, name) {
  if (!blob) return;
  $("preview").src = URL.createObjectURL(blob);
  setStatus("classifying " + (name || "photo") + "...", false);
  const form = new FormData();
  form.append("files", blob, name || "photo.jpg");
  try {
    const r = await fetch("/v1/predict?top_k=5", { method: "POST", body: form });
    const body = await r.json();
    if (!r.ok) { setStatus("error: " + (body.detail || r.status), true); $("result").classList.remove("shown"); return; }
    showBars(body.results[0].top);
    $("result").classList.add("shown");
    document.body.dataset.top = body.results[0].top[0].label;
    setStatus((name || "photo") + ": " + body.results[0].top[0].label, false);
  } catch (e) {
    setStatus("error: " + e, true);
  }
}

$("file").addEventListener("change", (e) => { const f = e.target.files[0]; if (f) classify(f, f.name); e.target.value = ""; });
const drop = $("drop");
drop.addEventListener("click", (e) => { if (e.target === drop) $("file").click(); });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  const f = [...e.dataTransfer.files].find((x) => x.type.startsWith("image/")) || e.dataTransfer.files[0];
  if (f) classify(f, f.name);
});
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData || {}).items || []].find((x) => x.type.startsWith("image/"));
  if (item) classify(item.getAsFile(), "pasted image");
});
$("webcam").addEventListener("click", async () => {
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true });
    $("video").srcObject = stream; $("camera").style.display = "block";
  } catch (e) { setStatus("no webcam available: " + e.message, true); }
});
function stopCamera() { if (stream) stream.getTracks().forEach((t) => t.stop()); stream = null; $("camera").style.display = "none"; }
$("stop").addEventListener("click", stopCamera);
$("snap").addEventListener("click", () => {
  const v = $("video"), c = document.createElement("canvas");
  c.width = v.videoWidth; c.height = v.videoHeight; c.getContext("2d").drawImage(v, 0, 0);
  c.toBlob((b) => classify(b, "webcam.jpg"), "image/jpeg", 0.92);
});
loadModel();
</script>
</body>
</html>
"""

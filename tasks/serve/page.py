"""The page ``GET /`` answers: one self-contained HTML page (inline CSS and JavaScript, nothing
fetched from elsewhere), with the model's description in it.

* **Draw** (models of grey 8-bit images up to 64 x 64, :func:`tasks.serve.drawing.drawable`):
  a canvas, white ink on black, for the mouse, a pen or a finger (pointer events). While the
  person draws, the canvas goes to ``POST /drawing`` as a PNG (one request at a time, the
  latest drawing next); the server makes it an MNIST-style digit and the page shows it beside
  the bars ("what the model sees").
* **Upload** (every model): an image file, or for a table model a CSV (or Parquet) file of its
  feature columns, sent to ``POST /predict`` as TensorFlow Serving's ``{"b64": ...}``; a table
  model also takes a row typed in (its training means to start with).
* **The class probabilities** as bars with the class names (all classes up to 20, else the
  10 most probable), the most probable class above them.
* **The model card** in a side panel, from ``model.json``: data, accuracy, hyperparameters,
  how it was chosen, and the API with this server's address.
"""

from __future__ import annotations

import json
import math
from typing import Any

from tasks.predict.model import ModelFolder
from tasks.serve.drawing import drawable


def page_config(model: ModelFolder, max_body: int) -> dict[str, Any]:
    """What the page's script needs: the model's input, classes, whether it takes drawings,
    the body bound, and ``model.json`` itself (NaN as null)."""
    normalization = model.record.get("normalization") or {}
    return {"name": model.name, "takes": model.takes(), "kind": model.kind,
            "shape": list(model.shape), "classes": list(model.classes),
            "drawable": drawable(model), "max_body": max_body,
            "features": list(model.feature_names or []) or None,
            "means": normalization.get("mean") if model.kind == "table" else None,
            "record": finite(model.record)}


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def render_page(model: ModelFolder, max_body: int) -> str:
    """The page, with :func:`page_config` in it as JSON (``<`` escaped: no tag can end the
    script early)."""
    config = json.dumps(page_config(model, max_body), allow_nan=False).replace("<", "\\u003c")
    title = model.name.replace("&", "&amp;").replace("<", "&lt;")
    return PAGE.replace("__TITLE__", title).replace("__CONFIG__", config)


PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
  :root { --ink: #1b1f24; --muted: #5f6b7a; --line: #d9dee5; --bar: #3b82c4; --top: #e07b24;
          --panel: #f6f8fa; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
  body { margin: 0; color: var(--ink); background: #fff; }
  header { padding: 14px 24px 10px; border-bottom: 1px solid var(--line); }
  header h1 { margin: 0; font-size: 20px; font-weight: 600; }
  header p { margin: 4px 0 0; color: var(--muted); font-size: 13px; }
  main { display: grid; grid-template-columns: 312px minmax(280px, 1fr) 360px; gap: 24px;
         padding: 18px 24px; align-items: start; }
  @media (max-width: 1000px) { main { grid-template-columns: 1fr; } }
  h2 { font-size: 15px; margin: 0 0 10px; text-transform: uppercase; letter-spacing: .04em;
       color: var(--muted); }
  h3 { font-size: 14px; margin: 16px 0 6px; }
  section > div + div { margin-top: 22px; }
  #canvas { width: 280px; height: 280px; background: #000; border-radius: 6px;
            touch-action: none; cursor: crosshair; display: block; }
  .row { display: flex; align-items: center; gap: 10px; margin-top: 10px; }
  .muted { color: var(--muted); font-size: 12.5px; line-height: 1.35; }
  button { font: inherit; font-size: 14px; padding: 5px 14px; border: 1px solid var(--line);
           border-radius: 6px; background: #fff; cursor: pointer; }
  button:hover { background: var(--panel); }
  #seen { width: 84px; height: 84px; image-rendering: pixelated; background: #000;
          border-radius: 3px; flex: none; }
  #preview { max-width: 168px; max-height: 168px; image-rendering: pixelated; margin-top: 10px;
             border: 1px solid var(--line); }
  input[type=text] { font: inherit; width: 100%; box-sizing: border-box; padding: 5px 8px;
                     border: 1px solid var(--line); border-radius: 6px; }
  #predicted { font-size: 44px; font-weight: 650; min-height: 56px; }
  #predicted small { font-size: 16px; font-weight: 400; color: var(--muted); margin-left: 10px; }
  #error { color: #b42318; font-size: 13.5px; min-height: 18px; margin: 4px 0 8px; }
  .bar { display: grid; grid-template-columns: minmax(48px, max-content) 1fr 64px; gap: 10px;
         align-items: center; margin: 5px 0; font-size: 14px; }
  .bar .name { text-align: right; white-space: nowrap; overflow: hidden; max-width: 180px;
               text-overflow: ellipsis; }
  .track { background: #eef1f5; height: 20px; border-radius: 4px; overflow: hidden; }
  .fill { display: block; height: 100%; width: 0; background: var(--bar);
          transition: width .12s ease-out; }
  .bar.top .fill { background: var(--top); }
  .bar.top .name { font-weight: 650; }
  .pct { font-variant-numeric: tabular-nums; color: var(--muted); text-align: right; }
  #rows { font-size: 13px; color: var(--muted); margin-top: 10px; }
  aside { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
          padding: 14px 16px; font-size: 13.5px; }
  aside h2 { margin-bottom: 2px; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 12px; margin: 0; }
  dt { color: var(--muted); }
  dd { margin: 0; overflow-wrap: anywhere; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: right; padding: 2px 6px; border-bottom: 1px solid var(--line); }
  th:first-child, td:first-child { text-align: left; }
  pre { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 12px; background: #fff;
        border: 1px solid var(--line); border-radius: 6px; padding: 8px; margin: 6px 0 0; }
</style>
</head>
<body data-state="loading" data-updates="0">
<header><h1 id="title"></h1><p id="subtitle"></p></header>
<main>
  <section id="inputs">
    <div id="draw" hidden>
      <h2>Draw</h2>
      <canvas id="canvas" width="280" height="280" aria-label="drawing canvas"></canvas>
      <div class="row"><button id="clear" type="button">Clear</button>
        <span class="muted">White ink on black, as in MNIST: draw with the mouse, a pen or a
        finger.</span></div>
      <div class="row"><canvas id="seen" width="28" height="28"></canvas>
        <span class="muted" id="seen-text">What the model sees: the ink's bounding box scaled
        into 20&times;20 (aspect ratio kept), centred by its centre of mass in 28&times;28, as
        MNIST's digits were made.</span></div>
    </div>
    <div id="row-entry" hidden>
      <h2>A row</h2>
      <label class="muted" for="row-values" id="row-label"></label>
      <div class="row"><input type="text" id="row-values">
        <button id="row-predict" type="button">Predict</button></div>
    </div>
    <div id="upload">
      <h2>Upload</h2>
      <input type="file" id="file">
      <p class="muted" id="upload-text"></p>
      <img id="preview" alt="the uploaded image" hidden>
    </div>
  </section>
  <section id="prediction">
    <h2>Prediction</h2>
    <div id="predicted">&mdash;</div>
    <div id="error" role="alert"></div>
    <div id="bars"></div>
    <div id="rows"></div>
  </section>
  <aside id="card"><h2>Model card</h2></aside>
</main>
<script id="config" type="application/json">__CONFIG__</script>
<script>
"use strict";
const config = JSON.parse(document.getElementById("config").textContent);
const record = config.record;
const $ = (id) => document.getElementById(id);
const MANY = 20;  // up to this many classes: every bar, in class order; else the top 10

function element(tag, text, attributes) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  return node;
}
function percent(p) { return (100 * p).toFixed(p >= 0.9995 || p < 0.0005 ? 0 : 1) + " %"; }
function fixed(x, digits) { return typeof x === "number" ? x.toFixed(digits) : "\u2014"; }

// ------------------------------------------------------------------ the bars
function barOf(i) {
  const bar = element("div", null, {class: "bar", "data-class": i});
  bar.append(element("span", config.classes[i], {class: "name", title: config.classes[i]}));
  const track = element("span", null, {class: "track"});
  track.append(element("span", null, {class: "fill"}));
  bar.append(track, element("span", "", {class: "pct"}));
  return bar;
}
function showProbabilities(p) {
  const bars = $("bars");
  const best = p.reduce((a, _, i) => (p[i] > p[a] ? i : a), 0);
  if (p.length <= MANY) {  // one bar per class, kept: the widths move as the person draws
    if (bars.children.length !== p.length) bars.replaceChildren(...p.map((_, i) => barOf(i)));
  } else {
    const top = p.map((_, i) => i).sort((a, b) => p[b] - p[a]).slice(0, 10);
    bars.replaceChildren(...top.map(barOf));
  }
  for (const bar of bars.children) {
    const i = Number(bar.dataset.class);
    bar.classList.toggle("top", i === best);
    bar.querySelector(".fill").style.width = (100 * p[i]).toFixed(2) + "%";
    bar.querySelector(".pct").textContent = percent(p[i]);
  }
  const predicted = $("predicted");
  predicted.replaceChildren(element("span", config.classes[best]),
                            element("small", percent(p[best])));
  predicted.dataset.class = best;
  predicted.dataset.name = config.classes[best];
  $("error").textContent = "";
  document.body.dataset.updates = Number(document.body.dataset.updates) + 1;
}
function showError(line) { $("error").textContent = line; }
function clearPrediction() {
  $("bars").replaceChildren();
  $("rows").replaceChildren();
  $("predicted").textContent = "\u2014";
  delete $("predicted").dataset.class;
  $("error").textContent = "";
}

async function post(path, body) {
  let response;
  try {
    response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                  body: JSON.stringify(body)});
  } catch (error) {
    throw new Error("the server did not answer (" + error.message + ")");
  }
  const answer = await response.json().catch(() => ({error: "HTTP " + response.status}));
  if (!response.ok) throw new Error(answer.error || "HTTP " + response.status);
  return answer;
}

// ------------------------------------------------------------------ drawing
function setUpDrawing() {
  $("draw").hidden = false;
  const canvas = $("canvas");
  const pen = canvas.getContext("2d");
  const seen = $("seen").getContext("2d");
  let down = false, last = null, busy = false, again = false, strokes = 0;
  const [height, width] = config.shape;
  $("seen").height = height;
  $("seen").width = width;
  if (height !== 28 || width !== 28) {
    const box = (side) => Math.max(1, Math.round(side * 20 / 28));
    $("seen-text").textContent = "What the model sees: the ink's bounding box scaled into "
      + box(height) + "\u00d7" + box(width) + " (aspect ratio kept), centred by its centre of "
      + "mass in " + height + "\u00d7" + width + ": MNIST's proportions at the model's size.";
  }
  function blank() {
    pen.fillStyle = "#000";
    pen.fillRect(0, 0, canvas.width, canvas.height);
    seen.fillStyle = "#000";
    seen.fillRect(0, 0, width, height);
  }
  function at(event) {
    const box = canvas.getBoundingClientRect();
    return {x: (event.clientX - box.left) * canvas.width / box.width,
            y: (event.clientY - box.top) * canvas.height / box.height};
  }
  function stroke(from, to) {
    pen.strokeStyle = "#fff";
    pen.lineWidth = 20;
    pen.lineCap = "round";
    pen.lineJoin = "round";
    pen.beginPath();
    pen.moveTo(from.x, from.y);
    pen.lineTo(to.x, to.y);
    pen.stroke();
    strokes += 1;
  }
  function showSeen(image) {
    const h = image.length, w = image[0].length;
    const pixels = seen.createImageData(w, h);
    image.flat().forEach((v, k) => {
      pixels.data.set([v, v, v, 255], 4 * k);
    });
    seen.putImageData(pixels, 0, 0);
  }
  async function send() {
    if (busy) { again = true; return; }
    if (strokes === 0) return;
    busy = true;
    again = false;
    try {
      const png = canvas.toDataURL("image/png");
      const answer = await post("drawing", {instances: [{b64: png.slice(png.indexOf(",") + 1)}]});
      if (strokes > 0) {
        showProbabilities(answer.predictions[0]);
        showSeen(answer.inputs[0]);
      }
    } catch (error) {
      showError(error.message);
    } finally {
      busy = false;
      if (again) send();
    }
  }
  canvas.addEventListener("pointerdown", (event) => {
    down = true;
    canvas.setPointerCapture(event.pointerId);
    last = at(event);
    stroke(last, {x: last.x + 0.01, y: last.y});
    send();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!down) return;
    const point = at(event);
    stroke(last, point);
    last = point;
    send();
  });
  for (const type of ["pointerup", "pointercancel"]) {
    canvas.addEventListener(type, () => { if (down) { down = false; send(); } });
  }
  $("clear").addEventListener("click", () => { strokes = 0; blank(); clearPrediction(); });
  blank();
}

// ------------------------------------------------------------------ uploads and rows
function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}
function showRows(predictions) {
  const rows = $("rows");
  rows.replaceChildren();
  if (predictions.length < 2) return;
  rows.append(element("div", predictions.length + " rows; the bars show the first:"));
  predictions.slice(0, 50).forEach((p, k) => {
    const best = p.reduce((a, _, i) => (p[i] > p[a] ? i : a), 0);
    rows.append(element("div", "row " + (k + 1) + ": " + config.classes[best] + " ("
                               + percent(p[best]) + ")"));
  });
}
function setUpUpload() {
  const input = $("file");
  if (config.kind === "table") {
    input.accept = ".csv,.parquet,text/csv";
    $("upload-text").textContent = "A CSV file of the feature columns (with a header row, or "
      + "numbers only, in the model's column order) or a Parquet file; each row is predicted.";
  } else {
    input.accept = "image/*";
    $("upload-text").textContent = "An image file: converted as the model's training images "
      + "were (" + config.takes + ").";
  }
  input.addEventListener("change", async () => {
    const file = input.files[0];
    if (!file) return;
    const bound = config.max_body;
    if (Math.ceil(file.size / 3) * 4 + 40 > bound) {
      showError(file.name + ": " + file.size.toLocaleString() + " bytes, over this server's "
                + "bound of " + bound.toLocaleString() + " bytes for a request (--max-body)");
      return;
    }
    try {
      const url = await readFile(file);
      if (config.kind === "image") {
        $("preview").src = url;
        $("preview").hidden = false;
      }
      const answer = await post("predict", {instances: [{b64: url.slice(url.indexOf(",") + 1)}]});
      showProbabilities(answer.predictions[0]);
      showRows(answer.predictions);
    } catch (error) {
      clearPrediction();
      showError(file.name + ": " + error.message);
    }
  });
}
function setUpRow() {
  $("row-entry").hidden = false;
  $("row-label").textContent = config.features.join(", ")
    + (config.means ? " (to start with: the training split's means)" : "");
  if (config.means) $("row-values").value = config.means.map((m) => +m.toPrecision(4)).join(", ");
  async function predictRow() {
    const text = $("row-values").value.trim();
    const values = text.split(/[,;\s]+/).filter((v) => v !== "").map((v) => {
      const number = Number(v);
      return Number.isFinite(number) ? number : v;
    });
    try {
      const answer = await post("predict", {instances: [values]});
      showProbabilities(answer.predictions[0]);
      $("rows").replaceChildren();
    } catch (error) {
      clearPrediction();
      showError(error.message);
    }
  }
  $("row-predict").addEventListener("click", predictRow);
  $("row-values").addEventListener("keydown", (e) => { if (e.key === "Enter") predictRow(); });
  if (config.means) predictRow();
}

// ------------------------------------------------------------------ the card
function card() {
  const aside = $("card");
  function list(title, pairs) {
    const shown = pairs.filter(([, value]) => value !== undefined && value !== null
                                                && value !== "");
    if (!shown.length) return;
    aside.append(element("h3", title));
    const dl = element("dl");
    for (const [name, value] of shown) dl.append(element("dt", name), element("dd", value));
    aside.append(dl);
  }
  const data = record.data || {};
  const sizes = data.sizes || {};
  const source = typeof data.source === "string" ? data.source.split(/[\\/]/).pop() : null;
  const names = config.classes.slice(0, 12).join(", ")
    + (config.classes.length > 12 ? ", ..." : "");
  list("Data", [["name", data.name], ["source", source],
                ["sizes", ["train", "validation", "test"].filter((k) => k in sizes)
                           .map((k) => k + " " + Number(sizes[k]).toLocaleString()).join(" · ")],
                ["split", data.split_text],
                ["classes", config.classes.length + ": " + names],
                ["input", config.takes]]);
  const scores = record.scores || {};
  if ("test_accuracy" in scores || "val_accuracy" in scores) {
    aside.append(element("h3", "Accuracy"));
    const table = element("table");
    const head = element("tr");
    head.append(element("th", "split"), element("th", "accuracy"), element("th", "loss"));
    table.append(head);
    for (const [split, key] of [["test", "test"], ["validation", "val"], ["train", "train"]]) {
      if (!(key + "_accuracy" in scores)) continue;
      const row = element("tr");
      row.append(element("td", split), element("td", fixed(scores[key + "_accuracy"], 4)),
                 element("td", fixed(scores[key + "_loss"], 4)));
      table.append(row);
    }
    aside.append(table);
  }
  const ensemble = record.ensemble;
  if (ensemble) {
    const single = (record.comparison || {}).best_single || {};
    list("Ensemble", [
      ["members", ensemble.members.length + " trials, " + ensemble.k + " greedy picks"],
      ...ensemble.members.map((m) => [
        m.name, "weight " + (+m.weight).toPrecision(3) + " · " + m.label + " · test "
                + fixed(m.test_accuracy, 4)]),
      ["best single", single.trial_key ? "test " + fixed(single.test_accuracy, 4) + " · "
                                         + single.label : null],
      ["parameters", ensemble.param_count ? Number(ensemble.param_count).toLocaleString()
                                          : null]]);
  }
  const trial = record.trial || {};
  const settings = trial.config || {};
  list("Hyperparameters", [
    ...Object.entries(settings).map(([k, v]) => [k.replace(/_/g, " "), String(v)]),
    ["backend", trial.backend], ["best epoch", trial.best_epoch],
    ["parameters", trial.param_count ? Number(trial.param_count).toLocaleString() : null]]);
  const chosen = record.chosen || {};
  list("Chosen", [["how", chosen.how], ["model key", record.model_key],
                  ["trial key", trial.trial_key], ["created", record.created]]);
  aside.append(element("h3", "API"));
  const origin = window.location.origin;
  const example = config.kind === "table"
    ? "[[" + (config.means || config.features.map(() => 0)).map((m) => +(+m).toPrecision(4))
        .join(", ") + "]]"
    : "[<" + config.shape.join("x") + " nested lists of 0..255>, ...]";
  aside.append(element("pre", "curl -s " + origin + "/predict \\\n  -d '{\"instances\": "
                              + example + "}'\n# or {\"instances\": [{\"b64\": \"<"
                              + (config.kind === "table" ? "a CSV file" : "an image file")
                              + " in base64>\"}]}\n# -> {\"predictions\": [[p0, ...]], "
                              + "\"class_names\": [...]}\n# GET /model: model.json; "
                              + "GET /health"));
}

$("title").textContent = config.name;
$("subtitle").textContent = "takes " + config.takes + " \u00b7 " + config.classes.length
  + " classes \u00b7 model key " + record.model_key;
if (config.drawable) setUpDrawing();
if (config.kind === "table" && config.features) setUpRow();
setUpUpload();
card();
document.body.dataset.state = "ready";
</script>
</body>
</html>
"""

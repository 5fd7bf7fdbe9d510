// The taskzoo playground: one small page for the served task. It asks /info what the task is and which form it
// has (the task's playground_form: see taskzoo/serving/playground.py), builds that form, posts what is typed or
// uploaded to /predict and draws the answer as people look at it. No per-task code, no libraries, no CDN.
"use strict";

// Okabe-Ito then Tableau colours, as taskzoo.visualize uses: one per label in a picture.
const PALETTE = ["#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7", "#1f77b4",
  "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#000000"];
const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem("taskzoo-api-key") || "";
let info = null;

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value; else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

async function call(path, init = {}) {
  const headers = Object.assign({}, init.headers, apiKey ? { Authorization: "Bearer " + apiKey } : {});
  const response = await fetch(path, Object.assign({}, init, { headers }));
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (response.status === 401) $("key-box").hidden = false;
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// ------------------------------------------------------------------------------------------------ inputs

function textField(spec, big) {
  const input = big ? el("textarea", { id: spec.id }) : el("input", { id: spec.id, type: "text" });
  input.value = spec.value ?? "";
  return el("label", { for: spec.id, text: spec.label ?? spec.id }, input);
}

function numberField(spec) {
  const input = el("input", { id: spec.id, type: "number", step: spec.step ?? "any" });
  input.value = spec.value ?? "";
  return el("label", { class: "inline", text: (spec.label ?? spec.id) + " " }, input);
}

function selectField(spec) {
  const select = el("select", { id: spec.id }, ...spec.options.map((option) => el("option", { text: option })));
  select.value = spec.value ?? spec.options[0];
  return el("label", { class: "inline", text: (spec.label ?? spec.id) + " " }, select);
}

function fileField(spec) {
  const kind = spec.type;
  const input = el("input", { id: spec.id, type: "file", accept: kind + "/*" });
  const preview = el(kind === "image" ? "img" : "audio", { id: "preview", class: "preview", hidden: "" });
  if (kind === "audio") preview.controls = true;
  input.addEventListener("change", () => {
    if (!input.files.length) return;
    preview.src = URL.createObjectURL(input.files[0]);
    preview.hidden = false;
    recorded = null;
  });
  const label = spec.label ?? `${kind[0].toUpperCase() + kind.slice(1)} file`;
  return el("div", {}, el("label", { for: spec.id, text: label }), input, preview);
}

// The microphone, recorded as 16-bit PCM WAV in the page (browsers record webm/opus, which the server's
// soundfile does not read).
let recorded = null;
function micField() {
  const button = el("button", { id: "record", type: "button", class: "secondary", text: "● Record" });
  let stop = null;
  button.addEventListener("click", async () => {
    if (stop) { stop(); return; }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const context = new AudioContext();
      const source = context.createMediaStreamSource(stream);
      const node = context.createScriptProcessor(4096, 1, 1);
      const chunks = [];
      node.onaudioprocess = (event) => chunks.push(new Float32Array(event.inputBuffer.getChannelData(0)));
      source.connect(node); node.connect(context.destination);
      button.textContent = "■ Stop";
      stop = () => {
        node.disconnect(); source.disconnect(); stream.getTracks().forEach((t) => t.stop());
        recorded = wav(chunks, context.sampleRate);
        context.close(); stop = null; button.textContent = "● Record";
        $("preview").src = URL.createObjectURL(recorded); $("preview").hidden = false;
      };
    } catch (error) { showError("Microphone: " + error.message); }
  });
  return button;
}

function wav(chunks, rate) {
  const length = chunks.reduce((n, c) => n + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * length));
  const ascii = (offset, text) => [...text].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  ascii(0, "RIFF"); view.setUint32(4, 36 + 2 * length, true); ascii(8, "WAVEfmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); ascii(36, "data"); view.setUint32(40, 2 * length, true);
  let offset = 44;
  for (const chunk of chunks) for (const sample of chunk) {
    view.setInt16(offset, Math.max(-1, Math.min(1, sample)) * 0x7fff, true); offset += 2;
  }
  return new Blob([view], { type: "audio/wav" });
}

// The form's fields, as /info describes them; numbers and choices side by side in rows.
function fields(form) {
  const nodes = [];
  for (const spec of form.fields) {
    if (spec.type === "number" || spec.type === "select") {
      const row = nodes.at(-1)?.classList?.contains("row") ? nodes.at(-1) : el("div", { class: "row" });
      row.append(spec.type === "number" ? numberField(spec) : selectField(spec));
      if (row !== nodes.at(-1)) nodes.push(row);
    } else if (spec.type === "image" || spec.type === "audio") {
      nodes.push(fileField(spec));
      if (spec.type === "audio") nodes.push(micField());
    } else {
      nodes.push(textField(spec, spec.type !== "text"));
    }
  }
  return nodes;
}

// The request the form makes: each field's value goes where its "to" says ("inputs", "inputs.KEY", "inputs.0" and
// "inputs.1" for the two parts of a pair, "parameters.NAME"). A media field is uploaded as a file. A pair is sent
// as a list of one input (a two-element list could read as two inputs), so the answer is unwrapped.
function request(form) {
  let input, media = null, pair = null;
  const parameters = {};
  for (const spec of form.fields) {
    if (spec.type === "image" || spec.type === "audio") { media = spec; continue; }
    let value = $(spec.id).value;
    if (spec.optional && !value.trim()) continue;
    if (spec.type === "number") value = Number(value);
    if (spec.type === "lines") value = value.split("\n").map((line) => line.trim()).filter(Boolean);
    const [where, key] = spec.to.split(/\.(.*)/);
    if (where === "parameters") parameters[key] = value;
    else if (key === undefined) input = value;
    else if (/^\d+$/.test(key)) (pair = pair || [])[Number(key)] = value;
    else (input = input || {})[key] = value;
  }
  if (media) return { init: upload(media, parameters) };
  if (pair) {
    const parts = pair.filter((part) => part !== undefined);
    if (parts.length > 1) return { init: asJson([parts], parameters), unwrap: true };
    input = parts[0];
  }
  return { init: asJson(input, parameters) };
}

function upload(spec, parameters) {
  const file = recorded || $(spec.id).files[0];
  if (!file) throw new Error(`Choose ${spec.type === "image" ? "an image" : "an audio"} file first.`);
  const form = new FormData();
  form.append("files", file, file.name || "recording.wav");
  form.append("parameters", JSON.stringify(parameters));
  return { body: form };
}

const asJson = (inputs, parameters = {}) => ({
  body: JSON.stringify({ inputs, parameters }), headers: { "Content-Type": "application/json" } });

// ----------------------------------------------------------------------------------------------- outputs

// Labels with score bars; with ``colour`` each name gets its colour's swatch (the legend of a drawing).
function bars(rows, colour = null) {
  if (!rows.length) return el("p", { class: "empty", text: "Nothing found." });
  return el("ul", { class: "bars" }, ...rows.map(([name, score]) => {
    const fill = el("span");
    fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
    const label = el("span", { class: "name", text: name });
    if (colour) label.prepend(el("span", { class: "swatch", style: `background:${colour(name)}` }));
    return el("li", {}, label, el("span", { class: "bar" }, fill), el("span", { class: "score", text: score.toFixed(3) }));
  }));
}

const colourOf = (labels) => (label) => PALETTE[labels.indexOf(label) % PALETTE.length];

async function imageCanvas() {
  const image = await new Promise((resolve, reject) => {
    const img = new Image(); img.onload = () => resolve(img); img.onerror = reject; img.src = $("preview").src;
  });
  const canvas = el("canvas", { id: "drawing" });
  const scale = Math.max(1, Math.ceil(384 / Math.min(image.width, image.height)));  // small images enlarged
  canvas.width = image.width * scale; canvas.height = image.height * scale;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.drawImage(image, 0, 0, canvas.width, canvas.height);
  return { canvas, context, scale, image };
}

async function drawBoxes(detections) {
  const { canvas, context, scale } = await imageCanvas();
  const colour = colourOf([...new Set(detections.map((d) => d.label))].sort());
  context.lineWidth = Math.max(2, canvas.width / 160);
  context.font = `${Math.max(12, canvas.width / 32)}px sans-serif`;
  for (const { label, score, box } of detections) {
    const [x, y, w, h] = [box.xmin * scale, box.ymin * scale, (box.xmax - box.xmin) * scale, (box.ymax - box.ymin) * scale];
    context.strokeStyle = context.fillStyle = colour(label);
    context.strokeRect(x, y, w, h);
    const tag = `${label} ${score.toFixed(2)}`;
    const height = parseInt(context.font, 10) + 4;
    context.fillRect(x, Math.max(0, y - height), context.measureText(tag).width + 6, height);
    context.fillStyle = "#fff";
    context.fillText(tag, x + 3, Math.max(height - 4, y - 4));
  }
  return el("div", {}, canvas, bars(detections.map((d) => [d.label, d.score]), colour));
}

async function drawMasks(segments) {
  const { canvas, context } = await imageCanvas();
  const colour = colourOf(info.labels || segments.map((s) => s.label));
  for (const segment of segments) {
    const mask = await new Promise((resolve) => {
      const img = new Image(); img.onload = () => resolve(img); img.src = "data:image/png;base64," + segment.mask;
    });
    // The mask is white where the class is: its brightness becomes the alpha of a layer in the class colour.
    const layer = el("canvas"); layer.width = canvas.width; layer.height = canvas.height;
    const ctx = layer.getContext("2d"); ctx.imageSmoothingEnabled = false;
    ctx.drawImage(mask, 0, 0, layer.width, layer.height);
    const pixels = ctx.getImageData(0, 0, layer.width, layer.height);
    const [r, g, b] = colour(segment.label).match(/\w\w/g).map((h) => parseInt(h, 16));
    for (let i = 0; i < pixels.data.length; i += 4) {
      const alpha = pixels.data[i] * 0.55;
      pixels.data.set([r, g, b, alpha], i);
    }
    ctx.putImageData(pixels, 0, 0);
    context.drawImage(layer, 0, 0);
  }
  return el("div", {}, canvas, bars(segments.map((s) => [s.label, s.score]), colour));
}

// How an answer is shown, by the form's "output" ("auto": chosen from the answer's shape).
const isPng = (value) => typeof value === "string" && value.startsWith("iVBORw0KGgo");  // base64 of PNG's signature
const firstOf = (output, test) => (test(output) ? output
  : Object.values(output && typeof output === "object" ? output : {}).find(test));
const labelled = (output) => (Array.isArray(output) ? output : [output])
  .every((o) => o && typeof o === "object" && "label" in o);

const SHOW = {
  labels: (output) => bars((Array.isArray(output) ? output : [output]).map((o) => [o.label, o.score])),
  scores: (output) => {  // named by the lines of the form's "lines" field, where it has one
    const scores = (Array.isArray(output) ? output : [output]).map((o) => (typeof o === "number" ? o : o.score));
    const lines = info.form.fields.find((spec) => spec.type === "lines");
    const names = lines ? $(lines.id).value.split("\n").map((s) => s.trim()).filter(Boolean) : [];
    return bars(scores.map((score, i) => [names[i] ?? `#${i + 1}`, score]));
  },
  boxes: (output) => drawBoxes(Array.isArray(output) ? output : [output]),
  masks: (output) => drawMasks(Array.isArray(output) ? output : [output]),
  text: (output) => el("div", { id: "text-output", class: "text-output",
    text: firstOf(output, (v) => typeof v === "string") ?? JSON.stringify(output) }),
  image: (output) => {
    const image = el("img", { id: "generated", class: "result", alt: "generated image" });
    image.onload = () => {  // small images (tiny models) enlarged by a whole factor, pixels kept sharp
      image.style.width = `${image.naturalWidth * Math.max(1, Math.ceil(256 / image.naturalWidth))}px`;
    };
    image.src = "data:image/png;base64," + firstOf(output, isPng);
    return image;
  },
  json: (output) => el("pre", { id: "json-output", class: "text-output", text: JSON.stringify(output, null, 2) }),
  auto: (output) => {
    const items = Array.isArray(output) ? output : [output];
    if (items.length && labelled(output)) {
      const drawn = items.some((o) => "box" in o) ? "boxes" : items.some((o) => "mask" in o) ? "masks" : "labels";
      return SHOW[drawn](output);
    }
    if (firstOf(output, isPng) !== undefined) return SHOW.image(output);
    if (firstOf(output, (v) => typeof v === "string") !== undefined) return SHOW.text(output);
    return SHOW.json(output);
  },
};

// --------------------------------------------------------------------------------------------- the page

function showError(message) { $("error").textContent = message; $("error").hidden = !message; }

async function submit(event) {
  event.preventDefault();
  showError(""); $("run").disabled = true; $("status").textContent = "running…";
  const started = performance.now();
  try {
    const { init, unwrap } = request(info.form);
    const output = await call("predict", Object.assign({ method: "POST" }, init));
    $("result").replaceChildren(await SHOW[info.form.output](unwrap ? output[0] : output));
    $("status").textContent = `done in ${((performance.now() - started) / 1000).toFixed(2)} s`;
  } catch (error) {
    showError(error.message); $("status").textContent = "";
  } finally {
    $("run").disabled = false;
  }
}

async function start() {
  try {
    info = await call("info");
  } catch (error) {
    showError(error.message);
    return;
  }
  $("key-box").hidden = true;
  $("task").textContent = info.task;
  $("model").textContent = info.model || "";
  $("fields").replaceChildren(...fields(info.form));
  $("form").hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  $("form").addEventListener("submit", submit);
  $("key-save").addEventListener("click", () => {
    apiKey = $("api-key").value.trim();
    sessionStorage.setItem("taskzoo-api-key", apiKey);
    start();
  });
  start();
});

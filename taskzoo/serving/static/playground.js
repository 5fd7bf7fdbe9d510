// The taskzoo playground: one small page for the served task. It asks /info what the task is, shows the inputs
// that task takes, posts them to /predict and draws the answer as people look at it. No libraries, no CDN.
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

function textField(id, label, big = true, value = "") {
  const input = big ? el("textarea", { id }) : el("input", { id, type: "text" });
  input.value = value;
  return el("label", { for: id, text: label }, input);
}

function numberField(id, label, value, step = "1") {
  const input = el("input", { id, type: "number", step });
  input.value = value;
  return el("label", { class: "inline", text: label + " " }, input);
}

function fileField(kind) {
  const input = el("input", { id: "file", type: "file", accept: kind + "/*" });
  const preview = el(kind === "image" ? "img" : "audio", { id: "preview", class: "preview", hidden: "" });
  if (kind === "audio") preview.controls = true;
  input.addEventListener("change", () => {
    if (!input.files.length) return;
    preview.src = URL.createObjectURL(input.files[0]);
    preview.hidden = false;
    recorded = null;
  });
  return el("div", {}, el("label", { for: "file", text: `${kind[0].toUpperCase() + kind.slice(1)} file` }), input,
    preview);
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

function upload(kind, parameters) {
  const file = recorded || $("file").files[0];
  if (!file) throw new Error(`Choose ${kind === "image" ? "an image" : "an audio"} file first.`);
  const form = new FormData();
  form.append("files", file, file.name || "recording.wav");
  form.append("parameters", JSON.stringify(parameters));
  return { body: form };
}

const asJson = (inputs, parameters = {}) => ({
  body: JSON.stringify({ inputs, parameters }), headers: { "Content-Type": "application/json" } });

// One entry per task: the fields it shows, the request it sends, how its answer is drawn.
const TASKS = {
  "text-classification": {
    fields: () => [textField("text", "Text", true, "I really loved this film"),
      textField("text-pair", "Second text (optional, for pairs)")],
    request: () => {
      const pair = $("text-pair").value.trim();
      return asJson(pair ? [[$("text").value, pair]] : $("text").value, { top_k: info.labels.length });
    },
    render: (output) => bars((pairOutput(output)).map((o) => [o.label, o.score])),
  },
  "sentence-similarity": {
    fields: () => [textField("source", "Sentence", false, "A man is eating food."),
      textField("sentences", "Compare with (one sentence per line)", true, "A man is eating a meal.\nA cat sleeps.")],
    request: () => asJson({ source_sentence: $("source").value,
      sentences: $("sentences").value.split("\n").map((s) => s.trim()).filter(Boolean) }),
    render: (scores) => bars($("sentences").value.split("\n").map((s) => s.trim()).filter(Boolean)
      .map((s, i) => [s, scores[i]])),
  },
  translation: {
    fields: () => [textField("text", "Text", true, "Hello, how are you?")],
    request: () => asJson($("text").value),
    render: (output) => el("div", { id: "text-output", class: "text-output", text: output.translation_text }),
  },
  "automatic-speech-recognition": {
    fields: () => [fileField("audio"), micField()],
    request: () => upload("audio", {}),
    render: (output) => el("div", { id: "text-output", class: "text-output", text: output.text }),
  },
  "text-to-image": {
    fields: () => [textField("prompt", "Prompt", false, "a red square on a white background"),
      el("div", {}, numberField("seed", "Seed", 0), numberField("steps", "Steps", 25),
        numberField("guidance", "Guidance", 7.5, "0.5"))],
    request: () => asJson($("prompt").value, { seed: Number($("seed").value),
      num_inference_steps: Number($("steps").value), guidance_scale: Number($("guidance").value) }),
    render: (output) => {
      const image = el("img", { id: "generated", class: "result", alt: $("prompt").value });
      image.onload = () => {  // small images (tiny models) enlarged by a whole factor, pixels kept sharp
        image.style.width = `${image.naturalWidth * Math.max(1, Math.ceil(256 / image.naturalWidth))}px`;
      };
      image.src = "data:image/png;base64," + output.image;
      return image;
    },
  },
  "image-classification": {
    fields: () => [fileField("image"), numberField("top-k", "Top labels", 5)],
    request: () => upload("image", { top_k: Number($("top-k").value) }),
    render: (output) => bars(output.map((o) => [o.label, o.score])),
  },
  "object-detection": {
    fields: () => [fileField("image"), numberField("threshold", "Score threshold", 0.5, "0.05")],
    request: () => upload("image", { threshold: Number($("threshold").value) }),
    render: drawBoxes,
  },
  "image-segmentation": {
    fields: () => [fileField("image")],
    request: () => upload("image", {}),
    render: drawMasks,
  },
};

// ----------------------------------------------------------------------------------------------- outputs

const pairOutput = (output) => (Array.isArray(output) && Array.isArray(output[0]) ? output[0] : output);

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

// --------------------------------------------------------------------------------------------- the page

function showError(message) { $("error").textContent = message; $("error").hidden = !message; }

async function submit(event) {
  event.preventDefault();
  const task = TASKS[info.task];
  showError(""); $("run").disabled = true; $("status").textContent = "running…";
  const started = performance.now();
  try {
    const output = await call("predict", Object.assign({ method: "POST" }, task.request()));
    $("result").replaceChildren(await task.render(output));
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
  const task = TASKS[info.task];
  if (!task) { showError(`This page has no form for ${info.task}; use the API (docs).`); return; }
  $("fields").replaceChildren(...task.fields());
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

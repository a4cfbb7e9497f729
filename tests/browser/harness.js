// Loads a widget as anywidget gets it (loadWidget), renders it with a fake anywidget model, drives
// it through the scenario named by ?scenario= and writes what it observed as JSON into
// <pre id="results"> for the pytest side to read from the dumped DOM.

import { $, FakeModel, loadWidget, sleep, until } from "./fake_model.js";
import { machinesScenario } from "./machines_harness.js";

function pngDataUrl(width, height, color) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = color;
  ctx.fillRect(0, 0, width, height);
  return canvas.toDataURL("image/png");
}

function dataUrlBytes(url) {
  const binary = atob(url.split(",")[1]);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function barState(root) {
  const bar = $(root, ".rcnb-bar");
  return {
    width: $(bar, ".rcnb-fill").style.width,
    now: bar.getAttribute("aria-valuenow"),
    indeterminate: bar.classList.contains("rcnb-indeterminate"),
  };
}

function progressState(el) {
  const root = $(el, ".rcnb-progress");
  const cancel = $(root, ".rcnb-cancel");
  const error = $(root, ".rcnb-error");
  return {
    status: $(root, ".rcnb-badge").textContent,
    title: $(root, ".rcnb-title").textContent,
    elapsed: $(root, ".rcnb-elapsed").textContent,
    details: $(root, ".rcnb-details").textContent,
    bar: barState(root),
    cancelVisible: !cancel.hidden && getComputedStyle(cancel).display !== "none",
    cancelDisabled: cancel.disabled,
    cancelText: cancel.textContent,
    error: error.hidden ? null : error.textContent,
    errorColor: getComputedStyle(error).color,
    previewShown: !$(root, ".rcnb-preview").hidden,
    outputs: $(root, ".rcnb-outputs").textContent,
  };
}

async function progressScenario() {
  const { default: widget, formatDuration } = await loadWidget("progress");
  const out = { steps: {} };
  const el = document.getElementById("one");
  const now = Date.now() / 1000;
  const model = new FakeModel({
    kind: "deployment", job_id: "5b0c9e2a", label: "dep-flux", status: "queued", position: 3,
    step: null, steps: null, node: "", node_title: "", nodes_done: 0, nodes_total: null,
    preview: "", error: "", outputs: 0, submitted_at: now - 5, started_at: null, finished_at: null,
    cancelling: false, notice: "",
  });
  const cleanup = widget.render({ model, el });
  out.steps.queued = progressState(el);

  model.set("status", "running");
  model.set("position", null);
  model.set("node_title", "KSampler");
  model.set("step", 5);
  model.set("steps", 20);
  model.set("nodes_total", 9);
  model.set("nodes_done", 2);
  model.set("preview", pngDataUrl(16, 16, "#08f"));
  out.steps.running = progressState(el);

  model.set("step", null);
  model.set("steps", null);
  model.set("nodes_total", null);
  out.steps.indeterminate = progressState(el);

  const before = $(el, ".rcnb-elapsed").textContent;
  await sleep(1500);
  out.ticked = { before, after: $(el, ".rcnb-elapsed").textContent };

  $(el, ".rcnb-cancel").click();
  $(el, ".rcnb-cancel").click(); // a second click must not send twice
  out.sent = [...model.sent];
  out.steps.cancelling = progressState(el);

  model.set("cancelling", true);
  model.set("error", "CUDA out of memory");
  model.set("finished_at", now);
  model.set("status", "failed");
  model.set("cancelling", false);
  out.steps.failed = progressState(el);
  const frozen = $(el, ".rcnb-elapsed").textContent;
  await sleep(500);
  out.frozen = { before: frozen, after: $(el, ".rcnb-elapsed").textContent };

  const el2 = document.getElementById("two");
  const done = new FakeModel({ ...model.state, status: "succeeded", error: "", outputs: 2, finished_at: now });
  const cleanup2 = widget.render({ model: done, el: el2 });
  out.steps.succeeded = progressState(el2);

  cleanup();
  cleanup2();
  out.afterCleanup = { listeners: model.listenerCount() + done.listenerCount(), children: el.children.length };
  out.format = [formatDuration(4.23), formatDuration(125), formatDuration(3725)];
  const seconds = new URLSearchParams(location.search).get("seconds")?.split(",").map(Number) ?? [];
  out.durations = seconds.map((s) => [formatDuration(s), formatDuration(s, { whole: true })]);
  return out;
}

function galleryState(el) {
  const tiles = [...el.querySelectorAll(".rcnb-tile")];
  return {
    tiles: tiles.length,
    names: tiles.map((t) => $(t, ".rcnb-name").textContent),
    labels: tiles.map((t) => $(t, ".rcnb-label")?.textContent ?? null),
    errors: tiles.map((t) => $(t, ".rcnb-error")?.textContent ?? null),
    thumbs: el.querySelectorAll(".rcnb-thumb img").length,
    texts: [...el.querySelectorAll(".rcnb-texts q")].map((q) => q.textContent),
    loadingShown: !$(el, ".rcnb-loading").hidden,
    columns: getComputedStyle($(el, ".rcnb-grid")).gridTemplateColumns.split(" ").length,
  };
}

function lightboxState() {
  const box = document.querySelector(".rcnb-lightbox");
  if (!box) return null;
  const img = $(box, "img");
  return {
    index: Number(box.dataset.index),
    source: box.dataset.source,
    state: box.dataset.state,
    width: img.naturalWidth,
    src: img.src.slice(0, 10),
    note: $(box, ".rcnb-lightbox-note").textContent,
    position: getComputedStyle(box).position,
  };
}

async function galleryScenario() {
  const { default: widget } = await loadWidget("gallery");
  const out = {};
  const el = document.getElementById("one");
  const thumb = pngDataUrl(24, 16, "#c00");
  const full = dataUrlBytes(pngDataUrl(120, 80, "#0c0"));
  const items = [
    { filename: "a.png", kind: "image", mime: "image/png", thumb, url: "/t/full.png", label: "seed=1", error: "", animated: false },
    { filename: "b.png", kind: "image", mime: "image/png", thumb, url: "", label: "seed=2", error: "", animated: false },
    { filename: "c.png", kind: "image", mime: "image/png", thumb, url: "/t/missing.png", label: "seed=3", error: "", animated: false },
    { filename: "clip.mp4", kind: "video", mime: "video/mp4", thumb: "", url: "", label: "", error: "", animated: false },
    { filename: "voice.wav", kind: "audio", mime: "audio/wav", thumb: "", url: "", label: "", error: "", animated: false },
    { filename: "d.png", kind: "image", mime: "image/png", thumb: "", url: "", label: "", error: "could not load: boom", animated: false },
  ];
  const model = new FakeModel({ items, texts: ["a castle", "<b>not bold</b>"], loading: true });
  // the kernel side: index 1 and 3 answer with bytes, the rest with an error
  model.onSend = (content) => {
    if (content.type !== "fetch") return;
    setTimeout(() => {
      if (content.index === 1 || content.index === 3) {
        model.trigger("msg:custom", { type: "file", index: content.index, mime: "image/png" }, [new DataView(full.buffer)]);
      } else {
        model.trigger("msg:custom", { type: "file", index: content.index, error: "gone" }, []);
      }
    }, 10);
  };
  const cleanup = widget.render({ model, el });
  out.initial = galleryState(el);

  const tile = (i) => el.querySelector(`.rcnb-tile[data-index="${i}"] .rcnb-thumb`);
  tile(0).click();
  await until(() => lightboxState()?.state === "full");
  out.fromUrl = lightboxState();
  document.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape" }));
  out.afterEscape = lightboxState();

  tile(1).click();
  await until(() => lightboxState()?.state === "full");
  out.fromKernel = lightboxState();
  document.querySelector(".rcnb-lightbox").click();
  out.afterClick = lightboxState();

  tile(2).click();
  await until(() => lightboxState()?.state === "thumb");
  out.fallback = lightboxState();
  document.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowRight" }));
  out.next = lightboxState()?.index;
  document.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape" }));

  el.querySelector('.rcnb-tile[data-index="3"] .rcnb-play').click();
  await until(() => el.querySelector('.rcnb-tile[data-index="3"] video'));
  const video = el.querySelector('.rcnb-tile[data-index="3"] video');
  out.video = { present: Boolean(video), blob: video ? video.src.startsWith("blob:") : false };
  out.sent = [...model.sent];

  model.set("loading", false);
  model.set("items", items.slice(0, 2));
  out.updated = galleryState(el);

  tile(0).click();
  cleanup();
  out.afterCleanup = { lightbox: lightboxState(), listeners: model.listenerCount(), children: el.children.length };
  return out;
}

const scenarios = { progress: progressScenario, gallery: galleryScenario, machines: machinesScenario };
const name = new URLSearchParams(location.search).get("scenario");
const results = document.getElementById("results");
try {
  results.textContent = JSON.stringify({ ok: true, ...(await scenarios[name]()) });
} catch (err) {
  results.textContent = JSON.stringify({ ok: false, error: `${err}\n${err.stack}` });
}

// Gallery: a grid of output tiles; click an image for a lightbox with the full file. Video and
// audio play inline (item.src, a data URL, for a small file; else fetched on play). Each tile
// shows its size and dimensions and has a download button; "download all" saves one ZIP.
// The full file comes from item.url when Python vouched that the browser may load it, else
// (or when that fails) through the kernel: send {type: "fetch", index}, receive
// {type: "file", index, mime} with the bytes as a buffer. If both fail, the thumbnail stays.
// Downloads never use item.url (another origin ignores <a download>): the bytes come from
// item.src or the kernel; "download all" sends {type: "fetch_all"} and gets {type: "zip", name}.

import { button, element } from "./shared.js";

const FETCH_TIMEOUT_MS = 120000;

// 812 B · 6.2 KB · 3.4 MB, as runcomfy_nb.widgets.images.human_size writes it
export function humanSize(count) {
  let size = count;
  for (const unit of ["B", "KB", "MB", "GB"]) {
    if (size < 1000 || unit === "GB") return unit === "B" ? `${Math.round(size)} B` : `${size.toFixed(1)} ${unit}`;
    size /= 1000;
  }
  return "";
}

function details(item, width, height) {
  const parts = item.size ? [humanSize(item.size)] : [];
  const w = item.width || width;
  const h = item.height || height;
  if (w && h) parts.push(`${w}×${h}`);
  return parts.join(" · ");
}

function saveAs(url, filename) {
  const link = element("a");
  link.href = url;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
}

function probe(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(src);
    img.onerror = () => reject(new Error("could not load the image"));
    img.src = src;
  });
}

function render({ model, el }) {
  const root = element("div", "rcnb-gallery");
  const loading = element("div", "rcnb-loading", "loading previews…");
  const toolbar = element("div", "rcnb-toolbar");
  const downloadAll = button("rcnb-download-all", "⬇ download all");
  downloadAll.title = "Save every file in one ZIP";
  const status = element("span", "rcnb-download-status");
  toolbar.append(downloadAll, status);
  const grid = element("div", "rcnb-grid");
  const texts = element("ul", "rcnb-texts");
  root.append(loading, toolbar, grid, texts);
  el.append(root);

  const blobs = new Map(); // index -> object URL of a file fetched through the kernel
  const pending = new Map(); // index -> {promise, resolve, reject, timer}
  let lightbox = null; // {overlay, index}
  let zipWaiter = null; // {timer}

  function onZip(msg, buffers) {
    if (!zipWaiter) return;
    clearTimeout(zipWaiter.timer);
    zipWaiter = null;
    downloadAll.disabled = false;
    if (msg.error || !buffers || !buffers.length) {
      status.textContent = `could not download: ${msg.error || "no data"}`;
      return;
    }
    status.textContent = "";
    const url = URL.createObjectURL(new Blob([buffers[0]], { type: "application/zip" }));
    saveAs(url, msg.name || "outputs.zip");
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  function onDownloadAll() {
    if (zipWaiter) return;
    downloadAll.disabled = true;
    status.textContent = "preparing the ZIP…";
    zipWaiter = {
      timer: setTimeout(() => {
        zipWaiter = null;
        downloadAll.disabled = false;
        status.textContent = "could not download: the kernel did not answer";
      }, FETCH_TIMEOUT_MS),
    };
    model.send({ type: "fetch_all" });
  }

  function onMessage(msg, buffers) {
    if (msg && msg.type === "zip") {
      onZip(msg, buffers);
      return;
    }
    if (!msg || msg.type !== "file") return;
    const waiter = pending.get(msg.index);
    if (!waiter) return;
    pending.delete(msg.index);
    clearTimeout(waiter.timer);
    if (msg.error || !buffers || !buffers.length) {
      waiter.reject(new Error(msg.error || "no data"));
      return;
    }
    const url = URL.createObjectURL(new Blob([buffers[0]], { type: msg.mime || "application/octet-stream" }));
    blobs.set(msg.index, url);
    waiter.resolve(url);
  }

  function viaKernel(index) {
    if (blobs.has(index)) return Promise.resolve(blobs.get(index));
    if (pending.has(index)) return pending.get(index).promise;
    const waiter = {};
    waiter.promise = new Promise((resolve, reject) => {
      waiter.resolve = resolve;
      waiter.reject = reject;
    });
    waiter.timer = setTimeout(() => {
      pending.delete(index);
      waiter.reject(new Error("the kernel did not answer"));
    }, FETCH_TIMEOUT_MS);
    pending.set(index, waiter);
    model.send({ type: "fetch", index });
    return waiter.promise;
  }

  async function fullImage(item, index) {
    if (item.url) {
      try {
        return { src: await probe(item.url), source: "url" };
      } catch {
        // unreachable from this browser: ask the kernel
      }
    }
    return { src: await probe(await viaKernel(index)), source: "kernel" };
  }

  function items() {
    return model.get("items") || [];
  }

  function viewable(index) {
    const item = items()[index];
    return Boolean(item) && (item.kind === "image" || Boolean(item.thumb));
  }

  function closeLightbox() {
    if (!lightbox) return;
    lightbox.overlay.remove();
    lightbox = null;
  }

  function openLightbox(index) {
    closeLightbox();
    const item = items()[index];
    if (!item) return;
    const overlay = element("div", "rcnb-lightbox");
    overlay.setAttribute("role", "dialog");
    overlay.setAttribute("aria-label", item.filename);
    overlay.dataset.index = String(index);
    overlay.dataset.source = "thumb";
    const img = element("img", "rcnb-lightbox-img");
    img.alt = item.filename;
    if (item.thumb) img.src = item.thumb;
    const caption = element("div", "rcnb-lightbox-caption", item.label ? `${item.filename} · ${item.label}` : item.filename);
    const note = element("div", "rcnb-lightbox-note");
    overlay.append(img, caption, note);
    overlay.addEventListener("click", closeLightbox);
    document.body.append(overlay);
    const current = { overlay, index };
    lightbox = current;
    overlay.dataset.state = "loading";
    fullImage(item, index).then(
      ({ src, source }) => {
        if (lightbox !== current) return;
        img.src = src;
        overlay.dataset.source = source;
        overlay.dataset.state = "full";
      },
      (err) => {
        if (lightbox !== current) return;
        overlay.dataset.state = "thumb";
        note.textContent = `showing the preview: ${err.message}`;
      },
    );
  }

  function step(delta) {
    if (!lightbox) return;
    const n = items().length;
    for (let i = 1; i <= n; i++) {
      const next = (lightbox.index + delta * i + n * n) % n;
      if (viewable(next)) {
        openLightbox(next);
        return;
      }
    }
  }

  function onKey(event) {
    if (!lightbox) return;
    if (event.key === "Escape") closeLightbox();
    else if (event.key === "ArrowRight") step(1);
    else if (event.key === "ArrowLeft") step(-1);
    else return;
    event.preventDefault();
  }

  function playable(item, index) {
    // a <video>/<audio> element; without a URL the browser may load, a button that fetches the
    // file through the kernel first
    const tag = item.kind === "video" ? "video" : "audio";
    const box = element("div", `rcnb-${tag}-box`);
    const player = element(tag, `rcnb-${tag}`);
    player.controls = true;
    player.preload = "metadata";
    const fromKernel = (autoplay) => {
      box.dataset.state = "loading";
      viaKernel(index).then(
        (url) => {
          player.src = url;
          box.replaceChildren(player);
          box.dataset.state = "ready";
          if (autoplay) player.play().catch(() => {});
        },
        (err) => {
          box.dataset.state = "error";
          box.replaceChildren(element("div", "rcnb-placeholder", `could not load: ${err.message}`));
        },
      );
    };
    if (item.src) {
      player.src = item.src; // small enough to be in the widget's state: plays at once
      box.append(player);
    } else if (item.url) {
      player.src = item.url;
      let retried = false;
      player.addEventListener("error", () => {
        if (!retried) {
          retried = true;
          fromKernel(false);
        }
      });
      box.append(player);
    } else {
      const play = button("rcnb-placeholder rcnb-play", `${tag === "video" ? "▶" : "♪"} play`);
      play.addEventListener("click", () => fromKernel(true), { once: true });
      box.append(play);
    }
    return box;
  }

  function tile(item, index) {
    const figure = element("figure", "rcnb-tile");
    figure.dataset.kind = item.kind;
    figure.dataset.index = String(index);
    let visual;
    if (item.thumb) {
      visual = button("rcnb-thumb");
      visual.title = `${item.filename} — click to enlarge`;
      const img = element("img");
      img.src = item.thumb;
      img.alt = item.filename;
      img.loading = "lazy";
      visual.append(img);
      if (item.kind === "video") visual.append(element("span", "rcnb-badge", "▶"));
      visual.addEventListener("click", () => openLightbox(index));
    } else if (item.kind === "video" || item.kind === "audio") {
      visual = playable(item, index);
    } else if (item.kind === "image") {
      visual = button("rcnb-placeholder", "image");
      visual.addEventListener("click", () => openLightbox(index));
    } else {
      visual = element("div", "rcnb-placeholder", "file");
    }
    const caption = element("figcaption");
    const head = element("div", "rcnb-head");
    const save = button("rcnb-download", "⬇");
    save.title = `Download ${item.filename}`;
    save.setAttribute("aria-label", `download ${item.filename}`);
    save.addEventListener("click", () => download(item, index, save));
    head.append(element("div", "rcnb-name", item.filename), save);
    const info = element("div", "rcnb-details", details(item));
    caption.append(head, info);
    // a video's dimensions, when Python did not read the file, from the player once it knows
    visual.addEventListener("loadedmetadata", (event) => {
      const player = event.target;
      if (player.videoWidth) info.textContent = details(item, player.videoWidth, player.videoHeight);
    }, true);
    if (item.label) caption.append(element("div", "rcnb-label", item.label));
    if (item.error) caption.append(element("div", "rcnb-error", item.error));
    figure.append(visual, caption);
    return figure;
  }

  function download(item, index, control) {
    if (item.src) {
      saveAs(item.src, item.filename);
      return;
    }
    control.disabled = true;
    control.dataset.state = "loading";
    viaKernel(index).then(
      (url) => {
        control.disabled = false;
        control.dataset.state = "done";
        saveAs(url, item.filename);
      },
      (err) => {
        control.disabled = false;
        control.dataset.state = "error";
        control.title = `could not download: ${err.message}`;
      },
    );
  }

  const shown = new Map(); // index -> {item, node}: the tiles on the page

  // a tile whose player already plays the file fetched through the kernel is kept when only what
  // Python learnt of the file changed (its size, dimensions): a new tile would stop the playback
  function reuse(old, item) {
    if (!old || old.item.filename !== item.filename || old.item.kind !== item.kind) return false;
    if (!old.node.querySelector('[data-state="ready"]')) return false;
    old.node.querySelector(".rcnb-details").textContent = details(item);
    if (!item.error) old.node.querySelector(".rcnb-error")?.remove();
    old.item = item;
    return true;
  }

  function update() {
    const list = items();
    const nodes = list.map((item, index) => {
      const old = shown.get(index);
      if (reuse(old, item)) return old.node;
      const node = tile(item, index);
      shown.set(index, { item, node });
      return node;
    });
    for (const index of [...shown.keys()]) if (index >= list.length) shown.delete(index);
    grid.replaceChildren(...nodes);
    grid.hidden = items().length === 0;
    toolbar.hidden = items().length < 2;
    const lines = model.get("texts") || [];
    texts.replaceChildren(
      ...lines.map((line) => {
        const li = element("li");
        li.append(element("q", "", line));
        return li;
      }),
    );
    texts.hidden = lines.length === 0;
    loading.hidden = !model.get("loading");
  }

  downloadAll.addEventListener("click", onDownloadAll);
  model.on("msg:custom", onMessage);
  model.on("change:items", update);
  model.on("change:texts", update);
  model.on("change:loading", update);
  document.addEventListener("keydown", onKey);
  update();

  return () => {
    closeLightbox();
    document.removeEventListener("keydown", onKey);
    model.off("msg:custom", onMessage);
    model.off("change:items", update);
    model.off("change:texts", update);
    model.off("change:loading", update);
    for (const waiter of pending.values()) clearTimeout(waiter.timer);
    if (zipWaiter) clearTimeout(zipWaiter.timer);
    for (const url of blobs.values()) URL.revokeObjectURL(url);
    root.remove();
  };
}

export default { render };

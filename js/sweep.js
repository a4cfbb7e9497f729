// SweepView: one sweep's counts, ETA and Cancel, and its cells as a grid (rows × columns for two
// axes), a list (one axis, a zip) or rows (more axes). Python batches changes (≤ ~4 syncs/s).

import { button, element, formatDuration } from "./shared.js";

const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];

function render({ model, el }) {
  const root = element("div", "rcnb-sweep");
  const header = element("div", "rcnb-header");
  const summary = element("span", "rcnb-summary");
  const eta = element("span", "rcnb-eta");
  const cancel = button("rcnb-cancel", "Cancel sweep");
  header.append(summary, eta, cancel);
  const bar = element("div", "rcnb-bar");
  const fill = element("div", "rcnb-fill");
  bar.append(fill);
  const notice = element("div", "rcnb-notice");
  const grid = element("div", "rcnb-cells");
  root.append(header, bar, notice, grid);
  el.append(root);

  let requested = false;
  cancel.addEventListener("click", () => {
    requested = true;
    cancel.disabled = true;
    model.send({ type: "cancel" });
  });

  function tile(cell) {
    const box = element("figure", `rcnb-cell rcnb-${cell.state}`);
    if (cell.thumb) {
      const img = element("img", "rcnb-thumb");
      img.src = cell.thumb;
      img.alt = cell.label;
      box.append(img);
    } else {
      box.append(element("div", "rcnb-placeholder", cell.state));
    }
    const caption = element("figcaption", "", cell.label);
    if (cell.error) caption.append(element("div", "rcnb-error", cell.error));
    box.append(caption);
    return box;
  }

  function update() {
    const counts = model.get("counts") || {};
    const total = model.get("total") || 0;
    const done = (counts.succeeded || 0) + (counts.failed || 0) + (counts.cancelled || 0);
    const parts = [`${done}/${total} done`];
    for (const state of STATES) if (counts[state] && state !== "succeeded") parts.push(`${counts[state]} ${state}`);
    summary.textContent = parts.join(" · ");
    const left = model.get("eta");
    eta.textContent = left ? `about ${formatDuration(left)} left` : "";
    fill.style.width = `${total ? (100 * done) / total : 0}%`;
    const finished = done === total;
    cancel.disabled = finished || requested || model.get("cancelling");
    cancel.textContent = model.get("cancelling") ? "Cancelling…" : "Cancel sweep";
    notice.textContent = model.get("notice") || "";
    if (!model.get("cancelling")) requested = false;

    const cells = model.get("cells") || [];
    const layout = model.get("arrangement");
    const axes = model.get("axes") || [];
    grid.replaceChildren();
    grid.className = `rcnb-cells rcnb-${layout}`;
    if (layout === "grid" && axes.length === 2) {
      const columns = axes[1].values.length;
      grid.style.gridTemplateColumns = `auto repeat(${columns}, minmax(0, 1fr))`;
      grid.append(element("div", "rcnb-corner", `${axes[0].name} \\ ${axes[1].name}`));
      for (const value of axes[1].values) grid.append(element("div", "rcnb-head", value));
      cells.forEach((cell, index) => {
        if (index % columns === 0) grid.append(element("div", "rcnb-head", axes[0].values[cell.coords[0]]));
        grid.append(tile(cell));
      });
    } else {
      grid.style.gridTemplateColumns = "";
      for (const cell of cells) grid.append(tile(cell));
    }
  }

  model.on("change", update);
  update();
  return () => model.off("change", update);
}

export default { render };

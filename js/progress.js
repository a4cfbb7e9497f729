// JobProgress: one job's live state. Python batches trait changes (≤ ~10 syncs/s); the elapsed
// time ticks here, from submitted_at / finished_at, so Python sends nothing per second.

import { button, element, formatDuration } from "./shared.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const TRAITS = [
  "kind", "job_id", "label", "status", "position", "step", "steps", "node", "node_title",
  "nodes_done", "nodes_total", "preview", "error", "outputs", "submitted_at", "started_at",
  "finished_at", "cancelling", "notice", "fraction", "queue_text", "rate", "eta", "phase",
];

function num(x) {
  return Number.isInteger(x) ? String(x) : x.toFixed(1);
}

// as people count a queue: 0 (the APIs' "next") → "next", 1 → "2nd", 10 → "11th", 21 → "22nd"
function ordinal(n) {
  const teen = n % 100 >= 11 && n % 100 <= 13;
  const suffix = teen ? "th" : { 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th";
  return `${n}${suffix}`;
}

function render({ model, el }) {
  const root = element("div", "rcnb-progress");
  const header = element("div", "rcnb-header");
  const title = element("span", "rcnb-title");
  const kind = element("span", "rcnb-kind");
  const badge = element("span", "rcnb-badge");
  const elapsed = element("span", "rcnb-elapsed");
  header.append(title, kind, badge, elapsed);

  const bar = element("div", "rcnb-bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  const fill = element("div", "rcnb-fill");
  bar.append(fill);

  const details = element("div", "rcnb-details");
  const preview = element("img", "rcnb-preview");
  preview.alt = "latest preview";
  const error = element("div", "rcnb-error");
  const notice = element("div", "rcnb-notice");
  const footer = element("div", "rcnb-footer");
  const outputs = element("span", "rcnb-outputs");
  const cancel = button("rcnb-cancel", "Cancel");
  footer.append(outputs, cancel);
  root.append(header, bar, details, preview, error, notice, footer);
  el.append(root);

  let requested = false; // clicked, and Python has not answered yet
  let timer = null;

  const get = (name) => model.get(name);

  function elapsedSeconds() {
    const start = get("submitted_at");
    if (!start) return 0;
    const end = get("finished_at") ?? Date.now() / 1000;
    return end - start;
  }

  // Python's one fraction per job (nodes done incl. cached + the running node's steps); it never
  // goes back, and neither does the bar: a late or replayed lower value is not shown
  let best = 0;
  function fraction(status) {
    if (status === "succeeded") return 1;
    let f = get("fraction");
    if (f === undefined) f = stepsAndNodes(); // a model without the trait (older Python side)
    if (f == null) return null;
    best = Math.max(best, Math.min(1, Math.max(0, f)));
    return best;
  }

  function stepsAndNodes() {
    const steps = get("steps");
    const share = steps ? Math.min(1, Math.max(0, (get("step") || 0) / steps)) : null;
    const total = get("nodes_total");
    if (total) return Math.min(1, ((get("nodes_done") || 0) + (share || 0)) / total);
    return share;
  }

  function queueText() {
    const text = get("queue_text");
    if (text) return text;
    const position = get("position");
    if (position == null) return "waiting in queue";
    return position <= 0 ? "next in queue" : `${ordinal(position + 1)} in queue`;
  }

  function tick() {
    elapsed.textContent = formatDuration(elapsedSeconds());
  }

  function update() {
    const status = get("status") || "queued";
    const terminal = TERMINAL.has(status);
    root.dataset.status = status;
    title.textContent = get("label") || get("job_id") || "";
    kind.textContent = get("kind") || "";
    badge.textContent = status;
    badge.className = `rcnb-badge rcnb-${status}`;

    const f = fraction(status);
    const indeterminate = status === "running" && f === null;
    bar.classList.toggle("rcnb-indeterminate", indeterminate);
    fill.style.width = indeterminate ? "" : `${((f ?? 0) * 100).toFixed(1)}%`;
    if (f === null) {
      bar.removeAttribute("aria-valuenow");
      bar.setAttribute("aria-valuetext", status);
    } else {
      bar.setAttribute("aria-valuenow", String(Math.round(f * 100)));
      bar.setAttribute("aria-valuetext", `${Math.round(f * 100)}%`);
    }

    const parts = [];
    if (status === "queued") parts.push(queueText());
    if (status === "running") {
      const phase = get("phase");
      if (phase) parts.push(phase);
      const nodeTitle = get("node_title");
      const steps = get("steps");
      if (nodeTitle) parts.push(nodeTitle);
      if (steps) parts.push(`step ${num(get("step") || 0)}/${num(steps)}`);
    }
    const total = get("nodes_total");
    if (total && status !== "queued") parts.push(`nodes ${get("nodes_done") || 0}/${total}`);
    if (status === "running") {
      const rate = get("rate");
      if (rate) parts.push(rate);
      const eta = get("eta");
      if (eta != null) parts.push(`ETA ${formatDuration(eta)}`);
    }
    details.textContent = parts.join(" · ");
    details.hidden = parts.length === 0;

    const src = get("preview") || "";
    if (src && preview.getAttribute("src") !== src) preview.src = src;
    preview.hidden = !src;

    error.textContent = get("error") || "";
    error.hidden = status !== "failed" || !error.textContent;
    notice.textContent = get("notice") || "";
    notice.hidden = !notice.textContent;

    const n = get("outputs") || 0;
    outputs.textContent = n ? `${n} output${n === 1 ? "" : "s"}` : "";

    const busy = requested || get("cancelling");
    cancel.hidden = terminal;
    cancel.disabled = Boolean(busy);
    cancel.textContent = busy ? "cancelling…" : "Cancel";

    tick();
    if (terminal && timer !== null) {
      clearInterval(timer);
      timer = null;
    } else if (!terminal && timer === null) {
      timer = setInterval(tick, 100);
    }
  }

  function onCancelling() {
    if (!get("cancelling")) requested = false; // answered: either done or refused (see notice)
  }

  function onClick() {
    if (cancel.disabled) return;
    requested = true;
    model.send({ type: "cancel" });
    update();
  }

  cancel.addEventListener("click", onClick);
  model.on("change:cancelling", onCancelling);
  for (const name of TRAITS) model.on(`change:${name}`, update);
  update();

  return () => {
    if (timer !== null) clearInterval(timer);
    cancel.removeEventListener("click", onClick);
    model.off("change:cancelling", onCancelling);
    for (const name of TRAITS) model.off(`change:${name}`, update);
    root.remove();
  };
}

export default { render };

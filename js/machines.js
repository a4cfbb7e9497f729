// MachinePanel: the machines launched from this kernel. Python sends rows when something changes
// (batched, ≤ ~10 syncs/s); uptime, estimated cost and time left tick here, once a second, from
// ready_at / ended_at / stopping_at, so Python sends nothing per second. Those are the server's
// times, so the ticking is on the server's clock: each row carries clock_now (the server's now
// when Python sent it) and clock_rate (its seconds per our second: 60 under an emulator at speed
// 60), never this browser's own clock, which may be off or run at another pace.

import { button, element, formatDuration, money } from "./shared.js";

const STATES = ["starting", "ready", "stopping", "stopped", "failed"];
const ENDED = new Set(["stopping", "stopped", "failed"]);
const CAN = { stop: new Set(["starting", "ready", "failed"]), extend: new Set(["starting", "ready"]) };
const BUSY = { stop: "stopping…", extend: "extending…" };
const CONFIRM_MS = 4000; // a Stop asks once more, for this long

const span = (seconds) => formatDuration(seconds, { whole: true });

// the server's now for a row received at `receivedAt` (our epoch seconds), at our `ours`
export function serverNow(row, receivedAt, ours) {
  if (row.clock_now == null) return ours;
  return row.clock_now + (ours - receivedAt) * (row.clock_rate ?? 1);
}

// (uptime, estimated cost, time left) of a row at `now` (epoch seconds); as the Python fallback
export function figures(row, now) {
  const { ready_at: ready, ended_at: ended, stopping_at: stopping, state, price } = row;
  let uptime;
  let cost;
  if (ready == null) {
    uptime = state === "starting" ? "not ready (not billed)" : "—";
    cost = state === "starting" && price != null ? money(0) : "—";
  } else {
    const end = ended ?? (stopping != null ? Math.min(now, stopping) : now);
    const seconds = Math.max(0, end - ready);
    uptime = span(seconds);
    cost = price != null ? `≈${money((seconds / 3600) * price)}` : "—";
  }
  let left = "—";
  if (state === "ready" && stopping != null) left = stopping > now ? span(stopping - now) : "due now";
  else if (state === "starting" && row.estimated_duration) left = `${span(row.estimated_duration)} once ready`;
  return { uptime, cost, left };
}

function render({ model, el }) {
  const root = element("div", "rcnb-machines");
  const table = element("table", "rcnb-table");
  const head = element("tr");
  for (const [label, title] of [
    ["Machine", ""], ["Type", ""], ["Status", ""], ["Uptime", "since Ready: billing starts at Ready"],
    ["Est. cost", "an estimate: uptime × an hourly price table (the API reports no prices)"],
    ["Time left", "until the machine stops itself (estimated_stopping_at)"], ["", ""],
  ]) {
    const th = element("th", "", label);
    if (title) th.title = title;
    head.append(th);
  }
  const thead = element("thead");
  thead.append(head);
  const tbody = element("tbody");
  table.append(thead, tbody);
  const empty = element("div", "rcnb-empty", "No machines launched from this kernel yet.");
  const footer = element("div", "rcnb-footer");
  root.append(table, empty, footer);
  el.append(root);

  const views = new Map(); // id → the row's elements
  const requested = new Map(); // id → {kind, until}: clicked, and Python has not answered yet
  const confirming = new Map(); // id → time the Stop confirmation lapses
  const lapses = new Map(); // id → the timeout that lets it lapse
  let timer = null;

  const rows = () => model.get("rows") || [];

  function busyKind(row) {
    if (row.pending) return row.pending;
    const asked = requested.get(row.id);
    if (asked && (row.handled || 0) < asked.until) return asked.kind;
    requested.delete(row.id);
    return "";
  }

  function makeView(id) {
    const tr = element("tr", "rcnb-row");
    tr.dataset.id = id;
    const cells = {};
    for (const name of ["id", "type", "status", "uptime", "cost", "left", "actions"]) {
      cells[name] = element("td", `rcnb-${name}`);
      tr.append(cells[name]);
    }
    const short = element("span", "rcnb-short");
    const kept = element("span", "rcnb-kept", "kept");
    kept.title = "left running when the kernel exits (machine.keep = True)";
    cells.id.append(short, kept);
    const badge = element("span", "rcnb-badge");
    cells.status.append(badge);
    const stop = button("rcnb-stop", "Stop");
    const extend = button("rcnb-extend", "Extend +30 min");
    extend.title = "add 30 minutes to the machine's running time";
    cells.actions.append(extend, stop);
    const noteRow = element("tr", "rcnb-note-row");
    const noteCell = element("td");
    noteCell.colSpan = 7;
    const error = element("div", "rcnb-error");
    const warning = element("div", "rcnb-warning");
    noteCell.append(error, warning);
    noteRow.append(noteCell);

    const view = { tr, noteRow, cells, short, kept, badge, stop, extend, error, warning, row: null, receivedAt: 0 };
    stop.addEventListener("click", () => onClick(view, "stop"));
    extend.addEventListener("click", () => onClick(view, "extend"));
    return view;
  }

  function onClick(view, kind) {
    const row = view.row;
    const clicked = kind === "stop" ? view.stop : view.extend;
    if (!row || clicked.disabled) return;
    if (kind === "stop" && !(confirming.get(row.id) > Date.now())) {
      confirming.set(row.id, Date.now() + CONFIRM_MS);
      clearTimeout(lapses.get(row.id));
      lapses.set(row.id, setTimeout(() => {
        lapses.delete(row.id);
        if (views.get(row.id) === view) fill(view, view.row); // the confirmation lapses
      }, CONFIRM_MS + 20));
      fill(view, row);
      return;
    }
    confirming.delete(row.id);
    requested.set(row.id, { kind, until: (row.handled || 0) + 1 });
    model.send({ type: kind, id: row.id });
    fill(view, row);
  }

  function fill(view, row) {
    if (view.row !== row) view.receivedAt = Date.now() / 1000;
    view.row = row;
    const state = STATES.includes(row.state) ? row.state : "starting";
    view.tr.dataset.state = state;
    view.short.textContent = row.short || row.id;
    view.cells.id.title = row.id;
    view.kept.hidden = !row.keep;
    view.cells.type.textContent = row.server_type || "?";
    view.badge.textContent = row.state;
    view.badge.className = `rcnb-badge rcnb-${state}`;
    view.badge.title = row.raw_status || "";

    const busy = busyKind(row);
    const confirm = !busy && confirming.get(row.id) > Date.now();
    if (!confirm) confirming.delete(row.id);
    view.stop.hidden = !CAN.stop.has(row.state) && busy !== "stop";
    view.extend.hidden = !CAN.extend.has(row.state) && busy !== "extend";
    view.stop.disabled = view.extend.disabled = Boolean(busy);
    view.stop.textContent = busy === "stop" ? BUSY.stop : confirm ? "Confirm stop" : "Stop";
    view.stop.classList.toggle("rcnb-confirm", confirm);
    view.stop.title = confirm ? "click again to stop the machine (billing ends)" : "stop the machine";
    view.extend.textContent = busy === "extend" ? BUSY.extend : "Extend +30 min";

    view.error.textContent = row.error || "";
    view.error.hidden = !row.error;
    view.warning.textContent = row.warning || "";
    view.warning.hidden = !row.warning;
    view.noteRow.hidden = !row.error && !row.warning;
    tickRow(view, Date.now() / 1000);
  }

  function tickRow(view, ours) {
    const { uptime, cost, left } = figures(view.row, serverNow(view.row, view.receivedAt, ours));
    view.cells.uptime.textContent = uptime;
    view.cells.cost.textContent = cost;
    view.cells.left.textContent = left;
  }

  function tick() {
    const ours = Date.now() / 1000;
    for (const view of views.values()) tickRow(view, ours);
  }

  function update() {
    const list = rows();
    const seen = new Set();
    let index = 0;
    for (const row of list) {
      seen.add(row.id);
      let view = views.get(row.id);
      if (!view) {
        view = makeView(row.id);
        views.set(row.id, view);
      }
      fill(view, row);
      // keep rows in place (a moved row would swallow a click under way); move only if out of order
      if (tbody.children[index] !== view.tr) tbody.insertBefore(view.tr, tbody.children[index] || null);
      if (tbody.children[index + 1] !== view.noteRow) {
        tbody.insertBefore(view.noteRow, tbody.children[index + 1] || null);
      }
      index += 2;
    }
    for (const [id, view] of views) {
      if (seen.has(id)) continue;
      view.tr.remove();
      view.noteRow.remove();
      views.delete(id);
      requested.delete(id);
      confirming.delete(id);
      clearTimeout(lapses.get(id));
      lapses.delete(id);
    }
    table.hidden = list.length === 0;
    empty.hidden = list.length > 0;

    const every = model.get("refresh_every");
    const at = model.get("refreshed_at");
    const parts = [];
    if (every) parts.push(`refreshes every ${span(every)}`);
    if (at) parts.push(`last at ${new Date(at * 1000).toLocaleTimeString()}`);
    parts.push("costs are estimates");
    footer.textContent = parts.join(" · ");

    const live = list.some((row) => !ENDED.has(row.state));
    if (live && timer === null) timer = setInterval(tick, 1000);
    else if (!live && timer !== null) {
      clearInterval(timer);
      timer = null;
    }
  }

  const TRAITS = ["rows", "refresh_every", "refreshed_at"];
  for (const name of TRAITS) model.on(`change:${name}`, update);
  update();

  return () => {
    if (timer !== null) clearInterval(timer);
    for (const lapse of lapses.values()) clearTimeout(lapse);
    for (const name of TRAITS) model.off(`change:${name}`, update);
    views.clear();
    root.remove();
  };
}

export default { render };

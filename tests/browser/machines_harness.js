// The machines scenario of harness.js: renders the MachinePanel module as anywidget gets it with
// a fake anywidget model, plays the kernel's side (row updates in answer to button clicks) and
// returns what it observed.

import { $, FakeModel, loadWidget, sleep } from "./fake_model.js";

const A = "d26d4f31-8696-43ad-ba62-b4f8c268b79a";
const B = "761af3a7-1b2c-4d5e-8f90-a1b2c3d4e5f6";
const C = "0c0ffee0-0000-4000-8000-000000000003";

function base(id, fields) {
  return {
    id, short: id.slice(0, 8), server_type: "large", state: "ready", raw_status: "Ready",
    estimated_duration: 3600, ready_at: null, stopping_at: null, ended_at: null, price: 1.75,
    keep: false, pending: "", handled: 0, error: "", warning: "", ...fields,
  };
}

function visible(node) {
  return Boolean(node) && !node.hidden && getComputedStyle(node).display !== "none";
}

function rowState(el, id) {
  const tr = el.querySelector(`tr.rcnb-row[data-id="${id}"]`);
  if (!tr) return null;
  const note = tr.nextElementSibling;
  const stop = $(tr, ".rcnb-stop");
  const extend = $(tr, ".rcnb-extend");
  return {
    short: $(tr, ".rcnb-short").textContent,
    title: $(tr, ".rcnb-id").title,
    kept: visible($(tr, ".rcnb-kept")),
    type: $(tr, ".rcnb-type").textContent,
    status: $(tr, ".rcnb-badge").textContent,
    badgeClass: $(tr, ".rcnb-badge").className,
    badgeColor: getComputedStyle($(tr, ".rcnb-badge")).backgroundColor,
    uptime: $(tr, ".rcnb-uptime").textContent,
    cost: $(tr, ".rcnb-cost").textContent,
    left: $(tr, ".rcnb-left").textContent,
    stop: { shown: visible(stop), disabled: stop.disabled, text: stop.textContent,
            confirm: stop.classList.contains("rcnb-confirm") },
    extend: { shown: visible(extend), disabled: extend.disabled, text: extend.textContent },
    noteShown: visible(note),
    error: visible($(note, ".rcnb-error")) ? $(note, ".rcnb-error").textContent : null,
    errorColor: getComputedStyle($(note, ".rcnb-error")).color,
    warning: visible($(note, ".rcnb-warning")) ? $(note, ".rcnb-warning").textContent : null,
  };
}

function order(el) {
  return [...el.querySelectorAll("tbody > tr")].map((tr) =>
    tr.classList.contains("rcnb-row") ? tr.dataset.id.slice(0, 4) : "note");
}

function setRow(model, id, fields) {
  model.set("rows", model.get("rows").map((row) => (row.id === id ? { ...row, ...fields } : row)));
}

export async function machinesScenario() {
  const { default: widget, formatDuration, figures, money } = await loadWidget("machines");
  const out = { steps: {} };
  const el = document.getElementById("one");
  const now = Date.now() / 1000;
  const model = new FakeModel({
    rows: [
      base(A, { ready_at: now - 65, stopping_at: now + 1800, keep: true }),
      base(B, { server_type: "medium", state: "starting", raw_status: "Starting", price: 0.99 }),
      base(C, { state: "stopped", raw_status: "(gone)", ready_at: now - 7200, ended_at: now - 3600,
                stopping_at: now - 100, warning: "could not refresh: TimeoutError" }),
    ],
    refresh_every: 10, refreshed_at: now,
  });
  const cleanup = widget.render({ model, el });
  const view = () => ({ A: rowState(el, A), B: rowState(el, B), C: rowState(el, C) });
  out.steps.initial = view();
  out.order = order(el);
  out.header = [...el.querySelectorAll("th")].map((th) => th.textContent);
  out.costTitle = el.querySelectorAll("th")[4].title;
  out.footer = $(el, ".rcnb-footer").textContent;
  const trA = el.querySelector(`tr.rcnb-row[data-id="${A}"]`);

  const before = rowState(el, A).uptime;
  await sleep(2100);
  out.ticked = { before, after: rowState(el, A).uptime };

  // Extend: one click sends, the buttons wait for the kernel
  $(trA, ".rcnb-extend").click();
  $(trA, ".rcnb-extend").click();
  out.steps.extendClicked = rowState(el, A);
  setRow(model, A, { pending: "extend" });
  setRow(model, A, { pending: "", handled: 1, stopping_at: now + 3600, estimated_duration: 5400 });
  out.steps.extended = rowState(el, A);

  // Stop asks once more; the second click sends
  $(trA, ".rcnb-stop").click();
  out.steps.confirming = rowState(el, A);
  out.sentBeforeConfirm = model.sent.length;
  $(trA, ".rcnb-stop").click();
  out.steps.stopClicked = rowState(el, A);
  // an unrelated refresh arrives before the kernel has seen the click: still busy
  setRow(model, B, { warning: "" });
  out.steps.stopStillBusy = rowState(el, A);
  setRow(model, A, { pending: "stop" });
  setRow(model, A, { pending: "", handled: 2, state: "stopping", raw_status: "Deleting",
                     ended_at: Date.now() / 1000 });
  out.steps.stopped = rowState(el, A);
  out.sameElement = el.querySelector(`tr.rcnb-row[data-id="${A}"]`) === trA;
  const frozen = rowState(el, A).uptime;
  await sleep(1200);
  out.frozen = { before: frozen, after: rowState(el, A).uptime };

  // a Stop left unconfirmed lapses and sends nothing
  const trB = el.querySelector(`tr.rcnb-row[data-id="${B}"]`);
  $(trB, ".rcnb-stop").click();
  out.steps.bConfirming = rowState(el, B);
  await sleep(4500);
  out.steps.bLapsed = rowState(el, B);

  // a refused request (handled without pending) frees the buttons and shows why
  $(trB, ".rcnb-extend").click();
  out.steps.bBusy = rowState(el, B);
  setRow(model, B, { handled: 1, error: "extend failed: the machine is not ready yet" });
  out.steps.bRefused = rowState(el, B);
  out.sent = [...model.sent];

  // failed machines may still exist: Stop stays, Extend goes
  setRow(model, B, { state: "failed", raw_status: "Error", error: "" });
  out.steps.bFailed = rowState(el, B);

  // rows removed and reordered
  model.set("rows", [model.get("rows")[2], model.get("rows")[0]]);
  out.reordered = { order: order(el), B: rowState(el, B) };
  model.set("rows", []);
  out.empty = { emptyShown: visible($(el, ".rcnb-empty")), tableShown: visible($(el, ".rcnb-table")) };

  cleanup();
  out.afterCleanup = { listeners: model.listenerCount(), children: el.children.length };
  const span = (seconds) => formatDuration(seconds, { whole: true });
  out.format = [span(4.7), span(125), span(3725), money(1234.5)];
  out.figures = figures(base(A, { ready_at: 1000, stopping_at: 4600 }), 2800);
  return out;
}


// The fake anywidget model and the small helpers both harnesses use.

export class FakeModel {
  constructor(state) {
    this.state = { ...state };
    this.listeners = new Map();
    this.sent = [];
    this.onSend = null;
  }
  get(name) { return this.state[name]; }
  set(name, value) {
    this.state[name] = value;
    this.trigger(`change:${name}`, value);
  }
  on(name, callback) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(callback);
  }
  off(name, callback) {
    if (!name) this.listeners.clear();
    else if (!callback) this.listeners.delete(name);
    else this.listeners.get(name)?.delete(callback);
  }
  send(content, callbacks, buffers) {
    this.sent.push(content);
    if (this.onSend) this.onSend(content, buffers);
  }
  save_changes() {}
  trigger(name, ...args) {
    for (const callback of [...(this.listeners.get(name) || [])]) callback(...args);
  }
  listenerCount() {
    let n = 0;
    for (const set of this.listeners.values()) n += set.size;
    return n;
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export const $ = (root, selector) => root.querySelector(selector);

export async function until(condition, ms = 2000) {
  const end = performance.now() + ms;
  while (!condition() && performance.now() < end) await sleep(20);
  return condition();
}

// A widget as anywidget loads it: the text of its stylesheet (the widget class's `_css`) in a
// <style>, the text of its module (`_esm`, shared imports inlined) imported from a blob URL,
// where a relative import could not resolve.
export async function loadWidget(name) {
  const text = async (file) => {
    const reply = await fetch(`/anywidget/${file}`);
    if (!reply.ok) throw new Error(`/anywidget/${file}: HTTP ${reply.status}`);
    return reply.text();
  };
  const style = document.createElement("style");
  style.textContent = await text(`${name}.css`);
  document.head.append(style);
  const module = new Blob([await text(`${name}.js`)], { type: "text/javascript" });
  return import(URL.createObjectURL(module));
}

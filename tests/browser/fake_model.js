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

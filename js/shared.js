// What the three widget modules share: DOM building and the duration/cost formats. anywidget
// loads each widget as one module, so runcomfy_nb/widgets/assets.py inlines this file where a
// widget module imports it; keep it free of imports, of `export default` and of side effects.

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function button(className, text) {
  const node = element("button", className, text);
  node.type = "button";
  return node;
}

// 4.2 s · 2 min 05 s · 1 h 02 min (`whole`: 4 s, for clocks that tick once a second); the same
// text as runcomfy_nb.timefmt.format_duration
export function formatDuration(seconds, { whole = false } = {}) {
  const s = Math.max(0, seconds || 0);
  if (s < 60) return whole ? `${Math.floor(s)} s` : `${s.toFixed(1)} s`;
  const total = Math.floor(s);
  if (total < 3600) return `${Math.floor(total / 60)} min ${String(total % 60).padStart(2, "0")} s`;
  return `${Math.floor(total / 3600)} h ${String(Math.floor((total % 3600) / 60)).padStart(2, "0")} min`;
}

// $1,234.50
export function money(value) {
  return `$${value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
}

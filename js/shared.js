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

// `s` with one decimal as Python's f"{s:.1f}" writes it: a tie goes to the even digit, where
// toFixed rounds it up. The only exact ties in binary are odd quarters (0.25 → 0.2, 0.75 → 0.8).
function oneDecimal(s) {
  const quarters = s * 4;
  if (!Number.isInteger(quarters) || quarters % 2 === 0) return s.toFixed(1);
  const low = Math.floor(s * 10);
  return ((low % 2 === 0 ? low : low + 1) / 10).toFixed(1);
}

// 4.2 s · 2 min 05 s · 1 h 02 min (`whole`: 4 s, for clocks that tick once a second); the same
// text as runcomfy_nb.timefmt.format_duration
export function formatDuration(seconds, { whole = false } = {}) {
  const s = Math.max(0, seconds || 0);
  if (s < 60) return whole ? `${Math.floor(s)} s` : `${oneDecimal(s)} s`;
  const total = Math.floor(s);
  if (total < 3600) return `${Math.floor(total / 60)} min ${String(total % 60).padStart(2, "0")} s`;
  return `${Math.floor(total / 3600)} h ${String(Math.floor((total % 3600) / 60)).padStart(2, "0")} min`;
}

// $1,234.50
export function money(value) {
  return `$${value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
}

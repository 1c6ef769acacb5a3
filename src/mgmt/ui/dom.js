// Building the DOM from API data without ever parsing it as HTML: strings
// become text nodes, so a hostile queue name stays a name.

// h('a', {href: '#/x', class: 'c', onclick: f}, 'text', child, [more])
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

// An API error in place: RabbitMQ's reason text.
export function errorBox(e) {
  return h('p', { class: 'error', role: 'alert' }, e?.message ?? String(e));
}

export function num(n) {
  return typeof n === 'number' ? n.toLocaleString('en') : '—';
}

export function rate(details) {
  const r = details?.rate;
  if (typeof r !== 'number') return '—';
  return `${r.toFixed(r >= 100 ? 0 : r >= 10 ? 1 : 2)}/s`;
}

export function bytes(n) {
  if (typeof n !== 'number') return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function duration(ms) {
  if (typeof ms !== 'number') return '—';
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  s %= 86400;
  const hrs = Math.floor(s / 3600);
  const min = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hrs}h`;
  if (hrs) return `${hrs}h ${min}m`;
  return `${min}m ${s % 60}s`;
}

// A two-column table of key/value rows.
export function facts(rows) {
  return h('table', { class: 'facts' },
    h('tbody', {}, rows.map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', {}, v)))));
}

// A field table (arguments, headers, client properties) as text.
export function value(v) {
  if (v === null || v === undefined) return '';
  return typeof v === 'object' ? JSON.stringify(v) : String(v);
}

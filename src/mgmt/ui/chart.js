// Line charts as inline SVG built from the API's `samples`
// ([{sample, timestamp}], newest first). No library: a few elements.

const NS = 'http://www.w3.org/2000/svg';
const W = 600;
const H = 160;
const PAD = { left: 48, right: 8, top: 8, bottom: 20 };

function svg(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function short(n) {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(Math.round(n * 100) / 100);
}

// A counter's samples as per-second rates between consecutive samples.
export function toRates(samples) {
  const out = [];
  for (let i = 0; i + 1 < (samples ?? []).length; i += 1) {
    const [now, before] = [samples[i], samples[i + 1]];
    const seconds = (now.timestamp - before.timestamp) / 1000;
    if (seconds > 0) out.push({ timestamp: now.timestamp, sample: Math.max(0, now.sample - before.sample) / seconds });
  }
  return out;
}

// series: [{label, samples, unit}]; `title` names the chart for screen
// readers. A figure with the chart and a legend, or a note when the API
// gave no samples (users who do not see every vhost get none).
export function lineChart(title, series) {
  const fig = document.createElement('figure');
  fig.className = 'chart';
  const cap = document.createElement('figcaption');
  cap.textContent = title;
  fig.append(cap);
  const points = series.flatMap((s) => s.samples ?? []);
  if (!series.some((s) => (s.samples?.length ?? 0) >= 2)) {
    const p = document.createElement('p');
    p.className = 'muted';
    p.textContent = 'No history yet.';
    fig.append(p);
    return fig;
  }
  const t0 = Math.min(...points.map((p) => p.timestamp));
  const t1 = Math.max(...points.map((p) => p.timestamp));
  const top = Math.max(1, ...points.map((p) => p.sample));
  const x = (t) => PAD.left + ((t - t0) / Math.max(1, t1 - t0)) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title });
  for (const v of [0, top / 2, top]) {
    root.append(svg('line', { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: 'grid' }));
    root.append(svg('text', { x: PAD.left - 4, y: y(v) + 4, 'text-anchor': 'end', class: 'axis' }, short(v)));
  }
  const minutes = Math.round((t1 - t0) / 60000);
  root.append(svg('text', { x: PAD.left, y: H - 4, class: 'axis' },
    minutes ? `${minutes} min ago` : `${Math.round((t1 - t0) / 1000)} s ago`));
  root.append(svg('text', { x: W - PAD.right, y: H - 4, 'text-anchor': 'end', class: 'axis' }, 'now'));
  series.forEach((s, i) => {
    const pts = (s.samples ?? []).slice().reverse().map((p) => `${x(p.timestamp).toFixed(1)},${y(p.sample).toFixed(1)}`);
    if (pts.length) root.append(svg('polyline', { points: pts.join(' '), class: `line s${i}` }));
  });
  fig.append(root);
  const legend = document.createElement('ul');
  legend.className = 'legend';
  series.forEach((s, i) => {
    const li = document.createElement('li');
    li.className = `s${i}`;
    const newest = s.samples?.[0]?.sample;
    const shown = newest === undefined ? '—' : newest.toLocaleString('en', { maximumFractionDigits: 2 });
    li.textContent = `${s.label}: ${shown}${s.unit ?? ''}`;
    legend.append(li);
  });
  fig.append(legend);
  return fig;
}

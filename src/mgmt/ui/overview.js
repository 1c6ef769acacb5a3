// Overview: queued messages (totals and a chart over the last ten
// minutes), message rates, object counts and the node's facts, from
// /api/overview (with its rate samples) and /api/nodes.

import { api } from './api.js';
import { lineChart, toRates } from './chart.js';
import { bytes, clear, duration, errorBox, facts, h, num, rate } from './dom.js';

// Chart ranges as RabbitMQ's UI offers them: [label, age s, incr s].
const RANGES = [
  ['last minute', 60, 5],
  ['last ten minutes', 600, 5],
  ['last hour', 3600, 60],
];
let range = RANGES[1];

function history() {
  const [, age, incr] = range;
  return `?lengths_age=${age}&lengths_incr=${incr}&msg_rates_age=${age}&msg_rates_incr=${incr}`;
}

// RabbitMQ's names for the message rates it shows on its overview.
const RATES = [
  ['publish', 'Publish'],
  ['confirm', 'Publisher confirm'],
  ['deliver_get', 'Deliver (manual ack) / get'],
  ['ack', 'Consumer ack'],
  ['redeliver', 'Redelivered'],
];

export function mount(main) {
  const body = h('div', { id: 'overview' });
  const select = h('select', { id: 'chart-range' },
    RANGES.map((r) => h('option', { value: r[0], selected: r === range }, r[0])));
  main.append(h('h1', {}, 'Overview'),
    h('div', { class: 'controls' }, h('label', { for: 'chart-range' }, 'Charts show the'), select),
    body);
  const page = {
    async refresh() {
      let o;
      let nodes;
      try {
        [o, nodes] = await Promise.all([api(`/overview${history()}`), api('/nodes')]);
      } catch (e) {
        clear(body).append(errorBox(e));
        return;
      }
      clear(body).append(
        totals(o.queue_totals ?? {}),
        rates(o.message_stats ?? {}),
        counts(o.object_totals ?? {}),
        ...nodes.map((n) => node(n, o)),
      );
    },
  };
  select.addEventListener('change', () => {
    range = RANGES.find((r) => r[0] === select.value) ?? range;
    page.refresh();
  });
  return page;
}

function totals(q) {
  const tiles = [
    ['Ready', q.messages_ready, 'total-ready'],
    ['Unacked', q.messages_unacknowledged, 'total-unacked'],
    ['Total', q.messages, 'total-messages'],
  ];
  return h('section', { 'aria-labelledby': 'h-queued' },
    h('h2', { id: 'h-queued' }, 'Queued messages'),
    h('div', { class: 'tiles' }, tiles.map(([label, n, id]) =>
      h('div', { class: 'tile' }, h('span', { class: 'label' }, label), h('span', { class: 'big', id }, num(n))))),
    lineChart(`Queued messages, ${range[0]}`, [
      { label: 'Ready', samples: q.messages_ready_details?.samples },
      { label: 'Unacked', samples: q.messages_unacknowledged_details?.samples },
      { label: 'Total', samples: q.messages_details?.samples },
    ]));
}

function rates(stats) {
  return h('section', { 'aria-labelledby': 'h-rates' },
    h('h2', { id: 'h-rates' }, 'Message rates'),
    h('div', { class: 'tiles' }, RATES.map(([key, label]) =>
      h('div', { class: 'tile' }, h('span', { class: 'label' }, label), h('span', { class: 'big', id: `rate-${key}` }, rate(stats[`${key}_details`]))))),
    lineChart(`Message rates, ${range[0]} (per second)`,
      RATES.filter(([key]) => stats[`${key}_details`]?.samples)
        .map(([key, label]) => ({ label, samples: toRates(stats[`${key}_details`].samples), unit: '/s' }))));
}

function counts(t) {
  const items = [
    ['Connections', t.connections],
    ['Channels', t.channels],
    ['Exchanges', t.exchanges],
    ['Queues', t.queues],
    ['Consumers', t.consumers],
  ];
  return h('section', { 'aria-labelledby': 'h-totals' },
    h('h2', { id: 'h-totals' }, 'Global counts'),
    h('div', { class: 'tiles' }, items.map(([label, n]) =>
      h('div', { class: 'tile' }, h('span', { class: 'label' }, label), h('span', { class: 'big' }, num(n))))));
}

function node(n, o) {
  const listeners = (o.listeners ?? []).map((l) => `${l.protocol} ${l.ip_address.includes(':') ? `[${l.ip_address}]` : l.ip_address}:${l.port}`).join(', ');
  const list = (files) => (files?.length ? files.join(', ') : '—');
  const alarm = (on) => (on ? h('strong', { class: 'bad' }, 'alarm') : 'ok');
  return h('section', { 'aria-labelledby': 'h-node' },
    h('h2', { id: 'h-node' }, 'Node'),
    facts([
      ['Name', n.name],
      ['Version', `${o.product_name ?? ''} ${o.product_version ?? ''} (RabbitMQ ${o.rabbitmq_version ?? '?'} compatible)`],
      ['Uptime', duration(n.uptime)],
      ['Memory', [`${bytes(n.mem_used)} of ${bytes(n.mem_limit)} high watermark `, alarm(n.mem_alarm)]],
      ['Disk free', [`${bytes(n.disk_free)} (limit ${bytes(n.disk_free_limit)}) `, alarm(n.disk_free_alarm)]],
      ['File descriptors', `${num(n.fd_used)} of ${num(n.fd_total)}`],
      ['Listeners', listeners || '—'],
      ['Data directory', h('span', { id: 'node-db-dir' }, n.db_dir ?? '—')],
      ['Config file', h('span', { id: 'node-config-files' }, list(n.config_files))],
      ['Log file', h('span', { id: 'node-log-files' }, list(n.log_files))],
    ]));
}

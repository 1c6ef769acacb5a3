// One queue: depth and its chart, details, arguments and policy,
// consumers; get messages, publish a message (through the default
// exchange), purge and delete. Forms stay put across refreshes: only the
// live parts are redrawn.

import { api, seg } from './api.js';
import { lineChart, toRates } from './chart.js';
import { bytes, clear, errorBox, facts, h, num, rate, value } from './dom.js';
import { field, publishForm } from './publish.js';
import { bindForm, bindingsTable } from './bindings.js';
import { moveForm } from './move.js';

const HISTORY = 'lengths_age=600&lengths_incr=5&msg_rates_age=600&msg_rates_incr=5';

// RabbitMQ's UI's ack modes, in its words.
const ACK_MODES = [
  ['ack_requeue_true', 'Nack message requeue true'],
  ['ack_requeue_false', 'Automatic ack'],
  ['reject_requeue_true', 'Reject requeue true'],
  ['reject_requeue_false', 'Reject requeue false'],
];

export function mount(main, { args: [vhost, name] }) {
  const path = `/queues/${seg(vhost)}/${seg(name)}`;
  const live = h('div', { id: 'queue-live' });
  const unbindOut = h('div', { id: 'unbind-result', 'aria-live': 'polite' });
  const page = {};
  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/queues' }, 'Queues'), ' › ', vhost),
    h('h1', {}, 'Queue ', h('span', { id: 'queue-name' }, name)),
    live,
    bindForm({ vhost, to: name, done: () => page.refresh() }),
    getForm(path),
    publishForm({ vhost, exchange: 'amq.default', routingKey: name }),
    moveForm({ vhost, queue: name }),
    dangerZone(path, name));

  return Object.assign(page, {
    async refresh() {
      let q;
      let bindings;
      try {
        [q, bindings] = await Promise.all([api(`${path}?${HISTORY}`), api(`${path}/bindings`)]);
      } catch (e) {
        clear(live).append(errorBox(e));
        return;
      }
      clear(live).append(...details(q), h('section', { 'aria-labelledby': 'h-bindings' },
        h('h2', { id: 'h-bindings' }, 'Bindings'),
        bindingsTable(bindings ?? [], 'source', { out: unbindOut, done: () => page.refresh() }),
        unbindOut));
    },
  });
}

function details(q) {
  const stats = q.message_stats ?? {};
  const argRows = Object.entries(q.arguments ?? {}).map(([k, v]) => [k, value(v)]);
  const effective = Object.entries(q.effective_policy_definition ?? {}).map(([k, v]) => [k, value(v)]);
  return [
    h('section', { 'aria-labelledby': 'h-depth' },
      h('h2', { id: 'h-depth' }, 'Messages'),
      h('div', { class: 'tiles' },
        [['Ready', q.messages_ready, 'queue-ready'], ['Unacked', q.messages_unacknowledged, 'queue-unacked'], ['Total', q.messages, 'queue-messages']]
          .map(([label, n, id]) => h('div', { class: 'tile' }, h('span', { class: 'label' }, label), h('span', { class: 'big', id }, num(n))))),
      lineChart('Queued messages, last 10 minutes', [
        { label: 'Ready', samples: q.messages_ready_details?.samples },
        { label: 'Unacked', samples: q.messages_unacknowledged_details?.samples },
        { label: 'Total', samples: q.messages_details?.samples },
      ]),
      lineChart('Message rates, last 10 minutes (per second)', [
        ['publish', 'Publish'], ['deliver_get', 'Deliver / get'], ['ack', 'Consumer ack'], ['redeliver', 'Redelivered'],
      ].filter(([key]) => stats[`${key}_details`]?.samples)
        .map(([key, label]) => ({ label, samples: toRates(stats[`${key}_details`].samples), unit: '/s' })))),
    h('section', { 'aria-labelledby': 'h-details' },
      h('h2', { id: 'h-details' }, 'Details'),
      facts([
        ['Virtual host', q.vhost],
        ['Type', q.type],
        ['State', q.state],
        ['Features', [q.durable ? 'durable' : 'transient', q.auto_delete ? ', auto-delete' : '', q.exclusive ? ', exclusive' : ''].join('')],
        ['Policy', q.policy ?? '—'],
        ['Operator policy', q.operator_policy ?? '—'],
        ['Consumers', num(q.consumers)],
        ['Consumer capacity', typeof q.consumer_capacity === 'number' ? `${Math.round(q.consumer_capacity * 100)}%` : '—'],
        ['Memory', bytes(q.memory)],
        ['Publish rate', rate(stats.publish_details)],
        ['Deliver / get rate', rate(stats.deliver_get_details)],
        ['Ack rate', rate(stats.ack_details)],
      ])),
    h('section', { 'aria-labelledby': 'h-args' },
      h('h2', { id: 'h-args' }, 'Arguments'),
      argRows.length ? facts(argRows) : h('p', { class: 'muted' }, 'None.'),
      effective.length ? [h('h3', {}, 'Effective policy definition'), facts(effective)] : null),
    q.stream ? streamSection(q.stream) : null,
    h('section', { 'aria-labelledby': 'h-consumers' },
      h('h2', { id: 'h-consumers' }, 'Consumers'),
      (q.consumer_details ?? []).length
        ? h('div', { class: 'scroll' }, h('table', { class: 'list' },
          h('thead', {}, h('tr', {}, ['Channel', 'Consumer tag', 'Ack required', 'Exclusive', 'Prefetch', 'Arguments'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', {}, q.consumer_details.map((c) => h('tr', {},
            h('td', {}, c.channel_details?.name ?? `channel ${c.channel_details?.number ?? '?'}`),
            h('td', {}, c.consumer_tag),
            h('td', {}, c.ack_required ? '●' : '○'),
            h('td', {}, c.exclusive ? '●' : '○'),
            h('td', { class: 'num' }, num(c.prefetch_count)),
            h('td', {}, value(c.arguments)))))))
        : h('p', { class: 'muted' }, '… no consumers …')),
  ];
}

// A stream's offsets, size and readers (AMQP consumers and stream
// protocol subscriptions) with where each reads and how far behind it is.
function streamSection(s) {
  const readers = s.readers ?? [];
  const stored = Object.entries(s.stored_offsets ?? {});
  return h('section', { 'aria-labelledby': 'h-stream' },
    h('h2', { id: 'h-stream' }, 'Stream'),
    facts([
      ['First offset', num(s.first_offset)],
      ['Last offset', num(s.last_offset)],
      ['Segments', num(s.segments)],
      ['Size', bytes(s.bytes)],
      ['Retention', [s.retention?.max_length_bytes ? `${bytes(s.retention.max_length_bytes)}` : null,
        s.retention?.max_age_ms ? `${num(s.retention.max_age_ms / 1000)} s` : null].filter(Boolean).join(', ') || '—'],
    ]),
    h('h3', {}, 'Readers'),
    readers.length
      ? h('div', { class: 'scroll' }, h('table', { class: 'list', id: 'stream-readers' },
        h('thead', {}, h('tr', {}, [['Consumer tag'], ['Protocol'], ['Connection'], ['Offset', 1], ['Lag', 1]]
          .map(([t, n]) => h('th', { scope: 'col', class: n ? 'num' : '' }, t)))),
        h('tbody', {}, readers.map((r) => h('tr', {},
          h('td', { class: 'name' }, r.consumer_tag),
          h('td', {}, r.protocol),
          h('td', { class: 'name' }, r.connection ?? ''),
          h('td', { class: 'num' }, num(r.offset)),
          h('td', { class: 'num' }, num(r.lag)))))))
      : h('p', { class: 'muted' }, '… no readers …'),
    stored.length ? [h('h3', {}, 'Stored offsets'),
      facts(stored.map(([name, o]) => [name, `offset ${num(o.offset)}, lag ${num(o.lag)}`]))] : null);
}

function getForm(path) {
  const ackmode = h('select', {}, ACK_MODES.map(([v, t]) => h('option', { value: v }, t)));
  const encoding = h('select', {}, h('option', { value: 'auto' }, 'Automatic string/base64'), h('option', { value: 'base64' }, 'base64'));
  const count = h('input', { type: 'number', min: 1, value: '1', required: true });
  const out = h('div', { id: 'get-result', 'aria-live': 'polite' });
  const form = h('form', { class: 'panel', id: 'get-form' },
    h('h2', {}, 'Get messages'),
    h('p', { class: 'warn' }, 'Getting messages from a queue is a destructive action.'),
    field('get-ackmode', 'Ack mode', ackmode),
    field('get-encoding', 'Encoding', encoding),
    field('get-count', 'Messages', count),
    h('button', { type: 'submit' }, 'Get Message(s)'),
    out);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(out);
    try {
      const got = await api(`${path}/get`, {
        method: 'POST',
        body: { count: Number(count.value), ackmode: ackmode.value, encoding: encoding.value, truncate: 50000 },
      });
      if (!got.length) out.append(h('p', {}, 'Queue is empty'));
      got.forEach((m, i) => out.append(message(m, i + 1)));
    } catch (e) {
      out.append(errorBox(e));
    }
  });
  return form;
}

function message(m, n) {
  return h('div', { class: 'message' },
    h('h3', {}, `Message ${n}`),
    h('p', {}, `The server reported ${num(m.message_count)} messages remaining.`),
    facts([
      ['Exchange', m.exchange === '' ? '(AMQP default)' : m.exchange],
      ['Routing Key', m.routing_key],
      ['Redelivered', m.redelivered ? '●' : '○'],
      ['Properties', value(m.properties)],
      ['Payload', [`${num(m.payload_bytes)} bytes, encoding: ${m.payload_encoding}`, h('pre', { class: 'payload' }, m.payload)]],
    ]));
}

function dangerZone(path, name) {
  const out = h('div', { id: 'danger-result', 'aria-live': 'polite' });
  const act = (label, question, run) => h('button', {
    type: 'button',
    class: 'danger',
    onclick: async () => {
      // eslint-disable-next-line no-alert
      if (!window.confirm(question)) return;
      clear(out);
      try {
        await run();
      } catch (e) {
        out.append(errorBox(e));
      }
    },
  }, label);
  return h('section', { class: 'panel', 'aria-labelledby': 'h-danger' },
    h('h2', { id: 'h-danger' }, 'Purge and delete'),
    act('Purge Messages', `Purge all messages of queue "${name}"?`, async () => {
      await api(`${path}/contents`, { method: 'DELETE' });
      out.append(h('p', { class: 'ok' }, 'Queue purged.'));
    }),
    ' ',
    act('Delete Queue', `Delete queue "${name}"?`, async () => {
      await api(path, { method: 'DELETE' });
      location.hash = '#/queues';
    }),
    out);
}

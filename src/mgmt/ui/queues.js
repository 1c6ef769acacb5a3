// The queue list (a paged list of /api/queues); rows link to the queue;
// "Add a new queue" below it.

import { api, seg } from './api.js';
import { clear, errorBox, h, rate } from './dom.js';
import { argumentsEditor, choice, vhostSelect } from './forms.js';
import { listState, pagedList } from './list.js';
import { field } from './publish.js';

// Kept while the app is open, so coming back finds the same list.
const state = listState();

export function queueHref(vhost, name) {
  return `#/queues/${seg(vhost)}/${seg(name)}`;
}

function features(q) {
  const f = [];
  if (q.durable) f.push('D');
  if (q.auto_delete) f.push('AD');
  if (q.exclusive) f.push('Excl');
  for (const k of Object.keys(q.arguments ?? {})) if (k !== 'x-queue-type') f.push(k.replace(/^x-/, ''));
  if (q.policy) f.push(`policy ${q.policy}`);
  return f.join(' ');
}

export function mount(main, { vhost }) {
  const columns = [
    vhost ? null : { key: 'vhost', label: 'Virtual host' },
    { key: 'name', label: 'Name', cell: (q) => h('a', { href: queueHref(q.vhost, q.name) }, q.name) },
    { key: 'type', label: 'Type' },
    { key: 'features', label: 'Features', unsortable: true, cell: features },
    { key: 'state', label: 'State' },
    { key: 'messages_ready', label: 'Ready', numeric: true },
    { key: 'messages_unacknowledged', label: 'Unacked', numeric: true },
    { key: 'messages', label: 'Total', numeric: true },
    { key: 'message_stats.publish_details.rate', label: 'Incoming', numeric: true, cell: (q) => rate(q.message_stats?.publish_details) },
    { key: 'message_stats.deliver_get_details.rate', label: 'Deliver / get', numeric: true, cell: (q) => rate(q.message_stats?.deliver_get_details) },
    { key: 'message_stats.ack_details.rate', label: 'Ack', numeric: true, cell: (q) => rate(q.message_stats?.ack_details) },
    { key: 'consumers', label: 'Consumers', numeric: true },
  ].filter(Boolean);
  const list = pagedList(main, {
    id: 'queues',
    title: vhost ? `Queues in ${vhost}` : 'Queues',
    path: vhost ? `/queues/${seg(vhost)}` : '/queues',
    columns,
    state,
  });
  main.append(addForm(vhost, list.refresh));
  return list;
}

// RabbitMQ's UI's hints for queue arguments, by queue type.
const C = ['classic'];
const CQ = ['classic', 'quorum'];
const QS = ['quorum', 'stream'];
const ALL = ['classic', 'quorum', 'stream'];
const QUEUE_HINTS = [
  ['Auto expire', 'x-expires', 'number', undefined, CQ],
  ['Message TTL', 'x-message-ttl', 'number', undefined, CQ],
  ['Overflow behaviour', 'x-overflow', 'string', 'reject-publish', CQ],
  ['Single active consumer', 'x-single-active-consumer', 'boolean', 'true', CQ],
  ['Dead letter exchange', 'x-dead-letter-exchange', 'string', undefined, CQ],
  ['Dead letter routing key', 'x-dead-letter-routing-key', 'string', undefined, CQ],
  ['Max length', 'x-max-length', 'number', undefined, CQ],
  ['Max length bytes', 'x-max-length-bytes', 'number', undefined, ALL],
  ['Maximum priority', 'x-max-priority', 'number', undefined, C],
  ['Lazy mode', 'x-queue-mode', 'string', 'lazy', C],
  ['Delivery limit', 'x-delivery-limit', 'number', undefined, ['quorum']],
  ['Max time retention', 'x-max-age', 'string', '7D', ['stream']],
  ['Max segment size in bytes', 'x-stream-max-segment-size-bytes', 'number', undefined, ['stream']],
  ['Initial cluster size', 'x-initial-cluster-size', 'number', undefined, QS],
];

// "Add a new queue": PUT /api/queues/{vhost}/{name}, as RabbitMQ's UI.
function addForm(vhost, done) {
  const vhosts = vhostSelect('new-queue-vhost', vhost ?? '/');
  const type = choice([['classic', 'Classic'], ['quorum', 'Quorum'], ['stream', 'Stream']], 'classic');
  const name = h('input', { required: true, autocomplete: 'off' });
  const durable = choice([['true', 'Durable'], ['false', 'Transient']], 'true');
  const autoDelete = choice([['false', 'No'], ['true', 'Yes']], 'false');
  const args = argumentsEditor('new-queue', QUEUE_HINTS);
  const out = h('div', { id: 'new-queue-result', 'aria-live': 'polite' });
  const onType = () => {
    // Quorum queues and streams are durable and never auto-deleted.
    const replicated = type.value !== 'classic';
    if (replicated) {
      durable.value = 'true';
      autoDelete.value = 'false';
    }
    durable.disabled = replicated;
    autoDelete.disabled = replicated;
    args.showHints(type.value);
  };
  type.addEventListener('change', onType);
  onType();
  const form = h('form', { class: 'panel', id: 'new-queue' },
    h('h2', {}, 'Add a new queue'),
    field('new-queue-vhost', 'Virtual host', vhosts),
    field('new-queue-type', 'Type', type),
    field('new-queue-name', 'Name', name),
    field('new-queue-durable', 'Durability', durable),
    field('new-queue-auto-delete', 'Auto delete', autoDelete),
    args.element,
    h('button', { type: 'submit' }, 'Add queue'),
    out);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(out);
    let arguments_;
    try {
      arguments_ = args.read();
    } catch (e) {
      out.append(errorBox(e));
      return;
    }
    if (type.value !== 'classic') arguments_['x-queue-type'] = type.value;
    try {
      await api(`/queues/${seg(vhosts.value)}/${seg(name.value)}`, {
        method: 'PUT',
        body: { durable: durable.value === 'true', auto_delete: autoDelete.value === 'true', arguments: arguments_ },
      });
    } catch (e) {
      out.append(errorBox(e));
      return;
    }
    out.append(h('p', { class: 'ok' }, 'Queue ', h('a', { href: queueHref(vhosts.value, name.value) }, name.value), ' declared.'));
    done();
  });
  return form;
}

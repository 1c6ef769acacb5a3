// The queue list (a paged list of /api/queues); rows link to the queue.

import { seg } from './api.js';
import { h, rate } from './dom.js';
import { listState, pagedList } from './list.js';

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
  return pagedList(main, {
    id: 'queues',
    title: vhost ? `Queues in ${vhost}` : 'Queues',
    path: vhost ? `/queues/${seg(vhost)}` : '/queues',
    columns,
    state,
  });
}

// The exchange list (a paged list of /api/exchanges); rows link to the
// exchange. The default exchange is "" in the API's lists and
// "amq.default" in its paths.

import { seg } from './api.js';
import { h, rate } from './dom.js';
import { listState, pagedList } from './list.js';

const state = listState();

export function exchangeHref(vhost, name) {
  return `#/exchanges/${seg(vhost)}/${seg(name || 'amq.default')}`;
}

function features(x) {
  const f = [];
  if (x.durable) f.push('D');
  if (x.auto_delete) f.push('AD');
  if (x.internal) f.push('I');
  for (const k of Object.keys(x.arguments ?? {})) f.push(k);
  if (x.policy) f.push(`policy ${x.policy}`);
  return f.join(' ');
}

export function mount(main, { vhost }) {
  const columns = [
    vhost ? null : { key: 'vhost', label: 'Virtual host' },
    { key: 'name', label: 'Name', cell: (x) => h('a', { href: exchangeHref(x.vhost, x.name) }, x.name || '(AMQP default)') },
    { key: 'type', label: 'Type' },
    { key: 'features', label: 'Features', unsortable: true, cell: features },
    { key: 'message_stats.publish_in_details.rate', label: 'Rate in', numeric: true, cell: (x) => rate(x.message_stats?.publish_in_details) },
    { key: 'message_stats.publish_out_details.rate', label: 'Rate out', numeric: true, cell: (x) => rate(x.message_stats?.publish_out_details) },
  ].filter(Boolean);
  return pagedList(main, {
    id: 'exchanges',
    title: vhost ? `Exchanges in ${vhost}` : 'Exchanges',
    path: vhost ? `/exchanges/${seg(vhost)}` : '/exchanges',
    columns,
    state,
  });
}

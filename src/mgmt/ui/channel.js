// One channel (RabbitMQ's channel.ejs): details (its connection, user,
// mode, prefetch, unacked and unconfirmed messages), message rates, and
// the consumers on it, from GET /api/channels/{name}.

import { api, seg } from './api.js';
import { connectionHref } from './connections.js';
import { clear, errorBox, facts, h, num, rate, value } from './dom.js';
import { table } from './access.js';

const RATES = [
  ['publish', 'Publish'],
  ['confirm', 'Publisher confirm'],
  ['deliver_get', 'Deliver / get'],
  ['redeliver', 'Redelivered'],
  ['ack', 'Consumer ack'],
  ['return_unroutable', 'Returned (unroutable)'],
  ['drop_unroutable', 'Dropped (unroutable)'],
  ['get_empty', 'Get (empty)'],
];

function mode(c) {
  return [c.confirm ? 'confirm' : '', c.transactional ? 'transactional' : ''].filter(Boolean).join(', ') || 'none';
}

const yes = (b) => (b ? 'yes' : 'no');

export function mount(main, { args: [name] }) {
  const path = `/channels/${seg(name)}`;
  const live = h('div', { id: 'channel-live' });
  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/channels' }, 'Channels')),
    h('h1', {}, 'Channel ', h('span', { id: 'channel-name' }, name)),
    live);

  return {
    async refresh() {
      let c;
      try {
        c = await api(path);
      } catch (e) {
        clear(live).append(errorBox(e));
        return;
      }
      const stats = c.message_stats ?? {};
      const consumers = c.consumer_details ?? [];
      clear(live).append(
        h('section', { 'aria-labelledby': 'h-details' },
          h('h2', { id: 'h-details' }, 'Details'),
          facts([
            ['Connection', h('a', { href: connectionHref(c.connection_details?.name ?? '') }, c.connection_details?.name ?? '')],
            ['Virtual host', c.vhost],
            ['User', c.user],
            ['Mode', h('span', { id: 'channel-mode' }, mode(c))],
            ['State', c.state],
            ['Prefetch count', h('span', { id: 'channel-prefetch' }, num(c.prefetch_count))],
            ['Global prefetch count', num(c.global_prefetch_count)],
            ['Messages unacknowledged', h('span', { id: 'channel-unacked' }, num(c.messages_unacknowledged))],
            ['Messages unconfirmed', num(c.messages_unconfirmed)],
            ['Messages uncommitted', num(c.messages_uncommitted)],
            ['Acks uncommitted', num(c.acks_uncommitted)],
          ])),
        h('section', { 'aria-labelledby': 'h-rates' },
          h('h2', { id: 'h-rates' }, 'Message rates'),
          table('channel-rates', ['', 'Rate', 'Total'], RATES.map(([key, label]) =>
            [label, rate(stats[`${key}_details`]), num(stats[key])]), 'No message statistics.')),
        h('section', { 'aria-labelledby': 'h-consumers' },
          h('h2', { id: 'h-consumers' }, `Consumers (${consumers.length})`),
          table('channel-consumers',
            ['Consumer tag', 'Queue', 'Ack required', 'Exclusive', 'Prefetch count', 'Active', 'Activity status', 'Arguments'],
            consumers.map((k) => [
              k.consumer_tag,
              h('a', { href: `#/queues/${seg(k.queue?.vhost ?? '')}/${seg(k.queue?.name ?? '')}` }, k.queue?.name ?? ''),
              yes(k.ack_required), yes(k.exclusive), num(k.prefetch_count), yes(k.active), k.activity_status ?? '',
              value(k.arguments),
            ]),
            '… no consumers …')));
    },
  };
}

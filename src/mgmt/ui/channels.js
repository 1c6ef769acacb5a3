// The channel list (a paged list of /api/channels); each row links to the
// channel and its connection.

import { seg } from './api.js';
import { connectionHref } from './connections.js';
import { h } from './dom.js';
import { listState, pagedList } from './list.js';

const state = listState();

export function channelHref(name) {
  return `#/channels/${seg(name)}`;
}

function mode(c) {
  return [c.confirm ? 'C' : '', c.transactional ? 'T' : ''].join('');
}

export function mount(main, { vhost }) {
  const columns = [
    vhost ? null : { key: 'vhost', label: 'Virtual host' },
    { key: 'name', label: 'Channel', cell: (c) => h('a', { href: channelHref(c.name) }, c.name) },
    { key: 'connection_details.name', label: 'Connection', cell: (c) => h('a', { href: connectionHref(c.connection_details?.name ?? '') }, c.connection_details?.name ?? '') },
    { key: 'user', label: 'User' },
    { key: 'mode', label: 'Mode', unsortable: true, cell: mode },
    { key: 'state', label: 'State' },
    { key: 'prefetch_count', label: 'Prefetch', numeric: true },
    { key: 'messages_unacknowledged', label: 'Unacked', numeric: true },
    { key: 'messages_unconfirmed', label: 'Unconfirmed', numeric: true },
    { key: 'consumer_count', label: 'Consumers', numeric: true },
  ].filter(Boolean);
  return pagedList(main, {
    id: 'channels',
    title: vhost ? `Channels in ${vhost}` : 'Channels',
    path: vhost ? `/vhosts/${seg(vhost)}/channels` : '/channels',
    columns,
    state,
  });
}

// The connection list (a paged list of /api/connections); rows link to
// the connection. Management users see their own connections only (the
// API decides).

import { seg } from './api.js';
import { h } from './dom.js';
import { listState, pagedList } from './list.js';

const state = listState();

export function connectionHref(name) {
  return `#/connections/${seg(name)}`;
}

export function mount(main, { vhost }) {
  const columns = [
    vhost ? null : { key: 'vhost', label: 'Virtual host' },
    { key: 'name', label: 'Name', cell: (c) => h('a', { href: connectionHref(c.name) }, c.name) },
    { key: 'client_properties.connection_name', label: 'Client name' },
    { key: 'user', label: 'User' },
    { key: 'state', label: 'State' },
    { key: 'protocol', label: 'Protocol' },
    { key: 'ssl', label: 'TLS', cell: (c) => (c.ssl ? '●' : '○') },
    { key: 'channels', label: 'Channels', numeric: true },
  ].filter(Boolean);
  return pagedList(main, {
    id: 'connections',
    title: vhost ? `Connections in ${vhost}` : 'Connections',
    path: vhost ? `/vhosts/${seg(vhost)}/connections` : '/connections',
    columns,
    state,
  });
}

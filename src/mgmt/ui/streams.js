// Streams: the stream queues (a paged list of /api/queues?type=stream,
// Leveret's filter) with their size, consumers, readers and rates, and
// the stream protocol's connections (/api/stream/connections); a
// connection's row links to its page (stream-connection.js).

import { seg } from './api.js';
import { bytes, h, num, rate } from './dom.js';
import { listState, pagedList } from './list.js';
import { queueHref } from './queues.js';

const streamState = listState();
const connectionState = listState();

export function streamConnectionHref(vhost, name) {
  return `#/streams/connections/${seg(vhost)}/${seg(name)}`;
}

export function mount(main, { vhost }) {
  const streams = pagedList(main, {
    id: 'streams',
    title: vhost ? `Streams in ${vhost}` : 'Streams',
    path: `${vhost ? `/queues/${seg(vhost)}` : '/queues'}?type=stream`,
    columns: [
      vhost ? null : { key: 'vhost', label: 'Virtual host' },
      { key: 'name', label: 'Name', cell: (q) => h('a', { href: queueHref(q.vhost, q.name) }, q.name) },
      { key: 'messages', label: 'Messages', numeric: true },
      { key: 'stream.bytes', label: 'Size', numeric: true, cell: (q) => bytes(q.stream?.bytes) },
      { key: 'segments', label: 'Segments', numeric: true },
      { key: 'consumers', label: 'Consumers', numeric: true },
      { key: 'readers', label: 'Readers', numeric: true, unsortable: true, cell: (q) => num(q.stream?.readers?.length) },
      { key: 'message_stats.publish_details.rate', label: 'Incoming', numeric: true, cell: (q) => rate(q.message_stats?.publish_details) },
      { key: 'message_stats.deliver_get_details.rate', label: 'Outgoing', numeric: true, cell: (q) => rate(q.message_stats?.deliver_get_details) },
    ].filter(Boolean),
    state: streamState,
  });
  const connections = pagedList(main, {
    id: 'stream-connections',
    title: 'Stream connections',
    heading: 'h2',
    path: vhost ? `/stream/connections/${seg(vhost)}` : '/stream/connections',
    columns: [
      vhost ? null : { key: 'vhost', label: 'Virtual host' },
      { key: 'name', label: 'Name', cell: (c) => h('a', { href: streamConnectionHref(c.vhost, c.name) }, c.name) },
      { key: 'client_properties.connection_name', label: 'Client name' },
      { key: 'user', label: 'User' },
      { key: 'state', label: 'State' },
      { key: 'ssl', label: 'TLS', cell: (c) => (c.ssl ? '●' : '○') },
    ].filter(Boolean),
    state: connectionState,
  });
  return {
    refresh: () => Promise.all([streams.refresh(), connections.refresh()]),
  };
}

// One stream protocol connection: details, client properties, its
// publishers and consumers (/api/stream/connections/{vhost}/{name} and
// its /publishers and /consumers), with offsets and lag.

import { api, seg } from './api.js';
import { clear, errorBox, facts, h, num, value } from './dom.js';
import { queueHref } from './queues.js';

function table(id, heads, rows) {
  if (!rows.length) return h('p', { class: 'muted', id }, '… none …');
  return h('div', { class: 'scroll' }, h('table', { class: 'list', id },
    h('thead', {}, h('tr', {}, heads.map(([t, numeric]) => h('th', { scope: 'col', class: numeric ? 'num' : '' }, t)))),
    h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((c, i) => h('td', { class: heads[i][1] ? 'num' : '' }, c)))))));
}

const stream = (x) => h('a', { href: queueHref(x.queue?.vhost, x.queue?.name) }, x.queue?.name);

export function mount(main, { args: [vhost, name] }) {
  const path = `/stream/connections/${seg(vhost)}/${seg(name)}`;
  const live = h('div', { id: 'stream-connection-live' });
  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/streams' }, 'Streams'), ' › ', vhost),
    h('h1', {}, 'Stream connection ', h('span', { id: 'stream-connection-name' }, name)),
    live);
  return {
    async refresh() {
      let c;
      let publishers;
      let consumers;
      try {
        [c, publishers, consumers] = await Promise.all([
          api(path), api(`${path}/publishers`), api(`${path}/consumers`)]);
      } catch (e) {
        clear(live).append(errorBox(e));
        return;
      }
      clear(live).append(
        h('section', { 'aria-labelledby': 'h-details' },
          h('h2', { id: 'h-details' }, 'Details'),
          facts([
            ['Virtual host', c.vhost],
            ['User', c.user],
            ['Client', `${c.peer_host}:${c.peer_port}`],
            ['State', c.state ?? '—'],
            ['TLS', c.ssl ? 'yes' : 'no'],
            ['Frame max', num(c.frame_max)],
            ['Heartbeat', c.timeout === undefined ? '—' : `${c.timeout} s`],
          ])),
        h('section', { 'aria-labelledby': 'h-publishers' },
          h('h2', { id: 'h-publishers' }, 'Publishers'),
          table('stream-publishers',
            [['Stream'], ['Publisher id', true], ['Reference'], ['Published', true], ['Confirmed', true], ['Errored', true]],
            (publishers ?? []).map((p) => [stream(p), num(p.publisher_id), p.reference ?? '', num(p.published), num(p.confirmed), num(p.errored)]))),
        h('section', { 'aria-labelledby': 'h-consumers' },
          h('h2', { id: 'h-consumers' }, 'Consumers'),
          table('stream-consumers',
            [['Stream'], ['Subscription id', true], ['Credits', true], ['Consumed', true], ['Offset', true], ['Offset lag', true], ['Active'], ['Properties']],
            (consumers ?? []).map((s) => [stream(s), num(s.subscription_id), num(s.credits), num(s.consumed), num(s.offset), num(s.offset_lag),
              s.active ? '●' : '○', value(s.properties)]))),
        h('section', { 'aria-labelledby': 'h-client' },
          h('h2', { id: 'h-client' }, 'Client properties'),
          Object.keys(c.client_properties ?? {}).length
            ? facts(Object.entries(c.client_properties).map(([k, v]) => [k, value(v)]))
            : h('p', { class: 'muted' }, 'None.')));
    },
  };
}

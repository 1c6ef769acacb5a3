// A table of bindings (/api/.../bindings): `show` says which end to name,
// 'source' (bindings into a queue or exchange) or 'destination' (out of
// an exchange). Each end links to its page.

import { exchangeHref } from './exchanges.js';
import { queueHref } from './queues.js';
import { h, value } from './dom.js';

function end(b, which) {
  const name = b[which];
  if (which === 'source') return h('a', { href: exchangeHref(b.vhost, name) }, name || '(AMQP default)');
  const href = b.destination_type === 'queue' ? queueHref(b.vhost, name) : exchangeHref(b.vhost, name);
  return [b.destination_type === 'queue' ? 'queue ' : 'exchange ', h('a', { href }, name)];
}

export function bindingsTable(bindings, show) {
  if (!bindings.length) return h('p', { class: 'muted' }, '… no bindings …');
  return h('div', { class: 'scroll' }, h('table', { class: 'list' },
    h('thead', {}, h('tr', {}, [show === 'source' ? 'From' : 'To', 'Routing key', 'Arguments'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, bindings.map((b) => h('tr', {},
      h('td', { class: 'name' }, end(b, show)),
      h('td', { class: 'name' }, b.routing_key),
      h('td', {}, value(b.arguments)))))));
}

// One exchange: type, features, arguments and policy, bindings out of it
// and into it, and "Publish message".

import { api, seg } from './api.js';
import { bindForm, bindingsTable } from './bindings.js';
import { clear, errorBox, facts, h, rate, value } from './dom.js';
import { publishForm } from './publish.js';

export function mount(main, { args: [vhost, name] }) {
  const path = `/exchanges/${seg(vhost)}/${seg(name)}`;
  const live = h('div', { id: 'exchange-live' });
  const unbindOut = h('div', { id: 'unbind-result', 'aria-live': 'polite' });
  const page = {};
  const unbind = { out: unbindOut, done: () => page.refresh() };
  // Nothing binds to or from the default exchange by hand.
  const isDefault = name === 'amq.default';
  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/exchanges' }, 'Exchanges'), ' › ', vhost),
    h('h1', {}, 'Exchange ', h('span', { id: 'exchange-name' }, isDefault ? '(AMQP default)' : name)),
    live,
    isDefault ? null : bindForm({ vhost, from: name, done: () => page.refresh() }),
    publishForm({ vhost, exchange: name }));

  return Object.assign(page, {
    async refresh() {
      let x;
      let out;
      let into;
      try {
        [x, out, into] = await Promise.all([
          api(path), api(`${path}/bindings/source`), api(`${path}/bindings/destination`)]);
      } catch (e) {
        clear(live).append(errorBox(e));
        return;
      }
      const stats = x.message_stats ?? {};
      const argRows = Object.entries(x.arguments ?? {}).map(([k, v]) => [k, value(v)]);
      clear(live).append(
        h('section', { 'aria-labelledby': 'h-details' },
          h('h2', { id: 'h-details' }, 'Details'),
          facts([
            ['Virtual host', x.vhost],
            ['Type', x.type],
            ['Features', [x.durable ? 'durable' : 'transient', x.auto_delete ? ', auto-delete' : '', x.internal ? ', internal' : ''].join('')],
            ['Policy', x.policy ?? '—'],
            ['Rate in', rate(stats.publish_in_details)],
            ['Rate out', rate(stats.publish_out_details)],
            ...argRows,
          ])),
        h('section', { 'aria-labelledby': 'h-out' },
          h('h2', { id: 'h-out' }, 'Bindings from this exchange'),
          bindingsTable(out ?? [], 'destination', isDefault ? undefined : unbind)),
        h('section', { 'aria-labelledby': 'h-in' },
          h('h2', { id: 'h-in' }, 'Bindings to this exchange'),
          bindingsTable(into ?? [], 'source', isDefault ? undefined : unbind)),
        unbindOut);
    },
  });
}

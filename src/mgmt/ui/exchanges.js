// The exchange list (a paged list of /api/exchanges); rows link to the
// exchange. The default exchange is "" in the API's lists and
// "amq.default" in its paths.

import { api, seg } from './api.js';
import { clear, errorBox, h, rate } from './dom.js';
import { argumentsEditor, choice, vhostSelect } from './forms.js';
import { listState, pagedList } from './list.js';
import { field } from './publish.js';

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
  const list = pagedList(main, {
    id: 'exchanges',
    title: vhost ? `Exchanges in ${vhost}` : 'Exchanges',
    path: vhost ? `/exchanges/${seg(vhost)}` : '/exchanges',
    columns,
    state,
  });
  main.append(addForm(vhost, list.refresh));
  return list;
}

// "Add a new exchange": PUT /api/exchanges/{vhost}/{name}, as RabbitMQ's
// UI; the types are those the broker offers (/api/overview).
function addForm(vhost, done) {
  const vhosts = vhostSelect('new-exchange-vhost', vhost ?? '/');
  const type = choice([['direct', 'direct'], ['fanout', 'fanout'], ['headers', 'headers'], ['topic', 'topic']], 'direct');
  api('/overview').then((o) => {
    const names = (o?.exchange_types ?? []).map((t) => t.name);
    if (names.length) type.replaceChildren(...names.map((n) => h('option', { value: n }, n)));
  }, () => {});
  const name = h('input', { required: true, autocomplete: 'off' });
  const durable = choice([['true', 'Durable'], ['false', 'Transient']], 'true');
  const autoDelete = choice([['false', 'No'], ['true', 'Yes']], 'false');
  const internal = choice([['false', 'No'], ['true', 'Yes']], 'false');
  const args = argumentsEditor('new-exchange', [['Alternate exchange', 'alternate-exchange', 'string']]);
  const out = h('div', { id: 'new-exchange-result', 'aria-live': 'polite' });
  const form = h('form', { class: 'panel', id: 'new-exchange' },
    h('h2', {}, 'Add a new exchange'),
    field('new-exchange-vhost', 'Virtual host', vhosts),
    field('new-exchange-name', 'Name', name),
    field('new-exchange-type', 'Type', type),
    field('new-exchange-durable', 'Durability', durable),
    field('new-exchange-auto-delete', 'Auto delete', autoDelete),
    field('new-exchange-internal', 'Internal', internal),
    args.element,
    h('button', { type: 'submit' }, 'Add exchange'),
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
    try {
      await api(`/exchanges/${seg(vhosts.value)}/${seg(name.value)}`, {
        method: 'PUT',
        body: {
          type: type.value,
          durable: durable.value === 'true',
          auto_delete: autoDelete.value === 'true',
          internal: internal.value === 'true',
          arguments: arguments_,
        },
      });
    } catch (e) {
      out.append(errorBox(e));
      return;
    }
    out.append(h('p', { class: 'ok' }, 'Exchange ', h('a', { href: exchangeHref(vhosts.value, name.value) }, name.value), ' declared.'));
    done();
  });
  return form;
}

// Shovels: the status of every dynamic shovel (/api/shovels: state,
// source, destination, since when, why it stopped), restart and delete
// buttons, and a form to add one (a `shovel` runtime parameter, with
// RabbitMQ's keys and defaults). Statuses are a paged list like any other.

import { api, seg } from './api.js';
import { clear, errorBox, h } from './dom.js';
import { listState, pagedList } from './list.js';
import { field } from './publish.js';

const state = listState();

// RabbitMQ's fmt_shovel_endpoint: a queue, or an exchange and key.
function endpoint(s, prefix) {
  if (s[`${prefix}queue`] !== undefined) return `${s[`${prefix}queue`]} (queue)`;
  if (s[`${prefix}exchange`] === undefined) return '';
  const x = s[`${prefix}exchange`] || '(as published)';
  const key = s[`${prefix}exchange_key`];
  return `${x}${key ? ` : ${key}` : ''} (exchange)`;
}

export function mount(main, { vhost }) {
  const out = h('div', { id: 'shovels-result', 'aria-live': 'polite' });
  let list = null;
  const run = async (request, done) => {
    clear(out);
    try {
      await request();
      out.append(h('p', { class: 'ok' }, done));
      list.refresh();
    } catch (e) {
      out.append(errorBox(e));
    }
  };
  const where = (s) => `${seg(s.vhost)}/${seg(s.name)}`;
  const actions = (s) => [
    h('button', {
      type: 'button',
      'aria-label': `Restart shovel ${s.name}`,
      onclick: () => run(() => api(`/shovels/vhost/${where(s)}/restart`, { method: 'DELETE' }), `Shovel ${s.name} restarted.`),
    }, 'Restart'),
    ' ',
    h('button', {
      type: 'button',
      class: 'danger',
      'aria-label': `Delete shovel ${s.name}`,
      onclick: () => window.confirm(`Delete shovel "${s.name}"?`)
        && run(() => api(`/shovels/vhost/${where(s)}`, { method: 'DELETE' }), `Shovel ${s.name} deleted.`),
    }, 'Delete'),
  ];
  list = pagedList(main, {
    id: 'shovels',
    title: vhost ? `Shovels in ${vhost}` : 'Shovels',
    path: vhost ? `/shovels/${seg(vhost)}` : '/shovels',
    columns: [
      vhost ? null : { key: 'vhost', label: 'Virtual host' },
      { key: 'name', label: 'Name' },
      { key: 'state', label: 'State', cell: (s) => (s.reason ? `${s.state}: ${s.reason}` : s.state) },
      { key: 'src_uri', label: 'Source', cell: (s) => [s.src_uri ?? '', h('br'), endpoint(s, 'src_')] },
      { key: 'dest_uri', label: 'Destination', cell: (s) => [s.dest_uri ?? '', h('br'), endpoint(s, 'dest_')] },
      { key: 'timestamp', label: 'Since' },
      { key: 'actions', label: 'Actions', unsortable: true, cell: actions },
    ].filter(Boolean),
    state,
  });
  main.append(out, addForm(out, vhost, () => list.refresh()));
  return list;
}

function addForm(out, vhost, changed) {
  const input = (attrs = {}) => h('input', { autocomplete: 'off', ...attrs });
  const select = (options) => h('select', {}, options.map(([v, t]) => h('option', { value: v }, t)));
  const name = input({ required: true });
  const where = input({ value: vhost ?? '/', required: true });
  const srcUri = input({ value: 'amqp://', required: true });
  const srcKind = select([['queue', 'Queue'], ['exchange', 'Exchange']]);
  const src = input({ required: true });
  const srcKey = input({ placeholder: 'routing key (exchange only)' });
  const prefetch = input({ type: 'number', min: 0, value: '1000' });
  const deleteAfter = select([['never', 'Never'], ['queue-length', 'After initial length transferred']]);
  const destUri = input({ value: 'amqp://', required: true });
  const destKind = select([['queue', 'Queue'], ['exchange', 'Exchange']]);
  const dest = input();
  const destKey = input({ placeholder: 'routing key (exchange only)' });
  const forward = h('input', { type: 'checkbox' });
  const ackMode = select([['on-confirm', 'On confirm'], ['on-publish', 'On publish'], ['no-ack', 'No ack']]);
  const delay = input({ type: 'number', min: 0, step: 'any', value: '1' });
  const form = h('form', { class: 'panel', id: 'shovel-form' },
    h('h2', {}, 'Add a shovel'),
    field('shovel-name', 'Name', name),
    field('shovel-vhost', 'Virtual host', where),
    h('h3', {}, 'Source'),
    field('shovel-src-uri', 'URI (amqp:// is this broker; amqp:///vhost another vhost)', srcUri),
    field('shovel-src-kind', 'From', srcKind),
    field('shovel-src', 'Queue or exchange name', src),
    field('shovel-src-key', 'Routing key', srcKey),
    field('shovel-prefetch', 'Prefetch count', prefetch),
    field('shovel-delete-after', 'Auto-delete', deleteAfter),
    h('h3', {}, 'Destination'),
    field('shovel-dest-uri', 'URI', destUri),
    field('shovel-dest-kind', 'To', destKind),
    field('shovel-dest', 'Queue or exchange name (empty: as published)', dest),
    field('shovel-dest-key', 'Routing key', destKey),
    h('div', { class: 'field' }, h('label', {}, forward, ' Add forwarding headers')),
    field('shovel-ack-mode', 'Acknowledgement mode', ackMode),
    field('shovel-reconnect', 'Reconnect delay (s)', delay),
    h('button', { type: 'submit' }, 'Add shovel'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(out);
    const value = {
      'src-uri': srcUri.value,
      'src-prefetch-count': Number(prefetch.value),
      'src-delete-after': deleteAfter.value,
      'dest-uri': destUri.value,
      'dest-add-forward-headers': forward.checked,
      'ack-mode': ackMode.value,
      'reconnect-delay': Number(delay.value),
    };
    if (srcKind.value === 'queue') value['src-queue'] = src.value;
    else {
      value['src-exchange'] = src.value;
      if (srcKey.value) value['src-exchange-key'] = srcKey.value;
    }
    if (destKind.value === 'queue' && dest.value) value['dest-queue'] = dest.value;
    if (destKind.value === 'exchange') {
      value['dest-exchange'] = dest.value;
      if (destKey.value) value['dest-exchange-key'] = destKey.value;
    }
    try {
      await api(`/parameters/shovel/${seg(where.value)}/${seg(name.value)}`, { method: 'PUT', body: { value } });
      out.append(h('p', { class: 'ok' }, `Shovel ${name.value} added.`));
      changed();
    } catch (e) {
      out.append(errorBox(e));
    }
  });
  return form;
}

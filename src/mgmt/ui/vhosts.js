// Virtual hosts: a paged list with message counts and a delete button,
// and a form to add one (PUT /api/vhosts/{name}); changing vhosts is for
// administrators, and the API says so to anyone else.

import { api, seg } from './api.js';
import { clear, errorBox, h } from './dom.js';
import { listState, pagedList } from './list.js';
import { field } from './publish.js';

const state = listState();

export function mount(main) {
  const out = h('div', { id: 'vhosts-result', 'aria-live': 'polite' });
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
  const remove = (name) => h('button', {
    type: 'button',
    class: 'danger',
    'aria-label': `Delete virtual host ${name}`,
    onclick: () => window.confirm(`Delete virtual host "${name}" and everything in it?`)
      && run(() => api(`/vhosts/${seg(name)}`, { method: 'DELETE' }), `Virtual host ${name} deleted.`),
  }, 'Delete');
  list = pagedList(main, {
    id: 'vhosts',
    title: 'Virtual hosts',
    path: '/vhosts',
    columns: [
      { key: 'name', label: 'Name', cell: (v) => h('a', { href: `#/vhosts/${seg(v.name)}` }, v.name) },
      { key: 'description', label: 'Description' },
      { key: 'messages_ready', label: 'Ready', numeric: true },
      { key: 'messages_unacknowledged', label: 'Unacked', numeric: true },
      { key: 'messages', label: 'Total', numeric: true },
      { key: 'delete', label: 'Delete', unsortable: true, cell: (v) => remove(v.name) },
    ],
    state,
  });
  const name = h('input', { autocomplete: 'off', required: true });
  const description = h('input', { autocomplete: 'off' });
  const form = h('form', { class: 'panel', id: 'vhost-form' },
    h('h2', {}, 'Add a virtual host'),
    field('vhost-name', 'Name', name),
    field('vhost-description', 'Description', description),
    h('button', { type: 'submit' }, 'Add virtual host'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const vhost = name.value;
    run(() => api(`/vhosts/${seg(vhost)}`, { method: 'PUT', body: { description: description.value } }),
      `Virtual host ${vhost} added.`);
  });
  main.append(out, form);
  return list;
}

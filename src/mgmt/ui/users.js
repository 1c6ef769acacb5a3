// Users (administrators only; the API refuses others with its reason,
// shown in place): a paged list with a delete button per user, and a form
// to add a user or change one's password and tags (PUT /api/users/{name}).

import { api, seg } from './api.js';
import { clear, errorBox, h } from './dom.js';
import { listState, pagedList } from './list.js';
import { field } from './publish.js';

const state = listState();

export function mount(main) {
  const out = h('div', { id: 'users-result', 'aria-live': 'polite' });
  let list = null;
  const remove = (name) => h('button', {
    type: 'button',
    class: 'danger',
    'aria-label': `Delete user ${name}`,
    onclick: async () => {
      if (!window.confirm(`Delete user "${name}"?`)) return;
      clear(out);
      try {
        await api(`/users/${seg(name)}`, { method: 'DELETE' });
        out.append(h('p', { class: 'ok' }, `User ${name} deleted.`));
        list.refresh();
      } catch (e) {
        out.append(errorBox(e));
      }
    },
  }, 'Delete');
  list = pagedList(main, {
    id: 'users',
    title: 'Users',
    path: '/users',
    columns: [
      { key: 'name', label: 'Name', cell: (u) => h('a', { href: `#/users/${seg(u.name)}` }, u.name) },
      { key: 'tags', label: 'Tags', cell: (u) => (Array.isArray(u.tags) ? u.tags.join(', ') : String(u.tags ?? '')) },
      { key: 'password_hash', label: 'Password', unsortable: true, cell: (u) => (u.password_hash ? '●' : '○') },
      { key: 'delete', label: 'Delete', unsortable: true, cell: (u) => remove(u.name) },
    ],
    state,
  });
  main.append(out, addForm(out, () => list.refresh()));
  return list;
}

function addForm(out, changed) {
  const name = h('input', { autocomplete: 'off', required: true });
  const password = h('input', { type: 'password', autocomplete: 'new-password' });
  const tags = h('input', { placeholder: 'administrator, management, monitoring, policymaker', autocomplete: 'off' });
  const form = h('form', { class: 'panel', id: 'user-form' },
    h('h2', {}, 'Add or update a user'),
    field('user-name', 'Username', name),
    field('user-password', 'Password', password),
    field('user-tags', 'Tags (comma-separated)', tags),
    h('button', { type: 'submit' }, 'Add / update user'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(out);
    const body = { tags: tags.value.split(',').map((t) => t.trim()).filter(Boolean).join(',') };
    if (password.value) body.password = password.value;
    try {
      await api(`/users/${seg(name.value)}`, { method: 'PUT', body });
      out.append(h('p', { class: 'ok' }, `User ${name.value} saved.`));
      password.value = '';
      changed();
    } catch (e) {
      out.append(errorBox(e));
    }
  });
  return form;
}

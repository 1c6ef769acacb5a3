// One user (administrators only, as the API): tags, permissions per vhost,
// topic permissions, limits; update its password and tags; delete it.
// RabbitMQ's user.ejs, with the user's limits from its limits.ejs.

import { api, seg } from './api.js';
import { clear, errorBox, facts, h } from './dom.js';
import { field } from './publish.js';
import { form, limits, permissions, run, topicPermissions } from './access.js';

export function mount(main, { args: [name] }) {
  const path = `/users/${seg(name)}`;
  const overview = h('div', { id: 'user-overview' });
  const sections = [permissions('user', name), topicPermissions('user', name), limits('user', name)];
  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/users' }, 'Users')),
    h('h1', {}, 'User ', h('span', { id: 'user-name' }, name)),
    overview,
    ...sections.map((s) => s.element),
    updateForm(path),
    deleteForm(path, name));

  return {
    async refresh() {
      let u;
      try {
        u = await api(path);
      } catch (e) {
        clear(overview).append(errorBox(e));
        return;
      }
      const tags = Array.isArray(u.tags) ? u.tags.join(', ') : String(u.tags ?? '');
      clear(overview).append(h('section', { 'aria-labelledby': 'h-overview' },
        h('h2', { id: 'h-overview' }, 'Overview'),
        facts([
          ['Tags', h('span', { id: 'user-tags-now' }, tags)],
          ['Can log in with password', u.password_hash ? 'yes' : 'no'],
        ])));
      await Promise.all(sections.map((s) => s.refresh()));
    },
  };
}

// As RabbitMQ's "Update this user": a new password (typed twice) or none
// (the user then cannot log in with one), and the tags.
function updateForm(path) {
  const out = h('div', { id: 'user-update-result', 'aria-live': 'polite' });
  const has = h('select', {}, h('option', { value: 'password' }, 'Password'), h('option', { value: 'none' }, 'No password'));
  const password = h('input', { type: 'password', autocomplete: 'new-password' });
  const confirm = h('input', { type: 'password', autocomplete: 'new-password' });
  const tags = h('input', { placeholder: 'administrator, management, monitoring, policymaker', autocomplete: 'off' });
  const secret = h('div', {}, field('user-password', 'Password', password), field('user-password-confirm', 'Password (confirm)', confirm));
  has.addEventListener('change', () => {
    secret.hidden = has.value !== 'password';
  });
  api(path).then((u) => {
    tags.value = Array.isArray(u.tags) ? u.tags.join(', ') : String(u.tags ?? '');
    if (!u.password_hash) has.value = 'none';
    secret.hidden = has.value !== 'password';
  }, () => {});
  return form('user-update', 'Update this user', [field('user-has-password', 'Log in with', has), secret,
    field('user-tags', 'Tags (comma-separated)', tags)], 'Update user', () => {
    const body = { tags: tags.value.split(',').map((t) => t.trim()).filter(Boolean).join(',') };
    if (has.value === 'password') {
      const problem = !password.value ? 'Please specify a password.'
        : password.value !== confirm.value ? 'Passwords do not match.' : null;
      if (problem) {
        clear(out).append(errorBox(problem));
        return;
      }
      body.password = password.value;
    }
    run(out, () => api(path, { method: 'PUT', body }), 'User updated.', () => {
      password.value = '';
      confirm.value = '';
    });
  }, out);
}

function deleteForm(path, name) {
  const out = h('div', { id: 'user-delete-result', 'aria-live': 'polite' });
  const f = form('user-delete', 'Delete this user', [], 'Delete', () => {
    if (!window.confirm(`Delete user "${name}"?`)) return;
    run(out, () => api(path, { method: 'DELETE' }), `User ${name} deleted.`, () => {
      location.hash = '#/users';
    });
  }, out);
  f.querySelector('button').classList.add('danger');
  return f;
}

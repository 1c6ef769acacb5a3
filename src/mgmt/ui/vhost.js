// One virtual host: its message counts and state, the permissions users
// have in it, topic permissions, its limits, and delete. RabbitMQ's
// vhost.ejs, with the vhost's limits from its limits.ejs. Changes are for
// administrators; the API says so to anyone else, in place.

import { api, seg } from './api.js';
import { clear, errorBox, facts, h, num } from './dom.js';
import { form, limits, permissions, run, topicPermissions } from './access.js';

export function mount(main, { args: [name], me }) {
  const path = `/vhosts/${seg(name)}`;
  const overview = h('div', { id: 'vhost-overview' });
  const admin = me?.tags?.includes('administrator');
  // Permissions and topic permissions are read by administrators only.
  const sections = [admin && permissions('vhost', name), admin && topicPermissions('vhost', name), limits('vhost', name)]
    .filter(Boolean);
  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/vhosts' }, 'Virtual hosts')),
    h('h1', {}, 'Virtual host ', h('span', { id: 'vhost-name' }, name)),
    overview,
    ...sections.map((s) => s.element),
    deleteForm(path, name));

  return {
    async refresh() {
      let v;
      try {
        v = await api(path);
      } catch (e) {
        clear(overview).append(errorBox(e));
        return;
      }
      const states = Object.entries(v.cluster_state ?? {}).map(([node, state]) => `${node}: ${state}`).join(', ');
      clear(overview).append(h('section', { 'aria-labelledby': 'h-overview' },
        h('h2', { id: 'h-overview' }, 'Overview'),
        facts([
          ['Description', v.description ?? ''],
          ['Tags', (v.tags ?? []).join(', ')],
          ['Ready', num(v.messages_ready)],
          ['Unacked', num(v.messages_unacknowledged)],
          ['Total', num(v.messages)],
          ['Tracing enabled', v.tracing ? 'yes' : 'no'],
          ['State', states],
        ])));
      await Promise.all(sections.map((s) => s.refresh()));
    },
  };
}

function deleteForm(path, name) {
  const out = h('div', { id: 'vhost-delete-result', 'aria-live': 'polite' });
  const f = form('vhost-delete', 'Delete this virtual host', [], 'Delete this virtual host', () => {
    if (!window.confirm(`Delete virtual host "${name}" and everything in it?`)) return;
    run(out, () => api(path, { method: 'DELETE' }), `Virtual host ${name} deleted.`, () => {
      location.hash = '#/vhosts';
    });
  }, out);
  f.querySelector('button').classList.add('danger');
  return f;
}

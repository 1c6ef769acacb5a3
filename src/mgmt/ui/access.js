// The sections a user's and a virtual host's pages share, after RabbitMQ's
// permissions.ejs, topic-permissions.ejs and limits.ejs: a table of what is
// set, with a Clear button per row, and a form to set one. `mode` is the
// page ('user' or 'vhost'); the form picks the other side (a vhost on a
// user's page, a user on a vhost's). Results and the API's errors show in
// place, under the form. Each section returns {element, refresh}: refresh
// redraws only the table, so the interval never wipes what is typed.

import { api, seg } from './api.js';
import { clear, errorBox, h } from './dom.js';
import { field } from './publish.js';

// A list table, or `none` when there are no rows.
export function table(id, headers, rows, none) {
  if (!rows.length) return h('p', { class: 'muted', id }, none);
  return h('div', { class: 'scroll' }, h('table', { class: 'list', id },
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c) => h('td', {}, c)))))));
}

// Runs one API change, then says `done` in `out` (or shows the error there).
export async function run(out, request, done, after) {
  clear(out);
  try {
    await request();
    out.append(h('p', { class: 'ok' }, done));
    after?.();
  } catch (e) {
    out.append(errorBox(e));
  }
}

// A form that calls `submit` (which may run()) and never reloads the page.
// `out` (results and errors) sits at its foot.
export function form(id, title, controls, label, submit, out) {
  const f = h('form', { class: 'panel', id }, h('h2', {}, title), controls, h('button', { type: 'submit' }, label), out);
  f.addEventListener('submit', (event) => {
    event.preventDefault();
    submit();
  });
  return f;
}

// Fills a select with names (from the API), keeping the choice if it is
// still there; `label` shows a name (the default exchange has none).
export function fillSelect(select, names, label = (n) => n) {
  const keep = select.value;
  clear(select).append(...names.map((n) => h('option', { value: n }, label(n))));
  if (names.includes(keep)) select.value = keep;
}

// Names of every vhost or user, for the form's select.
export async function names(kind) {
  return (await api(`/${kind}s?columns=name`)).map((o) => o.name);
}

export function vhostLink(name) {
  return h('a', { href: `#/vhosts/${seg(name)}` }, name);
}

export function userLink(name) {
  return h('a', { href: `#/users/${seg(name)}` }, name);
}

function clearButton(label, onclick) {
  return h('button', { type: 'button', class: 'danger', 'aria-label': label, onclick }, 'Clear');
}

function sides(mode, name, other) {
  return mode === 'user' ? { user: name, vhost: other } : { user: other, vhost: name };
}

// Permissions of this user per vhost, or of this vhost per user.
export function permissions(mode, name) {
  const other = mode === 'user' ? 'vhost' : 'user';
  const list = h('div');
  const out = h('div', { id: 'permissions-result', 'aria-live': 'polite' });
  const pick = h('select');
  const [configure, write, read] = ['.*', '.*', '.*'].map((v) => h('input', { value: v, autocomplete: 'off' }));
  const path = (p) => `/permissions/${seg(p.vhost)}/${seg(p.user)}`;

  async function refresh() {
    let rows;
    try {
      rows = await api(`/${mode}s/${seg(name)}/permissions`);
    } catch (e) {
      clear(list).append(errorBox(e));
      return;
    }
    clear(list).append(table('permissions',
      [other === 'vhost' ? 'Virtual host' : 'User', 'Configure regexp', 'Write regexp', 'Read regexp', ''],
      rows.map((p) => [
        other === 'vhost' ? vhostLink(p.vhost) : userLink(p.user), p.configure, p.write, p.read,
        clearButton(`Clear permissions of ${p.user} in ${p.vhost}`,
          () => run(out, () => api(path(p), { method: 'DELETE' }), 'Permissions cleared.', refresh)),
      ]),
      mode === 'user' ? 'This user does not have permission to access any virtual hosts.'
        : 'No users have permission to access this virtual host.'));
  }

  const set = form('permission-form', 'Set permission', [
    field(`permission-${other}`, other === 'vhost' ? 'Virtual host' : 'User', pick),
    field('permission-configure', 'Configure regexp', configure),
    field('permission-write', 'Write regexp', write),
    field('permission-read', 'Read regexp', read),
  ], 'Set permission', () => run(out, () => api(path(sides(mode, name, pick.value)), {
    method: 'PUT', body: { configure: configure.value, write: write.value, read: read.value },
  }), 'Permission set.', refresh), out);
  names(other).then((n) => fillSelect(pick, n), (e) => out.append(errorBox(e)));
  return {
    element: h('section', { 'aria-labelledby': 'h-permissions' },
      h('h2', { id: 'h-permissions' }, 'Permissions'), list, set),
    refresh,
  };
}

const exchangeLabel = (n) => n || '(AMQP default)';

// Topic permissions: per exchange, write and read regexps for routing keys.
export function topicPermissions(mode, name) {
  const other = mode === 'user' ? 'vhost' : 'user';
  const list = h('div');
  const out = h('div', { id: 'topic-permissions-result', 'aria-live': 'polite' });
  const pick = h('select');
  const exchange = h('select');
  const [write, read] = ['.*', '.*'].map((v) => h('input', { value: v, autocomplete: 'off' }));
  const path = (p) => `/topic-permissions/${seg(p.vhost)}/${seg(p.user)}`;
  const vhostOf = () => (mode === 'vhost' ? name : pick.value);
  const loadExchanges = async () => {
    if (!vhostOf()) return;
    try {
      const xs = await api(`/exchanges/${seg(vhostOf())}?columns=name`);
      fillSelect(exchange, xs.map((x) => x.name), exchangeLabel);
    } catch (e) {
      out.append(errorBox(e));
    }
  };
  pick.addEventListener('change', () => mode === 'user' && loadExchanges());

  async function refresh() {
    let rows;
    try {
      rows = await api(`/${mode}s/${seg(name)}/topic-permissions`);
    } catch (e) {
      clear(list).append(errorBox(e));
      return;
    }
    clear(list).append(table('topic-permissions',
      [other === 'vhost' ? 'Virtual host' : 'User', 'Exchange', 'Write regexp', 'Read regexp', ''],
      rows.map((p) => [
        other === 'vhost' ? vhostLink(p.vhost) : userLink(p.user), exchangeLabel(p.exchange), p.write, p.read,
        clearButton(`Clear topic permissions of ${p.user} in ${p.vhost} on ${exchangeLabel(p.exchange)}`,
          () => run(out, () => api(`${path(p)}/${seg(p.exchange)}`, { method: 'DELETE' }),
            'Topic permission cleared.', refresh)),
      ]),
      '… no topic permissions …'));
  }

  const set = form('topic-permission-form', 'Set topic permission', [
    field(`topic-permission-${other}`, other === 'vhost' ? 'Virtual host' : 'User', pick),
    field('topic-permission-exchange', 'Exchange', exchange),
    field('topic-permission-write', 'Write regexp', write),
    field('topic-permission-read', 'Read regexp', read),
  ], 'Set topic permission', () => run(out, () => api(path(sides(mode, name, pick.value)), {
    method: 'PUT', body: { exchange: exchange.value, write: write.value, read: read.value },
  }), 'Topic permission set.', refresh), out);
  names(other).then((n) => {
    fillSelect(pick, n);
    return loadExchanges();
  }, (e) => out.append(errorBox(e)));
  return {
    element: h('section', { 'aria-labelledby': 'h-topic-permissions' },
      h('h2', { id: 'h-topic-permissions' }, 'Topic permissions'), list, set),
    refresh,
  };
}

// Limits of this user (max-connections, max-channels) or vhost
// (max-connections, max-queues): /api/user-limits or /api/vhost-limits.
export function limits(mode, name) {
  const kinds = mode === 'user' ? ['max-connections', 'max-channels'] : ['max-connections', 'max-queues'];
  const base = `/${mode}-limits/${seg(name)}`;
  const list = h('div');
  const out = h('div', { id: 'limits-result', 'aria-live': 'polite' });
  const kind = h('select', {}, kinds.map((k) => h('option', { value: k }, k)));
  const value = h('input', { inputmode: 'numeric', autocomplete: 'off', required: true });

  async function refresh() {
    let rows;
    try {
      rows = await api(base);
    } catch (e) {
      clear(list).append(errorBox(e));
      return;
    }
    const values = Object.entries(rows[0]?.value ?? {}).sort(([a], [b]) => a.localeCompare(b));
    clear(list).append(table('limits', ['Limit', 'Value', ''], values.map(([k, v]) => [k, String(v),
      clearButton(`Clear limit ${k}`,
        () => run(out, () => api(`${base}/${seg(k)}`, { method: 'DELETE' }), `Limit ${k} cleared.`, refresh)),
    ]), '… no limits …'));
  }

  // As RabbitMQ's UI: the value must be a whole number before it is sent.
  const set = form('limit-form', 'Set / update a limit', [
    field('limit-name', 'Limit', kind),
    field('limit-value', 'Value', value),
  ], 'Set / update limit', () => {
    const n = parseInt(value.value, 10);
    if (Number.isNaN(n)) {
      clear(out).append(errorBox(`Validation failed\n\n${kind.value} should be a number, actually was "${value.value}"`));
      return;
    }
    run(out, () => api(`${base}/${seg(kind.value)}`, { method: 'PUT', body: { value: n } }),
      `Limit ${kind.value} set.`, refresh);
  }, out);
  return {
    element: h('section', { 'aria-labelledby': 'h-limits' },
      h('h2', { id: 'h-limits' }, 'Limits'), list, set),
    refresh,
  };
}

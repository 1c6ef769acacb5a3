// One connection: its details, client properties and channels, and
// "Force Close" with a reason (DELETE with X-Reason, as RabbitMQ's UI).

import { api, seg } from './api.js';
import { clear, errorBox, facts, h, num, value } from './dom.js';
import { field } from './publish.js';
import { channelHref } from './channels.js';

export function mount(main, { args: [name] }) {
  const path = `/connections/${seg(name)}`;
  const live = h('div', { id: 'connection-live' });
  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/connections' }, 'Connections')),
    h('h1', {}, 'Connection ', h('span', { id: 'connection-name' }, name)),
    live,
    closeForm(path));

  return {
    async refresh() {
      let c;
      let channels;
      try {
        [c, channels] = await Promise.all([api(path), api(`${path}/channels`)]);
      } catch (e) {
        clear(live).append(errorBox(e));
        return;
      }
      const props = Object.entries(c.client_properties ?? {}).map(([k, v]) => [k, value(v)]);
      clear(live).append(
        h('section', { 'aria-labelledby': 'h-details' },
          h('h2', { id: 'h-details' }, 'Details'),
          facts([
            ['Virtual host', c.vhost],
            ['User', c.user],
            ['State', c.state],
            ['Protocol', c.protocol],
            ['Client', `${c.peer_host}:${c.peer_port}`],
            ['Authentication', c.auth_mechanism],
            ['TLS', c.ssl ? `${c.ssl_protocol ?? ''} ${c.ssl_cipher ?? ''}` : 'no'],
            ['Heartbeat', `${num(c.timeout)} s`],
            ['Frame max', num(c.frame_max)],
            ['Channel max', num(c.channel_max)],
          ])),
        h('section', { 'aria-labelledby': 'h-props' },
          h('h2', { id: 'h-props' }, 'Client properties'),
          props.length ? facts(props) : h('p', { class: 'muted' }, 'None.')),
        h('section', { 'aria-labelledby': 'h-channels' },
          h('h2', { id: 'h-channels' }, 'Channels'),
          (channels ?? []).length
            ? h('div', { class: 'scroll' }, h('table', { class: 'list', id: 'connection-channels' },
              h('thead', {}, h('tr', {}, ['Channel', 'State', 'Mode', 'Prefetch', 'Unacked', 'Consumers'].map((t) => h('th', { scope: 'col' }, t)))),
              h('tbody', {}, channels.map((ch) => h('tr', {},
                h('td', { class: 'name' }, h('a', { href: channelHref(ch.name) }, ch.name)),
                h('td', {}, ch.state),
                h('td', {}, [ch.confirm ? 'confirm' : '', ch.transactional ? 'transactional' : ''].filter(Boolean).join(', ')),
                h('td', { class: 'num' }, num(ch.prefetch_count)),
                h('td', { class: 'num' }, num(ch.messages_unacknowledged)),
                h('td', { class: 'num' }, num(ch.consumer_count)))))))
            : h('p', { class: 'muted' }, '… no channels …')));
    },
  };
}

function closeForm(path) {
  const reason = h('input', { value: 'Closed via management plugin' });
  const out = h('div', { id: 'close-result', 'aria-live': 'polite' });
  const form = h('form', { class: 'panel', id: 'close-form' },
    h('h2', {}, 'Close this connection'),
    field('close-reason', 'Reason', reason),
    h('button', { type: 'submit', class: 'danger' }, 'Force Close'),
    out);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(out);
    if (!window.confirm('Close this connection?')) return;
    try {
      await api(path, { method: 'DELETE', extraHeaders: { 'X-Reason': reason.value } });
      out.append(h('p', { class: 'ok' }, 'Connection closed.'));
    } catch (e) {
      out.append(errorBox(e));
    }
  });
  return form;
}

// "Move messages" on a queue's page: creates the shovel RabbitMQ's UI
// creates (a `shovel` runtime parameter named "Move from <queue>", from
// this queue to another of the same vhost, deleting itself once it has
// moved the messages there when it started, acknowledging each only once
// the destination has it).

import { api, seg } from './api.js';
import { clear, errorBox, h } from './dom.js';
import { field } from './publish.js';

export function moveShovel(vhost, queue, destination) {
  const here = `amqp:///${encodeURIComponent(vhost)}`;
  return {
    'src-uri': here,
    'src-queue': queue,
    'src-protocol': 'amqp091',
    'src-prefetch-count': 1000,
    'src-delete-after': 'queue-length',
    'dest-protocol': 'amqp091',
    'dest-uri': here,
    'dest-add-forward-headers': false,
    'ack-mode': 'on-confirm',
    'dest-queue': destination,
  };
}

export function moveForm({ vhost, queue }) {
  const dest = h('input', { autocomplete: 'off', required: true });
  const out = h('div', { id: 'move-result', 'aria-live': 'polite' });
  const form = h('form', { class: 'panel', id: 'move-form' },
    h('h2', {}, 'Move messages'),
    h('p', { class: 'muted' },
      'Creates a temporary shovel that moves the messages in this queue now to another queue of the same virtual host, then deletes itself. ',
      h('a', { href: '#/shovels' }, 'Shovels'), ' has more options.'),
    field('move-dest', 'Destination queue', dest),
    h('button', { type: 'submit' }, 'Move messages'),
    out);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(out);
    const name = `Move from ${queue}`;
    try {
      await api(`/parameters/shovel/${seg(vhost)}/${seg(name)}`, {
        method: 'PUT',
        body: { component: 'shovel', vhost, name, value: moveShovel(vhost, queue, dest.value) },
      });
      out.append(h('p', { class: 'ok' }, `Moving messages to ${dest.value} (shovel "${name}").`));
    } catch (e) {
      out.append(errorBox(e));
    }
  });
  return form;
}

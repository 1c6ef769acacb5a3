// The "Publish message" form: POST /api/exchanges/{vhost}/{exchange}/publish.
// With `routingKey` given (a queue's page, through the default exchange)
// the key is fixed; otherwise the user types it.

import { api, seg } from './api.js';
import { clear, errorBox, h } from './dom.js';

export function field(id, label, control) {
  control.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), control);
}

export function publishForm({ vhost, exchange, routingKey }) {
  const key = h('input', { autocomplete: 'off' });
  const mode = h('select', {}, h('option', { value: '1' }, '1 - Non-persistent'), h('option', { value: '2' }, '2 - Persistent'));
  const headers = h('input', { placeholder: '{"key": "value"}', autocomplete: 'off' });
  const payload = h('textarea', { rows: 4 });
  const out = h('div', { id: 'publish-result', 'aria-live': 'polite' });
  const form = h('form', { class: 'panel', id: 'publish-form' },
    h('h2', {}, 'Publish message'),
    routingKey === undefined
      ? field('publish-key', 'Routing key', key)
      : h('p', { class: 'muted' }, 'Published through the default exchange with the queue name as routing key.'),
    field('publish-mode', 'Delivery mode', mode),
    field('publish-headers', 'Headers (JSON object)', headers),
    field('publish-payload', 'Payload', payload),
    h('button', { type: 'submit' }, 'Publish message'),
    out);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(out);
    const properties = { delivery_mode: Number(mode.value) };
    if (headers.value.trim()) {
      try {
        properties.headers = JSON.parse(headers.value);
      } catch (e) {
        out.append(errorBox(`Headers are not JSON: ${e.message}`));
        return;
      }
    }
    try {
      const r = await api(`/exchanges/${seg(vhost)}/${seg(exchange)}/publish`, {
        method: 'POST',
        body: { properties, routing_key: routingKey ?? key.value, payload: payload.value, payload_encoding: 'string' },
      });
      out.append(h('p', { class: 'ok' }, r.routed ? 'Message published.' : 'Message published, but not routed.'));
    } catch (e) {
      out.append(errorBox(e));
    }
  });
  return form;
}

// Bindings: a table of them (/api/.../bindings) and the form that adds
// one. `show` says which end to name, 'source' (bindings into a queue or
// exchange) or 'destination' (out of an exchange); each end links to its
// page. With `unbind` given each row gets an Unbind button (not for the
// default exchange's bindings, which cannot be removed), as RabbitMQ's UI.

import { api, seg } from './api.js';
import { exchangeHref } from './exchanges.js';
import { queueHref } from './queues.js';
import { clear, errorBox, h, value } from './dom.js';
import { argumentsEditor, choice } from './forms.js';
import { field } from './publish.js';

function end(b, which) {
  const name = b[which];
  if (which === 'source') return h('a', { href: exchangeHref(b.vhost, name) }, name || '(AMQP default)');
  const href = b.destination_type === 'queue' ? queueHref(b.vhost, name) : exchangeHref(b.vhost, name);
  return [b.destination_type === 'queue' ? 'queue ' : 'exchange ', h('a', { href }, name)];
}

// The binding's own path: DELETE it to unbind.
function bindingPath(b) {
  const kind = b.destination_type === 'queue' ? 'q' : 'e';
  return `/bindings/${seg(b.vhost)}/e/${seg(b.source)}/${kind}/${seg(b.destination)}/${seg(b.properties_key)}`;
}

// unbind: {done(), out} — after a removal `done` redraws; errors go to `out`.
export function bindingsTable(bindings, show, unbind) {
  if (!bindings.length) return h('p', { class: 'muted' }, '… no bindings …');
  const heads = [show === 'source' ? 'From' : 'To', 'Routing key', 'Arguments', unbind ? '' : null].filter((t) => t !== null);
  return h('div', { class: 'scroll' }, h('table', { class: 'list bindings' },
    h('thead', {}, h('tr', {}, heads.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, bindings.map((b) => h('tr', {},
      h('td', { class: 'name' }, end(b, show)),
      h('td', { class: 'name' }, b.routing_key),
      h('td', {}, value(b.arguments)),
      unbind ? h('td', {}, b.source === '' ? null : h('button', {
        type: 'button',
        class: 'unbind',
        // Many rows, one word: say which binding to those who hear it.
        'aria-label': `Unbind ${b.source} from ${b.destination_type} ${b.destination}, routing key "${b.routing_key}"`,
        onclick: async () => {
          clear(unbind.out);
          try {
            await api(bindingPath(b), { method: 'DELETE' });
          } catch (e) {
            unbind.out.append(errorBox(e));
            return;
          }
          unbind.done();
        },
      }, 'Unbind')) : null)))));
}

// "Add binding": on a queue's page `to` is the queue (the user names the
// exchange it comes from); on an exchange's page `from` is the exchange
// (the user names a queue or an exchange to bind it to).
// POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}.
export function bindForm({ vhost, to, from, done }) {
  const id = 'bind';
  const other = h('input', { required: true, autocomplete: 'off' });
  const kind = choice([['q', 'To queue'], ['e', 'To exchange']], 'q');
  const key = h('input', { autocomplete: 'off' });
  const args = argumentsEditor(id, []);
  const out = h('div', { id: `${id}-result`, 'aria-live': 'polite' });
  const form = h('form', { class: 'panel', id: `${id}-form` },
    h('h2', {}, to ? 'Add binding to this queue' : 'Add binding from this exchange'),
    to ? field(`${id}-source`, 'From exchange', other)
      : [field(`${id}-kind`, 'Destination type', kind), field(`${id}-destination`, 'Destination name', other)],
    field(`${id}-key`, 'Routing key', key),
    args.element,
    h('button', { type: 'submit' }, 'Bind'),
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
    const path = to
      ? `/bindings/${seg(vhost)}/e/${seg(other.value)}/q/${seg(to)}`
      : `/bindings/${seg(vhost)}/e/${seg(from)}/${kind.value}/${seg(other.value)}`;
    try {
      await api(path, { method: 'POST', body: { routing_key: key.value, arguments: arguments_ } });
    } catch (e) {
      out.append(errorBox(e));
      return;
    }
    out.append(h('p', { class: 'ok' }, 'Binding added.'));
    done();
  });
  return form;
}

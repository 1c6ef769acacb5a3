// Policies and operator policies (RabbitMQ's policies.ejs): both lists,
// for the header's vhost or all, and a form for each to add or update one
// (name, pattern, apply-to, priority, and a definition of typed key/value
// rows, as RabbitMQ's UI). "Edit" fills the form from a row. User policies
// are changed by policymakers and administrators, operator policies by
// administrators only, as RabbitMQ; the forms show for those users.

import { api, seg } from './api.js';
import { clear, errorBox, h } from './dom.js';
import { field } from './publish.js';
import { fillSelect, form, names, run, table } from './access.js';

// Keys people set most, as RabbitMQ's UI offers them: [key, type, label].
const HINTS = [
  ['max-length', 'number', 'Max length'],
  ['max-length-bytes', 'number', 'Max length bytes'],
  ['overflow', 'string', 'Overflow behaviour'],
  ['expires', 'number', 'Auto expire'],
  ['message-ttl', 'number', 'Message TTL'],
  ['dead-letter-exchange', 'string', 'Dead letter exchange'],
  ['dead-letter-routing-key', 'string', 'Dead letter routing key'],
  ['delivery-limit', 'number', 'Delivery limit'],
  ['queue-mode', 'string', 'Lazy mode', 'lazy'],
  ['max-age', 'string', 'Max age'],
  ['stream-max-segment-size-bytes', 'number', 'Max segment size in bytes'],
  ['alternate-exchange', 'string', 'Alternate exchange'],
];
const OPERATOR_HINTS = ['max-length', 'max-length-bytes', 'message-ttl', 'expires', 'delivery-limit'];

const KINDS = {
  policies: { id: 'policy', title: 'User policies', noun: 'policy', applyTo: ['all', 'exchanges', 'queues'], hints: HINTS },
  'operator-policies': {
    id: 'operator-policy', title: 'Operator policies', noun: 'operator policy', applyTo: ['queues'],
    hints: HINTS.filter(([k]) => OPERATOR_HINTS.includes(k)),
  },
};
const APPLY_TO = { all: 'Exchanges and queues', exchanges: 'Exchanges', queues: 'Queues' };

export function mount(main, { vhost, me }) {
  const tags = me?.tags ?? [];
  const admin = tags.includes('administrator');
  const maker = admin || tags.includes('policymaker');
  main.append(h('h1', {}, vhost ? `Policies in ${vhost}` : 'Policies'));
  const parts = [section('policies', vhost, maker), section('operator-policies', vhost, admin)];
  for (const p of parts) main.append(p.element);
  return { refresh: () => Promise.all(parts.map((p) => p.refresh())) };
}

function section(kind, vhost, mayChange) {
  const k = KINDS[kind];
  const list = h('div');
  const out = h('div', { id: `${k.id}-result`, 'aria-live': 'polite' });
  const editor = mayChange ? policyForm(kind, vhost, out, () => refresh()) : null;
  const path = (p) => `/${kind}/${seg(p.vhost)}/${seg(p.name)}`;

  async function refresh() {
    let rows;
    try {
      rows = await api(vhost ? `/${kind}/${seg(vhost)}` : `/${kind}`);
    } catch (e) {
      clear(list).append(errorBox(e));
      return;
    }
    const headers = [vhost ? null : 'Virtual host', 'Name', 'Pattern', 'Apply to', 'Definition', 'Priority',
      mayChange ? '' : null].filter((x) => x !== null);
    clear(list).append(table(kind, headers, rows.map((p) => [
      vhost ? null : p.vhost,
      p.name,
      p.pattern,
      p['apply-to'],
      definitionText(p.definition),
      String(p.priority ?? ''),
      mayChange ? h('span', { class: 'actions' },
        h('button', { type: 'button', 'aria-label': `Edit ${k.noun} ${p.name}`, onclick: () => editor.edit(p) }, 'Edit'),
        h('button', {
          type: 'button', class: 'danger', 'aria-label': `Delete ${k.noun} ${p.name}`,
          onclick: () => window.confirm(`Delete ${k.noun} "${p.name}"?`)
            && run(out, () => api(path(p), { method: 'DELETE' }), `Policy ${p.name} deleted.`, refresh),
        }, 'Delete')) : null,
    ].filter((c) => c !== null)), '… no policies …'));
  }

  return {
    element: h('section', { 'aria-labelledby': `h-${kind}` },
      h('h2', { id: `h-${kind}` }, k.title), list, editor?.element ?? out),
    refresh,
  };
}

// A definition as "key: value" lines, lists and objects as JSON.
function definitionText(definition) {
  return h('span', { class: 'lines' }, Object.entries(definition ?? {})
    .map(([key, v]) => `${key}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join('\n'));
}

function policyForm(kind, vhost, out, changed) {
  const k = KINDS[kind];
  const pickVhost = h('select');
  const name = h('input', { autocomplete: 'off', required: true });
  const pattern = h('input', { autocomplete: 'off', required: true, placeholder: '^amq\\.' });
  const applyTo = h('select', {}, k.applyTo.map((a) => h('option', { value: a }, APPLY_TO[a])));
  const priority = h('input', { inputmode: 'numeric', autocomplete: 'off' });
  const definition = definitionEditor(`${k.id}-definition`);
  if (!vhost) names('vhost').then((n) => fillSelect(pickVhost, n), (e) => out.append(errorBox(e)));
  const hints = h('p', { class: 'hints' }, 'Add: ', k.hints.map(([key, type, label, v]) => h('button', {
    type: 'button', class: 'hint', onclick: () => definition.add(key, type, v ?? ''),
  }, label)));
  const element = form(`${k.id}-form`, `Add / update ${k.noun === 'policy' ? 'a policy' : 'an operator policy'}`, [
    vhost ? h('p', { class: 'muted' }, `In virtual host ${vhost}.`) : field(`${k.id}-vhost`, 'Virtual host', pickVhost),
    field(`${k.id}-name`, 'Name', name),
    field(`${k.id}-pattern`, 'Pattern', pattern),
    field(`${k.id}-apply-to`, 'Apply to', applyTo),
    field(`${k.id}-priority`, 'Priority', priority),
    h('div', { class: 'field' }, h('span', { id: `${k.id}-definition-label` }, 'Definition'),
      h('div', { role: 'group', 'aria-labelledby': `${k.id}-definition-label` }, definition.element, hints)),
  ], `Add / update ${k.noun}`, () => {
    const body = { pattern: pattern.value, 'apply-to': applyTo.value };
    try {
      body.definition = definition.value();
      if (priority.value.trim()) {
        body.priority = Number(priority.value);
        if (!Number.isInteger(body.priority)) throw new Error(`priority must be a number; got ${priority.value}`);
      }
    } catch (e) {
      clear(out).append(errorBox(e));
      return;
    }
    const v = vhost ?? pickVhost.value;
    run(out, () => api(`/${kind}/${seg(v)}/${seg(name.value)}`, { method: 'PUT', body }),
      `${k.noun === 'policy' ? 'Policy' : 'Operator policy'} ${name.value} saved.`, changed);
  }, out);
  return {
    element,
    edit(p) {
      if (!vhost) pickVhost.value = p.vhost;
      name.value = p.name;
      pattern.value = p.pattern;
      applyTo.value = p['apply-to'];
      priority.value = String(p.priority ?? '');
      definition.set(p.definition ?? {});
      name.focus();
    },
  };
}

// Key = value rows with a type each (String, Number, Boolean, List), as
// RabbitMQ's UI: there is always one empty row at the end to type into;
// rows left empty are ignored. A list is its items separated by commas.
function definitionEditor(id) {
  const rows = h('div', { class: 'definition', id });
  let next = 0;
  const row = (key = '', type = 'string', value = '') => {
    const n = next++;
    const r = h('div', { class: 'kv' },
      h('input', { class: 'kv-key', 'aria-label': `Key ${n + 1}`, value: key, autocomplete: 'off' }),
      h('span', { 'aria-hidden': 'true' }, '='),
      h('input', { class: 'kv-value', 'aria-label': `Value ${n + 1}`, value, autocomplete: 'off' }),
      h('select', { class: 'kv-type', 'aria-label': `Type ${n + 1}` },
        ['string', 'number', 'boolean', 'list'].map((t) => h('option', { value: t, selected: t === type }, t[0].toUpperCase() + t.slice(1)))));
    r.addEventListener('input', ensureEmpty);
    return r;
  };
  const filled = (r) => r.querySelector('.kv-key').value !== '' || r.querySelector('.kv-value').value !== '';
  function ensureEmpty() {
    const last = rows.lastElementChild;
    if (!last || filled(last)) rows.append(row());
  }
  ensureEmpty();
  return {
    element: rows,
    add(key, type, value) {
      const empty = [...rows.children].find((r) => !filled(r));
      const r = row(key, type, value);
      if (empty) empty.replaceWith(r);
      else rows.append(r);
      ensureEmpty();
      r.querySelector('.kv-value').focus();
    },
    set(definition) {
      clear(rows);
      for (const [key, v] of Object.entries(definition)) {
        const type = Array.isArray(v) ? 'list' : typeof v === 'number' ? 'number' : typeof v === 'boolean' ? 'boolean' : 'string';
        rows.append(row(key, type, type === 'list' ? v.join(', ') : typeof v === 'object' ? JSON.stringify(v) : String(v)));
      }
      ensureEmpty();
    },
    // The definition object; throws RabbitMQ's UI's message for a bad value.
    value() {
      const out = {};
      for (const r of rows.children) {
        if (!filled(r)) continue;
        const key = r.querySelector('.kv-key').value;
        const v = r.querySelector('.kv-value').value;
        const type = r.querySelector('.kv-type').value;
        if (type === 'boolean') {
          if (v !== 'true' && v !== 'false') throw new Error(`${key} must be "true" or "false"; got ${v}`);
          out[key] = v === 'true';
        } else if (type === 'number') {
          const n = parseFloat(v);
          if (Number.isNaN(n)) throw new Error(`${key} must be a number; got ${v}`);
          out[key] = n;
        } else if (type === 'list') {
          out[key] = v.split(',').map((s) => s.trim()).filter(Boolean);
        } else {
          out[key] = v;
        }
      }
      return out;
    },
  };
}

// Pieces of the forms that make objects: a vhost chooser and RabbitMQ's
// typed arguments editor (key, value, type rows; "Add" hints that fill in
// a key RabbitMQ knows).

import { api } from './api.js';
import { h } from './dom.js';

// A select of the vhosts the user sees, `preferred` chosen when there.
export function vhostSelect(id, preferred) {
  const select = h('select', { id, required: true });
  api('/vhosts?columns=name').then((vhosts) => {
    const names = (vhosts ?? []).map((v) => v.name);
    select.replaceChildren(...names.map((n) => h('option', { value: n }, n)));
    select.value = names.includes(preferred) ? preferred : (names.includes('/') ? '/' : names[0] ?? '');
  }, () => {
    select.replaceChildren(h('option', { value: preferred ?? '/' }, preferred ?? '/'));
  });
  return select;
}

// RabbitMQ's argument types, as its UI offers them.
const TYPES = [['string', 'String'], ['number', 'Number'], ['boolean', 'Boolean'], ['list', 'List']];

// The value of one row as JSON, or an Error saying why not.
function typed(key, raw, type) {
  if (type === 'number') {
    const n = Number(raw.trim());
    if (raw.trim() === '' || !Number.isFinite(n)) return new Error(`Argument ${key}: "${raw}" is not a number`);
    return n;
  }
  if (type === 'boolean') {
    if (raw === 'true') return true;
    if (raw === 'false') return false;
    return new Error(`Argument ${key}: "${raw}" is not true or false`);
  }
  if (type === 'list') {
    try {
      const v = JSON.parse(raw);
      if (Array.isArray(v)) return v;
    } catch {
      // Said below.
    }
    return new Error(`Argument ${key}: "${raw}" is not a JSON list`);
  }
  return raw;
}

// idPrefix: for the rows' ids ('<prefix>-arg-key-<n>', ...).
// hints: [[label, key, type, example?, kinds?]], shown as buttons adding
// the key; `kinds` (e.g. ['classic', 'quorum']) lets showHints(kind) hide
// the ones that do not apply.
// Returns {element, read()}: read() gives the arguments object or throws
// an Error naming the bad row.
export function argumentsEditor(idPrefix, hints) {
  const rows = h('div', { class: 'args', id: `${idPrefix}-args` });
  let n = 0;

  function row(key = '', value = '', type = 'string') {
    const i = n++;
    const k = h('input', { id: `${idPrefix}-arg-key-${i}`, 'aria-label': 'Argument name', value: key, autocomplete: 'off', class: 'arg-key' });
    const v = h('input', { id: `${idPrefix}-arg-value-${i}`, 'aria-label': 'Argument value', value, autocomplete: 'off', class: 'arg-value' });
    const t = h('select', { id: `${idPrefix}-arg-type-${i}`, 'aria-label': 'Argument type', class: 'arg-type' },
      TYPES.map(([val, label]) => h('option', { value: val, selected: val === type }, label)));
    const r = h('div', { class: 'arg-row' }, k, ' = ', v, ' ', t);
    // A new empty row appears once the last one is used, as RabbitMQ's.
    k.addEventListener('input', () => {
      if (rows.lastElementChild === r && k.value) rows.append(row());
    });
    return r;
  }

  function add(key, type, example) {
    const empty = [...rows.children].find((r) => !r.querySelector('.arg-key').value);
    const r = empty ?? row();
    r.querySelector('.arg-key').value = key;
    r.querySelector('.arg-type').value = type;
    if (example !== undefined && !r.querySelector('.arg-value').value) r.querySelector('.arg-value').value = example;
    if (!empty) rows.append(r);
    if (rows.lastElementChild === r) rows.append(row());
    r.querySelector('.arg-value').focus();
  }

  rows.append(row());
  const element = h('div', { class: 'field' },
    h('span', { class: 'label' }, 'Arguments'),
    h('div', {},
      rows,
      hints.length === 0 ? null : h('p', { class: 'hints muted' }, 'Add ',
        hints.map(([label, key, type, example, kinds]) => [h('button', {
          type: 'button', class: 'hint', 'data-arg': key, 'data-kinds': kinds?.join(' '), title: key, onclick: () => add(key, type, example),
        }, label), ' ']))));

  function showHints(kind) {
    for (const b of element.querySelectorAll('button.hint')) {
      b.hidden = Boolean(b.dataset.kinds) && !b.dataset.kinds.split(' ').includes(kind);
    }
  }

  function read() {
    const out = {};
    for (const r of rows.children) {
      const key = r.querySelector('.arg-key').value.trim();
      if (!key) continue;
      const v = typed(key, r.querySelector('.arg-value').value, r.querySelector('.arg-type').value);
      if (v instanceof Error) throw v;
      out[key] = v;
    }
    return out;
  }

  function reset() {
    rows.replaceChildren(row());
  }

  return { element, read, reset, showHints };
}

// A select of fixed options: [[value, label]].
export function choice(options, selected) {
  return h('select', {}, options.map(([v, label]) => h('option', { value: v, selected: v === selected }, label)));
}

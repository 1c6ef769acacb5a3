// Definitions export (download) and import (upload), whole broker or one
// vhost (the header's filter): GET and POST /api/definitions[/{vhost}].

import { api, seg } from './api.js';
import { clear, errorBox, h } from './dom.js';
import { field } from './publish.js';

export function mount(main, { vhost }) {
  const path = vhost ? `/definitions/${seg(vhost)}` : '/definitions';
  const scope = vhost ? `virtual host ${vhost}` : 'the whole broker';
  const out = h('div', { id: 'definitions-result', 'aria-live': 'polite' });
  const file = h('input', { type: 'file', accept: '.json,application/json', required: true });

  const download = h('button', {
    type: 'button',
    id: 'definitions-export',
    onclick: async () => {
      clear(out);
      try {
        const defs = await api(path);
        const blob = new Blob([JSON.stringify(defs, null, 2)], { type: 'application/json' });
        const link = h('a', { href: URL.createObjectURL(blob), download: vhost ? `definitions-${vhost}.json` : 'definitions.json' });
        document.body.append(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(link.href), 10000);
      } catch (e) {
        out.append(errorBox(e));
      }
    },
  }, 'Download broker definitions');

  const upload = h('form', { class: 'panel', id: 'definitions-import' },
    h('h2', {}, 'Import definitions'),
    h('p', { class: 'muted' }, `Into ${scope}. Objects that exist are updated; nothing is deleted.`),
    field('definitions-file', 'Definitions file', file),
    h('button', { type: 'submit' }, 'Upload broker definitions'));
  upload.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(out);
    const chosen = file.files?.[0];
    if (!chosen) return;
    let body;
    try {
      body = JSON.parse(await chosen.text());
    } catch (e) {
      out.append(errorBox(`Not a JSON file: ${e.message}`));
      return;
    }
    try {
      await api(path, { method: 'POST', body });
      out.append(h('p', { class: 'ok' }, 'Your definition file was imported successfully.'));
    } catch (e) {
      out.append(errorBox(e));
    }
  });

  main.append(
    h('h1', {}, 'Definitions'),
    h('section', { class: 'panel', 'aria-labelledby': 'h-export' },
      h('h2', { id: 'h-export' }, 'Export definitions'),
      h('p', { class: 'muted' }, `Users, virtual hosts, permissions, policies, exchanges, queues and bindings of ${scope}, as a JSON file.`),
      download),
    upload,
    out);
  return {};
}

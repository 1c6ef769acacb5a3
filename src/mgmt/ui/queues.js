// The queue list: one page of /api/queues at a time (the API filters,
// sorts and paginates, so 10,000 queues cost the browser one page), with
// RabbitMQ's UI parameters: page, page_size, name, use_regex, sort,
// sort_reverse.

import { api, seg } from './api.js';
import { clear, errorBox, h, num, rate } from './dom.js';

// Kept while the page is open, so coming back finds the same list.
const state = { page: 1, page_size: 100, name: '', use_regex: false, sort: 'name', sort_reverse: false };

const COLUMNS = [
  { key: 'vhost', label: 'Virtual host', allOnly: true },
  { key: 'name', label: 'Name' },
  { key: 'type', label: 'Type' },
  { key: 'features', label: 'Features', unsortable: true },
  { key: 'state', label: 'State' },
  { key: 'messages_ready', label: 'Ready', numeric: true },
  { key: 'messages_unacknowledged', label: 'Unacked', numeric: true },
  { key: 'messages', label: 'Total', numeric: true },
  { key: 'message_stats.publish_details.rate', label: 'Incoming', numeric: true },
  { key: 'message_stats.deliver_get_details.rate', label: 'Deliver / get', numeric: true },
  { key: 'message_stats.ack_details.rate', label: 'Ack', numeric: true },
  { key: 'consumers', label: 'Consumers', numeric: true },
];

export function queueHref(q) {
  return `#/queues/${seg(q.vhost)}/${seg(q.name)}`;
}

function features(q) {
  const f = [];
  if (q.durable) f.push('D');
  if (q.auto_delete) f.push('AD');
  if (q.exclusive) f.push('Excl');
  for (const k of Object.keys(q.arguments ?? {})) if (k !== 'x-queue-type') f.push(k.replace(/^x-/, ''));
  if (q.policy) f.push(`policy ${q.policy}`);
  return f.join(' ');
}

function cell(q, key) {
  switch (key) {
    case 'name': return h('a', { href: queueHref(q) }, q.name);
    case 'features': return features(q);
    case 'message_stats.publish_details.rate': return rate(q.message_stats?.publish_details);
    case 'message_stats.deliver_get_details.rate': return rate(q.message_stats?.deliver_get_details);
    case 'message_stats.ack_details.rate': return rate(q.message_stats?.ack_details);
    default: return typeof q[key] === 'number' ? num(q[key]) : (q[key] ?? '');
  }
}

export function mount(main, { vhost }) {
  const columns = COLUMNS.filter((c) => !c.allOnly || !vhost);
  const status = h('p', { class: 'muted', id: 'queues-status', 'aria-live': 'polite' });
  const errors = h('div');
  const tbody = h('tbody');
  const filter = h('input', { id: 'queue-filter', type: 'search', value: state.name, placeholder: 'Filter by name' });
  const regex = h('input', { id: 'queue-regex', type: 'checkbox', checked: state.use_regex });
  const size = h('select', { id: 'queue-page-size' },
    [20, 50, 100, 500].map((n) => h('option', { value: n, selected: n === state.page_size }, String(n))));
  const prev = h('button', { type: 'button', id: 'queues-prev' }, '‹ Previous');
  const next = h('button', { type: 'button', id: 'queues-next' }, 'Next ›');
  const headRow = h('tr');
  let list = null;
  // Answers may come back out of order: only the latest request's is drawn.
  let latest = 0;

  async function refresh() {
    const mine = ++latest;
    const params = new URLSearchParams({
      page: state.page, page_size: state.page_size, name: state.name,
      use_regex: state.use_regex, sort: state.sort, sort_reverse: state.sort_reverse,
    });
    try {
      const answer = await api(`/queues${vhost ? `/${seg(vhost)}` : ''}?${params}`);
      if (mine !== latest) return;
      list = answer;
    } catch (e) {
      if (mine !== latest) return;
      if (e.error === 'page_out_of_range' && state.page > 1) {
        state.page = 1;
        return refresh();
      }
      clear(errors).append(errorBox(e));
      return;
    }
    clear(errors);
    const rows = list.items.map((q) => h('tr', {}, columns.map((c) => h('td', { class: c.numeric ? 'num' : c.key === 'name' ? 'name' : '' }, cell(q, c.key)))));
    tbody.replaceChildren(...rows);
    if (!rows.length) tbody.append(h('tr', {}, h('td', { colspan: columns.length }, '… no queues …')));
    status.textContent = `Page ${list.page} of ${Math.max(1, list.page_count)}: `
      + `${num(list.item_count)} shown, ${num(list.filtered_count)} matching, ${num(list.total_count)} in all`;
    prev.disabled = list.page <= 1;
    next.disabled = list.page >= list.page_count;
  }

  function drawHead() {
    headRow.replaceChildren(...columns.map((c) => {
      if (c.unsortable) return h('th', { scope: 'col' }, c.label);
      const active = state.sort === c.key;
      const arrow = active ? (state.sort_reverse ? ' ▼' : ' ▲') : '';
      return h('th', { scope: 'col', class: c.numeric ? 'num' : '', 'aria-sort': active ? (state.sort_reverse ? 'descending' : 'ascending') : 'none' },
        h('button', {
          type: 'button', class: 'sort', 'data-sort': c.key,
          onclick: () => {
            // A first click on a number sorts the biggest first, as people look for deep queues.
            state.sort_reverse = active ? !state.sort_reverse : Boolean(c.numeric);
            state.sort = c.key;
            state.page = 1;
            drawHead();
            headRow.querySelector(`[data-sort="${c.key}"]`)?.focus();
            refresh();
          },
        }, c.label + arrow));
    }));
  }

  let typing = null;
  filter.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.name = filter.value;
      state.page = 1;
      refresh();
    }, 300);
  });
  regex.addEventListener('change', () => {
    state.use_regex = regex.checked;
    state.page = 1;
    refresh();
  });
  size.addEventListener('change', () => {
    state.page_size = Number(size.value);
    state.page = 1;
    refresh();
  });
  prev.addEventListener('click', () => {
    state.page = Math.max(1, state.page - 1);
    refresh();
  });
  next.addEventListener('click', () => {
    state.page += 1;
    refresh();
  });

  drawHead();
  main.append(
    h('h1', {}, vhost ? `Queues in ${vhost}` : 'Queues'),
    h('div', { class: 'controls' },
      h('label', { for: 'queue-filter' }, 'Filter'), filter,
      h('label', {}, regex, ' Regex'),
      h('label', { for: 'queue-page-size' }, 'Page size'), size),
    errors,
    h('div', { class: 'scroll' }, h('table', { class: 'list', id: 'queues' }, h('thead', {}, headRow), tbody)),
    h('div', { class: 'controls' }, prev, status, next));
  return { refresh };
}

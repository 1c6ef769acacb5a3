// A list page over one of the API's paginated lists (/api/queues,
// /api/exchanges, ...): one page at a time, with RabbitMQ's UI
// parameters (page, page_size, name, use_regex, sort, sort_reverse), so a
// list of 10,000 objects costs the browser one page of rows.
//
// pagedList(main, {id, title, path, columns, state})
//   id       the table's id; the controls' ids are prefixed with it
//   title    the heading
//   path     the API path to ask, e.g. '/queues' or '/queues/%2F'
//   columns  [{key, label, numeric?, unsortable?, cell(item)?}]; `key` is
//            the API's sort key (dotted for nested fields)
//   state    the caller's {page, page_size, name, use_regex, sort,
//            sort_reverse}, kept by the page module so it survives
//            navigation
//   heading  'h1' (the default) or 'h2', for a second list on a page
// Returns {refresh}.

import { api } from './api.js';
import { clear, errorBox, h, num } from './dom.js';

export function listState(sort = 'name') {
  return { page: 1, page_size: 100, name: '', use_regex: false, sort, sort_reverse: false };
}

function plain(item, key) {
  const v = key.split('.').reduce((o, k) => o?.[k], item);
  return typeof v === 'number' ? num(v) : (v ?? '');
}

export function pagedList(main, { id, title, path, columns, state, heading = 'h1' }) {
  const status = h('p', { class: 'muted', id: `${id}-status`, 'aria-live': 'polite' });
  const errors = h('div');
  const tbody = h('tbody');
  const filter = h('input', { id: `${id}-filter`, type: 'search', value: state.name, placeholder: 'Filter by name' });
  const regex = h('input', { id: `${id}-regex`, type: 'checkbox', checked: state.use_regex });
  const size = h('select', { id: `${id}-page-size` },
    [20, 50, 100, 500].map((n) => h('option', { value: n, selected: n === state.page_size }, String(n))));
  const prev = h('button', { type: 'button', id: `${id}-prev` }, '‹ Previous');
  const next = h('button', { type: 'button', id: `${id}-next` }, 'Next ›');
  const headRow = h('tr');
  // Answers may come back out of order: only the latest request's is drawn.
  let latest = 0;

  async function refresh() {
    const mine = ++latest;
    const params = new URLSearchParams({
      page: state.page, page_size: state.page_size, name: state.name,
      use_regex: state.use_regex, sort: state.sort, sort_reverse: state.sort_reverse,
    });
    let list;
    try {
      list = await api(`${path}${path.includes('?') ? '&' : '?'}${params}`);
      if (mine !== latest) return;
    } catch (e) {
      if (mine !== latest) return;
      if (e.error === 'page_out_of_range' && state.page > 1) {
        state.page = 1;
        refresh();
        return;
      }
      clear(errors).append(errorBox(e));
      return;
    }
    clear(errors);
    tbody.replaceChildren(...list.items.map((item) => h('tr', {}, columns.map((c) =>
      h('td', { class: c.numeric ? 'num' : c.key === 'name' ? 'name' : '' }, c.cell ? c.cell(item) : plain(item, c.key))))));
    if (!list.items.length) tbody.append(h('tr', {}, h('td', { colspan: columns.length }, '… none …')));
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
            // A first click on a number sorts the biggest first: people look for deep queues.
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

  const again = (change) => () => {
    change();
    refresh();
  };
  let typing = null;
  filter.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(again(() => {
      state.name = filter.value;
      state.page = 1;
    }), 300);
  });
  regex.addEventListener('change', again(() => {
    state.use_regex = regex.checked;
    state.page = 1;
  }));
  size.addEventListener('change', again(() => {
    state.page_size = Number(size.value);
    state.page = 1;
  }));
  prev.addEventListener('click', again(() => {
    state.page = Math.max(1, state.page - 1);
  }));
  next.addEventListener('click', again(() => {
    state.page += 1;
  }));

  drawHead();
  main.append(
    h(heading, {}, title),
    h('div', { class: 'controls' },
      h('label', { for: `${id}-filter` }, 'Filter'), filter,
      h('label', {}, regex, ' Regex'),
      h('label', { for: `${id}-page-size` }, 'Page size'), size),
    errors,
    h('div', { class: 'scroll' }, h('table', { class: 'list', id }, h('thead', {}, headRow), tbody)),
    h('div', { class: 'controls' }, prev, status, next));
  return { refresh };
}

// The UI's frame: login state, the header (user, vhost filter, refresh
// interval, log out), the alarm banner, and routing by URL hash to one
// page module at a time:
//   #/overview   #/queues   #/queues/<vhost>/<name>
//   #/exchanges  #/exchanges/<vhost>/<name>
//   #/connections  #/connections/<name>  #/channels  #/channels/<name>
//   #/users  #/users/<name>  #/vhosts  #/vhosts/<name>  #/policies
//   #/definitions  #/streams  #/streams/connections/<vhost>/<name>  #/shovels
//   (segments URI-encoded)
// A page module exports mount(main, ctx) and returns {refresh}; the frame
// calls refresh now and on the chosen interval, never reloading the page.

import { api, clearLogin, loggedIn, whenUnauthorised } from './api.js';
import { clear, h } from './dom.js';
import * as loginPage from './login.js';
import * as overview from './overview.js';
import * as queues from './queues.js';
import * as queue from './queue.js';
import * as exchanges from './exchanges.js';
import * as exchange from './exchange.js';
import * as connections from './connections.js';
import * as connection from './connection.js';
import * as channels from './channels.js';
import * as channel from './channel.js';
import * as users from './users.js';
import * as definitions from './definitions.js';
import * as vhosts from './vhosts.js';
import * as user from './user.js';
import * as vhost from './vhost.js';
import * as policies from './policies.js';
import * as streams from './streams.js';
import * as streamConnection from './stream-connection.js';
import * as shovels from './shovels.js';

const $ = (id) => document.getElementById(id);
const REFRESH = 'leveret.refresh';
const VHOST = 'leveret.vhost';

let me = null;
let page = null;
let timer = null;

function routeOf(hash) {
  const parts = hash.replace(/^#\/?/, '').split('/').map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  if (parts[0] === 'queues' && parts.length === 3) return { module: queue, name: 'queues', args: parts.slice(1) };
  if (parts[0] === 'queues') return { module: queues, name: 'queues', args: [] };
  if (parts[0] === 'exchanges' && parts.length === 3) return { module: exchange, name: 'exchanges', args: parts.slice(1) };
  if (parts[0] === 'exchanges') return { module: exchanges, name: 'exchanges', args: [] };
  if (parts[0] === 'connections' && parts.length === 2) return { module: connection, name: 'connections', args: parts.slice(1) };
  if (parts[0] === 'connections') return { module: connections, name: 'connections', args: [] };
  if (parts[0] === 'channels' && parts.length === 2) return { module: channel, name: 'channels', args: parts.slice(1) };
  if (parts[0] === 'channels') return { module: channels, name: 'channels', args: [] };
  if (parts[0] === 'users' && parts.length === 2) return { module: user, name: 'users', args: parts.slice(1) };
  if (parts[0] === 'users') return { module: users, name: 'users', args: [] };
  if (parts[0] === 'vhosts' && parts.length === 2) return { module: vhost, name: 'vhosts', args: parts.slice(1) };
  if (parts[0] === 'vhosts') return { module: vhosts, name: 'vhosts', args: [] };
  if (parts[0] === 'policies') return { module: policies, name: 'policies', args: [] };
  if (parts[0] === 'streams' && parts[1] === 'connections' && parts.length === 4) {
    return { module: streamConnection, name: 'streams', args: parts.slice(2) };
  }
  if (parts[0] === 'streams') return { module: streams, name: 'streams', args: [] };
  if (parts[0] === 'definitions') return { module: definitions, name: 'definitions', args: [] };
  if (parts[0] === 'shovels') return { module: shovels, name: 'shovels', args: [] };
  return { module: overview, name: 'overview', args: [] };
}

async function tick() {
  if (!page) return;
  // The vhost list too: one added or deleted shows without logging in again.
  await Promise.all([page.refresh?.(), showAlarms(), fillVhosts()]);
}

function schedule() {
  clearInterval(timer);
  const every = Number($('refresh').value);
  if (every > 0) timer = setInterval(tick, every * 1000);
}

function route() {
  if (!me) return;
  const { module, name, args } = routeOf(location.hash);
  for (const a of $('nav').querySelectorAll('a')) {
    if (a.dataset.page === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const main = clear($('main'));
  page = module.mount(main, { vhost: $('vhost').value || null, args, me });
  tick();
}

// Memory and disk alarms: a banner above every page while one is on.
async function showAlarms() {
  const box = $('alarms');
  let nodes;
  try {
    nodes = await api('/nodes');
  } catch {
    return;
  }
  const banners = [];
  for (const n of nodes ?? []) {
    if (n.mem_alarm) {
      banners.push(`Memory alarm on node ${n.name}: publishers are blocked (memory used above the limit).`);
    }
    if (n.disk_free_alarm) {
      banners.push(`Disk alarm on node ${n.name}: publishers are blocked (free disk space below the limit).`);
    }
  }
  clear(box).append(...banners.map((t) => h('p', { class: 'alarm' }, t)));
}

// Fills the header's vhost filter; redrawn only when the list changed, so
// a refresh never disturbs a user choosing from it. When the chosen vhost
// is gone the filter goes back to "All" (and the page with it).
async function fillVhosts() {
  const select = $('vhost');
  const wanted = sessionStorage.getItem(VHOST) ?? '';
  let vhosts;
  try {
    vhosts = (await api('/vhosts?columns=name')).map((v) => v.name);
  } catch {
    // Kept as it is; pages report their own errors.
    if (select.options.length) return;
    vhosts = [];
  }
  const shown = [...select.options].slice(1).map((o) => o.value);
  if (select.options.length && shown.length === vhosts.length && shown.every((v, i) => v === vhosts[i])) return;
  const before = select.value;
  clear(select).append(h('option', { value: '' }, 'All'),
    ...vhosts.map((v) => h('option', { value: v }, v)));
  select.value = vhosts.includes(wanted) ? wanted : '';
  if (before && select.value !== before && page) {
    sessionStorage.setItem(VHOST, '');
    route();
  }
}

async function enter(user) {
  me = user;
  $('user').textContent = me.name;
  $('nav').hidden = false;
  $('session').hidden = false;
  await fillVhosts();
  route();
  schedule();
}

function leave() {
  me = null;
  page = null;
  clearInterval(timer);
  clearLogin();
  $('nav').hidden = true;
  $('session').hidden = true;
  clear($('alarms'));
  loginPage.mount(clear($('main')), { onLogin: enter });
}

function start() {
  $('refresh').value = sessionStorage.getItem(REFRESH) ?? '5';
  $('refresh').addEventListener('change', () => {
    sessionStorage.setItem(REFRESH, $('refresh').value);
    schedule();
  });
  $('vhost').addEventListener('change', () => {
    sessionStorage.setItem(VHOST, $('vhost').value);
    const { name, args } = routeOf(location.hash);
    if (args.length) location.hash = `#/${name}`;
    else route();
  });
  $('logout').addEventListener('click', () => {
    location.hash = '#/overview';
    leave();
  });
  // The hash is the route: the skip link moves focus without changing it.
  document.querySelector('.skip').addEventListener('click', (event) => {
    event.preventDefault();
    $('main').focus();
  });
  window.addEventListener('hashchange', route);
  whenUnauthorised(leave);
  if (!loggedIn()) {
    leave();
    return;
  }
  api('/whoami').then(enter, leave);
}

start();

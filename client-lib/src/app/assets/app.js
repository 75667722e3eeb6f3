// Boot and the hash router. Each screen is a module exporting views:
//   { name, nav, render(ctx) → Promise<Node>, concerns?(change, ctx) → bool }
// `ctx` lives as long as the address: {params, query, refresh(), shown: Set of ids, …}.
// A live change (live.js) re-renders the current view when its `concerns` says so, unless
// the rep has typed into it: then a banner offers to refresh.

import { h } from './dom.js';
import { t, lang, setLang, initLang, label } from './i18n.js';
import { get } from './api.js';
import * as fmt from './format.js';
import { startLive } from './live.js';
import { session, showError, clearError, describe } from './ui.js';
import { todayView } from './today.js';
import { searchView } from './search.js';
import { customerView } from './customer.js';
import { visitFormView, visitView } from './visit.js';
import { quoteFormView, quoteView } from './quote.js';
import { syncView } from './sync.js';

const ROUTES = [
  [/^\/today$/, todayView],
  [/^\/customers$/, searchView],
  [/^\/customer\/([^/]+)$/, customerView],
  [/^\/customer\/([^/]+)\/visit$/, visitFormView],
  [/^\/customer\/([^/]+)\/quote$/, quoteFormView],
  [/^\/visit\/([^/]+)$/, visitView],
  [/^\/quote\/([^/]+)$/, quoteView],
  [/^\/sync$/, syncView],
];

let current = null; // {view, ctx}
let renders = 0;

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/today';
  const i = raw.indexOf('?');
  const path = i < 0 ? raw : raw.slice(0, i);
  const query = new URLSearchParams(i < 0 ? '' : raw.slice(i + 1));
  return { path, query };
}

async function route() {
  const { path, query } = parseHash();
  for (const [re, view] of ROUTES) {
    const m = re.exec(path);
    if (!m) continue;
    const params = m.slice(1).map(decodeURIComponent);
    const ctx = { params, query, shown: new Set(), dirty: false };
    ctx.refresh = () => render(true);
    current = { view, ctx };
    clearError();
    hideStale();
    await render(false);
    return;
  }
  location.replace('#/today');
}

async function render(keepScroll) {
  const mine = ++renders;
  const cur = current;
  document.body.dataset.ready = 'false';
  let node;
  try {
    node = await cur.view.render(cur.ctx);
  } catch (e) {
    node = h('div', { class: 'failed' },
      h('div', { class: 'error', 'data-test': 'error', role: 'alert' }, describe(e)),
      h('p', {}, h('a', { href: '#/today' }, t('nav.today'))));
  }
  if (mine !== renders || cur !== current) return; // a newer render took over
  const main = document.getElementById('view');
  const y = window.scrollY;
  main.replaceChildren(node);
  window.scrollTo(0, keepScroll ? y : 0);
  cur.ctx.dirty = false;
  hideStale();
  markNav(cur.view.nav);
  document.body.dataset.view = cur.view.name;
  document.body.dataset.ready = 'true';
}

function markNav(nav) {
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.classList.toggle('active', a.dataset.nav === nav);
  }
}

// --- live updates -----------------------------------------------------------------------

let pending = null;

function changed(change) {
  if (!current || !current.view.concerns || !current.view.concerns(change, current.ctx)) return;
  const cur = current;
  clearTimeout(pending);
  pending = setTimeout(() => {
    if (cur !== current) return;
    if (cur.ctx.dirty) showStale();
    else render(true);
  }, 250);
}

function showStale() {
  const bar = document.getElementById('stale');
  bar.replaceChildren(
    h('span', {}, t('live.stale')),
    h('button', { type: 'button', onclick: () => render(true) }, t('live.refresh')));
  bar.hidden = false;
}

function hideStale() {
  const bar = document.getElementById('stale');
  bar.hidden = true;
  bar.replaceChildren();
}

// --- the header ---------------------------------------------------------------------------

let syncState = null;

function setSyncState(state) {
  syncState = state || syncState;
  const dot = document.getElementById('sync-dot');
  if (!dot || !syncState) return;
  dot.dataset.state = syncState;
  dot.replaceChildren(h('span', { class: 'dot' }), h('span', {}, label('sync_state', syncState)));
  dot.title = t('sync.state');
}

function chrome() {
  document.documentElement.lang = lang();
  document.title = t('app.title');
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  const live = document.querySelector('[data-test="live"]');
  live.title = t('live.title');
  const btn = document.querySelector('[data-test="lang"]');
  btn.textContent = lang() === 'zh-CN' ? 'English' : '中文';
  btn.title = t('lang.switch');
  const who = document.getElementById('who');
  const id = session.identity || {};
  who.textContent = id.author ? `${fmt.who(id.author)} · ${label('role', id.role)}` : '';
  who.title = id.author || '';
  setSyncState(null);
}

async function pollSync() {
  try {
    const s = await get('/api/sync');
    setSyncState(s.state);
  } catch (e) {
    // the dot keeps its last state; the sync centre shows the error
  }
}

async function boot() {
  document.body.dataset.ready = 'false';
  let sessionError = null;
  try {
    Object.assign(session, await get('/api/session'));
  } catch (e) {
    sessionError = e;
  }
  initLang(session.lang);
  chrome();
  document.querySelector('[data-test="lang"]').addEventListener('click', () => {
    setLang(lang() === 'zh-CN' ? 'en' : 'zh-CN');
    chrome();
    if (current) render(true);
  });
  document.getElementById('view').addEventListener('input', (e) => {
    if (current && !e.target.closest('[data-live-ok]')) current.ctx.dirty = true;
  });
  window.addEventListener('hashchange', route);
  if (sessionError) {
    document.getElementById('view').replaceChildren(
      h('div', { class: 'error', 'data-test': 'error', role: 'alert' }, describe(sessionError)));
    document.body.dataset.view = 'error';
    document.body.dataset.ready = 'true';
    return;
  }
  pollSync();
  startLive({
    onDocs: (d) => changed({ type: 'docs', ids: d.ids, origin: d.origin }),
    onSync: (s) => {
      setSyncState(s.state);
      if (s.event === 'connected' && s.detail && Array.isArray(s.detail.scopes)) {
        session.scopes = s.detail.scopes; // the grant as the relay just said it
        localStorage.setItem('fieldsync.scopes', JSON.stringify(s.detail.scopes));
      }
      changed({ type: 'sync', event: s.event, state: s.state });
    },
    onReconnect: () => {
      pollSync();
      changed({ type: 'reconnect' });
    },
  });
  await route();
}

window.addEventListener('unhandledrejection', (e) => showError(e.reason || String(e)));
boot();

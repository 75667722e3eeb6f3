// Customers: search by name or phone, and a form for a new customer. Its territory is the
// text field `scope`; when the relay's grant is known a select ([data-test="scope-select"])
// of the granted territories fills it, and [data-test="scope-warning"] says when the typed
// one is not granted.

import { h, options } from './dom.js';
import { t, label } from './i18n.js';
import { get, post, withQuery } from './api.js';
import { section, empty, go, act, docHref, labelled, session, showError } from './ui.js';

const STAGES = ['to_identify', 'potential', 'opportunity', 'order_customer', 'user', 'churned'];

/**
 * The territories the relay granted this laptop: GET /api/session `scopes` (kept up to date
 * by the live feed's `connected` event), else the last connection's as this browser stored
 * them; `['*']` for all, null when not known (before the first enrolment or sync).
 */
function grantedScopes() {
  if (Array.isArray(session.scopes) && session.scopes.length) return session.scopes;
  try {
    const stored = JSON.parse(localStorage.getItem('fieldsync.scopes') || 'null');
    if (Array.isArray(stored) && stored.length) return stored;
  } catch (e) {
    // a bad stored list is ignored
  }
  return null;
}

/** Scopes the rep has used or the relay granted. */
function knownScopes(rows) {
  const set = new Set();
  for (const s of grantedScopes() || []) if (s && s !== '*') set.add(s);
  for (const r of rows) if (r.scope) set.add(r.scope);
  const last = localStorage.getItem('fieldsync.lastScope');
  if (last) set.add(last);
  return [...set].sort();
}

function resultRow(c) {
  return h('li', { class: 'item', 'data-test': 'customer-row', 'data-id': c.id },
    h('a', { class: 'main', href: docHref('customer', c.id) }, c.name,
      c.short_name && c.short_name !== c.name ? h('span', { class: 'sub' }, c.short_name) : null),
    h('span', { class: 'meta' },
      label('stage', c.stage),
      c.industry ? ` · ${c.industry}` : '',
      ` · ${c.scope}`,
      c.owner ? ` · ${c.owner}` : '',
      c.grade ? ` · ${t('customer.grade')} ${c.grade}` : ''));
}

/**
 * The territory field. When the relay's grant is known (and not `*`), a select of the granted
 * territories fills the text field `scope`, which stays the value sent (another territory can
 * still be typed: the relay then refuses the customer, and the form says so beforehand).
 */
function scopeField(scopeInput, granted) {
  if (!granted || granted.includes('*')) {
    return [labelled(t('customer.scope'), scopeInput),
      granted ? h('p', { class: 'hint' }, t('customer.scope_any')) : null];
  }
  const list = granted.slice().sort();
  const other = '';
  const pick = h('select', { name: 'scope-choice', 'data-test': 'scope-select', 'aria-label': t('customer.scope') },
    list.map((s) => h('option', { value: s }, s)),
    h('option', { value: other }, t('customer.scope_other')));
  const warn = h('p', { class: 'hint warn', 'data-test': 'scope-warning' });
  const sync = () => {
    const v = scopeInput.value.trim();
    pick.value = list.includes(v) ? v : other;
    warn.textContent = v && !list.includes(v) ? t('customer.scope_not_granted', { scope: v }) : '';
    warn.hidden = !warn.textContent;
  };
  if (!list.includes(scopeInput.value.trim())) scopeInput.value = list[0];
  pick.addEventListener('change', () => {
    if (pick.value !== other) scopeInput.value = pick.value;
    else {
      scopeInput.value = '';
      scopeInput.focus();
    }
    sync();
  });
  scopeInput.addEventListener('input', sync);
  scopeInput.setAttribute('aria-label', t('customer.scope_typed'));
  scopeInput.title = t('customer.scope_typed');
  sync();
  return [h('label', { class: 'lbl' }, h('span', {}, t('customer.scope')),
    h('span', { class: 'scope-pick' }, pick, scopeInput)), warn];
}

function newCustomerForm(rows) {
  const scopes = knownScopes(rows);
  const last = localStorage.getItem('fieldsync.lastScope') || (scopes.length === 1 ? scopes[0] : '');
  const f = {
    name: h('input', { name: 'name', required: true, autocomplete: 'off' }),
    scope: h('input', { name: 'scope', required: true, list: 'scope-list', value: last, autocomplete: 'off' }),
    phone: h('input', { name: 'phone', type: 'tel', autocomplete: 'off' }),
    industry: h('input', { name: 'industry', autocomplete: 'off' }),
    stage: h('select', { name: 'stage' }, options(STAGES, (s) => label('stage', s), 'potential')),
  };
  const save = h('button', { type: 'submit', class: 'primary', 'data-test': 'create-customer' },
    t('customer.create'));
  const form = h('form', { class: 'stack', 'data-test': 'new-customer', novalidate: true },
    labelled(t('customer.name'), f.name),
    scopeField(f.scope, grantedScopes()),
    h('datalist', { id: 'scope-list' }, scopes.map((s) => h('option', { value: s }))),
    labelled(t('customer.phone'), f.phone),
    labelled(t('customer.industry'), f.industry),
    labelled(t('customer.stage'), f.stage),
    h('div', { class: 'buttons' }, save));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const name = f.name.value.trim();
    const scope = f.scope.value.trim();
    if (!name || !scope) {
      showError(t('customer.name_scope_required'));
      return;
    }
    act(save, async () => {
      const body = {
        org: session.identity.org || '',
        scope,
        name,
        phone: f.phone.value.trim() || null,
        industry: f.industry.value.trim() || null,
        stage: f.stage.value || null,
      };
      const { id } = await post('/api/customers', body);
      localStorage.setItem('fieldsync.lastScope', scope);
      go(docHref('customer', id));
    });
  });
  return section('new-customer-card', t('customer.new'), form);
}

export const searchView = {
  name: 'customers',
  nav: 'customers',
  // Only the list is re-read on a change, so the search box keeps its text and focus.
  concerns(c, ctx) {
    if ((c.type === 'docs' || c.type === 'reconnect') && ctx.update) ctx.update();
    return false;
  },
  async render(ctx) {
    const list = h('div', { class: 'results' });
    const count = h('span', { class: 'sub' });
    let seq = 0;
    async function fill(text) {
      const mine = ++seq;
      const rows = await get(withQuery('/api/customers', { q: text.trim(), limit: 50 }));
      if (mine !== seq) return rows;
      count.textContent = t('search.count', { n: rows.length });
      list.replaceChildren(rows.length
        ? h('ul', { class: 'list' }, rows.map(resultRow))
        : empty(text.trim() ? t('search.none', { q: text.trim() }) : t('search.no_customers')));
      return rows;
    }
    const q = ctx.query.get('q') || '';
    const input = h('input', {
      type: 'search', name: 'q', 'data-test': 'search', 'data-live-ok': true, value: q,
      placeholder: t('search.placeholder'), autocomplete: 'off', autofocus: true,
    });
    let timer = null;
    const update = () => {
      const text = input.value;
      ctx.query = new URLSearchParams(text ? { q: text } : {});
      history.replaceState(null, '', text ? `#/customers?q=${encodeURIComponent(text)}` : '#/customers');
      document.body.dataset.ready = 'false';
      fill(text).then(
        () => { document.body.dataset.ready = 'true'; },
        (e) => { showError(e); document.body.dataset.ready = 'true'; });
    };
    ctx.update = update;
    input.addEventListener('input', () => {
      clearTimeout(timer);
      document.body.dataset.ready = 'false';
      timer = setTimeout(update, 200);
    });
    const rows = await fill(q);
    setTimeout(() => input.focus(), 0);
    return h('div', { class: 'customers' },
      h('h1', {}, t('search.title'), count),
      h('div', { class: 'grid2 wide-left' },
        section('results', t('search.results'),
          h('form', { class: 'searchbar', onsubmit: (e) => { e.preventDefault(); clearTimeout(timer); update(); } },
            input),
          list),
        newCustomerForm(rows)));
  },
};

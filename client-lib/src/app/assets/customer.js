// Customer 360, the pre-visit briefing: who they are, whom to meet, what is installed, what
// was said and quoted before (at which prices), what is open, and what changed since the
// last sync.

import { h } from './dom.js';
import { t, label } from './i18n.js';
import { get, post, enc } from './api.js';
import * as fmt from './format.js';
import { bpToPercent } from './money.js';
import { section, empty, act, docHref, field, labelled, badge, showError } from './ui.js';
import { attachmentsSection } from './attachments.js';

function header(c) {
  const phones = c.phones.map((p) => h('a', { href: `tel:${p.normalized}`, class: 'phone' }, fmt.phone(p.raw)));
  const addresses = c.addresses.filter((a) => !a.archived).map((a) =>
    [a.label ? `${a.label}: ` : '', [a.street, a.city, a.region, a.postcode, a.country].filter(Boolean).join(', ')]
      .join(''));
  return h('div', { class: 'card head' },
    h('h1', {}, h('span', { 'data-test': 'customer-name' }, c.name),
      badge('stage', c.stage, label('stage', c.stage)),
      c.archived ? badge('archived', 'true', t('archived')) : null),
    h('div', { class: 'fields' },
      field(t('customer.short_name'), c.short_name),
      field(t('customer.industry'), c.industry),
      field(t('customer.business_type'), c.business_type),
      field(t('customer.size'), c.size),
      field(t('customer.scope'), c.scope),
      field(t('customer.owner'), c.owner),
      field(t('customer.grade'), c.grade),
      field(t('customer.source'), c.source),
      field(t('customer.email'), c.email),
      phones.length ? field(t('customer.phones'), phones.reduce((acc, p, i) => acc.concat(i ? [' · ', p] : [p]), []), { 'data-test': 'phones' }) : null,
      addresses.length ? field(t('customer.addresses'), addresses.join(' / ')) : null,
      c.credit_limit ? field(t('customer.credit_limit'), fmt.money(c.credit_limit.amount_minor, c.credit_limit.currency)) : null,
      c.payment_terms ? field(t('customer.payment_terms'), c.payment_terms) : null,
      c.proposed_credit_limit ? field(t('customer.proposed_credit_limit'), fmt.money(c.proposed_credit_limit.amount_minor, c.proposed_credit_limit.currency)) : null,
      c.product_lines.length ? field(t('customer.product_lines'), c.product_lines.join(', ')) : null,
      c.competitors.length ? field(t('customer.competitors'), c.competitors.join(', ')) : null),
    h('div', { class: 'buttons' },
      h('a', { class: 'button primary', href: `#/customer/${enc(c.id)}/visit`, 'data-test': 'log-visit' }, t('customer.log_visit')),
      h('a', { class: 'button', href: `#/customer/${enc(c.id)}/quote`, 'data-test': 'draft-quote' }, t('customer.draft_quote'))));
}

/** A folded form; it stays open across re-renders of the page once the rep opened it. */
function addForm(ctx, name, title, form) {
  ctx.open = ctx.open || {};
  const d = h('details', { class: 'addform', 'data-form': name, open: !!ctx.open[name] }, h('summary', {}, title), form);
  d.addEventListener('toggle', () => { ctx.open[name] = d.open; });
  return d;
}

/** Sends customer edits and re-reads the page. */
function edit(ctx, id, button, edits, form) {
  return act(button, async () => {
    await post(`/api/customers/${enc(id)}/edits`, edits);
    if (form) form.reset();
    ctx.dirty = false;
    await ctx.refresh();
  });
}

function contacts(ctx, c) {
  const rows = c.contacts.slice().sort((a, b) => Number(b.active) - Number(a.active) || Number(b.is_purchaser) - Number(a.is_purchaser));
  const f = {
    name: h('input', { name: 'contact-name', required: true, autocomplete: 'off' }),
    title: h('input', { name: 'contact-title', autocomplete: 'off' }),
    phone: h('input', { name: 'contact-phone', type: 'tel', autocomplete: 'off' }),
    purchaser: h('input', { name: 'contact-purchaser', type: 'checkbox' }),
  };
  const add = h('button', { type: 'submit', 'data-test': 'add-contact' }, t('add'));
  const form = h('form', { class: 'inline-form', novalidate: true },
    labelled(t('contact.name'), f.name), labelled(t('contact.title'), f.title),
    labelled(t('contact.phone'), f.phone),
    h('label', { class: 'check' }, f.purchaser, t('contact.purchaser')), add);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (!f.name.value.trim()) return showError(t('contact.name_required'));
    edit(ctx, c.id, add, [{ add_contact: ['', {
      name: f.name.value.trim(),
      title: f.title.value.trim() || null,
      phone: f.phone.value.trim() || null,
      is_purchaser: f.purchaser.checked,
    }] }], form);
  });
  return section('contacts', t('customer.contacts'),
    rows.length
      ? h('table', { class: 'grid' },
        h('thead', {}, h('tr', {}, h('th', {}, t('contact.name')), h('th', {}, t('contact.title')),
          h('th', {}, t('contact.phone')), h('th', {}, ''))),
        h('tbody', {}, rows.map((p) => h('tr', { class: p.active ? '' : 'inactive', 'data-id': p.id },
          h('td', {}, p.name, p.is_purchaser ? h('span', { class: 'mark', 'data-test': 'purchaser', title: t('contact.purchaser') }, t('contact.purchaser_mark')) : null),
          h('td', {}, p.title || ''),
          h('td', {}, p.phone ? h('a', { href: `tel:${p.phone}` }, fmt.phone(p.phone)) : (p.email || '')),
          h('td', { class: 'small' }, p.active ? '' : t('contact.left'))))))
      : empty(t('customer.no_contacts')),
    addForm(ctx, 'contact', t('contact.add'), form));
}

function equipment(ctx, c) {
  const f = {
    model: h('input', { name: 'equipment-model', required: true, autocomplete: 'off' }),
    serial: h('input', { name: 'equipment-serial', autocomplete: 'off' }),
    installed: h('input', { name: 'equipment-installed', type: 'date' }),
    status: h('input', { name: 'equipment-status', list: 'equipment-statuses', autocomplete: 'off' }),
  };
  const add = h('button', { type: 'submit', 'data-test': 'add-equipment' }, t('add'));
  const form = h('form', { class: 'inline-form', novalidate: true },
    labelled(t('equipment.model'), f.model), labelled(t('equipment.serial'), f.serial),
    labelled(t('equipment.installed'), f.installed), labelled(t('equipment.status'), f.status),
    h('datalist', { id: 'equipment-statuses' },
      ['running', 'down', 'retired'].map((s) => h('option', { value: s }))),
    add);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (!f.model.value.trim()) return showError(t('equipment.model_required'));
    edit(ctx, c.id, add, [{ add_equipment: ['', {
      model: f.model.value.trim(),
      serial: f.serial.value.trim() || null,
      installed_at: fmt.fromDateInput(f.installed.value, false),
      status: f.status.value.trim() || null,
    }] }], form);
  });
  return section('equipment', t('customer.equipment'),
    c.equipment.length
      ? h('table', { class: 'grid' },
        h('thead', {}, h('tr', {}, h('th', {}, t('equipment.model')), h('th', {}, t('equipment.serial')),
          h('th', {}, t('equipment.installed')), h('th', {}, t('equipment.status')))),
        h('tbody', {}, c.equipment.map((e) => h('tr', { 'data-id': e.id },
          h('td', {}, e.model), h('td', { class: 'mono' }, e.serial || ''),
          h('td', {}, fmt.date(e.installed_at)),
          h('td', {}, e.status ? badge('equipment', e.status, label('equipment_status', e.status)) : '')))))
      : empty(t('customer.no_equipment')),
    addForm(ctx, 'equipment', t('equipment.add'), form));
}

function tasks(ctx, list, now) {
  return section('tasks', t('customer.tasks'),
    list.length
      ? h('ul', { class: 'list' }, list.map((task) => {
        const done = h('button', { type: 'button', class: 'small', 'data-test': 'complete-task' }, t('task.complete'));
        done.addEventListener('click', () => act(done, async () => {
          await post(`/api/visits/${enc(task.visit_id)}/edits`, [{ complete_task: task.task_id }]);
          await ctx.refresh();
        }));
        return h('li', { class: 'item', 'data-id': task.task_id },
          h('a', { class: 'main', href: docHref('visit', task.visit_id) }, task.title),
          h('span', { class: 'meta' }, task.assignee || ''),
          h('span', { class: 'side' },
            task.due ? h('span', { class: task.due < now ? 'when late' : 'when' }, t('task.due', { date: fmt.date(task.due) })) : null,
            ' ', done));
      }))
      : empty(t('customer.no_tasks')));
}

function changed(ch, d360) {
  const visits = new Map(d360.visits.map((v) => [v.id, v]));
  const title = (d) => {
    const v = d.kind === 'visit' && visits.get(d.id);
    if (v) return `${label('visit_kind', v.kind)} · ${fmt.dateTime(v.at || v.created_at)}`;
    return d.title || label('kind', d.kind);
  };
  const MAX = 8;
  const list = (all) => {
    const items = all.slice(0, MAX);
    return [h('ul', { class: 'list compact' }, items.map((d) =>
    h('li', { class: 'item', 'data-id': d.id },
      h('a', { class: 'main', href: docHref(d.kind, d.id) }, title(d)),
      h('span', { class: 'meta' }, label('kind', d.kind)),
      h('span', { class: 'side when' }, fmt.dateTime(d.at))))),
    all.length > MAX ? h('p', { class: 'hint' }, t('changed.more', { n: all.length - MAX })) : null];
  };
  const received = (ch && ch.received) || [];
  const waiting = (ch && ch.waiting) || [];
  return section('changed', t('customer.changed'),
    ch && ch.since ? h('p', { class: 'hint' }, t('changed.since', { date: fmt.dateTime(ch.since) })) : null,
    h('div', { 'data-test': 'changed-received' },
      h('h3', {}, t('changed.received')),
      received.length ? list(received) : empty(t('changed.received.none'))),
    h('div', { 'data-test': 'changed-waiting' },
      h('h3', {}, t('changed.waiting')),
      waiting.length ? list(waiting) : empty(t('changed.waiting.none'))));
}

function timeline(d) {
  const visits = new Map(d.visits.map((v) => [v.id, v]));
  const quotes = new Map(d.quotes.map((q) => [q.id, q]));
  const text = (e) => {
    const v = e.kind === 'visit' && visits.get(e.id);
    if (v) {
      return [h('strong', {}, label('visit_kind', v.kind)), ' ', badge('vstatus', v.status, label('visit_status', v.status)),
        v.satisfaction ? ` ${'★'.repeat(v.satisfaction)}` : '',
        v.notes ? h('span', { class: 'excerpt' }, v.notes) : null,
        h('span', { class: 'by' }, fmt.who(v.created_by))];
    }
    const q = e.kind === 'quote' && quotes.get(e.id);
    if (q) {
      return [h('strong', {}, t('quote.title_no', { no: q.quote_no || t('quote.no_number') })), ' ',
        badge('qstatus', q.status, label('quote_status', q.status)), ' ',
        fmt.money(q.total_minor, q.currency), h('span', { class: 'by' }, fmt.who(q.created_by))];
    }
    return e.summary;
  };
  return section('timeline', t('customer.timeline'),
    d.timeline.length
      ? h('ol', { class: 'timeline' }, d.timeline.map((e) => h('li', { 'data-test': 'timeline-item', 'data-kind': e.kind, 'data-id': e.id },
        h('span', { class: 'when' }, fmt.dateTime(e.occurred_at)),
        h('span', { class: `tag tag-${e.kind}` }, label('kind', e.kind)),
        h('a', { href: docHref(e.kind, e.id), class: 'what' }, text(e)))))
      : empty(t('customer.no_timeline')));
}

function quotes(list) {
  return section('quotes', t('customer.quotes'),
    list.length
      ? h('table', { class: 'grid' },
        h('thead', {}, h('tr', {}, h('th', {}, t('quote.no')), h('th', {}, t('quote.status')),
          h('th', { class: 'num' }, t('quote.total')), h('th', {}, t('quote.created')), h('th', {}, t('quote.follow_up')))),
        h('tbody', {}, list.map((q) => h('tr', { 'data-id': q.id },
          h('td', {}, h('a', { href: docHref('quote', q.id) }, q.quote_no || t('quote.no_number'))),
          h('td', {}, badge('qstatus', q.status, label('quote_status', q.status)), q.status_conflict ? h('span', { class: 'warn', title: t('quote.status_conflict') }, ' ⚠') : null),
          h('td', { class: 'num' }, fmt.money(q.total_minor, q.currency)),
          h('td', {}, fmt.date(q.created_at)),
          h('td', {}, fmt.date(q.follow_up_due))))))
      : empty(t('customer.no_quotes')));
}

function priceHistory(rows) {
  return section('price-history', t('customer.price_history'),
    h('p', { class: 'hint' }, t('customer.price_history.hint')),
    rows.length
      ? h('table', { class: 'grid' },
        h('thead', {}, h('tr', {}, h('th', {}, t('line.sku')), h('th', { class: 'num' }, t('line.qty')),
          h('th', { class: 'num' }, t('line.unit_price')), h('th', { class: 'num' }, t('line.discount')),
          h('th', { class: 'num' }, t('line.total')), h('th', {}, t('quote.created')), h('th', {}, t('quote.status')))),
        h('tbody', {}, rows.map((r) => h('tr', { 'data-test': 'price-row', 'data-sku': r.sku, class: r.quote_status === 'won' ? 'won' : '' },
          h('td', {}, h('a', { href: docHref('quote', r.quote_id), title: r.description || '' }, r.sku),
            r.description ? h('span', { class: 'sub block' }, r.description) : null),
          h('td', { class: 'num' }, String(r.qty)),
          h('td', { class: 'num' }, fmt.money(r.unit_price_minor, r.currency)),
          h('td', { class: 'num' }, r.discount_bp ? `${bpToPercent(r.discount_bp)}%` : ''),
          h('td', { class: 'num' }, fmt.money(r.total_minor, r.currency)),
          h('td', { class: 'nowrap' }, fmt.date(r.created_at)),
          h('td', {}, badge('qstatus', r.quote_status, label('quote_status', r.quote_status)), r.quote_no ? h('span', { class: 'sub block' }, r.quote_no) : null)))))
      : empty(t('customer.no_price_history')));
}

function notes(c) {
  if (!c.notes.length) return null;
  return section('notes', t('customer.notes'),
    h('ul', { class: 'list compact' }, c.notes.map((n) => h('li', { class: 'note' },
      h('span', { class: 'meta' }, `${fmt.who(n.author)} · ${fmt.dateTime(n.at)}`), h('p', {}, n.text)))));
}

export const customerView = {
  name: 'customer',
  nav: 'customers',
  concerns: (c) => c.type === 'docs' || c.type === 'reconnect' ||
    (c.type === 'sync' && ['uploaded', 'received', 'caught_up', 'rejected'].includes(c.event)),
  async render(ctx) {
    const [d, files] = await Promise.all([
      get(`/api/customers/${enc(ctx.params[0])}`),
      attachmentsSection(ctx, ctx.params[0], 'customer'),
    ]);
    const c = d.customer;
    const now = Date.now();
    return h('div', { class: 'c360', 'data-test': 'customer-360', 'data-id': c.id },
      header(c),
      h('div', { class: 'grid2' },
        h('div', {}, contacts(ctx, c), equipment(ctx, c), tasks(ctx, d.open_tasks, now), changed(d.changed, d), files, notes(c)),
        h('div', {}, timeline(d), quotes(d.quotes), priceHistory(d.price_history))));
  },
};

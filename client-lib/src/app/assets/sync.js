// The sync centre: where the background sync stands, what waits in each direction, changes
// the relay refused (and how to get them through), and conflicting values to settle. A
// conflict ([data-test="conflict"], its raw path in data-path) names its field for people
// ([data-test="conflict-field"]), e.g. "Contact 李伟 · Phone".

import { h } from './dom.js';
import { t, label } from './i18n.js';
import { get, post, enc } from './api.js';
import * as fmt from './format.js';
import { bpToPercent } from './money.js';
import { section, empty, act, docHref, field } from './ui.js';

// --- conflict paths for people ----------------------------------------------------------
// A conflict's path is the document's own keys (`name`, `contacts/<id>/phone`,
// `governed/credit_limit_minor`, `lines/<id>/qty`). It is shown as the field's label, with the
// item it belongs to named from the document when this laptop has it ("Contact 李伟 ·
// Phone"); the raw path stays in data-path and in the tooltip.

/** Labels of a document's own fields, by kind (text keys of i18n.js). */
const ROOT_FIELDS = {
  customer: {
    name: 'customer.name', short_name: 'customer.short_name', industry: 'customer.industry',
    business_type: 'customer.business_type', size: 'customer.size', source: 'customer.source',
    stage: 'customer.stage', email: 'customer.email', scope: 'customer.scope',
    archived: 'field.archived',
  },
  visit: {
    visit_kind: 'visit.kind', location: 'visit.location', notes: 'visit.notes', at: 'visit.at',
    satisfaction: 'visit.satisfaction', archived: 'field.archived',
  },
  quote: {
    quote_no: 'quote.no', currency: 'quote.currency', valid_until: 'quote.valid_until',
    follow_up_due: 'quote.follow_up', sent_at: 'quote.sent_at', payment_terms: 'quote.payment_terms',
    delivery_terms: 'quote.delivery_terms', customer_response: 'quote.customer_response',
    win_loss_reason: 'quote.win_loss_reason', archived: 'field.archived',
  },
};

/** Maps of role-owned or proposed values: `governed/owner`, `proposed/payment_terms`. */
const GROUP_FIELDS = {
  governed: {
    credit_limit_minor: 'customer.credit_limit', credit_limit_currency: 'customer.credit_limit',
    payment_terms: 'customer.payment_terms', grade: 'customer.grade', owner: 'customer.owner',
  },
  proposed: {
    credit_limit_minor: 'customer.proposed_credit_limit', credit_limit_currency: 'customer.proposed_credit_limit',
    payment_terms: 'customer.proposed_payment_terms',
  },
};

/**
 * Id-keyed collections: the text key naming an item ({name} filled from the document),
 * how to find the item in the document as the API returns it, and its fields' labels.
 */
const ITEMS = {
  contacts: {
    item: 'path.contact', find: (d, id) => d.customer && d.customer.contacts.find((x) => x.id === id),
    name: (x) => x.name,
    fields: { name: 'contact.name', title: 'contact.title', phone: 'contact.phone', email: 'customer.email',
      notes: 'customer.notes', is_purchaser: 'contact.purchaser', active: 'field.active' },
  },
  addresses: {
    item: 'path.address', find: (d, id) => d.customer && d.customer.addresses.find((x) => x.id === id),
    name: (x) => x.label || [x.street, x.city].filter(Boolean).join(', '),
    fields: { label: 'address.label', street: 'address.street', city: 'address.city', region: 'address.region',
      postcode: 'address.postcode', country: 'address.country', archived: 'field.archived' },
  },
  equipment: {
    item: 'path.equipment', find: (d, id) => d.customer && d.customer.equipment.find((x) => x.id === id),
    name: (x) => [x.model, x.serial].filter(Boolean).join(' '),
    fields: { model: 'equipment.model', serial: 'equipment.serial', installed_at: 'equipment.installed',
      status: 'equipment.status' },
  },
  needs: {
    item: 'path.need', find: (d, id) => d.visit && d.visit.needs.find((x) => x.id === id),
    name: (x) => x.product_line,
    fields: { product_line: 'need.product', quantity: 'need.qty', amount_minor: 'need.amount', timeframe: 'need.timeframe' },
  },
  tasks: {
    item: 'path.task', find: (d, id) => d.visit && d.visit.tasks.find((x) => x.id === id),
    name: (x) => x.title,
    fields: { title: 'task.title', due: 'task.due_label', assignee: 'task.assignee' },
  },
  lines: {
    item: 'path.line', find: (d, id) => d.quote && d.quote.lines.find((x) => x.id === id),
    name: (x) => x.sku,
    fields: { sku: 'line.sku', description: 'line.description', qty: 'line.qty', unit_price_minor: 'line.unit_price',
      discount_bp: 'line.discount', sort_key: 'line.order', archived: 'field.removed' },
  },
  attachments: {
    item: 'path.attachment', find: (d, id) => d.attachments && d.attachments.find((x) => x.attachment.id === id),
    name: (x) => x.attachment.name,
    fields: { caption: 'attach.caption', name: 'attach.file' },
  },
  notes: { item: 'path.note', find: () => null, name: () => '', fields: { text: 'path.text' } },
  comments: { item: 'path.comment', find: () => null, name: () => '', fields: { text: 'path.text' } },
};

/** Keys whose values are times, amounts or flags, shown as such. */
const TIMES = new Set(['at', 'due', 'valid_until', 'follow_up_due', 'sent_at', 'installed_at']);

/** What a path names: {label, key} with `key` the last segment (for the values). */
function describePath(path, kind, doc) {
  const parts = String(path).split('/');
  const key = parts[parts.length - 1];
  const fallback = { label: path, key };
  if (parts.length === 1) {
    const k = (ROOT_FIELDS[kind] || {})[key];
    return k ? { label: t(k), key } : fallback;
  }
  if (parts.length === 2 && GROUP_FIELDS[parts[0]]) {
    const k = GROUP_FIELDS[parts[0]][key];
    return k ? { label: t(k), key } : fallback;
  }
  const coll = ITEMS[parts[0]];
  if (parts.length === 3 && coll) {
    const found = doc ? coll.find(doc, parts[1]) : null;
    const name = found ? coll.name(found) : '';
    const item = t(coll.item, { name: name || '' }).trim();
    const k = coll.fields[key];
    return { label: `${item} · ${k ? t(k) : key}`, key };
  }
  return fallback;
}

/** A conflicting value as people read it (`key`: the field it is a value of). */
function show(value, key, doc) {
  if (value === null || value === undefined) return t('conflict.empty');
  if (typeof value === 'string') return value === '' ? t('conflict.empty') : value;
  if (typeof value === 'boolean') return value ? t('yes') : t('no');
  if (typeof value === 'number') {
    if (TIMES.has(key)) return fmt.dateTime(value);
    if (key === 'discount_bp') return `${bpToPercent(value)}%`;
    if (key === 'unit_price_minor' && doc && doc.quote) return fmt.money(value, doc.quote.currency);
  }
  return JSON.stringify(value);
}

/**
 * The documents the conflicts are in, as the API gives them (customer 360's `customer`, a
 * visit, a quote, and their attachments when a path is in them), by id; a document this
 * laptop cannot read is left out (its paths then show without item names).
 */
async function conflictDocs(list) {
  const wanted = new Map();
  for (const c of list) {
    const parts = String(c.path).split('/');
    if (parts.length === 3 && ITEMS[parts[0]]) {
      const w = wanted.get(c.doc_id) || { kind: c.kind, attachments: false };
      if (parts[0] === 'attachments') w.attachments = true;
      wanted.set(c.doc_id, w);
    }
    if (c.kind === 'quote' && parts[parts.length - 1] === 'unit_price_minor') {
      wanted.set(c.doc_id, wanted.get(c.doc_id) || { kind: c.kind, attachments: false });
    }
  }
  const docs = new Map();
  await Promise.all([...wanted].slice(0, 30).map(async ([id, w]) => {
    const d = {};
    try {
      if (w.kind === 'customer') d.customer = (await get(`/api/customers/${enc(id)}`)).customer;
      else if (w.kind === 'visit') d.visit = await get(`/api/visits/${enc(id)}`);
      else if (w.kind === 'quote') d.quote = await get(`/api/quotes/${enc(id)}`);
      if (w.attachments) d.attachments = await get(`/api/docs/${enc(id)}/attachments`);
    } catch (e) {
      // not on this laptop (or not readable): the path shows without names
    }
    docs.set(id, d);
  }));
  return docs;
}

function status(ctx, s) {
  const note = h('span', { class: 'note' });
  const now = h('button', { type: 'button', class: 'primary', 'data-test': 'sync-now' }, t('sync.now'));
  now.addEventListener('click', () => act(now, async () => {
    note.textContent = '';
    try {
      await post('/api/sync/now');
      note.textContent = t('sync.now_asked');
    } catch (e) {
      if (e.status !== 409) throw e;
      note.textContent = t('sync.now_no_relay'); // no background sync to nudge
    }
  }));
  return h('div', { class: 'card head' },
    h('h1', {}, t('sync.title'),
      h('span', { class: `syncstate state-${s.state}`, 'data-test': 'sync-state', 'data-state': s.state },
        h('span', { class: 'dot' }), label('sync_state', s.state))),
    h('p', { class: 'hint' }, t(`sync_state_hint.${s.state}`, {}, '')),
    h('div', { class: 'fields' },
      field(t('sync.relay'), s.relay || t('sync.no_relay')),
      field(t('sync.last_contact'), h('span', { 'data-test': 'last-contact', 'data-at': s.last_contact_at || '' },
        s.last_contact_at ? fmt.dateTime(s.last_contact_at) : t('never'))),
      field(t('sync.last_finished'), s.last_sync_finished_at ? fmt.dateTime(s.last_sync_finished_at) : t('never')),
      s.last_error ? field(t('sync.last_error'), h('span', { class: 'errtext', 'data-test': 'last-error' }, s.last_error)) : null),
    h('div', { class: 'buttons' }, now, note));
}

function waiting(s) {
  const o = s.outbox || {};
  const a = s.attachments || {};
  const p = s.progress || {};
  return h('div', { class: 'grid3' },
    section('outbox', t('sync.outbox'),
      h('div', { class: 'big', 'data-changes': o.changes || 0 }, String(o.changes || 0), h('span', { class: 'sub' }, t('sync.changes'))),
      h('div', { class: 'fields' },
        field(t('sync.documents'), String(o.documents || 0)),
        field(t('sync.bytes'), fmt.bytes(o.bytes)),
        o.quarantined ? field(t('sync.quarantined'), String(o.quarantined)) : null)),
    section('attachments', t('sync.attachments'),
      h('div', { class: 'fields' },
        field(t('sync.up'), t('sync.files_bytes', { n: a.upload_files || 0, size: fmt.bytes(a.upload_bytes) })),
        field(t('sync.down'), t('sync.files_bytes', { n: a.download_files || 0, size: fmt.bytes(a.download_bytes) })))),
    section('progress', t('sync.progress'),
      h('div', { class: 'fields' },
        field(t('sync.changes_sent'), String(p.changes_sent || 0)),
        field(t('sync.changes_acked'), String(p.changes_acked || 0)),
        field(t('sync.changes_rejected'), String(p.changes_rejected || 0)),
        field(t('sync.items_received'), String(p.items_received || 0)),
        field(t('sync.bytes_sent'), fmt.bytes(p.bytes_sent)),
        field(t('sync.bytes_received'), fmt.bytes(p.bytes_received)))));
}

function refused(ctx, list) {
  const result = h('span', { class: 'note' });
  const retry = (button, body) => act(button, async () => {
    const r = (await post('/api/refused/retry', body)) || {};
    result.textContent = r.stayed !== undefined
      ? t('refused.retried_stayed', { changes: r.changes || 0, stayed: r.stayed })
      : t('refused.retried', { changes: r.changes || 0, documents: r.documents || 0 });
    await ctx.refresh();
  });
  const all = h('button', { type: 'button', 'data-test': 'retry-all' }, t('refused.retry_all'));
  all.addEventListener('click', () => retry(all, {}));
  return section('refused', t('refused.title', { n: list.length }),
    list.length ? h('p', { class: 'hint' }, t('refused.how')) : null,
    list.length
      ? h('ul', { class: 'list' }, list.map((r) => {
        const b = h('button', { type: 'button', 'data-test': 'retry' }, t('refused.retry'));
        b.addEventListener('click', () => retry(b, { doc_id: r.doc_id }));
        return h('li', { class: 'item refused', 'data-test': 'refused-item', 'data-id': r.doc_id },
          r.kind
            ? h('a', { class: 'main', href: docHref(r.kind, r.doc_id) }, r.title || label('kind', r.kind),
              h('span', { class: 'sub' }, label('kind', r.kind)))
            : h('span', { class: 'main mono' }, r.title || r.doc_id),
          h('span', { class: 'meta' },
            h('span', { class: 'reason', 'data-test': 'reason' }, r.reason),
            h('span', { class: 'fix' }, t('refused.fix')),
            h('span', { class: 'mono small' }, `${fmt.dateTime(r.at)} · ${String(r.hash || '').slice(0, 12)}`)),
          h('span', { class: 'side' }, b));
      }))
      : empty(t('refused.none')),
    list.length ? h('div', { class: 'buttons' }, all, result) : result);
}

function conflicts(ctx, list, docs) {
  return section('conflicts', t('conflicts.title', { n: list.length }),
    list.length ? h('p', { class: 'hint' }, t('conflicts.how')) : null,
    list.length
      ? h('ul', { class: 'list' }, list.map((c) => {
        const doc = docs.get(c.doc_id) || null;
        const where = describePath(c.path, c.kind, doc);
        return h('li', { class: 'item conflict', 'data-test': 'conflict', 'data-path': c.path, 'data-id': c.doc_id },
        h('a', { class: 'main', href: docHref(c.kind, c.doc_id) }, c.title || label('kind', c.kind),
          h('span', { class: 'sub' }, label('kind', c.kind))),
        h('span', { class: 'meta' }, h('span', { class: 'path', 'data-test': 'conflict-field', title: c.path }, where.label)),
        h('span', { class: 'picks' }, c.values.map((v, i) => {
          const b = h('button', { type: 'button', class: i === 0 ? 'pick shown' : 'pick', 'data-test': 'pick', 'data-index': String(i), title: i === 0 ? t('conflicts.shown') : t('conflicts.keep') },
            show(v, where.key, doc));
          b.addEventListener('click', () => act(b, async () => {
            await post('/api/conflicts/resolve', { doc_id: c.doc_id, path: c.path, value: v });
            await ctx.refresh();
          }));
          return b;
        })));
      }))
      : empty(t('conflicts.none')));
}

export const syncView = {
  name: 'sync',
  nav: 'sync',
  concerns: () => true,
  async render(ctx) {
    const s = await get('/api/sync');
    const docs = await conflictDocs(s.conflicts || []);
    return h('div', { class: 'sync' },
      status(ctx, s),
      waiting(s),
      h('div', { class: 'grid2' }, refused(ctx, s.refused || []), conflicts(ctx, s.conflicts || [], docs)));
  },
};

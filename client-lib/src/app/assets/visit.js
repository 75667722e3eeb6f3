// Log a visit (#/customer/ID/visit) and show one (#/visit/ID).
// The form's photos and files (input[type=file][name="photos"]) are attached to the visit
// once it is made ([data-test="uploads"] shows each file's progress), and each line of the
// competitors field goes on the customer's competitor list; if one of these fails the visit
// stays saved ([data-test="visit-saved-but"]) and the save button retries only what failed.
// The visit view lists the visit's attachments (attachments.js).

import { h, options } from './dom.js';
import { t, label } from './i18n.js';
import { get, post, enc } from './api.js';
import * as fmt from './format.js';
import { section, empty, act, go, docHref, field, labelled, badge, showError, describe } from './ui.js';
import { ACCEPT, MAX_UPLOAD, uploadFiles, attachmentsSection } from './attachments.js';

export const VISIT_KINDS = ['sales_call', 'return_visit', 'quote_follow_up', 'service_repair',
  'complaint_intake', 'care', 'other'];

/** A list of rows that grows with an "add" button; starts with one empty row. */
function rows(makeRow, addTest, addLabel) {
  const body = h('div', { class: 'rows' });
  const addRow = () => {
    const row = makeRow();
    const remove = h('button', { type: 'button', class: 'link remove', title: t('remove'), 'aria-label': t('remove') }, '×');
    remove.addEventListener('click', () => row.remove());
    row.appendChild(remove);
    body.appendChild(row);
    return row;
  };
  addRow();
  const add = h('button', { type: 'button', class: 'small', 'data-test': addTest }, addLabel);
  add.addEventListener('click', () => {
    const row = addRow();
    const first = row.querySelector('input');
    if (first) first.focus();
  });
  return { node: h('div', {}, body, add), body };
}

function needRow() {
  return h('div', { class: 'row', 'data-test': 'need' },
    labelled(t('need.product'), h('input', { name: 'need-product', autocomplete: 'off', list: 'product-lines' })),
    labelled(t('need.qty'), h('input', { name: 'need-qty', inputmode: 'numeric', class: 'narrow', autocomplete: 'off' })));
}

function taskRow() {
  return h('div', { class: 'row', 'data-test': 'task' },
    labelled(t('task.title'), h('input', { name: 'task-title', autocomplete: 'off' }), 'lbl grow'),
    labelled(t('task.due_label'), h('input', { name: 'task-due', type: 'date' })));
}

/** Whole non-negative number from text (full-width digits allowed), null when empty. */
function wholeNumber(text) {
  const s = String(text || '').trim().replace(/[\uFF10-\uFF19]/g, (c) => String.fromCharCode(c.charCodeAt(0) - 0xFF10 + 48));
  if (s === '') return null;
  if (!/^\d{1,15}$/.test(s)) throw new Error(t('need.qty_invalid', { value: s }));
  return Number(s);
}

/** The competitors typed in the visit form, one a line, for the customer's competitor list. */
function competitorLines(text) {
  const seen = new Set();
  for (const line of String(text || '').split(/\r?\n/)) {
    const c = line.trim();
    if (c) seen.add(c);
  }
  return [...seen];
}

/** The photos and files picker of the visit form: the input and what was chosen. */
function photosPicker() {
  const input = h('input', { type: 'file', name: 'photos', multiple: true, accept: ACCEPT });
  const chosen = h('ul', { class: 'chosen', 'data-test': 'photos-chosen' });
  let urls = [];
  const show = () => {
    for (const u of urls) URL.revokeObjectURL(u);
    urls = [];
    const files = [...(input.files || [])];
    chosen.replaceChildren(...files.map((f) => {
      let thumb = h('span', { class: 'thumb filetype' }, f.type === 'application/pdf' ? 'PDF' : (f.name.split('.').pop() || '').toUpperCase().slice(0, 5));
      if (f.type.startsWith('image/')) {
        const u = URL.createObjectURL(f);
        urls.push(u);
        thumb = h('img', { class: 'thumb', src: u, alt: f.name });
      }
      return h('li', { class: f.size > MAX_UPLOAD ? 'too-big' : '' }, thumb,
        h('span', { class: 'cname' }, f.name),
        h('span', { class: 'meta' }, fmt.bytes(f.size)),
        f.size > MAX_UPLOAD ? h('span', { class: 'errtext small' }, t('upload.too_big', { max: fmt.bytes(MAX_UPLOAD), kind: 'visit' })) : null);
    }));
  };
  input.addEventListener('change', show);
  const progress = h('div', { class: 'progress', 'data-test': 'uploads' });
  const node = h('fieldset', { class: 'photos' },
    h('legend', {}, t('visit.photos')),
    h('label', { class: 'lbl' }, h('span', {}, t('visit.photos_hint')), input),
    chosen, progress);
  return { node, input, progress, files: () => [...(input.files || [])] };
}

/** The body of POST /api/visits from the form, or throws an Error with a message for people. */
function collect(form, customerId) {
  const v = (name) => (form.elements[name] ? form.elements[name].value : '');
  const edits = [];
  for (const box of form.querySelectorAll('input[name="contact"]:checked')) {
    edits.push({ add_contact_met: box.value });
  }
  for (const row of form.querySelectorAll('[data-test="need"]')) {
    const product = row.querySelector('[name="need-product"]').value.trim();
    const qty = wholeNumber(row.querySelector('[name="need-qty"]').value);
    if (!product && qty === null) continue;
    if (!product) throw new Error(t('need.product_required'));
    edits.push({ add_need: ['', { product_line: product, quantity: qty, amount_minor: null, timeframe: null }] });
  }
  const satisfaction = v('satisfaction');
  if (satisfaction) edits.push({ set_satisfaction: Number(satisfaction) });
  for (const row of form.querySelectorAll('[data-test="task"]')) {
    const title = row.querySelector('[name="task-title"]').value.trim();
    const due = fmt.fromDateInput(row.querySelector('[name="task-due"]').value);
    if (!title && due === null) continue;
    if (!title) throw new Error(t('task.title_required'));
    edits.push({ add_task: ['', { title, due, assignee: null }] });
  }
  const competitors = v('competitors').trim();
  if (competitors) edits.push({ add_comment: ['', `Competitor: ${competitors}`] });
  const at = fmt.fromDateTimeInput(v('at'));
  return {
    visit: {
      customer_id: customerId,
      kind: v('kind') || 'sales_call',
      notes: v('notes').trim() || null,
      status: v('status') === 'planned' ? 'planned' : 'done',
      at: at === null ? Date.now() : at,
      location: v('location').trim() || null,
    },
    edits,
  };
}

export const visitFormView = {
  name: 'visit-form',
  nav: 'customers',
  // No live re-render: the rep is typing.
  async render(ctx) {
    const d = await get(`/api/customers/${enc(ctx.params[0])}`);
    const c = d.customer;
    const kind = VISIT_KINDS.includes(ctx.query.get('kind')) ? ctx.query.get('kind') : 'sales_call';
    const status = ctx.query.get('status') === 'planned' ? 'planned' : 'done';
    const contacts = c.contacts.filter((p) => p.active);
    const needs = rows(needRow, 'add-need', t('need.add'));
    const tasks = rows(taskRow, 'add-task', t('task.add'));
    const addresses = c.addresses.filter((a) => !a.archived)
      .map((a) => [a.street, a.city].filter(Boolean).join(', ')).filter(Boolean);
    const save = h('button', { type: 'submit', class: 'primary', 'data-test': 'save-visit' }, t('visit.save'));
    const photos = photosPicker();
    const after = h('div', { class: 'saved-but', 'data-test': 'visit-saved-but', role: 'status', hidden: true });
    const form = h('form', { class: 'visit-form', novalidate: true },
      h('div', { class: 'row' },
        labelled(t('visit.kind'), h('select', { name: 'kind' }, options(VISIT_KINDS, (k) => label('visit_kind', k), kind))),
        labelled(t('visit.status'), h('select', { name: 'status' }, options(['done', 'planned'], (s) => label('visit_status', s), status))),
        labelled(t('visit.at'), h('input', { name: 'at', type: 'datetime-local', value: fmt.toDateTimeInput(Date.now()) })),
        labelled(t('visit.location'), h('input', { name: 'location', list: 'addresses', autocomplete: 'off' }), 'lbl grow'),
        h('datalist', { id: 'addresses' }, addresses.map((a) => h('option', { value: a })))),
      h('fieldset', {},
        h('legend', {}, t('visit.contacts_met')),
        contacts.length
          ? h('div', { class: 'checks' }, contacts.map((p) => h('label', { class: 'check' },
            h('input', { type: 'checkbox', name: 'contact', value: p.id }),
            p.name, p.title ? h('span', { class: 'sub' }, p.title) : null,
            p.is_purchaser ? h('span', { class: 'mark' }, t('contact.purchaser_mark')) : null)))
          : empty(t('customer.no_contacts'))),
      h('fieldset', {}, h('legend', {}, t('visit.needs')), needs.node,
        h('datalist', { id: 'product-lines' }, c.product_lines.map((p) => h('option', { value: p })))),
      h('div', { class: 'row' },
        labelled(t('visit.competitors'), h('textarea', { name: 'competitors', rows: '2', placeholder: t('visit.competitors_hint') }), 'lbl grow'),
        labelled(t('visit.satisfaction'), h('select', { name: 'satisfaction' },
          h('option', { value: '' }, '—'),
          [5, 4, 3, 2, 1].map((n) => h('option', { value: String(n) }, `${n} · ${t(`satisfaction.${n}`)}`))))),
      h('fieldset', {}, h('legend', {}, t('visit.tasks')), tasks.node),
      labelled(t('visit.notes'), h('textarea', { name: 'notes', rows: '5' }), 'lbl block'),
      photos.node,
      after,
      h('div', { class: 'buttons' }, save,
        h('a', { class: 'button', href: docHref('customer', c.id) }, t('cancel'))));
    // The visit is made once; what follows it (the competitors on the customer, the files)
    // is tried again by the same button if it failed, without a second visit.
    let visitId = null;
    let competitorsDone = false;
    const uploaded = new Map();
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      let body = null;
      if (!visitId) {
        try {
          body = collect(form, c.id);
        } catch (err) {
          showError(err.message);
          return;
        }
        const big = photos.files().find((f) => f.size > MAX_UPLOAD);
        if (big) {
          showError(`${big.name}: ${t('upload.too_big', { max: fmt.bytes(MAX_UPLOAD), kind: 'visit' })}`);
          return;
        }
      }
      act(save, async () => {
        document.body.dataset.ready = 'false';
        if (!visitId) {
          const made = await post('/api/visits', body);
          visitId = made.id;
          // From here on the form is the saved visit's: its fields no longer change it.
          for (const el of form.querySelectorAll('input, select, textarea, .rows button, [data-test="add-need"], [data-test="add-task"]')) {
            if (el !== photos.input) el.disabled = true;
          }
        }
        const problems = [];
        const competitors = competitorLines(form.elements.competitors.value);
        if (!competitorsDone && competitors.length) {
          try {
            await post(`/api/customers/${enc(c.id)}/edits`, competitors.map((x) => ({ add_competitor: x })));
            competitorsDone = true;
          } catch (err) {
            problems.push(t('visit.competitors_failed', { error: describe(err) }));
          }
        }
        const files = photos.files();
        if (files.length && (await uploadFiles(visitId, files, photos.progress, uploaded, 'visit'))) {
          problems.push(t('visit.files_failed'));
        }
        if (!problems.length) {
          ctx.dirty = false;
          go(docHref('customer', c.id));
          return;
        }
        after.hidden = false;
        after.replaceChildren(
          h('p', {}, t('visit.saved_but')),
          h('ul', {}, problems.map((p) => h('li', { class: 'errtext' }, p))),
          h('p', {}, h('a', { href: docHref('visit', visitId), 'data-test': 'open-saved-visit' }, t('visit.open_saved')),
            ' · ', h('a', { href: docHref('customer', c.id) }, c.name)));
        save.textContent = t('visit.retry');
        document.body.dataset.ready = 'true';
      });
    });
    return h('div', { class: 'visit-new' },
      h('h1', {}, t('visit.new'), h('a', { class: 'sub', href: docHref('customer', c.id) }, c.name)),
      h('div', { class: 'card' }, form));
  },
};

export const visitView = {
  name: 'visit',
  nav: 'customers',
  concerns: (c, ctx) => c.type === 'reconnect' || (c.type === 'docs' && c.ids.includes(ctx.params[0])),
  async render(ctx) {
    const v = await get(`/api/visits/${enc(ctx.params[0])}`);
    const files = attachmentsSection(ctx, v.id, 'visit');
    let customer = null;
    try {
      customer = (await get(`/api/customers/${enc(v.customer_id)}`)).customer;
    } catch (e) {
      customer = null; // not in this replica: the visit still shows
    }
    const attachments = await files;
    const contactName = (id) => {
      const p = customer && customer.contacts.find((x) => x.id === id);
      return p ? (p.title ? `${p.name} (${p.title})` : p.name) : id;
    };
    const send = (button, edits) => act(button, async () => {
      await post(`/api/visits/${enc(v.id)}/edits`, edits);
      await ctx.refresh();
    });
    const buttons = [];
    if (v.status === 'planned') {
      const done = h('button', { type: 'button', class: 'primary', 'data-test': 'mark-done' }, t('visit.mark_done'));
      done.addEventListener('click', () => send(done, [{ mark_status: 'done' }]));
      const cancel = h('button', { type: 'button', 'data-test': 'mark-cancelled' }, t('visit.mark_cancelled'));
      cancel.addEventListener('click', () => send(cancel, [{ mark_status: 'cancelled' }]));
      buttons.push(done, cancel);
    }
    const tasks = v.tasks.map((task) => {
      const btn = task.done_at ? null
        : h('button', { type: 'button', class: 'small', 'data-test': 'complete-task' }, t('task.complete'));
      if (btn) btn.addEventListener('click', () => send(btn, [{ complete_task: task.id }]));
      return h('li', { class: task.done_at ? 'item done' : 'item', 'data-test': 'task', 'data-id': task.id },
        h('span', { class: 'main' }, task.title),
        h('span', { class: 'meta' },
          task.due ? t('task.due', { date: fmt.date(task.due) }) : '',
          task.assignee ? ` · ${task.assignee}` : '',
          task.done_at ? ` · ${t('task.done_by', { who: fmt.who(task.done_by), date: fmt.dateTime(task.done_at) })}` : ''),
        h('span', { class: 'side' }, btn));
    });
    const comment = h('textarea', { name: 'comment', rows: '2' });
    const addComment = h('button', { type: 'submit', 'data-test': 'add-comment' }, t('comment.add'));
    const commentForm = h('form', { class: 'inline-form' }, labelled(t('comment.label'), comment, 'lbl grow'), addComment);
    commentForm.addEventListener('submit', (e) => {
      e.preventDefault();
      const text = comment.value.trim();
      if (text) send(addComment, [{ add_comment: ['', text] }]);
    });
    return h('div', { class: 'visit', 'data-test': 'visit', 'data-id': v.id },
      h('div', { class: 'card head' },
        h('h1', {}, label('visit_kind', v.visit_kind),
          h('span', { 'data-test': 'visit-status', 'data-status': v.status }, badge('vstatus', v.status, label('visit_status', v.status)))),
        h('div', { class: 'fields' },
          field(t('visit.customer'), h('a', { href: docHref('customer', v.customer_id) }, customer ? customer.name : t('customer.unknown'))),
          field(t('visit.at'), fmt.dateTime(v.at)),
          field(t('visit.location'), v.location),
          field(t('visit.satisfaction'), v.satisfaction ? `${'★'.repeat(v.satisfaction)}${'☆'.repeat(Math.max(0, 5 - v.satisfaction))} ${v.satisfaction}/5` : null),
          field(t('visit.contacts_met'), v.contacts_met.length ? v.contacts_met.map(contactName).join(', ') : null),
          field(t('visit.logged_by'), `${fmt.who(v.created_by)} · ${fmt.dateTime(v.created_at)}`)),
        buttons.length ? h('div', { class: 'buttons' }, buttons) : null),
      h('div', { class: 'grid2' },
        h('div', {},
          section('visit-notes', t('visit.notes'), v.notes ? h('p', { class: 'prose' }, v.notes) : empty()),
          attachments,
          section('needs', t('visit.needs'), v.needs.length
            ? h('table', { class: 'grid' },
              h('thead', {}, h('tr', {}, h('th', {}, t('need.product')), h('th', { class: 'num' }, t('need.qty')), h('th', {}, t('need.timeframe')))),
              h('tbody', {}, v.needs.map((n) => h('tr', {},
                h('td', {}, n.product_line), h('td', { class: 'num' }, n.quantity === null || n.quantity === undefined ? '' : String(n.quantity)),
                h('td', {}, n.timeframe || '')))))
            : empty())),
        h('div', {},
          section('tasks', t('visit.tasks'), tasks.length ? h('ul', { class: 'list' }, tasks) : empty()),
          section('comments', t('visit.comments'),
            v.comments.length
              ? h('ul', { class: 'list compact' }, v.comments.map((n) => h('li', { class: 'note' },
                h('span', { class: 'meta' }, `${fmt.who(n.author)} · ${fmt.dateTime(n.at)}`), h('p', {}, n.text))))
              : empty(),
            commentForm))));
  },
};

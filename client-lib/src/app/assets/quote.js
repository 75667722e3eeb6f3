// Draft a quote (#/customer/ID/quote) and show one (#/quote/ID) with the steps its status and
// the rep's role allow. The draft's total is computed here exactly as the model computes it
// (money.js lineTotalMinor), from prices parsed as decimal text, never floats. A draft's lines
// are edited on the quote view itself (linesSection: edit-line, remove-line, add-line), the
// total then coming from the server's answer; the view lists the quote's attachments.

import { h } from './dom.js';
import { t, label } from './i18n.js';
import { get, post, enc } from './api.js';
import * as fmt from './format.js';
import { exponent, parseDecimal, parseMoney, parsePercentToBp, lineTotalMinor, bpToPercent, minorToText } from './money.js';
import { section, empty, act, go, docHref, field, labelled, badge, roleAtLeast, session, showError, clearError } from './ui.js';
import { attachmentsSection } from './attachments.js';

const CURRENCIES = ['CNY', 'USD', 'EUR', 'HKD', 'JPY', 'KRW', 'VND', 'SGD', 'AUD', 'GBP'];

/**
 * A suggested quote number, unique while offline: the end of the device id (its start is a
 * UUIDv7 timestamp, the same on every laptop) and the local date and minute,
 * e.g. 9B3F-261208-1430. The rep may type another.
 */
function suggestNumber() {
  const prefix = String(session.device_id || '').replace(/[^0-9a-z]/gi, '').slice(-4).toUpperCase() || 'Q';
  const [date, time] = fmt.dateTime(Date.now()).split(' ');
  return `${prefix}-${date.replace(/-/g, '').slice(2)}-${time.replace(':', '')}`;
}

function lineRow() {
  const cell = (name, attrs) => h('td', {}, h('input', Object.assign({ name, autocomplete: 'off' }, attrs)));
  const remove = h('button', { type: 'button', class: 'link remove', title: t('remove'), 'aria-label': t('remove') }, '×');
  const row = h('tr', { 'data-test': 'line' },
    cell('sku', { 'aria-label': t('line.sku'), class: 'sku' }),
    cell('description', { 'aria-label': t('line.description') }),
    cell('qty', { 'aria-label': t('line.qty'), value: '1', inputmode: 'numeric', class: 'num narrow' }),
    cell('price', { 'aria-label': t('line.unit_price'), inputmode: 'decimal', class: 'num', placeholder: '0.00' }),
    cell('discount', { 'aria-label': t('line.discount_pct'), inputmode: 'decimal', class: 'num narrow', placeholder: '0' }),
    h('td', { class: 'num', 'data-test': 'line-total' }),
    h('td', {}, remove));
  remove.addEventListener('click', () => {
    const form = row.closest('form');
    row.remove();
    if (form) form.dispatchEvent(new Event('input'));
  });
  return row;
}

/**
 * Reads one line row: {empty} for a row with nothing typed, else {sku, description, qty,
 * price, bp, total} (BigInt amounts) or {error} naming what is wrong. Marks bad inputs.
 * A row without a `sku` input (a saved line being edited) reads its SKU as '' and is never
 * {empty} when `always` is set.
 */
function readLine(row, currency, always) {
  const input = (n) => row.querySelector(`[name="${n}"]`);
  const val = (n) => (input(n) ? input(n).value.trim() : '');
  for (const n of ['qty', 'price', 'discount']) {
    input(n).classList.remove('invalid');
    input(n).removeAttribute('title');
  }
  const sku = val('sku');
  const description = val('description');
  if (!always && !sku && !description && !val('price') && !val('discount') && (val('qty') === '' || val('qty') === '1')) {
    return { empty: true };
  }
  const bad = (n, msg) => {
    input(n).classList.add('invalid');
    input(n).title = msg;
    return { error: msg };
  };
  let qty;
  try {
    qty = val('qty') === '' ? 1n : parseDecimal(val('qty'), 0); // whole units
  } catch (e) {
    return bad('qty', t('line.qty_invalid'));
  }
  let price;
  try {
    price = parseMoney(val('price'), currency);
  } catch (e) {
    return bad('price', e.message === 'decimals'
      ? t('line.price_decimals', { currency, n: exponent(currency) })
      : t('line.price_invalid'));
  }
  let bp;
  try {
    bp = parsePercentToBp(val('discount'));
  } catch (e) {
    return bad('discount', t('line.discount_invalid'));
  }
  const p = price === null ? 0n : price;
  return { sku, description, qty, price: p, bp, total: lineTotalMinor(qty, p, bp) };
}

export const quoteFormView = {
  name: 'quote-form',
  nav: 'customers',
  async render(ctx) {
    const d = await get(`/api/customers/${enc(ctx.params[0])}`);
    const c = d.customer;
    const currency = h('input', { name: 'currency', value: 'CNY', list: 'currencies', class: 'narrow upper', maxlength: '3', autocomplete: 'off' });
    const quoteNo = h('input', { name: 'quote_no', value: suggestNumber(), autocomplete: 'off' });
    const validUntil = h('input', { name: 'valid_until', type: 'date' });
    const lines = h('tbody', {}, lineRow());
    const total = h('strong', { 'data-test': 'quote-total' });
    const addLine = h('button', { type: 'button', class: 'small', 'data-test': 'add-line' }, t('line.add'));
    const save = h('button', { type: 'submit', class: 'primary', 'data-test': 'save-quote' }, t('quote.save_draft'));
    const form = h('form', { class: 'quote-form', novalidate: true },
      h('div', { class: 'row' },
        labelled(t('quote.currency'), currency),
        h('datalist', { id: 'currencies' }, CURRENCIES.map((x) => h('option', { value: x }))),
        labelled(t('quote.no'), quoteNo),
        labelled(t('quote.valid_until'), validUntil)),
      h('table', { class: 'grid lines' },
        h('thead', {}, h('tr', {},
          h('th', {}, t('line.sku')), h('th', {}, t('line.description')), h('th', { class: 'num' }, t('line.qty')),
          h('th', { class: 'num' }, t('line.unit_price')), h('th', { class: 'num' }, t('line.discount_pct')),
          h('th', { class: 'num' }, t('line.total')), h('th', {}, ''))),
        lines,
        h('tfoot', {}, h('tr', {},
          h('td', { colspan: '5' }, addLine),
          h('td', { class: 'num total' }, total), h('td', {})))),
      h('p', { class: 'hint' }, t('quote.total_hint')),
      h('div', { class: 'buttons' }, save, h('a', { class: 'button', href: docHref('customer', c.id) }, t('cancel'))));

    const cur = () => currency.value.trim().toUpperCase();
    function recompute() {
      const code = cur();
      currency.classList.toggle('invalid', !/^[A-Z]{3}$/.test(code));
      let sum = 0n;
      let ok = true;
      for (const row of lines.querySelectorAll('[data-test="line"]')) {
        const l = readLine(row, code);
        const cell = row.querySelector('[data-test="line-total"]');
        if (l.error) {
          ok = false;
          cell.textContent = '—';
        } else if (l.empty) {
          cell.textContent = '';
        } else {
          sum += l.total;
          cell.textContent = fmt.money(l.total, code);
        }
      }
      total.textContent = fmt.money(sum, code);
      total.classList.toggle('invalid', !ok);
    }
    form.addEventListener('input', recompute);
    addLine.addEventListener('click', () => {
      const row = lineRow();
      lines.appendChild(row);
      row.querySelector('[name="sku"]').focus();
      recompute();
    });
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      recompute();
      const code = cur();
      if (!/^[A-Z]{3}$/.test(code)) return showError(t('quote.currency_invalid'));
      const edits = [];
      let i = 0;
      for (const row of lines.querySelectorAll('[data-test="line"]')) {
        const l = readLine(row, code);
        if (l.empty) continue;
        if (l.error) return showError(l.error);
        if (!l.sku) return showError(t('line.sku_required'));
        i += 1;
        edits.push({ add_line: ['', {
          sku: l.sku,
          description: l.description || null,
          qty: Number(l.qty),
          unit_price_minor: Number(l.price),
          discount_bp: Number(l.bp),
          sort_key: String(i).padStart(4, '0'),
        }] });
      }
      const body = {
        quote: {
          customer_id: c.id,
          currency: code,
          quote_no: quoteNo.value.trim() || null,
          valid_until: fmt.fromDateInput(validUntil.value),
        },
        edits,
      };
      return act(save, async () => {
        document.body.dataset.ready = 'false';
        const { id } = await post('/api/quotes', body);
        ctx.dirty = false;
        go(docHref('quote', id));
      });
    });
    recompute();
    return h('div', { class: 'quote-new' },
      h('h1', {}, t('quote.new'), h('a', { class: 'sub', href: docHref('customer', c.id) }, c.name)),
      h('div', { class: 'card' }, form));
  },
};

/** The buttons a quote in `status` offers to this role. */
function actions(q, send) {
  const out = [];
  const button = (test, text, edit, primary, needsReason) => {
    const b = h('button', { type: 'button', class: primary ? 'primary' : '', 'data-test': test }, text);
    b.addEventListener('click', () => {
      const reason = document.querySelector('[name="reason"]');
      const r = reason && reason.value.trim() ? reason.value.trim() : null;
      if (needsReason && !r) {
        showError(t('quote.reason_required'));
        if (reason) reason.focus();
        return;
      }
      send(b, [edit(r)]);
    });
    return b;
  };
  const reasonInput = () => labelled(t('quote.reason'), h('input', { name: 'reason', autocomplete: 'off' }));
  switch (q.status) {
    case 'draft':
      out.push(button('submit-quote', t('quote.submit'), () => 'submit', true));
      break;
    case 'submitted':
      if (roleAtLeast('manager')) {
        out.push(reasonInput(),
          button('approve-quote', t('quote.approve'), (r) => ({ approve: r }), true),
          button('reject-quote', t('quote.reject'), (r) => ({ reject: r }), false, true));
      } else {
        out.push(h('p', { class: 'hint' }, t('quote.waiting_approval')));
      }
      break;
    case 'approved':
      out.push(button('send-quote', t('quote.send'), () => 'send', true));
      break;
    case 'sent':
      out.push(reasonInput(),
        button('win-quote', t('quote.win'), () => 'win', true),
        button('lose-quote', t('quote.lose'), (r) => ({ lose: r })));
      break;
    case 'rejected':
      out.push(h('p', { class: 'hint' }, t('quote.rejected_hint')));
      break;
    default:
      break;
  }
  return out;
}

/** Statuses whose lines the rep edits here (a change to a rejected quote starts a new draft revision). */
const EDITABLE = ['draft', 'rejected'];

/** A sort key after every line's, so an added line comes last ('0002' → '0003'). */
function nextSortKey(lines) {
  const max = lines.map((l) => String(l.sort_key || '')).sort().pop();
  if (!max) return '0001';
  if (/^\d{1,15}$/.test(max)) return String(Number(max) + 1).padStart(max.length, '0');
  return `${max}1`;
}

/**
 * The lines of a quote. In a draft (or a rejected quote) each line can be edited in place
 * ([data-test="edit-line"]: qty, unit price, discount, description; [data-test="save-line"])
 * or removed ([data-test="remove-line"]), and a line added ([data-test="add-line"], then a
 * [data-test="new-line"] row). `apply(button, edits)` sends QuoteEdits and shows the answer.
 * Which row is open lives in ctx.lineEdit (a line id, or 'new'), so a live re-render keeps it.
 */
function linesSection(ctx, q, apply) {
  const editable = EDITABLE.includes(q.status);
  const active = q.lines.filter((l) => !l.archived);
  const removed = q.lines.length - active.length;
  const cur = q.currency;
  let node = null;
  const redraw = (focus) => {
    const next = build();
    node.replaceWith(next);
    node = next;
    const first = focus && node.querySelector('[data-editing] input');
    if (first) first.focus();
  };
  const open = (id) => {
    clearError();
    ctx.lineEdit = id;
    redraw(true);
  };
  const close = () => {
    ctx.lineEdit = null;
    ctx.dirty = false;
    clearError();
    redraw(false);
  };

  const input = (name, value, attrs) => h('input', Object.assign({ name, value: value === null || value === undefined ? '' : String(value), autocomplete: 'off' }, attrs));
  const keys = (row, save) => row.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && e.target.tagName === 'INPUT') {
      e.preventDefault();
      save.click();
    } else if (e.key === 'Escape') {
      e.preventDefault();
      close();
    }
  });
  const live = (row) => {
    const cell = row.querySelector('[data-test="line-total"]');
    const update = () => {
      const l = readLine(row, cur, true);
      cell.textContent = l.error ? '—' : fmt.money(l.total, cur);
    };
    row.addEventListener('input', update);
    update();
  };

  function shownRow(l) {
    const cells = [
      h('td', {}, l.sku), h('td', {}, l.description || ''), h('td', { class: 'num' }, String(l.qty)),
      h('td', { class: 'num' }, fmt.money(l.unit_price_minor, cur)),
      h('td', { class: 'num' }, l.discount_bp ? `${bpToPercent(l.discount_bp)}%` : ''),
      h('td', { class: 'num' }, fmt.money(lineTotalMinor(l.qty, l.unit_price_minor, l.discount_bp), cur))];
    if (editable) {
      const edit = h('button', { type: 'button', class: 'small', 'data-test': 'edit-line', title: t('line.edit') }, t('line.edit'));
      edit.addEventListener('click', () => open(l.id));
      const remove = h('button', { type: 'button', class: 'link remove', 'data-test': 'remove-line', title: t('line.remove'), 'aria-label': t('line.remove') }, '×');
      remove.addEventListener('click', () => apply(remove, [{ remove_line: l.id }]));
      cells.push(h('td', { class: 'lineacts' }, edit, remove));
    }
    return h('tr', { 'data-test': 'line', 'data-id': l.id }, cells);
  }

  function editRow(l) {
    const save = h('button', { type: 'button', class: 'small primary', 'data-test': 'save-line' }, t('line.save'));
    const cancel = h('button', { type: 'button', class: 'small', 'data-test': 'cancel-line' }, t('cancel'));
    const row = h('tr', { 'data-test': 'line', 'data-id': l.id, 'data-editing': 'true', class: 'editing' },
      h('td', {}, l.sku),
      h('td', {}, input('description', l.description, { 'aria-label': t('line.description') })),
      h('td', {}, input('qty', l.qty, { 'aria-label': t('line.qty'), inputmode: 'numeric', class: 'num narrow' })),
      h('td', {}, input('price', minorToText(l.unit_price_minor, cur), { 'aria-label': t('line.unit_price'), inputmode: 'decimal', class: 'num' })),
      h('td', {}, input('discount', l.discount_bp ? bpToPercent(l.discount_bp) : '', { 'aria-label': t('line.discount_pct'), inputmode: 'decimal', class: 'num narrow', placeholder: '0' })),
      h('td', { class: 'num', 'data-test': 'line-total' }),
      h('td', { class: 'lineacts' }, save, cancel));
    save.addEventListener('click', () => {
      const r = readLine(row, cur, true);
      if (r.error) return showError(r.error);
      // Only what changed, so a concurrent edit of another field of the line is kept.
      const change = {};
      if (r.qty !== BigInt(l.qty)) change.qty = Number(r.qty);
      if (r.price !== BigInt(l.unit_price_minor)) change.unit_price_minor = Number(r.price);
      if (r.bp !== BigInt(l.discount_bp)) change.discount_bp = Number(r.bp);
      if (r.description !== (l.description || '')) change.description = r.description;
      if (!Object.keys(change).length) return close();
      return apply(save, [{ update_line: [l.id, change] }]);
    });
    cancel.addEventListener('click', close);
    keys(row, save);
    live(row);
    return row;
  }

  function newRow() {
    const save = h('button', { type: 'button', class: 'small primary', 'data-test': 'save-line' }, t('line.save'));
    const cancel = h('button', { type: 'button', class: 'small', 'data-test': 'cancel-line' }, t('cancel'));
    const row = h('tr', { 'data-test': 'new-line', 'data-editing': 'true', class: 'editing' },
      h('td', {}, input('sku', '', { 'aria-label': t('line.sku'), class: 'sku' })),
      h('td', {}, input('description', '', { 'aria-label': t('line.description') })),
      h('td', {}, input('qty', '1', { 'aria-label': t('line.qty'), inputmode: 'numeric', class: 'num narrow' })),
      h('td', {}, input('price', '', { 'aria-label': t('line.unit_price'), inputmode: 'decimal', class: 'num', placeholder: '0.00' })),
      h('td', {}, input('discount', '', { 'aria-label': t('line.discount_pct'), inputmode: 'decimal', class: 'num narrow', placeholder: '0' })),
      h('td', { class: 'num', 'data-test': 'line-total' }),
      h('td', { class: 'lineacts' }, save, cancel));
    save.addEventListener('click', () => {
      const r = readLine(row, cur, true);
      if (r.error) return showError(r.error);
      if (!r.sku) return showError(t('line.sku_required'));
      return apply(save, [{ add_line: ['', {
        sku: r.sku,
        description: r.description || null,
        qty: Number(r.qty),
        unit_price_minor: Number(r.price),
        discount_bp: Number(r.bp),
        sort_key: nextSortKey(q.lines),
      }] }]);
    });
    cancel.addEventListener('click', close);
    keys(row, save);
    live(row);
    return row;
  }

  function build() {
    const editing = editable ? ctx.lineEdit : null;
    const rows = active.map((l) => (editing === l.id ? editRow(l) : shownRow(l)));
    if (editing === 'new') rows.push(newRow());
    let foot = null;
    if (editable) {
      const add = h('button', { type: 'button', class: 'small', 'data-test': 'add-line', disabled: editing === 'new' }, t('line.add'));
      add.addEventListener('click', () => open('new'));
      foot = h('tr', {}, h('td', { colspan: '5' }, add, ' ', h('span', { class: 'total-label' }, t('quote.total'))),
        h('td', { class: 'num total' }, h('strong', { 'data-test': 'quote-total' }, fmt.money(q.total.amount_minor, q.total.currency))),
        h('td', {}));
    } else {
      foot = h('tr', {}, h('td', { colspan: '5' }, t('quote.total')),
        h('td', { class: 'num total' }, h('strong', { 'data-test': 'quote-total' }, fmt.money(q.total.amount_minor, q.total.currency))));
    }
    return section('lines', t('quote.lines'),
      rows.length || editable
        ? h('table', { class: editable ? 'grid lines editable' : 'grid' },
          h('thead', {}, h('tr', {},
            h('th', {}, t('line.sku')), h('th', {}, t('line.description')), h('th', { class: 'num' }, t('line.qty')),
            h('th', { class: 'num' }, t('line.unit_price')), h('th', { class: 'num' }, t('line.discount')),
            h('th', { class: 'num' }, t('line.total')), editable ? h('th', {}, '') : null)),
          h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: '7' }, empty(t('quote.no_lines'))))),
          h('tfoot', {}, foot))
        : empty(t('quote.no_lines')),
      editable && q.status === 'rejected' ? h('p', { class: 'hint' }, t('quote.edit_new_revision')) : null,
      removed ? h('p', { class: 'hint' }, t('quote.removed_lines', { n: removed })) : null);
  }

  node = build();
  return node;
}

/** The quote page for `q`; `show(answer)` puts the page of a newer quote in its place. */
function quotePage(ctx, q, customer, attachments, show) {
  const send = (button, edits) => act(button, async () => {
    await post(`/api/quotes/${enc(q.id)}/edits`, edits);
    ctx.dirty = false;
    await ctx.refresh();
  });
  // Line edits: the answer is the quote as it now is (its total the model's).
  const apply = (button, edits) => act(button, async () => {
    document.body.dataset.ready = 'false';
    const answer = await post(`/api/quotes/${enc(q.id)}/edits`, edits);
    ctx.lineEdit = null;
    ctx.dirty = false;
    ctx.answer = { at: performance.now(), quote: answer };
    show(answer);
    document.body.dataset.ready = 'true';
  });
  const buttons = actions(q, send);
  return h('div', { class: 'quote', 'data-test': 'quote', 'data-id': q.id },
    h('div', { class: 'card head' },
      h('h1', {}, t('quote.title_no', { no: q.quote_no || t('quote.no_number') }),
        h('span', { class: 'status' },
          h('code', { class: 'sr-only', 'data-test': 'quote-status', 'data-status': q.status }, q.status),
          badge('qstatus', q.status, label('quote_status', q.status)))),
      q.status_conflict ? h('p', { class: 'warn' }, t('quote.status_conflict_detail', {
        marked: q.status_conflict.marked.map((s) => label('quote_status', s)).join(' / '),
        effective: label('quote_status', q.status_conflict.effective),
      })) : null,
      h('div', { class: 'fields' },
        field(t('visit.customer'), h('a', { href: docHref('customer', q.customer_id) }, customer ? customer.name : t('customer.unknown'))),
        field(t('quote.revision'), String(q.revision)),
        field(t('quote.currency'), q.currency),
        field(t('quote.valid_until'), fmt.date(q.valid_until)),
        field(t('quote.sent_at'), fmt.dateTime(q.sent_at)),
        field(t('quote.follow_up'), fmt.date(q.follow_up_due)),
        field(t('quote.payment_terms'), q.payment_terms),
        field(t('quote.delivery_terms'), q.delivery_terms),
        field(t('quote.customer_response'), q.customer_response),
        field(t('quote.win_loss_reason'), q.win_loss_reason),
        field(t('customer.owner'), q.owner),
        field(t('quote.created'), `${fmt.who(q.created_by)} · ${fmt.dateTime(q.created_at)}`)),
      buttons.length ? h('div', { class: 'buttons actions' }, buttons) : null),
    linesSection(ctx, q, apply),
    attachments,
    section('approvals', t('quote.approvals'),
      q.approvals.length
        ? h('ul', { class: 'list' }, q.approvals.map((a) => h('li', { class: a.void ? 'item void' : 'item', 'data-test': 'approval', 'data-decision': a.decision },
          h('span', { class: 'main' }, badge('qstatus', a.decision, label('quote_status', a.decision)), ' ', fmt.who(a.approver), h('span', { class: 'sub' }, label('role', a.role))),
          h('span', { class: 'meta' }, a.reason || '', a.void ? h('span', { class: 'void-why' }, t('quote.void', { why: a.void })) : null),
          h('span', { class: 'side when' }, fmt.dateTime(a.at)))))
        : empty(t('quote.no_approvals'))),
    q.notes.length ? section('notes', t('customer.notes'),
      h('ul', { class: 'list compact' }, q.notes.map((n) => h('li', { class: 'note' },
        h('span', { class: 'meta' }, `${fmt.who(n.author)} · ${fmt.dateTime(n.at)}`), h('p', {}, n.text))))) : null);
}

export const quoteView = {
  name: 'quote',
  nav: 'customers',
  concerns: (c, ctx) => c.type === 'reconnect' || (c.type === 'docs' && c.ids.includes(ctx.params[0])),
  async render(ctx) {
    const asked = performance.now();
    let q = await get(`/api/quotes/${enc(ctx.params[0])}`);
    // A render that was under way when a line edit answered must not show the older quote.
    if (ctx.answer && ctx.answer.at > asked && ctx.answer.quote.id === q.id) q = ctx.answer.quote;
    const files = attachmentsSection(ctx, q.id, 'quote');
    let customer = null;
    try {
      customer = (await get(`/api/customers/${enc(q.customer_id)}`)).customer;
    } catch (e) {
      customer = null;
    }
    const attachments = await files;
    let root = null;
    const show = (quote) => {
      const next = quotePage(ctx, quote, customer, attachments, show);
      if (root && root.isConnected) root.replaceWith(next);
      root = next;
      return next;
    };
    return show(q);
  },
};

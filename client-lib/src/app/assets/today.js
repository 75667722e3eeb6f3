// Today: what the rep has planned and owes, and whom nobody has visited lately.

import { h } from './dom.js';
import { t, label } from './i18n.js';
import { get, withQuery } from './api.js';
import * as fmt from './format.js';
import { section, empty, go, docHref } from './ui.js';

const DEFAULT_IDLE_DAYS = 30;

function idleDays(query) {
  const n = parseInt(query.get('idle_days') || '', 10);
  return Number.isFinite(n) && n > 0 ? Math.min(n, 3650) : DEFAULT_IDLE_DAYS;
}

/** One line of a list: the main link goes to the customer, `extra` is the small print. */
function item(customerId, title, extra, side, attrs) {
  return h('li', Object.assign({ class: 'item' }, attrs || {}),
    h('a', { class: 'main', href: docHref('customer', customerId) }, title),
    h('span', { class: 'meta' }, extra),
    side ? h('span', { class: 'side' }, side) : null);
}

function overdue(ms, now) {
  return ms !== null && ms !== undefined && ms < now;
}

function visitItem(v, now) {
  return item(v.customer_id, v.customer_name || t('customer.unknown'),
    [label('visit_kind', v.kind), v.location ? ` · ${v.location}` : ''],
    [h('span', { class: overdue(v.at, now) ? 'when late' : 'when' }, fmt.dateTime(v.at)), ' ',
      h('a', { href: docHref('visit', v.id), class: 'small' }, t('open'))],
    { 'data-id': v.id });
}

export const todayView = {
  name: 'today',
  nav: 'today',
  concerns: (c) => c.type === 'docs' || c.type === 'reconnect',
  async render(ctx) {
    const days = idleDays(ctx.query);
    const d = await get(withQuery('/api/today', { idle_days: days }));
    const now = d.now || Date.now();

    const planned = section('planned', t('today.planned'),
      d.planned_visits.length
        ? h('ul', { class: 'list' }, d.planned_visits.map((v) => visitItem(v, now)))
        : empty(t('today.planned.none')));

    const followUps = section('follow-ups', t('today.follow_ups'),
      d.follow_ups_due.length
        ? h('ul', { class: 'list' }, d.follow_ups_due.map((q) => item(q.customer_id,
          q.customer_name || t('customer.unknown'),
          [q.quote_no || t('quote.no_number'), ' · ', label('quote_status', q.status), ' · ',
            fmt.money(q.total_minor, q.currency)],
          [h('span', { class: overdue(q.follow_up_due, now) ? 'when late' : 'when' },
            t('today.follow_up_by', { date: fmt.date(q.follow_up_due) })), ' ',
          h('a', { href: docHref('quote', q.id), class: 'small' }, t('open'))],
          { 'data-id': q.id })))
        : empty(t('today.follow_ups.none')));

    const tasks = section('open-tasks', t('today.tasks'),
      d.open_tasks.length
        ? h('ul', { class: 'list' }, d.open_tasks.map((task) => item(task.customer_id,
          task.title,
          [task.customer_name || t('customer.unknown'),
            task.assignee ? ` · ${fmt.who(task.assignee)}` : ''],
          [task.due ? h('span', { class: overdue(task.due, now) ? 'when late' : 'when' },
            t('task.due', { date: fmt.date(task.due) })) : null, ' ',
          h('a', { href: docHref('visit', task.visit_id), class: 'small' }, t('open'))],
          { 'data-id': task.task_id })))
        : empty(t('today.tasks.none')));

    const greetings = section('greetings', t('today.greetings'),
      d.greetings.length
        ? h('ul', { class: 'list' }, d.greetings.map((v) => visitItem(v, now)))
        : empty(t('today.greetings.none')));

    const input = h('input', {
      type: 'number', name: 'idle_days', min: '1', max: '3650', value: String(days),
      class: 'narrow', 'aria-label': t('today.idle_days'),
    });
    input.addEventListener('change', (e) => apply(e));
    function apply(e) {
      e.preventDefault();
      const n = parseInt(input.value, 10);
      if (Number.isFinite(n) && n > 0 && n !== days) go(`#/today?idle_days=${n}`);
    }
    const notVisited = section('not-visited', t('today.not_visited', { days }),
      h('form', { class: 'inline', onsubmit: apply },
        h('label', {}, t('today.idle_days'), ' ', input),
        h('button', { type: 'submit' }, t('show'))),
      d.not_visited.length
        ? h('ul', { class: 'list' }, d.not_visited.map((n) => item(n.customer.id, n.customer.name,
          [label('stage', n.customer.stage), n.customer.industry ? ` · ${n.customer.industry}` : ''],
          n.last_visit_at
            ? h('span', { class: 'when late' },
              t('today.days_ago', { days: n.days, date: fmt.date(n.last_visit_at) }))
            : h('span', { class: 'when late' }, t('today.never_visited')),
          { 'data-id': n.customer.id })))
        : empty(t('today.not_visited.none')));

    return h('div', { class: 'today' },
      h('h1', {}, t('today.title'), h('span', { class: 'sub' }, fmt.date(now))),
      h('div', { class: 'grid2' },
        h('div', {}, planned, tasks, greetings),
        h('div', {}, followUps, notVisited)));
  },
};

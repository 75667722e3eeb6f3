// Small pieces every screen uses: the session, errors, navigation, sections, links.

import { h } from './dom.js';
import { t } from './i18n.js';

/** Filled at boot from GET /api/session. */
export const session = { identity: { author: '', role: 'rep', org: '' }, relay: null };

const ROLES = ['rep', 'manager', 'director', 'admin'];

/** Whether the signed-in role is `role` or above (rep < manager < director < admin). */
export function roleAtLeast(role) {
  return ROLES.indexOf(session.identity.role) >= ROLES.indexOf(role);
}

/** Shows `err` (an ApiError, an Error or text) in the one `[data-test="error"]` box. */
export function showError(err) {
  const flash = document.getElementById('flash');
  const text = typeof err === 'string' ? err : describe(err);
  flash.replaceChildren(
    h('div', { class: 'error', role: 'alert' },
      h('span', { 'data-test': 'error' }, text),
      h('button', { type: 'button', class: 'link', onclick: clearError, 'aria-label': t('close') }, '×')),
  );
  flash.scrollIntoView({ block: 'nearest' });
}

export function clearError() {
  document.getElementById('flash').replaceChildren();
}

/** The server's message with a word on what kind of error it was. */
export function describe(err) {
  if (!err) return '';
  const prefix = {
    refused: t('error.refused'),
    invalid: t('error.invalid'),
    not_found: t('error.not_found'),
    conflict: t('error.conflict'),
    internal: t('error.internal'),
  }[err.code];
  return prefix ? `${prefix}: ${err.message}` : String(err.message || err);
}

/** Goes to `hash`; the tests wait for `body[data-ready=true]` again. */
export function go(hash) {
  document.body.dataset.ready = 'false';
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent('hashchange'));
  else location.hash = hash;
}

/**
 * Runs `fn` for a button: the button is disabled meanwhile, an error is shown in the error
 * box. Returns what `fn` returned, or undefined after an error.
 */
export async function act(button, fn) {
  clearError();
  if (button) button.disabled = true;
  try {
    return await fn();
  } catch (e) {
    showError(e);
    document.body.dataset.ready = 'true';
    return undefined;
  } finally {
    if (button && button.isConnected) button.disabled = false;
  }
}

/** A titled card: <section data-test=…><h2>title</h2>…</section>. */
export function section(test, title, ...content) {
  return h('section', { class: 'card', 'data-test': test },
    h('h2', {}, title), ...content);
}

/** The grey line shown where a list has nothing. */
export function empty(text) {
  return h('p', { class: 'empty' }, text || t('none'));
}

/** The address of a document's screen. */
export function docHref(kind, id) {
  const k = kind === 'customer' ? 'customer' : kind === 'visit' ? 'visit' : 'quote';
  return `#/${k}/${encodeURIComponent(id)}`;
}

/** A label and a value, for definition-style rows. */
export function field(label, value, attrs) {
  if (value === null || value === undefined || value === '') return null;
  return h('div', Object.assign({ class: 'field' }, attrs || {}),
    h('span', { class: 'k' }, label), h('span', { class: 'v' }, value));
}

/** A form row: a label around an input. */
export function labelled(text, input, cls) {
  return h('label', { class: cls || 'lbl' }, h('span', {}, text), input);
}

/** A coloured badge with the raw value in data-value. */
export function badge(kindClass, value, text) {
  return h('span', { class: `badge ${kindClass} ${kindClass}-${value}`, 'data-value': value }, text);
}

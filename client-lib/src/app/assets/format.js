// How values are shown: money with its currency, times in local time, phones as stored.

import { minorToText } from './money.js';

/** 'CNY 1,234.56' from minor units (a number or BigInt) and an ISO 4217 code. */
export function money(minor, currency) {
  if (minor === null || minor === undefined) return '';
  return `${currency || ''} ${minorToText(minor, currency)}`.trim();
}

const pad = (n) => String(n).padStart(2, '0');

/** '2024-05-03' in local time from milliseconds since the epoch. */
export function date(ms) {
  if (ms === null || ms === undefined) return '';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

/** '2024-05-03 14:05' in local time. */
export function dateTime(ms) {
  if (ms === null || ms === undefined) return '';
  const d = new Date(ms);
  return `${date(ms)} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** The value of an <input type="datetime-local"> for `ms` (local time). */
export function toDateTimeInput(ms) {
  const d = new Date(ms);
  return `${date(ms)}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** Milliseconds from an <input type="datetime-local"> value (local time), null if empty. */
export function fromDateTimeInput(value) {
  if (!value) return null;
  const t = new Date(value).getTime();
  return Number.isNaN(t) ? null : t;
}

/** Milliseconds of the end (23:59:59.999 local) of a <input type="date"> day, null if empty. */
export function fromDateInput(value, endOfDay = true) {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value || '');
  if (!m) return null;
  const d = endOfDay
    ? new Date(+m[1], +m[2] - 1, +m[3], 23, 59, 59, 999)
    : new Date(+m[1], +m[2] - 1, +m[3]);
  return d.getTime();
}

/** An author: a person's name as is; a device id (an author without a name) shortened. */
export function who(author) {
  const s = String(author || '');
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s) ? `${s.slice(0, 8)}…` : s;
}

/** A phone number exactly as it was entered. */
export function phone(raw) {
  return raw || '';
}

/** '1.2 MB' from a byte count. */
export function bytes(n) {
  const v = Number(n || 0);
  if (v < 1024) return `${v} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let x = v;
  let i = -1;
  do {
    x /= 1024;
    i += 1;
  } while (x >= 1024 && i < units.length - 1);
  return `${x.toFixed(x < 10 ? 1 : 0)} ${units[i]}`;
}

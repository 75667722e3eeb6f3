// Money is integer minor units with an ISO 4217 currency, as in the Rust model. No floats:
// amounts are parsed from and printed to decimal text with BigInt.

/** Minor-unit exponents that are not 2 (ISO 4217). */
const EXPONENTS = {
  BIF: 0, CLP: 0, DJF: 0, GNF: 0, ISK: 0, JPY: 0, KMF: 0, KRW: 0, PYG: 0, RWF: 0,
  UGX: 0, UYI: 0, VND: 0, VUV: 0, XAF: 0, XOF: 0, XPF: 0,
  BHD: 3, IQD: 3, JOD: 3, KWD: 3, LYD: 3, OMR: 3, TND: 3,
  CLF: 4, UYW: 4,
};

/** Digits after the decimal point for `currency` (2 unless listed above). */
export function exponent(currency) {
  const e = EXPONENTS[String(currency || '').toUpperCase()];
  return e === undefined ? 2 : e;
}

/** Groups of three digits: '1234567' → '1,234,567'. */
function group(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/** '123456' minor units of CNY → '1,234.56' (no currency). */
export function minorToText(minor, currency) {
  const e = exponent(currency);
  let n = BigInt(minor);
  const neg = n < 0n;
  if (neg) n = -n;
  const s = n.toString().padStart(e + 1, '0');
  const int = group(s.slice(0, s.length - e));
  const frac = e > 0 ? '.' + s.slice(s.length - e) : '';
  return (neg ? '-' : '') + int + frac;
}

/** Full-width digits and punctuation (as a Chinese input method types them) to ASCII. */
function ascii(text) {
  return String(text)
    .replace(/[\uFF10-\uFF19]/g, (c) => String.fromCharCode(c.charCodeAt(0) - 0xFF10 + 48))
    .replace(/[\uFF0E\u3002]/g, '.')
    .replace(/[\uFF0C]/g, ',');
}

/**
 * Parses non-negative decimal text with at most `decimals` digits after the point into an
 * integer count of 10^-decimals units: parseDecimal('1,234.5', 2) → 123450n. Thousands
 * commas and spaces are ignored. Returns null for empty text; throws Error('format') or
 * Error('decimals') for text that is not such a number, Error('range') past 2^53.
 */
export function parseDecimal(text, decimals) {
  const s = ascii(text).replace(/[\s,]/g, '');
  if (s === '') return null;
  const m = /^(\d*)(?:\.(\d*))?$/.exec(s);
  if (!m || (m[1] === '' && (m[2] === undefined || m[2] === ''))) throw new Error('format');
  const frac = m[2] || '';
  if (frac.length > decimals) throw new Error('decimals');
  const v = BigInt((m[1] || '0') + frac.padEnd(decimals, '0'));
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error('range');
  return v;
}

/** A price as entered, in minor units of `currency` (BigInt), or null when empty. */
export function parseMoney(text, currency) {
  return parseDecimal(text, exponent(currency));
}

/** A discount entered in percent ('5', '2.5') as basis points (BigInt), 0 when empty. */
export function parsePercentToBp(text) {
  const v = parseDecimal(text, 2);
  if (v === null) return 0n;
  if (v > 10000n) throw new Error('range');
  return v;
}

/** Basis points as percent text: 250 → '2.5'. */
export function bpToPercent(bp) {
  const n = BigInt(bp);
  const int = n / 100n;
  const frac = (n % 100n).toString().padStart(2, '0').replace(/0+$/, '');
  return frac ? `${int}.${frac}` : `${int}`;
}

/**
 * A line total in minor units exactly as `QuoteLine::total_minor` in
 * core/src/model/quote.rs: qty × unit price × (10000 − discount bp) / 10000, rounded half
 * away from zero, the discount clamped to 0..=10000.
 */
export function lineTotalMinor(qty, unitPriceMinor, discountBp) {
  let bp = BigInt(discountBp);
  if (bp < 0n) bp = 0n;
  if (bp > 10000n) bp = 10000n;
  const net = BigInt(qty) * BigInt(unitPriceMinor) * (10000n - bp);
  const abs = net < 0n ? -net : net;
  const q = (abs + 5000n) / 10000n;
  return net < 0n ? -q : q;
}

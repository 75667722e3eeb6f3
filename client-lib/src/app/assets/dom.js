// Building DOM nodes without innerHTML: every string becomes a text node, so nothing a
// customer record holds can turn into markup.

/**
 * h('a', {href: '#/x', class: 'row', 'data-id': id, onclick: fn}, 'text', child, [more])
 * - attributes: `class`, `data-*`, `aria-*` and the rest go through setAttribute;
 * - `value`, `checked`, `selected`, `disabled` are set as properties;
 * - `on<event>` values that are functions become listeners;
 * - null, undefined and false attributes and children are skipped; arrays are flattened.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'value' || k === 'checked' || k === 'selected' || k === 'disabled') {
      el[k] = v;
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** An <option> list for a <select>: values with their labels, `selected` chosen. */
export function options(values, label, selected) {
  return values.map((v) => h('option', { value: v, selected: v === selected }, label(v)));
}

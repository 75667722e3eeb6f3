// This launch's key. `fieldsync app` prints the address with the key in its fragment
// (`/#key=…`), which a browser never sends to a server. On the first load it moves into the
// tab's sessionStorage (kept apart per origin, port included, unlike cookies, which every
// server on 127.0.0.1 would receive) and out of the address bar. Every API request sends it
// as `Authorization: Bearer`; the event stream, which cannot send headers, as `?key=`.

const STORE = 'fieldsync.key';

function take() {
  const m = /^#key=([0-9a-f]{16,128})$/i.exec(location.hash);
  if (m) {
    sessionStorage.setItem(STORE, m[1]);
    history.replaceState(null, '', `${location.pathname}#/today`);
  }
  return sessionStorage.getItem(STORE) || '';
}

const current = take();

/** The key, or '' when this tab was opened without it. */
export function key() {
  return current;
}

// The live feed: server-sent events from /api/events.
//   docs: {ids, origin: "local" | "remote"}  documents changed
//   sync: {event: SyncEvent, state}          the background sync moved
// The `[data-test="live"]` dot says whether the feed is connected. EventSource reconnects by
// itself; after a reconnect (or a `resync` event: the server dropped events for this page)
// `onReconnect` runs, since events were missed meanwhile.

import { key } from './key.js';

let source = null;

export function startLive({ onDocs, onSync, onReconnect }) {
  const dot = document.querySelector('[data-test="live"]');
  let wasOpen = false;
  let lostOnce = false;
  const set = (connected) => {
    if (dot) dot.dataset.connected = connected ? 'true' : 'false';
  };
  set(false);
  source = new EventSource(`/api/events?key=${encodeURIComponent(key())}`);
  source.addEventListener('open', () => {
    set(true);
    if (wasOpen && lostOnce) onReconnect();
    wasOpen = true;
    lostOnce = false;
  });
  source.addEventListener('error', () => {
    set(false);
    lostOnce = true;
  });
  // The server could not keep up with this page: re-read everything shown.
  source.addEventListener('resync', () => onReconnect());
  source.addEventListener('docs', (e) => {
    const data = parse(e.data);
    if (data) onDocs({ ids: data.ids || [], origin: data.origin || 'local' });
  });
  source.addEventListener('sync', (e) => {
    const data = parse(e.data);
    if (data) onSync({ event: eventName(data.event), detail: data.event, state: data.state });
  });
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    return null;
  }
}

/** The name of a serialised SyncEvent ({"event": "connected", …} or a bare string). */
export function eventName(ev) {
  if (!ev) return '';
  if (typeof ev === 'string') return ev;
  if (typeof ev.event === 'string') return ev.event;
  const keys = Object.keys(ev);
  return keys.length === 1 ? keys[0] : '';
}

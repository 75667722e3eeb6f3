// The JSON API of docs/APP.md. Every request carries this launch's key (key.js) as
// `Authorization: Bearer`; no cookie is involved.

import { t } from './i18n.js';
import { key } from './key.js';

/** The headers every request sends. */
function headers(extra) {
  return Object.assign({ Accept: 'application/json', Authorization: `Bearer ${key()}` }, extra || {});
}

/** An answer that was not 2xx: `message` is the server's text for people, `code` its code. */
export class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

async function request(method, path, body) {
  const init = { method, credentials: 'omit', headers: headers() };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  return send(path, init);
}

/** Sends `init` to `path`; the answer's JSON, or throws an ApiError. */
async function send(path, init) {
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(t('error.unreachable'), 'unreachable', 0);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch (e) {
      data = null;
    }
  }
  if (!res.ok) {
    if (res.status === 401) throw new ApiError(t('error.unauthorized'), 'unauthorized', 401);
    const message = data && data.error ? data.error : `${res.status} ${res.statusText}`;
    throw new ApiError(message, (data && data.code) || 'http', res.status);
  }
  return data;
}

/** `/api/x?a=1&b=2` with the parameters that are not null or empty. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

export const get = (path) => request('GET', path);
export const post = (path, body) => request('POST', path, body);

/**
 * Attaches `file` (a File from an <input type=file>) to the document `docId`: its bytes are
 * the body of POST /api/docs/ID/attachments?name=…&caption=…, sent like every other request
 * (the key as a header; the browser adds the Origin header). Answers AttachmentInfo.
 */
export function upload(docId, file, caption) {
  let path = `/api/docs/${encodeURIComponent(docId)}/attachments?name=${encodeURIComponent(file.name)}`;
  if (caption) path += `&caption=${encodeURIComponent(caption)}`;
  return send(path, {
    method: 'POST',
    credentials: 'omit',
    headers: headers({ 'Content-Type': file.type || 'application/octet-stream' }),
    body: file,
  });
}

/** `/api/customers/ID` with the id escaped. */
export const enc = encodeURIComponent;

/**
 * A file from the API (an attachment's preview or bytes) as a Blob of `type`: an <img> or a
 * link cannot send the key, so the page fetches the bytes and shows them from a blob: URL.
 */
export async function blob(path, type) {
  let res;
  try {
    res = await fetch(path, { credentials: 'omit', headers: headers({ Accept: '*/*' }) });
  } catch (e) {
    throw new ApiError(t('error.unreachable'), 'unreachable', 0);
  }
  if (!res.ok) {
    if (res.status === 401) throw new ApiError(t('error.unauthorized'), 'unauthorized', 401);
    let message = `${res.status} ${res.statusText}`;
    try {
      const data = await res.json();
      if (data && data.error) message = data.error;
    } catch (e) {
      // not JSON
    }
    throw new ApiError(message, 'http', res.status);
  }
  const bytes = await res.arrayBuffer();
  return new Blob([bytes], { type });
}

// Attachments of a document (photos taken at a visit, signed PDFs): the list, with previews
// and where each file's bytes are, and a small form to add one. The visit view, Customer 360
// and the quote view show it; the log-a-visit form uploads through `uploadFiles`.
//
// Hooks: [data-test="attachments"] (the section), [data-test="attachment"] (one attachment,
// data-id = its entry id, data-state = here | downloading | not_here), [data-test="open-attachment"],
// [data-test="attach"] (the form: input[type=file][name="file"], input[name="caption"],
// button[type=submit]), [data-test="upload"] (one file being uploaded, data-state = waiting |
// uploading | done | failed).

import { h } from './dom.js';
import { t } from './i18n.js';
import { get, post, upload, blob, enc } from './api.js';
import * as fmt from './format.js';
import { section, empty, act, labelled, session, describe } from './ui.js';

/** What the page uploads in one request (files::MAX_UPLOAD); larger files go by the CLI. */
export const MAX_UPLOAD = 64 * 1024 * 1024;
/** What the file inputs offer. */
export const ACCEPT = 'image/*,application/pdf';

const base = (docId) => `/api/docs/${enc(docId)}/attachments`;
const fileHref = (docId, entry) => `${base(docId)}/${enc(entry)}`;
const previewSrc = (docId, entry) => `${base(docId)}/${enc(entry)}/preview`;

/** A file as chosen: the same file picked again is the same key. */
function fileKey(f) {
  return `${f.name}\u0000${f.size}\u0000${f.lastModified}`;
}

/** The `fieldsync … attach` command for a document of `kind`, for files too large here. */
function cliKind(kind) {
  return kind === 'visit' || kind === 'quote' ? kind : 'customer';
}

/**
 * Uploads `files` one after another to `docId`, showing each in `into` (a row per file: its
 * name, size and state). Files already marked done in `state` (a Map of fileKey → state) are
 * skipped, so calling it again retries only what failed, even with the files chosen again.
 * Resolves to the number that failed.
 */
export async function uploadFiles(docId, files, into, state, kind, caption) {
  const done0 = (f) => state.get(fileKey(f)) === 'done';
  const rows = files.map((file) => {
    const status = h('span', { class: 'ustate' });
    const bar = h('progress', { class: 'ubar', max: '1' });
    const row = h('li', { class: 'upload', 'data-test': 'upload', 'data-name': file.name },
      h('span', { class: 'uname' }, file.name), h('span', { class: 'usize' }, fmt.bytes(file.size)), bar, status);
    return { file, row, status, bar };
  });
  const summary = h('p', { class: 'hint', 'data-test': 'upload-summary' });
  into.replaceChildren(h('ul', { class: 'uploads' }, rows.map((r) => r.row)), summary);
  const set = (r, s, text) => {
    r.row.dataset.state = s;
    r.status.textContent = text;
    r.status.className = s === 'failed' ? 'ustate errtext' : 'ustate';
    if (s === 'uploading') r.bar.removeAttribute('value'); // indeterminate while it goes
    else r.bar.value = s === 'done' ? 1 : 0;
    r.bar.hidden = s === 'done' || s === 'failed';
  };
  let done = 0;
  let failed = 0;
  const tally = () => {
    summary.textContent = t('upload.progress', { done, n: rows.length })
      + (failed ? ` · ${t('upload.failed_n', { n: failed })}` : '');
  };
  for (const r of rows) set(r, done0(r.file) ? 'done' : 'waiting', done0(r.file) ? t('upload.done') : t('upload.waiting'));
  for (const r of rows) {
    if (done0(r.file)) {
      done += 1;
      tally();
      continue;
    }
    if (r.file.size > MAX_UPLOAD) {
      failed += 1;
      state.set(fileKey(r.file), 'failed');
      set(r, 'failed', t('upload.too_big', { max: fmt.bytes(MAX_UPLOAD), kind: cliKind(kind) }));
      tally();
      continue;
    }
    set(r, 'uploading', t('upload.uploading'));
    tally();
    try {
      await upload(docId, r.file, caption || '');
      state.set(fileKey(r.file), 'done');
      done += 1;
      set(r, 'done', t('upload.done'));
    } catch (e) {
      state.set(fileKey(r.file), 'failed');
      failed += 1;
      set(r, 'failed', t('upload.failed', { error: describe(e) }));
    }
    tally();
  }
  return failed;
}

/** Where an attachment's bytes are, for people. */
function where(a) {
  const b = a.bytes || {};
  const size = a.attachment.size;
  if (b.state === 'here') {
    if (!session.relay) return [t('attach.here'), null];
    if (b.uploaded) return [t('attach.here'), t('attach.uploaded')];
    return [t('attach.here'), b.sent_bytes
      ? t('attach.uploading', { sent: fmt.bytes(b.sent_bytes), size: fmt.bytes(size) })
      : t('attach.waiting_upload')];
  }
  if (b.state === 'downloading') {
    return [t('attach.downloading', { have: fmt.bytes(b.have_bytes), size: fmt.bytes(size) }), null];
  }
  return [t('attach.not_here'), t('attach.not_here_hint')];
}

/** Whether something of `list` is moving, so the section should look again soon. */
function inTransit(list) {
  return list.some((a) => a.bytes && (a.bytes.state === 'downloading'
    || (a.bytes.state === 'here' && !a.bytes.uploaded && session.relay)));
}

function kindLabel(a) {
  const m = String(a.attachment.media_type || '');
  if (m === 'application/pdf') return 'PDF';
  if (m.startsWith('image/')) return m.slice(6).toUpperCase();
  const ext = /\.([a-z0-9]{1,5})$/i.exec(a.attachment.name || '');
  return ext ? ext[1].toUpperCase() : t('attach.file');
}

/** Media types a file is shown as in the browser; anything else is saved as a download. */
const INLINE = ['image/jpeg', 'image/png', 'image/webp', 'image/gif', 'application/pdf'];

/** A preview image: its bytes are fetched with the key and shown from a blob: URL. */
function previewImg(docId, e) {
  const img = h('img', { class: 'thumb', alt: e.name });
  blob(previewSrc(docId, e.id), 'image/jpeg')
    .then((b) => { img.src = URL.createObjectURL(b); })
    .catch(() => { img.alt = `${e.name} (${t('attach.no_preview')})`; });
  return img;
}

/** Opens an attachment held here: shown in a new tab if it is an image or PDF, else saved. */
async function openFile(docId, e) {
  const media = String(e.media_type || '');
  const inline = INLINE.includes(media);
  const b = await blob(fileHref(docId, e.id), inline ? media : 'application/octet-stream');
  const url = URL.createObjectURL(b);
  if (inline) {
    window.open(url, '_blank', 'noopener');
  } else {
    const a = h('a', { href: url, download: e.name || 'attachment' });
    document.body.append(a);
    a.click();
    a.remove();
  }
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

function item(docId, a) {
  const e = a.attachment;
  const here = a.bytes && a.bytes.state === 'here';
  const thumb = a.has_preview
    ? previewImg(docId, e)
    : h('span', { class: 'thumb filetype' }, kindLabel(a));
  const link = (content, attrs) => {
    if (!here) return content;
    const l = h('a', Object.assign({ href: '#' }, attrs || {}), content);
    l.addEventListener('click', (ev) => {
      ev.preventDefault();
      openFile(docId, e).catch((err) => alert(describe(err)));
    });
    return l;
  };
  const [state, detail] = where(a);
  return h('li', { class: 'attachment', 'data-test': 'attachment', 'data-id': e.id, 'data-state': (a.bytes && a.bytes.state) || '' },
    link(thumb, { class: 'thumblink', tabindex: '-1', 'aria-hidden': 'true' }),
    h('div', { class: 'ainfo' },
      h('div', { class: 'aname' }, link(e.name || kindLabel(a), { 'data-test': 'open-attachment' })),
      e.caption ? h('div', { class: 'acaption' }, e.caption) : null,
      h('div', { class: 'meta' },
        h('span', {}, fmt.bytes(e.size)),
        h('span', { class: `astate astate-${(a.bytes && a.bytes.state) || 'unknown'}`, 'data-test': 'attachment-state' }, state),
        detail ? h('span', { class: 'adetail' }, detail) : null),
      h('div', { class: 'meta' }, `${fmt.who(e.author)} · ${fmt.dateTime(e.at)}`),
      a.refused ? h('div', { class: 'errtext small' }, t('attach.refused', { reason: a.refused })) : null,
      fetchButton(docId, a)));
}

/** "Download": asks for a file not on this laptop at the next sync (at once when connected). */
function fetchButton(docId, a) {
  if (!session.relay || !a.bytes || a.bytes.state !== 'not_here') return null;
  const b = h('button', { type: 'button', class: 'small', 'data-test': 'fetch-attachment' }, t('attach.fetch'));
  b.addEventListener('click', () => act(b, async () => {
    await post(`${fileHref(docId, a.attachment.id)}/fetch`);
    b.replaceWith(h('span', { class: 'meta', 'data-test': 'fetch-requested' }, t('attach.fetch_requested')));
  }));
  return b;
}

function listNode(docId, list) {
  const shown = list.filter((a) => !a.attachment.removed_at);
  return shown.length
    ? h('ul', { class: 'attachments' }, shown.map((a) => item(docId, a)))
    : empty(t('attach.none'));
}

/**
 * The "Attachments" section of the document `docId` (of `kind`: customer, visit, quote), read
 * now. After an upload it re-reads the page (ctx.refresh); while a file is moving to or from
 * the relay it looks again every few seconds, replacing only its list.
 */
export async function attachmentsSection(ctx, docId, kind) {
  let list = null;
  let failure = null;
  try {
    list = await get(base(docId));
  } catch (e) {
    failure = e;
  }
  const holder = h('div', { class: 'alist' },
    failure ? h('p', { class: 'errtext' }, describe(failure)) : listNode(docId, list));

  const file = h('input', { type: 'file', name: 'file', accept: ACCEPT, multiple: true });
  const caption = h('input', { name: 'caption', autocomplete: 'off', placeholder: t('attach.caption_hint') });
  const send = h('button', { type: 'submit', 'data-test': 'attach-upload' }, t('attach.upload'));
  const progress = h('div', { class: 'progress' });
  const state = new Map();
  const form = h('form', { class: 'inline-form attach', 'data-test': 'attach', novalidate: true },
    labelled(t('attach.file'), file), labelled(t('attach.caption'), caption, 'lbl grow'), send, progress);
  file.addEventListener('change', () => progress.replaceChildren());
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const files = [...(file.files || [])];
    if (!files.length) {
      progress.replaceChildren(h('p', { class: 'errtext small' }, t('attach.choose_file')));
      return;
    }
    act(send, async () => {
      document.body.dataset.ready = 'false';
      const failed = await uploadFiles(docId, files, progress, state, kind, caption.value.trim());
      if (failed) {
        document.body.dataset.ready = 'true';
        return;
      }
      form.reset();
      state.clear();
      ctx.dirty = false;
      await ctx.refresh();
    });
  });

  const node = section('attachments', t('attach.title'), holder,
    h('h3', {}, t('attach.add')), form);
  node.dataset.doc = docId;

  // Look again while bytes move (their state is not a document change, so no live event).
  if (list && inTransit(list)) {
    let last = JSON.stringify(list);
    const again = async () => {
      if (!node.isConnected) return;
      try {
        const fresh = await get(base(docId));
        const text = JSON.stringify(fresh);
        if (text !== last && node.isConnected) {
          last = text;
          holder.replaceChildren(listNode(docId, fresh));
        }
        if (!inTransit(fresh)) return;
      } catch (e) {
        // the next render shows the error
      }
      setTimeout(again, 4000);
    };
    setTimeout(again, 4000);
  }
  return node;
}

//! The C ABI of the fieldsync client, for desktop apps that embed the replica.
//!
//! Documents, edits and query results cross the boundary as UTF-8 JSON, using the same serde
//! shapes as the Rust API (`NewCustomer`, `Edit`, `Document`, …), so the C surface stays small
//! and stable. Conventions:
//! - functions returning `char *` return a string the caller frees with `fs_string_free`, or
//!   `NULL` on error;
//! - functions returning `int32_t` or `int64_t` return `-1` on error;
//! - after an error, `fs_last_error()` describes it (per thread, until the next call).
//!
//! No Rust panic crosses the boundary: every entry point catches it and reports an error.
//! The header is `client-lib/ffi/include/fieldsync.h`; `examples/c/embed.c` shows a full use.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use fieldsync_client::sync::{SyncConfig, sync_now};
use fieldsync_client::{Client, DocId, Edit, NewCustomer, NewQuote, NewVisit, StoreOptions, vault};

/// An open replica. Create with `fs_open`, release with `fs_close`. A handle may be used from
/// several threads; calls are serialised inside.
pub struct FsClient {
    client: Client,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f`, turning errors and panics into the error convention.
fn guard<T>(fail: T, f: impl FnOnce() -> Result<T, String>) -> T {
    set_error("");
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_error(&e);
            fail
        }
        Err(_) => {
            set_error("internal error (panic caught at the C boundary)");
            fail
        }
    }
}

/// Reads a required C string argument.
///
/// # Safety
/// `p` is NULL or a valid NUL-terminated string.
unsafe fn arg<'a>(p: *const c_char, name: &str) -> Result<&'a str, String> {
    if p.is_null() {
        return Err(format!("{name} is NULL"));
    }
    // SAFETY: the caller promises a valid NUL-terminated string.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| format!("{name} is not UTF-8"))
}

/// Reads the client handle.
///
/// # Safety
/// `c` is NULL or a pointer returned by `fs_open` and not yet closed.
unsafe fn handle<'a>(c: *const FsClient) -> Result<&'a Client, String> {
    if c.is_null() {
        return Err("client is NULL".into());
    }
    // SAFETY: the caller promises a live handle from fs_open.
    Ok(unsafe { &(*c).client })
}

fn out(s: String) -> Result<*mut c_char, String> {
    CString::new(s)
        .map(CString::into_raw)
        .map_err(|_| "result contains a NUL byte".to_string())
}

fn doc_id(s: &str) -> Result<DocId, String> {
    s.parse().map_err(|_| format!("`{s}` is not a document id"))
}

fn json<T: serde::Serialize>(v: &T) -> Result<*mut c_char, String> {
    out(serde_json::to_string(v).map_err(|e| e.to_string())?)
}

/// The message of the last error on this thread ("" if the last call succeeded). The pointer
/// stays valid until the next fieldsync call on the same thread; do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn fs_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Opens (or creates) the replica file at `path`. Returns NULL on error.
///
/// # Safety
/// `path` is a valid NUL-terminated UTF-8 string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_open(path: *const c_char) -> *mut FsClient {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        let path = unsafe { arg(path, "path") }?;
        let client = Client::open(path).map_err(|e| e.to_string())?;
        Ok(Box::into_raw(Box::new(FsClient { client })))
    })
}

fn passphrase_arg(p: *const c_char) -> Result<Option<zeroize::Zeroizing<String>>, String> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the callers forward a pointer their caller promised valid.
    let s = unsafe { arg(p, "passphrase") }?;
    Ok(Some(zeroize::Zeroizing::new(s.to_string())))
}

/// Opens an encrypted replica at `path`, unlocking its key with `passphrase` (NULL: only the
/// OS keyring or a key kept by `fieldsync unlock`). A replica that does not exist yet is
/// created encrypted under `passphrase` (and the OS keyring where there is one). A plain
/// replica is refused (`fs_encrypt` encrypts it). Returns NULL on error: a wrong passphrase, a
/// locked replica, an expired offline lease (see `fs_last_error`); nothing is changed then.
///
/// # Safety
/// `path` is a valid NUL-terminated UTF-8 string; `passphrase` is NULL or one.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_open_encrypted(
    path: *const c_char,
    passphrase: *const c_char,
) -> *mut FsClient {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        let path = std::path::Path::new(unsafe { arg(path, "path") }?);
        let passphrase = passphrase_arg(passphrase)?;
        if !vault::is_encrypted(path) {
            if path.exists() {
                return Err(format!(
                    "{} is not encrypted: fs_encrypt encrypts it first",
                    path.display()
                ));
            }
            let Some(p) = passphrase.clone() else {
                return Err("a new encrypted replica needs a passphrase".into());
            };
            encrypt_with_keyring_if_any(path, p)?;
        }
        let unlock = vault::Unlock {
            passphrase,
            ..vault::Unlock::default()
        };
        let client = Client::open_unlocked(path, StoreOptions::default(), &unlock)
            .map_err(|e| e.to_string())?;
        Ok(Box::into_raw(Box::new(FsClient { client })))
    })
}

/// Opens the replica at `path` (encrypted: unlocked with `passphrase`, or NULL for the OS
/// keyring) also when its offline lease has expired, for one purpose: `fs_sync`, which renews
/// the lease when the relay still accepts this computer (or carries out IT's wipe order).
/// Close it after the sync and open the replica again with `fs_open`/`fs_open_encrypted` to
/// use it. Returns NULL on error.
///
/// # Safety
/// `path` is a valid NUL-terminated UTF-8 string; `passphrase` is NULL or one.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_open_for_sync(
    path: *const c_char,
    passphrase: *const c_char,
) -> *mut FsClient {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        let path = std::path::Path::new(unsafe { arg(path, "path") }?);
        let unlock = vault::Unlock {
            passphrase: passphrase_arg(passphrase)?,
            ..vault::Unlock::default()
        };
        let client = Client::open_for_renewal(path, StoreOptions::default(), &unlock)
            .map_err(|e| e.to_string())?;
        Ok(Box::into_raw(Box::new(FsClient { client })))
    })
}

/// Encrypts `path` under `passphrase`, with the OS keyring as well where there is one.
fn encrypt_with_keyring_if_any(
    path: &std::path::Path,
    passphrase: zeroize::Zeroizing<String>,
) -> Result<(), String> {
    let mut protection = vault::Protection {
        passphrase: Some(passphrase),
        keyring: true,
    };
    vault::with_keyring_if_any(&mut protection, |p| vault::encrypt(path, p))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Encrypts the plain replica at `path` in place (its attachments and credential too) under
/// `passphrase`, and the OS keyring where there is one. The replica must not be open. A crash
/// during the encryption loses nothing: the next open finishes it. Returns 0, or -1 on error.
///
/// # Safety
/// `path` and `passphrase` are valid NUL-terminated UTF-8 strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_encrypt(path: *const c_char, passphrase: *const c_char) -> i32 {
    guard(-1, || {
        // SAFETY: forwarded from the caller.
        let path = std::path::Path::new(unsafe { arg(path, "path") }?);
        let p = passphrase_arg(passphrase)?.ok_or("passphrase is NULL")?;
        encrypt_with_keyring_if_any(path, p)?;
        Ok(0)
    })
}

/// Changes the passphrase of the encrypted replica at `path` (the data key stays; the files
/// are not rewritten). The replica must not be open. Returns 0, or -1 on error (a wrong
/// `old_passphrase` changes nothing).
///
/// # Safety
/// `path`, `old_passphrase` and `new_passphrase` are valid NUL-terminated UTF-8 strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_change_passphrase(
    path: *const c_char,
    old_passphrase: *const c_char,
    new_passphrase: *const c_char,
) -> i32 {
    guard(-1, || {
        // SAFETY: forwarded from the caller.
        let path = std::path::Path::new(unsafe { arg(path, "path") }?);
        let old = passphrase_arg(old_passphrase)?.ok_or("old_passphrase is NULL")?;
        let new = passphrase_arg(new_passphrase)?.ok_or("new_passphrase is NULL")?;
        let unlock = vault::Unlock {
            passphrase: Some(old),
            no_keyring: true,
            no_session: true,
        };
        let keyring = vault::key_info(path)
            .map_err(|e| e.to_string())?
            .is_some_and(|k| k.keyring);
        vault::protect(
            path,
            &unlock,
            &vault::Protection {
                passphrase: Some(new),
                keyring,
            },
        )
        .map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// The replica's offline lease as JSON: `null` when IT set none, else `{"days", "state":
/// "valid", "left"}` or `{"days", "state": "expired", "ago"}` (milliseconds). NULL on error.
///
/// # Safety
/// `client` is a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_lease(client: *const FsClient) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        let c = unsafe { handle(client) }?;
        let lease = c.lease().map_err(|e| e.to_string())?;
        json(&lease.map(|(l, st)| {
            let mut v = serde_json::to_value(st).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("days".into(), l.days.into());
            }
            v
        }))
    })
}

/// Closes a replica opened with `fs_open`. NULL is ignored.
///
/// # Safety
/// `client` is NULL or a handle from `fs_open` not yet closed; it must not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_close(client: *mut FsClient) {
    if !client.is_null() {
        // SAFETY: the caller hands back ownership of a handle from fs_open.
        drop(unsafe { Box::from_raw(client) });
    }
}

/// Frees a string returned by a fieldsync function. NULL is ignored.
///
/// # Safety
/// `s` is NULL or a string returned by fieldsync and not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: the string was created by CString::into_raw in this library.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// Creates a document and returns its id. `kind` is `"customer"`, `"visit"` or `"quote"`;
/// `json` is the new document, e.g. `{"scope":"north","name":"Baotou Mining"}` for a customer,
/// `{"customer_id":"…","notes":"…","status":"done","kind":null,"at":null,"location":null}` for
/// a visit, `{"customer_id":"…","currency":"CNY","quote_no":null,"valid_until":null}` for a
/// quote. Visits and quotes take their customer's scope.
///
/// # Safety
/// `client` is a live handle; `kind` and `json` are valid NUL-terminated UTF-8 strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_create(
    client: *const FsClient,
    kind: *const c_char,
    json: *const c_char,
) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        let (c, kind, body) = unsafe { (handle(client)?, arg(kind, "kind")?, arg(json, "json")?) };
        let bad = |e: serde_json::Error| format!("invalid {kind}: {e}");
        let id = match kind {
            "customer" => {
                let new: NewCustomer = serde_json::from_str(body).map_err(bad)?;
                c.customers().create(new).map(DocId::from)
            }
            "visit" => {
                let new: NewVisit = serde_json::from_str(body).map_err(bad)?;
                c.visits().create(new).map(DocId::from)
            }
            "quote" => {
                let new: NewQuote = serde_json::from_str(body).map_err(bad)?;
                c.quotes().create(new).map(DocId::from)
            }
            other => return Err(format!("unknown kind `{other}`")),
        }
        .map_err(|e| e.to_string())?;
        out(id.to_string())
    })
}

/// Returns a document as JSON (its kind under `"kind"`), or NULL if it does not exist.
///
/// # Safety
/// `client` is a live handle; `id` is a valid NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_get(client: *const FsClient, id: *const c_char) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        let (c, id) = unsafe { (handle(client)?, arg(id, "id")?) };
        json(&c.document(doc_id(id)?).map_err(|e| e.to_string())?)
    })
}

/// Applies an edit given as JSON, e.g. `{"kind":"customer","edit":{"set":["industry","mining"]}}`
/// or `{"kind":"quote","edit":"submit"}`. Returns 0, or -1 on error (refused edits too, such as
/// a rep setting a credit limit).
///
/// # Safety
/// `client` is a live handle; `id` and `edit_json` are valid NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_edit(
    client: *const FsClient,
    id: *const c_char,
    edit_json: *const c_char,
) -> i32 {
    guard(-1, || {
        // SAFETY: forwarded from the caller.
        let (c, id, e) = unsafe { (handle(client)?, arg(id, "id")?, arg(edit_json, "edit")?) };
        let edit: Edit = serde_json::from_str(e).map_err(|e| format!("invalid edit: {e}"))?;
        c.apply_edit(doc_id(id)?, edit).map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// Runs a read-only SQL query over the projections (`customers`, `visits`, `quotes`,
/// `quote_lines`, `timeline`, …) and returns a JSON array of row objects.
///
/// # Safety
/// `client` is a live handle; `sql` is a valid NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_query(client: *const FsClient, sql: *const c_char) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        let (c, sql) = unsafe { (handle(client)?, arg(sql, "sql")?) };
        json(&c.query(sql, &[]).map_err(|e| e.to_string())?)
    })
}

/// Fields holding concurrent values, as a JSON array of `{doc_id, kind, path, values}`.
///
/// # Safety
/// `client` is a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_conflicts(client: *const FsClient) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        let c = unsafe { handle(client)? };
        json(&c.conflicts().map_err(|e| e.to_string())?)
    })
}

/// Number of local changes the relay has not acknowledged yet, or -1 on error.
///
/// # Safety
/// `client` is a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_outbox_len(client: *const FsClient) -> i64 {
    guard(-1, || {
        // SAFETY: forwarded from the caller.
        let c = unsafe { handle(client)? };
        let n = c.outbox_len().map_err(|e| e.to_string())?;
        Ok(i64::try_from(n).unwrap_or(i64::MAX))
    })
}

/// Syncs once with the relay at `relay` (`host:port`) whose certificate has the SHA-256
/// fingerprint `pin`, presenting `credential` (NULL if the relay accepts the device without
/// one). Blocks until caught up; returns the sync report as JSON.
///
/// # Safety
/// `client` is a live handle; `relay`, `pin` are valid NUL-terminated strings; `credential` is
/// NULL or one.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_sync(
    client: *const FsClient,
    relay: *const c_char,
    pin: *const c_char,
    credential: *const c_char,
) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        let (c, relay, pin) = unsafe { (handle(client)?, arg(relay, "relay")?, arg(pin, "pin")?) };
        let mut cfg = SyncConfig::new(relay, pin);
        if !credential.is_null() {
            // SAFETY: forwarded from the caller.
            cfg.credential = Some(unsafe { arg(credential, "credential") }?.to_string());
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let report = rt.block_on(sync_now(c, &cfg)).map_err(|e| e.to_string())?;
        json(&report)
    })
}

fn blob_hash(s: &str) -> Result<fieldsync_client::BlobHash, String> {
    s.parse()
}

/// Attaches the file at `path` to document `id` with a caption (NULL: none); its bytes are
/// stored once per content beside the replica and upload at the next sync. Returns the
/// attachment as JSON (`{"doc", "attachment": {"id", "hash", "size", "media_type", "name",
/// "caption", "author", "at", "removed_at"}, "has_preview", "bytes": {"state", …},
/// "refused"}`), or NULL on error.
///
/// # Safety
/// `client` is a live handle; `id` and `path` are valid NUL-terminated strings; `caption` is
/// NULL or one.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_attach_file(
    client: *const FsClient,
    id: *const c_char,
    path: *const c_char,
    caption: *const c_char,
) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        let (c, id, path) = unsafe { (handle(client)?, arg(id, "id")?, arg(path, "path")?) };
        let caption = if caption.is_null() {
            ""
        } else {
            // SAFETY: forwarded from the caller.
            unsafe { arg(caption, "caption") }?
        };
        let a = c
            .attachments()
            .attach_file(doc_id(id)?, std::path::Path::new(path), caption)
            .map_err(|e| e.to_string())?;
        json(&a)
    })
}

/// The attachments of document `id` (removed ones left out) as a JSON array of the objects
/// `fs_attach_file` returns; `bytes.state` is `here`, `downloading` or `not_here`.
///
/// # Safety
/// `client` is a live handle; `id` is a valid NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_attachments(client: *const FsClient, id: *const c_char) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        let (c, id) = unsafe { (handle(client)?, arg(id, "id")?) };
        json(
            &c.attachments()
                .list(doc_id(id)?)
                .map_err(|e| e.to_string())?,
        )
    })
}

/// Asks for the attachment of document `id` with content hash `hash` (64 hex digits) and
/// `size` bytes to be downloaded at the next sync. Returns 0, or -1 on error.
///
/// # Safety
/// `client` is a live handle; `id` and `hash` are valid NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_attachment_fetch(
    client: *const FsClient,
    id: *const c_char,
    hash: *const c_char,
    size: u64,
) -> i32 {
    guard(-1, || {
        // SAFETY: forwarded from the caller.
        let (c, id, hash) = unsafe { (handle(client)?, arg(id, "id")?, arg(hash, "hash")?) };
        c.attachments()
            .fetch(doc_id(id)?, blob_hash(hash)?, size)
            .map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// Writes the bytes of the attachment with content hash `hash`, checked against it, to the
/// file `out` (which appears only once complete). Returns the bytes written, or -1 on error
/// (also when the attachment is not on this computer yet: `fs_attachment_fetch` it).
///
/// # Safety
/// `client` is a live handle; `hash` and `out` are valid NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_attachment_save(
    client: *const FsClient,
    hash: *const c_char,
    out: *const c_char,
) -> i64 {
    guard(-1, || {
        // SAFETY: forwarded from the caller.
        let (c, hash, to) = unsafe { (handle(client)?, arg(hash, "hash")?, arg(out, "out")?) };
        let n = c
            .attachments()
            .save_to(blob_hash(hash)?, std::path::Path::new(to))
            .map_err(|e| e.to_string())?;
        Ok(i64::try_from(n).unwrap_or(i64::MAX))
    })
}

/// What waits to move, as JSON: `{"upload_files", "upload_bytes", "download_files",
/// "download_bytes"}`.
///
/// # Safety
/// `client` is a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fs_attachments_waiting(client: *const FsClient) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        let c = unsafe { handle(client)? };
        json(&c.attachments().waiting().map_err(|e| e.to_string())?)
    })
}

//! The C ABI's string entry points (`fs_create`, `fs_edit`, `fs_get`) called with arbitrary
//! bytes as NUL-terminated C strings, on a real replica opened with `fs_open`.
//!
//! Each input starts from a copy of one replica (fixed device id) holding a customer, a visit
//! and a quote with fixed ids, with the identity's role chosen by the first input byte. The
//! rest is split at NUL bytes into calls: each part's first byte picks the entry point (and,
//! for edits, the document: a base one or one created earlier in the input), the remaining
//! bytes are its string argument — the JSON of a new document or an edit, a kind, or an id.
//! `fs_open` takes no options, so its session actor and the ids `fs_create` mints are random:
//! an input replays the same calls, with other ids.
//!
//! Checked: no panic or abort, and none caught at the C boundary either (the ABI turns those
//! into "internal error" — a bug on bad input all the same); every failure is the documented
//! error value (NULL or -1) with a message in `fs_last_error`, every success an empty one; a
//! created document's id reads back with `fs_get` as JSON of its kind; returned strings are
//! JSON where documented; afterwards the replica passes `verify` and every document in it
//! reads as a typed document.
#![no_main]

mod common;

use std::ffi::{CStr, CString, c_char};
use std::path::PathBuf;
use std::sync::OnceLock;

use common::fail;
use fieldsync::{
    FsClient, fs_close, fs_conflicts, fs_create, fs_edit, fs_get, fs_last_error, fs_open,
    fs_outbox_len, fs_query, fs_string_free,
};
use fieldsync_client::{Client, Identity};
use fieldsync_core::model::{NewCustomer, NewQuote, NewVisit, VisitStatus};
use fieldsync_core::store::{Durability, StoreOptions};
use fieldsync_core::{DocId, Role};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

const TARGET: &str = "c_abi_json";

const DEVICE: Uuid = Uuid::from_u128(0x0f5a_11ce_0000_0001);
const CUSTOMER: DocId = common::doc(1);
const VISIT: DocId = common::doc(2);
const QUOTE: DocId = common::doc(3);
const ROLES: [Role; 4] = [Role::Rep, Role::Manager, Role::Director, Role::Admin];

struct World {
    dir: PathBuf,
    /// One template per role of the saved identity.
    templates: Vec<PathBuf>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = common::scratch(TARGET);
        let mut templates = Vec::new();
        for role in ROLES {
            let path = dir.join(format!("template-{role}.db"));
            let client = Client::open_with(
                &path,
                StoreOptions {
                    durability: Durability::Normal,
                    device_id: Some(DEVICE),
                    actor_suffix: Some([1; 8]),
                    ..StoreOptions::default()
                },
            )
            .expect("template");
            client
                .set_identity(Identity::new("fuzz", role, "acme"))
                .expect("identity");
            client
                .with_store(|store| {
                    store.transaction(|tx| {
                        let ctx = common::ctx(Role::Rep);
                        let new = NewCustomer {
                            org: "acme".into(),
                            scope: "north".into(),
                            name: "Baotou Mining".into(),
                            ..Default::default()
                        };
                        tx.create(CUSTOMER, |d, id| {
                            fieldsync_core::model::create_customer(d, id, &new, &ctx)
                        })?;
                        let visit = NewVisit {
                            customer_id: CUSTOMER.into(),
                            kind: None,
                            notes: Some("demo".into()),
                            status: VisitStatus::Done,
                            at: Some(common::T0),
                            location: None,
                        };
                        tx.create(VISIT, |d, id| {
                            fieldsync_core::model::create_visit(
                                d, id, "acme", "north", &visit, &ctx,
                            )
                        })?;
                        let quote = NewQuote {
                            customer_id: CUSTOMER.into(),
                            currency: "CNY".into(),
                            quote_no: None,
                            valid_until: None,
                        };
                        tx.create(QUOTE, |d, id| {
                            fieldsync_core::model::create_quote(
                                d, id, "acme", "north", &quote, &ctx,
                            )
                        })?;
                        Ok(())
                    })
                })
                .expect("base documents");
            drop(client);
            templates.push(path);
        }
        World { dir, templates }
    })
}

/// The message of the last error, checked against the call's result.
fn last_error(call: &str, failed: bool) -> String {
    // SAFETY: fs_last_error returns a valid NUL-terminated string owned by the library.
    let msg = unsafe { CStr::from_ptr(fs_last_error()) }
        .to_string_lossy()
        .into_owned();
    if msg.contains("panic caught at the C boundary") {
        fail(
            TARGET,
            &format!("{call}: a panic was caught at the C boundary: {msg}"),
        );
    }
    if failed == msg.is_empty() {
        fail(
            TARGET,
            &format!("{call}: the result says failed={failed}, fs_last_error says {msg:?}"),
        );
    }
    msg
}

/// Takes ownership of a returned string (freeing it), checking the error convention.
fn take(call: &str, p: *mut c_char) -> Option<String> {
    let _ = last_error(call, p.is_null());
    if p.is_null() {
        return None;
    }
    // SAFETY: a non-NULL result is a NUL-terminated string from the library.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: returned by the library, freed once.
    unsafe { fs_string_free(p) };
    Some(s)
}

fn json(call: &str, s: &str) -> serde_json::Value {
    serde_json::from_str(s)
        .unwrap_or_else(|e| fail(TARGET, &format!("{call} returned invalid JSON ({e}): {s}")))
}

fn get(c: *const FsClient, id: &CStr) -> Option<serde_json::Value> {
    // SAFETY: a live handle and a valid C string.
    let r = take("fs_get", unsafe { fs_get(c, id.as_ptr()) });
    r.map(|s| json("fs_get", &s))
}

fn create(c: *const FsClient, kind: &CStr, body: &CStr, created: &mut Vec<CString>) {
    // SAFETY: a live handle and valid C strings.
    let Some(id) = take("fs_create", unsafe {
        fs_create(c, kind.as_ptr(), body.as_ptr())
    }) else {
        return;
    };
    if id.parse::<DocId>().is_err() {
        fail(
            TARGET,
            &format!("fs_create returned {id:?}, not a document id"),
        );
    }
    let id = CString::new(id).expect("no NUL in an id");
    match get(c, &id) {
        Some(doc) if doc.get("kind").and_then(|k| k.as_str()) == kind.to_str().ok() => {}
        other => fail(
            TARGET,
            &format!("created {kind:?} {id:?} reads back as {other:?}"),
        ),
    }
    created.push(id);
}

fn call(c: *const FsClient, part: &[u8], created: &mut Vec<CString>) {
    let Some((&op, arg)) = part.split_first() else {
        return;
    };
    let arg = CString::new(arg).expect("parts are split at NUL");
    let mut ids: Vec<CString> = [CUSTOMER, VISIT, QUOTE]
        .iter()
        .map(|d| CString::new(d.to_string()).expect("id"))
        .collect();
    ids.extend(created.iter().cloned());
    let target = &ids[usize::from(op >> 3) % ids.len()];
    match op & 7 {
        0 => create(c, c"customer", &arg, created),
        1 => create(c, c"visit", &arg, created),
        2 => create(c, c"quote", &arg, created),
        3 => create(c, &arg, c"{\"scope\":\"north\",\"name\":\"K\"}", created),
        4 | 5 => {
            // SAFETY: a live handle and valid C strings.
            let r = unsafe { fs_edit(c, target.as_ptr(), arg.as_ptr()) };
            if r != 0 && r != -1 {
                fail(TARGET, &format!("fs_edit returned {r}"));
            }
            let _ = last_error("fs_edit", r == -1);
            if r == 0 && get(c, target).is_none() {
                fail(TARGET, "an edited document does not read");
            }
        }
        6 => {
            // SAFETY: a live handle and valid C strings.
            let r = unsafe {
                fs_edit(
                    c,
                    arg.as_ptr(),
                    c"{\"kind\":\"customer\",\"edit\":\"archive\"}".as_ptr(),
                )
            };
            let _ = last_error("fs_edit", r == -1);
        }
        _ => {
            let _ = get(c, &arg);
        }
    }
}

fn finish(c: *const FsClient) {
    // SAFETY: a live handle.
    let n = unsafe { fs_outbox_len(c) };
    let _ = last_error("fs_outbox_len", n < 0);
    if n < 0 {
        fail(TARGET, "fs_outbox_len failed");
    }
    // SAFETY: a live handle.
    match take("fs_conflicts", unsafe { fs_conflicts(c) }) {
        Some(s) => drop(json("fs_conflicts", &s)),
        None => fail(TARGET, "fs_conflicts failed"),
    }
    for sql in [
        c"SELECT * FROM customers",
        c"SELECT * FROM visits",
        c"SELECT * FROM quotes",
        c"SELECT * FROM quote_lines",
    ] {
        // SAFETY: a live handle and a valid C string.
        match take("fs_query", unsafe { fs_query(c, sql.as_ptr()) }) {
            Some(s) => drop(json("fs_query", &s)),
            None => fail(TARGET, &format!("fs_query({sql:?}) failed")),
        }
    }
}

fuzz_target!(
    init: {
        common::quiet_panics();
        world();
        let customer = CUSTOMER.to_string();
        let seeds: Vec<Vec<u8>> = [
            (0u8, "{\"scope\":\"north\",\"name\":\"Baotou Mining\",\"phone\":\"+86 139 0000 0001\",\
                   \"contacts\":[{\"name\":\"Wang\",\"phone\":\"139\"}]}".to_string()),
            (1, format!("{{\"customer_id\":\"{customer}\",\"notes\":\"n\",\"status\":\"done\",\
                         \"kind\":null,\"at\":null,\"location\":null}}")),
            (2, format!("{{\"customer_id\":\"{customer}\",\"currency\":\"CNY\",\
                         \"quote_no\":null,\"valid_until\":null}}")),
            (4, "{\"kind\":\"customer\",\"edit\":{\"set\":[\"industry\",\"mining\"]}}".into()),
            (4, "{\"kind\":\"customer\",\"edit\":{\"set_credit_limit\":{\"amount_minor\":100,\
                  \"currency\":\"CNY\"}}}".into()),
            (4 | 8, "{\"kind\":\"visit\",\"edit\":{\"set_satisfaction\":5}}".into()),
            (4 | 16, "{\"kind\":\"quote\",\"edit\":{\"add_line\":[\"l1\",{\"sku\":\"CAT\",\
                       \"qty\":2,\"unit_price_minor\":5,\"discount_bp\":100}]}}".into()),
            (4 | 16, "{\"kind\":\"quote\",\"edit\":\"submit\"}".into()),
            (7, customer.clone()),
        ]
        .into_iter()
        .flat_map(|(op, arg)| {
            (0..4u8).map(move |role| {
                let mut s = vec![role, op];
                s.extend_from_slice(arg.as_bytes());
                s
            })
        })
        .collect();
        common::write_seeds(TARGET, seeds);
    },
    |data: &[u8]| {
        let Some((&selector, rest)) = data.split_first() else {
            return;
        };
        let w = world();
        let path = w.dir.join("replica.db");
        common::copy_db(&w.templates[usize::from(selector & 3)], &path);
        let cpath = CString::new(path.to_str().expect("UTF-8 path")).expect("path");
        // SAFETY: a valid C string.
        let c = unsafe { fs_open(cpath.as_ptr()) };
        if c.is_null() {
            let _ = last_error("fs_open", true);
            fail(TARGET, "fs_open failed on a good replica");
        }
        let mut created = Vec::new();
        for part in rest.split(|b| *b == 0).take(32) {
            call(c, part, &mut created);
        }
        finish(c);
        // SAFETY: the handle from fs_open, closed once.
        unsafe { fs_close(c) };
        let client = Client::open(&path).unwrap_or_else(|e| fail(TARGET, &format!("reopen: {e}")));
        match client.verify() {
            Ok(p) if p.is_empty() => {}
            other => fail(TARGET, &format!("the replica fails verify: {other:?}")),
        }
        let ids = client.with_store(|s| s.all_heads()).expect("documents");
        for (id, _) in ids {
            if let Err(e) = client.document(id) {
                fail(TARGET, &format!("document {id} does not read: {e}"));
            }
        }
    }
);

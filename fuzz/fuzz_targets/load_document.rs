//! Arbitrary bytes loaded the way a replica loads a download: as a document snapshot and as a
//! change, through the checks that come before automerge sees them (`load_snapshot`:
//! size; `decode_change`: size, no compressed chunks, the operation budgets of
//! `fieldsync_core::budget` from the change's header; the nesting budget before any typed
//! read), then stored into a replica holding deterministic base documents (a customer, a visit
//! and a submitted quote with fixed ids, actor and times, one of them with incremental
//! changes not yet compacted) inside a transaction that is rolled back afterwards.
//!
//! Checked besides "no panic escapes": whatever loads or is stored can be saved and loaded
//! again with the same heads (the replica compacts documents with `save()`; bytes that load
//! once but not after saving would leave a document that no longer opens); a change accepted
//! by `decode_change` is within the per-change budgets and re-decodes to the same hash; a
//! snapshot the model reads is within the nesting budget.
#![no_main]

mod common;

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::{AutoCommit, Change};
use common::{Sample, fail, panic_message};
use fieldsync_core::DocId;
use fieldsync_core::budget::{self, MAX_CHANGE_OPS, MAX_DOC_OPS, MAX_NESTING, MAX_OPS_PER_BYTE};
use fieldsync_core::store::{
    Durability, Store, StoreError, StoreOptions, decode_change, load_snapshot, prepare_snapshot,
};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

const TARGET: &str = "load_document";

const DEVICE: Uuid = Uuid::from_u128(0x0f5a_11ce_0000_0001);
const REMOTE: Uuid = Uuid::from_u128(0x0f5a_11ce_0000_0002);
const CUSTOMER: DocId = common::doc(1);
const VISIT: DocId = common::doc(2);
const QUOTE: DocId = common::doc(3);
/// Not in the replica: the bytes would create it.
const ABSENT: DocId = common::doc(9);

fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => fail(
            TARGET,
            &format!("a panic escaped {what}: {}", panic_message(&*p)),
        ),
    }
}

thread_local! {
    static STORE: RefCell<Option<Store>> = const { RefCell::new(None) };
}

/// The replica with the base documents: the visit and quote downloaded as snapshots, the
/// customer as its changes (left uncompacted).
fn open_base() -> Store {
    let dir = common::scratch(TARGET);
    let samples: Vec<Sample> = common::customer_family(REMOTE, 1, "north", CUSTOMER, VISIT, QUOTE);
    let mut store = Store::open_with(
        dir.join("replica.db"),
        StoreOptions {
            durability: Durability::Normal,
            cache_docs: 8,
            compact_after: 1_000,
            device_id: Some(DEVICE),
            actor_suffix: Some([1; 8]),
            env: std::sync::Arc::new(fieldsync_core::env::SeededEnv::new(1, 1_700_000_000_000)),
            key: None,
        },
    )
    .expect("replica");
    store
        .transaction(|tx| {
            tx.apply_changes(CUSTOMER, &samples[0].changes)?;
            tx.apply_snapshot(VISIT, &samples[1].snapshot)?;
            tx.apply_snapshot(QUOTE, &samples[2].snapshot)?;
            Ok(())
        })
        .expect("base documents");
    store
}

/// `doc` saves into bytes that load again with the same heads.
fn saves_and_reloads(what: &str, doc: &mut AutoCommit) {
    let heads = doc.get_heads();
    let bytes = guarded("save", || doc.save());
    match guarded("load_snapshot", || load_snapshot(&bytes)) {
        Ok(mut again) => {
            if again.get_heads() != heads {
                fail(
                    TARGET,
                    &format!("{what}: saved and loaded again, the heads differ"),
                );
            }
        }
        Err(e) => fail(
            TARGET,
            &format!("{what}: saves into bytes that do not load: {e}"),
        ),
    }
}

fn change_within_budget(change: &Change, len: usize) {
    let ops = change.len();
    if ops > MAX_CHANGE_OPS || ops > len * MAX_OPS_PER_BYTE || change.max_op() > MAX_DOC_OPS {
        fail(
            TARGET,
            &format!(
                "decode_change accepted {ops} ops (max op {}) in {len} bytes",
                change.max_op()
            ),
        );
    }
    match guarded("Change::from_bytes", || {
        Change::from_bytes(change.raw_bytes().to_vec())
    }) {
        Ok(again) if again.hash() == change.hash() => {}
        _ => fail(
            TARGET,
            "an accepted change does not decode again to the same hash",
        ),
    }
}

fn one(store: &mut Store, data: &[u8]) {
    // The free functions the store and the relay use on bytes from elsewhere.
    if let Ok(mut doc) = guarded("load_snapshot", || load_snapshot(data)) {
        saves_and_reloads("a loaded snapshot", &mut doc);
    }
    if let Ok(change) = guarded("decode_change", || decode_change(data)) {
        change_within_budget(&change, data.len());
    }
    for id in [CUSTOMER, ABSENT] {
        if let Ok(p) = guarded("prepare_snapshot", || prepare_snapshot(id, data)) {
            drop(p);
            // It read as a document of this id; the model's reads stayed within the nesting
            // budget (a deeper document must not read).
            let doc = load_snapshot(data).expect("loaded once");
            if let Ok(depth) = budget::check_nesting(&doc)
                && depth > MAX_NESTING
            {
                fail(TARGET, &format!("a snapshot {depth} levels deep was read"));
            }
        }
    }
    // The document the bytes claim to hold, if they load and say (a snapshot of another
    // document is refused before it is merged).
    let holds = load_snapshot(data).ok().and_then(|d| {
        catch_unwind(AssertUnwindSafe(|| fieldsync_core::model::read_header(&d)))
            .ok()
            .and_then(Result::ok)
            .map(|h| h.id)
    });
    // Through the replica, as a download batch does, in a transaction rolled back after.
    let _ = guarded("Store::transaction", || {
        store.transaction(|tx| {
            for id in [CUSTOMER, VISIT, QUOTE, ABSENT] {
                let r = guarded("StoreTx::apply_changes", || {
                    tx.apply_changes(id, &[data.to_vec()])
                });
                if let Err(e @ StoreError::Sqlite(_)) = r {
                    fail(TARGET, &format!("apply_changes: {e}"));
                }
                if let Ok(doc) = guarded("StoreTx::automerge", || tx.automerge(id)) {
                    saves_and_reloads("a document after apply_changes", doc);
                }
                let _ = guarded("StoreTx::document", || tx.document(id));
            }
            for id in [QUOTE, holds.unwrap_or(ABSENT)] {
                let r = guarded("StoreTx::apply_snapshot", || tx.apply_snapshot(id, data));
                if let Err(e @ StoreError::Sqlite(_)) = r {
                    fail(TARGET, &format!("apply_snapshot: {e}"));
                }
                if let Ok(doc) = guarded("StoreTx::automerge", || tx.automerge(id)) {
                    saves_and_reloads("a document after apply_snapshot", doc);
                }
                let _ = guarded("StoreTx::document", || tx.document(id));
            }
            Err::<(), _>(StoreError::InvalidData("roll back".into()))
        })
    });
}

fuzz_target!(
    init: {
        common::quiet_panics();
        let samples = common::customer_family(REMOTE, 1, "north", CUSTOMER, VISIT, QUOTE);
        common::write_seeds(
            TARGET,
            samples
                .iter()
                .flat_map(|s| std::iter::once(s.snapshot.clone()).chain(s.changes.iter().cloned())),
        );
        STORE.with(|s| *s.borrow_mut() = Some(open_base()));
    },
    |data: &[u8]| {
        STORE.with(|s| {
            let mut s = s.borrow_mut();
            let store = s.as_mut().expect("opened in init");
            one(store, data);
        });
    }
);

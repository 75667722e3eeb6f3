//! `fieldsync-relay doc check`: the stored documents the relay cannot serve as they are.
//!
//! Budgets keep a document from growing past what relays and laptops load, but a document
//! stored before a budget existed, or restored from a damaged backup, can still be over one.
//! The relay then refuses changes to it (they wait in the devices' outboxes) and laptops skip
//! it. This walks every stored snapshot, page by page, through the same checks the relay and
//! the replicas apply when they load one (sizes, inflation, rows, nesting, a typed read), and
//! lists the documents that fail with the reason.

use fieldsync_core::DocId;
use fieldsync_core::ids::ALL_SCOPES;
use fieldsync_core::protocol::Lane;
use fieldsync_core::store::{guard, load_snapshot};

use crate::store::{RelayStore, RelayStoreError};

/// Bytes of snapshots read per page.
const PAGE_BYTES: usize = 16 << 20;

/// A stored document that fails to load.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The document.
    pub doc_id: DocId,
    /// Its stored snapshot's size.
    pub snapshot_bytes: usize,
    /// Why it does not load.
    pub reason: String,
}

/// What a check found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Documents checked.
    pub checked: usize,
    /// Those that fail.
    pub problems: Vec<Problem>,
}

/// Checks every stored document (blocks; reads the whole store once).
pub fn check_documents(store: &RelayStore) -> Result<Report, RelayStoreError> {
    let mut report = Report::default();
    let mut after: Option<DocId> = None;
    loop {
        let (page, more) = store.read_snapshots(ALL_SCOPES, after, PAGE_BYTES, Lane::All)?;
        for (id, snapshot) in &page {
            report.checked += 1;
            if let Err(reason) = check_one(snapshot) {
                report.problems.push(Problem {
                    doc_id: *id,
                    snapshot_bytes: snapshot.len(),
                    reason,
                });
            }
        }
        after = page.last().map(|(id, _)| *id);
        if !more || after.is_none() {
            return Ok(report);
        }
    }
}

/// Loads and reads one snapshot as a relay or replica would (the typed read bounds nesting
/// first; both run under `guard`).
fn check_one(snapshot: &[u8]) -> Result<(), String> {
    let doc = load_snapshot(snapshot).map_err(|e| e.to_string())?;
    guard("reading a stored document", || {
        fieldsync_core::model::read_document(&doc)
    })
    .map_err(|e| e.to_string())?
    .map(drop)
    .map_err(|e| format!("unreadable: {e}"))
}

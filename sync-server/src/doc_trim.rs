//! `fieldsync-relay doc trim`: makes a document that grew past its budget small enough to load
//! again.
//!
//! Automerge keeps every operation ever made, so deleting values does not shrink a document.
//! Trimming writes the document's current state as a new one-change history
//! ([`fieldsync_core::model::rewrite`]), leaving out the fields IT names with `--drop`, and
//! the relay stores it in place of the old history (`store::replace`). Laptops take the new
//! history when they next sync (one that had skipped the document loads it then) and carry
//! over their unacknowledged edits to it.
//!
//! The stored document is loaded with budgets eight times those of a relay or laptop (this
//! runs once, on IT's command): large enough for a document that outgrew the normal ones,
//! still bounded against a damaged one. The result must read as a document of its kind and
//! fit the normal budgets, or nothing is written and the report says which values are largest.

use automerge::{ActorId, AutoCommit, ReadDoc, Value};
use fieldsync_core::DocId;
use fieldsync_core::budget::{MAX_DOC_BYTES, SnapshotLimits};
use fieldsync_core::model::rewrite::{MapPath, largest_values, rewrite};
use fieldsync_core::model::{read_document, read_header};
use fieldsync_core::store::{guard, load_snapshot_within};
use uuid::Uuid;

use crate::store::{RelayStore, RelayStoreError};

/// How many of the largest values a report lists.
const LARGEST: usize = 10;

/// What a trim did (or, for a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrimReport {
    /// The document.
    pub doc_id: String,
    /// Its stored snapshot's size before.
    pub before_bytes: usize,
    /// The raw size of the new history (what the document budget measures).
    pub after_bytes: usize,
    /// The fields left out, as given.
    pub dropped: Vec<String>,
    /// The largest values of the trimmed document, path and bytes.
    pub largest: Vec<(String, usize)>,
    /// The log position of the replacement; `None` for a dry run.
    pub seq: Option<u64>,
}

/// Trims document `id` (see the module docs): leaves out the values at `drop` and replaces the
/// document's history with its current state. With `dry_run` nothing is written.
pub fn trim_document(
    store: &RelayStore,
    id: DocId,
    drop: &[MapPath],
    dry_run: bool,
) -> Result<TrimReport, RelayStoreError> {
    let mut report = TrimReport {
        doc_id: id.to_string(),
        dropped: drop.iter().map(|p| p.join("/")).collect(),
        ..TrimReport::default()
    };
    let replaced = store.replace_history(id, |stored| {
        report.before_bytes = stored.len();
        let mut new = trimmed(id, stored, drop)?;
        report.after_bytes = new
            .get_changes(&[])
            .iter()
            .map(|c| c.raw_bytes().len())
            .sum();
        report.largest = largest_values(&new, LARGEST);
        if report.after_bytes > MAX_DOC_BYTES {
            return Err(RelayStoreError::Invalid(format!(
                "the trimmed document still holds {} bytes, over the budget of {MAX_DOC_BYTES}; \
                 drop some of its largest values with --drop PATH: {}",
                report.after_bytes,
                listing(&report.largest)
            )));
        }
        Ok((!dry_run).then_some(new))
    })?;
    report.seq = replaced.map(|r| r.seq);
    Ok(report)
}

/// Loads the stored snapshot within the trim budgets and writes its state as a new history.
fn trimmed(id: DocId, stored: &[u8], drop: &[MapPath]) -> Result<AutoCommit, RelayStoreError> {
    let invalid = |what: String| RelayStoreError::Invalid(what);
    let src = load_snapshot_within(stored, SnapshotLimits::LOAD.times(8)).map_err(|e| {
        invalid(format!(
            "the stored document cannot be loaded even to trim it: {e}"
        ))
    })?;
    let header = guard("reading a stored document", || read_header(&src))
        .map_err(|e| invalid(e.to_string()))?
        .map_err(|e| invalid(format!("the stored document has no readable header: {e}")))?;
    if header.id != id {
        return Err(invalid(format!(
            "the stored document says it is {}, not {id}",
            header.id
        )));
    }
    for path in drop {
        if !holds(&src, path) {
            return Err(invalid(format!(
                "the document holds no value at {} (paths are map keys joined by /)",
                path.join("/")
            )));
        }
    }
    // The new history's author: the relay (a nil device prefix no enrolled device has), with
    // the time of the trim so two trims never share an actor.
    let mut actor = Uuid::nil().as_bytes().to_vec();
    actor.extend_from_slice(&fieldsync_core::ids::now_millis().to_be_bytes());
    let new = guard("rewriting a stored document", || {
        rewrite(&src, ActorId::from(actor), drop)
    })
    .map_err(|e| invalid(e.to_string()))?
    .map_err(|e| invalid(format!("the stored document cannot be rewritten: {e}")))?;
    guard("reading the trimmed document", || read_document(&new))
        .map_err(|e| invalid(e.to_string()))?
        .map_err(|e| {
            invalid(format!(
                "the trimmed document would not be readable ({e}); drop only optional values"
            ))
        })?;
    Ok(new)
}

/// Whether `doc` holds a value at a map path.
fn holds(doc: &AutoCommit, path: &MapPath) -> bool {
    let mut obj = automerge::ROOT;
    for (i, key) in path.iter().enumerate() {
        match doc.get(&obj, key.as_str()) {
            Ok(Some((Value::Object(_), id))) => obj = id,
            Ok(Some((Value::Scalar(_), _))) => return i + 1 == path.len(),
            _ => return false,
        }
    }
    !path.is_empty()
}

/// `path (bytes), …` for a message.
pub fn listing(values: &[(String, usize)]) -> String {
    values
        .iter()
        .map(|(p, n)| format!("{p} ({n} bytes)"))
        .collect::<Vec<_>>()
        .join(", ")
}

//! The relay's budgets applied to a local edit before it is queued: a change or a document the
//! relay would refuse for good is refused here, and the transaction that made it rolls back.

use automerge::{AutoCommit, Change};
use rusqlite::OptionalExtension;

use super::{MAX_CHANGE_BYTES, StoreError};
use crate::ids::DocId;

/// Documents stored in fewer bytes (snapshot and pending changes) are far under
/// [`crate::budget::MAX_DOC_BYTES`], even very compressible ones: a local edit to them is not
/// measured.
const MEASURE_DOC_FROM: i64 = 32 << 10;

/// Refuses a local edit that grows its document past the relay's size budget (the raw size
/// of every change it holds, as the relay measures it): the relay would refuse it for good, and
/// the edit would sit in the quarantine. Measured only for documents stored in enough bytes to
/// be near the budget.
pub(super) fn check_doc_size(
    tx: &rusqlite::Transaction<'_>,
    doc: &mut AutoCommit,
    id: DocId,
) -> Result<(), StoreError> {
    let stored: i64 = tx
        .prepare_cached(
            "SELECT length(snapshot) + COALESCE(
                (SELECT sum(length(bytes)) FROM doc_changes WHERE doc_id = ?1), 0)
             FROM docs WHERE id = ?1",
        )?
        .query_row([id.as_bytes()], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    if stored < MEASURE_DOC_FROM {
        return Ok(());
    }
    let raw: usize = doc
        .get_changes(&[])
        .iter()
        .map(|c| c.raw_bytes().len())
        .sum();
    if raw > crate::budget::MAX_DOC_BYTES {
        return Err(StoreError::Budget(format!(
            "over budget: the document would grow past {} bytes (to {raw})",
            crate::budget::MAX_DOC_BYTES
        )));
    }
    Ok(())
}

/// Refuses a local change the relay would refuse for good (over a per-change budget): it is
/// not queued, and the transaction that made it rolls back.
pub(super) fn check_local_change(c: &Change) -> Result<(), StoreError> {
    crate::budget::check_change(c, c.raw_bytes().len()).map_err(StoreError::Budget)?;
    if c.raw_bytes().len() > MAX_CHANGE_BYTES {
        return Err(StoreError::Budget(format!(
            "change of {} bytes, over the budget of {MAX_CHANGE_BYTES}",
            c.raw_bytes().len()
        )));
    }
    Ok(())
}

//! Replacing a document's history (`fieldsync-relay doc trim`, see `crate::doc_trim`).
//!
//! One write transaction reads the stored snapshot, lets the caller write the new history
//! from it, and stores that in place of the old one: the document's row, a log entry of kind
//! [`KIND_REPLACE`] carrying the new snapshot (laptops following the log take it in place of
//! their copy, see `fieldsync_core::store::replace`), and the change index. The old history's
//! change and snapshot entries leave the log: nobody needs them once the replacement is there,
//! and they are what made the document too large. Reading and writing in one transaction
//! means no upload can land in between and be lost.

use automerge::AutoCommit;
use fieldsync_core::DocId;
use uuid::Uuid;

use super::{BatchDb, DocRow, KIND_REPLACE, RelayStoreError, heads_bytes, save};

/// What a replacement stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replacement {
    /// The log position of the replacement entry.
    pub seq: u64,
    /// The scope the document is filed under.
    pub scope: String,
    /// The new snapshot's size.
    pub snapshot_bytes: usize,
}

/// Reads document `id`'s stored snapshot, asks `rewrite` for the new history and, if it gives
/// one, stores it in place of the old (see the module docs). `Ok(None)` when `rewrite` gave
/// none (a dry run); [`RelayStoreError::Invalid`] when the relay holds no such document.
pub(super) fn replace_history<D: BatchDb<Error = RelayStoreError>>(
    db: &D,
    id: DocId,
    at: i64,
    rewrite: impl FnOnce(&[u8]) -> Result<Option<AutoCommit>, RelayStoreError>,
) -> Result<Option<Replacement>, RelayStoreError> {
    let Some((kind, scope, customer, _)) = db.doc_meta(id)? else {
        return Err(RelayStoreError::Invalid(format!(
            "the relay holds no document {id}"
        )));
    };
    let old = db.doc_snapshot(id)?;
    let Some(mut doc) = rewrite(&old)? else {
        return Ok(None);
    };
    let snapshot = save(&mut doc, id)?;
    let changes = doc.get_changes(&[]);
    let raw_bytes = changes.iter().map(|c| c.raw_bytes().len()).sum();
    let seq = db.insert_log(
        &scope,
        id,
        KIND_REPLACE,
        None,
        Some(&snapshot),
        Uuid::nil(),
        at,
    )?;
    db.forget_history(id, seq)?;
    for c in &changes {
        db.insert_change(&c.hash().0, id, seq)?;
    }
    db.upsert_doc(&DocRow {
        doc_id: id,
        kind,
        scope: &scope,
        customer_id: customer.as_deref().and_then(DocId::from_slice),
        snapshot: &snapshot,
        heads: &heads_bytes(&mut doc),
        updated_seq: seq,
        raw_bytes,
    })?;
    // A trim may drop attachment entries (`--drop attachments/…`): who may fetch what, and
    // what the collector keeps, follow the new state.
    db.set_attachment_refs(id, &fieldsync_core::attachment::entry::live_hashes(&doc))?;
    Ok(Some(Replacement {
        seq: u64::try_from(seq).unwrap_or(0),
        scope,
        snapshot_bytes: snapshot.len(),
    }))
}

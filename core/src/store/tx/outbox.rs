//! The outbox inside a transaction: acknowledged changes leave it, refused ones move to the
//! quarantine and can be requeued, and downloads that did not load are recorded as skipped.

use automerge::ChangeHash;
use rusqlite::{OptionalExtension, params};

use super::StoreTx;
use crate::ids::DocId;
use crate::store::decode::{RawChange, causal_order, self_contained};
use crate::store::{Origin, StoreError};

impl StoreTx<'_> {
    /// Removes the outbox entries for changes the relay has durably stored.
    pub fn ack(&mut self, hashes: &[ChangeHash]) -> Result<usize, StoreError> {
        let mut del = self
            .tx
            .prepare_cached("DELETE FROM outbox WHERE hash = ?1")?;
        let mut n = 0;
        for h in hashes {
            n += del.execute([h.0])?;
        }
        Ok(n)
    }

    /// Moves a refused local change from the outbox into the quarantine, with the reason.
    pub fn quarantine(&mut self, hash: &ChangeHash, reason: &str) -> Result<bool, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .tx
            .prepare_cached("SELECT doc_id, bytes FROM outbox WHERE hash = ?1")?
            .query_row([hash.0], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((doc, bytes)) = row else {
            return Ok(false);
        };
        self.tx.execute(
            "INSERT OR REPLACE INTO quarantine (hash, doc_id, bytes, reason, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash.0, doc, bytes, reason, self.opts.env.now_millis()],
        )?;
        self.tx
            .execute("DELETE FROM outbox WHERE hash = ?1", [hash.0])?;
        Ok(true)
    }

    /// Moves quarantined local changes (all, or those of one document) back into the outbox,
    /// to be sent again at the next sync — after the cause of the refusal was fixed: a grant
    /// widened, a role raised. Each goes back into its document too (the replica rebuilt the
    /// document without it, or dropped it when its creation was refused), in causal order, as
    /// a local edit. Changes that cannot go back stay in the quarantine: those of a document
    /// this replica no longer holds that do not make a whole document on their own, and
    /// those of a document edited on this replica after the refusal (the later edits took
    /// their sequence numbers). Returns how many were requeued and how many stayed.
    pub fn requeue_quarantined(
        &mut self,
        doc: Option<DocId>,
    ) -> Result<(usize, usize), StoreError> {
        let rows: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = {
            let mut st = self.tx.prepare_cached(
                "SELECT doc_id, hash, bytes FROM quarantine
                  WHERE ?1 IS NULL OR doc_id = ?1 ORDER BY at, hash",
            )?;
            st.query_map([doc.map(|d| d.as_bytes().to_vec())], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let mut by_doc: std::collections::BTreeMap<DocId, Vec<RawChange>> =
            std::collections::BTreeMap::new();
        for (d, hash, bytes) in rows {
            let id = DocId::from_slice(&d).ok_or_else(|| {
                StoreError::InvalidData("quarantine row without a document".into())
            })?;
            by_doc.entry(id).or_default().push((hash, bytes));
        }
        let (mut requeued, mut kept) = (0, 0);
        let now = self.opts.env.now_millis();
        for (id, changes) in by_doc {
            let held = self
                .tx
                .prepare_cached("SELECT 1 FROM docs WHERE id = ?1")?
                .query_row([id.as_bytes()], |_| Ok(()))
                .optional()?
                .is_some();
            let ordered = causal_order(changes)?;
            // A document the replica dropped (its creation was refused) comes back only
            // from a whole history: every dependency among the quarantined changes.
            if !held && !self_contained(&ordered)? {
                kept += ordered.len();
                continue;
            }
            let raw: Vec<Vec<u8>> = ordered.iter().map(|(_, b)| b.clone()).collect();
            match self.apply_changes_as(id, &raw, Origin::Local) {
                Ok(_) => {}
                Err(e @ StoreError::Sqlite(_)) => return Err(e),
                Err(e) => {
                    // Typically: the document was edited after the refusal, and those edits
                    // took the refused changes' sequence numbers; automerge cannot hold both.
                    // Nothing was written; the changes stay quarantined.
                    tracing::warn!(doc = %id, error = %e, "cannot put quarantined changes back");
                    kept += ordered.len();
                    continue;
                }
            }
            let mut ins = self.tx.prepare_cached(
                "INSERT OR IGNORE INTO outbox (doc_id, hash, bytes, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut del = self
                .tx
                .prepare_cached("DELETE FROM quarantine WHERE hash = ?1")?;
            for (hash, bytes) in &ordered {
                ins.execute(params![id.as_bytes(), hash, bytes, now])?;
                del.execute([hash])?;
            }
            requeued += ordered.len();
        }
        Ok((requeued, kept))
    }

    /// Whether the outbox still holds changes to a document.
    pub fn has_pending(&self, id: DocId) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT 1 FROM outbox WHERE doc_id = ?1 LIMIT 1")?
            .query_row([id.as_bytes()], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Records that a downloaded item of document `id` could not be loaded (see
    /// [`Store::skipped`](crate::store::Store::skipped)).
    pub fn record_skipped(&mut self, id: DocId, reason: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO skipped (doc_id, reason, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (doc_id) DO UPDATE SET reason = excluded.reason, at = excluded.at",
            )?
            .execute(params![id.as_bytes(), reason, self.opts.env.now_millis()])?;
        Ok(())
    }

    /// Forgets that document `id` was skipped (a snapshot of it loaded).
    pub fn clear_skipped(&mut self, id: DocId) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM skipped WHERE doc_id = ?1")?
            .execute([id.as_bytes()])?;
        Ok(())
    }
}

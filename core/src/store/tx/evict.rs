//! Documents leaving the replica when they leave the device's scopes; one with local changes
//! still waiting for the relay is only marked, and removed once they are acknowledged.

use super::StoreTx;
use crate::ids::DocId;
use crate::store::projection;
use crate::store::{DocEvent, Origin, StoreError};

impl StoreTx<'_> {
    /// Removes a document that left the device's scopes. If local changes to it are still
    /// waiting for the relay, it is only marked and removed once they are acknowledged
    /// (see [`StoreTx::evict_acknowledged`]); unsynced edits are never thrown away.
    /// Returns whether it was removed now.
    pub fn evict(&mut self, id: DocId) -> Result<bool, StoreError> {
        if self.has_pending(id)? {
            self.tx.execute(
                "UPDATE docs SET evict_pending = 1 WHERE id = ?1",
                [id.as_bytes()],
            )?;
            return Ok(false);
        }
        projection::clear(&self.tx, &id.to_string())?;
        self.tx
            .execute("DELETE FROM doc_changes WHERE doc_id = ?1", [id.as_bytes()])?;
        let n = self
            .tx
            .execute("DELETE FROM docs WHERE id = ?1", [id.as_bytes()])?;
        self.cache.remove(&id);
        if n > 0 {
            self.events.push(DocEvent {
                id,
                kind: None,
                origin: Origin::Remote,
                evicted: true,
            });
        }
        Ok(n > 0)
    }

    /// Removes documents marked for eviction whose local changes are all acknowledged.
    pub fn evict_acknowledged(&mut self) -> Result<usize, StoreError> {
        let ids: Vec<DocId> = self
            .tx
            .prepare_cached(
                "SELECT id FROM docs d WHERE evict_pending = 1
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.doc_id = d.id)",
            )?
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .filter_map(|r| r.ok().and_then(|b| DocId::from_slice(&b)))
            .collect();
        for id in &ids {
            self.evict(*id)?;
        }
        Ok(ids.len())
    }

    /// Marks a document to leave the replica; it is removed by
    /// [`StoreTx::evict_acknowledged`] once its local changes are acknowledged, unless
    /// [`StoreTx::cancel_eviction`] keeps it first. Returns whether the document exists.
    pub fn mark_eviction(&mut self, id: DocId) -> Result<bool, StoreError> {
        Ok(self.tx.execute(
            "UPDATE docs SET evict_pending = 1 WHERE id = ?1",
            [id.as_bytes()],
        )? > 0)
    }

    /// Keeps a document that was marked for eviction (it came back into the device's scopes
    /// before its local changes were acknowledged). Returns whether it was marked.
    pub fn cancel_eviction(&mut self, id: DocId) -> Result<bool, StoreError> {
        // Cached: it runs for every snapshot of a download.
        Ok(self
            .tx
            .prepare_cached(
                "UPDATE docs SET evict_pending = 0 WHERE id = ?1 AND evict_pending = 1",
            )?
            .execute([id.as_bytes()])?
            > 0)
    }
}

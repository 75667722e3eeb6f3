//! Changes and snapshots received from elsewhere (sync, import) merged into the replica's
//! documents, each checked before automerge applies it and guarded while it does.

use automerge::AutoCommit;
use rusqlite::OptionalExtension;

use super::StoreTx;
use crate::ids::DocId;
use crate::model::ModelError;
use crate::store::cache::load_cached;
use crate::store::decode::heads_to_bytes;
use crate::store::projection::project_read;
use crate::store::{
    DocEvent, Origin, PreparedSnapshot, StoreError, decode_change, guard, precheck_changes,
    prepare_snapshot,
};

impl StoreTx<'_> {
    /// Merges raw Automerge changes received from elsewhere into a document (creating it if
    /// new). Returns how many of them were new. Changes whose dependencies have not arrived yet
    /// are stored and applied once they do.
    pub fn apply_changes(&mut self, id: DocId, changes: &[Vec<u8>]) -> Result<usize, StoreError> {
        self.apply_changes_as(id, changes, Origin::Remote)
    }

    pub(super) fn apply_changes_as(
        &mut self,
        id: DocId,
        changes: &[Vec<u8>],
        origin: Origin,
    ) -> Result<usize, StoreError> {
        let decoded = changes
            .iter()
            .map(|b| decode_change(b))
            .collect::<Result<Vec<_>, _>>()?;
        let exists = self.cache.docs.contains_key(&id)
            || self
                .tx
                .prepare_cached("SELECT 1 FROM docs WHERE id = ?1")?
                .query_row([id.as_bytes()], |_| Ok(()))
                .optional()?
                .is_some();
        if !exists {
            let mut doc = AutoCommit::new();
            doc.set_actor(self.actor.clone());
            self.cache.insert(id, doc);
        }
        let doc = load_cached(&self.tx, self.cache, self.actor, id)?;
        let mut fresh_hashes = Vec::new();
        let mut fresh_raw = Vec::new();
        let mut fresh = Vec::new();
        for (c, raw) in decoded.into_iter().zip(changes) {
            // From the change graph; `get_change_by_hash` would rebuild the change from the
            // document's columns. (A change waiting for its dependencies counts as new, as it
            // did there: applying it again is harmless.)
            let held = doc.get_missing_deps(&[c.hash()]).is_empty();
            if !held && !fresh_hashes.contains(&c.hash()) {
                fresh_hashes.push(c.hash());
                fresh_raw.push(raw.clone());
                fresh.push(c);
            }
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        // A change that does not fit the document is refused before automerge sees it (it
        // could panic part way, and the cached document would have to be dropped).
        let structure = precheck_changes(doc, &fresh)?;
        // Changes that make no object cannot deepen the document, if they are all that is
        // applied and all were checked: automerge also applies changes queued for missing
        // dependencies (from earlier calls, or from this batch out of order), which the check
        // did not see.
        let bounded_from = (!structure.makes_objects
            && !structure.waiting
            && doc.get_missing_deps(&[]).is_empty())
        .then(|| doc.get_heads());
        let result = guard("applying changes", || doc.apply_changes(fresh));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.cache.remove(&id);
                return Err(StoreError::InvalidData(e.to_string()));
            }
            Err(e) => {
                self.cache.remove(&id);
                return Err(e);
            }
        }
        let n = fresh_hashes.len();
        self.persist(
            id,
            &fresh_hashes,
            &fresh_raw,
            origin,
            bounded_from.as_deref(),
        )?;
        Ok(n)
    }

    /// Merges a saved document (a snapshot) received from elsewhere, creating it if new.
    /// Returns whether the replica's document changed.
    pub fn apply_snapshot(&mut self, id: DocId, bytes: &[u8]) -> Result<bool, StoreError> {
        let mut prepared = prepare_snapshot(id, bytes)?;
        self.apply_prepared_snapshot(id, bytes, &mut prepared)
    }

    /// [`StoreTx::apply_snapshot`] with the loading and reading done ahead
    /// ([`prepare_snapshot`] of the same `id` and `bytes`). Uses up `prepared`; what is left
    /// of it can be freed on any thread
    /// ([`PreparedQueue::discard`](crate::store::PreparedQueue::discard)).
    pub fn apply_prepared_snapshot(
        &mut self,
        id: DocId,
        bytes: &[u8],
        prepared: &mut PreparedSnapshot,
    ) -> Result<bool, StoreError> {
        let read = std::mem::replace(
            &mut prepared.read,
            Err(ModelError::Malformed("snapshot already applied".into())),
        );
        let exists = self.exists(id)?;
        if !exists && !self.cache.docs.contains_key(&id) {
            // New to this replica (the bulk of a first download): the received document is
            // the document, and the bytes that just loaded are its snapshot. Merging it into
            // an empty document and saving that again would cost as much as everything else.
            // The loaded document is not kept in the cache: a first download touches each
            // document once, and evicting thousands of them would cost the writing thread
            // as much as loading them cost the helpers.
            let typed = project_read(&self.tx, read, true)?;
            self.insert_doc_row(
                id,
                typed.as_ref(),
                bytes,
                &heads_to_bytes(&prepared.heads),
                0,
                {
                    let now = self.opts.env.now_millis();
                    (now, Some(now))
                },
            )?;
            self.events.push(DocEvent {
                id,
                kind: typed.as_ref().map(|d| d.header().kind),
                origin: Origin::Remote,
                evicted: false,
            });
            return Ok(true);
        }
        let Some(mut incoming) = prepared.doc.take() else {
            return Err(StoreError::InvalidData(format!(
                "snapshot of {id} was already applied"
            )));
        };
        let doc = load_cached(&self.tx, self.cache, self.actor, id)?;
        let before = doc.get_heads();
        match guard("merging a snapshot", || doc.merge(&mut incoming)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                self.cache.remove(&id);
                return Err(StoreError::InvalidData(e.to_string()));
            }
            Err(e) => {
                self.cache.remove(&id);
                return Err(e);
            }
        }
        if exists && doc.get_heads() == before {
            return Ok(false);
        }
        self.persist(id, &[], &[], Origin::Remote, None)?;
        self.compact(id)?;
        Ok(true)
    }
}

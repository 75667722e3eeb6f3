//! The documents a replica keeps loaded: a small least-recently-used [`DocCache`], filled by
//! [`load_cached`] from a document's stored snapshot and the changes stored since.

use std::collections::HashMap;

use automerge::{ActorId, AutoCommit, ChangeHash};
use rusqlite::{Connection, OptionalExtension};

use super::{StoreError, decode_change, guard, load_snapshot};
use crate::ids::DocId;

/// A small least-recently-used cache of loaded documents.
pub(super) struct DocCache {
    cap: usize,
    tick: u64,
    pub(super) docs: HashMap<DocId, (AutoCommit, u64)>,
    /// For a cached document whose nesting was found within
    /// [`crate::budget::MAX_NESTING`], the heads it was found so at (see
    /// [`DocCache::bounded_at`]).
    bounded: HashMap<DocId, Vec<ChangeHash>>,
}

impl DocCache {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            tick: 0,
            docs: HashMap::new(),
            bounded: HashMap::new(),
        }
    }

    /// The heads at which cached document `id` was last read and found nested no deeper
    /// than [`crate::budget::MAX_NESTING`]. Only objects deepen a document, so changes
    /// applied on exactly those heads that make no object leave it within the bound, and
    /// reading it again needs no walk of its objects.
    pub(super) fn bounded_at(&self, id: &DocId) -> Option<&[ChangeHash]> {
        self.bounded.get(id).map(Vec::as_slice)
    }

    /// Records that cached document `id` is within the nesting bound at `heads` (`None`:
    /// not known).
    pub(super) fn set_bounded(&mut self, id: DocId, heads: Option<Vec<ChangeHash>>) {
        match heads {
            Some(h) if self.docs.contains_key(&id) => {
                self.bounded.insert(id, h);
            }
            _ => {
                self.bounded.remove(&id);
            }
        }
    }

    fn get(&mut self, id: &DocId) -> Option<&mut AutoCommit> {
        self.tick += 1;
        let t = self.tick;
        self.docs.get_mut(id).map(|(d, used)| {
            *used = t;
            d
        })
    }

    pub(super) fn insert(&mut self, id: DocId, doc: AutoCommit) {
        if self.docs.len() >= self.cap
            && !self.docs.contains_key(&id)
            && let Some(oldest) = self
                .docs
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
        {
            self.docs.remove(&oldest);
            self.bounded.remove(&oldest);
        }
        self.tick += 1;
        self.docs.insert(id, (doc, self.tick));
        self.bounded.remove(&id);
    }

    pub(super) fn remove(&mut self, id: &DocId) {
        self.docs.remove(id);
        self.bounded.remove(id);
    }

    /// Drops every document.
    pub(super) fn clear(&mut self) {
        self.docs.clear();
        self.bounded.clear();
    }
}

/// Loads a document from the cache or from SQLite (snapshot plus incremental changes).
pub(super) fn load_cached<'c>(
    conn: &Connection,
    cache: &'c mut DocCache,
    actor: &ActorId,
    id: DocId,
) -> Result<&'c mut AutoCommit, StoreError> {
    if cache.docs.contains_key(&id) {
        return cache.get(&id).ok_or(StoreError::NotFound(id));
    }
    let snapshot: Option<Vec<u8>> = conn
        .prepare_cached("SELECT snapshot FROM docs WHERE id = ?1")?
        .query_row([id.as_bytes()], |r| r.get(0))
        .optional()?;
    let snapshot = snapshot.ok_or(StoreError::NotFound(id))?;
    let mut doc = load_snapshot(&snapshot)?;
    let mut st = conn.prepare_cached("SELECT bytes FROM doc_changes WHERE doc_id = ?1")?;
    let changes = st
        .query_map([id.as_bytes()], |r| r.get::<_, Vec<u8>>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    if !changes.is_empty() {
        let decoded = changes
            .iter()
            .map(|b| decode_change(b))
            .collect::<Result<Vec<_>, _>>()?;
        guard("applying stored changes", || doc.apply_changes(decoded))?
            .map_err(|e| StoreError::InvalidData(e.to_string()))?;
    }
    doc.set_actor(actor.clone());
    cache.insert(id, doc);
    cache.get(&id).ok_or(StoreError::NotFound(id))
}

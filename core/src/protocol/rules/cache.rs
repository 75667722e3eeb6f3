//! [`DocCache`]: the documents the relay loaded to validate writes, kept for the next upload.

use std::collections::HashMap;

use automerge::AutoCommit;

use crate::ids::DocId;

/// A small least-recently-used cache of loaded documents.
pub struct DocCache {
    cap: usize,
    tick: u64,
    /// Each document with its last use and the `updated_seq` it was cached at.
    docs: HashMap<DocId, (AutoCommit, u64, i64)>,
}

impl DocCache {
    /// A cache of at most `cap` documents.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            tick: 0,
            docs: HashMap::new(),
        }
    }

    /// Takes a document out if it was cached at `updated_seq` (a copy cached at another
    /// position is stale and dropped).
    pub fn take(&mut self, id: &DocId, updated_seq: i64) -> Option<AutoCommit> {
        self.docs
            .remove(id)
            .and_then(|(d, _, at)| (at == updated_seq).then_some(d))
    }

    /// Caches a document loaded at `updated_seq`, evicting the least recently used when full.
    pub fn insert(&mut self, id: DocId, doc: AutoCommit, updated_seq: i64) {
        if self.docs.len() >= self.cap && !self.docs.contains_key(&id) {
            // Evict the least recently used eighth at once: one pass over the cache per
            // `cap / 8` insertions instead of one per insertion.
            let mut ticks: Vec<u64> = self.docs.values().map(|(_, t, _)| *t).collect();
            let n = (self.cap / 8).max(1).min(ticks.len()) - 1;
            let (_, cutoff, _) = ticks.select_nth_unstable(n);
            let cutoff = *cutoff;
            self.docs.retain(|_, (_, t, _)| *t > cutoff);
        }
        self.tick += 1;
        self.docs.insert(id, (doc, self.tick, updated_seq));
    }

    /// Drops every document (after a transaction that may have cached some rolled back).
    pub fn clear(&mut self) {
        self.docs.clear();
    }

    /// How many documents it holds at most.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// How many documents it holds.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }
}

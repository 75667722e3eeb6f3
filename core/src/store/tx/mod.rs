//! The write transaction ([`StoreTx`]) and what every kind of write shares: storing changes new
//! to a document (with its heads and projection rows), compaction, and metadata and document
//! reads inside the transaction. Local edits, received changes, the outbox and eviction each
//! add an `impl StoreTx` block in a file of their own.

mod evict;
mod local;
mod outbox;
mod remote;

use automerge::{ActorId, AutoCommit, ChangeHash};
use rusqlite::{OptionalExtension, params};

use super::cache::{DocCache, load_cached};
use super::decode::heads_to_bytes;
use super::projection::{project_read, read_for_projection};
use super::{DocEvent, Origin, StoreError, StoreOptions, guard};
use crate::ids::DocId;
use crate::model::{self, Document};

/// One write transaction on the replica (see
/// [`Store::transaction`](crate::store::Store::transaction)).
pub struct StoreTx<'s> {
    pub(super) tx: rusqlite::Transaction<'s>,
    pub(super) cache: &'s mut DocCache,
    pub(super) actor: &'s ActorId,
    pub(super) opts: &'s StoreOptions,
    pub(super) events: Vec<DocEvent>,
}

impl StoreTx<'_> {
    /// Whether the replica holds document `id`.
    pub(super) fn exists(&self, id: DocId) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT 1 FROM docs WHERE id = ?1")?
            .query_row([id.as_bytes()], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// When document `id` last received changes from elsewhere (`None`: never, or not here).
    pub fn received_at(&self, id: DocId) -> Result<Option<i64>, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT received_at FROM docs WHERE id = ?1")?
            .query_row([id.as_bytes()], |r| r.get(0))
            .optional()?
            .flatten())
    }

    /// Sets when document `id` last received changes from elsewhere: a document rebuilt here
    /// from changes it already held keeps the time they arrived.
    pub fn set_received_at(&mut self, id: DocId, at: Option<i64>) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE docs SET received_at = ?2 WHERE id = ?1",
            params![id.as_bytes(), at],
        )?;
        Ok(())
    }

    /// Stores changes new to a (cached, already updated) document: appends them to
    /// `doc_changes`, compacts when enough have accumulated, updates the heads and projections.
    /// `bounded_from`: the heads the changes were applied on, when they made no object and
    /// nothing else was applied with them; if the document was within the nesting bound
    /// there (`DocCache::bounded_at`), it still is, and its reading skips the walk.
    pub(super) fn persist(
        &mut self,
        id: DocId,
        hashes: &[ChangeHash],
        raw: &[Vec<u8>],
        origin: Origin,
        bounded_from: Option<&[ChangeHash]>,
    ) -> Result<(), StoreError> {
        // (Only cached documents have a bound recorded.)
        let within_depth = bounded_from.is_some_and(|h| self.cache.bounded_at(&id) == Some(h));
        let doc = load_cached(&self.tx, self.cache, self.actor, id)?;
        let read = read_for_projection(doc, true, within_depth);
        let now_heads = doc.get_heads();
        let heads = heads_to_bytes(&now_heads);
        // Read without error: nested within the bound at these heads.
        self.cache
            .set_bounded(id, read.is_ok().then_some(now_heads));
        // A document must say it is the one it is filed under (a downloaded snapshot is
        // checked for this before it is merged): projection rows are keyed by the header's
        // id, so changes writing another id would replace that document's rows. The relay
        // refuses such changes on upload; nothing is written here and the cached copy, which
        // holds them, is dropped.
        if let Ok((d, _)) = &read
            && d.header().id != id
        {
            self.cache.remove(&id);
            return Err(StoreError::InvalidData(format!(
                "changes to document {id} write the id of document {}",
                d.header().id
            )));
        }
        {
            let mut ins = self.tx.prepare_cached(
                "INSERT OR IGNORE INTO doc_changes (doc_id, hash, bytes) VALUES (?1, ?2, ?3)",
            )?;
            for (h, b) in hashes.iter().zip(raw) {
                ins.execute(params![id.as_bytes(), h.0, b])?;
            }
        }
        let typed = project_read(&self.tx, read, false)?;
        let now = self.opts.env.now_millis();
        let exists = self
            .tx
            .prepare_cached(
                "UPDATE docs SET heads = ?2, pending_changes = pending_changes + ?3, updated_at = ?4,
                   received_at = COALESCE(?5, received_at)
                 WHERE id = ?1",
            )?
            .execute(params![
                id.as_bytes(),
                heads,
                hashes.len() as i64,
                now,
                (origin == Origin::Remote).then_some(now),
            ])?
            > 0;
        if exists && let Some(d) = &typed {
            // Filing columns are indexed: written only when they change (rarely: a move),
            // so that an ordinary change does not rewrite two index pages.
            self.tx
                .prepare_cached(
                    "UPDATE docs SET kind = ?2, scope = ?3, customer_id = COALESCE(?4, customer_id)
                     WHERE id = ?1 AND (kind IS NOT ?2 OR scope IS NOT ?3
                       OR (?4 IS NOT NULL AND customer_id IS NOT ?4))",
                )?
                .execute(params![
                    id.as_bytes(),
                    d.header().kind.code(),
                    d.header().scope.clone(),
                    d.customer_id().map(|c| c.as_bytes().to_vec()),
                ])?;
        }
        if !exists {
            let empty = AutoCommit::new().save();
            let received = (origin == Origin::Remote).then_some(now);
            self.insert_doc_row(
                id,
                typed.as_ref(),
                &empty,
                &heads,
                hashes.len() as i64,
                (now, received),
            )?;
        }
        let pending: i64 = self
            .tx
            .prepare_cached("SELECT pending_changes FROM docs WHERE id = ?1")?
            .query_row([id.as_bytes()], |r| r.get(0))?;
        if pending >= self.opts.compact_after {
            self.compact(id)?;
        }
        self.events.push(DocEvent {
            id,
            kind: typed.as_ref().map(|d| d.header().kind),
            origin,
            evicted: false,
        });
        Ok(())
    }

    /// Inserts a new document's row: the kind, scope and customer of its typed header (none
    /// while it has no header), its snapshot and heads, how many of its changes wait in
    /// `doc_changes` beside the snapshot, and when (`at`: written, and received from
    /// elsewhere if it was).
    pub(super) fn insert_doc_row(
        &self,
        id: DocId,
        typed: Option<&Document>,
        snapshot: &[u8],
        heads: &[u8],
        pending: i64,
        at: (i64, Option<i64>),
    ) -> Result<(), StoreError> {
        let (now, received) = at;
        self.tx
            .prepare_cached(
                "INSERT INTO docs (id, kind, scope, customer_id, snapshot, heads, pending_changes, updated_at,
                   received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                id.as_bytes(),
                typed.map(|d| d.header().kind.code()),
                typed.map(|d| d.header().scope.clone()),
                typed.and_then(Document::customer_id).map(|c| c.as_bytes().to_vec()),
                snapshot,
                heads,
                pending,
                now,
                received,
            ])?;
        Ok(())
    }

    /// Writes a fresh snapshot of a document and drops the incremental changes it contains.
    /// Changes still waiting for missing dependencies are kept.
    pub fn compact(&mut self, id: DocId) -> Result<(), StoreError> {
        let doc = load_cached(&self.tx, self.cache, self.actor, id)?;
        let snapshot = doc.save();
        let mut st = self
            .tx
            .prepare_cached("SELECT hash FROM doc_changes WHERE doc_id = ?1")?;
        let stored: Vec<Vec<u8>> = st
            .query_map([id.as_bytes()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut kept = 0i64;
        let mut del = self
            .tx
            .prepare_cached("DELETE FROM doc_changes WHERE doc_id = ?1 AND hash = ?2")?;
        for h in stored {
            let applied = ChangeHash::try_from(h.as_slice())
                .ok()
                .is_some_and(|hash| doc.get_change_by_hash(&hash).is_some());
            if applied {
                del.execute(params![id.as_bytes(), h])?;
            } else {
                kept += 1;
            }
        }
        self.tx
            .prepare_cached("UPDATE docs SET snapshot = ?2, pending_changes = ?3 WHERE id = ?1")?
            .execute(params![id.as_bytes(), snapshot, kept])?;
        Ok(())
    }

    /// Writes a metadata value (e.g. the sync cursor) in this transaction.
    pub fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    /// Reads a metadata value inside this transaction.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Reads a typed document inside this transaction.
    pub fn document(&mut self, id: DocId) -> Result<Document, StoreError> {
        let doc = load_cached(&self.tx, self.cache, self.actor, id)?;
        Ok(guard("reading a document", || model::read_document(doc))??)
    }

    /// The Automerge document, loaded inside this transaction.
    pub fn automerge(&mut self, id: DocId) -> Result<&mut AutoCommit, StoreError> {
        load_cached(&self.tx, self.cache, self.actor, id)
    }
}

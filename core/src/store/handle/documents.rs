//! Documents through the handle: created or edited in a transaction of their own, read typed
//! or as Automerge, exported and imported, and the heads of each.

use automerge::{AutoCommit, ChangeHash};
use rusqlite::OptionalExtension;

use super::Store;
use crate::ids::DocId;
use crate::model::{self, Document, ModelError};
use crate::store::cache::load_cached;
use crate::store::{Committed, StoreError, guard, heads_from_bytes, load_snapshot};

impl Store {
    /// Creates a document with a fresh id by running `init` on an empty Automerge document.
    pub fn create(
        &mut self,
        init: impl FnOnce(&mut AutoCommit, DocId) -> Result<(), ModelError>,
    ) -> Result<Committed, StoreError> {
        let id = self.opts.env.doc_id();
        self.transaction(|tx| tx.create(id, init))
    }

    /// Applies a local edit to a document in its own transaction.
    pub fn edit(
        &mut self,
        id: DocId,
        f: impl FnOnce(&mut AutoCommit) -> Result<(), ModelError>,
    ) -> Result<Committed, StoreError> {
        self.transaction(|tx| tx.edit(id, f))
    }

    /// Reads a typed document.
    pub fn document(&mut self, id: DocId) -> Result<Document, StoreError> {
        let doc = load_cached(&self.conn, &mut self.cache, &self.actor, id)?;
        Ok(guard("reading a document", || model::read_document(doc))??)
    }

    /// Whether the replica holds a document.
    pub fn contains(&self, id: DocId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM docs WHERE id = ?1", [id.as_bytes()], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// A copy of the Automerge document (for inspection or export).
    pub fn automerge(&mut self, id: DocId) -> Result<AutoCommit, StoreError> {
        Ok(load_cached(&self.conn, &mut self.cache, &self.actor, id)?.clone())
    }

    /// The document's full Automerge bytes (`save()`), for export to another system.
    pub fn export(&mut self, id: DocId) -> Result<Vec<u8>, StoreError> {
        Ok(load_cached(&self.conn, &mut self.cache, &self.actor, id)?.save())
    }

    /// Merges Automerge bytes (a saved document, as from [`Store::export`]) into the replica.
    /// Returns the document id read from the bytes' header.
    pub fn import(&mut self, bytes: &[u8]) -> Result<DocId, StoreError> {
        let mut incoming = load_snapshot(bytes)?;
        let header = model::read_header(&incoming)?;
        let _ = incoming.get_heads();
        self.transaction(|tx| tx.apply_snapshot(header.id, bytes).map(|_| header.id))
    }

    /// The current heads of a document.
    pub fn heads(&self, id: DocId) -> Result<Vec<ChangeHash>, StoreError> {
        let b: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT heads FROM docs WHERE id = ?1",
                [id.as_bytes()],
                |r| r.get(0),
            )
            .optional()?;
        b.map(|b| heads_from_bytes(&b))
            .ok_or(StoreError::NotFound(id))
    }

    /// Every document id with its heads, ordered by id (for repair).
    pub fn all_heads(&self) -> Result<Vec<(DocId, Vec<ChangeHash>)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, heads FROM docs ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, heads) = row?;
            if let Some(id) = DocId::from_slice(&id) {
                out.push((id, heads_from_bytes(&heads)));
            }
        }
        Ok(out)
    }

    /// Number of documents in the replica.
    pub fn doc_count(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM docs", [], |r| r.get(0))?)
    }
}

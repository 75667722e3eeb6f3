//! Local edits: a new document, or a change to one, queued in the outbox in the same
//! transaction as the document and its projection rows.

use automerge::{AutoCommit, ChangeHash};
use rusqlite::params;

use super::StoreTx;
use crate::ids::DocId;
use crate::model::ModelError;
use crate::store::cache::load_cached;
use crate::store::decode::heads_to_bytes;
use crate::store::local_budget::{check_doc_size, check_local_change};
use crate::store::projection::project;
use crate::store::{Committed, DocEvent, Origin, StoreError};

impl StoreTx<'_> {
    /// Creates a new document with id `id` by running `init` on an empty Automerge document,
    /// and queues its changes in the outbox.
    pub fn create(
        &mut self,
        id: DocId,
        init: impl FnOnce(&mut AutoCommit, DocId) -> Result<(), ModelError>,
    ) -> Result<Committed, StoreError> {
        let exists = self.exists(id)?;
        if exists {
            return Err(StoreError::Exists(id));
        }
        let mut doc = AutoCommit::new();
        doc.set_actor(self.actor.clone());
        init(&mut doc, id)?;
        doc.commit();
        let mut hashes = Vec::new();
        let mut single_change = None;
        let now = self.opts.env.now_millis();
        {
            let mut ins = self.tx.prepare_cached(
                "INSERT INTO outbox (doc_id, hash, bytes, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let changes = doc.get_changes(&[]);
            for c in &changes {
                crate::budget::check_change(c, c.raw_bytes().len()).map_err(StoreError::Budget)?;
                ins.execute(params![id.as_bytes(), c.hash().0, c.raw_bytes(), now])?;
                hashes.push(c.hash());
            }
            if let [only] = changes.as_slice() {
                single_change = Some(only.raw_bytes().to_vec());
            }
        }
        // A change chunk is itself loadable Automerge bytes, so a document made of one change
        // is stored as that change; compaction writes a full snapshot once edits accumulate.
        let snapshot = single_change.unwrap_or_else(|| doc.save());
        // The ops of a single change are totally ordered, so a document made of one change
        // cannot hold concurrent values: skip the conflict scan.
        let typed = project(&self.tx, &doc, true, hashes.len() > 1)?;
        self.insert_doc_row(
            id,
            typed.as_ref(),
            &snapshot,
            &heads_to_bytes(&doc.get_heads()),
            0,
            (now, None),
        )?;
        self.events.push(DocEvent {
            id,
            kind: typed.as_ref().map(|d| d.header().kind),
            origin: Origin::Local,
            evicted: false,
        });
        self.cache.insert(id, doc);
        Ok(Committed { id, hashes })
    }

    /// Applies a local edit to a document and queues the resulting change in the outbox.
    /// If `f` fails, the document is left unchanged and the error is returned.
    pub fn edit(
        &mut self,
        id: DocId,
        f: impl FnOnce(&mut AutoCommit) -> Result<(), ModelError>,
    ) -> Result<Committed, StoreError> {
        let doc = load_cached(&self.tx, self.cache, self.actor, id)?;
        let before = doc.get_heads();
        if let Err(e) = f(doc) {
            doc.rollback();
            return Err(e.into());
        }
        doc.commit();
        let (new, hashes) = {
            let changes = doc.get_changes(&before);
            // The relay would refuse a change over budget: it does not commit here either
            // (the transaction rolls back and the cached document is dropped).
            for c in &changes {
                check_local_change(c)?;
            }
            let hashes: Vec<ChangeHash> = changes.iter().map(|c| c.hash()).collect();
            let raw: Vec<Vec<u8>> = changes.iter().map(|c| c.raw_bytes().to_vec()).collect();
            (raw, hashes)
        };
        check_doc_size(&self.tx, doc, id)?;
        if hashes.is_empty() {
            return Ok(Committed { id, hashes });
        }
        {
            let now = self.opts.env.now_millis();
            let mut ins = self.tx.prepare_cached(
                "INSERT OR IGNORE INTO outbox (doc_id, hash, bytes, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (h, b) in hashes.iter().zip(&new) {
                ins.execute(params![id.as_bytes(), h.0, b, now])?;
            }
        }
        self.persist(id, &hashes, &new, Origin::Local, None)?;
        Ok(Committed { id, hashes })
    }
}

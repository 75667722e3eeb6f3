//! What sync has yet to do or left behind, read through the handle: local changes waiting in
//! the outbox, changes the relay refused (the quarantine), and downloads that did not load.

use automerge::{AutoCommit, Change, ChangeHash};
use rusqlite::params;

use super::Store;
use crate::ids::DocId;
use crate::model::Document;
use crate::store::{OutboxChange, OutboxSummary, Quarantined, Skipped, StoreError};

impl Store {
    /// Number of local changes not yet acknowledged by the relay.
    pub fn outbox_len(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?)
    }

    /// How many local changes wait for the relay, of how many documents, in how many bytes,
    /// and how many the relay refused (the quarantine).
    pub fn outbox_summary(&self) -> Result<OutboxSummary, StoreError> {
        let (changes, documents, bytes, quarantined): (i64, i64, i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT count(*), count(DISTINCT doc_id), COALESCE(sum(length(bytes)), 0),
                        (SELECT count(*) FROM quarantine)
                   FROM outbox",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(OutboxSummary {
            changes: n(changes),
            documents: n(documents),
            bytes: n(bytes),
            quarantined: n(quarantined),
        })
    }

    /// The oldest unacknowledged local changes, up to `max_count` changes and about `max_bytes`
    /// (at least one change is returned if any is waiting), skipping those after `after_seq`.
    pub fn outbox_batch(
        &self,
        after_seq: i64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxChange>, StoreError> {
        // No `LIMIT ?`: SQLite re-prepares a statement whose LIMIT is a parameter every time
        // it is bound, and this runs at every step of every sync. Rows stream in `seq`
        // order, so stopping after `max_count` reads no more than a LIMIT would.
        let mut st = self.conn.prepare_cached(
            "SELECT seq, doc_id, hash, bytes FROM outbox WHERE seq > ?1 ORDER BY seq",
        )?;
        let rows = st.query_map(params![after_seq], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for row in rows {
            if out.len() >= max_count {
                break;
            }
            let (seq, doc, hash, b) = row?;
            if !out.is_empty() && bytes + b.len() > max_bytes {
                break;
            }
            bytes += b.len();
            let (Some(doc_id), Ok(hash)) = (
                DocId::from_slice(&doc),
                ChangeHash::try_from(hash.as_slice()),
            ) else {
                continue;
            };
            out.push(OutboxChange {
                seq,
                doc_id,
                hash,
                bytes: b,
            });
        }
        Ok(out)
    }

    /// Changes the relay refused, newest first.
    pub fn quarantine(&self) -> Result<Vec<Quarantined>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT doc_id, hash, reason, at FROM quarantine ORDER BY at DESC")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (doc, hash, reason, at) = row?;
            if let Some(doc_id) = DocId::from_slice(&doc) {
                out.push(Quarantined {
                    doc_id,
                    hash: hex::encode(hash),
                    reason,
                    at,
                });
            }
        }
        Ok(out)
    }

    /// What the refused changes of `doc` make on their own: a document whose creation the
    /// relay refused is no longer in the replica, but what it was (a customer's name, say) is
    /// still in its changes. `None` when they do not make a readable document.
    pub fn quarantined_document(&self, doc: DocId) -> Result<Option<Document>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT bytes FROM quarantine WHERE doc_id = ?1 ORDER BY at, hash")?;
        let changes: Vec<Change> = st
            .query_map([&doc.as_bytes()[..]], |r| r.get::<_, Vec<u8>>(0))?
            .filter_map(|b| Change::from_bytes(b.ok()?).ok())
            .collect();
        if changes.is_empty() {
            return Ok(None);
        }
        let mut am = AutoCommit::new();
        if am.apply_changes(changes).is_err() {
            return Ok(None);
        }
        Ok(
            crate::store::projection::read_for_projection(&am, true, false)
                .ok()
                .map(|(d, _)| d),
        )
    }

    /// Downloaded documents this replica could not load, newest first: kept out of the
    /// replica and reported until a later snapshot of the document loads.
    pub fn skipped(&self) -> Result<Vec<Skipped>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT doc_id, reason, at FROM skipped ORDER BY at DESC, doc_id")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (doc, reason, at) = row?;
            if let Some(doc_id) = DocId::from_slice(&doc) {
                out.push(Skipped { doc_id, reason, at });
            }
        }
        Ok(out)
    }
}

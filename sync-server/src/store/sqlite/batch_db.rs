//! The SQL of the upload path's write transaction (core's `BatchDb`) for a rusqlite
//! transaction, [`SqlTx`].

use super::super::*;
use fieldsync_core::attachment::BlobHash;

/// A rusqlite write transaction seen through core's [`BatchDb`] (a trait of another crate
/// is implemented on a type of this one).
pub(super) struct SqlTx<'t, 'c>(pub(super) &'t Transaction<'c>);

impl<'c> std::ops::Deref for SqlTx<'_, 'c> {
    type Target = Transaction<'c>;

    fn deref(&self) -> &Transaction<'c> {
        self.0
    }
}

impl BatchDb for SqlTx<'_, '_> {
    type Error = RelayStoreError;

    fn sender(&self, id: Uuid) -> Result<Option<Sender>, RelayStoreError> {
        devices::sender(self.0, id)
    }

    fn doc_meta(&self, id: DocId) -> Result<Option<DocMeta>, RelayStoreError> {
        Ok(self
            .prepare_cached(
                "SELECT kind, scope, customer_id, updated_seq FROM docs WHERE doc_id = ?1",
            )?
            .query_row([id.as_bytes()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?)
    }

    fn doc_snapshot(&self, id: DocId) -> Result<Vec<u8>, RelayStoreError> {
        Ok(self
            .prepare_cached("SELECT snapshot FROM docs WHERE doc_id = ?1")?
            .query_row([id.as_bytes()], |r| r.get(0))?)
    }

    fn doc_bytes(&self, id: DocId) -> Result<usize, RelayStoreError> {
        let n: i64 = self
            .prepare_cached("SELECT raw_bytes FROM docs WHERE doc_id = ?1")?
            .query_row([id.as_bytes()], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn upsert_doc(&self, row: &DocRow<'_>) -> Result<(), RelayStoreError> {
        self.prepare_cached(
            "INSERT INTO docs (doc_id, kind, scope, customer_id, snapshot, heads, updated_seq,
               raw_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (doc_id) DO UPDATE SET kind = excluded.kind, scope = excluded.scope,
               customer_id = excluded.customer_id, snapshot = excluded.snapshot,
               heads = excluded.heads, updated_seq = excluded.updated_seq,
               raw_bytes = excluded.raw_bytes",
        )?
        .execute(params![
            row.doc_id.as_bytes(),
            row.kind,
            row.scope,
            row.customer_id.map(|c| c.as_bytes().to_vec()),
            row.snapshot,
            row.heads,
            row.updated_seq,
            i64::try_from(row.raw_bytes).unwrap_or(i64::MAX),
        ])?;
        Ok(())
    }

    fn insert_log(
        &self,
        scope: &str,
        doc: DocId,
        kind: i64,
        hash: Option<&[u8]>,
        bytes: Option<&[u8]>,
        device: Uuid,
        at: i64,
    ) -> Result<i64, RelayStoreError> {
        self.prepare_cached(
            "INSERT INTO log (scope, doc_id, kind, hash, bytes, device, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            scope,
            doc.as_bytes(),
            kind,
            hash,
            bytes,
            device.as_bytes(),
            at
        ])?;
        Ok(self.last_insert_rowid())
    }

    fn set_moved_to(&self, seq: i64, to: &str) -> Result<(), RelayStoreError> {
        self.prepare_cached("UPDATE log SET moved_to = ?2 WHERE seq = ?1")?
            .execute(params![seq, to])?;
        Ok(())
    }

    fn insert_move(
        &self,
        doc: DocId,
        from: &str,
        to: &str,
        seq: i64,
        at: i64,
    ) -> Result<(), RelayStoreError> {
        self.prepare_cached(
            "INSERT INTO moves (doc_id, from_scope, to_scope, seq, at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![doc.as_bytes(), from, to, seq, at])?;
        Ok(())
    }

    fn moves_since(&self, doc: DocId, since: i64) -> Result<Vec<(String, i64)>, RelayStoreError> {
        Ok(self
            .prepare_cached(
                "SELECT from_scope, seq FROM moves WHERE doc_id = ?1 AND at > ?2
                 ORDER BY seq DESC",
            )?
            .query_map(params![doc.as_bytes(), since], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?)
    }

    fn customer_docs(
        &self,
        customer: DocId,
    ) -> Result<Vec<(DocId, String, Vec<u8>)>, RelayStoreError> {
        let rows: Vec<(Vec<u8>, String, Vec<u8>)> = self
            .prepare_cached(
                "SELECT doc_id, scope, snapshot FROM docs WHERE doc_id = ?1 OR customer_id = ?1
                 ORDER BY doc_id",
            )?
            .query_map([customer.as_bytes()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, scope, snap)| Ok((doc_id(&id)?, scope, snap)))
            .collect()
    }

    fn refile_doc(&self, doc: DocId, scope: &str, seq: i64) -> Result<(), RelayStoreError> {
        self.prepare_cached("UPDATE docs SET scope = ?2, updated_seq = ?3 WHERE doc_id = ?1")?
            .execute(params![doc.as_bytes(), scope, seq])?;
        Ok(())
    }

    fn stored_change(&self, hash: &[u8]) -> Result<Option<(DocId, i64)>, RelayStoreError> {
        let row: Option<(Vec<u8>, i64)> = self
            .prepare_cached("SELECT doc_id, seq FROM changes WHERE hash = ?1")?
            .query_row([hash], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        row.map(|(d, s)| Ok((doc_id(&d)?, s))).transpose()
    }

    fn insert_change(&self, hash: &[u8], doc: DocId, seq: i64) -> Result<(), RelayStoreError> {
        self.prepare_cached("INSERT INTO changes (hash, doc_id, seq) VALUES (?1, ?2, ?3)")?
            .execute(params![hash, doc.as_bytes(), seq])?;
        Ok(())
    }

    fn forget_history(&self, doc: DocId, seq: i64) -> Result<(), RelayStoreError> {
        self.prepare_cached(
            "DELETE FROM log WHERE doc_id = ?1 AND seq < ?2 AND kind IN (?3, ?4, ?5)",
        )?
        .execute(params![
            doc.as_bytes(),
            seq,
            KIND_CHANGES,
            KIND_SNAPSHOT,
            KIND_REPLACE
        ])?;
        self.prepare_cached("DELETE FROM changes WHERE doc_id = ?1")?
            .execute([doc.as_bytes()])?;
        Ok(())
    }

    fn insert_audit(
        &self,
        seq: i64,
        device: Uuid,
        doc: DocId,
        at: i64,
    ) -> Result<(), RelayStoreError> {
        self.prepare_cached("INSERT INTO audit (seq, device, doc_id, at) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![seq, device.as_bytes(), doc.as_bytes(), at])?;
        Ok(())
    }

    fn vouched(&self, hash: &[u8]) -> Result<Option<String>, RelayStoreError> {
        Ok(self
            .prepare_cached("SELECT role FROM vouched WHERE hash = ?1")?
            .query_row([hash], |r| r.get(0))
            .optional()?)
    }

    fn departure_served(&self, device: Uuid, doc: DocId) -> Result<bool, RelayStoreError> {
        Ok(self
            .prepare_cached("SELECT 1 FROM departures_served WHERE device = ?1 AND doc_id = ?2")?
            .exists(params![device.as_bytes(), doc.as_bytes()])?)
    }

    fn usage(&self, device: Uuid, day: i64) -> Result<Usage, RelayStoreError> {
        usage_on(self, device, day)
    }

    fn add_usage(&self, device: Uuid, day: i64, add: Usage) -> Result<(), RelayStoreError> {
        self.prepare_cached(
            "INSERT INTO device_usage (device, day, new_docs, bytes) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (device, day) DO UPDATE
               SET new_docs = new_docs + excluded.new_docs, bytes = bytes + excluded.bytes",
        )?
        .execute(params![
            device.as_bytes(),
            day,
            i64::try_from(add.new_documents).unwrap_or(i64::MAX),
            i64::try_from(add.bytes).unwrap_or(i64::MAX)
        ])?;
        self.prepare_cached("DELETE FROM device_usage WHERE device = ?1 AND day < ?2")?
            .execute(params![
                device.as_bytes(),
                day - fieldsync_core::protocol::rules::quota::KEEP_DAYS
            ])?;
        Ok(())
    }

    fn set_attachment_refs(&self, doc: DocId, hashes: &[BlobHash]) -> Result<(), RelayStoreError> {
        self.prepare_cached("DELETE FROM attachment_refs WHERE doc_id = ?1")?
            .execute([doc.as_bytes()])?;
        let mut ins = self.prepare_cached(
            "INSERT OR IGNORE INTO attachment_refs (hash, doc_id) VALUES (?1, ?2)",
        )?;
        for h in hashes {
            ins.execute(params![&h.0[..], doc.as_bytes()])?;
        }
        Ok(())
    }
}

/// What `device` stored on `day`, from a SQLite connection.
fn usage_on(c: &Connection, device: Uuid, day: i64) -> Result<Usage, RelayStoreError> {
    let row: Option<(i64, i64)> = c
        .prepare_cached("SELECT new_docs, bytes FROM device_usage WHERE device = ?1 AND day = ?2")?
        .query_row(params![device.as_bytes(), day], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(row.map_or(Usage::default(), |(n, b)| Usage {
        new_documents: n.max(0) as u64,
        bytes: b.max(0) as u64,
    }))
}

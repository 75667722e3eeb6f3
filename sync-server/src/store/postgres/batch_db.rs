//! The SQL of the upload path's write transaction (`BatchDb`) for a PostgreSQL transaction,
//! and [`PgTx`], the transaction both this and the device policy run their statements in.

use super::*;
use fieldsync_core::attachment::BlobHash;
use fieldsync_core::protocol::rules::Sender;

/// A write transaction seen through [`BatchDb`] and [`DeviceDb`] (whose methods take
/// `&self`).
pub(super) struct PgTx<'c> {
    pub(super) tx: RefCell<PgTxn<'c>>,
}

impl<'c> PgTx<'c> {
    /// A transaction that does not append to the log (device changes).
    pub(super) fn plain(client: &'c mut PgConn) -> Result<Self, RelayStoreError> {
        Ok(Self {
            tx: RefCell::new(client.transaction()?),
        })
    }

    /// A transaction that appends to the log: it holds the log counter's row lock until it
    /// commits (see the module docs on sequence numbers).
    pub(super) fn appending(client: &'c mut PgConn) -> Result<Self, RelayStoreError> {
        let mut tx = client.transaction()?;
        tx.execute(
            "SELECT value FROM counters WHERE name = $1 FOR UPDATE",
            &[&LOG_HIGH],
        )?;
        Ok(Self {
            tx: RefCell::new(tx),
        })
    }

    pub(super) fn q(
        &self,
        sql: &str,
        p: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, RelayStoreError> {
        Ok(self.tx.borrow_mut().query(sql, p)?)
    }

    pub(super) fn q_opt(
        &self,
        sql: &str,
        p: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, RelayStoreError> {
        Ok(self.tx.borrow_mut().query_opt(sql, p)?)
    }

    pub(super) fn exec(
        &self,
        sql: &str,
        p: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, RelayStoreError> {
        Ok(self.tx.borrow_mut().execute(sql, p)?)
    }
}

impl BatchDb for PgTx<'_> {
    type Error = RelayStoreError;

    fn sender(&self, id: Uuid) -> Result<Option<Sender>, RelayStoreError> {
        crate::store::devices::sender(self, id)
    }

    fn doc_meta(&self, id: DocId) -> Result<Option<DocMeta>, RelayStoreError> {
        self.q_opt(
            "SELECT kind, scope, customer_id, updated_seq FROM docs WHERE doc_id = $1",
            &[&id.as_bytes().as_slice()],
        )?
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .transpose()
    }

    fn doc_bytes(&self, id: DocId) -> Result<usize, RelayStoreError> {
        let n: i64 = self
            .q_opt(
                "SELECT raw_bytes FROM docs WHERE doc_id = $1",
                &[&id.as_bytes().as_slice()],
            )?
            .ok_or_else(|| RelayStoreError::Corrupt(format!("document {id} vanished")))?
            .try_get(0)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn doc_snapshot(&self, id: DocId) -> Result<Vec<u8>, RelayStoreError> {
        let r = self
            .q_opt(
                "SELECT snapshot FROM docs WHERE doc_id = $1",
                &[&id.as_bytes().as_slice()],
            )?
            .ok_or_else(|| RelayStoreError::Corrupt(format!("document {id} vanished")))?;
        Ok(r.try_get(0)?)
    }

    fn upsert_doc(&self, row: &DocRow<'_>) -> Result<(), RelayStoreError> {
        let customer = row.customer_id.map(|c| c.as_bytes().to_vec());
        self.exec(
            "INSERT INTO docs (doc_id, kind, scope, customer_id, snapshot, heads, updated_seq,
               raw_bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (doc_id) DO UPDATE SET kind = excluded.kind, scope = excluded.scope,
               customer_id = excluded.customer_id, snapshot = excluded.snapshot,
               heads = excluded.heads, updated_seq = excluded.updated_seq,
               raw_bytes = excluded.raw_bytes",
            &[
                &row.doc_id.as_bytes().as_slice(),
                &row.kind,
                &row.scope,
                &customer,
                &row.snapshot,
                &row.heads,
                &row.updated_seq,
                &i64::try_from(row.raw_bytes).unwrap_or(i64::MAX),
            ],
        )?;
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
        // The counter row is locked by this transaction already (see `append_changes`).
        let seq: i64 = self
            .q_opt(
                "UPDATE counters SET value = value + 1 WHERE name = $1 RETURNING value",
                &[&LOG_HIGH],
            )?
            .ok_or_else(|| RelayStoreError::Corrupt("the log counter is missing".into()))?
            .try_get(0)?;
        self.exec(
            "INSERT INTO log (seq, scope, doc_id, kind, hash, bytes, device, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &seq,
                &scope,
                &doc.as_bytes().as_slice(),
                &kind,
                &hash,
                &bytes,
                &device.as_bytes().as_slice(),
                &at,
            ],
        )?;
        Ok(seq)
    }

    fn set_moved_to(&self, seq: i64, to: &str) -> Result<(), RelayStoreError> {
        self.exec("UPDATE log SET moved_to = $2 WHERE seq = $1", &[&seq, &to])?;
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
        self.exec(
            "INSERT INTO moves (doc_id, from_scope, to_scope, seq, at) VALUES ($1, $2, $3, $4, $5)",
            &[&doc.as_bytes().as_slice(), &from, &to, &seq, &at],
        )?;
        Ok(())
    }

    fn moves_since(&self, doc: DocId, since: i64) -> Result<Vec<(String, i64)>, RelayStoreError> {
        self.q(
            "SELECT from_scope, seq FROM moves WHERE doc_id = $1 AND at > $2 ORDER BY seq DESC",
            &[&doc.as_bytes().as_slice(), &since],
        )?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
    }

    fn customer_docs(
        &self,
        customer: DocId,
    ) -> Result<Vec<(DocId, String, Vec<u8>)>, RelayStoreError> {
        self.q(
            "SELECT doc_id, scope, snapshot FROM docs WHERE doc_id = $1 OR customer_id = $1
             ORDER BY doc_id",
            &[&customer.as_bytes().as_slice()],
        )?
        .iter()
        .map(|r| {
            let id: Vec<u8> = r.try_get(0)?;
            Ok((doc_id(&id)?, r.try_get(1)?, r.try_get(2)?))
        })
        .collect()
    }

    fn refile_doc(&self, doc: DocId, scope: &str, seq: i64) -> Result<(), RelayStoreError> {
        self.exec(
            "UPDATE docs SET scope = $2, updated_seq = $3 WHERE doc_id = $1",
            &[&doc.as_bytes().as_slice(), &scope, &seq],
        )?;
        Ok(())
    }

    fn stored_change(&self, hash: &[u8]) -> Result<Option<(DocId, i64)>, RelayStoreError> {
        self.q_opt("SELECT doc_id, seq FROM changes WHERE hash = $1", &[&hash])?
            .map(|r| {
                let id: Vec<u8> = r.try_get(0)?;
                Ok((doc_id(&id)?, r.try_get(1)?))
            })
            .transpose()
    }

    fn insert_change(&self, hash: &[u8], doc: DocId, seq: i64) -> Result<(), RelayStoreError> {
        self.exec(
            "INSERT INTO changes (hash, doc_id, seq) VALUES ($1, $2, $3)",
            &[&hash, &doc.as_bytes().as_slice(), &seq],
        )?;
        Ok(())
    }

    fn forget_history(&self, doc: DocId, seq: i64) -> Result<(), RelayStoreError> {
        let id = doc.as_bytes().as_slice();
        self.exec(
            "DELETE FROM log WHERE doc_id = $1 AND seq < $2 AND kind IN ($3, $4, $5)",
            &[&id, &seq, &KIND_CHANGES, &KIND_SNAPSHOT, &KIND_REPLACE],
        )?;
        self.exec("DELETE FROM changes WHERE doc_id = $1", &[&id])?;
        Ok(())
    }

    fn insert_audit(
        &self,
        seq: i64,
        device: Uuid,
        doc: DocId,
        at: i64,
    ) -> Result<(), RelayStoreError> {
        self.exec(
            "INSERT INTO audit (seq, device, doc_id, at) VALUES ($1, $2, $3, $4)",
            &[
                &seq,
                &device.as_bytes().as_slice(),
                &doc.as_bytes().as_slice(),
                &at,
            ],
        )?;
        Ok(())
    }

    fn vouched(&self, hash: &[u8]) -> Result<Option<String>, RelayStoreError> {
        self.q_opt("SELECT role FROM vouched WHERE hash = $1", &[&hash])?
            .map(|r| Ok(r.try_get(0)?))
            .transpose()
    }

    fn departure_served(&self, device: Uuid, doc: DocId) -> Result<bool, RelayStoreError> {
        Ok(self
            .q_opt(
                "SELECT 1 FROM departures_served WHERE device = $1 AND doc_id = $2",
                &[&device.as_bytes().as_slice(), &doc.as_bytes().as_slice()],
            )?
            .is_some())
    }

    fn usage(&self, device: Uuid, day: i64) -> Result<Usage, RelayStoreError> {
        usage_on(&mut *self.tx.borrow_mut(), device, day)
    }

    fn add_usage(&self, device: Uuid, day: i64, add: Usage) -> Result<(), RelayStoreError> {
        let id = device.as_bytes().as_slice();
        self.exec(
            "INSERT INTO device_usage (device, day, new_docs, bytes) VALUES ($1, $2, $3, $4)
             ON CONFLICT (device, day) DO UPDATE
               SET new_docs = device_usage.new_docs + excluded.new_docs,
                   bytes = device_usage.bytes + excluded.bytes",
            &[
                &id,
                &day,
                &i64::try_from(add.new_documents).unwrap_or(i64::MAX),
                &i64::try_from(add.bytes).unwrap_or(i64::MAX),
            ],
        )?;
        self.exec(
            "DELETE FROM device_usage WHERE device = $1 AND day < $2",
            &[
                &id,
                &(day - fieldsync_core::protocol::rules::quota::KEEP_DAYS),
            ],
        )?;
        Ok(())
    }

    fn set_attachment_refs(&self, doc: DocId, hashes: &[BlobHash]) -> Result<(), RelayStoreError> {
        let id = doc.as_bytes().as_slice();
        self.exec("DELETE FROM attachment_refs WHERE doc_id = $1", &[&id])?;
        for h in hashes {
            self.exec(
                "INSERT INTO attachment_refs (hash, doc_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&&h.0[..], &id],
            )?;
        }
        Ok(())
    }
}

/// What `device` stored on `day`.
fn usage_on(c: &mut impl Run, device: Uuid, day: i64) -> Result<Usage, RelayStoreError> {
    let row = c.query_opt(
        "SELECT new_docs, bytes FROM device_usage WHERE device = $1 AND day = $2",
        &[&device.as_bytes().as_slice(), &day],
    )?;
    Ok(match row {
        Some(r) => Usage {
            new_documents: r.try_get::<_, i64>(0)?.max(0) as u64,
            bytes: r.try_get::<_, i64>(1)?.max(0) as u64,
        },
        None => Usage::default(),
    })
}

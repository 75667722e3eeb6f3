//! Attachment bytes of a relay on SQLite: `attachments.db` beside `relay.db`, in pieces.
//!
//! The bytes have a file of their own so that writing a photo never holds the lock that
//! document uploads need: SQLite has one writer per file. Which documents refer to an
//! attachment (`attachment_refs`) and the trail of completed uploads (`attachment_audit`)
//! are in `relay.db`, next to the documents they describe. Pieces are rows of at most 64 KiB,
//! stored in order; `blobs.stored` counts them, in the same transaction as the piece, so an
//! upload cut or a relay killed at any moment resumes from what is durably there.

use super::*;
use fieldsync_core::attachment::BlobHash;
use fieldsync_core::attachment::relay::{BlobDb, BlobRow};
use fieldsync_core::ids::Millis;

/// File name of the attachment store inside the data directory.
pub const BLOBS_FILE: &str = "attachments.db";

const BLOBS_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS blobs (
    hash BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    outboard BLOB,
    device BLOB NOT NULL,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS blobs_device ON blobs(device);
CREATE TABLE IF NOT EXISTS pieces (
    hash BLOB NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (hash, idx)
);
"#;

/// The attachment store of a SQLite relay (see the module doc).
#[derive(Clone)]
pub struct SqliteBlobs {
    store: SqliteRelayStore,
    inner: Arc<BlobsInner>,
}

struct BlobsInner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Pool<Connection>,
}

impl std::fmt::Debug for SqliteBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBlobs")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteBlobs {
    /// Completed uploads from the audit trail (see [`super::super::RelayBlobs::uploads`]).
    pub(crate) fn uploads(
        &self,
        device: Option<&str>,
        since: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AttachmentUpload>, RelayStoreError> {
        self.store.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT a.at, a.device, d.name, a.hash, a.size FROM attachment_audit a
                 LEFT JOIN devices d ON d.device_id = a.device
                 WHERE (?1 IS NULL OR a.at >= ?1)
                   AND (?2 IS NULL OR d.name = ?2 OR lower(hex(a.device)) = replace(lower(?2), '-', ''))
                 ORDER BY a.id DESC LIMIT ?3",
            )?;
            let rows = st.query_map(params![since, device, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?;
            let mut docs = c.prepare_cached("SELECT doc_id FROM attachment_refs WHERE hash = ?1")?;
            let mut out = Vec::new();
            for row in rows {
                let (at, dev, name, hash, size) = row?;
                let refs = docs
                    .query_map([&hash], |r| r.get::<_, Vec<u8>>(0))?
                    .filter_map(|d| d.ok().and_then(|d| DocId::from_slice(&d)))
                    .collect();
                out.push(AttachmentUpload {
                    at,
                    device_id: Uuid::from_slice(&dev).unwrap_or_default(),
                    device_name: name,
                    hash: BlobHash::try_from(&hash[..]).map_err(RelayStoreError::Corrupt)?,
                    size: u64::try_from(size).unwrap_or(0),
                    docs: refs,
                });
            }
            Ok(out)
        })
    }

    /// Opens (or creates) the attachment store beside `store`'s database.
    pub fn open(store: &SqliteRelayStore) -> Result<Self, RelayStoreError> {
        let path = store.path().with_file_name(BLOBS_FILE);
        fieldsync_core::fsmode::prepare_database(&path);
        let conn = open_conn(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(BLOBS_SCHEMA)?;
        Ok(Self {
            store: store.clone(),
            inner: Arc::new(BlobsInner {
                readers: readers(&path),
                path,
                writer: Mutex::new(conn),
            }),
        })
    }

    /// The attachment store's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        let mut lent = self.inner.readers.get(Share::Bulk)?;
        f(lent.conn()?)
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BlobRow> {
    let device: Vec<u8> = r.get(3)?;
    Ok(BlobRow {
        size: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
        stored: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
        complete: r.get(2)?,
        device: Uuid::from_slice(&device).unwrap_or_default(),
    })
}

fn blob_row(conn: &Connection, hash: BlobHash) -> Result<Option<BlobRow>, RelayStoreError> {
    Ok(conn
        .prepare_cached("SELECT size, stored, complete, device FROM blobs WHERE hash = ?1")?
        .query_row([&hash.0[..]], row)
        .optional()?)
}

impl BlobDb for SqliteBlobs {
    type Error = RelayStoreError;

    fn referenced_in(&self, device: &DeviceInfo, hash: BlobHash) -> Result<bool, RelayStoreError> {
        let all = device.scopes.iter().any(|s| s == ALL_SCOPES);
        let scopes = serde_json::to_string(&device.scopes)
            .map_err(|e| RelayStoreError::Corrupt(e.to_string()))?;
        self.store.read_priority(|c| {
            Ok(if all {
                c.prepare_cached("SELECT EXISTS (SELECT 1 FROM attachment_refs WHERE hash = ?1)")?
                    .query_row([&hash.0[..]], |r| r.get(0))?
            } else {
                c.prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM attachment_refs r JOIN docs d
                       ON d.doc_id = r.doc_id
                     WHERE r.hash = ?1 AND d.scope IN (SELECT value FROM json_each(?2)))",
                )?
                .query_row(params![&hash.0[..], scopes], |r| r.get(0))?
            })
        })
    }

    fn blob(&self, hash: BlobHash) -> Result<Option<BlobRow>, RelayStoreError> {
        self.read(|c| blob_row(c, hash))
    }

    fn start_upload(
        &self,
        hash: BlobHash,
        size: u64,
        device: Uuid,
        now: Millis,
        stale_before: Millis,
    ) -> Result<BlobRow, RelayStoreError> {
        let mut conn = lock(&self.inner.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let size_i = i64::try_from(size).unwrap_or(i64::MAX);
        let touched: Option<i64> = tx
            .prepare_cached("SELECT updated_at FROM blobs WHERE hash = ?1")?
            .query_row([&hash.0[..]], |r| r.get(0))
            .optional()?;
        match blob_row(&tx, hash)? {
            Some(r) if r.complete || r.size == size => {
                // Resumed: the collector leaves an upload being continued alone.
                tx.prepare_cached("UPDATE blobs SET updated_at = ?2 WHERE hash = ?1")?
                    .execute(params![&hash.0[..], now])?;
            }
            // Another device's upload under way: its progress stays.
            Some(r)
                if r.device != device && r.stored > 0 && touched.unwrap_or(0) >= stale_before => {}
            Some(_) => {
                // An upload begun under another size never completes (BLAKE3 binds the
                // length through the last piece): start over under this one.
                tx.prepare_cached("DELETE FROM pieces WHERE hash = ?1")?
                    .execute([&hash.0[..]])?;
                tx.prepare_cached(
                    "UPDATE blobs SET size = ?2, stored = 0, device = ?3, started_at = ?4,
                       updated_at = ?4 WHERE hash = ?1",
                )?
                .execute(params![&hash.0[..], size_i, device.as_bytes(), now])?;
            }
            None => {
                tx.prepare_cached(
                    "INSERT INTO blobs (hash, size, stored, complete, device, started_at,
                       updated_at) VALUES (?1, ?2, 0, 0, ?3, ?4, ?4)",
                )?
                .execute(params![&hash.0[..], size_i, device.as_bytes(), now])?;
            }
        }
        let r = blob_row(&tx, hash)?
            .ok_or_else(|| RelayStoreError::Corrupt("attachment row vanished".into()))?;
        tx.commit()?;
        Ok(r)
    }

    fn store_piece(
        &self,
        hash: BlobHash,
        size: u64,
        index: u32,
        data: &[u8],
        outboard: Option<&[u8]>,
        now: Millis,
    ) -> Result<Option<u32>, RelayStoreError> {
        let mut conn = lock(&self.inner.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(r) = blob_row(&tx, hash)?.filter(|r| r.size == size) else {
            return Ok(None);
        };
        if r.stored == index && r.size == size && !r.complete {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO pieces (hash, idx, data) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![&hash.0[..], index, data])?;
            tx.prepare_cached(
                "UPDATE blobs SET stored = ?2, complete = ?3, outboard = ?4, updated_at = ?5
                 WHERE hash = ?1",
            )?
            .execute(params![
                &hash.0[..],
                index + 1,
                outboard.is_some(),
                outboard,
                now
            ])?;
        }
        let stored = blob_row(&tx, hash)?.map(|r| r.stored);
        tx.commit()?;
        Ok(stored)
    }

    fn piece(&self, hash: BlobHash, index: u32) -> Result<Option<Vec<u8>>, RelayStoreError> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT data FROM pieces WHERE hash = ?1 AND idx = ?2")?
                    .query_row(params![&hash.0[..], index], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    fn outboard(&self, hash: BlobHash) -> Result<Option<Vec<u8>>, RelayStoreError> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT outboard FROM blobs WHERE hash = ?1 AND complete = 1")?
                    .query_row([&hash.0[..]], |r| r.get(0))
                    .optional()?
                    .flatten(),
            )
        })
    }

    fn device_bytes(&self, device: Uuid) -> Result<u64, RelayStoreError> {
        self.read(|c| {
            let n: i64 = c
                .prepare_cached("SELECT COALESCE(SUM(size), 0) FROM blobs WHERE device = ?1")?
                .query_row([device.as_bytes()], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn audit_upload(
        &self,
        hash: BlobHash,
        size: u64,
        device: Uuid,
        now: Millis,
    ) -> Result<(), RelayStoreError> {
        self.store.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO attachment_audit (hash, size, device, at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                &hash.0[..],
                i64::try_from(size).unwrap_or(i64::MAX),
                device.as_bytes(),
                now
            ])?;
            Ok(())
        })
    }
    fn touch(&self, hash: BlobHash, now: Millis) -> Result<(), RelayStoreError> {
        lock(&self.inner.writer)
            .prepare_cached("UPDATE blobs SET updated_at = ?2 WHERE hash = ?1")?
            .execute(params![&hash.0[..], now])?;
        Ok(())
    }

    fn referenced(&self, hash: BlobHash) -> Result<bool, RelayStoreError> {
        self.store.read_priority(|c| {
            Ok(
                c.prepare_cached("SELECT EXISTS (SELECT 1 FROM attachment_refs WHERE hash = ?1)")?
                    .query_row([&hash.0[..]], |r| r.get(0))?,
            )
        })
    }

    fn untouched_since(
        &self,
        before: Millis,
        after: Option<BlobHash>,
        limit: usize,
    ) -> Result<Vec<(BlobHash, u64, bool)>, RelayStoreError> {
        let after = after.map_or_else(Vec::new, |h| h.0.to_vec());
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT hash, size, complete FROM blobs WHERE updated_at < ?1 AND hash > ?2
                 ORDER BY hash LIMIT ?3",
            )?;
            let rows = st.query_map(
                params![before, after, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, bool>(2)?,
                    ))
                },
            )?;
            let mut out = Vec::new();
            for row in rows {
                let (h, size, complete) = row?;
                let hash = BlobHash::try_from(&h[..]).map_err(RelayStoreError::Corrupt)?;
                out.push((hash, u64::try_from(size).unwrap_or(0), complete));
            }
            Ok(out)
        })
    }

    fn delete_untouched(&self, hash: BlobHash, before: Millis) -> Result<bool, RelayStoreError> {
        let mut conn = lock(&self.inner.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx
            .prepare_cached("DELETE FROM blobs WHERE hash = ?1 AND updated_at < ?2")?
            .execute(params![&hash.0[..], before])?;
        if n > 0 {
            tx.prepare_cached("DELETE FROM pieces WHERE hash = ?1")?
                .execute([&hash.0[..]])?;
        }
        tx.commit()?;
        Ok(n > 0)
    }
}

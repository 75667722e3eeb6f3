//! Attachment bytes of relay nodes on PostgreSQL: `blobs` and `blob_pieces` rows in the shared
//! database, so every node serves every attachment, beside `attachment_refs` (which documents
//! refer to which) and `attachment_audit`.
//!
//! Pieces are written on the read pool's connections, each in its own short transaction, not
//! on the node's writer: a photo being stored never holds up the uploads of documents. A
//! piece is stored only if it is the next one the upload lacks (`stored` is read `FOR
//! UPDATE`), so two nodes taking pieces of one attachment never store a gap.

use fieldsync_core::attachment::BlobHash;
use fieldsync_core::attachment::relay::{BlobDb, BlobRow};
use fieldsync_core::ids::{ALL_SCOPES, Millis};
use fieldsync_core::protocol::DeviceInfo;
use uuid::Uuid;

use super::PgRelayStore;
use super::conn::Run;
use crate::store::RelayStoreError;

fn row(r: &postgres::Row) -> Result<BlobRow, RelayStoreError> {
    let device: Vec<u8> = r.try_get(3)?;
    Ok(BlobRow {
        size: u64::try_from(r.try_get::<_, i64>(0)?).unwrap_or(0),
        stored: u32::try_from(r.try_get::<_, i32>(1)?).unwrap_or(0),
        complete: r.try_get(2)?,
        device: Uuid::from_slice(&device).unwrap_or_default(),
    })
}

fn blob_row(
    c: &mut impl Run,
    hash: BlobHash,
    lock: bool,
) -> Result<Option<BlobRow>, RelayStoreError> {
    let sql = if lock {
        "SELECT size, stored, complete, device FROM blobs WHERE hash = $1 FOR UPDATE"
    } else {
        "SELECT size, stored, complete, device FROM blobs WHERE hash = $1"
    };
    c.query_opt(sql, &[&&hash.0[..]])?
        .as_ref()
        .map(row)
        .transpose()
}

impl PgRelayStore {
    /// Completed uploads from the audit trail (see [`crate::store::RelayBlobs::uploads`]).
    pub(crate) fn attachment_uploads(
        &self,
        device: Option<&str>,
        since: Option<i64>,
        limit: i64,
    ) -> Result<Vec<crate::store::blobs::AttachmentUpload>, RelayStoreError> {
        self.read(|c| {
            let rows = c.query(
                "SELECT a.at, a.device, d.name, a.hash, a.size,
                   ARRAY(SELECT r.doc_id FROM attachment_refs r WHERE r.hash = a.hash)
                 FROM attachment_audit a LEFT JOIN devices d ON d.device_id = a.device
                 WHERE ($1::BIGINT IS NULL OR a.at >= $1)
                   AND ($2::TEXT IS NULL OR d.name = $2
                        OR encode(a.device, 'hex') = replace(lower($2), '-', ''))
                 ORDER BY a.id DESC LIMIT $3",
                &[&since, &device, &limit],
            )?;
            let mut out = Vec::new();
            for r in rows {
                let dev: Vec<u8> = r.try_get(1)?;
                let hash: Vec<u8> = r.try_get(3)?;
                let size: i64 = r.try_get(4)?;
                let docs: Vec<Vec<u8>> = r.try_get(5)?;
                out.push(crate::store::blobs::AttachmentUpload {
                    at: r.try_get(0)?,
                    device_id: Uuid::from_slice(&dev).unwrap_or_default(),
                    device_name: r.try_get(2)?,
                    hash: BlobHash::try_from(&hash[..]).map_err(RelayStoreError::Corrupt)?,
                    size: u64::try_from(size).unwrap_or(0),
                    docs: docs
                        .iter()
                        .filter_map(|d| fieldsync_core::DocId::from_slice(d))
                        .collect(),
                });
            }
            Ok(out)
        })
    }
}

impl BlobDb for PgRelayStore {
    type Error = RelayStoreError;

    fn referenced_in(&self, device: &DeviceInfo, hash: BlobHash) -> Result<bool, RelayStoreError> {
        let all = device.scopes.iter().any(|s| s == ALL_SCOPES);
        self.read_priority(|c| {
            let r = if all {
                c.query_one(
                    "SELECT EXISTS (SELECT 1 FROM attachment_refs WHERE hash = $1)",
                    &[&&hash.0[..]],
                )?
            } else {
                c.query_one(
                    "SELECT EXISTS (SELECT 1 FROM attachment_refs r JOIN docs d
                       ON d.doc_id = r.doc_id WHERE r.hash = $1 AND d.scope = ANY($2))",
                    &[&&hash.0[..], &device.scopes],
                )?
            };
            Ok(r.try_get(0)?)
        })
    }

    fn blob(&self, hash: BlobHash) -> Result<Option<BlobRow>, RelayStoreError> {
        self.read(|c| blob_row(c, hash, false))
    }

    fn start_upload(
        &self,
        hash: BlobHash,
        size: u64,
        device: Uuid,
        now: Millis,
        stale_before: Millis,
    ) -> Result<BlobRow, RelayStoreError> {
        let size_i = i64::try_from(size).unwrap_or(i64::MAX);
        let id = device.as_bytes().as_slice();
        self.read(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO blobs (hash, size, stored, complete, device, started_at, updated_at)
                 VALUES ($1, $2, 0, false, $3, $4, $4) ON CONFLICT (hash) DO NOTHING",
                &[&&hash.0[..], &size_i, &id, &now],
            )?;
            let r = blob_row(&mut tx, hash, true)?
                .ok_or_else(|| RelayStoreError::Corrupt("attachment row vanished".into()))?;
            let touched: i64 = tx
                .query_one(
                    "SELECT updated_at FROM blobs WHERE hash = $1",
                    &[&&hash.0[..]],
                )?
                .try_get(0)?;
            // Another device's upload under way keeps its progress.
            let theirs = r.device != device && r.stored > 0 && touched >= stale_before;
            if r.complete || r.size == size {
                // Resumed: the collector leaves an upload being continued alone.
                tx.execute(
                    "UPDATE blobs SET updated_at = $2 WHERE hash = $1",
                    &[&&hash.0[..], &now],
                )?;
            }
            let r = if !r.complete && r.size != size && !theirs {
                // Begun under another size, it could never complete: start over.
                tx.execute("DELETE FROM blob_pieces WHERE hash = $1", &[&&hash.0[..]])?;
                tx.execute(
                    "UPDATE blobs SET size = $2, stored = 0, device = $3, started_at = $4,
                       updated_at = $4 WHERE hash = $1",
                    &[&&hash.0[..], &size_i, &id, &now],
                )?;
                BlobRow {
                    size,
                    stored: 0,
                    complete: false,
                    device,
                }
            } else {
                r
            };
            tx.commit()?;
            Ok(r)
        })
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
        let idx = i32::try_from(index).unwrap_or(i32::MAX);
        self.read(|c| {
            let mut tx = c.transaction()?;
            let Some(r) = blob_row(&mut tx, hash, true)?.filter(|r| r.size == size) else {
                return Ok(None);
            };
            let stored =
                if r.stored == index && r.size == size && !r.complete {
                    tx.execute(
                        "INSERT INTO blob_pieces (hash, idx, data) VALUES ($1, $2, $3)
                     ON CONFLICT (hash, idx) DO UPDATE SET data = excluded.data",
                        &[&&hash.0[..], &idx, &data],
                    )?;
                    tx.execute(
                    "UPDATE blobs SET stored = $2, complete = $3, outboard = $4, updated_at = $5
                     WHERE hash = $1",
                    &[&&hash.0[..], &(idx + 1), &outboard.is_some(), &outboard, &now],
                )?;
                    index + 1
                } else {
                    r.stored
                };
            tx.commit()?;
            Ok(Some(stored))
        })
    }

    fn piece(&self, hash: BlobHash, index: u32) -> Result<Option<Vec<u8>>, RelayStoreError> {
        let idx = i32::try_from(index).unwrap_or(i32::MAX);
        self.read(|c| {
            Ok(c.query_opt(
                "SELECT data FROM blob_pieces WHERE hash = $1 AND idx = $2",
                &[&&hash.0[..], &idx],
            )?
            .map(|r| r.try_get(0))
            .transpose()?)
        })
    }

    fn outboard(&self, hash: BlobHash) -> Result<Option<Vec<u8>>, RelayStoreError> {
        self.read(|c| {
            Ok(c.query_opt(
                "SELECT outboard FROM blobs WHERE hash = $1 AND complete",
                &[&&hash.0[..]],
            )?
            .map(|r| r.try_get::<_, Option<Vec<u8>>>(0))
            .transpose()?
            .flatten())
        })
    }

    fn device_bytes(&self, device: Uuid) -> Result<u64, RelayStoreError> {
        self.read(|c| {
            let n: i64 = c
                .query_one(
                    "SELECT COALESCE(SUM(size), 0)::BIGINT FROM blobs WHERE device = $1",
                    &[&device.as_bytes().as_slice()],
                )?
                .try_get(0)?;
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
        self.read_priority(|c| {
            c.execute(
                "INSERT INTO attachment_audit (hash, size, device, at) VALUES ($1, $2, $3, $4)",
                &[
                    &&hash.0[..],
                    &i64::try_from(size).unwrap_or(i64::MAX),
                    &device.as_bytes().as_slice(),
                    &now,
                ],
            )?;
            Ok(())
        })
    }
    fn touch(&self, hash: BlobHash, now: Millis) -> Result<(), RelayStoreError> {
        self.read_priority(|c| {
            c.execute(
                "UPDATE blobs SET updated_at = $2 WHERE hash = $1",
                &[&&hash.0[..], &now],
            )?;
            Ok(())
        })
    }

    fn referenced(&self, hash: BlobHash) -> Result<bool, RelayStoreError> {
        self.read_priority(|c| {
            Ok(c.query_one(
                "SELECT EXISTS (SELECT 1 FROM attachment_refs WHERE hash = $1)",
                &[&&hash.0[..]],
            )?
            .try_get(0)?)
        })
    }

    fn untouched_since(
        &self,
        before: Millis,
        after: Option<BlobHash>,
        limit: usize,
    ) -> Result<Vec<(BlobHash, u64, bool)>, RelayStoreError> {
        let after = after.map_or_else(Vec::new, |h| h.0.to_vec());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let mut out = Vec::new();
            for r in c.query(
                "SELECT hash, size, complete FROM blobs WHERE updated_at < $1 AND hash > $2
                 ORDER BY hash LIMIT $3",
                &[&before, &after, &limit],
            )? {
                let h: Vec<u8> = r.try_get(0)?;
                let hash = BlobHash::try_from(&h[..]).map_err(RelayStoreError::Corrupt)?;
                let size: i64 = r.try_get(1)?;
                out.push((hash, u64::try_from(size).unwrap_or(0), r.try_get(2)?));
            }
            Ok(out)
        })
    }

    fn delete_untouched(&self, hash: BlobHash, before: Millis) -> Result<bool, RelayStoreError> {
        self.read(|c| {
            let mut tx = c.transaction()?;
            // A reference committed meanwhile keeps a complete attachment too.
            let n = tx.execute(
                "DELETE FROM blobs WHERE hash = $1 AND updated_at < $2
                   AND NOT (complete AND EXISTS (SELECT 1 FROM attachment_refs WHERE hash = $1))",
                &[&&hash.0[..], &before],
            )?;
            if n > 0 {
                tx.execute("DELETE FROM blob_pieces WHERE hash = $1", &[&&hash.0[..]])?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
    }
}

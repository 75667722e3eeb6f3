//! A laptop's attachment store: the bytes of the attachments it made or fetched, in a SQLite
//! file beside the replica (`replica.attachments.db` for `replica.db`).
//!
//! Bytes are kept in pieces of [`PIECE_BYTES`], one row each, with the attachment's outboard,
//! so the laptop can send any piece verified and resume a transfer in either direction from
//! the pieces it holds: a download stores each verified piece in the same transaction as the
//! count of pieces held, an upload records how many pieces the relay confirmed. SQLite rather
//! than a directory of files: a piece and its progress commit together (no torn file to
//! check after a crash), there is one file to back up, and the replica's encryption covers it
//! the same way. The store is a file of its own so that writing a photo never holds the
//! replica's write lock, which every edit and every download batch needs.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::BlobHash;
use super::pieces::{PIECE_BYTES, PieceStream, outboard, piece_count, piece_range};
use crate::ids::Millis;
use crate::store::cipher::DatabaseKey;
use crate::store::{OpenError, open_sqlite};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS blobs (
    hash BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    have INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    outboard BLOB,
    upload INTEGER NOT NULL,
    uploaded INTEGER NOT NULL,
    want INTEGER NOT NULL,
    refused TEXT,
    stopped INTEGER NOT NULL DEFAULT 0,
    added_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pieces (
    hash BLOB NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (hash, idx)
);
CREATE TABLE IF NOT EXISTS refs (
    hash BLOB NOT NULL,
    doc_id BLOB NOT NULL,
    PRIMARY KEY (hash, doc_id)
) WITHOUT ROWID;
"#;

/// Errors of the attachment store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalBlobError {
    /// SQLite failed.
    #[error("attachment store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file is not an attachment store.
    #[error("{0} is not a fieldsync attachment store: {1}")]
    NotADatabase(PathBuf, String),
    /// Reading the attached file failed.
    #[error("reading the file: {0}")]
    Io(#[from] io::Error),
    /// The attachment is not held here (in full).
    #[error("attachment {0} is not on this laptop yet")]
    Missing(BlobHash),
    /// A stored attachment does not match its hash.
    #[error("attachment {0} is damaged on this laptop: {1}")]
    Damaged(BlobHash, String),
}

/// An attachment the laptop holds or wants, as the transfer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalBlob {
    /// The attachment.
    pub hash: BlobHash,
    /// Its size.
    pub size: u64,
    /// Pieces held, from the first.
    pub have: u32,
    /// Every piece held and verified.
    pub complete: bool,
    /// Made here and to be uploaded.
    pub upload: bool,
    /// Pieces the relay confirmed stored.
    pub uploaded: u32,
    /// To be downloaded.
    pub want: bool,
    /// The relay's last refusal, if any.
    pub refused: Option<String>,
    /// Refused for good: not tried again until asked ([`LocalBlobs::retry_refused`]).
    pub stopped: bool,
}

impl LocalBlob {
    /// Whether it waits to be uploaded (refused for good or not).
    pub fn upload_pending(&self) -> bool {
        self.upload && self.complete && self.uploaded < piece_count(self.size)
    }

    /// Whether it waits to be downloaded (refused for good or not).
    pub fn download_pending(&self) -> bool {
        self.want && !self.complete
    }
}

/// Bytes and attachments waiting to move, each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobsWaiting {
    /// Attachments not yet uploaded in full.
    pub upload_files: u64,
    /// Their bytes not yet confirmed by the relay.
    pub upload_bytes: u64,
    /// Attachments asked for and not yet held in full.
    pub download_files: u64,
    /// Their bytes not yet held.
    pub download_bytes: u64,
}

/// The attachment store of one replica (see the module doc).
pub struct LocalBlobs {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for LocalBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBlobs")
            .field("path", &self.path)
            .finish()
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LocalBlob> {
    let hash: Vec<u8> = r.get(0)?;
    Ok(LocalBlob {
        hash: BlobHash::try_from(&hash[..]).unwrap_or(BlobHash([0; 32])),
        size: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
        have: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
        complete: r.get(3)?,
        upload: r.get(4)?,
        uploaded: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
        want: r.get(6)?,
        refused: r.get(7)?,
        stopped: r.get(8)?,
    })
}

const COLUMNS: &str = "hash, size, have, complete, upload, uploaded, want, refused, stopped";

/// The attachment store's file for the replica at `replica`.
pub fn store_path(replica: &Path) -> PathBuf {
    replica.with_extension("attachments.db")
}

impl LocalBlobs {
    /// Opens (or creates) the attachment store of the replica at `replica`.
    pub fn open(replica: &Path, key: Option<&DatabaseKey>) -> Result<Self, LocalBlobError> {
        let path = store_path(replica);
        crate::fsmode::prepare_database(&path);
        let conn = open_sqlite(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            key,
        )
        .map_err(|e| match e {
            OpenError::Sqlite(e) => LocalBlobError::Sqlite(e),
            e => LocalBlobError::NotADatabase(path.clone(), e.to_string()),
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn, path })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores the bytes read from `data` (`size` of them) as an attachment made here, to be
    /// uploaded; returns its hash. The same content stored twice is kept once. Reads `data`
    /// twice (`reopen` gives it again): once for the hash, once for the pieces, so a large
    /// file is never held in memory whole.
    pub fn add(
        &mut self,
        size: u64,
        mut reopen: impl FnMut() -> io::Result<Box<dyn Read>>,
        now: Millis,
    ) -> Result<BlobHash, LocalBlobError> {
        let (hash, ob) = outboard(reopen()?, size)?;
        let existing = self.get(hash)?;
        if existing.as_ref().is_some_and(|b| b.complete) {
            self.conn
                // Offered to the relay again: it may have collected the bytes since they were
                // last uploaded, when no document referred to them any more.
                .prepare_cached(
                    "UPDATE blobs SET upload = 1, uploaded = 0, refused = NULL, stopped = 0
                     WHERE hash = ?1",
                )?
                .execute([&hash.0[..]])?;
            return Ok(hash);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached("DELETE FROM pieces WHERE hash = ?1")?
            .execute([&hash.0[..]])?;
        let mut data = reopen()?;
        let count = piece_count(size);
        let mut buf = vec![0u8; PIECE_BYTES as usize];
        for i in 0..count {
            let r =
                piece_range(size, i).map_err(|e| LocalBlobError::Damaged(hash, e.to_string()))?;
            let n = (r.end - r.start) as usize;
            data.read_exact(&mut buf[..n])?;
            tx.prepare_cached("INSERT INTO pieces (hash, idx, data) VALUES (?1, ?2, ?3)")?
                .execute(params![&hash.0[..], i, &buf[..n]])?;
        }
        // The file changed while it was read: its pieces are not the hashed bytes.
        let (again, _) = outboard(piece_reader(&tx, hash, count), size)?;
        if again != hash {
            return Err(LocalBlobError::Io(io::Error::other(
                "the file changed while it was being attached; attach it again",
            )));
        }
        tx.prepare_cached(
            "INSERT OR REPLACE INTO blobs (hash, size, have, complete, outboard, upload, uploaded,
               want, refused, added_at)
             VALUES (?1, ?2, ?3, 1, ?4, 1, 0, 0, NULL, ?5)",
        )?
        .execute(params![
            &hash.0[..],
            i64::try_from(size).unwrap_or(i64::MAX),
            count,
            ob,
            now
        ])?;
        tx.commit()?;
        Ok(hash)
    }

    /// Stores bytes held in memory as an attachment made here (see [`LocalBlobs::add`]).
    pub fn add_bytes(&mut self, bytes: &[u8], now: Millis) -> Result<BlobHash, LocalBlobError> {
        let owned = bytes.to_vec();
        self.add(
            bytes.len() as u64,
            || Ok(Box::new(io::Cursor::new(owned.clone())) as Box<dyn Read>),
            now,
        )
    }

    /// The attachment `hash`, if the store knows it.
    pub fn get(&self, hash: BlobHash) -> Result<Option<LocalBlob>, LocalBlobError> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM blobs WHERE hash = ?1"))?
            .query_row([&hash.0[..]], row)
            .optional()?)
    }

    /// Every attachment the store knows.
    pub fn list(&self) -> Result<Vec<LocalBlob>, LocalBlobError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM blobs ORDER BY added_at, hash"
        ))?;
        let rows = st.query_map([], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Attachments to upload now (not refused for good), oldest first.
    pub fn pending_uploads(&self) -> Result<Vec<LocalBlob>, LocalBlobError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|b| b.upload_pending() && !b.stopped)
            .collect())
    }

    /// Attachments to download now (not refused for good), oldest request first.
    pub fn pending_downloads(&self) -> Result<Vec<LocalBlob>, LocalBlobError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|b| b.download_pending() && !b.stopped)
            .collect())
    }

    /// What waits to move each way.
    pub fn waiting(&self) -> Result<BlobsWaiting, LocalBlobError> {
        let mut w = BlobsWaiting::default();
        for b in self.list()? {
            if b.upload_pending() {
                w.upload_files += 1;
                w.upload_bytes += b.size.saturating_sub(u64::from(b.uploaded) * PIECE_BYTES);
            }
            if b.download_pending() {
                w.download_files += 1;
                w.download_bytes += b.size.saturating_sub(u64::from(b.have) * PIECE_BYTES);
            }
        }
        Ok(w)
    }

    /// Asks for attachment `hash` of `size` bytes to be downloaded (nothing if it is held).
    pub fn want(&mut self, hash: BlobHash, size: u64, now: Millis) -> Result<(), LocalBlobError> {
        self.conn
            .prepare_cached(
                "INSERT INTO blobs (hash, size, have, complete, upload, uploaded, want, added_at)
                 VALUES (?1, ?2, 0, 0, 0, 0, 1, ?3)
                 ON CONFLICT (hash) DO UPDATE SET want = 1, refused = NULL, stopped = 0
                 WHERE blobs.complete = 0",
            )?
            .execute(params![
                &hash.0[..],
                i64::try_from(size).unwrap_or(i64::MAX),
                now
            ])?;
        Ok(())
    }

    /// Forgets an attachment stored by [`LocalBlobs::add`] whose document edit then failed,
    /// unless a document refers to it already.
    pub fn forget_unreferenced(&mut self, hash: BlobHash) -> Result<(), LocalBlobError> {
        if !self.refs(hash)?.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached("DELETE FROM pieces WHERE hash = ?1")?
            .execute([&hash.0[..]])?;
        tx.prepare_cached("DELETE FROM blobs WHERE hash = ?1")?
            .execute([&hash.0[..]])?;
        tx.commit()?;
        Ok(())
    }

    /// Records that document `doc` refers to `hash` (so that [`LocalBlobs::collect`] needs to
    /// look only at the documents that did).
    pub fn add_ref(&mut self, hash: BlobHash, doc: &[u8]) -> Result<(), LocalBlobError> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO refs (hash, doc_id) VALUES (?1, ?2)")?
            .execute(params![&hash.0[..], doc])?;
        Ok(())
    }

    /// The documents recorded as referring to `hash`.
    pub fn refs(&self, hash: BlobHash) -> Result<Vec<Vec<u8>>, LocalBlobError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT doc_id FROM refs WHERE hash = ?1")?;
        let rows = st.query_map([&hash.0[..]], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records the relay's confirmation that pieces `0..stored` of an upload are stored.
    pub fn set_uploaded(&mut self, hash: BlobHash, stored: u32) -> Result<(), LocalBlobError> {
        self.conn
            .prepare_cached("UPDATE blobs SET uploaded = ?2, refused = NULL WHERE hash = ?1")?
            .execute(params![&hash.0[..], stored])?;
        Ok(())
    }

    /// Records a refusal by the relay (shown in status). `permanent`: the transfer is not
    /// tried again until asked (`fieldsync attachment retry`).
    pub fn set_refused(
        &mut self,
        hash: BlobHash,
        reason: &str,
        permanent: bool,
    ) -> Result<(), LocalBlobError> {
        let sql = if permanent {
            "UPDATE blobs SET refused = ?2, stopped = 1 WHERE hash = ?1"
        } else {
            "UPDATE blobs SET refused = ?2 WHERE hash = ?1"
        };
        self.conn
            .prepare_cached(sql)?
            .execute(params![&hash.0[..], reason])?;
        Ok(())
    }

    /// After the relay was restored from a backup: offers every complete attachment again
    /// (the relay answers at once for those it has, and takes the others), as the replica
    /// offers its documents' heads. Returns how many.
    pub fn reoffer_all(&mut self) -> Result<usize, LocalBlobError> {
        Ok(self.conn.execute(
            "UPDATE blobs SET upload = 1, uploaded = 0, refused = NULL, stopped = 0
             WHERE complete = 1",
            [],
        )?)
    }

    /// Clears every refusal and asks again for what was refused for good: uploads of what
    /// was made here, downloads of what is not held. Returns how many.
    pub fn retry_refused(&mut self) -> Result<usize, LocalBlobError> {
        Ok(self.conn.execute(
            "UPDATE blobs SET refused = NULL, stopped = 0 WHERE refused IS NOT NULL OR stopped = 1",
            [],
        )?)
    }

    /// The download of `hash` starts over under the relay's verified `size` (when it differs
    /// from what the document said, the pieces held were checked against a wrong size).
    pub fn set_size(&mut self, hash: BlobHash, size: u64) -> Result<(), LocalBlobError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx
            .prepare_cached(
                "UPDATE blobs SET size = ?2, have = 0 WHERE hash = ?1 AND size != ?2 AND complete = 0",
            )?
            .execute(params![&hash.0[..], i64::try_from(size).unwrap_or(i64::MAX)])?;
        if n > 0 {
            tx.prepare_cached("DELETE FROM pieces WHERE hash = ?1")?
                .execute([&hash.0[..]])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores a verified downloaded piece if it is the next one the download lacks; returns
    /// the pieces held afterwards, or `None` when the attachment is not wanted any more (its
    /// document left the laptop meanwhile). With the last piece the attachment is complete
    /// (its outboard is made from the stored pieces, which must give the hash again).
    pub fn store_piece(
        &mut self,
        hash: BlobHash,
        index: u32,
        data: &[u8],
    ) -> Result<Option<u32>, LocalBlobError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(b) = tx
            .prepare_cached(&format!("SELECT {COLUMNS} FROM blobs WHERE hash = ?1"))?
            .query_row([&hash.0[..]], row)
            .optional()?
        else {
            return Ok(None);
        };
        if b.complete || b.have != index {
            return Ok(Some(b.have));
        }
        tx.prepare_cached("INSERT OR REPLACE INTO pieces (hash, idx, data) VALUES (?1, ?2, ?3)")?
            .execute(params![&hash.0[..], index, data])?;
        let have = index + 1;
        let count = piece_count(b.size);
        if have == count {
            let (h, ob) = outboard(piece_reader(&tx, hash, count), b.size)?;
            if h != hash {
                return Err(LocalBlobError::Damaged(
                    hash,
                    "pieces do not give the hash".into(),
                ));
            }
            tx.prepare_cached(
                "UPDATE blobs SET have = ?2, complete = 1, outboard = ?3, want = 0, refused = NULL,
                   stopped = 0 WHERE hash = ?1",
            )?
            .execute(params![&hash.0[..], have, ob])?;
        } else {
            tx.prepare_cached("UPDATE blobs SET have = ?2 WHERE hash = ?1")?
                .execute(params![&hash.0[..], have])?;
        }
        tx.commit()?;
        Ok(Some(have))
    }

    /// The bytes of piece `index`.
    pub fn piece(&self, hash: BlobHash, index: u32) -> Result<Vec<u8>, LocalBlobError> {
        self.conn
            .prepare_cached("SELECT data FROM pieces WHERE hash = ?1 AND idx = ?2")?
            .query_row(params![&hash.0[..], index], |r| r.get(0))
            .optional()?
            .ok_or(LocalBlobError::Missing(hash))
    }

    /// A complete attachment's outboard.
    pub fn outboard(&self, hash: BlobHash) -> Result<Vec<u8>, LocalBlobError> {
        self.conn
            .prepare_cached("SELECT outboard FROM blobs WHERE hash = ?1 AND complete = 1")?
            .query_row([&hash.0[..]], |r| r.get::<_, Option<Vec<u8>>>(0))
            .optional()?
            .flatten()
            .ok_or(LocalBlobError::Missing(hash))
    }

    /// Writes a complete attachment's bytes to `out`, checking them against the hash.
    pub fn write_to(&self, hash: BlobHash, out: &mut impl Write) -> Result<u64, LocalBlobError> {
        let b = self
            .get(hash)?
            .filter(|b| b.complete)
            .ok_or(LocalBlobError::Missing(hash))?;
        let count = piece_count(b.size);
        let mut hasher = blake3::Hasher::new();
        for i in 0..count {
            let p = self.piece(hash, i)?;
            hasher.update(&p);
            out.write_all(&p)?;
        }
        if BlobHash(*hasher.finalize().as_bytes()) != hash {
            return Err(LocalBlobError::Damaged(
                hash,
                "bytes do not match the hash".into(),
            ));
        }
        Ok(b.size)
    }

    /// A complete attachment's bytes.
    pub fn read(&self, hash: BlobHash) -> Result<Vec<u8>, LocalBlobError> {
        let mut out = Vec::new();
        self.write_to(hash, &mut out)?;
        Ok(out)
    }

    /// Forgets every attachment not in `keep` that has nothing left to upload (those whose
    /// documents left the laptop, once their own uploads drained), and those in `dropped`
    /// whatever they wait for (removed from their documents before they were uploaded: the
    /// relay would never take them). Returns the attachments removed and their bytes.
    pub fn collect(
        &mut self,
        keep: &std::collections::HashSet<BlobHash>,
        dropped: &std::collections::HashSet<BlobHash>,
    ) -> Result<(u64, u64), LocalBlobError> {
        let gone: Vec<LocalBlob> = self
            .list()?
            .into_iter()
            .filter(|b| {
                !keep.contains(&b.hash) && (!b.upload_pending() || dropped.contains(&b.hash))
            })
            .collect();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut bytes = 0;
        for b in &gone {
            tx.prepare_cached("DELETE FROM pieces WHERE hash = ?1")?
                .execute([&b.hash.0[..]])?;
            tx.prepare_cached("DELETE FROM refs WHERE hash = ?1")?
                .execute([&b.hash.0[..]])?;
            tx.prepare_cached("DELETE FROM blobs WHERE hash = ?1")?
                .execute([&b.hash.0[..]])?;
            bytes += if b.complete {
                b.size
            } else {
                u64::from(b.have) * PIECE_BYTES
            };
        }
        tx.commit()?;
        Ok((gone.len() as u64, bytes))
    }
}

/// A stored attachment's pieces `0..count`, read in order from `conn` as one stream.
fn piece_reader(
    conn: &Connection,
    hash: BlobHash,
    count: u32,
) -> PieceStream<impl FnMut(u32) -> io::Result<Vec<u8>> + '_> {
    PieceStream::new(count, move |k| {
        conn.prepare_cached("SELECT data FROM pieces WHERE hash = ?1 AND idx = ?2")
            .and_then(|mut st| st.query_row(params![&hash.0[..], k], |r| r.get(0)))
            .map_err(io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::pieces::{decode_piece, encode_piece};

    #[test]
    fn attached_bytes_are_kept_once_and_a_download_resumes_across_a_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        let replica = dir.path().join("replica.db");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut a = LocalBlobs::open(&replica, None).expect("open");
        let h = a.add_bytes(&data, 1).expect("add");
        assert_eq!(a.add_bytes(&data, 2).expect("again"), h);
        assert_eq!(a.list().expect("list").len(), 1);
        assert_eq!(a.read(h).expect("read"), data);
        let w = a.waiting().expect("waiting");
        assert_eq!((w.upload_files, w.upload_bytes), (1, 200_000));
        a.set_uploaded(h, 4).expect("uploaded");
        assert_eq!(a.waiting().expect("waiting"), BlobsWaiting::default());

        // Another laptop downloads it: two pieces, then a restart, then the rest.
        let other = dir.path().join("other.db");
        let mut b = LocalBlobs::open(&other, None).expect("open");
        b.want(h, 200_000, 1).expect("want");
        let ob = a.outboard(h).expect("outboard");
        let send = |i: u32| {
            let enc =
                encode_piece(h, 200_000, &ob, i, &a.piece(h, i).expect("piece")).expect("enc");
            decode_piece(h, 200_000, i, &enc).expect("verifies")
        };
        for i in 0..2 {
            assert_eq!(b.store_piece(h, i, &send(i)).expect("store"), Some(i + 1));
        }
        drop(b);
        let mut b = LocalBlobs::open(&other, None).expect("reopen");
        let got = b.get(h).expect("get").expect("row");
        assert_eq!((got.have, got.complete), (2, false));
        assert_eq!(
            b.waiting().expect("w").download_bytes,
            200_000 - 2 * PIECE_BYTES
        );
        // A piece out of order is not stored.
        assert_eq!(b.store_piece(h, 3, &send(3)).expect("gap"), Some(2));
        for i in 2..4 {
            b.store_piece(h, i, &send(i)).expect("store");
        }
        assert_eq!(b.read(h).expect("read"), data);
        assert!(b.pending_downloads().expect("pending").is_empty());
        // Kept only while referenced; an upload still pending is never collected.
        let (n, bytes) = b
            .collect(&Default::default(), &Default::default())
            .expect("collect");
        assert_eq!((n, bytes), (1, 200_000));
        let other_photo = vec![7u8; 1000];
        let pending = a.add_bytes(&other_photo, 3).expect("add");
        a.collect(&Default::default(), &Default::default())
            .expect("collect");
        assert!(a.get(pending).expect("get").is_some());
        assert!(a.get(h).expect("get").is_none());
    }
}

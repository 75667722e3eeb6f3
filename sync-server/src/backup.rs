//! Backups of a relay's embedded SQLite store, and restoring one.
//!
//! `fieldsync-relay backup --out DIR` writes a consistent copy of `relay.db` while the relay
//! keeps serving (SQLite's `VACUUM INTO` reads one snapshot of the database), checks the copy
//! and puts the certificate and its key beside it: a relay restored with another certificate
//! would fail every device's pin.
//!
//! `fieldsync-relay restore --from DIR` puts a backup in place while no relay serves the data
//! directory, and gives the restored log a **new epoch**. That is what makes a restore safe:
//! every device then finds its cursor unusable, compares document heads with the relay and
//! uploads whatever the backup lacks — changes the relay acknowledged after the backup was
//! taken, which the devices no longer hold in their outboxes — before downloading afresh. A
//! restore that kept the epoch would let devices skip entries numbered again after the
//! restore, and would never bring those acknowledged changes back.
//!
//! The attachment bytes (`attachments.db`) are copied the same way, after the documents. A
//! restore brings the backup's attachments into the data directory without dropping any it
//! holds beyond the backup (they are content-addressed, so no copy is ever wrong), and
//! laptops offer theirs again once they see the new epoch.
//!
//! The database the restore replaces is kept beside it (`relay.db.replaced-<millis>`), never
//! deleted. A relay on PostgreSQL is backed up with the database's own tools (`pg_dump`); see
//! the README.
//!
//! Backups hold everything the relay does: backup directories are created readable by their
//! owner only (`0700`), and every database file written here is `0600` from its creation.

use std::fs::File;
use std::path::{Path, PathBuf};

use fieldsync_core::fsmode;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use uuid::Uuid;

use crate::config::create_data_dir;
use crate::store::{BLOBS_FILE, DB_FILE};
use crate::tls::{CERT_FILE, KEY_FILE};

/// The file a serving relay holds locked in its data directory.
pub const LOCK_FILE: &str = "relay.lock";

/// Errors of backup and restore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// A relay is serving the data directory.
    #[error(
        "another relay is already serving {0} (it holds {LOCK_FILE}): stop it first, or give this one a data directory of its own"
    )]
    Busy(PathBuf),
    /// There is no relay database where one is expected.
    #[error("no relay database at {0}")]
    Missing(PathBuf),
    /// The backup directory already holds a backup.
    #[error("{0} already exists; choose an empty or new directory")]
    Exists(PathBuf),
    /// The file is not a relay database, or fails SQLite's integrity check.
    #[error("{path} is not a usable relay database: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("database error on {path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io { what, path, source }
}

fn sql(path: &Path) -> impl FnOnce(rusqlite::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Sqlite { path, source }
}

/// The lock a serving relay holds on its data directory (released when dropped, or when the
/// process dies).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the data directory's lock, or fails with [`BackupError::Busy`] if a relay holds it.
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, BackupError> {
    create_data_dir(data_dir).map_err(io("creating", data_dir))?;
    let path = data_dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("opening", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(BackupError::Busy(data_dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io("locking", &path)(e)),
    }
}

/// What a relay database holds, as read from a backup or a restored copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseSummary {
    /// Its epoch.
    pub epoch: Uuid,
    /// Its last log position.
    pub high_seq: i64,
    /// Documents.
    pub docs: i64,
    /// Devices (enrolled, open-enrolment and revoked).
    pub devices: i64,
    /// Size of the file in bytes.
    pub bytes: u64,
}

/// Checks a relay database file: SQLite's integrity check, then the relay's own tables.
pub fn inspect(path: &Path) -> Result<DatabaseSummary, BackupError> {
    let invalid = |reason: String| BackupError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(BackupError::Missing(path.to_path_buf()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| invalid(e.to_string()))?;
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| invalid(e.to_string()))?;
    if check != "ok" {
        return Err(invalid(format!("integrity check: {check}")));
    }
    let epoch: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| invalid(format!("no relay tables ({e})")))?;
    let epoch = epoch
        .and_then(|b| Uuid::from_slice(&b).ok())
        .ok_or_else(|| invalid("no relay epoch".into()))?;
    let count = |q: &str| -> Result<i64, BackupError> {
        conn.query_row(q, [], |r| r.get(0))
            .map_err(|e| invalid(format!("no relay tables ({e})")))
    };
    Ok(DatabaseSummary {
        epoch,
        high_seq: count("SELECT COALESCE(MAX(seq), 0) FROM log")?,
        docs: count("SELECT COUNT(*) FROM docs")?,
        devices: count("SELECT COUNT(*) FROM devices")?,
        bytes: std::fs::metadata(path).map_err(io("reading", path))?.len(),
    })
}

/// Copies `from` to `to` (when `from` exists), with owner-only permissions for secrets.
fn copy_file(from: &Path, to: &Path, secret: bool) -> Result<bool, BackupError> {
    if !from.is_file() {
        return Ok(false);
    }
    if secret {
        copy_private(from, to)?;
    } else {
        std::fs::copy(from, to).map_err(io("copying to", to))?;
    }
    Ok(true)
}

/// Copies `from` over `to`, which is `0600` from its creation (a copy with `std::fs::copy`
/// would take the mode of `from`); an existing `to` is made private before it is overwritten.
fn copy_private(from: &Path, to: &Path) -> Result<(), BackupError> {
    fsmode::create_private_file(to).map_err(io("creating", to))?;
    fsmode::tighten(to, fsmode::PRIVATE_FILE).map_err(io("protecting", to))?;
    let mut src = File::open(from).map_err(io("reading", from))?;
    let mut dst = File::options()
        .write(true)
        .truncate(true)
        .open(to)
        .map_err(io("copying to", to))?;
    std::io::copy(&mut src, &mut dst).map_err(io("copying to", to))?;
    Ok(())
}

/// Writes a backup of the relay in `data_dir` into `out_dir` (created if missing; must not
/// hold a backup already): `relay.db`, checked, and the certificate and key when the relay
/// generated them there. Safe while the relay is serving.
pub fn backup(data_dir: &Path, out_dir: &Path) -> Result<DatabaseSummary, BackupError> {
    let db = data_dir.join(DB_FILE);
    if !db.is_file() {
        return Err(BackupError::Missing(db));
    }
    let out = out_dir.join(DB_FILE);
    if out.exists() {
        return Err(BackupError::Exists(out));
    }
    fsmode::create_private_dir_all(out_dir).map_err(io("creating", out_dir))?;
    // `VACUUM INTO` writes into an existing empty file, which keeps the mode it was made with.
    if !fsmode::create_private_file(&out).map_err(io("creating", &out))? {
        return Err(BackupError::Exists(out));
    }
    let written = vacuum_into(&db, &out);
    if written.is_err() {
        // Leaves no empty or partial file that would make a second attempt refuse.
        let _ = std::fs::remove_file(&out);
    }
    written?;
    let summary = inspect(&out)?;
    // The attachment bytes, taken after the documents: every attachment a backed-up document
    // refers to and that was complete then is in the copy.
    let blobs = data_dir.join(BLOBS_FILE);
    if blobs.is_file() {
        let out = out_dir.join(BLOBS_FILE);
        if !fsmode::create_private_file(&out).map_err(io("creating", &out))? {
            return Err(BackupError::Exists(out));
        }
        let written = vacuum_into(&blobs, &out);
        if written.is_err() {
            let _ = std::fs::remove_file(&out);
        }
        written?;
        inspect_attachments(&out)?;
    }
    copy_file(&data_dir.join(CERT_FILE), &out_dir.join(CERT_FILE), false)?;
    copy_file(&data_dir.join(KEY_FILE), &out_dir.join(KEY_FILE), true)?;
    Ok(summary)
}

/// What an attachment store holds: complete attachments and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachmentSummary {
    /// Complete attachments.
    pub files: i64,
    /// Their bytes.
    pub bytes: i64,
}

/// Checks an attachment store file (`attachments.db`): SQLite's integrity check and its
/// tables.
pub fn inspect_attachments(path: &Path) -> Result<AttachmentSummary, BackupError> {
    let invalid = |reason: String| BackupError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| invalid(e.to_string()))?;
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| invalid(e.to_string()))?;
    if check != "ok" {
        return Err(invalid(format!("integrity check: {check}")));
    }
    conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs WHERE complete = 1",
        [],
        |r| {
            Ok(AttachmentSummary {
                files: r.get(0)?,
                bytes: r.get(1)?,
            })
        },
    )
    .map_err(|e| invalid(format!("no attachment tables ({e})")))
}

/// Brings the attachments of a backup's `attachments.db` into the data directory: installed
/// as it is when the directory has none, else every complete attachment the directory's
/// store lacks (or holds only in part) is copied in. Attachments are content-addressed, so
/// what the directory holds beyond the backup stays: nothing uploaded since is lost, and
/// laptops offer theirs again after the restore anyway.
fn restore_attachments(from_dir: &Path, data_dir: &Path) -> Result<(), BackupError> {
    let source = from_dir.join(BLOBS_FILE);
    if !source.is_file() {
        return Ok(());
    }
    inspect_attachments(&source)?;
    let target = data_dir.join(BLOBS_FILE);
    if !target.exists() {
        let staging = data_dir.join(format!("{BLOBS_FILE}.restoring"));
        copy_private(&source, &staging)?;
        File::open(&staging)
            .and_then(|f| f.sync_all())
            .map_err(io("syncing", &staging))?;
        std::fs::rename(&staging, &target).map_err(io("installing", &target))?;
        return Ok(());
    }
    let conn = Connection::open(&target).map_err(sql(&target))?;
    let from = source.to_str().ok_or_else(|| BackupError::Invalid {
        path: source.clone(),
        reason: "the path is not valid UTF-8".into(),
    })?;
    conn.execute("ATTACH DATABASE ?1 AS backup", [from])
        .map_err(sql(&target))?;
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TEMP TABLE missing AS
           SELECT b.hash FROM backup.blobs b
           WHERE b.complete = 1
             AND NOT EXISTS (SELECT 1 FROM main.blobs m WHERE m.hash = b.hash AND m.complete = 1);
         DELETE FROM main.pieces WHERE hash IN (SELECT hash FROM missing);
         DELETE FROM main.blobs WHERE hash IN (SELECT hash FROM missing);
         INSERT INTO main.blobs SELECT * FROM backup.blobs WHERE hash IN (SELECT hash FROM missing);
         INSERT INTO main.pieces SELECT * FROM backup.pieces WHERE hash IN (SELECT hash FROM missing);
         DROP TABLE missing;
         COMMIT;",
    )
    .map_err(sql(&target))?;
    conn.execute("DETACH DATABASE backup", [])
        .map_err(sql(&target))?;
    Ok(())
}

/// Writes a consistent copy of the database `db` into the empty file `out`.
fn vacuum_into(db: &Path, out: &Path) -> Result<(), BackupError> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql(db))?;
    // Waits out a writer's commit instead of failing at once.
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(sql(db))?;
    let target = out
        .to_str()
        .ok_or_else(|| BackupError::Invalid {
            path: out.to_path_buf(),
            reason: "the path is not valid UTF-8".into(),
        })?
        .to_string();
    conn.execute("VACUUM INTO ?1", [target]).map_err(sql(db))?;
    Ok(())
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The restored database, with its new epoch.
    pub summary: DatabaseSummary,
    /// The epoch the backup had.
    pub backup_epoch: Uuid,
    /// Where the database it replaced was kept, if there was one.
    pub replaced: Option<PathBuf>,
    /// Changes the replaced database held beyond the backup, which any device may now bring
    /// back (see [`restore`]).
    pub vouched: usize,
}

/// Restores the backup in `from_dir` into `data_dir`, which no relay may be serving: checks
/// the backup, installs it under a new epoch, keeps the database it replaces beside it, and
/// copies the certificate and key from the backup where the data directory has none.
pub fn restore(from_dir: &Path, data_dir: &Path) -> Result<Restored, BackupError> {
    let _lock = lock_data_dir(data_dir)?;
    let source = from_dir.join(DB_FILE);
    let before = inspect(&source)?;
    // Both files of the backup are checked before anything in the data directory changes.
    let blobs = from_dir.join(BLOBS_FILE);
    if blobs.is_file() {
        inspect_attachments(&blobs)?;
    }
    let db = data_dir.join(DB_FILE);
    let staging = data_dir.join(format!("{DB_FILE}.restoring"));
    copy_private(&source, &staging)?;
    let epoch = Uuid::new_v4();
    let mut vouched = 0;
    {
        let mut conn = Connection::open(&staging).map_err(sql(&staging))?;
        crate::store::sqlite::schema::migrate(&mut conn).map_err(|e| BackupError::Invalid {
            path: source.clone(),
            reason: e.to_string(),
        })?;
        conn.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'epoch'",
            [epoch.as_bytes().to_vec()],
        )
        .map_err(sql(&staging))?;
        if db.exists() {
            match vouch_for_lost(&conn, &db) {
                Ok(n) => vouched = n,
                Err(e) => tracing::warn!(
                    error = %e,
                    "could not read the database being replaced; changes it holds beyond the \
                     backup can come back only from the devices that wrote them"
                ),
            }
        }
        // The relay runs the database in WAL mode; start from a plain, complete file.
        conn.pragma_update(None, "journal_mode", "DELETE")
            .map_err(sql(&staging))?;
    }
    File::open(&staging)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing", &staging))?;
    let replaced = if db.exists() {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let kept = data_dir.join(format!("{DB_FILE}.replaced-{millis}"));
        std::fs::rename(&db, &kept).map_err(io("moving aside", &db))?;
        // The replaced database's WAL belongs to it: keep it with it, or SQLite would
        // replay it into the restored file.
        for suffix in ["-wal", "-shm"] {
            let side = data_dir.join(format!("{DB_FILE}{suffix}"));
            if side.exists() {
                let to = data_dir.join(format!("{DB_FILE}.replaced-{millis}{suffix}"));
                std::fs::rename(&side, &to).map_err(io("moving aside", &side))?;
            }
        }
        // Kept as it was, but no more readable than the database that replaces it.
        fsmode::tighten_database(&kept);
        Some(kept)
    } else {
        None
    };
    std::fs::rename(&staging, &db).map_err(io("installing", &db))?;
    restore_attachments(from_dir, data_dir)?;
    if let Ok(dir) = File::open(data_dir) {
        // Makes the renames durable; not every platform can sync a directory.
        let _ = dir.sync_all();
    }
    for (name, secret) in [(CERT_FILE, false), (KEY_FILE, true)] {
        if !data_dir.join(name).exists() {
            copy_file(&from_dir.join(name), &data_dir.join(name), secret)?;
        }
    }
    let summary = inspect(&db)?;
    Ok(Restored {
        summary,
        backup_epoch: before.epoch,
        replaced,
        vouched,
    })
}

/// Records, in the database being restored (`conn`), every change the database it replaces
/// (`old`) holds and the backup lacks, with the role of the device that uploaded it. The
/// relay validated those changes once; after the restore any device may bring them back in
/// its repair upload and they are judged at that role, while a change the relay never held
/// is accepted only from its author. Returns how many were recorded.
fn vouch_for_lost(conn: &Connection, old: &Path) -> Result<usize, rusqlite::Error> {
    conn.execute(
        "ATTACH DATABASE ?1 AS old",
        [old.to_string_lossy().as_ref()],
    )?;
    let result = (|| {
        let mut n = conn.execute(
            "INSERT OR IGNORE INTO vouched (hash, device, role)
             SELECT c.hash, l.device, COALESCE(d.role, 'rep')
               FROM old.changes c
               JOIN old.log l ON l.seq = c.seq
               LEFT JOIN old.devices d ON d.device_id = l.device
              WHERE NOT EXISTS (SELECT 1 FROM main.changes m WHERE m.hash = c.hash)",
            [],
        )?;
        // What an earlier restore vouched for and this one still lacks.
        let has_vouched: bool = conn.query_row(
            "SELECT count(*) > 0 FROM old.sqlite_master WHERE name = 'vouched'",
            [],
            |r| r.get(0),
        )?;
        if has_vouched {
            n += conn.execute(
                "INSERT OR IGNORE INTO vouched (hash, device, role)
                 SELECT v.hash, v.device, v.role FROM old.vouched v
                  WHERE NOT EXISTS (SELECT 1 FROM main.changes m WHERE m.hash = v.hash)",
                [],
            )?;
        }
        Ok(n)
    })();
    conn.execute("DETACH DATABASE old", [])?;
    result
}

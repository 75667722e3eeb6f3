//! Encryption at rest of fieldsync's SQLite files.
//!
//! The SQLite library fieldsync is built with is SQLCipher: every page of a keyed database —
//! the main file, its write-ahead log and any temporary file SQLite spills to — is encrypted
//! (AES-256 in CBC mode) and authenticated (HMAC-SHA512) with a key derived from a
//! [`DatabaseKey`]. A file opened without a key is plain SQLite, exactly as before.
//!
//! The key given to SQLCipher is the 256-bit data key itself (the raw-key form), so opening
//! costs no key derivation: where the data key comes from (the OS keyring, a passphrase
//! stretched with Argon2id) is the client's key file, not this module.
//!
//! [`file_state`] tells a plain file from an encrypted one (through SQLite: a plain file reads
//! without a key), so a wrong key and a key given for a plain file are reported as such
//! instead of as a damaged file.
//! [`export`] copies a database into a new file under another key (or none) in one pass:
//! the step of encrypting a plain replica and of changing its data key.

use std::fmt;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use zeroize::Zeroizing;

/// A 256-bit key for SQLCipher. Wiped from memory when dropped; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseKey(Zeroizing<[u8; 32]>);

impl DatabaseKey {
    /// The key made of these bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The value of `PRAGMA key` for this key: the raw-key form `x'…'`, which SQLCipher uses
    /// as it is instead of deriving a key from a passphrase.
    fn pragma_value(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(67));
        s.push_str("x'");
        s.push_str(&hex::encode_upper(self.0.as_slice()));
        s.push('\'');
        s
    }
}

impl fmt::Debug for DatabaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatabaseKey(<redacted>)")
    }
}

/// What a database file holds, judged by its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    /// No file, or an empty one (SQLite creates the database on first write).
    Missing,
    /// A plain SQLite file.
    Plain,
    /// Not a plain SQLite file: encrypted (or not SQLite at all).
    Encrypted,
}

/// What the file at `path` holds: missing or empty, plain SQLite, or not readable as plain
/// SQLite (encrypted, or not SQLite at all). Read through SQLite, never with a file handle of
/// its own (see [`super::open_sqlite`] for why).
pub fn file_state(path: &Path) -> std::io::Result<FileState> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => Ok(FileState::Missing),
        Ok(_) => Ok(if reads_plain(path) {
            FileState::Plain
        } else {
            FileState::Encrypted
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileState::Missing),
        Err(e) => Err(e),
    }
}

/// Whether the existing file at `path` reads as plain SQLite (without a key).
pub fn reads_plain(path: &Path) -> bool {
    let Ok(conn) = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return false;
    };
    let _ = conn.pragma_update(None, "cipher_log_level", "NONE");
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .is_ok()
}

/// Gives `conn` its key: must be the first statement on a new connection. Temporary tables
/// and indexes are kept in memory, so nothing unencrypted spills to a temporary file.
pub fn apply_key(conn: &Connection, key: &DatabaseKey) -> rusqlite::Result<()> {
    // A wrong key is reported by the caller's error; SQLCipher's own log would print it to
    // stderr as well.
    conn.pragma_update(None, "cipher_log_level", "NONE")?;
    conn.pragma_update(None, "key", &*key.pragma_value())?;
    conn.pragma_update(None, "temp_store", "MEMORY")
}

/// Copies the database at `src` (read with `src_key`, or plain) into a new file at `dst`
/// encrypted with `dst_key` (or plain), and flushes it to disk. `dst` must not exist; the
/// caller renames it over `src` once it is complete. `src` is read in one transaction and
/// never written.
pub fn export(
    src: &Path,
    src_key: Option<&DatabaseKey>,
    dst: &Path,
    dst_key: Option<&DatabaseKey>,
) -> rusqlite::Result<()> {
    if !src.exists() {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("{} does not exist", src.display())),
        ));
    }
    // CREATE is for the attached copy: the source exists.
    let conn = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    if let Some(k) = src_key {
        apply_key(&conn, k)?;
    }
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    let dst_text = dst.to_string_lossy();
    let key = dst_key.map(DatabaseKey::pragma_value);
    let key_text: &str = key.as_ref().map_or("", |k| k.as_str());
    conn.execute(
        "ATTACH DATABASE ?1 AS fieldsync_export KEY ?2",
        rusqlite::params![dst_text, key_text],
    )?;
    let copied = conn
        .query_row(
            "SELECT sqlcipher_export('fieldsync_export')",
            [],
            |_| Ok(()),
        )
        .and_then(|()| {
            // The copy keeps the source's schema version and application id, which the
            // export leaves at zero.
            let user_version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let app_id: i64 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
            conn.execute_batch(&format!(
                "PRAGMA fieldsync_export.user_version = {user_version};
                 PRAGMA fieldsync_export.application_id = {app_id};"
            ))
        });
    let detached = conn.execute("DETACH DATABASE fieldsync_export", []);
    copied?;
    detached?;
    drop(conn);
    // The export is written with the default rollback journal, so it is complete on disk
    // when the statement returns; flush it once more so a rename after this is durable.
    if let Ok(f) = std::fs::File::open(dst) {
        let _ = f.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> DatabaseKey {
        DatabaseKey::from_bytes([b; 32])
    }

    fn open(path: &Path, k: Option<&DatabaseKey>) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        if let Some(k) = k {
            apply_key(&conn, k)?;
        }
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })?;
        Ok(conn)
    }

    #[test]
    fn encrypted_file_hides_its_content_and_needs_its_key() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a.db");
        let conn = open(&path, Some(&key(1))).expect("create");
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES ('Acme Mining 13800000001');",
        )
        .expect("write");
        for entry in std::fs::read_dir(dir.path()).expect("list") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            assert!(
                !bytes.windows(11).any(|w| w == b"Acme Mining"),
                "plaintext on disk"
            );
        }
        drop(conn);
        assert_eq!(file_state(&path).expect("state"), FileState::Encrypted);
        assert!(open(&path, Some(&key(2))).is_err(), "wrong key opens");
        assert!(open(&path, None).is_err(), "no key opens");
        let conn = open(&path, Some(&key(1))).expect("reopen");
        let x: String = conn
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .expect("read");
        assert_eq!(x, "Acme Mining 13800000001");
    }

    #[test]
    fn export_moves_a_plain_file_under_a_key_and_back() {
        let dir = tempfile::tempdir().expect("dir");
        let plain = dir.path().join("plain.db");
        let conn = open(&plain, None).expect("create");
        conn.execute_batch(
            "CREATE TABLE t(x); INSERT INTO t VALUES ('Acme'); PRAGMA user_version = 9;
             PRAGMA application_id = 77;",
        )
        .expect("write");
        drop(conn);
        assert_eq!(file_state(&plain).expect("state"), FileState::Plain);
        let enc = dir.path().join("enc.db");
        export(&plain, None, &enc, Some(&key(3))).expect("encrypt");
        assert_eq!(file_state(&enc).expect("state"), FileState::Encrypted);
        let rekeyed = dir.path().join("rekeyed.db");
        export(&enc, Some(&key(3)), &rekeyed, Some(&key(4))).expect("rekey");
        let back = dir.path().join("back.db");
        export(&rekeyed, Some(&key(4)), &back, None).expect("decrypt");
        assert_eq!(file_state(&back).expect("state"), FileState::Plain);
        let conn = open(&back, None).expect("open");
        let (x, v, a): (String, i64, i64) = conn
            .query_row(
                "SELECT x, (SELECT user_version FROM pragma_user_version),
                        (SELECT application_id FROM pragma_application_id) FROM t",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("read");
        assert_eq!((x.as_str(), v, a), ("Acme", 9, 77));
        assert_eq!(
            file_state(&dir.path().join("none")).expect("state"),
            FileState::Missing
        );
    }
}

//! Opening a SQLite file the same way wherever fieldsync keeps one (the replica here, the
//! relay's embedded store): a statement cache large enough for one write path, a busy timeout,
//! the key of an encrypted file ([`super::cipher`]), and a first read of the header, so that a
//! file that is not a database (or is encrypted and opened without its key), one opened with
//! the wrong key and a plain one opened with a key are told apart from a database that fails
//! for another reason.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::cipher::{DatabaseKey, apply_key, reads_plain};

/// Statements kept prepared per connection: one write path uses more distinct statements than
/// rusqlite's default cache of 16 (a projection write alone reads, updates and inserts in
/// each of its tables); past it every `prepare_cached` re-parses its SQL.
const STATEMENT_CACHE: usize = 128;

/// Why a SQLite file did not open.
#[derive(Debug)]
pub enum OpenError {
    /// The file is not a SQLite database, or is damaged beyond reading its header.
    NotADatabase(rusqlite::Error),
    /// The file is encrypted and the key given is not its key.
    WrongKey,
    /// A key was given for a plain (unencrypted) file.
    NotEncrypted,
    /// Anything else SQLite reported.
    Sqlite(rusqlite::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotADatabase(e) => write!(
                f,
                "not a SQLite database, damaged, or encrypted and opened without its key ({e})"
            ),
            Self::WrongKey => {
                f.write_str("the key does not open it (wrong key, or the file is damaged)")
            }
            Self::NotEncrypted => f.write_str("not encrypted, but a key was given"),
            Self::Sqlite(e) => e.fmt(f),
        }
    }
}

/// Opens the SQLite file at `path` with `flags`, encrypted with `key` or plain (see the
/// module docs).
///
/// The file is never opened with a handle of its own (to read its header, say): on Unix,
/// closing any handle of a file drops every POSIX lock the process holds on it, SQLite's
/// included, and another process could then fold and delete the WAL under this one's open
/// connections. A file that does not read is classified through SQLite itself.
pub fn open_sqlite(
    path: &Path,
    flags: OpenFlags,
    key: Option<&DatabaseKey>,
) -> Result<Connection, OpenError> {
    let conn = Connection::open_with_flags(path, flags).map_err(OpenError::Sqlite)?;
    if let Some(key) = key {
        apply_key(&conn, key).map_err(OpenError::Sqlite)?;
    }
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(OpenError::Sqlite)?;
    // The first statement that reads the file's header tells a foreign file apart.
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => Ok(conn),
        Err(e @ rusqlite::Error::SqliteFailure(f, _))
            if matches!(
                f.code,
                rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
            ) =>
        {
            drop(conn);
            Err(match key {
                Some(_) if reads_plain(path) => OpenError::NotEncrypted,
                Some(_) => OpenError::WrongKey,
                // Without a key, an encrypted file reads as no database at all.
                None => OpenError::NotADatabase(e),
            })
        }
        Err(e) => Err(OpenError::Sqlite(e)),
    }
}

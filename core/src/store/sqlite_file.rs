//! Opening a SQLite file the same way wherever fieldsync keeps one (the replica here, the
//! relay's embedded store): a statement cache large enough for one write path, a busy timeout,
//! and a first read of the header, so that a file that is not a database is told apart from a
//! database that fails for another reason.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// Statements kept prepared per connection: one write path uses more distinct statements than
/// rusqlite's default cache of 16 (a projection write alone reads, updates and inserts in
/// each of its tables); past it every `prepare_cached` re-parses its SQL.
const STATEMENT_CACHE: usize = 128;

/// Why a SQLite file did not open.
#[derive(Debug)]
pub enum OpenError {
    /// The file is not a SQLite database, or is damaged beyond reading its header.
    NotADatabase(rusqlite::Error),
    /// Anything else SQLite reported.
    Sqlite(rusqlite::Error),
}

/// Opens the SQLite file at `path` with `flags` (see the module docs).
pub fn open_sqlite(path: &Path, flags: OpenFlags) -> Result<Connection, OpenError> {
    let conn = Connection::open_with_flags(path, flags).map_err(OpenError::Sqlite)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(OpenError::Sqlite)?;
    // The first statement that reads the file's header tells a foreign file apart.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
            ) =>
        {
            OpenError::NotADatabase(e)
        }
        e => OpenError::Sqlite(e),
    })?;
    Ok(conn)
}

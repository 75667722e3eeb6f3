//! The store's one error type: every failure of a store call, from SQLite to hostile Automerge
//! bytes to a budget, is a typed [`StoreError`].

use std::path::PathBuf;

use crate::ids::{DocId, DocKind};
use crate::model::ModelError;

/// Errors from the replica store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file is not a SQLite database (or is damaged beyond opening).
    #[error(
        "{0} is not a fieldsync replica: not a SQLite database, damaged, or encrypted and opened without its key ({1})"
    )]
    NotADatabase(PathBuf, String),
    /// The replica is encrypted with another key.
    #[error("{0} does not open with this key: wrong key or passphrase (the file is unchanged)")]
    WrongKey(PathBuf),
    /// A key was given for a replica that is not encrypted.
    #[error("{0} is not encrypted, but a key was given")]
    NotEncrypted(PathBuf),
    /// The file is a SQLite database of some other application.
    #[error("the database belongs to another application (foreign application_id or tables)")]
    Foreign,
    /// The replica was written by a newer fieldsync.
    #[error("replica schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// Version in the file.
        found: i32,
        /// Newest version this build reads.
        supported: i32,
    },
    /// Bytes that should hold an Automerge change or document do not.
    #[error("invalid automerge data: {0}")]
    InvalidData(String),
    /// The document model refused an edit or could not read a document.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// No document with this id in the replica.
    #[error("no document {0}")]
    NotFound(DocId),
    /// The document exists but is of another kind.
    #[error("document {id} is a {actual}, not a {expected}")]
    WrongKind {
        /// The document.
        id: DocId,
        /// The kind asked for.
        expected: DocKind,
        /// The kind stored.
        actual: DocKind,
    },
    /// A document with this id already exists.
    #[error("document {0} already exists")]
    Exists(DocId),
    /// A query passed to the read-only SQL interface tried to write or was malformed.
    #[error("query refused: {0}")]
    Query(String),
    /// A change or document is over one of its budgets (`crate::budget`).
    #[error("over budget: {0}")]
    Budget(String),
}

impl StoreError {
    /// Whether the error means the disk is full (writes fail, stored data is intact).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DiskFull)
    }
}

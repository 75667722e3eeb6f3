//! The error type of the client API.

use fieldsync_core::model::ModelError;
use fieldsync_core::store::StoreError;
use fieldsync_core::{DocId, DocKind};

/// Everything that can go wrong in a [`Client`](crate::Client) call.
///
/// Bad user input (an empty name, an unknown item id, a write passed to
/// [`Client::query`](crate::Client::query), …) is always an error value, never a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No document with this id in the replica.
    #[error("no document {0}")]
    NotFound(DocId),
    /// The document exists but is of another kind than the call expects.
    #[error("document {id} is a {actual}, not a {expected}")]
    WrongKind {
        /// The document.
        id: DocId,
        /// The kind the call works on.
        expected: DocKind,
        /// The kind of the stored document.
        actual: DocKind,
    },
    /// The document model refused the edit (validation, role, state) or could not read the
    /// document.
    #[error(transparent)]
    Model(ModelError),
    /// The replica store failed (SQLite, damaged bytes, a refused query, …).
    #[error(transparent)]
    Store(StoreError),
    /// An argument was not acceptable.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Data stored in the replica could not be decoded (for example the saved identity).
    #[error("corrupt replica data: {0}")]
    Corrupt(String),
    /// The attachment store failed, or an attachment is not on this laptop.
    #[error(transparent)]
    Attachment(#[from] fieldsync_core::attachment::local::LocalBlobError),
    /// The replica went longer without reaching the relay than IT's offline lease allows;
    /// it opens again after a sync ([`crate::Client::open_for_renewal`]).
    #[error(
        "this laptop has not reached the relay for longer than its offline lease of {days} days allows (expired {} ago): connect and sync to open the replica again, or ask IT",
        fieldsync_core::display::format_age(*ago)
    )]
    LeaseExpired {
        /// The lease's length.
        days: u32,
        /// Milliseconds since it expired.
        ago: i64,
    },
    /// The laptop's clock was set back by more than a day since the replica last saw it: the
    /// offline lease ends until a sync reaches the relay.
    #[error(
        "this laptop's clock was set back by {} since the replica last saw it: connect and sync to open the replica again, or ask IT",
        fieldsync_core::display::format_age(*by)
    )]
    LeaseClockSetBack {
        /// Milliseconds behind the latest time the clock showed.
        by: i64,
    },
    /// The replica's key: locked, a wrong passphrase, the keyring, moving files to a key.
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
}

impl From<StoreError> for ClientError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Self::NotFound(id),
            StoreError::WrongKind {
                id,
                expected,
                actual,
            } => Self::WrongKind {
                id,
                expected,
                actual,
            },
            StoreError::Model(m) => Self::Model(m),
            other => Self::Store(other),
        }
    }
}

impl From<ModelError> for ClientError {
    fn from(e: ModelError) -> Self {
        Self::Model(e)
    }
}

impl From<rusqlite::Error> for ClientError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(StoreError::Sqlite(e))
    }
}

impl ClientError {
    /// Turns an error from editing document `id` into a client error, naming the document
    /// when the model reports a kind mismatch.
    pub(crate) fn for_doc(e: StoreError, id: DocId) -> Self {
        match e {
            StoreError::Model(ModelError::WrongKind { edit, kind }) => Self::WrongKind {
                id,
                expected: edit,
                actual: kind,
            },
            other => other.into(),
        }
    }

    /// Whether the error means the document does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }
}

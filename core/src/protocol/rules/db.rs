//! [`BatchDb`]: the statements the upload rules run inside a backend's write transaction, and
//! the rows and kinds they speak of.

use uuid::Uuid;

use super::quota::Usage;
use crate::attachment::BlobHash;
use crate::ids::DocId;
use crate::protocol::{DeviceInfo, StorageError};

/// Log entry kind: changes of one document.
pub const KIND_CHANGES: i64 = 0;
/// Log entry kind: a document's snapshot (a document filed into a scope).
pub const KIND_SNAPSHOT: i64 = 1;
/// Log entry kind: a document left the scope.
pub const KIND_LEAVE: i64 = 2;
/// Log entry kind: the document's history was replaced; the entry holds the new snapshot.
pub const KIND_REPLACE: i64 = 3;

/// What the rules themselves can fail with (a backend's error wraps it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    /// A stored document does not load: only its own changes are refused.
    #[error("document {0} cannot be loaded: {1}")]
    Unloadable(DocId, String),
    /// Stored data is damaged (a document that loaded before fails to rebuild or save, a bad
    /// id).
    #[error("corrupt relay data: {0}")]
    Corrupt(String),
}

impl From<RulesError> for StorageError {
    /// For a store whose errors are the protocol's own (the in-memory relay): the detail goes
    /// to the log, the client hears of a storage failure.
    fn from(e: RulesError) -> Self {
        tracing::error!(error = %e, "relay storage failed");
        Self::Failed
    }
}

/// A sender's grant as the store holds it inside the upload's transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sender {
    /// Revoked: its uploads are refused (for a retry: not the changes' fault).
    Revoked,
    /// Active, with its current role and scopes.
    Active(DeviceInfo),
}

/// A row of `docs` as the upload path writes it.
pub struct DocRow<'a> {
    /// The document.
    pub doc_id: DocId,
    /// Its kind's code (none while it has no header).
    pub kind: Option<i64>,
    /// The scope it is filed under.
    pub scope: &'a str,
    /// For visits and quotes, the customer.
    pub customer_id: Option<DocId>,
    /// Its snapshot.
    pub snapshot: &'a [u8],
    /// Its heads, 32 bytes each.
    pub heads: &'a [u8],
    /// The log position of its last write.
    pub updated_seq: i64,
    /// The raw size of every change the document holds.
    pub raw_bytes: usize,
}

/// `(doc_id, scope, snapshot)` of a stored document.
pub type FiledDoc = (DocId, String, Vec<u8>);

/// `(kind, scope, customer_id, updated_seq)` of a stored document.
pub type DocMeta = (Option<i64>, String, Option<Vec<u8>>, i64);

/// The statements the upload path runs inside its write transaction: the seam between the
/// backend-independent rules of `Batch` (validation, scope moves, the document cache) and
/// each backend's SQL. Every method runs in the one transaction that stores the batch, so
/// the rules read the state they are about to change.
pub trait BatchDb {
    /// The backend's error; the rules' own failures convert into it.
    type Error: From<RulesError>;
    /// The sender's grant as stored now (`None`: a device the store does not know, as a
    /// test's in-memory relay admits).
    fn sender(&self, id: Uuid) -> Result<Option<Sender>, Self::Error>;
    /// Kind, scope, customer and `updated_seq` of a stored document.
    fn doc_meta(&self, id: DocId) -> Result<Option<DocMeta>, Self::Error>;
    /// A stored document's snapshot.
    fn doc_snapshot(&self, id: DocId) -> Result<Vec<u8>, Self::Error>;
    /// The raw size of the changes a stored document holds (`docs.raw_bytes`).
    fn doc_bytes(&self, id: DocId) -> Result<usize, Self::Error>;
    /// Inserts or replaces a document.
    fn upsert_doc(&self, row: &DocRow<'_>) -> Result<(), Self::Error>;
    /// Appends a log entry and returns its sequence number.
    #[allow(clippy::too_many_arguments)]
    fn insert_log(
        &self,
        scope: &str,
        doc: DocId,
        kind: i64,
        hash: Option<&[u8]>,
        bytes: Option<&[u8]>,
        device: Uuid,
        at: i64,
    ) -> Result<i64, Self::Error>;
    /// Sets the `moved_to` of a `Leave` entry.
    fn set_moved_to(&self, seq: i64, to: &str) -> Result<(), Self::Error>;
    /// Records a move of a document between scopes.
    fn insert_move(
        &self,
        doc: DocId,
        from: &str,
        to: &str,
        seq: i64,
        at: i64,
    ) -> Result<(), Self::Error>;
    /// Moves of a document after `since` (ms), newest first: `(from_scope, seq)`. A grace
    /// period of zero thus excuses nothing, even a move in the same millisecond.
    fn moves_since(&self, doc: DocId, since: i64) -> Result<Vec<(String, i64)>, Self::Error>;
    /// A customer and its visits and quotes: `(doc_id, scope, snapshot)` by id.
    fn customer_docs(&self, customer: DocId) -> Result<Vec<FiledDoc>, Self::Error>;
    /// Files a document under `scope` at `seq`.
    fn refile_doc(&self, doc: DocId, scope: &str, seq: i64) -> Result<(), Self::Error>;
    /// The document and sequence number of a stored change.
    fn stored_change(&self, hash: &[u8]) -> Result<Option<(DocId, i64)>, Self::Error>;
    /// Records a stored change.
    fn insert_change(&self, hash: &[u8], doc: DocId, seq: i64) -> Result<(), Self::Error>;
    /// Forgets a document's history before its replacement at `seq`: its change and snapshot
    /// log entries, and its change index (a replaced history, whose log entry has kind [`KIND_REPLACE`]).
    fn forget_history(&self, doc: DocId, seq: i64) -> Result<(), Self::Error>;
    /// Appends to the audit trail.
    fn insert_audit(&self, seq: i64, device: Uuid, doc: DocId, at: i64) -> Result<(), Self::Error>;
    /// The role a change stored before a restore was first uploaded with (see `vouched`).
    fn vouched(&self, hash: &[u8]) -> Result<Option<String>, Self::Error>;
    /// Whether `device` has been sent the departure of `doc` from its scopes.
    fn departure_served(&self, device: Uuid, doc: DocId) -> Result<bool, Self::Error>;
    /// What `device` stored on `day` (see [`super::quota`]).
    fn usage(&self, device: Uuid, day: i64) -> Result<Usage, Self::Error>;
    /// Adds to what `device` stored on `day`, and forgets its usage of days long past.
    fn add_usage(&self, device: Uuid, day: i64, add: Usage) -> Result<(), Self::Error>;
    /// Sets the attachments a document refers to and keeps (replacing the ones it referred
    /// to before): who may fetch an attachment follows from the documents that refer to it.
    fn set_attachment_refs(&self, doc: DocId, hashes: &[BlobHash]) -> Result<(), Self::Error>;
}

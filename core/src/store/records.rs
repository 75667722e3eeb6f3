//! The records the store hands out: events for subscribers, outbox entries, refused and
//! skipped items, conflicting fields, and the result of a local edit.

use automerge::ChangeHash;
use serde::{Deserialize, Serialize};

use crate::ids::{DocId, DocKind};

/// Where a document change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// An edit made through this replica.
    Local,
    /// Changes or a snapshot received from elsewhere (sync, import).
    Remote,
}

/// Sent to subscribers after a transaction that changed a document commits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocEvent {
    /// The document.
    pub id: DocId,
    /// Its kind, when known.
    pub kind: Option<DocKind>,
    /// Local edit or remote merge.
    pub origin: Origin,
    /// The document was removed from the replica (it left the device's scopes).
    pub evicted: bool,
}

/// A local change waiting for the relay's acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxChange {
    /// Position in the outbox.
    pub seq: i64,
    /// The document.
    pub doc_id: DocId,
    /// The change hash.
    pub hash: ChangeHash,
    /// The raw (uncompressed) Automerge change.
    pub bytes: Vec<u8>,
}

/// What waits in the outbox for the relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxSummary {
    /// Local changes not yet acknowledged.
    pub changes: u64,
    /// Documents they change.
    pub documents: u64,
    /// Their bytes (raw Automerge changes).
    pub bytes: u64,
    /// Local changes the relay refused, kept in the quarantine.
    #[serde(default)]
    pub quarantined: u64,
}

/// A change the relay refused, kept locally.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The document.
    pub doc_id: DocId,
    /// Hex change hash.
    pub hash: String,
    /// The relay's reason.
    pub reason: String,
    /// When it was refused (ms).
    pub at: i64,
}

/// A downloaded document this replica could not load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The document.
    pub doc_id: DocId,
    /// Why it did not load (the latest attempt).
    pub reason: String,
    /// When (ms).
    pub at: i64,
}

/// A field with concurrent values, as stored in the `conflicts` projection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocConflict {
    /// The document.
    pub doc_id: DocId,
    /// Its kind.
    pub kind: DocKind,
    /// Field path.
    pub path: String,
    /// The distinct values, the shown one first.
    pub values: Vec<serde_json::Value>,
}

/// Result of one committed local edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The document.
    pub id: DocId,
    /// The hashes of the changes written (usually one).
    pub hashes: Vec<ChangeHash>,
}

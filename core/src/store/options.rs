//! How a replica is opened ([`StoreOptions`]): durability, the document cache, compaction, and
//! the environment it takes time and fresh ids from.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::cipher::DatabaseKey;
use crate::env::{Env, SystemEnv};

/// `PRAGMA synchronous` for the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Durability {
    /// `synchronous=FULL`: a committed edit survives power loss (the default).
    Full,
    /// `synchronous=NORMAL`: survives a process crash; the last commits may be lost on power loss.
    Normal,
}

/// Options for [`Store::open_with`](super::Store::open_with).
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Durability of commits.
    pub durability: Durability,
    /// How many documents to keep loaded in memory.
    pub cache_docs: usize,
    /// Compact a document's snapshot once this many changes have accumulated.
    pub compact_after: i64,
    /// Device id given to a new replica (default: a fresh UUIDv7). Ignored when the replica
    /// already has one. For deterministic simulations, which must replay the same ids.
    pub device_id: Option<Uuid>,
    /// The last 8 bytes of this session's Automerge actor (default: random). Every opening of
    /// a replica must use a different value; set only by deterministic simulations.
    pub actor_suffix: Option<[u8; 8]>,
    /// Where the replica gets the time (outbox, quarantine and document timestamps) and fresh
    /// ids from: the system's by default, a [`crate::env::SeededEnv`] in simulations.
    pub env: Arc<dyn Env>,
    /// The key of an encrypted replica (`None`: a plain one). A new replica opened with a key
    /// is created encrypted.
    pub key: Option<DatabaseKey>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            cache_docs: 256,
            compact_after: 16,
            device_id: None,
            actor_suffix: None,
            env: Arc::new(SystemEnv),
            key: None,
        }
    }
}

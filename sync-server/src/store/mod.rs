//! The relay's store: the change log with sequence numbers, the relay's compacted copy of every
//! document, devices and enrolments, the audit trail.
//!
//! - [`RelayStore`] (`backend`) is what the server and the CLI use: one of two backends,
//!   [`SqliteRelayStore`] (`sqlite`: one file, one node) or [`PgRelayStore`] (`postgres`:
//!   several nodes on one database). Each backend is a folder: the store handle (`mod.rs`),
//!   its schema, its SQL for the upload rules (`batch_db`) and for the device policy
//!   (`devices`); PostgreSQL adds the notification listener (`listen`) and scratch databases
//!   for tests (`scratch`).
//! - `pool`: the bounded pool of read connections both backends read through.
//! - `write_queue`: group commit, the uploads waiting for a backend's writer written in one
//!   transaction.
//! - the upload rules (validation, budgets, quotas, scope moves and their grace period, the
//!   document cache) are `fieldsync_core::protocol::rules`, written once over its `BatchDb`
//!   trait, which each backend implements with its own SQL inside its write transaction (and
//!   core's in-memory relay with maps).
//! - `replace`: a document's history replaced (`doc trim`), in the same way over `BatchDb`.
//! - `devices`: the device and enrolment policy (admission, tokens, revocation, grants),
//!   written once over the `DeviceDb` and `DeviceBackend` traits.
//! - `blobs`: attachment bytes ([`RelayBlobs`]), in a file beside the SQLite store or in
//!   PostgreSQL tables, under core's `attachment::relay` rules.
//! - `schema`: the SQLite schema and its migrations.
//! - this module: errors, options and the records the CLI shows, shared by both backends.
//!
//! The relay validates a write against its own copy of the document, so it loads documents, but
//! only those being written, into a small LRU cache; it never holds all documents in memory.

mod backend;
pub(crate) mod blobs;
mod devices;
mod pool;
pub mod postgres;
mod replace;
pub(crate) mod sqlite;
#[cfg(test)]
mod tests;
mod write_queue;

use fieldsync_core::ids::ALL_SCOPES;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use automerge::AutoCommit;
use fieldsync_core::env::{Env, SystemEnv};
use fieldsync_core::protocol::messages::Hash;
use fieldsync_core::protocol::{
    DeviceInfo, Lack, Lane, LogEntry, Outcome, StorageError, UploadChange, WipeOrder,
};
use fieldsync_core::{DocId, Role};
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use tokio::sync::watch;
use uuid::Uuid;

pub use backend::RelayStore;
pub use blobs::{AttachmentUpload, RelayBlobs};
use devices::{DeviceBackend, DeviceDb, DeviceRow, EventRow, Holder, NewDevice, TokenRow};
pub use devices::{MAX_LEASE_DAYS, token_id_of};
pub use fieldsync_core::protocol::relay::SnapshotPage;
pub use fieldsync_core::protocol::rules::quota::{Quota, Usage, day_of, quota_of};
use fieldsync_core::protocol::rules::{
    BatchDb, DocCache, DocMeta, DocRow, KIND_CHANGES, KIND_REPLACE, KIND_SNAPSHOT, RulesError,
    Sender, UploadRules, heads_bytes, lack_of, log_entry, save, split_heads,
};
pub use pool::PoolStats;
pub use postgres::PgRelayStore;
pub use replace::Replacement;
pub use sqlite::SqliteRelayStore;
pub use sqlite::blobs::BLOBS_FILE;
pub use sqlite::{APPLICATION_ID, SCHEMA_VERSION};
pub use write_queue::WriteStats;

/// File name of the relay database inside the data directory.
pub const DB_FILE: &str = "relay.db";

/// Bytes counted per entry on top of its payload, as the relay session counts them.
const ENTRY_OVERHEAD: usize = 24;
/// `last_seen` is written at most this often per device.
const TOUCH_EVERY: Duration = Duration::from_secs(30);
/// Meta key of the counter bumped by every change to devices and enrolments.
const DEVICES_GENERATION: &str = "devices.generation";

/// Errors from the relay store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayStoreError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("postgres: {}", pg_detail(.0))]
    Postgres(#[from] ::postgres::Error),
    /// The PostgreSQL server could not be reached (or the URL is malformed).
    #[error("cannot connect to PostgreSQL at {0}: {1}")]
    Connect(String, String),
    /// The file is not a SQLite database (or is damaged beyond opening).
    #[error("{0} is not a fieldsync relay database: not a SQLite database or damaged ({1})")]
    NotADatabase(PathBuf, String),
    /// The file is a SQLite database of another application (or a client replica).
    #[error(
        "the database belongs to another application (application_id {application_id:#x}), not a fieldsync relay"
    )]
    Foreign {
        /// The file's `PRAGMA application_id`.
        application_id: i32,
    },
    /// The database was written by a newer relay.
    #[error(
        "relay database schema version {found} is newer than this build supports ({supported})"
    )]
    SchemaTooNew {
        /// Version in the file.
        found: i32,
        /// Newest version this build reads.
        supported: i32,
    },
    /// Stored data could not be read back (a snapshot, an id, a device row).
    #[error("corrupt relay data: {0}")]
    Corrupt(String),
    /// A stored document cannot be loaded (over a budget, or damaged): only changes to that
    /// document are refused, for a retry once IT has dealt with it.
    #[error("document {0} cannot be loaded on the relay: {1}")]
    Unloadable(DocId, String),
    /// An argument was refused (e.g. enrolling a device without scopes).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// An admin command named a relay database that does not exist.
    #[error("no relay database at {} (has the relay ever started there?)", .0.display())]
    Missing(PathBuf),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// This relay node serves another certificate than the nodes sharing its database.
    #[error(
        "this relay node's certificate (fingerprint {serving}) is not the one the relay nodes \
         on this database serve ({recorded}): the nodes must share one certificate, or devices \
         enrolled through one node refuse the others; give this node the same certificate and \
         key (cert.der and key.der of a node's data directory, or the same --cert and --key)"
    )]
    CertificateMismatch {
        /// This node's certificate fingerprint.
        serving: String,
        /// The fingerprint recorded in the database by the first node.
        recorded: String,
    },
    /// Every database connection this request may use stayed in use while it waited: the
    /// node is at `database_max_connections`. Retrying in a moment may succeed.
    #[error(
        "every database connection of this relay node stayed in use for {} s \
         (database_max_connections)",
        .waited.as_secs_f32()
    )]
    Busy {
        /// How long the request waited.
        waited: Duration,
    },
    /// The client the work was for has gone; the work stopped part way.
    #[error("stopped: the client left")]
    Cancelled,
}

/// A PostgreSQL error with its cause (the crate's own message is often just "db error").
fn pg_detail(e: &::postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

impl From<RulesError> for RelayStoreError {
    fn from(e: RulesError) -> Self {
        match e {
            RulesError::Unloadable(id, why) => Self::Unloadable(id, why),
            RulesError::Corrupt(why) => Self::Corrupt(why),
            e => Self::Corrupt(e.to_string()),
        }
    }
}

impl RelayStoreOptions {
    /// The upload rules' settings at this moment.
    fn upload_rules(&self) -> UploadRules {
        UploadRules {
            now: self.env.now_millis(),
            move_grace: self.move_grace,
            quota: self.quota,
        }
    }
}

impl From<RelayStoreError> for StorageError {
    fn from(e: RelayStoreError) -> Self {
        // The details stay in the relay's log; the client only learns that it should retry,
        // and whether the relay's disk is full (an operator must act, the rep need not).
        if e.is_busy() {
            tracing::warn!(error = %e, "relay store busy; the client was told to retry");
            return Self::Busy;
        }
        if matches!(e, RelayStoreError::Cancelled) {
            tracing::debug!("store work stopped: the client left");
            return Self::ClientLeft;
        }
        tracing::error!(error = %e, "relay storage failed");
        if e.is_disk_full() {
            return Self::DiskFull;
        }
        Self::Failed
    }
}

impl RelayStoreError {
    /// Whether SQLite reported a full disk (writes fail; stored data is intact).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DiskFull)
    }

    /// Whether the store refused for lack of capacity, so that the same request may succeed
    /// a moment later: no database connection came free in time, or PostgreSQL cancelled a
    /// read that ran past `statement_timeout`.
    pub fn is_busy(&self) -> bool {
        match self {
            Self::Busy { .. } => true,
            Self::Postgres(e) => e.code() == Some(&::postgres::error::SqlState::QUERY_CANCELED),
            _ => false,
        }
    }
}

/// Open enrolment: unknown devices are accepted with these scopes and role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenEnrolment {
    /// Scopes granted (`*` = all).
    pub scopes: Vec<String>,
    /// Role granted.
    pub role: Role,
}

/// Options for [`SqliteRelayStore::open`] and [`PgRelayStore::open`].
#[derive(Clone, Debug)]
pub struct RelayStoreOptions {
    /// How many documents to keep loaded for validating writes.
    pub cache_docs: usize,
    /// Accept unknown devices (`None`: only enrolled devices).
    pub open: Option<OpenEnrolment>,
    /// How long after a document moved out of a device's scopes the relay still accepts that
    /// device's changes to it that were written before the move (offline edits).
    pub move_grace: Duration,
    /// Per-device daily quotas.
    pub quota: Quota,
    /// PostgreSQL only: the most connections one relay node opens to the database (the
    /// writer, the `LISTEN` connection and the read pool), at least
    /// [`MIN_DB_CONNECTIONS`].
    pub db_max_connections: usize,
    /// PostgreSQL only: how long a request waits for a free connection before it is refused
    /// as busy ([`RelayStoreError::Busy`]).
    pub db_wait: Duration,
    /// PostgreSQL only: the longest one statement on a read connection may run
    /// (`statement_timeout`), so that no client's reads hold a connection for long.
    pub db_statement_timeout: Duration,
    /// The offline lease of devices without one of their own (`device lease`): days a
    /// laptop's replica may go without contacting the relay before it refuses to open.
    pub offline_lease: OfflineLease,
    /// Where the relay's rules take the time from (move grace periods, token expiry, quota
    /// days, timestamps): the system clock, or a simulation's.
    pub env: Arc<dyn Env>,
}

/// The offline lease of the devices that have none of their own (`offline_lease_days` and
/// `offline_lease_days_by_role` in the configuration). 0 days: no lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfflineLease {
    /// Days for a device whose role is not in `by_role`.
    pub days: u32,
    /// Days per role, before `days`.
    pub by_role: std::collections::BTreeMap<Role, u32>,
}

impl OfflineLease {
    /// The days of a device of `role` without a lease of its own (0: none).
    pub fn days_for(&self, role: Role) -> u32 {
        self.by_role.get(&role).copied().unwrap_or(self.days)
    }
}

/// Fewest database connections a PostgreSQL relay node may be given: the writer, the
/// `LISTEN` connection, one for reads and one kept for authentication.
pub const MIN_DB_CONNECTIONS: usize = 4;

impl Default for RelayStoreOptions {
    fn default() -> Self {
        Self {
            cache_docs: 1024,
            open: None,
            move_grace: Duration::from_secs(30 * 86_400),
            quota: Quota::default(),
            db_max_connections: 16,
            db_wait: Duration::from_secs(5),
            db_statement_timeout: Duration::from_secs(30),
            offline_lease: OfflineLease::default(),
            env: Arc::new(SystemEnv),
        }
    }
}

/// Set when the client a store handle works for has gone (see
/// [`RelayStore::cancelled_by`]): long reads stop at their next page or chunk with
/// [`RelayStoreError::Cancelled`]. Clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Raises the flag.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the flag is raised.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// [`RelayStoreError::Cancelled`] once the flag is raised.
    fn check(&self) -> Result<(), RelayStoreError> {
        if self.is_cancelled() {
            Err(RelayStoreError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// A device as stored in the device table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceRecord {
    /// Device id.
    pub device_id: Uuid,
    /// Name given at enrolment.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Enrolled with a secret (false: registered by open enrolment).
    pub enrolled: bool,
    /// When it was created (ms).
    pub created_at: i64,
    /// Last finished sync exchange (ms), to within 30 s.
    pub last_seen: Option<i64>,
    /// When it was revoked (ms).
    pub revoked_at: Option<i64>,
    /// A remote wipe IT ordered (`device revoke --wipe`, `--wipe-after-upload`), carried
    /// out or not: `now` or `after_upload`.
    pub wipe: Option<String>,
    /// When the device reported that it carried out its wipe order (ms).
    pub wiped_at: Option<i64>,
    /// The device's own offline lease in days (`device lease`; 0: none); `None` takes its
    /// role's default from the configuration.
    pub lease_days: Option<u32>,
    /// The lease the device is sent: its own, else its role's, else the relay's default;
    /// `None`: no lease.
    pub effective_lease_days: Option<u32>,
    /// What it stored today (UTC), against its quota.
    pub today: Usage,
}

impl DeviceRecord {
    /// The wipe order the device is still to carry out.
    pub fn pending_wipe(&self) -> Option<WipeOrder> {
        match (self.wipe.as_deref(), self.wiped_at) {
            (Some(w), None) => devices::wipe_order(w),
            _ => None,
        }
    }
}

/// One entry of the trail of device events (`audit --devices`): a wipe ordered, a wipe
/// carried out, a lease set.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceEvent {
    /// Its position in the trail.
    pub seq: u64,
    /// When it happened (ms).
    pub at: i64,
    /// The device.
    pub device_id: Uuid,
    /// That device's name, if it is known.
    pub device_name: Option<String>,
    /// `wipe_ordered`, `wiped` or `lease_set`.
    pub event: String,
    /// What it says: `{"mode": "now"|"after_upload"}` for `wipe_ordered`, the laptop's
    /// report for `wiped`, `{"days": N|null}` for `lease_set`.
    pub detail: serde_json::Value,
}

/// An enrolment token as stored (its secret is not: only a hash of it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EnrolmentRecord {
    /// The token's id for people (hex digits of its secret's hash; `device token cancel`).
    pub id: String,
    /// Name given at enrolment.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Scopes.
    pub scopes: Vec<String>,
    /// The device bound to the token (at enrolment with `--device-id`, or when redeemed).
    pub device_id: Option<Uuid>,
    /// When it was created (ms).
    pub created_at: i64,
    /// When it stops being redeemable (ms).
    pub expires_at: i64,
    /// When it was redeemed (ms).
    pub used_at: Option<i64>,
    /// When it was revoked before use (ms).
    pub revoked_at: Option<i64>,
}

impl EnrolmentRecord {
    /// Not used, revoked or expired at `now`.
    pub fn is_pending(&self, now: i64) -> bool {
        self.used_at.is_none() && self.revoked_at.is_none() && self.expires_at > now
    }
}

/// What a laptop last said it holds unsent (protocol 5 `Outbox`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceOutbox {
    /// Local changes the relay has not acknowledged.
    pub changes: u64,
    /// Local changes the relay refused, kept in the laptop's quarantine.
    pub quarantined: u64,
    /// When the laptop said so (ms).
    pub at: i64,
}

/// What `revoke` cut off.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Revoked {
    /// Devices revoked.
    pub devices: Vec<Uuid>,
    /// Unused enrolment tokens revoked.
    pub tokens: usize,
}

/// One entry of the audit trail: an accepted change.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    /// The change's position in the log.
    pub seq: u64,
    /// When the relay accepted it (ms).
    pub at: i64,
    /// The device that uploaded it.
    pub device_id: Uuid,
    /// That device's name, if it is known.
    pub device_name: Option<String>,
    /// The document changed.
    pub doc_id: DocId,
    /// The change hash (hex).
    pub hash: Option<String>,
    /// The scope the change was filed under.
    pub scope: Option<String>,
    /// The document's kind (`customer`, `visit`, `quote`), when the relay knows it.
    pub kind: Option<String>,
    /// The customer the document belongs to (a customer's own id for a customer).
    pub customer_id: Option<DocId>,
    /// That customer's name, as the relay holds the customer now.
    pub customer: Option<String>,
}

/// Which audit entries to read ([`RelayStore::audit`]).
#[derive(Clone, Debug, Default)]
pub struct AuditQuery<'a> {
    /// Only changes to this document.
    pub doc: Option<DocId>,
    /// Only changes uploaded by this device (an id or a name).
    pub device: Option<&'a str>,
    /// Only changes accepted at or after this time (ms).
    pub since: Option<i64>,
    /// At most this many entries, the most recent.
    pub limit: usize,
}

/// The result of enrolling a device: its id and the secret it presents (shown once; the relay
/// keeps only its hash).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Enrolment {
    /// Device id.
    pub device_id: Uuid,
    /// The device's secret credential.
    pub secret: String,
}

/// An audit entry from its stored columns; `kind` is the docs table's code.
#[allow(clippy::too_many_arguments)] // one per column of the audit query
fn audit_record(
    seq: i64,
    at: i64,
    device_id: Uuid,
    device_name: Option<String>,
    doc: DocId,
    hash: Option<Vec<u8>>,
    scope: Option<String>,
    kind: Option<i64>,
    customer_id: Option<DocId>,
) -> AuditRecord {
    let kind = kind.and_then(fieldsync_core::ids::DocKind::from_code);
    AuditRecord {
        seq: seq.max(0) as u64,
        at,
        device_id,
        device_name,
        doc_id: doc,
        hash: hash.map(hex::encode),
        scope,
        kind: kind.map(|k| k.as_str().to_string()),
        customer_id: if kind == Some(fieldsync_core::ids::DocKind::Customer) {
            Some(doc)
        } else {
            customer_id
        },
        customer: None,
    }
}

/// The name in a stored customer snapshot (`None` when it does not load or has none).
fn customer_name(snapshot: &[u8]) -> Option<String> {
    let doc = fieldsync_core::store::load_snapshot(snapshot).ok()?;
    match fieldsync_core::model::read_document(&doc).ok()? {
        fieldsync_core::model::Document::Customer(c) => Some(c.name),
        _ => None,
    }
}

/// Counters for `fieldsync-relay status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RelayStatus {
    /// The relay's epoch.
    pub epoch: Uuid,
    /// Highest sequence number assigned.
    pub high_seq: u64,
    /// Documents held.
    pub docs: u64,
    /// Changes stored.
    pub changes: u64,
    /// Devices known (enrolled or registered).
    pub devices: u64,
    /// Of which revoked.
    pub revoked_devices: u64,
}

/// Publishes a counter's value (the device-change generation) to its receivers if it changed.
fn publish(tx: &watch::Sender<u64>, value: u64) {
    tx.send_if_modified(|v| {
        let changed = *v != value;
        *v = value;
        changed
    });
}

/// Publishes a log position to its receivers if it is past the last one published (positions
/// learned out of order never move it back).
fn publish_high(tx: &watch::Sender<u64>, high: u64) {
    tx.send_if_modified(|v| {
        let grew = high > *v;
        *v = (*v).max(high);
        grew
    });
}

/// A device's usage of one day from its stored row (none: nothing stored that day).
fn usage_of(new_docs: Option<i64>, bytes: Option<i64>) -> Usage {
    Usage {
        new_documents: new_docs.unwrap_or(0).max(0) as u64,
        bytes: bytes.unwrap_or(0).max(0) as u64,
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves no half-done state: SQLite rolled the transaction
    // back and documents being written were taken out of the cache.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn doc_id(b: &[u8]) -> Result<DocId, RelayStoreError> {
    DocId::from_slice(b)
        .ok_or_else(|| RelayStoreError::Corrupt(format!("bad document id {}", hex::encode(b))))
}

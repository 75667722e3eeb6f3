//! The relay's store. [`RelayStore`] is what the server and the CLI use; it is one of two
//! backends: this module's SQLite store, or [`postgres::PgRelayStore`] for several relay
//! nodes on one database. Both run the same upload rules (`Batch`: validation, scope moves,
//! the document cache) through the `BatchDb` trait, which each implements with its own SQL.
//!
//! The SQLite store: the change log with sequence numbers, the relay's compacted copy of
//! every document, the device table and the audit trail, in one SQLite file (WAL,
//! `synchronous=FULL`).
//!
//! Writes (`append`, device changes) go through one writer connection behind a mutex; SQLite's
//! single writer assigns the log's sequence numbers inside the transaction that stores the
//! entries, so a reader can never skip an entry that commits later with a lower number. Reads
//! (`read_log`, `read_snapshots`, `missing`, `authenticate`) use a small pool of read-only
//! connections and run concurrently with a write (WAL). A [`SqliteRelayStore`] is a cheap,
//! cloneable handle: every connection task of the server holds one.
//!
//! The relay validates a write against its own copy of the document, so it loads documents, but
//! only those being written, into a small LRU cache; it never holds all documents in memory.

mod backend;
mod pg_pool;
pub mod postgres;
mod quota;
mod replace;
pub(crate) mod schema;
#[cfg(test)]
mod tests;

use fieldsync_core::ids::ALL_SCOPES;
use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use automerge::AutoCommit;
use automerge::ChangeHash;
use fieldsync_core::budget::MAX_DOC_BYTES;
use fieldsync_core::env::{Env, SystemEnv};
use fieldsync_core::protocol::messages::serde_bytes_vec::Bytes;
use fieldsync_core::protocol::messages::{Hash, Rejection};
use fieldsync_core::protocol::{
    DeviceInfo, Entry, Lack, LogEntry, Outcome, RelayStorage, StorageError, UploadChange,
    check_change,
};
use fieldsync_core::store::{decode_change, load_snapshot};
use fieldsync_core::{DocId, DocKind, Role};
use ring::rand::SecureRandom;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use uuid::Uuid;

pub use backend::RelayStore;
pub use fieldsync_core::protocol::relay::SnapshotPage;
pub use pg_pool::PoolStats;
pub use postgres::PgRelayStore;
pub use quota::{Quota, Usage, day_of, quota_of};
use replace::KIND_REPLACE;
pub use replace::Replacement;
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};

/// File name of the relay database inside the data directory.
pub const DB_FILE: &str = "relay.db";

/// Log entry kinds (`log.kind`).
const KIND_CHANGES: i64 = 0;
const KIND_SNAPSHOT: i64 = 1;
const KIND_LEAVE: i64 = 2;

/// Bytes counted per entry on top of its payload, as the relay session counts them.
const ENTRY_OVERHEAD: usize = 24;
/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 8;
/// `last_seen` is written at most this often per device.
const TOUCH_EVERY: Duration = Duration::from_secs(30);
/// Meta key of the counter bumped by every change to devices and enrolments.
const DEVICES_GENERATION: &str = "devices.generation";
/// Shortest device credential accepted at redemption (hex digits of a 128-bit secret).
const MIN_CREDENTIAL_LEN: usize = 32;

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
pub struct OpenEnrollment {
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
    pub open: Option<OpenEnrollment>,
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
    /// Where the relay's rules take the time from (move grace periods, token expiry, quota
    /// days, timestamps): the system clock, or a simulation's.
    pub env: Arc<dyn Env>,
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
    /// What it stored today (UTC), against its quota.
    pub today: Usage,
}

/// An enrolment token as stored (its secret is not: only a hash of it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EnrolmentRecord {
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
}

/// The result of enrolling a device: its id and the secret it presents (shown once; the relay
/// keeps only its hash).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Enrollment {
    /// Device id.
    pub device_id: Uuid,
    /// The device's secret credential.
    pub secret: String,
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

/// A small least-recently-used cache of loaded documents.
struct DocCache {
    cap: usize,
    tick: u64,
    /// Each document with its last use and the `updated_seq` it was cached at.
    docs: HashMap<DocId, (AutoCommit, u64, i64)>,
}

impl DocCache {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            tick: 0,
            docs: HashMap::new(),
        }
    }

    /// Takes a document out if it was cached at `updated_seq` (a copy cached at another
    /// position is stale and dropped).
    fn take(&mut self, id: &DocId, updated_seq: i64) -> Option<AutoCommit> {
        self.docs
            .remove(id)
            .and_then(|(d, _, at)| (at == updated_seq).then_some(d))
    }

    fn insert(&mut self, id: DocId, doc: AutoCommit, updated_seq: i64) {
        if self.docs.len() >= self.cap && !self.docs.contains_key(&id) {
            // Evict the least recently used eighth at once: one pass over the cache per
            // `cap / 8` insertions instead of one per insertion.
            let mut ticks: Vec<u64> = self.docs.values().map(|(_, t, _)| *t).collect();
            let n = (self.cap / 8).max(1).min(ticks.len()) - 1;
            let (_, cutoff, _) = ticks.select_nth_unstable(n);
            let cutoff = *cutoff;
            self.docs.retain(|_, (_, t, _)| *t > cutoff);
        }
        self.tick += 1;
        self.docs.insert(id, (doc, self.tick, updated_seq));
    }

    fn cap(&self) -> usize {
        self.cap
    }

    fn len(&self) -> usize {
        self.docs.len()
    }
}

struct Writer {
    conn: Connection,
    cache: DocCache,
}

struct Inner {
    path: PathBuf,
    epoch: Uuid,
    opts: RelayStoreOptions,
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
    touched: Mutex<HashMap<Uuid, Instant>>,
    notify: watch::Sender<u64>,
    devices_notify: watch::Sender<u64>,
}

/// The relay's SQLite store. Cloning gives another handle to the same store.
#[derive(Clone)]
pub struct SqliteRelayStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteRelayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteRelayStore")
            .field("path", &self.inner.path)
            .field("epoch", &self.inner.epoch)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves no half-done state: SQLite rolled the transaction
    // back and documents being written were taken out of the cache.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Prepared statements kept per connection (see [`open_conn`]).
const STATEMENT_CACHE: usize = 64;

fn open_conn(path: &Path, flags: OpenFlags) -> Result<Connection, RelayStoreError> {
    let conn = Connection::open_with_flags(path, flags)?;
    // One write path uses more distinct statements than rusqlite's default cache of 16;
    // past it every `prepare_cached` re-parses its SQL.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(Duration::from_secs(10))?;
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
            RelayStoreError::NotADatabase(path.to_path_buf(), e.to_string())
        }
        e => RelayStoreError::Sqlite(e),
    })?;
    Ok(conn)
}

fn doc_id(b: &[u8]) -> Result<DocId, RelayStoreError> {
    DocId::from_slice(b)
        .ok_or_else(|| RelayStoreError::Corrupt(format!("bad document id {}", hex::encode(b))))
}

fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn random_hex(bytes: usize) -> Result<String, RelayStoreError> {
    let mut raw = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| RelayStoreError::Random)?;
    Ok(hex::encode(raw))
}

fn scopes_json(scopes: &[String]) -> Result<String, RelayStoreError> {
    if scopes.is_empty() || scopes.iter().any(|s| s.trim().is_empty()) {
        return Err(RelayStoreError::Invalid(
            "a device needs at least one non-empty scope".into(),
        ));
    }
    serde_json::to_string(scopes).map_err(|e| RelayStoreError::Invalid(e.to_string()))
}

/// Bumps the device-change counter inside a write transaction.
/// What the relay lacks of one document: `held` is its stored heads and scope (none if the
/// relay does not hold it), `has` says whether the relay stores a change of it.
fn lack_of(
    held: Option<(Vec<u8>, String)>,
    client_heads: &[Hash],
    mut has: impl FnMut(&Hash) -> Result<bool, RelayStoreError>,
) -> Result<Lack, RelayStoreError> {
    let Some((heads, scope)) = held else {
        return Ok(Lack::Document);
    };
    for h in client_heads {
        if !has(h)? {
            return Ok(Lack::Changes {
                scope,
                heads: split_heads(&heads),
            });
        }
    }
    Ok(Lack::Nothing { scope })
}

/// The end of a grant change on either backend: the devices changed, or an error when none
/// matched.
fn granted(
    who: &str,
    changed: Vec<Uuid>,
    role: Option<Role>,
    scopes: Option<&[String]>,
) -> Result<Vec<Uuid>, RelayStoreError> {
    if changed.is_empty() {
        return Err(RelayStoreError::Invalid(format!(
            "no active device matches {who:?}"
        )));
    }
    tracing::info!(who, devices = ?changed, ?role, ?scopes, "changed a device grant");
    Ok(changed)
}

/// Checks the arguments of a grant change: the device (by id or name), and the scopes as
/// stored (`None` when unchanged).
fn grant_args<'a>(
    who: &'a str,
    role: Option<Role>,
    scopes: Option<&[String]>,
) -> Result<(&'a str, Option<Uuid>, Option<String>), RelayStoreError> {
    if role.is_none() && scopes.is_none() {
        return Err(RelayStoreError::Invalid(
            "a grant change needs a role or scopes".into(),
        ));
    }
    if scopes.is_some_and(<[String]>::is_empty) {
        return Err(RelayStoreError::Invalid(
            "a device needs at least one scope".into(),
        ));
    }
    let who = who.trim();
    Ok((
        who,
        Uuid::parse_str(who).ok(),
        scopes.map(scopes_json).transpose()?,
    ))
}

fn bump_devices(tx: &Transaction<'_>) -> Result<(), RelayStoreError> {
    tx.execute(
        "UPDATE meta SET value = value + 1 WHERE key = ?1",
        [DEVICES_GENERATION],
    )?;
    Ok(())
}

fn devices_generation(c: &Connection) -> Result<u64, RelayStoreError> {
    let v: Option<i64> = c
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [DEVICES_GENERATION],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

fn heads_bytes(doc: &mut AutoCommit) -> Vec<u8> {
    doc.get_heads().iter().flat_map(|h| h.0).collect()
}

fn split_heads(b: &[u8]) -> Vec<Hash> {
    b.chunks_exact(32)
        .filter_map(|c| <[u8; 32]>::try_from(c).ok())
        .collect()
}

fn save(doc: &mut AutoCommit, id: DocId) -> Result<Vec<u8>, RelayStoreError> {
    catch_unwind(AssertUnwindSafe(|| doc.save()))
        .map_err(|_| RelayStoreError::Corrupt(format!("automerge panicked saving document {id}")))
}

/// A device row.
struct DeviceRow {
    name: String,
    role: String,
    scopes: String,
    secret_hash: Option<Vec<u8>>,
    created_at: i64,
    last_seen: Option<i64>,
    revoked_at: Option<i64>,
}

impl DeviceRow {
    fn info(&self, device_id: Uuid) -> Result<DeviceInfo, RelayStoreError> {
        let role = Role::parse(&self.role).ok_or_else(|| {
            RelayStoreError::Corrupt(format!("device {device_id} has role `{}`", self.role))
        })?;
        let scopes: Vec<String> = serde_json::from_str(&self.scopes)
            .map_err(|e| RelayStoreError::Corrupt(format!("device {device_id} scopes: {e}")))?;
        Ok(DeviceInfo {
            device_id,
            name: self.name.clone(),
            role,
            scopes,
        })
    }
}

fn device_row(conn: &Connection, id: Uuid) -> Result<Option<DeviceRow>, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT name, role, scopes, secret_hash, created_at, last_seen, revoked_at
           FROM devices WHERE device_id = ?1",
    )?
    .query_row([id.as_bytes()], |r| {
        Ok(DeviceRow {
            name: r.get(0)?,
            role: r.get(1)?,
            scopes: r.get(2)?,
            secret_hash: r.get(3)?,
            created_at: r.get(4)?,
            last_seen: r.get(5)?,
            revoked_at: r.get(6)?,
        })
    })
    .optional()
}

/// A row of `docs` as the upload path writes it.
struct DocRow<'a> {
    doc_id: DocId,
    kind: Option<i64>,
    scope: &'a str,
    customer_id: Option<DocId>,
    snapshot: &'a [u8],
    heads: &'a [u8],
    updated_seq: i64,
    /// The raw size of every change the document holds.
    raw_bytes: usize,
}

/// `(kind, scope, customer_id, updated_seq)` of a stored document.
type DocMeta = (Option<i64>, String, Option<Vec<u8>>, i64);

/// The statements the upload path runs inside its write transaction: the seam between the
/// backend-independent rules of [`Batch`] (validation, scope moves, the document cache) and
/// each backend's SQL. Every method runs in the one transaction that stores the batch, so
/// the rules read the state they are about to change.
trait BatchDb {
    /// Kind, scope, customer and `updated_seq` of a stored document.
    fn doc_meta(&self, id: DocId) -> Result<Option<DocMeta>, RelayStoreError>;
    /// A stored document's snapshot.
    fn doc_snapshot(&self, id: DocId) -> Result<Vec<u8>, RelayStoreError>;
    /// The raw size of the changes a stored document holds (`docs.raw_bytes`).
    fn doc_bytes(&self, id: DocId) -> Result<usize, RelayStoreError>;
    /// Inserts or replaces a document.
    fn upsert_doc(&self, row: &DocRow<'_>) -> Result<(), RelayStoreError>;
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
    ) -> Result<i64, RelayStoreError>;
    /// Sets the `moved_to` of a `Leave` entry.
    fn set_moved_to(&self, seq: i64, to: &str) -> Result<(), RelayStoreError>;
    /// Records a move of a document between scopes.
    fn insert_move(
        &self,
        doc: DocId,
        from: &str,
        to: &str,
        seq: i64,
        at: i64,
    ) -> Result<(), RelayStoreError>;
    /// Moves of a document after `since` (ms), newest first: `(from_scope, seq)`. A grace
    /// period of zero thus excuses nothing, even a move in the same millisecond.
    fn moves_since(&self, doc: DocId, since: i64) -> Result<Vec<(String, i64)>, RelayStoreError>;
    /// A customer and its visits and quotes: `(doc_id, scope, snapshot)` by id.
    fn customer_docs(
        &self,
        customer: DocId,
    ) -> Result<Vec<(DocId, String, Vec<u8>)>, RelayStoreError>;
    /// Files a document under `scope` at `seq`.
    fn refile_doc(&self, doc: DocId, scope: &str, seq: i64) -> Result<(), RelayStoreError>;
    /// The document and sequence number of a stored change.
    fn stored_change(&self, hash: &[u8]) -> Result<Option<(DocId, i64)>, RelayStoreError>;
    /// Records a stored change.
    fn insert_change(&self, hash: &[u8], doc: DocId, seq: i64) -> Result<(), RelayStoreError>;
    /// Forgets a document's history before its replacement at `seq`: its change and snapshot
    /// log entries, and its change index (see [`replace`]).
    fn forget_history(&self, doc: DocId, seq: i64) -> Result<(), RelayStoreError>;
    /// Appends to the audit trail.
    fn insert_audit(
        &self,
        seq: i64,
        device: Uuid,
        doc: DocId,
        at: i64,
    ) -> Result<(), RelayStoreError>;
    /// A device row.
    fn device_row(&self, id: Uuid) -> Result<Option<DeviceRow>, RelayStoreError>;
    /// The role a change stored before a restore was first uploaded with (see `vouched`).
    fn vouched(&self, hash: &[u8]) -> Result<Option<String>, RelayStoreError>;
    /// Whether `device` has been sent the departure of `doc` from its scopes.
    fn departure_served(&self, device: Uuid, doc: DocId) -> Result<bool, RelayStoreError>;
    /// What `device` stored on `day` (see [`quota`]).
    fn usage(&self, device: Uuid, day: i64) -> Result<Usage, RelayStoreError>;
    /// Adds to what `device` stored on `day`, and forgets its usage of days long past.
    fn add_usage(&self, device: Uuid, day: i64, add: Usage) -> Result<(), RelayStoreError>;
}

impl BatchDb for Transaction<'_> {
    fn doc_meta(&self, id: DocId) -> Result<Option<DocMeta>, RelayStoreError> {
        Ok(self
            .prepare_cached(
                "SELECT kind, scope, customer_id, updated_seq FROM docs WHERE doc_id = ?1",
            )?
            .query_row([id.as_bytes()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?)
    }

    fn doc_snapshot(&self, id: DocId) -> Result<Vec<u8>, RelayStoreError> {
        Ok(self
            .prepare_cached("SELECT snapshot FROM docs WHERE doc_id = ?1")?
            .query_row([id.as_bytes()], |r| r.get(0))?)
    }

    fn doc_bytes(&self, id: DocId) -> Result<usize, RelayStoreError> {
        let n: i64 = self
            .prepare_cached("SELECT raw_bytes FROM docs WHERE doc_id = ?1")?
            .query_row([id.as_bytes()], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn upsert_doc(&self, row: &DocRow<'_>) -> Result<(), RelayStoreError> {
        self.prepare_cached(
            "INSERT INTO docs (doc_id, kind, scope, customer_id, snapshot, heads, updated_seq,
               raw_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (doc_id) DO UPDATE SET kind = excluded.kind, scope = excluded.scope,
               customer_id = excluded.customer_id, snapshot = excluded.snapshot,
               heads = excluded.heads, updated_seq = excluded.updated_seq,
               raw_bytes = excluded.raw_bytes",
        )?
        .execute(params![
            row.doc_id.as_bytes(),
            row.kind,
            row.scope,
            row.customer_id.map(|c| c.as_bytes().to_vec()),
            row.snapshot,
            row.heads,
            row.updated_seq,
            i64::try_from(row.raw_bytes).unwrap_or(i64::MAX),
        ])?;
        Ok(())
    }

    fn insert_log(
        &self,
        scope: &str,
        doc: DocId,
        kind: i64,
        hash: Option<&[u8]>,
        bytes: Option<&[u8]>,
        device: Uuid,
        at: i64,
    ) -> Result<i64, RelayStoreError> {
        self.prepare_cached(
            "INSERT INTO log (scope, doc_id, kind, hash, bytes, device, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            scope,
            doc.as_bytes(),
            kind,
            hash,
            bytes,
            device.as_bytes(),
            at
        ])?;
        Ok(self.last_insert_rowid())
    }

    fn set_moved_to(&self, seq: i64, to: &str) -> Result<(), RelayStoreError> {
        self.prepare_cached("UPDATE log SET moved_to = ?2 WHERE seq = ?1")?
            .execute(params![seq, to])?;
        Ok(())
    }

    fn insert_move(
        &self,
        doc: DocId,
        from: &str,
        to: &str,
        seq: i64,
        at: i64,
    ) -> Result<(), RelayStoreError> {
        self.prepare_cached(
            "INSERT INTO moves (doc_id, from_scope, to_scope, seq, at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![doc.as_bytes(), from, to, seq, at])?;
        Ok(())
    }

    fn moves_since(&self, doc: DocId, since: i64) -> Result<Vec<(String, i64)>, RelayStoreError> {
        Ok(self
            .prepare_cached(
                "SELECT from_scope, seq FROM moves WHERE doc_id = ?1 AND at > ?2
                 ORDER BY seq DESC",
            )?
            .query_map(params![doc.as_bytes(), since], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?)
    }

    fn customer_docs(
        &self,
        customer: DocId,
    ) -> Result<Vec<(DocId, String, Vec<u8>)>, RelayStoreError> {
        let rows: Vec<(Vec<u8>, String, Vec<u8>)> = self
            .prepare_cached(
                "SELECT doc_id, scope, snapshot FROM docs WHERE doc_id = ?1 OR customer_id = ?1
                 ORDER BY doc_id",
            )?
            .query_map([customer.as_bytes()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, scope, snap)| Ok((doc_id(&id)?, scope, snap)))
            .collect()
    }

    fn refile_doc(&self, doc: DocId, scope: &str, seq: i64) -> Result<(), RelayStoreError> {
        self.prepare_cached("UPDATE docs SET scope = ?2, updated_seq = ?3 WHERE doc_id = ?1")?
            .execute(params![doc.as_bytes(), scope, seq])?;
        Ok(())
    }

    fn stored_change(&self, hash: &[u8]) -> Result<Option<(DocId, i64)>, RelayStoreError> {
        let row: Option<(Vec<u8>, i64)> = self
            .prepare_cached("SELECT doc_id, seq FROM changes WHERE hash = ?1")?
            .query_row([hash], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        row.map(|(d, s)| Ok((doc_id(&d)?, s))).transpose()
    }

    fn insert_change(&self, hash: &[u8], doc: DocId, seq: i64) -> Result<(), RelayStoreError> {
        self.prepare_cached("INSERT INTO changes (hash, doc_id, seq) VALUES (?1, ?2, ?3)")?
            .execute(params![hash, doc.as_bytes(), seq])?;
        Ok(())
    }

    fn forget_history(&self, doc: DocId, seq: i64) -> Result<(), RelayStoreError> {
        self.prepare_cached(
            "DELETE FROM log WHERE doc_id = ?1 AND seq < ?2 AND kind IN (?3, ?4, ?5)",
        )?
        .execute(params![
            doc.as_bytes(),
            seq,
            KIND_CHANGES,
            KIND_SNAPSHOT,
            KIND_REPLACE
        ])?;
        self.prepare_cached("DELETE FROM changes WHERE doc_id = ?1")?
            .execute([doc.as_bytes()])?;
        Ok(())
    }

    fn insert_audit(
        &self,
        seq: i64,
        device: Uuid,
        doc: DocId,
        at: i64,
    ) -> Result<(), RelayStoreError> {
        self.prepare_cached("INSERT INTO audit (seq, device, doc_id, at) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![seq, device.as_bytes(), doc.as_bytes(), at])?;
        Ok(())
    }

    fn device_row(&self, id: Uuid) -> Result<Option<DeviceRow>, RelayStoreError> {
        Ok(device_row(self, id)?)
    }

    fn vouched(&self, hash: &[u8]) -> Result<Option<String>, RelayStoreError> {
        Ok(self
            .prepare_cached("SELECT role FROM vouched WHERE hash = ?1")?
            .query_row([hash], |r| r.get(0))
            .optional()?)
    }

    fn departure_served(&self, device: Uuid, doc: DocId) -> Result<bool, RelayStoreError> {
        Ok(self
            .prepare_cached("SELECT 1 FROM departures_served WHERE device = ?1 AND doc_id = ?2")?
            .exists(params![device.as_bytes(), doc.as_bytes()])?)
    }

    fn usage(&self, device: Uuid, day: i64) -> Result<Usage, RelayStoreError> {
        usage_on(self, device, day)
    }

    fn add_usage(&self, device: Uuid, day: i64, add: Usage) -> Result<(), RelayStoreError> {
        self.prepare_cached(
            "INSERT INTO device_usage (device, day, new_docs, bytes) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (device, day) DO UPDATE
               SET new_docs = new_docs + excluded.new_docs, bytes = bytes + excluded.bytes",
        )?
        .execute(params![
            device.as_bytes(),
            day,
            i64::try_from(add.new_documents).unwrap_or(i64::MAX),
            i64::try_from(add.bytes).unwrap_or(i64::MAX)
        ])?;
        self.prepare_cached("DELETE FROM device_usage WHERE device = ?1 AND day < ?2")?
            .execute(params![device.as_bytes(), day - quota::KEEP_DAYS])?;
        Ok(())
    }
}

/// What `device` stored on `day`, from a SQLite connection.
fn usage_on(c: &Connection, device: Uuid, day: i64) -> Result<Usage, RelayStoreError> {
    let row: Option<(i64, i64)> = c
        .prepare_cached("SELECT new_docs, bytes FROM device_usage WHERE device = ?1 AND day = ?2")?
        .query_row(params![device.as_bytes(), day], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(row.map_or(Usage::default(), |(n, b)| Usage {
        new_documents: n.max(0) as u64,
        bytes: b.max(0) as u64,
    }))
}

/// One document being written during an upload batch.
struct Work {
    doc: AutoCommit,
    kind: Option<DocKind>,
    scope: Option<String>,
    customer_id: Option<DocId>,
    updated_seq: i64,
    /// Changes accepted into `doc` since it was last written to `docs` (none: clean).
    unsaved: Vec<Vec<u8>>,
    /// The raw size of every change the document holds now (those stored in `docs` plus those
    /// accepted since): an upper bound of what loading it costs, whatever its snapshot
    /// compresses to.
    raw_bytes: usize,
}

/// State of one upload batch inside its transaction.
struct Batch<'a, D: BatchDb> {
    tx: &'a D,
    cache: &'a mut DocCache,
    work: HashMap<DocId, Work>,
    now: i64,
    high: Option<i64>,
    move_grace_ms: i64,
    quota: Quota,
    sender: Uuid,
    /// The sender's usage today before this batch (read at its first change) and what the
    /// batch added.
    used: Option<Usage>,
    added: Usage,
}

impl<D: BatchDb> Batch<'_, D> {
    /// Takes a document out of the working set, the cache or the database (a new, empty
    /// document if the relay has none).
    fn take(&mut self, id: DocId) -> Result<Work, RelayStoreError> {
        if let Some(w) = self.work.remove(&id) {
            return Ok(w);
        }
        let Some((kind, scope, customer, updated_seq)) = self.tx.doc_meta(id)? else {
            return Ok(Work {
                doc: AutoCommit::new(),
                kind: None,
                scope: None,
                customer_id: None,
                updated_seq: 0,
                unsaved: Vec::new(),
                raw_bytes: 0,
            });
        };
        // A cached copy is used only if no other writer (another relay node sharing the
        // database) stored the document since it was cached.
        let doc = match self.cache.take(&id, updated_seq) {
            Some(d) => d,
            None => {
                let snapshot = self.tx.doc_snapshot(id)?;
                load_snapshot(&snapshot)
                    .map_err(|e| RelayStoreError::Unloadable(id, e.to_string()))?
            }
        };
        Ok(Work {
            doc,
            kind: kind.and_then(DocKind::from_code),
            scope: Some(scope),
            customer_id: customer.as_deref().map(doc_id).transpose()?,
            updated_seq,
            unsaved: Vec::new(),
            raw_bytes: self.tx.doc_bytes(id)?,
        })
    }

    /// Writes every changed document of the working set back to `docs`.
    fn flush(&mut self) -> Result<(), RelayStoreError> {
        if self.added != Usage::default() {
            self.tx
                .add_usage(self.sender, day_of(self.now), self.added)?;
            if let Some(used) = self.used.as_mut() {
                used.new_documents += self.added.new_documents;
                used.bytes = used.bytes.saturating_add(self.added.bytes);
            }
            self.added = Usage::default();
        }
        for (id, w) in self.work.iter_mut().filter(|(_, w)| !w.unsaved.is_empty()) {
            let snapshot = save(&mut w.doc, *id)?;
            let heads = heads_bytes(&mut w.doc);
            self.tx.upsert_doc(&DocRow {
                doc_id: *id,
                kind: w.kind.map(DocKind::code),
                scope: w.scope.as_deref().unwrap_or_default(),
                customer_id: w.customer_id,
                snapshot: &snapshot,
                heads: &heads,
                updated_seq: w.updated_seq,
                raw_bytes: w.raw_bytes,
            })?;
            w.unsaved.clear();
        }
        Ok(())
    }

    /// Rebuilds a working document that automerge left unusable: the stored snapshot (or an
    /// empty document) plus the changes this batch accepted into it since.
    fn rebuild(&self, id: DocId, w: &mut Work) -> Result<(), RelayStoreError> {
        let corrupt =
            |e: String| RelayStoreError::Corrupt(format!("rebuilding document {id}: {e}"));
        let mut doc = match self.tx.doc_meta(id)? {
            Some(_) => {
                load_snapshot(&self.tx.doc_snapshot(id)?).map_err(|e| corrupt(e.to_string()))?
            }
            None => AutoCommit::new(),
        };
        for bytes in &w.unsaved {
            let change = decode_change(bytes).map_err(|e| corrupt(e.to_string()))?;
            catch_unwind(AssertUnwindSafe(|| doc.apply_changes([change])))
                .map_err(|_| corrupt("automerge panicked".into()))?
                .map_err(|e| corrupt(e.to_string()))?;
        }
        w.doc = doc;
        Ok(())
    }

    fn log(
        &mut self,
        scope: &str,
        doc: DocId,
        kind: i64,
        hash: Option<&[u8]>,
        bytes: Option<&[u8]>,
        device: Uuid,
    ) -> Result<i64, RelayStoreError> {
        let seq = self
            .tx
            .insert_log(scope, doc, kind, hash, bytes, device, self.now)?;
        self.high = Some(seq);
        Ok(seq)
    }

    /// A customer moved from `old` to `new`: re-files it and its visits and quotes, with a
    /// `Leave` entry in the scope each leaves and a snapshot entry in the new scope.
    fn refile(
        &mut self,
        customer: DocId,
        old: &str,
        new: &str,
        device: Uuid,
    ) -> Result<(), RelayStoreError> {
        self.flush()?;
        let rows = self.tx.customer_docs(customer)?;
        for (id, scope, snapshot) in rows {
            let from = if id == customer {
                old.to_string()
            } else {
                scope
            };
            if from == new {
                continue;
            }
            let leave = self.log(&from, id, KIND_LEAVE, None, None, device)?;
            self.tx.set_moved_to(leave, new)?;
            self.tx.insert_move(id, &from, new, leave, self.now)?;
            let seq = self.log(new, id, KIND_SNAPSHOT, None, Some(&snapshot), device)?;
            self.tx.refile_doc(id, new, seq)?;
            if let Some(w) = self.work.get_mut(&id) {
                w.scope = Some(new.to_string());
                w.updated_seq = seq;
            }
        }
        tracing::info!(customer = %customer, from = old, to = new, "customer moved scope");
        Ok(())
    }

    /// A new document was accepted under the move grace period (a visit or quote written
    /// offline for a customer that has since moved out of the author's scopes). The author's
    /// replica holds it, but it was never filed in the author's scopes, so no `Leave` there
    /// would ever tell the replica to drop it: log one in the scope the customer left, as
    /// the move did for the customer's other documents, and record it as a move.
    fn leave_author(
        &mut self,
        device: &DeviceInfo,
        doc: DocId,
        customer: Option<DocId>,
        new: &str,
    ) -> Result<(), RelayStoreError> {
        let Some(customer) = customer else {
            return Ok(());
        };
        let froms = self
            .tx
            .moves_since(customer, i64::MIN)?
            .into_iter()
            .map(|(from, _)| from);
        let Some(from) = froms.into_iter().find(|s| device.sees(s)) else {
            return Ok(());
        };
        let leave = self.log(&from, doc, KIND_LEAVE, None, None, device.device_id)?;
        self.tx.set_moved_to(leave, new)?;
        self.tx.insert_move(doc, &from, new, leave, self.now)?;
        Ok(())
    }

    /// Validates and stores one uploaded change.
    fn append_one(
        &mut self,
        device: &DeviceInfo,
        c: &UploadChange,
    ) -> Result<Outcome, RelayStoreError> {
        let refuse = |hash: Hash, reason: String, retry: bool| {
            Outcome::Refused(Rejection {
                hash,
                reason,
                retry,
            })
        };
        let change = match decode_change(&c.bytes) {
            Ok(ch) => ch,
            Err(e) => return Ok(refuse([0; 32], e.to_string(), false)),
        };
        let hash = change.hash().0;
        // Re-sending is harmless: a stored change is acknowledged again without a new entry
        // — unless its document is outside the sender's scopes, which is answered as a
        // document the relay does not have (below).
        let stored = self.tx.stored_change(&hash)?;
        if let Some((d, _)) = stored {
            if d != c.doc_id {
                return Ok(refuse(
                    hash,
                    "change belongs to another document".into(),
                    false,
                ));
            }
            // The sender's own change: it knows it sent it, so saying "stored" tells it
            // nothing (and a re-sent change whose answer was lost must not be refused).
            let own = change
                .actor_id()
                .to_bytes()
                .starts_with(device.device_id.as_bytes());
            let visible = own
                || self
                    .tx
                    .doc_meta(d)?
                    .is_some_and(|(_, scope, _, _)| device.sees(&scope));
            if visible {
                return Ok(Outcome::Stored);
            }
        }
        // A document the relay cannot load refuses only its own changes (they wait in the
        // device's outbox), never the rest of the upload.
        let mut work = match self.take(c.doc_id) {
            Ok(w) => w,
            Err(RelayStoreError::Unloadable(id, why)) => {
                tracing::error!(doc = %id, reason = %why, "a stored document cannot be loaded; refusing changes to it");
                return Ok(refuse(
                    hash,
                    "the relay cannot load this document; the change waits until IT repairs it"
                        .into(),
                    true,
                ));
            }
            Err(e) => return Err(e),
        };
        let new_doc = work.scope.is_none();
        // The document's size budget, checked before the change is applied (only for a
        // document the sender sees: another one is answered as one the relay lacks).
        if work.scope.as_deref().is_none_or(|s| device.sees(s))
            && work.raw_bytes + c.bytes.len() > MAX_DOC_BYTES
        {
            let size = work.raw_bytes;
            self.work.insert(c.doc_id, work);
            // A document already over its budget (stored before the budget existed) is not
            // this change's doing: the change waits until IT trims the document.
            return Ok(if size > MAX_DOC_BYTES {
                refuse(
                    hash,
                    format!(
                        "over budget: the document holds about {size} bytes, over its budget of \
                         {MAX_DOC_BYTES}; the change waits until IT trims it"
                    ),
                    true,
                )
            } else {
                refuse(
                    hash,
                    format!(
                        "over budget: the document would grow past {MAX_DOC_BYTES} bytes (it holds about {size})"
                    ),
                    false,
                )
            });
        }
        // The sender's daily quota (it says nothing of the document, so it is checked for
        // every change, one accepted under a move's grace period included).
        {
            let used = match self.used {
                Some(u) => u,
                None => *self
                    .used
                    .insert(self.tx.usage(device.device_id, day_of(self.now))?),
            };
            let now_used = Usage {
                new_documents: used.new_documents + self.added.new_documents,
                bytes: used.bytes.saturating_add(self.added.bytes),
            };
            if let Err(reason) = self.quota.check(now_used, new_doc, c.bytes.len()) {
                self.work.insert(c.doc_id, work);
                return Ok(refuse(hash, reason, true));
            }
        }
        let failure: RefCell<Option<RelayStoreError>> = RefCell::new(None);
        let result = {
            let tx = self.tx;
            let others = &self.work;
            let vouched = |hash: &ChangeHash| -> Option<Role> {
                match tx.vouched(&hash.0) {
                    // An unreadable role vouches for nothing.
                    Ok(role) => role.as_deref().and_then(Role::parse),
                    Err(e) => {
                        failure.borrow_mut().get_or_insert(e);
                        None
                    }
                }
            };
            let customer_scope = |cid: DocId| -> Option<String> {
                if let Some(w) = others.get(&cid) {
                    return w.scope.clone();
                }
                tx.doc_meta(cid)
                    .map(|m| m.map(|(_, scope, _, _)| scope))
                    .unwrap_or_else(|e| {
                        failure.borrow_mut().get_or_insert(e);
                        None
                    })
            };
            let since = self.now.saturating_sub(self.move_grace_ms);
            // The document left one of the sender's scopes within the grace period, the
            // sender has not been sent its departure yet, and the change's dependencies were
            // all stored before it left.
            let left_senders_scope = |id: DocId, deps: &[ChangeHash]| -> bool {
                let check = || -> Result<bool, RelayStoreError> {
                    if tx.departure_served(device.device_id, id)? {
                        return Ok(false);
                    }
                    let moves = tx.moves_since(id, since)?;
                    let Some(moved_at) = moves
                        .iter()
                        .find(|(from, _)| device.sees(from))
                        .map(|(_, seq)| *seq)
                    else {
                        return Ok(false);
                    };
                    for d in deps {
                        let seq = tx.stored_change(&d.0)?.map(|(_, s)| s);
                        if seq.is_none_or(|s| s >= moved_at) {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                };
                check().unwrap_or_else(|e| {
                    failure.borrow_mut().get_or_insert(e);
                    false
                })
            };
            check_change(
                &mut work.doc,
                c.doc_id,
                &c.bytes,
                device,
                &vouched,
                work.scope.as_deref(),
                &customer_scope,
                &left_senders_scope,
            )
        };
        if let Some(e) = failure.into_inner() {
            return Err(e);
        }
        let accepted = match result {
            Ok(a) => a,
            Err(refusal) => {
                if refusal.doc_lost {
                    tracing::warn!(doc = %c.doc_id, reason = %refusal.reason, "automerge failed on an uploaded change; reloading the document");
                    self.rebuild(c.doc_id, &mut work)?;
                }
                self.work.insert(c.doc_id, work);
                if refusal.malformed {
                    tracing::warn!(doc = %c.doc_id, device = %device.device_id, reason = %refusal.reason, "malformed change; ending the upload");
                    return Ok(Outcome::Malformed(Rejection {
                        hash,
                        reason: refusal.reason,
                        retry: false,
                    }));
                }
                return Ok(refuse(hash, refusal.reason, refusal.retry));
            }
        };
        if stored.is_some() {
            // Stored before (and excused by a move's grace period): nothing new to log.
            self.work.insert(c.doc_id, work);
            return Ok(Outcome::Stored);
        }
        if accepted.kind.is_some() {
            work.kind = accepted.kind;
        }
        if accepted.scope.is_some() {
            work.scope = accepted.scope.clone();
        }
        if accepted.customer_id.is_some() {
            work.customer_id = accepted.customer_id;
        }
        work.raw_bytes += c.bytes.len();
        self.added.add(new_doc, c.bytes.len());
        work.unsaved.push(c.bytes.clone());
        let scope = work.scope.clone().unwrap_or_default();
        self.work.insert(c.doc_id, work);
        if let Some(old) = &accepted.moved_from {
            self.refile(c.doc_id, old, &scope, device.device_id)?;
        }
        let seq = self.log(
            &scope,
            c.doc_id,
            KIND_CHANGES,
            Some(&hash),
            Some(&c.bytes),
            device.device_id,
        )?;
        self.tx.insert_change(&hash, c.doc_id, seq)?;
        if new_doc && !device.sees(&scope) {
            self.leave_author(device, c.doc_id, accepted.customer_id, &scope)?;
        }
        self.tx
            .insert_audit(seq, device.device_id, c.doc_id, self.now)?;
        if let Some(w) = self.work.get_mut(&c.doc_id) {
            w.updated_seq = seq;
        }
        if self.work.len() > self.cache.cap() {
            // Bound memory on huge batches (as many documents as the cache holds): write back
            // and drop; later changes reload from this transaction's view of `docs`.
            self.flush()?;
            self.work.clear();
        }
        Ok(Outcome::Stored)
    }
}

/// What one upload batch did: an outcome per change, the documents it loaded (to cache after
/// the commit) and the highest sequence number it assigned.
type BatchResult = (Vec<Outcome>, HashMap<DocId, Work>, Option<i64>);

/// The backend-independent part of an upload: checks the sender's current grant and
/// validates and stores each change through `tx` (one transaction the caller commits).
fn append_batch<D: BatchDb>(
    tx: &D,
    cache: &mut DocCache,
    opts: &RelayStoreOptions,
    device: &DeviceInfo,
    changes: &[UploadChange],
    relayed: bool,
) -> Result<BatchResult, RelayStoreError> {
    // The sender's grant is read again inside the transaction that stores the changes,
    // so a revocation or a narrower grant committed meanwhile applies to this write.
    let sender = tx.device_row(device.device_id)?;
    let fresh;
    let device = match sender {
        Some(r) if r.revoked_at.is_some() => {
            // Not the changes' fault: they stay in the device's outbox (retry) and the
            // session is closed as unauthorised.
            let refused = changes
                .iter()
                .map(|c| {
                    Outcome::Refused(Rejection {
                        hash: hash_of(&c.bytes),
                        reason: "device revoked".into(),
                        retry: true,
                    })
                })
                .collect();
            return Ok((refused, HashMap::new(), None));
        }
        Some(r) => {
            fresh = r.info(device.device_id)?;
            &fresh
        }
        None => device,
    };
    let mut batch = Batch {
        tx,
        cache,
        work: HashMap::new(),
        now: opts.env.now_millis(),
        high: None,
        move_grace_ms: i64::try_from(opts.move_grace.as_millis()).unwrap_or(i64::MAX),
        quota: opts.quota,
        sender: device.device_id,
        used: None,
        added: Usage::default(),
    };
    if relayed {
        // A repair upload (after the relay's log restarted) is judged like any other.
        tracing::debug!(device = %device.device_id, changes = changes.len(), "repair upload");
    }
    let mut outcomes = Vec::with_capacity(changes.len());
    let mut rest = changes.iter();
    for c in rest.by_ref() {
        let outcome = batch.append_one(device, c)?;
        let malformed = matches!(outcome, Outcome::Malformed(_));
        outcomes.push(outcome);
        if malformed {
            break;
        }
    }
    // After a malformed change the upload is not examined further (each could cost a reload
    // of its document); an honest sender sends the rest again on its next connection.
    outcomes.extend(rest.map(|c| {
        Outcome::Refused(Rejection {
            hash: hash_of(&c.bytes),
            reason: "not examined: an earlier change of the upload does not fit its document"
                .into(),
            retry: true,
        })
    }));
    batch.flush()?;
    let Batch { work, high, .. } = batch;
    Ok((outcomes, work, high))
}

/// The hash of an uploaded change, for a refusal that does not examine it (zero if it does not
/// decode).
fn hash_of(bytes: &[u8]) -> Hash {
    decode_change(bytes).map_or([0; 32], |ch| ch.hash().0)
}

impl SqliteRelayStore {
    /// Opens (or creates) the relay database at `path`.
    ///
    /// Refuses, without modifying it, a file that is not SQLite, a SQLite database of another
    /// application (including a client replica) and a database written by a newer relay.
    ///
    /// The database and the files SQLite keeps beside it are readable by their owner only
    /// (`0600`): created so, or tightened with a warning if they were readable by others.
    pub fn open(path: impl AsRef<Path>, opts: RelayStoreOptions) -> Result<Self, RelayStoreError> {
        let path = path.as_ref().to_path_buf();
        fieldsync_core::fsmode::prepare_database(&path);
        let mut conn = open_conn(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        schema::migrate(&mut conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let epoch = {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let stored: Option<Vec<u8>> = tx
                .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                    r.get(0)
                })
                .optional()?;
            let epoch = match stored {
                Some(b) => Uuid::from_slice(&b)
                    .map_err(|_| RelayStoreError::Corrupt("bad epoch in meta".into()))?,
                None => {
                    let e = Uuid::new_v4();
                    tx.execute(
                        "INSERT INTO meta (key, value) VALUES ('epoch', ?1)",
                        [e.as_bytes().to_vec()],
                    )?;
                    tracing::info!(epoch = %e, path = %path.display(), "created relay database");
                    e
                }
            };
            tx.commit()?;
            epoch
        };
        let high: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM log", [], |r| r.get(0))?;
        let (notify, _) = watch::channel(high.max(0) as u64);
        let (devices_notify, _) = watch::channel(devices_generation(&conn)?);
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                epoch,
                writer: Mutex::new(Writer {
                    conn,
                    cache: DocCache::new(opts.cache_docs),
                }),
                opts,
                readers: Mutex::new(Vec::new()),
                touched: Mutex::new(HashMap::new()),
                notify,
                devices_notify,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The relay's epoch (created with the database).
    pub fn epoch(&self) -> Uuid {
        self.inner.epoch
    }

    /// Receives the highest sequence number after every upload that appended to the log.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.notify.subscribe()
    }

    /// Receives a new value whenever devices or enrolments changed: at once for changes made
    /// through this handle, and after [`SqliteRelayStore::poll_devices`] for changes made by
    /// another process (`fieldsync-relay device revoke` while the relay runs).
    pub fn subscribe_devices(&self) -> watch::Receiver<u64> {
        self.inner.devices_notify.subscribe()
    }

    /// Reads the device-change counter from the database and notifies
    /// [`SqliteRelayStore::subscribe_devices`] receivers if it moved. The relay calls this
    /// every second.
    pub fn poll_devices(&self) -> Result<u64, RelayStoreError> {
        let g = self.read(devices_generation)?;
        self.inner.devices_notify.send_if_modified(|v| {
            let changed = *v != g;
            *v = g;
            changed
        });
        Ok(g)
    }

    /// Runs a write that changes devices: bumps the counter in the same transaction and
    /// notifies this process's receivers after the commit.
    fn write_devices<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        let v = self.write(|tx| {
            let v = f(tx)?;
            bump_devices(tx)?;
            Ok(v)
        })?;
        self.poll_devices()?;
        Ok(v)
    }

    /// Notices log entries another process appended (`fieldsync-relay doc trim` while the
    /// relay runs) and wakes [`SqliteRelayStore::subscribe`] receivers. The relay calls this
    /// every second.
    pub fn poll_log(&self) -> Result<u64, RelayStoreError> {
        let high = self.high_seq()?;
        self.inner.notify.send_if_modified(|v| {
            let grew = high > *v;
            if grew {
                *v = high;
            }
            grew
        });
        Ok(high)
    }

    /// Replaces document `id`'s history with the one `rewrite` writes from its stored
    /// snapshot, in one write transaction (see the `replace` module); `rewrite` giving none writes
    /// nothing. Blocks uploads while `rewrite` runs.
    pub fn replace_history(
        &self,
        id: DocId,
        rewrite: impl FnOnce(&[u8]) -> Result<Option<AutoCommit>, RelayStoreError>,
    ) -> Result<Option<Replacement>, RelayStoreError> {
        let mut guard = lock(&self.inner.writer);
        let Writer { conn, .. } = &mut *guard;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let done = replace::replace_history(&tx, id, self.inner.opts.env.now_millis(), rewrite)?;
        tx.commit()?;
        drop(guard);
        if let Some(r) = &done {
            self.inner.notify.send_if_modified(|v| {
                let grew = r.seq > *v;
                *v = (*v).max(r.seq);
                grew
            });
        }
        Ok(done)
    }

    /// Documents currently loaded in the write cache (for tests and metrics).
    pub fn cached_docs(&self) -> usize {
        lock(&self.inner.writer).cache.len()
    }

    /// Runs `f` on a pooled read-only connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        let pooled = lock(&self.inner.readers).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_conn(
                &self.inner.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?,
        };
        let r = f(&conn);
        let mut pool = lock(&self.inner.readers);
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        r
    }

    /// Runs `f` in a write transaction.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        let mut w = lock(&self.inner.writer);
        let tx = w
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let v = f(&tx)?;
        tx.commit()?;
        Ok(v)
    }

    /// Validates and durably stores uploaded changes (see [`RelayStorage::append`]); one
    /// transaction for the whole batch, committed before returning.
    pub fn append_changes(
        &self,
        device: &DeviceInfo,
        changes: &[UploadChange],
        relayed: bool,
    ) -> Result<Vec<Outcome>, RelayStoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut guard = lock(&self.inner.writer);
        let Writer { conn, cache } = &mut *guard;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (outcomes, work, high) =
            append_batch(&tx, cache, &self.inner.opts, device, changes, relayed)?;
        tx.commit()?;
        for (id, w) in work {
            // Only documents the relay holds: a refused first change leaves an empty one.
            if w.scope.is_some() {
                cache.insert(id, w.doc, w.updated_seq);
            }
        }
        if let Some(h) = high {
            self.inner.notify.send_replace(h.max(0) as u64);
        }
        Ok(outcomes)
    }

    /// The highest sequence number assigned so far.
    pub fn high_seq(&self) -> Result<u64, RelayStoreError> {
        self.read(|c| {
            let h: i64 = c.query_row("SELECT COALESCE(MAX(seq), 0) FROM log", [], |r| r.get(0))?;
            Ok(h.max(0) as u64)
        })
    }

    /// Log entries of `scope` after `after` (see [`RelayStorage::read_log`]). For `*` (a device
    /// that sees every scope) only change entries are returned: it has every change already, so
    /// a scope move's snapshot entries are redundant for it and its `Leave` entries would be
    /// wrong.
    pub fn read_log(
        &self,
        scope: &str,
        after: u64,
        max_bytes: usize,
    ) -> Result<(Vec<LogEntry>, bool), RelayStoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        self.read(|c| {
            let mut st;
            let mut rows = if scope == ALL_SCOPES {
                st = c.prepare_cached(
                    "SELECT seq, doc_id, kind, length(bytes), bytes, hash, moved_to FROM log
                     WHERE seq > ?1 AND kind IN (0, 3) ORDER BY seq",
                )?;
                st.query(params![after])?
            } else {
                // A Leave names where the document is filed now: a reader that sees that
                // scope keeps it, even if it moved on (or back) since the entry.
                st = c.prepare_cached(
                    "SELECT seq, doc_id, kind, length(bytes), bytes, hash,
                       CASE WHEN kind = 2 THEN COALESCE(
                         (SELECT d.scope FROM docs d WHERE d.doc_id = log.doc_id), moved_to)
                       ELSE moved_to END
                     FROM log WHERE scope = ?2 AND seq > ?1 ORDER BY seq",
                )?;
                st.query(params![after, scope])?
            };
            let mut out = Vec::new();
            let mut used = 0usize;
            while let Some(r) = rows.next()? {
                let size =
                    r.get::<_, Option<i64>>(3)?.unwrap_or(0).max(0) as usize + ENTRY_OVERHEAD;
                if !out.is_empty() && used + size > max_bytes {
                    return Ok((out, true));
                }
                used += size;
                let seq: i64 = r.get(0)?;
                let id = doc_id(&r.get::<_, Vec<u8>>(1)?)?;
                let kind: i64 = r.get(2)?;
                let bytes: Option<Vec<u8>> = r.get(4)?;
                let entry = match (kind, bytes) {
                    (KIND_CHANGES, Some(b)) => Entry::Changes(vec![Bytes(b)]),
                    (KIND_SNAPSHOT, Some(b)) => Entry::Snapshot(Bytes(b)),
                    (KIND_LEAVE, _) => Entry::Leave,
                    (KIND_REPLACE, Some(b)) => Entry::Replace(Bytes(b)),
                    (k, _) => {
                        return Err(RelayStoreError::Corrupt(format!(
                            "log entry {seq} of kind {k}"
                        )));
                    }
                };
                let hash: Option<Vec<u8>> = r.get(5)?;
                out.push(LogEntry {
                    seq: seq.max(0) as u64,
                    doc_id: id,
                    hash: hash.and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok()),
                    moved_to: r.get(6)?,
                    entry,
                });
            }
            Ok((out, false))
        })
    }

    /// Snapshots of the documents in `scope` after `after` (see [`RelayStorage::read_snapshots`]).
    pub fn read_snapshots(
        &self,
        scope: &str,
        after: Option<DocId>,
        max_bytes: usize,
    ) -> Result<SnapshotPage, RelayStoreError> {
        let after: Vec<u8> = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
        self.read(|c| {
            let mut st;
            let mut rows = if scope == ALL_SCOPES {
                st = c.prepare_cached(
                    "SELECT doc_id, length(snapshot), snapshot FROM docs WHERE doc_id > ?1 ORDER BY doc_id",
                )?;
                st.query(params![after])?
            } else {
                st = c.prepare_cached(
                    "SELECT doc_id, length(snapshot), snapshot FROM docs
                     WHERE scope = ?2 AND doc_id > ?1 ORDER BY doc_id",
                )?;
                st.query(params![after, scope])?
            };
            let mut out = Vec::new();
            let mut used = 0usize;
            while let Some(r) = rows.next()? {
                let size = r.get::<_, i64>(1)?.max(0) as usize + ENTRY_OVERHEAD;
                if !out.is_empty() && used + size > max_bytes {
                    return Ok((out, true));
                }
                used += size;
                out.push((doc_id(&r.get::<_, Vec<u8>>(0)?)?, r.get(2)?));
            }
            Ok((out, false))
        })
    }

    /// Documents that left `scope` at or before `upto`, with where each is filed now (see
    /// [`RelayStorage::departures`]).
    pub fn departures(
        &self,
        scope: &str,
        upto: u64,
    ) -> Result<Vec<(DocId, String)>, RelayStoreError> {
        let upto = i64::try_from(upto).unwrap_or(i64::MAX);
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT DISTINCT m.doc_id, d.scope FROM moves m JOIN docs d ON d.doc_id = m.doc_id
                  WHERE m.from_scope = ?1 AND m.seq <= ?2 AND d.scope != ?1 ORDER BY m.doc_id",
            )?;
            let rows = st.query_map(params![scope, upto], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, now) = row?;
                out.push((doc_id(&id)?, now));
            }
            Ok(out)
        })
    }

    /// For each document and a client's heads, what the relay lacks of it.
    pub fn missing(&self, docs: &[(DocId, Vec<Hash>)]) -> Result<Vec<Lack>, RelayStoreError> {
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            let mut heads_st =
                tx.prepare_cached("SELECT heads, scope FROM docs WHERE doc_id = ?1")?;
            let mut has_st =
                tx.prepare_cached("SELECT 1 FROM changes WHERE hash = ?1 AND doc_id = ?2")?;
            let mut out = Vec::with_capacity(docs.len());
            for (id, client_heads) in docs {
                let heads: Option<(Vec<u8>, String)> = heads_st
                    .query_row([id.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                out.push(lack_of(heads, client_heads, |h| {
                    Ok(has_st.exists(params![&h[..], id.as_bytes()])?)
                })?);
            }
            drop((heads_st, has_st));
            tx.finish()?;
            Ok(out)
        })
    }

    /// Checks a device's credential; in open mode registers unknown devices.
    pub fn authenticate(
        &self,
        device_id: Uuid,
        credential: Option<&str>,
    ) -> Result<Option<DeviceInfo>, RelayStoreError> {
        let Some(open) = self.inner.opts.open.as_ref() else {
            let row = self.read(|c| Ok(device_row(c, device_id)?))?;
            return row.map_or(Ok(None), |r| self.admit(device_id, &r, credential));
        };
        if let Some(r) = self.read(|c| Ok(device_row(c, device_id)?))? {
            return self.admit(device_id, &r, credential);
        }
        let scopes = serde_json::to_string(&open.scopes)
            .map_err(|e| RelayStoreError::Invalid(e.to_string()))?;
        let now = self.inner.opts.env.now_millis();
        let inserted = self.write(|tx| {
            Ok(tx.execute(
                "INSERT OR IGNORE INTO devices (device_id, name, role, scopes, secret_hash, created_at, last_seen)
                 VALUES (?1, 'open enrolment', ?2, ?3, NULL, ?4, ?4)",
                params![device_id.as_bytes(), open.role.as_str(), scopes, now],
            )?)
        })?;
        if inserted > 0 {
            lock(&self.inner.touched).insert(device_id, Instant::now());
            tracing::info!(device = %device_id, role = %open.role, "registered a device by open enrolment");
        }
        // Read back: a concurrent registration or enrolment may have come first.
        let row = self.read(|c| Ok(device_row(c, device_id)?))?;
        row.map_or(Ok(None), |r| self.admit(device_id, &r, credential))
    }

    /// Whether a known device may connect: not revoked, and its secret matches (devices
    /// registered by open enrolment have none and are admitted while open enrolment is on).
    fn admit(
        &self,
        device_id: Uuid,
        row: &DeviceRow,
        credential: Option<&str>,
    ) -> Result<Option<DeviceInfo>, RelayStoreError> {
        if row.revoked_at.is_some() {
            return Ok(None);
        }
        let ok = match (&row.secret_hash, credential) {
            (Some(h), Some(c)) => crate::tls::ct_eq(h, &hash_secret(c)),
            (Some(_), None) => false,
            (None, _) => self.inner.opts.open.is_some(),
        };
        if ok {
            row.info(device_id).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Records that a device is being sent the departure of `docs` (see
    /// [`RelayStorage::record_departures`]).
    pub fn record_departures(
        &self,
        device_id: Uuid,
        docs: &[DocId],
    ) -> Result<(), RelayStoreError> {
        self.write(|tx| {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO departures_served (device, doc_id) VALUES (?1, ?2)",
            )?;
            for d in docs {
                st.execute(params![device_id.as_bytes(), d.as_bytes()])?;
            }
            Ok(())
        })
    }

    /// Records that a device finished a sync exchange (written at most every 30 s per device).
    pub fn touch_device(&self, device_id: Uuid) -> Result<(), RelayStoreError> {
        {
            let mut t = lock(&self.inner.touched);
            if t.get(&device_id)
                .is_some_and(|at| at.elapsed() < TOUCH_EVERY)
            {
                return Ok(());
            }
            t.insert(device_id, Instant::now());
        }
        self.write(|tx| {
            tx.execute(
                "UPDATE devices SET last_seen = ?2 WHERE device_id = ?1",
                params![device_id.as_bytes(), self.inner.opts.env.now_millis()],
            )?;
            Ok(())
        })
    }

    /// Enrols a device (a new id unless `device_id` is given; re-enrolling an id replaces its
    /// secret, role and scopes and lifts a revocation). Returns the secret, shown only now.
    pub fn enroll_device(
        &self,
        device_id: Option<Uuid>,
        name: &str,
        role: Role,
        scopes: &[String],
    ) -> Result<Enrollment, RelayStoreError> {
        let scopes_json = scopes_json(scopes)?;
        let device_id = device_id.unwrap_or_else(Uuid::now_v7);
        let secret = random_hex(32)?;
        let now = self.inner.opts.env.now_millis();
        self.write_devices(|tx| {
            tx.execute(
                "INSERT INTO devices (device_id, name, role, scopes, secret_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (device_id) DO UPDATE SET name = excluded.name, role = excluded.role,
                   scopes = excluded.scopes, secret_hash = excluded.secret_hash, revoked_at = NULL",
                params![
                    device_id.as_bytes(),
                    name,
                    role.as_str(),
                    scopes_json,
                    hash_secret(&secret),
                    now
                ],
            )?;
            Ok(())
        })?;
        tracing::info!(device = %device_id, %role, ?scopes, "enrolled a device");
        Ok(Enrollment { device_id, secret })
    }

    /// Revokes a device: it is refused from its next connection or upload on. Returns whether
    /// the device was known and not yet revoked.
    pub fn revoke_device(&self, device_id: Uuid) -> Result<bool, RelayStoreError> {
        let n = self.write_devices(|tx| {
            Ok(tx.execute(
                "UPDATE devices SET revoked_at = ?2 WHERE device_id = ?1 AND revoked_at IS NULL",
                params![device_id.as_bytes(), self.inner.opts.env.now_millis()],
            )?)
        })?;
        if n > 0 {
            tracing::info!(device = %device_id, "revoked a device");
        }
        Ok(n > 0)
    }

    /// Creates a one-time enrolment token for a device named `name` with `role` and `scopes`,
    /// redeemable until `valid_for` from now, and only by `device_id` when given. Returns the
    /// token's secret (shown only now; the relay keeps its hash). Pair it with the relay's
    /// address and certificate pin in a
    /// [`fieldsync_core::protocol::EnrolToken`].
    pub fn create_enrolment(
        &self,
        name: &str,
        role: Role,
        scopes: &[String],
        device_id: Option<Uuid>,
        valid_for: Duration,
    ) -> Result<String, RelayStoreError> {
        if name.trim().is_empty() {
            return Err(RelayStoreError::Invalid("a device needs a name".into()));
        }
        let scopes_json = scopes_json(scopes)?;
        let secret = random_hex(fieldsync_core::protocol::token::TOKEN_SECRET_BYTES)?;
        let now = self.inner.opts.env.now_millis();
        let expires = now.saturating_add(i64::try_from(valid_for.as_millis()).unwrap_or(i64::MAX));
        self.write_devices(|tx| {
            tx.execute(
                "INSERT INTO enrolments (token_hash, name, role, scopes, device_id, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    hash_secret(&secret),
                    name.trim(),
                    role.as_str(),
                    scopes_json,
                    device_id.map(|d| d.as_bytes().to_vec()),
                    now,
                    expires
                ],
            )?;
            Ok(())
        })?;
        tracing::info!(name, %role, ?scopes, "created an enrolment token");
        Ok(secret)
    }

    /// Redeems an enrolment token for `device_id` with the device's own long-term
    /// `credential` (see [`fieldsync_core::protocol::Message::Enrol`]). `Ok(Err(reason))`
    /// refuses it. Redeeming again with the same device and credential succeeds again.
    pub fn redeem(
        &self,
        device_id: Uuid,
        token: &str,
        credential: &str,
    ) -> Result<Result<DeviceInfo, String>, RelayStoreError> {
        if credential.len() < MIN_CREDENTIAL_LEN {
            return Ok(Err("the device credential is too short".into()));
        }
        let token = token.trim().to_ascii_lowercase();
        // An unknown token is refused from a read connection: guessing costs the relay no
        // write lock.
        let known = self.read(|c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM enrolments WHERE token_hash = ?1")?
                    .exists([hash_secret(&token)])?,
            )
        })?;
        if !known {
            return Ok(Err("unknown enrolment token".to_string()));
        }
        let now = self.inner.opts.env.now_millis();
        type TokenRow = (
            String,
            String,
            String,
            Option<Vec<u8>>,
            i64,
            Option<i64>,
            Option<i64>,
        );
        let out = self.write(|tx| {
            let row: Option<TokenRow> = tx
                .query_row(
                    "SELECT name, role, scopes, device_id, expires_at, used_at, revoked_at
                       FROM enrolments WHERE token_hash = ?1",
                    [hash_secret(&token)],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                        ))
                    },
                )
                .optional()?;
            let Some((name, role, scopes, bound, expires_at, used_at, revoked_at)) = row else {
                return Ok(Err("unknown enrolment token".to_string()));
            };
            if revoked_at.is_some() {
                return Ok(Err("the enrolment token was revoked".into()));
            }
            let bound = bound
                .map(|b| {
                    Uuid::from_slice(&b)
                        .map_err(|_| RelayStoreError::Corrupt("bad device id in enrolments".into()))
                })
                .transpose()?;
            let existing = device_row(tx, device_id)?;
            if used_at.is_some() {
                // The same device again with the same credential: its first answer was lost.
                let same = bound == Some(device_id)
                    && existing.as_ref().is_some_and(|r| {
                        r.revoked_at.is_none()
                            && r.secret_hash
                                .as_ref()
                                .is_some_and(|h| crate::tls::ct_eq(h, &hash_secret(credential)))
                    });
                return match (same, existing) {
                    (true, Some(r)) => Ok(Ok(r.info(device_id)?)),
                    _ => Ok(Err("the enrolment token was already used".into())),
                };
            }
            if bound.is_some_and(|b| b != device_id) {
                return Ok(Err("the enrolment token is for another device".into()));
            }
            if expires_at <= now {
                return Ok(Err("the enrolment token expired".into()));
            }
            // A token names a new device; taking over a known one (enrolled, or revoked) needs
            // a token made for that device id.
            if bound.is_none()
                && existing
                    .as_ref()
                    .is_some_and(|r| r.secret_hash.is_some() || r.revoked_at.is_some())
            {
                return Ok(Err(format!(
                    "device {device_id} is already known to the relay; enrol it with --device-id"
                )));
            }
            tx.execute(
                "INSERT INTO devices (device_id, name, role, scopes, secret_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (device_id) DO UPDATE SET name = excluded.name, role = excluded.role,
                   scopes = excluded.scopes, secret_hash = excluded.secret_hash, revoked_at = NULL",
                params![
                    device_id.as_bytes(),
                    name,
                    role,
                    scopes,
                    hash_secret(credential),
                    now
                ],
            )?;
            tx.execute(
                "UPDATE enrolments SET used_at = ?2, device_id = ?3 WHERE token_hash = ?1",
                params![hash_secret(&token), now, device_id.as_bytes()],
            )?;
            bump_devices(tx)?;
            let row = device_row(tx, device_id)?
                .ok_or_else(|| RelayStoreError::Corrupt("device row vanished".into()))?;
            Ok(Ok(row.info(device_id)?))
        })?;
        match &out {
            Ok(d) => {
                self.poll_devices()?;
                tracing::info!(device = %device_id, name = %d.name, role = %d.role, "device redeemed its enrolment token");
            }
            Err(reason) => tracing::debug!(device = %device_id, %reason, "enrolment refused"),
        }
        Ok(out)
    }

    /// Revokes by device id, or by name: every active device and every unused enrolment token
    /// with that exact name. Devices are refused from their next connection on, and the
    /// running relay closes their open connections within about a second. Errors when nothing
    /// matched.
    pub fn revoke(&self, who: &str) -> Result<Revoked, RelayStoreError> {
        let who = who.trim();
        let id = Uuid::parse_str(who).ok();
        let now = self.inner.opts.env.now_millis();
        let out = self.write_devices(|tx| {
            let mut out = Revoked::default();
            let ids: Vec<Vec<u8>> = match id {
                Some(id) => vec![id.as_bytes().to_vec()],
                None => tx
                    .prepare("SELECT device_id FROM devices WHERE name = ?1 AND revoked_at IS NULL")?
                    .query_map([who], |r| r.get(0))?
                    .collect::<Result<_, _>>()?,
            };
            for b in ids {
                let n = tx.execute(
                    "UPDATE devices SET revoked_at = ?2 WHERE device_id = ?1 AND revoked_at IS NULL",
                    params![b, now],
                )?;
                if n > 0 {
                    out.devices.push(
                        Uuid::from_slice(&b)
                            .map_err(|_| RelayStoreError::Corrupt("bad device id".into()))?,
                    );
                }
            }
            out.tokens = match id {
                Some(id) => tx.execute(
                    "UPDATE enrolments SET revoked_at = ?2
                     WHERE device_id = ?1 AND used_at IS NULL AND revoked_at IS NULL",
                    params![id.as_bytes(), now],
                )?,
                None => tx.execute(
                    "UPDATE enrolments SET revoked_at = ?2
                     WHERE name = ?1 AND used_at IS NULL AND revoked_at IS NULL",
                    params![who, now],
                )?,
            };
            Ok(out)
        })?;
        if out.devices.is_empty() && out.tokens == 0 {
            return Err(RelayStoreError::Invalid(format!(
                "no active device or unused enrolment token matches {who:?}"
            )));
        }
        tracing::info!(who, devices = ?out.devices, tokens = out.tokens, "revoked");
        Ok(out)
    }

    /// Changes the role and/or scopes of active devices, by id or by name (every active device
    /// with that name), keeping their credentials. Their open connections are told to
    /// reconnect and get the new grant; changes they uploaded before stay as they are.
    /// Returns the devices changed.
    pub fn grant(
        &self,
        who: &str,
        role: Option<Role>,
        scopes: Option<&[String]>,
    ) -> Result<Vec<Uuid>, RelayStoreError> {
        let (who, id, scopes_json) = grant_args(who, role, scopes)?;
        let changed = self.write_devices(|tx| {
            tx.prepare(
                "UPDATE devices SET role = COALESCE(?3, role), scopes = COALESCE(?4, scopes)
                  WHERE (device_id = ?1 OR (?1 IS NULL AND name = ?2)) AND revoked_at IS NULL
                  RETURNING device_id",
            )?
            .query_map(
                params![
                    id.map(|i| i.as_bytes().to_vec()),
                    who,
                    role.map(Role::as_str),
                    scopes_json
                ],
                |r| r.get::<_, Vec<u8>>(0),
            )?
            .map(|b| {
                Uuid::from_slice(&b?).map_err(|_| RelayStoreError::Corrupt("bad device id".into()))
            })
            .collect()
        })?;
        granted(who, changed, role, scopes)
    }

    /// Every enrolment token, newest first.
    pub fn enrolments(&self) -> Result<Vec<EnrolmentRecord>, RelayStoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT name, role, scopes, device_id, created_at, expires_at, used_at, revoked_at
                   FROM enrolments ORDER BY created_at DESC",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, role, scopes, device, created_at, expires_at, used_at, revoked_at) =
                    row?;
                out.push(EnrolmentRecord {
                    role: Role::parse(&role).ok_or_else(|| {
                        RelayStoreError::Corrupt(format!("enrolment {name} has role `{role}`"))
                    })?,
                    scopes: serde_json::from_str(&scopes)
                        .map_err(|e| RelayStoreError::Corrupt(format!("enrolment scopes: {e}")))?,
                    device_id: device.as_deref().and_then(|b| Uuid::from_slice(b).ok()),
                    name,
                    created_at,
                    expires_at,
                    used_at,
                    revoked_at,
                });
            }
            Ok(out)
        })
    }

    /// The current grant of a device: `None` when it is unknown or revoked.
    pub fn device_grant(&self, device_id: Uuid) -> Result<Option<DeviceInfo>, RelayStoreError> {
        match self.read(|c| Ok(device_row(c, device_id)?))? {
            Some(r) if r.revoked_at.is_none() => Ok(Some(r.info(device_id)?)),
            _ => Ok(None),
        }
    }

    /// The audit trail of accepted changes, optionally only those to document `doc` and/or
    /// uploaded by `device` (a device id, or a name), oldest first; at most the `limit` most
    /// recent.
    pub fn audit(
        &self,
        doc: Option<DocId>,
        device: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, RelayStoreError> {
        let device_id = device.and_then(|d| Uuid::parse_str(d.trim()).ok());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT a.seq, a.at, a.device, d.name, a.doc_id, l.hash, l.scope
                   FROM audit a
                   LEFT JOIN devices d ON d.device_id = a.device
                   LEFT JOIN log l ON l.seq = a.seq
                  WHERE (?1 IS NULL OR a.doc_id = ?1)
                    AND (?2 = 0 OR a.device = ?3 OR d.name = ?4)
                  ORDER BY a.seq DESC LIMIT ?5",
            )?;
            let rows = st.query_map(
                params![
                    doc.map(|d| d.as_bytes().to_vec()),
                    i64::from(device.is_some()),
                    device_id.map(|d| d.as_bytes().to_vec()),
                    device.map(str::trim),
                    limit
                ],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, Option<Vec<u8>>>(5)?,
                        r.get::<_, Option<String>>(6)?,
                    ))
                },
            )?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, at, dev, device_name, doc, hash, scope) = row?;
                out.push(AuditRecord {
                    seq: seq.max(0) as u64,
                    at,
                    device_id: Uuid::from_slice(&dev)
                        .map_err(|_| RelayStoreError::Corrupt("bad device id in audit".into()))?,
                    device_name,
                    doc_id: doc_id(&doc)?,
                    hash: hash.map(hex::encode),
                    scope,
                });
            }
            out.reverse();
            Ok(out)
        })
    }

    /// Every known device, by creation time.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, RelayStoreError> {
        self.read(|c| {
            let mut st =
                c.prepare_cached("SELECT device_id FROM devices ORDER BY created_at, device_id")?;
            let ids: Vec<Vec<u8>> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            let mut out = Vec::new();
            for b in ids {
                let id = Uuid::from_slice(&b)
                    .map_err(|_| RelayStoreError::Corrupt("bad device id".into()))?;
                let Some(row) = device_row(c, id)? else {
                    continue;
                };
                let info = row.info(id)?;
                out.push(DeviceRecord {
                    device_id: id,
                    name: info.name,
                    role: info.role,
                    scopes: info.scopes,
                    enrolled: row.secret_hash.is_some(),
                    created_at: row.created_at,
                    last_seen: row.last_seen,
                    revoked_at: row.revoked_at,
                    today: usage_on(c, id, day_of(self.inner.opts.env.now_millis()))?,
                });
            }
            Ok(out)
        })
    }

    /// Counters for `status`.
    pub fn status(&self) -> Result<RelayStatus, RelayStoreError> {
        let epoch = self.inner.epoch;
        self.read(|c| {
            let count = |sql: &str| -> Result<u64, RelayStoreError> {
                Ok(c.query_row(sql, [], |r| r.get::<_, i64>(0))?.max(0) as u64)
            };
            Ok(RelayStatus {
                epoch,
                high_seq: count("SELECT COALESCE(MAX(seq), 0) FROM log")?,
                docs: count("SELECT count(*) FROM docs")?,
                changes: count("SELECT count(*) FROM changes")?,
                devices: count("SELECT count(*) FROM devices")?,
                revoked_devices: count(
                    "SELECT count(*) FROM devices WHERE revoked_at IS NOT NULL",
                )?,
            })
        })
    }
}

impl RelayStorage for SqliteRelayStore {
    fn epoch(&mut self) -> Result<Uuid, StorageError> {
        Ok(self.inner.epoch)
    }

    fn authenticate(
        &mut self,
        device_id: Uuid,
        credential: Option<&str>,
    ) -> Result<Option<DeviceInfo>, StorageError> {
        Ok(Self::authenticate(self, device_id, credential)?)
    }

    fn append(
        &mut self,
        device: &DeviceInfo,
        changes: &[UploadChange],
        relayed: bool,
    ) -> Result<Vec<Outcome>, StorageError> {
        Ok(self.append_changes(device, changes, relayed)?)
    }

    fn high_seq(&mut self) -> Result<u64, StorageError> {
        Ok(Self::high_seq(self)?)
    }

    fn read_log(
        &mut self,
        scope: &str,
        after: u64,
        max_bytes: usize,
    ) -> Result<(Vec<LogEntry>, bool), StorageError> {
        Ok(Self::read_log(self, scope, after, max_bytes)?)
    }

    fn read_snapshots(
        &mut self,
        scope: &str,
        after: Option<DocId>,
        max_bytes: usize,
    ) -> Result<(Vec<(DocId, Vec<u8>)>, bool), StorageError> {
        Ok(Self::read_snapshots(self, scope, after, max_bytes)?)
    }

    fn missing(&mut self, docs: &[(DocId, Vec<Hash>)]) -> Result<Vec<Lack>, StorageError> {
        Ok(Self::missing(self, docs)?)
    }

    fn departures(&mut self, scope: &str, upto: u64) -> Result<Vec<(DocId, String)>, StorageError> {
        Ok(Self::departures(self, scope, upto)?)
    }

    fn touch_device(&mut self, device_id: Uuid) -> Result<(), StorageError> {
        Ok(Self::touch_device(self, device_id)?)
    }

    fn record_departures(&mut self, device_id: Uuid, docs: &[DocId]) -> Result<(), StorageError> {
        Ok(Self::record_departures(self, device_id, docs)?)
    }

    fn redeem(
        &mut self,
        device_id: Uuid,
        token: &str,
        credential: &str,
    ) -> Result<Result<DeviceInfo, String>, StorageError> {
        Ok(Self::redeem(self, device_id, token, credential)?)
    }

    fn refresh_device(&mut self, device: &DeviceInfo) -> Result<Option<DeviceInfo>, StorageError> {
        Ok(self.device_grant(device.device_id)?)
    }
}

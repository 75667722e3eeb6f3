//! [`RelayStore`]: the relay's store behind one type, whichever backend holds it.
//!
//! The server, its sessions and the admin CLI (`device enroll|revoke|list`, `audit`, `status`)
//! use a [`RelayStore`]; each call goes to the backend chosen by the configuration. An enum
//! rather than a trait object: the set of backends is closed, the handles are cheap clones,
//! and the methods stay plain (no boxing, no object-safety limits on generics).

use std::time::Duration;

use fieldsync_core::protocol::messages::Hash;
use fieldsync_core::protocol::{
    DeviceInfo, DevicePolicy, Lack, Lane, LogEntry, Outcome, RelayStorage, StorageError,
    UploadChange, WipeReport,
};
use fieldsync_core::{DocId, Role};
use tokio::sync::watch;

use crate::config::RelayConfig;
use uuid::Uuid;

use super::{
    AuditQuery, AuditRecord, Cancel, DeviceOutbox, DeviceRecord, Enrolment, EnrolmentRecord,
    PgRelayStore, PoolStats, RelayStatus, RelayStoreError, Replacement, Revoked, SnapshotPage,
    SqliteRelayStore, WriteStats,
};

/// The relay's store: one of the backends (see the module docs). Cloning gives another
/// handle to the same store.
#[derive(Clone, Debug)]
pub enum RelayStore {
    /// The embedded SQLite file in the data directory (one relay node).
    Sqlite(SqliteRelayStore),
    /// A PostgreSQL database that several relay nodes may share.
    Postgres(PgRelayStore),
}

impl From<SqliteRelayStore> for RelayStore {
    fn from(s: SqliteRelayStore) -> Self {
        Self::Sqlite(s)
    }
}

/// Calls the same method on whichever backend this is.
macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            RelayStore::Sqlite($s) => $e,
            RelayStore::Postgres($s) => $e,
        }
    };
}

impl RelayStore {
    /// Opens (or creates) the store the configuration names: the PostgreSQL database of
    /// `database`, else the SQLite file in the data directory. Blocks.
    pub fn open(config: &RelayConfig) -> Result<Self, RelayStoreError> {
        match &config.database {
            Some(url) => Ok(Self::Postgres(PgRelayStore::open_with_ca(
                url,
                config.database_ca.as_deref(),
                config.store_options(),
            )?)),
            None => {
                // Admin commands open the database too: an older relay's looser data
                // directory is tightened whichever opens it first.
                crate::config::protect_data_dir(&config.data_dir);
                Ok(Self::Sqlite(SqliteRelayStore::open(
                    config.db_path(),
                    config.store_options(),
                )?))
            }
        }
    }

    /// Opens the store the configuration names for an admin command: an embedded database
    /// must exist already (a typo in `--data` must not create an empty relay).
    pub fn open_existing(config: &RelayConfig) -> Result<Self, RelayStoreError> {
        let db = config.db_path();
        if config.database.is_none() && !db.exists() {
            return Err(RelayStoreError::Missing(db));
        }
        Self::open(config)
    }

    /// Where the store lives, for logs and `status` (a file path or a database URL without
    /// its password).
    pub fn location(&self) -> String {
        match self {
            Self::Sqlite(s) => s.path().display().to_string(),
            Self::Postgres(s) => s.location().to_string(),
        }
    }

    /// The database file of the embedded SQLite backend (`None` for a shared database).
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Sqlite(s) => Some(s.path()),
            Self::Postgres(_) => None,
        }
    }

    /// The fingerprint of the certificate the relay nodes sharing a PostgreSQL database serve,
    /// as the first of them recorded it (`None` before any started, and for the embedded
    /// backend, whose one relay keeps its certificate in its data directory). Blocks.
    pub fn node_fingerprint(&self) -> Result<Option<String>, RelayStoreError> {
        match self {
            Self::Sqlite(_) => Ok(None),
            Self::Postgres(s) => s.node_fingerprint(),
        }
    }

    /// Stores a serving node's latest report (JSON) and forgets those of nodes silent for
    /// longer than `forget_after` ms (see `crate::presence`). Blocks.
    pub fn put_node_report(
        &self,
        node: &str,
        report: &str,
        now: i64,
        forget_after: i64,
    ) -> Result<(), RelayStoreError> {
        each!(self, s => s.put_node_report(node, report, now, forget_after))
    }

    /// Every node's latest report: (node, report JSON, when it was written in ms, now in ms by
    /// the same clock). Blocks.
    pub fn node_reports(&self) -> Result<Vec<(String, String, i64, i64)>, RelayStoreError> {
        each!(self, s => s.node_reports())
    }

    /// The value the store keeps under `key` (its `meta` table), if any. Blocks.
    pub fn meta_value(&self, key: &str) -> Result<Option<Vec<u8>>, RelayStoreError> {
        each!(self, s => s.meta_value(key))
    }

    /// Stores `value` under `key` unless one is there; returns the value stored. Blocks.
    pub fn claim_meta(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, RelayStoreError> {
        each!(self, s => s.claim_meta(key, value))
    }

    /// Stores `value` under `key`, replacing what was there. Blocks.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), RelayStoreError> {
        each!(self, s => s.set_meta(key, value))
    }

    /// Records what a laptop reported it holds unsent. Blocks.
    pub fn put_outbox(&self, device: Uuid, o: &DeviceOutbox) -> Result<(), RelayStoreError> {
        each!(self, s => s.put_outbox(device, o))
    }

    /// What every laptop last reported it holds unsent, by device. Blocks.
    pub fn outboxes(
        &self,
    ) -> Result<std::collections::HashMap<Uuid, DeviceOutbox>, RelayStoreError> {
        each!(self, s => s.outboxes())
    }

    /// Records the certificate this relay node serves as the one of all nodes sharing a
    /// PostgreSQL database, or refuses if they serve another (see
    /// [`PgRelayStore::claim_fingerprint`]). A no-op for the embedded backend. Blocks.
    pub fn claim_fingerprint(&self, fingerprint: &str) -> Result<(), RelayStoreError> {
        match self {
            Self::Sqlite(_) => Ok(()),
            Self::Postgres(s) => s.claim_fingerprint(fingerprint),
        }
    }

    /// Another handle to this store that stops long reads once `cancel` is raised (the
    /// server raises it when the client the handle serves has left). The PostgreSQL backend
    /// checks it between pages and chunks; the SQLite backend, whose reads are local and
    /// short, ignores it.
    pub fn cancelled_by(&self, cancel: Cancel) -> Self {
        match self {
            Self::Sqlite(s) => Self::Sqlite(s.clone()),
            Self::Postgres(s) => Self::Postgres(s.cancelled_by(cancel)),
        }
    }

    /// The read pool's numbers now, for metrics.
    pub fn pool_stats(&self) -> PoolStats {
        each!(self, s => s.pool_stats())
    }

    /// What the writer did with uploads so far: transactions, uploads, time busy and time
    /// uploads waited for it.
    pub fn write_stats(&self) -> WriteStats {
        each!(self, s => s.write_stats())
    }

    /// Runs `f` while holding the writer (as a long upload would).
    #[cfg(test)]
    pub(super) fn holding_writer<T>(&self, f: impl FnOnce() -> T) -> Result<T, RelayStoreError> {
        each!(self, s => s.holding_writer(f))
    }

    /// The relay's epoch (created with the database).
    pub fn epoch(&self) -> Uuid {
        each!(self, s => s.epoch())
    }

    /// Receives the highest sequence number whenever the log grew.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        each!(self, s => s.subscribe())
    }

    /// Receives a new value whenever devices or enrolments changed.
    pub fn subscribe_devices(&self) -> watch::Receiver<u64> {
        each!(self, s => s.subscribe_devices())
    }

    /// Notices device changes made by other processes (the relay calls this every second).
    pub fn poll_devices(&self) -> Result<u64, RelayStoreError> {
        each!(self, s => s.poll_devices())
    }

    /// Notices log growth committed by other relay nodes sharing the database, or by another
    /// process (`doc trim`), and wakes [`RelayStore::subscribe`] receivers.
    pub fn poll_log(&self) -> Result<(), RelayStoreError> {
        each!(self, s => s.poll_log().map(|_| ()))
    }

    /// Replaces a document's history with the one `rewrite` writes from its stored snapshot,
    /// in one write transaction; `rewrite` giving none writes nothing (`doc trim`, see
    /// [`crate::doc_trim`]). Blocks.
    pub fn replace_history(
        &self,
        id: DocId,
        rewrite: impl FnOnce(&[u8]) -> Result<Option<automerge::AutoCommit>, RelayStoreError>,
    ) -> Result<Option<Replacement>, RelayStoreError> {
        each!(self, s => s.replace_history(id, rewrite))
    }

    /// Documents currently loaded in the write cache.
    pub fn cached_docs(&self) -> usize {
        each!(self, s => s.cached_docs())
    }

    /// See [`SqliteRelayStore::append_changes`].
    pub fn append_changes(
        &self,
        device: &DeviceInfo,
        changes: &[UploadChange],
        relayed: bool,
    ) -> Result<Vec<Outcome>, RelayStoreError> {
        each!(self, s => s.append_changes(device, changes, relayed))
    }

    /// The highest sequence number assigned so far.
    pub fn high_seq(&self) -> Result<u64, RelayStoreError> {
        each!(self, s => s.high_seq())
    }

    /// See [`SqliteRelayStore::read_log`].
    pub fn read_log(
        &self,
        scope: &str,
        after: u64,
        max_bytes: usize,
        lane: Lane<'_>,
    ) -> Result<(Vec<LogEntry>, bool), RelayStoreError> {
        each!(self, s => s.read_log(scope, after, max_bytes, lane))
    }

    /// Log entries of every scope after `after`, with the scope each is filed under (see
    /// [`SqliteRelayStore::read_log_all`]). Blocks.
    pub fn read_log_all(
        &self,
        after: u64,
        max_bytes: usize,
    ) -> Result<(Vec<(String, LogEntry)>, bool), RelayStoreError> {
        each!(self, s => s.read_log_all(after, max_bytes))
    }

    /// See [`SqliteRelayStore::read_snapshots`].
    pub fn read_snapshots(
        &self,
        scope: &str,
        after: Option<DocId>,
        max_bytes: usize,
        lane: Lane<'_>,
    ) -> Result<SnapshotPage, RelayStoreError> {
        each!(self, s => s.read_snapshots(scope, after, max_bytes, lane))
    }

    /// See [`SqliteRelayStore::waiting`].
    pub fn waiting(
        &self,
        scope: &str,
        snapshots_after: Option<Option<DocId>>,
        log_after: u64,
    ) -> Result<(u64, u64), RelayStoreError> {
        each!(self, s => s.waiting(scope, snapshots_after, log_after))
    }

    /// See [`SqliteRelayStore::departures`].
    pub fn departures(
        &self,
        scope: &str,
        upto: u64,
    ) -> Result<Vec<(DocId, String)>, RelayStoreError> {
        each!(self, s => s.departures(scope, upto))
    }

    /// See [`SqliteRelayStore::heads_of`].
    pub fn heads_of(&self, ids: &[DocId]) -> Result<Vec<(DocId, Vec<Hash>)>, RelayStoreError> {
        each!(self, s => s.heads_of(ids))
    }

    /// See [`SqliteRelayStore::missing`].
    pub fn missing(&self, docs: &[(DocId, Vec<Hash>)]) -> Result<Vec<Lack>, RelayStoreError> {
        each!(self, s => s.missing(docs))
    }

    /// See [`SqliteRelayStore::record_departures`].
    pub fn record_departures(
        &self,
        device_id: Uuid,
        docs: &[DocId],
    ) -> Result<(), RelayStoreError> {
        each!(self, s => s.record_departures(device_id, docs))
    }

    /// The audit trail the query selects, oldest first (see [`SqliteRelayStore::audit`]),
    /// with each customer's current name.
    pub fn audit(&self, q: &AuditQuery<'_>) -> Result<Vec<AuditRecord>, RelayStoreError> {
        let mut rows = each!(self, s => s.audit(q))?;
        let mut names: std::collections::HashMap<DocId, Option<String>> = Default::default();
        for r in &mut rows {
            if let Some(c) = r.customer_id {
                r.customer = match names.entry(c) {
                    std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
                    std::collections::hash_map::Entry::Vacant(e) => e
                        .insert(self.snapshot(c)?.and_then(|s| super::customer_name(&s)))
                        .clone(),
                };
            }
        }
        Ok(rows)
    }

    /// A document's stored snapshot, if the relay holds the document. Blocks.
    pub fn snapshot(&self, id: DocId) -> Result<Option<Vec<u8>>, RelayStoreError> {
        each!(self, s => s.snapshot(id))
    }

    /// Counters for `status`.
    pub fn status(&self) -> Result<RelayStatus, RelayStoreError> {
        each!(self, s => s.status())
    }
}

/// The device policy reaches whichever backend this is; its public methods are the same as
/// each backend's (`devices::device_methods!`).
impl super::DeviceBackend for RelayStore {
    fn options(&self) -> &super::RelayStoreOptions {
        each!(self, s => s.options())
    }

    fn touched(&self) -> &std::sync::Mutex<std::collections::HashMap<Uuid, std::time::Instant>> {
        each!(self, s => s.touched())
    }

    fn device_tx<T>(
        &self,
        f: impl FnOnce(&dyn super::DeviceDb) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        each!(self, s => s.device_tx(f))
    }

    fn read_device(&self, id: Uuid) -> Result<Option<super::DeviceRow>, RelayStoreError> {
        each!(self, s => s.read_device(id))
    }

    fn token_exists(&self, hash: &[u8]) -> Result<bool, RelayStoreError> {
        each!(self, s => s.token_exists(hash))
    }

    fn insert_open_device(
        &self,
        id: Uuid,
        role: &str,
        scopes: &str,
        now: i64,
    ) -> Result<bool, RelayStoreError> {
        each!(self, s => s.insert_open_device(id, role, scopes, now))
    }

    fn write_last_seen(&self, id: Uuid, now: i64) -> Result<(), RelayStoreError> {
        each!(self, s => s.write_last_seen(id, now))
    }

    fn device_rows(
        &self,
        day: i64,
    ) -> Result<Vec<(Uuid, super::DeviceRow, super::Usage)>, RelayStoreError> {
        each!(self, s => s.device_rows(day))
    }

    fn token_rows(&self) -> Result<Vec<super::TokenRow>, RelayStoreError> {
        each!(self, s => s.token_rows())
    }

    fn event_rows(&self) -> Result<Vec<super::EventRow>, RelayStoreError> {
        each!(self, s => s.event_rows())
    }
}

impl RelayStore {
    super::devices::device_methods!();
}

/// [`RelayStorage`] (what a relay session needs of a store) for a store handle whose inherent
/// methods have the same names: [`RelayStore`] and each backend, so a session, the simulation or
/// a fuzz target can run over any of them.
macro_rules! relay_storage {
    ($t:ty) => {
        impl RelayStorage for $t {
            fn epoch(&mut self) -> Result<Uuid, StorageError> {
                Ok(Self::epoch(self))
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
                lane: Lane<'_>,
            ) -> Result<(Vec<LogEntry>, bool), StorageError> {
                Ok(Self::read_log(self, scope, after, max_bytes, lane)?)
            }

            fn read_snapshots(
                &mut self,
                scope: &str,
                after: Option<DocId>,
                max_bytes: usize,
                lane: Lane<'_>,
            ) -> Result<(Vec<(DocId, Vec<u8>)>, bool), StorageError> {
                Ok(Self::read_snapshots(self, scope, after, max_bytes, lane)?)
            }

            fn heads_of(&mut self, ids: &[DocId]) -> Result<Vec<(DocId, Vec<Hash>)>, StorageError> {
                Ok(Self::heads_of(self, ids)?)
            }

            fn waiting(
                &mut self,
                scope: &str,
                snapshots_after: Option<Option<DocId>>,
                log_after: u64,
            ) -> Result<(u64, u64), StorageError> {
                Ok(Self::waiting(self, scope, snapshots_after, log_after)?)
            }

            fn missing(&mut self, docs: &[(DocId, Vec<Hash>)]) -> Result<Vec<Lack>, StorageError> {
                Ok(Self::missing(self, docs)?)
            }

            fn departures(
                &mut self,
                scope: &str,
                upto: u64,
            ) -> Result<Vec<(DocId, String)>, StorageError> {
                Ok(Self::departures(self, scope, upto)?)
            }

            fn touch_device(&mut self, device_id: Uuid) -> Result<(), StorageError> {
                Ok(Self::touch_device(self, device_id)?)
            }

            fn record_departures(
                &mut self,
                device_id: Uuid,
                docs: &[DocId],
            ) -> Result<(), StorageError> {
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

            fn refresh_device(
                &mut self,
                device: &DeviceInfo,
            ) -> Result<Option<DeviceInfo>, StorageError> {
                Ok(self.device_grant(device.device_id)?)
            }

            fn device_policy(&mut self, device: &DeviceInfo) -> Result<DevicePolicy, StorageError> {
                Ok(Self::device_policy(self, device)?)
            }

            fn now_millis(&mut self) -> i64 {
                // The clock the store's rules use (a simulation's, in one).
                super::DeviceBackend::options(self).env.now_millis()
            }

            fn record_wiped(
                &mut self,
                device_id: Uuid,
                report: &WipeReport,
            ) -> Result<(), StorageError> {
                Ok(Self::record_wiped(self, device_id, report)?)
            }
        }
    };
}

relay_storage!(RelayStore);
relay_storage!(SqliteRelayStore);
relay_storage!(PgRelayStore);

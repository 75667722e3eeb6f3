//! The replica handle ([`Store`]): opening the SQLite file, the session's identity, write
//! transactions and their subscribers, and the replica's key-value metadata. Documents, the
//! sync queues, SQL queries and maintenance add `impl Store` blocks in files of their own.

mod documents;
mod first;
mod maintenance;
mod outbox;
mod queries;

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use automerge::ActorId;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use uuid::Uuid;

use super::cache::DocCache;
use super::cipher::DatabaseKey;
use super::{
    DocEvent, Durability, OpenError, StoreError, StoreOptions, StoreTx, open_sqlite, schema,
};
use crate::env::Env;

/// The local replica store.
pub struct Store {
    /// Declared (so dropped) before the writer: the last connection to close folds the WAL
    /// into the file and removes it, which only a read-write connection can do; the next
    /// opening then has no WAL index to rebuild.
    reader: Connection,
    conn: Connection,
    path: PathBuf,
    cache: DocCache,
    actor: ActorId,
    device_id: Uuid,
    opts: StoreOptions,
    subscribers: Vec<mpsc::Sender<DocEvent>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("device_id", &self.device_id)
            .finish()
    }
}

fn open_conn(
    path: &Path,
    flags: OpenFlags,
    key: Option<&DatabaseKey>,
) -> Result<Connection, StoreError> {
    open_sqlite(path, flags, key).map_err(|e| match e {
        OpenError::NotADatabase(e) => StoreError::NotADatabase(path.to_path_buf(), e.to_string()),
        OpenError::WrongKey => StoreError::WrongKey(path.to_path_buf()),
        OpenError::NotEncrypted => StoreError::NotEncrypted(path.to_path_buf()),
        OpenError::Sqlite(e) => StoreError::Sqlite(e),
    })
}

impl Store {
    /// Opens (or creates) the replica at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens (or creates) the replica at `path`.
    ///
    /// Refuses, without modifying it, a file that is not SQLite, a SQLite database of another
    /// application, and a replica written by a newer schema version.
    ///
    /// The replica and the files SQLite keeps beside it are readable by their owner only
    /// (`0600`): created so, or tightened with a warning if they were readable by others.
    pub fn open_with(path: impl AsRef<Path>, opts: StoreOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        // Private from creation (the WAL and shared-memory files take the database's mode);
        // an existing replica and its WAL left readable by others are tightened. The
        // directory is the caller's (it may be a home or a temporary directory).
        crate::fsmode::prepare_database(&path);
        let mut conn = open_conn(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            opts.key.as_ref(),
        )?;
        schema::migrate(&mut conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match opts.durability {
                Durability::Full => "FULL",
                Durability::Normal => "NORMAL",
            },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let device: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM meta WHERE key = 'device_id'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let device_id = match device.and_then(|b| Uuid::from_slice(&b).ok()) {
            Some(d) => d,
            None => {
                let d = opts.device_id.unwrap_or_else(|| opts.env.uuid_v7());
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('device_id', ?1)",
                    [d.as_bytes().to_vec()],
                )?;
                d
            }
        };
        let reader = open_conn(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            opts.key.as_ref(),
        )?;
        Ok(Self {
            conn,
            reader,
            path,
            cache: DocCache::new(opts.cache_docs),
            actor: Self::session_actor(device_id, opts.actor_suffix, &*opts.env),
            device_id,
            opts,
            subscribers: Vec::new(),
        })
    }

    /// Every session writes under a fresh actor whose first 16 bytes are the device id, so the
    /// relay can bind actors to devices, and a replica restored from an old backup never reuses
    /// an actor's sequence numbers.
    fn session_actor(device: Uuid, suffix: Option<[u8; 8]>, env: &dyn Env) -> ActorId {
        let suffix = suffix.unwrap_or_else(|| {
            let mut s = [0u8; 8];
            env.fill_random(&mut s);
            s
        });
        let mut bytes = device.as_bytes().to_vec();
        bytes.extend_from_slice(&suffix);
        ActorId::from(bytes)
    }

    /// The file path of the replica.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device id of this replica (the prefix of every actor it writes with).
    pub fn device_id(&self) -> Uuid {
        self.device_id
    }

    /// The Automerge actor of this session.
    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    /// Runs `f` in one write transaction; everything it does commits together or not at all.
    /// Subscribers hear about changed documents after the commit.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut StoreTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let outcome = {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut stx = StoreTx {
                tx,
                cache: &mut self.cache,
                actor: &self.actor,
                opts: &self.opts,
                events: Vec::new(),
            };
            match f(&mut stx) {
                Ok(v) => {
                    let StoreTx { tx, events, .. } = stx;
                    tx.commit().map(|()| (v, events)).map_err(StoreError::from)
                }
                Err(e) => Err(e),
            }
        };
        match outcome {
            Ok((v, events)) => {
                self.publish(events);
                Ok(v)
            }
            Err(e) => {
                // The transaction rolled back; cached documents it touched may be ahead of the
                // file, so drop the cache (documents reload on demand).
                self.cache.clear();
                Err(e)
            }
        }
    }

    fn publish(&mut self, events: Vec<DocEvent>) {
        if events.is_empty() {
            return;
        }
        self.subscribers
            .retain(|s| events.iter().all(|e| s.send(e.clone()).is_ok()));
    }

    /// Receives a [`DocEvent`] after every commit that changes a document.
    pub fn subscribe(&mut self) -> mpsc::Receiver<DocEvent> {
        let (tx, rx) = mpsc::channel();
        self.subscribers.push(tx);
        rx
    }

    /// Reads a value from the replica's key-value metadata.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Writes a metadata value in its own transaction.
    pub fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.transaction(|tx| tx.set_meta(key, value))
    }
}

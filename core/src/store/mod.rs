//! The local replica: one SQLite file holding every document the device may see.
//!
//! For each document the store keeps its compacted Automerge bytes (`docs.snapshot`) plus the
//! changes that arrived since (`doc_changes`), and typed projection rows (`customers`,
//! `visits`, `quotes`, …) that apps query with SQL. A local edit, its outbox entry and its
//! projection rows are written in **one** transaction; a received batch and the sync cursor
//! that covers it are written in one transaction too ([`Store::transaction`]). Documents are
//! loaded lazily into a small cache, so opening a large replica does not read every document.
//!
//! Every Automerge call on bytes that came from elsewhere runs under `catch_unwind` and size
//! limits, and every failure is a typed [`StoreError`]; nothing already stored is modified by a
//! failed call (the transaction rolls back and the cached copy is dropped).
//!
//! Around this module: `schema` (the tables and their migrations), `projection` (the typed
//! rows), `precheck` (a change checked against its document before automerge applies it),
//! `prefetch` (downloaded snapshots loaded on helper threads ahead of the writing one) and
//! `replace` (a document whose history the relay replaced).

mod cache;
mod decode;
mod error;
mod local_budget;
mod options;
mod precheck;
mod prefetch;
mod projection;
mod records;
mod replace;
mod schema;
mod tx;

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use automerge::{ActorId, AutoCommit, ChangeHash};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use uuid::Uuid;

use crate::env::Env;
use crate::ids::{DocId, DocKind};
use crate::model::{self, Document, ModelError};
use cache::{DocCache, load_cached};
use projection::project;

pub use decode::{
    MAX_CHANGE_BYTES, MAX_SNAPSHOT_BYTES, decode_change, guard, heads_from_bytes, load_snapshot,
    load_snapshot_within,
};
pub use error::StoreError;
pub use options::{Durability, StoreOptions};
pub use precheck::{Structure, precheck_change, precheck_changes};
pub use prefetch::{PreparedQueue, PreparedSnapshot, prepare_snapshot, with_prepared};
pub use records::{Committed, DocConflict, DocEvent, Origin, OutboxChange, Quarantined, Skipped};
pub use replace::Replaced;
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
pub use tx::StoreTx;

/// The local replica store.
pub struct Store {
    conn: Connection,
    reader: Connection,
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

/// Prepared statements kept per connection (see [`open_conn`]).
const STATEMENT_CACHE: usize = 64;

fn open_conn(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags)?;
    // One write path uses more distinct statements than rusqlite's default cache of 16;
    // past it every `prepare_cached` re-parses its SQL.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Reading the schema is the first access that touches the file's header.
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
            StoreError::NotADatabase(path.to_path_buf(), e.to_string())
        }
        e => StoreError::Sqlite(e),
    })?;
    Ok(conn)
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
                self.cache.docs.clear();
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

    /// Creates a document with a fresh id by running `init` on an empty Automerge document.
    pub fn create(
        &mut self,
        init: impl FnOnce(&mut AutoCommit, DocId) -> Result<(), ModelError>,
    ) -> Result<Committed, StoreError> {
        let id = self.opts.env.doc_id();
        self.transaction(|tx| tx.create(id, init))
    }

    /// Applies a local edit to a document in its own transaction.
    pub fn edit(
        &mut self,
        id: DocId,
        f: impl FnOnce(&mut AutoCommit) -> Result<(), ModelError>,
    ) -> Result<Committed, StoreError> {
        self.transaction(|tx| tx.edit(id, f))
    }

    /// Reads a typed document.
    pub fn document(&mut self, id: DocId) -> Result<Document, StoreError> {
        let doc = load_cached(&self.conn, &mut self.cache, &self.actor, id)?;
        Ok(guard("reading a document", || model::read_document(doc))??)
    }

    /// Whether the replica holds a document.
    pub fn contains(&self, id: DocId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM docs WHERE id = ?1", [id.as_bytes()], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// A copy of the Automerge document (for inspection or export).
    pub fn automerge(&mut self, id: DocId) -> Result<AutoCommit, StoreError> {
        Ok(load_cached(&self.conn, &mut self.cache, &self.actor, id)?.clone())
    }

    /// The document's full Automerge bytes (`save()`), for export to another system.
    pub fn export(&mut self, id: DocId) -> Result<Vec<u8>, StoreError> {
        Ok(load_cached(&self.conn, &mut self.cache, &self.actor, id)?.save())
    }

    /// Merges Automerge bytes (a saved document, as from [`Store::export`]) into the replica.
    /// Returns the document id read from the bytes' header.
    pub fn import(&mut self, bytes: &[u8]) -> Result<DocId, StoreError> {
        let mut incoming = load_snapshot(bytes)?;
        let header = model::read_header(&incoming)?;
        let _ = incoming.get_heads();
        self.transaction(|tx| tx.apply_snapshot(header.id, bytes).map(|_| header.id))
    }

    /// The current heads of a document.
    pub fn heads(&self, id: DocId) -> Result<Vec<ChangeHash>, StoreError> {
        let b: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT heads FROM docs WHERE id = ?1",
                [id.as_bytes()],
                |r| r.get(0),
            )
            .optional()?;
        b.map(|b| heads_from_bytes(&b))
            .ok_or(StoreError::NotFound(id))
    }

    /// Every document id with its heads, ordered by id (for repair).
    pub fn all_heads(&self) -> Result<Vec<(DocId, Vec<ChangeHash>)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, heads FROM docs ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, heads) = row?;
            if let Some(id) = DocId::from_slice(&id) {
                out.push((id, heads_from_bytes(&heads)));
            }
        }
        Ok(out)
    }

    /// Number of documents in the replica.
    pub fn doc_count(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM docs", [], |r| r.get(0))?)
    }

    /// Number of local changes not yet acknowledged by the relay.
    pub fn outbox_len(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?)
    }

    /// The oldest unacknowledged local changes, up to `max_count` changes and about `max_bytes`
    /// (at least one change is returned if any is waiting), skipping those after `after_seq`.
    pub fn outbox_batch(
        &self,
        after_seq: i64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxChange>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, doc_id, hash, bytes FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = st.query_map(params![after_seq, max_count as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for row in rows {
            let (seq, doc, hash, b) = row?;
            if !out.is_empty() && bytes + b.len() > max_bytes {
                break;
            }
            bytes += b.len();
            let (Some(doc_id), Ok(hash)) = (
                DocId::from_slice(&doc),
                ChangeHash::try_from(hash.as_slice()),
            ) else {
                continue;
            };
            out.push(OutboxChange {
                seq,
                doc_id,
                hash,
                bytes: b,
            });
        }
        Ok(out)
    }

    /// Changes the relay refused, newest first.
    pub fn quarantine(&self) -> Result<Vec<Quarantined>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT doc_id, hash, reason, at FROM quarantine ORDER BY at DESC")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (doc, hash, reason, at) = row?;
            if let Some(doc_id) = DocId::from_slice(&doc) {
                out.push(Quarantined {
                    doc_id,
                    hash: hex::encode(hash),
                    reason,
                    at,
                });
            }
        }
        Ok(out)
    }

    /// Downloaded documents this replica could not load, newest first: kept out of the
    /// replica and reported until a later snapshot of the document loads.
    pub fn skipped(&self) -> Result<Vec<Skipped>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT doc_id, reason, at FROM skipped ORDER BY at DESC, doc_id")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (doc, reason, at) = row?;
            if let Some(doc_id) = DocId::from_slice(&doc) {
                out.push(Skipped { doc_id, reason, at });
            }
        }
        Ok(out)
    }

    /// Every field with concurrent values, from the `conflicts` projection.
    pub fn conflicts(&self) -> Result<Vec<DocConflict>, StoreError> {
        let mut st = self.reader.prepare_cached(
            "SELECT doc_id, kind, path, value_json FROM conflicts ORDER BY doc_id, path",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind, path, values) = row?;
            let (Ok(doc_id), Some(kind)) = (id.parse(), DocKind::parse(&kind)) else {
                continue;
            };
            out.push(DocConflict {
                doc_id,
                kind,
                path,
                values: serde_json::from_str(&values).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// A read-only connection to the replica for SQL over the projections. Writes through it
    /// fail with `SQLITE_READONLY`.
    pub fn reader(&self) -> &Connection {
        &self.reader
    }

    /// Runs a read-only SQL query and returns each row as a JSON object keyed by column name.
    pub fn query_json(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, StoreError> {
        let mut st = self.reader.prepare(sql)?;
        if !st.readonly() {
            return Err(StoreError::Query(
                "only read-only statements are allowed".into(),
            ));
        }
        // BEGIN, SAVEPOINT, ATTACH and setter pragmas count as read-only but return no
        // columns; a BEGIN would pin the reader to a stale snapshot, so refuse them all.
        if st.column_count() == 0 {
            return Err(StoreError::Query(
                "only statements that return rows are allowed".into(),
            ));
        }
        let names: Vec<String> = st.column_names().map(str::to_string).collect();
        let mut rows = st.query(params)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut obj = serde_json::Map::new();
            for (i, name) in names.iter().enumerate() {
                use rusqlite::types::ValueRef;
                let v = match row.get_ref(i)? {
                    ValueRef::Null => serde_json::Value::Null,
                    ValueRef::Integer(n) => n.into(),
                    ValueRef::Real(f) => serde_json::Number::from_f64(f)
                        .map(serde_json::Value::Number)
                        .unwrap_or(serde_json::Value::Null),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                    ValueRef::Blob(b) => hex::encode(b).into(),
                };
                obj.insert(name.clone(), v);
            }
            out.push(obj);
        }
        Ok(out)
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

    /// Rebuilds every projection row from the documents (the documents are the truth).
    pub fn rebuild_projections(&mut self) -> Result<usize, StoreError> {
        let ids: Vec<DocId> = self.all_heads()?.into_iter().map(|(id, _)| id).collect();
        self.transaction(|tx| {
            for table in [
                "customers",
                "customer_phones",
                "contacts",
                "equipment",
                "visits",
                "tasks",
                "quotes",
                "quote_lines",
                "conflicts",
            ] {
                tx.tx.execute(&format!("DELETE FROM {table}"), [])?;
            }
            for id in &ids {
                let doc = load_cached(&tx.tx, tx.cache, tx.actor, *id)?;
                project(&tx.tx, doc, true, true)?;
            }
            Ok(ids.len())
        })
    }

    /// Compacts every document that has incremental changes into a fresh snapshot.
    pub fn compact_all(&mut self) -> Result<usize, StoreError> {
        let ids: Vec<DocId> = {
            let mut st = self
                .conn
                .prepare("SELECT id FROM docs WHERE pending_changes > 0")?;
            st.query_map([], |r| r.get::<_, Vec<u8>>(0))?
                .filter_map(|r| r.ok().and_then(|b| DocId::from_slice(&b)))
                .collect()
        };
        self.transaction(|tx| {
            for id in &ids {
                tx.compact(*id)?;
            }
            Ok(ids.len())
        })
    }

    /// Checks the replica: SQLite's `integrity_check`, every stored document loads, and the
    /// projections agree with the documents. Returns the problems found (empty when healthy).
    pub fn verify(&mut self) -> Result<Vec<String>, StoreError> {
        let mut problems = Vec::new();
        let ic: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if ic != "ok" {
            problems.push(format!("integrity_check: {ic}"));
        }
        for (id, heads) in self.all_heads()? {
            self.cache.remove(&id);
            match load_cached(&self.conn, &mut self.cache, &self.actor, id) {
                Err(e) => problems.push(format!("{id}: does not load: {e}")),
                Ok(doc) => {
                    let mut h = doc.get_heads();
                    h.sort();
                    let mut stored = heads;
                    stored.sort();
                    if h != stored {
                        problems.push(format!("{id}: stored heads differ from the document's"));
                    }
                    if let Ok(Document::Customer(c)) = model::read_document(doc) {
                        let name: Option<String> = self
                            .conn
                            .query_row(
                                "SELECT name FROM customers WHERE id = ?1",
                                [id.to_string()],
                                |r| r.get(0),
                            )
                            .optional()?;
                        if name.as_deref() != Some(c.name.as_str()) {
                            problems
                                .push(format!("{id}: customer projection disagrees with document"));
                        }
                    }
                }
            }
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests;

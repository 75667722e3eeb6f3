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

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use automerge::{ActorId, AutoCommit, ChangeHash};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use uuid::Uuid;

use crate::env::Env;
use crate::ids::{DocId, DocKind};
use crate::model::{self, Document, ModelError};
use cache::{DocCache, load_cached};
use decode::{RawChange, causal_order, heads_to_bytes, self_contained};
use local_budget::{check_doc_size, check_local_change};
use projection::{project, project_read, read_for_projection};

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

/// One write transaction on the replica (see [`Store::transaction`]).
pub struct StoreTx<'s> {
    tx: rusqlite::Transaction<'s>,
    cache: &'s mut DocCache,
    actor: &'s ActorId,
    opts: &'s StoreOptions,
    events: Vec<DocEvent>,
}

impl StoreTx<'_> {
    /// Whether the replica holds document `id`.
    fn exists(&self, id: DocId) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT 1 FROM docs WHERE id = ?1")?
            .query_row([id.as_bytes()], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Creates a new document with id `id` by running `init` on an empty Automerge document,
    /// and queues its changes in the outbox.
    pub fn create(
        &mut self,
        id: DocId,
        init: impl FnOnce(&mut AutoCommit, DocId) -> Result<(), ModelError>,
    ) -> Result<Committed, StoreError> {
        let exists = self.exists(id)?;
        if exists {
            return Err(StoreError::Exists(id));
        }
        let mut doc = AutoCommit::new();
        doc.set_actor(self.actor.clone());
        init(&mut doc, id)?;
        doc.commit();
        let mut hashes = Vec::new();
        let mut single_change = None;
        let now = self.opts.env.now_millis();
        {
            let mut ins = self.tx.prepare_cached(
                "INSERT INTO outbox (doc_id, hash, bytes, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let changes = doc.get_changes(&[]);
            for c in &changes {
                crate::budget::check_change(c, c.raw_bytes().len()).map_err(StoreError::Budget)?;
                ins.execute(params![id.as_bytes(), c.hash().0, c.raw_bytes(), now])?;
                hashes.push(c.hash());
            }
            if let [only] = changes.as_slice() {
                single_change = Some(only.raw_bytes().to_vec());
            }
        }
        // A change chunk is itself loadable Automerge bytes, so a document made of one change
        // is stored as that change; compaction writes a full snapshot once edits accumulate.
        let snapshot = single_change.unwrap_or_else(|| doc.save());
        // The ops of a single change are totally ordered, so a document made of one change
        // cannot hold concurrent values: skip the conflict scan.
        let typed = project(&self.tx, &doc, true, hashes.len() > 1)?;
        self.tx
            .prepare_cached(
                "INSERT INTO docs (id, kind, scope, customer_id, snapshot, heads, pending_changes, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)",
            )?
            .execute(params![
                id.as_bytes(),
                typed.as_ref().map(|d| d.header().kind.code()),
                typed.as_ref().map(|d| d.header().scope.clone()),
                typed.as_ref().and_then(|d| d.customer_id()).map(|c| c.as_bytes().to_vec()),
                snapshot,
                heads_to_bytes(&doc.get_heads()),
                now,
            ])?;
        self.events.push(DocEvent {
            id,
            kind: typed.as_ref().map(|d| d.header().kind),
            origin: Origin::Local,
            evicted: false,
        });
        self.cache.insert(id, doc);
        Ok(Committed { id, hashes })
    }

    /// Applies a local edit to a document and queues the resulting change in the outbox.
    /// If `f` fails, the document is left unchanged and the error is returned.
    pub fn edit(
        &mut self,
        id: DocId,
        f: impl FnOnce(&mut AutoCommit) -> Result<(), ModelError>,
    ) -> Result<Committed, StoreError> {
        let doc = load_cached(&self.tx, self.cache, self.actor, id)?;
        let before = doc.get_heads();
        if let Err(e) = f(doc) {
            doc.rollback();
            return Err(e.into());
        }
        doc.commit();
        let (new, hashes) = {
            let changes = doc.get_changes(&before);
            // The relay would refuse a change over budget: it does not commit here either
            // (the transaction rolls back and the cached document is dropped).
            for c in &changes {
                check_local_change(c)?;
            }
            let hashes: Vec<ChangeHash> = changes.iter().map(|c| c.hash()).collect();
            let raw: Vec<Vec<u8>> = changes.iter().map(|c| c.raw_bytes().to_vec()).collect();
            (raw, hashes)
        };
        check_doc_size(&self.tx, doc, id)?;
        if hashes.is_empty() {
            return Ok(Committed { id, hashes });
        }
        {
            let now = self.opts.env.now_millis();
            let mut ins = self.tx.prepare_cached(
                "INSERT OR IGNORE INTO outbox (doc_id, hash, bytes, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (h, b) in hashes.iter().zip(&new) {
                ins.execute(params![id.as_bytes(), h.0, b, now])?;
            }
        }
        self.persist(id, &hashes, &new, Origin::Local)?;
        Ok(Committed { id, hashes })
    }

    /// Stores changes new to a (cached, already updated) document: appends them to
    /// `doc_changes`, compacts when enough have accumulated, updates the heads and projections.
    fn persist(
        &mut self,
        id: DocId,
        hashes: &[ChangeHash],
        raw: &[Vec<u8>],
        origin: Origin,
    ) -> Result<(), StoreError> {
        let doc = load_cached(&self.tx, self.cache, self.actor, id)?;
        let read = read_for_projection(doc, true);
        let heads = heads_to_bytes(&doc.get_heads());
        // A document must say it is the one it is filed under (a downloaded snapshot is
        // checked for this before it is merged): projection rows are keyed by the header's
        // id, so changes writing another id would replace that document's rows. The relay
        // refuses such changes on upload; nothing is written here and the cached copy, which
        // holds them, is dropped.
        if let Ok((d, _)) = &read
            && d.header().id != id
        {
            self.cache.remove(&id);
            return Err(StoreError::InvalidData(format!(
                "changes to document {id} write the id of document {}",
                d.header().id
            )));
        }
        {
            let mut ins = self.tx.prepare_cached(
                "INSERT OR IGNORE INTO doc_changes (doc_id, hash, bytes) VALUES (?1, ?2, ?3)",
            )?;
            for (h, b) in hashes.iter().zip(raw) {
                ins.execute(params![id.as_bytes(), h.0, b])?;
            }
        }
        let typed = project_read(&self.tx, read, false)?;
        let now = self.opts.env.now_millis();
        let exists = self
            .tx
            .prepare_cached(
                "UPDATE docs SET heads = ?2, pending_changes = pending_changes + ?3, updated_at = ?4,
                   kind = COALESCE(?5, kind), scope = COALESCE(?6, scope),
                   customer_id = COALESCE(?7, customer_id)
                 WHERE id = ?1",
            )?
            .execute(params![
                id.as_bytes(),
                heads,
                hashes.len() as i64,
                now,
                typed.as_ref().map(|d| d.header().kind.code()),
                typed.as_ref().map(|d| d.header().scope.clone()),
                typed.as_ref().and_then(|d| d.customer_id()).map(|c| c.as_bytes().to_vec()),
            ])?
            > 0;
        if !exists {
            self.tx
                .prepare_cached(
                    "INSERT INTO docs (id, kind, scope, customer_id, snapshot, heads, pending_changes, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    id.as_bytes(),
                    typed.as_ref().map(|d| d.header().kind.code()),
                    typed.as_ref().map(|d| d.header().scope.clone()),
                    typed.as_ref().and_then(|d| d.customer_id()).map(|c| c.as_bytes().to_vec()),
                    AutoCommit::new().save(),
                    heads,
                    hashes.len() as i64,
                    now,
                ])?;
        }
        let pending: i64 = self
            .tx
            .prepare_cached("SELECT pending_changes FROM docs WHERE id = ?1")?
            .query_row([id.as_bytes()], |r| r.get(0))?;
        if pending >= self.opts.compact_after {
            self.compact(id)?;
        }
        self.events.push(DocEvent {
            id,
            kind: typed.as_ref().map(|d| d.header().kind),
            origin,
            evicted: false,
        });
        Ok(())
    }

    /// Writes a fresh snapshot of a document and drops the incremental changes it contains.
    /// Changes still waiting for missing dependencies are kept.
    pub fn compact(&mut self, id: DocId) -> Result<(), StoreError> {
        let doc = load_cached(&self.tx, self.cache, self.actor, id)?;
        let snapshot = doc.save();
        let mut st = self
            .tx
            .prepare_cached("SELECT hash FROM doc_changes WHERE doc_id = ?1")?;
        let stored: Vec<Vec<u8>> = st
            .query_map([id.as_bytes()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut kept = 0i64;
        let mut del = self
            .tx
            .prepare_cached("DELETE FROM doc_changes WHERE doc_id = ?1 AND hash = ?2")?;
        for h in stored {
            let applied = ChangeHash::try_from(h.as_slice())
                .ok()
                .is_some_and(|hash| doc.get_change_by_hash(&hash).is_some());
            if applied {
                del.execute(params![id.as_bytes(), h])?;
            } else {
                kept += 1;
            }
        }
        self.tx
            .prepare_cached("UPDATE docs SET snapshot = ?2, pending_changes = ?3 WHERE id = ?1")?
            .execute(params![id.as_bytes(), snapshot, kept])?;
        Ok(())
    }

    /// Merges raw Automerge changes received from elsewhere into a document (creating it if
    /// new). Returns how many of them were new. Changes whose dependencies have not arrived yet
    /// are stored and applied once they do.
    pub fn apply_changes(&mut self, id: DocId, changes: &[Vec<u8>]) -> Result<usize, StoreError> {
        self.apply_changes_as(id, changes, Origin::Remote)
    }

    fn apply_changes_as(
        &mut self,
        id: DocId,
        changes: &[Vec<u8>],
        origin: Origin,
    ) -> Result<usize, StoreError> {
        let decoded = changes
            .iter()
            .map(|b| decode_change(b))
            .collect::<Result<Vec<_>, _>>()?;
        let exists = self.cache.docs.contains_key(&id)
            || self
                .tx
                .prepare_cached("SELECT 1 FROM docs WHERE id = ?1")?
                .query_row([id.as_bytes()], |_| Ok(()))
                .optional()?
                .is_some();
        if !exists {
            let mut doc = AutoCommit::new();
            doc.set_actor(self.actor.clone());
            self.cache.insert(id, doc);
        }
        let doc = load_cached(&self.tx, self.cache, self.actor, id)?;
        let mut fresh_hashes = Vec::new();
        let mut fresh_raw = Vec::new();
        let mut fresh = Vec::new();
        for (c, raw) in decoded.into_iter().zip(changes) {
            // From the change graph; `get_change_by_hash` would rebuild the change from the
            // document's columns. (A change waiting for its dependencies counts as new, as it
            // did there: applying it again is harmless.)
            let held = doc.get_missing_deps(&[c.hash()]).is_empty();
            if !held && !fresh_hashes.contains(&c.hash()) {
                fresh_hashes.push(c.hash());
                fresh_raw.push(raw.clone());
                fresh.push(c);
            }
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        // A change that does not fit the document is refused before automerge sees it (it
        // could panic part way, and the cached document would have to be dropped).
        precheck_changes(doc, &fresh)?;
        let result = guard("applying changes", || doc.apply_changes(fresh));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.cache.remove(&id);
                return Err(StoreError::InvalidData(e.to_string()));
            }
            Err(e) => {
                self.cache.remove(&id);
                return Err(e);
            }
        }
        let n = fresh_hashes.len();
        self.persist(id, &fresh_hashes, &fresh_raw, origin)?;
        Ok(n)
    }

    /// Moves quarantined local changes (all, or those of one document) back into the outbox,
    /// to be sent again at the next sync — after the cause of the refusal was fixed: a grant
    /// widened, a role raised. Each goes back into its document too (the replica rebuilt the
    /// document without it, or dropped it when its creation was refused), in causal order, as
    /// a local edit. Changes that cannot go back stay in the quarantine: those of a document
    /// this replica no longer holds that do not make a whole document on their own, and
    /// those of a document edited on this replica after the refusal (the later edits took
    /// their sequence numbers). Returns how many were requeued and how many stayed.
    pub fn requeue_quarantined(
        &mut self,
        doc: Option<DocId>,
    ) -> Result<(usize, usize), StoreError> {
        let rows: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = {
            let mut st = self.tx.prepare_cached(
                "SELECT doc_id, hash, bytes FROM quarantine
                  WHERE ?1 IS NULL OR doc_id = ?1 ORDER BY at, hash",
            )?;
            st.query_map([doc.map(|d| d.as_bytes().to_vec())], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let mut by_doc: std::collections::BTreeMap<DocId, Vec<RawChange>> =
            std::collections::BTreeMap::new();
        for (d, hash, bytes) in rows {
            let id = DocId::from_slice(&d).ok_or_else(|| {
                StoreError::InvalidData("quarantine row without a document".into())
            })?;
            by_doc.entry(id).or_default().push((hash, bytes));
        }
        let (mut requeued, mut kept) = (0, 0);
        let now = self.opts.env.now_millis();
        for (id, changes) in by_doc {
            let held = self
                .tx
                .prepare_cached("SELECT 1 FROM docs WHERE id = ?1")?
                .query_row([id.as_bytes()], |_| Ok(()))
                .optional()?
                .is_some();
            let ordered = causal_order(changes)?;
            // A document the replica dropped (its creation was refused) comes back only
            // from a whole history: every dependency among the quarantined changes.
            if !held && !self_contained(&ordered)? {
                kept += ordered.len();
                continue;
            }
            let raw: Vec<Vec<u8>> = ordered.iter().map(|(_, b)| b.clone()).collect();
            match self.apply_changes_as(id, &raw, Origin::Local) {
                Ok(_) => {}
                Err(e @ StoreError::Sqlite(_)) => return Err(e),
                Err(e) => {
                    // Typically: the document was edited after the refusal, and those edits
                    // took the refused changes' sequence numbers; automerge cannot hold both.
                    // Nothing was written; the changes stay quarantined.
                    tracing::warn!(doc = %id, error = %e, "cannot put quarantined changes back");
                    kept += ordered.len();
                    continue;
                }
            }
            let mut ins = self.tx.prepare_cached(
                "INSERT OR IGNORE INTO outbox (doc_id, hash, bytes, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut del = self
                .tx
                .prepare_cached("DELETE FROM quarantine WHERE hash = ?1")?;
            for (hash, bytes) in &ordered {
                ins.execute(params![id.as_bytes(), hash, bytes, now])?;
                del.execute([hash])?;
            }
            requeued += ordered.len();
        }
        Ok((requeued, kept))
    }

    /// Merges a saved document (a snapshot) received from elsewhere, creating it if new.
    /// Returns whether the replica's document changed.
    pub fn apply_snapshot(&mut self, id: DocId, bytes: &[u8]) -> Result<bool, StoreError> {
        let mut prepared = prepare_snapshot(id, bytes)?;
        self.apply_prepared_snapshot(id, bytes, &mut prepared)
    }

    /// [`StoreTx::apply_snapshot`] with the loading and reading done ahead
    /// ([`prepare_snapshot`] of the same `id` and `bytes`). Uses up `prepared`; what is left
    /// of it can be freed on any thread ([`PreparedQueue::discard`]).
    pub fn apply_prepared_snapshot(
        &mut self,
        id: DocId,
        bytes: &[u8],
        prepared: &mut PreparedSnapshot,
    ) -> Result<bool, StoreError> {
        let read = std::mem::replace(
            &mut prepared.read,
            Err(ModelError::Malformed("snapshot already applied".into())),
        );
        let exists = self.exists(id)?;
        if !exists && !self.cache.docs.contains_key(&id) {
            // New to this replica (the bulk of a first download): the received document is
            // the document, and the bytes that just loaded are its snapshot. Merging it into
            // an empty document and saving that again would cost as much as everything else.
            // The loaded document is not kept in the cache: a first download touches each
            // document once, and evicting thousands of them would cost the writing thread
            // as much as loading them cost the helpers.
            let typed = project_read(&self.tx, read, true)?;
            self.tx
                .prepare_cached(
                    "INSERT INTO docs (id, kind, scope, customer_id, snapshot, heads, pending_changes, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)",
                )?
                .execute(params![
                    id.as_bytes(),
                    typed.as_ref().map(|d| d.header().kind.code()),
                    typed.as_ref().map(|d| d.header().scope.clone()),
                    typed.as_ref().and_then(|d| d.customer_id()).map(|c| c.as_bytes().to_vec()),
                    bytes,
                    heads_to_bytes(&prepared.heads),
                    self.opts.env.now_millis(),
                ])?;
            self.events.push(DocEvent {
                id,
                kind: typed.as_ref().map(|d| d.header().kind),
                origin: Origin::Remote,
                evicted: false,
            });
            return Ok(true);
        }
        let Some(mut incoming) = prepared.doc.take() else {
            return Err(StoreError::InvalidData(format!(
                "snapshot of {id} was already applied"
            )));
        };
        let doc = load_cached(&self.tx, self.cache, self.actor, id)?;
        let before = doc.get_heads();
        match guard("merging a snapshot", || doc.merge(&mut incoming)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                self.cache.remove(&id);
                return Err(StoreError::InvalidData(e.to_string()));
            }
            Err(e) => {
                self.cache.remove(&id);
                return Err(e);
            }
        }
        if exists && doc.get_heads() == before {
            return Ok(false);
        }
        self.persist(id, &[], &[], Origin::Remote)?;
        self.compact(id)?;
        Ok(true)
    }

    /// Removes the outbox entries for changes the relay has durably stored.
    pub fn ack(&mut self, hashes: &[ChangeHash]) -> Result<usize, StoreError> {
        let mut del = self
            .tx
            .prepare_cached("DELETE FROM outbox WHERE hash = ?1")?;
        let mut n = 0;
        for h in hashes {
            n += del.execute([h.0])?;
        }
        Ok(n)
    }

    /// Moves a refused local change from the outbox into the quarantine, with the reason.
    pub fn quarantine(&mut self, hash: &ChangeHash, reason: &str) -> Result<bool, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .tx
            .prepare_cached("SELECT doc_id, bytes FROM outbox WHERE hash = ?1")?
            .query_row([hash.0], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((doc, bytes)) = row else {
            return Ok(false);
        };
        self.tx.execute(
            "INSERT OR REPLACE INTO quarantine (hash, doc_id, bytes, reason, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash.0, doc, bytes, reason, self.opts.env.now_millis()],
        )?;
        self.tx
            .execute("DELETE FROM outbox WHERE hash = ?1", [hash.0])?;
        Ok(true)
    }

    /// Whether the outbox still holds changes to a document.
    pub fn has_pending(&self, id: DocId) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT 1 FROM outbox WHERE doc_id = ?1 LIMIT 1")?
            .query_row([id.as_bytes()], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Removes a document that left the device's scopes. If local changes to it are still
    /// waiting for the relay, it is only marked and removed once they are acknowledged
    /// (see [`StoreTx::evict_acknowledged`]); unsynced edits are never thrown away.
    /// Returns whether it was removed now.
    pub fn evict(&mut self, id: DocId) -> Result<bool, StoreError> {
        if self.has_pending(id)? {
            self.tx.execute(
                "UPDATE docs SET evict_pending = 1 WHERE id = ?1",
                [id.as_bytes()],
            )?;
            return Ok(false);
        }
        projection::clear(&self.tx, &id.to_string())?;
        self.tx
            .execute("DELETE FROM doc_changes WHERE doc_id = ?1", [id.as_bytes()])?;
        let n = self
            .tx
            .execute("DELETE FROM docs WHERE id = ?1", [id.as_bytes()])?;
        self.cache.remove(&id);
        if n > 0 {
            self.events.push(DocEvent {
                id,
                kind: None,
                origin: Origin::Remote,
                evicted: true,
            });
        }
        Ok(n > 0)
    }

    /// Removes documents marked for eviction whose local changes are all acknowledged.
    pub fn evict_acknowledged(&mut self) -> Result<usize, StoreError> {
        let ids: Vec<DocId> = self
            .tx
            .prepare_cached(
                "SELECT id FROM docs d WHERE evict_pending = 1
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.doc_id = d.id)",
            )?
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .filter_map(|r| r.ok().and_then(|b| DocId::from_slice(&b)))
            .collect();
        for id in &ids {
            self.evict(*id)?;
        }
        Ok(ids.len())
    }

    /// Records that a downloaded item of document `id` could not be loaded (see
    /// [`Store::skipped`]).
    pub fn record_skipped(&mut self, id: DocId, reason: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO skipped (doc_id, reason, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (doc_id) DO UPDATE SET reason = excluded.reason, at = excluded.at",
            )?
            .execute(params![id.as_bytes(), reason, self.opts.env.now_millis()])?;
        Ok(())
    }

    /// Forgets that document `id` was skipped (a snapshot of it loaded).
    pub fn clear_skipped(&mut self, id: DocId) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM skipped WHERE doc_id = ?1")?
            .execute([id.as_bytes()])?;
        Ok(())
    }

    /// Marks a document to leave the replica; it is removed by
    /// [`StoreTx::evict_acknowledged`] once its local changes are acknowledged, unless
    /// [`StoreTx::cancel_eviction`] keeps it first. Returns whether the document exists.
    pub fn mark_eviction(&mut self, id: DocId) -> Result<bool, StoreError> {
        Ok(self.tx.execute(
            "UPDATE docs SET evict_pending = 1 WHERE id = ?1",
            [id.as_bytes()],
        )? > 0)
    }

    /// Keeps a document that was marked for eviction (it came back into the device's scopes
    /// before its local changes were acknowledged). Returns whether it was marked.
    pub fn cancel_eviction(&mut self, id: DocId) -> Result<bool, StoreError> {
        // Cached: it runs for every snapshot of a download.
        Ok(self
            .tx
            .prepare_cached(
                "UPDATE docs SET evict_pending = 0 WHERE id = ?1 AND evict_pending = 1",
            )?
            .execute([id.as_bytes()])?
            > 0)
    }

    /// Writes a metadata value (e.g. the sync cursor) in this transaction.
    pub fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    /// Reads a metadata value inside this transaction.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Reads a typed document inside this transaction.
    pub fn document(&mut self, id: DocId) -> Result<Document, StoreError> {
        let doc = load_cached(&self.tx, self.cache, self.actor, id)?;
        Ok(guard("reading a document", || model::read_document(doc))??)
    }

    /// The Automerge document, loaded inside this transaction.
    pub fn automerge(&mut self, id: DocId) -> Result<&mut AutoCommit, StoreError> {
        load_cached(&self.tx, self.cache, self.actor, id)
    }
}

#[cfg(test)]
mod tests;

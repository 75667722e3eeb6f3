//! [`SqliteRelayStore`]: the relay's store in one SQLite file (WAL, `synchronous=FULL`).
//!
//! Writes (`append_changes`, device changes) go through one writer connection behind a mutex;
//! uploads queue for it and are committed in groups (`store::write_queue`);
//! SQLite's single writer assigns the log's sequence numbers inside the transaction that stores
//! the entries, so a reader can never skip an entry that commits later with a lower number.
//! Reads (`read_log`, `read_snapshots`, `missing`, `authenticate`) use a bounded pool of
//! long-lived read-only connections (`store::pool`: [`READERS`], of which some are kept for
//! the short reads that let devices in) and run concurrently with a write (WAL). Statements
//! are prepared once per connection (`prepare_cached`). The upload rules are
//! core's `protocol::rules::append_batch`, over `batch_db`'s `BatchDb` for a rusqlite
//! transaction; the device
//! policy is `store::devices`, over `devices`' `DeviceDb` and `DeviceBackend`.

use super::pool::{Pool, PoolStats, Share};
use super::write_queue::{Upload, WriteQueue, WriteStats, write_group};
use super::*;
use fieldsync_core::store::{OpenError, open_sqlite};

mod batch_db;
pub(crate) mod blobs;
mod devices;
mod meta;
mod nodes;
mod outbox;
pub(crate) mod schema;

use batch_db::SqlTx;
use devices::devices_generation;
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};

pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) cache: DocCache,
}

pub(super) struct Inner {
    pub(super) path: PathBuf,
    pub(super) epoch: Uuid,
    pub(super) opts: RelayStoreOptions,
    pub(super) writer: Mutex<Writer>,
    pub(super) appends: WriteQueue,
    pub(super) readers: Pool<Connection>,
    pub(super) touched: Mutex<HashMap<Uuid, Instant>>,
    pub(super) notify: watch::Sender<u64>,
    pub(super) devices_notify: watch::Sender<u64>,
}

/// The relay's SQLite store. Cloning gives another handle to the same store.
#[derive(Clone)]
pub struct SqliteRelayStore {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteRelayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteRelayStore")
            .field("path", &self.inner.path)
            .field("epoch", &self.inner.epoch)
            .finish()
    }
}

/// Read-only connections the store keeps open at most.
const READERS: usize = 8;
/// Of those, kept for authentication and device reads.
const READERS_RESERVED: usize = 2;
/// How long a read waits for a free connection before it is refused as busy.
const READ_WAIT: Duration = Duration::from_secs(30);

/// The pool of read-only connections to the database at `path`.
fn readers(path: &Path) -> Pool<Connection> {
    let path = path.to_path_buf();
    Pool::new(READERS, READERS_RESERVED, READ_WAIT, move || {
        // Each keeps its prepared statements (`open_sqlite` sizes the cache).
        open_conn(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
    })
}

pub(super) fn open_conn(path: &Path, flags: OpenFlags) -> Result<Connection, RelayStoreError> {
    // The relay's files are plain: their protection is the server's disk, not a key.
    open_sqlite(path, flags, None).map_err(|e| match e {
        OpenError::Sqlite(e) => RelayStoreError::Sqlite(e),
        e => RelayStoreError::NotADatabase(path.to_path_buf(), e.to_string()),
    })
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
                readers: readers(&path),
                path,
                epoch,
                writer: Mutex::new(Writer {
                    conn,
                    cache: DocCache::new(opts.cache_docs),
                }),
                appends: WriteQueue::default(),
                opts,
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
        let g = self.read_priority(devices_generation)?;
        publish(&self.inner.devices_notify, g);
        Ok(g)
    }

    /// Notices log entries another process appended (`fieldsync-relay doc trim` while the
    /// relay runs) and wakes [`SqliteRelayStore::subscribe`] receivers. The relay calls this
    /// every second.
    pub fn poll_log(&self) -> Result<u64, RelayStoreError> {
        let high = self.high_seq()?;
        publish_high(&self.inner.notify, high);
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
        let done =
            replace::replace_history(&SqlTx(&tx), id, self.inner.opts.env.now_millis(), rewrite)?;
        tx.commit()?;
        drop(guard);
        if let Some(r) = &done {
            publish_high(&self.inner.notify, r.seq);
        }
        Ok(done)
    }

    /// Documents currently loaded in the write cache (for tests and metrics).
    pub fn cached_docs(&self) -> usize {
        lock(&self.inner.writer).cache.len()
    }

    /// Runs `f` on a pooled read-only connection (waiting for one while all are lent).
    pub(super) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        self.read_in(Share::Bulk, f)
    }

    /// Runs `f`, a short read that lets a device in, on a pooled connection that download
    /// reads cannot all hold.
    pub(super) fn read_priority<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        self.read_in(Share::Priority, f)
    }

    fn read_in<T>(
        &self,
        share: Share,
        f: impl FnOnce(&Connection) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        let mut lent = self.inner.readers.get(share)?;
        f(lent.conn()?)
    }

    /// The read pool's numbers now (for metrics).
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.readers.stats()
    }

    /// What the writer did with uploads so far (for metrics).
    pub fn write_stats(&self) -> WriteStats {
        self.inner.appends.stats()
    }

    /// Runs `f` in a write transaction.
    pub(super) fn write<T>(
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

    /// Validates and durably stores uploaded changes (see
    /// [`fieldsync_core::protocol::RelayStorage::append`]): in one transaction with the
    /// uploads queued meanwhile (`store::write_queue`), committed before returning.
    pub fn append_changes(
        &self,
        device: &DeviceInfo,
        changes: &[UploadChange],
        relayed: bool,
    ) -> Result<Vec<Outcome>, RelayStoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let rules = self.inner.opts.upload_rules();
        let upload = Upload::new(device, changes, relayed);
        self.inner
            .appends
            .append(&self.inner.writer, upload, |w, group| {
                let Writer { conn, cache } = w;
                let written = (|| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let written = write_group(&SqlTx(&tx), cache, &rules, group)?;
                    tx.commit()?;
                    Ok::<_, RelayStoreError>(written)
                })()
                // Rolled back: what the group cached may not be in the database.
                .inspect_err(|_| cache.clear())?;
                if let Some(h) = written.high {
                    self.inner.notify.send_replace(h.max(0) as u64);
                }
                Ok(written.outcomes)
            })
    }

    /// The highest sequence number assigned so far.
    pub fn high_seq(&self) -> Result<u64, RelayStoreError> {
        self.read_priority(|c| {
            // Asked before every download batch of every session: parsed once per connection.
            let h: i64 = c
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM log")?
                .query_row([], |r| r.get(0))?;
            Ok(h.max(0) as u64)
        })
    }

    /// Log entries of `scope` after `after` (see [`fieldsync_core::protocol::RelayStorage::read_log`]). For `*` (a device
    /// that sees every scope) only change entries are returned: it has every change already, so
    /// a scope move's snapshot entries are redundant for it and its `Leave` entries would be
    /// wrong.
    pub fn read_log(
        &self,
        scope: &str,
        after: u64,
        max_bytes: usize,
        lane: Lane<'_>,
    ) -> Result<(Vec<LogEntry>, bool), RelayStoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        self.read(|c| {
            let mut st;
            let mut rows = if let Some((customers, first, upto)) = lane_params(lane) {
                // One lane of a download (see `fieldsync_core::protocol::download`): an entry
                // is the first lane's if it is at or before `upto` and of a document of the
                // named customers.
                let which = if scope == ALL_SCOPES {
                    "kind IN (0, 3) AND ?2 = ?2"
                } else {
                    "scope = CAST(?2 AS TEXT)"
                };
                st = c.prepare_cached(&format!(
                    "SELECT seq, doc_id, kind, length(bytes), bytes, hash,
                       CASE WHEN kind = 2 THEN COALESCE(
                         (SELECT d.scope FROM docs d WHERE d.doc_id = log.doc_id), moved_to)
                       ELSE moved_to END
                     FROM log
                     WHERE {which} AND seq > ?1 AND (?4 = 0 OR seq <= ?5)
                       AND (seq <= ?5 AND (
                             doc_id IN (SELECT unhex(value) FROM json_each(?3))
                             OR IFNULL((SELECT d.customer_id FROM docs d WHERE d.doc_id = log.doc_id)
                                  IN (SELECT unhex(value) FROM json_each(?3)), 0))) = ?4
                     ORDER BY seq"
                ))?;
                st.query(params![after, scope, customers, first, upto])?
            } else if scope == ALL_SCOPES {
                st = c.prepare_cached(
                    "SELECT seq, doc_id, kind, length(bytes), bytes, hash, moved_to FROM log
                     WHERE seq > ?1 AND kind IN (0, 3) ORDER BY seq",
                )?;
                st.query(params![after])?
            } else {
                // A Leave names where the document is filed now: a reader that sees that
                // scope keeps it, even if it moved on (or back) since the entry. (The scope
                // is CAST: as a bare `scope = ?2` beside a range on the index's next column,
                // SQLite re-prepares the statement at every bind, parsing it again on every
                // read: 8 % of the relay's CPU under load. The same below.)
                st = c.prepare_cached(
                    "SELECT seq, doc_id, kind, length(bytes), bytes, hash,
                       CASE WHEN kind = 2 THEN COALESCE(
                         (SELECT d.scope FROM docs d WHERE d.doc_id = log.doc_id), moved_to)
                       ELSE moved_to END
                     FROM log WHERE scope = CAST(?2 AS TEXT) AND seq > ?1 ORDER BY seq",
                )?;
                st.query(params![after, scope])?
            };
            log_page(&mut rows, max_bytes, |_, e| Ok(e))
        })
    }

    /// Log entries of every scope after `after`, up to `max_bytes` (at least one), each with
    /// the scope it is filed under and a `Leave`'s `moved_to` as stored; and whether more
    /// follow. What the relay's in-memory tail (`crate::fanout`) is filled from: one read for
    /// all live connections.
    pub fn read_log_all(
        &self,
        after: u64,
        max_bytes: usize,
    ) -> Result<(Vec<(String, LogEntry)>, bool), RelayStoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        // One read follows the log for every live connection: downloads must not hold it up.
        self.read_priority(|c| {
            let mut st = c.prepare_cached(
                "SELECT seq, doc_id, kind, length(bytes), bytes, hash, moved_to, scope
                 FROM log WHERE seq > ?1 ORDER BY seq",
            )?;
            let mut rows = st.query([after])?;
            log_page(&mut rows, max_bytes, |r, e| Ok((r.get(7)?, e)))
        })
    }

    /// Snapshots of the documents in `scope` after `after` (see [`fieldsync_core::protocol::RelayStorage::read_snapshots`]).
    pub fn read_snapshots(
        &self,
        scope: &str,
        after: Option<DocId>,
        max_bytes: usize,
        lane: Lane<'_>,
    ) -> Result<SnapshotPage, RelayStoreError> {
        let after: Vec<u8> = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
        self.read(|c| {
            let mut st;
            let mut rows = if let Some((customers, first, _)) = lane_params(lane) {
                let which = if scope == ALL_SCOPES {
                    "?2 = ?2"
                } else {
                    "scope = CAST(?2 AS TEXT)"
                };
                st = c.prepare_cached(&format!(
                    "SELECT doc_id, length(snapshot), snapshot FROM docs
                     WHERE {which} AND doc_id > ?1
                       AND (doc_id IN (SELECT unhex(value) FROM json_each(?3))
                            OR IFNULL(customer_id IN (SELECT unhex(value) FROM json_each(?3)), 0)) = ?4
                     ORDER BY doc_id"
                ))?;
                st.query(params![after, scope, customers, first])?
            } else if scope == ALL_SCOPES {
                st = c.prepare_cached(
                    "SELECT doc_id, length(snapshot), snapshot FROM docs WHERE doc_id > ?1 ORDER BY doc_id",
                )?;
                st.query(params![after])?
            } else {
                st = c.prepare_cached(
                    "SELECT doc_id, length(snapshot), snapshot FROM docs
                     WHERE scope = CAST(?2 AS TEXT) AND doc_id > ?1 ORDER BY doc_id",
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

    /// About how much a download of `scope` has left (see
    /// [`fieldsync_core::protocol::RelayStorage::waiting`]).
    pub fn waiting(
        &self,
        scope: &str,
        snapshots_after: Option<Option<DocId>>,
        log_after: u64,
    ) -> Result<(u64, u64), RelayStoreError> {
        let log_after = i64::try_from(log_after).unwrap_or(i64::MAX);
        let all = scope == ALL_SCOPES;
        self.read(|c| {
            let (mut documents, mut bytes) = (0i64, 0i64);
            if let Some(after) = snapshots_after {
                let after: Vec<u8> = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
                let (d, b): (i64, i64) = c
                    .prepare_cached(if all {
                        "SELECT count(*), COALESCE(sum(length(snapshot)), 0) FROM docs
                          WHERE doc_id > ?1 AND ?2 = ?2"
                    } else {
                        "SELECT count(*), COALESCE(sum(length(snapshot)), 0) FROM docs
                          WHERE scope = CAST(?2 AS TEXT) AND doc_id > ?1"
                    })?
                    .query_row(params![after, scope], |r| Ok((r.get(0)?, r.get(1)?)))?;
                documents += d;
                bytes += b;
            }
            let (d, b): (i64, i64) = c
                .prepare_cached(if all {
                    "SELECT count(DISTINCT doc_id), COALESCE(sum(length(bytes)), 0) FROM log
                      WHERE seq > ?1 AND kind IN (0, 3) AND ?2 = ?2"
                } else {
                    "SELECT count(DISTINCT doc_id), COALESCE(sum(length(bytes)), 0) FROM log
                      WHERE scope = CAST(?2 AS TEXT) AND seq > ?1"
                })?
                .query_row(params![log_after, scope], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let n = |v: i64| u64::try_from(v).unwrap_or(0);
            Ok((n(documents + d), n(bytes + b)))
        })
    }

    /// Documents that left `scope` at or before `upto`, with where each is filed now (see
    /// [`fieldsync_core::protocol::RelayStorage::departures`]).
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

    /// The stored heads of each of `ids` the relay holds (see
    /// [`fieldsync_core::protocol::RelayStorage::heads_of`]).
    pub fn heads_of(&self, ids: &[DocId]) -> Result<Vec<(DocId, Vec<Hash>)>, RelayStoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached("SELECT heads FROM docs WHERE doc_id = ?1")?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let heads: Option<Vec<u8>> =
                    st.query_row([id.as_bytes()], |r| r.get(0)).optional()?;
                if let Some(h) = heads {
                    out.push((*id, split_heads(&h)));
                }
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
                    Ok::<_, RelayStoreError>(has_st.exists(params![&h[..], id.as_bytes()])?)
                })?);
            }
            drop((heads_st, has_st));
            tx.finish()?;
            Ok(out)
        })
    }

    /// Records that a device is being sent the departure of `docs` (see
    /// [`fieldsync_core::protocol::RelayStorage::record_departures`]).
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

    /// The audit trail of accepted changes the query selects (by document, by uploading
    /// device id or name, since a time), oldest first; at most the `limit` most recent. The
    /// customer's name is filled in by [`RelayStore::audit`].
    pub fn audit(&self, q: &AuditQuery<'_>) -> Result<Vec<AuditRecord>, RelayStoreError> {
        let device_id = q.device.and_then(|d| Uuid::parse_str(d.trim()).ok());
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT a.seq, a.at, a.device, d.name, a.doc_id, l.hash, l.scope, dd.kind,
                        dd.customer_id
                   FROM audit a
                   LEFT JOIN devices d ON d.device_id = a.device
                   LEFT JOIN log l ON l.seq = a.seq
                   LEFT JOIN docs dd ON dd.doc_id = a.doc_id
                  WHERE (?1 IS NULL OR a.doc_id = ?1)
                    AND (?2 = 0 OR a.device = ?3 OR d.name = ?4)
                    AND (?6 IS NULL OR a.at >= ?6)
                  ORDER BY a.seq DESC LIMIT ?5",
            )?;
            let rows = st.query_map(
                params![
                    q.doc.map(|d| d.as_bytes().to_vec()),
                    i64::from(q.device.is_some()),
                    device_id.map(|d| d.as_bytes().to_vec()),
                    q.device.map(str::trim),
                    limit,
                    q.since,
                ],
                |r| {
                    Ok((
                        (
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, Vec<u8>>(4)?,
                        ),
                        (
                            r.get::<_, Option<Vec<u8>>>(5)?,
                            r.get::<_, Option<String>>(6)?,
                            r.get::<_, Option<i64>>(7)?,
                            r.get::<_, Option<Vec<u8>>>(8)?,
                        ),
                    ))
                },
            )?;
            let mut out = Vec::new();
            for row in rows {
                let ((seq, at, dev, device_name, doc), (hash, scope, kind, customer)) = row?;
                out.push(audit_record(
                    seq,
                    at,
                    Uuid::from_slice(&dev)
                        .map_err(|_| RelayStoreError::Corrupt("bad device id in audit".into()))?,
                    device_name,
                    doc_id(&doc)?,
                    hash,
                    scope,
                    kind,
                    customer.as_deref().map(doc_id).transpose()?,
                ));
            }
            out.reverse();
            Ok(out)
        })
    }

    /// A document's stored snapshot, if the relay holds the document.
    pub fn snapshot(&self, id: DocId) -> Result<Option<Vec<u8>>, RelayStoreError> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT snapshot FROM docs WHERE doc_id = ?1")?
                    .query_row([id.as_bytes().to_vec()], |r| r.get(0))
                    .optional()?,
            )
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

/// A download lane as SQL parameters: the customers (a JSON array of hex ids), 1 for the first
/// lane or 0 for the rest, and the lane's last log position; `None` for every document.
/// Log entries from `rows` (columns: seq, doc id, kind, payload length, payload, hash,
/// `moved_to`, then any the caller reads in `each`) up to `max_bytes` (at least one), and
/// whether more follow.
fn log_page<T>(
    rows: &mut rusqlite::Rows<'_>,
    max_bytes: usize,
    each: impl Fn(&rusqlite::Row<'_>, LogEntry) -> Result<T, RelayStoreError>,
) -> Result<(Vec<T>, bool), RelayStoreError> {
    let mut out = Vec::new();
    let mut used = 0usize;
    while let Some(r) = rows.next()? {
        let size = r.get::<_, Option<i64>>(3)?.unwrap_or(0).max(0) as usize + ENTRY_OVERHEAD;
        if !out.is_empty() && used + size > max_bytes {
            return Ok((out, true));
        }
        used += size;
        let hash: Option<Vec<u8>> = r.get(5)?;
        let entry = log_entry(
            r.get(0)?,
            doc_id(&r.get::<_, Vec<u8>>(1)?)?,
            r.get(2)?,
            r.get(4)?,
            hash.as_deref(),
            r.get(6)?,
        )?;
        out.push(each(r, entry)?);
    }
    Ok((out, false))
}

fn lane_params(lane: Lane<'_>) -> Option<(String, i64, i64)> {
    let (first, upto) = match lane {
        Lane::All => return None,
        Lane::First { upto, .. } => (1, upto),
        Lane::Rest { upto, .. } => (0, upto),
    };
    let ids: Vec<String> = lane
        .customers()
        .iter()
        .map(|c| hex::encode(c.as_bytes()))
        .collect();
    let json = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
    Some((json, first, i64::try_from(upto).unwrap_or(i64::MAX)))
}

#[cfg(test)]
impl SqliteRelayStore {
    /// Runs `f` while holding the writer (as a long upload would).
    pub(super) fn holding_writer<T>(&self, f: impl FnOnce() -> T) -> Result<T, RelayStoreError> {
        let _w = lock(&self.inner.writer);
        Ok(f())
    }
}

//! [`SqliteRelayStore`]: the relay's store in one SQLite file (WAL, `synchronous=FULL`).
//!
//! Writes (`append_changes`, device changes) go through one writer connection behind a mutex;
//! SQLite's single writer assigns the log's sequence numbers inside the transaction that stores
//! the entries, so a reader can never skip an entry that commits later with a lower number.
//! Reads (`read_log`, `read_snapshots`, `missing`, `authenticate`) use a small pool of
//! read-only connections and run concurrently with a write (WAL). The upload rules are
//! `batch::append_batch`, over this file's `BatchDb` for a rusqlite transaction.

use super::*;

pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) cache: DocCache,
}

pub(super) struct Inner {
    pub(super) path: PathBuf,
    pub(super) epoch: Uuid,
    pub(super) opts: RelayStoreOptions,
    pub(super) writer: Mutex<Writer>,
    pub(super) readers: Mutex<Vec<Connection>>,
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

/// Prepared statements kept per connection (see [`open_conn`]).
pub(super) const STATEMENT_CACHE: usize = 64;

pub(super) fn open_conn(path: &Path, flags: OpenFlags) -> Result<Connection, RelayStoreError> {
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

pub(super) fn bump_devices(tx: &Transaction<'_>) -> Result<(), RelayStoreError> {
    tx.execute(
        "UPDATE meta SET value = value + 1 WHERE key = ?1",
        [DEVICES_GENERATION],
    )?;
    Ok(())
}

pub(super) fn devices_generation(c: &Connection) -> Result<u64, RelayStoreError> {
    let v: Option<i64> = c
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [DEVICES_GENERATION],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

pub(super) fn device_row(
    conn: &Connection,
    id: Uuid,
) -> Result<Option<DeviceRow>, rusqlite::Error> {
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
pub(super) fn usage_on(c: &Connection, device: Uuid, day: i64) -> Result<Usage, RelayStoreError> {
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
    pub(super) fn read<T>(
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

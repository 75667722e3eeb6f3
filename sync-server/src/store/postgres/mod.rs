//! The relay's PostgreSQL store: the same log, documents, devices and audit trail as
//! [`super::SqliteRelayStore`], in a PostgreSQL database that several relay nodes share
//! (`docs/DESIGN.md` §7: IT scales out by adding nodes behind one address).
//!
//! The rules (change validation, scope moves, the document cache) are the SQLite store's, run
//! through the `BatchDb` seam; only the SQL differs.
//!
//! # Sequence numbers
//!
//! The log's sequence numbers come from one counter row (`counters.name = 'log.high'`). Every
//! upload transaction first takes that row's lock (`SELECT … FOR UPDATE`) and holds it until it
//! commits, and numbers its entries by incrementing the counter. So transactions that append
//! run one after another, across all nodes, and **commit order equals sequence order**: when a
//! reader sees entry `n` committed, every entry below `n` was committed before it. A reader
//! following the log by cursor (`seq > cursor`) therefore never skips an entry.
//!
//! A plain `SEQUENCE` (or `BIGSERIAL`) would not give that: `nextval` is not transactional,
//! so transaction A can draw 5, transaction B draw 6 and commit first; a reader then sees 6,
//! moves its cursor to 6, and never reads 5 when A commits a moment later. Serialising the
//! appends also gives the validation rules what SQLite's single writer gives them: the
//! documents, moves and device grants they read cannot change before the commit.
//!
//! # Several nodes
//!
//! Each node holds its own document cache; a cached document is used only if its
//! `updated_seq` still matches the database, so a write by another node makes it a miss. A
//! node learns of entries and device changes committed by other nodes through
//! `LISTEN`/`NOTIFY` (channels `fieldsync_log` and `fieldsync_devices`, sent inside the
//! committing transaction) and, should a notification be lost with a dropped connection, by
//! polling the counters every second ([`PgRelayStore::poll_log`],
//! [`PgRelayStore::poll_devices`]).
//!
//! # Connections
//!
//! A node opens at most `database_max_connections` connections (IT shares one PostgreSQL
//! server between nodes and other applications): the writer, the `LISTEN` connection, and a
//! bounded pool of read connections (`pool`) in which authentication and the node's own
//! bookkeeping have connections reserved, so no amount of download traffic keeps a device
//! from logging in. A request that finds no connection free waits a few seconds and is then
//! refused as busy, and the client retries. Every read connection has a `statement_timeout`,
//! and a handle made for one client connection ([`PgRelayStore::cancelled_by`]) stops its
//! long reads between pages once that client has left.

use fieldsync_core::ids::ALL_SCOPES;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use fieldsync_core::protocol::Lane as DownloadLane;
use fieldsync_core::protocol::messages::Hash;
use fieldsync_core::protocol::{DeviceInfo, Lack, LogEntry, Outcome, UploadChange};
use fieldsync_core::{DocId, Role};
use postgres::fallible_iterator::FallibleIterator as _;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row};
use tokio::sync::watch;
use uuid::Uuid;

mod batch_db;
mod blobs;
mod conn;
mod devices;
mod listen;
mod meta;
mod nodes;
mod outbox;
mod schema;
mod scratch;

use batch_db::PgTx;
use conn::{PgConn, PgTxn, Run};
use listen::{listen_loop, listener};
pub use schema::PG_SCHEMA_VERSION;
use schema::migrate;
pub use scratch::ScratchDatabase;

use super::pool::{Pool, PoolStats, Share};
use super::write_queue::{Upload, WriteQueue, WriteStats, write_group};
use super::{
    AuditQuery, AuditRecord, BatchDb, Cancel, DeviceBackend, DeviceDb, DeviceRecord, DeviceRow,
    DocCache, DocMeta, DocRow, ENTRY_OVERHEAD, Enrolment, EnrolmentRecord, EventRow, Holder,
    KIND_CHANGES, KIND_REPLACE, KIND_SNAPSHOT, MIN_DB_CONNECTIONS, NewDevice, RelayStatus,
    RelayStoreError, RelayStoreOptions, Replacement, Revoked, SnapshotPage, TokenRow, Usage,
    doc_id, lack_of, lock, log_entry, pg_detail, publish, replace,
};

/// Counter of the log's sequence numbers.
const LOG_HIGH: &str = "log.high";
/// The `meta` row holding the SHA-256 (32 bytes) of the certificate every node serves,
/// recorded by the first node to start: enrolment tokens carry it as their pin.
const CERT_FINGERPRINT: &str = "cert.fingerprint";
/// Counter bumped by every change to devices and enrolments.
const DEVICES_GENERATION: &str = "devices.generation";
/// Notification channels.
const LOG_CHANNEL: &str = "fieldsync_log";
const DEVICES_CHANNEL: &str = "fieldsync_devices";
/// Connections of a node outside its read pool: the writer and the `LISTEN` connection.
const DEDICATED_CONNECTIONS: usize = 2;
/// Ids or hashes sent in one `= ANY($1)` look-up of a heads exchange.
const LOOKUP_CHUNK: usize = 1_000;
/// Rows fetched per query when reading the log or snapshots (bounded memory per page).
const PAGE_ROWS: i64 = 256;
/// How long the listener waits for a notification before checking whether the store is gone.
const LISTEN_TICK: Duration = Duration::from_secs(1);

/// A database URL without its password, for logs and `status`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_string(),
    }
}

/// How the relay's connections to PostgreSQL are secured.
#[derive(Clone)]
enum PgTls {
    /// No TLS (`sslmode` disable).
    Plain,
    /// TLS only, the server's certificate and host name verified against the given CA.
    Verified(tokio_postgres_rustls::MakeRustlsConnect),
}

impl PgTls {
    /// TLS with the CA certificates of the PEM file `ca`, or none; `config`'s `sslmode`
    /// is set to match (require, or disable). Refuses a URL that requires TLS without a CA.
    fn configure(
        config: &mut postgres::Config,
        ca: Option<&Path>,
    ) -> Result<Self, RelayStoreError> {
        use postgres::config::SslMode;
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let Some(ca) = ca else {
            if config.get_ssl_mode() == SslMode::Require {
                return Err(RelayStoreError::Invalid(
                    "the database URL requires TLS (sslmode=require): set database_ca to the \
                     certificate of the authority that signed the server's certificate"
                        .into(),
                ));
            }
            config.ssl_mode(SslMode::Disable);
            return Ok(Self::Plain);
        };
        let bad =
            |e: String| RelayStoreError::Invalid(format!("database_ca {}: {e}", ca.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.ssl_mode(SslMode::Require);
        Ok(Self::Verified(
            tokio_postgres_rustls::MakeRustlsConnect::new(tls),
        ))
    }
}

/// The state shared by every handle of one store.
struct Inner {
    config: postgres::Config,
    tls: PgTls,
    location: String,
    epoch: Uuid,
    opts: RelayStoreOptions,
    writer: Mutex<Option<Writer>>,
    appends: WriteQueue,
    readers: Pool<PgConn>,
    touched: Mutex<HashMap<Uuid, Instant>>,
    notify: watch::Sender<u64>,
    devices_notify: watch::Sender<u64>,
}

struct Writer {
    client: PgConn,
    cache: DocCache,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A synchronous client owns a small runtime, which must not be dropped on an async
        // worker thread (the last handle may go there); drop the connections on a thread.
        let writer = self.writer.get_mut().map(Option::take).unwrap_or_default();
        let readers = self.readers.drain_idle();
        if writer.is_some() || !readers.is_empty() {
            let _ = std::thread::Builder::new()
                .name("fieldsync-pg-close".into())
                .spawn(move || drop((writer, readers)));
        }
    }
}

/// The relay's PostgreSQL store. Cloning gives another handle to the same store. Its methods
/// block: call them from a blocking thread (`spawn_blocking`), as the server does.
#[derive(Clone)]
pub struct PgRelayStore {
    inner: Arc<Inner>,
    /// Raised when the client this handle works for has left.
    cancel: Cancel,
}

impl std::fmt::Debug for PgRelayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgRelayStore")
            .field("database", &self.inner.location)
            .field("epoch", &self.inner.epoch)
            .finish()
    }
}

fn connect(
    config: &postgres::Config,
    tls: &PgTls,
    location: &str,
) -> Result<Client, RelayStoreError> {
    match tls {
        PgTls::Plain => config.connect(NoTls),
        PgTls::Verified(make) => config.connect(make.clone()),
    }
    .map_err(|e| RelayStoreError::Connect(location.to_string(), pg_detail(&e)))
}

/// A connection for the read pool: reads whose statements run longer than
/// `statement_timeout` are cancelled by the server.
fn connect_reader(
    config: &postgres::Config,
    tls: &PgTls,
    location: &str,
    statement_timeout: Duration,
) -> Result<PgConn, RelayStoreError> {
    let mut client = connect(config, tls, location)?;
    let ms = statement_timeout.as_millis().clamp(1, i32::MAX as u128);
    client.batch_execute(&format!("SET statement_timeout = {ms}"))?;
    Ok(PgConn::new(client))
}

fn counter(c: &mut impl Run, name: &str) -> Result<u64, RelayStoreError> {
    let v: Option<i64> = c
        .query_opt("SELECT value FROM counters WHERE name = $1", &[&name])?
        .map(|r| r.try_get(0))
        .transpose()?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

fn uuid_of(b: &[u8], what: &str) -> Result<Uuid, RelayStoreError> {
    Uuid::from_slice(b).map_err(|_| RelayStoreError::Corrupt(format!("bad device id in {what}")))
}

impl PgRelayStore {
    /// Connects to the database at `url` (`postgres://user@host/db`) without TLS, creates
    /// or migrates the schema and starts listening for other nodes' notifications. Blocks.
    pub fn open(url: &str, opts: RelayStoreOptions) -> Result<Self, RelayStoreError> {
        Self::open_with_ca(url, None, opts)
    }

    /// [`PgRelayStore::open`], over TLS verified against the CA certificates in the PEM file
    /// `ca` when given (see `RelayConfig::database_ca`).
    pub fn open_with_ca(
        url: &str,
        ca: Option<&Path>,
        opts: RelayStoreOptions,
    ) -> Result<Self, RelayStoreError> {
        if opts.db_max_connections < MIN_DB_CONNECTIONS {
            return Err(RelayStoreError::Invalid(format!(
                "database_max_connections is {}; a node needs at least {MIN_DB_CONNECTIONS} \
                 (the writer, the listener, one for reads and one for authentication)",
                opts.db_max_connections
            )));
        }
        let location = redact_url(url);
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| RelayStoreError::Connect(location.clone(), pg_detail(&e)))?;
        let tls = PgTls::configure(&mut config, ca)?;
        let mut raw = connect(&config, &tls, &location)?;
        migrate(&mut raw)?;
        let mut client = PgConn::new(raw);
        let epoch_bytes: Vec<u8> = client
            .query_one("SELECT value FROM meta WHERE key = 'epoch'", &[])?
            .try_get(0)?;
        let epoch = Uuid::from_slice(&epoch_bytes)
            .map_err(|_| RelayStoreError::Corrupt("bad epoch in meta".into()))?;
        let (notify, _) = watch::channel(counter(&mut client, LOG_HIGH)?);
        let (devices_notify, _) = watch::channel(counter(&mut client, DEVICES_GENERATION)?);
        // The pool keeps a quarter of its connections (at least one) for the priority share.
        let capacity = opts.db_max_connections - DEDICATED_CONNECTIONS;
        let readers = {
            let (config, tls, location) = (config.clone(), tls.clone(), location.clone());
            let timeout = opts.db_statement_timeout;
            Pool::new(capacity, (capacity / 4).max(1), opts.db_wait, move || {
                connect_reader(&config, &tls, &location, timeout)
            })
        };
        let store = Self {
            inner: Arc::new(Inner {
                config,
                tls,
                location,
                epoch,
                writer: Mutex::new(Some(Writer {
                    client,
                    cache: DocCache::new(opts.cache_docs),
                })),
                appends: WriteQueue::default(),
                opts,
                readers,
                touched: Mutex::new(HashMap::new()),
                notify,
                devices_notify,
            }),
            cancel: Cancel::default(),
        };
        store.listen()?;
        Ok(store)
    }

    /// Starts a thread that listens for other nodes' notifications until the store is gone.
    fn listen(&self) -> Result<(), RelayStoreError> {
        let client = listener(&self.inner)?;
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("fieldsync-pg-listen".into())
            .spawn(move || listen_loop(client, weak))
            .map_err(|e| RelayStoreError::Invalid(format!("cannot start the listener: {e}")))?;
        Ok(())
    }

    /// Another handle to this store whose long reads stop (with
    /// [`RelayStoreError::Cancelled`]) at their next page or chunk once `cancel` is raised:
    /// the server makes one per client connection and raises it when the client leaves.
    pub fn cancelled_by(&self, cancel: Cancel) -> Self {
        Self {
            inner: self.inner.clone(),
            cancel,
        }
    }

    /// The read pool's numbers now (for metrics).
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.readers.stats()
    }

    /// The database, without its password.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// The relay's epoch (created with the database).
    pub fn epoch(&self) -> Uuid {
        self.inner.epoch
    }

    /// Receives the highest sequence number whenever the log grew (on any node).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.notify.subscribe()
    }

    /// Receives a new value whenever devices or enrolments changed (on any node).
    pub fn subscribe_devices(&self) -> watch::Receiver<u64> {
        self.inner.devices_notify.subscribe()
    }

    /// Reads the device-change counter and notifies receivers if it moved.
    pub fn poll_devices(&self) -> Result<u64, RelayStoreError> {
        let g = self.read_priority(|c| counter(c, DEVICES_GENERATION))?;
        publish(&self.inner.devices_notify, g);
        Ok(g)
    }

    /// Reads the log counter and notifies receivers if other nodes appended.
    pub fn poll_log(&self) -> Result<u64, RelayStoreError> {
        let h = self.high_seq()?;
        self.raise_high(h);
        Ok(h)
    }

    fn raise_high(&self, h: u64) {
        super::publish_high(&self.inner.notify, h);
    }

    /// The fingerprint of the certificate the relay nodes on this database serve, recorded
    /// by the first node that started ([`PgRelayStore::claim_fingerprint`]); `None` until one
    /// did.
    pub fn node_fingerprint(&self) -> Result<Option<String>, RelayStoreError> {
        self.read(|c| {
            let row = c.query_opt(
                "SELECT value FROM meta WHERE key = $1",
                &[&CERT_FINGERPRINT],
            )?;
            let Some(row) = row else { return Ok(None) };
            let bytes: Vec<u8> = row.try_get(0)?;
            if bytes.len() != 32 {
                return Err(RelayStoreError::Corrupt(format!(
                    "meta {CERT_FINGERPRINT} holds {} bytes, not a SHA-256",
                    bytes.len()
                )));
            }
            Ok(Some(hex::encode(bytes)))
        })
    }

    /// Records `fingerprint` (this node's certificate) as the one the relay nodes on this
    /// database serve, if no node recorded one yet; refuses with
    /// [`RelayStoreError::CertificateMismatch`] if another one is recorded: devices pin one
    /// certificate, whichever node they reach.
    pub fn claim_fingerprint(&self, fingerprint: &str) -> Result<(), RelayStoreError> {
        let pin = crate::tls::parse_fingerprint(fingerprint)
            .map_err(|e| RelayStoreError::Invalid(e.to_string()))?;
        self.read(|c| {
            // The first of nodes starting together wins; the others read its row.
            let added = c.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&CERT_FINGERPRINT, &pin.as_slice()],
            )?;
            if added > 0 {
                tracing::info!(
                    fingerprint,
                    "recorded the relay nodes' certificate in the database"
                );
            }
            Ok(())
        })?;
        match self.node_fingerprint()? {
            Some(recorded) if recorded == hex::encode(pin) => Ok(()),
            Some(recorded) => Err(RelayStoreError::CertificateMismatch {
                serving: hex::encode(pin),
                recorded,
            }),
            None => Err(RelayStoreError::Corrupt(format!(
                "meta {CERT_FINGERPRINT} vanished after it was written"
            ))),
        }
    }

    /// Documents currently loaded in this node's write cache.
    pub fn cached_docs(&self) -> usize {
        lock(&self.inner.writer)
            .as_ref()
            .map_or(0, |w| w.cache.len())
    }

    /// Runs `f` on a connection of the read pool's bulk share (waiting for one, or refused
    /// as busy: see the module docs).
    fn read<T>(
        &self,
        f: impl FnOnce(&mut PgConn) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        self.read_in(Share::Bulk, f)
    }

    /// Runs `f`, a short query that admits a device or follows the database, on a connection
    /// of the read pool's priority share, which bulk reads cannot exhaust.
    fn read_priority<T>(
        &self,
        f: impl FnOnce(&mut PgConn) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        self.read_in(Share::Priority, f)
    }

    fn read_in<T>(
        &self,
        share: Share,
        f: impl FnOnce(&mut PgConn) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        self.cancel.check()?;
        let mut lent = self.inner.readers.get(share)?;
        f(lent.conn()?)
    }

    /// Runs `f` with the writer connection and this node's cache.
    fn with_writer<T>(
        &self,
        f: impl FnOnce(&mut PgConn, &mut DocCache) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        let mut guard = lock(&self.inner.writer);
        let w = self.writer_in(&mut guard)?;
        f(&mut w.client, &mut w.cache)
    }

    /// The writer in its slot, connected again if its connection broke.
    fn writer_in<'w>(
        &self,
        slot: &'w mut Option<Writer>,
    ) -> Result<&'w mut Writer, RelayStoreError> {
        if slot.as_ref().is_none_or(|w| w.client.is_closed()) {
            *slot = Some(Writer {
                client: PgConn::new(connect(
                    &self.inner.config,
                    &self.inner.tls,
                    &self.inner.location,
                )?),
                cache: DocCache::new(self.inner.opts.cache_docs),
            });
        }
        slot.as_mut()
            .ok_or_else(|| RelayStoreError::Invalid("no writer connection".into()))
    }

    /// What the writer did with uploads so far (for metrics).
    pub fn write_stats(&self) -> WriteStats {
        self.inner.appends.stats()
    }

    /// Validates and durably stores uploaded changes (see
    /// [`super::SqliteRelayStore::append_changes`]): in one transaction with the uploads
    /// queued meanwhile on this node (`store::write_queue`), serialised with every other
    /// node's appends by the log counter's row lock.
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
                let Writer { client, cache } = self.writer_in(w)?;
                let written = (|| {
                    let db = PgTx::appending(client)?;
                    let written = write_group(&db, cache, &rules, group)?;
                    let mut tx = db.tx.into_inner();
                    if let Some(h) = written.high {
                        tx.execute("SELECT pg_notify($1, $2)", &[&LOG_CHANNEL, &h.to_string()])?;
                    }
                    tx.commit()?;
                    Ok::<_, RelayStoreError>(written)
                })()
                // Rolled back: what the group cached may not be in the database.
                .inspect_err(|_| cache.clear())?;
                if let Some(h) = written.high {
                    self.raise_high(h.max(0) as u64);
                }
                Ok(written.outcomes)
            })
    }

    /// Replaces document `id`'s history (see [`super::SqliteRelayStore::replace_history`]),
    /// serialised with every node's appends by the log counter's row lock and announced to
    /// every node.
    pub fn replace_history(
        &self,
        id: DocId,
        rewrite: impl FnOnce(&[u8]) -> Result<Option<automerge::AutoCommit>, RelayStoreError>,
    ) -> Result<Option<Replacement>, RelayStoreError> {
        let done = self.with_writer(|client, _| {
            let db = PgTx::appending(client)?;
            let done =
                replace::replace_history(&db, id, self.inner.opts.env.now_millis(), rewrite)?;
            let mut tx = db.tx.into_inner();
            if let Some(r) = &done {
                tx.execute(
                    "SELECT pg_notify($1, $2)",
                    &[&LOG_CHANNEL, &r.seq.to_string()],
                )?;
            }
            tx.commit()?;
            Ok(done)
        })?;
        if let Some(r) = &done {
            self.raise_high(r.seq);
        }
        Ok(done)
    }

    /// The highest sequence number committed so far.
    pub fn high_seq(&self) -> Result<u64, RelayStoreError> {
        self.read_priority(|c| counter(c, LOG_HIGH))
    }

    /// Log entries of `scope` after `after` (see [`super::SqliteRelayStore::read_log`]).
    pub fn read_log(
        &self,
        scope: &str,
        after: u64,
        max_bytes: usize,
        lane: DownloadLane<'_>,
    ) -> Result<(Vec<LogEntry>, bool), RelayStoreError> {
        let lane = lane_params(lane);
        self.read(|c| {
            self.log_pages(
                c,
                after,
                max_bytes,
                |c, cursor| {
                    Ok(if let Some((customers, first, upto)) = &lane {
                        // One lane of a download (see `fieldsync_core::protocol::download`): an
                        // entry is the first lane's if it is at or before `upto` and of a document
                        // of the named customers.
                        let which = if scope == ALL_SCOPES {
                            "kind IN (0, 3) AND $3::TEXT IS NOT NULL"
                        } else {
                            "scope = $3"
                        };
                        c.query(
                            &format!(
                                "SELECT seq, doc_id, kind, octet_length(bytes)::BIGINT, bytes, hash,
                                   CASE WHEN kind = 2 THEN COALESCE(
                                     (SELECT d.scope FROM docs d WHERE d.doc_id = log.doc_id),
                                     moved_to)
                                   ELSE moved_to END
                                 FROM log
                                 WHERE {which} AND seq > $1 AND (NOT $5 OR seq <= $6)
                                   AND (seq <= $6 AND (doc_id = ANY($4) OR COALESCE(
                                     (SELECT d.customer_id FROM docs d WHERE d.doc_id = log.doc_id)
                                       = ANY($4), FALSE))) = $5
                                 ORDER BY seq LIMIT $2"
                            ),
                            &[&cursor, &PAGE_ROWS, &scope, customers, first, upto],
                        )?
                    } else if scope == ALL_SCOPES {
                        c.query(
                            "SELECT seq, doc_id, kind, octet_length(bytes)::BIGINT, bytes, hash,
                               moved_to FROM log WHERE seq > $1 AND kind IN (0, 3)
                             ORDER BY seq LIMIT $2",
                            &[&cursor, &PAGE_ROWS],
                        )?
                    } else {
                        c.query(
                            "SELECT seq, doc_id, kind, octet_length(bytes)::BIGINT, bytes, hash,
                               CASE WHEN kind = 2 THEN COALESCE(
                                 (SELECT d.scope FROM docs d WHERE d.doc_id = log.doc_id), moved_to)
                               ELSE moved_to END
                             FROM log WHERE scope = $3 AND seq > $1 ORDER BY seq LIMIT $2",
                            &[&cursor, &PAGE_ROWS, &scope],
                        )?
                    })
                },
                |_, entry| Ok(entry),
            )
        })
    }

    /// Log entries of every scope after `after` with the scope each is filed under (see
    /// [`super::SqliteRelayStore::read_log_all`]). On the priority share: it is one read that
    /// follows the database for every live connection of this node.
    pub fn read_log_all(
        &self,
        after: u64,
        max_bytes: usize,
    ) -> Result<(Vec<(String, LogEntry)>, bool), RelayStoreError> {
        self.read_priority(|c| {
            self.log_pages(
                c,
                after,
                max_bytes,
                |c, cursor| {
                    Ok(c.query(
                        "SELECT seq, doc_id, kind, octet_length(bytes)::BIGINT, bytes, hash, moved_to,
                           scope FROM log WHERE seq > $1 ORDER BY seq LIMIT $2",
                        &[&cursor, &PAGE_ROWS],
                    )?)
                },
                |r, entry| Ok((r.try_get(7)?, entry)),
            )
        })
    }

    /// Pages through the log after `after`, `PAGE_ROWS` rows at a time from `page` (columns:
    /// seq, doc_id, kind, size, bytes, hash, moved_to, then any of the caller's), up to
    /// `max_bytes` (at least one entry); each entry is passed with its row to `with`. Returns
    /// whether more follow.
    fn log_pages<T>(
        &self,
        c: &mut PgConn,
        after: u64,
        max_bytes: usize,
        mut page: impl FnMut(&mut PgConn, i64) -> Result<Vec<Row>, RelayStoreError>,
        with: impl Fn(&Row, LogEntry) -> Result<T, RelayStoreError>,
    ) -> Result<(Vec<T>, bool), RelayStoreError> {
        let mut cursor = i64::try_from(after).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        let mut used = 0usize;
        loop {
            self.cancel.check()?;
            let rows = page(c, cursor)?;
            let full = rows.len() as i64 == PAGE_ROWS;
            for r in rows {
                let size =
                    r.try_get::<_, Option<i64>>(3)?.unwrap_or(0).max(0) as usize + ENTRY_OVERHEAD;
                if !out.is_empty() && used + size > max_bytes {
                    return Ok((out, true));
                }
                used += size;
                let seq: i64 = r.try_get(0)?;
                cursor = seq;
                let hash: Option<Vec<u8>> = r.try_get(5)?;
                let entry = log_entry(
                    seq,
                    doc_id(&r.try_get::<_, Vec<u8>>(1)?)?,
                    r.try_get(2)?,
                    r.try_get(4)?,
                    hash.as_deref(),
                    r.try_get(6)?,
                )?;
                out.push(with(&r, entry)?);
            }
            if !full {
                return Ok((out, false));
            }
        }
    }

    /// Snapshots of the documents in `scope` after `after` (see
    /// [`super::SqliteRelayStore::read_snapshots`]).
    pub fn read_snapshots(
        &self,
        scope: &str,
        after: Option<DocId>,
        max_bytes: usize,
        lane: DownloadLane<'_>,
    ) -> Result<SnapshotPage, RelayStoreError> {
        let mut cursor: Vec<u8> = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
        let lane = lane_params(lane);
        self.read(|c| {
            let mut out = Vec::new();
            let mut used = 0usize;
            loop {
                self.cancel.check()?;
                let rows = if let Some((customers, first, _)) = &lane {
                    let which = if scope == ALL_SCOPES {
                        "$3::TEXT IS NOT NULL"
                    } else {
                        "scope = $3"
                    };
                    c.query(
                        &format!(
                            "SELECT doc_id, octet_length(snapshot)::BIGINT, snapshot FROM docs
                              WHERE {which} AND doc_id > $1
                                AND (doc_id = ANY($4) OR COALESCE(customer_id = ANY($4), FALSE)) = $5
                              ORDER BY doc_id LIMIT $2"
                        ),
                        &[&cursor, &PAGE_ROWS, &scope, customers, first],
                    )?
                } else if scope == ALL_SCOPES {
                    c.query(
                        "SELECT doc_id, octet_length(snapshot)::BIGINT, snapshot FROM docs
                          WHERE doc_id > $1 ORDER BY doc_id LIMIT $2",
                        &[&cursor, &PAGE_ROWS],
                    )?
                } else {
                    c.query(
                        "SELECT doc_id, octet_length(snapshot)::BIGINT, snapshot FROM docs
                          WHERE scope = $3 AND doc_id > $1 ORDER BY doc_id LIMIT $2",
                        &[&cursor, &PAGE_ROWS, &scope],
                    )?
                };
                let full = rows.len() as i64 == PAGE_ROWS;
                for r in rows {
                    let size = r.try_get::<_, i64>(1)?.max(0) as usize + ENTRY_OVERHEAD;
                    if !out.is_empty() && used + size > max_bytes {
                        return Ok((out, true));
                    }
                    used += size;
                    let id: Vec<u8> = r.try_get(0)?;
                    out.push((doc_id(&id)?, r.try_get(2)?));
                    cursor = id;
                }
                if !full {
                    return Ok((out, false));
                }
            }
        })
    }

    /// About how much a download of `scope` has left (see
    /// [`super::SqliteRelayStore::waiting`]).
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
                let row = c.query_one(
                    if all {
                        "SELECT count(*)::BIGINT, COALESCE(sum(octet_length(snapshot)), 0)::BIGINT
                           FROM docs WHERE doc_id > $1 AND $2::TEXT IS NOT NULL"
                    } else {
                        "SELECT count(*)::BIGINT, COALESCE(sum(octet_length(snapshot)), 0)::BIGINT
                           FROM docs WHERE scope = $2 AND doc_id > $1"
                    },
                    &[&after, &scope],
                )?;
                documents += row.try_get::<_, i64>(0)?;
                bytes += row.try_get::<_, i64>(1)?;
            }
            let row = c.query_one(
                if all {
                    "SELECT count(DISTINCT doc_id)::BIGINT, COALESCE(sum(octet_length(bytes)), 0)::BIGINT
                       FROM log WHERE seq > $1 AND kind IN (0, 3) AND $2::TEXT IS NOT NULL"
                } else {
                    "SELECT count(DISTINCT doc_id)::BIGINT, COALESCE(sum(octet_length(bytes)), 0)::BIGINT
                       FROM log WHERE scope = $2 AND seq > $1"
                },
                &[&log_after, &scope],
            )?;
            documents += row.try_get::<_, i64>(0)?;
            bytes += row.try_get::<_, i64>(1)?;
            let n = |v: i64| u64::try_from(v).unwrap_or(0);
            Ok((n(documents), n(bytes)))
        })
    }

    /// Documents that left `scope` at or before `upto`, with where each is filed now.
    pub fn departures(
        &self,
        scope: &str,
        upto: u64,
    ) -> Result<Vec<(DocId, String)>, RelayStoreError> {
        let upto = i64::try_from(upto).unwrap_or(i64::MAX);
        self.read(|c| {
            c.query(
                "SELECT DISTINCT m.doc_id, d.scope FROM moves m JOIN docs d ON d.doc_id = m.doc_id
                  WHERE m.from_scope = $1 AND m.seq <= $2 AND d.scope <> $1 ORDER BY m.doc_id",
                &[&scope, &upto],
            )?
            .iter()
            .map(|r| {
                let id: Vec<u8> = r.try_get(0)?;
                Ok((doc_id(&id)?, r.try_get(1)?))
            })
            .collect()
        })
    }

    /// The stored heads of each of `ids` the relay holds (see
    /// [`super::SqliteRelayStore::heads_of`]), `LOOKUP_CHUNK` at a time.
    pub fn heads_of(&self, ids: &[DocId]) -> Result<Vec<(DocId, Vec<Hash>)>, RelayStoreError> {
        self.read(|c| {
            let mut out = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(LOOKUP_CHUNK) {
                self.cancel.check()?;
                let keys: Vec<&[u8]> = chunk.iter().map(|id| id.as_bytes().as_slice()).collect();
                for r in c.query(
                    "SELECT doc_id, heads FROM docs WHERE doc_id = ANY($1)",
                    &[&keys],
                )? {
                    let id = doc_id(&r.try_get::<_, Vec<u8>>(0)?)?;
                    out.push((id, super::split_heads(&r.try_get::<_, Vec<u8>>(1)?)));
                }
            }
            Ok(out)
        })
    }

    /// For each document and a client's heads, what the relay lacks of it (by the rule of
    /// `lack_of`, which the SQLite store applies too). The documents, then the stored changes
    /// among the client's heads, are looked up `LOOKUP_CHUNK` at a time with `= ANY($1)`, not
    /// one query each, in one snapshot; the work stops between chunks once the client has
    /// left.
    pub fn missing(&self, docs: &[(DocId, Vec<Hash>)]) -> Result<Vec<Lack>, RelayStoreError> {
        self.read(|c| {
            // One snapshot for the whole answer, as SQLite's read transaction gives.
            let mut tx = c.snapshot()?;
            let mut out = Vec::with_capacity(docs.len());
            for chunk in docs.chunks(LOOKUP_CHUNK) {
                self.cancel.check()?;
                let ids: Vec<&[u8]> = chunk
                    .iter()
                    .map(|(id, _)| id.as_bytes().as_slice())
                    .collect();
                let mut held: HashMap<DocId, (Vec<u8>, String)> = HashMap::new();
                for r in tx.query(
                    "SELECT doc_id, heads, scope FROM docs WHERE doc_id = ANY($1)",
                    &[&ids],
                )? {
                    let id: Vec<u8> = r.try_get(0)?;
                    held.insert(doc_id(&id)?, (r.try_get(1)?, r.try_get(2)?));
                }
                // The heads of held documents the relay stores, as (hash, document) pairs.
                let asked: Vec<&[u8]> = chunk
                    .iter()
                    .filter(|(id, _)| held.contains_key(id))
                    .flat_map(|(_, heads)| heads.iter().map(|h| h.as_slice()))
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect();
                let mut stored: HashSet<(Hash, DocId)> = HashSet::new();
                for hashes in asked.chunks(LOOKUP_CHUNK) {
                    self.cancel.check()?;
                    for r in tx.query(
                        "SELECT hash, doc_id FROM changes WHERE hash = ANY($1)",
                        &[&hashes],
                    )? {
                        let hash: Vec<u8> = r.try_get(0)?;
                        let id: Vec<u8> = r.try_get(1)?;
                        if let Ok(hash) = Hash::try_from(hash.as_slice()) {
                            stored.insert((hash, doc_id(&id)?));
                        }
                    }
                }
                for (id, client_heads) in chunk {
                    out.push(lack_of(held.get(id).cloned(), client_heads, |h| {
                        Ok::<_, RelayStoreError>(stored.contains(&(*h, *id)))
                    })?);
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// Records that a device is being sent the departure of `docs` (see
    /// [`super::SqliteRelayStore::record_departures`]).
    pub fn record_departures(
        &self,
        device_id: Uuid,
        docs: &[DocId],
    ) -> Result<(), RelayStoreError> {
        self.read(|c| {
            for d in docs {
                c.execute(
                    "INSERT INTO departures_served (device, doc_id) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                    &[&device_id.as_bytes().as_slice(), &d.as_bytes().as_slice()],
                )?;
            }
            Ok(())
        })
    }

    /// The audit trail the query selects (see [`super::SqliteRelayStore::audit`]).
    pub fn audit(&self, q: &AuditQuery<'_>) -> Result<Vec<AuditRecord>, RelayStoreError> {
        let device_id = q
            .device
            .and_then(|d| Uuid::parse_str(d.trim()).ok())
            .map(|d| d.as_bytes().to_vec());
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let doc_b = q.doc.map(|d| d.as_bytes().to_vec());
        let name = q.device.map(str::trim);
        let filter_device = q.device.is_some();
        self.read(|c| {
            let rows = c.query(
                "SELECT a.seq, a.at, a.device, d.name, a.doc_id, l.hash, l.scope, dd.kind,
                        dd.customer_id
                   FROM audit a
                   LEFT JOIN devices d ON d.device_id = a.device
                   LEFT JOIN log l ON l.seq = a.seq
                   LEFT JOIN docs dd ON dd.doc_id = a.doc_id
                  WHERE ($1::BYTEA IS NULL OR a.doc_id = $1)
                    AND (NOT $2 OR a.device = $3::BYTEA OR d.name = $4::TEXT)
                    AND ($6::BIGINT IS NULL OR a.at >= $6)
                  ORDER BY a.seq DESC LIMIT $5",
                &[&doc_b, &filter_device, &device_id, &name, &limit, &q.since],
            )?;
            let mut out = Vec::new();
            for r in rows {
                let dev: Vec<u8> = r.try_get(2)?;
                let doc: Vec<u8> = r.try_get(4)?;
                let kind: Option<i64> = r.try_get(7)?;
                let customer: Option<Vec<u8>> = r.try_get(8)?;
                out.push(super::audit_record(
                    r.try_get(0)?,
                    r.try_get(1)?,
                    uuid_of(&dev, "audit")?,
                    r.try_get(3)?,
                    doc_id(&doc)?,
                    r.try_get(5)?,
                    r.try_get(6)?,
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
        let id = id.as_bytes().to_vec();
        self.read(|c| {
            Ok(
                c.query_opt("SELECT snapshot FROM docs WHERE doc_id = $1", &[&id])?
                    .map(|r| r.try_get(0))
                    .transpose()?,
            )
        })
    }

    /// Counters for `status`.
    pub fn status(&self) -> Result<RelayStatus, RelayStoreError> {
        let epoch = self.inner.epoch;
        self.read(|c| {
            let mut count = |sql: &str| -> Result<u64, RelayStoreError> {
                let v: i64 = c.query_one(sql, &[])?.try_get(0)?;
                Ok(v.max(0) as u64)
            };
            Ok(RelayStatus {
                epoch,
                high_seq: count("SELECT value FROM counters WHERE name = 'log.high'")?,
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

#[cfg(test)]
impl PgRelayStore {
    /// Runs `f` on a connection of the read pool's bulk share (tests hold connections, or run
    /// slow statements, with it).
    pub(super) fn bulk_read<T>(
        &self,
        f: impl FnOnce(&mut PgConn) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        self.read(f)
    }

    /// Runs `f` while holding the writer connection (as a long upload would).
    pub(super) fn holding_writer<T>(&self, f: impl FnOnce() -> T) -> Result<T, RelayStoreError> {
        self.with_writer(|_, _| Ok(f()))
    }
}

/// A download lane as query parameters: the customers, whether it is the first lane (else
/// the rest), and the lane's last log position; `None` for every document.
fn lane_params(lane: DownloadLane<'_>) -> Option<(Vec<Vec<u8>>, bool, i64)> {
    let (first, upto) = match lane {
        DownloadLane::All => return None,
        DownloadLane::First { upto, .. } => (true, upto),
        DownloadLane::Rest { upto, .. } => (false, upto),
    };
    let ids = lane
        .customers()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    Some((ids, first, i64::try_from(upto).unwrap_or(i64::MAX)))
}

//! The relay's PostgreSQL store: the same log, documents, devices and audit trail as
//! [`super::SqliteRelayStore`], in a PostgreSQL database that several relay nodes share
//! (DESIGN.md §6: IT scales out by adding nodes behind one address).
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
//! bounded pool of read connections (`pg_pool`) in which authentication and the node's own
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

use fieldsync_core::protocol::messages::Hash;
use fieldsync_core::protocol::messages::serde_bytes_vec::Bytes;
use fieldsync_core::protocol::{DeviceInfo, Entry, Lack, LogEntry, Outcome, UploadChange};
use fieldsync_core::{DocId, Role};
use postgres::fallible_iterator::FallibleIterator as _;
use postgres::types::ToSql;
use postgres::{Client, IsolationLevel, NoTls, Row, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

use super::pg_pool::{Lane, Pool, PoolStats};
use super::{
    AuditRecord, BatchDb, Cancel, DeviceRecord, DeviceRow, DocCache, DocMeta, DocRow,
    ENTRY_OVERHEAD, Enrollment, EnrolmentRecord, KIND_CHANGES, KIND_LEAVE, KIND_REPLACE,
    KIND_SNAPSHOT, MIN_CREDENTIAL_LEN, MIN_DB_CONNECTIONS, RelayStatus, RelayStoreError,
    RelayStoreOptions, Replacement, Revoked, SnapshotPage, TOUCH_EVERY, Usage, append_batch,
    doc_id, hash_secret, lock, pg_detail, random_hex, replace, scopes_json,
};

/// Newest schema version this build writes (the row of `fieldsync_schema`).
pub const PG_SCHEMA_VERSION: i32 = PG_MIGRATIONS.len() as i32;

/// Advisory lock key held while migrating, so nodes starting together migrate once.
const MIGRATE_LOCK: i64 = 0x4653_524C;
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

const PG_MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);

-- 'log.high': the highest sequence number; its row lock serialises appends (module docs).
-- 'devices.generation': bumped by every enrolment, redemption and revocation.
CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO counters (name, value) VALUES ('log.high', 0), ('devices.generation', 0);

CREATE TABLE log (
    seq BIGINT PRIMARY KEY,
    scope TEXT NOT NULL,
    doc_id BYTEA NOT NULL,
    kind BIGINT NOT NULL,
    hash BYTEA,
    bytes BYTEA,
    device BYTEA,
    at BIGINT NOT NULL,
    moved_to TEXT
);
CREATE INDEX log_scope ON log (scope, seq);

CREATE TABLE changes (
    hash BYTEA PRIMARY KEY,
    doc_id BYTEA NOT NULL,
    seq BIGINT NOT NULL
);

CREATE TABLE docs (
    doc_id BYTEA PRIMARY KEY,
    kind BIGINT,
    scope TEXT NOT NULL,
    customer_id BYTEA,
    snapshot BYTEA NOT NULL,
    heads BYTEA NOT NULL,
    updated_seq BIGINT NOT NULL
);
CREATE INDEX docs_scope ON docs (scope, doc_id);
CREATE INDEX docs_customer ON docs (customer_id) WHERE customer_id IS NOT NULL;

CREATE TABLE devices (
    device_id BYTEA PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    scopes TEXT NOT NULL,
    secret_hash BYTEA,
    created_at BIGINT NOT NULL,
    last_seen BIGINT,
    revoked_at BIGINT
);

CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    device BYTEA NOT NULL,
    doc_id BYTEA NOT NULL,
    at BIGINT NOT NULL
);
CREATE FUNCTION fieldsync_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'audit is append-only'; END $$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION fieldsync_audit_append_only();

CREATE TABLE enrolments (
    token_hash BYTEA PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    scopes TEXT NOT NULL,
    device_id BYTEA,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    revoked_at BIGINT
);

CREATE TABLE moves (
    doc_id BYTEA NOT NULL,
    from_scope TEXT NOT NULL,
    to_scope TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX moves_doc ON moves (doc_id, seq);
"#,
    r#"
CREATE TABLE vouched (
    hash BYTEA PRIMARY KEY,
    device BYTEA NOT NULL,
    role TEXT NOT NULL
);
CREATE TABLE departures_served (
    device BYTEA NOT NULL,
    doc_id BYTEA NOT NULL,
    PRIMARY KEY (device, doc_id)
);
"#,
    r#"
ALTER TABLE docs ADD COLUMN raw_bytes BIGINT NOT NULL DEFAULT 0;
UPDATE docs SET raw_bytes = octet_length(snapshot);
"#,
    r#"
CREATE TABLE device_usage (
    device BYTEA NOT NULL,
    day BIGINT NOT NULL,
    new_docs BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    PRIMARY KEY (device, day)
);
"#,
];

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
    readers: Pool<Client>,
    touched: Mutex<HashMap<Uuid, Instant>>,
    notify: watch::Sender<u64>,
    devices_notify: watch::Sender<u64>,
}

struct Writer {
    client: Client,
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
) -> Result<Client, RelayStoreError> {
    let mut client = connect(config, tls, location)?;
    let ms = statement_timeout.as_millis().clamp(1, i32::MAX as u128);
    client.batch_execute(&format!("SET statement_timeout = {ms}"))?;
    Ok(client)
}

fn migrate(client: &mut Client) -> Result<(), RelayStoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS fieldsync_schema (version INT NOT NULL)")?;
    let version: i32 = match tx.query_opt("SELECT version FROM fieldsync_schema", &[])? {
        Some(r) => r.try_get(0)?,
        None => {
            tx.execute("INSERT INTO fieldsync_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    if version > PG_SCHEMA_VERSION {
        return Err(RelayStoreError::SchemaTooNew {
            found: version,
            supported: PG_SCHEMA_VERSION,
        });
    }
    for (i, sql) in PG_MIGRATIONS
        .iter()
        .enumerate()
        .skip(version.max(0) as usize)
    {
        tx.batch_execute(sql)?;
        let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute("UPDATE fieldsync_schema SET version = $1", &[&v])?;
    }
    let epoch: Option<Vec<u8>> = tx
        .query_opt("SELECT value FROM meta WHERE key = 'epoch'", &[])?
        .map(|r| r.try_get(0))
        .transpose()?;
    if epoch.is_none() {
        let e = Uuid::new_v4();
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('epoch', $1)",
            &[&e.as_bytes().as_slice()],
        )?;
        tracing::info!(epoch = %e, "created relay database in PostgreSQL");
    }
    tx.commit()?;
    Ok(())
}

fn counter(c: &mut impl postgres::GenericClient, name: &str) -> Result<u64, RelayStoreError> {
    let v: Option<i64> = c
        .query_opt("SELECT value FROM counters WHERE name = $1", &[&name])?
        .map(|r| r.try_get(0))
        .transpose()?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

fn uuid_of(b: &[u8], what: &str) -> Result<Uuid, RelayStoreError> {
    Uuid::from_slice(b).map_err(|_| RelayStoreError::Corrupt(format!("bad device id in {what}")))
}

fn device_row_of(r: &Row) -> Result<DeviceRow, RelayStoreError> {
    Ok(DeviceRow {
        name: r.try_get(0)?,
        role: r.try_get(1)?,
        scopes: r.try_get(2)?,
        secret_hash: r.try_get(3)?,
        created_at: r.try_get(4)?,
        last_seen: r.try_get(5)?,
        revoked_at: r.try_get(6)?,
    })
}

fn device_row(
    c: &mut impl postgres::GenericClient,
    id: Uuid,
) -> Result<Option<DeviceRow>, RelayStoreError> {
    c.query_opt(
        "SELECT name, role, scopes, secret_hash, created_at, last_seen, revoked_at
           FROM devices WHERE device_id = $1",
        &[&id.as_bytes().as_slice()],
    )?
    .as_ref()
    .map(device_row_of)
    .transpose()
}

/// An upload transaction seen through [`BatchDb`] (whose methods take `&self`).
struct PgBatch<'c> {
    tx: RefCell<Transaction<'c>>,
}

impl<'c> PgBatch<'c> {
    /// A transaction that appends to the log: it holds the log counter's row lock until it
    /// commits (see the module docs on sequence numbers).
    fn appending(client: &'c mut Client) -> Result<Self, RelayStoreError> {
        let mut tx = client.transaction()?;
        tx.execute(
            "SELECT value FROM counters WHERE name = $1 FOR UPDATE",
            &[&LOG_HIGH],
        )?;
        Ok(Self {
            tx: RefCell::new(tx),
        })
    }

    fn q(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, RelayStoreError> {
        Ok(self.tx.borrow_mut().query(sql, p)?)
    }

    fn q_opt(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, RelayStoreError> {
        Ok(self.tx.borrow_mut().query_opt(sql, p)?)
    }

    fn exec(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<u64, RelayStoreError> {
        Ok(self.tx.borrow_mut().execute(sql, p)?)
    }
}

impl BatchDb for PgBatch<'_> {
    fn doc_meta(&self, id: DocId) -> Result<Option<DocMeta>, RelayStoreError> {
        self.q_opt(
            "SELECT kind, scope, customer_id, updated_seq FROM docs WHERE doc_id = $1",
            &[&id.as_bytes().as_slice()],
        )?
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .transpose()
    }

    fn doc_bytes(&self, id: DocId) -> Result<usize, RelayStoreError> {
        let n: i64 = self
            .q_opt(
                "SELECT raw_bytes FROM docs WHERE doc_id = $1",
                &[&id.as_bytes().as_slice()],
            )?
            .ok_or_else(|| RelayStoreError::Corrupt(format!("document {id} vanished")))?
            .try_get(0)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn doc_snapshot(&self, id: DocId) -> Result<Vec<u8>, RelayStoreError> {
        let r = self
            .q_opt(
                "SELECT snapshot FROM docs WHERE doc_id = $1",
                &[&id.as_bytes().as_slice()],
            )?
            .ok_or_else(|| RelayStoreError::Corrupt(format!("document {id} vanished")))?;
        Ok(r.try_get(0)?)
    }

    fn upsert_doc(&self, row: &DocRow<'_>) -> Result<(), RelayStoreError> {
        let customer = row.customer_id.map(|c| c.as_bytes().to_vec());
        self.exec(
            "INSERT INTO docs (doc_id, kind, scope, customer_id, snapshot, heads, updated_seq,
               raw_bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (doc_id) DO UPDATE SET kind = excluded.kind, scope = excluded.scope,
               customer_id = excluded.customer_id, snapshot = excluded.snapshot,
               heads = excluded.heads, updated_seq = excluded.updated_seq,
               raw_bytes = excluded.raw_bytes",
            &[
                &row.doc_id.as_bytes().as_slice(),
                &row.kind,
                &row.scope,
                &customer,
                &row.snapshot,
                &row.heads,
                &row.updated_seq,
                &i64::try_from(row.raw_bytes).unwrap_or(i64::MAX),
            ],
        )?;
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
        // The counter row is locked by this transaction already (see `append_changes`).
        let seq: i64 = self
            .q_opt(
                "UPDATE counters SET value = value + 1 WHERE name = $1 RETURNING value",
                &[&LOG_HIGH],
            )?
            .ok_or_else(|| RelayStoreError::Corrupt("the log counter is missing".into()))?
            .try_get(0)?;
        self.exec(
            "INSERT INTO log (seq, scope, doc_id, kind, hash, bytes, device, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &seq,
                &scope,
                &doc.as_bytes().as_slice(),
                &kind,
                &hash,
                &bytes,
                &device.as_bytes().as_slice(),
                &at,
            ],
        )?;
        Ok(seq)
    }

    fn set_moved_to(&self, seq: i64, to: &str) -> Result<(), RelayStoreError> {
        self.exec("UPDATE log SET moved_to = $2 WHERE seq = $1", &[&seq, &to])?;
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
        self.exec(
            "INSERT INTO moves (doc_id, from_scope, to_scope, seq, at) VALUES ($1, $2, $3, $4, $5)",
            &[&doc.as_bytes().as_slice(), &from, &to, &seq, &at],
        )?;
        Ok(())
    }

    fn moves_since(&self, doc: DocId, since: i64) -> Result<Vec<(String, i64)>, RelayStoreError> {
        self.q(
            "SELECT from_scope, seq FROM moves WHERE doc_id = $1 AND at > $2 ORDER BY seq DESC",
            &[&doc.as_bytes().as_slice(), &since],
        )?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
    }

    fn customer_docs(
        &self,
        customer: DocId,
    ) -> Result<Vec<(DocId, String, Vec<u8>)>, RelayStoreError> {
        self.q(
            "SELECT doc_id, scope, snapshot FROM docs WHERE doc_id = $1 OR customer_id = $1
             ORDER BY doc_id",
            &[&customer.as_bytes().as_slice()],
        )?
        .iter()
        .map(|r| {
            let id: Vec<u8> = r.try_get(0)?;
            Ok((doc_id(&id)?, r.try_get(1)?, r.try_get(2)?))
        })
        .collect()
    }

    fn refile_doc(&self, doc: DocId, scope: &str, seq: i64) -> Result<(), RelayStoreError> {
        self.exec(
            "UPDATE docs SET scope = $2, updated_seq = $3 WHERE doc_id = $1",
            &[&doc.as_bytes().as_slice(), &scope, &seq],
        )?;
        Ok(())
    }

    fn stored_change(&self, hash: &[u8]) -> Result<Option<(DocId, i64)>, RelayStoreError> {
        self.q_opt("SELECT doc_id, seq FROM changes WHERE hash = $1", &[&hash])?
            .map(|r| {
                let id: Vec<u8> = r.try_get(0)?;
                Ok((doc_id(&id)?, r.try_get(1)?))
            })
            .transpose()
    }

    fn insert_change(&self, hash: &[u8], doc: DocId, seq: i64) -> Result<(), RelayStoreError> {
        self.exec(
            "INSERT INTO changes (hash, doc_id, seq) VALUES ($1, $2, $3)",
            &[&hash, &doc.as_bytes().as_slice(), &seq],
        )?;
        Ok(())
    }

    fn forget_history(&self, doc: DocId, seq: i64) -> Result<(), RelayStoreError> {
        let id = doc.as_bytes().as_slice();
        self.exec(
            "DELETE FROM log WHERE doc_id = $1 AND seq < $2 AND kind IN ($3, $4, $5)",
            &[&id, &seq, &KIND_CHANGES, &KIND_SNAPSHOT, &KIND_REPLACE],
        )?;
        self.exec("DELETE FROM changes WHERE doc_id = $1", &[&id])?;
        Ok(())
    }

    fn insert_audit(
        &self,
        seq: i64,
        device: Uuid,
        doc: DocId,
        at: i64,
    ) -> Result<(), RelayStoreError> {
        self.exec(
            "INSERT INTO audit (seq, device, doc_id, at) VALUES ($1, $2, $3, $4)",
            &[
                &seq,
                &device.as_bytes().as_slice(),
                &doc.as_bytes().as_slice(),
                &at,
            ],
        )?;
        Ok(())
    }

    fn device_row(&self, id: Uuid) -> Result<Option<DeviceRow>, RelayStoreError> {
        device_row(&mut *self.tx.borrow_mut(), id)
    }

    fn vouched(&self, hash: &[u8]) -> Result<Option<String>, RelayStoreError> {
        self.q_opt("SELECT role FROM vouched WHERE hash = $1", &[&hash])?
            .map(|r| Ok(r.try_get(0)?))
            .transpose()
    }

    fn departure_served(&self, device: Uuid, doc: DocId) -> Result<bool, RelayStoreError> {
        Ok(self
            .q_opt(
                "SELECT 1 FROM departures_served WHERE device = $1 AND doc_id = $2",
                &[&device.as_bytes().as_slice(), &doc.as_bytes().as_slice()],
            )?
            .is_some())
    }

    fn usage(&self, device: Uuid, day: i64) -> Result<Usage, RelayStoreError> {
        usage_on(&mut *self.tx.borrow_mut(), device, day)
    }

    fn add_usage(&self, device: Uuid, day: i64, add: Usage) -> Result<(), RelayStoreError> {
        let id = device.as_bytes().as_slice();
        self.exec(
            "INSERT INTO device_usage (device, day, new_docs, bytes) VALUES ($1, $2, $3, $4)
             ON CONFLICT (device, day) DO UPDATE
               SET new_docs = device_usage.new_docs + excluded.new_docs,
                   bytes = device_usage.bytes + excluded.bytes",
            &[
                &id,
                &day,
                &i64::try_from(add.new_documents).unwrap_or(i64::MAX),
                &i64::try_from(add.bytes).unwrap_or(i64::MAX),
            ],
        )?;
        self.exec(
            "DELETE FROM device_usage WHERE device = $1 AND day < $2",
            &[&id, &(day - super::quota::KEEP_DAYS)],
        )?;
        Ok(())
    }
}

/// What `device` stored on `day`.
fn usage_on(
    c: &mut impl postgres::GenericClient,
    device: Uuid,
    day: i64,
) -> Result<Usage, RelayStoreError> {
    let row = c.query_opt(
        "SELECT new_docs, bytes FROM device_usage WHERE device = $1 AND day = $2",
        &[&device.as_bytes().as_slice(), &day],
    )?;
    Ok(match row {
        Some(r) => Usage {
            new_documents: r.try_get::<_, i64>(0)?.max(0) as u64,
            bytes: r.try_get::<_, i64>(1)?.max(0) as u64,
        },
        None => Usage::default(),
    })
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
        let mut client = connect(&config, &tls, &location)?;
        migrate(&mut client)?;
        let epoch_bytes: Vec<u8> = client
            .query_one("SELECT value FROM meta WHERE key = 'epoch'", &[])?
            .try_get(0)?;
        let epoch = Uuid::from_slice(&epoch_bytes)
            .map_err(|_| RelayStoreError::Corrupt("bad epoch in meta".into()))?;
        let (notify, _) = watch::channel(counter(&mut client, LOG_HIGH)?);
        let (devices_notify, _) = watch::channel(counter(&mut client, DEVICES_GENERATION)?);
        // The pool keeps a quarter of its connections (at least one) for the priority lane.
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
        self.inner.devices_notify.send_if_modified(|v| {
            let changed = *v != g;
            *v = g;
            changed
        });
        Ok(g)
    }

    /// Reads the log counter and notifies receivers if other nodes appended.
    pub fn poll_log(&self) -> Result<u64, RelayStoreError> {
        let h = self.high_seq()?;
        self.raise_high(h);
        Ok(h)
    }

    fn raise_high(&self, h: u64) {
        self.inner.notify.send_if_modified(|v| {
            let up = h > *v;
            if up {
                *v = h;
            }
            up
        });
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

    /// Runs `f` on a connection of the read pool's bulk lane (waiting for one, or refused
    /// as busy: see the module docs).
    fn read<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        self.read_in(Lane::Bulk, f)
    }

    /// Runs `f`, a short query that admits a device or follows the database, on a connection
    /// of the read pool's priority lane, which bulk reads cannot exhaust.
    fn read_priority<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        self.read_in(Lane::Priority, f)
    }

    fn read_in<T>(
        &self,
        lane: Lane,
        f: impl FnOnce(&mut Client) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        self.cancel.check()?;
        let mut lent = self.inner.readers.get(lane)?;
        f(lent.conn()?)
    }

    /// Runs `f` with the writer connection and this node's cache.
    fn with_writer<T>(
        &self,
        f: impl FnOnce(&mut Client, &mut DocCache) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        let mut guard = lock(&self.inner.writer);
        if guard.as_ref().is_none_or(|w| w.client.is_closed()) {
            *guard = Some(Writer {
                client: connect(&self.inner.config, &self.inner.tls, &self.inner.location)?,
                cache: DocCache::new(self.inner.opts.cache_docs),
            });
        }
        let Some(w) = guard.as_mut() else {
            return Err(RelayStoreError::Invalid("no writer connection".into()));
        };
        f(&mut w.client, &mut w.cache)
    }

    /// Runs `f` in a write transaction that changes devices: bumps the counter and notifies
    /// every node in the same transaction.
    fn write_devices<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        let v = self.with_writer(|client, _| {
            let mut tx = client.transaction()?;
            let v = f(&mut tx)?;
            bump_devices(&mut tx)?;
            tx.commit()?;
            Ok(v)
        })?;
        self.poll_devices()?;
        Ok(v)
    }

    /// Validates and durably stores uploaded changes (see
    /// [`super::SqliteRelayStore::append_changes`]); one transaction for the whole batch,
    /// serialised with every other node's appends by the log counter's row lock.
    pub fn append_changes(
        &self,
        device: &DeviceInfo,
        changes: &[UploadChange],
        relayed: bool,
    ) -> Result<Vec<Outcome>, RelayStoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let (outcomes, high) = self.with_writer(|client, cache| {
            let db = PgBatch::appending(client)?;
            let (outcomes, work, high) =
                append_batch(&db, cache, &self.inner.opts, device, changes, relayed)?;
            let mut tx = db.tx.into_inner();
            if let Some(h) = high {
                tx.execute("SELECT pg_notify($1, $2)", &[&LOG_CHANNEL, &h.to_string()])?;
            }
            tx.commit()?;
            for (id, w) in work {
                if w.scope.is_some() {
                    cache.insert(id, w.doc, w.updated_seq);
                }
            }
            Ok((outcomes, high))
        })?;
        if let Some(h) = high {
            self.raise_high(h.max(0) as u64);
        }
        Ok(outcomes)
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
            let db = PgBatch::appending(client)?;
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
    ) -> Result<(Vec<LogEntry>, bool), RelayStoreError> {
        let mut cursor = i64::try_from(after).unwrap_or(i64::MAX);
        self.read(|c| {
            let mut out = Vec::new();
            let mut used = 0usize;
            loop {
                self.cancel.check()?;
                let rows = if scope == ALL_SCOPES {
                    c.query(
                        "SELECT seq, doc_id, kind, octet_length(bytes)::BIGINT, bytes, hash, moved_to
                           FROM log WHERE seq > $1 AND kind IN (0, 3) ORDER BY seq LIMIT $2",
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
                };
                let full = rows.len() as i64 == PAGE_ROWS;
                for r in rows {
                    let size = r.try_get::<_, Option<i64>>(3)?.unwrap_or(0).max(0) as usize
                        + ENTRY_OVERHEAD;
                    if !out.is_empty() && used + size > max_bytes {
                        return Ok((out, true));
                    }
                    used += size;
                    let seq: i64 = r.try_get(0)?;
                    cursor = seq;
                    let id = doc_id(&r.try_get::<_, Vec<u8>>(1)?)?;
                    let kind: i64 = r.try_get(2)?;
                    let bytes: Option<Vec<u8>> = r.try_get(4)?;
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
                    let hash: Option<Vec<u8>> = r.try_get(5)?;
                    out.push(LogEntry {
                        seq: seq.max(0) as u64,
                        doc_id: id,
                        hash: hash.and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok()),
                        moved_to: r.try_get(6)?,
                        entry,
                    });
                }
                if !full {
                    return Ok((out, false));
                }
            }
        })
    }

    /// Snapshots of the documents in `scope` after `after` (see
    /// [`super::SqliteRelayStore::read_snapshots`]).
    pub fn read_snapshots(
        &self,
        scope: &str,
        after: Option<DocId>,
        max_bytes: usize,
    ) -> Result<SnapshotPage, RelayStoreError> {
        let mut cursor: Vec<u8> = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
        self.read(|c| {
            let mut out = Vec::new();
            let mut used = 0usize;
            loop {
                self.cancel.check()?;
                let rows = if scope == ALL_SCOPES {
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

    /// For each document and a client's heads, what the relay lacks of it (by the rule of
    /// `lack_of`, which the SQLite store applies too). The documents, then the stored changes
    /// among the client's heads, are looked up `LOOKUP_CHUNK` at a time with `= ANY($1)`, not
    /// one query each, in one snapshot; the work stops between chunks once the client has
    /// left.
    pub fn missing(&self, docs: &[(DocId, Vec<Hash>)]) -> Result<Vec<Lack>, RelayStoreError> {
        self.read(|c| {
            // One snapshot for the whole answer, as SQLite's read transaction gives.
            let mut tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
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
                    out.push(super::lack_of(held.get(id).cloned(), client_heads, |h| {
                        Ok(stored.contains(&(*h, *id)))
                    })?);
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// Checks a device's credential; in open mode registers unknown devices. Runs in the read
    /// pool's priority lane: a device logs in however busy the pool is with downloads.
    pub fn authenticate(
        &self,
        device_id: Uuid,
        credential: Option<&str>,
    ) -> Result<Option<DeviceInfo>, RelayStoreError> {
        let Some(open) = self.inner.opts.open.as_ref() else {
            let row = self.read_priority(|c| device_row(c, device_id))?;
            return row.map_or(Ok(None), |r| self.admit(device_id, &r, credential));
        };
        if let Some(r) = self.read_priority(|c| device_row(c, device_id))? {
            return self.admit(device_id, &r, credential);
        }
        let scopes = serde_json::to_string(&open.scopes)
            .map_err(|e| RelayStoreError::Invalid(e.to_string()))?;
        let now = self.inner.opts.env.now_millis();
        let inserted = self.read_priority(|c| {
            Ok(c.execute(
                "INSERT INTO devices (device_id, name, role, scopes, secret_hash, created_at, last_seen)
                 VALUES ($1, 'open enrolment', $2, $3, NULL, $4, $4) ON CONFLICT DO NOTHING",
                &[&device_id.as_bytes().as_slice(), &open.role.as_str(), &scopes, &now],
            )?)
        })?;
        if inserted > 0 {
            lock(&self.inner.touched).insert(device_id, Instant::now());
            tracing::info!(device = %device_id, role = %open.role, "registered a device by open enrolment");
        }
        let row = self.read_priority(|c| device_row(c, device_id))?;
        row.map_or(Ok(None), |r| self.admit(device_id, &r, credential))
    }

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

    /// Records that a device finished a sync exchange (written at most every 30 s per device
    /// and node).
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
        // A one-row update at most every 30 s per device: the priority lane, so that a busy
        // pool does not fail a sync whose work is already done.
        self.read_priority(|c| {
            c.execute(
                "UPDATE devices SET last_seen = $2 WHERE device_id = $1",
                &[
                    &device_id.as_bytes().as_slice(),
                    &self.inner.opts.env.now_millis(),
                ],
            )?;
            Ok(())
        })
    }

    /// Enrols a device (see [`super::SqliteRelayStore::enroll_device`]).
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
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (device_id) DO UPDATE SET name = excluded.name, role = excluded.role,
                   scopes = excluded.scopes, secret_hash = excluded.secret_hash, revoked_at = NULL",
                &[
                    &device_id.as_bytes().as_slice(),
                    &name,
                    &role.as_str(),
                    &scopes_json,
                    &hash_secret(&secret),
                    &now,
                ],
            )?;
            Ok(())
        })?;
        tracing::info!(device = %device_id, %role, ?scopes, "enrolled a device");
        Ok(Enrollment { device_id, secret })
    }

    /// Revokes a device; returns whether it was known and not yet revoked.
    pub fn revoke_device(&self, device_id: Uuid) -> Result<bool, RelayStoreError> {
        let n =
            self.write_devices(|tx| {
                Ok(tx.execute(
                "UPDATE devices SET revoked_at = $2 WHERE device_id = $1 AND revoked_at IS NULL",
                &[&device_id.as_bytes().as_slice(), &self.inner.opts.env.now_millis()],
            )?)
            })?;
        if n > 0 {
            tracing::info!(device = %device_id, "revoked a device");
        }
        Ok(n > 0)
    }

    /// Creates a one-time enrolment token (see [`super::SqliteRelayStore::create_enrolment`]).
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
        let bound = device_id.map(|d| d.as_bytes().to_vec());
        self.write_devices(|tx| {
            tx.execute(
                "INSERT INTO enrolments (token_hash, name, role, scopes, device_id, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &hash_secret(&secret),
                    &name.trim(),
                    &role.as_str(),
                    &scopes_json,
                    &bound,
                    &now,
                    &expires,
                ],
            )?;
            Ok(())
        })?;
        tracing::info!(name, %role, ?scopes, "created an enrolment token");
        Ok(secret)
    }

    /// Redeems an enrolment token (see [`super::SqliteRelayStore::redeem`]).
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
        let token_hash = hash_secret(&token);
        // An unknown token is refused from a read connection: guessing costs the relay no
        // write lock (and the writer serialises every node's uploads).
        let known = self.read_priority(|c| {
            Ok(c.query_opt(
                "SELECT 1 FROM enrolments WHERE token_hash = $1",
                &[&token_hash],
            )?
            .is_some())
        })?;
        if !known {
            return Ok(Err("unknown enrolment token".to_string()));
        }
        let now = self.inner.opts.env.now_millis();
        let did = device_id.as_bytes().as_slice();
        let out = self.with_writer(|client, _| {
            let mut tx = client.transaction()?;
            // FOR UPDATE: two nodes redeeming the same token at once see it one after the
            // other, so it is used once.
            let row = tx.query_opt(
                "SELECT name, role, scopes, device_id, expires_at, used_at, revoked_at
                   FROM enrolments WHERE token_hash = $1 FOR UPDATE",
                &[&token_hash],
            )?;
            let Some(row) = row else {
                return Ok(Err("unknown enrolment token".to_string()));
            };
            let name: String = row.try_get(0)?;
            let role: String = row.try_get(1)?;
            let scopes: String = row.try_get(2)?;
            let bound: Option<Vec<u8>> = row.try_get(3)?;
            let expires_at: i64 = row.try_get(4)?;
            let used_at: Option<i64> = row.try_get(5)?;
            let revoked_at: Option<i64> = row.try_get(6)?;
            if revoked_at.is_some() {
                return Ok(Err("the enrolment token was revoked".into()));
            }
            let bound = bound.map(|b| uuid_of(&b, "enrolments")).transpose()?;
            let existing = device_row(&mut tx, device_id)?;
            if used_at.is_some() {
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
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (device_id) DO UPDATE SET name = excluded.name, role = excluded.role,
                   scopes = excluded.scopes, secret_hash = excluded.secret_hash, revoked_at = NULL",
                &[&did, &name, &role, &scopes, &hash_secret(credential), &now],
            )?;
            tx.execute(
                "UPDATE enrolments SET used_at = $2, device_id = $3 WHERE token_hash = $1",
                &[&token_hash, &now, &did],
            )?;
            bump_devices(&mut tx)?;
            let row = device_row(&mut tx, device_id)?
                .ok_or_else(|| RelayStoreError::Corrupt("device row vanished".into()))?;
            let info = row.info(device_id)?;
            tx.commit()?;
            Ok(Ok(info))
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

    /// Changes a device's grant (see [`super::SqliteRelayStore::grant`]).
    pub fn grant(
        &self,
        who: &str,
        role: Option<Role>,
        scopes: Option<&[String]>,
    ) -> Result<Vec<Uuid>, RelayStoreError> {
        let (who, id, scopes_json) = super::grant_args(who, role, scopes)?;
        let id = id.map(|i| i.as_bytes().to_vec());
        let role_str = role.map(Role::as_str);
        let changed: Vec<Uuid> = self.write_devices(|tx| {
            tx.query(
                "UPDATE devices SET role = COALESCE($3, role), scopes = COALESCE($4, scopes)
                  WHERE (device_id = $1 OR ($1 IS NULL AND name = $2)) AND revoked_at IS NULL
                  RETURNING device_id",
                &[&id, &who, &role_str, &scopes_json],
            )?
            .iter()
            .map(|r| uuid_of(&r.try_get::<_, Vec<u8>>(0)?, "devices"))
            .collect()
        })?;
        super::granted(who, changed, role, scopes)
    }

    /// Revokes by device id or by name (see [`super::SqliteRelayStore::revoke`]).
    pub fn revoke(&self, who: &str) -> Result<Revoked, RelayStoreError> {
        let who = who.trim();
        let id = Uuid::parse_str(who).ok();
        let now = self.inner.opts.env.now_millis();
        let out = self.write_devices(|tx| {
            let mut out = Revoked::default();
            let ids: Vec<Vec<u8>> = match id {
                Some(id) => vec![id.as_bytes().to_vec()],
                None => tx
                    .query(
                        "SELECT device_id FROM devices WHERE name = $1 AND revoked_at IS NULL",
                        &[&who],
                    )?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?,
            };
            for b in ids {
                let n = tx.execute(
                    "UPDATE devices SET revoked_at = $2 WHERE device_id = $1 AND revoked_at IS NULL",
                    &[&b, &now],
                )?;
                if n > 0 {
                    out.devices.push(uuid_of(&b, "devices")?);
                }
            }
            let tokens = match id {
                Some(id) => tx.execute(
                    "UPDATE enrolments SET revoked_at = $2
                     WHERE device_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
                    &[&id.as_bytes().as_slice(), &now],
                )?,
                None => tx.execute(
                    "UPDATE enrolments SET revoked_at = $2
                     WHERE name = $1 AND used_at IS NULL AND revoked_at IS NULL",
                    &[&who, &now],
                )?,
            };
            out.tokens = usize::try_from(tokens).unwrap_or(usize::MAX);
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

    /// Every enrolment token, newest first.
    pub fn enrolments(&self) -> Result<Vec<EnrolmentRecord>, RelayStoreError> {
        self.read(|c| {
            let rows = c.query(
                "SELECT name, role, scopes, device_id, created_at, expires_at, used_at, revoked_at
                   FROM enrolments ORDER BY created_at DESC",
                &[],
            )?;
            let mut out = Vec::new();
            for r in rows {
                let name: String = r.try_get(0)?;
                let role: String = r.try_get(1)?;
                let scopes: String = r.try_get(2)?;
                let device: Option<Vec<u8>> = r.try_get(3)?;
                out.push(EnrolmentRecord {
                    role: Role::parse(&role).ok_or_else(|| {
                        RelayStoreError::Corrupt(format!("enrolment {name} has role `{role}`"))
                    })?,
                    scopes: serde_json::from_str(&scopes)
                        .map_err(|e| RelayStoreError::Corrupt(format!("enrolment scopes: {e}")))?,
                    device_id: device.as_deref().and_then(|b| Uuid::from_slice(b).ok()),
                    name,
                    created_at: r.try_get(4)?,
                    expires_at: r.try_get(5)?,
                    used_at: r.try_get(6)?,
                    revoked_at: r.try_get(7)?,
                });
            }
            Ok(out)
        })
    }

    /// The current grant of a device: `None` when it is unknown or revoked.
    pub fn device_grant(&self, device_id: Uuid) -> Result<Option<DeviceInfo>, RelayStoreError> {
        match self.read_priority(|c| device_row(c, device_id))? {
            Some(r) if r.revoked_at.is_none() => Ok(Some(r.info(device_id)?)),
            _ => Ok(None),
        }
    }

    /// The audit trail (see [`super::SqliteRelayStore::audit`]).
    pub fn audit(
        &self,
        doc: Option<DocId>,
        device: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, RelayStoreError> {
        let device_id = device
            .and_then(|d| Uuid::parse_str(d.trim()).ok())
            .map(|d| d.as_bytes().to_vec());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let doc_b = doc.map(|d| d.as_bytes().to_vec());
        let name = device.map(str::trim);
        let filter_device = device.is_some();
        self.read(|c| {
            let rows = c.query(
                "SELECT a.seq, a.at, a.device, d.name, a.doc_id, l.hash, l.scope
                   FROM audit a
                   LEFT JOIN devices d ON d.device_id = a.device
                   LEFT JOIN log l ON l.seq = a.seq
                  WHERE ($1::BYTEA IS NULL OR a.doc_id = $1)
                    AND (NOT $2 OR a.device = $3::BYTEA OR d.name = $4::TEXT)
                  ORDER BY a.seq DESC LIMIT $5",
                &[&doc_b, &filter_device, &device_id, &name, &limit],
            )?;
            let mut out = Vec::new();
            for r in rows {
                let seq: i64 = r.try_get(0)?;
                let dev: Vec<u8> = r.try_get(2)?;
                let doc: Vec<u8> = r.try_get(4)?;
                let hash: Option<Vec<u8>> = r.try_get(5)?;
                out.push(AuditRecord {
                    seq: seq.max(0) as u64,
                    at: r.try_get(1)?,
                    device_id: uuid_of(&dev, "audit")?,
                    device_name: r.try_get(3)?,
                    doc_id: doc_id(&doc)?,
                    hash: hash.map(hex::encode),
                    scope: r.try_get(6)?,
                });
            }
            out.reverse();
            Ok(out)
        })
    }

    /// Every known device, by creation time.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, RelayStoreError> {
        self.read(|c| {
            let rows = c.query(
                "SELECT name, role, scopes, secret_hash, created_at, last_seen, revoked_at, device_id
                   FROM devices ORDER BY created_at, device_id",
                &[],
            )?;
            let mut out = Vec::new();
            for r in rows {
                let row = device_row_of(&r)?;
                let id = uuid_of(&r.try_get::<_, Vec<u8>>(7)?, "devices")?;
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
                    today: usage_on(c, id, super::day_of(self.inner.opts.env.now_millis()))?,
                });
            }
            Ok(out)
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
    /// Runs `f` on a connection of the read pool's bulk lane (tests hold connections, or run
    /// slow statements, with it).
    pub(super) fn bulk_read<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        self.read(f)
    }

    /// Runs `f` while holding the writer connection (as a long upload would).
    pub(super) fn holding_writer<T>(&self, f: impl FnOnce() -> T) -> Result<T, RelayStoreError> {
        self.with_writer(|_, _| Ok(f()))
    }
}

/// Bumps the device-change counter and notifies every node, inside a write transaction.
fn bump_devices(tx: &mut Transaction<'_>) -> Result<(), RelayStoreError> {
    let g: i64 = tx
        .query_one(
            "UPDATE counters SET value = value + 1 WHERE name = $1 RETURNING value",
            &[&DEVICES_GENERATION],
        )?
        .try_get(0)?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&DEVICES_CHANNEL, &g.to_string()],
    )?;
    Ok(())
}

/// A connection listening on both notification channels. TCP keepalives make a half-open
/// connection (a peer that vanished without closing) fail within about a minute, so that it
/// is reconnected rather than waited on for good.
fn listener(inner: &Inner) -> Result<Client, RelayStoreError> {
    let mut config = inner.config.clone();
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    let mut client = connect(&config, &inner.tls, &inner.location)?;
    client.batch_execute(&format!("LISTEN {LOG_CHANNEL}; LISTEN {DEVICES_CHANNEL}"))?;
    Ok(client)
}

/// Longest wait between attempts to restore the notification connection.
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(30);

/// Restores the notification connection after it broke (a database restart, a network cut),
/// waiting longer after each failed attempt, until it works or the store is gone. Then reads
/// the counters, since notifications sent meanwhile are lost. Meanwhile the server's
/// once-a-second poll keeps live clients served.
fn reconnect_listener(store: &Weak<Inner>) -> Option<Client> {
    let mut wait = LISTEN_TICK;
    loop {
        std::thread::sleep(wait);
        let inner = store.upgrade()?;
        match listener(&inner) {
            Ok(client) => {
                let handle = PgRelayStore {
                    inner,
                    cancel: Cancel::default(),
                };
                if let Err(e) = handle.poll_log().and_then(|_| handle.poll_devices()) {
                    tracing::warn!(error = %e, "cannot read the counters after reconnecting");
                }
                tracing::info!("PostgreSQL notification connection restored");
                return Some(client);
            }
            Err(e) => {
                tracing::debug!(error = %e, retry_in = ?wait, "notification connection still down");
                wait = (wait * 2).min(LISTEN_RETRY_MAX);
            }
        }
    }
}

/// Wakes this node's subscribers when another node notifies; ends when the store is dropped.
/// A broken connection is restored ([`reconnect_listener`]).
fn listen_loop(mut client: Client, store: Weak<Inner>) {
    loop {
        let note = {
            let mut notes = client.notifications();
            let mut it = notes.timeout_iter(LISTEN_TICK);
            it.next()
        };
        let Some(inner) = store.upgrade() else {
            return;
        };
        let store_handle = PgRelayStore {
            inner,
            cancel: Cancel::default(),
        };
        match note {
            Ok(None) => {}
            Ok(Some(n)) if n.channel() == LOG_CHANNEL => match n.payload().parse::<u64>() {
                Ok(h) => store_handle.raise_high(h),
                Err(_) => tracing::warn!(payload = n.payload(), "odd log notification"),
            },
            Ok(Some(_)) => {
                if let Err(e) = store_handle.poll_devices() {
                    tracing::warn!(error = %e, "cannot read the device table");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "lost the PostgreSQL notification connection; reconnecting");
                // Holding the store while waiting would keep a dropped store alive.
                drop(store_handle);
                match reconnect_listener(&store) {
                    Some(c) => client = c,
                    None => return,
                }
            }
        }
    }
}

/// A database of its own for one test, created on a PostgreSQL server and dropped (with
/// its connections) when this is dropped. For the relay's tests and tools, not for
/// production use.
#[doc(hidden)]
#[derive(Debug)]
pub struct ScratchDatabase {
    server: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    /// The server tests use: `FIELDSYNC_TEST_PG`, else the local default
    /// `postgres://postgres@127.0.0.1:5432/postgres` (trust authentication).
    pub fn server_url() -> String {
        std::env::var("FIELDSYNC_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    /// Creates a uniquely named database on the server at `server` (a URL naming an
    /// existing database to connect to, such as `postgres`).
    pub fn create(server: &str) -> Result<Self, RelayStoreError> {
        let name = format!("fieldsync_test_{}", Uuid::new_v4().simple());
        let url = match server.rsplit_once('/') {
            Some((base, _)) if base.contains("://") && base.len() > "postgres://".len() => {
                format!("{base}/{name}")
            }
            _ => {
                return Err(RelayStoreError::Invalid(format!(
                    "{} does not name a database",
                    redact_url(server)
                )));
            }
        };
        let sql = format!("CREATE DATABASE {name}");
        Self::admin(server, sql)?;
        Ok(Self {
            server: server.to_string(),
            name,
            url,
        })
    }

    /// The scratch database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs one statement on the server, on a thread of its own (a synchronous client must
    /// not run on an async runtime's thread, where tests may call this).
    fn admin(server: &str, sql: String) -> Result<(), RelayStoreError> {
        let server = server.to_string();
        std::thread::spawn(move || -> Result<(), RelayStoreError> {
            let location = redact_url(&server);
            let config: postgres::Config = server
                .parse()
                .map_err(|e| RelayStoreError::Connect(location.clone(), pg_detail(&e)))?;
            let mut c = connect(&config, &PgTls::Plain, &location)?;
            c.batch_execute(&sql)?;
            Ok(())
        })
        .join()
        .map_err(|_| RelayStoreError::Invalid("the admin thread panicked".into()))?
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = Self::admin(&self.server, sql) {
            tracing::warn!(database = %self.name, error = %e, "cannot drop a scratch database");
        }
    }
}

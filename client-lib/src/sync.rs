//! Background sync with the relay over QUIC.
//!
//! The protocol itself is the sans-IO [`ClientSession`] of `fieldsync-core`; this module
//! moves its messages over one bidirectional QUIC stream (frames of
//! [`fieldsync_core::protocol::codec`]), runs its store calls off the async executor
//! ([`tokio::task::spawn_blocking`] around [`Client::with_store`]), and reconnects.
//!
//! * [`sync_now`] connects, syncs until the replica is caught up and every local change has
//!   been answered (acknowledged, quarantined, or refused for a later retry), closes cleanly,
//!   and reports what moved.
//! * [`SyncHandle::start`] stays connected, pushes local edits as they are committed, receives
//!   live pushes, reconnects with exponential backoff and jitter after any retryable error, and
//!   publishes [`SyncEvent`]s.
//!
//! The relay is authenticated by certificate pinning ([`tls`]): [`SyncConfig::pin`] is the
//! hex SHA-256 of the relay certificate's DER encoding.
//!
//! Both record their outcome in the replica's metadata under [`STATUS_META_KEY`], so a later
//! process can tell when the replica last finished a sync ([`load_status`]).
//!
//! This file holds one connection's loop (`Run`: drive the session, answer timers, report
//! progress) and [`sync_now`]; around it: `config` ([`SyncConfig`]), `error` ([`SyncError`]),
//! `report` ([`SyncReport`], [`SyncProgress`]), `status` ([`SyncEvent`], [`SyncStatus`], the
//! persisted outcome), `link` (frames over one QUIC stream), `handle` ([`SyncHandle`], the
//! background loop), [`backoff`], [`credential`] (first-use enrolment) and [`tls`].
//!
//! ```no_run
//! use fieldsync_client::Client;
//! use fieldsync_client::sync::{SyncConfig, SyncEvent, SyncHandle, sync_now};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::open("replica.db")?;
//! let config = SyncConfig::new("relay.example.com:4433", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
//! let report = sync_now(&client, &config).await?;
//! println!("sent {} changes, received {} items", report.changes_sent, report.items_received);
//!
//! let handle = SyncHandle::start(client.clone(), config);
//! let mut events = handle.subscribe();
//! while let Ok(event) = events.recv().await {
//!     if event == SyncEvent::CaughtUp {
//!         break;
//!     }
//! }
//! handle.stop().await;
//! # Ok(())
//! # }
//! ```

mod attachments;
pub mod backoff;
mod config;
pub mod credential;
mod error;
mod handle;
mod link;
mod report;
mod status;
pub mod tls;

pub use config::SyncConfig;
pub use error::SyncError;
pub use handle::SyncHandle;
pub use report::{KindCounts, SyncProgress, SyncReport};
pub use status::{
    GRANT_META_KEY, PersistedStatus, SESSION_META_KEY, STATUS_META_KEY, SyncEvent, SyncState,
    SyncStatus, granted_scopes, load_status, session_started_at,
};

use config::split_host;
use link::{Counters, Link};
use report::millis;
use status::{Outcome, persist_status};

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldsync_core::ids::{Millis, now_millis};
use fieldsync_core::protocol::client::ClientConfig as SessionConfig;
use fieldsync_core::protocol::messages::MAX_FIRST_CUSTOMERS;
use fieldsync_core::protocol::{
    ClientInput, ClientSession, ClientStep, CodecError, DevicePolicy, Message, SessionError,
    SessionStats, TimerConfig, WipeOrder, WipeReport, codec,
};
use fieldsync_core::store::{Origin, Store, StoreError};
use fieldsync_core::{DocId, DocKind, Role};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;

pub use backoff::{Backoff, BackoffConfig};
pub use credential::{
    Credential, Enrolled, credential_path, enrol, enrol_replica, load_credential, read_credential,
    save_credential, write_credential,
};
pub use fieldsync_core::protocol::EnrolToken;
pub use tls::{Fingerprint, PinMismatch};

use crate::{Client, ClientError};

// ---------------------------------------------------------------------------------------------
// Connections.

/// The configuration, checked and turned into QUIC settings once.
struct Prepared {
    relay: String,
    server_name: String,
    quic: quinn::ClientConfig,
    verifier: Arc<tls::PinnedCertVerifier>,
    cfg: SyncConfig,
}

impl Prepared {
    fn new(cfg: &SyncConfig) -> Result<Self, SyncError> {
        let pin: Fingerprint = cfg
            .pin
            .parse()
            .map_err(|e: tls::FingerprintError| SyncError::Config(e.to_string()))?;
        let (host, port) = split_host(&cfg.relay);
        if host.is_empty() || port.is_none_or(|p| p.parse::<u16>().is_err()) {
            return Err(SyncError::Config(format!(
                "relay address {:?} is not host:port",
                cfg.relay
            )));
        }
        let server_name = cfg.effective_server_name();
        rustls::pki_types::ServerName::try_from(server_name.clone())
            .map_err(|e| SyncError::Config(format!("server name {server_name:?}: {e}")))?;
        let (tls_cfg, verifier) =
            tls::client_tls_config(pin).map_err(|e| SyncError::Config(e.to_string()))?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls_cfg)
            .map_err(|e| SyncError::Config(e.to_string()))?;
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(cfg.keep_alive.max(Duration::from_millis(100))));
        let idle = quinn::IdleTimeout::try_from(cfg.idle_timeout)
            .map_err(|e| SyncError::Config(format!("idle timeout: {e}")))?;
        transport.max_idle_timeout(Some(idle));
        transport.congestion_controller_factory(cfg.congestion.factory());
        let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
        quic.transport_config(Arc::new(transport));
        Ok(Self {
            relay: cfg.relay.trim().to_string(),
            server_name,
            quic,
            verifier,
            cfg: cfg.clone(),
        })
    }

    /// Resolves the relay and completes the QUIC/TLS handshake; IPv4 addresses are tried
    /// first. The endpoint is fresh per attempt (a laptop changes networks).
    ///
    /// With `early`, a relay this process connected to before is reached by resuming that TLS
    /// session, and the connection is returned at once: what is sent before the handshake
    /// completes travels as 0-RTT data. Only replay-safe messages may be sent that way (a
    /// session's first flight: `Hello`, an idempotent upload, a pull). If the relay refuses
    /// the early data, the stream fails with [`SyncError::EarlyDataRejected`] and the caller
    /// connects again without `early`.
    async fn connect(&self, early: bool) -> Result<Connected, SyncError> {
        let deadline = tokio::time::Instant::now() + self.cfg.connect_timeout;
        let timeout_err = || SyncError::ConnectTimeout {
            relay: self.relay.clone(),
            timeout: self.cfg.connect_timeout,
        };
        let mut addrs: Vec<SocketAddr> =
            match tokio::time::timeout_at(deadline, tokio::net::lookup_host(&self.relay)).await {
                Err(_) => return Err(timeout_err()),
                Ok(Err(e)) => {
                    return Err(SyncError::Resolve {
                        relay: self.relay.clone(),
                        reason: e.to_string(),
                    });
                }
                Ok(Ok(a)) => a.collect(),
            };
        addrs.sort_by_key(|a| !a.is_ipv4());
        addrs.dedup();
        if addrs.is_empty() {
            return Err(SyncError::Resolve {
                relay: self.relay.clone(),
                reason: "no addresses".into(),
            });
        }
        let mut last = None;
        for addr in addrs {
            let bind: SocketAddr = if addr.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let mut endpoint =
                quinn::Endpoint::client(bind).map_err(|e| SyncError::Io(e.to_string()))?;
            endpoint.set_default_client_config(self.quic.clone());
            let connecting = endpoint
                .connect(addr, &self.server_name)
                .map_err(|e| match e {
                    quinn::ConnectError::InvalidServerName(_)
                    | quinn::ConnectError::InvalidRemoteAddress(_) => {
                        SyncError::Config(e.to_string())
                    }
                    other => SyncError::Io(other.to_string()),
                })?;
            let connecting = if early {
                match connecting.into_0rtt() {
                    Ok((conn, accepted)) => {
                        return Ok(Connected {
                            endpoint,
                            conn,
                            early: Early::Pending(accepted),
                        });
                    }
                    Err(connecting) => connecting,
                }
            } else {
                connecting
            };
            match tokio::time::timeout_at(deadline, connecting).await {
                Ok(Ok(conn)) => {
                    return Ok(Connected {
                        endpoint,
                        conn,
                        early: Early::None,
                    });
                }
                Ok(Err(e)) => {
                    if let Some(m) = self.verifier.take_mismatch() {
                        return Err(SyncError::PinMismatch(m));
                    }
                    last = Some(connection_error(e));
                }
                Err(_) => {
                    last = Some(timeout_err());
                    break;
                }
            }
        }
        Err(last.unwrap_or_else(timeout_err))
    }
}

/// A connection to the relay, and its endpoint (which must outlive it).
struct Connected {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    early: Early,
}

/// Whether a connection sent 0-RTT data, and what the relay made of it.
enum Early {
    /// A full handshake: nothing went early.
    None,
    /// Resolves once the handshake completes, to whether the relay took the early data.
    Pending(quinn::ZeroRttAccepted),
    /// That answer (the future must not be polled again once it answered).
    Answered(bool),
}

impl Connected {
    /// Runs a session (`session`: the protocol loop on this connection's stream) with the
    /// early-data rules: a connection that went early is held to the connect timeout until its
    /// handshake completes (not to the much longer idle timeout), and a session that failed on
    /// a connection whose early data the relay refused failed because of that, whatever error
    /// the stream showed first: nothing it sent reached the relay, and the caller connects
    /// again with a full handshake ([`SyncError::EarlyDataRejected`]).
    async fn run_session(
        &mut self,
        prep: &Prepared,
        session: impl Future<Output = Result<End, SyncError>>,
    ) -> Result<End, SyncError> {
        let limit = prep.cfg.connect_timeout;
        let r = tokio::select! {
            r = session => r,
            () = self.handshake_overdue(limit) => Err(SyncError::ConnectTimeout {
                relay: prep.relay.clone(),
                timeout: limit,
            }),
        };
        match r {
            Err(e) if !matches!(e, SyncError::EarlyDataRejected) => {
                // The stream fails once the handshake completes, so the answer is there.
                match self.early_data_answer(Duration::from_millis(100)).await {
                    Some(false) => Err(SyncError::EarlyDataRejected),
                    _ => Err(e),
                }
            }
            r => r,
        }
    }

    /// Whether the relay took this connection's 0-RTT data (false until the handshake
    /// completed, and for a full handshake).
    async fn early_data_taken(&mut self) -> bool {
        self.early_data_answer(Duration::ZERO).await == Some(true)
    }

    /// The relay's answer to this connection's 0-RTT data, waiting up to `wait` for the
    /// handshake to complete: `None` without early data or without an answer yet.
    async fn early_data_answer(&mut self, wait: Duration) -> Option<bool> {
        let answer = match &mut self.early {
            Early::None => return None,
            Early::Answered(a) => return Some(*a),
            Early::Pending(accepted) => tokio::time::timeout(wait, accepted).await.ok()?,
        };
        self.early = Early::Answered(answer);
        Some(answer)
    }

    /// Resolves only when the connection went early and its handshake has not completed
    /// within `limit`.
    async fn handshake_overdue(&mut self, limit: Duration) {
        if matches!(self.early, Early::Pending(_)) && self.early_data_answer(limit).await.is_none()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

fn connection_error(e: quinn::ConnectionError) -> SyncError {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => SyncError::Closed(format!(
            "code {}: {}",
            close.error_code,
            String::from_utf8_lossy(&close.reason)
        )),
        other => SyncError::Connection(other),
    }
}

/// Completes a QUIC/TLS handshake with the relay (checking the pin) and closes again;
/// returns the round-trip time of the handshake.
pub async fn probe(config: &SyncConfig) -> Result<Duration, SyncError> {
    let prep = Prepared::new(config)?;
    let started = Instant::now();
    let Connected { endpoint, conn, .. } = prep.connect(false).await?;
    let rtt = started.elapsed();
    conn.close(0u32.into(), b"probe");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(rtt)
}

/// Forwards local edits of the replica (this process) as wake-ups; ends about half a second
/// after the receiver is dropped.
fn watch_local_edits(client: &Client) -> mpsc::Receiver<()> {
    let events = client.subscribe();
    let (tx, rx) = mpsc::channel(1);
    let spawned = std::thread::Builder::new()
        .name("fieldsync-sync-edits".into())
        .spawn(move || {
            loop {
                match events.recv_timeout(Duration::from_millis(500)) {
                    Ok(e) => {
                        if e.origin == Origin::Local {
                            // Full means a wake-up is already pending: coalesce.
                            let _ = tx.try_send(());
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if tx.is_closed() {
                            return;
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch local edits; relying on the outbox poll");
    }
    rx
}

// ---------------------------------------------------------------------------------------------
// The protocol loop.

/// Something the protocol loop reports.
enum Note<'a> {
    Connected { scopes: &'a [String], role: Role },
    Uploaded(u64),
    Rejected { hash: String, reason: String },
    Received(u64),
    CaughtUp,
    Progress(&'a SyncProgress),
}

enum Until<'a> {
    /// Return once synced ([`sync_now`]).
    Synced,
    /// Run until the stop flag is set ([`SyncHandle`]).
    Stopped(&'a mut watch::Receiver<bool>),
}

enum End {
    Synced,
    Stopped,
    /// The budget ([`SyncConfig::budget`]) is spent and nothing sent waits for an answer.
    BudgetSpent,
    /// Start a new session (to resend changes the relay refused for now).
    Reconnect,
}

/// The result of one blocking protocol step.
struct Step {
    /// What the session produced (messages to send, synced, timers).
    core: ClientStep,
    stats: SessionStats,
    grant: Option<(Vec<String>, Role)>,
    /// Local changes moved to the quarantine by this step, with the reason.
    quarantined: Vec<(String, String)>,
    /// What the step's message meant in documents: see [`Seen`].
    seen: Seen,
    /// The relay's standing orders, once they arrived (protocol 7), with its clock.
    policy: Option<(DevicePolicy, i64)>,
    /// Every upload sent in this session was answered.
    uploads_answered: bool,
}

/// What one message from the relay meant in documents, for the report's domain counts:
/// the documents whose local changes it acknowledged, those it brought, and whether its
/// `Welcome` named another epoch than the replica's cursor (a restored relay).
#[derive(Default)]
struct Seen {
    acknowledged: Vec<(DocId, DocKind)>,
    received: Vec<(DocId, DocKind)>,
    restored: bool,
}

impl Seen {
    /// Before the session handles `msg`: the documents of the local changes an `UploadAck`
    /// accepts (read from the outbox, which the answer empties), and whether a `Welcome`
    /// comes from a relay restored since the last download (the condition under which the
    /// session compares heads and re-sends what the relay lacks). Counting is informational:
    /// a failed read counts nothing.
    fn before(store: &Store, msg: &ClientInput) -> Self {
        let mut seen = Self::default();
        match msg {
            ClientInput::Message(Message::UploadAck { accepted, .. }) => {
                let docs = (|| -> rusqlite::Result<Vec<DocId>> {
                    let mut st = store
                        .reader()
                        .prepare_cached("SELECT doc_id FROM outbox WHERE hash = ?1")?;
                    let mut out = Vec::new();
                    for h in accepted {
                        let id: Option<Vec<u8>> =
                            st.query_row([&h[..]], |r| r.get(0)).optional()?;
                        out.extend(id.and_then(|b| DocId::from_slice(&b)));
                    }
                    Ok(out)
                })();
                seen.acknowledged = kinds_of(store, docs.unwrap_or_default());
            }
            ClientInput::Message(Message::Welcome { epoch, .. }) => {
                seen.restored = ClientSession::load_cursor(store)
                    .ok()
                    .flatten()
                    .is_some_and(|c| c.epoch != *epoch)
                    && store.doc_count().is_ok_and(|n| n > 0);
            }
            _ => {}
        }
        seen
    }
}

/// The documents of a download batch that brought something (not those told to leave).
fn batch_docs(msg: &ClientInput) -> Vec<DocId> {
    match msg {
        ClientInput::Message(Message::Batch { items, .. }) => items
            .iter()
            .filter(|i| !matches!(i.entry, fieldsync_core::protocol::messages::Entry::Leave))
            .map(|i| i.doc_id)
            .collect(),
        _ => Vec::new(),
    }
}

/// Each of `docs` that the replica holds, with its kind.
fn kinds_of(store: &Store, docs: Vec<DocId>) -> Vec<(DocId, DocKind)> {
    if docs.is_empty() {
        return Vec::new();
    }
    let read = (|| -> rusqlite::Result<Vec<(DocId, DocKind)>> {
        let mut st = store
            .reader()
            .prepare_cached("SELECT kind FROM docs WHERE id = ?1")?;
        let mut out = Vec::with_capacity(docs.len());
        for id in docs {
            let kind: Option<Option<i64>> =
                st.query_row([id.as_bytes()], |r| r.get(0)).optional()?;
            if let Some(kind) = kind.flatten().and_then(DocKind::from_code) {
                out.push((id, kind));
            }
        }
        Ok(out)
    })();
    read.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "could not read document kinds for the report");
        Vec::new()
    })
}

/// One connection's protocol state.
/// The replica's identity takes the role the relay grants the device: local edits are then
/// checked, and recorded, at the authority the relay will judge them at (an identity claiming
/// more would write changes the relay refuses).
///
/// The granted scopes are kept too ([`granted_scopes`]), so the replica can tell what the relay
/// will refuse before anything is sent.
fn follow_grant(client: &Client, scopes: &[String], role: Role) {
    status::remember_grant(client, scopes);
    match client.identity() {
        Ok(mut identity) if identity.role != role => {
            tracing::info!(from = %identity.role, to = %role, "the local role follows the relay's grant");
            identity.role = role;
            if let Err(e) = client.set_identity(identity) {
                tracing::warn!(error = %e, "could not save the granted role");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the identity"),
    }
}

/// Under a budget, batches no larger than the budget allows: a download batch's compressed
/// frame is about a third of the bytes it asks for, and an upload batch is sent as it is.
fn metered(mut cfg: SessionConfig, budget: Option<u64>) -> SessionConfig {
    if let Some(b) = budget {
        let b = usize::try_from(b).unwrap_or(usize::MAX);
        cfg.pull_bytes = cfg
            .pull_bytes
            .min(u32::try_from(b.saturating_mul(2)).unwrap_or(u32::MAX))
            .max(16 << 10);
        cfg.upload_bytes = cfg.upload_bytes.min(b).max(16 << 10);
    }
    cfg
}

/// The customers whose documents a download brings first: planned visits of the coming days,
/// then recent work (see [`Store::first_customers`]), read on a blocking thread (the store may
/// be busy with the app's own transaction). A replica that cannot say downloads in the usual
/// order.
async fn first_customers(client: &Client) -> Vec<DocId> {
    let client = client.clone();
    let read = tokio::task::spawn_blocking(move || {
        client.with_store(|s| s.first_customers(now_millis(), MAX_FIRST_CUSTOMERS))
    })
    .await;
    match read {
        Ok(Ok(first)) => first,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not read which customers come first");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read which customers come first");
            Vec::new()
        }
    }
}

/// The clock the sessions' timers run on: milliseconds of a monotonic clock (a wall clock set
/// back would hold a timer, one set forward would fire it early).
fn session_clock() -> Millis {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    Millis::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(Millis::MAX)
}

struct Run {
    client: Client,
    session: Option<ClientSession>,
    stats: SessionStats,
    grant: Option<(Vec<String>, Role)>,
    synced: bool,
    /// The session was synced at least once (the connection worked).
    caught_up_once: bool,
    counters: Arc<Counters>,
    outbox_at_start: u64,
    /// The relay took this connection's first flight as 0-RTT data.
    early_data: bool,
    /// Frame bytes this sync may move ([`SyncConfig::budget`]).
    budget: Option<u64>,
    /// The budget was reached; the session was paused.
    budget_spent: bool,
    /// Documents whose local changes the relay acknowledged, and those downloads brought.
    acknowledged: BTreeMap<DocId, DocKind>,
    received: BTreeMap<DocId, DocKind>,
    /// The relay was restored from a backup since this replica's last download.
    relay_restored: bool,
    /// What the attachment transfers moved.
    transfers: Arc<attachments::TransferStats>,
    /// The relay's orders of this connection were acted on (lease recorded).
    policy_seen: bool,
    /// IT ordered this laptop wiped: carried out once the order's condition holds.
    wipe: Option<WipeOrder>,
    /// When the relay admitted this connection, until its first download batch recorded it
    /// as the start of what the last sync brought ([`SESSION_META_KEY`]); a reconnect that
    /// brings nothing keeps the previous one.
    session_start: Option<Millis>,
}

impl Run {
    /// A run whose session names `first` to the relay (see [`first_customers`]).
    fn new(client: &Client, cfg: &SyncConfig, first: Vec<DocId>) -> Self {
        Self {
            client: client.clone(),
            session: Some(ClientSession::new(SessionConfig {
                agent: cfg.agent.clone(),
                credential: cfg.credential.clone(),
                timers: TimerConfig {
                    response_timeout: cfg.response_timeout,
                    resend_after: cfg.resend_refused_after,
                },
                first,
                ..metered(SessionConfig::default(), cfg.budget)
            })),
            stats: SessionStats::default(),
            grant: None,
            session_start: None,
            synced: false,
            caught_up_once: false,
            counters: Arc::new(Counters::default()),
            outbox_at_start: 0,
            early_data: false,
            budget: cfg.budget,
            budget_spent: false,
            acknowledged: BTreeMap::new(),
            received: BTreeMap::new(),
            relay_restored: false,
            transfers: Arc::default(),
            policy_seen: false,
            wipe: None,
        }
    }

    /// The attachment transfers of a connection of this run (`until_done`: a one-shot sync),
    /// started once `started` says the relay welcomed the laptop.
    fn transfers(
        &self,
        conn: &quinn::Connection,
        until_done: bool,
        started: watch::Receiver<bool>,
        docs_done: watch::Receiver<bool>,
    ) -> Option<JoinHandle<Result<(), SyncError>>> {
        // A metered sync spends its budget on documents; attachments wait for a full one.
        if self.budget.is_some() {
            return None;
        }
        let t = attachments::Transfers {
            client: self.client.clone(),
            conn: conn.clone(),
            until_done,
            stats: self.transfers.clone(),
            docs_done,
        };
        Some(tokio::spawn(t.run(started)))
    }

    fn progress(&self) -> SyncProgress {
        SyncProgress {
            bytes_sent: self.counters.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.counters.bytes_received.load(Ordering::Relaxed),
            outbox_at_start: self.outbox_at_start,
            changes_sent: self.stats.changes_sent,
            changes_acked: self.stats.changes_acked,
            changes_rejected: self.stats.changes_rejected,
            items_received: self.stats.items_received,
            changes_received: self.stats.changes_received,
            caught_up: self.synced,
            download_left: self.session.as_ref().and_then(ClientSession::download_left),
            download_raw_received: self
                .session
                .as_ref()
                .map_or(0, ClientSession::download_raw_received),
        }
    }

    /// Feeds `input` to the session ([`ClientSession::step`]) with the locked store on a
    /// blocking thread.
    async fn step(&mut self, input: ClientInput) -> Result<Step, SyncError> {
        let mut session = self
            .session
            .take()
            .ok_or_else(|| SyncError::Task("the session was lost in an earlier failure".into()))?;
        let client = self.client.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let r = client.with_store(|store| -> Result<Step, SessionError> {
                let mut seen = Seen::before(store, &input);
                let brought = batch_docs(&input);
                let core = session.step(store, input, session_clock())?;
                seen.received = kinds_of(store, brought);
                Ok(Step {
                    seen,
                    core,
                    policy: session.policy().cloned(),
                    uploads_answered: session.uploads_answered(),
                    stats: session.stats().clone(),
                    grant: session.grant().map(|(s, r)| (s.to_vec(), r)),
                    quarantined: session
                        .take_quarantined()
                        .into_iter()
                        .map(|(h, reason)| (hex::encode(h.0), reason))
                        .collect(),
                })
            });
            (session, r)
        })
        .await
        .map_err(|e| SyncError::Task(e.to_string()))?;
        let (session, r) = joined;
        self.session = Some(session);
        let step = r.map_err(|e| match e {
            SessionError::Timeout(d) => SyncError::ResponseTimeout(d),
            e => SyncError::Session(e),
        })?;
        self.stats = step.stats.clone();
        self.acknowledged
            .extend(step.seen.acknowledged.iter().copied());
        self.received.extend(step.seen.received.iter().copied());
        if !step.seen.received.is_empty() {
            // Attachments of the documents that just arrived, in the scopes the laptop
            // downloads in the background.
            let client = self.client.clone();
            let ids: Vec<DocId> = step.seen.received.iter().map(|(id, _)| *id).collect();
            let asked = tokio::task::spawn_blocking(move || client.attachments().prefetch(&ids))
                .await
                .map_err(|e| SyncError::Task(e.to_string()))?;
            if let Err(e) = asked {
                tracing::warn!(error = %e, "cannot queue attachments for download");
            }
        }
        if step.seen.restored && !self.relay_restored {
            // The relay may lack attachments it had: offer every one held here again.
            let client = self.client.clone();
            tokio::task::spawn_blocking(move || client.blobs(|b| b.reoffer_all()))
                .await
                .map_err(|e| SyncError::Task(e.to_string()))??;
        }
        self.relay_restored |= step.seen.restored;
        Ok(step)
    }

    /// A metered sync ([`SyncConfig::budget`], one-shot syncs only): once the frames sent and
    /// received reach the budget, the session sends nothing new; once it is settled, the sync
    /// ends.
    fn spend(&mut self, one_shot: bool) -> Option<End> {
        let budget = self.budget.filter(|_| one_shot)?;
        let session = self.session.as_mut()?;
        let spent = self.counters.bytes_sent.load(Ordering::Relaxed)
            + self.counters.bytes_received.load(Ordering::Relaxed);
        if spent >= budget && !self.budget_spent {
            tracing::info!(
                spent,
                budget,
                "sync budget spent; finishing what is in flight"
            );
            self.budget_spent = true;
            session.pause();
        }
        (self.budget_spent && session.is_settled()).then_some(End::BudgetSpent)
    }

    /// Speaks the protocol on `link` until synced, stopped, or an error.
    async fn drive(
        &mut self,
        link: &mut Link,
        prep: &Prepared,
        mut until: Until<'_>,
        edits: &mut mpsc::Receiver<()>,
        sink: &mut (dyn FnMut(Note<'_>) + Send),
    ) -> Result<End, SyncError> {
        self.counters = link.counters.clone();
        let client = self.client.clone();
        self.outbox_at_start = tokio::task::spawn_blocking(move || client.outbox_len())
            .await
            .map_err(|e| SyncError::Task(e.to_string()))??;
        let hello = self.step(ClientInput::Open).await?;
        for m in &hello.core.send {
            link.send(m)?;
        }
        // The session's next timer (the relay's response deadline, the resend of refused
        // changes), in the clock `session_clock` reads.
        let mut timeout = hello.core.timeout;
        // Other processes may commit to the replica (the CLI while the app syncs): poll it.
        let mut tick = tokio::time::interval(prep.cfg.poll_interval.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        loop {
            let timer = async {
                match timeout {
                    Some(at) => {
                        let wait = u64::try_from(at.saturating_sub(session_clock())).unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                biased;
                stop = async {
                    match &mut until {
                        Until::Stopped(rx) => rx.wait_for(|s| *s).await.map(|_| ()),
                        Until::Synced => std::future::pending().await,
                    }
                } => {
                    let _ = stop;
                    return Ok(End::Stopped);
                }
                inbound = link.inbound.recv() => {
                    let msg = inbound
                        .ok_or_else(|| SyncError::Io("the connection's tasks ended".into()))??;
                    tracing::trace!(msg = msg.name(), "received");
                    let mut notes = Vec::new();
                    let mut brings = false;
                    match &msg {
                        Message::Batch { items, .. } if !items.is_empty() => {
                            notes.push(Note::Received(items.len() as u64));
                            brings = true;
                        }
                        Message::UploadAck { accepted, .. } if !accepted.is_empty() => {
                            notes.push(Note::Uploaded(accepted.len() as u64));
                        }
                        _ => {}
                    }
                    let was_granted = self.grant.is_some();
                    let mut step = self.step(ClientInput::Message(msg)).await?;
                    if !was_granted && let Some((scopes, role)) = &step.grant {
                        follow_grant(&self.client, scopes, *role);
                        self.session_start = Some(now_millis());
                        sink(Note::Connected { scopes, role: *role });
                    }
                    if brings && let Some(at) = self.session_start.take() {
                        status::remember_session_start(&self.client, at);
                    }
                    for n in notes {
                        sink(n);
                    }
                    // Refused by the relay for good, or depending on such a change.
                    for (hash, reason) in std::mem::take(&mut step.quarantined) {
                        sink(Note::Rejected { hash, reason });
                    }
                    step
                }
                Some(()) = edits.recv() => self.step(ClientInput::Poll).await?,
                () = timer => self.step(ClientInput::Poll).await?,
                _ = tick.tick() => self.step(ClientInput::Poll).await?,
            };
            for m in &step.core.send {
                link.send(m)?;
            }
            timeout = step.core.timeout;
            if matches!(until, Until::Stopped(_)) && step.core.resend {
                tracing::info!(
                    "changes refused for now are still waiting; starting a new session to resend them"
                );
                return Ok(End::Reconnect);
            }
            self.grant = step.grant;
            if let Some((policy, relay_time)) = step.policy.clone()
                && !self.policy_seen
            {
                self.policy_seen = true;
                self.wipe = policy.wipe;
                if policy.wipe.is_none() {
                    // Accepted by the relay: the offline lease starts again.
                    let client = self.client.clone();
                    let days = policy.lease_days;
                    tokio::task::spawn_blocking(move || client.record_contact(days, relay_time))
                        .await
                        .map_err(|e| SyncError::Task(e.to_string()))??;
                }
            }
            if let Some(order) = self.wipe
                && (order == WipeOrder::Now
                    || (step.uploads_answered && nothing_to_upload(&self.client).await?))
            {
                return Err(wipe_and_report(&self.client, link).await);
            }
            if let Some(end) = self.spend(matches!(until, Until::Synced)) {
                return Ok(end);
            }
            let became_synced = step.core.synced && !self.synced;
            self.synced = step.core.synced;
            if became_synced {
                self.caught_up_once = true;
                persist_status(&self.client, &prep.relay, Outcome::Finished).await;
                // Caught up: the bytes of attachments whose documents left this laptop go.
                let client = self.client.clone();
                match tokio::task::spawn_blocking(move || client.attachments().collect()).await {
                    Ok(Ok((n, bytes))) if n > 0 => {
                        tracing::info!(
                            attachments = n,
                            bytes,
                            "attachments no document here keeps removed"
                        );
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot collect attachments"),
                    Err(e) => tracing::warn!(error = %e, "cannot collect attachments"),
                }
            }
            let progress = self.progress();
            sink(Note::Progress(&progress));
            if became_synced {
                sink(Note::CaughtUp);
                if matches!(until, Until::Synced) {
                    return Ok(End::Synced);
                }
            }
        }
    }
}

/// Whether every local change and attachment has reached the relay (what a wipe after
/// upload waits for; refused ones never will and go with the replica).
async fn nothing_to_upload(client: &Client) -> Result<bool, SyncError> {
    let client = client.clone();
    tokio::task::spawn_blocking(move || -> Result<bool, ClientError> {
        let attachments_waiting = client
            .attachments()
            .stored()?
            .iter()
            // Refused, for good or for now (over a quota, say): it would hold the wipe up
            // for ever; it goes with the laptop and is counted as unsent.
            .any(|b| b.upload_pending() && !b.stopped && b.refused.is_none());
        Ok(client.outbox_len()? == 0 && !attachments_waiting)
    })
    .await
    .map_err(|e| SyncError::Task(e.to_string()))?
    .map_err(SyncError::Client)
}

/// Carries out IT's wipe order: destroys the replica's keys and then its files
/// ([`crate::vault::shred`]), tells the relay what was destroyed, and waits (briefly) for the
/// relay to record it and close. Returns the error that ends every sync of this replica.
async fn wipe_and_report(client: &Client, link: &mut Link) -> SyncError {
    let c = client.clone();
    let shredded = tokio::task::spawn_blocking(move || {
        let unsent_attachments = c.attachments().waiting().map_or(0, |w| w.upload_files);
        c.with_store(|store| -> Result<WipeReport, String> {
            let unsent_changes = store
                .outbox_summary()
                .map(|o| o.changes)
                .unwrap_or(0)
                .saturating_add(store.quarantine().map(|q| q.len() as u64).unwrap_or(0));
            let path = store.path().to_path_buf();
            let done = crate::vault::shred(&path).map_err(|e| e.to_string())?;
            Ok(WipeReport {
                keys_destroyed: done.keys_destroyed,
                files_removed: done.files_removed,
                unsent_changes,
                unsent_attachments,
            })
        })
    })
    .await;
    let report = match shredded {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return SyncError::Io(format!("carrying out the wipe order: {e}")),
        Err(e) => return SyncError::Task(e.to_string()),
    };
    tracing::warn!(?report, "wiped this laptop's replica at IT's request");
    if link
        .send(&Message::Wiped {
            report: report.clone(),
        })
        .is_ok()
    {
        // The relay closes the connection once it recorded the acknowledgement.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(_)) = link.inbound.recv().await {}
        })
        .await;
    }
    SyncError::Wiped(report)
}

/// QUIC application close code for a connection given up after an error.
const CLOSE_ERROR: u32 = 1;

fn close_reason(e: &SyncError) -> (u32, String) {
    let mut reason = e.to_string();
    if reason.len() > 200 {
        let mut cut = 200;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    (CLOSE_ERROR, reason)
}

// ---------------------------------------------------------------------------------------------
// One-shot sync.

/// Connects to the relay, uploads the outbox, downloads until caught up, closes cleanly.
///
/// Returns once the replica is caught up and every local change sent has been answered:
/// acknowledged, quarantined (refused for good), or refused for now — those stay in the
/// outbox for the next sync and are counted in [`SyncReport::outbox_remaining`].
/// A single attempt: errors are returned, not retried (see [`SyncHandle`] for that).
pub async fn sync_now(client: &Client, config: &SyncConfig) -> Result<SyncReport, SyncError> {
    sync_now_with_progress(client, config, |_| {}).await
}

/// [`sync_now`], calling `progress` after every protocol step.
pub async fn sync_now_with_progress(
    client: &Client,
    config: &SyncConfig,
    mut progress: impl FnMut(&SyncProgress) + Send,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let prep = Prepared::new(config)?;
    let first = first_customers(client).await;
    let mut run = Run::new(client, config, first.clone());
    let mut edits = watch_local_edits(client);
    let mut duration = Duration::ZERO;
    let result = async {
        let mut early = true;
        loop {
            let mut finished = Instant::now();
            let r = connect_and_sync(
                &prep,
                &mut run,
                &mut edits,
                &mut progress,
                early,
                &mut finished,
            )
            .await;
            match r {
                // Nothing sent early reached the relay: start over with a full handshake.
                Err(SyncError::EarlyDataRejected) if early => {
                    tracing::debug!("early data refused; connecting again with a full handshake");
                    early = false;
                    run = Run::new(client, config, first.clone());
                }
                r => {
                    duration = finished.duration_since(started);
                    return r;
                }
            }
        }
    }
    .await;
    match result {
        Ok(_) => {
            let client2 = client.clone();
            let (outbox_remaining, outbox_bytes_remaining) =
                tokio::task::spawn_blocking(move || client2.outbox_summary())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map_or((0, 0), |o| (o.changes, o.bytes));
            let s = &run.stats;
            let c = &run.counters;
            let (scopes, role) = run
                .grant
                .clone()
                .map_or((Vec::new(), None), |(s, r)| (s, Some(r)));
            let download_waiting = run
                .session
                .as_ref()
                .is_some_and(ClientSession::download_waiting);
            let (waiting_documents, waiting_bytes) = run
                .session
                .as_ref()
                .and_then(ClientSession::download_left)
                .unwrap_or_default();
            if run.budget_spent && download_waiting {
                let outcome = Outcome::StoppedAtBudget {
                    documents: waiting_documents,
                    bytes: waiting_bytes,
                };
                persist_status(client, &prep.relay, outcome).await;
            }
            Ok(SyncReport {
                relay: prep.relay.clone(),
                scopes,
                role,
                changes_sent: s.changes_sent,
                changes_acked: s.changes_acked,
                changes_rejected: s.changes_rejected,
                items_received: s.items_received,
                changes_received: s.changes_received,
                snapshots_received: s.snapshots_received,
                replaced: s.replaced,
                items_failed: s.items_failed,
                batches: s.batches,
                repaired: s.repaired,
                relay_restored: run.relay_restored,
                sent_documents: KindCounts::of(&run.acknowledged),
                received_documents: KindCounts::of(&run.received),
                bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
                bytes_received: c.bytes_received.load(Ordering::Relaxed),
                frames_sent: c.frames_sent.load(Ordering::Relaxed),
                frames_received: c.frames_received.load(Ordering::Relaxed),
                outbox_remaining,
                outbox_bytes_remaining,
                budget_spent: run.budget_spent,
                download_waiting,
                download_waiting_documents: if download_waiting {
                    waiting_documents
                } else {
                    0
                },
                download_waiting_bytes: if download_waiting { waiting_bytes } else { 0 },
                early_data: run.early_data,
                attachments_uploaded: run.transfers.uploaded_files.load(Ordering::Relaxed),
                attachment_bytes_sent: run.transfers.uploaded_bytes.load(Ordering::Relaxed),
                attachments_downloaded: run.transfers.downloaded_files.load(Ordering::Relaxed),
                attachment_bytes_received: run.transfers.downloaded_bytes.load(Ordering::Relaxed),
                attachments_waiting: client.attachments().waiting().unwrap_or_default(),
                duration,
            })
        }
        Err(e) => {
            persist_status(client, &prep.relay, Outcome::Failed(e.to_string())).await;
            Err(e)
        }
    }
}

/// One connection of [`sync_now`]: connects (`early`: see [`Prepared::connect`]), syncs until
/// synced, and closes cleanly; `finished` is when the sync was done, before the close is given
/// a moment to reach the relay.
async fn connect_and_sync(
    prep: &Prepared,
    run: &mut Run,
    edits: &mut mpsc::Receiver<()>,
    progress: &mut (impl FnMut(&SyncProgress) + Send),
    early: bool,
    finished: &mut Instant,
) -> Result<End, SyncError> {
    let mut connected = prep.connect(early).await?;
    let conn = connected.conn.clone();
    tracing::debug!(relay = %prep.relay, early, "connected");
    let mut link = match Link::open(conn.clone()).await {
        Ok(l) => l,
        Err(e) => {
            conn.close(CLOSE_ERROR.into(), b"stream");
            return Err(e);
        }
    };
    let (started, started_rx) = watch::channel(false);
    let (docs_done, docs_done_rx) = watch::channel(false);
    let mut files = run.transfers(&conn, true, started_rx, docs_done_rx);
    let mut sink = |n: Note<'_>| match n {
        Note::Progress(p) => progress(p),
        Note::Connected { .. } => {
            let _ = started.send(true);
        }
        _ => {}
    };
    let r = connected
        .run_session(prep, async {
            let end = run
                .drive(&mut link, prep, Until::Synced, edits, &mut sink)
                .await?;
            let _ = docs_done.send(true);
            // Synced: the attachments move on their own stream until none is left.
            if let Some(f) = files.as_mut() {
                f.await.map_err(|e| SyncError::Task(e.to_string()))??;
            }
            Ok(end)
        })
        .await;
    if let Some(f) = files {
        f.abort();
    }
    match &r {
        Ok(_) => link.close(0, "synced").await,
        Err(e) => {
            let (code, reason) = close_reason(e);
            link.close(code, &reason).await;
        }
    }
    *finished = Instant::now();
    run.early_data = connected.early_data_taken().await;
    tracing::debug!(ok = r.is_ok(), early_data = run.early_data, "sync finished");
    // Let the close reach the relay (retransmitted if lost); not part of the sync time.
    let _ = tokio::time::timeout(Duration::from_secs(2), connected.endpoint.wait_idle()).await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldsync_core::protocol::ErrorCode;

    #[test]
    fn relay_addresses_split_into_host_and_port() {
        assert_eq!(
            split_host("relay.example:4433"),
            ("relay.example", Some("4433"))
        );
        assert_eq!(split_host("127.0.0.1:9"), ("127.0.0.1", Some("9")));
        assert_eq!(split_host("[::1]:4433"), ("::1", Some("4433")));
        assert_eq!(split_host("relay.example"), ("relay.example", None));
        assert_eq!(split_host("::1"), ("::1", None));
        let mut cfg = SyncConfig::new("relay.example:4433", "00".repeat(32));
        assert_eq!(cfg.effective_server_name(), "relay.example");
        cfg.server_name = "other.example".into();
        assert_eq!(cfg.effective_server_name(), "other.example");
    }

    #[test]
    fn bad_configurations_are_not_retryable() {
        let pin = "ab".repeat(32);
        for (relay, pin) in [
            ("relay.example", pin.as_str()),
            ("relay.example:notaport", pin.as_str()),
            (":4433", pin.as_str()),
            ("relay.example:4433", "abc"),
        ] {
            let err = Prepared::new(&SyncConfig::new(relay, pin))
                .err()
                .unwrap_or_else(|| panic!("{relay} {pin} accepted"));
            assert!(matches!(err, SyncError::Config(_)), "{err:?}");
            assert!(!err.is_retryable());
        }
        assert!(Prepared::new(&SyncConfig::new("relay.example:4433", pin)).is_ok());
        let unauthorized = SyncError::Session(SessionError::Relay {
            code: ErrorCode::Unauthorized,
            reason: "no".into(),
        });
        assert!(!unauthorized.is_retryable());
        assert!(SyncError::Closed("bye".into()).is_retryable());
        assert!(SyncError::ResponseTimeout(Duration::from_secs(1)).is_retryable());
    }

    #[test]
    fn config_debug_hides_the_credential() {
        let mut cfg = SyncConfig::new("relay.example:4433", "ab".repeat(32));
        cfg.credential = Some("s3cret".into());
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn report_serialises_duration_in_ms() {
        let r = SyncReport {
            duration: Duration::from_millis(1500),
            ..SyncReport::default()
        };
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["duration_ms"], 1500);
        let back: SyncReport = serde_json::from_value(v).expect("back");
        assert_eq!(back, r);
    }

    #[tokio::test]
    async fn unreachable_relay_times_out() {
        // A bound UDP socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let addr = silent.local_addr().expect("addr");
        let mut cfg = SyncConfig::new(addr.to_string(), "ab".repeat(32));
        cfg.connect_timeout = Duration::from_millis(300);
        let err = probe(&cfg).await.expect_err("nobody answers");
        assert!(matches!(err, SyncError::ConnectTimeout { .. }), "{err:?}");
        assert!(err.is_retryable());
    }
}

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

pub mod backoff;
pub mod credential;
pub mod tls;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldsync_core::Role;
use fieldsync_core::ids::{Millis, now_millis};
use fieldsync_core::protocol::client::ClientConfig as SessionConfig;
use fieldsync_core::protocol::{
    ClientSession, CodecError, Message, SessionError, SessionStats, codec,
};
use fieldsync_core::store::{Origin, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;

pub use backoff::{Backoff, BackoffConfig};
pub use credential::{
    Credential, Enrolled, credential_path, enrol, enrol_replica, load_credential, read_credential,
    write_credential,
};
pub use fieldsync_core::protocol::EnrolToken;
pub use tls::{Fingerprint, PinMismatch};

use crate::{Client, ClientError};

/// Store meta key holding the last sync outcome ([`PersistedStatus`], JSON).
pub const STATUS_META_KEY: &str = "sync.status";

/// How to reach and authenticate the relay, and how patiently.
#[derive(Clone)]
pub struct SyncConfig {
    /// The relay's `host:port` (a name is resolved on every connection attempt).
    pub relay: String,
    /// The TLS server name sent to the relay. Empty: the host part of [`SyncConfig::relay`].
    /// With pinning the certificate's names are not checked, so this only matters for
    /// relays behind name-based routing.
    pub server_name: String,
    /// Hex SHA-256 of the relay certificate's DER encoding (colons and case are ignored).
    pub pin: String,
    /// The device credential given at enrolment, if the relay requires one.
    pub credential: Option<String>,
    /// Reconnect delays of [`SyncHandle`].
    pub backoff: BackoffConfig,
    /// Longest wait for name resolution plus the QUIC/TLS handshake.
    pub connect_timeout: Duration,
    /// QUIC idle timeout: a connection silent this long (keep-alives included) is dead.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval (well below the idle timeout and typical NAT timeouts).
    pub keep_alive: Duration,
    /// While an answer from the relay is due (a download or an upload outstanding), the
    /// longest silence before the connection is given up and retried.
    pub response_timeout: Duration,
    /// How often the outbox is checked for changes committed by other processes on the same
    /// replica file (edits through this process are noticed at once).
    pub poll_interval: Duration,
    /// A [`SyncHandle`] whose connection is caught up while the outbox still holds changes
    /// the relay refused *for now* (e.g. a dependency it did not have yet) reconnects after
    /// this long, so they are sent again (a session sends each change once).
    pub resend_refused_after: Duration,
    /// Software name sent to the relay.
    pub agent: String,
}

impl std::fmt::Debug for SyncConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncConfig")
            .field("relay", &self.relay)
            .field("server_name", &self.server_name)
            .field("pin", &self.pin)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("response_timeout", &self.response_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("resend_refused_after", &self.resend_refused_after)
            .field("agent", &self.agent)
            .finish()
    }
}

impl SyncConfig {
    /// A configuration for the relay at `relay` (`host:port`) whose certificate has the
    /// SHA-256 fingerprint `pin`, with default timeouts: connect 10 s, idle 30 s, keep-alive
    /// 5 s, response 60 s, outbox poll 2 s, backoff 200 ms → 60 s, resend of changes
    /// refused for now after 60 s.
    pub fn new(relay: impl Into<String>, pin: impl Into<String>) -> Self {
        Self {
            relay: relay.into(),
            server_name: String::new(),
            pin: pin.into(),
            credential: None,
            backoff: BackoffConfig::default(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_secs(2),
            resend_refused_after: Duration::from_secs(60),
            agent: format!("fieldsync-client/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// The server name actually used: [`SyncConfig::server_name`] or the relay's host.
    pub fn effective_server_name(&self) -> String {
        if !self.server_name.trim().is_empty() {
            return self.server_name.trim().to_string();
        }
        split_host(&self.relay).0.to_string()
    }
}

/// Splits `host:port` (`[v6]:port` too) into host and port text.
fn split_host(relay: &str) -> (&str, Option<&str>) {
    let relay = relay.trim();
    if let Some(rest) = relay.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        return (host, tail.strip_prefix(':'));
    }
    match relay.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (relay, None),
    }
}

/// Everything that can end a sync attempt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The configuration cannot work (bad pin, malformed address, …). Not retryable.
    #[error("invalid sync configuration: {0}")]
    Config(String),
    /// The relay's name did not resolve.
    #[error("cannot resolve the relay address {relay}: {reason}")]
    Resolve {
        /// The configured address.
        relay: String,
        /// Why.
        reason: String,
    },
    /// No handshake within [`SyncConfig::connect_timeout`].
    #[error("no answer from the relay at {relay} within {timeout:?}")]
    ConnectTimeout {
        /// The configured address.
        relay: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The relay presented another certificate than the pinned one. Retried (a captive
    /// portal may be in the way), but needs a new pin if the relay's certificate changed.
    #[error(transparent)]
    PinMismatch(#[from] PinMismatch),
    /// The QUIC connection failed or was lost.
    #[error("connection to the relay failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The relay closed the connection or ended the stream.
    #[error("the relay closed the connection: {0}")]
    Closed(String),
    /// Local networking failed (socket, stream).
    #[error("network error: {0}")]
    Io(String),
    /// The relay sent bytes that are not a valid frame.
    #[error("bad frame from the relay: {0}")]
    Codec(#[from] CodecError),
    /// The protocol session failed, or the relay refused it. Retryable unless the device is
    /// not authorised or the relay speaks another protocol version.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The local replica failed.
    #[error("replica: {0}")]
    Store(#[from] StoreError),
    /// The local replica failed (through the client API).
    #[error("replica: {0}")]
    Client(#[from] ClientError),
    /// The relay did not answer within [`SyncConfig::response_timeout`].
    #[error("the relay did not answer within {0:?}")]
    ResponseTimeout(Duration),
    /// An internal task failed.
    #[error("sync task failed: {0}")]
    Task(String),
    /// The device credential file could not be read or written. Not retryable.
    #[error("device credential: {0}")]
    Credential(String),
}

impl SyncError {
    /// Whether trying again later can succeed. False for configuration errors, a device the
    /// relay does not authorise, and an incompatible protocol version.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Config(_) | Self::Credential(_) => false,
            Self::Session(e) => e.is_retryable(),
            _ => true,
        }
    }
}

/// Totals of one [`sync_now`] run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// The relay address.
    pub relay: String,
    /// Scopes the relay granted.
    pub scopes: Vec<String>,
    /// Role the relay granted.
    pub role: Option<Role>,
    /// Local changes uploaded.
    pub changes_sent: u64,
    /// Local changes acknowledged by the relay.
    pub changes_acked: u64,
    /// Local changes refused for good (now in the quarantine).
    pub changes_rejected: u64,
    /// Download items applied (change groups, snapshots, removals).
    pub items_received: u64,
    /// Remote changes new to this replica.
    pub changes_received: u64,
    /// Document snapshots merged.
    pub snapshots_received: u64,
    /// Documents whose history the relay replaced (IT trimmed them): the replica took the new
    /// history and carried over its unsent edits.
    #[serde(default)]
    pub replaced: u64,
    /// Download items that could not be applied (skipped and logged).
    pub items_failed: u64,
    /// Download batches applied.
    pub batches: u64,
    /// Changes re-uploaded because the relay had lost them (repair).
    pub repaired: u64,
    /// Frame bytes written to the relay (length prefixes included).
    pub bytes_sent: u64,
    /// Frame bytes read from the relay (length prefixes included).
    pub bytes_received: u64,
    /// Frames written.
    pub frames_sent: u64,
    /// Frames read.
    pub frames_received: u64,
    /// Local changes still waiting (refused for now and kept for a later sync, or committed
    /// after the sync finished).
    pub outbox_remaining: u64,
    /// Wall-clock time from the first connection attempt to the clean close.
    #[serde(with = "millis", rename = "duration_ms")]
    pub duration: Duration,
}

/// Running totals during [`sync_now_with_progress`], for progress bars.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncProgress {
    /// Frame bytes written so far.
    pub bytes_sent: u64,
    /// Frame bytes read so far.
    pub bytes_received: u64,
    /// Outbox length when the sync started (the upload's total).
    pub outbox_at_start: u64,
    /// Local changes uploaded so far.
    pub changes_sent: u64,
    /// Local changes acknowledged so far.
    pub changes_acked: u64,
    /// Local changes refused for good so far.
    pub changes_rejected: u64,
    /// Download items applied so far.
    pub items_received: u64,
    /// Remote changes new to this replica so far.
    pub changes_received: u64,
    /// Download caught up.
    pub caught_up: bool,
}

impl SyncProgress {
    /// Field-wise sum of the counters (for totals over several connections).
    fn plus(&self, o: &Self) -> Self {
        Self {
            bytes_sent: self.bytes_sent + o.bytes_sent,
            bytes_received: self.bytes_received + o.bytes_received,
            outbox_at_start: o.outbox_at_start,
            changes_sent: self.changes_sent + o.changes_sent,
            changes_acked: self.changes_acked + o.changes_acked,
            changes_rejected: self.changes_rejected + o.changes_rejected,
            items_received: self.items_received + o.items_received,
            changes_received: self.changes_received + o.changes_received,
            caught_up: o.caught_up,
        }
    }
}

/// What a [`SyncHandle`] reports as it goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SyncEvent {
    /// Opening a connection.
    Connecting,
    /// The relay accepted the device.
    Connected {
        /// Scopes the device sees.
        scopes: Vec<String>,
        /// The device's role.
        role: Role,
    },
    /// The relay acknowledged `n` local changes.
    Uploaded {
        /// Changes acknowledged.
        n: u64,
    },
    /// A download batch with `items` entries was applied.
    Received {
        /// Items applied.
        items: u64,
    },
    /// Caught up with the relay and every local change answered. Sent again after later
    /// uploads or downloads complete.
    CaughtUp,
    /// The connection (or the attempt) ended with an error; a retry follows unless the
    /// error is not retryable, in which case [`SyncEvent::Stopped`] follows.
    Disconnected {
        /// What went wrong.
        error: String,
    },
    /// The relay refused a local change for good (or the change depends on one it refused);
    /// it was moved to the quarantine (`Store::quarantine`, `fieldsync quarantine`).
    Rejected {
        /// Hex change hash.
        hash: String,
        /// The relay's reason.
        reason: String,
    },
    /// The handle stopped (asked to, or after a non-retryable error).
    Stopped,
}

/// Where a [`SyncHandle`] stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// Connecting to the relay.
    Connecting,
    /// Connected, exchanging data.
    Syncing,
    /// Connected, caught up, every local change answered; live.
    CaughtUp,
    /// Waiting before the next attempt.
    Waiting,
    /// Stopped.
    Stopped,
}

/// A snapshot of a [`SyncHandle`]'s state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The relay address.
    pub relay: String,
    /// Current state.
    pub state: SyncState,
    /// Scopes granted on the current (or last) connection.
    pub scopes: Vec<String>,
    /// Role granted on the current (or last) connection.
    pub role: Option<Role>,
    /// When the replica last caught up completely (ms since the Unix epoch).
    pub last_sync_finished_at: Option<Millis>,
    /// The last error, cleared when a sync finishes.
    pub last_error: Option<String>,
    /// The handle stopped because of an error that retrying cannot fix.
    pub fatal: bool,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// When waiting: the delay before the next attempt, in ms.
    pub retry_in_ms: Option<u64>,
    /// Connections established since start.
    pub connections: u64,
    /// Totals since start.
    pub changes_sent: u64,
    /// Local changes acknowledged since start.
    pub changes_acked: u64,
    /// Local changes quarantined since start.
    pub changes_rejected: u64,
    /// Download items applied since start.
    pub items_received: u64,
    /// Frame bytes written since start.
    pub bytes_sent: u64,
    /// Frame bytes read since start.
    pub bytes_received: u64,
}

impl SyncStatus {
    fn new(relay: String) -> Self {
        Self {
            relay,
            state: SyncState::Connecting,
            scopes: Vec::new(),
            role: None,
            last_sync_finished_at: None,
            last_error: None,
            fatal: false,
            failures: 0,
            retry_in_ms: None,
            connections: 0,
            changes_sent: 0,
            changes_acked: 0,
            changes_rejected: 0,
            items_received: 0,
            bytes_sent: 0,
            bytes_received: 0,
        }
    }
}

/// The last sync outcome as stored in the replica ([`STATUS_META_KEY`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedStatus {
    /// When a sync last finished (caught up, outbox answered), ms since the Unix epoch.
    pub last_sync_finished_at: Option<Millis>,
    /// The error of the last attempt, if it failed (kept until a sync finishes).
    pub last_error: Option<String>,
    /// The relay of the last attempt.
    pub relay: Option<String>,
    /// When the last attempt ended, ms since the Unix epoch.
    #[serde(default)]
    pub last_attempt_at: Option<Millis>,
}

/// Reads the last sync outcome stored in the replica, if any.
pub fn load_status(client: &Client) -> Result<Option<PersistedStatus>, ClientError> {
    client.with_store(|store| read_status(store))
}

fn read_status(store: &Store) -> Result<Option<PersistedStatus>, ClientError> {
    match store.meta(STATUS_META_KEY)? {
        None => Ok(None),
        // A status written by another version that does not parse is not worth failing for.
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).unwrap_or_default())),
    }
}

fn write_status(
    store: &mut Store,
    relay: &str,
    outcome: Result<(), &str>,
) -> Result<(), ClientError> {
    let mut st = read_status(store)?.unwrap_or_default();
    let now = now_millis();
    st.relay = Some(relay.to_string());
    st.last_attempt_at = Some(now);
    match outcome {
        Ok(()) => {
            st.last_sync_finished_at = Some(now);
            st.last_error = None;
        }
        Err(e) => st.last_error = Some(e.to_string()),
    }
    let json = serde_json::to_vec(&st).map_err(|e| ClientError::Corrupt(e.to_string()))?;
    store.set_meta(STATUS_META_KEY, &json)?;
    Ok(())
}

/// Records an outcome, logging instead of failing (the sync result matters more).
async fn persist_status(client: &Client, relay: &str, outcome: Result<(), String>) {
    let client = client.clone();
    let relay = relay.to_string();
    let r = tokio::task::spawn_blocking(move || {
        client.with_store(|store| {
            write_status(
                store,
                &relay,
                outcome.as_ref().map(|_| ()).map_err(String::as_str),
            )
        })
    })
    .await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not record the sync status"),
        Err(e) => tracing::warn!(error = %e, "could not record the sync status"),
    }
}

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
    async fn connect(&self) -> Result<(quinn::Endpoint, quinn::Connection), SyncError> {
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
            match tokio::time::timeout_at(deadline, connecting).await {
                Ok(Ok(conn)) => return Ok((endpoint, conn)),
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
    let (endpoint, conn) = prep.connect().await?;
    let rtt = started.elapsed();
    conn.close(0u32.into(), b"probe");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(rtt)
}

#[derive(Debug, Default)]
struct Counters {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
}

/// One connection's stream, split into a reader task and a writer task so the protocol loop
/// never blocks on the network. Both report failures on the inbound channel.
struct Link {
    conn: quinn::Connection,
    inbound: mpsc::Receiver<Result<Message, SyncError>>,
    outbound: Option<mpsc::UnboundedSender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    reader: JoinHandle<()>,
    counters: Arc<Counters>,
}

impl Link {
    async fn open(conn: quinn::Connection) -> Result<Self, SyncError> {
        let (send, recv) = conn.open_bi().await.map_err(connection_error)?;
        let counters = Arc::new(Counters::default());
        let (in_tx, inbound) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_frames(recv, in_tx.clone(), counters.clone()));
        let writer = tokio::spawn(write_frames(send, out_rx, in_tx, counters.clone()));
        Ok(Self {
            conn,
            inbound,
            outbound: Some(out_tx),
            writer: Some(writer),
            reader,
            counters,
        })
    }

    fn send(&self, msg: &Message) -> Result<(), SyncError> {
        let frame = codec::encode(msg)?;
        tracing::trace!(msg = msg.name(), bytes = frame.len(), "send");
        self.outbound
            .as_ref()
            .and_then(|o| o.send(frame).ok())
            .ok_or_else(|| SyncError::Io("the connection's writer stopped".into()))
    }

    /// Finishes the stream after everything queued is written, then closes the connection.
    /// On a clean close (`code` 0) the relay gets a moment to finish its side too, so
    /// neither end sees the other vanish.
    async fn close(mut self, code: u32, reason: &str) {
        self.outbound = None;
        if let Some(w) = self.writer.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), w).await;
        }
        if code == 0 {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                // Anything still arriving is dropped; the next session fetches it again.
                while let Some(Ok(_)) = self.inbound.recv().await {}
            })
            .await;
        }
        self.conn.close(code.into(), reason.as_bytes());
        self.reader.abort();
    }
}

async fn read_frames(
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Result<Message, SyncError>>,
    counters: Arc<Counters>,
) {
    let read_err = |e: quinn::ReadExactError| match e {
        quinn::ReadExactError::FinishedEarly(0) => {
            SyncError::Closed("the relay ended the session".into())
        }
        quinn::ReadExactError::FinishedEarly(n) => SyncError::Closed(format!(
            "the relay ended the stream inside a frame ({n} bytes)"
        )),
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
            connection_error(c)
        }
        quinn::ReadExactError::ReadError(other) => SyncError::Io(other.to_string()),
    };
    loop {
        let mut len = [0u8; 4];
        let r = match recv.read_exact(&mut len).await {
            Err(e) => Err(read_err(e)),
            Ok(()) => match codec::check_len(u32::from_be_bytes(len)) {
                Err(e) => Err(SyncError::Codec(e)),
                Ok(n) => {
                    let mut body = vec![0u8; n];
                    match recv.read_exact(&mut body).await {
                        Err(quinn::ReadExactError::FinishedEarly(k)) => Err(SyncError::Closed(
                            format!("the relay ended the stream inside a frame ({k} of {n} bytes)"),
                        )),
                        Err(e) => Err(read_err(e)),
                        Ok(()) => {
                            counters
                                .bytes_received
                                .fetch_add(4 + n as u64, Ordering::Relaxed);
                            counters.frames_received.fetch_add(1, Ordering::Relaxed);
                            codec::decode(&body).map_err(SyncError::Codec)
                        }
                    }
                }
            },
        };
        let failed = r.is_err();
        if tx.send(r).await.is_err() || failed {
            return;
        }
    }
}

async fn write_frames(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    errors: mpsc::Sender<Result<Message, SyncError>>,
    counters: Arc<Counters>,
) {
    while let Some(frame) = rx.recv().await {
        if let Err(e) = send.write_all(&frame).await {
            let err = match e {
                quinn::WriteError::ConnectionLost(c) => connection_error(c),
                other => SyncError::Io(other.to_string()),
            };
            let _ = errors.send(Err(err)).await;
            return;
        }
        counters
            .bytes_sent
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        counters.frames_sent.fetch_add(1, Ordering::Relaxed);
    }
    let _ = send.finish();
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
    /// Start a new session (to resend changes the relay refused for now).
    Reconnect,
}

/// The result of one blocking protocol step.
struct Step {
    out: Vec<Message>,
    synced: bool,
    /// Changes in the outbox, refused-for-now ones included.
    outbox: i64,
    stats: SessionStats,
    grant: Option<(Vec<String>, Role)>,
    /// Local changes moved to the quarantine by this step, with the reason.
    quarantined: Vec<(String, String)>,
}

/// One connection's protocol state.
/// The replica's identity takes the role the relay grants the device: local edits are then
/// checked, and recorded, at the authority the relay will judge them at (an identity claiming
/// more would write changes the relay refuses).
fn follow_granted_role(client: &Client, role: Role) {
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
}

impl Run {
    fn new(client: &Client, cfg: &SyncConfig) -> Self {
        Self {
            client: client.clone(),
            session: Some(ClientSession::new(SessionConfig {
                agent: cfg.agent.clone(),
                credential: cfg.credential.clone(),
                ..SessionConfig::default()
            })),
            stats: SessionStats::default(),
            grant: None,
            synced: false,
            caught_up_once: false,
            counters: Arc::new(Counters::default()),
            outbox_at_start: 0,
        }
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
        }
    }

    /// Runs `f` on the session and the locked store on a blocking thread, then asks for the
    /// next upload (if none is in flight) and whether the session is synced.
    async fn step(
        &mut self,
        f: impl FnOnce(&mut ClientSession, &mut Store) -> Result<Vec<Message>, SessionError>
        + Send
        + 'static,
    ) -> Result<Step, SyncError> {
        let mut session = self
            .session
            .take()
            .ok_or_else(|| SyncError::Task("the session was lost in an earlier failure".into()))?;
        let client = self.client.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let r = client.with_store(|store| -> Result<Step, SessionError> {
                let mut out = f(&mut session, store)?;
                if let Some(up) = session.poll_upload(store)? {
                    out.push(up);
                }
                Ok(Step {
                    out,
                    synced: session.is_synced(store)?,
                    outbox: store.outbox_len()?,
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
        let step = r?;
        self.stats = step.stats.clone();
        Ok(step)
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
        let hello = self.step(|s, store| Ok(vec![s.hello(store)])).await?;
        for m in &hello.out {
            link.send(m)?;
        }
        let mut tick = tokio::time::interval(prep.cfg.poll_interval.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        let mut last_heard = Instant::now();
        // Since when the session has been synced with changes still waiting in the outbox.
        let mut leftovers_since: Option<Instant> = None;
        loop {
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
                    last_heard = Instant::now();
                    tracing::trace!(msg = msg.name(), "received");
                    let mut notes = Vec::new();
                    match &msg {
                        Message::Batch { items, .. } if !items.is_empty() => {
                            notes.push(Note::Received(items.len() as u64));
                        }
                        Message::UploadAck { accepted, .. } if !accepted.is_empty() => {
                            notes.push(Note::Uploaded(accepted.len() as u64));
                        }
                        _ => {}
                    }
                    let was_granted = self.grant.is_some();
                    let mut step = self.step(move |s, store| s.handle(store, msg)).await?;
                    if !was_granted && let Some((scopes, role)) = &step.grant {
                        follow_granted_role(&self.client, *role);
                        sink(Note::Connected { scopes, role: *role });
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
                Some(()) = edits.recv() => self.step(|_, _| Ok(Vec::new())).await?,
                _ = tick.tick() => {
                    if !self.synced && last_heard.elapsed() > prep.cfg.response_timeout {
                        return Err(SyncError::ResponseTimeout(prep.cfg.response_timeout));
                    }
                    if matches!(until, Until::Stopped(_))
                        && leftovers_since.is_some_and(|t| t.elapsed() >= prep.cfg.resend_refused_after)
                    {
                        tracing::info!("changes refused for now are still waiting; starting a new session to resend them");
                        return Ok(End::Reconnect);
                    }
                    self.step(|_, _| Ok(Vec::new())).await?
                }
            };
            for m in &step.out {
                link.send(m)?;
            }
            if self.synced && !step.synced {
                // Something new is under way (a local edit went out, a push is being
                // downloaded): the relay owes an answer from now on.
                last_heard = Instant::now();
            }
            leftovers_since = match (step.synced && step.outbox > 0, leftovers_since) {
                (true, Some(t)) => Some(t),
                (true, None) => Some(Instant::now()),
                (false, _) => None,
            };
            self.grant = step.grant;
            let became_synced = step.synced && !self.synced;
            self.synced = step.synced;
            if became_synced {
                self.caught_up_once = true;
                persist_status(&self.client, &prep.relay, Ok(())).await;
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
    let mut run = Run::new(client, config);
    let mut edits = watch_local_edits(client);
    let mut duration = Duration::ZERO;
    let result = async {
        let (endpoint, conn) = prep.connect().await?;
        tracing::debug!(elapsed = ?started.elapsed(), relay = %prep.relay, "connected");
        let mut link = match Link::open(conn.clone()).await {
            Ok(l) => l,
            Err(e) => {
                conn.close(CLOSE_ERROR.into(), b"stream");
                return Err(e);
            }
        };
        let mut sink = |n: Note<'_>| {
            if let Note::Progress(p) = n {
                progress(p);
            }
        };
        let r = run
            .drive(&mut link, &prep, Until::Synced, &mut edits, &mut sink)
            .await;
        match &r {
            Ok(_) => link.close(0, "synced").await,
            Err(e) => {
                let (code, reason) = close_reason(e);
                link.close(code, &reason).await;
            }
        }
        duration = started.elapsed();
        tracing::debug!(elapsed = ?duration, ok = r.is_ok(), "sync finished");
        // Let the close reach the relay (retransmitted if lost); not part of the sync time.
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        r
    }
    .await;
    match result {
        Ok(_) => {
            let client2 = client.clone();
            let outbox_remaining = tokio::task::spawn_blocking(move || client2.outbox_len())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let s = &run.stats;
            let c = &run.counters;
            let (scopes, role) = run
                .grant
                .clone()
                .map_or((Vec::new(), None), |(s, r)| (s, Some(r)));
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
                bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
                bytes_received: c.bytes_received.load(Ordering::Relaxed),
                frames_sent: c.frames_sent.load(Ordering::Relaxed),
                frames_received: c.frames_received.load(Ordering::Relaxed),
                outbox_remaining,
                duration,
            })
        }
        Err(e) => {
            persist_status(client, &prep.relay, Err(e.to_string())).await;
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Background sync.

struct Shared {
    status: Mutex<SyncStatus>,
    events: broadcast::Sender<SyncEvent>,
    first: Mutex<Option<broadcast::Receiver<SyncEvent>>>,
    nudge: Notify,
}

impl Shared {
    fn emit(&self, e: SyncEvent) {
        tracing::debug!(event = ?e, "sync");
        let _ = self.events.send(e);
    }

    fn update(&self, f: impl FnOnce(&mut SyncStatus)) {
        let mut g = match self.status.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g);
    }
}

/// A background task that keeps the replica in sync with the relay. See the module docs.
///
/// Dropping the handle stops the task as well (without waiting for it).
pub struct SyncHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHandle")
            .field("status", &self.status())
            .finish()
    }
}

impl SyncHandle {
    /// Starts syncing `client` with the relay in a tokio task.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn start(client: Client, config: SyncConfig) -> Self {
        let (events, first) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            status: Mutex::new(SyncStatus::new(config.relay.trim().to_string())),
            events,
            first: Mutex::new(Some(first)),
            nudge: Notify::new(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(background(client, config, shared.clone(), stop_rx));
        Self {
            shared,
            stop,
            task: Some(task),
        }
    }

    /// Receives the handle's events. The first call gets every event since
    /// [`SyncHandle::start`]; later calls get events from then on. A receiver that falls
    /// more than 1024 events behind loses the oldest ([`broadcast::error::RecvError::Lagged`]).
    pub fn subscribe(&self) -> broadcast::Receiver<SyncEvent> {
        let first = match self.shared.first.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        first.unwrap_or_else(|| self.shared.events.subscribe())
    }

    /// The current state.
    pub fn status(&self) -> SyncStatus {
        match self.shared.status.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Cuts a reconnect wait short and checks the outbox now.
    pub fn nudge(&self) {
        self.shared.nudge.notify_one();
    }

    /// Stops the task: closes the connection cleanly and waits for it to end.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "the sync task failed");
        }
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn background(
    client: Client,
    config: SyncConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let fatal = |shared: &Shared, e: &SyncError| {
        shared.emit(SyncEvent::Disconnected {
            error: e.to_string(),
        });
        shared.update(|s| {
            s.last_error = Some(e.to_string());
            s.fatal = true;
        });
    };
    let prep = match Prepared::new(&config) {
        Ok(p) => p,
        Err(e) => {
            fatal(&shared, &e);
            finish(&shared);
            return;
        }
    };
    let mut backoff = Backoff::new(config.backoff);
    let mut edits = watch_local_edits(&client);
    // Totals of finished connections; the running one is added on top.
    let mut base = SyncProgress::default();
    while !*stop.borrow() {
        shared.update(|s| {
            s.state = SyncState::Connecting;
            s.retry_in_ms = None;
        });
        shared.emit(SyncEvent::Connecting);
        let mut run = Run::new(&client, &config);
        let outcome =
            connect_and_drive(&prep, &mut run, &shared, &mut stop, &mut edits, &base).await;
        base = base.plus(&run.progress());
        if run.caught_up_once {
            // That connection worked: start the next one quickly.
            backoff.reset();
        }
        let e = match outcome {
            Ok(End::Reconnect | End::Synced) => continue,
            Ok(End::Stopped) => break,
            Err(e) => e,
        };
        tracing::info!(error = %e, "sync connection ended");
        persist_status(&client, &prep.relay, Err(e.to_string())).await;
        if !e.is_retryable() {
            fatal(&shared, &e);
            break;
        }
        shared.emit(SyncEvent::Disconnected {
            error: e.to_string(),
        });
        let delay = backoff.next_delay();
        shared.update(|s| {
            s.state = SyncState::Waiting;
            s.last_error = Some(e.to_string());
            s.failures = backoff.failures();
            s.retry_in_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.nudge.notified() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
    finish(&shared);
}

fn finish(shared: &Shared) {
    shared.update(|s| {
        s.state = SyncState::Stopped;
        s.retry_in_ms = None;
    });
    shared.emit(SyncEvent::Stopped);
}

/// One connection of the background task, until stopped, an error, or a deliberate
/// reconnect.
async fn connect_and_drive(
    prep: &Prepared,
    run: &mut Run,
    shared: &Arc<Shared>,
    stop: &mut watch::Receiver<bool>,
    edits: &mut mpsc::Receiver<()>,
    base: &SyncProgress,
) -> Result<End, SyncError> {
    let connected = tokio::select! {
        r = prep.connect() => r?,
        _ = stop.wait_for(|s| *s) => return Ok(End::Stopped),
    };
    let (endpoint, conn) = connected;
    let mut link = match Link::open(conn.clone()).await {
        Ok(l) => l,
        Err(e) => {
            conn.close(CLOSE_ERROR.into(), b"stream");
            return Err(e);
        }
    };
    shared.update(|s| s.state = SyncState::Syncing);
    let mut sink = |n: Note<'_>| match n {
        Note::Connected { scopes, role } => {
            shared.update(|s| {
                s.scopes = scopes.to_vec();
                s.role = Some(role);
                s.connections += 1;
            });
            shared.emit(SyncEvent::Connected {
                scopes: scopes.to_vec(),
                role,
            });
        }
        Note::Uploaded(n) => shared.emit(SyncEvent::Uploaded { n }),
        Note::Rejected { hash, reason } => shared.emit(SyncEvent::Rejected { hash, reason }),
        Note::Received(items) => shared.emit(SyncEvent::Received { items }),
        Note::CaughtUp => {
            shared.update(|s| {
                s.last_sync_finished_at = Some(now_millis());
                s.last_error = None;
                s.failures = 0;
            });
            shared.emit(SyncEvent::CaughtUp);
        }
        Note::Progress(p) => shared.update(|s| {
            s.state = if p.caught_up {
                SyncState::CaughtUp
            } else {
                SyncState::Syncing
            };
            let t = base.plus(p);
            s.changes_sent = t.changes_sent;
            s.changes_acked = t.changes_acked;
            s.changes_rejected = t.changes_rejected;
            s.items_received = t.items_received;
            s.bytes_sent = t.bytes_sent;
            s.bytes_received = t.bytes_received;
        }),
    };
    let r = run
        .drive(&mut link, prep, Until::Stopped(stop), edits, &mut sink)
        .await;
    match &r {
        Ok(_) => link.close(0, "bye").await,
        Err(e) => {
            let (code, reason) = close_reason(e);
            link.close(code, &reason).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    r
}

/// Serde for durations as whole milliseconds.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
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

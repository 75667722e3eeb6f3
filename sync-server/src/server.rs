//! The QUIC relay: one quinn endpoint (TLS 1.3, ALPN `fieldsync/1`), one tokio task per
//! connection, one bidirectional stream opened by the client carrying length-prefixed frames
//! (`fieldsync_core::protocol::codec`), and a [`RelaySession`] per connection.
//!
//! Storage calls block (SQLite, or the synchronous PostgreSQL client): a connection task moves
//! its session and a store handle into `spawn_blocking` for each message, so the async workers
//! never block. Each connection's store handle carries a [`Cancel`] flag, raised when the
//! connection closes while a call runs, so that the store stops long reads for a client that
//! has left instead of finishing them for nobody. New log entries reach live connections
//! through the node's [`Fanout`]: one follower reads them from the store into an in-memory
//! tail and wakes the connections whose device sees their scope; each then calls
//! [`RelaySession::poll_live`], whose log reads the tail answers, and pushes what is new.
//!
//! Devices are enrolled and revoked by `fieldsync-relay device …`, often by another process
//! on the same data directory while the relay runs. Every such change bumps a counter in the
//! database; the relay polls it every [`DEVICE_POLL`] and, when it moved, every authenticated
//! connection re-reads its device: a revoked device's connection is closed with
//! `Unauthorized`, one whose scopes or role changed with `Reconnect`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fieldsync_core::Millis;
use fieldsync_core::attachment::relay::{BlobLimits, BlobSession};
use fieldsync_core::protocol::codec::{FrameDecoder, encode};
use fieldsync_core::protocol::relay::Output;
use fieldsync_core::protocol::{ErrorCode, Message, RelayLimits, RelaySession};
use quinn::{Connection, Incoming, RecvStream, SendStream, VarInt};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::admission::Admission;
use crate::auth_limit::AuthLimiter;
use crate::config::RelayConfig;
use crate::decode_budget::DecodeBudget;
use crate::fanout::{Fanout, LiveStore, Subscription};
use crate::metrics::{Metrics, serve_http};
use crate::presence::{NodeIdentity, Presence};
use crate::store::{Cancel, RelayBlobs, RelayStore};
use crate::tls;

/// Failed authentications a source address may make a minute before it is refused outright.
const FAILED_AUTH_PER_MINUTE: u32 = 30;
/// Time given to the peer to receive our last frames before the connection is closed.
const LINGER: Duration = Duration::from_secs(2);
/// Time connections get to finish when the relay shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the relay looks for device changes made by other processes.
pub const DEVICE_POLL: Duration = Duration::from_secs(1);

/// QUIC application close codes.
const CLOSE_OK: u32 = 0;
const CLOSE_PROTOCOL: u32 = 1;
const CLOSE_SHUTDOWN: u32 = 2;

/// A running relay. Dropping it stops the relay too (without waiting); prefer
/// [`Relay::shutdown`].
#[derive(Debug)]
pub struct Relay {
    local_addr: SocketAddr,
    fingerprint: String,
    store: RelayStore,
    metrics: Arc<Metrics>,
    metrics_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    /// Writes the node's status report (`crate::presence`); its last one says it stopped.
    reporter: Option<JoinHandle<()>>,
}

struct Shared {
    store: RelayStore,
    fanout: Arc<Fanout>,
    limits: RelayLimits,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
    auth_limit: Arc<AuthLimiter>,
    decode_budget: DecodeBudget,
    presence: Arc<Presence>,
    /// The attachment bytes, and what one device may upload.
    blobs: RelayBlobs,
    blob_limits: BlobLimits,
}

impl Relay {
    /// Opens the store, loads or creates the certificate, binds the endpoint and starts
    /// accepting connections.
    pub async fn start(config: RelayConfig) -> anyhow::Result<Self> {
        config.validate()?;
        // The port first: a relay that cannot serve creates nothing (no database, no
        // certificate) in a data directory that may be a typo.
        let socket = udp_socket(config.listen)?;
        crate::config::create_data_dir(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let cfg = config.clone();
        let store = tokio::task::spawn_blocking(move || RelayStore::open(&cfg))
            .await
            .context("opening the relay database")??;
        let blobs = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || RelayBlobs::open(&store))
                .await
                .context("opening the attachment store")??
        };
        let identity = {
            let (dir, cert, key) = (
                config.data_dir.clone(),
                config.cert.clone(),
                config.key.clone(),
            );
            tokio::task::spawn_blocking(move || {
                tls::load_or_create(&dir, cert.as_deref(), key.as_deref())
            })
            .await
            .context("loading the certificate")??
        };
        let fingerprint = identity.fingerprint();
        {
            // Nodes sharing a database must serve one certificate: tokens carry one pin.
            let (store, fp) = (store.clone(), fingerprint.clone());
            tokio::task::spawn_blocking(move || store.claim_fingerprint(&fp))
                .await
                .context("checking the certificate against the database")??;
        }
        let server_config = server_config(&identity, &config)?;
        let keys = {
            let dir = config.data_dir.clone();
            tokio::task::spawn_blocking(move || tls::NodeKeys::load_or_create(&dir))
                .await
                .context("loading the QUIC secret")??
        };
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(keys.reset));
        // After a restart every laptop's next packet draws a reset. quinn paces resets with
        // one clock reading per batch of received datagrams, so any interval lets at most
        // one reset out per batch, and a laptop whose packet drew none waits for its next
        // keep-alive. Resets are not paced: one is always smaller than the packet that draws
        // it, so a flood of garbage gets back less than it sent and amplifies nothing.
        endpoint_config.min_reset_interval(Duration::ZERO);
        let cid_key = keys.connection_ids;
        let node = keys.node.clone();
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .with_context(|| format!("serving on {}", config.listen))?;
        let local_addr = endpoint.local_addr()?;
        let (shutdown, stop) = watch::channel(false);
        let fanout = {
            let s = store.clone();
            let high = tokio::task::spawn_blocking(move || s.high_seq())
                .await
                .context("reading the log's high")??;
            Fanout::new(&store, high, config.live_tail_bytes)
        };
        tokio::spawn(fanout.clone().follow(store.clone(), stop.clone()));
        let mut metrics = Metrics::new();
        metrics.watch_store(store.clone());
        metrics.watch_fanout(fanout.clone());
        metrics.watch_fleet(store.clone(), Some(config.data_dir.clone()), stop.clone());
        let metrics = Arc::new(metrics);
        let metrics_addr = match config.metrics_listen {
            Some(addr) => {
                let (bound, _task) = serve_http(
                    addr,
                    metrics.clone(),
                    store.clone(),
                    config.metrics_token.clone(),
                    stop.clone(),
                )
                .await?;
                info!(addr = %bound, "metrics and health check at http://{bound}/metrics and /healthz");
                Some(bound)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            store: store.clone(),
            fanout,
            limits: config.limits(),
            metrics: metrics.clone(),
            admission: Arc::new(Admission::new(
                config.max_unauthenticated,
                config.max_connections_per_device,
            )),
            auth_limit: Arc::new(AuthLimiter::new(FAILED_AUTH_PER_MINUTE)),
            decode_budget: DecodeBudget::new(config.max_decode_bytes),
            presence: Arc::new(Presence::default()),
            blobs,
            blob_limits: config.blob_limits(),
        });
        let reporter = tokio::spawn(crate::presence::report_loop(
            NodeIdentity {
                node,
                listen: local_addr.to_string(),
                public_addr: config.public_addr.clone(),
                metrics_addr: metrics_addr.map(|a| a.to_string()),
                started_at: fieldsync_core::ids::now_millis(),
            },
            shared.presence.clone(),
            metrics.clone(),
            store.clone(),
            stop.clone(),
        ));
        tokio::spawn(poll_devices(store.clone(), stop.clone()));
        tokio::spawn(crate::attachments::collect_every_hour(
            shared.blobs.clone(),
            stop.clone(),
        ));
        // Accepting from here on: /healthz says so as soon as `start` returns, not only once
        // the accept task first runs.
        shared.metrics.set_accepting(true);
        let task = tokio::spawn(accept_loop(endpoint, shared, stop, config.max_connections));
        info!(
            addr = %local_addr,
            %fingerprint,
            epoch = %store.epoch(),
            open_enrollment = config.open_enrollment,
            "relay started"
        );
        Ok(Self {
            local_addr,
            fingerprint,
            store,
            metrics,
            metrics_addr,
            shutdown,
            task: Some(task),
            reporter: Some(reporter),
        })
    }

    /// The address the endpoint is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// SHA-256 fingerprint (lower-case hex) of the relay's certificate, for clients to pin.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The relay's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The bound address of the metrics and health endpoint, when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The relay's store (to enrol devices or inspect state in tests).
    pub fn store(&self) -> &RelayStore {
        &self.store
    }

    /// Waits until the relay stops by itself (it only does on an endpoint failure).
    pub async fn stopped(&mut self) {
        if let Some(t) = &mut self.task {
            let _ = t.await;
            self.task = None;
        }
    }

    /// Stops accepting, tells every connected client `ShuttingDown`, closes the connections
    /// and waits until the endpoint is idle.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.shutdown.send_replace(true);
        if let Some(t) = self.task.take() {
            t.await.context("relay task failed")?;
        }
        if let Some(t) = self.reporter.take() {
            t.await.context("status report task failed")?;
        }
        wait_released(self.local_addr).await;
        info!("relay stopped");
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

fn server_config(
    identity: &tls::Identity,
    config: &RelayConfig,
) -> anyhow::Result<quinn::ServerConfig> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls::server_crypto(identity)?)
        .context("quic tls configuration")?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(2));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(config.idle_timeout_secs))
            .context("idle_timeout_secs")?,
    ));
    transport.keep_alive_interval(Some(Duration::from_secs(
        (config.idle_timeout_secs / 3).max(1),
    )));
    transport.congestion_controller_factory(config.congestion.factory());
    sc.transport_config(Arc::new(transport));
    // A laptop that moves from its satellite terminal to a cellular hotspot, or whose NAT
    // rebinds, keeps its connection: the relay validates the new path and moves to it.
    sc.migration(true);
    Ok(sc)
}

/// Resolves when the subscription's scopes got entries; never without one.
async fn changed(live: Option<&Subscription>) {
    match live {
        Some(s) => s.changed().await,
        None => std::future::pending().await,
    }
}

/// Resolves once shutdown was requested (or the [`Relay`] handle is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// Notices enrolments and revocations made by other processes (see the module docs).
async fn poll_devices(store: RelayStore, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(DEVICE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopping(&mut stop) => return,
            _ = tick.tick() => {
                let s = store.clone();
                // Other nodes sharing the database append and revoke too: look at both.
                let polled = tokio::task::spawn_blocking(move || {
                    s.poll_log()?;
                    s.poll_devices()
                });
                match polled.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(error = %e, "cannot read the device table"),
                    Err(e) => warn!(error = %e, "device poll task failed"),
                }
            }
        }
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    max_connections: usize,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = stopping(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if conns.len() >= max_connections {
                    warn!(remote = %incoming.remote_address(), max_connections, "connection limit reached; refusing");
                    incoming.refuse();
                    shared.metrics.connections_refused.inc();
                    continue;
                }
                // Many peers waiting to authenticate: a new one proves its address first (a
                // QUIC Retry costs the relay one packet, not a handshake).
                if shared.admission.under_load()
                    && !incoming.remote_address_validated()
                    && incoming.may_retry()
                {
                    let _ = incoming.retry();
                    continue;
                }
                conns.spawn(connection(incoming, shared.clone(), stop.clone()));
            }
        }
    }
    // Stop accepting; connection tasks see the same signal, say goodbye and close.
    shared.metrics.set_accepting(false);
    endpoint.set_server_config(None);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = conns.len(),
            "connections did not close in time; dropping them"
        );
        conns.abort_all();
    }
    endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"relay shutting down");
    if tokio::time::timeout(SHUTDOWN_GRACE, endpoint.wait_idle())
        .await
        .is_err()
    {
        warn!("endpoint did not become idle in time");
    }
}

async fn connection(incoming: Incoming, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            debug!(%remote, error = %e, "handshake failed");
            return;
        }
    };
    // Serve at once: a resumed client's first flight arrived as 0-RTT data, and answering it
    // before the handshake's last message (0.5-RTT) saves the client a round trip. The
    // device authenticates in its `Hello`, not in TLS, so nothing is given away early.
    let conn = match connecting.into_0rtt() {
        Ok((conn, _)) => conn,
        Err(connecting) => match connecting.await {
            Ok(c) => c,
            Err(e) => {
                debug!(%remote, error = %e, "handshake failed");
                return;
            }
        },
    };
    let (ticket, evicted) = shared.admission.arrive(&conn);
    if evicted > 0 {
        shared.metrics.evicted("unauthenticated", evicted);
        debug!(%remote, evicted, "closed the oldest connection waiting to authenticate");
    }
    let device = serve_connection(conn, remote, &shared, &mut stop, ticket).await;
    shared.admission.leave(ticket, device);
}

/// Waits (up to two seconds) until nothing holds the relay's UDP port any more.
///
/// QUIC's endpoint driver owns the socket and drops it on its own task once the last
/// handle is gone, a moment after the relay's task ends; a relay restarted on the same
/// address in that moment failed with "address in use". Shutdown returns once a fresh
/// socket can bind the address (the probe is dropped at once).
async fn wait_released(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while std::net::UdpSocket::bind(addr).is_err() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The UDP socket the relay serves on, with room for a burst of datagrams.
///
/// When a fleet reconnects at once (after a restart) a kernel's default receive buffer
/// (about 200 KiB) overflows while the relay works through the handshakes (1,000 laptops
/// on loopback: 197 datagrams dropped, none with these buffers), and a dropped Initial costs
/// its laptop a retransmission timeout that doubles with each loss. The
/// buffers are asked for 8 MiB; the kernel grants at most its `net.core.rmem_max` /
/// `wmem_max` (raise those for a large fleet).
fn udp_socket(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    const BUFFER: usize = 8 << 20;
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .with_context(|| format!("opening a UDP socket for {addr}"))?;
    for (what, sized) in [
        ("receive", socket.set_recv_buffer_size(BUFFER)),
        ("send", socket.set_send_buffer_size(BUFFER)),
    ] {
        if let Err(e) = sized {
            warn!(error = %e, "cannot enlarge the UDP {what} buffer; a reconnect burst may drop packets");
        }
    }
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    Ok(socket.into())
}

/// Serves one connection until it ends; returns the device it authenticated as, if any.
async fn serve_connection(
    conn: Connection,
    remote: SocketAddr,
    shared: &Arc<Shared>,
    stop: &mut watch::Receiver<bool>,
    ticket: u64,
) -> Option<uuid::Uuid> {
    // The session's clock: milliseconds since the connection opened. The session's handshake
    // deadline (a few round trips of the slowest satellite link, and no more: until then the
    // connection holds an unauthenticated slot) covers opening the stream too.
    let opened = tokio::time::Instant::now();
    let session = RelaySession::opened(shared.limits.clone(), 0);
    let stream = tokio::select! {
        s = conn.accept_bi() => s,
        () = tokio::time::sleep(shared.limits.hello_timeout) => {
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"no stream opened");
            return None;
        }
        () = stopping(stop) => {
            conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"relay shutting down");
            return None;
        }
    };
    let (send, recv) = match stream {
        Ok(s) => s,
        Err(e) => {
            debug!(%remote, error = %e, "connection ended before opening a stream");
            return None;
        }
    };
    let mut devices = shared.store.subscribe_devices();
    devices.mark_unchanged();
    let cancel = Cancel::default();
    let mut link = Link {
        conn,
        send,
        recv,
        remote,
        store: LiveStore {
            store: shared.store.cancelled_by(cancel.clone()),
            fanout: shared.fanout.clone(),
        },
        cancel,
        session: Some(session),
        opened,
        live: None,
        devices,
        logged_in: false,
        metrics: shared.metrics.clone(),
        admission: shared.admission.clone(),
        ticket,
        auth_limit: shared.auth_limit.clone(),
        decode_budget: shared.decode_budget.clone(),
        presence: shared.presence.clone(),
        device: None,
        outbox: None,
        blobs: shared.blobs.clone(),
        blob_limits: shared.blob_limits,
        blob_stream: None,
    };
    shared.metrics.connections.inc();
    shared.metrics.connections_open.inc();
    link.run(stop).await;
    shared.metrics.connections_open.dec();
    if let Some(d) = link.device {
        shared.presence.disconnected(d);
    }
    link.session
        .as_ref()
        .and_then(|s| s.device())
        .map(|d| d.device_id)
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// We sent a final message (error, goodbye) and close.
    Closed,
    /// The peer went away or the link broke.
    Gone(String),
}

struct Link {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    remote: SocketAddr,
    /// This connection's store handle (its long reads stop once `cancel` is raised), with
    /// new log entries read from the relay's tail.
    store: LiveStore,
    /// Raised when the connection closes while a store call runs.
    cancel: Cancel,
    session: Option<RelaySession>,
    /// When the connection opened: the session's clock counts from here.
    opened: tokio::time::Instant,
    /// Wakes the connection when its device's scopes got log entries (from login on).
    live: Option<Subscription>,
    devices: watch::Receiver<u64>,
    logged_in: bool,
    metrics: Arc<Metrics>,
    /// The relay's connection slots, and this connection's ticket among them.
    admission: Arc<Admission>,
    ticket: u64,
    /// Failed authentications per source address.
    auth_limit: Arc<AuthLimiter>,
    /// The relay-wide budget of memory spent decoding frames.
    decode_budget: DecodeBudget,
    /// The devices online at this node.
    presence: Arc<Presence>,
    /// The device, once it logged in.
    device: Option<uuid::Uuid>,
    /// What the device last reported it holds unsent (changes, quarantined), as recorded.
    outbox: Option<(u64, u64)>,
    /// The attachment store and its limits.
    blobs: RelayBlobs,
    blob_limits: BlobLimits,
    /// The connection's attachment stream, once the client opened one (protocol 6).
    blob_stream: Option<JoinHandle<()>>,
}

impl Link {
    async fn run(&mut self, stop: &mut watch::Receiver<bool>) {
        let end = self.serve(stop).await;
        if let Some(t) = self.blob_stream.take() {
            t.abort();
        }
        match &end {
            End::Closed => debug!(remote = %self.remote, "connection closed by the relay"),
            End::Gone(why) => debug!(remote = %self.remote, reason = %why, "connection ended"),
        }
        // How the path behaved, for diagnosing a slow or lossy link.
        let path = self.conn.stats().path;
        debug!(
            remote = %self.remote,
            rtt_ms = path.rtt.as_millis(),
            cwnd = path.cwnd,
            sent_packets = path.sent_packets,
            lost_packets = path.lost_packets,
            lost_bytes = path.lost_bytes,
            congestion_events = path.congestion_events,
            "connection path"
        );
        if self.logged_in
            && let Some(d) = self.session.as_ref().and_then(|s| s.device())
        {
            info!(device = %d.device_id, remote = %self.remote, "device disconnected");
        }
    }

    /// The session's clock: milliseconds since the connection opened.
    fn clock(&self) -> Millis {
        Millis::try_from(self.opened.elapsed().as_millis()).unwrap_or(Millis::MAX)
    }

    async fn serve(&mut self, stop: &mut watch::Receiver<bool>) -> End {
        // Until the device authenticates, only a small Hello or Enrol is read.
        let mut decoder = FrameDecoder::handshake();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // Handle every complete frame received so far, each within the relay-wide decode
            // budget (reserved before decoding, released once handled).
            loop {
                let reserved = match decoder.next_frame_cost() {
                    Some(cost) => tokio::select! {
                        biased;
                        () = stopping(stop) => {
                            return self.fail(ErrorCode::ShuttingDown, "relay shutting down").await;
                        }
                        p = self.decode_budget.reserve(cost) => p,
                    },
                    None => None,
                };
                match decoder.next_message() {
                    Ok(Some(msg)) => {
                        debug!(remote = %self.remote, msg = msg.name(), "received");
                        self.metrics.received(msg.name());
                        if let Message::Outbox {
                            changes,
                            quarantined,
                            ..
                        } = &msg
                        {
                            self.record_outbox(*changes, *quarantined);
                        }
                        let handshake = !self.logged_in
                            && matches!(msg, Message::Hello { .. } | Message::Enrol { .. });
                        if handshake && !self.auth_limit.allowed(self.remote.ip()) {
                            return self
                                .fail(
                                    ErrorCode::Unauthorized,
                                    "too many failed authentication attempts from this address; try again in a minute",
                                )
                                .await;
                        }
                        let started = std::time::Instant::now();
                        let out = match self.with_session(move |s, st| s.handle(st, msg)).await {
                            Ok(o) => o,
                            Err(e) => return self.fail(ErrorCode::Internal, &e).await,
                        };
                        // Decoded and handled: the reservation is not held while the answer
                        // waits for a peer that may never read it.
                        drop(reserved);
                        if handshake
                            && let Some(Message::Error {
                                code: ErrorCode::Unauthorized,
                                reason,
                            }) = out.messages.last()
                        {
                            let n = self.auth_limit.failed(self.remote.ip());
                            // One warning per address and minute; the rest is counted.
                            if n == 1 {
                                warn!(remote = %self.remote, %reason, "authentication refused");
                            } else {
                                debug!(remote = %self.remote, %reason, failures = n, "authentication refused");
                            }
                        }
                        self.metrics
                            .request_seconds
                            .observe(started.elapsed().as_secs_f64());
                        self.note_login();
                        if self.logged_in {
                            decoder.authenticated();
                        }
                        if let Some(end) = self.send_output(out).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(remote = %self.remote, error = %e, "bad frame; closing the connection");
                        return self.fail(ErrorCode::BadFrame, &e.to_string()).await;
                    }
                }
            }
            let (authenticated, live) = self
                .session
                .as_ref()
                .map_or((false, false), |s| (s.device().is_some(), s.is_live()));
            // The session's next timer (the handshake deadline), on the connection's clock.
            let deadline = self.session.as_ref().and_then(RelaySession::poll_timeout);
            let timer = self.opened
                + Duration::from_millis(deadline.map_or(0, |d| u64::try_from(d).unwrap_or(0)));
            tokio::select! {
                biased;
                () = stopping(stop) => {
                    return self.fail(ErrorCode::ShuttingDown, "relay shutting down").await;
                }
                () = tokio::time::sleep_until(timer), if deadline.is_some() => {
                    let now = self.clock();
                    let out = self.session.as_mut().map(|s| s.handle_timeout(now)).unwrap_or_default();
                    if let Some(end) = self.send_output(out).await {
                        return end;
                    }
                }
                r = self.recv.read(&mut buf) => match r {
                    Ok(Some(n)) => {
                        self.metrics.bytes_received.inc_by(n as u64);
                        decoder.push(&buf[..n]);
                    }
                    Ok(None) => {
                        // The client finished its side: finish ours and let the connection go.
                        let _ = self.send.finish();
                        self.linger_and_close(CLOSE_OK, b"bye").await;
                        return End::Gone(if decoder.buffered() > 0 { "peer finished mid-frame".into() } else { "peer finished".into() });
                    }
                    Err(e) => return End::Gone(e.to_string()),
                },
                s = self.conn.accept_bi(), if authenticated => match s {
                    Ok((send, recv)) => self.attachment_stream(send, recv),
                    Err(e) => return End::Gone(e.to_string()),
                },
                r = self.devices.changed(), if authenticated => {
                    if r.is_err() {
                        return End::Gone("store closed".into());
                    }
                    let out = match self.with_session(|s, st| s.recheck(st)).await {
                        Ok(o) => o,
                        Err(e) => return self.fail(ErrorCode::Internal, &e).await,
                    };
                    if let Some(end) = self.send_output(out).await {
                        return end;
                    }
                }
                () = changed(self.live.as_ref()), if live => {
                    let out = match self.with_session(|s, st| s.poll_live(st)).await {
                        Ok(o) => o,
                        Err(e) => return self.fail(ErrorCode::Internal, &e).await,
                    };
                    if !out.messages.is_empty() {
                        debug!(remote = %self.remote, "live push");
                    }
                    if let Some(end) = self.send_output(out).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Starts serving a stream the client opened after logging in: its attachment stream
    /// (protocol 6). One at a time; a client of an older protocol has none.
    fn attachment_stream(&mut self, mut send: SendStream, mut recv: RecvStream) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let running = self.blob_stream.as_ref().is_some_and(|t| !t.is_finished());
        let device = session.device().cloned();
        let wiping = session.wiping();
        // A laptop told to wipe now gets no attachment stream; one wiping after its uploads
        // may only upload.
        let refused = wiping == Some(fieldsync_core::protocol::WipeOrder::Now);
        let (Some(device), false, true, false) = (device, running, session.version() >= 6, refused)
        else {
            debug!(remote = %self.remote, "refusing an extra stream");
            let _ = send.reset(VarInt::from_u32(CLOSE_PROTOCOL));
            let _ = recv.stop(VarInt::from_u32(CLOSE_PROTOCOL));
            return;
        };
        let link = crate::attachments::BlobLink {
            send,
            recv,
            session: if wiping.is_some() {
                BlobSession::new(device, self.blob_limits).uploads_only()
            } else {
                BlobSession::new(device, self.blob_limits)
            },
            blobs: self.blobs.clone(),
            decode_budget: self.decode_budget.clone(),
            metrics: self.metrics.clone(),
            remote: self.remote,
        };
        self.blob_stream = Some(tokio::spawn(link.run()));
    }

    /// Follows the device's scopes once it authenticated, and again when a grant changed
    /// them. A new subscription wakes once, so that what arrived before it is not missed.
    fn follow_scopes(&mut self) {
        let Some(device) = self.session.as_ref().and_then(|s| s.device()) else {
            return;
        };
        if self
            .live
            .as_ref()
            .is_some_and(|l| l.scopes() == device.scopes.as_slice())
        {
            return;
        }
        let sub = self.store.fanout.subscribe(&device.scopes);
        sub.poke();
        self.live = Some(sub);
    }

    fn note_login(&mut self) {
        if self.logged_in {
            return;
        }
        if let Some(d) = self.session.as_ref().and_then(|s| s.device()) {
            self.logged_in = true;
            self.device = Some(d.device_id);
            self.presence
                .connected(d.device_id, fieldsync_core::ids::now_millis());
            self.metrics.logins.inc();
            info!(device = %d.device_id, name = %d.name, role = %d.role, remote = %self.remote, "device connected");
            let closed = self.admission.login(self.ticket, d.device_id);
            if closed > 0 {
                self.metrics.evicted("device", closed);
                info!(device = %d.device_id, closed, "closed the device's oldest connection: it holds its budget of connections");
            }
        }
    }

    /// Records what the logged-in device says it holds unsent (`Message::Outbox`), when it
    /// changed since its last report on this connection: a small write on the blocking pool
    /// that the session does not wait for (the report is for IT's device list).
    fn record_outbox(&mut self, changes: u64, quarantined: u64) {
        let Some(device) = self.device else {
            return;
        };
        if self.outbox == Some((changes, quarantined)) {
            return;
        }
        self.outbox = Some((changes, quarantined));
        let store = self.store.store.clone();
        let report = crate::store::DeviceOutbox {
            changes,
            quarantined,
            at: fieldsync_core::ids::now_millis(),
        };
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.put_outbox(device, &report) {
                tracing::warn!(%device, error = %e, "could not record a device's outbox report");
            }
        });
    }

    /// Runs a session call with a store handle on the blocking pool.
    async fn with_session(
        &mut self,
        f: impl FnOnce(&mut RelaySession, &mut LiveStore) -> Output + Send + 'static,
    ) -> Result<Output, String> {
        let Some(mut session) = self.session.take() else {
            return Err("session lost".into());
        };
        let mut store = self.store.clone();
        let mut task = tokio::task::spawn_blocking(move || {
            let out = f(&mut session, &mut store);
            (session, out)
        });
        let joined = tokio::select! {
            j = &mut task => j,
            _ = self.conn.closed() => {
                // Nobody will read the answer: the store stops at its next page or chunk.
                self.cancel.cancel();
                task.await
            }
        };
        match joined {
            Ok((session, out)) => {
                self.session = Some(session);
                self.follow_scopes();
                Ok(out)
            }
            Err(e) => {
                tracing::error!(remote = %self.remote, error = %e, "session task failed");
                Err("relay internal error".into())
            }
        }
    }

    async fn write(&mut self, msg: &Message) -> Result<(), End> {
        let frame = match encode(msg) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(remote = %self.remote, msg = msg.name(), error = %e, "cannot encode a message");
                let fallback = Message::Error {
                    code: ErrorCode::Internal,
                    reason: "relay could not encode a reply".into(),
                };
                encode(&fallback).map_err(|e| End::Gone(e.to_string()))?
            }
        };
        self.metrics.sent(msg.name(), frame.len());
        match msg {
            Message::UploadAck {
                accepted, rejected, ..
            } => {
                self.metrics.changes_accepted.inc_by(accepted.len() as u64);
                for r in rejected {
                    self.metrics.refused(r);
                }
            }
            Message::Error { code, .. } => self.metrics.error_sent(&format!("{code:?}")),
            Message::Waiting { documents, bytes } => {
                if let Some(d) = self.device {
                    self.presence.waiting(d, *documents, *bytes);
                }
            }
            Message::Batch {
                caught_up: true, ..
            } => {
                if let Some(d) = self.device {
                    self.presence
                        .caught_up(d, fieldsync_core::ids::now_millis());
                }
            }
            _ => {}
        }
        self.send
            .write_all(&frame)
            .await
            .map_err(|e| End::Gone(e.to_string()))
    }

    /// Sends a session's output; `Some` if the connection ends here.
    async fn send_output(&mut self, out: Output) -> Option<End> {
        for m in &out.messages {
            debug!(remote = %self.remote, msg = m.name(), "sending");
            if let Err(end) = self.write(m).await {
                return Some(end);
            }
        }
        if out.close {
            if let Some(Message::Error { code, reason }) = out.messages.last() {
                if *code == ErrorCode::Unauthorized && !self.logged_in {
                    // Counted and warned about once a minute per address (`auth_limit`).
                    debug!(remote = %self.remote, ?code, %reason, "closing connection after an error");
                } else {
                    info!(remote = %self.remote, ?code, %reason, "closing connection after an error");
                }
            }
            let _ = self.send.finish();
            self.linger_and_close(CLOSE_PROTOCOL, b"closed").await;
            return Some(End::Closed);
        }
        None
    }

    /// Sends a final error and closes.
    async fn fail(&mut self, code: ErrorCode, reason: &str) -> End {
        let msg = Message::Error {
            code,
            reason: reason.to_string(),
        };
        if self.write(&msg).await.is_ok() {
            let _ = self.send.finish();
        }
        let close = if code == ErrorCode::ShuttingDown {
            CLOSE_SHUTDOWN
        } else {
            CLOSE_PROTOCOL
        };
        self.linger_and_close(close, reason.as_bytes()).await;
        End::Closed
    }

    /// Gives the peer a moment to receive what was sent, then closes the connection.
    async fn linger_and_close(&mut self, code: u32, reason: &[u8]) {
        let _ = tokio::time::timeout(LINGER, self.send.stopped()).await;
        let reason = &reason[..reason.len().min(64)];
        self.conn.close(VarInt::from_u32(code), reason);
    }
}

/// Starts the relay, prints its fingerprint and address (one line each, for scripts), and runs
/// until Ctrl-C or SIGTERM, then shuts down gracefully.
pub async fn serve(config: RelayConfig) -> anyhow::Result<()> {
    let mut relay = Relay::start(config).await?;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "fingerprint: {}", relay.fingerprint())?;
        writeln!(out, "listening on {}", relay.local_addr())?;
        out.flush()?;
    }
    tokio::select! {
        r = shutdown_signal() => r?,
        () = relay.stopped() => anyhow::bail!("the relay endpoint stopped unexpectedly"),
    }
    info!("shutdown requested");
    relay.shutdown().await
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

//! Prometheus metrics and a health check, served over HTTP on `metrics_listen` (off unless
//! configured): `GET /metrics` (Prometheus text format) and `GET /healthz` (`200 ok` while
//! the relay accepts connections and its store answers, `503` with the reason otherwise).
//!
//! Every series is counted where the relay does the work: connections in the accept loop,
//! frames and bytes where they are read and written, changes from the acknowledgements the
//! relay sends, errors from the error frames it sends. The store's read pool (`db_pool_*`)
//! and writer (`db_write_*`) are read from the store at each scrape
//! ([`Metrics::watch_store`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::fanout::Fanout;
use crate::store::RelayStore;

type Labels = Vec<(&'static str, String)>;

/// The relay's metrics (cheap to clone handles; shared by every connection).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Connections accepted.
    pub connections: Counter,
    /// Connections open now.
    pub connections_open: Gauge,
    /// Connections refused at the `max_connections` limit.
    pub connections_refused: Counter,
    /// Connections closed to make room for another, by reason (`unauthenticated`: the oldest
    /// of too many waiting to authenticate; `device`: the oldest of a device's connections).
    pub connections_evicted: Family<Labels, Counter>,
    /// Devices that completed the handshake.
    pub logins: Counter,
    /// Frames received, by message type.
    pub frames_received: Family<Labels, Counter>,
    /// Frames sent, by message type.
    pub frames_sent: Family<Labels, Counter>,
    /// Bytes received on sync streams.
    pub bytes_received: Counter,
    /// Bytes sent on sync streams (frames, length prefixes included).
    pub bytes_sent: Counter,
    /// Error frames sent, by code (unauthorized, bad frame, …).
    pub errors_sent: Family<Labels, Counter>,
    /// Uploaded changes stored and acknowledged.
    pub changes_accepted: Counter,
    /// Uploaded changes refused.
    pub changes_refused: Counter,
    /// Uploaded changes refused over a device's daily quota, by quota (`new_documents`,
    /// `bytes`).
    pub quota_refusals: Family<Labels, Counter>,
    /// Time the relay spent answering one request (blocking store work included), seconds.
    pub request_seconds: Histogram,
    /// The relay log's last sequence number.
    pub log_high_seq: Gauge,
    /// Whether the accept loop runs (for the health check).
    accepting: Arc<AtomicBool>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `fieldsync_relay_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fieldsync_relay");
        let m = Self {
            connections: Counter::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            connections_evicted: Family::default(),
            logins: Counter::default(),
            frames_received: Family::default(),
            frames_sent: Family::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            errors_sent: Family::default(),
            changes_accepted: Counter::default(),
            changes_refused: Counter::default(),
            quota_refusals: Family::default(),
            request_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            log_high_seq: Gauge::default(),
            accepting: Arc::new(AtomicBool::new(false)),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "QUIC connections accepted",
            m.connections.clone(),
        );
        registry.register(
            "connections_open",
            "QUIC connections open now",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused at the max_connections limit",
            m.connections_refused.clone(),
        );
        registry.register(
            "connections_evicted",
            "Connections closed to make room for another, by reason",
            m.connections_evicted.clone(),
        );
        registry.register(
            "logins",
            "Devices that completed the handshake",
            m.logins.clone(),
        );
        registry.register(
            "frames_received",
            "Protocol frames received, by message type",
            m.frames_received.clone(),
        );
        registry.register(
            "frames_sent",
            "Protocol frames sent, by message type",
            m.frames_sent.clone(),
        );
        registry.register(
            "received_bytes",
            "Bytes received on sync streams",
            m.bytes_received.clone(),
        );
        registry.register(
            "sent_bytes",
            "Bytes sent on sync streams",
            m.bytes_sent.clone(),
        );
        registry.register(
            "errors_sent",
            "Error frames sent to clients, by code",
            m.errors_sent.clone(),
        );
        registry.register(
            "changes_accepted",
            "Uploaded changes stored and acknowledged",
            m.changes_accepted.clone(),
        );
        registry.register(
            "changes_refused",
            "Uploaded changes refused",
            m.changes_refused.clone(),
        );
        registry.register(
            "quota_refusals",
            "Uploaded changes refused over a device's daily quota, by quota",
            m.quota_refusals.clone(),
        );
        registry.register(
            "request_seconds",
            "Time spent answering one client request",
            m.request_seconds.clone(),
        );
        registry.register(
            "log_high_seq",
            "Last sequence number in the relay log",
            m.log_high_seq.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts one received message of type `name`.
    pub fn received(&self, name: &str) {
        self.frames_received
            .get_or_create(&vec![("message", name.to_string())])
            .inc();
    }

    /// Counts one sent message of type `name`, `bytes` long.
    pub fn sent(&self, name: &str, bytes: usize) {
        self.frames_sent
            .get_or_create(&vec![("message", name.to_string())])
            .inc();
        self.bytes_sent.inc_by(bytes as u64);
    }

    /// Counts a change refused over the daily quota `quota`.
    pub fn quota_refused(&self, quota: &str) {
        self.quota_refusals
            .get_or_create(&vec![("quota", quota.to_string())])
            .inc();
    }

    /// Counts `n` connections closed to make room for another.
    pub fn evicted(&self, reason: &str, n: usize) {
        self.connections_evicted
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc_by(n as u64);
    }

    /// Counts an error frame.
    pub fn error_sent(&self, code: &str) {
        self.errors_sent
            .get_or_create(&vec![("code", code.to_string())])
            .inc();
    }

    /// Reports `store`'s read pool and writer at each scrape: `db_pool_capacity`,
    /// `db_pool_reserved` (kept for authentication), `db_pool_open`, `db_pool_in_use`,
    /// `db_pool_waits_total` (requests that waited for a connection), `db_pool_busy_total`
    /// (requests refused as busy), and `db_write_transactions_total`,
    /// `db_write_uploads_total`, `db_write_busy_seconds_total`, `db_write_wait_seconds_total`
    /// and `db_write_queue`.
    pub fn watch_store(&mut self, store: RelayStore) {
        self.registry
            .register_collector(Box::new(PoolCollector(store)));
    }

    /// Reports the live tail and its subscriptions at each scrape.
    pub fn watch_fanout(&mut self, fanout: Arc<Fanout>) {
        self.registry
            .register_collector(Box::new(FanoutCollector(fanout)));
    }

    /// Marks whether the relay accepts connections.
    pub fn set_accepting(&self, on: bool) {
        self.accepting.store(on, Ordering::Relaxed);
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The store's read pool and writer, read at each scrape.
#[derive(Debug)]
struct PoolCollector(RelayStore);

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.pool_stats();
        let gauge = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        for (name, help, g) in [
            (
                "db_pool_capacity",
                "Most read connections this node keeps open to its database",
                gauge(s.capacity),
            ),
            (
                "db_pool_reserved",
                "Read connections kept for authentication and the node's bookkeeping",
                gauge(s.reserved),
            ),
            ("db_pool_open", "Read connections open now", gauge(s.open)),
            (
                "db_pool_in_use",
                "Read connections in use now",
                gauge(s.in_use),
            ),
        ] {
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        for (name, help, c) in [
            (
                "db_pool_waits",
                "Requests that waited for a free read connection",
                ConstCounter::new(s.waits),
            ),
            (
                "db_pool_busy",
                "Requests refused as busy: no read connection came free in time",
                ConstCounter::new(s.timeouts),
            ),
        ] {
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let w = self.0.write_stats();
        for (name, help, c) in [
            (
                "db_write_transactions",
                "Transactions that wrote uploads (uploads queued together share one)",
                ConstCounter::new(w.transactions),
            ),
            (
                "db_write_uploads",
                "Uploads written",
                ConstCounter::new(w.uploads),
            ),
        ] {
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        for (name, help, c) in [
            (
                "db_write_busy_seconds",
                "Time the writer spent writing uploads (a rate near 1 means it is saturated)",
                ConstCounter::new(w.busy.as_secs_f64()),
            ),
            (
                "db_write_wait_seconds",
                "Time uploads waited for the writer, summed over uploads",
                ConstCounter::new(w.waited.as_secs_f64()),
            ),
        ] {
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let queued = ConstGauge::new(i64::try_from(w.queued).unwrap_or(i64::MAX));
        queued.encode(encoder.encode_descriptor(
            "db_write_queue",
            "Uploads queued for the writer now (being written or waiting)",
            None,
            queued.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The live tail and who follows it, read at each scrape.
#[derive(Debug)]
struct FanoutCollector(Arc<Fanout>);

impl Collector for FanoutCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (entries, bytes) = self.0.held();
        let gauge = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        for (name, help, g) in [
            (
                "live_tail_entries",
                "Newest log entries held in memory for live connections",
                gauge(entries),
            ),
            (
                "live_tail_bytes",
                "Bytes of newest log entries held in memory (live_tail_bytes caps it)",
                gauge(bytes),
            ),
            (
                "live_subscriptions",
                "Connections following their scopes for live pushes (once per scope)",
                gauge(self.0.subscriptions()),
            ),
        ] {
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    store: RelayStore,
    log: watch::Receiver<u64>,
    /// SHA-256 of the bearer token `/metrics` requires, if any.
    token: Option<[u8; 32]>,
}

/// Whether the request carries the configured bearer token (compared as digests, in time
/// independent of where they differ).
fn authorized(headers: &HeaderMap, token: Option<&[u8; 32]>) -> bool {
    let Some(want) = token else {
        return true;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let got: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn metrics_page(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    if !authorized(&headers, s.token.as_ref()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response();
    }
    s.metrics
        .log_high_seq
        .set(i64::try_from(*s.log.borrow()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn health(State(s): State<HttpState>) -> (StatusCode, String) {
    if !s.metrics.accepting.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not accepting connections\n".into(),
        );
    }
    let store = s.store.clone();
    match tokio::task::spawn_blocking(move || store.high_seq()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n".into()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store check failed: {e}\n"),
        ),
    }
}

/// Binds `addr` and serves `/metrics` (behind `token` as a bearer token, when given) and
/// `/healthz` until `stop` turns true. Returns the bound address (port 0 picks one) and the
/// task.
pub async fn serve_http(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    store: RelayStore,
    token: Option<String>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the metrics address {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let state = HttpState {
        metrics,
        log: store.subscribe(),
        store,
        token: token.map(|t| Sha256::digest(t.as_bytes()).into()),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(health))
        .with_state(state);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|v| *v).await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::ScratchDatabase;
    use crate::store::{PgRelayStore, RelayStoreOptions, SqliteRelayStore};

    /// The read pool and the writer are reported at each scrape, whichever backend holds
    /// the store.
    #[test]
    fn the_read_pool_and_writer_are_reported_for_both_backends() {
        let db = ScratchDatabase::create(&ScratchDatabase::server_url())
            .expect("this test needs PostgreSQL (FIELDSYNC_TEST_PG)");
        let store = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
        let mut m = Metrics::new();
        m.watch_store(RelayStore::Postgres(store.clone()));
        store.high_seq().unwrap();
        let text = m.render();
        for line in [
            "fieldsync_relay_db_pool_capacity 14",
            "fieldsync_relay_db_pool_reserved 3",
            "fieldsync_relay_db_pool_open 1",
            "fieldsync_relay_db_pool_in_use 0",
            "fieldsync_relay_db_pool_waits_total 0",
            "fieldsync_relay_db_pool_busy_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }

        let dir = tempfile::tempdir().unwrap();
        let sqlite =
            SqliteRelayStore::open(dir.path().join("relay.db"), RelayStoreOptions::default())
                .unwrap();
        sqlite.high_seq().unwrap();
        let mut m = Metrics::new();
        m.watch_store(RelayStore::Sqlite(sqlite));
        let text = m.render();
        for line in [
            "fieldsync_relay_db_pool_capacity 8",
            "fieldsync_relay_db_pool_reserved 2",
            "fieldsync_relay_db_pool_open 1",
            "fieldsync_relay_db_pool_in_use 0",
            "fieldsync_relay_db_write_transactions_total 0",
            "fieldsync_relay_db_write_uploads_total 0",
            "fieldsync_relay_db_write_queue 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
}

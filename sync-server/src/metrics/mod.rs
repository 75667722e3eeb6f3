//! Prometheus metrics and a health check, served over HTTP on `metrics_listen` (off unless
//! configured): `GET /metrics` (Prometheus text format) and `GET /healthz` (`200 ok` while
//! the relay accepts connections and its store answers, `503` with the reason otherwise).
//!
//! Every series is counted where the relay does the work: connections in the accept loop,
//! frames and bytes where they are read and written, changes from the acknowledgements the
//! relay sends (refusals by reason), errors from the error frames it sends. Read at each
//! scrape: the store's read pool (`db_pool_*`) and writer (`db_write_*`) and the live tail
//! (`collectors`), and the fleet and disk counted every minute (`fleet`). `http` serves them.

mod collectors;
pub mod fleet;
mod http;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fieldsync_core::protocol::messages::Rejection;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::fanout::Fanout;
use crate::store::RelayStore;
use collectors::{FanoutCollector, PoolCollector};
pub use http::serve_http;

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
    /// Attachment bytes received (frames on attachment streams).
    pub attachment_bytes_received: Counter,
    /// Attachment bytes sent (frames on attachment streams).
    pub attachment_bytes_sent: Counter,
    /// Attachment uploads completed (every piece stored and verified).
    pub attachment_uploads: Counter,
    /// Attachment pieces refused because they did not match their attachment's hash.
    pub attachment_bad_pieces: Counter,
    /// Error frames sent, by code (unauthorized, bad frame, …).
    pub errors_sent: Family<Labels, Counter>,
    /// Uploaded changes stored and acknowledged.
    pub changes_accepted: Counter,
    /// Uploaded changes refused, by reason (see [`refusal_reason`]).
    pub changes_refused: Family<Labels, Counter>,
    /// Uploaded changes refused over a device's daily quota, by quota (`new_documents`,
    /// `bytes`).
    pub quota_refusals: Family<Labels, Counter>,
    /// Time the relay spent answering one request (blocking store work included), seconds.
    pub request_seconds: Histogram,
    /// The relay log's last sequence number.
    pub log_high_seq: Gauge,
    /// When this process started (Unix seconds).
    pub start_time: Gauge,
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
            attachment_bytes_received: Counter::default(),
            attachment_bytes_sent: Counter::default(),
            attachment_uploads: Counter::default(),
            attachment_bad_pieces: Counter::default(),
            errors_sent: Family::default(),
            changes_accepted: Counter::default(),
            changes_refused: Family::default(),
            quota_refusals: Family::default(),
            request_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            log_high_seq: Gauge::default(),
            start_time: Gauge::default(),
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
            "attachment_received_bytes",
            "Attachment bytes received on attachment streams",
            m.attachment_bytes_received.clone(),
        );
        registry.register(
            "attachment_sent_bytes",
            "Attachment bytes sent on attachment streams",
            m.attachment_bytes_sent.clone(),
        );
        registry.register(
            "attachment_uploads",
            "Attachment uploads completed (every piece stored and verified)",
            m.attachment_uploads.clone(),
        );
        registry.register(
            "attachment_bad_pieces",
            "Attachment pieces refused because they did not match their attachment's hash",
            m.attachment_bad_pieces.clone(),
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
            "Uploaded changes refused, by reason",
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
        m.start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        );
        registry.register(
            "start_time_seconds",
            "When this relay process started (Unix time)",
            m.start_time.clone(),
        );
        let build_info: Family<Labels, Gauge> = Family::default();
        build_info
            .get_or_create(&vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                (
                    "protocol",
                    fieldsync_core::protocol::PROTOCOL_VERSION.to_string(),
                ),
            ])
            .set(1);
        registry.register(
            "build_info",
            "The relay's version and sync protocol (always 1)",
            build_info,
        );
        Self { registry, ..m }
    }

    /// Counts an uploaded change the relay refused.
    pub fn refused(&self, r: &Rejection) {
        self.changes_refused
            .get_or_create(&vec![("reason", refusal_reason(r).to_string())])
            .inc();
        if let Some(quota) = crate::store::quota_of(&r.reason) {
            self.quota_refused(quota);
        }
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

    /// Counts the fleet (`devices`, `devices_silent`) and the disk (`data_size_bytes`,
    /// `data_available_bytes` for `data_dir`) now and every minute until `stop`, and reports
    /// the last count at each scrape. Needs a tokio runtime.
    pub fn watch_fleet(
        &mut self,
        store: RelayStore,
        data_dir: Option<PathBuf>,
        stop: watch::Receiver<bool>,
    ) {
        let last: fleet::Shared = Arc::new(Mutex::new(None));
        tokio::spawn(fleet::refresh_loop(last.clone(), store, data_dir, stop));
        self.registry
            .register_collector(Box::new(fleet::FleetCollector(last)));
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

/// A refused change's reason as a metric label: `quota` (a daily quota), `retry_later` (a
/// temporary refusal: dependencies not there yet, a document being trimmed), `scope` (a
/// scope the device was not granted), `permission` (what the device's role may not do),
/// `budget` (a document that would outgrow what a replica loads) or `invalid` (anything
/// else the rules refuse).
pub fn refusal_reason(r: &Rejection) -> &'static str {
    let reason = r.reason.to_ascii_lowercase();
    if crate::store::quota_of(&r.reason).is_some() {
        "quota"
    } else if r.retry {
        "retry_later"
    } else if reason.contains("scope") {
        "scope"
    } else if reason.contains("unreadable")
        || reason.contains("budget")
        || reason.contains("too large")
        || reason.contains("too deep")
    {
        "budget"
    } else if reason.contains("role")
        || reason.contains("only ")
        || reason.contains("may not")
        || reason.contains("not allowed")
    {
        "permission"
    } else {
        "invalid"
    }
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

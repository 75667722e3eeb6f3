//! Who is connected to a relay node now, and what every serving node reports about itself.
//!
//! - [`Presence`]: kept by a serving node. Each connection tells it when its device logs in
//!   and leaves, what its download had waiting (the `Waiting` the relay sent ahead of a
//!   pull's batches) and when it caught up (a `Batch` with `caught_up`).
//! - [`report_loop`]: every [`REPORT_EVERY`] the node writes a [`NodeReport`] (address,
//!   version, uptime, connections, the devices online and what each still has to receive)
//!   into the store's `nodes` table, and marks it stopped when the node shuts down.
//! - [`relay_status`]: what `fieldsync-relay status` and `device list` show, read from the
//!   store alone: it works for one relay and for nodes sharing PostgreSQL, from any machine
//!   that reaches the store, while the relay runs or not. A node whose last report is older
//!   than [`SERVING_WITHIN`] is not serving (stopped, killed or cut off from the store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::RelayConfig;
use crate::metrics::Metrics;
use crate::store::{RelayStore, RelayStoreError, lock};

/// How often a serving node writes its report.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);
/// A node whose last report is older than this is not serving.
pub const SERVING_WITHIN: Duration = Duration::from_secs(20);
/// Reports of nodes silent for this long are deleted.
const FORGET_AFTER: Duration = Duration::from_secs(7 * 86_400);

/// One device online at a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLive {
    /// The device.
    pub device_id: Uuid,
    /// Its open connections at this node.
    pub connections: u32,
    /// When its oldest open connection logged in (ms).
    pub connected_at: i64,
    /// Documents its download had waiting at its last pull (0 once caught up).
    pub waiting_documents: u64,
    /// Raw bytes its download had waiting at its last pull (0 once caught up).
    pub waiting_bytes: u64,
    /// When it last had everything the relay holds for it (ms); `None` while its first
    /// download runs.
    pub caught_up_at: Option<i64>,
}

/// What a serving node reports about itself (stored as JSON in the `nodes` table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node's name (stable for its data directory).
    pub node: String,
    /// The relay's version.
    pub version: String,
    /// The sync protocol version it speaks.
    pub protocol: u32,
    /// Its process id.
    pub pid: u32,
    /// The UDP address it listens on.
    pub listen: String,
    /// The address devices are told to use (`public_addr`), when set.
    pub public_addr: Option<String>,
    /// The metrics and health endpoint, when served.
    pub metrics_addr: Option<String>,
    /// When it started (ms).
    pub started_at: i64,
    /// QUIC connections open (authenticated or not).
    pub connections: u64,
    /// Uploads waiting for the store's writer.
    pub write_queue: u64,
    /// The devices online.
    pub devices: Vec<DeviceLive>,
    /// Set in the last report of a node that shut down cleanly.
    pub stopped: bool,
}

/// The devices online at this node (see the module docs). Cheap to share.
#[derive(Debug, Default)]
pub struct Presence {
    devices: Mutex<HashMap<Uuid, DeviceLive>>,
}

impl Presence {
    /// A device's connection logged in at `now` (ms).
    pub fn connected(&self, device_id: Uuid, now: i64) {
        lock(&self.devices)
            .entry(device_id)
            .and_modify(|d| d.connections += 1)
            .or_insert(DeviceLive {
                device_id,
                connections: 1,
                connected_at: now,
                waiting_documents: 0,
                waiting_bytes: 0,
                caught_up_at: None,
            });
    }

    /// A device's logged-in connection closed.
    pub fn disconnected(&self, device_id: Uuid) {
        let mut devices = lock(&self.devices);
        if let Some(d) = devices.get_mut(&device_id) {
            d.connections = d.connections.saturating_sub(1);
            if d.connections == 0 {
                devices.remove(&device_id);
            }
        }
    }

    /// The relay told a device what its download has waiting.
    pub fn waiting(&self, device_id: Uuid, documents: u64, bytes: u64) {
        if let Some(d) = lock(&self.devices).get_mut(&device_id) {
            d.waiting_documents = documents;
            d.waiting_bytes = bytes;
        }
    }

    /// A device received everything the relay holds for it, at `now` (ms).
    pub fn caught_up(&self, device_id: Uuid, now: i64) {
        if let Some(d) = lock(&self.devices).get_mut(&device_id) {
            d.waiting_documents = 0;
            d.waiting_bytes = 0;
            d.caught_up_at = Some(now);
        }
    }

    /// The devices online now, by device id.
    pub fn devices(&self) -> Vec<DeviceLive> {
        let mut out: Vec<DeviceLive> = lock(&self.devices).values().cloned().collect();
        out.sort_by_key(|d| d.device_id);
        out
    }
}

/// What a node writes about itself besides its devices (fixed while it runs).
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    /// The node's name.
    pub node: String,
    /// The address it listens on.
    pub listen: String,
    /// `public_addr` from the configuration.
    pub public_addr: Option<String>,
    /// The metrics endpoint, when served.
    pub metrics_addr: Option<String>,
    /// When it started (ms).
    pub started_at: i64,
}

impl NodeIdentity {
    /// The report of this node now.
    fn report(&self, presence: &Presence, metrics: &Metrics, store: &RelayStore) -> NodeReport {
        NodeReport {
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: fieldsync_core::protocol::PROTOCOL_VERSION,
            pid: std::process::id(),
            listen: self.listen.clone(),
            public_addr: self.public_addr.clone(),
            metrics_addr: self.metrics_addr.clone(),
            started_at: self.started_at,
            connections: u64::try_from(metrics.connections_open.get()).unwrap_or(0),
            write_queue: store.write_stats().queued as u64,
            devices: presence.devices(),
            stopped: false,
        }
    }
}

/// Writes this node's report every [`REPORT_EVERY`] until `stop` is raised, then a last one
/// marked stopped. A failed write is logged and retried at the next tick: the report is
/// for people, and serving does not depend on it.
pub async fn report_loop(
    me: NodeIdentity,
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
    store: RelayStore,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let mut report = me.report(&presence, &metrics, &store);
        report.stopped = stopping;
        let store = store.clone();
        let written = tokio::task::spawn_blocking(move || write_report(&store, &report)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not write the node's status report"),
            Err(e) => tracing::warn!(error = %e, "the status report task failed"),
        }
        if stopping {
            return;
        }
    }
}

fn write_report(store: &RelayStore, report: &NodeReport) -> Result<(), RelayStoreError> {
    let json =
        serde_json::to_string(report).map_err(|e| RelayStoreError::Invalid(e.to_string()))?;
    store.put_node_report(
        &report.node,
        &json,
        fieldsync_core::ids::now_millis(),
        i64::try_from(FORGET_AFTER.as_millis()).unwrap_or(i64::MAX),
    )
}

/// A node as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    /// Its last report.
    #[serde(flatten)]
    pub report: NodeReport,
    /// Whether it serves now: its last report is recent and not marked stopped.
    pub serving: bool,
    /// When it last reported (ms).
    pub reported_at: i64,
    /// Seconds since it started, while it serves.
    pub uptime_seconds: Option<u64>,
}

/// What `fieldsync-relay status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct RelayStatusReport {
    /// Whether any node serves.
    pub serving: bool,
    /// Where the store lives (a file or a database URL without its password).
    pub database: String,
    /// The certificate fingerprint devices pin.
    pub fingerprint: Option<String>,
    /// The store's counters.
    #[serde(flatten)]
    pub store: crate::store::RelayStatus,
    /// Unused enrolment tokens still redeemable.
    pub open_tokens: u64,
    /// Devices online at a serving node.
    pub devices_online: u64,
    /// Of those, devices whose download has not caught up.
    pub devices_catching_up: u64,
    /// Documents and raw bytes those devices still have to receive.
    pub backlog_documents: u64,
    /// Raw bytes those devices still have to receive.
    pub backlog_bytes: u64,
    /// Uploads waiting for the store's writer at the serving nodes.
    pub write_queue: u64,
    /// Every node that reported in the last week.
    pub nodes: Vec<NodeStatus>,
}

/// Reads the status of the relay whose store this is (see the module docs). Blocks.
pub fn relay_status(
    config: &RelayConfig,
    store: &RelayStore,
) -> Result<RelayStatusReport, RelayStoreError> {
    let now = fieldsync_core::ids::now_millis();
    let nodes = node_statuses(store, now)?;
    let fingerprint = match store.node_fingerprint()? {
        Some(fp) => Some(fp),
        None => crate::tls::existing_fingerprint(&config.data_dir, config.cert.as_deref()),
    };
    let serving: Vec<&NodeStatus> = nodes.iter().filter(|n| n.serving).collect();
    // A device connected to two nodes counts once.
    let online: Vec<DeviceLive> = devices_online(&nodes)
        .into_values()
        .map(|(d, _)| d)
        .collect();
    let behind: Vec<&DeviceLive> = online.iter().filter(|d| !is_caught_up(d)).collect();
    Ok(RelayStatusReport {
        serving: !serving.is_empty(),
        database: store.location(),
        fingerprint,
        store: store.status()?,
        open_tokens: store
            .enrolments()?
            .iter()
            .filter(|e| e.is_pending(now))
            .count() as u64,
        devices_online: online.len() as u64,
        devices_catching_up: behind.len() as u64,
        backlog_documents: behind.iter().map(|d| d.waiting_documents).sum(),
        backlog_bytes: behind.iter().map(|d| d.waiting_bytes).sum(),
        write_queue: serving.iter().map(|n| n.report.write_queue).sum(),
        nodes,
    })
}

/// Every node's last report, with whether it serves at `now`.
pub fn node_statuses(store: &RelayStore, now: i64) -> Result<Vec<NodeStatus>, RelayStoreError> {
    let within = i64::try_from(SERVING_WITHIN.as_millis()).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    // Ages by the store's clock (the database's, for nodes sharing PostgreSQL), not this
    // machine's: nodes' clocks may disagree with it. `now` (this machine's) gives uptimes.
    for (node, json, at, store_now) in store.node_reports()? {
        let report: NodeReport = match serde_json::from_str(&json) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(node, error = %e, "skipping an unreadable node report");
                continue;
            }
        };
        let serving = !report.stopped && store_now.saturating_sub(at) <= within;
        let uptime_seconds = serving
            .then(|| u64::try_from(now.saturating_sub(report.started_at) / 1000).unwrap_or(0));
        out.push(NodeStatus {
            report,
            serving,
            reported_at: at,
            uptime_seconds,
        });
    }
    Ok(out)
}

/// Whether a device online has everything the relay held for it at its last pull.
pub fn is_caught_up(d: &DeviceLive) -> bool {
    d.caught_up_at.is_some() && d.waiting_documents == 0 && d.waiting_bytes == 0
}

/// The devices online at serving nodes, by device id (a device connected to two nodes
/// appears once, with its connections added up).
pub fn devices_online(nodes: &[NodeStatus]) -> HashMap<Uuid, (DeviceLive, Vec<String>)> {
    let mut out: HashMap<Uuid, (DeviceLive, Vec<String>)> = HashMap::new();
    for n in nodes.iter().filter(|n| n.serving) {
        for d in &n.report.devices {
            out.entry(d.device_id)
                .and_modify(|(have, at)| {
                    have.connections += d.connections;
                    have.connected_at = have.connected_at.min(d.connected_at);
                    if !is_caught_up(d) {
                        have.waiting_documents = have.waiting_documents.max(d.waiting_documents);
                        have.waiting_bytes = have.waiting_bytes.max(d.waiting_bytes);
                    }
                    have.caught_up_at = have.caught_up_at.max(d.caught_up_at);
                    at.push(n.report.node.clone());
                })
                .or_insert_with(|| (d.clone(), vec![n.report.node.clone()]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_online_while_any_of_its_connections_is() {
        let p = Presence::default();
        let d = Uuid::from_u128(7);
        p.connected(d, 1_000);
        p.connected(d, 2_000);
        p.waiting(d, 12, 40_000);
        assert_eq!(p.devices()[0].connections, 2);
        assert_eq!(p.devices()[0].connected_at, 1_000);
        assert!(!is_caught_up(&p.devices()[0]));
        p.caught_up(d, 3_000);
        assert!(is_caught_up(&p.devices()[0]));
        p.disconnected(d);
        assert_eq!(p.devices().len(), 1);
        p.disconnected(d);
        assert!(p.devices().is_empty());
        // A stray report for a device that left changes nothing.
        p.waiting(d, 1, 1);
        assert!(p.devices().is_empty());
    }
}

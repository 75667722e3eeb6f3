//! What `status` and `device list` make of the reports in the store: which nodes serve, the
//! devices online across them, and what they still have to download.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use super::{DeviceLive, NodeReport};
use crate::config::RelayConfig;
use crate::store::{RelayStore, RelayStoreError};

/// A node whose last report is older than this is not serving.
pub const SERVING_WITHIN: Duration = Duration::from_secs(20);
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

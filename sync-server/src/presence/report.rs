//! What a serving node writes about itself into the store, every [`REPORT_EVERY`].

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{DeviceLive, Presence};
use crate::metrics::Metrics;
use crate::store::{RelayStore, RelayStoreError};

/// How often a serving node writes its report.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);
/// Reports of nodes silent for this long are deleted.
const FORGET_AFTER: Duration = Duration::from_secs(7 * 86_400);

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

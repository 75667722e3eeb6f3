//! Who is connected to a relay node now, and what every serving node reports about itself.
//!
//! - [`Presence`]: kept by a serving node. Each connection tells it when its device logs in
//!   and leaves, what its download had waiting (the `Waiting` the relay sent ahead of a
//!   pull's batches) and when it caught up (a `Batch` with `caught_up`).
//! - `report.rs`, [`report_loop`]: every [`REPORT_EVERY`] the node writes a [`NodeReport`]
//!   (address, version, uptime, connections, the devices online and what each still has to
//!   receive) into the store's `nodes` table, and marks it stopped when the node shuts down.
//! - `status.rs`, [`relay_status`]: what `fieldsync-relay status` and `device list` show, read
//!   from the store alone: it works for one relay and for nodes sharing PostgreSQL, from any
//!   machine that reaches the store, while the relay runs or not. A node whose last report is older
//!   than [`SERVING_WITHIN`] is not serving (stopped, killed or cut off from the store).

mod report;
mod status;

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::lock;

pub use report::{NodeIdentity, NodeReport, REPORT_EVERY, report_loop};
pub use status::{
    NodeStatus, RelayStatusReport, SERVING_WITHIN, devices_online, is_caught_up, node_statuses,
    relay_status,
};

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

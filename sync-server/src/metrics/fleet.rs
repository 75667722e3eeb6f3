//! The fleet and the disk, for alerts that need IT to act: how many devices are enrolled,
//! revoked or waiting on a token, how many have been silent for a day, three days or a week,
//! and the store's size beside the free space where the relay writes.
//!
//! Counting the fleet reads every device row (44 ms at 20,000 devices on SQLite), so it is
//! refreshed on a blocking thread every [`REFRESH_EVERY`] and a scrape reads the last count,
//! never the store.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;

use crate::store::{RelayStore, RelayStoreError, lock};

/// How often the fleet is counted again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// Silence thresholds reported by `devices_silent{for=…}`.
const SILENT: [(&str, i64); 3] = [("1d", 1), ("3d", 3), ("7d", 7)];

/// The last count (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    /// Active enrolled (or openly registered) devices.
    pub enrolled: u64,
    /// Revoked devices.
    pub revoked: u64,
    /// Unused enrolment tokens still redeemable.
    pub pending_tokens: u64,
    /// Active devices not seen for 1, 3 and 7 days (a device never seen counts from its
    /// enrolment).
    pub silent: [u64; 3],
    /// Bytes of the embedded store's files (`None` on PostgreSQL: its own metrics tell).
    pub db_bytes: Option<u64>,
    /// Bytes free for the relay on the data directory's filesystem.
    pub available_bytes: Option<u64>,
}

impl Fleet {
    /// Counts the fleet in `store` and the disk under `data_dir` at `now` (ms). Blocks.
    pub fn count(
        store: &RelayStore,
        data_dir: Option<&std::path::Path>,
        now: i64,
    ) -> Result<Self, RelayStoreError> {
        let mut f = Self::default();
        // The import device never connects: it is no laptop to miss.
        for d in store
            .devices()?
            .into_iter()
            .filter(|d| d.name != crate::import::IMPORT_DEVICE)
        {
            if d.revoked_at.is_some() {
                f.revoked += 1;
                continue;
            }
            f.enrolled += 1;
            let since = d.last_seen.unwrap_or(d.created_at);
            for (i, (_, days)) in SILENT.iter().enumerate() {
                if now.saturating_sub(since) > days * 86_400_000 {
                    f.silent[i] += 1;
                }
            }
        }
        f.pending_tokens = store
            .enrolments()?
            .iter()
            .filter(|e| e.is_pending(now))
            .count() as u64;
        // The database and the attachment store beside it, with SQLite's files.
        f.db_bytes = store.path().map(|p| {
            let blobs = p.with_file_name(crate::store::BLOBS_FILE);
            [p.to_path_buf(), blobs]
                .iter()
                .flat_map(|db| {
                    ["", "-wal", "-shm"].iter().filter_map(move |suffix| {
                        let mut name = db.as_os_str().to_owned();
                        name.push(suffix);
                        std::fs::metadata(PathBuf::from(name)).ok()
                    })
                })
                .map(|m| m.len())
                .sum()
        });
        f.available_bytes = data_dir.and_then(available_bytes);
        Ok(f)
    }
}

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
fn available_bytes(dir: &std::path::Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// The last count, shared by the refresher and the collector.
pub(super) type Shared = Arc<Mutex<Option<Fleet>>>;

/// Counts the fleet now and every [`REFRESH_EVERY`] until `stop`.
pub(super) async fn refresh_loop(
    last: Shared,
    store: RelayStore,
    data_dir: Option<PathBuf>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (store, dir) = (store.clone(), data_dir.clone());
        let counted = tokio::task::spawn_blocking(move || {
            Fleet::count(&store, dir.as_deref(), fieldsync_core::ids::now_millis())
        })
        .await;
        match counted {
            Ok(Ok(f)) => *lock(&last) = Some(f),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not count the devices for metrics"),
            Err(e) => tracing::warn!(error = %e, "the device count task failed"),
        }
    }
}

/// Reports the last count at each scrape (nothing before the first).
#[derive(Debug)]
pub(super) struct FleetCollector(pub(super) Shared);

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(f) = lock(&self.0).clone() else {
            return Ok(());
        };
        let gauge = |n: u64| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        let mut devices = encoder.encode_descriptor(
            "devices",
            "Devices by state: enrolled (active), revoked, pending_token (an open enrolment token)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, n) in [
            ("enrolled", f.enrolled),
            ("revoked", f.revoked),
            ("pending_token", f.pending_tokens),
        ] {
            gauge(n).encode(devices.encode_family(&[("state", state)])?)?;
        }
        let mut silent = encoder.encode_descriptor(
            "devices_silent",
            "Active devices that have not synced for at least this long",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (i, (label, _)) in SILENT.iter().enumerate() {
            gauge(f.silent[i]).encode(silent.encode_family(&[("for", *label)])?)?;
        }
        for (name, help, v) in [
            (
                "data_size_bytes",
                "Bytes of the relay's embedded database files",
                f.db_bytes,
            ),
            (
                "data_available_bytes",
                "Bytes free for the relay on its data directory's filesystem",
                f.available_bytes,
            ),
        ] {
            if let Some(v) = v {
                let g = gauge(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

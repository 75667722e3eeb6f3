//! What each laptop last said it holds unsent (protocol 5 `Outbox`), for `device list`.

use std::collections::HashMap;

use uuid::Uuid;

use super::PgRelayStore;
use super::conn::Run as _;
use crate::store::{DeviceOutbox, RelayStoreError};

impl PgRelayStore {
    /// Records what `device` reported at `at` (ms).
    pub fn put_outbox(&self, device: Uuid, o: &DeviceOutbox) -> Result<(), RelayStoreError> {
        let (changes, quarantined) = (
            i64::try_from(o.changes).unwrap_or(i64::MAX),
            i64::try_from(o.quarantined).unwrap_or(i64::MAX),
        );
        // One small row per report: the priority share, as `last_seen`.
        self.read_priority(|c| {
            c.execute(
                "INSERT INTO device_outbox (device, changes, quarantined, at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (device) DO UPDATE SET changes = excluded.changes,
                   quarantined = excluded.quarantined, at = excluded.at",
                &[&device.as_bytes().as_slice(), &changes, &quarantined, &o.at],
            )?;
            Ok(())
        })
    }

    /// What every laptop last reported, by device.
    pub fn outboxes(&self) -> Result<HashMap<Uuid, DeviceOutbox>, RelayStoreError> {
        self.read(|c| {
            let mut out = HashMap::new();
            for r in c.query(
                "SELECT device, changes, quarantined, at FROM device_outbox",
                &[],
            )? {
                let device: Vec<u8> = r.try_get(0)?;
                let device = Uuid::from_slice(&device).map_err(|_| {
                    RelayStoreError::Corrupt("bad device id in device_outbox".into())
                })?;
                out.insert(
                    device,
                    DeviceOutbox {
                        changes: u64::try_from(r.try_get::<_, i64>(1)?).unwrap_or(0),
                        quarantined: u64::try_from(r.try_get::<_, i64>(2)?).unwrap_or(0),
                        at: r.try_get(3)?,
                    },
                );
            }
            Ok(out)
        })
    }
}

//! What each laptop last said it holds unsent (protocol 5 `Outbox`), for `device list`.

use std::collections::HashMap;

use rusqlite::params;
use uuid::Uuid;

use super::SqliteRelayStore;
use crate::store::{DeviceOutbox, RelayStoreError};

impl SqliteRelayStore {
    /// Records what `device` reported at `at` (ms).
    pub fn put_outbox(&self, device: Uuid, o: &DeviceOutbox) -> Result<(), RelayStoreError> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO device_outbox (device, changes, quarantined, at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (device) DO UPDATE SET changes = excluded.changes,
                   quarantined = excluded.quarantined, at = excluded.at",
            )?
            .execute(params![
                device.as_bytes(),
                i64::try_from(o.changes).unwrap_or(i64::MAX),
                i64::try_from(o.quarantined).unwrap_or(i64::MAX),
                o.at
            ])?;
            Ok(())
        })
    }

    /// What every laptop last reported, by device.
    pub fn outboxes(&self) -> Result<HashMap<Uuid, DeviceOutbox>, RelayStoreError> {
        self.read(|c| {
            let mut st =
                c.prepare_cached("SELECT device, changes, quarantined, at FROM device_outbox")?;
            let mut rows = st.query([])?;
            let mut out = HashMap::new();
            while let Some(r) = rows.next()? {
                let device = Uuid::from_slice(&r.get::<_, Vec<u8>>(0)?).map_err(|_| {
                    RelayStoreError::Corrupt("bad device id in device_outbox".into())
                })?;
                out.insert(
                    device,
                    DeviceOutbox {
                        changes: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                        quarantined: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                        at: r.get(3)?,
                    },
                );
            }
            Ok(out)
        })
    }
}

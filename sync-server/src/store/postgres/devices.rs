//! The PostgreSQL side of the device policy (`store::devices`): its statements for a
//! PostgreSQL transaction (`DeviceDb`), and where they run (`DeviceBackend`): device changes on
//! the writer connection, notifying every node in the committing transaction; a connecting
//! device's reads and one-row writes on the read pool's priority lane, which bulk reads cannot
//! exhaust.

use super::*;

/// Columns `device_row_of` reads, in order.
const DEVICE_COLUMNS: &str = "name, role, scopes, secret_hash, created_at, last_seen, revoked_at, wipe, wiped_at, lease_days";
/// How many they are: the columns a query reads after them start here.
const DEVICE_COLUMN_COUNT: usize = 10;
/// Columns `token_row_of` reads, in order.
const TOKEN_COLUMNS: &str =
    "name, role, scopes, device_id, created_at, expires_at, used_at, revoked_at, token_hash";

fn device_row_of(r: &Row) -> Result<DeviceRow, RelayStoreError> {
    Ok(DeviceRow {
        name: r.try_get(0)?,
        role: r.try_get(1)?,
        scopes: r.try_get(2)?,
        secret_hash: r.try_get(3)?,
        created_at: r.try_get(4)?,
        last_seen: r.try_get(5)?,
        revoked_at: r.try_get(6)?,
        wipe: r.try_get(7)?,
        wiped_at: r.try_get(8)?,
        lease_days: r.try_get(9)?,
    })
}

fn token_row_of(r: &Row) -> Result<TokenRow, RelayStoreError> {
    let device: Option<Vec<u8>> = r.try_get(3)?;
    Ok(TokenRow {
        name: r.try_get(0)?,
        role: r.try_get(1)?,
        scopes: r.try_get(2)?,
        device_id: device
            .as_deref()
            .map(|b| uuid_of(b, "enrolments"))
            .transpose()?,
        created_at: r.try_get(4)?,
        expires_at: r.try_get(5)?,
        used_at: r.try_get(6)?,
        revoked_at: r.try_get(7)?,
        hash: r.try_get(8)?,
    })
}

fn device_row(c: &mut impl Run, id: Uuid) -> Result<Option<DeviceRow>, RelayStoreError> {
    c.query_opt(
        &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1"),
        &[&id.as_bytes().as_slice()],
    )?
    .as_ref()
    .map(device_row_of)
    .transpose()
}

/// The id and name parameters of a statement on `who`'s devices.
fn holder_params(who: Holder<'_>) -> (Option<Vec<u8>>, Option<&str>) {
    match who {
        Holder::Device(id) => (Some(id.as_bytes().to_vec()), None),
        Holder::Named(n) => (None, Some(n)),
    }
}

fn ids_of(rows: &[Row]) -> Result<Vec<Uuid>, RelayStoreError> {
    rows.iter()
        .map(|r| uuid_of(&r.try_get::<_, Vec<u8>>(0)?, "devices"))
        .collect()
}

impl DeviceDb for PgTx<'_> {
    fn device_row(&self, id: Uuid) -> Result<Option<DeviceRow>, RelayStoreError> {
        device_row(&mut *self.tx.borrow_mut(), id)
    }

    fn put_device(&self, d: &NewDevice<'_>) -> Result<(), RelayStoreError> {
        self.exec(
            "INSERT INTO devices (device_id, name, role, scopes, secret_hash, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (device_id) DO UPDATE SET name = excluded.name, role = excluded.role,
               scopes = excluded.scopes, secret_hash = excluded.secret_hash, revoked_at = NULL,
               wipe = NULL, wiped_at = NULL",
            &[
                &d.id.as_bytes().as_slice(),
                &d.name,
                &d.role,
                &d.scopes,
                &d.secret_hash,
                &d.now,
            ],
        )?;
        Ok(())
    }

    fn revoke_devices(&self, who: Holder<'_>, now: i64) -> Result<Vec<Uuid>, RelayStoreError> {
        let (id, name) = holder_params(who);
        ids_of(&self.q(
            "UPDATE devices SET revoked_at = $3
              WHERE (device_id = $1 OR ($1 IS NULL AND name = $2)) AND revoked_at IS NULL
              RETURNING device_id",
            &[&id, &name, &now],
        )?)
    }

    fn set_grant(
        &self,
        who: Holder<'_>,
        role: Option<&str>,
        scopes: Option<&str>,
    ) -> Result<Vec<Uuid>, RelayStoreError> {
        let (id, name) = holder_params(who);
        ids_of(&self.q(
            "UPDATE devices SET role = COALESCE($3, role), scopes = COALESCE($4, scopes)
              WHERE (device_id = $1 OR ($1 IS NULL AND name = $2)) AND revoked_at IS NULL
              RETURNING device_id",
            &[&id, &name, &role, &scopes],
        )?)
    }

    fn insert_token(&self, hash: &[u8], t: &TokenRow) -> Result<(), RelayStoreError> {
        self.exec(
            "INSERT INTO enrolments (token_hash, name, role, scopes, device_id, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &hash,
                &t.name,
                &t.role,
                &t.scopes,
                &t.device_id.map(|d| d.as_bytes().to_vec()),
                &t.created_at,
                &t.expires_at,
            ],
        )?;
        Ok(())
    }

    fn token(&self, hash: &[u8]) -> Result<Option<TokenRow>, RelayStoreError> {
        // FOR UPDATE: two nodes redeeming the same token at once see it one after the other,
        // so it is used once.
        self.q_opt(
            &format!("SELECT {TOKEN_COLUMNS} FROM enrolments WHERE token_hash = $1 FOR UPDATE"),
            &[&hash],
        )?
        .as_ref()
        .map(token_row_of)
        .transpose()
    }

    fn use_token(&self, hash: &[u8], device: Uuid, now: i64) -> Result<(), RelayStoreError> {
        self.exec(
            "UPDATE enrolments SET used_at = $2, device_id = $3 WHERE token_hash = $1",
            &[&hash, &now, &device.as_bytes().as_slice()],
        )?;
        Ok(())
    }

    fn revoke_tokens(&self, who: Holder<'_>, now: i64) -> Result<usize, RelayStoreError> {
        let n = match who {
            Holder::Device(id) => self.exec(
                "UPDATE enrolments SET revoked_at = $2
                  WHERE device_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
                &[&id.as_bytes().as_slice(), &now],
            )?,
            Holder::Named(name) => self.exec(
                "UPDATE enrolments SET revoked_at = $2
                  WHERE name = $1 AND used_at IS NULL AND revoked_at IS NULL",
                &[&name, &now],
            )?,
        };
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn cancel_token(&self, hash: &[u8], now: i64) -> Result<bool, RelayStoreError> {
        Ok(self.exec(
            "UPDATE enrolments SET revoked_at = $2
              WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL",
            &[&hash, &now],
        )? == 1)
    }

    fn bump_devices(&self) -> Result<(), RelayStoreError> {
        // Every node hears of it through the notification sent when this commits.
        let g: i64 = self
            .q_opt(
                "UPDATE counters SET value = value + 1 WHERE name = $1 RETURNING value",
                &[&DEVICES_GENERATION],
            )?
            .ok_or_else(|| RelayStoreError::Corrupt("no device-change counter".into()))?
            .try_get(0)?;
        self.exec(
            "SELECT pg_notify($1, $2)",
            &[&DEVICES_CHANNEL, &g.to_string()],
        )?;
        Ok(())
    }

    fn order_wipe(
        &self,
        who: Holder<'_>,
        mode: &str,
        revoke: bool,
        now: i64,
    ) -> Result<Vec<Uuid>, RelayStoreError> {
        let (id, name) = holder_params(who);
        ids_of(&self.q(
            "UPDATE devices SET wipe = $3,
                    revoked_at = CASE WHEN $4 THEN COALESCE(revoked_at, $5) ELSE revoked_at END
              WHERE (device_id = $1 OR ($1 IS NULL AND name = $2)) AND wiped_at IS NULL
                AND ($4 OR revoked_at IS NULL)
              RETURNING device_id",
            &[&id, &name, &mode, &revoke, &now],
        )?)
    }

    fn set_wiped(&self, id: Uuid, now: i64) -> Result<bool, RelayStoreError> {
        Ok(self.exec(
            "UPDATE devices SET wiped_at = $2, revoked_at = COALESCE(revoked_at, $2)
              WHERE device_id = $1 AND wiped_at IS NULL AND wipe IS NOT NULL",
            &[&id.as_bytes().as_slice(), &now],
        )? == 1)
    }

    fn set_lease(&self, who: Holder<'_>, days: Option<i64>) -> Result<Vec<Uuid>, RelayStoreError> {
        let (id, name) = holder_params(who);
        ids_of(&self.q(
            "UPDATE devices SET lease_days = $3
              WHERE (device_id = $1 OR ($1 IS NULL AND name = $2)) AND revoked_at IS NULL
              RETURNING device_id",
            &[&id, &name, &days],
        )?)
    }

    fn add_event(
        &self,
        device: Uuid,
        at: i64,
        event: &str,
        detail: &str,
    ) -> Result<(), RelayStoreError> {
        self.exec(
            "INSERT INTO device_events (device_id, at, event, detail) VALUES ($1, $2, $3, $4)",
            &[&device.as_bytes().as_slice(), &at, &event, &detail],
        )?;
        Ok(())
    }
}

impl DeviceBackend for PgRelayStore {
    fn options(&self) -> &RelayStoreOptions {
        &self.inner.opts
    }

    fn touched(&self) -> &Mutex<HashMap<Uuid, Instant>> {
        &self.inner.touched
    }

    fn device_tx<T>(
        &self,
        f: impl FnOnce(&dyn DeviceDb) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError> {
        let v = self.with_writer(|client, _| {
            let db = PgTx::plain(client)?;
            let v = f(&db)?;
            db.tx.into_inner().commit()?;
            Ok(v)
        })?;
        self.poll_devices()?;
        Ok(v)
    }

    fn read_device(&self, id: Uuid) -> Result<Option<DeviceRow>, RelayStoreError> {
        self.read_priority(|c| device_row(c, id))
    }

    fn token_exists(&self, hash: &[u8]) -> Result<bool, RelayStoreError> {
        self.read_priority(|c| {
            Ok(
                c.query_opt("SELECT 1 FROM enrolments WHERE token_hash = $1", &[&hash])?
                    .is_some(),
            )
        })
    }

    fn insert_open_device(
        &self,
        id: Uuid,
        role: &str,
        scopes: &str,
        now: i64,
    ) -> Result<bool, RelayStoreError> {
        let n = self.read_priority(|c| {
            Ok(c.execute(
                "INSERT INTO devices (device_id, name, role, scopes, secret_hash, created_at, last_seen)
                 VALUES ($1, 'open enrolment', $2, $3, NULL, $4, $4) ON CONFLICT DO NOTHING",
                &[&id.as_bytes().as_slice(), &role, &scopes, &now],
            )?)
        })?;
        Ok(n > 0)
    }

    fn write_last_seen(&self, id: Uuid, now: i64) -> Result<(), RelayStoreError> {
        // A one-row update at most every 30 s per device: the priority lane, so that a busy
        // pool does not fail a sync whose work is already done.
        self.read_priority(|c| {
            c.execute(
                "UPDATE devices SET last_seen = $2 WHERE device_id = $1",
                &[&id.as_bytes().as_slice(), &now],
            )?;
            Ok(())
        })
    }

    fn device_rows(&self, day: i64) -> Result<Vec<(Uuid, DeviceRow, Usage)>, RelayStoreError> {
        self.read(|c| {
            // One query for the whole fleet: a round trip per device is seconds at 20,000.
            let rows = c.query(
                &format!(
                    "SELECT {DEVICE_COLUMNS}, device_id, u.new_docs, u.bytes FROM devices
                       LEFT JOIN device_usage u ON u.device = devices.device_id AND u.day = $1
                      ORDER BY created_at, device_id"
                ),
                &[&day],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            let n = DEVICE_COLUMN_COUNT;
            for r in rows {
                let id = uuid_of(&r.try_get::<_, Vec<u8>>(n)?, "devices")?;
                let usage = super::super::usage_of(r.try_get(n + 1)?, r.try_get(n + 2)?);
                out.push((id, device_row_of(&r)?, usage));
            }
            Ok(out)
        })
    }

    fn token_rows(&self) -> Result<Vec<TokenRow>, RelayStoreError> {
        self.read(|c| {
            c.query(
                &format!("SELECT {TOKEN_COLUMNS} FROM enrolments ORDER BY created_at DESC"),
                &[],
            )?
            .iter()
            .map(token_row_of)
            .collect()
        })
    }

    fn event_rows(&self) -> Result<Vec<EventRow>, RelayStoreError> {
        self.read(|c| {
            c.query(
                "SELECT e.seq, e.device_id, d.name, e.at, e.event, e.detail
                   FROM device_events e LEFT JOIN devices d ON d.device_id = e.device_id
                  ORDER BY e.seq",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(EventRow {
                    seq: r.try_get(0)?,
                    device_id: uuid_of(&r.try_get::<_, Vec<u8>>(1)?, "device_events")?,
                    device_name: r.try_get(2)?,
                    at: r.try_get(3)?,
                    event: r.try_get(4)?,
                    detail: r.try_get(5)?,
                })
            })
            .collect()
        })
    }
}

impl PgRelayStore {
    crate::store::devices::device_methods!();
}

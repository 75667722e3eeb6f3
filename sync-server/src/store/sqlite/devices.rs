//! The SQLite side of the device policy (`store::devices`): its statements for a rusqlite
//! transaction (`DeviceDb`), and where they run (`DeviceBackend`): device changes on the
//! writer connection, a connecting device's reads on the read pool.

use super::super::*;
use super::SqliteRelayStore;

/// Bumps the device-change counter inside a write transaction.
pub(super) fn bump_devices(tx: &Connection) -> Result<(), RelayStoreError> {
    tx.prepare_cached("UPDATE meta SET value = value + 1 WHERE key = ?1")?
        .execute([DEVICES_GENERATION])?;
    Ok(())
}

/// The device-change counter.
pub(super) fn devices_generation(c: &Connection) -> Result<u64, RelayStoreError> {
    let v: Option<i64> = c
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [DEVICES_GENERATION],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

/// Columns `device_row_of` reads, in order.
const DEVICE_COLUMNS: &str = "name, role, scopes, secret_hash, created_at, last_seen, revoked_at, wipe, wiped_at, lease_days";
/// How many they are: the columns a query reads after them start here.
const DEVICE_COLUMN_COUNT: usize = 10;

fn device_row(conn: &Connection, id: Uuid) -> Result<Option<DeviceRow>, RelayStoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?1"
        ))?
        .query_row([id.as_bytes()], device_row_of)
        .optional()?)
}

/// A device from the first columns of `r` ([`DEVICE_COLUMNS`]).
fn device_row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        name: r.get(0)?,
        role: r.get(1)?,
        scopes: r.get(2)?,
        secret_hash: r.get(3)?,
        created_at: r.get(4)?,
        last_seen: r.get(5)?,
        revoked_at: r.get(6)?,
        wipe: r.get(7)?,
        wiped_at: r.get(8)?,
        lease_days: r.get(9)?,
    })
}

/// The id and name parameters of a statement on `who`'s devices.
fn holder_params(who: Holder<'_>) -> (Option<Vec<u8>>, Option<&str>) {
    match who {
        Holder::Device(id) => (Some(id.as_bytes().to_vec()), None),
        Holder::Named(n) => (None, Some(n)),
    }
}

fn uuid_of(b: &[u8]) -> Result<Uuid, RelayStoreError> {
    Uuid::from_slice(b).map_err(|_| RelayStoreError::Corrupt("bad device id".into()))
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenRow, Option<Vec<u8>>)> {
    Ok((
        TokenRow {
            name: r.get(0)?,
            role: r.get(1)?,
            scopes: r.get(2)?,
            device_id: None,
            created_at: r.get(4)?,
            expires_at: r.get(5)?,
            used_at: r.get(6)?,
            revoked_at: r.get(7)?,
            hash: r.get(8)?,
        },
        r.get(3)?,
    ))
}

/// Columns `token_row` reads.
const TOKEN_COLUMNS: &str =
    "name, role, scopes, device_id, created_at, expires_at, used_at, revoked_at, token_hash";

fn with_device((mut t, device): (TokenRow, Option<Vec<u8>>)) -> Result<TokenRow, RelayStoreError> {
    t.device_id = device.as_deref().map(uuid_of).transpose()?;
    Ok(t)
}

impl DeviceDb for Transaction<'_> {
    fn device_row(&self, id: Uuid) -> Result<Option<DeviceRow>, RelayStoreError> {
        device_row(self, id)
    }

    fn put_device(&self, d: &NewDevice<'_>) -> Result<(), RelayStoreError> {
        self.prepare_cached(
            "INSERT INTO devices (device_id, name, role, scopes, secret_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (device_id) DO UPDATE SET name = excluded.name, role = excluded.role,
               scopes = excluded.scopes, secret_hash = excluded.secret_hash, revoked_at = NULL,
               wipe = NULL, wiped_at = NULL",
        )?
        .execute(params![
            d.id.as_bytes(),
            d.name,
            d.role,
            d.scopes,
            d.secret_hash,
            d.now
        ])?;
        Ok(())
    }

    fn revoke_devices(&self, who: Holder<'_>, now: i64) -> Result<Vec<Uuid>, RelayStoreError> {
        let (id, name) = holder_params(who);
        self.prepare_cached(
            "UPDATE devices SET revoked_at = ?3
              WHERE (device_id = ?1 OR (?1 IS NULL AND name = ?2)) AND revoked_at IS NULL
              RETURNING device_id",
        )?
        .query_map(params![id, name, now], |r| r.get::<_, Vec<u8>>(0))?
        .map(|b| uuid_of(&b?))
        .collect()
    }

    fn set_grant(
        &self,
        who: Holder<'_>,
        role: Option<&str>,
        scopes: Option<&str>,
    ) -> Result<Vec<Uuid>, RelayStoreError> {
        let (id, name) = holder_params(who);
        self.prepare_cached(
            "UPDATE devices SET role = COALESCE(?3, role), scopes = COALESCE(?4, scopes)
              WHERE (device_id = ?1 OR (?1 IS NULL AND name = ?2)) AND revoked_at IS NULL
              RETURNING device_id",
        )?
        .query_map(params![id, name, role, scopes], |r| r.get::<_, Vec<u8>>(0))?
        .map(|b| uuid_of(&b?))
        .collect()
    }

    fn insert_token(&self, hash: &[u8], t: &TokenRow) -> Result<(), RelayStoreError> {
        self.prepare_cached(
            "INSERT INTO enrolments (token_hash, name, role, scopes, device_id, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            hash,
            t.name,
            t.role,
            t.scopes,
            t.device_id.map(|d| d.as_bytes().to_vec()),
            t.created_at,
            t.expires_at
        ])?;
        Ok(())
    }

    fn token(&self, hash: &[u8]) -> Result<Option<TokenRow>, RelayStoreError> {
        // The writer's IMMEDIATE transaction already excludes a concurrent redemption.
        self.prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM enrolments WHERE token_hash = ?1"
        ))?
        .query_row([hash], token_row)
        .optional()?
        .map(with_device)
        .transpose()
    }

    fn use_token(&self, hash: &[u8], device: Uuid, now: i64) -> Result<(), RelayStoreError> {
        self.prepare_cached(
            "UPDATE enrolments SET used_at = ?2, device_id = ?3 WHERE token_hash = ?1",
        )?
        .execute(params![hash, now, device.as_bytes()])?;
        Ok(())
    }

    fn revoke_tokens(&self, who: Holder<'_>, now: i64) -> Result<usize, RelayStoreError> {
        let n = match who {
            Holder::Device(id) => self
                .prepare_cached(
                    "UPDATE enrolments SET revoked_at = ?2
                      WHERE device_id = ?1 AND used_at IS NULL AND revoked_at IS NULL",
                )?
                .execute(params![id.as_bytes(), now])?,
            Holder::Named(name) => self
                .prepare_cached(
                    "UPDATE enrolments SET revoked_at = ?2
                      WHERE name = ?1 AND used_at IS NULL AND revoked_at IS NULL",
                )?
                .execute(params![name, now])?,
        };
        Ok(n)
    }

    fn cancel_token(&self, hash: &[u8], now: i64) -> Result<bool, RelayStoreError> {
        Ok(self
            .prepare_cached(
                "UPDATE enrolments SET revoked_at = ?2
                  WHERE token_hash = ?1 AND used_at IS NULL AND revoked_at IS NULL",
            )?
            .execute(params![hash, now])?
            == 1)
    }

    fn bump_devices(&self) -> Result<(), RelayStoreError> {
        bump_devices(self)
    }

    fn order_wipe(
        &self,
        who: Holder<'_>,
        mode: &str,
        revoke: bool,
        now: i64,
    ) -> Result<Vec<Uuid>, RelayStoreError> {
        let (id, name) = holder_params(who);
        self.prepare_cached(
            "UPDATE devices SET wipe = ?3,
                    revoked_at = CASE WHEN ?4 THEN COALESCE(revoked_at, ?5) ELSE revoked_at END
              WHERE (device_id = ?1 OR (?1 IS NULL AND name = ?2)) AND wiped_at IS NULL
                AND (?4 OR revoked_at IS NULL)
              RETURNING device_id",
        )?
        .query_map(params![id, name, mode, revoke, now], |r| {
            r.get::<_, Vec<u8>>(0)
        })?
        .map(|b| uuid_of(&b?))
        .collect()
    }

    fn set_wiped(&self, id: Uuid, now: i64) -> Result<bool, RelayStoreError> {
        Ok(self
            .prepare_cached(
                "UPDATE devices SET wiped_at = ?2, revoked_at = COALESCE(revoked_at, ?2)
                  WHERE device_id = ?1 AND wiped_at IS NULL AND wipe IS NOT NULL",
            )?
            .execute(params![id.as_bytes(), now])?
            == 1)
    }

    fn set_lease(&self, who: Holder<'_>, days: Option<i64>) -> Result<Vec<Uuid>, RelayStoreError> {
        let (id, name) = holder_params(who);
        self.prepare_cached(
            "UPDATE devices SET lease_days = ?3
              WHERE (device_id = ?1 OR (?1 IS NULL AND name = ?2)) AND revoked_at IS NULL
              RETURNING device_id",
        )?
        .query_map(params![id, name, days], |r| r.get::<_, Vec<u8>>(0))?
        .map(|b| uuid_of(&b?))
        .collect()
    }

    fn add_event(
        &self,
        device: Uuid,
        at: i64,
        event: &str,
        detail: &str,
    ) -> Result<(), RelayStoreError> {
        self.prepare_cached(
            "INSERT INTO device_events (device_id, at, event, detail) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![device.as_bytes(), at, event, detail])?;
        Ok(())
    }
}

impl DeviceBackend for SqliteRelayStore {
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
        let v = self.write(|tx| f(tx))?;
        self.poll_devices()?;
        Ok(v)
    }

    fn read_device(&self, id: Uuid) -> Result<Option<DeviceRow>, RelayStoreError> {
        self.read_priority(|c| device_row(c, id))
    }

    fn token_exists(&self, hash: &[u8]) -> Result<bool, RelayStoreError> {
        self.read_priority(|c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM enrolments WHERE token_hash = ?1")?
                    .exists([hash])?,
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
        let n = self.write(|tx| {
            Ok(tx.execute(
                "INSERT OR IGNORE INTO devices (device_id, name, role, scopes, secret_hash, created_at, last_seen)
                 VALUES (?1, 'open enrolment', ?2, ?3, NULL, ?4, ?4)",
                params![id.as_bytes(), role, scopes, now],
            )?)
        })?;
        Ok(n > 0)
    }

    fn write_last_seen(&self, id: Uuid, now: i64) -> Result<(), RelayStoreError> {
        self.write(|tx| {
            tx.prepare_cached("UPDATE devices SET last_seen = ?2 WHERE device_id = ?1")?
                .execute(params![id.as_bytes(), now])?;
            Ok(())
        })
    }

    fn device_rows(&self, day: i64) -> Result<Vec<(Uuid, DeviceRow, Usage)>, RelayStoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS}, device_id, u.new_docs, u.bytes
                   FROM devices LEFT JOIN device_usage u ON u.device = devices.device_id AND u.day = ?1
                  ORDER BY created_at, device_id"
            ))?;
            let mut rows = st.query([day])?;
            let mut out = Vec::new();
            let n = DEVICE_COLUMN_COUNT;
            while let Some(r) = rows.next()? {
                let id = uuid_of(&r.get::<_, Vec<u8>>(n)?)?;
                out.push((id, device_row_of(r)?, usage_of(r.get(n + 1)?, r.get(n + 2)?)));
            }
            Ok(out)
        })
    }

    fn token_rows(&self) -> Result<Vec<TokenRow>, RelayStoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM enrolments ORDER BY created_at DESC"
            ))?
            .query_map([], token_row)?
            .map(|r| with_device(r?))
            .collect()
        })
    }

    fn event_rows(&self) -> Result<Vec<EventRow>, RelayStoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT e.seq, e.device_id, d.name, e.at, e.event, e.detail
                   FROM device_events e LEFT JOIN devices d ON d.device_id = e.device_id
                  ORDER BY e.seq",
            )?;
            let mut rows = st.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(EventRow {
                    seq: r.get(0)?,
                    device_id: uuid_of(&r.get::<_, Vec<u8>>(1)?)?,
                    device_name: r.get(2)?,
                    at: r.get(3)?,
                    event: r.get(4)?,
                    detail: r.get(5)?,
                });
            }
            Ok(out)
        })
    }
}

impl SqliteRelayStore {
    crate::store::devices::device_methods!();
}

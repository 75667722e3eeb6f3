//! The device and enrolment policy, written once for both backends: who is admitted to a
//! session (`authenticate`, with open enrolment), how an enrolment token is made and redeemed
//! (its refusal rules), enrolment with a relay-made secret, revocation, grant changes, the
//! device's standing orders (a remote wipe, the offline lease) and the trail of device events
//! they leave, and the records `device list` and `device token list` show.
//!
//! A remote wipe (`device revoke --wipe`, protocol 7): IT orders it `now` (the device is
//! revoked at once, like `revoke`) or `after_upload` (the device stays active, so that its
//! uploads are still accepted, until it reports the wipe). A revoked device whose wipe is still
//! to be carried out is admitted on its credential alone, to hear the order (the session then
//! serves it nothing else); once it reports the wipe it is revoked for good. The offline lease
//! is the device's own (`device lease`), else its role's from the configuration, else the
//! relay's default; 0 days is no lease.
//!
//! Each backend supplies two things, with SQL only:
//! - [`DeviceDb`]: the statements of one write transaction (read a device or a token, write a
//!   device, use or revoke tokens, change grants, bump the device-change counter);
//! - [`DeviceBackend`]: where that transaction runs and is committed, and the few reads and
//!   single-statement writes made outside one (the hot path of a connecting device).
//!
//! The functions here hold every rule and every refusal message; a backend never decides who
//! gets in. Secrets are never stored: devices and tokens are kept as SHA-256 hashes, and a
//! presented secret is compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fieldsync_core::Role;
use fieldsync_core::protocol::{DeviceInfo, DevicePolicy, WipeOrder, WipeReport};
use ring::rand::SecureRandom;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    DeviceEvent, DeviceRecord, Enrolment, EnrolmentRecord, OfflineLease, RelayStoreError,
    RelayStoreOptions, Revoked, TOUCH_EVERY, Usage, day_of, lock,
};

/// The shortest device credential the relay accepts at enrolment.
pub(super) const MIN_CREDENTIAL_LEN: usize = 32;
/// Bytes of randomness in a secret the relay makes (`device enroll`).
const DEVICE_SECRET_BYTES: usize = 32;
/// The longest offline lease a device may be given, in days (ten years).
pub const MAX_LEASE_DAYS: u32 = 3650;

/// Device events (`device_events.event`).
const EVENT_WIPE_ORDERED: &str = "wipe_ordered";
const EVENT_WIPED: &str = "wiped";
const EVENT_LEASE_SET: &str = "lease_set";

/// A device row as stored.
#[derive(Clone, Debug)]
pub(super) struct DeviceRow {
    pub(super) name: String,
    pub(super) role: String,
    pub(super) scopes: String,
    pub(super) secret_hash: Option<Vec<u8>>,
    pub(super) created_at: i64,
    pub(super) last_seen: Option<i64>,
    pub(super) revoked_at: Option<i64>,
    /// A wipe order, `now` or `after_upload`; carried out once `wiped_at` is set.
    pub(super) wipe: Option<String>,
    /// When the device reported its wipe carried out.
    pub(super) wiped_at: Option<i64>,
    /// The device's own offline lease in days (`None`: its role's default).
    pub(super) lease_days: Option<i64>,
}

impl DeviceRow {
    /// The grant this row holds.
    pub(super) fn info(&self, device_id: Uuid) -> Result<DeviceInfo, RelayStoreError> {
        let role = Role::parse(&self.role).ok_or_else(|| {
            RelayStoreError::Corrupt(format!("device {device_id} has role `{}`", self.role))
        })?;
        let scopes: Vec<String> = serde_json::from_str(&self.scopes)
            .map_err(|e| RelayStoreError::Corrupt(format!("device {device_id} scopes: {e}")))?;
        Ok(DeviceInfo {
            device_id,
            name: self.name.clone(),
            role,
            scopes,
        })
    }

    /// The wipe order the device is still to carry out.
    fn pending_wipe(&self, device_id: Uuid) -> Result<Option<WipeOrder>, RelayStoreError> {
        let order = match (&self.wipe, self.wiped_at) {
            (Some(w), None) => wipe_order(w).ok_or_else(|| {
                RelayStoreError::Corrupt(format!("device {device_id} has wipe order `{w}`"))
            })?,
            _ => return Ok(None),
        };
        // Revoked since (a plain `device revoke`): its uploads are refused now, so waiting for
        // them would never end; it wipes at once.
        Ok(Some(if self.revoked_at.is_some() {
            WipeOrder::Now
        } else {
            order
        }))
    }

    /// The device's own offline lease in days.
    fn own_lease(&self, device_id: Uuid) -> Result<Option<u32>, RelayStoreError> {
        self.lease_days
            .map(|d| {
                u32::try_from(d).map_err(|_| {
                    RelayStoreError::Corrupt(format!("device {device_id} has a lease of {d} days"))
                })
            })
            .transpose()
    }

    /// Whether `credential` is this device's secret.
    fn proves(&self, credential: &str) -> bool {
        self.secret_hash
            .as_ref()
            .is_some_and(|h| crate::tls::ct_eq(h, &hash_secret(credential)))
    }
}

/// An enrolment token row as stored (its secret is not: only its hash, the row's key).
#[derive(Clone, Debug)]
pub(super) struct TokenRow {
    pub(super) name: String,
    pub(super) role: String,
    pub(super) scopes: String,
    pub(super) device_id: Option<Uuid>,
    pub(super) created_at: i64,
    pub(super) expires_at: i64,
    pub(super) used_at: Option<i64>,
    pub(super) revoked_at: Option<i64>,
    /// The hash of its secret, the row's key.
    pub(super) hash: Vec<u8>,
}

/// A row of the trail of device events, with the device's name.
#[derive(Clone, Debug)]
pub(super) struct EventRow {
    pub(super) seq: i64,
    pub(super) device_id: Uuid,
    pub(super) device_name: Option<String>,
    pub(super) at: i64,
    pub(super) event: String,
    /// JSON.
    pub(super) detail: String,
}

/// A wipe order as stored (`devices.wipe`).
pub(super) fn wipe_order(stored: &str) -> Option<WipeOrder> {
    match stored {
        "now" => Some(WipeOrder::Now),
        "after_upload" => Some(WipeOrder::AfterUpload),
        _ => None,
    }
}

/// How a wipe order is stored (`devices.wipe`) and named in events.
pub(super) fn wipe_name(order: WipeOrder) -> &'static str {
    match order {
        WipeOrder::Now => "now",
        WipeOrder::AfterUpload => "after_upload",
    }
}

/// The lease a device is sent: its own, else its role's, else the relay's default (`None`:
/// no lease, also for 0 days).
fn effective_lease(lease: &OfflineLease, role: Role, own: Option<u32>) -> Option<u32> {
    let days = own.unwrap_or_else(|| lease.days_for(role));
    (days > 0).then_some(days)
}

/// A device to write: inserted, or replacing the row of the same id (lifting a revocation
/// and cancelling a wipe order).
pub(super) struct NewDevice<'a> {
    pub(super) id: Uuid,
    pub(super) name: &'a str,
    pub(super) role: &'a str,
    pub(super) scopes: &'a str,
    pub(super) secret_hash: &'a [u8],
    pub(super) now: i64,
}

/// Whose devices or tokens a statement changes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Holder<'a> {
    /// The one device of this id (and tokens bound to it).
    Device(Uuid),
    /// Every active device, or unused token, of this exact name.
    Named(&'a str),
}

/// The statements of the policy's write transactions (see the module docs). Every method
/// runs inside the one transaction that [`DeviceBackend::device_tx`] commits.
pub(super) trait DeviceDb {
    /// A device row.
    fn device_row(&self, id: Uuid) -> Result<Option<DeviceRow>, RelayStoreError>;
    /// Inserts a device, or replaces the one of the same id, lifts its revocation and
    /// cancels its wipe order (keeping its own lease).
    fn put_device(&self, d: &NewDevice<'_>) -> Result<(), RelayStoreError>;
    /// Revokes the active devices of `who`; returns those revoked.
    fn revoke_devices(&self, who: Holder<'_>, now: i64) -> Result<Vec<Uuid>, RelayStoreError>;
    /// Changes the role and/or scopes (JSON) of the active devices of `who`; returns those
    /// changed.
    fn set_grant(
        &self,
        who: Holder<'_>,
        role: Option<&str>,
        scopes: Option<&str>,
    ) -> Result<Vec<Uuid>, RelayStoreError>;
    /// Stores a new token under the hash of its secret.
    fn insert_token(&self, hash: &[u8], t: &TokenRow) -> Result<(), RelayStoreError>;
    /// A token, locked against a concurrent redemption where the database has row locks.
    fn token(&self, hash: &[u8]) -> Result<Option<TokenRow>, RelayStoreError>;
    /// Marks a token used by `device`.
    fn use_token(&self, hash: &[u8], device: Uuid, now: i64) -> Result<(), RelayStoreError>;
    /// Revokes the unused, unrevoked tokens of `who`; returns how many.
    fn revoke_tokens(&self, who: Holder<'_>, now: i64) -> Result<usize, RelayStoreError>;
    /// Revokes the token with this hash if it is unused and not revoked; returns whether it
    /// was.
    fn cancel_token(&self, hash: &[u8], now: i64) -> Result<bool, RelayStoreError>;
    /// Bumps the device-change counter, so every session re-reads its grant.
    fn bump_devices(&self) -> Result<(), RelayStoreError>;
    /// Orders the devices of `who` that are not wiped yet wiped (`mode` as stored): with
    /// `revoke`, active and revoked ones, revoking those still active at `now`; without,
    /// active ones only. Returns those ordered.
    fn order_wipe(
        &self,
        who: Holder<'_>,
        mode: &str,
        revoke: bool,
        now: i64,
    ) -> Result<Vec<Uuid>, RelayStoreError>;
    /// Records that a device not yet wiped carried out its wipe at `now`, revoking it if it
    /// is not; returns whether it was not wiped yet.
    fn set_wiped(&self, id: Uuid, now: i64) -> Result<bool, RelayStoreError>;
    /// Sets the own offline lease (`None`: its role's default) of the active devices of
    /// `who`; returns those changed.
    fn set_lease(&self, who: Holder<'_>, days: Option<i64>) -> Result<Vec<Uuid>, RelayStoreError>;
    /// Appends an event (`detail` is JSON) to the append-only trail of device events.
    fn add_event(
        &self,
        device: Uuid,
        at: i64,
        event: &str,
        detail: &str,
    ) -> Result<(), RelayStoreError>;
}

/// A backend's side of the policy (see the module docs).
pub(super) trait DeviceBackend {
    /// The store's options (clock, open enrolment).
    fn options(&self) -> &RelayStoreOptions;
    /// When each device's `last_seen` was last written by this process.
    fn touched(&self) -> &Mutex<HashMap<Uuid, Instant>>;
    /// Runs `f` in one write transaction, commits it when `f` succeeds (rolls back when it
    /// fails), then notifies this process's device receivers if the counter moved.
    fn device_tx<T>(
        &self,
        f: impl FnOnce(&dyn DeviceDb) -> Result<T, RelayStoreError>,
    ) -> Result<T, RelayStoreError>;
    /// One device row, read outside a write transaction where a connecting device is never
    /// starved by bulk reads.
    fn read_device(&self, id: Uuid) -> Result<Option<DeviceRow>, RelayStoreError>;
    /// Whether a token with this hash exists (a read: guessing costs no write lock).
    fn token_exists(&self, hash: &[u8]) -> Result<bool, RelayStoreError>;
    /// Registers a device by open enrolment (no secret), unless the id is known; returns
    /// whether it was inserted. One statement of its own.
    fn insert_open_device(
        &self,
        id: Uuid,
        role: &str,
        scopes: &str,
        now: i64,
    ) -> Result<bool, RelayStoreError>;
    /// Writes a device's `last_seen`. One statement of its own.
    fn write_last_seen(&self, id: Uuid, now: i64) -> Result<(), RelayStoreError>;
    /// Every device row with its id and its usage on `day`, by creation time.
    fn device_rows(&self, day: i64) -> Result<Vec<(Uuid, DeviceRow, Usage)>, RelayStoreError>;
    /// Every token row, newest first.
    fn token_rows(&self) -> Result<Vec<TokenRow>, RelayStoreError>;
    /// The trail of device events, oldest first.
    fn event_rows(&self) -> Result<Vec<EventRow>, RelayStoreError>;
}

/// A sender's grant as the upload rules read it inside their transaction.
pub(super) fn sender(
    db: &impl DeviceDb,
    id: Uuid,
) -> Result<Option<fieldsync_core::protocol::rules::Sender>, RelayStoreError> {
    use fieldsync_core::protocol::rules::Sender;
    Ok(match db.device_row(id)? {
        Some(r) if r.revoked_at.is_some() => Some(Sender::Revoked),
        Some(r) => Some(Sender::Active(r.info(id)?)),
        None => None,
    })
}

/// SHA-256 of a secret, as stored.
pub(super) fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A token's id for people: the first hex digits of its secret's hash (which is what the
/// relay stores), so it names the token without revealing anything that redeems it.
pub(super) fn token_id(hash: &[u8]) -> String {
    hex::encode(&hash[..hash.len().min(TOKEN_ID_BYTES)])
}

/// Bytes of a token's hash shown as its id (12 hex digits).
const TOKEN_ID_BYTES: usize = 6;

/// The id of the token whose secret is `secret` (as `create_enrolment` returned it).
pub fn token_id_of(secret: &str) -> String {
    token_id(&hash_secret(&secret.trim().to_ascii_lowercase()))
}

/// `bytes` random bytes from the system's secure generator, in hex.
pub(super) fn random_hex(bytes: usize) -> Result<String, RelayStoreError> {
    let mut raw = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| RelayStoreError::Random)?;
    Ok(hex::encode(raw))
}

/// Scopes as stored: JSON, at least one, none blank.
pub(super) fn scopes_json(scopes: &[String]) -> Result<String, RelayStoreError> {
    if scopes.is_empty() || scopes.iter().any(|s| s.trim().is_empty()) {
        return Err(RelayStoreError::Invalid(
            "a device needs at least one non-empty scope".into(),
        ));
    }
    serde_json::to_string(scopes).map_err(|e| RelayStoreError::Invalid(e.to_string()))
}

/// `who` as a device id when it parses as one, else as a name.
fn holder(who: &str) -> Holder<'_> {
    Uuid::parse_str(who).map_or(Holder::Named(who), Holder::Device)
}

/// Whether a known device may connect: not revoked, and its secret matches (devices
/// registered by open enrolment have none and are admitted while open enrolment is on). A
/// revoked device whose wipe order is still to be carried out is admitted when its secret
/// proves it (never by open enrolment), so that it hears the order.
fn admit(
    b: &impl DeviceBackend,
    device_id: Uuid,
    row: &DeviceRow,
    credential: Option<&str>,
) -> Result<Option<DeviceInfo>, RelayStoreError> {
    if row.revoked_at.is_some() {
        let hears_wipe =
            row.pending_wipe(device_id)?.is_some() && credential.is_some_and(|c| row.proves(c));
        return if hears_wipe {
            row.info(device_id).map(Some)
        } else {
            Ok(None)
        };
    }
    let ok = match (&row.secret_hash, credential) {
        (Some(_), Some(c)) => row.proves(c),
        (Some(_), None) => false,
        (None, _) => b.options().open.is_some(),
    };
    if ok {
        row.info(device_id).map(Some)
    } else {
        Ok(None)
    }
}

/// Checks a device's credential; in open mode registers unknown devices first.
pub(super) fn authenticate(
    b: &impl DeviceBackend,
    device_id: Uuid,
    credential: Option<&str>,
) -> Result<Option<DeviceInfo>, RelayStoreError> {
    if let Some(r) = b.read_device(device_id)? {
        return admit(b, device_id, &r, credential);
    }
    let Some(open) = b.options().open.as_ref() else {
        return Ok(None);
    };
    let scopes =
        serde_json::to_string(&open.scopes).map_err(|e| RelayStoreError::Invalid(e.to_string()))?;
    let now = b.options().env.now_millis();
    if b.insert_open_device(device_id, open.role.as_str(), &scopes, now)? {
        lock(b.touched()).insert(device_id, Instant::now());
        tracing::info!(device = %device_id, role = %open.role, "registered a device by open enrolment");
    }
    // Read back: a concurrent registration or enrolment may have come first.
    match b.read_device(device_id)? {
        Some(r) => admit(b, device_id, &r, credential),
        None => Ok(None),
    }
}

/// Records that a device finished a sync exchange: written at most every 30 s per device
/// and process.
pub(super) fn touch(b: &impl DeviceBackend, device_id: Uuid) -> Result<(), RelayStoreError> {
    {
        let mut t = lock(b.touched());
        if t.get(&device_id)
            .is_some_and(|at| at.elapsed() < TOUCH_EVERY)
        {
            return Ok(());
        }
        t.insert(device_id, Instant::now());
    }
    b.write_last_seen(device_id, b.options().env.now_millis())
}

/// The current grant of a device: `None` when it is unknown or revoked.
pub(super) fn device_grant(
    b: &impl DeviceBackend,
    device_id: Uuid,
) -> Result<Option<DeviceInfo>, RelayStoreError> {
    match b.read_device(device_id)? {
        Some(r) if r.revoked_at.is_none() => Ok(Some(r.info(device_id)?)),
        _ => Ok(None),
    }
}

/// Enrols a device with a secret the relay makes (a new id unless `device_id` is given;
/// re-enrolling an id replaces its secret, role and scopes and lifts a revocation). Returns
/// the secret, shown only now.
pub(super) fn enroll(
    b: &impl DeviceBackend,
    device_id: Option<Uuid>,
    name: &str,
    role: Role,
    scopes: &[String],
) -> Result<Enrolment, RelayStoreError> {
    let scopes_json = scopes_json(scopes)?;
    let device_id = device_id.unwrap_or_else(|| b.options().env.uuid_v7());
    let secret = random_hex(DEVICE_SECRET_BYTES)?;
    let now = b.options().env.now_millis();
    b.device_tx(|db| {
        db.put_device(&NewDevice {
            id: device_id,
            name,
            role: role.as_str(),
            scopes: &scopes_json,
            secret_hash: &hash_secret(&secret),
            now,
        })?;
        db.bump_devices()
    })?;
    tracing::info!(device = %device_id, %role, ?scopes, "enrolled a device");
    Ok(Enrolment { device_id, secret })
}

/// Creates a one-time enrolment token for a device named `name` with `role` and `scopes`,
/// redeemable until `valid_for` from now, and only by `device_id` when given. Returns the
/// token's secret (shown only now).
pub(super) fn create_token(
    b: &impl DeviceBackend,
    name: &str,
    role: Role,
    scopes: &[String],
    device_id: Option<Uuid>,
    valid_for: Duration,
) -> Result<String, RelayStoreError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(RelayStoreError::Invalid("a device needs a name".into()));
    }
    let scopes_json = scopes_json(scopes)?;
    let secret = random_hex(fieldsync_core::protocol::token::TOKEN_SECRET_BYTES)?;
    let now = b.options().env.now_millis();
    let expires_at = now.saturating_add(i64::try_from(valid_for.as_millis()).unwrap_or(i64::MAX));
    let row = TokenRow {
        name: name.to_string(),
        role: role.as_str().to_string(),
        scopes: scopes_json,
        device_id,
        created_at: now,
        expires_at,
        used_at: None,
        revoked_at: None,
        hash: hash_secret(&secret),
    };
    b.device_tx(|db| {
        db.insert_token(&row.hash, &row)?;
        db.bump_devices()
    })?;
    tracing::info!(name, %role, ?scopes, id = %token_id(&row.hash), "created an enrolment token");
    Ok(secret)
}

/// Redeems an enrolment token for `device_id` with the device's own long-term `credential`.
/// `Ok(Err(reason))` refuses it. Redeeming again with the same device and credential succeeds
/// again (its first answer may have been lost).
pub(super) fn redeem(
    b: &impl DeviceBackend,
    device_id: Uuid,
    token: &str,
    credential: &str,
) -> Result<Result<DeviceInfo, String>, RelayStoreError> {
    if credential.len() < MIN_CREDENTIAL_LEN {
        return Ok(Err("the device credential is too short".into()));
    }
    let token_hash = hash_secret(&token.trim().to_ascii_lowercase());
    if !b.token_exists(&token_hash)? {
        return Ok(Err("unknown enrolment token".to_string()));
    }
    let now = b.options().env.now_millis();
    let out = b.device_tx(|db| {
        let Some(t) = db.token(&token_hash)? else {
            return Ok(Err("unknown enrolment token".to_string()));
        };
        if t.revoked_at.is_some() {
            return Ok(Err("the enrolment token was revoked".into()));
        }
        let existing = db.device_row(device_id)?;
        if t.used_at.is_some() {
            // The same device again with the same credential: its first answer was lost.
            return match existing {
                Some(r)
                    if t.device_id == Some(device_id)
                        && r.revoked_at.is_none()
                        && r.proves(credential) =>
                {
                    Ok(Ok(r.info(device_id)?))
                }
                _ => Ok(Err("the enrolment token was already used".into())),
            };
        }
        if t.device_id.is_some_and(|d| d != device_id) {
            return Ok(Err("the enrolment token is for another device".into()));
        }
        if t.expires_at <= now {
            return Ok(Err("the enrolment token expired".into()));
        }
        // A token names a new device; taking over a known one (enrolled, or revoked) needs a
        // token made for that device id.
        if t.device_id.is_none()
            && existing
                .as_ref()
                .is_some_and(|r| r.secret_hash.is_some() || r.revoked_at.is_some())
        {
            return Ok(Err(format!(
                "device {device_id} is already known to the relay; enrol it with --device-id"
            )));
        }
        db.put_device(&NewDevice {
            id: device_id,
            name: &t.name,
            role: &t.role,
            scopes: &t.scopes,
            secret_hash: &hash_secret(credential),
            now,
        })?;
        db.use_token(&token_hash, device_id, now)?;
        db.bump_devices()?;
        let row = db
            .device_row(device_id)?
            .ok_or_else(|| RelayStoreError::Corrupt("device row vanished".into()))?;
        Ok(Ok(row.info(device_id)?))
    })?;
    match &out {
        Ok(d) => {
            tracing::info!(device = %device_id, name = %d.name, role = %d.role, "device redeemed its enrolment token")
        }
        Err(reason) => tracing::debug!(device = %device_id, %reason, "enrolment refused"),
    }
    Ok(out)
}

/// Revokes one device: it is refused from its next connection or upload on. Returns whether
/// it was known and not yet revoked.
pub(super) fn revoke_device(
    b: &impl DeviceBackend,
    device_id: Uuid,
) -> Result<bool, RelayStoreError> {
    let now = b.options().env.now_millis();
    let revoked = b.device_tx(|db| {
        let revoked = db.revoke_devices(Holder::Device(device_id), now)?;
        if !revoked.is_empty() {
            db.bump_devices()?;
        }
        Ok(!revoked.is_empty())
    })?;
    if revoked {
        tracing::info!(device = %device_id, "revoked a device");
    }
    Ok(revoked)
}

/// Revokes by device id, or by name: every active device and every unused enrolment token
/// with that exact name. Devices are refused from their next connection on, and a running
/// relay closes their open connections within about a second. Errors when nothing matched.
pub(super) fn revoke(b: &impl DeviceBackend, who: &str) -> Result<Revoked, RelayStoreError> {
    let who = who.trim();
    let now = b.options().env.now_millis();
    let out = b.device_tx(|db| {
        let out = Revoked {
            devices: db.revoke_devices(holder(who), now)?,
            tokens: db.revoke_tokens(holder(who), now)?,
        };
        if out.devices.is_empty() && out.tokens == 0 {
            return Err(RelayStoreError::Invalid(format!(
                "no active device or unused enrolment token matches {who:?}"
            )));
        }
        db.bump_devices()?;
        Ok(out)
    })?;
    tracing::info!(who, devices = ?out.devices, tokens = out.tokens, "revoked");
    Ok(out)
}

/// Changes the role and/or scopes of active devices, by id or by name (every active device
/// with that name), keeping their credentials. Their open connections are told to reconnect
/// and get the new grant; changes they uploaded before stay as they are. Returns the devices
/// changed; errors when none matched.
pub(super) fn grant(
    b: &impl DeviceBackend,
    who: &str,
    role: Option<Role>,
    scopes: Option<&[String]>,
) -> Result<Vec<Uuid>, RelayStoreError> {
    if role.is_none() && scopes.is_none() {
        return Err(RelayStoreError::Invalid(
            "a grant change needs a role or scopes".into(),
        ));
    }
    let scopes_json = scopes.map(scopes_json).transpose()?;
    let who = who.trim();
    let changed = b.device_tx(|db| {
        let changed = db.set_grant(holder(who), role.map(Role::as_str), scopes_json.as_deref())?;
        if changed.is_empty() {
            return Err(RelayStoreError::Invalid(format!(
                "no active device matches {who:?}"
            )));
        }
        db.bump_devices()?;
        Ok(changed)
    })?;
    tracing::info!(who, devices = ?changed, ?role, ?scopes, "changed a device grant");
    Ok(changed)
}

/// Orders a remote wipe, by device id or by name (every device with that name not wiped
/// yet). `Now` also revokes the devices, and cancels their unused enrolment tokens, as
/// [`revoke`] does; it may be ordered on a device already revoked. `AfterUpload` leaves the
/// devices active, so their uploads are still accepted until they report the wipe; it takes
/// active devices only. Each device hears the order at its next connection (protocol 7) and
/// the order is written to the trail of device events. Returns the devices ordered and the
/// tokens cancelled; errors when nothing matched.
pub(super) fn order_wipe(
    b: &impl DeviceBackend,
    who: &str,
    order: WipeOrder,
) -> Result<Revoked, RelayStoreError> {
    let who = who.trim();
    let now = b.options().env.now_millis();
    let mode = wipe_name(order);
    let detail = serde_json::json!({ "mode": mode }).to_string();
    let revoke = order == WipeOrder::Now;
    let out = b.device_tx(|db| {
        let devices = db.order_wipe(holder(who), mode, revoke, now)?;
        let tokens = if revoke {
            db.revoke_tokens(holder(who), now)?
        } else {
            0
        };
        if devices.is_empty() && tokens == 0 {
            return Err(RelayStoreError::Invalid(if revoke {
                format!(
                    "no device that is not wiped yet, or unused enrolment token, matches {who:?}"
                )
            } else {
                format!(
                    "no active device that is not wiped yet matches {who:?} (a revoked device \
                     can no longer upload: order the wipe with --wipe instead)"
                )
            }));
        }
        for d in &devices {
            db.add_event(*d, now, EVENT_WIPE_ORDERED, &detail)?;
        }
        db.bump_devices()?;
        Ok(Revoked { devices, tokens })
    })?;
    tracing::info!(who, devices = ?out.devices, tokens = out.tokens, mode, "ordered a remote wipe");
    Ok(out)
}

/// Records that a device carried out its wipe order, with what it reported destroying: the
/// device is revoked for good (if it was not yet) and the report goes to the trail of device
/// events. A second report of the same device is ignored.
pub(super) fn record_wiped(
    b: &impl DeviceBackend,
    device_id: Uuid,
    report: &WipeReport,
) -> Result<(), RelayStoreError> {
    let now = b.options().env.now_millis();
    let detail = serde_json::to_string(report)
        .map_err(|e| RelayStoreError::Invalid(format!("wipe report: {e}")))?;
    let recorded = b.device_tx(|db| {
        if !db.set_wiped(device_id, now)? {
            return Ok(false);
        }
        db.add_event(device_id, now, EVENT_WIPED, &detail)?;
        db.bump_devices()?;
        Ok(true)
    })?;
    if recorded {
        tracing::info!(
            device = %device_id,
            keys_destroyed = report.keys_destroyed,
            files_removed = report.files_removed,
            unsent_changes = report.unsent_changes,
            unsent_attachments = report.unsent_attachments,
            "a device carried out its wipe order"
        );
    } else {
        tracing::debug!(device = %device_id, "a wipe reported again");
    }
    Ok(())
}

/// What IT decided for a device beyond its grant, sent at its handshake: the wipe order it is
/// still to carry out, and its offline lease (its own, else its role's, else the relay's
/// default; 0 days: none).
pub(super) fn device_policy(
    b: &impl DeviceBackend,
    device: &DeviceInfo,
) -> Result<DevicePolicy, RelayStoreError> {
    let id = device.device_id;
    let (wipe, own) = match b.read_device(id)? {
        Some(r) => (r.pending_wipe(id)?, r.own_lease(id)?),
        None => (None, None),
    };
    Ok(DevicePolicy {
        wipe,
        lease_days: effective_lease(&b.options().offline_lease, device.role, own),
    })
}

/// Sets the offline lease of active devices, by id or by name: `Some(days)` their own (0: no
/// lease), `None` back to their role's default from the configuration. Laptops get it at
/// their next connection. Returns the devices changed; errors when none matched.
pub(super) fn set_lease(
    b: &impl DeviceBackend,
    who: &str,
    days: Option<u32>,
) -> Result<Vec<Uuid>, RelayStoreError> {
    if let Some(d) = days
        && d > MAX_LEASE_DAYS
    {
        return Err(RelayStoreError::Invalid(format!(
            "a lease of {d} days is longer than {MAX_LEASE_DAYS}"
        )));
    }
    let who = who.trim();
    let now = b.options().env.now_millis();
    let detail = serde_json::json!({ "days": days }).to_string();
    let changed = b.device_tx(|db| {
        let changed = db.set_lease(holder(who), days.map(i64::from))?;
        if changed.is_empty() {
            return Err(RelayStoreError::Invalid(format!(
                "no active device matches {who:?}"
            )));
        }
        for d in &changed {
            db.add_event(*d, now, EVENT_LEASE_SET, &detail)?;
        }
        Ok(changed)
    })?;
    tracing::info!(who, devices = ?changed, ?days, "set the offline lease");
    Ok(changed)
}

/// The trail of device events (wipes ordered and carried out, leases set), oldest first.
pub(super) fn device_events(b: &impl DeviceBackend) -> Result<Vec<DeviceEvent>, RelayStoreError> {
    b.event_rows()?
        .into_iter()
        .map(|e| {
            Ok(DeviceEvent {
                seq: e.seq.max(0) as u64,
                at: e.at,
                device_id: e.device_id,
                device_name: e.device_name,
                detail: serde_json::from_str(&e.detail).map_err(|err| {
                    RelayStoreError::Corrupt(format!("device event {}: {err}", e.seq))
                })?,
                event: e.event,
            })
        })
        .collect()
}

/// Every known device, by creation time, with what it stored today.
pub(super) fn devices(b: &impl DeviceBackend) -> Result<Vec<DeviceRecord>, RelayStoreError> {
    let day = day_of(b.options().env.now_millis());
    b.device_rows(day)?
        .into_iter()
        .map(|(id, row, today)| {
            let info = row.info(id)?;
            let own = row.own_lease(id)?;
            // An order this build does not know is corrupt data, not "no order".
            row.pending_wipe(id)?;
            Ok(DeviceRecord {
                device_id: id,
                effective_lease_days: effective_lease(&b.options().offline_lease, info.role, own),
                name: info.name,
                role: info.role,
                scopes: info.scopes,
                enrolled: row.secret_hash.is_some(),
                created_at: row.created_at,
                last_seen: row.last_seen,
                revoked_at: row.revoked_at,
                wipe: row.wipe,
                wiped_at: row.wiped_at,
                lease_days: own,
                today,
            })
        })
        .collect()
}

/// Cancels the unused enrolment token whose id starts with `id` (at least 4 hex digits):
/// it can no longer be redeemed. Errors when no unused token, or more than one, matches.
pub(super) fn cancel_enrolment(
    b: &impl DeviceBackend,
    id: &str,
) -> Result<EnrolmentRecord, RelayStoreError> {
    let id = id.trim().to_ascii_lowercase();
    if id.len() < 4 || !id.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(RelayStoreError::Invalid(format!(
            "{id:?} is not a token id: give at least 4 of its hex digits (`device token list` shows them)"
        )));
    }
    let now = b.options().env.now_millis();
    let rows: Vec<TokenRow> = b
        .token_rows()?
        .into_iter()
        .filter(|t| hex::encode(&t.hash).starts_with(&id))
        .collect();
    let open: Vec<&TokenRow> = rows
        .iter()
        .filter(|t| t.used_at.is_none() && t.revoked_at.is_none() && t.expires_at > now)
        .collect();
    let t = match (open.as_slice(), rows.first()) {
        ([t], _) => *t,
        ([], None) => {
            return Err(RelayStoreError::Invalid(format!(
                "no enrolment token has the id {id}"
            )));
        }
        ([], Some(t)) => {
            let state = if t.used_at.is_some() {
                "was already used: revoke the device it enrolled instead"
            } else if t.revoked_at.is_some() {
                "was already cancelled"
            } else {
                "has expired: it can no longer be redeemed"
            };
            return Err(RelayStoreError::Invalid(format!(
                "the enrolment token {} for {:?} {state}",
                token_id(&t.hash),
                t.name
            )));
        }
        (many, _) => {
            let ids: Vec<String> = many
                .iter()
                .map(|t| format!("{} ({})", token_id(&t.hash), t.name))
                .collect();
            return Err(RelayStoreError::Invalid(format!(
                "{id} matches {} open tokens: {}; give more digits",
                many.len(),
                ids.join(", ")
            )));
        }
    };
    let cancelled = b.device_tx(|db| {
        let done = db.cancel_token(&t.hash, now)?;
        if done {
            db.bump_devices()?;
        }
        Ok(done)
    })?;
    if !cancelled {
        return Err(RelayStoreError::Invalid(format!(
            "the enrolment token {} was used or cancelled meanwhile",
            token_id(&t.hash)
        )));
    }
    tracing::info!(id = %token_id(&t.hash), name = %t.name, "cancelled an enrolment token");
    let mut record = record_of(t.clone())?;
    record.revoked_at = Some(now);
    Ok(record)
}

/// Every enrolment token, newest first.
pub(super) fn enrolments(b: &impl DeviceBackend) -> Result<Vec<EnrolmentRecord>, RelayStoreError> {
    b.token_rows()?.into_iter().map(record_of).collect()
}

/// A token row as `device token list` shows it.
fn record_of(t: TokenRow) -> Result<EnrolmentRecord, RelayStoreError> {
    Ok(EnrolmentRecord {
        id: token_id(&t.hash),
        role: Role::parse(&t.role).ok_or_else(|| {
            RelayStoreError::Corrupt(format!("enrolment {} has role `{}`", t.name, t.role))
        })?,
        scopes: serde_json::from_str(&t.scopes)
            .map_err(|e| RelayStoreError::Corrupt(format!("enrolment scopes: {e}")))?,
        device_id: t.device_id,
        name: t.name,
        created_at: t.created_at,
        expires_at: t.expires_at,
        used_at: t.used_at,
        revoked_at: t.revoked_at,
    })
}

/// The public device methods of a backend's store handle, each a call into this module's
/// policy; written once here and expanded for each store handle (both backends and
/// `RelayStore`).
macro_rules! device_methods {
    () => {
        /// Checks a device's credential; in open mode registers unknown devices first.
        pub fn authenticate(
            &self,
            device_id: Uuid,
            credential: Option<&str>,
        ) -> Result<Option<DeviceInfo>, RelayStoreError> {
            crate::store::devices::authenticate(self, device_id, credential)
        }

        /// Records that a device finished a sync exchange (written at most every 30 s per
        /// device and process).
        pub fn touch_device(&self, device_id: Uuid) -> Result<(), RelayStoreError> {
            crate::store::devices::touch(self, device_id)
        }

        /// Enrols a device with a secret the relay makes (a new id unless `device_id` is
        /// given; re-enrolling an id replaces its secret, role and scopes and lifts a
        /// revocation). Returns the secret, shown only now.
        pub fn enrol_device(
            &self,
            device_id: Option<Uuid>,
            name: &str,
            role: Role,
            scopes: &[String],
        ) -> Result<Enrolment, RelayStoreError> {
            crate::store::devices::enroll(self, device_id, name, role, scopes)
        }

        /// Revokes a device: it is refused from its next connection or upload on. Returns
        /// whether the device was known and not yet revoked.
        pub fn revoke_device(&self, device_id: Uuid) -> Result<bool, RelayStoreError> {
            crate::store::devices::revoke_device(self, device_id)
        }

        /// Creates a one-time enrolment token for a device named `name` with `role` and
        /// `scopes`, redeemable until `valid_for` from now, and only by `device_id` when
        /// given. Returns the token's secret (shown only now; the relay keeps its hash). Pair
        /// it with the relay's address and certificate pin in a
        /// [`fieldsync_core::protocol::EnrolToken`].
        pub fn create_enrolment(
            &self,
            name: &str,
            role: Role,
            scopes: &[String],
            device_id: Option<Uuid>,
            valid_for: Duration,
        ) -> Result<String, RelayStoreError> {
            crate::store::devices::create_token(self, name, role, scopes, device_id, valid_for)
        }

        /// Redeems an enrolment token for `device_id` with the device's own long-term
        /// `credential` (see [`fieldsync_core::protocol::Message::Enrol`]). `Ok(Err(reason))`
        /// refuses it. Redeeming again with the same device and credential succeeds again.
        pub fn redeem(
            &self,
            device_id: Uuid,
            token: &str,
            credential: &str,
        ) -> Result<Result<DeviceInfo, String>, RelayStoreError> {
            crate::store::devices::redeem(self, device_id, token, credential)
        }

        /// Revokes by device id, or by name: every active device and every unused enrolment
        /// token with that exact name. Devices are refused from their next connection on,
        /// and the running relay closes their open connections within about a second.
        /// Errors when nothing matched.
        pub fn revoke(&self, who: &str) -> Result<Revoked, RelayStoreError> {
            crate::store::devices::revoke(self, who)
        }

        /// Changes the role and/or scopes of active devices, by id or by name (every active
        /// device with that name), keeping their credentials. Their open connections are told
        /// to reconnect and get the new grant; changes they uploaded before stay as they are.
        /// Returns the devices changed.
        pub fn grant(
            &self,
            who: &str,
            role: Option<Role>,
            scopes: Option<&[String]>,
        ) -> Result<Vec<Uuid>, RelayStoreError> {
            crate::store::devices::grant(self, who, role, scopes)
        }

        /// Cancels the unused enrolment token whose id (`device token list`) starts with `id`.
        pub fn cancel_enrolment(&self, id: &str) -> Result<EnrolmentRecord, RelayStoreError> {
            crate::store::devices::cancel_enrolment(self, id)
        }

        /// Every enrolment token, newest first.
        pub fn enrolments(&self) -> Result<Vec<EnrolmentRecord>, RelayStoreError> {
            crate::store::devices::enrolments(self)
        }

        /// The current grant of a device: `None` when it is unknown or revoked.
        pub fn device_grant(&self, device_id: Uuid) -> Result<Option<DeviceInfo>, RelayStoreError> {
            crate::store::devices::device_grant(self, device_id)
        }

        /// Every known device, by creation time.
        pub fn devices(&self) -> Result<Vec<DeviceRecord>, RelayStoreError> {
            crate::store::devices::devices(self)
        }

        /// Orders a remote wipe, by device id or by name (every device with that name not
        /// wiped yet): `Now` also revokes the devices and cancels their unused tokens;
        /// `AfterUpload` leaves them active until they report the wipe. Returns the devices
        /// ordered (and tokens cancelled); errors when none matched.
        pub fn order_wipe(
            &self,
            who: &str,
            order: fieldsync_core::protocol::WipeOrder,
        ) -> Result<Revoked, RelayStoreError> {
            crate::store::devices::order_wipe(self, who, order)
        }

        /// Records that a device carried out its wipe order (it is revoked for good), with
        /// its report, in the trail of device events.
        pub fn record_wiped(
            &self,
            device_id: Uuid,
            report: &fieldsync_core::protocol::WipeReport,
        ) -> Result<(), RelayStoreError> {
            crate::store::devices::record_wiped(self, device_id, report)
        }

        /// A device's standing orders: the wipe it is still to carry out, its offline lease.
        pub fn device_policy(
            &self,
            device: &DeviceInfo,
        ) -> Result<fieldsync_core::protocol::DevicePolicy, RelayStoreError> {
            crate::store::devices::device_policy(self, device)
        }

        /// Sets the offline lease of active devices, by id or by name: `Some(days)` their
        /// own (0: none), `None` their role's default. Returns the devices changed.
        pub fn set_lease(
            &self,
            who: &str,
            days: Option<u32>,
        ) -> Result<Vec<Uuid>, RelayStoreError> {
            crate::store::devices::set_lease(self, who, days)
        }

        /// The trail of device events (wipes ordered and carried out, leases set), oldest
        /// first.
        pub fn device_events(&self) -> Result<Vec<crate::store::DeviceEvent>, RelayStoreError> {
            crate::store::devices::device_events(self)
        }
    };
}
pub(super) use device_methods;

//! `fieldsync-relay import`: customers with their addresses, contacts and equipment from an
//! ERP export (CSV or JSON), written as changes of an import device and judged by the same
//! rules, quotas and audit trail as any device's upload.
//!
//! - [`input`]: reading the file into records, a per-row error for each bad row;
//! - [`build`]: one record as one Automerge change, on the customer imported before or a new
//!   one (ids derived from the external id, so a second import updates, never duplicates);
//! - this module: the import device (`relay import`, an admin of every scope, enrolled on
//!   first use with a secret nobody holds, its id recorded in the store), the relay's import
//!   secret (customer ids are derived from it, so no laptop can create a document at the id an
//!   ERP number will get), batches of changes through the store's upload path, and the report.
//!   A customer is only ever updated if an import device created it.
//!
//! It works on the store, while the relay runs or not: a running relay picks the changes up
//! like any other and pushes them to the laptops of their scopes.

pub mod build;
pub mod input;

use std::collections::HashSet;
use std::time::Instant;

use automerge::ActorId;
use fieldsync_core::ids::ALL_SCOPES;
use fieldsync_core::model::EditCtx;
use fieldsync_core::protocol::{DeviceInfo, Outcome, RelayStorage as _, UploadChange};
use fieldsync_core::{DocId, Role};
use ring::rand::SecureRandom as _;

use crate::store::{RelayStore, RelayStoreError};
use input::Read;

/// The name of the device imports write as (in `device list` and the audit trail); no other
/// device may be enrolled under it.
pub const IMPORT_DEVICE: &str = "relay import";
/// The store's record of the current import device's id.
const DEVICE_KEY: &str = "import.device";
/// Every import device there has been (16-byte ids, concatenated): documents they created
/// may be updated by an import.
const DEVICES_KEY: &str = "import.devices";
/// The relay's import secret.
const SALT_KEY: &str = "import.salt";
/// Customers written per upload (one transaction each).
const BATCH: usize = 500;

/// How to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The organisation of records that name none.
    pub org: String,
    /// Who the documents say created or changed them.
    pub author: String,
    /// Check every record and build every change, but store nothing.
    pub dry_run: bool,
    /// Enrol a new import device when IT revoked the last one.
    pub new_device: bool,
}

/// What an import did with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowResult {
    /// A new customer.
    Created,
    /// A customer imported before, changed to match the record.
    Updated,
    /// A customer imported before that already matches.
    Unchanged,
    /// The record could not be read or built, or the rules refused its change.
    Failed,
}

/// What happened to one record.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RowReport {
    /// Where it was in the file (`row 12`, `rows 3, 4`, `record 7`).
    pub at: String,
    /// Its external id, when it has one.
    pub external_id: Option<String>,
    /// The customer it maps to.
    pub customer_id: Option<DocId>,
    /// What was done (`failed` with `error`).
    pub result: RowResult,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What an import did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ImportReport {
    /// Customers created.
    pub created: usize,
    /// Customers changed to match the file.
    pub updated: usize,
    /// Customers that already matched.
    pub unchanged: usize,
    /// Records that failed (read, built or refused by the rules).
    pub failed: usize,
    /// Seconds the import took.
    pub seconds: f64,
    /// Whether nothing was stored (`--dry-run`).
    pub dry_run: bool,
    /// Every record, in file order.
    pub rows: Vec<RowReport>,
}

/// Imports `reads` into `store` (see the module docs). Fails only when the store does; a bad
/// record is a failed row.
pub fn import(
    store: &RelayStore,
    reads: Vec<Read>,
    opts: &ImportOptions,
) -> Result<ImportReport, RelayStoreError> {
    let started = Instant::now();
    // A dry run writes nothing, not even the secret: it builds with a throwaway one.
    let salt = match (store.meta_value(SALT_KEY)?, opts.dry_run) {
        (Some(salt), _) => salt,
        (None, true) => random::<32>()?.to_vec(),
        (None, false) => store.claim_meta(SALT_KEY, &random::<32>()?)?,
    };
    let device = import_device(store, opts)?;
    let actor = actor_of(&device)?;
    let importers = importers(store)?;
    let ctx = EditCtx::new(opts.author.clone(), Role::Admin);
    let mut report = ImportReport {
        dry_run: opts.dry_run,
        ..ImportReport::default()
    };
    let mut seen: HashSet<DocId> = HashSet::new();
    // Rows built and waiting to be stored: their index in `report.rows` and their change.
    let mut pending: Vec<(usize, UploadChange)> = Vec::new();
    for read in reads {
        let mut row = RowReport {
            at: read.at,
            external_id: read.external_id,
            customer_id: None,
            result: RowResult::Failed,
            error: None,
        };
        let built = read.record.and_then(|rec| {
            let org = rec.org.clone().unwrap_or_else(|| opts.org.clone());
            let id = build::customer_id(&salt, &org, &rec.external_id);
            row.customer_id = Some(id);
            if !seen.insert(id) {
                return Err(format!(
                    "customer {} appears more than once in the file",
                    rec.external_id
                ));
            }
            let mut existing = store
                .snapshot(id)
                .map_err(|e| e.to_string())?
                .map(|s| fieldsync_core::store::load_snapshot(&s))
                .transpose()
                .map_err(|e| format!("the stored customer {id} cannot be loaded: {e}"))?;
            if let Some(doc) = &mut existing
                && !build::creator(doc).is_some_and(|c| importers.contains(&c))
            {
                return Err(format!(
                    "document {id} was not created by an import; it is left as it is"
                ));
            }
            build::change_for(&rec, id, &org, existing, &actor, &ctx).map(|built| (id, built))
        });
        let index = report.rows.len();
        match built {
            Err(e) => row.error = Some(e),
            Ok((id, (action, change))) => {
                row.result = action;
                // A change exactly when something is created or updated.
                if let (Some(bytes), false) = (change, opts.dry_run) {
                    pending.push((index, UploadChange { doc_id: id, bytes }));
                }
            }
        }
        report.rows.push(row);
        if pending.len() >= BATCH {
            store_batch(store, &device, &mut pending, &mut report.rows)?;
        }
    }
    store_batch(store, &device, &mut pending, &mut report.rows)?;
    for r in &report.rows {
        match r.result {
            RowResult::Created => report.created += 1,
            RowResult::Updated => report.updated += 1,
            RowResult::Unchanged => report.unchanged += 1,
            RowResult::Failed => report.failed += 1,
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        created = report.created,
        updated = report.updated,
        unchanged = report.unchanged,
        failed = report.failed,
        dry_run = opts.dry_run,
        "imported customers"
    );
    Ok(report)
}

/// The id `external_id` of `org` has (or will have) in this relay's store: `None` before the
/// first import made the relay's import secret.
pub fn customer_id_in(
    store: &RelayStore,
    org: &str,
    external_id: &str,
) -> Result<Option<DocId>, RelayStoreError> {
    Ok(store
        .meta_value(SALT_KEY)?
        .map(|salt| build::customer_id(&salt, org, external_id)))
}

/// Uploads the pending changes as the import device and marks the rows the rules refused.
fn store_batch(
    store: &RelayStore,
    device: &DeviceInfo,
    pending: &mut Vec<(usize, UploadChange)>,
    rows: &mut [RowReport],
) -> Result<(), RelayStoreError> {
    if pending.is_empty() {
        return Ok(());
    }
    // A change refused for now (one the rules did not get to after a refused change of the
    // same upload, say) is sent once more in an upload of its own kind.
    let mut again: Vec<(usize, UploadChange)> = Vec::new();
    for last in [false, true] {
        let batch = if last {
            std::mem::take(&mut again)
        } else {
            std::mem::take(pending)
        };
        if batch.is_empty() {
            continue;
        }
        let changes: Vec<UploadChange> = batch.iter().map(|(_, c)| c.clone()).collect();
        let outcomes = store
            .clone()
            .append(device, &changes, false)
            .map_err(|e| RelayStoreError::Invalid(format!("storing imported customers: {e}")))?;
        for ((index, change), outcome) in batch.into_iter().zip(outcomes) {
            let r = match outcome {
                Outcome::Stored(_) => continue,
                Outcome::Refused(r) if r.retry && !last => {
                    again.push((index, change));
                    continue;
                }
                Outcome::Refused(r) | Outcome::Malformed(r) => r,
            };
            if let Some(row) = rows.get_mut(index) {
                row.result = RowResult::Failed;
                row.error = Some(format!("refused by the relay's rules: {}", r.reason));
            }
        }
    }
    Ok(())
}

/// The import device recorded in the store; enrolled (an admin of every scope, with a secret
/// that is thrown away) on first use, or after a revocation when `opts.new_device`. A dry run
/// enrols nothing: it builds with a device id of its own and stores nothing.
fn import_device(store: &RelayStore, opts: &ImportOptions) -> Result<DeviceInfo, RelayStoreError> {
    let recorded = store
        .meta_value(DEVICE_KEY)?
        .and_then(|b| uuid::Uuid::from_slice(&b).ok());
    if let Some(id) = recorded {
        match store.device_grant(id)? {
            Some(info) => return Ok(info),
            None if !opts.new_device && !opts.dry_run => {
                return Err(RelayStoreError::Invalid(format!(
                    "the import device {id} was revoked; pass --new-device to enrol a new one \
                     (its changes are audited under the new id)"
                )));
            }
            None => {}
        }
    }
    let all = [ALL_SCOPES.to_string()];
    if opts.dry_run {
        return Ok(DeviceInfo {
            device_id: uuid::Uuid::new_v4(),
            name: IMPORT_DEVICE.to_string(),
            role: Role::Admin,
            scopes: all.to_vec(),
        });
    }
    let id = store
        .enrol_device(None, IMPORT_DEVICE, Role::Admin, &all)?
        .device_id;
    store.set_meta(DEVICE_KEY, id.as_bytes())?;
    let mut every = store.meta_value(DEVICES_KEY)?.unwrap_or_default();
    every.extend_from_slice(id.as_bytes());
    store.set_meta(DEVICES_KEY, &every)?;
    tracing::info!(device = %id, "enrolled the import device");
    store.device_grant(id)?.ok_or_else(|| {
        RelayStoreError::Invalid(format!(
            "the {IMPORT_DEVICE:?} device was revoked meanwhile"
        ))
    })
}

/// Every import device there has been: documents they created may be updated.
fn importers(store: &RelayStore) -> Result<HashSet<uuid::Uuid>, RelayStoreError> {
    Ok(store
        .meta_value(DEVICES_KEY)?
        .unwrap_or_default()
        .chunks_exact(16)
        .filter_map(|c| uuid::Uuid::from_slice(c).ok())
        .collect())
}

/// `N` random bytes from the system's secure generator.
fn random<const N: usize>() -> Result<[u8; N], RelayStoreError> {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| RelayStoreError::Random)?;
    Ok(b)
}

/// A fresh actor of the import device: its id and 8 random bytes, as a laptop's sessions.
fn actor_of(device: &DeviceInfo) -> Result<ActorId, RelayStoreError> {
    let mut bytes = device.device_id.as_bytes().to_vec();
    bytes.extend_from_slice(&random::<8>()?);
    Ok(ActorId::from(bytes))
}

#[cfg(test)]
mod tests;

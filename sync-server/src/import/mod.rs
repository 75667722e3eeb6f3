//! `fieldsync-relay import`: customers with their addresses, contacts and equipment from an
//! ERP export (CSV or JSON), written as changes of an import device and judged by the same
//! rules, quotas and audit trail as any device's upload.
//!
//! - [`input`]: reading the file into records, a per-row error for each bad row;
//! - [`build`]: one record as one Automerge change, on the customer imported before or a new
//!   one (ids derived from the external id, so a second import updates, never duplicates);
//! - this module: the import device (`relay import`, an admin of every scope, enrolled on
//!   first use with a secret nobody holds), batches of changes through the store's upload
//!   path, and the report.
//!
//! It works on the store, while the relay runs or not: a running relay picks the changes up
//! like any other and pushes them to the laptops of their scopes.

pub mod build;
pub mod input;

use std::collections::HashSet;
use std::time::Instant;

use automerge::ActorId;
use fieldsync_core::model::EditCtx;
use fieldsync_core::protocol::{DeviceInfo, Outcome, RelayStorage as _, UploadChange};
use fieldsync_core::{DocId, Role};
use ring::rand::SecureRandom as _;

use crate::store::{RelayStore, RelayStoreError};
use build::Action;
use input::Read;

/// The name of the device imports write as (in `device list` and the audit trail).
pub const IMPORT_DEVICE: &str = "relay import";
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
    /// What was done: `created`, `updated`, `unchanged`, or `failed` with `error`.
    pub result: &'static str,
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
    let device = import_device(store)?;
    let actor = actor_of(&device)?;
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
            result: "failed",
            error: None,
        };
        let built = read.record.and_then(|rec| {
            let org = rec.org.clone().unwrap_or_else(|| opts.org.clone());
            let id = build::customer_id(&org, &rec.external_id);
            row.customer_id = Some(id);
            if !seen.insert(id) {
                return Err(format!(
                    "customer {} appears more than once in the file",
                    rec.external_id
                ));
            }
            let existing = store
                .snapshot(id)
                .map_err(|e| e.to_string())?
                .map(|s| fieldsync_core::store::load_snapshot(&s))
                .transpose()
                .map_err(|e| format!("the stored customer {id} cannot be loaded: {e}"))?;
            build::change_for(&rec, &org, existing, &actor, &ctx).map(|built| (id, built))
        });
        let index = report.rows.len();
        match built {
            Err(e) => row.error = Some(e),
            Ok((_, (Action::Unchanged, _))) => row.result = "unchanged",
            Ok((id, (action, Some(bytes)))) => {
                row.result = if action == Action::Created {
                    "created"
                } else {
                    "updated"
                };
                if !opts.dry_run {
                    pending.push((index, UploadChange { doc_id: id, bytes }));
                }
            }
            Ok((_, (_, None))) => row.result = "unchanged",
        }
        report.rows.push(row);
        if pending.len() >= BATCH {
            store_batch(store, &device, &mut pending, &mut report.rows)?;
        }
    }
    store_batch(store, &device, &mut pending, &mut report.rows)?;
    for r in &report.rows {
        match r.result {
            "created" => report.created += 1,
            "updated" => report.updated += 1,
            "unchanged" => report.unchanged += 1,
            _ => report.failed += 1,
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
    let changes: Vec<UploadChange> = pending.iter().map(|(_, c)| c.clone()).collect();
    let outcomes = store
        .clone()
        .append(device, &changes, false)
        .map_err(|e| RelayStoreError::Invalid(format!("storing imported customers: {e}")))?;
    for ((index, _), outcome) in pending.iter().zip(&outcomes) {
        if let (Outcome::Refused(r) | Outcome::Malformed(r), Some(row)) =
            (outcome, rows.get_mut(*index))
        {
            row.result = "failed";
            row.error = Some(format!("refused by the relay's rules: {}", r.reason));
        }
    }
    pending.clear();
    Ok(())
}

/// The import device: the active device named [`IMPORT_DEVICE`], enrolled (an admin of every
/// scope, with a secret that is thrown away) on first use.
fn import_device(store: &RelayStore) -> Result<DeviceInfo, RelayStoreError> {
    let known = store
        .devices()?
        .into_iter()
        .find(|d| d.name == IMPORT_DEVICE && d.revoked_at.is_none());
    let device_id = match known {
        Some(d) => d.device_id,
        None => {
            store
                .enrol_device(None, IMPORT_DEVICE, Role::Admin, &["*".to_string()])?
                .device_id
        }
    };
    store.device_grant(device_id)?.ok_or_else(|| {
        RelayStoreError::Invalid(format!(
            "the {IMPORT_DEVICE:?} device was revoked meanwhile"
        ))
    })
}

/// A fresh actor of the import device: its id and 8 random bytes, as a laptop's sessions.
fn actor_of(device: &DeviceInfo) -> Result<ActorId, RelayStoreError> {
    let mut bytes = device.device_id.as_bytes().to_vec();
    let mut suffix = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| RelayStoreError::Random)?;
    bytes.extend_from_slice(&suffix);
    Ok(ActorId::from(bytes))
}

#[cfg(test)]
mod tests;

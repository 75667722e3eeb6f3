//! Automerge bytes from elsewhere, decoded under size limits and with panics caught
//! ([`guard`]): single changes, document snapshots, stored heads, and raw changes put in
//! causal order. Nothing here touches the database.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::{AutoCommit, Change, ChangeHash};

use super::StoreError;
use crate::budget::SnapshotLimits;

/// Largest single Automerge change accepted from outside (bytes).
pub const MAX_CHANGE_BYTES: usize = 4 << 20;
/// Largest document snapshot accepted from outside (bytes); below the frame limit
/// ([`crate::protocol::codec::MAX_FRAME`]) so any accepted snapshot can also be sent.
pub const MAX_SNAPSHOT_BYTES: usize = 24 << 20;

/// Runs an Automerge call that may panic on hostile input, turning a panic into an error.
pub fn guard<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|_| StoreError::InvalidData(format!("automerge panicked while {what}")))
}

/// Decodes one raw change from outside, with a size limit and without panicking.
pub fn decode_change(bytes: &[u8]) -> Result<Change, StoreError> {
    if bytes.len() > MAX_CHANGE_BYTES {
        return Err(StoreError::InvalidData(format!(
            "change of {} bytes exceeds the {MAX_CHANGE_BYTES}-byte limit",
            bytes.len()
        )));
    }
    // Refuse compressed change chunks (type 2): inflating them is unbounded.
    if bytes.len() > 8 && bytes[8] == 2 {
        return Err(StoreError::InvalidData(
            "compressed change chunks are not accepted".into(),
        ));
    }
    let change = guard("decoding a change", || Change::from_bytes(bytes.to_vec()))?
        .map_err(|e| StoreError::InvalidData(e.to_string()))?;
    // Automerge checks a chunk's checksum (the first 4 bytes of its hash, stored after the
    // magic bytes) when it loads a document, not when it decodes one change. A change kept
    // while it waits for its dependencies is saved as it is into the compacted snapshot, which
    // would then no longer load.
    if bytes.get(4..8) != Some(&change.hash().0[..4]) {
        return Err(StoreError::InvalidData(
            "the change's checksum does not match its contents".into(),
        ));
    }
    crate::budget::check_change(&change, bytes.len()).map_err(StoreError::Budget)?;
    Ok(change)
}

/// Loads a document snapshot from outside, with a size limit and without panicking.
pub fn load_snapshot(bytes: &[u8]) -> Result<AutoCommit, StoreError> {
    load_snapshot_within(bytes, SnapshotLimits::LOAD)
}

/// [`load_snapshot`] with other budgets.
pub fn load_snapshot_within(
    bytes: &[u8],
    limits: SnapshotLimits,
) -> Result<AutoCommit, StoreError> {
    if bytes.len() > limits.bytes {
        return Err(StoreError::InvalidData(format!(
            "snapshot of {} bytes exceeds the {}-byte limit",
            bytes.len(),
            limits.bytes
        )));
    }
    crate::budget::check_snapshot_within(bytes, limits).map_err(StoreError::Budget)?;
    guard("loading a document", || AutoCommit::load(bytes))?
        .map_err(|e| StoreError::InvalidData(e.to_string()))
}

pub(super) fn heads_to_bytes(heads: &[ChangeHash]) -> Vec<u8> {
    heads.iter().flat_map(|h| h.0).collect()
}

/// Decodes heads stored as concatenated 32-byte hashes.
pub fn heads_from_bytes(b: &[u8]) -> Vec<ChangeHash> {
    b.chunks_exact(32)
        .filter_map(|c| ChangeHash::try_from(c).ok())
        .collect()
}

/// A raw change with its hash: `(hash, bytes)`.
pub(super) type RawChange = (Vec<u8>, Vec<u8>);

/// Whether every dependency of the changes is one of them.
pub(super) fn self_contained(changes: &[RawChange]) -> Result<bool, StoreError> {
    let hashes: std::collections::HashSet<&[u8]> =
        changes.iter().map(|(h, _)| h.as_slice()).collect();
    for (_, bytes) in changes {
        if !decode_change(bytes)?
            .deps()
            .iter()
            .all(|d| hashes.contains(&d.0[..]))
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Orders changes so that each comes after those of the set it depends on,
/// otherwise keeping the given order (Kahn's algorithm, smallest index first).
pub(super) fn causal_order(changes: Vec<RawChange>) -> Result<Vec<RawChange>, StoreError> {
    let index: HashMap<&[u8], usize> = changes
        .iter()
        .enumerate()
        .map(|(i, (h, _))| (h.as_slice(), i))
        .collect();
    let mut waiting = vec![0usize; changes.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); changes.len()];
    for (i, (_, bytes)) in changes.iter().enumerate() {
        for d in decode_change(bytes)?.deps() {
            if let Some(&j) = index.get(&d.0[..]) {
                waiting[i] += 1;
                dependents[j].push(i);
            }
        }
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..changes.len()).filter(|i| waiting[*i] == 0).collect();
    let mut order = Vec::with_capacity(changes.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &k in &dependents[i] {
            waiting[k] -= 1;
            if waiting[k] == 0 {
                ready.insert(k);
            }
        }
    }
    drop(index);
    let mut slots: Vec<Option<RawChange>> = changes.into_iter().map(Some).collect();
    // Content-addressed changes cannot depend on each other in a cycle; anything left over
    // (duplicates) keeps its place after the rest.
    let mut placed = vec![false; slots.len()];
    for &i in &order {
        placed[i] = true;
    }
    let rest: Vec<usize> = (0..slots.len()).filter(|i| !placed[*i]).collect();
    Ok(order
        .into_iter()
        .chain(rest)
        .filter_map(|i| slots[i].take())
        .collect())
}

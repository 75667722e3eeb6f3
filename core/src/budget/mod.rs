//! Budgets for what one change, or one document, may cost whoever loads it.
//!
//! Automerge run-length-encodes its columns, so a change of a hundred bytes can hold a million
//! operations, and every replica that applies it pays for each of them in memory and time. Bytes
//! alone are therefore not a budget: a change is also bounded by its operations, in number and
//! per byte, and a document by the operations its whole history holds. The caps are checked
//! from a change's header, before anything is applied: by the relay on every upload, by a
//! replica on every downloaded change, and on every local edit before it commits.
//!
//! The caps sit well above what the document model writes (a customer is created in a few
//! dozen operations of a few bytes each; an edit is a handful) and well under what a laptop
//! can load several of at once.
//!
//! A snapshot is checked before it is loaded ([`snapshot`]): the inflated size of its
//! compressed columns and the rows of every column, counted from their run headers.

use automerge::Change;

pub mod snapshot;

pub use snapshot::{SnapshotLimits, check_snapshot, check_snapshot_within};

/// Most operations one change may hold.
pub const MAX_CHANGE_OPS: usize = 100_000;
/// Most operations per byte of a change: the model's changes hold well under one per byte;
/// a run-length-encoded bomb holds thousands.
pub const MAX_OPS_PER_BYTE: usize = 16;
/// Most operations a document's whole history may hold (the highest operation number of any
/// of its changes).
pub const MAX_DOC_OPS: u64 = 250_000;

/// Largest a document may grow on the relay (its stored snapshot plus the changes accepted
/// since), well under what a replica loads ([`crate::store::MAX_SNAPSHOT_BYTES`]).
pub const MAX_DOC_BYTES: usize = 8 << 20;

/// Checks one change of `bytes` raw bytes against the per-change budgets and, through its
/// highest operation number, the document's.
pub fn check_change(change: &Change, bytes: usize) -> Result<(), String> {
    let ops = change.len();
    if ops > MAX_CHANGE_OPS {
        return Err(format!(
            "change holds {ops} operations, over the budget of {MAX_CHANGE_OPS}"
        ));
    }
    if ops > bytes.saturating_mul(MAX_OPS_PER_BYTE) {
        return Err(format!(
            "change packs {ops} operations into {bytes} bytes, over {MAX_OPS_PER_BYTE} per byte"
        ));
    }
    if change.max_op() > MAX_DOC_OPS {
        return Err(format!(
            "the document would hold {} operations, over its budget of {MAX_DOC_OPS}",
            change.max_op()
        ));
    }
    Ok(())
}

/// Deepest object nesting a document may have. The document model nests a few levels
/// (`contacts/<id>/…`); automerge's recursive readers overflow a 2 MiB stack — an abort, not a
/// panic — somewhere around 10,000 levels.
pub const MAX_NESTING: usize = 64;

/// The deepest object nesting of a document, over every current value including the losing
/// sides of conflicts; refuses one deeper than [`MAX_NESTING`], walking it with an explicit
/// stack.
pub fn check_nesting<R: automerge::ReadDoc>(doc: &R) -> Result<usize, String> {
    use automerge::{ObjId, ObjType, Prop, ROOT, Value, ValueRef};
    let mut stack = vec![(ROOT, ObjType::Map, 0usize)];
    let mut deepest = 0;
    while let Some((obj, kind, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        // The winning value of each key or index, and all values where several conflict.
        let mut children: Vec<(ObjId, ObjType)> = Vec::new();
        let mut conflicted: Vec<Prop> = Vec::new();
        match kind {
            ObjType::Map | ObjType::Table => {
                for item in doc.map_range(&obj, ..) {
                    if item.conflict {
                        conflicted.push(Prop::Map(item.key.to_string()));
                    } else if let ValueRef::Object(kind) = item.value {
                        children.push((item.id(), kind));
                    }
                }
            }
            ObjType::List => {
                for item in doc.list_range(&obj, ..) {
                    if item.conflict {
                        conflicted.push(Prop::Seq(item.index));
                    } else if let ValueRef::Object(kind) = item.value {
                        children.push((item.id(), kind));
                    }
                }
            }
            // Text holds characters and marks, no objects.
            ObjType::Text => continue,
        }
        for prop in conflicted {
            for (value, id) in doc.get_all(&obj, prop).map_err(|e| e.to_string())? {
                if let Value::Object(kind) = value {
                    children.push((id, kind));
                }
            }
        }
        if !children.is_empty() && depth + 1 > MAX_NESTING {
            return Err(format!(
                "document nests objects deeper than {MAX_NESTING} levels"
            ));
        }
        stack.extend(children.into_iter().map(|(id, kind)| (id, kind, depth + 1)));
    }
    Ok(deepest)
}

//! Budgets checked on a document snapshot before automerge loads it.
//!
//! A snapshot is a sequence of chunks: one document chunk (the whole history in columns) and
//! possibly change chunks that were waiting for their dependencies. Two things in it cost the
//! loader far more than its bytes, and automerge bounds neither:
//!
//! - **DEFLATE.** A document chunk may compress any column; automerge inflates each one in
//!   full, so two megabytes of deflated zeros ask for gigabytes. Here every deflated column is
//!   inflated into a bounded buffer first, and the snapshot's inflated total is capped.
//! - **Run-length encoding.** A column stores "this value, a million times" in a few bytes,
//!   and every such row becomes an operation (or a change) in memory. Here the rows of every
//!   column are counted from its run headers, without materialising them, and capped at what a
//!   document within its operation budget can hold.
//!
//! Compressed change chunks and bundles are refused outright: automerge's own saves never put
//! them in a snapshot, and inflating them is unbounded.
//!
//! The walk reads only headers and run lengths (and the inflated columns, within the budget),
//! never panics, and refuses anything it cannot parse: automerge would refuse it too.

use std::io::Read as _;

use super::MAX_DOC_OPS;

/// Most bytes the deflated columns of one snapshot may inflate to, in total.
pub const MAX_INFLATED_BYTES: usize = 64 << 20;

/// Most rows a snapshot's columns may hold: operations (and their predecessors) of a document
/// within its operation budget, or its changes. Checked for every column, and for the sum over
/// the snapshot's chunks of each chunk's largest column.
pub const MAX_COLUMN_ROWS: u64 = 2 * MAX_DOC_OPS;

/// Chunk types of automerge's storage format.
const DOCUMENT: u8 = 0;
const CHANGE: u8 = 1;
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// A column specification's DEFLATE flag and type bits.
const DEFLATE: u32 = 0b1000;
const TYPE_BITS: u32 = 0b0111;

/// The budgets a snapshot is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotLimits {
    /// Most bytes the snapshot itself may hold.
    pub bytes: usize,
    /// Most bytes its deflated columns may inflate to, in total.
    pub inflated: usize,
    /// Most rows per column, and summed over its chunks.
    pub rows: u64,
}

impl SnapshotLimits {
    /// What relays and laptops load: [`crate::store::MAX_SNAPSHOT_BYTES`],
    /// [`MAX_INFLATED_BYTES`] and [`MAX_COLUMN_ROWS`].
    pub const LOAD: Self = Self {
        bytes: crate::store::MAX_SNAPSHOT_BYTES,
        inflated: MAX_INFLATED_BYTES,
        rows: MAX_COLUMN_ROWS,
    };

    /// These limits `factor` times over (for IT's one-off repairs of a document that outgrew
    /// the normal ones).
    pub const fn times(self, factor: u32) -> Self {
        Self {
            bytes: self.bytes.saturating_mul(factor as usize),
            inflated: self.inflated.saturating_mul(factor as usize),
            rows: self.rows.saturating_mul(factor as u64),
        }
    }
}

/// Checks a snapshot against the inflation and row budgets before it is loaded.
pub fn check_snapshot(bytes: &[u8]) -> Result<(), String> {
    check_snapshot_within(bytes, SnapshotLimits::LOAD)
}

/// [`check_snapshot`] with other limits.
pub fn check_snapshot_within(bytes: &[u8], limits: SnapshotLimits) -> Result<(), String> {
    let mut input = Reader(bytes);
    let mut inflated = 0usize;
    let mut documents = 0;
    // Rows over the whole snapshot: automerge loads every chunk into the one document.
    let mut total: u64 = 0;
    while !input.0.is_empty() {
        let magic = input.take(4)?;
        if magic != MAGIC {
            return Err("not an automerge chunk (bad magic bytes)".into());
        }
        input.take(4)?; // checksum: automerge verifies it
        let kind = input.take(1)?[0];
        let len = input.uleb()?;
        let mut chunk = Reader(input.take(len)?);
        let rows = match kind {
            DOCUMENT => {
                documents += 1;
                if documents > 1 {
                    return Err("snapshot holds more than one document chunk".into());
                }
                document(&mut chunk, &mut inflated, limits)?
            }
            // Every change counts, even an empty one.
            CHANGE => change(&mut chunk, limits)?.max(1),
            other => {
                return Err(format!(
                    "snapshot holds a chunk of type {other}; only documents and uncompressed \
                     changes are loaded"
                ));
            }
        };
        total = total.saturating_add(rows);
        over(total, limits)?;
    }
    Ok(())
}

/// A document chunk: actors, heads, the change and operation column metadata, then the
/// columns' data in that order. Returns its most rows in any one column.
fn document(
    input: &mut Reader<'_>,
    inflated: &mut usize,
    limits: SnapshotLimits,
) -> Result<u64, String> {
    let actors = input.uleb()?;
    for _ in 0..actors {
        let len = input.uleb()?;
        input.take(len)?;
    }
    let heads = input.uleb()?;
    input.take(heads.saturating_mul(32))?;
    let change_cols = columns(input)?;
    let op_cols = columns(input)?;
    let mut most = 0;
    for (spec, len) in change_cols.into_iter().chain(op_cols) {
        let data = input.take(len)?;
        if spec & DEFLATE == 0 {
            most = most.max(rows(spec, data, limits)?);
            continue;
        }
        let budget = limits.inflated.saturating_sub(*inflated);
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(data)
            .take(budget as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("a compressed column does not inflate: {e}"))?;
        if out.len() > budget {
            return Err(format!(
                "snapshot inflates past its budget of {} bytes",
                limits.inflated
            ));
        }
        *inflated += out.len();
        most = most.max(rows(spec, &out, limits)?);
    }
    Ok(most)
}

/// A change chunk: its header fields, then its operation columns (never compressed). Returns
/// its most rows in any one column.
fn change(input: &mut Reader<'_>, limits: SnapshotLimits) -> Result<u64, String> {
    let deps = input.uleb()?;
    input.take(deps.saturating_mul(32))?;
    let actor = input.uleb()?;
    input.take(actor)?;
    input.uleb()?; // seq
    input.uleb()?; // start op
    input.sleb()?; // time
    let message = input.uleb()?;
    input.take(message)?;
    let others = input.uleb()?;
    for _ in 0..others {
        let len = input.uleb()?;
        input.take(len)?;
    }
    let mut most = 0;
    for (spec, len) in columns(input)? {
        if spec & DEFLATE != 0 {
            return Err("a change chunk holds a compressed column".into());
        }
        most = most.max(rows(spec, input.take(len)?, limits)?);
    }
    Ok(most)
}

/// Column metadata: a count, then each column's specification and data length.
fn columns(input: &mut Reader<'_>) -> Result<Vec<(u32, u64)>, String> {
    let n = input.uleb()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let spec = u32::try_from(input.uleb()?).map_err(|_| "bad column specification")?;
        out.push((spec, input.uleb()?));
    }
    Ok(out)
}

/// Counts the rows of one (inflated) column from its run headers; refuses more than the
/// limit.
fn rows(spec: u32, data: &[u8], limits: SnapshotLimits) -> Result<u64, String> {
    let mut input = Reader(data);
    let mut rows: u64 = 0;
    match spec & TYPE_BITS {
        // Boolean: alternating run lengths of false and true.
        4 => {
            while !input.0.is_empty() {
                rows = rows.saturating_add(input.uleb()?);
                over(rows, limits)?;
            }
        }
        // Raw values: their rows are counted in their metadata column.
        7 => {}
        kind => {
            // Run-length encoded: a signed count n, then one value repeated n times (n > 0),
            // -n literal values (n < 0), or the length of a run of nulls (n = 0).
            let value = |input: &mut Reader<'_>| -> Result<(), String> {
                match kind {
                    3 => input.sleb().map(drop),
                    5 => {
                        let len = input.uleb()?;
                        input.take(len).map(drop)
                    }
                    _ => input.uleb().map(drop),
                }
            };
            while !input.0.is_empty() {
                let n = input.sleb()?;
                if n > 0 {
                    value(&mut input)?;
                    rows = rows.saturating_add(n.unsigned_abs());
                } else if n < 0 {
                    rows = rows.saturating_add(n.unsigned_abs());
                    over(rows, limits)?;
                    for _ in 0..n.unsigned_abs() {
                        value(&mut input)?;
                    }
                } else {
                    rows = rows.saturating_add(input.uleb()?);
                }
                over(rows, limits)?;
            }
        }
    }
    Ok(rows)
}

fn over(rows: u64, limits: SnapshotLimits) -> Result<(), String> {
    if rows > limits.rows {
        return Err(format!(
            "snapshot holds more than {} rows, over the budget of a document's operations",
            limits.rows
        ));
    }
    Ok(())
}

/// A cursor over bytes that refuses to read past their end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.0.len())
            .ok_or("snapshot is truncated")?;
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn uleb(&mut self) -> Result<u64, String> {
        leb128::read::unsigned(&mut self.0).map_err(|e| format!("bad number in snapshot: {e}"))
    }

    fn sleb(&mut self) -> Result<i64, String> {
        leb128::read::signed(&mut self.0).map_err(|e| format!("bad number in snapshot: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable as _;
    use automerge::{AutoCommit, ObjType, ROOT, ScalarValue};

    use super::*;

    #[test]
    fn ordinary_snapshots_pass() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "name", "Acme").unwrap();
        let list = doc.put_object(ROOT, "notes", ObjType::List).unwrap();
        for i in 0..2_000 {
            doc.insert(&list, i, format!("note {i} of a longer text to compress"))
                .unwrap();
        }
        let text = doc.put_object(ROOT, "text", ObjType::Text).unwrap();
        doc.splice_text(&text, 0, 0, &"lorem ipsum ".repeat(2_000))
            .unwrap();
        doc.commit();
        check_snapshot(&doc.save()).expect("a plain document");
        check_snapshot(&doc.save_nocompress()).expect("uncompressed");
        // With a change waiting for its dependency after the document chunk.
        let mut other = doc.fork();
        other.put(ROOT, "a", 1).unwrap();
        other.commit();
        let mid = other.get_heads();
        other.put(ROOT, "b", 2).unwrap();
        other.commit();
        let orphan = other.get_changes(&mid).pop().unwrap();
        let mut waiting = doc.clone();
        waiting.apply_changes([orphan]).unwrap();
        let saved = waiting.save();
        check_snapshot(&saved).expect("with a queued change");
        AutoCommit::load(&saved).expect("automerge loads it too");
    }

    #[test]
    fn a_run_length_bomb_is_refused_from_its_run_headers() {
        let mut doc = AutoCommit::new();
        let list = doc.put_object(ROOT, "bomb", ObjType::List).unwrap();
        doc.splice(&list, 0, 0, std::iter::repeat_n(ScalarValue::Null, 600_000))
            .unwrap();
        doc.commit();
        let saved = doc.save();
        assert!(saved.len() < 4_096, "{} bytes", saved.len());
        let err = check_snapshot(&saved).expect_err("refused");
        assert!(err.contains("rows"), "{err}");
    }

    /// Rewrites the first document chunk of `snapshot` so that its first column of type
    /// `kind` is `column` (deflated when `deflate`).
    fn with_column(snapshot: &[u8], replace: &dyn Fn(u32) -> Option<(u32, Vec<u8>)>) -> Vec<u8> {
        let mut r = Reader(snapshot);
        r.take(9).unwrap();
        let len = r.uleb().unwrap();
        let mut chunk = Reader(r.take(len).unwrap());
        let start = chunk.0;
        let actors = chunk.uleb().unwrap();
        for _ in 0..actors {
            let l = chunk.uleb().unwrap();
            chunk.take(l).unwrap();
        }
        let heads = chunk.uleb().unwrap();
        chunk.take(heads * 32).unwrap();
        let prefix = &start[..start.len() - chunk.0.len()];
        let change_cols = columns(&mut chunk).unwrap();
        let op_cols = columns(&mut chunk).unwrap();
        let mut datas = Vec::new();
        for (spec, len) in change_cols.iter().chain(&op_cols) {
            datas.push((*spec, chunk.take(*len).unwrap().to_vec()));
        }
        let suffix = chunk.0;
        let mut replaced = false;
        let mut out_cols: Vec<(u32, Vec<u8>)> = Vec::new();
        for (spec, data) in datas {
            match (replaced, replace(spec)) {
                (false, Some(new)) => {
                    replaced = true;
                    out_cols.push(new);
                }
                _ => out_cols.push((spec, data)),
            }
        }
        assert!(replaced);
        let mut body = prefix.to_vec();
        let n_change = change_cols.len();
        for group in [&out_cols[..n_change], &out_cols[n_change..]] {
            leb128::write::unsigned(&mut body, group.len() as u64).unwrap();
            for (spec, data) in group {
                leb128::write::unsigned(&mut body, u64::from(*spec)).unwrap();
                leb128::write::unsigned(&mut body, data.len() as u64).unwrap();
            }
        }
        for (_, data) in &out_cols {
            body.extend_from_slice(data);
        }
        body.extend_from_slice(suffix);
        let mut out = snapshot[..9].to_vec();
        leb128::write::unsigned(&mut out, body.len() as u64).unwrap();
        out.extend(body);
        out
    }

    #[test]
    fn a_deflate_bomb_is_refused_within_its_inflation_budget() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "name", "Acme").unwrap();
        doc.commit();
        let saved = doc.save();
        // The value column (type 7) replaced by 200 MiB of deflated zeros: a few hundred KiB.
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..200 {
            std::io::Write::write_all(&mut enc, &zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        let tampered = with_column(&saved, &|spec| {
            (spec & TYPE_BITS == 7).then(|| (spec | DEFLATE, bomb.clone()))
        });
        let err = check_snapshot(&tampered).expect_err("refused");
        assert!(err.contains("inflates past"), "{err}");
    }

    #[test]
    fn rows_add_up_over_chunks_and_one_document_chunk_is_allowed() {
        let mut doc = AutoCommit::new();
        let list = doc.put_object(ROOT, "bomb", ObjType::List).unwrap();
        doc.splice(&list, 0, 0, std::iter::repeat_n(ScalarValue::Null, 300_000))
            .unwrap();
        doc.commit();
        let saved = doc.save();
        check_snapshot(&saved).expect("within the budget alone");
        let twice = [saved.clone(), saved.clone()].concat();
        assert!(
            check_snapshot(&twice)
                .unwrap_err()
                .contains("more than one")
        );
        // The same operations as change chunks, repeated.
        let change = doc.get_changes(&[]).pop().unwrap().raw_bytes().to_vec();
        check_snapshot(&change).expect("one change");
        let many = change.repeat(2);
        assert!(check_snapshot(&many).unwrap_err().contains("rows"));
    }

    #[test]
    fn garbage_and_foreign_chunks_are_refused_without_panicking() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "name", "Acme").unwrap();
        doc.commit();
        let saved = doc.save();
        for cut in 0..saved.len() {
            let _ = check_snapshot(&saved[..cut]);
        }
        let mut compressed_change = saved.clone();
        compressed_change[8] = 2;
        assert!(check_snapshot(&compressed_change).is_err());
        assert!(check_snapshot(b"not automerge at all").is_err());
        // A null run claiming 2^62 rows.
        let tampered = with_column(&saved, &|spec| {
            (spec & TYPE_BITS == 2).then(|| {
                let mut col = vec![0u8];
                leb128::write::unsigned(&mut col, 1 << 62).unwrap();
                (spec, col)
            })
        });
        assert!(check_snapshot(&tampered).unwrap_err().contains("rows"));
    }
}

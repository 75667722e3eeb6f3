//! [`Tail`]: the newest log entries of every scope, held in memory so that a live session
//! reads what is new without a database read.
//!
//! The tail holds, in sequence order, every log entry after its `floor` up to its `high`, with
//! an index per scope and one for devices that see every scope (`*`: change and replacement
//! entries only, as the stores' `read_log` returns for `*`). It answers a read exactly as the
//! store would, or not at all ([`Tail::read`] returns `None`), and the caller reads the store:
//! - a cursor before the floor (entries trimmed away, or before the tail started);
//! - a read that would return a `Leave`: the store names where the document is filed *now*,
//!   which the tail does not follow.
//!
//! Memory is bounded by `cap` bytes of payload (plus a fixed overhead per entry); the oldest
//! entries go first and raise the floor. A client that falls that far behind reads the store,
//! as one catching up after a day offline does.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use fieldsync_core::ids::ALL_SCOPES;
use fieldsync_core::protocol::LogEntry;
use fieldsync_core::protocol::messages::Entry;

/// Bytes counted per entry on top of its payload, as the stores' `read_log` counts them.
pub const ENTRY_OVERHEAD: usize = 24;

/// Bytes of bookkeeping per held entry counted against the cap (indexes, the `Arc`, the
/// scope name), so that a flood of tiny entries is bounded too.
const HELD_OVERHEAD: usize = 128;

/// One held entry and the scope it was filed under.
#[derive(Debug)]
struct Held {
    entry: LogEntry,
    scope: Arc<str>,
    /// The entry's size as `read_log` counts it against a batch budget.
    size: usize,
}

/// The newest log entries in memory (see the module docs).
#[derive(Debug)]
pub struct Tail {
    /// Every entry with `floor < seq <= high` is held.
    floor: u64,
    high: u64,
    /// All held entries in sequence order (trimmed from the front).
    order: VecDeque<Arc<Held>>,
    /// Per scope, its held entries in sequence order.
    scopes: HashMap<Arc<str>, VecDeque<Arc<Held>>>,
    /// Change and replacement entries of every scope, for `*` readers.
    all: VecDeque<Arc<Held>>,
    /// Bytes counted against `cap`.
    bytes: usize,
    cap: usize,
}

/// What [`Tail::extend`] added: which readers have something new.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Added {
    /// Scopes that got entries.
    pub scopes: Vec<Arc<str>>,
    /// Whether `*` readers got entries (a change or a replacement).
    pub all: bool,
}

impl Tail {
    /// An empty tail that starts after `high` (entries up to it are in the store only) and
    /// holds at most about `cap` bytes.
    pub fn new(high: u64, cap: usize) -> Self {
        Self {
            floor: high,
            high,
            order: VecDeque::new(),
            scopes: HashMap::new(),
            all: VecDeque::new(),
            bytes: 0,
            cap,
        }
    }

    /// The highest sequence number held (or the start, when none was added).
    pub fn high(&self) -> u64 {
        self.high
    }

    /// Entries before and at this sequence number are not held.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Entries and bytes held (for metrics).
    pub fn held(&self) -> (usize, usize) {
        (self.order.len(), self.bytes)
    }

    /// Adds entries the store read after [`Tail::high`], in sequence order, with the scope each
    /// is filed under; returns who has something new. Entries at or before `high` are ignored
    /// (already held). `upto` is the position the store read up to: the tail holds everything
    /// up to it even when no entry came.
    pub fn extend(&mut self, entries: Vec<(String, LogEntry)>, upto: u64) -> Added {
        let mut added = Added::default();
        for (scope, entry) in entries {
            if entry.seq <= self.high {
                continue;
            }
            if matches!(entry.entry, Entry::Replace(_)) {
                // A replaced history deletes the document's earlier entries from the store:
                // the tail starts again at the replacement rather than serve them.
                self.clear(entry.seq - 1);
            }
            let scope = match self.scopes.get_key_value(scope.as_str()) {
                Some((k, _)) => k.clone(),
                None => Arc::from(scope),
            };
            let size = entry.entry.raw_len() + ENTRY_OVERHEAD;
            let for_all = matches!(entry.entry, Entry::Changes(_) | Entry::Replace(_));
            self.high = entry.seq;
            let held = Arc::new(Held {
                entry,
                scope: scope.clone(),
                size,
            });
            self.bytes += size + HELD_OVERHEAD;
            if for_all {
                self.all.push_back(held.clone());
                added.all = true;
            }
            self.scopes
                .entry(scope.clone())
                .or_default()
                .push_back(held.clone());
            if !added.scopes.contains(&scope) {
                added.scopes.push(scope);
            }
            self.order.push_back(held);
        }
        self.high = self.high.max(upto);
        self.trim();
        added
    }

    /// The most bytes held.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Drops every held entry: the tail starts again after `high` (entries up to it are in
    /// the store only).
    pub fn restart(&mut self, high: u64) {
        self.clear(high);
    }

    fn clear(&mut self, high: u64) {
        self.order.clear();
        self.scopes.clear();
        self.all.clear();
        self.bytes = 0;
        self.floor = high;
        self.high = high;
    }

    /// Drops the oldest entries until the tail fits its cap, raising the floor.
    fn trim(&mut self) {
        while self.bytes > self.cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            let seq = old.entry.seq;
            self.bytes = self.bytes.saturating_sub(old.size + HELD_OVERHEAD);
            if let Some(q) = self.scopes.get_mut(&old.scope) {
                if q.front().is_some_and(|h| h.entry.seq == seq) {
                    q.pop_front();
                }
                if q.is_empty() {
                    self.scopes.remove(&old.scope);
                }
            }
            if self.all.front().is_some_and(|h| h.entry.seq == seq) {
                self.all.pop_front();
            }
            self.floor = seq;
        }
        if self.order.is_empty() {
            self.floor = self.high;
        }
    }

    /// Entries of `scope` after `after`, up to `max_bytes` (at least one), as the store's
    /// `read_log` for the whole lane returns them: the entries and whether more are held.
    /// `None` when the tail cannot answer (see the module docs).
    pub fn read(&self, scope: &str, after: u64, max_bytes: usize) -> Option<(Vec<LogEntry>, bool)> {
        if after < self.floor {
            return None;
        }
        let held = if scope == ALL_SCOPES {
            &self.all
        } else {
            match self.scopes.get(scope) {
                Some(q) => q,
                None => return Some((Vec::new(), false)),
            }
        };
        let start = held.partition_point(|h| h.entry.seq <= after);
        let mut out = Vec::new();
        let mut used = 0usize;
        for h in held.iter().skip(start) {
            if !out.is_empty() && used + h.size > max_bytes {
                return Some((out, true));
            }
            if matches!(h.entry.entry, Entry::Leave) {
                return None;
            }
            used += h.size;
            out.push(h.entry.clone());
        }
        Some((out, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldsync_core::DocId;
    use fieldsync_core::protocol::messages::serde_bytes_vec::Bytes;

    fn change(seq: u64, len: usize) -> LogEntry {
        LogEntry {
            seq,
            doc_id: DocId::new(),
            entry: Entry::Changes(vec![Bytes(vec![7; len])]),
            hash: Some([seq as u8; 32]),
            moved_to: None,
        }
    }

    fn leave(seq: u64) -> LogEntry {
        LogEntry {
            seq,
            doc_id: DocId::new(),
            entry: Entry::Leave,
            hash: None,
            moved_to: Some("b".into()),
        }
    }

    fn seqs(r: Option<(Vec<LogEntry>, bool)>) -> Option<(Vec<u64>, bool)> {
        r.map(|(v, more)| (v.iter().map(|e| e.seq).collect(), more))
    }

    #[test]
    fn reads_a_scope_after_a_cursor_as_the_store_would() {
        let mut t = Tail::new(10, 1 << 20);
        let added = t.extend(
            vec![
                ("a".into(), change(11, 10)),
                ("b".into(), change(12, 10)),
                ("a".into(), change(13, 10)),
            ],
            13,
        );
        assert_eq!(added.scopes.len(), 2);
        assert!(added.all);
        assert_eq!(seqs(t.read("a", 10, 1000)), Some((vec![11, 13], false)));
        assert_eq!(seqs(t.read("a", 11, 1000)), Some((vec![13], false)));
        assert_eq!(seqs(t.read("b", 10, 1000)), Some((vec![12], false)));
        assert_eq!(seqs(t.read("*", 10, 1000)), Some((vec![11, 12, 13], false)));
        assert_eq!(seqs(t.read("c", 10, 1000)), Some((vec![], false)));
        // Before the tail started: the store answers.
        assert_eq!(seqs(t.read("a", 9, 1000)), None);
    }

    #[test]
    fn a_read_stops_at_its_budget_but_returns_at_least_one_entry() {
        let mut t = Tail::new(0, 1 << 20);
        t.extend(
            (1..=5).map(|s| ("a".to_string(), change(s, 100))).collect(),
            5,
        );
        // Each entry counts 100 + 24 bytes.
        assert_eq!(seqs(t.read("a", 0, 250)), Some((vec![1, 2], true)));
        assert_eq!(seqs(t.read("a", 0, 1)), Some((vec![1], true)));
        assert_eq!(seqs(t.read("a", 4, 1)), Some((vec![5], false)));
    }

    #[test]
    fn a_leave_is_left_to_the_store_and_hidden_from_every_scope_reader() {
        let mut t = Tail::new(0, 1 << 20);
        t.extend(
            vec![
                ("a".into(), change(1, 10)),
                ("a".into(), leave(2)),
                ("a".into(), change(3, 10)),
            ],
            3,
        );
        assert_eq!(seqs(t.read("a", 0, 1000)), None);
        // Past the leave the tail answers again.
        assert_eq!(seqs(t.read("a", 2, 1000)), Some((vec![3], false)));
        // `*` readers never get leaves.
        assert_eq!(seqs(t.read("*", 0, 1000)), Some((vec![1, 3], false)));
    }

    #[test]
    fn the_oldest_entries_go_first_and_their_readers_go_to_the_store() {
        // Room for about two entries of 1,000 bytes.
        let mut t = Tail::new(0, 2 * (1000 + ENTRY_OVERHEAD + HELD_OVERHEAD));
        for s in 1..=5 {
            t.extend(vec![(format!("s{}", s % 2), change(s, 1000))], s);
        }
        assert_eq!(t.held().0, 2);
        assert_eq!(t.floor(), 3);
        assert_eq!(t.high(), 5);
        assert_eq!(seqs(t.read("s1", 2, 1 << 20)), None);
        assert_eq!(seqs(t.read("s1", 3, 1 << 20)), Some((vec![5], false)));
        assert_eq!(seqs(t.read("s0", 3, 1 << 20)), Some((vec![4], false)));
        assert_eq!(seqs(t.read("*", 3, 1 << 20)), Some((vec![4, 5], false)));
    }

    #[test]
    fn entries_already_held_are_ignored_and_an_empty_read_still_moves_the_high() {
        let mut t = Tail::new(0, 1 << 20);
        t.extend(vec![("a".into(), change(1, 10))], 1);
        let added = t.extend(vec![("a".into(), change(1, 10))], 4);
        assert_eq!(added, Added::default());
        assert_eq!(t.high(), 4);
        assert_eq!(seqs(t.read("a", 0, 1000)), Some((vec![1], false)));
    }

    #[test]
    fn a_replaced_history_starts_the_tail_again() {
        let mut t = Tail::new(0, 1 << 20);
        t.extend(
            vec![("a".into(), change(1, 10)), ("a".into(), change(2, 10))],
            2,
        );
        let replace = LogEntry {
            seq: 3,
            doc_id: DocId::new(),
            entry: Entry::Replace(Bytes(vec![1; 10])),
            hash: None,
            moved_to: None,
        };
        t.extend(vec![("a".into(), replace), ("a".into(), change(4, 10))], 4);
        assert_eq!(t.floor(), 2);
        assert_eq!(seqs(t.read("a", 0, 1000)), None);
        assert_eq!(seqs(t.read("a", 2, 1000)), Some((vec![3, 4], false)));
    }

    #[test]
    fn a_tail_that_holds_nothing_answers_from_its_high() {
        let mut t = Tail::new(0, 0);
        t.extend(vec![("a".into(), change(1, 10))], 1);
        assert_eq!(t.held(), (0, 0));
        assert_eq!(t.floor(), 1);
        assert_eq!(seqs(t.read("a", 0, 1000)), None);
        assert_eq!(seqs(t.read("a", 1, 1000)), Some((vec![], false)));
    }
}

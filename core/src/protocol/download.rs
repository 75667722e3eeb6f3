//! What a download batch holds: the relay fills it from the client's cursor, scope by scope,
//! and within a scope lane by lane.
//!
//! A scope's download has two phases: snapshots of the documents the client does not have yet
//! (in document-id order, from a log position `high` fixed when the phase began), then the log
//! from `high` on. Either phase may have a *first lane* (protocol 4): when a client names the
//! customers it needs first ([`Message::First`](super::Message::First)), the phase that starts
//! in that session reads those customers' documents — the customer documents and every visit
//! and quote of theirs — before any other ([`Lane::First`]), then the rest ([`Lane::Rest`]),
//! which leaves out exactly what the first lane sent. Which lane a document belongs to never
//! changes (a document's id and its customer are fixed at creation), so the two lanes
//! together send every entry once:
//! - snapshot phase ([`ScopeCursor::SnapshotFirst`]): the first lane sends the first
//!   customers' documents; the rest sends every other. A first document created or moved in
//!   after `high` is not missed: all of its history is in the log after `high`.
//! - log phase ([`ScopeCursor::LogFirst`]): the first lane sends the first customers' entries
//!   up to `upto` (the log's end when the lane began); the rest sends every entry after `seq`
//!   but those. Once the rest has read past `upto`, the state is plain [`ScopeCursor::Log`].
//!
//! The first lanes of all scopes fill a batch of their own before any scope's rest (a client
//! applies a batch once all of it has arrived, so the urgent documents land without waiting
//! for bulk behind them); a download cut short resumes in whichever lane it stopped.

use std::collections::HashSet;

use super::messages::{Cursor, Entry, Hash, Item, ScopeCursor};
use super::relay::{LogEntry, RelayStorage, StorageError};
use super::validate::DeviceInfo;
use crate::ids::{ALL_SCOPES, DocId};

/// Which documents a download read returns (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane<'a> {
    /// Every document and entry.
    All,
    /// Only the documents of these customers (each customer document and every document
    /// whose customer it is); log reads end at `upto`.
    First {
        /// The customers.
        customers: &'a [DocId],
        /// Last log position read (snapshot reads pass `u64::MAX`).
        upto: u64,
    },
    /// Every document and entry but those [`Lane::First`] with the same fields returns.
    Rest {
        /// The customers whose documents the first lane sent.
        customers: &'a [DocId],
        /// Last log position the first lane read (snapshot reads pass `u64::MAX`).
        upto: u64,
    },
}

impl Lane<'_> {
    /// Whether the lane returns the entry at `seq` (snapshot reads: 0) of document `doc`,
    /// whose customer is `customer` (none for a customer document).
    pub fn admits(&self, doc: DocId, customer: Option<DocId>, seq: u64) -> bool {
        let first = |customers: &[DocId], upto: u64| {
            seq <= upto
                && (customers.contains(&doc) || customer.is_some_and(|c| customers.contains(&c)))
        };
        match *self {
            Self::All => true,
            Self::First { customers, upto } => first(customers, upto),
            Self::Rest { customers, upto } => !first(customers, upto),
        }
    }

    /// The lane's customers (none for [`Lane::All`]).
    pub fn customers(&self) -> &[DocId] {
        match *self {
            Self::All => &[],
            Self::First { customers, .. } | Self::Rest { customers, .. } => customers,
        }
    }
}

/// What one batch is filled for.
pub(super) struct Fill<'a> {
    pub(super) storage: &'a mut dyn RelayStorage,
    pub(super) device: &'a DeviceInfo,
    /// Hashes of the changes this session stored for the client (not echoed back).
    pub(super) uploaded: &'a HashSet<Hash>,
    /// The client's protocol version.
    pub(super) version: u32,
    /// Customers to start a first lane with, in each scope whose phase starts now (at most
    /// [`MAX_FIRST_CUSTOMERS`](super::messages::MAX_FIRST_CUSTOMERS): the session cuts the
    /// client's list when it arrives).
    pub(super) first: &'a [DocId],
    /// About how many bytes the batch may hold.
    pub(super) budget: usize,
}

/// A batch being filled.
struct Batch {
    items: Vec<Item>,
    used: usize,
}

impl Fill<'_> {
    /// Fills one batch from `cursor`; returns the items, the cursor after them, and whether
    /// every scope is drained.
    pub(super) fn run(
        mut self,
        mut cursor: Cursor,
    ) -> Result<(Vec<Item>, Cursor, bool), StorageError> {
        let mut batch = Batch {
            items: Vec::new(),
            used: 0,
        };
        // Every scope's first lane goes ahead of any other entry, in a batch of its own: the
        // client applies a batch once all of it has arrived, so the urgent documents land
        // sooner without the bulk behind them.
        let mut urgent = false;
        for (scope, sc) in cursor.scopes.iter_mut() {
            if self.lanes_allowed() {
                self.start_lane(sc)?;
            }
            if batch.used < self.budget {
                urgent |= self.first_lane(scope, sc, &mut batch)?;
            } else {
                urgent |= in_first_lane(sc);
            }
        }
        let mut drained = !urgent;
        if !urgent {
            for (scope, sc) in cursor.scopes.iter_mut() {
                if batch.used >= self.budget {
                    drained = false;
                    break;
                }
                if !self.scope(scope, sc, &mut batch)? {
                    drained = false;
                }
            }
        }
        let leaving: Vec<DocId> = batch
            .items
            .iter()
            .filter(|i| matches!(i.entry, Entry::Leave))
            .map(|i| i.doc_id)
            .collect();
        if !leaving.is_empty() {
            self.storage
                .record_departures(self.device.device_id, &leaving)?;
        }
        Ok((batch.items, cursor, drained))
    }

    fn room(&self, batch: &Batch) -> usize {
        self.budget.saturating_sub(batch.used).max(1)
    }

    fn lanes_allowed(&self) -> bool {
        self.version >= 4 && !self.first.is_empty()
    }

    /// Fills from one scope until its budget share is spent or the scope is drained (true).
    fn scope(
        &mut self,
        scope: &str,
        sc: &mut ScopeCursor,
        batch: &mut Batch,
    ) -> Result<bool, StorageError> {
        loop {
            if batch.used >= self.budget {
                return Ok(false);
            }
            match sc.clone() {
                ScopeCursor::Snapshot { high, after } => {
                    let high = match high {
                        Some(h) => h,
                        None => self.storage.high_seq()?,
                    };
                    match self.snapshots(scope, after, Lane::All, batch)? {
                        Some(last) => {
                            *sc = ScopeCursor::Snapshot {
                                high: Some(high),
                                after: last,
                            };
                            return Ok(false);
                        }
                        None => {
                            self.departures(scope, high, batch)?;
                            *sc = ScopeCursor::Log { seq: high };
                        }
                    }
                }
                // The first lane was filled before any scope's rest.
                ref sc if in_first_lane(sc) => return Ok(false),
                ScopeCursor::SnapshotFirst {
                    high, first, after, ..
                } => {
                    let lane = Lane::Rest {
                        customers: &first,
                        upto: u64::MAX,
                    };
                    match self.snapshots(scope, after, lane, batch)? {
                        Some(last) => {
                            *sc = ScopeCursor::SnapshotFirst {
                                high,
                                first,
                                first_done: true,
                                after: last,
                            };
                            return Ok(false);
                        }
                        None => {
                            self.departures(scope, high, batch)?;
                            *sc = ScopeCursor::Log { seq: high };
                        }
                    }
                }
                ScopeCursor::Log { seq } => {
                    let (last, more) = self.log(scope, seq, Lane::All, batch)?;
                    *sc = ScopeCursor::Log { seq: last };
                    return Ok(!more);
                }
                ScopeCursor::LogFirst {
                    seq, first, upto, ..
                } => {
                    let lane = Lane::Rest {
                        customers: &first,
                        upto,
                    };
                    let (last, more) = self.log(scope, seq, lane, batch)?;
                    // What the read left out up to `upto` is the first lane's, already sent.
                    let seq = if more { last } else { last.max(upto) };
                    if seq >= upto {
                        *sc = ScopeCursor::Log { seq };
                    } else {
                        *sc = ScopeCursor::LogFirst {
                            seq,
                            first,
                            first_seq: upto,
                            upto,
                        };
                    }
                    if more {
                        return Ok(false);
                    }
                    // Plain log from here: the next turn reads what followed the lane.
                }
            }
        }
    }

    /// Fills from one scope's first lane, if it has one open, until the lane is done or the
    /// budget spent; true if it added entries or the lane stays open.
    fn first_lane(
        &mut self,
        scope: &str,
        sc: &mut ScopeCursor,
        batch: &mut Batch,
    ) -> Result<bool, StorageError> {
        let before = batch.items.len();
        match sc.clone() {
            ScopeCursor::SnapshotFirst {
                high,
                first,
                first_done: false,
                after,
            } => {
                let lane = Lane::First {
                    customers: &first,
                    upto: u64::MAX,
                };
                let (first_done, after) = match self.snapshots(scope, after, lane, batch)? {
                    Some(last) => (false, last),
                    None => (true, None),
                };
                *sc = ScopeCursor::SnapshotFirst {
                    high,
                    first,
                    first_done,
                    after,
                };
            }
            ScopeCursor::LogFirst {
                seq,
                first,
                first_seq,
                upto,
            } if first_seq < upto => {
                let lane = Lane::First {
                    customers: &first,
                    upto,
                };
                let (last, more) = self.log(scope, first_seq, lane, batch)?;
                // Every entry up to `upto` existed when the lane began: none is waiting once
                // the read says so.
                let first_seq = if more { last } else { upto };
                *sc = ScopeCursor::LogFirst {
                    seq,
                    first,
                    first_seq,
                    upto,
                };
            }
            _ => return Ok(false),
        }
        Ok(batch.items.len() > before || in_first_lane(sc))
    }

    /// Gives a scope whose phase starts now (no snapshot read yet, or the log with entries
    /// waiting) a first lane.
    fn start_lane(&mut self, sc: &mut ScopeCursor) -> Result<(), StorageError> {
        match *sc {
            ScopeCursor::Snapshot {
                high: None,
                after: None,
            } => {
                *sc = ScopeCursor::SnapshotFirst {
                    high: self.storage.high_seq()?,
                    first: self.first.to_vec(),
                    first_done: false,
                    after: None,
                };
            }
            ScopeCursor::Log { seq } => {
                let upto = self.storage.high_seq()?;
                if upto > seq {
                    *sc = ScopeCursor::LogFirst {
                        seq,
                        first: self.first.to_vec(),
                        first_seq: seq,
                        upto,
                    };
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Adds snapshots of `scope` after `after` in `lane`; returns the last document read if
    /// more are waiting, `None` once the lane is exhausted.
    fn snapshots(
        &mut self,
        scope: &str,
        after: Option<DocId>,
        lane: Lane<'_>,
        batch: &mut Batch,
    ) -> Result<Option<Option<DocId>>, StorageError> {
        let (rows, more) = self
            .storage
            .read_snapshots(scope, after, self.room(batch), lane)?;
        let mut last = after;
        // Documents whose every head this session stored for the client are the client's own
        // (it wrote the whole history up to them): it has them already.
        let own: HashSet<DocId> = if self.uploaded.is_empty() {
            HashSet::new()
        } else {
            let ids: Vec<DocId> = rows.iter().map(|(id, _)| *id).collect();
            self.storage
                .heads_of(&ids)?
                .into_iter()
                .filter(|(_, heads)| {
                    !heads.is_empty() && heads.iter().all(|h| self.uploaded.contains(h))
                })
                .map(|(id, _)| id)
                .collect()
        };
        for (id, bytes) in rows {
            last = Some(id);
            if own.contains(&id) {
                continue;
            }
            batch.used += bytes.len() + 24;
            batch.items.push(Item {
                doc_id: id,
                entry: Entry::Snapshot(super::messages::serde_bytes_vec::Bytes(bytes)),
            });
        }
        Ok(more.then_some(last))
    }

    /// At the end of a scope's snapshot phase: a `Leave` for each document that left the
    /// scope before `high` and is now outside the device's scopes (the replica may hold it).
    fn departures(
        &mut self,
        scope: &str,
        high: u64,
        batch: &mut Batch,
    ) -> Result<(), StorageError> {
        if scope == ALL_SCOPES {
            return Ok(());
        }
        for (id, now) in self.storage.departures(scope, high)? {
            if !self.device.sees(&now) {
                batch.used += 40;
                batch.items.push(Item {
                    doc_id: id,
                    entry: Entry::Leave,
                });
            }
        }
        Ok(())
    }

    /// Adds log entries of `scope` after `after` in `lane`; returns the last position read
    /// (`after` if none) and whether more are waiting.
    fn log(
        &mut self,
        scope: &str,
        after: u64,
        lane: Lane<'_>,
        batch: &mut Batch,
    ) -> Result<(u64, bool), StorageError> {
        let (rows, more) = self
            .storage
            .read_log(scope, after, self.room(batch), lane)?;
        let mut last = after;
        for r in rows {
            batch.used += r.entry.raw_len() + 24;
            last = r.seq;
            self.push_log_entry(batch, r);
        }
        Ok((last, more))
    }

    fn push_log_entry(&self, batch: &mut Batch, r: LogEntry) {
        let echo = r.hash.is_some_and(|h| self.uploaded.contains(&h));
        let kept_elsewhere = matches!(r.entry, Entry::Leave)
            && r.moved_to.as_deref().is_some_and(|s| self.device.sees(s));
        if echo || kept_elsewhere {
            return;
        }
        let entry = match r.entry {
            // Protocol 2 knows no replacement: a snapshot at least brings the document to a
            // client that skipped it (one holding the old history merges it).
            Entry::Replace(b) if self.version < 3 => Entry::Snapshot(b),
            other => other,
        };
        push_entry(&mut batch.items, r.doc_id, entry);
    }
}

/// Whether a scope's first lane still has entries to send.
fn in_first_lane(sc: &ScopeCursor) -> bool {
    match sc {
        ScopeCursor::SnapshotFirst { first_done, .. } => !first_done,
        ScopeCursor::LogFirst {
            first_seq, upto, ..
        } => first_seq < upto,
        _ => false,
    }
}

/// Appends an entry, merging consecutive changes to the same document into one item.
fn push_entry(items: &mut Vec<Item>, doc_id: DocId, entry: Entry) {
    if let (Some(last), Entry::Changes(new)) = (items.last_mut(), &entry)
        && last.doc_id == doc_id
        && let Entry::Changes(existing) = &mut last.entry
    {
        existing.extend(new.iter().cloned());
        return;
    }
    items.push(Item { doc_id, entry });
}

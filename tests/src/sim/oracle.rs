//! What the simulation knows independently of the system under test.
//!
//! The [`Oracle`] is written by the harness, outside the stores: every change a client
//! committed (L1), every change a client removed from its outbox because an `UploadAck`
//! accepted it (L2), every refusal the relay gave and why. The [`RelayView`] follows the
//! relay's log through the public storage API, so the checks know where each document is
//! filed, which scopes it has been in, and where it left a scope.

use std::collections::{BTreeMap, BTreeSet};

use fieldsync_core::DocId;
use fieldsync_core::protocol::messages::Hash;
use fieldsync_core::protocol::{Entry, Lane};
use fieldsync_relay::SqliteRelayStore;

use super::SCOPES;

/// A change a client committed to its replica.
#[derive(Clone, Debug)]
pub(crate) struct CommittedChange {
    /// The client.
    pub client: usize,
    /// The document.
    pub doc: DocId,
    /// Step of the commit.
    pub step: u64,
}

/// The harness's own record of what happened.
#[derive(Default)]
pub(crate) struct Oracle {
    /// L1: changes committed locally, by hash.
    pub committed: BTreeMap<Hash, CommittedChange>,
    /// L2: changes a client dropped from its outbox on an `UploadAck`: hash → (client, step).
    pub acked: BTreeMap<Hash, (usize, u64)>,
    /// Permanent refusals the relay gave, checked legitimate when given: hash → (client, reason).
    pub refused: BTreeMap<Hash, (usize, String)>,
    /// Changes each client moved to its quarantine.
    pub quarantined: BTreeMap<usize, BTreeSet<Hash>>,
    /// Who created each document.
    pub creator: BTreeMap<DocId, usize>,
    /// The customer of each visit and quote.
    pub customer_of: BTreeMap<DocId, DocId>,
}

/// The relay's log as followed through [`SqliteRelayStore::read_log`].
#[derive(Default)]
pub(crate) struct RelayView {
    /// Highest sequence number read.
    pub high: u64,
    /// Bytes of every change and snapshot in the log.
    pub bytes: u64,
    /// The scope each change was filed under, by hash.
    pub change_scope: BTreeMap<Hash, String>,
    /// The document and log position of each change, by hash.
    pub change_doc: BTreeMap<Hash, (DocId, u64)>,
    /// Where each document is filed now (the scope of its newest change or snapshot entry).
    pub current: BTreeMap<DocId, String>,
    /// Every scope each document was ever filed under.
    pub scopes_ever: BTreeMap<DocId, BTreeSet<String>>,
    /// The newest `Leave` entry of a document in a scope: (doc, scope) → (seq, moved to).
    pub leaves: BTreeMap<(DocId, String), (u64, Option<String>)>,
    /// The entries read by the last refresh that found any: (document, scope).
    pub recent: Vec<(DocId, String)>,
}

impl RelayView {
    /// Reads the log entries appended since the last call.
    pub(crate) fn refresh(&mut self, relay: &SqliteRelayStore) -> Result<(), String> {
        let high = relay.high_seq().map_err(|e| format!("relay high: {e}"))?;
        if high == self.high {
            self.recent.clear();
            return Ok(());
        }
        let mut entries = Vec::new();
        for scope in SCOPES {
            let (rows, more) = relay
                .read_log(scope, self.high, 1 << 40, Lane::All)
                .map_err(|e| format!("relay log: {e}"))?;
            if more {
                return Err("read_log with an unbounded budget left entries behind".into());
            }
            entries.extend(rows.into_iter().map(|r| (scope, r)));
        }
        entries.sort_by_key(|(_, r)| r.seq);
        self.recent = entries
            .iter()
            .map(|(scope, r)| (r.doc_id, scope.to_string()))
            .collect();
        for (scope, r) in entries {
            if r.seq > high {
                return Err(format!("log entry {} above the high mark {high}", r.seq));
            }
            self.scopes_ever
                .entry(r.doc_id)
                .or_default()
                .insert(scope.to_string());
            match r.entry {
                Entry::Changes(c) => {
                    self.bytes += c.iter().map(|b| b.0.len() as u64).sum::<u64>();
                    let h = r
                        .hash
                        .ok_or_else(|| format!("log entry {} without a hash", r.seq))?;
                    if self.change_scope.insert(h, scope.to_string()).is_some() {
                        return Err(format!("change {} logged twice", hex(&h)));
                    }
                    self.change_doc.insert(h, (r.doc_id, r.seq));
                    self.current.insert(r.doc_id, scope.to_string());
                }
                Entry::Snapshot(b) | Entry::Replace(b) => {
                    self.bytes += b.0.len() as u64;
                    self.current.insert(r.doc_id, scope.to_string());
                }
                Entry::Leave => {
                    self.leaves
                        .insert((r.doc_id, scope.to_string()), (r.seq, r.moved_to));
                }
            }
        }
        self.high = high;
        Ok(())
    }

    /// Whether the relay stores the change.
    pub(crate) fn has(&self, h: &Hash) -> bool {
        self.change_scope.contains_key(h)
    }
}

/// Short hex of a hash for messages.
pub(crate) fn hex(h: &Hash) -> String {
    h[..6].iter().map(|b| format!("{b:02x}")).collect()
}

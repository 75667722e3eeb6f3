//! What a sync moved: [`SyncReport`] at its end, [`SyncProgress`] while it runs.

use super::*;
use std::collections::BTreeMap;

use fieldsync_core::attachment::local::BlobsWaiting;
use fieldsync_core::{DocId, DocKind};

/// Totals of one [`sync_now`] run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// The relay address.
    pub relay: String,
    /// Scopes the relay granted.
    pub scopes: Vec<String>,
    /// Role the relay granted.
    pub role: Option<Role>,
    /// Local changes uploaded.
    pub changes_sent: u64,
    /// Local changes acknowledged by the relay.
    pub changes_acked: u64,
    /// Local changes refused for good (now in the quarantine).
    pub changes_rejected: u64,
    /// Download items applied (change groups, snapshots, removals).
    pub items_received: u64,
    /// Remote changes new to this replica.
    pub changes_received: u64,
    /// Document snapshots merged.
    pub snapshots_received: u64,
    /// Documents whose history the relay replaced (IT trimmed them): the replica took the new
    /// history and carried over its unsent edits.
    #[serde(default)]
    pub replaced: u64,
    /// Download items that could not be applied (skipped and logged).
    pub items_failed: u64,
    /// Download batches applied.
    pub batches: u64,
    /// Changes re-uploaded because the relay had lost them (repair).
    pub repaired: u64,
    /// The relay's epoch was not the one this replica last synced with: it was restored from
    /// a backup (or its log was reset) since. The replica compared document heads with it and
    /// re-sent every change it lacked ([`SyncReport::repaired`]).
    #[serde(default)]
    pub relay_restored: bool,
    /// Documents whose local changes the relay acknowledged in this sync, by kind (each
    /// document counted once, however many of its changes went).
    #[serde(default)]
    pub sent_documents: KindCounts,
    /// Documents this sync brought changes, snapshots or replacements of, by kind (each
    /// document counted once).
    #[serde(default)]
    pub received_documents: KindCounts,
    /// Frame bytes written to the relay (length prefixes included).
    pub bytes_sent: u64,
    /// Frame bytes read from the relay (length prefixes included).
    pub bytes_received: u64,
    /// Frames written.
    pub frames_sent: u64,
    /// Frames read.
    pub frames_received: u64,
    /// Local changes still waiting (refused for now and kept for a later sync, or committed
    /// after the sync finished).
    pub outbox_remaining: u64,
    /// Bytes of those waiting changes.
    #[serde(default)]
    pub outbox_bytes_remaining: u64,
    /// The sync stopped at its budget ([`SyncConfig::budget`]) rather than when everything
    /// was exchanged; a later sync goes on from there.
    #[serde(default)]
    pub budget_spent: bool,
    /// The relay had more to send than this sync fetched (the budget was spent first).
    #[serde(default)]
    pub download_waiting: bool,
    /// About how many documents the relay still had for this laptop when the sync ended (0
    /// when it caught up; an estimate from what the relay said was waiting when the download
    /// started, less what arrived).
    #[serde(default)]
    pub download_waiting_documents: u64,
    /// About how many raw (uncompressed) bytes those are.
    #[serde(default)]
    pub download_waiting_bytes: u64,
    /// The connection resumed an earlier TLS session and the relay took the first flight
    /// (`Hello`, upload, pull) as 0-RTT data: the sync saved the handshake's round trip.
    #[serde(default)]
    pub early_data: bool,
    /// Attachments whose upload completed in this sync, and the bytes the relay confirmed.
    #[serde(default)]
    pub attachments_uploaded: u64,
    /// Attachment bytes the relay confirmed in this sync.
    #[serde(default)]
    pub attachment_bytes_sent: u64,
    /// Attachments whose download completed in this sync.
    #[serde(default)]
    pub attachments_downloaded: u64,
    /// Attachment bytes received and stored in this sync.
    #[serde(default)]
    pub attachment_bytes_received: u64,
    /// Attachments still waiting each way after the sync (refused ones included).
    #[serde(default)]
    pub attachments_waiting: BlobsWaiting,
    /// Wall-clock time from the first connection attempt to the clean close.
    #[serde(with = "millis", rename = "duration_ms")]
    pub duration: Duration,
}

/// How many documents of each kind (see [`SyncReport::sent_documents`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCounts {
    /// Customers.
    pub customers: u64,
    /// Visits.
    pub visits: u64,
    /// Quotes.
    pub quotes: u64,
}

impl KindCounts {
    /// The count of one kind.
    pub fn get(&self, kind: DocKind) -> u64 {
        match kind {
            DocKind::Customer => self.customers,
            DocKind::Visit => self.visits,
            DocKind::Quote => self.quotes,
        }
    }

    /// All kinds together.
    pub fn total(&self) -> u64 {
        self.customers + self.visits + self.quotes
    }

    /// In words for people: "2 customers and 1 visit", "1 quote"; `None` when all are zero.
    pub fn in_words(&self) -> Option<String> {
        let parts: Vec<String> = [
            (self.customers, "customer"),
            (self.visits, "visit"),
            (self.quotes, "quote"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| match n {
            1 => format!("1 {what}"),
            n => format!("{n} {what}s"),
        })
        .collect();
        match parts.as_slice() {
            [] => None,
            [one] => Some(one.clone()),
            [rest @ .., last] => Some(format!("{} and {last}", rest.join(", "))),
        }
    }

    /// Counts each document of `docs` once, by its kind.
    pub(super) fn of(docs: &BTreeMap<DocId, DocKind>) -> Self {
        let mut c = Self::default();
        for kind in docs.values() {
            match kind {
                DocKind::Customer => c.customers += 1,
                DocKind::Visit => c.visits += 1,
                DocKind::Quote => c.quotes += 1,
            }
        }
        c
    }
}

/// Running totals during [`sync_now_with_progress`], for progress bars.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncProgress {
    /// Frame bytes written so far.
    pub bytes_sent: u64,
    /// Frame bytes read so far.
    pub bytes_received: u64,
    /// Outbox length when the sync started (the upload's total).
    pub outbox_at_start: u64,
    /// Local changes uploaded so far.
    pub changes_sent: u64,
    /// Local changes acknowledged so far.
    pub changes_acked: u64,
    /// Local changes refused for good so far.
    pub changes_rejected: u64,
    /// Download items applied so far.
    pub items_received: u64,
    /// Remote changes new to this replica so far.
    pub changes_received: u64,
    /// Download caught up.
    pub caught_up: bool,
    /// About how much the download has left, as documents and raw bytes, once the relay has
    /// said (see [`SyncReport::download_waiting_documents`]).
    pub download_left: Option<(u64, u64)>,
    /// Raw bytes of the download items received since the relay said what was waiting (the
    /// download's own rate, whatever the compression).
    pub download_raw_received: u64,
}

impl SyncProgress {
    /// Field-wise sum of the counters (for totals over several connections).
    pub(super) fn plus(&self, o: &Self) -> Self {
        Self {
            bytes_sent: self.bytes_sent + o.bytes_sent,
            bytes_received: self.bytes_received + o.bytes_received,
            outbox_at_start: o.outbox_at_start,
            changes_sent: self.changes_sent + o.changes_sent,
            changes_acked: self.changes_acked + o.changes_acked,
            changes_rejected: self.changes_rejected + o.changes_rejected,
            items_received: self.items_received + o.items_received,
            changes_received: self.changes_received + o.changes_received,
            caught_up: o.caught_up,
            // Each connection's relay says afresh what is left.
            download_left: o.download_left.or(self.download_left),
            download_raw_received: o.download_raw_received,
        }
    }
}

/// Serde for durations as whole milliseconds.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

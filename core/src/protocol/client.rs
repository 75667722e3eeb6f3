//! The client's side of a connection, sans IO: it reads and writes the replica [`Store`] and
//! returns the messages to send.

use crate::ids::ALL_SCOPES;
use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::{AutoCommit, ChangeHash};
use rusqlite::OptionalExtension;
use uuid::Uuid;

use super::messages::{
    Cursor, DOWNLOAD_WINDOW, DevicePolicy, Entry, ErrorCode, Hash, MAGIC, Message,
    PROTOCOL_VERSION, ScopeCursor, UploadChange, WipeOrder,
};
use super::relay::REPAIR_BATCH;
use super::step::{TimerConfig, Timers};
use crate::ids::{DocId, Role};
use crate::store::{Store, StoreError, StoreTx, decode_change};

/// Meta key of the durable download cursor.
pub const CURSOR_KEY: &str = "sync.cursor";

/// Errors that end a client session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The relay refused the session or reported an error.
    #[error("relay error {code:?}: {reason}")]
    Relay {
        /// Code.
        code: ErrorCode,
        /// Reason.
        reason: String,
    },
    /// The relay sent something the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The local replica failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The relay owed an answer and said nothing for this long (see
    /// [`super::step::TimerConfig::response_timeout`]).
    #[error("the relay did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl SessionError {
    /// Whether retrying later can help (false for a refused device or an incompatible relay).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::Relay {
                code: ErrorCode::Unauthorized | ErrorCode::VersionMismatch,
                ..
            }
        )
    }
}

/// Tuning of a client session.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Software name sent in `Hello`.
    pub agent: String,
    /// The device credential, if enrolled.
    pub credential: Option<String>,
    /// A one-time enrolment token to redeem: the session then opens with
    /// [`Message::Enrol`] (binding the token to this device and `credential`, which must be
    /// set) instead of `Hello`.
    pub enrol_token: Option<String>,
    /// Most changes per upload batch.
    pub upload_changes: usize,
    /// About this many bytes per upload batch.
    pub upload_bytes: usize,
    /// Download batch budget.
    pub pull_bytes: u32,
    /// The session's timers (see [`ClientSession::step`]).
    pub timers: TimerConfig,
    /// Customers whose documents the download brings first (see [`Message::First`]), most
    /// urgent first; a driver fills it from [`Store::first_customers`] before it opens.
    pub first: Vec<DocId>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            agent: format!("fieldsync/{}", env!("CARGO_PKG_VERSION")),
            credential: None,
            enrol_token: None,
            upload_changes: 2_000,
            upload_bytes: 1 << 20,
            pull_bytes: 2 << 20,
            timers: TimerConfig::default(),
            first: Vec::new(),
        }
    }
}

/// Counters of one session.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionStats {
    /// Local changes uploaded.
    pub changes_sent: u64,
    /// Local changes acknowledged.
    pub changes_acked: u64,
    /// Local changes refused and quarantined.
    pub changes_rejected: u64,
    /// Download items applied (changes groups, snapshots, removals).
    pub items_received: u64,
    /// Remote changes that were new to the replica.
    pub changes_received: u64,
    /// Snapshots merged.
    pub snapshots_received: u64,
    /// Documents whose history the relay replaced (IT trimmed them), taken in place of the
    /// replica's copies.
    pub replaced: u64,
    /// Download items that could not be applied (kept out; logged).
    pub items_failed: u64,
    /// Download batches applied.
    pub batches: u64,
    /// Changes re-uploaded during repair.
    pub repaired: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Handshake,
    Repair { sent_all: bool },
    Sync,
}

/// One connection to the relay, as seen by the client.
#[derive(Debug)]
pub struct ClientSession {
    cfg: ClientConfig,
    phase: Phase,
    epoch: Option<Uuid>,
    scopes: Vec<String>,
    role: Option<Role>,
    next_batch: u64,
    /// Upload in flight: batch number and highest outbox seq it covers.
    inflight: Option<(u64, i64)>,
    /// Highest outbox seq sent in this session; later retries wait for the next session.
    sent_seq: i64,
    /// Download batches the relay still owes: a `Pull` is answered with up to
    /// [`DOWNLOAD_WINDOW`] batches and each `More` with one; a batch that says the download
    /// caught up ends them.
    owed: u32,
    caught_up: bool,
    /// Paused ([`ClientSession::pause`]): no new upload or pull goes out.
    paused: bool,
    /// A pull the pause held back: more is waiting on the relay.
    held_pull: bool,
    /// What the relay said was waiting when it answered the last `Pull` (documents, raw
    /// bytes), and what arrived since (items, raw bytes).
    waiting: Option<(u64, u64)>,
    since_waiting: (u64, u64),
    stats: SessionStats,
    /// The standing orders the relay sent after the `Welcome` (protocol 7), with the relay's
    /// clock then.
    policy: Option<(DevicePolicy, i64)>,
    /// Local changes quarantined since the last [`ClientSession::take_quarantined`].
    quarantined: Vec<(ChangeHash, String)>,
    pub(super) timers: Timers,
}

impl ClientSession {
    /// A new session; call [`ClientSession::hello`] and send the result first.
    pub fn new(cfg: ClientConfig) -> Self {
        Self {
            cfg,
            phase: Phase::Handshake,
            epoch: None,
            scopes: Vec::new(),
            role: None,
            next_batch: 1,
            inflight: None,
            sent_seq: 0,
            owed: 0,
            caught_up: false,
            paused: false,
            policy: None,
            held_pull: false,
            waiting: None,
            since_waiting: (0, 0),
            stats: SessionStats::default(),
            quarantined: Vec::new(),
            timers: Timers::default(),
        }
    }

    /// The session's timer settings.
    pub(super) fn timer_config(&self) -> TimerConfig {
        self.cfg.timers
    }

    /// The first message of the session: `Enrol` when redeeming an enrolment token (and a
    /// credential is set), else `Hello`.
    pub fn hello(&self, store: &Store) -> Message {
        if let (Some(token), Some(credential)) = (&self.cfg.enrol_token, &self.cfg.credential) {
            return Message::Enrol {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                device_id: store.device_id(),
                token: token.clone(),
                credential: credential.clone(),
                agent: self.cfg.agent.clone(),
            };
        }
        Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            device_id: store.device_id(),
            credential: self.cfg.credential.clone(),
            agent: self.cfg.agent.clone(),
        }
    }

    /// The session's first messages, sent together: the `Hello` (or `Enrol`), the report of
    /// what the replica holds unsent (`Outbox`: a relay that accepts this client's version
    /// knows it), the first upload of waiting local changes, and a `Pull` from the replica's
    /// cursor. The relay
    /// handles them in that order once the `Hello` authenticated, so the handshake, the upload
    /// and the start of the download take one round trip; it brings the cursor in line with
    /// the device's grant and its epoch itself. The upload goes before the pull, as in a
    /// session that waited for the `Welcome`: the download then already accounts for it.
    pub fn open(&mut self, store: &Store) -> Result<Vec<Message>, SessionError> {
        let mut out = vec![self.hello(store), outbox_report(store)?];
        out.extend(self.poll_upload(store)?);
        let cursor = Self::load_cursor(store)?.unwrap_or(Cursor {
            // No download yet: an epoch the relay never has starts every scope afresh.
            epoch: Uuid::nil(),
            scopes: BTreeMap::new(),
        });
        if !self.cfg.first.is_empty() {
            out.push(Message::First {
                customers: self.cfg.first.clone(),
            });
        }
        self.owed = DOWNLOAD_WINDOW;
        out.push(Message::Pull {
            cursor,
            max_bytes: self.cfg.pull_bytes,
        });
        Ok(out)
    }

    /// Counters so far.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Local changes moved to the quarantine since the last call, with the reason: those the
    /// relay refused for good, and those that depend on a quarantined change.
    pub fn take_quarantined(&mut self) -> Vec<(ChangeHash, String)> {
        std::mem::take(&mut self.quarantined)
    }

    /// The scopes and role the relay granted, after the handshake.
    pub fn grant(&self) -> Option<(&[String], Role)> {
        self.role.map(|r| (self.scopes.as_slice(), r))
    }

    /// Caught up with the relay and every local change sent so far acknowledged.
    pub fn is_synced(&self, store: &Store) -> Result<bool, StoreError> {
        Ok(self.phase == Phase::Sync
            && self.caught_up
            && self.inflight.is_none()
            && store.outbox_batch(self.sent_seq, 1, 1)?.is_empty())
    }

    /// Whether the download has caught up (live pushes from now on).
    pub fn is_caught_up(&self) -> bool {
        self.phase == Phase::Sync && self.caught_up
    }

    /// Sends no new upload and no new pull from now on; what is in flight is still answered.
    /// A metered sync pauses once its budget is spent and ends when the session
    /// [is settled](ClientSession::is_settled); everything not sent waits for the next session.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Nothing this session sent waits for an answer (no upload unacknowledged, no pull
    /// unanswered, no repair under way).
    pub fn is_settled(&self) -> bool {
        self.phase == Phase::Sync && self.inflight.is_none() && self.owed == 0
    }

    /// The relay had more to send than this session fetched (a pull was held back by
    /// [`ClientSession::pause`], or the download has not caught up).
    pub fn download_waiting(&self) -> bool {
        self.held_pull || !self.is_caught_up()
    }

    /// About how much the download has left, as `(documents, raw bytes)`: what the relay
    /// said was waiting when it answered this session's last pull, less what arrived since
    /// (each document counted once per batch that carried it). Nothing once caught up;
    /// `None` when the relay did not say (an older relay, or no pull answered yet).
    pub fn download_left(&self) -> Option<(u64, u64)> {
        if self.is_caught_up() {
            return Some((0, 0));
        }
        let (documents, bytes) = self.waiting?;
        Some((
            documents.saturating_sub(self.since_waiting.0),
            bytes.saturating_sub(self.since_waiting.1),
        ))
    }

    /// Raw (uncompressed) bytes of the download items that arrived since the relay last said
    /// what was waiting: with [`ClientSession::download_left`], the download's rate and the
    /// time it has left.
    pub fn download_raw_received(&self) -> u64 {
        self.since_waiting.1
    }

    /// The standing orders the relay sent after the `Welcome` (protocol 7): a wipe, the
    /// offline lease; with the relay's clock when it sent them.
    pub fn policy(&self) -> Option<&(DevicePolicy, i64)> {
        self.policy.as_ref()
    }

    /// Whether every local change sent in this session has been answered (a wipe after
    /// upload waits for this with an empty outbox).
    pub fn uploads_answered(&self) -> bool {
        self.inflight.is_none()
    }

    /// Reads the durable cursor.
    pub fn load_cursor(store: &Store) -> Result<Option<Cursor>, StoreError> {
        Ok(store
            .meta(CURSOR_KEY)?
            .and_then(|b| serde_json::from_slice::<Cursor>(&b).ok()))
    }

    /// Handles one message from the relay; returns the messages to send.
    pub fn handle(
        &mut self,
        store: &mut Store,
        msg: Message,
    ) -> Result<Vec<Message>, SessionError> {
        match (&self.phase, msg) {
            (_, Message::Error { code, reason }) => Err(SessionError::Relay { code, reason }),
            (
                Phase::Handshake,
                Message::Welcome {
                    version,
                    epoch,
                    scopes,
                    role,
                },
            ) => {
                if version != PROTOCOL_VERSION {
                    return Err(SessionError::Relay {
                        code: ErrorCode::VersionMismatch,
                        reason: format!(
                            "relay speaks protocol {version}, this client {PROTOCOL_VERSION}"
                        ),
                    });
                }
                self.epoch = Some(epoch);
                self.scopes = scopes;
                self.role = Some(role);
                let cursor = Self::load_cursor(store)?;
                let stale = cursor.as_ref().is_some_and(|c| c.epoch != epoch);
                let mut out = Vec::new();
                if stale && store.doc_count()? > 0 {
                    // The relay's log restarted (restored from a backup, or reset): compare
                    // heads so it gets back whatever it lost. A pull sent with the `Hello`
                    // carried the old epoch, so the relay already restarted the download;
                    // its batches are applied while the repair runs.
                    self.phase = Phase::Repair { sent_all: false };
                    out.extend(self.send_heads(store)?);
                    return Ok(out);
                }
                self.phase = Phase::Sync;
                out.extend(self.start_sync(store, cursor.filter(|c| c.epoch == epoch))?);
                Ok(out)
            }
            (Phase::Sync | Phase::Repair { .. }, Message::Policy { policy, relay_time }) => {
                if let Some(order) = policy.wipe {
                    // The relay answers no pull and no repair of a laptop it told to wipe;
                    // a wipe after upload still sends the outbox.
                    self.owed = 0;
                    self.phase = Phase::Sync;
                    if order == WipeOrder::Now {
                        self.paused = true;
                    }
                }
                self.policy = Some((policy, relay_time));
                Ok(Vec::new())
            }
            (Phase::Repair { .. }, Message::Missing { docs, done }) => {
                let mut out = self.repair_uploads(store, &docs)?;
                if done {
                    self.phase = Phase::Sync;
                    out.extend(self.start_sync(store, None)?);
                }
                Ok(out)
            }
            (
                _,
                Message::UploadAck {
                    batch,
                    accepted,
                    rejected,
                },
            ) => {
                let hashes: Vec<ChangeHash> = accepted.iter().map(|h| ChangeHash(*h)).collect();
                let plan = QuarantinePlan::new(store, &accepted, &rejected)?;
                let (acked, quarantined) = store.transaction(|tx| {
                    let n = tx.ack(&hashes)?;
                    let mut moved = Vec::new();
                    for (hash, reason) in &plan.quarantine {
                        if tx.quarantine(hash, reason)? {
                            tracing::warn!(hash = %hex::encode(hash.0), %reason, "relay refused a local change; quarantined");
                            moved.push((*hash, reason.clone()));
                        }
                    }
                    for (id, leaving) in &plan.rebuild {
                        rebuild_without(tx, *id, &plan.excluded, *leaving)?;
                    }
                    // Marked documents whose last change this answer settles leave with the
                    // next batch that catches up, not now: the relay may have filed the
                    // document back into the device's scopes after the download caught up,
                    // and that batch (sent after this answer) brings its snapshot first.
                    Ok((n, moved))
                })?;
                self.stats.changes_acked += acked as u64;
                self.stats.changes_rejected += quarantined.len() as u64;
                self.quarantined.extend(quarantined);
                if self.inflight.map(|(b, _)| b) == Some(batch) {
                    self.inflight = None;
                }
                let mut out: Vec<Message> = self.poll_upload(store)?.into_iter().collect();
                out.push(outbox_report(store)?);
                Ok(out)
            }
            (Phase::Sync | Phase::Repair { .. }, Message::Waiting { documents, bytes }) => {
                self.waiting = Some((documents, bytes));
                self.since_waiting = (0, 0);
                Ok(Vec::new())
            }
            (
                Phase::Sync | Phase::Repair { .. },
                Message::Batch {
                    items,
                    cursor,
                    caught_up,
                },
            ) => {
                let raw: usize = items.iter().map(|i| i.entry.raw_len()).sum();
                self.since_waiting.0 += items.len() as u64;
                self.since_waiting.1 += raw as u64;
                self.apply_batch(store, items, &cursor, caught_up)?;
                self.caught_up = caught_up;
                self.owed = if caught_up {
                    0
                } else {
                    self.owed.saturating_sub(1)
                };
                if caught_up {
                    Ok(Vec::new())
                } else if self.paused {
                    // What is in flight still arrives; nothing more is asked for.
                    self.held_pull = true;
                    Ok(Vec::new())
                } else {
                    // The relay streams from where its last batch ended (a live push that
                    // did not fit one batch, too).
                    self.owed += 1;
                    Ok(vec![Message::More])
                }
            }
            (phase, m) => Err(SessionError::Protocol(format!(
                "unexpected {} in phase {phase:?}",
                m.name()
            ))),
        }
    }

    /// The next upload batch, if local changes are waiting and none is in flight. Call it after
    /// local edits while connected.
    pub fn poll_upload(&mut self, store: &Store) -> Result<Option<Message>, StoreError> {
        if matches!(self.phase, Phase::Repair { .. }) || self.inflight.is_some() || self.paused {
            return Ok(None);
        }
        let batch = store.outbox_batch(
            self.sent_seq,
            self.cfg.upload_changes,
            self.cfg.upload_bytes,
        )?;
        let Some(last) = batch.last().map(|c| c.seq) else {
            return Ok(None);
        };
        let n = self.next_batch;
        self.next_batch += 1;
        self.inflight = Some((n, last));
        self.sent_seq = last;
        self.stats.changes_sent += batch.len() as u64;
        Ok(Some(Message::Upload {
            batch: n,
            changes: batch
                .into_iter()
                .map(|c| UploadChange {
                    doc_id: c.doc_id,
                    bytes: c.bytes,
                })
                .collect(),
        }))
    }

    fn start_sync(
        &mut self,
        store: &mut Store,
        cursor: Option<Cursor>,
    ) -> Result<Vec<Message>, SessionError> {
        let epoch = self
            .epoch
            .ok_or_else(|| SessionError::Protocol("no epoch".into()))?;
        let mut cursor = cursor.unwrap_or(Cursor {
            epoch,
            scopes: BTreeMap::new(),
        });
        // Scopes the device lost: their documents leave the replica once their local changes
        // are acknowledged. New scopes start fresh.
        let lost: Vec<String> = cursor
            .scopes
            .keys()
            .filter(|s| !self.scopes.contains(s))
            .cloned()
            .collect();
        if !lost.is_empty() && !self.scopes.iter().any(|s| s == ALL_SCOPES) {
            let ids = docs_outside(store, &self.scopes)?;
            store.transaction(|tx| {
                for id in ids {
                    tx.evict(id)?;
                }
                Ok(())
            })?;
        }
        cursor.scopes.retain(|s, _| self.scopes.contains(s));
        for s in &self.scopes {
            cursor
                .scopes
                .entry(s.clone())
                .or_insert_with(ScopeCursor::fresh);
        }
        let mut out = Vec::new();
        if let Some(up) = self.poll_upload(store)? {
            out.push(up);
        }
        // A pull sent with the `Hello` ([`ClientSession::open`]) is answered with the same
        // scopes: the relay brings a client's cursor in line with its grant and epoch itself.
        if self.owed == 0 {
            self.owed = DOWNLOAD_WINDOW;
            out.push(Message::Pull {
                cursor,
                max_bytes: self.cfg.pull_bytes,
            });
        }
        Ok(out)
    }

    fn apply_batch(
        &mut self,
        store: &mut Store,
        items: Vec<super::messages::Item>,
        cursor: &Cursor,
        caught_up: bool,
    ) -> Result<(), SessionError> {
        let cursor_bytes =
            serde_json::to_vec(cursor).map_err(|e| SessionError::Protocol(e.to_string()))?;
        // Visits and quotes follow their customer: when it leaves, they leave too (also those
        // the relay never filed under the old scope, e.g. created offline after the move), and
        // when it comes back, they stay.
        let mut followers: BTreeMap<DocId, Vec<DocId>> = BTreeMap::new();
        for item in items.iter().filter(|i| {
            matches!(
                i.entry,
                Entry::Leave | Entry::Snapshot(_) | Entry::Replace(_)
            )
        }) {
            let ids = (|| -> Result<Vec<Vec<u8>>, rusqlite::Error> {
                store
                    .reader()
                    .prepare_cached("SELECT id FROM docs WHERE customer_id = ?1")?
                    .query_map([item.doc_id.as_bytes()], |r| r.get(0))?
                    .collect()
            })()
            .map_err(StoreError::from)?;
            followers.insert(
                item.doc_id,
                ids.iter().filter_map(|b| DocId::from_slice(b)).collect(),
            );
        }
        let mut stats = self.stats.clone();
        // Snapshots are loaded and read on helper threads while this one writes.
        let jobs: Vec<(DocId, &[u8])> = items
            .iter()
            .filter_map(|i| match &i.entry {
                Entry::Snapshot(b) | Entry::Replace(b) => Some((i.doc_id, b.0.as_slice())),
                _ => None,
            })
            .collect();
        crate::store::with_prepared(&jobs, |prepared| {
            store.transaction(|tx| {
            // A document's changes are applied together (one load, one projection, instead of
            // one per log entry), at its next snapshot or leave in this batch or at the end:
            // documents are independent, and each keeps the order of its own entries.
            let mut waiting = WaitingChanges::default();
            for item in &items {
                stats.items_received += 1;
                if !matches!(item.entry, Entry::Changes(_)) {
                    waiting.apply(tx, Some(item.doc_id), &mut stats)?;
                }
                let r = match &item.entry {
                    Entry::Changes(changes) => {
                        waiting.add(item.doc_id, changes.iter().map(|b| b.0.clone()).collect());
                        Ok(())
                    }
                    // A snapshot means the document is (again) in the device's scopes: keep
                    // it (and its visits and quotes) even if it was waiting to leave. A
                    // replacement (the relay replaced the document's history) stands in for
                    // this replica's copy; edits the relay has not acknowledged are carried
                    // over.
                    Entry::Snapshot(bytes) | Entry::Replace(bytes) => prepared
                        .take_next()
                        .unwrap_or_else(|| Err(StoreError::InvalidData("snapshot not prepared".into())))
                        .and_then(|mut p| {
                            let r = if matches!(item.entry, Entry::Replace(_)) {
                                tx.replace_document(item.doc_id, &bytes.0, &mut p).map(Some)
                            } else {
                                tx.apply_prepared_snapshot(item.doc_id, &bytes.0, &mut p).map(|_| None)
                            };
                            prepared.discard(p);
                            r
                        })
                        .and_then(|replaced| {
                            if let Some(r) = replaced {
                                stats.replaced += 1;
                                if r.quarantined > 0 {
                                    tracing::warn!(doc = %item.doc_id, changes = r.quarantined, "edits to a replaced document could not be carried over; they are in the quarantine");
                                }
                            }
                            tx.clear_skipped(item.doc_id)?;
                            std::iter::once(&item.doc_id)
                                .chain(followers.get(&item.doc_id).into_iter().flatten())
                                .try_for_each(|id| tx.cancel_eviction(*id).map(|_| ()))
                        })
                        .map(|_| stats.snapshots_received += 1),
                    // Only marked: the document may come back further down the log (its
                    // snapshot then keeps it), and dropping it now would also drop this
                    // device's own changes to it, which the relay does not echo back.
                    Entry::Leave => std::iter::once(&item.doc_id)
                        .chain(followers.get(&item.doc_id).into_iter().flatten())
                        .try_for_each(|id| tx.mark_eviction(*id).map(|_| ())),
                };
                if let Err(e) = r {
                    if matches!(e, StoreError::Sqlite(_)) {
                        return Err(e);
                    }
                    // Bytes the relay should never have sent: keep them out, keep syncing, and
                    // report the document.
                    stats.items_failed += 1;
                    tracing::warn!(doc = %item.doc_id, error = %e, "skipping an undecodable download item");
                    tx.record_skipped(item.doc_id, &e.to_string())?;
                }
            }
            waiting.apply(tx, None, &mut stats)?;
            // Caught up: whatever is still marked did not come back; it leaves once its
            // local changes are acknowledged (the next batch that catches up after that
            // answer removes it).
            if caught_up {
                tx.evict_acknowledged()?;
            }
            tx.set_meta(CURSOR_KEY, &cursor_bytes)
        })
        })?;
        stats.batches += 1;
        self.stats = stats;
        Ok(())
    }

    fn send_heads(&mut self, store: &Store) -> Result<Vec<Message>, SessionError> {
        let all = store.all_heads()?;
        let mut out = Vec::new();
        let chunks: Vec<_> = all.chunks(2_000).collect();
        if chunks.is_empty() {
            out.push(Message::Heads {
                docs: Vec::new(),
                done: true,
            });
        }
        for (i, chunk) in chunks.iter().enumerate() {
            out.push(Message::Heads {
                docs: chunk
                    .iter()
                    .map(|(id, h)| (*id, h.iter().map(|x| x.0).collect()))
                    .collect(),
                done: i + 1 == chunks.len(),
            });
        }
        Ok(out)
    }

    fn repair_uploads(
        &mut self,
        store: &mut Store,
        docs: &[(DocId, Vec<Hash>)],
    ) -> Result<Vec<Message>, SessionError> {
        let mut out = Vec::new();
        let mut changes = Vec::new();
        for (id, relay_heads) in docs {
            let mut doc = store.automerge(*id)?;
            let known: Vec<ChangeHash> = relay_heads
                .iter()
                .map(|h| ChangeHash(*h))
                .filter(|h| doc.get_change_by_hash(h).is_some())
                .collect();
            for c in doc.get_changes(&known) {
                changes.push(UploadChange {
                    doc_id: *id,
                    bytes: c.raw_bytes().to_vec(),
                });
            }
        }
        self.stats.repaired += changes.len() as u64;
        for chunk in changes.chunks(self.cfg.upload_changes.max(1)) {
            let n = self.next_batch | REPAIR_BATCH;
            self.next_batch += 1;
            out.push(Message::Upload {
                batch: n,
                changes: chunk.to_vec(),
            });
        }
        Ok(out)
    }
}

/// Documents whose scope is not among `scopes` (a visit or quote has its customer's scope,
/// which the relay files it under).
fn docs_outside(store: &Store, scopes: &[String]) -> Result<Vec<DocId>, StoreError> {
    let rows = store.query_json(
        "SELECT hex(d.id) AS id, COALESCE(c.scope, d.scope) AS scope
           FROM docs d LEFT JOIN docs c ON c.id = d.customer_id",
        &[],
    )?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let scope = r.get("scope")?.as_str()?.to_string();
            let id = hex::decode(r.get("id")?.as_str()?).ok()?;
            (!scopes.contains(&scope))
                .then(|| DocId::from_slice(&id))
                .flatten()
        })
        .collect())
}

/// Downloaded changes not applied yet, per document in order of first appearance, each as
/// the log entries that brought them.
#[derive(Default)]
struct WaitingChanges {
    docs: Vec<(DocId, Vec<Vec<Vec<u8>>>)>,
    index: HashMap<DocId, usize>,
}

impl WaitingChanges {
    fn add(&mut self, id: DocId, entry: Vec<Vec<u8>>) {
        let i = *self.index.entry(id).or_insert_with(|| {
            self.docs.push((id, Vec::new()));
            self.docs.len() - 1
        });
        self.docs[i].1.push(entry);
    }

    /// Applies the waiting changes of document `only`, or of every document. A document
    /// whose changes fail together is retried entry by entry, so that one undecodable entry
    /// costs only itself.
    fn apply(
        &mut self,
        tx: &mut StoreTx<'_>,
        only: Option<DocId>,
        stats: &mut SessionStats,
    ) -> Result<(), StoreError> {
        let picked: Vec<usize> = match only {
            Some(id) => self.index.get(&id).copied().into_iter().collect(),
            None => (0..self.docs.len()).collect(),
        };
        for i in picked {
            let (id, entries) = (self.docs[i].0, std::mem::take(&mut self.docs[i].1));
            if entries.is_empty() {
                continue;
            }
            let all: Vec<Vec<u8>> = entries.iter().flatten().cloned().collect();
            match tx.apply_changes(id, &all) {
                Ok(n) => stats.changes_received += n as u64,
                Err(e @ StoreError::Sqlite(_)) => return Err(e),
                Err(_) => {
                    for entry in &entries {
                        match tx.apply_changes(id, entry) {
                            Ok(n) => stats.changes_received += n as u64,
                            Err(e @ StoreError::Sqlite(_)) => return Err(e),
                            Err(e) => {
                                // Bytes the relay should never have sent: keep them out.
                                stats.items_failed += 1;
                                tracing::warn!(doc = %id, error = %e, "skipping an undecodable download item");
                                tx.record_skipped(id, &e.to_string())?;
                            }
                        }
                    }
                }
            }
        }
        if only.is_none() {
            self.docs.clear();
            self.index.clear();
        }
        Ok(())
    }
}

/// What to do with the relay's refusals of one upload batch, worked out before the
/// transaction that applies it.
///
/// A change the relay refused for good goes to the quarantine. Every later local change to the
/// same document depends on it (Automerge changes name their predecessors), so the relay could
/// only ever answer those with "dependency missing, retry": they are quarantined too, with a
/// reason naming the refused change, instead of being resent forever. Then the document is
/// rebuilt from the changes the relay can accept (everything but the quarantined ones), so
/// the replica shows what is actually in force and later edits to it sync again. The
/// quarantined changes keep their bytes and reasons and are never resent.
struct QuarantinePlan {
    /// Changes to move to the quarantine, in outbox order, with the reason.
    quarantine: Vec<(ChangeHash, String)>,
    /// Every quarantined change of the affected documents (old and new).
    excluded: HashSet<ChangeHash>,
    /// Documents to rebuild without the excluded changes, and whether each is marked to leave.
    rebuild: Vec<(DocId, bool)>,
}

impl QuarantinePlan {
    fn new(
        store: &mut Store,
        accepted: &[Hash],
        rejected: &[super::messages::Rejection],
    ) -> Result<Self, StoreError> {
        let mut plan = Self {
            quarantine: Vec::new(),
            excluded: HashSet::new(),
            rebuild: Vec::new(),
        };
        if rejected.is_empty() && accepted.is_empty() {
            return Ok(plan);
        }
        let accepted: HashSet<ChangeHash> = accepted.iter().map(|h| ChangeHash(*h)).collect();
        // Documents whose last waiting change this answer settles and that still hold
        // quarantined changes from an earlier answer: rebuilt if they do.
        let mut settled: Vec<(DocId, bool)> = Vec::new();
        let conn = store.reader();
        let doc_of = |h: &[u8; 32]| -> Result<Option<DocId>, StoreError> {
            let id: Option<Vec<u8>> = conn
                .prepare_cached("SELECT doc_id FROM outbox WHERE hash = ?1")?
                .query_row([&h[..]], |r| r.get(0))
                .optional()?;
            Ok(id.and_then(|b| DocId::from_slice(&b)))
        };
        // Documents the relay told this device to give up (they left its scopes): the relay
        // answers changes to them as to a document it does not have, so a refusal "to try
        // again" can never succeed. They are quarantined with the reason instead of waiting.
        let leaving = |id: DocId| -> Result<bool, StoreError> {
            let flag: Option<i64> = conn
                .prepare_cached("SELECT evict_pending FROM docs WHERE id = ?1")?
                .query_row([id.as_bytes()], |r| r.get(0))
                .optional()?;
            Ok(flag == Some(1))
        };
        let mut docs: Vec<DocId> = Vec::new();
        for r in rejected {
            let doc = doc_of(&r.hash)?;
            if let Some(id) = doc
                && !docs.contains(&id)
            {
                docs.push(id);
            }
            let left = r.retry && doc.map(leaving).transpose()?.unwrap_or(false);
            if !r.retry || left {
                plan.excluded.insert(ChangeHash(r.hash));
                plan.quarantine.push((
                    ChangeHash(r.hash),
                    if left {
                        "the document moved out of this device's scopes; the relay no longer \
                         accepts changes to it"
                            .to_string()
                    } else {
                        r.reason.clone()
                    },
                ));
            }
        }
        for h in &accepted {
            if let Some(id) = doc_of(&h.0)?
                && !docs.contains(&id)
            {
                docs.push(id);
            }
        }
        let mut quarantined_docs: HashSet<DocId> = plan
            .quarantine
            .iter()
            .filter_map(|(h, _)| doc_of(&h.0).ok().flatten())
            .collect();
        for id in docs {
            let mut st = conn.prepare_cached("SELECT hash FROM quarantine WHERE doc_id = ?1")?;
            let old: Vec<Vec<u8>> = st
                .query_map([id.as_bytes()], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let quarantined_before = !old.is_empty();
            plan.excluded.extend(
                old.iter()
                    .filter_map(|b| ChangeHash::try_from(b.as_slice()).ok()),
            );
            if plan.excluded.is_empty() {
                continue;
            }
            // Outbox order is causal order for local changes: one pass finds every
            // transitive dependent.
            let mut st = conn
                .prepare_cached("SELECT hash, bytes FROM outbox WHERE doc_id = ?1 ORDER BY seq")?;
            let rows: Vec<(Vec<u8>, Vec<u8>)> = st
                .query_map([id.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut remaining = 0usize;
            for (h, bytes) in rows {
                let Ok(hash) = ChangeHash::try_from(h.as_slice()) else {
                    continue;
                };
                if plan.excluded.contains(&hash) || accepted.contains(&hash) {
                    continue;
                }
                let dep = decode_change(&bytes)
                    .ok()
                    .and_then(|c| c.deps().iter().find(|d| plan.excluded.contains(d)).copied());
                match dep {
                    Some(dep) => {
                        plan.excluded.insert(hash);
                        plan.quarantine.push((
                            hash,
                            format!(
                                "depends on change {} that the relay refused",
                                &hex::encode(dep.0)[..12]
                            ),
                        ));
                        quarantined_docs.insert(id);
                    }
                    None => remaining += 1,
                }
            }
            let leaving: Option<i64> = conn
                .prepare_cached("SELECT evict_pending FROM docs WHERE id = ?1")?
                .query_row([id.as_bytes()], |r| r.get(0))
                .optional()?;
            // With other local changes still waiting the document cannot be replaced without
            // losing them; it is rebuilt by the answer that settles the last of them (the
            // quarantine keeps growing only by dependents meanwhile). A document marked to
            // leave is rebuilt too — it may yet come back — and stays marked.
            if let Some(leaving) = leaving
                && remaining == 0
            {
                if quarantined_docs.contains(&id) {
                    plan.rebuild.push((id, leaving != 0));
                } else if quarantined_before {
                    settled.push((id, leaving != 0));
                }
            }
        }
        for (id, leaving) in settled {
            let mut doc = store.automerge(id)?;
            if plan
                .excluded
                .iter()
                .any(|h| doc.get_change_by_hash(h).is_some())
            {
                plan.rebuild.push((id, leaving));
            }
        }
        Ok(plan)
    }
}

/// Replaces a document by the one built from its changes minus `excluded` and everything that
/// depends on them (removing it when nothing is left). Its outbox must be empty. Leaves the
/// document as it is when the remainder would not be a readable document.
fn rebuild_without(
    tx: &mut StoreTx<'_>,
    id: DocId,
    excluded: &HashSet<ChangeHash>,
    leaving: bool,
) -> Result<(), StoreError> {
    if tx.has_pending(id)? {
        // A local edit committed meanwhile (another process on the same replica).
        return Ok(());
    }
    let changes = tx.automerge(id)?.get_changes(&[]);
    let mut dropped: HashSet<ChangeHash> = excluded.clone();
    let mut kept = Vec::new();
    for c in changes {
        if dropped.contains(&c.hash()) || c.deps().iter().any(|d| dropped.contains(d)) {
            dropped.insert(c.hash());
        } else {
            kept.push(c);
        }
    }
    if kept.is_empty() {
        tx.evict(id)?;
        tracing::info!(doc = %id, "removed a document whose creation the relay refused");
        return Ok(());
    }
    let mut fresh = AutoCommit::new();
    let built = crate::store::guard("rebuilding a document", || fresh.apply_changes(kept));
    if !matches!(built, Ok(Ok(()))) || crate::model::read_header(&fresh).is_err() {
        tracing::warn!(doc = %id, "cannot rebuild a document without its refused changes; left as is");
        return Ok(());
    }
    let bytes = fresh.save();
    // The rebuilt document is what was here already: not news from the relay.
    let received = tx.received_at(id)?;
    if tx.evict(id)? {
        tx.apply_snapshot(id, &bytes)?;
        tx.set_received_at(id, received)?;
        if leaving {
            tx.mark_eviction(id)?;
        }
        tracing::info!(doc = %id, "rebuilt a document without the changes the relay refused");
    }
    Ok(())
}

/// What the client still holds that the relay has not accepted ([`Message::Outbox`]).
fn outbox_report(store: &Store) -> Result<Message, SessionError> {
    let o = store.outbox_summary()?;
    Ok(Message::Outbox {
        changes: o.changes,
        documents: o.documents,
        bytes: o.bytes,
        quarantined: o.quarantined,
    })
}

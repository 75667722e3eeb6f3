//! [`MemoryRelay`]: a relay's storage in memory, for examples, tests and fuzzing.
//!
//! It runs the relay's own upload rules ([`super::rules::append_batch`]: authority on the state
//! a change produces, scopes and scope moves with their grace period, dependencies, budgets,
//! quotas, idempotent re-sends) over tables kept in maps — the same tables the relay's
//! databases hold — and answers downloads, departures and repair from them as the databases
//! do. An upload is applied to a copy of the tables that replaces them only once the whole
//! upload is judged, as a database transaction commits. What it leaves out needs a database or
//! an operator: enrolment tokens, credentials (every granted device is admitted), the audit
//! trail's queries and restores. A real relay is `fieldsync-relay`, over SQLite or PostgreSQL.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use automerge::AutoCommit;
use uuid::Uuid;

use crate::attachment::BlobHash;

use super::download::Lane;
use super::messages::{Hash, UploadChange};
use super::relay::{Lack, LogEntry, Outcome, RelayStorage, SnapshotPage, StorageError};
use super::rules::{
    BatchDb, DocCache, DocMeta, DocRow, FiledDoc, KIND_CHANGES, KIND_LEAVE, KIND_REPLACE,
    KIND_SNAPSHOT, Quota, RulesError, Sender, UploadRules, Usage, append_batch, lack_of, log_entry,
    split_heads,
};
use super::validate::DeviceInfo;
use crate::env::{Env, SystemEnv};
use crate::ids::{ALL_SCOPES, DocId, Role};
use crate::store::load_snapshot;

/// Bytes counted per log entry on top of its payload, as the relay's stores count them.
const ENTRY_OVERHEAD: usize = 24;
/// Documents kept loaded between uploads.
const CACHE_DOCS: usize = 64;

/// One log entry as stored.
#[derive(Clone, Debug)]
struct LogRow {
    seq: i64,
    scope: String,
    doc: DocId,
    kind: i64,
    hash: Option<Hash>,
    bytes: Option<Vec<u8>>,
    moved_to: Option<String>,
}

/// One document as stored.
#[derive(Clone, Debug)]
struct DocEntry {
    kind: Option<i64>,
    scope: String,
    customer_id: Option<DocId>,
    snapshot: Vec<u8>,
    heads: Vec<u8>,
    updated_seq: i64,
    raw_bytes: usize,
}

/// One move of a document between scopes.
#[derive(Clone, Debug)]
struct Move {
    doc: DocId,
    from: String,
    seq: i64,
    at: i64,
}

/// The relay's tables.
#[derive(Clone, Debug, Default)]
struct Tables {
    log: Vec<LogRow>,
    docs: BTreeMap<DocId, DocEntry>,
    /// Stored changes: the document and log position of each.
    changes: HashMap<Hash, (DocId, i64)>,
    moves: Vec<Move>,
    departures_served: HashSet<(Uuid, DocId)>,
    usage: HashMap<(Uuid, i64), Usage>,
    /// Accepted changes: `(seq, device, doc)`.
    audit: Vec<(i64, Uuid, DocId)>,
    /// The attachments each document refers to and keeps.
    refs: HashMap<DocId, Vec<BlobHash>>,
}

/// A relay's storage in memory (see the module docs).
pub struct MemoryRelay {
    epoch: Uuid,
    tables: Tables,
    cache: DocCache,
    devices: BTreeMap<Uuid, DeviceInfo>,
    revoked: HashSet<Uuid>,
    open: Option<(Role, Vec<String>)>,
    move_grace: Duration,
    quota: Quota,
    env: Arc<dyn Env>,
}

impl std::fmt::Debug for MemoryRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRelay")
            .field("epoch", &self.epoch)
            .field("log", &self.tables.log.len())
            .field("docs", &self.tables.docs.len())
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

impl MemoryRelay {
    /// An empty relay of epoch `epoch` that admits every device it does not know as `role`
    /// over `scopes` (`"*"` for all), as open enrolment does.
    pub fn open(epoch: Uuid, role: Role, scopes: &[&str]) -> Self {
        Self {
            epoch,
            tables: Tables::default(),
            cache: DocCache::new(CACHE_DOCS),
            devices: BTreeMap::new(),
            revoked: HashSet::new(),
            open: Some((role, scopes.iter().map(|s| (*s).to_string()).collect())),
            move_grace: Duration::from_secs(7 * 86_400),
            quota: Quota::default(),
            env: Arc::new(SystemEnv),
        }
    }

    /// An empty relay of epoch `epoch` that admits only devices given a [`MemoryRelay::grant`].
    pub fn enrolled_only(epoch: Uuid) -> Self {
        Self {
            open: None,
            ..Self::open(epoch, Role::Rep, &[])
        }
    }

    /// The same relay with its rules judging at `env`'s time (a simulation's clock).
    pub fn with_env(mut self, env: Arc<dyn Env>) -> Self {
        self.env = env;
        self
    }

    /// The same relay with another grace period for changes to documents that moved out of
    /// their author's scopes (seven days by default).
    pub fn with_move_grace(mut self, grace: Duration) -> Self {
        self.move_grace = grace;
        self
    }

    /// The same relay with other per-device daily quotas.
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self
    }

    /// Admits a device with its role and scopes (replacing an earlier grant).
    pub fn grant(&mut self, device: DeviceInfo) {
        self.revoked.remove(&device.device_id);
        self.devices.insert(device.device_id, device);
    }

    /// Refuses a device from now on, on open sessions too.
    pub fn revoke(&mut self, device_id: Uuid) {
        self.devices.remove(&device_id);
        self.revoked.insert(device_id);
    }

    /// Forgets everything stored, as a relay restored from nothing would, under a new epoch:
    /// clients repair from what they hold. Devices stay admitted.
    pub fn reset(&mut self, epoch: Uuid) {
        self.epoch = epoch;
        self.tables = Tables::default();
        self.cache = DocCache::new(CACHE_DOCS);
    }

    /// How many documents the relay holds.
    pub fn doc_count(&self) -> usize {
        self.tables.docs.len()
    }

    /// How many entries the relay's log holds.
    pub fn log_len(&self) -> usize {
        self.tables.log.len()
    }

    /// Appends a log entry as a relay of another version might have stored it (tests of what
    /// older clients are served).
    #[cfg(test)]
    pub(crate) fn push_entry(&mut self, scope: &str, doc: DocId, entry: super::messages::Entry) {
        use super::messages::Entry;
        let (kind, bytes) = match entry {
            Entry::Changes(mut c) => (KIND_CHANGES, c.pop().map(|b| b.0)),
            Entry::Snapshot(b) => (KIND_SNAPSHOT, Some(b.0)),
            Entry::Leave => (KIND_LEAVE, None),
            Entry::Replace(b) => (KIND_REPLACE, Some(b.0)),
        };
        let seq = self.tables.log.last().map_or(1, |r| r.seq + 1);
        self.tables.log.push(LogRow {
            seq,
            scope: scope.to_string(),
            doc,
            kind,
            hash: None,
            bytes,
            moved_to: None,
        });
    }

    /// The relay's copy of a document and the scope it is filed under.
    pub fn document(&self, id: DocId) -> Option<(AutoCommit, String)> {
        let d = self.tables.docs.get(&id)?;
        Some((load_snapshot(&d.snapshot).ok()?, d.scope.clone()))
    }
}

/// The tables of one upload's transaction, through [`BatchDb`].
struct MemoryTx<'a> {
    t: RefCell<Tables>,
    devices: &'a BTreeMap<Uuid, DeviceInfo>,
    revoked: &'a HashSet<Uuid>,
}

fn hash_of(bytes: &[u8]) -> Result<Hash, RulesError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| RulesError::Corrupt("a hash of another size".into()))
}

impl BatchDb for MemoryTx<'_> {
    type Error = StorageError;

    fn sender(&self, id: Uuid) -> Result<Option<Sender>, StorageError> {
        if self.revoked.contains(&id) {
            return Ok(Some(Sender::Revoked));
        }
        Ok(self.devices.get(&id).cloned().map(Sender::Active))
    }

    fn doc_meta(&self, id: DocId) -> Result<Option<DocMeta>, StorageError> {
        Ok(self.t.borrow().docs.get(&id).map(|d| {
            (
                d.kind,
                d.scope.clone(),
                d.customer_id.map(|c| c.as_bytes().to_vec()),
                d.updated_seq,
            )
        }))
    }

    fn doc_snapshot(&self, id: DocId) -> Result<Vec<u8>, StorageError> {
        Ok(self
            .t
            .borrow()
            .docs
            .get(&id)
            .map(|d| d.snapshot.clone())
            .unwrap_or_default())
    }

    fn doc_bytes(&self, id: DocId) -> Result<usize, StorageError> {
        Ok(self.t.borrow().docs.get(&id).map_or(0, |d| d.raw_bytes))
    }

    fn upsert_doc(&self, row: &DocRow<'_>) -> Result<(), StorageError> {
        self.t.borrow_mut().docs.insert(
            row.doc_id,
            DocEntry {
                kind: row.kind,
                scope: row.scope.to_string(),
                customer_id: row.customer_id,
                snapshot: row.snapshot.to_vec(),
                heads: row.heads.to_vec(),
                updated_seq: row.updated_seq,
                raw_bytes: row.raw_bytes,
            },
        );
        Ok(())
    }

    fn insert_log(
        &self,
        scope: &str,
        doc: DocId,
        kind: i64,
        hash: Option<&[u8]>,
        bytes: Option<&[u8]>,
        _device: Uuid,
        _at: i64,
    ) -> Result<i64, StorageError> {
        let mut t = self.t.borrow_mut();
        let seq = t.log.last().map_or(1, |r| r.seq + 1);
        t.log.push(LogRow {
            seq,
            scope: scope.to_string(),
            doc,
            kind,
            hash: hash.map(hash_of).transpose()?,
            bytes: bytes.map(<[u8]>::to_vec),
            moved_to: None,
        });
        Ok(seq)
    }

    fn set_moved_to(&self, seq: i64, to: &str) -> Result<(), StorageError> {
        if let Some(r) = self.t.borrow_mut().log.iter_mut().find(|r| r.seq == seq) {
            r.moved_to = Some(to.to_string());
        }
        Ok(())
    }

    fn insert_move(
        &self,
        doc: DocId,
        from: &str,
        _to: &str,
        seq: i64,
        at: i64,
    ) -> Result<(), StorageError> {
        self.t.borrow_mut().moves.push(Move {
            doc,
            from: from.to_string(),
            seq,
            at,
        });
        Ok(())
    }

    fn moves_since(&self, doc: DocId, since: i64) -> Result<Vec<(String, i64)>, StorageError> {
        let t = self.t.borrow();
        let mut out: Vec<(String, i64)> = t
            .moves
            .iter()
            .filter(|m| m.doc == doc && m.at > since)
            .map(|m| (m.from.clone(), m.seq))
            .collect();
        out.sort_by_key(|(_, seq)| std::cmp::Reverse(*seq));
        Ok(out)
    }

    fn customer_docs(&self, customer: DocId) -> Result<Vec<FiledDoc>, StorageError> {
        Ok(self
            .t
            .borrow()
            .docs
            .iter()
            .filter(|(id, d)| **id == customer || d.customer_id == Some(customer))
            .map(|(id, d)| (*id, d.scope.clone(), d.snapshot.clone()))
            .collect())
    }

    fn refile_doc(&self, doc: DocId, scope: &str, seq: i64) -> Result<(), StorageError> {
        if let Some(d) = self.t.borrow_mut().docs.get_mut(&doc) {
            d.scope = scope.to_string();
            d.updated_seq = seq;
        }
        Ok(())
    }

    fn stored_change(&self, hash: &[u8]) -> Result<Option<(DocId, i64)>, StorageError> {
        Ok(self.t.borrow().changes.get(&hash_of(hash)?).copied())
    }

    fn insert_change(&self, hash: &[u8], doc: DocId, seq: i64) -> Result<(), StorageError> {
        self.t
            .borrow_mut()
            .changes
            .entry(hash_of(hash)?)
            .or_insert((doc, seq));
        Ok(())
    }

    fn forget_history(&self, doc: DocId, seq: i64) -> Result<(), StorageError> {
        let mut t = self.t.borrow_mut();
        t.log.retain(|r| {
            !(r.doc == doc
                && r.seq < seq
                && matches!(r.kind, KIND_CHANGES | KIND_SNAPSHOT | KIND_REPLACE))
        });
        t.changes.retain(|_, (d, _)| *d != doc);
        Ok(())
    }

    fn insert_audit(
        &self,
        seq: i64,
        device: Uuid,
        doc: DocId,
        _at: i64,
    ) -> Result<(), StorageError> {
        self.t.borrow_mut().audit.push((seq, device, doc));
        Ok(())
    }

    fn vouched(&self, _hash: &[u8]) -> Result<Option<String>, StorageError> {
        // Nothing is restored from a backup here: no change is vouched for.
        Ok(None)
    }

    fn departure_served(&self, device: Uuid, doc: DocId) -> Result<bool, StorageError> {
        Ok(self.t.borrow().departures_served.contains(&(device, doc)))
    }

    fn usage(&self, device: Uuid, day: i64) -> Result<Usage, StorageError> {
        Ok(self
            .t
            .borrow()
            .usage
            .get(&(device, day))
            .copied()
            .unwrap_or_default())
    }

    fn add_usage(&self, device: Uuid, day: i64, add: Usage) -> Result<(), StorageError> {
        let mut t = self.t.borrow_mut();
        let u = t.usage.entry((device, day)).or_default();
        u.new_documents += add.new_documents;
        u.bytes = u.bytes.saturating_add(add.bytes);
        Ok(())
    }

    fn set_attachment_refs(&self, doc: DocId, hashes: &[BlobHash]) -> Result<(), StorageError> {
        let mut t = self.t.borrow_mut();
        if hashes.is_empty() {
            t.refs.remove(&doc);
        } else {
            t.refs.insert(doc, hashes.to_vec());
        }
        Ok(())
    }
}

impl RelayStorage for MemoryRelay {
    fn epoch(&mut self) -> Result<Uuid, StorageError> {
        Ok(self.epoch)
    }

    fn authenticate(
        &mut self,
        device_id: Uuid,
        _credential: Option<&str>,
    ) -> Result<Option<DeviceInfo>, StorageError> {
        if self.revoked.contains(&device_id) {
            return Ok(None);
        }
        if let Some(d) = self.devices.get(&device_id) {
            return Ok(Some(d.clone()));
        }
        let Some((role, scopes)) = &self.open else {
            return Ok(None);
        };
        let d = DeviceInfo {
            device_id,
            name: format!("device {device_id}"),
            role: *role,
            scopes: scopes.clone(),
        };
        self.devices.insert(device_id, d.clone());
        Ok(Some(d))
    }

    fn append(
        &mut self,
        device: &DeviceInfo,
        changes: &[UploadChange],
        relayed: bool,
    ) -> Result<Vec<Outcome>, StorageError> {
        let tx = MemoryTx {
            t: RefCell::new(self.tables.clone()),
            devices: &self.devices,
            revoked: &self.revoked,
        };
        let rules = UploadRules {
            now: self.env.now_millis(),
            move_grace: self.move_grace,
            quota: self.quota,
        };
        // A failed upload leaves the tables as they were, and drops the documents it loaded
        // (they may hold its changes).
        let mut done = match append_batch(&tx, &mut self.cache, &rules, device, changes, relayed) {
            Ok(done) => done,
            Err(e) => {
                self.cache = DocCache::new(CACHE_DOCS);
                return Err(e);
            }
        };
        self.tables = tx.t.into_inner();
        done.cache_into(&mut self.cache);
        Ok(done.outcomes)
    }

    fn high_seq(&mut self) -> Result<u64, StorageError> {
        Ok(self
            .tables
            .log
            .last()
            .map_or(0, |r| u64::try_from(r.seq).unwrap_or(0)))
    }

    fn read_log(
        &mut self,
        scope: &str,
        after: u64,
        max_bytes: usize,
        lane: Lane<'_>,
    ) -> Result<(Vec<LogEntry>, bool), StorageError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let t = &self.tables;
        let customer = |doc: &DocId| t.docs.get(doc).and_then(|d| d.customer_id);
        // Across all scopes only changes and replacements: a move's snapshot and `Leave`
        // concern scopes, and every document is seen where it is anyway.
        let rows = t.log.iter().filter(|r| {
            r.seq > after
                && if scope == ALL_SCOPES {
                    matches!(r.kind, KIND_CHANGES | KIND_REPLACE)
                } else {
                    r.scope == scope
                }
                && lane.admits(r.doc, customer(&r.doc), u64::try_from(r.seq).unwrap_or(0))
        });
        let mut out = Vec::new();
        let mut used = 0usize;
        for r in rows {
            let size = r.bytes.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD;
            if !out.is_empty() && used + size > max_bytes {
                return Ok((out, true));
            }
            used += size;
            // A `Leave` names where the document is filed now: a reader that sees that scope
            // keeps it, even if it moved on (or back) since the entry.
            let moved_to = if r.kind == KIND_LEAVE && scope != ALL_SCOPES {
                t.docs
                    .get(&r.doc)
                    .map(|d| d.scope.clone())
                    .or_else(|| r.moved_to.clone())
            } else {
                r.moved_to.clone()
            };
            out.push(log_entry(
                r.seq,
                r.doc,
                r.kind,
                r.bytes.clone(),
                r.hash.as_ref().map(|h| &h[..]),
                moved_to,
            )?);
        }
        Ok((out, false))
    }

    fn read_snapshots(
        &mut self,
        scope: &str,
        after: Option<DocId>,
        max_bytes: usize,
        lane: Lane<'_>,
    ) -> Result<SnapshotPage, StorageError> {
        let mut out = Vec::new();
        let mut used = 0;
        let mut rows = self
            .tables
            .docs
            .iter()
            .filter(|(id, d)| {
                Some(**id) > after
                    && (scope == ALL_SCOPES || d.scope == scope)
                    && lane.admits(**id, d.customer_id, 0)
            })
            .peekable();
        while let Some((id, d)) = rows.next() {
            used += d.snapshot.len();
            out.push((*id, d.snapshot.clone()));
            if used >= max_bytes {
                return Ok((out, rows.peek().is_some()));
            }
        }
        Ok((out, false))
    }

    fn waiting(
        &mut self,
        scope: &str,
        snapshots_after: Option<Option<DocId>>,
        log_after: u64,
    ) -> Result<(u64, u64), StorageError> {
        let t = &self.tables;
        let (mut documents, mut bytes) = (0u64, 0u64);
        if let Some(after) = snapshots_after {
            for (id, d) in &t.docs {
                if Some(*id) > after && (scope == ALL_SCOPES || d.scope == scope) {
                    documents += 1;
                    bytes += d.snapshot.len() as u64;
                }
            }
        }
        let after = i64::try_from(log_after).unwrap_or(i64::MAX);
        let mut docs = HashSet::new();
        for r in &t.log {
            let in_scope = if scope == ALL_SCOPES {
                matches!(r.kind, KIND_CHANGES | KIND_REPLACE)
            } else {
                r.scope == scope
            };
            if r.seq > after && in_scope {
                docs.insert(r.doc);
                bytes += r.bytes.as_ref().map_or(0, Vec::len) as u64;
            }
        }
        Ok((documents + docs.len() as u64, bytes))
    }

    fn heads_of(&mut self, ids: &[DocId]) -> Result<Vec<(DocId, Vec<Hash>)>, StorageError> {
        Ok(ids
            .iter()
            .filter_map(|id| {
                let d = self.tables.docs.get(id)?;
                Some((*id, split_heads(&d.heads)))
            })
            .collect())
    }

    fn missing(&mut self, docs: &[(DocId, Vec<Hash>)]) -> Result<Vec<Lack>, StorageError> {
        let t = &self.tables;
        docs.iter()
            .map(|(id, heads)| {
                let held = t.docs.get(id).map(|d| (d.heads.clone(), d.scope.clone()));
                lack_of(held, heads, |h| {
                    Ok::<_, StorageError>(t.changes.get(h).is_some_and(|(d, _)| d == id))
                })
            })
            .collect()
    }

    fn departures(&mut self, scope: &str, upto: u64) -> Result<Vec<(DocId, String)>, StorageError> {
        let upto = i64::try_from(upto).unwrap_or(i64::MAX);
        let t = &self.tables;
        let left: BTreeMap<DocId, String> = t
            .moves
            .iter()
            .filter(|m| m.from == scope && m.seq <= upto)
            .filter_map(|m| {
                let now = &t.docs.get(&m.doc)?.scope;
                (now != scope).then(|| (m.doc, now.clone()))
            })
            .collect();
        Ok(left.into_iter().collect())
    }

    fn record_departures(&mut self, device_id: Uuid, docs: &[DocId]) -> Result<(), StorageError> {
        self.tables
            .departures_served
            .extend(docs.iter().map(|d| (device_id, *d)));
        Ok(())
    }

    fn refresh_device(&mut self, device: &DeviceInfo) -> Result<Option<DeviceInfo>, StorageError> {
        if self.revoked.contains(&device.device_id) {
            return Ok(None);
        }
        Ok(Some(
            self.devices
                .get(&device.device_id)
                .cloned()
                .unwrap_or_else(|| device.clone()),
        ))
    }
}

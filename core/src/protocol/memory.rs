//! [`MemoryRelay`]: a relay's storage in memory, for examples, tests and fuzzing.
//!
//! It judges uploads with the same [`check_change`] as the real relay stores (authority on the
//! state a change produces, scopes, dependencies, budgets), keeps one log of accepted changes
//! filed under each document's scope, and answers downloads and repair from it. What it leaves
//! out is what needs a database: scope moves (a document stays where it was first filed),
//! enrolment tokens, audit and quotas. A real relay is `fieldsync-relay`, over SQLite or
//! PostgreSQL.

use crate::ids::ALL_SCOPES;
use std::collections::{BTreeMap, HashSet};

use automerge::AutoCommit;
use uuid::Uuid;

use super::messages::serde_bytes_vec::Bytes;
use super::messages::{Entry, Hash, Rejection, UploadChange};
use super::relay::{Lack, LogEntry, Outcome, RelayStorage, StorageError};
use super::validate::{DeviceInfo, check_change};
use crate::ids::{DocId, Role};
use crate::store::decode_change;

/// One log entry: sequence number, scope, document, entry.
pub(crate) type MemoryLogEntry = (u64, String, DocId, Entry);

/// A relay's storage in memory (see the module docs).
#[derive(Debug)]
pub struct MemoryRelay {
    pub(crate) epoch: Uuid,
    pub(crate) log: Vec<MemoryLogEntry>,
    pub(crate) docs: BTreeMap<DocId, (AutoCommit, String)>,
    pub(crate) hashes: HashSet<Hash>,
    pub(crate) devices: BTreeMap<Uuid, DeviceInfo>,
    revoked: HashSet<Uuid>,
    open: Option<(Role, Vec<String>)>,
}

impl MemoryRelay {
    /// An empty relay of epoch `epoch` that admits every device it does not know as `role`
    /// over `scopes` (`"*"` for all), as open enrolment does.
    pub fn open(epoch: Uuid, role: Role, scopes: &[&str]) -> Self {
        Self {
            epoch,
            log: Vec::new(),
            docs: BTreeMap::new(),
            hashes: HashSet::new(),
            devices: BTreeMap::new(),
            revoked: HashSet::new(),
            open: Some((role, scopes.iter().map(|s| (*s).to_string()).collect())),
        }
    }

    /// An empty relay of epoch `epoch` that admits only devices given a [`MemoryRelay::grant`].
    pub fn enrolled_only(epoch: Uuid) -> Self {
        Self {
            open: None,
            ..Self::open(epoch, Role::Rep, &[])
        }
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
        self.log.clear();
        self.docs.clear();
        self.hashes.clear();
    }

    /// How many documents the relay holds.
    pub fn doc_count(&self) -> usize {
        self.docs.len()
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
        _relayed: bool,
    ) -> Result<Vec<Outcome>, StorageError> {
        let mut out = Vec::with_capacity(changes.len());
        for c in changes {
            // Decoded once: the checks, the hash and the answer all use this change.
            let change = match decode_change(&c.bytes) {
                Ok(ch) => ch,
                Err(e) => {
                    out.push(Outcome::Refused(Rejection {
                        hash: [0; 32],
                        reason: e.to_string(),
                        retry: false,
                    }));
                    continue;
                }
            };
            let hash = change.hash().0;
            let (mut doc, stored) = match self.docs.get(&c.doc_id) {
                Some((d, s)) => (d.clone(), Some(s.clone())),
                None => (AutoCommit::new(), None),
            };
            let verdict = check_change(
                &mut doc,
                c.doc_id,
                &change,
                device,
                &|_| None,
                stored.as_deref(),
                &|_| None,
                &|_, _| false,
            );
            match verdict {
                Ok(accepted) => {
                    if self.hashes.insert(hash) {
                        let seq = self.log.len() as u64 + 1;
                        let scope = accepted.scope.clone().unwrap_or_default();
                        self.log.push((
                            seq,
                            scope.clone(),
                            c.doc_id,
                            Entry::Changes(vec![Bytes(c.bytes.clone())]),
                        ));
                        self.docs.insert(c.doc_id, (doc, scope));
                    }
                    out.push(Outcome::Stored(hash));
                }
                Err(refusal) => out.push(Outcome::Refused(Rejection {
                    hash,
                    reason: refusal.reason,
                    retry: refusal.retry,
                })),
            }
        }
        Ok(out)
    }

    fn high_seq(&mut self) -> Result<u64, StorageError> {
        Ok(self.log.len() as u64)
    }

    fn read_log(
        &mut self,
        scope: &str,
        after: u64,
        max_bytes: usize,
    ) -> Result<(Vec<LogEntry>, bool), StorageError> {
        let rows: Vec<&MemoryLogEntry> = self
            .log
            .iter()
            .filter(|(seq, s, _, _)| *seq > after && (scope == ALL_SCOPES || s == scope))
            .collect();
        let mut out = Vec::new();
        let mut used = 0;
        for (i, (seq, _, doc, entry)) in rows.iter().enumerate() {
            if !out.is_empty() && used >= max_bytes {
                return Ok((out, i < rows.len()));
            }
            used += match entry {
                Entry::Changes(c) => c.iter().map(|b| b.0.len()).sum(),
                Entry::Snapshot(b) | Entry::Replace(b) => b.0.len(),
                Entry::Leave => 0,
            } + 24;
            let hash = match entry {
                Entry::Changes(c) if c.len() == 1 => {
                    decode_change(&c[0].0).ok().map(|ch| ch.hash().0)
                }
                _ => None,
            };
            out.push(LogEntry {
                seq: *seq,
                doc_id: *doc,
                entry: entry.clone(),
                hash,
                moved_to: None,
            });
        }
        Ok((out, false))
    }

    fn read_snapshots(
        &mut self,
        scope: &str,
        after: Option<DocId>,
        max_bytes: usize,
    ) -> Result<(Vec<(DocId, Vec<u8>)>, bool), StorageError> {
        let mut out = Vec::new();
        let mut used = 0;
        let rows: Vec<_> = self
            .docs
            .iter_mut()
            .filter(|(id, (_, s))| Some(**id) > after && (scope == ALL_SCOPES || s == scope))
            .collect();
        let n = rows.len();
        for (i, (id, (doc, _))) in rows.into_iter().enumerate() {
            if !out.is_empty() && used >= max_bytes {
                return Ok((out, i < n));
            }
            let bytes = doc.save();
            used += bytes.len();
            out.push((*id, bytes));
        }
        Ok((out, false))
    }

    fn missing(&mut self, docs: &[(DocId, Vec<Hash>)]) -> Result<Vec<Lack>, StorageError> {
        Ok(docs
            .iter()
            .map(|(id, heads)| match self.docs.get_mut(id) {
                None => Lack::Document,
                Some((d, scope)) => {
                    if heads.iter().all(|h| self.hashes.contains(h)) {
                        Lack::Nothing {
                            scope: scope.clone(),
                        }
                    } else {
                        Lack::Changes {
                            scope: scope.clone(),
                            heads: d.get_heads().into_iter().map(|h| h.0).collect(),
                        }
                    }
                }
            })
            .collect())
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

//! The relay's upload rules, written once for every relay store: [`append_batch`] judges and
//! stores one upload inside the store's write transaction, through [`BatchDb`] (the statements
//! it needs, which each store implements: with SQL in `fieldsync-relay`'s SQLite and PostgreSQL
//! stores, with maps in [`super::memory::MemoryRelay`]). It loads each document once per
//! upload (from [`DocCache`] when no other writer changed it since), checks every change with
//! [`check_change`] against the document's budgets, the sender's daily [`quota`], scope moves
//! and their grace period, appends accepted changes to the log and saves each touched
//! document's snapshot once.
//!
//! - `db`: the [`BatchDb`] trait, the rows it speaks of and the log entry kinds;
//! - `cache`: [`DocCache`];
//! - `quota`: per-device daily quotas.

mod cache;
mod db;
pub mod quota;

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use automerge::{AutoCommit, ChangeHash};
use uuid::Uuid;

pub use cache::DocCache;
pub use db::{
    BatchDb, DocMeta, DocRow, FiledDoc, KIND_CHANGES, KIND_LEAVE, KIND_REPLACE, KIND_SNAPSHOT,
    RulesError, Sender,
};
pub use quota::{Quota, Usage, day_of};

use super::messages::serde_bytes_vec::Bytes;
use super::messages::{Entry, Hash, Rejection, UploadChange};
use super::relay::{Lack, LogEntry, Outcome};
use super::validate::{DeviceInfo, check_change};
use crate::attachment::BlobHash;
use crate::attachment::entry::live_hashes;
use crate::budget::MAX_DOC_BYTES;
use crate::ids::{DocId, DocKind, Millis, Role};
use crate::store::{decode_change, load_snapshot};

/// A document's heads as stored: 32 bytes each.
pub fn heads_bytes(doc: &mut AutoCommit) -> Vec<u8> {
    doc.get_heads().iter().flat_map(|h| h.0).collect()
}

/// A document's snapshot as the relay stores and sends it, with a panic inside automerge
/// turned into an error. Its columns are not DEFLATE-compressed: a download frame compresses
/// many snapshots together with zstd (sharing what documents of one kind have in common,
/// which compressing each column of each document on its own cannot), and the relay spends no
/// CPU compressing on every upload.
pub fn save(doc: &mut AutoCommit, id: DocId) -> Result<Vec<u8>, RulesError> {
    catch_unwind(AssertUnwindSafe(|| doc.save_nocompress()))
        .map_err(|_| RulesError::Corrupt(format!("automerge panicked saving document {id}")))
}

/// Heads as stored (32 bytes each, see [`heads_bytes`]) back as hashes.
pub fn split_heads(b: &[u8]) -> Vec<Hash> {
    b.chunks_exact(32)
        .filter_map(|c| <[u8; 32]>::try_from(c).ok())
        .collect()
}

/// What a relay lacks of one document a client named: `held` is its stored heads (32 bytes
/// each) and scope (none if the relay does not hold it), `has` says whether the relay stores a
/// change of it.
pub fn lack_of<E>(
    held: Option<(Vec<u8>, String)>,
    client_heads: &[Hash],
    mut has: impl FnMut(&Hash) -> Result<bool, E>,
) -> Result<Lack, E> {
    let Some((heads, scope)) = held else {
        return Ok(Lack::Document);
    };
    for h in client_heads {
        if !has(h)? {
            return Ok(Lack::Changes {
                scope,
                heads: split_heads(&heads),
            });
        }
    }
    Ok(Lack::Nothing { scope })
}

/// A stored log row as the protocol's entry (the same for every store): its kind and bytes
/// make the [`Entry`], a hash of another size than 32 bytes is none. A kind this build does not
/// know, or a kind that needs bytes without them, is damaged data.
pub fn log_entry(
    seq: i64,
    doc_id: DocId,
    kind: i64,
    bytes: Option<Vec<u8>>,
    hash: Option<&[u8]>,
    moved_to: Option<String>,
) -> Result<LogEntry, RulesError> {
    let entry = match (kind, bytes) {
        (KIND_CHANGES, Some(b)) => Entry::Changes(vec![Bytes(b)]),
        (KIND_SNAPSHOT, Some(b)) => Entry::Snapshot(Bytes(b)),
        (KIND_LEAVE, _) => Entry::Leave,
        (KIND_REPLACE, Some(b)) => Entry::Replace(Bytes(b)),
        (k, _) => {
            return Err(RulesError::Corrupt(format!("log entry {seq} of kind {k}")));
        }
    };
    Ok(LogEntry {
        seq: u64::try_from(seq).unwrap_or(0),
        doc_id,
        hash: hash.and_then(|h| <[u8; 32]>::try_from(h).ok()),
        moved_to,
        entry,
    })
}

fn doc_id(b: &[u8]) -> Result<DocId, RulesError> {
    DocId::from_slice(b)
        .ok_or_else(|| RulesError::Corrupt(format!("bad document id {}", hex::encode(b))))
}

/// One document being written during an upload batch.
struct Work {
    doc: AutoCommit,
    kind: Option<DocKind>,
    scope: Option<String>,
    customer_id: Option<DocId>,
    updated_seq: i64,
    /// Changes accepted into `doc` since it was last written to `docs` (none: clean).
    unsaved: Vec<Vec<u8>>,
    /// The raw size of every change the document holds now (those stored in `docs` plus those
    /// accepted since): an upper bound of what loading it costs, whatever its snapshot
    /// compresses to.
    raw_bytes: usize,
    /// The attachments the document referred to when it was last written.
    refs: Vec<BlobHash>,
}

/// State of one upload batch inside its transaction.
struct Batch<'a, D: BatchDb> {
    tx: &'a D,
    cache: &'a mut DocCache,
    work: HashMap<DocId, Work>,
    now: i64,
    high: Option<i64>,
    move_grace_ms: i64,
    quota: Quota,
    sender: Uuid,
    /// The sender's usage today before this batch (read at its first change) and what the
    /// batch added.
    used: Option<Usage>,
    added: Usage,
}

impl<D: BatchDb> Batch<'_, D> {
    /// Takes a document out of the working set, the cache or the database (a new, empty
    /// document if the relay has none); `Ok(Err(why))` when the stored one does not load.
    fn take(&mut self, id: DocId) -> Result<Result<Work, String>, D::Error> {
        if let Some(w) = self.work.remove(&id) {
            return Ok(Ok(w));
        }
        let Some((kind, scope, customer, updated_seq)) = self.tx.doc_meta(id)? else {
            return Ok(Ok(Work {
                doc: AutoCommit::new(),
                kind: None,
                scope: None,
                customer_id: None,
                updated_seq: 0,
                unsaved: Vec::new(),
                raw_bytes: 0,
                refs: Vec::new(),
            }));
        };
        // A cached copy is used only if no other writer (another relay node sharing the
        // database) stored the document since it was cached.
        let doc = match self.cache.take(&id, updated_seq) {
            Some(d) => d,
            None => match load_snapshot(&self.tx.doc_snapshot(id)?) {
                Ok(d) => d,
                Err(e) => return Ok(Err(e.to_string())),
            },
        };
        let refs = live_hashes(&doc);
        Ok(Ok(Work {
            doc,
            refs,
            kind: kind.and_then(DocKind::from_code),
            scope: Some(scope),
            customer_id: customer.as_deref().map(doc_id).transpose()?,
            updated_seq,
            unsaved: Vec::new(),
            raw_bytes: self.tx.doc_bytes(id)?,
        }))
    }

    /// Writes every changed document of the working set back to `docs`.
    fn flush(&mut self) -> Result<(), D::Error> {
        if self.added != Usage::default() {
            self.tx
                .add_usage(self.sender, day_of(self.now), self.added)?;
            if let Some(used) = self.used.as_mut() {
                used.new_documents += self.added.new_documents;
                used.bytes = used.bytes.saturating_add(self.added.bytes);
            }
            self.added = Usage::default();
        }
        for (id, w) in self.work.iter_mut().filter(|(_, w)| !w.unsaved.is_empty()) {
            let snapshot = save(&mut w.doc, *id)?;
            let heads = heads_bytes(&mut w.doc);
            self.tx.upsert_doc(&DocRow {
                doc_id: *id,
                kind: w.kind.map(DocKind::code),
                scope: w.scope.as_deref().unwrap_or_default(),
                customer_id: w.customer_id,
                snapshot: &snapshot,
                heads: &heads,
                updated_seq: w.updated_seq,
                raw_bytes: w.raw_bytes,
            })?;
            let refs = live_hashes(&w.doc);
            if refs != w.refs {
                self.tx.set_attachment_refs(*id, &refs)?;
                w.refs = refs;
            }
            w.unsaved.clear();
        }
        Ok(())
    }

    /// Rebuilds a working document that automerge left unusable: the stored snapshot (or an
    /// empty document) plus the changes this batch accepted into it since.
    fn rebuild(&self, id: DocId, w: &mut Work) -> Result<(), D::Error> {
        let corrupt = |e: String| RulesError::Corrupt(format!("rebuilding document {id}: {e}"));
        let mut doc = match self.tx.doc_meta(id)? {
            Some(_) => {
                load_snapshot(&self.tx.doc_snapshot(id)?).map_err(|e| corrupt(e.to_string()))?
            }
            None => AutoCommit::new(),
        };
        for bytes in &w.unsaved {
            let change = decode_change(bytes).map_err(|e| corrupt(e.to_string()))?;
            catch_unwind(AssertUnwindSafe(|| doc.apply_changes([change])))
                .map_err(|_| corrupt("automerge panicked".into()))?
                .map_err(|e| corrupt(e.to_string()))?;
        }
        w.doc = doc;
        Ok(())
    }

    fn log(
        &mut self,
        scope: &str,
        doc: DocId,
        kind: i64,
        hash: Option<&[u8]>,
        bytes: Option<&[u8]>,
        device: Uuid,
    ) -> Result<i64, D::Error> {
        let seq = self
            .tx
            .insert_log(scope, doc, kind, hash, bytes, device, self.now)?;
        self.high = Some(seq);
        Ok(seq)
    }

    /// A customer moved from `old` to `new`: re-files it and its visits and quotes, with a
    /// `Leave` entry in the scope each leaves and a snapshot entry in the new scope.
    fn refile(
        &mut self,
        customer: DocId,
        old: &str,
        new: &str,
        device: Uuid,
    ) -> Result<(), D::Error> {
        self.flush()?;
        let rows = self.tx.customer_docs(customer)?;
        for (id, scope, snapshot) in rows {
            let from = if id == customer {
                old.to_string()
            } else {
                scope
            };
            if from == new {
                continue;
            }
            let leave = self.log(&from, id, KIND_LEAVE, None, None, device)?;
            self.tx.set_moved_to(leave, new)?;
            self.tx.insert_move(id, &from, new, leave, self.now)?;
            let seq = self.log(new, id, KIND_SNAPSHOT, None, Some(&snapshot), device)?;
            self.tx.refile_doc(id, new, seq)?;
            if let Some(w) = self.work.get_mut(&id) {
                w.scope = Some(new.to_string());
                w.updated_seq = seq;
            }
        }
        tracing::info!(customer = %customer, from = old, to = new, "customer moved scope");
        Ok(())
    }

    /// A new document was accepted under the move grace period (a visit or quote written
    /// offline for a customer that has since moved out of the author's scopes). The author's
    /// replica holds it, but it was never filed in the author's scopes, so no `Leave` there
    /// would ever tell the replica to drop it: log one in the scope the customer left, as
    /// the move did for the customer's other documents, and record it as a move.
    fn leave_author(
        &mut self,
        device: &DeviceInfo,
        doc: DocId,
        customer: Option<DocId>,
        new: &str,
    ) -> Result<(), D::Error> {
        let Some(customer) = customer else {
            return Ok(());
        };
        let froms = self
            .tx
            .moves_since(customer, i64::MIN)?
            .into_iter()
            .map(|(from, _)| from);
        let Some(from) = froms.into_iter().find(|s| device.sees(s)) else {
            return Ok(());
        };
        let leave = self.log(&from, doc, KIND_LEAVE, None, None, device.device_id)?;
        self.tx.set_moved_to(leave, new)?;
        self.tx.insert_move(doc, &from, new, leave, self.now)?;
        Ok(())
    }

    /// Validates and stores one uploaded change.
    fn append_one(&mut self, device: &DeviceInfo, c: &UploadChange) -> Result<Outcome, D::Error> {
        let refuse = |hash: Hash, reason: String, retry: bool| {
            Outcome::Refused(Rejection {
                hash,
                reason,
                retry,
            })
        };
        let change = match decode_change(&c.bytes) {
            Ok(ch) => ch,
            Err(e) => return Ok(refuse([0; 32], e.to_string(), false)),
        };
        let hash = change.hash().0;
        // Re-sending is harmless: a stored change is acknowledged again without a new entry
        // — unless its document is outside the sender's scopes, which is answered as a
        // document the relay does not have (below).
        let stored = self.tx.stored_change(&hash)?;
        if let Some((d, _)) = stored {
            if d != c.doc_id {
                return Ok(refuse(
                    hash,
                    "change belongs to another document".into(),
                    false,
                ));
            }
            // The sender's own change: it knows it sent it, so saying "stored" tells it
            // nothing (and a re-sent change whose answer was lost must not be refused).
            let own = change
                .actor_id()
                .to_bytes()
                .starts_with(device.device_id.as_bytes());
            let visible = own
                || self
                    .tx
                    .doc_meta(d)?
                    .is_some_and(|(_, scope, _, _)| device.sees(&scope));
            if visible {
                return Ok(Outcome::Stored(hash));
            }
        }
        // A document the relay cannot load refuses only its own changes (they wait in the
        // device's outbox), never the rest of the upload.
        let mut work = match self.take(c.doc_id)? {
            Ok(w) => w,
            Err(why) => {
                tracing::error!(doc = %c.doc_id, reason = %why, "a stored document cannot be loaded; refusing changes to it");
                return Ok(refuse(
                    hash,
                    "the relay cannot load this document; the change waits until IT repairs it"
                        .into(),
                    true,
                ));
            }
        };
        let new_doc = work.scope.is_none();
        // The document's size budget, checked before the change is applied (only for a
        // document the sender sees: another one is answered as one the relay lacks).
        if work.scope.as_deref().is_none_or(|s| device.sees(s))
            && work.raw_bytes + c.bytes.len() > MAX_DOC_BYTES
        {
            let size = work.raw_bytes;
            self.work.insert(c.doc_id, work);
            // A document already over its budget (stored before the budget existed) is not
            // this change's doing: the change waits until IT trims the document.
            return Ok(if size > MAX_DOC_BYTES {
                refuse(
                    hash,
                    format!(
                        "over budget: the document holds about {size} bytes, over its budget of \
                         {MAX_DOC_BYTES}; the change waits until IT trims it"
                    ),
                    true,
                )
            } else {
                refuse(
                    hash,
                    format!(
                        "over budget: the document would grow past {MAX_DOC_BYTES} bytes (it holds about {size})"
                    ),
                    false,
                )
            });
        }
        // The sender's daily quota (it says nothing of the document, so it is checked for
        // every change, one accepted under a move's grace period included).
        {
            let used = match self.used {
                Some(u) => u,
                None => *self
                    .used
                    .insert(self.tx.usage(device.device_id, day_of(self.now))?),
            };
            let now_used = Usage {
                new_documents: used.new_documents + self.added.new_documents,
                bytes: used.bytes.saturating_add(self.added.bytes),
            };
            if let Err(reason) = self.quota.check(now_used, new_doc, c.bytes.len()) {
                self.work.insert(c.doc_id, work);
                return Ok(refuse(hash, reason, true));
            }
        }
        let failure: RefCell<Option<D::Error>> = RefCell::new(None);
        let result = {
            let tx = self.tx;
            let others = &self.work;
            let vouched = |hash: &ChangeHash| -> Option<Role> {
                match tx.vouched(&hash.0) {
                    // An unreadable role vouches for nothing.
                    Ok(role) => role.as_deref().and_then(Role::parse),
                    Err(e) => {
                        failure.borrow_mut().get_or_insert(e);
                        None
                    }
                }
            };
            let customer_scope = |cid: DocId| -> Option<String> {
                if let Some(w) = others.get(&cid) {
                    return w.scope.clone();
                }
                tx.doc_meta(cid)
                    .map(|m| m.map(|(_, scope, _, _)| scope))
                    .unwrap_or_else(|e| {
                        failure.borrow_mut().get_or_insert(e);
                        None
                    })
            };
            let since = self.now.saturating_sub(self.move_grace_ms);
            // The document left one of the sender's scopes within the grace period, the
            // sender has not been sent its departure yet, and the change's dependencies were
            // all stored before it left.
            let left_senders_scope = |id: DocId, deps: &[ChangeHash]| -> bool {
                let check = || -> Result<bool, D::Error> {
                    if tx.departure_served(device.device_id, id)? {
                        return Ok(false);
                    }
                    let moves = tx.moves_since(id, since)?;
                    let Some(moved_at) = moves
                        .iter()
                        .find(|(from, _)| device.sees(from))
                        .map(|(_, seq)| *seq)
                    else {
                        return Ok(false);
                    };
                    for d in deps {
                        let seq = tx.stored_change(&d.0)?.map(|(_, s)| s);
                        if seq.is_none_or(|s| s >= moved_at) {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                };
                check().unwrap_or_else(|e| {
                    failure.borrow_mut().get_or_insert(e);
                    false
                })
            };
            check_change(
                &mut work.doc,
                c.doc_id,
                &change,
                device,
                &vouched,
                work.scope.as_deref(),
                &customer_scope,
                &left_senders_scope,
            )
        };
        if let Some(e) = failure.into_inner() {
            return Err(e);
        }
        let accepted = match result {
            Ok(a) => a,
            Err(refusal) => {
                if refusal.doc_lost {
                    tracing::warn!(doc = %c.doc_id, reason = %refusal.reason, "automerge failed on an uploaded change; reloading the document");
                    self.rebuild(c.doc_id, &mut work)?;
                }
                self.work.insert(c.doc_id, work);
                if refusal.malformed {
                    tracing::warn!(doc = %c.doc_id, device = %device.device_id, reason = %refusal.reason, "malformed change; ending the upload");
                    return Ok(Outcome::Malformed(Rejection {
                        hash,
                        reason: refusal.reason,
                        retry: false,
                    }));
                }
                return Ok(refuse(hash, refusal.reason, refusal.retry));
            }
        };
        if stored.is_some() {
            // Stored before (and excused by a move's grace period): nothing new to log.
            self.work.insert(c.doc_id, work);
            return Ok(Outcome::Stored(hash));
        }
        if accepted.kind.is_some() {
            work.kind = accepted.kind;
        }
        if accepted.scope.is_some() {
            work.scope = accepted.scope.clone();
        }
        if accepted.customer_id.is_some() {
            work.customer_id = accepted.customer_id;
        }
        work.raw_bytes += c.bytes.len();
        self.added.add(new_doc, c.bytes.len());
        work.unsaved.push(c.bytes.clone());
        let scope = work.scope.clone().unwrap_or_default();
        self.work.insert(c.doc_id, work);
        if let Some(old) = &accepted.moved_from {
            self.refile(c.doc_id, old, &scope, device.device_id)?;
        }
        let seq = self.log(
            &scope,
            c.doc_id,
            KIND_CHANGES,
            Some(&hash),
            Some(&c.bytes),
            device.device_id,
        )?;
        self.tx.insert_change(&hash, c.doc_id, seq)?;
        if new_doc && !device.sees(&scope) {
            self.leave_author(device, c.doc_id, accepted.customer_id, &scope)?;
        }
        self.tx
            .insert_audit(seq, device.device_id, c.doc_id, self.now)?;
        if let Some(w) = self.work.get_mut(&c.doc_id) {
            w.updated_seq = seq;
        }
        if self.work.len() > self.cache.cap() {
            // Bound memory on huge batches (as many documents as the cache holds): write back
            // and drop; later changes reload from this transaction's view of `docs`.
            self.flush()?;
            self.work.clear();
        }
        Ok(Outcome::Stored(hash))
    }
}

/// What one upload did, once its transaction is to be committed.
#[derive(Debug)]
pub struct Appended {
    /// An outcome per change, in order.
    pub outcomes: Vec<Outcome>,
    /// The highest log position it assigned (none: it logged nothing).
    pub high: Option<i64>,
    /// The documents it loaded, to cache once the transaction commits.
    loaded: HashMap<DocId, Work>,
}

impl Appended {
    /// Caches the documents the upload loaded: after the commit, or before it when the next
    /// upload of the same transaction may need them, clearing the cache should the
    /// transaction roll back (a rolled-back upload must not leave its documents in the
    /// cache).
    pub fn cache_into(&mut self, cache: &mut DocCache) {
        for (id, w) in self.loaded.drain() {
            // Only documents the relay holds: a refused first change leaves an empty one.
            if w.scope.is_some() {
                cache.insert(id, w.doc, w.updated_seq);
            }
        }
    }
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work")
            .field("scope", &self.scope)
            .field("updated_seq", &self.updated_seq)
            .finish_non_exhaustive()
    }
}

/// The rules' settings: the time they judge at, the move grace period and the quotas.
#[derive(Clone, Copy, Debug)]
pub struct UploadRules {
    /// Now, in milliseconds of the relay's clock.
    pub now: Millis,
    /// How long after a document moved out of a device's scopes the relay still accepts that
    /// device's changes to it written before the move.
    pub move_grace: Duration,
    /// Per-device daily quotas.
    pub quota: Quota,
}

/// The backend-independent part of an upload: checks the sender's current grant and
/// validates and stores each change through `tx` (one transaction the caller commits).
pub fn append_batch<D: BatchDb>(
    tx: &D,
    cache: &mut DocCache,
    rules: &UploadRules,
    device: &DeviceInfo,
    changes: &[UploadChange],
    relayed: bool,
) -> Result<Appended, D::Error> {
    // The sender's grant is read again inside the transaction that stores the changes,
    // so a revocation or a narrower grant committed meanwhile applies to this write.
    let sender = tx.sender(device.device_id)?;
    let fresh;
    let device = match sender {
        Some(Sender::Revoked) => {
            // Not the changes' fault: they stay in the device's outbox (retry) and the
            // session is closed as unauthorised.
            let refused = changes
                .iter()
                .map(|c| {
                    Outcome::Refused(Rejection {
                        hash: hash_of(&c.bytes),
                        reason: "device revoked".into(),
                        retry: true,
                    })
                })
                .collect();
            return Ok(Appended {
                outcomes: refused,
                high: None,
                loaded: HashMap::new(),
            });
        }
        Some(Sender::Active(info)) => {
            fresh = info;
            &fresh
        }
        None => device,
    };
    let mut batch = Batch {
        tx,
        cache,
        work: HashMap::new(),
        now: rules.now,
        high: None,
        move_grace_ms: i64::try_from(rules.move_grace.as_millis()).unwrap_or(i64::MAX),
        quota: rules.quota,
        sender: device.device_id,
        used: None,
        added: Usage::default(),
    };
    if relayed {
        // A repair upload (after the relay's log restarted) is judged like any other.
        tracing::debug!(device = %device.device_id, changes = changes.len(), "repair upload");
    }
    let mut outcomes = Vec::with_capacity(changes.len());
    let mut rest = changes.iter();
    for c in rest.by_ref() {
        let outcome = batch.append_one(device, c)?;
        let malformed = matches!(outcome, Outcome::Malformed(_));
        outcomes.push(outcome);
        if malformed {
            break;
        }
    }
    // After a malformed change the upload is not examined further (each could cost a reload
    // of its document); an honest sender sends the rest again on its next connection.
    outcomes.extend(rest.map(|c| {
        Outcome::Refused(Rejection {
            hash: hash_of(&c.bytes),
            reason: "not examined: an earlier change of the upload does not fit its document"
                .into(),
            retry: true,
        })
    }));
    batch.flush()?;
    let Batch { work, high, .. } = batch;
    Ok(Appended {
        outcomes,
        high,
        loaded: work,
    })
}

/// The hash of an uploaded change, for a refusal that does not examine it (zero if it does not
/// decode).
fn hash_of(bytes: &[u8]) -> Hash {
    decode_change(bytes).map_or([0; 32], |ch| ch.hash().0)
}

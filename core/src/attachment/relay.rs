//! The relay's side of the attachment stream: who may upload and fetch which attachment, the
//! limits, and the verification of every piece before it is stored.
//!
//! [`BlobSession`] holds the rules for one connection's attachment stream; it does no I/O.
//! The driver (the relay's connection task) feeds it each message the client sent
//! ([`BlobSession::handle`]) and sends what it returns, and pulls the next download piece
//! whenever the stream can take one ([`BlobSession::next_piece`]). The storage is behind
//! [`BlobDb`], which each relay backend implements with its own SQL (and [`MemoryBlobs`] with
//! maps, for tests), so every backend runs the same rules:
//! - **Authorization.** A device reaches an attachment only through a document in its scopes
//!   that refers to it ([`BlobDb::referenced_in`]). One it cannot reach is answered exactly as
//!   one the relay does not have: its existence is not the device's to learn.
//! - **Limits**, checked before any byte is read: the size of one file, and how much one
//!   device's uploads may hold ([`BlobLimits`]).
//! - **Verification.** A piece is decoded against the attachment's hash
//!   ([`super::pieces::decode_piece`]) before it is stored; one that does not verify is not
//!   stored, and the client is told again where the upload stands. A client that keeps
//!   sending bad pieces has its upload refused.
//! - **Resumption.** The relay stores pieces in order and says how many it holds, durably,
//!   after each; an upload cut anywhere resumes from there, on any node.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::BlobHash;
use super::pieces::{PieceStream, decode_piece, encode_piece, outboard, piece_count};
use crate::ids::Millis;
use crate::protocol::DeviceInfo;
use crate::protocol::messages::Message;

/// What the relay allows one device to upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLimits {
    /// Largest attachment, in bytes.
    pub max_file_bytes: u64,
    /// Most bytes of attachments one device's uploads may hold on the relay.
    pub device_quota_bytes: u64,
}

impl Default for BlobLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 25 << 20,
            device_quota_bytes: 5 << 30,
        }
    }
}

/// Bad pieces one stream may send for one attachment before its upload is refused.
pub const MAX_BAD_PIECES: u32 = 8;

/// An incomplete upload untouched this long may be started over by another device under
/// another size (ms).
pub const STALE_UPLOAD: Millis = 3600 * 1000;

/// An attachment as the relay stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRow {
    /// Its size.
    pub size: u64,
    /// Pieces stored, from the first.
    pub stored: u32,
    /// Every piece is stored and verified (its outboard is stored too).
    pub complete: bool,
    /// The device whose upload started it.
    pub device: Uuid,
}

/// The statements the attachment rules need from a relay backend. Each call is its own
/// transaction.
pub trait BlobDb {
    /// The backend's error.
    type Error: std::fmt::Display;
    /// Whether some document filed under one of `device`'s scopes refers to `hash` (and keeps
    /// it: removed entries do not count).
    fn referenced_in(&self, device: &DeviceInfo, hash: BlobHash) -> Result<bool, Self::Error>;
    /// The stored attachment `hash`, complete or not.
    fn blob(&self, hash: BlobHash) -> Result<Option<BlobRow>, Self::Error>;
    /// Starts an upload, or returns the one under way (touching it, so the collector leaves
    /// it alone). An incomplete upload under another size is started over when `device` began
    /// it, when it holds no verified piece yet, or when it was last touched before
    /// `stale_before`: a device naming a wrong size must not undo another's progress, nor hold
    /// an attachment hostage by naming sizes it never sends pieces for. Otherwise the row
    /// returned keeps its own size.
    fn start_upload(
        &self,
        hash: BlobHash,
        size: u64,
        device: Uuid,
        now: Millis,
        stale_before: Millis,
    ) -> Result<BlobRow, Self::Error>;
    /// Stores piece `index`, verified under `size`, if the upload is under that size and the
    /// piece is the next one it lacks; returns how many pieces are stored afterwards, or
    /// `None` when there is no upload under that size any more (collected, or restarted).
    /// `outboard` is given with the last piece: the upload is then complete.
    #[allow(clippy::too_many_arguments)]
    fn store_piece(
        &self,
        hash: BlobHash,
        size: u64,
        index: u32,
        data: &[u8],
        outboard: Option<&[u8]>,
        now: Millis,
    ) -> Result<Option<u32>, Self::Error>;
    /// The bytes of a stored piece.
    fn piece(&self, hash: BlobHash, index: u32) -> Result<Option<Vec<u8>>, Self::Error>;
    /// A complete attachment's outboard.
    fn outboard(&self, hash: BlobHash) -> Result<Option<Vec<u8>>, Self::Error>;
    /// The bytes of the attachments `device`'s uploads started (complete or not).
    fn device_bytes(&self, device: Uuid) -> Result<u64, Self::Error>;
    /// Records a completed upload in the audit trail.
    fn audit_upload(
        &self,
        hash: BlobHash,
        size: u64,
        device: Uuid,
        now: Millis,
    ) -> Result<(), Self::Error>;
    /// Marks a complete attachment as wanted at `now` (offered again by an uploader): the
    /// collector leaves attachments touched within its grace period alone.
    fn touch(&self, hash: BlobHash, now: Millis) -> Result<(), Self::Error>;
    /// Whether any document (in any scope) refers to `hash` and keeps it.
    fn referenced(&self, hash: BlobHash) -> Result<bool, Self::Error>;
    /// Up to `limit` stored attachments last touched before `before`, after `after` in hash
    /// order: `(hash, size, complete)`.
    fn untouched_since(
        &self,
        before: Millis,
        after: Option<BlobHash>,
        limit: usize,
    ) -> Result<Vec<(BlobHash, u64, bool)>, Self::Error>;
    /// Deletes attachment `hash` and its pieces if it was still last touched before `before`
    /// (an uploader offering it since keeps it); returns whether it did.
    fn delete_untouched(&self, hash: BlobHash, before: Millis) -> Result<bool, Self::Error>;
}

/// How long the collector leaves attachments alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Collect {
    /// An upload not completed and not continued for this long is abandoned.
    pub abandoned_after: Millis,
    /// A complete attachment no document refers to, not offered for this long, goes.
    pub unreferenced_after: Millis,
}

impl Default for Collect {
    fn default() -> Self {
        const DAY: Millis = 24 * 3600 * 1000;
        Self {
            abandoned_after: 7 * DAY,
            unreferenced_after: DAY,
        }
    }
}

/// What a collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Collected {
    /// Uploads abandoned before they completed.
    pub abandoned: u64,
    /// Complete attachments no document refers to any more.
    pub unreferenced: u64,
    /// Bytes freed (the attachments' sizes; an abandoned upload counts whole).
    pub bytes: u64,
}

/// Removes from the relay the attachments nothing needs: uploads abandoned part way and
/// attachments no document refers to, each after its grace period ([`Collect`]). An
/// attachment offered again during the collection is kept ([`BlobDb::delete_untouched`]).
pub fn collect_garbage<D: BlobDb>(
    db: &D,
    now: Millis,
    rules: Collect,
) -> Result<Collected, D::Error> {
    let mut out = Collected::default();
    let soonest = rules.abandoned_after.min(rules.unreferenced_after);
    let mut after = None;
    loop {
        let page = db.untouched_since(now - soonest, after, 500)?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.0);
        for (hash, size, complete) in page {
            let (grace, counts) = if complete {
                (rules.unreferenced_after, &mut out.unreferenced)
            } else {
                (rules.abandoned_after, &mut out.abandoned)
            };
            if complete && db.referenced(hash)? {
                continue;
            }
            if db.delete_untouched(hash, now - grace)? {
                *counts += 1;
                out.bytes += size;
            }
        }
    }
    Ok(out)
}

/// An upload under way on this stream.
#[derive(Debug)]
struct Upload {
    size: u64,
    count: u32,
}

/// A download under way on this stream.
#[derive(Debug)]
struct Download {
    hash: BlobHash,
    size: u64,
    next: u32,
    count: u32,
    /// Read when the download's turn comes.
    outboard: Option<Vec<u8>>,
}

/// The answer to a request the device may not make, or whose attachment the relay lacks.
fn refused(hash: BlobHash, reason: impl Into<String>, retry: bool) -> Message {
    Message::BlobRefused {
        hash: hash.0,
        reason: reason.into(),
        retry,
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
}

/// What one stream has done, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobStats {
    /// Uploads completed.
    pub uploads: u64,
    /// Pieces refused because they did not verify.
    pub bad_pieces: u64,
}

/// What one connection's attachment stream does on the relay (see the module doc).
#[derive(Debug)]
pub struct BlobSession {
    device: DeviceInfo,
    limits: BlobLimits,
    uploads: HashMap<BlobHash, Upload>,
    downloads: VecDeque<Download>,
    stats: BlobStats,
    /// Bad pieces per attachment on this stream (kept after a refusal).
    bad: HashMap<BlobHash, u32>,
    /// The device is being wiped after its uploads: it may send, never receive.
    uploads_only: bool,
}

/// Most downloads one stream may have queued (each holds a few numbers; its outboard is read
/// when its turn comes).
pub const MAX_QUEUED_DOWNLOADS: usize = 256;
/// Most uploads one stream may have open.
pub const MAX_OPEN_UPLOADS: usize = 1024;

impl BlobSession {
    /// A session for an authenticated device.
    pub fn new(device: DeviceInfo, limits: BlobLimits) -> Self {
        Self {
            device,
            limits,
            uploads: HashMap::new(),
            downloads: VecDeque::new(),
            stats: BlobStats::default(),
            bad: HashMap::new(),
            uploads_only: false,
        }
    }

    /// A session for a device told to wipe once its work is uploaded: its uploads are served,
    /// every download is refused.
    pub fn uploads_only(mut self) -> Self {
        self.uploads_only = true;
        self
    }

    /// What this stream has done so far.
    pub fn stats(&self) -> BlobStats {
        self.stats
    }

    /// The device this stream serves.
    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }

    /// Whether a download piece is waiting to be sent.
    pub fn sending(&self) -> bool {
        !self.downloads.is_empty()
    }

    /// Handles one message from the client; returns the messages to send. An `Err` is a
    /// storage failure; a message that does not belong on this stream is `Ok(Err(reason))`,
    /// after which the driver closes the stream.
    pub fn handle<D: BlobDb>(
        &mut self,
        db: &D,
        msg: Message,
        now: Millis,
    ) -> Result<Result<Vec<Message>, String>, D::Error> {
        Ok(Ok(match msg {
            Message::BlobPut { hash, size } => vec![self.put(db, BlobHash(hash), size, now)?],
            Message::BlobPiece {
                hash,
                index,
                encoded,
            } => vec![self.piece(db, BlobHash(hash), index, &encoded, now)?],
            Message::BlobGet { hash, .. } if self.uploads_only => vec![Message::BlobRefused {
                hash,
                reason: "this laptop is being wiped at IT's request".into(),
                retry: false,
            }],
            Message::BlobGet { hash, from } => vec![self.get(db, BlobHash(hash), from)?],
            Message::BlobCancel { hash } => {
                self.downloads.retain(|d| d.hash.0 != hash);
                Vec::new()
            }
            other => {
                return Ok(Err(format!(
                    "unexpected {} on the attachment stream",
                    other.name()
                )));
            }
        }))
    }

    fn put<D: BlobDb>(
        &mut self,
        db: &D,
        hash: BlobHash,
        size: u64,
        now: Millis,
    ) -> Result<Message, D::Error> {
        if size == 0 || size > self.limits.max_file_bytes {
            return Ok(refused(
                hash,
                format!(
                    "attachment of {} is over this relay's limit of {} per file",
                    mib(size),
                    mib(self.limits.max_file_bytes)
                ),
                false,
            ));
        }
        if !db.referenced_in(&self.device, hash)? {
            return Ok(refused(
                hash,
                "no document in this device's scopes refers to this attachment (yet)",
                true,
            ));
        }
        let count = piece_count(size);
        let existing = db.blob(hash)?;
        if let Some(row) = existing.as_ref()
            && row.complete
        {
            self.uploads.remove(&hash);
            db.touch(hash, now)?;
            let (stored, count) = (piece_count(row.size), piece_count(row.size));
            return Ok(Message::BlobStored {
                hash: hash.0,
                stored,
                count,
            });
        }
        if !self.uploads.contains_key(&hash) && self.uploads.len() >= MAX_OPEN_UPLOADS {
            return Ok(refused(
                hash,
                "too many uploads open on one connection",
                true,
            ));
        }
        let held = db.device_bytes(self.device.device_id)?;
        let mine = existing
            .filter(|r| r.device == self.device.device_id)
            .map_or(0, |r| r.size);
        if held.saturating_sub(mine).saturating_add(size) > self.limits.device_quota_bytes {
            return Ok(refused(
                hash,
                format!(
                    "this device's attachments hold {} on the relay; its quota is {}",
                    mib(held),
                    mib(self.limits.device_quota_bytes)
                ),
                true,
            ));
        }
        if self.bad.get(&hash).is_some_and(|n| *n >= MAX_BAD_PIECES) {
            return Ok(refused(
                hash,
                format!(
                    "{MAX_BAD_PIECES} pieces did not match the attachment's hash; the upload is refused"
                ),
                false,
            ));
        }
        let row = db.start_upload(hash, size, self.device.device_id, now, now - STALE_UPLOAD)?;
        if row.size != size {
            return Ok(refused(
                hash,
                "another device is uploading this attachment; trying again later",
                true,
            ));
        }
        self.uploads.insert(hash, Upload { size, count });
        Ok(Message::BlobStored {
            hash: hash.0,
            stored: row.stored,
            count,
        })
    }

    fn piece<D: BlobDb>(
        &mut self,
        db: &D,
        hash: BlobHash,
        index: u32,
        encoded: &[u8],
        now: Millis,
    ) -> Result<Message, D::Error> {
        let Some(up) = self.uploads.get(&hash) else {
            return Ok(refused(
                hash,
                "a piece of an upload not started (BlobPut first)",
                true,
            ));
        };
        let (size, count) = (up.size, up.count);
        let Some(stored) = db.blob(hash)?.filter(|r| r.size == size).map(|r| r.stored) else {
            // The upload went away under it (collected, or restarted under another size):
            // the client offers it again.
            self.uploads.remove(&hash);
            return Ok(refused(
                hash,
                "the upload was reset on the relay; offer it again",
                true,
            ));
        };
        if index != stored {
            // A piece stored already (a resend) or ahead of a gap: say where it stands.
            return Ok(Message::BlobStored {
                hash: hash.0,
                stored,
                count,
            });
        }
        let data = match decode_piece(hash, size, index, encoded) {
            Ok(d) => d,
            Err(e) => {
                let bad = self.bad.entry(hash).or_insert(0);
                *bad += 1;
                self.stats.bad_pieces += 1;
                tracing::warn!(device = %self.device.device_id, %hash, error = %e, "attachment piece refused");
                if *bad >= MAX_BAD_PIECES {
                    self.uploads.remove(&hash);
                    return Ok(refused(
                        hash,
                        format!(
                            "{MAX_BAD_PIECES} pieces did not match the attachment's hash; the upload is refused"
                        ),
                        false,
                    ));
                }
                return Ok(Message::BlobStored {
                    hash: hash.0,
                    stored,
                    count,
                });
            }
        };
        let last = index + 1 == count;
        let ob = if last {
            // Every other piece is stored and verified; the outboard is made from them and
            // this one, and must give the hash again.
            let head = PieceStream::new(index, |k| {
                db.piece(hash, k)
                    .map_err(|e| io::Error::other(e.to_string()))?
                    .ok_or_else(|| io::Error::other(format!("piece {k} missing")))
            });
            match outboard(head.chain(io::Cursor::new(&data[..])), size) {
                Ok((h, ob)) if h == hash => Some(ob),
                r => {
                    tracing::error!(%hash, result = ?r.map(|x| x.0), "stored pieces do not give the attachment's hash");
                    // Start over: the pieces stored do not make the attachment.
                    self.uploads.remove(&hash);
                    db.delete_untouched(hash, Millis::MAX)?;
                    return Ok(refused(
                        hash,
                        "the relay's copy is damaged; upload again",
                        true,
                    ));
                }
            }
        } else {
            None
        };
        let Some(stored) = db.store_piece(hash, size, index, &data, ob.as_deref(), now)? else {
            // The upload went away under it (collected, or restarted under another size):
            // the client offers it again.
            self.uploads.remove(&hash);
            return Ok(refused(
                hash,
                "the upload was reset on the relay; offer it again",
                true,
            ));
        };
        if last && stored == count {
            self.uploads.remove(&hash);
            self.stats.uploads += 1;
            db.audit_upload(hash, size, self.device.device_id, now)?;
        }
        Ok(Message::BlobStored {
            hash: hash.0,
            stored,
            count,
        })
    }

    fn get<D: BlobDb>(&mut self, db: &D, hash: BlobHash, from: u32) -> Result<Message, D::Error> {
        // Not referenced in the device's scopes, and not stored, read the same.
        if !db.referenced_in(&self.device, hash)? {
            return Ok(refused(hash, "no such attachment", false));
        }
        let Some(row) = db.blob(hash)? else {
            return Ok(refused(hash, "not uploaded yet", true));
        };
        if !row.complete {
            return Ok(refused(hash, "not uploaded yet", true));
        }
        let count = piece_count(row.size);
        let from = from.min(count);
        if self.downloads.len() >= MAX_QUEUED_DOWNLOADS {
            return Ok(refused(
                hash,
                "too many downloads queued on one connection",
                true,
            ));
        }
        self.downloads.retain(|d| d.hash != hash);
        if from < count {
            self.downloads.push_back(Download {
                hash,
                size: row.size,
                next: from,
                count,
                outboard: None,
            });
        }
        Ok(Message::BlobSending {
            hash: hash.0,
            size: row.size,
            from,
        })
    }

    /// The next piece of the downloads under way, one download after another (the first
    /// asked is sent first), or `None` when none is.
    pub fn next_piece<D: BlobDb>(&mut self, db: &D) -> Result<Option<Message>, D::Error> {
        while let Some(d) = self.downloads.front_mut() {
            if d.next >= d.count {
                self.downloads.pop_front();
                continue;
            }
            if d.outboard.is_none() {
                match db.outboard(d.hash)? {
                    Some(ob) => d.outboard = Some(ob),
                    None => {
                        let hash = d.hash;
                        self.downloads.pop_front();
                        return Ok(Some(refused(hash, "not uploaded yet", true)));
                    }
                }
            }
            let index = d.next;
            d.next += 1;
            let Some(data) = db.piece(d.hash, index)? else {
                let hash = d.hash;
                self.downloads.pop_front();
                return Ok(Some(refused(hash, "the relay's copy is incomplete", true)));
            };
            return Ok(Some(
                match encode_piece(
                    d.hash,
                    d.size,
                    d.outboard.as_deref().unwrap_or_default(),
                    index,
                    &data,
                ) {
                    Ok(encoded) => Message::BlobPiece {
                        hash: d.hash.0,
                        index,
                        encoded,
                    },
                    Err(e) => {
                        let hash = d.hash;
                        tracing::error!(%hash, error = %e, "a stored attachment does not match its hash");
                        self.downloads.pop_front();
                        refused(hash, format!("the relay's copy is damaged: {e}"), true)
                    }
                },
            ));
        }
        Ok(None)
    }
}

/// An in-memory [`BlobDb`], for tests and the simulation: attachments and which scopes'
/// documents refer to them.
#[derive(Clone, Debug, Default)]
pub struct MemoryBlobs {
    inner: Arc<Mutex<MemoryInner>>,
}

/// One attachment in memory: its row, its pieces, once complete its outboard, and when it
/// was last touched.
type MemoryBlob = (BlobRow, BTreeMap<u32, Vec<u8>>, Option<Vec<u8>>, Millis);

#[derive(Debug, Default)]
struct MemoryInner {
    blobs: HashMap<BlobHash, MemoryBlob>,
    refs: HashMap<BlobHash, Vec<String>>,
    audit: Vec<(BlobHash, u64, Uuid)>,
}

impl MemoryBlobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that a document in `scope` refers to `hash`.
    pub fn refer(&self, hash: BlobHash, scope: &str) {
        self.lock()
            .refs
            .entry(hash)
            .or_default()
            .push(scope.to_string());
    }

    /// Forgets every document's reference to `hash`.
    pub fn unrefer(&self, hash: BlobHash) {
        self.lock().refs.remove(&hash);
    }

    /// The completed uploads recorded, in order.
    pub fn audit(&self) -> Vec<(BlobHash, u64, Uuid)> {
        self.lock().audit.clone()
    }

    /// The stored bytes of a complete attachment.
    pub fn bytes(&self, hash: BlobHash) -> Option<Vec<u8>> {
        let g = self.lock();
        let (row, pieces, _, _) = g.blobs.get(&hash)?;
        row.complete
            .then(|| pieces.values().flatten().copied().collect())
    }
}

impl BlobDb for MemoryBlobs {
    type Error = String;

    fn referenced_in(&self, device: &DeviceInfo, hash: BlobHash) -> Result<bool, String> {
        Ok(self
            .lock()
            .refs
            .get(&hash)
            .is_some_and(|s| s.iter().any(|s| device.sees(s))))
    }

    fn blob(&self, hash: BlobHash) -> Result<Option<BlobRow>, String> {
        Ok(self.lock().blobs.get(&hash).map(|b| b.0.clone()))
    }

    fn start_upload(
        &self,
        hash: BlobHash,
        size: u64,
        device: Uuid,
        now: Millis,
        stale_before: Millis,
    ) -> Result<BlobRow, String> {
        let mut g = self.lock();
        let fresh = || {
            (
                BlobRow {
                    size,
                    stored: 0,
                    complete: false,
                    device,
                },
                BTreeMap::new(),
                None,
                now,
            )
        };
        let e = g.blobs.entry(hash).or_insert_with(fresh);
        if !e.0.complete && e.0.size != size {
            if e.0.device != device && e.0.stored > 0 && e.3 >= stale_before {
                return Ok(e.0.clone());
            }
            *e = fresh();
        }
        e.3 = now;
        Ok(e.0.clone())
    }

    fn store_piece(
        &self,
        hash: BlobHash,
        size: u64,
        index: u32,
        data: &[u8],
        outboard: Option<&[u8]>,
        now: Millis,
    ) -> Result<Option<u32>, String> {
        let mut g = self.lock();
        let Some(e) = g.blobs.get_mut(&hash).filter(|e| e.0.size == size) else {
            return Ok(None);
        };
        e.3 = now;
        if e.0.stored == index && e.0.size == size && !e.0.complete {
            e.1.insert(index, data.to_vec());
            e.0.stored += 1;
            if let Some(ob) = outboard {
                e.0.complete = true;
                e.2 = Some(ob.to_vec());
            }
        }
        Ok(Some(e.0.stored))
    }

    fn piece(&self, hash: BlobHash, index: u32) -> Result<Option<Vec<u8>>, String> {
        Ok(self
            .lock()
            .blobs
            .get(&hash)
            .and_then(|b| b.1.get(&index).cloned()))
    }

    fn outboard(&self, hash: BlobHash) -> Result<Option<Vec<u8>>, String> {
        Ok(self.lock().blobs.get(&hash).and_then(|b| b.2.clone()))
    }

    fn device_bytes(&self, device: Uuid) -> Result<u64, String> {
        Ok(self
            .lock()
            .blobs
            .values()
            .filter(|b| b.0.device == device)
            .map(|b| b.0.size)
            .sum())
    }

    fn audit_upload(
        &self,
        hash: BlobHash,
        size: u64,
        device: Uuid,
        _now: Millis,
    ) -> Result<(), String> {
        self.lock().audit.push((hash, size, device));
        Ok(())
    }

    fn touch(&self, hash: BlobHash, now: Millis) -> Result<(), String> {
        if let Some(b) = self.lock().blobs.get_mut(&hash) {
            b.3 = now;
        }
        Ok(())
    }

    fn referenced(&self, hash: BlobHash) -> Result<bool, String> {
        Ok(self.lock().refs.get(&hash).is_some_and(|s| !s.is_empty()))
    }

    fn untouched_since(
        &self,
        before: Millis,
        after: Option<BlobHash>,
        limit: usize,
    ) -> Result<Vec<(BlobHash, u64, bool)>, String> {
        let g = self.lock();
        let mut v: Vec<(BlobHash, u64, bool)> = g
            .blobs
            .iter()
            .filter(|(h, b)| b.3 < before && after.is_none_or(|a| **h > a))
            .map(|(h, b)| (*h, b.0.size, b.0.complete))
            .collect();
        v.sort();
        v.truncate(limit);
        Ok(v)
    }

    fn delete_untouched(&self, hash: BlobHash, before: Millis) -> Result<bool, String> {
        let mut g = self.lock();
        if g.blobs.get(&hash).is_some_and(|b| b.3 < before) {
            g.blobs.remove(&hash);
            return Ok(true);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;
    use crate::attachment::pieces::piece_range;

    fn device(n: u128, scopes: &[&str]) -> DeviceInfo {
        DeviceInfo {
            device_id: Uuid::from_u128(n),
            name: format!("d{n}"),
            role: Role::Rep,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn photo(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 8) as u8)
            .collect()
    }

    struct Sender {
        data: Vec<u8>,
        hash: BlobHash,
        ob: Vec<u8>,
    }

    impl Sender {
        fn new(data: Vec<u8>) -> Self {
            let (hash, ob) = outboard(&data[..], data.len() as u64).expect("outboard");
            Self { data, hash, ob }
        }

        fn piece(&self, i: u32) -> Message {
            let r = piece_range(self.data.len() as u64, i).expect("range");
            let encoded = encode_piece(
                self.hash,
                self.data.len() as u64,
                &self.ob,
                i,
                &self.data[r.start as usize..r.end as usize],
            )
            .expect("encode");
            Message::BlobPiece {
                hash: self.hash.0,
                index: i,
                encoded,
            }
        }

        /// Uploads through `s`, stopping after `limit` pieces; returns the last answer.
        fn upload(&self, s: &mut BlobSession, db: &MemoryBlobs, limit: u32) -> Message {
            let put = Message::BlobPut {
                hash: self.hash.0,
                size: self.data.len() as u64,
            };
            let mut answer = one(s.handle(db, put, 0));
            let mut sent = 0;
            while let Message::BlobStored { stored, count, .. } = answer {
                if stored == count || sent == limit {
                    break;
                }
                answer = one(s.handle(db, self.piece(stored), 0));
                sent += 1;
            }
            answer
        }
    }

    fn one(r: Result<Result<Vec<Message>, String>, String>) -> Message {
        let mut v = r.expect("storage").expect("protocol");
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    fn download(s: &mut BlobSession, db: &MemoryBlobs, hash: BlobHash) -> Result<Vec<u8>, Message> {
        let size = match one(s.handle(
            db,
            Message::BlobGet {
                hash: hash.0,
                from: 0,
            },
            0,
        )) {
            Message::BlobSending { size, .. } => size,
            other => return Err(other),
        };
        let mut out = Vec::new();
        while let Some(m) = s.next_piece(db).expect("storage") {
            let Message::BlobPiece { index, encoded, .. } = m else {
                return Err(m);
            };
            out.extend(decode_piece(hash, size, index, &encoded).expect("verifies"));
        }
        Ok(out)
    }

    #[test]
    fn an_upload_cut_anywhere_resumes_and_another_device_in_scope_fetches_it() {
        let db = MemoryBlobs::default();
        let rep = device(1, &["north"]);
        let sender = Sender::new(photo(300_000, 7));
        db.refer(sender.hash, "north");
        // The first connection is cut after two pieces; the second resumes from there.
        let mut s = BlobSession::new(rep.clone(), BlobLimits::default());
        assert!(matches!(
            sender.upload(&mut s, &db, 2),
            Message::BlobStored {
                stored: 2,
                count: 5,
                ..
            }
        ));
        let mut s = BlobSession::new(rep.clone(), BlobLimits::default());
        let put = Message::BlobPut {
            hash: sender.hash.0,
            size: 300_000,
        };
        assert!(matches!(
            one(s.handle(&db, put, 0)),
            Message::BlobStored { stored: 2, .. }
        ));
        assert!(matches!(
            sender.upload(&mut s, &db, u32::MAX),
            Message::BlobStored {
                stored: 5,
                count: 5,
                ..
            }
        ));
        assert_eq!(db.audit(), vec![(sender.hash, 300_000, rep.device_id)]);
        // Offered again, nothing is to be sent.
        let mut again = BlobSession::new(device(3, &["north"]), BlobLimits::default());
        let put = Message::BlobPut {
            hash: sender.hash.0,
            size: 300_000,
        };
        assert!(matches!(
            one(again.handle(&db, put, 0)),
            Message::BlobStored {
                stored: 5,
                count: 5,
                ..
            }
        ));
        let mut office = BlobSession::new(device(2, &["*"]), BlobLimits::default());
        assert_eq!(
            download(&mut office, &db, sender.hash).expect("download"),
            sender.data
        );
    }

    #[test]
    fn outside_its_scopes_a_device_learns_nothing() {
        let db = MemoryBlobs::default();
        let sender = Sender::new(photo(10_000, 3));
        db.refer(sender.hash, "north");
        let mut up = BlobSession::new(device(1, &["north"]), BlobLimits::default());
        sender.upload(&mut up, &db, u32::MAX);
        let mut south = BlobSession::new(device(2, &["south"]), BlobLimits::default());
        let theirs = download(&mut south, &db, sender.hash).expect_err("refused");
        let unknown = download(&mut south, &db, BlobHash::of(b"nothing")).expect_err("refused");
        let reason = |m: &Message| match m {
            Message::BlobRefused { reason, retry, .. } => (reason.clone(), *retry),
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(&theirs), reason(&unknown));
        let put = Message::BlobPut {
            hash: sender.hash.0,
            size: 10_000,
        };
        assert!(matches!(
            one(south.handle(&db, put, 0)),
            Message::BlobRefused { retry: true, .. }
        ));
    }

    #[test]
    fn oversize_files_and_full_quotas_are_refused_before_any_byte() {
        let db = MemoryBlobs::default();
        let limits = BlobLimits {
            max_file_bytes: 100_000,
            device_quota_bytes: 150_000,
        };
        let rep = device(1, &["north"]);
        let big = Sender::new(photo(100_001, 1));
        db.refer(big.hash, "north");
        let mut s = BlobSession::new(rep.clone(), limits);
        match big.upload(&mut s, &db, u32::MAX) {
            Message::BlobRefused { retry, reason, .. } => {
                assert!(!retry);
                assert!(reason.contains("limit"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let a = Sender::new(photo(90_000, 2));
        let b = Sender::new(photo(90_000, 3));
        db.refer(a.hash, "north");
        db.refer(b.hash, "north");
        assert!(matches!(
            a.upload(&mut s, &db, u32::MAX),
            Message::BlobStored {
                stored: 2,
                count: 2,
                ..
            }
        ));
        match b.upload(&mut s, &db, u32::MAX) {
            Message::BlobRefused { retry, reason, .. } => {
                assert!(retry);
                assert!(reason.contains("quota"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_pieces_are_never_stored_and_a_persistent_sender_is_refused() {
        let db = MemoryBlobs::default();
        let rep = device(1, &["north"]);
        let sender = Sender::new(photo(200_000, 5));
        db.refer(sender.hash, "north");
        let mut s = BlobSession::new(rep, BlobLimits::default());
        let put = Message::BlobPut {
            hash: sender.hash.0,
            size: 200_000,
        };
        one(s.handle(&db, put, 0));
        let Message::BlobPiece { encoded, .. } = sender.piece(0) else {
            unreachable!()
        };
        let mut bad = encoded.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        for i in 0..MAX_BAD_PIECES {
            let m = Message::BlobPiece {
                hash: sender.hash.0,
                index: 0,
                encoded: bad.clone(),
            };
            let answer = one(s.handle(&db, m, 0));
            if i + 1 < MAX_BAD_PIECES {
                assert!(
                    matches!(answer, Message::BlobStored { stored: 0, .. }),
                    "{answer:?}"
                );
            } else {
                assert!(
                    matches!(answer, Message::BlobRefused { retry: false, .. }),
                    "{answer:?}"
                );
            }
            assert_eq!(
                db.blob(sender.hash).expect("row").map(|r| r.stored),
                Some(0)
            );
        }
        // A piece of another position, or ahead of the next, is not stored either.
        let mut s = BlobSession::new(device(1, &["north"]), BlobLimits::default());
        let put = Message::BlobPut {
            hash: sender.hash.0,
            size: 200_000,
        };
        one(s.handle(&db, put, 0));
        assert!(matches!(
            one(s.handle(&db, sender.piece(2), 0)),
            Message::BlobStored { stored: 0, .. }
        ));
        let Message::BlobPiece { encoded: p1, .. } = sender.piece(1) else {
            unreachable!()
        };
        let m = Message::BlobPiece {
            hash: sender.hash.0,
            index: 0,
            encoded: p1,
        };
        assert!(matches!(
            one(s.handle(&db, m, 0)),
            Message::BlobStored { stored: 0, .. }
        ));
    }

    #[test]
    fn the_collector_removes_abandoned_and_unreferenced_attachments_only() {
        const DAY: Millis = 24 * 3600 * 1000;
        let db = MemoryBlobs::default();
        let rep = device(1, &["north"]);
        let kept = Sender::new(photo(70_000, 1));
        let dropped = Sender::new(photo(70_000, 2));
        let partial = Sender::new(photo(200_000, 3));
        for s in [&kept, &dropped, &partial] {
            db.refer(s.hash, "north");
        }
        let mut s = BlobSession::new(rep.clone(), BlobLimits::default());
        kept.upload(&mut s, &db, u32::MAX);
        dropped.upload(&mut s, &db, u32::MAX);
        partial.upload(&mut s, &db, 1);
        db.unrefer(dropped.hash);
        // Within the grace periods nothing goes.
        let rules = Collect::default();
        assert_eq!(
            collect_garbage(&db, DAY / 2, rules).expect("gc"),
            Collected::default()
        );
        // A day on, the attachment no document keeps goes; the partial upload waits a week.
        let c = collect_garbage(&db, 2 * DAY, rules).expect("gc");
        assert_eq!((c.unreferenced, c.abandoned, c.bytes), (1, 0, 70_000));
        assert!(db.blob(dropped.hash).expect("row").is_none());
        let c = collect_garbage(&db, 8 * DAY, rules).expect("gc");
        assert_eq!((c.unreferenced, c.abandoned), (0, 1));
        assert!(db.blob(kept.hash).expect("row").is_some());
        // Offered again just before a collection, an unreferenced attachment stays.
        db.unrefer(kept.hash);
        db.refer(kept.hash, "north");
        let mut s = BlobSession::new(rep, BlobLimits::default());
        let put = Message::BlobPut {
            hash: kept.hash.0,
            size: 70_000,
        };
        one(s.handle(&db, put, 30 * DAY));
        db.unrefer(kept.hash);
        assert_eq!(
            collect_garbage(&db, 30 * DAY + 1, rules)
                .expect("gc")
                .unreferenced,
            0
        );
    }

    #[test]
    fn an_upload_whose_row_went_away_is_refused_for_now_not_resent_forever() {
        let db = MemoryBlobs::default();
        let sender = Sender::new(photo(200_000, 4));
        db.refer(sender.hash, "north");
        let mut s = BlobSession::new(device(1, &["north"]), BlobLimits::default());
        sender.upload(&mut s, &db, 1);
        // Collected (or restarted) under the session's feet.
        assert!(
            db.delete_untouched(sender.hash, Millis::MAX)
                .expect("delete")
        );
        assert!(matches!(
            one(s.handle(&db, sender.piece(1), 0)),
            Message::BlobRefused { retry: true, .. }
        ));
        // Offered again, it starts over and completes.
        assert!(matches!(
            sender.upload(&mut s, &db, u32::MAX),
            Message::BlobStored {
                stored: 4,
                count: 4,
                ..
            }
        ));
    }

    #[test]
    fn naming_other_sizes_cannot_hold_an_attachment_hostage() {
        let db = MemoryBlobs::default();
        let honest = Sender::new(photo(150_000, 6));
        db.refer(honest.hash, "north");
        let mut mallory = BlobSession::new(device(9, &["north"]), BlobLimits::default());
        let lie = Message::BlobPut {
            hash: honest.hash.0,
            size: 150_001,
        };
        one(mallory.handle(&db, lie, 0));
        // Mallory's upload holds no verified piece: the honest one takes over at once.
        let mut s = BlobSession::new(device(1, &["north"]), BlobLimits::default());
        let put = Message::BlobPut {
            hash: honest.hash.0,
            size: 150_000,
        };
        assert!(matches!(
            one(s.handle(&db, put, 1)),
            Message::BlobStored {
                stored: 0,
                count: 3,
                ..
            }
        ));
        one(s.handle(&db, honest.piece(0), 1));
        // Now it has progress: another size is told to wait, and cannot undo it.
        let lie = Message::BlobPut {
            hash: honest.hash.0,
            size: 150_002,
        };
        assert!(matches!(
            one(mallory.handle(&db, lie, 2)),
            Message::BlobRefused { retry: true, .. }
        ));
        assert!(matches!(
            honest.upload(&mut s, &db, u32::MAX),
            Message::BlobStored {
                stored: 3,
                count: 3,
                ..
            }
        ));
        assert_eq!(db.bytes(honest.hash), Some(honest.data.clone()));
    }

    #[test]
    fn an_upload_under_a_wrong_size_never_completes() {
        let db = MemoryBlobs::default();
        let sender = Sender::new(photo(150_000, 9));
        db.refer(sender.hash, "north");
        let mut s = BlobSession::new(device(1, &["north"]), BlobLimits::default());
        let put = Message::BlobPut {
            hash: sender.hash.0,
            size: 150_001,
        };
        one(s.handle(&db, put, 0));
        for i in 0..3 {
            one(s.handle(&db, sender.piece(i), 0));
        }
        assert!(!db.blob(sender.hash).expect("row").expect("row").complete);
        assert!(db.bytes(sender.hash).is_none());
    }
}

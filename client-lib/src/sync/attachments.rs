//! Attachment transfers on a connection's attachment stream (protocol 6).
//!
//! Once the relay welcomed the laptop, [`Transfers::run`] opens a second stream, at a lower
//! send priority than the document stream, and moves attachment bytes over it: uploads of
//! what was attached here (`BlobPut`, then the pieces the relay lacks, up to [`WINDOW`] of
//! them unanswered), downloads of what was asked for (`BlobGet` from the first piece not
//! held). Every piece is verified before it is stored on either side, and both sides store
//! pieces in order with the count held, so a cut at any byte, or a restart, resumes from the
//! last stored piece. One upload and one download run at a time, oldest first.
//!
//! A one-shot sync ([`super::sync_now`]) runs until nothing is left to move (or what is left
//! was refused); the background sync keeps the stream open and wakes when an attachment is
//! added or asked for.

use std::collections::{HashMap, VecDeque};

use fieldsync_core::attachment::BlobHash;
use fieldsync_core::attachment::local::{LocalBlob, LocalBlobError, LocalBlobs};
use fieldsync_core::attachment::pieces::{PIECE_BYTES, decode_piece, encode_piece, piece_count};

use super::*;

/// Pieces of an upload sent and not yet answered (1 MiB: a 2 Mbit/s link with 800 ms round
/// trips holds about 200 KB in flight).
pub(super) const WINDOW: usize = 16;
/// The send priority of the attachment stream (the document stream has 0).
const PRIORITY: i32 = -1;
/// Wait before asking again after a refusal that may pass (the document that refers to
/// the attachment not stored yet, a full quota).
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Retryable refusals of one attachment a one-shot sync accepts before leaving it for the
/// next sync.
const ONE_SHOT_TRIES: u32 = 5;
/// Bad pieces of one download before it is left for later.
const MAX_BAD: u32 = 8;
/// How often the background transfer looks for work another process added.
const RESCAN: Duration = Duration::from_secs(5);

/// What the transfers moved.
#[derive(Debug, Default)]
pub(super) struct TransferStats {
    pub(super) uploaded_files: AtomicU64,
    pub(super) uploaded_bytes: AtomicU64,
    pub(super) downloaded_files: AtomicU64,
    pub(super) downloaded_bytes: AtomicU64,
    pub(super) bad_pieces: AtomicU64,
}

/// An upload under way.
struct Up {
    hash: BlobHash,
    size: u64,
    count: u32,
    outboard: Vec<u8>,
    /// The relay answered the `BlobPut`.
    started: bool,
    /// Next piece to send.
    next: u32,
    /// Pieces sent and not answered: index and the epoch they were sent in.
    in_flight: VecDeque<(u32, u32)>,
    /// Bumped when the relay did not store a piece: answers to pieces sent before are stale.
    epoch: u32,
    /// Pieces the relay confirmed, last recorded in the store.
    recorded: u32,
}

/// A download under way.
struct Down {
    hash: BlobHash,
    size: u64,
    next: u32,
    bad: u32,
}

/// Runs `f` on the laptop's attachment store off the executor.
async fn blobs<T: Send + 'static>(
    client: &Client,
    f: impl FnOnce(&mut LocalBlobs) -> Result<T, LocalBlobError> + Send + 'static,
) -> Result<T, SyncError> {
    let client = client.clone();
    tokio::task::spawn_blocking(move || client.blobs(f))
        .await
        .map_err(|e| SyncError::Task(e.to_string()))?
        .map_err(|e| SyncError::Io(e.to_string()))
}

/// The transfers of one connection.
pub(super) struct Transfers {
    pub(super) client: Client,
    pub(super) conn: quinn::Connection,
    /// A one-shot sync: end once nothing is left to move.
    pub(super) until_done: bool,
    pub(super) stats: Arc<TransferStats>,
}

impl Transfers {
    /// Waits for the relay's welcome (`started`), then moves attachments until done (one
    /// shot) or the connection ends.
    pub(super) async fn run(self, mut started: watch::Receiver<bool>) -> Result<(), SyncError> {
        if started.wait_for(|s| *s).await.is_err() {
            return Ok(());
        }
        let (ups, downs) = blobs(&self.client, |b| {
            Ok((b.pending_uploads()?, b.pending_downloads()?))
        })
        .await?;
        if self.until_done && ups.is_empty() && downs.is_empty() {
            return Ok(());
        }
        let (send, recv) = self.conn.open_bi().await.map_err(connection_error)?;
        let _ = send.set_priority(PRIORITY);
        let mut link = Link::on_stream(self.conn.clone(), send, recv);
        let r = self.transfer(&mut link).await;
        link.finish().await;
        r
    }

    async fn transfer(&self, link: &mut Link) -> Result<(), SyncError> {
        let notify = self.client.transfers_notify();
        let mut up: Option<Up> = None;
        let mut down: Option<Down> = None;
        // Attachments refused for now: not asked again before the instant, and how often.
        let mut later: HashMap<BlobHash, (tokio::time::Instant, u32)> = HashMap::new();
        let mut rescan = tokio::time::interval(RESCAN);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = tokio::time::Instant::now();
            let waiting = |h: &BlobHash| {
                later
                    .get(h)
                    .is_some_and(|(at, n)| *at > now || (self.until_done && *n >= ONE_SHOT_TRIES))
            };
            if up.is_none() {
                let next = blobs(&self.client, |b| b.pending_uploads()).await?;
                if let Some(b) = next.into_iter().find(|b| !waiting(&b.hash)) {
                    up = Some(self.start_upload(link, b).await?);
                }
            }
            if down.is_none() {
                let next = blobs(&self.client, |b| b.pending_downloads()).await?;
                if let Some(b) = next.into_iter().find(|b| !waiting(&b.hash)) {
                    link.send(&Message::BlobGet {
                        hash: b.hash.0,
                        from: b.have,
                    })?;
                    down = Some(Down {
                        hash: b.hash,
                        size: b.size,
                        next: b.have,
                        bad: 0,
                    });
                }
            }
            if let Some(u) = up.as_mut() {
                self.send_pieces(link, u).await?;
            }
            let retry_at = later
                .values()
                .filter(|(_, n)| !(self.until_done && *n >= ONE_SHOT_TRIES))
                .map(|(at, _)| *at)
                .min();
            if up.is_none() && down.is_none() && self.until_done && retry_at.is_none() {
                return Ok(());
            }
            tokio::select! {
                m = link.inbound.recv() => {
                    let m = m.ok_or_else(|| SyncError::Io("the attachment stream's tasks ended".into()))??;
                    self.on_message(link, m, &mut up, &mut down, &mut later).await?;
                }
                () = notify.notified() => {}
                () = async {
                    match retry_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = rescan.tick(), if !self.until_done => {}
            }
        }
    }

    async fn start_upload(&self, link: &Link, b: LocalBlob) -> Result<Up, SyncError> {
        let hash = b.hash;
        let outboard = blobs(&self.client, move |s| s.outboard(hash)).await?;
        link.send(&Message::BlobPut {
            hash: hash.0,
            size: b.size,
        })?;
        Ok(Up {
            hash,
            size: b.size,
            count: piece_count(b.size),
            outboard,
            started: false,
            next: 0,
            in_flight: VecDeque::new(),
            epoch: 0,
            recorded: b.uploaded,
        })
    }

    /// Sends pieces of `u` while the window has room.
    async fn send_pieces(&self, link: &Link, u: &mut Up) -> Result<(), SyncError> {
        while u.started && u.next < u.count && u.in_flight.len() < WINDOW {
            let (hash, index) = (u.hash, u.next);
            let data = blobs(&self.client, move |s| s.piece(hash, index)).await?;
            let encoded = encode_piece(hash, u.size, &u.outboard, index, &data)
                .map_err(|e| SyncError::Io(format!("attachment {}: {e}", hash.short())))?;
            link.send(&Message::BlobPiece {
                hash: hash.0,
                index,
                encoded,
            })?;
            u.in_flight.push_back((index, u.epoch));
            u.next += 1;
        }
        Ok(())
    }

    async fn on_message(
        &self,
        link: &Link,
        m: Message,
        up: &mut Option<Up>,
        down: &mut Option<Down>,
        later: &mut HashMap<BlobHash, (tokio::time::Instant, u32)>,
    ) -> Result<(), SyncError> {
        match m {
            Message::BlobStored {
                hash,
                stored,
                count,
            } => {
                let Some(u) = up.as_mut().filter(|u| u.hash.0 == hash) else {
                    return Ok(());
                };
                if count != u.count {
                    return Err(SyncError::Io(format!(
                        "the relay counts {count} pieces of attachment {}, not {}",
                        u.hash.short(),
                        u.count
                    )));
                }
                if !u.started {
                    u.started = true;
                    u.next = stored;
                } else if let Some((index, epoch)) = u.in_flight.pop_front()
                    && stored <= index
                    && epoch == u.epoch
                {
                    // That piece was not stored (it did not verify on the way): again from
                    // where the relay stands; answers to what followed it are stale.
                    self.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
                    u.epoch += 1;
                    u.next = stored;
                }
                let done = stored >= u.count;
                if done || stored >= u.recorded + 8 {
                    let h = u.hash;
                    blobs(&self.client, move |s| s.set_uploaded(h, stored)).await?;
                    self.stats.uploaded_bytes.fetch_add(
                        (u64::from(stored) * PIECE_BYTES).min(u.size)
                            - (u64::from(u.recorded) * PIECE_BYTES).min(u.size),
                        Ordering::Relaxed,
                    );
                    u.recorded = stored;
                }
                if done {
                    tracing::debug!(hash = %u.hash.short(), bytes = u.size, "attachment uploaded");
                    self.stats.uploaded_files.fetch_add(1, Ordering::Relaxed);
                    later.remove(&u.hash);
                    *up = None;
                }
            }
            Message::BlobRefused {
                hash,
                reason,
                retry,
            } => {
                let hash = BlobHash(hash);
                tracing::info!(hash = %hash.short(), %reason, retry, "attachment transfer refused");
                {
                    let reason = reason.clone();
                    blobs(&self.client, move |s| s.set_refused(hash, &reason, !retry)).await?;
                }
                if retry {
                    let e = later
                        .entry(hash)
                        .or_insert((tokio::time::Instant::now(), 0));
                    e.0 = tokio::time::Instant::now() + RETRY_AFTER;
                    e.1 += 1;
                }
                if up.as_ref().is_some_and(|u| u.hash == hash) {
                    *up = None;
                }
                if down.as_ref().is_some_and(|d| d.hash == hash) {
                    *down = None;
                }
            }
            Message::BlobSending { hash, size, from } => {
                let Some(d) = down.as_mut().filter(|d| d.hash.0 == hash) else {
                    return Ok(());
                };
                if size != d.size {
                    // The document said another size; the relay's is the verified one.
                    let h = d.hash;
                    blobs(&self.client, move |s| s.set_size(h, size)).await?;
                    d.size = size;
                    if from != 0 {
                        link.send(&Message::BlobCancel { hash })?;
                        link.send(&Message::BlobGet { hash, from: 0 })?;
                    }
                }
                d.next = from;
            }
            Message::BlobPiece {
                hash,
                index,
                encoded,
            } => {
                let Some(d) = down
                    .as_mut()
                    .filter(|d| d.hash.0 == hash && d.next == index)
                else {
                    return Ok(());
                };
                match decode_piece(d.hash, d.size, index, &encoded) {
                    Ok(data) => {
                        let n = data.len() as u64;
                        let h = d.hash;
                        let have =
                            blobs(&self.client, move |s| s.store_piece(h, index, &data)).await?;
                        self.stats.downloaded_bytes.fetch_add(n, Ordering::Relaxed);
                        d.next = have;
                        if have >= piece_count(d.size) {
                            tracing::debug!(hash = %d.hash.short(), bytes = d.size, "attachment downloaded");
                            self.stats.downloaded_files.fetch_add(1, Ordering::Relaxed);
                            *down = None;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(hash = %d.hash.short(), error = %e, "attachment piece refused");
                        self.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
                        d.bad += 1;
                        link.send(&Message::BlobCancel { hash })?;
                        if d.bad >= MAX_BAD {
                            later.insert(
                                d.hash,
                                (tokio::time::Instant::now() + RETRY_AFTER, ONE_SHOT_TRIES),
                            );
                            *down = None;
                        } else {
                            link.send(&Message::BlobGet { hash, from: d.next })?;
                        }
                    }
                }
            }
            other => {
                return Err(SyncError::Io(format!(
                    "unexpected {} on the attachment stream",
                    other.name()
                )));
            }
        }
        Ok(())
    }
}

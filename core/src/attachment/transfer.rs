//! The laptop's side of the attachment stream, as a state machine that does no I/O.
//!
//! [`Transfer::step`] takes what happened (the stream opened, a message from the relay, or a
//! wake-up: a timer, or something new to move) and the time, works on the laptop's
//! [`LocalBlobs`], and returns the messages to send, when to wake it next, and whether it is
//! done. The QUIC driver (`fieldsync_client::sync`) and the simulation drive the same
//! machine, so the rules below live here only:
//! - **Uploads** of what was attached here, oldest first, one at a time: `BlobPut`, then the
//!   pieces from where the relay's `BlobStored` says, up to [`TransferConfig::window`] of them
//!   unanswered. The relay answers every piece with what it holds; an answer that shows a
//!   piece was not stored (it did not verify on the way) sends again from there, and answers
//!   to pieces sent before that are stale. Progress is recorded every 8 pieces and at the end.
//! - **Downloads** of what was asked for, one at a time: `BlobGet` from the first piece not
//!   held; each piece is verified before it is stored. A piece that does not verify is asked
//!   for again; one download that keeps failing is left for later.
//! - **Refusals** for good are recorded and not tried again until asked; refusals for now are
//!   tried again after [`TransferConfig::retry_after`] (a one-shot sync gives up on one after
//!   [`TransferConfig::one_shot_tries`], leaving it for the next sync).

use std::collections::{HashMap, VecDeque};

use super::BlobHash;
use super::local::{LocalBlob, LocalBlobError, LocalBlobs};
use super::pieces::{PIECE_BYTES, decode_piece, encode_piece, piece_count};
use crate::ids::Millis;
use crate::protocol::messages::Message;

/// The longest wait before asking again after a refusal for now (ms).
pub const MAX_RETRY_AFTER: Millis = 5 * 60 * 1000;

/// How the transfers behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferConfig {
    /// A one-shot sync: done once nothing is left to move (or what is left was refused).
    pub until_done: bool,
    /// Pieces of an upload sent and not yet answered.
    pub window: usize,
    /// Wait before asking again after a refusal for now.
    pub retry_after: Millis,
    /// Refusals for now of one attachment a one-shot sync accepts.
    pub one_shot_tries: u32,
    /// Bad pieces of one download before it is left for later.
    pub max_bad: u32,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            until_done: true,
            // 1 MiB: a 2 Mbit/s link with 800 ms round trips holds about 200 KB in flight.
            window: 16,
            retry_after: 2_000,
            one_shot_tries: 3,
            max_bad: 8,
        }
    }
}

/// What the transfers moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Uploads completed.
    pub uploaded_files: u64,
    /// Bytes the relay confirmed.
    pub uploaded_bytes: u64,
    /// Downloads completed.
    pub downloaded_files: u64,
    /// Bytes received, verified and stored.
    pub downloaded_bytes: u64,
    /// Pieces that did not verify (sent or received).
    pub bad_pieces: u64,
}

/// What one step asks of the driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferStep {
    /// Messages to send on the attachment stream, in order.
    pub send: Vec<Message>,
    /// Nothing left to move (one-shot only): finish the stream.
    pub done: bool,
    /// Step again (with no message) at this time, if nothing else happens first.
    pub wake_at: Option<Millis>,
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The laptop's attachment store failed.
    #[error(transparent)]
    Store(#[from] LocalBlobError),
    /// The relay broke the protocol.
    #[error("attachment stream: {0}")]
    Protocol(String),
}

/// An upload under way.
#[derive(Debug)]
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
#[derive(Debug)]
struct Down {
    hash: BlobHash,
    size: u64,
    next: u32,
    bad: u32,
}

/// The laptop's side of one attachment stream (see the module doc).
#[derive(Debug)]
pub struct Transfer {
    cfg: TransferConfig,
    up: Option<Up>,
    down: Option<Down>,
    /// Attachments refused for now: not asked again before the time, and how often.
    later: HashMap<BlobHash, (Millis, u32)>,
    stats: TransferStats,
}

impl Transfer {
    /// A transfer for a newly opened stream.
    pub fn new(cfg: TransferConfig) -> Self {
        Self {
            cfg,
            up: None,
            down: None,
            later: HashMap::new(),
            stats: TransferStats::default(),
        }
    }

    /// What it moved so far.
    pub fn stats(&self) -> TransferStats {
        self.stats
    }

    /// Whether anything waits to move now (`false`: a one-shot sync need not open the stream).
    pub fn has_work(blobs: &LocalBlobs) -> Result<bool, LocalBlobError> {
        Ok(!blobs.pending_uploads()?.is_empty() || !blobs.pending_downloads()?.is_empty())
    }

    /// Handles `input` (a message from the relay, or `None` for a wake-up), then starts what
    /// waits and sends what the window allows.
    pub fn step(
        &mut self,
        blobs: &mut LocalBlobs,
        input: Option<Message>,
        now: Millis,
    ) -> Result<TransferStep, TransferError> {
        let mut out = TransferStep::default();
        if let Some(m) = input {
            self.on_message(blobs, m, now, &mut out.send)?;
        }
        let waiting = |later: &HashMap<BlobHash, (Millis, u32)>, h: &BlobHash| {
            later.get(h).is_some_and(|(at, n)| {
                *at > now || (self.cfg.until_done && *n >= self.cfg.one_shot_tries)
            })
        };
        if self.up.is_none()
            && let Some(b) = blobs
                .pending_uploads()?
                .into_iter()
                .find(|b| !waiting(&self.later, &b.hash))
        {
            self.up = Some(self.start_upload(blobs, b, &mut out.send)?);
        }
        if self.down.is_none()
            && let Some(b) = blobs
                .pending_downloads()?
                .into_iter()
                .find(|b| !waiting(&self.later, &b.hash))
        {
            out.send.push(Message::BlobGet {
                hash: b.hash.0,
                from: b.have,
            });
            self.down = Some(Down {
                hash: b.hash,
                size: b.size,
                next: b.have,
                bad: 0,
            });
        }
        let mut damaged = None;
        if let Some(u) = self.up.as_mut() {
            while u.started && u.next < u.count && u.in_flight.len() < self.cfg.window {
                let index = u.next;
                let encoded = blobs.piece(u.hash, index).and_then(|data| {
                    encode_piece(u.hash, u.size, &u.outboard, index, &data)
                        .map_err(|e| LocalBlobError::Damaged(u.hash, e.to_string()))
                });
                let encoded = match encoded {
                    Ok(e) => e,
                    Err(e) => {
                        damaged = Some((u.hash, e.to_string()));
                        break;
                    }
                };
                out.send.push(Message::BlobPiece {
                    hash: u.hash.0,
                    index,
                    encoded,
                });
                u.in_flight.push_back((index, u.epoch));
                u.next += 1;
            }
        }
        if let Some((hash, why)) = damaged {
            // This copy cannot be sent: it waits, refused, until attached again; the other
            // transfers go on.
            blobs.set_refused(hash, &format!("damaged on this laptop: {why}"), true)?;
            self.up = None;
        }
        // Only refusals still to run out wake the machine: one due now was tried above if
        // its attachment still waits, and one given up on waits for the next sync.
        out.wake_at = self
            .later
            .values()
            .filter(|(at, n)| *at > now && !(self.cfg.until_done && *n >= self.cfg.one_shot_tries))
            .map(|(at, _)| *at)
            .min();
        out.done = self.cfg.until_done
            && self.up.is_none()
            && self.down.is_none()
            && out.wake_at.is_none();
        Ok(out)
    }

    fn start_upload(
        &self,
        blobs: &LocalBlobs,
        b: LocalBlob,
        send: &mut Vec<Message>,
    ) -> Result<Up, TransferError> {
        let outboard = blobs.outboard(b.hash)?;
        send.push(Message::BlobPut {
            hash: b.hash.0,
            size: b.size,
        });
        Ok(Up {
            hash: b.hash,
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

    fn on_message(
        &mut self,
        blobs: &mut LocalBlobs,
        m: Message,
        now: Millis,
        send: &mut Vec<Message>,
    ) -> Result<(), TransferError> {
        match m {
            Message::BlobStored {
                hash,
                stored,
                count,
            } => {
                let Some(u) = self.up.as_mut().filter(|u| u.hash.0 == hash) else {
                    return Ok(());
                };
                if count != u.count {
                    return Err(TransferError::Protocol(format!(
                        "the relay counts {count} pieces of attachment {}, not {}",
                        u.hash.short(),
                        u.count
                    )));
                }
                if !u.started {
                    u.started = true;
                    u.next = stored.min(u.count);
                } else if let Some((index, epoch)) = u.in_flight.pop_front()
                    && stored <= index
                    && epoch == u.epoch
                {
                    // That piece was not stored: again from where the relay stands.
                    self.stats.bad_pieces += 1;
                    u.epoch += 1;
                    u.next = stored;
                }
                let done = stored >= u.count;
                if done || stored >= u.recorded + 8 {
                    blobs.set_uploaded(u.hash, stored)?;
                    self.stats.uploaded_bytes += (u64::from(stored) * PIECE_BYTES).min(u.size)
                        - (u64::from(u.recorded) * PIECE_BYTES).min(u.size);
                    u.recorded = stored;
                }
                if done {
                    self.stats.uploaded_files += 1;
                    self.later.remove(&u.hash);
                    self.up = None;
                }
            }
            Message::BlobRefused {
                hash,
                reason,
                retry,
            } => {
                let hash = BlobHash(hash);
                blobs.set_refused(hash, &reason, !retry)?;
                if retry {
                    // Doubling waits, up to five minutes: a reference the relay has not
                    // stored yet comes within seconds; a full quota or an upload that never
                    // comes takes longer, and is not asked about twice a second.
                    let e = self.later.entry(hash).or_insert((now, 0));
                    let wait = self
                        .cfg
                        .retry_after
                        .saturating_mul(1 << e.1.min(10))
                        .min(MAX_RETRY_AFTER);
                    e.0 = now + wait;
                    e.1 += 1;
                }
                if self.up.as_ref().is_some_and(|u| u.hash == hash) {
                    self.up = None;
                }
                if self.down.as_ref().is_some_and(|d| d.hash == hash) {
                    self.down = None;
                }
            }
            Message::BlobSending { hash, size, from } => {
                let Some(d) = self.down.as_mut().filter(|d| d.hash.0 == hash) else {
                    return Ok(());
                };
                if size != d.size {
                    // The document said another size; the relay's is the verified one.
                    blobs.set_size(d.hash, size)?;
                    d.size = size;
                    if from != 0 {
                        send.push(Message::BlobCancel { hash });
                        send.push(Message::BlobGet { hash, from: 0 });
                    }
                }
                d.next = from;
            }
            Message::BlobPiece {
                hash,
                index,
                encoded,
            } => {
                let Some(d) = self
                    .down
                    .as_mut()
                    .filter(|d| d.hash.0 == hash && d.next == index)
                else {
                    return Ok(());
                };
                match decode_piece(d.hash, d.size, index, &encoded) {
                    Ok(data) => match blobs.store_piece(d.hash, index, &data)? {
                        Some(have) => {
                            self.stats.downloaded_bytes += data.len() as u64;
                            d.next = have;
                            if have >= piece_count(d.size) {
                                self.stats.downloaded_files += 1;
                                self.down = None;
                            }
                        }
                        // Not wanted any more (its document left this laptop meanwhile).
                        None => {
                            send.push(Message::BlobCancel { hash });
                            self.down = None;
                        }
                    },
                    Err(_) => {
                        self.stats.bad_pieces += 1;
                        d.bad += 1;
                        send.push(Message::BlobCancel { hash });
                        if d.bad >= self.cfg.max_bad {
                            self.later.insert(
                                d.hash,
                                (now + self.cfg.retry_after, self.cfg.one_shot_tries),
                            );
                            self.down = None;
                        } else {
                            send.push(Message::BlobGet { hash, from: d.next });
                        }
                    }
                }
            }
            other => {
                return Err(TransferError::Protocol(format!(
                    "unexpected {} on the attachment stream",
                    other.name()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::pieces::{encode_piece, outboard, piece_range};

    #[test]
    fn a_download_whose_attachment_is_collected_meanwhile_ends_instead_of_hanging() {
        let dir = tempfile::tempdir().expect("dir");
        let mut blobs = LocalBlobs::open(&dir.path().join("r.db"), None).expect("open");
        let data: Vec<u8> = (0..150_000u32).map(|i| (i % 247) as u8).collect();
        let size = data.len() as u64;
        let (hash, ob) = outboard(&data[..], size).expect("outboard");
        blobs.want(hash, size, 0).expect("want");
        let mut t = Transfer::new(TransferConfig::default());
        let out = t.step(&mut blobs, None, 0).expect("step");
        assert!(matches!(out.send[..], [Message::BlobGet { from: 0, .. }]));
        let sending = Message::BlobSending {
            hash: hash.0,
            size,
            from: 0,
        };
        t.step(&mut blobs, Some(sending), 1).expect("step");
        // Its document left the laptop: the collector drops it mid-download.
        blobs
            .collect(&Default::default(), &Default::default())
            .expect("collect");
        let r = piece_range(size, 0).expect("range");
        let piece = Message::BlobPiece {
            hash: hash.0,
            index: 0,
            encoded: encode_piece(hash, size, &ob, 0, &data[r.start as usize..r.end as usize])
                .expect("encode"),
        };
        let out = t.step(&mut blobs, Some(piece), 2).expect("step");
        assert!(
            out.send
                .iter()
                .any(|m| matches!(m, Message::BlobCancel { .. }))
        );
        assert!(out.done, "nothing left to move: {out:?}");
        assert!(blobs.get(hash).expect("get").is_none(), "nothing stored");
    }

    #[test]
    fn refusals_for_now_back_off_and_a_one_shot_sync_gives_up_after_its_tries() {
        let dir = tempfile::tempdir().expect("dir");
        let mut blobs = LocalBlobs::open(&dir.path().join("r.db"), None).expect("open");
        let hash = blobs.add_bytes(&[9u8; 1000], 0).expect("add");
        let mut t = Transfer::new(TransferConfig::default());
        let mut now = 0;
        let mut waits = Vec::new();
        let mut out = t.step(&mut blobs, None, now).expect("step");
        while !out.done {
            let refused = Message::BlobRefused {
                hash: hash.0,
                reason: "no document refers to it (yet)".into(),
                retry: true,
            };
            out = t.step(&mut blobs, Some(refused), now).expect("step");
            if let Some(at) = out.wake_at {
                waits.push(at - now);
                now = at;
                out = t.step(&mut blobs, None, now).expect("step");
            }
        }
        assert_eq!(waits, [2_000, 4_000], "doubling waits, three tries");
        assert!(
            blobs
                .get(hash)
                .expect("get")
                .is_some_and(|b| b.upload_pending())
        );
    }
}

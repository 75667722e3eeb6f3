//! The relay's attachment streams: one per connection, opened by a protocol-6 client after
//! it logged in, carrying uploads and downloads of attachment bytes.
//!
//! The rules (authorization, limits, verification) are core's
//! `fieldsync_core::attachment::relay::BlobSession`; this task moves its messages over the
//! QUIC stream and runs its store calls off the executor. The stream is sent at a lower
//! priority than the document stream of the same connection, so a download of photos never
//! delays a document batch or an upload acknowledgement. It ends with the connection (a
//! revoked device's connection is closed, and with it this stream).

use std::net::SocketAddr;
use std::sync::Arc;

use fieldsync_core::attachment::relay::{BlobSession, BlobStats};
use fieldsync_core::ids::now_millis;
use fieldsync_core::protocol::codec::{self, FrameDecoder};
use quinn::{RecvStream, SendStream};
use tracing::{debug, warn};

use crate::decode_budget::DecodeBudget;
use crate::metrics::Metrics;
use crate::store::RelayBlobs;

/// The send priority of attachment streams (document streams have the default, 0).
pub const ATTACHMENT_PRIORITY: i32 = -1;

/// Answers and pieces queued to go out on one stream before the relay stops reading it.
const MAX_QUEUED_FRAMES: usize = 32;

/// QUIC stream error code for an attachment stream closed over a protocol error.
const STREAM_PROTOCOL: u32 = 1;

/// What an attachment stream task needs from the relay.
pub(crate) struct BlobLink {
    pub(crate) send: SendStream,
    pub(crate) recv: RecvStream,
    pub(crate) session: BlobSession,
    pub(crate) blobs: RelayBlobs,
    pub(crate) decode_budget: DecodeBudget,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) remote: SocketAddr,
}

/// Runs `f` on the session off the executor.
async fn blocking<T: Send + 'static>(
    session: &mut Option<BlobSession>,
    blobs: &RelayBlobs,
    f: impl FnOnce(&mut BlobSession, &RelayBlobs) -> T + Send + 'static,
) -> Result<T, String> {
    let mut s = session.take().ok_or("attachment session lost")?;
    let blobs = blobs.clone();
    let (s, r) = tokio::task::spawn_blocking(move || {
        let r = f(&mut s, &blobs);
        (s, r)
    })
    .await
    .map_err(|e| e.to_string())?;
    *session = Some(s);
    Ok(r)
}

impl BlobLink {
    /// Serves the stream until the client finishes it or the connection ends.
    pub(crate) async fn run(self) {
        let remote = self.remote;
        let metrics = self.metrics.clone();
        let mut seen = BlobStats::default();
        let mut session = Some(self.session);
        let (mut send, mut recv) = (self.send, self.recv);
        if let Err(e) = send.set_priority(ATTACHMENT_PRIORITY) {
            debug!(%remote, error = %e, "attachment stream closed at once");
            return;
        }
        // Only attachment messages, in frames no larger than a piece.
        let mut decoder = FrameDecoder::attachments();
        let mut buf = vec![0u8; 64 << 10];
        // A frame being written (a download piece or an answer), and how much of it is out.
        let mut out: std::collections::VecDeque<Vec<u8>> = Default::default();
        let mut written = 0usize;
        let end = 'stream: loop {
            // Every complete frame received so far, each within the relay-wide budget.
            loop {
                let reserved = match decoder.next_frame_cost() {
                    Some(cost) => self.decode_budget.reserve(cost).await,
                    None => None,
                };
                let msg = match decoder.next_message() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(%remote, error = %e, "bad frame on an attachment stream");
                        let _ = recv.stop(STREAM_PROTOCOL.into());
                        break;
                    }
                };
                metrics.received(msg.name());
                let now = now_millis();
                let answer =
                    blocking(&mut session, &self.blobs, move |s, b| s.handle(b, msg, now)).await;
                drop(reserved);
                match answer {
                    Ok(Ok(Ok(msgs))) => {
                        for m in msgs {
                            match codec::encode(&m) {
                                Ok(f) => out.push_back(f),
                                Err(e) => {
                                    warn!(%remote, error = %e, "cannot encode an attachment answer")
                                }
                            }
                        }
                    }
                    Ok(Ok(Err(reason))) => {
                        warn!(%remote, %reason, "attachment stream closed");
                        let _ = send.reset(STREAM_PROTOCOL.into());
                        let _ = recv.stop(STREAM_PROTOCOL.into());
                        return;
                    }
                    Ok(Err(e)) => {
                        warn!(%remote, error = %e, "attachment storage failed");
                        let _ = send.reset(STREAM_PROTOCOL.into());
                        let _ = recv.stop(STREAM_PROTOCOL.into());
                        return;
                    }
                    Err(e) => break 'stream e,
                }
            }
            if let Some(s) = session.as_ref() {
                let now = s.stats();
                metrics
                    .attachment_uploads
                    .inc_by(now.uploads - seen.uploads);
                metrics
                    .attachment_bad_pieces
                    .inc_by(now.bad_pieces - seen.bad_pieces);
                seen = now;
            }
            // The next download piece, once what is queued went out.
            if out.is_empty() && session.as_ref().is_some_and(BlobSession::sending) {
                match blocking(&mut session, &self.blobs, |s, b| s.next_piece(b)).await {
                    Ok(Ok(Some(m))) => match codec::encode(&m) {
                        Ok(f) => out.push_back(f),
                        Err(e) => warn!(%remote, error = %e, "cannot encode a piece"),
                    },
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        warn!(%remote, error = %e, "attachment storage failed");
                        let _ = send.reset(STREAM_PROTOCOL.into());
                        return;
                    }
                    Err(e) => break 'stream e,
                }
            }
            tokio::select! {
                // A client that does not read its answers is not read from either: what waits
                // to go out stays bounded.
                r = recv.read(&mut buf), if out.len() < MAX_QUEUED_FRAMES => match r {
                    Ok(Some(n)) => {
                        metrics.attachment_bytes_received.inc_by(n as u64);
                        decoder.push(&buf[..n]);
                    }
                    Ok(None) => {
                        // The client finished its side: flush what is queued and finish ours.
                        for f in out.drain(..) {
                            let from = std::mem::take(&mut written);
                            if send.write_all(&f[from..]).await.is_err() {
                                break;
                            }
                        }
                        let _ = send.finish();
                        break 'stream "finished".to_string();
                    }
                    Err(e) => break 'stream e.to_string(),
                },
                w = async {
                    match out.front() {
                        Some(f) => send.write(&f[written..]).await,
                        None => std::future::pending().await,
                    }
                } => match w {
                    Ok(n) => {
                        metrics.attachment_bytes_sent.inc_by(n as u64);
                        written += n;
                        if out.front().is_some_and(|f| written == f.len()) {
                            out.pop_front();
                            written = 0;
                        }
                    }
                    Err(e) => break 'stream e.to_string(),
                },
            }
        };
        debug!(%remote, reason = %end, "attachment stream ended");
    }
}

/// How often `serve` removes attachment bytes nothing needs (`attachment gc`).
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes attachment bytes no document refers to any more and uploads abandoned part way,
/// every hour while the relay serves (the first time an hour after it started).
pub(crate) async fn collect_every_hour(
    blobs: RelayBlobs,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use fieldsync_core::attachment::relay::{Collect, collect_garbage};
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + COLLECT_EVERY, COLLECT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
            }
            _ = tick.tick() => {
                let b = blobs.clone();
                let done = tokio::task::spawn_blocking(move || {
                    collect_garbage(&b, now_millis(), Collect::default())
                })
                .await;
                match done {
                    Ok(Ok(c)) if c.unreferenced + c.abandoned > 0 => tracing::info!(
                        unreferenced = c.unreferenced,
                        abandoned = c.abandoned,
                        bytes = c.bytes,
                        "attachment bytes collected"
                    ),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(error = %e, "collecting attachment bytes failed"),
                    Err(e) => warn!(error = %e, "collecting attachment bytes failed"),
                }
            }
        }
    }
}

//! Attachment transfers on a connection's attachment stream (protocol 6): the QUIC driver of
//! core's sans-IO [`Transfer`] (which holds the rules: what to send, resumption, verification,
//! refusals).
//!
//! Once the relay welcomed the laptop, [`Transfers::run`] opens a second stream at a lower
//! send priority than the document stream, and steps the machine with each message from the
//! relay, each wake-up it asked for, and each time an attachment is added or asked for (the
//! client's nudge, or a periodic look for what another process added). The machine's store
//! calls run off the executor. A one-shot sync ([`super::sync_now`]) runs until the machine
//! is done; the background sync keeps the stream open.

use fieldsync_core::attachment::transfer::{Transfer, TransferConfig, TransferStep};

use super::*;

/// The send priority of the attachment stream (the document stream has 0).
const PRIORITY: i32 = -1;
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

impl TransferStats {
    fn add(&self, from: fieldsync_core::attachment::transfer::TransferStats) {
        self.uploaded_files
            .fetch_add(from.uploaded_files, Ordering::Relaxed);
        self.uploaded_bytes
            .fetch_add(from.uploaded_bytes, Ordering::Relaxed);
        self.downloaded_files
            .fetch_add(from.downloaded_files, Ordering::Relaxed);
        self.downloaded_bytes
            .fetch_add(from.downloaded_bytes, Ordering::Relaxed);
        self.bad_pieces
            .fetch_add(from.bad_pieces, Ordering::Relaxed);
    }
}

/// The transfers of one connection.
pub(super) struct Transfers {
    pub(super) client: Client,
    pub(super) conn: quinn::Connection,
    /// A one-shot sync: end once nothing is left to move.
    pub(super) until_done: bool,
    pub(super) stats: Arc<TransferStats>,
    /// Raised when the document sync is done (one shot): a download may still bring
    /// attachments to fetch until then.
    pub(super) docs_done: watch::Receiver<bool>,
}

/// Steps the machine off the executor with the laptop's attachment store.
async fn step(
    client: &Client,
    machine: &mut Option<Transfer>,
    input: Option<Message>,
) -> Result<TransferStep, SyncError> {
    let mut m = machine
        .take()
        .ok_or_else(|| SyncError::Task("the attachment transfer was lost".into()))?;
    let client = client.clone();
    let (m, r) = tokio::task::spawn_blocking(move || {
        let r = client.blobs(|b| Ok(m.step(b, input, now_millis())));
        (m, r)
    })
    .await
    .map_err(|e| SyncError::Task(e.to_string()))?;
    *machine = Some(m);
    r.map_err(|e| SyncError::Io(e.to_string()))?
        .map_err(|e| SyncError::Io(e.to_string()))
}

impl Transfers {
    /// Waits for the relay's welcome (`started`), then moves attachments until done (one
    /// shot) or the connection ends.
    pub(super) async fn run(self, mut started: watch::Receiver<bool>) -> Result<(), SyncError> {
        if started.wait_for(|s| *s).await.is_err() {
            return Ok(());
        }
        if self.until_done && !self.has_work().await? {
            // Nothing yet; the documents the download brings may ask for some.
            let mut docs = self.docs_done.clone();
            let _ = docs.wait_for(|d| *d).await;
            if !self.has_work().await? {
                return Ok(());
            }
        }
        let (send, recv) = self.conn.open_bi().await.map_err(connection_error)?;
        let _ = send.set_priority(PRIORITY);
        let mut link = Link::on_stream(self.conn.clone(), send, recv);
        let mut machine = Some(Transfer::new(TransferConfig {
            until_done: self.until_done,
            ..TransferConfig::default()
        }));
        let r = self.transfer(&mut link, &mut machine).await;
        if let Some(m) = &machine {
            self.stats.add(m.stats());
        }
        link.finish().await;
        if let Err(e) = &r {
            tracing::info!(error = %e, "attachment transfers stopped");
        }
        r
    }

    async fn has_work(&self) -> Result<bool, SyncError> {
        let client = self.client.clone();
        Ok(
            tokio::task::spawn_blocking(move || client.blobs(|b| Transfer::has_work(b)))
                .await
                .map_err(|e| SyncError::Task(e.to_string()))??,
        )
    }

    async fn transfer(
        &self,
        link: &mut Link,
        machine: &mut Option<Transfer>,
    ) -> Result<(), SyncError> {
        let notify = self.client.transfers_notify();
        let mut rescan = tokio::time::interval(RESCAN);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut input = None;
        loop {
            let out = step(&self.client, machine, input.take()).await?;
            for m in &out.send {
                link.send(m)?;
            }
            if out.done {
                if *self.docs_done.borrow() {
                    return Ok(());
                }
                // Done for now, but the download may still bring attachments to fetch.
                let mut docs = self.docs_done.clone();
                tokio::select! {
                    _ = docs.wait_for(|d| *d) => {}
                    () = notify.notified() => {}
                }
                continue;
            }
            let wake = out
                .wake_at
                .map(|at| Duration::from_millis(u64::try_from(at - now_millis()).unwrap_or(0)));
            tokio::select! {
                m = link.inbound.recv() => {
                    let m = m.ok_or_else(|| SyncError::Io("the attachment stream's tasks ended".into()))??;
                    input = Some(m);
                }
                () = notify.notified() => {}
                () = async {
                    match wake {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = rescan.tick(), if !self.until_done => {}
            }
        }
    }
}

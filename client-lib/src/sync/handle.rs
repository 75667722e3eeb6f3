//! [`SyncHandle`]: staying connected in the background — pushing local edits as they commit,
//! receiving live pushes, reconnecting with backoff after any retryable error.

use super::*;

// ---------------------------------------------------------------------------------------------
// Background sync.

pub(super) struct Shared {
    pub(super) status: Mutex<SyncStatus>,
    pub(super) events: broadcast::Sender<SyncEvent>,
    pub(super) first: Mutex<Option<broadcast::Receiver<SyncEvent>>>,
    pub(super) nudge: Notify,
}

impl Shared {
    pub(super) fn emit(&self, e: SyncEvent) {
        tracing::debug!(event = ?e, "sync");
        let _ = self.events.send(e);
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut SyncStatus)) {
        let mut g = match self.status.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g);
    }
}

/// A background task that keeps the replica in sync with the relay. See the module docs.
///
/// Dropping the handle stops the task as well (without waiting for it).
pub struct SyncHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHandle")
            .field("status", &self.status())
            .finish()
    }
}

impl SyncHandle {
    /// Starts syncing `client` with the relay in a tokio task.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn start(client: Client, config: SyncConfig) -> Self {
        let (events, first) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            status: Mutex::new(SyncStatus::new(config.relay.trim().to_string())),
            events,
            first: Mutex::new(Some(first)),
            nudge: Notify::new(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(background(client, config, shared.clone(), stop_rx));
        Self {
            shared,
            stop,
            task: Some(task),
        }
    }

    /// Receives the handle's events. The first call gets every event since
    /// [`SyncHandle::start`]; later calls get events from then on. A receiver that falls
    /// more than 1024 events behind loses the oldest ([`broadcast::error::RecvError::Lagged`]).
    pub fn subscribe(&self) -> broadcast::Receiver<SyncEvent> {
        let first = match self.shared.first.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        first.unwrap_or_else(|| self.shared.events.subscribe())
    }

    /// The current state.
    pub fn status(&self) -> SyncStatus {
        match self.shared.status.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Cuts a reconnect wait short and checks the outbox now.
    pub fn nudge(&self) {
        self.shared.nudge.notify_one();
    }

    /// Stops the task: closes the connection cleanly and waits for it to end.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "the sync task failed");
        }
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub(super) async fn background(
    client: Client,
    config: SyncConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let fatal = |shared: &Shared, e: &SyncError| {
        shared.emit(SyncEvent::Disconnected {
            error: e.to_string(),
        });
        shared.update(|s| {
            s.last_error = Some(e.to_string());
            s.fatal = true;
        });
    };
    let prep = match Prepared::new(&config) {
        Ok(p) => p,
        Err(e) => {
            fatal(&shared, &e);
            finish(&shared);
            return;
        }
    };
    let mut backoff = Backoff::new(config.backoff);
    let mut edits = watch_local_edits(&client);
    // Totals of finished connections; the running one is added on top.
    let mut base = SyncProgress::default();
    // Resume a relay seen before with 0-RTT, unless it just refused early data.
    let mut early = true;
    while !*stop.borrow() {
        shared.update(|s| {
            s.state = SyncState::Connecting;
            s.retry_in_ms = None;
        });
        shared.emit(SyncEvent::Connecting);
        let first = first_customers(&client).await;
        let mut run = Run::new(&client, &config, first);
        let outcome = connect_and_drive(
            &prep, &mut run, &shared, &mut stop, &mut edits, &base, early,
        )
        .await;
        base = base.plus(&run.progress());
        if matches!(outcome, Err(SyncError::EarlyDataRejected)) && early {
            // Nothing sent early reached the relay: again at once, with a full handshake.
            early = false;
            continue;
        }
        early = true;
        if run.caught_up_once {
            // That connection worked: start the next one quickly.
            backoff.reset();
        }
        let e = match outcome {
            Ok(End::Reconnect | End::Synced) => continue,
            // A background sync has no budget.
            Ok(End::Stopped | End::BudgetSpent) => break,
            Err(e) => e,
        };
        tracing::info!(error = %e, "sync connection ended");
        persist_status(&client, &prep.relay, Outcome::Failed(e.to_string())).await;
        if !e.is_retryable() {
            fatal(&shared, &e);
            break;
        }
        shared.emit(SyncEvent::Disconnected {
            error: e.to_string(),
        });
        let delay = backoff.next_delay();
        shared.update(|s| {
            s.state = SyncState::Waiting;
            s.last_error = Some(e.to_string());
            s.failures = backoff.failures();
            s.retry_in_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.nudge.notified() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
    finish(&shared);
}

pub(super) fn finish(shared: &Shared) {
    shared.update(|s| {
        s.state = SyncState::Stopped;
        s.retry_in_ms = None;
    });
    shared.emit(SyncEvent::Stopped);
}

/// One connection of the background task, until stopped, an error, or a deliberate
/// reconnect.
pub(super) async fn connect_and_drive(
    prep: &Prepared,
    run: &mut Run,
    shared: &Arc<Shared>,
    stop: &mut watch::Receiver<bool>,
    edits: &mut mpsc::Receiver<()>,
    base: &SyncProgress,
    early: bool,
) -> Result<End, SyncError> {
    let connected = tokio::select! {
        r = prep.connect(early) => r?,
        _ = stop.wait_for(|s| *s) => return Ok(End::Stopped),
    };
    let mut connected = connected;
    let conn = connected.conn.clone();
    let mut link = match Link::open(conn.clone()).await {
        Ok(l) => l,
        Err(e) => {
            conn.close(CLOSE_ERROR.into(), b"stream");
            return Err(e);
        }
    };
    shared.update(|s| s.state = SyncState::Syncing);
    let (started, started_rx) = watch::channel(false);
    // The background transfers never finish on their own: no end of the documents to wait for.
    let (_docs_done, docs_done_rx) = watch::channel(true);
    let files = run.transfers(&conn, false, started_rx, docs_done_rx);
    let mut sink = |n: Note<'_>| match n {
        Note::Connected { scopes, role } => {
            let _ = started.send(true);
            shared.update(|s| {
                s.scopes = scopes.to_vec();
                s.role = Some(role);
                s.connections += 1;
            });
            shared.emit(SyncEvent::Connected {
                scopes: scopes.to_vec(),
                role,
            });
        }
        Note::Uploaded(n) => shared.emit(SyncEvent::Uploaded { n }),
        Note::Rejected { hash, reason } => shared.emit(SyncEvent::Rejected { hash, reason }),
        Note::Received(items) => shared.emit(SyncEvent::Received { items }),
        Note::CaughtUp => {
            shared.update(|s| {
                s.last_sync_finished_at = Some(now_millis());
                s.last_error = None;
                s.failures = 0;
            });
            shared.emit(SyncEvent::CaughtUp);
        }
        Note::Progress(p) => shared.update(|s| {
            s.state = if p.caught_up {
                SyncState::CaughtUp
            } else {
                SyncState::Syncing
            };
            let t = base.plus(p);
            s.changes_sent = t.changes_sent;
            s.changes_acked = t.changes_acked;
            s.changes_rejected = t.changes_rejected;
            s.items_received = t.items_received;
            s.bytes_sent = t.bytes_sent;
            s.bytes_received = t.bytes_received;
        }),
    };
    let r = connected
        .run_session(
            prep,
            run.drive(&mut link, prep, Until::Stopped(stop), edits, &mut sink),
        )
        .await;
    if let Some(f) = files {
        f.abort();
    }
    match &r {
        Ok(_) => link.close(0, "bye").await,
        Err(e) => {
            let (code, reason) = close_reason(e);
            link.close(code, &reason).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), connected.endpoint.wait_idle()).await;
    r
}

//! Live updates for the page: `GET /api/events` streams server-sent events fed by
//! [`Client::subscribe`] (documents changed, by a local edit or a sync) and by the
//! background sync's events (connecting, caught up, a refused change, …).
//!
//! The replica's notifications arrive on a std channel; a thread batches them over a quarter
//! of a second (a sync that brings a thousand documents makes one event, not a thousand) and
//! hands them to a broadcast channel every open stream reads.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::AppState;
use crate::sync::{SyncEvent, SyncState};
use crate::{Client, DocId, Origin};

/// Past this many documents in one batch the page is told to re-read everything it shows
/// (`resync`) instead of being sent the list.
const MAX_IDS: usize = 500;

/// How long document notifications are gathered into one event.
const BATCH: Duration = Duration::from_millis(250);

/// One event for the page.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub(super) enum LiveEvent {
    /// Documents changed.
    Docs {
        ids: Vec<DocId>,
        /// `remote` if any of them came from elsewhere (a sync, an import).
        origin: Origin,
    },
    /// The background sync reported something.
    Sync {
        event: SyncEvent,
        state: &'static str,
    },
    /// Too much changed to list (or this stream fell behind): re-read everything shown.
    Resync,
}

impl LiveEvent {
    fn name(&self) -> &'static str {
        match self {
            Self::Docs { .. } => "docs",
            Self::Sync { .. } => "sync",
            Self::Resync => "resync",
        }
    }
}

/// Where the live events gather.
pub(super) struct Hub {
    events: broadcast::Sender<LiveEvent>,
    stop: watch::Sender<bool>,
}

impl Hub {
    /// Starts forwarding `client`'s document notifications and `sync`'s events.
    pub(super) fn start(client: &Client) -> Self {
        let (events, _) = broadcast::channel(256);
        let (stop, stopped) = watch::channel(false);
        let docs = client.subscribe();
        let tx = events.clone();
        let spawned = std::thread::Builder::new()
            .name("fieldsync-app-live".into())
            .spawn(move || forward_docs(&docs, &tx, &stopped));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "live document updates are off: no thread for them");
        }
        Self { events, stop }
    }

    /// Forwards the background sync's events, each with the state the sync is in once it
    /// happened (read from the handle, which `app` holds; the event alone does not tell: a
    /// live push received while caught up leaves it caught up).
    pub(super) fn forward_sync(
        &self,
        mut rx: broadcast::Receiver<SyncEvent>,
        state: impl Fn() -> Option<SyncState> + Send + 'static,
    ) {
        let tx = self.events.clone();
        let mut stopped = self.stop.subscribe();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    e = rx.recv() => e,
                    _ = stopped.wait_for(|s| *s) => break,
                };
                match event {
                    Ok(event) => {
                        // No state: the app is gone, and with it every stream.
                        let Some(now) = state() else { break };
                        let _ = tx.send(LiveEvent::Sync {
                            event,
                            state: state_name(now),
                        });
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// Ends every open stream and the forwarding.
    pub(super) fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// A sync state as `GET /api/sync` names it.
pub(super) fn state_name(s: SyncState) -> &'static str {
    match s {
        SyncState::Connecting => "connecting",
        SyncState::Syncing => "syncing",
        SyncState::CaughtUp => "caught_up",
        SyncState::Waiting => "waiting",
        SyncState::Stopped => "stopped",
    }
}

fn forward_docs(
    docs: &std::sync::mpsc::Receiver<crate::DocEvent>,
    tx: &broadcast::Sender<LiveEvent>,
    stopped: &watch::Receiver<bool>,
) {
    loop {
        let first = match docs.recv_timeout(Duration::from_secs(1)) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) if *stopped.borrow() => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let until = Instant::now() + BATCH;
        let mut ids = BTreeSet::from([first.id]);
        let mut remote = first.origin == Origin::Remote;
        let mut capped = false;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match docs.recv_timeout(left) {
                Ok(e) => {
                    remote |= e.origin == Origin::Remote;
                    if ids.len() < MAX_IDS {
                        ids.insert(e.id);
                    } else {
                        capped = true;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(if capped {
            LiveEvent::Resync
        } else {
            LiveEvent::Docs {
                ids: ids.into_iter().collect(),
                origin: if remote {
                    Origin::Remote
                } else {
                    Origin::Local
                },
            }
        });
        if *stopped.borrow() {
            return;
        }
    }
}

/// `GET /api/events`: the stream. A page that falls behind gets a `resync` event (reload
/// what you show) instead of the events it missed.
pub(super) async fn events(
    State(app): State<Arc<AppState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = app.live.events.subscribe();
    let stopped = app.live.stop.subscribe();
    let stream = futures_util::stream::unfold((rx, stopped), |(mut rx, mut stopped)| async move {
        if *stopped.borrow() {
            return None;
        }
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = stopped.wait_for(|s| *s) => return None,
        };
        let out = match event {
            Ok(LiveEvent::Resync) => Event::default().event("resync").data("{}"),
            Ok(e) => Event::default()
                .event(e.name())
                .json_data(&e)
                .unwrap_or_else(|_| Event::default().event("resync").data("{}")),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("resync").data("{}")
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(out), (rx, stopped)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

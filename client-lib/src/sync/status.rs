//! What the sync is doing and last did: [`SyncEvent`]s of a running [`super::SyncHandle`],
//! [`SyncStatus`], and the outcome kept in the replica's metadata ([`load_status`]).

use super::*;

/// Store meta key holding the last sync outcome ([`PersistedStatus`], JSON).
pub const STATUS_META_KEY: &str = "sync.status";

/// What a [`SyncHandle`] reports as it goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SyncEvent {
    /// Opening a connection.
    Connecting,
    /// The relay accepted the device.
    Connected {
        /// Scopes the device sees.
        scopes: Vec<String>,
        /// The device's role.
        role: Role,
    },
    /// The relay acknowledged `n` local changes.
    Uploaded {
        /// Changes acknowledged.
        n: u64,
    },
    /// A download batch with `items` entries was applied.
    Received {
        /// Items applied.
        items: u64,
    },
    /// Caught up with the relay and every local change answered. Sent again after later
    /// uploads or downloads complete.
    CaughtUp,
    /// The connection (or the attempt) ended with an error; a retry follows unless the
    /// error is not retryable, in which case [`SyncEvent::Stopped`] follows.
    Disconnected {
        /// What went wrong.
        error: String,
    },
    /// The relay refused a local change for good (or the change depends on one it refused);
    /// it was moved to the quarantine (`Store::quarantine`, `fieldsync quarantine`).
    Rejected {
        /// Hex change hash.
        hash: String,
        /// The relay's reason.
        reason: String,
    },
    /// The handle stopped (asked to, or after a non-retryable error).
    Stopped,
}

/// Where a [`SyncHandle`] stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// Connecting to the relay.
    Connecting,
    /// Connected, exchanging data.
    Syncing,
    /// Connected, caught up, every local change answered; live.
    CaughtUp,
    /// Waiting before the next attempt.
    Waiting,
    /// Stopped.
    Stopped,
}

/// A snapshot of a [`SyncHandle`]'s state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The relay address.
    pub relay: String,
    /// Current state.
    pub state: SyncState,
    /// Scopes granted on the current (or last) connection.
    pub scopes: Vec<String>,
    /// Role granted on the current (or last) connection.
    pub role: Option<Role>,
    /// When the replica last caught up completely (ms since the Unix epoch).
    pub last_sync_finished_at: Option<Millis>,
    /// The last error, cleared when a sync finishes.
    pub last_error: Option<String>,
    /// The handle stopped because of an error that retrying cannot fix.
    pub fatal: bool,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// When waiting: the delay before the next attempt, in ms.
    pub retry_in_ms: Option<u64>,
    /// Connections established since start.
    pub connections: u64,
    /// Totals since start.
    pub changes_sent: u64,
    /// Local changes acknowledged since start.
    pub changes_acked: u64,
    /// Local changes quarantined since start.
    pub changes_rejected: u64,
    /// Download items applied since start.
    pub items_received: u64,
    /// Frame bytes written since start.
    pub bytes_sent: u64,
    /// Frame bytes read since start.
    pub bytes_received: u64,
}

impl SyncStatus {
    pub(super) fn new(relay: String) -> Self {
        Self {
            relay,
            state: SyncState::Connecting,
            scopes: Vec::new(),
            role: None,
            last_sync_finished_at: None,
            last_error: None,
            fatal: false,
            failures: 0,
            retry_in_ms: None,
            connections: 0,
            changes_sent: 0,
            changes_acked: 0,
            changes_rejected: 0,
            items_received: 0,
            bytes_sent: 0,
            bytes_received: 0,
        }
    }
}

/// The last sync outcome as stored in the replica ([`STATUS_META_KEY`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedStatus {
    /// When a sync last finished (caught up, outbox answered), ms since the Unix epoch.
    pub last_sync_finished_at: Option<Millis>,
    /// The error of the last attempt, if it failed (kept until a sync finishes).
    pub last_error: Option<String>,
    /// The relay of the last attempt.
    pub relay: Option<String>,
    /// When the last attempt ended, ms since the Unix epoch.
    #[serde(default)]
    pub last_attempt_at: Option<Millis>,
    /// When the last attempt ended, the relay had more to send than it fetched (a metered sync
    /// stopped at its budget); a finished sync clears it.
    #[serde(default)]
    pub download_waiting: bool,
    /// About how many documents were waiting then (see
    /// [`SyncReport::download_waiting_documents`](super::SyncReport::download_waiting_documents)).
    #[serde(default)]
    pub download_waiting_documents: u64,
    /// About how many raw bytes those were.
    #[serde(default)]
    pub download_waiting_bytes: u64,
}

/// Reads the last sync outcome stored in the replica, if any.
pub fn load_status(client: &Client) -> Result<Option<PersistedStatus>, ClientError> {
    client.with_store(|store| read_status(store))
}

/// Store meta key holding the scopes the relay last granted this device (JSON array).
pub const GRANT_META_KEY: &str = "sync.granted_scopes";

/// The scopes the relay granted this replica's device (`*` stands for every scope), as it
/// last said: at enrolment ([`super::enrol_replica`]) and at the start of every sync. A
/// replica that synced before this was recorded falls back to its download cursor, which
/// keeps one position per granted scope. `None` for a replica never enrolled or synced.
pub fn granted_scopes(client: &Client) -> Result<Option<Vec<String>>, ClientError> {
    client.with_store(|store| {
        if let Some(scopes) = store
            .meta(GRANT_META_KEY)?
            .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
        {
            return Ok(Some(scopes));
        }
        Ok(ClientSession::load_cursor(store)?.map(|c| c.scopes.into_keys().collect()))
    })
}

/// Store meta key holding when the latest connection to the relay that brought something
/// began (ms since the Unix epoch, decimal text): what the last sync brought is what arrived
/// after it.
pub const SESSION_META_KEY: &str = "sync.session_started_at";

/// When the latest connection to the relay that brought something began, if one ever did.
pub fn session_started_at(client: &Client) -> Result<Option<Millis>, ClientError> {
    client.with_store(|store| {
        Ok(store
            .meta(SESSION_META_KEY)?
            .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok()))
    })
}

/// Records the start of a connection that brought something, logging instead of failing.
pub(super) fn remember_session_start(client: &Client, at: Millis) {
    let at = at.to_string();
    if let Err(e) = client.with_store(|store| store.set_meta(SESSION_META_KEY, at.as_bytes())) {
        tracing::warn!(error = %e, "could not record the start of the connection");
    }
}

/// Records the granted scopes when they changed, logging instead of failing.
pub(super) fn remember_grant(client: &Client, scopes: &[String]) {
    let r = client.with_store(|store| -> Result<(), ClientError> {
        let json = serde_json::to_vec(scopes).map_err(|e| ClientError::Corrupt(e.to_string()))?;
        if store.meta(GRANT_META_KEY)?.as_deref() != Some(json.as_slice()) {
            store.set_meta(GRANT_META_KEY, &json)?;
        }
        Ok(())
    });
    if let Err(e) = r {
        tracing::warn!(error = %e, "could not record the granted scopes");
    }
}

pub(super) fn read_status(store: &Store) -> Result<Option<PersistedStatus>, ClientError> {
    match store.meta(STATUS_META_KEY)? {
        None => Ok(None),
        // A status written by another version that does not parse is not worth failing for.
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).unwrap_or_default())),
    }
}

/// How a sync attempt ended, as the replica records it.
pub(super) enum Outcome {
    /// Caught up, every local change answered.
    Finished,
    /// A metered sync stopped at its budget with more waiting on the relay: about this many
    /// documents and raw bytes.
    StoppedAtBudget {
        /// Documents waiting.
        documents: u64,
        /// Their raw bytes.
        bytes: u64,
    },
    /// The attempt failed.
    Failed(String),
}

fn write_status(store: &mut Store, relay: &str, outcome: &Outcome) -> Result<(), ClientError> {
    let mut st = read_status(store)?.unwrap_or_default();
    let now = now_millis();
    st.relay = Some(relay.to_string());
    st.last_attempt_at = Some(now);
    match outcome {
        Outcome::Finished => {
            st.last_sync_finished_at = Some(now);
            st.last_error = None;
            st.download_waiting = false;
            st.download_waiting_documents = 0;
            st.download_waiting_bytes = 0;
        }
        Outcome::StoppedAtBudget { documents, bytes } => {
            st.last_error = None;
            st.download_waiting = true;
            st.download_waiting_documents = *documents;
            st.download_waiting_bytes = *bytes;
        }
        Outcome::Failed(e) => st.last_error = Some(e.clone()),
    }
    let json = serde_json::to_vec(&st).map_err(|e| ClientError::Corrupt(e.to_string()))?;
    store.set_meta(STATUS_META_KEY, &json)?;
    Ok(())
}

/// Records an outcome, logging instead of failing (the sync result matters more).
pub(super) async fn persist_status(client: &Client, relay: &str, outcome: Outcome) {
    let client = client.clone();
    let relay = relay.to_string();
    let r = tokio::task::spawn_blocking(move || {
        client.with_store(|store| write_status(store, &relay, &outcome))
    })
    .await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not record the sync status"),
        Err(e) => tracing::warn!(error = %e, "could not record the sync status"),
    }
}

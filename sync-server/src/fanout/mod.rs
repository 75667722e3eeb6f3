//! Fan-out: how a change accepted once reaches every live connection of its scope.
//!
//! - [`tail::Tail`]: the newest log entries of every scope in memory, bounded in bytes.
//! - [`hub::Hub`]: which connections follow which scopes.
//! - [`Fanout`]: one follower task per relay node reads what the log gained since the tail's
//!   high, **once for all connections** (one store read per growth of the log, however many
//!   connections wait), adds it to the tail and wakes only the connections whose scopes got
//!   entries. The store signals growth through its `subscribe` channel: this node's appends,
//!   and on PostgreSQL other nodes' (`LISTEN`) and the once-a-second poll.
//! - [`LiveStore`]: the store as a connection's session sees it: log reads that the tail can
//!   answer come from memory, everything else from the store.
//!
//! A connection that fell behind the tail (offline, slow, or stuck on a full send window)
//! reads the store like any catching-up client; the tail's memory does not grow for it, and it
//! holds back no one else: each connection writes to its own QUIC stream from its own task,
//! and a full send window only stops that task. The entries a connection reads are copied
//! into its batch and encoded for it: a batch carries the connection's cursor, so the frame is
//! its own, but nothing is read or decoded from the database per connection.

pub mod hub;
pub mod tail;

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fieldsync_core::DocId;
use fieldsync_core::protocol::messages::Hash;
use fieldsync_core::protocol::{
    DeviceInfo, DevicePolicy, Lack, Lane, LogEntry, Outcome, RelayStorage, StorageError,
    UploadChange, WipeReport,
};
use tokio::sync::watch;
use tracing::warn;
use uuid::Uuid;

use crate::store::{RelayStore, RelayStoreError};
pub use hub::{Hub, Subscription};
use tail::Tail;

/// Default bytes of log entries held in memory (payload plus bookkeeping).
pub const DEFAULT_TAIL_BYTES: usize = 32 << 20;
/// Most bytes the follower reads from the store at a time.
const READ_BYTES: usize = 1 << 20;
/// Wait before the follower tries again after the store failed.
const RETRY: Duration = Duration::from_secs(1);
/// Longest a read waits for the follower to bring the tail up to what the store committed
/// before it reads the store instead.
const CATCH_UP_WAIT: Duration = Duration::from_millis(250);

/// The tail, the subscriptions, and the follower that keeps them current (see the module
/// docs).
#[derive(Debug)]
pub struct Fanout {
    tail: Mutex<Tail>,
    /// Signalled (with the tail's lock) whenever the tail's high moves.
    moved: Condvar,
    hub: Arc<Hub>,
    /// The store's highest committed sequence number as it publishes it: while the tail is
    /// behind it, reads go to the store (see [`Fanout::read`]).
    published: watch::Receiver<u64>,
}

impl Fanout {
    /// A fan-out for `store` whose tail starts after `high` (the store's highest sequence
    /// number now) and holds about `cap` bytes.
    pub fn new(store: &RelayStore, high: u64, cap: usize) -> Arc<Self> {
        Arc::new(Self {
            tail: Mutex::new(Tail::new(high, cap)),
            moved: Condvar::new(),
            hub: Arc::new(Hub::default()),
            published: store.subscribe(),
        })
    }

    fn tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows `scopes` (a device's) until the subscription is dropped.
    pub fn subscribe(&self, scopes: &[String]) -> Subscription {
        self.hub.subscribe(scopes)
    }

    /// Subscriptions registered, once per scope they follow.
    pub fn subscriptions(&self) -> usize {
        self.hub.registered()
    }

    /// Entries and bytes held in memory.
    pub fn held(&self) -> (usize, usize) {
        self.tail().held()
    }

    /// Reads what the log gained since the tail's high into the tail and wakes the
    /// connections that see it. Blocks. A backlog larger than the tail (a bulk import) is
    /// not read at all: the tail starts again after it and every connection is woken to read
    /// the store.
    pub fn catch_up(&self, store: &RelayStore) -> Result<(), RelayStoreError> {
        let mut read = 0usize;
        loop {
            let after = self.tail().high();
            let (entries, more) = store.read_log_all(after, READ_BYTES)?;
            let upto = entries.last().map_or(after, |(_, e)| e.seq);
            read += entries
                .iter()
                .map(|(_, e)| e.entry.raw_len() + tail::ENTRY_OVERHEAD)
                .sum::<usize>();
            let added = self.tail().extend(entries, upto);
            self.moved.notify_all();
            self.hub.wake(added.scopes.iter().map(|s| &**s), added.all);
            if !more {
                return Ok(());
            }
            if read > self.tail().cap() {
                let high = store.high_seq()?;
                self.tail().restart(high);
                self.moved.notify_all();
                self.hub.wake_everyone();
                return Ok(());
            }
        }
    }

    /// Keeps the tail current until `stop` (see the module docs).
    pub async fn follow(self: Arc<Self>, store: RelayStore, mut stop: watch::Receiver<bool>) {
        let mut log = store.subscribe();
        let mut failing = false;
        loop {
            let target = *log.borrow_and_update();
            if failing || target > self.tail().high() {
                let (me, s) = (self.clone(), store.clone());
                failing = match tokio::task::spawn_blocking(move || me.catch_up(&s)).await {
                    Ok(Ok(())) => false,
                    Ok(Err(e)) => {
                        warn!(error = %e, "cannot read the log for live connections; retrying");
                        true
                    }
                    Err(e) => {
                        warn!(error = %e, "log follower task failed; retrying");
                        true
                    }
                };
            }
            tokio::select! {
                r = stop.wait_for(|v| *v) => { let _ = r; return; }
                r = log.changed() => if r.is_err() { return },
                () = tokio::time::sleep(RETRY), if failing => {}
            }
        }
    }

    /// Entries of `scope` after `after` from the tail, if it can answer (see
    /// [`Tail::read`]). A session must see everything acknowledged before its read, as a read
    /// of the store does (a laptop's one-off sync that ends "caught up" holds every change
    /// acknowledged before it asked). While the tail is behind what the store has committed,
    /// the follower is reading the newest entries (or a replacement that deletes some the
    /// tail holds): the read waits for it, up to [`CATCH_UP_WAIT`], rather than every woken
    /// connection reading the store meanwhile; a follower that does not catch up in time
    /// leaves the read to the store.
    fn read(&self, scope: &str, after: u64, max_bytes: usize) -> Option<(Vec<LogEntry>, bool)> {
        let published = *self.published.borrow();
        let mut tail = self.tail();
        if tail.high() < published {
            tail = self
                .moved
                .wait_timeout_while(tail, CATCH_UP_WAIT, |t| t.high() < published)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if tail.high() < published {
                return None;
            }
        }
        tail.read(scope, after, max_bytes)
    }
}

/// The store as one connection's session sees it: the relay's [`RelayStore`] with log reads
/// answered from the tail where it can (see the module docs).
#[derive(Clone, Debug)]
pub struct LiveStore {
    /// The connection's store handle.
    pub store: RelayStore,
    /// The relay node's fan-out.
    pub fanout: Arc<Fanout>,
}

impl RelayStorage for LiveStore {
    fn epoch(&mut self) -> Result<Uuid, StorageError> {
        RelayStorage::epoch(&mut self.store)
    }

    fn authenticate(
        &mut self,
        device_id: Uuid,
        credential: Option<&str>,
    ) -> Result<Option<DeviceInfo>, StorageError> {
        RelayStorage::authenticate(&mut self.store, device_id, credential)
    }

    fn append(
        &mut self,
        device: &DeviceInfo,
        changes: &[UploadChange],
        relayed: bool,
    ) -> Result<Vec<Outcome>, StorageError> {
        RelayStorage::append(&mut self.store, device, changes, relayed)
    }

    fn high_seq(&mut self) -> Result<u64, StorageError> {
        RelayStorage::high_seq(&mut self.store)
    }

    fn read_log(
        &mut self,
        scope: &str,
        after: u64,
        max_bytes: usize,
        lane: Lane<'_>,
    ) -> Result<(Vec<LogEntry>, bool), StorageError> {
        if matches!(lane, Lane::All)
            && let Some(read) = self.fanout.read(scope, after, max_bytes)
        {
            return Ok(read);
        }
        RelayStorage::read_log(&mut self.store, scope, after, max_bytes, lane)
    }

    fn read_snapshots(
        &mut self,
        scope: &str,
        after: Option<DocId>,
        max_bytes: usize,
        lane: Lane<'_>,
    ) -> Result<(Vec<(DocId, Vec<u8>)>, bool), StorageError> {
        RelayStorage::read_snapshots(&mut self.store, scope, after, max_bytes, lane)
    }

    fn heads_of(&mut self, ids: &[DocId]) -> Result<Vec<(DocId, Vec<Hash>)>, StorageError> {
        RelayStorage::heads_of(&mut self.store, ids)
    }

    fn waiting(
        &mut self,
        scope: &str,
        snapshots_after: Option<Option<DocId>>,
        log_after: u64,
    ) -> Result<(u64, u64), StorageError> {
        RelayStorage::waiting(&mut self.store, scope, snapshots_after, log_after)
    }

    fn missing(&mut self, docs: &[(DocId, Vec<Hash>)]) -> Result<Vec<Lack>, StorageError> {
        RelayStorage::missing(&mut self.store, docs)
    }

    fn departures(&mut self, scope: &str, upto: u64) -> Result<Vec<(DocId, String)>, StorageError> {
        RelayStorage::departures(&mut self.store, scope, upto)
    }

    fn touch_device(&mut self, device_id: Uuid) -> Result<(), StorageError> {
        RelayStorage::touch_device(&mut self.store, device_id)
    }

    fn record_departures(&mut self, device_id: Uuid, docs: &[DocId]) -> Result<(), StorageError> {
        RelayStorage::record_departures(&mut self.store, device_id, docs)
    }

    fn redeem(
        &mut self,
        device_id: Uuid,
        token: &str,
        credential: &str,
    ) -> Result<Result<DeviceInfo, String>, StorageError> {
        RelayStorage::redeem(&mut self.store, device_id, token, credential)
    }

    fn refresh_device(&mut self, device: &DeviceInfo) -> Result<Option<DeviceInfo>, StorageError> {
        RelayStorage::refresh_device(&mut self.store, device)
    }

    fn device_policy(&mut self, device: &DeviceInfo) -> Result<DevicePolicy, StorageError> {
        RelayStorage::device_policy(&mut self.store, device)
    }

    fn now_millis(&mut self) -> i64 {
        RelayStorage::now_millis(&mut self.store)
    }

    fn record_wiped(&mut self, device_id: Uuid, report: &WipeReport) -> Result<(), StorageError> {
        RelayStorage::record_wiped(&mut self.store, device_id, report)
    }
}

//! The relay's side of a connection, sans IO: feed it messages, send what it returns.

use uuid::Uuid;

use super::download::{Fill, Lane};
use super::messages::{
    Cursor, DOWNLOAD_WINDOW, DevicePolicy, Entry, ErrorCode, Hash, Item, MAGIC,
    MAX_FIRST_CUSTOMERS, Message, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, Rejection,
    ScopeCursor, UploadChange, WipeOrder, WipeReport,
};
use super::validate::DeviceInfo;
use crate::ids::{DocId, Millis};
use std::time::Duration;

/// Why relay storage failed, as a session tells the client (the details stay in the relay's
/// log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Every database connection is in use: the client retries shortly.
    #[error("the relay is busy; try again in a moment")]
    Busy,
    /// The client left, and the work for it was stopped.
    #[error("the client left")]
    ClientLeft,
    /// The relay's disk is full: writes fail, stored data is intact.
    #[error("the relay's disk is full; your changes stay queued until it has room")]
    DiskFull,
    /// Anything else (details in the relay's log).
    #[error("relay storage failure (details in the relay log)")]
    Failed,
}

/// A page of document snapshots `(id, bytes)` and whether more follow.
pub type SnapshotPage = (Vec<(DocId, Vec<u8>)>, bool);

/// The result of storing one uploaded change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now or earlier (re-sending is harmless): the change's hash.
    Stored(Hash),
    /// Refused.
    Refused(Rejection),
    /// Refused, and the change does not fit its document (no honest writer makes one): the
    /// storage examined no further change of the upload, and the session closes the
    /// connection after acknowledging it.
    Malformed(Rejection),
}

/// What the relay lacks of one document a client named in a `Heads` exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lack {
    /// Nothing: the relay has every head the client named; it files the document under
    /// `scope`.
    Nothing {
        /// The scope the relay files the document under.
        scope: String,
    },
    /// The whole document: the relay does not hold it.
    Document,
    /// Some of the client's changes: the relay holds the document, filed under `scope`, at
    /// `heads`.
    Changes {
        /// The scope the relay files the document under.
        scope: String,
        /// The relay's heads of the document.
        heads: Vec<Hash>,
    },
}

/// One entry read from the relay's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Sequence number.
    pub seq: u64,
    /// The document.
    pub doc_id: DocId,
    /// What to apply.
    pub entry: Entry,
    /// For a single change: its hash (lets a session skip echoing a client's own uploads).
    pub hash: Option<Hash>,
    /// For `Leave`: the scope the document is filed under now (it may have moved on, or come
    /// back, since the entry). A reader that sees that scope keeps the document, so the entry
    /// is not sent to it.
    pub moved_to: Option<String>,
}

/// What the relay protocol needs from storage. Implemented by the relay's SQLite and
/// PostgreSQL stores; everything runs inside the calling task.
pub trait RelayStorage {
    /// The relay's epoch: a new value whenever the log's sequence numbers restart.
    fn epoch(&mut self) -> Result<Uuid, StorageError>;
    /// The enrolled, unrevoked device with this id and credential; `None` refuses it.
    fn authenticate(
        &mut self,
        device_id: Uuid,
        credential: Option<&str>,
    ) -> Result<Option<DeviceInfo>, StorageError>;
    /// Validates and stores uploaded changes in order, durably, before returning.
    /// `relayed` marks a repair upload that may carry other devices' changes.
    fn append(
        &mut self,
        device: &DeviceInfo,
        changes: &[UploadChange],
        relayed: bool,
    ) -> Result<Vec<Outcome>, StorageError>;
    /// The highest sequence number assigned so far.
    fn high_seq(&mut self) -> Result<u64, StorageError>;
    /// Log entries of `scope` (`*` = all) in `lane` with sequence numbers above `after`, in
    /// order, up to about `max_bytes`. Must never skip an entry that a later call could
    /// return with a lower sequence number. Always returns at least one entry if any is
    /// waiting (even one larger than `max_bytes`); the flag says whether more entries are
    /// waiting after these.
    fn read_log(
        &mut self,
        scope: &str,
        after: u64,
        max_bytes: usize,
        lane: Lane<'_>,
    ) -> Result<(Vec<LogEntry>, bool), StorageError>;
    /// Snapshots of the documents currently in `scope` (`*` = all) and in `lane` with ids
    /// above `after`, in id order, up to about `max_bytes` (at least one if any is waiting);
    /// the flag says whether more documents follow.
    fn read_snapshots(
        &mut self,
        scope: &str,
        after: Option<DocId>,
        max_bytes: usize,
        lane: Lane<'_>,
    ) -> Result<SnapshotPage, StorageError>;
    /// About how much a download of `scope` has left: the documents in it with ids above
    /// `snapshots_after` (when the download is still in its snapshot phase: `Some`) and those
    /// with log entries above `log_after`, as `(documents, raw bytes)`.
    fn waiting(
        &mut self,
        scope: &str,
        snapshots_after: Option<Option<DocId>>,
        log_after: u64,
    ) -> Result<(u64, u64), StorageError>;
    /// The stored heads of each of `ids` the relay holds (in any order). A session asks only
    /// for the documents of a snapshot page after it stored changes for its client, to leave
    /// out those the client wrote itself. Storage that does not answer (the default) makes the
    /// session send every snapshot.
    fn heads_of(&mut self, _ids: &[DocId]) -> Result<Vec<(DocId, Vec<Hash>)>, StorageError> {
        Ok(Vec::new())
    }
    /// For each document and the heads a client has, what the relay lacks of it.
    fn missing(&mut self, docs: &[(DocId, Vec<Hash>)]) -> Result<Vec<Lack>, StorageError>;
    /// Documents that left `scope` at or before log position `upto`, with the scope each is
    /// filed under now. A download that starts with snapshots of `scope` never reads those
    /// `Leave` entries, yet the replica may hold such a document (written before its first
    /// download, or kept from before its log restarted); the session sends a `Leave` for each
    /// that is now outside the device's scopes. Storage without scope moves has none.
    fn departures(
        &mut self,
        _scope: &str,
        _upto: u64,
    ) -> Result<Vec<(DocId, String)>, StorageError> {
        Ok(Vec::new())
    }
    /// Records that `device_id` is being sent the departure of `docs` from its scopes (called
    /// before the batch that carries the `Leave` entries goes out): from then on a move's
    /// grace period no longer excuses that device's changes to them. Storage without scope
    /// moves records nothing.
    fn record_departures(&mut self, _device_id: Uuid, _docs: &[DocId]) -> Result<(), StorageError> {
        Ok(())
    }
    /// Records that a device finished a sync exchange (for `device list`).
    fn touch_device(&mut self, _device_id: Uuid) -> Result<(), StorageError> {
        Ok(())
    }
    /// Redeems a one-time enrolment token for `device_id` (see [`Message::Enrol`]): binds it,
    /// stores the credential's hash and returns the new device, or the reason it is refused.
    /// Storage without enrolment tokens refuses every token.
    fn redeem(
        &mut self,
        _device_id: Uuid,
        _token: &str,
        _credential: &str,
    ) -> Result<Result<DeviceInfo, String>, StorageError> {
        Ok(Err("this relay does not accept enrolment tokens".into()))
    }
    /// The device's current grant, read again from storage: `None` when it was revoked or
    /// removed since it connected. A session calls this before every upload and download
    /// request, so a revocation or a changed grant takes effect on an open connection too.
    /// Storage whose devices never change returns the device as it is.
    fn refresh_device(&mut self, device: &DeviceInfo) -> Result<Option<DeviceInfo>, StorageError> {
        Ok(Some(device.clone()))
    }
    /// The device's standing orders (a wipe, the offline lease), read at its handshake.
    /// [`RelayStorage::authenticate`] admits a revoked device whose wipe is still to be
    /// carried out, so that it hears the order. Storage without such orders has none.
    fn device_policy(&mut self, _device: &DeviceInfo) -> Result<DevicePolicy, StorageError> {
        Ok(DevicePolicy::default())
    }
    /// The relay's clock, Unix milliseconds (sent to laptops with their lease, for people:
    /// the lease runs on the laptop's clock). Storage without a clock says 0.
    fn now_millis(&mut self) -> i64 {
        0
    }
    /// Records that a device carried out its wipe order (the audit trail); from then on it is
    /// revoked for good.
    fn record_wiped(&mut self, _device_id: Uuid, _report: &WipeReport) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Limits of a relay session.
#[derive(Clone, Debug)]
pub struct RelayLimits {
    /// Largest batch the relay builds, in bytes before compression.
    pub max_batch_bytes: usize,
    /// Most changes accepted in one `Upload`.
    pub max_upload_changes: usize,
    /// How long a connection may stay without a `Hello` (or `Enrol`) before the session ends
    /// it (see [`RelaySession::poll_timeout`]).
    pub hello_timeout: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_batch_bytes: 2 << 20,
            max_upload_changes: 20_000,
            hello_timeout: Duration::from_secs(5),
        }
    }
}

/// What to send after handling an input, and whether to close the connection afterwards.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Messages to send, in order.
    pub messages: Vec<Message>,
    /// Close the connection after sending them.
    pub close: bool,
}

impl Output {
    fn send(m: Message) -> Self {
        Self {
            messages: vec![m],
            close: false,
        }
    }

    fn fatal(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            messages: vec![Message::Error {
                code,
                reason: reason.into(),
            }],
            close: true,
        }
    }
}

/// One client connection, as seen by the relay.
#[derive(Debug)]
pub struct RelaySession {
    limits: RelayLimits,
    device: Option<DeviceInfo>,
    epoch: Option<Uuid>,
    /// The position up to which this session has sent entries (the client's durable cursor
    /// may lag; it sends it again on reconnect).
    sent: Option<Cursor>,
    /// Caught up and no `Pull` outstanding: new entries are pushed as they arrive.
    live: bool,
    /// Hashes of changes this session stored for the client: the client has them, so they are
    /// not echoed back. Bounded; past the bound, echoes are merely redundant.
    uploaded: std::collections::HashSet<Hash>,
    /// The protocol version the client speaks (entries it does not know are translated).
    version: u32,
    /// Until the handshake: when the connection opened, on the driver's clock.
    opened_at: Option<Millis>,
    /// The customers the client asked for first, until its first `Pull` takes them.
    first: Vec<DocId>,
    /// The batch budget of the client's last `Pull`, for the batches that stream after it.
    pull_budget: usize,
    /// A wipe order the device was sent: the session then serves nothing but the uploads a
    /// wipe after upload allows, and the `Wiped` acknowledgement.
    wiping: Option<WipeOrder>,
}

/// Most hashes a session remembers to avoid echoing a client's own uploads.
const MAX_REMEMBERED_UPLOADS: usize = 200_000;

impl RelaySession {
    /// A session waiting for the client's `Hello`, with no deadline for it (tests, and drivers
    /// whose clients always open with one).
    pub fn new(limits: RelayLimits) -> Self {
        Self {
            limits,
            device: None,
            epoch: None,
            sent: None,
            live: false,
            uploaded: std::collections::HashSet::new(),
            version: PROTOCOL_VERSION,
            opened_at: None,
            first: Vec::new(),
            pull_budget: 16 << 10,
            wiping: None,
        }
    }

    /// A session for a connection that opened at `now` (milliseconds of the driver's monotonic
    /// clock): it must authenticate within [`RelayLimits::hello_timeout`].
    pub fn opened(limits: RelayLimits, now: Millis) -> Self {
        Self {
            opened_at: Some(now),
            ..Self::new(limits)
        }
    }

    /// When the driver must call [`RelaySession::handle_timeout`] if nothing else happens:
    /// the handshake's deadline, until the device authenticated.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let opened = self.opened_at.filter(|_| self.device.is_none())?;
        let wait = Millis::try_from(self.limits.hello_timeout.as_millis()).unwrap_or(Millis::MAX);
        Some(opened.saturating_add(wait))
    }

    /// Runs the session's timers at `now`: a connection still without a `Hello` past its
    /// deadline is refused and closed.
    pub fn handle_timeout(&mut self, now: Millis) -> Output {
        match self.poll_timeout() {
            Some(due) if now >= due => Output::fatal(ErrorCode::Protocol, "no Hello in time"),
            _ => Output::default(),
        }
    }

    /// The authenticated device, once the handshake succeeded.
    pub fn device(&self) -> Option<&DeviceInfo> {
        self.device.as_ref()
    }

    /// The wipe order the device was sent, if any (its attachment stream follows it).
    pub fn wiping(&self) -> Option<WipeOrder> {
        self.wiping
    }

    /// The protocol version the client speaks (known once it said `Hello`).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Whether the client is caught up and receives live pushes.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Handles one message from the client.
    pub fn handle(&mut self, storage: &mut dyn RelayStorage, msg: Message) -> Output {
        match self.handle_inner(storage, msg) {
            Ok(o) => o,
            Err(e) => Output::fatal(ErrorCode::Internal, e.to_string()),
        }
    }

    fn handle_inner(
        &mut self,
        storage: &mut dyn RelayStorage,
        msg: Message,
    ) -> Result<Output, StorageError> {
        let Some(device) = self.device.clone() else {
            return self.handshake(storage, msg);
        };
        if let Some(order) = self.wiping {
            return self.handle_wiping(storage, &device, order, msg);
        }
        if matches!(
            msg,
            Message::Upload { .. } | Message::Pull { .. } | Message::More | Message::Heads { .. }
        ) {
            let out = self.recheck_inner(storage)?;
            if out.close {
                return Ok(out);
            }
        }
        Ok(match msg {
            Message::Hello { .. } | Message::Enrol { .. } => {
                Output::fatal(ErrorCode::Protocol, "duplicate Hello")
            }
            Message::Upload { batch, changes } => self.upload(storage, &device, batch, changes)?,
            Message::Pull { cursor, max_bytes } => {
                self.live = false;
                let budget = (max_bytes as usize).clamp(16 << 10, self.limits.max_batch_bytes);
                let cursor = self.normalize(storage, &device, cursor)?;
                // The customers named first start lanes in the session's first download only:
                // later pulls go on with the lanes their cursor carries.
                let first = std::mem::take(&mut self.first);
                self.pull_budget = budget;
                let mut out = Output::default();
                if self.version >= 4 {
                    let (documents, bytes) = waiting(storage, &cursor)?;
                    out.messages.push(Message::Waiting { documents, bytes });
                }
                let (items, cursor, caught_up) =
                    self.fill(storage, &device, cursor, budget, &first)?;
                out.messages.push(Message::Batch {
                    items,
                    cursor: cursor.clone(),
                    caught_up,
                });
                self.sent = Some(cursor);
                self.live = caught_up;
                // A protocol-4 client gets the window's further batches at once, and one more
                // for each it applies (`More`).
                if self.version >= 4 {
                    for _ in 1..DOWNLOAD_WINDOW {
                        if self.live {
                            break;
                        }
                        out.messages.extend(self.next_batch(storage, &device)?);
                    }
                }
                if self.live {
                    storage.touch_device(device.device_id)?;
                }
                out
            }
            Message::More if self.version >= 4 => {
                if self.live || self.sent.is_none() {
                    return Ok(Output::default());
                }
                let mut out = Output::default();
                out.messages.extend(self.next_batch(storage, &device)?);
                if self.live {
                    storage.touch_device(device.device_id)?;
                }
                out
            }
            Message::Heads { docs, done } => {
                let lacks = storage.missing(&docs)?;
                let missing = docs
                    .into_iter()
                    .zip(lacks)
                    .filter_map(|((id, _), lack)| match lack {
                        // A document outside the device's scopes is answered exactly as one
                        // the relay does not have, whatever the relay holds of it: neither
                        // its existence nor its heads are the device's to learn. The device's
                        // own changes to it then come up as uploads and are validated.
                        Lack::Nothing { scope } | Lack::Changes { scope, .. }
                            if !device.sees(&scope) =>
                        {
                            Some((id, Vec::new()))
                        }
                        Lack::Nothing { .. } => None,
                        Lack::Document => Some((id, Vec::new())),
                        Lack::Changes { heads, .. } => Some((id, heads)),
                    })
                    .collect();
                Output::send(Message::Missing {
                    docs: missing,
                    done,
                })
            }
            Message::First { mut customers } => {
                // Older clients never send it; a list past the bound is cut.
                if self.version >= 4 {
                    customers.truncate(MAX_FIRST_CUSTOMERS);
                    self.first = customers;
                }
                Output::default()
            }
            // Recorded by the driver for IT's device list (see `Message::Outbox`); nothing to
            // answer.
            Message::Outbox { .. } if self.version >= 5 => Output::default(),
            Message::Error { .. } => Output {
                messages: Vec::new(),
                close: true,
            },
            other => Output::fatal(
                ErrorCode::Protocol,
                format!("unexpected {} from a client", other.name()),
            ),
        })
    }

    /// Checks that the connected device is still enrolled with the same grant; if not,
    /// returns a fatal output (`Unauthorized` when revoked, `Reconnect` when its scopes or
    /// role changed). The relay calls it whenever devices changed, so a revoked device's open
    /// connection is closed at once; the session also calls it before every request.
    pub fn recheck(&mut self, storage: &mut dyn RelayStorage) -> Output {
        match self.recheck_inner(storage) {
            Ok(o) => o,
            Err(e) => Output::fatal(ErrorCode::Internal, e.to_string()),
        }
    }

    fn recheck_inner(&mut self, storage: &mut dyn RelayStorage) -> Result<Output, StorageError> {
        let Some(device) = self.device.clone() else {
            return Ok(Output::default());
        };
        // A device being wiped lives until its acknowledgement.
        if self.wiping.is_some() {
            return Ok(Output::default());
        }
        // IT ordered a wipe while the laptop was connected: it hears the order by connecting
        // again (the relay tells it in the new session's `Policy`).
        if storage.device_policy(&device)?.wipe.is_some() {
            self.live = false;
            // An older laptop cannot carry the order out: it is shut out like a revoked one.
            return Ok(if self.version >= 7 {
                Output::fatal(
                    ErrorCode::Reconnect,
                    "IT changed this device's orders; reconnect",
                )
            } else {
                Output::fatal(ErrorCode::Unauthorized, "device revoked")
            });
        }
        Ok(match storage.refresh_device(&device)? {
            None => {
                self.live = false;
                Output::fatal(ErrorCode::Unauthorized, "device revoked")
            }
            Some(d) if d.scopes != device.scopes || d.role != device.role => {
                self.live = false;
                Output::fatal(
                    ErrorCode::Reconnect,
                    "the device's scopes or role changed; reconnect",
                )
            }
            Some(_) => Output::default(),
        })
    }

    fn handshake(
        &mut self,
        storage: &mut dyn RelayStorage,
        msg: Message,
    ) -> Result<Output, StorageError> {
        let (magic, version) = match &msg {
            Message::Hello { magic, version, .. } | Message::Enrol { magic, version, .. } => {
                (*magic, *version)
            }
            _ => return Ok(Output::fatal(ErrorCode::Protocol, "expected Hello")),
        };
        if magic != MAGIC {
            return Ok(Output::fatal(ErrorCode::Protocol, "not a fieldsync client"));
        }
        if !(OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            return Ok(Output::fatal(
                ErrorCode::VersionMismatch,
                format!(
                    "relay speaks protocol {OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION}, \
                     client speaks {version}"
                ),
            ));
        }
        self.version = version;
        let device = match msg {
            Message::Hello {
                device_id,
                credential,
                ..
            } => match storage.authenticate(device_id, credential.as_deref())? {
                Some(d) => d,
                None => {
                    return Ok(Output::fatal(
                        ErrorCode::Unauthorized,
                        "unknown or revoked device, or wrong credential",
                    ));
                }
            },
            Message::Enrol {
                device_id,
                token,
                credential,
                ..
            } => match storage.redeem(device_id, &token, &credential)? {
                Ok(d) => d,
                Err(reason) => {
                    return Ok(Output::fatal(
                        ErrorCode::Unauthorized,
                        format!("enrolment refused: {reason}"),
                    ));
                }
            },
            _ => unreachable!("matched above"),
        };
        let policy = storage.device_policy(&device)?;
        if policy.wipe.is_some() && self.version < 7 {
            // An older laptop would not understand the order: it stays shut out.
            return Ok(Output::fatal(
                ErrorCode::Unauthorized,
                "unknown or revoked device, or wrong credential",
            ));
        }
        let epoch = storage.epoch()?;
        self.epoch = Some(epoch);
        let mut out = Output::send(Message::Welcome {
            version: self.version,
            epoch,
            scopes: device.scopes.clone(),
            role: device.role,
        });
        if self.version >= 7 {
            self.wiping = policy.wipe;
            out.messages.push(Message::Policy {
                policy,
                relay_time: storage.now_millis(),
            });
        }
        self.device = Some(device);
        Ok(out)
    }

    /// A session whose device was told to wipe: a wipe after upload still stores its
    /// uploads; the acknowledgement is recorded and ends the session; requests for data are
    /// not answered.
    fn handle_wiping(
        &mut self,
        storage: &mut dyn RelayStorage,
        device: &DeviceInfo,
        order: WipeOrder,
        msg: Message,
    ) -> Result<Output, StorageError> {
        match msg {
            Message::Wiped { report } => {
                storage.record_wiped(device.device_id, &report)?;
                Ok(Output {
                    messages: Vec::new(),
                    close: true,
                })
            }
            Message::Upload { batch, changes } if order == WipeOrder::AfterUpload => {
                self.upload(storage, device, batch, changes)
            }
            // What the laptop holds besides is destroyed with it (the outbox report says how
            // much IT loses).
            Message::Outbox { .. } => {
                self.wiping = None;
                let out = self.handle_inner(storage, msg);
                self.wiping = Some(order);
                out
            }
            _ => Ok(Output::default()),
        }
    }

    /// Stores an upload's changes and answers it (and, for a live client, the batch behind
    /// the answer).
    fn upload(
        &mut self,
        storage: &mut dyn RelayStorage,
        device: &DeviceInfo,
        batch: u64,
        changes: Vec<UploadChange>,
    ) -> Result<Output, StorageError> {
        if changes.len() > self.limits.max_upload_changes {
            return Ok(Output::fatal(
                ErrorCode::BadFrame,
                format!(
                    "upload of {} changes exceeds {}",
                    changes.len(),
                    self.limits.max_upload_changes
                ),
            ));
        }
        let relayed = batch & REPAIR_BATCH != 0;
        let outcomes = storage.append(device, &changes, relayed)?;
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        let mut malformed = false;
        for o in outcomes {
            match o {
                Outcome::Stored(hash) => {
                    accepted.push(hash);
                    if self.uploaded.len() < MAX_REMEMBERED_UPLOADS {
                        self.uploaded.insert(hash);
                    }
                }
                Outcome::Refused(r) => rejected.push(r),
                Outcome::Malformed(r) => {
                    malformed = true;
                    rejected.push(r);
                }
            }
        }
        storage.touch_device(device.device_id)?;
        let mut out = Output::send(Message::UploadAck {
            batch,
            accepted,
            rejected,
        });
        if malformed {
            out.messages.push(Message::Error {
                code: ErrorCode::Protocol,
                reason: "the upload held a change that does not fit its document".into(),
            });
            out.close = true;
            return Ok(out);
        }
        // A live client gets a batch right behind the acknowledgement, even an empty
        // one: it marks the log as of this upload, so a document the client was told
        // to give up leaves only after every entry filed before the acknowledgement
        // (a snapshot bringing it back into the device's scopes, say) has arrived.
        if self.live
            && let Some(cursor) = self.sent.clone()
        {
            let (items, cursor, caught_up) =
                self.fill(storage, device, cursor, self.limits.max_batch_bytes, &[])?;
            self.live = caught_up;
            self.sent = Some(cursor.clone());
            out.messages.push(Message::Batch {
                items,
                cursor,
                caught_up,
            });
        }
        Ok(out)
    }

    /// Brings a client's cursor in line with the relay: another epoch restarts every scope;
    /// scopes the device lost are dropped and new ones start fresh.
    fn normalize(
        &self,
        storage: &mut dyn RelayStorage,
        device: &DeviceInfo,
        mut cursor: Cursor,
    ) -> Result<Cursor, StorageError> {
        let epoch = match self.epoch {
            Some(e) => e,
            None => storage.epoch()?,
        };
        if cursor.epoch != epoch {
            cursor = Cursor {
                epoch,
                scopes: Default::default(),
            };
        }
        // A cursor ahead of the log (the relay was restored from a backup that kept its epoch)
        // would skip new entries: start those scopes afresh.
        let high = storage.high_seq()?;
        for sc in cursor.scopes.values_mut() {
            *sc = match std::mem::replace(sc, ScopeCursor::fresh()) {
                ScopeCursor::Log { seq } if seq > high => ScopeCursor::fresh(),
                ScopeCursor::Snapshot { high: Some(h), .. } if h > high => ScopeCursor::fresh(),
                ScopeCursor::SnapshotFirst { high: h, first, .. }
                    if h > high || first.len() > MAX_FIRST_CUSTOMERS =>
                {
                    ScopeCursor::fresh()
                }
                // A lane the relay cannot have started (ahead of the log, too long, out of
                // order) gives way to the plain log from its start: what the first lane sent
                // may come again, nothing is skipped.
                ScopeCursor::LogFirst {
                    seq,
                    first,
                    first_seq,
                    upto,
                } if upto > high || first_seq > upto || first.len() > MAX_FIRST_CUSTOMERS => {
                    if seq > high {
                        ScopeCursor::fresh()
                    } else {
                        ScopeCursor::Log { seq }
                    }
                }
                other => other,
            };
        }
        cursor.scopes.retain(|s, _| device.scopes.contains(s));
        for s in &device.scopes {
            cursor
                .scopes
                .entry(s.clone())
                .or_insert_with(ScopeCursor::fresh);
        }
        Ok(cursor)
    }

    /// Fills one batch from the cursor; returns the items, the cursor after them, and whether
    /// every scope is drained. `first` starts a first lane in each scope whose phase starts
    /// now (see [`super::download`]).
    fn fill(
        &self,
        storage: &mut dyn RelayStorage,
        device: &DeviceInfo,
        cursor: Cursor,
        budget: usize,
        first: &[DocId],
    ) -> Result<(Vec<Item>, Cursor, bool), StorageError> {
        Fill {
            storage,
            device,
            uploaded: &self.uploaded,
            version: self.version,
            first,
            budget,
        }
        .run(cursor)
    }

    /// The download's next batch, from where the last one sent ended, within the budget of
    /// the client's last `Pull`.
    fn next_batch(
        &mut self,
        storage: &mut dyn RelayStorage,
        device: &DeviceInfo,
    ) -> Result<Option<Message>, StorageError> {
        let Some(cursor) = self.sent.clone() else {
            return Ok(None);
        };
        let (items, cursor, caught_up) =
            self.fill(storage, device, cursor, self.pull_budget, &[])?;
        self.sent = Some(cursor.clone());
        self.live = caught_up;
        Ok(Some(Message::Batch {
            items,
            cursor,
            caught_up,
        }))
    }

    /// Called when the relay's log grew: pushes new entries to a live client.
    pub fn poll_live(&mut self, storage: &mut dyn RelayStorage) -> Output {
        if !self.live {
            return Output::default();
        }
        let (Some(cursor), Some(device)) = (self.sent.clone(), self.device.clone()) else {
            return Output::default();
        };
        match self.fill(storage, &device, cursor, self.limits.max_batch_bytes, &[]) {
            Ok((items, cursor, caught_up)) => {
                if items.is_empty() && caught_up {
                    // Nothing to deliver (e.g. only the client's own uploads, which are not
                    // echoed); still move its durable cursor past them when it advanced.
                    let moved = self.sent.as_ref() != Some(&cursor);
                    self.sent = Some(cursor.clone());
                    if !moved {
                        return Output::default();
                    }
                    return Output::send(Message::Batch {
                        items,
                        cursor,
                        caught_up,
                    });
                }
                self.live = caught_up;
                self.sent = Some(cursor.clone());
                Output::send(Message::Batch {
                    items,
                    cursor,
                    caught_up,
                })
            }
            Err(e) => Output::fatal(ErrorCode::Internal, e.to_string()),
        }
    }
}

/// Bit set in an `Upload`'s batch number when it carries repair uploads (other devices'
/// changes the relay lost); the relay then validates each change against its author's role.
pub const REPAIR_BATCH: u64 = 1 << 63;

/// About how much the download from `cursor` has left, over its scopes (see
/// [`Message::Waiting`]).
fn waiting(storage: &mut dyn RelayStorage, cursor: &Cursor) -> Result<(u64, u64), StorageError> {
    let high = storage.high_seq()?;
    let (mut documents, mut bytes) = (0u64, 0u64);
    for (scope, sc) in &cursor.scopes {
        let (snapshots_after, log_after) = match sc {
            ScopeCursor::Snapshot { high: h, after } => (Some(*after), h.unwrap_or(high)),
            // The first lane's documents count until the lane is done.
            ScopeCursor::SnapshotFirst {
                high,
                first_done,
                after,
                ..
            } => (Some(if *first_done { *after } else { None }), *high),
            ScopeCursor::Log { seq } | ScopeCursor::LogFirst { seq, .. } => (None, *seq),
        };
        let (d, b) = storage.waiting(scope, snapshots_after, log_after)?;
        documents = documents.saturating_add(d);
        bytes = bytes.saturating_add(b);
    }
    Ok((documents, bytes))
}

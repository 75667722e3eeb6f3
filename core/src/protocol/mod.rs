//! The sync protocol: messages, framing and the sans-IO state machines of both sides.
//!
//! The client uploads its outbox in batches of raw Automerge changes; the relay validates and
//! stores each one, assigns it the next sequence number of its log (filed under the document's
//! scope) and acknowledges by change hash. The client downloads by cursor — one position per
//! scope — getting compacted snapshots for documents it does not have yet and then the log's
//! entries; each batch is applied in one transaction together with the cursor. Once caught up,
//! the relay pushes new entries as they arrive. When the cursor is unusable (the relay's epoch
//! changed), the client sends its document heads, re-uploads what the relay lacks and
//! downloads afresh.
//!
//! Nothing here does I/O or reads the clock: a driver (the relay's and the client's tokio
//! tasks, the deterministic simulation, or [`drive::sync_in_memory`]) moves frames between
//! [`ClientSession`] and [`RelaySession`]. [`memory::MemoryRelay`] is a relay's storage in
//! memory, judging uploads with the same [`check_change`] as the real stores.

//!
//! # Driving the sessions
//!
//! Whoever owns the I/O drives both sessions the same way: it feeds each the messages the other
//! sent, in order, and sends what it returns, in order.
//!
//! The client ([`ClientSession`]):
//! 1. sends [`ClientSession::hello`] first (a `Hello`, or the `Enrol` of a device's first use);
//! 2. for every message from the relay, calls [`ClientSession::handle`] and sends what it
//!    returns; an error ends the connection, and [`SessionError::is_retryable`] says whether to
//!    connect again;
//! 3. after local edits commit, calls [`ClientSession::poll_upload`] and sends what it returns;
//! 4. asks [`ClientSession::is_synced`] whether every local change is answered and the download
//!    is caught up: a one-shot sync closes then, a background one stays for live pushes.
//!
//! The relay ([`RelaySession`]):
//! 1. for every message from the client, calls [`RelaySession::handle`], sends the returned
//!    [`relay::Output`]'s messages and closes the connection if it says so;
//! 2. whenever the log grew (this or any session's upload, another node's append), calls
//!    [`RelaySession::poll_live`] and sends what it returns;
//! 3. whenever devices changed (a revocation, a new grant), calls [`RelaySession::recheck`].
//!
//! Timers stay with the driver (the handshake and response timeouts, reconnecting with
//! backoff). [`drive::sync_in_memory`] is the smallest driver; the client's QUIC loop
//! (`fieldsync-client`), the relay's connection tasks (`fieldsync-relay`) and the simulation
//! are the others.

pub mod client;
pub mod codec;
pub mod drive;
pub mod memory;
pub mod messages;
pub mod relay;
pub mod token;
pub mod validate;

pub use client::{ClientConfig, ClientSession, SessionError, SessionStats};
pub use codec::{CodecError, FrameDecoder, decode, encode};
pub use messages::{
    Cursor, Entry, ErrorCode, Item, Message, PROTOCOL_VERSION, ScopeCursor, UploadChange,
};
pub use relay::{Lack, LogEntry, Outcome, RelayLimits, RelaySession, RelayStorage, StorageError};
pub use token::{EnrolToken, TokenError};
pub use validate::{DeviceInfo, check_change};

#[cfg(test)]
mod tests;

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
//! [`ClientSession`] and [`RelaySession`]. [`rules`] are the relay's upload rules, written once
//! over a small transaction trait each store implements; [`memory::MemoryRelay`] is a relay's
//! storage in memory that runs them as the real stores do.

//!
//! # Driving the sessions
//!
//! Whoever owns the I/O drives both sessions the same way: it feeds each the messages the other
//! sent, in order, and sends what it returns, in order.
//!
//! The client ([`ClientSession`]) is driven through one call, [`ClientSession::step`], with
//! the driver's clock (`now`, milliseconds of a monotonic clock):
//! 1. when the connection opens, steps with [`ClientInput::Open`] (the session's `Hello`, or
//!    the `Enrol` of a device's first use, goes out);
//! 2. for every message from the relay, in order, steps with [`ClientInput::Message`];
//! 3. after local edits commit, and when the last step's [`ClientStep::timeout`] comes, steps
//!    with [`ClientInput::Poll`];
//! 4. after every step sends [`ClientStep::send`] in order; [`ClientStep::synced`] says every
//!    local change is answered and the download caught up (a one-shot sync closes then, a
//!    background one stays for live pushes), and [`ClientStep::resend`] that changes the relay
//!    refused for now have waited long enough for a new session to resend them. An error ends
//!    the connection ([`SessionError::Timeout`] when the relay owed an answer too long), and
//!    [`SessionError::is_retryable`] says whether to connect again.
//!
//! Each step handles its input, then uploads what waits in the outbox (one batch in flight at
//! a time), then checks the timers ([`TimerConfig`]); `handle`, `poll_upload` and `is_synced`
//! are its parts, public for tests that feed single messages.
//!
//! The relay ([`RelaySession`]):
//! 1. for every message from the client, calls [`RelaySession::handle`], sends the returned
//!    [`relay::Output`]'s messages and closes the connection if it says so;
//! 2. whenever the log grew (this or any session's upload, another node's append), calls
//!    [`RelaySession::poll_live`] and sends what it returns;
//! 3. whenever devices changed (a revocation, a new grant), calls [`RelaySession::recheck`];
//! 4. when [`RelaySession::poll_timeout`] comes (a session made with
//!    [`RelaySession::opened`] on the driver's clock must authenticate within
//!    [`RelayLimits::hello_timeout`]), calls [`RelaySession::handle_timeout`] and sends and
//!    closes as with any output.
//!
//! Both sessions keep their own timers and take the time as an input; the drivers keep only
//! the transport's (the QUIC idle timeout, a connection that opens no stream) and the client's
//! reconnect backoff. [`drive::sync_in_memory`] is the smallest driver; the client's QUIC loop
//! (`fieldsync-client`), the relay's connection tasks (`fieldsync-relay`), the simulation and
//! the `client_session` fuzz target are the others.

pub mod client;
pub mod codec;
pub mod download;
pub mod drive;
pub mod memory;
pub mod messages;
pub mod relay;
pub mod rules;
pub mod step;
pub mod token;
pub mod validate;

pub use client::{ClientConfig, ClientSession, SessionError, SessionStats};
pub use codec::{CodecError, FrameDecoder, decode, encode};
pub use download::Lane;
pub use messages::{
    Cursor, DevicePolicy, Entry, ErrorCode, Item, Message, PROTOCOL_VERSION, ScopeCursor,
    UploadChange, WipeOrder, WipeReport,
};
pub use relay::{Lack, LogEntry, Outcome, RelayLimits, RelaySession, RelayStorage, StorageError};
pub use step::{ClientInput, ClientStep, TimerConfig};
pub use token::{EnrolToken, TokenError};
pub use validate::{DeviceInfo, check_change};

#[cfg(test)]
mod tests;

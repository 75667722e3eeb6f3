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

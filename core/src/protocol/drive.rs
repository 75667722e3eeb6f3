//! One connection between a [`ClientSession`] and a [`RelaySession`], driven in memory.
//!
//! The sessions are sans-IO: a driver feeds each one what the other sent and sends what it
//! returns. [`sync_in_memory`] is that driver with no network at all — every message still
//! passes through the codec, as over QUIC, and the relay is asked for live pushes after every
//! round, as the relay's connection task does after each append — for examples, tests and
//! embedding a relay in the same process.

use super::client::{ClientConfig, ClientSession, SessionError, SessionStats};
use super::codec::{CodecError, decode, encode};
use super::messages::Message;
use super::relay::{RelayLimits, RelaySession, RelayStorage};
use super::step::ClientInput;
use crate::ids::Millis;
use crate::store::Store;

/// Most rounds one in-memory sync may take before it is called stuck.
const MAX_ROUNDS: usize = 100_000;

/// Why an in-memory sync failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriveError {
    /// The client session failed (a message it refused, or its replica).
    #[error("client: {0}")]
    Session(#[from] SessionError),
    /// The replica failed.
    #[error("replica: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A message did not pass through the codec.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// The relay ended the connection.
    #[error("the relay closed the connection: {0:?}")]
    Closed(Vec<Message>),
    /// The sessions were still exchanging messages after the round limit.
    #[error("the sync did not finish")]
    Unfinished,
}

/// Syncs `store` with `relay` over one in-memory connection until neither side has anything
/// more to send and the replica is synced (outbox answered, download caught up). Returns the
/// client session's statistics.
pub fn sync_in_memory(
    store: &mut Store,
    relay: &mut dyn RelayStorage,
    client: ClientConfig,
    limits: RelayLimits,
) -> Result<SessionStats, DriveError> {
    let mut client = ClientSession::new(client);
    let mut session = RelaySession::new(limits);
    // Nothing waits on a network here: the session's clock is the round number, so its
    // timers never fire.
    let mut to_relay = client.step(store, ClientInput::Open, 0)?.send;
    for round in 1..=MAX_ROUNDS {
        if to_relay.is_empty() {
            let step = client.step(store, ClientInput::Poll, round as Millis)?;
            if step.synced {
                return Ok(client.stats().clone());
            }
            if step.send.is_empty() {
                return Err(DriveError::Unfinished);
            }
            to_relay = step.send;
        }
        let mut to_client = Vec::new();
        for message in to_relay.drain(..) {
            let out = session.handle(relay, through_codec(&message)?);
            if out.close {
                return Err(DriveError::Closed(out.messages));
            }
            to_client.extend(out.messages);
        }
        // The log grew (at least by this client's uploads): a live session is pushed what is
        // new, as the relay's driver does after every append.
        to_client.extend(session.poll_live(relay).messages);
        for message in to_client {
            let step = client.step(
                store,
                ClientInput::Message(through_codec(&message)?),
                round as Millis,
            )?;
            to_relay.extend(step.send);
        }
    }
    Err(DriveError::Unfinished)
}

/// The message as the other side decodes it from its frame.
fn through_codec(message: &Message) -> Result<Message, CodecError> {
    let frame = encode(message)?;
    decode(frame.get(4..).unwrap_or_default())
}

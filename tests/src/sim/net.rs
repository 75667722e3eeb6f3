//! Simulated connections: two ordered byte pipes carrying real encoded frames.
//!
//! A connection models one QUIC connection with one bidirectional stream. QUIC streams are
//! reliable and ordered, so within a connection bytes arrive in order or not at all: packet
//! loss that QUIC cannot hide shows up as the connection dying, and everything still in
//! flight on it is lost. Duplicates and reordering happen only *between* connections: a
//! client that gave up on a connection opens a new one while the relay still works through
//! what arrived on the old one (a "zombie"), and a whole old connection can be replayed to
//! the relay (a "ghost": the same Hello and uploads delivered again, answers lost).

use std::collections::VecDeque;

use fieldsync_core::protocol::{FrameDecoder, RelaySession};

/// One simulated connection.
pub(crate) struct Conn {
    /// The client this connection belongs to.
    pub client: usize,
    /// Bytes on their way from the client to the relay, in chunks (a frame may span two).
    pub up: VecDeque<Vec<u8>>,
    /// Bytes on their way from the relay to the client.
    pub down: VecDeque<Vec<u8>>,
    /// The relay's session; `None` once the relay closed its side.
    pub relay: Option<RelaySession>,
    /// Reassembles frames arriving at the relay.
    pub relay_decoder: FrameDecoder,
    /// Reassembles frames arriving at the client.
    pub client_decoder: FrameDecoder,
    /// The client still reads this connection (false: abandoned, crashed, or a ghost).
    pub client_open: bool,
    /// For a connection the client no longer reads: the step at which the relay side times
    /// out and drops it.
    pub zombie_until: u64,
    /// A replay of an older connection (its answers go nowhere).
    pub ghost: bool,
    /// Frames the client sent on this connection, kept for ghost replays (bounded).
    pub sent_up: Vec<Vec<u8>>,
}

/// Most frames kept per connection for a later ghost replay.
const MAX_RECORDED_FRAMES: usize = 64;

impl Conn {
    /// A fresh connection opened by `client`.
    pub(crate) fn new(client: usize, relay: RelaySession) -> Self {
        Self {
            client,
            up: VecDeque::new(),
            down: VecDeque::new(),
            relay: Some(relay),
            relay_decoder: FrameDecoder::new(),
            client_decoder: FrameDecoder::new(),
            client_open: true,
            zombie_until: 0,
            ghost: false,
            sent_up: Vec::new(),
        }
    }

    /// Queues a frame from the client, split at `split` (a byte offset) if given.
    pub(crate) fn send_up(&mut self, frame: Vec<u8>, split: Option<usize>) {
        if !self.ghost && self.sent_up.len() < MAX_RECORDED_FRAMES {
            self.sent_up.push(frame.clone());
        }
        push_split(&mut self.up, frame, split);
    }

    /// Queues a frame from the relay (dropped if nobody reads this connection any more).
    pub(crate) fn send_down(&mut self, frame: Vec<u8>, split: Option<usize>) {
        if self.client_open {
            push_split(&mut self.down, frame, split);
        }
    }

    /// Bytes in flight in either direction.
    pub(crate) fn idle(&self) -> bool {
        self.up.is_empty() && self.down.is_empty()
    }
}

fn push_split(q: &mut VecDeque<Vec<u8>>, mut frame: Vec<u8>, split: Option<usize>) {
    match split {
        Some(at) if at > 0 && at < frame.len() => {
            let tail = frame.split_off(at);
            q.push_back(frame);
            q.push_back(tail);
        }
        _ => q.push_back(frame),
    }
}

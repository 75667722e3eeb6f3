//! Arbitrary bytes as a stream of frames from a client into a `RelaySession` (handshake
//! included), over `MemoryRelay`: the in-memory relay storage that runs the relay's own upload
//! rules (`protocol::rules`, as the real stores do) over tables in maps, keeps a log and answers
//! downloads, departures and repair from it.
#![no_main]

use fieldsync_core::Role;
use fieldsync_core::protocol::codec::FrameDecoder;
use fieldsync_core::protocol::memory::MemoryRelay;
use fieldsync_core::protocol::{RelayLimits, RelaySession};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let mut storage = MemoryRelay::open(Uuid::from_u128(1), Role::Admin, &["*"]);
    let mut session = RelaySession::new(RelayLimits::default());
    let mut dec = FrameDecoder::new();
    dec.push(data);
    while let Ok(Some(msg)) = dec.next_message() {
        let out = session.handle(&mut storage, msg);
        let _ = session.poll_live(&mut storage);
        if out.close {
            break;
        }
    }
});

//! Arbitrary bytes into the frame reassembler and the frame decoder: errors are fine,
//! panics, aborts and unbounded allocations are not.
#![no_main]

use fieldsync_core::protocol::codec::{FrameDecoder, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode(data);
    // The first byte picks a chunk size, so frames arrive split at varying points.
    let chunk = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut dec = FrameDecoder::new();
    for part in data.chunks(chunk) {
        dec.push(part);
        loop {
            match dec.next_message() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

//! Framing: `u32` big-endian length, one flags byte, then the postcard-encoded [`Message`],
//! zstd-compressed when large. Every limit is checked before allocating.
//!
//! Budgets, each checked before the work it bounds: the frame's length ([`MAX_FRAME`]) before
//! it is read; the message type (the body's first bytes) before the rest is decompressed; then
//! the decoded body against its type's own cap ([`body_cap`]: a few KiB for a handshake, a few
//! MiB for a heads exchange, [`MAX_BODY`] only for uploads and download batches), and the
//! entries of a heads exchange against [`MAX_HEADS_ENTRIES`]. A peer that has not
//! authenticated yet may send only small handshake frames ([`FrameDecoder::handshake`]).

use std::io::Read;

use super::messages::Message;

/// Largest frame accepted on the wire (after the length prefix, compressed).
pub const MAX_FRAME: usize = 32 << 20;
/// Largest decoded message body (after decompression).
pub const MAX_BODY: usize = 96 << 20;
/// Bodies at least this large are compressed.
pub const COMPRESS_FROM: usize = 1024;

const FLAG_ZSTD: u8 = 1;

/// Largest frame a peer may send before it has authenticated (a `Hello` or an `Enrol`).
pub const HANDSHAKE_FRAME: usize = 16 << 10;
/// Largest decoded `Hello` or `Enrol`.
pub const HANDSHAKE_BODY: usize = 8 << 10;
/// Largest decoded `BlobPiece`: a piece, its path's parent hashes (at most 64 levels of 64
/// bytes) and a few bytes of framing.
pub const PIECE_FRAME_BODY: usize = crate::attachment::pieces::PIECE_BYTES as usize + 64 * 64 + 128;
/// Most documents one `Heads` or `Missing` message may name (the client sends 2,000 a chunk).
pub const MAX_HEADS_ENTRIES: usize = 10_000;
/// Most heads one document may list in a `Heads` or `Missing` entry.
pub const MAX_HEADS_PER_DOC: usize = 256;

/// The postcard tags of the message variants (their order in [`Message`]).
const TAG_HELLO: u32 = 0;
const TAG_ENROL: u32 = 9;

/// The largest decoded body a message of type `tag` may have; `None` for an unknown type.
pub fn body_cap(tag: u32) -> Option<usize> {
    Some(match tag {
        // Hello, Enrol.
        TAG_HELLO | TAG_ENROL => HANDSHAKE_BODY,
        // Welcome (scopes), Error (a reason).
        1 | 2 => 256 << 10,
        // Upload (changes of up to 4 MiB each), Batch (a download batch).
        3 | 6 => MAX_BODY,
        // UploadAck: a hash and a reason per change of an upload.
        4 => 16 << 20,
        // Pull: a cursor, one position per scope.
        5 => 1 << 20,
        // Heads, Missing: chunks of document ids with their heads.
        7 | 8 => 4 << 20,
        // First: a few dozen customer ids (more are cut by the relay).
        10 => 16 << 10,
        // More: nothing; Waiting: two numbers; Outbox: four.
        11..=13 => 64,
        // BlobPut, BlobStored, BlobGet, BlobSending, BlobCancel: a hash and numbers.
        14 | 16..=19 => 128,
        // BlobPiece: a piece and the parent hashes on its path (64 bytes a level).
        15 => PIECE_FRAME_BODY,
        // BlobRefused: a hash and a reason.
        20 => 4 << 10,
        // Policy, Wiped: a few numbers.
        21 | 22 => 128,
        _ => return None,
    })
}

/// Errors from encoding or decoding frames.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The frame is larger than [`MAX_FRAME`] (or the body than [`MAX_BODY`]).
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The frame is empty or has unknown flags.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Decompression failed (corrupt data or the output would exceed the limit).
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// The body is not a valid message.
    #[error("undecodable message: {0}")]
    Decode(String),
}

/// Encodes a message as a complete frame, length prefix included.
pub fn encode(msg: &Message) -> Result<Vec<u8>, CodecError> {
    let body = postcard::to_stdvec(msg).map_err(|e| CodecError::Decode(e.to_string()))?;
    let (flags, payload) = if body.len() >= COMPRESS_FROM {
        let z =
            zstd::bulk::compress(&body, 3).map_err(|e| CodecError::Decompress(e.to_string()))?;
        if z.len() < body.len() {
            (FLAG_ZSTD, z)
        } else {
            (0, body)
        }
    } else {
        (0, body)
    };
    let len = payload.len() + 1;
    if len > MAX_FRAME {
        return Err(CodecError::TooLarge(len));
    }
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Checks a frame length read from the wire before reading the frame.
pub fn check_len(len: u32) -> Result<usize, CodecError> {
    let len = len as usize;
    if len == 0 {
        return Err(CodecError::Malformed("empty frame".into()));
    }
    if len > MAX_FRAME {
        return Err(CodecError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes one frame body (the bytes after the length prefix).
pub fn decode(frame: &[u8]) -> Result<Message, CodecError> {
    decode_limited(frame, Only::Any)
}

/// Reads the varint message tag at the start of a body.
fn read_tag(r: &mut impl Read) -> Result<(u32, Vec<u8>), CodecError> {
    let mut seen = Vec::with_capacity(5);
    let mut tag: u32 = 0;
    for i in 0..5 {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)
            .map_err(|e| CodecError::Decode(format!("no message type: {e}")))?;
        seen.push(b[0]);
        tag |= u32::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok((tag, seen));
        }
    }
    Err(CodecError::Decode("message type too long".into()))
}

/// Decodes one frame body; `only` refuses every message its stream does not carry (before
/// the handshake: all but `Hello` and `Enrol`; on an attachment stream: all but the
/// attachment messages) before decompressing or decoding the rest of it.
fn decode_limited(frame: &[u8], only: Only) -> Result<Message, CodecError> {
    let Some((&flags, payload)) = frame.split_first() else {
        return Err(CodecError::Malformed("empty frame".into()));
    };
    if frame.len() > MAX_FRAME {
        return Err(CodecError::TooLarge(frame.len()));
    }
    let cap_for = |tag: u32| -> Result<usize, CodecError> {
        if only == Only::Handshake && tag != TAG_HELLO && tag != TAG_ENROL {
            return Err(CodecError::Malformed(
                "only Hello or Enrol before the handshake".into(),
            ));
        }
        if only == Only::Attachments && !ATTACHMENT_TAGS.contains(&tag) {
            return Err(CodecError::Malformed(
                "only attachment messages on the attachment stream".into(),
            ));
        }
        body_cap(tag).ok_or_else(|| CodecError::Decode(format!("unknown message type {tag}")))
    };
    let body;
    let bytes: &[u8] = match flags {
        0 => {
            let (tag, _) = read_tag(&mut &payload[..])?;
            let cap = cap_for(tag)?;
            if payload.len() > cap {
                return Err(CodecError::TooLarge(payload.len()));
            }
            payload
        }
        FLAG_ZSTD => {
            // Refuse before decompressing when the declared content size is over the limit,
            // then learn the message type from the first bytes and decompress the rest only
            // up to that type's cap: a small frame cannot expand into gigabytes, nor a
            // handshake into megabytes.
            let declared = zstd::zstd_safe::get_frame_content_size(payload)
                .ok()
                .flatten()
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            if let Some(n) = declared
                && n > MAX_BODY
            {
                return Err(CodecError::TooLarge(n));
            }
            let mut z = zstd::stream::read::Decoder::new(payload)
                .map_err(|e| CodecError::Decompress(e.to_string()))?;
            let (tag, mut out) = read_tag(&mut z)?;
            // A frame never decodes past the size it declares (hosts budget by it), and a
            // declared size is allocated once rather than by doubling.
            let cap = cap_for(tag)?.min(declared.unwrap_or(usize::MAX));
            if declared.is_some() {
                out.reserve_exact(cap.saturating_sub(out.len()).saturating_add(1));
            }
            (&mut z)
                .take((cap - out.len()) as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| CodecError::Decompress(e.to_string()))?;
            if out.len() > cap {
                return Err(CodecError::TooLarge(out.len()));
            }
            body = out;
            &body
        }
        f => return Err(CodecError::Malformed(format!("unknown flags {f:#x}"))),
    };
    let msg: Message =
        postcard::from_bytes(bytes).map_err(|e| CodecError::Decode(e.to_string()))?;
    check_entries(&msg)?;
    Ok(msg)
}

/// Entry caps that the byte caps alone leave loose.
fn check_entries(msg: &Message) -> Result<(), CodecError> {
    if let Message::Heads { docs, .. } | Message::Missing { docs, .. } = msg {
        if docs.len() > MAX_HEADS_ENTRIES {
            return Err(CodecError::TooLarge(docs.len()));
        }
        if docs.iter().any(|(_, h)| h.len() > MAX_HEADS_PER_DOC) {
            return Err(CodecError::Malformed(format!(
                "a document with more than {MAX_HEADS_PER_DOC} heads"
            )));
        }
    }
    Ok(())
}

/// The message types of the attachment stream (protocol 6).
const ATTACHMENT_TAGS: std::ops::RangeInclusive<u32> = 14..=20;

/// Largest frame on an attachment stream: a piece message, compressed or not.
pub const ATTACHMENT_FRAME: usize = PIECE_FRAME_BODY + 1024;

/// Which messages a decoder reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Only {
    /// Any message, within its type's cap.
    #[default]
    Any,
    /// Small `Hello`/`Enrol` frames (a peer that has not authenticated yet).
    Handshake,
    /// Attachment messages of at most [`ATTACHMENT_FRAME`] bytes.
    Attachments,
}

/// A sans-IO frame reassembler: push bytes as they arrive, pop whole messages.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    only: Only,
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder for a peer that has not authenticated: only `Hello` and `Enrol` frames of at
    /// most [`HANDSHAKE_FRAME`] bytes are read; anything else is an error before it is
    /// decompressed or decoded. Call [`FrameDecoder::authenticated`] once the handshake
    /// succeeded.
    pub fn handshake() -> Self {
        Self {
            buf: Vec::new(),
            only: Only::Handshake,
        }
    }

    /// A decoder for an attachment stream: only attachment messages, in frames of at most
    /// [`ATTACHMENT_FRAME`] bytes; anything else is an error before it is decompressed or
    /// decoded.
    pub fn attachments() -> Self {
        Self {
            buf: Vec::new(),
            only: Only::Attachments,
        }
    }

    /// Lifts the handshake limits: the peer authenticated.
    pub fn authenticated(&mut self) {
        if self.only == Only::Handshake {
            self.only = Only::Any;
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed. After an error the
    /// stream is unusable (the peer broke framing) and should be closed.
    pub fn next_message(&mut self) -> Result<Option<Message>, CodecError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = check_len(u32::from_be_bytes([
            self.buf[0],
            self.buf[1],
            self.buf[2],
            self.buf[3],
        ]))?;
        let limit = match self.only {
            Only::Any => MAX_FRAME,
            Only::Handshake => HANDSHAKE_FRAME,
            Only::Attachments => ATTACHMENT_FRAME,
        };
        if len > limit {
            return Err(CodecError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = decode_limited(&self.buf[4..4 + len], self.only);
        self.buf.drain(..4 + len);
        msg.map(Some)
    }

    /// Once the frame at the head of the buffer has fully arrived: an upper bound on the
    /// memory decoding it takes — its compressed bytes, plus twice its decoded body (the body,
    /// and the message decoded from it). The decoded size is the size a compressed frame
    /// declares (checked while decompressing), or its message type's cap
    /// ([`MAX_BODY`] at most) when it declares none. A host that decodes many streams at once
    /// reserves this from a shared budget before calling [`FrameDecoder::next_message`].
    pub fn next_frame_cost(&self) -> Option<usize> {
        let prefix: [u8; 4] = self.buf.get(..4)?.try_into().ok()?;
        let len = u32::from_be_bytes(prefix) as usize;
        let frame = self.buf.get(4..4usize.checked_add(len)?)?;
        let cap = match self.only {
            Only::Any => MAX_BODY,
            Only::Handshake => HANDSHAKE_BODY,
            Only::Attachments => PIECE_FRAME_BODY,
        };
        let body = match frame.split_first() {
            Some((&FLAG_ZSTD, payload)) => match zstd::zstd_safe::get_frame_content_size(payload) {
                Ok(Some(n)) => usize::try_from(n).unwrap_or(usize::MAX).min(cap),
                _ => cap,
            },
            _ => len.min(cap),
        };
        Some(len.saturating_add(body.saturating_mul(2)))
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::ids::DocId;
    use crate::protocol::messages::MAGIC;

    fn framed(msg: &Message) -> Vec<u8> {
        encode(msg).expect("encode")
    }

    fn heads(n: usize) -> Message {
        Message::Heads {
            docs: (0..n)
                .map(|i| (DocId(Uuid::from_u128(i as u128)), vec![[7; 32]]))
                .collect(),
            done: true,
        }
    }

    /// The cost a host reserves before decoding bounds what decoding takes, and a frame that
    /// declares a smaller size than it decompresses to is refused at the declared size.
    #[test]
    fn a_frame_costs_at_most_what_it_declares() {
        let msg = heads(5_000);
        let frame = framed(&msg);
        let mut dec = FrameDecoder::new();
        dec.push(&frame[..frame.len() - 1]);
        assert_eq!(dec.next_frame_cost(), None, "not complete yet");
        dec.push(&frame[frame.len() - 1..]);
        let body = postcard::to_stdvec(&msg).expect("body").len();
        let cost = dec.next_frame_cost().expect("complete");
        assert_eq!(
            cost,
            frame.len() - 4 + 2 * body,
            "declared size, not the cap"
        );
        assert_eq!(dec.next_message().expect("decodes"), Some(msg.clone()));

        // A body declaring 100 bytes but holding the whole message.
        let body = postcard::to_stdvec(&msg).expect("body");
        let mut z = zstd::stream::Encoder::new(Vec::new(), 3).expect("encoder");
        z.set_pledged_src_size(Some(body.len() as u64))
            .expect("pledge");
        std::io::Write::write_all(&mut z, &body).expect("write");
        let mut payload = z.finish().expect("finish");
        // Patch the header's 4-byte content-size field (a body of this size needs 4 bytes).
        let declared = zstd::zstd_safe::get_frame_content_size(&payload)
            .expect("header")
            .expect("declared");
        assert_eq!(declared, body.len() as u64);
        let at = payload
            .windows(4)
            .position(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as u64 == declared)
            .expect("size field");
        assert!(at < 18, "in the frame header");
        payload[at..at + 4].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&payload).ok(),
            Some(Some(100))
        );
        let mut frame = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        frame.push(FLAG_ZSTD);
        frame.extend_from_slice(&payload);
        let mut dec = FrameDecoder::new();
        dec.push(&frame);
        assert_eq!(dec.next_frame_cost(), Some(payload.len() + 1 + 200));
        assert!(dec.next_message().is_err(), "refused at its declared size");
    }

    /// Before the handshake only a small Hello or Enrol is read; a compressed frame of another
    /// type is refused from its first bytes, before the rest is decompressed.
    #[test]
    fn only_a_small_handshake_is_read_before_authentication() {
        let hello = Message::Hello {
            magic: MAGIC,
            version: 2,
            device_id: Uuid::nil(),
            credential: Some("x".repeat(64)),
            agent: "test".into(),
        };
        let mut d = FrameDecoder::handshake();
        d.push(&framed(&hello));
        assert_eq!(d.next_message().expect("hello"), Some(hello));
        // 2,000 heads compress into a few KiB but are not a handshake.
        let bomb = framed(&heads(2_000));
        assert!(bomb.len() < HANDSHAKE_FRAME, "{}", bomb.len());
        let mut d = FrameDecoder::handshake();
        d.push(&bomb);
        assert!(matches!(d.next_message(), Err(CodecError::Malformed(_))));
        // A large frame is refused from its length prefix alone.
        let mut d = FrameDecoder::handshake();
        d.push(&((HANDSHAKE_FRAME as u32 + 1).to_be_bytes()));
        assert!(matches!(d.next_message(), Err(CodecError::TooLarge(_))));
        // Once authenticated, the same heads are read.
        let mut d = FrameDecoder::handshake();
        d.authenticated();
        d.push(&bomb);
        assert!(matches!(d.next_message(), Ok(Some(Message::Heads { .. }))));
    }

    /// Each message type has its own cap on the decoded body and on its entries: a small
    /// compressed frame cannot expand into millions of heads.
    #[test]
    fn each_message_type_has_its_own_budget() {
        let over = framed(&heads(MAX_HEADS_ENTRIES + 1));
        assert!(over.len() < 64 << 10, "compresses well: {}", over.len());
        assert!(decode(&over[4..]).is_err());
        let many = framed(&heads(200_000));
        assert!(matches!(decode(&many[4..]), Err(CodecError::TooLarge(_))));
        assert!(decode(&framed(&heads(MAX_HEADS_ENTRIES))[4..]).is_ok());
        // A Hello padded to 64 KiB of agent text is over its cap, compressed or not.
        let fat = Message::Hello {
            magic: MAGIC,
            version: 2,
            device_id: Uuid::nil(),
            credential: None,
            agent: "a".repeat(64 << 10),
        };
        assert!(matches!(
            decode(&framed(&fat)[4..]),
            Err(CodecError::TooLarge(_))
        ));
        // An unknown message type is refused before its body is read.
        assert!(decode(&[0, 77, 1, 2, 3]).is_err());
    }
}

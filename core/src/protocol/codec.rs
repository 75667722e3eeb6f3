//! Framing: `u32` big-endian length, one flags byte, then the postcard-encoded [`Message`],
//! zstd-compressed when large. Every limit is checked before allocating.

use super::messages::Message;

/// Largest frame accepted on the wire (after the length prefix, compressed).
pub const MAX_FRAME: usize = 32 << 20;
/// Largest decoded message body (after decompression).
pub const MAX_BODY: usize = 96 << 20;
/// Bodies at least this large are compressed.
pub const COMPRESS_FROM: usize = 1024;

const FLAG_ZSTD: u8 = 1;

/// Errors from encoding or decoding frames.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
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
    let Some((&flags, payload)) = frame.split_first() else {
        return Err(CodecError::Malformed("empty frame".into()));
    };
    if frame.len() > MAX_FRAME {
        return Err(CodecError::TooLarge(frame.len()));
    }
    let body;
    let bytes: &[u8] = match flags {
        0 => payload,
        FLAG_ZSTD => {
            // Refuse before decompressing when the declared content size is over the limit,
            // and cap the output buffer either way: a small frame cannot expand into gigabytes.
            if let Ok(Some(n)) = zstd::zstd_safe::get_frame_content_size(payload)
                && n > MAX_BODY as u64
            {
                return Err(CodecError::TooLarge(n as usize));
            }
            body = zstd::bulk::decompress(payload, MAX_BODY)
                .map_err(|e| CodecError::Decompress(e.to_string()))?;
            &body
        }
        f => return Err(CodecError::Malformed(format!("unknown flags {f:#x}"))),
    };
    postcard::from_bytes(bytes).map_err(|e| CodecError::Decode(e.to_string()))
}

/// A sans-IO frame reassembler: push bytes as they arrive, pop whole messages.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
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
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = decode(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        msg.map(Some)
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

//! Attachments: photos and signed documents that belong to a customer, visit or quote.
//!
//! How the parts fit:
//! - A document records each attachment as an entry ([`entry`]): the content's BLAKE3 hash,
//!   size, media type, file name, caption, author, time and an optional small preview. The
//!   entry travels with the document, on the document lane; the bytes do not.
//! - The bytes are content-addressed by that hash ([`BlobHash`]): stored once per content on
//!   the laptop and on the relay, whatever refers to them, and sent once.
//! - They travel in verified pieces ([`pieces`]): every piece is checked against the hash
//!   before it is stored, and a transfer resumes at the first piece the receiver lacks.
//! - The transfer messages ([`crate::protocol::Message::BlobPut`] and the others) go on a
//!   QUIC stream of their own with a lower priority than the document stream, so an edit
//!   never waits behind a photo.

pub mod entry;
pub mod local;
pub mod pieces;
pub mod relay;
pub mod transfer;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The BLAKE3 hash of an attachment's bytes: its address. Serialized as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobHash(pub [u8; 32]);

impl Serialize for BlobHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for BlobHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl BlobHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The first 12 hex digits, for people.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.short())
    }
}

impl FromStr for BlobHash {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| format!("`{s}` is not a 64-digit hex attachment hash"))?;
        Ok(Self(out))
    }
}

impl TryFrom<&[u8]> for BlobHash {
    type Error = String;

    fn try_from(b: &[u8]) -> Result<Self, Self::Error> {
        <[u8; 32]>::try_from(b)
            .map(Self)
            .map_err(|_| format!("an attachment hash has 32 bytes, not {}", b.len()))
    }
}

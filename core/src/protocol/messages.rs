//! The messages exchanged between a client and the relay.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{DocId, Role};

/// The protocol version spoken by this build. Peers with another version are refused with
/// [`ErrorCode::VersionMismatch`] during the handshake.
///
/// - 1: handshake, upload, download, live push, repair.
/// - 2: adds the first-use exchange [`Message::Enrol`] (a device redeems a one-time enrolment
///   token) and [`ErrorCode::Reconnect`].
/// - 3: adds [`Entry::Replace`] (IT replaced a document's history). A relay of this version
///   still serves clients of version [`OLDEST_PROTOCOL_VERSION`], sending them a replacement as
///   an ordinary [`Entry::Snapshot`].
/// - 4: adds lanes: [`Message::First`] names the customers whose documents a download brings
///   first, and the cursor states [`ScopeCursor::SnapshotFirst`] and [`ScopeCursor::LogFirst`]
///   that carry such a download across sessions. A relay never sends those states to a client
///   of an older version. And downloads stream: the relay answers a `Pull` with up to
///   [`DOWNLOAD_WINDOW`] batches, and the client asks for each further one with
///   [`Message::More`] as it applies one, so the link never idles between batches.
/// - 5: adds [`Message::Outbox`]: the client tells the relay what it has not had accepted yet,
///   so IT sees which laptops hold unsent work.
/// - 6: adds attachments: once the `Welcome` arrived, the client may open a second stream,
///   the *attachment stream*, on which it uploads ([`Message::BlobPut`], [`Message::BlobPiece`],
///   answered by [`Message::BlobStored`]) and downloads ([`Message::BlobGet`], answered by
///   [`Message::BlobSending`] and the pieces) attachment bytes in verified pieces
///   ([`crate::attachment::pieces`]). Both ends send it at a lower priority than the document
///   stream. Attachment messages are refused on the document stream and the other messages
///   on the attachment stream.
/// - 7: adds the device's standing orders: right after the `Welcome` the relay sends
///   [`Message::Policy`] (a remote wipe IT ordered, the offline lease), and a laptop told to
///   wipe answers [`Message::Wiped`] once its keys and files are gone. A device with a wipe
///   order is refused outright by clients of older versions, which could not carry it out.
pub const PROTOCOL_VERSION: u32 = 7;

/// The oldest client protocol version a relay of this build serves.
pub const OLDEST_PROTOCOL_VERSION: u32 = 2;

/// The first bytes of every `Hello`, so a stray peer is recognised at once.
pub const MAGIC: [u8; 4] = *b"FSYN";

/// A 32-byte Automerge change hash on the wire.
pub type Hash = [u8; 32];

/// Where a client's download stands in one scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScopeCursor {
    /// Getting compacted snapshots of the scope's documents, in document-id order. `high` is
    /// the relay's log position when the snapshot phase began (set by the relay on the first
    /// batch); `after` is the last document received.
    Snapshot {
        /// Log position at which the log phase resumes.
        high: Option<u64>,
        /// Last document id received.
        after: Option<DocId>,
    },
    /// Following the relay's log: every entry with a sequence number above `seq` is still to come.
    Log {
        /// Last sequence number applied.
        seq: u64,
    },
    /// The snapshot phase with a first lane (protocol 4): snapshots of the `first` customers'
    /// documents (the customers and their visits and quotes) come first, in id order, then
    /// those of every other document, in id order. The relay fixed `high` when the phase began.
    SnapshotFirst {
        /// Log position at which the log phase resumes.
        high: u64,
        /// The customers whose documents come first.
        first: Vec<DocId>,
        /// Every first document was sent.
        first_done: bool,
        /// Last document id received: a first document until `first_done`, then any other.
        after: Option<DocId>,
    },
    /// The log phase with a first lane (protocol 4): the entries of the `first` customers'
    /// documents up to `upto` come first (`first_seq` is the last of them sent); the rest of
    /// the log follows from `seq`, leaving out the entries the first lane sent. Once `seq`
    /// passes `first_seq` the state is plain [`ScopeCursor::Log`] again.
    LogFirst {
        /// Last sequence number applied of the rest of the log.
        seq: u64,
        /// The customers whose documents come first.
        first: Vec<DocId>,
        /// Last sequence number sent of the first lane.
        first_seq: u64,
        /// The log position the first lane ends at.
        upto: u64,
    },
}

impl ScopeCursor {
    /// The cursor of a scope the client has nothing of yet.
    pub fn fresh() -> Self {
        Self::Snapshot {
            high: None,
            after: None,
        }
    }
}

/// A client's download position: the relay's epoch and one cursor per scope. A cursor from
/// another epoch (the relay was restored from a backup or reset) is unusable and triggers repair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The relay epoch the sequence numbers belong to.
    pub epoch: Uuid,
    /// Position per scope.
    pub scopes: BTreeMap<String, ScopeCursor>,
}

/// One raw local change sent to the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadChange {
    /// The document changed.
    pub doc_id: DocId,
    /// The raw, uncompressed Automerge change.
    #[serde(with = "serde_bytes_vec")]
    pub bytes: Vec<u8>,
}

/// Why the relay refused a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The change hash.
    pub hash: Hash,
    /// A reason for people.
    pub reason: String,
    /// `true` when the refusal is temporary (e.g. its dependencies are not on the relay yet):
    /// the client keeps the change in its outbox and sends it again later. `false` means the
    /// change will never be accepted; the client moves it to its quarantine.
    pub retry: bool,
}

/// What a log entry carries for a document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// Raw Automerge changes, in log order.
    Changes(Vec<serde_bytes_vec::Bytes>),
    /// A compacted snapshot (`save()`) of the whole document.
    Snapshot(serde_bytes_vec::Bytes),
    /// The document left the scope (moved elsewhere); the client removes it once its own
    /// pending changes to it are acknowledged.
    Leave,
    /// The document's history was replaced (IT trimmed a document that outgrew its budget):
    /// the client takes this snapshot in place of its copy, carrying over its own
    /// unacknowledged edits (protocol 3).
    Replace(serde_bytes_vec::Bytes),
}

impl Entry {
    /// The raw bytes the entry carries (changes or a snapshot).
    pub fn raw_len(&self) -> usize {
        match self {
            Self::Changes(c) => c.iter().map(|b| b.0.len()).sum(),
            Self::Snapshot(b) | Self::Replace(b) => b.0.len(),
            Self::Leave => 0,
        }
    }
}

/// One item of a download batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The document.
    pub doc_id: DocId,
    /// What to apply.
    pub entry: Entry,
}

/// Machine-readable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The device is unknown, revoked or its credential is wrong.
    Unauthorized,
    /// A frame could not be decoded or broke a limit.
    BadFrame,
    /// A message arrived that the state machine did not expect.
    Protocol,
    /// The relay failed internally (storage); the client retries later.
    Internal,
    /// The relay is shutting down; the client reconnects later.
    ShuttingDown,
    /// The device's grant (scopes or role) changed while it was connected; the client
    /// reconnects at once to get the new one.
    Reconnect,
}

/// A remote wipe IT ordered for a device (`fieldsync-relay device revoke --wipe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WipeOrder {
    /// Destroy the replica at the next contact; nothing more is accepted from the laptop.
    Now,
    /// Upload every change and attachment still waiting, then destroy the replica (a
    /// departing employee's work reaches the relay first).
    AfterUpload,
}

/// What IT decided for a device beyond its grant, sent in [`Message::Policy`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePolicy {
    /// A remote wipe to carry out now.
    pub wipe: Option<WipeOrder>,
    /// Days the laptop's replica may go without contacting the relay before it refuses to
    /// open (`None`: no limit).
    pub lease_days: Option<u32>,
}

/// What a laptop destroyed on a wipe order ([`Message::Wiped`]), for the audit trail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipeReport {
    /// The replica was encrypted and its data key is destroyed (crypto-shredded).
    pub keys_destroyed: bool,
    /// Files removed.
    pub files_removed: u32,
    /// Local changes the relay never accepted that were destroyed with the replica (refused
    /// ones, or all of a wipe `Now`).
    pub unsent_changes: u64,
    /// Attachments made on the laptop that never reached the relay, destroyed with it.
    pub unsent_attachments: u64,
}

/// A protocol message. Each is sent as one length-prefixed frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Client → relay, first message.
    Hello {
        /// Always [`MAGIC`].
        magic: [u8; 4],
        /// The client's [`PROTOCOL_VERSION`].
        version: u32,
        /// The device id (prefix of every actor the device writes with).
        device_id: Uuid,
        /// The device's secret credential, if enrolled.
        credential: Option<String>,
        /// The client's software, for logs.
        agent: String,
    },
    /// Relay → client, handshake accepted.
    Welcome {
        /// The relay's protocol version.
        version: u32,
        /// The relay's current epoch.
        epoch: Uuid,
        /// The scopes this device may see.
        scopes: Vec<String>,
        /// The device's role.
        role: Role,
    },
    /// Either side: a fatal error; the sender closes the connection after it.
    Error {
        /// Code.
        code: ErrorCode,
        /// Reason for people.
        reason: String,
    },
    /// Client → relay: a batch of outbox changes.
    Upload {
        /// Batch number, echoed in the ack.
        batch: u64,
        /// The changes, in outbox order.
        changes: Vec<UploadChange>,
    },
    /// Relay → client: the batch's changes are durably stored (or refused).
    UploadAck {
        /// The batch number.
        batch: u64,
        /// Hashes stored (or already present: re-sending is harmless).
        accepted: Vec<Hash>,
        /// Hashes refused, with reasons.
        rejected: Vec<Rejection>,
    },
    /// Client → relay: send what follows `cursor`.
    Pull {
        /// The client's position.
        cursor: Cursor,
        /// Budget for the batch, in bytes before compression.
        max_bytes: u32,
    },
    /// Relay → client: a batch of entries, and the cursor to store with them.
    Batch {
        /// Entries in order.
        items: Vec<Item>,
        /// The cursor after applying this batch.
        cursor: Cursor,
        /// Nothing more is waiting on the relay right now; further entries arrive as live
        /// pushes without another `Pull`.
        caught_up: bool,
    },
    /// Client → relay (repair): the heads of the client's documents, in chunks.
    Heads {
        /// Document ids with their heads.
        docs: Vec<(DocId, Vec<Hash>)>,
        /// Last chunk.
        done: bool,
    },
    /// Relay → client (repair): documents whose changes the relay lacks, with the relay's
    /// heads (empty when the relay has no such document). The client uploads what follows.
    Missing {
        /// Documents and the relay's heads.
        docs: Vec<(DocId, Vec<Hash>)>,
        /// Last chunk of the answer to the client's `Heads`.
        done: bool,
    },
    /// Client → relay, first message instead of `Hello` when the device redeems a one-time
    /// enrolment token (protocol 2). The relay binds the token to `device_id`, stores the hash
    /// of `credential` (a secret the client generated and saved before sending) as the device's
    /// long-term credential, marks the token used and answers `Welcome`; the session then goes
    /// on as after a `Hello`. Sending the same token again with the same device id and
    /// credential succeeds again (an answer lost on the way is harmless); any other reuse is
    /// refused with [`ErrorCode::Unauthorized`].
    Enrol {
        /// Always [`MAGIC`].
        magic: [u8; 4],
        /// The client's [`PROTOCOL_VERSION`].
        version: u32,
        /// The device id (prefix of every actor the device writes with).
        device_id: Uuid,
        /// The enrolment token's secret.
        token: String,
        /// The long-term credential the device will present in every later `Hello`.
        credential: String,
        /// The client's software, for logs.
        agent: String,
    },
    /// Client → relay (protocol 4), before a `Pull`: the customers whose documents the device
    /// needs first (visits planned in the next days, recent work). A download that begins
    /// after it brings those customers' documents, and their visits and quotes, ahead of the
    /// rest. At most [`MAX_FIRST_CUSTOMERS`] are taken; documents outside the device's scopes
    /// are never read, whatever it names.
    First {
        /// Customer document ids, most urgent first.
        customers: Vec<DocId>,
    },
    /// Client → relay (protocol 4): a download batch that was not the last is applied; send
    /// the next one. The relay sends it from where its last batch ended; a relay whose
    /// download caught up (it sent a batch that says so) ignores it.
    More,
    /// Relay → client (protocol 4), ahead of the batches answering a `Pull`: about how much
    /// the download has left from the pull's cursor, for the rep's status. Counted per scope:
    /// documents still to come as snapshots, and those with log entries waiting (a document
    /// may count twice), with the raw bytes of both.
    Waiting {
        /// Documents with something waiting.
        documents: u64,
        /// Raw (uncompressed) bytes waiting.
        bytes: u64,
    },
    /// Client → relay (protocol 5), in the first flight right after the `Hello` and after each
    /// `UploadAck`: what the client still holds that the relay has not accepted, for IT's
    /// device list. Advisory: the relay records it and answers nothing.
    Outbox {
        /// Local changes not yet acknowledged.
        changes: u64,
        /// Documents they change.
        documents: u64,
        /// Their raw bytes.
        bytes: u64,
        /// Local changes the relay refused, kept in the client's quarantine.
        quarantined: u64,
    },
    /// Client → relay (protocol 6, attachment stream): the client has attachment `hash` of
    /// `size` bytes to upload. The relay answers [`Message::BlobStored`] with the pieces it
    /// already holds (all of them: nothing to send), or [`Message::BlobRefused`].
    BlobPut {
        /// The attachment's BLAKE3 hash.
        hash: Hash,
        /// Its size in bytes.
        size: u64,
    },
    /// Either way (protocol 6, attachment stream): piece `index` of attachment `hash`, as its
    /// verified encoding ([`crate::attachment::pieces::encode_piece`]). Uploads send pieces
    /// in order from where the relay's `BlobStored` said; downloads from where the `BlobGet`
    /// asked.
    BlobPiece {
        /// The attachment.
        hash: Hash,
        /// The piece's index.
        index: u32,
        /// The parent hashes on the piece's path, then its bytes.
        #[serde(with = "serde_bytes_vec")]
        encoded: Vec<u8>,
    },
    /// Relay → client (protocol 6, attachment stream): pieces `0..stored` of attachment
    /// `hash` are durably stored on the relay; the upload is complete when `stored == count`.
    /// Sent after a `BlobPut` and after each piece; after a piece that did not verify it
    /// repeats where the upload stands, and the client sends from there again.
    BlobStored {
        /// The attachment.
        hash: Hash,
        /// Pieces stored, from the first.
        stored: u32,
        /// The attachment's pieces.
        count: u32,
    },
    /// Client → relay (protocol 6, attachment stream): send attachment `hash` from piece
    /// `from` on (the pieces before it the client already holds).
    BlobGet {
        /// The attachment.
        hash: Hash,
        /// First piece wanted.
        from: u32,
    },
    /// Relay → client (protocol 6, attachment stream): the answer to a `BlobGet`; the pieces
    /// from `from` on follow, in order.
    BlobSending {
        /// The attachment.
        hash: Hash,
        /// Its size as the relay verified it.
        size: u64,
        /// First piece that follows.
        from: u32,
    },
    /// Client → relay (protocol 6, attachment stream): stop sending attachment `hash`.
    BlobCancel {
        /// The attachment.
        hash: Hash,
    },
    /// Relay → client (protocol 6, attachment stream): an upload or download of `hash` is
    /// refused; `retry` says whether asking again later can succeed.
    BlobRefused {
        /// The attachment.
        hash: Hash,
        /// Why, for people.
        reason: String,
        /// Temporary: the same request may succeed later.
        retry: bool,
    },
    /// Relay → client (protocol 7), right after the `Welcome`: the device's standing orders.
    Policy {
        /// The orders.
        policy: DevicePolicy,
        /// The relay's clock (Unix milliseconds), for the laptop's lease.
        relay_time: i64,
    },
    /// Client → relay (protocol 7): the laptop carried out a wipe order; the relay records it
    /// in its audit trail and closes the connection. The laptop's credential ends with it.
    Wiped {
        /// What was destroyed.
        report: WipeReport,
    },
}

/// How many download batches a relay sends a protocol-4 client ahead of its [`Message::More`]:
/// one being applied while the next crosses the link.
pub const DOWNLOAD_WINDOW: u32 = 2;

/// Most customers one [`Message::First`] (and one lane of a cursor) names; a longer list is
/// cut to its first entries.
pub const MAX_FIRST_CUSTOMERS: usize = 64;

impl Message {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::Welcome { .. } => "Welcome",
            Self::Error { .. } => "Error",
            Self::Upload { .. } => "Upload",
            Self::UploadAck { .. } => "UploadAck",
            Self::Pull { .. } => "Pull",
            Self::Batch { .. } => "Batch",
            Self::Heads { .. } => "Heads",
            Self::Missing { .. } => "Missing",
            Self::Enrol { .. } => "Enrol",
            Self::First { .. } => "First",
            Self::More => "More",
            Self::Waiting { .. } => "Waiting",
            Self::Outbox { .. } => "Outbox",
            Self::BlobPut { .. } => "BlobPut",
            Self::BlobPiece { .. } => "BlobPiece",
            Self::BlobStored { .. } => "BlobStored",
            Self::BlobGet { .. } => "BlobGet",
            Self::BlobSending { .. } => "BlobSending",
            Self::BlobCancel { .. } => "BlobCancel",
            Self::BlobRefused { .. } => "BlobRefused",
            Self::Policy { .. } => "Policy",
            Self::Wiped { .. } => "Wiped",
        }
    }

    /// Whether the message belongs on the attachment stream (protocol 6).
    pub fn is_attachment(&self) -> bool {
        matches!(
            self,
            Self::BlobPut { .. }
                | Self::BlobPiece { .. }
                | Self::BlobStored { .. }
                | Self::BlobGet { .. }
                | Self::BlobSending { .. }
                | Self::BlobCancel { .. }
                | Self::BlobRefused { .. }
        )
    }
}

/// Compact serde for byte vectors (postcard writes `Vec<u8>` as a length plus bytes either way;
/// this module keeps the intent explicit and gives a newtype for nested use).
pub mod serde_bytes_vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Serializes bytes.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    /// Deserializes bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Bytes::deserialize(d).map(|b| b.0)
    }

    /// A byte vector that serializes as bytes.
    #[derive(Clone, Debug, PartialEq, Eq, Default)]
    pub struct Bytes(pub Vec<u8>);

    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                    Ok(Bytes(v))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Bytes, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(Bytes(out))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}

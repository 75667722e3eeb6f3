//! The relay's attachment stream against hostile devices, over real QUIC on 127.0.0.1: an
//! in-process relay in closed mode, devices enrolled with one-time tokens, honest laptops
//! syncing with the real client (`fieldsync_client::sync`) and a hostile device that speaks
//! protocol 6 raw, on its document stream and on a second, attachment stream (the relay's
//! pinned certificate, as every client, through `fieldsync_relay::tls`). The hostile device is
//! enrolled like any other: it holds a valid credential and a grant, and attacks from inside.
//!
//! What the relay promises, and the test that holds it to each promise:
//!
//! - **No oracle outside the scopes.** A device outside the scope of every document that refers
//!   to an attachment cannot tell it from one the relay never saw: a `BlobGet`, a `BlobPut` and
//!   a stray `BlobPiece` of it are answered word for word as those of an unknown hash, and it
//!   never gets a byte: `a_outside_its_scopes_a_device_cannot_tell_an_attachment_from_none`.
//! - **Nothing unverified is stored.** Pieces that do not verify against the attachment's hash
//!   (a flipped byte or parent hash, another position's piece, another file's piece, cut or
//!   padded encodings) are answered with the unchanged count and never stored; after
//!   `MAX_BAD_PIECES` of them the upload is refused for good; resent and out-of-order pieces
//!   are not held against the sender. An honest upload of the same content then resumes from
//!   the pieces that did verify and completes, and a download gives back the true bytes, to a
//!   raw reader and to a real laptop:
//!   `b_pieces_that_do_not_verify_are_never_stored_and_the_true_bytes_still_arrive`.
//! - **Limits before bytes.** A `BlobPut` over the relay's per-file limit is refused for good,
//!   with the limit in the reason, before any piece is read; nothing is stored and a piece sent
//!   anyway finds no upload: `c_an_oversize_upload_is_refused_with_the_limit_before_any_piece`.
//! - **Each stream carries its own messages, and frames keep their caps.** An attachment
//!   message on the document stream ends the session with a protocol error; a document
//!   message on the attachment stream ends that stream:
//!   `d_attachment_messages_on_the_document_stream_end_the_session`. A `BlobPiece` frame one
//!   byte over its body cap ends the attachment stream before it is decoded (one exactly at
//!   the cap is decoded and judged as a piece), and the relay goes on serving other devices
//!   and the same device: `d_a_piece_frame_over_its_cap_is_refused_and_the_relay_serves_on`.
//! - **The relay judges the entry, not how it was written.** Attachment entries written
//!   straight into Automerge (past the client's checks) that are malformed — a hash that is
//!   not hex, too short, bytes or missing; a size of zero, negative, over 4 GiB or text; a
//!   media type that is none; a preview over 32 KiB or not bytes; a file name over 255 bytes;
//!   an entry that is no map — or that change an entry's content or take back a removal are
//!   refused for good with a reason naming the entry (the laptop quarantines them, nothing
//!   stays in its outbox), no other laptop ever holds them, and a refused entry gives no
//!   access to its hash; a well-formed entry written the same raw way is accepted and reaches
//!   another laptop: `e_malformed_attachment_entries_are_refused_however_written`.
//!
//! - f: a device naming the same hash under another size cannot undo or poison another
//!   device's upload in progress: `f_a_put_under_another_size_cannot_poison_an_upload_in_progress`.

use std::net::SocketAddr;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use fieldsync_client::sync::{
    EnrolToken, SyncConfig, SyncReport, enrol_replica, load_credential, sync_now,
};
use fieldsync_client::{Client, CustomerId, DocId, Identity, NewCustomer, Role};
use fieldsync_core::attachment::BlobHash;
use fieldsync_core::attachment::entry::{
    ATTACHMENTS_KEY, AttachmentEdit, AttachmentInput, MAX_PREVIEW_BYTES, apply, attachments,
};
use fieldsync_core::attachment::pieces::{
    decode_piece, encode_piece, outboard, piece_count, piece_range,
};
use fieldsync_core::attachment::relay::{BlobDb, MAX_BAD_PIECES};
use fieldsync_core::ids::now_millis;
use fieldsync_core::model::{EditCtx, ModelError, new_item_id};
use fieldsync_core::protocol::codec::{FrameDecoder, PIECE_FRAME_BODY, encode};
use fieldsync_core::protocol::messages::MAGIC;
use fieldsync_core::protocol::{ErrorCode, Message, PROTOCOL_VERSION};
use fieldsync_relay::store::RelayBlobs;
use fieldsync_relay::{Relay, RelayConfig, tls};
use quinn::{Endpoint, RecvStream, SendStream};
use tokio::time::timeout;

/// Longest a sync, a connection or an answer may take before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(30);

/// The relay's per-file limit in these tests (shown as `0.5 MiB` in its reasons).
const MAX_FILE: u64 = 512 << 10;

// ---------------------------------------------------------------------------------------------
// A relay, its laptops and the hostile device.

/// A closed relay with a small per-file limit, and a handle on its attachment store.
struct World {
    dir: tempfile::TempDir,
    relay: Relay,
    blobs: RelayBlobs,
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = timeout(
        LIMIT,
        Relay::start(RelayConfig {
            data_dir: dir.path().join("relay"),
            listen: "127.0.0.1:0".parse().expect("addr"),
            attachment_max_file_bytes: MAX_FILE,
            ..RelayConfig::default()
        }),
    )
    .await
    .expect("relay starts in time")
    .expect("relay starts");
    let blobs = RelayBlobs::open(relay.store()).expect("the relay's attachment store");
    World { dir, relay, blobs }
}

impl World {
    /// Enrols a laptop in `scopes` as a rep.
    async fn laptop(&self, name: &str, scopes: &[&str]) -> Laptop {
        let client = Client::open(self.dir.path().join(format!("{name}.db"))).expect("replica");
        client
            .set_identity(Identity::new(name, Role::Rep, "acme"))
            .expect("identity");
        let store = self.relay.store().clone();
        let (owned, scopes): (String, Vec<String>) = (
            name.to_string(),
            scopes.iter().map(|s| s.to_string()).collect(),
        );
        let secret = tokio::task::spawn_blocking(move || {
            store.create_enrolment(&owned, Role::Rep, &scopes, None, Duration::from_secs(3600))
        })
        .await
        .expect("store call")
        .expect("enrolment token");
        let token = EnrolToken::new(
            &self.relay.local_addr().to_string(),
            self.relay.fingerprint(),
            &secret,
        )
        .expect("token");
        let e = timeout(
            LIMIT,
            enrol_replica(&client, &token, Duration::from_secs(5)),
        )
        .await
        .expect("enrolment in time")
        .expect("enrolled");
        let mut cfg = SyncConfig::new(&e.relay, &e.pin);
        cfg.credential = load_credential(&client).expect("credential");
        cfg.connect_timeout = Duration::from_secs(5);
        cfg.response_timeout = Duration::from_secs(20);
        Laptop {
            name: name.to_string(),
            client,
            cfg,
            addr: self.relay.local_addr(),
            pin: self.relay.fingerprint().to_string(),
        }
    }

    /// How many pieces of `hash` the relay stores, and whether they are complete (`None`: it
    /// has no row for it at all).
    fn stored(&self, hash: BlobHash) -> Option<(u32, bool)> {
        self.blobs
            .blob(hash)
            .expect("relay attachment row")
            .map(|r| (r.stored, r.complete))
    }

    /// The bytes of piece `index` of `hash` on the relay.
    fn relay_piece(&self, hash: BlobHash, index: u32) -> Option<Vec<u8>> {
        self.blobs.piece(hash, index).expect("relay piece")
    }
}

/// A laptop: its replica, its sync settings (with the enrolled credential) and where it syncs.
struct Laptop {
    name: String,
    client: Client,
    cfg: SyncConfig,
    addr: SocketAddr,
    pin: String,
}

impl Laptop {
    async fn sync(&self) -> SyncReport {
        timeout(LIMIT, sync_now(&self.client, &self.cfg))
            .await
            .unwrap_or_else(|_| panic!("{} sync timed out", self.name))
            .unwrap_or_else(|e| panic!("{} sync failed: {e}", self.name))
    }

    fn customer(&self, scope: &str, name: &str) -> CustomerId {
        self.client
            .customers()
            .create(NewCustomer {
                scope: scope.into(),
                name: name.into(),
                ..Default::default()
            })
            .expect("create customer")
    }

    /// Writes straight into the replica's Automerge document (past the client's checks); the
    /// raw change goes into the outbox and the real client uploads it at the next sync.
    fn forge(
        &self,
        id: impl Into<DocId>,
        f: impl FnOnce(&mut AutoCommit) -> Result<(), ModelError>,
    ) {
        let id = id.into();
        self.client
            .with_store(|s| s.edit(id, f))
            .unwrap_or_else(|e| panic!("{}: forging a change to {id}: {e}", self.name));
    }

    /// Records an attachment entry for `file` in document `doc` (as `AttachmentEdit::Add`
    /// does) without putting its bytes into the laptop's attachment store: the real client
    /// uploads the entry and never the bytes, which the test then sends raw. Returns the
    /// entry id.
    fn entry_without_bytes(&self, doc: impl Into<DocId>, file: &File) -> String {
        let id = new_item_id();
        let edit = AttachmentEdit::Add(id.clone(), file.input());
        let ctx = EditCtx::new(self.name.as_str(), Role::Rep);
        self.forge(doc, |d| apply(d, &edit, &ctx));
        id
    }

    /// Refusal reasons of this laptop's quarantined changes to `id`.
    fn refusals(&self, id: impl Into<DocId>) -> Vec<String> {
        let id = id.into();
        self.client
            .with_store(|s| s.quarantine())
            .expect("quarantine")
            .into_iter()
            .filter(|q| q.doc_id == id)
            .map(|q| q.reason)
            .collect()
    }

    /// The raw Automerge document, if the replica holds it.
    fn raw(&self, id: impl Into<DocId>) -> Option<AutoCommit> {
        let id = id.into();
        self.client.with_store(|s| {
            s.contains(id)
                .expect("contains")
                .then(|| s.automerge(id).expect("automerge"))
        })
    }

    /// A raw protocol connection to the relay, logged in as this laptop's device.
    async fn connect(&self) -> Conn {
        let mut c = Conn::open(self.addr, &self.pin).await;
        let hello = Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            device_id: self.client.device_id(),
            credential: self.cfg.credential.clone(),
            agent: "attachments-hostile".into(),
        };
        match c.doc.ask(&hello).await {
            Message::Welcome { .. } => {
                let policy = c.doc.next().await;
                assert!(matches!(policy, Some(Message::Policy { .. })), "{policy:?}");
                c
            }
            other => panic!("{}: Hello refused: {other:?}", self.name),
        }
    }
}

/// The keys of every entry in a document's attachments map, malformed ones included.
fn entry_ids(doc: &AutoCommit) -> Vec<String> {
    match doc.get(ROOT, ATTACHMENTS_KEY).expect("get") {
        Some((Value::Object(ObjType::Map), c)) => doc.keys(&c).collect(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw QUIC: a connection with its document stream, and attachment streams.

/// One stream, either way, with the frames received and not read yet.
struct Stream {
    send: SendStream,
    recv: RecvStream,
    decoder: FrameDecoder,
}

impl Stream {
    fn new(send: SendStream, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            decoder: FrameDecoder::new(),
        }
    }

    /// Sends bytes as they are; `false` if the relay no longer takes them (it stopped the
    /// stream or closed the connection: an answer too).
    async fn send_raw(&mut self, bytes: &[u8]) -> bool {
        timeout(LIMIT, self.send.write_all(bytes))
            .await
            .expect("written in time")
            .is_ok()
    }

    async fn send(&mut self, m: &Message) -> bool {
        self.send_raw(&encode(m).expect("encode")).await
    }

    /// The next message, or `None` once the relay ended the stream (finished or reset it, or
    /// closed the connection). Fails the test if the relay neither answers nor ends it.
    async fn next(&mut self) -> Option<Message> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if let Some(m) = self
                .decoder
                .next_message()
                .expect("the relay's frames decode")
            {
                return Some(m);
            }
            match timeout(LIMIT, self.recv.read(&mut buf))
                .await
                .expect("the relay answers or ends the stream in time")
            {
                Ok(Some(n)) => self.decoder.push(&buf[..n]),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Sends `m` and returns the relay's answer.
    async fn ask(&mut self, m: &Message) -> Message {
        assert!(self.send(m).await, "the relay stopped taking {}", m.name());
        self.next().await.unwrap_or_else(|| {
            panic!(
                "the relay ended the stream instead of answering {}",
                m.name()
            )
        })
    }
}

/// A raw connection to the relay.
struct Conn {
    _ep: Endpoint,
    conn: quinn::Connection,
    /// The document stream (the first one opened).
    doc: Stream,
}

impl Conn {
    async fn open(addr: SocketAddr, pin: &str) -> Self {
        let mut ep = Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        ep.set_default_client_config(tls::client_config(pin).expect("tls"));
        let conn = timeout(LIMIT, ep.connect(addr, tls::SERVER_NAME).expect("connect"))
            .await
            .expect("connected in time")
            .expect("connected");
        let (send, recv) = timeout(LIMIT, conn.open_bi())
            .await
            .expect("stream in time")
            .expect("stream");
        Self {
            _ep: ep,
            conn,
            doc: Stream::new(send, recv),
        }
    }

    /// Opens an attachment stream (the relay sees it with its first frame).
    async fn blobs(&self) -> Stream {
        let (send, recv) = timeout(LIMIT, self.conn.open_bi())
            .await
            .expect("stream in time")
            .expect("attachment stream");
        Stream::new(send, recv)
    }

    fn close(self) {
        self.conn.close(0u32.into(), b"done");
    }
}

// ---------------------------------------------------------------------------------------------
// Files and pieces.

/// Bytes that do not compress (so frames carry them as they are).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// An attachment's bytes, hash and outboard.
struct File {
    data: Vec<u8>,
    hash: BlobHash,
    ob: Vec<u8>,
}

impl File {
    fn new(len: usize, seed: u64) -> Self {
        let data = noise(len, seed);
        let (hash, ob) = outboard(&data[..], len as u64).expect("outboard");
        Self { data, hash, ob }
    }

    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn count(&self) -> u32 {
        piece_count(self.size())
    }

    fn bytes_of(&self, i: u32) -> &[u8] {
        let r = piece_range(self.size(), i).expect("piece range");
        &self.data[r.start as usize..r.end as usize]
    }

    /// Piece `i`'s verified encoding.
    fn encoded(&self, i: u32) -> Vec<u8> {
        encode_piece(self.hash, self.size(), &self.ob, i, self.bytes_of(i)).expect("encode")
    }

    fn piece(&self, i: u32) -> Message {
        self.piece_as(i, self.encoded(i))
    }

    /// `encoded` sent as piece `i` of this file.
    fn piece_as(&self, i: u32, encoded: Vec<u8>) -> Message {
        Message::BlobPiece {
            hash: self.hash.0,
            index: i,
            encoded,
        }
    }

    fn put(&self) -> Message {
        Message::BlobPut {
            hash: self.hash.0,
            size: self.size(),
        }
    }

    fn stored(&self, stored: u32) -> Message {
        Message::BlobStored {
            hash: self.hash.0,
            stored,
            count: self.count(),
        }
    }

    fn input(&self) -> AttachmentInput {
        AttachmentInput {
            hash: Some(self.hash),
            size: self.size(),
            media_type: "application/pdf".into(),
            name: "receipt.pdf".into(),
            caption: String::new(),
            preview: None,
        }
    }
}

/// Uploads `file` on `s` honestly, from where the relay stands; returns the last answer.
async fn upload(s: &mut Stream, file: &File) -> Message {
    let mut answer = s.ask(&file.put()).await;
    while let Message::BlobStored { stored, count, .. } = answer {
        if stored == count {
            break;
        }
        answer = s.ask(&file.piece(stored)).await;
    }
    answer
}

/// Downloads `hash` on `s`, verifying every piece; the relay's refusal (or any other answer)
/// as `Err`.
async fn download(s: &mut Stream, hash: BlobHash) -> Result<Vec<u8>, Message> {
    let first = s
        .ask(&Message::BlobGet {
            hash: hash.0,
            from: 0,
        })
        .await;
    let Message::BlobSending { size, from: 0, .. } = first else {
        return Err(first);
    };
    let mut out = Vec::new();
    for i in 0..piece_count(size) {
        match s.next().await.expect("the relay sends every piece") {
            Message::BlobPiece { index, encoded, .. } if index == i => {
                out.extend(decode_piece(hash, size, i, &encoded).expect("a served piece verifies"))
            }
            other => return Err(other),
        }
    }
    Ok(out)
}

/// A download's length and hash (its bytes are too many for a failure message).
fn digest(r: Result<Vec<u8>, Message>) -> Result<(usize, BlobHash), Message> {
    r.map(|b| (b.len(), BlobHash::of(&b)))
}

/// A request about a hash.
type Probe = fn(BlobHash) -> Message;

/// The reason and retry flag of a refusal (fails the test on any other answer).
fn refusal(m: &Message) -> (String, bool) {
    match m {
        Message::BlobRefused { reason, retry, .. } => (reason.clone(), *retry),
        other => panic!("expected BlobRefused, got {other:?}"),
    }
}

/// The same answer with another hash in it, so answers about two hashes compare.
fn rehash(m: &Message, to: BlobHash) -> Message {
    let mut m = m.clone();
    if let Message::BlobRefused { hash, .. }
    | Message::BlobStored { hash, .. }
    | Message::BlobSending { hash, .. } = &mut m
    {
        *hash = to.0;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_outside_its_scopes_a_device_cannot_tell_an_attachment_from_none() {
    let w = world().await;
    let li = w.laptop("li", &["north"]).await;
    let mallory = w.laptop("mallory", &["south"]).await;

    // An honest laptop in north attaches a receipt to a customer and syncs it up.
    let customer = li.customer("north", "Baotou Mining");
    let receipt = noise(300_000, 1);
    let a = li
        .client
        .attachments()
        .attach_bytes(customer, "receipt.pdf", None, &receipt, "signed")
        .expect("attach");
    let hash = a.attachment.hash;
    let report = li.sync().await;
    assert_eq!(report.attachments_uploaded, 1, "{report:?}");
    assert_eq!(
        w.stored(hash),
        Some((5, true)),
        "the relay holds the receipt"
    );
    let unknown = BlobHash::of(b"a file no laptop ever attached");
    assert_eq!(w.stored(unknown), None);

    // The south device asks for it by hash, offers it, and sends a piece of it; and the same
    // for a hash the relay never saw. Every answer is the same, word for word.
    let c = mallory.connect().await;
    let mut s = c.blobs().await;
    let probes: [(&str, Probe); 4] = [
        ("BlobGet", |h| Message::BlobGet { hash: h.0, from: 0 }),
        ("BlobGet from the last piece", |h| Message::BlobGet {
            hash: h.0,
            from: 4,
        }),
        ("BlobPut", |h| Message::BlobPut {
            hash: h.0,
            size: 300_000,
        }),
        ("BlobPiece", |h| Message::BlobPiece {
            hash: h.0,
            index: 0,
            encoded: vec![7; 1000],
        }),
    ];
    for (what, about) in probes {
        let theirs = s.ask(&about(hash)).await;
        let none = s.ask(&about(unknown)).await;
        assert!(
            matches!(theirs, Message::BlobRefused { .. }),
            "{what}: {theirs:?}"
        );
        assert_eq!(
            rehash(&theirs, unknown),
            none,
            "{what}: the north attachment is answered otherwise than an unknown hash"
        );
    }
    // Fetching is refused for good (there is nothing to wait for); offering may pass later
    // (a document in the device's scopes may come to refer to it).
    let get = s
        .ask(&Message::BlobGet {
            hash: hash.0,
            from: 0,
        })
        .await;
    assert!(!refusal(&get).1, "{get:?}");
    let put = s
        .ask(&Message::BlobPut {
            hash: hash.0,
            size: 300_000,
        })
        .await;
    assert!(refusal(&put).1, "{put:?}");
    // No piece ever came: after a cancel (which gets no answer) the next request is answered
    // at once, not after any piece.
    assert!(s.send(&Message::BlobCancel { hash: hash.0 }).await);
    let after = s
        .ask(&Message::BlobGet {
            hash: unknown.0,
            from: 0,
        })
        .await;
    assert!(matches!(after, Message::BlobRefused { .. }), "{after:?}");
    c.close();

    // The relay's copy is untouched, and the honest side still reads it.
    assert_eq!(w.stored(hash), Some((5, true)));
    let wang = w.laptop("wang", &["north"]).await;
    wang.sync().await;
    wang.client
        .attachments()
        .fetch(customer, hash, receipt.len() as u64)
        .expect("fetch");
    let report = wang.sync().await;
    assert_eq!(report.attachments_downloaded, 1, "{report:?}");
    assert_eq!(wang.client.attachments().read(hash).expect("read"), receipt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_pieces_that_do_not_verify_are_never_stored_and_the_true_bytes_still_arrive() {
    let w = world().await;
    let li = w.laptop("li", &["north"]).await;
    let mallory = w.laptop("mallory", &["north"]).await;

    // Mallory records an attachment entry on a customer of its own, in its scope, and syncs
    // the document up (the entry is well formed: the relay accepts it).
    let file = File::new(200_000, 2);
    assert_eq!(file.count(), 4);
    let customer = mallory.customer("north", "Mallory Mining");
    mallory.entry_without_bytes(customer, &file);
    let report = mallory.sync().await;
    assert_eq!(
        (report.changes_acked, report.changes_rejected),
        (2, 0),
        "{report:?}"
    );

    // Its upload starts honestly: piece 0 verifies and is stored.
    let c = mallory.connect().await;
    let mut s = c.blobs().await;
    assert_eq!(s.ask(&file.put()).await, file.stored(0));
    assert_eq!(s.ask(&file.piece(0)).await, file.stored(1));
    assert_eq!(w.stored(file.hash), Some((1, false)));

    // Then pieces that do not verify, each in place of piece 1.
    let other = File::new(200_000, 3);
    let good = file.encoded(1);
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let mut parent = good.clone();
    parent[0] ^= 0x80;
    let mut padded = good.clone();
    padded.push(0);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("a flipped bit in the piece's bytes", flipped),
        ("a flipped bit in a parent hash", parent),
        ("piece 2's encoding", file.encoded(2)),
        ("piece 1 of another file of the same size", other.encoded(1)),
        (
            "piece 1 cut short by a byte",
            good[..good.len() - 1].to_vec(),
        ),
        ("piece 1 with a byte more", padded),
        (
            "piece 1's bytes without the parent hashes",
            file.bytes_of(1).to_vec(),
        ),
        ("nothing", Vec::new()),
    ];
    assert_eq!(bad.len() as u32, MAX_BAD_PIECES);
    for (n, (what, encoded)) in bad.into_iter().enumerate() {
        let answer = s.ask(&file.piece_as(1, encoded)).await;
        if n + 1 < MAX_BAD_PIECES as usize {
            assert_eq!(answer, file.stored(1), "{what}: the count must stay at 1");
        } else {
            let (reason, retry) = refusal(&answer);
            assert!(
                !retry,
                "{what}: refused for good after {MAX_BAD_PIECES} bad pieces"
            );
            assert!(reason.contains("did not match"), "{reason}");
        }
        assert_eq!(
            w.stored(file.hash),
            Some((1, false)),
            "{what}: nothing stored"
        );
        assert_eq!(
            w.relay_piece(file.hash, 1),
            None,
            "{what}: no piece 1 on the relay"
        );
        assert_eq!(
            w.relay_piece(file.hash, 0).as_deref(),
            Some(file.bytes_of(0)),
            "{what}: piece 0 is still the true one"
        );
        if n == 0 {
            // A resend of a stored piece and a (valid) piece ahead of the gap are answered
            // with where the upload stands, stored nowhere, and not held against the sender.
            assert_eq!(s.ask(&file.piece(0)).await, file.stored(1));
            assert_eq!(s.ask(&file.piece(3)).await, file.stored(1));
            assert_eq!(w.relay_piece(file.hash, 3), None);
        }
    }
    // The refused upload is over on this stream: a further piece finds none.
    let after = s.ask(&file.piece(1)).await;
    assert!(refusal(&after).0.contains("not started"), "{after:?}");
    assert_eq!(w.stored(file.hash), Some((1, false)));
    assert_eq!(
        w.relay.metrics().attachment_bad_pieces.get(),
        u64::from(MAX_BAD_PIECES)
    );
    c.close();

    // An honest upload of the same content resumes from the piece that verified, completes,
    // and reads back as the true bytes.
    let c = mallory.connect().await;
    let mut s = c.blobs().await;
    assert_eq!(
        s.ask(&file.put()).await,
        file.stored(1),
        "resumes at piece 1"
    );
    assert_eq!(upload(&mut s, &file).await, file.stored(4));
    assert_eq!(w.stored(file.hash), Some((4, true)));
    assert_eq!(
        digest(download(&mut s, file.hash).await),
        Ok((file.data.len(), file.hash))
    );
    c.close();

    // A real laptop in the scope gets the same bytes.
    li.sync().await;
    li.client
        .attachments()
        .fetch(customer, file.hash, file.size())
        .expect("fetch");
    let report = li.sync().await;
    assert_eq!(report.attachments_downloaded, 1, "{report:?}");
    assert_eq!(
        li.client.attachments().read(file.hash).expect("read"),
        file.data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_an_oversize_upload_is_refused_with_the_limit_before_any_piece() {
    let w = world().await;
    let mallory = w.laptop("mallory", &["north"]).await;

    // A document in its scope refers to a file over the relay's limit (a document may refer
    // to up to 4 GiB: the relay's own limit applies to the bytes).
    let big = File::new(MAX_FILE as usize + 1, 4);
    let customer = mallory.customer("north", "Big Files Ltd");
    mallory.entry_without_bytes(customer, &big);
    let report = mallory.sync().await;
    assert_eq!(report.changes_rejected, 0, "{report:?}");

    let c = mallory.connect().await;
    let mut s = c.blobs().await;
    for size in [big.size(), MAX_FILE + 1, u64::MAX] {
        let answer = s
            .ask(&Message::BlobPut {
                hash: big.hash.0,
                size,
            })
            .await;
        let (reason, retry) = refusal(&answer);
        assert!(!retry, "size {size}: refused for good");
        assert!(
            reason.contains("limit") && reason.contains("0.5 MiB"),
            "size {size}: the reason names the limit: {reason}"
        );
        // Nothing was started: no row on the relay, and a piece finds no upload.
        assert_eq!(w.stored(big.hash), None, "size {size}");
        let piece = s.ask(&big.piece(0)).await;
        assert!(refusal(&piece).0.contains("not started"), "{piece:?}");
        assert_eq!(w.stored(big.hash), None, "size {size}");
    }
    // The same stream still takes an upload within the limit.
    let small = File::new(70_000, 5);
    mallory.entry_without_bytes(customer, &small);
    mallory.sync().await;
    assert_eq!(upload(&mut s, &small).await, small.stored(2));
    c.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_attachment_messages_on_the_document_stream_end_the_session() {
    let w = world().await;
    let mallory = w.laptop("mallory", &["north"]).await;
    let file = File::new(10_000, 6);
    let customer = mallory.customer("north", "Stream Mixers Inc");
    mallory.entry_without_bytes(customer, &file);
    mallory.sync().await;

    for m in [
        file.put(),
        file.piece(0),
        Message::BlobGet {
            hash: file.hash.0,
            from: 0,
        },
        Message::BlobCancel { hash: file.hash.0 },
    ] {
        let mut c = mallory.connect().await;
        match c.doc.ask(&m).await {
            Message::Error {
                code: ErrorCode::Protocol,
                reason,
            } => assert!(reason.contains(m.name()), "{reason}"),
            other => panic!("{} on the document stream: {other:?}", m.name()),
        }
        assert_eq!(c.doc.next().await, None, "{}: the session ends", m.name());
        assert_eq!(w.stored(file.hash), None, "{}: nothing started", m.name());
        c.close();
    }

    // A document message on the attachment stream ends that stream, not the session.
    let mut c = mallory.connect().await;
    let mut s = c.blobs().await;
    assert!(s.send(&Message::More).await);
    assert_eq!(s.next().await, None, "the attachment stream ends");
    let heads = Message::Heads {
        docs: Vec::new(),
        done: true,
    };
    let answer = c.doc.ask(&heads).await;
    assert!(
        matches!(answer, Message::Missing { done: true, .. }),
        "the document stream still serves: {answer:?}"
    );
    c.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_a_piece_frame_over_its_cap_is_refused_and_the_relay_serves_on() {
    let w = world().await;
    let li = w.laptop("li", &["north"]).await;
    let mallory = w.laptop("mallory", &["north"]).await;
    let file = File::new(100_000, 7);
    let customer = mallory.customer("north", "Frame Makers");
    mallory.entry_without_bytes(customer, &file);
    mallory.sync().await;

    // `BlobPiece` frames of random bytes (sent uncompressed) whose body is exactly the cap,
    // and one byte over it.
    let frame = |body: usize| -> Vec<u8> {
        let probe = encode(&file.piece_as(0, noise(PIECE_FRAME_BODY, 8))).expect("encode");
        let overhead = probe.len() - 5 - PIECE_FRAME_BODY;
        let f = encode(&file.piece_as(0, noise(body - overhead, 8))).expect("encode");
        assert_eq!(
            (f[4], f.len() - 5),
            (0, body),
            "an uncompressed frame of that body"
        );
        f
    };
    let mut c = mallory.connect().await;
    let mut s = c.blobs().await;
    assert_eq!(s.ask(&file.put()).await, file.stored(0));
    // At the cap: decoded, judged as a piece (a bad one) and answered.
    assert!(s.send_raw(&frame(PIECE_FRAME_BODY)).await);
    assert_eq!(s.next().await, Some(file.stored(0)));
    // Over it: the stream ends without an answer, and nothing is stored.
    s.send_raw(&frame(PIECE_FRAME_BODY + 1)).await;
    assert_eq!(
        s.next().await,
        None,
        "an over-cap frame ends the attachment stream"
    );
    assert_eq!(w.stored(file.hash), Some((0, false)));

    // The same connection's document stream is still served.
    let answer = c
        .doc
        .ask(&Message::Heads {
            docs: Vec::new(),
            done: true,
        })
        .await;
    assert!(matches!(answer, Message::Missing { .. }), "{answer:?}");
    c.close();

    // The relay serves on: a new connection of the same device uploads and downloads, and
    // an honest laptop uploads and downloads with the real client.
    let c = mallory.connect().await;
    let mut s = c.blobs().await;
    assert_eq!(upload(&mut s, &file).await, file.stored(2));
    assert_eq!(
        digest(download(&mut s, file.hash).await),
        Ok((file.data.len(), file.hash))
    );
    c.close();
    let photo = noise(150_000, 9);
    let erdos = li.customer("north", "Erdos Coal");
    let a = li
        .client
        .attachments()
        .attach_bytes(erdos, "seal.pdf", None, &photo, "")
        .expect("attach");
    let report = li.sync().await;
    assert_eq!(report.attachments_uploaded, 1, "{report:?}");
    li.client
        .attachments()
        .fetch(customer, file.hash, file.size())
        .expect("fetch");
    let report = li.sync().await;
    assert_eq!(report.attachments_downloaded, 1, "{report:?}");
    assert_eq!(
        li.client.attachments().read(file.hash).expect("read"),
        file.data
    );
    assert_eq!(w.stored(a.attachment.hash), Some((3, true)));
}

/// A malformed or altered entry, written straight into Automerge.
struct Forgery {
    what: &'static str,
    doc: CustomerId,
    id: String,
    /// The hash the entry would name, were it well formed.
    hash: BlobHash,
}

/// The attachments map of `d`, made if it has none.
fn container(d: &mut AutoCommit) -> Result<ObjId, ModelError> {
    Ok(match d.get(ROOT, ATTACHMENTS_KEY)? {
        Some((Value::Object(ObjType::Map), c)) => c,
        _ => d.put_object(ROOT, ATTACHMENTS_KEY, ObjType::Map)?,
    })
}

/// Writes an entry `id` with `fields` by raw puts.
fn raw_entry(
    d: &mut AutoCommit,
    id: &str,
    fields: &[(&str, ScalarValue)],
) -> Result<(), ModelError> {
    let c = container(d)?;
    let e = d.put_object(&c, id, ObjType::Map)?;
    for (k, v) in fields {
        d.put(&e, *k, v.clone())?;
    }
    Ok(())
}

/// A change to the fields of a well-formed entry: a key and its new value (`None`: no value).
type Change = (&'static str, Option<ScalarValue>);

/// The fields of a well-formed entry for `hash`, with `change` applied.
fn fields(hash: BlobHash, change: &[Change]) -> Vec<(&'static str, ScalarValue)> {
    let mut f: Vec<(&'static str, ScalarValue)> = vec![
        ("hash", hash.to_string().into()),
        ("size", ScalarValue::Int(1000)),
        ("media_type", "image/jpeg".into()),
        ("name", "seal.jpg".into()),
        ("caption", "worn seal".into()),
        ("author", "mallory".into()),
        ("at", ScalarValue::Int(now_millis())),
    ];
    for (k, v) in change {
        f.retain(|(key, _)| key != k);
        if let Some(v) = v {
            f.push((k, v.clone()));
        }
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_malformed_attachment_entries_are_refused_however_written() {
    let w = world().await;
    let li = w.laptop("li", &["north"]).await;
    let mallory = w.laptop("mallory", &["north"]).await;

    // One customer per forgery, synced first, so that each refusal is of the forged change.
    let raw: Vec<(&'static str, Vec<Change>)> = vec![
        (
            "a hash that is not hex",
            vec![("hash", Some("not-a-hash".into()))],
        ),
        (
            "a hash of 63 hex digits",
            vec![(
                "hash",
                Some(BlobHash::of(b"x").to_string()[1..].to_string().into()),
            )],
        ),
        (
            "a hash given as bytes",
            vec![("hash", Some(ScalarValue::Bytes(vec![1; 32])))],
        ),
        ("no hash", vec![("hash", None)]),
        ("a size of zero", vec![("size", Some(ScalarValue::Int(0)))]),
        (
            "a negative size",
            vec![("size", Some(ScalarValue::Int(-5)))],
        ),
        ("a size given as text", vec![("size", Some("1000".into()))]),
        (
            "a size over 4 GiB",
            vec![("size", Some(ScalarValue::Int((4i64 << 30) + 1)))],
        ),
        (
            "a media type that is none",
            vec![("media_type", Some("jpeg".into()))],
        ),
        (
            "a preview over 32 KiB",
            vec![(
                "preview",
                Some(ScalarValue::Bytes(vec![0xff; MAX_PREVIEW_BYTES + 1])),
            )],
        ),
        (
            "a preview given as text",
            vec![("preview", Some("a thumbnail".into()))],
        ),
        (
            "a file name over 255 bytes",
            vec![("name", Some("n".repeat(256).into()))],
        ),
    ];
    let mut forgeries = Vec::new();
    for (n, (what, _)) in raw.iter().enumerate() {
        forgeries.push(Forgery {
            what,
            doc: mallory.customer("north", &format!("Forged {n}")),
            id: new_item_id(),
            hash: BlobHash::of(format!("forged {n}").as_bytes()),
        });
    }
    let not_a_map = mallory.customer("north", "Not A Map");
    let swapped = mallory.customer("north", "Swapped");
    let restored = mallory.customer("north", "Restored");
    let control = mallory.customer("north", "Control");
    let ctx = EditCtx::new("mallory", Role::Rep);
    let original = File::new(1000, 10);
    let swap_id = mallory.entry_without_bytes(swapped, &original);
    let removed_id = new_item_id();
    let removed_file = File::new(1000, 11);
    mallory.forge(restored, |d| {
        apply(
            d,
            &AttachmentEdit::Add(removed_id.clone(), removed_file.input()),
            &ctx,
        )?;
        apply(d, &AttachmentEdit::Remove(removed_id.clone()), &ctx)
    });
    let report = mallory.sync().await;
    assert_eq!(report.changes_rejected, 0, "{report:?}");

    // The forgeries: malformed new entries …
    for (f, (_, change)) in forgeries.iter().zip(&raw) {
        mallory.forge(f.doc, |d| raw_entry(d, &f.id, &fields(f.hash, change)));
    }
    let scalar_id = new_item_id();
    mallory.forge(not_a_map, |d| {
        let c = container(d)?;
        d.put(&c, scalar_id.as_str(), "a photo")?;
        Ok(())
    });
    // … an existing entry's content changed, and a removal taken back.
    let other = BlobHash::of(b"another photo");
    mallory.forge(swapped, |d| {
        let c = container(d)?;
        let Some((Value::Object(ObjType::Map), e)) = d.get(&c, swap_id.as_str())? else {
            return Err(ModelError::Malformed("no entry".into()));
        };
        d.put(&e, "hash", other.to_string())?;
        Ok(())
    });
    mallory.forge(restored, |d| {
        let c = container(d)?;
        let Some((Value::Object(ObjType::Map), e)) = d.get(&c, removed_id.as_str())? else {
            return Err(ModelError::Malformed("no entry".into()));
        };
        d.delete(&e, "removed_at")?;
        Ok(())
    });
    // And the control: a well-formed entry, written by the same raw puts.
    let control_id = new_item_id();
    let control_hash = BlobHash::of(b"the control photo");
    mallory.forge(control, |d| {
        raw_entry(d, &control_id, &fields(control_hash, &[]))
    });

    let report = mallory.sync().await;
    li.sync().await;
    assert_eq!(
        mallory.client.outbox_len().expect("outbox"),
        0,
        "{report:?}"
    );

    let mut problems = Vec::new();
    let mut cases: Vec<(&str, CustomerId, String, &str)> = forgeries
        .iter()
        .map(|f| (f.what, f.doc, f.id.clone(), f.id.as_str()))
        .collect();
    cases.push((
        "an entry that is no map",
        not_a_map,
        scalar_id.clone(),
        "not a map",
    ));
    cases.push(("a changed hash", swapped, String::new(), "changed"));
    cases.push((
        "a removal taken back",
        restored,
        String::new(),
        "taken back",
    ));
    for (what, doc, id, needle) in &cases {
        let reasons = mallory.refusals(*doc);
        if reasons.is_empty() {
            problems.push(format!("{what}: ACCEPTED by the relay"));
        } else if !reasons.iter().any(|r| r.contains(needle)) {
            problems.push(format!(
                "{what}: refused, but no reason says `{needle}`: {reasons:?}"
            ));
        }
        if !id.is_empty() && li.raw(*doc).is_some_and(|d| entry_ids(&d).contains(id)) {
            problems.push(format!("{what}: another laptop holds the entry"));
        }
    }
    // The swap and the taken-back removal never reach another laptop either.
    let seen = li.raw(swapped).map(|d| attachments(&d)).unwrap_or_default();
    if seen.iter().any(|a| a.hash == other) || seen.len() != 1 {
        problems.push(format!("a changed hash: another laptop reads {seen:?}"));
    }
    let seen = li
        .raw(restored)
        .map(|d| attachments(&d))
        .unwrap_or_default();
    if seen.is_empty() || seen.iter().any(|a| a.removed_at.is_none()) {
        problems.push(format!(
            "a removal taken back: another laptop reads {seen:?}"
        ));
    }
    // The control is accepted and read by another laptop like any attachment.
    if !mallory.refusals(control).is_empty() {
        problems.push(format!(
            "the well-formed raw entry was refused: {:?}",
            mallory.refusals(control)
        ));
    }
    let listed = li.client.attachments().list(control).expect("list");
    if !listed
        .iter()
        .any(|a| a.attachment.id == control_id && a.attachment.hash == control_hash)
    {
        problems.push(format!(
            "the well-formed raw entry does not reach another laptop: {listed:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );

    // A refused entry gives no access to the hash it names; the accepted one does.
    let c = mallory.connect().await;
    let mut s = c.blobs().await;
    for f in &forgeries {
        let answer = s
            .ask(&Message::BlobPut {
                hash: f.hash.0,
                size: 1000,
            })
            .await;
        let (reason, retry) = refusal(&answer);
        assert!(retry && reason.contains("refers"), "{}: {reason}", f.what);
    }
    let answer = s
        .ask(&Message::BlobPut {
            hash: other.0,
            size: 1000,
        })
        .await;
    assert!(refusal(&answer).0.contains("refers"), "{answer:?}");
    let answer = s
        .ask(&Message::BlobPut {
            hash: control_hash.0,
            size: 1000,
        })
        .await;
    assert_eq!(
        answer,
        Message::BlobStored {
            hash: control_hash.0,
            stored: 0,
            count: 1
        }
    );
    c.close();
}

/// Two devices in one scope: `li` starts the upload of a one-piece file it attached
/// (`BlobPut` under its true size); before its piece arrives another device's `BlobPut` names
/// the same hash under another size. The relay keeps `li`'s upload (a device naming another
/// size is told to try later, unless the upload under way is stale), stores a piece only
/// into an upload of the size it was verified under, and serves the true bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_a_put_under_another_size_cannot_poison_an_upload_in_progress() {
    let w = world().await;
    let li = w.laptop("li", &["north"]).await;
    let mallory = w.laptop("mallory", &["north"]).await;
    let wang = w.laptop("wang", &["north"]).await;
    let receipt = File::new(40_000, 12);
    let customer = li.customer("north", "Baotou Mining");
    li.entry_without_bytes(customer, &receipt);
    li.sync().await;

    let honest = li.connect().await;
    let mut up = honest.blobs().await;
    assert_eq!(up.ask(&receipt.put()).await, receipt.stored(0));
    let hostile = mallory.connect().await;
    let mut race = hostile.blobs().await;
    let lie = Message::BlobPut {
        hash: receipt.hash.0,
        size: receipt.size() + 1,
    };
    let _ = race.ask(&lie).await;
    let _ = up.ask(&receipt.piece(0)).await;
    honest.close();
    hostile.close();

    // Whatever the answers, the bytes the relay serves must be the true ones.
    let c = wang.connect().await;
    let mut s = c.blobs().await;
    let got = download(&mut s, receipt.hash).await;
    c.close();
    if got.is_err() {
        // Once li uploads again (its next sync), the attachment must be repaired.
        let again = li.connect().await;
        let mut s = again.blobs().await;
        let _ = upload(&mut s, &receipt).await;
        again.close();
    }
    let c = wang.connect().await;
    let mut s = c.blobs().await;
    assert_eq!(
        digest(download(&mut s, receipt.hash).await),
        Ok((receipt.data.len(), receipt.hash)),
        "the relay stores li's receipt under size {:?}",
        w.blobs.blob(receipt.hash).expect("row").map(|r| r.size)
    );
    c.close();
}

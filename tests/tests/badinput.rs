//! Bad input (invariant I9 of TESTING.md): the frame decoder, the
//! relay's handshake and session, and change validation fed random and mutated bytes,
//! compression bombs, deeply nested documents and huge lists. Nothing may panic, the relay
//! answers with an error, and a hostile client over QUIC costs only its own connection while
//! a good client keeps syncing.
//!
//! The property tests here are the CI-sized fuzzing; `PROPTEST_CASES=100000 cargo test
//! --release -p fieldsync-tests --test badinput` runs them longer, and `fuzz/` holds
//! cargo-fuzz targets for the same entry points (see TESTING.md).

mod support;

use std::io::Write as _;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable as _;
use automerge::{ActorId, AutoCommit, ObjType, ROOT, ScalarValue};
use fieldsync_client::Client;
use fieldsync_client::sync::{SyncConfig, sync_now};
use fieldsync_core::model::{EditCtx, NewCustomer, create_customer};
use fieldsync_core::protocol::codec::{self, CodecError, FrameDecoder, MAX_BODY, MAX_FRAME};
use fieldsync_core::protocol::messages::serde_bytes_vec::Bytes;
use fieldsync_core::protocol::messages::{MAGIC, Rejection};
use fieldsync_core::protocol::{
    Cursor, DeviceInfo, Entry, ErrorCode, Item, Message, PROTOCOL_VERSION, RelayLimits,
    RelaySession, ScopeCursor, UploadChange, check_change,
};
use fieldsync_core::store::decode_change;
use fieldsync_core::{DocId, Role};
use fieldsync_relay::{Relay, RelayConfig, RelayStoreOptions, SqliteRelayStore};
use proptest::prelude::*;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Material: real changes written by a device, and ways to spoil them.

/// An Automerge document writing as `device` (actor = device id + 8 bytes, as the replica does).
fn device_doc(device: Uuid) -> AutoCommit {
    let mut actor = device.as_bytes().to_vec();
    actor.extend_from_slice(&[7; 8]);
    AutoCommit::new().with_actor(ActorId::from(actor))
}

/// The raw bytes of every change of `doc` after `heads`.
fn changes_after(doc: &mut AutoCommit, heads: &[automerge::ChangeHash]) -> Vec<Vec<u8>> {
    doc.get_changes(heads)
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect()
}

/// A valid customer created by `device`: its id, the document and the creating change.
fn customer(device: Uuid, name: &str) -> (DocId, AutoCommit, Vec<u8>) {
    let id = DocId::new();
    let mut doc = device_doc(device);
    create_customer(
        &mut doc,
        id,
        &NewCustomer {
            org: "acme".into(),
            scope: "north".into(),
            name: name.into(),
            phone: Some("+86 139 0000 0001".into()),
            ..Default::default()
        },
        &EditCtx::new("hostile", Role::Rep),
    )
    .expect("create");
    doc.commit();
    let change = changes_after(&mut doc, &[]).pop().expect("one change");
    (id, doc, change)
}

/// A second change on a customer that nests `depth` maps below the root.
fn nested_change(doc: &mut AutoCommit, depth: usize) -> Vec<u8> {
    let before = doc.get_heads();
    let mut obj = doc.put_object(ROOT, "nested", ObjType::Map).expect("map");
    for _ in 1..depth {
        obj = doc.put_object(&obj, "n", ObjType::Map).expect("map");
    }
    doc.commit();
    changes_after(doc, &before).pop().expect("change")
}

/// A second change on a customer that inserts `len` list elements.
fn huge_list_change(doc: &mut AutoCommit, len: usize) -> Vec<u8> {
    let before = doc.get_heads();
    let list = doc.put_object(ROOT, "big", ObjType::List).expect("list");
    // One splice: element-wise inserts in one transaction are quadratic in automerge.
    doc.splice(&list, 0, 0, (0..len).map(|i| ScalarValue::Int(i as i64)))
        .expect("splice");
    doc.commit();
    changes_after(doc, &before).pop().expect("change")
}

fn mutate(bytes: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for &(pos, kind, val) in edits {
        if b.is_empty() {
            b.push(val);
            continue;
        }
        let p = pos % b.len();
        match kind % 4 {
            0 => b[p] ^= val | 1,
            1 => b.truncate(p),
            2 => b.insert(p, val),
            _ => {
                b.remove(p);
            }
        }
    }
    b
}

fn device(id: Uuid, role: Role) -> DeviceInfo {
    DeviceInfo {
        device_id: id,
        name: "t".into(),
        role,
        scopes: vec!["*".into()],
    }
}

/// Runs `check_change` on a thread with the stack size of the relay's blocking pool (2 MiB),
/// so a recursion that would overflow there overflows here too.
fn check_on_relay_stack(
    doc: AutoCommit,
    id: DocId,
    bytes: Vec<u8>,
    sender: DeviceInfo,
) -> (AutoCommit, Result<(), String>) {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let mut doc = doc;
            let r = match decode_change(&bytes) {
                Ok(change) => check_change(
                    &mut doc,
                    id,
                    &change,
                    &sender,
                    &|_| None,
                    None,
                    &|_| None,
                    &|_, _| false,
                )
                .map(|_| ())
                .map_err(|e| e.reason),
                Err(e) => Err(e.to_string()),
            };
            (doc, r)
        })
        .expect("thread")
        .join()
        .expect("check_change must not panic")
}

// ---------------------------------------------------------------------------------------------
// Strategies.

fn arb_doc() -> impl Strategy<Value = DocId> {
    any::<[u8; 16]>().prop_map(|b| DocId::from_slice(&b).expect("16 bytes"))
}

fn arb_uuid() -> impl Strategy<Value = Uuid> {
    any::<[u8; 16]>().prop_map(Uuid::from_bytes)
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn arb_role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Rep),
        Just(Role::Manager),
        Just(Role::Director),
        Just(Role::Admin)
    ]
}

fn arb_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::VersionMismatch),
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::BadFrame),
        Just(ErrorCode::Protocol),
        Just(ErrorCode::Internal),
        Just(ErrorCode::ShuttingDown),
    ]
}

fn arb_cursor() -> impl Strategy<Value = Cursor> {
    let sc = prop_oneof![
        (any::<Option<u64>>(), prop::option::of(arb_doc()))
            .prop_map(|(high, after)| ScopeCursor::Snapshot { high, after }),
        any::<u64>().prop_map(|seq| ScopeCursor::Log { seq }),
        (
            any::<(u64, u64, u64)>(),
            prop::collection::vec(arb_doc(), 0..70)
        )
            .prop_map(|((seq, first_seq, upto), first)| ScopeCursor::LogFirst {
                seq,
                first,
                first_seq,
                upto
            }),
        (
            any::<(u64, bool)>(),
            prop::collection::vec(arb_doc(), 0..70),
            prop::option::of(arb_doc())
        )
            .prop_map(
                |((high, first_done), first, after)| ScopeCursor::SnapshotFirst {
                    high,
                    first,
                    first_done,
                    after
                }
            ),
    ];
    (
        arb_uuid(),
        prop::collection::btree_map("[a-z*]{0,6}", sc, 0..4),
    )
        .prop_map(|(epoch, scopes)| Cursor { epoch, scopes })
}

/// Change bytes: random, a real change, or a mutated real change.
fn arb_change_bytes(real: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let pick = real.clone();
    let pick2 = real;
    prop_oneof![
        arb_bytes(300),
        any::<prop::sample::Index>().prop_map(move |i| i.get(pick.as_slice()).clone()),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)
        )
            .prop_map(move |(i, edits)| mutate(i.get(pick2.as_slice()).as_slice(), &edits)),
    ]
}

fn arb_message(real: Vec<Vec<u8>>) -> impl Strategy<Value = Message> {
    let hash = any::<[u8; 32]>();
    let heads = || prop::collection::vec((arb_doc(), prop::collection::vec(hash, 0..3)), 0..4);
    let upload = prop::collection::vec(
        (arb_doc(), arb_change_bytes(real.clone()))
            .prop_map(|(doc_id, bytes)| UploadChange { doc_id, bytes }),
        0..6,
    );
    let entry = prop_oneof![
        prop::collection::vec(arb_change_bytes(real.clone()).prop_map(Bytes), 0..3)
            .prop_map(Entry::Changes),
        arb_bytes(200).prop_map(|b| Entry::Snapshot(Bytes(b))),
        Just(Entry::Leave),
    ];
    prop_oneof![
        (
            prop_oneof![3 => Just(MAGIC), 1 => any::<[u8; 4]>()],
            prop_oneof![3 => Just(PROTOCOL_VERSION), 1 => any::<u32>()],
            arb_uuid(),
            prop::option::of(".{0,20}"),
            ".{0,20}"
        )
            .prop_map(
                |(magic, version, device_id, credential, agent)| Message::Hello {
                    magic,
                    version,
                    device_id,
                    credential,
                    agent,
                }
            ),
        (
            any::<u32>(),
            arb_uuid(),
            prop::collection::vec(".{0,5}", 0..3),
            arb_role()
        )
            .prop_map(|(version, epoch, scopes, role)| Message::Welcome {
                version,
                epoch,
                scopes,
                role,
            }),
        (arb_code(), ".{0,20}").prop_map(|(code, reason)| Message::Error { code, reason }),
        (any::<u64>(), upload).prop_map(|(batch, changes)| Message::Upload { batch, changes }),
        (any::<u64>(), prop::collection::vec(hash, 0..3)).prop_map(|(batch, accepted)| {
            Message::UploadAck {
                batch,
                accepted,
                rejected: vec![Rejection {
                    hash: [0; 32],
                    reason: "x".into(),
                    retry: batch % 2 == 0,
                }],
            }
        }),
        (arb_cursor(), any::<u32>())
            .prop_map(|(cursor, max_bytes)| Message::Pull { cursor, max_bytes }),
        prop::collection::vec(arb_doc(), 0..100).prop_map(|customers| Message::First { customers }),
        (
            prop::collection::vec(
                (arb_doc(), entry).prop_map(|(doc_id, entry)| Item { doc_id, entry }),
                0..3
            ),
            arb_cursor(),
            any::<bool>()
        )
            .prop_map(|(items, cursor, caught_up)| Message::Batch {
                items,
                cursor,
                caught_up,
            }),
        (heads(), any::<bool>()).prop_map(|(docs, done)| Message::Heads { docs, done }),
        (heads(), any::<bool>()).prop_map(|(docs, done)| Message::Missing { docs, done }),
    ]
}

/// Real changes from two devices: customers, an edit, a nested document and a list.
fn real_changes() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for d in [Uuid::from_u128(1), Uuid::from_u128(2)] {
        let (_, mut doc, c) = customer(d, "Real Co");
        out.push(c);
        out.push(nested_change(&mut doc, 20));
        out.push(huge_list_change(&mut doc, 50));
    }
    out
}

fn relay_store() -> (tempfile::TempDir, SqliteRelayStore) {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = SqliteRelayStore::open(
        tmp.path().join("relay.db"),
        RelayStoreOptions {
            open: Some(fieldsync_relay::OpenEnrolment {
                scopes: vec!["*".into()],
                role: Role::Rep,
            }),
            ..RelayStoreOptions::default()
        },
    )
    .expect("relay store");
    (tmp, store)
}

// ---------------------------------------------------------------------------------------------
// The frame decoder.

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random bytes, split anywhere: the decoder returns messages, "need more" or an error,
    /// and never panics or buffers past one frame's limit.
    #[test]
    fn the_frame_decoder_never_panics_on_random_bytes(
        bytes in arb_bytes(4096),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        let mut dec = FrameDecoder::new();
        'outer: for w in points.windows(2) {
            dec.push(&bytes[w[0]..w[1]]);
            loop {
                match dec.next_message() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
        prop_assert!(dec.buffered() <= bytes.len());
    }

    /// Valid frames of every message kind round-trip; mutated ones (bit flips, truncation,
    /// insertion, deletion; length prefix and flags included) never panic.
    #[test]
    fn mutated_frames_never_panic(
        msg in arb_message(real_changes()),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
    ) {
        let frame = codec::encode(&msg).expect("encode");
        prop_assert_eq!(codec::decode(&frame[4..]).expect("decode"), msg);
        let bad = mutate(&frame, &edits);
        let _ = codec::decode(bad.get(4..).unwrap_or(&[]));
        let mut dec = FrameDecoder::new();
        dec.push(&bad);
        while let Ok(Some(_)) = dec.next_message() {}
    }
}

/// Compressed frames that would expand past the body limit are refused: with the size
/// declared in the zstd header before decompressing, without it once the bounded output
/// buffer fills. Either way quickly, and nothing is decoded.
#[test]
fn zstd_bombs_are_refused() {
    let zeros = vec![0u8; 1 << 20];
    for declared in [true, false] {
        let total = 2 * MAX_BODY + (1 << 20);
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).expect("encoder");
        enc.include_contentsize(declared).expect("flag");
        if declared {
            enc.set_pledged_src_size(Some(total as u64))
                .expect("pledge");
        }
        for _ in 0..total / zeros.len() {
            enc.write_all(&zeros).expect("write");
        }
        let payload = enc.finish().expect("finish");
        assert!(payload.len() < 64 << 10, "a small frame: {}", payload.len());
        let mut frame = vec![1u8];
        frame.extend_from_slice(&payload);
        let t = Instant::now();
        let err = codec::decode(&frame).expect_err("a bomb is refused");
        eprintln!(
            "{}-byte zstd frame expanding to {total} bytes (size declared: {declared}): {err} in {:?}",
            payload.len(),
            t.elapsed()
        );
        assert!(
            matches!(err, CodecError::TooLarge(_) | CodecError::Decompress(_)),
            "{err:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    // A length prefix over the frame limit is refused before anything is buffered.
    let mut dec = FrameDecoder::new();
    dec.push(&((MAX_FRAME as u32) + 1).to_be_bytes());
    assert!(matches!(dec.next_message(), Err(CodecError::TooLarge(_))));
    // A body claiming a sequence of 2^32 changes does not allocate it.
    let mut body = vec![0u8, 3, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
    body.extend_from_slice(&[0; 64]);
    assert!(codec::decode(&body).is_err());
}

// ---------------------------------------------------------------------------------------------
// The relay session (handshake and everything after it).

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random messages in random order, with or without a valid `Hello` somewhere: the
    /// session never panics, nothing but an error is answered before a valid `Hello`, a
    /// rejected handshake closes the connection, and whatever an upload stored keeps the
    /// relay's documents loadable.
    #[test]
    fn the_relay_session_survives_any_message_sequence(
        msgs in prop::collection::vec(arb_message(real_changes()), 1..10),
        hello_at in prop::option::of(any::<prop::sample::Index>()),
        device_id in arb_uuid(),
    ) {
        let (_tmp, mut store) = relay_store();
        let mut msgs = msgs;
        if let Some(i) = hello_at {
            let at = i.index(msgs.len() + 1);
            msgs.insert(at, Message::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                device_id,
                credential: None,
                agent: "prop".into(),
            });
        }
        let mut session = RelaySession::new(RelayLimits::default());
        for m in msgs {
            let was_authenticated = session.device().is_some();
            let valid_hello = matches!(&m, Message::Hello { magic, version, .. }
                if *magic == MAGIC && *version == PROTOCOL_VERSION);
            let out = session.handle(&mut store, m);
            if !was_authenticated && !valid_hello {
                prop_assert!(out.close, "an unauthenticated session is closed");
                prop_assert!(
                    matches!(out.messages.as_slice(), [Message::Error { .. }]),
                    "only an error before the handshake: {:?}", out.messages
                );
            }
            for reply in &out.messages {
                let client_only = matches!(reply, Message::Hello { .. } | Message::Upload { .. }
                    | Message::Pull { .. } | Message::Heads { .. });
                prop_assert!(!client_only, "the relay sent a client message: {:?}", reply);
            }
            let live = session.poll_live(&mut store);
            prop_assert!(live.messages.len() <= 1);
            if out.close {
                break;
            }
        }
        let status = store.status().expect("status");
        let (snapshots, _) = store.read_snapshots("*", None, usize::MAX, fieldsync_core::protocol::Lane::All).expect("snapshots");
        prop_assert_eq!(snapshots.len() as u64, status.docs);
        for (id, snap) in snapshots {
            prop_assert!(
                fieldsync_core::store::load_snapshot(&snap).is_ok(),
                "stored document {} loads", id
            );
        }
    }

    /// `check_change` on random bytes and mutated real changes, against an empty document
    /// and against the document the change was written on: never a panic; a refusal says
    /// why and leaves the document as it was; an accepted change leaves a readable customer.
    #[test]
    fn change_validation_never_panics(
        bytes in arb_change_bytes(real_changes()),
        on_existing in any::<bool>(),
        role in arb_role(),
    ) {
        let sender = device(Uuid::from_u128(1), role);
        let (id, doc, _) = customer(Uuid::from_u128(1), "Base Co");
        let mut doc = if on_existing { doc } else { AutoCommit::new() };
        let heads = doc.get_heads();
        // Bytes that do not decode are refused before any check (and never reach the document).
        let change = match decode_change(&bytes) {
            Ok(change) => change,
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                return Ok(());
            }
        };
        let r = check_change(
            &mut doc, id, &change, &sender, &|_| None, None, &|_| None, &|_, _| false,
        );
        match r {
            Ok(_) => prop_assert!(fieldsync_core::model::read_document(&doc).is_ok()),
            Err(refusal) => {
                prop_assert!(!refusal.reason.is_empty());
                // A refusal rolls the document back, unless automerge failed part way
                // (then the caller reloads it).
                if !refusal.doc_lost {
                    prop_assert_eq!(doc.get_heads(), heads);
                }
            }
        }
    }
}

/// Hostile documents: 10,000 nested maps and a list of 100,000 elements in one change each,
/// on a new document and on a valid customer. Validation finishes in bounded time on the
/// relay's stack, without a panic or a stack overflow; the nesting is refused (reading it
/// recursed once per level in automerge's hydrate and could abort the relay).
#[test]
fn deep_nesting_and_huge_lists_are_handled() {
    let dev = Uuid::from_u128(9);
    let sender = device(dev, Role::Rep);
    // Nested maps as the only change of a new document: not a fieldsync document.
    let mut lone = device_doc(dev);
    let deep_alone = nested_change(&mut lone, 10_000);
    let (_, r) = check_on_relay_stack(AutoCommit::new(), DocId::new(), deep_alone, sender.clone());
    assert!(r.is_err(), "a document without a header is refused");
    // On top of a valid customer.
    for (what, make) in [
        (
            "10,000 nested maps",
            Box::new(|d: &mut AutoCommit| nested_change(d, 10_000))
                as Box<dyn Fn(&mut AutoCommit) -> Vec<u8>>,
        ),
        (
            "a 60,000-element list",
            Box::new(|d: &mut AutoCommit| huge_list_change(d, 60_000)),
        ),
        (
            "a 100,000-element list",
            Box::new(|d: &mut AutoCommit| huge_list_change(d, 100_000)),
        ),
    ] {
        let (id, mut doc, create) = customer(dev, "Deep Co");
        let hostile = make(&mut doc);
        let (base, r) = check_on_relay_stack(AutoCommit::new(), id, create, sender.clone());
        assert_eq!(r, Ok(()), "the creating change is valid");
        let t = Instant::now();
        let (_, r) = check_on_relay_stack(base, id, hostile.clone(), sender.clone());
        eprintln!(
            "{what} ({} bytes): {r:?} in {:?}",
            hostile.len(),
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(20), "bounded time");
        if what.contains("nested") {
            // Regression: reading a document this deep overflowed the relay's stack.
            assert!(
                r.as_ref().is_err_and(|e| e.contains("deeper")),
                "refused: {r:?}"
            );
        } else if what.contains("100,000") {
            // Over the budget of operations per change (100,000): refused from its header.
            assert!(
                r.as_ref().is_err_and(|e| e.contains("over budget")),
                "refused: {r:?}"
            );
        } else {
            assert_eq!(r, Ok(()), "a big list within the budget is valid data");
        }
    }
}

/// Regression: the conflict scan a replica runs after applying a download recursed once per
/// nested map, so a customer carrying 10,000 nested maps (which the relay accepts: unknown
/// keys are kept for newer versions) overflowed the stack and aborted every client that
/// downloaded it, on every retry. It now stops at a depth no fieldsync document reaches.
#[test]
fn a_deeply_nested_customer_does_not_overflow_the_conflict_scan() {
    let (id, mut doc, create) = customer(Uuid::from_u128(5), "Deep Co");
    // 1,000 levels on an 8 MiB stack: the old scan needed several KiB per level (debug
    // build). The relay now refuses anything deeper than MAX_NESTING; this is the replica's
    // own defence.
    let deep = nested_change(&mut doc, 1_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            assert!(fieldsync_core::model::conflicts(&doc).is_empty());
            let mut store = fieldsync_core::store::Store::open(path).expect("replica");
            store
                .transaction(|tx| tx.apply_changes(id, &[create, deep]))
                .expect("applied");
            assert_eq!(store.verify().expect("verify"), Vec::<String>::new());
        })
        .expect("thread")
        .join()
        .expect("no panic");
}

// ---------------------------------------------------------------------------------------------
// Over QUIC: hostile clients next to a good one.

use fieldsync_tests::raw::RawConn;

fn is_error(m: &Option<Message>, code: ErrorCode) -> bool {
    matches!(m, Some(Message::Error { code: c, .. }) if *c == code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_cost_only_their_own_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(RelayConfig {
        data_dir: tmp.path().join("relay"),
        listen: "127.0.0.1:0".parse().unwrap(),
        open_enrollment: true,
        ..RelayConfig::default()
    })
    .await
    .expect("relay");
    let relay_db = tmp.path().join("relay").join("relay.db");
    let mut cfg = SyncConfig::new(
        relay.local_addr().to_string(),
        relay.fingerprint().to_string(),
    );
    cfg.connect_timeout = Duration::from_secs(5);
    let good = Client::open(tmp.path().join("good.db")).unwrap();
    let other = Client::open(tmp.path().join("other.db")).unwrap();
    for i in 0..50 {
        good.customers()
            .create(NewCustomer {
                scope: "north".into(),
                name: format!("good {i}"),
                ..Default::default()
            })
            .unwrap();
    }
    // The good client syncs continuously while the attacks run.
    let (g2, cfg2) = (good.clone(), cfg.clone());
    let good_loop = tokio::spawn(async move {
        let mut rounds = 0;
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline || rounds < 3 {
            sync_now(&g2, &cfg2).await.expect("the good client syncs");
            g2.customers()
                .create(NewCustomer {
                    scope: "north".into(),
                    name: format!("during the attack {rounds}"),
                    ..Default::default()
                })
                .unwrap();
            rounds += 1;
        }
        sync_now(&g2, &cfg2).await.expect("the good client syncs");
        rounds
    });

    // 1. Garbage instead of a frame.
    let mut c = RawConn::open(relay.local_addr(), relay.fingerprint())
        .await
        .expect("connect");
    c.send_raw(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n").await;
    let m = c.last().await;
    assert!(is_error(&m, ErrorCode::BadFrame), "{m:?}");
    // 2. A zstd bomb before the handshake.
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_contentsize(false).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..((2 * MAX_BODY) >> 20) {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    let mut frame = ((bomb.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(1);
    frame.extend_from_slice(&bomb);
    let mut c = RawConn::open(relay.local_addr(), relay.fingerprint())
        .await
        .expect("connect");
    c.send_raw(&frame).await;
    let m = c.last().await;
    assert!(is_error(&m, ErrorCode::BadFrame), "{m:?}");
    // 3. A frame length over the limit.
    let mut c = RawConn::open(relay.local_addr(), relay.fingerprint())
        .await
        .expect("connect");
    c.send_raw(&u32::MAX.to_be_bytes()).await;
    let m = c.last().await;
    assert!(is_error(&m, ErrorCode::BadFrame), "{m:?}");
    // 4. Messages out of order: an upload before Hello (refused by the frame decoder before
    // it is decoded: only a Hello or Enrol is read from a peer that has not authenticated), a
    // second Hello.
    let mut c = RawConn::open(relay.local_addr(), relay.fingerprint())
        .await
        .expect("connect");
    c.send(&Message::Upload {
        batch: 1,
        changes: vec![],
    })
    .await
    .expect("encode");
    let m = c.last().await;
    assert!(is_error(&m, ErrorCode::BadFrame), "{m:?}");
    let hostile = Uuid::new_v4();
    let mut c = RawConn::open(relay.local_addr(), relay.fingerprint())
        .await
        .expect("connect");
    assert!(matches!(
        c.hello(hostile).await,
        Some(Message::Welcome { .. })
    ));
    c.send(&Message::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        device_id: hostile,
        credential: None,
        agent: "again".into(),
    })
    .await
    .expect("encode");
    let m = c.last().await;
    assert!(is_error(&m, ErrorCode::Protocol), "{m:?}");
    // 5. After a valid handshake: garbage changes, a change by another device, deeply nested
    //    and huge documents, and an upload over the per-upload limit.
    let mut c = RawConn::open(relay.local_addr(), relay.fingerprint())
        .await
        .expect("connect");
    assert!(matches!(
        c.hello(hostile).await,
        Some(Message::Welcome { .. })
    ));
    let (id, mut doc, create) = customer(hostile, "Hostile Co");
    let nested = nested_change(&mut doc, 10_000);
    let list = huge_list_change(&mut doc, 100_000);
    let (other_id, _, forged) = customer(Uuid::new_v4(), "Forged Co");
    let changes = vec![
        UploadChange {
            doc_id: id,
            bytes: b"not an automerge change".to_vec(),
        },
        UploadChange {
            doc_id: other_id,
            bytes: forged,
        },
        UploadChange {
            doc_id: id,
            bytes: create,
        },
        UploadChange {
            doc_id: id,
            bytes: nested,
        },
        UploadChange {
            doc_id: id,
            bytes: list,
        },
    ];
    c.send(&Message::Upload { batch: 7, changes })
        .await
        .expect("encode");
    let ack = c.next().await;
    eprintln!("hostile upload answered: {ack:?}");
    let Some(Message::UploadAck {
        batch: 7,
        accepted,
        rejected,
    }) = ack
    else {
        panic!("an upload is answered with an ack: {ack:?}");
    };
    assert!(
        rejected.len() >= 2,
        "garbage and the forged change are refused"
    );
    assert!(
        rejected
            .iter()
            .any(|r| r.reason.contains("only that device may upload it")),
        "{rejected:?}"
    );
    eprintln!(
        "accepted {} of 5; refusals: {:?}",
        accepted.len(),
        rejected.iter().map(|r| &r.reason).collect::<Vec<_>>()
    );
    let too_many = (0..RelayLimits::default().max_upload_changes + 1)
        .map(|_| UploadChange {
            doc_id: id,
            bytes: vec![],
        })
        .collect();
    c.send(&Message::Upload {
        batch: 8,
        changes: too_many,
    })
    .await
    .expect("encode");
    let m = c.last().await;
    assert!(is_error(&m, ErrorCode::BadFrame), "{m:?}");
    drop(c);

    // The good client was never disturbed, and another client receives everything,
    // including whatever of the hostile documents the relay accepted.
    let rounds = good_loop.await.expect("good client task");
    eprintln!("the good client synced {rounds} times during the attacks");
    sync_now(&other, &cfg).await.expect("another client syncs");
    sync_now(&good, &cfg)
        .await
        .expect("good client syncs again");
    assert_eq!(support::integrity(&relay_db), "ok");
    let good_docs: Vec<_> = support::heads(&good).into_iter().collect();
    let other_heads = support::heads(&other);
    for (id, h) in &good_docs {
        assert_eq!(
            other_heads.get(id),
            Some(h),
            "document {id} reached the other client"
        );
    }
    assert_eq!(good.outbox_len().unwrap(), 0);
    assert!(other.verify().unwrap().is_empty());
    relay.shutdown().await.unwrap();
}

//! Budgets against hostile peers, over real QUIC on 127.0.0.1: what a few kilobytes from one
//! device (or from a peer that never authenticates, or from a tampered relay) may cost.
//!
//! - a change of a few hundred bytes holding hundreds of thousands of operations is refused
//!   from its header, before it is applied, by the relay and by a downloading laptop;
//! - small compressed frames that would decode into millions of entries are refused before
//!   they are decompressed (before authentication only a small `Hello` or `Enrol` is read) or
//!   from their type's cap, and the relay's peak memory stays bounded (read from `/proc`);
//! - a laptop served a 10,000-deep snapshot (a tampered relay database) skips that document,
//!   reports it, keeps the rest of the batch and keeps syncing — no stack overflow.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjType, ROOT, ScalarValue};
use fieldsync_client::sync::sync_now;
use fieldsync_client::{Client, NewCustomer};
use fieldsync_core::model::{EditCtx, NewCustomer as ModelNewCustomer, create_customer};
use fieldsync_core::protocol::codec;
use fieldsync_core::protocol::messages::MAGIC;
use fieldsync_core::protocol::messages::Rejection;
use fieldsync_core::protocol::{ErrorCode, Message, PROTOCOL_VERSION, UploadChange};
use fieldsync_core::{DocId, Role};
use fieldsync_relay::{Relay, RelayConfig};
use fieldsync_tests::raw::RawConn;
use uuid::Uuid;

mod support;

use support::{open_relay, sync_config as config};

/// Uploads `changes` of document `id` in one batch; returns how many were accepted and the
/// refusals.
async fn upload(
    raw: &mut RawConn,
    batch: u64,
    id: DocId,
    changes: Vec<automerge::Change>,
) -> (usize, Vec<Rejection>) {
    raw.send(&Message::Upload {
        batch,
        changes: changes
            .into_iter()
            .map(|c| UploadChange {
                doc_id: id,
                bytes: c.raw_bytes().to_vec(),
            })
            .collect(),
    })
    .await
    .expect("encode");
    match raw.next().await {
        Some(Message::UploadAck {
            accepted, rejected, ..
        }) => (accepted.len(), rejected),
        other => panic!("an ack: {other:?}"),
    }
}

/// Peak resident memory of this process (the relay runs in it), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// A `Heads` of `n` equal entries: a few KiB compressed, tens of MiB decoded.
fn heads_bomb(n: usize) -> Message {
    Message::Heads {
        docs: vec![(DocId(Uuid::nil()), vec![[7; 32]]); n],
        done: true,
    }
}

/// A customer written by `device` and its creating change, and a change on top of it that
/// inserts `ops` equal values into a new list: run-length encoded into a few hundred bytes.
fn op_bomb(device: Uuid, ops: usize) -> (DocId, Vec<u8>, Vec<u8>) {
    let mut actor = device.as_bytes().to_vec();
    actor.extend_from_slice(&[1; 8]);
    let mut doc = AutoCommit::new().with_actor(ActorId::from(actor));
    let id = DocId::new();
    let new = ModelNewCustomer {
        org: "acme".into(),
        scope: "north".into(),
        name: "Bomb Co".into(),
        ..Default::default()
    };
    create_customer(&mut doc, id, &new, &EditCtx::new("hostile", Role::Rep)).expect("create");
    doc.commit();
    let create = doc
        .get_changes(&[])
        .pop()
        .expect("change")
        .raw_bytes()
        .to_vec();
    let heads = doc.get_heads();
    let list = doc.put_object(ROOT, "bomb", ObjType::List).expect("list");
    doc.splice(&list, 0, 0, std::iter::repeat_n(ScalarValue::Null, ops))
        .expect("splice");
    doc.commit();
    let bomb = doc
        .get_changes(&heads)
        .pop()
        .expect("change")
        .raw_bytes()
        .to_vec();
    (id, create, bomb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_packing_many_operations_into_few_bytes_is_refused_from_its_header() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = open_relay(dir.path()).await;
    let device = Uuid::now_v7();
    let (id, create, bomb) = op_bomb(device, 300_000);
    assert!(bomb.len() < 2_000, "a small change: {} bytes", bomb.len());
    let mut raw = RawConn::open(relay.local_addr(), relay.fingerprint())
        .await
        .expect("connect");
    assert!(matches!(
        raw.hello(device).await,
        Some(Message::Welcome { .. })
    ));
    let started = std::time::Instant::now();
    raw.send(&Message::Upload {
        batch: 1,
        changes: vec![
            UploadChange {
                doc_id: id,
                bytes: create,
            },
            UploadChange {
                doc_id: id,
                bytes: bomb,
            },
        ],
    })
    .await
    .expect("encode");
    let Some(Message::UploadAck {
        accepted, rejected, ..
    }) = raw.next().await
    else {
        panic!("an ack");
    };
    eprintln!(
        "answered in {:?}: {:?}",
        started.elapsed(),
        rejected.iter().map(|r| &r.reason).collect::<Vec<_>>()
    );
    assert_eq!(accepted.len(), 1, "the customer itself is stored");
    assert_eq!(rejected.len(), 1);
    assert!(!rejected[0].retry);
    assert!(rejected[0].reason.contains("over budget"), "{rejected:?}");

    // A laptop never applies one either: a downloaded change over budget fails that item.
    let laptop = Client::open(dir.path().join("laptop.db")).expect("replica");
    let (id2, create2, bomb2) = op_bomb(laptop.device_id(), 300_000);
    let err = laptop
        .with_store(|s| {
            s.transaction(|tx| tx.apply_changes(id2, &[create2.clone(), bomb2.clone()]))
        })
        .expect_err("refused");
    assert!(err.to_string().contains("over budget"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_frames_that_decode_into_millions_of_entries_cost_the_relay_little() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = open_relay(dir.path()).await;
    let bomb = codec::encode(&heads_bomb(1_500_000)).expect("encode");
    assert!(bomb.len() < 64 << 10, "a small frame: {} bytes", bomb.len());
    let before = peak_rss_mib();
    // 96 connections that never authenticate, 8 at a time, each sending the bomb instead of
    // a Hello.
    for _ in 0..12 {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (addr, pin, bomb) = (
                relay.local_addr(),
                relay.fingerprint().to_string(),
                bomb.clone(),
            );
            tasks.spawn(async move {
                let mut raw = RawConn::open(addr, &pin).await.expect("connect");
                let _ = raw.send.write_all(&bomb).await;
                raw.next().await
            });
        }
        while let Some(answer) = tasks.join_next().await {
            match answer.expect("task") {
                Some(Message::Error { code, .. }) => assert_eq!(code, ErrorCode::BadFrame),
                other => assert!(other.is_none(), "{other:?}"),
            }
        }
    }
    // And an authenticated device sending it after its Hello.
    let mut raw = RawConn::open(relay.local_addr(), relay.fingerprint())
        .await
        .expect("connect");
    assert!(matches!(
        raw.hello(Uuid::now_v7()).await,
        Some(Message::Welcome { .. })
    ));
    for _ in 0..20 {
        let _ = raw.send.write_all(&bomb).await;
    }
    match raw.next().await {
        Some(Message::Error { code, .. }) => assert_eq!(code, ErrorCode::BadFrame),
        other => panic!("{other:?}"),
    }
    let grew = peak_rss_mib().saturating_sub(before);
    eprintln!("peak RSS grew by {grew} MiB");
    // Decoded in full, each frame costs well over 100 MiB (eight at once, the better part of
    // a GiB); a generous bound.
    assert!(grew < 150, "peak RSS grew by {grew} MiB");
    // The relay still serves an honest laptop.
    let laptop = Client::open(dir.path().join("laptop.db")).expect("replica");
    laptop
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Honest Co".into(),
            ..Default::default()
        })
        .expect("create");
    let report = sync_now(&laptop, &config(&relay)).await.expect("syncs");
    assert_eq!(report.changes_acked, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_laptop_skips_a_ten_thousand_deep_snapshot_and_keeps_syncing() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = open_relay(dir.path()).await;
    let writer = Client::open(dir.path().join("writer.db")).expect("replica");
    for i in 0..5 {
        writer
            .customers()
            .create(NewCustomer {
                scope: "north".into(),
                name: format!("Good {i}"),
                ..Default::default()
            })
            .expect("create");
    }
    sync_now(&writer, &config(&relay)).await.expect("upload");
    // A tampered relay database: a customer nesting 10,000 maps, filed in the scope.
    let mut deep = AutoCommit::new();
    let id = DocId::new();
    let new = ModelNewCustomer {
        org: "acme".into(),
        scope: "north".into(),
        name: "Deep Co".into(),
        ..Default::default()
    };
    create_customer(&mut deep, id, &new, &EditCtx::new("x", Role::Admin)).expect("create");
    let mut obj = deep.put_object(ROOT, "deep", ObjType::Map).expect("map");
    for _ in 0..10_000 {
        obj = deep.put_object(&obj, "n", ObjType::Map).expect("map");
    }
    deep.commit();
    let snapshot = deep.save();
    let heads: Vec<u8> = deep.get_heads().iter().flat_map(|h| h.0).collect();
    let db = rusqlite::Connection::open(dir.path().join("relay").join("relay.db")).expect("db");
    db.busy_timeout(Duration::from_secs(5)).expect("timeout");
    db.execute(
        "INSERT INTO docs (doc_id, kind, scope, customer_id, snapshot, heads, updated_seq)
         VALUES (?1, 1, 'north', NULL, ?2, ?3, 0)",
        rusqlite::params![id.as_bytes().to_vec(), snapshot, heads],
    )
    .expect("tamper");
    drop(db);

    let laptop = Client::open(dir.path().join("laptop.db")).expect("replica");
    // On a small stack, as a sync thread would have: reading the deep document recursively
    // would overflow it (an abort, not a panic).
    let report = sync_now(&laptop, &config(&relay))
        .await
        .expect("the sync goes on");
    eprintln!("{report:?}");
    assert!(report.items_failed >= 1, "the deep document is reported");
    let names: Vec<String> = laptop
        .customers()
        .list(&fieldsync_client::CustomerFilter::new())
        .expect("list")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names.len(), 5, "the rest of the batch arrived: {names:?}");
    assert!(
        laptop.document(id).is_err(),
        "the deep document is not read"
    );
    // And the next sync works too.
    sync_now(&laptop, &config(&relay))
        .await
        .expect("syncs again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_cannot_grow_past_its_budget_in_large_or_small_steps() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = open_relay(dir.path()).await;
    let device = Uuid::now_v7();
    let mut actor = device.as_bytes().to_vec();
    actor.extend_from_slice(&[1; 8]);
    let mut doc = AutoCommit::new().with_actor(ActorId::from(actor));
    let id = DocId::new();
    let new = ModelNewCustomer {
        org: "acme".into(),
        scope: "north".into(),
        name: "Growing Co".into(),
        ..Default::default()
    };
    create_customer(&mut doc, id, &new, &EditCtx::new("hostile", Role::Rep)).expect("create");
    doc.commit();
    let mut pending = doc.get_changes(&[]);
    // Each note: 3 MiB of text that compresses to nothing in a snapshot (the budget counts
    // what loading it costs, not what it is stored as).
    let note = |doc: &mut AutoCommit, key: String, len: usize| {
        let heads = doc.get_heads();
        doc.put(ROOT, key.as_str(), "x".repeat(len)).expect("put");
        doc.commit();
        doc.get_changes(&heads).pop().expect("change")
    };
    let mut raw = RawConn::open(relay.local_addr(), relay.fingerprint())
        .await
        .expect("connect");
    assert!(matches!(
        raw.hello(device).await,
        Some(Message::Welcome { .. })
    ));
    let mut outcomes = Vec::new();
    for i in 0..4 {
        pending.push(note(&mut doc, format!("large{i}"), 3 << 20));
        outcomes.push(upload(&mut raw, i, id, std::mem::take(&mut pending)).await);
    }
    eprintln!("{outcomes:?}");
    assert_eq!(outcomes[0].0, 2, "creation and the first 3 MiB");
    assert_eq!(outcomes[1].0, 1, "6 MiB in all");
    assert!(
        outcomes[2]
            .1
            .iter()
            .any(|r| r.reason.contains("over budget")),
        "the third would pass 8 MiB: {outcomes:?}"
    );
    // Small steps reach the same wall (the relay refuses; it does not fail).
    let mut small = AutoCommit::new().with_actor(doc.get_actor().clone());
    let small_id = DocId::new();
    let new = ModelNewCustomer {
        org: "acme".into(),
        scope: "north".into(),
        name: "Creeping Co".into(),
        ..Default::default()
    };
    create_customer(
        &mut small,
        small_id,
        &new,
        &EditCtx::new("hostile", Role::Rep),
    )
    .expect("create");
    small.commit();
    let mut next = small.get_changes(&[]);
    let mut stored = 0usize;
    let mut refused = None;
    for i in 0..24 {
        next.push(note(&mut small, format!("small{i}"), 512 << 10));
        let (accepted, rejected) =
            upload(&mut raw, 100 + i, small_id, std::mem::take(&mut next)).await;
        stored += accepted;
        if let Some(r) = rejected.first() {
            refused = Some((i, r.reason.clone()));
            break;
        }
    }
    let (step, reason) = refused.expect("refused before 12 MiB");
    assert!(reason.contains("over budget"), "{reason}");
    assert!((14..=16).contains(&step), "refused at 512 KiB step {step}");
    assert_eq!(stored, step as usize + 1, "every step before it stored");
    // A fresh laptop loads the document, and a restarted relay still takes small changes
    // elsewhere and refuses growth here with the same reason.
    let laptop = Client::open(dir.path().join("laptop.db")).expect("replica");
    let report = sync_now(&laptop, &config(&relay)).await.expect("syncs");
    assert_eq!(report.items_failed, 0, "{report:?}");
    assert!(laptop.document(id).is_ok());
    drop(raw);
    relay.shutdown().await.expect("relay stops");
    let relay = open_relay(dir.path()).await;
    laptop
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "After Restart Co".into(),
            ..Default::default()
        })
        .expect("create");
    let report = sync_now(&laptop, &config(&relay)).await.expect("syncs");
    assert_eq!(report.changes_acked, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_device_gets_a_slot_while_others_hold_connections_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = Relay::start(RelayConfig {
        data_dir: dir.path().join("relay"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        open_enrollment: true,
        max_connections: 16,
        max_unauthenticated: 4,
        max_connections_per_device: 2,
        ..RelayConfig::default()
    })
    .await
    .expect("relay");
    let laptop = Client::open(dir.path().join("laptop.db")).expect("replica");
    laptop
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Patient Co".into(),
            ..Default::default()
        })
        .expect("create");
    // A peer holds every slot with connections that never authenticate: each new one closes
    // the oldest waiting one, so it never holds more than the budget of them.
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(
            RawConn::open(relay.local_addr(), relay.fingerprint())
                .await
                .expect("connect"),
        );
    }
    let report = sync_now(&laptop, &config(&relay))
        .await
        .expect("the enrolled device syncs");
    assert_eq!(report.changes_acked, 1);
    drop(idle);
    // One device opens many authenticated connections: each login closes its oldest beyond
    // the per-device budget, so the slots stay free for others.
    let greedy = Uuid::now_v7();
    let mut held = Vec::new();
    for _ in 0..16 {
        let mut raw = RawConn::open(relay.local_addr(), relay.fingerprint())
            .await
            .expect("connect");
        assert!(matches!(
            raw.hello(greedy).await,
            Some(Message::Welcome { .. })
        ));
        held.push(raw);
    }
    laptop
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Still Patient Co".into(),
            ..Default::default()
        })
        .expect("create");
    let report = sync_now(&laptop, &config(&relay))
        .await
        .expect("the enrolled device still syncs");
    assert_eq!(report.changes_acked, 1);
    // The greedy device's oldest connections were closed by the relay.
    let first = held.first_mut().expect("held");
    assert!(
        first.next().await.is_none(),
        "the oldest connection was closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_limited_per_source_address() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = Relay::start(RelayConfig {
        data_dir: dir.path().join("relay"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..RelayConfig::default()
    })
    .await
    .expect("relay");
    let mut reasons = Vec::new();
    for i in 0..40 {
        let mut raw = RawConn::open(relay.local_addr(), relay.fingerprint())
            .await
            .expect("connect");
        raw.send(&Message::Enrol {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            device_id: Uuid::now_v7(),
            token: format!("{i:064x}"),
            credential: "c".repeat(64),
            agent: "guesser".into(),
        })
        .await
        .expect("encode");
        match raw.next().await {
            Some(Message::Error {
                code: ErrorCode::Unauthorized,
                reason,
            }) => reasons.push(reason),
            other => panic!("attempt {i}: {other:?}"),
        }
    }
    let guessed = reasons
        .iter()
        .filter(|r| r.contains("unknown enrolment token"))
        .count();
    let limited = reasons
        .iter()
        .filter(|r| r.contains("too many failed authentication attempts"))
        .count();
    assert_eq!((guessed, limited), (30, 10), "{reasons:?}");
}

/// A customer written by `device` whose creating change turns one of its root `Put`s into a
/// `MarkEnd`: valid bytes that automerge applies, but whose document panics when read.
fn mark_end_change(device: Uuid) -> (DocId, Vec<u8>) {
    let mut actor = device.as_bytes().to_vec();
    actor.extend_from_slice(&[2; 8]);
    let mut doc = AutoCommit::new().with_actor(ActorId::from(actor));
    let id = DocId::new();
    let new = ModelNewCustomer {
        org: "acme".into(),
        scope: "north".into(),
        name: "Marked Co".into(),
        ..Default::default()
    };
    create_customer(&mut doc, id, &new, &EditCtx::new("hostile", Role::Rep)).expect("create");
    doc.commit();
    let change = doc.get_changes(&[]).pop().expect("change");
    let mut expanded = change.decode();
    let op = expanded
        .operations
        .iter_mut()
        .rev()
        .find(|op| {
            op.obj == automerge::legacy::ObjectId::Root
                && matches!(op.action, automerge::legacy::OpType::Put(_))
        })
        .expect("a root put");
    op.action = automerge::legacy::OpType::MarkEnd(false);
    let forged = automerge::Change::from(expanded);
    (id, forged.raw_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_end_on_a_map_key_is_refused_by_the_relay_and_skipped_by_a_laptop() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = open_relay(dir.path()).await;
    let device = Uuid::now_v7();
    let (id, forged) = mark_end_change(device);
    let mut raw = RawConn::open(relay.local_addr(), relay.fingerprint())
        .await
        .expect("connect");
    assert!(matches!(
        raw.hello(device).await,
        Some(Message::Welcome { .. })
    ));
    raw.send(&Message::Upload {
        batch: 1,
        changes: vec![UploadChange {
            doc_id: id,
            bytes: forged.clone(),
        }],
    })
    .await
    .expect("encode");
    match raw.next().await {
        Some(Message::UploadAck {
            accepted, rejected, ..
        }) => {
            assert!(accepted.is_empty());
            assert_eq!(rejected.len(), 1, "{rejected:?}");
            assert!(!rejected[0].retry, "a permanent refusal: {rejected:?}");
        }
        other => panic!("an ack refusing the change, not {other:?}"),
    }
    // A change no honest writer makes ends the connection.
    assert!(matches!(
        raw.last().await,
        Some(Message::Error {
            code: ErrorCode::Protocol,
            ..
        })
    ));

    // A tampered relay serves it anyway: as a change to a laptop that follows the log, and
    // inside a snapshot to a new one. Each skips and reports that document and keeps the rest.
    let writer = Client::open(dir.path().join("writer.db")).expect("replica");
    let follower = Client::open(dir.path().join("follower.db")).expect("replica");
    for i in 0..3 {
        writer
            .customers()
            .create(NewCustomer {
                scope: "north".into(),
                name: format!("Good {i}"),
                ..Default::default()
            })
            .expect("create");
    }
    sync_now(&writer, &config(&relay)).await.expect("upload");
    sync_now(&follower, &config(&relay))
        .await
        .expect("download");
    let mut marked = AutoCommit::new();
    marked
        .apply_changes([automerge::Change::from_bytes(forged.clone()).expect("change")])
        .expect("automerge applies it");
    let snapshot = marked.save();
    let heads: Vec<u8> = marked.get_heads().iter().flat_map(|h| h.0).collect();
    let hash = marked.get_heads()[0].0.to_vec();
    let db = rusqlite::Connection::open(dir.path().join("relay").join("relay.db")).expect("db");
    db.busy_timeout(Duration::from_secs(5)).expect("timeout");
    db.execute(
        "INSERT INTO log (scope, doc_id, kind, hash, bytes, device, at) VALUES ('north', ?1, 0, ?2, ?3, ?4, 0)",
        rusqlite::params![id.as_bytes().to_vec(), hash, forged, device.as_bytes().to_vec()],
    )
    .expect("tamper the log");
    db.execute(
        "INSERT INTO docs (doc_id, kind, scope, customer_id, snapshot, heads, updated_seq)
         VALUES (?1, 1, 'north', NULL, ?2, ?3, 0)",
        rusqlite::params![id.as_bytes().to_vec(), snapshot, heads],
    )
    .expect("tamper the documents");
    drop(db);
    for i in 3..5 {
        writer
            .customers()
            .create(NewCustomer {
                scope: "north".into(),
                name: format!("Good {i}"),
                ..Default::default()
            })
            .expect("create");
    }
    sync_now(&writer, &config(&relay)).await.expect("upload");

    let fresh = Client::open(dir.path().join("fresh.db")).expect("replica");
    for laptop in [&follower, &fresh] {
        let report = sync_now(laptop, &config(&relay))
            .await
            .expect("the sync goes on");
        eprintln!("{report:?}");
        assert!(report.items_failed >= 1, "the marked document is reported");
        let names = laptop
            .customers()
            .list(&fieldsync_client::CustomerFilter::new())
            .expect("list")
            .len();
        assert_eq!(names, 5, "every other customer arrived");
        assert!(
            laptop.document(id).is_err(),
            "the marked document is not read"
        );
        let skipped = laptop.skipped().expect("skipped");
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(skipped[0].doc_id, id, "reported by id");
        sync_now(laptop, &config(&relay))
            .await
            .expect("syncs again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_daily_quota_is_refused_for_a_retry_and_others_are_not() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = Relay::start(RelayConfig {
        data_dir: dir.path().join("relay"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        open_enrollment: true,
        quota_new_documents_per_day: 3,
        quota_bytes_per_day: 64 << 10,
        ..RelayConfig::default()
    })
    .await
    .expect("relay");
    let flood = Client::open(dir.path().join("flood.db")).expect("replica");
    for i in 0..5 {
        flood
            .customers()
            .create(NewCustomer {
                scope: "north".into(),
                name: format!("Crafted {i}"),
                ..Default::default()
            })
            .expect("create");
    }
    let report = sync_now(&flood, &config(&relay)).await.expect("sync");
    assert_eq!(report.changes_acked, 3, "{report:?}");
    assert_eq!(
        report.changes_rejected, 0,
        "nothing quarantined: {report:?}"
    );
    assert_eq!(flood.outbox_len().expect("outbox"), 2, "the rest waits");
    // Bytes: edits of existing documents count too.
    let first = flood
        .customers()
        .list(&fieldsync_client::CustomerFilter::new())
        .expect("list")
        .into_iter()
        .find(|c| c.name == "Crafted 0")
        .expect("stored");
    flood
        .customers()
        .add_note(first.id, "x".repeat(80 << 10))
        .expect("edit");
    let report = sync_now(&flood, &config(&relay)).await.expect("sync");
    assert_eq!(report.changes_acked, 0, "{report:?}");
    assert_eq!(flood.outbox_len().expect("outbox"), 3);

    // Another device is not held back, and IT sees who used what.
    let other = Client::open(dir.path().join("other.db")).expect("replica");
    other
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Honest".into(),
            ..Default::default()
        })
        .expect("create");
    let report = sync_now(&other, &config(&relay)).await.expect("sync");
    assert_eq!(report.changes_acked, 1, "{report:?}");
    let devices = relay.store().devices().expect("devices");
    let usage = |id: Uuid| {
        devices
            .iter()
            .find(|d| d.device_id == id)
            .map(|d| d.today)
            .expect("listed")
    };
    assert_eq!(usage(flood.device_id()).new_documents, 3);
    assert!(usage(flood.device_id()).bytes > 0);
    assert_eq!(usage(other.device_id()).new_documents, 1);
    let metrics = relay.metrics().render();
    assert!(
        metrics.contains("fieldsync_relay_quota_refusals_total{quota=\"new_documents\"} 4")
            && metrics.contains("fieldsync_relay_quota_refusals_total{quota=\"bytes\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_the_relay_cannot_load_refuses_only_its_own_changes() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = open_relay(dir.path()).await;
    let laptop = Client::open(dir.path().join("laptop.db")).expect("replica");
    let mut ids = Vec::new();
    for name in ["Broken Co", "Fine Co"] {
        ids.push(
            laptop
                .customers()
                .create(NewCustomer {
                    scope: "north".into(),
                    name: name.into(),
                    ..Default::default()
                })
                .expect("create"),
        );
    }
    sync_now(&laptop, &config(&relay)).await.expect("upload");
    relay.shutdown().await.expect("stop");
    // The stored copy of the first one becomes unloadable (as a document grown past what the
    // relay loads before budgets existed would be): a run-length bomb of 600,000 operations.
    let mut bomb = AutoCommit::new();
    let list = bomb.put_object(ROOT, "bomb", ObjType::List).expect("list");
    bomb.splice(&list, 0, 0, std::iter::repeat_n(ScalarValue::Null, 600_000))
        .expect("splice");
    let db = rusqlite::Connection::open(dir.path().join("relay").join("relay.db")).expect("db");
    db.execute(
        "UPDATE docs SET snapshot = ?2 WHERE doc_id = ?1",
        rusqlite::params![ids[0].as_bytes().to_vec(), bomb.save()],
    )
    .expect("tamper");
    drop(db);
    let relay = open_relay(dir.path()).await;
    laptop
        .customers()
        .set_name(ids[0], "Broken Co 2")
        .expect("edit");
    laptop
        .customers()
        .set_name(ids[1], "Fine Co 2")
        .expect("edit");
    let report = sync_now(&laptop, &config(&relay))
        .await
        .expect("the sync goes on");
    assert_eq!(
        report.changes_acked, 1,
        "the other document's change: {report:?}"
    );
    assert_eq!(
        report.changes_rejected, 0,
        "nothing quarantined: {report:?}"
    );
    assert_eq!(
        laptop.outbox_len().expect("outbox"),
        1,
        "the refused change waits"
    );
    let fresh = Client::open(dir.path().join("fresh.db")).expect("replica");
    sync_now(&fresh, &config(&relay)).await.expect("download");
    assert_eq!(
        fresh.customers().get(ids[1]).expect("fine").name,
        "Fine Co 2"
    );
    // IT finds it: `doc check` names exactly that document and why.
    let store = relay.store().clone();
    let report =
        tokio::task::spawn_blocking(move || fieldsync_relay::doc_check::check_documents(&store))
            .await
            .expect("join")
            .expect("check");
    assert_eq!(report.checked, 2);
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert_eq!(report.problems[0].doc_id, ids[0]);
    assert!(report.problems[0].reason.contains("rows"), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_finishes_its_hello_is_closed_at_the_sessions_deadline() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = open_relay(dir.path()).await;
    let mut raw = RawConn::open(relay.local_addr(), relay.fingerprint())
        .await
        .expect("connect");
    // Half a frame header: the stream is open, the session waits for a Hello that never
    // completes.
    raw.send_raw(&[0, 0]).await;
    let started = std::time::Instant::now();
    let answer = raw.next().await;
    let waited = started.elapsed();
    assert!(
        matches!(
            &answer,
            Some(Message::Error {
                code: ErrorCode::Protocol,
                reason,
            }) if reason.contains("no Hello")
        ),
        "{answer:?}"
    );
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
}

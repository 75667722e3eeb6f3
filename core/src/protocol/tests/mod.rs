//! Protocol tests: codec round trips and limits, and whole sync sessions between real replica
//! stores and an in-memory relay storage, driven by hand (no I/O).

// Tests mint ids and read the clock freely; the code under test takes them as inputs.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use uuid::Uuid;

use super::drive::sync_in_memory;
use super::memory::MemoryRelay;
use super::messages::{Hash, serde_bytes_vec::Bytes};
use super::*;
use crate::ids::{DocId, Role};
use crate::model::{
    CustomerEdit, CustomerField, Edit, EditCtx, NewCustomer, NewVisit, VisitStatus, apply_edit,
    create_customer, create_visit,
};
use crate::store::Store;

/// The tests' relay: in memory, admitting every device as an admin over every scope unless
/// granted otherwise.
type MemRelay = MemoryRelay;

impl MemoryRelay {
    fn new() -> Self {
        Self::open(Uuid::new_v4(), Role::Admin, &["*"])
    }
}

/// Runs one client session against the relay until nothing more is sent, passing every
/// message through the codec. Returns the session's statistics.
fn run(store: &mut Store, relay: &mut MemRelay) -> SessionStats {
    sync_in_memory(
        store,
        relay,
        ClientConfig {
            upload_changes: 7,
            pull_bytes: 16 << 10,
            ..Default::default()
        },
        RelayLimits {
            max_batch_bytes: 16 << 10,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("sync: {e}"))
}

fn ctx() -> EditCtx {
    EditCtx::new("rep", Role::Rep)
}

fn add_customer(store: &mut Store, name: &str) -> DocId {
    add_customer_in(store, name, "north")
}

fn add_customer_in(store: &mut Store, name: &str, scope: &str) -> DocId {
    store
        .create(|d, id| {
            create_customer(
                d,
                id,
                &NewCustomer {
                    org: "o".into(),
                    scope: scope.into(),
                    name: name.into(),
                    ..Default::default()
                },
                &ctx(),
            )
        })
        .unwrap()
        .id
}

/// Registers the replica's device on the relay as a rep of `scopes`.
fn enrol_rep(relay: &mut MemRelay, store: &Store, scopes: &[&str]) -> DeviceInfo {
    let info = DeviceInfo {
        device_id: store.device_id(),
        name: "rep".into(),
        role: Role::Rep,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    };
    relay.grant(info.clone());
    info
}

#[test]
fn two_replicas_converge_through_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    let mut relay = MemRelay::new();
    let ids: Vec<DocId> = (0..40)
        .map(|i| add_customer(&mut a, &format!("c{i}")))
        .collect();
    run(&mut a, &mut relay);
    assert_eq!(a.outbox_len().unwrap(), 0);
    run(&mut b, &mut relay);
    assert_eq!(b.doc_count().unwrap(), 40);
    // Concurrent offline edits on both sides.
    for (i, id) in ids.iter().enumerate().take(10) {
        a.edit(*id, |d| {
            apply_edit(
                d,
                &Edit::Customer(CustomerEdit::Set(CustomerField::Industry, format!("a{i}"))),
                &ctx(),
            )
        })
        .unwrap();
        b.edit(*id, |d| {
            apply_edit(
                d,
                &Edit::Customer(CustomerEdit::AddPhone(format!("1390{i}"))),
                &ctx(),
            )
        })
        .unwrap();
    }
    run(&mut b, &mut relay);
    run(&mut a, &mut relay);
    run(&mut b, &mut relay);
    for id in &ids {
        assert_eq!(a.document(*id).unwrap(), b.document(*id).unwrap());
        assert_eq!(a.heads(*id).unwrap(), b.heads(*id).unwrap());
    }
    // Already in sync: a session uploads nothing and receives nothing (its own uploads are
    // never echoed back to it).
    let s = run(&mut a, &mut relay);
    assert_eq!(s.changes_sent, 0);
    assert_eq!(s.items_received, 0);
}

#[test]
fn a_first_sync_does_not_download_the_laptops_own_new_documents_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    let mut relay = MemRelay::new();
    // Another laptop's customer is on the relay first: that one must come down.
    let theirs = add_customer(&mut b, "theirs");
    run(&mut b, &mut relay);
    let mine: Vec<DocId> = (0..30)
        .map(|i| add_customer(&mut a, &format!("mine {i}")))
        .collect();
    let s = run(&mut a, &mut relay);
    assert_eq!(s.changes_acked, 30);
    assert_eq!(
        s.snapshots_received, 1,
        "only the other laptop's customer: {s:?}"
    );
    assert!(a.contains(theirs).unwrap());
    for id in &mine {
        assert!(a.contains(*id).unwrap());
    }
    // Another laptop gets them all.
    run(&mut b, &mut relay);
    assert_eq!(b.doc_count().unwrap(), 31);
}

#[test]
fn the_in_memory_relay_runs_the_relays_rules_for_quotas_and_moves() {
    let dir = tempfile::tempdir().unwrap();
    let mut rep = Store::open(dir.path().join("rep.db")).unwrap();
    let mut boss = Store::open(dir.path().join("boss.db")).unwrap();
    let mut relay = MemRelay::enrolled_only(Uuid::new_v4()).with_quota(rules::Quota {
        new_documents_per_day: 2,
        bytes_per_day: 0,
    });
    enrol_rep(&mut relay, &rep, &["north"]);
    relay.grant(DeviceInfo {
        device_id: boss.device_id(),
        name: "boss".into(),
        role: Role::Manager,
        scopes: vec!["*".into()],
    });
    // The daily quota: two of three new customers are stored today; the third waits in the
    // outbox for a retry, not in the quarantine.
    let ids: Vec<DocId> = (0..3)
        .map(|i| add_customer(&mut rep, &format!("c{i}")))
        .collect();
    run(&mut rep, &mut relay);
    assert_eq!(relay.doc_count(), 2);
    assert_eq!(rep.outbox_len().unwrap(), 1);
    assert!(rep.quarantine().unwrap().is_empty());
    // A move: the manager files c0 under `south` while the rep edits it offline. The rep's
    // edit, written before it could know of the move, is accepted within the grace period,
    // and the customer then leaves the rep's replica.
    run(&mut boss, &mut relay);
    rep.edit(ids[0], |d| {
        apply_edit(
            d,
            &Edit::Customer(CustomerEdit::Set(CustomerField::Industry, "mining".into())),
            &ctx(),
        )
    })
    .unwrap();
    boss.edit(ids[0], |d| {
        apply_edit(
            d,
            &Edit::Customer(CustomerEdit::SetScope("south".into())),
            &EditCtx::new("boss", Role::Manager),
        )
    })
    .unwrap();
    run(&mut boss, &mut relay);
    run(&mut rep, &mut relay);
    let (on_relay, scope) = relay.document(ids[0]).unwrap();
    assert_eq!(scope, "south");
    let crate::model::Document::Customer(c) = crate::model::read_document(&on_relay).unwrap()
    else {
        panic!("not a customer")
    };
    assert_eq!(c.industry.as_deref(), Some("mining"));
    assert!(!rep.contains(ids[0]).unwrap(), "the moved customer left");
    assert_eq!(
        rep.outbox_len().unwrap(),
        1,
        "only the over-quota customer waits"
    );
}

/// A session whose handshake is done, for feeding it hand-made relay messages.
fn welcomed(store: &mut Store, scopes: &[&str]) -> (ClientSession, Cursor) {
    let mut cs = ClientSession::new(ClientConfig::default());
    let epoch = Uuid::new_v4();
    let out = cs
        .handle(
            store,
            Message::Welcome {
                version: PROTOCOL_VERSION,
                epoch,
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                role: Role::Rep,
            },
        )
        .unwrap();
    let cursor = out
        .iter()
        .find_map(|m| match m {
            Message::Pull { cursor, .. } => Some(cursor.clone()),
            _ => None,
        })
        .expect("a pull");
    (cs, cursor)
}

fn batch(items: Vec<Item>, cursor: &Cursor) -> Message {
    Message::Batch {
        items,
        cursor: cursor.clone(),
        caught_up: true,
    }
}

#[test]
fn a_document_leaves_after_its_pending_changes_unless_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    for comes_back in [false, true] {
        let mut a = Store::open(dir.path().join(format!("a{comes_back}.db"))).unwrap();
        let id = add_customer(&mut a, "moving");
        let hash = a.outbox_batch(0, 10, 1 << 20).unwrap()[0].hash;
        let snapshot = a.export(id).unwrap();
        let (mut cs, cursor) = welcomed(&mut a, &["north"]);
        // It moved away: kept while its change is unacknowledged.
        let leave = Item {
            doc_id: id,
            entry: Entry::Leave,
        };
        cs.handle(&mut a, batch(vec![leave], &cursor)).unwrap();
        assert!(a.contains(id).unwrap(), "pending changes keep it");
        if comes_back {
            // Moved back before the acknowledgement: a snapshot from a scope it sees.
            let back = Item {
                doc_id: id,
                entry: Entry::Snapshot(Bytes(snapshot)),
            };
            cs.handle(&mut a, batch(vec![back], &cursor)).unwrap();
        }
        cs.handle(
            &mut a,
            Message::UploadAck {
                batch: 1,
                accepted: vec![hash.0],
                rejected: vec![],
            },
        )
        .unwrap();
        assert_eq!(a.outbox_len().unwrap(), 0);
        // It goes with the next batch that catches up (the relay pushes one after storing the
        // change): a snapshot filed after the download last caught up would come first.
        assert!(a.contains(id).unwrap());
        cs.handle(&mut a, batch(vec![], &cursor)).unwrap();
        assert_eq!(
            a.contains(id).unwrap(),
            comes_back,
            "comes back: {comes_back}"
        );
    }
}

/// Found by the deterministic simulation: a replica dropped a document on its `Leave` (or on
/// the acknowledgement of its last change) while the log further down brought it back with a
/// snapshot older than the replica's own latest changes — which the relay does not echo back,
/// so the replica lost them for good; and a customer that came back left its visits marked,
/// to be dropped although they were back in scope too. A `Leave` now only marks: the
/// document goes once the download has caught up, and a snapshot of it (or of its customer)
/// keeps it.
#[test]
fn a_leave_takes_effect_once_caught_up_and_a_returning_customer_keeps_its_visits() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let cust = add_customer(&mut a, "moving");
    let visit = a
        .create(|d, id| {
            create_visit(
                d,
                id,
                "o",
                "north",
                &NewVisit {
                    customer_id: cust.into(),
                    kind: None,
                    notes: None,
                    status: VisitStatus::Planned,
                    at: None,
                    location: None,
                },
                &ctx(),
            )
        })
        .unwrap()
        .id;
    let acked: Vec<Hash> = a
        .outbox_batch(0, 10, 1 << 20)
        .unwrap()
        .iter()
        .map(|c| c.hash.0)
        .collect();
    let snapshot = a.export(cust).unwrap();
    let (mut cs, cursor) = welcomed(&mut a, &["north"]);
    cs.handle(
        &mut a,
        Message::UploadAck {
            batch: 1,
            accepted: acked,
            rejected: vec![],
        },
    )
    .unwrap();
    let leave = Item {
        doc_id: cust,
        entry: Entry::Leave,
    };
    let behind = Message::Batch {
        items: vec![leave.clone()],
        cursor: cursor.clone(),
        caught_up: false,
    };
    cs.handle(&mut a, behind).unwrap();
    assert!(
        a.contains(cust).unwrap() && a.contains(visit).unwrap(),
        "only marked"
    );
    let back = Item {
        doc_id: cust,
        entry: Entry::Snapshot(Bytes(snapshot)),
    };
    cs.handle(&mut a, batch(vec![back], &cursor)).unwrap();
    assert!(a.contains(cust).unwrap(), "it came back");
    assert!(a.contains(visit).unwrap(), "its visit came back with it");
    cs.handle(&mut a, batch(vec![leave], &cursor)).unwrap();
    assert!(
        !a.contains(cust).unwrap() && !a.contains(visit).unwrap(),
        "gone for good"
    );
}

#[test]
fn dependents_of_a_refused_change_are_quarantined_and_the_document_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let id = add_customer(&mut a, "base");
    let created = a.outbox_batch(0, 10, 1 << 20).unwrap()[0].hash;
    let (mut cs, _) = welcomed(&mut a, &["north"]);
    let ack = |accepted: Vec<automerge::ChangeHash>, rejected: Vec<messages::Rejection>| {
        Message::UploadAck {
            batch: 1,
            accepted: accepted.into_iter().map(|h| h.0).collect(),
            rejected,
        }
    };
    cs.handle(&mut a, ack(vec![created], vec![])).unwrap();
    let edit = |a: &mut Store, f: CustomerField, v: &str| {
        a.edit(id, |d| {
            apply_edit(
                d,
                &Edit::Customer(CustomerEdit::Set(f, v.into())),
                &EditCtx::new("rep", Role::Admin),
            )
        })
        .unwrap()
        .hashes[0]
    };
    let bad = edit(&mut a, CustomerField::Industry, "refused");
    let dependent = edit(&mut a, CustomerField::Name, "renamed on top");
    // The relay refuses the first for good and the second for now (its dependency is missing).
    cs.handle(
        &mut a,
        ack(
            vec![],
            vec![
                messages::Rejection {
                    hash: bad.0,
                    reason: "role rep may not change x".into(),
                    retry: false,
                },
                messages::Rejection {
                    hash: dependent.0,
                    reason: "dependency is not on the relay yet".into(),
                    retry: true,
                },
            ],
        ),
    )
    .unwrap();
    let q = a.quarantine().unwrap();
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(q.iter().any(|x| x.reason.starts_with("depends on change")));
    assert_eq!(a.outbox_len().unwrap(), 0, "nothing is resent forever");
    assert_eq!(cs.take_quarantined().len(), 2);
    // The document is back to what the relay accepted; a new edit builds on that.
    let doc = a.document(id).unwrap();
    let json = serde_json::to_string(&doc).unwrap();
    assert!(json.contains("base") && !json.contains("renamed") && !json.contains("refused"));
    assert_eq!(a.heads(id).unwrap(), vec![created]);
    let next = edit(&mut a, CustomerField::Name, "renamed later");
    let change = a.outbox_batch(0, 10, 1 << 20).unwrap();
    assert_eq!(change.len(), 1);
    assert_eq!(change[0].hash, next);
    let deps = crate::store::decode_change(&change[0].bytes).unwrap();
    assert_eq!(deps.deps(), &[created][..]);
}

/// A rep creates and edits a customer in a territory IT has not granted yet: the relay
/// refuses both, the replica quarantines them and drops the customer. Once IT widens the
/// grant, retrying puts the customer back and the next sync delivers both changes; a change
/// that is still refused comes back to the quarantine.
#[test]
fn quarantined_changes_are_sent_again_after_the_grant_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut relay = MemRelay::new();
    let rep = enrol_rep(&mut relay, &a, &["north"]);
    let id = add_customer_in(&mut a, "Steppe Quarry", "south");
    a.edit(id, |d| {
        apply_edit(
            d,
            &Edit::Customer(CustomerEdit::Set(CustomerField::Industry, "mining".into())),
            &ctx(),
        )
    })
    .unwrap();
    let mine = a.export(id).unwrap();
    run(&mut a, &mut relay);
    assert_eq!(a.quarantine().unwrap().len(), 2);
    assert!(
        !a.contains(id).unwrap(),
        "the refused creation took the customer away"
    );
    assert_eq!(relay.doc_count(), 0);

    // Retrying before the grant changes: refused again, quarantined again, nothing lost.
    assert_eq!(
        a.transaction(|tx| tx.requeue_quarantined(None)).unwrap(),
        (2, 0)
    );
    assert!(a.contains(id).unwrap());
    assert_eq!(a.outbox_len().unwrap(), 2);
    run(&mut a, &mut relay);
    let q = a.quarantine().unwrap();
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(
        q.iter()
            .any(|x| x.reason.contains("outside the device's scopes"))
    );

    relay.grant(DeviceInfo {
        scopes: vec!["north".into(), "south".into()],
        ..rep
    });
    assert_eq!(
        a.transaction(|tx| tx.requeue_quarantined(Some(id)))
            .unwrap(),
        (2, 0)
    );
    run(&mut a, &mut relay);
    assert!(a.quarantine().unwrap().is_empty());
    assert_eq!(a.outbox_len().unwrap(), 0);
    let (mut on_relay, scope) = relay.document(id).expect("the relay has the customer");
    assert_eq!(scope, "south");
    assert_eq!(
        crate::model::read_document(&on_relay).unwrap(),
        a.document(id).unwrap()
    );
    let mut original = crate::store::load_snapshot(&mine).unwrap();
    assert_eq!(
        on_relay.get_heads(),
        original.get_heads(),
        "the very changes written offline"
    );
}

/// A refused change whose document was edited again on the replica cannot go back (the
/// later edit took its sequence number): retrying keeps it quarantined and touches nothing.
#[test]
fn a_quarantined_change_overtaken_by_a_later_edit_stays_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut relay = MemRelay::new();
    enrol_rep(&mut relay, &a, &["north"]);
    let id = add_customer(&mut a, "Steppe Quarry");
    run(&mut a, &mut relay);
    let set = |a: &mut Store, e: CustomerEdit, role: Role| {
        a.edit(id, |d| {
            apply_edit(d, &Edit::Customer(e), &EditCtx::new("rep", role))
        })
        .unwrap();
    };
    // Claiming an admin's role locally: the relay refuses the grade for a rep.
    set(&mut a, CustomerEdit::SetGrade("A".into()), Role::Admin);
    run(&mut a, &mut relay);
    assert_eq!(a.quarantine().unwrap().len(), 1);
    set(
        &mut a,
        CustomerEdit::Set(CustomerField::Industry, "mining".into()),
        Role::Rep,
    );
    let heads = a.heads(id).unwrap();
    assert_eq!(
        a.transaction(|tx| tx.requeue_quarantined(None)).unwrap(),
        (0, 1)
    );
    assert_eq!(a.quarantine().unwrap().len(), 1);
    assert_eq!(a.heads(id).unwrap(), heads, "the document is untouched");
    assert_eq!(a.outbox_len().unwrap(), 1, "only the later edit waits");
    run(&mut a, &mut relay);
    assert_eq!(a.outbox_len().unwrap(), 0);
}

/// Found by the deterministic simulation: a document holding a change the relay refused was
/// rebuilt without it only if nothing else of it was waiting in the outbox — counting the
/// changes the same answer accepted — and only if it was not marked to leave; one that then
/// came back kept the refused change for good, so the replica's copy differed from everyone
/// else's.
#[test]
fn a_refused_change_is_rebuilt_out_also_beside_accepted_ones_and_while_leaving() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let id = add_customer(&mut a, "moving");
    let relay_copy = a.export(id).unwrap();
    a.edit(id, |d| {
        apply_edit(
            d,
            &Edit::Customer(CustomerEdit::Set(CustomerField::Industry, "refused".into())),
            &ctx(),
        )
    })
    .unwrap();
    let outbox = a.outbox_batch(0, 10, 1 << 20).unwrap();
    let (created, refused) = (outbox[0].hash, outbox[1].hash);
    let (mut cs, cursor) = welcomed(&mut a, &["north"]);
    let leave = Message::Batch {
        items: vec![Item {
            doc_id: id,
            entry: Entry::Leave,
        }],
        cursor: cursor.clone(),
        caught_up: false,
    };
    cs.handle(&mut a, leave).unwrap();
    cs.handle(
        &mut a,
        Message::UploadAck {
            batch: 1,
            accepted: vec![created.0],
            rejected: vec![messages::Rejection {
                hash: refused.0,
                reason: "outside the device's scopes".into(),
                retry: false,
            }],
        },
    )
    .unwrap();
    let industry = |a: &mut Store| match a.document(id).unwrap() {
        crate::model::Document::Customer(c) => c.industry,
        other => panic!("{other:?}"),
    };
    assert_eq!(industry(&mut a), None, "rebuilt without the refused change");
    assert_eq!(a.quarantine().unwrap().len(), 1);
    // It comes back: kept, as the relay has it.
    let back = Item {
        doc_id: id,
        entry: Entry::Snapshot(Bytes(relay_copy)),
    };
    cs.handle(&mut a, batch(vec![back], &cursor)).unwrap();
    assert!(a.contains(id).unwrap());
    assert_eq!(industry(&mut a), None);
    assert_eq!(a.outbox_len().unwrap(), 0);
}

/// Found by the deterministic simulation: a document marked to leave, whose last change
/// the relay acknowledged while the session counted as caught up, was removed right away —
/// though the relay had meanwhile filed it back into the device's scopes and its snapshot
/// (taken before that last change, which the relay does not echo back) was on its way. The
/// replica re-created it from that snapshot without its own change.
#[test]
fn an_acknowledgement_does_not_remove_a_document_that_a_pushed_snapshot_brings_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let id = add_customer(&mut a, "moving");
    let created = a.outbox_batch(0, 10, 1 << 20).unwrap()[0].hash;
    let relay_copy = a.export(id).unwrap();
    let (mut cs, cursor) = welcomed(&mut a, &["north"]);
    cs.handle(
        &mut a,
        Message::UploadAck {
            batch: 1,
            accepted: vec![created.0],
            rejected: vec![],
        },
    )
    .unwrap();
    // An edit waits for the relay when the download, caught up, reads the Leave.
    a.edit(id, |d| {
        apply_edit(
            d,
            &Edit::Customer(CustomerEdit::Set(CustomerField::Industry, "mine".into())),
            &ctx(),
        )
    })
    .unwrap();
    let mine = a.outbox_batch(0, 10, 1 << 20).unwrap()[0].hash;
    let leave = Item {
        doc_id: id,
        entry: Entry::Leave,
    };
    cs.handle(&mut a, batch(vec![leave], &cursor)).unwrap();
    assert!(a.contains(id).unwrap(), "kept while its edit waits");
    // The document moved back; then the edit was stored and acknowledged.
    cs.handle(
        &mut a,
        Message::UploadAck {
            batch: 2,
            accepted: vec![mine.0],
            rejected: vec![],
        },
    )
    .unwrap();
    assert!(
        a.contains(id).unwrap(),
        "not removed on the acknowledgement"
    );
    let back = Item {
        doc_id: id,
        entry: Entry::Snapshot(Bytes(relay_copy)),
    };
    cs.handle(&mut a, batch(vec![back], &cursor)).unwrap();
    let Ok(crate::model::Document::Customer(c)) = a.document(id) else {
        panic!("the customer is gone")
    };
    assert_eq!(c.industry.as_deref(), Some("mine"), "its own change kept");
}

#[test]
fn relay_reset_is_repaired_from_the_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    let mut relay = MemRelay::new();
    let id = add_customer(&mut a, "keep");
    run(&mut a, &mut relay);
    // The relay loses everything (new epoch); a's acknowledged change must come back.
    relay = MemRelay::new();
    let s = run(&mut a, &mut relay);
    assert!(s.repaired > 0);
    run(&mut b, &mut relay);
    assert_eq!(b.document(id).unwrap(), a.document(id).unwrap());
}

/// In a repair exchange the relay tells a device its heads only for documents in the
/// device's scopes; a document elsewhere is answered as one the relay lacks.
#[test]
fn repair_answers_heads_only_within_the_devices_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let mut admin = Store::open(dir.path().join("admin.db")).unwrap();
    let rep = Store::open(dir.path().join("rep.db")).unwrap();
    let mut relay = MemRelay::new();
    let north = add_customer(&mut admin, "Northern Quarry");
    let south = add_customer_in(&mut admin, "Southern Mine", "south");
    run(&mut admin, &mut relay);
    enrol_rep(&mut relay, &rep, &["north"]);
    let mut rs = RelaySession::new(RelayLimits::default());
    let out = rs.handle(
        &mut relay,
        ClientSession::new(ClientConfig::default()).hello(&rep),
    );
    assert!(!out.close, "{:?}", out.messages);
    let relay_heads = |id| -> Vec<Hash> { admin.heads(id).unwrap().iter().map(|h| h.0).collect() };
    let (north_heads, south_heads) = (relay_heads(north), relay_heads(south));
    let unknown = DocId::new();
    let out = rs.handle(
        &mut relay,
        Message::Heads {
            docs: vec![
                (north, vec![[7; 32]]),
                (south, vec![[7; 32]]),
                (unknown, vec![[7; 32]]),
            ],
            done: true,
        },
    );
    let Some(Message::Missing { docs, done: true }) = out.messages.first() else {
        panic!("a Missing answer: {:?}", out.messages);
    };
    assert_eq!(
        docs,
        &vec![
            (north, north_heads),
            (south, Vec::new()),
            (unknown, Vec::new())
        ]
    );
    assert_ne!(
        south_heads,
        Vec::<Hash>::new(),
        "the relay holds the southern customer"
    );
}

#[test]
fn a_connection_without_a_hello_is_closed_at_its_deadline() {
    let limits = RelayLimits {
        hello_timeout: std::time::Duration::from_secs(5),
        ..Default::default()
    };
    let mut rs = RelaySession::opened(limits.clone(), 1_000);
    assert_eq!(rs.poll_timeout(), Some(6_000));
    assert_eq!(rs.handle_timeout(5_999), relay::Output::default());
    let out = rs.handle_timeout(6_000);
    assert!(out.close);
    assert!(matches!(
        out.messages[..],
        [Message::Error {
            code: ErrorCode::Protocol,
            ..
        }]
    ));
    // Once the device authenticated, the deadline is gone.
    let mut relay = MemRelay::new();
    let mut rs = RelaySession::opened(limits, 0);
    let out = rs.handle(
        &mut relay,
        Message::Hello {
            magic: messages::MAGIC,
            version: PROTOCOL_VERSION,
            device_id: Uuid::new_v4(),
            credential: None,
            agent: String::new(),
        },
    );
    assert!(!out.close, "{out:?}");
    assert_eq!(rs.poll_timeout(), None);
    assert_eq!(rs.handle_timeout(60_000), relay::Output::default());
    // A session made without a clock has no deadline.
    assert_eq!(
        RelaySession::new(RelayLimits::default()).poll_timeout(),
        None
    );
}

#[test]
fn refused_devices_and_versions_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("a.db")).unwrap();
    let mut relay = MemRelay::new();
    relay.revoke(store.device_id());
    let mut rs = RelaySession::new(RelayLimits::default());
    let cs = ClientSession::new(ClientConfig::default());
    let out = rs.handle(&mut relay, cs.hello(&store));
    assert!(out.close);
    assert!(matches!(
        out.messages[0],
        Message::Error {
            code: ErrorCode::Unauthorized,
            ..
        }
    ));
    let mut rs = RelaySession::new(RelayLimits::default());
    let out = rs.handle(
        &mut relay,
        Message::Hello {
            magic: messages::MAGIC,
            version: 99,
            device_id: Uuid::nil(),
            credential: None,
            agent: String::new(),
        },
    );
    assert!(matches!(
        out.messages[0],
        Message::Error {
            code: ErrorCode::VersionMismatch,
            ..
        }
    ));
    let mut rs = RelaySession::new(RelayLimits::default());
    let out = rs.handle(
        &mut relay,
        Message::Pull {
            cursor: Cursor {
                epoch: Uuid::nil(),
                scopes: BTreeMap::new(),
            },
            max_bytes: 1,
        },
    );
    assert!(out.close, "a Pull before Hello is refused");
}

#[test]
fn forged_and_malformed_uploads_are_refused_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    let mut relay = MemRelay::new();
    let id = add_customer(&mut a, "mine");
    let change = a.outbox_batch(0, 1, 1 << 20).unwrap().remove(0);
    // b tries to upload a's change as its own.
    let mut rs = RelaySession::new(RelayLimits::default());
    let cs = ClientSession::new(ClientConfig::default());
    assert!(!rs.handle(&mut relay, cs.hello(&b)).close);
    let out = rs.handle(
        &mut relay,
        Message::Upload {
            batch: 1,
            changes: vec![
                UploadChange {
                    doc_id: id,
                    bytes: change.bytes.clone(),
                },
                UploadChange {
                    doc_id: id,
                    bytes: vec![1, 2, 3],
                },
            ],
        },
    );
    let Message::UploadAck {
        accepted, rejected, ..
    } = &out.messages[0]
    else {
        panic!("{out:?}")
    };
    assert!(accepted.is_empty());
    assert_eq!(rejected.len(), 2);
    assert!(rejected.iter().all(|r| !r.retry));
    assert_eq!(relay.log_len(), 0);
    run(&mut b, &mut relay);
    assert_eq!(b.doc_count().unwrap(), 0);
}

fn arb_message() -> impl Strategy<Value = Message> {
    let id = any::<u128>().prop_map(|n| DocId(Uuid::from_u128(n)));
    let bytes = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        (
            any::<u32>(),
            any::<u128>(),
            proptest::option::of("[a-z]{0,12}"),
            "[ -~]{0,20}"
        )
            .prop_map(|(v, d, c, a)| Message::Hello {
                magic: messages::MAGIC,
                version: v,
                device_id: Uuid::from_u128(d),
                credential: c,
                agent: a
            }),
        (
            any::<u64>(),
            proptest::collection::vec((id.clone(), bytes.clone()), 0..8)
        )
            .prop_map(|(b, cs)| Message::Upload {
                batch: b,
                changes: cs
                    .into_iter()
                    .map(|(doc_id, bytes)| UploadChange { doc_id, bytes })
                    .collect()
            }),
        (
            any::<u64>(),
            proptest::collection::vec(any::<[u8; 32]>(), 0..5)
        )
            .prop_map(|(b, a)| Message::UploadAck {
                batch: b,
                accepted: a,
                rejected: vec![]
            }),
        (
            proptest::collection::vec((id.clone(), bytes.clone(), 0u8..3), 0..6),
            any::<u128>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(items, e, seq, cu)| Message::Batch {
                items: items
                    .into_iter()
                    .map(|(doc_id, b, k)| Item {
                        doc_id,
                        entry: match k {
                            0 => Entry::Changes(vec![Bytes(b)]),
                            1 => Entry::Snapshot(Bytes(b)),
                            _ => Entry::Leave,
                        }
                    })
                    .collect(),
                cursor: Cursor {
                    epoch: Uuid::from_u128(e),
                    scopes: [("north".to_string(), ScopeCursor::Log { seq })]
                        .into_iter()
                        .collect()
                },
                caught_up: cu
            }),
        proptest::collection::vec(
            (
                id.clone(),
                proptest::collection::vec(any::<[u8; 32]>(), 0..3)
            ),
            0..5
        )
        .prop_map(|docs| Message::Heads { docs, done: true }),
        proptest::collection::vec(id.clone(), 0..5)
            .prop_map(|customers| Message::First { customers }),
        (
            any::<u128>(),
            proptest::collection::vec(id.clone(), 0..4),
            any::<(u64, u64, u64, bool)>(),
            proptest::option::of(id)
        )
            .prop_map(
                |(e, first, (seq, first_seq, upto, done), after)| Message::Pull {
                    cursor: Cursor {
                        epoch: Uuid::from_u128(e),
                        scopes: [
                            (
                                "north".to_string(),
                                ScopeCursor::LogFirst {
                                    seq,
                                    first: first.clone(),
                                    first_seq,
                                    upto
                                }
                            ),
                            (
                                "south".to_string(),
                                ScopeCursor::SnapshotFirst {
                                    high: upto,
                                    first,
                                    first_done: done,
                                    after
                                }
                            )
                        ]
                        .into_iter()
                        .collect()
                    },
                    max_bytes: 1 << 16
                }
            ),
    ]
}

proptest! {
    #[test]
    fn codec_round_trips(m in arb_message()) {
        let frame = encode(&m).unwrap();
        let len = codec::check_len(u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]])).unwrap();
        prop_assert_eq!(len, frame.len() - 4);
        prop_assert_eq!(decode(&frame[4..]).unwrap(), m.clone());
        // Byte-at-a-time reassembly gives the same message.
        let mut dec = FrameDecoder::new();
        let mut got = None;
        for b in &frame {
            dec.push(std::slice::from_ref(b));
            if let Some(m) = dec.next_message().unwrap() {
                got = Some(m);
            }
        }
        prop_assert_eq!(got, Some(m));
    }

    #[test]
    fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode(&bytes);
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        let _ = dec.next_message();
    }

    #[test]
    fn decoder_never_panics_on_mutated_frames(m in arb_message(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut frame = encode(&m).unwrap();
        for (i, x) in flips {
            let n = frame.len();
            frame[4 + i % (n - 4)] ^= x;
        }
        let _ = decode(&frame[4..]);
    }
}

#[test]
fn compression_bombs_and_oversized_frames_are_refused() {
    assert!(matches!(
        codec::check_len(u32::MAX),
        Err(CodecError::TooLarge(_))
    ));
    assert!(codec::check_len(0).is_err());
    // 200 MiB of zeros compress to a few KiB; decoding must refuse it without inflating.
    let big = vec![0u8; 200 << 20];
    let z = zstd::bulk::compress(&big, 1).unwrap();
    let mut frame = vec![1u8];
    frame.extend_from_slice(&z);
    assert!(decode(&frame).is_err());
    // Unknown flags.
    assert!(decode(&[7, 1, 2, 3]).is_err());
}

#[test]
fn a_replacement_reaches_a_protocol_2_client_as_a_snapshot() {
    let doc = DocId::new();
    let bytes = Bytes(vec![1, 2, 3]);
    for (version, want) in [
        (2, Entry::Snapshot(bytes.clone())),
        (3, Entry::Replace(bytes.clone())),
        (PROTOCOL_VERSION, Entry::Replace(bytes.clone())),
    ] {
        let mut relay = MemRelay::new();
        relay.push_entry("north", doc, Entry::Replace(bytes.clone()));
        let mut rs = RelaySession::new(RelayLimits::default());
        let out = rs.handle(
            &mut relay,
            Message::Hello {
                magic: messages::MAGIC,
                version,
                device_id: Uuid::new_v4(),
                credential: None,
                agent: String::new(),
            },
        );
        assert!(
            matches!(out.messages[0], Message::Welcome { version: v, .. } if v == version),
            "{:?}",
            out.messages
        );
        let epoch = relay.epoch().unwrap();
        let out = rs.handle(
            &mut relay,
            Message::Pull {
                cursor: Cursor {
                    epoch,
                    scopes: BTreeMap::from([("*".to_string(), ScopeCursor::Log { seq: 0 })]),
                },
                max_bytes: 1 << 20,
            },
        );
        // Only a protocol-4 client is told what is waiting ahead of the batch.
        let names: Vec<&str> = out.messages.iter().map(Message::name).collect();
        let want_names = if version >= 4 {
            vec!["Waiting", "Batch"]
        } else {
            vec!["Batch"]
        };
        assert_eq!(names, want_names, "protocol {version}");
        let Some(Message::Batch { items, .. }) = out.messages.last() else {
            panic!("a batch: {:?}", out.messages);
        };
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].entry, want, "protocol {version}");
    }
}

/// A session's first flight carries the `Hello`, the waiting changes and the pull: the relay
/// answers all three at once, so a laptop with one changed field is synced one round trip
/// after the connection opens, and a laptop whose relay was reset still repairs it while the
/// download the pull started goes on.
#[test]
fn the_first_flight_authenticates_uploads_and_pulls_in_one_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    let mut relay = MemRelay::new();
    let theirs = add_customer(&mut b, "theirs");
    run(&mut b, &mut relay);
    let mine = add_customer(&mut a, "mine");

    let mut cs = ClientSession::new(ClientConfig::default());
    let first = cs.step(&mut a, ClientInput::Open, 0).unwrap();
    let names: Vec<&str> = first.send.iter().map(Message::name).collect();
    assert_eq!(names, ["Hello", "Outbox", "Upload", "Pull"]);
    let mut rs = RelaySession::new(RelayLimits::default());
    let mut answers = Vec::new();
    for m in first.send {
        let out = rs.handle(&mut relay, m);
        assert!(!out.close, "{out:?}");
        answers.extend(out.messages);
    }
    let mut last = None;
    for m in answers {
        let step = cs.step(&mut a, ClientInput::Message(m), 1).unwrap();
        // Only the advisory report of what it holds unsent (protocol 5), never a request.
        assert!(
            step.send
                .iter()
                .all(|m| matches!(m, Message::Outbox { .. })),
            "nothing more to ask: {:?}",
            step.send
        );
        last = Some(step);
    }
    assert!(last.unwrap().synced, "synced after one round trip");
    assert!(a.contains(theirs).unwrap());
    assert_eq!(relay.doc_count(), 2);
    assert!(relay.document(mine).is_some());

    // The relay loses its log (a new epoch): the pull sent with the Hello carries the old
    // epoch, so the relay restarts the download at once while the laptop repairs it (its own
    // customer is taken back; another device's change is that device's to bring back).
    let mut reset = MemRelay::new();
    let s = run(&mut a, &mut reset);
    assert_eq!(s.repaired, 2, "both documents offered back: {s:?}");
    assert!(reset.document(mine).is_some());
    let mut c = Store::open(dir.path().join("c.db")).unwrap();
    run(&mut c, &mut reset);
    assert_eq!(c.document(mine).unwrap(), a.document(mine).unwrap());
}

mod lanes;
mod streaming;

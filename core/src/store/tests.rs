//! Tests of the replica store.

// Tests mint ids and read the clock freely; the code under test takes them as inputs.
#![allow(clippy::disallowed_methods)]

use automerge::{ActorId, ChangeHash};
use rusqlite::Connection;

use super::*;
use crate::ids::{DocId, Role};
use crate::model::{
    self, ContactInput, CustomerEdit, CustomerField, Document, Edit, EditCtx, NewCustomer,
    NewQuote, NewVisit, QuoteEdit, VisitStatus, apply_edit, create_customer, create_quote,
    create_visit,
};

fn ctx() -> EditCtx {
    EditCtx::new("rep-1", Role::Rep)
}

fn add_customer(store: &mut Store, name: &str) -> DocId {
    store
        .create(|doc, id| {
            create_customer(
                doc,
                id,
                &NewCustomer {
                    org: "acme".into(),
                    scope: "north".into(),
                    name: name.into(),
                    phone: Some("+86 138 0000 0001".into()),
                    ..Default::default()
                },
                &ctx(),
            )
        })
        .unwrap()
        .id
}

fn edit(store: &mut Store, id: DocId, e: Edit) -> Committed {
    store.edit(id, |doc| apply_edit(doc, &e, &ctx())).unwrap()
}

#[test]
fn edits_are_projected_and_queued_in_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("r.db")).unwrap();
    let events = store.subscribe();
    let id = add_customer(&mut store, "Zeta Mining");
    add_customer(&mut store, "Alpha Quarry");
    edit(
        &mut store,
        id,
        Edit::Customer(CustomerEdit::Set(CustomerField::Industry, "mining".into())),
    );
    let rows = store
        .query_json("SELECT name, industry FROM customers ORDER BY name", &[])
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "Alpha Quarry");
    assert_eq!(rows[1]["industry"], "mining");
    assert_eq!(store.outbox_len().unwrap(), 3);
    let by_phone = store
        .query_json(
            "SELECT customer_id FROM customer_phones WHERE normalized = '+8613800000001'",
            &[],
        )
        .unwrap();
    assert_eq!(by_phone.len(), 2);
    assert_eq!(events.try_iter().count(), 3);
    assert!(store.query_json("DELETE FROM customers", &[]).is_err());
    assert!(store.reader().execute("DELETE FROM customers", []).is_err());
}

#[test]
fn remote_changes_merge_and_outbox_acks() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    let id = add_customer(&mut a, "Shared Co");
    let batch = a.outbox_batch(0, 100, 1 << 20).unwrap();
    let raws: Vec<Vec<u8>> = batch.iter().map(|c| c.bytes.clone()).collect();
    assert_eq!(b.transaction(|tx| tx.apply_changes(id, &raws)).unwrap(), 1);
    // Idempotent: applying the same change again adds nothing.
    assert_eq!(b.transaction(|tx| tx.apply_changes(id, &raws)).unwrap(), 0);
    let hashes: Vec<ChangeHash> = batch.iter().map(|c| c.hash).collect();
    a.transaction(|tx| tx.ack(&hashes)).unwrap();
    assert_eq!(a.outbox_len().unwrap(), 0);
    assert_eq!(b.outbox_len().unwrap(), 0);
    // Concurrent edits on both sides converge.
    edit(
        &mut a,
        id,
        Edit::Customer(CustomerEdit::Set(CustomerField::Name, "Shared A".into())),
    );
    edit(
        &mut b,
        id,
        Edit::Customer(CustomerEdit::AddContact(
            "c1".into(),
            ContactInput {
                name: Some("Li".into()),
                ..Default::default()
            },
        )),
    );
    edit(
        &mut b,
        id,
        Edit::Customer(CustomerEdit::Set(CustomerField::Name, "Shared B".into())),
    );
    let from_a: Vec<Vec<u8>> = a
        .outbox_batch(0, 100, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|c| c.bytes)
        .collect();
    let from_b: Vec<Vec<u8>> = b
        .outbox_batch(0, 100, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|c| c.bytes)
        .collect();
    a.transaction(|tx| tx.apply_changes(id, &from_b)).unwrap();
    b.transaction(|tx| tx.apply_changes(id, &from_a)).unwrap();
    let (da, db) = (a.document(id).unwrap(), b.document(id).unwrap());
    assert_eq!(da, db);
    // Each replica records when the document last received changes from elsewhere: the
    // creator's copy only once the other's edits arrived, the other's since its first copy.
    let received = |s: &Store| -> Option<i64> {
        s.reader()
            .query_row(
                "SELECT received_at FROM docs WHERE id = ?1",
                [&id.as_bytes()[..]],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert!(received(&a).is_some() && received(&b).is_some());
    let c = Store::open(dir.path().join("c.db")).unwrap();
    let mut c = c;
    let local = add_customer(&mut c, "Only here");
    assert_eq!(
        c.reader()
            .query_row(
                "SELECT received_at FROM docs WHERE id = ?1",
                [&local.as_bytes()[..]],
                |r| r.get::<_, Option<i64>>(0)
            )
            .unwrap(),
        None,
        "a local edit is not a receipt"
    );
    assert_eq!(a.conflicts().unwrap().len(), 1);
    assert_eq!(a.heads(id).unwrap().len(), 2);
    assert!(a.verify().unwrap().is_empty());
}

#[test]
fn out_of_order_changes_wait_for_their_dependencies_and_survive_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let id = add_customer(&mut a, "Chain Co");
    for i in 0..5 {
        edit(
            &mut a,
            id,
            Edit::Customer(CustomerEdit::AddPhone(format!("139000{i}"))),
        );
    }
    let changes: Vec<Vec<u8>> = a
        .outbox_batch(0, 100, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|c| c.bytes)
        .collect();
    let mut b = Store::open_with(
        dir.path().join("b.db"),
        StoreOptions {
            compact_after: 2,
            ..Default::default()
        },
    )
    .unwrap();
    // Deliver in reverse: nothing can apply until the first change arrives.
    for c in changes.iter().rev() {
        b.transaction(|tx| tx.apply_changes(id, std::slice::from_ref(c)))
            .unwrap();
    }
    drop(b);
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    assert_eq!(b.document(id).unwrap(), a.document(id).unwrap());
    assert!(b.verify().unwrap().is_empty());
}

#[test]
fn visits_and_quotes_project_into_the_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path().join("r.db")).unwrap();
    let cust = add_customer(&mut s, "Timeline Co");
    s.create(|doc, id| {
        create_visit(
            doc,
            id,
            "acme",
            "north",
            &NewVisit {
                customer_id: cust.into(),
                kind: None,
                notes: Some("met the purchaser".into()),
                status: VisitStatus::Done,
                at: Some(1_000),
                location: None,
            },
            &ctx(),
        )
    })
    .unwrap();
    let q = s
        .create(|doc, id| {
            create_quote(
                doc,
                id,
                "acme",
                "north",
                &NewQuote {
                    customer_id: cust.into(),
                    currency: "CNY".into(),
                    quote_no: Some("Q-7".into()),
                    valid_until: None,
                },
                &ctx(),
            )
        })
        .unwrap()
        .id;
    edit(&mut s, q, Edit::Quote(QuoteEdit::Submit));
    let rows = s
        .query_json(
            "SELECT kind, summary FROM timeline WHERE customer_id = ?1 ORDER BY occurred_at",
            &[&cust.to_string()],
        )
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["kind"], "visit");
    assert!(rows[1]["summary"].as_str().unwrap().contains("submitted"));
    s.rebuild_projections().unwrap();
    assert_eq!(
        s.query_json("SELECT * FROM timeline", &[]).unwrap().len(),
        2
    );
}

#[test]
fn bad_bytes_and_foreign_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.db");
    let original =
        b"this is not sqlite at all, just some bytes that go on for a while....".to_vec();
    std::fs::write(&junk, &original).unwrap();
    assert!(matches!(
        Store::open(&junk),
        Err(StoreError::NotADatabase(..))
    ));
    assert_eq!(
        std::fs::read(&junk).unwrap(),
        original,
        "a refused file is left untouched"
    );

    let foreign = dir.path().join("foreign.db");
    Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    assert!(matches!(Store::open(&foreign), Err(StoreError::Foreign)));

    let newer = dir.path().join("newer.db");
    drop(Store::open(&newer).unwrap());
    Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert!(matches!(
        Store::open(&newer),
        Err(StoreError::SchemaTooNew { found: 99, .. })
    ));

    let mut s = Store::open(dir.path().join("ok.db")).unwrap();
    let id = add_customer(&mut s, "Keep Me");
    let before = s.document(id).unwrap();
    for bad in [
        vec![],
        vec![0u8; 10],
        vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3, 4, 1, 200, 200, 200],
    ] {
        assert!(
            s.transaction(|tx| tx.apply_changes(id, std::slice::from_ref(&bad)))
                .is_err()
        );
        assert!(s.transaction(|tx| tx.apply_snapshot(id, &bad)).is_err());
        assert!(s.import(&bad).is_err());
    }
    assert_eq!(s.document(id).unwrap(), before);
    assert!(s.verify().unwrap().is_empty());
}

#[test]
fn export_import_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    let id = add_customer(&mut a, "Portable");
    let bytes = a.export(id).unwrap();
    assert_eq!(b.import(&bytes).unwrap(), id);
    assert_eq!(b.document(id).unwrap(), a.document(id).unwrap());
    assert_eq!(b.outbox_len().unwrap(), 0);
}

#[test]
fn eviction_waits_for_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path().join("r.db")).unwrap();
    let id = add_customer(&mut s, "Moving Co");
    assert!(!s.transaction(|tx| tx.evict(id)).unwrap());
    assert!(s.contains(id).unwrap());
    let hashes: Vec<ChangeHash> = s
        .outbox_batch(0, 10, 1 << 20)
        .unwrap()
        .iter()
        .map(|c| c.hash)
        .collect();
    s.transaction(|tx| {
        tx.ack(&hashes)?;
        tx.evict_acknowledged()
    })
    .unwrap();
    assert!(!s.contains(id).unwrap());
    assert_eq!(
        s.query_json("SELECT * FROM customers", &[]).unwrap().len(),
        0
    );
}

#[test]
fn read_only_sql_refuses_transaction_control_that_would_pin_a_stale_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path().join("r.db")).unwrap();
    for sql in [
        "BEGIN",
        "SAVEPOINT x",
        "COMMIT",
        "ATTACH DATABASE 'other.db' AS o",
        "PRAGMA query_only = 0",
    ] {
        assert!(
            matches!(s.query_json(sql, &[]), Err(StoreError::Query(_))),
            "{sql} must be refused"
        );
    }
    assert!(s.reader().is_autocommit());
    add_customer(&mut s, "Fresh Co");
    let rows = s
        .query_json("SELECT count(*) AS n FROM customers", &[])
        .unwrap();
    assert_eq!(rows[0]["n"], 1, "the reader sees the latest commit");
}

#[test]
fn a_new_document_stored_as_its_single_change_reloads_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let mut s = Store::open(&path).unwrap();
    let id = add_customer(&mut s, "One Change Co");
    let before = s.document(id).unwrap();
    let heads = s.heads(id).unwrap();
    drop(s);
    let mut s = Store::open(&path).unwrap();
    assert_eq!(s.document(id).unwrap(), before);
    assert_eq!(s.heads(id).unwrap(), heads);
    assert!(s.verify().unwrap().is_empty());
    // Edits and compaction on top of it work as for any document.
    for i in 0..20 {
        edit(
            &mut s,
            id,
            Edit::Customer(CustomerEdit::AddPhone(format!("1360000{i:02}"))),
        );
    }
    drop(s);
    let mut s = Store::open(&path).unwrap();
    assert_eq!(
        s.document(id)
            .map(|d| match d {
                Document::Customer(c) => c.phones.len(),
                _ => 0,
            })
            .unwrap(),
        21
    );
    assert!(s.verify().unwrap().is_empty());
}

/// Regression (fuzz target `load_document`): automerge checks a chunk's checksum when it loads
/// a document but not when it decodes a single change, so a downloaded change with a wrong
/// checksum was stored. Waiting for a dependency that had not arrived, it was written as it
/// was into the document's next compacted snapshot (`save()` keeps such changes), and that
/// snapshot no longer loaded: the document was gone from the replica. Such a change is now
/// refused where it arrives, and the document keeps loading.
#[test]
fn a_change_with_a_wrong_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let id = add_customer(&mut a, "Checksum Co");
    edit(
        &mut a,
        id,
        Edit::Customer(CustomerEdit::Set(CustomerField::Industry, "mining".into())),
    );
    let changes: Vec<Vec<u8>> = a
        .outbox_batch(0, 100, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|c| c.bytes)
        .collect();
    let [create, edit_change] = changes.as_slice() else {
        panic!("two changes: {}", changes.len());
    };
    let mut bad = edit_change.clone();
    bad[4] ^= 0x01; // the header checksum
    assert!(decode_change(edit_change).is_ok());
    assert!(
        matches!(decode_change(&bad), Err(StoreError::InvalidData(_))),
        "a wrong checksum is refused"
    );

    let path = dir.path().join("b.db");
    let mut b = Store::open_with(
        &path,
        StoreOptions {
            compact_after: 1,
            ..Default::default()
        },
    )
    .unwrap();
    // The creation arrives, then the edit with a wrong checksum and a dependency that is not
    // there (the fuzzer's input: a mutated dependency hash), then a compaction.
    b.transaction(|tx| tx.apply_changes(id, std::slice::from_ref(create)))
        .unwrap();
    let mut orphan = bad.clone();
    orphan[12] ^= 0x01; // the first dependency hash; the checksum is still wrong
    assert!(
        b.transaction(|tx| tx.apply_changes(id, std::slice::from_ref(&orphan)))
            .is_err()
    );
    b.transaction(|tx| tx.compact(id)).unwrap();
    drop(b);
    let mut b = Store::open(&path).unwrap();
    assert!(b.verify().unwrap().is_empty());
    b.transaction(|tx| tx.apply_changes(id, std::slice::from_ref(edit_change)))
        .unwrap();
    assert_eq!(b.document(id).unwrap(), a.document(id).unwrap());
}

/// Regression (fuzz target `client_session`): downloaded changes filed under one document
/// id that write another id into the document's header were stored (a downloaded snapshot
/// is checked for this; changes were not). Projection rows are keyed by the header's id, so
/// they replaced the other document's rows — a customer showed another document's name —
/// and `verify` reported the document filed under the first id. Such changes are now
/// refused, as the relay refuses them on upload.
#[test]
fn changes_that_write_another_documents_id_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let id = add_customer(&mut a, "Real Co");
    let real: Vec<Vec<u8>> = a
        .outbox_batch(0, 100, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|c| c.bytes)
        .collect();
    // Another replica writes a customer claiming the same id.
    let mut c = Store::open(dir.path().join("c.db")).unwrap();
    c.transaction(|tx| {
        tx.create(id, |doc, id| {
            create_customer(
                doc,
                id,
                &NewCustomer {
                    org: "acme".into(),
                    scope: "north".into(),
                    name: "Impostor".into(),
                    ..Default::default()
                },
                &ctx(),
            )
        })
    })
    .unwrap();
    let impostor: Vec<Vec<u8>> = c
        .outbox_batch(0, 100, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|c| c.bytes)
        .collect();

    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    b.transaction(|tx| tx.apply_changes(id, &real)).unwrap();
    let elsewhere = DocId::new();
    let r = b.transaction(|tx| tx.apply_changes(elsewhere, &impostor));
    assert!(matches!(r, Err(StoreError::InvalidData(_))), "{r:?}");
    assert!(!b.contains(elsewhere).unwrap());
    let rows = b.query_json("SELECT name FROM customers", &[]).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "Real Co");
    assert!(b.verify().unwrap().is_empty());
    // Changes that do hold their own id still apply.
    let more = b.transaction(|tx| tx.apply_changes(id, &real)).unwrap();
    assert_eq!(more, 0);
}

/// Snapshots prepared on helper threads come back in order, each with its own outcome: a
/// garbage snapshot and one holding another document fail alone, the rest are stored with
/// their projections, and one merged into an existing document keeps both sides.
#[test]
fn prepared_snapshots_apply_in_order_with_their_own_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    let ids: Vec<DocId> = (0..150)
        .map(|i| add_customer(&mut a, &format!("Customer {i:03}")))
        .collect();
    // `b` already holds the first customer, with an edit of its own.
    let first = a.export(ids[0]).unwrap();
    b.transaction(|tx| tx.apply_snapshot(ids[0], &first).map(|_| ()))
        .unwrap();
    edit(
        &mut b,
        ids[0],
        Edit::Customer(CustomerEdit::Set(CustomerField::Industry, "mining".into())),
    );
    let mut snapshots: Vec<(DocId, Vec<u8>)> =
        ids.iter().map(|id| (*id, a.export(*id).unwrap())).collect();
    snapshots[7].1 = b"not a document".to_vec();
    snapshots[90].0 = DocId::new(); // a snapshot filed under the wrong id
    let jobs: Vec<(DocId, &[u8])> = snapshots
        .iter()
        .map(|(id, s)| (*id, s.as_slice()))
        .collect();
    let outcomes: Vec<bool> = with_prepared(&jobs, |queue| {
        b.transaction(|tx| {
            let mut out = Vec::new();
            for (id, bytes) in &jobs {
                let r = queue.take_next().unwrap().and_then(|mut p| {
                    let r = tx.apply_prepared_snapshot(*id, bytes, &mut p);
                    queue.discard(p);
                    r
                });
                out.push(r.is_ok());
            }
            assert!(queue.take_next().is_none(), "every job was taken once");
            Ok(out)
        })
    })
    .unwrap();
    let failed: Vec<usize> = (0..outcomes.len()).filter(|i| !outcomes[*i]).collect();
    assert_eq!(failed, vec![7, 90]);
    assert_eq!(b.doc_count().unwrap(), 148);
    let rows = b
        .query_json("SELECT name FROM customers ORDER BY name", &[])
        .unwrap();
    assert_eq!(rows.len(), 148);
    assert_eq!(rows[0]["name"], "Customer 000");
    assert_eq!(rows[147]["name"], "Customer 149");
    let Ok(Document::Customer(c)) = b.document(ids[0]) else {
        panic!("the first customer is there")
    };
    assert_eq!(c.industry.as_deref(), Some("mining"), "local edit kept");
    assert!(b.verify().unwrap().is_empty());
}

#[test]
fn a_local_edit_cannot_grow_a_document_past_the_relays_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("r.db")).unwrap();
    let id = add_customer(&mut store, "Big Notes Co");
    // Incompressible notes of 1 MiB each: the ninth would take the document past 8 MiB.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut note = || {
        (0..1 << 20)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b'a' + (seed % 26) as u8)
            })
            .collect::<String>()
    };
    let mut added = 0;
    let err = loop {
        let text = note();
        match store.edit(id, |doc| {
            apply_edit(
                doc,
                &Edit::Customer(CustomerEdit::AddNote(format!("n{added}"), text)),
                &ctx(),
            )
        }) {
            Ok(_) => added += 1,
            Err(e) => break e,
        }
        assert!(added < 12, "never refused");
    };
    assert_eq!(added, 7, "{err}");
    assert!(
        matches!(&err, StoreError::Budget(r) if r.contains("over budget")),
        "{err}"
    );
    // The document is as it was before the refused edit, and still edits.
    let doc = store.document(id).unwrap();
    let Document::Customer(c) = doc else {
        panic!("a customer")
    };
    assert_eq!(c.notes.len(), 7);
    edit(
        &mut store,
        id,
        Edit::Customer(CustomerEdit::Set(CustomerField::Industry, "mining".into())),
    );
}

#[test]
fn a_replaced_document_keeps_edits_it_cannot_place_in_the_quarantine() {
    use automerge::transaction::Transactable;
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("r.db")).unwrap();
    let id = add_customer(&mut store, "Big Co");
    store
        .edit(id, |doc| {
            doc.put_object(automerge::ROOT, "extra", automerge::ObjType::Map)?;
            Ok(())
        })
        .unwrap();
    let acked = store.heads(id).unwrap();
    let all: Vec<ChangeHash> = store
        .automerge(id)
        .unwrap()
        .get_changes(&[])
        .iter()
        .map(|c| c.hash())
        .collect();
    store.transaction(|tx| tx.ack(&all)).unwrap();
    // The relay trims the acknowledged state, leaving `extra` out, while this replica holds
    // a rename and a write into `extra` it has not sent.
    let relay_copy = store.automerge(id).unwrap();
    let mut trimmed = model::rewrite::rewrite(
        &relay_copy,
        ActorId::random(),
        &[model::rewrite::parse_path("extra")],
    )
    .unwrap();
    edit(
        &mut store,
        id,
        Edit::Customer(CustomerEdit::Set(
            CustomerField::Name,
            "Big Co Renamed".into(),
        )),
    );
    store
        .edit(id, |doc| {
            let extra = model::am::get_map(doc, &automerge::ROOT, "extra").unwrap();
            doc.put(&extra, "k", "v")?;
            Ok(())
        })
        .unwrap();
    assert_ne!(store.heads(id).unwrap(), acked);
    let bytes = trimmed.save();
    let mut prepared = prepare_snapshot(id, &bytes).unwrap();
    let done = store
        .transaction(|tx| tx.replace_document(id, &bytes, &mut prepared))
        .unwrap();
    assert_eq!(
        done,
        Replaced {
            carried: 0,
            quarantined: 2
        }
    );
    assert_eq!(store.outbox_len().unwrap(), 0);
    let q = store.quarantine().unwrap();
    assert_eq!(q.len(), 2);
    assert!(q[0].reason.contains("/extra"), "{q:?}");
    assert_eq!(
        store.heads(id).unwrap(),
        trimmed.get_heads(),
        "the new history"
    );
    let Document::Customer(c) = store.document(id).unwrap() else {
        panic!("a customer");
    };
    assert_eq!(
        c.name, "Big Co",
        "the rename waits in the quarantine with the rest"
    );
    // The replica reopens on the new history.
    drop(store);
    let mut store = Store::open(dir.path().join("r.db")).unwrap();
    assert_eq!(store.heads(id).unwrap(), trimmed.get_heads());
    assert!(store.verify().unwrap().is_empty());
}

/// A received change that makes no object is projected without walking the document's
/// nesting again (it cannot deepen it), but only when it is all that is applied: a change
/// that makes objects, or one that arrives before the change it depends on (automerge applies
/// both once the second is there), is walked, and a document nested past the bound is not
/// projected however its changes arrive.
#[test]
fn only_changes_that_make_no_object_skip_the_nesting_walk() {
    use automerge::transaction::Transactable;
    use automerge::{ObjType, ROOT};
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let id = add_customer(&mut a, "Deep Co");
    let create: Vec<Vec<u8>> = a
        .outbox_batch(0, 100, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|c| c.bytes)
        .collect();
    let name = |s: &Store| -> Option<String> {
        s.reader()
            .query_row(
                "SELECT name FROM customers WHERE id = ?1",
                [id.to_string()],
                |r| r.get(0),
            )
            .ok()
    };
    // The author's copy: a plain rename, then maps nested one level past the bound.
    let mut doc = a.automerge(id).unwrap();
    let base = doc.get_heads();
    doc.put(ROOT, "name", "Deep Co Ltd").unwrap();
    doc.commit();
    let renamed = doc.get_heads();
    let mut obj = doc.put_object(ROOT, "nested", ObjType::Map).unwrap();
    for _ in 0..crate::budget::MAX_NESTING {
        obj = doc.put_object(&obj, "n", ObjType::Map).unwrap();
    }
    doc.put(ROOT, "name", "Deeper Co").unwrap();
    doc.commit();
    let rename = doc.get_changes(&base).remove(0).raw_bytes().to_vec();
    let deepen = doc.get_changes(&renamed).remove(0).raw_bytes().to_vec();

    for order in ["in order", "out of order"] {
        let mut b = Store::open(dir.path().join(format!("b {order}.db"))).unwrap();
        b.transaction(|tx| tx.apply_changes(id, &create)).unwrap();
        assert_eq!(name(&b).as_deref(), Some("Deep Co"));
        let before_deep = if order == "in order" {
            // The rename alone: projected (through the skipped walk).
            b.transaction(|tx| tx.apply_changes(id, std::slice::from_ref(&rename)))
                .unwrap();
            assert_eq!(name(&b).as_deref(), Some("Deep Co Ltd"));
            b.transaction(|tx| tx.apply_changes(id, std::slice::from_ref(&deepen)))
                .unwrap();
            "Deep Co Ltd"
        } else {
            // The deep change first, then the rename it depends on, in one batch: the
            // rename makes no object, but automerge applies the deep change with it.
            b.transaction(|tx| tx.apply_changes(id, &[deepen.clone(), rename.clone()]))
                .unwrap();
            "Deep Co"
        };
        // The deep document is not read (its rename is not projected), and reads as damaged.
        assert_eq!(name(&b).as_deref(), Some(before_deep), "{order}");
        assert!(b.document(id).is_err(), "{order}");
    }
}

#[test]
fn a_refused_creation_still_says_what_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("a.db")).unwrap();
    let id = add_customer(&mut store, "Refused Mining Co");
    assert_eq!(
        store.quarantined_document(id).unwrap(),
        None,
        "nothing refused yet"
    );
    let batch = store.outbox_batch(0, 100, 1 << 20).unwrap();
    store
        .transaction(|tx| {
            for c in &batch {
                tx.quarantine(&c.hash, "outside the device's scopes")?;
            }
            Ok(())
        })
        .unwrap();
    match store.quarantined_document(id).unwrap() {
        Some(Document::Customer(c)) => assert_eq!(c.name, "Refused Mining Co"),
        other => panic!("{other:?}"),
    }
}

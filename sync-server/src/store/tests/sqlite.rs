//! The embedded SQLite store: uploads, paging, moves and their grace period, devices and
//! tokens, reopening, foreign files, the cache and the audit trail.

use super::*;

#[test]
fn append_stores_durably_and_is_idempotent() {
    let (_d, mut r) = relay();
    let mut a = device(Role::Rep, &["north"]);
    let c1 = a.customer("Zeta Mining", "north");
    a.customer("Alpha Quarry", "north");
    a.edit(
        c1,
        CustomerEdit::Set(CustomerField::Industry, "mining".into()),
    );
    let up = a.outbox();
    assert_eq!(up.len(), 3);
    let mut live = r.subscribe();
    let out = r.append(&a.info, &up, false).unwrap();
    assert_eq!(stored(&out), 3, "{out:?}");
    assert_eq!(r.high_seq().unwrap(), 3);
    assert!(live.has_changed().unwrap());
    assert_eq!(*live.borrow_and_update(), 3);
    assert_eq!(count(&r, "SELECT count(*) FROM changes"), 3);
    assert_eq!(count(&r, "SELECT count(*) FROM audit"), 3);
    assert_eq!(count(&r, "SELECT count(*) FROM docs"), 2);
    // Re-sending the whole batch (a lost ack) stores nothing new and is acknowledged again.
    let again = r.append(&a.info, &up, false).unwrap();
    assert_eq!(stored(&again), 3);
    assert_eq!(r.high_seq().unwrap(), 3);
    assert!(!live.has_changed().unwrap(), "no new entries, no wake-up");
    // A duplicate inside one batch too.
    let dup = vec![up[0].clone(), up[0].clone()];
    assert_eq!(stored(&r.append(&a.info, &dup, false).unwrap()), 2);
    assert_eq!(r.high_seq().unwrap(), 3);
    // The relay's copy of the document equals the replica's.
    let (snaps, more) = r
        .read_snapshots("north", None, usize::MAX, Lane::All)
        .unwrap();
    assert!(!more);
    let relay_copy = snaps.iter().find(|(id, _)| *id == c1).unwrap();
    let mut doc = load_snapshot(&relay_copy.1).unwrap();
    assert_eq!(doc.get_heads(), a.store.heads(c1).unwrap());
    // The audit trail is append-only.
    let w = lock(&r.inner.writer);
    assert!(w.conn.execute("DELETE FROM audit", []).is_err());
    assert!(w.conn.execute("UPDATE audit SET at = 0", []).is_err());
}

#[test]
fn missing_dependencies_are_refused_for_retry_then_accepted() {
    let (_d, mut r) = relay();
    let mut a = device(Role::Rep, &["north"]);
    let c = a.customer("Later Co", "north");
    a.edit(c, CustomerEdit::AddPhone("+86 138 0000 0002".into()));
    let up = a.outbox();
    let out = r.append(&a.info, &up[1..], false).unwrap();
    let rej = refusals(&out);
    assert_eq!(rej.len(), 1);
    assert!(rej[0].retry, "{:?}", rej[0]);
    assert!(rej[0].reason.contains("dependency"), "{}", rej[0].reason);
    assert_eq!(
        rej[0].hash,
        a.store.outbox_batch(1, 1, usize::MAX).unwrap()[0].hash.0
    );
    assert_eq!(r.high_seq().unwrap(), 0);
    // Both in order, in one batch: the second sees the first.
    let out = r.append(&a.info, &up, false).unwrap();
    assert_eq!(stored(&out), 2, "{out:?}");
}

#[test]
fn forged_authors_and_garbage_are_refused_permanently() {
    let (_d, mut r) = relay();
    let mut a = device(Role::Rep, &["north"]);
    let b = device(Role::Rep, &["north"]);
    a.customer("Mine", "north");
    let up = a.outbox();
    // b uploads a's change as its own.
    let out = r.append(&b.info, &up, false).unwrap();
    let rej = refusals(&out);
    assert_eq!(rej.len(), 1);
    assert!(!rej[0].retry);
    assert!(
        rej[0].reason.contains("only that device may upload it"),
        "{}",
        rej[0].reason
    );
    // A repair upload grants nothing: still refused, also once a is enrolled.
    let out = r.append(&b.info, &up, true).unwrap();
    assert_eq!(refusals(&out).len(), 1);
    r.enrol_device(Some(a.info.device_id), "a", Role::Rep, &["north".into()])
        .unwrap();
    let out = r.append(&b.info, &up, true).unwrap();
    assert_eq!(refusals(&out).len(), 1, "{out:?}");
    // A change the relay held before a restore (vouched for, with its first uploader's role)
    // may come back from any device.
    let hash = decode_change(&up[0].bytes).unwrap().hash();
    r.write(|tx| {
        tx.execute(
            "INSERT INTO vouched (hash, device, role) VALUES (?1, ?2, 'rep')",
            params![hash.0.to_vec(), a.info.device_id.as_bytes().to_vec()],
        )?;
        Ok(())
    })
    .unwrap();
    let out = r.append(&b.info, &up, true).unwrap();
    assert_eq!(stored(&out), 1, "{out:?}");
    // Garbage and a change filed under the wrong document.
    let out = r
        .append(
            &a.info,
            &[
                UploadChange {
                    doc_id: DocId::new(),
                    bytes: vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3],
                },
                UploadChange {
                    doc_id: DocId::new(),
                    bytes: up[0].bytes.clone(),
                },
            ],
            false,
        )
        .unwrap();
    let rej = refusals(&out);
    assert_eq!(rej.len(), 2);
    assert!(rej.iter().all(|r| !r.retry));
    assert_eq!(r.high_seq().unwrap(), 1);
}

#[test]
fn writes_outside_the_senders_scopes_or_role_are_refused() {
    let (_d, mut r) = relay();
    let mut a = device(Role::Rep, &["north"]);
    a.customer("Southern Co", "south");
    let out = r.append(&a.info, &a.outbox(), false).unwrap();
    let rej = refusals(&out);
    assert_eq!(rej.len(), 1);
    assert!(rej[0].reason.contains("outside"), "{}", rej[0].reason);
    assert!(!rej[0].retry);
    assert_eq!(r.high_seq().unwrap(), 0);
    // A rep seeing both scopes still may not move a customer (role-owned field), even if its
    // laptop claims to be a manager.
    let mut b = device(Role::Rep, &["north", "south"]);
    let c = b.customer("Northern Co", "north");
    assert_eq!(stored(&r.append(&b.info, &b.outbox(), false).unwrap()), 1);
    b.edit_as(c, CustomerEdit::SetScope("south".into()), Role::Manager);
    let up = b.outbox();
    let out = r.append(&b.info, &up[1..], false).unwrap();
    let rej = refusals(&out);
    assert_eq!(rej.len(), 1);
    assert!(
        rej[0].reason.contains("may not change scope"),
        "{}",
        rej[0].reason
    );
    assert_eq!(r.high_seq().unwrap(), 1);
}

/// Runs one client session against the store until nothing more is sent, through the codec.
fn sync(
    store: &mut Store,
    relay: &mut impl RelayStorage,
) -> fieldsync_core::protocol::SessionStats {
    use fieldsync_core::protocol::drive::sync_in_memory;
    use fieldsync_core::protocol::{ClientConfig, RelayLimits};
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

#[test]
fn replicas_converge_through_the_sqlite_store_and_repair_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let open = Some(OpenEnrolment {
        scopes: vec!["*".into()],
        role: Role::Admin,
    });
    let mut r = relay_at(&dir.path().join("one.db"), open.clone());
    let mut a = device(Role::Admin, &["*"]);
    let mut b = device(Role::Admin, &["*"]);
    // Enough documents that the snapshot phase and the log take several batches.
    let ids: Vec<DocId> = (0..60)
        .map(|i| {
            a.customer(
                &format!("Customer {i} {}", "x".repeat(200)),
                if i % 2 == 0 { "north" } else { "south" },
            )
        })
        .collect();
    sync(&mut a.store, &mut r);
    assert_eq!(a.store.outbox_len().unwrap(), 0);
    let s = sync(&mut b.store, &mut r);
    assert!(s.batches > 1, "{s:?}");
    assert_eq!(b.store.doc_count().unwrap(), 60);
    for (i, id) in ids.iter().enumerate().take(10) {
        a.edit(
            *id,
            CustomerEdit::Set(CustomerField::Industry, format!("a{i}")),
        );
        b.edit(*id, CustomerEdit::AddPhone(format!("1390000{i}")));
    }
    sync(&mut b.store, &mut r);
    sync(&mut a.store, &mut r);
    sync(&mut b.store, &mut r);
    for id in &ids {
        assert_eq!(a.store.heads(*id).unwrap(), b.store.heads(*id).unwrap());
        assert_eq!(
            a.store.document(*id).unwrap(),
            b.store.document(*id).unwrap()
        );
    }
    // The relay loses its database: a new one has a new epoch, and the replicas repair it.
    let mut fresh = relay_at(&dir.path().join("two.db"), open);
    assert_ne!(fresh.epoch(), r.epoch());
    let s = sync(&mut a.store, &mut fresh);
    assert!(s.repaired > 0, "{s:?}");
    assert_eq!(fresh.status().unwrap().docs, 60);
    // A fresh relay held nothing before, so it vouches for no one: each device brings back
    // its own changes (b's phones came up in a's repair and were refused).
    let s = sync(&mut b.store, &mut fresh);
    assert!(s.repaired > 0, "{s:?}");
    let mut c = device(Role::Admin, &["*"]);
    sync(&mut c.store, &mut fresh);
    for id in &ids {
        assert_eq!(c.store.heads(*id).unwrap(), a.store.heads(*id).unwrap());
    }
}

#[test]
fn log_and_snapshot_paging_is_exact() {
    let (_d, mut r) = relay();
    let mut a = device(Role::Rep, &["north", "south"]);
    for i in 0..7 {
        a.customer(&format!("North {i}"), "north");
    }
    for i in 0..3 {
        a.customer(&format!("South {i}"), "south");
    }
    assert_eq!(stored(&r.append(&a.info, &a.outbox(), false).unwrap()), 10);
    let (all, more) = r.read_log("north", 0, usize::MAX, Lane::All).unwrap();
    assert!(!more);
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let sizes: Vec<usize> = all
        .iter()
        .map(|e| match &e.entry {
            Entry::Changes(c) => c[0].0.len() + ENTRY_OVERHEAD,
            other => panic!("{other:?}"),
        })
        .collect();
    // A budget that fits exactly the first three entries.
    let budget: usize = sizes[..3].iter().sum();
    let mut after = 0;
    let mut pages = Vec::new();
    loop {
        let (page, more) = r.read_log("north", after, budget, Lane::All).unwrap();
        assert!(!page.is_empty());
        after = page.last().unwrap().seq;
        pages.push(page.len());
        let rest = all.iter().filter(|e| e.seq > after).count();
        assert_eq!(more, rest > 0, "`more` is exact");
        if !more {
            break;
        }
    }
    assert_eq!(pages.iter().sum::<usize>(), 7);
    assert_eq!(pages[0], 3);
    // A budget below one entry still returns one.
    let (one, more) = r.read_log("north", 0, 1, Lane::All).unwrap();
    assert_eq!(one.len(), 1);
    assert!(more);
    // Nothing after the end; unknown scopes are empty; `*` sees everything.
    let high = r.high_seq().unwrap();
    assert_eq!(
        r.read_log("north", high, 1, Lane::All).unwrap(),
        (vec![], false)
    );
    assert_eq!(
        r.read_log("west", 0, usize::MAX, Lane::All).unwrap(),
        (vec![], false)
    );
    assert_eq!(
        r.read_log("*", 0, usize::MAX, Lane::All).unwrap().0.len(),
        10
    );
    // Snapshots: ordered by id, paged exactly.
    let (snaps, more) = r
        .read_snapshots("south", None, usize::MAX, Lane::All)
        .unwrap();
    assert!(!more);
    assert_eq!(snaps.len(), 3);
    assert!(snaps.windows(2).all(|w| w[0].0 < w[1].0));
    let budget = snaps[0].1.len() + ENTRY_OVERHEAD;
    let (p1, more1) = r.read_snapshots("south", None, budget, Lane::All).unwrap();
    assert_eq!((p1.len(), more1), (1, true));
    let (p2, more2) = r
        .read_snapshots("south", Some(p1[0].0), 1, Lane::All)
        .unwrap();
    assert_eq!((p2.len(), more2), (1, true));
    let (p3, more3) = r
        .read_snapshots("south", Some(p2[0].0), usize::MAX, Lane::All)
        .unwrap();
    assert_eq!((p3.len(), more3), (1, false));
    assert_eq!(
        r.read_snapshots("south", Some(p3[0].0), 1, Lane::All)
            .unwrap(),
        (vec![], false)
    );
    assert_eq!(
        r.read_snapshots("*", None, usize::MAX, Lane::All)
            .unwrap()
            .0
            .len(),
        10
    );
}

#[test]
fn a_scope_move_refiles_the_customer_and_its_visits() {
    let (_d, mut r) = relay();
    let mut rep = device(Role::Rep, &["north"]);
    let mut mgr = device(Role::Manager, &["north", "south"]);
    let cust = rep.customer("Moving Co", "north");
    let visit = rep.visit(cust, "north");
    let other = rep.customer("Staying Co", "north");
    assert_eq!(
        stored(&r.append(&rep.info, &rep.outbox(), false).unwrap()),
        3
    );
    let before = r.high_seq().unwrap();
    // A rep may not move a customer out of its scopes, whatever its laptop claims.
    rep.edit_as(cust, CustomerEdit::SetScope("south".into()), Role::Manager);
    let rep_move: Vec<UploadChange> = rep.outbox().split_off(3);
    let out = r.append(&rep.info, &rep_move, false).unwrap();
    assert_eq!(refusals(&out).len(), 1, "{out:?}");
    assert!(!refusals(&out)[0].retry);
    assert_eq!(r.high_seq().unwrap(), before);
    // The manager (who has the documents) moves it.
    mgr.receive(&r);
    mgr.edit(cust, CustomerEdit::SetScope("south".into()));
    let up = mgr.outbox();
    assert_eq!(up.len(), 1);
    assert_eq!(stored(&r.append(&mgr.info, &up, false).unwrap()), 1);
    // North: the customer and its visit leave.
    let (north, _) = r.read_log("north", before, usize::MAX, Lane::All).unwrap();
    let mut left: Vec<DocId> = north
        .iter()
        .map(|e| {
            assert_eq!(e.entry, Entry::Leave);
            e.doc_id
        })
        .collect();
    left.sort();
    assert_eq!(
        count(
            &r,
            "SELECT count(*) FROM log WHERE kind = 2 AND moved_to = 'south'"
        ),
        2
    );
    let mut expected = vec![cust, visit];
    expected.sort();
    assert_eq!(left, expected);
    // South: both enter as snapshots, then the change itself.
    let (south, more) = r.read_log("south", 0, usize::MAX, Lane::All).unwrap();
    assert!(!more);
    let kinds: Vec<(DocId, &str)> = south
        .iter()
        .map(|e| {
            (
                e.doc_id,
                match &e.entry {
                    Entry::Snapshot(_) => "snapshot",
                    Entry::Changes(_) => "changes",
                    Entry::Leave => "leave",
                    Entry::Replace(_) => "replace",
                },
            )
        })
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert!(kinds.contains(&(cust, "snapshot")));
    assert!(kinds.contains(&(visit, "snapshot")));
    assert_eq!(kinds[2], (cust, "changes"));
    // The entered snapshot already holds the move.
    let Entry::Snapshot(b) = &south.iter().find(|e| e.doc_id == cust).unwrap().entry else {
        unreachable!()
    };
    let doc = load_snapshot(&b.0).unwrap();
    let moved = fieldsync_core::model::read_document(&doc).unwrap();
    assert_eq!(moved.header().scope, "south");
    // Snapshot reads follow the new filing; `*` readers get only the change.
    let south_docs: Vec<DocId> = r
        .read_snapshots("south", None, usize::MAX, Lane::All)
        .unwrap()
        .0
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(south_docs.len(), 2);
    let north_docs = r
        .read_snapshots("north", None, usize::MAX, Lane::All)
        .unwrap()
        .0;
    assert_eq!(north_docs.len(), 1);
    assert_eq!(north_docs[0].0, other);
    let (star, _) = r.read_log("*", before, usize::MAX, Lane::All).unwrap();
    assert_eq!(star.len(), 1);
    assert!(matches!(star[0].entry, Entry::Changes(_)));
    // A new visit for the moved customer is filed under the customer's new scope.
    mgr.receive(&r);
    let v2 = mgr.visit(cust, "north");
    let up: Vec<UploadChange> = mgr
        .outbox()
        .into_iter()
        .filter(|c| c.doc_id == v2)
        .collect();
    assert_eq!(stored(&r.append(&mgr.info, &up, false).unwrap()), 1);
    let (south, _) = r.read_log("south", 0, usize::MAX, Lane::All).unwrap();
    assert_eq!(south.last().unwrap().doc_id, v2);
}

#[test]
fn missing_reports_what_the_relay_lacks() {
    let (_d, mut r) = relay();
    let mut a = device(Role::Rep, &["north"]);
    let known = a.customer("Known", "north");
    let up = a.outbox();
    assert_eq!(stored(&r.append(&a.info, &up, false).unwrap()), 1);
    let relay_heads: Vec<Hash> = a.store.heads(known).unwrap().iter().map(|h| h.0).collect();
    a.edit(known, CustomerEdit::AddPhone("+1 555 0100".into()));
    let unknown = a.customer("Unknown", "north");
    let heads = |id| {
        a.store
            .heads(id)
            .unwrap()
            .iter()
            .map(|h| h.0)
            .collect::<Vec<_>>()
    };
    let res = r
        .missing(&[
            (known, relay_heads.clone()),
            (known, heads(known)),
            (unknown, heads(unknown)),
        ])
        .unwrap();
    assert_eq!(
        res,
        vec![
            Lack::Nothing {
                scope: "north".into()
            },
            Lack::Changes {
                scope: "north".into(),
                heads: relay_heads
            },
            Lack::Document
        ]
    );
}

#[test]
fn devices_authenticate_by_secret_and_revocation_is_immediate() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = relay_at(&dir.path().join(DB_FILE), None);
    let mut a = device(Role::Rep, &["north"]);
    let id = a.info.device_id;
    assert_eq!(r.authenticate(id, None).unwrap(), None, "closed relay");
    let e = r
        .enrol_device(Some(id), "Rep A laptop", Role::Rep, &["north".into()])
        .unwrap();
    assert_eq!(e.device_id, id);
    let info = r.authenticate(id, Some(&e.secret)).unwrap().unwrap();
    assert_eq!(info.role, Role::Rep);
    assert_eq!(info.scopes, vec!["north".to_string()]);
    assert_eq!(info.name, "Rep A laptop");
    assert_eq!(r.authenticate(id, Some("wrong")).unwrap(), None);
    assert_eq!(r.authenticate(id, None).unwrap(), None);
    r.touch_device(id).unwrap();
    assert!(r.devices().unwrap()[0].last_seen.is_some());
    // Revoked: refused at the handshake and for uploads of a session still open.
    a.customer("After revocation", "north");
    assert!(r.revoke_device(id).unwrap());
    assert!(!r.revoke_device(id).unwrap());
    assert_eq!(r.authenticate(id, Some(&e.secret)).unwrap(), None);
    let out = r.append(&info, &a.outbox(), false).unwrap();
    assert_eq!(refusals(&out)[0].reason, "device revoked");
    assert_eq!(r.high_seq().unwrap(), 0);
    let s = r.status().unwrap();
    assert_eq!((s.devices, s.revoked_devices), (1, 1));
    assert!(r.enrol_device(None, "x", Role::Rep, &[]).is_err());
}

#[test]
fn open_enrolment_registers_unknown_devices_but_not_over_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay_at(
        &dir.path().join(DB_FILE),
        Some(OpenEnrolment {
            scopes: vec!["north".into()],
            role: Role::Manager,
        }),
    );
    let newcomer = Uuid::now_v7();
    let info = r.authenticate(newcomer, None).unwrap().unwrap();
    assert_eq!(info.role, Role::Manager);
    assert_eq!(info.scopes, vec!["north".to_string()]);
    let devs = r.devices().unwrap();
    assert_eq!(devs.len(), 1);
    assert!(!devs[0].enrolled);
    assert!(devs[0].last_seen.is_some());
    // Again: the same row.
    assert_eq!(
        r.authenticate(newcomer, Some("anything")).unwrap(),
        Some(info)
    );
    assert_eq!(r.devices().unwrap().len(), 1);
    // An enrolled device still needs its secret in open mode.
    let e = r
        .enrol_device(None, "enrolled", Role::Director, &["*".into()])
        .unwrap();
    assert_eq!(r.authenticate(e.device_id, None).unwrap(), None);
    assert_eq!(
        r.authenticate(e.device_id, Some(&e.secret))
            .unwrap()
            .unwrap()
            .role,
        Role::Director
    );
    // Revoked open devices stay out.
    r.revoke_device(newcomer).unwrap();
    assert_eq!(r.authenticate(newcomer, None).unwrap(), None);
}

#[test]
fn reopening_keeps_the_log_documents_devices_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let mut a = device(Role::Rep, &["north"]);
    a.customer("Durable", "north");
    let (epoch, log, snaps, secret) = {
        let mut r = relay_at(&path, None);
        assert_eq!(stored(&r.append(&a.info, &a.outbox(), false).unwrap()), 1);
        let e = r
            .enrol_device(Some(a.info.device_id), "a", Role::Rep, &["north".into()])
            .unwrap();
        (
            r.epoch(),
            r.read_log("north", 0, usize::MAX, Lane::All).unwrap(),
            r.read_snapshots("north", None, usize::MAX, Lane::All)
                .unwrap(),
            e.secret,
        )
    };
    let mut r = relay_at(&path, None);
    assert_eq!(r.epoch(), epoch);
    assert_eq!(r.high_seq().unwrap(), 1);
    assert_eq!(r.read_log("north", 0, usize::MAX, Lane::All).unwrap(), log);
    assert_eq!(
        r.read_snapshots("north", None, usize::MAX, Lane::All)
            .unwrap(),
        snaps
    );
    assert!(
        r.authenticate(a.info.device_id, Some(&secret))
            .unwrap()
            .is_some()
    );
    // Sequence numbers continue, idempotence survives the restart.
    assert_eq!(stored(&r.append(&a.info, &a.outbox(), false).unwrap()), 1);
    assert_eq!(r.high_seq().unwrap(), 1);
    a.edit(
        log.0[0].doc_id,
        CustomerEdit::Set(CustomerField::Industry, "x".into()),
    );
    let up = a.outbox();
    assert_eq!(stored(&r.append(&a.info, &up[1..], false).unwrap()), 1);
    assert_eq!(r.high_seq().unwrap(), 2);
    // Another relay database has another epoch.
    let other = relay_at(&dir.path().join("other.db"), None);
    assert_ne!(other.epoch(), epoch);
}

#[test]
fn foreign_newer_and_non_sqlite_files_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    // Not SQLite at all.
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, vec![b'x'; 4096]).unwrap();
    let e = SqliteRelayStore::open(&text, RelayStoreOptions::default()).unwrap_err();
    assert!(matches!(e, RelayStoreError::NotADatabase(..)), "{e}");
    assert_eq!(std::fs::read(&text).unwrap(), vec![b'x'; 4096]);
    // Another application's database.
    let foreign = dir.path().join("foreign.db");
    {
        let c = Connection::open(&foreign).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let e = SqliteRelayStore::open(&foreign, RelayStoreOptions::default()).unwrap_err();
    assert!(matches!(e, RelayStoreError::Foreign { .. }), "{e}");
    let c = Connection::open(&foreign).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "nothing was added");
    // A client replica is not a relay database.
    let replica = dir.path().join("replica.db");
    drop(Store::open(&replica).unwrap());
    let e = SqliteRelayStore::open(&replica, RelayStoreOptions::default()).unwrap_err();
    assert!(matches!(e, RelayStoreError::Foreign { .. }), "{e}");
    // A relay database from a newer build.
    let newer = dir.path().join("newer.db");
    drop(relay_at(&newer, None));
    {
        let c = Connection::open(&newer).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let e = SqliteRelayStore::open(&newer, RelayStoreOptions::default()).unwrap_err();
    assert!(
        matches!(e, RelayStoreError::SchemaTooNew { found, .. } if found == SCHEMA_VERSION + 1),
        "{e}"
    );
}

#[test]
fn the_document_cache_stays_bounded() {
    let (_d, mut r) = relay();
    let mut a = device(Role::Rep, &["north"]);
    let ids: Vec<DocId> = (0..10)
        .map(|i| a.customer(&format!("c{i}"), "north"))
        .collect();
    assert_eq!(stored(&r.append(&a.info, &a.outbox(), false).unwrap()), 10);
    assert!(r.cached_docs() <= 4, "{}", r.cached_docs());
    // Documents evicted from the cache reload from their snapshots for the next write.
    for id in &ids {
        a.edit(*id, CustomerEdit::AddPhone("+1 555 0199".into()));
    }
    let up = a.outbox();
    assert_eq!(stored(&r.append(&a.info, &up[10..], false).unwrap()), 10);
    assert!(r.cached_docs() <= 4);
    assert_eq!(r.high_seq().unwrap(), 20);
}

#[test]
fn enrolment_tokens_bind_once_expire_and_never_take_over_a_known_device() {
    let (_d, r) = relay();
    let scopes = vec!["north".to_string()];
    let day = Duration::from_secs(86_400);
    let cred = "ab".repeat(32);
    let a = Uuid::now_v7();
    let t = r
        .create_enrolment("A laptop", Role::Manager, &scopes, None, day)
        .unwrap();
    assert_eq!(t.len(), 32);
    assert!(r.redeem(a, &t, "short").unwrap().is_err());
    let info = r.redeem(a, &t, &cred).unwrap().unwrap();
    assert_eq!((info.role, info.name.as_str()), (Role::Manager, "A laptop"));
    // The answer was lost: the same device with the same credential again is fine (any case).
    assert_eq!(
        r.redeem(a, &t.to_uppercase(), &cred).unwrap(),
        Ok(info.clone())
    );
    // Anything else with a used token is refused.
    let e = r.redeem(a, &t, &"cd".repeat(32)).unwrap().unwrap_err();
    assert!(e.contains("already used"), "{e}");
    let e = r.redeem(Uuid::now_v7(), &t, &cred).unwrap().unwrap_err();
    assert!(e.contains("already used"), "{e}");
    assert!(r.redeem(a, &"00".repeat(16), &cred).unwrap().is_err());
    assert_eq!(r.authenticate(a, Some(&cred)).unwrap(), Some(info.clone()));
    // A fresh token cannot take over an enrolled (or revoked) device id...
    let t2 = r
        .create_enrolment("B laptop", Role::Admin, &scopes, None, day)
        .unwrap();
    let e = r.redeem(a, &t2, &"ef".repeat(32)).unwrap().unwrap_err();
    assert!(e.contains("--device-id"), "{e}");
    assert_eq!(r.authenticate(a, Some(&cred)).unwrap(), Some(info));
    // ...but one made for that id re-enrols it, lifting a revocation.
    r.revoke(&a.to_string()).unwrap();
    assert_eq!(r.authenticate(a, Some(&cred)).unwrap(), None);
    let t3 = r
        .create_enrolment("A laptop again", Role::Rep, &scopes, Some(a), day)
        .unwrap();
    let e = r.redeem(Uuid::now_v7(), &t3, &cred).unwrap().unwrap_err();
    assert!(e.contains("another device"), "{e}");
    let again = r.redeem(a, &t3, &"12".repeat(32)).unwrap().unwrap();
    assert_eq!(again.role, Role::Rep);
    assert_eq!(r.authenticate(a, Some(&cred)).unwrap(), None);
    assert!(r.authenticate(a, Some(&"12".repeat(32))).unwrap().is_some());
    // Expired tokens are refused.
    let t4 = r
        .create_enrolment("late", Role::Rep, &scopes, None, Duration::ZERO)
        .unwrap();
    let e = r.redeem(Uuid::now_v7(), &t4, &cred).unwrap().unwrap_err();
    assert!(e.contains("expired"), "{e}");
    assert!(
        !r.enrolments()
            .unwrap()
            .iter()
            .any(|e| e.name == "late" && e.is_pending(fieldsync_core::ids::now_millis()))
    );
    // Bad requests.
    assert!(
        r.create_enrolment(" ", Role::Rep, &scopes, None, day)
            .is_err()
    );
    assert!(r.create_enrolment("x", Role::Rep, &[], None, day).is_err());
    assert!(r.revoke("nobody").is_err());
}

#[test]
fn revocations_and_enrolments_bump_the_device_generation() {
    let (_d, r) = relay();
    let mut seen = r.subscribe_devices();
    let g0 = *seen.borrow_and_update();
    let e = r
        .enrol_device(None, "dup", Role::Rep, &["north".into()])
        .unwrap();
    let e2 = r
        .enrol_device(None, "dup", Role::Rep, &["north".into()])
        .unwrap();
    assert!(seen.has_changed().unwrap());
    let g1 = *seen.borrow_and_update();
    assert!(g1 > g0);
    // A name revokes every active device with it.
    let out = r.revoke("dup").unwrap();
    assert_eq!(out.devices.len(), 2);
    assert!(out.devices.contains(&e.device_id) && out.devices.contains(&e2.device_id));
    assert!(*seen.borrow_and_update() > g1);
    assert_eq!(r.device_grant(e.device_id).unwrap(), None);
    // Another handle on the same file (another process) notices on its next poll.
    let other = SqliteRelayStore::open(r.path(), RelayStoreOptions::default()).unwrap();
    let mut watch = other.subscribe_devices();
    watch.borrow_and_update();
    r.create_enrolment(
        "x",
        Role::Rep,
        &["north".into()],
        None,
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(!watch.has_changed().unwrap());
    other.poll_devices().unwrap();
    assert!(watch.has_changed().unwrap());
}

#[test]
fn changes_written_before_a_move_are_accepted_only_within_the_grace_period() {
    for grace in [Duration::from_secs(86_400), Duration::ZERO] {
        let dir = tempfile::tempdir().unwrap();
        let r = SqliteRelayStore::open(
            dir.path().join(DB_FILE),
            RelayStoreOptions {
                move_grace: grace,
                ..RelayStoreOptions::default()
            },
        )
        .unwrap();
        let mut rep = device(Role::Rep, &["north"]);
        let mut mgr = device(Role::Manager, &["north", "south"]);
        let cust = rep.customer("Moving Co", "north");
        assert_eq!(
            stored(&r.append_changes(&rep.info, &rep.outbox(), false).unwrap()),
            1
        );
        // Offline, the rep edits it and logs a new visit.
        rep.edit(
            cust,
            CustomerEdit::Set(CustomerField::Industry, "mining".into()),
        );
        let visit = rep.visit(cust, "north");
        let pending: Vec<UploadChange> = rep.outbox().split_off(1);
        assert_eq!(pending.len(), 2);
        mgr.receive(&r);
        mgr.edit(cust, CustomerEdit::SetScope("south".into()));
        assert_eq!(
            stored(&r.append_changes(&mgr.info, &mgr.outbox(), false).unwrap()),
            1
        );
        let out = r.append_changes(&rep.info, &pending, false).unwrap();
        if grace.is_zero() {
            // Answered as for a document the relay does not have (no oracle): its history
            // is "missing", and nothing names the scope it went to.
            assert_eq!(refusals(&out).len(), 2, "{out:?}");
            let out = refusals(&out);
            assert!(out[0].reason.contains("is not on the relay yet"), "{out:?}");
            assert!(out[1].reason.contains("customer is outside"), "{out:?}");
            assert!(out.iter().all(|r| !r.reason.contains("south")), "{out:?}");
            continue;
        }
        assert_eq!(stored(&out), 2, "{out:?}");
        // Filed under the new scope.
        let (south, _) = r.read_log("south", 0, usize::MAX, Lane::All).unwrap();
        assert!(south.iter().any(|e| e.doc_id == visit));
        assert_eq!(south.last().unwrap().doc_id, visit);
        // A change built on the move (the rep received it) is not excused.
        rep.receive(&r);
        rep.edit(
            cust,
            CustomerEdit::Set(CustomerField::Industry, "coal".into()),
        );
        let after: Vec<UploadChange> = rep.outbox().split_off(3);
        assert_eq!(after.len(), 1);
        let out = r.append_changes(&rep.info, &after, false).unwrap();
        assert_eq!(refusals(&out).len(), 1, "{out:?}");
    }
}

/// Found by the deterministic simulation: a visit logged offline for a customer that a
/// manager then moves out of the rep's territory is accepted under the grace period and filed
/// in the new territory — but it was never filed in the rep's, so no `Leave` there told the
/// rep's replica to drop it, and the replica kept a document outside its scopes for ever.
#[test]
fn a_new_document_accepted_after_its_customer_moved_leaves_its_authors_scope() {
    let (_d, r) = relay();
    let mut rep = device(Role::Rep, &["north"]);
    let mut mgr = device(Role::Manager, &["north", "south"]);
    let cust = rep.customer("Moving Co", "north");
    assert_eq!(
        stored(&r.append_changes(&rep.info, &rep.outbox(), false).unwrap()),
        1
    );
    let visit = rep.visit(cust, "north");
    let pending: Vec<UploadChange> = rep.outbox().split_off(1);
    mgr.receive(&r);
    mgr.edit(cust, CustomerEdit::SetScope("south".into()));
    assert_eq!(
        stored(&r.append_changes(&mgr.info, &mgr.outbox(), false).unwrap()),
        1
    );
    let high = r.high_seq().unwrap();
    let out = r.append_changes(&rep.info, &pending, false).unwrap();
    assert_eq!(stored(&out), 1, "{out:?}");
    let (north, _) = r.read_log("north", high, usize::MAX, Lane::All).unwrap();
    assert!(
        north.iter().any(|e| e.doc_id == visit
            && e.entry == Entry::Leave
            && e.moved_to.as_deref() == Some("south")),
        "{north:?}"
    );
    // The rep's replica applies it as any Leave: the visit goes once its change is acknowledged.
    let hashes: Vec<_> = rep
        .store
        .outbox_batch(0, 100, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|c| c.hash)
        .collect();
    rep.store
        .transaction(|tx| {
            tx.evict(visit)?;
            tx.ack(&hashes)?;
            tx.evict_acknowledged()
        })
        .unwrap();
    assert!(!rep.store.contains(visit).unwrap());
    // A new document in the device's own scopes gets no such entry.
    let high = r.high_seq().unwrap();
    let own = rep.customer("Staying Co", "north");
    r.append_changes(&rep.info, &rep.outbox(), false).unwrap();
    let (north, _) = r.read_log("north", high, usize::MAX, Lane::All).unwrap();
    assert!(
        north
            .iter()
            .all(|e| e.doc_id == own && e.entry != Entry::Leave)
    );
}

/// Found by the deterministic simulation. A rep created a customer, uploaded it, and a
/// manager moved it to another territory before the rep's first download: that download
/// starts with snapshots of the rep's scope and never reads the Leave written before, so the
/// rep kept the customer for ever. The relay now ends a scope's snapshots with a Leave for each
/// document that left the scope and is now outside the device's scopes. And a Leave names
/// where the document is *now*: a device that reads the old scope's Leave after the document
/// came back (or after its snapshot in another scope it sees) keeps it.
#[test]
fn fresh_downloads_hear_of_earlier_departures_and_leaves_name_where_a_document_is_now() {
    use fieldsync_core::protocol::messages::MAGIC;
    use fieldsync_core::protocol::{
        Cursor, Message, PROTOCOL_VERSION, RelayLimits, RelaySession, ScopeCursor,
    };
    let (_d, r) = relay();
    let mut rep = device(Role::Rep, &["north"]);
    let mut mgr = device(Role::Manager, &["north", "south"]);
    let secret = r
        .enrol_device(
            Some(rep.info.device_id),
            "rep",
            Role::Rep,
            &["north".into()],
        )
        .unwrap();
    let cust = rep.customer("Moving Co", "north");
    r.append_changes(&rep.info, &rep.outbox(), false).unwrap();
    mgr.receive(&r);
    mgr.edit(cust, CustomerEdit::SetScope("south".into()));
    r.append_changes(&mgr.info, &mgr.outbox(), false).unwrap();
    let high = r.high_seq().unwrap();
    assert_eq!(
        r.departures("north", high).unwrap(),
        vec![(cust, "south".to_string())]
    );
    assert!(r.departures("south", high).unwrap().is_empty());
    // The rep's first download: snapshots of north (none), then the departure.
    let mut rs = RelaySession::new(RelayLimits::default());
    let mut st = r.clone();
    let out = rs.handle(
        &mut st,
        Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            device_id: rep.info.device_id,
            credential: Some(secret.secret.clone()),
            agent: "test".into(),
        },
    );
    assert!(
        matches!(
            out.messages[..],
            [Message::Welcome { .. }, Message::Policy { .. }]
        ),
        "{out:?}"
    );
    let fresh = Cursor {
        epoch: r.epoch(),
        scopes: [("north".to_string(), ScopeCursor::fresh())].into(),
    };
    let out = rs.handle(
        &mut st,
        Message::Pull {
            cursor: fresh,
            max_bytes: 1 << 20,
        },
    );
    let Some(Message::Batch { items, .. }) = out.messages.last() else {
        panic!("{out:?}")
    };
    assert!(
        items
            .iter()
            .any(|i| i.doc_id == cust && i.entry == Entry::Leave),
        "{items:?}"
    );
    // It comes back: its old Leave now names north, and it is no departure of north any more.
    mgr.edit(cust, CustomerEdit::SetScope("north".into()));
    r.append_changes(&mgr.info, &mgr.outbox(), false).unwrap();
    let (north, _) = r.read_log("north", 0, usize::MAX, Lane::All).unwrap();
    let leave = north.iter().find(|e| e.entry == Entry::Leave).unwrap();
    assert_eq!(leave.moved_to.as_deref(), Some("north"));
    assert!(
        r.departures("north", r.high_seq().unwrap())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_audit_trail_filters_by_document_and_device() {
    let (_d, r) = relay();
    let mut a = device(Role::Rep, &["north"]);
    let mut b = device(Role::Rep, &["north"]);
    r.enrol_device(
        Some(a.info.device_id),
        "alice",
        Role::Rep,
        &["north".into()],
    )
    .unwrap();
    let c1 = a.customer("One", "north");
    let c2 = b.customer("Two", "north");
    r.append_changes(&a.info, &a.outbox(), false).unwrap();
    r.append_changes(&b.info, &b.outbox(), false).unwrap();
    let all = r
        .audit(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].seq < all[1].seq);
    assert_eq!(all[0].device_name.as_deref(), Some("alice"));
    assert_eq!(all[0].scope.as_deref(), Some("north"));
    assert_eq!(all[0].hash.as_ref().map(String::len), Some(64));
    assert_eq!(
        r.audit(&AuditQuery {
            doc: Some(c2),
            limit: 100,
            ..Default::default()
        })
        .unwrap()[0]
            .doc_id,
        c2
    );
    assert_eq!(
        r.audit(&AuditQuery {
            device: Some("alice"),
            limit: 100,
            ..Default::default()
        })
        .unwrap()[0]
            .doc_id,
        c1
    );
    let by_id = r
        .audit(&AuditQuery {
            device: Some(&b.info.device_id.to_string()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].doc_id, c2);
    assert_eq!(
        r.audit(&AuditQuery {
            limit: 1,
            ..Default::default()
        })
        .unwrap()[0]
            .doc_id,
        c2,
        "the most recent"
    );
    // Append-only.
    let e = r.write(|tx| Ok(tx.execute("DELETE FROM audit", [])?));
    assert!(e.is_err());
}

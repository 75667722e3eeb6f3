//! Tests of the relay store, with changes written by real core replicas.

use fieldsync_core::model::{
    CustomerEdit, CustomerField, Edit, EditCtx, NewCustomer, NewVisit, VisitStatus, apply_edit,
    create_customer, create_visit,
};
use fieldsync_core::protocol::messages::Rejection;
use fieldsync_core::store::{Store, decode_change, load_snapshot};

use super::*;
use fieldsync_core::protocol::{Entry, RelayStorage};

struct Device {
    store: Store,
    info: DeviceInfo,
    _dir: tempfile::TempDir,
}

fn device(role: Role, scopes: &[&str]) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("replica.db")).unwrap();
    let info = DeviceInfo {
        device_id: store.device_id(),
        name: "test device".into(),
        role,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    };
    Device {
        store,
        info,
        _dir: dir,
    }
}

impl Device {
    fn ctx(&self) -> EditCtx {
        EditCtx::new("tester", self.info.role)
    }

    fn customer(&mut self, name: &str, scope: &str) -> DocId {
        let ctx = self.ctx();
        self.store
            .create(|d, id| {
                create_customer(
                    d,
                    id,
                    &NewCustomer {
                        org: "acme".into(),
                        scope: scope.into(),
                        name: name.into(),
                        ..Default::default()
                    },
                    &ctx,
                )
            })
            .unwrap()
            .id
    }

    fn visit(&mut self, customer: DocId, scope: &str) -> DocId {
        let ctx = self.ctx();
        self.store
            .create(|d, id| {
                create_visit(
                    d,
                    id,
                    "acme",
                    scope,
                    &NewVisit {
                        customer_id: customer.into(),
                        kind: None,
                        notes: Some("met the buyer".into()),
                        status: VisitStatus::Planned,
                        at: Some(1_000),
                        location: None,
                    },
                    &ctx,
                )
            })
            .unwrap()
            .id
    }

    fn edit(&mut self, id: DocId, e: CustomerEdit) {
        self.edit_as(id, e, self.info.role);
    }

    /// Edits claiming `role` locally (a tampered laptop can claim anything).
    fn edit_as(&mut self, id: DocId, e: CustomerEdit, role: Role) {
        let ctx = EditCtx::new("tester", role);
        self.store
            .edit(id, |d| apply_edit(d, &Edit::Customer(e), &ctx))
            .unwrap();
    }

    /// Everything in the outbox, oldest first.
    fn outbox(&self) -> Vec<UploadChange> {
        self.store
            .outbox_batch(0, 10_000, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|c| UploadChange {
                doc_id: c.doc_id,
                bytes: c.bytes,
            })
            .collect()
    }

    /// Takes changes from the relay log into this replica (as a download would).
    fn receive(&mut self, relay: &SqliteRelayStore) {
        let (entries, _) = relay.read_log("*", 0, usize::MAX).unwrap();
        self.store
            .transaction(|tx| {
                for e in entries {
                    if let Entry::Changes(c) = e.entry {
                        let raw: Vec<Vec<u8>> = c.into_iter().map(|b| b.0).collect();
                        tx.apply_changes(e.doc_id, &raw)?;
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}

fn relay_at(path: &Path, open: Option<OpenEnrolment>) -> SqliteRelayStore {
    SqliteRelayStore::open(
        path,
        RelayStoreOptions {
            cache_docs: 4,
            open,
            ..RelayStoreOptions::default()
        },
    )
    .unwrap()
}

fn relay() -> (tempfile::TempDir, SqliteRelayStore) {
    let dir = tempfile::tempdir().unwrap();
    let r = relay_at(&dir.path().join(DB_FILE), None);
    (dir, r)
}

fn stored(o: &[Outcome]) -> usize {
    o.iter().filter(|o| matches!(o, Outcome::Stored(_))).count()
}

fn refusals(o: &[Outcome]) -> Vec<&Rejection> {
    o.iter()
        .filter_map(|o| match o {
            Outcome::Refused(r) | Outcome::Malformed(r) => Some(r),
            Outcome::Stored(_) => None,
        })
        .collect()
}

fn count(r: &SqliteRelayStore, sql: &str) -> i64 {
    r.read(|c| Ok(c.query_row(sql, [], |row| row.get(0))?))
        .unwrap()
}

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
    let (snaps, more) = r.read_snapshots("north", None, usize::MAX).unwrap();
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
    let (all, more) = r.read_log("north", 0, usize::MAX).unwrap();
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
        let (page, more) = r.read_log("north", after, budget).unwrap();
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
    let (one, more) = r.read_log("north", 0, 1).unwrap();
    assert_eq!(one.len(), 1);
    assert!(more);
    // Nothing after the end; unknown scopes are empty; `*` sees everything.
    let high = r.high_seq().unwrap();
    assert_eq!(r.read_log("north", high, 1).unwrap(), (vec![], false));
    assert_eq!(r.read_log("west", 0, usize::MAX).unwrap(), (vec![], false));
    assert_eq!(r.read_log("*", 0, usize::MAX).unwrap().0.len(), 10);
    // Snapshots: ordered by id, paged exactly.
    let (snaps, more) = r.read_snapshots("south", None, usize::MAX).unwrap();
    assert!(!more);
    assert_eq!(snaps.len(), 3);
    assert!(snaps.windows(2).all(|w| w[0].0 < w[1].0));
    let budget = snaps[0].1.len() + ENTRY_OVERHEAD;
    let (p1, more1) = r.read_snapshots("south", None, budget).unwrap();
    assert_eq!((p1.len(), more1), (1, true));
    let (p2, more2) = r.read_snapshots("south", Some(p1[0].0), 1).unwrap();
    assert_eq!((p2.len(), more2), (1, true));
    let (p3, more3) = r
        .read_snapshots("south", Some(p2[0].0), usize::MAX)
        .unwrap();
    assert_eq!((p3.len(), more3), (1, false));
    assert_eq!(
        r.read_snapshots("south", Some(p3[0].0), 1).unwrap(),
        (vec![], false)
    );
    assert_eq!(r.read_snapshots("*", None, usize::MAX).unwrap().0.len(), 10);
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
    let (north, _) = r.read_log("north", before, usize::MAX).unwrap();
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
    let (south, more) = r.read_log("south", 0, usize::MAX).unwrap();
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
        .read_snapshots("south", None, usize::MAX)
        .unwrap()
        .0
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(south_docs.len(), 2);
    let north_docs = r.read_snapshots("north", None, usize::MAX).unwrap().0;
    assert_eq!(north_docs.len(), 1);
    assert_eq!(north_docs[0].0, other);
    let (star, _) = r.read_log("*", before, usize::MAX).unwrap();
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
    let (south, _) = r.read_log("south", 0, usize::MAX).unwrap();
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
            r.read_log("north", 0, usize::MAX).unwrap(),
            r.read_snapshots("north", None, usize::MAX).unwrap(),
            e.secret,
        )
    };
    let mut r = relay_at(&path, None);
    assert_eq!(r.epoch(), epoch);
    assert_eq!(r.high_seq().unwrap(), 1);
    assert_eq!(r.read_log("north", 0, usize::MAX).unwrap(), log);
    assert_eq!(r.read_snapshots("north", None, usize::MAX).unwrap(), snaps);
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
        let (south, _) = r.read_log("south", 0, usize::MAX).unwrap();
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
    let (north, _) = r.read_log("north", high, usize::MAX).unwrap();
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
    let (north, _) = r.read_log("north", high, usize::MAX).unwrap();
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
        matches!(out.messages[..], [Message::Welcome { .. }]),
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
    let Some(Message::Batch { items, .. }) = out.messages.first() else {
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
    let (north, _) = r.read_log("north", 0, usize::MAX).unwrap();
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
    let all = r.audit(None, None, 100).unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].seq < all[1].seq);
    assert_eq!(all[0].device_name.as_deref(), Some("alice"));
    assert_eq!(all[0].scope.as_deref(), Some("north"));
    assert_eq!(all[0].hash.as_ref().map(String::len), Some(64));
    assert_eq!(r.audit(Some(c2), None, 100).unwrap()[0].doc_id, c2);
    assert_eq!(r.audit(None, Some("alice"), 100).unwrap()[0].doc_id, c1);
    let by_id = r
        .audit(None, Some(&b.info.device_id.to_string()), 100)
        .unwrap();
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].doc_id, c2);
    assert_eq!(
        r.audit(None, None, 1).unwrap()[0].doc_id,
        c2,
        "the most recent"
    );
    // Append-only.
    let e = r.write(|tx| Ok(tx.execute("DELETE FROM audit", [])?));
    assert!(e.is_err());
}

/// The store's contract, run against every backend through [`RelayStore`]: the SQLite file
/// always, PostgreSQL on the server named by `FIELDSYNC_TEST_PG` (default
/// `postgres://postgres@127.0.0.1:5432/postgres`), in a database of its own per test.
mod contract {
    use super::*;
    use crate::store::postgres::ScratchDatabase;

    fn opts() -> RelayStoreOptions {
        RelayStoreOptions {
            cache_docs: 4,
            ..RelayStoreOptions::default()
        }
    }

    /// A scratch PostgreSQL database; panics with a clear message when the server is down.
    pub(super) fn scratch() -> ScratchDatabase {
        ScratchDatabase::create(&ScratchDatabase::server_url()).unwrap_or_else(|e| {
            panic!(
                "these tests need PostgreSQL ({}; set FIELDSYNC_TEST_PG to another server): {e}",
                ScratchDatabase::server_url()
            )
        })
    }

    /// Runs `f` on a fresh SQLite store and on a fresh PostgreSQL store.
    fn each_backend(f: impl Fn(&dyn Fn() -> RelayStore)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        f(&|| RelayStore::Sqlite(SqliteRelayStore::open(&path, opts()).unwrap()));
        let db = scratch();
        f(&|| RelayStore::Postgres(PgRelayStore::open(db.url(), opts()).unwrap()));
    }

    #[test]
    fn append_read_and_resend() {
        each_backend(|open| {
            let mut r = open();
            let mut a = device(Role::Rep, &["north"]);
            let c1 = a.customer("Zeta Mining", "north");
            a.customer("Alpha Quarry", "north");
            a.edit(
                c1,
                CustomerEdit::Set(CustomerField::Industry, "mining".into()),
            );
            let up = a.outbox();
            let mut live = r.subscribe();
            let out = r.append(&a.info, &up, false).unwrap();
            assert_eq!(stored(&out), 3, "{out:?}");
            assert_eq!(r.high_seq().unwrap(), 3);
            assert_eq!(*live.borrow_and_update(), 3);
            // Re-sending is acknowledged without new entries.
            let again = r.append(&a.info, &up, false).unwrap();
            assert_eq!(stored(&again), 3);
            assert_eq!(r.high_seq().unwrap(), 3);
            let (log, more) = r.read_log("north", 0, usize::MAX).unwrap();
            assert!(!more);
            assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
            let (page, more) = r.read_log("north", 0, 1).unwrap();
            assert_eq!((page.len(), more), (1, true));
            assert!(r.read_log("south", 0, usize::MAX).unwrap().0.is_empty());
            let (snaps, _) = r.read_snapshots("north", None, usize::MAX).unwrap();
            assert_eq!(snaps.len(), 2);
            let st = r.status().unwrap();
            assert_eq!((st.high_seq, st.docs, st.changes), (3, 2, 3));
            assert_eq!(r.audit(Some(c1), None, 10).unwrap().len(), 2);
            // Reopening keeps the epoch and the log.
            let epoch = r.epoch();
            drop(r);
            let r = open();
            assert_eq!(r.epoch(), epoch);
            assert_eq!(r.high_seq().unwrap(), 3);
        });
    }

    #[test]
    fn a_replaced_history_is_logged_alone_and_the_old_one_refused() {
        each_backend(|open| {
            let mut r = open();
            let mut a = device(Role::Rep, &["north"]);
            let c = a.customer("Zeta Mining", "north");
            a.edit(
                c,
                CustomerEdit::Set(CustomerField::Industry, "mining".into()),
            );
            let old = a.outbox();
            assert_eq!(stored(&r.append(&a.info, &old, false).unwrap()), 2);
            let mut live = r.subscribe();
            live.mark_unchanged();
            let mut new_heads = Vec::new();
            let done = r
                .replace_history(c, |bytes| {
                    let doc = load_snapshot(bytes).unwrap();
                    let mut new = fieldsync_core::model::rewrite::rewrite(
                        &doc,
                        automerge::ActorId::random(),
                        &[],
                    )
                    .unwrap();
                    new_heads = new.get_heads();
                    Ok(Some(new))
                })
                .unwrap()
                .expect("replaced");
            assert_eq!(done.scope, "north");
            assert!(live.has_changed().unwrap(), "live sessions are woken");
            // Readers of the scope and of every scope see the replacement, and nothing of the
            // old history.
            for scope in ["north", "*"] {
                let (log, _) = r.read_log(scope, 0, usize::MAX).unwrap();
                assert_eq!(log.len(), 1, "{scope}: {log:?}");
                let Entry::Replace(b) = &log[0].entry else {
                    panic!("{scope}: {log:?}");
                };
                let mut got = load_snapshot(&b.0).unwrap();
                assert_eq!(got.get_heads(), new_heads);
            }
            let (snaps, _) = r.read_snapshots("north", None, usize::MAX).unwrap();
            let mut got = load_snapshot(&snaps[0].1).unwrap();
            assert_eq!(got.get_heads(), new_heads);
            // The old history sent again is not stored beside the new one: its first change
            // would start a second history, the next waits for what it builds on.
            let out = r.append(&a.info, &old, false).unwrap();
            let refused = refusals(&out);
            assert_eq!(refused.len(), 2, "{out:?}");
            assert!(!refused[0].retry && refused[0].reason.contains("second history"));
            assert!(refused[1].retry, "{out:?}");
            // A document the relay does not hold cannot be replaced.
            assert!(r.replace_history(DocId::new(), |_| Ok(None)).is_err());
        });
    }

    #[test]
    fn refusals_and_scope_moves() {
        each_backend(|open| {
            let mut r = open();
            let mut a = device(Role::Rep, &["north"]);
            let c = a.customer("Zeta Mining", "north");
            assert_eq!(stored(&r.append(&a.info, &a.outbox(), false).unwrap()), 1);
            // A rep cannot move a customer; a manager of both scopes can.
            let mut rogue = device(Role::Rep, &["south"]);
            let other = rogue.customer("Elsewhere", "north");
            let out = r.append(&rogue.info, &rogue.outbox(), false).unwrap();
            assert_eq!(refusals(&out).len(), 1, "{other} accepted outside scope");
            let mut m = device(Role::Manager, &["north", "south"]);
            m.store
                .transaction(|tx| {
                    for e in r.read_log("*", 0, usize::MAX).unwrap().0 {
                        if let Entry::Changes(c) = e.entry {
                            let raw: Vec<Vec<u8>> = c.into_iter().map(|b| b.0).collect();
                            tx.apply_changes(e.doc_id, &raw)?;
                        }
                    }
                    Ok(())
                })
                .unwrap();
            m.edit(c, CustomerEdit::SetScope("south".into()));
            let out = r.append(&m.info, &m.outbox(), false).unwrap();
            assert!(refusals(&out).is_empty(), "{out:?}");
            let (north, _) = r.read_log("north", 0, usize::MAX).unwrap();
            assert!(
                north
                    .iter()
                    .any(|e| e.entry == Entry::Leave && e.doc_id == c)
            );
            let high = r.high_seq().unwrap();
            let departed = r.departures("north", high).unwrap();
            assert_eq!(departed, vec![(c, "south".to_string())]);
            let (south, _) = r.read_snapshots("south", None, usize::MAX).unwrap();
            assert_eq!(south.len(), 1);
            // What the relay has, and what it lacks.
            let heads: Vec<Hash> = m.store.heads(c).unwrap().iter().map(|h| h.0).collect();
            let missing = r
                .missing(&[(c, heads), (DocId::new(), Vec::new())])
                .unwrap();
            assert_eq!(
                missing[0],
                Lack::Nothing {
                    scope: "south".into()
                }
            );
            assert_eq!(missing[1], Lack::Document);
        });
    }

    /// A change that makes automerge fail part way through applying it (an operation on an
    /// object none of its dependencies created) is refused; the document it was applied to
    /// is rebuilt from the stored snapshot and the batch's earlier changes, so the changes
    /// around it in the same batch and later batches are stored whole.
    #[test]
    fn a_change_that_breaks_automerge_mid_batch_loses_nothing() {
        use automerge::{ActorId, ObjType, ROOT, transaction::Transactable};
        each_backend(|open| {
            let mut r = open();
            let mut a = device(Role::Rep, &["north"]);
            let c = a.customer("Zeta Mining", "north");
            // The forged change: same device, another actor of it, depending only on the
            // creation but writing into a map made by a change it does not depend on.
            let mut f = a.store.automerge(c).unwrap();
            let mut actor = a.info.device_id.as_bytes().to_vec();
            actor.extend_from_slice(&[0xee; 8]);
            f.set_actor(ActorId::from(actor));
            let created = f.get_heads();
            let m = f.put_object(ROOT, "extra", ObjType::Map).unwrap();
            f.commit();
            let made = f.get_heads();
            f.put(&m, "k", "v").unwrap();
            f.commit();
            let mut forged = f.get_changes(&made).pop().unwrap().decode();
            forged.deps = created;
            let forged = automerge::Change::from(forged).raw_bytes().to_vec();

            a.edit(
                c,
                CustomerEdit::Set(CustomerField::Industry, "mining".into()),
            );
            let mut up = a.outbox();
            assert_eq!(up.len(), 2);
            up.insert(
                1,
                UploadChange {
                    doc_id: c,
                    bytes: forged,
                },
            );
            let out = r.append(&a.info, &up, false).unwrap();
            assert!(matches!(out[0], Outcome::Stored(_)), "{out:?}");
            assert!(
                matches!(&out[1], Outcome::Refused(rej) if !rej.retry),
                "{out:?}"
            );
            assert!(matches!(out[2], Outcome::Stored(_)), "{out:?}");

            a.edit(
                c,
                CustomerEdit::Set(CustomerField::Stage, "opportunity".into()),
            );
            let later = a.outbox().split_off(2);
            assert_eq!(stored(&r.append(&a.info, &later, false).unwrap()), 1);
            let want: Vec<Hash> = a.store.heads(c).unwrap().iter().map(|h| h.0).collect();
            assert_eq!(
                r.missing(&[(c, want.clone())]).unwrap(),
                vec![Lack::Nothing {
                    scope: "north".into()
                }]
            );
            // The stored snapshot holds exactly the accepted changes, also after reopening.
            drop(r);
            let r = open();
            let (snaps, _) = r.read_snapshots("north", None, usize::MAX).unwrap();
            assert_eq!(snaps.len(), 1);
            let mut doc = load_snapshot(&snaps[0].1).unwrap();
            let mut heads: Vec<Hash> = doc.get_heads().iter().map(|h| h.0).collect();
            heads.sort();
            let mut want = want;
            want.sort();
            assert_eq!(heads, want);
            assert_eq!(r.status().unwrap().changes, 3);
        });
    }

    /// IT changes a device's scopes or role without enrolling it again: the credential
    /// keeps working, the new grant applies, subscribers hear of it; a revoked or unknown
    /// device and an empty change are refused.
    #[test]
    fn grants_change_scopes_and_role_and_keep_the_credential() {
        each_backend(|open| {
            let r = open();
            let e = r
                .enrol_device(None, "rep laptop", Role::Rep, &["north".into()])
                .unwrap();
            let mut gen_rx = r.subscribe_devices();
            gen_rx.borrow_and_update();
            let scopes = ["north".to_string(), "south".to_string()];
            let changed = r.grant("rep laptop", None, Some(&scopes)).unwrap();
            assert_eq!(changed, vec![e.device_id]);
            assert!(gen_rx.has_changed().unwrap());
            let now = r.authenticate(e.device_id, Some(&e.secret)).unwrap();
            let now = now.expect("the credential still works");
            assert_eq!((now.role, now.scopes.clone()), (Role::Rep, scopes.to_vec()));
            let by_id = r
                .grant(&e.device_id.to_string(), Some(Role::Manager), None)
                .unwrap();
            assert_eq!(by_id, vec![e.device_id]);
            let now = r.device_grant(e.device_id).unwrap().unwrap();
            assert_eq!((now.role, now.scopes), (Role::Manager, scopes.to_vec()));
            assert!(
                r.grant("rep laptop", None, None).is_err(),
                "nothing to change"
            );
            assert!(
                r.grant("rep laptop", None, Some(&[])).is_err(),
                "no scope at all"
            );
            assert!(r.grant("nobody", Some(Role::Rep), None).is_err());
            r.revoke("rep laptop").unwrap();
            let err = r.grant("rep laptop", Some(Role::Admin), None).unwrap_err();
            assert!(err.to_string().contains("no active device"), "{err}");
        });
    }

    #[test]
    fn devices_enrol_revoke_and_tokens() {
        each_backend(|open| {
            let r = open();
            let e = r
                .enrol_device(None, "rep laptop", Role::Rep, &["north".into()])
                .unwrap();
            let gen_rx = r.subscribe_devices();
            assert!(
                r.authenticate(e.device_id, Some(&e.secret))
                    .unwrap()
                    .is_some()
            );
            assert!(
                r.authenticate(e.device_id, Some("wrong"))
                    .unwrap()
                    .is_none()
            );
            assert!(r.authenticate(Uuid::new_v4(), None).unwrap().is_none());
            let token = r
                .create_enrolment(
                    "new laptop",
                    Role::Manager,
                    &["south".into()],
                    None,
                    Duration::from_secs(60),
                )
                .unwrap();
            let dev = Uuid::new_v4();
            let cred = "c".repeat(64);
            let got = r.redeem(dev, &token, &cred).unwrap().unwrap();
            assert_eq!(got.role, Role::Manager);
            assert!(r.redeem(Uuid::new_v4(), &token, &cred).unwrap().is_err());
            assert_eq!(r.devices().unwrap().len(), 2);
            assert_eq!(r.enrolments().unwrap().len(), 1);
            let revoked = r.revoke("rep laptop").unwrap();
            assert_eq!(revoked.devices, vec![e.device_id]);
            assert!(gen_rx.has_changed().unwrap());
            assert!(
                r.authenticate(e.device_id, Some(&e.secret))
                    .unwrap()
                    .is_none()
            );
            assert!(r.device_grant(e.device_id).unwrap().is_none());
            assert!(!r.revoke_device(e.device_id).unwrap());
            assert_eq!(r.status().unwrap().revoked_devices, 1);
        });
    }

    /// A heads exchange answers per entry, whatever the batching: known documents at the
    /// relay's heads, behind them, with a head of another document, with no heads; unknown
    /// documents; the same document twice; entries on both sides of a look-up chunk.
    #[test]
    fn missing_answers_each_entry_across_lookup_chunks() {
        each_backend(|open| {
            let mut r = open();
            let mut a = device(Role::Rep, &["north"]);
            let x = a.customer("Known", "north");
            let y = a.customer("Other", "north");
            assert_eq!(stored(&r.append(&a.info, &a.outbox(), false).unwrap()), 2);
            let heads = |d: &Device, id| -> Vec<Hash> {
                d.store.heads(id).unwrap().iter().map(|h| h.0).collect()
            };
            let (hx, hy) = (heads(&a, x), heads(&a, y));
            a.edit(x, CustomerEdit::AddPhone("+1 555 0100".into()));
            let ahead = heads(&a, x);
            let nothing = || Lack::Nothing {
                scope: "north".into(),
            };
            let behind = || Lack::Changes {
                scope: "north".into(),
                heads: hx.clone(),
            };
            let mut mixed = hx.clone();
            mixed.push([7; 32]);
            let cases: Vec<((DocId, Vec<Hash>), Lack)> = vec![
                ((x, hx.clone()), nothing()),
                ((x, Vec::new()), nothing()),
                ((x, ahead.clone()), behind()),
                ((x, mixed.clone()), behind()),
                // A head the relay stores, but of another document.
                ((x, hy.clone()), behind()),
                ((y, hy.clone()), nothing()),
                ((DocId::new(), Vec::new()), Lack::Document),
                ((DocId::new(), hx.clone()), Lack::Document),
            ];
            let mut ask = Vec::new();
            let mut want = Vec::new();
            for i in 0..2_600 {
                // The cases again and again, among unknown documents, so that some sit at
                // the edges of the look-up chunks.
                let (q, w) = if i % 331 < cases.len() {
                    cases[i % 331].clone()
                } else {
                    ((DocId::new(), vec![[i as u8; 32]]), Lack::Document)
                };
                ask.push(q);
                want.push(w);
            }
            let got = r.missing(&ask).unwrap();
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "entry {i}: {:?}", ask[i]);
            }
            assert!(r.missing(&[]).unwrap().is_empty());
        });
    }
}

/// PostgreSQL only: several nodes on one database.
mod postgres_nodes {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::contract::scratch;
    use super::*;

    /// The no-skip property: writers on separate connections (as separate relay nodes)
    /// append concurrently in many small transactions while readers follow the log by
    /// cursor; every reader must see every committed sequence number.
    #[test]
    fn concurrent_appends_never_let_a_cursor_reader_skip() {
        const WRITERS: usize = 4;
        const EDITS: usize = 40;
        let db = scratch();
        let url = db.url().to_string();
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let store = PgRelayStore::open(&url, RelayStoreOptions::default()).unwrap();
                let done = done.clone();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut cursor = 0;
                    loop {
                        let finished = done.load(Ordering::SeqCst);
                        let (page, _) = store.read_log("*", cursor, 4 << 10).unwrap();
                        for e in &page {
                            seen.push(e.seq);
                            cursor = e.seq;
                        }
                        if finished && page.is_empty() {
                            return seen;
                        }
                    }
                })
            })
            .collect();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let node = PgRelayStore::open(&url, RelayStoreOptions::default()).unwrap();
                    let mut a = device(Role::Rep, &["north"]);
                    let c = a.customer(&format!("customer {w}"), "north");
                    let mut acked = Vec::new();
                    let mut sent = 0;
                    for i in 0..EDITS {
                        a.edit(c, CustomerEdit::AddPhone(format!("+1 555 {w:02}{i:04}")));
                        let up = a.outbox();
                        let out = node.append_changes(&a.info, &up[sent..], false).unwrap();
                        assert!(refusals(&out).is_empty(), "{out:?}");
                        sent = up.len();
                        acked.push(node.high_seq().unwrap());
                    }
                    acked
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        let store = PgRelayStore::open(&url, RelayStoreOptions::default()).unwrap();
        let high = store.high_seq().unwrap();
        assert_eq!(high as usize, WRITERS * (EDITS + 1));
        let all: Vec<u64> = store
            .read_log("*", 0, usize::MAX)
            .unwrap()
            .0
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(all, (1..=high).collect::<Vec<_>>(), "the log has gaps");
        for r in readers {
            let seen = r.join().unwrap();
            let distinct: BTreeSet<u64> = seen.iter().copied().collect();
            assert_eq!(distinct.len(), seen.len(), "a reader saw an entry twice");
            assert_eq!(seen, all, "a reader skipped or reordered entries");
        }
    }

    /// When the database drops a node's notification connection (a restart, a cut), the
    /// node reconnects and hears other nodes' writes again, including those made while it
    /// was disconnected, without anyone polling.
    #[test]
    fn the_notification_listener_reconnects() {
        let db = scratch();
        let a_node = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
        let b_node = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
        let mut live = a_node.subscribe();
        live.borrow_and_update();
        let mut admin = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
        let killed: bool = admin
            .query_one(
                "SELECT count(*) > 0 FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = current_database() AND query LIKE 'LISTEN%'
                    AND pid <> pg_backend_pid()) AS t",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(killed, "no listener connection found");
        let mut rep = device(Role::Rep, &["north"]);
        rep.customer("Zeta", "north");
        let out = b_node
            .append_changes(&rep.info, &rep.outbox(), false)
            .unwrap();
        assert!(refusals(&out).is_empty(), "{out:?}");
        let high = b_node.high_seq().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while *live.borrow() < high {
            assert!(Instant::now() < deadline, "node a never heard of the write");
            std::thread::sleep(Duration::from_millis(50));
        }
        // And a later write arrives by notification, not by the catch-up after reconnecting.
        rep.edit(
            rep.store.all_heads().unwrap()[0].0,
            CustomerEdit::Set(CustomerField::Industry, "mining".into()),
        );
        let out = b_node
            .append_changes(&rep.info, &rep.outbox()[1..], false)
            .unwrap();
        assert!(refusals(&out).is_empty(), "{out:?}");
        let high = b_node.high_seq().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while *live.borrow() < high {
            assert!(Instant::now() < deadline, "node a missed a later write");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// With `database_ca` the relay talks to PostgreSQL over TLS only, verifying the server's
    /// certificate; the wrong authority, and a URL that requires TLS without one, are
    /// refused with a clear error. (The machine's server has TLS on with the certificate it
    /// names in `ssl_cert_file`, self-signed for `localhost`, which then serves as the CA.)
    #[test]
    fn tls_to_the_database_is_verified_against_its_authority() {
        let db = scratch();
        let mut admin = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
        let dir = tempfile::tempdir().unwrap();

        let url_requiring = format!("{}?sslmode=require", db.url());
        let err = PgRelayStore::open(&url_requiring, RelayStoreOptions::default()).unwrap_err();
        assert!(err.to_string().contains("database_ca"), "{err}");

        let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let wrong_ca = dir.path().join("wrong-ca.pem");
        std::fs::write(&wrong_ca, stranger.cert.pem()).unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = PgRelayStore::open_with_ca(db.url(), Some(&empty), RelayStoreOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");

        let ssl_on: String = admin.query_one("SHOW ssl", &[]).unwrap().get(0);
        assert_eq!(
            ssl_on,
            "on",
            "this test needs the PostgreSQL server at {} to accept TLS",
            postgres::ScratchDatabase::server_url()
        );
        let cert_file: String = admin.query_one("SHOW ssl_cert_file", &[]).unwrap().get(0);
        let server_ca = Path::new(&cert_file);
        let local = db.url().replace("127.0.0.1", "localhost");
        let err = PgRelayStore::open_with_ca(&local, Some(&wrong_ca), RelayStoreOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");

        let store =
            PgRelayStore::open_with_ca(&local, Some(server_ca), RelayStoreOptions::default())
                .unwrap();
        let mut rep = device(Role::Rep, &["north"]);
        rep.customer("Zeta", "north");
        let out = store
            .append_changes(&rep.info, &rep.outbox(), false)
            .unwrap();
        assert_eq!(stored(&out), 1);
        let encrypted: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                  WHERE a.datname = current_database() AND s.ssl",
                &[],
            )
            .unwrap()
            .get(0);
        let plain: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                  WHERE a.datname = current_database() AND NOT s.ssl
                    AND a.pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(
            encrypted >= 2,
            "the writer and the listener use TLS: {encrypted}"
        );
        assert_eq!(plain, 0, "no connection of the store is in the clear");
    }

    /// A document cached by one node and then written by another is reloaded, not
    /// validated against the stale copy.
    #[test]
    fn a_node_does_not_validate_against_a_stale_cache() {
        let db = scratch();
        let a_node = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
        let b_node = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
        let mut rep = device(Role::Rep, &["north"]);
        let c = rep.customer("Zeta", "north");
        let mut sent = 0;
        for (i, node) in [&a_node, &b_node, &a_node, &b_node].iter().enumerate() {
            rep.edit(c, CustomerEdit::AddPhone(format!("+1 555 {i}")));
            let up = rep.outbox();
            let out = node.append_changes(&rep.info, &up[sent..], false).unwrap();
            assert!(refusals(&out).is_empty(), "{out:?}");
            sent = up.len();
        }
        let heads: Vec<Hash> = rep.store.heads(c).unwrap().iter().map(|h| h.0).collect();
        assert_eq!(
            a_node.missing(&[(c, heads)]).unwrap(),
            vec![Lack::Nothing {
                scope: "north".into()
            }]
        );
        // The other node's writes reached this node's subscribers.
        let mut rx = a_node.subscribe();
        let deadline = Instant::now() + Duration::from_secs(5);
        while *rx.borrow_and_update() < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(*rx.borrow(), 5);
    }

    #[test]
    fn unreachable_server_is_a_clear_error() {
        let e = PgRelayStore::open(
            "postgres://postgres@127.0.0.1:1/none",
            RelayStoreOptions::default(),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cannot connect to PostgreSQL at"), "{msg}");
    }
}

/// PostgreSQL only: what one node may take of a shared database server.
mod postgres_budget {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::mpsc;

    use sha2::{Digest, Sha256};

    use super::contract::scratch;
    use super::*;

    fn opts(max_connections: usize, wait: Duration) -> RelayStoreOptions {
        RelayStoreOptions {
            db_max_connections: max_connections,
            db_wait: wait,
            ..RelayStoreOptions::default()
        }
    }

    /// Connections to the scratch database other than `admin`'s own.
    fn connections(admin: &mut ::postgres::Client) -> i64 {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0)
    }

    fn fake_hash(n: usize) -> Hash {
        Sha256::digest(n.to_le_bytes()).into()
    }

    /// Many clients sending large heads exchanges at once to a node allowed four connections:
    /// the node never has more than four open (counted by the server), the exchanges queue for
    /// the pool and all of them get their full answer.
    #[test]
    fn concurrent_heads_exchanges_stay_within_the_connection_budget() {
        const CALLERS: usize = 8;
        const ENTRIES: usize = 6_000;
        let db = scratch();
        let store = PgRelayStore::open(db.url(), opts(4, Duration::from_secs(300))).unwrap();
        let mut rep = device(Role::Rep, &["north"]);
        let known: Vec<DocId> = (0..6)
            .map(|i| rep.customer(&format!("customer {i}"), "north"))
            .collect();
        let out = store
            .append_changes(&rep.info, &rep.outbox(), false)
            .unwrap();
        assert_eq!(stored(&out), known.len());
        // Every fourth entry a known document with 64 heads (one in ten of them all stored),
        // the rest unknown documents.
        let mut ask = Vec::new();
        let mut want = Vec::new();
        for i in 0..ENTRIES {
            if i % 4 == 0 {
                let id = known[i % known.len()];
                let real: Vec<Hash> = rep.store.heads(id).unwrap().iter().map(|h| h.0).collect();
                if i % 40 == 0 {
                    ask.push((id, real));
                    want.push(Lack::Nothing {
                        scope: "north".into(),
                    });
                } else {
                    let mut heads = real.clone();
                    heads.extend((0..63).map(|j| fake_hash(i * 64 + j)));
                    ask.push((id, heads));
                    want.push(Lack::Changes {
                        scope: "north".into(),
                        heads: real,
                    });
                }
            } else {
                ask.push((DocId::new(), vec![fake_hash(i)]));
                want.push(Lack::Document);
            }
        }
        let ask = Arc::new(ask);
        let mut admin = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicI64::new(0));
        let watcher = {
            let (done, most) = (done.clone(), most.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    most.fetch_max(connections(&mut admin), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                }
                admin
            })
        };
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let (store, ask) = (store.clone(), ask.clone());
                std::thread::spawn(move || (0..2).map(|_| store.missing(&ask)).collect::<Vec<_>>())
            })
            .collect();
        for c in callers {
            for answer in c.join().unwrap() {
                assert!(
                    answer.unwrap() == want,
                    "a heads exchange got a wrong answer"
                );
            }
        }
        done.store(true, Ordering::SeqCst);
        let mut admin = watcher.join().unwrap();
        let most = most.load(Ordering::SeqCst).max(connections(&mut admin));
        assert!(
            (3..=4).contains(&most),
            "the node had {most} connections open"
        );
        let s = store.pool_stats();
        assert_eq!((s.capacity, s.reserved), (2, 1), "{s:?}");
        assert!(s.open <= 2, "{s:?}");
        assert!(s.waits > 0, "the exchanges never queued: {s:?}");
        assert_eq!(s.timeouts, 0, "{s:?}");
    }

    /// With every connection reads may use held (long downloads), a read waits and is then
    /// refused as busy, with a message that tells the client to retry; meanwhile devices
    /// still authenticate, redeem enrolment tokens and are re-checked, on the connection
    /// kept for that, and the node stays within its budget.
    #[test]
    fn authentication_succeeds_while_every_read_connection_is_busy() {
        let db = scratch();
        let store = PgRelayStore::open(db.url(), opts(8, Duration::from_millis(300))).unwrap();
        let e = store
            .enrol_device(None, "rep laptop", Role::Rep, &["north".into()])
            .unwrap();
        let token = store
            .create_enrolment(
                "new laptop",
                Role::Rep,
                &["north".into()],
                None,
                Duration::from_secs(60),
            )
            .unwrap();
        let s = store.pool_stats();
        assert_eq!((s.capacity, s.reserved), (6, 1), "{s:?}");
        let (release, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let holders: Vec<_> = (0..s.capacity - s.reserved)
            .map(|_| {
                let (store, held) = (store.clone(), held.clone());
                std::thread::spawn(move || {
                    store.bulk_read(|c| {
                        c.batch_execute("SELECT 1")?;
                        let _ = held.lock().unwrap().recv();
                        Ok(())
                    })
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.pool_stats().in_use < s.capacity - s.reserved {
            assert!(Instant::now() < deadline, "{:?}", store.pool_stats());
            std::thread::sleep(Duration::from_millis(10));
        }

        let err = store.devices().unwrap_err();
        assert!(err.is_busy(), "{err}");
        let told = StorageError::from(err).to_string();
        assert!(told.contains("busy") && told.contains("again"), "{told}");

        let started = Instant::now();
        let me = store.authenticate(e.device_id, Some(&e.secret)).unwrap();
        assert!(me.is_some(), "the enrolled device was not let in");
        assert!(
            store
                .authenticate(e.device_id, Some("wrong"))
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store
                .redeem(Uuid::new_v4(), "not-a-token", &"c".repeat(64))
                .unwrap(),
            Err("unknown enrolment token".to_string())
        );
        let new = store
            .redeem(Uuid::new_v4(), &token, &"d".repeat(64))
            .unwrap();
        assert!(new.is_ok(), "{new:?}");
        assert!(store.device_grant(e.device_id).unwrap().is_some());
        store.poll_log().unwrap();
        store.poll_devices().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "authentication waited for the readers: {:?}",
            started.elapsed()
        );
        let mut admin = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
        assert!(connections(&mut admin) <= 8);

        drop(release);
        for h in holders {
            h.join().unwrap().unwrap();
        }
        assert_eq!(store.devices().unwrap().len(), 2);
        let s = store.pool_stats();
        assert_eq!((s.in_use, s.timeouts), (0, 1), "{s:?}");
    }

    /// A statement on a read connection that runs past `statement_timeout` is cancelled by
    /// the server and reported as busy (retry later); the connection serves the next read.
    #[test]
    fn reads_are_bounded_by_the_statement_timeout() {
        let db = scratch();
        let store = PgRelayStore::open(
            db.url(),
            RelayStoreOptions {
                db_statement_timeout: Duration::from_millis(200),
                ..RelayStoreOptions::default()
            },
        )
        .unwrap();
        let started = Instant::now();
        let err = store
            .bulk_read(|c| Ok(c.batch_execute("SELECT pg_sleep(10)")?))
            .unwrap_err();
        assert!(err.is_busy(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(store.high_seq().unwrap(), 0);
        assert_eq!(store.status().unwrap().docs, 0);
    }

    /// The relay needs no administrator rights: a role that only owns its database (no
    /// superuser, no CREATEDB or CREATEROLE) migrates the schema and serves, as README.md
    /// says.
    #[test]
    fn the_relay_runs_as_a_role_that_only_owns_its_database() {
        /// Drops the database and the role, also when the test fails.
        struct Scratch {
            server: String,
            name: String,
        }
        impl Drop for Scratch {
            fn drop(&mut self) {
                if let Ok(mut c) = ::postgres::Client::connect(&self.server, ::postgres::NoTls) {
                    // One statement each: neither may run in a transaction block.
                    let name = &self.name;
                    let _ =
                        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                    let _ = c.batch_execute(&format!("DROP ROLE IF EXISTS {name}"));
                }
            }
        }
        let server = postgres::ScratchDatabase::server_url();
        let name = format!("fieldsync_role_{}", Uuid::new_v4().simple());
        let mut admin = ::postgres::Client::connect(&server, ::postgres::NoTls).unwrap();
        let _scratch = Scratch {
            server: server.clone(),
            name: name.clone(),
        };
        admin
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
            ))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {name}"))
            .unwrap();
        // The server's URL with this role and database.
        let (scheme, rest) = server.split_once("://").unwrap();
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let host = host.split_once('/').map_or(host, |(h, _)| h);
        let url = format!("{scheme}://{name}@{host}/{name}");

        let store = PgRelayStore::open(&url, RelayStoreOptions::default()).unwrap();
        let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        let superuser: bool = c
            .query_one(
                "SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles
                  WHERE rolname = current_user",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(!superuser, "the test role has administrator rights");
        store.claim_fingerprint(&"ab".repeat(32)).unwrap();
        let mut rep = device(Role::Rep, &["north"]);
        let cust = rep.customer("Zeta", "north");
        let out = store
            .append_changes(&rep.info, &rep.outbox(), false)
            .unwrap();
        assert_eq!(stored(&out), 1);
        let heads: Vec<Hash> = rep.store.heads(cust).unwrap().iter().map(|h| h.0).collect();
        assert_eq!(
            store.missing(&[(cust, heads)]).unwrap(),
            vec![Lack::Nothing {
                scope: "north".into()
            }]
        );
        let e = store
            .enrol_device(None, "rep laptop", Role::Rep, &["north".into()])
            .unwrap();
        assert!(
            store
                .authenticate(e.device_id, Some(&e.secret))
                .unwrap()
                .is_some()
        );
        assert_eq!(store.audit(None, None, 10).unwrap().len(), 1);
        // Reopening (a second node, or a restart) finds the schema migrated.
        drop(store);
        let again = PgRelayStore::open(&url, RelayStoreOptions::default()).unwrap();
        assert_eq!(again.high_seq().unwrap(), 1);
    }

    /// A handle whose client left stops its reads; other handles are not affected.
    #[test]
    fn a_departed_clients_reads_stop() {
        let db = scratch();
        let store = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
        let cancel = Cancel::default();
        let mine = store.cancelled_by(cancel.clone());
        let ask = vec![(DocId::new(), Vec::new())];
        assert_eq!(mine.missing(&ask).unwrap(), vec![Lack::Document]);
        cancel.cancel();
        assert!(matches!(
            mine.missing(&ask),
            Err(RelayStoreError::Cancelled)
        ));
        assert!(matches!(
            mine.read_log("*", 0, usize::MAX),
            Err(RelayStoreError::Cancelled)
        ));
        assert_eq!(store.missing(&ask).unwrap(), vec![Lack::Document]);
    }

    /// An unknown enrolment token is refused from a read connection: guessing does not wait
    /// for (or hold up) the writer, which serialises every node's uploads.
    #[test]
    fn an_unknown_token_is_refused_without_the_writer() {
        let db = scratch();
        let store = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
        let (release, held) = mpsc::channel::<()>();
        let (taken, is_taken) = mpsc::channel::<()>();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                store.holding_writer(|| {
                    taken.send(()).unwrap();
                    let _ = held.recv();
                })
            })
        };
        is_taken.recv().unwrap();
        let (answer, answered) = mpsc::channel();
        let guesser = {
            let store = store.clone();
            std::thread::spawn(move || {
                let r = store.redeem(Uuid::new_v4(), "0123456789abcdef", &"c".repeat(64));
                answer.send(r.map_err(|e| e.to_string())).unwrap();
            })
        };
        let got = answered.recv_timeout(Duration::from_secs(5));
        drop(release);
        writer.join().unwrap().unwrap();
        guesser.join().unwrap();
        assert_eq!(
            got.expect("the guess waited for the writer"),
            Ok(Err("unknown enrolment token".to_string()))
        );
    }
}

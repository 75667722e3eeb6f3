//! The store's contract, run against every backend through [`RelayStore`]: the SQLite file
//! always, PostgreSQL on the server named by `FIELDSYNC_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), in a database of its own per test.

use super::*;
use crate::store::postgres::ScratchDatabase;
use fieldsync_core::protocol::{DevicePolicy, WipeReport};

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
    each_backend_with(opts(), f);
}

/// Runs `f` on a fresh SQLite store and on a fresh PostgreSQL store opened with `opts`.
fn each_backend_with(opts: RelayStoreOptions, f: impl Fn(&dyn Fn() -> RelayStore)) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    f(&|| RelayStore::Sqlite(SqliteRelayStore::open(&path, opts.clone()).unwrap()));
    let db = scratch();
    f(&|| RelayStore::Postgres(PgRelayStore::open(db.url(), opts.clone()).unwrap()));
}

/// Runs `sql` (which changes rows) on the store's database directly, bypassing the store.
fn raw_execute(r: &RelayStore, sql: &str) -> Result<(), String> {
    match r {
        RelayStore::Sqlite(s) => lock(&s.inner.writer)
            .conn
            .execute_batch(sql)
            .map_err(|e| e.to_string()),
        RelayStore::Postgres(p) => p
            .bulk_read(|c| Ok(c.batch_execute(sql)))
            .unwrap()
            .map_err(|e| pg_detail(&e)),
    }
}

/// The device events of one device: (event, detail).
fn events_of(r: &RelayStore, id: Uuid) -> Vec<(String, serde_json::Value)> {
    r.device_events()
        .unwrap()
        .into_iter()
        .filter(|e| e.device_id == id)
        .map(|e| (e.event, e.detail))
        .collect()
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
        let (log, more) = r.read_log("north", 0, usize::MAX, Lane::All).unwrap();
        assert!(!more);
        assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let (page, more) = r.read_log("north", 0, 1, Lane::All).unwrap();
        assert_eq!((page.len(), more), (1, true));
        assert!(
            r.read_log("south", 0, usize::MAX, Lane::All)
                .unwrap()
                .0
                .is_empty()
        );
        let (snaps, _) = r
            .read_snapshots("north", None, usize::MAX, Lane::All)
            .unwrap();
        assert_eq!(snaps.len(), 2);
        // What a download has left: both documents as snapshots, or both in the log (three
        // changes) from its start; nothing from its end; the same across every scope.
        let snapshot_bytes: u64 = snaps.iter().map(|(_, b)| b.len() as u64).sum();
        assert_eq!(
            r.waiting("north", Some(None), 3).unwrap(),
            (2, snapshot_bytes)
        );
        let (docs, bytes) = r.waiting("north", None, 0).unwrap();
        assert_eq!(docs, 2);
        assert_eq!(
            bytes,
            log.iter().map(|e| e.entry.raw_len() as u64).sum::<u64>()
        );
        assert_eq!(r.waiting("north", None, 3).unwrap(), (0, 0));
        assert_eq!(r.waiting("*", None, 0).unwrap(), (docs, bytes));
        assert_eq!(r.waiting("south", Some(None), 0).unwrap(), (0, 0));
        let st = r.status().unwrap();
        assert_eq!((st.high_seq, st.docs, st.changes), (3, 2, 3));
        assert_eq!(
            r.audit(&AuditQuery {
                doc: Some(c1),
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .len(),
            2
        );
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
            let (log, _) = r.read_log(scope, 0, usize::MAX, Lane::All).unwrap();
            assert_eq!(log.len(), 1, "{scope}: {log:?}");
            let Entry::Replace(b) = &log[0].entry else {
                panic!("{scope}: {log:?}");
            };
            let mut got = load_snapshot(&b.0).unwrap();
            assert_eq!(got.get_heads(), new_heads);
        }
        let (snaps, _) = r
            .read_snapshots("north", None, usize::MAX, Lane::All)
            .unwrap();
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
                for e in r.read_log("*", 0, usize::MAX, Lane::All).unwrap().0 {
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
        let (north, _) = r.read_log("north", 0, usize::MAX, Lane::All).unwrap();
        assert!(
            north
                .iter()
                .any(|e| e.entry == Entry::Leave && e.doc_id == c)
        );
        let high = r.high_seq().unwrap();
        let departed = r.departures("north", high).unwrap();
        assert_eq!(departed, vec![(c, "south".to_string())]);
        let (south, _) = r
            .read_snapshots("south", None, usize::MAX, Lane::All)
            .unwrap();
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
        let (snaps, _) = r
            .read_snapshots("north", None, usize::MAX, Lane::All)
            .unwrap();
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

/// A remote wipe ordered `now`: the device is revoked at once, yet admitted on its own
/// credential (and on nothing else) to hear the order; its uploads are refused; once it
/// reports the wipe it is refused for good, and the trail shows the order and the report.
#[test]
fn a_device_ordered_wiped_now_hears_the_order_and_is_then_refused_for_good() {
    each_backend(|open| {
        let mut r = open();
        let mut a = device(Role::Rep, &["north"]);
        let id = a.info.device_id;
        let e = r
            .enrol_device(Some(id), "rep laptop", Role::Rep, &["north".into()])
            .unwrap();
        a.customer("Zeta Mining", "north");
        let token = r
            .create_enrolment(
                "rep laptop",
                Role::Rep,
                &["north".into()],
                None,
                Duration::from_secs(60),
            )
            .unwrap();
        let mut gen_rx = r.subscribe_devices();
        gen_rx.borrow_and_update();
        let ordered = r.order_wipe("rep laptop", WipeOrder::Now).unwrap();
        assert_eq!(ordered.devices, vec![id]);
        assert_eq!(ordered.tokens, 1, "its name's unused tokens are cancelled");
        assert!(gen_rx.has_changed().unwrap(), "sessions are told");
        assert!(
            r.redeem(Uuid::new_v4(), &token, &"c".repeat(64))
                .unwrap()
                .is_err()
        );
        // Revoked, but let in on its credential to hear the order.
        assert!(r.device_grant(id).unwrap().is_none());
        let admitted = r.authenticate(id, Some(&e.secret)).unwrap();
        assert_eq!(admitted.as_ref().map(|d| d.device_id), Some(id));
        assert!(r.authenticate(id, Some("wrong")).unwrap().is_none());
        assert!(r.authenticate(id, None).unwrap().is_none());
        let policy = RelayStorage::device_policy(&mut r, &a.info).unwrap();
        assert_eq!(policy.wipe, Some(WipeOrder::Now));
        assert_eq!(policy.lease_days, None);
        // Nothing more is accepted from it.
        let out = r.append(&a.info, &a.outbox(), false).unwrap();
        let refused = refusals(&out);
        assert_eq!(refused.len(), 1, "{out:?}");
        assert!(refused[0].reason.contains("revoked"), "{refused:?}");
        assert_eq!(r.high_seq().unwrap(), 0);
        let listed = r.devices().unwrap();
        assert_eq!(listed[0].pending_wipe(), Some(WipeOrder::Now));
        assert!(listed[0].revoked_at.is_some());
        // The laptop reports its wipe: revoked for good.
        let report = WipeReport {
            keys_destroyed: true,
            files_removed: 4,
            unsent_changes: 1,
            unsent_attachments: 0,
        };
        gen_rx.borrow_and_update();
        RelayStorage::record_wiped(&mut r, id, &report).unwrap();
        assert!(gen_rx.has_changed().unwrap());
        assert!(r.authenticate(id, Some(&e.secret)).unwrap().is_none());
        assert_eq!(
            RelayStorage::device_policy(&mut r, &a.info).unwrap().wipe,
            None
        );
        let listed = r.devices().unwrap();
        assert!(listed[0].wiped_at.is_some());
        assert_eq!(listed[0].wipe.as_deref(), Some("now"));
        assert_eq!(listed[0].pending_wipe(), None);
        // A second report changes nothing.
        RelayStorage::record_wiped(&mut r, id, &WipeReport::default()).unwrap();
        let events = events_of(&r, id);
        assert_eq!(
            events,
            vec![
                (
                    "wipe_ordered".to_string(),
                    serde_json::json!({ "mode": "now" })
                ),
                ("wiped".to_string(), serde_json::to_value(&report).unwrap()),
            ]
        );
        let all = r.device_events().unwrap();
        assert_eq!(all[0].device_name.as_deref(), Some("rep laptop"));
        assert!(all[0].seq < all[1].seq && all[0].at <= all[1].at);
        // A wiped device cannot be ordered again; nor can a device nobody has.
        assert!(r.order_wipe("rep laptop", WipeOrder::Now).is_err());
        assert!(r.order_wipe("nobody", WipeOrder::Now).is_err());
        // The trail is append-only.
        assert!(raw_execute(&r, "DELETE FROM device_events").is_err());
        let err = raw_execute(&r, "UPDATE device_events SET at = 0").unwrap_err();
        assert!(err.contains("append-only"), "{err}");
        assert_eq!(r.device_events().unwrap().len(), 2);

        // A device revoked earlier may still be ordered wiped, by id; enrolling its id again
        // takes it back and cancels the order.
        let b = r
            .enrol_device(None, "old laptop", Role::Rep, &["north".into()])
            .unwrap();
        r.revoke("old laptop").unwrap();
        assert!(
            r.authenticate(b.device_id, Some(&b.secret))
                .unwrap()
                .is_none()
        );
        let by_id = b.device_id.to_string();
        assert!(
            r.order_wipe(&by_id, WipeOrder::AfterUpload).is_err(),
            "a revoked device cannot upload first"
        );
        let ordered = r.order_wipe(&by_id, WipeOrder::Now).unwrap();
        assert_eq!(ordered.devices, vec![b.device_id]);
        assert!(
            r.authenticate(b.device_id, Some(&b.secret))
                .unwrap()
                .is_some()
        );
        let again = r
            .enrol_device(
                Some(b.device_id),
                "old laptop",
                Role::Rep,
                &["north".into()],
            )
            .unwrap();
        let info = r
            .authenticate(b.device_id, Some(&again.secret))
            .unwrap()
            .unwrap();
        assert!(r.device_grant(b.device_id).unwrap().is_some());
        assert_eq!(
            RelayStorage::device_policy(&mut r, &info).unwrap().wipe,
            None
        );
    });
}

/// A wipe after upload leaves the device active: its uploads are still accepted (what it
/// holds unsent reaches the relay) until it reports the wipe; then it is revoked.
#[test]
fn a_device_ordered_wiped_after_upload_uploads_until_it_reports_the_wipe() {
    each_backend(|open| {
        let mut r = open();
        let mut a = device(Role::Rep, &["north"]);
        let id = a.info.device_id;
        let e = r
            .enrol_device(Some(id), "leaver", Role::Rep, &["north".into()])
            .unwrap();
        let c = a.customer("Zeta Mining", "north");
        let ordered = r
            .order_wipe(&id.to_string(), WipeOrder::AfterUpload)
            .unwrap();
        assert_eq!((ordered.devices, ordered.tokens), (vec![id], 0));
        assert!(r.device_grant(id).unwrap().is_some(), "not revoked yet");
        assert!(r.authenticate(id, Some(&e.secret)).unwrap().is_some());
        assert!(r.authenticate(id, Some("wrong")).unwrap().is_none());
        let policy = RelayStorage::device_policy(&mut r, &a.info).unwrap();
        assert_eq!(policy.wipe, Some(WipeOrder::AfterUpload));
        let out = r.append(&a.info, &a.outbox(), false).unwrap();
        assert_eq!(stored(&out), 1, "{out:?}");
        // Escalating to a wipe now revokes it at once.
        let listed = r.devices().unwrap();
        assert_eq!(listed[0].pending_wipe(), Some(WipeOrder::AfterUpload));
        assert!(listed[0].revoked_at.is_none());
        RelayStorage::record_wiped(
            &mut r,
            id,
            &WipeReport {
                files_removed: 3,
                ..WipeReport::default()
            },
        )
        .unwrap();
        assert!(r.device_grant(id).unwrap().is_none());
        assert!(r.authenticate(id, Some(&e.secret)).unwrap().is_none());
        a.edit(
            c,
            CustomerEdit::Set(CustomerField::Industry, "mining".into()),
        );
        let later = a.outbox().split_off(1);
        let out = r.append(&a.info, &later, false).unwrap();
        assert_eq!(refusals(&out).len(), 1, "{out:?}");
        let events: Vec<String> = events_of(&r, id).into_iter().map(|(e, _)| e).collect();
        assert_eq!(events, ["wipe_ordered", "wiped"]);
        assert_eq!(
            events_of(&r, id)[0].1,
            serde_json::json!({ "mode": "after_upload" })
        );

        // An order after upload escalated to now revokes at once.
        let mut b = device(Role::Rep, &["north"]);
        let eb = r
            .enrol_device(
                Some(b.info.device_id),
                "second",
                Role::Rep,
                &["north".into()],
            )
            .unwrap();
        r.order_wipe("second", WipeOrder::AfterUpload).unwrap();
        r.order_wipe("second", WipeOrder::Now).unwrap();
        assert!(r.device_grant(b.info.device_id).unwrap().is_none());
        assert!(
            r.authenticate(b.info.device_id, Some(&eb.secret))
                .unwrap()
                .is_some()
        );
        assert_eq!(
            RelayStorage::device_policy(&mut r, &b.info).unwrap().wipe,
            Some(WipeOrder::Now)
        );
        b.customer("Late Co", "north");
        let out = r.append(&b.info, &b.outbox(), false).unwrap();
        assert_eq!(refusals(&out).len(), 1, "{out:?}");
    });
}

/// The offline lease a device is sent: its own (`device lease`), else its role's from the
/// configuration, else the relay's default; 0 days at any level is no lease.
#[test]
fn the_offline_lease_is_the_devices_then_its_roles_then_the_relays() {
    let options = RelayStoreOptions {
        offline_lease: OfflineLease {
            days: 30,
            by_role: [(Role::Rep, 14), (Role::Admin, 0)].into_iter().collect(),
        },
        ..opts()
    };
    each_backend_with(options, |open| {
        let mut r = open();
        let enrol = |name: &str, role: Role| {
            let e = r.enrol_device(None, name, role, &["north".into()]).unwrap();
            r.authenticate(e.device_id, Some(&e.secret))
                .unwrap()
                .unwrap()
        };
        let rep = enrol("rep laptop", Role::Rep);
        let manager = enrol("manager laptop", Role::Manager);
        let admin = enrol("admin laptop", Role::Admin);
        let mut lease = |d: &DeviceInfo| RelayStorage::device_policy(&mut r, d).unwrap().lease_days;
        assert_eq!(lease(&rep), Some(14), "the role's");
        assert_eq!(lease(&manager), Some(30), "the relay's");
        assert_eq!(lease(&admin), None, "0 for the role: none");
        assert_eq!(
            r.set_lease("rep laptop", Some(7)).unwrap(),
            vec![rep.device_id]
        );
        assert_eq!(
            r.set_lease(&admin.device_id.to_string(), Some(5))
                .unwrap()
                .len(),
            1
        );
        r.set_lease("manager laptop", Some(0)).unwrap();
        let mut lease = |d: &DeviceInfo| RelayStorage::device_policy(&mut r, d).unwrap().lease_days;
        assert_eq!(lease(&rep), Some(7), "the device's own");
        assert_eq!(lease(&admin), Some(5));
        assert_eq!(lease(&manager), None, "0 of its own: none");
        let listed = r.devices().unwrap();
        let rec = listed
            .iter()
            .find(|d| d.device_id == rep.device_id)
            .unwrap();
        assert_eq!(
            (rec.lease_days, rec.effective_lease_days),
            (Some(7), Some(7))
        );
        let rec = listed
            .iter()
            .find(|d| d.device_id == manager.device_id)
            .unwrap();
        assert_eq!((rec.lease_days, rec.effective_lease_days), (Some(0), None));
        // Back to the role's default.
        r.set_lease("rep laptop", None).unwrap();
        assert_eq!(
            RelayStorage::device_policy(&mut r, &rep)
                .unwrap()
                .lease_days,
            Some(14)
        );
        assert_eq!(
            events_of(&r, rep.device_id),
            vec![
                ("lease_set".to_string(), serde_json::json!({ "days": 7 })),
                ("lease_set".to_string(), serde_json::json!({ "days": null })),
            ]
        );
        // Refused: nobody, too long, a revoked device.
        assert!(r.set_lease("nobody", Some(3)).is_err());
        assert!(r.set_lease("rep laptop", Some(MAX_LEASE_DAYS + 1)).is_err());
        r.revoke("rep laptop").unwrap();
        assert!(r.set_lease("rep laptop", Some(3)).is_err());
    });
    // Without any configuration, no lease.
    each_backend(|open| {
        let mut r = open();
        let e = r
            .enrol_device(None, "rep laptop", Role::Rep, &["north".into()])
            .unwrap();
        let d = r
            .authenticate(e.device_id, Some(&e.secret))
            .unwrap()
            .unwrap();
        assert_eq!(
            RelayStorage::device_policy(&mut r, &d).unwrap(),
            DevicePolicy::default()
        );
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

#[test]
fn a_download_lane_reads_its_customers_documents_and_the_rest_reads_every_other() {
    each_backend(|open| {
        let mut r = open();
        let mut a = device(Role::Rep, &["north"]);
        let first = a.customer("Alpha Quarry", "north");
        let visit = a.visit(first, "north");
        let other = a.customer("Zeta Mining", "north");
        let other_visit = a.visit(other, "north");
        let up = a.outbox();
        assert_eq!(stored(&r.append(&a.info, &up, false).unwrap()), up.len());
        let upto = r.high_seq().unwrap();
        // Written after the lane began: the rest of the log carries it, whoever it is for.
        a.edit(
            first,
            CustomerEdit::Set(CustomerField::Industry, "quarry".into()),
        );
        let later = a.outbox();
        let later = &later[up.len()..];
        assert_eq!(stored(&r.append(&a.info, later, false).unwrap()), 1);
        let customers = [first];
        let lane_first = Lane::First {
            customers: &customers,
            upto: u64::MAX,
        };
        let lane_rest = Lane::Rest {
            customers: &customers,
            upto: u64::MAX,
        };
        let ids = |page: Vec<(DocId, Vec<u8>)>| {
            let mut v: Vec<DocId> = page.into_iter().map(|(id, _)| id).collect();
            v.sort();
            v
        };
        let sorted = |mut v: Vec<DocId>| {
            v.sort();
            v
        };
        for scope in ["north", "*"] {
            let (page, more) = r
                .read_snapshots(scope, None, usize::MAX, lane_first)
                .unwrap();
            assert!(!more);
            assert_eq!(ids(page), sorted(vec![first, visit]), "{scope}");
            let (page, _) = r
                .read_snapshots(scope, None, usize::MAX, lane_rest)
                .unwrap();
            assert_eq!(ids(page), sorted(vec![other, other_visit]), "{scope}");
            // The log: the first lane ends at `upto`; the rest leaves out only what it sent.
            let lane = Lane::First {
                customers: &customers,
                upto,
            };
            let (log, _) = r.read_log(scope, 0, usize::MAX, lane).unwrap();
            assert!(
                log.iter()
                    .all(|e| e.seq <= upto && (e.doc_id == first || e.doc_id == visit))
            );
            assert_eq!(log.len(), 2, "{scope}: {log:?}");
            let lane = Lane::Rest {
                customers: &customers,
                upto,
            };
            let (rest, _) = r.read_log(scope, 0, usize::MAX, lane).unwrap();
            let mut seqs: Vec<u64> = log.iter().chain(&rest).map(|e| e.seq).collect();
            seqs.sort_unstable();
            assert_eq!(
                seqs,
                (1..=upto + 1).collect::<Vec<_>>(),
                "{scope}: every entry once"
            );
            assert_eq!(rest.last().map(|e| e.doc_id), Some(first), "{scope}");
        }
    });
}

/// The live tail (`crate::fanout`) answers every log read exactly as the store does: for
/// every scope, cursor and budget, whether it holds the whole log, only its newest entries,
/// or a log with scope moves (whose `Leave` entries it leaves to the store).
#[test]
fn the_live_tail_answers_every_read_as_the_store_does() {
    use crate::fanout::{Fanout, LiveStore};
    each_backend(|open| {
        let mut r = open();
        let mut a = device(Role::Rep, &["north"]);
        let c1 = a.customer("Zeta Mining", "north");
        let c2 = a.customer("Alpha Quarry", "north");
        r.append(&a.info, &a.outbox(), false).unwrap();
        let mut b = device(Role::Rep, &["south"]);
        b.customer("Steppe Farms", "south");
        r.append(&b.info, &b.outbox(), false).unwrap();
        for n in 0..3 {
            a.edit(
                c1,
                CustomerEdit::Set(CustomerField::Industry, format!("mining {n}")),
            );
            a.edit(
                c2,
                CustomerEdit::Set(CustomerField::Industry, format!("quarry {n}")),
            );
            r.append(&a.info, &a.outbox(), false).unwrap();
        }
        // A manager moves one customer south, edits it there and moves it back.
        let mut m = device(Role::Manager, &["north", "south"]);
        m.store
            .transaction(|tx| {
                for e in r.read_log("*", 0, usize::MAX, Lane::All).unwrap().0 {
                    if let Entry::Changes(c) = e.entry {
                        let raw: Vec<Vec<u8>> = c.into_iter().map(|b| b.0).collect();
                        tx.apply_changes(e.doc_id, &raw)?;
                    }
                }
                Ok(())
            })
            .unwrap();
        m.edit(c1, CustomerEdit::SetScope("south".into()));
        r.append(&m.info, &m.outbox(), false).unwrap();
        m.edit(
            c1,
            CustomerEdit::Set(CustomerField::Industry, "moved".into()),
        );
        r.append(&m.info, &m.outbox(), false).unwrap();
        m.edit(c1, CustomerEdit::SetScope("north".into()));
        r.append(&m.info, &m.outbox(), false).unwrap();
        a.edit(
            c2,
            CustomerEdit::Set(CustomerField::Industry, "last".into()),
        );
        r.append(&a.info, &a.outbox(), false).unwrap();
        let high = r.high_seq().unwrap();
        assert!(high > 10, "{high}");

        // The whole log in memory; its newer half; a tail too small to hold more than a few.
        for (start, cap) in [(0, 1 << 20), (high / 2, 1 << 20), (0, 2_000)] {
            let fanout = Fanout::new(&r, start, cap);
            fanout.catch_up(&r).unwrap();
            let mut live = LiveStore {
                store: r.clone(),
                fanout: fanout.clone(),
            };
            for scope in ["north", "south", "*", "elsewhere"] {
                for after in 0..=high + 1 {
                    for budget in [1, 300, usize::MAX] {
                        let want = r.read_log(scope, after, budget, Lane::All).unwrap();
                        let got =
                            RelayStorage::read_log(&mut live, scope, after, budget, Lane::All)
                                .unwrap();
                        assert_eq!(
                            got, want,
                            "{scope} after {after}, budget {budget}, tail from {start} holding {cap}"
                        );
                    }
                }
            }
        }
        // A tail behind what the store committed does not answer before the follower caught
        // up: a session sees every acknowledged change, as a read of the store does. It waits
        // for the follower (here, one that comes 50 ms later), or else reads the store.
        for follower in [true, false] {
            let fanout = Fanout::new(&r, 0, 1 << 20);
            fanout.catch_up(&r).unwrap();
            a.edit(
                c2,
                CustomerEdit::Set(CustomerField::Industry, "newest".into()),
            );
            r.append(&a.info, &a.outbox(), false).unwrap();
            let mut live = LiveStore {
                store: r.clone(),
                fanout: fanout.clone(),
            };
            let want = r.read_log("north", high, usize::MAX, Lane::All).unwrap();
            assert_eq!(want.0.len(), 1);
            std::thread::scope(|s| {
                if follower {
                    let (f, r) = (fanout.clone(), r.clone());
                    s.spawn(move || {
                        std::thread::sleep(Duration::from_millis(50));
                        f.catch_up(&r).unwrap();
                    });
                }
                let got = RelayStorage::read_log(&mut live, "north", high, usize::MAX, Lane::All)
                    .unwrap();
                assert_eq!(got, want, "with a follower: {follower}");
            });
        }
    });
}

/// Uploads that queue while the writer is busy are written in one transaction, the same
/// document included: each is judged on its own and stored, and the relay's copy of the
/// document holds every one of them.
#[test]
fn uploads_queued_together_are_each_stored_in_one_transaction() {
    each_backend(|open| {
        let mut r = open();
        let mut a = device(Role::Rep, &["north"]);
        let c = a.customer("Zeta Mining", "north");
        let created = a.outbox();
        assert_eq!(stored(&r.append(&a.info, &created, false).unwrap()), 1);
        // Six more laptops hold the customer and each changes its notes.
        let uploads: Vec<(DeviceInfo, Vec<UploadChange>)> = (0..6)
            .map(|i| {
                let mut b = device(Role::Rep, &["north"]);
                b.store
                    .transaction(|tx| tx.apply_changes(c, &[created[0].bytes.clone()]))
                    .unwrap();
                b.edit(
                    c,
                    CustomerEdit::Set(CustomerField::ShortName, format!("Zeta {i}")),
                );
                let change = b.outbox().pop().unwrap();
                (b.info.clone(), vec![change])
            })
            .collect();
        let before = r.write_stats();
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let (taken, is_taken) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let busy = r.clone();
            s.spawn(move || {
                busy.holding_writer(|| {
                    taken.send(()).unwrap();
                    let _ = held.recv();
                })
                .unwrap()
            });
            is_taken.recv().unwrap();
            let appends: Vec<_> = uploads
                .iter()
                .map(|(info, up)| {
                    let mut r = r.clone();
                    s.spawn(move || r.append(info, up, false).unwrap())
                })
                .collect();
            let deadline = Instant::now() + Duration::from_secs(10);
            while r.write_stats().queued < uploads.len() {
                assert!(Instant::now() < deadline, "{:?}", r.write_stats());
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(hold);
            for a in appends {
                assert_eq!(stored(&a.join().unwrap()), 1);
            }
        });
        let after = r.write_stats();
        assert_eq!(after.uploads - before.uploads, 6);
        assert_eq!(after.transactions - before.transactions, 1, "{after:?}");
        assert_eq!(after.queued, 0);
        assert_eq!(r.high_seq().unwrap(), 7);
        // The stored document holds all six edits as concurrent heads.
        let (snaps, _) = r
            .read_snapshots("north", None, usize::MAX, Lane::All)
            .unwrap();
        let mut doc = load_snapshot(&snaps[0].1).unwrap();
        assert_eq!(doc.get_heads().len(), 6);
        assert_eq!(r.status().unwrap().changes, 7);
    });
}

/// The attachment rules over each backend's store: who reaches an attachment follows the
/// documents that refer to it (and their scopes, and moves), an upload cut anywhere resumes,
/// a download gives the bytes back, and the collector removes only what no document keeps.
#[test]
fn attachments_follow_their_documents() {
    use fieldsync_core::attachment::entry::{AttachmentEdit, AttachmentInput};
    use fieldsync_core::attachment::pieces::{decode_piece, encode_piece, outboard, piece_range};
    use fieldsync_core::attachment::relay::{
        BlobDb, BlobLimits, BlobSession, Collect, collect_garbage,
    };
    use fieldsync_core::protocol::Message;
    const DAY: i64 = 24 * 3600 * 1000;

    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let size = data.len() as u64;
    let (hash, ob) = outboard(&data[..], size).unwrap();
    let piece = |i: u32| {
        let r = piece_range(size, i).unwrap();
        Message::BlobPiece {
            hash: hash.0,
            index: i,
            encoded: encode_piece(hash, size, &ob, i, &data[r.start as usize..r.end as usize])
                .unwrap(),
        }
    };
    let one = |r: Result<Result<Vec<Message>, String>, RelayStoreError>| {
        let mut v = r.unwrap().unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    };
    each_backend(|open| {
        let mut r = open();
        let blobs = RelayBlobs::open(&r).unwrap();
        let mut a = device(Role::Rep, &["north"]);
        let south = device(Role::Rep, &["south"]);
        let c = a.customer("Baotou Mining", "north");
        let put = Message::BlobPut { hash: hash.0, size };
        // Before any document refers to it, nobody may upload it.
        let mut s = BlobSession::new(a.info.clone(), BlobLimits::default());
        assert!(matches!(
            one(s.handle(&blobs, put.clone(), 0)),
            Message::BlobRefused { retry: true, .. }
        ));
        let ctx = a.ctx();
        a.store
            .edit(c, |d| {
                fieldsync_core::attachment::entry::apply(
                    d,
                    &AttachmentEdit::Add(
                        "x1".into(),
                        AttachmentInput {
                            hash: Some(hash),
                            size,
                            media_type: "application/pdf".into(),
                            name: "receipt.pdf".into(),
                            ..Default::default()
                        },
                    ),
                    &ctx,
                )
            })
            .unwrap();
        let out = r.append(&a.info, &a.outbox(), false).unwrap();
        assert_eq!(stored(&out), 2, "{out:?}");
        assert!(blobs.referenced_in(&a.info, hash).unwrap());
        assert!(!blobs.referenced_in(&south.info, hash).unwrap());
        // Cut after two pieces; a new stream resumes from there.
        assert!(matches!(
            one(s.handle(&blobs, put.clone(), 1)),
            Message::BlobStored {
                stored: 0,
                count: 5,
                ..
            }
        ));
        for i in 0..2 {
            one(s.handle(&blobs, piece(i), 1));
        }
        let mut s = BlobSession::new(a.info.clone(), BlobLimits::default());
        assert!(matches!(
            one(s.handle(&blobs, put.clone(), 1)),
            Message::BlobStored { stored: 2, .. }
        ));
        for i in 2..5 {
            one(s.handle(&blobs, piece(i), 1));
        }
        assert!(blobs.blob(hash).unwrap().unwrap().complete);
        // The audit trail has the upload, by whom, and the document that refers to it.
        let ups = blobs.uploads(None, None, 10).unwrap();
        assert_eq!(ups.len(), 1, "{ups:?}");
        assert_eq!(
            (ups[0].hash, ups[0].size, ups[0].device_id),
            (hash, size, a.info.device_id)
        );
        assert_eq!(ups[0].docs, vec![c]);
        assert!(blobs.uploads(Some("nobody"), None, 10).unwrap().is_empty());
        let by_id = a.info.device_id.to_string();
        assert_eq!(blobs.uploads(Some(&by_id), None, 10).unwrap().len(), 1);
        // Fetched back whole and verified.
        let get = Message::BlobGet {
            hash: hash.0,
            from: 0,
        };
        assert!(matches!(
            one(s.handle(&blobs, get.clone(), 1)),
            Message::BlobSending { size: 300_000, .. }
        ));
        let mut got = Vec::new();
        while let Some(Message::BlobPiece { index, encoded, .. }) = s.next_piece(&blobs).unwrap() {
            got.extend(decode_piece(hash, size, index, &encoded).unwrap());
        }
        assert_eq!(got, data);
        let mut other = BlobSession::new(south.info.clone(), BlobLimits::default());
        assert!(matches!(
            one(other.handle(&blobs, get, 1)),
            Message::BlobRefused { retry: false, .. }
        ));
        // Kept while referenced; once the entry is removed, collected after a day.
        assert_eq!(
            collect_garbage(&blobs, 5 * DAY, Collect::default())
                .unwrap()
                .unreferenced,
            0
        );
        let ctx = a.ctx();
        a.store
            .edit(c, |d| {
                fieldsync_core::attachment::entry::apply(
                    d,
                    &AttachmentEdit::Remove("x1".into()),
                    &ctx,
                )
            })
            .unwrap();
        r.append(&a.info, &a.outbox(), false).unwrap();
        assert!(!blobs.referenced(hash).unwrap());
        let done = collect_garbage(&blobs, 5 * DAY, Collect::default()).unwrap();
        assert_eq!((done.unreferenced, done.bytes), (1, 300_000));
        assert!(blobs.blob(hash).unwrap().is_none());
        assert_eq!(blobs.piece(hash, 0).unwrap(), None);
    });
}

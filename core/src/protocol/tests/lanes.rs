//! Download lanes: the customers a laptop names first arrive first, and the lanes together
//! deliver every document and change once, across cut sessions.

use super::*;

fn add_visit(store: &mut Store, customer: DocId, at: Option<i64>) -> DocId {
    store
        .create(|d, id| {
            create_visit(
                d,
                id,
                "o",
                "north",
                &NewVisit {
                    customer_id: customer.into(),
                    kind: None,
                    notes: Some("bring the brochure for the new loader; ".repeat(4)),
                    status: VisitStatus::Planned,
                    at,
                    location: None,
                },
                &ctx(),
            )
        })
        .unwrap()
        .id
}

fn small() -> (ClientConfig, RelayLimits) {
    (
        ClientConfig {
            upload_changes: 50,
            pull_bytes: 16 << 10,
            ..Default::default()
        },
        RelayLimits {
            max_batch_bytes: 16 << 10,
            ..Default::default()
        },
    )
}

/// What one session downloaded.
#[derive(Debug, Default)]
struct Got {
    /// The documents of the first download batch, in order.
    first_batch: Vec<DocId>,
    snapshots: usize,
    changes: usize,
}

/// Runs one session naming `first`, counting what its download batches carry; with `cut`,
/// the link dies once the first flight is answered.
fn session(store: &mut Store, relay: &mut MemRelay, first: &[DocId], cut: bool) -> Got {
    let (cfg, limits) = small();
    let mut cs = ClientSession::new(ClientConfig {
        first: first.to_vec(),
        ..cfg
    });
    let mut rs = RelaySession::new(limits);
    let mut got = Got::default();
    let mut send = cs.step(store, ClientInput::Open, 0).unwrap().send;
    let names: Vec<&str> = send.iter().map(Message::name).collect();
    assert_eq!(names.contains(&"First"), !first.is_empty(), "{names:?}");
    for round in 1..1000 {
        let mut answers = Vec::new();
        for m in send.drain(..) {
            let out = rs.handle(relay, m);
            assert!(!out.close, "{out:?}");
            answers.extend(out.messages);
        }
        answers.extend(rs.poll_live(relay).messages);
        for m in answers {
            if let Message::Batch { items, .. } = &m {
                if got.first_batch.is_empty() {
                    got.first_batch = items.iter().map(|i| i.doc_id).collect();
                }
                for i in items {
                    match &i.entry {
                        Entry::Snapshot(_) => got.snapshots += 1,
                        Entry::Changes(c) => got.changes += c.len(),
                        _ => {}
                    }
                }
            }
            send.extend(cs.step(store, ClientInput::Message(m), round).unwrap().send);
        }
        if cut {
            return got;
        }
        if send.is_empty() {
            let step = cs.step(store, ClientInput::Poll, round).unwrap();
            if step.synced {
                return got;
            }
            send = step.send;
        }
    }
    panic!("the session did not finish");
}

#[test]
fn a_fresh_laptop_gets_its_first_customers_first_and_every_document_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut office = Store::open(dir.path().join("office.db")).unwrap();
    let mut laptop = Store::open(dir.path().join("laptop.db")).unwrap();
    let mut relay = MemRelay::new();
    let customers: Vec<DocId> = (0..150)
        .map(|i| {
            add_customer(
                &mut office,
                &format!("customer {i:03} of the northern district"),
            )
        })
        .collect();
    // Tomorrow's customers sort last by id, so only a lane brings them early.
    let mut by_id = customers.clone();
    by_id.sort();
    let urgent = [by_id[149], by_id[148]];
    let visits = [
        add_visit(&mut office, urgent[0], None),
        add_visit(&mut office, urgent[1], None),
    ];
    run(&mut office, &mut relay);

    let cut = session(&mut laptop, &mut relay, &urgent, true);
    // The first batch holds the urgent customers and their visits, and nothing else.
    let mut want: Vec<DocId> = urgent.iter().chain(&visits).copied().collect();
    want.sort();
    let mut got = cut.first_batch.clone();
    got.sort();
    assert_eq!(got, want);
    for id in &want {
        assert!(laptop.contains(*id).unwrap());
    }
    // The cut session's cursor carries the lane on: the next session (naming nobody) gets the
    // rest, and nothing twice.
    let rest = session(&mut laptop, &mut relay, &[], false);
    assert_eq!(cut.snapshots + rest.snapshots, 152, "{cut:?} {rest:?}");
    assert_eq!(laptop.doc_count().unwrap(), 152);
    for id in &customers {
        assert_eq!(laptop.document(*id).unwrap(), office.document(*id).unwrap());
    }
}

#[test]
fn a_catch_up_brings_the_first_customers_changes_first_and_every_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut office = Store::open(dir.path().join("office.db")).unwrap();
    let mut laptop = Store::open(dir.path().join("laptop.db")).unwrap();
    let mut relay = MemRelay::new();
    let customers: Vec<DocId> = (0..60)
        .map(|i| add_customer(&mut office, &format!("customer {i:02}")))
        .collect();
    run(&mut office, &mut relay);
    run(&mut laptop, &mut relay);
    // Two weeks of the office's edits, the urgent customer's last.
    let urgent = customers[0];
    let visit = add_visit(&mut office, urgent, None);
    for round in 0..3 {
        for id in customers.iter().rev() {
            office
                .edit(*id, |d| {
                    apply_edit(
                        d,
                        &Edit::Customer(CustomerEdit::Set(
                            CustomerField::Industry,
                            format!("round {round}: {}", "quarrying and earthmoving ".repeat(6)),
                        )),
                        &ctx(),
                    )
                })
                .unwrap();
        }
    }
    run(&mut office, &mut relay);

    let cut = session(&mut laptop, &mut relay, &[urgent], true);
    // The new visit (logged first), then the customer's edits, in a batch of their own.
    assert_eq!(cut.first_batch, [visit, urgent]);
    // Cut again in the middle of the rest, then finished by a session naming someone else.
    let again = session(&mut laptop, &mut relay, &[], true);
    let rest = session(&mut laptop, &mut relay, &[customers[30]], false);
    assert_eq!(
        cut.changes + again.changes + rest.changes,
        1 + 3 * 60,
        "every new change once: {cut:?} {again:?} {rest:?}"
    );
    for id in customers.iter().chain([&visit]) {
        assert_eq!(laptop.document(*id).unwrap(), office.document(*id).unwrap());
    }
    // The replica's cursor is the plain log at the relay's end.
    let cursor = ClientSession::load_cursor(&laptop).unwrap().unwrap();
    let high = relay.high_seq().unwrap();
    assert!(
        cursor
            .scopes
            .values()
            .all(|sc| *sc == ScopeCursor::Log { seq: high }),
        "{cursor:?}"
    );
}

#[test]
fn a_laptop_names_its_planned_visits_and_recent_work_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut laptop = Store::open(dir.path().join("laptop.db")).unwrap();
    let now = 1_800_000_000_000i64;
    let day = 24 * 3_600_000;
    let tomorrow = add_customer(&mut laptop, "tomorrow");
    let next_month = add_customer(&mut laptop, "next month");
    add_visit(&mut laptop, tomorrow, Some(now + day));
    add_visit(&mut laptop, next_month, Some(now + 30 * day));
    // Everything here is unsent local work, so every customer is named: the planned visit's
    // first.
    let first = laptop.first_customers(now, 10).unwrap();
    assert_eq!(first.first(), Some(&tomorrow), "{first:?}");
    assert!(first.contains(&next_month));
    assert_eq!(laptop.first_customers(now, 1).unwrap(), [tomorrow]);
}

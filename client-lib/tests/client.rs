//! Tests of the embeddable client API.

use std::time::Duration;

use fieldsync_client::*;
use serde_json::json;

const DAY: Millis = 24 * 3600 * 1000;

fn open(dir: &tempfile::TempDir, name: &str) -> Client {
    Client::open(dir.path().join(name)).expect("open replica")
}

fn customer(client: &Client, name: &str, scope: &str, phone: Option<&str>) -> CustomerId {
    client
        .customers()
        .create(NewCustomer {
            scope: scope.into(),
            name: name.into(),
            phone: phone.map(str::to_string),
            ..Default::default()
        })
        .expect("create customer")
}

fn names(rows: &[CustomerRow]) -> Vec<&str> {
    rows.iter().map(|r| r.name.as_str()).collect()
}

fn as_manager(client: &Client) {
    client
        .set_identity(Identity::new("mgr-1", Role::Manager, "acme"))
        .unwrap();
}

fn new_visit(customer_id: DocId, at: Option<Millis>, status: VisitStatus) -> NewVisit {
    NewVisit {
        customer_id: customer_id.into(),
        kind: Some("sales_call".into()),
        notes: Some("met the purchaser".into()),
        status,
        at,
        location: None,
    }
}

fn new_quote(customer_id: DocId, no: &str) -> NewQuote {
    NewQuote {
        customer_id: customer_id.into(),
        currency: "CNY".into(),
        quote_no: Some(no.into()),
        valid_until: None,
    }
}

#[test]
fn identity_defaults_to_the_device_and_is_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let client = Client::open(&path).unwrap();
    assert_eq!(client.path(), path);
    let id = client.identity().unwrap();
    assert_eq!(id.author, client.device_id().to_string());
    assert_eq!(id.role, Role::Rep);
    assert_eq!(id.org, "default");

    // The default identity is used for edits.
    let c = customer(&client, "Default Co", "north", None);
    let got = client.customers().get(c).unwrap();
    assert_eq!(got.header.org, "default");
    assert_eq!(got.header.created_by, client.device_id().to_string());

    client
        .set_identity(Identity::new("li.wei", Role::Manager, "acme"))
        .unwrap();
    let c2 = customer(&client, "Acme Co", "north", None);
    let got = client.customers().get(c2).unwrap();
    assert_eq!(got.header.org, "acme");
    assert_eq!(got.header.created_by, "li.wei");
    drop(client);

    let reopened = Client::open(&path).unwrap();
    assert_eq!(
        reopened.identity().unwrap(),
        Identity::new("li.wei", Role::Manager, "acme")
    );
    // An explicit org wins over the identity's.
    let other = reopened
        .customers()
        .create(NewCustomer {
            org: "dealer-7".into(),
            scope: "south".into(),
            name: "Dealer Customer".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        reopened.customers().get(other).unwrap().header.org,
        "dealer-7"
    );

    for bad in [
        Identity::new("", Role::Rep, "acme"),
        Identity::new("x", Role::Rep, "  "),
    ] {
        assert!(matches!(
            reopened.set_identity(bad),
            Err(ClientError::InvalidInput(_))
        ));
    }

    // A damaged saved identity is an error, not a panic, and can be overwritten.
    reopened.with_store(|s| s.set_meta(IDENTITY_META_KEY, b"{not json").unwrap());
    assert!(matches!(reopened.identity(), Err(ClientError::Corrupt(_))));
    assert!(matches!(
        reopened.customers().set_name(c, "X"),
        Err(ClientError::Corrupt(_))
    ));
    reopened
        .set_identity(Identity::new("rep-2", Role::Rep, "acme"))
        .unwrap();
    reopened.customers().set_name(c, "Renamed").unwrap();
    assert_eq!(reopened.customers().get(c).unwrap().name, "Renamed");
}

#[test]
fn customers_are_created_edited_and_listed_sorted_and_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir, "r.db");
    let zeta = customer(&client, "Zeta Mining", "north", None);
    let alpha = customer(&client, "alpha quarry", "north", None);
    let beta = customer(&client, "Beta Cement", "south", None);
    let alpha2 = customer(&client, "Alpha Quarry", "south", None);

    let all = client.customers().list(&CustomerFilter::new()).unwrap();
    assert_eq!(all.len(), 4);
    // Case-insensitive name order, ties broken by id (creation order for UUIDv7).
    let mut expected = vec![(alpha, "alpha quarry"), (alpha2, "Alpha Quarry")];
    expected.sort_by_key(|(id, _)| id.to_string());
    let first_two: Vec<(CustomerId, &str)> =
        all[..2].iter().map(|r| (r.id, r.name.as_str())).collect();
    assert_eq!(first_two, expected);
    assert_eq!(names(&all[2..]), ["Beta Cement", "Zeta Mining"]);
    assert_eq!(all[3].id, zeta);
    assert_eq!(all[2].stage, "potential");
    assert_eq!(all[2].scope, "south");
    assert!(!all[2].archived);

    let north = client
        .customers()
        .list(&CustomerFilter::new().scope("north"))
        .unwrap();
    assert_eq!(north.len(), 2);
    assert!(north.iter().all(|r| r.scope == "north"));

    let page = client
        .customers()
        .list(&CustomerFilter::new().page(2, 1))
        .unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].id, all[1].id);
    assert_eq!(page[1].id, all[2].id);

    let found = client
        .customers()
        .list(&CustomerFilter::new().search("QUARRY"))
        .unwrap();
    assert_eq!(found.len(), 2);
    // LIKE wildcards in the search text are literal.
    assert!(
        client
            .customers()
            .list(&CustomerFilter::new().search("%"))
            .unwrap()
            .is_empty()
    );

    client.customers().set_stage(beta, "opportunity").unwrap();
    client
        .customers()
        .set(beta, CustomerField::Industry, "cement")
        .unwrap();
    let opp = client
        .customers()
        .list(&CustomerFilter::new().stage("opportunity"))
        .unwrap();
    assert_eq!(opp.len(), 1);
    assert_eq!(opp[0].industry.as_deref(), Some("cement"));

    // Owner is manager-owned: a rep is refused, a manager may assign.
    let err = client.customers().set_owner(zeta, "rep-9").unwrap_err();
    assert!(matches!(
        err,
        ClientError::Model(fieldsync_core::model::ModelError::Forbidden { .. })
    ));
    as_manager(&client);
    client.customers().set_owner(zeta, "rep-9").unwrap();
    let owned = client
        .customers()
        .list(&CustomerFilter::new().owner("rep-9"))
        .unwrap();
    assert_eq!(owned.len(), 1);
    assert_eq!(owned[0].id, zeta);
    assert_eq!(
        client.customers().get(zeta).unwrap().owner.as_deref(),
        Some("rep-9")
    );

    // Archive hides from the default listing; include_archived shows it; unarchive restores.
    client.customers().archive(zeta).unwrap();
    let visible = client.customers().list(&CustomerFilter::new()).unwrap();
    assert_eq!(visible.len(), 3);
    assert!(visible.iter().all(|r| r.id != zeta));
    let with_archived = client
        .customers()
        .list(&CustomerFilter::new().include_archived())
        .unwrap();
    assert_eq!(with_archived.len(), 4);
    assert!(with_archived.iter().any(|r| r.id == zeta && r.archived));
    assert!(client.customers().get(zeta).unwrap().header.archived);
    client.customers().unarchive(zeta).unwrap();
    assert_eq!(
        client
            .customers()
            .list(&CustomerFilter::new())
            .unwrap()
            .len(),
        4
    );

    // Invalid edits are errors and change nothing.
    assert!(client.customers().set_name(alpha, "   ").is_err());
    assert_eq!(client.customers().get(alpha).unwrap().name, "alpha quarry");
    assert!(
        client
            .customers()
            .create(NewCustomer {
                scope: "north".into(),
                name: "".into(),
                ..Default::default()
            })
            .is_err()
    );
    assert!(
        client
            .customers()
            .create(NewCustomer {
                name: "No Scope".into(),
                ..Default::default()
            })
            .is_err()
    );
}

#[test]
fn contacts_equipment_notes_and_phone_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir, "r.db");
    let acme = customer(&client, "Acme Mining", "north", Some("+86 (472) 555-0101"));
    let other = customer(&client, "Other Co", "north", Some("0472 555 0199"));

    let li = client
        .customers()
        .add_contact(
            acme,
            ContactInput {
                name: Some("Li Wei".into()),
                title: Some("Purchasing".into()),
                phone: Some("138-0000-0002".into()),
                is_purchaser: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
    let wang = client
        .customers()
        .add_contact(
            acme,
            ContactInput {
                name: Some("Wang Fang".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_ne!(li, wang);
    assert!(
        client
            .customers()
            .add_contact(acme, ContactInput::default())
            .is_err(),
        "a contact needs a name"
    );
    let eq = client
        .customers()
        .add_equipment(
            acme,
            EquipmentInput {
                model: Some("CAT 797F".into()),
                serial: Some("SN-1".into()),
                ..Default::default()
            },
        )
        .unwrap();
    client
        .customers()
        .update_equipment(
            acme,
            &eq,
            EquipmentInput {
                status: Some("down".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let addr = client
        .customers()
        .add_address(
            acme,
            AddressInput {
                city: Some("Baotou".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let note = client
        .customers()
        .add_note(acme, "Prefers mornings")
        .unwrap();
    client
        .customers()
        .add_product_line(acme, "haul-trucks")
        .unwrap();
    client.customers().add_competitor(acme, "Komatsu").unwrap();
    client
        .customers()
        .add_phone(acme, "+86 472 555 0102")
        .unwrap();
    client
        .customers()
        .propose_credit_limit(
            acme,
            Money {
                amount_minor: 5_000_000,
                currency: "CNY".into(),
            },
        )
        .unwrap();
    assert!(
        client
            .customers()
            .set_credit_limit(
                acme,
                Money {
                    amount_minor: 1,
                    currency: "CNY".into()
                }
            )
            .is_err(),
        "a rep cannot approve credit"
    );
    client
        .customers()
        .update_contact(
            acme,
            &wang,
            ContactInput {
                phone: Some("+86 139 1111 2222".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(
        client
            .customers()
            .update_contact(acme, "no-such-contact", ContactInput::default())
            .is_err()
    );

    let c = client.customers().get(acme).unwrap();
    assert_eq!(c.contacts.len(), 2);
    let li_c = c.contacts.iter().find(|k| k.id == li).unwrap();
    assert_eq!(li_c.name, "Li Wei");
    assert!(li_c.is_purchaser);
    assert_eq!(c.equipment.len(), 1);
    assert_eq!(c.equipment[0].id, eq);
    assert_eq!(c.equipment[0].status.as_deref(), Some("down"));
    assert_eq!(c.addresses[0].id, addr);
    assert_eq!(c.notes[0].id, note);
    assert_eq!(c.notes[0].text, "Prefers mornings");
    assert_eq!(c.product_lines, ["haul-trucks"]);
    assert_eq!(c.competitors, ["Komatsu"]);
    assert_eq!(c.phones.len(), 2);
    assert_eq!(
        c.proposed_credit_limit.as_ref().map(|m| m.amount_minor),
        Some(5_000_000)
    );
    assert_eq!(c.credit_limit, None);

    let by = |p: &str| -> Vec<CustomerId> {
        client
            .customers()
            .find_by_phone(p)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(by("+864725550101"), [acme]);
    assert_eq!(by(" +86 472-555-0101 "), [acme]);
    assert_eq!(by("+86 472 555 0102"), [acme]);
    // Contact phones are indexed too.
    assert_eq!(by("13800000002"), [acme]);
    assert_eq!(by("+86-139-1111-2222"), [acme]);
    assert_eq!(by("04725550199"), [other]);
    // Without the country code, the number still finds numbers stored with one…
    assert_eq!(by("472 555 0101"), [acme]);
    assert_eq!(by("(139) 1111-2222"), [acme]);
    // …but not from a short fragment, nor across a different country code.
    assert!(by("5550101").len() == 1 && by("550101").is_empty());
    assert!(by("+1 472 555 0101").is_empty());
    assert!(by("999").is_empty());
    assert!(by("call me").is_empty());
    assert!(by("").is_empty());

    // Two customers sharing a number are both found, sorted by name.
    client
        .customers()
        .add_phone(other, "+86 472 555 0101")
        .unwrap();
    assert_eq!(by("+864725550101"), [acme, other]);
}

#[test]
fn visits_take_their_customers_scope_and_carry_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir, "r.db");
    client
        .set_identity(Identity::new("rep-1", Role::Rep, "acme"))
        .unwrap();
    let acme = customer(&client, "Acme Mining", "north-mines", None);
    let other = customer(&client, "Other Co", "south", None);

    // Unknown customer, or a document that is not a customer: errors.
    let missing = DocId::new();
    assert!(matches!(
        client.visits().create(new_visit(missing, None, VisitStatus::Done)),
        Err(ClientError::NotFound(id)) if id == missing
    ));

    let v1 = client
        .visits()
        .create(new_visit(acme.into(), Some(1_000), VisitStatus::Done))
        .unwrap();
    let v2 = client
        .visits()
        .create(new_visit(acme.into(), Some(5_000), VisitStatus::Planned))
        .unwrap();
    let v3 = client
        .visits()
        .create(new_visit(other.into(), Some(3_000), VisitStatus::Done))
        .unwrap();
    assert!(matches!(
        client
            .visits()
            .create(new_visit(v1.into(), None, VisitStatus::Done)),
        Err(ClientError::WrongKind {
            expected: DocKind::Customer,
            actual: DocKind::Visit,
            ..
        })
    ));
    assert!(matches!(
        client.quotes().create(new_quote(v1.into(), "Q-x")),
        Err(ClientError::WrongKind {
            expected: DocKind::Customer,
            actual: DocKind::Visit,
            ..
        })
    ));

    let visit = client.visits().get(v1).unwrap();
    assert_eq!(visit.header.scope, "north-mines");
    assert_eq!(visit.header.org, "acme");
    assert_eq!(visit.customer_id, acme);
    assert_eq!(visit.status, VisitStatus::Done);

    // Per customer, newest first.
    let rows = client.visits().for_customer(acme).unwrap();
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [v2, v1]);
    assert_eq!(rows[0].customer_name.as_deref(), Some("Acme Mining"));
    assert_eq!(rows[0].status, VisitStatus::Planned);

    let done = client
        .visits()
        .list(&VisitFilter::new().status(VisitStatus::Done))
        .unwrap();
    assert_eq!(done.iter().map(|r| r.id).collect::<Vec<_>>(), [v3, v1]);
    assert_eq!(
        client
            .visits()
            .list(&VisitFilter::new().author("rep-1").page(1, 0))
            .unwrap()
            .len(),
        1
    );
    assert!(
        client
            .visits()
            .list(&VisitFilter::new().author("nobody"))
            .unwrap()
            .is_empty()
    );

    // Status marks merge upwards; satisfaction is validated.
    client.visits().mark_done(v2).unwrap();
    client
        .visits()
        .mark_status(v2, VisitStatus::Cancelled)
        .unwrap();
    assert_eq!(client.visits().get(v2).unwrap().status, VisitStatus::Done);
    assert!(client.visits().set_satisfaction(v2, 9).is_err());
    client.visits().set_satisfaction(v2, 4).unwrap();
    client
        .visits()
        .set(v2, VisitField::Location, "Pit 3")
        .unwrap();
    client.visits().set_at(v2, 6_000).unwrap();
    let need = client
        .visits()
        .add_need(
            v2,
            NeedInput {
                product_line: "haul-trucks".into(),
                quantity: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
    let contact = client
        .customers()
        .add_contact(
            acme,
            ContactInput {
                name: Some("Li".into()),
                ..Default::default()
            },
        )
        .unwrap();
    client.visits().add_contact_met(v2, &contact).unwrap();
    let comment = client.visits().add_comment(v2, "good call").unwrap();
    let v = client.visits().get(v2).unwrap();
    assert_eq!(v.satisfaction, Some(4));
    assert_eq!(v.location.as_deref(), Some("Pit 3"));
    assert_eq!(v.at, Some(6_000));
    assert_eq!(v.needs[0].id, need);
    assert_eq!(v.contacts_met, [contact]);
    assert_eq!(v.comments[0].id, comment);

    // Tasks: open tasks by assignee, soonest first, undated last.
    let later = client
        .visits()
        .add_task(
            v1,
            TaskInput {
                title: Some("send brochure".into()),
                due: Some(9_000),
                assignee: Some("rep-1".into()),
            },
        )
        .unwrap();
    let sooner = client
        .visits()
        .add_task(
            v2,
            TaskInput {
                title: Some("call back".into()),
                due: Some(2_000),
                assignee: Some("rep-1".into()),
            },
        )
        .unwrap();
    let undated = client
        .visits()
        .add_task(
            v3,
            TaskInput {
                title: Some("someday".into()),
                due: None,
                assignee: Some("rep-1".into()),
            },
        )
        .unwrap();
    client
        .visits()
        .add_task(
            v3,
            TaskInput {
                title: Some("not mine".into()),
                due: Some(1),
                assignee: Some("rep-2".into()),
            },
        )
        .unwrap();
    assert!(
        client.visits().add_task(v1, TaskInput::default()).is_err(),
        "a task needs a title"
    );
    let open = client.visits().open_tasks("rep-1").unwrap();
    assert_eq!(
        open.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>(),
        [sooner.as_str(), later.as_str(), undated.as_str()]
    );
    assert_eq!(open[0].visit_id, v2);
    assert_eq!(open[0].customer_id, acme);
    assert_eq!(open[0].customer_name.as_deref(), Some("Acme Mining"));
    assert_eq!(open[0].title, "call back");

    client
        .visits()
        .update_task(
            v1,
            &later,
            TaskInput {
                due: Some(1_500),
                ..Default::default()
            },
        )
        .unwrap();
    client.visits().complete_task(v2, &sooner).unwrap();
    assert!(client.visits().complete_task(v2, "nope").is_err());
    let open = client.visits().open_tasks("rep-1").unwrap();
    assert_eq!(
        open.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>(),
        [later.as_str(), undated.as_str()]
    );
    let done_task = &client.visits().get(v2).unwrap().tasks[0];
    assert_eq!(done_task.done_by.as_deref(), Some("rep-1"));

    // Archiving a visit hides it and its tasks.
    client.visits().archive(v3).unwrap();
    assert_eq!(client.visits().open_tasks("rep-1").unwrap().len(), 1);
    assert_eq!(client.visits().for_customer(other).unwrap().len(), 0);
    assert_eq!(
        client
            .visits()
            .list(&VisitFilter::new().customer(other).include_archived())
            .unwrap()[0]
            .id,
        v3
    );

    // Several edits in one change: all or nothing.
    assert!(
        client
            .visits()
            .edit_all(
                v1,
                &[
                    VisitEdit::Set(VisitField::Notes, "rewritten".into()),
                    VisitEdit::SetSatisfaction(0),
                ]
            )
            .is_err()
    );
    assert_eq!(client.visits().get(v1).unwrap().notes, "met the purchaser");
    client
        .visits()
        .edit_all(
            v1,
            &[
                VisitEdit::Set(VisitField::Notes, "rewritten".into()),
                VisitEdit::SetSatisfaction(5),
            ],
        )
        .unwrap();
    assert_eq!(client.visits().get(v1).unwrap().notes, "rewritten");
}

#[test]
fn quotes_follow_their_workflow_and_show_up_in_history_and_follow_ups() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir, "r.db");
    client
        .set_identity(Identity::new("rep-1", Role::Rep, "acme"))
        .unwrap();
    let acme = customer(&client, "Acme Mining", "north", None);
    let other = customer(&client, "Other Co", "north", None);
    assert!(matches!(
        client.quotes().create(new_quote(DocId::new(), "Q-0")),
        Err(ClientError::NotFound(_))
    ));
    assert!(
        client
            .quotes()
            .create(NewQuote {
                currency: "yuan".into(),
                ..new_quote(acme.into(), "Q-bad")
            })
            .is_err()
    );

    let q1 = client
        .quotes()
        .create(new_quote(acme.into(), "Q-1"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(3));
    let q2 = client
        .quotes()
        .create(new_quote(acme.into(), "Q-2"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(3));
    let q3 = client
        .quotes()
        .create(new_quote(other.into(), "Q-3"))
        .unwrap();
    let quote = client.quotes().get(q1).unwrap();
    assert_eq!(quote.header.scope, "north");
    assert_eq!(quote.status, QuoteStatus::Draft);

    let l1 = client
        .quotes()
        .add_line(
            q1,
            LineInput {
                sku: Some("TRK-797".into()),
                qty: Some(2),
                unit_price_minor: Some(100_000),
                discount_bp: Some(1_000),
                ..Default::default()
            },
        )
        .unwrap();
    let l2 = client
        .quotes()
        .add_line(
            q1,
            LineInput {
                sku: Some("SVC-1".into()),
                unit_price_minor: Some(5_000),
                ..Default::default()
            },
        )
        .unwrap();
    client
        .quotes()
        .update_line(
            q1,
            &l2,
            LineInput {
                qty: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(
        client.quotes().add_line(q1, LineInput::default()).is_err(),
        "a line needs a SKU"
    );
    // 2 × 100000 × 90 % + 3 × 5000
    assert_eq!(client.quotes().get(q1).unwrap().total.amount_minor, 195_000);
    let l3 = client
        .quotes()
        .add_line(
            q1,
            LineInput {
                sku: Some("X".into()),
                unit_price_minor: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    client.quotes().remove_line(q1, &l3).unwrap();
    assert_eq!(client.quotes().get(q1).unwrap().total.amount_minor, 195_000);
    client
        .quotes()
        .add_line(
            q3,
            LineInput {
                sku: Some("TRK-797".into()),
                unit_price_minor: Some(95_000),
                ..Default::default()
            },
        )
        .unwrap();

    client
        .quotes()
        .set(q1, QuoteField::PaymentTerms, "30 days")
        .unwrap();
    let note = client
        .quotes()
        .add_note(q1, "asked for a discount")
        .unwrap();
    client.quotes().submit(q1).unwrap();
    // Changing a submitted quote's content starts a new draft revision; changing it back
    // returns to the revision that was submitted.
    let qty = |client: &Client| {
        let q = client.quotes().get(q1).unwrap();
        q.lines.iter().find(|l| l.id == l1).unwrap().qty
    };
    let submitted_qty = qty(&client);
    let set_qty = |n: i64| {
        client
            .quotes()
            .update_line(
                q1,
                &l1,
                LineInput {
                    qty: Some(n),
                    ..Default::default()
                },
            )
            .unwrap()
    };
    set_qty(9);
    let q = client.quotes().get(q1).unwrap();
    assert_eq!((q.status, q.revision), (QuoteStatus::Draft, 2));
    set_qty(submitted_qty);
    let q = client.quotes().get(q1).unwrap();
    assert_eq!((q.status, q.revision), (QuoteStatus::Submitted, 1));
    // Approval is manager-owned; a draft cannot be sent.
    assert!(matches!(
        client.quotes().approve(q1, None),
        Err(ClientError::Model(
            fieldsync_core::model::ModelError::Forbidden { .. }
        ))
    ));
    assert!(client.quotes().send(q2).is_err());
    assert!(client.quotes().submit(q1).is_err(), "already submitted");

    as_manager(&client);
    client.quotes().approve(q1, Some("good margin")).unwrap();
    let before_send = fieldsync_core::ids::now_millis();
    client.quotes().send(q1).unwrap();
    let q = client.quotes().get(q1).unwrap();
    assert_eq!(q.status, QuoteStatus::Sent);
    assert_eq!(q.approvals[0].approver, "mgr-1");
    assert_eq!(q.approvals[0].reason.as_deref(), Some("good margin"));
    assert_eq!(q.notes[0].id, note);
    assert_eq!(q.payment_terms.as_deref(), Some("30 days"));
    let due = q.follow_up_due.unwrap();
    assert!(due >= before_send + 3 * DAY);

    // Follow-ups: not yet due now, due after three days.
    assert!(
        client
            .quotes()
            .due_for_follow_up(before_send)
            .unwrap()
            .is_empty()
    );
    let due_rows = client.quotes().due_for_follow_up(due).unwrap();
    assert_eq!(due_rows.len(), 1);
    assert_eq!(due_rows[0].id, q1);
    assert_eq!(due_rows[0].customer_name.as_deref(), Some("Acme Mining"));
    assert_eq!(due_rows[0].total_minor, 195_000);
    // Another sent quote, due earlier, comes first.
    client.quotes().submit(q3).unwrap();
    client.quotes().approve(q3, None).unwrap();
    client.quotes().send(q3).unwrap();
    client.quotes().set_follow_up_due(q3, due - DAY).unwrap();
    let due_rows = client.quotes().due_for_follow_up(due).unwrap();
    assert_eq!(due_rows.iter().map(|r| r.id).collect::<Vec<_>>(), [q3, q1]);
    // Answered quotes are no longer due.
    client.quotes().win(q3).unwrap();
    assert_eq!(client.quotes().due_for_follow_up(due).unwrap().len(), 1);

    // History per customer, newest first; archived quotes leave it.
    let hist = client.quotes().history(acme).unwrap();
    assert_eq!(hist.iter().map(|r| r.id).collect::<Vec<_>>(), [q2, q1]);
    assert_eq!(hist[1].status, QuoteStatus::Sent);
    assert_eq!(hist[1].quote_no.as_deref(), Some("Q-1"));
    client.quotes().archive(q2).unwrap();
    assert_eq!(client.quotes().history(acme).unwrap().len(), 1);
    let won = client
        .quotes()
        .list(&QuoteFilter::new().status(QuoteStatus::Won))
        .unwrap();
    assert_eq!(won.len(), 1);
    assert_eq!(won[0].id, q3);
    assert_eq!(
        client
            .quotes()
            .list(&QuoteFilter::new().include_archived())
            .unwrap()
            .len(),
        3
    );

    // Price history of a product across customers.
    let ph = client.quotes().price_history("TRK-797").unwrap();
    assert_eq!(ph.len(), 2);
    assert_eq!(ph[0].quote_id, q3);
    assert_eq!(ph[0].unit_price_minor, 95_000);
    assert_eq!(ph[0].quote_status, QuoteStatus::Won);
    assert_eq!(ph[1].line_id, l1);
    assert_eq!(ph[1].total_minor, 180_000);
    assert_eq!(ph[1].customer_name.as_deref(), Some("Acme Mining"));

    // Lost with a reason; owner is manager-owned.
    let q4 = client
        .quotes()
        .create(new_quote(other.into(), "Q-4"))
        .unwrap();
    client
        .quotes()
        .edit_all(
            q4,
            &[QuoteEdit::Submit, QuoteEdit::Approve(None), QuoteEdit::Send],
        )
        .unwrap();
    client.quotes().lose(q4, Some("price")).unwrap();
    let q = client.quotes().get(q4).unwrap();
    assert_eq!(q.status, QuoteStatus::Lost);
    assert_eq!(q.win_loss_reason.as_deref(), Some("price"));
    client
        .quotes()
        .edit(q4, QuoteEdit::SetOwner("rep-1".into()))
        .unwrap();
    assert_eq!(
        client
            .quotes()
            .list(&QuoteFilter::new().owner("rep-1"))
            .unwrap()[0]
            .id,
        q4
    );
    let q5 = client
        .quotes()
        .create(new_quote(other.into(), "Q-5"))
        .unwrap();
    client.quotes().submit(q5).unwrap();
    client.quotes().reject(q5, Some("too cheap")).unwrap();
    assert_eq!(
        client.quotes().get(q5).unwrap().status,
        QuoteStatus::Rejected
    );
}

#[test]
fn timeline_lists_visits_and_quotes_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir, "r.db");
    let acme = customer(&client, "Acme", "north", None);
    let other = customer(&client, "Other", "north", None);
    let old_visit = client
        .visits()
        .create(new_visit(acme.into(), Some(1_000), VisitStatus::Done))
        .unwrap();
    let quote = client
        .quotes()
        .create(new_quote(acme.into(), "Q-7"))
        .unwrap();
    let future_visit = client
        .visits()
        .create(new_visit(
            acme.into(),
            Some(i64::MAX / 2),
            VisitStatus::Planned,
        ))
        .unwrap();
    client
        .visits()
        .create(new_visit(other.into(), Some(2_000), VisitStatus::Done))
        .unwrap();
    client.quotes().submit(quote).unwrap();

    let t = client.customers().timeline(acme).unwrap();
    assert_eq!(
        t.iter().map(|e| (e.kind, e.id)).collect::<Vec<_>>(),
        [
            (DocKind::Visit, future_visit.doc_id()),
            (DocKind::Quote, quote.doc_id()),
            (DocKind::Visit, old_visit.doc_id())
        ]
    );
    assert_eq!(t[2].occurred_at, 1_000);
    assert_eq!(t[2].summary, "sales_call (done)");
    assert!(t[1].summary.contains("Q-7 submitted"), "{}", t[1].summary);

    client.visits().archive(future_visit).unwrap();
    client.quotes().archive(quote).unwrap();
    let t = client.customers().timeline(acme).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].id, old_visit);
    assert!(
        client
            .customers()
            .timeline((DocId::new()).into())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn wrong_kinds_and_unknown_ids_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir, "r.db");
    let c = customer(&client, "Acme", "north", None);
    let v = client
        .visits()
        .create(new_visit(c.into(), None, VisitStatus::Planned))
        .unwrap();
    let q = client.quotes().create(new_quote(c.into(), "Q-1")).unwrap();
    let missing = DocId::new();

    assert!(matches!(client.customers().get(missing.into()), Err(e) if e.is_not_found()));
    assert!(matches!(
        client.visits().get(missing.into()),
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        client.quotes().get(missing.into()),
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        client.customers().set_name(missing.into(), "x"),
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        client.export(missing),
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        client.customers().get(v.doc_id().into()),
        Err(ClientError::WrongKind { id, expected: DocKind::Customer, actual: DocKind::Visit }) if id == v
    ));
    assert!(matches!(
        client.visits().get(q.doc_id().into()),
        Err(ClientError::WrongKind {
            expected: DocKind::Visit,
            actual: DocKind::Quote,
            ..
        })
    ));
    assert!(matches!(
        client.quotes().get(c.doc_id().into()),
        Err(ClientError::WrongKind {
            expected: DocKind::Quote,
            actual: DocKind::Customer,
            ..
        })
    ));
    assert!(matches!(
        client.customers().set_name(q.doc_id().into(), "x"),
        Err(ClientError::WrongKind { id, expected: DocKind::Customer, actual: DocKind::Quote }) if id == q
    ));
    assert!(matches!(
        client.quotes().submit(v.doc_id().into()),
        Err(ClientError::WrongKind {
            expected: DocKind::Quote,
            actual: DocKind::Visit,
            ..
        })
    ));
    assert!(matches!(
        client.visits().archive(c.doc_id().into()),
        Err(ClientError::WrongKind {
            expected: DocKind::Visit,
            actual: DocKind::Customer,
            ..
        })
    ));

    // The generic entry points.
    match client.document(v.into()).unwrap() {
        Document::Visit(visit) => assert_eq!(visit.customer_id, c),
        other => panic!("expected a visit, got {other:?}"),
    }
    client
        .apply_edit(
            c,
            Edit::Customer(CustomerEdit::Set(CustomerField::Email, "a@b.c".into())),
        )
        .unwrap();
    assert_eq!(
        client.customers().get(c).unwrap().email.as_deref(),
        Some("a@b.c")
    );
    assert!(matches!(
        client.apply_edit(c, Edit::Quote(QuoteEdit::Submit)),
        Err(ClientError::WrongKind { .. })
    ));
    // Errors carry readable messages.
    let msg = client
        .customers()
        .get(v.doc_id().into())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("is a visit, not a customer"), "{msg}");

    // Opening something that is not a replica is an error.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"definitely not sqlite, just bytes, long enough for a header!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!").unwrap();
    assert!(matches!(Client::open(&junk), Err(ClientError::Store(_))));
}

#[test]
fn concurrent_edits_on_two_laptops_conflict_and_resolve_via_export_import() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "a.db");
    let b = open(&dir, "b.db");
    a.set_identity(Identity::new("rep-a", Role::Rep, "acme"))
        .unwrap();
    b.set_identity(Identity::new("rep-b", Role::Rep, "acme"))
        .unwrap();
    let events_b = b.subscribe();

    let id = customer(&a, "Shared Co", "north", None);
    assert_eq!(b.import(&a.export(id.into()).unwrap()).unwrap(), id);
    assert_eq!(b.customers().get(id).unwrap().name, "Shared Co");
    let ev = events_b.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(
        (ev.id, ev.origin, ev.kind),
        (id.doc_id(), Origin::Remote, Some(DocKind::Customer))
    );
    assert_eq!(b.outbox_len().unwrap(), 0, "imports are not local changes");

    // Offline, both rename; B also adds a contact and A an industry (no conflict there).
    a.customers().set_name(id, "Shared Co (A)").unwrap();
    a.customers()
        .set(id, CustomerField::Industry, "mining")
        .unwrap();
    b.customers().set_name(id, "Shared Co (B)").unwrap();
    let contact = b
        .customers()
        .add_contact(
            id,
            ContactInput {
                name: Some("Zhao".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(a.conflicts().unwrap().is_empty());

    let from_a = a.export(id.into()).unwrap();
    let from_b = b.export(id.into()).unwrap();
    a.import(&from_b).unwrap();
    b.import(&from_a).unwrap();
    let (ca, cb) = (
        a.customers().get(id).unwrap(),
        b.customers().get(id).unwrap(),
    );
    assert_eq!(ca, cb, "both replicas converge");
    assert_eq!(ca.industry.as_deref(), Some("mining"));
    assert_eq!(ca.contacts[0].id, contact);

    for client in [&a, &b] {
        let conflicts = client.conflicts().unwrap();
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].doc_id, id);
        assert_eq!(conflicts[0].kind, DocKind::Customer);
        assert_eq!(conflicts[0].path, "name");
        let mut values = conflicts[0].values.clone();
        values.sort_by_key(|v| v.to_string());
        assert_eq!(values, [json!("Shared Co (A)"), json!("Shared Co (B)")]);
        // The shown value is the one the document reads.
        assert_eq!(conflicts[0].values[0], json!(ca.name));
    }

    // Bad resolutions are refused and change nothing.
    assert!(a.resolve_conflict(id.into(), "", "x").is_err());
    assert!(a.resolve_conflict(id.into(), "no/such/path", "x").is_err());
    assert!(a.resolve_conflict(id.into(), "phones", "x").is_err());
    assert!(
        a.resolve_conflict(id.into(), "name", json!({"an": "object"}))
            .is_err()
    );
    assert!(a.resolve_conflict(id.into(), "id", "x").is_err());
    assert!(a.resolve_conflict(DocId::new(), "name", "x").is_err());
    assert_eq!(a.conflicts().unwrap().len(), 1);

    a.resolve_conflict(id.into(), "name", "Shared Mining Co")
        .unwrap();
    assert!(a.conflicts().unwrap().is_empty());
    assert_eq!(a.customers().get(id).unwrap().name, "Shared Mining Co");
    assert_eq!(b.conflicts().unwrap().len(), 1);
    b.import(&a.export(id.into()).unwrap()).unwrap();
    assert!(b.conflicts().unwrap().is_empty());
    assert_eq!(b.customers().get(id).unwrap().name, "Shared Mining Co");
    assert_eq!(
        b.customers().list(&CustomerFilter::new()).unwrap()[0].name,
        "Shared Mining Co",
        "projections follow the merge"
    );
    assert!(a.verify().unwrap().is_empty());
    assert!(b.verify().unwrap().is_empty());
}

#[test]
fn subscribers_hear_local_remote_and_driver_changes() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir, "r.db");
    let early = customer(&client, "Before Subscribing", "north", None);
    let rx = client.subscribe();
    let dropped = client.subscribe();
    drop(dropped);
    assert!(rx.try_recv().is_err(), "no events from before subscribing");

    let clone = client.clone();
    let c = customer(&clone, "Acme", "north", None);
    let ev = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(
        ev,
        DocEvent {
            id: c.into(),
            kind: Some(DocKind::Customer),
            origin: Origin::Local,
            evicted: false
        }
    );
    let v = client
        .visits()
        .create(new_visit(c.into(), None, VisitStatus::Planned))
        .unwrap();
    let ev = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!((ev.id, ev.kind), (v.doc_id(), Some(DocKind::Visit)));

    // Failed edits publish nothing; reads publish nothing.
    assert!(client.customers().set_name(c, "").is_err());
    client.customers().list(&CustomerFilter::new()).unwrap();
    assert!(rx.try_recv().is_err());

    // Changes made through with_store (the sync driver's path) are forwarded too.
    let other = open(&dir, "other.db");
    let remote = customer(&other, "Remote Co", "north", None);
    let bytes = other.export(remote.into()).unwrap();
    client.with_store(|s| s.import(&bytes)).unwrap();
    let ev = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!((ev.id, ev.origin), (remote.doc_id(), Origin::Remote));

    // Edits from another thread arrive as well.
    let t = {
        let client = client.clone();
        std::thread::spawn(move || client.customers().set_name(early, "Renamed").unwrap())
    };
    t.join().unwrap();
    let ev = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!((ev.id, ev.origin), (early.doc_id(), Origin::Local));
    assert!(rx.try_recv().is_err());
}

#[test]
fn raw_sql_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir, "r.db");
    let a = customer(&client, "Acme", "north", Some("+86 1"));
    customer(&client, "Beta", "south", None);
    let rows = client
        .query(
            "SELECT name, scope, archived FROM customers WHERE scope = ?1 ORDER BY name",
            &[json!("north")],
        )
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "Acme");
    assert_eq!(rows[0]["archived"], 0);
    let rows = client
        .query(
            "SELECT count(*) AS n FROM customers WHERE name IN (SELECT value FROM json_each(?1)) AND archived = ?2",
            &[json!(["Acme", "Beta", "Gamma"]), json!(false)],
        )
        .unwrap();
    assert_eq!(rows[0]["n"], 2);
    let rows = client
        .query(
            "SELECT customer_id FROM timeline WHERE customer_id = ?1",
            &[json!(a.to_string())],
        )
        .unwrap();
    assert!(rows.is_empty());

    for sql in [
        "DELETE FROM customers",
        "UPDATE customers SET name = 'x'",
        "INSERT INTO meta (key, value) VALUES ('k', x'00')",
        "DROP TABLE customers",
        "CREATE TABLE t (x)",
        "BEGIN",
        "SELECT 1; DELETE FROM customers",
        "ATTACH DATABASE 'x.db' AS x",
        "",
        "SELEKT nonsense",
    ] {
        assert!(client.query(sql, &[]).is_err(), "{sql} must be refused");
    }
    // Wrong parameter counts are errors, not panics.
    assert!(client.query("SELECT ?1, ?2", &[json!(1)]).is_err());
    assert!(client.query("SELECT 1", &[json!(1)]).is_err());
    assert_eq!(
        client
            .customers()
            .list(&CustomerFilter::new())
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn maintenance_outbox_export_import_verify_rebuild_compact() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir, "r.db");
    assert_eq!(client.outbox_len().unwrap(), 0);
    let c = customer(&client, "Acme", "north", Some("123"));
    assert_eq!(client.outbox_len().unwrap(), 1);
    for i in 0..5 {
        client
            .customers()
            .add_phone(c, format!("555 000{i}"))
            .unwrap();
    }
    assert_eq!(client.outbox_len().unwrap(), 6);
    let v = client
        .visits()
        .create(new_visit(c.into(), Some(5), VisitStatus::Done))
        .unwrap();
    assert_eq!(client.outbox_len().unwrap(), 7);

    assert!(client.verify().unwrap().is_empty());
    // One customer with pending incremental changes; the visit was created as a snapshot.
    assert_eq!(client.compact().unwrap(), 1);
    assert_eq!(client.compact().unwrap(), 0);
    assert_eq!(client.rebuild_projections().unwrap(), 2);
    assert_eq!(
        client.customers().find_by_phone("5550003").unwrap()[0].id,
        c
    );
    assert_eq!(client.visits().for_customer(c).unwrap()[0].id, v);
    assert!(client.verify().unwrap().is_empty());

    // Export / import into a fresh replica reproduces the documents and their projections.
    let other = open(&dir, "other.db");
    assert_eq!(other.import(&client.export(c.into()).unwrap()).unwrap(), c);
    assert_eq!(other.import(&client.export(v.into()).unwrap()).unwrap(), v);
    assert_eq!(
        other.customers().get(c).unwrap(),
        client.customers().get(c).unwrap()
    );
    assert_eq!(
        other.visits().get(v).unwrap(),
        client.visits().get(v).unwrap()
    );
    assert_eq!(other.customers().timeline(c).unwrap().len(), 1);
    assert_eq!(other.outbox_len().unwrap(), 0);
    // Importing again changes nothing; garbage is refused.
    assert_eq!(other.import(&client.export(c.into()).unwrap()).unwrap(), c);
    assert!(other.import(b"garbage").is_err());
    assert!(other.import(&[]).is_err());
    assert!(other.verify().unwrap().is_empty());
}

#[test]
fn the_client_is_shared_across_threads() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir, "r.db");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..5 {
                    customer(&client, &format!("T{t} C{i}"), "north", None);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        client
            .customers()
            .list(&CustomerFilter::new())
            .unwrap()
            .len(),
        20
    );
    assert_eq!(client.outbox_len().unwrap(), 20);
}

#[test]
fn a_panic_inside_the_lock_does_not_leak_a_half_applied_edit() {
    use automerge::ROOT;
    use automerge::transaction::Transactable;

    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir, "r.db");
    let c = customer(&client, "Intact Co", "north", None);
    let rx = client.subscribe();
    let crashing = client.clone();
    let joined = std::thread::spawn(move || {
        crashing.with_store(|s| {
            let _ = s.edit(c.into(), |doc| {
                doc.put(ROOT, "name", "half-written")
                    .map_err(fieldsync_core::model::ModelError::from)?;
                panic!("simulated bug in the middle of an edit");
            });
        })
    })
    .join();
    assert!(joined.is_err(), "the thread panicked");

    // The client recovers: the half-applied write is gone, and later edits do not carry it.
    assert_eq!(client.customers().get(c).unwrap().name, "Intact Co");
    client
        .customers()
        .set(c, CustomerField::Industry, "mining")
        .unwrap();
    let got = client.customers().get(c).unwrap();
    assert_eq!(got.name, "Intact Co");
    assert_eq!(got.industry.as_deref(), Some("mining"));
    assert!(client.verify().unwrap().is_empty());
    // Subscribers survive the recovery.
    let ev = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(ev.id, c);
    // And the reopened replica still reads the same from disk.
    let again = Client::open(client.path()).unwrap();
    assert_eq!(
        again.customers().get(c).unwrap().industry.as_deref(),
        Some("mining")
    );
}

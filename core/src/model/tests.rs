//! Unit and property tests of the document model and its merge rules.

// Tests mint ids and read the clock freely; the code under test takes them as inputs.
#![allow(clippy::disallowed_methods)]

use automerge::AutoCommit;
use proptest::prelude::*;

use super::*;
use crate::ids::Role;

fn ctx(role: Role) -> EditCtx {
    EditCtx {
        author: format!("{role}-1"),
        role,
        now: 1_700_000_000_000,
    }
}

fn new_customer_doc() -> (AutoCommit, DocId) {
    let mut doc = AutoCommit::new();
    let id = DocId::new();
    create_customer(
        &mut doc,
        id,
        &NewCustomer {
            org: "acme".into(),
            scope: "north-mines".into(),
            name: "Baotou Mining Co".into(),
            phone: Some("+86 (472) 555-0101".into()),
            ..Default::default()
        },
        &ctx(Role::Rep),
    )
    .unwrap();
    doc.commit();
    (doc, id)
}

fn new_quote_doc() -> AutoCommit {
    let mut doc = AutoCommit::new();
    create_quote(
        &mut doc,
        DocId::new(),
        "acme",
        "north-mines",
        &NewQuote {
            customer_id: DocId::new().into(),
            currency: "CNY".into(),
            quote_no: Some("Q-1".into()),
            valid_until: None,
        },
        &ctx(Role::Rep),
    )
    .unwrap();
    doc.commit();
    doc
}

fn customer(doc: &AutoCommit) -> Customer {
    match read_document(doc).unwrap() {
        Document::Customer(c) => c,
        other => panic!("not a customer: {other:?}"),
    }
}

fn quote(doc: &AutoCommit) -> Quote {
    match read_document(doc).unwrap() {
        Document::Quote(q) => q,
        other => panic!("not a quote: {other:?}"),
    }
}

#[test]
fn customer_round_trip_and_header() {
    let (mut doc, id) = new_customer_doc();
    let c = customer(&doc);
    assert_eq!(c.header.id, id);
    assert_eq!(c.header.kind, DocKind::Customer);
    assert_eq!(c.header.schema_version, SCHEMA_VERSION);
    assert_eq!(c.header.scope, "north-mines");
    assert_eq!(c.phones[0].normalized, "+864725550101");
    let loaded = AutoCommit::load(&doc.save()).unwrap();
    assert_eq!(customer(&loaded), c);
}

#[test]
fn different_fields_both_survive_and_same_field_is_a_conflict() {
    let (mut a, _) = new_customer_doc();
    let mut b = a.fork();
    let rep = ctx(Role::Rep);
    apply_edit(
        &mut a,
        &Edit::Customer(CustomerEdit::Set(CustomerField::Industry, "mining".into())),
        &rep,
    )
    .unwrap();
    apply_edit(
        &mut b,
        &Edit::Customer(CustomerEdit::AddPhone("138 0000 1111".into())),
        &rep,
    )
    .unwrap();
    apply_edit(
        &mut a,
        &Edit::Customer(CustomerEdit::Set(
            CustomerField::Name,
            "Baotou Mining".into(),
        )),
        &rep,
    )
    .unwrap();
    apply_edit(
        &mut b,
        &Edit::Customer(CustomerEdit::Set(
            CustomerField::Name,
            "Baotou Mining Group".into(),
        )),
        &rep,
    )
    .unwrap();
    a.commit();
    b.commit();
    a.merge(&mut b).unwrap();
    let c = customer(&a);
    assert_eq!(c.industry.as_deref(), Some("mining"));
    assert_eq!(c.phones.len(), 2);
    let cs = conflicts(&a);
    assert_eq!(cs.len(), 1, "{cs:?}");
    assert_eq!(cs[0].path, "name");
    assert_eq!(cs[0].values.len(), 2);
    // The first value is the one the document shows.
    assert_eq!(cs[0].values[0], serde_json::json!(c.name));
    resolve_conflict(
        &mut a,
        "name",
        &serde_json::json!("Baotou Mining Group Ltd"),
        &rep,
    )
    .unwrap();
    a.commit();
    assert!(conflicts(&a).is_empty());
    assert_eq!(customer(&a).name, "Baotou Mining Group Ltd");
}

#[test]
fn governed_fields_need_their_role() {
    let (mut doc, _) = new_customer_doc();
    let limit = Money {
        amount_minor: 5_000_000,
        currency: "CNY".into(),
    };
    let e = Edit::Customer(CustomerEdit::SetCreditLimit(limit.clone()));
    assert!(matches!(
        apply_edit(&mut doc, &e, &ctx(Role::Rep)),
        Err(ModelError::Forbidden { .. })
    ));
    apply_edit(
        &mut doc,
        &Edit::Customer(CustomerEdit::ProposeCreditLimit(limit.clone())),
        &ctx(Role::Rep),
    )
    .unwrap();
    apply_edit(&mut doc, &e, &ctx(Role::Director)).unwrap();
    doc.commit();
    let c = customer(&doc);
    assert_eq!(c.credit_limit, Some(limit.clone()));
    assert_eq!(c.proposed_credit_limit, Some(limit));
    assert!(
        resolve_conflict(
            &mut doc,
            "governed/owner",
            &serde_json::json!("x"),
            &ctx(Role::Rep)
        )
        .is_err()
    );
    assert!(resolve_conflict(&mut doc, "scope", &serde_json::json!("x"), &ctx(Role::Rep)).is_err());
    assert!(
        resolve_conflict(&mut doc, "kind", &serde_json::json!("x"), &ctx(Role::Admin)).is_err()
    );
}

#[test]
fn quote_totals_are_derived_and_lines_lock_after_submit() {
    let mut doc = new_quote_doc();
    let rep = ctx(Role::Rep);
    let add = |id: &str, qty, price, disc| {
        Edit::Quote(QuoteEdit::AddLine(
            id.into(),
            LineInput {
                sku: Some(format!("SKU-{id}")),
                qty: Some(qty),
                unit_price_minor: Some(price),
                discount_bp: Some(disc),
                ..Default::default()
            },
        ))
    };
    apply_edit(&mut doc, &add("a", 2, 10_000, 0), &rep).unwrap();
    apply_edit(&mut doc, &add("b", 1, 9_999, 1_000), &rep).unwrap();
    apply_edit(&mut doc, &add("c", 5, 1, 0), &rep).unwrap();
    apply_edit(
        &mut doc,
        &Edit::Quote(QuoteEdit::RemoveLine("c".into())),
        &rep,
    )
    .unwrap();
    doc.commit();
    assert_eq!(quote(&doc).total.amount_minor, 20_000 + 8_999);
    apply_edit(&mut doc, &Edit::Quote(QuoteEdit::Submit), &rep).unwrap();
    doc.commit();
    let submitted = quote(&doc);
    assert_eq!(
        (submitted.status, submitted.revision),
        (QuoteStatus::Submitted, 1)
    );
    // Changing the content of a submitted quote starts a new draft revision.
    apply_edit(&mut doc, &add("d", 1, 1, 0), &rep).unwrap();
    doc.commit();
    let revised = quote(&doc);
    assert_eq!((revised.status, revised.revision), (QuoteStatus::Draft, 2));
    assert_ne!(revised.digest, submitted.digest);
    assert!(matches!(
        apply_edit(&mut doc, &Edit::Quote(QuoteEdit::Approve(None)), &ctx(Role::Manager)),
        Err(ModelError::Invalid(m)) if m.contains("submit it first")
    ));
    apply_edit(&mut doc, &Edit::Quote(QuoteEdit::Submit), &rep).unwrap();
    assert!(apply_edit(&mut doc, &Edit::Quote(QuoteEdit::Approve(None)), &rep).is_err());
    apply_edit(
        &mut doc,
        &Edit::Quote(QuoteEdit::Approve(Some("ok".into()))),
        &ctx(Role::Manager),
    )
    .unwrap();
    doc.commit();
    let q = quote(&doc);
    assert_eq!((q.status, q.revision), (QuoteStatus::Approved, 2));
    assert_eq!(q.approvals.len(), 1);
    assert_eq!(q.approvals[0].digest.as_deref(), Some(q.digest.as_str()));
    assert_eq!(q.approvals[0].void, None);
    // Once sent, the content is fixed.
    apply_edit(&mut doc, &Edit::Quote(QuoteEdit::Send), &rep).unwrap();
    assert!(apply_edit(&mut doc, &add("e", 1, 1, 0), &rep).is_err());
    assert_eq!(quote(&doc).status, QuoteStatus::Sent);
}

/// The case: a manager approves a quote while a rep, not yet synced, lowers a unit
/// price. Merged in either order, on every replica, the quote is a new draft revision and the
/// approval is void, saying which change voided it.
#[test]
fn a_concurrent_price_change_voids_the_approval_on_every_replica() {
    let mut base = new_quote_doc();
    apply_edit(
        &mut base,
        &Edit::Quote(QuoteEdit::AddLine(
            "loader".into(),
            LineInput {
                sku: Some("CAT-950GC".into()),
                qty: Some(1),
                unit_price_minor: Some(250_800_000),
                ..Default::default()
            },
        )),
        &ctx(Role::Rep),
    )
    .unwrap();
    base.commit();
    let mut manager = base.fork();
    let mut rep = base.fork();
    apply_edit(
        &mut manager,
        &Edit::Quote(QuoteEdit::Submit),
        &ctx(Role::Manager),
    )
    .unwrap();
    apply_edit(
        &mut manager,
        &Edit::Quote(QuoteEdit::Approve(None)),
        &ctx(Role::Manager),
    )
    .unwrap();
    manager.commit();
    assert_eq!(quote(&manager).status, QuoteStatus::Approved);
    apply_edit(
        &mut rep,
        &Edit::Quote(QuoteEdit::UpdateLine(
            "loader".into(),
            LineInput {
                unit_price_minor: Some(179_100_000),
                ..Default::default()
            },
        )),
        &ctx(Role::Rep),
    )
    .unwrap();
    rep.commit();
    let mut one = manager.clone();
    one.merge(&mut rep.clone()).unwrap();
    let mut two = rep.clone();
    two.merge(&mut manager.clone()).unwrap();
    for merged in [&one, &two] {
        let q = quote(merged);
        assert_eq!(
            q.status,
            QuoteStatus::Draft,
            "not approved at a price nobody approved"
        );
        assert_eq!(q.revision, 2);
        assert_eq!(q.total.amount_minor, 179_100_000);
        let void = q.approvals[0]
            .void
            .as_deref()
            .expect("the approval is void");
        assert!(void.contains("unit price 250800000 → 179100000"), "{void}");
    }
    assert_eq!(quote(&one), quote(&two));
}

#[test]
fn approved_versus_rejected_is_resolved_and_reported() {
    let mut a = new_quote_doc();
    apply_edit(&mut a, &Edit::Quote(QuoteEdit::Submit), &ctx(Role::Rep)).unwrap();
    a.commit();
    let mut b = a.fork();
    apply_edit(
        &mut a,
        &Edit::Quote(QuoteEdit::Approve(None)),
        &ctx(Role::Manager),
    )
    .unwrap();
    apply_edit(
        &mut b,
        &Edit::Quote(QuoteEdit::Reject(None)),
        &ctx(Role::Director),
    )
    .unwrap();
    a.commit();
    b.commit();
    a.merge(&mut b).unwrap();
    let q = quote(&a);
    assert_eq!(q.status, QuoteStatus::Rejected);
    let c = q.status_conflict.unwrap();
    assert_eq!(c.marked, vec![QuoteStatus::Approved, QuoteStatus::Rejected]);
    assert_eq!(q.approvals.len(), 2);
}

#[test]
fn newer_schema_is_a_typed_error() {
    let (mut doc, _) = new_customer_doc();
    use automerge::ROOT;
    use automerge::transaction::Transactable;
    doc.put(ROOT, "schema_version", SCHEMA_VERSION + 1).unwrap();
    doc.commit();
    assert!(matches!(
        read_document(&doc),
        Err(ModelError::SchemaTooNew { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Property tests: random concurrent edits on forks, merged in random orders.

#[derive(Clone, Debug)]
enum QOp {
    AddLine(u8, i64, i64),
    UpdateQty(u8, i64),
    RemoveLine(u8),
    Status(u8),
    SetTerms(u8),
}

fn qop() -> impl Strategy<Value = QOp> {
    prop_oneof![
        (0u8..6, 0i64..50, 0i64..100_000).prop_map(|(i, q, p)| QOp::AddLine(i, q, p)),
        (0u8..6, 0i64..50).prop_map(|(i, q)| QOp::UpdateQty(i, q)),
        (0u8..6).prop_map(QOp::RemoveLine),
        (0u8..9).prop_map(QOp::Status),
        (0u8..3).prop_map(QOp::SetTerms),
    ]
}

fn status_edit(i: u8) -> QuoteEdit {
    match i {
        0 => QuoteEdit::Submit,
        1 => QuoteEdit::Approve(None),
        2 => QuoteEdit::Reject(None),
        3 => QuoteEdit::Send,
        4 => QuoteEdit::Win,
        5 => QuoteEdit::Lose(None),
        6 => QuoteEdit::Expire,
        7 => QuoteEdit::Convert,
        _ => QuoteEdit::Submit,
    }
}

/// Applies ops on one replica; returns the statuses this replica reached (with the revision
/// each was reached on) and the line ids it added. Invalid edits (e.g. a transition not
/// allowed from the current status) are refused by the model and leave the document unchanged.
fn run_quote_ops(
    doc: &mut AutoCommit,
    replica: usize,
    ops: &[QOp],
) -> (Vec<(String, QuoteStatus)>, Vec<String>) {
    let c = ctx(Role::Manager);
    let mut reached = Vec::new();
    let mut added = Vec::new();
    for op in ops {
        let edit = match op {
            QOp::AddLine(i, q, p) => QuoteEdit::AddLine(
                format!("r{replica}-l{i}"),
                LineInput {
                    sku: Some(format!("S{i}")),
                    qty: Some(*q),
                    unit_price_minor: Some(*p),
                    ..Default::default()
                },
            ),
            QOp::UpdateQty(i, q) => QuoteEdit::UpdateLine(
                format!("r{replica}-l{i}"),
                LineInput {
                    qty: Some(*q),
                    ..Default::default()
                },
            ),
            QOp::RemoveLine(i) => QuoteEdit::RemoveLine(format!("r{replica}-l{i}")),
            QOp::Status(s) => status_edit(*s),
            QOp::SetTerms(t) => QuoteEdit::Set(
                QuoteField::PaymentTerms,
                format!("net{}", 30 * (*t as u32 + 1)),
            ),
        };
        let before = doc.get_heads();
        match apply_edit(doc, &Edit::Quote(edit.clone()), &c) {
            Ok(()) => {
                doc.commit();
                if let QuoteEdit::AddLine(id, _) = &edit {
                    added.push(id.clone());
                }
                let q = quote(doc);
                reached.push((q.digest, q.status));
            }
            Err(_) => {
                doc.rollback();
                assert_eq!(doc.get_heads(), before);
            }
        }
    }
    (reached, added)
}

fn merge_in_order(replicas: &[AutoCommit], order: &[usize]) -> AutoCommit {
    let mut acc = replicas[order[0]].clone();
    for &i in &order[1..] {
        let mut other = replicas[i].clone();
        acc.merge(&mut other).unwrap();
    }
    acc
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn quotes_converge_and_status_never_regresses(
        ops in proptest::collection::vec(proptest::collection::vec(qop(), 0..12), 2..5),
        shuffle_seed in any::<u64>(),
    ) {
        let mut base = new_quote_doc();
        let mut replicas = Vec::new();
        let mut reached = Vec::new();
        let mut added = Vec::new();
        for (i, ops) in ops.iter().enumerate() {
            let mut fork = base.fork();
            let (r, a) = run_quote_ops(&mut fork, i, ops);
            reached.extend(r);
            added.extend(a);
            replicas.push(fork);
        }
        let n = replicas.len();
        let forward: Vec<usize> = (0..n).collect();
        let mut shuffled = forward.clone();
        let mut s = shuffle_seed;
        for i in (1..n).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let reverse: Vec<usize> = (0..n).rev().collect();
        let mut merged: Vec<AutoCommit> = [forward, shuffled, reverse]
            .iter()
            .map(|o| merge_in_order(&replicas, o))
            .collect();
        let q0 = quote(&merged[0]);
        let h0 = merged[0].get_heads();
        for m in &mut merged[1..] {
            prop_assert_eq!(&quote(m), &q0);
            prop_assert_eq!(m.get_heads(), h0.clone());
        }
        // Within a revision the status never regresses: the merged status is at least every
        // status reached on the merged revision.
        for (digest, r) in &reached {
            if *digest == q0.digest {
                prop_assert!(q0.status.rank() >= r.rank(), "{:?} below {:?}", q0.status, r);
            }
        }
        // No quote reads approved (or later) with content other than the approved one.
        if q0.status.rank() >= QuoteStatus::Approved.rank() && q0.status != QuoteStatus::Rejected {
            prop_assert!(q0.approvals.iter().any(|a| a.decision == "approved"
                && a.void.is_none()
                && a.digest.as_deref() == Some(q0.digest.as_str())));
        }
        for a in &q0.approvals {
            prop_assert_eq!(a.void.is_none(), a.digest.as_deref() == Some(q0.digest.as_str()));
        }
        // Both sides' additions survive.
        for id in &added {
            prop_assert!(q0.lines.iter().any(|l| &l.id == id), "line {} lost", id);
        }
        // Totals are derived from the merged lines.
        let sum: i64 = q0.lines.iter().filter(|l| !l.archived).map(QuoteLine::total_minor).sum();
        prop_assert_eq!(q0.total.amount_minor, sum);
        // save/load round trip equals the merged document.
        let reloaded = AutoCommit::load(&merged[0].save()).unwrap();
        prop_assert_eq!(quote(&reloaded), q0);
    }

    #[test]
    fn visits_merge_done_over_cancelled_over_planned_and_keep_tasks(
        marks in proptest::collection::vec(proptest::collection::vec(0u8..3, 0..3), 2..5),
        tasks in proptest::collection::vec(0u8..4, 2..5),
        complete in proptest::collection::vec(any::<bool>(), 2..5),
    ) {
        let mut base = AutoCommit::new();
        create_visit(&mut base, DocId::new(), "acme", "s", &NewVisit {
            customer_id: DocId::new().into(), kind: None, notes: Some("n".into()),
            status: VisitStatus::Planned, at: None, location: None,
        }, &ctx(Role::Rep)).unwrap();
        apply_edit(&mut base, &Edit::Visit(VisitEdit::AddTask("t0".into(), TaskInput {
            title: Some("follow up".into()), ..Default::default() })), &ctx(Role::Rep)).unwrap();
        base.commit();
        let mut replicas = Vec::new();
        let mut all_marks = vec![VisitStatus::Planned];
        let mut all_tasks = vec!["t0".to_string()];
        let mut any_complete = false;
        for (i, ms) in marks.iter().enumerate() {
            let mut f = base.fork();
            let c = ctx(Role::Manager);
            for m in ms {
                let s = [VisitStatus::Planned, VisitStatus::Cancelled, VisitStatus::Done][*m as usize];
                all_marks.push(s);
                apply_edit(&mut f, &Edit::Visit(VisitEdit::MarkStatus(s)), &c).unwrap();
            }
            for t in 0..tasks.get(i).copied().unwrap_or(0) {
                let id = format!("r{i}-t{t}");
                apply_edit(&mut f, &Edit::Visit(VisitEdit::AddTask(id.clone(), TaskInput {
                    title: Some(id.clone()), ..Default::default() })), &c).unwrap();
                all_tasks.push(id);
            }
            if complete.get(i).copied().unwrap_or(false) {
                any_complete = true;
                apply_edit(&mut f, &Edit::Visit(VisitEdit::CompleteTask("t0".into())), &c).unwrap();
            } else {
                apply_edit(&mut f, &Edit::Visit(VisitEdit::UpdateTask("t0".into(), TaskInput {
                    due: Some(i as i64), ..Default::default() })), &c).unwrap();
            }
            f.commit();
            replicas.push(f);
        }
        let order: Vec<usize> = (0..replicas.len()).rev().collect();
        let a = merge_in_order(&replicas, &order);
        let b = merge_in_order(&replicas, &(0..replicas.len()).collect::<Vec<_>>());
        let (Document::Visit(va), Document::Visit(vb)) = (read_document(&a).unwrap(), read_document(&b).unwrap()) else {
            panic!("not visits");
        };
        prop_assert_eq!(&va, &vb);
        prop_assert_eq!(va.status, all_marks.into_iter().max().unwrap());
        for t in &all_tasks {
            prop_assert!(va.tasks.iter().any(|x| &x.id == t));
        }
        let t0 = va.tasks.iter().find(|t| t.id == "t0").unwrap();
        prop_assert_eq!(t0.done_at.is_some(), any_complete);
    }

    #[test]
    fn customer_contacts_and_sets_from_every_side_survive(
        n in proptest::collection::vec((0u8..4, 0u8..3, 0u8..3), 2..5),
    ) {
        let (mut base, _) = new_customer_doc();
        let mut replicas = Vec::new();
        let mut contacts = Vec::new();
        let mut lines = Vec::new();
        for (i, (nc, np, nphone)) in n.iter().enumerate() {
            let mut f = base.fork();
            let c = ctx(Role::Rep);
            for k in 0..*nc {
                let id = format!("r{i}-c{k}");
                apply_edit(&mut f, &Edit::Customer(CustomerEdit::AddContact(id.clone(), ContactInput {
                    name: Some(format!("contact {k}")), ..Default::default() })), &c).unwrap();
                contacts.push(id);
            }
            for k in 0..*np {
                let pl = format!("line-{k}-{i}");
                apply_edit(&mut f, &Edit::Customer(CustomerEdit::AddProductLine(pl.clone())), &c).unwrap();
                lines.push(pl);
            }
            for k in 0..*nphone {
                apply_edit(&mut f, &Edit::Customer(CustomerEdit::AddPhone(format!("139{k}{i}"))), &c).unwrap();
            }
            apply_edit(&mut f, &Edit::Customer(CustomerEdit::Set(CustomerField::Industry, format!("ind{i}"))), &c).unwrap();
            f.commit();
            replicas.push(f);
        }
        let a = merge_in_order(&replicas, &(0..replicas.len()).collect::<Vec<_>>());
        let b = merge_in_order(&replicas, &(0..replicas.len()).rev().collect::<Vec<_>>());
        let (ca, cb) = (customer(&a), customer(&b));
        prop_assert_eq!(&ca, &cb);
        for id in &contacts {
            prop_assert!(ca.contacts.iter().any(|x| &x.id == id));
        }
        for pl in &lines {
            prop_assert!(ca.product_lines.contains(pl));
        }
        // The concurrent industry writes are all kept as one conflict.
        let industry = conflicts(&a).into_iter().find(|c| c.path == "industry");
        prop_assert_eq!(industry.map(|c| c.values.len()).unwrap_or(1), replicas.len());
    }
}

#[test]
fn a_customer_can_start_with_contacts_and_equipment() {
    let mut doc = AutoCommit::new();
    let new = NewCustomer {
        org: "acme".into(),
        scope: "s".into(),
        name: "Batch Co".into(),
        phone: Some("0471 123".into()),
        contacts: vec![ContactInput {
            name: Some("Li".into()),
            phone: Some("138".into()),
            is_purchaser: Some(true),
            ..Default::default()
        }],
        equipment: vec![EquipmentInput {
            model: Some("HT-320".into()),
            installed_at: Some(5),
            ..Default::default()
        }],
        ..Default::default()
    };
    create_customer(&mut doc, DocId::new(), &new, &ctx(Role::Rep)).unwrap();
    doc.commit();
    assert_eq!(doc.get_changes(&[]).len(), 1, "created in one change");
    let c = customer(&doc);
    assert_eq!(c.contacts.len(), 1);
    assert!(c.contacts[0].is_purchaser && c.contacts[0].active);
    assert_eq!(c.equipment[0].installed_at, Some(5));
    assert_eq!(c.phones[0].normalized, "0471123");
    // Items created in the batch are edited like any other.
    let cid = c.contacts[0].id.clone();
    apply_edit(
        &mut doc,
        &Edit::Customer(CustomerEdit::UpdateContact(
            cid,
            ContactInput {
                title: Some("Buyer".into()),
                ..Default::default()
            },
        )),
        &ctx(Role::Rep),
    )
    .unwrap();
    doc.commit();
    assert_eq!(customer(&doc).contacts[0].title.as_deref(), Some("Buyer"));
    let bad = NewCustomer {
        contacts: vec![ContactInput::default()],
        ..new
    };
    assert!(create_customer(&mut AutoCommit::new(), DocId::new(), &bad, &ctx(Role::Rep)).is_err());
}

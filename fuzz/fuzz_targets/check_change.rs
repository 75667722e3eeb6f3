//! Arbitrary bytes as an uploaded change, validated against deterministic base documents (an
//! empty one, a customer and a submitted quote written by the sending device), at a role and
//! with scopes chosen by the first input byte.
//!
//! Besides "never panics", the target checks the authority table from the outside: whatever
//! a change does, if it is accepted from a device whose role lacks the authority, no
//! role-owned value of the typed document changed (credit limit, payment terms, grade, owner,
//! scope, approvals, a quote reading approved), and a moved-back lifecycle stage needs a
//! manager.
//!
//! Automerge's own panics on hostile input are caught inside `check_change` and turned into
//! refusals; libFuzzer's panic hook would abort on them, so the target installs a quiet hook
//! and aborts only when a panic escapes `check_change`.
#![no_main]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use automerge::{ActorId, AutoCommit};
use fieldsync_core::model::{
    Document, Edit, EditCtx, LineInput, NewCustomer, NewQuote, QuoteEdit, QuoteStatus, apply_edit,
    create_customer, create_quote, read_document,
};
use fieldsync_core::protocol::{DeviceInfo, check_change};
use fieldsync_core::{DocId, Role};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

const DEVICE: Uuid = Uuid::from_u128(0x0f5a_11ce);
const CUSTOMER: DocId = DocId(Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001));
const QUOTE: DocId = DocId(Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0002));

fn ctx(role: Role) -> EditCtx {
    EditCtx {
        author: "fuzz".into(),
        role,
        now: 1_700_000_000_000,
    }
}

/// The base documents, written once with fixed ids, actor and times.
fn bases() -> &'static [(DocId, AutoCommit)] {
    static BASES: OnceLock<Vec<(DocId, AutoCommit)>> = OnceLock::new();
    BASES.get_or_init(|| {
        let mut actor = DEVICE.as_bytes().to_vec();
        actor.extend_from_slice(&[1; 8]);
        let actor = ActorId::from(actor);
        let mut customer = AutoCommit::new().with_actor(actor.clone());
        let new = NewCustomer {
            org: "acme".into(),
            scope: "north".into(),
            name: "Fuzz Co".into(),
            ..Default::default()
        };
        create_customer(&mut customer, CUSTOMER, &new, &ctx(Role::Rep)).expect("customer");
        customer.commit();
        let mut quote = AutoCommit::new().with_actor(actor);
        let new = NewQuote {
            customer_id: CUSTOMER.into(),
            currency: "CNY".into(),
            quote_no: None,
            valid_until: None,
        };
        create_quote(&mut quote, QUOTE, "acme", "north", &new, &ctx(Role::Rep)).expect("quote");
        let line = LineInput {
            sku: Some("CAT-950GC".into()),
            qty: Some(1),
            unit_price_minor: Some(250_800_000),
            ..Default::default()
        };
        apply_edit(&mut quote, &Edit::Quote(QuoteEdit::AddLine("l1".into(), line)), &ctx(Role::Rep))
            .expect("line");
        apply_edit(&mut quote, &Edit::Quote(QuoteEdit::Submit), &ctx(Role::Rep)).expect("submit");
        quote.commit();
        vec![
            (CUSTOMER, AutoCommit::new()),
            (CUSTOMER, customer),
            (QUOTE, quote),
        ]
    })
}

/// The role-owned values of a typed document, for comparison.
fn governed(d: &Document) -> (Vec<String>, Vec<String>, Vec<String>) {
    // (director-owned, admin-owned, manager-owned)
    match d {
        Document::Customer(c) => (
            vec![format!("{:?}", c.credit_limit), format!("{:?}", c.payment_terms)],
            vec![format!("{:?}", c.grade)],
            vec![format!("{:?}", c.owner), c.header.scope.clone()],
        ),
        Document::Quote(q) => (
            Vec::new(),
            Vec::new(),
            vec![
                format!("{:?}", q.owner),
                q.header.scope.clone(),
                format!("{:?}", q.approvals.iter().map(|a| &a.id).collect::<Vec<_>>()),
                format!("{}", q.status == QuoteStatus::Approved),
            ],
        ),
        Document::Visit(v) => (Vec::new(), Vec::new(), vec![v.header.scope.clone()]),
    }
}

/// Reports a finding and aborts (the panic hook is quiet, so a panic would say nothing).
fn fail(what: &str) -> ! {
    eprintln!("check_change: {what}");
    std::process::abort();
}

fuzz_target!(
    init: {
        // Panics inside `check_change` are expected and caught; only an escaping one aborts.
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
        let Some((&selector, bytes)) = data.split_first() else {
            return;
        };
        // The relay decodes an uploaded change once, with its budgets, before any check.
        let Ok(change) = fieldsync_core::store::decode_change(bytes) else {
            return;
        };
        let role = [Role::Rep, Role::Manager, Role::Director, Role::Admin][usize::from(selector & 3)];
        let scopes = if selector & 4 == 0 { vec!["north".to_string()] } else { vec!["*".into()] };
        let sender = DeviceInfo {
            device_id: DEVICE,
            name: "fuzz".into(),
            role,
            scopes,
        };
        for (id, base) in bases() {
            let mut d = base.clone();
            let before = read_document(base).ok();
            let stored = before.as_ref().map(|_| "north");
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                check_change(&mut d, *id, &change, &sender, &|_| None, stored, &|_| None, &|_, _| false)
            }));
            let Ok(result) = outcome else {
                fail("a panic escaped check_change");
            };
            if result.is_ok() {
                // An accepted change leaves a readable document ...
                let Ok(after) = read_document(&d) else {
                    fail("an accepted change left the document unreadable");
                };
                let _ = fieldsync_core::model::conflicts(&d);
                // ... and changes no role-owned value beyond the sender's role.
                if let Some(before) = &before {
                    let (b_dir, b_adm, b_mgr) = governed(before);
                    let (a_dir, a_adm, a_mgr) = governed(&after);
                    if role < Role::Director && b_dir != a_dir {
                        fail(&format!("director-owned value changed by {role}: {b_dir:?} -> {a_dir:?}"));
                    }
                    if role < Role::Admin && b_adm != a_adm {
                        fail(&format!("admin-owned value changed by {role}: {b_adm:?} -> {a_adm:?}"));
                    }
                    if role < Role::Manager && b_mgr != a_mgr {
                        fail(&format!("manager-owned value changed by {role}: {b_mgr:?} -> {a_mgr:?}"));
                    }
                }
            }
        }
    }
);

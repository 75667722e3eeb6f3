//! Random edits through the model API, as reps, managers, directors and admins make them.
//!
//! Every id (documents and items inside them) comes from the simulation's RNG, so a seed
//! replays the same ids. Documents are picked with a bias towards a few "hot" ones (the lowest
//! ids a client holds, shared by every client of the scope), so concurrent edits of the same
//! field, status transitions racing each other and scope moves racing edits are common.
//! Edits the model refuses (a transition not allowed from the current status, a role that may
//! not write a field) are simply not made, as an app would refuse them.

use fieldsync_core::model::{
    ContactInput, CustomerEdit, CustomerField, Document, Edit, LineInput, Money, NewCustomer,
    NewQuote, NewVisit, QuoteEdit, QuoteField, TaskInput, VisitEdit, VisitField, VisitStatus,
};
use fieldsync_core::{DocId, DocKind, Role};
use rand::RngExt;
use rand::rngs::StdRng;

/// A document as listed in a replica's `docs` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LocalDoc {
    /// The document.
    pub id: DocId,
    /// Its kind (None while the replica cannot read its header yet).
    pub kind: Option<DocKind>,
    /// The scope in its header.
    pub scope: String,
}

/// One thing a client does to its replica.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// Create a customer.
    NewCustomer(DocId, NewCustomer),
    /// Create a visit to a customer in the customer's scope.
    NewVisit(DocId, String, NewVisit),
    /// Create a quote for a customer in the customer's scope.
    NewQuote(DocId, String, NewQuote),
    /// Edit a document.
    Edit(DocId, Edit),
}

impl Op {
    /// A short label for the trace.
    pub(crate) fn label(&self) -> String {
        match self {
            Self::NewCustomer(..) => "new-customer".into(),
            Self::NewVisit(_, _, v) => format!("new-visit for {}", short(v.customer_id.into())),
            Self::NewQuote(_, _, q) => format!("new-quote for {}", short(q.customer_id.into())),
            Self::Edit(_, e) => {
                let s = format!("{e:?}");
                let parts: Vec<&str> = s
                    .split(['(', ' ', ')', ','])
                    .filter(|p| !p.is_empty())
                    .take(2)
                    .collect();
                parts.join(":")
            }
        }
    }
}

/// The last 4 hex digits of a document id, as the trace shows documents.
pub(crate) fn short(id: DocId) -> String {
    let s = id.to_string();
    s[s.len() - 4..].to_string()
}

/// The organisation every document belongs to.
pub(crate) const ORG: &str = "acme";

/// A document id from the RNG: a well-formed UUIDv7 at the client's clock.
pub(crate) fn doc_id(rng: &mut StdRng, now_ms: i64) -> DocId {
    let bytes: [u8; 10] = rng.random();
    DocId(uuid::Builder::from_unix_timestamp_millis(now_ms.max(0) as u64, &bytes).into_uuid())
}

fn item_id(rng: &mut StdRng) -> String {
    format!("{:016x}", rng.random::<u64>())
}

/// Picks a document of `kind`: a hot one (lowest ids) half the time, else any.
fn pick(rng: &mut StdRng, docs: &[LocalDoc], kind: DocKind) -> Option<LocalDoc> {
    let of_kind: Vec<&LocalDoc> = docs.iter().filter(|d| d.kind == Some(kind)).collect();
    if of_kind.is_empty() {
        return None;
    }
    let n = if rng.random_bool(0.5) {
        of_kind.len().min(3)
    } else {
        of_kind.len()
    };
    Some(of_kind[rng.random_range(0..n)].clone())
}

/// What the workload needs to know about the acting client.
pub(crate) struct Actor<'a> {
    /// Client index (for names and values).
    pub idx: usize,
    /// The device's role.
    pub role: Role,
    /// The device's scopes (`*` = all).
    pub scopes: &'a [String],
    /// Every scope of the organisation.
    pub all_scopes: &'a [&'static str],
    /// The client's clock.
    pub now: i64,
    /// Whether customers may be moved between scopes.
    pub scope_moves: bool,
}

impl Actor<'_> {
    fn own_scopes(&self) -> Vec<String> {
        if self.scopes.iter().any(|s| s == "*") {
            self.all_scopes.iter().map(|s| s.to_string()).collect()
        } else {
            self.scopes.to_vec()
        }
    }
}

/// Draws the next operation. `read` gives the typed document (for item ids and statuses).
#[allow(clippy::match_overlapping_arm)] // cumulative thresholds of a percentage roll: the first arm that matches wins
pub(crate) fn next_op(
    rng: &mut StdRng,
    me: &Actor<'_>,
    docs: &[LocalDoc],
    read: &mut dyn FnMut(DocId) -> Option<Document>,
) -> Option<Op> {
    let customers = docs
        .iter()
        .filter(|d| d.kind == Some(DocKind::Customer))
        .count();
    let roll = rng.random_range(0..100);
    if customers == 0 || roll < 8 || (customers < 3 && roll < 25) {
        let scopes = me.own_scopes();
        let scope = scopes[rng.random_range(0..scopes.len())].clone();
        return Some(Op::NewCustomer(
            doc_id(rng, me.now),
            NewCustomer {
                org: ORG.into(),
                scope,
                name: format!("customer {}-{}", me.idx, rng.random_range(0..1000)),
                phone: rng
                    .random_bool(0.3)
                    .then(|| format!("+86 139 {:04}", rng.random_range(0..10_000))),
                industry: rng.random_bool(0.3).then(|| "mining".to_string()),
                ..NewCustomer::default()
            },
        ));
    }
    match roll {
        ..16 => {
            let c = pick(rng, docs, DocKind::Customer)?;
            Some(Op::NewVisit(
                doc_id(rng, me.now),
                c.scope,
                NewVisit {
                    customer_id: c.id.into(),
                    kind: None,
                    notes: Some(format!("visit by {}", me.idx)),
                    status: if rng.random_bool(0.3) {
                        VisitStatus::Done
                    } else {
                        VisitStatus::Planned
                    },
                    at: Some(me.now),
                    location: None,
                },
            ))
        }
        ..24 => {
            let c = pick(rng, docs, DocKind::Customer)?;
            Some(Op::NewQuote(
                doc_id(rng, me.now),
                c.scope,
                NewQuote {
                    customer_id: c.id.into(),
                    currency: "CNY".into(),
                    quote_no: Some(format!("Q{}-{}", me.idx, rng.random_range(0..10_000))),
                    valid_until: None,
                },
            ))
        }
        ..60 => {
            let c = pick(rng, docs, DocKind::Customer)?;
            let doc = read(c.id);
            customer_edit(rng, me, &c, doc.as_ref()).map(|e| Op::Edit(c.id, Edit::Customer(e)))
        }
        ..78 => {
            let v = pick(rng, docs, DocKind::Visit)?;
            let doc = read(v.id);
            Some(Op::Edit(
                v.id,
                Edit::Visit(visit_edit(rng, me, doc.as_ref())),
            ))
        }
        _ => {
            let q = pick(rng, docs, DocKind::Quote)?;
            let doc = read(q.id);
            Some(Op::Edit(
                q.id,
                Edit::Quote(quote_edit(rng, me, doc.as_ref())),
            ))
        }
    }
}

#[allow(clippy::match_overlapping_arm)] // cumulative thresholds of a percentage roll: the first arm that matches wins
fn customer_edit(
    rng: &mut StdRng,
    me: &Actor<'_>,
    at: &LocalDoc,
    doc: Option<&Document>,
) -> Option<CustomerEdit> {
    let contacts: Vec<String> = match doc {
        Some(Document::Customer(c)) => c.contacts.iter().map(|c| c.id.clone()).collect(),
        _ => Vec::new(),
    };
    let n = rng.random_range(0..1000);
    Some(match rng.random_range(0..100) {
        // Same-field edits are the most common: a handful of fields, few values.
        ..20 => CustomerEdit::Set(CustomerField::Name, format!("name {}-{n}", me.idx)),
        ..30 => CustomerEdit::Set(CustomerField::Industry, format!("industry {}", n % 3)),
        ..36 => CustomerEdit::Set(CustomerField::Email, format!("c{n}@example.com")),
        ..44 => CustomerEdit::AddPhone(format!("+86 138 {:04}", n)),
        ..52 => CustomerEdit::AddContact(
            item_id(rng),
            ContactInput {
                name: Some(format!("contact {n}")),
                title: Some("buyer".into()),
                ..Default::default()
            },
        ),
        ..58 if !contacts.is_empty() => CustomerEdit::UpdateContact(
            contacts[rng.random_range(0..contacts.len())].clone(),
            ContactInput {
                phone: Some(format!("+86 137 {:04}", n)),
                active: Some(rng.random_bool(0.8)),
                ..Default::default()
            },
        ),
        ..64 => CustomerEdit::AddNote(item_id(rng), format!("note {n} by {}", me.idx)),
        ..67 => CustomerEdit::Archive,
        ..70 => CustomerEdit::Unarchive,
        ..74 => CustomerEdit::ProposeCreditLimit(Money {
            amount_minor: n * 100_000,
            currency: "CNY".into(),
        }),
        ..78 => CustomerEdit::SetCreditLimit(Money {
            amount_minor: n * 100_000,
            currency: "CNY".into(),
        }),
        ..82 => CustomerEdit::SetOwner(format!("rep{}", n % 4)),
        ..86 => CustomerEdit::SetGrade(["A", "B", "C"][n as usize % 3].into()),
        _ => {
            // Scope moves: only to another scope the mover sees (the relay checks both ends).
            let targets: Vec<String> = me
                .own_scopes()
                .into_iter()
                .filter(|s| *s != at.scope)
                .collect();
            if targets.is_empty() || me.role < Role::Manager || !me.scope_moves {
                return None;
            }
            CustomerEdit::SetScope(targets[rng.random_range(0..targets.len())].clone())
        }
    })
}

#[allow(clippy::match_overlapping_arm)] // cumulative thresholds of a percentage roll: the first arm that matches wins
fn visit_edit(rng: &mut StdRng, me: &Actor<'_>, doc: Option<&Document>) -> VisitEdit {
    let tasks: Vec<String> = match doc {
        Some(Document::Visit(v)) => v.tasks.iter().map(|t| t.id.clone()).collect(),
        _ => Vec::new(),
    };
    let n = rng.random_range(0..1000);
    match rng.random_range(0..100) {
        ..20 => VisitEdit::Set(VisitField::Notes, format!("notes {}-{n}", me.idx)),
        ..28 => VisitEdit::Set(VisitField::Location, format!("site {}", n % 4)),
        ..45 => VisitEdit::MarkStatus(
            [
                VisitStatus::Planned,
                VisitStatus::Done,
                VisitStatus::Cancelled,
            ][rng.random_range(0..3)],
        ),
        ..58 => VisitEdit::AddTask(
            item_id(rng),
            TaskInput {
                title: Some(format!("task {n}")),
                due: Some(me.now + 86_400_000),
                assignee: None,
            },
        ),
        ..68 if !tasks.is_empty() => {
            VisitEdit::CompleteTask(tasks[rng.random_range(0..tasks.len())].clone())
        }
        ..76 => VisitEdit::SetSatisfaction(rng.random_range(1..=5)),
        ..88 => VisitEdit::AddComment(item_id(rng), format!("comment {n}")),
        ..92 => VisitEdit::Archive,
        _ => VisitEdit::SetAt(me.now),
    }
}

#[allow(clippy::match_overlapping_arm)] // cumulative thresholds of a percentage roll: the first arm that matches wins
fn quote_edit(rng: &mut StdRng, me: &Actor<'_>, doc: Option<&Document>) -> QuoteEdit {
    let lines: Vec<String> = match doc {
        Some(Document::Quote(q)) => q.lines.iter().map(|l| l.id.clone()).collect(),
        _ => Vec::new(),
    };
    let n = rng.random_range(0..1000);
    match rng.random_range(0..100) {
        ..18 => QuoteEdit::AddLine(
            item_id(rng),
            LineInput {
                sku: Some(format!("SKU-{}", n % 7)),
                qty: Some(rng.random_range(1..10)),
                unit_price_minor: Some(n * 1000),
                ..Default::default()
            },
        ),
        ..26 if !lines.is_empty() => QuoteEdit::UpdateLine(
            lines[rng.random_range(0..lines.len())].clone(),
            LineInput {
                qty: Some(rng.random_range(1..10)),
                discount_bp: Some(rng.random_range(0..2000)),
                ..Default::default()
            },
        ),
        ..30 if !lines.is_empty() => {
            QuoteEdit::RemoveLine(lines[rng.random_range(0..lines.len())].clone())
        }
        ..40 => QuoteEdit::Submit,
        ..48 => QuoteEdit::Approve(None),
        ..52 => QuoteEdit::Reject(Some(format!("too cheap {}", me.idx))),
        ..60 => QuoteEdit::Send,
        ..64 => QuoteEdit::Win,
        ..68 => QuoteEdit::Lose(Some("price".into())),
        ..70 => QuoteEdit::Expire,
        ..72 => QuoteEdit::Convert,
        ..78 => QuoteEdit::SetOwner(format!("rep{}", n % 4)),
        ..88 => QuoteEdit::AddNote(item_id(rng), format!("quote note {n}")),
        ..96 => QuoteEdit::Set(QuoteField::CustomerResponse, format!("response {n}")),
        _ => QuoteEdit::Archive,
    }
}

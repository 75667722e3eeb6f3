//! `fieldsync-crash-writer`: the child process of the crash test (`tests/tests/crash.rs`).
//!
//! Usage: `fieldsync-crash-writer <replica.db> <seed> <count>`
//!
//! Opens (or creates) the replica and performs `count` seeded, mixed local writes: new
//! customers, phones, contacts, customer fields, visits and quotes for existing customers,
//! quote lines added and removed, now and then a multi-document [`Store::transaction`] and a
//! [`Store::compact_all`]. It reopens an existing replica and continues from what it holds, so
//! the test can SIGKILL it, check the file and start it again on the same file.
//!
//! It writes an oracle log to stdout, one line per event, each flushed before going on:
//!
//! - `A <n> <effect> [| <effect>]…` *before* write `n` starts (attempted);
//! - `C <n> <hashes> [<hashes>]…` *after* write `n` committed (durable, L1): one entry per
//!   effect, the comma-separated hex change hashes that effect wrote (`-` for none).
//!
//! Effects (tokens never contain spaces; every written value is unique to its write):
//!
//! - `cust <id> <name> <phone|->`            create a customer (stage `potential`)
//! - `set <id> <field-key> <value>`          set a customer text field
//! - `phone <id> <raw>`                      add a phone to a customer
//! - `contact <id> <contact-id> <name> <phone|->` add a contact to a customer
//! - `visit <id> <customer-id> <location>`   create a visit
//! - `vset <id> <field-key> <value>`         set a visit text field
//! - `quote <id> <customer-id> <quote-no>`   create a draft quote (CNY)
//! - `line <quote-id> <line-id> <qty> <unit-price-minor> <discount-bp>` add a quote line
//! - `unline <quote-id> <line-id>`           remove (archive) a quote line
//! - `compact`                               `compact_all` (writes no change)

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use fieldsync_core::DocId;
use fieldsync_core::Role;
use fieldsync_core::model::{
    ContactInput, CustomerEdit, CustomerField, Edit, EditCtx, LineInput, ModelError, NewCustomer,
    NewQuote, NewVisit, QuoteEdit, VisitEdit, VisitField, VisitStatus, apply_edit, create_customer,
    create_quote, create_visit,
};
use fieldsync_core::store::{Store, StoreError, StoreTx};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const ORG: &str = "acme";
const SCOPE: &str = "north";

/// Free-text fields: each write leaves a unique value the oracle can find again (the lifecycle
/// stage and the visit kind take values from fixed sets).
const CUSTOMER_FIELDS: [CustomerField; 7] = [
    CustomerField::Name,
    CustomerField::ShortName,
    CustomerField::Industry,
    CustomerField::BusinessType,
    CustomerField::Size,
    CustomerField::Source,
    CustomerField::Email,
];
const VISIT_FIELDS: [VisitField; 2] = [VisitField::Location, VisitField::Notes];

/// One document-level effect of a write.
enum Effect {
    Cust {
        id: DocId,
        name: String,
        phone: Option<String>,
    },
    Set {
        id: DocId,
        field: CustomerField,
        value: String,
    },
    Phone {
        id: DocId,
        raw: String,
    },
    Contact {
        id: DocId,
        cid: String,
        name: String,
        phone: Option<String>,
    },
    Visit {
        id: DocId,
        customer: DocId,
        location: String,
    },
    VSet {
        id: DocId,
        field: VisitField,
        value: String,
    },
    Quote {
        id: DocId,
        customer: DocId,
        quote_no: String,
    },
    Line {
        quote: DocId,
        lid: String,
        qty: i64,
        price: i64,
        disc: i64,
    },
    Unline {
        quote: DocId,
        lid: String,
    },
}

impl Effect {
    fn render(&self) -> String {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        match self {
            Self::Cust { id, name, phone } => format!("cust {id} {name} {}", opt(phone)),
            Self::Set { id, field, value } => format!("set {id} {} {value}", field.key()),
            Self::Phone { id, raw } => format!("phone {id} {raw}"),
            Self::Contact {
                id,
                cid,
                name,
                phone,
            } => format!("contact {id} {cid} {name} {}", opt(phone)),
            Self::Visit {
                id,
                customer,
                location,
            } => format!("visit {id} {customer} {location}"),
            Self::VSet { id, field, value } => format!("vset {id} {} {value}", field.key()),
            Self::Quote {
                id,
                customer,
                quote_no,
            } => format!("quote {id} {customer} {quote_no}"),
            Self::Line {
                quote,
                lid,
                qty,
                price,
                disc,
            } => format!("line {quote} {lid} {qty} {price} {disc}"),
            Self::Unline { quote, lid } => format!("unline {quote} {lid}"),
        }
    }

    /// Writes the effect inside `tx`; returns the change hashes as hex.
    fn apply(&self, tx: &mut StoreTx<'_>, ctx: &EditCtx) -> Result<Vec<String>, StoreError> {
        let edit =
            |tx: &mut StoreTx<'_>, id: DocId, e: Edit| tx.edit(id, |doc| apply_edit(doc, &e, ctx));
        let committed = match self {
            Self::Cust { id, name, phone } => tx.create(*id, |doc, id| {
                create_customer(
                    doc,
                    id,
                    &NewCustomer {
                        org: ORG.into(),
                        scope: SCOPE.into(),
                        name: name.clone(),
                        phone: phone.clone(),
                        ..Default::default()
                    },
                    ctx,
                )
            })?,
            Self::Set { id, field, value } => edit(
                tx,
                *id,
                Edit::Customer(CustomerEdit::Set(*field, value.clone())),
            )?,
            Self::Phone { id, raw } => {
                edit(tx, *id, Edit::Customer(CustomerEdit::AddPhone(raw.clone())))?
            }
            Self::Contact {
                id,
                cid,
                name,
                phone,
            } => edit(
                tx,
                *id,
                Edit::Customer(CustomerEdit::AddContact(
                    cid.clone(),
                    ContactInput {
                        name: Some(name.clone()),
                        phone: phone.clone(),
                        ..Default::default()
                    },
                )),
            )?,
            Self::Visit {
                id,
                customer,
                location,
            } => tx.create(*id, |doc, id| {
                create_visit(
                    doc,
                    id,
                    ORG,
                    SCOPE,
                    &NewVisit {
                        customer_id: (*customer).into(),
                        kind: None,
                        notes: None,
                        status: VisitStatus::Planned,
                        at: None,
                        location: Some(location.clone()),
                    },
                    ctx,
                )
            })?,
            Self::VSet { id, field, value } => {
                edit(tx, *id, Edit::Visit(VisitEdit::Set(*field, value.clone())))?
            }
            Self::Quote {
                id,
                customer,
                quote_no,
            } => tx.create(*id, |doc, id| {
                create_quote(
                    doc,
                    id,
                    ORG,
                    SCOPE,
                    &NewQuote {
                        customer_id: (*customer).into(),
                        currency: "CNY".into(),
                        quote_no: Some(quote_no.clone()),
                        valid_until: None,
                    },
                    ctx,
                )
            })?,
            Self::Line {
                quote,
                lid,
                qty,
                price,
                disc,
            } => edit(
                tx,
                *quote,
                Edit::Quote(QuoteEdit::AddLine(
                    lid.clone(),
                    LineInput {
                        sku: Some(format!("SKU-{lid}")),
                        qty: Some(*qty),
                        unit_price_minor: Some(*price),
                        discount_bp: Some(*disc),
                        ..Default::default()
                    },
                )),
            )?,
            Self::Unline { quote, lid } => {
                edit(tx, *quote, Edit::Quote(QuoteEdit::RemoveLine(lid.clone())))?
            }
        };
        Ok(committed.hashes.iter().map(ToString::to_string).collect())
    }
}

/// What the replica holds, as far as choosing the next write needs to know.
#[derive(Default)]
struct World {
    customers: Vec<DocId>,
    visits: Vec<DocId>,
    quotes: Vec<DocId>,
    open_lines: Vec<(DocId, String)>,
}

impl World {
    /// Reads the ids back from the projections of a (re)opened replica.
    fn load(store: &Store) -> anyhow::Result<Self> {
        let ids = |sql: &str| -> anyhow::Result<Vec<DocId>> {
            let mut st = store.reader().prepare(sql)?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row?.parse().context("bad document id in a projection")?);
            }
            Ok(out)
        };
        let mut open_lines = Vec::new();
        {
            let mut st = store.reader().prepare(
                "SELECT quote_id, line_id FROM quote_lines WHERE archived = 0 ORDER BY quote_id, line_id",
            )?;
            let rows =
                st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (q, l) = row?;
                open_lines.push((q.parse().context("bad quote id")?, l));
            }
        }
        Ok(Self {
            customers: ids("SELECT id FROM customers ORDER BY id")?,
            visits: ids("SELECT id FROM visits ORDER BY id")?,
            quotes: ids("SELECT id FROM quotes ORDER BY id")?,
            open_lines,
        })
    }

    fn record(&mut self, e: &Effect) {
        match e {
            Effect::Cust { id, .. } => self.customers.push(*id),
            Effect::Visit { id, .. } => self.visits.push(*id),
            Effect::Quote { id, .. } => self.quotes.push(*id),
            Effect::Line { quote, lid, .. } => self.open_lines.push((*quote, lid.clone())),
            Effect::Unline { quote, lid } => {
                self.open_lines.retain(|(q, l)| (q, l) != (quote, lid))
            }
            Effect::Set { .. }
            | Effect::Phone { .. }
            | Effect::Contact { .. }
            | Effect::VSet { .. } => {}
        }
    }
}

fn pick<T: Clone>(rng: &mut StdRng, v: &[T]) -> T {
    v[rng.random_range(0..v.len())].clone()
}

/// Chooses the next write: its effects, or `None` for a `compact_all`.
fn next_write(rng: &mut StdRng, w: &World, tag: &str, seed: u64, n: u64) -> Option<Vec<Effect>> {
    let new_customer = |rng: &mut StdRng| Effect::Cust {
        id: DocId::new(),
        name: format!("cust-{tag}"),
        phone: rng
            .random_bool(0.7)
            .then(|| format!("+86-{seed:06}-{n:07}")),
    };
    let roll = rng.random_range(0..100);
    let effects = match roll {
        _ if w.customers.is_empty() => vec![new_customer(rng)],
        0..18 => vec![new_customer(rng)],
        18..36 => {
            let field = pick(rng, &CUSTOMER_FIELDS);
            vec![Effect::Set {
                id: pick(rng, &w.customers),
                field,
                value: format!("{}-{tag}", field.key()),
            }]
        }
        36..46 => vec![Effect::Phone {
            id: pick(rng, &w.customers),
            raw: format!("+7-{seed:06}-{n:07}"),
        }],
        46..56 => vec![Effect::Contact {
            id: pick(rng, &w.customers),
            cid: format!("k{tag}"),
            name: format!("contact-{tag}"),
            phone: rng.random_bool(0.5).then(|| format!("+1-{seed:06}-{n:07}")),
        }],
        56..64 => vec![Effect::Visit {
            id: DocId::new(),
            customer: pick(rng, &w.customers),
            location: format!("site-{tag}"),
        }],
        64..72 if !w.visits.is_empty() => {
            let field = pick(rng, &VISIT_FIELDS);
            vec![Effect::VSet {
                id: pick(rng, &w.visits),
                field,
                value: format!("{}-{tag}", field.key()),
            }]
        }
        64..80 => vec![Effect::Quote {
            id: DocId::new(),
            customer: pick(rng, &w.customers),
            quote_no: format!("Q-{tag}"),
        }],
        80..92 if !w.quotes.is_empty() => {
            let quote = pick(rng, &w.quotes);
            vec![random_line(rng, quote, tag)]
        }
        92..95 if !w.open_lines.is_empty() => {
            let (quote, lid) = pick(rng, &w.open_lines);
            vec![Effect::Unline { quote, lid }]
        }
        95..98 => {
            // One transaction creating a customer with a visit and a quote with lines, and
            // editing an existing customer.
            let cust = new_customer(rng);
            let Effect::Cust { id: customer, .. } = cust else {
                unreachable!()
            };
            let quote = DocId::new();
            let mut v = vec![
                cust,
                Effect::Visit {
                    id: DocId::new(),
                    customer,
                    location: format!("site-{tag}"),
                },
                Effect::Quote {
                    id: quote,
                    customer,
                    quote_no: format!("Q-{tag}"),
                },
            ];
            for i in 0..rng.random_range(1..4) {
                v.push(random_line(rng, quote, &format!("{tag}x{i}")));
            }
            let field = pick(rng, &CUSTOMER_FIELDS);
            v.push(Effect::Set {
                id: pick(rng, &w.customers),
                field,
                value: format!("{}-{tag}", field.key()),
            });
            v
        }
        98..100 => return None,
        _ => vec![new_customer(rng)],
    };
    Some(effects)
}

fn random_line(rng: &mut StdRng, quote: DocId, tag: &str) -> Effect {
    Effect::Line {
        quote,
        lid: format!("l{tag}"),
        qty: rng.random_range(1..50),
        price: rng.random_range(0..1_000_000),
        disc: pick(rng, &[0, 0, 250, 1_000, 3_333, 10_000]),
    }
}

/// Writes one oracle line and flushes it (one `write` for the whole line).
fn emit(out: &mut std::io::Stdout, line: String) -> anyhow::Result<()> {
    let mut out = out.lock();
    out.write_all(format!("{line}\n").as_bytes())?;
    out.flush()?;
    Ok(())
}

fn run(path: &str, seed: u64, count: u64) -> anyhow::Result<()> {
    let mut store = Store::open(path).with_context(|| format!("opening {path}"))?;
    let mut world = World::load(&store)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let ctx = EditCtx::new("crash-writer", Role::Rep);
    let mut out = std::io::stdout();
    for n in 0..count {
        let tag = format!("s{seed}n{n}");
        let Some(mut effects) = next_write(&mut rng, &world, &tag, seed, n) else {
            emit(&mut out, format!("A {n} compact"))?;
            store.compact_all()?;
            emit(&mut out, format!("C {n} -"))?;
            continue;
        };
        let hashes: Vec<Vec<String>> = match effects.as_mut_slice() {
            // A lone new customer goes through `Store::create`, which mints the id: the
            // attempt line is written from inside `init`, once the id is known and before
            // the commit.
            [cust @ Effect::Cust { .. }] => {
                let Effect::Cust { id, name, phone } = cust else {
                    unreachable!()
                };
                let new = NewCustomer {
                    org: ORG.into(),
                    scope: SCOPE.into(),
                    name: name.clone(),
                    phone: phone.clone(),
                    ..Default::default()
                };
                let mut minted = None;
                let c = store.create(|doc, new_id| {
                    minted = Some(new_id);
                    let line = Effect::Cust {
                        id: new_id,
                        name: new.name.clone(),
                        phone: new.phone.clone(),
                    }
                    .render();
                    emit(&mut out, format!("A {n} {line}"))
                        .map_err(|e| ModelError::Invalid(format!("stdout: {e}")))?;
                    create_customer(doc, new_id, &new, &ctx)
                })?;
                *id = minted.context("Store::create did not call init")?;
                vec![c.hashes.iter().map(ToString::to_string).collect()]
            }
            // A lone customer edit goes through `Store::edit`.
            [set @ Effect::Set { .. }] => {
                emit(&mut out, format!("A {n} {}", set.render()))?;
                let Effect::Set { id, field, value } = set else {
                    unreachable!()
                };
                let e = Edit::Customer(CustomerEdit::Set(*field, value.clone()));
                let c = store.edit(*id, |doc| apply_edit(doc, &e, &ctx))?;
                vec![c.hashes.iter().map(ToString::to_string).collect()]
            }
            // Everything else in one `Store::transaction`.
            _ => {
                let rendered: Vec<String> = effects.iter().map(Effect::render).collect();
                emit(&mut out, format!("A {n} {}", rendered.join(" | ")))?;
                store.transaction(|tx| effects.iter().map(|e| e.apply(tx, &ctx)).collect())?
            }
        };
        let parts: Vec<String> = hashes
            .iter()
            .map(|h| {
                if h.is_empty() {
                    "-".to_string()
                } else {
                    h.join(",")
                }
            })
            .collect();
        emit(&mut out, format!("C {n} {}", parts.join(" ")))?;
        for e in &effects {
            world.record(e);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let parsed = (|| -> anyhow::Result<(String, u64, u64)> {
        let [_, path, seed, count] = args.as_slice() else {
            bail!("usage: fieldsync-crash-writer <replica.db> <seed> <count>");
        };
        Ok((path.clone(), seed.parse()?, count.parse()?))
    })();
    match parsed.and_then(|(path, seed, count)| run(&path, seed, count)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldsync-crash-writer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

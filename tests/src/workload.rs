//! The documents and edits the sync benchmarks work with: a population shaped like a real
//! book (customers with contacts, addresses and equipment; their visits and quotes) and a
//! rep's week of offline edits.

use anyhow::{Context, bail};
use fieldsync_client::{Client, Identity};
use fieldsync_core::DocId;
use fieldsync_core::model::{
    AddressInput, ContactInput, CustomerEdit, CustomerField, Edit, EditCtx, EquipmentInput,
    LineInput, NeedInput, NewCustomer, NewQuote, NewVisit, QuoteEdit, TaskInput, VisitEdit,
    VisitField, VisitStatus, apply_edit, create_customer, create_quote, create_visit, new_item_id,
};

/// Organisation of every benchmark document.
pub const ORG: &str = "acme";
/// Scopes the benchmark customers are spread over.
pub const SCOPES: [&str; 4] = ["north", "south", "east", "west"];

/// Creates `customers` customers (contacts, an address, equipment), `visits` visits (needs,
/// tasks) and `quotes` quotes (three lines) in one store transaction; each document is one
/// change and about half get a second one.
pub fn populate(
    client: &Client,
    customers: usize,
    visits: usize,
    quotes: usize,
) -> anyhow::Result<()> {
    let identity: Identity = client.identity()?;
    let ctx = EditCtx::new(identity.author.clone(), identity.role);
    client.with_store(|store| {
        store.transaction(|tx| {
            let mut cust: Vec<(DocId, &'static str)> = Vec::with_capacity(customers);
            for i in 0..customers {
                let scope = SCOPES[i % SCOPES.len()];
                let id = DocId::new();
                let new = NewCustomer {
                    org: ORG.into(),
                    scope: scope.into(),
                    name: format!("Customer {i:06} Mining Equipment Co., Ltd."),
                    phone: Some(format!("+86 472 555 {:04}", i % 10_000)),
                    industry: Some(["mining", "construction", "agriculture"][i % 3].into()),
                    stage: Some(["potential", "opportunity", "order_customer"][i % 3].into()),
                    source: Some("rep_developed".into()),
                    ..Default::default()
                };
                tx.create(id, |doc, id| {
                    create_customer(doc, id, &new, &ctx)?;
                    let edits = [
                        CustomerEdit::AddContact(
                            new_item_id(),
                            ContactInput {
                                name: Some(format!("Purchaser {i}")),
                                title: Some("Purchasing manager".into()),
                                phone: Some(format!("+86 139 {i:08}")),
                                email: Some(format!("buyer{i}@customer{i}.example.cn")),
                                is_purchaser: Some(true),
                                ..Default::default()
                            },
                        ),
                        CustomerEdit::AddContact(
                            new_item_id(),
                            ContactInput {
                                name: Some(format!("Site engineer {i}")),
                                title: Some("Chief engineer".into()),
                                phone: Some(format!("+86 138 {i:08}")),
                                ..Default::default()
                            },
                        ),
                        CustomerEdit::AddAddress(
                            new_item_id(),
                            AddressInput {
                                label: Some("site".into()),
                                street: Some(format!("{} Kundulun Road", i % 500)),
                                city: Some("Baotou".into()),
                                region: Some("Inner Mongolia".into()),
                                country: Some("CN".into()),
                                ..Default::default()
                            },
                        ),
                        CustomerEdit::AddEquipment(
                            new_item_id(),
                            EquipmentInput {
                                model: Some("WL-980 wheel loader".into()),
                                serial: Some(format!("WL980-{i:07}")),
                                installed_at: Some(1_600_000_000_000 + i as i64 * 1000),
                                status: Some("running".into()),
                            },
                        ),
                        CustomerEdit::AddProductLine("loaders".into()),
                    ];
                    for e in edits {
                        apply_edit(doc, &Edit::Customer(e), &ctx)?;
                    }
                    if i % 2 == 0 {
                        apply_edit(
                            doc,
                            &Edit::Customer(CustomerEdit::AddEquipment(
                                new_item_id(),
                                EquipmentInput {
                                    model: Some("HT-45 haul truck".into()),
                                    serial: Some(format!("HT45-{i:07}")),
                                    installed_at: Some(1_610_000_000_000),
                                    status: Some("down".into()),
                                },
                            )),
                            &ctx,
                        )?;
                    }
                    Ok(())
                })?;
                // A later edit, as its own change: documents carry some history.
                tx.edit(id, |doc| {
                    apply_edit(
                        doc,
                        &Edit::Customer(CustomerEdit::Set(CustomerField::Stage, "user".into())),
                        &ctx,
                    )
                })?;
                cust.push((id, scope));
            }
            for i in 0..visits {
                let (customer_id, scope) = cust[i % cust.len()];
                let new = NewVisit {
                    customer_id: customer_id.into(),
                    kind: Some(["sales_call", "return_visit", "service_repair"][i % 3].into()),
                    notes: Some(format!(
                        "Visit {i}: met the purchaser and the site engineer; two loaders need \
                         replacing before winter, asked for a quote with delivery in March."
                    )),
                    status: VisitStatus::Planned,
                    at: Some(1_700_000_000_000 + i as i64 * 60_000),
                    location: Some("Baotou open-pit mine, gate 3".into()),
                };
                let id = DocId::new();
                tx.create(id, |doc, id| {
                    create_visit(doc, id, ORG, scope, &new, &ctx)?;
                    apply_edit(
                        doc,
                        &Edit::Visit(VisitEdit::AddNeed(
                            new_item_id(),
                            NeedInput {
                                product_line: "loaders".into(),
                                quantity: Some(2),
                                amount_minor: Some(250_000_000),
                                timeframe: Some("Q1".into()),
                            },
                        )),
                        &ctx,
                    )?;
                    if i % 2 == 0 {
                        apply_edit(
                            doc,
                            &Edit::Visit(VisitEdit::AddTask(
                                new_item_id(),
                                TaskInput {
                                    title: Some("Follow up on the quote within 3 days".into()),
                                    due: Some(1_700_000_000_000 + i as i64 * 60_000 + 259_200_000),
                                    assignee: Some(identity.author.clone()),
                                },
                            )),
                            &ctx,
                        )?;
                    }
                    Ok(())
                })?;
                if i % 2 == 0 {
                    // Planned, then done (a second change).
                    tx.edit(id, |doc| {
                        apply_edit(
                            doc,
                            &Edit::Visit(VisitEdit::MarkStatus(VisitStatus::Done)),
                            &ctx,
                        )
                    })?;
                }
            }
            for i in 0..quotes {
                let (customer_id, scope) = cust[(i * 7) % cust.len()];
                let new = NewQuote {
                    customer_id: customer_id.into(),
                    currency: "CNY".into(),
                    quote_no: Some(format!("BENCH-{i:06}")),
                    valid_until: Some(1_710_000_000_000),
                };
                let id = DocId::new();
                tx.create(id, |doc, id| {
                    create_quote(doc, id, ORG, scope, &new, &ctx)?;
                    for (k, sku) in ["WL-980", "HT-45", "SP-KIT-12"].iter().enumerate() {
                        apply_edit(
                            doc,
                            &Edit::Quote(QuoteEdit::AddLine(
                                new_item_id(),
                                LineInput {
                                    sku: Some((*sku).into()),
                                    description: Some(format!("{sku} with standard warranty")),
                                    qty: Some(1 + k as i64),
                                    unit_price_minor: Some(125_000_000 / (1 + k as i64)),
                                    discount_bp: Some(250 * k as i64),
                                    sort_key: Some(format!("a{k}")),
                                },
                            )),
                            &ctx,
                        )?;
                    }
                    Ok(())
                })?;
                if i % 4 == 0 {
                    tx.edit(id, |doc| {
                        apply_edit(doc, &Edit::Quote(QuoteEdit::Submit), &ctx)
                    })?;
                }
            }
            Ok(())
        })
    })?;
    Ok(())
}

/// Up to `n` document ids from a projection table, in id order.
pub fn some_ids(client: &Client, table: &str, n: usize) -> anyhow::Result<Vec<DocId>> {
    let rows = client.query(
        &format!("SELECT id FROM {table} ORDER BY id LIMIT {n}"),
        &[],
    )?;
    let ids: Vec<DocId> = rows
        .iter()
        .filter_map(|r| r["id"].as_str()?.parse().ok())
        .collect();
    if ids.is_empty() {
        bail!("no rows in {table}");
    }
    Ok(ids)
}

/// How a week of offline edits is ordered in the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EditOrder {
    /// Round robin over the documents: consecutive edits touch different documents (the
    /// hardest order for the relay: every upload batch touches every edited document).
    Spread,
    /// All edits of one document one after another, as a rep who finishes one customer
    /// before the next.
    Grouped,
}

/// `n` offline edits, one transaction each, as a rep makes them over a week offline: spread
/// over 1,000 customers, 1,000 visits and 500 quotes; customer fields, phones and contacts,
/// visit notes, locations and tasks, quote terms and notes; each writes a new value, so each
/// is one change.
pub fn offline_edits(client: &Client, n: usize) -> anyhow::Result<()> {
    offline_edits_in(client, n, EditOrder::Spread, 0)
}

/// [`offline_edits`] in the given order; `round` varies the values written, so that each
/// round's edits change the documents again.
pub fn offline_edits_in(
    client: &Client,
    n: usize,
    order: EditOrder,
    round: usize,
) -> anyhow::Result<()> {
    let customers = some_ids(client, "customers", 1_000)?;
    let visits = some_ids(client, "visits", 1_000)?;
    let quotes = some_ids(client, "quotes", 500)?;
    let mut edits: Vec<usize> = (0..n).collect();
    if order == EditOrder::Grouped {
        // By document: customers, visits, then quotes, each document's edits in their order.
        edits.sort_by_key(|&i| match i % 8 {
            0..=2 => (0, i % customers.len(), i),
            3..=5 => (1, i % visits.len(), i),
            _ => (2, i % quotes.len(), i),
        });
    }
    for e in edits {
        let c = customers[e % customers.len()];
        let v = visits[e % visits.len()];
        let q = quotes[e % quotes.len()];
        let i = e + round * n;
        let r = match e % 8 {
            0 => client.customers().edit(
                c.into(),
                CustomerEdit::Set(CustomerField::Email, format!("info{i}@example.cn")),
            ),
            1 => client
                .customers()
                .add_phone(c.into(), format!("+86 135 {i:08}")),
            2 => client
                .customers()
                .add_contact(
                    c.into(),
                    ContactInput {
                        name: Some(format!("New contact {i}")),
                        phone: Some(format!("+86 137 {i:08}")),
                        ..Default::default()
                    },
                )
                .map(|_| ()),
            3 => client.visits().edit(
                v.into(),
                VisitEdit::Set(VisitField::Notes, format!("Revised notes {i}")),
            ),
            4 => client.visits().edit(
                v.into(),
                VisitEdit::Set(VisitField::Location, format!("Gate {i}")),
            ),
            5 => client
                .visits()
                .add_task(
                    v.into(),
                    TaskInput {
                        title: Some(format!("Call back {i}")),
                        ..Default::default()
                    },
                )
                .map(|_| ()),
            6 => client.quotes().edit(
                q.into(),
                QuoteEdit::Set(
                    fieldsync_core::model::QuoteField::PaymentTerms,
                    format!("30% advance, rest in {} days", 30 + i % 60),
                ),
            ),
            _ => client.quotes().edit(
                q.into(),
                QuoteEdit::AddNote(new_item_id(), format!("Note {i}")),
            ),
        };
        r.with_context(|| format!("offline edit {i}"))?;
    }
    Ok(())
}

/// The office's work while a rep is away: `rounds` notes on each of `customers` (round after
/// round, so every customer's latest note is near the end of the relay's log), in one store
/// transaction.
pub fn office_notes(client: &Client, customers: &[DocId], rounds: usize) -> anyhow::Result<()> {
    let identity: Identity = client.identity()?;
    let ctx = EditCtx::new(identity.author.clone(), identity.role);
    client.with_store(|store| {
        store.transaction(|tx| {
            for round in 0..rounds {
                for (i, id) in customers.iter().enumerate() {
                    let text = format!(
                        "Week {round}, call {i}: the purchaser confirmed the budget for two \
                         loaders; the site engineer reports the HT-45 down since Tuesday and \
                         asks for a service visit before the pit reopens. Quote follows."
                    );
                    tx.edit(*id, |doc| {
                        apply_edit(
                            doc,
                            &Edit::Customer(CustomerEdit::AddNote(new_item_id(), text)),
                            &ctx,
                        )
                    })?;
                }
            }
            Ok(())
        })
    })?;
    Ok(())
}

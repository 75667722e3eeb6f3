//! A narrated walk-through of the offline replica, with no network at all.
//!
//! Run with `cargo run -p fieldsync-examples --example replica`.
//!
//! 1. A rep opens a replica on their laptop and records customers, contacts and equipment.
//! 2. They log a visit with a follow-up task, and draft and submit a quote; their manager
//!    approves it and it is sent.
//! 3. The queries a rep needs offline: customers by name, caller lookup by phone, the customer
//!    timeline, open tasks and quotes due for follow-up.
//! 4. A second laptop edits the same customer at the same time; the two exchange documents by
//!    export/import (as a sync would), the same-field conflict shows up and is resolved.

use std::sync::mpsc::Receiver;

use anyhow::{Context, Result, bail};
use fieldsync_client::{
    Client, ContactInput, CustomerFilter, DocEvent, EquipmentInput, Identity, LineInput, NeedInput,
    NewCustomer, NewQuote, NewVisit, Role, TaskInput, VisitStatus,
};
use fieldsync_core::ids::now_millis;

const DAY: i64 = 24 * 3600 * 1000;

fn money(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

fn drain(events: &Receiver<DocEvent>) -> String {
    let evs: Vec<String> = events
        .try_iter()
        .map(|e| {
            format!(
                "{} {} ({:?})",
                e.kind.map_or("?", |k| k.as_str()),
                short(&e.id.to_string()),
                e.origin
            )
        })
        .collect();
    if evs.is_empty() {
        "none".into()
    } else {
        evs.join(", ")
    }
}

fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

fn main() -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;

    println!("== 1. Laptop A: a rep records customers offline ==");
    let a = Client::open(dir.path().join("laptop-a.db"))?;
    a.set_identity(Identity::new("li.wei", Role::Rep, "acme-machinery"))?;
    let events = a.subscribe();
    println!(
        "opened {} (device {}) as {:?}",
        a.path().display(),
        a.device_id(),
        a.identity()?
    );

    let baotou = a.customers().create(NewCustomer {
        scope: "north-mines".into(),
        name: "Baotou Mining Co".into(),
        phone: Some("+86 (472) 555-0101".into()),
        industry: Some("mining".into()),
        stage: Some("opportunity".into()),
        ..Default::default()
    })?;
    let purchaser = a.customers().add_contact(
        baotou,
        ContactInput {
            name: Some("Zhao Lei".into()),
            title: Some("Head of purchasing".into()),
            phone: Some("+86 138 0000 0002".into()),
            is_purchaser: Some(true),
            ..Default::default()
        },
    )?;
    a.customers().add_contact(
        baotou,
        ContactInput {
            name: Some("Sun Mei".into()),
            title: Some("Maintenance lead".into()),
            ..Default::default()
        },
    )?;
    a.customers().add_equipment(
        baotou,
        EquipmentInput {
            model: Some("HT-320 haul truck".into()),
            serial: Some("HT320-00417".into()),
            status: Some("running".into()),
            ..Default::default()
        },
    )?;
    for (name, phone, stage) in [
        ("ordos coal group", "+86 477 555 0199", "potential"),
        ("Hohhot Cement", "0471-555-0123", "order_customer"),
    ] {
        a.customers().create(NewCustomer {
            scope: "north-mines".into(),
            name: name.into(),
            phone: Some(phone.into()),
            stage: Some(stage.into()),
            ..Default::default()
        })?;
    }
    let c = a.customers().get(baotou)?;
    println!(
        "created {} with {} contacts, {} unit(s) of equipment, phones {:?}",
        c.name,
        c.contacts.len(),
        c.equipment.len(),
        c.phones.iter().map(|p| p.raw.as_str()).collect::<Vec<_>>()
    );
    println!("change events so far: {}", drain(&events));

    println!("\n== 2. A visit with a follow-up task, and a quote ==");
    let visit = a.visits().create(NewVisit {
        customer_id: baotou,
        kind: Some("sales_call".into()),
        notes: Some("Fleet expansion planned for Q3; wants two more trucks.".into()),
        status: VisitStatus::Done,
        at: Some(now_millis() - DAY),
        location: Some("Baotou, pit 3 office".into()),
    })?;
    a.visits().add_contact_met(visit, &purchaser)?;
    a.visits().add_need(
        visit,
        NeedInput {
            product_line: "haul-trucks".into(),
            quantity: Some(2),
            amount_minor: Some(2 * 185_000_000),
            timeframe: Some("Q3".into()),
        },
    )?;
    a.visits().set_satisfaction(visit, 4)?;
    let task = a.visits().add_task(
        visit,
        TaskInput {
            title: Some("Send the HT-320 brochure and service plan".into()),
            due: Some(now_millis() + 2 * DAY),
            assignee: Some("li.wei".into()),
        },
    )?;
    let v = a.visits().get(visit)?;
    println!(
        "logged a {} visit ({:?}) in scope {}: {} need(s), task {}",
        v.visit_kind,
        v.status,
        v.header.scope,
        v.needs.len(),
        short(&task)
    );

    let quote = a.quotes().create(NewQuote {
        customer_id: baotou,
        currency: "CNY".into(),
        quote_no: Some("LW-0001".into()),
        valid_until: Some(now_millis() + 30 * DAY),
    })?;
    a.quotes().add_line(
        quote,
        LineInput {
            sku: Some("HT-320".into()),
            description: Some("Haul truck, 320 t".into()),
            qty: Some(2),
            unit_price_minor: Some(185_000_000),
            discount_bp: Some(350),
            ..Default::default()
        },
    )?;
    a.quotes().add_line(
        quote,
        LineInput {
            sku: Some("SVC-3Y".into()),
            description: Some("3-year service plan".into()),
            qty: Some(2),
            unit_price_minor: Some(9_600_000),
            ..Default::default()
        },
    )?;
    a.quotes().submit(quote)?;
    let q = a.quotes().get(quote)?;
    println!(
        "drafted and submitted quote {} with {} lines, total {} {} -> status {:?}",
        q.quote_no.as_deref().unwrap_or("?"),
        q.lines.len(),
        money(q.total.amount_minor),
        q.total.currency,
        q.status
    );
    match a.quotes().approve(quote, None) {
        Err(e) => println!("the rep tries to approve it himself: refused ({e})"),
        Ok(()) => bail!("a rep must not approve quotes"),
    }
    // The manager approves on the same laptop (say, during a review), then the rep sends it.
    a.set_identity(Identity::new("zhang.min", Role::Manager, "acme-machinery"))?;
    a.quotes()
        .approve(quote, Some("margin ok for a fleet deal"))?;
    a.set_identity(Identity::new("li.wei", Role::Rep, "acme-machinery"))?;
    a.quotes().send(quote)?;
    let q = a.quotes().get(quote)?;
    println!(
        "approved by {} and sent; follow-up due in {:.1} days",
        q.approvals.first().map_or("?", |x| x.approver.as_str()),
        (q.follow_up_due.unwrap_or(0) - now_millis()) as f64 / DAY as f64
    );

    println!("\n== 3. Offline queries ==");
    println!("customers sorted by name:");
    for r in a.customers().list(&CustomerFilter::new())? {
        println!("  {:<20} stage {:<15} scope {}", r.name, r.stage, r.scope);
    }
    let caller = "+86-472-555-0101";
    let found = a.customers().find_by_phone(caller)?;
    println!(
        "incoming call from {caller}: {:?}",
        found.iter().map(|r| r.name.as_str()).collect::<Vec<_>>()
    );
    let found = a.customers().find_by_phone("138 0000 0002")?;
    println!(
        "… and 138 0000 0002 (a contact's mobile): {:?}",
        found.iter().map(|r| r.name.as_str()).collect::<Vec<_>>()
    );
    println!("timeline of Baotou Mining Co (newest first):");
    for e in a.customers().timeline(baotou)? {
        println!("  {:<6} {}", e.kind.as_str(), e.summary);
    }
    println!("open tasks for li.wei:");
    for t in a.visits().open_tasks("li.wei")? {
        println!(
            "  {} (customer {}, due in {:.1} days)",
            t.title,
            t.customer_name.as_deref().unwrap_or("?"),
            (t.due.unwrap_or(0) - now_millis()) as f64 / DAY as f64
        );
    }
    let now_due = a.quotes().due_for_follow_up(now_millis())?;
    let later_due = a.quotes().due_for_follow_up(now_millis() + 4 * DAY)?;
    println!(
        "quotes due for follow-up today: {}; four days from now: {:?}",
        now_due.len(),
        later_due
            .iter()
            .map(|r| r.quote_no.as_deref().unwrap_or("?"))
            .collect::<Vec<_>>()
    );
    let rows = a.query(
        "SELECT stage, count(*) AS n FROM customers GROUP BY stage ORDER BY stage",
        &[],
    )?;
    println!("raw read-only SQL, customers per stage: {rows:?}");
    match a.query("DELETE FROM customers", &[]) {
        Err(e) => println!("raw SQL refuses writes: {e}"),
        Ok(_) => bail!("a write went through the read-only SQL interface"),
    }
    println!("local changes waiting for the relay: {}", a.outbox_len()?);

    println!("\n== 4. A second laptop edits the same customer concurrently ==");
    let b = Client::open(dir.path().join("laptop-b.db"))?;
    b.set_identity(Identity::new("wang.fang", Role::Rep, "acme-machinery"))?;
    // Laptop B receives the customer (as a sync would deliver it).
    b.import(&a.export(baotou.into())?)?;
    println!(
        "laptop B has {} with {} contacts",
        b.customers().get(baotou)?.name,
        b.customers().get(baotou)?.contacts.len()
    );
    drain(&events);

    // Both go offline and edit.
    a.customers().set_name(baotou, "Baotou Mining Co., Ltd.")?;
    a.customers().add_phone(baotou, "+86 472 555 0102")?;
    b.customers().set_name(baotou, "Baotou Mining Group")?;
    b.customers().add_contact(
        baotou,
        ContactInput {
            name: Some("Qian Hao".into()),
            title: Some("Site manager".into()),
            ..Default::default()
        },
    )?;
    println!("A renamed it to \"Baotou Mining Co., Ltd.\" and added a phone number;");
    println!("B renamed it to \"Baotou Mining Group\" and added a contact.");

    // Back online: they exchange documents both ways.
    let from_a = a.export(baotou.into())?;
    let from_b = b.export(baotou.into())?;
    a.import(&from_b)?;
    b.import(&from_a)?;
    println!(
        "after exchanging {} + {} bytes, laptop A heard: {}",
        from_a.len(),
        from_b.len(),
        drain(&events)
    );
    let (ca, cb) = (a.customers().get(baotou)?, b.customers().get(baotou)?);
    println!(
        "both laptops agree: {}; name shown = {:?}, {} contacts, {} phones",
        ca == cb,
        ca.name,
        ca.contacts.len(),
        ca.phones.len()
    );
    if ca != cb {
        bail!("the replicas did not converge");
    }
    for (label, client) in [("A", &a), ("B", &b)] {
        for c in client.conflicts()? {
            println!(
                "conflict on laptop {label}: {} field `{}` has values {:?}",
                c.kind, c.path, c.values
            );
        }
    }

    // The rep on laptop A decides, and the decision travels to B.
    a.resolve_conflict(baotou.into(), "name", "Baotou Mining Group Co., Ltd.")?;
    b.import(&a.export(baotou.into())?)?;
    let (ca, cb) = (a.customers().get(baotou)?, b.customers().get(baotou)?);
    println!(
        "resolved on A and sent to B: name = {:?} on both ({}), conflicts left: A {}, B {}",
        ca.name,
        ca == cb,
        a.conflicts()?.len(),
        b.conflicts()?.len()
    );
    if !a.conflicts()?.is_empty() || !b.conflicts()?.is_empty() || ca != cb {
        bail!("the conflict was not resolved everywhere");
    }
    println!(
        "B's customer list: {:?}",
        b.customers()
            .list(&CustomerFilter::new())?
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
    );

    let (pa, pb) = (a.verify()?, b.verify()?);
    println!(
        "verify: laptop A {}, laptop B {}",
        if pa.is_empty() { "healthy" } else { "PROBLEMS" },
        if pb.is_empty() { "healthy" } else { "PROBLEMS" }
    );
    if !pa.is_empty() || !pb.is_empty() {
        bail!("verify found problems: {pa:?} {pb:?}");
    }
    println!(
        "outbox: A {} change(s), B {} change(s) waiting for the relay",
        a.outbox_len()?,
        b.outbox_len()?
    );
    println!("done.");
    Ok(())
}

//! `fieldsync today` and `fieldsync customer brief`: the app's Today and Customer 360 views
//! on the command line ([`Client::today`], [`Client::briefing`]), the same structures as
//! JSON with `--json`.

use super::*;
use fieldsync_client::{Briefing, Today, VisitRow};

fn when(at: Option<i64>) -> String {
    at.map_or_else(|| "undated".to_string(), format_millis)
}

fn visit_line(v: &VisitRow) -> String {
    format!(
        "{}  {}  {}{}",
        when(v.at),
        v.customer_name.as_deref().unwrap_or("?"),
        v.kind,
        match first_line(&v.notes) {
            "" => String::new(),
            n => format!(": {n}"),
        }
    )
}

/// `fieldsync today`.
pub(super) fn today_cmd(client: &Client, args: &TodayArgs) -> Result<()> {
    let t: Today = client.today(args.idle_days)?;
    if args.json {
        return print_json(&t);
    }
    let section = |title: &str, lines: Vec<String>| {
        println!("{title} ({})", lines.len());
        for l in lines.iter().take(20) {
            println!("  {l}");
        }
        if lines.len() > 20 {
            println!("  … and {} more", lines.len() - 20);
        }
    };
    section(
        "Planned visits",
        t.planned_visits.iter().map(visit_line).collect(),
    );
    section(
        "Quotes due for follow-up",
        t.follow_ups_due
            .iter()
            .map(|q| {
                format!(
                    "{}  {}  {} {}  {}",
                    when(q.follow_up_due),
                    q.customer_name.as_deref().unwrap_or("?"),
                    q.quote_no.as_deref().unwrap_or("(no number)"),
                    fmt_minor_units(q.total_minor),
                    q.currency
                )
            })
            .collect(),
    );
    section(
        "Your open tasks",
        t.open_tasks
            .iter()
            .map(|task| {
                format!(
                    "{}  {}  {}",
                    when(task.due),
                    task.customer_name.as_deref().unwrap_or("?"),
                    task.title
                )
            })
            .collect(),
    );
    section("Greetings", t.greetings.iter().map(visit_line).collect());
    section(
        &format!("Not visited for {} days or more", args.idle_days),
        t.not_visited
            .iter()
            .map(|n| match n.days {
                Some(d) => format!("{}  last visited {d} days ago", n.customer.name),
                None => format!("{}  never visited", n.customer.name),
            })
            .collect(),
    );
    Ok(())
}

/// `fieldsync customer brief CUSTOMER`.
pub(super) fn brief(client: &Client, id: CustomerId, json: bool) -> Result<()> {
    let b: Briefing = client.briefing(id)?;
    if json {
        return print_json(&b);
    }
    let c = &b.customer;
    println!(
        "{}  ({}, {}, {})",
        c.name,
        c.stage,
        c.header.scope,
        short_id(client, id)
    );
    for p in &c.phones {
        println!("  phone {}", p.raw);
    }
    println!(
        "Contacts ({})",
        c.contacts.iter().filter(|x| x.active).count()
    );
    for x in c.contacts.iter().filter(|x| x.active) {
        println!(
            "  {}{}{}{}",
            x.name,
            x.title
                .as_deref()
                .map(|t| format!(", {t}"))
                .unwrap_or_default(),
            x.phone
                .as_deref()
                .map(|p| format!("  {p}"))
                .unwrap_or_default(),
            if x.is_purchaser { "  (purchaser)" } else { "" }
        );
    }
    println!("Equipment ({})", c.equipment.len());
    for e in &c.equipment {
        println!(
            "  {}{}{}",
            e.model,
            e.serial
                .as_deref()
                .map(|s| format!("  serial {s}"))
                .unwrap_or_default(),
            e.installed_at
                .map(|at| format!("  installed {}", format_millis(at)))
                .unwrap_or_default()
        );
    }
    println!("Open tasks ({})", b.open_tasks.len());
    for t in &b.open_tasks {
        println!(
            "  {}  {}{}",
            when(t.due),
            t.title,
            t.assignee
                .as_deref()
                .map(|a| format!("  ({a})"))
                .unwrap_or_default()
        );
    }
    println!("Timeline ({})", b.timeline.len());
    for e in b.timeline.iter().take(15) {
        println!(
            "  {}  {}",
            format_millis(e.occurred_at),
            timeline_summary(client, e)
        );
    }
    println!("Prices quoted before ({})", b.price_history.len());
    for l in &b.price_history {
        println!(
            "  {}  {} × {} {}{}  {} ({})",
            l.sku,
            l.qty,
            fmt_minor_units(l.unit_price_minor),
            l.currency,
            if l.discount_bp > 0 {
                format!(" less {}%", fmt_minor_units(l.discount_bp))
            } else {
                String::new()
            },
            format_millis(l.created_at),
            l.quote_status.as_str()
        );
    }
    match b.changed.since {
        Some(since) => println!(
            "Changed by others since the last sync ({}):",
            format_millis(since)
        ),
        None => println!("Changed by others since the last sync: never synced"),
    }
    for x in &b.changed.received {
        println!("  {}  {}  {}", format_millis(x.at), x.kind, x.title);
    }
    if !b.changed.waiting.is_empty() {
        println!(
            "Your edits waiting for the relay ({}):",
            b.changed.waiting.len()
        );
        for x in &b.changed.waiting {
            println!("  {}  {}  {}", format_millis(x.at), x.kind, x.title);
        }
    }
    Ok(())
}

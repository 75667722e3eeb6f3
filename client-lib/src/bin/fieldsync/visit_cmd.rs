//! `fieldsync visit …`: visits at customers, their status, needs, next-step tasks and
//! comments, and the open tasks of a rep.

use super::*;
use fieldsync_client::{NeedInput, TaskInput, Visit, VisitEdit, VisitField};

pub(super) fn visit(client: &Client, cmd: VisitCmd) -> Result<()> {
    let visits = client.visits();
    match cmd {
        VisitCmd::Log {
            customer,
            notes,
            status,
            kind,
            location,
            at,
            json,
        } => {
            let customer = customer_id(client, &customer)?;
            let status: VisitStatus = status.into();
            let at = match at {
                Some(a) => parse_when(&a).context("--at")?,
                None => now(),
            };
            let id = visits.create(NewVisit {
                customer_id: customer,
                kind,
                notes: Some(notes),
                status,
                at: Some(at),
                location,
            })?;
            if json {
                print_json(&visits.get(id)?)?;
            } else {
                let v = visits.get(id)?;
                println!(
                    "Logged a {} {} ({}) at {}.",
                    v.status.as_str(),
                    visit_kind_words(&v.visit_kind),
                    short_id(client, id),
                    customer_name(client, customer)
                );
            }
        }
        VisitCmd::Attach(a) => {
            let id = visit_id(client, &a.doc)?;
            attach(client, id.into(), &a)?;
        }
        VisitCmd::Show(a) => {
            let v = visits.get(visit_id(client, &a.id)?)?;
            if a.json {
                print_json(&v)?;
            } else {
                show_visit(client, &v);
            }
        }
        VisitCmd::List {
            customer,
            author,
            status,
            all,
            json,
        } => {
            let mut filter = VisitFilter::new();
            filter.customer = customer.map(|c| customer_id(client, &c)).transpose()?;
            filter.author = author;
            filter.status = status.map(VisitStatus::from);
            filter.include_archived = all;
            let rows = visits.list(&filter)?;
            if json {
                print_json(&rows)?;
            } else {
                let short = ShortIds::new(client)?;
                let ids: Vec<String> = rows.iter().map(|r| short.of(r.id)).collect();
                let width = ids.iter().map(String::len).max().unwrap_or(0);
                for (r, id) in rows.iter().zip(&ids) {
                    println!(
                        "{id:<width$}  {}  {:<9}  {}  {}{}",
                        fmt_when(r.at),
                        r.status.as_str(),
                        r.customer_name.as_deref().unwrap_or("?"),
                        first_line(&r.notes),
                        if r.archived { "  (archived)" } else { "" }
                    );
                }
            }
        }
        VisitCmd::SetStatus { id, status, json } => {
            let id = visit_id(client, &id)?;
            let asked: VisitStatus = status.into();
            visits.mark_status(id, asked)?;
            done(client, id, json, |v| {
                if v.status == asked {
                    format!("Marked {} {}.", label(client, v), asked.as_str())
                } else {
                    format!(
                        "Marked {} {}, but it stays {}: done beats cancelled beats planned, on \
                         every laptop.",
                        label(client, v),
                        asked.as_str(),
                        v.status.as_str()
                    )
                }
            })?;
        }
        VisitCmd::Edit {
            id,
            kind,
            location,
            notes,
            at,
            json,
        } => {
            let id = visit_id(client, &id)?;
            let mut edits = Vec::new();
            let mut what = Vec::new();
            for (field, name, value) in [
                (VisitField::Kind, "kind", kind),
                (VisitField::Location, "location", location),
                (VisitField::Notes, "notes", notes),
            ] {
                if let Some(v) = value {
                    what.push(if field == VisitField::Notes {
                        "notes".to_string()
                    } else {
                        format!("{name} {v:?}")
                    });
                    edits.push(VisitEdit::Set(field, v));
                }
            }
            if let Some(at) = at {
                let at = parse_when(&at).context("--at")?;
                what.push(format!("time {}", format_millis(at)));
                edits.push(VisitEdit::SetAt(at));
            }
            if edits.is_empty() {
                bail!("nothing to change: pass --kind, --location, --notes or --at");
            }
            visits.edit_all(id, &edits)?;
            done(client, id, json, |v| {
                format!("Updated {}: {}.", label(client, v), what.join(", "))
            })?;
        }
        VisitCmd::Satisfaction { id, rating, json } => {
            let id = visit_id(client, &id)?;
            if !(1..=5).contains(&rating) {
                bail!("the rating is 1 (poor) to 5 (excellent), got {rating}");
            }
            visits.set_satisfaction(id, rating)?;
            done(client, id, json, |v| {
                format!("Recorded satisfaction {rating}/5 at {}.", label(client, v))
            })?;
        }
        VisitCmd::AddContactMet { id, contact, json } => {
            let id = visit_id(client, &id)?;
            let v = visits.get(id)?;
            let customer = client.customers().get(v.customer_id).with_context(|| {
                format!(
                    "the visit's customer {} is not on this laptop, so its contacts are not \
                     known here",
                    v.customer_id
                )
            })?;
            let item = contact_of(&customer, &contact)?;
            visits.add_contact_met(id, &item)?;
            let name = customer
                .contacts
                .iter()
                .find(|c| c.id == item)
                .map_or_else(|| item.clone(), |c| c.name.clone());
            done(client, id, json, |v| {
                format!("Recorded meeting {name} at {}.", label(client, v))
            })?;
        }
        VisitCmd::AddNeed {
            id,
            product_line,
            qty,
            amount,
            timeframe,
            json,
        } => {
            let id = visit_id(client, &id)?;
            if qty.is_some_and(|q| q < 0) {
                bail!("--qty must not be negative");
            }
            let need = NeedInput {
                product_line: text(product_line, "--product-line")?,
                quantity: qty,
                amount_minor: amount
                    .as_deref()
                    .map(parse_minor_units)
                    .transpose()
                    .context("--amount")?,
                timeframe,
            };
            let line = need.product_line.clone();
            visits.add_need(id, need)?;
            done(client, id, json, |v| {
                format!("Recorded a need for {line} at {}.", label(client, v))
            })?;
        }
        VisitCmd::AddTask {
            id,
            title,
            fields,
            json,
        } => {
            let id = visit_id(client, &id)?;
            let title = text(title, "--title")?;
            let mut input = task_input(fields)?;
            input.title = Some(title.clone());
            let item = visits.add_task(id, input)?;
            done(client, id, json, |v| {
                format!(
                    "Added task {title:?} ({}) to {}.",
                    task_short(v, &item),
                    label(client, v)
                )
            })?;
        }
        VisitCmd::UpdateTask {
            id,
            task,
            title,
            fields,
            json,
        } => {
            let id = visit_id(client, &id)?;
            let item = task_of(&visits.get(id)?, &task)?;
            let mut input = task_input(fields)?;
            input.title = title.map(|t| text(t, "--title")).transpose()?;
            if input == TaskInput::default() {
                bail!("nothing to change: pass --title, --due or --assignee");
            }
            visits.update_task(id, &item, input)?;
            done(client, id, json, |v| {
                format!(
                    "Updated task {:?} ({}) of {}.",
                    task_title(v, &item),
                    task_short(v, &item),
                    label(client, v)
                )
            })?;
        }
        VisitCmd::CompleteTask { id, task, json } => {
            let id = visit_id(client, &id)?;
            let item = task_of(&visits.get(id)?, &task)?;
            visits.complete_task(id, &item)?;
            done(client, id, json, |v| {
                let by = v
                    .tasks
                    .iter()
                    .find(|t| t.id == item)
                    .and_then(|t| Some((t.done_at?, t.done_by.clone().unwrap_or_default())))
                    .map(|(at, by)| format!(" (done {} by {by})", format_millis(at)))
                    .unwrap_or_default();
                format!(
                    "Completed task {:?} ({}) of {}{by}.",
                    task_title(v, &item),
                    task_short(v, &item),
                    label(client, v)
                )
            })?;
        }
        VisitCmd::AddComment {
            id,
            text: comment,
            json,
        } => {
            let id = visit_id(client, &id)?;
            visits.add_comment(id, text(comment, "the comment")?)?;
            done(client, id, json, |v| {
                format!("Added a comment to {}.", label(client, v))
            })?;
        }
        VisitCmd::Archive(a) => {
            let id = visit_id(client, &a.id)?;
            visits.archive(id)?;
            done(client, id, a.json, |v| {
                format!(
                    "Archived {}: hidden from `visit list` (`visit list --all` shows it).",
                    label(client, v)
                )
            })?;
        }
        VisitCmd::Tasks { assignee, json } => {
            let assignee = match assignee {
                Some(a) => a,
                None => client.identity()?.author,
            };
            let rows = visits.open_tasks(&assignee)?;
            if json {
                return print_json(&rows);
            }
            if rows.is_empty() {
                println!("No open tasks for {assignee}.");
                return Ok(());
            }
            let short = ShortIds::new(client)?;
            for r in &rows {
                let siblings = visits
                    .get(r.visit_id)
                    .map(|v| v.tasks.into_iter().map(|t| t.id).collect::<Vec<_>>())
                    .unwrap_or_default();
                let ids: Vec<&str> = siblings.iter().map(String::as_str).collect();
                println!(
                    "{}  {}  due {}  {}  {}",
                    short.of(r.visit_id),
                    item_short(&ids, &r.task_id),
                    fmt_when(r.due),
                    r.customer_name.as_deref().unwrap_or("?"),
                    r.title
                );
            }
            println!(
                "Complete one with `fieldsync visit complete-task VISIT TASK` (the first two \
                 columns)."
            );
        }
    }
    Ok(())
}

/// After an edit: the visit as JSON, or the confirmation `say` writes from it.
fn done(
    client: &Client,
    id: VisitId,
    json: bool,
    say: impl FnOnce(&Visit) -> String,
) -> Result<()> {
    let v = client.visits().get(id)?;
    if json {
        print_json(&v)
    } else {
        println!("{}", say(&v));
        Ok(())
    }
}

/// "visit 01a250eb-d365 at Baotou Mining Co".
fn label(client: &Client, v: &Visit) -> String {
    format!(
        "visit {} at {}",
        short_id(client, v.header.id),
        customer_name(client, v.customer_id)
    )
}

fn task_input(f: TaskFields) -> Result<TaskInput> {
    Ok(TaskInput {
        title: None,
        due: f
            .due
            .as_deref()
            .map(parse_when)
            .transpose()
            .context("--due")?,
        assignee: f.assignee,
    })
}

fn task_of(v: &Visit, given: &str) -> Result<String> {
    let items: Vec<Item<'_>> = v
        .tasks
        .iter()
        .map(|t| Item {
            id: &t.id,
            names: vec![t.title.as_str()],
            label: format!(
                "{}{}",
                t.title,
                if t.done_at.is_some() { " (done)" } else { "" }
            ),
        })
        .collect();
    pick_item(
        given,
        "task",
        "the visit",
        &items,
        "`fieldsync visit show VISIT`",
    )
}

fn task_short(v: &Visit, id: &str) -> String {
    let ids: Vec<&str> = v.tasks.iter().map(|t| t.id.as_str()).collect();
    item_short(&ids, id)
}

fn task_title<'v>(v: &'v Visit, id: &str) -> &'v str {
    v.tasks
        .iter()
        .find(|t| t.id == id)
        .map_or("?", |t| t.title.as_str())
}

fn show_visit(client: &Client, v: &Visit) {
    println!(
        "{}  {} {} at {}",
        v.header.id,
        v.status.as_str(),
        visit_kind_words(&v.visit_kind),
        customer_name(client, v.customer_id)
    );
    if let Some(at) = v.at {
        println!("  at:           {}", format_millis(at));
    }
    if let Some(l) = &v.location {
        println!("  location:     {l}");
    }
    for line in v.notes.lines() {
        println!("  notes:        {line}");
    }
    if let Some(s) = v.satisfaction {
        println!("  satisfaction: {s}/5");
    }
    if !v.contacts_met.is_empty() {
        let customer = client.customers().get(v.customer_id).ok();
        let names: Vec<String> = v
            .contacts_met
            .iter()
            .map(|id| {
                customer
                    .as_ref()
                    .and_then(|c| c.contacts.iter().find(|x| x.id == *id))
                    .map_or_else(|| id.clone(), |x| x.name.clone())
            })
            .collect();
        println!("  met:          {}", names.join(", "));
    }
    if v.header.archived {
        println!("  (archived)");
    }
    println!(
        "  logged:       {} by {}",
        format_millis(v.header.created_at),
        v.header.created_by
    );
    if !v.needs.is_empty() {
        println!("Needs:");
        for n in &v.needs {
            let mut parts = vec![n.product_line.clone()];
            if let Some(q) = n.quantity {
                parts.push(format!("qty {q}"));
            }
            if let Some(a) = n.amount_minor {
                parts.push(format!("about {}", fmt_minor_units(a)));
            }
            if let Some(t) = &n.timeframe {
                parts.push(t.clone());
            }
            println!("  {}", parts.join(", "));
        }
    }
    if !v.tasks.is_empty() {
        println!("Tasks:");
        for t in &v.tasks {
            println!(
                "  {}  {}  due {}{}{}",
                task_short(v, &t.id),
                t.title,
                fmt_when(t.due),
                t.assignee
                    .as_deref()
                    .map(|a| format!(", for {a}"))
                    .unwrap_or_default(),
                t.done_at
                    .map(|at| format!(
                        "  done {} by {}",
                        format_millis(at),
                        t.done_by.as_deref().unwrap_or("?")
                    ))
                    .unwrap_or_default()
            );
        }
    }
    if !v.comments.is_empty() {
        println!("Comments:");
        for n in &v.comments {
            println!("  {} {}: {}", format_millis(n.at), n.author, n.text);
        }
    }
}

//! `fieldsync customer …`: customers, their contacts, addresses, equipment, notes, the
//! role-owned fields (credit limit, payment terms, owner, scope, grade), lookup by phone and
//! the timeline.

use super::*;
use fieldsync_client::{AddressInput, ContactInput, Customer, CustomerRow, EquipmentInput, Money};

pub(super) fn customer(client: &Client, cmd: CustomerCmd) -> Result<()> {
    let customers = client.customers();
    match cmd {
        CustomerCmd::Add {
            name,
            scope,
            phone,
            industry,
            stage,
            source,
            outside_grant,
            json,
        } => {
            check_granted_scope(client, &scope, outside_grant)?;
            let id = customers.create(NewCustomer {
                org: String::new(),
                scope,
                name,
                phone,
                industry,
                stage,
                source,
                ..Default::default()
            })?;
            let c = customers.get(id)?;
            if json {
                print_json(&c)?;
            } else {
                println!(
                    "Added customer {} ({}) in {}.",
                    c.name,
                    short_id(client, id),
                    c.header.scope
                );
            }
        }
        CustomerCmd::Edit {
            id,
            name,
            short_name,
            phone,
            industry,
            business_type,
            size,
            source,
            stage,
            email,
            json,
        } => {
            let id = customer_id(client, &id)?;
            let mut edits = Vec::new();
            let mut what = Vec::new();
            for (field, label, value) in [
                (CustomerField::Name, "name", name),
                (CustomerField::ShortName, "short name", short_name),
                (CustomerField::Industry, "industry", industry),
                (CustomerField::BusinessType, "business type", business_type),
                (CustomerField::Size, "size", size),
                (CustomerField::Source, "source", source),
                (CustomerField::Stage, "stage", stage),
                (CustomerField::Email, "e-mail", email),
            ] {
                if let Some(v) = value {
                    what.push(format!("{label} {v:?}"));
                    edits.push(CustomerEdit::Set(field, v));
                }
            }
            if let Some(p) = phone {
                what.push(format!("phone {p:?} added"));
                edits.push(CustomerEdit::AddPhone(p));
            }
            if edits.is_empty() {
                bail!(
                    "nothing to change: pass --name, --short-name, --phone, --industry, \
                     --business-type, --size, --source, --stage or --email"
                );
            }
            let before = customers.get(id)?;
            customers.edit_all(id, &edits).map_err(refused)?;
            if json {
                print_json(&customers.get(id)?)?;
            } else {
                println!(
                    "Updated customer {} ({}): {}.",
                    before.name,
                    short_id(client, id),
                    what.join(", ")
                );
            }
        }
        CustomerCmd::Attach(a) => {
            let id = customer_id(client, &a.doc)?;
            attach(client, id.into(), &a)?;
        }
        CustomerCmd::Show { id, json } => {
            let c = customers.get(customer_id(client, &id)?)?;
            if json {
                print_json(&c)?;
            } else {
                show_customer(&c);
            }
        }
        CustomerCmd::List {
            scope,
            search,
            stage,
            owner,
            all,
            json,
        } => {
            let mut filter = CustomerFilter::new();
            filter.scope = scope;
            filter.search = search;
            filter.stage = stage;
            filter.owner = owner;
            filter.include_archived = all;
            let rows = customers.list(&filter)?;
            if json {
                print_json(&rows)?;
            } else {
                print_customer_rows(client, &rows)?;
            }
        }
        CustomerCmd::FindPhone { phone, json } => {
            let rows = customers.find_by_phone(&phone)?;
            if json {
                print_json(&rows)?;
            } else if rows.is_empty() {
                println!("No customer on this laptop has the phone number {phone:?}.");
            } else {
                print_customer_rows(client, &rows)?;
            }
        }
        CustomerCmd::Timeline(a) => {
            let id = customer_id(client, &a.id)?;
            let entries = customers.timeline(id)?;
            if a.json {
                return print_json(&entries);
            }
            if entries.is_empty() {
                println!("No visits or quotes for {} yet.", customer_name(client, id));
                return Ok(());
            }
            let short = ShortIds::new(client)?;
            let ids: Vec<String> = entries.iter().map(|e| short.of(e.id)).collect();
            let width = ids.iter().map(String::len).max().unwrap_or(0);
            for (e, sid) in entries.iter().zip(&ids) {
                println!(
                    "{}  {:<5}  {sid:<width$}  {}",
                    format_millis(e.occurred_at),
                    e.kind,
                    timeline_summary(client, e)
                );
            }
        }
        CustomerCmd::Brief(a) => {
            let id = customer_id(client, &a.id)?;
            brief(client, id, a.json)?;
        }
        CustomerCmd::Archive(a) => {
            let id = customer_id(client, &a.id)?;
            customers.archive(id)?;
            let c = customers.get(id)?;
            if a.json {
                print_json(&c)?;
            } else {
                println!(
                    "Archived customer {} ({}): hidden from `customer list`, kept with its \
                     visits and quotes (`customer list --all` shows it).",
                    c.name,
                    short_id(client, id)
                );
            }
        }
        CustomerCmd::Unarchive(a) => {
            let id = customer_id(client, &a.id)?;
            customers.unarchive(id)?;
            done(client, id, a.json, |c| {
                format!("Restored {} from the archive.", label(client, c))
            })?;
        }
        CustomerCmd::AddContact {
            id,
            name,
            fields,
            purchaser,
            inactive,
            json,
        } => {
            let id = customer_id(client, &id)?;
            let name = text(name, "--name")?;
            let item = customers.add_contact(
                id,
                ContactInput {
                    name: Some(name.clone()),
                    title: fields.title,
                    phone: fields.phone,
                    email: fields.email,
                    is_purchaser: purchaser.then_some(true),
                    notes: fields.notes,
                    active: inactive.then_some(false),
                },
            )?;
            done(client, id, json, |c| {
                format!(
                    "Added contact {name} ({}) to {}.",
                    contact_short(c, &item),
                    label(client, c)
                )
            })?;
        }
        CustomerCmd::UpdateContact {
            id,
            contact,
            name,
            fields,
            purchaser,
            not_purchaser,
            inactive,
            active,
            json,
        } => {
            let id = customer_id(client, &id)?;
            let c = customers.get(id)?;
            let item = contact_of(&c, &contact)?;
            let changes = ContactInput {
                name: name.map(|n| text(n, "--name")).transpose()?,
                title: fields.title,
                phone: fields.phone,
                email: fields.email,
                is_purchaser: flag(purchaser, not_purchaser),
                notes: fields.notes,
                active: flag(active, inactive),
            };
            if changes == ContactInput::default() {
                bail!(
                    "nothing to change: pass --name, --title, --phone, --email, --notes, \
                     --purchaser, --not-purchaser, --active or --inactive"
                );
            }
            customers.update_contact(id, &item, changes)?;
            done(client, id, json, |c| {
                let name = c
                    .contacts
                    .iter()
                    .find(|x| x.id == item)
                    .map_or("?", |x| x.name.as_str());
                format!(
                    "Updated contact {name} ({}) of {}.",
                    contact_short(c, &item),
                    label(client, c)
                )
            })?;
        }
        CustomerCmd::AddAddress { id, fields, json } => {
            let id = customer_id(client, &id)?;
            let input = address_input(fields, None);
            if input == AddressInput::default() {
                bail!(
                    "an address needs at least one of --label, --street, --city, --region, \
                     --postcode or --country"
                );
            }
            let item = customers.add_address(id, input)?;
            done(client, id, json, |c| {
                format!(
                    "Added address {} to {}.",
                    address_name(c, &item),
                    label(client, c)
                )
            })?;
        }
        CustomerCmd::UpdateAddress {
            id,
            address,
            fields,
            archive,
            restore,
            json,
        } => {
            let id = customer_id(client, &id)?;
            let c = customers.get(id)?;
            let item = address_of(&c, &address)?;
            let input = address_input(fields, flag(archive, restore));
            if input == AddressInput::default() {
                bail!(
                    "nothing to change: pass --label, --street, --city, --region, --postcode, \
                     --country, --archive or --restore"
                );
            }
            customers.edit(id, CustomerEdit::UpdateAddress(item.clone(), input))?;
            done(client, id, json, |c| {
                format!(
                    "Updated address {} of {}.",
                    address_name(c, &item),
                    label(client, c)
                )
            })?;
        }
        CustomerCmd::AddEquipment {
            id,
            model,
            fields,
            json,
        } => {
            let id = customer_id(client, &id)?;
            let model = text(model, "--model")?;
            let mut input = equipment_input(fields)?;
            input.model = Some(model.clone());
            let item = customers.add_equipment(id, input)?;
            done(client, id, json, |c| {
                format!(
                    "Added equipment {model} ({}) to {}.",
                    equipment_short(c, &item),
                    label(client, c)
                )
            })?;
        }
        CustomerCmd::UpdateEquipment {
            id,
            equipment,
            model,
            fields,
            json,
        } => {
            let id = customer_id(client, &id)?;
            let c = customers.get(id)?;
            let item = equipment_of(&c, &equipment)?;
            let mut input = equipment_input(fields)?;
            input.model = model.map(|m| text(m, "--model")).transpose()?;
            if input == EquipmentInput::default() {
                bail!("nothing to change: pass --model, --serial, --installed or --status");
            }
            customers.update_equipment(id, &item, input)?;
            done(client, id, json, |c| {
                let model = c
                    .equipment
                    .iter()
                    .find(|e| e.id == item)
                    .map_or("?", |e| e.model.as_str());
                format!(
                    "Updated equipment {model} ({}) of {}.",
                    equipment_short(c, &item),
                    label(client, c)
                )
            })?;
        }
        CustomerCmd::AddNote {
            id,
            text: note,
            json,
        } => {
            let id = customer_id(client, &id)?;
            customers.add_note(id, text(note, "the note")?)?;
            done(client, id, json, |c| {
                format!("Added a note to {}.", label(client, c))
            })?;
        }
        CustomerCmd::AddProductLine { id, line, json } => {
            let id = customer_id(client, &id)?;
            let line = text(line, "the product line")?;
            customers.add_product_line(id, line.clone())?;
            done(client, id, json, |c| {
                format!("Added product line {line:?} to {}.", label(client, c))
            })?;
        }
        CustomerCmd::AddCompetitor {
            id,
            competitor,
            json,
        } => {
            let id = customer_id(client, &id)?;
            let competitor = text(competitor, "the competitor")?;
            customers.add_competitor(id, competitor.clone())?;
            done(client, id, json, |c| {
                format!(
                    "Recorded competitor {competitor:?} at {}.",
                    label(client, c)
                )
            })?;
        }
        CustomerCmd::ProposeCreditLimit(a) => {
            let (id, limit) = credit_limit(client, &a)?;
            customers.propose_credit_limit(id, limit.clone())?;
            done(client, id, a.json, |c| {
                format!(
                    "Proposed a credit limit of {} for {}; a director sets the approved one.",
                    fmt_money(&limit),
                    label(client, c)
                )
            })?;
        }
        CustomerCmd::SetCreditLimit(a) => {
            let (id, limit) = credit_limit(client, &a)?;
            customers
                .set_credit_limit(id, limit.clone())
                .map_err(refused)?;
            done(client, id, a.json, |c| {
                format!(
                    "Set the credit limit of {} to {}.",
                    label(client, c),
                    fmt_money(&limit)
                )
            })?;
        }
        CustomerCmd::ProposePaymentTerms(a) => {
            let id = customer_id(client, &a.id)?;
            let terms = text(a.value, "the payment terms")?;
            customers.edit(id, CustomerEdit::ProposePaymentTerms(terms.clone()))?;
            done(client, id, a.json, |c| {
                format!(
                    "Proposed payment terms {terms:?} for {}; a director sets the approved ones.",
                    label(client, c)
                )
            })?;
        }
        CustomerCmd::SetPaymentTerms(a) => {
            let id = customer_id(client, &a.id)?;
            let terms = text(a.value, "the payment terms")?;
            customers
                .edit(id, CustomerEdit::SetPaymentTerms(terms.clone()))
                .map_err(refused)?;
            done(client, id, a.json, |c| {
                format!(
                    "Set the payment terms of {} to {terms:?}.",
                    label(client, c)
                )
            })?;
        }
        CustomerCmd::SetOwner(a) => {
            let id = customer_id(client, &a.id)?;
            let owner = text(a.value, "the owner")?;
            customers.set_owner(id, owner.clone()).map_err(refused)?;
            done(client, id, a.json, |c| {
                format!(
                    "{} is now owned by {owner}.",
                    capitalised(&label(client, c))
                )
            })?;
        }
        CustomerCmd::SetScope(a) => {
            let id = customer_id(client, &a.id)?;
            let scope = text(a.value, "the scope")?.trim().to_string();
            let from = customers.get(id)?.header.scope;
            customers.set_scope(id, scope.clone()).map_err(refused)?;
            done(client, id, a.json, |c| {
                format!(
                    "Moved {} with its visits and quotes from {from} to {scope}; the devices of \
                     {scope} get it at their next sync.",
                    label(client, c)
                )
            })?;
            if let Some(granted) = sync::granted_scopes(client)?
                && !granted.iter().any(|g| *g == scope || g == "*")
            {
                eprintln!(
                    "note: this laptop is not granted scope {scope:?}: the customer leaves it \
                     once the relay has the move"
                );
            }
        }
        CustomerCmd::SetGrade(a) => {
            let id = customer_id(client, &a.id)?;
            let grade = text(a.value, "the grade")?;
            customers
                .edit(id, CustomerEdit::SetGrade(grade.clone()))
                .map_err(refused)?;
            done(client, id, a.json, |c| {
                format!("Graded {} {grade:?}.", label(client, c))
            })?;
        }
    }
    Ok(())
}

/// A timeline entry for people: a visit's status, kind and first line of notes; a quote's
/// number, status and total.
pub(super) fn timeline_summary(client: &Client, e: &fieldsync_client::TimelineEntry) -> String {
    match client.document(e.id) {
        Ok(fieldsync_client::Document::Visit(v)) => format!(
            "{} {}: {}",
            v.status.as_str(),
            visit_kind_words(&v.visit_kind),
            first_line(&v.notes)
        ),
        Ok(fieldsync_client::Document::Quote(q)) => format!(
            "{} {} {}",
            q.quote_no.as_deref().unwrap_or("-"),
            q.status.as_str(),
            fmt_money(&q.total)
        ),
        _ => first_line(&e.summary).to_string(),
    }
}

/// After an edit: the customer as JSON, or the confirmation `say` writes from it.
fn done(
    client: &Client,
    id: CustomerId,
    json: bool,
    say: impl FnOnce(&Customer) -> String,
) -> Result<()> {
    let c = client.customers().get(id)?;
    if json {
        print_json(&c)
    } else {
        println!("{}", say(&c));
        Ok(())
    }
}

/// "customer Baotou Mining Co (01a250eb)".
fn label(client: &Client, c: &Customer) -> String {
    format!("customer {} ({})", c.name, short_id(client, c.header.id))
}

/// `--yes` / `--no` flag pairs: `Some(true)`, `Some(false)` or unchanged.
fn flag(yes: bool, no: bool) -> Option<bool> {
    match (yes, no) {
        (true, _) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
    }
}

fn address_input(f: AddressFields, archived: Option<bool>) -> AddressInput {
    AddressInput {
        label: f.label,
        street: f.street,
        city: f.city,
        region: f.region,
        postcode: f.postcode,
        country: f.country,
        archived,
    }
}

fn equipment_input(f: EquipmentFields) -> Result<EquipmentInput> {
    Ok(EquipmentInput {
        model: None,
        serial: f.serial,
        installed_at: f
            .installed
            .as_deref()
            .map(parse_when)
            .transpose()
            .context("--installed")?,
        status: f.status,
    })
}

fn credit_limit(client: &Client, a: &CreditLimitArgs) -> Result<(CustomerId, Money)> {
    let id = customer_id(client, &a.id)?;
    let amount_minor = parse_minor_units(&a.amount).context("the credit limit")?;
    let currency = parse_currency(&a.currency, "--currency")?;
    Ok((
        id,
        Money {
            amount_minor,
            currency,
        },
    ))
}

fn contact_items(c: &Customer) -> Vec<Item<'_>> {
    c.contacts
        .iter()
        .map(|x| Item {
            id: &x.id,
            names: vec![x.name.as_str()],
            label: x.name.clone(),
        })
        .collect()
}

/// The contact `given` names among `c`'s contacts (also for `visit add-contact-met`).
pub(super) fn contact_of(c: &Customer, given: &str) -> Result<String> {
    pick_item(
        given,
        "contact",
        &c.name,
        &contact_items(c),
        "`fieldsync customer show`",
    )
}

fn contact_short(c: &Customer, id: &str) -> String {
    let ids: Vec<&str> = c.contacts.iter().map(|x| x.id.as_str()).collect();
    item_short(&ids, id)
}

fn address_of(c: &Customer, given: &str) -> Result<String> {
    let items: Vec<Item<'_>> = c
        .addresses
        .iter()
        .map(|a| Item {
            id: &a.id,
            names: a.label.as_deref().into_iter().collect(),
            label: address_line(a),
        })
        .collect();
    pick_item(
        given,
        "address",
        &c.name,
        &items,
        "`fieldsync customer show`",
    )
}

fn address_short(c: &Customer, id: &str) -> String {
    let ids: Vec<&str> = c.addresses.iter().map(|x| x.id.as_str()).collect();
    item_short(&ids, id)
}

/// "site (01a2530b)": an address by label and short id.
fn address_name(c: &Customer, id: &str) -> String {
    let short = address_short(c, id);
    match c
        .addresses
        .iter()
        .find(|a| a.id == id)
        .and_then(|a| a.label.as_deref())
    {
        Some(l) => format!("{l} ({short})"),
        None => short,
    }
}

fn equipment_of(c: &Customer, given: &str) -> Result<String> {
    let items: Vec<Item<'_>> = c
        .equipment
        .iter()
        .map(|e| Item {
            id: &e.id,
            names: e
                .serial
                .as_deref()
                .into_iter()
                .chain([e.model.as_str()])
                .collect(),
            label: format!(
                "{}{}",
                e.model,
                e.serial
                    .as_deref()
                    .map(|s| format!(" serial {s}"))
                    .unwrap_or_default()
            ),
        })
        .collect();
    pick_item(
        given,
        "unit of equipment",
        &c.name,
        &items,
        "`fieldsync customer show`",
    )
}

fn equipment_short(c: &Customer, id: &str) -> String {
    let ids: Vec<&str> = c.equipment.iter().map(|x| x.id.as_str()).collect();
    item_short(&ids, id)
}

/// "site: 12 Steel Rd, Baotou, Inner Mongolia, 014010, CN".
fn address_line(a: &fieldsync_core::model::Address) -> String {
    let parts: Vec<&str> = [&a.street, &a.city, &a.region, &a.postcode, &a.country]
        .into_iter()
        .filter_map(|p| p.as_deref())
        .filter(|p| !p.trim().is_empty())
        .collect();
    match &a.label {
        Some(l) => format!("{l}: {}", parts.join(", ")),
        None => parts.join(", "),
    }
}

fn show_customer(c: &Customer) {
    println!("{}  {}", c.header.id, c.name);
    let field = |label: &str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            println!("  {:<16}{v}", format!("{label}:"));
        }
    };
    field("short name", c.short_name.as_deref());
    field("scope", Some(&c.header.scope));
    field("stage", Some(&c.stage));
    field("owner", c.owner.as_deref());
    field("grade", c.grade.as_deref());
    field("industry", c.industry.as_deref());
    field("business type", c.business_type.as_deref());
    field("size", c.size.as_deref());
    field("source", c.source.as_deref());
    field("email", c.email.as_deref());
    for p in &c.phones {
        field("phone", Some(&p.raw));
    }
    field(
        "credit limit",
        c.credit_limit.as_ref().map(fmt_money).as_deref(),
    );
    field(
        "proposed limit",
        c.proposed_credit_limit.as_ref().map(fmt_money).as_deref(),
    );
    field("payment terms", c.payment_terms.as_deref());
    field("proposed terms", c.proposed_payment_terms.as_deref());
    if !c.product_lines.is_empty() {
        field("product lines", Some(&c.product_lines.join(", ")));
    }
    if !c.competitors.is_empty() {
        field("competitors", Some(&c.competitors.join(", ")));
    }
    if c.header.archived {
        println!("  (archived)");
    }
    println!(
        "  {:<16}{} by {}",
        "created:",
        format_millis(c.header.created_at),
        c.header.created_by
    );
    if !c.contacts.is_empty() {
        println!("Contacts:");
        for x in &c.contacts {
            let mut parts = vec![x.name.clone()];
            parts.extend(
                [&x.title, &x.phone, &x.email]
                    .into_iter()
                    .flatten()
                    .filter(|s| !s.is_empty())
                    .cloned(),
            );
            if x.is_purchaser {
                parts.push("purchaser".into());
            }
            if !x.active {
                parts.push("(left the company)".into());
            }
            println!("  {}  {}", contact_short(c, &x.id), parts.join(", "));
            if let Some(n) = x.notes.as_deref().filter(|n| !n.is_empty()) {
                println!(
                    "  {:width$}  {}",
                    "",
                    first_line(n),
                    width = contact_short(c, &x.id).len()
                );
            }
        }
    }
    if !c.addresses.is_empty() {
        println!("Addresses:");
        for a in &c.addresses {
            println!(
                "  {}  {}{}",
                address_short(c, &a.id),
                address_line(a),
                if a.archived { "  (archived)" } else { "" }
            );
        }
    }
    if !c.equipment.is_empty() {
        println!("Equipment:");
        for e in &c.equipment {
            let mut parts = vec![e.model.clone()];
            if let Some(s) = &e.serial {
                parts.push(format!("serial {s}"));
            }
            if let Some(at) = e.installed_at {
                parts.push(format!("installed {}", format_millis(at)));
            }
            if let Some(s) = &e.status {
                parts.push(s.clone());
            }
            println!("  {}  {}", equipment_short(c, &e.id), parts.join(", "));
        }
    }
    if !c.notes.is_empty() {
        println!("Notes:");
        for n in &c.notes {
            println!("  {} {}: {}", format_millis(n.at), n.author, n.text);
        }
    }
}

fn print_customer_rows(client: &Client, rows: &[CustomerRow]) -> Result<()> {
    let short = ShortIds::new(client)?;
    let ids: Vec<String> = rows.iter().map(|r| short.of(r.id)).collect();
    let width = ids.iter().map(String::len).max().unwrap_or(0);
    for (r, id) in rows.iter().zip(&ids) {
        println!(
            "{id:<width$}  {:<30}  {:<12}  {}{}",
            r.name,
            r.scope,
            r.stage,
            if r.archived { "  (archived)" } else { "" }
        );
    }
    Ok(())
}

/// Before a customer is created in `scope`: the relay refuses documents outside the scopes IT
/// granted this laptop, and a refused customer leaves the replica at the next sync (its
/// changes kept in the quarantine). Known after the first sync; before it, a note says so.
fn check_granted_scope(client: &Client, scope: &str, anyway: bool) -> Result<()> {
    let Some(granted) = sync::granted_scopes(client)? else {
        eprintln!(
            "note: this laptop has not synced yet, so the scopes IT granted it are not known \
             here; if {scope:?} is not one of them, the relay will refuse the customer"
        );
        return Ok(());
    };
    if granted.iter().any(|g| g == scope || g == "*") {
        return Ok(());
    }
    let have = if granted.is_empty() {
        "none".to_string()
    } else {
        granted.join(", ")
    };
    if anyway {
        eprintln!(
            "warning: this laptop is not granted scope {scope:?} (granted: {have}); the relay \
             will refuse the customer until IT grants it, and it will leave `customer list` \
             at the next sync (kept in `fieldsync quarantine`)"
        );
        return Ok(());
    }
    bail!(
        "this laptop is not granted scope {scope:?} (granted: {have}): the relay would refuse \
         the new customer and it would leave `customer list` at the next sync (kept in \
         `fieldsync quarantine`). Use one of the granted scopes, or ask IT to grant {scope:?} \
         and pass --outside-grant to create it now anyway"
    )
}

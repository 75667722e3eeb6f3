//! `fieldsync customer|visit|quote`: the records a rep reads and edits offline, and the
//! money and text formats they are shown in.

use super::*;

pub(super) fn customer(client: &Client, cmd: CustomerCmd) -> Result<()> {
    let customers = client.customers();
    match cmd {
        CustomerCmd::Add {
            name,
            scope,
            phone,
            industry,
            stage,
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
                source: None,
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
            phone,
            industry,
            stage,
            email,
            json,
        } => {
            let id = customer_id(client, &id)?;
            let mut edits = Vec::new();
            let mut what = Vec::new();
            for (field, label, value) in [
                (CustomerField::Name, "name", name),
                (CustomerField::Industry, "industry", industry),
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
                bail!("nothing to change: pass --name, --phone, --industry, --stage or --email");
            }
            let before = customers.get(id)?;
            customers.edit_all(id, &edits)?;
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
                println!("{}  {}", c.header.id, c.name);
                println!("  scope:     {}", c.header.scope);
                println!("  stage:     {}", c.stage);
                if let Some(i) = &c.industry {
                    println!("  industry:  {i}");
                }
                if let Some(e) = &c.email {
                    println!("  email:     {e}");
                }
                for p in &c.phones {
                    println!("  phone:     {}", p.raw);
                }
                for ct in &c.contacts {
                    println!("  contact:   {}", ct.name);
                }
                if c.header.archived {
                    println!("  (archived)");
                }
                println!(
                    "  created:   {} by {}",
                    format_millis(c.header.created_at),
                    c.header.created_by
                );
            }
        }
        CustomerCmd::List {
            scope,
            search,
            all,
            json,
        } => {
            let mut filter = CustomerFilter::new();
            filter.scope = scope;
            filter.search = search;
            filter.include_archived = all;
            let rows = customers.list(&filter)?;
            if json {
                print_json(&rows)?;
            } else {
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
            }
        }
        CustomerCmd::Archive { id, json } => {
            let id = customer_id(client, &id)?;
            customers.archive(id)?;
            let c = customers.get(id)?;
            if json {
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

/// The customer's name, for confirmations (`?` if it is not in the replica).
pub(super) fn customer_name(client: &Client, id: CustomerId) -> String {
    client
        .customers()
        .get(id)
        .map_or_else(|_| "?".to_string(), |c| c.name)
}

pub(super) fn visit(client: &Client, cmd: VisitCmd) -> Result<()> {
    let visits = client.visits();
    match cmd {
        VisitCmd::Log {
            customer,
            notes,
            status,
            kind,
            location,
            json,
        } => {
            let customer = customer_id(client, &customer)?;
            let status: VisitStatus = status.into();
            let id = visits.create(NewVisit {
                customer_id: customer,
                kind,
                notes: Some(notes),
                status,
                at: Some(fieldsync_core::ids::now_millis()),
                location,
            })?;
            if json {
                print_json(&visits.get(id)?)?;
            } else {
                let v = visits.get(id)?;
                println!(
                    "Logged a {} {} visit ({}) at {}.",
                    v.status.as_str(),
                    v.visit_kind.replace('_', " "),
                    short_id(client, id),
                    customer_name(client, customer)
                );
            }
        }
        VisitCmd::Attach(a) => {
            let id = visit_id(client, &a.doc)?;
            attach(client, id.into(), &a)?;
        }
        VisitCmd::Show { id, json } => {
            let v = visits.get(visit_id(client, &id)?)?;
            if json {
                print_json(&v)?;
            } else {
                println!(
                    "{}  {} {} visit at {}",
                    v.header.id,
                    v.status.as_str(),
                    v.visit_kind.replace('_', " "),
                    customer_name(client, v.customer_id)
                );
                if let Some(at) = v.at {
                    println!("  at:        {}", format_millis(at));
                }
                if let Some(l) = &v.location {
                    println!("  location:  {l}");
                }
                for line in v.notes.lines() {
                    println!("  notes:     {line}");
                }
                if v.header.archived {
                    println!("  (archived)");
                }
                println!(
                    "  logged:    {} by {}",
                    format_millis(v.header.created_at),
                    v.header.created_by
                );
            }
        }
        VisitCmd::List { customer, json } => {
            let mut filter = VisitFilter::new();
            filter.customer = customer.map(|c| customer_id(client, &c)).transpose()?;
            let rows = visits.list(&filter)?;
            if json {
                print_json(&rows)?;
            } else {
                let short = ShortIds::new(client)?;
                let ids: Vec<String> = rows.iter().map(|r| short.of(r.id)).collect();
                let width = ids.iter().map(String::len).max().unwrap_or(0);
                for (r, id) in rows.iter().zip(&ids) {
                    println!(
                        "{id:<width$}  {}  {:<9}  {}  {}",
                        r.at.map_or_else(|| "-".to_string(), format_millis),
                        r.status.as_str(),
                        r.customer_name.as_deref().unwrap_or("?"),
                        first_line(&r.notes)
                    );
                }
            }
        }
    }
    Ok(())
}

/// "quote 0190a1b2 for Acme Mining": how confirmations and errors name a quote.
fn quote_label(client: &Client, q: &Quote) -> String {
    format!(
        "quote {}{} for {}",
        short_id(client, q.header.id),
        q.quote_no
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default(),
        customer_name(client, q.customer_id)
    )
}

fn quote_total(q: &Quote) -> String {
    format!(
        "{} {}",
        fmt_minor_units(q.total.amount_minor),
        q.total.currency
    )
}

/// Approving or rejecting needs a submitted quote: otherwise says what state it is in and
/// what comes next, instead of the model's refusal.
fn check_decidable(client: &Client, q: &Quote, verb: &str) -> Result<()> {
    let label = quote_label(client, q);
    let short = short_id(client, q.header.id);
    let last = q.approvals.iter().rev().find(|a| a.void.is_none());
    let by = last
        .map(|a| format!(" by {} on {}", a.approver, format_millis(a.at)))
        .unwrap_or_default();
    match q.status {
        QuoteStatus::Submitted => Ok(()),
        QuoteStatus::Draft => bail!(
            "{label} is still a draft, so it cannot be {verb}d yet: the rep submits it first \
             (`fieldsync quote submit {short}`), then a manager approves or rejects it"
        ),
        QuoteStatus::Approved => bail!(
            "{label} is already approved{by}; next it goes to the customer. To change it, edit \
             it (a new revision), then submit it again"
        ),
        QuoteStatus::Rejected => bail!(
            "{label} was rejected{by}; the rep changes it (a new revision) and submits it again \
             before it can be {verb}d"
        ),
        other => bail!(
            "{label} is {} (past approval); it can no longer be {verb}d",
            other.as_str()
        ),
    }
}

/// A refused decision in plain words: the role it needs.
fn decision_error(e: ClientError, verb: &str) -> anyhow::Error {
    match e {
        ClientError::Model(fieldsync_core::model::ModelError::Forbidden {
            role, needed, ..
        }) => {
            anyhow!(
                "only a {needed} (or above) may {verb} quotes; this laptop works as a {role} \
                 (the role IT enrolled it with)"
            )
        }
        other => other.into(),
    }
}

pub(super) fn quote(client: &Client, cmd: QuoteCmd) -> Result<()> {
    let quotes = client.quotes();
    let (id, json, done) = match cmd {
        QuoteCmd::New {
            customer,
            currency,
            number,
            json,
        } => {
            let customer = customer_id(client, &customer)?;
            let currency = currency.trim().to_ascii_uppercase();
            if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_alphabetic()) {
                bail!("--currency must be an ISO 4217 code such as CNY, got {currency:?}");
            }
            let id = quotes.create(NewQuote {
                customer_id: customer,
                currency,
                quote_no: number,
                valid_until: None,
            })?;
            (id, json, "new")
        }
        QuoteCmd::AddLine {
            id,
            sku,
            qty,
            price,
            description,
            discount,
            json,
        } => {
            let id = quote_id(client, &id)?;
            if qty <= 0 {
                bail!("--qty must be a positive whole number");
            }
            let unit_price_minor = parse_minor_units(&price).context("--price")?;
            let discount_bp = discount
                .map(|d| parse_minor_units(&d).context("--discount"))
                .transpose()?;
            if discount_bp.is_some_and(|d| d > 10_000) {
                bail!("--discount must be at most 100 percent");
            }
            quotes.add_line(
                id,
                LineInput {
                    sku: Some(sku.clone()),
                    description,
                    qty: Some(qty),
                    unit_price_minor: Some(unit_price_minor),
                    discount_bp,
                    sort_key: None,
                },
            )?;
            if !json {
                let q = quotes.get(id)?;
                println!(
                    "Added {qty} × {sku} at {price} to {}: total now {}.",
                    quote_label(client, &q),
                    quote_total(&q),
                    price = fmt_minor_units(unit_price_minor)
                );
                return Ok(());
            }
            (id, json, "")
        }
        QuoteCmd::List { customer, json } => {
            let mut filter = fieldsync_client::QuoteFilter::new();
            filter.customer = customer.map(|c| customer_id(client, &c)).transpose()?;
            let rows = quotes.list(&filter)?;
            if json {
                return print_json(&rows);
            }
            let short = ShortIds::new(client)?;
            let ids: Vec<String> = rows.iter().map(|r| short.of(r.id)).collect();
            let width = ids.iter().map(String::len).max().unwrap_or(0);
            for (r, id) in rows.iter().zip(&ids) {
                println!(
                    "{id:<width$}  {:<10}  {:<9}  {:>14} {}  {}",
                    r.quote_no.as_deref().unwrap_or("-"),
                    r.status.as_str(),
                    fmt_minor_units(r.total_minor),
                    r.currency,
                    r.customer_name.as_deref().unwrap_or("?")
                );
            }
            return Ok(());
        }
        QuoteCmd::Submit(a) => {
            let id = quote_id(client, &a.id)?;
            quotes.submit(id)?;
            (id, a.json, "submit")
        }
        QuoteCmd::Approve(a) => {
            let id = quote_id(client, &a.id)?;
            check_decidable(client, &quotes.get(id)?, "approve")?;
            quotes
                .approve(id, a.reason.as_deref())
                .map_err(|e| decision_error(e, "approve"))?;
            (id, a.json, "approve")
        }
        QuoteCmd::Reject(a) => {
            let id = quote_id(client, &a.id)?;
            check_decidable(client, &quotes.get(id)?, "reject")?;
            quotes
                .reject(id, a.reason.as_deref())
                .map_err(|e| decision_error(e, "reject"))?;
            (id, a.json, "reject")
        }
        QuoteCmd::Attach(a) => {
            let id = quote_id(client, &a.doc)?;
            return attach(client, id.into(), &a);
        }
        QuoteCmd::Show(a) => {
            let id = quote_id(client, &a.id)?;
            if !a.json {
                let q = quotes.get(id)?;
                println!(
                    "{}  {}  {} (revision {})  total {} {}  for {}",
                    q.header.id,
                    q.quote_no.as_deref().unwrap_or("-"),
                    q.status.as_str(),
                    q.revision,
                    fmt_minor_units(q.total.amount_minor),
                    q.total.currency,
                    customer_name(client, q.customer_id)
                );
                for l in q.lines.iter().filter(|l| !l.archived) {
                    println!(
                        "  {:<16} {:>6} × {:>12}{}  = {}",
                        l.sku,
                        l.qty,
                        fmt_minor_units(l.unit_price_minor),
                        if l.discount_bp > 0 {
                            format!("  −{}%", fmt_minor_units(l.discount_bp))
                        } else {
                            String::new()
                        },
                        fmt_minor_units(l.total_minor())
                    );
                }
                for a in &q.approvals {
                    println!(
                        "  {} by {} ({}) at {}{}{}",
                        a.decision,
                        a.approver,
                        a.role,
                        format_millis(a.at),
                        a.reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default(),
                        a.void
                            .as_deref()
                            .map(|v| format!("  [VOID: the quote changed since — {v}]"))
                            .unwrap_or_default()
                    );
                }
                return Ok(());
            }
            (id, a.json, "")
        }
    };
    let q = quotes.get(id)?;
    if json {
        return print_json(&q);
    }
    let label = quote_label(client, &q);
    let reason = q
        .approvals
        .last()
        .and_then(|a| a.reason.as_deref())
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    match done {
        "new" => println!(
            "Started draft {label} in {}; add lines with `fieldsync quote add-line {} …`.",
            q.currency,
            short_id(client, id)
        ),
        "submit" => println!(
            "Submitted {label} for approval (total {}); a manager approves or rejects it.",
            quote_total(&q)
        ),
        "approve" => println!("Approved {label} (total {}){reason}.", quote_total(&q)),
        "reject" => println!("Rejected {label} (total {}){reason}.", quote_total(&q)),
        _ => {}
    }
    Ok(())
}

pub(super) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Parses a non-negative decimal with at most two decimals into hundredths, exactly (no
/// floating point): `1250.50` → 125050, `3` → 300, `0.5` → 50.
pub(super) fn parse_minor_units(s: &str) -> Result<i64> {
    let t = s.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |x: &str| x.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() && frac.is_empty() {
        bail!("{s:?} is not an amount");
    }
    if !digits(whole) || !digits(frac) || (t.contains('.') && frac.is_empty()) {
        bail!("{s:?} is not an amount like 1250.50");
    }
    if frac.len() > 2 {
        bail!("{s:?} has more than two decimals");
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| anyhow!("{s:?} is too large"))?
    };
    let frac: i64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>()? * 10,
        _ => frac.parse()?,
    };
    whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(|| anyhow!("{s:?} is too large"))
}

/// Formats hundredths as a decimal: 125050 → `1250.50`.
pub(super) fn fmt_minor_units(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

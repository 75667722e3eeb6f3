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
            json,
        } => {
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
            if json {
                print_json(&customers.get(id)?)?;
            } else {
                println!("{id}");
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
            let mut edits = Vec::new();
            for (field, value) in [
                (CustomerField::Name, name),
                (CustomerField::Industry, industry),
                (CustomerField::Stage, stage),
                (CustomerField::Email, email),
            ] {
                if let Some(v) = value {
                    edits.push(CustomerEdit::Set(field, v));
                }
            }
            if let Some(p) = phone {
                edits.push(CustomerEdit::AddPhone(p));
            }
            if edits.is_empty() {
                bail!("nothing to change: pass --name, --phone, --industry, --stage or --email");
            }
            customers.edit_all(id, &edits)?;
            if json {
                print_json(&customers.get(id)?)?;
            }
        }
        CustomerCmd::Show { id, json } => {
            let c = customers.get(id)?;
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
                for r in &rows {
                    println!(
                        "{}  {:<30}  {:<12}  {}{}",
                        r.id,
                        r.name,
                        r.scope,
                        r.stage,
                        if r.archived { "  (archived)" } else { "" }
                    );
                }
            }
        }
        CustomerCmd::Archive { id } => customers.archive(id)?,
    }
    Ok(())
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
                println!("{id}");
            }
        }
        VisitCmd::List { customer, json } => {
            let mut filter = VisitFilter::new();
            filter.customer = customer;
            let rows = visits.list(&filter)?;
            if json {
                print_json(&rows)?;
            } else {
                for r in &rows {
                    println!(
                        "{}  {}  {:<9}  {}  {}",
                        r.id,
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

pub(super) fn quote(client: &Client, cmd: QuoteCmd) -> Result<()> {
    let quotes = client.quotes();
    let (id, json) = match cmd {
        QuoteCmd::New {
            customer,
            currency,
            number,
            json,
        } => {
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
            if !json {
                println!("{id}");
                return Ok(());
            }
            (id, json)
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
            let line = quotes.add_line(
                id,
                LineInput {
                    sku: Some(sku),
                    description,
                    qty: Some(qty),
                    unit_price_minor: Some(unit_price_minor),
                    discount_bp,
                    sort_key: None,
                },
            )?;
            if !json {
                println!("{line}");
                return Ok(());
            }
            (id, json)
        }
        QuoteCmd::Submit(a) => {
            quotes.submit(a.id)?;
            (a.id, a.json)
        }
        QuoteCmd::Approve(a) => {
            quotes.approve(a.id, a.reason.as_deref())?;
            (a.id, a.json)
        }
        QuoteCmd::Reject(a) => {
            quotes.reject(a.id, a.reason.as_deref())?;
            (a.id, a.json)
        }
        QuoteCmd::Show(a) => {
            if !a.json {
                let q = quotes.get(a.id)?;
                println!(
                    "{}  {}  {} (revision {})  total {} {}",
                    q.header.id,
                    q.quote_no.as_deref().unwrap_or("-"),
                    q.status.as_str(),
                    q.revision,
                    fmt_minor_units(q.total.amount_minor),
                    q.total.currency
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
            (a.id, a.json)
        }
    };
    if json {
        print_json(&quotes.get(id)?)?;
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

//! `fieldsync quote …`: quotes from draft to order: lines, terms, the approval, sending,
//! the outcome; what a customer was offered before, prices of a SKU, follow-ups due.

use super::*;
use fieldsync_client::{QuoteEdit, QuoteField, QuoteFilter, QuoteLineRow, QuoteRow};
use fieldsync_core::model::ModelError;

pub(super) fn quote(client: &Client, cmd: QuoteCmd) -> Result<()> {
    let quotes = client.quotes();
    match cmd {
        QuoteCmd::New {
            customer,
            currency,
            number,
            valid_until,
            json,
        } => {
            let customer = customer_id(client, &customer)?;
            let currency = parse_currency(&currency, "--currency")?;
            let valid_until = valid_until
                .as_deref()
                .map(parse_when)
                .transpose()
                .context("--valid-until")?;
            let id = quotes.create(NewQuote {
                customer_id: customer,
                currency,
                quote_no: number,
                valid_until,
            })?;
            done(client, id, json, |q| {
                format!(
                    "Started draft {} in {}; add lines with `fieldsync quote add-line {} …`.",
                    quote_label(client, q),
                    q.currency,
                    short_id(client, id)
                )
            })?;
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
                .map(|d| parse_percent(&d, "--discount"))
                .transpose()?;
            let before = quotes.get(id)?;
            quotes.add_line(
                id,
                LineInput {
                    sku: Some(text(sku.clone(), "--sku")?),
                    description,
                    qty: Some(qty),
                    unit_price_minor: Some(unit_price_minor),
                    discount_bp,
                    sort_key: None,
                },
            )?;
            done(client, id, json, |q| {
                format!(
                    "Added {qty} × {sku} at {price} to {}: total now {}.{}",
                    quote_label(client, q),
                    fmt_money(&q.total),
                    new_revision(client, &before, q),
                    price = fmt_minor_units(unit_price_minor)
                )
            })?;
        }
        QuoteCmd::UpdateLine {
            id,
            line,
            sku,
            qty,
            price,
            description,
            discount,
            json,
        } => {
            let id = quote_id(client, &id)?;
            let before = quotes.get(id)?;
            let line = line_of(client, &before, &line)?;
            if qty.is_some_and(|q| q <= 0) {
                bail!(
                    "--qty must be a positive whole number (remove a line with `quote remove-line`)"
                );
            }
            let changes = LineInput {
                sku: sku.map(|s| text(s, "--sku")).transpose()?,
                description,
                qty,
                unit_price_minor: price
                    .as_deref()
                    .map(parse_minor_units)
                    .transpose()
                    .context("--price")?,
                discount_bp: discount
                    .as_deref()
                    .map(|d| parse_percent(d, "--discount"))
                    .transpose()?,
                sort_key: None,
            };
            if changes == LineInput::default() {
                bail!("nothing to change: pass --sku, --qty, --price, --discount or --description");
            }
            quotes.update_line(id, &line, changes)?;
            done(client, id, json, |q| {
                format!(
                    "Updated line {} of {}: total now {}.{}",
                    line_name(q, &line),
                    quote_label(client, q),
                    fmt_money(&q.total),
                    new_revision(client, &before, q)
                )
            })?;
        }
        QuoteCmd::RemoveLine { id, line, json } => {
            let id = quote_id(client, &id)?;
            let before = quotes.get(id)?;
            let line = line_of(client, &before, &line)?;
            quotes.remove_line(id, &line)?;
            done(client, id, json, |q| {
                format!(
                    "Removed line {} from {}: total now {}.{}",
                    line_name(q, &line),
                    quote_label(client, q),
                    fmt_money(&q.total),
                    new_revision(client, &before, q)
                )
            })?;
        }
        QuoteCmd::Set {
            id,
            number,
            payment_terms,
            delivery_terms,
            customer_response,
            win_loss_reason,
            currency,
            json,
        } => {
            let id = quote_id(client, &id)?;
            let mut edits = Vec::new();
            let mut what = Vec::new();
            for (field, name, value) in [
                (QuoteField::QuoteNo, "number", number),
                (QuoteField::PaymentTerms, "payment terms", payment_terms),
                (QuoteField::DeliveryTerms, "delivery terms", delivery_terms),
                (
                    QuoteField::CustomerResponse,
                    "customer response",
                    customer_response,
                ),
                (
                    QuoteField::WinLossReason,
                    "win/loss reason",
                    win_loss_reason,
                ),
            ] {
                if let Some(v) = value {
                    what.push(format!("{name} {v:?}"));
                    edits.push(QuoteEdit::Set(field, v));
                }
            }
            if let Some(c) = currency {
                let c = parse_currency(&c, "--currency")?;
                what.push(format!("currency {c}"));
                edits.push(QuoteEdit::SetCurrency(c));
            }
            if edits.is_empty() {
                bail!(
                    "nothing to change: pass --number, --payment-terms, --delivery-terms, \
                     --customer-response, --win-loss-reason or --currency"
                );
            }
            let before = quotes.get(id)?;
            quotes.edit_all(id, &edits)?;
            done(client, id, json, |q| {
                format!(
                    "Updated {}: {}.{}",
                    quote_label(client, q),
                    what.join(", "),
                    new_revision(client, &before, q)
                )
            })?;
        }
        QuoteCmd::ValidUntil(a) => {
            let id = quote_id(client, &a.id)?;
            let at = parse_when(&a.date)?;
            let before = quotes.get(id)?;
            quotes.edit(id, QuoteEdit::SetValidUntil(at))?;
            done(client, id, a.json, |q| {
                format!(
                    "{} is valid until {}.{}",
                    capitalised(&quote_label(client, q)),
                    format_millis(at),
                    new_revision(client, &before, q)
                )
            })?;
        }
        QuoteCmd::FollowUp(a) => {
            let id = quote_id(client, &a.id)?;
            let at = parse_when(&a.date)?;
            quotes.set_follow_up_due(id, at)?;
            done(client, id, a.json, |q| {
                format!(
                    "Follow up {} by {}.",
                    quote_label(client, q),
                    format_millis(at)
                )
            })?;
        }
        QuoteCmd::List {
            customer,
            status,
            owner,
            all,
            json,
        } => {
            let mut filter = QuoteFilter::new();
            filter.customer = customer.map(|c| customer_id(client, &c)).transpose()?;
            filter.status = status.map(QuoteStatus::from);
            filter.owner = owner;
            filter.include_archived = all;
            let rows = quotes.list(&filter)?;
            if json {
                return print_json(&rows);
            }
            print_quote_rows(client, &rows, false)?;
        }
        QuoteCmd::Submit(a) => {
            let id = quote_id(client, &a.id)?;
            let before = quotes.get(id)?;
            quotes
                .submit(id)
                .map_err(|e| transition_error(client, &before, "submit", e))?;
            done(client, id, a.json, |q| {
                format!(
                    "Submitted {} for approval (total {}); a manager approves or rejects it.",
                    quote_label(client, q),
                    fmt_money(&q.total)
                )
            })?;
        }
        QuoteCmd::Approve(a) => {
            let id = quote_id(client, &a.id)?;
            check_decidable(client, &quotes.get(id)?, "approve")?;
            quotes
                .approve(id, a.reason.as_deref())
                .map_err(|e| decision_error(e, "approve"))?;
            done(client, id, a.json, |q| {
                format!(
                    "Approved {} (total {}){}.",
                    quote_label(client, q),
                    fmt_money(&q.total),
                    last_reason(q)
                )
            })?;
        }
        QuoteCmd::Reject(a) => {
            let id = quote_id(client, &a.id)?;
            check_decidable(client, &quotes.get(id)?, "reject")?;
            quotes
                .reject(id, a.reason.as_deref())
                .map_err(|e| decision_error(e, "reject"))?;
            done(client, id, a.json, |q| {
                format!(
                    "Rejected {} (total {}){}.",
                    quote_label(client, q),
                    fmt_money(&q.total),
                    last_reason(q)
                )
            })?;
        }
        QuoteCmd::Send(a) => {
            let id = quote_id(client, &a.id)?;
            let before = quotes.get(id)?;
            quotes
                .send(id)
                .map_err(|e| transition_error(client, &before, "send", e))?;
            done(client, id, a.json, |q| {
                format!(
                    "Sent {} to the customer (total {}); follow up by {} (`quote due` lists \
                     quotes to follow up).",
                    quote_label(client, q),
                    fmt_money(&q.total),
                    fmt_when(q.follow_up_due)
                )
            })?;
        }
        QuoteCmd::Win(a) => {
            let id = quote_id(client, &a.id)?;
            let before = quotes.get(id)?;
            quotes
                .win(id)
                .map_err(|e| transition_error(client, &before, "win", e))?;
            done(client, id, a.json, |q| {
                format!(
                    "Won {} (total {}).",
                    quote_label(client, q),
                    fmt_money(&q.total)
                )
            })?;
        }
        QuoteCmd::Lose(a) => {
            let id = quote_id(client, &a.id)?;
            let before = quotes.get(id)?;
            quotes
                .lose(id, a.reason.as_deref())
                .map_err(|e| transition_error(client, &before, "lose", e))?;
            done(client, id, a.json, |q| {
                format!(
                    "Lost {}{}.",
                    quote_label(client, q),
                    q.win_loss_reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )
            })?;
        }
        QuoteCmd::Expire(a) => {
            let id = quote_id(client, &a.id)?;
            let before = quotes.get(id)?;
            quotes
                .edit(id, QuoteEdit::Expire)
                .map_err(|e| transition_error(client, &before, "expire", e))?;
            done(client, id, a.json, |q| {
                format!("Marked {} expired.", quote_label(client, q))
            })?;
        }
        QuoteCmd::Convert(a) => {
            let id = quote_id(client, &a.id)?;
            let before = quotes.get(id)?;
            quotes
                .edit(id, QuoteEdit::Convert)
                .map_err(|e| transition_error(client, &before, "convert", e))?;
            done(client, id, a.json, |q| {
                format!(
                    "Converted {} to an order (total {}).",
                    quote_label(client, q),
                    fmt_money(&q.total)
                )
            })?;
        }
        QuoteCmd::SetOwner { id, owner, json } => {
            let id = quote_id(client, &id)?;
            let owner = text(owner, "the owner")?;
            quotes
                .edit(id, QuoteEdit::SetOwner(owner.clone()))
                .map_err(refused)?;
            done(client, id, json, |q| {
                format!(
                    "{} is now owned by {owner}.",
                    capitalised(&quote_label(client, q))
                )
            })?;
        }
        QuoteCmd::AddNote {
            id,
            text: note,
            json,
        } => {
            let id = quote_id(client, &id)?;
            quotes.add_note(id, text(note, "the note")?)?;
            done(client, id, json, |q| {
                format!("Added a note to {}.", quote_label(client, q))
            })?;
        }
        QuoteCmd::Archive(a) => {
            let id = quote_id(client, &a.id)?;
            quotes.archive(id)?;
            done(client, id, a.json, |q| {
                format!(
                    "Archived {}: hidden from `quote list` (`quote list --all` shows it).",
                    quote_label(client, q)
                )
            })?;
        }
        QuoteCmd::Show(a) => {
            let q = quotes.get(quote_id(client, &a.id)?)?;
            if a.json {
                return print_json(&q);
            }
            show_quote(client, &q);
        }
        QuoteCmd::Due { at, json } => {
            let at = match at {
                Some(a) => parse_when(&a).context("--at")?,
                None => now(),
            };
            let rows = quotes.due_for_follow_up(at)?;
            if json {
                return print_json(&rows);
            }
            if rows.is_empty() {
                println!(
                    "No sent quote is due for a follow-up by {}.",
                    format_millis(at)
                );
                return Ok(());
            }
            print_quote_rows(client, &rows, true)?;
        }
        QuoteCmd::History { customer, json } => {
            let customer = customer_id(client, &customer)?;
            let rows = quotes.history(customer)?;
            if json {
                return print_json(&rows);
            }
            if rows.is_empty() {
                println!("No quotes to {} yet.", customer_name(client, customer));
                return Ok(());
            }
            print_quote_rows(client, &rows, false)?;
        }
        QuoteCmd::PriceHistory { sku, json } => {
            let rows = quotes.price_history(sku.trim())?;
            if json {
                return print_json(&rows);
            }
            if rows.is_empty() {
                println!("No quote on this laptop has a line for {sku:?}.");
                return Ok(());
            }
            print_price_rows(client, &rows)?;
        }
        QuoteCmd::Attach(a) => {
            let id = quote_id(client, &a.doc)?;
            attach(client, id.into(), &a)?;
        }
    }
    Ok(())
}

/// After an edit: the quote as JSON, or the confirmation `say` writes from it.
fn done(
    client: &Client,
    id: QuoteId,
    json: bool,
    say: impl FnOnce(&Quote) -> String,
) -> Result<()> {
    let q = client.quotes().get(id)?;
    if json {
        print_json(&q)
    } else {
        println!("{}", say(&q));
        Ok(())
    }
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

/// ": margin is fine", the reason of the latest decision.
fn last_reason(q: &Quote) -> String {
    q.approvals
        .last()
        .and_then(|a| a.reason.as_deref())
        .map(|r| format!(": {r}"))
        .unwrap_or_default()
}

/// When an edit turned a submitted, approved or rejected quote into a new draft revision: a
/// sentence saying so.
fn new_revision(client: &Client, before: &Quote, after: &Quote) -> String {
    if before.status != QuoteStatus::Draft && after.status == QuoteStatus::Draft {
        format!(
            " It is now draft revision {}: the {} revision no longer counts; submit it again \
             (`fieldsync quote submit {}`).",
            after.revision,
            before.status.as_str(),
            short_id(client, after.header.id)
        )
    } else {
        String::new()
    }
}

/// The active line `given` names: its id, an id prefix, or its SKU.
fn line_of(client: &Client, q: &Quote, given: &str) -> Result<String> {
    let items: Vec<Item<'_>> = q
        .lines
        .iter()
        .filter(|l| !l.archived)
        .map(|l| Item {
            id: &l.id,
            names: vec![l.sku.as_str()],
            label: format!(
                "{} × {} at {}",
                l.qty,
                l.sku,
                fmt_minor_units(l.unit_price_minor)
            ),
        })
        .collect();
    pick_item(
        given,
        "line",
        &quote_label(client, q),
        &items,
        &format!("`fieldsync quote show {}`", short_id(client, q.header.id)),
    )
}

/// "WL-980 (0190a1b2)": a line by SKU and short id.
fn line_name(q: &Quote, id: &str) -> String {
    let ids: Vec<&str> = q.lines.iter().map(|l| l.id.as_str()).collect();
    let sku = q
        .lines
        .iter()
        .find(|l| l.id == id)
        .map_or("?", |l| l.sku.as_str());
    format!("{sku} ({})", item_short(&ids, id))
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
        ClientError::Model(ModelError::Forbidden { role, needed, .. }) => {
            anyhow!(
                "only {} (or above) may {verb} quotes; this laptop works as {} (the role IT \
                 enrolled it with)",
                with_article(needed),
                with_article(role)
            )
        }
        other => other.into(),
    }
}

/// A status change the model refused for the quote's state (`verb`: submit, send, win, lose,
/// expire, convert): what state it is in and what comes first. Other errors stay as they are.
fn transition_error(client: &Client, q: &Quote, verb: &str, e: ClientError) -> anyhow::Error {
    if !matches!(e, ClientError::Model(ModelError::Invalid(_))) {
        return e.into();
    }
    let label = quote_label(client, q);
    let short = short_id(client, q.header.id);
    let status = quote_status_words(q.status);
    use QuoteStatus as S;
    match (verb, q.status) {
        ("submit", _) => anyhow!("{label} is already {status}; only a draft is submitted"),
        ("send", S::Draft) => anyhow!(
            "{label} is still a draft: submit it (`fieldsync quote submit {short}`); once a \
             manager approves it, it can be sent"
        ),
        ("send", S::Submitted) => {
            anyhow!("{label} waits for a manager's approval; it can be sent once approved")
        }
        ("send", S::Rejected) => {
            anyhow!("{label} was rejected; change it (a new revision) and submit it again")
        }
        ("send", _) => anyhow!("{label} is already {status}"),
        ("convert", S::Won) => e.into(),
        ("convert", _) => anyhow!(
            "{label} is {status}; only a won quote is converted to an order (`fieldsync quote \
             win {short}` first)"
        ),
        (_, S::Draft | S::Submitted | S::Approved | S::Rejected) => anyhow!(
            "{label} is {status}; it can be marked {} only once it was sent to the customer \
             (`fieldsync quote send {short}`, after approval)",
            match verb {
                "win" => "won",
                "lose" => "lost",
                _ => "expired",
            }
        ),
        _ => anyhow!("{label} is already {status}"),
    }
}

fn show_quote(client: &Client, q: &Quote) {
    println!(
        "{}  {}  {} (revision {})  total {}  for {}",
        q.header.id,
        q.quote_no.as_deref().unwrap_or("-"),
        q.status.as_str(),
        q.revision,
        fmt_money(&q.total),
        customer_name(client, q.customer_id)
    );
    let field = |label: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            println!("  {:<19}{v}", format!("{label}:"));
        }
    };
    field("owner", q.owner.clone());
    field("valid until", q.valid_until.map(format_millis));
    field("payment terms", q.payment_terms.clone());
    field("delivery terms", q.delivery_terms.clone());
    field("sent", q.sent_at.map(format_millis));
    field("follow up by", q.follow_up_due.map(format_millis));
    field("customer response", q.customer_response.clone());
    field("win/loss reason", q.win_loss_reason.clone());
    if let Some(c) = &q.status_conflict {
        field(
            "status conflict",
            Some(format!(
                "{} marked on different laptops; {} holds",
                c.marked
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" and "),
                c.effective.as_str()
            )),
        );
    }
    if q.header.archived {
        println!("  (archived)");
    }
    let ids: Vec<&str> = q.lines.iter().map(|l| l.id.as_str()).collect();
    for l in q.lines.iter().filter(|l| !l.archived) {
        println!(
            "  {}  {:<16} {:>6} × {:>12}{}  = {}{}",
            item_short(&ids, &l.id),
            l.sku,
            l.qty,
            fmt_minor_units(l.unit_price_minor),
            if l.discount_bp > 0 {
                format!("  −{}%", fmt_minor_units(l.discount_bp))
            } else {
                String::new()
            },
            fmt_minor_units(l.total_minor()),
            l.description
                .as_deref()
                .map(|d| format!("  {}", first_line(d)))
                .unwrap_or_default()
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
    for n in &q.notes {
        println!("  note {} {}: {}", format_millis(n.at), n.author, n.text);
    }
}

/// Quote rows, one a line; `due` adds the follow-up time.
fn print_quote_rows(client: &Client, rows: &[QuoteRow], due: bool) -> Result<()> {
    let short = ShortIds::new(client)?;
    let ids: Vec<String> = rows.iter().map(|r| short.of(r.id)).collect();
    let width = ids.iter().map(String::len).max().unwrap_or(0);
    for (r, id) in rows.iter().zip(&ids) {
        println!(
            "{id:<width$}  {:<10}  {:<9}  {:>14} {}  {}{}{}",
            r.quote_no.as_deref().unwrap_or("-"),
            r.status.as_str(),
            fmt_minor_units(r.total_minor),
            r.currency,
            r.customer_name.as_deref().unwrap_or("?"),
            if due {
                format!("  follow up by {}", fmt_when(r.follow_up_due))
            } else {
                String::new()
            },
            if r.archived { "  (archived)" } else { "" }
        );
    }
    Ok(())
}

fn print_price_rows(client: &Client, rows: &[QuoteLineRow]) -> Result<()> {
    let short = ShortIds::new(client)?;
    for r in rows {
        println!(
            "{}  {}  {:<10} {:<9}  {:>6} × {:>12} {}{}  = {}  {}",
            format_millis(r.created_at),
            short.of(r.quote_id),
            r.quote_no.as_deref().unwrap_or("-"),
            r.quote_status.as_str(),
            r.qty,
            fmt_minor_units(r.unit_price_minor),
            r.currency,
            if r.discount_bp > 0 {
                format!("  −{}%", fmt_minor_units(r.discount_bp))
            } else {
                String::new()
            },
            fmt_minor_units(r.total_minor),
            r.customer_name.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

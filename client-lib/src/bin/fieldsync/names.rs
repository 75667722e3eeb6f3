//! Naming records on the command line: ids by a unique prefix (as git names commits; at least
//! [`MIN_PREFIX`] hex digits, hyphens optional), customers also by name, and the short ids
//! the commands print.
//!
//! Document ids are UUIDv7: their first 12 hex digits are the creation time in milliseconds,
//! so records created within a minute share their first 8 digits. A short id is therefore the
//! shortest prefix that is unique among the replica's documents (never under
//! [`SHORT_ID`] digits), not a fixed length.

use super::*;

/// The fewest hex digits an id prefix may have.
pub(super) const MIN_PREFIX: usize = 4;
/// The fewest hex digits a printed short id has.
const SHORT_ID: usize = 8;

/// One record a name or an id prefix may mean.
#[derive(Clone, Debug)]
pub(super) struct Candidate {
    pub(super) id: DocId,
    /// What people call it: the customer's name, or the visit's or quote's customer and what
    /// tells it apart.
    pub(super) label: String,
    pub(super) archived: bool,
}

/// `s` as the hex digits of an id prefix (lower case, hyphens dropped), if it can be one.
fn hex_prefix(s: &str) -> Option<String> {
    let t: String = s
        .trim()
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (t.len() >= MIN_PREFIX && t.len() <= 32 && t.chars().all(|c| c.is_ascii_hexdigit()))
        .then_some(t)
}

/// `s` looks like an id but is too short to be a prefix (`01a`).
fn too_short_for_an_id(s: &str) -> bool {
    let t = s.trim();
    !t.is_empty() && t.len() < MIN_PREFIX && t.chars().all(|c| c.is_ascii_hexdigit())
}

fn text(row: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<String> {
    row.get(key).and_then(|v| v.as_str()).map(str::to_string)
}

/// Rows of `sql` (whose `?1` is a `LIKE` pattern on the id's hex digits) as candidates.
fn query_candidates(
    client: &Client,
    sql: &str,
    prefix: &str,
    label: impl Fn(&serde_json::Map<String, serde_json::Value>) -> String,
) -> Result<Vec<Candidate>> {
    let rows = client.query(sql, &[format!("{prefix}%").into()])?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let id: DocId = text(r, "id")?.parse().ok()?;
            Some(Candidate {
                id,
                label: label(r),
                archived: r.get("archived").and_then(serde_json::Value::as_i64) == Some(1),
            })
        })
        .collect())
}

fn customers_by_prefix(client: &Client, prefix: &str) -> Result<Vec<Candidate>> {
    query_candidates(
        client,
        "SELECT id, name, archived FROM customers WHERE replace(id, '-', '') LIKE ?1 ORDER BY id",
        prefix,
        |r| text(r, "name").unwrap_or_default(),
    )
}

fn visits_by_prefix(client: &Client, prefix: &str) -> Result<Vec<Candidate>> {
    query_candidates(
        client,
        "SELECT v.id, v.archived, v.status, v.at, v.created_at, c.name \
           FROM visits v LEFT JOIN customers c ON c.id = v.customer_id \
          WHERE replace(v.id, '-', '') LIKE ?1 ORDER BY v.id",
        prefix,
        |r| {
            let at = r
                .get("at")
                .and_then(serde_json::Value::as_i64)
                .or_else(|| r.get("created_at").and_then(serde_json::Value::as_i64));
            format!(
                "{} visit at {}{}",
                text(r, "status").unwrap_or_default(),
                text(r, "name").unwrap_or_else(|| "?".into()),
                at.map(|t| format!(", {}", format_millis(t)))
                    .unwrap_or_default()
            )
        },
    )
}

fn quotes_by_prefix(client: &Client, prefix: &str) -> Result<Vec<Candidate>> {
    query_candidates(
        client,
        "SELECT q.id, q.archived, q.status, q.quote_no, q.total_minor, q.currency, c.name \
           FROM quotes q LEFT JOIN customers c ON c.id = q.customer_id \
          WHERE replace(q.id, '-', '') LIKE ?1 ORDER BY q.id",
        prefix,
        |r| {
            format!(
                "{} quote{} for {}, {} {}",
                text(r, "status").unwrap_or_default(),
                text(r, "quote_no")
                    .map(|n| format!(" {n}"))
                    .unwrap_or_default(),
                text(r, "name").unwrap_or_else(|| "?".into()),
                fmt_minor_units(
                    r.get("total_minor")
                        .and_then(serde_json::Value::as_i64)
                        .unwrap_or(0)
                ),
                text(r, "currency").unwrap_or_default()
            )
        },
    )
}

/// Every document id of the replica, as hex digits without hyphens, sorted.
fn all_ids(client: &Client) -> Result<Vec<String>> {
    let rows = client.query(
        "SELECT replace(id, '-', '') AS id FROM customers \
         UNION ALL SELECT replace(id, '-', '') FROM visits \
         UNION ALL SELECT replace(id, '-', '') FROM quotes ORDER BY 1",
        &[],
    )?;
    Ok(rows.iter().filter_map(|r| text(r, "id")).collect())
}

/// Prints short ids: each the shortest prefix of the full (hyphenated) id that no other
/// document of the replica shares, with at least [`SHORT_ID`] hex digits.
pub(super) struct ShortIds {
    ids: Vec<String>,
}

impl ShortIds {
    /// The replica's ids as they are now (read once; cheap next to a listing).
    pub(super) fn new(client: &Client) -> Result<Self> {
        Ok(Self {
            ids: all_ids(client)?,
        })
    }

    /// The short form of `id`.
    pub(super) fn of(&self, id: impl Into<DocId>) -> String {
        let full = id.into().to_string();
        let hex: String = full.chars().filter(|c| *c != '-').collect();
        let at = self.ids.partition_point(|x| x.as_str() < hex.as_str());
        let common = |other: Option<&String>| {
            other.filter(|o| **o != hex).map_or(0, |o| {
                o.chars()
                    .zip(hex.chars())
                    .take_while(|(a, b)| a == b)
                    .count()
            })
        };
        // The neighbours in sorted order share the longest prefixes with it.
        let before = if at > 0 { self.ids.get(at - 1) } else { None };
        let after = self.ids[at..].iter().find(|x| **x != hex);
        let digits = (common(before).max(common(after)) + 1).clamp(SHORT_ID, 32);
        // Cut the hyphenated form after that many hex digits.
        let mut seen = 0;
        let mut out = String::new();
        for c in full.chars() {
            if seen == digits {
                break;
            }
            if c != '-' {
                seen += 1;
            }
            out.push(c);
        }
        out
    }
}

/// The short id of one document (reads the replica's ids; use [`ShortIds`] for many).
pub(super) fn short_id(client: &Client, id: impl Into<DocId>) -> String {
    let id = id.into();
    match ShortIds::new(client) {
        Ok(s) => s.of(id),
        Err(_) => id.to_string(),
    }
}

/// "`given` matches several …": the candidates with their short ids, and how to choose.
fn ambiguous(client: &Client, given: &str, what: &str, list: &[Candidate]) -> anyhow::Error {
    let short = ShortIds::new(client).ok();
    let mut msg = format!(
        "{given:?} matches {} {what}s; name one by a longer id prefix{}:",
        list.len(),
        if what == "customer" {
            " or its full name"
        } else {
            ""
        }
    );
    for c in list.iter().take(20) {
        let id = short
            .as_ref()
            .map_or_else(|| c.id.to_string(), |s| s.of(c.id));
        msg.push_str(&format!(
            "\n  {id}  {}{}",
            c.label,
            if c.archived { "  (archived)" } else { "" }
        ));
    }
    if list.len() > 20 {
        msg.push_str(&format!("\n  … and {} more", list.len() - 20));
    }
    anyhow!(msg)
}

/// What a prefix that names no `what` names instead, for the error.
fn elsewhere(client: &Client, prefix: &str, what: &str) -> Result<String> {
    let others: [(&str, Vec<Candidate>); 3] = [
        ("customer", customers_by_prefix(client, prefix)?),
        ("visit", visits_by_prefix(client, prefix)?),
        ("quote", quotes_by_prefix(client, prefix)?),
    ];
    let found: Vec<String> = others
        .iter()
        .filter(|(kind, list)| *kind != what && !list.is_empty())
        .map(|(kind, list)| match list.as_slice() {
            [one] => format!("{kind} ({})", one.label),
            many => format!("{} {kind}s", many.len()),
        })
        .collect();
    Ok(if found.is_empty() {
        String::new()
    } else {
        format!(" (it is the id of a {})", found.join(" and a "))
    })
}

/// Picks the one candidate, preferring the only one not archived.
fn pick(list: &[Candidate]) -> Option<&Candidate> {
    match list {
        [one] => Some(one),
        _ => {
            let mut live = list.iter().filter(|c| !c.archived);
            match (live.next(), live.next()) {
                (Some(one), None) => Some(one),
                _ => None,
            }
        }
    }
}

/// A customer named by its id, a unique id prefix, or its name: the case-insensitive exact
/// name first, then a unique part of a name. An archived customer is taken only when no
/// customer that is not archived matches as well.
pub(super) fn customer_id(client: &Client, given: &str) -> Result<CustomerId> {
    let given = given.trim();
    if given.is_empty() {
        bail!("name a customer by its id, an id prefix or its name");
    }
    let mut exact = match hex_prefix(given) {
        Some(p) => customers_by_prefix(client, &p)?,
        None => Vec::new(),
    };
    let mut filter = CustomerFilter::new();
    filter.include_archived = true;
    let all = client.customers().list(&filter)?;
    let wanted = given.to_lowercase();
    for r in &all {
        if r.name.trim().to_lowercase() == wanted && !exact.iter().any(|c| c.id == r.id) {
            exact.push(Candidate {
                id: r.id.into(),
                label: r.name.clone(),
                archived: r.archived,
            });
        }
    }
    if let Some(c) = pick(&exact) {
        return Ok(c.id.into());
    }
    if exact.len() > 1 {
        return Err(ambiguous(client, given, "customer", &exact));
    }
    let partial: Vec<Candidate> = all
        .iter()
        .filter(|r| r.name.to_lowercase().contains(&wanted))
        .map(|r| Candidate {
            id: r.id.into(),
            label: r.name.clone(),
            archived: r.archived,
        })
        .collect();
    if let Some(c) = pick(&partial) {
        return Ok(c.id.into());
    }
    if partial.len() > 1 {
        return Err(ambiguous(client, given, "customer", &partial));
    }
    let hint = if too_short_for_an_id(given) {
        format!(" (an id prefix needs at least {MIN_PREFIX} characters)")
    } else if let Some(p) = hex_prefix(given) {
        elsewhere(client, &p, "customer")?
    } else {
        String::new()
    };
    bail!(
        "no customer on this laptop is called or has an id starting with {given:?}{hint}; \
         `fieldsync customer list --all` lists them"
    )
}

/// A document of one kind named by its id or a unique id prefix.
fn by_prefix(
    client: &Client,
    given: &str,
    what: &str,
    find: fn(&Client, &str) -> Result<Vec<Candidate>>,
    list_cmd: &str,
) -> Result<DocId> {
    let given = given.trim();
    let Some(prefix) = hex_prefix(given) else {
        bail!(
            "{given:?} is not a {what} id: give the id or its first {MIN_PREFIX} or more \
             characters (0-9, a-f), as `{list_cmd}` shows them"
        );
    };
    let found = find(client, &prefix)?;
    match found.as_slice() {
        [one] => Ok(one.id),
        [] => {
            let hint = elsewhere(client, &prefix, what)?;
            bail!("no {what} on this laptop has an id starting with {given:?}{hint}")
        }
        many => Err(ambiguous(client, given, what, many)),
    }
}

/// A visit named by its id or a unique id prefix.
pub(super) fn visit_id(client: &Client, given: &str) -> Result<VisitId> {
    by_prefix(
        client,
        given,
        "visit",
        visits_by_prefix,
        "fieldsync visit list",
    )
    .map(VisitId)
}

/// A quote named by its id or a unique id prefix.
pub(super) fn quote_id(client: &Client, given: &str) -> Result<QuoteId> {
    by_prefix(
        client,
        given,
        "quote",
        quotes_by_prefix,
        "fieldsync quote list",
    )
    .map(QuoteId)
}

/// Any document named by its id or a unique id prefix, or a customer by its name.
pub(super) fn any_doc(client: &Client, given: &str) -> Result<DocId> {
    let given = given.trim();
    let Some(prefix) = hex_prefix(given) else {
        return customer_id(client, given).map(DocId::from);
    };
    let mut found = customers_by_prefix(client, &prefix)?;
    found.extend(visits_by_prefix(client, &prefix)?);
    found.extend(quotes_by_prefix(client, &prefix)?);
    match found.as_slice() {
        [one] => Ok(one.id),
        [] => customer_id(client, given).map(DocId::from),
        many => Err(ambiguous(client, given, "document", many)),
    }
}

/// An item of a document (a contact, address, unit of equipment, task or quote line): its id
/// and what people call it.
pub(super) struct Item<'a> {
    pub(super) id: &'a str,
    /// Names it goes by (a contact's name; an address's label; a unit's serial and model; a
    /// task's title; a line's SKU).
    pub(super) names: Vec<&'a str>,
    /// How lists show it.
    pub(super) label: String,
}

/// The short form of item `id` among its siblings `ids`: the shortest prefix no sibling shares,
/// with at least [`SHORT_ID`] characters.
pub(super) fn item_short(ids: &[&str], id: &str) -> String {
    let common = ids
        .iter()
        .filter(|o| **o != id)
        .map(|o| {
            o.chars()
                .zip(id.chars())
                .take_while(|(a, b)| a == b)
                .count()
        })
        .max()
        .unwrap_or(0);
    id.chars().take((common + 1).max(SHORT_ID)).collect()
}

/// The item `given` names among `items` of `owner` (e.g. "Baotou Mining Co"): its id, a unique
/// id prefix of [`MIN_PREFIX`] or more hex digits, one of its names (any case), or a part of a
/// name only it has. `list_cmd` is the command that lists them, for the error.
pub(super) fn pick_item(
    given: &str,
    what: &str,
    owner: &str,
    items: &[Item<'_>],
    list_cmd: &str,
) -> Result<String> {
    let given = given.trim();
    if given.is_empty() {
        bail!("name the {what} by its id, an id prefix or its name ({list_cmd} lists them)");
    }
    if let Some(i) = items.iter().find(|i| i.id == given) {
        return Ok(i.id.to_string());
    }
    let wanted = given.to_lowercase();
    let prefix = hex_prefix(given);
    let mut exact: Vec<&Item<'_>> = items
        .iter()
        .filter(|i| {
            prefix.as_deref().is_some_and(|p| i.id.starts_with(p))
                || i.names.iter().any(|n| n.trim().to_lowercase() == wanted)
        })
        .collect();
    if exact.is_empty() {
        exact = items
            .iter()
            .filter(|i| i.names.iter().any(|n| n.to_lowercase().contains(&wanted)))
            .collect();
    }
    match exact.as_slice() {
        [one] => Ok(one.id.to_string()),
        [] => bail!(
            "{owner} has no {what} called or with an id starting with {given:?}; {list_cmd} \
             lists them"
        ),
        many => {
            let ids: Vec<&str> = items.iter().map(|i| i.id).collect();
            let mut msg = format!(
                "{given:?} matches {} {what}s of {owner}; name one by its id prefix:",
                many.len()
            );
            for i in many {
                msg.push_str(&format!("\n  {}  {}", item_short(&ids, i.id), i.label));
            }
            Err(anyhow!(msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_hex_digits_with_optional_hyphens() {
        assert_eq!(hex_prefix("019A").as_deref(), Some("019a"));
        assert_eq!(hex_prefix(" 0190a1b2-3c ").as_deref(), Some("0190a1b23c"));
        assert_eq!(hex_prefix("01a"), None, "too short");
        assert_eq!(hex_prefix("acme"), None, "not hex");
        assert_eq!(
            hex_prefix("cafe").as_deref(),
            Some("cafe"),
            "hex words are ids too"
        );
        assert!(too_short_for_an_id("01a"));
        assert!(!too_short_for_an_id("Acme"));
    }

    #[test]
    fn short_ids_are_the_shortest_unique_prefix_of_at_least_eight_digits() {
        let a: DocId = "0190a1b2-3c4d-7000-8000-000000000001".parse().expect("id");
        let b: DocId = "0190a1b2-3c4d-7000-8000-000000000002".parse().expect("id");
        let c: DocId = "0190ffff-0000-7000-8000-000000000000".parse().expect("id");
        let hex = |d: DocId| d.to_string().replace('-', "");
        let mut ids = vec![hex(a), hex(b), hex(c)];
        ids.sort();
        let s = ShortIds { ids };
        assert_eq!(s.of(c), "0190ffff");
        assert_eq!(s.of(a), "0190a1b2-3c4d-7000-8000-000000000001");
        let lone = ShortIds {
            ids: vec![hex(a), hex(c)],
        };
        assert_eq!(lone.of(a), "0190a1b2");
        // An id the replica does not hold yet (just created elsewhere) still gets a short form.
        let empty = ShortIds { ids: Vec::new() };
        assert_eq!(empty.of(b), "0190a1b2");
    }

    #[test]
    fn items_are_named_by_id_prefix_or_name() {
        let items = [
            Item {
                id: "0190a1b23c4d70008000000000000001",
                names: vec!["Li Wei"],
                label: "Li Wei".into(),
            },
            Item {
                id: "0190a1b23c4d70008000000000000002",
                names: vec!["Li Na"],
                label: "Li Na".into(),
            },
            Item {
                id: "0190ffff000070008000000000000000",
                names: vec!["Zhang Min"],
                label: "Zhang Min".into(),
            },
        ];
        let pick = |g: &str| pick_item(g, "contact", "Acme", &items, "`show`").ok();
        assert_eq!(pick("li wei").as_deref(), Some(items[0].id));
        assert_eq!(pick("zhang").as_deref(), Some(items[2].id));
        assert_eq!(pick("0190ff").as_deref(), Some(items[2].id));
        assert_eq!(pick(items[1].id).as_deref(), Some(items[1].id));
        assert_eq!(pick("Li"), None, "two match");
        assert_eq!(pick("0190a1"), None, "two match");
        assert_eq!(pick("Wang"), None);
        assert_eq!(pick(""), None);
        let ids: Vec<&str> = items.iter().map(|i| i.id).collect();
        assert_eq!(item_short(&ids, items[2].id), "0190ffff");
        assert_eq!(item_short(&ids, items[0].id), items[0].id);
        assert_eq!(item_short(&[], "abc"), "abc");
    }
}

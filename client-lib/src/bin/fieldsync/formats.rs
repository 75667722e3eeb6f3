//! What the record commands share: money in hundredths, dates on the command line, text,
//! and refusals said in words of roles.

use super::*;
use fieldsync_client::Money;
use fieldsync_core::ids::GovernedField;
use fieldsync_core::model::ModelError;

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

/// `2500000.00 CNY`.
pub(super) fn fmt_money(m: &Money) -> String {
    format!("{} {}", fmt_minor_units(m.amount_minor), m.currency)
}

/// A discount in percent with at most two decimals (`5`, `2.5`), as basis points.
pub(super) fn parse_percent(s: &str, flag: &str) -> Result<i64> {
    let bp = parse_minor_units(s).with_context(|| format!("{flag} is a percentage"))?;
    if bp > 10_000 {
        bail!("{flag} must be at most 100 percent, got {s}");
    }
    Ok(bp)
}

/// An ISO 4217 currency code, upper-cased: `cny` → `CNY`.
pub(super) fn parse_currency(s: &str, flag: &str) -> Result<String> {
    let c = s.trim().to_ascii_uppercase();
    if c.len() != 3 || !c.chars().all(|c| c.is_ascii_alphabetic()) {
        bail!("{flag} must be an ISO 4217 code such as CNY, got {s:?}");
    }
    Ok(c)
}

/// Text a field is set to: not blank.
pub(super) fn text(s: String, what: &str) -> Result<String> {
    if s.trim().is_empty() {
        bail!("{what} must not be empty");
    }
    Ok(s)
}

/// A time on the command line: `2026-12-08` (midnight) or `2026-12-08T09:30`, with optional
/// seconds and a trailing `Z` (as the commands print times), read as UTC: the laptop's time
/// zone is not known reliably, so none is applied.
pub(super) fn parse_when(s: &str) -> Result<Millis> {
    let bad = || {
        anyhow!(
            "{s:?} is not a date like 2026-12-08 or 2026-12-08T09:30 (read as UTC, without a \
             time zone)"
        )
    };
    let t = s.trim();
    let t = t.strip_suffix(['Z', 'z']).unwrap_or(t);
    let (date, time) = match t.split_once(['T', 't', ' ']) {
        Some((d, tm)) => (d, Some(tm)),
        None => (t, None),
    };
    let number = |p: &str, len: usize| -> Option<i64> {
        (p.len() == len && p.chars().all(|c| c.is_ascii_digit()))
            .then(|| p.parse().ok())
            .flatten()
    };
    let parts: Vec<&str> = date.split('-').collect();
    let [y, mo, d] = parts.as_slice() else {
        return Err(bad());
    };
    let (Some(y), Some(mo), Some(d)) = (number(y, 4), number(mo, 2), number(d, 2)) else {
        return Err(bad());
    };
    let (mut h, mut mi, mut sec) = (0, 0, 0);
    if let Some(time) = time {
        if time.contains(['+', '-']) {
            bail!("{s:?}: give the time in UTC, without an offset (e.g. 2026-12-08T09:30)");
        }
        let parts: Vec<&str> = time.split(':').collect();
        let (hh, mm, ss) = match parts.as_slice() {
            [hh, mm] => (*hh, *mm, "00"),
            [hh, mm, ss] => (*hh, *mm, *ss),
            _ => return Err(bad()),
        };
        let (Some(hh), Some(mm), Some(ss)) = (number(hh, 2), number(mm, 2), number(ss, 2)) else {
            return Err(bad());
        };
        (h, mi, sec) = (hh, mm, ss);
    }
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if !(1..=days_in_month).contains(&d) || h > 23 || mi > 59 || sec > 59 {
        return Err(bad());
    }
    Ok((days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec) * 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `s` with its first letter in upper case.
pub(super) fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|f| f.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// A visit kind for people: `sales_call` → "sales call visit", `return_visit` → "return
/// visit".
pub(super) fn visit_kind_words(kind: &str) -> String {
    let words = kind.replace('_', " ");
    if words.ends_with("visit") {
        words
    } else {
        format!("{words} visit")
    }
}

/// A quote's status for people: "a draft", "submitted", …
pub(super) fn quote_status_words(s: QuoteStatus) -> &'static str {
    match s {
        QuoteStatus::Draft => "a draft",
        other => other.as_str(),
    }
}

/// A time for people, or `-`.
pub(super) fn fmt_when(at: Option<Millis>) -> String {
    at.map_or_else(|| "-".to_string(), format_millis)
}

/// The customer's name, for confirmations (`?` if it is not in the replica).
pub(super) fn customer_name(client: &Client, id: CustomerId) -> String {
    client
        .customers()
        .get(id)
        .map_or_else(|_| "?".to_string(), |c| c.name)
}

/// What a role-owned field lets its role do, in words.
fn governed_action(field: GovernedField) -> &'static str {
    match field {
        GovernedField::CreditLimit => "set credit limits",
        GovernedField::PaymentTerms => "set a customer's payment terms",
        GovernedField::Grade => "set grades",
        GovernedField::Owner => "assign owners",
        GovernedField::Scope => "move records to another scope",
        GovernedField::QuoteApproval => "approve or reject quotes",
        GovernedField::StageBack => "move a customer's stage back or to churned",
        GovernedField::Unlisted => "change that role-owned record",
    }
}

/// "a manager", "an admin".
pub(super) fn with_article(role: Role) -> String {
    let name = role.as_str();
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {name}")
}

/// An edit the model refused for the role, in plain words: who may make it and the role this
/// laptop works as. Other errors stay as they are.
pub(super) fn refused(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Model(ModelError::Forbidden {
            role,
            field,
            needed,
        }) => anyhow!(
            "only {} (or above) may {}; this laptop works as {} (the role IT enrolled it with)",
            with_article(needed),
            governed_action(field),
            with_article(role)
        ),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_read_as_utc() {
        assert_eq!(parse_when("1970-01-02").ok(), Some(86_400_000));
        assert_eq!(parse_when("2026-12-01").ok(), Some(1_796_083_200_000));
        let at = 1_796_083_200_000 + (9 * 3600 + 30 * 60) * 1000;
        for s in [
            "2026-12-01T09:30",
            "2026-12-01 09:30",
            "2026-12-01T09:30:00",
            "2026-12-01T09:30:00Z",
            " 2026-12-01T09:30Z ",
        ] {
            assert_eq!(parse_when(s).ok(), Some(at), "{s}");
        }
        // What the commands print reads back.
        assert_eq!(parse_when(&format_millis(at)).ok(), Some(at));
        assert!(parse_when("2028-02-29").is_ok(), "a leap day");
        assert_eq!(parse_when("1969-12-31T23:59:59").ok(), Some(-1000));
        for bad in [
            "",
            "tomorrow",
            "2026-13-01",
            "2026-02-29",
            "2026-04-31",
            "2026-12-1",
            "26-12-01",
            "2026-12-01T24:00",
            "2026-12-01T09:60",
            "2026-12-01T9:30",
            "2026-12-01T09:30+08:00",
            "2026-12-01T09",
            "2026-12-01T",
            "99999-01-01",
            "+202-01-01",
        ] {
            assert!(parse_when(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn percentages_and_currencies() {
        assert_eq!(parse_percent("2.5", "--discount").ok(), Some(250));
        assert_eq!(parse_percent("100", "--discount").ok(), Some(10_000));
        assert!(parse_percent("100.01", "--discount").is_err());
        assert_eq!(
            parse_currency(" cny ", "--currency").ok().as_deref(),
            Some("CNY")
        );
        assert!(parse_currency("CN", "--currency").is_err());
        assert!(parse_currency("C1Y", "--currency").is_err());
    }
}

//! `audit`: who changed what and when, as the relay accepted it.

use clap::Args;
use fieldsync_core::DocId;
use fieldsync_core::display::format_millis;
use fieldsync_relay::AuditQuery;
use fieldsync_relay::store::DeviceEvent;

use crate::common::Common;

/// `audit`'s flags.
#[derive(Args, Debug)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    common: Common,
    /// Only changes to this document.
    #[arg(long, value_name = "ID")]
    doc: Option<DocId>,
    /// Only changes uploaded by this device (name or id).
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
    /// Only changes accepted since then: a date (`2026-12-01`), a date and UTC time
    /// (`2026-12-01T08:00`), or a span back from now (`90m`, `24h`, `7d`).
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    since: Option<i64>,
    /// At most this many entries (the most recent).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Completed attachment uploads instead of changes: time, device, content hash, size,
    /// and the documents that refer to the attachment now (`--device`, `--since`, `--limit`
    /// apply).
    #[arg(long, conflicts_with = "doc")]
    attachments: bool,
    /// Device events instead of changes: remote wipes ordered (`device revoke --wipe`,
    /// `--wipe-after-upload`) and carried out (with what the laptop reported destroying),
    /// and offline leases set (`device lease`), with time, device and detail (`--device`,
    /// `--since`, `--limit` apply).
    #[arg(long, conflicts_with_all = ["doc", "attachments"])]
    devices: bool,
    /// One JSON array.
    #[arg(long)]
    json: bool,
}

/// Prints the completed attachment uploads.
fn attachments(a: &AuditArgs) -> anyhow::Result<()> {
    let store = a.common.store()?;
    let blobs = fieldsync_relay::store::RelayBlobs::open(&store)?;
    let rows = blobs.uploads(a.device.as_deref(), a.since, a.limit)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no attachment uploads match");
        return Ok(());
    }
    println!(
        "{:<20} {:<20} {:<12} {:>10}  documents",
        "uploaded (UTC)", "device", "hash", "bytes"
    );
    for r in rows {
        let docs: Vec<String> = r
            .docs
            .iter()
            .map(|d| d.to_string().chars().take(8).collect())
            .collect();
        println!(
            "{:<20} {:<20} {:<12} {:>10}  {}",
            format_millis(r.at),
            r.device_name
                .clone()
                .unwrap_or_else(|| r.device_id.to_string()),
            r.hash.short(),
            r.size,
            if docs.is_empty() {
                "(none any more)".to_string()
            } else {
                docs.join(" ")
            }
        );
    }
    Ok(())
}

/// Prints the trail of device events.
fn device_events(a: &AuditArgs) -> anyhow::Result<()> {
    let store = a.common.store()?;
    let who = a.device.as_deref().map(str::trim);
    let mut rows: Vec<DeviceEvent> = store
        .device_events()?
        .into_iter()
        .filter(|e| {
            who.is_none_or(|w| {
                e.device_name.as_deref() == Some(w) || e.device_id.to_string() == w.to_lowercase()
            })
        })
        .filter(|e| a.since.is_none_or(|t| e.at >= t))
        .collect();
    // The most recent `limit`, oldest first.
    let keep = rows.len().saturating_sub(a.limit);
    rows.drain(..keep);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no device events match");
        return Ok(());
    }
    println!(
        "{:<20} {:<36}  {:<20} {:<14} detail",
        "at (UTC)", "device id", "name", "event"
    );
    for e in rows {
        println!(
            "{:<20} {:<36}  {:<20} {:<14} {}",
            format_millis(e.at),
            e.device_id,
            e.device_name.as_deref().unwrap_or("?"),
            e.event,
            e.detail
        );
    }
    Ok(())
}

/// Prints the audit trail.
pub(crate) fn run(a: AuditArgs) -> anyhow::Result<()> {
    if a.attachments {
        return attachments(&a);
    }
    if a.devices {
        return device_events(&a);
    }
    let rows = a.common.store()?.audit(&AuditQuery {
        doc: a.doc,
        device: a.device.as_deref(),
        since: a.since,
        limit: a.limit,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no accepted changes match");
        return Ok(());
    }
    println!(
        "{:>8}  {:<20} {:<20} {:<8} {:<28} {:<14} change",
        "log", "accepted (UTC)", "device", "kind", "customer", "scope"
    );
    for r in rows {
        let short = |id: &str| id.chars().take(8).collect::<String>();
        let customer = match (&r.customer, r.customer_id) {
            (Some(name), _) => name.clone(),
            (None, Some(id)) => short(&id.to_string()),
            (None, None) => "?".to_string(),
        };
        println!(
            "{:>8}  {:<20} {:<20} {:<8} {:<28} {:<14} {} of {}",
            r.seq,
            format_millis(r.at),
            r.device_name
                .clone()
                .unwrap_or_else(|| short(&r.device_id.to_string())),
            r.kind.as_deref().unwrap_or("?"),
            customer,
            r.scope.as_deref().unwrap_or("?"),
            r.hash.as_deref().map_or("?", |h| &h[..h.len().min(12)]),
            r.doc_id,
        );
    }
    Ok(())
}

/// `--since`: a date, a date and UTC time, or a span back from now, in ms since the epoch.
fn parse_since(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let now = fieldsync_core::ids::now_millis();
    if let Some(n) = s
        .strip_suffix('d')
        .or_else(|| s.strip_suffix('h'))
        .or_else(|| s.strip_suffix('m'))
        && let Ok(n) = n.trim().parse::<u32>()
    {
        let n = i64::from(n);
        let unit = match s.as_bytes().last() {
            Some(b'd') => 86_400_000,
            Some(b'h') => 3_600_000,
            _ => 60_000,
        };
        return Ok(now.saturating_sub(n.saturating_mul(unit)));
    }
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00"));
    let bad = || {
        format!(
            "{s:?} is not a date (2026-12-01), a date and time (2026-12-01T08:00) or a span (90m, 24h, 7d)"
        )
    };
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let t: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let ([y, mo, da], [h, mi, ..]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    if !(1970..=9999).contains(y) {
        return Err(bad());
    }
    let days_in_month = days_from_civil(*y, *mo % 12 + 1, 1) - days_from_civil(*y, *mo, 1);
    let days_in_month = if *mo == 12 { 31 } else { days_in_month };
    if !(1..=12).contains(mo)
        || !(1..=days_in_month).contains(da)
        || !(0..24).contains(h)
        || !(0..60).contains(mi)
    {
        return Err(bad());
    }
    Ok((days_from_civil(*y, *mo, *da) * 86_400 + h * 3600 + mi * 60) * 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_dates_times_and_spans() {
        assert_eq!(parse_since("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_since("2026-12-01").unwrap(), 1_796_083_200_000);
        assert_eq!(
            parse_since("2026-12-01T08:30").unwrap(),
            1_796_083_200_000 + (8 * 3600 + 30 * 60) * 1000
        );
        let now = fieldsync_core::ids::now_millis();
        let day = parse_since("1d").unwrap();
        assert!((now - 86_400_000 - 1000..=now - 86_400_000 + 1000).contains(&day));
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("2026-13-01").is_err());
        assert!(parse_since("2026-02-31").is_err(), "no such day");
        assert!(parse_since("2028-02-29").is_ok(), "a leap day");
        assert!(parse_since("-5d").is_err(), "a span goes back, not forward");
        assert!(parse_since("99999999999999999-01-01").is_err());
    }
}

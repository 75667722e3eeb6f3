//! `fieldsync sync`: one sync with a report, or `--watch` staying connected and printing
//! events; the exit status says how it went ([`exit`]).

use super::*;
use fieldsync_client::sync::SyncError;
use fieldsync_core::protocol::{ErrorCode, SessionError};

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(super) fn sync_cmd(dir: &Path, args: SyncArgs) -> Result<u8> {
    // Past its offline lease the replica opens for a sync only, which renews the lease.
    let client = open_for_sync(dir)?;
    let mut cfg = sync_settings(dir, &client)?;
    cfg.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    if let Some(b) = args.budget {
        cfg.budget = Some(b).filter(|b| *b > 0);
    }
    let rt = runtime()?;
    if args.watch {
        return rt
            .block_on(watch(dir, client, cfg, args.json))
            .map(|()| exit::OK);
    }
    // What is refused or in conflict before, to tell what this sync added.
    let quarantined_before: std::collections::BTreeSet<String> = quarantine_list(&client)?
        .into_iter()
        .map(|q| q.hash)
        .collect();
    let conflicts_before: std::collections::BTreeSet<(DocId, String)> = client
        .conflicts()?
        .into_iter()
        .map(|c| (c.doc_id, c.path))
        .collect();
    let show_bar = std::io::stdout().is_terminal() && !args.json;
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::hidden());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
        bar.set_style(style);
    }
    let started = Instant::now();
    let bar2 = bar.clone();
    let budget = cfg.budget;
    // The outbox's bytes, for the upload's estimate of the time left.
    let outbox_bytes = client.outbox_summary()?.bytes;
    let progress = move |p: &SyncProgress| {
        if show_bar && bar2.is_hidden() && started.elapsed() > Duration::from_millis(300) {
            bar2.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar2.enable_steady_tick(Duration::from_millis(120));
        }
        let up = if p.outbox_at_start > 0 {
            format!(
                "↑ {} ({}/{} changes acknowledged)",
                format_bytes(p.bytes_sent),
                p.changes_acked.min(p.outbox_at_start),
                p.outbox_at_start
            )
        } else {
            format!("↑ {}", format_bytes(p.bytes_sent))
        };
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let moved = p.bytes_sent + p.bytes_received;
        let rate = moved as f64 / secs;
        let docs_left = match p.download_left {
            Some((docs, _)) if docs > 0 && !p.caught_up => format!(", about {docs} left"),
            _ => String::new(),
        };
        bar2.set_message(format!(
            "{up}  ↓ {} ({}{docs_left})  {}/s{}",
            format_bytes(p.bytes_received),
            plural(p.items_received, "update"),
            format_bytes(rate as u64),
            time_left(p, rate, secs, budget, outbox_bytes)
        ));
    };
    let result = rt.block_on(sync::sync_now_with_progress(&client, &cfg, progress));
    bar.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, SyncError::Wiped(_)) {
                forget_relay(dir);
            }
            return Err(failure(&client, &cfg.relay, &e, cfg.credential.is_some()).into());
        }
    };
    let refused: Vec<QuarantineOut> = quarantine_list(&client)?
        .into_iter()
        .filter(|q| !quarantined_before.contains(&q.hash))
        .collect();
    let new_conflicts: Vec<fieldsync_client::DocConflict> = client
        .conflicts()?
        .into_iter()
        .filter(|c| !conflicts_before.contains(&(c.doc_id, c.path.clone())))
        .collect();
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&report);
        print_next_steps(&client, &report, &refused, &new_conflicts);
    }
    Ok(if report.changes_rejected > 0 || !refused.is_empty() {
        exit::REFUSED
    } else {
        exit::OK
    })
}

/// How a failed sync ends: a message for people and its exit status. Unreachable or silent
/// relays are [`exit::OFFLINE`] (the local edits wait for the next sync), a refused device is
/// [`exit::NOT_ENROLLED`], the rest [`exit::ERROR`].
pub(super) fn failure(client: &Client, relay: &str, e: &SyncError, enrolled: bool) -> Failure {
    if let SyncError::Wiped(_) = e {
        return Failure {
            code: exit::WIPED,
            message: e.to_string(),
        };
    }
    let waiting = client.outbox_len().unwrap_or(0);
    let safe = if waiting > 0 {
        format!(
            "Your {} {} safe on this laptop and go to the relay at the next `fieldsync sync`.",
            plural(waiting, "local change"),
            if waiting == 1 { "is" } else { "are" }
        )
    } else {
        "Nothing of yours is waiting to be sent; the next `fieldsync sync` catches up.".into()
    };
    let (code, message) = match e {
        SyncError::Session(SessionError::Relay {
            code: ErrorCode::Unauthorized,
            reason,
        }) if reason.contains("too many failed") => (
            exit::OFFLINE,
            format!(
                "the relay at {relay} refuses logins from this network for a minute after repeated failed attempts; try again shortly.\n{safe}"
            ),
        ),
        SyncError::Session(SessionError::Relay {
            code: ErrorCode::Unauthorized,
            ..
        }) => (exit::NOT_ENROLLED, not_enrolled(enrolled, waiting)),
        SyncError::ConnectTimeout { timeout, .. } => (
            exit::OFFLINE,
            format!(
                "no answer from the relay at {relay} within {} s: this laptop is offline or the relay is down.\n{safe}",
                timeout.as_secs()
            ),
        ),
        SyncError::ResponseTimeout(d) | SyncError::Session(SessionError::Timeout(d)) => (
            exit::OFFLINE,
            format!(
                "the relay at {relay} stopped answering (nothing for {} s); the sync was cut short.\n{safe}",
                d.as_secs()
            ),
        ),
        SyncError::Resolve { .. }
        | SyncError::Connection(_)
        | SyncError::Closed(_)
        | SyncError::Io(_)
        | SyncError::EarlyDataRejected => (
            exit::OFFLINE,
            format!("cannot reach the relay at {relay} ({e}).\n{safe}"),
        ),
        SyncError::Session(s @ SessionError::Relay { .. }) if s.is_retryable() => (
            exit::OFFLINE,
            format!("the relay at {relay} cannot sync right now ({e}).\n{safe}"),
        ),
        other => (
            exit::ERROR,
            format!("error: sync with {relay} failed: {other}\n{safe}"),
        ),
    };
    Failure { code, message }
}

/// After a wipe: the relay settings go too (a plain replica's config may hold its credential).
pub(super) fn forget_relay(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(CONFIG_FILE));
}

/// A device the relay does not accept, in plain words: enrolled once (it holds a credential),
/// IT revoked it or the relay no longer knows it; never enrolled, it needs a token.
fn not_enrolled(enrolled: bool, waiting: u64) -> String {
    let kept = if waiting > 0 {
        format!(
            "local edits are kept ({} waiting)",
            plural(waiting, "change")
        )
    } else {
        "local edits are kept".to_string()
    };
    if enrolled {
        format!(
            "this laptop's access was revoked by IT; {kept}; ask IT to enrol it again, then run `fieldsync init --token TOKEN` with the new token"
        )
    } else {
        format!(
            "this laptop is not enrolled with the relay; {kept}; ask IT for an enrolment token, then run `fieldsync init --token TOKEN`"
        )
    }
}

/// A stored sync error (`status`'s last error) in the plain words `sync` uses.
pub(super) fn plain_sync_error(e: &str, client: &Client) -> Result<String> {
    if e.starts_with("relay error Unauthorized") && !e.contains("too many failed") {
        let enrolled = sync::load_credential(client).ok().flatten().is_some();
        return Ok(not_enrolled(enrolled, client.outbox_len()?));
    }
    Ok(e.to_string())
}

/// After the report: what this sync left to do, with the commands.
fn print_next_steps(
    client: &Client,
    r: &SyncReport,
    refused: &[QuarantineOut],
    conflicts: &[fieldsync_client::DocConflict],
) {
    if r.relay_restored {
        println!();
        if r.repaired > 0 {
            println!(
                "The relay was restored from a backup since this laptop last synced: this \
                 laptop re-sent {} the relay lacked.",
                plural(r.repaired, "change")
            );
        } else {
            println!(
                "The relay was restored from a backup since this laptop last synced; it had \
                 everything from this laptop."
            );
        }
    }
    let n = (refused.len() as u64).max(r.changes_rejected);
    if n > 0 {
        println!();
        println!(
            "The relay refused {}; {} kept on this laptop, not sent again:",
            plural(n, "change"),
            if n == 1 { "it is" } else { "they are" }
        );
        let mut reasons: Vec<&str> = refused.iter().map(|q| q.reason.as_str()).collect();
        reasons.dedup();
        for reason in reasons.iter().take(3) {
            println!("  - {reason}");
        }
        println!("  See them:    fieldsync quarantine");
        println!(
            "  Retry them:  fieldsync quarantine --retry, then fieldsync sync (once IT has \
             granted the scope or role)"
        );
    }
    if !conflicts.is_empty() {
        println!();
        println!(
            "{} now {} values edited on two laptops at once:",
            plural(conflicts.len() as u64, "field"),
            if conflicts.len() == 1 {
                "holds"
            } else {
                "hold"
            }
        );
        let short = ShortIds::new(client).ok();
        for c in conflicts.iter().take(5) {
            let id = short
                .as_ref()
                .map_or_else(|| c.doc_id.to_string(), |s| s.of(c.doc_id));
            println!(
                "  - {} of {} {} ({id})",
                c.path,
                c.kind,
                doc_name(client, c.doc_id)
            );
        }
        println!("  See them:    fieldsync conflicts");
        println!("  Keep one:    fieldsync resolve ID FIELD VALUE");
    }
}

/// The progress bar's estimate of the time left, at the rate so far: to the budget's end for a
/// metered sync, else to the end of the upload while the outbox is still going up, else to the
/// end of the download once the relay said what is waiting (at the rate its raw bytes arrive,
/// whatever they compress to).
fn time_left(
    p: &SyncProgress,
    rate: f64,
    secs: f64,
    budget: Option<u64>,
    outbox_bytes: u64,
) -> String {
    if rate < 1.0 {
        return String::new();
    }
    let moved = p.bytes_sent + p.bytes_received;
    let (what, left) = match (budget, p.download_left) {
        (Some(b), _) => ("budget", b.saturating_sub(moved) as f64 / rate),
        (None, _) if p.changes_acked < p.outbox_at_start => (
            "upload",
            outbox_bytes.saturating_sub(p.bytes_sent) as f64 / rate,
        ),
        (None, Some((_, raw_left))) if raw_left > 0 && p.download_raw_received > 0 => (
            "download",
            raw_left as f64 * secs / p.download_raw_received as f64,
        ),
        _ => return String::new(),
    };
    format!(
        ", {what} ~{} left",
        fmt_duration(Duration::from_secs_f64(left))
    )
}

pub(super) fn print_report(r: &SyncReport) {
    if r.budget_spent {
        println!(
            "Stopped at the budget after {} with {} (the next sync goes on from here)",
            fmt_duration(r.duration),
            r.relay
        );
    } else {
        println!("Synced with {} in {}", r.relay, fmt_duration(r.duration));
    }
    let sent = match (r.sent_documents.in_words(), r.changes_acked) {
        (Some(docs), _) => docs,
        (None, 0) => "nothing new".into(),
        (None, n) => plural(n, "change"),
    };
    let refused = if r.changes_rejected > 0 {
        format!(
            "; {} refused (see below)",
            plural(r.changes_rejected, "change")
        )
    } else {
        String::new()
    };
    println!("  sent      {sent}{refused}");
    let received = match r.received_documents.in_words() {
        Some(docs) => docs,
        None if r.items_received > 0 => plural(r.items_received, "update"),
        None => "nothing new".into(),
    };
    println!(
        "  received  {received}{}",
        if r.items_failed > 0 {
            format!(
                "; {} could not be read and {} skipped (see `fieldsync status`)",
                plural(r.items_failed, "update"),
                if r.items_failed == 1 { "was" } else { "were" }
            )
        } else {
            String::new()
        }
    );
    if r.replaced > 0 {
        println!(
            "  replaced  {} trimmed by IT (your unsent edits carried over)",
            plural(r.replaced, "record")
        );
    }
    if r.repaired > 0 {
        println!(
            "  re-sent   {} the relay lacked",
            plural(r.repaired, "change")
        );
    }
    if r.attachments_uploaded + r.attachments_downloaded > 0
        || r.attachment_bytes_sent + r.attachment_bytes_received > 0
    {
        println!(
            "  files     ↑ {} ({}), ↓ {} ({})",
            plural(r.attachments_uploaded, "attachment"),
            format_bytes(r.attachment_bytes_sent),
            plural(r.attachments_downloaded, "attachment"),
            format_bytes(r.attachment_bytes_received)
        );
    }
    let w = &r.attachments_waiting;
    if w.upload_files + w.download_files > 0 {
        println!(
            "  files     waiting: ↑ {} ({}), ↓ {} ({}) (`fieldsync attachment list`)",
            plural(w.upload_files, "attachment"),
            format_bytes(w.upload_bytes),
            plural(w.download_files, "attachment"),
            format_bytes(w.download_bytes)
        );
    }
    println!(
        "  wire      {} up, {} down",
        format_bytes(r.bytes_sent),
        format_bytes(r.bytes_received)
    );
    if r.outbox_remaining > 0 {
        println!(
            "  waiting   {} ({}; {})",
            plural(r.outbox_remaining, "local change"),
            format_bytes(r.outbox_bytes_remaining),
            if r.budget_spent {
                "sent next sync"
            } else {
                "refused for now; retried next sync"
            }
        );
    }
    if r.download_waiting && r.download_waiting_documents > 0 {
        println!(
            "  download  about {} ({}) waiting on the relay",
            plural(r.download_waiting_documents, "record"),
            format_bytes(r.download_waiting_bytes)
        );
    } else if r.download_waiting {
        println!("  download  more waiting on the relay");
    }
}

pub(super) async fn watch(dir: &Path, client: Client, cfg: SyncConfig, json: bool) -> Result<()> {
    let enrolled = cfg.credential.is_some();
    let handle = SyncHandle::start(client.clone(), cfg);
    let mut events = handle.subscribe();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            r = &mut ctrl_c => {
                r.context("cannot listen for Ctrl-C")?;
                handle.stop().await;
                return Ok(());
            }
            e = events.recv() => match e {
                Ok(event) => {
                    print_event(&event, &handle, json)?;
                    if event == SyncEvent::Stopped {
                        let st = handle.status();
                        handle.stop().await;
                        if st.fatal {
                            let e = st.last_error.unwrap_or_else(|| "sync stopped".into());
                            if e.starts_with("this laptop's replica was wiped") {
                                forget_relay(dir);
                                return Err(Failure {
                                    code: exit::WIPED,
                                    message: e,
                                }
                                .into());
                            }
                            if e.starts_with("relay error Unauthorized") {
                                let waiting = client.outbox_len().unwrap_or(0);
                                return Err(Failure {
                                    code: exit::NOT_ENROLLED,
                                    message: not_enrolled(enrolled, waiting),
                                }
                                .into());
                            }
                            bail!(e);
                        }
                        return Ok(());
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event output fell behind");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

pub(super) fn print_event(e: &SyncEvent, handle: &SyncHandle, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let mut v = serde_json::to_value(e)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("at".into(), format_millis(now()).into());
        }
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
        return Ok(out.flush()?);
    }
    let ts = format_millis(now());
    let line = match e {
        SyncEvent::Connecting => format!("connecting to {}", handle.status().relay),
        SyncEvent::Connected { scopes, role } => {
            format!("connected as {role}, scopes {}", scopes.join(", "))
        }
        SyncEvent::Uploaded { n } => format!("relay acknowledged {}", plural(*n, "local change")),
        SyncEvent::Received { items } => format!("received {}", plural(*items, "update")),
        SyncEvent::CaughtUp => "up to date".to_string(),
        SyncEvent::Disconnected { error } => match handle.status().retry_in_ms {
            Some(ms) => format!(
                "disconnected: {error} (retrying in {:.1} s)",
                ms as f64 / 1000.0
            ),
            None => format!("disconnected: {error}"),
        },
        SyncEvent::Rejected { hash, reason } => {
            format!(
                "relay refused change {}: {reason} (kept on this laptop; `fieldsync quarantine` \
                 shows it, `fieldsync quarantine --retry` sends it again)",
                &hash[..hash.len().min(12)]
            )
        }
        SyncEvent::Stopped => "stopped".to_string(),
    };
    writeln!(out, "{ts}  {line}")?;
    Ok(out.flush()?)
}

pub(super) fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

pub(super) fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_follows_the_budget_then_the_upload_then_the_download() {
        let p = SyncProgress {
            bytes_sent: 1_000,
            bytes_received: 9_000,
            outbox_at_start: 10,
            changes_acked: 4,
            download_left: Some((300, 60_000)),
            download_raw_received: 30_000,
            ..SyncProgress::default()
        };
        // 10 kB moved in 10 s: a 50 kB budget has 40 s left.
        assert_eq!(
            time_left(&p, 1_000.0, 10.0, Some(50_000), 0),
            ", budget ~40.0 s left"
        );
        // The upload is still going: 5 kB of 6 kB left at 1 kB/s.
        assert!(time_left(&p, 1_000.0, 10.0, None, 6_000).starts_with(", upload ~5"));
        // Uploaded: the download's raw bytes came at 3 kB/s, 60 kB are left.
        let up = SyncProgress {
            changes_acked: 10,
            ..p.clone()
        };
        assert_eq!(
            time_left(&up, 1_000.0, 10.0, None, 6_000),
            ", download ~20.0 s left"
        );
        // Nothing said about the download (an older relay): no estimate.
        let older = SyncProgress {
            download_left: None,
            ..up
        };
        assert_eq!(time_left(&older, 1_000.0, 10.0, None, 6_000), "");
    }
}

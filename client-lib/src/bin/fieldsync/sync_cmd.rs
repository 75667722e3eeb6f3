//! `fieldsync sync`: one sync with a report, or `--watch` staying connected and printing
//! events.

use super::*;

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(super) fn sync_cmd(dir: &Path, args: SyncArgs) -> Result<()> {
    let client = open(dir)?;
    let mut cfg = sync_settings(dir, &client)?;
    cfg.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    if let Some(b) = args.budget {
        cfg.budget = Some(b).filter(|b| *b > 0);
    }
    let rt = runtime()?;
    if args.watch {
        return rt.block_on(watch(client, cfg, args.json));
    }
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
            "{up}  ↓ {} ({} items{docs_left})  {}/s{}",
            format_bytes(p.bytes_received),
            p.items_received,
            format_bytes(rate as u64),
            time_left(p, rate, secs, budget, outbox_bytes)
        ));
    };
    let result = rt.block_on(sync::sync_now_with_progress(&client, &cfg, progress));
    bar.finish_and_clear();
    let report = result.with_context(|| format!("sync with {} failed", cfg.relay))?;
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(())
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
    println!(
        "  sent      {} changes ({} acknowledged, {} refused)",
        r.changes_sent, r.changes_acked, r.changes_rejected
    );
    println!(
        "  received  {} items ({} new changes, {} snapshots{})",
        r.items_received,
        r.changes_received,
        r.snapshots_received,
        if r.items_failed > 0 {
            format!(", {} unreadable and skipped", r.items_failed)
        } else {
            String::new()
        }
    );
    if r.replaced > 0 {
        println!(
            "  replaced  {} documents trimmed by IT (unsent edits carried over)",
            r.replaced
        );
    }
    println!(
        "  wire      {} up, {} down",
        format_bytes(r.bytes_sent),
        format_bytes(r.bytes_received)
    );
    if r.outbox_remaining > 0 {
        println!(
            "  outbox    {} still waiting ({}; {})",
            plural(r.outbox_remaining, "change"),
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
            plural(r.download_waiting_documents, "document"),
            format_bytes(r.download_waiting_bytes)
        );
    } else if r.download_waiting {
        println!("  download  more waiting on the relay");
    }
}

pub(super) async fn watch(client: Client, cfg: SyncConfig, json: bool) -> Result<()> {
    let handle = SyncHandle::start(client, cfg);
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
                            bail!(st.last_error.unwrap_or_else(|| "sync stopped".into()));
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
        SyncEvent::Received { items } => format!("received {}", plural(*items, "item")),
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
                "relay refused change {}: {reason} (quarantined; see `fieldsync quarantine`)",
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

//! `fieldsync status`, `quarantine` and `conflicts`: what is waiting, refused, skipped or in
//! conflict on this laptop.

use super::*;

#[derive(Serialize)]
pub(super) struct StatusOut {
    pub(super) device_id: uuid::Uuid,
    pub(super) data_dir: PathBuf,
    pub(super) identity: Option<Identity>,
    /// How the replica is encrypted at rest (`null`: it is not).
    pub(super) encryption: Option<fieldsync_client::vault::KeyInfo>,
    /// IT's offline lease (`null`: none): days allowed without reaching the relay, and where
    /// it stands (`valid` with ms `left`, or `expired` `ago` ms).
    pub(super) lease_days: Option<u32>,
    pub(super) lease: Option<fieldsync_client::LeaseState>,
    /// Local changes waiting for the relay.
    pub(super) outbox: u64,
    /// Documents those changes touch.
    pub(super) outbox_documents: u64,
    /// Their bytes.
    pub(super) outbox_bytes: u64,
    /// The relay had more to send when the last sync ended (a metered sync stopped at its
    /// budget); cleared by a sync that finishes.
    pub(super) download_waiting: bool,
    /// About how many documents, and raw bytes, were waiting then.
    pub(super) download_waiting_documents: u64,
    pub(super) download_waiting_bytes: u64,
    /// Attachment bytes waiting each way.
    pub(super) attachments: fieldsync_client::BlobsWaiting,
    /// Attachment transfers the relay refused for good (`attachment retry` asks again).
    pub(super) attachments_refused: usize,
    /// Changes the relay refused for good.
    pub(super) quarantined: usize,
    /// The most recent of those (up to 5), newest first.
    pub(super) recent_rejections: Vec<QuarantineOut>,
    pub(super) conflicts: usize,
    /// Downloaded documents that could not be loaded (kept out; see `Skipped` below).
    pub(super) skipped: Vec<fieldsync_core::store::Skipped>,
    pub(super) relay: Option<String>,
    pub(super) last_sync_finished_at: Option<String>,
    pub(super) last_sync_finished_at_ms: Option<i64>,
    pub(super) last_error: Option<String>,
    pub(super) relay_reachable: bool,
    pub(super) relay_rtt_ms: Option<u64>,
    pub(super) relay_error: Option<String>,
}

pub(super) fn status(dir: &Path, json: bool) -> Result<()> {
    // Also past the offline lease: status says how it stands.
    let client = open_for_sync(dir)?;
    let cfg = match load_config(dir) {
        Ok(c) => Some(c),
        Err(e) if dir.join(CONFIG_FILE).exists() => return Err(e),
        Err(_) => None,
    };
    let persisted = sync::load_status(&client)?.unwrap_or_default();
    let quarantine = quarantine_list(&client)?;
    let outbox = client.outbox_summary()?;
    let (reachable, rtt, relay_error) = match &cfg {
        None => (
            false,
            None,
            Some("no relay configured (run `fieldsync init`)".to_string()),
        ),
        Some(c) => {
            let mut sc = c.sync_config()?;
            sc.connect_timeout = Duration::from_secs(3);
            match runtime()?.block_on(sync::probe(&sc)) {
                Ok(rtt) => (
                    true,
                    Some(u64::try_from(rtt.as_millis()).unwrap_or(u64::MAX)),
                    None,
                ),
                Err(e) => (false, None, Some(e.to_string())),
            }
        }
    };
    let lease = client.lease()?;
    let out = StatusOut {
        device_id: client.device_id(),
        data_dir: dir.to_path_buf(),
        identity: client.identity().ok(),
        encryption: fieldsync_client::vault::key_info(client.path())?,
        lease_days: lease.as_ref().map(|(l, _)| l.days),
        lease: lease.map(|(_, st)| st),
        outbox: outbox.changes,
        outbox_documents: outbox.documents,
        outbox_bytes: outbox.bytes,
        download_waiting: persisted.download_waiting,
        download_waiting_documents: persisted.download_waiting_documents,
        download_waiting_bytes: persisted.download_waiting_bytes,
        attachments: client.attachments().waiting()?,
        attachments_refused: client
            .attachments()
            .stored()?
            .iter()
            .filter(|b| b.stopped)
            .count(),
        quarantined: quarantine.len(),
        recent_rejections: quarantine.into_iter().take(5).collect(),
        conflicts: client.conflicts()?.len(),
        skipped: client.skipped()?,
        relay: cfg.as_ref().map(|c| c.relay.clone()),
        last_sync_finished_at: persisted.last_sync_finished_at.map(format_millis),
        last_sync_finished_at_ms: persisted.last_sync_finished_at,
        last_error: persisted.last_error,
        relay_reachable: reachable,
        relay_rtt_ms: rtt,
        relay_error,
    };
    if json {
        return print_json(&out);
    }
    println!("Replica:    {}", dir.join(REPLICA_FILE).display());
    println!("Device id:  {}", out.device_id);
    if let (Some(days), Some(state)) = (out.lease_days, &out.lease) {
        use fieldsync_core::display::format_age;
        match state {
            fieldsync_client::LeaseState::Valid { left } => println!(
                "Lease:      {} left to reach the relay (IT's offline lease: {days} days)",
                format_age(*left)
            ),
            fieldsync_client::LeaseState::Expired { ago } => println!(
                "Lease:      expired {} ago: the replica opens only for `fieldsync sync` until it reaches the relay",
                format_age(*ago)
            ),
            fieldsync_client::LeaseState::ClockSetBack { by } => println!(
                "Lease:      ended: the clock was set back by {}; the replica opens only for `fieldsync sync` until it reaches the relay",
                format_age(*by)
            ),
        }
    }
    println!(
        "Encryption: {}",
        match &out.encryption {
            None => "off (`fieldsync encrypt` encrypts the replica)".to_string(),
            Some(k) => format!(
                "on, opens with {}",
                match (k.keyring, k.passphrase) {
                    (true, true) => "the OS keyring or the passphrase",
                    (true, false) => "the OS keyring",
                    _ => "the passphrase",
                }
            ),
        }
    );
    println!(
        "Upload:     {} waiting ({}, {})",
        plural(out.outbox, "change"),
        plural(out.outbox_documents, "document"),
        format_bytes(out.outbox_bytes)
    );
    let download = if out.download_waiting && out.download_waiting_documents > 0 {
        format!(
            "about {} ({}) waiting on the relay (the last sync stopped at its budget; \
             `fieldsync sync` goes on)",
            plural(out.download_waiting_documents, "document"),
            format_bytes(out.download_waiting_bytes)
        )
    } else if out.download_waiting {
        "more waiting on the relay (the last sync stopped at its budget; `fieldsync sync` goes on)"
            .into()
    } else if out.last_sync_finished_at.is_some() {
        "nothing known to be waiting (the last sync finished)".into()
    } else {
        "not synced yet".into()
    };
    println!("Download:   {download}");
    let a = &out.attachments;
    if a.upload_files + a.download_files > 0 {
        println!(
            "Attachments: ↑ {} ({}) to upload, ↓ {} ({}) to download{}",
            plural(a.upload_files, "file"),
            format_bytes(a.upload_bytes),
            plural(a.download_files, "file"),
            format_bytes(a.download_bytes),
            if out.attachments_refused > 0 {
                format!(
                    "; {} refused by the relay (see `fieldsync attachment list`)",
                    out.attachments_refused
                )
            } else {
                String::new()
            }
        );
    }
    if out.quarantined > 0 {
        println!(
            "Quarantine: {} refused by the relay (see `fieldsync quarantine`)",
            plural(out.quarantined as u64, "change")
        );
        for q in &out.recent_rejections {
            println!(
                "            {} {} {}: {}",
                q.at,
                q.kind.as_deref().unwrap_or("document"),
                q.doc_id,
                q.reason
            );
        }
    }
    if out.conflicts > 0 {
        println!(
            "Conflicts:  {} edited on two laptops at once (see `fieldsync conflicts`)",
            plural(out.conflicts as u64, "field")
        );
    }
    if !out.skipped.is_empty() {
        println!(
            "Skipped:    {} downloaded documents could not be loaded and are kept out (tell IT):",
            out.skipped.len()
        );
        for s in out.skipped.iter().take(5) {
            println!(
                "            {} {}: {}",
                format_millis(s.at),
                s.doc_id,
                s.reason
            );
        }
    }
    println!(
        "Last sync:  {}",
        out.last_sync_finished_at.as_deref().unwrap_or("never")
    );
    if let Some(e) = &out.last_error {
        println!("Last error: {}", plain_sync_error(e, &client)?);
    }
    match (&out.relay, out.relay_reachable) {
        (Some(r), true) => println!(
            "Relay:      {r} reachable ({} ms handshake)",
            out.relay_rtt_ms.unwrap_or(0)
        ),
        (Some(r), false) => println!(
            "Relay:      {r} NOT reachable: {}",
            out.relay_error.as_deref().unwrap_or("unknown error")
        ),
        (None, _) => println!("Relay:      not configured (run `fieldsync init`)"),
    }
    Ok(())
}

/// A quarantined change, for `quarantine` and `status`.
#[derive(Serialize)]
pub(super) struct QuarantineOut {
    pub(super) doc_id: DocId,
    /// The document's kind, if it is still in the replica.
    pub(super) kind: Option<String>,
    pub(super) hash: String,
    pub(super) reason: String,
    pub(super) at: String,
    pub(super) at_ms: i64,
}

pub(super) fn quarantine_list(client: &Client) -> Result<Vec<QuarantineOut>> {
    let list = client.with_store(|s| s.quarantine())?;
    let mut out = Vec::with_capacity(list.len());
    for q in list {
        let kind = client
            .document(q.doc_id)
            .ok()
            .map(|d| d.header().kind.to_string());
        out.push(QuarantineOut {
            doc_id: q.doc_id,
            kind,
            hash: q.hash,
            reason: q.reason,
            at: format_millis(q.at),
            at_ms: q.at,
        });
    }
    Ok(out)
}

pub(super) fn quarantine(client: &Client, json: bool) -> Result<()> {
    let list = quarantine_list(client)?;
    if json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("No refused changes.");
        return Ok(());
    }
    println!(
        "{} refused by the relay (kept here, not sent again):",
        plural(list.len() as u64, "local change")
    );
    for q in &list {
        println!(
            "{}  {} {}  change {}  {}",
            q.at,
            q.kind.as_deref().unwrap_or("document"),
            q.doc_id,
            &q.hash[..q.hash.len().min(12)],
            q.reason
        );
    }
    println!(
        "Once the cause is fixed (IT granted the scope or role), `fieldsync quarantine --retry` \
         sends them again."
    );
    Ok(())
}

pub(super) fn retry_quarantined(client: &Client, doc: Option<&str>, json: bool) -> Result<()> {
    let doc = doc.map(|d| quarantined_doc(client, d)).transpose()?;
    let (requeued, kept) = client.retry_quarantined(doc)?;
    if json {
        return print_json(&serde_json::json!({ "requeued": requeued, "kept": kept }));
    }
    println!("{requeued} refused change(s) put back in the outbox; `fieldsync sync` sends them.");
    if kept > 0 {
        println!(
            "{kept} change(s) stay in the quarantine: their document left this laptop, or was \
             edited here after the refusal; enter those edits again."
        );
    }
    Ok(())
}

/// A document named for `quarantine --retry --doc`: a quarantined document by its id or id
/// prefix (a refused new customer is no longer in the replica), else any record.
fn quarantined_doc(client: &Client, given: &str) -> Result<DocId> {
    if let Ok(id) = given.trim().parse::<DocId>() {
        return Ok(id);
    }
    let want: String = given
        .trim()
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let mut ids: Vec<DocId> = client
        .with_store(|s| s.quarantine())?
        .into_iter()
        .map(|q| q.doc_id)
        .filter(|id| want.len() >= MIN_PREFIX && id.to_string().replace('-', "").starts_with(&want))
        .collect();
    ids.sort();
    ids.dedup();
    match ids.as_slice() {
        [one] => Ok(*one),
        [] => any_doc(client, given),
        many => bail!(
            "{given:?} matches {} quarantined documents; give more of the id: {}",
            many.len(),
            many.iter()
                .map(DocId::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[derive(Serialize)]
pub(super) struct ConflictOut {
    pub(super) id: DocId,
    pub(super) kind: DocKind,
    pub(super) path: String,
    pub(super) values: Vec<serde_json::Value>,
}

pub(super) fn conflicts(client: &Client, json: bool) -> Result<()> {
    let list: Vec<ConflictOut> = client
        .conflicts()?
        .into_iter()
        .map(|c| ConflictOut {
            id: c.doc_id,
            kind: c.kind,
            path: c.path,
            values: c.values,
        })
        .collect();
    if json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("No conflicts.");
        return Ok(());
    }
    let short = ShortIds::new(client)?;
    for c in &list {
        let values: Vec<String> = c
            .values
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => format!("{s:?}"),
                other => other.to_string(),
            })
            .collect();
        println!(
            "{} {} ({}) {}: {}  (shown: {})",
            c.kind,
            short.of(c.id),
            doc_name(client, c.id),
            c.path,
            values.join(" | "),
            values.first().map_or("-", String::as_str)
        );
    }
    println!("Keep one value: `fieldsync resolve ID FIELD VALUE` (e.g. a value listed above).");
    Ok(())
}

/// What people call a document: a customer's name, or the customer of a visit or quote.
pub(super) fn doc_name(client: &Client, id: DocId) -> String {
    match client.document(id) {
        Ok(fieldsync_client::Document::Customer(c)) => c.name,
        Ok(fieldsync_client::Document::Visit(v)) => {
            format!("visit at {}", customer_name(client, v.customer_id))
        }
        Ok(fieldsync_client::Document::Quote(q)) => {
            format!("quote for {}", customer_name(client, q.customer_id))
        }
        Err(_) => "not on this laptop".into(),
    }
}

/// `fieldsync resolve ID FIELD VALUE`: writes one value over a conflict. The value is text,
/// unless the field holds numbers, true/false or null (as its listed values show).
pub(super) fn resolve(client: &Client, a: &ResolveArgs) -> Result<()> {
    let id = any_doc(client, &a.id)?;
    let field = a.field.trim().trim_matches('/');
    let conflict = client
        .conflicts()?
        .into_iter()
        .find(|c| c.doc_id == id && c.path == field);
    let Some(conflict) = conflict else {
        bail!(
            "{} ({}) has no conflict in {field:?}; `fieldsync conflicts` lists the fields in conflict",
            short_id(client, id),
            doc_name(client, id)
        );
    };
    let text_field = conflict
        .values
        .iter()
        .any(|v| matches!(v, serde_json::Value::String(_)));
    let value = if text_field {
        serde_json::Value::String(a.value.clone())
    } else {
        serde_json::from_str(a.value.trim()).with_context(|| {
            format!(
                "{field} holds {}; give one such value",
                conflict
                    .values
                    .iter()
                    .map(serde_json::Value::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        })?
    };
    client.resolve_conflict(id, field, value.clone())?;
    println!(
        "Resolved {field} of {} {} ({}): kept {}; other laptops get it at their next sync.",
        conflict.kind,
        doc_name(client, id),
        short_id(client, id),
        match &value {
            serde_json::Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        }
    );
    Ok(())
}

//! `fieldsync customer|visit|quote attach` and `fieldsync attachment …`: attaching files to
//! documents, listing them, getting and opening their bytes (downloading them on demand),
//! removing them, and what waits to move.

use super::*;
use fieldsync_client::{AttachmentInfo, BlobHash, BytesState, LocalBlob};

/// `… attach DOC FILE`: attaches `file` to the document `doc` names.
pub(super) fn attach(client: &Client, doc: DocId, a: &AttachArgs) -> Result<()> {
    let info = client
        .attachments()
        .attach_file(doc, &a.file, &a.caption)
        .with_context(|| format!("cannot attach {}", a.file.display()))?;
    if a.json {
        return print_json(&info);
    }
    println!(
        "Attached {} ({}, {}) to {}{}; it uploads at the next sync",
        info.attachment.name,
        info.attachment.media_type,
        format_bytes(info.attachment.size),
        doc_name(client, doc),
        if info.has_preview {
            " with a preview"
        } else {
            ""
        }
    );
    Ok(())
}

fn state(a: &AttachmentInfo) -> String {
    let s = match &a.bytes {
        BytesState::Here { uploaded: true, .. } => "here".to_string(),
        BytesState::Here { sent_bytes, .. } => format!(
            "uploading ({} of {})",
            format_bytes(*sent_bytes),
            format_bytes(a.attachment.size)
        ),
        BytesState::Downloading { have_bytes } => format!(
            "downloading ({} of {})",
            format_bytes(*have_bytes),
            format_bytes(a.attachment.size)
        ),
        BytesState::NotHere => "not on this laptop (attachment get)".to_string(),
    };
    match &a.refused {
        Some(r) => format!("{s}; refused: {r}"),
        None => s,
    }
}

fn stored_state(b: &LocalBlob) -> String {
    let s = if b.upload_pending() {
        format!(
            "to upload ({} confirmed)",
            format_bytes((u64::from(b.uploaded) * PIECE).min(b.size))
        )
    } else if b.download_pending() {
        format!(
            "to download ({} here)",
            format_bytes((u64::from(b.have) * PIECE).min(b.size))
        )
    } else if b.complete {
        "here".to_string()
    } else {
        "partly here".to_string()
    };
    match (&b.refused, b.stopped) {
        (Some(r), true) => format!("{s}; refused: {r} (attachment retry)"),
        (Some(r), false) => format!("{s}; refused for now: {r}"),
        _ => s,
    }
}

const PIECE: u64 = fieldsync_core::attachment::pieces::PIECE_BYTES;

pub(super) fn attachment(dir: &Path, cmd: AttachmentCmd) -> Result<u8> {
    let client = open(dir)?;
    match cmd {
        AttachmentCmd::List {
            doc: Some(doc),
            json,
        } => {
            let doc = any_doc(&client, &doc)?;
            let list = client.attachments().list(doc)?;
            if json {
                print_json(&list)?;
            } else if list.is_empty() {
                println!("{} has no attachments", doc_name(&client, doc));
            } else {
                for a in &list {
                    println!(
                        "{}  {}  {}  {}  {}{}",
                        &a.attachment.id[a.attachment.id.len().saturating_sub(8)..],
                        a.attachment.name,
                        format_bytes(a.attachment.size),
                        a.attachment.media_type,
                        state(a),
                        if a.attachment.caption.is_empty() {
                            String::new()
                        } else {
                            format!("  “{}”", a.attachment.caption)
                        }
                    );
                }
            }
        }
        AttachmentCmd::List { doc: None, json } => {
            let stored = client.attachments().stored()?;
            let waiting = client.attachments().waiting()?;
            if json {
                #[derive(Serialize)]
                struct Out {
                    hash: String,
                    size: u64,
                    state: String,
                    refused: Option<String>,
                }
                #[derive(Serialize)]
                struct All {
                    attachments: Vec<Out>,
                    waiting: fieldsync_client::BlobsWaiting,
                }
                let attachments = stored
                    .iter()
                    .map(|b| Out {
                        hash: b.hash.to_string(),
                        size: b.size,
                        state: stored_state(b),
                        refused: b.refused.clone(),
                    })
                    .collect();
                print_json(&All {
                    attachments,
                    waiting,
                })?;
            } else {
                for b in &stored {
                    println!(
                        "{}  {}  {}",
                        b.hash.short(),
                        format_bytes(b.size),
                        stored_state(b)
                    );
                }
                println!(
                    "Waiting: ↑ {} ({}), ↓ {} ({})",
                    plural(waiting.upload_files, "attachment"),
                    format_bytes(waiting.upload_bytes),
                    plural(waiting.download_files, "attachment"),
                    format_bytes(waiting.download_bytes)
                );
            }
        }
        AttachmentCmd::Get { which, out, queue } => {
            let a = find(&client, &which)?;
            if let Some(code) = bring_here(dir, &client, &a, queue)? {
                return Ok(code);
            }
            let out = match out {
                Some(o) => o,
                None => PathBuf::from(file_name(&a)),
            };
            if out.exists() {
                bail!("{} exists; choose another file with --out", out.display());
            }
            let n = client.attachments().save_to(a.attachment.hash, &out)?;
            println!(
                "Saved {} ({}) to {}",
                a.attachment.name,
                format_bytes(n),
                out.display()
            );
        }
        AttachmentCmd::Open { which } => {
            let a = find(&client, &which)?;
            if let Some(code) = bring_here(dir, &client, &a, false)? {
                return Ok(code);
            }
            // A plain copy for the viewer: removed by `fieldsync lock` and by a remote wipe.
            let folder = fieldsync_client::vault::opened_dir(client.path());
            fsmode::create_private_dir_all(&folder)
                .with_context(|| format!("cannot create {}", folder.display()))?;
            let path = folder.join(format!("{}-{}", a.attachment.hash.short(), file_name(&a)));
            if !path.exists() {
                client.attachments().save_to(a.attachment.hash, &path)?;
            }
            open_with_viewer(&path)?;
            println!("Opened {}", path.display());
            if client.is_encrypted() {
                println!(
                    "(a plain copy for the viewer; `fieldsync lock` removes the opened copies)"
                );
            }
        }
        AttachmentCmd::Remove { which } => {
            let a = find(&client, &which)?;
            client.attachments().remove(a.doc, &a.attachment.id)?;
            println!(
                "Removed {} from {}; its bytes leave this laptop at `fieldsync attachment gc`",
                a.attachment.name,
                doc_name(&client, a.doc)
            );
        }
        AttachmentCmd::Prefetch { scopes, all, off } => {
            let set = if all {
                Some(vec!["*".to_string()])
            } else if off {
                Some(Vec::new())
            } else if scopes.is_empty() {
                None
            } else {
                Some(scopes)
            };
            if let Some(set) = set {
                let n = client.attachments().set_prefetch_scopes(&set)?;
                if n > 0 {
                    println!(
                        "{} queued; they download at the next sync",
                        plural(n as u64, "attachment")
                    );
                }
            }
            let now = client.attachments().prefetch_scopes()?;
            if now.is_empty() {
                println!("Attachments download on demand only (`fieldsync attachment get`)");
            } else if now.iter().any(|s| s == "*") {
                println!("Attachments of every scope download in the background");
            } else {
                println!(
                    "Attachments of {} download in the background",
                    now.join(", ")
                );
            }
        }
        AttachmentCmd::Retry => {
            let n = client.attachments().retry()?;
            println!(
                "{} will be tried again at the next sync",
                plural(n as u64, "transfer")
            );
        }
        AttachmentCmd::Gc => {
            let (n, bytes) = client.attachments().collect()?;
            println!(
                "Removed {} ({}) that no document here keeps",
                plural(n, "attachment"),
                format_bytes(bytes)
            );
        }
    }
    Ok(exit::OK)
}

fn find(client: &Client, which: &AttachmentRef) -> Result<AttachmentInfo> {
    let doc = any_doc(client, &which.doc)?;
    Ok(client.attachments().find(doc, &which.attachment)?)
}

/// A file name for an attachment, safe to write and to hand to a viewer: its own name
/// (another device chose it) without any directory, with only letters, digits, spaces and
/// `.-_()` kept, and an extension that no desktop runs as a program; or its hash.
fn file_name(a: &AttachmentInfo) -> String {
    const RUNNABLE: [&str; 16] = [
        "bat", "cmd", "com", "exe", "lnk", "msi", "ps1", "scr", "pif", "vbs", "js", "jse", "wsf",
        "hta", "cpl", "desktop",
    ];
    let base = Path::new(&a.attachment.name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut clean: String = base
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || " .-_()".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    clean = clean.trim_matches(|c| c == '.' || c == ' ').to_string();
    if clean.is_empty() {
        clean = a.attachment.hash.to_string();
    }
    let ext = clean
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    if RUNNABLE.contains(&ext.as_str()) {
        clean.push_str(".bin");
    }
    clean
}

/// Downloads an attachment not on this laptop (or only queues it): `Some(exit code)` when it
/// is not here afterwards.
fn bring_here(dir: &Path, client: &Client, a: &AttachmentInfo, queue: bool) -> Result<Option<u8>> {
    if matches!(a.bytes, BytesState::Here { .. }) {
        return Ok(None);
    }
    let hash: BlobHash = a.attachment.hash;
    client.attachments().fetch(a.doc, hash, a.attachment.size)?;
    if queue {
        println!(
            "{} ({}) is queued; it downloads at the next sync",
            a.attachment.name,
            format_bytes(a.attachment.size)
        );
        return Ok(Some(exit::OK));
    }
    let cfg = sync_settings(dir, client)?;
    eprintln!(
        "Downloading {} ({})…",
        a.attachment.name,
        format_bytes(a.attachment.size)
    );
    if let Err(e) = runtime()?.block_on(sync::sync_now(client, &cfg)) {
        let f = failure(client, &cfg.relay, &e, true);
        return Err(Failure {
            code: f.code,
            message: format!(
                "{}; {} stays queued and downloads at the next sync",
                f.message, a.attachment.name
            ),
        }
        .into());
    }
    let now = client.attachments().find(a.doc, &a.attachment.id)?;
    if matches!(now.bytes, BytesState::Here { .. }) {
        return Ok(None);
    }
    let why = now.refused.unwrap_or_else(|| {
        "the relay does not have it yet (its author's laptop has not uploaded it)".into()
    });
    Err(Failure {
        code: exit::ERROR,
        message: format!(
            "{} is not on this laptop: {why}; it stays queued for the next sync",
            a.attachment.name
        ),
    }
    .into())
}

/// Opens `path` with the desktop's viewer (`$FIELDSYNC_OPENER` when set).
pub(super) fn open_with_viewer(path: &Path) -> Result<()> {
    let opener = std::env::var_os("FIELDSYNC_OPENER");
    let mut cmd = match &opener {
        Some(o) => std::process::Command::new(o),
        None if cfg!(target_os = "macos") => std::process::Command::new("open"),
        None if cfg!(windows) => {
            let mut c = std::process::Command::new("cmd");
            c.args(["/C", "start", ""]);
            c
        }
        None => std::process::Command::new("xdg-open"),
    };
    // The viewer is not given the replica's passphrase.
    let status = cmd
        .arg(path)
        .env_remove("FIELDSYNC_PASSPHRASE")
        .env_remove("FIELDSYNC_NEW_PASSPHRASE")
        .status()
        .with_context(|| format!("cannot start a viewer for {}", path.display()))?;
    if !status.success() {
        bail!(
            "the viewer failed ({status}); the file is at {}",
            path.display()
        );
    }
    Ok(())
}

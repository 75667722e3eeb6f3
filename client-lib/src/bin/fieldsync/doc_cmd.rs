//! `fieldsync export` and `fieldsync import`: one record with its whole history as a file
//! (its Automerge bytes), to carry to another replica by USB stick or e-mail; importing
//! merges it like a sync would.

use super::*;

/// The largest file `import` reads: far above any document the budgets allow (8 MiB of raw
/// changes), far below what would strain a laptop.
const MAX_IMPORT_BYTES: u64 = 64 * 1024 * 1024;

/// What `--json` prints for both commands.
#[derive(Serialize)]
struct DocOut {
    id: DocId,
    kind: DocKind,
}

/// `fieldsync export ID --out FILE`.
pub(super) fn export_cmd(client: &Client, a: &ExportArgs) -> Result<()> {
    let id = any_doc(client, &a.id)?;
    let kind = client.document(id)?.header().kind;
    let bytes = client.export(id)?;
    write_private(&a.out, &bytes).with_context(|| format!("cannot write {}", a.out.display()))?;
    if a.json {
        return print_json(&DocOut { id, kind });
    }
    println!(
        "Exported {kind} {} ({}) to {} ({}); `fieldsync import {}` merges it into another \
         replica.",
        doc_title(client, id),
        short_id(client, id),
        a.out.display(),
        format_bytes(bytes.len() as u64),
        a.out.display()
    );
    Ok(())
}

/// `fieldsync import FILE`.
pub(super) fn import_cmd(client: &Client, a: &ImportArgs) -> Result<()> {
    let file = &a.file;
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    if size > MAX_IMPORT_BYTES {
        bail!(
            "{} is {}, more than any record `fieldsync export` writes ({} at most): not an \
             exported record",
            file.display(),
            format_bytes(size),
            format_bytes(MAX_IMPORT_BYTES)
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let before = client.with_store(|s| s.doc_count())?;
    let id = client.import(&bytes).with_context(|| {
        format!(
            "cannot import {}: is it a record written by `fieldsync export`?",
            file.display()
        )
    })?;
    let after = client.with_store(|s| s.doc_count())?;
    let kind = client.document(id)?.header().kind;
    if a.json {
        return print_json(&DocOut { id, kind });
    }
    println!(
        "Imported {kind} {} ({}) from {}: {}.",
        doc_title(client, id),
        short_id(client, id),
        file.display(),
        if after > before {
            "new on this laptop"
        } else {
            "merged with the copy this laptop had"
        }
    );
    Ok(())
}

/// What follows the kind in a confirmation: a customer's name, or whose visit or quote.
fn doc_title(client: &Client, id: DocId) -> String {
    match client.document(id) {
        Ok(fieldsync_client::Document::Customer(c)) => c.name,
        Ok(fieldsync_client::Document::Visit(v)) => {
            format!("at {}", customer_name(client, v.customer_id))
        }
        Ok(fieldsync_client::Document::Quote(q)) => format!(
            "{}for {}",
            q.quote_no.map(|n| format!("{n} ")).unwrap_or_default(),
            customer_name(client, q.customer_id)
        ),
        Err(_) => "?".into(),
    }
}

/// Writes `bytes` to `path` readable by its owner only (a record is the replica's data), whole
/// or not at all: into a temporary file beside it, then renamed over it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("there is no directory {}", dir.display());
    }
    // NamedTempFile is created with mode 0600.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

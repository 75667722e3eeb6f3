//! `doc check` and `doc trim`: finding stored documents that fail to load, and making one
//! loadable again.

use clap::Subcommand;
use fieldsync_core::DocId;
use fieldsync_core::display::format_bytes;

use crate::common::Common;

#[derive(Subcommand, Debug)]
pub(crate) enum DocCmd {
    /// List the stored documents that fail to load (over a size, inflation, row or nesting
    /// budget, or damaged), as the relay and laptops would load them: changes to such a
    /// document are refused for a retry and laptops skip it. Reads every stored snapshot once;
    /// works while the relay runs.
    Check {
        #[command(flatten)]
        common: Common,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make a document that outgrew its budget loadable again: its current state, less the
    /// values named by --drop, becomes its whole history (Automerge keeps every operation ever
    /// made, so deleting values does not shrink a document). Laptops take the new history at
    /// their next sync and carry over edits they had not sent. Refuses, listing the largest
    /// values, when the result would still be over budget. Works while the relay runs.
    Trim {
        #[command(flatten)]
        common: Common,
        /// The document's id (from `doc check`).
        doc: DocId,
        /// A value to leave out: map keys from the document's root joined by `/`
        /// (e.g. `notes/3f2c…`). Repeatable.
        #[arg(long, value_name = "PATH")]
        drop: Vec<String>,
        /// Show what the trim would do and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `doc` command.
pub(crate) fn run(cmd: DocCmd) -> anyhow::Result<()> {
    match cmd {
        DocCmd::Check { common, json } => check(&common, json),
        DocCmd::Trim {
            common,
            doc,
            drop,
            dry_run,
            json,
        } => trim(&common, doc, &drop, dry_run, json),
    }
}

fn check(common: &Common, json: bool) -> anyhow::Result<()> {
    let report = fieldsync_relay::doc_check::check_documents(&common.store()?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} documents checked, {} fail to load",
            report.checked,
            report.problems.len()
        );
        for p in &report.problems {
            println!(
                "{}  {:>12}  {}",
                p.doc_id,
                format_bytes(p.snapshot_bytes as u64),
                p.reason
            );
        }
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} documents fail to load", report.problems.len())
    }
}

fn trim(
    common: &Common,
    doc: DocId,
    drop: &[String],
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    let paths: Vec<_> = drop
        .iter()
        .map(|p| fieldsync_core::model::rewrite::parse_path(p))
        .collect();
    let r = fieldsync_relay::doc_trim::trim_document(&common.store()?, doc, &paths, dry_run)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let verb = if r.seq.is_some() {
        "trimmed"
    } else {
        "would trim (dry run)"
    };
    println!(
        "{} {verb}: {} stored, {} after",
        r.doc_id,
        format_bytes(r.before_bytes as u64),
        format_bytes(r.after_bytes as u64)
    );
    if !r.dropped.is_empty() {
        println!("left out: {}", r.dropped.join(", "));
    }
    println!(
        "largest values now: {}",
        fieldsync_relay::doc_trim::listing(&r.largest)
    );
    if let Some(seq) = r.seq {
        println!("laptops take the new history at their next sync (log entry {seq})");
    }
    Ok(())
}

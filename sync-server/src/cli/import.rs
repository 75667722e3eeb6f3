//! `import`: customers from an ERP export into the relay, through the rules and the audit
//! trail, idempotent by external id.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use fieldsync_relay::import::{ImportOptions, import, input};

use crate::common::Common;

/// The file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Comma-separated, a header row naming the columns.
    Csv,
    /// A JSON array of customer objects.
    Json,
}

/// `import`'s flags.
#[derive(Args, Debug)]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    common: Common,
    /// The export to read (CSV or JSON; `-` reads standard input).
    file: PathBuf,
    /// The file's format [default: from its extension, else CSV].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// The organisation of customers whose record names none.
    #[arg(long, default_value = "default")]
    org: String,
    /// Who the customers say created or changed them.
    #[arg(long, default_value = "IT import")]
    author: String,
    /// Check every record and report what would happen; store nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON (every row with its result).
    #[arg(long)]
    json: bool,
    /// Enrol a new import device when IT revoked the last one (imports refuse until then).
    #[arg(long)]
    new_device: bool,
}

/// Runs an import; fails (after importing every good record) when a record failed.
pub(crate) fn run(a: ImportArgs) -> anyhow::Result<()> {
    let text = if a.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&a.file)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", a.file.display()))?
    };
    let format = a
        .format
        .unwrap_or_else(|| match a.file.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Csv,
        });
    let reads = match format {
        Format::Csv => input::read_csv(&text),
        Format::Json => input::read_json(&text),
    }
    .map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    // The daily quotas stop a runaway or hostile laptop; an import is IT's own, thousands of
    // customers at once. Every other rule applies.
    let mut cfg = a.common.load()?;
    cfg.quota_new_documents_per_day = 0;
    cfg.quota_bytes_per_day = 0;
    let store = fieldsync_relay::RelayStore::open_existing(&cfg)?;
    let report = import(
        &store,
        reads,
        &ImportOptions {
            org: a.org,
            author: a.author,
            dry_run: a.dry_run,
            new_device: a.new_device,
        },
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for r in report.rows.iter().filter(|r| r.error.is_some()) {
            println!(
                "{}{}: {}",
                r.at,
                r.external_id
                    .as_deref()
                    .map_or(String::new(), |id| format!(" (customer {id})")),
                r.error.as_deref().unwrap_or("")
            );
        }
        println!(
            "{}{} customers: {} created, {} updated, {} unchanged, {} failed ({:.1} s)",
            if report.dry_run {
                "dry run, nothing stored: "
            } else {
                ""
            },
            report.rows.len(),
            report.created,
            report.updated,
            report.unchanged,
            report.failed,
            report.seconds
        );
    }
    if report.failed > 0 {
        anyhow::bail!(
            "{} of {} records failed (listed above); the others were {}",
            report.failed,
            report.rows.len(),
            if report.dry_run {
                "checked"
            } else {
                "imported"
            }
        );
    }
    Ok(())
}

//! `fieldsync`: the command-line client of the offline-first CRM replica.
//!
//! Every command works on the replica in the data directory (`--data`, `$FIELDSYNC_DATA`, or
//! the platform data directory): `DIR/replica.db`, plus `DIR/config.toml` with the relay
//! settings written by `fieldsync init`, and `DIR/replica.db.credential` (mode 0600) with the
//! device credential stored by `fieldsync init --token`. The directory fieldsync creates is
//! readable by its owner only (0700), and so are the replica and SQLite's files beside it
//! (0600). Edits work offline; `fieldsync sync` exchanges them with the relay. `--json`
//! prints one JSON value on stdout; errors go to stderr with a non-zero exit status (see
//! [`exit`] for what each means).
//!
//! `args` is the command line (`args/customer.rs`, `args/visit.rs`, `args/quote.rs` those of
//! the record commands); `setup` the data directory and `init`; `names` how records and their
//! items are named (id prefixes, customer names, short ids); `customer_cmd`, `visit_cmd` and
//! `quote_cmd` the customer, visit and quote commands; `doc_cmd` `export` and `import`;
//! `formats` what those share (money, dates, refusals in words of roles); `attach_cmd`
//! attachments; `sync_cmd` `sync`; `status` `status`, `quarantine`, `conflicts` and
//! `resolve`; `keys_cmd` encryption at rest (`encrypt`, `unlock`, `lock`, `rekey`). This file
//! dispatches, writes completions and man pages, and holds the shared formats.

mod app_cmd;
mod args;
mod attach_cmd;
mod briefing_cmd;
mod customer_cmd;
mod doc_cmd;
mod formats;
mod keys_cmd;
mod names;
mod quote_cmd;
mod setup;
mod status;
mod sync_cmd;
mod visit_cmd;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fieldsync_client::sync::{
    self, Fingerprint, SyncConfig, SyncEvent, SyncHandle, SyncProgress, SyncReport,
};
use fieldsync_client::{
    Client, ClientError, CustomerEdit, CustomerField, CustomerFilter, CustomerId, DocId, DocKind,
    Identity, LineInput, Millis, NewCustomer, NewQuote, NewVisit, Quote, QuoteId, QuoteStatus,
    Role, VisitFilter, VisitId, VisitStatus,
};
use fieldsync_core::display::{format_bytes, format_millis};
use fieldsync_core::fsmode;
use serde::{Deserialize, Serialize};

use app_cmd::*;
use args::*;
use attach_cmd::*;
use briefing_cmd::*;
use customer_cmd::*;
use doc_cmd::*;
use formats::*;
use keys_cmd::*;
use names::*;
use quote_cmd::*;
use setup::*;
use status::*;
use sync_cmd::*;
use visit_cmd::*;

/// The replica file inside the data directory.
const REPLICA_FILE: &str = "replica.db";
/// The relay settings inside the data directory.
const CONFIG_FILE: &str = "config.toml";

/// The exit statuses, as `fieldsync --help` and the README list them.
mod exit {
    /// Done; for `sync`: synced.
    pub(crate) const OK: u8 = 0;
    /// An error: bad input, a refused edit, a failed command.
    pub(crate) const ERROR: u8 = 1;
    // 2: the command line itself is wrong (clap's usage error).
    /// `sync`: synced, but the relay refused some local changes (now in the quarantine).
    pub(crate) const REFUSED: u8 = 3;
    /// `sync`: the relay could not be reached, or stopped answering; local edits are safe.
    pub(crate) const OFFLINE: u8 = 4;
    /// `sync`: this laptop is not enrolled with the relay, or IT revoked its access.
    pub(crate) const NOT_ENROLLED: u8 = 5;
    /// `sync`: IT ordered this laptop wiped; its replica's keys and files are destroyed.
    pub(crate) const WIPED: u8 = 6;
}

/// A failure with its own exit status and a message written for people (printed without the
/// `error:` prefix).
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FIELDSYNC_LOG")
        // Refused changes are announced at the end of `sync`, not logged as they arrive.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("warn,fieldsync_core::protocol::client=error")
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<Failure>() {
            Some(f) => {
                eprintln!("fieldsync: {}", f.message);
                f.code
            }
            None => {
                eprintln!("fieldsync: error: {e:#}");
                exit::ERROR
            }
        },
    };
    std::process::ExitCode::from(code)
}

fn run(cli: Cli) -> Result<u8> {
    // These two only describe the command line: no data directory.
    match &cli.command {
        Command::Completions(a) => return completions(a.shell).map(|()| exit::OK),
        Command::Man(a) => return man_pages(&a.out).map(|()| exit::OK),
        _ => {}
    }
    let dir = data_dir(cli.data)?;
    let done = match cli.command {
        Command::Init(args) => init(&dir, args),
        Command::Customer(cmd) => customer(&open(&dir)?, cmd),
        Command::Visit(cmd) => visit(&open(&dir)?, cmd),
        Command::Quote(cmd) => quote(&open(&dir)?, cmd),
        Command::Export(args) => export_cmd(&open(&dir)?, &args),
        Command::Import(args) => import_cmd(&open(&dir)?, &args),
        Command::Attachment(cmd) => return attachment(&dir, cmd),
        Command::Sync(args) => return sync_cmd(&dir, args),
        Command::App(args) => return app_cmd(&dir, args),
        Command::Today(args) => today_cmd(&open(&dir)?, &args),
        Command::Status(f) => status(&dir, f.json),
        Command::Encrypt(keys) => encrypt_cmd(&dir, &keys),
        Command::Unlock(args) => unlock_cmd(&dir, &args),
        Command::Lock => lock_cmd(&dir),
        Command::Rekey(args) => rekey_cmd(&dir, &args),
        Command::Quarantine(q) if q.retry => {
            retry_quarantined(&open(&dir)?, q.doc.as_deref(), q.json)
        }
        Command::Quarantine(q) => quarantine(&open(&dir)?, q.json),
        Command::Conflicts(f) => conflicts(&open(&dir)?, f.json),
        Command::Resolve(a) => resolve(&open(&dir)?, &a),
        Command::Completions(_) | Command::Man(_) => Ok(()),
    };
    done.map(|()| exit::OK)
}

/// `fieldsync completions SHELL`: the completion script on stdout.
fn completions(shell: clap_complete::Shell) -> Result<()> {
    use clap::CommandFactory;
    use clap_complete::Generator;
    let mut cmd = Cli::command();
    cmd.set_bin_name("fieldsync");
    cmd.build();
    let mut script = Vec::new();
    shell.try_generate(&cmd, &mut script)?;
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        // Piped into `head` and the like: what was wanted went out.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// `fieldsync man --out DIR`: `fieldsync.1` and a page per command (`fieldsync-sync.1`, …).
fn man_pages(out: &Path) -> Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    clap_mangen::generate_to(Cli::command(), out)
        .with_context(|| format!("cannot write the man pages into {}", out.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(out)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("fieldsync") && n.ends_with(".1"))
        .collect();
    pages.sort();
    println!(
        "Wrote {} man pages into {} (e.g. `man {}`)",
        pages.len(),
        out.display(),
        out.join("fieldsync.1").display()
    );
    Ok(())
}

fn print_json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn now() -> i64 {
    fieldsync_core::ids::now_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_parse_exactly() {
        assert_eq!(parse_minor_units("1250.50").ok(), Some(125_050));
        assert_eq!(parse_minor_units("1250.5").ok(), Some(125_050));
        assert_eq!(parse_minor_units("1250").ok(), Some(125_000));
        assert_eq!(parse_minor_units("0.05").ok(), Some(5));
        assert_eq!(parse_minor_units(".5").ok(), Some(50));
        assert_eq!(parse_minor_units(" 7 ").ok(), Some(700));
        assert_eq!(parse_minor_units("0.29").ok(), Some(29));
        for bad in [
            "",
            ".",
            "1.",
            "1.234",
            "-1",
            "1,5",
            "abc",
            "1e3",
            "1.2.3",
            "+1",
            "99999999999999999999",
        ] {
            assert!(parse_minor_units(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_minor_units("92233720368547758.07").ok(),
            Some(i64::MAX)
        );
        assert!(parse_minor_units("92233720368547758.08").is_err());
        assert_eq!(fmt_minor_units(125_050), "1250.50");
        assert_eq!(fmt_minor_units(-5), "-0.05");
    }

    #[test]
    fn timestamps_format_as_utc() {
        assert_eq!(format_millis(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_millis(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_millis(1_795_000_000_123), "2026-11-18T11:06:40Z");
        assert_eq!(format_millis(-1_000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn cli_shape_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

//! `fieldsync`: the command-line client of the offline-first CRM replica.
//!
//! Every command works on the replica in the data directory (`--data`, `$FIELDSYNC_DATA`, or
//! the platform data directory): `DIR/replica.db`, plus `DIR/config.toml` with the relay
//! settings written by `fieldsync init`, and `DIR/replica.db.credential` (mode 0600) with the
//! device credential stored by `fieldsync init --token`. The directory fieldsync creates is
//! readable by its owner only (0700), and so are the replica and SQLite's files beside it
//! (0600). Edits work offline; `fieldsync sync` exchanges them with the relay. `--json`
//! prints one JSON value on stdout; errors go to stderr with a non-zero exit status.
//!
//! `args` is the command line; `setup` the data directory and `init`; `records` the customer,
//! visit and quote commands; `sync_cmd` `sync`; `status` `status`, `quarantine` and
//! `conflicts`. This file dispatches and holds the shared formats.

mod args;
mod records;
mod setup;
mod status;
mod sync_cmd;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fieldsync_client::sync::{
    self, Fingerprint, SyncConfig, SyncEvent, SyncHandle, SyncProgress, SyncReport,
};
use fieldsync_client::{
    Client, CustomerEdit, CustomerField, CustomerFilter, CustomerId, DocId, Identity, LineInput,
    NewCustomer, NewQuote, NewVisit, QuoteId, Role, VisitFilter, VisitStatus,
};
use fieldsync_core::display::{format_bytes, format_millis};
use fieldsync_core::fsmode;
use serde::{Deserialize, Serialize};

use args::*;
use records::*;
use setup::*;
use status::*;
use sync_cmd::*;

/// The replica file inside the data directory.
const REPLICA_FILE: &str = "replica.db";
/// The relay settings inside the data directory.
const CONFIG_FILE: &str = "config.toml";

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FIELDSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("fieldsync: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let dir = data_dir(cli.data)?;
    match cli.command {
        Command::Init(args) => init(&dir, args),
        Command::Customer(cmd) => customer(&open(&dir)?, cmd),
        Command::Visit(cmd) => visit(&open(&dir)?, cmd),
        Command::Quote(cmd) => quote(&open(&dir)?, cmd),
        Command::Sync(args) => sync_cmd(&dir, args),
        Command::Status(f) => status(&dir, f.json),
        Command::Quarantine(q) if q.retry => retry_quarantined(&open(&dir)?, q.doc, q.json),
        Command::Quarantine(q) => quarantine(&open(&dir)?, q.json),
        Command::Conflicts(f) => conflicts(&open(&dir)?, f.json),
    }
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

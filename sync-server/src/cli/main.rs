//! `fieldsync-relay`: the relay binary. All logic lives in the library; this parses flags
//! and prints. One file per command family: `device` (enrolment tokens, revocation, grants,
//! the device list), `doc` (check and trim), `backup` (backup and restore), `status`,
//! `audit`, `import`, `shell` (completions and man pages); `common` holds what they share (where the configuration comes from).

mod attachment;
mod audit;
mod backup;
mod common;
mod device;
mod doc;
mod import;
mod shell;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use common::Common;

// The relay keeps many small Automerge documents loaded and loads and frees thousands per
// upload: jemalloc keeps such a heap at under half the resident memory of the system
// allocator, and allocates faster.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: a background thread hands memory freed after a burst (a large upload)
/// back to the system within about a second, instead of on later allocations.
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: Option<&'static std::ffi::c_char> = Some(
    // SAFETY: a pointer to the first byte of a NUL-terminated static string, as jemalloc reads it.
    unsafe { &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() },
);

/// fieldsync relay: the central QUIC sync server.
#[derive(Parser, Debug)]
#[command(name = "fieldsync-relay", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the relay until Ctrl-C / SIGTERM. Prints `fingerprint: <hex>` and
    /// `listening on <addr>` on stdout once ready. Logs go to stderr (`log_level`,
    /// `log_format` in the config; `RUST_LOG` overrides the level).
    Serve(Box<ServeArgs>),
    /// Whether the relay serves (address, version, uptime, connections, devices online and
    /// what they still have to download), its epoch, log position, counts and certificate
    /// fingerprint. Works from any machine that reaches the store. Exits 0 when a node serves,
    /// 3 when none does, 1 on an error (no database, a wrong config).
    Status {
        #[command(flatten)]
        common: Common,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Enrol, revoke (and wipe) and list devices, set their offline lease; list and cancel
    /// enrolment tokens.
    #[command(subcommand)]
    Device(device::DeviceCmd),
    /// Inspect stored documents.
    #[command(subcommand)]
    Doc(doc::DocCmd),
    /// Attachment bytes: remove what no document needs any more.
    #[command(subcommand)]
    Attachment(attachment::AttachmentCmd),
    /// Write a consistent copy of the relay's database (and its certificate and key) into a
    /// directory, while the relay keeps serving. Embedded SQLite store only.
    Backup(backup::BackupArgs),
    /// Put a backup in place of the relay's database, under a new epoch so that devices
    /// re-upload what the backup lacks. The relay must be stopped; the database it replaces
    /// is kept beside it.
    Restore(backup::RestoreArgs),
    /// Print the audit trail: every accepted change with its device, time, document kind and
    /// customer (or, with --attachments, the attachment uploads; with --devices, the remote
    /// wipes and offline leases).
    Audit(audit::AuditArgs),
    /// Import customers with their addresses, contacts and equipment from an ERP export (CSV
    /// or JSON), as changes of the `relay import` device: the same rules, quotas and audit
    /// trail as any upload. Idempotent by `external_id`: importing again updates what
    /// changed. Every bad record is reported with its row; the others are imported. Works
    /// while the relay runs; laptops get the customers at their next sync.
    Import(Box<import::ImportArgs>),
    /// Print the shell completion script (bash, zsh, fish, powershell, elvish), e.g.
    /// `fieldsync-relay completions bash > /etc/bash_completion.d/fieldsync-relay`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (fieldsync-relay.1 and one per command) into a directory.
    Man {
        /// The directory (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// `serve`'s flags.
#[derive(clap::Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// UDP address to listen on. Overrides `listen` in the config file.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Certificate chain (PEM/DER) instead of the generated one; needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key for --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Refuse devices that are not enrolled (open_enrollment = false; the default).
    #[arg(long, conflicts_with = "open")]
    closed: bool,
    /// Accept devices that are not enrolled, with open_scopes and open_role
    /// (open_enrollment = true; development and pilots only).
    #[arg(long)]
    open: bool,
    /// Serve Prometheus metrics (/metrics) and a health check (/healthz) over HTTP on
    /// this TCP address. Overrides `metrics_listen` in the config file.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if !matches!(cli.cmd, Cmd::Serve(_)) {
        // Admin commands log warnings only: their output is what they print.
        fieldsync_relay::logging::init("warn", fieldsync_relay::LogFormat::Text);
    }
    let ok = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    match cli.cmd {
        Cmd::Status { common, json } => status::run(&common, json),
        Cmd::Serve(a) => ok(serve(*a)),
        Cmd::Backup(a) => ok(backup::backup(a)),
        Cmd::Restore(a) => ok(backup::restore(a)),
        Cmd::Doc(cmd) => ok(doc::run(cmd)),
        Cmd::Attachment(cmd) => ok(attachment::run(cmd)),
        Cmd::Device(cmd) => ok(device::run(cmd)),
        Cmd::Audit(a) => ok(audit::run(a)),
        Cmd::Import(a) => ok(import::run(*a)),
        Cmd::Completions { shell } => ok(shell::completions(shell)),
        Cmd::Man { out } => ok(shell::man_pages(&out)),
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = a.common.load()?;
    fieldsync_relay::logging::init(&cfg.log_level, cfg.log_format);
    if a.metrics_listen.is_some() {
        cfg.metrics_listen = a.metrics_listen;
    }
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    if a.cert.is_some() {
        cfg.cert = a.cert;
        cfg.key = a.key;
    }
    if a.closed {
        cfg.open_enrollment = false;
    }
    if a.open {
        cfg.open_enrollment = true;
    }
    cfg.validate()?;
    // Held while serving: `restore` refuses to replace the database under a relay.
    let _lock = fieldsync_relay::backup::lock_data_dir(&cfg.data_dir)?;
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(fieldsync_relay::serve(cfg))
}

//! `fieldsync-relay`: the relay binary. All logic lives in the library; this only parses flags.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use fieldsync_core::display::{format_bytes, format_millis};
use fieldsync_core::protocol::EnrolToken;
use fieldsync_core::{DocId, Role};
use fieldsync_relay::{RelayConfig, RelayStore};
use uuid::Uuid;

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
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the configuration comes from: a TOML file, overridden by flags.
#[derive(Args, Debug)]
struct Common {
    /// Data directory (relay.db, certificate). Overrides `data_dir` in the config file.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// TOML configuration file (see relay.example.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// PostgreSQL database shared by relay nodes (`postgres://user@host/db`). Overrides
    /// `database` in the config file [default: relay.db in the data directory].
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// CA certificate (PEM) of the PostgreSQL server: connect over verified TLS. Overrides
    /// `database_ca` in the config file.
    #[arg(long, value_name = "FILE")]
    database_ca: Option<PathBuf>,
}

impl Common {
    fn load(&self) -> anyhow::Result<RelayConfig> {
        let mut cfg = match &self.config {
            Some(p) => RelayConfig::load(p)?,
            None => RelayConfig::default(),
        };
        if let Some(d) = &self.data {
            cfg.data_dir = d.clone();
        }
        if let Some(url) = &self.database {
            cfg.database = Some(url.clone());
        }
        if let Some(ca) = &self.database_ca {
            cfg.database_ca = Some(ca.clone());
        }
        if self.database.is_some() || self.database_ca.is_some() {
            cfg.validate()?;
        }
        Ok(cfg)
    }

    /// The store of an existing relay database (it is not created).
    fn store(&self) -> anyhow::Result<RelayStore> {
        let cfg = self.load()?;
        Ok(RelayStore::open_existing(&cfg)?)
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the relay until Ctrl-C / SIGTERM. Prints `fingerprint: <hex>` and
    /// `listening on <addr>` on stdout once ready.
    Serve {
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
    },
    /// Print the relay's epoch, log position, counts and certificate fingerprint.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Enrol, revoke and list devices.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Inspect stored documents.
    #[command(subcommand)]
    Doc(DocCmd),
    /// Write a consistent copy of the relay's database (and its certificate and key) into a
    /// directory, while the relay keeps serving. Embedded SQLite store only.
    Backup {
        #[command(flatten)]
        common: Common,
        /// Directory to write the backup into (created; must not hold a backup already).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Put a backup in place of the relay's database, under a new epoch so that devices
    /// re-upload what the backup lacks. The relay must be stopped; the database it replaces
    /// is kept beside it.
    Restore {
        #[command(flatten)]
        common: Common,
        /// Directory holding the backup (written by `backup --out`).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
    },
    /// Print the audit trail: every accepted change with its device, time and document.
    Audit {
        #[command(flatten)]
        common: Common,
        /// Only changes to this document.
        #[arg(long, value_name = "ID")]
        doc: Option<DocId>,
        /// Only changes uploaded by this device (name or id).
        #[arg(long, value_name = "NAME")]
        device: Option<String>,
        /// At most this many entries (the most recent).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DocCmd {
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

#[derive(Subcommand, Debug)]
enum DeviceCmd {
    /// Enrol a device: prints a one-time enrolment token on the last line of stdout, carrying
    /// the relay address, the certificate pin and a secret. On the laptop:
    /// `fieldsync init --token TOKEN`. Works while the relay runs (same --data). On PostgreSQL
    /// the pin is the certificate the relay nodes recorded in the database when they started
    /// (checked against --cert or --data when given); start a node first. Also `enrol`.
    #[command(alias = "enrol")]
    Enroll {
        #[command(flatten)]
        common: Common,
        /// The certificate (PEM/DER) the relay serves, for the token's pin, instead of the
        /// one in the data directory (or, on PostgreSQL, recorded by the nodes).
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
        /// A name for people (e.g. the rep's name and laptop); `device revoke NAME` uses it.
        #[arg(long)]
        name: String,
        /// rep, manager, director or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A scope the device may see (repeat for several; `*` = all).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// The address devices use to reach the relay, written into the token [default:
        /// `public_addr` from the config, else `listen` unless it is a wildcard address].
        #[arg(long, value_name = "HOST:PORT")]
        relay_addr: Option<String>,
        /// Only this device id (the replica's, shown by `fieldsync status`) may redeem the
        /// token; needed to enrol a device the relay already knows again.
        #[arg(long)]
        device_id: Option<Uuid>,
        /// Days the token stays redeemable.
        #[arg(long, value_name = "DAYS", default_value_t = 7)]
        valid_days: u64,
    },
    /// Revoke a device (by name or id; a name revokes every active device and unused token
    /// with it): its next connection is refused and an open one is closed at once.
    Revoke {
        #[command(flatten)]
        common: Common,
        /// The device's name or id.
        device: String,
    },
    /// Change a device's role or scopes (by name or id), keeping its credential: its open
    /// connection reconnects with the new grant at once.
    Grant {
        #[command(flatten)]
        common: Common,
        /// The device's name or id.
        device: String,
        /// rep, manager, director or admin (unchanged if not given).
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        /// A scope the device may see, replacing its scopes (repeat for several; `*` = all).
        #[arg(long = "scope", required_unless_present = "role")]
        scopes: Vec<String>,
    },
    /// List devices with their role, scopes and last sync, and unused enrolment tokens.
    List {
        #[command(flatten)]
        common: Common,
        /// One JSON object with `devices` and `enrolments`.
        #[arg(long)]
        json: bool,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("unknown role `{s}` (rep, manager, director, admin)"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve {
            common,
            listen,
            cert,
            key,
            closed,
            open,
            metrics_listen,
        } => {
            let mut cfg = common.load()?;
            if metrics_listen.is_some() {
                cfg.metrics_listen = metrics_listen;
            }
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if cert.is_some() {
                cfg.cert = cert;
                cfg.key = key;
            }
            if closed {
                cfg.open_enrollment = false;
            }
            if open {
                cfg.open_enrollment = true;
            }
            cfg.validate()?;
            // Held while serving: `restore` refuses to replace the database under a relay.
            let _lock = fieldsync_relay::backup::lock_data_dir(&cfg.data_dir)?;
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(fieldsync_relay::serve(cfg))
        }
        Cmd::Backup { common, out } => {
            let cfg = common.load()?;
            embedded_only(&cfg, "back up")?;
            let s = fieldsync_relay::backup::backup(&cfg.data_dir, &out)?;
            println!(
                "backup written to {} ({} bytes; epoch {}, log position {}, {} documents, {} devices); integrity check ok",
                out.display(),
                s.bytes,
                s.epoch,
                s.high_seq,
                s.docs,
                s.devices
            );
            Ok(())
        }
        Cmd::Restore { common, from } => {
            let cfg = common.load()?;
            embedded_only(&cfg, "restore")?;
            let r = fieldsync_relay::backup::restore(&from, &cfg.data_dir)?;
            println!(
                "restored {} into {} under new epoch {} (the backup's was {}); log position {}, {} documents, {} devices",
                from.display(),
                cfg.data_dir.display(),
                r.summary.epoch,
                r.backup_epoch,
                r.summary.high_seq,
                r.summary.docs,
                r.summary.devices
            );
            if let Some(p) = &r.replaced {
                println!("the database it replaced is kept at {}", p.display());
            }
            if r.vouched > 0 {
                println!(
                    "{} changes the replaced database held beyond the backup may come back from any device",
                    r.vouched
                );
            }
            println!(
                "devices will compare their documents with the relay and re-upload what the backup lacks on their next sync"
            );
            Ok(())
        }
        Cmd::Doc(DocCmd::Check { common, json }) => {
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
        Cmd::Doc(DocCmd::Trim {
            common,
            doc,
            drop,
            dry_run,
            json,
        }) => {
            let paths: Vec<_> = drop
                .iter()
                .map(|p| fieldsync_core::model::rewrite::parse_path(p))
                .collect();
            let r =
                fieldsync_relay::doc_trim::trim_document(&common.store()?, doc, &paths, dry_run)?;
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
        Cmd::Status { common } => {
            print!("{}", fieldsync_relay::status_report(&common.load()?)?);
            Ok(())
        }
        Cmd::Device(DeviceCmd::Enroll {
            common,
            cert,
            name,
            role,
            scopes,
            relay_addr,
            device_id,
            valid_days,
        }) => enroll(
            &common,
            cert.as_deref(),
            &name,
            role,
            &scopes,
            relay_addr,
            device_id,
            valid_days,
        ),
        Cmd::Device(DeviceCmd::Revoke { common, device }) => {
            let r = common.store()?.revoke(&device)?;
            for d in &r.devices {
                println!("revoked device {d}");
            }
            if r.tokens > 0 {
                println!("revoked {} unused enrolment token(s)", r.tokens);
            }
            Ok(())
        }
        Cmd::Device(DeviceCmd::Grant {
            common,
            device,
            role,
            scopes,
        }) => {
            let scopes = (!scopes.is_empty()).then_some(scopes);
            for d in common.store()?.grant(&device, role, scopes.as_deref())? {
                println!("changed the grant of device {d}");
            }
            Ok(())
        }
        Cmd::Device(DeviceCmd::List { common, json }) => list(&common, json),
        Cmd::Audit {
            common,
            doc,
            device,
            limit,
            json,
        } => {
            let rows = common.store()?.audit(doc, device.as_deref(), limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            for r in rows {
                println!(
                    "{:>8}  {}  {}  {:<20} doc {}  change {}  scope {}",
                    r.seq,
                    format_millis(r.at),
                    r.device_id,
                    r.device_name.as_deref().unwrap_or("?"),
                    r.doc_id,
                    r.hash.as_deref().map_or("?", |h| &h[..h.len().min(12)]),
                    r.scope.as_deref().unwrap_or("?"),
                );
            }
            Ok(())
        }
    }
}

/// Backup and restore work on the embedded SQLite store; PostgreSQL has its own tools.
fn embedded_only(cfg: &RelayConfig, what: &str) -> anyhow::Result<()> {
    if cfg.database.is_some() {
        anyhow::bail!(
            "this relay uses PostgreSQL; {what} its database with PostgreSQL's tools (pg_dump / pg_restore), see the README"
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // the flags of `device enroll`
fn enroll(
    common: &Common,
    cert: Option<&Path>,
    name: &str,
    role: Role,
    scopes: &[String],
    relay_addr: Option<String>,
    device_id: Option<Uuid>,
    valid_days: u64,
) -> anyhow::Result<()> {
    let cfg = common.load()?;
    let addr = relay_addr.or_else(|| cfg.token_addr()).ok_or_else(|| {
        anyhow::anyhow!(
            "the token needs the address devices use to reach the relay: pass --relay-addr \
             HOST:PORT or set public_addr in the config"
        )
    })?;
    if valid_days == 0 || valid_days > 365 {
        anyhow::bail!("--valid-days must be 1..=365");
    }
    let (pin, store) = if cfg.database.is_some() {
        // Nodes sharing the database: their certificate, never a new one.
        let store = RelayStore::open(&cfg)?;
        (shared_pin(common, &cfg, cert, &store)?, store)
    } else {
        fieldsync_relay::config::create_data_dir(&cfg.data_dir)
            .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
        // The certificate the relay serves (generated now if the relay never started here).
        let pin = match cert {
            Some(c) => fieldsync_relay::tls::certificate_fingerprint(c)?,
            None => fieldsync_relay::tls::load_or_create(
                &cfg.data_dir,
                cfg.cert.as_deref(),
                cfg.key.as_deref(),
            )?
            .fingerprint(),
        };
        // Creates the database if the relay never started here; a running relay shares it
        // (WAL).
        (pin, RelayStore::open(&cfg)?)
    };
    let secret = store.create_enrolment(
        name,
        role,
        scopes,
        device_id,
        std::time::Duration::from_secs(valid_days * 86_400),
    )?;
    let token = EnrolToken::new(&addr, &pin, &secret)?;
    println!("name: {name}");
    println!("role: {role}");
    println!("scopes: {}", scopes.join(","));
    println!("relay: {addr}");
    println!("fingerprint: {pin}");
    println!("valid for: {valid_days} days, one device, once");
    println!("on the device: fieldsync init --token <the token below>");
    println!("{token}");
    Ok(())
}

/// The pin for tokens of relay nodes sharing a PostgreSQL database: the certificate they
/// recorded in it when they started, checked against a node's certificate when one is given
/// (`--cert`, `cert` in the config, or `cert.der` of `--data` or the config's data directory).
/// Never generates a certificate: one no node serves would fail every device's pin.
fn shared_pin(
    common: &Common,
    cfg: &RelayConfig,
    cert: Option<&Path>,
    store: &RelayStore,
) -> anyhow::Result<String> {
    let in_data_dir = cfg.data_dir.join(fieldsync_relay::tls::CERT_FILE);
    let given = match cert.or(cfg.cert.as_deref()) {
        Some(c) => Some(c.to_path_buf()),
        None if common.data.is_some() && !in_data_dir.exists() => anyhow::bail!(
            "{} holds no relay certificate ({}): give the data directory of a relay node, or \
             its certificate with --cert",
            cfg.data_dir.display(),
            fieldsync_relay::tls::CERT_FILE
        ),
        None if (common.data.is_some() || common.config.is_some()) && in_data_dir.exists() => {
            Some(in_data_dir)
        }
        None => None,
    };
    let given = match given {
        Some(path) => Some((fieldsync_relay::tls::certificate_fingerprint(&path)?, path)),
        None => None,
    };
    match (store.node_fingerprint()?, given) {
        (Some(recorded), Some((fp, path))) if recorded != fp => anyhow::bail!(
            "the certificate {} (fingerprint {fp}) is not the one the relay nodes on this \
             database serve ({recorded}); a token with it would fail on every node",
            path.display()
        ),
        (Some(recorded), _) => Ok(recorded),
        (None, Some((fp, _))) => Ok(fp),
        (None, None) => anyhow::bail!(
            "no relay node has started on this database yet, so the certificate pin for the \
             token is unknown: start a relay node first, or pass --cert/--data of a node"
        ),
    }
}

fn list(common: &Common, json: bool) -> anyhow::Result<()> {
    let store = common.store()?;
    let devices = store.devices()?;
    let now = fieldsync_core::ids::now_millis();
    let pending: Vec<_> = store
        .enrolments()?
        .into_iter()
        .filter(|e| e.is_pending(now))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "devices": devices,
                "enrolments": pending,
            }))?
        );
        return Ok(());
    }
    println!(
        "{:<36}  {:<20} {:<8} {:<24} {:<20} {:<18} status",
        "device id", "name", "role", "scopes", "last sync", "today (docs/bytes)"
    );
    for d in devices {
        let status = match (d.revoked_at, d.enrolled) {
            (Some(t), _) => format!("revoked {}", format_millis(t)),
            (None, true) => "enrolled".to_string(),
            (None, false) => "open enrolment".to_string(),
        };
        println!(
            "{:<36}  {:<20} {:<8} {:<24} {:<20} {:<18} {status}",
            d.device_id,
            d.name,
            d.role.as_str(),
            d.scopes.join(","),
            d.last_seen.map_or("never".to_string(), format_millis),
            format!("{}/{}", d.today.new_documents, format_bytes(d.today.bytes)),
        );
    }
    for e in pending {
        println!(
            "{:<36}  {:<20} {:<8} {:<24} {:<20} {:<18} token not used yet (expires {})",
            e.device_id.map_or("-".to_string(), |d| d.to_string()),
            e.name,
            e.role.as_str(),
            e.scopes.join(","),
            "never",
            "-",
            format_millis(e.expires_at)
        );
    }
    Ok(())
}

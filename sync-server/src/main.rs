//! `fieldsync-relay`: the relay binary. All logic lives in the library; this only parses flags.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use fieldsync_core::Role;
use fieldsync_relay::{RelayConfig, RelayStoreOptions, SqliteRelayStore};
use uuid::Uuid;

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
        Ok(cfg)
    }

    fn store(&self) -> anyhow::Result<SqliteRelayStore> {
        let cfg = self.load()?;
        let db = cfg.db_path();
        if !db.exists() {
            anyhow::bail!("no relay database at {}", db.display());
        }
        Ok(SqliteRelayStore::open(&db, RelayStoreOptions::default())?)
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
        /// Refuse devices that are not enrolled (sets open_enrollment = false).
        #[arg(long)]
        closed: bool,
    },
    /// Print the relay's epoch, log position, counts and certificate fingerprint.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Enrol, revoke and list devices.
    #[command(subcommand)]
    Device(DeviceCmd),
}

#[derive(Subcommand, Debug)]
enum DeviceCmd {
    /// Enrol a device; prints its id and secret (shown only once) and the relay fingerprint.
    Enroll {
        #[command(flatten)]
        common: Common,
        /// A name for people (e.g. the rep's name and laptop).
        #[arg(long)]
        name: String,
        /// rep, manager, director or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A scope the device may see (repeat for several; `*` = all).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Use this device id (the replica's) instead of a new one.
        #[arg(long)]
        device_id: Option<Uuid>,
    },
    /// Revoke a device: it is refused from its next connection or upload on.
    Revoke {
        #[command(flatten)]
        common: Common,
        /// The device id.
        device_id: Uuid,
    },
    /// List devices.
    List {
        #[command(flatten)]
        common: Common,
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
        } => {
            let mut cfg = common.load()?;
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
            cfg.validate()?;
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(fieldsync_relay::serve(cfg))
        }
        Cmd::Status { common } => {
            print!("{}", fieldsync_relay::status_report(&common.load()?)?);
            Ok(())
        }
        Cmd::Device(DeviceCmd::Enroll {
            common,
            name,
            role,
            scopes,
            device_id,
        }) => {
            let cfg = common.load()?;
            let e = common
                .store()?
                .enroll_device(device_id, &name, role, &scopes)?;
            println!("device_id: {}", e.device_id);
            println!("secret: {}", e.secret);
            if let Some(fp) =
                fieldsync_relay::tls::existing_fingerprint(&cfg.data_dir, cfg.cert.as_deref())
            {
                println!("fingerprint: {fp}");
            }
            Ok(())
        }
        Cmd::Device(DeviceCmd::Revoke { common, device_id }) => {
            if common.store()?.revoke_device(device_id)? {
                println!("revoked {device_id}");
                Ok(())
            } else {
                anyhow::bail!("no active device {device_id}")
            }
        }
        Cmd::Device(DeviceCmd::List { common }) => {
            for d in common.store()?.devices()? {
                println!(
                    "{}  {:<8} {:<20} scopes={} {} last_seen={} {}",
                    d.device_id,
                    d.role.as_str(),
                    d.name,
                    d.scopes.join(","),
                    if d.enrolled { "enrolled" } else { "open" },
                    d.last_seen.map_or("never".to_string(), |t| t.to_string()),
                    if d.revoked_at.is_some() {
                        "REVOKED"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
    }
}

//! `fieldsync`: the command-line client of the offline-first CRM replica.
//!
//! Every command works on the replica in the data directory (`--data`, `$FIELDSYNC_DATA`, or
//! the platform data directory): `DIR/replica.db`, plus `DIR/config.toml` with the relay
//! settings written by `fieldsync init`, and `DIR/replica.db.credential` (mode 0600) with the
//! device credential stored by `fieldsync init --token`. The directory fieldsync creates is
//! readable by its owner only (0700), and so are the replica and SQLite's files beside it
//! (0600). Edits work offline; `fieldsync sync` exchanges them with the relay. `--json`
//! prints one JSON value on stdout; errors go to stderr with a non-zero exit status.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fieldsync_client::sync::{
    self, Fingerprint, SyncConfig, SyncEvent, SyncHandle, SyncProgress, SyncReport,
};
use fieldsync_client::{
    Client, CustomerEdit, CustomerField, CustomerFilter, DocId, Identity, LineInput, NewCustomer,
    NewQuote, NewVisit, Role, VisitFilter, VisitStatus,
};
use fieldsync_core::fsmode;
use serde::{Deserialize, Serialize};

/// The replica file inside the data directory.
const REPLICA_FILE: &str = "replica.db";
/// The relay settings inside the data directory.
const CONFIG_FILE: &str = "config.toml";

#[derive(Parser, Debug)]
#[command(
    name = "fieldsync",
    version,
    about = "Offline-first CRM replica: customers, visits and quotes, synced with a relay"
)]
struct Cli {
    /// Data directory holding replica.db and config.toml [default: the platform data dir]
    #[arg(long, global = true, env = "FIELDSYNC_DATA", value_name = "DIR")]
    data: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the replica (if needed) and save the relay settings
    Init(InitArgs),
    /// Customers: add, edit, show, list, archive
    #[command(subcommand)]
    Customer(CustomerCmd),
    /// Visits: log, list
    #[command(subcommand)]
    Visit(VisitCmd),
    /// Quotes: new, add-line, submit, approve, reject, show
    #[command(subcommand)]
    Quote(QuoteCmd),
    /// Exchange changes with the relay (once, or continuously with --watch)
    Sync(SyncArgs),
    /// Show the outbox, the quarantine, the last sync and whether the relay is reachable
    Status(JsonFlag),
    /// List local changes the relay refused (kept here, not sent again), with the reasons;
    /// --retry sends them again at the next sync
    Quarantine(QuarantineArgs),
    /// List fields that hold concurrent values
    Conflicts(JsonFlag),
}

#[derive(Args, Debug, Clone, Copy)]
struct QuarantineArgs {
    /// Put the refused changes back into their documents and the outbox, to be sent again at
    /// the next sync (after IT fixed what the relay refused them for: a scope, a role)
    #[arg(long)]
    retry: bool,
    /// With --retry: only this document's changes
    #[arg(long, value_name = "ID", requires = "retry")]
    doc: Option<DocId>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone, Copy)]
struct JsonFlag {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct InitArgs {
    /// The one-time enrolment token printed by `fieldsync-relay device enroll` (carries the
    /// relay address, its certificate pin and a secret). Enrols this replica with the relay:
    /// needs the relay reachable; the role comes from the relay.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "FIELDSYNC_TOKEN",
        hide_env_values = true,
        conflicts_with_all = ["relay", "pin", "credential"],
        required_unless_present_all = ["relay", "pin"]
    )]
    token: Option<String>,
    /// The relay's address (without a token)
    #[arg(long, value_name = "HOST:PORT", requires = "pin")]
    relay: Option<String>,
    /// SHA-256 fingerprint of the relay's certificate (64 hex digits, as printed by the relay)
    #[arg(long, value_name = "FINGERPRINT", requires = "relay")]
    pin: Option<String>,
    /// Your name, recorded as the author of your edits [default: the device id]
    #[arg(long)]
    name: Option<String>,
    /// Your role [default: the role enrolled on the relay with --token, else rep]
    #[arg(long, value_enum)]
    role: Option<RoleArg>,
    /// Your organisation (given to new customers)
    #[arg(long, default_value = "default")]
    org: String,
    /// Device credential issued at enrolment without a token (`enroll_device` API), if the
    /// relay requires one
    #[arg(long, env = "FIELDSYNC_CREDENTIAL", hide_env_values = true)]
    credential: Option<String>,
    /// Seconds to wait for the relay when enrolling with --token
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    connect_timeout: u64,
    /// TLS server name to send [default: the relay's host]
    #[arg(long)]
    server_name: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum RoleArg {
    Rep,
    Manager,
    Director,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Rep => Self::Rep,
            RoleArg::Manager => Self::Manager,
            RoleArg::Director => Self::Director,
            RoleArg::Admin => Self::Admin,
        }
    }
}

#[derive(Subcommand, Debug)]
enum CustomerCmd {
    /// Add a customer
    Add {
        /// Name
        #[arg(long)]
        name: String,
        /// Territory
        #[arg(long)]
        scope: String,
        /// Phone number
        #[arg(long)]
        phone: Option<String>,
        /// Industry
        #[arg(long)]
        industry: Option<String>,
        /// Lifecycle stage [default: potential]
        #[arg(long)]
        stage: Option<String>,
        /// Print the customer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Change a customer's fields (all in one change)
    Edit {
        /// Customer id
        id: DocId,
        /// New name
        #[arg(long)]
        name: Option<String>,
        /// Add a phone number
        #[arg(long)]
        phone: Option<String>,
        /// New industry
        #[arg(long)]
        industry: Option<String>,
        /// New lifecycle stage
        #[arg(long)]
        stage: Option<String>,
        /// New e-mail address
        #[arg(long)]
        email: Option<String>,
        /// Print the customer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Show a customer
    Show {
        /// Customer id
        id: DocId,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// List customers (archived ones left out)
    List {
        /// Only this territory
        #[arg(long)]
        scope: Option<String>,
        /// Only names containing this text
        #[arg(long)]
        search: Option<String>,
        /// Include archived customers
        #[arg(long)]
        all: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Archive a customer (hidden from listings, never deleted)
    Archive {
        /// Customer id
        id: DocId,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum VisitStatusArg {
    Planned,
    Cancelled,
    Done,
}

impl From<VisitStatusArg> for VisitStatus {
    fn from(s: VisitStatusArg) -> Self {
        match s {
            VisitStatusArg::Planned => Self::Planned,
            VisitStatusArg::Cancelled => Self::Cancelled,
            VisitStatusArg::Done => Self::Done,
        }
    }
}

#[derive(Subcommand, Debug)]
enum VisitCmd {
    /// Log a visit at a customer
    Log {
        /// Customer id
        #[arg(long)]
        customer: DocId,
        /// Minutes and notes
        #[arg(long)]
        notes: String,
        /// Status
        #[arg(long, value_enum, default_value_t = VisitStatusArg::Done)]
        status: VisitStatusArg,
        /// Kind (sales_call, return_visit, service_repair, …) [default: sales_call]
        #[arg(long)]
        kind: Option<String>,
        /// Where it took place
        #[arg(long)]
        location: Option<String>,
        /// Print the visit as JSON
        #[arg(long)]
        json: bool,
    },
    /// List visits, newest first
    List {
        /// Only visits to this customer
        #[arg(long)]
        customer: Option<DocId>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum QuoteCmd {
    /// Start a draft quote for a customer
    New {
        /// Customer id
        #[arg(long)]
        customer: DocId,
        /// ISO 4217 currency of all prices
        #[arg(long)]
        currency: String,
        /// Quote number
        #[arg(long)]
        number: Option<String>,
        /// Print the quote as JSON
        #[arg(long)]
        json: bool,
    },
    /// Add a line to a draft quote
    AddLine {
        /// Quote id
        id: DocId,
        /// Product SKU
        #[arg(long)]
        sku: String,
        /// Quantity (whole units)
        #[arg(long)]
        qty: i64,
        /// Unit price in the quote currency, e.g. 1250.50 (two decimals at most)
        #[arg(long)]
        price: String,
        /// Description
        #[arg(long)]
        description: Option<String>,
        /// Discount in percent, e.g. 5 or 2.5 (two decimals at most)
        #[arg(long)]
        discount: Option<String>,
        /// Print the quote as JSON
        #[arg(long)]
        json: bool,
    },
    /// Submit a draft for approval
    Submit(QuoteIdArgs),
    /// Approve a submitted quote (manager and above)
    Approve(QuoteDecisionArgs),
    /// Reject a submitted quote (manager and above)
    Reject(QuoteDecisionArgs),
    /// Show a quote
    Show(QuoteIdArgs),
}

#[derive(Args, Debug)]
struct QuoteIdArgs {
    /// Quote id
    id: DocId,
    /// Print the quote as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct QuoteDecisionArgs {
    /// Quote id
    id: DocId,
    /// Why
    #[arg(long)]
    reason: Option<String>,
    /// Print the quote as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct SyncArgs {
    /// Stay connected: push edits as they happen, receive others' at once (Ctrl-C stops)
    #[arg(long)]
    watch: bool,
    /// Print JSON (the report; with --watch one event per line)
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the relay to answer a connection attempt
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    connect_timeout: u64,
}

/// `config.toml`: how to reach the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileConfig {
    /// `host:port`.
    relay: String,
    /// Hex SHA-256 of the relay certificate's DER.
    pin: String,
    /// TLS server name, when not the relay's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_name: Option<String>,
    /// Device credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credential: Option<String>,
}

impl FileConfig {
    fn sync_config(&self) -> SyncConfig {
        let mut cfg = SyncConfig::new(self.relay.clone(), self.pin.clone());
        cfg.server_name = self.server_name.clone().unwrap_or_default();
        cfg.credential = self.credential.clone();
        cfg
    }
}

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

fn data_dir(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = flag.filter(|d| !d.as_os_str().is_empty()) {
        return Ok(d);
    }
    directories::ProjectDirs::from("", "", "fieldsync")
        .map(|p| p.data_dir().to_path_buf())
        .ok_or_else(|| anyhow!("no home directory to put the data in; pass --data DIR"))
}

fn open(dir: &Path) -> Result<Client> {
    fsmode::create_private_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    protect_data_dir(dir);
    let path = dir.join(REPLICA_FILE);
    Client::open(&path).with_context(|| format!("cannot open the replica {}", path.display()))
}

/// Makes the data directory readable by its owner only, with a warning, when it is fieldsync's
/// own: it holds nothing but fieldsync's files (as one `open` created does). A directory given
/// with `--data` that holds anything else (a home directory, `/tmp`) is the user's, left as
/// it is; the files fieldsync keeps there are private anyway.
fn protect_data_dir(dir: &Path) {
    if fsmode::is_sticky_dir(dir) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let tmp_config = format!(".{CONFIG_FILE}.tmp");
    let ours = entries.into_iter().all(|e| {
        e.ok().is_some_and(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(REPLICA_FILE) || n == CONFIG_FILE || n == tmp_config)
        })
    });
    if ours && let Err(e) = fsmode::tighten(dir, fsmode::PRIVATE_DIR) {
        tracing::warn!(path = %dir.display(), error = %e, "cannot make the data directory private to its owner");
    }
}

fn load_config(dir: &Path) -> Result<FileConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no relay configured in {}: run `fieldsync init --relay HOST:PORT --pin FINGERPRINT` first",
            dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    toml::from_str(&text).with_context(|| format!("{} is not a valid config", path.display()))
}

/// The sync settings: `config.toml`, plus the device credential stored next to the replica
/// by `fieldsync init --token` (a `credential` in `config.toml` takes precedence).
fn sync_settings(dir: &Path, client: &Client) -> Result<SyncConfig> {
    let mut cfg = load_config(dir)?.sync_config();
    if cfg.credential.is_none() {
        cfg.credential = sync::load_credential(client)?;
    }
    Ok(cfg)
}

/// Writes the config readable by the owner only (it may hold the credential), atomically.
fn save_config(dir: &Path, cfg: &FileConfig) -> Result<()> {
    let text = toml::to_string(cfg).context("cannot serialise the config")?;
    let path = dir.join(CONFIG_FILE);
    let tmp = dir.join(format!(".{CONFIG_FILE}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print_json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// init

fn init(dir: &Path, args: InitArgs) -> Result<()> {
    if let Some(token) = &args.token {
        return init_with_token(dir, token, &args);
    }
    let (Some(relay), Some(pin)) = (&args.relay, &args.pin) else {
        bail!("give --token TOKEN, or --relay HOST:PORT and --pin FINGERPRINT");
    };
    let pin: Fingerprint = pin.parse()?;
    let cfg = FileConfig {
        relay: relay.trim().to_string(),
        pin: pin.to_string(),
        server_name: args.server_name.clone().filter(|s| !s.trim().is_empty()),
        credential: args.credential.clone().filter(|s| !s.is_empty()),
    };
    // Refuse an address the sync could never use, before writing anything.
    let (host, port) = cfg
        .relay
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--relay must be HOST:PORT, got {:?}", cfg.relay))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        bail!("--relay must be HOST:PORT, got {:?}", cfg.relay);
    }
    let client = open(dir)?;
    let identity = save_identity(&client, &args, args.role.map_or(Role::Rep, Role::from))?;
    save_config(dir, &cfg)?;
    let device_id = client.device_id();
    if args.json {
        print_json(&serde_json::json!({
            "device_id": device_id,
            "data_dir": dir,
            "replica": client.path(),
            "relay": cfg.relay,
            "pin": cfg.pin,
            "name": identity.author,
            "role": identity.role,
            "org": identity.org,
        }))?;
    } else {
        println!("Replica:   {}", client.path().display());
        println!("Device id: {device_id}  (enrol this id on the relay)");
        println!(
            "Identity:  {} ({}, org {})",
            identity.author, identity.role, identity.org
        );
        println!("Relay:     {} (pin {})", cfg.relay, cfg.pin);
    }
    Ok(())
}

/// Updates the replica's identity (author name, role, organisation) from the flags.
fn save_identity(client: &Client, args: &InitArgs, role: Role) -> Result<Identity> {
    let mut identity = client.identity()?;
    if let Some(name) = args.name.as_ref().filter(|n| !n.trim().is_empty()) {
        identity.author = name.trim().to_string();
    }
    identity.role = role;
    identity.org = args.org.clone();
    client.set_identity(identity.clone())?;
    Ok(identity)
}

/// `init --token`: redeems the enrolment token for this replica's device id, stores the
/// device credential next to the replica (0600) and the relay settings from the token.
fn init_with_token(dir: &Path, token: &str, args: &InitArgs) -> Result<()> {
    let token: sync::EnrolToken = token.parse()?;
    let client = open(dir)?;
    let enrolled = runtime()?
        .block_on(sync::enrol_replica(
            &client,
            &token,
            Duration::from_secs(args.connect_timeout.max(1)),
        ))
        .with_context(|| format!("enrolment with the relay at {} failed", token.relay))?;
    // Local role checks follow the role the relay enforces, unless asked otherwise.
    let role = args.role.map_or(enrolled.role, Role::from);
    let identity = save_identity(&client, args, role)?;
    let cfg = FileConfig {
        relay: enrolled.relay.clone(),
        pin: enrolled.pin.clone(),
        server_name: args.server_name.clone().filter(|s| !s.trim().is_empty()),
        credential: None,
    };
    save_config(dir, &cfg)?;
    if args.json {
        print_json(&serde_json::json!({
            "device_id": enrolled.device_id,
            "data_dir": dir,
            "replica": client.path(),
            "relay": cfg.relay,
            "pin": cfg.pin,
            "scopes": enrolled.scopes,
            "enrolled_role": enrolled.role,
            "credential_file": enrolled.credential_file,
            "name": identity.author,
            "role": identity.role,
            "org": identity.org,
        }))?;
    } else {
        println!("Replica:    {}", client.path().display());
        println!("Device id:  {}  (enrolled)", enrolled.device_id);
        println!(
            "Granted:    {} in {}",
            enrolled.role,
            enrolled.scopes.join(", ")
        );
        println!(
            "Identity:   {} ({}, org {})",
            identity.author, identity.role, identity.org
        );
        println!("Relay:      {} (pin {})", cfg.relay, cfg.pin);
        println!("Credential: {}", enrolled.credential_file.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// customers, visits, quotes

fn customer(client: &Client, cmd: CustomerCmd) -> Result<()> {
    let customers = client.customers();
    match cmd {
        CustomerCmd::Add {
            name,
            scope,
            phone,
            industry,
            stage,
            json,
        } => {
            let id = customers.create(NewCustomer {
                org: String::new(),
                scope,
                name,
                phone,
                industry,
                stage,
                source: None,
                ..Default::default()
            })?;
            if json {
                print_json(&customers.get(id)?)?;
            } else {
                println!("{id}");
            }
        }
        CustomerCmd::Edit {
            id,
            name,
            phone,
            industry,
            stage,
            email,
            json,
        } => {
            let mut edits = Vec::new();
            for (field, value) in [
                (CustomerField::Name, name),
                (CustomerField::Industry, industry),
                (CustomerField::Stage, stage),
                (CustomerField::Email, email),
            ] {
                if let Some(v) = value {
                    edits.push(CustomerEdit::Set(field, v));
                }
            }
            if let Some(p) = phone {
                edits.push(CustomerEdit::AddPhone(p));
            }
            if edits.is_empty() {
                bail!("nothing to change: pass --name, --phone, --industry, --stage or --email");
            }
            customers.edit_all(id, &edits)?;
            if json {
                print_json(&customers.get(id)?)?;
            }
        }
        CustomerCmd::Show { id, json } => {
            let c = customers.get(id)?;
            if json {
                print_json(&c)?;
            } else {
                println!("{}  {}", c.header.id, c.name);
                println!("  scope:     {}", c.header.scope);
                println!("  stage:     {}", c.stage);
                if let Some(i) = &c.industry {
                    println!("  industry:  {i}");
                }
                if let Some(e) = &c.email {
                    println!("  email:     {e}");
                }
                for p in &c.phones {
                    println!("  phone:     {}", p.raw);
                }
                for ct in &c.contacts {
                    println!("  contact:   {}", ct.name);
                }
                if c.header.archived {
                    println!("  (archived)");
                }
                println!(
                    "  created:   {} by {}",
                    fmt_millis(c.header.created_at),
                    c.header.created_by
                );
            }
        }
        CustomerCmd::List {
            scope,
            search,
            all,
            json,
        } => {
            let mut filter = CustomerFilter::new();
            filter.scope = scope;
            filter.search = search;
            filter.include_archived = all;
            let rows = customers.list(&filter)?;
            if json {
                print_json(&rows)?;
            } else {
                for r in &rows {
                    println!(
                        "{}  {:<30}  {:<12}  {}{}",
                        r.id,
                        r.name,
                        r.scope,
                        r.stage,
                        if r.archived { "  (archived)" } else { "" }
                    );
                }
            }
        }
        CustomerCmd::Archive { id } => customers.archive(id)?,
    }
    Ok(())
}

fn visit(client: &Client, cmd: VisitCmd) -> Result<()> {
    let visits = client.visits();
    match cmd {
        VisitCmd::Log {
            customer,
            notes,
            status,
            kind,
            location,
            json,
        } => {
            let status: VisitStatus = status.into();
            let id = visits.create(NewVisit {
                customer_id: customer,
                kind,
                notes: Some(notes),
                status,
                at: Some(fieldsync_core::ids::now_millis()),
                location,
            })?;
            if json {
                print_json(&visits.get(id)?)?;
            } else {
                println!("{id}");
            }
        }
        VisitCmd::List { customer, json } => {
            let mut filter = VisitFilter::new();
            filter.customer = customer;
            let rows = visits.list(&filter)?;
            if json {
                print_json(&rows)?;
            } else {
                for r in &rows {
                    println!(
                        "{}  {}  {:<9}  {}  {}",
                        r.id,
                        r.at.map_or_else(|| "-".to_string(), fmt_millis),
                        r.status.as_str(),
                        r.customer_name.as_deref().unwrap_or("?"),
                        first_line(&r.notes)
                    );
                }
            }
        }
    }
    Ok(())
}

fn quote(client: &Client, cmd: QuoteCmd) -> Result<()> {
    let quotes = client.quotes();
    let (id, json) = match cmd {
        QuoteCmd::New {
            customer,
            currency,
            number,
            json,
        } => {
            let currency = currency.trim().to_ascii_uppercase();
            if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_alphabetic()) {
                bail!("--currency must be an ISO 4217 code such as CNY, got {currency:?}");
            }
            let id = quotes.create(NewQuote {
                customer_id: customer,
                currency,
                quote_no: number,
                valid_until: None,
            })?;
            if !json {
                println!("{id}");
                return Ok(());
            }
            (id, json)
        }
        QuoteCmd::AddLine {
            id,
            sku,
            qty,
            price,
            description,
            discount,
            json,
        } => {
            if qty <= 0 {
                bail!("--qty must be a positive whole number");
            }
            let unit_price_minor = parse_minor_units(&price).context("--price")?;
            let discount_bp = discount
                .map(|d| parse_minor_units(&d).context("--discount"))
                .transpose()?;
            if discount_bp.is_some_and(|d| d > 10_000) {
                bail!("--discount must be at most 100 percent");
            }
            let line = quotes.add_line(
                id,
                LineInput {
                    sku: Some(sku),
                    description,
                    qty: Some(qty),
                    unit_price_minor: Some(unit_price_minor),
                    discount_bp,
                    sort_key: None,
                },
            )?;
            if !json {
                println!("{line}");
                return Ok(());
            }
            (id, json)
        }
        QuoteCmd::Submit(a) => {
            quotes.submit(a.id)?;
            (a.id, a.json)
        }
        QuoteCmd::Approve(a) => {
            quotes.approve(a.id, a.reason.as_deref())?;
            (a.id, a.json)
        }
        QuoteCmd::Reject(a) => {
            quotes.reject(a.id, a.reason.as_deref())?;
            (a.id, a.json)
        }
        QuoteCmd::Show(a) => {
            if !a.json {
                let q = quotes.get(a.id)?;
                println!(
                    "{}  {}  {} (revision {})  total {} {}",
                    q.header.id,
                    q.quote_no.as_deref().unwrap_or("-"),
                    q.status.as_str(),
                    q.revision,
                    fmt_minor_units(q.total.amount_minor),
                    q.total.currency
                );
                for l in q.lines.iter().filter(|l| !l.archived) {
                    println!(
                        "  {:<16} {:>6} × {:>12}{}  = {}",
                        l.sku,
                        l.qty,
                        fmt_minor_units(l.unit_price_minor),
                        if l.discount_bp > 0 {
                            format!("  −{}%", fmt_minor_units(l.discount_bp))
                        } else {
                            String::new()
                        },
                        fmt_minor_units(l.total_minor())
                    );
                }
                for a in &q.approvals {
                    println!(
                        "  {} by {} ({}) at {}{}{}",
                        a.decision,
                        a.approver,
                        a.role,
                        fmt_millis(a.at),
                        a.reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default(),
                        a.void
                            .as_deref()
                            .map(|v| format!("  [VOID: the quote changed since — {v}]"))
                            .unwrap_or_default()
                    );
                }
                return Ok(());
            }
            (a.id, a.json)
        }
    };
    if json {
        print_json(&quotes.get(id)?)?;
    }
    Ok(())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Parses a non-negative decimal with at most two decimals into hundredths, exactly (no
/// floating point): `1250.50` → 125050, `3` → 300, `0.5` → 50.
fn parse_minor_units(s: &str) -> Result<i64> {
    let t = s.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |x: &str| x.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() && frac.is_empty() {
        bail!("{s:?} is not an amount");
    }
    if !digits(whole) || !digits(frac) || (t.contains('.') && frac.is_empty()) {
        bail!("{s:?} is not an amount like 1250.50");
    }
    if frac.len() > 2 {
        bail!("{s:?} has more than two decimals");
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| anyhow!("{s:?} is too large"))?
    };
    let frac: i64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>()? * 10,
        _ => frac.parse()?,
    };
    whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(|| anyhow!("{s:?} is too large"))
}

/// Formats hundredths as a decimal: 125050 → `1250.50`.
fn fmt_minor_units(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

/// Formats ms since the Unix epoch as an ISO 8601 UTC timestamp.
fn fmt_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

// ---------------------------------------------------------------------------------------------
// sync, status, conflicts

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn sync_cmd(dir: &Path, args: SyncArgs) -> Result<()> {
    let client = open(dir)?;
    let mut cfg = sync_settings(dir, &client)?;
    cfg.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    let rt = runtime()?;
    if args.watch {
        return rt.block_on(watch(client, cfg, args.json));
    }
    let show_bar = std::io::stdout().is_terminal() && !args.json;
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::hidden());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
        bar.set_style(style);
    }
    let started = Instant::now();
    let bar2 = bar.clone();
    let progress = move |p: &SyncProgress| {
        if show_bar && bar2.is_hidden() && started.elapsed() > Duration::from_millis(300) {
            bar2.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar2.enable_steady_tick(Duration::from_millis(120));
        }
        let up = if p.outbox_at_start > 0 {
            format!(
                "↑ {} ({}/{} changes acknowledged)",
                fmt_bytes(p.bytes_sent),
                p.changes_acked.min(p.outbox_at_start),
                p.outbox_at_start
            )
        } else {
            format!("↑ {}", fmt_bytes(p.bytes_sent))
        };
        bar2.set_message(format!(
            "{up}  ↓ {} ({} items)",
            fmt_bytes(p.bytes_received),
            p.items_received
        ));
    };
    let result = rt.block_on(sync::sync_now_with_progress(&client, &cfg, progress));
    bar.finish_and_clear();
    let report = result.with_context(|| format!("sync with {} failed", cfg.relay))?;
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &SyncReport) {
    println!("Synced with {} in {}", r.relay, fmt_duration(r.duration));
    println!(
        "  sent      {} changes ({} acknowledged, {} refused)",
        r.changes_sent, r.changes_acked, r.changes_rejected
    );
    println!(
        "  received  {} items ({} new changes, {} snapshots{})",
        r.items_received,
        r.changes_received,
        r.snapshots_received,
        if r.items_failed > 0 {
            format!(", {} unreadable and skipped", r.items_failed)
        } else {
            String::new()
        }
    );
    if r.replaced > 0 {
        println!(
            "  replaced  {} documents trimmed by IT (unsent edits carried over)",
            r.replaced
        );
    }
    println!(
        "  wire      {} up, {} down",
        fmt_bytes(r.bytes_sent),
        fmt_bytes(r.bytes_received)
    );
    if r.outbox_remaining > 0 {
        println!(
            "  outbox    {} changes still waiting (refused for now; retried next sync)",
            r.outbox_remaining
        );
    }
}

async fn watch(client: Client, cfg: SyncConfig, json: bool) -> Result<()> {
    let handle = SyncHandle::start(client, cfg);
    let mut events = handle.subscribe();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            r = &mut ctrl_c => {
                r.context("cannot listen for Ctrl-C")?;
                handle.stop().await;
                return Ok(());
            }
            e = events.recv() => match e {
                Ok(event) => {
                    print_event(&event, &handle, json)?;
                    if event == SyncEvent::Stopped {
                        let st = handle.status();
                        handle.stop().await;
                        if st.fatal {
                            bail!(st.last_error.unwrap_or_else(|| "sync stopped".into()));
                        }
                        return Ok(());
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event output fell behind");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

fn print_event(e: &SyncEvent, handle: &SyncHandle, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let mut v = serde_json::to_value(e)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("at".into(), fmt_millis(now()).into());
        }
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
        return Ok(out.flush()?);
    }
    let ts = fmt_millis(now());
    let line = match e {
        SyncEvent::Connecting => format!("connecting to {}", handle.status().relay),
        SyncEvent::Connected { scopes, role } => {
            format!("connected as {role}, scopes {}", scopes.join(", "))
        }
        SyncEvent::Uploaded { n } => format!("relay acknowledged {}", plural(*n, "local change")),
        SyncEvent::Received { items } => format!("received {}", plural(*items, "item")),
        SyncEvent::CaughtUp => "up to date".to_string(),
        SyncEvent::Disconnected { error } => match handle.status().retry_in_ms {
            Some(ms) => format!(
                "disconnected: {error} (retrying in {:.1} s)",
                ms as f64 / 1000.0
            ),
            None => format!("disconnected: {error}"),
        },
        SyncEvent::Rejected { hash, reason } => {
            format!(
                "relay refused change {}: {reason} (quarantined; see `fieldsync quarantine`)",
                &hash[..hash.len().min(12)]
            )
        }
        SyncEvent::Stopped => "stopped".to_string(),
    };
    writeln!(out, "{ts}  {line}")?;
    Ok(out.flush()?)
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn now() -> i64 {
    fieldsync_core::ids::now_millis()
}

#[derive(Serialize)]
struct StatusOut {
    device_id: uuid::Uuid,
    data_dir: PathBuf,
    identity: Option<Identity>,
    /// Local changes waiting for the relay.
    outbox: u64,
    /// Changes the relay refused for good.
    quarantined: usize,
    /// The most recent of those (up to 5), newest first.
    recent_rejections: Vec<QuarantineOut>,
    conflicts: usize,
    /// Downloaded documents that could not be loaded (kept out; see `Skipped` below).
    skipped: Vec<fieldsync_core::store::Skipped>,
    relay: Option<String>,
    last_sync_finished_at: Option<String>,
    last_sync_finished_at_ms: Option<i64>,
    last_error: Option<String>,
    relay_reachable: bool,
    relay_rtt_ms: Option<u64>,
    relay_error: Option<String>,
}

fn status(dir: &Path, json: bool) -> Result<()> {
    let client = open(dir)?;
    let cfg = match load_config(dir) {
        Ok(c) => Some(c),
        Err(e) if dir.join(CONFIG_FILE).exists() => return Err(e),
        Err(_) => None,
    };
    let persisted = sync::load_status(&client)?.unwrap_or_default();
    let quarantine = quarantine_list(&client)?;
    let (reachable, rtt, relay_error) = match &cfg {
        None => (
            false,
            None,
            Some("no relay configured (run `fieldsync init`)".to_string()),
        ),
        Some(c) => {
            let mut sc = c.sync_config();
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
    let out = StatusOut {
        device_id: client.device_id(),
        data_dir: dir.to_path_buf(),
        identity: client.identity().ok(),
        outbox: client.outbox_len()?,
        quarantined: quarantine.len(),
        recent_rejections: quarantine.into_iter().take(5).collect(),
        conflicts: client.conflicts()?.len(),
        skipped: client.skipped()?,
        relay: cfg.as_ref().map(|c| c.relay.clone()),
        last_sync_finished_at: persisted.last_sync_finished_at.map(fmt_millis),
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
    println!("Outbox:     {} changes waiting", out.outbox);
    if out.quarantined > 0 {
        println!(
            "Quarantine: {} changes refused by the relay (see `fieldsync quarantine`)",
            out.quarantined
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
            "Conflicts:  {} fields (see `fieldsync conflicts`)",
            out.conflicts
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
                fmt_millis(s.at),
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
        println!("Last error: {e}");
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
struct QuarantineOut {
    doc_id: DocId,
    /// The document's kind, if it is still in the replica.
    kind: Option<String>,
    hash: String,
    reason: String,
    at: String,
    at_ms: i64,
}

fn quarantine_list(client: &Client) -> Result<Vec<QuarantineOut>> {
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
            at: fmt_millis(q.at),
            at_ms: q.at,
        });
    }
    Ok(out)
}

fn quarantine(client: &Client, json: bool) -> Result<()> {
    let list = quarantine_list(client)?;
    if json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("No refused changes.");
        return Ok(());
    }
    println!(
        "{} local change(s) refused by the relay (kept here, not sent again):",
        list.len()
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

fn retry_quarantined(client: &Client, doc: Option<DocId>, json: bool) -> Result<()> {
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

#[derive(Serialize)]
struct ConflictOut {
    id: DocId,
    kind: fieldsync_client::DocKind,
    path: String,
    values: Vec<serde_json::Value>,
}

fn conflicts(client: &Client, json: bool) -> Result<()> {
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
    }
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
            "{} {} {}: {}  (shown: {})",
            c.kind,
            c.id,
            c.path,
            values.join(" | "),
            values.first().map_or("-", String::as_str)
        );
    }
    Ok(())
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
        assert_eq!(fmt_millis(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_millis(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(fmt_millis(1_795_000_000_123), "2026-11-18T11:06:40Z");
        assert_eq!(fmt_millis(-1_000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn cli_shape_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

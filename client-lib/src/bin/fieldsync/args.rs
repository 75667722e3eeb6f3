//! The command line: every command, argument and flag (clap).

use super::*;

mod customer;
mod quote;
mod visit;

pub(super) use customer::*;
pub(super) use quote::*;
pub(super) use visit::*;

/// Naming records and the exit statuses, under `fieldsync --help` and in the man page.
const AFTER_HELP: &str = "\
Naming records:
  A customer: its id, the first 4 or more characters of its id, its name (any case), or a
  part of its name that only it has. A visit or quote: its id or the first 4 or more
  characters of it. A contact, address, unit of equipment, task or quote line: its id or
  id prefix as `show` lists it, or its name (label, serial or model, title, SKU). Several
  matches are listed, nothing is changed.

Dates:
  2026-12-08 or 2026-12-08T09:30 (seconds and a trailing Z are accepted too), read as UTC:
  the laptop's time zone is not applied. Times are printed in UTC.

Exit status:
  0  done (sync: synced)
  1  error: bad input, a refused edit, a failed command
  2  the command line is wrong (unknown command or flag)
  3  sync: synced, but the relay refused some local changes (see `fieldsync quarantine`)
  4  sync: the relay could not be reached or stopped answering; local edits are safe and go
     at the next sync
  5  sync: this laptop is not enrolled with the relay, or IT revoked its access
  6  sync: IT ordered this laptop wiped; its replica is destroyed";

#[derive(Parser, Debug)]
#[command(
    name = "fieldsync",
    version,
    about = "Offline-first CRM replica: customers, visits and quotes, synced with a relay",
    after_help = AFTER_HELP
)]
pub(super) struct Cli {
    /// Data directory holding replica.db and config.toml [default: the platform data dir]
    #[arg(long, global = true, env = "FIELDSYNC_DATA", value_name = "DIR")]
    pub(super) data: Option<PathBuf>,

    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
    /// Create the replica (if needed) and save the relay settings
    Init(InitArgs),
    /// Customers: add, edit, show, list, find by phone, timeline; contacts, addresses,
    /// equipment, notes; credit limit, owner, scope, grade; archive
    #[command(subcommand)]
    Customer(CustomerCmd),
    /// Visits: log, edit, show, list, status, satisfaction; needs, tasks, comments; archive
    #[command(subcommand)]
    Visit(VisitCmd),
    /// Quotes: new, lines, terms, submit, approve, reject, send, win, lose; history, price
    /// history, follow-ups due; archive
    #[command(subcommand)]
    Quote(QuoteCmd),
    /// Write one record (customer, visit or quote) to a file, with its whole history, for
    /// `fieldsync import` on another laptop
    Export(ExportArgs),
    /// Merge a record written by `fieldsync export` into this replica
    Import(ImportArgs),
    /// Attachments: list, get, open, remove; what waits to move; retry refused transfers
    #[command(subcommand)]
    Attachment(AttachmentCmd),
    /// Exchange changes with the relay (once, or continuously with --watch)
    Sync(SyncArgs),
    /// What is due today: planned visits, follow-ups due, your open tasks, greetings,
    /// customers not visited lately
    Today(TodayArgs),
    /// Serve the rep's app on 127.0.0.1 (Today, customers, visits, quotes, sync centre),
    /// syncing in the background; prints the address to open
    App(AppArgs),
    /// Encrypt the replica in place (its attachments and credential too), under a passphrase
    /// and the OS keyring
    Encrypt(KeyArgs),
    /// Ask the passphrase once and keep the replica unlocked in this login session for a while
    Unlock(UnlockArgs),
    /// Forget the key kept by `fieldsync unlock`
    Lock,
    /// Move the replica to a new data key under a new passphrase (--keep-key: only a new
    /// passphrase)
    Rekey(RekeyArgs),
    /// Show the outbox, the quarantine, the last sync and whether the relay is reachable
    Status(JsonFlag),
    /// List local changes the relay refused (kept here, not sent again), with the reasons;
    /// --retry sends them again at the next sync
    Quarantine(QuarantineArgs),
    /// List fields that hold concurrent values
    Conflicts(JsonFlag),
    /// Keep one value of a field in conflict (listed by `fieldsync conflicts`)
    Resolve(ResolveArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish)
    Completions(CompletionsArgs),
    /// Write man pages (fieldsync.1 and one per command) into a directory
    Man(ManArgs),
}

#[derive(Args, Debug)]
pub(super) struct ExportArgs {
    /// The record: id or id prefix (a customer also by name)
    #[arg(value_name = "ID")]
    pub(super) id: String,
    /// The file to write (its Automerge bytes; readable by you only)
    #[arg(long, value_name = "FILE")]
    pub(super) out: PathBuf,
    /// Print {id, kind} as JSON
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub(super) struct ImportArgs {
    /// A file written by `fieldsync export`
    #[arg(value_name = "FILE")]
    pub(super) file: PathBuf,
    /// Print {id, kind} as JSON
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub(super) struct TodayArgs {
    /// A customer with no visit done in this many days counts as not visited lately
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    pub(super) idle_days: u32,
    /// Print JSON
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub(super) struct AppArgs {
    /// Port on 127.0.0.1 (0: any free port)
    #[arg(long, default_value_t = 0)]
    pub(super) port: u16,
    /// Open the app in the default browser
    #[arg(long)]
    pub(super) open: bool,
    /// The app's language instead of the browser's: en or zh-CN
    #[arg(long, value_parser = ["en", "zh-CN"])]
    pub(super) lang: Option<String>,
    /// Print the address as JSON ({"url", "port"})
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub(super) struct ResolveArgs {
    /// The document: an id or id prefix, or a customer's name
    pub(super) id: String,
    /// The field, as `fieldsync conflicts` shows it (e.g. `industry`, `contacts/<id>/phone`)
    pub(super) field: String,
    /// The value to keep (text; a number, true, false or null for fields that hold one)
    pub(super) value: String,
}

#[derive(Args, Debug)]
pub(super) struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub(super) shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub(super) struct ManArgs {
    /// Directory to write the pages into (created if missing)
    #[arg(long, value_name = "DIR")]
    pub(super) out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub(super) struct QuarantineArgs {
    /// Put the refused changes back into their documents and the outbox, to be sent again at
    /// the next sync (after IT fixed what the relay refused them for: a scope, a role)
    #[arg(long)]
    pub(super) retry: bool,
    /// With --retry: only this document's changes (its id or id prefix)
    #[arg(long, value_name = "ID", requires = "retry")]
    pub(super) doc: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug, Clone, Copy)]
pub(super) struct JsonFlag {
    /// Print JSON
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub(super) struct InitArgs {
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
    pub(super) token: Option<String>,
    /// The relay's address (without a token)
    #[arg(long, value_name = "HOST:PORT", requires = "pin")]
    pub(super) relay: Option<String>,
    /// SHA-256 fingerprint of the relay's certificate (64 hex digits, as printed by the relay)
    #[arg(long, value_name = "FINGERPRINT", requires = "relay")]
    pub(super) pin: Option<String>,
    /// Your name, recorded as the author of your edits [default: the device id]
    #[arg(long)]
    pub(super) name: Option<String>,
    /// Your role [default: the role enrolled on the relay with --token, else rep]
    #[arg(long, value_enum)]
    pub(super) role: Option<RoleArg>,
    /// Your organisation (given to new customers)
    #[arg(long, default_value = "default")]
    pub(super) org: String,
    /// Device credential issued at enrolment without a token (`enrol_device` API), if the
    /// relay requires one
    #[arg(long, env = "FIELDSYNC_CREDENTIAL", hide_env_values = true)]
    pub(super) credential: Option<String>,
    /// Encrypt the replica at rest (a new one, or the existing one in place): the passphrase
    /// from --passphrase-file, $FIELDSYNC_PASSPHRASE or the terminal, plus the OS keyring
    #[arg(long)]
    pub(super) encrypt: bool,
    #[command(flatten)]
    pub(super) keys: KeyArgs,
    /// Seconds to wait for the relay when enrolling with --token
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub(super) connect_timeout: u64,
    /// TLS server name to send [default: the relay's host]
    #[arg(long)]
    pub(super) server_name: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RoleArg {
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

#[derive(Args, Debug)]
pub(super) struct SyncArgs {
    /// Stay connected: push edits as they happen, receive others' at once (Ctrl-C stops)
    #[arg(long)]
    pub(super) watch: bool,
    /// Print JSON (the report; with --watch one event per line)
    #[arg(long)]
    pub(super) json: bool,
    /// Seconds to wait for the relay to answer a connection attempt
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub(super) connect_timeout: u64,
    /// Metered link: move at most this much (both ways; e.g. 2MB, 500KB, 1.5MiB), your own
    /// changes first, then stop cleanly; the next sync goes on from there. Overrides `budget`
    /// in config.toml; 0 lifts it
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(super) budget: Option<u64>,
}

/// A byte size for people: `2000000`, `2MB`, `500 KB`, `1.5MiB`.
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size like 2MB, 500KB or 1.5MiB ({e})"))
}

#[derive(Args, Debug)]
pub(super) struct AttachArgs {
    /// The document: id or id prefix (a customer also by name)
    #[arg(value_name = "DOC")]
    pub(super) doc: String,
    /// The file to attach
    #[arg(value_name = "FILE")]
    pub(super) file: PathBuf,
    /// A caption
    #[arg(long, default_value = "")]
    pub(super) caption: String,
    /// Print the attachment as JSON
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub(super) struct AttachmentRef {
    /// The document it belongs to: id or id prefix (a customer also by name)
    #[arg(value_name = "DOC")]
    pub(super) doc: String,
    /// The attachment: its id or content hash, or a prefix of either
    #[arg(value_name = "ATTACHMENT")]
    pub(super) attachment: String,
}

#[derive(Subcommand, Debug)]
pub(super) enum AttachmentCmd {
    /// List a document's attachments, or (without DOC) every attachment on this laptop with
    /// what waits to move
    List {
        /// The document: id or id prefix (a customer also by name)
        #[arg(value_name = "DOC")]
        doc: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Save an attachment to a file, downloading it first if it is not on this laptop
    Get {
        #[command(flatten)]
        which: AttachmentRef,
        /// Where to write it [default: its file name, in the current directory]
        #[arg(long, short, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Only queue the download for the next sync; do not connect now
        #[arg(long)]
        queue: bool,
    },
    /// Open an attachment with the desktop's viewer, downloading it first if need be
    Open {
        #[command(flatten)]
        which: AttachmentRef,
    },
    /// Remove an attachment from its document (its bytes leave this laptop at `gc`)
    Remove {
        #[command(flatten)]
        which: AttachmentRef,
    },
    /// Which scopes' attachments download in the background as their documents arrive
    /// (default: none, only on demand). Without arguments: show the setting
    Prefetch {
        /// Scopes (territories) to download in the background
        #[arg(value_name = "SCOPE", conflicts_with_all = ["all", "off"])]
        scopes: Vec<String>,
        /// Every scope this laptop sees
        #[arg(long)]
        all: bool,
        /// None: download only on demand
        #[arg(long, conflicts_with = "all")]
        off: bool,
    },
    /// Try again the transfers the relay refused for good (after IT raised a limit)
    Retry,
    /// Remove from this laptop the bytes no document here keeps (documents that left your
    /// scopes, removed attachments); what still waits to upload is kept
    Gc,
}

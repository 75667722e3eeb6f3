//! `device …`: enrolment tokens, revocation and remote wipes, grants, offline leases and the
//! device list.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use fieldsync_core::Role;
use fieldsync_core::display::{format_bytes, format_millis};
use fieldsync_core::protocol::{EnrolToken, WipeOrder};
use fieldsync_relay::presence::{DeviceLive, devices_online, is_caught_up, node_statuses};
use fieldsync_relay::{DeviceOutbox, DeviceRecord, EnrolmentRecord, RelayConfig, RelayStore};
use uuid::Uuid;

use crate::common::{Common, parse_role};

#[derive(Subcommand, Debug)]
pub(crate) enum DeviceCmd {
    /// Enrol a device: prints a one-time enrolment token on the last line of stdout, carrying
    /// the relay address, the certificate pin and a secret. On the laptop:
    /// `fieldsync init --token TOKEN`. Works while the relay runs (same --data). On PostgreSQL
    /// the pin is the certificate the relay nodes recorded in the database when they started
    /// (checked against --cert or --data when given); start a node first. Refuses a name that
    /// an active device or an open token already has, unless --again. Also `enrol`.
    #[command(alias = "enrol")]
    Enroll(Box<EnrollArgs>),
    /// Revoke a device (by name or id; a name revokes every active device and unused token
    /// with it): its next connection is refused and an open one is closed at once. With
    /// --wipe or --wipe-after-upload, also order the laptop to destroy its replica.
    Revoke {
        #[command(flatten)]
        common: Common,
        /// The device's name or id.
        device: String,
        /// Also order a remote wipe: at its next connection the laptop destroys its replica
        /// and credential (unsent changes are lost) and reports it (`audit --devices`).
        /// Revokes at once, and may be given for a device already revoked.
        #[arg(long, conflicts_with = "wipe_after_upload")]
        wipe: bool,
        /// Order a remote wipe after upload: at its next connection the laptop uploads every
        /// change and attachment still waiting, then destroys its replica. The device stays
        /// active (its uploads are accepted) until it reports the wipe, then is revoked.
        #[arg(long)]
        wipe_after_upload: bool,
    },
    /// Set the offline lease of a device (by name or id; a name sets every active device
    /// with it): the days its replica may go without reaching the relay before it refuses to
    /// open. The laptop gets it at its next connection.
    Lease {
        #[command(flatten)]
        common: Common,
        /// The device's name or id.
        device: String,
        #[command(flatten)]
        lease: LeaseArgs,
    },
    /// Change a device's role or scopes (by name or id), keeping its credential: its open
    /// connection reconnects with the new grant at once. Prints the grant before and after.
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
    /// List devices with their role, scopes and last sync, and open enrolment tokens.
    List {
        #[command(flatten)]
        common: Common,
        /// One JSON object with `devices` and `enrolments`.
        #[arg(long)]
        json: bool,
    },
    /// List or cancel enrolment tokens.
    #[command(subcommand)]
    Token(TokenCmd),
}

/// `device lease`'s choice: one of its flags.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct LeaseArgs {
    /// Days of the device's own lease (1 .. 3650).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(fieldsync_relay::store::MAX_LEASE_DAYS)))]
    days: Option<u32>,
    /// No lease for this device, whatever its role's default.
    #[arg(long)]
    off: bool,
    /// Back to its role's default from the configuration (`offline_lease_days_by_role`,
    /// else `offline_lease_days`).
    #[arg(long)]
    default: bool,
}

/// `device enroll`'s flags.
#[derive(clap::Args, Debug)]
pub(crate) struct EnrollArgs {
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
    /// Enrol although an active device or an open token already has this name (a second
    /// laptop of the same person, say).
    #[arg(long)]
    again: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum TokenCmd {
    /// List enrolment tokens with their id and state (open ones only, unless --all).
    List {
        #[command(flatten)]
        common: Common,
        /// Also used, cancelled and expired tokens.
        #[arg(long)]
        all: bool,
        /// A JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Cancel an unused enrolment token by its id (or a unique prefix of at least 4 digits)
    /// so that it can no longer be redeemed; devices already enrolled are not affected.
    Cancel {
        #[command(flatten)]
        common: Common,
        /// The token's id, from `device token list` or `device enroll`.
        id: String,
    },
}

/// Runs a `device` command.
pub(crate) fn run(cmd: DeviceCmd) -> anyhow::Result<()> {
    match cmd {
        DeviceCmd::Enroll(a) => enroll(*a),
        DeviceCmd::Revoke {
            common,
            device,
            wipe,
            wipe_after_upload,
        } => {
            let order = match (wipe, wipe_after_upload) {
                (true, _) => Some(WipeOrder::Now),
                (false, true) => Some(WipeOrder::AfterUpload),
                (false, false) => None,
            };
            revoke(&common, &device, order)
        }
        DeviceCmd::Lease {
            common,
            device,
            lease,
        } => set_lease(&common, &device, &lease),
        DeviceCmd::Grant {
            common,
            device,
            role,
            scopes,
        } => grant(&common, &device, role, scopes),
        DeviceCmd::List { common, json } => list(&common, json),
        DeviceCmd::Token(TokenCmd::List { common, all, json }) => tokens(&common, all, json),
        DeviceCmd::Token(TokenCmd::Cancel { common, id }) => {
            let t = common.store()?.cancel_enrolment(&id)?;
            println!(
                "cancelled enrolment token {} for {} ({}, {}): it can no longer be redeemed",
                t.id,
                t.name,
                t.role,
                t.scopes.join(",")
            );
            Ok(())
        }
    }
}

fn enroll(a: EnrollArgs) -> anyhow::Result<()> {
    let cfg = a.common.load()?;
    if a.name.trim() == fieldsync_relay::import::IMPORT_DEVICE {
        anyhow::bail!(
            "{:?} is the name of the device `fieldsync-relay import` writes as; choose another",
            a.name.trim()
        );
    }
    let addr = a.relay_addr.or_else(|| cfg.token_addr()).ok_or_else(|| {
        anyhow::anyhow!(
            "the token needs the address devices use to reach the relay: pass --relay-addr \
             HOST:PORT or set public_addr in the config"
        )
    })?;
    if a.valid_days == 0 || a.valid_days > 365 {
        anyhow::bail!("--valid-days must be 1..=365");
    }
    let (pin, store) = if cfg.database.is_some() {
        // Nodes sharing the database: their certificate, never a new one.
        let store = RelayStore::open(&cfg)?;
        (
            shared_pin(&a.common, &cfg, a.cert.as_deref(), &store)?,
            store,
        )
    } else {
        fieldsync_relay::config::create_data_dir(&cfg.data_dir)
            .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
        // The certificate the relay serves (generated now if the relay never started here).
        let pin = match &a.cert {
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
    let name = a.name.trim();
    if !a.again {
        name_is_free(&store, name, a.device_id)?;
    }
    let secret = store.create_enrolment(
        name,
        a.role,
        &a.scopes,
        a.device_id,
        std::time::Duration::from_secs(a.valid_days * 86_400),
    )?;
    let token = EnrolToken::new(&addr, &pin, &secret)?;
    println!("token id: {}", fieldsync_relay::store::token_id_of(&secret));
    println!("name: {name}");
    println!("role: {}", a.role);
    println!("scopes: {}", a.scopes.join(","));
    println!("relay: {addr}");
    println!("fingerprint: {pin}");
    println!("valid for: {} days, one device, once", a.valid_days);
    println!("on the device: fieldsync init --token <the token below>");
    println!("{token}");
    Ok(())
}

/// Refuses a name that an active device (other than the one being enrolled again) or an
/// open token already has: a second token for the same person is more often a mistake than
/// a second laptop, and it would stay redeemable unnoticed.
fn name_is_free(store: &RelayStore, name: &str, device_id: Option<Uuid>) -> anyhow::Result<()> {
    let now = fieldsync_core::ids::now_millis();
    let mut taken: Vec<String> = store
        .devices()?
        .into_iter()
        .filter(|d| d.name == name && d.revoked_at.is_none() && Some(d.device_id) != device_id)
        .map(|d| {
            format!(
                "device {} (last sync {})",
                d.device_id,
                d.last_seen.map_or("never".to_string(), format_millis)
            )
        })
        .collect();
    taken.extend(
        store
            .enrolments()?
            .into_iter()
            .filter(|e| e.name == name && e.is_pending(now))
            .map(|e| {
                format!(
                    "open token {} (expires {})",
                    e.id,
                    format_millis(e.expires_at)
                )
            }),
    );
    if taken.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{name:?} already has {}. Pass --again to enrol another device with this name, or \
         first `device revoke` the device or `device token cancel` the token",
        taken.join(" and ")
    )
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

fn revoke(common: &Common, who: &str, order: Option<WipeOrder>) -> anyhow::Result<()> {
    let store = common.store()?;
    let r = match order {
        None => store.revoke(who)?,
        Some(order) => store.order_wipe(who, order)?,
    };
    let devices = store.devices()?;
    for id in &r.devices {
        let name = devices
            .iter()
            .find(|d| d.device_id == *id)
            .map_or("?", |d| d.name.as_str());
        match order {
            None => println!(
                "revoked device {name} ({id}): its connection is closed and refused from now on"
            ),
            Some(WipeOrder::Now) => println!(
                "revoked device {name} ({id}) and ordered it wiped: at its next connection the \
                 laptop destroys its replica (unsent changes are lost) and reports it; nothing \
                 else is accepted from it"
            ),
            Some(WipeOrder::AfterUpload) => println!(
                "ordered device {name} ({id}) wiped after upload: at its next connection the \
                 laptop uploads what it holds unsent, then destroys its replica and reports it; \
                 it stays active until then"
            ),
        }
    }
    if r.tokens > 0 {
        println!("cancelled {} unused enrolment token(s)", r.tokens);
    }
    if order.is_some() {
        println!(
            "a laptop of a version before protocol 7 cannot carry out the order and is refused; \
             `audit --devices` shows when the wipe is carried out"
        );
    }
    Ok(())
}

fn set_lease(common: &Common, who: &str, lease: &LeaseArgs) -> anyhow::Result<()> {
    let store = common.store()?;
    let days = match (lease.days, lease.off) {
        (Some(n), _) => Some(n),
        (None, true) => Some(0),
        (None, false) => None,
    };
    let changed = store.set_lease(who, days)?;
    let devices = store.devices()?;
    for id in changed {
        let Some(d) = devices.iter().find(|d| d.device_id == id) else {
            println!("set the offline lease of device {id}");
            continue;
        };
        println!(
            "offline lease of {} ({id}): {}; the laptop gets it at its next connection",
            d.name,
            lease_text(d)
        );
    }
    Ok(())
}

/// A device's effective offline lease for people, and where it comes from.
fn lease_text(d: &DeviceRecord) -> String {
    let days = d
        .effective_lease_days
        .map_or("none".to_string(), |n| format!("{n} d"));
    if d.lease_days.is_some() {
        format!("{days} (own)")
    } else {
        days
    }
}

/// A device's wipe order for people.
fn wipe_text(d: &DeviceRecord) -> String {
    match (d.wipe.as_deref(), d.wiped_at) {
        (_, Some(t)) => format!("wiped {}", format_millis(t)),
        (Some("now"), None) => "ordered now".to_string(),
        (Some(_), None) => "ordered after upload".to_string(),
        (None, None) => "-".to_string(),
    }
}

fn grant(
    common: &Common,
    who: &str,
    role: Option<Role>,
    scopes: Vec<String>,
) -> anyhow::Result<()> {
    let store = common.store()?;
    let before = store.devices()?;
    let scopes = (!scopes.is_empty()).then_some(scopes);
    let changed = store.grant(who, role, scopes.as_deref())?;
    let after = store.devices()?;
    let find = |list: &[DeviceRecord], id: Uuid| list.iter().find(|d| d.device_id == id).cloned();
    for id in changed {
        let (Some(old), Some(new)) = (find(&before, id), find(&after, id)) else {
            println!("changed the grant of device {id}");
            continue;
        };
        let arrow = |a: String, b: String| {
            if a == b {
                format!("{a} (unchanged)")
            } else {
                format!("{a} → {b}")
            }
        };
        println!(
            "changed the grant of {} ({id}): role {}; scopes {}",
            new.name,
            arrow(old.role.to_string(), new.role.to_string()),
            arrow(old.scopes.join(","), new.scopes.join(","))
        );
    }
    Ok(())
}

/// A device as `device list --json` shows it: its record, and while it is online at a
/// serving node, its live state.
#[derive(serde::Serialize)]
struct Listed {
    #[serde(flatten)]
    record: DeviceRecord,
    /// Whether a serving node has a connection of it now.
    connected: bool,
    /// Its live state at the serving nodes (connections, what its download still has
    /// waiting, when it last caught up).
    #[serde(skip_serializing_if = "Option::is_none")]
    live: Option<DeviceLive>,
    /// The nodes it is connected to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<String>,
    /// What it last said it holds unsent (laptops of protocol 5 on), and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    outbox: Option<DeviceOutbox>,
}

fn list(common: &Common, json: bool) -> anyhow::Result<()> {
    let store = common.store()?;
    let now = fieldsync_core::ids::now_millis();
    let mut online = devices_online(&node_statuses(&store, now)?);
    let mut outboxes = store.outboxes()?;
    let devices: Vec<Listed> = store
        .devices()?
        .into_iter()
        .map(|record| {
            let live = online.remove(&record.device_id);
            Listed {
                outbox: outboxes.remove(&record.device_id),
                connected: live.is_some(),
                nodes: live.as_ref().map(|(_, n)| n.clone()).unwrap_or_default(),
                live: live.map(|(d, _)| d),
                record,
            }
        })
        .collect();
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
        "{:<36}  {:<20} {:<8} {:<20} {:<20} {:<24} {:<22} {:<14} {:<12} {:<26} status",
        "device id",
        "name",
        "role",
        "scopes",
        "last sync",
        "online",
        "unsent",
        "today",
        "lease",
        "wipe"
    );
    for Listed {
        record: d,
        live,
        outbox,
        ..
    } in devices
    {
        let status = match (d.revoked_at, d.enrolled) {
            (Some(t), _) => format!("revoked {}", format_millis(t)),
            (None, true) => "enrolled".to_string(),
            (None, false) => "open enrolment".to_string(),
        };
        let online = match &live {
            None => "no".to_string(),
            Some(l) if is_caught_up(l) => "yes, up to date".to_string(),
            Some(l) if l.waiting_bytes > 0 || l.waiting_documents > 0 => format!(
                "yes, {} docs/{} to go",
                l.waiting_documents,
                format_bytes(l.waiting_bytes)
            ),
            Some(_) => "yes, downloading".to_string(),
        };
        let unsent = match outbox {
            None => "?".to_string(),
            Some(o) if o.changes == 0 && o.quarantined == 0 => "none".to_string(),
            Some(o) if o.quarantined == 0 => format!("{} changes", o.changes),
            Some(o) => format!("{} changes, {} refused", o.changes, o.quarantined),
        };
        println!(
            "{:<36}  {:<20} {:<8} {:<20} {:<20} {:<24} {:<22} {:<14} {:<12} {:<26} {status}",
            d.device_id,
            d.name,
            d.role.as_str(),
            d.scopes.join(","),
            d.last_seen.map_or("never".to_string(), format_millis),
            online,
            unsent,
            format!(
                "{} new/{}",
                d.today.new_documents,
                format_bytes(d.today.bytes)
            ),
            lease_text(&d),
            wipe_text(&d),
        );
    }
    for e in pending {
        println!(
            "{:<36}  {:<20} {:<8} {:<20} {:<20} {:<24} {:<22} {:<14} {:<12} {:<26} token {} not used yet (expires {})",
            e.device_id.map_or("-".to_string(), |d| d.to_string()),
            e.name,
            e.role.as_str(),
            e.scopes.join(","),
            "never",
            "-",
            "-",
            "-",
            "-",
            "-",
            e.id,
            format_millis(e.expires_at)
        );
    }
    Ok(())
}

/// A token's state for people.
fn token_state(e: &EnrolmentRecord, now: i64) -> String {
    match (e.used_at, e.revoked_at) {
        (Some(t), _) => format!(
            "used {} by {}",
            format_millis(t),
            e.device_id.map_or("?".to_string(), |d| d.to_string())
        ),
        (None, Some(t)) => format!("cancelled {}", format_millis(t)),
        (None, None) if e.expires_at <= now => format!("expired {}", format_millis(e.expires_at)),
        (None, None) => format!("open until {}", format_millis(e.expires_at)),
    }
}

fn tokens(common: &Common, all: bool, json: bool) -> anyhow::Result<()> {
    let now = fieldsync_core::ids::now_millis();
    let tokens: Vec<EnrolmentRecord> = common
        .store()?
        .enrolments()?
        .into_iter()
        .filter(|e| all || e.is_pending(now))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&tokens)?);
        return Ok(());
    }
    if tokens.is_empty() {
        println!("no {}enrolment tokens", if all { "" } else { "open " });
        return Ok(());
    }
    println!(
        "{:<12}  {:<20} {:<8} {:<24} {:<20} state",
        "token id", "name", "role", "scopes", "created"
    );
    for e in tokens {
        println!(
            "{:<12}  {:<20} {:<8} {:<24} {:<20} {}",
            e.id,
            e.name,
            e.role.as_str(),
            e.scopes.join(","),
            format_millis(e.created_at),
            token_state(&e, now)
        );
    }
    Ok(())
}

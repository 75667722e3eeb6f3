//! The data directory: where it is, its relay settings (`config.toml`), the replica in it, and
//! `fieldsync init` (with or without an enrolment token).

use super::*;
use fieldsync_client::fieldsync_core::congestion::Congestion;

/// `config.toml`: how to reach the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct FileConfig {
    /// `host:port`.
    pub(super) relay: String,
    /// Hex SHA-256 of the relay certificate's DER.
    pub(super) pin: String,
    /// TLS server name, when not the relay's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) server_name: Option<String>,
    /// Device credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) credential: Option<String>,
    /// QUIC congestion controller for what the laptop sends (`field`, `bbr`, `cubic`,
    /// `newreno`); the default suits lossy radio and satellite links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) congestion: Option<Congestion>,
    /// Metered link: what one `fieldsync sync` may move (`"2MB"`; see `sync --budget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) budget: Option<String>,
}

impl FileConfig {
    pub(super) fn sync_config(&self) -> Result<SyncConfig> {
        let mut cfg = SyncConfig::new(self.relay.clone(), self.pin.clone());
        if let Some(b) = &self.budget {
            cfg.budget =
                Some(parse_size(b).map_err(|e| anyhow::anyhow!("config.toml: budget: {e}"))?)
                    .filter(|b| *b > 0);
        }
        cfg.server_name = self.server_name.clone().unwrap_or_default();
        cfg.credential = self.credential.clone();
        if let Some(c) = self.congestion {
            cfg.congestion = c;
        }
        Ok(cfg)
    }
}

pub(super) fn data_dir(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = flag.filter(|d| !d.as_os_str().is_empty()) {
        return Ok(d);
    }
    directories::ProjectDirs::from("", "", "fieldsync")
        .map(|p| p.data_dir().to_path_buf())
        .ok_or_else(|| anyhow!("no home directory to put the data in; pass --data DIR"))
}

pub(super) fn open(dir: &Path) -> Result<Client> {
    fsmode::create_private_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    protect_data_dir(dir);
    let path = dir.join(REPLICA_FILE);
    open_replica(&path).with_context(|| format!("cannot open the replica {}", path.display()))
}

/// Opens the replica for `sync`, `status` and `init` (enrolling again): also past its offline
/// lease, since a sync is what renews it.
pub(super) fn open_for_sync(dir: &Path) -> Result<Client> {
    fsmode::create_private_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    protect_data_dir(dir);
    let path = dir.join(REPLICA_FILE);
    open_replica_with(&path, true)
        .with_context(|| format!("cannot open the replica {}", path.display()))
}

/// Makes the data directory readable by its owner only, with a warning, when it is fieldsync's
/// own: it holds nothing but fieldsync's files (as one `open` created does). A directory given
/// with `--data` that holds anything else (a home directory, `/tmp`) is the user's, left as
/// it is; the files fieldsync keeps there are private anyway.
pub(super) fn protect_data_dir(dir: &Path) {
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

pub(super) fn load_config(dir: &Path) -> Result<FileConfig> {
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
pub(super) fn sync_settings(dir: &Path, client: &Client) -> Result<SyncConfig> {
    let mut cfg = load_config(dir)?.sync_config()?;
    if cfg.credential.is_none() {
        cfg.credential = sync::load_credential(client)?;
    }
    Ok(cfg)
}

/// Writes the config readable by the owner only (it may hold the credential), atomically.
pub(super) fn save_config(dir: &Path, cfg: &FileConfig) -> Result<()> {
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

pub(super) fn init(dir: &Path, args: InitArgs) -> Result<()> {
    if args.encrypt {
        fsmode::create_private_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let path = dir.join(REPLICA_FILE);
        if !fieldsync_client::vault::is_encrypted(&path) {
            encrypt_replica(&path, &args.keys, args.json)?;
        }
    }
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
        congestion: None,
        budget: None,
    };
    // Refuse an address the sync could never use, before writing anything.
    let (host, port) = cfg
        .relay
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--relay must be HOST:PORT, got {:?}", cfg.relay))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        bail!("--relay must be HOST:PORT, got {:?}", cfg.relay);
    }
    let client = open_for_sync(dir)?;
    let identity = save_identity(&client, &args, args.role.map_or(Role::Rep, Role::from))?;
    let mut cfg = cfg;
    // An encrypted replica keeps its credential sealed beside it, not in the plain config.
    if client.is_encrypted()
        && let Some(secret) = cfg.credential.take()
    {
        sync::save_credential(&client, &secret, Some(&cfg.relay))?;
    }
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
pub(super) fn save_identity(client: &Client, args: &InitArgs, role: Role) -> Result<Identity> {
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
pub(super) fn init_with_token(dir: &Path, token: &str, args: &InitArgs) -> Result<()> {
    let token: sync::EnrolToken = token.parse()?;
    let client = open_for_sync(dir)?;
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
        congestion: None,
        budget: None,
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

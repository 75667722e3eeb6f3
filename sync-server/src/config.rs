//! The relay's configuration: a TOML file (`--config relay.toml`) whose every key has a
//! documented default; command-line flags override the file. See `relay.example.toml`.

use fieldsync_core::attachment::entry::MAX_ATTACHMENT_BYTES;
use fieldsync_core::attachment::relay::BlobLimits;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fieldsync_core::Role;
use fieldsync_core::congestion::Congestion;
use fieldsync_core::protocol::RelayLimits;
use serde::{Deserialize, Serialize};

/// Errors from reading or checking a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("invalid config{}: {message}", in_file(.path))]
    Parse {
        /// The file, if read from one.
        path: Option<PathBuf>,
        /// What the TOML parser said (names the key and position).
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid config value `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn in_file(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

/// Smallest accepted `max_batch_bytes` (the session never builds batches below 16 KiB).
pub const MIN_BATCH_BYTES: usize = 16 << 10;
/// Largest accepted `max_batch_bytes`: a batch must fit one frame (32 MiB) with room to spare.
pub const MAX_BATCH_BYTES: usize = 16 << 20;

/// The relay's configuration. Every field has a default (see [`RelayConfig::default`]); unknown
/// keys are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Directory holding `relay.db` and the generated certificate (`cert.der`, `key.der`).
    /// Created if missing, readable by its owner only. Relative paths are relative to the
    /// working directory.
    /// Default: `relay-data`.
    pub data_dir: PathBuf,
    /// The relay's database: a PostgreSQL URL (`postgres://user@host:5432/fieldsync`),
    /// which several relay nodes may share, or unset for the embedded SQLite file
    /// `relay.db` in `data_dir`. Default: unset.
    pub database: Option<String>,
    /// PEM file with the certificate(s) of the authority that signed the PostgreSQL server's
    /// certificate. When set, the relay talks to `database` over TLS only and verifies the
    /// server's certificate and host name against it; when unset, without TLS (a URL asking
    /// for `sslmode=require` is then refused). Default: unset.
    pub database_ca: Option<PathBuf>,
    /// With a PostgreSQL `database`: the most connections this relay node opens to it (the
    /// writer, the `LISTEN` connection and the read pool, of which a quarter is kept for
    /// authentication). A request that finds none free for 5 s is refused as busy and the
    /// client retries. At least 4. Default: 16.
    pub database_max_connections: usize,
    /// UDP address to listen on. Default: `0.0.0.0:4433`.
    pub listen: SocketAddr,
    /// The address devices use to reach the relay (`host:port`, e.g. behind NAT or a DNS
    /// name), written into the enrolment tokens of `device enroll` (its `--relay-addr`
    /// overrides it). Default: none (then `listen`, unless it is a wildcard address).
    pub public_addr: Option<String>,
    /// TCP address for the HTTP endpoint with Prometheus metrics (`/metrics`) and the health
    /// check (`/healthz`), e.g. `127.0.0.1:9464`. Default: none (no HTTP endpoint).
    pub metrics_listen: Option<SocketAddr>,
    /// A secret the scraper must send as `Authorization: Bearer <token>` to read `/metrics`
    /// (Prometheus: `authorization: { credentials: … }`); `/healthz` stays open for load
    /// balancers. At least 16 characters. Default: none (metrics open to whoever reaches
    /// `metrics_listen`).
    pub metrics_token: Option<String>,
    /// Certificate chain (PEM or DER) supplied by IT instead of the generated self-signed one.
    /// Must be given together with `key`. Default: none.
    pub cert: Option<PathBuf>,
    /// Private key (PEM or DER: PKCS#8, PKCS#1 or SEC1) for `cert`. Default: none.
    pub key: Option<PathBuf>,
    /// Most simultaneous client connections; further ones are refused. Default: 1024.
    pub max_connections: usize,
    /// Most connections that have not authenticated yet; one more closes the oldest of them
    /// (and new peers must prove their address first while half are in use). Default: 256,
    /// for a fleet reconnecting at once after a relay restart: about the laptops that come
    /// back per second times the seconds their slowest links take to say `Hello`.
    pub max_unauthenticated: usize,
    /// Most authenticated connections of one device; a new login closes its oldest.
    /// Default: 4.
    pub max_connections_per_device: usize,
    /// Largest download batch the relay builds, in bytes before compression. Default: 2 MiB
    /// (range 16 KiB – 16 MiB).
    pub max_batch_bytes: usize,
    /// Most changes accepted in one upload. Default: 20000.
    pub max_upload_changes: usize,
    /// Memory all connections together may spend decoding frames at once, in bytes; a
    /// connection whose frame does not fit waits for others to finish. Default: 1073741824
    /// (1 GiB; at least 16 MiB).
    pub max_decode_bytes: usize,
    /// Memory for the newest log entries, in bytes, from which live connections are served
    /// without a database read (see `fanout`); a connection further behind reads the
    /// database. Default: 33554432 (32 MiB; at most 1 GiB; 0 reads every time).
    pub live_tail_bytes: usize,
    /// Seconds without any packet after which a connection is dropped (clients send
    /// keep-alives). Default: 30 (range 1 – 3600).
    pub idle_timeout_secs: u64,
    /// The QUIC congestion controller that paces what the relay sends (downloads): `field`
    /// (model-based like BBR; no loss but a cut link counts as congestion), `bbr`, `cubic` or
    /// `newreno`. Default: `field`.
    pub congestion: Congestion,
    /// Accept unknown devices without enrolment, granting `open_scopes` and `open_role`
    /// (development and pilots only). Enrolled devices must still present their secret.
    /// Default: false (only enrolled devices may sync). Also read as `open_enrolment`.
    #[serde(alias = "open_enrolment")]
    pub open_enrollment: bool,
    /// Scopes granted to devices accepted by open enrolment (`*` = all). Default: `["*"]`.
    pub open_scopes: Vec<String>,
    /// Role granted to devices accepted by open enrolment (`rep`, `manager`, `director`,
    /// `admin`). Default: `admin`.
    pub open_role: Role,
    /// How many documents the relay keeps loaded for validating writes (about 20 KiB each).
    /// Default: 1024.
    pub doc_cache: usize,
    /// Days after a customer moved to another scope during which the relay still accepts its
    /// old devices' changes written before the move (offline edits), filing them under the new
    /// scope. Default: 30 (range 0 – 3650).
    pub move_grace_days: u64,
    /// New documents one device may store per UTC day; more are refused with a retryable
    /// reason. 0: no limit. Default: 5000.
    pub quota_new_documents_per_day: u64,
    /// Bytes of changes one device may store per UTC day. 0: no limit. Default: 268435456
    /// (256 MiB).
    pub quota_bytes_per_day: u64,
    /// Days a laptop's replica may go without contacting the relay before it refuses to open
    /// (the offline lease, sent to laptops of protocol 7 at each connection), for devices
    /// whose role is not in `offline_lease_days_by_role` and that have no lease of their own
    /// (`device lease`). 0: no lease. Default: 0 (range 0 – 3650).
    pub offline_lease_days: u32,
    /// The offline lease per role (`rep`, `manager`, `director`, `admin`), in place of
    /// `offline_lease_days`; 0: no lease for that role. Default: empty.
    pub offline_lease_days_by_role: BTreeMap<String, u32>,
    /// Largest attachment (photo, signed PDF) the relay accepts, in bytes; a larger one is
    /// refused for good, with this limit in the reason. Default: 26214400 (25 MiB; range
    /// 64 KiB – 4 GiB).
    pub attachment_max_file_bytes: u64,
    /// Most bytes of attachments one device's uploads may hold on the relay; past it, uploads
    /// are refused with a retryable reason and wait on the laptop. 0: no limit. Default:
    /// 5368709120 (5 GiB).
    pub attachment_quota_bytes: u64,
    /// What the relay logs to stderr: a level (`error`, `warn`, `info`, `debug`, `trace`) or
    /// a filter per module (`info,fieldsync_relay::server=debug`). The `RUST_LOG`
    /// environment variable, when set, takes its place. Default: `info`.
    pub log_level: String,
    /// How each log line is written: `text` (for people) or `json` (one JSON object per line,
    /// for log shippers such as journald exporters, Vector or Fluent Bit). Default: `text`.
    pub log_format: LogFormat,
}

/// Checks `log_level`: comma-separated directives, each a level (`error`, `warn`, `info`,
/// `debug`, `trace`, `off`) or `target=level`. A bare word that is no level would be read as
/// a module name and silently log everything from it, so it is refused.
fn check_log_level(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let bad = || {
        format!(
            "{level:?} is not a level ({}) or a filter such as \"info,fieldsync_relay::server=debug\"",
            LEVELS.join(", ")
        )
    };
    for d in level.split(',').map(str::trim) {
        let lvl = d.rsplit_once('=').map_or(d, |(_, l)| l);
        if !LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) {
            return Err(bad());
        }
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("{}: {e}", bad()))
}

/// How the relay writes its log lines (`log_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target` and the event's fields.
    Json,
}

impl Default for RelayConfig {
    fn default() -> Self {
        let limits = RelayLimits::default();
        Self {
            data_dir: PathBuf::from("relay-data"),
            listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            public_addr: None,
            metrics_listen: None,
            metrics_token: None,
            database: None,
            database_ca: None,
            database_max_connections: 16,
            cert: None,
            key: None,
            max_connections: 1024,
            max_unauthenticated: 256,
            max_connections_per_device: 4,
            max_batch_bytes: limits.max_batch_bytes,
            max_upload_changes: limits.max_upload_changes,
            max_decode_bytes: 1 << 30,
            live_tail_bytes: crate::fanout::DEFAULT_TAIL_BYTES,
            idle_timeout_secs: 30,
            congestion: Congestion::default(),
            open_enrollment: false,
            open_scopes: vec![fieldsync_core::ids::ALL_SCOPES.to_string()],
            open_role: Role::Admin,
            doc_cache: 1024,
            move_grace_days: 30,
            quota_new_documents_per_day: crate::store::Quota::default().new_documents_per_day,
            quota_bytes_per_day: crate::store::Quota::default().bytes_per_day,
            offline_lease_days: 0,
            offline_lease_days_by_role: BTreeMap::new(),
            attachment_max_file_bytes: BlobLimits::default().max_file_bytes,
            attachment_quota_bytes: BlobLimits::default().device_quota_bytes,
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
        }
    }
}

impl RelayConfig {
    /// Parses and checks a TOML document.
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(s).map_err(|e| ConfigError::Parse {
            path: None,
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and checks a TOML file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        let cfg: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: Some(path.to_path_buf()),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty");
        }
        if let Err(e) = check_log_level(&self.log_level) {
            return bad("log_level", e);
        }
        if self.cert.is_some() != self.key.is_some() {
            return bad("cert", "`cert` and `key` must be given together");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.max_decode_bytes < 16 << 20 {
            return bad("max_decode_bytes", "must be at least 16777216 (16 MiB)");
        }
        if self.live_tail_bytes > 1 << 30 {
            return bad("live_tail_bytes", "must be at most 1073741824 (1 GiB)");
        }
        if self.max_unauthenticated == 0 {
            return bad("max_unauthenticated", "must be at least 1");
        }
        if self.max_connections_per_device == 0 {
            return bad("max_connections_per_device", "must be at least 1");
        }
        if !(MIN_BATCH_BYTES..=MAX_BATCH_BYTES).contains(&self.max_batch_bytes) {
            return bad(
                "max_batch_bytes",
                format!(
                    "{} is outside {MIN_BATCH_BYTES}..={MAX_BATCH_BYTES}",
                    self.max_batch_bytes
                ),
            );
        }
        if self.max_upload_changes == 0 {
            return bad("max_upload_changes", "must be at least 1");
        }
        if !(1..=3600).contains(&self.idle_timeout_secs) {
            return bad(
                "idle_timeout_secs",
                format!("{} is outside 1..=3600", self.idle_timeout_secs),
            );
        }
        if self.open_enrollment && self.open_scopes.is_empty() {
            return bad(
                "open_scopes",
                "must name at least one scope when open_enrollment is on",
            );
        }
        if self.open_scopes.iter().any(|s| s.trim().is_empty()) {
            return bad("open_scopes", "scope names must not be empty");
        }
        if self.doc_cache == 0 {
            return bad("doc_cache", "must be at least 1");
        }
        if !(64 << 10..=MAX_ATTACHMENT_BYTES).contains(&self.attachment_max_file_bytes) {
            return bad(
                "attachment_max_file_bytes",
                format!(
                    "{} is outside 65536..={MAX_ATTACHMENT_BYTES}",
                    self.attachment_max_file_bytes
                ),
            );
        }
        if self.move_grace_days > 3650 {
            return bad(
                "move_grace_days",
                format!("{} is outside 0..=3650", self.move_grace_days),
            );
        }
        let max_lease = crate::store::MAX_LEASE_DAYS;
        if self.offline_lease_days > max_lease {
            return bad(
                "offline_lease_days",
                format!("{} is outside 0..={max_lease}", self.offline_lease_days),
            );
        }
        for (role, days) in &self.offline_lease_days_by_role {
            if Role::parse(role).is_none() {
                return bad(
                    "offline_lease_days_by_role",
                    format!("{role:?} is not a role (rep, manager, director, admin)"),
                );
            }
            if *days > max_lease {
                return bad(
                    "offline_lease_days_by_role",
                    format!("{role}: {days} is outside 0..={max_lease}"),
                );
            }
        }
        if let Some(url) = &self.database
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return bad(
                "database",
                "must be a postgres:// URL (leave it unset for the embedded SQLite file)",
            );
        }
        if let Some(t) = &self.metrics_token {
            if self.metrics_listen.is_none() {
                return bad(
                    "metrics_token",
                    "applies to `metrics_listen` only (none is set)",
                );
            }
            if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad(
                    "metrics_token",
                    "must be at least 16 characters, without spaces",
                );
            }
        }
        if self.database_max_connections < crate::store::MIN_DB_CONNECTIONS {
            return bad(
                "database_max_connections",
                format!(
                    "must be at least {} (the writer, the listener, reads and authentication)",
                    crate::store::MIN_DB_CONNECTIONS
                ),
            );
        }
        if self.database_ca.is_some() && self.database.is_none() {
            return bad(
                "database_ca",
                "applies to a PostgreSQL `database` only (none is set)",
            );
        }
        if let Some(a) = &self.public_addr {
            let ok = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok || a.chars().any(char::is_whitespace) {
                return bad("public_addr", format!("{a:?} is not host:port"));
            }
        }
        Ok(())
    }

    /// The address written into enrolment tokens: `public_addr`, else `listen` unless it is a
    /// wildcard address (`0.0.0.0`, `::`), which devices cannot connect to.
    pub fn token_addr(&self) -> Option<String> {
        self.public_addr
            .clone()
            .or_else(|| (!self.listen.ip().is_unspecified()).then(|| self.listen.to_string()))
    }

    /// The store options derived from this configuration.
    pub fn store_options(&self) -> crate::store::RelayStoreOptions {
        crate::store::RelayStoreOptions {
            cache_docs: self.doc_cache,
            open: self.open_enrollment.then(|| crate::store::OpenEnrolment {
                scopes: self.open_scopes.clone(),
                role: self.open_role,
            }),
            move_grace: std::time::Duration::from_secs(self.move_grace_days * 86_400),
            quota: crate::store::Quota {
                new_documents_per_day: self.quota_new_documents_per_day,
                bytes_per_day: self.quota_bytes_per_day,
            },
            db_max_connections: self.database_max_connections,
            offline_lease: crate::store::OfflineLease {
                days: self.offline_lease_days,
                // Checked by `validate`.
                by_role: self
                    .offline_lease_days_by_role
                    .iter()
                    .filter_map(|(role, days)| Some((Role::parse(role)?, *days)))
                    .collect(),
            },
            ..crate::store::RelayStoreOptions::default()
        }
    }

    /// The attachment limits derived from this configuration.
    pub fn blob_limits(&self) -> BlobLimits {
        BlobLimits {
            max_file_bytes: self.attachment_max_file_bytes,
            device_quota_bytes: match self.attachment_quota_bytes {
                0 => u64::MAX,
                n => n,
            },
        }
    }

    /// The session limits derived from this configuration.
    pub fn limits(&self) -> RelayLimits {
        RelayLimits {
            max_batch_bytes: self.max_batch_bytes,
            max_upload_changes: self.max_upload_changes,
            ..RelayLimits::default()
        }
    }

    /// The SQLite file inside the data directory.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join(crate::store::DB_FILE)
    }
}

/// Creates the data directory `dir` (and missing parents) readable by its owner only, or makes
/// an existing one so ([`protect_data_dir`]).
pub fn create_data_dir(dir: &Path) -> std::io::Result<()> {
    fieldsync_core::fsmode::create_private_dir_all(dir)?;
    protect_data_dir(dir);
    Ok(())
}

/// Makes the existing data directory `dir` readable by its owner only, with a warning if it
/// was not: it holds the database and the certificate's key. A shared directory with the
/// sticky bit (such as `/tmp`) is never changed.
pub fn protect_data_dir(dir: &Path) {
    use fieldsync_core::fsmode;
    if !dir.is_dir() {
        return;
    }
    if fsmode::is_sticky_dir(dir) {
        tracing::warn!(
            path = %dir.display(),
            "the data directory is a shared directory (sticky bit); give the relay a directory of its own"
        );
    } else if let Err(e) = fsmode::tighten(dir, fsmode::PRIVATE_DIR) {
        tracing::warn!(path = %dir.display(), error = %e, "cannot make the data directory private to its owner");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let cfg = RelayConfig::from_toml_str("").unwrap();
        assert_eq!(cfg, RelayConfig::default());
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:4433");
        assert_eq!(cfg.data_dir, PathBuf::from("relay-data"));
        assert!(!cfg.open_enrollment, "default deny");
        assert_eq!(cfg.public_addr, None);
        assert_eq!(
            cfg.token_addr(),
            None,
            "a wildcard listen address is no token address"
        );
        assert_eq!(cfg.move_grace_days, 30);
        assert_eq!(cfg.open_scopes, vec!["*".to_string()]);
        assert_eq!(cfg.open_role, Role::Admin);
        assert_eq!(cfg.idle_timeout_secs, 30);
        assert_eq!(cfg.max_batch_bytes, 2 << 20);
        assert_eq!(cfg.max_upload_changes, 20_000);
    }

    #[test]
    fn log_level_and_format_are_checked() {
        let cfg = RelayConfig::from_toml_str(
            "log_level = \"warn,fieldsync_relay::server=debug\"\nlog_format = \"json\"",
        )
        .unwrap();
        assert_eq!(cfg.log_format, LogFormat::Json);
        for bad in ["loud", "info,fieldsync_relay", "server=chatty", ""] {
            let e = RelayConfig::from_toml_str(&format!("log_level = {bad:?}")).unwrap_err();
            assert!(e.to_string().contains("log_level"), "{bad}: {e}");
        }
        assert!(RelayConfig::from_toml_str("log_format = \"xml\"").is_err());
    }

    #[test]
    fn values_are_read() {
        let cfg = RelayConfig::from_toml_str(
            r#"
            data_dir = "/var/lib/fieldsync"
            listen = "127.0.0.1:5000"
            max_connections = 10
            open_enrollment = true
            open_scopes = ["north", "south"]
            open_role = "rep"
            public_addr = "relay.example.com:443"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.token_addr().as_deref(), Some("relay.example.com:443"));
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/fieldsync"));
        assert_eq!(cfg.listen.port(), 5000);
        assert_eq!(cfg.max_connections, 10);
        assert!(cfg.open_enrollment);
        assert_eq!(cfg.open_role, Role::Rep);
        assert_eq!(cfg.db_path(), PathBuf::from("/var/lib/fieldsync/relay.db"));
        // Either spelling of the key.
        let cfg = RelayConfig::from_toml_str("open_enrolment = true").unwrap();
        assert!(cfg.open_enrollment);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let e = RelayConfig::from_toml_str("listen_port = 4433").unwrap_err();
        assert!(e.to_string().contains("listen_port"), "{e}");
        let e = RelayConfig::from_toml_str("listen = \"not an address\"").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let e = RelayConfig::from_toml_str("open_role = \"boss\"").unwrap_err();
        assert!(e.to_string().contains("boss"), "{e}");
        let e = RelayConfig::from_toml_str("max_connections = -1").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let e = RelayConfig::from_toml_str("max_batch_bytes = 10").unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    key: "max_batch_bytes",
                    ..
                }
            ),
            "{e}"
        );
        let e = RelayConfig::from_toml_str("cert = \"/etc/relay.pem\"").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { key: "cert", .. }), "{e}");
        let e = RelayConfig::from_toml_str("idle_timeout_secs = 0").unwrap_err();
        assert!(e.to_string().contains("idle_timeout_secs"), "{e}");
        let e = RelayConfig::from_toml_str("public_addr = \"relay.example.com\"").unwrap_err();
        assert!(e.to_string().contains("public_addr"), "{e}");
        let e = RelayConfig::from_toml_str("database_max_connections = 3").unwrap_err();
        assert!(e.to_string().contains("database_max_connections"), "{e}");
        let e = RelayConfig::from_toml_str("database_ca = \"/etc/ssl/db-ca.pem\"").unwrap_err();
        assert!(e.to_string().contains("database_ca"), "{e}");
        let e = RelayConfig::from_toml_str(
            "metrics_listen = \"127.0.0.1:9464\"\nmetrics_token = \"short\"",
        )
        .unwrap_err();
        assert!(e.to_string().contains("metrics_token"), "{e}");
    }

    #[test]
    fn offline_leases_are_read_and_checked() {
        let cfg = RelayConfig::from_toml_str(
            "offline_lease_days = 30\n[offline_lease_days_by_role]\nrep = 14\nadmin = 0\n",
        )
        .unwrap();
        let lease = cfg.store_options().offline_lease;
        assert_eq!(lease.days, 30);
        assert_eq!(lease.days_for(Role::Rep), 14);
        assert_eq!(lease.days_for(Role::Admin), 0);
        assert_eq!(lease.days_for(Role::Manager), 30);
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(RelayConfig::from_toml_str(&text).unwrap(), cfg, "{text}");
        let e = RelayConfig::from_toml_str("[offline_lease_days_by_role]\nboss = 3\n").unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    key: "offline_lease_days_by_role",
                    ..
                }
            ) && e.to_string().contains("boss"),
            "{e}"
        );
        let e = RelayConfig::from_toml_str("offline_lease_days = 4000").unwrap_err();
        assert!(e.to_string().contains("offline_lease_days"), "{e}");
        let e =
            RelayConfig::from_toml_str("[offline_lease_days_by_role]\nrep = 4000\n").unwrap_err();
        assert!(e.to_string().contains("offline_lease_days_by_role"), "{e}");
        assert!(RelayConfig::from_toml_str("offline_lease_days = -1").is_err());
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../relay.example.toml");
        let cfg = RelayConfig::from_toml_str(text).unwrap();
        assert_eq!(cfg, RelayConfig::default());
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = RelayConfig::load("/nonexistent/relay.toml").unwrap_err();
        assert!(matches!(e, ConfigError::Read(..)));
    }
}

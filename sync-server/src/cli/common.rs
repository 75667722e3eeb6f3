//! What every command shares: where the configuration comes from, and how flags name a role.

use std::path::PathBuf;

use clap::Args;
use fieldsync_core::Role;
use fieldsync_relay::{RelayConfig, RelayStore};

/// Where the configuration comes from: a TOML file, overridden by flags.
#[derive(Args, Debug)]
pub(crate) struct Common {
    /// Data directory (relay.db, certificate). Overrides `data_dir` in the config file.
    #[arg(long, value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    /// TOML configuration file (see relay.example.toml).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// PostgreSQL database shared by relay nodes (`postgres://user@host/db`). Overrides
    /// `database` in the config file [default: relay.db in the data directory].
    #[arg(long, value_name = "URL")]
    pub(crate) database: Option<String>,
    /// CA certificate (PEM) of the PostgreSQL server: connect over verified TLS. Overrides
    /// `database_ca` in the config file.
    #[arg(long, value_name = "FILE")]
    pub(crate) database_ca: Option<PathBuf>,
}

impl Common {
    /// The configuration: the file's, then the flags'.
    pub(crate) fn load(&self) -> anyhow::Result<RelayConfig> {
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
    pub(crate) fn store(&self) -> anyhow::Result<RelayStore> {
        let cfg = self.load()?;
        Ok(RelayStore::open_existing(&cfg)?)
    }
}

/// A role named on the command line.
pub(crate) fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("unknown role `{s}` (rep, manager, director, admin)"))
}

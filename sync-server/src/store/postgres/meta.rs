//! Values the store keeps about itself, by key (the `meta` table), for parts of the relay that
//! need a secret or a fact shared by every process and node on the store.

use super::PgRelayStore;
use super::conn::Run as _;
use crate::store::RelayStoreError;

impl PgRelayStore {
    /// The value under `key`, if any.
    pub fn meta_value(&self, key: &str) -> Result<Option<Vec<u8>>, RelayStoreError> {
        self.read(|c| {
            Ok(
                c.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])?
                    .map(|r| r.try_get(0))
                    .transpose()?,
            )
        })
    }

    /// Stores `value` under `key` unless a value is there already; returns the value stored
    /// (the first writer's, when two race).
    pub fn claim_meta(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, RelayStoreError> {
        self.read_priority(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &value],
            )?;
            Ok(
                c.query_one("SELECT value FROM meta WHERE key = $1", &[&key])?
                    .try_get(0)?,
            )
        })
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), RelayStoreError> {
        self.read_priority(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )?;
            Ok(())
        })
    }
}

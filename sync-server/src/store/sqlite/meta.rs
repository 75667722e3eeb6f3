//! Values the store keeps about itself, by key (the `meta` table), for parts of the relay that
//! need a secret or a fact shared by every process and node on the store.

use rusqlite::{OptionalExtension as _, params};

use super::SqliteRelayStore;
use crate::store::RelayStoreError;

impl SqliteRelayStore {
    /// The value under `key`, if any.
    pub fn meta_value(&self, key: &str) -> Result<Option<Vec<u8>>, RelayStoreError> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?)
        })
    }

    /// Stores `value` under `key` unless a value is there already; returns the value stored
    /// (the first writer's, when two race).
    pub fn claim_meta(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, RelayStoreError> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
            )?
            .execute(params![key, value])?;
            Ok(tx
                .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([key], |r| r.get(0))?)
        })
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), RelayStoreError> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
            Ok(())
        })
    }
}

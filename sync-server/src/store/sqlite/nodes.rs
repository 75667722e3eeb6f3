//! The reports serving relay nodes leave in the store (see `crate::presence`).

use rusqlite::params;

use super::SqliteRelayStore;
use crate::store::RelayStoreError;

impl SqliteRelayStore {
    /// Stores `node`'s latest report (JSON) at `now` (ms), and forgets reports of nodes silent
    /// for longer than `forget_after` ms.
    pub fn put_node_report(
        &self,
        node: &str,
        report: &str,
        now: i64,
        forget_after: i64,
    ) -> Result<(), RelayStoreError> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO nodes (node, report, heartbeat_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (node) DO UPDATE SET report = excluded.report,
                   heartbeat_at = excluded.heartbeat_at",
            )?
            .execute(params![node, report, now])?;
            tx.prepare_cached("DELETE FROM nodes WHERE heartbeat_at < ?1")?
                .execute([now.saturating_sub(forget_after)])?;
            Ok(())
        })
    }

    /// Every node's latest report: (node, report JSON, when it was written in ms, now in ms).
    /// The one node of an embedded store writes on this machine: its clock is this one.
    pub fn node_reports(&self) -> Result<Vec<(String, String, i64, i64)>, RelayStoreError> {
        let now = fieldsync_core::ids::now_millis();
        self.read_priority(|c| {
            c.prepare_cached("SELECT node, report, heartbeat_at FROM nodes ORDER BY node")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, now)))?
                .collect::<Result<_, _>>()
                .map_err(Into::into)
        })
    }
}

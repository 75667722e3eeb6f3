//! The reports serving relay nodes leave in the store (see `crate::presence`).

use super::PgRelayStore;
use super::conn::Run as _;
use crate::store::RelayStoreError;

impl PgRelayStore {
    /// Stores `node`'s latest report (JSON) at `now` (ms), and forgets reports of nodes silent
    /// for longer than `forget_after` ms.
    pub fn put_node_report(
        &self,
        node: &str,
        report: &str,
        now: i64,
        forget_after: i64,
    ) -> Result<(), RelayStoreError> {
        // A few rows every few seconds per node: the priority share, outside the writer, so
        // a busy log never delays a node's heartbeat. Stamped with the database's clock, which
        // `node_reports` reads too: nodes' clocks may disagree, the database's is one.
        let _ = now;
        self.read_priority(|c| {
            c.execute(
                "INSERT INTO nodes (node, report, heartbeat_at)
                 VALUES ($1, $2, (extract(epoch from clock_timestamp()) * 1000)::BIGINT)
                 ON CONFLICT (node) DO UPDATE SET report = excluded.report,
                   heartbeat_at = excluded.heartbeat_at",
                &[&node, &report],
            )?;
            c.execute(
                "DELETE FROM nodes
                  WHERE heartbeat_at < (extract(epoch from clock_timestamp()) * 1000)::BIGINT - $1",
                &[&forget_after],
            )?;
            Ok(())
        })
    }

    /// Every node's latest report: (node, report JSON, when it was written in ms, now in ms),
    /// both times by the database's clock.
    pub fn node_reports(&self) -> Result<Vec<(String, String, i64, i64)>, RelayStoreError> {
        self.read_priority(|c| {
            c.query(
                "SELECT node, report, heartbeat_at,
                        (extract(epoch from clock_timestamp()) * 1000)::BIGINT
                   FROM nodes ORDER BY node",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect()
        })
    }
}

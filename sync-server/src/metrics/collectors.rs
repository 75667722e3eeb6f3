//! Collectors read at each scrape: the store's read pool and writer, and the live tail.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::fanout::Fanout;
use crate::store::RelayStore;

/// The store's read pool and writer, read at each scrape.
#[derive(Debug)]
pub(super) struct PoolCollector(pub(super) RelayStore);

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.pool_stats();
        let gauge = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        for (name, help, g) in [
            (
                "db_pool_capacity",
                "Most read connections this node keeps open to its database",
                gauge(s.capacity),
            ),
            (
                "db_pool_reserved",
                "Read connections kept for authentication and the node's bookkeeping",
                gauge(s.reserved),
            ),
            ("db_pool_open", "Read connections open now", gauge(s.open)),
            (
                "db_pool_in_use",
                "Read connections in use now",
                gauge(s.in_use),
            ),
        ] {
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        for (name, help, c) in [
            (
                "db_pool_waits",
                "Requests that waited for a free read connection",
                ConstCounter::new(s.waits),
            ),
            (
                "db_pool_busy",
                "Requests refused as busy: no read connection came free in time",
                ConstCounter::new(s.timeouts),
            ),
        ] {
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let w = self.0.write_stats();
        for (name, help, c) in [
            (
                "db_write_transactions",
                "Transactions that wrote uploads (uploads queued together share one)",
                ConstCounter::new(w.transactions),
            ),
            (
                "db_write_uploads",
                "Uploads written",
                ConstCounter::new(w.uploads),
            ),
        ] {
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        for (name, help, c) in [
            (
                "db_write_busy_seconds",
                "Time the writer spent writing uploads (a rate near 1 means it is saturated)",
                ConstCounter::new(w.busy.as_secs_f64()),
            ),
            (
                "db_write_wait_seconds",
                "Time uploads waited for the writer, summed over uploads",
                ConstCounter::new(w.waited.as_secs_f64()),
            ),
        ] {
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let queued = ConstGauge::new(i64::try_from(w.queued).unwrap_or(i64::MAX));
        queued.encode(encoder.encode_descriptor(
            "db_write_queue",
            "Uploads queued for the writer now (being written or waiting)",
            None,
            queued.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The live tail and who follows it, read at each scrape.
#[derive(Debug)]
pub(super) struct FanoutCollector(pub(super) Arc<Fanout>);

impl Collector for FanoutCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (entries, bytes) = self.0.held();
        let gauge = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        for (name, help, g) in [
            (
                "live_tail_entries",
                "Newest log entries held in memory for live connections",
                gauge(entries),
            ),
            (
                "live_tail_bytes",
                "Bytes of newest log entries held in memory (live_tail_bytes caps it)",
                gauge(bytes),
            ),
            (
                "live_subscriptions",
                "Connections following their scopes for live pushes (once per scope)",
                gauge(self.0.subscriptions()),
            ),
        ] {
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

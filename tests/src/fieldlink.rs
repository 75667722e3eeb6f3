//! The field links the benchmarks emulate through the [`crate::faultproxy::FaultProxy`]: a
//! bottleneck rate, a one-way delay of half the round trip, a bottleneck queue of half a
//! second of the link (at least 8 KiB, tail drop), and what goes wrong on it.

use std::time::Duration;

use crate::faultproxy::{BurstLoss, FaultConfig, LinkConfig};

/// A field link: bottleneck rate and round-trip time.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// Bottleneck rate, bits per second.
    pub bps: u64,
    /// Round-trip time, ms.
    pub rtt_ms: u64,
}

/// 64 kbit/s, 800 ms: a satellite terminal.
pub const SATELLITE: Link = Link {
    bps: 64_000,
    rtt_ms: 800,
};
/// 512 kbit/s, 300 ms: edge cellular.
pub const EDGE: Link = Link {
    bps: 512_000,
    rtt_ms: 300,
};
/// 2 Mbit/s, 100 ms.
pub const FAST: Link = Link {
    bps: 2_000_000,
    rtt_ms: 100,
};

impl Link {
    /// For tables: rate and round trip.
    pub fn name(self) -> String {
        let rate = if self.bps >= 1_000_000 {
            format!("{} Mbit/s", self.bps / 1_000_000)
        } else {
            format!("{} kbit/s", self.bps / 1_000)
        };
        format!("{rate}, {} ms", self.rtt_ms)
    }

    /// What the link carries in `secs`, bytes.
    pub fn capacity(self, secs: f64) -> f64 {
        self.bps as f64 / 8.0 * secs
    }
}

/// What goes wrong on the link.
#[derive(Clone, Copy, Debug)]
pub enum Faults {
    /// A clean link.
    None,
    /// Independent random loss, percent.
    Random(u32),
    /// Gilbert–Elliott bursts.
    Bursty,
    /// 5 s cut every 20 s.
    Cuts,
    /// Independent random loss, percent, and a 5 s cut every 20 s.
    RandomAndCuts(u32),
}

impl Faults {
    /// For tables: rate and round trip.
    pub fn name(self) -> String {
        match self {
            Self::None => "0 %".into(),
            Self::Random(p) => format!("{p} %"),
            Self::Bursty => "bursty".into(),
            Self::Cuts => "cut 5 s / 20 s".into(),
            Self::RandomAndCuts(p) => format!("{p} % + cut 5 s / 20 s"),
        }
    }

    /// The fault proxy configuration of this link with these faults.
    pub fn config(self, link: Link, seed: u64) -> FaultConfig {
        let queue = ((link.bps / 8) as usize / 2).max(8 << 10);
        let mut dir = LinkConfig {
            delay: Duration::from_millis(link.rtt_ms / 2),
            bandwidth_bps: Some(link.bps),
            queue_limit_bytes: queue,
            ..LinkConfig::default()
        };
        let mut cut_every = None;
        match self {
            Self::None => {}
            Self::Random(p) => dir.loss = f64::from(p) / 100.0,
            Self::Bursty => {
                dir.burst = Some(BurstLoss {
                    p_good_to_bad: 0.02,
                    p_bad_to_good: 0.2,
                    loss_in_bad: 1.0,
                });
            }
            Self::Cuts => cut_every = Some((Duration::from_secs(15), Duration::from_secs(5))),
            Self::RandomAndCuts(p) => {
                dir.loss = f64::from(p) / 100.0;
                cut_every = Some((Duration::from_secs(15), Duration::from_secs(5)));
            }
        }
        FaultConfig {
            seed,
            up: dir.clone(),
            down: dir,
            cut_every,
        }
    }
}

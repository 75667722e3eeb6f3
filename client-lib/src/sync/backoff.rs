//! Reconnect delays: exponential growth from a minimum to a maximum, with full jitter.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Bounds of the reconnect delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackoffConfig {
    /// Ceiling of the first delay.
    #[serde(with = "super::millis")]
    pub min: Duration,
    /// Largest ceiling; reached after about log2(max/min) failures.
    #[serde(with = "super::millis")]
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(200),
            max: Duration::from_secs(60),
        }
    }
}

/// Exponential backoff with "full jitter": after the `n`-th consecutive failure the delay is
/// drawn uniformly from `[0, min(max, min·2ⁿ)]`, so many clients that lost the relay at the
/// same moment do not come back in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    cfg: BackoffConfig,
    failures: u32,
}

impl Backoff {
    /// A backoff with no failures yet.
    pub fn new(cfg: BackoffConfig) -> Self {
        Self { cfg, failures: 0 }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let min = self.cfg.min.max(Duration::from_millis(1));
        let max = self.cfg.max.max(min);
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        min.checked_mul(factor).map_or(max, |d| d.min(max))
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(|ceiling| {
            let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
            Duration::from_millis(rand::random_range(0..=ms))
        })
    }

    /// Like [`Backoff::next_delay`], with the jitter drawn by `pick` from `[0, ceiling]`
    /// (out-of-range picks are clamped); for tests and simulations.
    pub fn next_delay_with(&mut self, pick: impl FnOnce(Duration) -> Duration) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        pick(ceiling).min(ceiling)
    }

    /// Forgets the failures (after a connection that worked).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceiling_doubles_from_min_to_max() {
        let mut b = Backoff::new(BackoffConfig::default());
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(b.next_delay_with(|c| c));
        }
        assert_eq!(
            ceilings,
            vec![
                ms(200),
                ms(400),
                ms(800),
                ms(1_600),
                ms(3_200),
                ms(6_400),
                ms(12_800),
                ms(25_600),
                ms(51_200),
                ms(60_000),
                ms(60_000),
                ms(60_000)
            ]
        );
        assert_eq!(b.failures(), 12);
    }

    #[test]
    fn never_overflows_after_many_failures() {
        let mut b = Backoff::new(BackoffConfig::default());
        for _ in 0..10_000 {
            assert!(b.next_delay() <= ms(60_000));
        }
        assert_eq!(b.ceiling(), ms(60_000));
        let mut huge = Backoff::new(BackoffConfig {
            min: Duration::from_secs(u64::MAX / 4),
            max: Duration::MAX,
        });
        for _ in 0..100 {
            let _ = huge.next_delay_with(|c| c);
        }
        assert_eq!(huge.ceiling(), Duration::MAX);
    }

    #[test]
    fn jitter_stays_within_the_ceiling_and_spreads() {
        let mut b = Backoff::new(BackoffConfig::default());
        for _ in 0..6 {
            let _ = b.next_delay_with(|c| c);
        }
        let ceiling = b.ceiling();
        assert_eq!(ceiling, ms(12_800));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut probe = b.clone();
            let d = probe.next_delay();
            assert!(d <= ceiling, "{d:?} above {ceiling:?}");
            seen.insert(d.as_millis() / 1_000);
        }
        // Full jitter: the draws cover the range, not just the top of it.
        assert!(seen.len() >= 8, "draws too concentrated: {seen:?}");
        assert!(seen.contains(&0) || seen.contains(&1));
        // A pick above the ceiling is clamped.
        assert_eq!(b.clone().next_delay_with(|_| Duration::MAX), ceiling);
    }

    #[test]
    fn reset_starts_over_and_bad_bounds_are_sane() {
        let mut b = Backoff::new(BackoffConfig::default());
        for _ in 0..5 {
            let _ = b.next_delay();
        }
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.ceiling(), ms(200));
        // max below min: min wins; zero min: 1 ms.
        let inverted = Backoff::new(BackoffConfig {
            min: ms(500),
            max: ms(100),
        });
        assert_eq!(inverted.ceiling(), ms(500));
        let zero = Backoff::new(BackoffConfig {
            min: Duration::ZERO,
            max: ms(10),
        });
        assert_eq!(zero.ceiling(), ms(1));
    }
}

//! The relay-wide budget of memory spent decoding frames.
//!
//! Each connection's frame decoder bounds one frame (`codec::body_cap`), but a thousand
//! connections each decoding a large upload at once would still add up to tens of gigabytes.
//! Before a connection decodes a complete frame it reserves the frame's cost
//! ([`FrameDecoder::next_frame_cost`]: its bytes plus twice the body it declares) from this
//! shared budget, and holds the reservation until the message has been handled (not while the
//! answer is written: a peer that never reads it must not pin the budget).
//! When the budget is spent, the connection waits (its QUIC stream stops being read, so the
//! peer is slowed by flow control) rather than failing: the relay's memory stays bounded and
//! every frame is eventually served.
//!
//! [`FrameDecoder::next_frame_cost`]: fieldsync_core::protocol::codec::FrameDecoder::next_frame_cost

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reservations are counted in KiB (the semaphore counts in `u32`).
const UNIT: usize = 1024;

/// The shared budget (cheap to clone).
#[derive(Clone, Debug)]
pub struct DecodeBudget {
    permits: Arc<Semaphore>,
    total: u32,
}

impl DecodeBudget {
    /// A budget of `bytes` (at least one frame of any size can always be decoded: a cost
    /// above the whole budget reserves all of it).
    pub fn new(bytes: usize) -> Self {
        let total = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `cost` bytes are free and reserves them until the returned permit drops
    /// (`None` only if the budget was closed, which it never is).
    pub async fn reserve(&self, cost: usize) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(cost.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        self.permits.clone().acquire_many_owned(units).await.ok()
    }

    /// Bytes reserved now.
    pub fn reserved(&self) -> usize {
        (self.total as usize - self.permits.available_permits()) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_the_budget_and_an_oversized_one_takes_it_all() {
        let budget = DecodeBudget::new(10 * UNIT);
        let a = budget.reserve(6 * UNIT).await;
        assert_eq!(budget.reserved(), 6 * UNIT);
        let waiting = tokio::time::timeout(Duration::from_millis(50), budget.reserve(6 * UNIT));
        assert!(waiting.await.is_err(), "waits while the budget is spent");
        drop(a);
        let huge = budget.reserve(1 << 30).await;
        assert_eq!(budget.reserved(), 10 * UNIT, "capped at the whole budget");
        drop(huge);
        assert_eq!(budget.reserved(), 0);
    }
}

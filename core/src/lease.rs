//! The offline lease: how long a laptop's replica may go without contacting the relay before
//! it refuses to open (IT's setting per device or per role, sent in the relay's `Policy`).
//!
//! The lease is measured on the laptop's clock, which a thief (or a dead clock battery) can
//! move. The rules hold either way:
//! - each contact with the relay starts the lease again from the laptop's time then;
//! - the lease remembers the latest time the laptop ever showed it, and counts from whichever
//!   is later, that or the clock now: setting the clock back never buys time;
//! - a clock set back by more than [`CLOCK_BACK_TOLERANCE`] behind that latest time ends the
//!   lease (within it, the countdown pauses until the clock catches up: a laptop that boots
//!   another system keeping local time in its clock jumps back by hours);
//! - a clock that jumps forward ends the lease early, which the next contact repairs.
//!
//! Sans-IO: callers pass the time in; the replica stores the [`Lease`] in its metadata.

use serde::{Deserialize, Serialize};

use crate::ids::Millis;

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// How far behind the latest time it showed the laptop's clock may go before the lease ends.
pub const CLOCK_BACK_TOLERANCE: Millis = DAY_MS;

/// The lease as the replica keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Days allowed without contact.
    pub days: u32,
    /// The laptop's clock at the last contact with the relay.
    pub contact_at: Millis,
    /// The relay's clock at that contact (for people: the laptop's clock may be wrong).
    pub relay_time: Millis,
    /// The latest time the laptop's clock ever showed (never goes back).
    pub latest: Millis,
    /// The clock was once set back by more than [`CLOCK_BACK_TOLERANCE`]: the lease stays
    /// ended until the next contact.
    #[serde(default)]
    pub clock_set_back: bool,
}

/// Where a lease stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LeaseState {
    /// The replica opens; `left` milliseconds remain.
    Valid {
        /// Milliseconds left.
        left: Millis,
    },
    /// The replica refuses to open until it reaches the relay; expired `ago` ms ago.
    Expired {
        /// Milliseconds since it expired.
        ago: Millis,
    },
    /// The laptop's clock was set back by `by` ms, more than [`CLOCK_BACK_TOLERANCE`]: the
    /// replica refuses to open until it reaches the relay.
    ClockSetBack {
        /// Milliseconds behind the latest time the clock showed.
        by: Millis,
    },
}

impl Lease {
    /// A lease of `days` starting at a contact made at `now` (the laptop's clock), when the
    /// relay's clock said `relay_time`.
    pub fn renewed(days: u32, now: Millis, relay_time: Millis) -> Self {
        Self {
            days,
            contact_at: now,
            relay_time,
            latest: now,
            clock_set_back: false,
        }
    }

    /// When it ends, on the laptop's clock.
    pub fn ends_at(&self) -> Millis {
        self.contact_at
            .saturating_add(i64::from(self.days).saturating_mul(DAY_MS))
    }

    /// Where the lease stands at `now` (the laptop's clock).
    pub fn state(&self, now: Millis) -> LeaseState {
        let behind = self.latest.saturating_sub(now);
        if self.clock_set_back || behind > CLOCK_BACK_TOLERANCE {
            return LeaseState::ClockSetBack { by: behind };
        }
        let now = now.max(self.latest);
        let end = self.ends_at();
        if now < end {
            LeaseState::Valid { left: end - now }
        } else {
            LeaseState::Expired { ago: now - end }
        }
    }

    /// Notes that the laptop's clock showed `now`; returns whether the lease changed (and
    /// should be stored again).
    pub fn observe(&mut self, now: Millis) -> bool {
        if now > self.latest {
            self.latest = now;
            true
        } else if !self.clock_set_back && self.latest.saturating_sub(now) > CLOCK_BACK_TOLERANCE {
            self.clock_set_back = true;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T0: Millis = 1_800_000_000_000;

    #[test]
    fn the_lease_runs_out_after_its_days_and_a_contact_starts_it_again() {
        let lease = Lease::renewed(14, T0, T0 + 5);
        assert_eq!(
            lease.state(T0 + DAY_MS),
            LeaseState::Valid { left: 13 * DAY_MS }
        );
        assert_eq!(
            lease.state(T0 + 15 * DAY_MS),
            LeaseState::Expired { ago: DAY_MS }
        );
        let again = Lease::renewed(14, T0 + 15 * DAY_MS, 0);
        assert!(matches!(
            again.state(T0 + 15 * DAY_MS),
            LeaseState::Valid { .. }
        ));
    }

    #[test]
    fn setting_the_clock_back_buys_no_time() {
        let mut lease = Lease::renewed(7, T0, T0);
        lease.observe(T0 + 6 * DAY_MS);
        // Back by a few hours (another system's local time): the countdown pauses.
        assert_eq!(
            lease.state(T0 + 6 * DAY_MS - 8 * 3_600_000),
            LeaseState::Valid { left: DAY_MS }
        );
        // The thief sets the clock back five days: the lease ends.
        assert_eq!(
            lease.state(T0 + DAY_MS),
            LeaseState::ClockSetBack { by: 5 * DAY_MS }
        );
        lease.observe(T0 + DAY_MS);
        // Set forward again: still ended, until a contact.
        assert!(matches!(
            lease.state(T0 + 6 * DAY_MS),
            LeaseState::ClockSetBack { .. }
        ));
        assert!(matches!(
            Lease::renewed(7, T0 + DAY_MS, T0).state(T0 + DAY_MS),
            LeaseState::Valid { .. }
        ));
    }

    proptest! {
        /// Whatever the clock does (jumps back and forth), the time left never grows without
        /// a contact, and once expired the lease stays expired.
        #[test]
        fn without_a_contact_time_left_never_grows(
            days in 1u32..60,
            jumps in proptest::collection::vec(-40 * DAY_MS..40 * DAY_MS, 1..40),
        ) {
            let mut lease = Lease::renewed(days, T0, T0);
            let mut clock = T0;
            let mut left_before = i64::MAX;
            let mut expired = false;
            for j in jumps {
                clock = clock.saturating_add(j);
                let st = lease.state(clock);
                lease.observe(clock);
                match st {
                    LeaseState::Valid { left } => {
                        prop_assert!(!expired, "expired, then valid again");
                        prop_assert!(left <= left_before);
                        left_before = left;
                    }
                    LeaseState::Expired { .. } | LeaseState::ClockSetBack { .. } => expired = true,
                }
            }
        }
    }
}

//! Failed authentication, limited per source address.
//!
//! A peer that keeps sending wrong credentials or enrolment tokens costs the relay a store
//! look-up each (an enrolment attempt used to take the single write lock) and a log line. Each
//! source address may fail `AuthLimiter::per_minute` times a minute; beyond that its `Hello`
//! and `Enrol` are refused at once, before the store is asked, until the minute is over, and
//! only the first failure of a minute is logged as a warning. Successful logins are not
//! counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window failures are counted in.
const WINDOW: Duration = Duration::from_secs(60);
/// Most source addresses tracked; past it, addresses whose window is over are forgotten.
const MAX_TRACKED: usize = 65_536;

/// Failed authentications per source address (see the module docs).
#[derive(Debug)]
pub struct AuthLimiter {
    per_minute: u32,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthLimiter {
    /// At most `per_minute` failures a minute per address (at least one).
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `ip` may try to authenticate now.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        match self.failures().get(&ip) {
            Some((since, n)) if since.elapsed() < WINDOW => *n < self.per_minute,
            _ => true,
        }
    }

    /// Records a failed attempt from `ip`; returns how many it made in the current window.
    pub fn failed(&self, ip: IpAddr) -> u32 {
        let mut f = self.failures();
        if f.len() >= MAX_TRACKED {
            f.retain(|_, (since, _)| since.elapsed() < WINDOW);
        }
        let entry = f.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_budget_of_failures() {
        let l = AuthLimiter::new(3);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for i in 1..=3 {
            assert!(l.allowed(a));
            assert_eq!(l.failed(a), i);
        }
        assert!(!l.allowed(a), "refused after three failures");
        assert!(l.allowed(b), "other addresses are not affected");
    }
}

//! [`Hub`]: which live connections follow which scopes, so that new entries wake only the
//! connections that see them.
//!
//! A connection holds a [`Subscription`] for the scopes of its device (`*` for a device that
//! sees every scope) and waits on it; [`Hub::wake`] notifies the subscriptions of the scopes
//! that got entries. A notification sent while the connection is busy is kept (one permit),
//! so none is lost between a read and the next wait. Dropping a subscription unregisters it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fieldsync_core::ids::ALL_SCOPES;
use tokio::sync::Notify;

/// Registered subscriptions by scope (see the module docs).
#[derive(Debug, Default)]
pub struct Hub {
    next: AtomicU64,
    scopes: Mutex<HashMap<String, HashMap<u64, Arc<Notify>>>>,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<u64, Arc<Notify>>>> {
        self.scopes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows `scopes` (a device's scopes; `*` for all) until the subscription is dropped.
    pub fn subscribe(self: &Arc<Self>, scopes: &[String]) -> Subscription {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let mut map = self.lock();
        for s in scopes {
            map.entry(s.clone()).or_default().insert(id, notify.clone());
        }
        Subscription {
            hub: self.clone(),
            id,
            scopes: scopes.to_vec(),
            notify,
        }
    }

    /// Wakes the subscriptions of `scopes`, and those of `*` when `all` (a change or a
    /// replacement arrived, which `*` readers get).
    pub fn wake<'a>(&self, scopes: impl IntoIterator<Item = &'a str>, all: bool) {
        let map = self.lock();
        for s in scopes {
            if let Some(subs) = map.get(s) {
                subs.values().for_each(|n| n.notify_one());
            }
        }
        if all && let Some(subs) = map.get(ALL_SCOPES) {
            subs.values().for_each(|n| n.notify_one());
        }
    }

    /// Wakes every subscription (the tail restarted, or the store's log was replaced).
    pub fn wake_everyone(&self) {
        for subs in self.lock().values() {
            subs.values().for_each(|n| n.notify_one());
        }
    }

    /// Subscriptions registered, counted once per scope they follow (for metrics and tests).
    pub fn registered(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }
}

/// One connection's interest in its device's scopes (see the module docs).
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    scopes: Vec<String>,
    notify: Arc<Notify>,
}

impl Subscription {
    /// The scopes followed.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Wakes this subscription once, as if its scopes got entries.
    pub fn poke(&self) {
        self.notify.notify_one();
    }

    /// Resolves once one of the scopes got entries since the last wait returned (at once if
    /// that happened meanwhile).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.hub.lock();
        for s in &self.scopes {
            if let Some(subs) = map.get_mut(s) {
                subs.remove(&self.id);
                if subs.is_empty() {
                    map.remove(s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn woken(s: &Subscription) -> bool {
        tokio::time::timeout(Duration::from_millis(50), s.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn only_the_scopes_that_got_entries_wake() {
        let hub = Arc::new(Hub::default());
        let a = hub.subscribe(&["a".into()]);
        let b = hub.subscribe(&["b".into(), "c".into()]);
        let all = hub.subscribe(&["*".into()]);
        hub.wake(["c"], false);
        assert!(!woken(&a).await);
        assert!(woken(&b).await);
        assert!(!woken(&all).await);
        hub.wake(["a"], true);
        assert!(woken(&a).await);
        assert!(!woken(&b).await);
        assert!(woken(&all).await);
    }

    #[tokio::test]
    async fn a_wake_while_busy_is_kept_once_and_dropping_unregisters() {
        let hub = Arc::new(Hub::default());
        let a = hub.subscribe(&["a".into()]);
        hub.wake(["a"], false);
        hub.wake(["a"], false);
        assert!(woken(&a).await);
        assert!(!woken(&a).await);
        assert_eq!(hub.registered(), 1);
        drop(a);
        assert_eq!(hub.registered(), 0);
        hub.wake_everyone();
    }
}

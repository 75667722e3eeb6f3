//! The offline lease on the laptop ([`fieldsync_core::lease`]): kept in the replica's
//! metadata, started again at each contact with the relay (from the relay's `Policy`), checked
//! when the replica opens ([`Client::open_unlocked`] refuses an expired one with
//! [`ClientError::LeaseExpired`]; [`Client::open_for_renewal`] opens it for the sync that
//! renews it).

use fieldsync_core::lease::{Lease, LeaseState};

use crate::{Client, ClientError, LEASE_META_KEY};

impl Client {
    /// The offline lease IT set for this laptop, and where it stands now (`None`: no lease).
    pub fn lease(&self) -> Result<Option<(Lease, LeaseState)>, ClientError> {
        let now = self.inner.opts.env.now_millis();
        Ok(self.read_lease()?.map(|l| (l.clone(), l.state(now))))
    }

    fn read_lease(&self) -> Result<Option<Lease>, ClientError> {
        Ok(self
            .lock()
            .meta(LEASE_META_KEY)?
            .and_then(|b| serde_json::from_slice::<Lease>(&b).ok()))
    }

    /// Refuses an expired lease; otherwise notes the clock's time (so setting it back later
    /// buys nothing).
    pub(crate) fn check_lease(&self) -> Result<(), ClientError> {
        let Some(mut lease) = self.read_lease()? else {
            return Ok(());
        };
        let now = self.inner.opts.env.now_millis();
        let state = lease.state(now);
        // Noted before judging, expired or not: the clock set back after an expiry must not
        // find the lease valid again.
        if lease.observe(now) {
            self.write_lease(Some(&lease))?;
        }
        match state {
            LeaseState::Expired { ago } => Err(ClientError::LeaseExpired {
                days: lease.days,
                ago,
            }),
            LeaseState::ClockSetBack { by } => Err(ClientError::LeaseClockSetBack { by }),
            LeaseState::Valid { .. } => Ok(()),
        }
    }

    fn write_lease(&self, lease: Option<&Lease>) -> Result<(), ClientError> {
        let json = match lease {
            Some(l) => serde_json::to_vec(l)
                .map_err(|e| ClientError::InvalidInput(format!("lease: {e}")))?,
            // No lease: an empty value reads as none.
            None => Vec::new(),
        };
        self.lock().set_meta(LEASE_META_KEY, &json)?;
        Ok(())
    }

    /// The relay accepted this laptop and sent its lease (`None`: no limit): the lease starts
    /// again now.
    pub(crate) fn record_contact(
        &self,
        lease_days: Option<u32>,
        relay_time: i64,
    ) -> Result<(), ClientError> {
        // A laptop clock behind the relay's (a dead clock battery before the network time
        // came) would date the contact in the past: the later of the two counts.
        let now = self.inner.opts.env.now_millis().max(relay_time);
        let lease = lease_days.map(|d| Lease::renewed(d, now, relay_time));
        self.write_lease(lease.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fieldsync_core::env::SeededEnv;

    use super::*;
    use crate::StoreOptions;
    use crate::vault::Unlock;

    const DAY: i64 = 86_400_000;
    const T0: i64 = 1_800_000_000_000;

    fn open(path: &std::path::Path, env: &Arc<SeededEnv>) -> Result<Client, ClientError> {
        let opts = StoreOptions {
            env: env.clone(),
            ..StoreOptions::default()
        };
        Client::open_unlocked(path, opts, &Unlock::default())
    }

    #[test]
    fn an_expired_lease_refuses_to_open_whatever_the_clock_is_set_to() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("replica.db");
        let env = Arc::new(SeededEnv::new(1, T0));
        let client = open(&path, &env).expect("open");
        assert!(
            client.lease().expect("lease").is_none(),
            "no lease until IT sets one"
        );
        client.record_contact(Some(7), T0).expect("contact");
        drop(client);

        env.set_now(T0 + 6 * DAY);
        let client = open(&path, &env).expect("opens within the lease");
        let (_, st) = client.lease().expect("lease").expect("set");
        assert_eq!(st, LeaseState::Valid { left: DAY });
        drop(client);

        // The clock is set back by hours: the countdown pauses, no time is gained.
        env.set_now(T0 + 6 * DAY - 3 * 3_600_000);
        let client = open(&path, &env).expect("still within the lease");
        assert_eq!(
            client.lease().expect("lease").expect("set").1,
            LeaseState::Valid { left: DAY }
        );
        drop(client);

        env.set_now(T0 + 8 * DAY);
        let e = open(&path, &env).expect_err("expired lease opens");
        assert!(
            matches!(e, ClientError::LeaseExpired { days: 7, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("1 day ago"), "{e}");
        // Set back by days after expiry: refused, and stays refused when set forward again.
        env.set_now(T0);
        assert!(matches!(
            open(&path, &env),
            Err(ClientError::LeaseClockSetBack { .. })
        ));
        env.set_now(T0 + 7 * DAY);
        assert!(
            open(&path, &env).is_err(),
            "a clock set back keeps the replica shut"
        );

        // A sync reaches the relay: the lease starts again.
        let opts = StoreOptions {
            env: env.clone(),
            ..StoreOptions::default()
        };
        let renewing = Client::open_for_renewal(&path, opts, &Unlock::default()).expect("renewal");
        env.set_now(T0 + 8 * DAY);
        renewing
            .record_contact(Some(7), T0 + 8 * DAY)
            .expect("contact");
        drop(renewing);
        open(&path, &env).expect("opens after the contact");

        // IT lifts the lease.
        let client = open(&path, &env).expect("open");
        client.record_contact(None, T0 + 8 * DAY).expect("contact");
        env.set_now(T0 + 400 * DAY);
        drop(client);
        open(&path, &env).expect("no lease, no limit");
    }
}

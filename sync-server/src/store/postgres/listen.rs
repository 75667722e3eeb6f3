//! How a node hears of other nodes' commits: a `LISTEN` connection on both notification
//! channels, restored with backoff when it breaks, waking this node's subscribers.

use super::*;

/// A connection listening on both notification channels. TCP keepalives make a half-open
/// connection (a peer that vanished without closing) fail within about a minute, so that it
/// is reconnected rather than waited on for good.
pub(super) fn listener(inner: &Inner) -> Result<Client, RelayStoreError> {
    let mut config = inner.config.clone();
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    let mut client = connect(&config, &inner.tls, &inner.location)?;
    client.batch_execute(&format!("LISTEN {LOG_CHANNEL}; LISTEN {DEVICES_CHANNEL}"))?;
    Ok(client)
}

/// Longest wait between attempts to restore the notification connection.
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(30);

/// Restores the notification connection after it broke (a database restart, a network cut),
/// waiting longer after each failed attempt, until it works or the store is gone. Then reads
/// the counters, since notifications sent meanwhile are lost. Meanwhile the server's
/// once-a-second poll keeps live clients served.
fn reconnect_listener(store: &Weak<Inner>) -> Option<Client> {
    let mut wait = LISTEN_TICK;
    loop {
        std::thread::sleep(wait);
        let inner = store.upgrade()?;
        match listener(&inner) {
            Ok(client) => {
                let handle = PgRelayStore {
                    inner,
                    cancel: Cancel::default(),
                };
                if let Err(e) = handle.poll_log().and_then(|_| handle.poll_devices()) {
                    tracing::warn!(error = %e, "cannot read the counters after reconnecting");
                }
                tracing::info!("PostgreSQL notification connection restored");
                return Some(client);
            }
            Err(e) => {
                tracing::debug!(error = %e, retry_in = ?wait, "notification connection still down");
                wait = (wait * 2).min(LISTEN_RETRY_MAX);
            }
        }
    }
}

/// Wakes this node's subscribers when another node notifies; ends when the store is dropped.
/// A broken connection is restored ([`reconnect_listener`]).
pub(super) fn listen_loop(mut client: Client, store: Weak<Inner>) {
    loop {
        let note = {
            let mut notes = client.notifications();
            let mut it = notes.timeout_iter(LISTEN_TICK);
            it.next()
        };
        let Some(inner) = store.upgrade() else {
            return;
        };
        let store_handle = PgRelayStore {
            inner,
            cancel: Cancel::default(),
        };
        match note {
            Ok(None) => {}
            Ok(Some(n)) if n.channel() == LOG_CHANNEL => match n.payload().parse::<u64>() {
                Ok(h) => store_handle.raise_high(h),
                Err(_) => tracing::warn!(payload = n.payload(), "odd log notification"),
            },
            Ok(Some(_)) => {
                if let Err(e) = store_handle.poll_devices() {
                    tracing::warn!(error = %e, "cannot read the device table");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "lost the PostgreSQL notification connection; reconnecting");
                // Holding the store while waiting would keep a dropped store alive.
                drop(store_handle);
                match reconnect_listener(&store) {
                    Some(c) => client = c,
                    None => return,
                }
            }
        }
    }
}

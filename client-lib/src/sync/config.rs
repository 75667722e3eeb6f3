//! [`SyncConfig`]: which relay to reach, how it is authenticated, and the timeouts and sizes of
//! one sync.

use super::*;
use fieldsync_core::congestion::Congestion;

/// How to reach and authenticate the relay, and how patiently.
#[derive(Clone)]
pub struct SyncConfig {
    /// The relay's `host:port` (a name is resolved on every connection attempt).
    pub relay: String,
    /// The TLS server name sent to the relay. Empty: the host part of [`SyncConfig::relay`].
    /// With pinning the certificate's names are not checked, so this only matters for
    /// relays behind name-based routing.
    pub server_name: String,
    /// Hex SHA-256 of the relay certificate's DER encoding (colons and case are ignored).
    pub pin: String,
    /// The device credential given at enrolment, if the relay requires one.
    pub credential: Option<String>,
    /// Reconnect delays of [`SyncHandle`].
    pub backoff: BackoffConfig,
    /// Longest wait for name resolution plus the QUIC/TLS handshake.
    pub connect_timeout: Duration,
    /// QUIC idle timeout: a connection silent this long (keep-alives included) is dead.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval (well below the idle timeout and typical NAT timeouts).
    pub keep_alive: Duration,
    /// While an answer from the relay is due (a download or an upload outstanding), the
    /// longest silence before the connection is given up and retried.
    pub response_timeout: Duration,
    /// How often the outbox is checked for changes committed by other processes on the same
    /// replica file (edits through this process are noticed at once).
    pub poll_interval: Duration,
    /// A [`SyncHandle`] whose connection is caught up while the outbox still holds changes
    /// the relay refused *for now* (e.g. a dependency it did not have yet) reconnects after
    /// this long, so they are sent again (a session sends each change once).
    pub resend_refused_after: Duration,
    /// Software name sent to the relay.
    pub agent: String,
    /// The QUIC congestion controller of this side of the connection (what the laptop
    /// uploads); the relay's own setting paces downloads. Default: [`Congestion::Field`].
    pub congestion: Congestion,
    /// Metered mode for [`sync_now`]: the frame bytes (both ways) one sync may move. The
    /// laptop's own changes go first (they travel with the handshake), then the download; once
    /// the budget is reached nothing new is requested, what is in flight is finished, and the
    /// sync ends cleanly, saying what still waits ([`SyncReport::budget_spent`]). The next sync
    /// goes on from there. `None` (the default): no limit. A background [`SyncHandle`] is not
    /// metered.
    pub budget: Option<u64>,
}

impl std::fmt::Debug for SyncConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncConfig")
            .field("relay", &self.relay)
            .field("server_name", &self.server_name)
            .field("pin", &self.pin)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("response_timeout", &self.response_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("resend_refused_after", &self.resend_refused_after)
            .field("agent", &self.agent)
            .field("congestion", &self.congestion)
            .field("budget", &self.budget)
            .finish()
    }
}

impl SyncConfig {
    /// A configuration for the relay at `relay` (`host:port`) whose certificate has the
    /// SHA-256 fingerprint `pin`, with default timeouts: connect 10 s, idle 30 s, keep-alive
    /// 5 s, response 60 s, outbox poll 2 s, backoff 200 ms → 60 s, resend of changes
    /// refused for now after 60 s.
    pub fn new(relay: impl Into<String>, pin: impl Into<String>) -> Self {
        Self {
            relay: relay.into(),
            server_name: String::new(),
            pin: pin.into(),
            credential: None,
            backoff: BackoffConfig::default(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_secs(2),
            resend_refused_after: Duration::from_secs(60),
            agent: format!("fieldsync-client/{}", env!("CARGO_PKG_VERSION")),
            congestion: Congestion::default(),
            budget: None,
        }
    }

    /// The server name actually used: [`SyncConfig::server_name`] or the relay's host.
    pub fn effective_server_name(&self) -> String {
        if !self.server_name.trim().is_empty() {
            return self.server_name.trim().to_string();
        }
        split_host(&self.relay).0.to_string()
    }
}

/// Splits `host:port` (`[v6]:port` too) into host and port text.
pub(super) fn split_host(relay: &str) -> (&str, Option<&str>) {
    let relay = relay.trim();
    if let Some(rest) = relay.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        return (host, tail.strip_prefix(':'));
    }
    match relay.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (relay, None),
    }
}

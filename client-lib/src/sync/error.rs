//! [`SyncError`]: why a sync failed, and whether trying again later can succeed.

use super::*;

/// Everything that can end a sync attempt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The configuration cannot work (bad pin, malformed address, …). Not retryable.
    #[error("invalid sync configuration: {0}")]
    Config(String),
    /// The relay's name did not resolve.
    #[error("cannot resolve the relay address {relay}: {reason}")]
    Resolve {
        /// The configured address.
        relay: String,
        /// Why.
        reason: String,
    },
    /// No handshake within [`SyncConfig::connect_timeout`].
    #[error("no answer from the relay at {relay} within {timeout:?}")]
    ConnectTimeout {
        /// The configured address.
        relay: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The relay presented another certificate than the pinned one. Retried (a captive
    /// portal may be in the way), but needs a new pin if the relay's certificate changed.
    #[error(transparent)]
    PinMismatch(#[from] PinMismatch),
    /// The QUIC connection failed or was lost.
    #[error("connection to the relay failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The relay closed the connection or ended the stream.
    #[error("the relay closed the connection: {0}")]
    Closed(String),
    /// Local networking failed (socket, stream).
    #[error("network error: {0}")]
    Io(String),
    /// The relay sent bytes that are not a valid frame.
    #[error("bad frame from the relay: {0}")]
    Codec(#[from] CodecError),
    /// The protocol session failed, or the relay refused it. Retryable unless the device is
    /// not authorised or the relay speaks another protocol version.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The local replica failed.
    #[error("replica: {0}")]
    Store(#[from] StoreError),
    /// The local replica failed (through the client API).
    #[error("replica: {0}")]
    Client(#[from] ClientError),
    /// The relay did not answer within [`SyncConfig::response_timeout`].
    #[error("the relay did not answer within {0:?}")]
    ResponseTimeout(Duration),
    /// The relay refused the 0-RTT data of a resumed TLS session (it restarted, or another
    /// node answered): nothing sent early reached it. Retried at once with a full handshake.
    #[error("the relay did not take the early data of a resumed session")]
    EarlyDataRejected,
    /// An internal task failed.
    #[error("sync task failed: {0}")]
    Task(String),
    /// The device credential file could not be read or written. Not retryable.
    #[error("device credential: {0}")]
    Credential(String),
    /// IT ordered this laptop wiped: its keys and replica files are destroyed, and the relay
    /// was told so. The replica must not be used again. Not retryable.
    #[error(
        "this laptop's replica was wiped at IT's request ({} files removed{}); it can no longer sync",
        .0.files_removed,
        if .0.keys_destroyed { ", data key destroyed" } else { "" }
    )]
    Wiped(WipeReport),
}

impl SyncError {
    /// Whether trying again later can succeed. False for configuration errors, a device the
    /// relay does not authorise, and an incompatible protocol version.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Config(_) | Self::Credential(_) | Self::Wiped(_) => false,
            Self::Session(e) => e.is_retryable(),
            _ => true,
        }
    }
}

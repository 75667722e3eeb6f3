//! fieldsync relay: the central QUIC sync server (`docs/DESIGN.md` §7).
//!
//! - [`store::RelayStore`]: the relay's log, documents, devices and audit trail, implementing
//!   [`fieldsync_core::protocol::RelayStorage`], in one of two backends:
//!   [`store::SqliteRelayStore`] (one SQLite file, the default) or [`store::PgRelayStore`]
//!   (a PostgreSQL database that several relay nodes share);
//! - [`server::Relay`]: the QUIC endpoint (quinn, TLS 1.3 with rustls/ring, ALPN
//!   [`tls::ALPN`]) that drives one [`fieldsync_core::protocol::RelaySession`] per connection
//!   and pushes new log entries to live clients;
//! - [`admission::Admission`]: who keeps a connection slot (budgets for connections that have
//!   not authenticated and per device), [`auth_limit::AuthLimiter`]: failed authentication
//!   limited per source address;
//! - [`config::RelayConfig`]: the TOML configuration with documented defaults;
//! - [`presence`]: the devices online at a node and the report each serving node leaves in
//!   the store, which `status` and `device list` read;
//! - [`tls`]: certificate handling and a fingerprint-pinning verifier for clients;
//! - [`decode_budget`]: the relay-wide budget of memory spent decoding frames;
//!   [`doc_check`]: the stored documents that fail to load (`doc check`); [`doc_trim`]: a
//!   document that outgrew its budget rewritten as its current state (`doc trim`).

pub mod admission;
pub mod attachments;
pub mod auth_limit;
pub mod backup;
pub mod config;
pub mod decode_budget;
pub mod doc_check;
pub mod doc_trim;
pub mod fanout;
pub mod import;
pub mod logging;
pub mod metrics;
pub mod presence;
pub mod server;
pub mod store;
pub mod tls;

pub use config::{ConfigError, LogFormat, RelayConfig};
pub use server::{Relay, serve};
pub use store::{
    AuditQuery, AuditRecord, DeviceEvent, DeviceOutbox, DeviceRecord, Enrolment, EnrolmentRecord,
    OfflineLease, OpenEnrolment, PgRelayStore, RelayStatus, RelayStore, RelayStoreError,
    RelayStoreOptions, Revoked, SqliteRelayStore,
};

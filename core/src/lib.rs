//! fieldsync core: the CRM document model over Automerge, the local SQLite replica, and the
//! sans-IO sync protocol shared by the relay and the client.
//!
//! No tokio and no sockets here: time and randomness come in as arguments, so the whole sync
//! can run inside a deterministic simulation.

pub mod budget;
pub mod fsmode;
pub mod ids;
pub mod model;
pub mod protocol;
pub mod store;

pub use ids::{DocId, DocKind, GovernedField, Millis, Role};

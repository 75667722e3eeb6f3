//! fieldsync core: the CRM document model over Automerge, the local SQLite replica, and the
//! sans-IO sync protocol shared by the relay and the client.
//!
//! No tokio and no sockets here: time and randomness come in from outside ([`env::Env`],
//! an edit's [`model::EditCtx`]), so the whole sync can run inside a deterministic simulation;
//! `clippy.toml` bans clock and random-id calls in this crate outside [`env::SystemEnv`] and
//! the conveniences it backs for callers ([`DocId::new`], [`ids::now_millis`],
//! [`model::EditCtx::new`], [`model::new_item_id`]).

pub mod budget;
pub mod env;
pub mod fsmode;
pub mod ids;
pub mod model;
pub mod protocol;
pub mod store;

pub use ids::{DocId, DocKind, GovernedField, Millis, Role};

//! fieldsync core: the CRM document model over Automerge, the local SQLite replica, and the
//! sans-IO sync protocol shared by the relay and the client.
//!
//! # Where to start
//!
//! - [`model`]: customers, visits and quotes as Automerge documents — their layout, the edits
//!   ([`model::Edit`]) and the merge rules that plain last-writer-wins would break; who may
//!   change what is one table in [`model::authority`], judged on the state a change produces.
//! - [`store`]: a laptop's replica ([`store::Store`]): one SQLite file with every document, an
//!   outbox of local changes, typed projection rows for SQL queries, the quarantine of refused
//!   changes; a local edit and its outbox entry commit together.
//! - [`protocol`]: the batched log-and-cursor sync. [`protocol::ClientSession`] and
//!   [`protocol::RelaySession`] are state machines that do no I/O: a driver feeds each the
//!   messages the other sent ([`protocol::codec`] frames them) and sends what they return. The
//!   relay's storage is behind [`protocol::RelayStorage`] (SQLite and PostgreSQL in
//!   `fieldsync-relay`, [`protocol::memory::MemoryRelay`] here), and every one of them runs the
//!   same upload rules, [`protocol::rules`], around [`protocol::check_change`].
//! - [`budget`]: what one change, document or snapshot may cost, checked before the work.
//! - [`env`](mod@env): time and randomness come in from outside ([`env::Env`], an edit's
//!   [`model::EditCtx`]), so the whole sync can run inside a deterministic simulation;
//!   `clippy.toml` bans clock and random-id calls in this crate outside [`env::SystemEnv`] and
//!   the conveniences it backs for callers ([`DocId::new`], [`ids::now_millis`],
//!   [`model::EditCtx::new`], [`model::new_item_id`]).
//!
//! # Two laptops and a relay
//!
//! Li creates a customer, both laptops sync, then each edits it while apart; after syncing
//! again they agree, field by field ([`protocol::drive::sync_in_memory`] is one connection
//! driven in memory; over QUIC the client's sync loop and the relay's connection tasks do the
//! same).
//!
//! ```
//! use fieldsync_core::model::{
//!     CustomerEdit, CustomerField, Document, Edit, EditCtx, NewCustomer, apply_edit,
//!     create_customer,
//! };
//! use fieldsync_core::protocol::drive::sync_in_memory;
//! use fieldsync_core::protocol::memory::MemoryRelay;
//! use fieldsync_core::protocol::{ClientConfig, RelayLimits};
//! use fieldsync_core::store::Store;
//! use fieldsync_core::{DocId, Role};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let mut relay = MemoryRelay::open(uuid::Uuid::from_u128(1), Role::Rep, &["north"]);
//! let mut li = Store::open(dir.path().join("li.db"))?;
//! let mut wang = Store::open(dir.path().join("wang.db"))?;
//! let ctx = |who: &str| EditCtx::at(who, Role::Rep, 1_700_000_000_000);
//! let mut sync = |store: &mut Store| {
//!     sync_in_memory(store, &mut relay, ClientConfig::default(), RelayLimits::default())
//! };
//!
//! let new = NewCustomer {
//!     org: "acme".into(),
//!     scope: "north".into(),
//!     name: "Baotou Mining".into(),
//!     ..Default::default()
//! };
//! let id = li.create(|doc, id| create_customer(doc, id, &new, &ctx("li")))?.id;
//! sync(&mut li)?;
//! sync(&mut wang)?;
//!
//! let set = |field, value: &str| Edit::Customer(CustomerEdit::Set(field, value.into()));
//! li.edit(id, |doc| apply_edit(doc, &set(CustomerField::Industry, "mining"), &ctx("li")))?;
//! wang.edit(id, |doc| {
//!     apply_edit(doc, &set(CustomerField::Name, "Baotou Mining Group"), &ctx("wang"))
//! })?;
//! for _ in 0..2 {
//!     sync(&mut li)?;
//!     sync(&mut wang)?;
//! }
//!
//! let read = |store: &mut Store, id: DocId| match store.document(id) {
//!     Ok(Document::Customer(c)) => Some((c.name, c.industry)),
//!     _ => None,
//! };
//! let both = Some(("Baotou Mining Group".to_string(), Some("mining".to_string())));
//! assert_eq!(read(&mut li, id), both);
//! assert_eq!(read(&mut wang, id), both);
//! # Ok(())
//! # }
//! ```

pub mod attachment;
pub mod budget;
pub mod congestion;
pub mod display;
pub mod env;
pub mod fsmode;
pub mod ids;
pub mod lease;
pub mod model;
pub mod protocol;
pub mod store;

pub use ids::{CustomerId, DocId, DocKind, GovernedField, Millis, QuoteId, Role, VisitId};

//! The local replica: one SQLite file holding every document the device may see.
//!
//! For each document the store keeps its compacted Automerge bytes (`docs.snapshot`) plus the
//! changes that arrived since (`doc_changes`), and typed projection rows (`customers`,
//! `visits`, `quotes`, …) that apps query with SQL. A local edit, its outbox entry and its
//! projection rows are written in **one** transaction; a received batch and the sync cursor
//! that covers it are written in one transaction too ([`Store::transaction`]). Documents are
//! loaded lazily into a small cache, so opening a large replica does not read every document.
//!
//! Every Automerge call on bytes that came from elsewhere runs under `catch_unwind` and size
//! limits, and every failure is a typed [`StoreError`]; nothing already stored is modified by a
//! failed call (the transaction rolls back and the cached copy is dropped).
//!
//! The parts, from the bottom up:
//!
//! - `error`, `options` and `records`: [`StoreError`], [`StoreOptions`] and the records the
//!   store hands out ([`DocEvent`], [`OutboxChange`], [`Committed`], …).
//! - `decode`: bytes from elsewhere decoded under size limits and [`guard`]
//!   ([`decode_change`], [`load_snapshot`], heads, causal order); `precheck`: a change checked
//!   against its document before automerge applies it; `local_budget`: a local edit the relay
//!   would refuse for good, refused before it is queued.
//! - `schema` (the tables and their migrations), `projection` (a document's typed rows) and
//!   `cache` (the documents kept loaded, read from their snapshot and the changes since).
//! - `handle`: the [`Store`] itself (opening, transactions, subscribers, metadata), with
//!   documents, the sync queues, SQL queries and maintenance in files beside it.
//! - `tx`: the write transaction [`StoreTx`] and what every write shares, with local edits,
//!   received changes, the outbox and eviction in files beside it. `prefetch` (downloaded
//!   snapshots loaded on helper threads ahead of the transaction that stores them) feeds it,
//!   and `replace` (a document whose history the relay replaced) adds to it.

mod cache;
pub mod cipher;
mod decode;
mod error;
mod handle;
mod local_budget;
mod options;
mod precheck;
mod prefetch;
mod projection;
mod records;
mod replace;
mod schema;
mod sqlite_file;
mod tx;

pub use decode::{
    MAX_CHANGE_BYTES, MAX_SNAPSHOT_BYTES, decode_change, guard, heads_from_bytes, load_snapshot,
    load_snapshot_within,
};
pub use error::StoreError;
pub use handle::Store;
pub use options::{Durability, StoreOptions};
pub use precheck::{Structure, precheck_change, precheck_changes};
pub use prefetch::{PreparedQueue, PreparedSnapshot, prepare_snapshot, with_prepared};
pub use records::{
    Committed, DocConflict, DocEvent, Origin, OutboxChange, OutboxSummary, Quarantined, Skipped,
};
pub use replace::Replaced;
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
pub use sqlite_file::{OpenError, open_sqlite};
pub use tx::StoreTx;

#[cfg(test)]
mod tests;

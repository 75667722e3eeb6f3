//! fieldsync client: the embeddable, offline-first CRM replica.
//!
//! A [`Client`] wraps one local replica file (a [`Store`]) and offers typed handles for the
//! three document kinds — [`Client::customers`], [`Client::visits`], [`Client::quotes`] — plus
//! queries over the replica's SQL projections, change notifications, conflict listing and
//! resolution, and export/import of single documents. Everything works without a network;
//! the background sync driver is built on [`Client::with_store`].
//!
//! Every edit is written under the replica's [`Identity`] (author, role, organisation) with
//! the current time, is durable when the call returns, and is queued for the relay.
//!
//! ```
//! use fieldsync_client::{Client, ContactInput, CustomerFilter, NewCustomer};
//!
//! # fn main() -> Result<(), fieldsync_client::ClientError> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let client = Client::open(dir.path().join("replica.db"))?;
//! let acme = client.customers().create(NewCustomer {
//!     scope: "north".into(),
//!     name: "Acme Mining".into(),
//!     phone: Some("+86 138 0000 0001".into()),
//!     ..Default::default()
//! })?;
//! let contact = client.customers().add_contact(acme, ContactInput {
//!     name: Some("Li Wei".into()),
//!     ..Default::default()
//! })?;
//! assert_eq!(client.customers().get(acme)?.contacts[0].id, contact);
//! assert_eq!(client.customers().find_by_phone("+86-138-0000-0001")?[0].id, acme);
//! assert_eq!(client.customers().list(&CustomerFilter::new())?.len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! A `Client` is cheap to clone and can be shared between threads; all clones use the same
//! replica. Calls are serialised by one lock around the store.

#![warn(missing_docs)]

mod attachments;
mod briefing;
mod changed;
mod customers;
mod error;
mod lease;
mod quotes;
mod rows;
mod thumbnail;
mod visits;

pub mod app;
pub mod sync;
pub mod vault;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use automerge::AutoCommit;
use serde::{Deserialize, Serialize};

pub use attachments::{AttachmentInfo, Attachments, BytesState, PREFETCH_META_KEY, media_type_of};
pub use briefing::{
    Briefing, CARE_KINDS, Changed, ChangedItem, GREETINGS_AHEAD_DAYS, NotVisited, Today,
};
pub use changed::{ChangedDoc, ChangedSinceSync};
pub use customers::Customers;
pub use error::ClientError;
pub use fieldsync_core::attachment::BlobHash;
pub use fieldsync_core::attachment::entry::Attachment;
pub use fieldsync_core::attachment::local::{BlobsWaiting, LocalBlob};
pub use quotes::Quotes;
pub use rows::{
    CustomerFilter, CustomerRow, IdleCustomer, QuoteFilter, QuoteLineRow, QuoteRow, TaskRow,
    TimelineEntry, VisitFilter, VisitRow,
};
pub use visits::Visits;

pub use fieldsync_core;
pub use fieldsync_core::lease::{Lease, LeaseState};
pub use fieldsync_core::model::{
    AddressInput, ContactInput, Customer, CustomerEdit, CustomerField, Document, Edit, EditCtx,
    EquipmentInput, LineInput, Money, NeedInput, NewCustomer, NewQuote, NewVisit, Quote, QuoteEdit,
    QuoteField, QuoteStatus, TaskInput, Visit, VisitEdit, VisitField, VisitStatus,
};
pub use fieldsync_core::store::{
    DocConflict, DocEvent, Durability, Origin, OutboxSummary, Store, StoreError, StoreOptions,
};
pub use fieldsync_core::{CustomerId, DocId, DocKind, Millis, QuoteId, Role, VisitId};

use fieldsync_core::attachment::local::{LocalBlobError, LocalBlobs};
use fieldsync_core::model::{self, ModelError};

/// The store meta key under which the [`Identity`] is saved (JSON).
pub const IDENTITY_META_KEY: &str = "identity";

/// The replica metadata key of the offline lease ([`fieldsync_core::lease::Lease`], JSON).
pub const LEASE_META_KEY: &str = "lease";

/// Who edits through this replica: recorded as the author of every change and checked for
/// role-owned fields (credit limit, owner, approvals, …).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user (or device) name written as the author of edits.
    pub author: String,
    /// The author's role.
    pub role: Role,
    /// The organisation new customers belong to when none is given.
    pub org: String,
}

impl Identity {
    /// An identity for `author` in `role` at `org`.
    pub fn new(author: impl Into<String>, role: Role, org: impl Into<String>) -> Self {
        Self {
            author: author.into(),
            role,
            org: org.into(),
        }
    }

    /// The identity a fresh replica uses: the device id as author, role rep, org `default`.
    fn default_for(store: &Store) -> Self {
        Self::new(store.device_id().to_string(), Role::Rep, "default")
    }

    fn validate(&self) -> Result<(), ClientError> {
        if self.author.trim().is_empty() {
            return Err(ClientError::InvalidInput(
                "the identity needs an author".into(),
            ));
        }
        if self.org.trim().is_empty() {
            return Err(ClientError::InvalidInput(
                "the identity needs an organisation".into(),
            ));
        }
        Ok(())
    }
}

/// What the lock protects: the store plus the fan-out of its change events.
struct State {
    store: Store,
    /// The client's own subscription to the store.
    events: mpsc::Receiver<DocEvent>,
    /// The application's subscribers, fed from `events` whenever the lock is released.
    subscribers: Vec<mpsc::Sender<DocEvent>>,
}

impl State {
    fn new(mut store: Store) -> Self {
        let events = store.subscribe();
        Self {
            store,
            events,
            subscribers: Vec::new(),
        }
    }

    fn forward_events(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            self.subscribers.retain(|s| s.send(e.clone()).is_ok());
        }
    }
}

struct Inner {
    state: Mutex<State>,
    path: PathBuf,
    opts: StoreOptions,
    /// The attachment store beside the replica, opened at first use.
    blobs: Mutex<Option<LocalBlobs>>,
    /// Wakes the background sync's attachment transfers (something to fetch or send).
    transfers: Arc<tokio::sync::Notify>,
}

/// The store, locked; forwards change events to subscribers when released.
struct Locked<'a>(MutexGuard<'a, State>);

impl std::ops::Deref for Locked<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.0.store
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Store {
        &mut self.0.store
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.0.forward_events();
    }
}

/// An open replica. Cheap to clone (`Arc` inside), `Send + Sync`.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Client {
    /// Opens (or creates) the replica file at `path` with default options (durable commits).
    ///
    /// Refuses, without modifying it, a file that is not a fieldsync replica.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens (or creates) the replica at `path` with explicit store options.
    ///
    /// An encrypted replica opens with the key in `opts`, else with a key kept by
    /// `fieldsync unlock` or the OS keyring; one that needs its passphrase is
    /// [`vault::VaultError::Locked`] here: use [`Client::open_unlocked`].
    pub fn open_with(path: impl AsRef<Path>, opts: StoreOptions) -> Result<Self, ClientError> {
        Self::open_unlocked(path, opts, &vault::Unlock::default())
    }

    /// Opens (or creates) the replica at `path`, unlocking an encrypted one with what
    /// `unlock` allows (a passphrase, the OS keyring, a key kept for the session). A plain
    /// replica opens as with [`Client::open_with`]; a wrong passphrase is an error and changes
    /// nothing.
    pub fn open_unlocked(
        path: impl AsRef<Path>,
        opts: StoreOptions,
        unlock: &vault::Unlock,
    ) -> Result<Self, ClientError> {
        let client = Self::open_for_renewal(path, opts, unlock)?;
        client.check_lease()?;
        Ok(client)
    }

    /// Opens the replica even when its offline lease expired ([`ClientError::LeaseExpired`]),
    /// for one thing only: a sync with the relay, which renews the lease if the relay still
    /// accepts this laptop (or carries out IT's wipe order if it does not). An app shows the
    /// replica's data only through [`Client::open_unlocked`].
    pub fn open_for_renewal(
        path: impl AsRef<Path>,
        mut opts: StoreOptions,
        unlock: &vault::Unlock,
    ) -> Result<Self, ClientError> {
        let path = path.as_ref().to_path_buf();
        if opts.key.is_none() {
            opts.key = vault::unlock(&path, unlock)?;
        }
        let store = Store::open_with(&path, opts.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new(store)),
                path,
                opts,
                blobs: Mutex::new(None),
                transfers: Arc::new(tokio::sync::Notify::new()),
            }),
        })
    }

    /// Locks the store. If an earlier caller panicked while holding the lock, the store is
    /// reopened from disk: the panic may have left a half-applied edit in its in-memory cache,
    /// while everything on disk is committed or rolled back. Subscribers are kept.
    fn lock(&self) -> Locked<'_> {
        match self.inner.state.lock() {
            Ok(g) => Locked(g),
            Err(poisoned) => {
                let mut g = poisoned.into_inner();
                self.inner.state.clear_poison();
                match Store::open_with(&self.inner.path, self.inner.opts.clone()) {
                    Ok(mut fresh) => {
                        g.events = fresh.subscribe();
                        g.store = fresh;
                    }
                    Err(e) => tracing::error!(
                        error = %e,
                        "could not reopen the replica after a panic; keeping the open store"
                    ),
                }
                Locked(g)
            }
        }
    }

    /// Runs `f` with exclusive access to the underlying [`Store`] (for the sync driver and for
    /// anything this API does not cover). Change events of transactions run in `f` reach
    /// [`Client::subscribe`] receivers when `f` returns.
    ///
    /// Do not call other `Client` methods from inside `f`: the lock is not re-entrant.
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.lock();
        f(&mut store)
    }

    /// The path of the replica file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The replica's device id (the default author, and the prefix of every actor it writes).
    pub fn device_id(&self) -> uuid::Uuid {
        self.lock().device_id()
    }

    /// The identity edits are written under: the saved one, or the default (device id as
    /// author, [`Role::Rep`], org `default`) if none was set.
    pub fn identity(&self) -> Result<Identity, ClientError> {
        identity_of(&self.lock())
    }

    /// Saves the identity used for all later edits (also by other clients of this replica).
    pub fn set_identity(&self, identity: Identity) -> Result<(), ClientError> {
        identity.validate()?;
        let json = serde_json::to_vec(&identity)
            .map_err(|e| ClientError::InvalidInput(format!("identity: {e}")))?;
        self.lock().set_meta(IDENTITY_META_KEY, &json)?;
        Ok(())
    }

    /// The data key of an encrypted replica (`None`: a plain one).
    pub(crate) fn key(&self) -> Option<&fieldsync_core::store::cipher::DatabaseKey> {
        self.inner.opts.key.as_ref()
    }

    /// Whether the replica is encrypted at rest.
    pub fn is_encrypted(&self) -> bool {
        self.inner.opts.key.is_some()
    }

    /// Attachments: attach files to documents, list them, read and fetch their bytes.
    pub fn attachments(&self) -> Attachments<'_> {
        Attachments::new(self)
    }

    /// Runs `f` on the attachment store, opening it at first use.
    pub(crate) fn blobs<T>(
        &self,
        f: impl FnOnce(&mut LocalBlobs) -> Result<T, LocalBlobError>,
    ) -> Result<T, ClientError> {
        let mut g = self
            .inner
            .blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let blobs = match &mut *g {
            Some(b) => b,
            None => g.insert(LocalBlobs::open(
                &self.inner.path,
                self.inner.opts.key.as_ref(),
            )?),
        };
        Ok(f(blobs)?)
    }

    /// Wakes the background sync's attachment transfers.
    pub(crate) fn nudge(&self) {
        self.inner.transfers.notify_one();
    }

    /// What the background sync's attachment transfers wait on.
    pub(crate) fn transfers_notify(&self) -> Arc<tokio::sync::Notify> {
        self.inner.transfers.clone()
    }

    /// Customers: create, read, edit, list, look up by phone, timeline.
    pub fn customers(&self) -> Customers<'_> {
        Customers::new(self)
    }

    /// Visits: create for a customer, read, edit, tasks, list.
    pub fn visits(&self) -> Visits<'_> {
        Visits::new(self)
    }

    /// Quotes: create for a customer, read, lines, status changes, history, follow-ups.
    pub fn quotes(&self) -> Quotes<'_> {
        Quotes::new(self)
    }

    /// Reads any document, whatever its kind.
    pub fn document(&self, id: DocId) -> Result<Document, ClientError> {
        Ok(self.lock().document(id)?)
    }

    /// Applies any edit to document `id` (its kind must match the edit's).
    pub fn apply_edit(&self, id: impl Into<DocId>, edit: Edit) -> Result<(), ClientError> {
        self.edit_doc(id.into(), |doc, ctx| model::apply_edit(doc, &edit, ctx))
    }

    /// Runs a read-only SQL statement over the replica's projections and returns each row as
    /// a JSON object keyed by column name. Writes, transaction control, `ATTACH` and multiple
    /// statements are refused.
    ///
    /// Parameters bind to `?1`, `?2`, …: JSON strings, integers, floats, booleans (as 0/1)
    /// and null bind as themselves; arrays and objects bind as JSON text (for `json_each`).
    ///
    /// Tables: `customers`, `customer_phones`, `contacts`, `equipment`, `visits`, `tasks`,
    /// `quotes`, `quote_lines`, `conflicts`, and the view `timeline`.
    pub fn query(
        &self,
        sql: &str,
        params: &[serde_json::Value],
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, ClientError> {
        let values: Vec<rusqlite::types::Value> = params.iter().map(json_to_sql).collect();
        let refs: Vec<&dyn rusqlite::ToSql> =
            values.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
        Ok(self.lock().query_json(sql, &refs)?)
    }

    /// A receiver of a [`DocEvent`] after every committed change to a document: local edits,
    /// imports, and changes the sync driver merges. Dropping the receiver unsubscribes.
    pub fn subscribe(&self) -> mpsc::Receiver<DocEvent> {
        let (tx, rx) = mpsc::channel();
        self.inner_subscribe(tx);
        rx
    }

    fn inner_subscribe(&self, tx: mpsc::Sender<DocEvent>) {
        let mut g = self.lock();
        // Events committed before subscribing are not for this subscriber.
        g.0.forward_events();
        g.0.subscribers.push(tx);
    }

    /// Every field that holds concurrent values from different writers, across all documents.
    /// The first value of each is the one currently shown. Quote status conflicts (path
    /// `status`) are informational: the status lattice already settled them.
    pub fn conflicts(&self) -> Result<Vec<DocConflict>, ClientError> {
        Ok(self.lock().conflicts()?)
    }

    /// Downloaded documents this replica could not load (over a budget, damaged), newest
    /// first: they are kept out, the rest of each download commits, and they stay listed until
    /// a later snapshot of the document loads.
    pub fn skipped(&self) -> Result<Vec<fieldsync_core::store::Skipped>, ClientError> {
        Ok(self.lock().skipped()?)
    }

    /// Resolves a conflict by writing `value` at `path` (as listed by [`Client::conflicts`],
    /// e.g. `name` or `contacts/<id>/phone`), superseding every concurrent value. Role-owned
    /// paths need the role that owns them.
    pub fn resolve_conflict(
        &self,
        doc_id: DocId,
        path: &str,
        value: impl Into<serde_json::Value>,
    ) -> Result<(), ClientError> {
        let value = value.into();
        self.edit_doc(doc_id, |doc, ctx| {
            model::resolve_conflict(doc, path, &value, ctx)
        })
    }

    /// Sends quarantined local changes (all, or those of document `doc`) again at the next
    /// sync, once the reason the relay refused them is gone (IT widened the device's scopes
    /// or raised its role): they go back into their documents and the outbox. A change the
    /// relay still refuses comes back to the quarantine with the new reason. Changes of a
    /// document the replica no longer holds, or edited here after the refusal, stay
    /// quarantined (see [`fieldsync_core::store::StoreTx::requeue_quarantined`]). Returns how
    /// many were requeued and how many stayed.
    pub fn retry_quarantined(&self, doc: Option<DocId>) -> Result<(usize, usize), ClientError> {
        Ok(self.lock().transaction(|tx| tx.requeue_quarantined(doc))?)
    }

    /// How many local changes wait for the relay's acknowledgement.
    pub fn outbox_len(&self) -> Result<u64, ClientError> {
        let n = self.lock().outbox_len()?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// What waits for the relay: local changes, the documents they change, their bytes.
    pub fn outbox_summary(&self) -> Result<OutboxSummary, ClientError> {
        Ok(self.lock().outbox_summary()?)
    }

    /// The full Automerge bytes of a document, to hand to another replica's
    /// [`Client::import`] (by file, e-mail, USB stick, …).
    pub fn export(&self, id: DocId) -> Result<Vec<u8>, ClientError> {
        Ok(self.lock().export(id)?)
    }

    /// Merges a document exported by [`Client::export`] into this replica (creating it if
    /// new) and returns its id. Concurrent edits merge; same-field edits become conflicts.
    pub fn import(&self, bytes: &[u8]) -> Result<DocId, ClientError> {
        Ok(self.lock().import(bytes)?)
    }

    /// Checks the replica (SQLite integrity, every document loads, projections agree) and
    /// returns the problems found; empty when healthy.
    pub fn verify(&self) -> Result<Vec<String>, ClientError> {
        Ok(self.lock().verify()?)
    }

    /// Rebuilds every projection row from the documents; returns the number of documents.
    pub fn rebuild_projections(&self) -> Result<usize, ClientError> {
        Ok(self.lock().rebuild_projections()?)
    }

    /// Folds every document's incremental changes into a fresh snapshot; returns how many
    /// documents were compacted.
    pub fn compact(&self) -> Result<usize, ClientError> {
        Ok(self.lock().compact_all()?)
    }

    // -----------------------------------------------------------------------------------------
    // Helpers for the typed handles.

    /// Edits document `id` with `f` under the current identity, in one durable transaction.
    pub(crate) fn edit_doc(
        &self,
        id: impl Into<DocId>,
        f: impl FnOnce(&mut AutoCommit, &EditCtx) -> Result<(), ModelError>,
    ) -> Result<(), ClientError> {
        let id = id.into();
        let mut store = self.lock();
        let ctx = ctx_of(&store)?;
        store
            .edit(id, |doc| {
                // The edit is judged on the document it produces, by the same table the relay
                // applies: what the relay would refuse does not commit here either.
                let before = model::authority::governed_of(&*doc);
                f(doc, &ctx)?;
                model::authority::check_local(before.as_ref(), &*doc, ctx.role)
            })
            .map_err(|e| ClientError::for_doc(e, id))?;
        Ok(())
    }

    /// Runs `f` with the locked store and the edit context of the current identity.
    pub(crate) fn with_ctx<T>(
        &self,
        f: impl FnOnce(&mut Store, &Identity, &EditCtx) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut store = self.lock();
        let identity = identity_of(&store)?;
        let ctx = EditCtx::new(identity.author.clone(), identity.role);
        f(&mut store, &identity, &ctx)
    }

    /// Creates a visit or quote for `customer` in one transaction: `init` gets the new
    /// document, its id, and the customer's organisation and scope.
    pub(crate) fn create_for_customer(
        &self,
        customer: CustomerId,
        init: impl FnOnce(&mut AutoCommit, DocId, &str, &str, &EditCtx) -> Result<(), ModelError>,
    ) -> Result<DocId, ClientError> {
        let customer = customer.doc_id();
        let mut store = self.lock();
        let ctx = ctx_of(&store)?;
        let created = store.transaction(|tx| {
            let doc = tx.document(customer)?;
            let h = doc.header();
            if h.kind != DocKind::Customer {
                return Err(StoreError::WrongKind {
                    id: customer,
                    expected: DocKind::Customer,
                    actual: h.kind,
                });
            }
            let (org, scope) = (h.org.clone(), h.scope.clone());
            tx.create(DocId::new(), |doc, id| {
                init(doc, id, &org, &scope, &ctx)?;
                model::authority::check_local(None, &*doc, ctx.role)
            })
        })?;
        Ok(created.id)
    }

    /// Runs a projection query on the store's read-only connection.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ClientError> {
        let store = self.lock();
        Ok(f(store.reader())?)
    }
}

fn identity_of(store: &Store) -> Result<Identity, ClientError> {
    match store.meta(IDENTITY_META_KEY)? {
        None => Ok(Identity::default_for(store)),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Corrupt(format!("saved identity: {e}"))),
    }
}

fn ctx_of(store: &Store) -> Result<EditCtx, ClientError> {
    let identity = identity_of(store)?;
    Ok(EditCtx::new(identity.author, identity.role))
}

fn json_to_sql(v: &serde_json::Value) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Integer(i64::from(*b)),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Integer(i),
            (None, Some(f)) => Value::Real(f),
            (None, None) => Value::Text(n.to_string()),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        other => Value::Text(other.to_string()),
    }
}

/// Reads document `id` and checks it is of `kind`.
pub(crate) fn typed_document(
    store: &mut Store,
    id: impl Into<DocId>,
    kind: DocKind,
) -> Result<Document, ClientError> {
    let id = id.into();
    let doc = store.document(id)?;
    let actual = doc.header().kind;
    if actual != kind {
        return Err(ClientError::WrongKind {
            id,
            expected: kind,
            actual,
        });
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Client>();
    }

    #[test]
    fn json_params_bind_as_sql_values() {
        use rusqlite::types::Value;
        assert_eq!(json_to_sql(&serde_json::json!(null)), Value::Null);
        assert_eq!(json_to_sql(&serde_json::json!(true)), Value::Integer(1));
        assert_eq!(json_to_sql(&serde_json::json!(7)), Value::Integer(7));
        assert_eq!(json_to_sql(&serde_json::json!(1.5)), Value::Real(1.5));
        assert_eq!(
            json_to_sql(&serde_json::json!("x")),
            Value::Text("x".into())
        );
        assert_eq!(
            json_to_sql(&serde_json::json!([1, 2])),
            Value::Text("[1,2]".into())
        );
    }
}

//! The CRM document model: customers, visits and quotes as Automerge documents.
//!
//! Every document is one Automerge document with a common header (see [`Header`]) and a body
//! whose layout is fixed at creation: every container map a document will ever need is created
//! together with the document, so two offline writers never race to create the same container
//! (which Automerge would resolve by dropping one side's contents). Items inside collections
//! (contacts, equipment, quote lines, tasks, …) live in maps keyed by a fresh unique id, so both
//! sides' additions survive a merge.
//!
//! Edits are data ([`CustomerEdit`], [`VisitEdit`], [`QuoteEdit`]) applied by [`apply_edit`]
//! under an [`EditCtx`] that names the author, their role and the event time. The merge rules
//! that plain last-writer-wins would break are encoded in the layout:
//! - quote and visit status are *marks* in an add-only map; the effective status is the highest
//!   mark in the lattice ([`QuoteStatus`], [`VisitStatus`]), so a late-syncing laptop never
//!   makes a status regress;
//! - nothing is deleted: documents, lines, contacts and addresses are archived;
//! - quote totals are computed on read, never stored;
//! - role-owned fields live in the `governed` map and are written only through edits that
//!   check the author's role and record it in the `governed_log`; [`authority`] holds the one
//!   table of who may change what and judges a change by the document state it produces;
//! - a quote's statuses and approvals are bound to a revision of its content (see
//!   [`Quote`]): changing the content after submission starts a new revision.

pub(crate) mod am;
pub mod authority;
mod conflicts;
mod customer;
mod quote;
pub mod rewrite;
mod visit;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ROOT, ReadDoc};
use serde::{Deserialize, Serialize};

use crate::attachment::entry::{ATTACHMENTS_KEY, AttachmentEdit};
use crate::ids::{DocId, DocKind, GovernedField, Millis, Role};
pub use authority::{Governed, Verdict, judge};
pub use conflicts::{Conflict, conflicts, resolve_conflict};
pub use customer::{
    Address, AddressInput, Contact, ContactInput, Customer, CustomerEdit, CustomerField, Equipment,
    EquipmentInput, NewCustomer, Phone, normalize_phone,
};
pub use quote::{
    Approval, LineInput, NewQuote, Quote, QuoteEdit, QuoteField, QuoteLine, QuoteStatus,
    StatusConflict,
};
pub use visit::{
    Need, NeedInput, NewVisit, Task, TaskInput, Visit, VisitEdit, VisitField, VisitStatus,
};

/// The schema version this build writes and the newest it can read.
pub const SCHEMA_VERSION: i64 = 1;

/// Errors from reading or editing a document.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelError {
    /// Automerge refused an operation.
    #[error("automerge: {0}")]
    Automerge(String),
    /// The document lacks a field its kind requires, or holds a value of the wrong type.
    #[error("malformed document: {0}")]
    Malformed(String),
    /// The document was written by a newer schema than this build understands.
    #[error("document schema version {found} is newer than supported version {supported}")]
    SchemaTooNew {
        /// The version stored in the document.
        found: i64,
        /// The newest version this build reads.
        supported: i64,
    },
    /// The edit does not apply to a document of this kind.
    #[error("a {edit} edit cannot be applied to a {kind} document")]
    WrongKind {
        /// The kind the edit is for.
        edit: DocKind,
        /// The kind of the document.
        kind: DocKind,
    },
    /// The author's role may not write this field.
    #[error("role {role} may not set {field:?} (needs {needed})")]
    Forbidden {
        /// The author's role.
        role: Role,
        /// The field.
        field: GovernedField,
        /// The lowest role allowed.
        needed: Role,
    },
    /// An item id named by the edit does not exist in the document.
    #[error("no {what} with id {id}")]
    NoSuchItem {
        /// What kind of item.
        what: &'static str,
        /// The id.
        id: String,
    },
    /// The edit is not valid in the document's current state.
    #[error("invalid edit: {0}")]
    Invalid(String),
}

impl From<automerge::AutomergeError> for ModelError {
    fn from(e: automerge::AutomergeError) -> Self {
        Self::Automerge(e.to_string())
    }
}

/// Who writes an edit, in which role, and when (device wall-clock time, used only as an event
/// time shown to people: merges never order by it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditCtx {
    /// The user or device writing the edit.
    pub author: String,
    /// The author's role.
    pub role: Role,
    /// Event time in ms since the Unix epoch.
    pub now: Millis,
}

impl EditCtx {
    /// A context for `author` in `role` at the current time of the system clock, for callers
    /// (the model takes the time from the context it is given).
    #[allow(clippy::disallowed_methods)]
    pub fn new(author: impl Into<String>, role: Role) -> Self {
        Self::at(author, role, crate::ids::now_millis())
    }

    /// A context for `author` in `role` at time `now`.
    pub fn at(author: impl Into<String>, role: Role, now: Millis) -> Self {
        Self {
            author: author.into(),
            role,
            now,
        }
    }

    fn require(&self, field: GovernedField) -> Result<(), ModelError> {
        if self.role.may_write(field) {
            Ok(())
        } else {
            Err(ModelError::Forbidden {
                role: self.role,
                field,
                needed: field.min_role(),
            })
        }
    }
}

/// Money as integer minor units (cents, fen) plus an ISO 4217 currency code. Never a float.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// Amount in minor units.
    pub amount_minor: i64,
    /// ISO 4217 currency code, e.g. `CNY`.
    pub currency: String,
}

/// The header every document carries (`docs/DESIGN.md` §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The document id.
    pub id: DocId,
    /// The document kind.
    pub kind: DocKind,
    /// The schema version the document was written with.
    pub schema_version: i64,
    /// The organisation (manufacturer or dealer) owning the document.
    pub org: String,
    /// The territory or dealer deciding who may see the document. Visits and quotes take their
    /// customer's scope.
    pub scope: String,
    /// Who created the document.
    pub created_by: String,
    /// When it was created (device time).
    pub created_at: Millis,
    /// Archived documents are hidden from default listings but never deleted.
    pub archived: bool,
}

/// A typed document of any kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Document {
    /// A customer.
    Customer(Customer),
    /// A visit.
    Visit(Visit),
    /// A quote.
    Quote(Quote),
}

impl Document {
    /// The document header.
    pub fn header(&self) -> &Header {
        match self {
            Self::Customer(c) => &c.header,
            Self::Visit(v) => &v.header,
            Self::Quote(q) => &q.header,
        }
    }

    /// For visits and quotes, the customer they belong to.
    pub fn customer_id(&self) -> Option<DocId> {
        match self {
            Self::Customer(_) => None,
            Self::Visit(v) => Some(v.customer_id.doc_id()),
            Self::Quote(q) => Some(q.customer_id.doc_id()),
        }
    }
}

/// An edit to a document of any kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "edit", rename_all = "snake_case")]
pub enum Edit {
    /// An edit to a customer.
    Customer(CustomerEdit),
    /// An edit to a visit.
    Visit(VisitEdit),
    /// An edit to a quote.
    Quote(QuoteEdit),
    /// An edit of the attachments of a document of any kind.
    Attachment(AttachmentEdit),
}

impl Edit {
    /// The kind of document this edit applies to (`None`: any kind).
    pub fn kind(&self) -> Option<DocKind> {
        match self {
            Self::Customer(_) => Some(DocKind::Customer),
            Self::Visit(_) => Some(DocKind::Visit),
            Self::Quote(_) => Some(DocKind::Quote),
            Self::Attachment(_) => None,
        }
    }
}

/// The header of a new document, to which the kind's body is added before it is written.
fn header_init(id: DocId, kind: DocKind, org: &str, scope: &str, ctx: &EditCtx) -> am::MapInit {
    let mut m = am::MapInit::default();
    m.str("id", &id.to_string())
        .str("kind", kind.as_str())
        .int("schema_version", SCHEMA_VERSION)
        .str("org", org)
        .str("scope", scope)
        .str("created_by", &ctx.author)
        .int("created_at", ctx.now)
        .bool("archived", false)
        .empty_maps(&["governed", "governed_log", ATTACHMENTS_KEY]);
    m
}

/// Reads the header of any document.
pub fn read_header<R: ReadDoc>(doc: &R) -> Result<Header, ModelError> {
    header_from(&am::hydrate_root(doc)?)
}

fn header_from(root: &am::HMap) -> Result<Header, ModelError> {
    let version = am::hget_i64(root, "schema_version")
        .ok_or_else(|| ModelError::Malformed("missing schema_version".into()))?;
    if version > SCHEMA_VERSION {
        return Err(ModelError::SchemaTooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let kind = am::hget_str(root, "kind")
        .and_then(|k| DocKind::parse(&k))
        .ok_or_else(|| ModelError::Malformed("missing or unknown kind".into()))?;
    let id = am::hget_str(root, "id")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ModelError::Malformed("missing or invalid id".into()))?;
    Ok(Header {
        id,
        kind,
        schema_version: version,
        org: am::hget_str(root, "org").unwrap_or_default(),
        scope: am::hget_str(root, "scope").unwrap_or_default(),
        created_by: am::hget_str(root, "created_by").unwrap_or_default(),
        created_at: am::hget_i64(root, "created_at").unwrap_or(0),
        archived: am::hget_bool(root, "archived").unwrap_or(false),
    })
}

/// Reads a typed document of whatever kind the header says.
pub fn read_document<R: ReadDoc>(doc: &R) -> Result<Document, ModelError> {
    typed(&am::hydrate_root(doc)?)
}

/// [`read_document`] for a document whose nesting the caller has already bounded by
/// [`crate::budget::MAX_NESTING`]; skips the nesting walk.
pub(crate) fn read_document_within_depth<R: ReadDoc>(doc: &R) -> Result<Document, ModelError> {
    typed(&am::hydrate_root_within_depth(doc)?)
}

fn typed(root: &am::HMap) -> Result<Document, ModelError> {
    let header = header_from(root)?;
    Ok(match header.kind {
        DocKind::Customer => Document::Customer(customer::read(root, header)?),
        DocKind::Visit => Document::Visit(visit::read(root, header)?),
        DocKind::Quote => Document::Quote(quote::read(root, header)?),
    })
}

/// Creates a new customer document. The caller commits it.
pub fn create_customer(
    doc: &mut AutoCommit,
    id: DocId,
    new: &NewCustomer,
    ctx: &EditCtx,
) -> Result<(), ModelError> {
    let mut root = header_init(id, DocKind::Customer, &new.org, &new.scope, ctx);
    customer::create(&mut root, id, new, ctx.now)?;
    root.write_root(doc)
}

/// Creates a new visit document for a customer in `scope`. The caller commits it.
pub fn create_visit(
    doc: &mut AutoCommit,
    id: DocId,
    org: &str,
    scope: &str,
    new: &NewVisit,
    ctx: &EditCtx,
) -> Result<(), ModelError> {
    let mut root = header_init(id, DocKind::Visit, org, scope, ctx);
    visit::create(&mut root, new, ctx)?;
    root.write_root(doc)
}

/// Creates a new quote document for a customer in `scope`. The caller commits it.
pub fn create_quote(
    doc: &mut AutoCommit,
    id: DocId,
    org: &str,
    scope: &str,
    new: &NewQuote,
    ctx: &EditCtx,
) -> Result<(), ModelError> {
    let mut root = header_init(id, DocKind::Quote, org, scope, ctx);
    quote::create(&mut root, new, ctx)?;
    root.write_root(doc)
}

/// Applies one edit to a document, checking kind, role and state. The caller commits.
pub fn apply_edit(doc: &mut AutoCommit, edit: &Edit, ctx: &EditCtx) -> Result<(), ModelError> {
    let header = read_header(doc)?;
    if let Some(kind) = edit.kind()
        && header.kind != kind
    {
        return Err(ModelError::WrongKind {
            edit: kind,
            kind: header.kind,
        });
    }
    match edit {
        Edit::Customer(e) => customer::apply(doc, e, ctx),
        Edit::Visit(e) => visit::apply(doc, e, ctx),
        Edit::Quote(e) => quote::apply(doc, e, ctx),
        Edit::Attachment(e) => crate::attachment::entry::apply(doc, e, ctx),
    }
}

/// Sets the archived flag (soft delete; documents are never removed).
fn set_archived(doc: &mut AutoCommit, archived: bool) -> Result<(), ModelError> {
    doc.put(ROOT, "archived", archived)?;
    Ok(())
}

/// Writes a role-owned field into the `governed` map and records who wrote it in which role.
fn write_governed(
    doc: &mut AutoCommit,
    field: GovernedField,
    write: impl FnOnce(&mut AutoCommit, &ObjId) -> Result<(), ModelError>,
    ctx: &EditCtx,
) -> Result<(), ModelError> {
    ctx.require(field)?;
    let governed = am::req_map(doc, &ROOT, "governed")?;
    write(doc, &governed)?;
    let log = am::req_map(doc, &ROOT, "governed_log")?;
    let written = doc.length(&log) as u64;
    let key = derived_uuid(
        ctx.now,
        &[
            doc.get_actor().to_bytes(),
            b"governed",
            field.key().as_bytes(),
            &written.to_le_bytes(),
        ],
    );
    let entry = am::new_map(doc, &log, &key.to_string())?;
    doc.put(&entry, "field", field.key())?;
    doc.put(&entry, "role", ctx.role.as_str())?;
    doc.put(&entry, "author", ctx.author.as_str())?;
    doc.put(&entry, "at", ctx.now)?;
    Ok(())
}

/// Moves a document to another scope (role-owned: manager and above).
fn set_scope(doc: &mut AutoCommit, scope: &str, ctx: &EditCtx) -> Result<(), ModelError> {
    write_governed(
        doc,
        GovernedField::Scope,
        |d, _| {
            d.put(ROOT, "scope", scope)?;
            Ok(())
        },
        ctx,
    )
}

/// Reads an add-only set stored as a map of `key → true`.
fn read_set(root: &am::HMap, key: &str) -> Vec<String> {
    am::hget_map(root, key).map(am::hkeys).unwrap_or_default()
}

/// Adds to an add-only set stored as a map of `key → true`.
fn add_to_set(doc: &mut AutoCommit, key: &str, value: &str) -> Result<(), ModelError> {
    let set = am::req_map(doc, &ROOT, key)?;
    if value.is_empty() {
        return Err(ModelError::Invalid(format!("empty value for {key}")));
    }
    doc.put(&set, value, true)?;
    Ok(())
}

/// A note in an add-only list (customer notes, visit comments, quote notes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// Stable id.
    pub id: String,
    /// The note text.
    pub text: String,
    /// Who wrote it.
    pub author: String,
    /// When (device time).
    pub at: Millis,
}

fn add_note(
    doc: &mut AutoCommit,
    key: &str,
    id: &str,
    text: &str,
    ctx: &EditCtx,
) -> Result<(), ModelError> {
    let notes = am::req_map(doc, &ROOT, key)?;
    if am::get_map(doc, &notes, id).is_some() {
        return Err(ModelError::Invalid(format!("note {id} already exists")));
    }
    let n = am::new_map(doc, &notes, id)?;
    doc.put(&n, "text", text)?;
    doc.put(&n, "author", ctx.author.as_str())?;
    doc.put(&n, "at", ctx.now)?;
    Ok(())
}

fn read_notes(root: &am::HMap, key: &str) -> Vec<Note> {
    let Some(m) = am::hget_map(root, key) else {
        return Vec::new();
    };
    let mut notes: Vec<Note> = am::hitems(m)
        .into_iter()
        .map(|(id, n)| Note {
            text: am::hget_str(n, "text").unwrap_or_default(),
            author: am::hget_str(n, "author").unwrap_or_default(),
            at: am::hget_i64(n, "at").unwrap_or(0),
            id,
        })
        .collect();
    notes.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    notes
}

/// A fresh id for an item an app adds to a document (contact, line, task, …): a UUIDv7 from
/// the system clock and randomness. For callers of the model; the model itself never calls it
/// (see `derived_uuid`).
#[allow(clippy::disallowed_methods)]
pub fn new_item_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// An id for something the model adds on its own (a contact or unit of equipment given with a
/// new customer, a quote approval, a governed-field record), derived from the edit rather than
/// read from a clock or random source, so that an edit replays to the same change: a
/// time-ordered UUID whose time is the edit's and whose other bits hash `parts` — the writing
/// actor (one per device session) or the document, and what makes the item unique in it.
pub(crate) fn derived_uuid(now: Millis, parts: &[&[u8]]) -> uuid::Uuid {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let digest = h.finalize();
    let mut bits = [0u8; 10];
    bits.copy_from_slice(&digest[..10]);
    uuid::Builder::from_unix_timestamp_millis(u64::try_from(now).unwrap_or(0), &bits).into_uuid()
}

#[cfg(test)]
mod tests;

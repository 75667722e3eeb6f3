//! The relay's checks on one uploaded change, shared by every relay storage backend.
//!
//! A change is accepted only if it decodes within limits, its author (actor) is bound to an
//! enrolled device, its dependencies are present, the resulting document is readable, the
//! document is in the sender's scopes, and every role-owned value it changes was changed by an
//! author whose role may write it.
//!
//! One exception to the scope rule keeps offline work: when a manager moves a customer to
//! another territory, its old rep may still hold unsynced edits to it (or to its visits and
//! quotes, or new visits and quotes for it). A change whose dependencies were all on the relay
//! before the document (or its customer) left one of the sender's scopes was written before
//! the device could know of the move; the relay accepts it for a grace period (its storage
//! decides, see `left_senders_scope`), files it under the document's new scope, and the old
//! rep's replica drops the document once those changes are acknowledged.

use std::collections::HashMap;

use automerge::{AutoCommit, Change, ChangeHash};
use uuid::Uuid;

use crate::ids::{DocId, DocKind, GovernedField, Role};
use crate::model::{self, Document};
use crate::store::decode_change;

/// Typed reads of documents the relay accepted a change into, by document and heads (the
/// heads fix the whole history, so a read filed under them never goes stale). An upload
/// usually brings several changes to the same documents: each then starts from the read
/// after the one before instead of reading the document again. Shared by all connections,
/// bounded, and emptied when full.
static READ_MEMO: std::sync::Mutex<Option<Reads>> = std::sync::Mutex::new(None);

type Reads = HashMap<(DocId, Vec<ChangeHash>), Document>;

/// Most reads the memo keeps (some megabytes of typed documents).
const READ_MEMO_MAX: usize = 4096;

fn read_memo() -> std::sync::MutexGuard<'static, Option<Reads>> {
    READ_MEMO
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The typed document as it stands, from the memo when the relay read it last.
fn read_current(doc: &mut AutoCommit, id: DocId) -> Option<Document> {
    let key = (id, doc.get_heads());
    if let Some(d) = read_memo().as_ref().and_then(|m| m.get(&key).cloned()) {
        return Some(d);
    }
    model::read_document(&*doc).ok()
}

fn remember_read(id: DocId, doc: &mut AutoCommit, read: &Document) {
    let key = (id, doc.get_heads());
    let mut memo = read_memo();
    let m = memo.get_or_insert_with(HashMap::new);
    if m.len() >= READ_MEMO_MAX {
        m.clear();
    }
    m.insert(key, read.clone());
}

/// An enrolled device as the relay knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device id (the prefix of its actors).
    pub device_id: Uuid,
    /// Name given at enrolment.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Scopes the device may see; `*` means all.
    pub scopes: Vec<String>,
}

impl DeviceInfo {
    /// Whether the device may see documents of `scope`.
    pub fn sees(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == "*" || s == scope)
    }
}

/// Why a change was refused, and whether sending it again later can succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Reason for people.
    pub reason: String,
    /// Temporary refusal.
    pub retry: bool,
}

impl Refusal {
    fn permanent(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retry: false,
        }
    }
}

/// What an accepted change did to its document.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// The decoded change.
    pub change: Change,
    /// The document's kind after the change (None while the document has no header yet).
    pub kind: Option<DocKind>,
    /// The scope the document is filed under after the change.
    pub scope: Option<String>,
    /// For visits and quotes, the customer.
    pub customer_id: Option<DocId>,
    /// The scope the document had before, when the change moved it.
    pub moved_from: Option<String>,
}

/// The values of role-owned fields, compared before and after a change.
fn governed_values(doc: Option<&Document>) -> Vec<(GovernedField, String)> {
    let Some(doc) = doc else {
        return Vec::new();
    };
    let mut v = vec![(GovernedField::Scope, doc.header().scope.clone())];
    match doc {
        Document::Customer(c) => {
            v.push((GovernedField::CreditLimit, format!("{:?}", c.credit_limit)));
            v.push((
                GovernedField::PaymentTerms,
                format!("{:?}", c.payment_terms),
            ));
            v.push((GovernedField::Grade, format!("{:?}", c.grade)));
            v.push((GovernedField::Owner, format!("{:?}", c.owner)));
        }
        Document::Quote(q) => {
            v.push((GovernedField::Owner, format!("{:?}", q.owner)));
            v.push((GovernedField::QuoteApproval, format!("{:?}", q.approvals)));
        }
        Document::Visit(_) => {}
    }
    v
}

/// Governed fields a brand-new document may set at creation by any role that may create it.
fn creation_allowed(field: GovernedField) -> bool {
    matches!(field, GovernedField::Scope)
}

/// Checks one change against the relay's copy of its document and, if acceptable, applies it
/// to `doc` (which is left untouched on refusal).
///
/// - `sender`: the device uploading;
/// - `author_role`: looks up the role of the device an actor belongs to (`None` = not an
///   enrolled device); for ordinary uploads the author must be the sender itself;
/// - `relayed`: the change is being re-uploaded during repair and may be another device's;
/// - `stored_scope`: the scope the relay files this document under (for visits and quotes, the
///   customer's), if the relay knows the document;
/// - `customer_scope`: looks up a customer's current scope on the relay;
/// - `left_senders_scope(id, deps)`: whether document `id` recently left one of the sender's
///   scopes (within the relay's grace period) and every change in `deps` was on the relay
///   before it left — that is, the change was written before its author could know of the
///   move. Asked for the document, then for its customer, only when a scope is not visible.
#[allow(clippy::too_many_arguments)] // each argument is a distinct input of the relay's decision
pub fn check_change(
    doc: &mut AutoCommit,
    doc_id: DocId,
    bytes: &[u8],
    sender: &DeviceInfo,
    relayed: bool,
    author_role: &dyn Fn(Uuid) -> Option<Role>,
    stored_scope: Option<&str>,
    customer_scope: &dyn Fn(DocId) -> Option<String>,
    left_senders_scope: &dyn Fn(DocId, &[ChangeHash]) -> bool,
) -> Result<Accepted, Refusal> {
    let change = decode_change(bytes).map_err(|e| Refusal::permanent(e.to_string()))?;
    let actor = change.actor_id().to_bytes();
    let author = actor
        .get(..16)
        .and_then(|b| Uuid::from_slice(b).ok())
        .ok_or_else(|| Refusal::permanent("change author is not a device actor"))?;
    let role = if author == sender.device_id {
        sender.role
    } else if relayed {
        author_role(author)
            .ok_or_else(|| Refusal::permanent("change author is not an enrolled device"))?
    } else {
        return Err(Refusal::permanent(format!(
            "change author {author} is not the sending device {}",
            sender.device_id
        )));
    };
    if doc.get_change_by_hash(&change.hash()).is_some() {
        // Already stored: the caller reports it as accepted (idempotent re-send).
        let before = read_current(doc, doc_id);
        return Ok(Accepted {
            kind: before.as_ref().map(|d| d.header().kind),
            scope: stored_scope.map(str::to_string),
            customer_id: before.as_ref().and_then(Document::customer_id),
            moved_from: None,
            change,
        });
    }
    if let Some(missing) = change
        .deps()
        .iter()
        .find(|d| doc.get_change_by_hash(d).is_none())
    {
        return Err(Refusal {
            reason: format!("dependency {missing} is not on the relay yet"),
            retry: true,
        });
    }
    let before = read_current(doc, doc_id);
    let mut trial = doc.clone();
    crate::store::guard("applying an uploaded change", || {
        trial.apply_changes([change.clone()])
    })
    .map_err(|e| Refusal::permanent(e.to_string()))?
    .map_err(|e| Refusal::permanent(e.to_string()))?;
    // Reading the document below recurses once per nesting level (automerge's hydrate): bound
    // the depth first, without recursion, so a hostile change cannot overflow the stack.
    // Only a change that makes objects can deepen a document the relay already accepted
    // (every stored document passed this check), so most edits skip the walk.
    let makes_objects = crate::store::guard("expanding an uploaded change", || {
        change
            .decode()
            .operations
            .iter()
            .any(|op| matches!(op.action, automerge::legacy::OpType::Make(_)))
    })
    .map_err(|e| Refusal::permanent(e.to_string()))?;
    if makes_objects || before.is_none() {
        check_depth(&trial).map_err(Refusal::permanent)?;
    }
    let after = match model::read_document(&trial) {
        Ok(d) => d,
        Err(e) => {
            return Err(Refusal::permanent(format!(
                "document would be unreadable: {e}"
            )));
        }
    };
    if after.header().id != doc_id {
        return Err(Refusal::permanent("change writes another document's id"));
    }
    if let Some(b) = &before
        && (b.header().kind != after.header().kind || b.header().id != after.header().id)
    {
        return Err(Refusal::permanent(
            "change rewrites the document's identity",
        ));
    }
    // Which scope the document lives in: the relay's record, else (new document) the
    // customer's scope for visits and quotes, else the header.
    let customer_id = after.customer_id();
    let scope_before = stored_scope
        .map(str::to_string)
        .or_else(|| before.as_ref().map(|b| b.header().scope.clone()));
    let scope_after = match (&after, customer_id) {
        (Document::Customer(c), _) => c.header.scope.clone(),
        (_, Some(cid)) => customer_scope(cid).unwrap_or_else(|| after.header().scope.clone()),
        _ => after.header().scope.clone(),
    };
    let mut written_before_move: Option<bool> = None;
    for s in scope_before.iter().chain(std::iter::once(&scope_after)) {
        if sender.sees(s) {
            continue;
        }
        let excused = *written_before_move.get_or_insert_with(|| {
            !relayed
                && (left_senders_scope(doc_id, change.deps())
                    || customer_id.is_some_and(|c| left_senders_scope(c, change.deps())))
        });
        if !excused {
            return Err(Refusal::permanent(format!(
                "document is in scope `{s}`, outside the device's scopes"
            )));
        }
    }
    // Role-owned fields.
    let old = governed_values(before.as_ref());
    let new = governed_values(Some(&after));
    for (field, value) in &new {
        let previous = old.iter().find(|(f, _)| f == field).map(|(_, v)| v);
        let changed = match previous {
            Some(p) => p != value,
            None => !creation_allowed(*field) && !is_default(*field, value),
        };
        if changed && !role.may_write(*field) {
            return Err(Refusal::permanent(format!(
                "role {role} may not change {} (needs {})",
                field.key(),
                field.min_role()
            )));
        }
    }
    let moved_from = match (&scope_before, &after) {
        (Some(b), Document::Customer(_)) if *b != scope_after => Some(b.clone()),
        _ => None,
    };
    remember_read(doc_id, &mut trial, &after);
    *doc = trial;
    Ok(Accepted {
        change,
        kind: Some(after.header().kind),
        scope: Some(scope_after),
        customer_id,
        moved_from,
    })
}

/// Deepest object nesting a document may have. The document model nests a few levels
/// (`contacts/<id>/…`); automerge's recursive readers overflow a 2 MiB stack — an abort, not a
/// panic — somewhere around 10,000 levels.
pub const MAX_NESTING: usize = 64;

/// Refuses a document whose objects nest deeper than [`MAX_NESTING`], walking it with an
/// explicit stack.
fn check_depth(doc: &AutoCommit) -> Result<(), String> {
    use automerge::{ROOT, ReadDoc, Value};
    let mut stack = vec![(ROOT, 0usize)];
    while let Some((obj, depth)) = stack.pop() {
        for (value, child) in doc.values(&obj) {
            if let Value::Object(_) = value {
                if depth + 1 > MAX_NESTING {
                    return Err(format!(
                        "document nests objects deeper than {MAX_NESTING} levels"
                    ));
                }
                stack.push((child, depth + 1));
            }
        }
    }
    Ok(())
}

fn is_default(field: GovernedField, value: &str) -> bool {
    match field {
        GovernedField::QuoteApproval => value == "[]",
        _ => value == "None",
    }
}

/// A document's heads as wire hashes.
pub fn heads_of(doc: &mut AutoCommit) -> Vec<[u8; 32]> {
    doc.get_heads().into_iter().map(|h| h.0).collect()
}

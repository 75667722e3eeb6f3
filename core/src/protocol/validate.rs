//! The relay's checks on one uploaded change, shared by every relay storage backend.
//!
//! A change is accepted only if it decodes within limits, it was written by the device that
//! uploads it (or the relay recognises it from before a restore), its dependencies are present
//! and its operation counter follows from them, the resulting document is readable, the
//! document is in the sender's scopes, and the document state it produces passes the
//! authority table ([`crate::model::authority::judge`]) at the uploading device's role.
//!
//! A change never gets more authority than the authenticated device that uploads it: no
//! client-set flag raises it (a repair upload is judged like any other). A change written by
//! another device is accepted only when the relay stored it before (its hash is *vouched*, as
//! after a restore from a backup that lacks it), and then at the role of the device that
//! uploaded it the first time; otherwise only its author may upload it.
//!
//! A document outside the sender's scopes is answered exactly as a document the relay does
//! not have: the change is judged against an empty document, so a change that builds on it
//! waits for its "missing" dependencies and a refusal never names another scope.
//!
//! One exception to the scope rule keeps offline work: when a manager moves a customer to
//! another territory, its old rep may still hold unsynced edits to it (or to its visits and
//! quotes, or new visits and quotes for it). A change whose dependencies were all on the relay
//! before the document (or its customer) left one of the sender's scopes was written before
//! the device could know of the move; the relay accepts it for a grace period (its storage
//! decides, see `left_senders_scope`), files it under the document's new scope, and the old
//! rep's replica drops the document once those changes are acknowledged.

use crate::ids::ALL_SCOPES;
use std::collections::HashMap;

use automerge::{AutoCommit, Change, ChangeHash};
use uuid::Uuid;

use crate::ids::{DocId, DocKind, Role};
use crate::model::authority::{self, Governed};
use crate::model::{self, Document};

/// What the relay's checks need to know of a document as it stands: its identity, scope,
/// customer, role-owned values and how deep its objects nest. Kept per document and heads
/// (the heads fix the whole history, so facts filed under them never go stale). An upload
/// usually brings several changes to the same documents: each then starts from the facts
/// after the one before instead of reading the document again. Shared by all connections,
/// bounded, and emptied when full.
static FACTS_MEMO: std::sync::Mutex<Option<FactsMemo>> = std::sync::Mutex::new(None);

type FactsMemo = HashMap<(DocId, Vec<ChangeHash>), Facts>;

/// Most documents' facts the memo keeps (a few hundred bytes each).
const FACTS_MEMO_MAX: usize = 16_384;

/// The relay-relevant facts of one readable document.
#[derive(Clone, Debug)]
struct Facts {
    id: DocId,
    kind: DocKind,
    scope: String,
    customer_id: Option<DocId>,
    org: String,
    governed: Governed,
    /// An upper bound of the deepest object nesting, when known.
    depth: Option<usize>,
}

impl Facts {
    fn of(am_doc: &AutoCommit, doc: &Document, depth: Option<usize>) -> Self {
        Self {
            id: doc.header().id,
            kind: doc.header().kind,
            scope: doc.header().scope.clone(),
            customer_id: doc.customer_id(),
            org: doc.header().org.clone(),
            governed: Governed::of(am_doc, doc),
            depth,
        }
    }
}

fn facts_memo() -> std::sync::MutexGuard<'static, Option<FactsMemo>> {
    FACTS_MEMO
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The facts of the document as it stands (None if it is empty or unreadable), from the memo
/// when the relay saw this state before.
fn facts_now(doc: &mut AutoCommit, id: DocId) -> Option<Facts> {
    let key = (id, doc.get_heads());
    if let Some(f) = facts_memo().as_ref().and_then(|m| m.get(&key).cloned()) {
        return Some(f);
    }
    // Runs automerge's readers: a panic on a damaged document counts as unreadable.
    crate::store::guard("reading a document's facts", || {
        model::read_document(&*doc)
            .ok()
            .map(|d| Facts::of(doc, &d, None))
    })
    .ok()
    .flatten()
}

fn remember_facts(id: DocId, heads: Vec<ChangeHash>, facts: Facts) {
    let mut memo = facts_memo();
    let m = memo.get_or_insert_with(HashMap::new);
    if m.len() >= FACTS_MEMO_MAX {
        m.clear();
    }
    m.insert((id, heads), facts);
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
        self.scopes.iter().any(|s| s == ALL_SCOPES || s == scope)
    }
}

/// Why a change was refused, and whether sending it again later can succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Reason for people.
    pub reason: String,
    /// Temporary refusal.
    pub retry: bool,
    /// Automerge failed while applying the change and the document passed in could not be
    /// rolled back: the caller must drop it and load the document again from its storage.
    pub doc_lost: bool,
    /// The change does not fit its document (it failed the structural pre-check, or made
    /// automerge fail): no honest writer produces one, and the relay ends the upload there.
    pub malformed: bool,
}

impl Refusal {
    fn permanent(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retry: false,
            doc_lost: false,
            malformed: false,
        }
    }

    fn malformed(reason: impl Into<String>) -> Self {
        Self {
            malformed: true,
            ..Self::permanent(reason)
        }
    }
}

/// What an accepted change did to its document.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// The document's kind after the change (None while the document has no header yet).
    pub kind: Option<DocKind>,
    /// The scope the document is filed under after the change.
    pub scope: Option<String>,
    /// For visits and quotes, the customer.
    pub customer_id: Option<DocId>,
    /// The scope the document had before, when the change moved it.
    pub moved_from: Option<String>,
}

/// Checks one change against the relay's copy of its document and, if acceptable, applies it
/// to `doc`. On refusal `doc` is as it was, unless the refusal says `doc_lost`.
///
/// - `sender`: the device uploading; the change is judged at its role;
/// - `vouched(hash)`: for a change written by another device, the role of the device that
///   uploaded it when the relay stored it before (a restore from a backup lost it); `None`
///   refuses it — only its author may upload it;
/// - `stored_scope`: the scope the relay files this document under (for visits and quotes, the
///   customer's), if the relay knows the document;
/// - `customer_scope`: looks up a customer's current scope on the relay;
/// - `left_senders_scope(id, deps)`: whether document `id` recently left one of the sender's
///   scopes (within the relay's grace period), the sender has not yet been told so, and every
///   change in `deps` was on the relay before it left — that is, the change was written before
///   its author could know of the move. Asked for the document, then for its customer, only
///   when a scope is not visible.
#[allow(clippy::too_many_arguments)] // each argument is a distinct input of the relay's decision
pub fn check_change(
    doc: &mut AutoCommit,
    doc_id: DocId,
    change: &Change,
    sender: &DeviceInfo,
    vouched: &dyn Fn(&ChangeHash) -> Option<Role>,
    stored_scope: Option<&str>,
    customer_scope: &dyn Fn(DocId) -> Option<String>,
    left_senders_scope: &dyn Fn(DocId, &[ChangeHash]) -> bool,
) -> Result<Accepted, Refusal> {
    let actor = change.actor_id().to_bytes();
    let author = actor
        .get(..16)
        .and_then(|b| Uuid::from_slice(b).ok())
        .ok_or_else(|| Refusal::permanent("change author is not a device actor"))?;
    let role = if author == sender.device_id {
        sender.role
    } else {
        vouched(&change.hash()).ok_or_else(|| {
            Refusal::permanent(format!(
                "change was written by device {author}; only that device may upload it"
            ))
        })?
    };
    // A document the sender may not see is answered as one the relay does not have: the
    // change is judged against an empty document (so it waits for dependencies the relay
    // "lacks", or is refused for what it says itself), and a change that would create it
    // anew cannot be stored under a taken id.
    if let Some(scope) = stored_scope
        && !sender.sees(scope)
    {
        let before = facts_now(doc, doc_id);
        let excused = left_senders_scope(doc_id, change.deps())
            || before
                .as_ref()
                .and_then(|f| f.customer_id)
                .is_some_and(|c| left_senders_scope(c, change.deps()));
        if !excused {
            let mut empty = AutoCommit::new();
            let verdict = check_change(
                &mut empty,
                doc_id,
                change,
                sender,
                vouched,
                None,
                customer_scope,
                &|_, _| false,
            );
            return Err(match verdict {
                Err(refusal) => refusal,
                Ok(_) => Refusal::permanent("the document id is already in use"),
            });
        }
    }
    // `get_missing_deps` answers from the change graph; `get_change_by_hash` would rebuild
    // the change from the document's columns.
    if doc.get_missing_deps(&[change.hash()]).is_empty() {
        // Already stored: the caller reports it as accepted (idempotent re-send).
        let before = facts_now(doc, doc_id);
        return Ok(Accepted {
            kind: before.as_ref().map(|f| f.kind),
            scope: stored_scope.map(str::to_string),
            customer_id: before.as_ref().and_then(|f| f.customer_id),
            moved_from: None,
        });
    }
    // A document has one beginning: a change that depends on nothing starts a second history
    // beside it (an old history IT replaced, or a document that was never this one).
    if change.deps().is_empty() && !doc.get_heads().is_empty() {
        return Err(Refusal::permanent(
            "the change starts a second history for an existing document (its history may \
             have been replaced by IT)",
        ));
    }
    if let Some(missing) = doc.get_missing_deps(change.deps()).first() {
        return Err(Refusal {
            reason: format!("dependency {missing} is not on the relay yet"),
            retry: true,
            doc_lost: false,
            malformed: false,
        });
    }
    // The operation counter follows from the history the change builds on (as Automerge
    // writes it): a change cannot claim a higher counter to win last-writer-wins ties over
    // edits its author never saw.
    let expected = change
        .deps()
        .iter()
        .filter_map(|d| doc.get_change_meta_by_hash(d).map(|m| m.max_op))
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    if change.start_op().get() != expected {
        return Err(Refusal::permanent(format!(
            "change starts at operation {} but the history it builds on ends at {}",
            change.start_op(),
            expected - 1
        )));
    }
    // Every operation must fit the document before automerge sees it: a misfit would make it
    // panic part way, and the document would have to be loaded again.
    let structure = crate::store::precheck_change(doc, change)
        .map_err(|e| Refusal::malformed(e.to_string()))?;
    let heads_before = doc.get_heads();
    let before = facts_now(doc, doc_id);
    // Applied in place (no copy of the document per change); a refusal below rolls back.
    let applied = crate::store::guard("applying an uploaded change", || {
        doc.apply_changes([change.clone()])
    });
    let verdict = match applied {
        Ok(Ok(())) => judge(
            doc,
            doc_id,
            change,
            structure,
            sender,
            role,
            before.as_ref(),
            stored_scope,
            customer_scope,
            left_senders_scope,
        ),
        // Refused by automerge (a duplicate sequence number, say): rolled back below like
        // any refusal, in case it got part way.
        Ok(Err(e)) => Err(Refusal::permanent(e.to_string())),
        // Automerge panicked part way: the document cannot be trusted, not even to roll back.
        Err(e) => {
            return Err(Refusal {
                reason: e.to_string(),
                retry: false,
                doc_lost: true,
                malformed: true,
            });
        }
    };
    match verdict {
        Ok((scope, moved_from, facts)) => {
            let accepted = Accepted {
                kind: Some(facts.kind),
                scope: Some(scope),
                customer_id: facts.customer_id,
                moved_from,
            };
            remember_facts(doc_id, doc.get_heads(), facts);
            Ok(accepted)
        }
        Err(mut refusal) => {
            match crate::store::guard("rolling back a refused change", || {
                doc.fork_at(&heads_before)
            }) {
                Ok(Ok(rolled_back)) => *doc = rolled_back,
                _ => refusal.doc_lost = true,
            }
            Err(refusal)
        }
    }
}

/// The checks on a change already applied to `doc`: nesting, readability, identity, scopes
/// and authority. Returns the scope the document is filed under after the change, the scope it
/// moved from (if the change moved a customer) and the facts of the document after it.
#[allow(clippy::too_many_arguments)] // the inputs of `check_change`, passed on
fn judge(
    doc: &AutoCommit,
    doc_id: DocId,
    change: &Change,
    structure: crate::store::Structure,
    sender: &DeviceInfo,
    role: Role,
    before: Option<&Facts>,
    stored_scope: Option<&str>,
    customer_scope: &dyn Fn(DocId) -> Option<String>,
    left_senders_scope: &dyn Fn(DocId, &[ChangeHash]) -> bool,
) -> Result<(String, Option<String>, Facts), Refusal> {
    // Reading the document below recurses once per nesting level (automerge's hydrate): bound
    // the depth first, without recursion, so a hostile change cannot overflow the stack. The
    // walk counts every current value, conflicting ones included: deleting a winning value
    // uncovers a losing one, so a change that makes nothing can still bring up a deep object
    // — but only one the walk already counted. A change deepens the document by at most one
    // level per operation it holds, so while the known depth plus the change's operations
    // stays within the limit there is nothing to walk; a document of unknown depth is walked
    // only if the change makes objects.
    let depth = match before.and_then(|f| f.depth) {
        Some(d) if d + change.len() <= MAX_NESTING => Some(d + change.len()),
        known => {
            let makes_objects = structure.makes_objects;
            match known {
                Some(d) if !makes_objects => Some(d),
                _ if makes_objects || before.is_none() => {
                    Some(check_depth(doc).map_err(Refusal::permanent)?)
                }
                _ => None,
            }
        }
    };
    // Reading the document runs automerge's readers over content nobody has validated yet
    // (its nesting, bounded just above when known, need not be walked again).
    let after = match crate::store::guard("reading an uploaded change's document", || {
        if depth.is_some() {
            model::read_document_within_depth(doc)
        } else {
            model::read_document(doc)
        }
    }) {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            return Err(Refusal::permanent(format!(
                "document would be unreadable: {e}"
            )));
        }
        Err(e) => return Err(Refusal::permanent(e.to_string())),
    };
    let after = crate::store::guard("reading an uploaded change's authority", || {
        Facts::of(doc, &after, depth)
    })
    .map_err(|e| Refusal::permanent(e.to_string()))?;
    if after.id != doc_id {
        return Err(Refusal::permanent("change writes another document's id"));
    }
    if let Some(b) = before
        && (b.kind != after.kind
            || b.id != after.id
            || b.customer_id != after.customer_id
            || b.org != after.org)
    {
        return Err(Refusal::permanent(
            "change rewrites the document's identity",
        ));
    }
    // Authority, on the state the change produces (before scopes, so that a device moving a
    // document somewhere it cannot see learns it lacks the role).
    authority::judge(before.map(|b| &b.governed), &after.governed, role)
        .map_err(|v| Refusal::permanent(v.to_string()))?;
    // Which scope the document lives in: the relay's record, else (new document) the
    // customer's scope for visits and quotes, else the header.
    let customer_id = after.customer_id;
    let scope_before = stored_scope
        .map(str::to_string)
        .or_else(|| before.map(|b| b.scope.clone()));
    let scope_after = match (after.kind, customer_id) {
        (DocKind::Customer, _) => after.scope.clone(),
        (_, Some(cid)) => customer_scope(cid).unwrap_or_else(|| after.scope.clone()),
        _ => after.scope.clone(),
    };
    let mut written_before_move: Option<bool> = None;
    for s in scope_before.iter().chain(std::iter::once(&scope_after)) {
        if sender.sees(s) {
            continue;
        }
        let excused = *written_before_move.get_or_insert_with(|| {
            left_senders_scope(doc_id, change.deps())
                || customer_id.is_some_and(|c| left_senders_scope(c, change.deps()))
        });
        if !excused {
            // Name the scope only when the change itself wrote it (a new document created in
            // a scope the device was not granted): a scope the relay knows from elsewhere (a
            // visit's customer, a document's filing) is not the device's to learn.
            return Err(Refusal::permanent(
                if before.is_none() && *s == after.scope {
                    format!("document is in scope `{s}`, outside the device's scopes")
                } else if after.kind != DocKind::Customer && before.is_none() {
                    "the document's customer is outside the device's scopes".to_string()
                } else {
                    "document is outside the device's scopes".to_string()
                },
            ));
        }
    }
    let moved_from = match &scope_before {
        Some(b) if after.kind == DocKind::Customer && *b != scope_after => Some(b.clone()),
        _ => None,
    };
    Ok((scope_after, moved_from, after))
}

pub use crate::budget::MAX_NESTING;

/// The deepest object nesting of a document (see [`crate::budget::check_nesting`]).
fn check_depth(doc: &AutoCommit) -> Result<usize, String> {
    crate::budget::check_nesting(doc)
}

/// A document's heads as wire hashes.
pub fn heads_of(doc: &mut AutoCommit) -> Vec<[u8; 32]> {
    doc.get_heads().into_iter().map(|h| h.0).collect()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests mint ids freely
mod tests {
    use automerge::{ActorId, ObjType, ROOT, transaction::Transactable};

    use super::*;
    use crate::model::{
        CustomerEdit, CustomerField, Edit, EditCtx, Money, NewCustomer, apply_edit, create_customer,
    };

    fn device_doc(device: Uuid) -> AutoCommit {
        let mut actor = device.as_bytes().to_vec();
        actor.extend_from_slice(&[3; 8]);
        AutoCommit::new().with_actor(ActorId::from(actor))
    }

    fn last_change(doc: &mut AutoCommit, before: &[ChangeHash]) -> Vec<u8> {
        doc.commit();
        doc.get_changes(before)
            .pop()
            .expect("a change")
            .raw_bytes()
            .to_vec()
    }

    fn rep(device: Uuid) -> DeviceInfo {
        DeviceInfo {
            device_id: device,
            name: "rep".into(),
            role: Role::Rep,
            scopes: vec!["north".into()],
        }
    }

    fn check(
        relay: &mut AutoCommit,
        id: DocId,
        bytes: &[u8],
        sender: &DeviceInfo,
    ) -> Result<Accepted, Refusal> {
        let change =
            crate::store::decode_change(bytes).map_err(|e| Refusal::permanent(e.to_string()))?;
        check_change(
            relay,
            id,
            &change,
            sender,
            &|_| None,
            Some("north"),
            &|_| None,
            &|_, _| false,
        )
    }

    /// A customer written by `device` and the relay's copy holding its creating change.
    fn customer(device: Uuid) -> (DocId, AutoCommit, AutoCommit) {
        let id = DocId::new();
        let mut local = device_doc(device);
        let new = NewCustomer {
            org: "acme".into(),
            scope: "north".into(),
            name: "Steppe Quarry".into(),
            ..Default::default()
        };
        create_customer(&mut local, id, &new, &EditCtx::new("rep", Role::Rep)).expect("create");
        let create = last_change(&mut local, &[]);
        let mut relay = AutoCommit::new();
        check(&mut relay, id, &create, &rep(device)).expect("creation accepted");
        (id, local, relay)
    }

    /// A refused change (here: a rep writing a role-owned field) leaves the relay's copy as
    /// it was, and later changes apply to it as if the refused one never came.
    #[test]
    fn a_refused_change_leaves_the_document_as_it_was() {
        let device = Uuid::new_v4();
        let (id, mut local, mut relay) = customer(device);
        let heads = relay.get_heads();
        let saved = relay.save();

        let base = local.get_heads();
        let mut forged = local.fork().with_actor(local.get_actor().clone());
        apply_edit(
            &mut forged,
            &Edit::Customer(CustomerEdit::SetCreditLimit(Money {
                amount_minor: 9_000_000,
                currency: "CNY".into(),
            })),
            // The model's own check is bypassed by claiming a director's role locally.
            &EditCtx::new("rep", Role::Director),
        )
        .expect("forged edit");
        let forged = last_change(&mut forged, &base);
        let refusal = check(&mut relay, id, &forged, &rep(device)).expect_err("refused");
        assert!(
            refusal.reason.contains("may not change credit_limit"),
            "{refusal:?}"
        );
        assert!(!refusal.doc_lost && !refusal.retry, "{refusal:?}");
        assert_eq!(relay.get_heads(), heads, "rolled back");
        assert_eq!(relay.save(), saved, "the same document");

        apply_edit(
            &mut local,
            &Edit::Customer(CustomerEdit::Set(
                CustomerField::Email,
                "ops@steppe.example.cn".into(),
            )),
            &EditCtx::new("rep", Role::Rep),
        )
        .expect("edit");
        let phone = last_change(&mut local, &base);
        check(&mut relay, id, &phone, &rep(device)).expect("a later change is accepted");
        assert_eq!(relay.get_heads(), local.get_heads());
        // Re-sending it is harmless.
        check(&mut relay, id, &phone, &rep(device)).expect("re-sent change accepted");
        assert_eq!(relay.get_heads(), local.get_heads());
    }

    /// A deep object on the losing side of a conflict is counted: deleting the winning value
    /// would bring it up with a change that makes nothing (and hydrating it would overflow
    /// the stack), so the change that writes it is refused.
    #[test]
    fn nesting_hidden_in_a_conflict_is_refused() {
        let device = Uuid::new_v4();
        let (id, mut local, mut relay) = customer(device);
        let base = local.get_heads();
        let with_actor = |suffix: u8| {
            let mut actor = device.as_bytes().to_vec();
            actor.extend_from_slice(&[suffix; 8]);
            local.clone().with_actor(ActorId::from(actor))
        };
        // Same counter, higher actor: the scalar wins the conflict on `x`.
        let mut winner = with_actor(0xf0);
        winner.put(ROOT, "x", 1).expect("put");
        let scalar = last_change(&mut winner, &base);
        let mut loser = with_actor(0x01);
        let mut obj = loser.put_object(ROOT, "x", ObjType::Map).expect("map");
        for _ in 1..MAX_NESTING + 10 {
            obj = loser.put_object(&obj, "n", ObjType::Map).expect("map");
        }
        let deep = last_change(&mut loser, &base);
        check(&mut relay, id, &scalar, &rep(device)).expect("the scalar is accepted");
        let refusal = check(&mut relay, id, &deep, &rep(device)).expect_err("refused");
        assert!(refusal.reason.contains("deeper"), "{refusal:?}");
    }

    /// The depth walk is skipped while the known depth plus the change's operations stays
    /// within the limit; a change that could cross it is walked and refused if it does,
    /// by one level or by thousands.
    #[test]
    fn nesting_past_the_limit_is_refused_on_a_document_of_known_depth() {
        let device = Uuid::new_v4();
        for (levels, accepted) in [
            (4, true),
            (MAX_NESTING, true),
            (MAX_NESTING + 1, false),
            (5_000, false),
        ] {
            let (id, mut local, mut relay) = customer(device);
            let base = local.get_heads();
            let mut obj = local.put_object(ROOT, "nested", ObjType::Map).expect("map");
            for _ in 1..levels {
                obj = local.put_object(&obj, "n", ObjType::Map).expect("map");
            }
            let deep = last_change(&mut local, &base);
            let heads = relay.get_heads();
            let r = check(&mut relay, id, &deep, &rep(device));
            assert_eq!(r.is_ok(), accepted, "{levels} levels: {:?}", r.err());
            if let Err(refusal) = r {
                assert!(refusal.reason.contains("deeper"), "{refusal:?}");
                assert_eq!(relay.get_heads(), heads, "rolled back");
            }
        }
    }

    fn dev(device: Uuid, role: Role) -> DeviceInfo {
        DeviceInfo {
            device_id: device,
            name: "d".into(),
            role,
            scopes: vec!["north".into()],
        }
    }

    fn upload(
        relay: &mut AutoCommit,
        id: DocId,
        local: &mut AutoCommit,
        before: &[ChangeHash],
        sender: &DeviceInfo,
        stored: Option<&str>,
    ) -> Result<Accepted, Refusal> {
        let change = crate::store::decode_change(&last_change(local, before))
            .map_err(|e| Refusal::permanent(e.to_string()))?;
        check_change(
            relay,
            id,
            &change,
            sender,
            &|_| None,
            stored,
            &|_| None,
            &|_, _| false,
        )
    }

    #[test]
    fn a_director_sets_the_credit_limit_on_a_reps_customer() {
        let (rep, director) = (Uuid::new_v4(), Uuid::new_v4());
        let id = DocId::new();
        let mut local = device_doc(rep);
        let new = NewCustomer {
            org: "acme".into(),
            scope: "north".into(),
            name: "Steppe Quarry".into(),
            ..Default::default()
        };
        create_customer(&mut local, id, &new, &EditCtx::new("rep", Role::Rep)).expect("create");
        let mut relay = AutoCommit::new();
        upload(&mut relay, id, &mut local, &[], &dev(rep, Role::Rep), None).expect("created");
        // The director's laptop holds the relay's copy (loaded from its saved bytes).
        let mut dir_doc = AutoCommit::load(&relay.save())
            .expect("load")
            .with_actor(device_doc(director).get_actor().clone());
        let base = dir_doc.get_heads();
        apply_edit(
            &mut dir_doc,
            &Edit::Customer(CustomerEdit::SetCreditLimit(Money {
                amount_minor: 500_000_000,
                currency: "CNY".into(),
            })),
            &EditCtx::new("director", Role::Director),
        )
        .expect("edit");
        upload(
            &mut relay,
            id,
            &mut dir_doc,
            &base,
            &dev(director, Role::Director),
            Some("north"),
        )
        .expect("the director's change is accepted");
        let mut mgr = AutoCommit::load(&relay.save())
            .expect("load")
            .with_actor(device_doc(Uuid::new_v4()).get_actor().clone());
        let base = mgr.get_heads();
        apply_edit(
            &mut mgr,
            &Edit::Customer(CustomerEdit::SetScope("south".into())),
            &EditCtx::new("manager", Role::Manager),
        )
        .expect("edit");
        let mut m = dev(Uuid::nil(), Role::Manager);
        m.device_id = Uuid::from_slice(&mgr.get_actor().to_bytes()[..16]).unwrap();
        m.scopes.push("south".into());
        let mut relay = AutoCommit::load(&relay.save()).expect("reload");
        upload(&mut relay, id, &mut mgr, &base, &m, Some("north"))
            .expect("the manager's move is accepted");
    }
}

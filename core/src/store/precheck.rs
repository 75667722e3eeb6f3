//! The structural check of a change from elsewhere, before automerge applies it.
//!
//! Automerge 0.12 trusts that a change fits the document it is applied to: an operation on an
//! object the document does not hold, a map key used on a list, or a mark on a map key makes
//! `apply_changes` (or a later read) panic part way through, leaving the document in a state
//! nobody can trust. A panic is caught ([`super::guard`]), but the document must then be loaded
//! again from storage. Checking the change's operations against the document first refuses
//! such a change for the price of expanding it, with the document untouched.
//!
//! The check reads the change through `Change::decode` (under `guard`: a change whose actor
//! indexes point past its actor table panics there, before anything is applied) and resolves
//! every object an operation targets: the root, an object an earlier operation of the same
//! change makes, or one the document holds, of a kind that takes that operation's key. Tables
//! (which automerge 0.12 does not index) are refused.
//!
//! Not checked: that a list position names an element of that list (automerge offers no
//! look-up that includes deleted elements, which honest concurrent edits insert after). Such
//! a change still makes automerge panic under `guard`; the relay then reloads the document
//! once and closes the connection (see `Outcome::Malformed`).

use std::collections::HashMap;

use automerge::legacy::{Key, ObjectId, OpId, OpType};
use automerge::{AutoCommit, Change, ObjType};

use super::{StoreError, guard};

/// What the check learnt of a change that passed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Structure {
    /// The change makes at least one object (maps, lists, text): it may deepen the document.
    pub makes_objects: bool,
    /// Some change waits for dependencies the document lacks and was not checked (automerge
    /// queues it, and applies it once they arrive, possibly in this same call when a later
    /// change of the batch brings them).
    pub waiting: bool,
}

/// Checks that every operation of `change` targets an object it may address; see the module
/// docs. The document is only read.
pub fn precheck_change(doc: &mut AutoCommit, change: &Change) -> Result<Structure, StoreError> {
    precheck_changes(doc, std::slice::from_ref(change))
}

/// [`precheck_change`] for changes applied together, in causal order: a change may address
/// objects an earlier one makes. A change whose dependencies are neither in the document nor
/// earlier in `changes` is not checked: automerge queues it without applying it.
pub fn precheck_changes(doc: &mut AutoCommit, changes: &[Change]) -> Result<Structure, StoreError> {
    let mut known: HashMap<OpId, ObjType> = HashMap::new();
    let mut makes_objects = false;
    let mut waiting_any = false;
    let bad = |what: &str| StoreError::InvalidData(format!("change {what}"));
    // Changes of the batch that will be applied (every dependency applied, or ready before).
    let mut ready = std::collections::HashSet::new();
    for change in changes {
        // A change waiting for dependencies that have not arrived is only queued by automerge
        // (and guarded when it is applied later).
        let waiting = change
            .deps()
            .iter()
            .any(|d| !ready.contains(d) && doc.get_change_meta_by_hash(d).is_none());
        if waiting {
            waiting_any = true;
            continue;
        }
        ready.insert(change.hash());
        let expanded = guard("expanding a change", || change.decode())?;
        let actor = change.actor_id();
        let start = change.start_op().get();
        for (i, op) in expanded.operations.iter().enumerate() {
            let kind = match &op.obj {
                ObjectId::Root => ObjType::Map,
                ObjectId::Id(id) => match known.get(id) {
                    Some(k) => *k,
                    None => {
                        let (_, k) = doc
                            .import(&format!("{}@{}", id.0, id.1))
                            .map_err(|_| bad("writes to an object the document does not hold"))?;
                        known.insert(id.clone(), k);
                        k
                    }
                },
            };
            let sequence = matches!(kind, ObjType::List | ObjType::Text);
            match (&op.key, sequence) {
                (Key::Map(_), false) | (Key::Seq(_), true) => {}
                (Key::Map(_), true) => return Err(bad("uses a map key on a list or text")),
                (Key::Seq(_), false) => return Err(bad("uses a list position on a map")),
            }
            if op.insert && !sequence {
                return Err(bad("inserts into a map"));
            }
            match &op.action {
                OpType::MarkBegin(_) | OpType::MarkEnd(_) if !sequence => {
                    return Err(bad("marks a map key"));
                }
                // Automerge 0.12 does not index tables: an operation on one panics.
                OpType::Make(ObjType::Table) => return Err(bad("makes a table")),
                OpType::Make(k) => {
                    makes_objects = true;
                    let id = OpId(start.saturating_add(i as u64), actor.clone());
                    known.insert(id, *k);
                }
                _ => {}
            }
        }
    }
    Ok(Structure {
        makes_objects,
        waiting: waiting_any,
    })
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable as _;
    use automerge::{ActorId, ROOT, ReadDoc as _};

    use super::*;

    fn base() -> AutoCommit {
        let mut doc = AutoCommit::new().with_actor(ActorId::from(vec![1; 16]));
        doc.put(ROOT, "name", "Acme").unwrap();
        let list = doc.put_object(ROOT, "notes", ObjType::List).unwrap();
        doc.insert(&list, 0, "first").unwrap();
        let text = doc.put_object(ROOT, "about", ObjType::Text).unwrap();
        doc.splice_text(&text, 0, 0, "hello").unwrap();
        doc.commit();
        doc
    }

    /// The last change of `doc` after `edit`, and that change with `forge` applied to its
    /// operations.
    fn forged(
        doc: &AutoCommit,
        edit: impl FnOnce(&mut AutoCommit),
        forge: impl FnOnce(&mut automerge::ExpandedChange),
    ) -> (Change, Change) {
        let mut d = doc.clone().with_actor(ActorId::from(vec![2; 16]));
        let heads = d.get_heads();
        edit(&mut d);
        d.commit();
        let change = d.get_changes(&heads).pop().unwrap();
        let mut expanded = change.decode();
        forge(&mut expanded);
        (change, Change::from(expanded))
    }

    #[test]
    fn ordinary_edits_pass_and_report_whether_they_make_objects() {
        let doc = base();
        let (plain, _) = forged(&doc, |d| d.put(ROOT, "name", "Acme Ltd").unwrap(), |_| {});
        assert_eq!(
            precheck_change(&mut doc.clone(), &plain).unwrap(),
            Structure {
                makes_objects: false,
                waiting: false
            }
        );
        let (nested, _) = forged(
            &doc,
            |d| {
                let m = d.put_object(ROOT, "contacts", ObjType::Map).unwrap();
                let l = d.put_object(&m, "phones", ObjType::List).unwrap();
                d.insert(&l, 0, "555").unwrap();
                let notes = d.get(ROOT, "notes").unwrap().unwrap().1;
                d.insert(&notes, 1, "second").unwrap();
                let about = d.get(ROOT, "about").unwrap().unwrap().1;
                d.splice_text(&about, 5, 0, " world").unwrap();
            },
            |_| {},
        );
        assert!(
            precheck_change(&mut doc.clone(), &nested)
                .unwrap()
                .makes_objects
        );
    }

    #[test]
    fn operations_that_do_not_fit_the_document_are_refused() {
        let doc = base();
        let root_put = |c: &mut automerge::ExpandedChange| {
            c.operations
                .iter_mut()
                .find(|op| op.obj == ObjectId::Root)
                .unwrap()
                .clone()
        };
        // A mark on a root map key.
        let (_, mark) = forged(
            &doc,
            |d| d.put(ROOT, "name", "X").unwrap(),
            |c| {
                let op = c.operations.iter_mut().find(|op| op.obj == ObjectId::Root);
                op.unwrap().action = OpType::MarkEnd(false);
            },
        );
        let err = precheck_change(&mut doc.clone(), &mark)
            .unwrap_err()
            .to_string();
        assert!(err.contains("marks a map key"), "{err}");
        // An operation on an object nobody made.
        let (_, ghost) = forged(
            &doc,
            |d| d.put(ROOT, "name", "X").unwrap(),
            |c| {
                let mut op = root_put(c);
                op.obj = ObjectId::Id(OpId(999, ActorId::from(vec![9; 16])));
                c.operations = vec![op];
            },
        );
        let err = precheck_change(&mut doc.clone(), &ghost)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not hold"), "{err}");
        // A map key on the list.
        let notes = match doc.get(ROOT, "notes").unwrap().unwrap().1 {
            automerge::ObjId::Id(counter, actor, _) => OpId(counter, actor),
            automerge::ObjId::Root => unreachable!(),
        };
        let (_, wrong_key) = forged(
            &doc,
            |d| d.put(ROOT, "name", "X").unwrap(),
            |c| {
                let mut op = root_put(c);
                op.obj = ObjectId::Id(notes.clone());
                c.operations = vec![op];
            },
        );
        let err = precheck_change(&mut doc.clone(), &wrong_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("map key on a list"), "{err}");
    }
}

//! A document's state written as a new history, and edits carried over to it.
//!
//! Automerge keeps every operation ever made, so a document that grew past its budget (stored
//! before the budget existed, or restored from a damaged backup) does not shrink when values
//! are deleted. IT trims it on the relay (`fieldsync-relay doc trim`): [`rewrite`] writes the
//! document's current state, less the fields IT drops, as a one-change history, and the relay
//! sends that in place of the old one. Laptops then drop their copy for the new one and carry
//! over the edits the relay had not yet acknowledged with [`reapply`]: each edit is read as the
//! patches it made to the old copy and written again at the same map paths of the new one.
//!
//! Documents of this model are nested maps of scalars (collections are maps keyed by unique
//! ids), so map paths name the same place in both histories. Edits inside lists or text,
//! which the model never writes, are reported instead of guessed at.

use automerge::transaction::Transactable;
use automerge::{
    ActorId, AutoCommit, ChangeHash, ObjId, ObjType, PatchAction, Prop, ROOT, ReadDoc, ScalarValue,
    Value,
};

use crate::budget::MAX_NESTING;
use crate::model::ModelError;

/// A path of map keys from the document's root, e.g. `["notes"]` or `["contacts", "<id>"]`.
pub type MapPath = Vec<String>;

/// Parses a path written with `/` between keys (`contacts/3f2c…/phone`).
pub fn parse_path(s: &str) -> MapPath {
    s.split('/')
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Writes the current state of `src` as a new document of one change by `actor`, leaving out
/// the values at `drop` (and everything under them). Conflicting values keep only the one
/// every reader already sees; counters keep their value.
pub fn rewrite(
    src: &AutoCommit,
    actor: ActorId,
    drop: &[MapPath],
) -> Result<AutoCommit, ModelError> {
    let mut out = AutoCommit::new();
    out.set_actor(actor);
    let mut path = Vec::new();
    copy_obj(src, &ROOT, ObjType::Map, &mut out, &ROOT, drop, &mut path)?;
    out.commit();
    Ok(out)
}

fn copy_obj(
    src: &AutoCommit,
    from: &ObjId,
    kind: ObjType,
    out: &mut AutoCommit,
    to: &ObjId,
    drop: &[MapPath],
    path: &mut Vec<String>,
) -> Result<(), ModelError> {
    if path.len() > MAX_NESTING {
        return Err(ModelError::Malformed(format!(
            "nesting deeper than {MAX_NESTING} at {}",
            path.join("/")
        )));
    }
    match kind {
        ObjType::Map | ObjType::Table => {
            for key in src.keys(from).collect::<Vec<_>>() {
                path.push(key.clone());
                if !drop.iter().any(|d| d == path) {
                    match src.get(from, key.as_str())? {
                        Some((Value::Object(t), id)) => {
                            let child = out.put_object(to, key.as_str(), t)?;
                            copy_obj(src, &id, t, out, &child, drop, path)?;
                        }
                        Some((Value::Scalar(s), _)) => {
                            out.put(to, key.as_str(), current(&s))?;
                        }
                        None => {}
                    }
                }
                path.pop();
            }
        }
        ObjType::Text => {
            let text = src.text(from)?;
            out.splice_text(to, 0, 0, &text)?;
        }
        ObjType::List => {
            for i in 0..src.length(from) {
                path.push(i.to_string());
                match src.get(from, i)? {
                    Some((Value::Object(t), id)) => {
                        let child = out.insert_object(to, i, t)?;
                        copy_obj(src, &id, t, out, &child, drop, path)?;
                    }
                    Some((Value::Scalar(s), _)) => {
                        out.insert(to, i, current(&s))?;
                    }
                    None => {}
                }
                path.pop();
            }
        }
    }
    Ok(())
}

/// A scalar as it is written again: a counter starts from the value it has reached.
fn current(s: &ScalarValue) -> ScalarValue {
    match s {
        ScalarValue::Counter(c) => ScalarValue::counter(i64::from(c)),
        other => other.clone(),
    }
}

/// The largest scalar values of a document (strings and bytes), largest first: where a
/// document's size is, for IT choosing what to drop.
pub fn largest_values(doc: &AutoCommit, n: usize) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let mut path = Vec::new();
    sizes(doc, &ROOT, &mut path, &mut found);
    found.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    found.truncate(n);
    found
}

fn sizes(doc: &AutoCommit, obj: &ObjId, path: &mut Vec<String>, out: &mut Vec<(String, usize)>) {
    if path.len() > MAX_NESTING {
        return;
    }
    let entries: Vec<(String, Option<(Value<'_>, ObjId)>)> = match doc.object_type(obj) {
        Ok(ObjType::Map | ObjType::Table) => doc
            .keys(obj)
            .map(|k| {
                let v = doc.get(obj, k.as_str()).ok().flatten();
                (k, v)
            })
            .collect(),
        Ok(ObjType::List) => (0..doc.length(obj))
            .map(|i| (i.to_string(), doc.get(obj, i).ok().flatten()))
            .collect(),
        Ok(ObjType::Text) => {
            let len = doc.text(obj).map(|t| t.len()).unwrap_or(0);
            out.push((path.join("/"), len));
            return;
        }
        Err(_) => return,
    };
    for (key, value) in entries {
        path.push(key);
        match value {
            Some((Value::Object(_), id)) => sizes(doc, &id, path, out),
            Some((Value::Scalar(s), _)) => {
                let len = match s.as_ref() {
                    ScalarValue::Str(t) => t.len(),
                    ScalarValue::Bytes(b) | ScalarValue::Unknown { bytes: b, .. } => b.len(),
                    _ => 8,
                };
                out.push((path.join("/"), len));
            }
            None => {}
        }
        path.pop();
    }
}

/// What [`reapply`] carried over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reapplied {
    /// Values written to the new document.
    pub applied: usize,
    /// Edits that could not be placed, described for people (their place is gone from the
    /// new document, or they were inside a list or text).
    pub unplaced: Vec<String>,
}

/// Writes into `new` what the changes `pending` of `old` did: the patches between `old`
/// without them and `old` with them, at the same map paths. The caller commits `new` (with
/// its own actor) to make the carried-over edits one new change. Pending changes `old` does
/// not hold are ignored.
pub fn reapply(
    old: &mut AutoCommit,
    pending: &[ChangeHash],
    new: &mut AutoCommit,
) -> Result<Reapplied, ModelError> {
    let held: Vec<ChangeHash> = pending
        .iter()
        .filter(|h| old.get_change_by_hash(h).is_some())
        .copied()
        .collect();
    let mut done = Reapplied::default();
    if held.is_empty() {
        return Ok(done);
    }
    // The document as it was without the pending changes: everything they depend on, and
    // every head that is not one of them.
    let mut base: Vec<ChangeHash> = Vec::new();
    for h in &held {
        if let Some(c) = old.get_change_by_hash(h) {
            base.extend(c.deps().iter().filter(|d| !held.contains(d)));
        }
    }
    base.extend(old.get_heads().into_iter().filter(|h| !held.contains(h)));
    base.sort();
    base.dedup();
    let after = old.get_heads();
    for patch in old.diff(&base, &after) {
        let mut place = Vec::with_capacity(patch.path.len());
        let mut obj = Some(ROOT);
        for (_, prop) in &patch.path {
            place.push(prop.to_string());
            obj = match (obj, prop) {
                (Some(o), Prop::Map(k)) => match new.get(&o, k.as_str())? {
                    Some((Value::Object(ObjType::Map | ObjType::Table), id)) => Some(id),
                    _ => None,
                },
                _ => None,
            };
        }
        let describe = |what: &str, place: &[String]| format!("{what} at /{}", place.join("/"));
        let Some(obj) = obj else {
            done.unplaced
                .push(describe("an edit whose place is gone", &place));
            continue;
        };
        match patch.action {
            PatchAction::PutMap {
                key,
                value: (value, _),
                ..
            } => {
                match value {
                    Value::Object(t) => {
                        let exists = matches!(
                            new.get(&obj, key.as_str())?,
                            Some((Value::Object(have), _)) if have == t
                        );
                        if !exists {
                            new.put_object(&obj, key.as_str(), t)?;
                        }
                    }
                    Value::Scalar(s) => new.put(&obj, key.as_str(), s.into_owned())?,
                }
                done.applied += 1;
            }
            PatchAction::DeleteMap { key } => {
                if new.get(&obj, key.as_str())?.is_some() {
                    new.delete(&obj, key.as_str())?;
                }
                done.applied += 1;
            }
            PatchAction::Increment {
                prop: Prop::Map(key),
                value,
            } => {
                if let Some((Value::Scalar(s), _)) = new.get(&obj, key.as_str())?
                    && matches!(s.as_ref(), ScalarValue::Counter(_))
                {
                    new.increment(&obj, key.as_str(), value)?;
                    done.applied += 1;
                } else {
                    place.push(key);
                    done.unplaced.push(describe(
                        "a counter increment whose counter is gone",
                        &place,
                    ));
                }
            }
            // Which value wins a conflict, and marks, are not edits of their own.
            PatchAction::Conflict { .. } | PatchAction::Mark { .. } => {}
            other => done.unplaced.push(describe(
                &format!("a list or text edit ({})", kind(&other)),
                &place,
            )),
        }
    }
    Ok(done)
}

fn kind(a: &PatchAction) -> &'static str {
    match a {
        PatchAction::PutSeq { .. } => "put",
        PatchAction::Insert { .. } => "insert",
        PatchAction::SpliceText { .. } => "text",
        PatchAction::DeleteSeq { .. } => "delete",
        PatchAction::Increment { .. } => "increment",
        _ => "other",
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests mint ids freely
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, AutoCommit, ChangeHash, ObjType, ROOT, ReadDoc};

    use super::{parse_path, reapply, rewrite};
    use crate::ids::{DocId, Role};
    use crate::model::{
        ContactInput, Customer, CustomerEdit, CustomerField, Document, Edit, EditCtx, NewCustomer,
        apply_edit, create_customer, read_document,
    };

    fn ctx() -> EditCtx {
        EditCtx {
            author: "rep-1".into(),
            role: Role::Rep,
            now: 1_700_000_000_000,
        }
    }

    fn customer_doc() -> AutoCommit {
        let mut doc = AutoCommit::new();
        create_customer(
            &mut doc,
            DocId::new(),
            &NewCustomer {
                org: "acme".into(),
                scope: "north".into(),
                name: "Baotou Mining Co".into(),
                ..Default::default()
            },
            &ctx(),
        )
        .expect("create");
        doc.commit();
        doc
    }

    fn edit(doc: &mut AutoCommit, e: CustomerEdit) {
        apply_edit(doc, &Edit::Customer(e), &ctx()).expect("edit");
        doc.commit();
    }

    fn customer(doc: &AutoCommit) -> Customer {
        match read_document(doc).expect("read") {
            Document::Customer(c) => c,
            other => panic!("not a customer: {other:?}"),
        }
    }

    #[test]
    fn rewrite_keeps_the_state_without_the_history_or_the_dropped_values() {
        let mut doc = customer_doc();
        for i in 0..200 {
            edit(
                &mut doc,
                CustomerEdit::Set(CustomerField::Name, format!("Name {i} {}", "x".repeat(200))),
            );
        }
        edit(
            &mut doc,
            CustomerEdit::AddContact(
                "c1".into(),
                ContactInput {
                    name: Some("Li Wei".into()),
                    ..Default::default()
                },
            ),
        );
        doc.put(ROOT, "junk", "y".repeat(50_000)).expect("put");
        doc.commit();
        let mut new = rewrite(&doc, ActorId::random(), &[parse_path("/junk/")]).expect("rewrite");
        assert_eq!(new.get_changes(&[]).len(), 1, "one change holds the state");
        assert_eq!(customer(&new), customer(&doc), "every field kept");
        assert!(new.get(ROOT, "junk").expect("get").is_none(), "dropped");
        let raw = |d: &mut AutoCommit| -> usize {
            d.get_changes(&[]).iter().map(|c| c.raw_bytes().len()).sum()
        };
        let (before, after) = (raw(&mut doc), raw(&mut new));
        assert!(after * 20 < before, "{after} vs {before} raw bytes");
    }

    #[test]
    fn reapply_carries_unacknowledged_edits_over_to_the_new_history() {
        let mut old = customer_doc();
        let acknowledged = old.get_heads();
        // The relay's copy is trimmed while this laptop has two edits it has not sent yet.
        let mut new = rewrite(&old, ActorId::random(), &[]).expect("rewrite");
        edit(
            &mut old,
            CustomerEdit::Set(CustomerField::Name, "Baotou Mining Group".into()),
        );
        edit(
            &mut old,
            CustomerEdit::AddContact(
                "c1".into(),
                ContactInput {
                    name: Some("Li Wei".into()),
                    phone: Some("+86 472 555 0101".into()),
                    ..Default::default()
                },
            ),
        );
        let pending: Vec<ChangeHash> = old
            .get_changes(&acknowledged)
            .iter()
            .map(|c| c.hash())
            .collect();
        new.set_actor(ActorId::random());
        let before = new.get_heads();
        let done = reapply(&mut old, &pending, &mut new).expect("reapply");
        new.commit();
        assert!(done.unplaced.is_empty(), "{done:?}");
        assert!(done.applied >= 3, "{done:?}");
        assert_eq!(new.get_changes(&before).len(), 1, "one new change");
        let (was, is) = (customer(&old), customer(&new));
        assert_eq!(is.name, "Baotou Mining Group");
        assert_eq!(is.contacts, was.contacts);
    }

    #[test]
    fn reapply_reports_an_edit_whose_place_is_gone() {
        let mut old = customer_doc();
        let extra = old.put_object(ROOT, "extra", ObjType::Map).expect("map");
        old.commit();
        let acknowledged = old.get_heads();
        let mut new = rewrite(&old, ActorId::random(), &[parse_path("extra")]).expect("rewrite");
        old.put(&extra, "k", "v").expect("put");
        old.commit();
        let pending: Vec<ChangeHash> = old
            .get_changes(&acknowledged)
            .iter()
            .map(|c| c.hash())
            .collect();
        let done = reapply(&mut old, &pending, &mut new).expect("reapply");
        assert_eq!(done.applied, 0);
        assert_eq!(done.unplaced.len(), 1, "{done:?}");
        assert!(done.unplaced[0].contains("/extra"), "{done:?}");
    }
}

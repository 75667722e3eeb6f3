//! Same-field conflicts: concurrent writes of different values to one field.
//!
//! Automerge keeps every concurrent value of a map key and picks a deterministic winner. The
//! loser is not lost: [`conflicts`] lists every field that currently holds more than one
//! distinct value, and [`resolve_conflict`] writes a new value that supersedes all of them.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value, ValueRef};
use serde::{Deserialize, Serialize};

use super::{EditCtx, ModelError, am, write_governed};
use crate::ids::GovernedField;

/// Maps whose keys form an add-wins set or an add-only log: concurrent writes there are merges,
/// not conflicts.
const SET_LIKE: &[&str] = &[
    "status_marks",
    "phones",
    "product_lines",
    "competitors",
    "contacts_met",
    "governed_log",
];

/// Deepest map level the scan descends to. fieldsync documents nest a few levels
/// (`contacts/<id>/phone`); a hostile change can nest thousands of maps, and an unbounded
/// recursion would overflow the stack, which aborts the process instead of panicking.
const MAX_DEPTH: usize = 32;

/// One field holding several concurrent values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// Slash-separated path of map keys, e.g. `contacts/0193…/phone`.
    pub path: String,
    /// The distinct values; the first is the one currently shown.
    pub values: Vec<serde_json::Value>,
}

/// Lists every field with more than one distinct concurrent value.
pub fn conflicts<R: ReadDoc>(doc: &R) -> Vec<Conflict> {
    let mut out = Vec::new();
    walk(doc, &ROOT, "", 0, &mut out);
    out
}

fn walk<R: ReadDoc>(doc: &R, obj: &ObjId, prefix: &str, depth: usize, out: &mut Vec<Conflict>) {
    // One pass over the map: `map_range` flags keys holding several concurrent values, so only
    // those pay for `get_all` (a lookup per key made this scan the largest cost of applying a
    // downloaded document).
    for item in doc.map_range(obj, ..) {
        let key = item.key.as_ref();
        if !item.conflict {
            if let ValueRef::Object(ObjType::Map) = item.value
                && !SET_LIKE.contains(&key)
                && depth < MAX_DEPTH
            {
                let path = if prefix.is_empty() {
                    key.to_string()
                } else {
                    format!("{prefix}/{key}")
                };
                walk(doc, &item.id(), &path, depth + 1, out);
            }
            continue;
        }
        let key = key.to_string();
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}/{key}")
        };
        let Ok(mut all) = doc.get_all(obj, key.as_str()) else {
            continue;
        };
        let shown = if all.len() > 1 {
            let json = |v: &Value<'_>| match v {
                Value::Scalar(s) => am::scalar_json(s),
                Value::Object(t) => serde_json::Value::String(format!("<{t:?}>")),
            };
            // The value `get` shows goes first (`get_all` lists it last, in op order).
            let shown = doc.get(obj, key.as_str()).ok().flatten();
            let mut values: Vec<serde_json::Value> = Vec::new();
            if let Some((v, _)) = &shown {
                values.push(json(v));
            }
            for (v, _) in &all {
                let j = json(v);
                if !values.contains(&j) {
                    values.push(j);
                }
            }
            if values.len() > 1 {
                out.push(Conflict {
                    path: path.clone(),
                    values,
                });
            }
            shown
        } else {
            all.pop()
        };
        if SET_LIKE.contains(&key.as_str()) {
            continue;
        }
        if let Some((Value::Object(ObjType::Map), child)) = shown
            && depth < MAX_DEPTH
        {
            walk(doc, &child, &path, depth + 1, out);
        }
    }
}

/// Resolves a conflict (or simply sets a field) by writing `value` at `path`, superseding every
/// concurrent value. Role-owned paths (`governed/…`, `scope`) need the role that owns them.
pub fn resolve_conflict(
    doc: &mut AutoCommit,
    path: &str,
    value: &serde_json::Value,
    ctx: &EditCtx,
) -> Result<(), ModelError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some((last, parents)) = parts.split_last() else {
        return Err(ModelError::Invalid("empty path".into()));
    };
    if parents
        .iter()
        .chain(std::iter::once(last))
        .any(|p| SET_LIKE.contains(p))
    {
        return Err(ModelError::Invalid(format!(
            "`{path}` is a set, not a field"
        )));
    }
    let scalar = match value {
        serde_json::Value::String(s) => ScalarValue::Str(s.as_str().into()),
        serde_json::Value::Bool(b) => ScalarValue::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int(i),
            None => return Err(ModelError::Invalid("numbers must be integers".into())),
        },
        serde_json::Value::Null => ScalarValue::Null,
        _ => {
            return Err(ModelError::Invalid(
                "only scalar values can be written".into(),
            ));
        }
    };
    let mut obj = ROOT;
    for p in parents {
        obj = am::get_map(doc, &obj, p)
            .ok_or_else(|| ModelError::Invalid(format!("no map `{p}` on the path `{path}`")))?;
    }
    match doc.get(&obj, *last) {
        Ok(Some((Value::Scalar(_), _))) => {}
        _ => return Err(ModelError::Invalid(format!("`{path}` is not a field"))),
    }
    let governed = match (parents.first(), parents.len()) {
        (None, 0) if *last == "scope" => Some(GovernedField::Scope),
        (Some(&"governed"), 1) => Some(match *last {
            "owner" => GovernedField::Owner,
            "grade" => GovernedField::Grade,
            "payment_terms" => GovernedField::PaymentTerms,
            _ => GovernedField::CreditLimit,
        }),
        _ => None,
    };
    if parents.is_empty() && ["id", "kind", "schema_version", "customer_id"].contains(last) {
        return Err(ModelError::Invalid(format!("`{path}` is immutable")));
    }
    match governed {
        Some(field) => write_governed(
            doc,
            field,
            |d, _| {
                d.put(&obj, *last, scalar.clone())?;
                Ok(())
            },
            ctx,
        ),
        None => {
            doc.put(&obj, *last, scalar)?;
            Ok(())
        }
    }
}

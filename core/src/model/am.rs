//! Small typed helpers over Automerge maps, so the model code reads like field access.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ObjType, ReadDoc, ScalarValue, Value};

use crate::model::ModelError;

/// A scalar read from a map key, or `None` if absent or not a scalar.
pub(crate) fn scalar<R: ReadDoc>(d: &R, obj: &ObjId, key: &str) -> Option<ScalarValue> {
    match d.get(obj, key) {
        Ok(Some((Value::Scalar(s), _))) => Some(s.into_owned()),
        _ => None,
    }
}

pub(crate) fn get_i64<R: ReadDoc>(d: &R, obj: &ObjId, key: &str) -> Option<i64> {
    match scalar(d, obj, key)? {
        ScalarValue::Int(i) => Some(i),
        ScalarValue::Uint(u) => i64::try_from(u).ok(),
        ScalarValue::Counter(c) => Some(i64::from(&c)),
        ScalarValue::Timestamp(t) => Some(t),
        _ => None,
    }
}

/// The id of the map stored at `key`, if the value there is a map.
pub(crate) fn get_map<R: ReadDoc>(d: &R, obj: &ObjId, key: &str) -> Option<ObjId> {
    match d.get(obj, key) {
        Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
        _ => None,
    }
}

/// Like [`get_map`] but an error naming the missing container: every container a document
/// needs is created with the document, so a missing one means a foreign or damaged document.
pub(crate) fn req_map<R: ReadDoc>(d: &R, obj: &ObjId, key: &str) -> Result<ObjId, ModelError> {
    get_map(d, obj, key).ok_or_else(|| ModelError::Malformed(format!("missing map `{key}`")))
}

/// Keys of a map in their (sorted) document order.
pub(crate) fn keys<R: ReadDoc>(d: &R, obj: &ObjId) -> Vec<String> {
    d.keys(obj).collect()
}

/// Writes an optional string: `None` writes nothing.
pub(crate) fn put_opt_str(
    doc: &mut AutoCommit,
    obj: &ObjId,
    key: &str,
    v: Option<&str>,
) -> Result<(), ModelError> {
    if let Some(v) = v {
        doc.put(obj, key, v)?;
    }
    Ok(())
}

pub(crate) fn put_opt_i64(
    doc: &mut AutoCommit,
    obj: &ObjId,
    key: &str,
    v: Option<i64>,
) -> Result<(), ModelError> {
    if let Some(v) = v {
        doc.put(obj, key, v)?;
    }
    Ok(())
}

/// Creates a new empty map at `key` (only ever called for containers made together with the
/// document, or for items keyed by a fresh unique id, so no two writers race to create one).
pub(crate) fn new_map(doc: &mut AutoCommit, obj: &ObjId, key: &str) -> Result<ObjId, ModelError> {
    Ok(doc.put_object(obj, key, ObjType::Map)?)
}

/// A JSON rendering of a scalar, for conflict reports and projections.
pub(crate) fn scalar_json(s: &ScalarValue) -> serde_json::Value {
    match s {
        ScalarValue::Str(s) => serde_json::Value::String(s.to_string()),
        ScalarValue::Int(i) => (*i).into(),
        ScalarValue::Uint(u) => (*u).into(),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        ScalarValue::Boolean(b) => (*b).into(),
        ScalarValue::Timestamp(t) => (*t).into(),
        ScalarValue::Counter(c) => i64::from(c).into(),
        ScalarValue::Null => serde_json::Value::Null,
        ScalarValue::Bytes(b) => serde_json::Value::String(hex::encode(b)),
        ScalarValue::Unknown { bytes, .. } => serde_json::Value::String(hex::encode(bytes)),
    }
}

/// A map built in memory and written into a fresh document in one batch
/// (`init_root_from_hydrate`), several times faster than one `put` per field.
#[derive(Default)]
pub(crate) struct MapInit(std::collections::HashMap<String, automerge::hydrate::Value>);

impl MapInit {
    pub(crate) fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.0
            .insert(key.to_string(), automerge::hydrate::Value::scalar(v));
        self
    }

    pub(crate) fn opt_str(&mut self, key: &str, v: Option<&str>) -> &mut Self {
        if let Some(v) = v {
            self.str(key, v);
        }
        self
    }

    pub(crate) fn int(&mut self, key: &str, v: i64) -> &mut Self {
        self.0
            .insert(key.to_string(), automerge::hydrate::Value::scalar(v));
        self
    }

    pub(crate) fn opt_int(&mut self, key: &str, v: Option<i64>) -> &mut Self {
        if let Some(v) = v {
            self.int(key, v);
        }
        self
    }

    pub(crate) fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.0
            .insert(key.to_string(), automerge::hydrate::Value::scalar(v));
        self
    }

    pub(crate) fn map(&mut self, key: &str, m: Self) -> &mut Self {
        self.0
            .insert(key.to_string(), automerge::hydrate::Value::Map(m.0.into()));
        self
    }

    pub(crate) fn empty_maps(&mut self, keys: &[&str]) -> &mut Self {
        for k in keys {
            self.map(k, Self::default());
        }
        self
    }

    /// Writes the map as the root of an empty document.
    pub(crate) fn write_root(self, doc: &mut AutoCommit) -> Result<(), ModelError> {
        doc.init_root_from_hydrate(&self.0.into())?;
        Ok(())
    }
}

// Readers over a hydrated document (`ReadDoc::hydrate`): one pass over the document builds an
// in-memory tree, and typed reads then cost a hash lookup each instead of an op-set query.

/// A hydrated map.
pub(crate) type HMap = automerge::hydrate::Map;

/// Hydrates the whole document. Automerge's hydration recurses once per nesting level and a
/// deep enough document overflows the stack (an abort, not a panic), so the nesting is checked
/// first, without recursion: a document deeper than [`crate::budget::MAX_NESTING`] reads as
/// malformed, whoever wrote it (a hostile peer, a tampered backup).
pub(crate) fn hydrate_root<R: ReadDoc>(d: &R) -> Result<HMap, ModelError> {
    crate::budget::check_nesting(d).map_err(ModelError::Malformed)?;
    hydrate_root_within_depth(d)
}

/// [`hydrate_root`] for a document whose nesting the caller has already bounded by
/// [`crate::budget::MAX_NESTING`] (the relay knows it for every document it validates): skips
/// the walk, which costs about as much as the hydration itself.
pub(crate) fn hydrate_root_within_depth<R: ReadDoc>(d: &R) -> Result<HMap, ModelError> {
    match d.hydrate(automerge::ROOT, None)? {
        automerge::hydrate::Value::Map(m) => Ok(m),
        _ => Err(ModelError::Malformed("root is not a map".into())),
    }
}

fn hscalar<'a>(m: &'a HMap, key: &str) -> Option<&'a ScalarValue> {
    match m.get(key) {
        Some(automerge::hydrate::Value::Scalar(s)) => Some(s),
        _ => None,
    }
}

pub(crate) fn hget_str(m: &HMap, key: &str) -> Option<String> {
    match hscalar(m, key)? {
        ScalarValue::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

pub(crate) fn hget_i64(m: &HMap, key: &str) -> Option<i64> {
    match hscalar(m, key)? {
        ScalarValue::Int(i) => Some(*i),
        ScalarValue::Uint(u) => i64::try_from(*u).ok(),
        ScalarValue::Counter(c) => Some(i64::from(c)),
        ScalarValue::Timestamp(t) => Some(*t),
        _ => None,
    }
}

pub(crate) fn hget_bool(m: &HMap, key: &str) -> Option<bool> {
    match hscalar(m, key)? {
        ScalarValue::Boolean(b) => Some(*b),
        _ => None,
    }
}

pub(crate) fn hget_map<'a>(m: &'a HMap, key: &str) -> Option<&'a HMap> {
    match m.get(key) {
        Some(automerge::hydrate::Value::Map(c)) => Some(c),
        _ => None,
    }
}

/// Keys in sorted order (the document's own map order).
pub(crate) fn hkeys(m: &HMap) -> Vec<String> {
    let mut k: Vec<String> = m.iter().map(|(k, _)| k.clone()).collect();
    k.sort();
    k
}

/// The entries of an id-keyed map of maps, sorted by id.
pub(crate) fn hitems(m: &HMap) -> Vec<(String, &HMap)> {
    let mut v: Vec<(String, &HMap)> = m
        .iter()
        .filter_map(|(k, v)| match &v.value {
            automerge::hydrate::Value::Map(c) => Some((k.clone(), c)),
            _ => None,
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

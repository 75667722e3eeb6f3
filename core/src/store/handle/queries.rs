//! SQL over the projections: the read-only connection apps query, rows as JSON, and the fields
//! with concurrent values.

use rusqlite::Connection;

use super::Store;
use crate::ids::DocKind;
use crate::store::{DocConflict, StoreError};

impl Store {
    /// Every field with concurrent values, from the `conflicts` projection.
    pub fn conflicts(&self) -> Result<Vec<DocConflict>, StoreError> {
        let mut st = self.reader.prepare_cached(
            "SELECT doc_id, kind, path, value_json FROM conflicts ORDER BY doc_id, path",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind, path, values) = row?;
            let (Ok(doc_id), Some(kind)) = (id.parse(), DocKind::parse(&kind)) else {
                continue;
            };
            out.push(DocConflict {
                doc_id,
                kind,
                path,
                values: serde_json::from_str(&values).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// A read-only connection to the replica for SQL over the projections. Writes through it
    /// fail with `SQLITE_READONLY`.
    pub fn reader(&self) -> &Connection {
        &self.reader
    }

    /// Runs a read-only SQL query and returns each row as a JSON object keyed by column name.
    pub fn query_json(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, StoreError> {
        let mut st = self.reader.prepare(sql)?;
        if !st.readonly() {
            return Err(StoreError::Query(
                "only read-only statements are allowed".into(),
            ));
        }
        // BEGIN, SAVEPOINT, ATTACH and setter pragmas count as read-only but return no
        // columns; a BEGIN would pin the reader to a stale snapshot, so refuse them all.
        if st.column_count() == 0 {
            return Err(StoreError::Query(
                "only statements that return rows are allowed".into(),
            ));
        }
        let names: Vec<String> = st.column_names().map(str::to_string).collect();
        let mut rows = st.query(params)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut obj = serde_json::Map::new();
            for (i, name) in names.iter().enumerate() {
                use rusqlite::types::ValueRef;
                let v = match row.get_ref(i)? {
                    ValueRef::Null => serde_json::Value::Null,
                    ValueRef::Integer(n) => n.into(),
                    ValueRef::Real(f) => serde_json::Number::from_f64(f)
                        .map(serde_json::Value::Number)
                        .unwrap_or(serde_json::Value::Null),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                    ValueRef::Blob(b) => hex::encode(b).into(),
                };
                obj.insert(name.clone(), v);
            }
            out.push(obj);
        }
        Ok(out)
    }
}

//! Typed projection rows derived from documents, written in the same transaction as the change.
//! [`project`] reads a document (guarded, as downloaded content may be hostile) and brings its
//! rows in line; [`write`] and [`clear`] are the SQL underneath. A write compares each table's
//! rows with the stored ones and writes only what differs.

use automerge::AutoCommit;
use rusqlite::Connection;
use rusqlite::types::Value;

use super::{StoreError, guard};
use crate::model::{self, Conflict, Document, ModelError};

const TABLES_BY_DOC: &[(&str, &str)] = &[
    ("customers", "id"),
    ("customer_phones", "customer_id"),
    ("contacts", "customer_id"),
    ("equipment", "customer_id"),
    ("visits", "id"),
    ("tasks", "visit_id"),
    ("quotes", "id"),
    ("quote_lines", "quote_id"),
    ("conflicts", "doc_id"),
];

/// Removes every projection row of a document.
pub(crate) fn clear(tx: &Connection, id: &str) -> rusqlite::Result<()> {
    for (table, col) in TABLES_BY_DOC {
        tx.prepare_cached(&format!("DELETE FROM {table} WHERE {col} = ?1"))?
            .execute([id])?;
    }
    Ok(())
}

/// The rows one table holds for a document.
struct Rows {
    table: &'static str,
    /// The column naming the document.
    key: &'static str,
    cols: &'static [&'static str],
    /// The table holds one row per document, keyed by `key` (else any number).
    single: bool,
    rows: Vec<Vec<Value>>,
}

const CUSTOMER_COLS: &[&str] = &[
    "id",
    "name",
    "short_name",
    "industry",
    "business_type",
    "size",
    "source",
    "stage",
    "email",
    "org",
    "scope",
    "owner",
    "grade",
    "credit_limit_minor",
    "credit_currency",
    "payment_terms",
    "created_by",
    "created_at",
    "archived",
];
const PHONE_COLS: &[&str] = &["customer_id", "normalized", "raw", "contact_id"];
const CONTACT_COLS: &[&str] = &[
    "id",
    "customer_id",
    "name",
    "title",
    "phone",
    "email",
    "is_purchaser",
    "active",
];
const EQUIPMENT_COLS: &[&str] = &[
    "id",
    "customer_id",
    "model",
    "serial",
    "status",
    "installed_at",
];
const VISIT_COLS: &[&str] = &[
    "id",
    "customer_id",
    "kind",
    "status",
    "at",
    "location",
    "notes",
    "satisfaction",
    "scope",
    "created_by",
    "created_at",
    "archived",
];
const TASK_COLS: &[&str] = &[
    "id",
    "visit_id",
    "customer_id",
    "title",
    "due",
    "assignee",
    "done_at",
];
const QUOTE_COLS: &[&str] = &[
    "id",
    "customer_id",
    "quote_no",
    "status",
    "status_conflict",
    "currency",
    "total_minor",
    "owner",
    "scope",
    "valid_until",
    "sent_at",
    "follow_up_due",
    "customer_response",
    "created_by",
    "created_at",
    "archived",
];
const LINE_COLS: &[&str] = &[
    "quote_id",
    "line_id",
    "customer_id",
    "sku",
    "description",
    "qty",
    "unit_price_minor",
    "discount_bp",
    "total_minor",
    "currency",
    "sort_key",
    "created_at",
    "archived",
];
const CONFLICT_COLS: &[&str] = &["doc_id", "kind", "path", "value_json"];

/// A value for a row (`None` is NULL).
fn v<T: Into<Value>>(x: T) -> Value {
    x.into()
}

/// The projection rows `doc` gives, table by table.
fn rows_of(doc: &Document, conflicts: &[Conflict]) -> Vec<Rows> {
    let h = doc.header();
    let id = h.id.to_string();
    let mut out = Vec::with_capacity(5);
    match doc {
        Document::Customer(c) => {
            out.push(Rows {
                table: "customers",
                key: "id",
                cols: CUSTOMER_COLS,
                single: true,
                rows: vec![vec![
                    v(id.clone()),
                    v(c.name.clone()),
                    v(c.short_name.clone()),
                    v(c.industry.clone()),
                    v(c.business_type.clone()),
                    v(c.size.clone()),
                    v(c.source.clone()),
                    v(c.stage.clone()),
                    v(c.email.clone()),
                    v(h.org.clone()),
                    v(h.scope.clone()),
                    v(c.owner.clone()),
                    v(c.grade.clone()),
                    v(c.credit_limit.as_ref().map(|m| m.amount_minor)),
                    v(c.credit_limit.as_ref().map(|m| m.currency.clone())),
                    v(c.payment_terms.clone()),
                    v(h.created_by.clone()),
                    v(h.created_at),
                    v(h.archived),
                ]],
            });
            let mut phones: Vec<Vec<Value>> = c
                .phones
                .iter()
                .map(|p| {
                    vec![
                        v(id.clone()),
                        v(p.normalized.clone()),
                        v(p.raw.clone()),
                        Value::Null,
                    ]
                })
                .collect();
            let mut contacts = Vec::with_capacity(c.contacts.len());
            for k in &c.contacts {
                contacts.push(vec![
                    v(k.id.clone()),
                    v(id.clone()),
                    v(k.name.clone()),
                    v(k.title.clone()),
                    v(k.phone.clone()),
                    v(k.email.clone()),
                    v(k.is_purchaser),
                    v(k.active),
                ]);
                if let Some(p) = &k.phone {
                    let n = model::normalize_phone(p);
                    if !n.trim_start_matches('+').is_empty() {
                        phones.push(vec![v(id.clone()), v(n), v(p.clone()), v(k.id.clone())]);
                    }
                }
            }
            let equipment = c
                .equipment
                .iter()
                .map(|e| {
                    vec![
                        v(e.id.clone()),
                        v(id.clone()),
                        v(e.model.clone()),
                        v(e.serial.clone()),
                        v(e.status.clone()),
                        v(e.installed_at),
                    ]
                })
                .collect();
            out.push(Rows {
                table: "customer_phones",
                key: "customer_id",
                cols: PHONE_COLS,
                single: false,
                rows: phones,
            });
            out.push(Rows {
                table: "contacts",
                key: "customer_id",
                cols: CONTACT_COLS,
                single: false,
                rows: contacts,
            });
            out.push(Rows {
                table: "equipment",
                key: "customer_id",
                cols: EQUIPMENT_COLS,
                single: false,
                rows: equipment,
            });
        }
        Document::Visit(visit) => {
            let customer = visit.customer_id.to_string();
            out.push(Rows {
                table: "visits",
                key: "id",
                cols: VISIT_COLS,
                single: true,
                rows: vec![vec![
                    v(id.clone()),
                    v(customer.clone()),
                    v(visit.visit_kind.clone()),
                    v(visit.status.as_str().to_string()),
                    v(visit.at),
                    v(visit.location.clone()),
                    v(visit.notes.clone()),
                    v(visit.satisfaction),
                    v(h.scope.clone()),
                    v(h.created_by.clone()),
                    v(h.created_at),
                    v(h.archived),
                ]],
            });
            out.push(Rows {
                table: "tasks",
                key: "visit_id",
                cols: TASK_COLS,
                single: false,
                rows: visit
                    .tasks
                    .iter()
                    .map(|t| {
                        vec![
                            v(t.id.clone()),
                            v(id.clone()),
                            v(customer.clone()),
                            v(t.title.clone()),
                            v(t.due),
                            v(t.assignee.clone()),
                            v(t.done_at),
                        ]
                    })
                    .collect(),
            });
        }
        Document::Quote(q) => {
            let customer = q.customer_id.to_string();
            out.push(Rows {
                table: "quotes",
                key: "id",
                cols: QUOTE_COLS,
                single: true,
                rows: vec![vec![
                    v(id.clone()),
                    v(customer.clone()),
                    v(q.quote_no.clone()),
                    v(q.status.as_str().to_string()),
                    v(q.status_conflict.is_some()),
                    v(q.currency.clone()),
                    v(q.total.amount_minor),
                    v(q.owner.clone()),
                    v(h.scope.clone()),
                    v(q.valid_until),
                    v(q.sent_at),
                    v(q.follow_up_due),
                    v(q.customer_response.clone()),
                    v(h.created_by.clone()),
                    v(h.created_at),
                    v(h.archived),
                ]],
            });
            out.push(Rows {
                table: "quote_lines",
                key: "quote_id",
                cols: LINE_COLS,
                single: false,
                rows: q
                    .lines
                    .iter()
                    .map(|l| {
                        vec![
                            v(id.clone()),
                            v(l.id.clone()),
                            v(customer.clone()),
                            v(l.sku.clone()),
                            v(l.description.clone()),
                            v(l.qty),
                            v(l.unit_price_minor),
                            v(l.discount_bp),
                            v(l.total_minor()),
                            v(q.currency.clone()),
                            v(l.sort_key.clone()),
                            v(h.created_at),
                            v(l.archived),
                        ]
                    })
                    .collect(),
            });
        }
    }
    // One row per conflicting path (the quote's status lattice last, as a later row with the
    // same path replaces an earlier one).
    let mut by_path: Vec<(String, Value)> = Vec::new();
    let mut put = |path: String, values: String| {
        by_path.retain(|(p, _)| *p != path);
        by_path.push((path, v(values)));
    };
    for c in conflicts {
        put(
            c.path.clone(),
            serde_json::Value::Array(c.values.clone()).to_string(),
        );
    }
    if let Document::Quote(q) = doc
        && let Some(sc) = &q.status_conflict
    {
        let values: Vec<&str> = sc.marked.iter().map(|s| s.as_str()).collect();
        put("status".into(), serde_json::json!(values).to_string());
    }
    out.push(Rows {
        table: "conflicts",
        key: "doc_id",
        cols: CONFLICT_COLS,
        single: false,
        rows: by_path
            .into_iter()
            .map(|(path, values)| {
                vec![
                    v(id.clone()),
                    v(h.kind.as_str().to_string()),
                    v(path),
                    values,
                ]
            })
            .collect(),
    });
    out
}

/// Brings one table's rows of document `id` to `want`, writing only what differs: an unchanged
/// table is not written at all, and a document's one row of a single-row table is updated in
/// the columns that changed (so indexes on the others are not rewritten). Each page written
/// goes through the WAL at commit, and a received change usually moves one field.
fn sync_table(tx: &Connection, id: &str, want: Rows, fresh: bool) -> rusqlite::Result<()> {
    let Rows {
        table,
        key,
        cols,
        single,
        mut rows,
    } = want;
    if !fresh {
        let mut have: Vec<Vec<Value>> = tx
            .prepare_cached(&format!(
                "SELECT {} FROM {table} WHERE {key} = ?1",
                cols.join(", ")
            ))?
            .query_map([id], |r| {
                (0..cols.len()).map(|i| r.get::<_, Value>(i)).collect()
            })?
            .collect::<rusqlite::Result<_>>()?;
        if single && have.len() == 1 && rows.len() == 1 {
            let changed: Vec<usize> = (0..cols.len())
                .filter(|&i| have[0][i] != rows[0][i])
                .collect();
            if changed.is_empty() {
                return Ok(());
            }
            let set: Vec<String> = changed
                .iter()
                .enumerate()
                .map(|(n, &i)| format!("{} = ?{}", cols[i], n + 2))
                .collect();
            let mut st = tx.prepare_cached(&format!(
                "UPDATE {table} SET {} WHERE {key} = ?1",
                set.join(", ")
            ))?;
            let row = &mut rows[0];
            let values: Vec<Value> = std::iter::once(v(id.to_string()))
                .chain(
                    changed
                        .iter()
                        .map(|&i| std::mem::replace(&mut row[i], Value::Null)),
                )
                .collect();
            st.execute(rusqlite::params_from_iter(values))?;
            return Ok(());
        }
        let order = |r: &Vec<Value>| format!("{r:?}");
        have.sort_by_cached_key(order);
        rows.sort_by_cached_key(order);
        if have == rows {
            return Ok(());
        }
        if !have.is_empty() {
            tx.prepare_cached(&format!("DELETE FROM {table} WHERE {key} = ?1"))?
                .execute([id])?;
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let mut st = tx.prepare_cached(&format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        cols.join(", "),
        marks.join(", ")
    ))?;
    for r in rows {
        st.execute(rusqlite::params_from_iter(r))?;
    }
    Ok(())
}

/// Brings the projection rows of a document in line with `doc`, writing only rows that
/// changed (`fresh`: it has none yet).
pub(crate) fn write(
    tx: &Connection,
    doc: &Document,
    conflicts: &[Conflict],
    fresh: bool,
) -> rusqlite::Result<()> {
    let id = doc.header().id.to_string();
    let rows = rows_of(doc, conflicts);
    if !fresh {
        // Rows of the other kinds' tables cannot belong to this document; a document whose
        // stored kind was another (bad data) must not keep them. Deleting nothing writes
        // nothing.
        for (table, col) in TABLES_BY_DOC {
            if !rows.iter().any(|r| r.table == *table) {
                tx.prepare_cached(&format!("DELETE FROM {table} WHERE {col} = ?1"))?
                    .execute([&id])?;
            }
        }
    }
    for r in rows {
        sync_table(tx, &id, r, fresh)?;
    }
    Ok(())
}

/// Rewrites a document's projection rows (or clears them if it cannot be read yet).
/// `may_conflict: false` skips the conflict scan for documents that cannot have any.
pub(super) fn project(
    conn: &Connection,
    doc: &AutoCommit,
    fresh: bool,
    may_conflict: bool,
) -> Result<Option<Document>, StoreError> {
    project_read(conn, read_for_projection(doc, may_conflict, false), fresh)
}

/// Reads a document and its conflicts for [`project_read`]. `within_depth`: the caller knows
/// the document nests no deeper than [`crate::budget::MAX_NESTING`] (see
/// `DocCache::bounded_at`), so the walk that checks it is skipped.
pub(super) fn read_for_projection(
    doc: &AutoCommit,
    may_conflict: bool,
    within_depth: bool,
) -> Result<(Document, Vec<Conflict>), ModelError> {
    // Downloaded content nobody on this laptop validated: a panic in automerge's readers makes
    // the document unreadable here (stored, not projected, reported by `verify`), never a
    // crash of the sync.
    guard("reading a document", || {
        let read = if within_depth {
            model::read_document_within_depth(doc)
        } else {
            model::read_document(doc)
        };
        read.map(|d| {
            let conflicts = if may_conflict {
                model::conflicts(doc)
            } else {
                Vec::new()
            };
            (d, conflicts)
        })
    })
    .unwrap_or_else(|e| Err(ModelError::Malformed(e.to_string())))
}

/// [`project`] with the document already read, and its conflicts found.
pub(super) fn project_read(
    conn: &Connection,
    read: Result<(Document, Vec<Conflict>), ModelError>,
    fresh: bool,
) -> Result<Option<Document>, StoreError> {
    match read {
        Ok((d, conflicts)) => {
            write(conn, &d, &conflicts, fresh)?;
            Ok(Some(d))
        }
        Err(_) => Ok(None),
    }
}

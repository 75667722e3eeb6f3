//! Typed projection rows derived from documents, written in the same transaction as the change.
//! [`project`] reads a document (guarded, as downloaded content may be hostile) and rewrites
//! its rows; [`write`] and [`clear`] are the SQL underneath.

use automerge::AutoCommit;
use rusqlite::{Connection, params};

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

/// Replaces the projection rows of a document with rows derived from `doc`.
pub(crate) fn write(
    tx: &Connection,
    doc: &Document,
    conflicts: &[Conflict],
    fresh: bool,
) -> rusqlite::Result<()> {
    let h = doc.header();
    let id = h.id.to_string();
    if !fresh {
        clear(tx, &id)?;
    }
    match doc {
        Document::Customer(c) => {
            tx.prepare_cached(
                "INSERT INTO customers (id, name, short_name, industry, business_type, size, source,
                   stage, email, org, scope, owner, grade, credit_limit_minor, credit_currency,
                   payment_terms, created_by, created_at, archived)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19)",
            )?
            .execute(params![
                id,
                c.name,
                c.short_name,
                c.industry,
                c.business_type,
                c.size,
                c.source,
                c.stage,
                c.email,
                h.org,
                h.scope,
                c.owner,
                c.grade,
                c.credit_limit.as_ref().map(|m| m.amount_minor),
                c.credit_limit.as_ref().map(|m| m.currency.as_str()),
                c.payment_terms,
                h.created_by,
                h.created_at,
                h.archived,
            ])?;
            let mut phone = tx.prepare_cached(
                "INSERT INTO customer_phones (customer_id, normalized, raw, contact_id) VALUES (?1,?2,?3,?4)",
            )?;
            for p in &c.phones {
                phone.execute(params![id, p.normalized, p.raw, Option::<String>::None])?;
            }
            let mut contact = tx.prepare_cached(
                "INSERT INTO contacts (id, customer_id, name, title, phone, email, is_purchaser, active)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
            )?;
            for k in &c.contacts {
                contact.execute(params![
                    k.id,
                    id,
                    k.name,
                    k.title,
                    k.phone,
                    k.email,
                    k.is_purchaser,
                    k.active
                ])?;
                if let Some(p) = &k.phone {
                    let n = model::normalize_phone(p);
                    if !n.trim_start_matches('+').is_empty() {
                        phone.execute(params![id, n, p, k.id])?;
                    }
                }
            }
            let mut eq = tx.prepare_cached(
                "INSERT INTO equipment (id, customer_id, model, serial, status, installed_at)
                 VALUES (?1,?2,?3,?4,?5,?6)",
            )?;
            for e in &c.equipment {
                eq.execute(params![
                    e.id,
                    id,
                    e.model,
                    e.serial,
                    e.status,
                    e.installed_at
                ])?;
            }
        }
        Document::Visit(v) => {
            let customer = v.customer_id.to_string();
            tx.prepare_cached(
                "INSERT INTO visits (id, customer_id, kind, status, at, location, notes, satisfaction,
                   scope, created_by, created_at, archived)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)",
            )?
            .execute(params![
                id,
                customer,
                v.visit_kind,
                v.status.as_str(),
                v.at,
                v.location,
                v.notes,
                v.satisfaction,
                h.scope,
                h.created_by,
                h.created_at,
                h.archived,
            ])?;
            let mut task = tx.prepare_cached(
                "INSERT INTO tasks (id, visit_id, customer_id, title, due, assignee, done_at)
                 VALUES (?1,?2,?3,?4,?5,?6,?7)",
            )?;
            for t in &v.tasks {
                task.execute(params![
                    t.id, id, customer, t.title, t.due, t.assignee, t.done_at
                ])?;
            }
        }
        Document::Quote(q) => {
            let customer = q.customer_id.to_string();
            tx.prepare_cached(
                "INSERT INTO quotes (id, customer_id, quote_no, status, status_conflict, currency,
                   total_minor, owner, scope, valid_until, sent_at, follow_up_due, customer_response,
                   created_by, created_at, archived)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)",
            )?
            .execute(params![
                id,
                customer,
                q.quote_no,
                q.status.as_str(),
                q.status_conflict.is_some(),
                q.currency,
                q.total.amount_minor,
                q.owner,
                h.scope,
                q.valid_until,
                q.sent_at,
                q.follow_up_due,
                q.customer_response,
                h.created_by,
                h.created_at,
                h.archived,
            ])?;
            let mut line = tx.prepare_cached(
                "INSERT INTO quote_lines (quote_id, line_id, customer_id, sku, description, qty,
                   unit_price_minor, discount_bp, total_minor, currency, sort_key, created_at, archived)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
            )?;
            for l in &q.lines {
                line.execute(params![
                    id,
                    l.id,
                    customer,
                    l.sku,
                    l.description,
                    l.qty,
                    l.unit_price_minor,
                    l.discount_bp,
                    l.total_minor(),
                    q.currency,
                    l.sort_key,
                    h.created_at,
                    l.archived,
                ])?;
            }
        }
    }
    let mut conflict = tx.prepare_cached(
        "INSERT OR REPLACE INTO conflicts (doc_id, kind, path, value_json) VALUES (?1,?2,?3,?4)",
    )?;
    for c in conflicts {
        let values = serde_json::Value::Array(c.values.clone()).to_string();
        conflict.execute(params![id, h.kind.as_str(), c.path, values])?;
    }
    if let Document::Quote(q) = doc
        && let Some(sc) = &q.status_conflict
    {
        let values: Vec<&str> = sc.marked.iter().map(|s| s.as_str()).collect();
        conflict.execute(params![
            id,
            h.kind.as_str(),
            "status",
            serde_json::json!(values).to_string()
        ])?;
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
    project_read(conn, read_for_projection(doc, may_conflict), fresh)
}

/// Reads a document and its conflicts for [`project_read`].
pub(super) fn read_for_projection(
    doc: &AutoCommit,
    may_conflict: bool,
) -> Result<(Document, Vec<Conflict>), ModelError> {
    // Downloaded content nobody on this laptop validated: a panic in automerge's readers makes
    // the document unreadable here (stored, not projected, reported by `verify`), never a
    // crash of the sync.
    guard("reading a document", || {
        model::read_document(doc).map(|d| {
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

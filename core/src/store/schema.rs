//! The replica's SQLite schema and its migrations (`PRAGMA user_version`).

use rusqlite::Connection;

use super::StoreError;

/// `PRAGMA application_id` of a fieldsync replica ("FSRP"), so a foreign SQLite file is refused.
pub const APPLICATION_ID: i32 = 0x4653_5250;

/// Migrations, index `i` moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: documents, changes, outbox, quarantine and the projections.
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;

-- The truth: one row per document with its compacted Automerge bytes, plus the changes that
-- arrived since the last compaction.
CREATE TABLE docs (
    id BLOB PRIMARY KEY,
    kind INTEGER,
    scope TEXT,
    customer_id BLOB,
    snapshot BLOB NOT NULL,
    heads BLOB NOT NULL,
    pending_changes INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    evict_pending INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX docs_scope ON docs(scope);
CREATE INDEX docs_customer ON docs(customer_id);
CREATE TABLE doc_changes (
    doc_id BLOB NOT NULL,
    hash BLOB NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (doc_id, hash)
) WITHOUT ROWID;

-- Local changes the relay has not acknowledged yet.
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id BLOB NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    bytes BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX outbox_doc ON outbox(doc_id);

-- Local changes the relay refused, kept visible and never silently dropped.
CREATE TABLE quarantine (
    hash BLOB PRIMARY KEY,
    doc_id BLOB NOT NULL,
    bytes BLOB NOT NULL,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;

-- Projections: derived from the documents in the same transaction, rebuildable at any time.
CREATE TABLE customers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    short_name TEXT,
    industry TEXT,
    business_type TEXT,
    size TEXT,
    source TEXT,
    stage TEXT NOT NULL,
    email TEXT,
    org TEXT NOT NULL,
    scope TEXT NOT NULL,
    owner TEXT,
    grade TEXT,
    credit_limit_minor INTEGER,
    credit_currency TEXT,
    payment_terms TEXT,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    archived INTEGER NOT NULL
);
CREATE INDEX customers_name ON customers(name COLLATE NOCASE, id);
CREATE INDEX customers_owner ON customers(owner);
CREATE INDEX customers_scope ON customers(scope);
CREATE INDEX customers_stage ON customers(stage);
CREATE TABLE customer_phones (
    customer_id TEXT NOT NULL,
    normalized TEXT NOT NULL,
    raw TEXT NOT NULL,
    contact_id TEXT
);
CREATE INDEX customer_phones_number ON customer_phones(normalized);
CREATE INDEX customer_phones_customer ON customer_phones(customer_id);
CREATE TABLE contacts (
    id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    name TEXT NOT NULL,
    title TEXT,
    phone TEXT,
    email TEXT,
    is_purchaser INTEGER NOT NULL,
    active INTEGER NOT NULL,
    PRIMARY KEY (customer_id, id)
);
CREATE TABLE equipment (
    id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    model TEXT NOT NULL,
    serial TEXT,
    status TEXT,
    installed_at INTEGER,
    PRIMARY KEY (customer_id, id)
);
CREATE TABLE visits (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    at INTEGER,
    location TEXT,
    notes TEXT NOT NULL,
    satisfaction INTEGER,
    scope TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    archived INTEGER NOT NULL
);
CREATE INDEX visits_customer_time ON visits(customer_id, at);
CREATE INDEX visits_author_time ON visits(created_by, at);
CREATE TABLE tasks (
    id TEXT NOT NULL,
    visit_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    title TEXT NOT NULL,
    due INTEGER,
    assignee TEXT,
    done_at INTEGER,
    PRIMARY KEY (visit_id, id)
);
CREATE INDEX tasks_open ON tasks(assignee, due) WHERE done_at IS NULL;
CREATE TABLE quotes (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    quote_no TEXT,
    status TEXT NOT NULL,
    status_conflict INTEGER NOT NULL,
    currency TEXT NOT NULL,
    total_minor INTEGER NOT NULL,
    owner TEXT,
    scope TEXT NOT NULL,
    valid_until INTEGER,
    sent_at INTEGER,
    follow_up_due INTEGER,
    customer_response TEXT,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    archived INTEGER NOT NULL
);
CREATE INDEX quotes_customer_time ON quotes(customer_id, created_at);
CREATE INDEX quotes_follow_up ON quotes(status, follow_up_due);
CREATE INDEX quotes_owner_status ON quotes(owner, status);
CREATE TABLE quote_lines (
    quote_id TEXT NOT NULL,
    line_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    description TEXT,
    qty INTEGER NOT NULL,
    unit_price_minor INTEGER NOT NULL,
    discount_bp INTEGER NOT NULL,
    total_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    sort_key TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    archived INTEGER NOT NULL,
    PRIMARY KEY (quote_id, line_id)
);
CREATE INDEX quote_lines_sku ON quote_lines(sku, customer_id, created_at);
CREATE TABLE conflicts (
    doc_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    value_json TEXT NOT NULL,
    PRIMARY KEY (doc_id, path)
);

-- A customer's timeline: visits and quotes by time.
CREATE VIEW timeline AS
    SELECT customer_id, COALESCE(at, created_at) AS occurred_at, 'visit' AS kind, id,
           kind || ' (' || status || ')' AS summary
      FROM visits
    UNION ALL
    SELECT customer_id, created_at AS occurred_at, 'quote' AS kind, id,
           COALESCE(quote_no, id) || ' ' || status || ' ' || total_minor || ' ' || currency AS summary
      FROM quotes;
"#,
    // v2: downloaded documents this replica could not load (over a budget, damaged): kept out
    // and reported until a later snapshot of the document loads.
    r#"
CREATE TABLE skipped (
    doc_id BLOB PRIMARY KEY,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    // v3: when a document last received changes from elsewhere (a sync, an import), for
    // "what the last sync brought" in the rep's app.
    r#"
ALTER TABLE docs ADD COLUMN received_at INTEGER;
"#,
];

/// The schema version this build creates and migrates to.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Checks that `conn` is an empty database or a fieldsync replica of a version this build can
/// open, and migrates it to [`SCHEMA_VERSION`].
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    if app_id != APPLICATION_ID && (app_id != 0 || tables > 0) {
        return Err(StoreError::Foreign);
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.pragma_update(None, "user_version", (i + 1) as i32)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica written by every older version opens with this one: migrated in place, its
    /// documents and outbox intact and readable.
    #[test]
    fn every_older_version_migrates_and_keeps_its_data() {
        for from in 1..SCHEMA_VERSION {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("replica.db");
            let acme = {
                let mut store = crate::store::Store::open(&path).unwrap();
                let ctx = crate::model::EditCtx::at("li", crate::Role::Rep, 1_000);
                let id = store
                    .create(|doc, id| {
                        crate::model::create_customer(
                            doc,
                            id,
                            &crate::model::NewCustomer {
                                org: "acme".into(),
                                scope: "north".into(),
                                name: "Acme Mining".into(),
                                ..Default::default()
                            },
                            &ctx,
                        )
                    })
                    .unwrap()
                    .id;
                drop(store);
                // Back to version `from`: what that version's file looked like.
                let conn = Connection::open(&path).unwrap();
                // What each migration added, undone newest first (one per migration after the
                // first: a new migration needs its undo here).
                let undo = [
                    "DROP TABLE skipped",
                    "ALTER TABLE docs DROP COLUMN received_at",
                ];
                assert_eq!(undo.len() + 1, MIGRATIONS.len());
                for (v, sql) in undo.iter().enumerate().rev() {
                    if from < v as i32 + 2 {
                        conn.execute_batch(sql).unwrap();
                    }
                }
                conn.pragma_update(None, "user_version", from).unwrap();
                id
            };
            let mut store = crate::store::Store::open(&path).unwrap();
            let version: i32 = store
                .reader()
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(version, SCHEMA_VERSION, "from {from}");
            assert_eq!(store.outbox_len().unwrap(), 1, "from {from}");
            assert!(store.document(acme).is_ok(), "from {from}");
            assert!(store.verify().unwrap().is_empty(), "from {from}");
        }
    }
}

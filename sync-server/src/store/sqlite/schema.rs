//! The relay database schema and its migrations (`PRAGMA user_version`).

use rusqlite::Connection;

use crate::store::RelayStoreError;

/// `PRAGMA application_id` of a fieldsync relay database ("FSRL"), so a foreign SQLite file
/// (or a client replica, "FSRP") is refused.
pub const APPLICATION_ID: i32 = 0x4653_524C;

/// Migrations; index `i` moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;

-- The log: every accepted change (kind 0), and every document entering (1, with its snapshot)
-- or leaving (2) a scope. Sequence numbers are assigned by SQLite's single writer inside the
-- transaction that stores the entry, so a reader never sees a gap that fills in later.
-- AUTOINCREMENT: numbers are never reused, even if the newest rows were ever removed.
CREATE TABLE log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    doc_id BLOB NOT NULL,
    kind INTEGER NOT NULL,
    hash BLOB,
    bytes BLOB,
    device BLOB,
    at INTEGER NOT NULL,
    -- Leave entries: the scope the document moved to (a reader that also sees that scope
    -- must not drop the document).
    moved_to TEXT
);
CREATE INDEX log_scope ON log(scope, seq);

-- Every stored change by hash: idempotent re-sends and `missing` checks.
CREATE TABLE changes (
    hash BLOB PRIMARY KEY,
    doc_id BLOB NOT NULL,
    seq INTEGER NOT NULL
) WITHOUT ROWID;

-- The relay's compacted copy of each document, and where it is filed.
CREATE TABLE docs (
    doc_id BLOB PRIMARY KEY,
    kind INTEGER,
    scope TEXT NOT NULL,
    customer_id BLOB,
    snapshot BLOB NOT NULL,
    heads BLOB NOT NULL,
    updated_seq INTEGER NOT NULL
);
CREATE INDEX docs_scope ON docs(scope, doc_id);
CREATE INDEX docs_customer ON docs(customer_id) WHERE customer_id IS NOT NULL;

-- Enrolled (or openly registered) devices. `secret_hash` is SHA-256 of the secret, NULL for
-- devices registered by open enrolment.
CREATE TABLE devices (
    device_id BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    scopes TEXT NOT NULL,
    secret_hash BLOB,
    created_at INTEGER NOT NULL,
    last_seen INTEGER,
    revoked_at INTEGER
) WITHOUT ROWID;

-- Who uploaded which accepted change, when. Append-only.
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    device BLOB NOT NULL,
    doc_id BLOB NOT NULL,
    at INTEGER NOT NULL
);
CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
"#,
    // v2: one-time enrolment tokens, scope moves, and a counter of device changes.
    r#"
-- Enrolment tokens printed by `device enroll`; only SHA-256 of the secret is kept. A token is
-- bound to the device that redeems it (or, with `device_id` set at enrolment, only to that
-- one) and can be redeemed once.
CREATE TABLE enrolments (
    token_hash BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    scopes TEXT NOT NULL,
    device_id BLOB,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    revoked_at INTEGER
) WITHOUT ROWID;

-- Every time a document was re-filed under another scope: `seq` is the log position of its
-- Leave entry. Lets the relay accept a change written before its author knew of the move.
CREATE TABLE moves (
    doc_id BLOB NOT NULL,
    from_scope TEXT NOT NULL,
    to_scope TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX moves_doc ON moves(doc_id, seq);

-- Bumped by every enrolment, redemption and revocation, by whichever process makes it; a
-- running relay polls it and re-checks its open connections.
INSERT INTO meta (key, value) VALUES ('devices.generation', 0);
"#,
    // 2: changes the relay stored before a restore replaced its database, so a repair upload
    // may bring them back from any device (they are judged at `role`, the role of the device
    // that uploaded each the first time).
    r#"
CREATE TABLE vouched (
    hash BLOB PRIMARY KEY,
    device BLOB NOT NULL,
    role TEXT NOT NULL
) WITHOUT ROWID;

-- Documents whose departure from its scopes a device has been sent (a Leave): from then on
-- the move's grace period no longer excuses that device's changes to them.
CREATE TABLE departures_served (
    device BLOB NOT NULL,
    doc_id BLOB NOT NULL,
    PRIMARY KEY (device, doc_id)
) WITHOUT ROWID;
"#,
    // 3: the raw size of every change a document holds, its size budget's measure (its
    // snapshot is compressed, and a compressible document loads far larger than it is stored).
    r#"
ALTER TABLE docs ADD COLUMN raw_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE docs SET raw_bytes = length(snapshot);
"#,
    // 4: what each device stored per UTC day, against its quota (`quota.rs`).
    r#"
CREATE TABLE device_usage (
    device BLOB NOT NULL,
    day INTEGER NOT NULL,
    new_docs INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (device, day)
) WITHOUT ROWID;
"#,
    // 5: devices found by name (`device revoke|grant NAME`) without reading the whole fleet.
    r#"
CREATE INDEX devices_name ON devices(name);
"#,
    // 6: what each serving relay node reports about itself every few seconds (address,
    // version, connections, the devices online and how far behind each is), for `status`
    // and `device list` (`crate::presence`).
    r#"
CREATE TABLE nodes (
    node TEXT PRIMARY KEY,
    report TEXT NOT NULL,
    heartbeat_at INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    // 7: what each laptop last said it holds unsent (protocol 5 `Outbox`), for `device list`.
    r#"
CREATE TABLE device_outbox (
    device BLOB PRIMARY KEY,
    changes INTEGER NOT NULL,
    quarantined INTEGER NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
"#, // 8: `audit --since` reads a time range without scanning the whole trail.
    r#"
CREATE INDEX audit_at ON audit(at);
"#,
    // 9: attachments. Which documents refer to which attachment (who may fetch it follows
    // from them), and the completed uploads in an append-only trail. The bytes are in
    // `attachments.db` beside this file.
    r#"
CREATE TABLE attachment_refs (
    hash BLOB NOT NULL,
    doc_id BLOB NOT NULL,
    PRIMARY KEY (hash, doc_id)
) WITHOUT ROWID;
CREATE INDEX attachment_refs_doc ON attachment_refs(doc_id);
CREATE TABLE attachment_audit (
    id INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    size INTEGER NOT NULL,
    device BLOB NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX attachment_audit_at ON attachment_audit(at);
CREATE TRIGGER attachment_audit_append_only_update BEFORE UPDATE ON attachment_audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER attachment_audit_append_only_delete BEFORE DELETE ON attachment_audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
"#,
    // 10: a device's standing orders (protocol 7): a remote wipe IT ordered (`now`,
    // `after_upload`) and when the device reported it carried out; its own offline lease in
    // days (NULL: its role's default from the configuration). And the append-only trail of
    // device events: `wipe_ordered` ({"mode": …}), `wiped` (the device's report), `lease_set`
    // ({"days": N|null}).
    r#"
ALTER TABLE devices ADD COLUMN wipe TEXT CHECK (wipe IN ('now', 'after_upload'));
ALTER TABLE devices ADD COLUMN wiped_at INTEGER;
ALTER TABLE devices ADD COLUMN lease_days INTEGER CHECK (lease_days >= 0);
CREATE TABLE device_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id BLOB NOT NULL,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX device_events_device ON device_events(device_id, seq);
CREATE TRIGGER device_events_append_only_update BEFORE UPDATE ON device_events
    BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER device_events_append_only_delete BEFORE DELETE ON device_events
    BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
"#,
];

/// The schema version this build creates and migrates to.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Checks that `conn` is an empty database or a relay database of a version this build can
/// open, and migrates it to [`SCHEMA_VERSION`]. Nothing is written to a refused file.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), RelayStoreError> {
    let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if app_id != APPLICATION_ID && (app_id != 0 || objects > 0 || version != 0) {
        return Err(RelayStoreError::Foreign {
            application_id: app_id,
        });
    }
    if version > SCHEMA_VERSION {
        return Err(RelayStoreError::SchemaTooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
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

    #[test]
    fn every_earlier_version_migrates_to_the_current_one() {
        for from in 1..SCHEMA_VERSION {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("relay.db");
            {
                let mut c = Connection::open(&path).unwrap();
                for sql in &MIGRATIONS[..from as usize] {
                    c.execute_batch(sql).unwrap();
                }
                c.pragma_update(None, "application_id", APPLICATION_ID)
                    .unwrap();
                c.pragma_update(None, "user_version", from).unwrap();
                let tx = c.transaction().unwrap();
                tx.execute(
                    "INSERT INTO devices (device_id, name, role, scopes, created_at)
                     VALUES (x'01', 'old', 'rep', '[\"north\"]', 1)",
                    [],
                )
                .unwrap();
                tx.commit().unwrap();
            }
            let mut c = Connection::open(&path).unwrap();
            migrate(&mut c).unwrap();
            let v: i32 = c
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(v, SCHEMA_VERSION);
            let name: String = c
                .query_row("SELECT name FROM devices", [], |r| r.get(0))
                .unwrap();
            assert_eq!(name, "old", "data survives");
            let g: i64 = c
                .query_row(
                    "SELECT value FROM meta WHERE key = 'devices.generation'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(g, 0);
            c.execute_batch("SELECT count(*) FROM enrolments; SELECT count(*) FROM moves;")
                .unwrap();
            // A device from before standing orders has none: no wipe, its role's lease.
            let orders: (Option<String>, Option<i64>, Option<i64>) = c
                .query_row("SELECT wipe, wiped_at, lease_days FROM devices", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            assert_eq!(orders, (None, None, None));
            assert!(
                c.execute("UPDATE devices SET wipe = 'later'", []).is_err(),
                "only known wipe orders"
            );
            c.execute(
                "INSERT INTO device_events (device_id, at, event, detail)
                 VALUES (x'01', 2, 'lease_set', '{\"days\":3}')",
                [],
            )
            .unwrap();
            assert!(c.execute("DELETE FROM device_events", []).is_err());
            assert!(c.execute("UPDATE device_events SET at = 0", []).is_err());
        }
    }
}

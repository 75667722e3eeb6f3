//! The PostgreSQL schema, its migrations, and how nodes starting together migrate once.

use super::*;

/// Newest schema version this build writes (the row of `fieldsync_schema`).
pub const PG_SCHEMA_VERSION: i32 = PG_MIGRATIONS.len() as i32;

/// Advisory lock key held while migrating, so nodes starting together migrate once.
const MIGRATE_LOCK: i64 = 0x4653_524C;
const PG_MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);

-- 'log.high': the highest sequence number; its row lock serialises appends (module docs).
-- 'devices.generation': bumped by every enrolment, redemption and revocation.
CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO counters (name, value) VALUES ('log.high', 0), ('devices.generation', 0);

CREATE TABLE log (
    seq BIGINT PRIMARY KEY,
    scope TEXT NOT NULL,
    doc_id BYTEA NOT NULL,
    kind BIGINT NOT NULL,
    hash BYTEA,
    bytes BYTEA,
    device BYTEA,
    at BIGINT NOT NULL,
    moved_to TEXT
);
CREATE INDEX log_scope ON log (scope, seq);

CREATE TABLE changes (
    hash BYTEA PRIMARY KEY,
    doc_id BYTEA NOT NULL,
    seq BIGINT NOT NULL
);

CREATE TABLE docs (
    doc_id BYTEA PRIMARY KEY,
    kind BIGINT,
    scope TEXT NOT NULL,
    customer_id BYTEA,
    snapshot BYTEA NOT NULL,
    heads BYTEA NOT NULL,
    updated_seq BIGINT NOT NULL
);
CREATE INDEX docs_scope ON docs (scope, doc_id);
CREATE INDEX docs_customer ON docs (customer_id) WHERE customer_id IS NOT NULL;

CREATE TABLE devices (
    device_id BYTEA PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    scopes TEXT NOT NULL,
    secret_hash BYTEA,
    created_at BIGINT NOT NULL,
    last_seen BIGINT,
    revoked_at BIGINT
);

CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    device BYTEA NOT NULL,
    doc_id BYTEA NOT NULL,
    at BIGINT NOT NULL
);
CREATE FUNCTION fieldsync_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'audit is append-only'; END $$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION fieldsync_audit_append_only();

CREATE TABLE enrolments (
    token_hash BYTEA PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    scopes TEXT NOT NULL,
    device_id BYTEA,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    revoked_at BIGINT
);

CREATE TABLE moves (
    doc_id BYTEA NOT NULL,
    from_scope TEXT NOT NULL,
    to_scope TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX moves_doc ON moves (doc_id, seq);
"#,
    r#"
CREATE TABLE vouched (
    hash BYTEA PRIMARY KEY,
    device BYTEA NOT NULL,
    role TEXT NOT NULL
);
CREATE TABLE departures_served (
    device BYTEA NOT NULL,
    doc_id BYTEA NOT NULL,
    PRIMARY KEY (device, doc_id)
);
"#,
    r#"
ALTER TABLE docs ADD COLUMN raw_bytes BIGINT NOT NULL DEFAULT 0;
UPDATE docs SET raw_bytes = octet_length(snapshot);
"#,
    r#"
CREATE TABLE device_usage (
    device BYTEA NOT NULL,
    day BIGINT NOT NULL,
    new_docs BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    PRIMARY KEY (device, day)
);
"#,
    r#"
CREATE INDEX devices_name ON devices (name);
"#,
    r#"
CREATE TABLE nodes (
    node TEXT PRIMARY KEY,
    report TEXT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
"#,
    r#"
CREATE TABLE device_outbox (
    device BYTEA PRIMARY KEY,
    changes BIGINT NOT NULL,
    quarantined BIGINT NOT NULL,
    at BIGINT NOT NULL
);
"#,
    r#"
CREATE INDEX audit_at ON audit (at);
"#,
    // Attachments: which documents refer to which (who may fetch it follows from them), the
    // completed uploads in an append-only trail, and the bytes in pieces, so every node
    // serves every attachment.
    r#"
CREATE TABLE attachment_refs (
    hash BYTEA NOT NULL,
    doc_id BYTEA NOT NULL,
    PRIMARY KEY (hash, doc_id)
);
CREATE INDEX attachment_refs_doc ON attachment_refs (doc_id);
CREATE TABLE attachment_audit (
    id BIGSERIAL PRIMARY KEY,
    hash BYTEA NOT NULL,
    size BIGINT NOT NULL,
    device BYTEA NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX attachment_audit_at ON attachment_audit (at);
CREATE TRIGGER attachment_audit_append_only BEFORE UPDATE OR DELETE ON attachment_audit
    FOR EACH ROW EXECUTE FUNCTION fieldsync_audit_append_only();
CREATE TABLE blobs (
    hash BYTEA PRIMARY KEY,
    size BIGINT NOT NULL,
    stored INTEGER NOT NULL,
    complete BOOLEAN NOT NULL,
    outboard BYTEA,
    device BYTEA NOT NULL,
    started_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX blobs_device ON blobs (device);
CREATE TABLE blob_pieces (
    hash BYTEA NOT NULL,
    idx INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (hash, idx)
);
"#,
    // A device's standing orders (protocol 7): a remote wipe and when it was carried out,
    // its own offline lease (NULL: its role's default); and the append-only trail of device
    // events (wipes ordered and carried out, leases set), `detail` in JSON.
    r#"
ALTER TABLE devices ADD COLUMN wipe TEXT CHECK (wipe IN ('now', 'after_upload'));
ALTER TABLE devices ADD COLUMN wiped_at BIGINT;
ALTER TABLE devices ADD COLUMN lease_days BIGINT CHECK (lease_days >= 0);
CREATE TABLE device_events (
    seq BIGSERIAL PRIMARY KEY,
    device_id BYTEA NOT NULL,
    at BIGINT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX device_events_device ON device_events (device_id, seq);
CREATE TRIGGER device_events_append_only BEFORE UPDATE OR DELETE ON device_events
    FOR EACH ROW EXECUTE FUNCTION fieldsync_audit_append_only();
"#,
];

pub(super) fn migrate(client: &mut Client) -> Result<(), RelayStoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS fieldsync_schema (version INT NOT NULL)")?;
    let version: i32 = match tx.query_opt("SELECT version FROM fieldsync_schema", &[])? {
        Some(r) => r.try_get(0)?,
        None => {
            tx.execute("INSERT INTO fieldsync_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    if version > PG_SCHEMA_VERSION {
        return Err(RelayStoreError::SchemaTooNew {
            found: version,
            supported: PG_SCHEMA_VERSION,
        });
    }
    for (i, sql) in PG_MIGRATIONS
        .iter()
        .enumerate()
        .skip(version.max(0) as usize)
    {
        tx.batch_execute(sql)?;
        let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute("UPDATE fieldsync_schema SET version = $1", &[&v])?;
    }
    let epoch: Option<Vec<u8>> = tx
        .query_opt("SELECT value FROM meta WHERE key = 'epoch'", &[])?
        .map(|r| r.try_get(0))
        .transpose()?;
    if epoch.is_none() {
        let e = Uuid::new_v4();
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('epoch', $1)",
            &[&e.as_bytes().as_slice()],
        )?;
        tracing::info!(epoch = %e, "created relay database in PostgreSQL");
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database left at each earlier schema version, with a device in it, migrates to the
    /// current one when a node opens it, and keeps its data.
    #[test]
    fn every_earlier_version_migrates_to_the_current_one() {
        for from in 1..PG_SCHEMA_VERSION {
            let db = ScratchDatabase::create(&ScratchDatabase::server_url())
                .expect("these tests need PostgreSQL (FIELDSYNC_TEST_PG)");
            {
                let mut c = Client::connect(db.url(), NoTls).unwrap();
                let mut tx = c.transaction().unwrap();
                for sql in &PG_MIGRATIONS[..from as usize] {
                    tx.batch_execute(sql).unwrap();
                }
                tx.batch_execute("CREATE TABLE fieldsync_schema (version INT NOT NULL)")
                    .unwrap();
                tx.execute(
                    "INSERT INTO fieldsync_schema (version) VALUES ($1)",
                    &[&from],
                )
                .unwrap();
                tx.execute(
                    "INSERT INTO devices (device_id, name, role, scopes, created_at)
                     VALUES ($1, 'old', 'rep', '[\"north\"]', 1)",
                    &[&Uuid::from_u128(1).as_bytes().as_slice()],
                )
                .unwrap();
                tx.commit().unwrap();
            }
            let store = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
            let devices = store.devices().unwrap();
            assert_eq!(devices.len(), 1, "from {from}");
            let d = &devices[0];
            assert_eq!(d.name, "old", "data survives");
            assert_eq!(
                (
                    d.wipe.clone(),
                    d.wiped_at,
                    d.lease_days,
                    d.effective_lease_days
                ),
                (None, None, None, None),
                "from {from}"
            );
            store
                .order_wipe("old", fieldsync_core::protocol::WipeOrder::Now)
                .unwrap();
            assert_eq!(store.device_events().unwrap().len(), 1);
            let mut c = Client::connect(db.url(), NoTls).unwrap();
            let v: i32 = c
                .query_one("SELECT version FROM fieldsync_schema", &[])
                .unwrap()
                .get(0);
            assert_eq!(v, PG_SCHEMA_VERSION);
            assert!(c.batch_execute("DELETE FROM device_events").is_err());
            assert!(
                c.batch_execute("UPDATE devices SET wipe = 'later'")
                    .is_err(),
                "only known wipe orders"
            );
        }
    }
}

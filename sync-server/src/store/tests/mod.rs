//! Tests of the relay store, with changes written by real core replicas: the helpers here;
//! `sqlite` (the embedded store's behaviour), `contract` (what both backends must do, run on
//! each), `postgres_nodes` (several nodes on one database) and `postgres_budget` (what one node
//! may take of a shared server).

mod contract;
mod postgres_budget;
mod postgres_nodes;
mod sqlite;

use fieldsync_core::model::{
    CustomerEdit, CustomerField, Edit, EditCtx, NewCustomer, NewVisit, VisitStatus, apply_edit,
    create_customer, create_visit,
};
use fieldsync_core::protocol::messages::Rejection;
use fieldsync_core::store::{Store, decode_change, load_snapshot};

use super::*;
use fieldsync_core::protocol::{Entry, Lane, RelayStorage};

struct Device {
    store: Store,
    info: DeviceInfo,
    _dir: tempfile::TempDir,
}

fn device(role: Role, scopes: &[&str]) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("replica.db")).unwrap();
    let info = DeviceInfo {
        device_id: store.device_id(),
        name: "test device".into(),
        role,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    };
    Device {
        store,
        info,
        _dir: dir,
    }
}

impl Device {
    fn ctx(&self) -> EditCtx {
        EditCtx::new("tester", self.info.role)
    }

    fn customer(&mut self, name: &str, scope: &str) -> DocId {
        let ctx = self.ctx();
        self.store
            .create(|d, id| {
                create_customer(
                    d,
                    id,
                    &NewCustomer {
                        org: "acme".into(),
                        scope: scope.into(),
                        name: name.into(),
                        ..Default::default()
                    },
                    &ctx,
                )
            })
            .unwrap()
            .id
    }

    fn visit(&mut self, customer: DocId, scope: &str) -> DocId {
        let ctx = self.ctx();
        self.store
            .create(|d, id| {
                create_visit(
                    d,
                    id,
                    "acme",
                    scope,
                    &NewVisit {
                        customer_id: customer.into(),
                        kind: None,
                        notes: Some("met the buyer".into()),
                        status: VisitStatus::Planned,
                        at: Some(1_000),
                        location: None,
                    },
                    &ctx,
                )
            })
            .unwrap()
            .id
    }

    fn edit(&mut self, id: DocId, e: CustomerEdit) {
        self.edit_as(id, e, self.info.role);
    }

    /// Edits claiming `role` locally (a tampered laptop can claim anything).
    fn edit_as(&mut self, id: DocId, e: CustomerEdit, role: Role) {
        let ctx = EditCtx::new("tester", role);
        self.store
            .edit(id, |d| apply_edit(d, &Edit::Customer(e), &ctx))
            .unwrap();
    }

    /// Everything in the outbox, oldest first.
    fn outbox(&self) -> Vec<UploadChange> {
        self.store
            .outbox_batch(0, 10_000, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|c| UploadChange {
                doc_id: c.doc_id,
                bytes: c.bytes,
            })
            .collect()
    }

    /// Takes changes from the relay log into this replica (as a download would).
    fn receive(&mut self, relay: &SqliteRelayStore) {
        let (entries, _) = relay.read_log("*", 0, usize::MAX, Lane::All).unwrap();
        self.store
            .transaction(|tx| {
                for e in entries {
                    if let Entry::Changes(c) = e.entry {
                        let raw: Vec<Vec<u8>> = c.into_iter().map(|b| b.0).collect();
                        tx.apply_changes(e.doc_id, &raw)?;
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}

fn relay_at(path: &Path, open: Option<OpenEnrolment>) -> SqliteRelayStore {
    SqliteRelayStore::open(
        path,
        RelayStoreOptions {
            cache_docs: 4,
            open,
            ..RelayStoreOptions::default()
        },
    )
    .unwrap()
}

fn relay() -> (tempfile::TempDir, SqliteRelayStore) {
    let dir = tempfile::tempdir().unwrap();
    let r = relay_at(&dir.path().join(DB_FILE), None);
    (dir, r)
}

fn stored(o: &[Outcome]) -> usize {
    o.iter().filter(|o| matches!(o, Outcome::Stored(_))).count()
}

fn refusals(o: &[Outcome]) -> Vec<&Rejection> {
    o.iter()
        .filter_map(|o| match o {
            Outcome::Refused(r) | Outcome::Malformed(r) => Some(r),
            Outcome::Stored(_) => None,
        })
        .collect()
}

fn count(r: &SqliteRelayStore, sql: &str) -> i64 {
    r.read(|c| Ok(c.query_row(sql, [], |row| row.get(0))?))
        .unwrap()
}

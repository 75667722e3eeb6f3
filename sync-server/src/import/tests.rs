//! Imports into a real store, judged by the relay's rules.

use super::*;
use crate::store::postgres::ScratchDatabase;
use crate::store::{AuditQuery, PgRelayStore, RelayStoreOptions, SqliteRelayStore};

/// What keeps a store alive: its directory or its scratch database.
enum Keep {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Pg(#[allow(dead_code)] ScratchDatabase),
}

fn store() -> (Keep, RelayStore) {
    let dir = tempfile::tempdir().unwrap();
    let s =
        SqliteRelayStore::open(dir.path().join("relay.db"), RelayStoreOptions::default()).unwrap();
    (Keep::Dir(dir), RelayStore::Sqlite(s))
}

/// Both backends: an import is the same on each.
fn stores() -> Vec<(Keep, RelayStore)> {
    let db = ScratchDatabase::create(&ScratchDatabase::server_url())
        .expect("this test needs PostgreSQL (FIELDSYNC_TEST_PG)");
    let pg = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
    vec![store(), (Keep::Pg(db), RelayStore::Postgres(pg))]
}

fn opts() -> ImportOptions {
    ImportOptions {
        org: "acme".into(),
        author: "IT import".into(),
        dry_run: false,
        new_device: false,
    }
}

fn customer(store: &RelayStore, id: DocId) -> fieldsync_core::model::Customer {
    let snap = store.snapshot(id).unwrap().expect("stored");
    let doc = fieldsync_core::store::load_snapshot(&snap).unwrap();
    match fieldsync_core::model::read_document(&doc).unwrap() {
        fieldsync_core::model::Document::Customer(c) => c,
        other => panic!("not a customer: {other:?}"),
    }
}

#[test]
fn a_second_import_updates_what_changed_and_duplicates_nothing() {
    for (_keep, store) in stores() {
        second_import_updates(&store);
    }
}

fn second_import_updates(store: &RelayStore) {
    let csv = "external_id,name,scope,phone,contact_name,contact_phone,equipment_model,equipment_serial,city\n\
               C1,Baotou Mining,north,+86 477 1,Wang Lei,138,CAT 320,S1,Baotou\n\
               C1,,,,Li Na,139,CAT 950,S2,\n\
               C2,Ordos Coal,north,,,,,,\n\
               C3,Bad Stage,north,,,,,,\n";
    let mut reads = input::read_csv(csv).unwrap();
    // A stage outside the model's set is refused by the model, on its row alone.
    if let Ok(r) = &mut reads[2].record {
        r.stage = Some("banana".into());
    }
    let first = import(store, reads, &opts()).unwrap();
    assert_eq!((first.created, first.failed), (2, 1), "{first:?}");
    let c1 = customer_id_in(store, "acme", "C1").unwrap().unwrap();
    let c = customer(store, c1);
    assert_eq!(c.name, "Baotou Mining");
    assert_eq!(c.contacts.len(), 2);
    assert_eq!(c.equipment.len(), 2);
    assert_eq!(c.addresses.len(), 1);
    assert_eq!(c.header.scope, "north");

    // The same file again: nothing to do. A changed file: only what changed.
    let again = import(store, input::read_csv(csv).unwrap(), &opts()).unwrap();
    assert_eq!(
        (again.unchanged, again.created, again.updated),
        (2, 1, 0),
        "{again:?}"
    );
    let changed = csv
        .replace("Wang Lei,138", "Wang Lei,150")
        .replace("Ordos Coal", "Ordos Coal Group");
    let third = import(store, input::read_csv(&changed).unwrap(), &opts()).unwrap();
    assert_eq!(third.updated, 2, "{third:?}");
    let c = customer(store, c1);
    assert_eq!(c.contacts.len(), 2, "updated, not added");
    assert!(c.contacts.iter().any(|k| k.phone.as_deref() == Some("150")));
    assert_eq!(
        customer(store, customer_id_in(store, "acme", "C2").unwrap().unwrap()).name,
        "Ordos Coal Group"
    );

    // Every stored change is in the audit trail, as the import device's.
    let audit = store
        .audit(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert!(
        audit
            .iter()
            .all(|a| a.device_name.as_deref() == Some(IMPORT_DEVICE))
    );
    assert_eq!(
        audit.len(),
        2 + 1 + 2,
        "two created, then the third, then two updates"
    );
}

#[test]
fn a_dry_run_stores_nothing_and_duplicates_in_one_file_are_errors() {
    let (_dir, store) = store();
    let json = r#"[{"external_id": "C1", "name": "A", "scope": "north"},
                   {"external_id": "C1", "name": "B", "scope": "north"}]"#;
    let dry = import(
        &store,
        input::read_json(json).unwrap(),
        &ImportOptions {
            dry_run: true,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!((dry.created, dry.failed), (1, 1));
    assert!(
        dry.rows[1]
            .error
            .as_deref()
            .unwrap()
            .contains("more than once")
    );
    // Nothing written: no secret, no import device, no customer.
    assert_eq!(customer_id_in(&store, "acme", "C1").unwrap(), None);
    assert!(store.devices().unwrap().is_empty());
}

#[test]
fn a_revoked_import_device_stops_imports_until_it_is_replaced_on_purpose() {
    let (_dir, store) = store();
    let one = r#"[{"external_id": "C1", "name": "A", "scope": "north"}]"#;
    import(&store, input::read_json(one).unwrap(), &opts()).unwrap();
    store.revoke(IMPORT_DEVICE).unwrap();
    let refused = import(&store, input::read_json(one).unwrap(), &opts()).unwrap_err();
    assert!(refused.to_string().contains("--new-device"), "{refused}");
    let renamed = r#"[{"external_id": "C1", "name": "B", "scope": "north"}]"#;
    let again = import(
        &store,
        input::read_json(renamed).unwrap(),
        &ImportOptions {
            new_device: true,
            ..opts()
        },
    )
    .unwrap();
    // The customer the first import device created is updated by the new one.
    assert_eq!(again.updated, 1, "{again:?}");
    let id = customer_id_in(&store, "acme", "C1").unwrap().unwrap();
    assert_eq!(customer(&store, id).name, "B");
}

#[test]
fn two_items_with_one_key_are_an_error_of_their_row() {
    let (_dir, store) = store();
    let json = r#"[{"external_id": "C1", "name": "A", "scope": "north",
                    "contacts": [{"name": "Wang Lei"}, {"name": "wang lei ", "title": "Buyer"}]}]"#;
    let r = import(&store, input::read_json(json).unwrap(), &opts()).unwrap();
    assert_eq!(r.failed, 1);
    assert!(
        r.rows[0]
            .error
            .as_deref()
            .unwrap()
            .contains("two contacts named")
    );
}

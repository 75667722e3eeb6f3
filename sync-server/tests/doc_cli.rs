//! `fieldsync-relay doc check` and `doc trim` run as IT runs them: the binary, on a relay data
//! directory holding a document that grew past what relays and laptops load.

use std::path::Path;
use std::process::{Command, Output};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ScalarValue};
use fieldsync_core::model::{EditCtx, NewCustomer, create_customer};
use fieldsync_core::protocol::{DeviceInfo, Outcome, UploadChange};
use fieldsync_core::store::Store;
use fieldsync_core::{DocId, Role};
use fieldsync_relay::{RelayStoreOptions, SqliteRelayStore};

const BIN: &str = env!("CARGO_BIN_EXE_fieldsync-relay");

fn relay_cli(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run fieldsync-relay")
}

/// A relay data directory with one customer whose stored copy holds 600,000 list elements
/// under a key the model ignores (as one stored before budgets existed would).
fn relay_with_a_grown_document(data: &Path) -> DocId {
    let relay = SqliteRelayStore::open(data.join("relay.db"), RelayStoreOptions::default())
        .expect("relay store");
    let mut laptop = Store::open(data.join("laptop.db")).expect("replica");
    let id = laptop
        .create(|d, id| {
            create_customer(
                d,
                id,
                &NewCustomer {
                    org: "acme".into(),
                    scope: "north".into(),
                    name: "Big Co".into(),
                    ..Default::default()
                },
                &EditCtx::new("li", Role::Rep),
            )
        })
        .expect("create")
        .id;
    let up: Vec<UploadChange> = laptop
        .outbox_batch(0, 100, 1 << 20)
        .expect("outbox")
        .into_iter()
        .map(|c| UploadChange {
            doc_id: c.doc_id,
            bytes: c.bytes,
        })
        .collect();
    let device = DeviceInfo {
        device_id: laptop.device_id(),
        name: "li".into(),
        role: Role::Rep,
        scopes: vec!["north".into()],
    };
    relay
        .enrol_device(
            Some(device.device_id),
            "li",
            Role::Rep,
            &["north".to_string()],
        )
        .expect("enrol");
    let out = relay.append_changes(&device, &up, false).expect("upload");
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Stored(_))),
        "{out:?}"
    );
    drop(relay);
    let db = rusqlite::Connection::open(data.join("relay.db")).expect("db");
    let stored: Vec<u8> = db
        .query_row(
            "SELECT snapshot FROM docs WHERE doc_id = ?1",
            [id.as_bytes().to_vec()],
            |r| r.get(0),
        )
        .expect("stored");
    let mut big = AutoCommit::load(&stored).expect("load");
    let list = big.put_object(ROOT, "bloat", ObjType::List).expect("list");
    big.splice(&list, 0, 0, std::iter::repeat_n(ScalarValue::Null, 600_000))
        .expect("splice");
    big.commit();
    db.execute(
        "UPDATE docs SET snapshot = ?2 WHERE doc_id = ?1",
        rusqlite::params![id.as_bytes().to_vec(), big.save()],
    )
    .expect("grow");
    id
}

#[test]
fn it_finds_a_grown_document_and_trims_it_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("relay");
    std::fs::create_dir_all(&data).expect("data dir");
    let id = relay_with_a_grown_document(&data);
    let id_text = id.to_string();

    let check = relay_cli(&data, &["doc", "check"]);
    assert!(
        !check.status.success(),
        "doc check exits 1 when a document fails"
    );
    let listing = String::from_utf8_lossy(&check.stdout);
    assert!(listing.contains(&id_text), "{listing}");

    // A dry run says what it would do and writes nothing.
    let dry = relay_cli(
        &data,
        &[
            "doc",
            "trim",
            &id_text,
            "--drop",
            "bloat",
            "--dry-run",
            "--json",
        ],
    );
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&dry.stdout).expect("json");
    assert!(report["seq"].is_null(), "{report}");
    assert_eq!(report["dropped"][0], "bloat");
    assert!(!relay_cli(&data, &["doc", "check"]).status.success());

    // A path the document does not hold is refused, naming it.
    let wrong = relay_cli(&data, &["doc", "trim", &id_text, "--drop", "no/such/key"]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("no/such/key"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );

    let trim = relay_cli(&data, &["doc", "trim", &id_text, "--drop", "bloat"]);
    assert!(
        trim.status.success(),
        "{}",
        String::from_utf8_lossy(&trim.stderr)
    );
    let said = String::from_utf8_lossy(&trim.stdout);
    assert!(
        said.contains("trimmed") && said.contains("next sync"),
        "{said}"
    );
    let check = relay_cli(&data, &["doc", "check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

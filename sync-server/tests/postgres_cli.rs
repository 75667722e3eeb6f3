//! The admin CLI on a PostgreSQL database (`--database`): enrol, list, revoke and status
//! work without a local relay database, and a URL that is not PostgreSQL is refused.
//!
//! Needs PostgreSQL: `FIELDSYNC_TEST_PG`, else `postgres://postgres@127.0.0.1:5432/postgres`.

use std::path::Path;
use std::process::{Command, Output};

use fieldsync_relay::store::postgres::ScratchDatabase;

const BIN: &str = env!("CARGO_BIN_EXE_fieldsync-relay");

fn relay_cli(data: &Path, db: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data")
        .arg(data)
        .arg("--database")
        .arg(db)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run fieldsync-relay")
}

fn cli_ok(data: &Path, db: &str, args: &[&str]) -> String {
    let out = relay_cli(data, db, args);
    assert!(
        out.status.success(),
        "fieldsync-relay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn the_cli_administers_a_postgres_relay() {
    let server = ScratchDatabase::server_url();
    let db = ScratchDatabase::create(&server).unwrap_or_else(|e| {
        panic!("this test needs PostgreSQL at {server} (set FIELDSYNC_TEST_PG for another): {e}")
    });
    let dir = tempfile::tempdir().expect("tmp");
    let enrolled = cli_ok(
        dir.path(),
        db.url(),
        &[
            "device",
            "enroll",
            "--name",
            "Li Wei laptop",
            "--role",
            "rep",
            "--scope",
            "north",
            "--relay-addr",
            "127.0.0.1:4433",
        ],
    );
    assert!(
        enrolled
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("fsyn1.")),
        "{enrolled}"
    );
    let listed = cli_ok(dir.path(), db.url(), &["device", "list", "--json"]);
    assert!(listed.contains("Li Wei laptop"), "{listed}");
    let status = cli_ok(dir.path(), db.url(), &["status"]);
    assert!(status.contains("database: postgres://"), "{status}");
    assert!(status.contains("high seq: 0"), "{status}");
    assert!(
        !dir.path().join("relay.db").exists(),
        "no SQLite file next to a PostgreSQL relay"
    );
    cli_ok(dir.path(), db.url(), &["device", "revoke", "Li Wei laptop"]);

    let bad = relay_cli(dir.path(), "mysql://root@localhost/x", &["status"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("database"), "{err}");
}

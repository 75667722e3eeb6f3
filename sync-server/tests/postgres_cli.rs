//! The admin CLI on a PostgreSQL database (`--database`): enrol, list, revoke and status
//! work without a local relay database, and a URL that is not PostgreSQL is refused.
//! Enrolment tokens carry the certificate pin the relay nodes recorded in the database, never
//! one of a certificate generated for the occasion.
//!
//! Needs PostgreSQL: `FIELDSYNC_TEST_PG`, else `postgres://postgres@127.0.0.1:5432/postgres`.

use std::path::Path;
use std::process::{Command, Output};

use fieldsync_core::protocol::EnrolToken;
use fieldsync_relay::store::postgres::ScratchDatabase;
use fieldsync_relay::{Relay, RelayConfig};

const BIN: &str = env!("CARGO_BIN_EXE_fieldsync-relay");

fn scratch() -> ScratchDatabase {
    let server = ScratchDatabase::server_url();
    ScratchDatabase::create(&server).unwrap_or_else(|e| {
        panic!("this test needs PostgreSQL at {server} (set FIELDSYNC_TEST_PG for another): {e}")
    })
}

/// A relay node on the database, serving the certificate in `data` (generated there on its
/// first start unless `cert_of` names another node's data directory).
fn node(
    rt: &tokio::runtime::Runtime,
    data: &Path,
    cert_of: Option<&Path>,
    db: &str,
) -> anyhow::Result<Relay> {
    rt.block_on(Relay::start(RelayConfig {
        data_dir: data.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        database: Some(db.to_string()),
        cert: cert_of.map(|d| d.join(fieldsync_relay::tls::CERT_FILE)),
        key: cert_of.map(|d| d.join(fieldsync_relay::tls::KEY_FILE)),
        ..RelayConfig::default()
    }))
}

/// `fieldsync-relay device enroll --database DB [extra…]`, run in the directory `cwd`.
fn enroll_in(cwd: &Path, db: &str, extra: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(cwd)
        .args(["device", "enroll", "--database", db, "--name", "Ana laptop"])
        .args(["--role", "rep", "--scope", "north"])
        .args(["--relay-addr", "relay.example.com:4433"])
        // The tests enrol the same name several times, each a token of its own.
        .arg("--again")
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run fieldsync-relay")
}

fn token_of(out: &Output) -> EnrolToken {
    assert!(
        out.status.success(),
        "enrol failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a token line");
    last.parse()
        .unwrap_or_else(|e| panic!("no token on the last line ({e}): {stdout}"))
}

fn error_of(out: &Output) -> String {
    assert!(!out.status.success(), "should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

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
    let db = scratch();
    let dir = tempfile::tempdir().expect("tmp");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let relay = node(&rt, dir.path(), None, db.url()).expect("relay node starts");
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
    assert!(status.contains("log position: 0"), "{status}");
    assert!(
        !dir.path().join("relay.db").exists(),
        "no SQLite file next to a PostgreSQL relay"
    );
    cli_ok(dir.path(), db.url(), &["device", "revoke", "Li Wei laptop"]);

    let bad = relay_cli(dir.path(), "mysql://root@localhost/x", &["status"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("database"), "{err}");
    rt.block_on(relay.shutdown()).expect("shutdown");
}

#[test]
fn enrolment_on_postgres_takes_the_pin_from_the_nodes() {
    let db = scratch();
    let tmp = tempfile::tempdir().expect("tmp");
    // Where the admin runs the CLI: no data directory, and none must appear.
    let admin = tmp.path().join("admin");
    std::fs::create_dir(&admin).expect("mkdir");

    let err = error_of(&enroll_in(&admin, db.url(), &[]));
    assert!(
        err.contains("start a relay node first, or pass --cert/--data of a node"),
        "{err}"
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let err = error_of(&enroll_in(&admin, db.url(), &["--data", path(&empty)]));
    assert!(err.contains("holds no relay certificate"), "{err}");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let a_dir = tmp.path().join("node-a");
    let a = node(&rt, &a_dir, None, db.url()).expect("node a starts");
    let token = token_of(&enroll_in(&admin, db.url(), &[]));
    assert_eq!(
        token.pin,
        a.fingerprint(),
        "the token pins the node's certificate"
    );
    assert_eq!(token.relay, "relay.example.com:4433");
    let token = token_of(&enroll_in(&admin, db.url(), &["--data", path(&a_dir)]));
    assert_eq!(token.pin, a.fingerprint());
    assert!(
        !admin.join("relay-data").exists(),
        "enrolment on PostgreSQL creates no data directory"
    );

    // Another certificate: neither a token for it nor a node serving it.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let other_fp = fieldsync_relay::tls::load_or_create(&other, None, None)
        .expect("another certificate")
        .fingerprint();
    assert_ne!(other_fp, a.fingerprint());
    let cert = other.join(fieldsync_relay::tls::CERT_FILE);
    for extra in [["--cert", path(&cert)], ["--data", path(&other)]] {
        let err = error_of(&enroll_in(&admin, db.url(), &extra));
        assert!(
            err.contains("is not the one the relay nodes on this database serve"),
            "{err}"
        );
    }
    let err = format!(
        "{:#}",
        node(&rt, &other, None, db.url()).expect_err("a node with another certificate is refused")
    );
    assert!(
        err.contains("the nodes must share one certificate"),
        "{err}"
    );
    assert!(
        err.contains(&other_fp) && err.contains(a.fingerprint()),
        "{err}"
    );

    // A second node with the first one's certificate joins.
    let b = node(&rt, &tmp.path().join("node-b"), Some(&a_dir), db.url()).expect("node b starts");
    assert_eq!(b.fingerprint(), a.fingerprint());
    rt.block_on(b.shutdown()).expect("shutdown");
    rt.block_on(a.shutdown()).expect("shutdown");
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

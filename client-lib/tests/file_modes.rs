//! The laptop's files are readable by their owner only, whatever the umask: the replica and
//! SQLite's WAL and shared-memory files `0600` from their creation, the data directory the CLI
//! creates `0700`. Looser ones left by an older version are tightened when opened; a directory
//! that is not fieldsync's own (a home directory, `/tmp`) is never changed.
//!
//! Sets the process umask (to the usual 022), so it runs in a process of its own: a file of
//! its own.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fieldsync_client::{Client, NewCustomer};

const BIN: &str = env!("CARGO_BIN_EXE_fieldsync");
const PIN: &str = "3f1c0000000000000000000000000000000000000000000000000000000000e9";

fn umask_022() {
    // SAFETY: umask only swaps the process's file mode creation mask.
    unsafe {
        libc::umask(0o022);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn set_mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
}

fn assert_mode(p: &Path, want: u32) {
    assert_eq!(
        mode(p),
        want,
        "{} is {:o}, not {want:o}",
        p.display(),
        mode(p)
    );
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

fn sqlite_files(db: &Path) -> [PathBuf; 3] {
    [
        db.to_path_buf(),
        with_suffix(db, "-wal"),
        with_suffix(db, "-shm"),
    ]
}

fn add_customer(client: &Client, name: &str) {
    client
        .customers()
        .create(NewCustomer {
            name: name.into(),
            scope: "north".into(),
            ..NewCustomer::default()
        })
        .expect("customer");
}

fn fieldsync(data: &Path, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("FIELDSYNC_DATA")
        .env_remove("FIELDSYNC_CREDENTIAL")
        .env("FIELDSYNC_LOG", "warn")
        .output()
        .expect("run fieldsync");
    assert!(
        out.status.success(),
        "fieldsync {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn init(data: &Path) -> Output {
    fieldsync(data, &["init", "--relay", "127.0.0.1:4433", "--pin", PIN])
}

#[test]
fn a_replica_is_private_from_creation_and_its_directory_left_alone() {
    umask_022();
    let tmp = tempfile::tempdir().expect("tmp");
    set_mode(tmp.path(), 0o755);
    let db = tmp.path().join("replica.db");
    let client = Client::open(&db).expect("replica");
    add_customer(&client, "Acme");
    for f in sqlite_files(&db) {
        assert!(f.exists(), "{} exists while open", f.display());
        assert_mode(&f, 0o600);
    }
    assert_mode(tmp.path(), 0o755);
}

#[test]
fn a_looser_replica_is_tightened_when_opened() {
    umask_022();
    let tmp = tempfile::tempdir().expect("tmp");
    set_mode(tmp.path(), 0o755);
    let db = tmp.path().join("replica.db");
    // An older version's replica, still open (so its WAL and shared memory exist), 0644.
    let old = Client::open(&db).expect("replica");
    add_customer(&old, "Acme");
    for f in sqlite_files(&db) {
        set_mode(&f, 0o644);
    }
    let again = Client::open(&db).expect("replica again");
    add_customer(&again, "Globex");
    for f in sqlite_files(&db) {
        assert_mode(&f, 0o600);
    }
    assert_mode(tmp.path(), 0o755);
}

#[test]
fn the_cli_data_directory_is_private_and_tightened_when_it_is_fieldsyncs_own() {
    umask_022();
    let tmp = tempfile::tempdir().expect("tmp");
    set_mode(tmp.path(), 0o755);
    let data = tmp.path().join("a/fieldsync");
    init(&data);
    assert_mode(&tmp.path().join("a"), 0o700);
    assert_mode(&data, 0o700);
    assert_mode(&data.join("replica.db"), 0o600);
    assert_mode(&data.join("config.toml"), 0o600);

    // Left open to others by an older version: tightened, with a warning naming the path.
    set_mode(&data, 0o755);
    set_mode(&data.join("replica.db"), 0o644);
    let out = fieldsync(&data, &["status"]);
    assert_mode(&data, 0o700);
    assert_mode(&data.join("replica.db"), 0o600);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&data.join("replica.db").display().to_string()) && err.contains("0644"),
        "the warning names the file and its old mode: {err}"
    );
    assert!(err.contains("0755"), "and the directory's: {err}");

    // A directory that holds other things is the user's: only fieldsync's files change.
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).expect("mkdir");
    set_mode(&home, 0o755);
    std::fs::write(home.join("notes.txt"), "mine").expect("write");
    init(&home);
    assert_mode(&home, 0o755);
    assert_mode(&home.join("replica.db"), 0o600);
    assert_mode(&home.join("config.toml"), 0o600);
}

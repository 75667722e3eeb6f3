//! The relay's files are readable by their owner only, whatever the umask: the data directory
//! and backup directories `0700`; `relay.db`, its WAL and shared-memory files, backups and
//! restored databases `0600`, from their creation. Files and directories an older version left
//! readable by others are tightened when the relay opens them.
//!
//! Sets the process umask (to the usual 022), so it runs in a process of its own: a file of
//! its own.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fieldsync_core::Role;
use fieldsync_relay::store::DB_FILE;
use fieldsync_relay::{Relay, RelayConfig, RelayStoreOptions, SqliteRelayStore};

const BIN: &str = env!("CARGO_BIN_EXE_fieldsync-relay");

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

fn with_suffix(p: &Path, suffix: &str) -> std::path::PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

/// The database and its WAL and shared-memory files (present while a connection is open).
fn assert_private_database(db: &Path) {
    assert_mode(db, 0o600);
    for suffix in ["-wal", "-shm"] {
        let side = with_suffix(db, suffix);
        assert!(side.exists(), "{} exists while open", side.display());
        assert_mode(&side, 0o600);
    }
}

async fn start(data: &Path) -> Relay {
    Relay::start(RelayConfig {
        data_dir: data.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts")
}

fn enrol(store: &fieldsync_relay::RelayStore, name: &str) {
    store
        .create_enrolment(
            name,
            Role::Rep,
            &["north".to_string()],
            None,
            Duration::from_secs(3600),
        )
        .expect("enrolment");
}

#[tokio::test]
async fn relay_files_backups_and_restores_are_private_from_creation() {
    umask_022();
    let tmp = tempfile::tempdir().expect("tmp");
    set_mode(tmp.path(), 0o755);
    let data = tmp.path().join("srv/relay-data");
    let relay = start(&data).await;
    enrol(relay.store(), "laptop");

    assert_mode(&tmp.path().join("srv"), 0o700);
    assert_mode(&data, 0o700);
    assert_private_database(&data.join(DB_FILE));
    assert_mode(&data.join("key.der"), 0o600);

    // A backup while the relay serves: the library, then the binary.
    let backups = tmp.path().join("backups");
    let one = backups.join("one");
    fieldsync_relay::backup::backup(&data, &one).expect("backup");
    assert_mode(&backups, 0o700);
    assert_mode(&one, 0o700);
    assert_mode(&one.join(DB_FILE), 0o600);
    assert_mode(&one.join("key.der"), 0o600);
    let two = backups.join("two");
    let out = Command::new(BIN)
        .args(["backup", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&two)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run fieldsync-relay backup");
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_mode(&two, 0o700);
    assert_mode(&two.join(DB_FILE), 0o600);
    assert_mode(&two.join("key.der"), 0o600);
    relay.shutdown().await.expect("shutdown");

    // Restored into a new directory, then over a database an older version left open.
    let restored = tmp.path().join("restored");
    fieldsync_relay::backup::restore(&one, &restored).expect("restore");
    assert_mode(&restored, 0o700);
    assert_mode(&restored.join(DB_FILE), 0o600);
    assert_mode(&restored.join("key.der"), 0o600);
    set_mode(&restored.join(DB_FILE), 0o644);
    set_mode(&one.join(DB_FILE), 0o644);
    let r = fieldsync_relay::backup::restore(&one, &restored).expect("restore again");
    assert_mode(&restored.join(DB_FILE), 0o600);
    let kept = r.replaced.expect("the replaced database is kept");
    assert_mode(&kept, 0o600);
}

#[tokio::test]
async fn looser_relay_files_are_tightened_when_opened() {
    umask_022();
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("relay-data");
    std::fs::create_dir(&data).expect("mkdir");
    let db = data.join(DB_FILE);
    // An older relay's database, still open (so its WAL and shared memory exist), 0644 in
    // a 0755 directory.
    let old = SqliteRelayStore::open(&db, RelayStoreOptions::default()).expect("store");
    enrol(&old.clone().into(), "before");
    for f in [
        db.clone(),
        with_suffix(&db, "-wal"),
        with_suffix(&db, "-shm"),
    ] {
        set_mode(&f, 0o644);
    }
    set_mode(&data, 0o755);

    let relay = start(&data).await;
    assert_mode(&data, 0o700);
    assert_private_database(&db);
    enrol(relay.store(), "after");
    relay.shutdown().await.expect("shutdown");
    drop(old);

    // The admin commands open them too.
    set_mode(&db, 0o644);
    set_mode(&data, 0o755);
    let out = Command::new(BIN)
        .args(["device", "list", "--data"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run fieldsync-relay");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&db.display().to_string()) && err.contains("0644"),
        "the warning names the file and its old mode: {err}"
    );
    assert_mode(&db, 0o600);
    assert_mode(&data, 0o700);
}

#[test]
fn a_shared_directory_is_never_made_private() {
    umask_022();
    let tmp = tempfile::tempdir().expect("tmp");
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    set_mode(&shared, 0o1777);
    fieldsync_relay::config::create_data_dir(&shared).expect("data dir");
    assert_mode(&shared, 0o1777);
}

//! Backup and restore of the relay's embedded store, with real clients over QUIC.
//!
//! The invariant: a relay restored from an older backup loses no change it acknowledged after
//! the backup. The devices that uploaded those changes no longer hold them in their outboxes;
//! the restore's new epoch makes them compare heads with the relay and upload them again, so
//! a device that never saw them gets them from the restored relay.

use std::path::Path;
use std::time::Duration;

use fieldsync_client::sync::{SyncConfig, sync_now};
use fieldsync_client::{Client, CustomerEdit, CustomerField, CustomerId, DocId, NewCustomer};
use fieldsync_relay::backup::{self, BackupError};
use fieldsync_relay::store::DB_FILE;
use fieldsync_relay::{Relay, RelayConfig};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

fn relay_config(data: &Path) -> RelayConfig {
    RelayConfig {
        data_dir: data.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        open_enrollment: true,
        ..RelayConfig::default()
    }
}

fn sync_config(relay: &Relay) -> SyncConfig {
    let mut cfg = SyncConfig::new(relay.local_addr().to_string(), relay.fingerprint());
    cfg.connect_timeout = Duration::from_secs(5);
    cfg
}

async fn sync(client: &Client, cfg: &SyncConfig) {
    timeout(LIMIT, sync_now(client, cfg))
        .await
        .expect("sync within the time limit")
        .expect("sync succeeds");
}

fn customer(client: &Client, name: &str) -> CustomerId {
    client
        .customers()
        .create(NewCustomer {
            org: "acme".into(),
            scope: "north".into(),
            name: name.into(),
            ..Default::default()
        })
        .expect("create customer")
}

/// Every document with its sorted heads.
fn state(client: &Client) -> Vec<(DocId, Vec<automerge::ChangeHash>)> {
    let mut all = client
        .with_store(|s| s.all_heads())
        .expect("heads of the replica");
    for (_, h) in &mut all {
        h.sort();
    }
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_relay_gets_back_every_change_it_acknowledged_after_the_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("relay");
    let saved = dir.path().join("backup");
    let relay = Relay::start(relay_config(&data))
        .await
        .expect("relay starts");
    let cfg = sync_config(&relay);
    let a = Client::open(dir.path().join("a.db")).expect("replica a");
    let early: Vec<CustomerId> = (0..3)
        .map(|i| customer(&a, &format!("Early {i}")))
        .collect();
    sync(&a, &cfg).await;

    // The backup is taken while the relay serves.
    let taken = tokio::task::spawn_blocking({
        let (data, saved) = (data.clone(), saved.clone());
        move || backup::backup(&data, &saved)
    })
    .await
    .expect("backup task")
    .expect("backup succeeds");
    assert!(taken.docs >= 3);
    assert!(saved.join("cert.der").is_file() && saved.join("key.der").is_file());
    // A second backup into the same directory is refused, leaving the first intact.
    assert!(matches!(
        backup::backup(&data, &saved),
        Err(BackupError::Exists(_))
    ));

    // Acknowledged after the backup: new customers and an edit of an early one.
    let late: Vec<CustomerId> = (0..2).map(|i| customer(&a, &format!("Late {i}"))).collect();
    a.customers()
        .edit(
            early[0],
            CustomerEdit::Set(CustomerField::Industry, "mining".into()),
        )
        .expect("edit");
    sync(&a, &cfg).await;
    assert_eq!(a.outbox_len().expect("outbox"), 0, "all acknowledged");
    let pin = relay.fingerprint().to_string();
    relay.shutdown().await.expect("relay stops");

    // A serving relay's lock makes a restore refuse, and nothing changes.
    let before = std::fs::read(data.join(DB_FILE)).expect("database bytes");
    {
        let _held = backup::lock_data_dir(&data).expect("lock");
        assert!(matches!(
            backup::restore(&saved, &data),
            Err(BackupError::Busy(_))
        ));
    }
    // So does a backup directory without a relay database, or with a corrupt one.
    let junk = dir.path().join("junk");
    std::fs::create_dir_all(&junk).expect("junk dir");
    assert!(matches!(
        backup::restore(&junk, &data),
        Err(BackupError::Missing(_))
    ));
    std::fs::write(junk.join(DB_FILE), b"not a database at all, just bytes").expect("write");
    assert!(matches!(
        backup::restore(&junk, &data),
        Err(BackupError::Invalid { .. })
    ));
    assert_eq!(
        std::fs::read(data.join(DB_FILE)).expect("database bytes"),
        before,
        "a refused restore leaves the database alone"
    );

    let restored = backup::restore(&saved, &data).expect("restore");
    assert_ne!(restored.summary.epoch, taken.epoch, "a new epoch");
    assert_eq!(restored.backup_epoch, taken.epoch);
    assert_eq!(restored.summary.high_seq, taken.high_seq);
    let kept = restored.replaced.expect("the replaced database is kept");
    assert_eq!(backup::inspect(&kept).expect("kept database").docs, 5);

    // Back up on the restored database (same certificate, so the same pin).
    let relay = Relay::start(relay_config(&data))
        .await
        .expect("relay restarts");
    assert_eq!(relay.fingerprint(), pin);
    let cfg = sync_config(&relay);
    sync(&a, &cfg).await; // repair: a uploads what the backup lacks
    let b = Client::open(dir.path().join("b.db")).expect("replica b");
    sync(&b, &cfg).await;
    assert_eq!(
        state(&b),
        state(&a),
        "b holds everything a has, heads included"
    );
    for id in late.iter().chain(&early) {
        assert!(b.customers().get(*id).is_ok(), "{id} reached b");
    }
    let edited = b.customers().get(early[0]).expect("early customer");
    assert_eq!(edited.industry.as_deref(), Some("mining"));
    relay.shutdown().await.expect("relay stops");
}

/// Attachments survive a restore: the backup holds the bytes uploaded before it, and laptops
/// offer theirs again once they see the restored relay's new epoch, so an attachment uploaded
/// after the backup comes back too, even when the relay's data directory was lost entirely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_come_back_after_a_restore_into_an_empty_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("relay");
    let saved = dir.path().join("backup");
    let relay = Relay::start(relay_config(&data))
        .await
        .expect("relay starts");
    let cfg = sync_config(&relay);
    let a = Client::open(dir.path().join("a.db")).expect("replica a");
    let c = customer(&a, "Erdos Coal");
    let before: Vec<u8> = (0..150_000u32).map(|i| (i % 241) as u8).collect();
    let after: Vec<u8> = (0..90_000u32).map(|i| (i % 239) as u8).collect();
    let p1 = a
        .attachments()
        .attach_bytes(c, "before.pdf", None, &before, "")
        .expect("attach");
    sync(&a, &cfg).await;
    tokio::task::spawn_blocking({
        let (data, saved) = (data.clone(), saved.clone());
        move || backup::backup(&data, &saved)
    })
    .await
    .expect("backup task")
    .expect("backup succeeds");
    let in_backup = backup::inspect_attachments(&saved.join(fieldsync_relay::store::BLOBS_FILE))
        .expect("attachments in the backup");
    assert_eq!((in_backup.files, in_backup.bytes), (1, 150_000));
    let p2 = a
        .attachments()
        .attach_bytes(c, "after.pdf", None, &after, "")
        .expect("attach");
    sync(&a, &cfg).await;
    assert_eq!(a.attachments().waiting().expect("w").upload_files, 0);
    relay.shutdown().await.expect("relay stops");

    // The relay's disk is lost; a new one is restored from the backup.
    let fresh = dir.path().join("relay2");
    std::fs::create_dir_all(&fresh).expect("dir");
    backup::restore(&saved, &fresh).expect("restore");
    let relay = Relay::start(relay_config(&fresh))
        .await
        .expect("relay restarts");
    let cfg = sync_config(&relay);
    sync(&a, &cfg).await; // repair: the entry of p2, and p2's bytes offered again
    let b = Client::open(dir.path().join("b.db")).expect("replica b");
    sync(&b, &cfg).await;
    for (p, bytes) in [(&p1, &before), (&p2, &after)] {
        b.attachments()
            .fetch(c, p.attachment.hash, p.attachment.size)
            .expect("fetch");
        sync(&b, &cfg).await;
        assert_eq!(
            &b.attachments().read(p.attachment.hash).expect("bytes"),
            bytes
        );
    }
    relay.shutdown().await.expect("relay stops");
}

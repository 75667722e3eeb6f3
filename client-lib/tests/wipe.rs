//! Remote wipe and the offline lease end to end over QUIC against an in-process relay: IT
//! orders a laptop wiped (now, or after its unsynced work is uploaded); at its next contact the
//! laptop destroys its keys and then its files, and its acknowledgement lands in the relay's
//! audit trail. The relay's lease reaches the laptop with every contact.

use std::path::Path;
use std::time::Duration;

use fieldsync_client::sync::{SyncConfig, SyncError, sync_now};
use fieldsync_client::vault::{self, Protection, Unlock};
use fieldsync_client::{Client, LeaseState, NewCustomer, Role, StoreOptions};
use fieldsync_core::protocol::WipeOrder;
use fieldsync_relay::{Relay, RelayConfig};
use tokio::time::timeout;
use zeroize::Zeroizing;

const LIMIT: Duration = Duration::from_secs(60);

async fn start_relay(dir: &Path, lease_days: u32) -> Relay {
    Relay::start(RelayConfig {
        data_dir: dir.join("relay"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        offline_lease_days: lease_days,
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts")
}

/// An encrypted replica enrolled with the relay as a rep of `north`.
fn laptop(relay: &Relay, dir: &Path, name: &str) -> (Client, SyncConfig) {
    let path = dir.join(format!("{name}.db"));
    vault::encrypt(
        &path,
        &Protection {
            passphrase: Some(Zeroizing::new("a long passphrase".into())),
            keyring: false,
        },
    )
    .expect("encrypt");
    let client = Client::open_unlocked(&path, StoreOptions::default(), &unlock()).expect("open");
    let enrolment = relay
        .store()
        .enrol_device(
            Some(client.device_id()),
            name,
            Role::Rep,
            &["north".to_string()],
        )
        .expect("enrol");
    let mut cfg = SyncConfig::new(relay.local_addr().to_string(), relay.fingerprint());
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.poll_interval = Duration::from_millis(100);
    cfg.credential = Some(enrolment.secret);
    (client, cfg)
}

fn unlock() -> Unlock {
    Unlock {
        passphrase: Some(Zeroizing::new("a long passphrase".into())),
        no_keyring: true,
        no_session: true,
    }
}

fn customer(client: &Client, name: &str) {
    client
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: name.into(),
            ..Default::default()
        })
        .expect("customer");
}

fn files_left(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departing_reps_work_reaches_the_relay_before_the_laptop_is_wiped() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path(), 0).await;
    let (li, cfg) = laptop(&relay, dir.path(), "li");
    let (wang, wang_cfg) = laptop(&relay, dir.path(), "wang");
    timeout(LIMIT, sync_now(&li, &cfg))
        .await
        .expect("t")
        .expect("sync");

    // Offline work not yet synced, then IT wipes the departing rep's laptop after upload.
    customer(&li, "Erdos Drilling");
    customer(&li, "Xilinhot Grassland Co");
    relay
        .store()
        .order_wipe(&li.device_id().to_string(), WipeOrder::AfterUpload)
        .expect("order");

    let err = timeout(LIMIT, sync_now(&li, &cfg))
        .await
        .expect("in time")
        .expect_err("the sync ends in the wipe");
    let SyncError::Wiped(report) = &err else {
        panic!("expected the wipe, got {err:?}");
    };
    assert!(report.keys_destroyed, "{report:?}");
    assert_eq!(report.unsent_changes, 0, "the work was uploaded first");
    assert!(
        files_left(dir.path(), "li.db").is_empty(),
        "{:?}",
        files_left(dir.path(), "li.db")
    );

    // The work reached the relay: another laptop sees it.
    timeout(LIMIT, sync_now(&wang, &wang_cfg))
        .await
        .expect("t")
        .expect("sync");
    let names: Vec<String> = wang
        .customers()
        .list(&Default::default())
        .expect("list")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(names.contains(&"Erdos Drilling".to_string()), "{names:?}");
    assert!(
        names.contains(&"Xilinhot Grassland Co".to_string()),
        "{names:?}"
    );

    // The acknowledgement is in the audit trail, after the order.
    let events: Vec<String> = relay
        .store()
        .device_events()
        .expect("events")
        .into_iter()
        .filter(|e| e.device_id == li.device_id())
        .map(|e| e.event)
        .collect();
    assert_eq!(events, vec!["wipe_ordered", "wiped"], "{events:?}");
    drop(wang);
    relay.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_laptop_is_wiped_at_once_and_its_pending_work_is_not_taken() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path(), 0).await;
    let (li, cfg) = laptop(&relay, dir.path(), "li");
    timeout(LIMIT, sync_now(&li, &cfg))
        .await
        .expect("t")
        .expect("sync");
    customer(&li, "Written by the thief");
    relay
        .store()
        .order_wipe(&li.device_id().to_string(), WipeOrder::Now)
        .expect("order");

    let err = timeout(LIMIT, sync_now(&li, &cfg))
        .await
        .expect("in time")
        .expect_err("wiped");
    let SyncError::Wiped(report) = &err else {
        panic!("expected the wipe, got {err:?}");
    };
    assert!(report.keys_destroyed);
    assert_eq!(report.unsent_changes, 1, "{report:?}");
    assert!(files_left(dir.path(), "li.db").is_empty());
    let events = relay.store().device_events().expect("events");
    let wiped = events
        .iter()
        .find(|e| e.device_id == li.device_id() && e.event == "wiped")
        .expect("acknowledged");
    assert_eq!(wiped.detail["unsent_changes"], 1, "{}", wiped.detail);

    // Nothing of the thief's reached the relay, and the credential no longer works.
    let (other, other_cfg) = laptop(&relay, dir.path(), "wang");
    timeout(LIMIT, sync_now(&other, &other_cfg))
        .await
        .expect("t")
        .expect("sync");
    assert!(
        other
            .customers()
            .list(&Default::default())
            .expect("list")
            .is_empty()
    );
    let fresh = Client::open(dir.path().join("again.db")).expect("open");
    let again = timeout(LIMIT, sync_now(&fresh, &cfg))
        .await
        .expect("in time");
    assert!(again.is_err(), "the wiped credential still syncs");
    relay.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_lease_reaches_the_laptop_with_each_contact() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path(), 14).await;
    let (li, cfg) = laptop(&relay, dir.path(), "li");
    assert!(li.lease().expect("lease").is_none());
    timeout(LIMIT, sync_now(&li, &cfg))
        .await
        .expect("t")
        .expect("sync");
    let (lease, state) = li.lease().expect("lease").expect("set by the relay");
    assert_eq!(lease.days, 14);
    assert!(matches!(state, LeaseState::Valid { left } if left > 13 * 86_400_000));
    relay.shutdown().await.expect("shutdown");
}

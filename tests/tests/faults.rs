//! Sync over bad links, through the seeded UDP fault proxy (failures other sync
//! systems met on lossy, slow and cut links): 20 % loss each way with a 300 ms round trip, a link cut every few seconds
//! during a sync of thousands of changes, and a 64 kbit/s bottleneck.
//!
//! The clients run [`SyncHandle`] — the background sync a rep's laptop runs, with live pushes
//! and reconnects with backoff — and keep editing while the link misbehaves. Each test ends
//! with the §4.1 checks: every outbox empty, every replica and the relay holding the same
//! documents with the same heads (so every acknowledged change is on the relay and on every
//! replica), the same content everywhere, and healthy replicas; plus an explicit oracle: every
//! change hash that was in an outbox before syncing is in the relay's change table.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fieldsync_client::fieldsync_core::model::{Edit, EditCtx, apply_edit};
use fieldsync_client::sync::{BackoffConfig, SyncConfig, SyncEvent, SyncHandle};
use fieldsync_client::{Client, CustomerEdit, CustomerField, CustomerId, NewCustomer, Role};
use fieldsync_relay::{Relay, RelayConfig};
use fieldsync_tests::faultproxy::{FaultConfig, FaultProxy, LinkConfig};
use tokio::sync::broadcast::Receiver;

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    relay: Relay,
    proxy: FaultProxy,
}

impl Setup {
    async fn new(faults: FaultConfig, relay_idle_secs: u64) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let relay = Relay::start(RelayConfig {
            data_dir: dir.join("relay"),
            listen: "127.0.0.1:0".parse().unwrap(),
            idle_timeout_secs: relay_idle_secs,
            open_enrollment: true,
            ..RelayConfig::default()
        })
        .await
        .expect("relay starts");
        let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), relay.local_addr(), faults)
            .await
            .expect("proxy starts");
        Self {
            _tmp: tmp,
            dir,
            relay,
            proxy,
        }
    }

    fn relay_db(&self) -> PathBuf {
        self.dir.join("relay").join("relay.db")
    }

    fn client(&self, name: &str) -> Client {
        Client::open(self.dir.join(format!("{name}.db"))).expect("replica opens")
    }

    /// A client configuration through the proxy: quick to notice a dead link and quick to
    /// come back, as a laptop on a flaky link should be configured.
    fn config(&self, idle: Duration) -> SyncConfig {
        let mut c = SyncConfig::new(
            self.proxy.local_addr().to_string(),
            self.relay.fingerprint().to_string(),
        );
        c.connect_timeout = Duration::from_secs(5);
        c.idle_timeout = idle;
        c.keep_alive = (idle / 4).max(Duration::from_millis(100));
        c.response_timeout = Duration::from_secs(20);
        c.poll_interval = Duration::from_millis(200);
        c.backoff = BackoffConfig {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        c
    }
}

fn create_customers(client: &Client, prefix: &str, n: usize) -> Vec<CustomerId> {
    (0..n)
        .map(|i| {
            client
                .customers()
                .create(NewCustomer {
                    scope: "north".into(),
                    name: format!("{prefix} {i:05}"),
                    phone: Some(format!("+86 139 {:04} {i:04}", prefix.len())),
                    ..Default::default()
                })
                .expect("create")
        })
        .collect()
}

/// Counts the events a handle has published so far and checks that none was a refusal
/// (every change here is valid) or a fatal stop.
fn drain_events(rx: &mut Receiver<SyncEvent>) -> (u64, u64) {
    let (mut connected, mut disconnected) = (0, 0);
    while let Ok(e) = rx.try_recv() {
        match e {
            SyncEvent::Connected { .. } => connected += 1,
            SyncEvent::Disconnected { .. } => disconnected += 1,
            SyncEvent::Rejected { hash, reason } => panic!("change {hash} refused: {reason}"),
            SyncEvent::Stopped => panic!("a sync handle stopped by itself"),
            _ => {}
        }
    }
    (connected, disconnected)
}

/// The oracle check: every hash that was written (and so queued) is on the relay.
fn assert_relay_has(relay_db: &Path, written: &[support::Hash]) {
    let lacking = support::relay_lacks(relay_db, written);
    assert!(
        lacking.is_empty(),
        "{} of {} written changes are not on the relay",
        lacking.len(),
        written.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_percent_loss_with_300ms_rtt_converges_while_editing() {
    let link = LinkConfig {
        loss: 0.2,
        delay: Duration::from_millis(150),
        jitter: Duration::from_millis(10),
        ..LinkConfig::default()
    };
    let s = Setup::new(FaultConfig::symmetric(0x1055, link), 30).await;
    let (a, b) = (s.client("a"), s.client("b"));
    let a_ids = create_customers(&a, "lossy-a", 60);
    let b_ids = create_customers(&b, "lossy-b", 60);
    let mut written = support::outbox_hashes(&a);
    written.extend(support::outbox_hashes(&b));
    let cfg = s.config(Duration::from_secs(10));
    let ha = SyncHandle::start(a.clone(), cfg.clone());
    let hb = SyncHandle::start(b.clone(), cfg);
    let (mut ea, mut eb) = (ha.subscribe(), hb.subscribe());
    // Both keep working while connected: edits to their own and to each other's customers
    // (those arrive over the lossy link first), including the same field on both sides.
    for round in 0..20 {
        a.customers()
            .add_phone(a_ids[round], format!("+86 138 0000 {round:04}"))
            .unwrap();
        b.customers()
            .edit(
                b_ids[round],
                CustomerEdit::Set(CustomerField::ShortName, format!("short-{round}")),
            )
            .unwrap();
        if b.customers().get(a_ids[0]).is_ok() {
            b.customers()
                .edit(
                    a_ids[0],
                    CustomerEdit::Set(CustomerField::Industry, format!("b-{round}")),
                )
                .unwrap();
        }
        a.customers()
            .edit(
                a_ids[0],
                CustomerEdit::Set(CustomerField::Industry, format!("a-{round}")),
            )
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let clients = [&a, &b];
    support::wait_converged(&clients, &s.relay_db(), Duration::from_secs(60)).await;
    support::assert_same_content(&clients);
    assert_relay_has(&s.relay_db(), &written);
    assert_eq!(a.with_store(|st| st.doc_count()).unwrap(), 120);
    drain_events(&mut ea);
    drain_events(&mut eb);
    let stats = s.proxy.stats();
    eprintln!("proxy: {stats:?}");
    assert!(
        stats.up.dropped_loss > 0 && stats.down.dropped_loss > 0,
        "the link really lost packets"
    );
    ha.stop().await;
    hb.stop().await;
    s.relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_every_few_seconds_during_a_3000_change_sync() {
    // Up 2.5 s, down 1.5 s, repeating; the clients' idle timeout (1 s) is shorter than a cut,
    // so every cut kills the connection and the handle must reconnect and resume.
    let faults = FaultConfig {
        cut_every: Some((Duration::from_millis(2_500), Duration::from_millis(1_500))),
        ..FaultConfig::symmetric(
            0xc07,
            LinkConfig {
                delay: Duration::from_millis(5),
                ..LinkConfig::default()
            },
        )
    };
    let s = Setup::new(faults, 2).await;
    let (a, b) = (s.client("a"), s.client("b"));
    // 1,000 customers with two more edits each: 3,000 changes to upload and to download.
    let ids = create_customers(&a, "cut", 1_000);
    let ctx = EditCtx::new("rep-a", Role::Rep);
    a.with_store(|st| {
        st.transaction(|tx| {
            for (i, id) in ids.iter().enumerate() {
                for (field, v) in [
                    (CustomerField::ShortName, format!("short {i}")),
                    (CustomerField::Industry, format!("industry {i}")),
                ] {
                    let edit = Edit::Customer(CustomerEdit::Set(field, v));
                    tx.edit(id.doc_id(), |doc| apply_edit(doc, &edit, &ctx))?;
                }
            }
            Ok(())
        })
    })
    .unwrap();
    let written = support::outbox_hashes(&a);
    assert_eq!(written.len(), 3_000);
    let cfg = s.config(Duration::from_secs(1));
    let started = Instant::now();
    let ha = SyncHandle::start(a.clone(), cfg.clone());
    let hb = SyncHandle::start(b.clone(), cfg);
    let (mut ea, mut eb) = (ha.subscribe(), hb.subscribe());
    // b edits too while the link keeps dropping.
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let id = create_customers(&b, &format!("cut-b{i}"), 1)[0];
        b.customers()
            .add_phone(id, format!("+86 137 {i:08}"))
            .unwrap();
    }
    let clients = [&a, &b];
    support::wait_converged(&clients, &s.relay_db(), Duration::from_secs(60)).await;
    eprintln!(
        "3,000 changes up and down through cuts in {:?}",
        started.elapsed()
    );
    support::assert_same_content(&clients);
    assert_relay_has(&s.relay_db(), &written);
    let (ca, da) = drain_events(&mut ea);
    let (cb, db) = drain_events(&mut eb);
    eprintln!("a: {ca} connections, {da} disconnects; b: {cb} connections, {db} disconnects");
    let stats = s.proxy.stats();
    eprintln!("proxy: {stats:?}");
    assert!(
        stats.up.dropped_cut + stats.down.dropped_cut > 0,
        "cuts happened"
    );
    assert!(
        ca + cb > 2,
        "the cuts broke connections and the handles reconnected"
    );
    ha.stop().await;
    hb.stop().await;
    s.relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_kbit_link_converges() {
    let link = LinkConfig {
        bandwidth_bps: Some(64_000),
        delay: Duration::from_millis(40),
        ..LinkConfig::default()
    };
    let s = Setup::new(FaultConfig::symmetric(0x64, link), 30).await;
    let (a, b) = (s.client("a"), s.client("b"));
    let a_ids = create_customers(&a, "slow-a", 250);
    create_customers(&b, "slow-b", 50);
    let mut written = support::outbox_hashes(&a);
    written.extend(support::outbox_hashes(&b));
    let cfg = s.config(Duration::from_secs(10));
    let started = Instant::now();
    let ha = SyncHandle::start(a.clone(), cfg.clone());
    let hb = SyncHandle::start(b.clone(), cfg);
    let (mut ea, mut eb) = (ha.subscribe(), hb.subscribe());
    for (i, id) in a_ids.iter().take(20).enumerate() {
        a.customers()
            .add_note(*id, format!("called on a slow link, note {i}"))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let clients = [&a, &b];
    support::wait_converged(&clients, &s.relay_db(), Duration::from_secs(60)).await;
    let took = started.elapsed();
    support::assert_same_content(&clients);
    assert_relay_has(&s.relay_db(), &written);
    drain_events(&mut ea);
    drain_events(&mut eb);
    let stats = s.proxy.stats();
    let bytes = stats.up.bytes_forwarded + stats.down.bytes_forwarded;
    eprintln!(
        "{bytes} bytes through the 64 kbit/s link in {took:?} ({:.1} kbit/s); proxy: {stats:?}",
        bytes as f64 * 8.0 / took.as_secs_f64() / 1000.0
    );
    ha.stop().await;
    hb.stop().await;
    s.relay.shutdown().await.unwrap();
}

/// The laptop's address changes twice in the middle of a sync (NAT rebinding; a laptop moving
/// from its satellite terminal to a cellular hotspot looks the same to the relay): QUIC moves
/// the connection to the new address and the one `sync_now` (which never reconnects) finishes
/// on the connection it started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_keeps_its_connection_when_the_laptops_address_changes() {
    let link = LinkConfig {
        bandwidth_bps: Some(512_000),
        delay: Duration::from_millis(50),
        ..LinkConfig::default()
    };
    let s = Setup::new(FaultConfig::symmetric(0x316, link), 30).await;
    let seeder = s.client("seeder");
    create_customers(&seeder, "seed", 1_500);
    let mut direct = SyncConfig::new(
        s.relay.local_addr().to_string(),
        s.relay.fingerprint().to_string(),
    );
    direct.response_timeout = Duration::from_secs(30);
    fieldsync_client::sync::sync_now(&seeder, &direct)
        .await
        .expect("seeding over loopback");
    let before = s.relay.metrics().connections.get();

    let laptop = s.client("laptop");
    create_customers(&laptop, "moving", 1_500);
    let written = support::outbox_hashes(&laptop);
    // A dead path must show quickly: without migration the sync would fail, not hang.
    let cfg = s.config(Duration::from_secs(4));
    let sync = {
        let laptop = laptop.clone();
        tokio::spawn(async move { fieldsync_client::sync::sync_now(&laptop, &cfg).await })
    };
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(
            !sync.is_finished(),
            "the sync must still be running when the address changes"
        );
        assert_eq!(s.proxy.rebind().expect("rebind"), 1);
    }
    let report = sync
        .await
        .expect("task")
        .expect("the sync survives the address changes");
    assert_eq!(report.changes_acked, written.len() as u64);
    assert_eq!(report.outbox_remaining, 0);
    assert_eq!(
        laptop.with_store(|st| st.doc_count()).unwrap(),
        3_000,
        "the laptop downloaded the seeded customers"
    );
    assert_relay_has(&s.relay_db(), &written);
    assert_eq!(
        s.relay.metrics().connections.get() - before,
        1,
        "one connection carried the whole sync"
    );
    s.relay.shutdown().await.unwrap();
}

/// A laptop back from two weeks away syncs on a metered, lossy link: each sync spends a small
/// budget and stops. The first already brings the customers it visits tomorrow up to date
/// (their documents come in a lane ahead of the rest); the following syncs go on where the
/// last stopped, and in the end the laptop holds everything, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metered_catch_up_on_a_lossy_link_brings_tomorrows_customers_first() {
    let link = LinkConfig {
        bandwidth_bps: Some(512_000),
        delay: Duration::from_millis(150),
        loss: 0.10,
        ..LinkConfig::default()
    };
    let s = Setup::new(FaultConfig::symmetric(0x1a9e, link), 30).await;
    let office = s.client("office");
    let customers = create_customers(&office, "book", 400);
    let mut direct = SyncConfig::new(
        s.relay.local_addr().to_string(),
        s.relay.fingerprint().to_string(),
    );
    direct.response_timeout = Duration::from_secs(30);
    let sync = fieldsync_client::sync::sync_now;
    sync(&office, &direct).await.expect("office over loopback");
    let laptop = s.client("laptop");
    sync(&laptop, &direct).await.expect("laptop over loopback");
    // Tomorrow's customers: the office's notes reach them last in every round.
    let tomorrow = &customers[customers.len() - 3..];
    let at = fieldsync_core::ids::now_millis() + 24 * 3_600_000;
    for c in tomorrow {
        laptop
            .visits()
            .create(fieldsync_client::NewVisit {
                customer_id: *c,
                kind: None,
                notes: None,
                status: fieldsync_client::VisitStatus::Planned,
                at: Some(at),
                location: None,
            })
            .expect("plan a visit");
    }
    sync(&laptop, &direct).await.expect("the plan goes up");
    let ids: Vec<_> = customers.iter().map(|c| (*c).into()).collect();
    fieldsync_tests::workload::office_notes(&office, &ids, 6).expect("office notes");
    sync(&office, &direct).await.expect("office notes go up");
    let want = support::heads(&office);

    let mut cfg = s.config(Duration::from_secs(10));
    cfg.budget = Some(48 << 10);
    let mut syncs = 0;
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(
            attempts < 60,
            "the catch-up does not end after {syncs} syncs"
        );
        let r = match sync(&laptop, &cfg).await {
            Ok(r) => r,
            // A lossy link may fail a sync; the next goes on from the last applied batch.
            Err(e) if e.is_retryable() => continue,
            Err(e) => panic!("metered sync: {e}"),
        };
        syncs += 1;
        if syncs == 1 {
            assert!(r.budget_spent && r.download_waiting, "{r:?}");
            let have = support::heads(&laptop);
            for c in tomorrow {
                let id = (*c).into();
                assert_eq!(
                    have.get(&id),
                    want.get(&id),
                    "tomorrow's customer {c} is current"
                );
            }
        }
        if !r.download_waiting {
            break;
        }
    }
    assert!(syncs > 2, "the budget split the catch-up ({syncs} syncs)");
    support::wait_converged(&[&office, &laptop], &s.relay_db(), Duration::from_secs(60)).await;
    s.relay.shutdown().await.unwrap();
}

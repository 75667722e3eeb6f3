//! Two relay nodes on one PostgreSQL database (`docs/DESIGN.md` §7), over real QUIC on 127.0.0.1 with
//! the real client: laptops on different nodes converge, a change acknowledged by node A
//! reaches a live laptop connected to node B, and a device revoked through node A is cut off
//! and refused by node B.
//!
//! Needs PostgreSQL: `FIELDSYNC_TEST_PG`, else `postgres://postgres@127.0.0.1:5432/postgres`
//! (trust authentication); each test creates a database of its own and drops it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use fieldsync_client::sync::{
    EnrolToken, SyncConfig, SyncEvent, SyncHandle, enrol_replica, load_credential, sync_now,
};
use fieldsync_client::{Client, CustomerId, DocId, Identity, NewCustomer, Role};
use fieldsync_core::protocol::{ErrorCode, SessionError};
use fieldsync_relay::store::postgres::ScratchDatabase;
use fieldsync_relay::{Relay, RelayConfig};
use tokio::sync::broadcast;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

fn scratch() -> ScratchDatabase {
    let server = ScratchDatabase::server_url();
    ScratchDatabase::create(&server).unwrap_or_else(|e| {
        panic!("this test needs PostgreSQL at {server} (set FIELDSYNC_TEST_PG for another): {e}")
    })
}

/// A relay node on `db`. Nodes sharing a database serve one certificate (the first node records
/// it there; another is refused): every node here serves the one in `dir/cert`.
async fn node(dir: &Path, name: &str, db: &ScratchDatabase) -> Relay {
    let cert = dir.join("cert");
    std::fs::create_dir_all(&cert).expect("certificate directory");
    fieldsync_relay::tls::load_or_create(&cert, None, None).expect("certificate");
    Relay::start(RelayConfig {
        data_dir: dir.join(name),
        listen: "127.0.0.1:0".parse().expect("addr"),
        database: Some(db.url().to_string()),
        cert: Some(cert.join(fieldsync_relay::tls::CERT_FILE)),
        key: Some(cert.join(fieldsync_relay::tls::KEY_FILE)),
        ..RelayConfig::default()
    })
    .await
    .expect("relay node starts")
}

/// Runs a store call off the async threads (the PostgreSQL client blocks).
async fn blocking<T: Send + 'static>(
    relay: &Relay,
    f: impl FnOnce(&fieldsync_relay::RelayStore) -> T + Send + 'static,
) -> T {
    let store = relay.store().clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .expect("store call")
}

struct Laptop {
    client: Client,
    cfg: SyncConfig,
}

/// Enrols a laptop through `relay` (so it syncs with that node).
async fn laptop(relay: &Relay, dir: &Path, name: &str) -> Laptop {
    let client = Client::open(dir.join(format!("{name}.db"))).expect("replica");
    client
        .set_identity(Identity::new(name, Role::Rep, "acme"))
        .expect("identity");
    let owned = name.to_string();
    let secret = blocking(relay, move |s| {
        s.create_enrolment(
            &owned,
            Role::Rep,
            &["north".to_string()],
            None,
            Duration::from_secs(3600),
        )
    })
    .await
    .expect("enrolment");
    let token = EnrolToken::new(
        &relay.local_addr().to_string(),
        relay.fingerprint(),
        &secret,
    )
    .expect("token");
    let e = timeout(
        LIMIT,
        enrol_replica(&client, &token, Duration::from_secs(5)),
    )
    .await
    .expect("in time")
    .expect("enrolled");
    let mut cfg = SyncConfig::new(&e.relay, &e.pin);
    cfg.credential = load_credential(&client).expect("credential");
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.response_timeout = Duration::from_secs(20);
    Laptop { client, cfg }
}

impl Laptop {
    async fn sync(&self) {
        timeout(LIMIT, sync_now(&self.client, &self.cfg))
            .await
            .expect("sync in time")
            .expect("sync");
    }

    fn customer(&self, name: &str) -> CustomerId {
        self.client
            .customers()
            .create(NewCustomer {
                scope: "north".into(),
                name: name.into(),
                ..Default::default()
            })
            .expect("create customer")
    }

    fn heads(&self) -> BTreeMap<DocId, Vec<[u8; 32]>> {
        self.client
            .with_store(|s| s.all_heads())
            .expect("heads")
            .into_iter()
            .map(|(id, h)| (id, h.iter().map(|c| c.0).collect()))
            .collect()
    }

    fn has(&self, id: DocId) -> bool {
        self.client
            .with_store(|s| s.contains(id))
            .expect("contains")
    }
}

async fn wait_for(
    events: &mut broadcast::Receiver<SyncEvent>,
    what: &str,
    mut f: impl FnMut(&SyncEvent) -> bool,
) -> SyncEvent {
    timeout(LIMIT, async {
        loop {
            match events.recv().await {
                Ok(e) if f(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events closed before {what}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} in time"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_log_push_live_and_honour_revocation() {
    let db = scratch();
    let dir = tempfile::tempdir().expect("tmp");
    let a = node(dir.path(), "node-a", &db).await;
    let b = node(dir.path(), "node-b", &db).await;
    assert_eq!(a.store().epoch(), b.store().epoch(), "one log, one epoch");

    let alice = laptop(&a, dir.path(), "alice").await;
    let bob = laptop(&b, dir.path(), "bob").await;

    // Bob stays connected to node B and is pushed what node A acknowledges.
    let handle = SyncHandle::start(bob.client.clone(), bob.cfg.clone());
    let mut events = handle.subscribe();
    wait_for(&mut events, "CaughtUp", |e| *e == SyncEvent::CaughtUp).await;
    let from_alice = alice.customer("Zeta Mining");
    alice.sync().await;
    let deadline = Instant::now() + LIMIT;
    while !bob.has(from_alice.into()) {
        assert!(
            Instant::now() < deadline,
            "node B never pushed node A's change to its live client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Writes through either node converge.
    let from_bob = bob.customer("Alpha Quarry");
    let deadline = Instant::now() + LIMIT;
    while blocking(&b, |s| s.status().expect("status").docs).await < 2 {
        assert!(Instant::now() < deadline, "bob's live upload never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice.sync().await;
    assert!(alice.has(from_bob.into()));
    assert_eq!(alice.heads(), bob.heads(), "replicas on two nodes differ");

    // Revoked through node A: node B closes bob's open connection and refuses the next.
    let bob_id = bob.client.device_id();
    let revoked = blocking(&a, |s| s.revoke("bob")).await.expect("revoke");
    assert_eq!(revoked.devices, vec![bob_id]);
    let e = wait_for(&mut events, "Disconnected", |e| {
        matches!(e, SyncEvent::Disconnected { .. })
    })
    .await;
    let SyncEvent::Disconnected { error } = e else {
        unreachable!()
    };
    assert!(error.contains("Unauthorized"), "{error}");
    handle.stop().await;
    let err = timeout(LIMIT, sync_now(&bob.client, &bob.cfg))
        .await
        .expect("in time")
        .expect_err("revoked on every node");
    assert!(
        matches!(
            err,
            fieldsync_client::sync::SyncError::Session(SessionError::Relay {
                code: ErrorCode::Unauthorized,
                ..
            })
        ),
        "{err}"
    );

    a.shutdown().await.expect("shutdown a");
    b.shutdown().await.expect("shutdown b");
}

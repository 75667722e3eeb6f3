//! End-to-end sync over real QUIC on 127.0.0.1, relay and clients in this test process:
//! convergence of three clients with concurrent offline edits, a relay stopped and restarted
//! in the middle of a sync, duplicated and reordered packets and re-delivered batches, a long
//! offline period, and a lossy link. Each test checks that every replica ends equal to the
//! others and to the relay, and that no acknowledged change is missing.

use std::net::SocketAddr;
use std::time::Duration;

use fieldsync_client::sync::{SyncConfig, sync_now};
use fieldsync_client::{
    Client, ContactInput, CustomerEdit, CustomerField, CustomerId, DocId, NewCustomer, NewVisit,
    VisitStatus,
};
use fieldsync_relay::{Relay, RelayConfig};
use fieldsync_tests::faultproxy::{FaultConfig, FaultProxy, LinkConfig};

async fn start_relay(dir: &std::path::Path, listen: SocketAddr) -> Relay {
    Relay::start(RelayConfig {
        data_dir: dir.to_path_buf(),
        listen,
        // These tests are about sync, not enrolment (see devices.rs for that).
        open_enrollment: true,
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts")
}

fn config(relay: &Relay, addr: SocketAddr) -> SyncConfig {
    let mut c = SyncConfig::new(addr.to_string(), relay.fingerprint().to_string());
    c.connect_timeout = Duration::from_secs(5);
    c.response_timeout = Duration::from_secs(20);
    c
}

fn new_customer(client: &Client, name: &str) -> CustomerId {
    client
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: name.into(),
            ..Default::default()
        })
        .expect("create")
}

/// Every document on every client is equal (typed content and heads) and outboxes are empty.
fn assert_converged(clients: &[&Client]) {
    let ids = |c: &Client| {
        let mut v: Vec<(DocId, Vec<automerge_heads::Hash>)> = c
            .with_store(|s| s.all_heads())
            .expect("heads")
            .into_iter()
            .map(|(id, mut h)| {
                h.sort();
                (id, h.into_iter().map(|x| x.0).collect())
            })
            .collect();
        v.sort();
        v
    };
    let first = ids(clients[0]);
    assert!(!first.is_empty());
    for c in clients {
        assert_eq!(c.outbox_len().expect("outbox"), 0, "outbox drained");
        assert_eq!(ids(c), first, "same documents with the same heads");
        for (id, _) in &first {
            assert_eq!(
                c.document(*id).expect("doc"),
                clients[0].document(*id).expect("doc")
            );
        }
        assert!(c.verify().expect("verify").is_empty(), "replica healthy");
    }
}

mod automerge_heads {
    pub(crate) type Hash = [u8; 32];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_converge_after_concurrent_offline_edits() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&tmp.path().join("relay"), "127.0.0.1:0".parse().unwrap()).await;
    let cfg = config(&relay, relay.local_addr());
    let clients: Vec<Client> = (0..3)
        .map(|i| Client::open(tmp.path().join(format!("c{i}.db"))).unwrap())
        .collect();
    let shared = new_customer(&clients[0], "Shared Mine");
    sync_now(&clients[0], &cfg).await.unwrap();
    for c in &clients[1..] {
        sync_now(c, &cfg).await.unwrap();
    }
    // Offline: every client edits the shared customer and creates its own documents.
    for (i, c) in clients.iter().enumerate() {
        c.customers()
            .edit(
                shared,
                CustomerEdit::Set(CustomerField::Industry, format!("ind-{i}")),
            )
            .unwrap();
        c.customers()
            .add_contact(
                shared,
                ContactInput {
                    name: Some(format!("contact of {i}")),
                    ..Default::default()
                },
            )
            .unwrap();
        for k in 0..20 {
            let id = new_customer(c, &format!("client {i} customer {k}"));
            c.visits()
                .create(NewVisit {
                    customer_id: id,
                    kind: None,
                    notes: Some("n".into()),
                    status: VisitStatus::Done,
                    at: None,
                    location: None,
                })
                .unwrap();
        }
    }
    for round in 0..2 {
        for c in if round == 0 {
            vec![&clients[2], &clients[0], &clients[1]]
        } else {
            vec![&clients[1], &clients[2], &clients[0]]
        } {
            sync_now(c, &cfg).await.unwrap();
        }
    }
    let refs: Vec<&Client> = clients.iter().collect();
    assert_converged(&refs);
    let cust = clients[0].customers().get(shared).unwrap();
    assert_eq!(cust.contacts.len(), 3, "every client's contact survives");
    assert!(
        clients[0]
            .conflicts()
            .unwrap()
            .iter()
            .any(|c| c.path == "industry" && c.values.len() == 3)
    );
    assert_eq!(
        clients[2].with_store(|s| s.doc_count()).unwrap(),
        1 + 3 * 40
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restart_mid_sync_loses_no_acknowledged_change() {
    let tmp = tempfile::tempdir().unwrap();
    let relay_dir = tmp.path().join("relay");
    let relay = start_relay(&relay_dir, "127.0.0.1:0".parse().unwrap()).await;
    let addr = relay.local_addr();
    let cfg = config(&relay, addr);
    let a = Client::open(tmp.path().join("a.db")).unwrap();
    let b = Client::open(tmp.path().join("b.db")).unwrap();
    for i in 0..3_000 {
        new_customer(&a, &format!("customer {i}"));
    }
    // Stop the relay while a's upload is in progress.
    let a2 = a.clone();
    let cfg2 = cfg.clone();
    let upload = tokio::spawn(async move { sync_now(&a2, &cfg2).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    relay.shutdown().await.unwrap();
    let first = upload.await.unwrap();
    let acked_before = 3_000 - a.outbox_len().unwrap();
    eprintln!("first sync: {first:?}; acknowledged before the stop: {acked_before}");
    let relay = start_relay(&relay_dir, addr).await;
    sync_now(&a, &cfg).await.unwrap();
    sync_now(&b, &cfg).await.unwrap();
    assert_eq!(b.with_store(|s| s.doc_count()).unwrap(), 3_000);
    assert_converged(&[&a, &b]);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_reordered_packets_and_redelivered_batches_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&tmp.path().join("relay"), "127.0.0.1:0".parse().unwrap()).await;
    let link = LinkConfig {
        duplicate: 0.3,
        reorder: 0.2,
        delay: Duration::from_millis(5),
        ..LinkConfig::default()
    };
    let proxy = FaultProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        relay.local_addr(),
        FaultConfig::symmetric(7, link),
    )
    .await
    .unwrap();
    let cfg = config(&relay, proxy.local_addr());
    let a = Client::open(tmp.path().join("a.db")).unwrap();
    let b = Client::open(tmp.path().join("b.db")).unwrap();
    for i in 0..200 {
        new_customer(&a, &format!("dup {i}"));
    }
    sync_now(&a, &cfg).await.unwrap();
    sync_now(&b, &cfg).await.unwrap();
    let heads_before = b.with_store(|s| s.all_heads()).unwrap();
    let rows_before = b.query("SELECT count(*) AS n FROM customers", &[]).unwrap();
    // Re-deliver everything: forget b's cursor so the relay sends every document again.
    b.with_store(|s| s.set_meta(fieldsync_core::protocol::client::CURSOR_KEY, b"null"))
        .unwrap();
    let r = sync_now(&b, &cfg).await.unwrap();
    assert!(r.snapshots_received >= 200, "{r:?}");
    assert_eq!(b.with_store(|s| s.all_heads()).unwrap(), heads_before);
    assert_eq!(
        b.query("SELECT count(*) AS n FROM customers", &[]).unwrap(),
        rows_before
    );
    // Deliver every document to b once more by import (as a second copy through another
    // channel would): nothing changes.
    let copies = a.with_store(|s| {
        let ids: Vec<DocId> = s
            .all_heads()
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.into_iter()
            .map(|id| s.export(id).unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(copies.len(), 200);
    for bytes in &copies {
        b.import(bytes).unwrap();
    }
    assert_eq!(b.with_store(|s| s.all_heads()).unwrap(), heads_before);
    assert!(proxy.stats().up.duplicated + proxy.stats().down.duplicated > 0);
    assert_converged(&[&a, &b]);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offline_through_5000_edits_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&tmp.path().join("relay"), "127.0.0.1:0".parse().unwrap()).await;
    let cfg = config(&relay, relay.local_addr());
    let a = Client::open(tmp.path().join("a.db")).unwrap();
    let b = Client::open(tmp.path().join("b.db")).unwrap();
    let ids: Vec<CustomerId> = (0..50)
        .map(|i| new_customer(&a, &format!("c{i}")))
        .collect();
    sync_now(&a, &cfg).await.unwrap();
    sync_now(&b, &cfg).await.unwrap();
    // b goes offline; a makes 5,000 edits meanwhile, syncing now and then; b edits too.
    for i in 0..5_000usize {
        a.customers()
            .add_phone(ids[i % ids.len()], format!("+86 139 {i:08}"))
            .unwrap();
        if i % 1_000 == 999 {
            sync_now(&a, &cfg).await.unwrap();
        }
    }
    for id in &ids {
        b.customers()
            .edit(
                *id,
                CustomerEdit::Set(CustomerField::Stage, "opportunity".into()),
            )
            .unwrap();
    }
    let r = sync_now(&b, &cfg).await.unwrap();
    assert_eq!(r.changes_acked, 50);
    sync_now(&a, &cfg).await.unwrap();
    assert_converged(&[&a, &b]);
    let phones: i64 = b
        .query("SELECT count(*) AS n FROM customer_phones", &[])
        .unwrap()[0]["n"]
        .as_i64()
        .unwrap();
    assert_eq!(phones, 5_000);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_slow_link_converges() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&tmp.path().join("relay"), "127.0.0.1:0".parse().unwrap()).await;
    let link = LinkConfig {
        loss: 0.2,
        delay: Duration::from_millis(150),
        ..LinkConfig::default()
    };
    let proxy = FaultProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        relay.local_addr(),
        FaultConfig::symmetric(11, link),
    )
    .await
    .unwrap();
    let cfg = config(&relay, proxy.local_addr());
    let a = Client::open(tmp.path().join("a.db")).unwrap();
    let b = Client::open(tmp.path().join("b.db")).unwrap();
    for i in 0..100 {
        new_customer(&a, &format!("lossy {i}"));
        new_customer(&b, &format!("other {i}"));
    }
    for c in [&a, &b, &a] {
        let mut tries = 0;
        while let Err(e) = sync_now(c, &cfg).await {
            tries += 1;
            assert!(tries < 10, "sync keeps failing: {e}");
        }
    }
    assert_converged(&[&a, &b]);
    relay.shutdown().await.unwrap();
}

/// A laptop that synced before reconnects with 0-RTT: its next sync resumes the TLS session and
/// the relay takes its first flight early, a one-field change included. A restarted relay has
/// no memory of the session: it refuses the early data, nothing of it counts, and the sync
/// goes through with a full handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_laptop_syncs_with_0rtt_and_falls_back_when_the_relay_forgot_it() {
    let tmp = tempfile::tempdir().unwrap();
    let relay_dir = tmp.path().join("relay");
    let relay = start_relay(&relay_dir, "127.0.0.1:0".parse().unwrap()).await;
    let addr = relay.local_addr();
    let cfg = config(&relay, addr);
    let a = Client::open(tmp.path().join("a.db")).unwrap();
    let b = Client::open(tmp.path().join("b.db")).unwrap();
    let id = new_customer(&a, "Baotou Mining");
    let first = sync_now(&a, &cfg).await.unwrap();
    assert!(
        !first.early_data,
        "a first connection has no session to resume"
    );

    a.customers()
        .edit(
            id,
            CustomerEdit::Set(CustomerField::Stage, "opportunity".into()),
        )
        .unwrap();
    let again = sync_now(&a, &cfg).await.unwrap();
    assert!(
        again.early_data,
        "the second sync resumes with 0-RTT: {again:?}"
    );
    assert_eq!(again.changes_acked, 1);
    assert_eq!(
        again.frames_sent, 6,
        "Hello, the report of what is unsent, First (the edited customer comes first), the \
         upload and the pull in one flight; then the report after the acknowledgement"
    );

    relay.shutdown().await.unwrap();
    let relay = start_relay(&relay_dir, addr).await;
    a.customers()
        .edit(
            id,
            CustomerEdit::Set(CustomerField::Stage, "order_customer".into()),
        )
        .unwrap();
    let after_restart = sync_now(&a, &cfg).await.unwrap();
    assert!(
        !after_restart.early_data,
        "a restarted relay refuses the early data: {after_restart:?}"
    );
    assert_eq!(after_restart.changes_acked, 1);
    assert_eq!(a.outbox_len().unwrap(), 0);
    sync_now(&b, &cfg).await.unwrap();
    assert_converged(&[&a, &b]);
    relay.shutdown().await.unwrap();
}

/// A resumed connection sends before its handshake completes; if the handshake never does
/// (the relay went away after the last sync), the sync fails after the connect timeout, as a
/// full handshake would, not after the much longer idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_connection_to_a_vanished_relay_fails_at_the_connect_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&tmp.path().join("relay"), "127.0.0.1:0".parse().unwrap()).await;
    let mut cfg = config(&relay, relay.local_addr());
    let a = Client::open(tmp.path().join("a.db")).unwrap();
    new_customer(&a, "Erdos Quarry");
    sync_now(&a, &cfg).await.unwrap();
    relay.shutdown().await.unwrap();
    new_customer(&a, "Written after the relay went away");
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.idle_timeout = Duration::from_secs(30);
    let started = std::time::Instant::now();
    let err = sync_now(&a, &cfg).await.expect_err("nobody answers");
    assert!(
        matches!(
            err,
            fieldsync_client::sync::SyncError::ConnectTimeout { .. }
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        a.outbox_len().unwrap(),
        1,
        "the change waits for the next sync"
    );
}

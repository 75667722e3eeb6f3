//! End-to-end sync over QUIC against an in-process relay on 127.0.0.1.

use std::path::Path;
use std::time::Duration;

use fieldsync_client::sync::{
    BackoffConfig, SyncConfig, SyncError, SyncEvent, SyncHandle, SyncState, load_status, sync_now,
    sync_now_with_progress,
};
use fieldsync_client::{Client, CustomerField, DocId, NewCustomer, Role};
use fieldsync_core::protocol::{ErrorCode, SessionError};
use fieldsync_relay::{Relay, RelayConfig};
use tokio::sync::broadcast;
use tokio::time::timeout;

/// Every wait in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(30);

fn relay_config(dir: &Path) -> RelayConfig {
    RelayConfig {
        data_dir: dir.join("relay"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        open_enrollment: true,
        ..RelayConfig::default()
    }
}

async fn start_relay(dir: &Path) -> Relay {
    Relay::start(relay_config(dir)).await.expect("relay starts")
}

fn sync_config(relay: &Relay) -> SyncConfig {
    let mut cfg = SyncConfig::new(relay.local_addr().to_string(), relay.fingerprint());
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.backoff = BackoffConfig {
        min: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    cfg.poll_interval = Duration::from_millis(200);
    cfg
}

fn open_client(dir: &Path, name: &str) -> Client {
    let client = Client::open(dir.join(format!("{name}.db"))).expect("open replica");
    let mut identity = client.identity().expect("identity");
    identity.author = name.to_string();
    client.set_identity(identity).expect("set identity");
    client
}

async fn sync(client: &Client, cfg: &SyncConfig) -> fieldsync_client::sync::SyncReport {
    timeout(LIMIT, sync_now(client, cfg))
        .await
        .expect("sync within the time limit")
        .expect("sync succeeds")
}

fn heads(client: &Client, id: DocId) -> Vec<automerge::ChangeHash> {
    let mut h = client
        .with_store(|s| s.heads(id))
        .expect("document present");
    h.sort();
    h
}

/// Waits for the first event matching `pred`, failing on `Stopped` or after the limit.
async fn wait_for(
    events: &mut broadcast::Receiver<SyncEvent>,
    what: &str,
    pred: impl Fn(&SyncEvent) -> bool,
) -> SyncEvent {
    timeout(LIMIT, async {
        loop {
            match events.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(SyncEvent::Stopped) => panic!("handle stopped while waiting for {what}"),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within {LIMIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_offline_edits_converge_in_any_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path()).await;
    let cfg = sync_config(&relay);
    let a = open_client(dir.path(), "alice");
    let b = open_client(dir.path(), "bob");

    let id = a
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Acme Mining".into(),
            phone: Some("+86 138 0000 0001".into()),
            ..Default::default()
        })
        .expect("create");
    assert_eq!(a.outbox_len().expect("outbox"), 1);

    let mut seen = Vec::new();
    let first = timeout(
        LIMIT,
        sync_now_with_progress(&a, &cfg, |p| seen.push(p.clone())),
    )
    .await
    .expect("in time")
    .expect("first sync");
    assert_eq!(first.changes_sent, 1);
    assert_eq!(first.changes_acked, 1);
    assert_eq!(first.changes_rejected, 0);
    assert_eq!(first.outbox_remaining, 0);
    assert!(
        first.bytes_sent > 0 && first.bytes_received > 0,
        "{first:?}"
    );
    assert!(first.frames_sent >= 3, "hello, upload, pull: {first:?}");
    assert_eq!(first.role, Some(Role::Admin));
    assert_eq!(first.scopes, vec!["*".to_string()]);
    assert!(!seen.is_empty());
    assert!(
        seen.last()
            .is_some_and(|p| p.caught_up && p.outbox_at_start == 1)
    );
    assert!(
        seen.windows(2)
            .all(|w| w[0].bytes_received <= w[1].bytes_received),
        "progress only grows"
    );
    assert_eq!(a.outbox_len().expect("outbox"), 0);

    let got = sync(&b, &cfg).await;
    assert!(got.items_received >= 1, "{got:?}");
    assert_eq!(
        b.customers().get(id).expect("bob has it").name,
        "Acme Mining"
    );

    // Offline, concurrently: different fields, and the same field (name).
    a.customers()
        .edit_all(
            id,
            &[
                fieldsync_client::CustomerEdit::Set(CustomerField::Industry, "mining".into()),
                fieldsync_client::CustomerEdit::Set(CustomerField::Name, "Acme Mining Ltd".into()),
            ],
        )
        .expect("alice edits");
    b.customers()
        .set_stage(id, "opportunity")
        .expect("bob edits stage");
    b.customers()
        .set_name(id, "ACME Mining Co.")
        .expect("bob edits name");
    assert_eq!(a.outbox_len().expect("outbox"), 1);
    assert_eq!(b.outbox_len().expect("outbox"), 2);

    // Round one: alice, then bob. Round two: bob, then alice.
    let r = sync(&a, &cfg).await;
    assert_eq!((r.changes_sent, r.changes_acked), (1, 1));
    let r = sync(&b, &cfg).await;
    assert_eq!((r.changes_sent, r.changes_acked), (2, 2));
    assert!(r.changes_received >= 1, "bob receives alice's edit: {r:?}");
    let r = sync(&b, &cfg).await;
    assert_eq!(r.changes_sent, 0);
    let r = sync(&a, &cfg).await;
    assert!(r.changes_received >= 2, "alice receives bob's edits: {r:?}");

    let doc_a = a.document(id.into()).expect("alice's copy");
    let doc_b = b.document(id.into()).expect("bob's copy");
    assert_eq!(doc_a, doc_b, "both replicas hold the same document");
    assert_eq!(heads(&a, id.into()), heads(&b, id.into()));
    assert_eq!(heads(&a, id.into()).len(), 2, "two concurrent heads");
    let c = a.customers().get(id).expect("customer");
    assert_eq!(c.industry.as_deref(), Some("mining"));
    assert_eq!(c.stage, "opportunity");
    assert_eq!(a.outbox_len().expect("outbox"), 0);
    assert_eq!(b.outbox_len().expect("outbox"), 0);
    for client in [&a, &b] {
        let conflicts = client.conflicts().expect("conflicts");
        let name = conflicts
            .iter()
            .find(|c| c.doc_id == id && c.path == "name")
            .unwrap_or_else(|| panic!("name conflict listed: {conflicts:?}"));
        let mut values: Vec<String> = name
            .values
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        values.sort();
        assert_eq!(values, vec!["ACME Mining Co.", "Acme Mining Ltd"]);
        assert!(
            !conflicts
                .iter()
                .any(|c| c.path == "industry" || c.path == "stage"),
            "different fields merge without conflict: {conflicts:?}"
        );
        let st = load_status(client).expect("status").expect("recorded");
        assert!(st.last_sync_finished_at.is_some());
        assert_eq!(st.last_error, None);
        assert_eq!(st.relay.as_deref(), Some(cfg.relay.as_str()));
    }
    relay.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_handle_receives_and_pushes_without_sync_calls() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path()).await;
    let cfg = sync_config(&relay);
    let a = open_client(dir.path(), "alice");
    let b = open_client(dir.path(), "bob");
    let id = a
        .customers()
        .create(NewCustomer {
            scope: "south".into(),
            name: "Delta Farms".into(),
            ..Default::default()
        })
        .expect("create");
    sync(&a, &cfg).await;

    let handle = SyncHandle::start(b.clone(), cfg.clone());
    let mut events = handle.subscribe();
    assert_eq!(
        wait_for(&mut events, "Connecting", |e| *e == SyncEvent::Connecting).await,
        SyncEvent::Connecting
    );
    let connected = wait_for(&mut events, "Connected", |e| {
        matches!(e, SyncEvent::Connected { .. })
    })
    .await;
    assert_eq!(
        connected,
        SyncEvent::Connected {
            scopes: vec!["*".into()],
            role: Role::Admin
        }
    );
    wait_for(&mut events, "CaughtUp", |e| *e == SyncEvent::CaughtUp).await;
    assert_eq!(
        b.customers().get(id).expect("initial download").name,
        "Delta Farms"
    );
    let st = handle.status();
    assert_eq!(st.state, SyncState::CaughtUp);
    assert!(st.connected_scopes_ok());

    // Alice edits and syncs once; bob's live connection receives it without a sync call.
    a.customers().set_stage(id, "opportunity").expect("edit");
    sync(&a, &cfg).await;
    wait_for(
        &mut events,
        "Received",
        |e| matches!(e, SyncEvent::Received { items } if *items >= 1),
    )
    .await;
    assert_eq!(
        b.customers().get(id).expect("customer").stage,
        "opportunity"
    );

    // Bob edits locally; the handle pushes it promptly.
    b.customers()
        .add_phone(id, "+86 471 555 0101")
        .expect("edit");
    wait_for(
        &mut events,
        "Uploaded",
        |e| matches!(e, SyncEvent::Uploaded { n } if *n >= 1),
    )
    .await;
    wait_for(&mut events, "CaughtUp after upload", |e| {
        *e == SyncEvent::CaughtUp
    })
    .await;
    assert_eq!(b.outbox_len().expect("outbox"), 0);
    sync(&a, &cfg).await;
    assert_eq!(
        a.customers().get(id).expect("customer").phones.len(),
        1,
        "alice got bob's phone"
    );
    assert_eq!(
        a.document(id.into()).expect("a"),
        b.document(id.into()).expect("b")
    );

    let st = handle.status();
    assert!(st.changes_acked >= 1 && st.items_received >= 1, "{st:?}");
    assert!(st.last_sync_finished_at.is_some());
    timeout(LIMIT, handle.stop()).await.expect("stops in time");
    wait_for_stopped(&mut events).await;
    relay.shutdown().await.expect("shutdown");
}

trait StatusExt {
    fn connected_scopes_ok(&self) -> bool;
}

impl StatusExt for fieldsync_client::sync::SyncStatus {
    fn connected_scopes_ok(&self) -> bool {
        self.scopes == vec!["*".to_string()] && self.role == Some(Role::Admin) && !self.fatal
    }
}

async fn wait_for_stopped(events: &mut broadcast::Receiver<SyncEvent>) {
    timeout(LIMIT, async {
        loop {
            match events.recv().await {
                Ok(SyncEvent::Stopped) | Err(broadcast::error::RecvError::Closed) => return,
                _ => {}
            }
        }
    })
    .await
    .expect("Stopped in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_reconnects_after_the_relay_restarts() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path()).await;
    let addr = relay.local_addr();
    let mut cfg = sync_config(&relay);
    cfg.connect_timeout = Duration::from_millis(500);
    let a = open_client(dir.path(), "alice");
    let handle = SyncHandle::start(a.clone(), cfg.clone());
    let mut events = handle.subscribe();
    wait_for(&mut events, "CaughtUp", |e| *e == SyncEvent::CaughtUp).await;

    relay.shutdown().await.expect("shutdown");
    wait_for(&mut events, "Disconnected", |e| {
        matches!(e, SyncEvent::Disconnected { .. })
    })
    .await;
    // Edits while the relay is away stay in the outbox.
    let id = a
        .customers()
        .create(NewCustomer {
            scope: "west".into(),
            name: "Offline Co".into(),
            ..Default::default()
        })
        .expect("create offline");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.outbox_len().expect("outbox"), 1);

    // Same data, same port: the handle comes back by itself and uploads.
    let mut config = relay_config(dir.path());
    config.listen = addr;
    let relay = Relay::start(config).await.expect("relay restarts");
    wait_for(&mut events, "Uploaded after reconnect", |e| {
        matches!(e, SyncEvent::Uploaded { .. })
    })
    .await;
    wait_for(&mut events, "CaughtUp after reconnect", |e| {
        *e == SyncEvent::CaughtUp
    })
    .await;
    assert_eq!(a.outbox_len().expect("outbox"), 0);
    assert!(handle.status().connections >= 2);
    let b = open_client(dir.path(), "bob");
    sync(&b, &cfg).await;
    assert_eq!(b.customers().get(id).expect("uploaded").name, "Offline Co");
    timeout(LIMIT, handle.stop()).await.expect("stops in time");
    wait_for_stopped(&mut events).await;
    // Not `shutdown()`: a connection attempt the handle abandoned (500 ms connect timeout)
    // while the relay restarted can keep the relay's endpoint draining for seconds.
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_device_stops_and_wrong_pin_fails() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = Relay::start(RelayConfig {
        open_enrollment: false,
        ..relay_config(dir.path())
    })
    .await
    .expect("relay");
    let cfg = sync_config(&relay);
    let a = open_client(dir.path(), "alice");

    // Unknown device: not retryable, for sync_now and for the handle.
    let err = timeout(LIMIT, sync_now(&a, &cfg))
        .await
        .expect("in time")
        .expect_err("unknown device refused");
    assert!(
        matches!(
            err,
            SyncError::Session(SessionError::Relay {
                code: ErrorCode::Unauthorized,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let st = load_status(&a).expect("status").expect("recorded");
    assert!(st.last_error.is_some() && st.last_sync_finished_at.is_none());

    let handle = SyncHandle::start(a.clone(), cfg.clone());
    let mut events = handle.subscribe();
    wait_for(&mut events, "Disconnected", |e| {
        matches!(e, SyncEvent::Disconnected { .. })
    })
    .await;
    wait_for_stopped(&mut events).await;
    let st = handle.status();
    assert!(st.fatal && st.state == SyncState::Stopped, "{st:?}");
    handle.stop().await;

    // Enrolled with a credential: accepted with the enrolled role and scopes.
    let enrolment = relay
        .store()
        .enrol_device(
            Some(a.device_id()),
            "alice",
            Role::Rep,
            &["north".to_string()],
        )
        .expect("enrol");
    let mut enrolled = cfg.clone();
    enrolled.credential = Some(enrolment.secret);
    let report = sync(&a, &enrolled).await;
    assert_eq!(report.role, Some(Role::Rep));
    assert_eq!(report.scopes, vec!["north".to_string()]);
    let st = load_status(&a).expect("status").expect("recorded");
    assert!(st.last_error.is_none() && st.last_sync_finished_at.is_some());

    // Another certificate than the pinned one.
    let mut wrong = enrolled.clone();
    wrong.pin = "00".repeat(32);
    let err = timeout(LIMIT, sync_now(&a, &wrong))
        .await
        .expect("in time")
        .expect_err("pin mismatch");
    match &err {
        SyncError::PinMismatch(m) => assert_eq!(m.got.to_string(), relay.fingerprint()),
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    let st = load_status(&a).expect("status").expect("recorded");
    assert!(st.last_error.is_some_and(|e| e.contains("does not match")));
    assert!(
        st.last_sync_finished_at.is_some(),
        "the last success is kept"
    );
    relay.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_refused_for_now_are_resent_later() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path()).await;
    let mut cfg = sync_config(&relay);
    cfg.resend_refused_after = Duration::from_millis(300);
    let a = open_client(dir.path(), "alice");
    let b = open_client(dir.path(), "bob");

    // Alice's customer reaches bob by file, not through the relay; bob edits it.
    let id = a
        .customers()
        .create(NewCustomer {
            scope: "east".into(),
            name: "Handed Over Ltd".into(),
            ..Default::default()
        })
        .expect("create");
    b.import(&a.export(id.into()).expect("export"))
        .expect("import");
    b.customers().set_stage(id, "opportunity").expect("edit");
    assert_eq!(b.outbox_len().expect("outbox"), 1);

    // The relay lacks alice's changes, so bob's edit is refused for now and stays queued.
    let report = sync(&b, &cfg).await;
    assert_eq!((report.changes_sent, report.changes_acked), (1, 0));
    assert_eq!(report.changes_rejected, 0, "not quarantined");
    assert_eq!(report.outbox_remaining, 1);
    assert!(
        b.with_store(|s| s.quarantine())
            .expect("quarantine")
            .is_empty()
    );

    let handle = SyncHandle::start(b.clone(), cfg.clone());
    let mut events = handle.subscribe();
    wait_for(&mut events, "CaughtUp", |e| *e == SyncEvent::CaughtUp).await;
    assert_eq!(b.outbox_len().expect("outbox"), 1);

    // Once alice has synced, the handle's next session sends bob's edit again.
    sync(&a, &cfg).await;
    wait_for(
        &mut events,
        "Uploaded",
        |e| matches!(e, SyncEvent::Uploaded { n } if *n >= 1),
    )
    .await;
    wait_for(&mut events, "CaughtUp", |e| *e == SyncEvent::CaughtUp).await;
    assert_eq!(b.outbox_len().expect("outbox"), 0);
    assert!(handle.status().connections >= 2, "{:?}", handle.status());
    timeout(LIMIT, handle.stop()).await.expect("stops in time");

    sync(&a, &cfg).await;
    assert_eq!(
        a.customers().get(id).expect("customer").stage,
        "opportunity"
    );
    assert_eq!(
        a.document(id.into()).expect("a"),
        b.document(id.into()).expect("b")
    );
    relay.shutdown().await.expect("shutdown");
}

/// A metered sync (`SyncConfig::budget`): the laptop's own changes go first, the download stops
/// once the budget is spent and nothing is in flight, the report and the stored status say
/// what still waits, and the next syncs go on from there until everything has arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metered_sync_stops_at_its_budget_and_the_next_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(dir.path()).await;
    let cfg = sync_config(&relay);
    let office = open_client(dir.path(), "office");
    for i in 0..1_500 {
        office
            .customers()
            .create(NewCustomer {
                scope: "north".into(),
                name: format!("Quarry {i:04} with a name long enough to weigh something"),
                phone: Some(format!("+86 471 555 {i:04}")),
                ..NewCustomer::default()
            })
            .expect("create");
    }
    sync(&office, &cfg).await;

    let laptop = open_client(dir.path(), "laptop");
    let mine = laptop
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Written offline".into(),
            ..NewCustomer::default()
        })
        .expect("create");
    let mut metered = cfg.clone();
    metered.budget = Some(40_000);
    let first = sync(&laptop, &metered).await;
    assert!(first.budget_spent, "{first:?}");
    assert!(first.download_waiting);
    assert_eq!(first.changes_acked, 1, "the laptop's own change went first");
    assert_eq!(first.outbox_remaining, 0);
    let moved = first.bytes_sent + first.bytes_received;
    // The budget is checked between answers: it is overrun by at most the batch in flight,
    // which the budget also sizes.
    assert!(moved < 40_000 + 64_000, "{moved} bytes for a 40 kB budget");
    let got = laptop.with_store(|s| s.doc_count()).expect("count");
    assert!(got > 1 && got < 1_501, "part of the download: {got}");
    // What is left, as the relay counted it when the download began less what arrived (the
    // laptop's own customer counts though it never comes back).
    let left = (1_501 - got) as u64;
    let told = first.download_waiting_documents;
    assert!((left..=left + 2).contains(&told), "{told} for {left} left");
    assert!(first.download_waiting_bytes > 0);
    let status = load_status(&laptop).expect("status").expect("stored");
    assert!(status.download_waiting);
    assert_eq!(status.download_waiting_documents, told);
    assert!(relay_has(&relay, mine.into()).await);

    // Each further metered sync brings more, and an unmetered one the rest.
    let second = sync(&laptop, &metered).await;
    let more = laptop.with_store(|s| s.doc_count()).expect("count");
    assert!(more > got, "{second:?}");
    let last = sync(&laptop, &cfg).await;
    assert!(!last.budget_spent && !last.download_waiting, "{last:?}");
    assert_eq!(last.download_waiting_documents, 0);
    assert_eq!(laptop.with_store(|s| s.doc_count()).expect("count"), 1_501);
    assert!(
        !load_status(&laptop)
            .expect("status")
            .expect("stored")
            .download_waiting
    );
    relay.shutdown().await.expect("shutdown");
}

/// Whether the relay stores document `id`.
async fn relay_has(relay: &Relay, id: DocId) -> bool {
    let store = relay.store().clone();
    tokio::task::spawn_blocking(move || store.heads_of(&[id]).expect("heads"))
        .await
        .expect("task")
        .iter()
        .any(|(d, h)| *d == id && !h.is_empty())
}

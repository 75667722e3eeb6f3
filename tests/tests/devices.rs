//! Devices, scopes, roles and write validation, end to end over real QUIC on 127.0.0.1: an
//! in-process relay in closed mode (the default), laptops enrolled with one-time tokens and
//! syncing with the real client (`fieldsync_client::sync`).
//!
//! - unknown devices, a wrong credential, a reused token, a revoked device (refused at once,
//!   its open connection closed);
//! - an out-of-scope write, role-owned fields written by a rep (credit limit, quote approval)
//!   and the quarantine of their dependents (a forged actor: `sync-server/tests/devices.rs`);
//! - a scope move while the old rep has pending edits;
//! - over random workloads: no replica ever holds a document outside its device's scopes
//!   (invariant I5, TESTING.md), and every replica ends with every document it is authorised for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use fieldsync_client::sync::{
    EnrolToken, SyncConfig, SyncError, SyncEvent, SyncHandle, SyncReport, SyncState,
    credential_path, enrol_replica, load_credential, read_credential, sync_now,
};
use fieldsync_client::{
    Client, CustomerId, DocId, DocKind, Identity, Money, NewCustomer, NewQuote, NewVisit, Role,
    VisitId, VisitStatus,
};
use fieldsync_core::protocol::{ErrorCode, SessionError};
use fieldsync_relay::{Relay, RelayConfig};
use tokio::sync::broadcast;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

async fn start_relay(dir: &Path) -> Relay {
    Relay::start(RelayConfig {
        data_dir: dir.join("relay"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts")
}

/// A rep's laptop: its replica and its sync settings (with the enrolled credential).
struct Laptop {
    name: String,
    client: Client,
    cfg: SyncConfig,
    scopes: Vec<String>,
}

fn token(relay: &Relay, name: &str, role: Role, scopes: &[&str]) -> EnrolToken {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    let secret = relay
        .store()
        .create_enrolment(name, role, &scopes, None, Duration::from_secs(3600))
        .expect("enrolment");
    EnrolToken::new(
        &relay.local_addr().to_string(),
        relay.fingerprint(),
        &secret,
    )
    .expect("token")
}

fn sync_config(relay: &str, pin: &str, client: &Client) -> SyncConfig {
    let mut cfg = SyncConfig::new(relay, pin);
    cfg.credential = load_credential(client).expect("credential");
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.response_timeout = Duration::from_secs(20);
    cfg
}

/// Enrols a new laptop. Its local identity gets `local_role` (a rep may claim more locally;
/// the relay decides).
async fn laptop(
    relay: &Relay,
    dir: &Path,
    name: &str,
    role: Role,
    scopes: &[&str],
    local_role: Role,
) -> Laptop {
    let client = Client::open(dir.join(format!("{name}.db"))).expect("replica");
    client
        .set_identity(Identity::new(name, local_role, "acme"))
        .expect("identity");
    let t = token(relay, name, role, scopes);
    let e = timeout(LIMIT, enrol_replica(&client, &t, Duration::from_secs(5)))
        .await
        .expect("in time")
        .expect("enrolled");
    assert_eq!(e.role, role);
    assert_eq!(e.device_id, client.device_id());
    Laptop {
        name: name.into(),
        cfg: sync_config(&e.relay, &e.pin, &client),
        client,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    }
}

impl Laptop {
    async fn sync(&self) -> SyncReport {
        timeout(LIMIT, sync_now(&self.client, &self.cfg))
            .await
            .unwrap_or_else(|_| panic!("{} sync timed out", self.name))
            .unwrap_or_else(|e| panic!("{} sync failed: {e}", self.name))
    }

    fn customer(&self, name: &str, scope: &str) -> CustomerId {
        self.client
            .customers()
            .create(NewCustomer {
                scope: scope.into(),
                name: name.into(),
                ..Default::default()
            })
            .expect("create customer")
    }

    fn visit(&self, customer: CustomerId, notes: &str) -> VisitId {
        self.client
            .visits()
            .create(NewVisit {
                customer_id: customer,
                kind: None,
                notes: Some(notes.into()),
                status: VisitStatus::Done,
                at: None,
                location: None,
            })
            .expect("create visit")
    }

    fn has(&self, id: DocId) -> bool {
        self.client
            .with_store(|s| s.contains(id))
            .expect("contains")
    }

    fn docs(&self) -> BTreeSet<DocId> {
        self.client
            .with_store(|s| s.all_heads())
            .expect("heads")
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// Quarantined changes: (document, reason).
    fn quarantine(&self) -> Vec<(DocId, String)> {
        self.client
            .with_store(|s| s.quarantine())
            .expect("quarantine")
            .into_iter()
            .map(|q| (q.doc_id, q.reason))
            .collect()
    }

    fn outbox(&self) -> u64 {
        self.client.outbox_len().expect("outbox")
    }
}

fn relay_err(e: &SyncError) -> Option<(ErrorCode, &str)> {
    match e {
        SyncError::Session(SessionError::Relay { code, reason }) => Some((*code, reason)),
        _ => None,
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
async fn unknown_devices_and_wrong_credentials_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path()).await;
    let stranger = Client::open(dir.path().join("stranger.db")).expect("replica");
    stranger
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: "Sneaky Co".into(),
            ..Default::default()
        })
        .expect("create");
    let mut cfg = SyncConfig::new(relay.local_addr().to_string(), relay.fingerprint());
    cfg.connect_timeout = Duration::from_secs(5);
    let err = timeout(LIMIT, sync_now(&stranger, &cfg))
        .await
        .expect("in time")
        .expect_err("an unknown device is refused");
    assert_eq!(relay_err(&err).map(|e| e.0), Some(ErrorCode::Unauthorized));
    assert!(!err.is_retryable());

    // An enrolled device with someone else's (or a made-up) credential is refused too.
    let rep = laptop(&relay, dir.path(), "rep", Role::Rep, &["north"], Role::Rep).await;
    rep.sync().await;
    let mut forged = rep.cfg.clone();
    forged.credential = Some("00".repeat(32));
    let err = timeout(LIMIT, sync_now(&rep.client, &forged))
        .await
        .expect("in time")
        .expect_err("a wrong credential is refused");
    assert_eq!(relay_err(&err).map(|e| e.0), Some(ErrorCode::Unauthorized));
    // The stranger's customer never reached the relay.
    assert_eq!(relay.store().status().expect("status").docs, 0);
    assert_eq!(stranger.outbox_len().expect("outbox"), 1, "kept locally");
    relay.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_single_use_hashed_and_the_credential_file_is_private() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path()).await;
    let t = token(&relay, "Li Wei laptop", Role::Rep, &["north-mines"]);
    let a = Client::open(dir.path().join("a.db")).expect("replica");
    let e = enrol_replica(&a, &t, Duration::from_secs(5))
        .await
        .expect("enrolled");
    assert_eq!(e.scopes, vec!["north-mines".to_string()]);
    assert_eq!(e.credential_file, credential_path(a.path()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&e.credential_file)
            .expect("credential file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the credential file is private");
    }
    let cred = read_credential(&e.credential_file, None)
        .expect("read")
        .expect("present");
    let secret = cred.secret.clone().expect("confirmed");
    assert!(cred.pending.is_none());
    assert_eq!(cred.device_id, a.device_id());

    // Another device cannot use the token again.
    let b = Client::open(dir.path().join("b.db")).expect("replica");
    let err = enrol_replica(&b, &t, Duration::from_secs(5))
        .await
        .expect_err("single use");
    let (code, reason) = relay_err(&err).expect("relay refusal");
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(reason.contains("already used"), "{reason}");
    assert!(
        !credential_path(b.path()).exists(),
        "a refused enrolment leaves no credential behind"
    );
    // Nor can the same device swap its credential with it; its enrolment is unharmed.
    let err = enrol_replica(&a, &t, Duration::from_secs(5))
        .await
        .expect_err("single use, same device");
    assert!(relay_err(&err).is_some_and(|(_, r)| r.contains("already used")));
    assert_eq!(
        read_credential(&e.credential_file, None)
            .expect("read")
            .expect("kept")
            .secret
            .as_deref(),
        Some(secret.as_str())
    );
    let cfg = sync_config(&e.relay, &e.pin, &a);
    let report = timeout(LIMIT, sync_now(&a, &cfg))
        .await
        .expect("in time")
        .expect("the enrolled device syncs");
    assert_eq!(report.role, Some(Role::Rep));
    assert_eq!(report.scopes, vec!["north-mines".to_string()]);

    // A token revoked before use is refused.
    let t2 = token(&relay, "Spare laptop", Role::Rep, &["north-mines"]);
    let r = relay.store().revoke("Spare laptop").expect("revoke");
    assert_eq!((r.devices.len(), r.tokens), (0, 1));
    let err = enrol_replica(&b, &t2, Duration::from_secs(5))
        .await
        .expect_err("revoked token");
    assert!(relay_err(&err).is_some_and(|(_, r)| r.contains("revoked")));

    // The relay keeps neither the token secret nor the credential in clear.
    let db = dir.path().join("relay").join("relay.db");
    let mut bytes = std::fs::read(&db).expect("db");
    if let Ok(wal) = std::fs::read(db.with_extension("db-wal")) {
        bytes.extend(wal);
    }
    for s in [&t.secret, &t2.secret, &secret] {
        assert!(
            !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
            "a secret is stored in clear"
        );
    }
    relay.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_refused_and_its_open_connection_closed() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path()).await;
    let rep = laptop(
        &relay,
        dir.path(),
        "Li Wei laptop",
        Role::Rep,
        &["north"],
        Role::Rep,
    )
    .await;
    rep.customer("Before", "north");
    let handle = SyncHandle::start(rep.client.clone(), rep.cfg.clone());
    let mut events = handle.subscribe();
    wait_for(&mut events, "CaughtUp", |e| *e == SyncEvent::CaughtUp).await;
    assert_eq!(rep.outbox(), 0);
    let listed = relay.store().devices().expect("devices");
    assert!(listed[0].last_seen.is_some(), "last sync recorded");

    // Revoked while connected: the open connection is closed with Unauthorized, and the
    // handle stops (retrying cannot help).
    let revoked = relay.store().revoke("Li Wei laptop").expect("revoke");
    assert_eq!(revoked.devices, vec![rep.client.device_id()]);
    let e = wait_for(&mut events, "Disconnected", |e| {
        matches!(e, SyncEvent::Disconnected { .. })
    })
    .await;
    let SyncEvent::Disconnected { error } = e else {
        unreachable!()
    };
    assert!(
        error.contains("Unauthorized") && error.contains("revoked"),
        "{error}"
    );
    wait_for(&mut events, "Stopped", |e| *e == SyncEvent::Stopped).await;
    let st = handle.status();
    assert!(st.fatal && st.state == SyncState::Stopped, "{st:?}");
    handle.stop().await;

    // Its next connection is refused; its unsynced edits stay in its outbox.
    rep.customer("After", "north");
    let err = timeout(LIMIT, sync_now(&rep.client, &rep.cfg))
        .await
        .expect("in time")
        .expect_err("revoked");
    assert_eq!(
        relay_err(&err).map(|e| e.0),
        Some(ErrorCode::Unauthorized),
        "{err:?}"
    );
    assert_eq!(rep.outbox(), 1);
    assert!(rep.quarantine().is_empty(), "nothing quarantined");
    assert_eq!(relay.store().status().expect("status").docs, 1);
    relay.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_scope_writes_are_quarantined_without_blocking_other_changes() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path()).await;
    let rep = laptop(&relay, dir.path(), "rep", Role::Rep, &["north"], Role::Rep).await;
    let south = laptop(
        &relay,
        dir.path(),
        "south",
        Role::Rep,
        &["south"],
        Role::Rep,
    )
    .await;
    let before = rep.customer("Ours Before", "north");
    let foreign = rep.customer("Not Ours", "south");
    let foreign_visit = rep.visit(foreign, "visited anyway");
    let after = rep.customer("Ours After", "north");
    let report = rep.sync().await;
    assert_eq!(report.changes_acked, 2, "{report:?}");
    assert_eq!(report.changes_rejected, 2, "the customer and its visit");
    assert_eq!(rep.outbox(), 0);
    let q = rep.quarantine();
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(
        q.iter()
            .any(|(d, r)| *d == foreign && r.contains("outside the device's scopes")),
        "{q:?}"
    );
    assert!(q.iter().any(|(d, _)| *d == foreign_visit), "{q:?}");
    // The replica shows what the relay accepted: the refused documents are gone from it (their
    // changes stay in the quarantine).
    assert!(rep.has(before.into()) && rep.has(after.into()));
    assert!(!rep.has(foreign.into()) && !rep.has(foreign_visit.into()));
    south.sync().await;
    assert!(south.docs().is_empty(), "nothing reached the south");
    // The next sync sends nothing again.
    let again = rep.sync().await;
    assert_eq!((again.changes_sent, again.changes_rejected), (0, 0));
    relay.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_owned_fields_written_by_a_rep_are_quarantined_with_their_dependents() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path()).await;
    // The rep claims to be a manager/director locally; the relay knows better.
    let rep = laptop(
        &relay,
        dir.path(),
        "rep",
        Role::Rep,
        &["north"],
        Role::Director,
    )
    .await;
    let manager = laptop(
        &relay,
        dir.path(),
        "manager",
        Role::Manager,
        &["north"],
        Role::Manager,
    )
    .await;
    let c = rep.customer("Baotou Mining", "north");
    let q = rep
        .client
        .quotes()
        .create(NewQuote {
            customer_id: c,
            currency: "CNY".into(),
            quote_no: None,
            valid_until: None,
        })
        .expect("quote");
    rep.client.quotes().submit(q).expect("submit");
    rep.sync().await;

    let handle = SyncHandle::start(rep.client.clone(), rep.cfg.clone());
    let mut events = handle.subscribe();
    wait_for(&mut events, "CaughtUp", |e| *e == SyncEvent::CaughtUp).await;
    // The replica's role followed the grant when it connected; a modified client claims more
    // again (its own checks then pass).
    rep.client
        .set_identity(Identity::new("rep", Role::Director, "acme"))
        .expect("claim");
    // A credit limit, then a rename on top of it; and an approval of its own quote.
    rep.client
        .customers()
        .set_credit_limit(
            c,
            Money {
                amount_minor: 50_000_000,
                currency: "CNY".into(),
            },
        )
        .expect("local role check passes");
    rep.client
        .customers()
        .set_name(c, "Baotou Mining Group")
        .expect("rename");
    rep.client
        .quotes()
        .approve(q, Some("looks fine"))
        .expect("approve");
    let mut reasons = Vec::new();
    while reasons.len() < 3 {
        let e = wait_for(&mut events, "Rejected", |e| {
            matches!(e, SyncEvent::Rejected { .. })
        })
        .await;
        if let SyncEvent::Rejected { reason, .. } = e {
            reasons.push(reason);
        }
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("may not change credit_limit")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("may not change approval")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("depends on change")),
        "the rename depends on the refused change: {reasons:?}"
    );
    wait_for(&mut events, "CaughtUp", |e| *e == SyncEvent::CaughtUp).await;
    assert_eq!(rep.quarantine().len(), 3);
    assert_eq!(rep.outbox(), 0, "nothing left to resend forever");
    // The documents were rebuilt without the refused changes: later edits sync again.
    let cust = rep.client.customers().get(c).expect("customer");
    assert_eq!(cust.credit_limit, None);
    assert_eq!(cust.name, "Baotou Mining");
    assert!(
        rep.client
            .quotes()
            .get(q)
            .expect("quote")
            .approvals
            .is_empty()
    );
    rep.client
        .customers()
        .set_name(c, "Baotou Mining Co., Ltd.")
        .expect("rename again");
    wait_for(
        &mut events,
        "Uploaded",
        |e| matches!(e, SyncEvent::Uploaded { n } if *n >= 1),
    )
    .await;
    handle.stop().await;
    assert_eq!(rep.quarantine().len(), 3, "no new refusals");

    manager.sync().await;
    let seen = manager.client.customers().get(c).expect("customer");
    assert_eq!(seen.name, "Baotou Mining Co., Ltd.");
    assert_eq!(seen.credit_limit, None);
    assert!(
        manager
            .client
            .quotes()
            .get(q)
            .expect("quote")
            .approvals
            .is_empty()
    );
    // A manager may approve.
    manager.client.quotes().approve(q, None).expect("approve");
    let r = manager.sync().await;
    assert_eq!((r.changes_acked, r.changes_rejected), (1, 0));
    rep.sync().await;
    assert!(
        !rep.client
            .quotes()
            .get(q)
            .expect("quote")
            .approvals
            .is_empty()
    );
    relay.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_move_waits_for_the_old_reps_pending_edits() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path()).await;
    let old = laptop(
        &relay,
        dir.path(),
        "old rep",
        Role::Rep,
        &["north"],
        Role::Rep,
    )
    .await;
    let new = laptop(
        &relay,
        dir.path(),
        "new rep",
        Role::Rep,
        &["south"],
        Role::Rep,
    )
    .await;
    let mgr = laptop(
        &relay,
        dir.path(),
        "manager",
        Role::Manager,
        &["north", "south"],
        Role::Manager,
    )
    .await;
    let c = old.customer("Moving Co", "north");
    let v = old.visit(c, "first visit");
    old.sync().await;
    new.sync().await;
    assert!(!new.has(c.into()));

    // Offline, the old rep keeps working on the customer: an edit and a new visit.
    old.client
        .customers()
        .set_stage(c, "opportunity")
        .expect("edit");
    let late_visit = old.visit(c, "visit logged before hearing of the move");
    assert_eq!(old.outbox(), 2);

    // Meanwhile the manager moves it to the south.
    mgr.sync().await;
    mgr.client.customers().set_scope(c, "south").expect("move");
    assert_eq!(mgr.sync().await.changes_acked, 1);

    // The new rep gets it (and its visit) at the next sync.
    new.sync().await;
    assert!(new.has(c.into()) && new.has(v.into()));

    // The old rep's pending edits reach the relay; then the documents leave its replica.
    let report = old.sync().await;
    assert_eq!(
        (report.changes_acked, report.changes_rejected),
        (2, 0),
        "{report:?}"
    );
    assert!(old.quarantine().is_empty());
    assert_eq!(old.outbox(), 0);
    assert!(
        !old.has(c.into()) && !old.has(v.into()) && !old.has(late_visit.into()),
        "{:?}",
        old.docs()
    );

    // The new rep gets the old rep's late work.
    new.sync().await;
    assert_eq!(
        new.client.customers().get(c).expect("customer").stage,
        "opportunity"
    );
    assert!(new.has(late_visit.into()));

    // After the move the old rep can no longer write to it (a change built on the move).
    // Moving it back brings it back.
    mgr.sync().await;
    mgr.client
        .customers()
        .set_scope(c, "north")
        .expect("move back");
    mgr.sync().await;
    old.sync().await;
    assert!(old.has(c.into()) && old.has(v.into()) && old.has(late_visit.into()));
    new.sync().await;
    assert!(!new.has(c.into()) && !new.has(v.into()));
    relay.shutdown().await.expect("shutdown");
}

/// A small deterministic generator (xorshift64*), so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The relay's scope of every document it holds.
fn relay_scopes(relay: &Relay) -> BTreeMap<DocId, String> {
    let conn = rusqlite::Connection::open_with_flags(
        relay.store().path().expect("an embedded relay database"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open relay db");
    let mut st = conn
        .prepare("SELECT doc_id, scope FROM docs")
        .expect("prepare");
    st.query_map([], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
    })
    .expect("query")
    .map(|r| {
        let (id, scope) = r.expect("row");
        (DocId::from_slice(&id).expect("id"), scope)
    })
    .collect()
}

fn sees(scopes: &[String], s: &str) -> bool {
    scopes.iter().any(|x| x == "*" || x == s)
}

/// I5: every document on the laptop is one the relay files under a scope it sees, unless the
/// laptop still has unacknowledged changes to it (it leaves once they are acknowledged).
fn assert_authorised(l: &Laptop, relay: &BTreeMap<DocId, String>, seed: u64) {
    let pending: BTreeSet<DocId> = l
        .client
        .with_store(|s| s.outbox_batch(0, 1_000_000, usize::MAX))
        .expect("outbox")
        .into_iter()
        .map(|c| c.doc_id)
        .collect();
    for id in l.docs() {
        if pending.contains(&id) {
            continue;
        }
        let scope = relay.get(&id).unwrap_or_else(|| {
            panic!(
                "seed {seed}: {} holds {id}, which the relay does not have",
                l.name
            )
        });
        assert!(
            sees(&l.scopes, scope),
            "seed {seed}: {} (scopes {:?}) holds {id} of scope {scope}",
            l.name,
            l.scopes
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_ever_holds_a_document_outside_its_scopes() {
    const SCOPES: [&str; 3] = ["north", "south", "east"];
    for seed in [0x5eed_0001_u64, 0x5eed_0002] {
        let dir = tempfile::tempdir().expect("tmp");
        let relay = start_relay(dir.path()).await;
        let mut laptops = Vec::new();
        for (name, role, scopes) in [
            ("north rep", Role::Rep, &["north"][..]),
            ("south rep", Role::Rep, &["south"][..]),
            ("east-north rep", Role::Rep, &["east", "north"][..]),
            ("manager", Role::Manager, &["north", "south"][..]),
            ("admin", Role::Admin, &["*"][..]),
        ] {
            // Every laptop claims admin locally: only the relay keeps them in their lanes.
            laptops.push(laptop(&relay, dir.path(), name, role, scopes, Role::Admin).await);
        }
        let mut rng = Rng(seed);
        for _round in 0..4 {
            for l in &laptops {
                for _ in 0..rng.below(3) + 1 {
                    let known: Vec<CustomerId> = l
                        .client
                        .customers()
                        .list(&Default::default())
                        .expect("list")
                        .into_iter()
                        .map(|r| r.id)
                        .collect();
                    match rng.below(4) {
                        0 | 1 => {
                            let scope = SCOPES[rng.below(SCOPES.len())];
                            l.customer(&format!("{} c{}", l.name, rng.next() % 1000), scope);
                        }
                        2 if !known.is_empty() => {
                            l.visit(known[rng.below(known.len())], "visit");
                        }
                        3 if !known.is_empty() => {
                            // Move a customer somewhere (refused unless a manager may).
                            let id = known[rng.below(known.len())];
                            let to = SCOPES[rng.below(SCOPES.len())];
                            let _ = l.client.customers().set_scope(id, to);
                        }
                        _ => {}
                    }
                }
            }
            let mut order: Vec<usize> = (0..laptops.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            for i in order {
                laptops[i].sync().await;
                let scopes = relay_scopes(&relay);
                for l in &laptops {
                    assert_authorised(l, &scopes, seed);
                }
            }
        }
        // Quiesce: two rounds, then every laptop holds exactly what it is authorised for.
        for _ in 0..2 {
            for l in &laptops {
                l.sync().await;
            }
        }
        let scopes = relay_scopes(&relay);
        // The workload did exercise the rules: refusals, and accepted moves.
        let refused: usize = laptops.iter().map(|l| l.quarantine().len()).sum();
        assert!(refused > 0, "seed {seed}: nothing was refused");
        assert!(
            scopes.len() >= 10,
            "seed {seed}: only {} documents",
            scopes.len()
        );
        let moves: i64 = rusqlite::Connection::open_with_flags(
            relay.store().path().expect("an embedded relay database"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|c| c.query_row("SELECT count(*) FROM moves", [], |r| r.get(0)))
        .expect("moves");
        // Whether a move happened depends on which random edits the relay accepted; the
        // containment checks below hold either way, so this only reports coverage.
        if moves == 0 {
            eprintln!("seed {seed}: no customer moved in this run (containment still checked)");
        }
        for l in &laptops {
            assert_eq!(l.outbox(), 0, "seed {seed}: {} outbox", l.name);
            assert_authorised(l, &scopes, seed);
            let expected: BTreeSet<DocId> = scopes
                .iter()
                .filter(|(_, s)| sees(&l.scopes, s))
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(l.docs(), expected, "seed {seed}: {} holds", l.name);
            for id in &expected {
                let kind = l.client.document(*id).expect("doc").header().kind;
                assert!(matches!(
                    kind,
                    DocKind::Customer | DocKind::Visit | DocKind::Quote
                ));
            }
        }
        relay.shutdown().await.expect("shutdown");
    }
}

//! The relay's trust boundary against hostile devices, over real QUIC on 127.0.0.1: an
//! in-process relay in closed mode, devices enrolled with one-time tokens, syncing with the real
//! client (`fieldsync_client::sync`) or speaking the protocol raw (to send what a well-behaved
//! client never would). A hostile device is a modified client: it writes straight into
//! Automerge, past the model's local role checks, and uploads whatever it likes.
//!
//! What the relay promises, and the test that holds it to each promise:
//!
//! 1. **Authority is judged on what a change does, not on what a typed read shows.** A change
//!    by a device whose role may not write a role-owned value (customer `governed/*`, root
//!    `scope`, quote `status_marks` transitions and `approvals`, quote `governed/owner`) is
//!    refused for good with a reason saying the role "may not", and no other replica ever holds
//!    the value — not through the typed API, not in the raw document, not as the losing side of
//!    a conflict:
//!    - `a1_customer_credit_limit_is_director_only`, `a1_customer_payment_terms_are_director_only`,
//!      `a1_customer_grade_is_admin_only`, `a1_customer_owner_is_manager_only`,
//!      `a1_customer_scope_is_manager_only`;
//!    - `a2_quote_status_marks_follow_the_transitions_and_roles`,
//!      `a2_quote_approvals_are_manager_only`, `a2_quote_owner_is_manager_only`;
//!    - hidden writes: `a4a_a_governed_write_hidden_in_a_conflict_is_refused`,
//!      `a4b_a_governed_value_inside_a_nested_object_is_refused`,
//!      `a4c_deleting_and_recreating_a_governed_container_is_refused`.
//! 2. **Enumerated values stay in their domain.** A customer `stage` outside the known stages,
//!    `churned` set by a rep (manager-only), and a visit `visit_kind` outside the known kinds are
//!    refused for good: `a3_customer_stage_is_validated_and_churned_is_manager_only`,
//!    `a3_visit_kind_is_validated`.
//! 3. **A repair upload carries no one else's authority.** A rep that re-signs a change under a
//!    director's actor (taken from the shared document's history) and uploads it as a repair
//!    batch — or as a normal one — is refused, on one relay (SQLite) and across two relay nodes
//!    sharing one PostgreSQL database: `b_a_repair_batch_cannot_forge_a_directors_change_sqlite`,
//!    `b_a_repair_batch_cannot_forge_a_directors_change_two_postgres_nodes`.
//! 4. **The move grace period covers only work done before the device could know.** Once a rep
//!    has been told a customer left its scopes (its replica dropped it), changes it builds on a
//!    copy kept from before the move are refused and never reach the new scope:
//!    `c_the_move_grace_period_is_not_a_back_door`.
//! 5. **No oracle.** A device learns nothing about documents outside its scopes: an upload to
//!    one is answered exactly like an upload to a document that does not exist, without naming
//!    its scope, and a `Heads` exchange answers both alike:
//!    `d_uploads_reveal_nothing_outside_the_devices_scopes`,
//!    `d_heads_reveal_nothing_outside_the_devices_scopes`.
//!
//! Where a refusal is not an authority question (a value outside its domain, an object where a
//! scalar belongs, a deleted container, a status transition that skips a step) any permanent
//! refusal will do; the reason is not pinned. A permanent refusal is one the real client
//! quarantines: nothing may stay in an outbox to be sent again forever.
//!
//! Each test runs several forgeries and lists every one that got through in its failure
//! message. The positive controls inside them (a manager setting `churned`, a rep setting a
//! valid stage or visit kind) keep the fixes from refusing ordinary work.
//!
//! The PostgreSQL test needs a server: `FIELDSYNC_TEST_PG`, else
//! `postgres://postgres@127.0.0.1:5432/postgres` (trust authentication); it creates a database
//! of its own and drops it, and fails (does not skip) when the server is absent.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{
    ActorId, AutoCommit, ChangeHash, ObjId, ObjType, Prop, ROOT, ReadDoc, ScalarValue, Value,
};
use fieldsync_client::sync::{
    EnrolToken, SyncConfig, SyncReport, enrol_replica, load_credential, sync_now,
};
use fieldsync_client::{
    Client, CustomerId, DocId, Identity, Money, NewCustomer, NewQuote, NewVisit, QuoteId,
    QuoteStatus, Role, StoreOptions, VisitId, VisitStatus,
};
use fieldsync_core::model::{CustomerEdit, Edit, EditCtx, ModelError, apply_edit, new_item_id};
use fieldsync_core::protocol::codec::{check_len, decode, encode};
use fieldsync_core::protocol::messages::{MAGIC, Rejection};
use fieldsync_core::protocol::relay::REPAIR_BATCH;
use fieldsync_core::protocol::{Message, PROTOCOL_VERSION, UploadChange};
use fieldsync_relay::store::postgres::ScratchDatabase;
use fieldsync_relay::{Relay, RelayConfig, tls};
use quinn::{Endpoint, RecvStream, SendStream};
use tokio::time::timeout;
use uuid::Uuid;

/// Longest a sync, a connection or an answer may take before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(30);

/// The substring of an authority refusal.
const MAY_NOT: &str = "may not";

// ---------------------------------------------------------------------------------------------
// Relays and laptops.

async fn start_relay(dir: &Path, move_grace_days: Option<u64>) -> Relay {
    let mut cfg = RelayConfig {
        data_dir: dir.join("relay"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..RelayConfig::default()
    };
    if let Some(days) = move_grace_days {
        cfg.move_grace_days = days;
    }
    timeout(LIMIT, Relay::start(cfg))
        .await
        .expect("relay starts in time")
        .expect("relay starts")
}

fn scratch() -> ScratchDatabase {
    let server = ScratchDatabase::server_url();
    ScratchDatabase::create(&server).unwrap_or_else(|e| {
        panic!("this test needs PostgreSQL at {server} (set FIELDSYNC_TEST_PG for another): {e}")
    })
}

/// A relay node on `db`; nodes sharing a database serve one certificate (`dir/cert`).
async fn pg_node(dir: &Path, name: &str, db: &ScratchDatabase) -> Relay {
    let cert = dir.join("cert");
    std::fs::create_dir_all(&cert).expect("certificate directory");
    tls::load_or_create(&cert, None, None).expect("certificate");
    timeout(
        LIMIT,
        Relay::start(RelayConfig {
            data_dir: dir.join(name),
            listen: "127.0.0.1:0".parse().expect("addr"),
            database: Some(db.url().to_string()),
            cert: Some(cert.join(tls::CERT_FILE)),
            key: Some(cert.join(tls::KEY_FILE)),
            ..RelayConfig::default()
        }),
    )
    .await
    .expect("relay node starts in time")
    .expect("relay node starts")
}

/// A one-time enrolment token from `relay` (its store call runs off the async threads: the
/// PostgreSQL client blocks).
async fn token(relay: &Relay, name: &str, role: Role, scopes: &[&str]) -> EnrolToken {
    let store = relay.store().clone();
    let owned = name.to_string();
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    let secret = tokio::task::spawn_blocking(move || {
        store.create_enrolment(&owned, role, &scopes, None, Duration::from_secs(3600))
    })
    .await
    .expect("store call")
    .expect("enrolment");
    EnrolToken::new(
        &relay.local_addr().to_string(),
        relay.fingerprint(),
        &secret,
    )
    .expect("token")
}

/// A laptop: its replica, its sync settings (with the enrolled credential) and where it syncs.
struct Laptop {
    name: String,
    client: Client,
    cfg: SyncConfig,
    addr: SocketAddr,
    pin: String,
}

/// A device id whose first byte is `rank`, so the order of the devices' Automerge actors (and
/// with it the last-writer-wins tie-break between them) is fixed: rep < manager < director.
fn ranked_device_id(rank: u8) -> Uuid {
    let mut b = *Uuid::now_v7().as_bytes();
    b[0] = rank;
    Uuid::from_bytes(b)
}

fn rank(role: Role) -> u8 {
    match role {
        Role::Rep => 0x10,
        Role::Manager => 0x50,
        Role::Director => 0x90,
        Role::Admin => 0xd0,
    }
}

/// Enrols a new laptop through `relay`. Its local identity claims admin: a modified client
/// passes its own checks; only the relay keeps it in its lane.
async fn laptop(relay: &Relay, dir: &Path, name: &str, role: Role, scopes: &[&str]) -> Laptop {
    let client = Client::open_with(
        dir.join(format!("{name}.db")),
        StoreOptions {
            device_id: Some(ranked_device_id(rank(role))),
            ..StoreOptions::default()
        },
    )
    .expect("replica");
    client
        .set_identity(Identity::new(name, Role::Admin, "acme"))
        .expect("identity");
    let t = token(relay, name, role, scopes).await;
    let e = timeout(LIMIT, enrol_replica(&client, &t, Duration::from_secs(5)))
        .await
        .expect("enrolment in time")
        .expect("enrolled");
    assert_eq!((e.role, e.device_id), (role, client.device_id()));
    let mut cfg = SyncConfig::new(&e.relay, &e.pin);
    cfg.credential = load_credential(&client).expect("credential");
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.response_timeout = Duration::from_secs(20);
    Laptop {
        name: name.into(),
        client,
        cfg,
        addr: relay.local_addr(),
        pin: relay.fingerprint().to_string(),
    }
}

impl Laptop {
    async fn sync(&self) -> SyncReport {
        timeout(LIMIT, sync_now(&self.client, &self.cfg))
            .await
            .unwrap_or_else(|_| panic!("{} sync timed out", self.name))
            .unwrap_or_else(|e| panic!("{} sync failed: {e}", self.name))
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

    /// A customer with a quote submitted for approval (typed API).
    fn submitted_quote(&self, name: &str) -> QuoteId {
        let c = self.customer(name);
        let q = self
            .client
            .quotes()
            .create(NewQuote {
                customer_id: c,
                currency: "CNY".into(),
                quote_no: None,
                valid_until: None,
            })
            .expect("create quote");
        self.client.quotes().submit(q).expect("submit");
        q
    }

    fn visit(&self, customer: CustomerId, kind: Option<&str>) -> VisitId {
        self.client
            .visits()
            .create(NewVisit {
                customer_id: customer,
                kind: kind.map(str::to_string),
                notes: Some("met the buyer".into()),
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

    /// The raw Automerge document, if the replica holds it.
    fn raw(&self, id: DocId) -> Option<AutoCommit> {
        self.client.with_store(|s| {
            s.contains(id)
                .expect("contains")
                .then(|| s.automerge(id).expect("automerge"))
        })
    }

    /// Refusal reasons of this laptop's quarantined changes to `id`.
    fn refusals(&self, id: DocId) -> Vec<String> {
        self.client
            .with_store(|s| s.quarantine())
            .expect("quarantine")
            .into_iter()
            .filter(|q| q.doc_id == id)
            .map(|q| q.reason)
            .collect()
    }

    fn outbox(&self) -> u64 {
        self.client.outbox_len().expect("outbox")
    }

    fn credential(&self) -> String {
        self.cfg.credential.clone().expect("an enrolled credential")
    }

    fn actor(&self) -> ActorId {
        self.client.with_store(|s| s.actor().clone())
    }

    /// A raw protocol connection to this laptop's relay, authenticated as this laptop.
    async fn raw_session(&self) -> Raw {
        let mut raw = Raw::connect(self.addr, &self.pin).await;
        match raw
            .hello(self.client.device_id(), Some(self.credential()))
            .await
        {
            Message::Welcome { .. } => raw,
            other => panic!("{}: Hello refused: {other:?}", self.name),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Forging: what a modified client does.

/// Writes straight into the replica's Automerge document (past the model's checks); the raw
/// change goes into the outbox and the real client uploads it at the next sync.
fn forge(l: &Laptop, id: DocId, f: impl FnOnce(&mut AutoCommit) -> Result<(), ModelError>) {
    l.client
        .with_store(|s| s.edit(id, f))
        .unwrap_or_else(|e| panic!("{}: forging a change to {id}: {e}", l.name));
}

/// The map at `key` of `obj`.
fn map_at<R: ReadDoc>(d: &R, obj: &ObjId, key: &str) -> Result<ObjId, ModelError> {
    match d.get(obj, key)? {
        Some((Value::Object(ObjType::Map), id)) => Ok(id),
        _ => Err(ModelError::Malformed(format!("no map `{key}`"))),
    }
}

fn governed<R: ReadDoc>(d: &R) -> Result<ObjId, ModelError> {
    map_at(d, &ROOT, "governed")
}

/// The id of the map at root `key` in `l`'s replica (None if absent).
fn container_id(l: &Laptop, id: DocId, key: &str) -> Option<ObjId> {
    l.raw(id).and_then(|d| map_at(&d, &ROOT, key).ok())
}

/// Whether `needle` is anywhere in the document: any current value of any key or index of any
/// object, the losing sides of conflicts included.
fn holds(doc: &AutoCommit, needle: &ScalarValue) -> bool {
    let mut stack = vec![(ROOT, ObjType::Map)];
    while let Some((obj, kind)) = stack.pop() {
        let props: Vec<Prop> = match kind {
            ObjType::Map | ObjType::Table => doc.keys(&obj).map(Prop::Map).collect(),
            ObjType::List => (0..doc.length(&obj)).map(Prop::Seq).collect(),
            ObjType::Text => continue,
        };
        for p in props {
            for (v, child) in doc.get_all(&obj, p).expect("get_all") {
                match v {
                    Value::Scalar(s) if s.as_ref() == needle => return true,
                    Value::Scalar(_) => {}
                    Value::Object(k) => stack.push((child, k)),
                }
            }
        }
    }
    false
}

/// A problem if `l`'s replica holds `needle` anywhere in document `id`.
fn holds_marker(l: &Laptop, id: DocId, needle: &ScalarValue) -> Option<String> {
    l.raw(id)
        .filter(|d| holds(d, needle))
        .map(|_| format!("holds the forged value {needle:?} in its raw document"))
}

/// The keys of the root map `key` in `l`'s replica (including conflicting entries).
fn raw_keys(l: &Laptop, id: DocId, key: &str) -> Vec<String> {
    l.raw(id)
        .and_then(|d| map_at(&d, &ROOT, key).ok().map(|m| d.keys(&m).collect()))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Judging a set of forged writes.

enum Expect {
    /// Refused for good (quarantined by the real client); the reason contains the text, if any.
    Refused(Option<&'static str>),
    /// Accepted (a positive control).
    Accepted,
}

/// Checks run on a replica other than the forger's after it synced: `Some(problem)` when it
/// reads what it must not (or, for a positive control, misses what it must read).
type Check<'a> = Box<dyn Fn(&Laptop) -> Option<String> + 'a>;

/// One forged (or, for controls, ordinary) write and what must come of it.
struct Case<'a> {
    what: &'static str,
    by: &'a Laptop,
    doc: DocId,
    expect: Expect,
    check: Check<'a>,
}

impl<'a> Case<'a> {
    fn refused(
        what: &'static str,
        by: &'a Laptop,
        doc: DocId,
        reason: Option<&'static str>,
        check: impl Fn(&Laptop) -> Option<String> + 'a,
    ) -> Self {
        Self {
            what,
            by,
            doc,
            expect: Expect::Refused(reason),
            check: Box::new(check),
        }
    }

    fn accepted(
        what: &'static str,
        by: &'a Laptop,
        doc: DocId,
        check: impl Fn(&Laptop) -> Option<String> + 'a,
    ) -> Self {
        Self {
            what,
            by,
            doc,
            expect: Expect::Accepted,
            check: Box::new(check),
        }
    }
}

/// Syncs every laptop twice (uploads, then everyone's accepted changes), then checks each case:
/// the forger's quarantine, and every other replica. Returns the problems found.
async fn judge(laptops: &[&Laptop], cases: Vec<Case<'_>>) -> Vec<String> {
    for _ in 0..2 {
        for l in laptops {
            l.sync().await;
        }
    }
    let mut problems = Vec::new();
    for c in &cases {
        let reasons = c.by.refusals(c.doc);
        match c.expect {
            Expect::Refused(_) if reasons.is_empty() => problems.push(format!(
                "{}: ACCEPTED by the relay (nothing quarantined on {})",
                c.what, c.by.name
            )),
            Expect::Refused(Some(needle)) if !reasons.iter().any(|r| r.contains(needle)) => {
                problems.push(format!(
                    "{}: refused, but no reason says `{needle}`: {reasons:?}",
                    c.what
                ))
            }
            Expect::Accepted if !reasons.is_empty() => problems.push(format!(
                "{}: a legitimate write was refused: {reasons:?}",
                c.what
            )),
            _ => {}
        }
        for l in laptops.iter().filter(|l| !std::ptr::eq(**l, c.by)) {
            if let Some(p) = (c.check)(l) {
                problems.push(format!("{}: {} {p}", c.what, l.name));
            }
        }
    }
    for l in laptops {
        let n = l.outbox();
        if n != 0 {
            problems.push(format!(
                "{}: {n} changes left in the outbox (a refusal must be permanent)",
                l.name
            ));
        }
    }
    problems
}

fn assert_no_holes(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

/// A rep, a manager and a director, all in `north`, on a fresh relay.
struct Team {
    _dir: tempfile::TempDir,
    relay: Relay,
    rep: Laptop,
    manager: Laptop,
    director: Laptop,
}

impl Team {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let relay = start_relay(dir.path(), None).await;
        let rep = laptop(&relay, dir.path(), "rep", Role::Rep, &["north"]).await;
        let manager = laptop(&relay, dir.path(), "manager", Role::Manager, &["north"]).await;
        let director = laptop(&relay, dir.path(), "director", Role::Director, &["north"]).await;
        Self {
            _dir: dir,
            relay,
            rep,
            manager,
            director,
        }
    }

    fn all(&self) -> [&Laptop; 3] {
        [&self.rep, &self.manager, &self.director]
    }

    /// Everyone syncs twice: every replica holds every accepted change.
    async fn settle(&self) {
        for _ in 0..2 {
            for l in self.all() {
                l.sync().await;
            }
        }
    }

    async fn finish(self, problems: Vec<String>) {
        self.relay.shutdown().await.expect("shutdown");
        assert_no_holes(problems);
    }
}

fn cny(amount_minor: i64) -> Money {
    Money {
        amount_minor,
        currency: "CNY".into(),
    }
}

fn credit_limit_is(expected: Option<Money>, id: DocId) -> impl Fn(&Laptop) -> Option<String> {
    move |l| {
        if !l.has(id) {
            return None;
        }
        let got = l
            .client
            .customers()
            .get(id.into())
            .expect("customer")
            .credit_limit;
        (got != expected).then(|| format!("reads credit limit {got:?}, not {expected:?}"))
    }
}

// ---------------------------------------------------------------------------------------------
// A. Authority on effect.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_customer_credit_limit_is_director_only() {
    let t = Team::new().await;
    let blank = t.rep.customer("Blank Co");
    let minor_only = t.rep.customer("Minor Only Co");
    let currency_only = t.rep.customer("Currency Only Co");
    let limited = t.rep.customer("Limited Co");
    let by_manager = t.rep.customer("Manager Writes Co");
    t.settle().await;
    t.director
        .client
        .customers()
        .set_credit_limit(limited, cny(500_000_000))
        .expect("the director sets a limit");
    t.settle().await;

    forge(&t.rep, blank.into(), |d| {
        let g = governed(d)?;
        d.put(&g, "credit_limit_minor", 999_999_900i64)?;
        d.put(&g, "credit_limit_currency", "CNY")?;
        Ok(())
    });
    // Half a limit: invisible to a typed read until someone writes the other half.
    forge(&t.rep, minor_only.into(), |d| {
        let g = governed(d)?;
        d.put(&g, "credit_limit_minor", 999_999_901i64)?;
        Ok(())
    });
    forge(&t.rep, currency_only.into(), |d| {
        let g = governed(d)?;
        d.put(&g, "credit_limit_currency", "XAU")?;
        Ok(())
    });
    forge(&t.rep, limited.into(), |d| {
        let g = governed(d)?;
        d.put(&g, "credit_limit_minor", 999_999_902i64)?;
        Ok(())
    });
    forge(&t.manager, by_manager.into(), |d| {
        let g = governed(d)?;
        d.put(&g, "credit_limit_minor", 999_999_903i64)?;
        d.put(&g, "credit_limit_currency", "CNY")?;
        Ok(())
    });
    let marker = |v: i64, id: DocId, expected: Option<Money>| {
        let typed = credit_limit_is(expected, id);
        move |l: &Laptop| typed(l).or_else(|| holds_marker(l, id, &ScalarValue::Int(v)))
    };
    let cases = vec![
        Case::refused(
            "rep writes governed/credit_limit_minor+currency",
            &t.rep,
            blank.into(),
            Some(MAY_NOT),
            marker(999_999_900, blank.into(), None),
        ),
        Case::refused(
            "rep writes governed/credit_limit_minor alone",
            &t.rep,
            minor_only.into(),
            Some(MAY_NOT),
            marker(999_999_901, minor_only.into(), None),
        ),
        Case::refused(
            "rep writes governed/credit_limit_currency alone",
            &t.rep,
            currency_only.into(),
            Some(MAY_NOT),
            move |l| holds_marker(l, currency_only.into(), &ScalarValue::Str("XAU".into())),
        ),
        Case::refused(
            "rep overwrites the director's governed/credit_limit_minor",
            &t.rep,
            limited.into(),
            Some(MAY_NOT),
            marker(999_999_902, limited.into(), Some(cny(500_000_000))),
        ),
        Case::refused(
            "manager writes governed/credit_limit_minor+currency",
            &t.manager,
            by_manager.into(),
            Some(MAY_NOT),
            marker(999_999_903, by_manager.into(), None),
        ),
    ];
    let problems = judge(&t.all(), cases).await;
    t.finish(problems).await;
}

/// Forges `governed/<key>` = `value` on `id` by `by`, and the case that it is refused with
/// "may not" and that no other replica holds `value` or reads a typed change.
fn governed_case<'a>(
    what: &'static str,
    by: &'a Laptop,
    id: DocId,
    key: &'static str,
    value: ScalarValue,
    typed: impl Fn(&Laptop) -> Option<String> + 'a,
) -> Case<'a> {
    let v = value.clone();
    forge(by, id, move |d| {
        let g = governed(d)?;
        d.put(&g, key, v)?;
        Ok(())
    });
    Case::refused(what, by, id, Some(MAY_NOT), move |l| {
        typed(l).or_else(|| holds_marker(l, id, &value))
    })
}

fn customer_field_is_none(
    id: DocId,
    field: &'static str,
    read: fn(&fieldsync_client::Customer) -> Option<String>,
) -> impl Fn(&Laptop) -> Option<String> {
    move |l| {
        if !l.has(id) {
            return None;
        }
        let got = read(&l.client.customers().get(id.into()).expect("customer"));
        got.map(|v| format!("reads {field} {v:?}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_customer_payment_terms_are_director_only() {
    let t = Team::new().await;
    let text = t.rep.customer("Terms Text Co");
    let number = t.rep.customer("Terms Number Co");
    let by_manager = t.rep.customer("Terms Manager Co");
    t.settle().await;
    let terms = |c: &fieldsync_client::Customer| c.payment_terms.clone();
    let cases = vec![
        governed_case(
            "rep writes governed/payment_terms",
            &t.rep,
            text.into(),
            "payment_terms",
            ScalarValue::Str("NET-999-FORGED".into()),
            customer_field_is_none(text.into(), "payment terms", terms),
        ),
        // Not a string: invisible to the typed read, there in the document.
        governed_case(
            "rep writes governed/payment_terms as a number",
            &t.rep,
            number.into(),
            "payment_terms",
            ScalarValue::Int(909_090_901),
            customer_field_is_none(number.into(), "payment terms", terms),
        ),
        governed_case(
            "manager writes governed/payment_terms",
            &t.manager,
            by_manager.into(),
            "payment_terms",
            ScalarValue::Str("NET-998-FORGED".into()),
            customer_field_is_none(by_manager.into(), "payment terms", terms),
        ),
    ];
    let problems = judge(&t.all(), cases).await;
    t.finish(problems).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_customer_grade_is_admin_only() {
    let t = Team::new().await;
    let by_rep = t.rep.customer("Grade Rep Co");
    let by_director = t.rep.customer("Grade Director Co");
    let number = t.rep.customer("Grade Number Co");
    t.settle().await;
    let grade = |c: &fieldsync_client::Customer| c.grade.clone();
    let cases = vec![
        governed_case(
            "rep writes governed/grade",
            &t.rep,
            by_rep.into(),
            "grade",
            ScalarValue::Str("A-FORGED-REP".into()),
            customer_field_is_none(by_rep.into(), "grade", grade),
        ),
        governed_case(
            "director writes governed/grade",
            &t.director,
            by_director.into(),
            "grade",
            ScalarValue::Str("A-FORGED-DIRECTOR".into()),
            customer_field_is_none(by_director.into(), "grade", grade),
        ),
        governed_case(
            "rep writes governed/grade as a number",
            &t.rep,
            number.into(),
            "grade",
            ScalarValue::Int(909_090_902),
            customer_field_is_none(number.into(), "grade", grade),
        ),
    ];
    let problems = judge(&t.all(), cases).await;
    t.finish(problems).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_customer_owner_is_manager_only() {
    let t = Team::new().await;
    let text = t.rep.customer("Owner Text Co");
    let number = t.rep.customer("Owner Number Co");
    t.settle().await;
    let owner = |c: &fieldsync_client::Customer| c.owner.clone();
    let cases = vec![
        governed_case(
            "rep writes governed/owner",
            &t.rep,
            text.into(),
            "owner",
            ScalarValue::Str("mallory-forged".into()),
            customer_field_is_none(text.into(), "owner", owner),
        ),
        governed_case(
            "rep writes governed/owner as a number",
            &t.rep,
            number.into(),
            "owner",
            ScalarValue::Int(909_090_903),
            customer_field_is_none(number.into(), "owner", owner),
        ),
    ];
    let problems = judge(&t.all(), cases).await;
    t.finish(problems).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_customer_scope_is_manager_only() {
    let t = Team::new().await;
    let moved = t.rep.customer("Scope Move Co");
    let number = t.rep.customer("Scope Number Co");
    t.settle().await;
    forge(&t.rep, moved.into(), |d| {
        d.put(ROOT, "scope", "east-forged")?;
        Ok(())
    });
    forge(&t.rep, number.into(), |d| {
        d.put(ROOT, "scope", 909_090_904i64)?;
        Ok(())
    });
    let still_north = |id: DocId| {
        move |l: &Laptop| {
            if !l.has(id) {
                return Some("lost the customer".into());
            }
            let c = l.client.customers().get(id.into()).expect("customer");
            (c.header.scope != "north").then(|| format!("reads scope {:?}", c.header.scope))
        }
    };
    let cases = vec![
        Case::refused(
            "rep moves a customer to another scope (root scope)",
            &t.rep,
            moved.into(),
            Some(MAY_NOT),
            move |l| {
                still_north(moved.into())(l).or_else(|| {
                    holds_marker(l, moved.into(), &ScalarValue::Str("east-forged".into()))
                })
            },
        ),
        Case::refused(
            "rep writes root scope as a number",
            &t.rep,
            number.into(),
            Some(MAY_NOT),
            move |l| {
                still_north(number.into())(l)
                    .or_else(|| holds_marker(l, number.into(), &ScalarValue::Int(909_090_904)))
            },
        ),
    ];
    let problems = judge(&t.all(), cases).await;
    t.finish(problems).await;
}

fn quote_status_is(id: DocId, expected: QuoteStatus) -> impl Fn(&Laptop) -> Option<String> {
    move |l| {
        if !l.has(id) {
            return Some("lost the quote".into());
        }
        let q = l.client.quotes().get(id.into()).expect("quote");
        (q.status != expected).then(|| format!("reads quote status {:?}", q.status))
    }
}

/// A problem if `l`'s replica has any key of `keys` in the quote's `status_marks`.
fn no_marks(l: &Laptop, id: DocId, keys: &[&str]) -> Option<String> {
    let marks = raw_keys(l, id, "status_marks");
    let found: Vec<&String> = marks
        .iter()
        .filter(|k| keys.contains(&k.as_str()))
        .collect();
    (!found.is_empty()).then(|| format!("holds status marks {found:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a2_quote_status_marks_follow_the_transitions_and_roles() {
    let t = Team::new().await;
    let approved = t.rep.submitted_quote("Marks Approved Co");
    let rejected = t.rep.submitted_quote("Marks Rejected Co");
    let sent = t.rep.submitted_quote("Marks Sent Co");
    let invented = t.rep.submitted_quote("Marks Invented Co");
    t.settle().await;
    for (q, mark) in [
        (approved, "approved"),
        (rejected, "rejected"),
        (sent, "sent"),
        (invented, "banana"),
    ] {
        forge(&t.rep, q.into(), move |d| {
            let marks = map_at(d, &ROOT, "status_marks")?;
            d.put(&marks, mark, 1_700_000_000_000i64)?;
            Ok(())
        });
    }
    let submitted_without = |id: DocId, mark: &'static str| {
        move |l: &Laptop| {
            quote_status_is(id, QuoteStatus::Submitted)(l).or_else(|| no_marks(l, id, &[mark]))
        }
    };
    let cases = vec![
        Case::refused(
            "rep marks a submitted quote `approved`",
            &t.rep,
            approved.into(),
            Some(MAY_NOT),
            submitted_without(approved.into(), "approved"),
        ),
        Case::refused(
            "rep marks a submitted quote `rejected`",
            &t.rep,
            rejected.into(),
            Some(MAY_NOT),
            submitted_without(rejected.into(), "rejected"),
        ),
        Case::refused(
            "rep marks a submitted quote `sent` (skipping approval)",
            &t.rep,
            sent.into(),
            None,
            submitted_without(sent.into(), "sent"),
        ),
        Case::refused(
            "rep adds an unknown status mark `banana`",
            &t.rep,
            invented.into(),
            None,
            submitted_without(invented.into(), "banana"),
        ),
    ];
    let problems = judge(&t.all(), cases).await;
    t.finish(problems).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a2_quote_approvals_are_manager_only() {
    let t = Team::new().await;
    let entry = t.rep.submitted_quote("Approval Entry Co");
    let scalar = t.rep.submitted_quote("Approval Scalar Co");
    t.settle().await;
    // A well-formed approval entry, as a manager's client writes it.
    forge(&t.rep, entry.into(), |d| {
        let approvals = map_at(d, &ROOT, "approvals")?;
        let a = d.put_object(&approvals, new_item_id(), ObjType::Map)?;
        d.put(&a, "decision", "approved")?;
        d.put(&a, "approver", "rep-forged")?;
        d.put(&a, "role", "manager")?;
        d.put(&a, "at", 1_700_000_000_000i64)?;
        Ok(())
    });
    // Not a map: the typed read skips it, yet it sits in the approvals map.
    forge(&t.rep, scalar.into(), |d| {
        let approvals = map_at(d, &ROOT, "approvals")?;
        d.put(&approvals, "forged-approval", "approved")?;
        Ok(())
    });
    let no_approvals = |id: DocId| {
        move |l: &Laptop| {
            if !l.has(id) {
                return Some("lost the quote".into());
            }
            let q = l.client.quotes().get(id.into()).expect("quote");
            if !q.approvals.is_empty() {
                return Some(format!("reads approvals {:?}", q.approvals));
            }
            let raw = raw_keys(l, id, "approvals");
            if !raw.is_empty() {
                return Some(format!("holds approval entries {raw:?}"));
            }
            quote_status_is(id, QuoteStatus::Submitted)(l)
        }
    };
    let cases = vec![
        Case::refused(
            "rep adds an approval entry",
            &t.rep,
            entry.into(),
            Some(MAY_NOT),
            no_approvals(entry.into()),
        ),
        Case::refused(
            "rep adds a non-map approval entry",
            &t.rep,
            scalar.into(),
            Some(MAY_NOT),
            no_approvals(scalar.into()),
        ),
    ];
    let problems = judge(&t.all(), cases).await;
    t.finish(problems).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a2_quote_owner_is_manager_only() {
    let t = Team::new().await;
    let text = t.rep.submitted_quote("Quote Owner Text Co");
    let number = t.rep.submitted_quote("Quote Owner Number Co");
    t.settle().await;
    let owner_is_none = |id: DocId| {
        move |l: &Laptop| {
            if !l.has(id) {
                return None;
            }
            let q = l.client.quotes().get(id.into()).expect("quote");
            q.owner.map(|o| format!("reads quote owner {o:?}"))
        }
    };
    let cases = vec![
        governed_case(
            "rep writes quote governed/owner",
            &t.rep,
            text.into(),
            "owner",
            ScalarValue::Str("mallory-forged".into()),
            owner_is_none(text.into()),
        ),
        governed_case(
            "rep writes quote governed/owner as a number",
            &t.rep,
            number.into(),
            "owner",
            ScalarValue::Int(909_090_905),
            owner_is_none(number.into()),
        ),
    ];
    let problems = judge(&t.all(), cases).await;
    t.finish(problems).await;
}

fn stage_is(id: DocId, expected: &'static str) -> impl Fn(&Laptop) -> Option<String> {
    move |l| {
        if !l.has(id) {
            return Some("lost the customer".into());
        }
        let c = l.client.customers().get(id.into()).expect("customer");
        (c.stage != expected).then(|| format!("reads stage {:?}, not {expected:?}", c.stage))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_customer_stage_is_validated_and_churned_is_manager_only() {
    let t = Team::new().await;
    let banana = t.rep.customer("Stage Banana Co");
    let churned = t.rep.customer("Stage Churned Co");
    let control_rep = t.rep.customer("Stage Control Rep Co");
    let control_manager = t.rep.customer("Stage Control Manager Co");
    t.settle().await;
    forge(&t.rep, banana.into(), |d| {
        d.put(ROOT, "stage", "banana")?;
        Ok(())
    });
    forge(&t.rep, churned.into(), |d| {
        d.put(ROOT, "stage", "churned")?;
        Ok(())
    });
    // Controls: a rep moves a customer along; a manager marks one churned.
    t.rep
        .client
        .customers()
        .set_stage(control_rep, "opportunity")
        .expect("stage");
    t.manager
        .client
        .customers()
        .set_stage(control_manager, "churned")
        .expect("stage");
    let cases = vec![
        Case::refused(
            "rep sets stage `banana` (not a stage)",
            &t.rep,
            banana.into(),
            None,
            move |l| {
                stage_is(banana.into(), "potential")(l)
                    .or_else(|| holds_marker(l, banana.into(), &ScalarValue::Str("banana".into())))
            },
        ),
        Case::refused(
            "rep sets stage `churned` (manager-only)",
            &t.rep,
            churned.into(),
            Some(MAY_NOT),
            move |l| {
                stage_is(churned.into(), "potential")(l).or_else(|| {
                    holds_marker(l, churned.into(), &ScalarValue::Str("churned".into()))
                })
            },
        ),
        Case::accepted(
            "control: rep sets stage `opportunity`",
            &t.rep,
            control_rep.into(),
            stage_is(control_rep.into(), "opportunity"),
        ),
        Case::accepted(
            "control: manager sets stage `churned`",
            &t.manager,
            control_manager.into(),
            stage_is(control_manager.into(), "churned"),
        ),
    ];
    let problems = judge(&t.all(), cases).await;
    t.finish(problems).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_visit_kind_is_validated() {
    let t = Team::new().await;
    let c = t.rep.customer("Visited Co");
    let edited = t.rep.visit(c, None);
    let control = t.rep.visit(c, None);
    t.settle().await;
    forge(&t.rep, edited.into(), |d| {
        d.put(ROOT, "visit_kind", "banana")?;
        Ok(())
    });
    // The typed API refuses an unknown kind at once; a modified client writes it anyway.
    let refused = t.rep.client.visits().create(NewVisit {
        customer_id: c,
        kind: Some("teleportation".into()),
        notes: None,
        status: VisitStatus::Done,
        at: None,
        location: None,
    });
    assert!(refused.is_err(), "the model refuses an unknown visit kind");
    let created = t
        .rep
        .client
        .with_store(|s| {
            s.create(|doc, id| {
                fieldsync_core::model::create_visit(
                    doc,
                    id,
                    "acme",
                    "north",
                    &NewVisit {
                        customer_id: c,
                        kind: None,
                        notes: None,
                        status: VisitStatus::Done,
                        at: None,
                        location: None,
                    },
                    &EditCtx::new("north rep", Role::Rep),
                )?;
                doc.put(ROOT, "visit_kind", "teleportation")?;
                Ok(())
            })
        })
        .expect("forged visit")
        .id;
    t.rep
        .client
        .visits()
        .set(control, fieldsync_client::VisitField::Kind, "care")
        .expect("kind");
    let kind_is_not = |id: DocId, bad: &'static str| {
        move |l: &Laptop| {
            if !l.has(id) {
                return None;
            }
            let v = l.client.visits().get(id.into()).expect("visit");
            if v.visit_kind == bad {
                return Some(format!("reads visit kind {bad:?}"));
            }
            holds_marker(l, id, &ScalarValue::Str(bad.into()))
        }
    };
    let cases = vec![
        Case::refused(
            "rep sets visit_kind `banana`",
            &t.rep,
            edited.into(),
            None,
            kind_is_not(edited.into(), "banana"),
        ),
        Case::refused(
            "rep creates a visit of kind `teleportation`",
            &t.rep,
            created,
            None,
            kind_is_not(created, "teleportation"),
        ),
        Case::accepted(
            "control: rep sets visit_kind `care`",
            &t.rep,
            control.into(),
            move |l| {
                let v = l.client.visits().get(control).expect("visit");
                (v.visit_kind != "care").then(|| format!("reads visit kind {:?}", v.visit_kind))
            },
        ),
    ];
    let problems = judge(&t.all(), cases).await;
    t.finish(problems).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4a_a_governed_write_hidden_in_a_conflict_is_refused() {
    let t = Team::new().await;
    let c = t.rep.customer("Conflict Co");
    t.settle().await;
    assert!(
        t.rep.actor() < t.director.actor(),
        "setup: the rep's actor must sort below the director's"
    );
    // The director sets a limit; the rep, without syncing (its copy is at the heads before the
    // director's change), writes its own: the two are concurrent, with the same operation
    // counters, and the director's actor wins the tie-break. The typed read shows the
    // director's value; the rep's sits in the document as the losing side of the conflict.
    t.director
        .client
        .customers()
        .set_credit_limit(c, cny(500_000_000))
        .expect("the director sets a limit");
    assert_eq!(t.director.sync().await.changes_acked, 1);
    forge(&t.rep, c.into(), |d| {
        let g = governed(d)?;
        d.put(&g, "credit_limit_minor", 999_999_900i64)?;
        d.put(&g, "credit_limit_currency", "CNY")?;
        Ok(())
    });
    let typed = credit_limit_is(Some(cny(500_000_000)), c.into());
    let cases = vec![Case::refused(
        "rep's credit limit hidden as the losing side of a conflict",
        &t.rep,
        c.into(),
        Some(MAY_NOT),
        move |l| {
            typed(l)
                .or_else(|| holds_marker(l, c.into(), &ScalarValue::Int(999_999_900)))
                .or_else(|| {
                    let conflicts = l.client.conflicts().expect("conflicts");
                    conflicts
                        .iter()
                        .find(|x| x.doc_id == c)
                        .map(|x| format!("shows a conflict {}: {:?}", x.path, x.values))
                })
        },
    )];
    let problems = judge(&t.all(), cases).await;
    t.finish(problems).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4b_a_governed_value_inside_a_nested_object_is_refused() {
    let t = Team::new().await;
    let nested_limit = t.rep.customer("Nested Limit Co");
    let nested_grade = t.rep.customer("Nested Grade Co");
    let replaced = t.rep.customer("Replaced Governed Co");
    t.settle().await;
    forge(&t.rep, nested_limit.into(), |d| {
        let g = governed(d)?;
        let o = d.put_object(&g, "credit_limit_minor", ObjType::Map)?;
        d.put(&o, "amount", 999_999_900i64)?;
        d.put(&o, "currency", "CNY")?;
        Ok(())
    });
    forge(&t.rep, nested_grade.into(), |d| {
        let g = governed(d)?;
        let o = d.put_object(&g, "grade", ObjType::Map)?;
        d.put(&o, "value", "A-FORGED-NESTED")?;
        Ok(())
    });
    forge(&t.rep, replaced.into(), |d| {
        let g = d.put_object(ROOT, "governed", ObjType::Map)?;
        d.put(&g, "credit_limit_minor", 999_999_901i64)?;
        d.put(&g, "credit_limit_currency", "CNY")?;
        Ok(())
    });
    let cases = vec![
        Case::refused(
            "rep puts an object at governed/credit_limit_minor",
            &t.rep,
            nested_limit.into(),
            None,
            move |l| holds_marker(l, nested_limit.into(), &ScalarValue::Int(999_999_900)),
        ),
        Case::refused(
            "rep puts an object at governed/grade",
            &t.rep,
            nested_grade.into(),
            None,
            move |l| {
                holds_marker(
                    l,
                    nested_grade.into(),
                    &ScalarValue::Str("A-FORGED-NESTED".into()),
                )
            },
        ),
        Case::refused(
            "rep replaces the governed map with one holding a limit",
            &t.rep,
            replaced.into(),
            None,
            move |l| {
                credit_limit_is(None, replaced.into())(l)
                    .or_else(|| holds_marker(l, replaced.into(), &ScalarValue::Int(999_999_901)))
            },
        ),
    ];
    let problems = judge(&t.all(), cases).await;
    t.finish(problems).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4c_deleting_and_recreating_a_governed_container_is_refused() {
    let t = Team::new().await;
    let recreated = t.rep.customer("Recreated Governed Co");
    let deleted = t.rep.customer("Deleted Governed Co");
    let quote = t.rep.submitted_quote("Recreated Approvals Co");
    t.settle().await;
    t.director
        .client
        .customers()
        .set_credit_limit(recreated, cny(500_000_000))
        .expect("the director sets a limit");
    t.settle().await;
    let governed_before =
        container_id(&t.director, recreated.into(), "governed").expect("governed");
    let deleted_before = container_id(&t.director, deleted.into(), "governed").expect("governed");
    let approvals_before = container_id(&t.manager, quote.into(), "approvals").expect("approvals");

    // Delete the governed map and make a new one with the same visible content: a typed read
    // sees no difference, but every later write to the old map (the director's) is lost.
    forge(&t.rep, recreated.into(), |d| {
        d.delete(ROOT, "governed")?;
        let g = d.put_object(ROOT, "governed", ObjType::Map)?;
        d.put(&g, "credit_limit_minor", 500_000_000i64)?;
        d.put(&g, "credit_limit_currency", "CNY")?;
        Ok(())
    });
    forge(&t.rep, deleted.into(), |d| {
        d.delete(ROOT, "governed")?;
        Ok(())
    });
    forge(&t.rep, quote.into(), |d| {
        d.delete(ROOT, "approvals")?;
        d.put_object(ROOT, "approvals", ObjType::Map)?;
        Ok(())
    });
    let same = |id: DocId, key: &'static str, before: ObjId| {
        move |l: &Laptop| {
            let now = container_id(l, id, key);
            (now.as_ref() != Some(&before))
                .then(|| format!("holds another `{key}` map ({now:?}, was {before:?})"))
        }
    };
    let typed = credit_limit_is(Some(cny(500_000_000)), recreated.into());
    let same_governed = same(recreated.into(), "governed", governed_before);
    let cases = vec![
        Case::refused(
            "rep deletes and recreates governed with the same content",
            &t.rep,
            recreated.into(),
            None,
            move |l| typed(l).or_else(|| same_governed(l)),
        ),
        Case::refused(
            "rep deletes the governed map",
            &t.rep,
            deleted.into(),
            None,
            same(deleted.into(), "governed", deleted_before),
        ),
        Case::refused(
            "rep deletes and recreates a quote's approvals",
            &t.rep,
            quote.into(),
            None,
            same(quote.into(), "approvals", approvals_before),
        ),
    ];
    let problems = judge(&t.all(), cases).await;
    t.finish(problems).await;
}

// ---------------------------------------------------------------------------------------------
// Raw protocol client.

struct Raw {
    _ep: Endpoint,
    _conn: quinn::Connection,
    send: SendStream,
    recv: RecvStream,
}

impl Raw {
    async fn connect(addr: SocketAddr, pin: &str) -> Self {
        let mut ep = Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        ep.set_default_client_config(tls::client_config(pin).expect("tls"));
        let conn = timeout(LIMIT, ep.connect(addr, tls::SERVER_NAME).expect("connect"))
            .await
            .expect("connected in time")
            .expect("connected");
        let (send, recv) = timeout(LIMIT, conn.open_bi())
            .await
            .expect("stream in time")
            .expect("stream");
        Self {
            _ep: ep,
            _conn: conn,
            send,
            recv,
        }
    }

    async fn send(&mut self, m: &Message) {
        timeout(LIMIT, self.send.write_all(&encode(m).expect("encode")))
            .await
            .expect("sent in time")
            .expect("sent");
    }

    async fn recv(&mut self) -> Message {
        timeout(LIMIT, async {
            let mut len = [0u8; 4];
            self.recv.read_exact(&mut len).await.expect("frame length");
            let mut body = vec![0u8; check_len(u32::from_be_bytes(len)).expect("length")];
            self.recv.read_exact(&mut body).await.expect("frame");
            decode(&body).expect("decode")
        })
        .await
        .expect("an answer in time")
    }

    async fn hello(&mut self, device_id: Uuid, credential: Option<String>) -> Message {
        self.send(&Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            device_id,
            credential,
            agent: "trust-test".into(),
        })
        .await;
        let answer = self.recv().await;
        if matches!(answer, Message::Welcome { .. }) {
            // The device's orders follow the Welcome (protocol 7).
            let policy = self.recv().await;
            assert!(matches!(policy, Message::Policy { .. }), "{policy:?}");
        }
        answer
    }

    /// Uploads `changes` as batch `batch`; returns the hashes accepted and the refusals.
    async fn upload(
        &mut self,
        batch: u64,
        changes: Vec<UploadChange>,
    ) -> (Vec<[u8; 32]>, Vec<Rejection>) {
        self.send(&Message::Upload { batch, changes }).await;
        loop {
            match self.recv().await {
                Message::UploadAck {
                    batch: b,
                    accepted,
                    rejected,
                } if b == batch => return (accepted, rejected),
                // A live push may come first.
                Message::Batch { .. } => {}
                other => panic!("expected UploadAck for batch {batch}, got {other:?}"),
            }
        }
    }

    /// A `Heads` exchange; returns the relay's `Missing` entries.
    async fn heads(&mut self, docs: Vec<(DocId, Vec<[u8; 32]>)>) -> Vec<(DocId, Vec<[u8; 32]>)> {
        self.send(&Message::Heads { docs, done: true }).await;
        loop {
            match self.recv().await {
                Message::Missing { docs, done: true } => return docs,
                Message::Batch { .. } => {}
                other => panic!("expected Missing, got {other:?}"),
            }
        }
    }
}

/// The changes of `doc` after `before`, as an upload for document `id`.
fn upload_of(doc: &mut AutoCommit, before: &[ChangeHash], id: DocId) -> Vec<UploadChange> {
    doc.get_changes(before)
        .into_iter()
        .map(|c| UploadChange {
            doc_id: id,
            bytes: c.raw_bytes().to_vec(),
        })
        .collect()
}

fn hash_of(c: &UploadChange) -> [u8; 32] {
    fieldsync_core::store::decode_change(&c.bytes)
        .expect("change")
        .hash()
        .0
}

// ---------------------------------------------------------------------------------------------
// B. Repair-batch forgery.

/// The rep (enrolled on `rep_node`) re-signs a credit limit of 9,999,999.00 under the director's
/// actor and uploads it, first as a normal batch, then as a repair batch; the director (on
/// `director_node`, which may be another node on the same database) must never read it.
async fn repair_forgery(rep_node: &Relay, director_node: &Relay, dir: &Path) -> Vec<String> {
    let rep = laptop(rep_node, dir, "rep", Role::Rep, &["north"]).await;
    let director = laptop(director_node, dir, "director", Role::Director, &["north"]).await;
    let c = rep.customer("Repair Forgery Co");
    rep.sync().await;
    director.sync().await;
    director
        .client
        .customers()
        .set_credit_limit(c, cny(500_000_000))
        .expect("the director sets a limit");
    assert_eq!(director.sync().await.changes_acked, 1);
    rep.sync().await;

    // The rep finds the director's actor in the customer's history and writes the next change
    // of that actor on top of the current heads.
    let mut doc = rep.raw(c.into()).expect("the rep holds the customer");
    let director_actor = doc
        .get_changes(&[])
        .iter()
        .map(|ch| ch.actor_id().clone())
        .find(|a| {
            a.to_bytes()
                .starts_with(director.client.device_id().as_bytes())
        })
        .expect("a director change in the rep's copy");
    let before = doc.get_heads();
    let mut forged = doc.fork().with_actor(director_actor);
    apply_edit(
        &mut forged,
        &Edit::Customer(CustomerEdit::SetCreditLimit(cny(999_999_900))),
        &EditCtx::new("director", Role::Director),
    )
    .expect("forged edit");
    forged.commit();
    let changes = upload_of(&mut forged, &before, c.into());
    assert_eq!(changes.len(), 1);
    let hash = hash_of(&changes[0]);

    let mut problems = Vec::new();
    let mut raw = rep.raw_session().await;
    for (label, batch) in [("normal", 1), ("repair", REPAIR_BATCH | 2)] {
        let (accepted, rejected) = raw.upload(batch, changes.clone()).await;
        if accepted.contains(&hash) {
            problems.push(format!(
                "{label} batch: the forged director change was ACCEPTED (batch {batch:#x})"
            ));
        } else if !rejected.iter().any(|r| r.hash == hash && !r.retry) {
            problems.push(format!("{label} batch: not refused for good: {rejected:?}"));
        }
    }
    drop(raw);

    director.sync().await;
    let seen = director
        .client
        .customers()
        .get(c)
        .expect("customer")
        .credit_limit;
    if seen != Some(cny(500_000_000)) {
        problems.push(format!("the director's laptop reads credit limit {seen:?}"));
    }
    if let Some(p) = holds_marker(&director, c.into(), &ScalarValue::Int(999_999_900)) {
        problems.push(format!("the director's laptop {p}"));
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_a_repair_batch_cannot_forge_a_directors_change_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(dir.path(), None).await;
    let problems = repair_forgery(&relay, &relay, dir.path()).await;
    relay.shutdown().await.expect("shutdown");
    assert_no_holes(problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_a_repair_batch_cannot_forge_a_directors_change_two_postgres_nodes() {
    let db = scratch();
    let dir = tempfile::tempdir().expect("tmp");
    let one = pg_node(dir.path(), "node-1", &db).await;
    let two = pg_node(dir.path(), "node-2", &db).await;
    let problems = repair_forgery(&one, &two, dir.path()).await;
    one.shutdown().await.expect("shutdown node 1");
    two.shutdown().await.expect("shutdown node 2");
    assert_no_holes(problems);
}

// ---------------------------------------------------------------------------------------------
// C and D. After a move.

/// A north rep whose customer a manager moved to `to`, with the rep's copy saved before the
/// move; the rep has synced since and dropped the customer.
struct Moved {
    _dir: tempfile::TempDir,
    relay: Relay,
    rep: Laptop,
    other_side: Laptop,
    customer: DocId,
    /// The rep's copy of the customer from before the move.
    before_move: AutoCommit,
}

impl Moved {
    async fn new(to: &str, move_grace_days: Option<u64>) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let relay = start_relay(dir.path(), move_grace_days).await;
        let rep = laptop(&relay, dir.path(), "north rep", Role::Rep, &["north"]).await;
        let other_side = laptop(&relay, dir.path(), "new rep", Role::Rep, &[to]).await;
        let manager = laptop(&relay, dir.path(), "manager", Role::Manager, &["north", to]).await;
        let customer = rep.customer("Moving Co");
        rep.sync().await;
        manager.sync().await;
        let before_move = AutoCommit::load(&rep.client.export(customer.into()).expect("export"))
            .expect("the rep's copy");

        manager
            .client
            .customers()
            .edit(customer, CustomerEdit::SetScope(to.into()))
            .expect("move");
        assert_eq!(
            manager.sync().await.changes_acked,
            1,
            "the move is accepted"
        );
        rep.sync().await;
        assert!(
            !rep.has(customer.into()),
            "setup: the north rep was told the customer left and dropped it"
        );
        other_side.sync().await;
        assert!(
            other_side.has(customer.into()),
            "setup: the customer arrived in {to}"
        );
        Self {
            _dir: dir,
            relay,
            rep,
            other_side,
            customer: customer.into(),
            before_move,
        }
    }

    /// A note on the saved pre-move copy, written under `actor`: the change, as an upload.
    fn note(&self, actor: ActorId, text: &str) -> UploadChange {
        let mut doc = self.before_move.clone().with_actor(actor);
        let before = doc.get_heads();
        apply_edit(
            &mut doc,
            &Edit::Customer(CustomerEdit::AddNote(new_item_id(), text.into())),
            &EditCtx::new("north rep", Role::Rep),
        )
        .expect("note");
        doc.commit();
        let mut changes = upload_of(&mut doc, &before, self.customer);
        assert_eq!(changes.len(), 1);
        changes.pop().expect("one change")
    }

    /// Another actor of the rep's device (a second session of the same laptop).
    fn second_actor(&self) -> ActorId {
        let mut b = self.rep.client.device_id().as_bytes().to_vec();
        b.extend_from_slice(&[0xee; 8]);
        ActorId::from(b)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_the_move_grace_period_is_not_a_back_door() {
    let m = Moved::new("south", None).await;
    // Both notes are built on the copy from before the move, so every dependency was on the
    // relay before the customer left; but the rep has already been told it left.
    let notes = [
        m.note(m.rep.actor(), "FORGED-AFTER-MOVE-1"),
        m.note(m.second_actor(), "FORGED-AFTER-MOVE-2"),
    ];
    let mut raw = m.rep.raw_session().await;
    let (accepted, rejected) = raw.upload(1, notes.to_vec()).await;
    drop(raw);
    let mut problems = Vec::new();
    for (i, n) in notes.iter().enumerate() {
        let h = hash_of(n);
        if accepted.contains(&h) {
            problems.push(format!(
                "note {} (built on the pre-move copy, sent after the rep dropped the customer) \
                 was ACCEPTED",
                i + 1
            ));
        } else if !rejected.iter().any(|r| r.hash == h) {
            problems.push(format!("note {} neither accepted nor refused", i + 1));
        }
    }
    m.other_side.sync().await;
    let seen: Vec<String> = m
        .other_side
        .client
        .customers()
        .get(m.customer.into())
        .expect("customer")
        .notes
        .into_iter()
        .map(|n| n.text)
        .filter(|t| t.starts_with("FORGED"))
        .collect();
    if !seen.is_empty() {
        problems.push(format!("the south rep reads the notes {seen:?}"));
    }
    for text in ["FORGED-AFTER-MOVE-1", "FORGED-AFTER-MOVE-2"] {
        if let Some(p) = holds_marker(&m.other_side, m.customer, &ScalarValue::Str(text.into())) {
            problems.push(format!("the south rep {p}"));
        }
    }
    m.relay.shutdown().await.expect("shutdown");
    assert_no_holes(problems);
}

const SECRET_SCOPE: &str = "south-secret-dealer";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_uploads_reveal_nothing_outside_the_devices_scopes() {
    // No grace period: the upload to the moved customer is refused whatever the grace rules;
    // the test is about what the refusal says.
    let m = Moved::new(SECRET_SCOPE, Some(0)).await;
    let change = m.note(m.rep.actor(), "PROBE");
    let unknown = DocId::new();
    let mut raw = m.rep.raw_session().await;
    let (acc_unknown, rej_unknown) = raw
        .upload(
            1,
            vec![UploadChange {
                doc_id: unknown,
                bytes: change.bytes.clone(),
            }],
        )
        .await;
    let (acc_existing, rej_existing) = raw.upload(2, vec![change]).await;
    drop(raw);
    m.relay.shutdown().await.expect("shutdown");

    assert!(acc_unknown.is_empty(), "an unknown document: accepted?");
    assert!(
        acc_existing.is_empty(),
        "the change to the out-of-scope customer was ACCEPTED"
    );
    assert_eq!(rej_unknown.len(), 1);
    assert_eq!(rej_existing.len(), 1);
    let (u, e) = (&rej_unknown[0], &rej_existing[0]);
    assert!(
        !e.reason.contains(SECRET_SCOPE),
        "the refusal names the hidden scope: {:?}",
        e.reason
    );
    assert_eq!(
        (&e.reason, e.retry),
        (&u.reason, u.retry),
        "an out-of-scope document is answered unlike an unknown one \
         (left: out of scope, right: unknown)"
    );
}

/// The shape of a `Missing` answer: whether each entry is the document asked about, and with
/// which heads.
fn shape(docs: &[(DocId, Vec<[u8; 32]>)], asked: DocId) -> Vec<(bool, Vec<[u8; 32]>)> {
    docs.iter()
        .map(|(id, h)| (*id == asked, h.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_heads_reveal_nothing_outside_the_devices_scopes() {
    let m = Moved::new(SECRET_SCOPE, Some(0)).await;
    let unknown = DocId::new();
    // Heads the relay holds (the rep's from before the move), and heads it never saw.
    let known: Vec<[u8; 32]> = m
        .before_move
        .clone()
        .get_heads()
        .iter()
        .map(|h| h.0)
        .collect();
    let bogus = vec![[0xab; 32]];
    let mut raw = m.rep.raw_session().await;
    let mut problems = Vec::new();
    for (label, heads) in [("heads the relay holds", known), ("unknown heads", bogus)] {
        let existing = raw.heads(vec![(m.customer, heads.clone())]).await;
        let absent = raw.heads(vec![(unknown, heads)]).await;
        let (a, b) = (shape(&existing, m.customer), shape(&absent, unknown));
        if a != b {
            problems.push(format!(
                "{label}: Missing for the out-of-scope customer {a:?} differs from \
                 an unknown document's {b:?}"
            ));
        }
    }
    drop(raw);
    m.relay.shutdown().await.expect("shutdown");
    assert_no_holes(problems);
}

//! Sync with real processes: the `fieldsync-relay serve` binary and the `fieldsync`
//! command-line client, each in its own process, on 127.0.0.1.
//!
//! - The relay is killed with SIGKILL in the middle of a client's upload (at three points:
//!   before the first acknowledgement, just after it, and halfway) and restarted on the same
//!   data directory and port. After each restart a fresh client downloads everything and must
//!   hold every change the uploader no longer holds in its outbox (the relay acknowledged it, so
//!   it must have survived); then the upload completes and replicas end equal, heads included.
//! - Three `fieldsync` processes with their own replicas edit one customer offline at the same
//!   time (the same field, different sets, new customers), sync concurrently through the relay
//!   process and converge: `customer show --json` and `customer list --json` are equal on all
//!   three and `conflicts --json` lists the same-field conflict with every value on each.
//!
//! The binaries are built (or found up to date) through [`procs::binary`], with the profile of
//! this test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automerge::ChangeHash;
use fieldsync_client::sync::{SyncConfig, sync_now, sync_now_with_progress};
use fieldsync_client::{Client, DocId};
use fieldsync_core::model::{CustomerEdit, Edit, EditCtx, NewCustomer, apply_edit};
use fieldsync_core::model::{create_customer, new_item_id};
use fieldsync_tests::procs::{self, RelayProcess};
use serde_json::Value;

/// The relay accepts any device (every scope): these tests are about processes, not enrolment.
const OPEN: &[&str] = &["--open"];

fn start_relay(data: &Path, addr: SocketAddr) -> RelayProcess {
    RelayProcess::start(data, addr, OPEN).expect("the relay process starts")
}

/// Short timeouts: a killed relay never closes its connections, so a client notices only
/// through the QUIC idle timeout.
fn sync_config(relay: &RelayProcess) -> SyncConfig {
    let mut c = SyncConfig::new(relay.addr.to_string(), relay.fingerprint.clone());
    c.connect_timeout = Duration::from_secs(5);
    c.idle_timeout = Duration::from_secs(2);
    c.keep_alive = Duration::from_millis(300);
    c.response_timeout = Duration::from_secs(20);
    c
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Every change hash in the client's outbox, with its document.
fn outbox(client: &Client) -> BTreeMap<ChangeHash, DocId> {
    client
        .with_store(|s| s.outbox_batch(0, usize::MAX >> 1, usize::MAX >> 1))
        .expect("outbox")
        .into_iter()
        .map(|c| (c.hash, c.doc_id))
        .collect()
}

fn heads(client: &Client) -> BTreeMap<DocId, BTreeSet<ChangeHash>> {
    client
        .with_store(|s| s.all_heads())
        .expect("heads")
        .into_iter()
        .map(|(id, h)| (id, h.into_iter().collect()))
        .collect()
}

/// Creates `n` customers in one transaction, each as two changes (the customer, then a note
/// of about 4 KiB), so an upload needs several batches (about 1 MiB each).
fn offline_customers(client: &Client, round: usize, n: usize) {
    let identity = client.identity().expect("identity");
    let ctx = EditCtx::new(identity.author, identity.role);
    let filler = "Loader fleet inspection notes. ".repeat(130);
    client
        .with_store(|s| {
            s.transaction(|tx| {
                for i in 0..n {
                    let id = DocId::new();
                    let new = NewCustomer {
                        org: "acme".into(),
                        scope: "north".into(),
                        name: format!("round {round} customer {i:04}"),
                        ..Default::default()
                    };
                    tx.create(id, |doc, id| create_customer(doc, id, &new, &ctx))?;
                    let note = format!("{round}/{i}: {filler}");
                    tx.edit(id, |doc| {
                        apply_edit(
                            doc,
                            &Edit::Customer(CustomerEdit::AddNote(new_item_id(), note)),
                            &ctx,
                        )
                    })?;
                }
                Ok(())
            })
        })
        .expect("offline customers");
}

#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// An upload batch is on its way and nothing is acknowledged yet.
    BeforeFirstAck,
    /// The first batch was just acknowledged.
    AfterFirstAck,
    /// About half of the outbox is acknowledged.
    Halfway,
}

impl KillPoint {
    fn reached(self, sent: u64, acked: u64, total: u64) -> bool {
        match self {
            Self::BeforeFirstAck => sent > 0,
            Self::AfterFirstAck => acked > 0,
            Self::Halfway => acked * 2 >= total,
        }
    }
}

#[test]
fn relay_killed_mid_upload_and_restarted_loses_no_acknowledged_change() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("relay");
    let addr = procs::free_udp_addr().expect("a free port");
    let first = start_relay(&data, addr);
    let (addr, pin) = (first.addr, first.fingerprint.clone());
    let relay = Arc::new(Mutex::new(Some(first)));
    let rt = runtime();
    let uploader = Client::open(tmp.path().join("uploader.db")).expect("uploader");
    let points = [
        KillPoint::BeforeFirstAck,
        KillPoint::AfterFirstAck,
        KillPoint::Halfway,
    ];
    for (round, point) in points.into_iter().enumerate() {
        offline_customers(&uploader, round, 600);
        let before = outbox(&uploader);
        let total = before.len() as u64;
        let cfg = sync_config(relay.lock().unwrap().as_ref().expect("relay running"));
        let killer = relay.clone();
        let mut killed_at = None;
        let result = rt.block_on(sync_now_with_progress(&uploader, &cfg, |p| {
            if killed_at.is_none() && point.reached(p.changes_sent, p.changes_acked, total) {
                if let Some(r) = killer.lock().unwrap().take() {
                    r.kill9();
                }
                killed_at = Some(p.changes_acked);
            }
        }));
        let after = outbox(&uploader);
        let acked: Vec<(ChangeHash, DocId)> = before
            .iter()
            .filter(|(h, _)| !after.contains_key(h))
            .map(|(h, d)| (*h, *d))
            .collect();
        eprintln!(
            "round {round} ({point:?}): killed with {killed_at:?} of {total} acknowledged; \
             {} acknowledged in the end; sync: {result:?}",
            acked.len()
        );
        assert!(
            killed_at.is_some(),
            "the relay was killed during the upload"
        );
        assert!(result.is_err(), "the interrupted sync reports an error");

        let restarted = start_relay(&data, addr);
        assert_eq!(restarted.addr, addr, "same port");
        assert_eq!(restarted.fingerprint, pin, "same certificate");
        let cfg = sync_config(&restarted);
        *relay.lock().unwrap() = Some(restarted);

        // A fresh client sees what the relay kept: every acknowledged change must be there.
        let probe = Client::open(tmp.path().join(format!("probe{round}.db"))).expect("probe");
        rt.block_on(sync_now(&probe, &cfg)).expect("probe sync");
        let mut missing = Vec::new();
        for (hash, doc) in &acked {
            let present = probe
                .with_store(|s| {
                    s.automerge(*doc)
                        .map(|mut d| d.get_change_by_hash(hash).is_some())
                })
                .unwrap_or(false);
            if !present {
                missing.push(hash.to_string());
            }
        }
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged changes missing after the restart, e.g. {:?}",
            missing.len(),
            missing.first()
        );
    }

    // The upload completes, and a fresh replica ends equal to the uploader's.
    let cfg = sync_config(relay.lock().unwrap().as_ref().expect("relay running"));
    let report = rt.block_on(sync_now(&uploader, &cfg)).expect("final sync");
    assert_eq!(report.outbox_remaining, 0, "{report:?}");
    assert_eq!(uploader.outbox_len().unwrap(), 0);
    let fresh = Client::open(tmp.path().join("fresh.db")).expect("fresh");
    rt.block_on(sync_now(&fresh, &cfg)).expect("fresh sync");
    assert_eq!(
        fresh.with_store(|s| s.doc_count()).unwrap(),
        3 * 600,
        "every document"
    );
    assert_eq!(
        heads(&fresh),
        heads(&uploader),
        "same documents, same heads"
    );
    assert!(fresh.verify().unwrap().is_empty(), "fresh replica healthy");
    if let Some(r) = relay.lock().unwrap().take() {
        r.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Three `fieldsync` processes.

fn cli(data: &Path, args: &[&str]) -> Command {
    let mut c = procs::laptop_command(data).expect("the fieldsync binary");
    c.args(args);
    c
}

fn check(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "fieldsync {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn ok(data: &Path, args: &[&str]) -> String {
    check(args, cli(data, args).output().expect("run fieldsync"))
}

fn json(data: &Path, args: &[&str]) -> Value {
    let out = ok(data, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// Runs the same command in every replica at once (separate processes), each must succeed.
fn all_at_once(replicas: &[PathBuf], args: &[&str]) -> Vec<String> {
    let children: Vec<_> = replicas
        .iter()
        .map(|d| {
            cli(d, args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn fieldsync")
        })
        .collect();
    children
        .into_iter()
        .map(|c| check(args, c.wait_with_output().expect("wait for fieldsync")))
        .collect()
}

#[test]
fn three_cli_processes_with_concurrent_offline_edits_converge_through_a_relay_process() {
    let tmp = tempfile::tempdir().expect("tmp");
    let relay = start_relay(
        &tmp.path().join("relay"),
        "127.0.0.1:0".parse().expect("addr"),
    );
    let addr = relay.addr.to_string();
    let names = ["alice", "bob", "carol"];
    let replicas: Vec<PathBuf> = names.iter().map(|n| tmp.path().join(n)).collect();
    for (dir, name) in replicas.iter().zip(names) {
        ok(
            dir,
            &[
                "init",
                "--relay",
                &addr,
                "--pin",
                &relay.fingerprint,
                "--name",
                name,
            ],
        );
    }
    let shared = json(
        &replicas[0],
        &[
            "customer",
            "add",
            "--name",
            "Baotou Mining Co",
            "--scope",
            "north",
            "--json",
        ],
    )["id"]
        .as_str()
        .expect("id")
        .to_string();
    ok(&replicas[0], &["sync"]);
    all_at_once(&replicas[1..], &["sync"]);
    for dir in &replicas {
        assert_eq!(
            json(dir, &["customer", "show", &shared, "--json"])["name"],
            "Baotou Mining Co"
        );
    }

    // Offline, at the same time: everyone sets the same field, adds a phone and a customer.
    let edits: Vec<Vec<String>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            [
                "customer",
                "edit",
                &shared,
                "--industry",
                &format!("industry of {name}"),
                "--phone",
                &format!("+86 472 555 010{i}"),
            ]
            .map(String::from)
            .to_vec()
        })
        .collect();
    let children: Vec<_> = replicas
        .iter()
        .zip(&edits)
        .map(|(dir, args)| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(dir, &args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn edit")
        })
        .collect();
    for (c, args) in children.into_iter().zip(&edits) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check(&args, c.wait_with_output().expect("edit"));
    }
    for (dir, name) in replicas.iter().zip(names) {
        ok(
            dir,
            &[
                "customer",
                "add",
                "--name",
                &format!("{name}'s new customer"),
                "--scope",
                "north",
            ],
        );
    }

    // All three sync at once, twice: the first round uploads everything, the second
    // brings everyone the others' changes.
    all_at_once(&replicas, &["sync"]);
    all_at_once(&replicas, &["sync"]);

    let shown: Vec<Value> = replicas
        .iter()
        .map(|d| json(d, &["customer", "show", &shared, "--json"]))
        .collect();
    let lists: Vec<Value> = replicas
        .iter()
        .map(|d| json(d, &["customer", "list", "--json"]))
        .collect();
    let conflicts: Vec<Value> = replicas
        .iter()
        .map(|d| json(d, &["conflicts", "--json"]))
        .collect();
    for i in 1..replicas.len() {
        assert_eq!(
            shown[i], shown[0],
            "{} shows the customer as alice does",
            names[i]
        );
        assert_eq!(lists[i], lists[0], "{} lists what alice lists", names[i]);
        assert_eq!(
            conflicts[i], conflicts[0],
            "{} reports alice's conflicts",
            names[i]
        );
    }
    assert_eq!(lists[0].as_array().expect("array").len(), 4, "{}", lists[0]);
    let phones = shown[0].to_string();
    for i in 0..3 {
        assert!(
            phones.contains(&format!("472555010{i}")),
            "every phone survives: {phones}"
        );
    }
    let industry = conflicts[0]
        .as_array()
        .expect("array")
        .iter()
        .find(|c| c["id"] == shared.as_str() && c["path"] == "industry")
        .unwrap_or_else(|| panic!("the industry conflict is listed: {}", conflicts[0]));
    let values: BTreeSet<&str> = industry["values"]
        .as_array()
        .expect("values")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let expected: BTreeSet<String> = names.iter().map(|n| format!("industry of {n}")).collect();
    assert_eq!(
        values,
        expected.iter().map(String::as_str).collect(),
        "every concurrent value is listed"
    );
    assert_eq!(
        shown[0]["industry"], industry["values"][0],
        "the value shown is the conflict's first value"
    );
    relay.stop();
}

/// A relay killed and started again on the same data answers the laptop's next packet on the
/// old connection with a QUIC stateless reset the laptop accepts (its keys survive the
/// restart), so the laptop reconnects at once instead of waiting out the 30 s idle timeout.
#[test]
fn a_laptop_notices_a_restarted_relay_at_its_next_packet() {
    use fieldsync_client::sync::{BackoffConfig, SyncHandle, SyncState};
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("relay");
    let addr = procs::free_udp_addr().expect("a free port");
    let relay = start_relay(&data, addr);
    let mut cfg = SyncConfig::new(relay.addr.to_string(), relay.fingerprint.clone());
    // Idle far longer than the test waits: only a reset can end the old connection in time.
    cfg.idle_timeout = Duration::from_secs(120);
    cfg.keep_alive = Duration::from_millis(500);
    cfg.backoff = BackoffConfig {
        min: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    let laptop = Client::open(tmp.path().join("laptop.db")).expect("laptop");
    let rt = runtime();
    rt.block_on(async {
        let handle = SyncHandle::start(laptop.clone(), cfg);
        wait_for(&handle, "caught up", |h| {
            h.status().state == SyncState::CaughtUp
        })
        .await;
        assert_eq!(handle.status().connections, 1);
        relay.kill9();
        let relay = start_relay(&data, addr);
        let restarted = std::time::Instant::now();
        wait_for(&handle, "reconnected to the restarted relay", |h| {
            let s = h.status();
            s.connections >= 2 && s.state == SyncState::CaughtUp
        })
        .await;
        let took = restarted.elapsed();
        eprintln!("reconnected {took:?} after the restart");
        // The relay's idle timeout is 30 s: without an accepted reset the laptop would still
        // hold its dead connection.
        assert!(took < Duration::from_secs(15), "took {took:?}");
        handle.stop().await;
        drop(relay);
    });
}

/// Waits (up to 20 s, else fails saying `what`) until `ok` holds for the sync handle.
async fn wait_for(
    handle: &fieldsync_client::sync::SyncHandle,
    what: &str,
    ok: impl Fn(&fieldsync_client::sync::SyncHandle) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ok(handle) {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 20 s: {:?}",
            handle.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

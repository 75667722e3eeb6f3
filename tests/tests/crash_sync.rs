//! Crashes with real processes during sync (invariants I1, I2, I3, I4
//! and I10 of TESTING.md), and a full disk on the relay and on a client.
//!
//! A `fieldsync-relay serve` process and two `fieldsync sync` processes (an uploader `a` and a
//! downloader `b`) run against each other; after a seeded delay one or more of them is killed
//! with SIGKILL: during upload (the relay writing its log and its compacted document copies),
//! during download, and while `b` applies batches of many edits per document (every 16 changes
//! a document is compacted in the same transaction). Then, before anything is restarted:
//!
//! - I10: `PRAGMA integrity_check` is `ok` on the relay database and both replicas;
//! - I1: every change `a` ever wrote is still in `a`'s replica;
//! - I2: every change `a` no longer holds in its outbox (so the relay acknowledged it) is in
//!   the relay's change table — the oracle is `a`'s outbox as recorded before each round.
//!
//! After the last round everything is restarted and synced cleanly: both replicas and the relay
//! hold the same documents with the same heads and nothing is left in an outbox (I3, I4).
//!
//! `CRASH_SYNC_SEEDS=<n>` runs more seeds (default 2 seeds of 4 rounds each), `CRASH_SYNC_SEED=<n>`
//! starts from another seed.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fieldsync_client::sync::{SyncConfig, sync_now};
use fieldsync_client::{Client, CustomerEdit, CustomerField, DocId, NewCustomer};
use fieldsync_relay::{Relay, RelayConfig};
use fieldsync_tests::procs::{self, RelayProcess};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn fieldsync(data: &Path) -> Command {
    let mut c = Command::new(procs::binary(procs::CLIENT_BIN).expect("the fieldsync binary"));
    c.arg("--data")
        .arg(data)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn init(data: &Path, relay: &RelayProcess) {
    let out = fieldsync(data)
        .args(["init", "--relay", &relay.addr.to_string(), "--pin"])
        .arg(&relay.fingerprint)
        .stderr(Stdio::piped())
        .output()
        .expect("fieldsync init");
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for a child up to `limit`, then kills it.
fn wait_or_kill(child: &mut Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill9(child);
}

/// Local work on `a` between syncs: new customers, and many edits to a few of them so that
/// `b` compacts those documents while applying the download.
fn write_round(a: &Client, rng: &mut StdRng, round: u64, hot: &mut Vec<DocId>) {
    let new = rng.random_range(60..160);
    for i in 0..new {
        let id = a
            .customers()
            .create(NewCustomer {
                scope: "north".into(),
                name: format!("r{round} c{i}"),
                ..Default::default()
            })
            .expect("create");
        if hot.len() < 8 {
            hot.push(id.into());
        }
    }
    for (k, id) in hot.iter().enumerate() {
        for e in 0..rng.random_range(16..32) {
            a.customers()
                .edit(
                    (*id).into(),
                    CustomerEdit::Set(CustomerField::Industry, format!("r{round} h{k} e{e}")),
                )
                .expect("edit");
        }
    }
}

/// Every change `a` ever queued, by document (the oracle of I1 and I2).
fn record_outbox(a: &Client, log: &mut BTreeMap<support::Hash, DocId>) {
    let batch = a
        .with_store(|s| s.outbox_batch(0, usize::MAX >> 1, usize::MAX))
        .expect("outbox");
    for c in batch {
        log.insert(c.hash.0, c.doc_id);
    }
}

fn check_after_crash(
    seed: u64,
    round: u64,
    relay_db: &Path,
    replicas: &[PathBuf],
    log: &BTreeMap<support::Hash, DocId>,
) -> usize {
    let ctx = format!("seed {seed:#x} round {round}");
    assert_eq!(support::integrity(relay_db), "ok", "{ctx}: relay database");
    for r in replicas {
        assert_eq!(support::integrity(r), "ok", "{ctx}: {}", r.display());
    }
    let a = Client::open(&replicas[0]).expect("reopen a");
    let pending: std::collections::HashSet<support::Hash> =
        support::outbox_hashes(&a).into_iter().collect();
    // I1: every change written is still in a's replica.
    for (h, doc) in log {
        let present = a.with_store(|s| {
            s.automerge(*doc)
                .map(|mut d| d.get_change_by_hash(&automerge_hash(h)).is_some())
        });
        assert!(
            present.unwrap_or(false),
            "{ctx}: change {} of {doc} lost from a",
            hex(h)
        );
    }
    // I2: every change the relay acknowledged (gone from the outbox) is on the relay.
    let acked: Vec<support::Hash> = log
        .keys()
        .filter(|h| !pending.contains(*h))
        .copied()
        .collect();
    let lacking = support::relay_lacks(relay_db, &acked);
    assert!(
        lacking.is_empty(),
        "{ctx}: {} acknowledged changes missing on the relay",
        lacking.len()
    );
    let b = Client::open(&replicas[1]).expect("reopen b");
    assert!(b.verify().expect("verify b").is_empty(), "{ctx}: b healthy");
    acked.len()
}

fn automerge_hash(h: &support::Hash) -> automerge::ChangeHash {
    automerge::ChangeHash(*h)
}

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// One seed: rounds of write, sync, kill; then a clean finish and the convergence check.
fn run_seed(seed: u64, rounds: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let relay_dir = tmp.path().join("relay");
    let relay_db = relay_dir.join("relay.db");
    let addr = procs::free_udp_addr().unwrap();
    // Small batches, so a download is many committed steps.
    let mut relay = Some(
        RelayProcess::start(&relay_dir, addr, &["--open"])
            .unwrap_or_else(|e| panic!("relay: {e:#}")),
    );
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&da, relay.as_ref().unwrap());
    init(&db, relay.as_ref().unwrap());
    let replicas = [da.join("replica.db"), db.join("replica.db")];
    let mut log = BTreeMap::new();
    let mut hot = Vec::new();
    let mut kills = Vec::new();
    for round in 0..rounds {
        {
            let a = Client::open(&replicas[0]).unwrap();
            write_round(&a, &mut rng, round, &mut hot);
            record_outbox(&a, &mut log);
        }
        let mut sa = fieldsync(&da).arg("sync").spawn().unwrap();
        let mut sb = fieldsync(&db).arg("sync").spawn().unwrap();
        let delay = Duration::from_millis(rng.random_range(20..700));
        std::thread::sleep(delay);
        // Who dies: the relay, the uploader, the downloader, or all of them at once.
        let victim = rng.random_range(0..4u8);
        let what = ["relay", "uploader a", "downloader b", "relay, a and b"][victim as usize];
        kills.push(format!("{what} after {delay:?}"));
        if victim == 0 || victim == 3 {
            relay.take().unwrap().kill9();
        }
        if victim == 1 || victim == 3 {
            kill9(&mut sa);
        }
        if victim == 2 || victim == 3 {
            kill9(&mut sb);
        }
        // Survivors may finish; those stuck on a dead relay are killed too (one more crash).
        let grace = if relay.is_none() { 2 } else { 20 };
        wait_or_kill(&mut sa, Duration::from_secs(grace));
        wait_or_kill(&mut sb, Duration::from_secs(grace));
        let acked = check_after_crash(seed, round, &relay_db, &replicas, &log);
        eprintln!(
            "seed {seed:#x} round {round}: killed {what}; {acked}/{} changes acknowledged so far",
            log.len()
        );
        if relay.is_none() {
            relay = Some(
                RelayProcess::start(&relay_dir, addr, &["--open"])
                    .unwrap_or_else(|e| panic!("relay restart: {e:#}")),
            );
        }
    }
    // Heal: clean syncs until a and b are both caught up with everything.
    for who in [&da, &db, &da, &db] {
        let out = fieldsync(who)
            .arg("sync")
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "seed {seed:#x}: final sync: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (a, b) = (
        Client::open(&replicas[0]).unwrap(),
        Client::open(&replicas[1]).unwrap(),
    );
    if let Err(e) = support::converged(&[&a, &b], &relay_db) {
        panic!("seed {seed:#x} (kills: {kills:?}): not converged: {e}");
    }
    support::assert_same_content(&[&a, &b]);
    assert!(support::relay_lacks(&relay_db, &log.keys().copied().collect::<Vec<_>>()).is_empty());
    relay.take().unwrap().stop();
    assert_eq!(support::integrity(&relay_db), "ok");
}

#[test]
fn kill_9_of_relay_and_clients_during_upload_download_and_compaction() {
    let seeds: u64 = std::env::var("CRASH_SYNC_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let base: u64 = std::env::var("CRASH_SYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0c4a_5400);
    for seed in base..base + seeds {
        eprintln!("CRASH_SYNC_SEED={seed} (replay one seed with CRASH_SYNC_SEEDS=1)");
        run_seed(seed, 4);
    }
}

// ---------------------------------------------------------------------------------------------
// Full disk.

/// A 2 MiB tmpfs at `dir`, or why not (not root, no mount permission, not Linux).
fn mount_tmpfs(dir: &Path, size: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn remount(dir: &Path, size: &str) {
    let st = Command::new("mount")
        .args(["-o", &format!("remount,size={size}")])
        .arg(dir)
        .status()
        .expect("mount");
    assert!(st.success(), "remount {}", dir.display());
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn tmpfs_or_skip(dir: &Path, size: &str) -> Option<Mount> {
    match mount_tmpfs(dir, size) {
        Ok(()) => Some(Mount(dir.to_path_buf())),
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a small tmpfs to fill ({why}); run as root on Linux");
            None
        }
    }
}

fn new_customer(
    c: &Client,
    name: &str,
) -> Result<fieldsync_client::CustomerId, fieldsync_client::ClientError> {
    c.customers().create(NewCustomer {
        scope: "north".into(),
        name: name.into(),
        // Bulk, so the small disk fills after a few hundred documents.
        industry: Some("x".repeat(2_000)),
        ..Default::default()
    })
}

#[test]
fn a_full_disk_on_a_client_fails_writes_clearly_and_damages_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    let Some(_mount) = tmpfs_or_skip(&disk, "2m") else {
        return;
    };
    let path = disk.join("replica.db");
    let c = Client::open(&path).unwrap();
    let mut stored = Vec::new();
    let err = loop {
        match new_customer(&c, &format!("full {}", stored.len())) {
            Ok(id) => stored.push(id),
            Err(e) => break e,
        }
        assert!(stored.len() < 100_000, "the disk never filled");
    };
    eprintln!("client disk full after {} customers: {err}", stored.len());
    let fieldsync_client::ClientError::Store(store_err) = &err else {
        panic!("a store error, not {err:?}");
    };
    assert!(store_err.is_disk_full(), "{store_err:?}");
    assert!(
        err.to_string().contains("full"),
        "the message says so: {err}"
    );
    // Everything written before is intact and readable, the failed write left no trace.
    assert_eq!(
        c.with_store(|s| s.doc_count()).unwrap(),
        stored.len() as i64
    );
    for id in &stored {
        c.customers().get(*id).expect("readable");
    }
    assert!(c.verify().unwrap().is_empty());
    // More attempts keep failing cleanly.
    for i in 0..5 {
        assert!(new_customer(&c, &format!("still full {i}")).is_err());
    }
    // Space returns: writes go on in the same process, and a fresh open works.
    remount(&disk, "16m");
    let more = new_customer(&c, "after the cleanup").expect("writes work again");
    drop(c);
    let c = Client::open(&path).unwrap();
    assert_eq!(
        c.with_store(|s| s.doc_count()).unwrap(),
        stored.len() as i64 + 1
    );
    c.customers().get(more).unwrap();
    assert!(c.verify().unwrap().is_empty());
    assert_eq!(c.outbox_len().unwrap(), stored.len() as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_the_relay_refuses_uploads_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("relaydisk");
    let Some(_mount) = tmpfs_or_skip(&disk, "3m") else {
        return;
    };
    let relay = Relay::start(RelayConfig {
        data_dir: disk.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        open_enrollment: true,
        ..RelayConfig::default()
    })
    .await
    .unwrap();
    let relay_db = disk.join("relay.db");
    let mut cfg = SyncConfig::new(
        relay.local_addr().to_string(),
        relay.fingerprint().to_string(),
    );
    cfg.connect_timeout = Duration::from_secs(5);
    let a = Client::open(tmp.path().join("a.db")).unwrap();
    let b = Client::open(tmp.path().join("b.db")).unwrap();
    // Upload in rounds until the relay's disk is full.
    let mut failure = None;
    for round in 0..60 {
        for i in 0..40 {
            new_customer(&a, &format!("round {round} customer {i}")).unwrap();
        }
        match sync_now(&a, &cfg).await {
            Ok(_) => {}
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let err = failure.expect("the relay's 3 MiB disk fills");
    eprintln!("client sees: {err}");
    assert!(err.is_retryable(), "a full relay disk is temporary: {err}");
    assert!(
        err.to_string().contains("full"),
        "the client is told why: {err}"
    );
    let waiting = a.outbox_len().unwrap();
    assert!(waiting > 0);
    // The relay keeps serving: what it stored is intact and downloadable.
    let stored = support::relay_heads(&relay_db).len();
    assert_eq!(support::integrity(&relay_db), "ok");
    let rb = sync_now(&b, &cfg).await.expect("downloads still work");
    eprintln!(
        "relay disk full with {stored} documents; {waiting} changes waiting on a; b got {} items",
        rb.items_received
    );
    assert_eq!(b.with_store(|s| s.doc_count()).unwrap(), stored as i64);
    // Space returns: the waiting changes go through, nothing was lost on either side.
    remount(&disk, "64m");
    sync_now(&a, &cfg).await.expect("uploads work again");
    sync_now(&b, &cfg).await.unwrap();
    support::converged(&[&a, &b], &relay_db).expect("converged after the disk was freed");
    assert_eq!(support::integrity(&relay_db), "ok");
    relay.shutdown().await.unwrap();
}

//! Attachment transfers cut by `kill -9`, with real processes: a `fieldsync-relay serve`
//! process, and laptops that are `fieldsync` CLI processes in data directories of their own,
//! talking to the relay through the in-process UDP fault proxy with a bandwidth limit (so a
//! 3 MB transfer lasts long enough to be killed in the middle; the kill itself waits for the
//! progress the stores record, not for a time).
//!
//! What each test proves:
//!
//! - `kill_9_of_the_relay_mid_upload_resumes_from_its_stored_pieces`: the relay is killed
//!   while a laptop's `fieldsync sync` uploads an attachment. What the relay stored is intact
//!   (`PRAGMA integrity_check`, a prefix of pieces that are the file's own bytes), and once it
//!   is restarted on the same data directory the next `fieldsync sync` completes the upload by
//!   sending only the pieces the relay lacked: the laptop sends less than the rest of the file
//!   plus a tenth (a restart from the first piece would send the whole file again), and less
//!   than twice the file over both syncs. The relay's copy is then complete and byte for byte
//!   the file.
//! - `kill_9_of_a_laptop_mid_download_resumes_and_the_file_is_the_original`: a laptop's
//!   `fieldsync attachment get … --out FILE` is killed while it downloads. Its attachment store
//!   is intact and holds a prefix of the pieces, the output file does not exist (it appears
//!   only once complete and verified), and running the command again completes the download
//!   from the pieces held (the relay sends less than the rest plus a tenth), writing exactly
//!   the original bytes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use fieldsync_core::attachment::BlobHash;
use fieldsync_core::attachment::pieces::{PIECE_BYTES, piece_count};
use fieldsync_tests::faultproxy::{FaultConfig, FaultProxy, LinkConfig};
use fieldsync_tests::procs::{self, RelayProcess};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// The attachment: about 3 MB (46 pieces).
const FILE_BYTES: usize = 3_000_000;

/// Longest any one step may take before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(60);

/// The customer the file is attached to.
const CUSTOMER: &str = "Baotou Mining";

// ---------------------------------------------------------------------------------------------
// Processes.

fn fieldsync(data: &Path) -> Command {
    procs::laptop_command(data).expect("the fieldsync binary")
}

/// Runs a `fieldsync` command to its end (killed after `LIMIT`), returning its output.
fn run(data: &Path, args: &[&str]) -> Output {
    let mut child = fieldsync(data)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn fieldsync");
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().expect("fieldsync output")
}

/// Runs a `fieldsync` command that must succeed; returns its standard output.
fn ok(data: &Path, args: &[&str]) -> String {
    let out = run(data, args);
    assert!(
        out.status.success(),
        "fieldsync {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A laptop data directory set up to sync with the relay at `relay` pinned by `pin`.
fn laptop(data: &Path, relay: &str, pin: &str) {
    ok(data, &["init", "--relay", relay, "--pin", pin]);
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A multi-threaded runtime for the fault proxy, whose tasks run on its workers while the
/// test's thread drives the processes.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A 4 Mbit/s link both ways: a 3 MB transfer takes several seconds.
fn slow_link() -> FaultConfig {
    FaultConfig::symmetric(
        1,
        LinkConfig {
            bandwidth_bps: Some(4_000_000),
            queue_limit_bytes: 128 << 10,
            ..LinkConfig::default()
        },
    )
}

// ---------------------------------------------------------------------------------------------
// The stores, read from outside.

/// Bytes that do not compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Opens a SQLite file another process may be writing (or that a killed one left behind:
/// read-write, so that its write-ahead log is recovered).
fn open(path: &Path) -> Connection {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    c.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    c
}

fn integrity(path: &Path) -> String {
    open(path)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check")
}

/// The relay's attachment store.
fn relay_blobs(relay_dir: &Path) -> PathBuf {
    relay_dir.join(fieldsync_relay::store::BLOBS_FILE)
}

/// A laptop's attachment store.
fn laptop_blobs(data: &Path) -> PathBuf {
    data.join("replica.attachments.db")
}

/// Pieces of `hash` the relay stores, and whether the upload is complete.
fn relay_stored(relay_dir: &Path, hash: BlobHash) -> Option<(u32, bool)> {
    let path = relay_blobs(relay_dir);
    if !path.exists() {
        return None;
    }
    open(&path)
        .query_row(
            "SELECT stored, complete FROM blobs WHERE hash = ?1",
            [&hash.0[..]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .expect("relay attachment row")
}

/// The bytes of the pieces of `hash` on the relay, in order, and how many pieces there are.
fn relay_bytes(relay_dir: &Path, hash: BlobHash) -> (Vec<u8>, u32) {
    let c = open(&relay_blobs(relay_dir));
    let mut st = c
        .prepare("SELECT idx, data FROM pieces WHERE hash = ?1 ORDER BY idx")
        .expect("prepare");
    let rows: Vec<(u32, Vec<u8>)> = st
        .query_map([&hash.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("pieces")
        .collect::<Result<_, _>>()
        .expect("pieces");
    let indices: Vec<u32> = rows.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        indices,
        (0..rows.len() as u32).collect::<Vec<_>>(),
        "the relay's pieces are a prefix"
    );
    (
        rows.iter().flat_map(|(_, d)| d.clone()).collect(),
        rows.len() as u32,
    )
}

/// A laptop's record of `hash`: pieces held, complete, pieces the relay confirmed.
fn laptop_blob(data: &Path, hash: BlobHash) -> Option<(u32, bool, u32)> {
    let path = laptop_blobs(data);
    if !path.exists() {
        return None;
    }
    open(&path)
        .query_row(
            "SELECT have, complete, uploaded FROM blobs WHERE hash = ?1",
            [&hash.0[..]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .expect("laptop attachment row")
}

/// Polls `done` until it holds; fails the test after `LIMIT` (or when `alive` says the
/// process that should get there ended first).
fn wait_for(what: &str, mut alive: impl FnMut() -> bool, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(alive(), "the process ended before {what}");
        assert!(Instant::now() < deadline, "{what}: not within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A laptop with a customer and the file attached to it; returns the file's bytes and hash.
fn attach(data: &Path, dir: &Path) -> (Vec<u8>, BlobHash) {
    ok(
        data,
        &["customer", "add", "--name", CUSTOMER, "--scope", "north"],
    );
    let bytes = noise(FILE_BYTES, 7);
    let file = dir.join("pump-manual.pdf");
    std::fs::write(&file, &bytes).expect("write the file");
    let shown = ok(
        data,
        &[
            "customer",
            "attach",
            CUSTOMER,
            file.to_str().expect("utf-8 path"),
            "--json",
        ],
    );
    let hash = BlobHash::of(&bytes);
    assert!(shown.contains("pump-manual.pdf"), "{shown}");
    (bytes, hash)
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn kill_9_of_the_relay_mid_upload_resumes_from_its_stored_pieces() {
    let rt = runtime();
    let tmp = tempfile::tempdir().expect("tmp");
    let relay_dir = tmp.path().join("relay");
    let addr = procs::free_udp_addr().expect("a free port");
    let relay = RelayProcess::start(&relay_dir, addr, &["--open"])
        .unwrap_or_else(|e| panic!("relay: {e:#}"));
    let pin = relay.fingerprint.clone();
    let proxy = rt
        .block_on(FaultProxy::start(
            "127.0.0.1:0".parse().expect("addr"),
            addr,
            slow_link(),
        ))
        .expect("fault proxy");
    let data = tmp.path().join("laptop");
    laptop(&data, &proxy.local_addr().to_string(), &pin);
    let (bytes, hash) = attach(&data, tmp.path());
    let size = bytes.len() as u64;
    let count = piece_count(size);

    // The upload runs; the relay is killed once it durably holds a third of the pieces. The
    // laptop's sync, stuck on a dead relay, is killed too.
    let mut sync = fieldsync(&data)
        .arg("sync")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sync");
    wait_for(
        "the relay stored a third of the pieces",
        || matches!(sync.try_wait(), Ok(None)),
        || relay_stored(&relay_dir, hash).is_some_and(|(s, _)| s >= count / 3),
    );
    relay.kill9();
    kill9(&mut sync);

    assert_eq!(integrity(&relay_blobs(&relay_dir)), "ok");
    assert_eq!(integrity(&laptop_blobs(&data)), "ok");
    let (at_kill, complete) = relay_stored(&relay_dir, hash).expect("the upload's row");
    assert!(
        !complete && at_kill >= count / 3 && at_kill < count,
        "killed mid-upload: {at_kill} of {count} pieces stored, complete: {complete}"
    );
    let (held, pieces) = relay_bytes(&relay_dir, hash);
    assert_eq!(pieces, at_kill, "the count is the pieces stored");
    assert!(
        held == bytes[..held.len()],
        "the stored pieces are the file's first bytes"
    );
    let (_, _, confirmed) = laptop_blob(&data, hash).expect("the laptop's row");
    assert!(
        confirmed <= at_kill,
        "the laptop records no more than the relay stored ({confirmed} > {at_kill})"
    );

    // Restarted on the same data directory, the relay takes the rest.
    let relay = RelayProcess::start(&relay_dir, addr, &["--open"])
        .unwrap_or_else(|e| panic!("relay restart: {e:#}"));
    assert_eq!(relay.fingerprint, pin, "the same relay");
    let before = proxy.stats().up.bytes_forwarded;
    ok(&data, &["sync"]);
    let resumed = proxy.stats().up.bytes_forwarded - before;
    let total = proxy.stats().up.bytes_forwarded;

    assert_eq!(relay_stored(&relay_dir, hash), Some((count, true)));
    let (held, _) = relay_bytes(&relay_dir, hash);
    assert!(held == bytes, "the relay's copy is the file");
    assert_eq!(
        laptop_blob(&data, hash).map(|(_, _, up)| up),
        Some(count),
        "the laptop knows the upload is complete"
    );
    let rest = size - u64::from(at_kill) * PIECE_BYTES;
    assert!(
        resumed < rest + size / 10,
        "the second sync sent {resumed} bytes for the {rest} the relay lacked: it did not \
         resume from the {at_kill} pieces stored"
    );
    assert!(
        total < 2 * size,
        "{total} bytes sent over both syncs for a file of {size}"
    );
    eprintln!(
        "relay killed at {at_kill}/{count} pieces (laptop had recorded {confirmed}); the \
         second sync sent {resumed} bytes for {rest} left; {total} in all for {size}; link: {}",
        proxy.stats().up
    );
    relay.stop();
    rt.block_on(proxy.shutdown());
}

#[test]
fn kill_9_of_a_laptop_mid_download_resumes_and_the_file_is_the_original() {
    let rt = runtime();
    let tmp = tempfile::tempdir().expect("tmp");
    let relay_dir = tmp.path().join("relay");
    let addr = procs::free_udp_addr().expect("a free port");
    let relay = RelayProcess::start(&relay_dir, addr, &["--open"])
        .unwrap_or_else(|e| panic!("relay: {e:#}"));
    let proxy = rt
        .block_on(FaultProxy::start(
            "127.0.0.1:0".parse().expect("addr"),
            addr,
            slow_link(),
        ))
        .expect("fault proxy");

    // Laptop a attaches the file and uploads it straight to the relay.
    let a = tmp.path().join("a");
    laptop(&a, &addr.to_string(), &relay.fingerprint);
    let (bytes, hash) = attach(&a, tmp.path());
    let size = bytes.len() as u64;
    let count = piece_count(size);
    ok(&a, &["sync"]);
    assert_eq!(relay_stored(&relay_dir, hash), Some((count, true)));

    // Laptop b, behind the slow link, gets the customer, then the file; it is killed once it
    // holds a third of the pieces.
    let b = tmp.path().join("b");
    laptop(&b, &proxy.local_addr().to_string(), &relay.fingerprint);
    ok(&b, &["sync"]);
    let out = tmp.path().join("manual-copy.pdf");
    let hex = hash.to_string();
    let get = [
        "attachment",
        "get",
        CUSTOMER,
        hex.as_str(),
        "--out",
        out.to_str().expect("utf-8 path"),
    ];
    let mut child = fieldsync(&b)
        .args(get)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn get");
    wait_for(
        "the laptop held a third of the pieces",
        || matches!(child.try_wait(), Ok(None)),
        || laptop_blob(&b, hash).is_some_and(|(have, _, _)| have >= count / 3),
    );
    kill9(&mut child);

    assert_eq!(integrity(&laptop_blobs(&b)), "ok");
    let (at_kill, complete, _) = laptop_blob(&b, hash).expect("the download's row");
    assert!(
        !complete && at_kill >= count / 3 && at_kill < count,
        "killed mid-download: {at_kill} of {count} pieces held, complete: {complete}"
    );
    assert!(
        !out.exists(),
        "no output file before the download is complete"
    );

    // Run again, it resumes from the pieces held and writes the original bytes.
    let before = proxy.stats().down.bytes_forwarded;
    let shown = ok(&b, &get);
    let received = proxy.stats().down.bytes_forwarded - before;
    assert!(shown.contains("Saved"), "{shown}");
    let copy = std::fs::read(&out).expect("the output file");
    assert!(
        copy == bytes,
        "the file written is the original ({} bytes, hash {})",
        copy.len(),
        BlobHash::of(&copy)
    );
    assert_eq!(
        laptop_blob(&b, hash).map(|(have, complete, _)| (have, complete)),
        Some((count, true))
    );
    let rest = size - u64::from(at_kill) * PIECE_BYTES;
    assert!(
        received < rest + size / 10,
        "the second run received {received} bytes for the {rest} the laptop lacked: it did \
         not resume from the {at_kill} pieces held"
    );
    eprintln!(
        "laptop killed at {at_kill}/{count} pieces; the second run received {received} bytes \
         for {rest} left; link: {}",
        proxy.stats().down
    );
    relay.stop();
    rt.block_on(proxy.shutdown());
}

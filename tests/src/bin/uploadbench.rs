//! `fieldsync-uploadbench`: what the relay spends storing uploads, without the network.
//! Prints a table; asserts nothing about time.
//!
//! ```sh
//! cargo run --release -p fieldsync-tests --bin fieldsync-uploadbench             # full sizes
//! cargo run --release -p fieldsync-tests --bin fieldsync-uploadbench -- --quick  # a tenth
//! cargo run --release -p fieldsync-tests --bin fieldsync-uploadbench -- --rounds 5  # for a profiler
//! ```
//!
//! A client replica is populated as in `fieldsync-syncbench` (1,000 customers, 7,000 visits and
//! 2,000 quotes) and uploads straight into a [`SqliteRelayStore`] in this process, in the
//! batches a sync session makes (`ClientConfig::upload_changes` changes or
//! `upload_bytes`, one relay transaction each), acknowledging each batch in the replica as a
//! session does. It then makes 5,000 offline edits and uploads them: once spread round robin
//! over the edited documents (every batch touches every one of them: the order of case (d)
//! of the sync benchmark), once grouped by document. The relay time is
//! `SqliteRelayStore::append_changes` alone: validation, the log, the documents' snapshots
//! and the commit — the relay's share of case (d) without QUIC, framing and compression.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fieldsync_client::Client;
use fieldsync_core::protocol::{ClientConfig, DeviceInfo, Outcome, UploadChange};
use fieldsync_relay::{RelayStoreOptions, SqliteRelayStore};
use fieldsync_tests::workload::{EditOrder, offline_edits_in, populate};

// The allocator of the `fieldsync-relay` binary and its options, so that the relay's share is
// measured as it runs there.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
/// jemalloc's options, as the relay binary sets them.
pub static malloc_conf: Option<&'static std::ffi::c_char> = Some(
    // SAFETY: a pointer to the first byte of a NUL-terminated static string, as jemalloc reads it.
    unsafe { &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() },
);

/// What uploading a replica's outbox took.
#[derive(Default)]
struct Upload {
    changes: usize,
    batches: usize,
    relay: Duration,
}

/// Uploads the whole outbox in session-sized batches and acknowledges each in the replica.
fn upload(
    client: &Client,
    relay: &SqliteRelayStore,
    device: &DeviceInfo,
    cfg: &ClientConfig,
) -> anyhow::Result<Upload> {
    let mut up = Upload::default();
    let mut after = 0;
    loop {
        let batch =
            client.with_store(|s| s.outbox_batch(after, cfg.upload_changes, cfg.upload_bytes))?;
        let Some(last) = batch.last() else {
            break;
        };
        after = last.seq;
        let changes: Vec<UploadChange> = batch
            .iter()
            .map(|c| UploadChange {
                doc_id: c.doc_id,
                bytes: c.bytes.clone(),
            })
            .collect();
        let started = Instant::now();
        let outcomes = relay.append_changes(device, &changes, false)?;
        up.relay += started.elapsed();
        if let Some(Outcome::Refused(r) | Outcome::Malformed(r)) = outcomes
            .iter()
            .find(|o| matches!(o, Outcome::Refused(_) | Outcome::Malformed(_)))
        {
            bail!("the relay refused a change: {}", r.reason);
        }
        let hashes: Vec<_> = batch.iter().map(|c| c.hash).collect();
        client.with_store(|s| s.transaction(|tx| tx.ack(&hashes)))?;
        up.changes += batch.len();
        up.batches += 1;
    }
    Ok(up)
}

/// [`upload`] for edits: its own frame in a profile, apart from the population's upload.
#[inline(never)]
fn upload_edits(
    client: &Client,
    relay: &SqliteRelayStore,
    device: &DeviceInfo,
    cfg: &ClientConfig,
) -> anyhow::Result<Upload> {
    // Not a tail call, so that the frame stays.
    std::hint::black_box(upload(client, relay, device, std::hint::black_box(cfg)))
}

fn run(quick: bool, rounds: usize, doc_cache: Option<usize>) -> anyhow::Result<()> {
    let scale = if quick { 10 } else { 1 };
    let (customers, visits, quotes) = (1_000 / scale, 7_000 / scale, 2_000 / scale);
    let edits = 5_000 / scale;
    let tmp = tempfile::tempdir()?;
    let client = Client::open(tmp.path().join("client.db"))?;
    let mut opts = RelayStoreOptions {
        // One device uploads the whole population: past any daily quota, which is not what
        // is measured here.
        quota: fieldsync_relay::store::Quota {
            new_documents_per_day: u64::MAX,
            bytes_per_day: u64::MAX,
        },
        ..RelayStoreOptions::default()
    };
    if let Some(n) = doc_cache {
        opts.cache_docs = n;
    }
    let cache_docs = opts.cache_docs;
    let relay = SqliteRelayStore::open(tmp.path().join("relay.db"), opts)?;
    let device = DeviceInfo {
        device_id: client.device_id(),
        name: "uploadbench".into(),
        role: client.identity()?.role,
        scopes: vec!["*".into()],
    };
    let cfg = ClientConfig::default();
    let mut rows: Vec<(String, Upload)> = Vec::new();

    eprintln!("populating {} documents …", customers + visits + quotes);
    populate(&client, customers, visits, quotes)?;
    let up = upload(&client, &relay, &device, &cfg).context("uploading the population")?;
    rows.push((
        format!("population: {} new documents", customers + visits + quotes),
        up,
    ));
    let mut round = 0;
    for (order, what) in [
        (EditOrder::Spread, "spread round robin"),
        (EditOrder::Grouped, "grouped by document"),
    ] {
        let n = if order == EditOrder::Spread {
            rounds.max(1)
        } else {
            1
        };
        for r in 0..n {
            eprintln!("{edits} offline edits, {what} …");
            offline_edits_in(&client, edits, order, round)?;
            round += 1;
            let up = upload_edits(&client, &relay, &device, &cfg)
                .with_context(|| format!("uploading {edits} edits ({what})"))?;
            let label = if n > 1 {
                format!("{edits} offline edits, {what} (round {})", r + 1)
            } else {
                format!("{edits} offline edits, {what}")
            };
            rows.push((label, up));
        }
    }

    println!("| upload | changes | batches | relay time | per change |");
    println!("|---|---|---|---|---|");
    for (what, up) in &rows {
        println!(
            "| {what} | {} | {} | {:.3} s | {:.0} µs |",
            up.changes,
            up.batches,
            up.relay.as_secs_f64(),
            up.relay.as_secs_f64() * 1e6 / up.changes.max(1) as f64
        );
    }
    println!(
        "\nbatches of at most {} changes or {} KiB (the sync session's defaults); relay doc cache {} documents",
        cfg.upload_changes,
        cfg.upload_bytes >> 10,
        cache_docs
    );
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM:"))
    {
        println!(
            "peak memory of this process (client and relay): {} MiB",
            hwm.split_whitespace()
                .nth(1)
                .and_then(|k| k.parse::<u64>().ok())
                .unwrap_or(0)
                >> 10
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut quick = false;
    let mut rounds = 1;
    let mut doc_cache = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--rounds" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => rounds = n,
                None => {
                    eprintln!("--rounds needs a number");
                    return ExitCode::FAILURE;
                }
            },
            "--doc-cache" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => doc_cache = Some(n),
                _ => {
                    eprintln!("--doc-cache needs a positive number");
                    return ExitCode::FAILURE;
                }
            },
            "-h" | "--help" => {
                println!(
                    "usage: fieldsync-uploadbench [--quick] [--rounds N] [--doc-cache N]\n\
                     The relay's cost of storing uploads, in this process: prints a table,\n\
                     asserts nothing about time. --rounds repeats the spread edits (for a\n\
                     profiler); --doc-cache sets the relay's document cache."
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?} (try --help)");
                return ExitCode::FAILURE;
            }
        }
    }
    match run(quick, rounds, doc_cache) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

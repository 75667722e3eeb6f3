//! `fieldsync-load`: many concurrent clients against one relay on 127.0.0.1.
//!
//! Starts a `fieldsync-relay serve` process, enrols `--clients` devices spread over `--scopes`
//! territories (each device sees one scope, as reps do), opens one replica per device and
//! runs a [`SyncHandle`] for each — one QUIC connection per client, all from this process.
//! Every client owns one customer and edits it every `--edit-every-ms` on average for
//! `--duration` seconds; every other client of the same scope receives the edit as a live
//! push. Then editing stops and the tool waits for every replica to converge.
//!
//! It prints a report, not a verdict: edits and deliveries per second, p50/p99/max time from
//! an edit on one client to its arrival at each other client of the scope (arrival is seen
//! through the replica's change events, checked every 10 ms), the relay process's peak memory
//! (`VmHWM`), and how many clients converged. The exit code is non-zero only if some client
//! did not converge.
//!
//! `cargo run --release -p fieldsync-tests --bin fieldsync-load -- [--quick]`

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fieldsync_client::fieldsync_core::store::{Durability, StoreOptions};
use fieldsync_client::sync::{BackoffConfig, SyncConfig, SyncHandle, SyncState};
use fieldsync_client::{Client, CustomerEdit, CustomerField, DocId, NewCustomer, Origin, Role};
use fieldsync_relay::{RelayStoreOptions, SqliteRelayStore};
use fieldsync_tests::procs::{self, RelayProcess};
use rand::{RngExt, SeedableRng};

#[derive(Parser, Debug)]
#[command(
    name = "fieldsync-load",
    about = "Concurrent clients against one relay: a load report"
)]
struct Cli {
    /// Concurrent clients (one QUIC connection each).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Scopes the clients are spread over; an edit reaches the other clients of its scope.
    #[arg(long, default_value_t = 50)]
    scopes: usize,
    /// Seconds of editing.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// 10 seconds of editing (overrides --duration).
    #[arg(long)]
    quick: bool,
    /// Mean time between two edits of one client, in ms (uniform in [0.5, 1.5] × this).
    #[arg(long, default_value_t = 10_000)]
    edit_every_ms: u64,
    /// Seconds to wait for convergence after editing stops.
    #[arg(long, default_value_t = 120)]
    converge_timeout: u64,
    /// Seed for the edit timing.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// One load client.
struct Rep {
    client: Client,
    scope: usize,
    doc: DocId,
    /// When each of its edits was made (index = edit number - 1).
    sent: Mutex<Vec<Instant>>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let duration = Duration::from_secs(if cli.quick { 10 } else { cli.duration });
    if cli.clients < 2 || cli.scopes == 0 {
        bail!("need at least 2 clients and 1 scope");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli, duration))
}

async fn run(cli: Cli, duration: Duration) -> anyhow::Result<()> {
    let shm = std::path::Path::new("/dev/shm");
    // Replicas on tmpfs when there is one: 1,000 SQLite files are set up in seconds.
    let tmp = if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    };
    let relay_dir = tmp.path().join("relay");
    let relay_disk = tempfile::tempdir()?; // the relay's database on the real disk
    let relay_data = relay_disk.path().join("relay");
    std::fs::create_dir_all(&relay_data)?;
    let config = relay_disk.path().join("relay.toml");
    std::fs::write(&config, format!("max_connections = {}\n", cli.clients + 64))?;
    println!(
        "fieldsync-load: {} clients in {} scopes, one edit per client every ~{} ms for {:?}",
        cli.clients, cli.scopes, cli.edit_every_ms, duration
    );
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits")
        && let Some(line) = limits.lines().find(|l| l.starts_with("Max open files"))
    {
        println!(
            "  {}",
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }

    // Replicas and enrolment (before the relay runs, straight into its database).
    let t = Instant::now();
    let store = SqliteRelayStore::open(relay_data.join("relay.db"), RelayStoreOptions::default())?;
    std::fs::create_dir_all(&relay_dir)?;
    let mut reps = Vec::with_capacity(cli.clients);
    let mut credentials = Vec::with_capacity(cli.clients);
    for i in 0..cli.clients {
        let client = Client::open_with(
            relay_dir.join(format!("c{i}.db")),
            StoreOptions {
                // The rep side of a load test measures the relay, not 1,000 laptops' fsyncs
                // on one disk: commits survive a process crash, not a power cut.
                durability: Durability::Normal,
                ..StoreOptions::default()
            },
        )?;
        let scope = i % cli.scopes;
        let e = store.enrol_device(
            Some(client.device_id()),
            &format!("load {i}"),
            Role::Rep,
            &[format!("s{scope}")],
        )?;
        credentials.push(e.secret);
        let doc = client.customers().create(NewCustomer {
            scope: format!("s{scope}"),
            name: format!("customer of client {i}"),
            ..Default::default()
        })?;
        reps.push(Arc::new(Rep {
            client,
            scope,
            doc: doc.into(),
            sent: Mutex::new(Vec::new()),
        }));
    }
    drop(store);
    println!(
        "  set up {} replicas and enrolments in {:.1?}",
        cli.clients,
        t.elapsed()
    );

    let relay = RelayProcess::start(
        &relay_data,
        procs::free_udp_addr()?,
        &["--config", config.to_str().context("utf-8 path")?],
    )?;
    println!("  relay pid {} on {}", relay.pid(), relay.addr);

    // Connect everyone (staggered over ~5 s, like laptops waking up).
    let t = Instant::now();
    let mut handles = Vec::with_capacity(cli.clients);
    let stagger = Duration::from_micros(5_000_000 / cli.clients as u64);
    for (rep, secret) in reps.iter().zip(&credentials) {
        let mut cfg = SyncConfig::new(relay.addr.to_string(), relay.fingerprint.clone());
        cfg.credential = Some(secret.clone());
        cfg.connect_timeout = Duration::from_secs(30);
        cfg.response_timeout = Duration::from_secs(120);
        cfg.idle_timeout = Duration::from_secs(60);
        cfg.keep_alive = Duration::from_secs(10);
        cfg.backoff = BackoffConfig {
            min: Duration::from_millis(500),
            max: Duration::from_secs(10),
        };
        handles.push(SyncHandle::start(rep.client.clone(), cfg));
        tokio::time::sleep(stagger).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let up = handles
            .iter()
            .filter(|h| h.status().last_sync_finished_at.is_some())
            .count();
        if up == handles.len() {
            break;
        }
        if Instant::now() > deadline {
            println!(
                "  only {up}/{} clients caught up after 120 s; going on",
                handles.len()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "  {} connections up and caught up in {:.1?}",
        handles.len(),
        t.elapsed()
    );

    // Arrival watcher: reads each replica's change events, records edit → arrival latency.
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = {
        let reps = reps.clone();
        let latencies = latencies.clone();
        let stop = stop_watch.clone();
        let by_doc: BTreeMap<DocId, usize> =
            reps.iter().enumerate().map(|(i, r)| (r.doc, i)).collect();
        let events: Vec<_> = reps.iter().map(|r| r.client.subscribe()).collect();
        std::thread::spawn(move || {
            // seen[receiver][author's index in by_doc order] = last edit number seen.
            let mut seen: Vec<BTreeMap<usize, usize>> = vec![BTreeMap::new(); reps.len()];
            while !stop.load(Ordering::Relaxed) {
                for (i, rx) in events.iter().enumerate() {
                    let mut docs = Vec::new();
                    while let Ok(ev) = rx.try_recv() {
                        if ev.origin == Origin::Remote && !docs.contains(&ev.id) {
                            docs.push(ev.id);
                        }
                    }
                    for d in docs {
                        let Some(&author) = by_doc.get(&d) else {
                            continue;
                        };
                        let Ok(c) = reps[i].client.customers().get(d.into()) else {
                            continue;
                        };
                        let Some(n) = c
                            .industry
                            .as_deref()
                            .and_then(|v| v.rsplit(':').next())
                            .and_then(|v| v.parse::<usize>().ok())
                        else {
                            continue;
                        };
                        let now = Instant::now();
                        let last = seen[i].entry(author).or_insert(0);
                        if n > *last {
                            let sent = reps[author].sent.lock().unwrap_or_else(|p| p.into_inner());
                            let mut l = latencies.lock().unwrap_or_else(|p| p.into_inner());
                            for k in *last + 1..=n {
                                if let Some(t) = sent.get(k - 1) {
                                    l.push(now.saturating_duration_since(*t));
                                }
                            }
                            *last = n;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    // Editing.
    let edits = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, rep) in reps.iter().enumerate() {
        let rep = rep.clone();
        let (edits, failures) = (edits.clone(), failures.clone());
        let mean = cli.edit_every_ms;
        let seed = cli.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            // First edit at a random phase so edits spread evenly.
            let mut next = start + Duration::from_millis(rng.random_range(0..mean.max(1)));
            let mut n = 0usize;
            while next < start + duration {
                tokio::time::sleep_until(next.into()).await;
                n += 1;
                let r2 = rep.clone();
                let ok = tokio::task::spawn_blocking(move || {
                    // Record the time first: the push may start as soon as the edit commits.
                    r2.sent
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Instant::now());
                    r2.client.customers().edit(
                        r2.doc.into(),
                        CustomerEdit::Set(CustomerField::Industry, format!("{i}:{n}")),
                    )
                })
                .await;
                match ok {
                    Ok(Ok(())) => {
                        edits.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        n -= 1;
                        rep.sent.lock().unwrap_or_else(|p| p.into_inner()).pop();
                    }
                }
                next += Duration::from_millis(rng.random_range(mean / 2..=mean * 3 / 2));
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let edit_secs = start.elapsed().as_secs_f64();
    let total_edits = edits.load(Ordering::Relaxed);

    // Convergence: every replica holds exactly its scope's customers with the authors' heads,
    // and every outbox is empty.
    let t = Instant::now();
    let expected: Vec<BTreeMap<DocId, Vec<[u8; 32]>>> = {
        let mut per_scope = vec![BTreeMap::new(); cli.scopes];
        for r in &reps {
            let mut h: Vec<[u8; 32]> = r
                .client
                .with_store(|s| s.heads(r.doc))?
                .into_iter()
                .map(|x| x.0)
                .collect();
            h.sort();
            per_scope[r.scope].insert(r.doc, h);
        }
        per_scope
    };
    let converged = |r: &Rep| -> bool {
        let Ok(all) = r.client.with_store(|s| s.all_heads()) else {
            return false;
        };
        let mine: BTreeMap<DocId, Vec<[u8; 32]>> = all
            .into_iter()
            .map(|(id, h)| {
                let mut h: Vec<[u8; 32]> = h.into_iter().map(|x| x.0).collect();
                h.sort();
                (id, h)
            })
            .collect();
        r.client.outbox_len().is_ok_and(|n| n == 0) && mine == expected[r.scope]
    };
    let mut done = vec![false; reps.len()];
    let deadline = Instant::now() + Duration::from_secs(cli.converge_timeout);
    while Instant::now() < deadline {
        for (i, r) in reps.iter().enumerate() {
            if !done[i] {
                done[i] = converged(r);
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converge_time = t.elapsed();
    let n_converged = done.iter().filter(|d| **d).count();
    // Let the last arrivals be recorded, then stop the watcher.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_watch.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    let relay_hwm = procs::vm_hwm_kib(relay.pid());
    let self_hwm = procs::vm_hwm_kib(std::process::id());
    let (mut up, mut down, mut conns, mut caught_up) = (0u64, 0u64, 0u64, 0usize);
    for h in &handles {
        let s = h.status();
        up += s.bytes_sent;
        down += s.bytes_received;
        conns += s.connections;
        caught_up += usize::from(s.state == SyncState::CaughtUp);
    }
    let mut lat = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    lat.sort();
    let pct = |p: f64| -> String {
        if lat.is_empty() {
            return "-".into();
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        format!("{:.0} ms", lat[i].as_secs_f64() * 1000.0)
    };
    let per_scope = cli.clients as f64 / cli.scopes as f64;
    let expected_deliveries = total_edits as f64 * (per_scope - 1.0);

    println!();
    println!("## fieldsync-load report");
    println!(
        "clients                 {} ({} scopes, ~{per_scope:.0} clients each), one process, one QUIC connection each",
        cli.clients, cli.scopes
    );
    println!("editing                 {edit_secs:.1} s");
    println!(
        "edits                   {total_edits} ({:.1}/s), {} failed",
        total_edits as f64 / edit_secs,
        failures.load(Ordering::Relaxed)
    );
    println!(
        "deliveries              {} of ~{expected_deliveries:.0} expected ({:.1}/s during editing)",
        lat.len(),
        lat.len() as f64 / edit_secs
    );
    println!(
        "edit → arrival          p50 {}  p99 {}  max {}  (10 ms sampling)",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "wire bytes (clients)    {:.1} MiB up, {:.1} MiB down",
        up as f64 / 1048576.0,
        down as f64 / 1048576.0
    );
    println!("connections made        {conns} (1 per client = no reconnects)");
    println!(
        "relay peak memory       {}",
        relay_hwm.map_or("unknown".into(), |k| format!(
            "{:.1} MiB VmHWM",
            k as f64 / 1024.0
        ))
    );
    println!(
        "load process memory     {}",
        self_hwm.map_or("unknown".into(), |k| format!(
            "{:.1} MiB VmHWM",
            k as f64 / 1024.0
        ))
    );
    println!(
        "converged               {n_converged}/{} clients in {converge_time:.1?} after editing stopped; {caught_up} live and caught up",
        reps.len()
    );
    for h in handles {
        drop(h);
    }
    relay.stop();
    if n_converged != reps.len() {
        bail!("{} clients did not converge", reps.len() - n_converged);
    }
    Ok(())
}

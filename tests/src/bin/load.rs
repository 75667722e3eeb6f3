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
//! through the replica's change events, checked every 10 ms), the same per 10 s window of the
//! run (does latency grow with run length?), the CPU time the relay and the load process
//! spent (per accepted edit and per delivery), the relay's memory, and how many clients
//! converged. The exit code is non-zero only if some client did not converge.
//!
//! Scenarios on top of the steady load:
//! - `--idle N`: N more devices connect and stay idle (their scope gets no edits); the relay's
//!   resident memory before and after gives the memory per idle connection.
//! - `--restart-after S`: S seconds into the editing the relay is killed (SIGKILL) and started
//!   again on the same data and address; every client reconnects at once. Reports how long
//!   until every client is connected and caught up again.
//! - `--pg URL --nodes N`: N relay processes sharing one PostgreSQL database (a scratch
//!   database made on the server at URL and dropped after), clients spread over them; an
//!   edit reaches the clients of other nodes through the database's notifications.
//!
//! `cargo run --release -p fieldsync-tests --bin fieldsync-load -- [--quick]` (raise the open
//! file limit first: `ulimit -n 20000`)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fieldsync_client::fieldsync_core::store::{Durability, StoreOptions};
use fieldsync_client::sync::{SyncConfig, SyncHandle, SyncState};
use fieldsync_client::{Client, CustomerEdit, CustomerField, DocId, NewCustomer, Origin, Role};
use fieldsync_relay::store::postgres::ScratchDatabase;
use fieldsync_relay::tls::{CERT_FILE, KEY_FILE};
use fieldsync_relay::{PgRelayStore, RelayStore, RelayStoreOptions, SqliteRelayStore};
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
    /// Idle devices that connect too (in a scope of their own, with no edits).
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Kill and restart the relay this many seconds into the editing (node 1 of several).
    #[arg(long)]
    restart_after: Option<u64>,
    /// PostgreSQL server for the relay's store (a scratch database is made on it); default:
    /// the embedded SQLite file.
    #[arg(long)]
    pg: Option<String>,
    /// Relay processes sharing the PostgreSQL database (needs --pg).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Internal: hold the idle connections listed in this file (lines `REPLICA SECRET
    /// RELAY`), print `held N` once all are caught up, and keep them until stdin closes.
    #[arg(long, hide = true)]
    hold: Option<std::path::PathBuf>,
    /// Internal: the pinned certificate fingerprint for `--hold`.
    #[arg(long, hide = true)]
    fingerprint: Option<String>,
}

/// Idle connections one holder process keeps: a process may open 20,000 files here, and
/// each idle client holds a replica (two SQLite connections) and a UDP socket.
const IDLE_PER_PROCESS: usize = 2000;

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
    if cli.nodes == 0 || (cli.nodes > 1 && cli.pg.is_none()) {
        bail!("--nodes above 1 needs --pg: nodes share a PostgreSQL database");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(file) = &cli.hold {
        return rt.block_on(hold(file, cli.fingerprint.clone().unwrap_or_default()));
    }
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
    let data_of = |node: usize| relay_disk.path().join(format!("relay{node}"));
    // The PostgreSQL client blocks: its calls run outside the async workers.
    let scratch = match &cli.pg {
        Some(url) => Some(
            tokio::task::block_in_place(|| ScratchDatabase::create(url))
                .context("creating a scratch database")?,
        ),
        None => None,
    };
    println!(
        "fieldsync-load: {} clients in {} scopes, one edit per client every ~{} ms for {:?}; {} idle; {} relay node(s) on {}",
        cli.clients,
        cli.scopes,
        cli.edit_every_ms,
        duration,
        cli.idle,
        cli.nodes,
        if scratch.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
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
    std::fs::create_dir_all(data_of(0))?;
    let (reps, credentials) = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        let store: RelayStore = match &scratch {
            Some(db) => {
                RelayStore::Postgres(PgRelayStore::open(db.url(), RelayStoreOptions::default())?)
            }
            None => RelayStore::Sqlite(SqliteRelayStore::open(
                data_of(0).join("relay.db"),
                RelayStoreOptions::default(),
            )?),
        };
        std::fs::create_dir_all(&relay_dir)?;
        let mut reps = Vec::with_capacity(cli.clients);
        let mut credentials = Vec::with_capacity(cli.clients + cli.idle);
        for i in 0..cli.clients + cli.idle {
            let client = Client::open_with(
                relay_dir.join(format!("c{i}.db")),
                StoreOptions {
                    // The rep side of a load test measures the relay, not 1,000 laptops' fsyncs
                    // on one disk: commits survive a process crash, not a power cut.
                    durability: Durability::Normal,
                    ..StoreOptions::default()
                },
            )?;
            let scope = if i < cli.clients {
                format!("s{}", i % cli.scopes)
            } else {
                "idle".to_string()
            };
            let e = store.enrol_device(
                Some(client.device_id()),
                &format!("load {i}"),
                Role::Rep,
                std::slice::from_ref(&scope),
            )?;
            credentials.push(e.secret);
            let doc = if i < cli.clients {
                client
                    .customers()
                    .create(NewCustomer {
                        scope,
                        name: format!("customer of client {i}"),
                        ..Default::default()
                    })?
                    .into()
            } else {
                DocId::new()
            };
            if i >= cli.clients {
                // Held by another process (see `hold`): closed here.
                continue;
            }
            reps.push(Arc::new(Rep {
                client,
                scope: i % cli.scopes,
                doc,
                sent: Mutex::new(Vec::new()),
            }));
        }
        drop(store);
        Ok((reps, credentials))
    })?;
    println!(
        "  set up {} replicas and enrolments in {:.1?}",
        cli.clients + cli.idle,
        t.elapsed()
    );

    // Relay nodes: one, or several sharing the database (and one certificate: tokens and
    // clients pin one fingerprint).
    let mut relays = Vec::with_capacity(cli.nodes);
    let mut metrics_addrs = Vec::with_capacity(cli.nodes);
    for node in 0..cli.nodes {
        let data = data_of(node);
        std::fs::create_dir_all(&data)?;
        let config = relay_disk.path().join(format!("relay{node}.toml"));
        let mut toml = format!(
            "max_connections = {}\n",
            (cli.clients + cli.idle) / cli.nodes + 64
        );
        if let Some(db) = &scratch {
            toml.push_str(&format!("database = \"{}\"\n", db.url()));
        }
        let metrics = procs::free_tcp_addr()?;
        toml.push_str(&format!("metrics_listen = \"{metrics}\"\n"));
        metrics_addrs.push(metrics);
        if node > 0 {
            let first = data_of(0);
            toml.push_str(&format!(
                "cert = \"{}\"\nkey = \"{}\"\n",
                first.join(CERT_FILE).display(),
                first.join(KEY_FILE).display()
            ));
        }
        std::fs::write(&config, toml)?;
        let relay = RelayProcess::start(
            &data,
            procs::free_udp_addr()?,
            &["--config", config.to_str().context("utf-8 path")?],
        )?;
        println!("  relay node {node}: pid {} on {}", relay.pid(), relay.addr);
        relays.push((relay, config));
    }
    let addrs: Vec<String> = relays.iter().map(|(r, _)| r.addr.to_string()).collect();
    let fingerprint = relays[0].0.fingerprint.clone();
    let config_of = |i: usize, secret: &str| {
        let mut cfg = SyncConfig::new(addrs[i % addrs.len()].clone(), fingerprint.clone());
        cfg.credential = Some(secret.to_string());
        // The laptop's defaults (keep-alive, idle timeout, backoff), with longer timeouts for
        // answers: a thousand clients in one process on two shared cores answer slowly.
        cfg.connect_timeout = Duration::from_secs(30);
        cfg.response_timeout = Duration::from_secs(120);
        cfg
    };

    // Connect everyone (staggered over ~5 s, like laptops waking up).
    let t = Instant::now();
    let mut handles = Vec::with_capacity(cli.clients);
    let stagger = Duration::from_micros(5_000_000 / cli.clients as u64);
    for (i, (rep, secret)) in reps.iter().zip(&credentials).enumerate() {
        handles.push(SyncHandle::start(rep.client.clone(), config_of(i, secret)));
        tokio::time::sleep(stagger).await;
    }
    let up = caught_up(&handles, Duration::from_secs(120)).await;
    println!(
        "  {up}/{} connections up and caught up in {:.1?}",
        handles.len(),
        t.elapsed()
    );

    // Idle connections, held by child processes (a process's open files are limited): the
    // relay's resident memory before and after they connect.
    let mut holders = Vec::new();
    let mut idle_memory = None;
    if cli.idle > 0 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before: u64 = relays
            .iter()
            .filter_map(|(r, _)| procs::vm_rss_kib(r.pid()))
            .sum();
        let t = Instant::now();
        let idle: Vec<usize> = (cli.clients..cli.clients + cli.idle).collect();
        for (k, part) in idle.chunks(IDLE_PER_PROCESS).enumerate() {
            let list = relay_dir.join(format!("idle{k}.txt"));
            let lines: Vec<String> = part
                .iter()
                .map(|&i| {
                    format!(
                        "{} {} {}",
                        relay_dir.join(format!("c{i}.db")).display(),
                        credentials[i],
                        addrs[i % addrs.len()]
                    )
                })
                .collect();
            std::fs::write(&list, lines.join("\n"))?;
            let mut child = std::process::Command::new(std::env::current_exe()?)
                .arg("--hold")
                .arg(&list)
                .arg("--fingerprint")
                .arg(&fingerprint)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("starting an idle-connection holder")?;
            let out = child.stdout.take().context("holder stdout")?;
            holders.push((child, out));
        }
        let mut up = 0usize;
        for (_, out) in &mut holders {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(out).read_line(&mut line)?;
            up += line
                .trim()
                .strip_prefix("held ")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after: u64 = relays
            .iter()
            .filter_map(|(r, _)| procs::vm_rss_kib(r.pid()))
            .sum();
        println!(
            "  {up}/{} idle connections up in {:.1?} ({} holder processes); relay memory {:.1} → {:.1} MiB",
            cli.idle,
            t.elapsed(),
            holders.len(),
            before as f64 / 1024.0,
            after as f64 / 1024.0
        );
        idle_memory = Some((before, after, up));
    }

    // Arrival watcher: reads each replica's change events, records edit → arrival latency.
    // (when the edit was made, how long it took to arrive)
    let latencies: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::new(Mutex::new(Vec::new()));
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
                        // The projection row, not the document: the watcher measures the
                        // clients, it must not add to their work.
                        let Ok(industry) = reps[i].client.with_store(|s| {
                            s.reader()
                                .prepare_cached("SELECT industry FROM customers WHERE id = ?1")
                                .and_then(|mut st| {
                                    st.query_row([d.to_string()], |r| r.get::<_, Option<String>>(0))
                                })
                        }) else {
                            continue;
                        };
                        let Some(n) = industry
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
                                    l.push((*t, now.saturating_duration_since(*t)));
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
    let me = std::process::id();
    // CPU seconds the relay processes spent before the editing started (and, for a node
    // killed meanwhile, what its first process spent in all).
    let mut relay_cpu: f64 = -relays
        .iter()
        .filter_map(|(r, _)| procs::cpu_seconds(r.pid()))
        .sum::<f64>();
    let self_cpu = procs::cpu_seconds(me);
    let writer_before = writer_stats(&metrics_addrs);
    let holder_cpu = |holders: &[(std::process::Child, std::process::ChildStdout)]| -> f64 {
        holders
            .iter()
            .filter_map(|(c, _)| procs::cpu_seconds(c.id()))
            .sum()
    };
    let holders_before = holder_cpu(&holders);
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
    // The restart burst: node 0 killed and started again while everyone edits.
    let mut restart = None;
    if let Some(after) = cli.restart_after {
        tokio::time::sleep_until((start + Duration::from_secs(after)).into()).await;
        let (old, config) = relays.remove(0);
        let (data, addr) = (old.data.clone(), old.addr);
        relay_cpu += procs::cpu_seconds(old.pid()).unwrap_or(0.0);
        let before: Vec<u64> = handles.iter().map(|h| h.status().connections).collect();
        old.kill9();
        let killed = Instant::now();
        let relay = RelayProcess::start(
            &data,
            addr,
            &["--config", config.to_str().context("utf-8 path")?],
        )?;
        let started = killed.elapsed();
        println!(
            "  relay node 0 killed and restarted (pid {}) in {started:.1?}",
            relay.pid()
        );
        relays.insert(0, (relay, config));
        let nodes = relays.len();
        // Settled: every client of the node has a new connection and is caught up on it.
        // (A client counts once it has been caught up on its new connection: with edits
        // going on, at any moment some are receiving one.)
        let mut settled = None;
        let mut shown = Duration::ZERO;
        let mut done = vec![false; handles.len()];
        while killed.elapsed() < Duration::from_secs(120) {
            let (mut back, mut waiting) = (0, 0);
            for (i, h) in handles.iter().enumerate().filter(|(i, _)| i % nodes == 0) {
                let s = h.status();
                let reconnected = s.connections > before[i];
                back += usize::from(reconnected);
                done[i] |= reconnected && s.state == SyncState::CaughtUp;
                waiting += usize::from(!done[i]);
            }
            if waiting == 0 {
                settled = Some(killed.elapsed());
                break;
            }
            if killed.elapsed() >= shown + Duration::from_secs(5) {
                shown += Duration::from_secs(5);
                let m = procs::scrape_metrics(metrics_addrs[0]).unwrap_or_default();
                let evicted = m
                    .iter()
                    .filter(|(k, _)| k.starts_with("fieldsync_relay_connections_evicted_total"))
                    .map(|(_, v)| *v as u64)
                    .sum::<u64>();
                println!(
                    "  +{:>3} s: {back} reconnected, {} caught up; relay: {} connections accepted, {evicted} evicted",
                    shown.as_secs(),
                    handles.len().div_ceil(nodes) - waiting,
                    m.get("fieldsync_relay_connections_total")
                        .copied()
                        .unwrap_or(0.0),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let clients = handles.len().div_ceil(nodes);
        restart = Some((clients, started, settled));
    }
    for t in tasks {
        let _ = t.await;
    }
    let edit_secs = start.elapsed().as_secs_f64();
    relay_cpu += relays
        .iter()
        .filter_map(|(r, _)| procs::cpu_seconds(r.pid()))
        .sum::<f64>();
    let self_cpu = self_cpu.zip(procs::cpu_seconds(me)).map(|(a, b)| b - a);
    // A restarted node's counters started again: the writer line needs both ends.
    let writer = match (writer_before, writer_stats(&metrics_addrs), &restart) {
        (Some(a), Some(b), None) => Some(b.minus(&a)),
        _ => None,
    };
    let holders_cpu = holder_cpu(&holders) - holders_before;
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
    let relay_hwm: Vec<u64> = relays
        .iter()
        .filter_map(|(r, _)| procs::vm_hwm_kib(r.pid()))
        .collect();
    let self_hwm = procs::vm_hwm_kib(me);
    let (mut up, mut down, mut conns, mut caught_up) = (0u64, 0u64, 0u64, 0usize);
    for h in &handles {
        let s = h.status();
        up += s.bytes_sent;
        down += s.bytes_received;
        conns += s.connections;
        caught_up += usize::from(s.state == SyncState::CaughtUp);
    }
    let timed = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut lat: Vec<Duration> = timed.iter().map(|(_, d)| *d).collect();
    let per_scope = cli.clients as f64 / cli.scopes as f64;
    let expected_deliveries = total_edits as f64 * (per_scope - 1.0);
    let deliveries = lat.len();
    let accepted: u64 = handles.iter().map(|h| h.status().changes_acked).sum();

    println!();
    println!("## fieldsync-load report");
    println!(
        "clients                 {} ({} scopes, ~{per_scope:.0} clients each), one process, one QUIC connection each; {} idle",
        cli.clients, cli.scopes, cli.idle
    );
    println!(
        "relay                   {} node(s) on {}",
        cli.nodes,
        if cli.pg.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    println!("editing                 {edit_secs:.1} s");
    println!(
        "edits                   {total_edits} ({:.1}/s), {} failed; {accepted} changes accepted by the relay",
        total_edits as f64 / edit_secs,
        failures.load(Ordering::Relaxed)
    );
    println!(
        "deliveries              {deliveries} of ~{expected_deliveries:.0} expected ({:.1}/s during editing)",
        deliveries as f64 / edit_secs
    );
    println!(
        "edit → arrival          {}  (10 ms sampling)",
        percentiles(&mut lat)
    );
    // By when the edit was made: latency that grows with run length shows as a queue.
    let window = Duration::from_secs(10);
    let mut w = 0u32;
    while start + window * w < start + Duration::from_secs_f64(edit_secs) {
        let (from, to) = (start + window * w, start + window * (w + 1));
        let mut part: Vec<Duration> = timed
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, d)| *d)
            .collect();
        println!(
            "  edits made {:>3}–{:<3} s  {}",
            window.as_secs() * u64::from(w),
            window.as_secs() * u64::from(w + 1),
            percentiles(&mut part)
        );
        w += 1;
    }
    if let Some(relay_cpu) = (relay_cpu > 0.0).then_some(relay_cpu) {
        println!(
            "relay CPU               {relay_cpu:.1} s in {edit_secs:.1} s ({:.0} % of one core): {:.2} ms per accepted change, {:.0} µs per delivery",
            100.0 * relay_cpu / edit_secs,
            1000.0 * relay_cpu / (accepted.max(1) as f64),
            1e6 * relay_cpu / (deliveries.max(1) as f64)
        );
    }
    if let Some(w) = writer {
        println!(
            "relay writer            {:.0} uploads in {:.0} transactions ({:.1} per transaction); busy {:.0} % of the run per node; an upload waited {:.1} ms on average",
            w.uploads,
            w.transactions,
            w.uploads / w.transactions.max(1.0),
            100.0 * w.busy / edit_secs / cli.nodes as f64,
            1000.0 * w.waited / w.uploads.max(1.0)
        );
    }
    if let Some(c) = self_cpu {
        println!(
            "load process CPU        {c:.1} s ({:.0} % of one core): the {} replicas applying and editing",
            100.0 * c / edit_secs,
            cli.clients + cli.idle
        );
    }
    println!(
        "wire bytes (clients)    {:.1} MiB up, {:.1} MiB down",
        up as f64 / 1048576.0,
        down as f64 / 1048576.0
    );
    println!("connections made        {conns} (1 per client = no reconnects)");
    println!(
        "relay peak memory       {} MiB VmHWM",
        relay_hwm
            .iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" + ")
    );
    if let Some((before, after, up)) = idle_memory {
        println!(
            "idle connections        {up} held; relay memory {:.1} → {:.1} MiB: {:.1} KiB per idle connection; their holders used {holders_cpu:.1} s CPU ({:.0} % of one core)",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 / (up.max(1) as f64),
            100.0 * holders_cpu / edit_secs
        );
    }
    if let Some((clients, started, settled)) = restart {
        println!(
            "restart burst           relay back in {started:.1?}; its {clients} clients reconnected and caught up {}",
            settled.map_or("not within 120 s".into(), |d| format!(
                "{d:.1?} after the kill"
            ))
        );
    }
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
    for (mut child, _) in holders {
        // Closing its stdin tells a holder to let go.
        drop(child.stdin.take());
        let _ = child.wait();
    }
    for (r, _) in relays {
        r.stop();
    }
    tokio::task::block_in_place(|| drop(scratch));
    if n_converged != reps.len() {
        bail!("{} clients did not converge", reps.len() - n_converged);
    }
    Ok(())
}

/// Waits until every handle finished a sync (or `timeout`); returns how many did.
/// The relay nodes' writers, summed (`db_write_*` metrics); `None` if a node does not
/// answer.
fn writer_stats(nodes: &[std::net::SocketAddr]) -> Option<Writer> {
    let mut w = Writer::default();
    for addr in nodes {
        let m = procs::scrape_metrics(*addr).ok()?;
        let get = |k: &str| m.get(&format!("fieldsync_relay_db_write_{k}")).copied();
        w.transactions += get("transactions_total")?;
        w.uploads += get("uploads_total")?;
        w.busy += get("busy_seconds_total")?;
        w.waited += get("wait_seconds_total")?;
    }
    Some(w)
}

/// What the relay writers did (see [`writer_stats`]).
#[derive(Default)]
struct Writer {
    transactions: f64,
    uploads: f64,
    busy: f64,
    waited: f64,
}

impl Writer {
    fn minus(&self, before: &Self) -> Self {
        Self {
            transactions: self.transactions - before.transactions,
            uploads: self.uploads - before.uploads,
            busy: self.busy - before.busy,
            waited: self.waited - before.waited,
        }
    }
}

async fn caught_up(handles: &[SyncHandle], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let up = handles
            .iter()
            .filter(|h| h.status().last_sync_finished_at.is_some())
            .count();
        if up == handles.len() || Instant::now() > deadline {
            return up;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// "p50 … p99 … max …" of `v` (sorted in place).
fn percentiles(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
    format!(
        "p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms  ({} arrivals)",
        at(0.5),
        at(0.99),
        at(1.0),
        v.len()
    )
}

/// The idle-connection holder (`--hold FILE`): opens each listed replica, keeps a sync running
/// for it, prints `held N` once all finished a sync (or after 5 minutes), and lets go when
/// stdin closes.
async fn hold(file: &std::path::Path, fingerprint: String) -> anyhow::Result<()> {
    let list = std::fs::read_to_string(file)?;
    let mut handles = Vec::new();
    for (n, line) in list.lines().enumerate() {
        let mut parts = line.split(' ');
        let (Some(path), Some(secret), Some(relay)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("bad line in {}: {line}", file.display());
        };
        let client = Client::open_with(
            path,
            StoreOptions {
                durability: Durability::Normal,
                ..StoreOptions::default()
            },
        )?;
        let mut cfg = SyncConfig::new(relay.to_string(), fingerprint.clone());
        cfg.credential = Some(secret.to_string());
        cfg.connect_timeout = Duration::from_secs(30);
        cfg.response_timeout = Duration::from_secs(120);
        cfg.idle_timeout = Duration::from_secs(60);
        cfg.keep_alive = Duration::from_secs(10);
        handles.push(SyncHandle::start(client, cfg));
        if n % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let up = caught_up(&handles, Duration::from_secs(300)).await;
    println!("held {up}");
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await?;
    drop(handles);
    Ok(())
}

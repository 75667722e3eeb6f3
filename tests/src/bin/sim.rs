//! `fieldsync-sim`: runs the deterministic simulation (`fieldsync_tests::sim`) over a range of
//! seeds, several seeds at a time on worker threads (each seed runs on one thread, alone).
//!
//! ```text
//! cargo run --release -p fieldsync-tests --bin fieldsync-sim -- --seeds 20000
//! cargo run -p fieldsync-tests --bin fieldsync-sim -- --start 1234 --seeds 1 --verbose
//! ```

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use clap::Parser;
use fieldsync_tests::sim::{self, SimConfig, SimFailure, SimStats};

/// Deterministic simulation of one relay and many clients under seeded faults.
#[derive(Parser, Debug)]
#[command(name = "fieldsync-sim")]
struct Args {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Clients per run (default: drawn from each seed, 3 to --clients-max).
    #[arg(long)]
    clients: Option<usize>,
    /// Most clients when drawn from the seed.
    #[arg(long, default_value_t = SimConfig::default().clients_max)]
    clients_max: usize,
    /// Steps with faults and edits before healing.
    #[arg(long, default_value_t = SimConfig::default().steps)]
    steps: u64,
    /// Worker threads (default: available parallelism).
    #[arg(long)]
    jobs: Option<usize>,
    /// Managers never move customers between scopes.
    #[arg(long)]
    no_scope_moves: bool,
    /// Keep running after a failure and list every failing seed at the end.
    #[arg(long)]
    keep_going: bool,
    /// Print every event of every run to stderr (use with --seeds 1).
    #[arg(long)]
    verbose: bool,
    /// Directory for temporary databases (default: /dev/shm if present).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The relay's move grace period in steps (simulated minutes); default: drawn from each
    /// seed between 0 and half the run.
    #[arg(long)]
    move_grace_steps: Option<u64>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let cfg = SimConfig {
        clients: args.clients,
        clients_max: args.clients_max,
        steps: args.steps,
        dir: args.dir.clone(),
        scope_moves: !args.no_scope_moves,
        verbose: args.verbose,
        move_grace_steps: args.move_grace_steps,
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicU64::new(args.start);
    let end = args.start.saturating_add(args.seeds);
    let done = AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failures: Mutex<Vec<SimFailure>> = Mutex::new(Vec::new());
    let totals: Mutex<(SimStats, u32, f64)> = Mutex::new((SimStats::default(), 0, 0.0));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    match sim::run(seed, &cfg) {
                        Ok(report) => {
                            if args.seeds == 1 {
                                println!(
                                    "seed {seed}: ok, fingerprint {:016x}\n{:#?}",
                                    report.fingerprint, report.stats
                                );
                            }
                            let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
                            add(&mut t.0, &report.stats);
                            t.1 = t.1.max(report.stats.heal_rounds);
                            let ratio = f64::from(report.stats.heal_rounds)
                                / f64::from(report.stats.heal_rounds_bound.max(1));
                            t.2 = t.2.max(ratio);
                        }
                        Err(f) => {
                            eprintln!("{f}");
                            if !args.keep_going {
                                stop.store(true, Ordering::Relaxed);
                            }
                            failures.lock().unwrap_or_else(|e| e.into_inner()).push(f);
                        }
                    }
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if args.seeds > 1 && n.is_multiple_of(100) {
                        eprintln!("{n}/{} seeds in {:.0?}", args.seeds, started.elapsed());
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    let (t, heal_max, heal_ratio) = totals.into_inner().unwrap_or_else(|e| e.into_inner());
    let n = done.load(Ordering::Relaxed);
    println!(
        "{n} seed(s) from {} in {:.1?} on {jobs} thread(s): {} failed",
        args.start,
        started.elapsed(),
        failures.len()
    );
    println!(
        "totals: {} ops ({} refused locally), {} changes, {} acked, {} refused by the relay ({} for now), {} quarantined,\n        {} frames ({} lost), {} connections, {} zombies, {} timeouts, {} ghosts, {} client crashes, {} relay crashes, {} partitions, {} clock jumps;\n        {} documents at the end; quiescent within {heal_max} round(s) after healing (at most {:.0} % of the bound)",
        t.ops,
        t.ops_refused_locally,
        t.changes,
        t.acked,
        t.refused,
        t.refused_retry,
        t.quarantined,
        t.frames,
        t.frames_lost,
        t.connections,
        t.zombies,
        t.timeouts,
        t.ghosts,
        t.client_crashes,
        t.relay_crashes,
        t.partitions,
        t.clock_jumps,
        t.docs,
        heal_ratio * 100.0,
    );
    if failures.is_empty() {
        return std::process::ExitCode::SUCCESS;
    }
    let mut seeds: Vec<u64> = failures.iter().map(|f| f.seed).collect();
    seeds.sort_unstable();
    println!("failing seeds: {seeds:?}");
    for f in &failures {
        println!("replay: {}", f.replay);
    }
    std::process::ExitCode::FAILURE
}

fn add(t: &mut SimStats, s: &SimStats) {
    t.clients += s.clients;
    t.ops += s.ops;
    t.ops_refused_locally += s.ops_refused_locally;
    t.changes += s.changes;
    t.acked += s.acked;
    t.refused += s.refused;
    t.refused_retry += s.refused_retry;
    t.quarantined += s.quarantined;
    t.frames += s.frames;
    t.frames_lost += s.frames_lost;
    t.connections += s.connections;
    t.zombies += s.zombies;
    t.timeouts += s.timeouts;
    t.ghosts += s.ghosts;
    t.client_crashes += s.client_crashes;
    t.relay_crashes += s.relay_crashes;
    t.partitions += s.partitions;
    t.clock_jumps += s.clock_jumps;
    t.docs += s.docs;
}

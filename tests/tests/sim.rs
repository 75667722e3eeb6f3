//! The deterministic simulation (`fieldsync_tests::sim`, TESTING.md "Deterministic
//! simulation") as a test: a few hundred small seeds, a few crowded ones, and a check that a
//! seed replays exactly.
//!
//! Other seeds: `SIM_START=5000 SIM_SEEDS=1000 cargo test -p fieldsync-tests --test sim`.
//! Thousands of seeds: the `fieldsync-sim` binary. A failure prints its seed and the command
//! that replays it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use fieldsync_tests::sim::{self, SimConfig, SimFailure};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 3 to 5 clients, 40 steps: small enough that a few hundred seeds fit in a CI run, large
/// enough for partitions, crashes and scope moves racing edits.
fn small() -> SimConfig {
    SimConfig {
        clients_max: 5,
        steps: 40,
        ..SimConfig::default()
    }
}

/// Runs seeds `start..start + n` on every core; panics with the first failure (its seed and
/// replay command).
fn run_seeds(start: u64, n: u64, cfg: &SimConfig) {
    let next = AtomicU64::new(start);
    let failures: Mutex<Vec<SimFailure>> = Mutex::new(Vec::new());
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= start + n {
                        break;
                    }
                    if let Err(f) = sim::run(seed, cfg) {
                        failures.lock().unwrap_or_else(|e| e.into_inner()).push(f);
                        break;
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_by_key(|f| f.seed);
    if let Some(first) = failures.first() {
        let seeds: Vec<u64> = failures.iter().map(|f| f.seed).collect();
        panic!("failing seeds {seeds:?}\n{first}");
    }
}

#[test]
fn seeds_converge_and_lose_nothing() {
    run_seeds(env_u64("SIM_START", 0), env_u64("SIM_SEEDS", 200), &small());
}

#[test]
fn crowded_seeds_converge_and_lose_nothing() {
    let cfg = SimConfig {
        clients: Some(20),
        steps: 30,
        ..SimConfig::default()
    };
    run_seeds(env_u64("SIM_START", 0) + 1_000_000, 2, &cfg);
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [7, 1_000_003] {
        let a = sim::run(seed, &small()).unwrap_or_else(|f| panic!("{f}"));
        let b = sim::run(seed, &small()).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(a.fingerprint, b.fingerprint, "seed {seed} did not replay");
        assert_eq!(a.stats, b.stats, "seed {seed} did not replay");
    }
}

/// The relay's clock is the simulation's, so runs reach the end of a move's grace period:
/// without one, changes written before a move that reach the relay after it are refused (each
/// checked to have its cause); with one longer than the run, the old scope's edits are
/// accepted. Seeds drawn with a grace in between cross its end part way.
#[test]
fn a_move_grace_period_ends_in_simulated_time() {
    // Seeds are tried in order until one shows it: whether a seed's offline edits meet a move
    // depends on the whole schedule, and every accepted or refused change changes the rest of
    // that seed's run, so totals over seeds are not comparable; one seed whose run refuses
    // more without the grace is (the simulation is deterministic, so the search is too).
    let cfg = |g| SimConfig {
        move_grace_steps: Some(g),
        ..small()
    };
    let run = |seed, g| {
        sim::run(seed, &cfg(g))
            .unwrap_or_else(|f| panic!("{f}"))
            .stats
            .refused
    };
    let shown = (0..128).find_map(|seed| {
        let (without, past_the_run) = (run(seed, 0), run(seed, 1_000_000));
        (without > past_the_run).then_some((seed, without, past_the_run))
    });
    let (seed, without, past_the_run) =
        shown.expect("no seed in 0..128 refuses more without a grace period");
    eprintln!(
        "seed {seed}: refused without grace: {without}; with a grace past the run: {past_the_run}"
    );
}

/// The attachment simulation (`fieldsync_tests::sim::attachments`): seeds of laptops and a
/// relay moving attachment bytes through loss, corrupted pieces and crashes. Other seeds:
/// `ATT_SIM_START=1000 ATT_SIM_SEEDS=500 ATT_SIM_STEPS=300 cargo test -p fieldsync-tests --test
/// sim attachments`.
#[test]
fn attachments_survive_loss_corruption_and_crashes() {
    let start = env_u64("ATT_SIM_START", 0);
    let n = env_u64("ATT_SIM_SEEDS", 30);
    let steps = env_u64("ATT_SIM_STEPS", 120);
    let mut totals = sim::attachments::AttachmentSimStats::default();
    for seed in start..start + n {
        // In memory where there is a tmpfs: every piece is a durable commit.
        let dir = match std::path::Path::new("/dev/shm") {
            shm if shm.is_dir() => tempfile::tempdir_in(shm),
            _ => tempfile::tempdir(),
        }
        .expect("tempdir");
        match sim::attachments::run_attachments(seed, steps, dir.path()) {
            Ok(s) => {
                totals.attached += s.attached;
                totals.wanted += s.wanted;
                totals.lost += s.lost;
                totals.corrupted += s.corrupted;
                totals.crashes += s.crashes;
            }
            Err(e) => panic!(
                "attachment simulation seed {seed} failed: {e}\nreplay: ATT_SIM_START={seed} ATT_SIM_SEEDS=1 ATT_SIM_STEPS={steps} cargo test -p fieldsync-tests --test sim attachments"
            ),
        }
    }
    // The seeds did exercise the faults.
    assert!(totals.attached > n && totals.wanted > 0, "{totals:?}");
    assert!(
        totals.lost > 0 && totals.corrupted > 0 && totals.crashes > 0,
        "{totals:?}"
    );
    eprintln!("attachment simulation, {n} seeds: {totals:?}");
}

//! A deterministic simulation of one relay and many clients (docs/DESIGN.md §8, the invariants of TESTING.md).
//!
//! One thread, no sockets, no clock: the relay is a real [`fieldsync_relay::SqliteRelayStore`]
//! on a temporary file driven through [`fieldsync_core::protocol::RelaySession`]; each client
//! is a real [`fieldsync_core::store::Store`] driven through
//! [`fieldsync_core::protocol::ClientSession`]. Simulated connections carry frames encoded and
//! decoded by the real codec (see `net`). Time is a step counter and every decision — who
//! edits what, which frame is lost, who crashes, for how long a client is offline, how far its
//! clock jumps — comes from one `StdRng` seeded with the run's seed, so a seed replays exactly.
//! Document ids, item ids, device ids and Automerge actors are drawn from the same RNG (the
//! store takes the device id and actor from [`fieldsync_core::store::StoreOptions`]).
//!
//! Each seed draws its own fault rates (some seeds are calm): frames lost (the connection
//! dies, as a QUIC reset), frames split across deliveries, connections abandoned by the
//! client while the relay still processes what arrived (zombies), whole old connections
//! replayed to the relay (ghosts: duplicate Hello and uploads), partitions lasting many
//! steps, client crashes (the store is dropped without cleanup and reopened from disk,
//! sometimes losing the input being processed), relay crashes (all sessions die; sometimes
//! right after an upload committed and before its ack left), and clock jumps back to 2001 or
//! years ahead. Clients are enrolled with different roles and scopes; they edit customers,
//! visits and quotes online and offline, and managers move customers between scopes.
//!
//! Checked while running: every refusal by the relay has a cause (the document is outside the
//! sender's scopes); every change the relay acknowledged is in its log; every download item
//! sent to a device was filed in one of its scopes; no replica holds a document outside its
//! scopes beyond the grace window (its Leave not yet applied, or its own unacknowledged
//! edits pending); after every client restart every committed change is still there (I1) and
//! `Store::verify` is clean; after every relay restart every acknowledged change is still
//! there (I2) and `integrity_check` is ok.
//!
//! Checked after healing (links up, no faults, no edits, sync run until quiescent within a
//! number of rounds bounded by the work left: two per upload batch of the fullest outbox and
//! two per download page of the whole log, plus slack): every outbox empty; every quarantined change is one the relay
//! refused with cause (or one built on such a change); every replica holds exactly the
//! relay's documents in its scopes (plus its own documents the relay refused), each equal to
//! the relay's as a typed document and by heads; every acknowledged change is on the relay and
//! on every replica whose scopes include its document; `Store::verify` is clean everywhere and
//! the relay's SQLite passes `integrity_check`.

pub mod attachments;
mod net;
mod oracle;
mod workload;
mod world;

use std::fmt;
use std::path::PathBuf;

/// The scopes (territories) of the simulated organisation.
pub const SCOPES: [&str; 3] = ["north", "south", "east"];

/// Sizes of a run. The seed decides everything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Number of clients; `None` draws it from the seed between 3 and `clients_max`.
    pub clients: Option<usize>,
    /// Most clients when drawn from the seed.
    pub clients_max: usize,
    /// Steps with faults and edits before healing.
    pub steps: u64,
    /// Directory for the temporary databases (default: `/dev/shm` if present, else the
    /// system temporary directory).
    pub dir: Option<PathBuf>,
    /// Managers move customers between scopes (with their visits and quotes).
    pub scope_moves: bool,
    /// Print every event to stderr.
    pub verbose: bool,
    /// The relay's move grace period in steps (simulated minutes); `None` draws it from the
    /// seed between 0 and half the run, so runs cross the end of grace periods.
    pub move_grace_steps: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            clients: None,
            clients_max: 20,
            steps: 120,
            dir: None,
            scope_moves: true,
            verbose: false,
            move_grace_steps: None,
        }
    }
}

impl SimConfig {
    /// The command that replays `seed` with this configuration.
    pub fn replay_command(&self, seed: u64) -> String {
        let mut cmd =
            format!("cargo run -p fieldsync-tests --bin fieldsync-sim -- --start {seed} --seeds 1");
        let d = Self::default();
        match self.clients {
            Some(k) => cmd.push_str(&format!(" --clients {k}")),
            None if self.clients_max != d.clients_max => {
                cmd.push_str(&format!(" --clients-max {}", self.clients_max));
            }
            None => {}
        }
        if !self.scope_moves {
            cmd.push_str(" --no-scope-moves");
        }
        if self.steps != d.steps {
            cmd.push_str(&format!(" --steps {}", self.steps));
        }
        if let Some(g) = self.move_grace_steps {
            cmd.push_str(&format!(" --move-grace-steps {g}"));
        }
        cmd
    }
}

/// Counters of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Clients simulated.
    pub clients: usize,
    /// Operations attempted by clients.
    pub ops: u64,
    /// Operations the model refused locally (not allowed in the current state or role).
    pub ops_refused_locally: u64,
    /// Changes committed to replicas (L1).
    pub changes: u64,
    /// Changes acknowledged by the relay and dropped from an outbox (L2).
    pub acked: u64,
    /// Permanent refusals by the relay (all checked to have a cause).
    pub refused: u64,
    /// Temporary refusals by the relay (dependency not there yet).
    pub refused_retry: u64,
    /// Changes quarantined by clients.
    pub quarantined: u64,
    /// Frames delivered.
    pub frames: u64,
    /// Frames lost (each killed its connection).
    pub frames_lost: u64,
    /// Connections opened.
    pub connections: u64,
    /// Connections abandoned by their client while the relay kept reading them.
    pub zombies: u64,
    /// Connections a client gave up on because the relay owed an answer past the session's
    /// response timeout.
    pub timeouts: u64,
    /// Old connections replayed to the relay.
    pub ghosts: u64,
    /// Client crashes.
    pub client_crashes: u64,
    /// Relay crashes.
    pub relay_crashes: u64,
    /// Partitions.
    pub partitions: u64,
    /// Clock jumps.
    pub clock_jumps: u64,
    /// Documents on the relay at the end.
    pub docs: u64,
    /// Rounds the healed system needed to become quiescent (a round delivers every frame in
    /// flight at its start).
    pub heal_rounds: u32,
    /// The bound on those rounds, from the work left at healing (see the module docs).
    pub heal_rounds_bound: u32,
}

/// The result of a successful run.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Counters.
    pub stats: SimStats,
    /// A digest of every decision and event of the run (equal digests: the run replayed).
    pub fingerprint: u64,
}

/// A failed run: the seed, what failed, and the last events before it.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// What failed.
    pub message: String,
    /// The last events before the failure.
    pub trace_tail: Vec<String>,
    /// The command that replays the seed.
    pub replay: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "simulation seed {} failed: {}", self.seed, self.message)?;
        writeln!(f, "last events:")?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        writeln!(f, "seed {} replays with: {}", self.seed, self.replay)
    }
}

impl std::error::Error for SimFailure {}

/// Where temporary databases go by default: tmpfs when there is one (fsyncs are free there,
/// and the simulation is about ordering, not disks).
fn default_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() && tempfile::tempdir_in(&shm).is_ok() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// Runs one seed. A panic anywhere in the system under test is reported as a failure.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<SimReport, SimFailure> {
    let replay = cfg.replay_command(seed);
    let fail = |message: String, trace_tail: Vec<String>| SimFailure {
        seed,
        message,
        trace_tail,
        replay: replay.clone(),
    };
    let base = cfg.dir.clone().unwrap_or_else(default_dir);
    let dir = tempfile::Builder::new()
        .prefix("fieldsync-sim-")
        .tempdir_in(&base)
        .map_err(|e| {
            fail(
                format!("temporary directory in {}: {e}", base.display()),
                vec![],
            )
        })?;
    let tail = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let tail2 = tail.clone();
    let cfg2 = cfg.clone();
    let path = dir.path().to_path_buf();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        world::World::new(seed, cfg2, path, tail2).and_then(world::World::run)
    }));
    let tail: Vec<String> = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    match outcome {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(message)) => Err(fail(message, tail)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            Err(fail(format!("panic: {what}"), tail))
        }
    }
}

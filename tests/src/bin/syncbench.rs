//! `fieldsync-syncbench`: the sync benchmark. Prints a table; asserts nothing about
//! time.
//!
//! ```sh
//! cargo run --release -p fieldsync-tests --bin fieldsync-syncbench            # full sizes
//! cargo run --release -p fieldsync-tests --bin fieldsync-syncbench -- --quick # a tenth
//! ```
//!
//! Everything runs on 127.0.0.1 in one run, against one relay:
//!
//! - (a) a fresh client downloads 10,000 documents shaped like a real book (1,000 customers
//!   with contacts, addresses and equipment; 7,000 visits with needs and tasks; 2,000 quotes
//!   with lines) — target < 2 s;
//! - (b) a fresh client downloads 100,000 documents (ten times as many, same mix) — target
//!   < 20 s with flat client and relay memory;
//! - (c) an already-synced client gets one field changed on another laptop — target one round
//!   trip after the handshake and < 300 bytes of sync payload; the uploading side is shown too;
//! - (d) a client uploads 5,000 offline edits — target < 2 s; the other client then downloads
//!   them (shown, no target).
//!
//! **Processes.** The relay is the real `fieldsync-relay serve` binary in its own process
//! (built with this binary's profile through [`procs::binary`], or taken from
//! `$FIELDSYNC_BIN_DIR`; `--in-process` runs the relay inside this process instead). Every client runs in
//! a child process of this binary (`worker` mode), so each client's peak memory is its own
//! process's `VmHWM`. The relay's peak is read from `/proc/<pid>/status` (`VmHWM`) after
//! resetting it (`/proc/<pid>/clear_refs` ← 5) before each case, so each row shows the peak of
//! that case alone (after 2 s idle, in which the relay's allocator returns memory the previous
//! case freed).
//!
//! **Population** is excluded from every timing: a populating client creates the documents in
//! one store transaction (`fieldsync_core::model::create_*`; each document is one change, and
//! about half of them get a second one) and uploads them with one sync; its times are printed
//! below the table for information.
//!
//! **Bytes** are frame bytes as counted by [`SyncReport`] (length prefixes included; QUIC,
//! TLS and UDP overhead not included). For (c) the handshake frames (`Hello`, `Welcome`) are
//! subtracted to give the sync payload, and round trips after the handshake are the frames the
//! client sent after `Hello` and its `Outbox` report (protocol 5, which nothing answers): each
//! is answered by one frame; uploads and pulls that go out together are pipelined and counted
//! as one round trip.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fieldsync_client::Client;
use fieldsync_client::sync::{SyncConfig, SyncReport, sync_now};
use fieldsync_core::Role;
use fieldsync_core::model::{CustomerEdit, CustomerField};
use fieldsync_core::protocol::client::ClientConfig as SessionConfig;
use fieldsync_core::protocol::{ClientSession, Cursor, Message, PROTOCOL_VERSION, codec};
use fieldsync_tests::workload::{offline_edits, populate, some_ids};
use fieldsync_tests::{floor, procs};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Jobs run by worker processes.

/// One client-side job, run in a child process (`fieldsync-syncbench worker <json>`).
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Job {
    /// Creates `customers`, `visits` and `quotes` documents in one store transaction, then
    /// uploads them with one sync.
    Populate {
        customers: usize,
        visits: usize,
        quotes: usize,
    },
    /// One `sync_now`, timed.
    Sync,
    /// Sets one field of one customer offline (untimed), then one `sync_now`, timed.
    EditOneField,
    /// `edits` offline edits through the client API, one transaction each (untimed), then
    /// one `sync_now`, timed.
    EditThenSync { edits: usize },
}

/// Where a worker finds its replica and the relay.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct WorkerArgs {
    db: PathBuf,
    relay: String,
    pin: String,
    job: Job,
}

/// What a worker prints (one JSON line on stdout).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct WorkerResult {
    /// The timed sync.
    report: SyncReport,
    /// Seconds spent before the sync (creating documents or making edits; untimed work).
    prepare_secs: f64,
    /// Documents in the replica afterwards.
    docs: i64,
    /// Local changes waiting before the sync.
    outbox_before: u64,
    /// Local changes still waiting afterwards.
    outbox: u64,
    /// `Hello` and `Welcome` frame sizes of this replica's sessions.
    hello_bytes: u64,
    welcome_bytes: u64,
    /// Peak resident memory of the worker process, KiB.
    vm_hwm_kib: u64,
    /// CPU time (user + system, all threads) the worker spent in the timed sync, seconds.
    cpu_secs: f64,
    /// Time the worker's threads were ready to run but waited for a CPU during the timed
    /// sync (other processes had them), seconds.
    cpu_wait_secs: f64,
    /// For a fresh replica's download: the compression floor of what arrived, the replica's documents'
    /// uncompressed snapshots concatenated in id order and compressed together with zstd at
    /// level 3 (what a download frame could at best carry of the same documents), bytes.
    floor_bytes: Option<u64>,
}

fn worker(args: WorkerArgs) -> anyhow::Result<WorkerResult> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = Client::open(&args.db).with_context(|| format!("opening {:?}", args.db))?;
    let mut cfg = SyncConfig::new(args.relay.clone(), args.pin.clone());
    cfg.response_timeout = Duration::from_secs(300);
    let started = Instant::now();
    match &args.job {
        Job::Populate {
            customers,
            visits,
            quotes,
        } => populate(&client, *customers, *visits, *quotes)?,
        Job::Sync => {}
        Job::EditOneField => {
            let id = some_ids(&client, "customers", 1)?[0];
            client
                .customers()
                .edit(
                    id.into(),
                    CustomerEdit::Set(CustomerField::Stage, "opportunity".into()),
                )
                .context("editing one field")?;
        }
        Job::EditThenSync { edits } => offline_edits(&client, *edits)?,
    }
    let prepare_secs = started.elapsed().as_secs_f64();
    let outbox_before = client.outbox_len()?;
    // A fresh replica's download is all its documents: their compression floor is comparable.
    let fresh = matches!(args.job, Job::Sync) && client.with_store(|s| s.doc_count())? == 0;
    let cpu_before = cpu_secs(std::process::id());
    let wait_before = cpu_wait_secs(std::process::id());
    let report = rt
        .block_on(sync_now(&client, &cfg))
        .context("sync_now failed")?;
    let cpu = cpu_secs(std::process::id()) - cpu_before;
    let cpu_wait = cpu_wait_secs(std::process::id()) - wait_before;
    let (hello_bytes, welcome_bytes) = handshake_sizes(&client, &cfg)?;
    // Peak memory of the sync, read before the floor is computed (which holds every snapshot).
    let vm_hwm_kib = proc_status_kib(std::process::id(), "VmHWM").unwrap_or(0);
    let floor_bytes = if fresh {
        Some(floor::download_floor(&client)?)
    } else {
        None
    };
    Ok(WorkerResult {
        floor_bytes,
        docs: client.with_store(|s| s.doc_count())?,
        outbox_before,
        outbox: client.outbox_len()?,
        report,
        prepare_secs,
        hello_bytes,
        welcome_bytes,
        vm_hwm_kib,
        cpu_secs: cpu,
        cpu_wait_secs: cpu_wait,
    })
}

/// The encoded sizes of this client's `Hello` and of the relay's `Welcome` and `Policy` (same
/// epoch and grant as the last session), so the handshake can be subtracted from a sync's bytes.
fn handshake_sizes(client: &Client, cfg: &SyncConfig) -> anyhow::Result<(u64, u64)> {
    let session = ClientSession::new(SessionConfig {
        agent: cfg.agent.clone(),
        credential: cfg.credential.clone(),
        ..SessionConfig::default()
    });
    let hello = client.with_store(|s| session.hello(s));
    let cursor: Option<Cursor> = client.with_store(|s| ClientSession::load_cursor(s))?;
    let cursor = cursor.context("no cursor after a sync")?;
    let welcome = Message::Welcome {
        version: PROTOCOL_VERSION,
        epoch: cursor.epoch,
        scopes: cursor.scopes.keys().cloned().collect(),
        role: Role::Admin,
    };
    // The device's orders follow every Welcome (protocol 7): part of the handshake too.
    let policy = Message::Policy {
        policy: Default::default(),
        relay_time: fieldsync_core::ids::now_millis(),
    };
    Ok((
        codec::encode(&hello)?.len() as u64,
        (codec::encode(&welcome)?.len() + codec::encode(&policy)?.len()) as u64,
    ))
}

/// Creates the documents in one transaction: each customer with two contacts, an address, one
/// or two units of equipment, a phone and a product line, then moved to another stage (a second
/// change); each visit of a customer with notes, a need and (every other one) a task, every
/// other one then marked done (a second change); each quote of a customer with three lines,
/// every fourth one then submitted (a second change).
/// A `/proc/<pid>/status` field in KiB (`VmHWM`, `VmRSS`).
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system, all threads) a process has used so far, in seconds
/// (`/proc/<pid>/stat`, assuming the usual 100 clock ticks per second); 0 if unreadable.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Time a process's live threads have spent runnable but waiting for a CPU, in seconds
/// (`/proc/<pid>/task/*/schedstat`, second field); 0 if unreadable.
fn cpu_wait_secs(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// Resets a process's peak RSS (`VmHWM`) to its current RSS.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

// ---------------------------------------------------------------------------------------------
// The relay.

enum RelayProc {
    /// `fieldsync-relay serve` in its own process.
    Process(procs::RelayProcess),
    /// In this process (fallback).
    InProcess {
        rt: tokio::runtime::Runtime,
        relay: Option<fieldsync_relay::Relay>,
    },
}

impl RelayProc {
    fn start(dir: &Path, separate: bool) -> anyhow::Result<Self> {
        let data = dir.join("relay");
        // One device uploads the whole population: past any daily quota, which is not what
        // is measured here.
        const NO_QUOTA: u64 = 1 << 50;
        if separate {
            let config = dir.join("bench-relay.toml");
            std::fs::write(
                &config,
                format!(
                    "quota_new_documents_per_day = {NO_QUOTA}\nquota_bytes_per_day = {NO_QUOTA}\n"
                ),
            )?;
            let config = config.to_string_lossy().into_owned();
            // Open enrolment: every benchmark client is a new device that sees every scope.
            return Ok(Self::Process(procs::RelayProcess::start(
                &data,
                "127.0.0.1:0".parse()?,
                &["--open", "--config", &config],
            )?));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let relay = rt.block_on(fieldsync_relay::Relay::start(
            fieldsync_relay::RelayConfig {
                data_dir: data,
                listen: "127.0.0.1:0".parse()?,
                open_enrollment: true,
                quota_new_documents_per_day: NO_QUOTA,
                quota_bytes_per_day: NO_QUOTA,
                ..Default::default()
            },
        ))?;
        Ok(Self::InProcess {
            rt,
            relay: Some(relay),
        })
    }

    fn addr(&self) -> String {
        match self {
            Self::Process(p) => p.addr.to_string(),
            Self::InProcess { relay, .. } => relay
                .as_ref()
                .map(|r| r.local_addr().to_string())
                .unwrap_or_default(),
        }
    }

    fn pin(&self) -> String {
        match self {
            Self::Process(p) => p.fingerprint.clone(),
            Self::InProcess { relay, .. } => relay
                .as_ref()
                .map(|r| r.fingerprint().to_string())
                .unwrap_or_default(),
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Self::Process(p) => p.pid(),
            Self::InProcess { .. } => std::process::id(),
        }
    }

    fn stop(self) {
        match self {
            Self::Process(p) => p.stop(),
            Self::InProcess { rt, mut relay } => {
                if let Some(r) = relay.take() {
                    let _ = rt.block_on(r.shutdown());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The orchestrator.

struct Bench {
    tmp: tempfile::TempDir,
    relay: RelayProc,
}

impl Bench {
    fn run(&self, db: &str, job: Job) -> anyhow::Result<WorkerResult> {
        let args = WorkerArgs {
            db: self.tmp.path().join(db),
            relay: self.relay.addr(),
            pin: self.relay.pin(),
            job,
        };
        let exe = std::env::current_exe()?;
        let out = Command::new(exe)
            .arg("worker")
            .arg(serde_json::to_string(&args)?)
            .stderr(Stdio::inherit())
            .output()
            .context("running a worker")?;
        if !out.status.success() {
            bail!("worker {:?} failed ({})", args.job, out.status);
        }
        let stdout = String::from_utf8(out.stdout)?;
        let last = stdout.lines().last().context("worker printed nothing")?;
        Ok(serde_json::from_str(last)?)
    }

    /// Runs a job with the relay's peak memory reset first; returns the result and the relay's
    /// peak RSS (KiB) and CPU time (s) during the job (population and untimed edits included).
    fn measured(&self, db: &str, job: Job) -> anyhow::Result<(WorkerResult, RelayUse)> {
        let pid = self.relay.pid();
        // The relay's allocator hands memory freed by the previous job back within about a
        // second; the peak is reset after that, so it shows this job's own.
        std::thread::sleep(SETTLE);
        let reset = reset_peak(pid);
        let cpu = cpu_secs(pid);
        let r = self.run(db, job)?;
        let peak_kib = if reset {
            proc_status_kib(pid, "VmHWM")
        } else {
            None
        };
        Ok((
            r,
            RelayUse {
                peak_kib,
                cpu_secs: cpu_secs(pid) - cpu,
            },
        ))
    }
}

/// Idle time before each measured job, for the relay's resident memory to settle.
const SETTLE: Duration = Duration::from_secs(2);

/// The relay's resources during one job.
#[derive(Clone, Copy, Debug)]
struct RelayUse {
    peak_kib: Option<u64>,
    cpu_secs: f64,
}

struct Row {
    case: String,
    what: String,
    secs: f64,
    target: String,
    met: Option<bool>,
    r: WorkerResult,
    relay: RelayUse,
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
}

fn bytes(n: u64) -> String {
    if n >= 10 << 20 {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    } else if n >= 10 << 10 {
        format!("{:.0} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "| case | what | time | target | CPU client / relay (client waiting for a CPU) | frames sent/recv | bytes sent | bytes received | floor of those bytes (received ÷ floor) | client peak RSS | relay peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let verdict = match row.met {
            Some(true) => " (met)",
            Some(false) => " (**missed**)",
            None => "",
        };
        let floor = row.r.floor_bytes.map_or("—".into(), |f| {
            format!(
                "{} ({:.2}×)",
                bytes(f),
                row.r.report.bytes_received as f64 / f.max(1) as f64
            )
        });
        println!(
            "| {} | {} | {:.2} s | {}{} | {:.2} / {:.2} s ({:.2} s) | {}/{} | {} | {} | {} | {} | {} |",
            row.case,
            row.what,
            row.secs,
            row.target,
            verdict,
            row.r.cpu_secs,
            row.relay.cpu_secs,
            row.r.cpu_wait_secs,
            row.r.report.frames_sent,
            row.r.report.frames_received,
            bytes(row.r.report.bytes_sent),
            bytes(row.r.report.bytes_received),
            floor,
            mib(Some(row.r.vm_hwm_kib)),
            mib(row.relay.peak_kib),
        );
    }
}

fn orchestrate(quick: bool, separate: bool) -> anyhow::Result<()> {
    let scale = if quick { 10 } else { 1 };
    let (cust, vis, quo) = (1_000 / scale, 7_000 / scale, 2_000 / scale);
    let small = cust + vis + quo;
    let edits = 5_000 / scale;
    let tmp = tempfile::tempdir()?;
    let relay = RelayProc::start(tmp.path(), separate)?;
    let mode = match &relay {
        RelayProc::Process(p) => format!(
            "`fieldsync-relay serve`, a separate process (pid {})",
            p.pid()
        ),
        RelayProc::InProcess { .. } => "in the benchmark process (its RSS shown)".into(),
    };
    eprintln!(
        "relay at {} ({mode}); work dir {:?}",
        relay.addr(),
        tmp.path()
    );
    let bench = Bench { tmp, relay };
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let load_before = procs::loadavg();

    eprintln!("populating {small} documents …");
    let (p, relay) = bench.measured(
        "populator.db",
        Job::Populate {
            customers: cust,
            visits: vis,
            quotes: quo,
        },
    )?;
    notes.push(format!(
        "population of {small} documents: created in {:.1} s (one transaction), uploaded in {:.2} s \
         ({} changes, {} sent); relay peak {}",
        p.prepare_secs,
        p.report.duration.as_secs_f64(),
        p.report.changes_acked,
        bytes(p.report.bytes_sent),
        mib(relay.peak_kib)
    ));

    eprintln!("(a) fresh client downloads {small} documents …");
    let (a, relay) = bench.measured("a.db", Job::Sync)?;
    let secs = a.report.duration.as_secs_f64();
    let target = 2.0 / scale as f64;
    rows.push(Row {
        case: "a".into(),
        what: format!("fresh client downloads {small} docs ({} got)", a.docs),
        secs,
        target: format!("< {target} s"),
        met: Some(secs < target && a.docs == small as i64),
        r: a,
        relay,
    });

    let more = 9 * small;
    eprintln!("populating {more} more documents …");
    let (p, relay) = bench.measured(
        "populator.db",
        Job::Populate {
            customers: 9 * cust,
            visits: 9 * vis,
            quotes: 9 * quo,
        },
    )?;
    notes.push(format!(
        "population of {more} more documents: created in {:.1} s, uploaded in {:.2} s ({} changes, {} sent); relay peak {}",
        p.prepare_secs,
        p.report.duration.as_secs_f64(),
        p.report.changes_acked,
        bytes(p.report.bytes_sent),
        mib(relay.peak_kib)
    ));

    let big = 10 * small;
    eprintln!("(b) fresh client downloads {big} documents …");
    let (client_a_kib, relay_a_kib) = (rows[0].r.vm_hwm_kib, rows[0].relay.peak_kib);
    let (b, relay) = bench.measured("b.db", Job::Sync)?;
    let secs = b.report.duration.as_secs_f64();
    let target = 20.0 / scale as f64;
    // Flat: ten times the documents take less than three times the memory of (a) (holding
    // documents in memory would take about ten times as much).
    let flat = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => b < 3 * a,
        _ => true,
    };
    let flat_client = flat(Some(client_a_kib), Some(b.vm_hwm_kib));
    let flat_relay = flat(relay_a_kib, relay.peak_kib);
    notes.push(format!(
        "memory for ten times the documents, (a) → (b): client {} → {}, relay {} → {}",
        mib(Some(client_a_kib)),
        mib(Some(b.vm_hwm_kib)),
        mib(relay_a_kib),
        mib(relay.peak_kib)
    ));
    rows.push(Row {
        case: "b".into(),
        what: format!("fresh client downloads {big} docs ({} got)", b.docs),
        secs,
        target: format!("< {target} s, flat memory"),
        met: Some(secs < target && b.docs == big as i64 && flat_client && flat_relay),
        r: b,
        relay,
    });

    eprintln!("(c) one changed field …");
    // The populator's session ended as soon as its last upload was acknowledged; a short sync
    // first lets its cursor catch up, so (c′) shows only the edit.
    let (catch_up, _) = bench.measured("populator.db", Job::Sync)?;
    notes.push(format!(
        "before (c′) the populating client caught up its own cursor: {} received in {:.2} s",
        bytes(catch_up.report.bytes_received),
        catch_up.report.duration.as_secs_f64()
    ));
    let (up, relay) = bench.measured("populator.db", Job::EditOneField)?;
    let up_payload = (up.report.bytes_sent + up.report.bytes_received)
        .saturating_sub(up.hello_bytes + up.welcome_bytes);
    rows.push(Row {
        case: "c′".into(),
        what: format!(
            "the other laptop uploads that field ({} change): upload and pull pipelined, {up_payload} B sync payload",
            up.report.changes_acked
        ),
        secs: up.report.duration.as_secs_f64(),
        target: "—".into(),
        met: None,
        r: up,
        relay,
    });
    let (c, relay) = bench.measured("b.db", Job::Sync)?;
    // Every frame after the `Hello` is answered, but the first flight's `Outbox` report.
    let rtts = c.report.frames_sent.saturating_sub(2);
    let payload = (c.report.bytes_sent + c.report.bytes_received)
        .saturating_sub(c.hello_bytes + c.welcome_bytes);
    rows.push(Row {
        case: "c".into(),
        what: format!(
            "synced client gets one changed field: {rtts} round trip(s) after the handshake, {payload} B sync payload ({} change)",
            c.report.changes_received
        ),
        secs: c.report.duration.as_secs_f64(),
        target: "1 round trip, < 300 B".into(),
        met: Some(rtts == 1 && payload < 300 && c.report.changes_received == 1),
        r: c,
        relay,
    });

    eprintln!("(d) {edits} offline edits …");
    let (d, relay) = bench.measured("b.db", Job::EditThenSync { edits })?;
    let secs = d.report.duration.as_secs_f64();
    let target = 2.0 / scale as f64;
    notes.push(format!(
        "(d) the {edits} edits took {:.1} s to make offline (one transaction each, not timed)",
        d.prepare_secs
    ));
    rows.push(Row {
        case: "d".into(),
        what: format!(
            "client uploads {edits} offline edits ({} changes, {} acknowledged, {} left)",
            d.outbox_before, d.report.changes_acked, d.outbox
        ),
        secs,
        target: format!("< {target} s"),
        met: Some(
            secs < target
                && d.outbox_before >= edits as u64
                && d.report.changes_acked == d.outbox_before
                && d.outbox == 0,
        ),
        r: d,
        relay,
    });
    let (d2, relay) = bench.measured("populator.db", Job::Sync)?;
    rows.push(Row {
        case: "d′".into(),
        what: format!(
            "another client downloads those edits ({} changes)",
            d2.report.changes_received
        ),
        secs: d2.report.duration.as_secs_f64(),
        target: "—".into(),
        met: None,
        r: d2,
        relay,
    });

    let Bench { tmp, relay } = bench;
    relay.stop();
    drop(tmp);

    println!();
    print_table(&rows);
    println!();
    for n in notes {
        println!("- {n}");
    }
    println!(
        "- machine: {} CPUs, load average {load_before} before and {} after the run (other \
         processes compete for the CPUs when it is above 0)",
        std::thread::available_parallelism().map_or(0, usize::from),
        procs::loadavg()
    );
    println!(
        "- relay: {mode}; bytes are protocol frame bytes (length prefixes included, QUIC/TLS/UDP \
         overhead not); RSS values are VmHWM, reset before each case"
    );
    let missed: Vec<&str> = rows
        .iter()
        .filter(|r| r.met == Some(false))
        .map(|r| r.case.as_str())
        .collect();
    if quick {
        println!(
            "- --quick: a tenth of the documents and edits, targets scaled by a tenth (fixed costs \
             such as the handshake weigh more)"
        );
    }
    if missed.is_empty() {
        println!("- every target met");
    } else {
        println!("- targets missed: {}", missed.join(", "));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        let r = args
            .get(1)
            .context("worker needs its job")
            .and_then(|j| Ok(serde_json::from_str::<WorkerArgs>(j)?))
            .and_then(worker)
            .and_then(|r| Ok(serde_json::to_string(&r)?));
        return match r {
            Ok(line) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("worker error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let mut quick = false;
    let mut in_process = false;
    for a in &args {
        match a.as_str() {
            "--quick" => quick = true,
            "--in-process" => in_process = true,
            "-h" | "--help" => {
                println!(
                    "usage: fieldsync-syncbench [--quick] [--in-process]\n\
                     Sync benchmark on 127.0.0.1: prints a table, asserts nothing about time.\n\
                     The relay binary is built with this binary's profile (or taken from\n\
                     $FIELDSYNC_BIN_DIR); --in-process runs the relay in this process."
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?} (try --help)");
                return ExitCode::FAILURE;
            }
        }
    }
    let separate = !in_process
        && match procs::binary(procs::RELAY_BIN) {
            Ok(_) => true,
            Err(e) => {
                eprintln!(
                    "note: no fieldsync-relay binary ({e:#}); running the relay in this process"
                );
                false
            }
        };
    match orchestrate(quick, separate) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

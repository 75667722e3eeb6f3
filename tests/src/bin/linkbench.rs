//! `fieldsync-linkbench`: sync over emulated field links. Prints a table; asserts nothing about
//! time.
//!
//! ```sh
//! cargo run --release -p fieldsync-tests --bin fieldsync-linkbench              # the matrix (~10 min)
//! cargo run --release -p fieldsync-tests --bin fieldsync-linkbench -- --quick   # 512 kbit/s only (~2 min)
//! cargo run --release -p fieldsync-tests --bin fieldsync-linkbench -- --cc all  # controllers side by side (~15 min)
//! RUST_LOG=fieldsync_relay=debug …  # also each connection's path: rtt, window, packets sent and lost
//! ```
//!
//! A relay runs in this process on 127.0.0.1; every laptop reaches it through a
//! [`FaultProxy`] that emulates a field link in both directions: a bottleneck rate, a one-way
//! delay of half the round trip, a bottleneck queue of half a second of the link (at least
//! 8 KiB, tail drop), and one of: no loss, independent random loss, bursty loss
//! (Gilbert–Elliott: 2 % chance per packet of entering a bad state that loses every packet and
//! lasts 5 packets on average, about 9 % loss), or a cut of 5 s every 20 s. Links: 64 kbit/s
//! with 800 ms round trips (satellite), 512 kbit/s with 300 ms (edge cellular), 2 Mbit/s with
//! 100 ms.
//!
//! Cases:
//! - **download N**: a fresh laptop downloads the relay's N documents (a real book's mix of
//!   customers, visits and quotes);
//! - **upload 500**: a synced laptop uploads 500 offline edits;
//! - **one field**: a synced laptop uploads one changed field and catches up;
//! - **edit during download**: a fresh laptop starts downloading N documents, and 1 s later the
//!   rep changes one field of a customer it already has; the row shows how long that change
//!   took to be stored on the relay while the download went on.
//! - **catch-up**: two laptops synced before the office wrote 10,000 notes, round after round
//!   over every customer; one has visits planned with five customers tomorrow (whose notes come
//!   late in each round), the other no plan; each catches up, and the row shows when the five were
//!   current on it (the planned laptop names them first: their entries come in a lane ahead of
//!   the rest).
//!
//! Columns: seconds from the first packet to synced; frame bytes each way (length prefixes
//! included, QUIC/TLS/UDP overhead not); the floor (the same documents' uncompressed
//! snapshots, or the uploaded changes, compressed together with zstd level 3) and bytes ÷ floor;
//! utilisation (the payload direction's frame bytes ÷ what the link carries in that time); link
//! busy (the UDP payloads the bottleneck carried in that direction, retransmissions and QUIC
//! and TLS headers included, ÷ its capacity; with the drops at its queue); round trips (frames
//! the laptop sent: its `Hello`, each pull and each upload).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fieldsync_client::Client;
use fieldsync_client::sync::{SyncConfig, SyncReport, sync_now};
use fieldsync_core::DocId;
use fieldsync_core::congestion::Congestion;
use fieldsync_core::display::format_bytes;
use fieldsync_core::model::{CustomerEdit, CustomerField, NewVisit, VisitStatus};
use fieldsync_relay::{Relay, RelayConfig};
use fieldsync_tests::faultproxy::{FaultProxy, FaultStats};
use fieldsync_tests::fieldlink::{EDGE, FAST, Faults, Link, SATELLITE};
use fieldsync_tests::floor;
use fieldsync_tests::workload::{office_notes, offline_edits, populate, some_ids};

/// One measured row.
struct Row {
    cc: Congestion,
    case: String,
    link: Link,
    faults: Faults,
    secs: f64,
    report: SyncReport,
    /// Floor of the payload direction, bytes.
    floor: Option<u64>,
    /// Payload direction: true when the laptop uploads.
    upload: bool,
    /// What the emulated link carried (UDP payloads, retransmissions included).
    link_stats: Option<FaultStats>,
    note: String,
}

impl Row {
    fn payload(&self) -> u64 {
        if self.upload {
            self.report.bytes_sent
        } else {
            self.report.bytes_received
        }
    }
}

/// The relay, its population, and the laptops' files.
struct Bench {
    rt: tokio::runtime::Runtime,
    relay: Option<Relay>,
    dir: tempfile::TempDir,
    cc: Congestion,
    populator: Client,
    docs: usize,
    next: usize,
    seed: u64,
    /// Catch-up cases prepared so far.
    catch_ups: usize,
    /// The case running now, and the cases that failed.
    current: String,
    failures: Vec<String>,
}

impl Bench {
    fn start(cc: Congestion) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let dir = tempfile::tempdir()?;
        // One device uploads the whole population: past any daily quota, which is not what is
        // measured here.
        const NO_QUOTA: u64 = 1 << 50;
        let relay = rt.block_on(Relay::start(RelayConfig {
            data_dir: dir.path().join("relay"),
            listen: "127.0.0.1:0".parse()?,
            open_enrollment: true,
            quota_new_documents_per_day: NO_QUOTA,
            quota_bytes_per_day: NO_QUOTA,
            congestion: cc,
            ..Default::default()
        }))?;
        let populator = Client::open(dir.path().join("populator.db"))?;
        Ok(Self {
            rt,
            relay: Some(relay),
            dir,
            cc,
            populator,
            docs: 0,
            next: 0,
            seed: 1,
            catch_ups: 0,
            current: String::new(),
            failures: Vec::new(),
        })
    }

    /// Announces the case about to run (and remembers it for a failure's line).
    fn start_case(&mut self, what: String) {
        eprintln!("{what}");
        self.current = what;
    }

    /// Keeps a measured row, or the case's failure (a sync can fail on a bad link: the row
    /// says so and the run goes on).
    fn keep(&mut self, rows: &mut Vec<Row>, row: anyhow::Result<Row>) {
        match row {
            Ok(r) => rows.push(r),
            Err(e) => {
                eprintln!("failed: {e:#}");
                self.failures.push(format!(
                    "{} failed: {e:#}",
                    self.current.trim_end_matches(" …")
                ));
            }
        }
    }

    fn relay(&self) -> anyhow::Result<&Relay> {
        self.relay.as_ref().context("the relay stopped")
    }

    fn config(&self, addr: SocketAddr) -> anyhow::Result<SyncConfig> {
        let mut cfg = SyncConfig::new(addr.to_string(), self.relay()?.fingerprint());
        cfg.congestion = self.cc;
        cfg.response_timeout = Duration::from_secs(600);
        cfg.connect_timeout = Duration::from_secs(60);
        Ok(cfg)
    }

    fn direct(&self) -> anyhow::Result<SyncConfig> {
        self.config(self.relay()?.local_addr())
    }

    /// Grows the relay's population to `total` documents (a tenth customers, seven tenths
    /// visits, a fifth quotes), uploaded over loopback.
    fn populate_to(&mut self, total: usize) -> anyhow::Result<()> {
        let more = total.saturating_sub(self.docs);
        if more == 0 {
            return Ok(());
        }
        eprintln!("[{}] populating {more} documents …", self.cc);
        populate(&self.populator, more / 10, more * 7 / 10, more / 5)?;
        let cfg = self.direct()?;
        let r = self.rt.block_on(sync_now(&self.populator, &cfg))?;
        if r.outbox_remaining != 0 {
            bail!("population left {} changes unsent", r.outbox_remaining);
        }
        self.docs = self.populator.with_store(|s| s.doc_count())? as usize;
        Ok(())
    }

    fn new_laptop(&mut self) -> anyhow::Result<Client> {
        self.next += 1;
        let path: PathBuf = self.dir.path().join(format!("laptop-{}.db", self.next));
        Ok(Client::open(path)?)
    }

    /// A laptop that downloaded everything over loopback.
    fn synced_laptop(&mut self) -> anyhow::Result<Client> {
        let laptop = self.new_laptop()?;
        let cfg = self.direct()?;
        self.rt.block_on(sync_now(&laptop, &cfg))?;
        Ok(laptop)
    }

    fn proxy(&mut self, link: Link, faults: Faults) -> anyhow::Result<FaultProxy> {
        self.seed += 1;
        let upstream = self.relay()?.local_addr();
        let config = faults.config(link, self.seed);
        Ok(self
            .rt
            .block_on(FaultProxy::start("127.0.0.1:0".parse()?, upstream, config))?)
    }

    /// One `sync_now` of `laptop` through a fresh emulated link.
    fn sync_through(
        &mut self,
        laptop: &Client,
        link: Link,
        faults: Faults,
    ) -> anyhow::Result<(SyncReport, FaultStats)> {
        let proxy = self.proxy(link, faults)?;
        let cfg = self.config(proxy.local_addr())?;
        let r = self.rt.block_on(sync_now(laptop, &cfg));
        let stats = proxy.stats();
        self.rt.block_on(proxy.shutdown());
        Ok((r?, stats))
    }

    fn row(&self, case: String, link: Link, faults: Faults, report: SyncReport) -> Row {
        Row {
            cc: self.cc,
            case,
            link,
            faults,
            secs: report.duration.as_secs_f64(),
            report,
            floor: None,
            upload: false,
            link_stats: None,
            note: String::new(),
        }
    }

    fn download(&mut self, link: Link, faults: Faults) -> anyhow::Result<Row> {
        self.start_case(format!(
            "[{}] download {} over {} at {} …",
            self.cc,
            self.docs,
            link.name(),
            faults.name()
        ));
        let laptop = self.new_laptop()?;
        let (report, stats) = self.sync_through(&laptop, link, faults)?;
        let got = laptop.with_store(|s| s.doc_count())? as usize;
        let mut row = self.row(format!("download {}", self.docs), link, faults, report);
        row.link_stats = Some(stats);
        row.floor = Some(floor::download_floor(&laptop)?);
        if got != self.docs {
            row.note = format!("got {got} of {} documents", self.docs);
        }
        Ok(row)
    }

    fn upload(&mut self, edits: usize, link: Link, faults: Faults) -> anyhow::Result<Row> {
        self.start_case(format!(
            "[{}] upload {edits} edits over {} at {} …",
            self.cc,
            link.name(),
            faults.name()
        ));
        let laptop = self.synced_laptop()?;
        offline_edits(&laptop, edits)?;
        let waiting = laptop.outbox_len()?;
        let floor = floor::upload_floor(&laptop)?;
        let (report, stats) = self.sync_through(&laptop, link, faults)?;
        let mut row = self.row(format!("upload {edits} edits"), link, faults, report);
        row.link_stats = Some(stats);
        row.floor = Some(floor);
        row.upload = true;
        if row.report.changes_acked != waiting || row.report.outbox_remaining != 0 {
            row.note = format!(
                "{} of {waiting} changes acknowledged, {} left",
                row.report.changes_acked, row.report.outbox_remaining
            );
        }
        Ok(row)
    }

    fn one_field(&mut self, laptop: &Client, link: Link, faults: Faults) -> anyhow::Result<Row> {
        self.start_case(format!(
            "[{}] one field over {} at {} …",
            self.cc,
            link.name(),
            faults.name()
        ));
        let id = some_ids(laptop, "customers", 1)?[0];
        self.next += 1;
        laptop.customers().edit(
            id.into(),
            CustomerEdit::Set(
                CustomerField::Email,
                format!("desk{}@example.cn", self.next),
            ),
        )?;
        let (report, stats) = self.sync_through(laptop, link, faults)?;
        let mut row = self.row("one field".into(), link, faults, report);
        row.link_stats = Some(stats);
        if row.report.early_data {
            row.note = "0-RTT: the first flight went with the handshake".into();
        }
        row.upload = true;
        Ok(row)
    }

    /// A fresh laptop with one customer of its own downloads everything; 1 s in, the rep
    /// changes one field of that customer; the note says when the relay stored the change.
    fn edit_during_download(&mut self, link: Link, faults: Faults) -> anyhow::Result<Row> {
        self.start_case(format!(
            "[{}] edit during a download of {} over {} at {} …",
            self.cc,
            self.docs,
            link.name(),
            faults.name()
        ));
        let laptop = self.new_laptop()?;
        let id = own_customer(&laptop)?;
        let proxy = self.proxy(link, faults)?;
        let cfg = self.config(proxy.local_addr())?;
        let sync = {
            let laptop = laptop.clone();
            self.rt.spawn(async move { sync_now(&laptop, &cfg).await })
        };
        std::thread::sleep(Duration::from_secs(1));
        laptop.customers().edit(
            id.into(),
            CustomerEdit::Set(CustomerField::Stage, "order_customer".into()),
        )?;
        let edited = Instant::now();
        let heads: Vec<[u8; 32]> = laptop
            .with_store(|s| s.heads(id))?
            .into_iter()
            .map(|h| h.0)
            .collect();
        let store = self.relay()?.store().clone();
        let stored_after = wait_until(edited, &sync, || {
            let relay_heads = store
                .heads_of(&[id])?
                .into_iter()
                .next()
                .map(|(_, h)| h)
                .unwrap_or_default();
            Ok(heads.iter().all(|h| relay_heads.contains(h)))
        })?;
        let report = self.rt.block_on(sync)??;
        let stats = proxy.stats();
        self.rt.block_on(proxy.shutdown());
        let got = laptop.with_store(|s| s.doc_count())? as usize;
        let mut row = self.row(
            format!("edit during download {}", self.docs),
            link,
            faults,
            report,
        );
        row.link_stats = Some(stats);
        row.note = match stored_after {
            Some(d) => format!(
                "edit stored on the relay {:.2} s after it was made",
                d.as_secs_f64()
            ),
            None => "edit not stored before the download ended".into(),
        };
        // The laptop's own customer is on the relay now too.
        self.docs += 1;
        if got != self.docs {
            row.note += &format!("; got {got} of {} documents", self.docs);
        }
        Ok(row)
    }

    /// Two laptops synced before the office wrote about `notes` notes, round after round
    /// over every customer; one has visits planned with five customers tomorrow (their notes
    /// are late in every round), the other has no plan. Returns them and the five.
    fn prepare_catch_up(&mut self, notes: usize) -> anyhow::Result<(Client, Client, Vec<DocId>)> {
        eprintln!("[{}] preparing a catch-up of {notes} notes …", self.cc);
        let planned = self.synced_laptop()?;
        let unplanned = self.synced_laptop()?;
        let customers = some_ids(&self.populator, "customers", 1_000_000)?;
        let rounds = (notes / customers.len()).max(1);
        // Five customers late in every round, and new ones each time: the visits planned in
        // an earlier case are in every laptop's replica now, and would put those first.
        self.catch_ups += 1;
        let end = customers.len().saturating_sub(5 * (self.catch_ups - 1));
        let five = customers[end.saturating_sub(5)..end].to_vec();
        let tomorrow = fieldsync_core::ids::now_millis() + 24 * 3_600_000;
        for id in &five {
            planned.visits().create(NewVisit {
                customer_id: (*id).into(),
                kind: None,
                notes: Some("Service visit: HT-45 haul truck".into()),
                status: VisitStatus::Planned,
                at: Some(tomorrow),
                location: None,
            })?;
        }
        let cfg = self.direct()?;
        self.rt.block_on(sync_now(&planned, &cfg))?;
        office_notes(&self.populator, &customers, rounds)?;
        let r = self.rt.block_on(sync_now(&self.populator, &cfg))?;
        if r.outbox_remaining != 0 {
            bail!(
                "the office's notes left {} changes unsent",
                r.outbox_remaining
            );
        }
        Ok((planned, unplanned, five))
    }

    /// `laptop` catches up through the link; the note says when the `five` customers were as
    /// current on it as on the relay.
    fn catch_up(
        &mut self,
        laptop: &Client,
        five: &[DocId],
        label: &str,
        link: Link,
        faults: Faults,
    ) -> anyhow::Result<Row> {
        self.start_case(format!(
            "[{}] catch-up, {label}, over {} at {} …",
            self.cc,
            link.name(),
            faults.name()
        ));
        let want: Vec<Vec<automerge::ChangeHash>> = five
            .iter()
            .map(|id| self.populator.with_store(|s| s.heads(*id)))
            .collect::<Result<_, _>>()?;
        let proxy = self.proxy(link, faults)?;
        let cfg = self.config(proxy.local_addr())?;
        let started = Instant::now();
        let sync = {
            let laptop = laptop.clone();
            self.rt.spawn(async move { sync_now(&laptop, &cfg).await })
        };
        let current = |laptop: &Client| -> anyhow::Result<bool> {
            for (id, heads) in five.iter().zip(&want) {
                let mut have = laptop.with_store(|s| s.heads(*id))?;
                have.sort();
                let mut heads = heads.clone();
                heads.sort();
                if have != heads {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        let current_after = wait_until(started, &sync, || current(laptop))?;
        let report = self.rt.block_on(sync)??;
        let stats = proxy.stats();
        self.rt.block_on(proxy.shutdown());
        let mut row = self.row(format!("catch-up, {label}"), link, faults, report);
        row.link_stats = Some(stats);
        row.note = match current_after.or_else(|| current(laptop).ok()?.then(|| started.elapsed()))
        {
            Some(d) => format!(
                "the five planned customers current after {:.1} s",
                d.as_secs_f64()
            ),
            None => "the five planned customers not current at the end".into(),
        };
        Ok(row)
    }

    fn stop(mut self) {
        if let Some(r) = self.relay.take() {
            let _ = self.rt.block_on(r.shutdown());
        }
    }
}

/// Polls `ready` every 20 ms while `sync` runs; how long after `since` it first held, or
/// `None` if the sync ended first.
fn wait_until<T>(
    since: Instant,
    sync: &tokio::task::JoinHandle<T>,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Option<Duration>> {
    loop {
        if ready()? {
            return Ok(Some(since.elapsed()));
        }
        if sync.is_finished() {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Creates one customer on `laptop`, offline (its first sync uploads it).
fn own_customer(laptop: &Client) -> anyhow::Result<DocId> {
    let id = laptop
        .customers()
        .create(fieldsync_core::model::NewCustomer {
            org: fieldsync_tests::workload::ORG.into(),
            scope: fieldsync_tests::workload::SCOPES[0].into(),
            name: "Edited during the download".into(),
            ..Default::default()
        })?;
    Ok(id.into())
}

fn print_table(rows: &[Row]) {
    println!(
        "| cc | case | link | loss | s | up | down | floor | ÷ floor | utilisation | link busy | round trips | note |"
    );
    println!("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let floor = r.floor.map_or("—".into(), format_bytes);
        let ratio = r.floor.map_or("—".into(), |f| {
            format!("{:.2}×", r.payload() as f64 / f.max(1) as f64)
        });
        let util = if r.case == "one field" {
            "—".into()
        } else {
            format!(
                "{:.0} %",
                100.0 * r.payload() as f64 / r.link.capacity(r.secs).max(1.0)
            )
        };
        // How busy the payload direction's bottleneck was: the UDP payloads it carried
        // (retransmissions and QUIC/TLS headers included) over its capacity.
        let busy = r.link_stats.as_ref().map_or("—".into(), |st| {
            let d = if r.upload { &st.up } else { &st.down };
            let queue = if d.dropped_queue > 0 {
                format!(", {} queue drops", d.dropped_queue)
            } else {
                String::new()
            };
            format!(
                "{:.0} %{queue}",
                100.0 * d.bytes_forwarded as f64 / r.link.capacity(r.secs).max(1.0)
            )
        });
        println!(
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {busy} | {} | {} |",
            r.cc,
            r.case,
            r.link.name(),
            r.faults.name(),
            r.secs,
            format_bytes(r.report.bytes_sent),
            format_bytes(r.report.bytes_received),
            floor,
            ratio,
            util,
            r.report.frames_sent,
            r.note
        );
    }
}

/// What to run.
struct Plan {
    quick: bool,
    controllers: Vec<Congestion>,
    compare: bool,
}

/// The matrix for one controller.
fn run_matrix(bench: &mut Bench, plan: &Plan, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let small = if plan.quick { 1_000 } else { 3_000 };
    bench.populate_to(small)?;
    if plan.compare {
        for f in [
            Faults::None,
            Faults::Random(5),
            Faults::Random(20),
            Faults::Bursty,
        ] {
            {
                let r = bench.download(EDGE, f);
                bench.keep(rows, r);
            }
        }
        if !plan.quick {
            {
                let r = bench.download(SATELLITE, Faults::Random(5));
                bench.keep(rows, r);
            }
            {
                let r = bench.download(FAST, Faults::Random(20));
                bench.keep(rows, r);
            }
        }
        {
            let r = bench.upload(500, EDGE, Faults::Random(20));
            bench.keep(rows, r);
        }
        return Ok(());
    }
    let edge_faults: &[Faults] = if plan.quick {
        &[Faults::None, Faults::Random(20)]
    } else {
        &[
            Faults::None,
            Faults::Random(5),
            Faults::Random(20),
            Faults::Bursty,
        ]
    };
    for &f in edge_faults {
        {
            let r = bench.download(EDGE, f);
            bench.keep(rows, r);
        }
    }
    if !plan.quick {
        for f in [Faults::None, Faults::Random(5)] {
            {
                let r = bench.download(SATELLITE, f);
                bench.keep(rows, r);
            }
        }
        for f in [Faults::None, Faults::Random(20)] {
            {
                let r = bench.download(FAST, f);
                bench.keep(rows, r);
            }
        }
    }
    for &f in edge_faults {
        {
            let r = bench.upload(500, EDGE, f);
            bench.keep(rows, r);
        }
    }
    if !plan.quick {
        {
            let r = bench.upload(500, SATELLITE, Faults::Random(5));
            bench.keep(rows, r);
        }
    }
    let laptop = bench.synced_laptop()?;
    for &f in edge_faults {
        {
            let r = bench.one_field(&laptop, EDGE, f);
            bench.keep(rows, r);
        }
    }
    if !plan.quick {
        {
            let r = bench.one_field(&laptop, SATELLITE, Faults::Random(5));
            bench.keep(rows, r);
        }
        bench.populate_to(10_000)?;
        for f in [Faults::None, Faults::Random(20), Faults::Cuts] {
            {
                let r = bench.download(EDGE, f);
                bench.keep(rows, r);
            }
        }
    }
    for &f in edge_faults {
        {
            let r = bench.edit_during_download(EDGE, f);
            bench.keep(rows, r);
        }
    }
    for &f in edge_faults {
        let (planned, unplanned, five) = bench.prepare_catch_up(10_000)?;
        {
            let r = bench.catch_up(&planned, &five, "five customers planned", EDGE, f);
            bench.keep(rows, r);
        }
        {
            let r = bench.catch_up(&unplanned, &five, "no plan", EDGE, f);
            bench.keep(rows, r);
        }
    }
    Ok(())
}

fn run(plan: &Plan) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for &cc in &plan.controllers {
        let mut bench = Bench::start(cc)?;
        let r = run_matrix(&mut bench, plan, &mut rows);
        failures.append(&mut bench.failures);
        bench.stop();
        r?;
    }
    println!();
    print_table(&rows);
    println!();
    for f in &failures {
        println!("- {f}");
    }
    println!(
        "- links emulated by fieldsync-faultproxy on 127.0.0.1 (both directions: the rate, half \
         the round trip each way, a queue of half a second of the link or 8 KiB, the loss); \
         bytes are protocol frame bytes; utilisation is the payload direction's frame bytes ÷ \
         the link's capacity over the row's seconds (QUIC, TLS and UDP headers and \
         retransmissions count against it)"
    );
    println!(
        "- {} CPUs, load average {}; whole run {:.0} s",
        std::thread::available_parallelism().map_or(0, usize::from),
        fieldsync_tests::procs::loadavg(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    // `RUST_LOG=fieldsync_relay=debug` shows each connection's path statistics.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut plan = Plan {
        quick: false,
        controllers: vec![Congestion::default()],
        compare: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => plan.quick = true,
            "--compare" => plan.compare = true,
            "--cc" => {
                let Some(list) = args.next() else {
                    eprintln!(
                        "--cc needs field, bbr, cubic, newreno, a comma-separated list or all"
                    );
                    return ExitCode::FAILURE;
                };
                let picked: Result<Vec<Congestion>, _> = if list == "all" {
                    Ok(Congestion::ALL.to_vec())
                } else {
                    list.split(',').map(Congestion::from_str).collect()
                };
                match picked {
                    Ok(cc) => {
                        plan.compare |= cc.len() > 1;
                        plan.controllers = cc;
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: fieldsync-linkbench [--quick] [--compare] [--cc field|bbr|cubic|newreno|LIST|all]\n\
                     Sync over emulated field links (fieldsync-faultproxy in this process): \
                     prints a table, asserts nothing about time.\n\
                     --quick: 1,000 documents, the 512 kbit/s link at 0 and 20 % loss.\n\
                     --cc all (or a comma-separated list): controllers side by side on lossy links\n\
                     (the --compare cases: fresh downloads on lossy links and a lossy upload)."
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?} (try --help)");
                return ExitCode::FAILURE;
            }
        }
    }
    match run(&plan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `fieldsync-filebench`: attachments (photos, signed PDFs) over emulated field links. Prints a
//! table; asserts nothing about time.
//!
//! ```sh
//! cargo run --release -p fieldsync-tests --bin fieldsync-filebench -- --quick  # 512 kbit/s, ~4 min
//! cargo run --release -p fieldsync-tests --bin fieldsync-filebench             # the matrix, ~45 min
//! cargo run --release -p fieldsync-tests --bin fieldsync-filebench -- --edit   # the edit rows only, ~1 min
//! cargo run --release -p fieldsync-tests --bin fieldsync-filebench -- --field  # 20 × 3 MiB, 512 kbit/s, 5 % loss and a cut every 20 s, ~40 min
//! ```
//!
//! A relay runs in this process on 127.0.0.1; laptops reach it through a [`FaultProxy`] that
//! emulates a field link ([`fieldsync_tests::fieldlink`]). Cases:
//! - **upload N × S**: a laptop runs its background sync ([`SyncHandle`]) and attaches N photos
//!   of S bytes to a visit; the row ends when the relay holds every one.
//! - **download N × S**: a second laptop, already holding the visit, asks for the photos; the
//!   row ends when it holds every one, verified.
//! - **edit during upload**: while a 10 MB photo uploads, the rep changes one field of a
//!   customer; the row shows how long that change took to be stored on the relay, and how much
//!   of the photo was still to go then.
//!
//! Columns: seconds; the attachment bytes; utilisation (those bytes ÷ what the link carries in
//! that time: photos do not compress, so the bytes themselves are the floor); link busy (the
//! UDP payloads the bottleneck carried in the payload direction, retransmissions and headers
//! included, ÷ its capacity; with the drops at its queue).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fieldsync_client::sync::{SyncConfig, SyncHandle};
use fieldsync_client::{BlobHash, Client, CustomerEdit, CustomerField, NewCustomer, NewVisit};
use fieldsync_core::display::format_bytes;
use fieldsync_core::model::VisitStatus;
use fieldsync_relay::{Relay, RelayConfig};
use fieldsync_tests::faultproxy::{FaultProxy, FaultStats};
use fieldsync_tests::fieldlink::{EDGE, FAST, Faults, Link, SATELLITE};

/// One measured row.
struct Row {
    case: String,
    link: Link,
    faults: Faults,
    secs: f64,
    bytes: u64,
    /// Bytes in the payload direction: up for uploads.
    up: bool,
    stats: FaultStats,
    note: String,
}

/// A photo's bytes: noise, as incompressible as a JPEG.
fn photo(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Bench {
    rt: tokio::runtime::Runtime,
    relay: Relay,
    dir: tempfile::TempDir,
    seq: u64,
}

impl Bench {
    fn new() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let dir = tempfile::tempdir()?;
        let relay = rt.block_on(Relay::start(RelayConfig {
            data_dir: dir.path().join("relay"),
            listen: "127.0.0.1:0".parse()?,
            open_enrollment: true,
            attachment_max_file_bytes: 64 << 20,
            attachment_quota_bytes: 0,
            ..RelayConfig::default()
        }))?;
        Ok(Self {
            rt,
            relay,
            dir,
            seq: 0,
        })
    }

    fn laptop(&mut self) -> anyhow::Result<Client> {
        self.seq += 1;
        Ok(Client::open(
            self.dir.path().join(format!("laptop-{}.db", self.seq)),
        )?)
    }

    fn config(&self, proxy: Option<&FaultProxy>) -> SyncConfig {
        let addr = proxy.map_or(self.relay.local_addr(), FaultProxy::local_addr);
        let mut cfg = SyncConfig::new(addr.to_string(), self.relay.fingerprint());
        cfg.response_timeout = Duration::from_secs(600);
        cfg.connect_timeout = Duration::from_secs(60);
        cfg.poll_interval = Duration::from_millis(100);
        cfg
    }

    fn proxy(&self, link: Link, faults: Faults) -> anyhow::Result<FaultProxy> {
        let seed = self.seq;
        Ok(self.rt.block_on(FaultProxy::start(
            "127.0.0.1:0".parse()?,
            self.relay.local_addr(),
            faults.config(link, seed),
        ))?)
    }

    /// A visit, synced directly (not through the link) by `laptop`.
    fn visit(&self, laptop: &Client) -> anyhow::Result<fieldsync_client::VisitId> {
        let c = laptop.customers().create(NewCustomer {
            scope: "north".into(),
            name: format!("Customer {}", self.seq),
            ..Default::default()
        })?;
        let v = laptop.visits().create(NewVisit {
            customer_id: c,
            kind: Some("service_repair".into()),
            notes: Some("worn seal".into()),
            status: VisitStatus::Done,
            at: None,
            location: None,
        })?;
        self.rt
            .block_on(fieldsync_client::sync::sync_now(laptop, &self.config(None)))?;
        Ok(v)
    }

    /// Waits (bounded) until `done`, checking every 50 ms.
    fn wait(
        &self,
        what: &str,
        mut done: impl FnMut() -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let limit = Instant::now() + Duration::from_secs(3 * 3600);
        while !done()? {
            if Instant::now() > limit {
                bail!("{what} did not finish within 3 hours");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Uploads `n` photos of `size` bytes over the link, then downloads them on another laptop.
    fn photos(
        &mut self,
        n: usize,
        size: usize,
        link: Link,
        faults: Faults,
    ) -> anyhow::Result<[Row; 2]> {
        eprintln!(
            "{n} × {} over {} at {} …",
            format_bytes(size as u64),
            link.name(),
            faults.name()
        );
        let li = self.laptop()?;
        let visit = self.visit(&li)?;
        let wang = self.laptop()?;
        self.rt
            .block_on(fieldsync_client::sync::sync_now(&wang, &self.config(None)))?;
        let photos: Vec<Vec<u8>> = (0..n)
            .map(|i| photo(size, self.seq * 100 + i as u64))
            .collect();
        let proxy = self.proxy(link, faults)?;
        let handle = {
            let _g = self.rt.enter();
            SyncHandle::start(li.clone(), self.config(Some(&proxy)))
        };
        let started = Instant::now();
        let mut hashes: Vec<(BlobHash, u64)> = Vec::new();
        for (i, p) in photos.iter().enumerate() {
            let a = li.attachments().attach_bytes(
                visit,
                &format!("photo-{i}.jpg"),
                Some("image/jpeg"),
                p,
                "",
            )?;
            hashes.push((a.attachment.hash, a.attachment.size));
        }
        self.wait("the upload", || {
            Ok(li.attachments().waiting()?.upload_files == 0)
        })?;
        let up_secs = started.elapsed().as_secs_f64();
        let up_stats = proxy.stats();
        self.rt.block_on(handle.stop());
        self.rt.block_on(proxy.shutdown());
        let total = (n * size) as u64;
        let up = Row {
            case: format!("upload {n} × {}", format_bytes(size as u64)),
            link,
            faults,
            secs: up_secs,
            bytes: total,
            up: true,
            stats: up_stats,
            note: String::new(),
        };

        // The other laptop already has the visit (from before): it asks for the photos.
        self.rt
            .block_on(fieldsync_client::sync::sync_now(&wang, &self.config(None)))?;
        let proxy = self.proxy(link, faults)?;
        for (h, s) in &hashes {
            wang.attachments().fetch(visit, *h, *s)?;
        }
        let started = Instant::now();
        let handle = {
            let _g = self.rt.enter();
            SyncHandle::start(wang.clone(), self.config(Some(&proxy)))
        };
        self.wait("the download", || {
            Ok(wang.attachments().waiting()?.download_files == 0)
        })?;
        let down_secs = started.elapsed().as_secs_f64();
        let down_stats = proxy.stats();
        self.rt.block_on(handle.stop());
        self.rt.block_on(proxy.shutdown());
        for ((h, _), p) in hashes.iter().zip(&photos) {
            if &wang.attachments().read(*h)? != p {
                bail!("a downloaded photo differs from the original");
            }
        }
        let down = Row {
            case: format!("download {n} × {}", format_bytes(size as u64)),
            link,
            faults,
            secs: down_secs,
            bytes: total,
            up: false,
            stats: down_stats,
            note: "verified".into(),
        };
        Ok([up, down])
    }

    /// How long a one-field edit takes to reach the relay while a 10 MB photo uploads.
    fn edit_during_upload(&mut self, link: Link, faults: Faults) -> anyhow::Result<Row> {
        eprintln!(
            "edit during a 10 MB upload over {} at {} …",
            link.name(),
            faults.name()
        );
        let li = self.laptop()?;
        let visit = self.visit(&li)?;
        let customer = li.visits().get(visit)?.customer_id;
        let size = 10 << 20;
        let big = photo(size, self.seq);
        let proxy = self.proxy(link, faults)?;
        let handle = {
            let _g = self.rt.enter();
            SyncHandle::start(li.clone(), self.config(Some(&proxy)))
        };
        li.attachments()
            .attach_bytes(visit, "loader.jpg", Some("image/jpeg"), &big, "")?;
        // Let the upload fill the link first.
        let attached = Instant::now();
        std::thread::sleep(Duration::from_secs(8));
        let before = proxy.stats();
        let busy_secs = attached.elapsed().as_secs_f64();
        let store = self.relay.store().clone();
        let high = store.high_seq()?;
        li.customers().edit(
            customer,
            CustomerEdit::Set(CustomerField::Industry, "mining".into()),
        )?;
        let edited = Instant::now();
        self.wait("the edit", || Ok(store.high_seq()? > high))?;
        let delay = edited.elapsed().as_secs_f64();
        self.rt.block_on(handle.stop());
        self.rt.block_on(proxy.shutdown());
        // The columns describe the upload before the edit: what the link carried then.
        let up = before
            .direction(fieldsync_tests::faultproxy::Direction::Up)
            .bytes_forwarded;
        Ok(Row {
            case: "edit during 10 MB upload".into(),
            link,
            faults,
            secs: busy_secs,
            bytes: up,
            up: true,
            stats: before,
            note: format!(
                "the upload ran {busy_secs:.1} s and had {} of 10 MiB to go; the one-field edit made then was stored on the relay {delay:.2} s later",
                format_bytes((size as u64).saturating_sub(up))
            ),
        })
    }
}

fn print(rows: &[Row]) {
    println!("| case | link | loss | seconds | bytes | utilisation | link busy (drops) | note |");
    println!("|---|---|---|---:|---:|---:|---:|---|");
    for r in rows {
        let dir = if r.up {
            r.stats
                .direction(fieldsync_tests::faultproxy::Direction::Up)
        } else {
            r.stats
                .direction(fieldsync_tests::faultproxy::Direction::Down)
        };
        let cap = r.link.capacity(r.secs);
        println!(
            "| {} | {} | {} | {:.1} | {} | {:.0} % | {:.0} % ({}) | {} |",
            r.case,
            r.link.name(),
            r.faults.name(),
            r.secs,
            format_bytes(r.bytes),
            100.0 * r.bytes as f64 / cap,
            100.0 * dir.bytes_forwarded as f64 / cap,
            dir.dropped_queue,
            r.note
        );
    }
}

fn run(quick: bool, edit_only: bool, field: bool) -> anyhow::Result<()> {
    let mut bench = Bench::new().context("starting the relay")?;
    let mut rows = Vec::new();
    if field {
        rows.extend(bench.photos(20, 3 << 20, EDGE, Faults::RandomAndCuts(5))?);
    } else if edit_only {
        for f in [Faults::None, Faults::Random(5)] {
            rows.push(bench.edit_during_upload(EDGE, f)?);
        }
    } else if quick {
        rows.extend(bench.photos(5, 1 << 20, EDGE, Faults::Random(5))?);
        rows.push(bench.edit_during_upload(EDGE, Faults::None)?);
    } else {
        rows.extend(bench.photos(20, 3 << 20, EDGE, Faults::Random(5))?);
        rows.extend(bench.photos(20, 3 << 20, EDGE, Faults::Cuts)?);
        rows.extend(bench.photos(2, 1 << 20, SATELLITE, Faults::Random(5))?);
        rows.extend(bench.photos(20, 3 << 20, FAST, Faults::Random(5))?);
        for f in [Faults::None, Faults::Random(5)] {
            rows.push(bench.edit_during_upload(EDGE, f)?);
        }
        rows.push(bench.edit_during_upload(SATELLITE, Faults::None)?);
    }
    print(&rows);
    Ok(())
}

fn main() -> ExitCode {
    let quick = std::env::args().any(|a| a == "--quick");
    let edit_only = std::env::args().any(|a| a == "--edit");
    let field = std::env::args().any(|a| a == "--field");
    match run(quick, edit_only, field) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldsync-filebench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

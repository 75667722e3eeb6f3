//! `fieldsync-devicebench`: what the number of enrolled devices costs the relay.
//!
//! For each backend (the SQLite file; PostgreSQL when `--pg` names a server, or the local
//! one answers) and each fleet size in `--sizes`, enrols that many devices straight into a
//! fresh store, then times what happens per connection and per IT action:
//! - a login (`authenticate`: the device's row and its credential) and a grant re-check
//!   (`device_grant`, which every live connection runs after any device change);
//! - the revocation poll every connection's relay runs each second (`poll_devices`);
//! - `device list` (every device with its usage today) and revoking one device by name.
//!
//! It prints a table, not a verdict: p50/p99 of 2,000 logins and grant checks, the median of
//! 50 polls, and single timings of the list and the revocation.
//!
//! `cargo run --release -p fieldsync-tests --bin fieldsync-devicebench -- [--sizes 100,20000]`

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use fieldsync_client::Role;
use fieldsync_relay::store::postgres::ScratchDatabase;
use fieldsync_relay::{PgRelayStore, RelayStore, RelayStoreOptions, SqliteRelayStore};
use rand::{RngExt, SeedableRng};
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(
    name = "fieldsync-devicebench",
    about = "What the number of enrolled devices costs the relay: a table"
)]
struct Cli {
    /// Fleet sizes to measure, comma-separated.
    #[arg(long, default_value = "100,20000", value_delimiter = ',')]
    sizes: Vec<usize>,
    /// PostgreSQL server for the second backend (a scratch database is made and dropped);
    /// default: the local server, skipped when it does not answer.
    #[arg(long)]
    pg: Option<String>,
    /// Only the SQLite backend.
    #[arg(long)]
    sqlite_only: bool,
}

/// One backend at one fleet size.
struct Row {
    backend: &'static str,
    devices: usize,
    enrol: Duration,
    login: (Duration, Duration),
    grant: (Duration, Duration),
    poll: Duration,
    list: Duration,
    revoke: Duration,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut rows = Vec::new();
    for &n in &cli.sizes {
        let dir = tempfile::tempdir()?;
        let store =
            SqliteRelayStore::open(dir.path().join("relay.db"), RelayStoreOptions::default())?;
        rows.push(measure("SQLite", RelayStore::Sqlite(store), n)?);
        if cli.sqlite_only {
            continue;
        }
        let server = cli.pg.clone().unwrap_or_else(ScratchDatabase::server_url);
        match ScratchDatabase::create(&server) {
            Ok(db) => {
                let store = PgRelayStore::open(db.url(), RelayStoreOptions::default())?;
                rows.push(measure("PostgreSQL", RelayStore::Postgres(store), n)?);
            }
            Err(e) if cli.pg.is_none() => {
                eprintln!("PostgreSQL skipped ({server}: {e})");
            }
            Err(e) => return Err(e).context("creating a scratch PostgreSQL database"),
        }
    }
    println!();
    println!("## fieldsync-devicebench");
    println!(
        "| backend | enrolled | enrol (each) | login p50 / p99 | grant check p50 / p99 | revocation poll | device list | revoke by name |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} / {} | {} / {} | {} | {} | {} |",
            r.backend,
            r.devices,
            fmt(r.enrol / u32::try_from(r.devices.max(1)).unwrap_or(u32::MAX)),
            fmt(r.login.0),
            fmt(r.login.1),
            fmt(r.grant.0),
            fmt(r.grant.1),
            fmt(r.poll),
            fmt(r.list),
            fmt(r.revoke),
        );
    }
    Ok(())
}

fn measure(backend: &'static str, store: RelayStore, n: usize) -> anyhow::Result<Row> {
    eprintln!("{backend}: enrolling {n} devices");
    let t = Instant::now();
    let mut fleet = Vec::with_capacity(n);
    for i in 0..n {
        let e = store.enrol_device(
            None,
            &format!("rep {i:05}"),
            Role::Rep,
            &[format!("territory {}", i % 200)],
        )?;
        fleet.push((e.device_id, e.secret));
    }
    let enrol = t.elapsed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut logins = Vec::new();
    let mut grants = Vec::new();
    for _ in 0..2000 {
        let (id, secret) = &fleet[rng.random_range(0..fleet.len())];
        let t = Instant::now();
        let ok = store.authenticate(*id, Some(secret))?;
        logins.push(t.elapsed());
        anyhow::ensure!(ok.is_some(), "device {id} refused");
        let t = Instant::now();
        store.device_grant(*id)?;
        grants.push(t.elapsed());
    }
    let mut polls = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        store.poll_devices()?;
        polls.push(t.elapsed());
    }
    let t = Instant::now();
    let listed = store.devices()?;
    let list = t.elapsed();
    anyhow::ensure!(listed.len() == n, "listed {} of {n}", listed.len());
    let victim = format!("rep {:05}", n / 2);
    let t = Instant::now();
    let revoked = store.revoke(&victim)?;
    let revoke = t.elapsed();
    anyhow::ensure!(!revoked.devices.is_empty(), "{victim} was not revoked");
    let unknown = Uuid::new_v4();
    anyhow::ensure!(store.authenticate(unknown, Some("x"))?.is_none());
    Ok(Row {
        backend,
        devices: n,
        enrol,
        login: percentiles(&mut logins),
        grant: percentiles(&mut grants),
        poll: percentiles(&mut polls).0,
        list,
        revoke,
    })
}

fn percentiles(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.99))
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

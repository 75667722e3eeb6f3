//! `fieldsync-importbench`: how long IT waits for `fieldsync-relay import` of an ERP export.
//!
//! Writes a CSV of `--customers` customers (two rows each: two contacts, two units of
//! equipment, a phone and an address, the shape of an ERP export), then runs the relay
//! binary's `import` into a fresh data directory three times: the first import (everything
//! created), the same file again (everything unchanged), and a file in which every tenth
//! customer has a new contact phone (those updated). Prints a table with the wall time, the
//! time per customer, the relay process's peak memory and the database's size.
//!
//! `cargo run --release -p fieldsync-tests --bin fieldsync-importbench -- [--customers 10000]`

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use fieldsync_tests::procs::{RELAY_BIN, binary, loadavg};

#[derive(Parser, Debug)]
#[command(
    name = "fieldsync-importbench",
    about = "Time `fieldsync-relay import`: a table"
)]
struct Cli {
    /// Customers in the file.
    #[arg(long, default_value_t = 10_000)]
    customers: usize,
}

fn export(customers: usize, changed_every: Option<usize>) -> String {
    let mut out = String::from(
        "external_id,name,scope,phone,industry,street,city,contact_name,contact_title,contact_phone,equipment_model,equipment_serial\n",
    );
    for i in 0..customers {
        let phone = match changed_every {
            Some(n) if i % n == 0 => format!("150{i:08}"),
            _ => format!("138{i:08}"),
        };
        let _ = writeln!(
            out,
            "ERP{i:06},Customer {i} Mining Co,region-{},+86 477 {i:07},mining,{i} Main Rd,City {},Wang {i},Buyer,{phone},CAT 320,SN{i:08}",
            i % 50,
            i % 300
        );
        let _ = writeln!(
            out,
            "ERP{i:06},,,,,,,Li {i},Engineer,139{i:08},CAT 950,SM{i:08}"
        );
    }
    out
}

/// Runs the import; returns (seconds, peak RSS in MiB, the summary line).
fn run(relay: &Path, data: &Path, file: &Path) -> anyhow::Result<(f64, f64, String)> {
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("maxrss_kib=%M")
        .arg(relay)
        .args(["import", "--data"])
        .arg(data)
        .arg(file)
        .env("RUST_LOG", "warn")
        .output()
        .context("running /usr/bin/time fieldsync-relay import")?;
    let secs = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("import failed: {stdout}{stderr}");
    }
    let rss = stderr
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kib="))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0);
    Ok((secs, rss, stdout.lines().last().unwrap_or("").to_string()))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let relay = binary(RELAY_BIN)?;
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("relay");
    let first = tmp.path().join("export.csv");
    let changed = tmp.path().join("export-changed.csv");
    std::fs::write(&first, export(cli.customers, None))?;
    std::fs::write(&changed, export(cli.customers, Some(10)))?;
    // A relay database to import into, as `device enroll` or a first `serve` leaves it.
    let made = Command::new(&relay)
        .args([
            "device", "enroll", "--name", "setup", "--role", "rep", "--scope", "x",
        ])
        .args(["--relay-addr", "relay.example:4433", "--data"])
        .arg(&data)
        .output()?;
    if !made.status.success() {
        bail!(
            "creating the relay database: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    println!(
        "fieldsync-relay import of {} customers ({} CSV rows, {:.1} MiB); load average {}",
        cli.customers,
        cli.customers * 2,
        std::fs::metadata(&first)?.len() as f64 / (1 << 20) as f64,
        loadavg()
    );
    println!();
    println!("| import | wall time | per customer | peak RSS | result |");
    println!("|---|---|---|---|---|");
    for (what, file) in [
        ("first (all created)", &first),
        ("same file again", &first),
        ("every 10th changed", &changed),
    ] {
        let (secs, rss, summary) = run(&relay, &data, file)?;
        println!(
            "| {what} | {secs:.2} s | {:.0} µs | {rss:.0} MiB | {summary} |",
            secs * 1e6 / cli.customers as f64
        );
    }
    let db = ["relay.db", "relay.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(data.join(f)).ok())
        .map(|m| m.len())
        .sum::<u64>();
    println!();
    println!(
        "relay database after the imports: {:.1} MiB",
        db as f64 / (1 << 20) as f64
    );
    Ok(())
}

//! `backup` and `restore`: a consistent copy of the embedded store, and putting one back
//! under a new epoch.

use std::path::PathBuf;

use clap::Args;
use fieldsync_relay::RelayConfig;

use crate::common::Common;

/// `backup`'s flags.
#[derive(Args, Debug)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    common: Common,
    /// Directory to write the backup into (created; must not hold a backup already).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// `restore`'s flags.
#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    common: Common,
    /// Directory holding the backup (written by `backup --out`).
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
}

/// Writes a backup while the relay keeps serving.
pub(crate) fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let cfg = a.common.load()?;
    embedded_only(&cfg, "back up")?;
    let s = fieldsync_relay::backup::backup(&cfg.data_dir, &a.out)?;
    println!(
        "backup written to {} ({} bytes; epoch {}, log position {}, {} documents, {} devices); integrity check ok",
        a.out.display(),
        s.bytes,
        s.epoch,
        s.high_seq,
        s.docs,
        s.devices
    );
    let blobs = a.out.join(fieldsync_relay::store::BLOBS_FILE);
    if blobs.is_file() {
        let b = fieldsync_relay::backup::inspect_attachments(&blobs)?;
        println!(
            "attachments: {} files, {}; integrity check ok",
            b.files,
            fieldsync_core::display::format_bytes(u64::try_from(b.bytes).unwrap_or(0))
        );
    }
    Ok(())
}

/// Puts a backup in place of a stopped relay's database.
pub(crate) fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let cfg = a.common.load()?;
    embedded_only(&cfg, "restore")?;
    let r = fieldsync_relay::backup::restore(&a.from, &cfg.data_dir)?;
    println!(
        "restored {} into {} under new epoch {} (the backup's was {}); log position {}, {} documents, {} devices",
        a.from.display(),
        cfg.data_dir.display(),
        r.summary.epoch,
        r.backup_epoch,
        r.summary.high_seq,
        r.summary.docs,
        r.summary.devices
    );
    if let Some(p) = &r.replaced {
        println!("the database it replaced is kept at {}", p.display());
    }
    if r.vouched > 0 {
        println!(
            "{} changes the replaced database held beyond the backup may come back from any device",
            r.vouched
        );
    }
    println!(
        "devices will compare their documents with the relay and re-upload what the backup lacks on their next sync, and offer their attachments again"
    );
    Ok(())
}

/// Backup and restore work on the embedded SQLite store; PostgreSQL has its own tools.
fn embedded_only(cfg: &RelayConfig, what: &str) -> anyhow::Result<()> {
    if cfg.database.is_some() {
        anyhow::bail!(
            "this relay uses PostgreSQL; {what} its database with PostgreSQL's tools (pg_dump / pg_restore), see the README"
        );
    }
    Ok(())
}

//! `attachment gc`: removing attachment bytes nothing needs any more.

use clap::Subcommand;
use fieldsync_core::attachment::relay::{Collect, collect_garbage};
use fieldsync_core::display::format_bytes;
use fieldsync_relay::store::RelayBlobs;

use crate::common::Common;

#[derive(Subcommand, Debug)]
pub(crate) enum AttachmentCmd {
    /// Remove attachment bytes no document refers to any more (after a day) and uploads
    /// abandoned part way (after a week). `serve` does this every hour on its own; works
    /// while the relay runs.
    Gc {
        #[command(flatten)]
        common: Common,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `attachment` command.
pub(crate) fn run(cmd: AttachmentCmd) -> anyhow::Result<()> {
    match cmd {
        AttachmentCmd::Gc { common, json } => {
            let store = common.store()?;
            let blobs = RelayBlobs::open(&store)?;
            let done = collect_garbage(
                &blobs,
                fieldsync_core::ids::now_millis(),
                Collect::default(),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                println!(
                    "Removed {} no document refers to and {} abandoned uploads ({})",
                    done.unreferenced,
                    done.abandoned,
                    format_bytes(done.bytes)
                );
            }
            Ok(())
        }
    }
}

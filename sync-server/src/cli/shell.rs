//! `completions` and `man`: the shell completion script and the manual pages, generated from
//! the same definitions as `--help`.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::Cli;

/// Writes the completion script for `shell` on stdout.
pub(crate) fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap_complete::Generator as _;
    let mut cmd = Cli::command();
    cmd.set_bin_name("fieldsync-relay");
    cmd.build();
    let mut script = Vec::new();
    shell.try_generate(&cmd, &mut script)?;
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        // Piped into `head` and the like: what was wanted went out.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Writes `fieldsync-relay.1` and a page per command into `out`.
pub(crate) fn man_pages(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    clap_mangen::generate_to(Cli::command(), out)
        .with_context(|| format!("writing the man pages into {}", out.display()))?;
    let pages = std::fs::read_dir(out)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("fieldsync-relay") && n.ends_with(".1"))
        .count();
    println!(
        "wrote {pages} man pages into {} (e.g. `man {}`)",
        out.display(),
        out.join("fieldsync-relay.1").display()
    );
    Ok(())
}

//! Where and how the relay logs: lines on stderr (journald keeps them under systemd), at the
//! level of `log_level` or `RUST_LOG`, as text for people or JSON lines for log shippers
//! (`log_format`).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the process's logger: `RUST_LOG` when set, else `level` (a level or filter, as
/// `log_level` takes), written in `format`. Once per process; later calls change nothing.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only when a logger is installed already (tests): keep that one.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .flatten_event(true)
            .try_init(),
    };
}

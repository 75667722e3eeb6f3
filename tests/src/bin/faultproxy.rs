//! `fieldsync-faultproxy`: a user-space UDP fault-injection proxy.
//!
//! Relays UDP datagrams between clients and an upstream address (e.g. a fieldsync relay)
//! while injecting loss, burst loss, delay, jitter, reordering, duplication, a bandwidth
//! limit and periodic link cuts. The same faults apply in both directions. Statistics are
//! printed periodically and on Ctrl-C.
//!
//! Example: `fieldsync-faultproxy --listen 127.0.0.1:4433 --upstream 127.0.0.1:4434
//! --loss 0.02 --delay-ms 150 --jitter-ms 20 --bandwidth-bps 64000`

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use fieldsync_tests::faultproxy::{BurstLoss, FaultConfig, FaultProxy, LinkConfig};
use tracing_subscriber::EnvFilter;

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(
    name = "fieldsync-faultproxy",
    version,
    about = "UDP fault-injection proxy (loss, delay, reordering, bandwidth limits, cuts)"
)]
struct Cli {
    /// Address to listen on for clients.
    #[arg(long)]
    listen: SocketAddr,
    /// Address to relay datagrams to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Seed for all randomness (same seed, same per-packet decisions).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability of independent random loss per packet.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    loss: f64,
    /// Burst loss (Gilbert–Elliott): probability per packet of entering the bad state.
    #[arg(long, value_parser = parse_probability)]
    burst_p_bad: Option<f64>,
    /// Burst loss: probability per packet of leaving the bad state (mean burst 1/p).
    #[arg(long, default_value_t = 0.3, value_parser = parse_probability)]
    burst_p_good: f64,
    /// Burst loss: probability that a packet is lost while in the bad state.
    #[arg(long, default_value_t = 1.0, value_parser = parse_probability)]
    burst_loss: f64,
    /// Base one-way delay in milliseconds (applied in each direction).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Extra random delay, uniform in [0, jitter], in milliseconds.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Probability that a packet is held back so that later packets overtake it.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    reorder: f64,
    /// How long a reordered packet is held back, in milliseconds.
    #[arg(long, default_value_t = 20)]
    reorder_delay_ms: u64,
    /// Probability that a packet is delivered twice.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    duplicate: f64,
    /// Bottleneck bandwidth in bits per second (unlimited if absent).
    #[arg(long)]
    bandwidth_bps: Option<u64>,
    /// Bottleneck queue size in bytes; packets beyond it are dropped.
    #[arg(long, default_value_t = 64 * 1024)]
    queue_bytes: usize,
    /// Start a link cut every this many seconds (the period of the cut schedule).
    #[arg(long, value_parser = parse_seconds)]
    cut_every_secs: Option<f64>,
    /// How long each scheduled cut lasts, in seconds (less than --cut-every-secs).
    #[arg(long, default_value_t = 1.0, value_parser = parse_seconds)]
    cut_for_secs: f64,
    /// Print statistics every this many seconds (0: only on exit).
    #[arg(long, default_value_t = 5)]
    stats_secs: u64,
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability in [0, 1]"))
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let secs: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if secs.is_finite() && secs > 0.0 && Duration::try_from_secs_f64(secs).is_ok() {
        Ok(secs)
    } else {
        Err(format!("{secs} is not a positive number of seconds"))
    }
}

impl Cli {
    /// The proxy configuration the flags describe (same faults in both directions).
    fn fault_config(&self) -> anyhow::Result<FaultConfig> {
        let link = LinkConfig {
            loss: self.loss,
            burst: self.burst_p_bad.map(|p_good_to_bad| BurstLoss {
                p_good_to_bad,
                p_bad_to_good: self.burst_p_good,
                loss_in_bad: self.burst_loss,
            }),
            delay: Duration::from_millis(self.delay_ms),
            jitter: Duration::from_millis(self.jitter_ms),
            reorder: self.reorder,
            reorder_delay: Duration::from_millis(self.reorder_delay_ms),
            duplicate: self.duplicate,
            bandwidth_bps: self.bandwidth_bps.filter(|&bps| bps > 0),
            queue_limit_bytes: self.queue_bytes,
        };
        let cut_every = match self.cut_every_secs {
            None => None,
            Some(every) => {
                if self.cut_for_secs >= every {
                    bail!(
                        "--cut-for-secs ({}) must be less than --cut-every-secs ({every})",
                        self.cut_for_secs
                    );
                }
                let down = Duration::from_secs_f64(self.cut_for_secs);
                let up = Duration::from_secs_f64(every - self.cut_for_secs);
                Some((up, down))
            }
        };
        Ok(FaultConfig {
            cut_every,
            ..FaultConfig::symmetric(self.seed, link)
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = cli.fault_config()?;
    let proxy = FaultProxy::start(cli.listen, cli.upstream, config.clone())
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    println!(
        "fieldsync-faultproxy: {} -> {} (seed {})",
        proxy.local_addr(),
        proxy.upstream_addr(),
        config.seed
    );
    println!("config: {config:?}");

    let period = Duration::from_secs(cli.stats_secs.max(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            result = &mut ctrl_c => {
                if let Err(err) = result {
                    tracing::warn!(?err, "cannot listen for Ctrl-C; stopping");
                }
                break;
            }
            _ = ticker.tick(), if cli.stats_secs > 0 => {
                println!("{}", proxy.stats());
            }
        }
    }
    println!("final stats: {}", proxy.stats());
    proxy.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    const BASE: [&str; 5] = [
        "fieldsync-faultproxy",
        "--listen",
        "127.0.0.1:4000",
        "--upstream",
        "127.0.0.1:5000",
    ];

    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(BASE.iter().chain(extra))
    }

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_a_perfect_link() {
        let cli = parse(&[]).expect("parse");
        let config = cli.fault_config().expect("config");
        assert_eq!(config, FaultConfig::symmetric(1, LinkConfig::default()));
    }

    #[test]
    fn all_flags_map_to_the_config() {
        let cli = parse(&[
            "--seed",
            "9",
            "--loss",
            "0.2",
            "--burst-p-bad",
            "0.01",
            "--burst-p-good",
            "0.3",
            "--delay-ms",
            "150",
            "--jitter-ms",
            "20",
            "--reorder",
            "0.05",
            "--duplicate",
            "0.01",
            "--bandwidth-bps",
            "64000",
            "--cut-every-secs",
            "5",
            "--cut-for-secs",
            "1",
        ])
        .expect("parse");
        let config = cli.fault_config().expect("config");
        assert_eq!(config.seed, 9);
        assert_eq!(config.up, config.down);
        let link = &config.up;
        assert_eq!(link.loss, 0.2);
        assert_eq!(
            link.burst,
            Some(BurstLoss {
                p_good_to_bad: 0.01,
                p_bad_to_good: 0.3,
                loss_in_bad: 1.0
            })
        );
        assert_eq!(link.delay, Duration::from_millis(150));
        assert_eq!(link.jitter, Duration::from_millis(20));
        assert_eq!(link.reorder, 0.05);
        assert_eq!(link.duplicate, 0.01);
        assert_eq!(link.bandwidth_bps, Some(64_000));
        assert_eq!(
            config.cut_every,
            Some((Duration::from_secs(4), Duration::from_secs(1)))
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(parse(&["--loss", "1.5"]).is_err());
        assert!(parse(&["--loss", "NaN"]).is_err());
        assert!(parse(&["--reorder", "-0.1"]).is_err());
        assert!(parse(&["--cut-every-secs", "0"]).is_err());
        assert!(parse(&["--cut-every-secs", "inf"]).is_err());
        let cli = parse(&["--cut-every-secs", "1", "--cut-for-secs", "2"]).expect("parse");
        assert!(cli.fault_config().is_err());
        assert!(Cli::try_parse_from(["fieldsync-faultproxy"]).is_err());
    }
}

//! Which congestion controller a QUIC connection runs: the choice shared by the client
//! (`SyncConfig::congestion`) and the relay (`congestion` in its config file), each of which
//! maps it to the transport's implementation.
//!
//! A field link loses packets at random (radio fades, a satellite's weather), not only when a
//! queue overflows. Loss-based controllers (Cubic, NewReno) read every loss as congestion and
//! halve their window, so at 5–20 % random loss they send a small fraction of what the link
//! carries; a model-based controller (BBR) sizes its window from the delivery rate it measures.
//! The transport's BBR still counts losses (a loss ends its start-up and holds it in a recovery
//! window) and samples the rate per packet, which lost acknowledgements upset.
//! [`Congestion::Field`], in [`field`], measures the rate per round trip and takes no loss as a
//! signal except persistent congestion (the link cut for several probe timeouts).
//! `fieldsync-linkbench --cc all` measures them side by side; the default is the one that
//! carried the most on the lossy links, and the others stay available for a link whose losses
//! are all congestion.

#[cfg(feature = "quic")]
pub mod field;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A congestion controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// Model-based like BBR, for lossy links: the window is twice the delivery rate measured
    /// per round trip times the smallest round trip, and no loss but persistent congestion
    /// counts as a signal.
    #[default]
    Field,
    /// BBR (v1): paces at the measured bottleneck rate; a loss ends its start-up and holds it in
    /// a recovery window for a round trip.
    Bbr,
    /// Cubic (RFC 9438): halves its window on loss, grows it by a cubic curve.
    Cubic,
    /// NewReno (RFC 9002's reference): halves its window on loss, grows it by one packet per
    /// round trip.
    #[serde(rename = "newreno")]
    NewReno,
}

impl Congestion {
    /// Every controller, in the order benchmarks list them.
    pub const ALL: [Self; 4] = [Self::Field, Self::Bbr, Self::Cubic, Self::NewReno];

    /// The name used in configuration files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Field => "field",
            Self::Bbr => "bbr",
            Self::Cubic => "cubic",
            Self::NewReno => "newreno",
        }
    }
}

impl fmt::Display for Congestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown congestion controller {0:?} (field, bbr, cubic or newreno)")]
pub struct UnknownCongestion(pub String);

impl FromStr for Congestion {
    type Err = UnknownCongestion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownCongestion(s.to_string()))
    }
}

#[cfg(feature = "quic")]
impl Congestion {
    /// The transport's implementation of this controller, for
    /// `quinn::TransportConfig::congestion_controller_factory`.
    pub fn factory(
        self,
    ) -> std::sync::Arc<dyn quinn_proto::congestion::ControllerFactory + Send + Sync> {
        use quinn_proto::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
        match self {
            Self::Field => std::sync::Arc::new(field::FieldConfig),
            Self::Bbr => std::sync::Arc::new(BbrConfig::default()),
            Self::Cubic => std::sync::Arc::new(CubicConfig::default()),
            Self::NewReno => std::sync::Arc::new(NewRenoConfig::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_serde() {
        for c in Congestion::ALL {
            assert_eq!(c.as_str().parse::<Congestion>(), Ok(c));
            let json = serde_json::to_string(&c).expect("json");
            assert_eq!(json, format!("\"{c}\""));
            assert_eq!(serde_json::from_str::<Congestion>(&json).expect("back"), c);
        }
        assert_eq!(" BBR ".parse::<Congestion>(), Ok(Congestion::Bbr));
        let err = "vegas".parse::<Congestion>().expect_err("unknown");
        assert!(
            err.to_string().contains("field, bbr, cubic or newreno"),
            "{err}"
        );
    }
}

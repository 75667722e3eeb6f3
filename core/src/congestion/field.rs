//! [`Congestion::Field`](super::Congestion::Field): BBR for links that lose packets at random.
//!
//! BBR models the path: it paces at the highest delivery rate it measured in the last round
//! trips and keeps about two of the smallest round trip's worth of that rate in flight. The
//! model needs no loss signal. The transport's BBR still takes two decisions from losses: a
//! start-up round with a loss ends the start-up (the rate stays where that round left it and
//! is then probed upward by a quarter every eight round trips), and a loss puts it in
//! recovery, where the window is what is in flight. On a radio link with 5–20 % random loss
//! both hold almost all the time, and the connection runs at a fraction of the link.
//!
//! [`Field`] passes BBR every event but losses, except persistent congestion (nothing
//! acknowledged for several probe timeouts: a cut link, or a queue that overflowed for that
//! long), which BBR sees as before. A queue that overflows briefly is kept in bounds by the
//! model itself: in flight stays near twice the measured bandwidth-delay product.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use quinn_proto::RttEstimator;
use quinn_proto::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics};

/// Builds [`Field`] controllers.
#[derive(Debug, Clone, Default)]
pub struct FieldConfig {
    bbr: Arc<BbrConfig>,
}

impl ControllerFactory for FieldConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Field {
            bbr: self.bbr.clone().build(now, current_mtu),
        })
    }
}

/// BBR that reads no loss as congestion but persistent congestion.
pub struct Field {
    bbr: Box<dyn Controller>,
}

impl Controller for Field {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.bbr.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.bbr.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.bbr
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        if is_persistent_congestion {
            self.bbr
                .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.bbr.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.bbr.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.bbr.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            bbr: self.bbr.clone_box(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.bbr.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

//! [`Congestion::Field`](super::Congestion::Field): a model-based controller for links that
//! lose packets at random.
//!
//! Like BBR it models the path instead of reading losses: the bottleneck's rate is the most
//! data the path delivered per round trip over the last ten round trips, and the window is
//! twice that rate times the smallest round trip seen (the bandwidth-delay product), so the
//! link stays full while the bottleneck queue stays near one product. Start-up doubles the
//! window every round trip until three rounds bring less than a quarter more.
//!
//! It differs from the transport's BBR in two ways that matter on a radio or satellite link:
//! - *The rate is measured per round trip*: the data acknowledged during a round over the
//!   round's length. Per-packet samples (the transport's BBR takes one packet's bytes over the
//!   time since the previous acknowledgement) fall apart when a fifth of the acknowledgements
//!   are lost too.
//! - *No loss is a signal*, except persistent congestion (nothing acknowledged for several
//!   probe timeouts: a cut link), which starts the model over. A queue that overflows is kept
//!   in bounds by the window, which is derived from the measured rate alone.
//!
//! The transport's pacer spreads the window over the smoothed round trip, a quarter faster:
//! with the queue the window builds, it sends at about 1.25 times the measured rate, which
//! also makes up for random loss in front of the bottleneck.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::RttEstimator;
use quinn_proto::congestion::{Controller, ControllerFactory, ControllerMetrics};

/// Round trips whose rate samples make the estimate.
const RATE_WINDOW: usize = 10;
/// The window over the bandwidth-delay product.
const WINDOW_GAIN: f64 = 2.0;
/// Start-up ends after this many rounds without a quarter more rate.
const FLAT_ROUNDS: u32 = 3;
/// The shortest round a rate is measured over (a loopback's round trip is microseconds).
const MIN_ROUND: Duration = Duration::from_millis(10);
/// Packets the window never goes below, and the first window.
const MIN_PACKETS: u64 = 4;
const INITIAL_PACKETS: u64 = 10;

/// Builds [`Field`] controllers.
#[derive(Debug, Clone, Default)]
pub struct FieldConfig;

impl ControllerFactory for FieldConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Field::new(now, current_mtu))
    }
}

/// The controller's state.
#[derive(Clone, Debug)]
pub struct Field {
    mtu: u64,
    window: u64,
    startup: bool,
    /// Bytes acknowledged so far.
    delivered: u64,
    /// Bytes acknowledged since the last batch of acknowledgements ended.
    batch_acked: u64,
    /// The round being measured: when it began and what had been delivered then; whether the
    /// window was full at some point in it (else the sender had too little to send for the
    /// round to say anything of the path).
    round_start: Instant,
    round_delivered: u64,
    round_window_limited: bool,
    /// Delivery rates (bytes per second) of the last rounds, newest last.
    rates: VecDeque<f64>,
    /// Start-up: the best rate when it last grew by a quarter, and rounds since.
    startup_best: f64,
    flat_rounds: u32,
    min_rtt: Option<Duration>,
}

impl Field {
    fn new(now: Instant, mtu: u16) -> Self {
        let mtu = u64::from(mtu);
        Self {
            mtu,
            window: INITIAL_PACKETS * mtu,
            startup: true,
            delivered: 0,
            batch_acked: 0,
            round_start: now,
            round_delivered: 0,
            round_window_limited: false,
            rates: VecDeque::with_capacity(RATE_WINDOW),
            startup_best: 0.0,
            flat_rounds: 0,
            min_rtt: None,
        }
    }

    fn min_window(&self) -> u64 {
        MIN_PACKETS * self.mtu
    }

    /// The best delivery rate of the last rounds, bytes per second.
    fn rate(&self) -> f64 {
        self.rates.iter().copied().fold(0.0, f64::max)
    }

    /// The window the model asks for: twice the bandwidth-delay product.
    fn model_window(&self) -> Option<u64> {
        let rtt = self.min_rtt?;
        let bdp = self.rate() * rtt.as_secs_f64();
        (bdp > 0.0).then_some((WINDOW_GAIN * bdp) as u64)
    }

    /// Ends the round at `now` if it lasted a round trip: records its rate and moves the
    /// model on.
    fn end_round(&mut self, now: Instant) {
        let length = self.min_rtt.unwrap_or(MIN_ROUND).max(MIN_ROUND);
        let elapsed = now.saturating_duration_since(self.round_start);
        if elapsed < length {
            return;
        }
        let bytes = self.delivered - self.round_delivered;
        let rate = bytes as f64 / elapsed.as_secs_f64();
        // A round in which the sender never filled the window (it had too little to send)
        // says nothing of the path, unless it still delivered more than the estimate.
        if self.round_window_limited || rate > self.rate() {
            if self.rates.len() == RATE_WINDOW {
                self.rates.pop_front();
            }
            self.rates.push_back(rate);
        }
        if self.startup && self.round_window_limited {
            if rate >= self.startup_best * 1.25 {
                self.startup_best = rate;
                self.flat_rounds = 0;
            } else {
                self.flat_rounds += 1;
                if self.flat_rounds >= FLAT_ROUNDS {
                    self.startup = false;
                }
            }
        }
        self.round_start = now;
        self.round_delivered = self.delivered;
        self.round_window_limited = false;
        if !self.startup
            && let Some(w) = self.model_window()
        {
            self.window = w.max(self.min_window());
        }
    }

    /// `bytes` were acknowledged; `min_rtt` is the transport's smallest round trip so far.
    fn acked(&mut self, bytes: u64, min_rtt: Duration) {
        self.delivered += bytes;
        self.batch_acked += bytes;
        // The transport keeps the minimum (its first sample replaces the initial guess, which
        // a running minimum here would keep for ever on a long path).
        if !min_rtt.is_zero() {
            self.min_rtt = Some(min_rtt);
        }
    }

    /// A batch of acknowledgements ended at `now`, leaving `in_flight` bytes outstanding.
    fn end_acks(&mut self, now: Instant, in_flight: u64) {
        let acked = std::mem::take(&mut self.batch_acked);
        // Before these acknowledgements, this much was out: near the window, the window was
        // what limited the sender.
        let limited = in_flight + acked + 2 * self.mtu >= self.window;
        self.round_window_limited |= limited;
        if self.startup && limited {
            // Slow start: one more byte of window per byte delivered, up to twice what the
            // model already asks for (the queue a start-up may build stays bounded).
            let cap = self
                .model_window()
                .map_or(u64::MAX, |w| (2 * w).max(INITIAL_PACKETS * self.mtu));
            self.window = (self.window + acked).min(cap.max(self.window));
        }
        self.end_round(now);
    }
}

impl Controller for Field {
    fn on_ack(
        &mut self,
        _now: Instant,
        _sent: Instant,
        bytes: u64,
        // Also set while the pacer holds packets back; the window's use says more (see
        // `end_acks`).
        _app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.acked(bytes, rtt.min());
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        _app_limited: bool,
        _largest_packet_num_acked: Option<u64>,
    ) {
        self.end_acks(now, in_flight);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        _sent: Instant,
        is_persistent_congestion: bool,
        _lost_bytes: u64,
    ) {
        if is_persistent_congestion {
            // The path may be another one now (a cut link, a new network): measure it again.
            *self = Self::new(now, u16::try_from(self.mtu).unwrap_or(u16::MAX));
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.window = self.window.max(self.min_window());
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = ControllerMetrics::default();
        m.congestion_window = self.window;
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        INITIAL_PACKETS * self.mtu
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any instant: the controller only measures differences from it.
    #[allow(clippy::disallowed_methods)]
    fn start() -> Instant {
        Instant::now()
    }

    /// Feeds the controller a path that delivers `rate` bytes per second with round trip
    /// `rtt`, acknowledging every `rtt / 10`, for `rounds` round trips.
    fn drive(c: &mut Field, start: Instant, rate: f64, rtt: Duration, rounds: u32) -> Instant {
        let step = rtt / 10;
        let mut now = start;
        for _ in 0..rounds * 10 {
            now += step;
            c.acked((rate * step.as_secs_f64()) as u64, rtt);
            c.end_acks(now, c.window());
        }
        now
    }

    #[test]
    fn the_window_settles_at_twice_the_measured_bandwidth_delay_product() {
        let start = start();
        let mut c = Field::new(start, 1200);
        // 64 kB/s (512 kbit/s) at 300 ms: a product of 19.2 kB.
        let now = drive(&mut c, start, 64_000.0, Duration::from_millis(300), 12);
        assert!(!c.startup, "start-up ends when the rate stops growing");
        let w = c.window() as f64;
        assert!((w - 38_400.0).abs() < 4_000.0, "window {w}");
        // Random loss is no signal.
        c.on_congestion_event(now, now, false, 50_000);
        assert_eq!(c.window() as f64, w);
        // A cut link is: the model starts over.
        c.on_congestion_event(now, now, true, 50_000);
        assert!(c.startup);
        assert_eq!(c.window(), c.initial_window());
    }

    #[test]
    fn a_faster_path_raises_the_estimate_and_idle_rounds_do_not_lower_it() {
        let start = start();
        let mut c = Field::new(start, 1200);
        let rtt = Duration::from_millis(100);
        let now = drive(&mut c, start, 50_000.0, rtt, 12);
        let slow = c.window();
        // The sender ran out of data (the window far from full): those rounds keep the
        // estimate.
        let mut t = now;
        for _ in 0..30 {
            t += rtt / 10;
            c.acked(10, rtt);
            c.end_acks(t, 0);
        }
        assert_eq!(c.window(), slow);
        drive(&mut c, t, 200_000.0, rtt, 3);
        assert!(c.window() > 3 * slow, "{} after {slow}", c.window());
    }
}

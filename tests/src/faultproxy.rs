//! A user-space UDP fault-injection proxy.
//!
//! `tc`/`netem` is not available in every environment the tests run in, so this module
//! emulates a bad network link in user space. A [`FaultProxy`] listens on one UDP address
//! and relays datagrams to an upstream address (for fieldsync: the relay's QUIC endpoint),
//! and back, applying the faults described by a [`FaultConfig`]:
//!
//! * independent random loss,
//! * burst loss following the Gilbert–Elliott two-state model ([`BurstLoss`]),
//! * a base one-way delay plus uniform jitter,
//! * reordering (a selected packet is held back so that later packets overtake it),
//! * duplication,
//! * a bandwidth limit (a serialization queue with a byte limit; packets that do not fit
//!   into the queue are tail-dropped like at a real bottleneck),
//! * a periodic cut schedule, and manual cuts at run time ([`FaultProxy::cut`],
//!   [`FaultProxy::cut_for`], [`FaultProxy::restore`]).
//!
//! Each client source address gets its own upstream socket, so the upstream server sees
//! one distinct peer per client, and replies are routed back to the right client. All
//! clients of one proxy share the same emulated link (like hosts behind one bottleneck).
//!
//! The per-packet decision is made by a pure, seeded [`FaultModel`] (one per direction),
//! so that the same seed and the same sequence of `(time, length)` inputs always yields
//! the same decisions. Delayed packets are handed to a scheduler task (a binary heap keyed
//! by due time), so a delayed packet never blocks others.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

/// Largest datagram the proxy relays (the maximum UDP payload over IPv4).
const MAX_DATAGRAM: usize = 65_535;
/// Most client addresses tracked at once; datagrams from further clients are dropped.
const MAX_CLIENTS: usize = 4_096;
/// Most packets waiting in the delivery scheduler at once; further packets are dropped.
const MAX_IN_FLIGHT: usize = 1 << 16;
/// A client whose address saw no traffic in either direction for this long is forgotten
/// and its upstream socket closed.
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often an idle client's reader task checks whether it has timed out.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Stand-in for "far in the future" when a deadline would overflow.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Direction of travel through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a client to the upstream server.
    Up,
    /// From the upstream server back to a client.
    Down,
}

/// Parameters of the Gilbert–Elliott two-state burst-loss model.
///
/// The link is either in the *good* or the *bad* state. Before each packet the state
/// changes with the given transition probability; in the bad state the packet is then
/// lost with probability `loss_in_bad`. The mean burst length is `1 / p_bad_to_good`
/// packets and the long-run share of time in the bad state is
/// `p_good_to_bad / (p_good_to_bad + p_bad_to_good)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BurstLoss {
    /// Probability of moving from the good to the bad state, per packet.
    pub p_good_to_bad: f64,
    /// Probability of moving from the bad back to the good state, per packet.
    pub p_bad_to_good: f64,
    /// Probability that a packet is lost while the link is in the bad state.
    pub loss_in_bad: f64,
}

impl Default for BurstLoss {
    /// A model with no transitions into the bad state (so no loss), and total loss while
    /// in the bad state.
    fn default() -> Self {
        Self {
            p_good_to_bad: 0.0,
            p_bad_to_good: 1.0,
            loss_in_bad: 1.0,
        }
    }
}

/// The faults applied to one direction of the link.
///
/// Probabilities are in `[0, 1]`; values above 1 behave like 1, and negative values or NaN
/// like 0. The default is a perfect link.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    /// Probability that a packet is lost independently of all others.
    pub loss: f64,
    /// Optional Gilbert–Elliott burst loss, applied in addition to `loss`.
    pub burst: Option<BurstLoss>,
    /// Base one-way propagation delay added to every packet.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` for every packet (so the delay is
    /// never below `delay`). Jitter alone does not reorder packets: in-order packets are
    /// never delivered before an earlier in-order packet.
    pub jitter: Duration,
    /// Probability that a packet is held back by `reorder_delay`, letting later packets
    /// overtake it.
    pub reorder: f64,
    /// How long a packet selected for reordering is held back. Zero disables reordering.
    pub reorder_delay: Duration,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Bottleneck bandwidth in bits per second; `None` (or `Some(0)`) means unlimited.
    pub bandwidth_bps: Option<u64>,
    /// With a bandwidth limit: the most bytes that may wait in the bottleneck queue. A
    /// packet arriving at a busy link that would exceed this is dropped (tail drop). A
    /// packet arriving at an idle link is always accepted.
    pub queue_limit_bytes: usize,
}

impl Default for LinkConfig {
    /// A perfect link: no loss, no delay, no reordering, no duplication, unlimited
    /// bandwidth.
    fn default() -> Self {
        Self {
            loss: 0.0,
            burst: None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(20),
            duplicate: 0.0,
            bandwidth_bps: None,
            queue_limit_bytes: 64 * 1024,
        }
    }
}

/// Configuration of a [`FaultProxy`] (or of a pair of [`FaultModel`]s).
///
/// The default is a perfect link in both directions with seed 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Seed for all randomness. The upstream direction uses it as is, the downstream
    /// direction a value derived from it, so the two directions are independent.
    pub seed: u64,
    /// Faults applied to datagrams from clients to the upstream server.
    pub up: LinkConfig,
    /// Faults applied to datagrams from the upstream server to clients.
    pub down: LinkConfig,
    /// Periodic cuts: `(up_for, down_for)` keeps the link up for `up_for`, then cuts it
    /// (both directions) for `down_for`, and repeats, counting from the proxy's start.
    pub cut_every: Option<(Duration, Duration)>,
}

impl FaultConfig {
    /// The same link faults in both directions.
    pub fn symmetric(seed: u64, link: LinkConfig) -> Self {
        Self {
            seed,
            up: link.clone(),
            down: link,
            cut_every: None,
        }
    }

    /// The link configuration for one direction.
    pub fn link(&self, direction: Direction) -> &LinkConfig {
        match direction {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    /// The RNG seed used for one direction.
    pub fn seed_for(&self, direction: Direction) -> u64 {
        match direction {
            Direction::Up => self.seed,
            Direction::Down => splitmix64(self.seed ^ 0x646f_776e_6c69_6e6b),
        }
    }
}

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The link was cut (manually or by the cut schedule).
    Cut,
    /// Independent random loss.
    Loss,
    /// Gilbert–Elliott burst loss.
    Burst,
    /// The bandwidth-limited queue was full.
    QueueFull,
}

/// When and how an accepted packet is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// When the packet should leave the proxy.
    pub at: Instant,
    /// Whether a second copy should be delivered (at the same time).
    pub duplicate: bool,
    /// Whether the packet was held back so that later packets overtake it.
    pub reordered: bool,
}

/// The outcome of [`FaultModel::decide`] for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Drop the packet.
    Drop(DropReason),
    /// Deliver the packet.
    Deliver(Delivery),
}

/// A manual cut of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ManualCut {
    Off,
    Indefinite,
    Until(Instant),
}

/// The per-packet fault decision for one direction: a deterministic function of the seed
/// and the sequence of `(now, len)` inputs, with no I/O and no clock reads.
///
/// The model draws the same number of random values for every packet, whatever the
/// outcome, so the random decisions for the n-th packet depend only on the seed and `n`
/// (and, for burst loss, the Gilbert–Elliott state, which itself depends only on earlier
/// draws). Cuts and the bandwidth queue depend on `now` as well.
#[derive(Debug)]
pub struct FaultModel {
    link: LinkConfig,
    cut_every: Option<(Duration, Duration)>,
    rng: StdRng,
    epoch: Instant,
    manual_cut: ManualCut,
    in_bad_state: bool,
    /// When the bottleneck finishes sending everything accepted so far.
    link_free_at: Option<Instant>,
    /// Delivery time of the latest in-order packet (jitter must not reorder).
    fifo_tail: Option<Instant>,
}

impl FaultModel {
    /// A model for `direction` of `config`; the cut schedule counts from `epoch`.
    pub fn new(config: &FaultConfig, direction: Direction, epoch: Instant) -> Self {
        Self {
            link: config.link(direction).clone(),
            cut_every: config.cut_every,
            rng: StdRng::seed_from_u64(config.seed_for(direction)),
            epoch,
            manual_cut: ManualCut::Off,
            in_bad_state: false,
            link_free_at: None,
            fifo_tail: None,
        }
    }

    /// Replaces the configuration: reseeds the RNG and resets the burst state, but keeps
    /// the cut-schedule epoch, any manual cut and the state of the bottleneck queue.
    pub fn reconfigure(&mut self, config: &FaultConfig, direction: Direction) {
        self.link = config.link(direction).clone();
        self.cut_every = config.cut_every;
        self.rng = StdRng::seed_from_u64(config.seed_for(direction));
        self.in_bad_state = false;
    }

    /// The link configuration in use.
    pub fn link(&self) -> &LinkConfig {
        &self.link
    }

    /// Cuts the link until [`restore`](Self::restore).
    pub fn cut(&mut self) {
        self.manual_cut = ManualCut::Indefinite;
    }

    /// Cuts the link until `until` (or until [`restore`](Self::restore)).
    pub fn cut_until(&mut self, until: Instant) {
        self.manual_cut = ManualCut::Until(until);
    }

    /// Ends a manual cut. The cut schedule, if any, still applies.
    pub fn restore(&mut self) {
        self.manual_cut = ManualCut::Off;
    }

    /// Whether the link is cut at `now`, manually or by the cut schedule.
    pub fn is_cut(&self, now: Instant) -> bool {
        let manual = match self.manual_cut {
            ManualCut::Off => false,
            ManualCut::Indefinite => true,
            ManualCut::Until(until) => now < until,
        };
        manual || self.scheduled_cut(now)
    }

    fn scheduled_cut(&self, now: Instant) -> bool {
        let Some((up_for, down_for)) = self.cut_every else {
            return false;
        };
        if down_for.is_zero() {
            return false;
        }
        let period = up_for.as_nanos().saturating_add(down_for.as_nanos());
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos();
        elapsed % period >= up_for.as_nanos()
    }

    /// Decides the fate of one packet of `len` bytes arriving at `now`.
    ///
    /// `now` should not go backwards between calls; if it does, the bottleneck queue and
    /// ordering state simply treat the packet as arriving at the later time.
    pub fn decide(&mut self, now: Instant, len: usize) -> Decision {
        // Always draw the same values, in the same order, so that the random stream
        // stays aligned with the packet count whatever happens to each packet.
        let u_loss: f64 = self.rng.random();
        let u_transition: f64 = self.rng.random();
        let u_burst: f64 = self.rng.random();
        let u_jitter: f64 = self.rng.random();
        let u_reorder: f64 = self.rng.random();
        let u_duplicate: f64 = self.rng.random();

        let burst_lost = match self.link.burst {
            Some(burst) => {
                if self.in_bad_state {
                    if u_transition < burst.p_bad_to_good {
                        self.in_bad_state = false;
                    }
                } else if u_transition < burst.p_good_to_bad {
                    self.in_bad_state = true;
                }
                self.in_bad_state && u_burst < burst.loss_in_bad
            }
            None => false,
        };

        if self.is_cut(now) {
            return Decision::Drop(DropReason::Cut);
        }
        if u_loss < self.link.loss {
            return Decision::Drop(DropReason::Loss);
        }
        if burst_lost {
            return Decision::Drop(DropReason::Burst);
        }

        let mut departure = now;
        if let Some(bps) = self.link.bandwidth_bps.filter(|&bps| bps > 0) {
            let start = match self.link_free_at {
                Some(free_at) if free_at > now => free_at,
                _ => now,
            };
            let backlog = start.saturating_duration_since(now);
            let backlog_bytes = backlog.as_nanos().saturating_mul(u128::from(bps)) / 8_000_000_000;
            let len_bytes = len as u128;
            if backlog_bytes > 0
                && backlog_bytes.saturating_add(len_bytes) > self.link.queue_limit_bytes as u128
            {
                return Decision::Drop(DropReason::QueueFull);
            }
            departure = add_saturating(start, transmission_time(len, bps));
            self.link_free_at = Some(departure);
        }

        let jitter = scale(self.link.jitter, u_jitter);
        let mut at = add_saturating(add_saturating(departure, self.link.delay), jitter);
        if let Some(tail) = self.fifo_tail
            && at < tail
        {
            at = tail;
        }
        let reordered = u_reorder < self.link.reorder && !self.link.reorder_delay.is_zero();
        if reordered {
            at = add_saturating(at, self.link.reorder_delay);
        } else {
            self.fifo_tail = Some(at);
        }
        let duplicate = u_duplicate < self.link.duplicate;
        Decision::Deliver(Delivery {
            at,
            duplicate,
            reordered,
        })
    }
}

/// Time to serialize `len` bytes at `bps` bits per second (`bps > 0`).
fn transmission_time(len: usize, bps: u64) -> Duration {
    let nanos = (len as u128).saturating_mul(8_000_000_000) / u128::from(bps.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// `d * u` for `u` in `[0, 1)`, never panicking.
fn scale(d: Duration, u: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * u).map_or(d, |scaled| scaled.min(d))
}

/// `t + d`, or a time far in the future if that overflows.
fn add_saturating(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(FAR_FUTURE))
        .unwrap_or(t)
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Counters for one direction, as returned by [`FaultProxy::stats`].
///
/// Invariant once the proxy is idle: `packets_in + duplicated == packets_forwarded +
/// dropped()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams received by the proxy in this direction.
    pub packets_in: u64,
    /// Payload bytes received by the proxy in this direction.
    pub bytes_in: u64,
    /// Datagrams sent on (duplicates included).
    pub packets_forwarded: u64,
    /// Payload bytes sent on (duplicates included).
    pub bytes_forwarded: u64,
    /// Datagrams dropped by independent random loss.
    pub dropped_loss: u64,
    /// Datagrams dropped by Gilbert–Elliott burst loss.
    pub dropped_burst: u64,
    /// Datagrams dropped because the link was cut (on arrival or while in flight).
    pub dropped_cut: u64,
    /// Datagrams dropped because the bandwidth-limited queue was full.
    pub dropped_queue: u64,
    /// Datagrams dropped for other reasons: send errors, too many clients, scheduler full.
    pub dropped_other: u64,
    /// Datagrams selected for duplication.
    pub duplicated: u64,
    /// Datagrams held back so later ones overtake them.
    pub reordered: u64,
}

impl DirectionStats {
    /// All dropped datagrams, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss
            + self.dropped_burst
            + self.dropped_cut
            + self.dropped_queue
            + self.dropped_other
    }
}

impl fmt::Display for DirectionStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in {} pkts/{} B, fwd {} pkts/{} B, dropped {} (loss {}, burst {}, cut {}, queue {}, other {}), dup {}, reord {}",
            self.packets_in,
            self.bytes_in,
            self.packets_forwarded,
            self.bytes_forwarded,
            self.dropped(),
            self.dropped_loss,
            self.dropped_burst,
            self.dropped_cut,
            self.dropped_queue,
            self.dropped_other,
            self.duplicated,
            self.reordered,
        )
    }
}

/// A snapshot of a proxy's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Client → upstream.
    pub up: DirectionStats,
    /// Upstream → client.
    pub down: DirectionStats,
    /// Client addresses currently tracked.
    pub clients: usize,
    /// Datagrams accepted but not yet delivered (both directions).
    pub in_flight: usize,
}

impl FaultStats {
    /// The counters for one direction.
    pub fn direction(&self, direction: Direction) -> &DirectionStats {
        match direction {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }
}

impl fmt::Display for FaultStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "clients {}, in flight {}\n  up:   {}\n  down: {}",
            self.clients, self.in_flight, self.up, self.down
        )
    }
}

#[derive(Default)]
struct Counters {
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    packets_forwarded: AtomicU64,
    bytes_forwarded: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_burst: AtomicU64,
    dropped_cut: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_other: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, AtomicOrdering::Relaxed);
}

impl Counters {
    fn count_drop(&self, reason: DropReason) {
        let counter = match reason {
            DropReason::Cut => &self.dropped_cut,
            DropReason::Loss => &self.dropped_loss,
            DropReason::Burst => &self.dropped_burst,
            DropReason::QueueFull => &self.dropped_queue,
        };
        bump(counter, 1);
    }

    fn snapshot(&self) -> DirectionStats {
        let get = |c: &AtomicU64| c.load(AtomicOrdering::Relaxed);
        DirectionStats {
            packets_in: get(&self.packets_in),
            bytes_in: get(&self.bytes_in),
            packets_forwarded: get(&self.packets_forwarded),
            bytes_forwarded: get(&self.bytes_forwarded),
            dropped_loss: get(&self.dropped_loss),
            dropped_burst: get(&self.dropped_burst),
            dropped_cut: get(&self.dropped_cut),
            dropped_queue: get(&self.dropped_queue),
            dropped_other: get(&self.dropped_other),
            duplicated: get(&self.duplicated),
            reordered: get(&self.reordered),
        }
    }
}

/// Both directions' models and the configuration they were built from.
struct Link {
    config: FaultConfig,
    up: FaultModel,
    down: FaultModel,
}

impl Link {
    fn model(&mut self, direction: Direction) -> &mut FaultModel {
        match direction {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        }
    }
}

struct ClientEntry {
    upstream: Arc<UdpSocket>,
    last_active: Arc<AtomicU64>,
    task: AbortHandle,
}

/// Where a scheduled datagram goes.
enum Target {
    /// Upstream, through the client's own (connected) upstream socket.
    Upstream(Arc<UdpSocket>),
    /// Back to a client, through the listening socket.
    Client(SocketAddr),
}

struct Scheduled {
    at: Instant,
    seq: u64,
    direction: Direction,
    payload: Arc<[u8]>,
    target: Target,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Shared {
    epoch: Instant,
    upstream: SocketAddr,
    link: Mutex<Link>,
    up: Counters,
    down: Counters,
    clients: Mutex<HashMap<SocketAddr, ClientEntry>>,
    in_flight: AtomicUsize,
    next_seq: AtomicU64,
}

/// Locks a mutex, recovering the data if another thread panicked while holding it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn counters(&self, direction: Direction) -> &Counters {
        match direction {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    fn millis_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn is_cut(&self, direction: Direction, now: Instant) -> bool {
        lock(&self.link).model(direction).is_cut(now)
    }

    /// Runs one received datagram through the model and schedules its delivery.
    fn handle_packet(
        &self,
        direction: Direction,
        data: &[u8],
        target: Target,
        tx: &mpsc::UnboundedSender<Scheduled>,
    ) {
        let counters = self.counters(direction);
        bump(&counters.packets_in, 1);
        bump(&counters.bytes_in, data.len() as u64);
        let now = Instant::now();
        let decision = lock(&self.link).model(direction).decide(now, data.len());
        let delivery = match decision {
            Decision::Drop(reason) => {
                counters.count_drop(reason);
                return;
            }
            Decision::Deliver(delivery) => delivery,
        };
        if delivery.reordered {
            bump(&counters.reordered, 1);
        }
        let payload: Arc<[u8]> = Arc::from(data);
        if delivery.duplicate {
            bump(&counters.duplicated, 1);
            let copy_target = match &target {
                Target::Upstream(socket) => Target::Upstream(Arc::clone(socket)),
                Target::Client(addr) => Target::Client(*addr),
            };
            self.enqueue(
                delivery.at,
                direction,
                Arc::clone(&payload),
                copy_target,
                tx,
            );
        }
        self.enqueue(delivery.at, direction, payload, target, tx);
    }

    fn enqueue(
        &self,
        at: Instant,
        direction: Direction,
        payload: Arc<[u8]>,
        target: Target,
        tx: &mpsc::UnboundedSender<Scheduled>,
    ) {
        let counters = self.counters(direction);
        if self.in_flight.fetch_add(1, AtomicOrdering::Relaxed) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, AtomicOrdering::Relaxed);
            bump(&counters.dropped_other, 1);
            tracing::debug!("fault proxy: scheduler full, dropping datagram");
            return;
        }
        let item = Scheduled {
            at,
            seq: self.next_seq.fetch_add(1, AtomicOrdering::Relaxed),
            direction,
            payload,
            target,
        };
        if tx.send(item).is_err() {
            self.in_flight.fetch_sub(1, AtomicOrdering::Relaxed);
            bump(&counters.dropped_other, 1);
        }
    }

    /// Sends one due datagram, unless the link has been cut meanwhile.
    async fn deliver(&self, item: Scheduled, listen: &UdpSocket) {
        self.in_flight.fetch_sub(1, AtomicOrdering::Relaxed);
        let counters = self.counters(item.direction);
        if self.is_cut(item.direction, Instant::now()) {
            counters.count_drop(DropReason::Cut);
            return;
        }
        let result = match &item.target {
            Target::Upstream(socket) => socket.send(&item.payload).await,
            Target::Client(addr) => listen.send_to(&item.payload, *addr).await,
        };
        match result {
            Ok(_) => {
                bump(&counters.packets_forwarded, 1);
                bump(&counters.bytes_forwarded, item.payload.len() as u64);
            }
            Err(err) => {
                bump(&counters.dropped_other, 1);
                tracing::debug!(?err, direction = ?item.direction, "fault proxy: send failed");
            }
        }
    }

    /// The upstream socket for `client`, creating it (and its reader task) if needed.
    fn client_socket(
        self: &Arc<Self>,
        client: SocketAddr,
        tx: &mpsc::UnboundedSender<Scheduled>,
    ) -> io::Result<Arc<UdpSocket>> {
        let now_ms = self.millis_since_epoch();
        let mut clients = lock(&self.clients);
        if let Some(entry) = clients.get(&client) {
            entry.last_active.store(now_ms, AtomicOrdering::Relaxed);
            return Ok(Arc::clone(&entry.upstream));
        }
        if clients.len() >= MAX_CLIENTS {
            return Err(io::Error::other("too many clients"));
        }
        let entry = self.client_entry(client, now_ms, tx)?;
        let socket = Arc::clone(&entry.upstream);
        tracing::debug!(%client, upstream_local = ?socket.local_addr().ok(), "fault proxy: new client");
        clients.insert(client, entry);
        Ok(socket)
    }

    /// A new upstream socket for `client`, with its reader task.
    fn client_entry(
        self: &Arc<Self>,
        client: SocketAddr,
        now_ms: u64,
        tx: &mpsc::UnboundedSender<Scheduled>,
    ) -> io::Result<ClientEntry> {
        let socket = Arc::new(upstream_socket(self.upstream)?);
        let last_active = Arc::new(AtomicU64::new(now_ms));
        let task = tokio::spawn(run_client_reader(
            Arc::clone(self),
            client,
            Arc::clone(&socket),
            Arc::clone(&last_active),
            tx.clone(),
        ))
        .abort_handle();
        Ok(ClientEntry {
            upstream: socket,
            last_active,
            task,
        })
    }

    /// Moves every client to a new upstream socket (see [`FaultProxy::rebind`]).
    fn rebind(self: &Arc<Self>, tx: &mpsc::UnboundedSender<Scheduled>) -> io::Result<usize> {
        let now_ms = self.millis_since_epoch();
        let mut clients = lock(&self.clients);
        for (client, entry) in clients.iter_mut() {
            let fresh = self.client_entry(*client, now_ms, tx)?;
            tracing::debug!(%client, upstream_local = ?fresh.upstream.local_addr().ok(), "fault proxy: rebound");
            std::mem::replace(entry, fresh).task.abort();
        }
        Ok(clients.len())
    }

    /// Forgets `client` if it has been idle too long; returns whether it was forgotten.
    fn reap_if_idle(&self, client: SocketAddr, last_active: &AtomicU64) -> bool {
        let mut clients = lock(&self.clients);
        let idle_ms = self
            .millis_since_epoch()
            .saturating_sub(last_active.load(AtomicOrdering::Relaxed));
        if u128::from(idle_ms) < CLIENT_IDLE_TIMEOUT.as_millis() {
            return false;
        }
        clients.remove(&client);
        tracing::debug!(%client, "fault proxy: client idle, forgotten");
        true
    }

    fn abort_clients(&self) {
        for (_, entry) in lock(&self.clients).drain() {
            entry.task.abort();
        }
    }
}

/// A socket for talking to `upstream` on behalf of one client, connected to `upstream`.
fn upstream_socket(upstream: SocketAddr) -> io::Result<UdpSocket> {
    let bind_ip = match upstream.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(ip) if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = std::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0))?;
    socket.connect(upstream)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Logs a receive error; backs off briefly on unexpected errors to avoid a busy loop.
async fn on_recv_error(err: io::Error, what: &str) {
    match err.kind() {
        // ICMP port unreachable and friends surface as these on the next receive.
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
            tracing::debug!(?err, "fault proxy: receive on {what} socket");
        }
        _ => {
            tracing::warn!(?err, "fault proxy: receive on {what} socket failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn run_listener(
    shared: Arc<Shared>,
    listen: Arc<UdpSocket>,
    tx: mpsc::UnboundedSender<Scheduled>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, client) = match listen.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                on_recv_error(err, "listening").await;
                continue;
            }
        };
        let data = buf.get(..len).unwrap_or(&buf);
        match shared.client_socket(client, &tx) {
            Ok(socket) => {
                shared.handle_packet(Direction::Up, data, Target::Upstream(socket), &tx);
            }
            Err(err) => {
                let counters = shared.counters(Direction::Up);
                bump(&counters.packets_in, 1);
                bump(&counters.bytes_in, len as u64);
                bump(&counters.dropped_other, 1);
                tracing::warn!(?err, %client, "fault proxy: cannot relay for client");
            }
        }
    }
}

async fn run_client_reader(
    shared: Arc<Shared>,
    client: SocketAddr,
    socket: Arc<UdpSocket>,
    last_active: Arc<AtomicU64>,
    tx: mpsc::UnboundedSender<Scheduled>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match tokio::time::timeout(IDLE_CHECK_INTERVAL, socket.recv(&mut buf)).await {
            Err(_elapsed) => {
                if shared.reap_if_idle(client, &last_active) {
                    return;
                }
            }
            Ok(Ok(len)) => {
                last_active.store(shared.millis_since_epoch(), AtomicOrdering::Relaxed);
                let data = buf.get(..len).unwrap_or(&buf);
                shared.handle_packet(Direction::Down, data, Target::Client(client), &tx);
            }
            Ok(Err(err)) => on_recv_error(err, "upstream").await,
        }
    }
}

async fn run_scheduler(
    shared: Arc<Shared>,
    listen: Arc<UdpSocket>,
    mut rx: mpsc::UnboundedReceiver<Scheduled>,
) {
    let mut heap: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::new();
    let mut open = true;
    loop {
        // Deliver everything that is due before waiting again, so that a steady stream
        // of new packets cannot starve delivery.
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(item)| item.at <= now) {
            if let Some(Reverse(item)) = heap.pop() {
                shared.deliver(item, &listen).await;
            }
        }
        let next = heap.peek().map(|Reverse(item)| item.at);
        if !open && next.is_none() {
            return;
        }
        let deadline = next.unwrap_or_else(|| add_saturating(now, FAR_FUTURE));
        tokio::select! {
            received = rx.recv(), if open => match received {
                Some(item) => heap.push(Reverse(item)),
                None => open = false,
            },
            () = tokio::time::sleep_until(deadline), if next.is_some() => {}
        }
    }
}

/// A running UDP fault-injection proxy. Dropping it stops all its tasks.
pub struct FaultProxy {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Scheduled>,
    listener: JoinHandle<()>,
    scheduler: JoinHandle<()>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("local_addr", &self.local_addr)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Binds `listen` and starts relaying between its clients and `upstream`, applying
    /// `config`. Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// Fails if `listen` cannot be bound.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        config: FaultConfig,
    ) -> io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let local_addr = socket.local_addr()?;
        let epoch = Instant::now();
        let link = Link {
            up: FaultModel::new(&config, Direction::Up, epoch),
            down: FaultModel::new(&config, Direction::Down, epoch),
            config,
        };
        let shared = Arc::new(Shared {
            epoch,
            upstream,
            link: Mutex::new(link),
            up: Counters::default(),
            down: Counters::default(),
            clients: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            next_seq: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let scheduler = tokio::spawn(run_scheduler(Arc::clone(&shared), Arc::clone(&socket), rx));
        let listener = tokio::spawn(run_listener(Arc::clone(&shared), socket, tx.clone()));
        tracing::debug!(%local_addr, %upstream, "fault proxy started");
        Ok(Self {
            local_addr,
            shared,
            tx,
            listener,
            scheduler,
        })
    }

    /// The address clients should send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The upstream address datagrams are relayed to.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Moves every client's traffic to a new source port toward the upstream, as the server
    /// sees a NAT rebinding or a laptop that moved from a satellite link to a cellular one:
    /// later datagrams come from the new address, and answers sent to the old one are lost.
    /// Returns how many clients moved. Must be called within the proxy's runtime.
    ///
    /// # Errors
    ///
    /// Fails if a new socket cannot be bound.
    pub fn rebind(&self) -> io::Result<usize> {
        self.shared.rebind(&self.tx)
    }

    /// Cuts the link in both directions until [`restore`](Self::restore): every datagram
    /// is dropped, including those already in flight.
    pub fn cut(&self) {
        let mut link = lock(&self.shared.link);
        link.up.cut();
        link.down.cut();
    }

    /// Cuts the link in both directions for `duration` (or until
    /// [`restore`](Self::restore)).
    pub fn cut_for(&self, duration: Duration) {
        let until = add_saturating(Instant::now(), duration);
        let mut link = lock(&self.shared.link);
        link.up.cut_until(until);
        link.down.cut_until(until);
    }

    /// Ends a manual cut. A configured cut schedule still applies.
    pub fn restore(&self) {
        let mut link = lock(&self.shared.link);
        link.up.restore();
        link.down.restore();
    }

    /// Whether the link is currently cut, manually or by the cut schedule.
    pub fn is_cut(&self) -> bool {
        self.shared.is_cut(Direction::Up, Instant::now())
    }

    /// Replaces the fault configuration. The models are reseeded from `config.seed`;
    /// manual cuts, the cut-schedule epoch (the proxy's start) and packets already in
    /// flight are kept.
    pub fn set_config(&self, config: FaultConfig) {
        let mut link = lock(&self.shared.link);
        link.up.reconfigure(&config, Direction::Up);
        link.down.reconfigure(&config, Direction::Down);
        link.config = config;
    }

    /// The fault configuration in use.
    pub fn config(&self) -> FaultConfig {
        lock(&self.shared.link).config.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FaultStats {
        FaultStats {
            up: self.shared.up.snapshot(),
            down: self.shared.down.snapshot(),
            clients: lock(&self.shared.clients).len(),
            in_flight: self.shared.in_flight.load(AtomicOrdering::Relaxed),
        }
    }

    /// Stops the proxy and waits until its listening socket is closed. Packets still in
    /// flight are discarded.
    pub async fn shutdown(mut self) {
        self.abort_all();
        // Cancellation errors are expected here; the tasks never return anything else.
        let _ = (&mut self.listener).await;
        let _ = (&mut self.scheduler).await;
    }

    fn abort_all(&self) {
        self.listener.abort();
        self.scheduler.abort();
        self.shared.abort_clients();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::future::Future;

    const TEST_TIMEOUT: Duration = Duration::from_secs(30);
    const LOCALHOST: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

    /// Runs a test body with an overall time limit.
    async fn bounded<F: Future<Output = ()>>(body: F) {
        tokio::time::timeout(TEST_TIMEOUT, body)
            .await
            .expect("test timed out");
    }

    /// A UDP echo server on 127.0.0.1; records the peers it has seen.
    struct Echo {
        addr: SocketAddr,
        peers: Arc<Mutex<HashSet<SocketAddr>>>,
        task: JoinHandle<()>,
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn echo_server() -> Echo {
        let socket = UdpSocket::bind(LOCALHOST).await.expect("bind echo");
        let addr = socket.local_addr().expect("echo addr");
        let peers = Arc::new(Mutex::new(HashSet::new()));
        let seen = Arc::clone(&peers);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                if let Ok((len, peer)) = socket.recv_from(&mut buf).await {
                    lock(&seen).insert(peer);
                    let _ = socket.send_to(&buf[..len], peer).await;
                }
            }
        });
        Echo { addr, peers, task }
    }

    async fn client_for(proxy: &FaultProxy) -> UdpSocket {
        let client = UdpSocket::bind(LOCALHOST).await.expect("bind client");
        client
            .connect(proxy.local_addr())
            .await
            .expect("connect client");
        client
    }

    async fn setup(config: FaultConfig) -> (Echo, FaultProxy, UdpSocket) {
        let echo = echo_server().await;
        let proxy = FaultProxy::start(LOCALHOST, echo.addr, config)
            .await
            .expect("start proxy");
        let client = client_for(&proxy).await;
        (echo, proxy, client)
    }

    fn packet(seq: u32, len: usize) -> Vec<u8> {
        let mut data = vec![0xA5; len.max(4)];
        data[..4].copy_from_slice(&seq.to_be_bytes());
        data
    }

    fn seq_of(data: &[u8]) -> u32 {
        u32::from_be_bytes([data[0], data[1], data[2], data[3]])
    }

    /// Receives up to `n` datagrams, waiting at most `wait` in total.
    async fn recv_up_to(client: &UdpSocket, n: usize, wait: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while out.len() < n {
            match tokio::time::timeout_at(deadline, client.recv(&mut buf)).await {
                Ok(Ok(len)) => out.push(buf[..len].to_vec()),
                Ok(Err(_)) => {}
                Err(_) => break,
            }
        }
        out
    }

    /// Polls the proxy's stats until `pred` holds (or panics after a few seconds).
    async fn wait_stats(proxy: &FaultProxy, pred: impl Fn(&FaultStats) -> bool) -> FaultStats {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = proxy.stats();
            if pred(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "stats never matched: {stats:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn up_only(seed: u64, up: LinkConfig) -> FaultConfig {
        FaultConfig {
            seed,
            up,
            ..FaultConfig::default()
        }
    }

    // ---- FaultModel: pure decision tests -------------------------------------------

    /// An outcome with the delivery time made relative to the model's epoch, so that
    /// runs started at different instants can be compared.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Outcome {
        Drop(DropReason),
        Deliver {
            after: Duration,
            duplicate: bool,
            reordered: bool,
        },
    }

    /// Feeds `n` packets of 1,200 bytes, one per millisecond, to a fresh model.
    fn decisions(config: &FaultConfig, direction: Direction, n: u32) -> Vec<Outcome> {
        let epoch = Instant::now();
        let mut model = FaultModel::new(config, direction, epoch);
        (0..n)
            .map(
                |i| match model.decide(epoch + Duration::from_millis(u64::from(i)), 1200) {
                    Decision::Drop(reason) => Outcome::Drop(reason),
                    Decision::Deliver(d) => Outcome::Deliver {
                        after: d.at.duration_since(epoch),
                        duplicate: d.duplicate,
                        reordered: d.reordered,
                    },
                },
            )
            .collect()
    }

    fn busy_link() -> LinkConfig {
        LinkConfig {
            loss: 0.1,
            burst: Some(BurstLoss {
                p_good_to_bad: 0.02,
                p_bad_to_good: 0.3,
                loss_in_bad: 0.9,
            }),
            delay: Duration::from_millis(40),
            jitter: Duration::from_millis(15),
            reorder: 0.05,
            reorder_delay: Duration::from_millis(10),
            duplicate: 0.02,
            bandwidth_bps: Some(2_000_000),
            queue_limit_bytes: 16 * 1024,
        }
    }

    #[test]
    fn faultproxy_model_same_seed_same_decisions() {
        let config = FaultConfig {
            cut_every: Some((Duration::from_millis(900), Duration::from_millis(100))),
            ..FaultConfig::symmetric(42, busy_link())
        };
        for direction in [Direction::Up, Direction::Down] {
            let a = decisions(&config, direction, 5_000);
            let b = decisions(&config, direction, 5_000);
            assert_eq!(a, b);
            let drops = a.iter().filter(|d| matches!(d, Outcome::Drop(_))).count();
            assert!(drops > 0 && drops < a.len(), "drops {drops}");
        }
        let other = FaultConfig {
            seed: 43,
            ..config.clone()
        };
        assert_ne!(
            decisions(&config, Direction::Up, 5_000),
            decisions(&other, Direction::Up, 5_000)
        );
        // The two directions use independent streams.
        assert_ne!(
            decisions(&config, Direction::Up, 5_000),
            decisions(&config, Direction::Down, 5_000)
        );
    }

    #[test]
    fn faultproxy_model_same_seed_same_delivery_times() {
        let config = FaultConfig::symmetric(7, busy_link());
        let epoch = Instant::now();
        let mut a = FaultModel::new(&config, Direction::Up, epoch);
        let mut b = FaultModel::new(&config, Direction::Up, epoch);
        for i in 0..5_000u64 {
            let now = epoch + Duration::from_micros(i * 300);
            let len = 100 + (i as usize * 37) % 1200;
            assert_eq!(a.decide(now, len), b.decide(now, len), "packet {i}");
        }
    }

    #[test]
    fn faultproxy_model_perfect_link_is_transparent() {
        let epoch = Instant::now();
        let mut model = FaultModel::new(&FaultConfig::default(), Direction::Up, epoch);
        for i in 0..1_000u64 {
            let now = epoch + Duration::from_micros(i * 10);
            assert_eq!(
                model.decide(now, 1200),
                Decision::Deliver(Delivery {
                    at: now,
                    duplicate: false,
                    reordered: false
                })
            );
        }
    }

    #[test]
    fn faultproxy_model_loss_rate() {
        let config = up_only(
            1,
            LinkConfig {
                loss: 0.3,
                ..LinkConfig::default()
            },
        );
        let all = decisions(&config, Direction::Up, 10_000);
        let lost = all
            .iter()
            .filter(|d| **d == Outcome::Drop(DropReason::Loss))
            .count();
        assert!((2_500..3_500).contains(&lost), "lost {lost}");
    }

    #[test]
    fn faultproxy_model_gilbert_elliott_bursts() {
        let config = up_only(
            3,
            LinkConfig {
                burst: Some(BurstLoss {
                    p_good_to_bad: 0.01,
                    p_bad_to_good: 0.3,
                    loss_in_bad: 1.0,
                }),
                ..LinkConfig::default()
            },
        );
        let lost: Vec<bool> = decisions(&config, Direction::Up, 100_000)
            .iter()
            .map(|d| matches!(d, Outcome::Drop(DropReason::Burst)))
            .collect();
        let total = lost.iter().filter(|&&l| l).count();
        let bursts = lost.windows(2).filter(|w| w[1] && !w[0]).count() + usize::from(lost[0]);
        // Stationary loss 0.01 / 0.31 ≈ 3.2 %, mean burst length 1 / 0.3 ≈ 3.3.
        assert!((2_000..5_000).contains(&total), "lost {total}");
        let mean_burst = total as f64 / bursts.max(1) as f64;
        assert!((2.0..5.0).contains(&mean_burst), "mean burst {mean_burst}");
    }

    #[test]
    fn faultproxy_model_bandwidth_serializes_and_tail_drops() {
        // 64 kbit/s = 8,000 B/s: a 1,000-byte packet takes 125 ms.
        let config = up_only(
            0,
            LinkConfig {
                bandwidth_bps: Some(64_000),
                queue_limit_bytes: 4_000,
                ..LinkConfig::default()
            },
        );
        let epoch = Instant::now();
        let mut model = FaultModel::new(&config, Direction::Up, epoch);
        let mut delivered = Vec::new();
        let mut dropped = 0;
        for _ in 0..20 {
            match model.decide(epoch, 1_000) {
                Decision::Deliver(d) => delivered.push(d.at.duration_since(epoch)),
                Decision::Drop(DropReason::QueueFull) => dropped += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        let expected: Vec<Duration> = (1..=delivered.len() as u64)
            .map(|k| Duration::from_millis(125 * k))
            .collect();
        assert_eq!(delivered, expected);
        assert!(
            delivered.len() >= 4 && dropped > 0,
            "{delivered:?} {dropped}"
        );
        assert_eq!(delivered.len() + dropped, 20);
        // Once the queue has drained, packets are accepted again.
        let later = epoch + Duration::from_secs(10);
        assert!(matches!(model.decide(later, 1_000), Decision::Deliver(_)));
    }

    #[test]
    fn faultproxy_model_reorder_and_fifo() {
        let config = up_only(
            11,
            LinkConfig {
                delay: Duration::from_millis(50),
                jitter: Duration::from_millis(30),
                reorder: 0.2,
                reorder_delay: Duration::from_millis(20),
                ..LinkConfig::default()
            },
        );
        let epoch = Instant::now();
        let mut model = FaultModel::new(&config, Direction::Up, epoch);
        let mut in_order_tail = epoch;
        let mut reordered = 0;
        for i in 0..2_000u64 {
            let now = epoch + Duration::from_millis(i);
            let Decision::Deliver(d) = model.decide(now, 100) else {
                panic!("no loss configured");
            };
            assert!(d.at >= now + Duration::from_millis(50), "delay lower bound");
            if d.reordered {
                reordered += 1;
            } else {
                // Jitter never reorders in-order packets.
                assert!(d.at >= in_order_tail);
                in_order_tail = d.at;
            }
        }
        assert!((200..600).contains(&reordered), "reordered {reordered}");
    }

    #[test]
    fn faultproxy_model_cut_schedule_and_manual_cut() {
        let config = FaultConfig {
            cut_every: Some((Duration::from_millis(100), Duration::from_millis(50))),
            ..FaultConfig::default()
        };
        let epoch = Instant::now();
        let mut model = FaultModel::new(&config, Direction::Down, epoch);
        let at = |ms| epoch + Duration::from_millis(ms);
        assert!(matches!(model.decide(at(10), 10), Decision::Deliver(_)));
        assert_eq!(model.decide(at(120), 10), Decision::Drop(DropReason::Cut));
        assert!(matches!(model.decide(at(160), 10), Decision::Deliver(_)));
        assert_eq!(model.decide(at(270), 10), Decision::Drop(DropReason::Cut));
        model.cut();
        assert_eq!(model.decide(at(310), 10), Decision::Drop(DropReason::Cut));
        model.restore();
        assert!(matches!(model.decide(at(320), 10), Decision::Deliver(_)));
        // 450..500 ms is an "up" phase of the schedule (period 150 ms).
        model.cut_until(at(460));
        assert_eq!(model.decide(at(455), 10), Decision::Drop(DropReason::Cut));
        assert!(matches!(model.decide(at(461), 10), Decision::Deliver(_)));
    }

    #[test]
    fn faultproxy_model_odd_config_does_not_panic() {
        let odd = LinkConfig {
            loss: f64::NAN,
            burst: Some(BurstLoss {
                p_good_to_bad: 7.0,
                p_bad_to_good: -1.0,
                loss_in_bad: f64::INFINITY,
            }),
            delay: Duration::MAX,
            jitter: Duration::MAX,
            reorder: 2.0,
            reorder_delay: Duration::MAX,
            duplicate: f64::NEG_INFINITY,
            bandwidth_bps: Some(0),
            queue_limit_bytes: 0,
        };
        let configs = [
            FaultConfig {
                cut_every: Some((Duration::ZERO, Duration::ZERO)),
                ..FaultConfig::symmetric(u64::MAX, odd.clone())
            },
            FaultConfig {
                cut_every: Some((Duration::MAX, Duration::MAX)),
                ..FaultConfig::symmetric(
                    0,
                    LinkConfig {
                        loss: 0.0,
                        burst: None,
                        bandwidth_bps: Some(1),
                        ..odd.clone()
                    },
                )
            },
        ];
        let epoch = Instant::now();
        for config in &configs {
            let mut model = FaultModel::new(config, Direction::Up, epoch);
            for i in 0..100u64 {
                let _ = model.decide(epoch + Duration::from_millis(i), usize::MAX);
                let _ = model.decide(epoch, 0);
            }
        }
        // Burst always entered and always lossy: everything dropped, without panicking.
        let all = decisions(&configs[0], Direction::Up, 10);
        assert!(all.iter().all(|d| matches!(d, Outcome::Drop(_))));
    }

    // ---- FaultProxy: end-to-end over 127.0.0.1 -------------------------------------

    #[tokio::test]
    async fn faultproxy_perfect_link_passes_everything_in_order() {
        bounded(async {
            let (echo, proxy, client) = setup(FaultConfig::default()).await;
            let mut received = Vec::new();
            for window in 0..4u32 {
                for seq in window * 50..(window + 1) * 50 {
                    client.send(&packet(seq, 64)).await.expect("send");
                }
                let got = recv_up_to(&client, 50, Duration::from_secs(5)).await;
                received.extend(got.iter().map(|d| seq_of(d)));
            }
            assert_eq!(received, (0..200).collect::<Vec<u32>>());
            let stats = wait_stats(&proxy, |s| s.down.packets_forwarded == 200).await;
            assert_eq!(stats.up.packets_in, 200);
            assert_eq!(stats.up.packets_forwarded, 200);
            assert_eq!(stats.up.bytes_forwarded, 200 * 64);
            assert_eq!(stats.up.dropped() + stats.down.dropped(), 0);
            assert_eq!(stats.clients, 1);
            assert_eq!(lock(&echo.peers).len(), 1);
            proxy.shutdown().await;
        })
        .await;
    }

    #[tokio::test]
    async fn faultproxy_total_loss_drops_everything() {
        bounded(async {
            let config = FaultConfig::symmetric(
                5,
                LinkConfig {
                    loss: 1.0,
                    ..LinkConfig::default()
                },
            );
            let (echo, proxy, client) = setup(config).await;
            for seq in 0..50 {
                client.send(&packet(seq, 32)).await.expect("send");
            }
            let stats = wait_stats(&proxy, |s| s.up.packets_in == 50).await;
            assert_eq!(stats.up.dropped_loss, 50);
            assert_eq!(stats.up.packets_forwarded, 0);
            assert!(
                recv_up_to(&client, 1, Duration::from_millis(200))
                    .await
                    .is_empty()
            );
            assert!(lock(&echo.peers).is_empty());
        })
        .await;
    }

    /// Sends `n` packets in windows, waiting for the proxy to take each window in (so the
    /// kernel never drops for lack of buffer space), and returns the final stats.
    async fn send_through(proxy: &FaultProxy, client: &UdpSocket, n: u64) -> FaultStats {
        let start = proxy.stats().up.packets_in;
        let mut sent = 0u64;
        while sent < n {
            let window = (n - sent).min(100);
            for _ in 0..window {
                client.send(&packet(sent as u32, 32)).await.expect("send");
                sent += 1;
            }
            wait_stats(proxy, |s| s.up.packets_in >= start + sent).await;
        }
        wait_stats(proxy, |s| s.in_flight == 0).await
    }

    #[tokio::test]
    async fn faultproxy_random_loss_rate_with_fixed_seed() {
        bounded(async {
            let config = up_only(
                2024,
                LinkConfig {
                    loss: 0.3,
                    ..LinkConfig::default()
                },
            );
            let (_echo, proxy, client) = setup(config).await;
            let stats = send_through(&proxy, &client, 2_000).await;
            assert_eq!(stats.up.packets_in, 2_000);
            let lost = stats.up.dropped_loss;
            assert!((400..=800).contains(&lost), "lost {lost} of 2000");
            assert_eq!(stats.up.packets_forwarded + stats.up.dropped(), 2_000);
        })
        .await;
    }

    #[tokio::test]
    async fn faultproxy_same_seed_same_drops_through_proxy() {
        bounded(async {
            let config = up_only(
                99,
                LinkConfig {
                    loss: 0.25,
                    ..LinkConfig::default()
                },
            );
            let mut dropped = Vec::new();
            for _ in 0..2 {
                let (_echo, proxy, client) = setup(config.clone()).await;
                dropped.push(send_through(&proxy, &client, 300).await.up.dropped_loss);
                proxy.shutdown().await;
            }
            assert_eq!(dropped[0], dropped[1]);
            assert!(dropped[0] > 0);
        })
        .await;
    }

    #[tokio::test]
    async fn faultproxy_duplicate_doubles() {
        bounded(async {
            let config = up_only(
                8,
                LinkConfig {
                    duplicate: 1.0,
                    ..LinkConfig::default()
                },
            );
            let (_echo, proxy, client) = setup(config).await;
            for seq in 0..20 {
                client.send(&packet(seq, 32)).await.expect("send");
            }
            let got = recv_up_to(&client, 40, Duration::from_secs(5)).await;
            assert_eq!(got.len(), 40);
            for seq in 0..20 {
                assert_eq!(got.iter().filter(|d| seq_of(d) == seq).count(), 2);
            }
            let stats = wait_stats(&proxy, |s| s.down.packets_forwarded == 40).await;
            assert_eq!(stats.up.duplicated, 20);
            assert_eq!(stats.up.packets_forwarded, 40);
            assert_eq!(stats.down.duplicated, 0);
            // Nothing more arrives.
            assert!(
                recv_up_to(&client, 1, Duration::from_millis(100))
                    .await
                    .is_empty()
            );
        })
        .await;
    }

    #[tokio::test]
    async fn faultproxy_cut_then_restore() {
        bounded(async {
            let (_echo, proxy, client) = setup(FaultConfig::default()).await;
            client.send(&packet(0, 16)).await.expect("send");
            assert_eq!(
                recv_up_to(&client, 1, Duration::from_secs(5)).await.len(),
                1
            );

            proxy.cut();
            assert!(proxy.is_cut());
            for seq in 1..=10 {
                client.send(&packet(seq, 16)).await.expect("send");
            }
            let stats = wait_stats(&proxy, |s| s.up.packets_in == 11).await;
            assert_eq!(stats.up.dropped_cut, 10);
            assert!(
                recv_up_to(&client, 1, Duration::from_millis(200))
                    .await
                    .is_empty()
            );

            proxy.restore();
            assert!(!proxy.is_cut());
            client.send(&packet(11, 16)).await.expect("send");
            let got = recv_up_to(&client, 1, Duration::from_secs(5)).await;
            assert_eq!(got.iter().map(|d| seq_of(d)).collect::<Vec<_>>(), vec![11]);
        })
        .await;
    }

    #[tokio::test]
    async fn faultproxy_cut_for_expires() {
        bounded(async {
            let (_echo, proxy, client) = setup(FaultConfig::default()).await;
            proxy.cut_for(Duration::from_millis(300));
            client.send(&packet(0, 16)).await.expect("send");
            wait_stats(&proxy, |s| s.up.dropped_cut == 1).await;
            tokio::time::sleep(Duration::from_millis(350)).await;
            assert!(!proxy.is_cut());
            client.send(&packet(1, 16)).await.expect("send");
            let got = recv_up_to(&client, 1, Duration::from_secs(5)).await;
            assert_eq!(got.iter().map(|d| seq_of(d)).collect::<Vec<_>>(), vec![1]);
        })
        .await;
    }

    #[tokio::test]
    async fn faultproxy_cut_drops_packets_in_flight() {
        bounded(async {
            let config = FaultConfig::symmetric(
                1,
                LinkConfig {
                    delay: Duration::from_millis(200),
                    ..LinkConfig::default()
                },
            );
            let (_echo, proxy, client) = setup(config).await;
            client.send(&packet(0, 16)).await.expect("send");
            wait_stats(&proxy, |s| s.in_flight == 1).await;
            proxy.cut();
            let stats = wait_stats(&proxy, |s| s.in_flight == 0).await;
            assert_eq!(stats.up.dropped_cut, 1);
            assert_eq!(stats.up.packets_forwarded, 0);
        })
        .await;
    }

    #[tokio::test]
    async fn faultproxy_delay_adds_at_least_configured_delay() {
        bounded(async {
            let config = FaultConfig::symmetric(
                3,
                LinkConfig {
                    delay: Duration::from_millis(100),
                    jitter: Duration::from_millis(20),
                    ..LinkConfig::default()
                },
            );
            let (_echo, _proxy, client) = setup(config).await;
            for seq in 0..3 {
                let started = Instant::now();
                client.send(&packet(seq, 16)).await.expect("send");
                let got = recv_up_to(&client, 1, Duration::from_secs(5)).await;
                assert_eq!(got.len(), 1);
                // One-way delay in each direction: the round trip takes at least 200 ms.
                let rtt = started.elapsed();
                assert!(rtt >= Duration::from_millis(200), "rtt {rtt:?}");
            }
        })
        .await;
    }

    #[tokio::test]
    async fn faultproxy_delayed_packets_do_not_block_others() {
        bounded(async {
            // Every other packet is held back by 300 ms; the rest must not wait for them.
            let config = up_only(
                4,
                LinkConfig {
                    reorder: 0.5,
                    reorder_delay: Duration::from_millis(300),
                    ..LinkConfig::default()
                },
            );
            let (_echo, proxy, client) = setup(config).await;
            let started = Instant::now();
            for seq in 0..40 {
                client.send(&packet(seq, 16)).await.expect("send");
            }
            let stats = wait_stats(&proxy, |s| s.up.packets_in == 40).await;
            let prompt = 40 - stats.up.reordered as usize;
            assert!(prompt > 0 && stats.up.reordered > 0, "{stats:?}");
            let first = recv_up_to(&client, prompt, Duration::from_secs(5)).await;
            assert_eq!(first.len(), prompt);
            let rest = recv_up_to(&client, 40 - prompt, Duration::from_secs(5)).await;
            assert!(started.elapsed() >= Duration::from_millis(300));
            let mut all: Vec<u32> = first.iter().chain(&rest).map(|d| seq_of(d)).collect();
            assert_ne!(all, (0..40).collect::<Vec<u32>>(), "expected reordering");
            all.sort_unstable();
            assert_eq!(all, (0..40).collect::<Vec<u32>>());
        })
        .await;
    }

    #[tokio::test]
    async fn faultproxy_bandwidth_limit_slows_transfer() {
        bounded(async {
            // 64 kbit/s = 8,000 B/s: 4 x 1,000 bytes need at least 500 ms to get through.
            let config = up_only(
                6,
                LinkConfig {
                    bandwidth_bps: Some(64_000),
                    ..LinkConfig::default()
                },
            );
            let (_echo, proxy, client) = setup(config).await;
            let started = Instant::now();
            for seq in 0..4 {
                client.send(&packet(seq, 1_000)).await.expect("send");
            }
            let got = recv_up_to(&client, 4, Duration::from_secs(10)).await;
            let elapsed = started.elapsed();
            assert_eq!(got.len(), 4);
            assert!(elapsed >= Duration::from_millis(495), "elapsed {elapsed:?}");
            assert_eq!(proxy.stats().up.dropped_queue, 0);
        })
        .await;
    }

    #[tokio::test]
    async fn faultproxy_bandwidth_queue_overflow_drops() {
        bounded(async {
            let config = up_only(
                6,
                LinkConfig {
                    bandwidth_bps: Some(64_000),
                    queue_limit_bytes: 3_000,
                    ..LinkConfig::default()
                },
            );
            let (_echo, proxy, client) = setup(config).await;
            for seq in 0..20 {
                client.send(&packet(seq, 1_000)).await.expect("send");
            }
            let stats = wait_stats(&proxy, |s| s.up.packets_in == 20).await;
            assert!(stats.up.dropped_queue > 0, "{stats:?}");
            proxy.shutdown().await;
        })
        .await;
    }

    #[tokio::test]
    async fn faultproxy_many_clients_get_distinct_upstream_peers() {
        bounded(async {
            let (echo, proxy, first) = setup(FaultConfig::default()).await;
            let second = client_for(&proxy).await;
            let third = client_for(&proxy).await;
            let clients = [&first, &second, &third];
            for round in 0..5u32 {
                for (i, client) in clients.iter().enumerate() {
                    let seq = round * 10 + i as u32;
                    client.send(&packet(seq, 16)).await.expect("send");
                }
            }
            for (i, client) in clients.iter().enumerate() {
                let got: Vec<u32> = recv_up_to(client, 5, Duration::from_secs(5))
                    .await
                    .iter()
                    .map(|d| seq_of(d))
                    .collect();
                let want: Vec<u32> = (0..5).map(|round| round * 10 + i as u32).collect();
                assert_eq!(got, want, "client {i}");
            }
            assert_eq!(lock(&echo.peers).len(), 3);
            assert_eq!(proxy.stats().clients, 3);
        })
        .await;
    }

    #[tokio::test]
    async fn faultproxy_set_config_at_runtime() {
        bounded(async {
            let lossy = FaultConfig::symmetric(
                1,
                LinkConfig {
                    loss: 1.0,
                    ..LinkConfig::default()
                },
            );
            let (_echo, proxy, client) = setup(lossy).await;
            client.send(&packet(0, 16)).await.expect("send");
            wait_stats(&proxy, |s| s.up.dropped_loss == 1).await;
            proxy.set_config(FaultConfig::default());
            assert_eq!(proxy.config(), FaultConfig::default());
            client.send(&packet(1, 16)).await.expect("send");
            let got = recv_up_to(&client, 1, Duration::from_secs(5)).await;
            assert_eq!(got.iter().map(|d| seq_of(d)).collect::<Vec<_>>(), vec![1]);
        })
        .await;
    }

    #[tokio::test]
    async fn faultproxy_shutdown_frees_the_port() {
        bounded(async {
            let (_echo, proxy, client) = setup(FaultConfig::default()).await;
            let addr = proxy.local_addr();
            client.send(&packet(0, 16)).await.expect("send");
            assert_eq!(
                recv_up_to(&client, 1, Duration::from_secs(5)).await.len(),
                1
            );
            proxy.shutdown().await;
            let rebound = UdpSocket::bind(addr).await;
            assert!(rebound.is_ok(), "port still in use: {rebound:?}");
        })
        .await;
    }

    #[tokio::test]
    async fn faultproxy_unreachable_upstream_is_survivable() {
        bounded(async {
            // Nothing listens upstream: ICMP errors must not stop the proxy.
            let dead = UdpSocket::bind(LOCALHOST).await.expect("bind");
            let dead_addr = dead.local_addr().expect("addr");
            drop(dead);
            let proxy = FaultProxy::start(LOCALHOST, dead_addr, FaultConfig::default())
                .await
                .expect("start");
            let client = client_for(&proxy).await;
            for seq in 0..10 {
                client.send(&packet(seq, 16)).await.expect("send");
            }
            let stats = wait_stats(&proxy, |s| s.up.packets_in == 10 && s.in_flight == 0).await;
            assert_eq!(stats.up.packets_forwarded + stats.up.dropped_other, 10);
            assert!(!proxy.listener.is_finished() && !proxy.scheduler.is_finished());
        })
        .await;
    }
}

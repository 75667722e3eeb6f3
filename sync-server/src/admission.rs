//! Who keeps a connection slot when peers compete for them.
//!
//! Every connection counts against `max_connections` from its first packet. Two smaller
//! budgets keep one party from holding the slots everyone needs:
//! - **connections that have not authenticated** (`max_unauthenticated`): when one more
//!   arrives over the budget, the *oldest* unauthenticated connection is closed rather than the
//!   newcomer refused, so a peer that opens connections and never says `Hello` only ever evicts
//!   itself, and an enrolled device gets the few milliseconds it needs to authenticate; under
//!   that load the relay also asks new peers to prove their address (a QUIC Retry) before it
//!   spends a handshake on them;
//! - **connections of one device** (`max_connections_per_device`): a new login from a device
//!   that already holds that many closes its oldest.
//!
//! The accept loop calls [`Admission::arrive`] for every new connection, the connection task
//! [`Admission::login`] once its device authenticated and [`Admission::leave`] when it ends.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use quinn::{Connection, VarInt};
use uuid::Uuid;

/// QUIC application close code for a connection evicted to make room for another.
pub const CLOSE_EVICTED: u32 = 3;

/// The slots of connections, by state (see the module docs).
#[derive(Debug)]
pub struct Admission {
    max_unauthenticated: usize,
    max_per_device: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// Connections that have not authenticated, oldest first.
    unauthenticated: VecDeque<(u64, Connection)>,
    /// Authenticated connections of each device, oldest first.
    devices: HashMap<Uuid, VecDeque<(u64, Connection)>>,
}

impl Admission {
    /// Budgets of at least one each.
    pub fn new(max_unauthenticated: usize, max_per_device: usize) -> Self {
        Self {
            max_unauthenticated: max_unauthenticated.max(1),
            max_per_device: max_per_device.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether new peers should prove their address first: half the unauthenticated budget is
    /// in use.
    pub fn under_load(&self) -> bool {
        self.state().unauthenticated.len() * 2 >= self.max_unauthenticated
    }

    /// Registers a new, unauthenticated connection and returns its ticket; closes the oldest
    /// unauthenticated connection when the budget is full. Returns how many were evicted.
    pub fn arrive(&self, conn: &Connection) -> (u64, usize) {
        let mut s = self.state();
        s.next += 1;
        let id = s.next;
        let mut evicted = 0;
        while s.unauthenticated.len() >= self.max_unauthenticated {
            if let Some((_, old)) = s.unauthenticated.pop_front() {
                old.close(
                    VarInt::from_u32(CLOSE_EVICTED),
                    b"too many connections waiting to authenticate",
                );
                evicted += 1;
            }
        }
        s.unauthenticated.push_back((id, conn.clone()));
        (id, evicted)
    }

    /// The connection with ticket `id` authenticated as `device`; closes the device's oldest
    /// connection when it holds the budget already. Returns how many were closed.
    pub fn login(&self, id: u64, device: Uuid) -> usize {
        let mut s = self.state();
        let Some(pos) = s.unauthenticated.iter().position(|(i, _)| *i == id) else {
            return 0;
        };
        let Some((_, conn)) = s.unauthenticated.remove(pos) else {
            return 0;
        };
        let max = self.max_per_device;
        let held = s.devices.entry(device).or_default();
        let mut closed = 0;
        while held.len() >= max {
            if let Some((_, old)) = held.pop_front() {
                old.close(
                    VarInt::from_u32(CLOSE_EVICTED),
                    b"a newer connection of this device took the slot",
                );
                closed += 1;
            }
        }
        held.push_back((id, conn));
        closed
    }

    /// The connection with ticket `id` ended.
    pub fn leave(&self, id: u64, device: Option<Uuid>) {
        let mut s = self.state();
        s.unauthenticated.retain(|(i, _)| *i != id);
        if let Some(d) = device
            && let Some(held) = s.devices.get_mut(&d)
        {
            held.retain(|(i, _)| *i != id);
            if held.is_empty() {
                s.devices.remove(&d);
            }
        }
    }
}

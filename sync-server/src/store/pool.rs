//! The bounded pool of read connections of a relay store: read-only SQLite connections beside
//! the one writer, or one PostgreSQL node's connections beside its writer and `LISTEN`
//! connection (at most `database_max_connections` together).
//!
//! Connections are opened when first needed and then kept: a read never pays for opening a
//! connection or reading the schema once the pool is warm. The pool never holds more
//! than its capacity (idle and lent together); a request that finds every connection lent
//! waits for one to come back, up to a time limit, and is then refused with
//! [`RelayStoreError::Busy`], which the client hears as "busy, try again in a moment".
//!
//! Requests come in two shares. [`Share::Bulk`] is the sync traffic whose size a client sets
//! (log and snapshot pages, a heads exchange); [`Share::Priority`] is the short, single-row
//! queries that let devices in and keep the node's view of devices and the log current
//! (authentication, the enrolment token check, the counters, a device's grant and last-seen
//! time). Bulk requests
//! may hold all but `reserved` connections, so however many clients download at once, a
//! device can still log in and a revocation still reaches the node.
//!
//! The pool is generic over the connection ([`Conn`]) so that its rules are tested without a
//! database; the stores use it with SQLite connections and PostgreSQL ones (`postgres::conn::PgConn`).

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::RelayStoreError;

/// A pooled connection: the pool drops one that broke instead of lending it again.
pub(super) trait Conn: Send {
    /// Whether the connection is unusable (closed by the server, the network cut).
    fn is_broken(&self) -> bool;
}

impl Conn for rusqlite::Connection {
    /// A SQLite connection to a local file does not break; an error is the statement's.
    fn is_broken(&self) -> bool {
        false
    }
}

/// Which share of the pool a request may use (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Share {
    /// Client-sized reads: all but the reserved connections.
    Bulk,
    /// Short queries that admit devices and follow the database: every connection.
    Priority,
}

/// A snapshot of the pool, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Most read connections the pool holds open.
    pub capacity: usize,
    /// Of those, kept for priority requests.
    pub reserved: usize,
    /// Connections open now (idle and lent).
    pub open: usize,
    /// Connections lent now.
    pub in_use: usize,
    /// Requests that found no connection free and waited, since the start.
    pub waits: u64,
    /// Requests refused as busy after waiting, since the start.
    pub timeouts: u64,
}

struct State<C> {
    idle: Vec<C>,
    /// Connections lent out (or being opened for a borrower).
    lent: usize,
    /// Of those, lent to bulk requests.
    lent_bulk: usize,
    waits: u64,
    timeouts: u64,
}

/// Opens a new connection for the pool.
type Connect<C> = Box<dyn Fn() -> Result<C, RelayStoreError> + Send + Sync>;

/// The pool (see the module docs).
pub(super) struct Pool<C: Conn> {
    connect: Connect<C>,
    capacity: usize,
    reserved: usize,
    wait: Duration,
    state: Mutex<State<C>>,
    returned: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<C: Conn> Pool<C> {
    /// A pool of at most `capacity` connections (at least 2), of which `reserved` (at least
    /// 1, fewer than `capacity`) serve priority requests only; a request waits at most
    /// `wait` for a connection.
    pub(super) fn new(
        capacity: usize,
        reserved: usize,
        wait: Duration,
        connect: impl Fn() -> Result<C, RelayStoreError> + Send + Sync + 'static,
    ) -> Self {
        let capacity = capacity.max(2);
        Self {
            connect: Box::new(connect),
            capacity,
            reserved: reserved.clamp(1, capacity - 1),
            wait,
            state: Mutex::new(State {
                idle: Vec::new(),
                lent: 0,
                lent_bulk: 0,
                waits: 0,
                timeouts: 0,
            }),
            returned: Condvar::new(),
        }
    }

    fn free_for(&self, st: &State<C>, share: Share) -> bool {
        st.lent < self.capacity
            && (share == Share::Priority || st.lent_bulk < self.capacity - self.reserved)
    }

    /// Lends a connection of `share`'s share, opening one if none is idle; waits for one to
    /// come back while the share is in use, and refuses with [`RelayStoreError::Busy`] when
    /// none did in time.
    pub(super) fn get(&self, share: Share) -> Result<Lent<'_, C>, RelayStoreError> {
        let deadline = Instant::now() + self.wait;
        let mut st = lock(&self.state);
        let mut waited = false;
        while !self.free_for(&st, share) {
            if !waited {
                waited = true;
                st.waits += 1;
            }
            let now = Instant::now();
            if now >= deadline {
                st.timeouts += 1;
                return Err(RelayStoreError::Busy { waited: self.wait });
            }
            st = self
                .returned
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        st.lent += 1;
        if share == Share::Bulk {
            st.lent_bulk += 1;
        }
        let idle = st.idle.pop();
        drop(st);
        // From here the slot is this borrower's: `Lent` gives it back, or the failed open
        // below does.
        let mut lent = Lent {
            pool: self,
            share,
            conn: None,
        };
        lent.conn = match idle {
            Some(c) if !c.is_broken() => Some(c),
            _ => Some((self.connect)()?),
        };
        Ok(lent)
    }

    fn give_back(&self, share: Share, conn: Option<C>) {
        let mut st = lock(&self.state);
        st.lent = st.lent.saturating_sub(1);
        if share == Share::Bulk {
            st.lent_bulk = st.lent_bulk.saturating_sub(1);
        }
        let broken = match conn {
            Some(c) if !c.is_broken() => {
                st.idle.push(c);
                None
            }
            other => other,
        };
        drop(st);
        self.returned.notify_all();
        drop(broken);
    }

    /// The pool's numbers now.
    pub(super) fn stats(&self) -> PoolStats {
        let st = lock(&self.state);
        PoolStats {
            capacity: self.capacity,
            reserved: self.reserved,
            open: st.idle.len() + st.lent,
            in_use: st.lent,
            waits: st.waits,
            timeouts: st.timeouts,
        }
    }

    /// Takes the idle connections out (to close them elsewhere).
    pub(super) fn drain_idle(&mut self) -> Vec<C> {
        std::mem::take(
            &mut self
                .state
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .idle,
        )
    }
}

/// A connection lent by the [`Pool`]; dropping it gives it back.
pub(super) struct Lent<'p, C: Conn> {
    pool: &'p Pool<C>,
    share: Share,
    conn: Option<C>,
}

impl<C: Conn> Lent<'_, C> {
    /// The connection.
    pub(super) fn conn(&mut self) -> Result<&mut C, RelayStoreError> {
        self.conn
            .as_mut()
            .ok_or_else(|| RelayStoreError::Invalid("a pooled connection went missing".into()))
    }
}

impl<C: Conn> Drop for Lent<'_, C> {
    fn drop(&mut self) {
        self.pool.give_back(self.share, self.conn.take());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    struct Fake {
        broken: Arc<AtomicBool>,
    }

    impl Conn for Fake {
        fn is_broken(&self) -> bool {
            self.broken.load(Ordering::SeqCst)
        }
    }

    fn pool(capacity: usize, reserved: usize, wait: Duration) -> (Pool<Fake>, Arc<AtomicUsize>) {
        let opened = Arc::new(AtomicUsize::new(0));
        let o = opened.clone();
        let p = Pool::new(capacity, reserved, wait, move || {
            o.fetch_add(1, Ordering::SeqCst);
            Ok(Fake {
                broken: Arc::new(AtomicBool::new(false)),
            })
        });
        (p, opened)
    }

    #[test]
    fn bulk_requests_leave_the_reserved_connections_to_priority_ones() {
        let (p, opened) = pool(4, 1, Duration::from_millis(50));
        let bulk: Vec<_> = (0..3).map(|_| p.get(Share::Bulk).unwrap()).collect();
        let err = p.get(Share::Bulk).err().unwrap();
        assert!(matches!(err, RelayStoreError::Busy { .. }), "{err}");
        let prio = p.get(Share::Priority).unwrap();
        assert!(p.get(Share::Priority).is_err(), "the pool is full");
        let s = p.stats();
        assert_eq!((s.open, s.in_use, s.waits, s.timeouts), (4, 4, 2, 2));
        drop(prio);
        drop(bulk);
        // Given back connections are lent again, not opened anew.
        let again: Vec<_> = (0..3).map(|_| p.get(Share::Bulk).unwrap()).collect();
        assert_eq!(opened.load(Ordering::SeqCst), 4);
        drop(again);
        assert_eq!(p.stats().in_use, 0);
    }

    #[test]
    fn a_waiting_request_gets_the_next_connection_given_back() {
        let (p, _) = pool(2, 1, Duration::from_secs(10));
        let p = Arc::new(p);
        let held = p.get(Share::Bulk).unwrap();
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.get(Share::Bulk).map(|_| ()).is_ok())
        };
        while p.stats().waits == 0 {
            std::thread::yield_now();
        }
        drop(held);
        assert!(waiter.join().unwrap());
        assert_eq!(p.stats().timeouts, 0);
    }

    #[test]
    fn broken_connections_are_replaced_and_failed_opens_free_their_slot() {
        let fails = Arc::new(AtomicBool::new(false));
        let broken = Arc::new(AtomicBool::new(false));
        let (f, b) = (fails.clone(), broken.clone());
        let p = Pool::new(2, 1, Duration::from_millis(20), move || {
            if f.load(Ordering::SeqCst) {
                return Err(RelayStoreError::Connect("db".into(), "refused".into()));
            }
            Ok(Fake { broken: b.clone() })
        });
        drop(p.get(Share::Bulk).unwrap());
        assert_eq!(p.stats().open, 1);
        broken.store(true, Ordering::SeqCst);
        fails.store(true, Ordering::SeqCst);
        assert!(matches!(
            p.get(Share::Bulk).err().unwrap(),
            RelayStoreError::Connect(..)
        ));
        let s = p.stats();
        assert_eq!((s.open, s.in_use), (0, 0), "{s:?}");
        fails.store(false, Ordering::SeqCst);
        broken.store(false, Ordering::SeqCst);
        assert!(p.get(Share::Bulk).is_ok());
    }
}

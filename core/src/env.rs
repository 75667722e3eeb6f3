//! Time and randomness, given to core from outside.
//!
//! Core never reads a clock or the operating system's randomness itself (`core/clippy.toml`
//! bans those calls in this crate): what it needs comes from an [`Env`] passed in — the
//! replica's through [`crate::store::StoreOptions::env`], an edit's time through
//! [`crate::model::EditCtx`]. Devices and the relay use [`SystemEnv`]; a simulation uses a
//! [`SeededEnv`], so that a seed replays to the same documents, change hashes included.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use uuid::Uuid;

use crate::ids::{DocId, Millis};

/// Where core gets the time and fresh randomness from.
pub trait Env: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> Millis;
    /// Fills `out` with fresh random bytes.
    fn fill_random(&self, out: &mut [u8]);
}

impl dyn Env + '_ {
    /// A new document id: a UUIDv7 of this environment's time and randomness.
    pub fn doc_id(&self) -> DocId {
        DocId(self.uuid_v7())
    }

    /// A time-ordered UUID (version 7) of this environment's time and randomness.
    pub fn uuid_v7(&self) -> Uuid {
        let mut bits = [0u8; 10];
        self.fill_random(&mut bits);
        let ms = u64::try_from(self.now_millis()).unwrap_or(0);
        uuid::Builder::from_unix_timestamp_millis(ms, &bits).into_uuid()
    }
}

/// The system clock and the operating system's randomness: what devices and the relay use.
/// The one place in core that reads them.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemEnv;

impl Env for SystemEnv {
    #[allow(clippy::disallowed_methods)]
    fn now_millis(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    #[allow(clippy::disallowed_methods)]
    fn fill_random(&self, out: &mut [u8]) {
        for chunk in out.chunks_mut(16) {
            let n = chunk.len();
            chunk.copy_from_slice(&Uuid::new_v4().as_bytes()[..n]);
        }
    }
}

/// A deterministic environment: its time moves only when told, its randomness comes from a
/// seed. For simulations and tests that must replay exactly.
#[derive(Debug)]
pub struct SeededEnv {
    now: AtomicI64,
    state: Mutex<u64>,
}

impl SeededEnv {
    /// An environment at time `now` whose randomness follows from `seed`.
    pub fn new(seed: u64, now: Millis) -> Self {
        Self {
            now: AtomicI64::new(now),
            state: Mutex::new(seed),
        }
    }

    /// Sets the time.
    pub fn set_now(&self, now: Millis) {
        self.now.store(now, Ordering::Relaxed);
    }

    /// Moves the time on by `ms`.
    pub fn advance(&self, ms: Millis) {
        self.now.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Env for SeededEnv {
    fn now_millis(&self) -> Millis {
        self.now.load(Ordering::Relaxed)
    }

    fn fill_random(&self, out: &mut [u8]) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for chunk in out.chunks_mut(8) {
            // SplitMix64: a full-period generator whose outputs pass the usual tests; plenty
            // for ids that must only differ and replay.
            *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let n = chunk.len();
            chunk.copy_from_slice(&z.to_le_bytes()[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_env_replays_and_moves_only_when_told() {
        let (a, b) = (SeededEnv::new(7, 1_000), SeededEnv::new(7, 1_000));
        let (a, b): (&dyn Env, &dyn Env) = (&a, &b);
        assert_eq!(a.doc_id(), b.doc_id());
        assert_eq!(a.doc_id(), b.doc_id());
        assert_ne!(a.doc_id(), a.doc_id(), "each id is new");
        assert_eq!(a.now_millis(), 1_000);
        let c = SeededEnv::new(8, 1_000);
        assert_ne!(
            (&c as &dyn Env).doc_id(),
            SeededEnv::new(7, 1_000).as_env().doc_id()
        );
    }

    #[test]
    fn ids_carry_the_environments_time() {
        let env = SeededEnv::new(1, 1_700_000_000_000);
        env.advance(5);
        let id = env.as_env().doc_id();
        assert_eq!(id.0.get_version_num(), 7);
        let (secs, nanos) = id.0.get_timestamp().expect("v7").to_unix();
        assert_eq!(
            secs * 1000 + u64::from(nanos) / 1_000_000,
            1_700_000_000_005
        );
    }

    impl SeededEnv {
        fn as_env(&self) -> &dyn Env {
            self
        }
    }
}

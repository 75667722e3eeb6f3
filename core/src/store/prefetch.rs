//! Downloaded snapshots loaded and read ahead, on helper threads, while one thread writes.
//!
//! Most of a first download's cost is loading Automerge documents and reading them as typed
//! documents, and neither needs the database: [`prepare_snapshot`] does that work for one
//! snapshot, and [`with_prepared`] runs it for a whole batch on helper threads, a bounded
//! window ahead of the transaction that stores the results in order
//! ([`super::StoreTx::apply_prepared_snapshot`]).

use std::collections::HashMap;

use automerge::{AutoCommit, ChangeHash};

use super::{StoreError, guard, load_snapshot};
use crate::ids::DocId;
use crate::model::{self, Document, ModelError};

/// A downloaded snapshot decoded ahead of the transaction that stores it (see
/// [`prepare_snapshot`] and
/// [`StoreTx::apply_prepared_snapshot`](super::StoreTx::apply_prepared_snapshot)).
pub struct PreparedSnapshot {
    /// The loaded document (taken when it is merged into an existing one).
    pub(super) doc: Option<AutoCommit>,
    pub(super) heads: Vec<ChangeHash>,
    /// The typed document and its conflicts; an error for a document the model cannot read
    /// (stored all the same, without projection rows).
    pub(super) read: Result<(Document, Vec<model::Conflict>), ModelError>,
}

/// Loads and reads a downloaded snapshot of document `id`: the work of applying it that needs
/// no database (most of a first download's cost), so it can run on other threads while one
/// thread writes. Fails for undecodable bytes and for a snapshot of another document.
pub fn prepare_snapshot(id: DocId, bytes: &[u8]) -> Result<PreparedSnapshot, StoreError> {
    let mut doc = load_snapshot(bytes)?;
    let read = guard("reading a document", || model::read_document(&doc))?;
    let holds = match &read {
        Ok(d) => d.header().id,
        Err(_) => model::read_header(&doc)?.id,
    };
    if holds != id {
        return Err(StoreError::InvalidData(format!(
            "snapshot for {id} holds document {holds}"
        )));
    }
    let read = match read {
        Ok(d) => Ok((
            d,
            guard("scanning for conflicts", || model::conflicts(&doc))?,
        )),
        Err(e) => Err(e),
    };
    Ok(PreparedSnapshot {
        heads: doc.get_heads(),
        doc: Some(doc),
        read,
    })
}

/// Fewest snapshots worth handing to helper threads.
const PARALLEL_PREPARE_MIN: usize = 32;
/// Most prepared snapshots waiting for the writer (bounds the memory of loaded documents).
const PREPARE_WINDOW: usize = 256;

/// Snapshots prepared ahead of a consumer that takes them in order ([`with_prepared`]).
pub struct PreparedQueue<'a> {
    jobs: &'a [(DocId, &'a [u8])],
    next: usize,
    shared: Option<&'a Prefetch>,
}

struct Prefetch {
    state: std::sync::Mutex<PrefetchState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct PrefetchState {
    /// Next job index a helper takes.
    claimed: usize,
    /// Jobs the consumer has taken (helpers stay within `PREPARE_WINDOW` of it).
    taken: usize,
    ready: HashMap<usize, Result<PreparedSnapshot, StoreError>>,
    /// Snapshots the consumer is done with, for a helper to free (freeing a loaded document
    /// costs a fair part of loading it; the writing thread should not pay for it).
    trash: Vec<PreparedSnapshot>,
    stop: bool,
}

/// Jobs a helper claims at once (fewer wake-ups than one at a time).
const PREPARE_CHUNK: usize = 8;

impl Prefetch {
    fn lock(&self) -> std::sync::MutexGuard<'_, PrefetchState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A helper thread: claims jobs in order and prepares them until all are claimed or the
    /// consumer is done.
    fn help(&self, jobs: &[(DocId, &[u8])]) {
        loop {
            let (range, trash) = {
                let mut st = self.lock();
                while !st.stop
                    && st.trash.is_empty()
                    && st.claimed < jobs.len()
                    && st.claimed >= st.taken + PREPARE_WINDOW
                {
                    st = self
                        .changed
                        .wait(st)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                let trash = std::mem::take(&mut st.trash);
                if st.stop || st.claimed >= jobs.len() {
                    if trash.is_empty() {
                        return;
                    }
                    (0..0, trash)
                } else {
                    let start = st.claimed;
                    st.claimed = (start + PREPARE_CHUNK).min(jobs.len());
                    (start..st.claimed, trash)
                }
            };
            drop(trash);
            if range.is_empty() {
                continue;
            }
            let done: Vec<_> = range
                .map(|i| {
                    let (id, bytes) = jobs[i];
                    let r = guard("preparing a snapshot", || prepare_snapshot(id, bytes))
                        .and_then(|r| r);
                    (i, r)
                })
                .collect();
            self.lock().ready.extend(done);
            self.changed.notify_all();
        }
    }
}

impl PreparedQueue<'_> {
    /// Hands a used snapshot back, to be freed by a helper thread rather than the caller.
    pub fn discard(&mut self, used: PreparedSnapshot) {
        if let Some(shared) = self.shared {
            let mut st = shared.lock();
            st.trash.push(used);
            if st.trash.len() >= PREPARE_CHUNK {
                drop(st);
                shared.changed.notify_one();
            }
        }
    }

    /// The next job's prepared snapshot, in job order; `None` once every job was taken.
    pub fn take_next(&mut self) -> Option<Result<PreparedSnapshot, StoreError>> {
        let i = self.next;
        let (id, bytes) = *self.jobs.get(i)?;
        self.next += 1;
        let Some(shared) = self.shared else {
            return Some(prepare_snapshot(id, bytes));
        };
        let mut st = shared.lock();
        loop {
            if let Some(r) = st.ready.remove(&i) {
                st.taken = i + 1;
                drop(st);
                shared.changed.notify_all();
                return Some(r);
            }
            st = shared
                .changed
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// Helper threads worth starting: the CPUs available, at most 4. Asked once per process:
/// `available_parallelism` reads the cgroup files each time, which costs more than applying
/// a small batch.
fn helpers() -> usize {
    static HELPERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *HELPERS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(4)
    })
}

/// Runs `consume` with a queue of `jobs` (document id and snapshot bytes) prepared by
/// [`prepare_snapshot`], in order. With enough jobs and more than one CPU, helper threads
/// prepare up to `PREPARE_WINDOW` snapshots ahead while `consume` stores the earlier ones.
pub fn with_prepared<R>(
    jobs: &[(DocId, &[u8])],
    consume: impl FnOnce(&mut PreparedQueue<'_>) -> R,
) -> R {
    let helpers = if jobs.len() < PARALLEL_PREPARE_MIN {
        1
    } else {
        helpers()
    };
    if helpers < 2 {
        return consume(&mut PreparedQueue {
            jobs,
            next: 0,
            shared: None,
        });
    }
    let shared = Prefetch {
        state: std::sync::Mutex::new(PrefetchState::default()),
        changed: std::sync::Condvar::new(),
    };
    std::thread::scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|| shared.help(jobs));
        }
        let r = consume(&mut PreparedQueue {
            jobs,
            next: 0,
            shared: Some(&shared),
        });
        shared.lock().stop = true;
        shared.changed.notify_all();
        r
    })
}

//! Group commit: the uploads waiting for a store's writer are written in one transaction.
//!
//! Each backend has one writer (SQLite's single writer connection; on PostgreSQL, one
//! connection per node whose appends every node serialises on the log counter's row lock).
//! Uploads from many connections queue here. The upload at the front of the queue leads: it
//! takes the writer, writes itself and the uploads queued behind it (up to [`MAX_UPLOADS`]
//! and [`MAX_BYTES`]) in one transaction through the backend's `commit`, hands each its
//! outcomes and wakes the next front. So a thousand laptops uploading at once cost one
//! commit (one fsync, one lock round) per group instead of one per upload, while each upload
//! is still judged on its own by the rules.
//!
//! Should the group's transaction fail (a database error, not a refused change: refusals are
//! outcomes), it is rolled back and every upload of the group is written again in a
//! transaction of its own, so one upload's failure is never another's.
//!
//! [`WriteStats`] counts what the writer did, for the `db_write_*` metrics: how busy it is
//! and how long uploads wait for it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use fieldsync_core::protocol::rules::{BatchDb, DocCache, UploadRules, append_batch};
use fieldsync_core::protocol::{DeviceInfo, Outcome, UploadChange};

use super::{RelayStoreError, lock};

/// Most uploads written in one transaction.
pub(super) const MAX_UPLOADS: usize = 64;
/// Most change bytes written in one transaction (an upload bigger than this goes alone).
pub(super) const MAX_BYTES: usize = 4 << 20;

/// One device's upload.
pub(super) struct Upload {
    pub device: DeviceInfo,
    pub changes: Vec<UploadChange>,
    pub relayed: bool,
}

impl Upload {
    /// `device`'s upload of `changes` (copied: the queue's leader may write it for another
    /// thread).
    pub(super) fn new(device: &DeviceInfo, changes: &[UploadChange], relayed: bool) -> Self {
        Self {
            device: device.clone(),
            changes: changes.to_vec(),
            relayed,
        }
    }

    fn bytes(&self) -> usize {
        self.changes.iter().map(|c| c.bytes.len()).sum()
    }
}

type Outcomes = Result<Vec<Outcome>, RelayStoreError>;

/// What a group's transaction wrote (see [`write_group`]).
pub(super) struct Written {
    /// Each upload's outcomes, in the group's order.
    pub outcomes: Vec<Vec<Outcome>>,
    /// The highest sequence number the group appended, if it appended any.
    pub high: Option<i64>,
}

/// Runs the upload rules for every upload of `group` in `db`, one write transaction that the
/// backend then commits. Each upload's documents go into `cache` at once, since the next
/// upload of the group may write the same document: a backend whose transaction does not
/// commit must clear the cache (a rolled-back write must not stay cached).
pub(super) fn write_group<D: BatchDb<Error = RelayStoreError>>(
    db: &D,
    cache: &mut DocCache,
    rules: &UploadRules,
    group: &[&Upload],
) -> Result<Written, RelayStoreError> {
    let mut outcomes = Vec::with_capacity(group.len());
    let mut high = None;
    for u in group {
        let mut done = append_batch(db, cache, rules, &u.device, &u.changes, u.relayed)?;
        high = high.max(done.high);
        done.cache_into(cache);
        outcomes.push(done.outcomes);
    }
    Ok(Written { outcomes, high })
}

struct Slot {
    upload: Upload,
    arrived: Instant,
    /// Set by the leader that wrote it; read under the queue's lock.
    done: Mutex<Option<Outcomes>>,
    /// Signalled (with the queue's lock) when this slot is done or has become the front.
    wake: Condvar,
}

/// What a store's writer did since the store opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Transactions that wrote uploads.
    pub transactions: u64,
    /// Uploads written (a transaction writes one or more).
    pub uploads: u64,
    /// Time the writer spent writing uploads.
    pub busy: Duration,
    /// Time uploads waited in the queue before their transaction started, summed.
    pub waited: Duration,
    /// Uploads in the queue now (being written or waiting).
    pub queued: usize,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    uploads: AtomicU64,
    busy_nanos: AtomicU64,
    waited_nanos: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The queue of uploads in front of one store's writer.
#[derive(Default)]
pub(super) struct WriteQueue {
    queue: Mutex<VecDeque<Arc<Slot>>>,
    counters: Counters,
}

impl WriteQueue {
    /// Writes `upload` with whatever else is queued: `commit` is given the writer and a group
    /// of uploads and writes them in one transaction, returning their outcomes in order (or
    /// an error, after which it must have rolled back and left the writer usable).
    pub(super) fn append<W>(
        &self,
        writer: &Mutex<W>,
        upload: Upload,
        mut commit: impl FnMut(&mut W, &[&Upload]) -> Result<Vec<Vec<Outcome>>, RelayStoreError>,
    ) -> Outcomes {
        let me = Arc::new(Slot {
            upload,
            arrived: Instant::now(),
            done: Mutex::new(None),
            wake: Condvar::new(),
        });
        let mut q = lock(&self.queue);
        q.push_back(Arc::clone(&me));
        loop {
            if let Some(out) = lock(&me.done).take() {
                return out;
            }
            if q.front().is_some_and(|f| Arc::ptr_eq(f, &me)) {
                break;
            }
            q = me
                .wake
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        // The front leads. It takes the writer first (another write may hold it), then the
        // uploads queued behind it by then. They stay queued (this one at the front) until
        // their outcomes are set, so no other upload leads meanwhile.
        drop(q);
        let mut w = lock(writer);
        let q = lock(&self.queue);
        let mut group = Vec::new();
        let mut bytes = 0;
        for s in q.iter() {
            let b = s.upload.bytes();
            if !group.is_empty() && (group.len() == MAX_UPLOADS || bytes + b > MAX_BYTES) {
                break;
            }
            bytes += b;
            group.push(Arc::clone(s));
        }
        drop(q);
        let started = Instant::now();
        let uploads: Vec<&Upload> = group.iter().map(|s| &s.upload).collect();
        let mut transactions = 1;
        // A panic in the rules must not leave the queue without a leader: it becomes every
        // upload's error (the transaction rolled back as it unwound).
        let mut commit = |w: &mut W, uploads: &[&Upload]| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit(w, uploads)))
                .unwrap_or_else(|_| {
                    Err(RelayStoreError::Invalid(
                        "writing an upload failed unexpectedly".into(),
                    ))
                })
        };
        let results: Vec<Outcomes> = match commit(&mut w, &uploads) {
            Ok(all) if all.len() == group.len() => all.into_iter().map(Ok).collect(),
            Ok(_) => {
                let e = || RelayStoreError::Invalid("a group commit lost an upload".into());
                group.iter().map(|_| Err(e())).collect()
            }
            Err(e) if group.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!(error = %e, uploads = group.len(), "group commit failed; writing its uploads one by one");
                transactions += group.len();
                uploads
                    .iter()
                    .map(|u| {
                        commit(&mut w, std::slice::from_ref(u)).and_then(|mut one| {
                            one.pop().ok_or_else(|| {
                                RelayStoreError::Invalid("a commit lost its upload".into())
                            })
                        })
                    })
                    .collect()
            }
        };
        drop(w);
        let c = &self.counters;
        c.transactions
            .fetch_add(transactions as u64, Ordering::Relaxed);
        c.uploads.fetch_add(group.len() as u64, Ordering::Relaxed);
        c.busy_nanos
            .fetch_add(nanos(started.elapsed()), Ordering::Relaxed);
        let waited: Duration = group
            .iter()
            .map(|s| started.saturating_duration_since(s.arrived))
            .sum();
        c.waited_nanos.fetch_add(nanos(waited), Ordering::Relaxed);

        let mut q = lock(&self.queue);
        let mut mine = None;
        for (slot, out) in group.iter().zip(results) {
            q.pop_front();
            if Arc::ptr_eq(slot, &me) {
                mine = Some(out);
            } else {
                *lock(&slot.done) = Some(out);
                slot.wake.notify_one();
            }
        }
        if let Some(front) = q.front() {
            front.wake.notify_one();
        }
        drop(q);
        mine.unwrap_or_else(|| Err(RelayStoreError::Invalid("an upload lost its place".into())))
    }

    /// What the writer did so far.
    pub(super) fn stats(&self) -> WriteStats {
        let c = &self.counters;
        WriteStats {
            transactions: c.transactions.load(Ordering::Relaxed),
            uploads: c.uploads.load(Ordering::Relaxed),
            busy: Duration::from_nanos(c.busy_nanos.load(Ordering::Relaxed)),
            waited: Duration::from_nanos(c.waited_nanos.load(Ordering::Relaxed)),
            queued: lock(&self.queue).len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldsync_core::{DocId, Role};
    use std::sync::atomic::AtomicUsize;
    use uuid::Uuid;

    /// An upload that carries `n` in its one change's bytes.
    fn upload(n: u16) -> Upload {
        Upload {
            device: DeviceInfo {
                device_id: Uuid::new_v4(),
                name: format!("laptop {n}"),
                role: Role::Rep,
                scopes: vec!["north".into()],
            },
            changes: vec![UploadChange {
                doc_id: DocId::new(),
                bytes: n.to_le_bytes().to_vec(),
            }],
            relayed: false,
        }
    }

    fn number(u: &Upload) -> u16 {
        u16::from_le_bytes([u.changes[0].bytes[0], u.changes[0].bytes[1]])
    }

    /// A fake writer's commit: each upload's outcome names its number; a group holding
    /// upload 13 fails as a whole, and upload 13 alone panics. Records the group sizes.
    fn commit(
        groups: &Mutex<Vec<usize>>,
    ) -> impl FnMut(&mut u64, &[&Upload]) -> Result<Vec<Vec<Outcome>>, RelayStoreError> + '_ {
        move |written: &mut u64, group: &[&Upload]| {
            std::thread::sleep(Duration::from_millis(2));
            lock(groups).push(group.len());
            if group.iter().any(|u| number(u) == 13) {
                if group.len() == 1 {
                    panic!("upload 13 cannot be written");
                }
                return Err(RelayStoreError::Invalid("the group holds 13".into()));
            }
            *written += group.len() as u64;
            Ok(group
                .iter()
                .map(|u| {
                    let mut h = [0; 32];
                    h[..2].copy_from_slice(&number(u).to_le_bytes());
                    vec![Outcome::Stored(h)]
                })
                .collect())
        }
    }

    #[test]
    fn uploads_queued_together_share_a_transaction_and_each_gets_its_own_outcomes() {
        let queue = WriteQueue::default();
        let writer = Mutex::new(0u64);
        let groups = Mutex::new(Vec::new());
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= 400 {
                            break;
                        }
                        let n = n as u16 + 100;
                        let out = queue.append(&writer, upload(n), commit(&groups)).unwrap();
                        let mut h = [0; 32];
                        h[..2].copy_from_slice(&n.to_le_bytes());
                        assert_eq!(out, vec![Outcome::Stored(h)], "upload {n}");
                    }
                });
            }
        });
        let stats = queue.stats();
        assert_eq!(*lock(&writer), 400);
        assert_eq!(stats.uploads, 400);
        let groups = lock(&groups);
        assert_eq!(stats.transactions, groups.len() as u64);
        assert!(
            stats.transactions < 200,
            "16 uploaders waiting on a 2 ms commit should share transactions: {groups:?}"
        );
        assert!(groups.iter().all(|&g| g <= MAX_UPLOADS));
    }

    #[test]
    fn a_group_that_fails_is_written_again_one_upload_at_a_time() {
        let queue = WriteQueue::default();
        let writer = Mutex::new(0u64);
        let groups = Mutex::new(Vec::new());
        // The writer is busy while eight uploads queue: they form one group, holding 13.
        let busy = lock(&writer);
        let results: Vec<(u16, Outcomes)> = std::thread::scope(|s| {
            let handles: Vec<_> = (10..18u16)
                .map(|n| {
                    let (queue, writer, groups) = (&queue, &writer, &groups);
                    s.spawn(move || (n, queue.append(writer, upload(n), commit(groups))))
                })
                .collect();
            while lock(&queue.queue).len() < 8 {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(busy);
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(lock(&groups)[0], 8, "{:?}", lock(&groups));
        for (n, out) in results {
            if n == 13 {
                // Its own transaction panicked: an error for it, the queue goes on.
                assert!(out.is_err(), "upload 13: {out:?}");
            } else {
                assert_eq!(out.unwrap().len(), 1, "upload {n}");
            }
        }
        assert_eq!(*lock(&writer), 7, "every upload but 13 was written");
        // And the queue still leads: a later upload goes through.
        assert!(queue.append(&writer, upload(99), commit(&groups)).is_ok());
        assert!(lock(&queue.queue).is_empty());
        let stats = queue.stats();
        assert_eq!((stats.transactions, stats.uploads), (1 + 8 + 1, 9));
    }

    #[test]
    fn an_upload_bigger_than_a_group_goes_alone() {
        let queue = WriteQueue::default();
        let writer = Mutex::new(0u64);
        let mut big = upload(7);
        big.changes[0].bytes.resize(MAX_BYTES + 1, 0);
        let out = queue
            .append(&writer, big, |_, group| {
                assert_eq!(group.len(), 1);
                Ok(vec![Vec::new()])
            })
            .unwrap();
        assert!(out.is_empty());
    }
}

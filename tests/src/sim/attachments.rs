//! The attachment simulation: laptops and a relay moving attachment bytes over a link that
//! drops, cuts, corrupts and crashes, deterministically from one seed.
//!
//! The relay is a real SQLite store with its real attachment store (`attachments.db`) under
//! core's [`BlobSession`] rules; each laptop is a real replica with its real attachment store
//! ([`LocalBlobs`]) under core's [`Transfer`] machine, the same one the QUIC driver steps.
//! Documents (and with them the attachment entries that let a device reach an attachment) are
//! stored on the relay directly: this simulation is about the bytes. Messages cross through
//! the real codec. Each step the seed decides: who attaches a photo (sizes from one byte to
//! several pieces) or asks for one another laptop attached, whether a connection opens, how
//! many frames are delivered each way, whether a frame is lost (the connection dies, as a
//! QUIC reset), whether a piece is corrupted on the way, whether a laptop or the relay crashes
//! (its stores reopened from disk, its sessions lost), and how far the clock moves. One laptop
//! works in another scope and asks for attachments it may not reach.
//!
//! Checked while running: nothing stored on either side is unverified (every complete
//! attachment reads back with its hash), progress on either side never goes backwards, and a
//! resumed upload does not start over: the pieces sent for an attachment stay within its
//! pieces plus one window per interruption. Checked after healing (no faults, until every
//! transfer is done): every attachment made on a laptop is complete on the relay, every
//! attachment asked for in scope is complete on the laptop with the original bytes, and the
//! one out of scope was refused for good and never stored.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use fieldsync_core::attachment::BlobHash;
use fieldsync_core::attachment::entry::{AttachmentEdit, AttachmentInput};
use fieldsync_core::attachment::local::LocalBlobs;
use fieldsync_core::attachment::pieces::piece_count;
use fieldsync_core::attachment::relay::{BlobDb, BlobLimits, BlobSession};
use fieldsync_core::attachment::transfer::{Transfer, TransferConfig};
use fieldsync_core::env::SeededEnv;
use fieldsync_core::ids::Millis;
use fieldsync_core::model::{EditCtx, NewCustomer, create_customer};
use fieldsync_core::protocol::codec;
use fieldsync_core::protocol::{DeviceInfo, Message};
use fieldsync_core::store::{Durability, Store, StoreOptions};
use fieldsync_core::{DocId, Role};
use fieldsync_relay::store::{RelayBlobs, RelayStore, RelayStoreOptions, SqliteRelayStore};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use uuid::Uuid;

type Res<T> = Result<T, String>;

const EPOCH_MS: Millis = 1_800_000_000_000;
/// Pieces of one upload unanswered (small, so that windows and cuts interleave).
const WINDOW: usize = 4;

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachmentSimStats {
    /// Attachments made on laptops.
    pub attached: u64,
    /// Downloads asked for.
    pub wanted: u64,
    /// Frames delivered.
    pub frames: u64,
    /// Frames lost (each killed its connection).
    pub lost: u64,
    /// Pieces corrupted on the way (each refused by its receiver).
    pub corrupted: u64,
    /// Laptop and relay crashes.
    pub crashes: u64,
    /// Steps of healing until every transfer was done.
    pub heal_steps: u64,
}

struct Laptop {
    info: DeviceInfo,
    store: Store,
    blobs: Option<LocalBlobs>,
    customer: DocId,
    /// The open connection: the laptop's machine and the relay's session for it, and the
    /// frames in flight each way.
    conn: Option<Conn>,
    /// What this laptop attached (hash → bytes), and what it asked for (hash → bytes, and
    /// whether the laptop that made it works in this laptop's scope).
    made: BTreeMap<BlobHash, Vec<u8>>,
    wanted: BTreeMap<BlobHash, (Vec<u8>, bool)>,
    /// Pieces held per attachment, last seen (never goes back).
    have: BTreeMap<BlobHash, u32>,
}

struct Conn {
    transfer: Transfer,
    session: BlobSession,
    up: VecDeque<Vec<u8>>,
    down: VecDeque<Vec<u8>>,
    wake_at: Option<Millis>,
}

struct World {
    rng: StdRng,
    dir: std::path::PathBuf,
    relay: RelayStore,
    blobs: RelayBlobs,
    laptops: Vec<Laptop>,
    now: Millis,
    stats: AttachmentSimStats,
    /// Pieces the laptops sent per attachment, and the interruptions of its upload.
    sent: BTreeMap<BlobHash, (u64, u64)>,
    /// Pieces stored on the relay per attachment, last seen.
    relay_stored: BTreeMap<BlobHash, u32>,
    /// The chance that a frame is lost, a piece corrupted, a crash happens, this run.
    p_loss: f64,
    p_corrupt: f64,
    p_crash: f64,
    faults: bool,
}

fn e(what: &str) -> impl Fn(&dyn std::fmt::Display) -> String + '_ {
    move |err| format!("{what}: {err}")
}

fn frame(m: &Message) -> Res<Vec<u8>> {
    codec::encode(m).map_err(|err| e("encoding")(&err))
}

fn unframe(f: &[u8]) -> Res<Message> {
    codec::decode(&f[4..]).map_err(|err| e("decoding")(&err))
}

impl World {
    fn new(seed: u64, dir: &Path) -> Res<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let store = SqliteRelayStore::open(
            dir.join("relay.db"),
            RelayStoreOptions {
                env: Arc::new(SeededEnv::new(seed, EPOCH_MS)),
                ..RelayStoreOptions::default()
            },
        )
        .map_err(|err| e("opening the relay")(&err))?;
        let relay = RelayStore::Sqlite(store);
        let blobs = RelayBlobs::open(&relay).map_err(|err| e("opening its attachments")(&err))?;
        let n = rng.random_range(2..=4usize);
        let mut laptops = Vec::new();
        for i in 0..=n {
            // The last laptop works in another territory.
            let scope = if i == n { "south" } else { "north" };
            let device_id = Uuid::from_u128(rng.random::<u128>());
            let opts = StoreOptions {
                durability: Durability::Full,
                device_id: Some(device_id),
                actor_suffix: Some(rng.random()),
                env: Arc::new(SeededEnv::new(rng.random(), EPOCH_MS)),
                ..StoreOptions::default()
            };
            let path = dir.join(format!("c{i}.db"));
            let mut store =
                Store::open_with(&path, opts).map_err(|err| e("opening a replica")(&err))?;
            let ctx = EditCtx::at(format!("c{i}"), Role::Rep, EPOCH_MS);
            let new = NewCustomer {
                org: "acme".into(),
                scope: scope.into(),
                name: format!("Customer {i}"),
                ..Default::default()
            };
            let customer = store
                .create(|d, id| create_customer(d, id, &new, &ctx))
                .map_err(|err| e("creating a customer")(&err))?
                .id;
            let info = DeviceInfo {
                device_id,
                name: format!("c{i}"),
                role: Role::Rep,
                scopes: vec![scope.to_string()],
            };
            let blobs = LocalBlobs::open(&path, None)
                .map_err(|err| e("opening laptop attachments")(&err))?;
            laptops.push(Laptop {
                info,
                store,
                blobs: Some(blobs),
                customer,
                conn: None,
                made: BTreeMap::new(),
                wanted: BTreeMap::new(),
                have: BTreeMap::new(),
            });
        }
        let calm = rng.random_bool(0.1);
        let mut w = Self {
            p_loss: if calm {
                0.0
            } else {
                rng.random_range(0.0..0.08)
            },
            p_corrupt: if calm {
                0.0
            } else {
                rng.random_range(0.0..0.05)
            },
            p_crash: if calm {
                0.0
            } else {
                rng.random_range(0.0..0.03)
            },
            rng,
            dir: dir.to_path_buf(),
            relay,
            blobs,
            laptops,
            now: EPOCH_MS,
            stats: AttachmentSimStats::default(),
            sent: BTreeMap::new(),
            relay_stored: BTreeMap::new(),
            faults: true,
        };
        for i in 0..w.laptops.len() {
            w.upload_docs(i)?;
        }
        Ok(w)
    }

    /// Stores laptop `i`'s document changes on the relay (the document path is not under
    /// test here).
    fn upload_docs(&mut self, i: usize) -> Res<()> {
        let l = &self.laptops[i];
        let changes = l
            .store
            .outbox_batch(0, 10_000, usize::MAX)
            .map_err(|err| e("reading an outbox")(&err))?
            .into_iter()
            .map(|c| fieldsync_core::protocol::UploadChange {
                doc_id: c.doc_id,
                bytes: c.bytes,
            })
            .collect::<Vec<_>>();
        let out = self
            .relay
            .append_changes(&l.info, &changes, false)
            .map_err(|err| e("storing documents")(&err))?;
        if out
            .iter()
            .any(|o| !matches!(o, fieldsync_core::protocol::Outcome::Stored(_)))
        {
            return Err(format!("the relay refused a document change: {out:?}"));
        }
        Ok(())
    }

    fn blobs(&mut self, i: usize) -> Res<&mut LocalBlobs> {
        self.laptops[i]
            .blobs
            .as_mut()
            .ok_or_else(|| "laptop store closed".to_string())
    }

    /// Laptop `i` attaches a new photo to its customer.
    fn attach(&mut self, i: usize) -> Res<()> {
        let pieces = self.rng.random_range(0..5u64);
        let size = (pieces * 65_536 + self.rng.random_range(1..65_536)) as usize;
        let bytes: Vec<u8> = (0..size).map(|_| self.rng.random()).collect();
        let now = self.now;
        let hash = self
            .blobs(i)?
            .add_bytes(&bytes, now)
            .map_err(|err| e("attaching")(&err))?;
        let l = &mut self.laptops[i];
        let ctx = EditCtx::at(l.info.name.clone(), Role::Rep, now);
        let id = format!("{:032x}", self.rng.random::<u128>());
        let edit = AttachmentEdit::Add(
            id,
            AttachmentInput {
                hash: Some(hash),
                size: size as u64,
                media_type: "image/jpeg".into(),
                name: "photo.jpg".into(),
                ..Default::default()
            },
        );
        let customer = l.customer;
        l.store
            .edit(customer, |d| {
                fieldsync_core::attachment::entry::apply(d, &edit, &ctx)
            })
            .map_err(|err| e("recording an attachment")(&err))?;
        l.made.insert(hash, bytes);
        self.stats.attached += 1;
        self.upload_docs(i)
    }

    /// Laptop `i` asks for an attachment another laptop made.
    fn want(&mut self, i: usize) -> Res<()> {
        let mine = self.laptops[i].info.scopes.clone();
        let pool: Vec<(BlobHash, Vec<u8>, bool)> = self
            .laptops
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, l)| {
                let visible = l.info.scopes == mine;
                l.made.iter().map(move |(h, b)| (*h, b.clone(), visible))
            })
            .collect();
        if pool.is_empty() {
            return Ok(());
        }
        let (h, bytes, visible) = pool[self.rng.random_range(0..pool.len())].clone();
        if self.laptops[i].made.contains_key(&h) {
            return Ok(());
        }
        let now = self.now;
        self.blobs(i)?
            .want(h, bytes.len() as u64, now)
            .map_err(|err| e("asking")(&err))?;
        // Made here too (the same photo): nothing to fetch.
        if self.laptops[i].wanted.contains_key(&h) {
            return Ok(());
        }
        self.laptops[i].wanted.insert(h, (bytes, visible));
        self.stats.wanted += 1;
        Ok(())
    }

    fn connect(&mut self, i: usize) -> Res<()> {
        if self.laptops[i].conn.is_some() {
            return Ok(());
        }
        let info = self.laptops[i].info.clone();
        self.laptops[i].conn = Some(Conn {
            transfer: Transfer::new(TransferConfig {
                until_done: true,
                window: WINDOW,
                retry_after: 3_000,
                one_shot_tries: u32::MAX,
                max_bad: 8,
            }),
            session: BlobSession::new(info, BlobLimits::default()),
            up: VecDeque::new(),
            down: VecDeque::new(),
            wake_at: None,
        });
        self.step_laptop(i, None)
    }

    /// The connection of laptop `i` dies (a lost frame, a crash): both sides forget it, and
    /// every upload it carried counts an interruption.
    fn cut(&mut self, i: usize) {
        if let Some(c) = self.laptops[i].conn.take()
            && c.up.iter().chain(&c.down).next().is_some()
        {
            for (_, (_, cuts)) in self.sent.iter_mut() {
                *cuts += 1;
            }
        }
    }

    fn step_laptop(&mut self, i: usize, input: Option<Message>) -> Res<()> {
        let now = self.now;
        let l = &mut self.laptops[i];
        let (Some(c), Some(blobs)) = (l.conn.as_mut(), l.blobs.as_mut()) else {
            return Ok(());
        };
        let out = c
            .transfer
            .step(blobs, input, now)
            .map_err(|err| e("a laptop's transfer")(&err))?;
        for m in &out.send {
            if let Message::BlobPiece { hash, .. } = m {
                self.sent.entry(BlobHash(*hash)).or_default().0 += 1;
            }
            c.up.push_back(frame(m)?);
        }
        c.wake_at = out.wake_at;
        if out.done && c.up.is_empty() && c.down.is_empty() && !c.session.sending() {
            l.conn = None;
        }
        Ok(())
    }

    /// Delivers one frame of laptop `i`'s connection in direction `up`, with the link's
    /// faults; returns whether one moved.
    fn deliver(&mut self, i: usize, up: bool) -> Res<bool> {
        let Some(c) = self.laptops[i].conn.as_mut() else {
            return Ok(false);
        };
        let queue = if up { &mut c.up } else { &mut c.down };
        let Some(mut f) = queue.pop_front() else {
            return Ok(false);
        };
        if self.faults && self.rng.random_bool(self.p_loss) {
            self.stats.lost += 1;
            self.cut(i);
            return Ok(true);
        }
        self.stats.frames += 1;
        let mut msg = unframe(&f)?;
        if self.faults
            && matches!(msg, Message::BlobPiece { .. })
            && self.rng.random_bool(self.p_corrupt)
            && let Message::BlobPiece { encoded, .. } = &mut msg
            && !encoded.is_empty()
        {
            let k = self.rng.random_range(0..encoded.len());
            encoded[k] ^= 1 << self.rng.random_range(0..8);
            self.stats.corrupted += 1;
            f = frame(&msg)?;
        }
        let msg = unframe(&f)?;
        if up {
            let now = self.now;
            let blobs = self.blobs.clone();
            let Some(c) = self.laptops[i].conn.as_mut() else {
                return Ok(true);
            };
            let answers = c
                .session
                .handle(&blobs, msg, now)
                .map_err(|err| e("the relay's session")(&err))?
                .map_err(|reason| format!("the relay closed a stream: {reason}"))?;
            for m in &answers {
                c.down.push_back(frame(m)?);
            }
        } else {
            self.step_laptop(i, Some(msg))?;
        }
        Ok(true)
    }

    /// The relay sends the next download piece of laptop `i`'s connection.
    fn relay_sends(&mut self, i: usize) -> Res<()> {
        let blobs = self.blobs.clone();
        let Some(c) = self.laptops[i].conn.as_mut() else {
            return Ok(());
        };
        if c.down.len() < 8
            && let Some(m) = c
                .session
                .next_piece(&blobs)
                .map_err(|err| e("the relay's session")(&err))?
        {
            c.down.push_back(frame(&m)?);
        }
        Ok(())
    }

    fn crash_laptop(&mut self, i: usize) -> Res<()> {
        self.cut(i);
        self.stats.crashes += 1;
        self.laptops[i].blobs = None;
        let path = self.dir.join(format!("c{i}.db"));
        self.laptops[i].blobs = Some(
            LocalBlobs::open(&path, None).map_err(|err| e("reopening laptop attachments")(&err))?,
        );
        Ok(())
    }

    fn crash_relay(&mut self) -> Res<()> {
        for i in 0..self.laptops.len() {
            self.cut(i);
        }
        self.stats.crashes += 1;
        self.blobs = RelayBlobs::open(&self.relay).map_err(|err| e("reopening the relay")(&err))?;
        Ok(())
    }

    /// Checks that nothing unverified is stored and progress never goes back.
    fn check(&mut self) -> Res<()> {
        for i in 0..self.laptops.len() {
            let list = self.blobs(i)?.list().map_err(|err| e("listing")(&err))?;
            for b in list {
                if b.complete {
                    self.blobs(i)?
                        .read(b.hash)
                        .map_err(|err| format!("laptop {i} holds a bad copy: {err}"))?;
                }
                let seen = self.laptops[i].have.entry(b.hash).or_insert(0);
                if b.have < *seen {
                    return Err(format!(
                        "laptop {i} went back from {seen} to {} pieces of {}",
                        b.have,
                        b.hash.short()
                    ));
                }
                *seen = b.have;
            }
        }
        let hashes: Vec<BlobHash> = self
            .laptops
            .iter()
            .flat_map(|l| l.made.keys().copied())
            .collect();
        for h in hashes {
            let Some(row) = self.blobs.blob(h).map_err(|err| e("relay row")(&err))? else {
                continue;
            };
            let seen = self.relay_stored.entry(h).or_insert(0);
            if row.stored < *seen {
                return Err(format!("the relay went back on {}", h.short()));
            }
            *seen = row.stored;
            if row.complete {
                let mut hasher = blake3::Hasher::new();
                for k in 0..piece_count(row.size) {
                    let p = self
                        .blobs
                        .piece(h, k)
                        .map_err(|err| e("relay piece")(&err))?
                        .ok_or_else(|| format!("the relay lacks piece {k} of {}", h.short()))?;
                    hasher.update(&p);
                }
                if BlobHash(*hasher.finalize().as_bytes()) != h {
                    return Err(format!("the relay holds a bad copy of {}", h.short()));
                }
            }
            let (sent, cuts) = self.sent.get(&h).copied().unwrap_or_default();
            let bound = u64::from(piece_count(row.size))
                + (cuts + self.stats.corrupted + self.stats.crashes + 1) * WINDOW as u64;
            if sent > bound {
                return Err(format!(
                    "{} pieces of {} ({} pieces) sent through {cuts} interruptions: it started over",
                    sent,
                    h.short(),
                    piece_count(row.size)
                ));
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Res<()> {
        self.now += self.rng.random_range(1..2_000);
        let n = self.laptops.len();
        for i in 0..n {
            if self.faults {
                if self.rng.random_bool(0.06) {
                    self.attach(i)?;
                }
                if self.rng.random_bool(0.06) {
                    self.want(i)?;
                }
                if self.rng.random_bool(self.p_crash) {
                    self.crash_laptop(i)?;
                }
            }
            if self.laptops[i].conn.is_none() && self.rng.random_bool(0.5) {
                self.connect(i)?;
            }
            if let Some(at) = self.laptops[i].conn.as_ref().and_then(|c| c.wake_at)
                && at <= self.now
            {
                self.step_laptop(i, None)?;
            }
            for _ in 0..self.rng.random_range(0..12) {
                let up = self.rng.random_bool(0.5);
                if up {
                    self.deliver(i, true)?;
                } else {
                    self.relay_sends(i)?;
                    self.deliver(i, false)?;
                }
            }
        }
        if self.faults && self.rng.random_bool(self.p_crash / 2.0) {
            self.crash_relay()?;
        }
        self.check()
    }

    fn done(&mut self) -> Res<bool> {
        for i in 0..self.laptops.len() {
            let l = &self.laptops[i];
            if l.conn.is_some() {
                return Ok(false);
            }
            let b = self.blobs(i)?;
            if !b
                .pending_uploads()
                .map_err(|err| e("pending")(&err))?
                .is_empty()
                || !b
                    .pending_downloads()
                    .map_err(|err| e("pending")(&err))?
                    .is_empty()
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn final_checks(&mut self) -> Res<()> {
        for i in 0..self.laptops.len() {
            let made: Vec<BlobHash> = self.laptops[i].made.keys().copied().collect();
            for h in made {
                let row = self
                    .blobs
                    .blob(h)
                    .map_err(|err| e("relay row")(&err))?
                    .filter(|r| r.complete)
                    .ok_or_else(|| format!("laptop {i}'s {} never reached the relay", h.short()))?;
                if row.size != self.laptops[i].made[&h].len() as u64 {
                    return Err("the relay holds another size".into());
                }
            }
            let wanted: Vec<(BlobHash, Vec<u8>, bool)> = self.laptops[i]
                .wanted
                .iter()
                .map(|(h, (b, v))| (*h, b.clone(), *v))
                .collect();
            for (h, bytes, visible) in wanted {
                let got = self.blobs(i)?.read(h);
                if !visible {
                    let b = self.blobs(i)?.get(h).map_err(|err| e("get")(&err))?;
                    if got.is_ok() || !b.is_some_and(|b| b.stopped && b.have == 0) {
                        return Err(format!(
                            "laptop {i} got, or kept asking for, {} from another scope",
                            h.short()
                        ));
                    }
                } else if got.map_err(|err| {
                    format!(
                        "laptop {i} lacks {}: {err} ({:?}; on the relay: {:?})",
                        h.short(),
                        self.laptops[i].blobs.as_ref().map(|b| b.get(h)),
                        self.blobs.blob(h).ok()
                    )
                })? != bytes
                {
                    return Err(format!("laptop {i} holds other bytes for {}", h.short()));
                }
            }
        }
        Ok(())
    }
}

/// Runs one seed: `steps` steps with faults, then healing; returns what it did or the first
/// broken invariant.
pub fn run_attachments(seed: u64, steps: u64, dir: &Path) -> Result<AttachmentSimStats, String> {
    let mut w = World::new(seed, dir)?;
    for _ in 0..steps {
        w.step()?;
    }
    w.faults = false;
    let mut heal = 0;
    while !w.done()? {
        heal += 1;
        if heal > 3_000 {
            let mut state = String::new();
            for i in 0..w.laptops.len() {
                let c = w.laptops[i]
                    .conn
                    .as_ref()
                    .map(|c| (c.up.len(), c.down.len(), c.wake_at, c.session.sending()));
                let b = w.blobs(i)?;
                let ups = b.pending_uploads().map_err(|err| e("p")(&err))?;
                let downs = b.pending_downloads().map_err(|err| e("p")(&err))?;
                state.push_str(&format!(
                    "\nlaptop {i}: conn {c:?} uploads {ups:?} downloads {downs:?}"
                ));
            }
            return Err(format!(
                "the transfers did not finish after healing (now {}):{state}",
                w.now
            ));
        }
        w.step()?;
    }
    w.stats.heal_steps = heal;
    w.final_checks()?;
    Ok(w.stats)
}

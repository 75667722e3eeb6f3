//! The simulated world: the relay, the clients, the connections between them, the faults,
//! and the checks.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automerge::ChangeHash;
use fieldsync_core::env::SeededEnv;
use fieldsync_core::model::{
    EditCtx, apply_edit, create_customer, create_quote, create_visit, read_document,
};
use fieldsync_core::protocol::messages::Hash;
use fieldsync_core::protocol::{
    ClientConfig, ClientInput, ClientSession, ClientStep, Entry, Item, Lane, Message, RelayLimits,
    RelaySession, ScopeCursor, SessionError, TimerConfig, encode,
};
use fieldsync_core::store::{Durability, Store, StoreError, StoreOptions, decode_change};
use fieldsync_core::{DocId, DocKind, Role};
use fieldsync_relay::{RelayStoreOptions, SqliteRelayStore};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use uuid::Uuid;

use super::net::Conn;
use super::oracle::{CommittedChange, Oracle, RelayView, hex};
use super::workload::{self, Actor, LocalDoc, ORG, Op};
use super::{SCOPES, SimConfig, SimReport, SimStats};

type Res<T> = Result<T, String>;

/// 2024-01-01T00:00:00Z: the clients' clocks start here.
const EPOCH_MS: i64 = 1_704_067_200_000;
/// 2001-01-01T00:00:00Z: where a clock that jumps back lands.
const Y2001_MS: i64 = 978_307_200_000;
/// Simulated milliseconds per step.
const STEP_MS: i64 = 60_000;
/// A year in milliseconds.
const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;
/// Events kept for a failure report.
const TRACE_TAIL: usize = 400;
/// Times a healed client may reconnect to get a refused-for-now change accepted.
const LEFTOVER_RECONNECTS_MAX: u32 = 3;

/// Fault rates and sizes, drawn per seed.
#[derive(Clone, Debug)]
struct Plan {
    calm: bool,
    p_drop: f64,
    p_split: f64,
    p_client_crash: f64,
    p_crash_mid: f64,
    p_relay_crash: f64,
    p_relay_crash_after_append: f64,
    p_partition: f64,
    partition_steps_max: u64,
    p_clock_jump: f64,
    p_abandon: f64,
    p_ghost: f64,
    p_leave: f64,
    /// Per step and connected session: the laptop's metered budget is spent.
    p_metered: f64,
    p_connect: f64,
    p_edit: f64,
    burst: usize,
    relay_cache: usize,
    relay_batch_bytes: usize,
}

impl Plan {
    fn draw(rng: &mut StdRng) -> Self {
        let calm = rng.random_bool(0.1);
        let f = |rng: &mut StdRng, max: f64| {
            if calm {
                0.0
            } else {
                rng.random_range(0.0..max)
            }
        };
        Self {
            calm,
            p_drop: f(rng, 0.10),
            p_split: rng.random_range(0.0..0.5),
            p_client_crash: f(rng, 0.02),
            p_crash_mid: rng.random_range(0.0..1.0),
            p_relay_crash: f(rng, 0.015),
            p_relay_crash_after_append: f(rng, 0.05),
            p_partition: f(rng, 0.02),
            partition_steps_max: rng.random_range(5..60),
            p_clock_jump: f(rng, 0.02),
            p_abandon: f(rng, 0.03),
            p_ghost: f(rng, 0.03),
            p_leave: rng.random_range(0.0..0.3),
            p_connect: rng.random_range(0.2..0.9),
            p_edit: rng.random_range(0.1..0.6),
            burst: rng.random_range(1..=4),
            relay_cache: rng.random_range(1..=32),
            relay_batch_bytes: rng.random_range((16 << 10)..(96 << 10)),
            p_metered: f(rng, 0.03),
        }
    }
}

/// One simulated client device.
struct SimClient {
    name: String,
    device_id: Uuid,
    role: Role,
    scopes: Vec<String>,
    path: PathBuf,
    store: Option<Store>,
    opts: StoreOptions,
    cfg: ClientConfig,
    /// Crashed: restarts at this step.
    down_until: u64,
    /// Partitioned: no connection before this step.
    offline_until: u64,
    conn: Option<u64>,
    session: Option<ClientSession>,
    /// Synced with changes still in the outbox since this step.
    leftover_reconnects: u32,
    clock_offset_ms: i64,
    /// Frames sent on the client's last closed connection, for ghost replays.
    last_frames: Vec<Vec<u8>>,
    /// An `UploadAck` arrived since the last batch that caught up (documents it settles
    /// leave with the next such batch).
    acked_since_catch_up: bool,
    /// The session spent its metered budget: it asks for nothing more and leaves once what
    /// it sent is answered.
    metered: bool,
}

impl SimClient {
    fn sees(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == "*" || s == scope)
    }

    fn sees_all(&self) -> bool {
        self.scopes.iter().any(|s| s == "*")
    }
}

/// The event log: a digest of every event, and the last few for failure reports.
struct Trace {
    hasher: DefaultHasher,
    tail: Arc<Mutex<VecDeque<String>>>,
    verbose: bool,
}

impl Trace {
    fn note(&mut self, step: u64, line: String) {
        // Everything counts, change hashes included: the replicas take their time and ids
        // from the run (a seeded environment, the simulated clock), so a seed replays byte
        // for byte.
        self.hasher.write(line.as_bytes());
        self.hasher.write_u64(step);
        let line = format!("[{step}] {line}");
        if self.verbose {
            eprintln!("{line}");
        }
        if let Ok(mut t) = self.tail.lock() {
            if t.len() >= TRACE_TAIL {
                t.pop_front();
            }
            t.push_back(line);
        }
    }
}

/// A batch's items for the trace: kind and the last 4 hex digits of the document id.
fn describe_items(items: &[Item]) -> String {
    let mut out = String::from(" [");
    for (n, item) in items.iter().enumerate() {
        let id = item.doc_id.to_string();
        let short = &id[id.len() - 4..];
        let kind = match &item.entry {
            Entry::Changes(c) => format!("{}c", c.len()),
            Entry::Snapshot(_) => "snap".into(),
            Entry::Replace(_) => "replace".into(),
            Entry::Leave => "leave".into(),
        };
        if n > 0 {
            out.push(' ');
        }
        out.push_str(&format!("{kind}:{short}"));
    }
    out.push(']');
    out
}

/// The whole simulated system.
pub(crate) struct World {
    cfg: SimConfig,
    rng: StdRng,
    step: u64,
    plan: Plan,
    relay_path: PathBuf,
    relay: Option<SqliteRelayStore>,
    /// The relay's clock: the simulated time, set every step.
    relay_env: Arc<SeededEnv>,
    /// The relay's move grace period.
    move_grace: Duration,
    relay_down_until: u64,
    limits: RelayLimits,
    clients: Vec<SimClient>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    view: RelayView,
    oracle: Oracle,
    trace: Trace,
    stats: SimStats,
    healing: bool,
    seed: u64,
}

fn hash_of(bytes: &[u8]) -> Res<Hash> {
    decode_change(bytes)
        .map(|c| c.hash().0)
        .map_err(|e| format!("undecodable change: {e}"))
}

fn store_err(what: &str) -> impl Fn(StoreError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The documents in a replica, ordered by id.
fn local_docs(store: &Store) -> Res<Vec<LocalDoc>> {
    let rows = store
        .query_json(
            "SELECT hex(id) AS id, kind, scope FROM docs ORDER BY id",
            &[],
        )
        .map_err(store_err("listing documents"))?;
    let mut out = Vec::new();
    for r in rows {
        let id = r
            .get("id")
            .and_then(|v| v.as_str())
            .and_then(|s| Uuid::try_parse(s).ok())
            .ok_or("bad document id in a replica")?;
        out.push(LocalDoc {
            id: DocId(id),
            kind: r
                .get("kind")
                .and_then(|v| v.as_i64())
                .and_then(DocKind::from_code),
            scope: r
                .get("scope")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
        });
    }
    Ok(out)
}

/// The outbox in commit order: (hash, document, raw bytes).
fn outbox(store: &Store) -> Res<Vec<(Hash, DocId, Vec<u8>)>> {
    Ok(store
        .outbox_batch(0, 1_000_000, 1 << 40)
        .map_err(store_err("reading the outbox"))?
        .into_iter()
        .map(|c| (c.hash.0, c.doc_id, c.bytes))
        .collect())
}

/// The quarantine: hash → (document, reason).
fn quarantine(store: &Store) -> Res<BTreeMap<Hash, (DocId, String)>> {
    let mut out = BTreeMap::new();
    for q in store
        .quarantine()
        .map_err(store_err("reading the quarantine"))?
    {
        let bytes = ::hex::decode(&q.hash).map_err(|e| format!("quarantine hash: {e}"))?;
        let h: Hash = bytes
            .try_into()
            .map_err(|_| "quarantine hash of the wrong length".to_string())?;
        out.insert(h, (q.doc_id, q.reason));
    }
    Ok(out)
}

fn relay_integrity(path: &std::path::Path) -> Res<()> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("opening the relay database read-only: {e}"))?;
    let ic: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| format!("relay integrity_check: {e}"))?;
    if ic != "ok" {
        return Err(format!("relay integrity_check: {ic}"));
    }
    Ok(())
}

impl World {
    pub(crate) fn new(
        seed: u64,
        cfg: SimConfig,
        dir: PathBuf,
        tail: Arc<Mutex<VecDeque<String>>>,
    ) -> Res<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let plan = Plan::draw(&mut rng);
        let n = cfg
            .clients
            .unwrap_or_else(|| rng.random_range(3..=cfg.clients_max.max(3)));
        let relay_path = dir.join("relay.db");
        // Drawn from a generator of its own, so that the rest of a seed's run stays as it was.
        let move_grace_steps = cfg.move_grace_steps.unwrap_or_else(|| {
            StdRng::seed_from_u64(seed ^ 0x6772_6163_6500).random_range(0..=cfg.steps / 2)
        });
        let move_grace = Duration::from_millis(move_grace_steps.saturating_mul(STEP_MS as u64));
        let relay_env = Arc::new(SeededEnv::new(seed, EPOCH_MS));
        let relay = SqliteRelayStore::open(
            &relay_path,
            RelayStoreOptions {
                cache_docs: plan.relay_cache,
                open: None,
                move_grace,
                env: relay_env.clone(),
                ..RelayStoreOptions::default()
            },
        )
        .map_err(|e| format!("opening the relay store: {e}"))?;
        let limits = RelayLimits {
            max_batch_bytes: plan.relay_batch_bytes,
            ..RelayLimits::default()
        };
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            let (role, scopes) = Self::draw_grant(&mut rng, i);
            let device_id = uuid::Builder::from_unix_timestamp_millis(
                EPOCH_MS as u64 + i as u64,
                &rng.random::<[u8; 10]>(),
            )
            .into_uuid();
            let name = format!("c{i}");
            let enrollment = relay
                .enrol_device(Some(device_id), &name, role, &scopes)
                .map_err(|e| format!("enrolling {name}: {e}"))?;
            let opts = StoreOptions {
                durability: Durability::Full,
                cache_docs: rng.random_range(1..=8),
                compact_after: rng.random_range(2..=16),
                device_id: Some(device_id),
                actor_suffix: Some(rng.random()),
                env: Arc::new(SeededEnv::new(rng.random(), EPOCH_MS)),
                // Every other laptop keeps its replica encrypted (a key made from its device
                // id, so the seed's random stream is the same either way).
                key: (i % 2 == 1).then(|| {
                    let mut k = [0u8; 32];
                    k[..16].copy_from_slice(device_id.as_bytes());
                    k[16..].copy_from_slice(device_id.as_bytes());
                    fieldsync_core::store::cipher::DatabaseKey::from_bytes(k)
                }),
            };
            let cfg = ClientConfig {
                agent: "fieldsync-sim".into(),
                credential: Some(enrollment.secret),
                upload_changes: rng.random_range(1..=12),
                upload_bytes: rng.random_range(512..(64 << 10)),
                pull_bytes: rng.random_range(1..(64 << 10)),
                // The session's timers run on the simulated clock: a client synced with
                // changes refused for now resends them after five steps, and gives up on a
                // relay that owes an answer for thirty.
                timers: TimerConfig {
                    response_timeout: Duration::from_millis(30 * STEP_MS as u64),
                    resend_after: Duration::from_millis(5 * STEP_MS as u64),
                },
                ..ClientConfig::default()
            };
            let path = dir.join(format!("{name}.db"));
            let store =
                Store::open_with(&path, opts.clone()).map_err(store_err("opening a replica"))?;
            if store.device_id() != device_id {
                return Err("the replica ignored the injected device id".into());
            }
            clients.push(SimClient {
                name,
                device_id,
                role,
                scopes,
                path,
                store: Some(store),
                opts,
                cfg,
                down_until: 0,
                offline_until: 0,
                conn: None,
                session: None,
                leftover_reconnects: 0,
                clock_offset_ms: 0,
                last_frames: Vec::new(),
                acked_since_catch_up: false,
                metered: false,
            });
        }
        let mut w = Self {
            trace: Trace {
                hasher: DefaultHasher::new(),
                tail,
                verbose: cfg.verbose,
            },
            cfg,
            rng,
            step: 0,
            plan,
            relay_path,
            relay: Some(relay),
            relay_env,
            move_grace,
            relay_down_until: 0,
            limits,
            clients,
            conns: BTreeMap::new(),
            next_conn: 1,
            view: RelayView::default(),
            oracle: Oracle::default(),
            stats: SimStats {
                clients: n,
                ..SimStats::default()
            },
            healing: false,
            seed,
        };
        w.note(format!(
            "seed {seed}: {n} clients, move grace {move_grace_steps} steps, plan {:?}",
            w.plan
        ));
        for i in 0..n {
            let c = &w.clients[i];
            let line = format!(
                "{} {} scopes {:?} upload {} pull {}",
                c.name, c.role, c.scopes, c.cfg.upload_changes, c.cfg.pull_bytes
            );
            w.note(line);
        }
        Ok(w)
    }

    /// Roles and scopes: client 0 is usually a manager of two scopes (who moves customers),
    /// clients 1 and 2 usually reps sharing a scope (who edit the same documents), the rest
    /// anything.
    #[allow(clippy::match_overlapping_arm)] // cumulative thresholds of a percentage roll: the first arm that matches wins
    fn draw_grant(rng: &mut StdRng, i: usize) -> (Role, Vec<String>) {
        let one = |rng: &mut StdRng| vec![SCOPES[rng.random_range(0..SCOPES.len())].to_string()];
        match i {
            0 if rng.random_bool(0.8) => (Role::Manager, vec!["north".into(), "south".into()]),
            1 | 2 if rng.random_bool(0.7) => (Role::Rep, vec!["north".into()]),
            _ => match rng.random_range(0..100) {
                ..55 => (Role::Rep, one(rng)),
                ..75 => {
                    let a = rng.random_range(0..SCOPES.len());
                    let b = (a + rng.random_range(1..SCOPES.len())) % SCOPES.len();
                    (Role::Manager, vec![SCOPES[a].into(), SCOPES[b].into()])
                }
                ..88 => (Role::Director, one(rng)),
                _ => (Role::Admin, vec!["*".into()]),
            },
        }
    }

    fn note(&mut self, line: String) {
        self.trace.note(self.step, line);
    }

    pub(crate) fn run(mut self) -> Res<SimReport> {
        for _ in 0..self.cfg.steps {
            self.step += 1;
            self.tick()?;
        }
        self.heal()?;
        self.final_checks()?;
        // The documents themselves count too: every replica's heads, so a run replays only if
        // every change hashes the same.
        for i in 0..self.clients.len() {
            let heads = match self.clients[i].store.as_ref() {
                Some(store) => store.all_heads().map_err(|e| format!("c{i} heads: {e}"))?,
                None => Vec::new(),
            };
            for (id, hs) in heads {
                let hs: Vec<String> = hs.iter().map(|h| hex(&h.0)).collect();
                self.note(format!("c{i} holds {id} at {}", hs.join(",")));
            }
        }
        self.note(format!("done: {:?}", self.stats));
        Ok(SimReport {
            seed: self.seed,
            stats: self.stats.clone(),
            fingerprint: self.trace.hasher.finish(),
        })
    }

    /// One step: faults, restarts, connections, edits, deliveries, observations.
    fn tick(&mut self) -> Res<()> {
        self.relay_env
            .set_now(EPOCH_MS + self.step as i64 * STEP_MS);
        self.faults()?;
        self.restarts()?;
        for i in 0..self.clients.len() {
            let c = &self.clients[i];
            if c.store.is_some()
                && c.conn.is_none()
                && c.offline_until <= self.step
                && self.relay.is_some()
                && self.rng.random_bool(self.plan.p_connect)
            {
                self.connect(i)?;
            }
        }
        for i in 0..self.clients.len() {
            if self.clients[i].store.is_some() && self.rng.random_bool(self.plan.p_edit) {
                for _ in 0..self.rng.random_range(1..=3) {
                    self.edit(i)?;
                }
                self.poll_session(i)?;
            }
        }
        self.network()?;
        self.lifecycle()?;
        self.observe()
    }

    // ---------------------------------------------------------------- faults and restarts

    fn faults(&mut self) -> Res<()> {
        if self.plan.calm {
            return Ok(());
        }
        if self.relay.is_some() && self.rng.random_bool(self.plan.p_relay_crash) {
            self.relay_crash("at random")?;
        }
        for i in 0..self.clients.len() {
            if self.clients[i].store.is_some() && self.rng.random_bool(self.plan.p_client_crash) {
                let mid = self.rng.random_bool(self.plan.p_crash_mid);
                self.client_crash(i, mid);
            }
            if self.clients[i].store.is_some()
                && self.clients[i].offline_until <= self.step
                && self.rng.random_bool(self.plan.p_partition)
            {
                let d = self.rng.random_range(5..=self.plan.partition_steps_max);
                self.clients[i].offline_until = self.step + d;
                self.stats.partitions += 1;
                self.note(format!("c{i} partitioned for {d} steps"));
                if let Some(id) = self.clients[i].conn {
                    self.cut(id, "partition");
                }
            }
            if self.rng.random_bool(self.plan.p_clock_jump) {
                let c = &mut self.clients[i];
                let now = EPOCH_MS + self.step as i64 * STEP_MS;
                c.clock_offset_ms = if self.rng.random_bool(0.5) {
                    Y2001_MS - now
                } else {
                    self.rng.random_range(1..=30) * YEAR_MS
                };
                self.stats.clock_jumps += 1;
                let off = c.clock_offset_ms / YEAR_MS;
                self.note(format!("c{i} clock jumps by {off} years"));
            }
            if let Some(id) = self.clients[i].conn
                && self.rng.random_bool(self.plan.p_abandon)
            {
                self.abandon(id, "gives up on its connection");
            }
        }
        if self.rng.random_bool(self.plan.p_ghost) && self.relay.is_some() {
            let i = self.rng.random_range(0..self.clients.len());
            let frames = self.clients[i].last_frames.clone();
            if !frames.is_empty() {
                let until = self.step + self.rng.random_range(1..=20);
                let mut conn = Conn::new(i, RelaySession::new(self.limits.clone()));
                conn.ghost = true;
                conn.client_open = false;
                conn.zombie_until = until;
                for f in frames {
                    let split = self.split(f.len());
                    conn.send_up(f, split);
                }
                let id = self.next_conn;
                self.next_conn += 1;
                self.conns.insert(id, conn);
                self.stats.ghosts += 1;
                self.note(format!("conn {id}: ghost replay of c{i}'s last connection"));
            }
        }
        Ok(())
    }

    fn restarts(&mut self) -> Res<()> {
        if self.relay.is_none() && (self.healing || self.relay_down_until <= self.step) {
            self.relay_restart()?;
        }
        for i in 0..self.clients.len() {
            if self.clients[i].store.is_none()
                && (self.healing || self.clients[i].down_until <= self.step)
            {
                self.client_restart(i)?;
            }
        }
        Ok(())
    }

    fn client_crash(&mut self, i: usize, mid: bool) {
        let down = self.rng.random_range(1..=8);
        self.stats.client_crashes += 1;
        if let Some(id) = self.clients[i].conn {
            // The input being processed when the process died is lost with its transaction.
            if mid && let Some(conn) = self.conns.get_mut(&id) {
                conn.down.pop_front();
            }
            self.abandon(id, "crashed");
        }
        let c = &mut self.clients[i];
        c.store = None;
        c.session = None;
        c.down_until = self.step + down;
        self.note(format!(
            "c{i} crashes{} for {down} steps",
            if mid { " mid-input" } else { "" }
        ));
    }

    fn client_restart(&mut self, i: usize) -> Res<()> {
        let suffix: [u8; 8] = self.rng.random();
        let c = &mut self.clients[i];
        c.opts.actor_suffix = Some(suffix);
        let mut store = Store::open_with(&c.path, c.opts.clone())
            .map_err(|e| format!("c{i} reopening its replica: {e}"))?;
        if store.device_id() != c.device_id {
            return Err(format!("c{i} reopened with another device id"));
        }
        let problems = store.verify().map_err(store_err("verify"))?;
        if !problems.is_empty() {
            return Err(format!("c{i} replica after restart: {problems:?}"));
        }
        c.store = Some(store);
        self.note(format!("c{i} restarts"));
        self.check_l1(i)
    }

    /// I1: every change the client committed is still in its replica, unless the document
    /// left the replica after the change was acknowledged or quarantined.
    fn check_l1(&mut self, i: usize) -> Res<()> {
        let quarantined = self.oracle.quarantined.get(&i).cloned().unwrap_or_default();
        let mine: Vec<(Hash, DocId)> = self
            .oracle
            .committed
            .iter()
            .filter(|(_, c)| c.client == i)
            .map(|(h, c)| (*h, c.doc))
            .collect();
        let store = self.clients[i].store.as_mut().ok_or("client down")?;
        let mut loaded: BTreeMap<DocId, Option<automerge::AutoCommit>> = BTreeMap::new();
        for (h, doc) in mine {
            if let std::collections::btree_map::Entry::Vacant(slot) = loaded.entry(doc) {
                let d = if store.contains(doc).map_err(store_err("contains"))? {
                    Some(store.automerge(doc).map_err(store_err("loading"))?)
                } else {
                    None
                };
                slot.insert(d);
            }
            let Some(am) = loaded.get_mut(&doc) else {
                continue;
            };
            let present = am
                .as_mut()
                .is_some_and(|d| d.get_change_by_hash(&ChangeHash(h)).is_some());
            // A quarantined change may be gone (the document is rebuilt without the changes
            // the relay refused, or removed); an acknowledged one goes with its document.
            let gone_legitimately =
                quarantined.contains(&h) || (am.is_none() && self.oracle.acked.contains_key(&h));
            if !present && !gone_legitimately {
                let step = self.oracle.committed.get(&h).map(|c| c.step);
                return Err(format!(
                    "I1: c{i} lost committed change {} of {doc} (committed at step {step:?}; document {}; acknowledged {}; on the relay {})",
                    hex(&h),
                    if am.is_some() { "present" } else { "absent" },
                    self.oracle.acked.contains_key(&h),
                    self.view.has(&h),
                ));
            }
        }
        Ok(())
    }

    fn relay_crash(&mut self, why: &str) -> Res<()> {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.cut(id, "relay crash");
        }
        self.relay = None;
        self.relay_down_until = self.step + self.rng.random_range(1..=5);
        self.stats.relay_crashes += 1;
        self.note(format!("relay crashes {why}"));
        Ok(())
    }

    fn relay_restart(&mut self) -> Res<()> {
        relay_integrity(&self.relay_path)?;
        let relay = SqliteRelayStore::open(
            &self.relay_path,
            RelayStoreOptions {
                cache_docs: self.plan.relay_cache,
                open: None,
                move_grace: self.move_grace,
                env: self.relay_env.clone(),
                ..RelayStoreOptions::default()
            },
        )
        .map_err(|e| format!("reopening the relay store: {e}"))?;
        // I2: read the reopened log from scratch; every acknowledged change must be there.
        let mut view = RelayView::default();
        view.refresh(&relay)?;
        for (h, (c, step)) in &self.oracle.acked {
            if !view.has(h) {
                return Err(format!(
                    "I2: change {} acknowledged to c{c} at step {step} is gone after a relay restart",
                    hex(h)
                ));
            }
        }
        self.view = view;
        self.relay = Some(relay);
        self.note("relay restarts".into());
        Ok(())
    }

    // ---------------------------------------------------------------- connections

    fn split(&mut self, len: usize) -> Option<usize> {
        (len > 1 && self.rng.random_bool(self.plan.p_split)).then(|| self.rng.random_range(1..len))
    }

    fn connect(&mut self, i: usize) -> Res<()> {
        let id = self.next_conn;
        self.next_conn += 1;
        let now = self.clock();
        // Half the sessions name customers to download first, so lanes start, are cut and
        // resume under every fault the run draws.
        let first = self
            .rng
            .random_bool(0.5)
            .then(|| self.rng.random_range(1..=8usize));
        let c = &mut self.clients[i];
        let store = c.store.as_mut().ok_or("connect while down")?;
        let mut cfg = c.cfg.clone();
        if let Some(n) = first {
            cfg.first = store
                .first_customers(now, n)
                .map_err(|e| format!("c{i} could not name its first customers: {e}"))?;
        }
        let mut session = ClientSession::new(cfg);
        let hello = session
            .step(store, ClientInput::Open, now)
            .map_err(|e| format!("c{i} could not open a session: {e}"))?
            .send;
        c.session = Some(session);
        c.metered = false;
        c.conn = Some(id);
        self.conns
            .insert(id, Conn::new(i, RelaySession::new(self.limits.clone())));
        self.stats.connections += 1;
        self.note(format!("c{i} connects: conn {id}"));
        for m in &hello {
            self.send_up(id, m)?;
        }
        Ok(())
    }

    /// The simulated monotonic clock the client sessions' timers run on.
    fn clock(&self) -> i64 {
        EPOCH_MS + self.step as i64 * STEP_MS
    }

    /// Steps client `i`'s session with [`ClientInput::Poll`] (uploads what waits, checks the
    /// timers) and sends what it returns. A relay silent past the response timeout cuts the
    /// connection, as the sync driver gives up on it; `None` then.
    fn poll_session(&mut self, i: usize) -> Res<Option<ClientStep>> {
        let now = self.clock();
        let c = &mut self.clients[i];
        let (Some(id), Some(session), Some(store)) = (c.conn, c.session.as_mut(), c.store.as_mut())
        else {
            return Ok(None);
        };
        match session.step(store, ClientInput::Poll, now) {
            Ok(step) => {
                for m in &step.send {
                    self.send_up(id, m)?;
                }
                Ok(Some(step))
            }
            Err(SessionError::Timeout(d)) => {
                self.stats.timeouts += 1;
                self.cut(
                    id,
                    &format!("the relay owed an answer for {d:?}; giving up"),
                );
                Ok(None)
            }
            Err(e) => Err(format!("c{i} session failed polling: {e}")),
        }
    }

    fn send_up(&mut self, id: u64, msg: &Message) -> Res<()> {
        let frame = encode(msg).map_err(|e| format!("encoding {}: {e}", msg.name()))?;
        let split = self.split(frame.len());
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.send_up(frame, split);
        }
        Ok(())
    }

    fn send_down(&mut self, id: u64, msg: &Message) -> Res<()> {
        let frame = encode(msg).map_err(|e| format!("encoding {}: {e}", msg.name()))?;
        let split = self.split(frame.len());
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.send_down(frame, split);
        }
        Ok(())
    }

    /// The client side of a connection ends (the client stops reading it).
    fn detach(&mut self, id: u64) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let i = conn.client;
        if conn.client_open && !conn.ghost && self.clients[i].conn == Some(id) {
            let frames = conn.sent_up.clone();
            let c = &mut self.clients[i];
            c.conn = None;
            c.session = None;
            c.last_frames = frames;
        }
    }

    /// The connection dies at both ends; everything in flight is lost.
    fn cut(&mut self, id: u64, why: &str) {
        self.detach(id);
        if self.conns.remove(&id).is_some() {
            self.note(format!("conn {id} cut: {why}"));
        }
    }

    /// The client gives up on a connection; the relay keeps reading what already arrived
    /// until it times out.
    fn abandon(&mut self, id: u64, why: &str) {
        self.detach(id);
        let until = self.step + self.rng.random_range(1..=10);
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.client_open = false;
            conn.down.clear();
            conn.zombie_until = until;
            self.stats.zombies += 1;
            let i = conn.client;
            self.note(format!("c{i} {why}: conn {id} lingers at the relay"));
        }
    }

    // ---------------------------------------------------------------- edits

    fn now_ms(&self, i: usize) -> i64 {
        EPOCH_MS + self.step as i64 * STEP_MS + self.clients[i].clock_offset_ms
    }

    fn edit(&mut self, i: usize) -> Res<()> {
        let now = self.now_ms(i);
        let Self {
            rng,
            clients,
            oracle,
            ..
        } = self;
        let c = &mut clients[i];
        let role = c.role;
        let scopes = c.scopes.clone();
        let name = c.name.clone();
        let store = c.store.as_mut().ok_or("edit while down")?;
        let docs = local_docs(store)?;
        let actor = Actor {
            idx: i,
            role,
            scopes: &scopes,
            all_scopes: &SCOPES,
            now,
            scope_moves: self.cfg.scope_moves,
        };
        let op = workload::next_op(rng, &actor, &docs, &mut |id| store.document(id).ok());
        let Some(op) = op else {
            return Ok(());
        };
        let ctx = EditCtx {
            author: name,
            role,
            now,
        };
        let label = op.label();
        let result = match &op {
            Op::NewCustomer(id, new) => {
                store.transaction(|tx| tx.create(*id, |d, id| create_customer(d, id, new, &ctx)))
            }
            Op::NewVisit(id, scope, new) => store.transaction(|tx| {
                tx.create(*id, |d, id| create_visit(d, id, ORG, scope, new, &ctx))
            }),
            Op::NewQuote(id, scope, new) => store.transaction(|tx| {
                tx.create(*id, |d, id| create_quote(d, id, ORG, scope, new, &ctx))
            }),
            Op::Edit(id, e) => store.edit(*id, |d| apply_edit(d, e, &ctx)),
        };
        self.stats.ops += 1;
        match result {
            Ok(committed) => {
                match &op {
                    Op::NewCustomer(id, _) => {
                        oracle.creator.insert(*id, i);
                    }
                    Op::NewVisit(id, _, v) => {
                        oracle.creator.insert(*id, i);
                        oracle.customer_of.insert(*id, v.customer_id.into());
                    }
                    Op::NewQuote(id, _, q) => {
                        oracle.creator.insert(*id, i);
                        oracle.customer_of.insert(*id, q.customer_id.into());
                    }
                    Op::Edit(..) => {}
                }
                // A change built on a refused one goes straight to the quarantine.
                let queued: BTreeSet<Hash> = outbox(store)?.into_iter().map(|(h, ..)| h).collect();
                let held = committed.hashes.iter().filter(|h| !queued.contains(&h.0));
                let held: Vec<ChangeHash> = held.copied().collect();
                if !held.is_empty() {
                    let q = quarantine(store)?;
                    let mut am = store
                        .automerge(committed.id)
                        .map_err(store_err("loading"))?;
                    let mine = oracle.quarantined.entry(i).or_default();
                    for h in held {
                        let deps: Vec<Hash> = am
                            .get_change_by_hash(&h)
                            .map(|c| c.deps().iter().map(|d| d.0).collect())
                            .unwrap_or_default();
                        if !q.contains_key(&h.0) || !deps.iter().any(|d| mine.contains(d)) {
                            return Err(format!(
                                "c{i}'s new change {} is neither queued nor held back for a refused dependency",
                                hex(&h.0)
                            ));
                        }
                        mine.insert(h.0);
                        self.stats.quarantined += 1;
                    }
                }
                for h in &committed.hashes {
                    oracle.committed.insert(
                        h.0,
                        CommittedChange {
                            client: i,
                            doc: committed.id,
                            step: self.step,
                        },
                    );
                }
                self.stats.changes += committed.hashes.len() as u64;
                let n = committed.hashes.len();
                self.note(format!("c{i} {label} on {}: {n} change(s)", committed.id));
                Ok(())
            }
            Err(StoreError::Model(e)) => {
                self.stats.ops_refused_locally += 1;
                self.note(format!("c{i} {label}: refused locally ({e})"));
                Ok(())
            }
            Err(e) => Err(format!("c{i} {label} failed: {e}")),
        }
    }

    // ---------------------------------------------------------------- network

    fn network(&mut self) -> Res<()> {
        let mut order: Vec<(u64, bool)> = self
            .conns
            .keys()
            .flat_map(|id| [(*id, true), (*id, false)])
            .collect();
        order.shuffle(&mut self.rng);
        for (id, up) in order {
            let n = self.rng.random_range(0..=self.plan.burst);
            for _ in 0..n {
                if !self.deliver(id, up)? {
                    break;
                }
            }
        }
        self.reap();
        Ok(())
    }

    /// Delivers the next chunk on a connection in one direction; false if nothing moved.
    fn deliver(&mut self, id: u64, up: bool) -> Res<bool> {
        let drop = !self.healing && self.rng.random_bool(self.plan.p_drop);
        let Some(conn) = self.conns.get_mut(&id) else {
            return Ok(false);
        };
        let chunk = if up {
            if conn.relay.is_none() {
                conn.up.clear();
                return Ok(false);
            }
            conn.up.pop_front()
        } else {
            if !conn.client_open {
                conn.down.clear();
                return Ok(false);
            }
            conn.down.pop_front()
        };
        let Some(chunk) = chunk else {
            return Ok(false);
        };
        if drop {
            self.stats.frames_lost += 1;
            self.cut(
                id,
                if up {
                    "lost on the way up"
                } else {
                    "lost on the way down"
                },
            );
            return Ok(false);
        }
        if up {
            conn.relay_decoder.push(&chunk);
        } else {
            conn.client_decoder.push(&chunk);
        }
        while let Some(conn) = self.conns.get_mut(&id) {
            let next = if up {
                if conn.relay.is_none() {
                    break;
                }
                conn.relay_decoder.next_message()
            } else {
                if !conn.client_open {
                    break;
                }
                conn.client_decoder.next_message()
            };
            let msg = match next {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return Err(format!("conn {id}: undecodable frame: {e}")),
            };
            self.stats.frames += 1;
            if up {
                self.relay_receive(id, msg)?;
            } else {
                self.client_receive(id, msg)?;
            }
        }
        Ok(true)
    }

    /// Removes connections that ended: a client that read everything after the relay closed
    /// notices the close; a lingering connection goes when its relay session times out.
    fn reap(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(conn) = self.conns.get(&id) else {
                continue;
            };
            if conn.client_open && conn.relay.is_none() && conn.down.is_empty() {
                self.cut(id, "closed by the relay");
            } else if !conn.client_open
                && (conn.relay.is_none()
                    || conn.up.is_empty()
                    || (!self.healing && conn.zombie_until <= self.step))
            {
                self.conns.remove(&id);
                self.note(format!("conn {id} timed out at the relay"));
            }
        }
    }

    fn relay_receive(&mut self, id: u64, msg: Message) -> Res<()> {
        let relay = self
            .relay
            .as_mut()
            .ok_or("a frame reached a crashed relay")?;
        let Some(conn) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        let i = conn.client;
        let ghost = conn.ghost;
        let Some(rs) = conn.relay.as_mut() else {
            return Ok(());
        };
        let name = msg.name();
        let upload = match &msg {
            Message::Upload { changes, .. } => Some(changes.clone()),
            _ => None,
        };
        let high_before = relay.high_seq().map_err(|e| format!("relay high: {e}"))?;
        // Where the uploaded documents (and their customers) are filed before the upload: a
        // refusal must have a cause at the moment of the refused change, which is this or a
        // scope the upload itself filed them under.
        let filed_before: BTreeMap<DocId, Option<String>> = match &upload {
            Some(changes) => changes
                .iter()
                .flat_map(|c| {
                    std::iter::once(c.doc_id).chain(self.oracle.customer_of.get(&c.doc_id).copied())
                })
                .map(|d| (d, self.view.current.get(&d).cloned()))
                .collect(),
            None => BTreeMap::new(),
        };
        let out = rs.handle(relay, msg);
        let names: Vec<&str> = out.messages.iter().map(Message::name).collect();
        let close = out.close;
        self.note(format!(
            "relay <- c{i}{} {name}: {names:?}{}",
            if ghost { " (ghost)" } else { "" },
            if close { " close" } else { "" }
        ));
        for m in &out.messages {
            if let Message::Error { code, reason } = m {
                return Err(format!(
                    "relay answered c{i}'s {name} with {code:?}: {reason}"
                ));
            }
        }
        let relay = self.relay.as_ref().ok_or("relay vanished")?;
        self.view.refresh(relay)?;
        if let Some(changes) = &upload {
            self.check_upload_ack(i, changes, &out.messages, &filed_before)?;
        }
        for m in &out.messages {
            if let Message::Batch { items, .. } = m {
                self.check_batch(i, items)?;
            }
        }
        if upload.is_some()
            && !self.healing
            && self.rng.random_bool(self.plan.p_relay_crash_after_append)
        {
            return self.relay_crash("after storing an upload, before its ack left");
        }
        for m in &out.messages {
            self.send_down(id, m)?;
        }
        if close && let Some(conn) = self.conns.get_mut(&id) {
            conn.relay = None;
            conn.up.clear();
        }
        let relay = self.relay.as_mut().ok_or("relay vanished")?;
        if relay.high_seq().map_err(|e| format!("relay high: {e}"))? != high_before {
            self.live_pushes()?;
        }
        Ok(())
    }

    /// The log grew: every live session is offered what is new (as the server's watch does).
    fn live_pushes(&mut self) -> Res<()> {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let relay = self.relay.as_mut().ok_or("relay vanished")?;
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            let i = conn.client;
            let Some(rs) = conn.relay.as_mut() else {
                continue;
            };
            let out = rs.poll_live(relay);
            if out.messages.is_empty() {
                continue;
            }
            let names: Vec<&str> = out.messages.iter().map(Message::name).collect();
            self.note(format!("relay pushes to c{i} on conn {id}: {names:?}"));
            for m in &out.messages {
                match m {
                    Message::Error { code, reason } => {
                        return Err(format!("live push to c{i} failed with {code:?}: {reason}"));
                    }
                    Message::Batch { items, .. } => self.check_batch(i, items)?,
                    _ => {}
                }
            }
            for m in &out.messages {
                self.send_down(id, m)?;
            }
            if out.close
                && let Some(conn) = self.conns.get_mut(&id)
            {
                conn.relay = None;
                conn.up.clear();
            }
        }
        Ok(())
    }

    /// Every refusal must have a cause; every accepted change must be in the log.
    fn check_upload_ack(
        &mut self,
        i: usize,
        changes: &[fieldsync_core::protocol::UploadChange],
        out: &[Message],
        filed_before: &BTreeMap<DocId, Option<String>>,
    ) -> Res<()> {
        let Some(Message::UploadAck {
            accepted, rejected, ..
        }) = out.iter().find(|m| matches!(m, Message::UploadAck { .. }))
        else {
            return Err(format!("c{i}'s upload got no UploadAck"));
        };
        for h in accepted {
            if !self.view.has(h) {
                return Err(format!(
                    "relay acknowledged change {} from c{i} that is not in its log",
                    hex(h)
                ));
            }
        }
        let mut by_hash = BTreeMap::new();
        for c in changes {
            by_hash.insert(hash_of(&c.bytes)?, c.doc_id);
        }
        for r in rejected {
            let doc = *by_hash
                .get(&r.hash)
                .ok_or("a rejection names a change that was not uploaded")?;
            if r.retry {
                self.stats.refused_retry += 1;
                self.note(format!(
                    "relay refuses {} of {doc} from c{i} for now: {}",
                    hex(&r.hash),
                    r.reason
                ));
                continue;
            }
            // The only cause an honest client gives: the document (a visit's or quote's
            // customer, for a new one) is filed outside the device's scopes when the change is
            // checked — before the upload, or as the upload's earlier changes re-filed it.
            let c = &self.clients[i];
            let customer = self.oracle.customer_of.get(&doc).copied();
            let concerned = |d: &DocId| *d == doc || Some(*d) == customer;
            let mut filed: Vec<String> = filed_before
                .iter()
                .filter(|(d, _)| concerned(d))
                .filter_map(|(_, s)| s.clone())
                .collect();
            filed.extend(
                self.view
                    .recent
                    .iter()
                    .filter(|(d, _)| concerned(d))
                    .map(|(_, s)| s.clone()),
            );
            let legit = filed.iter().any(|s| !c.sees(s));
            if !legit {
                return Err(format!(
                    "relay refused change {} of {doc} from c{i} without cause (filed in {filed:?}): {}",
                    hex(&r.hash),
                    r.reason
                ));
            }
            self.stats.refused += 1;
            self.oracle.refused.insert(r.hash, (i, r.reason.clone()));
            self.note(format!(
                "relay refuses {} of {doc} from c{i}: {}",
                hex(&r.hash),
                r.reason
            ));
        }
        Ok(())
    }

    /// Every change sent to a device was filed in one of its scopes; every snapshot is of a
    /// document that is (or was, for a scope move's entry) in one of its scopes.
    fn check_batch(&mut self, i: usize, items: &[Item]) -> Res<()> {
        let c = &self.clients[i];
        if c.sees_all() {
            return Ok(());
        }
        for item in items {
            match &item.entry {
                Entry::Changes(changes) => {
                    for b in changes {
                        let h = hash_of(&b.0)?;
                        let scope = self.view.change_scope.get(&h).ok_or_else(|| {
                            format!("relay sent c{i} change {} that is not in its log", hex(&h))
                        })?;
                        if !c.sees(scope) {
                            return Err(format!(
                                "I5: relay sent c{i} change {} of {} filed in `{scope}`",
                                hex(&h),
                                item.doc_id
                            ));
                        }
                    }
                }
                Entry::Snapshot(_) | Entry::Replace(_) => {
                    let now = self.view.current.get(&item.doc_id);
                    let ever = self.view.scopes_ever.get(&item.doc_id);
                    let ok = now.is_some_and(|s| c.sees(s))
                        || ever.is_some_and(|e| e.iter().any(|s| c.sees(s)));
                    if !ok {
                        return Err(format!(
                            "I5: relay sent c{i} a snapshot of {} (filed in {now:?}, ever {ever:?})",
                            item.doc_id
                        ));
                    }
                }
                Entry::Leave => {}
            }
        }
        Ok(())
    }

    fn client_receive(&mut self, id: u64, msg: Message) -> Res<()> {
        let now = self.clock();
        let Some(conn) = self.conns.get(&id) else {
            return Ok(());
        };
        let i = conn.client;
        let name = msg.name();
        let ack = match &msg {
            Message::UploadAck {
                accepted, rejected, ..
            } => Some((accepted.clone(), rejected.clone())),
            _ => None,
        };
        let items = match &msg {
            Message::Batch { items, .. } => describe_items(items),
            _ => String::new(),
        };
        match &msg {
            Message::UploadAck { .. } => self.clients[i].acked_since_catch_up = true,
            Message::Batch {
                caught_up: true, ..
            } => self.clients[i].acked_since_catch_up = false,
            _ => {}
        }
        let c = &mut self.clients[i];
        let (Some(store), Some(session)) = (c.store.as_mut(), c.session.as_mut()) else {
            return Err(format!("c{i} received {name} without a session"));
        };
        let before = if ack.is_some() {
            outbox(store)?
        } else {
            Vec::new()
        };
        let out = session
            .step(store, ClientInput::Message(msg), now)
            .map_err(|e| format!("c{i} session failed on {name}: {e}"))?
            .send;
        let names: Vec<&str> = out.iter().map(Message::name).collect();
        let outbox_len = store.outbox_len().map_err(store_err("outbox_len"))?;
        self.note(format!(
            "c{i} <- {name}{items}: {names:?}, outbox {outbox_len}"
        ));
        if let Some((accepted, rejected)) = ack {
            let store = self.clients[i].store.as_ref().ok_or("client down")?;
            let after: BTreeSet<Hash> = outbox(store)?.into_iter().map(|(h, ..)| h).collect();
            let quarantined = quarantine(store)?;
            let mine = self.oracle.quarantined.entry(i).or_default();
            for (h, doc, _) in &before {
                if !after.contains(h) && rejected.iter().any(|r| r.hash == *h && !r.retry) {
                    if !quarantined.contains_key(h) {
                        return Err(format!(
                            "c{i} dropped refused change {} of {doc} instead of quarantining it",
                            hex(h)
                        ));
                    }
                    mine.insert(*h);
                    self.stats.quarantined += 1;
                }
            }
            // In commit order, so a change built on one quarantined just before is recognised.
            for (h, doc, bytes) in &before {
                if after.contains(h) || mine.contains(h) {
                    continue;
                }
                if accepted.contains(h) {
                    if !self.view.has(h) {
                        return Err(format!(
                            "c{i} dropped {} of {doc} on an ack, but the relay lacks it",
                            hex(h)
                        ));
                    }
                    self.oracle.acked.insert(*h, (i, self.step));
                    self.stats.acked += 1;
                } else if let Some((_, reason)) = quarantined.get(h) {
                    let deps: Vec<Hash> = decode_change(bytes)
                        .map(|c| c.deps().iter().map(|d| d.0).collect())
                        .unwrap_or_default();
                    // A change the relay refused "for now" to a document the client was told
                    // to give up: the relay answers it as to a document it does not have, so
                    // the client quarantines it rather than wait for ever.
                    let departed = rejected.iter().any(|r| r.hash == *h && r.retry)
                        && reason.contains("moved out of this device's scopes");
                    if !departed && !deps.iter().any(|d| mine.contains(d)) {
                        return Err(format!(
                            "c{i} quarantined {} of {doc} that the relay did not refuse: {reason}",
                            hex(h)
                        ));
                    }
                    mine.insert(*h);
                    self.stats.quarantined += 1;
                } else {
                    return Err(format!(
                        "change {} of {doc} left c{i}'s outbox without being acknowledged or quarantined",
                        hex(h)
                    ));
                }
            }
        }
        for m in &out {
            self.send_up(id, m)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- lifecycle

    /// Synced clients sometimes leave; a client synced with changes still waiting reconnects
    /// when its session's resend timer says so, as the sync driver does.
    fn lifecycle(&mut self) -> Res<()> {
        for i in 0..self.clients.len() {
            let Some(id) = self.clients[i].conn else {
                continue;
            };
            let Some(step) = self.poll_session(i)? else {
                continue;
            };
            if step.resend {
                self.cut(id, "reconnecting for leftovers");
            } else if step.synced && step.outbox == 0 && self.rng.random_bool(self.plan.p_leave) {
                self.cut(id, "synced; the client leaves");
            } else if self.clients[i].metered {
                // As the sync driver does: a paused session ends once settled.
                if self.clients[i]
                    .session
                    .as_ref()
                    .is_some_and(ClientSession::is_settled)
                {
                    self.cut(id, "metered: the budget is spent");
                }
            } else if !self.healing && self.rng.random_bool(self.plan.p_metered) {
                let c = &mut self.clients[i];
                if let Some(s) = c.session.as_mut() {
                    s.pause();
                    c.metered = true;
                    self.note(format!("c{i} metered: its budget is spent"));
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- observations

    /// I5 at every step: no replica holds a document outside its scopes, except in the grace
    /// window: its `Leave` not applied yet, the client's own edits to it still waiting for the
    /// relay's answer, or the download not caught up since.
    fn observe(&mut self) -> Res<()> {
        if let Some(relay) = &self.relay {
            self.view.refresh(relay)?;
        }
        for i in 0..self.clients.len() {
            let c = &self.clients[i];
            let Some(store) = c.store.as_ref() else {
                continue;
            };
            if c.sees_all() {
                continue;
            }
            let docs = local_docs(store)?;
            let pending: BTreeSet<DocId> = outbox(store)?.into_iter().map(|(_, d, _)| d).collect();
            let cursor =
                ClientSession::load_cursor(store).map_err(store_err("reading the cursor"))?;
            // Documents leave when the download catches up (after their Leave, and once the
            // client's own changes to them are answered): the grace window is "until the next
            // sync completes".
            let caught_up = c.session.as_ref().is_some_and(ClientSession::is_caught_up)
                && !c.acked_since_catch_up;
            for d in docs {
                match self.view.current.get(&d.id) {
                    None => {
                        if self.oracle.creator.get(&d.id) != Some(&i) {
                            return Err(format!(
                                "I5: c{i} holds {} which the relay never filed and it did not create",
                                d.id
                            ));
                        }
                    }
                    Some(s) if c.sees(s) => {}
                    Some(s) => {
                        if pending.contains(&d.id) {
                            continue;
                        }
                        // The newest Leave in a scope the device sees, to a scope it does not.
                        let leave = c
                            .scopes
                            .iter()
                            .filter_map(|sc| {
                                self.view
                                    .leaves
                                    .get(&(d.id, sc.clone()))
                                    .map(|(seq, _)| (sc.clone(), *seq))
                            })
                            .max_by_key(|(_, seq)| *seq);
                        let Some((left, seq)) = leave else {
                            return Err(format!(
                                "I5: c{i} holds {} filed in `{s}` and it never left the device's scopes",
                                d.id
                            ));
                        };
                        // A download that started with snapshots after the Leave gets the
                        // departure when its snapshots of that scope are done.
                        let passed = cursor
                            .as_ref()
                            .and_then(|cur| cur.scopes.get(&left))
                            .is_some_and(|sc| match sc {
                                ScopeCursor::Log { seq: at }
                                | ScopeCursor::LogFirst { seq: at, .. } => *at >= seq,
                                ScopeCursor::Snapshot { high: Some(h), .. }
                                | ScopeCursor::SnapshotFirst { high: h, .. } => *h >= seq,
                                ScopeCursor::Snapshot { high: None, .. } => false,
                            });
                        if passed && caught_up {
                            return Err(format!(
                                "I5: c{i} still holds {} filed in `{s}` after applying its Leave from `{left}` (seq {seq})",
                                d.id
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- healing and final checks

    /// Lifts every partition and fault, restarts whatever is down, and runs sync round by
    /// round until no frame is in flight and every client is synced with an empty outbox.
    fn heal(&mut self) -> Res<()> {
        self.healing = true;
        self.note("heal".into());
        for c in &mut self.clients {
            c.offline_until = 0;
        }
        // A metered session asks for nothing more: the laptop's next sync goes on.
        let metered: Vec<u64> = self
            .clients
            .iter()
            .filter(|c| c.metered)
            .filter_map(|c| c.conn)
            .collect();
        for id in metered {
            self.cut(id, "heal: a metered session ends");
        }
        self.restarts()?;
        let bound = self.rounds_bound()?;
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > bound {
                return Err(format!(
                    "sync did not finish within {bound} rounds after healing: {}",
                    self.status_line()?
                ));
            }
            for i in 0..self.clients.len() {
                if self.clients[i].conn.is_none() {
                    self.connect(i)?;
                }
            }
            // One round: every chunk in flight at its start is delivered; what they cause
            // waits for the next round (so rounds count round trips).
            let inflight: Vec<(u64, usize, usize)> = self
                .conns
                .iter()
                .map(|(id, c)| (*id, c.up.len(), c.down.len()))
                .collect();
            for (id, up, down) in inflight {
                for _ in 0..up {
                    self.deliver(id, true)?;
                }
                for _ in 0..down {
                    self.deliver(id, false)?;
                }
            }
            self.reap();
            let mut done = true;
            for i in 0..self.clients.len() {
                let c = &mut self.clients[i];
                let (Some(id), Some(session), Some(store)) =
                    (c.conn, c.session.as_ref(), c.store.as_ref())
                else {
                    done = false;
                    continue;
                };
                if !session.is_synced(store).map_err(store_err("is_synced"))? {
                    done = false;
                    continue;
                }
                if store.outbox_len().map_err(store_err("outbox_len"))? > 0 {
                    done = false;
                    c.leftover_reconnects += 1;
                    if c.leftover_reconnects > LEFTOVER_RECONNECTS_MAX {
                        let left = outbox(store)?;
                        let docs: BTreeSet<DocId> = left.iter().map(|(_, d, _)| *d).collect();
                        return Err(format!(
                            "I3: c{i}'s outbox still holds {} change(s) of {docs:?} after {LEFTOVER_RECONNECTS_MAX} reconnects",
                            left.len()
                        ));
                    }
                    self.cut(id, "healed client reconnects for leftovers");
                }
            }
            if done && self.conns.values().all(Conn::idle) {
                break;
            }
        }
        self.stats.heal_rounds = rounds;
        self.stats.heal_rounds_bound = bound;
        self.note(format!("quiescent after {rounds} round(s) (bound {bound})"));
        self.observe()
    }

    /// How many rounds sync may take after healing: a few for the handshake and reconnects,
    /// plus two per upload batch of the fullest outbox and two per download page of the whole
    /// log (an upload or a pull and its answer each take a round), with 50 % slack.
    fn rounds_bound(&mut self) -> Res<u32> {
        let relay = self.relay.as_ref().ok_or("relay down")?;
        self.view.refresh(relay)?;
        // Pages are at least 16 KiB (the relay's floor on a pull's budget); a client may need
        // every snapshot and then the whole log.
        let mut snapshots = 0u64;
        for scope in SCOPES {
            let (rows, _) = relay
                .read_snapshots(scope, None, 1 << 40, Lane::All)
                .map_err(|e| format!("relay snapshots: {e}"))?;
            snapshots += rows.iter().map(|(_, b)| b.len() as u64 + 24).sum::<u64>();
        }
        let pages = (self.view.bytes + snapshots).div_ceil(16 << 10) + 1;
        let mut uploads = 0u64;
        for c in &self.clients {
            let store = c.store.as_ref().ok_or("client down")?;
            // Batches as the session builds them: up to `upload_changes` changes and about
            // `upload_bytes`, at least one change each.
            let (mut batches, mut count, mut bytes) = (0u64, 0usize, 0usize);
            for (_, _, b) in outbox(store)? {
                if count > 0
                    && (count == c.cfg.upload_changes || bytes + b.len() > c.cfg.upload_bytes)
                {
                    batches += 1;
                    count = 0;
                    bytes = 0;
                }
                count += 1;
                bytes += b.len();
            }
            if count > 0 {
                batches += 1;
            }
            uploads = uploads.max(batches);
        }
        let rounds = 10 + 3 * u64::from(LEFTOVER_RECONNECTS_MAX) + 3 * (uploads + pages);
        Ok(u32::try_from(rounds).unwrap_or(u32::MAX))
    }

    /// Which changes of a document a replica lacks or has beyond the relay's (for failure
    /// reports): log position, author and commit step of each.
    fn history_diff(&mut self, i: usize, id: DocId) -> Res<String> {
        let store = self.clients[i].store.as_mut().ok_or("client down")?;
        let mut am = store.automerge(id).map_err(store_err("loading"))?;
        let mine: BTreeSet<Hash> = am.get_changes(&[]).iter().map(|c| c.hash().0).collect();
        let relay: BTreeSet<Hash> = self
            .view
            .change_doc
            .iter()
            .filter(|(_, (d, _))| *d == id)
            .map(|(h, _)| *h)
            .collect();
        let describe = |h: &Hash| {
            let seq = self.view.change_doc.get(h).map(|(_, s)| *s);
            let by = self.oracle.committed.get(h).map(|c| (c.client, c.step));
            format!("{} seq {seq:?} by/at {by:?}", hex(h))
        };
        let lacks: Vec<String> = relay.difference(&mine).map(describe).collect();
        let extra: Vec<String> = mine.difference(&relay).map(describe).collect();
        Ok(format!(
            "replica lacks {lacks:?}; has beyond the relay {extra:?}"
        ))
    }

    fn status_line(&self) -> Res<String> {
        let mut parts = Vec::new();
        for (i, c) in self.clients.iter().enumerate() {
            let Some(store) = c.store.as_ref() else {
                parts.push(format!("c{i} down"));
                continue;
            };
            let synced = match c.session.as_ref() {
                Some(s) => s.is_synced(store).map_err(store_err("is_synced"))?,
                None => false,
            };
            parts.push(format!(
                "c{i} conn {:?} synced {synced} outbox {}",
                c.conn,
                store.outbox_len().map_err(store_err("outbox_len"))?
            ));
        }
        Ok(parts.join("; "))
    }

    fn final_checks(&mut self) -> Res<()> {
        relay_integrity(&self.relay_path)?;
        let relay = self.relay.as_ref().ok_or("relay down at the end")?;
        self.view.refresh(relay)?;
        // The relay's documents, as typed documents with heads.
        let mut relay_docs = BTreeMap::new();
        for scope in SCOPES {
            let (rows, more) = relay
                .read_snapshots(scope, None, 1 << 40, Lane::All)
                .map_err(|e| format!("relay snapshots: {e}"))?;
            if more {
                return Err("read_snapshots with an unbounded budget left documents behind".into());
            }
            for (id, bytes) in rows {
                let mut doc = fieldsync_core::store::load_snapshot(&bytes)
                    .map_err(|e| format!("relay document {id} does not load: {e}"))?;
                let typed = read_document(&doc).map_err(|e| format!("relay document {id}: {e}"))?;
                let mut heads: Vec<ChangeHash> = doc.get_heads();
                heads.sort();
                if self.view.current.get(&id).map(String::as_str) != Some(scope) {
                    return Err(format!(
                        "relay files {id} in `{scope}` but its log says {:?}",
                        self.view.current.get(&id)
                    ));
                }
                relay_docs.insert(id, (scope, typed, heads, doc));
            }
        }
        self.stats.docs = relay_docs.len() as u64;
        // Every acknowledged change is on the relay.
        for (h, (c, step)) in &self.oracle.acked {
            if !self.view.has(h) {
                return Err(format!(
                    "I2: change {} acknowledged to c{c} at step {step} is not on the relay",
                    hex(h)
                ));
            }
        }
        for i in 0..self.clients.len() {
            let c = &mut self.clients[i];
            let sees_all = c.sees_all();
            let scopes = c.scopes.clone();
            let sees = |s: &str| sees_all || scopes.iter().any(|x| x == s);
            let store = c.store.as_mut().ok_or("client down at the end")?;
            let problems = store.verify().map_err(store_err("verify"))?;
            if !problems.is_empty() {
                return Err(format!("I10: c{i} replica: {problems:?}"));
            }
            let left = outbox(store)?;
            if !left.is_empty() {
                return Err(format!("I3: c{i}'s outbox holds {} change(s)", left.len()));
            }
            // The quarantine: exactly changes refused with cause, or built on them.
            let quarantined = quarantine(store)?;
            let expected = self.oracle.quarantined.get(&i).cloned().unwrap_or_default();
            let got: BTreeSet<Hash> = quarantined.keys().copied().collect();
            if got != expected {
                return Err(format!(
                    "c{i}'s quarantine holds {} change(s), the harness saw {} quarantined",
                    got.len(),
                    expected.len()
                ));
            }
            for h in &got {
                // A refused change can still reach the relay later in an upload an older
                // connection was carrying (e.g. after the document moved back): then the
                // replica must have it back too, from the download.
                if let Some((doc, _)) = self.view.change_doc.get(h)
                    && store.contains(*doc).map_err(store_err("contains"))?
                {
                    let held = store
                        .automerge(*doc)
                        .map_err(store_err("loading"))?
                        .get_change_by_hash(&ChangeHash(*h))
                        .is_some();
                    if !held {
                        return Err(format!(
                            "c{i} quarantined {} which the relay stored later, yet lacks it",
                            hex(h)
                        ));
                    }
                }
            }
            // Every committed change is on the relay or quarantined.
            for (h, cc) in &self.oracle.committed {
                if cc.client == i && !self.view.has(h) && !got.contains(h) {
                    return Err(format!(
                        "I3: c{i}'s change {} of {} (step {}) is neither on the relay nor quarantined",
                        hex(h),
                        cc.doc,
                        cc.step
                    ));
                }
            }
            let docs = local_docs(store)?;
            let held: BTreeSet<DocId> = docs.iter().map(|d| d.id).collect();
            // Exactly the relay's documents in the device's scopes, equal to the relay's.
            for (id, (scope, typed, heads, _)) in &relay_docs {
                if !sees(scope) {
                    if held.contains(id) {
                        return Err(format!(
                            "I5: c{i} holds {id}, filed in `{scope}`, after healing"
                        ));
                    }
                    continue;
                }
                if !held.contains(id) {
                    return Err(format!("I4: c{i} lacks {id} of scope `{scope}`"));
                }
                let mine = store
                    .document(*id)
                    .map_err(|e| format!("c{i} reading {id}: {e}"))?;
                let mut h = store.heads(*id).map_err(store_err("heads"))?;
                h.sort();
                if &mine != typed || &h != heads {
                    let diff = self.history_diff(i, *id)?;
                    return Err(format!(
                        "I4: c{i}'s {id} differs from the relay's ({diff}):\n  replica {mine:?}\n  relay   {typed:?}"
                    ));
                }
            }
            for id in &held {
                if relay_docs.contains_key(id) {
                    continue;
                }
                // Only the client's own documents that the relay refused may stay local.
                if self.oracle.creator.get(id) != Some(&i) {
                    return Err(format!("I5: c{i} holds {id} that the relay does not have"));
                }
                let all_refused = self
                    .oracle
                    .committed
                    .iter()
                    .filter(|(_, cc)| cc.doc == *id)
                    .all(|(h, _)| got.contains(h));
                if !all_refused {
                    return Err(format!(
                        "c{i} holds its own {id} that the relay lacks, yet not every change to it was refused"
                    ));
                }
            }
            // Every acknowledged change is on every replica that sees its document.
            for h in self.oracle.acked.keys() {
                let Some((doc, _)) = self.view.change_doc.get(h) else {
                    continue;
                };
                let Some((scope, ..)) = relay_docs.get(doc) else {
                    return Err(format!(
                        "acknowledged change {} has no document on the relay",
                        hex(h)
                    ));
                };
                if !sees(scope) {
                    continue;
                }
                let mut am = store.automerge(*doc).map_err(store_err("loading"))?;
                if am.get_change_by_hash(&ChangeHash(*h)).is_none() {
                    return Err(format!(
                        "I3: c{i} lacks acknowledged change {} of {doc}",
                        hex(h)
                    ));
                }
            }
        }
        Ok(())
    }
}

//! `RelaySession` over the real SQLite relay store (`SqliteRelayStore`), fed message
//! sequences from one enrolled device.
//!
//! Each input starts from a copy of one relay database (fixed epoch) that holds a customer,
//! a visit and a quote in each of the scopes `north` and `south`, eight enrolled devices (every
//! role, with scopes `north` or `*`) and an unused enrolment token. The first input byte picks
//! the device (role and scopes), whether the harness opens with a valid `Hello` (otherwise the
//! handshake is up to the input) and whether the session runs with tight limits; the rest
//! drives a structured generator of client messages — `Hello`/`Enrol` with right and wrong
//! credentials, versions and magic; uploads mixing the device's own valid changes (new
//! documents, edits of the relay's documents, documents out of its scopes), another device's
//! changes, spoiled changes and arbitrary bytes, as normal or repair batches; pulls with
//! valid and foreign cursors; heads exchanges; relay-only messages; frames decoded from raw
//! bytes. A session the relay closes is reopened.
//!
//! Checked: no panic escapes the session or the store; before a valid handshake the relay
//! answers only with one error and closes; it never sends a client-side message; at the end
//! every document the relay stored loads and reads as a typed document, the snapshot listing
//! agrees with the status counters, and every log entry of every scope decodes.
#![no_main]

mod common;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use common::{Sample, fail, panic_message};
use fieldsync_core::protocol::codec::decode;
use fieldsync_core::protocol::messages::serde_bytes_vec::Bytes;
use fieldsync_core::protocol::messages::{MAGIC, Rejection};
use fieldsync_core::protocol::relay::{Output, REPAIR_BATCH};
use fieldsync_core::protocol::{
    Cursor, DeviceInfo, Entry, ErrorCode, Item, Lane, Message, PROTOCOL_VERSION, RelayLimits,
    RelaySession, ScopeCursor, UploadChange,
};
use fieldsync_core::store::{decode_change, load_snapshot};
use fieldsync_core::{DocId, Role};
use fieldsync_relay::{RelayStoreOptions, SqliteRelayStore};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

const TARGET: &str = "relay_store_session";

/// Wrote the documents the relay holds at the start.
const SEEDER: Uuid = Uuid::from_u128(0x0f5a_11ce_0000_00ad);

const CUSTOMER: DocId = common::doc(1);
const VISIT: DocId = common::doc(2);
const QUOTE: DocId = common::doc(3);
const SOUTH_CUSTOMER: DocId = common::doc(4);
const SOUTH_VISIT: DocId = common::doc(5);
const SOUTH_QUOTE: DocId = common::doc(6);
/// Created by the connecting device.
const OWN_CUSTOMER: DocId = common::doc(0x11);
const OWN_VISIT: DocId = common::doc(0x12);
const OWN_QUOTE: DocId = common::doc(0x13);
const OWN_SOUTH: [DocId; 3] = [common::doc(0x21), common::doc(0x22), common::doc(0x23)];

const POOL: [DocId; 12] = [
    CUSTOMER,
    VISIT,
    QUOTE,
    SOUTH_CUSTOMER,
    SOUTH_VISIT,
    SOUTH_QUOTE,
    OWN_CUSTOMER,
    OWN_VISIT,
    OWN_QUOTE,
    OWN_SOUTH[0],
    OWN_SOUTH[1],
    OWN_SOUTH[2],
];

fn device_id(n: u8) -> Uuid {
    Uuid::from_u128(0x0f5a_11ce_0000_1000 + u128::from(n))
}

fn role_of(n: u8) -> Role {
    [Role::Rep, Role::Manager, Role::Director, Role::Admin][usize::from(n & 3)]
}

fn scopes_of(n: u8) -> Vec<String> {
    if n & 4 == 0 {
        vec!["north".into()]
    } else {
        vec!["*".into()]
    }
}

struct Device {
    info: DeviceInfo,
    secret: String,
    /// What this device may upload: its own documents (in `north` and `south`), its edits of
    /// the relay's documents, and another device's edits.
    samples: Vec<Sample>,
}

struct World {
    dir: PathBuf,
    template: PathBuf,
    epoch: Uuid,
    token: String,
    devices: Vec<Device>,
    hashes: Vec<[u8; 32]>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = common::scratch(TARGET);
        let template = dir.join("template.db");
        let store = SqliteRelayStore::open(&template, RelayStoreOptions::default()).expect("relay");
        let epoch = store.epoch();
        // The relay's documents, uploaded by an admin device that sees everything.
        let seeder = store
            .enrol_device(Some(SEEDER), "seeder", Role::Admin, &["*".to_string()])
            .expect("seeder");
        let seeder = store
            .authenticate(SEEDER, Some(&seeder.secret))
            .expect("authenticate")
            .expect("seeder admitted");
        let mut relay_docs = common::customer_family(SEEDER, 1, "north", CUSTOMER, VISIT, QUOTE);
        relay_docs.extend(common::customer_family(
            SEEDER,
            1,
            "south",
            SOUTH_CUSTOMER,
            SOUTH_VISIT,
            SOUTH_QUOTE,
        ));
        let uploads: Vec<UploadChange> = relay_docs
            .iter()
            .flat_map(|s| {
                s.changes.iter().map(|c| UploadChange {
                    doc_id: s.id,
                    bytes: c.clone(),
                })
            })
            .collect();
        let outcomes = store
            .append_changes(&seeder, &uploads, false)
            .expect("seed");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, fieldsync_core::protocol::Outcome::Stored(_))),
            "the seed documents are accepted: {outcomes:?}"
        );
        let mut devices = Vec::new();
        for n in 0..8u8 {
            let id = device_id(n);
            let e = store
                .enrol_device(Some(id), "fuzz", role_of(n), &scopes_of(n))
                .expect("enrol");
            let info = store
                .authenticate(id, Some(&e.secret))
                .expect("authenticate")
                .expect("admitted");
            let mut samples =
                common::customer_family(id, 1, "north", OWN_CUSTOMER, OWN_VISIT, OWN_QUOTE);
            samples.extend(common::customer_family(
                id,
                1,
                "south",
                OWN_SOUTH[0],
                OWN_SOUTH[1],
                OWN_SOUTH[2],
            ));
            for s in &relay_docs {
                samples.push(common::concurrent_edit(s, id, 1, role_of(n)));
            }
            // Someone else's edit of a relay document.
            samples.push(common::concurrent_edit(
                &relay_docs[0],
                SEEDER,
                2,
                Role::Admin,
            ));
            devices.push(Device {
                info,
                secret: e.secret,
                samples,
            });
        }
        let token = store
            .create_enrolment(
                "new laptop",
                Role::Rep,
                &["north".to_string()],
                None,
                Duration::from_secs(10 * 365 * 86_400),
            )
            .expect("enrolment token");
        drop(store);
        let mut hashes = Vec::new();
        for d in &mut devices {
            for s in &mut d.samples {
                hashes.extend(s.doc.get_changes(&[]).iter().map(|c| c.hash().0));
            }
        }
        World {
            dir,
            template,
            epoch,
            token,
            devices,
            hashes,
        }
    })
}

fn scope(u: &mut Unstructured<'_>) -> ArbResult<String> {
    Ok(match u.int_in_range(0..=4u8)? {
        0 | 1 => "north".into(),
        2 => "south".into(),
        3 => "*".into(),
        _ => common::text(u, 8)?,
    })
}

fn cursor(u: &mut Unstructured<'_>, w: &World) -> ArbResult<Cursor> {
    let epoch = if u.ratio(7, 8)? {
        w.epoch
    } else {
        Uuid::from_bytes(u.arbitrary()?)
    };
    let mut scopes = BTreeMap::new();
    for _ in 0..u.int_in_range(0..=3u8)? {
        let seq = |u: &mut Unstructured<'_>| -> ArbResult<u64> {
            if u.ratio(3, 4)? {
                u.int_in_range(0..=40u64)
            } else {
                u.arbitrary()
            }
        };
        let after = |u: &mut Unstructured<'_>| -> ArbResult<Option<DocId>> {
            Ok(if u.arbitrary()? {
                Some(common::doc_id(u, &POOL)?)
            } else {
                None
            })
        };
        let sc = match u.int_in_range(0..=3u8)? {
            0 => ScopeCursor::Log { seq: seq(u)? },
            1 => ScopeCursor::Snapshot {
                high: u.arbitrary()?,
                after: after(u)?,
            },
            // Lanes (protocol 4), as a client may send them back, or forge them.
            2 => ScopeCursor::LogFirst {
                seq: seq(u)?,
                first: customers(u)?,
                first_seq: seq(u)?,
                upto: seq(u)?,
            },
            _ => ScopeCursor::SnapshotFirst {
                high: seq(u)?,
                first: customers(u)?,
                first_done: u.arbitrary()?,
                after: after(u)?,
            },
        };
        scopes.insert(scope(u)?, sc);
    }
    Ok(Cursor { epoch, scopes })
}

/// Customers a client names first: from the documents the run writes, or any.
fn customers(u: &mut Unstructured<'_>) -> ArbResult<Vec<DocId>> {
    let mut out = Vec::new();
    for _ in 0..u.int_in_range(0..=4u8)? {
        out.push(common::doc_id(u, &POOL)?);
    }
    Ok(out)
}

fn heads(u: &mut Unstructured<'_>, w: &World) -> ArbResult<Vec<(DocId, Vec<[u8; 32]>)>> {
    let mut out = Vec::new();
    for _ in 0..u.int_in_range(0..=4u8)? {
        let id = common::doc_id(u, &POOL)?;
        let mut hs = Vec::new();
        for _ in 0..u.int_in_range(0..=2u8)? {
            hs.push(common::hash(u, &w.hashes)?);
        }
        out.push((id, hs));
    }
    Ok(out)
}

fn hello(u: &mut Unstructured<'_>, w: &World, me: &Device) -> ArbResult<Message> {
    let device_id = match u.int_in_range(0..=7u8)? {
        0..=5 => me.info.device_id,
        6 => {
            w.devices[usize::from(u.int_in_range(0..=7u8)?)]
                .info
                .device_id
        }
        _ => Uuid::from_bytes(u.arbitrary()?),
    };
    let credential = match u.int_in_range(0..=5u8)? {
        0..=3 => Some(me.secret.clone()),
        4 => None,
        _ => Some(common::text(u, 70)?),
    };
    let magic = if u.ratio(15, 16)? {
        MAGIC
    } else {
        u.arbitrary()?
    };
    let version = if u.ratio(15, 16)? {
        PROTOCOL_VERSION
    } else {
        u.arbitrary()?
    };
    Ok(if u.ratio(1, 6)? {
        Message::Enrol {
            magic,
            version,
            device_id,
            token: if u.arbitrary()? {
                w.token.clone()
            } else {
                common::text(u, 40)?
            },
            credential: credential.unwrap_or_default(),
            agent: "fuzz".into(),
        }
    } else {
        Message::Hello {
            magic,
            version,
            device_id,
            credential,
            agent: "fuzz".into(),
        }
    })
}

fn message(u: &mut Unstructured<'_>, w: &World, me: &Device) -> ArbResult<Message> {
    Ok(match u.int_in_range(0..=19u8)? {
        0..=8 => {
            let mut changes = Vec::new();
            for _ in 0..u.int_in_range(0..=6u8)? {
                let doc_id = common::doc_id(u, &POOL)?;
                changes.push(UploadChange {
                    doc_id,
                    bytes: common::change_bytes(u, &me.samples, doc_id)?,
                });
            }
            let n = u.int_in_range(0..=4u64)?;
            Message::Upload {
                batch: if u.ratio(1, 6)? { n | REPAIR_BATCH } else { n },
                changes,
            }
        }
        9..=12 => Message::Pull {
            cursor: cursor(u, w)?,
            max_bytes: if u.ratio(3, 4)? {
                u.int_in_range(0..=1u32 << 20)?
            } else {
                u.arbitrary()?
            },
        },
        13 => Message::Heads {
            docs: heads(u, w)?,
            done: u.arbitrary()?,
        },
        14 => match u.int_in_range(0..=2u8)? {
            0 => Message::First {
                customers: customers(u)?,
            },
            1 => Message::More,
            _ => Message::Outbox {
                changes: u.arbitrary()?,
                documents: u.arbitrary()?,
                bytes: u.arbitrary()?,
                quarantined: u.arbitrary()?,
            },
        },
        15 | 16 => hello(u, w, me)?,
        17 => match decode(&common::raw(u, 512)?) {
            Ok(m) => m,
            Err(_) => Message::Heads {
                docs: Vec::new(),
                done: true,
            },
        },
        _ => match u.int_in_range(0..=4u8)? {
            0 => Message::Welcome {
                version: PROTOCOL_VERSION,
                epoch: w.epoch,
                scopes: vec!["*".into()],
                role: Role::Admin,
            },
            1 => Message::Batch {
                items: vec![Item {
                    doc_id: CUSTOMER,
                    entry: Entry::Snapshot(Bytes(common::snapshot_bytes(
                        u,
                        &me.samples,
                        CUSTOMER,
                    )?)),
                }],
                cursor: cursor(u, w)?,
                caught_up: true,
            },
            2 => Message::UploadAck {
                batch: 1,
                accepted: vec![common::hash(u, &w.hashes)?],
                rejected: vec![Rejection {
                    hash: [0; 32],
                    reason: "x".into(),
                    retry: false,
                }],
            },
            3 => Message::Missing {
                docs: heads(u, w)?,
                done: true,
            },
            _ => Message::Error {
                code: ErrorCode::Internal,
                reason: common::text(u, 16)?,
            },
        },
    })
}

fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => fail(
            TARGET,
            &format!("a panic escaped {what}: {}", panic_message(&*p)),
        ),
    }
}

/// The relay sends relay-side messages only.
fn check_replies(out: &Output) {
    for m in &out.messages {
        if matches!(
            m,
            Message::Hello { .. }
                | Message::Enrol { .. }
                | Message::Upload { .. }
                | Message::Pull { .. }
                | Message::First { .. }
                | Message::More
                | Message::Outbox { .. }
                | Message::Heads { .. }
        ) {
            fail(
                TARGET,
                &format!("the relay sent a client message: {}", m.name()),
            );
        }
    }
}

fn run(
    u: &mut Unstructured<'_>,
    selector: u8,
    store: &mut SqliteRelayStore,
    w: &World,
) -> ArbResult<()> {
    let me = &w.devices[usize::from(selector & 7)];
    let limits = if selector & 0x10 == 0 {
        RelayLimits::default()
    } else {
        RelayLimits {
            max_batch_bytes: 16 << 10,
            max_upload_changes: 2,
            ..RelayLimits::default()
        }
    };
    for _ in 0..3 {
        let mut session = RelaySession::new(limits.clone());
        if selector & 8 == 0 {
            let hello = Message::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                device_id: me.info.device_id,
                credential: Some(me.secret.clone()),
                agent: "fuzz".into(),
            };
            let out = guarded("RelaySession::handle(Hello)", || {
                session.handle(store, hello)
            });
            if out.close || session.device().is_none() {
                fail(
                    TARGET,
                    &format!("an enrolled device was refused: {:?}", out.messages),
                );
            }
        }
        loop {
            if u.is_empty() {
                return Ok(());
            }
            let out = match u.int_in_range(0..=15u8)? {
                0 => guarded("RelaySession::recheck", || session.recheck(store)),
                1 => guarded("RelaySession::poll_live", || session.poll_live(store)),
                _ => {
                    let msg = message(u, w, me)?;
                    let authenticated = session.device().is_some();
                    let valid_handshake = matches!(&msg,
                        Message::Hello { magic, version, .. } | Message::Enrol { magic, version, .. }
                            if *magic == MAGIC && *version == PROTOCOL_VERSION);
                    let name = msg.name();
                    let out = guarded(&format!("RelaySession::handle({name})"), || {
                        session.handle(store, msg)
                    });
                    let refused =
                        out.close && matches!(out.messages.as_slice(), [Message::Error { .. }]);
                    if !authenticated && !valid_handshake && !refused {
                        fail(
                            TARGET,
                            &format!("before the handshake {name} got {:?}", out.messages),
                        );
                    }
                    out
                }
            };
            check_replies(&out);
            if out.close {
                break;
            }
        }
    }
    Ok(())
}

/// Every document the relay stored loads and reads; the log reads and decodes.
fn check(store: &SqliteRelayStore) {
    let status = store
        .status()
        .unwrap_or_else(|e| fail(TARGET, &format!("status: {e}")));
    let (snapshots, more) = store
        .read_snapshots("*", None, usize::MAX, Lane::All)
        .unwrap_or_else(|e| fail(TARGET, &format!("snapshots: {e}")));
    if more || snapshots.len() as u64 != status.docs {
        fail(
            TARGET,
            &format!(
                "{} snapshots listed, status counts {}",
                snapshots.len(),
                status.docs
            ),
        );
    }
    for (id, snap) in snapshots {
        match load_snapshot(&snap) {
            Ok(doc) => {
                if let Err(e) = fieldsync_core::model::read_document(&doc) {
                    fail(TARGET, &format!("stored document {id} does not read: {e}"));
                }
            }
            Err(e) => fail(TARGET, &format!("stored document {id} does not load: {e}")),
        }
    }
    for scope in ["north", "south", "*"] {
        let (entries, _) = store
            .read_log(scope, 0, usize::MAX, Lane::All)
            .unwrap_or_else(|e| fail(TARGET, &format!("log of {scope}: {e}")));
        for e in entries {
            match &e.entry {
                Entry::Changes(cs) => {
                    for c in cs {
                        if let Err(err) = decode_change(&c.0) {
                            fail(TARGET, &format!("a logged change does not decode: {err}"));
                        }
                    }
                }
                Entry::Snapshot(s) | Entry::Replace(s) => {
                    if let Err(err) = load_snapshot(&s.0) {
                        fail(TARGET, &format!("a logged snapshot does not load: {err}"));
                    }
                }
                Entry::Leave => {}
            }
        }
    }
}

fuzz_target!(
    init: {
        common::quiet_panics();
        world();
        common::write_seeds(TARGET, common::random_seeds(32));
    },
    |data: &[u8]| {
        let Some((&selector, rest)) = data.split_first() else {
            return;
        };
        let w = world();
        let path = w.dir.join("relay.db");
        common::copy_db(&w.template, &path);
        let mut store = SqliteRelayStore::open(
            &path,
            RelayStoreOptions {
                cache_docs: 4,
                ..RelayStoreOptions::default()
            },
        )
        .expect("open the relay database");
        let mut u = Unstructured::new(rest);
        let _ = run(&mut u, selector, &mut store, w);
        guarded("a relay store read", || check(&store));
    }
);

//! The client's side of a connection fed relay messages, over a real replica.
//!
//! Each input starts from a copy of one replica (fixed device id and actor) that holds a
//! customer, a visit and a quote downloaded in scope `north`, a customer created on this
//! laptop and a pending local edit, and a download cursor of epoch `EPOCH`. The first input
//! byte chooses the grant in the `Welcome` that opens the session (role, scopes including a
//! lost `north`, same epoch or a new one, which starts the repair exchange) and the upload
//! batch size; the rest drives a structured generator of relay messages — download batches
//! mixing valid snapshots and changes of customer documents (from the same device, another
//! device, a concurrent manager, a scope move) with spoiled ones and arbitrary bytes; leaves;
//! upload answers naming the real outbox hashes; repair answers; stray handshakes and
//! errors; frames decoded from raw bytes — interleaved with local edits. A session that ends
//! in an error is reopened, as the sync driver does.
//!
//! Checked: no panic escapes `ClientSession` or the store, and at the end the replica is
//! whole: `Store::verify` finds nothing (integrity, every stored document loads from disk
//! with the heads recorded for it, projections agree), every document reads as a typed
//! document or a model error, the cursor, outbox, quarantine and conflicts read, and the
//! replica still takes a local edit.
#![no_main]

mod common;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::OnceLock;

use automerge::AutoCommit;
use common::{Sample, fail, panic_message};
use fieldsync_core::ids::Millis;
use fieldsync_core::model::{
    CustomerEdit, CustomerField, Edit, LineInput, NewCustomer, QuoteEdit, VisitEdit, apply_edit,
    create_customer,
};
use fieldsync_core::protocol::client::CURSOR_KEY;
use fieldsync_core::protocol::codec::decode;
use fieldsync_core::protocol::messages::serde_bytes_vec::Bytes;
use fieldsync_core::protocol::messages::{MAGIC, Rejection};
use fieldsync_core::protocol::{
    ClientConfig, ClientInput, ClientSession, ClientStep, Cursor, Entry, ErrorCode, Item, Message,
    PROTOCOL_VERSION, ScopeCursor, SessionError, TimerConfig, UploadChange,
};
use fieldsync_core::store::{Durability, Store, StoreOptions};
use fieldsync_core::{DocId, Role};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

const TARGET: &str = "client_session";

/// This laptop.
const DEVICE: Uuid = Uuid::from_u128(0x0f5a_11ce_0000_0001);
/// The laptop that wrote the downloaded documents.
const REMOTE: Uuid = Uuid::from_u128(0x0f5a_11ce_0000_0002);
/// A manager's laptop editing concurrently.
const MANAGER: Uuid = Uuid::from_u128(0x0f5a_11ce_0000_0003);
/// The relay epoch of the stored cursor, and another one.
const EPOCH: Uuid = Uuid::from_u128(0xe1);
const NEW_EPOCH: Uuid = Uuid::from_u128(0xe2);

const CUSTOMER: DocId = common::doc(1);
const VISIT: DocId = common::doc(2);
const QUOTE: DocId = common::doc(3);
const SOUTH_CUSTOMER: DocId = common::doc(4);
const SOUTH_VISIT: DocId = common::doc(5);
const SOUTH_QUOTE: DocId = common::doc(6);
/// Created on this laptop, in the outbox.
const LOCAL: DocId = common::doc(7);
/// Created at the end to check the replica still takes edits.
const PROBE: DocId = common::doc(0xfff);

const POOL: [DocId; 7] = [
    CUSTOMER,
    VISIT,
    QUOTE,
    SOUTH_CUSTOMER,
    SOUTH_VISIT,
    SOUTH_QUOTE,
    LOCAL,
];

fn local_customer() -> NewCustomer {
    NewCustomer {
        org: "acme".into(),
        scope: "north".into(),
        name: "Erdos Haulage".into(),
        ..Default::default()
    }
}

fn store_options(suffix: u8) -> StoreOptions {
    StoreOptions {
        durability: Durability::Normal,
        cache_docs: 8,
        compact_after: 4,
        device_id: Some(DEVICE),
        actor_suffix: Some([suffix; 8]),
        // Fixed time and ids, so an input replays the same way in every process.
        env: std::sync::Arc::new(fieldsync_core::env::SeededEnv::new(1, 1_700_000_000_000)),
        key: None,
    }
}

struct World {
    dir: PathBuf,
    template: PathBuf,
    samples: Vec<Sample>,
    /// Hashes of the template's outbox and of every sample change.
    hashes: Vec<[u8; 32]>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = common::scratch(TARGET);
        let mut samples = common::customer_family(REMOTE, 1, "north", CUSTOMER, VISIT, QUOTE);
        samples.extend(common::customer_family(
            REMOTE,
            1,
            "south",
            SOUTH_CUSTOMER,
            SOUTH_VISIT,
            SOUTH_QUOTE,
        ));
        // The relay's view of the customer created on this laptop: the same change.
        let mut local = AutoCommit::new().with_actor(common::actor(DEVICE, 1));
        create_customer(
            &mut local,
            LOCAL,
            &local_customer(),
            &common::ctx(Role::Rep),
        )
        .expect("local customer");
        local.commit();
        let concurrent: Vec<Sample> = samples[..3]
            .iter()
            .map(|s| common::concurrent_edit(s, MANAGER, 1, Role::Manager))
            .collect();
        samples.extend(concurrent);
        // The north customer moved to `south` by a manager.
        let mut moved = samples[0].doc.fork().with_actor(common::actor(MANAGER, 2));
        apply_edit(
            &mut moved,
            &Edit::Customer(CustomerEdit::SetScope("south".into())),
            &common::ctx(Role::Manager),
        )
        .expect("move");
        moved.commit();
        samples.push(common::Sample::of(CUSTOMER, moved));
        samples.push(common::Sample::of(LOCAL, local));

        let template = dir.join("template.db");
        let mut store = Store::open_with(&template, store_options(1)).expect("template");
        store
            .transaction(|tx| {
                for s in &samples[..3] {
                    tx.apply_snapshot(s.id, &s.snapshot)?;
                }
                tx.create(LOCAL, |doc, id| {
                    create_customer(doc, id, &local_customer(), &common::ctx(Role::Rep))
                })?;
                Ok(())
            })
            .expect("template documents");
        store
            .edit(CUSTOMER, |doc| {
                apply_edit(
                    doc,
                    &Edit::Customer(CustomerEdit::AddPhone("+86 139 0000 0003".into())),
                    &common::ctx(Role::Rep),
                )
            })
            .expect("pending edit");
        let cursor = Cursor {
            epoch: EPOCH,
            scopes: BTreeMap::from([("north".to_string(), ScopeCursor::Log { seq: 3 })]),
        };
        store
            .set_meta(CURSOR_KEY, &serde_json::to_vec(&cursor).expect("cursor"))
            .expect("cursor");
        let mut hashes: Vec<[u8; 32]> = store
            .outbox_batch(0, 100, usize::MAX)
            .expect("outbox")
            .iter()
            .map(|c| c.hash.0)
            .collect();
        assert_eq!(hashes.len(), 2, "the template's outbox");
        drop(store);
        for s in &mut samples {
            hashes.extend(s.doc.get_changes(&[]).iter().map(|c| c.hash().0));
        }
        World {
            dir,
            template,
            samples,
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

fn cursor(u: &mut Unstructured<'_>) -> ArbResult<Cursor> {
    let epoch = match u.int_in_range(0..=5u8)? {
        0..=3 => EPOCH,
        4 => NEW_EPOCH,
        _ => Uuid::from_bytes(u.arbitrary()?),
    };
    let mut scopes = BTreeMap::new();
    for _ in 0..u.int_in_range(0..=3u8)? {
        let sc = if u.arbitrary()? {
            ScopeCursor::Log {
                seq: u.arbitrary()?,
            }
        } else {
            ScopeCursor::Snapshot {
                high: u.arbitrary()?,
                after: if u.arbitrary()? {
                    Some(common::doc_id(u, &POOL)?)
                } else {
                    None
                },
            }
        };
        scopes.insert(scope(u)?, sc);
    }
    Ok(Cursor { epoch, scopes })
}

fn item(u: &mut Unstructured<'_>, w: &World) -> ArbResult<Item> {
    let doc_id = common::doc_id(u, &POOL)?;
    let entry = match u.int_in_range(0..=9u8)? {
        0..=3 => {
            let mut changes = Vec::new();
            for _ in 0..u.int_in_range(1..=3u8)? {
                changes.push(Bytes(common::change_bytes(u, &w.samples, doc_id)?));
            }
            Entry::Changes(changes)
        }
        4..=7 => Entry::Snapshot(Bytes(common::snapshot_bytes(u, &w.samples, doc_id)?)),
        // A history the relay replaced: any snapshot of the document stands in for it.
        8 => Entry::Replace(Bytes(common::snapshot_bytes(u, &w.samples, doc_id)?)),
        _ => Entry::Leave,
    };
    Ok(Item { doc_id, entry })
}

/// Hashes worth naming in an upload answer: what the outbox holds now, and the known ones.
fn ack_hash(u: &mut Unstructured<'_>, w: &World, store: &Store) -> ArbResult<[u8; 32]> {
    let mut known: Vec<[u8; 32]> = store
        .outbox_batch(0, 16, usize::MAX)
        .map(|b| b.iter().map(|c| c.hash.0).collect())
        .unwrap_or_default();
    if u.arbitrary()? {
        known.extend_from_slice(&w.hashes);
    }
    common::hash(u, &known)
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

fn role(b: u8) -> Role {
    [Role::Rep, Role::Manager, Role::Director, Role::Admin][usize::from(b & 3)]
}

fn message(u: &mut Unstructured<'_>, w: &World, store: &Store) -> ArbResult<Message> {
    Ok(match u.int_in_range(0..=19u8)? {
        0..=9 => {
            let mut items = Vec::new();
            if u.ratio(1, 32)? {
                // Enough snapshots for the helper threads that prepare them in parallel.
                for _ in 0..u.int_in_range(32..=40u8)? {
                    let s = u.choose(&w.samples)?;
                    items.push(Item {
                        doc_id: s.id,
                        entry: Entry::Snapshot(Bytes(s.snapshot.clone())),
                    });
                }
            }
            for _ in 0..u.int_in_range(0..=5u8)? {
                items.push(item(u, w)?);
            }
            Message::Batch {
                items,
                cursor: cursor(u)?,
                caught_up: u.arbitrary()?,
            }
        }
        10..=13 => {
            let batch = if u.ratio(3, 4)? {
                u.int_in_range(0..=4u64)?
            } else {
                u.arbitrary()?
            };
            let mut accepted = Vec::new();
            for _ in 0..u.int_in_range(0..=3u8)? {
                accepted.push(ack_hash(u, w, store)?);
            }
            let mut rejected = Vec::new();
            for _ in 0..u.int_in_range(0..=3u8)? {
                rejected.push(Rejection {
                    hash: ack_hash(u, w, store)?,
                    reason: common::text(u, 16)?,
                    retry: u.arbitrary()?,
                });
            }
            Message::UploadAck {
                batch,
                accepted,
                rejected,
            }
        }
        14 | 15 => Message::Missing {
            docs: heads(u, w)?,
            done: u.arbitrary()?,
        },
        16 => Message::Welcome {
            version: if u.arbitrary()? {
                PROTOCOL_VERSION
            } else {
                u.arbitrary()?
            },
            epoch: if u.arbitrary()? { EPOCH } else { NEW_EPOCH },
            scopes: vec![scope(u)?],
            role: role(u.arbitrary()?),
        },
        17 => Message::Error {
            code: *u.choose(&[
                ErrorCode::VersionMismatch,
                ErrorCode::Unauthorized,
                ErrorCode::BadFrame,
                ErrorCode::Protocol,
                ErrorCode::Internal,
                ErrorCode::ShuttingDown,
                ErrorCode::Reconnect,
            ])?,
            reason: common::text(u, 16)?,
        },
        18 => {
            // Whatever the frame decoder makes of raw bytes (flags byte, then the body).
            let frame = common::raw(u, 512)?;
            match decode(&frame) {
                Ok(m) => m,
                Err(_) => Message::Batch {
                    items: Vec::new(),
                    cursor: cursor(u)?,
                    caught_up: true,
                },
            }
        }
        _ => match u.int_in_range(0..=5u8)? {
            // The relay's standing orders (protocol 7): a wipe, a lease, at any point.
            5 => Message::Policy {
                policy: fieldsync_core::protocol::DevicePolicy {
                    wipe: *u.choose(&[
                        None,
                        Some(fieldsync_core::protocol::WipeOrder::Now),
                        Some(fieldsync_core::protocol::WipeOrder::AfterUpload),
                    ])?,
                    lease_days: u.arbitrary()?,
                },
                relay_time: u.arbitrary()?,
            },
            0 => Message::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                device_id: DEVICE,
                credential: None,
                agent: "relay?".into(),
            },
            1 => Message::Upload {
                batch: 1,
                changes: vec![UploadChange {
                    doc_id: CUSTOMER,
                    bytes: common::change_bytes(u, &w.samples, CUSTOMER)?,
                }],
            },
            2 => Message::Pull {
                cursor: cursor(u)?,
                max_bytes: u.arbitrary()?,
            },
            3 => Message::Heads {
                docs: heads(u, w)?,
                done: u.arbitrary()?,
            },
            _ => Message::Enrol {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                device_id: DEVICE,
                token: common::text(u, 16)?,
                credential: "c".into(),
                agent: "relay?".into(),
            },
        },
    })
}

/// A local edit made between messages, as the app would.
fn local_edit(u: &mut Unstructured<'_>, store: &mut Store) -> ArbResult<()> {
    let id = common::doc_id(u, &POOL)?;
    let n: u8 = u.arbitrary()?;
    let edit = match n % 6 {
        0 => Edit::Customer(CustomerEdit::Set(CustomerField::Name, format!("Name {n}"))),
        1 => Edit::Customer(CustomerEdit::AddPhone(format!("+86 139 0000 {n:04}"))),
        2 => Edit::Visit(VisitEdit::AddComment(format!("c{n}"), "again".into())),
        3 => Edit::Quote(QuoteEdit::AddLine(
            format!("l{n}"),
            LineInput {
                sku: Some("CAT-320".into()),
                qty: Some(2),
                unit_price_minor: Some(1_000_000),
                ..Default::default()
            },
        )),
        4 => Edit::Quote(QuoteEdit::Submit),
        _ => Edit::Customer(CustomerEdit::Archive),
    };
    let r = catch_unwind(AssertUnwindSafe(|| {
        store.edit(id, |doc| apply_edit(doc, &edit, &common::ctx(Role::Rep)))
    }));
    if let Err(p) = r {
        fail(
            TARGET,
            &format!("a local edit panicked: {}", panic_message(&*p)),
        );
    }
    Ok(())
}

/// One step of the session, as every driver takes it (input, upload, timers).
fn step(
    session: &mut ClientSession,
    store: &mut Store,
    input: ClientInput,
    now: Millis,
) -> Result<ClientStep, SessionError> {
    let name = match &input {
        ClientInput::Message(m) => m.name(),
        ClientInput::Open => "Open",
        ClientInput::Poll => "Poll",
    };
    match catch_unwind(AssertUnwindSafe(|| session.step(store, input, now))) {
        Ok(r) => r,
        Err(p) => fail(
            TARGET,
            &format!(
                "a panic escaped ClientSession::step({name}): {}",
                panic_message(&*p)
            ),
        ),
    }
}

/// Drives sessions until the input is used up.
fn run(u: &mut Unstructured<'_>, selector: u8, store: &mut Store, w: &World) -> ArbResult<()> {
    let role = role(selector);
    let scopes: Vec<String> = match (selector >> 2) & 3 {
        0 => vec!["north".into()],
        1 => vec!["north".into(), "south".into()],
        2 => vec!["*".into()],
        // `north` lost: its documents leave once their local changes are acknowledged.
        _ => vec!["south".into()],
    };
    let epoch = if selector & 0x10 == 0 {
        EPOCH
    } else {
        NEW_EPOCH
    };
    let cfg = ClientConfig {
        agent: "fuzz".into(),
        credential: Some("secret".into()),
        enrol_token: None,
        upload_changes: if selector & 0x20 == 0 { 2_000 } else { 1 },
        upload_bytes: 1 << 20,
        pull_bytes: 64 << 10,
        timers: TimerConfig::default(),
        first: Vec::new(),
    };
    // The sessions' clock, moved on by the input: timers fire too.
    let mut now: Millis = 0;
    for _ in 0..4 {
        let mut session = ClientSession::new(cfg.clone());
        if step(&mut session, store, ClientInput::Open, now).is_err() {
            continue;
        }
        let welcome = Message::Welcome {
            version: PROTOCOL_VERSION,
            epoch,
            scopes: scopes.clone(),
            role,
        };
        if step(&mut session, store, ClientInput::Message(welcome), now).is_err() {
            continue;
        }
        loop {
            if u.is_empty() {
                return Ok(());
            }
            now += Millis::from(u.int_in_range(0..=90_000u32)?);
            match u.int_in_range(0..=15u8)? {
                0 => local_edit(u, store)?,
                1 => {
                    if step(&mut session, store, ClientInput::Poll, now).is_err() {
                        break;
                    }
                }
                _ => {
                    let msg = message(u, w, store)?;
                    if step(&mut session, store, ClientInput::Message(msg), now).is_err() {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The replica is whole and usable.
fn check(store: &mut Store) {
    match store.verify() {
        Ok(problems) if problems.is_empty() => {}
        Ok(problems) => fail(TARGET, &format!("the replica fails verify: {problems:?}")),
        Err(e) => fail(TARGET, &format!("verify failed: {e}")),
    }
    let docs = store
        .all_heads()
        .unwrap_or_else(|e| fail(TARGET, &format!("all_heads: {e}")));
    for (id, _) in docs {
        if let Err(e) = store.automerge(id) {
            fail(TARGET, &format!("stored document {id} does not load: {e}"));
        }
        // A typed read may fail (a document the model cannot read is stored, unprojected).
        let _ = store.document(id);
    }
    if let Err(e) = ClientSession::load_cursor(store) {
        fail(TARGET, &format!("the cursor does not read: {e}"));
    }
    if let Err(e) = store.outbox_batch(0, 10_000, usize::MAX) {
        fail(TARGET, &format!("the outbox does not read: {e}"));
    }
    if let Err(e) = store.quarantine() {
        fail(TARGET, &format!("the quarantine does not read: {e}"));
    }
    if let Err(e) = store.conflicts() {
        fail(TARGET, &format!("the conflicts do not read: {e}"));
    }
    let probe = NewCustomer {
        org: "acme".into(),
        scope: "north".into(),
        name: "Probe".into(),
        ..Default::default()
    };
    if let Err(e) = store.transaction(|tx| {
        tx.create(PROBE, |doc, id| {
            create_customer(doc, id, &probe, &common::ctx(Role::Rep))
        })
    }) {
        fail(
            TARGET,
            &format!("the replica no longer takes a local edit: {e}"),
        );
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
        let path = w.dir.join("replica.db");
        common::copy_db(&w.template, &path);
        let mut store = Store::open_with(&path, store_options(2)).expect("open the replica");
        let mut u = Unstructured::new(rest);
        let _ = run(&mut u, selector, &mut store, w);
        let r = catch_unwind(AssertUnwindSafe(|| check(&mut store)));
        if let Err(p) = r {
            fail(TARGET, &format!("a panic escaped a replica read: {}", panic_message(&*p)));
        }
    }
);

//! What several fuzz targets share: deterministic customer documents (fixed ids, actors and
//! times), their snapshots and changes, ways to spoil them, scratch directories on tmpfs, and
//! the quiet panic hook.
//!
//! Everything here is built from constants, so an input replays the same way in every process
//! (libFuzzer's reproducers depend on it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use automerge::{ActorId, AutoCommit, ChangeHash};
use fieldsync_core::model::{
    ContactInput, CustomerEdit, CustomerField, Edit, EditCtx, LineInput, NewCustomer, NewQuote,
    NewVisit, QuoteEdit, VisitEdit, VisitStatus, apply_edit, create_customer, create_quote,
    create_visit,
};
use fieldsync_core::{DocId, Role};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use uuid::Uuid;

/// The event time of every edit written here.
pub const T0: i64 = 1_700_000_000_000;

/// A fixed document id.
pub const fn doc(n: u128) -> DocId {
    DocId(Uuid::from_u128(
        0x0193_0000_0000_7000_8000_0000_0000_0000 | n,
    ))
}

/// An edit context at the fixed time.
pub fn ctx(role: Role) -> EditCtx {
    EditCtx {
        author: "fuzz".into(),
        role,
        now: T0,
    }
}

/// The actor a replica of `device` writes with: the device id and an 8-byte suffix.
pub fn actor(device: Uuid, suffix: u8) -> ActorId {
    let mut a = device.as_bytes().to_vec();
    a.extend_from_slice(&[suffix; 8]);
    ActorId::from(a)
}

/// One document as a peer would send it: its saved form and its raw changes in causal order.
#[derive(Clone)]
pub struct Sample {
    pub id: DocId,
    pub doc: AutoCommit,
    pub snapshot: Vec<u8>,
    pub changes: Vec<Vec<u8>>,
    pub heads: Vec<ChangeHash>,
}

impl Sample {
    /// The sample of document `id` as `doc` holds it.
    pub fn of(id: DocId, mut doc: AutoCommit) -> Self {
        let changes = doc
            .get_changes(&[])
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        Self {
            id,
            snapshot: doc.save(),
            heads: doc.get_heads(),
            changes,
            doc,
        }
    }
}

fn edit(doc: &mut AutoCommit, e: Edit, role: Role) {
    apply_edit(doc, &e, &ctx(role)).expect("edit");
    doc.commit();
}

/// A customer `id` in `scope` written by `device`, edited a few times (each edit its own
/// change), then a visit and a quote for it (the quote with a line, submitted).
pub fn customer_family(
    device: Uuid,
    suffix: u8,
    scope: &str,
    customer: DocId,
    visit: DocId,
    quote: DocId,
) -> Vec<Sample> {
    let a = actor(device, suffix);
    let mut c = AutoCommit::new().with_actor(a.clone());
    let new = NewCustomer {
        org: "acme".into(),
        scope: scope.into(),
        name: "Baotou Mining".into(),
        phone: Some("+86 139 0000 0001".into()),
        ..Default::default()
    };
    create_customer(&mut c, customer, &new, &ctx(Role::Rep)).expect("customer");
    c.commit();
    edit(
        &mut c,
        Edit::Customer(CustomerEdit::Set(CustomerField::Industry, "mining".into())),
        Role::Rep,
    );
    edit(
        &mut c,
        Edit::Customer(CustomerEdit::AddContact(
            "k1".into(),
            ContactInput {
                name: Some("Wang Lei".into()),
                phone: Some("+86 139 0000 0002".into()),
                ..Default::default()
            },
        )),
        Role::Rep,
    );
    let mut v = AutoCommit::new().with_actor(a.clone());
    let nv = NewVisit {
        customer_id: customer.into(),
        kind: None,
        notes: Some("demo of the 950GC".into()),
        status: VisitStatus::Done,
        at: Some(T0),
        location: None,
    };
    create_visit(&mut v, visit, "acme", scope, &nv, &ctx(Role::Rep)).expect("visit");
    v.commit();
    edit(
        &mut v,
        Edit::Visit(VisitEdit::AddComment("n1".into(), "follow up".into())),
        Role::Rep,
    );
    let mut q = AutoCommit::new().with_actor(a);
    let nq = NewQuote {
        customer_id: customer.into(),
        currency: "CNY".into(),
        quote_no: None,
        valid_until: None,
    };
    create_quote(&mut q, quote, "acme", scope, &nq, &ctx(Role::Rep)).expect("quote");
    q.commit();
    let line = LineInput {
        sku: Some("CAT-950GC".into()),
        qty: Some(1),
        unit_price_minor: Some(250_800_000),
        ..Default::default()
    };
    edit(
        &mut q,
        Edit::Quote(QuoteEdit::AddLine("l1".into(), line)),
        Role::Rep,
    );
    edit(&mut q, Edit::Quote(QuoteEdit::Submit), Role::Rep);
    vec![
        Sample::of(customer, c),
        Sample::of(visit, v),
        Sample::of(quote, q),
    ]
}

/// `base` edited concurrently by another actor: a rename (a conflict with nothing, but a
/// second actor's history) and, for a quote, a manager's approval.
pub fn concurrent_edit(base: &Sample, device: Uuid, suffix: u8, role: Role) -> Sample {
    let mut d = base.doc.clone().fork().with_actor(actor(device, suffix));
    let e = match fieldsync_core::model::read_header(&d).map(|h| h.kind) {
        Ok(fieldsync_core::DocKind::Customer) => Edit::Customer(CustomerEdit::Set(
            CustomerField::Name,
            "Baotou Mining Ltd".into(),
        )),
        Ok(fieldsync_core::DocKind::Visit) => Edit::Visit(VisitEdit::SetSatisfaction(4)),
        _ => Edit::Quote(QuoteEdit::Approve(Some("ok".into()))),
    };
    let _ = apply_edit(&mut d, &e, &ctx(role));
    d.commit();
    Sample::of(base.id, d)
}

/// Spoils bytes with up to eight edits read from `u`: bit flips, truncation, insertion,
/// deletion, or a byte overwritten (length fields and checksums included).
pub fn mutate(u: &mut Unstructured<'_>, bytes: &[u8]) -> ArbResult<Vec<u8>> {
    let mut b = bytes.to_vec();
    let n = u.int_in_range(1..=8u8)?;
    for _ in 0..n {
        let pos: usize = u.arbitrary()?;
        let val: u8 = u.arbitrary()?;
        if b.is_empty() {
            b.push(val);
            continue;
        }
        let p = pos % b.len();
        match u.int_in_range(0..=4u8)? {
            0 => b[p] ^= 1 << (val % 8),
            1 => b.truncate(p),
            2 => b.insert(p, val),
            3 => {
                b.remove(p);
            }
            _ => b[p] = val,
        }
    }
    Ok(b)
}

/// Up to `max` raw bytes from `u`.
pub fn raw(u: &mut Unstructured<'_>, max: usize) -> ArbResult<Vec<u8>> {
    let n = u.int_in_range(0..=max)?;
    Ok(u.bytes(n.min(u.len()))?.to_vec())
}

/// A short string from `u` (lossy UTF-8).
pub fn text(u: &mut Unstructured<'_>, max: usize) -> ArbResult<String> {
    Ok(String::from_utf8_lossy(&raw(u, max)?).into_owned())
}

/// One of `items`, cloned.
pub fn pick<T: Clone>(u: &mut Unstructured<'_>, items: &[T]) -> ArbResult<T> {
    Ok(u.choose(items)?.clone())
}

/// A 32-byte hash: one of `known` or arbitrary.
pub fn hash(u: &mut Unstructured<'_>, known: &[[u8; 32]]) -> ArbResult<[u8; 32]> {
    if !known.is_empty() && u.ratio(3, 4)? {
        pick(u, known)
    } else {
        u.arbitrary()
    }
}

/// A document id: one of `known` (mostly) or arbitrary.
pub fn doc_id(u: &mut Unstructured<'_>, known: &[DocId]) -> ArbResult<DocId> {
    if !known.is_empty() && u.ratio(7, 8)? {
        pick(u, known)
    } else {
        Ok(DocId(Uuid::from_bytes(u.arbitrary()?)))
    }
}

/// Change bytes for document `id`: one of its own changes, any change, a spoiled change or
/// arbitrary bytes.
pub fn change_bytes(u: &mut Unstructured<'_>, samples: &[Sample], id: DocId) -> ArbResult<Vec<u8>> {
    let own: Vec<&Vec<u8>> = samples
        .iter()
        .filter(|s| s.id == id)
        .flat_map(|s| &s.changes)
        .collect();
    let any: Vec<&Vec<u8>> = samples.iter().flat_map(|s| &s.changes).collect();
    Ok(match u.int_in_range(0..=9u8)? {
        0..=4 if !own.is_empty() => (*u.choose(&own)?).clone(),
        0..=5 if !any.is_empty() => (*u.choose(&any)?).clone(),
        6..=8 if !any.is_empty() => {
            let c = (*u.choose(&any)?).clone();
            mutate(u, &c)?
        }
        _ => raw(u, 256)?,
    })
}

/// Snapshot bytes for document `id`: one of its own saved forms, another document's, a spoiled
/// one, a single change (a change chunk loads as a document too) or arbitrary bytes.
pub fn snapshot_bytes(
    u: &mut Unstructured<'_>,
    samples: &[Sample],
    id: DocId,
) -> ArbResult<Vec<u8>> {
    let own: Vec<&Sample> = samples.iter().filter(|s| s.id == id).collect();
    Ok(match u.int_in_range(0..=9u8)? {
        0..=4 if !own.is_empty() => u.choose(&own)?.snapshot.clone(),
        5 if !samples.is_empty() => u.choose(samples)?.snapshot.clone(),
        6..=7 if !samples.is_empty() => {
            let s = u.choose(samples)?.snapshot.clone();
            mutate(u, &s)?
        }
        8 => change_bytes(u, samples, id)?,
        _ => raw(u, 256)?,
    })
}

/// A scratch directory on tmpfs (`/dev/shm` when present) private to this process, named
/// after the target. Directories of earlier processes of the same target that have exited are
/// removed first (libFuzzer ends with `exit`, so nothing runs at the end of a process).
pub fn scratch(target: &str) -> PathBuf {
    let root = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let prefix = format!("fieldsync-fuzz-{target}-");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(&prefix)
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = root.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// With `FIELDSYNC_FUZZ_SEEDS=<dir>` set, writes `seeds` into `dir` as corpus files (named by
/// content, so writing twice adds nothing): a starting corpus for `cargo fuzz run`, made from
/// the same deterministic material the target uses, and never committed.
pub fn write_seeds(target: &str, seeds: impl IntoIterator<Item = Vec<u8>>) {
    let Some(dir) = std::env::var_os("FIELDSYNC_FUZZ_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("seed directory");
    let mut n = 0;
    for s in seeds {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        s.hash(&mut h);
        std::fs::write(dir.join(format!("seed-{:016x}", h.finish())), &s).expect("seed");
        n += 1;
    }
    eprintln!("{target}: wrote {n} seeds into {}", dir.display());
}

/// `n` pseudo-random inputs of 64 bytes to 4 KiB, the same in every process: seeds for the
/// targets whose inputs drive a structured generator (libFuzzer starts with short inputs and
/// lengthens them slowly, so a slow target would otherwise see a few messages per input).
pub fn random_seeds(n: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let len = 64 + (next() % 4033) as usize;
            (0..len).map(|_| next() as u8).collect()
        })
        .collect()
}

/// Removes a SQLite database and the files beside it.
pub fn remove_db(path: &Path) {
    for ext in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(ext);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Copies a closed SQLite database (and its WAL, if one was left) over `to`.
pub fn copy_db(from: &Path, to: &Path) {
    remove_db(to);
    std::fs::copy(from, to).expect("copy database");
    let mut wal = from.as_os_str().to_owned();
    wal.push("-wal");
    let mut to_wal = to.as_os_str().to_owned();
    to_wal.push("-wal");
    if Path::new(&wal).exists() {
        std::fs::copy(&wal, &to_wal).expect("copy WAL");
    }
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Panics inside the code under test may be caught there on purpose (automerge's panics on
/// hostile input become refusals); libFuzzer's hook would abort on them. The targets install
/// this quiet hook and abort themselves, through [`fail`], when a panic escapes. The hook
/// remembers the last panic's message and place (and, with `FIELDSYNC_FUZZ_BACKTRACE` set, a
/// backtrace) for the report.
pub fn quiet_panics() {
    let backtrace = std::env::var_os("FIELDSYNC_FUZZ_BACKTRACE").is_some();
    std::panic::set_hook(Box::new(move |info| {
        let mut s = info.to_string();
        if backtrace {
            s.push_str(&format!("\n{}", std::backtrace::Backtrace::force_capture()));
        }
        LAST_PANIC.with(|p| *p.borrow_mut() = s);
    }));
}

/// Reports a finding (with the last panic seen, if any) and aborts: the panic hook is quiet,
/// so a panic would say nothing.
pub fn fail(target: &str, what: &str) -> ! {
    eprintln!("{target}: {what}");
    LAST_PANIC.with(|p| {
        let p = p.borrow();
        if !p.is_empty() {
            eprintln!("last panic: {p}");
        }
    });
    std::process::abort();
}

/// A caught panic's message, for reports.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

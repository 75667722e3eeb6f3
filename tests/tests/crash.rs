//! Crash test of the local replica (invariants I1 and I10, TESTING.md).
//!
//! A child process (`fieldsync-crash-writer`) performs a seeded stream of local writes on a
//! replica and logs each one to stdout: an attempt line before the write, a commit line with
//! the change hashes after `Store` returned. The test SIGKILLs it after a random short time
//! ("the laptop lid closes mid-write"), reopens the replica and checks:
//!
//! - `Store::verify` finds no problem (`PRAGMA integrity_check`, every document loads, stored
//!   heads equal the document heads), and `docs.pending_changes` counts `doc_changes` rows;
//! - I1: every committed write is in the replica, exactly: the test keeps a model of every
//!   document built from the commit lines (every written value is unique), and each document
//!   read back equals its model, field by field; there are no other documents;
//! - the one write that was in flight when the child died is all there or not there at all
//!   (a multi-document transaction included), and the model follows what happened;
//! - every change hash of every committed write is in the outbox (nothing was acknowledged),
//!   under the right document, its bytes decode to that hash, and it is in the document's
//!   history; the outbox holds nothing else;
//! - every projection table holds exactly the rows derived from the model (customers, phones,
//!   contacts, visits, quotes, quote lines, no conflicts), and each quote's `total_minor` is the
//!   sum of its active lines' totals.
//!
//! The writer is then restarted on the same file, so crashes accumulate. The last round of
//! each seed lets the writer finish normally; then `rebuild_projections` must reproduce the
//! projection tables exactly.
//!
//! A SIGKILL loses no page cache, so this checks the process-crash promise; what survives a
//! power loss additionally depends on `synchronous=FULL` (the default) and the disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fieldsync_core::DocId;
use fieldsync_core::model::{Document, QuoteLine, normalize_phone};
use fieldsync_core::store::{Store, StoreError, decode_change};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const WRITER: &str = env!("CARGO_BIN_EXE_fieldsync-crash-writer");

/// Seeds of the independent runs (one replica each).
const SEEDS: [u64; 3] = [0x5eed_0001, 0x5eed_0002, 0x5eed_0003];
/// Writer runs per replica; all but the last are killed.
const ROUNDS: u64 = 8;
/// Writes of the last, clean round.
const CLEAN_COUNT: u64 = 40;

const CUSTOMER_KEYS: [&str; 8] = [
    "name",
    "short_name",
    "industry",
    "business_type",
    "size",
    "source",
    "stage",
    "email",
];
const PROJECTION_TABLES: [&str; 9] = [
    "customers",
    "customer_phones",
    "contacts",
    "equipment",
    "visits",
    "tasks",
    "quotes",
    "quote_lines",
    "conflicts",
];

// ---------------------------------------------------------------------------------------------
// The oracle log.

#[derive(Clone, Debug)]
enum Effect {
    Cust {
        id: DocId,
        name: String,
        phone: Option<String>,
    },
    Set {
        id: DocId,
        key: String,
        value: String,
    },
    Phone {
        id: DocId,
        raw: String,
    },
    Contact {
        id: DocId,
        cid: String,
        name: String,
        phone: Option<String>,
    },
    Visit {
        id: DocId,
        customer: DocId,
        location: String,
    },
    VSet {
        id: DocId,
        key: String,
        value: String,
    },
    Quote {
        id: DocId,
        customer: DocId,
        quote_no: String,
    },
    Line {
        quote: DocId,
        lid: String,
        qty: i64,
        price: i64,
        disc: i64,
    },
    Unline {
        quote: DocId,
        lid: String,
    },
}

impl Effect {
    fn parse(s: &str) -> Self {
        let t: Vec<&str> = s.split(' ').collect();
        let id = |i: usize| -> DocId {
            t[i].parse()
                .unwrap_or_else(|e| panic!("bad id in `{s}`: {e}"))
        };
        let opt = |i: usize| (t[i] != "-").then(|| t[i].to_string());
        let int = |i: usize| -> i64 {
            t[i].parse()
                .unwrap_or_else(|e| panic!("bad number in `{s}`: {e}"))
        };
        let arity = |n: usize| assert_eq!(t.len(), n, "bad effect `{s}`");
        match t[0] {
            "cust" => {
                arity(4);
                Self::Cust {
                    id: id(1),
                    name: t[2].into(),
                    phone: opt(3),
                }
            }
            "set" => {
                arity(4);
                Self::Set {
                    id: id(1),
                    key: t[2].into(),
                    value: t[3].into(),
                }
            }
            "phone" => {
                arity(3);
                Self::Phone {
                    id: id(1),
                    raw: t[2].into(),
                }
            }
            "contact" => {
                arity(5);
                Self::Contact {
                    id: id(1),
                    cid: t[2].into(),
                    name: t[3].into(),
                    phone: opt(4),
                }
            }
            "visit" => {
                arity(4);
                Self::Visit {
                    id: id(1),
                    customer: id(2),
                    location: t[3].into(),
                }
            }
            "vset" => {
                arity(4);
                Self::VSet {
                    id: id(1),
                    key: t[2].into(),
                    value: t[3].into(),
                }
            }
            "quote" => {
                arity(4);
                Self::Quote {
                    id: id(1),
                    customer: id(2),
                    quote_no: t[3].into(),
                }
            }
            "line" => {
                arity(6);
                Self::Line {
                    quote: id(1),
                    lid: t[2].into(),
                    qty: int(3),
                    price: int(4),
                    disc: int(5),
                }
            }
            "unline" => {
                arity(3);
                Self::Unline {
                    quote: id(1),
                    lid: t[2].into(),
                }
            }
            other => panic!("unknown effect `{other}` in `{s}`"),
        }
    }

    /// The document the effect changes.
    fn doc(&self) -> DocId {
        match self {
            Self::Cust { id, .. }
            | Self::Set { id, .. }
            | Self::Phone { id, .. }
            | Self::Contact { id, .. }
            | Self::Visit { id, .. }
            | Self::VSet { id, .. }
            | Self::Quote { id, .. } => *id,
            Self::Line { quote, .. } | Self::Unline { quote, .. } => *quote,
        }
    }
}

/// One write of the writer: its effects (empty for `compact_all`) and, once the commit line
/// was read, the change hashes of each effect.
#[derive(Debug)]
struct Write {
    n: u64,
    effects: Vec<Effect>,
    committed: Option<Vec<Vec<String>>>,
}

/// Parses the writer's stdout. Every write but the last must be committed.
fn parse_log(out: &str) -> Vec<Write> {
    let mut writes: Vec<Write> = Vec::new();
    // A line cut by the kill (no newline) cannot be a commit line; the write it announces has
    // not started.
    let complete = match out.rfind('\n') {
        Some(i) => &out[..=i],
        None => "",
    };
    for line in complete.lines() {
        let (tag, rest) = (line.get(..2).unwrap_or(line), line.get(2..).unwrap_or(""));
        let (n, body) = rest.split_once(' ').unwrap_or((rest, ""));
        let n: u64 = n
            .parse()
            .unwrap_or_else(|e| panic!("bad line `{line}`: {e}"));
        match tag {
            "A " => {
                if let Some(prev) = writes.last() {
                    assert!(
                        prev.committed.is_some(),
                        "write {} was never committed, yet {n} started",
                        prev.n
                    );
                }
                let effects = if body == "compact" {
                    Vec::new()
                } else {
                    body.split(" | ").map(Effect::parse).collect()
                };
                writes.push(Write {
                    n,
                    effects,
                    committed: None,
                });
            }
            "C " => {
                let w = writes
                    .last_mut()
                    .filter(|w| w.n == n && w.committed.is_none())
                    .unwrap_or_else(|| panic!("commit line without its attempt: `{line}`"));
                let hashes: Vec<Vec<String>> = body
                    .split(' ')
                    .map(|h| {
                        if h == "-" {
                            Vec::new()
                        } else {
                            h.split(',').map(str::to_string).collect()
                        }
                    })
                    .collect();
                if w.effects.is_empty() {
                    assert_eq!(body, "-", "compact_all wrote changes: `{line}`");
                } else {
                    assert_eq!(hashes.len(), w.effects.len(), "bad commit line `{line}`");
                    for (e, h) in w.effects.iter().zip(&hashes) {
                        assert_eq!(h.len(), 1, "{e:?} should write one change: `{line}`");
                    }
                }
                w.committed = Some(if w.effects.is_empty() {
                    Vec::new()
                } else {
                    hashes
                });
            }
            _ => panic!("unexpected writer output `{line}`"),
        }
    }
    writes
}

// ---------------------------------------------------------------------------------------------
// The model: what the replica must hold.

#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelLine {
    qty: i64,
    price: i64,
    disc: i64,
    archived: bool,
}

impl ModelLine {
    fn total(&self) -> i64 {
        QuoteLine {
            qty: self.qty,
            unit_price_minor: self.price,
            discount_bp: self.disc,
            ..Default::default()
        }
        .total_minor()
    }
}

#[derive(Clone, Debug)]
enum ModelDoc {
    Customer {
        fields: BTreeMap<String, String>,
        phones: BTreeSet<String>,
        contacts: BTreeMap<String, (String, Option<String>)>,
    },
    Visit {
        customer: DocId,
        fields: BTreeMap<String, String>,
    },
    Quote {
        customer: DocId,
        quote_no: String,
        lines: BTreeMap<String, ModelLine>,
    },
}

impl ModelDoc {
    fn quote_total(lines: &BTreeMap<String, ModelLine>) -> i64 {
        lines
            .values()
            .filter(|l| !l.archived)
            .map(ModelLine::total)
            .sum()
    }
}

#[derive(Default)]
struct Model {
    docs: BTreeMap<DocId, ModelDoc>,
    /// `(document, hex hash)` of every change the writer reported committed.
    acked: Vec<(DocId, String)>,
    /// Changes of in-flight writes found committed after a kill (hashes never reported).
    unreported_changes: usize,
}

impl Model {
    fn apply(&mut self, e: &Effect) {
        let missing = || panic!("{e:?} names a document the model does not hold");
        match e {
            Effect::Cust { id, name, phone } => {
                let fields = BTreeMap::from([
                    ("name".to_string(), name.clone()),
                    ("stage".to_string(), "potential".to_string()),
                ]);
                let phones = phone.iter().map(|p| normalize_phone(p)).collect();
                let old = self.docs.insert(
                    *id,
                    ModelDoc::Customer {
                        fields,
                        phones,
                        contacts: BTreeMap::new(),
                    },
                );
                assert!(old.is_none(), "{id} created twice");
            }
            Effect::Visit {
                id,
                customer,
                location,
            } => {
                let fields = BTreeMap::from([
                    ("visit_kind".to_string(), "sales_call".to_string()),
                    ("location".to_string(), location.clone()),
                    ("notes".to_string(), String::new()),
                ]);
                let old = self.docs.insert(
                    *id,
                    ModelDoc::Visit {
                        customer: *customer,
                        fields,
                    },
                );
                assert!(old.is_none(), "{id} created twice");
            }
            Effect::Quote {
                id,
                customer,
                quote_no,
            } => {
                let old = self.docs.insert(
                    *id,
                    ModelDoc::Quote {
                        customer: *customer,
                        quote_no: quote_no.clone(),
                        lines: BTreeMap::new(),
                    },
                );
                assert!(old.is_none(), "{id} created twice");
            }
            Effect::Set { id, key, value } => match self.docs.get_mut(id) {
                Some(ModelDoc::Customer { fields, .. }) => {
                    fields.insert(key.clone(), value.clone());
                }
                _ => missing(),
            },
            Effect::Phone { id, raw } => match self.docs.get_mut(id) {
                Some(ModelDoc::Customer { phones, .. }) => {
                    phones.insert(normalize_phone(raw));
                }
                _ => missing(),
            },
            Effect::Contact {
                id,
                cid,
                name,
                phone,
            } => match self.docs.get_mut(id) {
                Some(ModelDoc::Customer { contacts, .. }) => {
                    let old = contacts.insert(cid.clone(), (name.clone(), phone.clone()));
                    assert!(old.is_none(), "contact {cid} added twice");
                }
                _ => missing(),
            },
            Effect::VSet { id, key, value } => match self.docs.get_mut(id) {
                Some(ModelDoc::Visit { fields, .. }) => {
                    fields.insert(key.clone(), value.clone());
                }
                _ => missing(),
            },
            Effect::Line {
                quote,
                lid,
                qty,
                price,
                disc,
            } => match self.docs.get_mut(quote) {
                Some(ModelDoc::Quote { lines, .. }) => {
                    let line = ModelLine {
                        qty: *qty,
                        price: *price,
                        disc: *disc,
                        archived: false,
                    };
                    assert!(
                        lines.insert(lid.clone(), line).is_none(),
                        "line {lid} twice"
                    );
                }
                _ => missing(),
            },
            Effect::Unline { quote, lid } => match self.docs.get_mut(quote) {
                Some(ModelDoc::Quote { lines, .. }) => {
                    let l = lines.get_mut(lid).expect("removed line exists");
                    assert!(!l.archived, "line {lid} removed twice");
                    l.archived = true;
                }
                _ => missing(),
            },
        }
    }
}

fn customer_field(c: &fieldsync_core::model::Customer, key: &str) -> Option<String> {
    match key {
        "name" => Some(c.name.clone()),
        "short_name" => c.short_name.clone(),
        "industry" => c.industry.clone(),
        "business_type" => c.business_type.clone(),
        "size" => c.size.clone(),
        "source" => c.source.clone(),
        "stage" => Some(c.stage.clone()),
        "email" => c.email.clone(),
        other => panic!("unknown customer field {other}"),
    }
}

fn visit_field(v: &fieldsync_core::model::Visit, key: &str) -> Option<String> {
    match key {
        "visit_kind" => Some(v.visit_kind.clone()),
        "location" => v.location.clone(),
        "notes" => Some(v.notes.clone()),
        other => panic!("unknown visit field {other}"),
    }
}

/// Reads a document, `None` if the replica does not hold it.
fn read(store: &mut Store, id: DocId) -> Option<Document> {
    match store.document(id) {
        Ok(d) => Some(d),
        Err(StoreError::NotFound(_)) => None,
        Err(e) => panic!("reading {id}: {e}"),
    }
}

/// Whether the replica shows the effect of `e` (every value written is unique, so a write
/// that did not happen is never mistaken for one that did).
fn present(store: &mut Store, e: &Effect) -> bool {
    match (e, read(store, e.doc())) {
        (_, None) => false,
        (Effect::Cust { .. } | Effect::Visit { .. } | Effect::Quote { .. }, Some(_)) => true,
        (Effect::Set { key, value, .. }, Some(Document::Customer(c))) => {
            customer_field(&c, key).as_deref() == Some(value)
        }
        (Effect::Phone { raw, .. }, Some(Document::Customer(c))) => {
            let n = normalize_phone(raw);
            c.phones.iter().any(|p| p.normalized == n)
        }
        (Effect::Contact { cid, .. }, Some(Document::Customer(c))) => {
            c.contacts.iter().any(|k| &k.id == cid)
        }
        (Effect::VSet { key, value, .. }, Some(Document::Visit(v))) => {
            visit_field(&v, key).as_deref() == Some(value)
        }
        (Effect::Line { lid, .. }, Some(Document::Quote(q))) => {
            q.lines.iter().any(|l| &l.id == lid)
        }
        (Effect::Unline { lid, .. }, Some(Document::Quote(q))) => {
            q.lines.iter().any(|l| &l.id == lid && l.archived)
        }
        (e, Some(d)) => panic!("{e:?} applies to a {}", d.header().kind),
    }
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// Every row of a query, each formatted as `col|col|…` (NULL as `∅`), sorted.
fn rows(store: &Store, sql: &str) -> Vec<String> {
    let mut st = store.reader().prepare(sql).expect(sql);
    let n = st.column_count();
    let mut out: Vec<String> = st
        .query_map([], |r| {
            (0..n)
                .map(|i| {
                    use rusqlite::types::ValueRef;
                    Ok(match r.get_ref(i)? {
                        ValueRef::Null => "∅".to_string(),
                        ValueRef::Integer(v) => v.to_string(),
                        ValueRef::Real(v) => v.to_string(),
                        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                        ValueRef::Blob(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(|v| v.join("|"))
        })
        .expect(sql)
        .collect::<rusqlite::Result<_>>()
        .expect(sql);
    out.sort();
    out
}

fn count(store: &Store, sql: &str) -> i64 {
    store
        .reader()
        .query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn opt(v: Option<&String>) -> String {
    v.cloned().unwrap_or_else(|| "∅".into())
}

/// Storage integrity (I10) and heads.
fn check_storage(store: &mut Store, ctx: &str) {
    let problems = store.verify().expect("verify runs");
    assert!(problems.is_empty(), "{ctx}: verify: {problems:#?}");
    let off = rows(
        store,
        "SELECT hex(id), pending_changes, (SELECT count(*) FROM doc_changes c WHERE c.doc_id = d.id)
           FROM docs d
          WHERE pending_changes != (SELECT count(*) FROM doc_changes c WHERE c.doc_id = d.id)",
    );
    assert!(off.is_empty(), "{ctx}: pending_changes disagrees: {off:?}");
    let orphans = count(
        store,
        "SELECT count(*) FROM doc_changes WHERE doc_id NOT IN (SELECT id FROM docs)",
    );
    assert_eq!(orphans, 0, "{ctx}: changes of no document");
}

/// I1: every document equals its model; no other document exists.
fn check_documents(store: &mut Store, model: &Model, ctx: &str) {
    assert_eq!(
        store.doc_count().unwrap(),
        model.docs.len() as i64,
        "{ctx}: document count"
    );
    for (id, m) in &model.docs {
        let doc = read(store, *id).unwrap_or_else(|| panic!("{ctx}: committed {id} is lost"));
        let h = doc.header();
        assert_eq!(
            (h.id, h.org.as_str(), h.scope.as_str()),
            (*id, "acme", "north")
        );
        assert!(!h.archived, "{ctx}: {id} archived");
        match (m, doc) {
            (
                ModelDoc::Customer {
                    fields,
                    phones,
                    contacts,
                },
                Document::Customer(c),
            ) => {
                for key in CUSTOMER_KEYS {
                    assert_eq!(
                        customer_field(&c, key),
                        fields.get(key).cloned(),
                        "{ctx}: customer {id} field {key}"
                    );
                }
                let got: BTreeSet<String> = c.phones.iter().map(|p| p.normalized.clone()).collect();
                assert_eq!(&got, phones, "{ctx}: customer {id} phones");
                let got: BTreeMap<String, (String, Option<String>)> = c
                    .contacts
                    .iter()
                    .map(|k| (k.id.clone(), (k.name.clone(), k.phone.clone())))
                    .collect();
                assert_eq!(&got, contacts, "{ctx}: customer {id} contacts");
                assert!(c.equipment.is_empty() && c.addresses.is_empty() && c.notes.is_empty());
            }
            (ModelDoc::Visit { customer, fields }, Document::Visit(v)) => {
                assert_eq!(v.customer_id, *customer, "{ctx}: visit {id} customer");
                for (key, value) in fields {
                    assert_eq!(
                        visit_field(&v, key).as_ref(),
                        Some(value),
                        "{ctx}: visit {id} field {key}"
                    );
                }
                assert!(v.tasks.is_empty());
            }
            (
                ModelDoc::Quote {
                    customer,
                    quote_no,
                    lines,
                },
                Document::Quote(q),
            ) => {
                assert_eq!(q.customer_id, *customer, "{ctx}: quote {id} customer");
                assert_eq!(q.quote_no.as_ref(), Some(quote_no), "{ctx}: quote {id} no");
                let got: BTreeMap<String, ModelLine> = q
                    .lines
                    .iter()
                    .map(|l| {
                        let m = ModelLine {
                            qty: l.qty,
                            price: l.unit_price_minor,
                            disc: l.discount_bp,
                            archived: l.archived,
                        };
                        (l.id.clone(), m)
                    })
                    .collect();
                assert_eq!(&got, lines, "{ctx}: quote {id} lines");
                assert_eq!(
                    q.total.amount_minor,
                    ModelDoc::quote_total(lines),
                    "{ctx}: quote {id} total"
                );
            }
            (m, d) => panic!("{ctx}: {id} is a {}, model {m:?}", d.header().kind),
        }
    }
}

/// Every reported change is in the outbox under its document and in the document's history,
/// and the outbox holds nothing else.
fn check_outbox(store: &mut Store, model: &Model, ctx: &str) {
    let batch = store
        .outbox_batch(0, i64::MAX as usize, usize::MAX)
        .expect("outbox");
    assert_eq!(batch.len() as i64, store.outbox_len().unwrap());
    assert_eq!(
        batch.len(),
        model.acked.len() + model.unreported_changes,
        "{ctx}: outbox length (reported {} + in flight {})",
        model.acked.len(),
        model.unreported_changes
    );
    let mut by_hash = HashMap::new();
    for c in &batch {
        let decoded = decode_change(&c.bytes).unwrap_or_else(|e| panic!("{ctx}: outbox: {e}"));
        assert_eq!(
            decoded.hash(),
            c.hash,
            "{ctx}: outbox bytes do not match the hash"
        );
        by_hash.insert(c.hash.to_string(), c);
    }
    let mut per_doc: BTreeMap<DocId, Vec<&String>> = BTreeMap::new();
    for (doc, h) in &model.acked {
        let c = by_hash
            .get(h)
            .unwrap_or_else(|| panic!("{ctx}: committed change {h} of {doc} not in the outbox"));
        assert_eq!(
            c.doc_id, *doc,
            "{ctx}: outbox change {h} under another document"
        );
        per_doc.entry(*doc).or_default().push(h);
    }
    for (doc, hashes) in per_doc {
        let mut am = store.automerge(doc).expect("document loads");
        for h in hashes {
            assert!(
                am.get_change_by_hash(&by_hash[h].hash).is_some(),
                "{ctx}: change {h} missing from the history of {doc}"
            );
        }
    }
}

/// The projection tables hold exactly the rows derived from the model.
fn check_projections(store: &Store, model: &Model, ctx: &str) {
    let mut customers = Vec::new();
    let mut phones = Vec::new();
    let mut contacts = Vec::new();
    let mut visits = Vec::new();
    let mut quotes = Vec::new();
    let mut lines = Vec::new();
    let mut kinds = Vec::new();
    for (id, m) in &model.docs {
        match m {
            ModelDoc::Customer {
                fields,
                phones: ps,
                contacts: ks,
            } => {
                kinds.push(format!("{}|1", id.0.simple()));
                let f: Vec<String> = CUSTOMER_KEYS.iter().map(|k| opt(fields.get(*k))).collect();
                customers.push(format!("{id}|{}", f.join("|")));
                for p in ps {
                    phones.push(format!("{id}|{p}|∅"));
                }
                for (cid, (name, phone)) in ks {
                    contacts.push(format!("{id}|{cid}|{name}|{}|0|1", opt(phone.as_ref())));
                    if let Some(p) = phone {
                        phones.push(format!("{id}|{}|{cid}", normalize_phone(p)));
                    }
                }
            }
            ModelDoc::Visit { customer, fields } => {
                kinds.push(format!("{}|2", id.0.simple()));
                visits.push(format!(
                    "{id}|{customer}|{}|{}|{}|planned",
                    fields["visit_kind"], fields["location"], fields["notes"]
                ));
            }
            ModelDoc::Quote {
                customer,
                quote_no,
                lines: ls,
            } => {
                kinds.push(format!("{}|3", id.0.simple()));
                quotes.push(format!(
                    "{id}|{customer}|{quote_no}|draft|CNY|{}",
                    ModelDoc::quote_total(ls)
                ));
                for (lid, l) in ls {
                    lines.push(format!(
                        "{id}|{lid}|{customer}|SKU-{lid}|{}|{}|{}|{}|CNY|{}",
                        l.qty,
                        l.price,
                        l.disc,
                        l.total(),
                        u8::from(l.archived)
                    ));
                }
            }
        }
    }
    for v in [
        &mut customers,
        &mut phones,
        &mut contacts,
        &mut visits,
        &mut quotes,
        &mut lines,
        &mut kinds,
    ] {
        v.sort();
    }
    let expect = |sql: &str, want: &[String], what: &str| {
        let got = rows(store, sql);
        if got != want {
            let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).collect();
            let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).collect();
            panic!("{ctx}: projection {what} differs: missing {missing:#?}, extra {extra:#?}");
        }
    };
    expect("SELECT lower(hex(id)), kind FROM docs", &kinds, "docs.kind");
    expect(
        "SELECT id, name, short_name, industry, business_type, size, source, stage, email
           FROM customers",
        &customers,
        "customers",
    );
    expect(
        "SELECT customer_id, normalized, contact_id FROM customer_phones",
        &phones,
        "customer_phones",
    );
    expect(
        "SELECT customer_id, id, name, phone, is_purchaser, active FROM contacts",
        &contacts,
        "contacts",
    );
    expect(
        "SELECT id, customer_id, kind, location, notes, status FROM visits",
        &visits,
        "visits",
    );
    expect(
        "SELECT id, customer_id, quote_no, status, currency, total_minor FROM quotes",
        &quotes,
        "quotes",
    );
    expect(
        "SELECT quote_id, line_id, customer_id, sku, qty, unit_price_minor, discount_bp,
                total_minor, currency, archived
           FROM quote_lines",
        &lines,
        "quote_lines",
    );
    for table in ["equipment", "tasks", "conflicts"] {
        assert_eq!(
            count(store, &format!("SELECT count(*) FROM {table}")),
            0,
            "{ctx}: {table}"
        );
    }
    // The totals agree with the lines in SQL too (no model involved).
    let bad = rows(
        store,
        "SELECT q.id, q.total_minor, COALESCE((SELECT sum(l.total_minor) FROM quote_lines l
                  WHERE l.quote_id = q.id AND l.archived = 0), 0) AS s
           FROM quotes q WHERE q.total_minor != s",
    );
    assert!(
        bad.is_empty(),
        "{ctx}: quote totals != sum of lines: {bad:?}"
    );
}

/// A full dump of every projection table.
fn dump_projections(store: &Store) -> Vec<(String, Vec<String>)> {
    PROJECTION_TABLES
        .iter()
        .map(|t| (t.to_string(), rows(store, &format!("SELECT * FROM {t}"))))
        .collect()
}

fn check_all(store: &mut Store, model: &Model, ctx: &str) {
    check_storage(store, ctx);
    check_documents(store, model, ctx);
    check_outbox(store, model, ctx);
    check_projections(store, model, ctx);
}

// ---------------------------------------------------------------------------------------------
// Running the writer.

/// When to SIGKILL the writer.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// After this long.
    After(Duration),
    /// As soon as it announces a multi-document transaction after `armed` (so the kill lands
    /// inside or right after that transaction), or after `armed + cap` at the latest.
    /// `then` is a short extra delay between seeing the announcement and the kill, to vary
    /// where in the transaction (or its commit) the kill lands.
    InTransaction {
        armed: Duration,
        cap: Duration,
        then: Duration,
    },
    /// Never: the writer runs to its count.
    Never,
}

struct Run {
    stdout: String,
    killed: bool,
}

/// Runs the writer and kills it with SIGKILL as `kill` says.
fn run_writer(path: &Path, seed: u64, count: u64, kill: Kill) -> Run {
    let start = Instant::now();
    let mut child = Command::new(WRITER)
        .arg(path)
        .arg(seed.to_string())
        .arg(count.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fieldsync-crash-writer");
    // Read both pipes while the child runs so it never blocks on a full pipe. The stdout
    // reader reports multi-document transaction attempts once armed.
    let (tx_seen, tx_seen_rx) = std::sync::mpsc::channel::<()>();
    let armed_at = match kill {
        Kill::InTransaction { armed, .. } => Some(start + armed),
        _ => None,
    };
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            if stdout
                .read_until(b'\n', &mut line)
                .expect("read child stdout")
                == 0
            {
                return all;
            }
            let multi = line.starts_with(b"A ") && line.windows(3).any(|w| w == b" | ");
            if multi && armed_at.is_some_and(|t| Instant::now() >= t) {
                let _ = tx_seen.send(());
            }
            all.extend_from_slice(&line);
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        stderr.read_to_end(&mut b).expect("read child stderr");
        b
    });
    match kill {
        Kill::After(d) => {
            std::thread::sleep(d);
            child.kill().expect("SIGKILL the writer");
        }
        Kill::InTransaction { armed, cap, then } => {
            let deadline = start + armed + cap;
            if tx_seen_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_ok()
            {
                std::thread::sleep(then);
            }
            child.kill().expect("SIGKILL the writer");
        }
        Kill::Never => {}
    }
    let status = child.wait().expect("wait for the writer");
    let stdout = String::from_utf8(out.join().unwrap()).expect("utf-8 oracle log");
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    let killed = status.signal() == Some(9);
    assert!(
        status.success() || (killed && !matches!(kill, Kill::Never)),
        "writer (seed {seed}) failed with {status}: {stderr}"
    );
    Run { stdout, killed }
}

/// Folds a round's log into the model, resolving the write in flight at the kill against the
/// replica (all of it or none of it must be there). Returns a summary.
fn absorb(store: &mut Store, model: &mut Model, writes: &[Write], ctx: &str) -> String {
    let mut summary = format!("{} writes committed", writes.len());
    for w in writes {
        match &w.committed {
            Some(hashes) => {
                for (e, hs) in w.effects.iter().zip(hashes) {
                    model.apply(e);
                    model.acked.extend(hs.iter().map(|h| (e.doc(), h.clone())));
                }
            }
            None => {
                summary = format!("{} writes committed", writes.len() - 1);
                if w.effects.is_empty() {
                    summary += ", killed in compact_all";
                    continue;
                }
                let seen: Vec<bool> = w.effects.iter().map(|e| present(store, e)).collect();
                assert!(
                    seen.iter().all(|&p| p) || seen.iter().all(|&p| !p),
                    "{ctx}: write {} in flight at the kill is half there: {:?}",
                    w.n,
                    w.effects.iter().zip(&seen).collect::<Vec<_>>()
                );
                if seen[0] {
                    for e in &w.effects {
                        model.apply(e);
                    }
                    model.unreported_changes += w.effects.len();
                    summary += &format!(", in-flight write ({} effects) had committed", seen.len());
                } else {
                    summary += &format!(", in-flight write ({} effects) was lost", seen.len());
                }
            }
        }
    }
    summary
}

#[test]
fn sigkill_mid_write_loses_no_committed_edit() {
    let started = Instant::now();
    let mut total_writes = 0usize;
    for seed in SEEDS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica.db");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model = Model::default();
        for round in 0..ROUNDS {
            let clean = round == ROUNDS - 1;
            // The first round is killed very early, sometimes while the replica is being
            // created; then kills at random times alternate with kills aimed at a
            // multi-document transaction.
            let kill = if clean {
                Kill::Never
            } else if round == 0 {
                Kill::After(Duration::from_millis(rng.random_range(0..20)))
            } else if round % 2 == 1 {
                Kill::After(Duration::from_millis(rng.random_range(50..400)))
            } else {
                Kill::InTransaction {
                    armed: Duration::from_millis(rng.random_range(20..200)),
                    cap: Duration::from_millis(400),
                    then: Duration::from_micros(rng.random_range(0..2_500)),
                }
            };
            let count = if clean { CLEAN_COUNT } else { u64::MAX };
            let child_seed = seed * 100 + round;
            let run = run_writer(&path, child_seed, count, kill);
            let writes = parse_log(&run.stdout);
            total_writes += writes.len();
            let ctx = format!("seed {seed:#x} round {round}");
            if clean {
                assert!(!run.killed);
                assert_eq!(writes.len() as u64, CLEAN_COUNT, "{ctx}: clean run");
                assert!(writes.iter().all(|w| w.committed.is_some()));
            }
            let mut store = Store::open(&path).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
            let summary = absorb(&mut store, &mut model, &writes, &ctx);
            check_all(&mut store, &model, &ctx);
            eprintln!(
                "{ctx}: {kill:?}: {summary}; replica holds {} docs, outbox {}",
                model.docs.len(),
                model.acked.len() + model.unreported_changes
            );
        }
        // The projections are derived data: rebuilding them gives the same tables.
        let mut store = Store::open(&path).unwrap();
        let before = dump_projections(&store);
        let n = store.rebuild_projections().expect("rebuild_projections");
        assert_eq!(n, model.docs.len());
        let after = dump_projections(&store);
        for ((table, b), (_, a)) in before.iter().zip(&after) {
            assert_eq!(
                b, a,
                "seed {seed:#x}: {table} differs after rebuild_projections"
            );
        }
        check_all(&mut store, &model, &format!("seed {seed:#x} after rebuild"));
        assert!(
            model.docs.len() >= 10,
            "seed {seed:#x}: too few writes to mean much"
        );
    }
    eprintln!(
        "crash test: {} replicas, {total_writes} writes, {:?}",
        SEEDS.len(),
        started.elapsed()
    );
}

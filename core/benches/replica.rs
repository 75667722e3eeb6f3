//! Replica store benchmark: prints a table of medians and p90s next to the targets of the
//! client API issue. It never asserts on timings.
//!
//! Run with `cargo bench -p fieldsync-core --bench replica` (add `-- --quick`, or set
//! `FIELDSYNC_BENCH_QUICK=1`, for a smaller run; set `FIELDSYNC_BENCH_DIR` to put the replica
//! files on another file system — the default is the system temp dir).
//!
//! Measured:
//! - (a) one local edit committed durably (`synchronous=FULL`): edit + outbox + projections in
//!   one transaction, including the periodic compaction;
//! - (b) importing N customers (with a contact, equipment and a phone) and their projections
//!   in one transaction;
//! - (c) listing N customers sorted by name via SQL, every row fetched;
//! - (d) opening an N-document replica: `Store::open` plus one query (first page by name);
//! - (e) a phone lookup and a customer timeline query on that replica (with visits and
//!   quotes added).

// Tests mint ids and read the clock freely; the code under test takes them as inputs.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::time::{Duration, Instant};

use fieldsync_core::model::{
    ContactInput, CustomerEdit, CustomerField, Edit, EditCtx, EquipmentInput, LineInput,
    NewCustomer, NewQuote, NewVisit, QuoteEdit, VisitStatus, apply_edit, create_customer,
    create_quote, create_visit, normalize_phone,
};
use fieldsync_core::store::{Durability, Store, StoreOptions};
use fieldsync_core::{DocId, Role};

/// A tiny deterministic PRNG (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SYLLABLES: &[&str] = &[
    "bao", "tou", "or", "dos", "hu", "he", "hao", "te", "chi", "feng", "xi", "lin", "gol", "wu",
    "hai", "man", "zhou", "li", "ji", "ning", "da", "qing", "an", "shan",
];
const SUFFIXES: &[&str] = &["Mining", "Coal", "Cement", "Quarry", "Logistics", "Steel"];

fn company_name(rng: &mut Rng, i: usize) -> String {
    let mut word = String::new();
    for _ in 0..2 + rng.below(2) {
        word.push_str(SYLLABLES[rng.below(SYLLABLES.len())]);
    }
    let mut chars = word.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or('X');
    format!(
        "{first}{} {} {i}",
        chars.as_str(),
        SUFFIXES[rng.below(SUFFIXES.len())]
    )
}

fn phone(i: usize) -> String {
    format!("+86 138 {:04} {:04}", i / 10_000, i % 10_000)
}

fn ctx() -> EditCtx {
    EditCtx::new("bench-rep", Role::Rep)
}

#[derive(Clone, Copy)]
struct Stats {
    n: usize,
    median: Duration,
    p90: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let n = samples.len();
    let at = |q: f64| samples[((n as f64 - 1.0) * q).round() as usize];
    Stats {
        n,
        median: at(0.5),
        p90: at(0.9),
    }
}

/// A round target: `2 ms`, `20 ms`, `2 s`.
fn fmt_target(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("< {} s", d.as_secs_f64())
    } else {
        format!("< {} ms", d.as_millis())
    }
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

struct Row {
    name: String,
    stats: Stats,
    target: Option<Duration>,
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let v = f();
    (t.elapsed(), v)
}

fn open(path: &Path, durability: Durability) -> Store {
    Store::open_with(
        path,
        StoreOptions {
            durability,
            ..Default::default()
        },
    )
    .expect("open the replica")
}

fn new_customer(rng: &mut Rng, i: usize) -> NewCustomer {
    NewCustomer {
        org: "acme".into(),
        scope: ["north", "south", "east", "west"][i % 4].into(),
        name: company_name(rng, i),
        phone: Some(phone(i)),
        industry: Some("mining".into()),
        stage: Some("potential".into()),
        source: None,
        ..Default::default()
    }
}

/// (a) Single durable local edits, round-robin over a few customers.
fn bench_edits(dir: &Path, n: usize, durability: Durability) -> Stats {
    let mut store = open(&dir.join(format!("edits-{durability:?}.db")), durability);
    let mut rng = Rng(7);
    let ids: Vec<DocId> = (0..8)
        .map(|i| {
            let new = new_customer(&mut rng, i);
            store
                .create(|doc, id| create_customer(doc, id, &new, &ctx()))
                .expect("create")
                .id
        })
        .collect();
    let mut samples = Vec::with_capacity(n);
    for i in 0..(n + 50) {
        let id = ids[i % ids.len()];
        let edit = if i % 3 == 0 {
            Edit::Customer(CustomerEdit::AddPhone(format!("+86 139 {i:08}")))
        } else {
            Edit::Customer(CustomerEdit::Set(
                CustomerField::Name,
                format!("Renamed {i}"),
            ))
        };
        let c = ctx();
        let (d, r) = time(|| store.edit(id, |doc| apply_edit(doc, &edit, &c)));
        r.expect("edit");
        if i >= 50 {
            samples.push(d);
        }
    }
    stats(samples)
}

/// The floor under (a): a bare one-row SQLite insert committed with WAL and
/// synchronous=FULL on the same disk. (a)'s target only makes sense relative to it.
fn bench_bare_commits(dir: &Path, n: usize) -> Stats {
    let conn = rusqlite::Connection::open(dir.join("bare.db")).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("full");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        .expect("table");
    let mut samples = Vec::with_capacity(n);
    for i in 0..(n + 50) {
        let (d, r) = time(|| conn.execute("INSERT INTO t (v) VALUES (?1)", [vec![i as u8; 200]]));
        r.expect("insert");
        if i >= 50 {
            samples.push(d);
        }
    }
    stats(samples)
}

/// (b) N customers with their projections in one transaction; `rich` customers also get a
/// contact (with a phone) and a unit of equipment.
fn import_customers(path: &Path, n: usize, rich: bool) -> Duration {
    let mut store = open(path, Durability::Full);
    let mut rng = Rng(42);
    let news: Vec<NewCustomer> = (0..n).map(|i| new_customer(&mut rng, i)).collect();
    let (d, r) = time(|| {
        store.transaction(|tx| {
            let c = ctx();
            for (i, new) in news.iter().enumerate() {
                let mut new = new.clone();
                if rich {
                    // The customer arrives with its contact and equipment, written in the
                    // same batch as the rest of the document.
                    new.contacts.push(ContactInput {
                        name: Some(format!("Contact {i}")),
                        phone: Some(format!("+86 137 {i:08}")),
                        ..Default::default()
                    });
                    new.equipment.push(EquipmentInput {
                        model: Some("HT-320".into()),
                        serial: Some(format!("SN-{i}")),
                        ..Default::default()
                    });
                }
                tx.create(DocId::new(), |doc, id| create_customer(doc, id, &new, &c))?;
            }
            Ok(())
        })
    });
    r.expect("import");
    d
}

const LIST_SQL: &str = "SELECT id, name, stage, scope, owner FROM customers WHERE archived = 0
                        ORDER BY name COLLATE NOCASE, id";

type ListRow = (String, String, String, String, Option<String>);

fn list_all(store: &Store) -> Vec<ListRow> {
    let mut st = store.reader().prepare_cached(LIST_SQL).expect("prepare");
    st.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// Adds visits and quotes to random customers (plus a busy first customer) for (e).
fn add_activity(store: &mut Store, customers: &[(DocId, String)], visits: usize, quotes: usize) {
    let mut rng = Rng(99);
    store
        .transaction(|tx| {
            let c = ctx();
            for i in 0..visits {
                let cust = if i % 50 == 0 {
                    customers[0].0
                } else {
                    customers[rng.below(customers.len())].0
                };
                tx.create(DocId::new(), |doc, id| {
                    create_visit(
                        doc,
                        id,
                        "acme",
                        "north",
                        &NewVisit {
                            customer_id: cust.into(),
                            kind: None,
                            notes: Some("notes".into()),
                            status: VisitStatus::Done,
                            at: Some(1_700_000_000_000 + i as i64 * 60_000),
                            location: None,
                        },
                        &c,
                    )
                })?;
            }
            for i in 0..quotes {
                let cust = if i % 50 == 0 {
                    customers[0].0
                } else {
                    customers[rng.below(customers.len())].0
                };
                tx.create(DocId::new(), |doc, id| {
                    create_quote(
                        doc,
                        id,
                        "acme",
                        "north",
                        &NewQuote {
                            customer_id: cust.into(),
                            currency: "CNY".into(),
                            quote_no: Some(format!("Q-{i}")),
                            valid_until: None,
                        },
                        &c,
                    )?;
                    apply_edit(
                        doc,
                        &Edit::Quote(QuoteEdit::AddLine(
                            "l1".into(),
                            LineInput {
                                sku: Some("HT-320".into()),
                                qty: Some(1),
                                unit_price_minor: Some(185_000_000),
                                ..Default::default()
                            },
                        )),
                        &c,
                    )
                })?;
            }
            Ok(())
        })
        .expect("add activity");
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var_os("FIELDSYNC_BENCH_QUICK").is_some_and(|v| v != "0" && !v.is_empty());
    let (n_edits, n_customers, runs) = if quick {
        (200, 1_000, 5)
    } else {
        (1_000, 10_000, 30)
    };
    let base = std::env::var_os("FIELDSYNC_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    println!(
        "fieldsync replica benchmark{}: {} cores, SQLite {}, files in {}",
        if quick { " (quick)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rusqlite::version(),
        dir.path().display()
    );

    let mut rows: Vec<Row> = Vec::new();
    let ms = Duration::from_millis;

    // (a)
    eprintln!("(a) {n_edits} durable single edits …");
    rows.push(Row {
        name: "(a) one local edit, synchronous=FULL".into(),
        stats: bench_edits(dir.path(), n_edits, Durability::Full),
        target: Some(ms(2)),
    });
    rows.push(Row {
        name: "    same, synchronous=NORMAL (info)".into(),
        stats: bench_edits(dir.path(), n_edits, Durability::Normal),
        target: None,
    });
    rows.push(Row {
        name: "    floor: bare SQLite commit, FULL (info)".into(),
        stats: bench_bare_commits(dir.path(), n_edits),
        target: None,
    });

    // (b): three imports into fresh files; the last file is the replica for (c)-(e).
    let import_runs = 3;
    eprintln!("(b) importing {n_customers} customers ×{import_runs} …");
    let big = dir.path().join("big.db");
    let mut samples = Vec::new();
    for r in 0..import_runs {
        let path = if r + 1 == import_runs {
            big.clone()
        } else {
            dir.path().join(format!("import-{r}.db"))
        };
        samples.push(import_customers(&path, n_customers, true));
    }
    rows.push(Row {
        name: format!("(b) import {n_customers} customers, one tx"),
        stats: stats(samples),
        target: Some(ms(2_000)),
    });
    let mut samples = Vec::new();
    for r in 0..import_runs {
        let path = dir.path().join(format!("import-plain-{r}.db"));
        samples.push(import_customers(&path, n_customers, false));
    }
    rows.push(Row {
        name: "    same without contact/equipment (info)".into(),
        stats: stats(samples),
        target: None,
    });

    // (c)
    eprintln!("(c) listing …");
    let store = open(&big, Durability::Full);
    let mut samples = Vec::new();
    let mut fetched = 0;
    for _ in 0..runs {
        let (d, v) = time(|| list_all(&store));
        fetched = v.len();
        samples.push(d);
    }
    assert_eq!(fetched, n_customers, "every customer is listed");
    rows.push(Row {
        name: format!("(c) list {fetched} customers by name (SQL)"),
        stats: stats(samples),
        target: Some(ms(20)),
    });
    let mut samples = Vec::new();
    for _ in 0..runs {
        let (d, v) = time(|| store.query_json(LIST_SQL, &[]).expect("query_json"));
        assert_eq!(v.len(), n_customers);
        samples.push(d);
    }
    rows.push(Row {
        name: "    same via query_json (info)".into(),
        stats: stats(samples),
        target: None,
    });
    let customers: Vec<(DocId, String)> = list_all(&store)
        .into_iter()
        .map(|r| (r.0.parse().expect("id"), r.1))
        .collect();
    drop(store);

    // (d)
    eprintln!("(d) opening …");
    let open_and_query = |path: &Path| {
        let store = open(path, Durability::Full);
        let n: i64 = store
            .reader()
            .query_row(
                "SELECT count(*) FROM (SELECT id FROM customers WHERE archived = 0
                  ORDER BY name COLLATE NOCASE, id LIMIT 50)",
                [],
                |r| r.get(0),
            )
            .expect("first page");
        assert_eq!(n, 50.min(n_customers as i64));
        store
    };
    let mut samples = Vec::new();
    for _ in 0..runs {
        let (d, store) = time(|| open_and_query(&big));
        samples.push(d);
        drop(store);
    }
    let docs = open(&big, Durability::Full).doc_count().expect("count");
    rows.push(Row {
        name: format!("(d) open a {docs}-doc replica + 1 query"),
        stats: stats(samples),
        target: Some(ms(200)),
    });

    // (e)
    let (n_visits, n_quotes) = (n_customers / 5, n_customers / 10);
    eprintln!("(e) adding {n_visits} visits and {n_quotes} quotes, then lookups …");
    let mut store = open(&big, Durability::Full);
    add_activity(&mut store, &customers, n_visits, n_quotes);
    let mut rng = Rng(5);
    let mut samples = Vec::new();
    for _ in 0..runs * 10 {
        let i = rng.below(n_customers);
        let number = normalize_phone(&phone(i));
        let (d, hits) = time(|| {
            let mut st = store
                .reader()
                .prepare_cached(
                    "SELECT c.id, c.name FROM customers c WHERE c.id IN
                       (SELECT customer_id FROM customer_phones WHERE normalized = ?1)
                     ORDER BY c.name COLLATE NOCASE, c.id",
                )
                .expect("prepare");
            st.query_map([&number], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .expect("query")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows")
        });
        assert_eq!(hits.len(), 1, "phone {number} finds its customer");
        samples.push(d);
    }
    rows.push(Row {
        name: "(e) phone lookup".into(),
        stats: stats(samples),
        target: None,
    });
    let timeline = |id: &DocId| {
        let mut st = store
            .reader()
            .prepare_cached(
                "SELECT t.occurred_at, t.kind, t.id, t.summary FROM timeline t
                  WHERE t.customer_id = ?1
                    AND NOT EXISTS (SELECT 1 FROM visits v WHERE v.id = t.id AND v.archived)
                    AND NOT EXISTS (SELECT 1 FROM quotes q WHERE q.id = t.id AND q.archived)
                  ORDER BY t.occurred_at DESC, t.id DESC",
            )
            .expect("prepare");
        st.query_map([id.to_string()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows")
    };
    let mut samples = Vec::new();
    for _ in 0..runs * 10 {
        let id = customers[rng.below(customers.len())].0;
        let (d, _) = time(|| timeline(&id));
        samples.push(d);
    }
    rows.push(Row {
        name: "(e) timeline of a customer".into(),
        stats: stats(samples),
        target: None,
    });
    let busy = customers[0].0;
    let entries = timeline(&busy).len();
    let mut samples = Vec::new();
    for _ in 0..runs * 10 {
        let (d, _) = time(|| timeline(&busy));
        samples.push(d);
    }
    rows.push(Row {
        name: format!("(e) timeline, busy customer ({entries} entries)"),
        stats: stats(samples),
        target: None,
    });
    let docs = store.doc_count().expect("count");
    drop(store);
    let mut samples = Vec::new();
    for _ in 0..runs {
        let (d, store) = time(|| open_and_query(&big));
        samples.push(d);
        drop(store);
    }
    rows.push(Row {
        name: format!("(d) open a {docs}-doc replica + 1 query"),
        stats: stats(samples),
        target: Some(ms(200)),
    });

    println!();
    println!(
        "| {:<44} | {:>5} | {:>10} | {:>10} | {:>9} | {:<6} |",
        "operation", "n", "median", "p90", "target", "result"
    );
    println!(
        "|{:-<46}|{:-<7}|{:-<12}|{:-<12}|{:-<11}|{:-<8}|",
        "", "", "", "", "", ""
    );
    for r in &rows {
        let (target, verdict) = match r.target {
            Some(t) => (
                fmt_target(t),
                if r.stats.median < t { "met" } else { "MISSED" },
            ),
            None => ("—".to_string(), ""),
        };
        println!(
            "| {:<44} | {:>5} | {:>10} | {:>10} | {:>9} | {:<6} |",
            r.name,
            r.stats.n,
            fmt(r.stats.median),
            fmt(r.stats.p90),
            target,
            verdict
        );
    }
}

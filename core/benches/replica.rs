//! Replica store benchmark: prints a table of medians and p90s next to the product's targets.
//! It never asserts on timings.
//!
//! Every case runs on a plain replica and on an encrypted one (SQLCipher, keyed with a raw
//! 256-bit [`DatabaseKey`] as `Store::open_with` keys it), in the same run: the two variants
//! alternate sample by sample (which one goes first alternates too), so a change of load on the
//! machine weighs on both alike. The table shows both side by side with the ratio of their
//! medians (encrypted / plain); the target for an encrypted replica is within 1.3× for the
//! edit, the import, the listing and the opening.
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
//!   the session before closed its reader first, so its writer folded the WAL into the file;
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
use fieldsync_core::store::cipher::{DatabaseKey, apply_key};
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

/// The two variants every case runs on, in the order of the table's columns.
const PLAIN: usize = 0;
const ENCRYPTED: usize = 1;
const VARIANTS: [usize; 2] = [PLAIN, ENCRYPTED];
const TAGS: [&str; 2] = ["plain", "enc"];

/// The bound on encrypted / plain for the edit, import, listing and opening rows.
const MAX_RATIO: f64 = 1.3;

struct Row {
    name: String,
    /// Per variant: `[plain, encrypted]`.
    stats: [Stats; 2],
    target: Option<Duration>,
    /// Whether this row's ratio is held to the bound (edits, imports, listing, opening).
    ratio_target: bool,
}

/// Runs `f(variant, i)` for `i` in `0..iters` on both variants, alternating which goes first,
/// and keeps the samples from `warmup` on.
fn alternating(
    iters: usize,
    warmup: usize,
    mut f: impl FnMut(usize, usize) -> Duration,
) -> [Vec<Duration>; 2] {
    let mut out = [Vec::with_capacity(iters), Vec::with_capacity(iters)];
    for i in 0..iters + warmup {
        let order = if i % 2 == 0 {
            [PLAIN, ENCRYPTED]
        } else {
            [ENCRYPTED, PLAIN]
        };
        for v in order {
            let d = f(v, i);
            if i >= warmup {
                out[v].push(d);
            }
        }
    }
    out
}

fn both(samples: [Vec<Duration>; 2]) -> [Stats; 2] {
    let [p, e] = samples;
    [stats(p), stats(e)]
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let v = f();
    (t.elapsed(), v)
}

fn open(path: &Path, durability: Durability, key: Option<&DatabaseKey>) -> Store {
    Store::open_with(
        path,
        StoreOptions {
            durability,
            key: key.cloned(),
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

/// (a) Single durable local edits, round-robin over a few customers, on both variants.
fn bench_edits(
    dir: &Path,
    n: usize,
    durability: Durability,
    keys: &[Option<DatabaseKey>; 2],
) -> [Stats; 2] {
    let mut stores = VARIANTS.map(|v| {
        open(
            &dir.join(format!("edits-{durability:?}-{}.db", TAGS[v])),
            durability,
            keys[v].as_ref(),
        )
    });
    let ids = VARIANTS.map(|v| {
        let mut rng = Rng(7);
        (0..8)
            .map(|i| {
                let new = new_customer(&mut rng, i);
                stores[v]
                    .create(|doc, id| create_customer(doc, id, &new, &ctx()))
                    .expect("create")
                    .id
            })
            .collect::<Vec<DocId>>()
    });
    both(alternating(n, 50, |v, i| {
        let id = ids[v][i % ids[v].len()];
        let edit = if i % 3 == 0 {
            Edit::Customer(CustomerEdit::AddPhone(format!("+86 139 {i:08}")))
        } else {
            Edit::Customer(CustomerEdit::Set(
                CustomerField::Name,
                format!("Renamed {i}"),
            ))
        };
        let c = ctx();
        let (d, r) = time(|| stores[v].edit(id, |doc| apply_edit(doc, &edit, &c)));
        r.expect("edit");
        d
    }))
}

/// The floor under (a): a bare one-row SQLite insert committed with WAL and
/// synchronous=FULL on the same disk, plain and keyed as the replica is (`apply_key`). (a)'s
/// target only makes sense relative to it.
fn bench_bare_commits(dir: &Path, n: usize, keys: &[Option<DatabaseKey>; 2]) -> [Stats; 2] {
    let conns = VARIANTS.map(|v| {
        let conn =
            rusqlite::Connection::open(dir.join(format!("bare-{}.db", TAGS[v]))).expect("open");
        if let Some(k) = &keys[v] {
            apply_key(&conn, k).expect("key");
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        conn.pragma_update(None, "synchronous", "FULL")
            .expect("full");
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
            .expect("table");
        conn
    });
    both(alternating(n, 50, |v, i| {
        let (d, r) =
            time(|| conns[v].execute("INSERT INTO t (v) VALUES (?1)", [vec![i as u8; 200]]));
        r.expect("insert");
        d
    }))
}

/// (b) N customers with their projections in one transaction; `rich` customers also get a
/// contact (with a phone) and a unit of equipment.
fn import_customers(path: &Path, n: usize, rich: bool, key: Option<&DatabaseKey>) -> Duration {
    let mut store = open(path, Durability::Full, key);
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

/// A fixed key for the encrypted variant (the bench measures the cipher, not the key).
fn bench_key() -> DatabaseKey {
    let mut rng = Rng(0x5eed);
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes());
    }
    DatabaseKey::from_bytes(bytes)
}

/// SQLCipher's version, crypto provider and the settings a keyed connection gets, for the
/// header line.
fn cipher_info(dir: &Path, key: &DatabaseKey) -> String {
    let conn = rusqlite::Connection::open(dir.join("info.db")).expect("open");
    apply_key(&conn, key).expect("key");
    let q = |pragma: &str| -> String {
        conn.query_row(&format!("PRAGMA {pragma}"), [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
        .map(|v| match v {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Text(t) => t,
            _ => "?".into(),
        })
        .unwrap_or_else(|_| "?".into())
    };
    format!(
        "SQLCipher {} ({} {}), cipher_page_size {}, kdf_iter {} (unused: raw key), \
         cipher_memory_security {}, cache_size {}",
        q("cipher_version"),
        q("cipher_provider"),
        q("cipher_provider_version"),
        q("cipher_page_size"),
        q("kdf_iter"),
        q("cipher_memory_security"),
        q("cache_size"),
    )
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
    let keys: [Option<DatabaseKey>; 2] = [None, Some(bench_key())];
    let key = |v: usize| keys[v].as_ref();
    println!(
        "fieldsync replica benchmark{}: {} cores, SQLite {}, files in {}",
        if quick { " (quick)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rusqlite::version(),
        dir.path().display()
    );
    println!(
        "encrypted variant: {}",
        cipher_info(dir.path(), &bench_key())
    );

    let mut rows: Vec<Row> = Vec::new();
    let ms = Duration::from_millis;

    // (a)
    eprintln!("(a) {n_edits} durable single edits, plain and encrypted …");
    rows.push(Row {
        name: "(a) one local edit, synchronous=FULL".into(),
        stats: bench_edits(dir.path(), n_edits, Durability::Full, &keys),
        target: Some(ms(2)),
        ratio_target: true,
    });
    rows.push(Row {
        name: "    same, synchronous=NORMAL (info)".into(),
        stats: bench_edits(dir.path(), n_edits, Durability::Normal, &keys),
        target: None,
        ratio_target: false,
    });
    rows.push(Row {
        name: "    floor: bare SQLite commit, FULL (info)".into(),
        stats: bench_bare_commits(dir.path(), n_edits, &keys),
        target: None,
        ratio_target: false,
    });

    // (b): three imports per variant into fresh files; the last file of each variant is its
    // replica for (c)-(e).
    let import_runs = 3;
    eprintln!("(b) importing {n_customers} customers ×{import_runs}, plain and encrypted …");
    let big = VARIANTS.map(|v| dir.path().join(format!("big-{}.db", TAGS[v])));
    let samples = alternating(import_runs, 0, |v, r| {
        let path = if r + 1 == import_runs {
            big[v].clone()
        } else {
            dir.path().join(format!("import-{r}-{}.db", TAGS[v]))
        };
        import_customers(&path, n_customers, true, key(v))
    });
    rows.push(Row {
        name: format!("(b) import {n_customers} customers, one tx"),
        stats: both(samples),
        target: Some(ms(2_000)),
        ratio_target: true,
    });
    let samples = alternating(import_runs, 0, |v, r| {
        let path = dir.path().join(format!("import-plain-{r}-{}.db", TAGS[v]));
        import_customers(&path, n_customers, false, key(v))
    });
    rows.push(Row {
        name: "    same without contact/equipment (info)".into(),
        stats: both(samples),
        target: None,
        ratio_target: false,
    });

    // (c)
    eprintln!("(c) listing …");
    let stores = VARIANTS.map(|v| open(&big[v], Durability::Full, key(v)));
    let mut fetched = [0; 2];
    let samples = alternating(runs, 0, |v, _| {
        let (d, listed) = time(|| list_all(&stores[v]));
        fetched[v] = listed.len();
        d
    });
    assert_eq!(fetched, [n_customers; 2], "every customer is listed");
    rows.push(Row {
        name: format!("(c) list {n_customers} customers by name (SQL)"),
        stats: both(samples),
        target: Some(ms(20)),
        ratio_target: true,
    });
    let samples = alternating(runs, 0, |v, _| {
        let (d, listed) = time(|| stores[v].query_json(LIST_SQL, &[]).expect("query_json"));
        assert_eq!(listed.len(), n_customers);
        d
    });
    rows.push(Row {
        name: "    same via query_json (info)".into(),
        stats: both(samples),
        target: None,
        ratio_target: false,
    });
    // Both variants hold the same customers in the same order (names are deterministic and
    // unique); only their ids differ.
    let customers: [Vec<(DocId, String)>; 2] = VARIANTS.map(|v| {
        list_all(&stores[v])
            .into_iter()
            .map(|r| (r.0.parse().expect("id"), r.1))
            .collect()
    });
    drop(stores);

    // (d)
    eprintln!("(d) opening …");
    let open_and_query = |v: usize| {
        let store = open(&big[v], Durability::Full, key(v));
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
    let samples = alternating(runs, 0, |v, _| {
        let (d, store) = time(|| open_and_query(v));
        drop(store);
        d
    });
    let docs = open(&big[PLAIN], Durability::Full, None)
        .doc_count()
        .expect("count");
    rows.push(Row {
        name: format!("(d) open a {docs}-doc replica + 1 query"),
        stats: both(samples),
        target: Some(ms(200)),
        ratio_target: true,
    });

    // (e)
    let (n_visits, n_quotes) = (n_customers / 5, n_customers / 10);
    eprintln!("(e) adding {n_visits} visits and {n_quotes} quotes, then lookups …");
    let stores = VARIANTS.map(|v| {
        let mut store = open(&big[v], Durability::Full, key(v));
        add_activity(&mut store, &customers[v], n_visits, n_quotes);
        store
    });
    let mut rng = Rng(5);
    let picks: Vec<usize> = (0..runs * 10).map(|_| rng.below(n_customers)).collect();
    let samples = alternating(picks.len(), 0, |v, i| {
        let number = normalize_phone(&phone(picks[i]));
        let (d, hits) = time(|| {
            let mut st = stores[v]
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
        d
    });
    rows.push(Row {
        name: "(e) phone lookup".into(),
        stats: both(samples),
        target: None,
        ratio_target: false,
    });
    let timeline = |v: usize, id: &DocId| {
        let mut st = stores[v]
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
    let picks: Vec<usize> = (0..runs * 10).map(|_| rng.below(n_customers)).collect();
    let samples = alternating(picks.len(), 0, |v, i| {
        let id = customers[v][picks[i]].0;
        time(|| timeline(v, &id)).0
    });
    rows.push(Row {
        name: "(e) timeline of a customer".into(),
        stats: both(samples),
        target: None,
        ratio_target: false,
    });
    let entries = VARIANTS.map(|v| timeline(v, &customers[v][0].0).len());
    assert_eq!(entries[PLAIN], entries[ENCRYPTED], "same busy customer");
    let samples = alternating(runs * 10, 0, |v, _| {
        time(|| timeline(v, &customers[v][0].0)).0
    });
    rows.push(Row {
        name: format!("(e) timeline, busy customer ({} entries)", entries[PLAIN]),
        stats: both(samples),
        target: None,
        ratio_target: false,
    });
    let docs = stores[PLAIN].doc_count().expect("count");
    drop(stores);
    let samples = alternating(runs, 0, |v, _| {
        let (d, store) = time(|| open_and_query(v));
        drop(store);
        d
    });
    rows.push(Row {
        name: format!("(d) open a {docs}-doc replica + 1 query"),
        stats: both(samples),
        target: Some(ms(200)),
        ratio_target: true,
    });

    print_table(&rows);
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| {:<44} | {:>5} | {:>10} | {:>10} | {:>10} | {:>10} | {:>9} | {:<6} | {:>9} | {:<18} |",
        "operation",
        "n",
        "plain",
        "plain p90",
        "encrypted",
        "enc. p90",
        "enc/plain",
        "≤ 1.3×",
        "target",
        "result"
    );
    println!(
        "|{:-<46}|{:-<6}:|{:-<11}:|{:-<11}:|{:-<11}:|{:-<11}:|{:-<10}:|{:-<8}|{:-<10}:|{:-<20}|",
        "", "", "", "", "", "", "", "", "", ""
    );
    for r in rows {
        let [plain, enc] = r.stats;
        let ratio = enc.median.as_secs_f64() / plain.median.as_secs_f64();
        let within = if !r.ratio_target {
            ""
        } else if ratio <= MAX_RATIO {
            "met"
        } else {
            "MISSED"
        };
        let (target, verdict) = match r.target {
            Some(t) => {
                let verdict = match (plain.median < t, enc.median < t) {
                    (true, true) => "met",
                    (true, false) => "MISSED (encrypted)",
                    (false, true) => "MISSED (plain)",
                    (false, false) => "MISSED",
                };
                (fmt_target(t), verdict)
            }
            None => ("—".to_string(), ""),
        };
        println!(
            "| {:<44} | {:>5} | {:>10} | {:>10} | {:>10} | {:>10} | {:>9} | {:<6} | {:>9} | {:<18} |",
            r.name,
            plain.n,
            fmt(plain.median),
            fmt(plain.p90),
            fmt(enc.median),
            fmt(enc.p90),
            format!("{ratio:.2}×"),
            within,
            target,
            verdict
        );
    }
}

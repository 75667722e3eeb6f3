//! PostgreSQL only: what one node may take of a shared database server.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use super::contract::scratch;
use super::*;

fn opts(max_connections: usize, wait: Duration) -> RelayStoreOptions {
    RelayStoreOptions {
        db_max_connections: max_connections,
        db_wait: wait,
        ..RelayStoreOptions::default()
    }
}

/// Connections to the scratch database other than `admin`'s own.
fn connections(admin: &mut ::postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0)
}

fn fake_hash(n: usize) -> Hash {
    Sha256::digest(n.to_le_bytes()).into()
}

/// Many clients sending large heads exchanges at once to a node allowed four connections:
/// the node never has more than four open (counted by the server), the exchanges queue for
/// the pool and all of them get their full answer.
#[test]
fn concurrent_heads_exchanges_stay_within_the_connection_budget() {
    const CALLERS: usize = 8;
    const ENTRIES: usize = 6_000;
    let db = scratch();
    let store = PgRelayStore::open(db.url(), opts(4, Duration::from_secs(300))).unwrap();
    let mut rep = device(Role::Rep, &["north"]);
    let known: Vec<DocId> = (0..6)
        .map(|i| rep.customer(&format!("customer {i}"), "north"))
        .collect();
    let out = store
        .append_changes(&rep.info, &rep.outbox(), false)
        .unwrap();
    assert_eq!(stored(&out), known.len());
    // Every fourth entry a known document with 64 heads (one in ten of them all stored),
    // the rest unknown documents.
    let mut ask = Vec::new();
    let mut want = Vec::new();
    for i in 0..ENTRIES {
        if i % 4 == 0 {
            let id = known[i % known.len()];
            let real: Vec<Hash> = rep.store.heads(id).unwrap().iter().map(|h| h.0).collect();
            if i % 40 == 0 {
                ask.push((id, real));
                want.push(Lack::Nothing {
                    scope: "north".into(),
                });
            } else {
                let mut heads = real.clone();
                heads.extend((0..63).map(|j| fake_hash(i * 64 + j)));
                ask.push((id, heads));
                want.push(Lack::Changes {
                    scope: "north".into(),
                    heads: real,
                });
            }
        } else {
            ask.push((DocId::new(), vec![fake_hash(i)]));
            want.push(Lack::Document);
        }
    }
    let ask = Arc::new(ask);
    let mut admin = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let watcher = {
        let (done, most) = (done.clone(), most.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                most.fetch_max(connections(&mut admin), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
            admin
        })
    };
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (store, ask) = (store.clone(), ask.clone());
            std::thread::spawn(move || (0..2).map(|_| store.missing(&ask)).collect::<Vec<_>>())
        })
        .collect();
    for c in callers {
        for answer in c.join().unwrap() {
            assert!(
                answer.unwrap() == want,
                "a heads exchange got a wrong answer"
            );
        }
    }
    done.store(true, Ordering::SeqCst);
    let mut admin = watcher.join().unwrap();
    let most = most.load(Ordering::SeqCst).max(connections(&mut admin));
    assert!(
        (3..=4).contains(&most),
        "the node had {most} connections open"
    );
    let s = store.pool_stats();
    assert_eq!((s.capacity, s.reserved), (2, 1), "{s:?}");
    assert!(s.open <= 2, "{s:?}");
    assert!(s.waits > 0, "the exchanges never queued: {s:?}");
    assert_eq!(s.timeouts, 0, "{s:?}");
}

/// With every connection reads may use held (long downloads), a read waits and is then
/// refused as busy, with a message that tells the client to retry; meanwhile devices
/// still authenticate, redeem enrolment tokens and are re-checked, on the connection
/// kept for that, and the node stays within its budget.
#[test]
fn authentication_succeeds_while_every_read_connection_is_busy() {
    let db = scratch();
    let store = PgRelayStore::open(db.url(), opts(8, Duration::from_millis(300))).unwrap();
    let e = store
        .enrol_device(None, "rep laptop", Role::Rep, &["north".into()])
        .unwrap();
    let token = store
        .create_enrolment(
            "new laptop",
            Role::Rep,
            &["north".into()],
            None,
            Duration::from_secs(60),
        )
        .unwrap();
    let s = store.pool_stats();
    assert_eq!((s.capacity, s.reserved), (6, 1), "{s:?}");
    let (release, held) = mpsc::channel::<()>();
    let held = Arc::new(Mutex::new(held));
    let holders: Vec<_> = (0..s.capacity - s.reserved)
        .map(|_| {
            let (store, held) = (store.clone(), held.clone());
            std::thread::spawn(move || {
                store.bulk_read(|c| {
                    c.batch_execute("SELECT 1")?;
                    let _ = held.lock().unwrap().recv();
                    Ok(())
                })
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.pool_stats().in_use < s.capacity - s.reserved {
        assert!(Instant::now() < deadline, "{:?}", store.pool_stats());
        std::thread::sleep(Duration::from_millis(10));
    }

    let err = store.devices().unwrap_err();
    assert!(err.is_busy(), "{err}");
    let told = StorageError::from(err).to_string();
    assert!(told.contains("busy") && told.contains("again"), "{told}");

    let started = Instant::now();
    let me = store.authenticate(e.device_id, Some(&e.secret)).unwrap();
    assert!(me.is_some(), "the enrolled device was not let in");
    assert!(
        store
            .authenticate(e.device_id, Some("wrong"))
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .redeem(Uuid::new_v4(), "not-a-token", &"c".repeat(64))
            .unwrap(),
        Err("unknown enrolment token".to_string())
    );
    let new = store
        .redeem(Uuid::new_v4(), &token, &"d".repeat(64))
        .unwrap();
    assert!(new.is_ok(), "{new:?}");
    assert!(store.device_grant(e.device_id).unwrap().is_some());
    store.poll_log().unwrap();
    store.poll_devices().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "authentication waited for the readers: {:?}",
        started.elapsed()
    );
    let mut admin = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
    assert!(connections(&mut admin) <= 8);

    drop(release);
    for h in holders {
        h.join().unwrap().unwrap();
    }
    assert_eq!(store.devices().unwrap().len(), 2);
    let s = store.pool_stats();
    assert_eq!((s.in_use, s.timeouts), (0, 1), "{s:?}");
}

/// A statement on a read connection that runs past `statement_timeout` is cancelled by
/// the server and reported as busy (retry later); the connection serves the next read.
#[test]
fn reads_are_bounded_by_the_statement_timeout() {
    let db = scratch();
    let store = PgRelayStore::open(
        db.url(),
        RelayStoreOptions {
            db_statement_timeout: Duration::from_millis(200),
            ..RelayStoreOptions::default()
        },
    )
    .unwrap();
    let started = Instant::now();
    let err = store
        .bulk_read(|c| Ok(c.batch_execute("SELECT pg_sleep(10)")?))
        .unwrap_err();
    assert!(err.is_busy(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(store.high_seq().unwrap(), 0);
    assert_eq!(store.status().unwrap().docs, 0);
}

/// The relay needs no administrator rights: a role that only owns its database (no
/// superuser, no CREATEDB or CREATEROLE) migrates the schema and serves, as README.md
/// says.
#[test]
fn the_relay_runs_as_a_role_that_only_owns_its_database() {
    /// Drops the database and the role, also when the test fails.
    struct Scratch {
        server: String,
        name: String,
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            if let Ok(mut c) = ::postgres::Client::connect(&self.server, ::postgres::NoTls) {
                // One statement each: neither may run in a transaction block.
                let name = &self.name;
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                let _ = c.batch_execute(&format!("DROP ROLE IF EXISTS {name}"));
            }
        }
    }
    let server = postgres::ScratchDatabase::server_url();
    let name = format!("fieldsync_role_{}", Uuid::new_v4().simple());
    let mut admin = ::postgres::Client::connect(&server, ::postgres::NoTls).unwrap();
    let _scratch = Scratch {
        server: server.clone(),
        name: name.clone(),
    };
    admin
        .batch_execute(&format!(
            "CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
        ))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name} OWNER {name}"))
        .unwrap();
    // The server's URL with this role and database.
    let (scheme, rest) = server.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split_once('/').map_or(host, |(h, _)| h);
    let url = format!("{scheme}://{name}@{host}/{name}");

    let store = PgRelayStore::open(&url, RelayStoreOptions::default()).unwrap();
    let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let superuser: bool = c
        .query_one(
            "SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles
              WHERE rolname = current_user",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!superuser, "the test role has administrator rights");
    store.claim_fingerprint(&"ab".repeat(32)).unwrap();
    let mut rep = device(Role::Rep, &["north"]);
    let cust = rep.customer("Zeta", "north");
    let out = store
        .append_changes(&rep.info, &rep.outbox(), false)
        .unwrap();
    assert_eq!(stored(&out), 1);
    let heads: Vec<Hash> = rep.store.heads(cust).unwrap().iter().map(|h| h.0).collect();
    assert_eq!(
        store.missing(&[(cust, heads)]).unwrap(),
        vec![Lack::Nothing {
            scope: "north".into()
        }]
    );
    let e = store
        .enrol_device(None, "rep laptop", Role::Rep, &["north".into()])
        .unwrap();
    assert!(
        store
            .authenticate(e.device_id, Some(&e.secret))
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store
            .audit(&AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .len(),
        1
    );
    // Reopening (a second node, or a restart) finds the schema migrated.
    drop(store);
    let again = PgRelayStore::open(&url, RelayStoreOptions::default()).unwrap();
    assert_eq!(again.high_seq().unwrap(), 1);
}

/// A handle whose client left stops its reads; other handles are not affected.
#[test]
fn a_departed_clients_reads_stop() {
    let db = scratch();
    let store = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
    let cancel = Cancel::default();
    let mine = store.cancelled_by(cancel.clone());
    let ask = vec![(DocId::new(), Vec::new())];
    assert_eq!(mine.missing(&ask).unwrap(), vec![Lack::Document]);
    cancel.cancel();
    assert!(matches!(
        mine.missing(&ask),
        Err(RelayStoreError::Cancelled)
    ));
    assert!(matches!(
        mine.read_log("*", 0, usize::MAX, Lane::All),
        Err(RelayStoreError::Cancelled)
    ));
    assert_eq!(store.missing(&ask).unwrap(), vec![Lack::Document]);
}

/// An unknown enrolment token is refused from a read connection: guessing does not wait
/// for (or hold up) the writer, which serialises every node's uploads.
#[test]
fn an_unknown_token_is_refused_without_the_writer() {
    let db = scratch();
    let store = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
    let (release, held) = mpsc::channel::<()>();
    let (taken, is_taken) = mpsc::channel::<()>();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.holding_writer(|| {
                taken.send(()).unwrap();
                let _ = held.recv();
            })
        })
    };
    is_taken.recv().unwrap();
    let (answer, answered) = mpsc::channel();
    let guesser = {
        let store = store.clone();
        std::thread::spawn(move || {
            let r = store.redeem(Uuid::new_v4(), "0123456789abcdef", &"c".repeat(64));
            answer.send(r.map_err(|e| e.to_string())).unwrap();
        })
    };
    let got = answered.recv_timeout(Duration::from_secs(5));
    drop(release);
    writer.join().unwrap().unwrap();
    guesser.join().unwrap();
    assert_eq!(
        got.expect("the guess waited for the writer"),
        Ok(Err("unknown enrolment token".to_string()))
    );
}

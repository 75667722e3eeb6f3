//! PostgreSQL only: several nodes on one database.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use super::contract::scratch;
use super::*;

/// The no-skip property: writers on separate connections (as separate relay nodes)
/// append concurrently in many small transactions while readers follow the log by
/// cursor; every reader must see every committed sequence number.
#[test]
fn concurrent_appends_never_let_a_cursor_reader_skip() {
    const WRITERS: usize = 4;
    const EDITS: usize = 40;
    let db = scratch();
    let url = db.url().to_string();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let store = PgRelayStore::open(&url, RelayStoreOptions::default()).unwrap();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut cursor = 0;
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    let (page, _) = store.read_log("*", cursor, 4 << 10, Lane::All).unwrap();
                    for e in &page {
                        seen.push(e.seq);
                        cursor = e.seq;
                    }
                    if finished && page.is_empty() {
                        return seen;
                    }
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                let node = PgRelayStore::open(&url, RelayStoreOptions::default()).unwrap();
                let mut a = device(Role::Rep, &["north"]);
                let c = a.customer(&format!("customer {w}"), "north");
                let mut acked = Vec::new();
                let mut sent = 0;
                for i in 0..EDITS {
                    a.edit(c, CustomerEdit::AddPhone(format!("+1 555 {w:02}{i:04}")));
                    let up = a.outbox();
                    let out = node.append_changes(&a.info, &up[sent..], false).unwrap();
                    assert!(refusals(&out).is_empty(), "{out:?}");
                    sent = up.len();
                    acked.push(node.high_seq().unwrap());
                }
                acked
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let store = PgRelayStore::open(&url, RelayStoreOptions::default()).unwrap();
    let high = store.high_seq().unwrap();
    assert_eq!(high as usize, WRITERS * (EDITS + 1));
    let all: Vec<u64> = store
        .read_log("*", 0, usize::MAX, Lane::All)
        .unwrap()
        .0
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(all, (1..=high).collect::<Vec<_>>(), "the log has gaps");
    for r in readers {
        let seen = r.join().unwrap();
        let distinct: BTreeSet<u64> = seen.iter().copied().collect();
        assert_eq!(distinct.len(), seen.len(), "a reader saw an entry twice");
        assert_eq!(seen, all, "a reader skipped or reordered entries");
    }
}

/// When the database drops a node's notification connection (a restart, a cut), the
/// node reconnects and hears other nodes' writes again, including those made while it
/// was disconnected, without anyone polling.
#[test]
fn the_notification_listener_reconnects() {
    let db = scratch();
    let a_node = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
    let b_node = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
    let mut live = a_node.subscribe();
    live.borrow_and_update();
    let mut admin = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
    let killed: bool = admin
        .query_one(
            "SELECT count(*) > 0 FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND query LIKE 'LISTEN%'
                AND pid <> pg_backend_pid()) AS t",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(killed, "no listener connection found");
    let mut rep = device(Role::Rep, &["north"]);
    rep.customer("Zeta", "north");
    let out = b_node
        .append_changes(&rep.info, &rep.outbox(), false)
        .unwrap();
    assert!(refusals(&out).is_empty(), "{out:?}");
    let high = b_node.high_seq().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while *live.borrow() < high {
        assert!(Instant::now() < deadline, "node a never heard of the write");
        std::thread::sleep(Duration::from_millis(50));
    }
    // And a later write arrives by notification, not by the catch-up after reconnecting.
    rep.edit(
        rep.store.all_heads().unwrap()[0].0,
        CustomerEdit::Set(CustomerField::Industry, "mining".into()),
    );
    let out = b_node
        .append_changes(&rep.info, &rep.outbox()[1..], false)
        .unwrap();
    assert!(refusals(&out).is_empty(), "{out:?}");
    let high = b_node.high_seq().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while *live.borrow() < high {
        assert!(Instant::now() < deadline, "node a missed a later write");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With `database_ca` the relay talks to PostgreSQL over TLS only, verifying the server's
/// certificate; the wrong authority, and a URL that requires TLS without one, are
/// refused with a clear error. (The machine's server has TLS on with the certificate it
/// names in `ssl_cert_file`, self-signed for `localhost`, which then serves as the CA.)
#[test]
fn tls_to_the_database_is_verified_against_its_authority() {
    let db = scratch();
    let mut admin = ::postgres::Client::connect(db.url(), ::postgres::NoTls).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let url_requiring = format!("{}?sslmode=require", db.url());
    let err = PgRelayStore::open(&url_requiring, RelayStoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("database_ca"), "{err}");

    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let wrong_ca = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong_ca, stranger.cert.pem()).unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let err = PgRelayStore::open_with_ca(db.url(), Some(&empty), RelayStoreOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");

    let ssl_on: String = admin.query_one("SHOW ssl", &[]).unwrap().get(0);
    assert_eq!(
        ssl_on,
        "on",
        "this test needs the PostgreSQL server at {} to accept TLS",
        postgres::ScratchDatabase::server_url()
    );
    let cert_file: String = admin.query_one("SHOW ssl_cert_file", &[]).unwrap().get(0);
    let server_ca = Path::new(&cert_file);
    let local = db.url().replace("127.0.0.1", "localhost");
    let err = PgRelayStore::open_with_ca(&local, Some(&wrong_ca), RelayStoreOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");

    let store =
        PgRelayStore::open_with_ca(&local, Some(server_ca), RelayStoreOptions::default()).unwrap();
    let mut rep = device(Role::Rep, &["north"]);
    rep.customer("Zeta", "north");
    let out = store
        .append_changes(&rep.info, &rep.outbox(), false)
        .unwrap();
    assert_eq!(stored(&out), 1);
    let encrypted: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE a.datname = current_database() AND s.ssl",
            &[],
        )
        .unwrap()
        .get(0);
    let plain: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE a.datname = current_database() AND NOT s.ssl
                AND a.pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        encrypted >= 2,
        "the writer and the listener use TLS: {encrypted}"
    );
    assert_eq!(plain, 0, "no connection of the store is in the clear");
}

/// A document cached by one node and then written by another is reloaded, not
/// validated against the stale copy.
#[test]
fn a_node_does_not_validate_against_a_stale_cache() {
    let db = scratch();
    let a_node = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
    let b_node = PgRelayStore::open(db.url(), RelayStoreOptions::default()).unwrap();
    let mut rep = device(Role::Rep, &["north"]);
    let c = rep.customer("Zeta", "north");
    let mut sent = 0;
    for (i, node) in [&a_node, &b_node, &a_node, &b_node].iter().enumerate() {
        rep.edit(c, CustomerEdit::AddPhone(format!("+1 555 {i}")));
        let up = rep.outbox();
        let out = node.append_changes(&rep.info, &up[sent..], false).unwrap();
        assert!(refusals(&out).is_empty(), "{out:?}");
        sent = up.len();
    }
    let heads: Vec<Hash> = rep.store.heads(c).unwrap().iter().map(|h| h.0).collect();
    assert_eq!(
        a_node.missing(&[(c, heads)]).unwrap(),
        vec![Lack::Nothing {
            scope: "north".into()
        }]
    );
    // The other node's writes reached this node's subscribers.
    let mut rx = a_node.subscribe();
    let deadline = Instant::now() + Duration::from_secs(5);
    while *rx.borrow_and_update() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(*rx.borrow(), 5);
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let e = PgRelayStore::open(
        "postgres://postgres@127.0.0.1:1/none",
        RelayStoreOptions::default(),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("cannot connect to PostgreSQL at"), "{msg}");
}

//! Checks shared by the fault, crash and bad-input tests: the "nothing lost" invariants of
//! TESTING.md evaluated against real replicas and the relay's SQLite file.

#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use fieldsync_client::sync::SyncConfig;
use fieldsync_client::{Client, DocId};
use fieldsync_relay::{Relay, RelayConfig};
use rusqlite::{Connection, OpenFlags};

/// A relay on 127.0.0.1 with its data in `dir/relay`, enrolling any device that connects.
pub(crate) async fn open_relay(dir: &Path) -> Relay {
    Relay::start(RelayConfig {
        data_dir: dir.join("relay"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        open_enrollment: true,
        ..RelayConfig::default()
    })
    .await
    .expect("relay")
}

/// How a laptop reaches `relay`, with timeouts for a loaded test machine.
pub(crate) fn sync_config(relay: &Relay) -> SyncConfig {
    let mut cfg = SyncConfig::new(
        relay.local_addr().to_string(),
        relay.fingerprint().to_string(),
    );
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.response_timeout = Duration::from_secs(30);
    cfg
}

/// A change hash as stored.
pub(crate) type Hash = [u8; 32];

/// Every document of a replica with its sorted heads.
pub(crate) fn heads(client: &Client) -> BTreeMap<DocId, Vec<Hash>> {
    client
        .with_store(|s| s.all_heads())
        .expect("reading heads")
        .into_iter()
        .map(|(id, h)| {
            let mut h: Vec<Hash> = h.into_iter().map(|x| x.0).collect();
            h.sort();
            (id, h)
        })
        .collect()
}

/// The hashes waiting in a replica's outbox (written locally, not yet acknowledged).
pub(crate) fn outbox_hashes(client: &Client) -> Vec<Hash> {
    client
        .with_store(|s| s.outbox_batch(0, usize::MAX >> 1, usize::MAX))
        .expect("reading the outbox")
        .into_iter()
        .map(|c| c.hash.0)
        .collect()
}

/// A read-only connection to a SQLite file that may be in use by a relay (WAL).
pub(crate) fn open_ro(path: &Path) -> Connection {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    c.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    c
}

/// `PRAGMA integrity_check` of a SQLite file (opened read-write so a hot WAL is recovered,
/// as the owning program would on its next start).
pub(crate) fn integrity(path: &Path) -> String {
    let c = Connection::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    c.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

/// The hashes of `hashes` that the relay's change table lacks.
pub(crate) fn relay_lacks(relay_db: &Path, hashes: &[Hash]) -> Vec<Hash> {
    let c = open_ro(relay_db);
    let mut st = c
        .prepare("SELECT 1 FROM changes WHERE hash = ?1")
        .expect("prepare");
    hashes
        .iter()
        .filter(|h| !st.exists([&h[..]]).expect("query"))
        .copied()
        .collect()
}

/// The relay's documents with their sorted heads.
pub(crate) fn relay_heads(relay_db: &Path) -> BTreeMap<DocId, Vec<Hash>> {
    let c = open_ro(relay_db);
    let mut st = c
        .prepare("SELECT doc_id, heads FROM docs")
        .expect("prepare");
    st.query_map([], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
    })
    .expect("query")
    .map(|r| {
        let (id, h) = r.expect("row");
        let mut h: Vec<Hash> = h
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        h.sort();
        (DocId::from_slice(&id).expect("doc id"), h)
    })
    .collect()
}

/// Convergence (I3, I4): every outbox empty, every replica holds the same documents with the
/// same heads and the same content, the relay holds exactly those heads, and every replica
/// passes `verify` (integrity check, every document loads, projections agree).
/// `Err` says what differs.
pub(crate) fn converged(clients: &[&Client], relay_db: &Path) -> Result<(), String> {
    let first = heads(clients[0]);
    if first.is_empty() {
        return Err("no documents".into());
    }
    for (i, c) in clients.iter().enumerate() {
        let n = c.outbox_len().map_err(|e| e.to_string())?;
        if n != 0 {
            return Err(format!("client {i}: {n} changes still in the outbox"));
        }
        let h = heads(c);
        if h != first {
            let differ = h
                .iter()
                .filter(|(id, hs)| first.get(id) != Some(hs))
                .count()
                + first.keys().filter(|id| !h.contains_key(id)).count();
            return Err(format!(
                "client {i}: {} documents, {differ} differ from client 0's {}",
                h.len(),
                first.len()
            ));
        }
    }
    let relay = relay_heads(relay_db);
    if relay != first {
        return Err(format!(
            "relay holds {} documents, clients {}; equal: {}",
            relay.len(),
            first.len(),
            relay
                .iter()
                .filter(|(id, h)| first.get(id) == Some(h))
                .count()
        ));
    }
    Ok(())
}

/// The slower half of the convergence check, once heads agree: typed content is equal and
/// every replica is healthy.
pub(crate) fn assert_same_content(clients: &[&Client]) {
    let ids: Vec<DocId> = heads(clients[0]).into_keys().collect();
    for (i, c) in clients.iter().enumerate() {
        let problems = c.verify().expect("verify");
        assert!(problems.is_empty(), "client {i}: {problems:?}");
        if i == 0 {
            continue;
        }
        for id in &ids {
            assert_eq!(
                c.document(*id).expect("document"),
                clients[0].document(*id).expect("document"),
                "client {i}, document {id}"
            );
        }
    }
}

/// Polls [`converged`] until it holds or `timeout` passes; panics with the last difference.
pub(crate) async fn wait_converged(clients: &[&Client], relay_db: &Path, timeout: Duration) {
    let start = Instant::now();
    loop {
        let r = converged(clients, relay_db);
        match r {
            Ok(()) => {
                eprintln!("converged after {:?}", start.elapsed());
                return;
            }
            Err(e) if start.elapsed() > timeout => {
                panic!("not converged after {timeout:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

//! In-process relays over real QUIC on 127.0.0.1, driven by raw quinn clients.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use fieldsync_core::model::{EditCtx, NewCustomer, create_customer};
use fieldsync_core::protocol::codec::{check_len, decode, encode};
use fieldsync_core::protocol::messages::MAGIC;
use fieldsync_core::protocol::{Cursor, Entry, ErrorCode, Message, PROTOCOL_VERSION, UploadChange};
use fieldsync_core::store::Store;
use fieldsync_core::{DocId, Role};
use fieldsync_relay::{Relay, RelayConfig, tls};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use uuid::Uuid;

const STEP: Duration = Duration::from_secs(10);

async fn start(dir: &std::path::Path, open: bool) -> Relay {
    let cfg = RelayConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        open_enrollment: open,
        ..Default::default()
    };
    Relay::start(cfg).await.unwrap()
}

struct Client {
    _ep: Endpoint,
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
}

async fn connect(addr: SocketAddr, fingerprint: &str) -> Result<Client, String> {
    let mut ep = Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    ep.set_default_client_config(tls::client_config(fingerprint).map_err(|e| e.to_string())?);
    let conn = tokio::time::timeout(
        STEP,
        ep.connect(addr, tls::SERVER_NAME)
            .map_err(|e| e.to_string())?,
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    Ok(Client {
        _ep: ep,
        conn,
        send,
        recv,
    })
}

impl Client {
    async fn send(&mut self, m: &Message) {
        self.send.write_all(&encode(m).unwrap()).await.unwrap();
    }

    /// The next message, `None` when the relay finished the stream or closed the connection.
    async fn recv(&mut self) -> Option<Message> {
        tokio::time::timeout(STEP, async {
            let mut len = [0u8; 4];
            self.recv.read_exact(&mut len).await.ok()?;
            let n = check_len(u32::from_be_bytes(len)).unwrap();
            let mut body = vec![0u8; n];
            self.recv.read_exact(&mut body).await.ok()?;
            Some(decode(&body).unwrap())
        })
        .await
        .expect("no message from the relay in time")
    }

    async fn hello(&mut self, device_id: Uuid, credential: Option<String>) -> Message {
        self.send(&Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            device_id,
            credential,
            agent: "quic-test".into(),
        })
        .await;
        let answer = self.recv().await.expect("an answer to Hello");
        if matches!(answer, Message::Welcome { .. }) {
            // Protocol 7: the device's standing orders follow the Welcome.
            let policy = self.recv().await;
            assert!(
                matches!(policy, Some(Message::Policy { .. })),
                "expected Policy, got {policy:?}"
            );
        }
        answer
    }
}

fn welcome_epoch(m: &Message) -> Uuid {
    match m {
        Message::Welcome { epoch, .. } => *epoch,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_gets_welcome_and_a_bad_frame_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path(), true).await;
    let addr = relay.local_addr();
    assert!(addr.ip().is_loopback());
    assert_eq!(relay.fingerprint().len(), 64);

    let mut a = connect(addr, relay.fingerprint()).await.unwrap();
    let w = a.hello(Uuid::now_v7(), None).await;
    assert_eq!(welcome_epoch(&w), relay.store().epoch());
    let Message::Welcome { scopes, role, .. } = &w else {
        unreachable!()
    };
    assert_eq!(scopes, &vec!["*".to_string()]);
    assert_eq!(*role, Role::Admin);

    // Garbage: a well-formed length prefix around a body with unknown flags.
    let mut bad = connect(addr, relay.fingerprint()).await.unwrap();
    bad.send.write_all(&[0, 0, 0, 3, 9, 1, 2]).await.unwrap();
    match bad.recv().await {
        Some(Message::Error { code, .. }) => assert_eq!(code, ErrorCode::BadFrame),
        other => panic!("expected a BadFrame error, got {other:?}"),
    }
    assert_eq!(bad.recv().await, None, "the relay closes after the error");
    tokio::time::timeout(STEP, bad.conn.closed()).await.unwrap();

    // An oversized length prefix is refused before anything is buffered.
    let mut huge = connect(addr, relay.fingerprint()).await.unwrap();
    huge.send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert!(matches!(
        huge.recv().await,
        Some(Message::Error {
            code: ErrorCode::BadFrame,
            ..
        })
    ));

    // The first connection and new ones are unaffected.
    a.send(&Message::Heads {
        docs: vec![],
        done: true,
    })
    .await;
    assert_eq!(
        a.recv().await,
        Some(Message::Missing {
            docs: vec![],
            done: true
        })
    );
    let mut c = connect(addr, relay.fingerprint()).await.unwrap();
    welcome_epoch(&c.hello(Uuid::now_v7(), None).await);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_fingerprint_is_refused_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path(), true).await;
    let wrong = "00".repeat(32);
    let err = connect(relay.local_addr(), &wrong).await.err();
    assert!(
        err.is_some(),
        "a relay with another certificate must be refused"
    );
    // The right pin works, and survives a restart on the same data directory.
    let fp = relay.fingerprint().to_string();
    connect(relay.local_addr(), &fp).await.unwrap();
    relay.shutdown().await.unwrap();
    let again = start(dir.path(), true).await;
    assert_eq!(again.fingerprint(), fp);
    again.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_relay_refuses_unknown_devices_and_admits_enrolled_ones() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path(), false).await;
    let mut c = connect(relay.local_addr(), relay.fingerprint())
        .await
        .unwrap();
    match c.hello(Uuid::now_v7(), None).await {
        Message::Error { code, .. } => assert_eq!(code, ErrorCode::Unauthorized),
        other => panic!("{other:?}"),
    }
    let e = relay
        .store()
        .enrol_device(None, "rep", Role::Rep, &["north".into()])
        .unwrap();
    let mut c = connect(relay.local_addr(), relay.fingerprint())
        .await
        .unwrap();
    let w = c.hello(e.device_id, Some(e.secret.clone())).await;
    let Message::Welcome { scopes, role, .. } = w else {
        panic!("{w:?}")
    };
    assert_eq!((scopes, role), (vec!["north".to_string()], Role::Rep));
    relay.shutdown().await.unwrap();
}

fn replica(dir: &std::path::Path, name: &str) -> Store {
    Store::open(dir.join(name)).unwrap()
}

fn add_customer(store: &mut Store, name: &str) -> DocId {
    store
        .create(|d, id| {
            create_customer(
                d,
                id,
                &NewCustomer {
                    org: "acme".into(),
                    scope: "north".into(),
                    name: name.into(),
                    ..Default::default()
                },
                &EditCtx::new("rep", Role::Admin),
            )
        })
        .unwrap()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_acknowledged_and_pushed_live_then_shutdown_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(&dir.path().join("relay"), true).await;
    let (addr, fp) = (relay.local_addr(), relay.fingerprint().to_string());
    let mut a_store = replica(dir.path(), "a.db");
    let b_store = replica(dir.path(), "b.db");

    // b catches up (nothing there yet) and goes live.
    let mut b = connect(addr, &fp).await.unwrap();
    let epoch = welcome_epoch(&b.hello(b_store.device_id(), None).await);
    b.send(&Message::Pull {
        cursor: Cursor {
            epoch,
            scopes: BTreeMap::new(),
        },
        max_bytes: 1 << 20,
    })
    .await;
    // A protocol-4 client first hears what is waiting: nothing.
    match b.recv().await {
        Some(Message::Waiting { documents, bytes }) => assert_eq!((documents, bytes), (0, 0)),
        other => panic!("{other:?}"),
    }
    match b.recv().await {
        Some(Message::Batch {
            items, caught_up, ..
        }) => {
            assert!(items.is_empty());
            assert!(caught_up);
        }
        other => panic!("{other:?}"),
    }

    // a uploads a new customer.
    let id = add_customer(&mut a_store, "Live Co");
    let changes: Vec<UploadChange> = a_store
        .outbox_batch(0, 100, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|c| UploadChange {
            doc_id: c.doc_id,
            bytes: c.bytes,
        })
        .collect();
    let hashes: Vec<[u8; 32]> = a_store
        .outbox_batch(0, 100, 1 << 20)
        .unwrap()
        .iter()
        .map(|c| c.hash.0)
        .collect();
    let mut a = connect(addr, &fp).await.unwrap();
    welcome_epoch(&a.hello(a_store.device_id(), None).await);
    a.send(&Message::Upload {
        batch: 1,
        changes: changes.clone(),
    })
    .await;
    match a.recv().await {
        Some(Message::UploadAck {
            batch,
            accepted,
            rejected,
        }) => {
            assert_eq!(batch, 1);
            assert_eq!(accepted, hashes);
            assert!(rejected.is_empty(), "{rejected:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(relay.store().status().unwrap().high_seq, 1);

    // b gets it pushed without asking.
    match b.recv().await {
        Some(Message::Batch {
            items,
            caught_up,
            cursor,
        }) => {
            assert!(caught_up);
            assert_eq!(items.len(), 1);
            assert_eq!(items[0].doc_id, id);
            let Entry::Changes(c) = &items[0].entry else {
                panic!("{:?}", items[0].entry)
            };
            assert_eq!(c[0].0, changes[0].bytes);
            assert_eq!(cursor.epoch, epoch);
        }
        other => panic!("{other:?}"),
    }

    // Shutdown: connected clients hear why.
    relay.shutdown().await.unwrap();
    for c in [&mut a, &mut b] {
        match c.recv().await {
            Some(Message::Error { code, .. }) => assert_eq!(code, ErrorCode::ShuttingDown),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RelayConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        max_connections: 1,
        open_enrollment: true,
        ..Default::default()
    };
    let relay = Relay::start(cfg).await.unwrap();
    let (addr, fp) = (relay.local_addr(), relay.fingerprint().to_string());
    let mut first = connect(addr, &fp).await.unwrap();
    welcome_epoch(&first.hello(Uuid::now_v7(), None).await);
    assert!(
        connect(addr, &fp).await.is_err(),
        "second connection refused"
    );
    // Once the first is gone, there is room again.
    first.conn.close(0u32.into(), b"done");
    let mut ok = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(c) = connect(addr, &fp).await {
            ok = Some(c);
            break;
        }
    }
    let mut again = ok.expect("a slot frees up after the first client leaves");
    welcome_epoch(&again.hello(Uuid::now_v7(), None).await);
    relay.shutdown().await.unwrap();
}

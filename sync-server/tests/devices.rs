//! Devices over real QUIC on 127.0.0.1, with raw protocol clients (to send what a
//! well-behaved client never would) and the `fieldsync-relay` binary run as a separate process
//! on the running relay's data directory (`device enroll|list|revoke|lease`, `audit`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fieldsync_core::model::{EditCtx, NewCustomer, create_customer};
use fieldsync_core::protocol::codec::{check_len, decode, encode};
use fieldsync_core::protocol::messages::MAGIC;
use fieldsync_core::protocol::{
    Cursor, DevicePolicy, EnrolToken, ErrorCode, Message, PROTOCOL_VERSION, UploadChange,
    WipeOrder, WipeReport,
};
use fieldsync_core::store::Store;
use fieldsync_core::{DocId, Role};
use fieldsync_relay::{Relay, RelayConfig, tls};
use quinn::{Endpoint, RecvStream, SendStream};
use uuid::Uuid;

const STEP: Duration = Duration::from_secs(10);
const BIN: &str = env!("CARGO_BIN_EXE_fieldsync-relay");

async fn start(dir: &Path) -> Relay {
    Relay::start(RelayConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap()
}

struct Raw {
    _ep: Endpoint,
    conn: quinn::Connection,
    send: SendStream,
    recv: RecvStream,
}

impl Raw {
    async fn connect(addr: SocketAddr, pin: &str) -> Self {
        let mut ep = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(tls::client_config(pin).unwrap());
        let conn = tokio::time::timeout(STEP, ep.connect(addr, tls::SERVER_NAME).unwrap())
            .await
            .unwrap()
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        Self {
            _ep: ep,
            conn,
            send,
            recv,
        }
    }

    async fn send(&mut self, m: &Message) {
        self.send.write_all(&encode(m).unwrap()).await.unwrap();
    }

    /// The next message; `None` when the relay ended the stream or the connection.
    async fn recv_within(&mut self, limit: Duration) -> Option<Message> {
        tokio::time::timeout(limit, async {
            let mut len = [0u8; 4];
            self.recv.read_exact(&mut len).await.ok()?;
            let mut body = vec![0u8; check_len(u32::from_be_bytes(len)).unwrap()];
            self.recv.read_exact(&mut body).await.ok()?;
            Some(decode(&body).unwrap())
        })
        .await
        .expect("an answer in time")
    }

    async fn recv(&mut self) -> Option<Message> {
        self.recv_within(STEP).await
    }

    async fn hello(&mut self, device_id: Uuid, credential: Option<String>) -> Message {
        self.send(&Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            device_id,
            credential,
            agent: "devices-test".into(),
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

fn new_customer(store: &mut Store, name: &str, scope: &str) -> DocId {
    store
        .create(|d, id| {
            create_customer(
                d,
                id,
                &NewCustomer {
                    org: "acme".into(),
                    scope: scope.into(),
                    name: name.into(),
                    ..Default::default()
                },
                &EditCtx::new("rep", Role::Rep),
            )
        })
        .unwrap()
        .id
}

fn outbox(store: &Store) -> Vec<UploadChange> {
    store
        .outbox_batch(0, 1000, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|c| UploadChange {
            doc_id: c.doc_id,
            bytes: c.bytes,
        })
        .collect()
}

fn relay_cli(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run fieldsync-relay")
}

fn cli_ok(data: &Path, args: &[&str]) -> String {
    let out = relay_cli(data, args);
    assert!(
        out.status.success(),
        "fieldsync-relay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_actor_is_refused_and_does_not_poison_the_real_author() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(&dir.path().join("relay")).await;
    let mut victim = Store::open(dir.path().join("victim.db")).unwrap();
    let mallory_id = Uuid::now_v7();
    let m = relay
        .store()
        .enrol_device(Some(mallory_id), "mallory", Role::Admin, &["*".into()])
        .unwrap();
    let v = relay
        .store()
        .enrol_device(
            Some(victim.device_id()),
            "victim",
            Role::Rep,
            &["north".into()],
        )
        .unwrap();
    new_customer(&mut victim, "Victim's customer", "north");
    let stolen = outbox(&victim);

    // Even an admin may not upload another device's change as its own.
    let mut raw = Raw::connect(relay.local_addr(), relay.fingerprint()).await;
    assert!(matches!(
        raw.hello(mallory_id, Some(m.secret)).await,
        Message::Welcome { .. }
    ));
    raw.send(&Message::Upload {
        batch: 1,
        changes: stolen.clone(),
    })
    .await;
    match raw.recv().await {
        Some(Message::UploadAck {
            accepted, rejected, ..
        }) => {
            assert!(accepted.is_empty());
            assert_eq!(rejected.len(), 1);
            assert!(!rejected[0].retry, "refused for good");
            assert!(
                rejected[0]
                    .reason
                    .contains("only that device may upload it"),
                "{}",
                rejected[0].reason
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(relay.store().status().unwrap().changes, 0);

    // The real author's upload of the same change goes through.
    let mut raw = Raw::connect(relay.local_addr(), relay.fingerprint()).await;
    assert!(matches!(
        raw.hello(victim.device_id(), Some(v.secret)).await,
        Message::Welcome { .. }
    ));
    raw.send(&Message::Upload {
        batch: 1,
        changes: stolen,
    })
    .await;
    match raw.recv().await {
        Some(Message::UploadAck {
            accepted, rejected, ..
        }) => assert_eq!((accepted.len(), rejected.len()), (1, 0)),
        other => panic!("{other:?}"),
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_protocol_version_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let mut raw = Raw::connect(relay.local_addr(), relay.fingerprint()).await;
    raw.send(&Message::Hello {
        magic: MAGIC,
        version: 1,
        device_id: Uuid::now_v7(),
        credential: None,
        agent: "old".into(),
    })
    .await;
    match raw.recv().await {
        Some(Message::Error { code, reason }) => {
            assert_eq!(code, ErrorCode::VersionMismatch);
            assert!(reason.contains(&PROTOCOL_VERSION.to_string()), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_enrols_lists_audits_and_revokes_while_the_relay_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let relay = start(&data).await;
    let addr = relay.local_addr();

    // A wildcard listen address is no address for a token: the CLI asks for one.
    let out = relay_cli(
        &data,
        &[
            "device", "enroll", "--name", "x", "--role", "rep", "--scope", "north",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--relay-addr"));

    // Another process enrols a device on the running relay's data directory.
    let printed = cli_ok(
        &data,
        &[
            "device",
            "enroll",
            "--name",
            "Li Wei laptop",
            "--role",
            "rep",
            "--scope",
            "north-mines",
            "--scope",
            "north-coal",
            "--relay-addr",
            &addr.to_string(),
        ],
    );
    let token: EnrolToken = printed
        .lines()
        .last()
        .expect("a last line")
        .parse()
        .expect("the last line is the token");
    assert_eq!(token.relay, addr.to_string());
    assert_eq!(token.pin, relay.fingerprint());
    let listed: serde_json::Value =
        serde_json::from_str(&cli_ok(&data, &["device", "list", "--json"])).unwrap();
    assert_eq!(listed["enrolments"][0]["name"], "Li Wei laptop");
    assert!(listed["devices"].as_array().unwrap().is_empty());

    // The device redeems it with its own credential, then syncs.
    let mut store = Store::open(dir.path().join("laptop.db")).unwrap();
    let credential = "ab".repeat(32);
    let mut raw = Raw::connect(addr, &token.pin).await;
    raw.send(&Message::Enrol {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        device_id: store.device_id(),
        token: token.secret.clone(),
        credential: credential.clone(),
        agent: "devices-test".into(),
    })
    .await;
    let Some(Message::Welcome {
        scopes,
        role,
        epoch,
        ..
    }) = raw.recv().await
    else {
        panic!("enrolment refused")
    };
    assert!(matches!(raw.recv().await, Some(Message::Policy { .. })));
    assert_eq!(role, Role::Rep);
    assert_eq!(scopes, vec!["north-mines", "north-coal"]);
    let id = new_customer(&mut store, "Baotou Mining", "north-mines");
    raw.send(&Message::Upload {
        batch: 1,
        changes: outbox(&store),
    })
    .await;
    assert!(matches!(
        raw.recv().await,
        Some(Message::UploadAck { rejected, .. }) if rejected.is_empty()
    ));
    raw.send(&Message::Pull {
        cursor: Cursor {
            epoch,
            scopes: Default::default(),
        },
        max_bytes: 1 << 20,
    })
    .await;
    // What is waiting counts the device's own customer (it is not sent back).
    assert!(matches!(
        raw.recv().await,
        Some(Message::Waiting { documents: 1, .. })
    ));
    assert!(matches!(
        raw.recv().await,
        Some(Message::Batch {
            caught_up: true,
            ..
        })
    ));

    let listed: serde_json::Value =
        serde_json::from_str(&cli_ok(&data, &["device", "list", "--json"])).unwrap();
    let dev = &listed["devices"][0];
    assert_eq!(dev["device_id"], store.device_id().to_string());
    assert_eq!(dev["name"], "Li Wei laptop");
    assert!(dev["last_seen"].as_i64().is_some(), "last sync: {dev}");
    assert!(listed["enrolments"].as_array().unwrap().is_empty(), "used");
    let text = cli_ok(&data, &["device", "list"]);
    assert!(
        text.contains("Li Wei laptop") && text.contains("enrolled"),
        "{text}"
    );

    // The audit trail names the device, the document and the time.
    let audit: serde_json::Value = serde_json::from_str(&cli_ok(
        &data,
        &["audit", "--device", "Li Wei laptop", "--json"],
    ))
    .unwrap();
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
    assert_eq!(audit[0]["doc_id"], id.to_string());
    assert_eq!(audit[0]["device_name"], "Li Wei laptop");
    assert_eq!(audit[0]["scope"], "north-mines");
    assert!(audit[0]["at"].as_i64().is_some());
    let by_doc: serde_json::Value = serde_json::from_str(&cli_ok(
        &data,
        &["audit", "--doc", &id.to_string(), "--json"],
    ))
    .unwrap();
    assert_eq!(by_doc, audit);
    let none: serde_json::Value =
        serde_json::from_str(&cli_ok(&data, &["audit", "--device", "nobody", "--json"])).unwrap();
    assert!(none.as_array().unwrap().is_empty());

    // The token is spent.
    let mut again = Raw::connect(addr, &token.pin).await;
    again
        .send(&Message::Enrol {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            device_id: Uuid::now_v7(),
            token: token.secret.clone(),
            credential: "cd".repeat(32),
            agent: "thief".into(),
        })
        .await;
    assert!(matches!(
        again.recv().await,
        Some(Message::Error { code: ErrorCode::Unauthorized, reason }) if reason.contains("already used")
    ));

    // IT widens the grant from another process: the open connection is told to reconnect
    // at once, and the same credential then gets the new scopes.
    let out = cli_ok(
        &data,
        &[
            "device",
            "grant",
            "Li Wei laptop",
            "--scope",
            "north-mines",
            "--scope",
            "north-coal",
            "--scope",
            "south-ports",
        ],
    );
    assert!(out.contains(&store.device_id().to_string()), "{out}");
    match raw.recv_within(Duration::from_secs(5)).await {
        Some(Message::Error { code, .. }) => assert_eq!(code, ErrorCode::Reconnect),
        other => panic!("expected Reconnect, got {other:?}"),
    }
    let mut raw = Raw::connect(addr, &token.pin).await;
    match raw.hello(store.device_id(), Some(credential.clone())).await {
        Message::Welcome { scopes, role, .. } => {
            assert_eq!(role, Role::Rep);
            assert_eq!(scopes, vec!["north-mines", "north-coal", "south-ports"]);
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    let out = relay_cli(&data, &["device", "grant", "nobody", "--role", "admin"]);
    assert!(!out.status.success(), "no such device");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no active device"),
        "{out:?}"
    );

    // Revoked by name from another process: the open connection is closed within about a
    // second (the relay polls the device table), with a reason.
    let started = Instant::now();
    let out = cli_ok(&data, &["device", "revoke", "Li Wei laptop"]);
    assert!(out.contains(&store.device_id().to_string()), "{out}");
    match raw.recv_within(Duration::from_secs(5)).await {
        Some(Message::Error { code, reason }) => {
            assert_eq!(code, ErrorCode::Unauthorized);
            assert!(reason.contains("revoked"), "{reason}");
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(raw.recv().await, None, "and the stream ends");
    tokio::time::timeout(STEP, raw.conn.closed()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    // Its next connection is refused.
    let mut next = Raw::connect(addr, &token.pin).await;
    assert!(matches!(
        next.hello(store.device_id(), Some(credential)).await,
        Message::Error {
            code: ErrorCode::Unauthorized,
            ..
        }
    ));
    let out = relay_cli(&data, &["device", "revoke", "Li Wei laptop"]);
    assert!(!out.status.success(), "nothing left to revoke");
    let text = cli_ok(&data, &["device", "list"]);
    assert!(text.contains("revoked"), "{text}");
    relay.shutdown().await.unwrap();
}

/// Redeems `token` for a new laptop over a raw connection; returns its replica, credential
/// and the policy the relay sent after the Welcome.
async fn enrolled_laptop(
    dir: &Path,
    name: &str,
    addr: SocketAddr,
    token: &EnrolToken,
) -> (Store, String, Raw, DevicePolicy) {
    let store = Store::open(dir.join(format!("{name}.db"))).unwrap();
    let credential = "ab".repeat(32);
    let mut raw = Raw::connect(addr, &token.pin).await;
    raw.send(&Message::Enrol {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        device_id: store.device_id(),
        token: token.secret.clone(),
        credential: credential.clone(),
        agent: "devices-test".into(),
    })
    .await;
    assert!(matches!(raw.recv().await, Some(Message::Welcome { .. })));
    let Some(Message::Policy { policy, .. }) = raw.recv().await else {
        panic!("no policy after the Welcome")
    };
    (store, credential, raw, policy)
}

/// A Hello answered by a Welcome and the device's policy.
async fn policy_at_hello(raw: &mut Raw, device_id: Uuid, credential: &str) -> DevicePolicy {
    raw.send(&Message::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        device_id,
        credential: Some(credential.to_string()),
        agent: "devices-test".into(),
    })
    .await;
    assert!(matches!(raw.recv().await, Some(Message::Welcome { .. })));
    match raw.recv().await {
        Some(Message::Policy { policy, .. }) => policy,
        other => panic!("expected Policy, got {other:?}"),
    }
}

fn token_of(printed: &str) -> EnrolToken {
    printed.lines().last().unwrap().parse().unwrap()
}

/// IT sets a laptop's lease and orders it wiped from another process: the laptop hears both
/// at its next connection; wiped after upload, its last changes are still stored; wiped now,
/// nothing more is; each wipe it reports revokes it for good, and `audit --devices` shows the
/// orders and reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_orders_wipes_and_leases_that_laptops_hear_at_their_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let relay = Relay::start(RelayConfig {
        data_dir: data.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        offline_lease_days_by_role: [("rep".to_string(), 14)].into_iter().collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    let addr = relay.local_addr().to_string();
    let enrol = |name: &str| {
        token_of(&cli_ok(
            &data,
            &[
                "device",
                "enroll",
                "--name",
                name,
                "--role",
                "rep",
                "--scope",
                "north",
                "--relay-addr",
                &addr,
            ],
        ))
    };
    let token = enrol("Li Wei laptop");
    let (mut store, credential, mut raw, policy) =
        enrolled_laptop(dir.path(), "li", relay.local_addr(), &token).await;
    assert_eq!(
        policy,
        DevicePolicy {
            wipe: None,
            lease_days: Some(14)
        },
        "the rep role's lease"
    );
    let id = store.device_id();
    new_customer(&mut store, "Baotou Mining", "north");
    raw.send(&Message::Upload {
        batch: 1,
        changes: outbox(&store),
    })
    .await;
    assert!(
        matches!(raw.recv().await, Some(Message::UploadAck { rejected, .. }) if rejected.is_empty())
    );
    drop(raw);

    let out = cli_ok(&data, &["device", "lease", "Li Wei laptop", "--days", "9"]);
    assert!(out.contains("9 d (own)"), "{out}");
    let out = cli_ok(
        &data,
        &["device", "revoke", "Li Wei laptop", "--wipe-after-upload"],
    );
    assert!(
        out.contains(&id.to_string()) && out.contains("after upload"),
        "{out}"
    );
    let text = cli_ok(&data, &["device", "list"]);
    assert!(text.contains("ordered after upload"), "{text}");

    // The laptop hears both, uploads what it still holds, and reports the wipe.
    let mut raw = Raw::connect(relay.local_addr(), &token.pin).await;
    assert_eq!(
        policy_at_hello(&mut raw, id, &credential).await,
        DevicePolicy {
            wipe: Some(WipeOrder::AfterUpload),
            lease_days: Some(9)
        }
    );
    new_customer(&mut store, "Last Co", "north");
    raw.send(&Message::Upload {
        batch: 2,
        changes: outbox(&store),
    })
    .await;
    match raw.recv().await {
        Some(Message::UploadAck {
            accepted, rejected, ..
        }) => assert_eq!((accepted.len(), rejected.len()), (2, 0)),
        other => panic!("expected UploadAck, got {other:?}"),
    }
    let report = WipeReport {
        keys_destroyed: true,
        files_removed: 5,
        unsent_changes: 0,
        unsent_attachments: 0,
    };
    raw.send(&Message::Wiped {
        report: report.clone(),
    })
    .await;
    assert_eq!(raw.recv().await, None, "the relay closes after the report");
    assert_eq!(relay.store().status().unwrap().changes, 2);

    let listed: serde_json::Value =
        serde_json::from_str(&cli_ok(&data, &["device", "list", "--json"])).unwrap();
    let dev = &listed["devices"][0];
    assert_eq!(dev["wipe"], "after_upload", "{dev}");
    assert!(dev["wiped_at"].as_i64().is_some(), "{dev}");
    assert!(dev["revoked_at"].as_i64().is_some(), "{dev}");
    assert_eq!(dev["lease_days"], 9);
    let text = cli_ok(&data, &["device", "list"]);
    assert!(text.contains("wiped 20"), "{text}");
    let mut again = Raw::connect(relay.local_addr(), &token.pin).await;
    assert!(matches!(
        again.hello(id, Some(credential.clone())).await,
        Message::Error {
            code: ErrorCode::Unauthorized,
            ..
        }
    ));
    let out = relay_cli(&data, &["device", "revoke", "Li Wei laptop", "--wipe"]);
    assert!(!out.status.success(), "wiped already: {out:?}");

    // A wipe now: the open connection is told to reconnect, and the next one hears the
    // order and nothing else.
    let token = enrol("Ann laptop");
    let (mut ann, ann_credential, mut raw, _) =
        enrolled_laptop(dir.path(), "ann", relay.local_addr(), &token).await;
    let out = cli_ok(&data, &["device", "revoke", "Ann laptop", "--wipe"]);
    assert!(out.contains("ordered it wiped"), "{out}");
    assert!(matches!(
        raw.recv_within(Duration::from_secs(5)).await,
        Some(Message::Error {
            code: ErrorCode::Reconnect,
            ..
        })
    ));
    let mut raw = Raw::connect(relay.local_addr(), &token.pin).await;
    assert_eq!(
        policy_at_hello(&mut raw, ann.device_id(), &ann_credential)
            .await
            .wipe,
        Some(WipeOrder::Now)
    );
    new_customer(&mut ann, "Too Late Co", "north");
    raw.send(&Message::Upload {
        batch: 1,
        changes: outbox(&ann),
    })
    .await;
    raw.send(&Message::Wiped {
        report: WipeReport {
            unsent_changes: 1,
            ..WipeReport::default()
        },
    })
    .await;
    assert_eq!(raw.recv().await, None, "no answer to the upload; closed");
    assert_eq!(relay.store().status().unwrap().changes, 2, "nothing stored");

    // The trail of device events, oldest first, with the laptops' reports.
    let events: serde_json::Value =
        serde_json::from_str(&cli_ok(&data, &["audit", "--devices", "--json"])).unwrap();
    let got: Vec<(String, String)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["device_name"].as_str().unwrap().to_string(),
                e["event"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("Li Wei laptop", "lease_set"),
        ("Li Wei laptop", "wipe_ordered"),
        ("Li Wei laptop", "wiped"),
        ("Ann laptop", "wipe_ordered"),
        ("Ann laptop", "wiped"),
    ];
    assert_eq!(
        got,
        want.map(|(a, b)| (a.to_string(), b.to_string())),
        "{events}"
    );
    assert_eq!(events[2]["detail"], serde_json::to_value(&report).unwrap());
    assert_eq!(events[1]["detail"]["mode"], "after_upload");
    assert_eq!(events[0]["detail"]["days"], 9);
    let ann_only: serde_json::Value = serde_json::from_str(&cli_ok(
        &data,
        &[
            "audit",
            "--devices",
            "--device",
            "Ann laptop",
            "--limit",
            "1",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(ann_only.as_array().unwrap().len(), 1);
    assert_eq!(ann_only[0]["event"], "wiped");
    let text = cli_ok(&data, &["audit", "--devices"]);
    assert!(
        text.contains("wipe_ordered") && text.contains("{\"mode\":\"now\"}"),
        "{text}"
    );
    relay.shutdown().await.unwrap();
}

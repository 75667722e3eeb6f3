//! The relay's metrics and health endpoint, scraped over HTTP after real syncs over QUIC.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fieldsync_client::sync::{SyncConfig, sync_now};
use fieldsync_client::{Client, NewCustomer};
use fieldsync_relay::{Relay, RelayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

async fn start(data: &Path, open: bool) -> Relay {
    Relay::start(RelayConfig {
        data_dir: data.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        metrics_listen: Some("127.0.0.1:0".parse().expect("addr")),
        open_enrollment: open,
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts")
}

/// `GET path` over plain HTTP/1.1: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    get_with(addr, path, "").await
}

/// [`get`] with extra header lines (each ending in `\r\n`).
async fn get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    timeout(LIMIT, async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: relay\r\n{headers}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("response");
        let text = String::from_utf8(raw).expect("utf-8");
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    })
    .await
    .expect("HTTP answer in time")
}

/// Series name (with labels) → value, from Prometheus text.
fn series(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_relay_did_and_health_reports_ok() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start(&dir.path().join("open"), true).await;
    let http = relay.metrics_addr().expect("metrics endpoint");
    let (status, body) = get(http, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));

    let client = Client::open(dir.path().join("a.db")).expect("replica");
    for i in 0..3 {
        client
            .customers()
            .create(NewCustomer {
                org: "acme".into(),
                scope: "north".into(),
                name: format!("Customer {i}"),
                ..Default::default()
            })
            .expect("customer");
    }
    let mut cfg = SyncConfig::new(relay.local_addr().to_string(), relay.fingerprint());
    cfg.connect_timeout = Duration::from_secs(5);
    timeout(LIMIT, sync_now(&client, &cfg))
        .await
        .expect("in time")
        .expect("sync");

    let (status, text) = get(http, "/metrics").await;
    assert_eq!(status, 200);
    let m = series(&text);
    let at_least = |name: &str, min: f64| {
        let v = m.get(name).copied().unwrap_or(0.0);
        assert!(v >= min, "{name} = {v}, expected at least {min}\n{text}");
    };
    at_least("fieldsync_relay_connections_total", 1.0);
    at_least("fieldsync_relay_logins_total", 1.0);
    at_least("fieldsync_relay_changes_accepted_total", 3.0);
    at_least("fieldsync_relay_log_high_seq", 3.0);
    at_least(
        "fieldsync_relay_frames_received_total{message=\"Hello\"}",
        1.0,
    );
    at_least(
        "fieldsync_relay_frames_sent_total{message=\"UploadAck\"}",
        1.0,
    );
    at_least("fieldsync_relay_received_bytes_total", 100.0);
    at_least("fieldsync_relay_sent_bytes_total", 100.0);
    at_least("fieldsync_relay_request_seconds_count", 2.0);
    // Refusals are counted by reason; none was refused, so no reason has a series yet.
    assert!(
        !m.keys()
            .any(|k| k.starts_with("fieldsync_relay_changes_refused_total")),
        "{text}"
    );
    assert!(
        m.keys()
            .any(|k| k.starts_with("fieldsync_relay_build_info{")),
        "{text}"
    );

    // A relay that refuses unknown devices counts the refusal it sends.
    let closed = start(&dir.path().join("closed"), false).await;
    let stranger = Client::open(dir.path().join("b.db")).expect("replica");
    let mut cfg = SyncConfig::new(closed.local_addr().to_string(), closed.fingerprint());
    cfg.connect_timeout = Duration::from_secs(5);
    let refused = timeout(LIMIT, sync_now(&stranger, &cfg))
        .await
        .expect("in time");
    assert!(refused.is_err(), "an unknown device is refused");
    let (_, text) = get(closed.metrics_addr().expect("endpoint"), "/metrics").await;
    let errors: f64 = series(&text)
        .iter()
        .filter(|(k, _)| k.starts_with("fieldsync_relay_errors_sent_total{"))
        .map(|(_, v)| v)
        .sum();
    assert!(errors >= 1.0, "refusal counted:\n{text}");
    closed.shutdown().await.expect("stops");
    relay.shutdown().await.expect("stops");
}

/// With `metrics_token` set, `/metrics` answers only a scraper that sends it as a bearer
/// token; `/healthz` stays open for load balancers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_bearer_token() {
    let tmp = tempfile::tempdir().expect("tmp");
    let token = "scrape-7f3c9a1e5b2d4c68";
    let relay = Relay::start(RelayConfig {
        data_dir: tmp.path().join("relay"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        metrics_listen: Some("127.0.0.1:0".parse().expect("addr")),
        metrics_token: Some(token.into()),
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts");
    let addr = relay.metrics_addr().expect("metrics endpoint");
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("fieldsync_relay"), "{body}");
    let (status, _) = get_with(
        addr,
        "/metrics",
        "Authorization: Bearer wrong-token-000000\r\n",
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = get_with(
        addr,
        "/metrics",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("fieldsync_relay_connections"), "{body}");
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    relay.shutdown().await.expect("shutdown");
}

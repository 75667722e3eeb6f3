//! A `fieldsync sync` process killed (SIGKILL) in the middle of a download loses nothing and
//! needs no reset: the next `fieldsync sync` resumes from the last committed batch and the
//! replica ends equal to the relay's copy.

use std::process::{Command, Stdio};
use std::time::Duration;

use fieldsync_client::sync::{SyncConfig, sync_now};
use fieldsync_client::{Client, NewCustomer};
use fieldsync_relay::{Relay, RelayConfig};

fn fieldsync(data: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fieldsync"));
    c.arg("--data")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_download_resumes_and_converges() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(RelayConfig {
        data_dir: tmp.path().join("relay"),
        listen: "127.0.0.1:0".parse().unwrap(),
        // Small batches, so the download is many committed steps.
        max_batch_bytes: 16 << 10,
        open_enrollment: true,
        ..RelayConfig::default()
    })
    .await
    .unwrap();
    let cfg = SyncConfig::new(
        relay.local_addr().to_string(),
        relay.fingerprint().to_string(),
    );
    let source = Client::open(tmp.path().join("source.db")).unwrap();
    for i in 0..4_000 {
        source
            .customers()
            .create(NewCustomer {
                scope: "north".into(),
                name: format!("customer {i:05}"),
                ..Default::default()
            })
            .unwrap();
    }
    sync_now(&source, &cfg).await.unwrap();

    let data = tmp.path().join("rep");
    let out = fieldsync(&data)
        .args([
            "init",
            "--relay",
            &relay.local_addr().to_string(),
            "--pin",
            relay.fingerprint(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Kill the downloading process a few times at different points.
    let mut partial = Vec::new();
    for delay in [250u64, 600, 900] {
        let mut child = fieldsync(&data).arg("sync").spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let _ = child.kill();
        let _ = child.wait();
        let c = Client::open(data.join("replica.db")).unwrap();
        assert!(
            c.verify().unwrap().is_empty(),
            "replica healthy after kill -9"
        );
        partial.push(c.with_store(|s| s.doc_count()).unwrap());
    }
    eprintln!("documents after each kill: {partial:?}");
    assert!(
        partial.windows(2).all(|w| w[0] <= w[1]),
        "progress is monotonic across kills"
    );

    let out = fieldsync(&data).arg("sync").output().unwrap();
    assert!(
        out.status.success(),
        "final sync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep = Client::open(data.join("replica.db")).unwrap();
    assert_eq!(rep.with_store(|s| s.doc_count()).unwrap(), 4_000);
    let mine = rep.with_store(|s| s.all_heads()).unwrap();
    let theirs = source.with_store(|s| s.all_heads()).unwrap();
    assert_eq!(mine, theirs, "same documents, same heads");
    assert_eq!(
        rep.query("SELECT count(*) AS n FROM customers", &[])
            .unwrap()[0]["n"],
        serde_json::json!(4_000)
    );
    relay.shutdown().await.unwrap();
}

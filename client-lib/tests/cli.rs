//! The `fieldsync` binary against an in-process relay on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fieldsync_relay::{Relay, RelayConfig};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_fieldsync");

fn fieldsync(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("FIELDSYNC_DATA")
        .env_remove("FIELDSYNC_CREDENTIAL")
        .output()
        .expect("run fieldsync")
}

/// Runs a command that must succeed; returns its stdout.
fn ok(data: &Path, args: &[&str]) -> String {
    let out = fieldsync(data, args);
    assert!(
        out.status.success(),
        "fieldsync {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn json(data: &Path, args: &[&str]) -> Value {
    let out = ok(data, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// Runs a command that must fail; returns its stderr.
fn fails(data: &Path, args: &[&str]) -> String {
    let out = fieldsync(data, args);
    assert!(!out.status.success(), "fieldsync {args:?} should fail");
    assert!(out.stdout.is_empty(), "nothing on stdout for a failure");
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}

/// `sync --json` that synced but saw refusals: exit status 3, the report on stdout.
fn refused_json(data: &Path, args: &[&str]) -> Value {
    let out = fieldsync(data, args);
    assert_eq!(
        out.status.code(),
        Some(3),
        "fieldsync {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the report")
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("array")
        .iter()
        .map(|v| v["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn cli_works_offline_and_syncs_through_the_relay() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tmp");
    let relay = rt
        .block_on(Relay::start(RelayConfig {
            data_dir: tmp.path().join("relay"),
            listen: "127.0.0.1:0".parse().expect("addr"),
            open_enrollment: true,
            ..RelayConfig::default()
        }))
        .expect("relay");
    let addr = relay.local_addr().to_string();
    let pin = relay.fingerprint().to_uppercase(); // any case is accepted
    let a = tmp.path().join("alice");
    let b = tmp.path().join("bob");

    // Not initialised yet: sync explains what to do.
    let err = fails(&a, &["sync"]);
    assert!(err.contains("fieldsync init"), "{err}");
    // A bad pin is refused before anything is written.
    let err = fails(&a, &["init", "--relay", &addr, "--pin", "abc"]);
    assert!(err.contains("fingerprint"), "{err}");

    let init = json(
        &a,
        &[
            "init", "--relay", &addr, "--pin", &pin, "--name", "alice", "--role", "rep", "--json",
        ],
    );
    assert_eq!(init["relay"], addr.as_str());
    assert_eq!(init["pin"], relay.fingerprint());
    assert_eq!(init["name"], "alice");
    assert_eq!(init["role"], "rep");
    assert!(init["device_id"].as_str().is_some_and(|d| d.len() == 36));
    assert!(a.join("replica.db").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(a.join("config.toml"))
            .expect("config")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "config.toml is private");
    }

    // Offline work.
    let customer = json(
        &a,
        &[
            "customer",
            "add",
            "--name",
            "Acme Mining",
            "--scope",
            "north",
            "--phone",
            "+86 138 0000 0001",
            "--industry",
            "mining",
            "--json",
        ],
    );
    let cid = customer["id"].as_str().expect("customer id").to_string();
    assert_eq!(customer["name"], "Acme Mining");
    assert_eq!(customer["scope"], "north");
    assert_eq!(customer["created_by"], "alice");
    let plain = ok(
        &a,
        &["customer", "add", "--name", "Beta", "--scope", "south"],
    );
    assert!(
        plain.starts_with("Added customer Beta (") && plain.trim_end().ends_with("in south."),
        "plain output is a confirmation: {plain}"
    );
    let bid = json(&a, &["customer", "show", "beta", "--json"])["id"]
        .as_str()
        .expect("id")
        .to_string();
    let list = json(&a, &["customer", "list", "--json"]);
    assert_eq!(ids(&list), vec![cid.clone(), bid.clone()]);
    ok(&a, &["customer", "archive", &bid]);
    assert_eq!(
        ids(&json(&a, &["customer", "list", "--json"])),
        vec![cid.clone()]
    );

    ok(&a, &["customer", "edit", &cid, "--stage", "opportunity"]);
    let shown = json(&a, &["customer", "show", &cid, "--json"]);
    assert_eq!(shown["stage"], "opportunity");
    assert!(ok(&a, &["customer", "show", &cid]).contains("Acme Mining"));

    let visit = json(
        &a,
        &[
            "visit",
            "log",
            "--customer",
            &cid,
            "--notes",
            "Met the buyer",
            "--json",
        ],
    );
    assert_eq!(visit["status"], "done");
    assert_eq!(visit["customer_id"], cid.as_str());
    let visits = json(&a, &["visit", "list", "--customer", &cid, "--json"]);
    assert_eq!(
        ids(&visits),
        vec![visit["id"].as_str().expect("visit id").to_string()]
    );

    let quote = json(
        &a,
        &[
            "quote",
            "new",
            "--customer",
            &cid,
            "--currency",
            "CNY",
            "--json",
        ],
    );
    let qid = quote["id"].as_str().expect("quote id").to_string();
    let quote = json(
        &a,
        &[
            "quote", "add-line", &qid, "--sku", "EX-200", "--qty", "2", "--price", "1250.50",
            "--json",
        ],
    );
    assert_eq!(quote["lines"][0]["unit_price_minor"], 125_050);
    assert_eq!(quote["total"]["amount_minor"], 250_100);
    assert_eq!(quote["total"]["currency"], "CNY");
    let err = fails(
        &a,
        &[
            "quote", "add-line", &qid, "--sku", "X", "--qty", "1", "--price", "1.234",
        ],
    );
    assert!(err.contains("two decimals"), "{err}");
    ok(&a, &["quote", "submit", &qid]);
    assert_eq!(
        json(&a, &["quote", "show", &qid, "--json"])["status"],
        "submitted"
    );
    // A rep may not approve.
    fails(&a, &["quote", "approve", &qid]);

    // Unknown ids and names fail with a message on stderr.
    let err = fails(
        &a,
        &["customer", "show", "01900000-0000-7000-8000-000000000000"],
    );
    assert!(err.contains("no customer on this laptop"), "{err}");
    let err = fails(&a, &["customer", "show", "not-an-id"]);
    assert!(err.contains("no customer on this laptop"), "{err}");

    let before = json(&a, &["status", "--json"]);
    assert!(
        before["outbox"].as_u64().is_some_and(|n| n >= 7),
        "{before}"
    );
    assert_eq!(before["last_sync_finished_at"], Value::Null);
    assert_eq!(before["relay_reachable"], true);
    assert!(
        before["outbox_bytes"].as_u64().is_some_and(|n| n > 0),
        "{before}"
    );
    assert!(
        before["outbox_documents"].as_u64().is_some_and(|n| n >= 3),
        "{before}"
    );
    assert_eq!(before["download_waiting"], false);
    let text = ok(&a, &["status"]);
    assert!(
        text.contains("Upload:") && text.contains("Download:   not synced yet"),
        "{text}"
    );
    let err = fails(&a, &["sync", "--budget", "lots"]);
    assert!(err.contains("is not a size like 2MB"), "{err}");

    // Sync: report as JSON, then as text (no progress bar: stdout is not a terminal).
    let report = json(&a, &["sync", "--json"]);
    let sent = report["changes_sent"].as_u64().expect("sent");
    assert!(sent >= 7, "{report}");
    assert_eq!(report["changes_acked"].as_u64(), Some(sent));
    assert_eq!(report["changes_rejected"], 0);
    assert_eq!(report["outbox_remaining"], 0);
    assert!(report["bytes_sent"].as_u64().is_some_and(|n| n > 0));
    assert!(report["duration_ms"].is_u64());
    let text = ok(&a, &["sync"]);
    assert!(text.starts_with("Synced with"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no terminal control codes: {text:?}"
    );

    // A budget larger than what is left changes nothing.
    let metered = json(&a, &["sync", "--budget", "2MB", "--json"]);
    assert_eq!(metered["budget_spent"], false, "{metered}");
    let after = json(&a, &["status", "--json"]);
    assert_eq!(after["outbox"], 0);
    assert_eq!(after["outbox_bytes"], 0);
    assert!(after["last_sync_finished_at"].is_string(), "{after}");
    assert_eq!(after["last_error"], Value::Null);
    assert_eq!(after["relay"], addr.as_str());
    assert!(ok(&a, &["status"]).contains("reachable"));

    // Bob, through the environment variable, gets everything.
    let env_run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("FIELDSYNC_DATA", &b)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    env_run(&["init", "--relay", &addr, "--pin", &pin, "--name", "bob"]);
    env_run(&["sync"]);
    let bob_list: Value =
        serde_json::from_str(&env_run(&["customer", "list", "--json"])).expect("json");
    assert_eq!(ids(&bob_list), vec![cid.clone()]);
    assert_eq!(
        json(&b, &["quote", "show", &qid, "--json"])["total"]["amount_minor"],
        250_100
    );

    // Concurrent renames become a listed conflict on both sides.
    ok(&a, &["customer", "edit", &cid, "--name", "Acme Mining Ltd"]);
    ok(&b, &["customer", "edit", &cid, "--name", "ACME Mining Co."]);
    ok(&a, &["sync"]);
    ok(&b, &["sync"]);
    ok(&a, &["sync"]);
    for dir in [&a, &b] {
        let conflicts = json(dir, &["conflicts", "--json"]);
        let list = conflicts.as_array().expect("array");
        let name = list
            .iter()
            .find(|c| c["id"] == cid.as_str() && c["path"] == "name")
            .unwrap_or_else(|| panic!("name conflict listed: {conflicts}"));
        assert_eq!(name["values"].as_array().map(Vec::len), Some(2));
        assert!(ok(dir, &["conflicts"]).contains("name"));
    }
    assert_eq!(
        json(&a, &["customer", "show", &cid, "--json"]),
        json(&b, &["customer", "show", &cid, "--json"])
    );

    // `sync --watch --json` prints events as lines and stops cleanly on SIGINT.
    #[cfg(unix)]
    {
        let mut child = Command::new(BIN)
            .arg("--data")
            .arg(&b)
            .args(["sync", "--watch", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let wait_event = |name: &str| loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no {name} event"));
            let v: Value = serde_json::from_str(&line).expect("one JSON object per line");
            if v["event"] == name {
                return v;
            }
        };
        wait_event("caught_up");
        // Alice's edit reaches the watching process without another command on bob's side.
        ok(&a, &["customer", "edit", &cid, "--industry", "quarrying"]);
        ok(&a, &["sync"]);
        wait_event("received");
        let pid = child.id().to_string();
        let killed = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        let status = child.wait().expect("wait");
        assert!(
            status.success(),
            "watch exits cleanly on Ctrl-C: {status:?}"
        );
        assert_eq!(
            json(&b, &["customer", "show", &cid, "--json"])["industry"],
            "quarrying"
        );
    }

    // With the relay gone, status says so (within its short probe timeout).
    rt.block_on(relay.shutdown()).expect("shutdown");
    let down = json(&a, &["status", "--json"]);
    assert_eq!(down["relay_reachable"], false);
    assert!(down["relay_error"].is_string());
    assert!(
        down["last_sync_finished_at"].is_string(),
        "last success kept"
    );
    let out = fieldsync(&a, &["sync", "--connect-timeout", "1"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "offline has its own exit status"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no answer from the relay") && err.contains("next `fieldsync sync`"),
        "{err}"
    );
}

#[test]
fn init_with_a_token_enrols_and_refused_changes_are_listed() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tmp");
    // Closed (the default): only enrolled devices sync.
    let relay = rt
        .block_on(Relay::start(RelayConfig {
            data_dir: tmp.path().join("relay"),
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..RelayConfig::default()
        }))
        .expect("relay");
    let secret = relay
        .store()
        .create_enrolment(
            "Li Wei laptop",
            fieldsync_client::Role::Rep,
            &["north-mines".to_string()],
            None,
            Duration::from_secs(3600),
        )
        .expect("enrolment");
    let token = fieldsync_client::sync::EnrolToken::new(
        &relay.local_addr().to_string(),
        relay.fingerprint(),
        &secret,
    )
    .expect("token")
    .to_string();
    let a = tmp.path().join("li");

    let err = fails(&a, &["init", "--token", "fsyn1.nonsense"]);
    assert!(err.contains("enrolment token"), "{err}");
    let init = json(
        &a,
        &["init", "--token", &token, "--name", "Li Wei", "--json"],
    );
    assert_eq!(init["role"], "rep", "the enrolled role");
    assert_eq!(init["scopes"], serde_json::json!(["north-mines"]));
    assert_eq!(init["relay"], relay.local_addr().to_string());
    assert_eq!(init["pin"], relay.fingerprint());
    let cred = a.join("replica.db.credential");
    assert_eq!(init["credential_file"], cred.to_str().expect("utf-8"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [&cred, &a.join("config.toml")] {
            let mode = std::fs::metadata(f).expect("file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{} is private", f.display());
        }
    }
    let config = std::fs::read_to_string(a.join("config.toml")).expect("config");
    assert!(!config.contains("credential"), "{config}");
    assert!(
        !std::fs::read_to_string(&cred)
            .expect("cred")
            .contains(&secret)
    );

    // The token works once only.
    let b = tmp.path().join("other");
    let err = fails(&b, &["init", "--token", &token]);
    assert!(err.contains("already used"), "{err}");

    // A customer in the rep's territory syncs; one outside it (created anyway) is refused
    // and quarantined, and the sync exits 3.
    let ours = json(
        &a,
        &[
            "customer",
            "add",
            "--name",
            "Baotou Mining",
            "--scope",
            "north-mines",
            "--json",
        ],
    )["id"]
        .as_str()
        .expect("id")
        .to_string();
    let theirs = json(
        &a,
        &[
            "customer",
            "add",
            "--name",
            "Elsewhere Ltd",
            "--scope",
            "south-ports",
            "--outside-grant",
            "--json",
        ],
    )["id"]
        .as_str()
        .expect("id")
        .to_string();
    let report = refused_json(&a, &["sync", "--json"]);
    assert_eq!(report["changes_acked"], 1, "{report}");
    assert_eq!(report["changes_rejected"], 1, "{report}");
    assert_eq!(report["role"], "rep");
    let q = json(&a, &["quarantine", "--json"]);
    assert_eq!(q.as_array().expect("array").len(), 1, "{q}");
    assert_eq!(q[0]["doc_id"], theirs.as_str());
    let reason = q[0]["reason"].as_str().expect("reason");
    assert!(reason.contains("outside the device's scopes"), "{reason}");
    let text = ok(&a, &["quarantine"]);
    assert!(text.contains("outside the device's scopes"), "{text}");
    assert!(text.contains("quarantine --retry"), "{text}");
    let status = json(&a, &["status", "--json"]);
    assert_eq!(status["quarantined"], 1);
    assert_eq!(status["outbox"], 0);
    assert!(
        status["recent_rejections"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("outside")),
        "{status}"
    );
    let text = ok(&a, &["status"]);
    assert!(
        text.contains("Quarantine: 1") && text.contains("outside the device's scopes"),
        "{text}"
    );
    let list = json(&a, &["customer", "list", "--json"]);
    assert_eq!(ids(&list), vec![ours.as_str().to_string()]);

    // Retrying puts the refused customer back and sends it again; still outside the grant,
    // it is refused again and returns to the quarantine.
    let err = fails(&a, &["quarantine", "--doc", theirs.as_str()]);
    assert!(err.contains("--retry"), "{err}");
    let retried = json(&a, &["quarantine", "--retry", "--json"]);
    assert_eq!(retried, serde_json::json!({ "requeued": 1, "kept": 0 }));
    assert_eq!(json(&a, &["status", "--json"])["outbox"], 1);
    let list = json(&a, &["customer", "list", "--json"]);
    assert_eq!(list.as_array().expect("array").len(), 2, "{list}");
    let report = refused_json(&a, &["sync", "--json"]);
    assert_eq!(report["changes_rejected"], 1, "{report}");
    let q = json(&a, &["quarantine", "--json"]);
    assert_eq!(q[0]["doc_id"], theirs.as_str(), "{q}");
    let text = ok(&a, &["quarantine", "--retry", "--doc", ours.as_str()]);
    assert!(text.contains("0 refused change(s)"), "{text}");

    // IT adds the territory to the laptop's grant; the retried customer now syncs.
    relay
        .store()
        .grant(
            "Li Wei laptop",
            None,
            Some(&["north-mines".to_string(), "south-ports".to_string()]),
        )
        .expect("grant");
    let retried = json(&a, &["quarantine", "--retry", "--json"]);
    assert_eq!(retried["requeued"], 1, "{retried}");
    let report = json(&a, &["sync", "--json"]);
    assert_eq!(
        (&report["changes_acked"], &report["changes_rejected"]),
        (&serde_json::json!(1), &serde_json::json!(0)),
        "{report}"
    );
    assert_eq!(json(&a, &["quarantine", "--json"]), serde_json::json!([]));
    let status = json(&a, &["status", "--json"]);
    assert_eq!(
        (&status["quarantined"], &status["outbox"]),
        (&serde_json::json!(0), &serde_json::json!(0))
    );

    // Revoked: the next sync fails in plain words with its own exit status; status shows
    // the relay's reason in JSON and the plain words in text.
    relay.store().revoke("Li Wei laptop").expect("revoke");
    let out = fieldsync(&a, &["sync"]);
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("access was revoked by IT"), "{err}");
    let status = json(&a, &["status", "--json"]);
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("Unauthorized")),
        "{status}"
    );
    rt.block_on(relay.shutdown()).expect("shutdown");
}

#[test]
fn a_rep_attaches_a_photo_and_another_laptop_gets_it_on_demand() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tmp");
    let relay = rt
        .block_on(Relay::start(RelayConfig {
            data_dir: tmp.path().join("relay"),
            listen: "127.0.0.1:0".parse().expect("addr"),
            open_enrollment: true,
            ..RelayConfig::default()
        }))
        .expect("relay");
    let addr = relay.local_addr().to_string();
    let pin = relay.fingerprint();
    let (a, b) = (tmp.path().join("li"), tmp.path().join("wang"));
    for (dir, name) in [(&a, "li"), (&b, "wang")] {
        ok(
            dir,
            &["init", "--relay", &addr, "--pin", pin, "--name", name],
        );
    }
    let customer = json(
        &a,
        &[
            "customer",
            "add",
            "--name",
            "Baotou Mining",
            "--scope",
            "north",
            "--json",
        ],
    );
    let cid = customer["id"].as_str().expect("id").to_string();
    let visit = json(
        &a,
        &[
            "visit",
            "log",
            "--customer",
            &cid,
            "--notes",
            "seal worn",
            "--json",
        ],
    );
    let vid = visit["id"].as_str().expect("id").to_string();
    // A signed receipt (not an image: no preview) and a missing file (a clear error).
    let receipt: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let file = tmp.path().join("receipt.pdf");
    std::fs::write(&file, &receipt).expect("write");
    let file_arg = file.to_str().expect("utf-8");
    let err = fails(&a, &["visit", "attach", &vid, "/nonexistent/photo.jpg"]);
    assert!(err.contains("cannot attach"), "{err}");
    let att = json(
        &a,
        &[
            "visit",
            "attach",
            &vid,
            file_arg,
            "--caption",
            "signed receipt",
            "--json",
        ],
    );
    assert_eq!(att["attachment"]["media_type"], "application/pdf");
    assert_eq!(att["attachment"]["size"], 200_000);
    let aid = att["attachment"]["id"].as_str().expect("id").to_string();
    let status = json(&a, &["status", "--json"]);
    assert_eq!(status["attachments"]["upload_files"], 1);
    assert_eq!(status["attachments"]["upload_bytes"], 200_000);
    let report = json(&a, &["sync", "--json"]);
    assert_eq!(report["attachments_uploaded"], 1, "{report}");
    assert_eq!(
        json(&a, &["status", "--json"])["attachments"]["upload_files"],
        0
    );

    ok(&b, &["sync"]);
    let list = json(&b, &["attachment", "list", &vid, "--json"]);
    assert_eq!(list[0]["bytes"]["state"], "not_here");
    assert_eq!(list[0]["attachment"]["caption"], "signed receipt");
    let out = tmp.path().join("got.pdf");
    let said = ok(
        &b,
        &[
            "attachment",
            "get",
            &vid,
            &aid[aid.len() - 8..],
            "--out",
            out.to_str().expect("utf-8"),
        ],
    );
    assert!(said.contains("Saved receipt.pdf"), "{said}");
    assert_eq!(std::fs::read(&out).expect("read"), receipt);
    let list = json(&b, &["attachment", "list", &vid, "--json"]);
    assert_eq!(list[0]["bytes"]["state"], "here");
    // Not overwritten.
    let err = fails(
        &b,
        &[
            "attachment",
            "get",
            &vid,
            &aid[aid.len() - 8..],
            "--out",
            out.to_str().expect("utf-8"),
        ],
    );
    assert!(err.contains("exists"), "{err}");
    // Removed on one laptop, gone from the other's list after a sync.
    ok(&a, &["attachment", "remove", &vid, &aid[aid.len() - 8..]]);
    ok(&a, &["sync"]);
    ok(&b, &["sync"]);
    assert_eq!(
        json(&b, &["attachment", "list", &vid, "--json"]),
        serde_json::json!([])
    );
    // Its bytes left b's disk when b caught up; a gc finds nothing more.
    let held = json(&b, &["attachment", "list", "--json"]);
    assert_eq!(held["attachments"], serde_json::json!([]), "{held}");
    let gc = ok(&b, &["attachment", "gc"]);
    assert!(gc.contains("Removed 0 attachments"), "{gc}");
    // With north downloaded in the background, a new attachment arrives with its visit.
    let said = ok(&b, &["attachment", "prefetch", "north"]);
    assert!(said.contains("north download in the background"), "{said}");
    let photo = tmp.path().join("plate.png");
    std::fs::write(&photo, [7u8; 5000]).expect("write");
    ok(
        &a,
        &["visit", "attach", &vid, photo.to_str().expect("utf-8")],
    );
    ok(&a, &["sync"]);
    let report = json(&b, &["sync", "--json"]);
    assert_eq!(report["attachments_downloaded"], 1, "{report}");
    drop(relay);
}

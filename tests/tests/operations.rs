//! What IT does with the relay, done as IT does it: the `fieldsync-relay` and `fieldsync`
//! binaries against a relay process. Enrolment tokens have ids, are listed and cancelled on
//! their own, and a name already in use needs `--again`; `status` says whether the relay
//! serves and where, also as JSON; `device list` shows which devices are online; `audit`
//! names the document's kind and customer and filters by time; logs can be JSON lines; the
//! metrics carry the build, the fleet and the disk.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fieldsync_tests::procs::{
    RelayProcess, free_tcp_addr, laptop_command, relay_command, scrape_metrics,
};
use serde_json::Value;

fn relay(data: &Path, args: &[&str]) -> Output {
    relay_command(data, args)
        .expect("relay binary")
        .env_remove("RUST_LOG")
        .output()
        .expect("run fieldsync-relay")
}

fn relay_ok(data: &Path, args: &[&str]) -> String {
    let out = relay(data, args);
    assert!(
        out.status.success(),
        "fieldsync-relay {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn relay_json(data: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&relay_ok(data, &args)).expect("JSON output")
}

fn laptop(dir: &Path) -> Command {
    laptop_command(dir).expect("client binary")
}

fn laptop_ok(dir: &Path, args: &[&str]) -> String {
    let out = laptop(dir).args(args).output().expect("run fieldsync");
    assert!(
        out.status.success(),
        "fieldsync {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `device enroll` and its token (the last line) and token id (the `token id:` line).
fn enroll(data: &Path, addr: &str, name: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "device",
        "enroll",
        "--name",
        name,
        "--role",
        "rep",
        "--scope",
        "north",
        "--relay-addr",
        addr,
    ];
    args.extend_from_slice(extra);
    let out = relay_ok(data, &args);
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("token id: "))
        .expect("a token id line")
        .to_string();
    let token = out.lines().last().expect("token").to_string();
    (id, token)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn it_enrols_with_token_ids_sees_who_is_online_and_reads_the_audit_trail() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("relay");
    let metrics = free_tcp_addr().expect("port");
    let server = RelayProcess::start(
        &data,
        "127.0.0.1:0".parse().expect("addr"),
        &["--metrics-listen", &metrics.to_string()],
    )
    .expect("relay");
    let addr = server.addr.to_string();

    // Tokens: an id each; the same name again needs --again; one is cancelled on its own.
    let (first_id, first) = enroll(&data, &addr, "alice", &[]);
    assert_eq!(first_id.len(), 12);
    let again = relay(
        &data,
        &[
            "device",
            "enroll",
            "--name",
            "alice",
            "--role",
            "rep",
            "--scope",
            "north",
            "--relay-addr",
            &addr,
        ],
    );
    assert!(!again.status.success());
    let why = String::from_utf8_lossy(&again.stderr);
    assert!(
        why.contains(&first_id) && why.contains("--again"),
        "the refusal names the open token and the flag: {why}"
    );
    let (spare_id, spare) = enroll(&data, &addr, "alice", &["--again"]);
    let open = relay_json(&data, &["device", "token", "list"]);
    let ids: Vec<&str> = open
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert!(ids.contains(&first_id.as_str()) && ids.contains(&spare_id.as_str()));
    let said = relay_ok(&data, &["device", "token", "cancel", &spare_id[..6]]);
    assert!(said.contains("cancelled enrolment token"), "{said}");
    let twice = relay(&data, &["device", "token", "cancel", &spare_id]);
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already cancelled"));
    // The cancelled token no longer enrols a laptop; the other still does.
    let refused = laptop(&tmp.path().join("thief"))
        .args(["init", "--token", &spare])
        .output()
        .expect("init");
    assert!(!refused.status.success());
    let rep = tmp.path().join("alice");
    laptop_ok(&rep, &["init", "--token", &first, "--name", "alice"]);

    // The relay serves: where, which version, from the store alone.
    let status = relay_json(&data, &["status"]);
    assert_eq!(status["serving"], true, "{status}");
    let node = &status["nodes"][0];
    assert_eq!(node["listen"], addr.as_str());
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(node["metrics_addr"], metrics.to_string().as_str());

    // A customer synced, then a laptop that stays connected shows as online.
    laptop_ok(
        &rep,
        &[
            "customer",
            "add",
            "--name",
            "Baotou Mining Co",
            "--scope",
            "north",
        ],
    );
    laptop_ok(&rep, &["sync"]);
    // The laptop says what it holds unsent (protocol 5): a change the relay refused stays in
    // its quarantine, and IT sees it in the device list.
    laptop_ok(
        &rep,
        &[
            "customer",
            "add",
            "--name",
            "Elsewhere Ltd",
            "--scope",
            "south",
            "--outside-grant",
        ],
    );
    let _ = laptop(&rep).arg("sync").output().expect("sync");
    let list = relay_json(&data, &["device", "list"]);
    let alice = list["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["name"] == "alice")
        .expect("alice listed")
        .clone();
    assert_eq!(alice["outbox"]["changes"], 0, "{alice}");
    assert_eq!(alice["outbox"]["quarantined"], 1, "{alice}");
    let mut watching = laptop(&rep)
        .args(["sync", "--watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sync --watch");
    wait_until("the watching laptop shows as online", || {
        let list = relay_json(&data, &["device", "list"]);
        list["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .any(|d| d["name"] == "alice" && d["connected"] == true)
    });
    let status = relay_json(&data, &["status"]);
    assert_eq!(status["devices_online"], 1, "{status}");
    let _ = watching.kill();
    let _ = watching.wait();

    // The audit trail names the kind and the customer, and filters by time.
    let audit = relay_json(&data, &["audit", "--since", "1h"]);
    let entry = &audit.as_array().expect("array")[0];
    assert_eq!(entry["kind"], "customer");
    assert_eq!(entry["customer"], "Baotou Mining Co");
    assert_eq!(entry["device_name"], "alice");
    let later = relay_json(&data, &["audit", "--since", "2999-01-01"]);
    assert!(later.as_array().expect("array").is_empty());
    assert!(relay_ok(&data, &["audit", "--since", "2999-01-01"]).contains("no accepted changes"));

    // Metrics: the build, the fleet and the disk (counted when the relay started and every
    // minute; the fleet had no device then, so only the gauges' presence is checked).
    let m = scrape_metrics(metrics).expect("scrape");
    let has = |prefix: &str| m.keys().any(|k| k.starts_with(prefix));
    assert!(has("fieldsync_relay_build_info{"), "{m:?}");
    assert!(has("fieldsync_relay_devices{"), "{m:?}");
    assert!(has("fieldsync_relay_devices_silent{"), "{m:?}");
    assert!(
        m.get("fieldsync_relay_data_available_bytes")
            .is_some_and(|v| *v > 0.0)
    );
    assert!(
        m.get("fieldsync_relay_data_size_bytes")
            .is_some_and(|v| *v > 0.0)
    );
    assert!(
        m.get("fieldsync_relay_start_time_seconds")
            .is_some_and(|v| *v > 0.0)
    );

    // A second relay on the same data directory, or on a port in use, says so and creates
    // nothing.
    let second = relay(&data, &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already serving"));
    let fresh = tmp.path().join("typo");
    let busy = relay(&fresh, &["serve", "--listen", &addr]);
    assert!(!busy.status.success(), "the port is in use");
    assert!(String::from_utf8_lossy(&busy.stderr).contains(addr.as_str()));
    assert!(!fresh.join("relay.db").exists() && !fresh.join("cert.der").exists());

    // Stopped, it says so, and exits non-zero for scripts.
    server.stop();
    let stopped = relay(&data, &["status", "--json"]);
    assert_eq!(
        stopped.status.code(),
        Some(3),
        "not serving is exit status 3"
    );
    let stopped: Value = serde_json::from_slice(&stopped.stdout).expect("JSON");
    assert_eq!(stopped["serving"], false);
    assert_eq!(stopped["nodes"][0]["stopped"], true);
}

#[test]
fn the_relay_logs_json_lines_when_configured() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("relay");
    let config = tmp.path().join("relay.toml");
    std::fs::write(&config, "log_level = \"info\"\nlog_format = \"json\"\n").expect("config");
    let server = RelayProcess::start(
        &data,
        "127.0.0.1:0".parse().expect("addr"),
        &["--config", &config.to_string_lossy()],
    )
    .expect("relay");
    // RelayProcess sets RUST_LOG=warn unless the environment has one: the level comes from
    // there; the format from the config.
    enroll(&data, &server.addr.to_string(), "bob", &[]);
    server.stop();
    let log = std::fs::read_to_string(data.with_extension("log")).expect("log");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the relay logged nothing");
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }

    // A wrong level is a clear error before anything starts.
    std::fs::write(&config, "log_level = \"loud\"\n").expect("config");
    let out = relay(&data, &["status", "--config", &config.to_string_lossy()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("log_level"));
}

#[test]
fn an_erp_export_is_imported_once_and_reaches_the_laptops() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("relay");
    let server =
        RelayProcess::start(&data, "127.0.0.1:0".parse().expect("addr"), &[]).expect("relay");
    let addr = server.addr.to_string();
    let export = tmp.path().join("erp.csv");
    std::fs::write(
        &export,
        "external_id,name,scope,phone,city,contact_name,contact_phone,equipment_model,equipment_serial\n\
         ERP1,Baotou Mining Co,north,+86 477 100,Baotou,Wang Lei,138,CAT 320,S1\n\
         ERP1,,,,,Li Na,139,CAT 950,S2\n\
         ERP2,Ordos Coal,north,,,,,,\n\
         ERP3,,north,,,,,,\n",
    )
    .expect("export");
    let export = export.to_string_lossy().into_owned();

    // Every good record is imported; the bad one is named with its row, and the exit status
    // says that something failed.
    let out = relay(&data, &["import", &export]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("row 5 (customer ERP3): customer ERP3 has no name"),
        "{said}"
    );
    assert!(
        said.contains("3 customers: 2 created, 0 updated, 0 unchanged, 1 failed"),
        "{said}"
    );

    // Again: nothing changes; nothing is duplicated.
    let again = relay(&data, &["import", &export, "--json"]);
    let report: Value = serde_json::from_slice(&again.stdout).expect("JSON report");
    assert_eq!(report["unchanged"], 2, "{report}");
    assert_eq!(report["created"], 0, "{report}");

    // A laptop of the scope receives the customer with its contacts and equipment.
    let (_, token) = enroll(&data, &addr, "carol", &[]);
    let rep = tmp.path().join("carol");
    laptop_ok(&rep, &["init", "--token", &token, "--name", "carol"]);
    laptop_ok(&rep, &["sync"]);
    let shown: Value = serde_json::from_str(&laptop_ok(
        &rep,
        &["customer", "show", "Baotou Mining Co", "--json"],
    ))
    .expect("JSON customer");
    assert_eq!(
        shown["contacts"].as_array().map(Vec::len),
        Some(2),
        "{shown}"
    );
    assert_eq!(
        shown["equipment"].as_array().map(Vec::len),
        Some(2),
        "{shown}"
    );

    // The audit trail shows the import device's changes.
    let audit = relay_json(&data, &["audit", "--device", "relay import"]);
    assert_eq!(audit.as_array().map(Vec::len), Some(2), "{audit}");
    assert_eq!(audit[0]["kind"], "customer");
}

//! The `fieldsync` command line as reps and managers use it: the real `fieldsync` and
//! `fieldsync-relay` binaries, each in its own process, laptops enrolled with tokens from
//! `fieldsync-relay device enroll` and `fieldsync init --token`.
//!
//! - Records are named by id prefix or (customers) by name; ambiguous and unknown names are
//!   explained; every change prints a one-line confirmation; approving a draft, or approving
//!   without the role, says what state the quote is in and what comes next.
//! - `sync` speaks of customers, visits and quotes, announces refusals and new conflicts with
//!   the commands that handle them, and ends with a documented exit status: 0 synced, 3
//!   synced with refusals, 4 relay unreachable, 5 not enrolled or revoked.
//! - A customer in a scope the laptop was not granted needs `--outside-grant`.
//! - After a relay restore the laptop says so and how many changes it re-sent.
//! - Shell completions and man pages are generated; a wrong command line exits 2.

use std::path::{Path, PathBuf};
use std::process::Output;

use fieldsync_tests::procs::{self, RelayProcess};
use serde_json::Value;

/// What one run of a binary left.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

fn fieldsync(data: &Path, args: &[&str]) -> Run {
    procs::laptop_command(data)
        .expect("the fieldsync binary")
        .args(args)
        .output()
        .expect("run fieldsync")
        .into()
}

/// Runs a command that must exit with `code`; returns what it printed.
fn expect(data: &Path, args: &[&str], code: i32) -> Run {
    let run = fieldsync(data, args);
    assert_eq!(
        run.code, code,
        "fieldsync {args:?}: exit {} instead of {code}\nstdout: {}\nstderr: {}",
        run.code, run.stdout, run.stderr
    );
    run
}

/// Runs a command that must succeed; returns its stdout.
fn ok(data: &Path, args: &[&str]) -> String {
    expect(data, args, 0).stdout
}

/// Runs a command that must fail with status 1 and print nothing on stdout; returns stderr.
fn fails(data: &Path, args: &[&str]) -> String {
    let run = expect(data, args, 1);
    assert!(run.stdout.is_empty(), "{args:?} printed {}", run.stdout);
    run.stderr
}

fn json(data: &Path, args: &[&str]) -> Value {
    let out = ok(data, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

fn relay_cli(relay: &Path, args: &[&str]) -> Run {
    procs::relay_command(relay, args)
        .expect("the relay binary")
        .output()
        .expect("run fieldsync-relay")
        .into()
}

fn relay_ok(relay: &Path, args: &[&str]) -> String {
    let run = relay_cli(relay, args);
    assert_eq!(run.code, 0, "fieldsync-relay {args:?}: {}", run.stderr);
    run.stdout
}

/// A relay process that only serves enrolled devices.
fn start_relay(data: &Path) -> RelayProcess {
    RelayProcess::start(data, "127.0.0.1:0".parse().expect("addr"), &[])
        .expect("the relay process starts")
}

/// IT enrols a laptop (`fieldsync-relay device enroll`), the rep redeems the token
/// (`fieldsync init --token`); returns the laptop's data directory.
fn enrolled_laptop(
    tmp: &Path,
    relay: &RelayProcess,
    dir: &str,
    name: &str,
    role: &str,
    scopes: &[&str],
) -> PathBuf {
    let addr = relay.addr.to_string();
    let mut args = vec![
        "device",
        "enroll",
        "--name",
        name,
        "--role",
        role,
        "--relay-addr",
        &addr,
    ];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    let printed = relay_ok(&relay.data, &args);
    let token = printed.lines().last().expect("the token line").trim();
    let laptop = tmp.join(dir);
    ok(&laptop, &["init", "--token", token, "--name", name]);
    laptop
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_string()
}

/// The first column of a listing line that contains `what`: the short id.
fn listed_id(listing: &str, what: &str) -> String {
    listing
        .lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{what:?} is not listed:\n{listing}"))
        .to_string()
}

#[test]
fn reps_and_managers_name_records_by_prefix_or_name_and_every_change_is_confirmed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let relay = start_relay(&tmp.path().join("relay"));
    let rep = enrolled_laptop(tmp.path(), &relay, "rep", "Li Wei", "rep", &["north-mines"]);
    let mgr = enrolled_laptop(
        tmp.path(),
        &relay,
        "mgr",
        "Zhang Min",
        "manager",
        &["north-mines"],
    );
    // The first sync tells the laptops their scopes.
    ok(&rep, &["sync"]);
    ok(&mgr, &["sync"]);

    let added = ok(
        &rep,
        &[
            "customer",
            "add",
            "--name",
            "Baotou Mining Co",
            "--scope",
            "north-mines",
        ],
    );
    assert!(
        added.starts_with("Added customer Baotou Mining Co (") && added.contains("in north-mines"),
        "{added}"
    );
    assert_eq!(added.lines().count(), 1, "one line: {added}");
    let coal = id_of(&json(
        &rep,
        &[
            "customer",
            "add",
            "--name",
            "Baotou Coal",
            "--scope",
            "north-mines",
            "--json",
        ],
    ));
    let ordos = id_of(&json(
        &rep,
        &[
            "customer",
            "add",
            "--name",
            "Ordos Logistics",
            "--scope",
            "north-mines",
            "--json",
        ],
    ));
    let mining = id_of(&json(
        &rep,
        &["customer", "show", "BAOTOU mining co", "--json"],
    ));
    assert_ne!(mining, coal);

    // A unique part of a name, a short id from the listing, any unique id prefix.
    assert_eq!(
        id_of(&json(&rep, &["customer", "show", "ordos", "--json"])),
        ordos
    );
    let listing = ok(&rep, &["customer", "list"]);
    let short = listed_id(&listing, "Baotou Coal");
    assert!(
        short.len() < coal.len(),
        "short ids in the listing: {listing}"
    );
    assert!(coal.starts_with(&short));
    assert_eq!(
        id_of(&json(&rep, &["customer", "show", &short, "--json"])),
        coal
    );
    let hex: String = coal.chars().filter(|c| *c != '-').collect();
    assert_eq!(
        id_of(&json(&rep, &["customer", "show", &hex, "--json"])),
        coal,
        "hyphens are optional"
    );

    // Ambiguous: every candidate with its short id and name; nothing is changed.
    let err = fails(&rep, &["customer", "edit", "baotou", "--stage", "lost"]);
    assert!(err.contains("\"baotou\" matches 2 customers"), "{err}");
    assert!(
        err.contains("Baotou Mining Co") && err.contains("Baotou Coal"),
        "{err}"
    );
    assert!(err.contains(&coal[..8]), "{err}");
    let err = fails(&rep, &["customer", "show", &coal[..4]]);
    assert!(err.contains("matches 3 customers"), "{err}");
    // Unknown and too short: said plainly, not a parser's error.
    let err = fails(&rep, &["customer", "show", "Xinjiang Copper"]);
    assert!(
        err.contains(
            "no customer on this laptop is called or has an id starting with \"Xinjiang Copper\""
        ),
        "{err}"
    );
    assert!(!err.contains("group count"), "{err}");
    let err = fails(&rep, &["customer", "show", &coal[..3]]);
    assert!(err.contains("at least 4 characters"), "{err}");

    // Every change prints what changed, the short id and the customer.
    let edited = ok(
        &rep,
        &["customer", "edit", "ordos", "--stage", "opportunity"],
    );
    assert!(
        edited.starts_with("Updated customer Ordos Logistics (")
            && edited.contains("stage \"opportunity\""),
        "{edited}"
    );
    let logged = ok(
        &rep,
        &[
            "visit",
            "log",
            "--customer",
            "Baotou Mining Co",
            "--notes",
            "Two loaders need replacing",
        ],
    );
    assert!(
        logged.starts_with("Logged a done sales call visit (")
            && logged.trim_end().ends_with("at Baotou Mining Co."),
        "{logged}"
    );
    let visit = listed_id(&ok(&rep, &["visit", "list"]), "Baotou Mining Co");
    let shown = ok(&rep, &["visit", "show", &visit]);
    assert!(shown.contains("Two loaders need replacing"), "{shown}");
    // A visit's id is no customer's: the error says what it is.
    let err = fails(&rep, &["customer", "show", &visit]);
    assert!(err.contains("it is the id of a visit"), "{err}");

    let started = ok(
        &rep,
        &[
            "quote",
            "new",
            "--customer",
            "baotou mining",
            "--currency",
            "CNY",
            "--number",
            "Q-7",
        ],
    );
    assert!(
        started.starts_with("Started draft quote ")
            && started.contains("(Q-7) for Baotou Mining Co in CNY"),
        "{started}"
    );
    let quote = listed_id(&ok(&rep, &["quote", "list"]), "Q-7");
    let line = ok(
        &rep,
        &[
            "quote", "add-line", &quote, "--sku", "WL-980", "--qty", "2", "--price", "1250.50",
        ],
    );
    assert!(
        line.contains("Added 2 × WL-980 at 1250.50 to quote")
            && line.contains("total now 2501.00 CNY"),
        "{line}"
    );
    // Approving a draft: its state and the next step, not a role error.
    let err = fails(&rep, &["quote", "approve", &quote]);
    assert!(
        err.contains("is still a draft")
            && err.contains(&format!("fieldsync quote submit {quote}")),
        "{err}"
    );
    assert!(!err.contains("may not set"), "{err}");
    let submitted = ok(&rep, &["quote", "submit", &quote]);
    assert!(
        submitted.starts_with("Submitted quote ")
            && submitted.contains("for Baotou Mining Co for approval (total 2501.00 CNY)"),
        "{submitted}"
    );
    // Submitted, but a rep may not approve: said in words of roles.
    let err = fails(&rep, &["quote", "approve", &quote]);
    assert!(
        err.contains("only a manager (or above) may approve quotes")
            && err.contains("works as a rep"),
        "{err}"
    );
    // A second quote, to be rejected.
    ok(
        &rep,
        &[
            "quote",
            "new",
            "--customer",
            &ordos[..13],
            "--currency",
            "CNY",
            "--number",
            "Q-8",
        ],
    );
    // Ids minted within the same minute share their first digits (UUIDv7): a short id
    // printed earlier can need more digits once more records exist, as in git.
    let quotes = ok(&rep, &["quote", "list"]);
    let second = listed_id(&quotes, "Q-8");
    let quote = listed_id(&quotes, "Q-7");
    ok(&rep, &["quote", "submit", &second]);

    let synced = ok(&rep, &["sync"]);
    assert!(
        synced.contains("sent      3 customers, 1 visit and 2 quotes"),
        "{synced}"
    );
    let synced = ok(&mgr, &["sync"]);
    assert!(
        synced.contains("received  3 customers, 1 visit and 2 quotes"),
        "{synced}"
    );
    assert!(
        !synced.contains("items") && !synced.contains("snapshots"),
        "{synced}"
    );

    let approved = ok(
        &mgr,
        &["quote", "approve", &quote, "--reason", "margin is fine"],
    );
    assert!(
        approved.starts_with("Approved quote ")
            && approved.contains("(Q-7) for Baotou Mining Co (total 2501.00 CNY): margin is fine."),
        "{approved}"
    );
    let err = fails(&mgr, &["quote", "approve", &quote]);
    assert!(err.contains("is already approved by Zhang Min"), "{err}");
    let rejected = ok(
        &mgr,
        &["quote", "reject", &second, "--reason", "price too low"],
    );
    assert!(
        rejected.starts_with("Rejected quote ")
            && rejected.contains("(Q-8) for Ordos Logistics")
            && rejected.contains("price too low"),
        "{rejected}"
    );
    let synced = ok(&mgr, &["sync"]);
    assert!(synced.contains("sent      2 quotes"), "{synced}");
    let archived = ok(&rep, &["customer", "archive", "Baotou Coal"]);
    assert!(
        archived.starts_with("Archived customer Baotou Coal ("),
        "{archived}"
    );
    relay.stop();
}

#[test]
fn sync_speaks_of_records_announces_refusals_and_conflicts_and_exits_with_documented_codes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let relay_data = tmp.path().join("relay");
    let relay = start_relay(&relay_data);
    let addr = relay.addr;
    let rep = enrolled_laptop(
        tmp.path(),
        &relay,
        "rep",
        "Li Wei laptop",
        "rep",
        &["north-mines"],
    );
    let mgr = enrolled_laptop(
        tmp.path(),
        &relay,
        "mgr",
        "Zhang Min laptop",
        "manager",
        &["north-mines"],
    );

    // The laptop knows its scopes from its enrolment: another scope needs --outside-grant,
    // instead of a customer that silently leaves `customer list` at the next sync.
    let err = fails(
        &rep,
        &[
            "customer",
            "add",
            "--name",
            "Tianjin Port Services",
            "--scope",
            "south-ports",
        ],
    );
    assert!(
        err.contains("not granted scope \"south-ports\" (granted: north-mines)")
            && err.contains("--outside-grant"),
        "{err}"
    );
    assert!(
        !ok(&rep, &["customer", "list", "--all"]).contains("Tianjin"),
        "nothing was created"
    );
    let run = expect(
        &rep,
        &[
            "customer",
            "add",
            "--name",
            "Tianjin Port Services",
            "--scope",
            "south-ports",
            "--outside-grant",
        ],
        0,
    );
    assert!(
        run.stderr
            .contains("warning: this laptop is not granted scope"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout
            .starts_with("Added customer Tianjin Port Services")
    );
    // The relay refuses it: exit 3, with the reason and the commands.
    let run = expect(&rep, &["sync"], 3);
    assert!(
        run.stdout.contains("The relay refused 1 change"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("outside the device's scopes"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("fieldsync quarantine")
            && run.stdout.contains("fieldsync quarantine --retry"),
        "{}",
        run.stdout
    );
    assert!(!run.stderr.contains("WARN"), "no log lines: {}", run.stderr);
    let report = fieldsync(&rep, &["sync", "--json"]);
    assert_eq!(report.code, 0, "nothing new refused: {}", report.stdout);

    // Domain words, singular and plural.
    ok(&mgr, &["sync"]);
    for name in ["Baotou Mining Co", "Baotou Coal"] {
        ok(
            &mgr,
            &["customer", "add", "--name", name, "--scope", "north-mines"],
        );
    }
    ok(
        &mgr,
        &[
            "visit",
            "log",
            "--customer",
            "Baotou Coal",
            "--notes",
            "Intro",
        ],
    );
    let synced = ok(&mgr, &["sync"]);
    assert!(
        synced.contains("sent      2 customers and 1 visit\n"),
        "{synced}"
    );
    assert!(synced.contains("received  nothing new"), "{synced}");
    let synced = ok(&rep, &["sync"]);
    assert!(
        synced.contains("received  2 customers and 1 visit\n"),
        "{synced}"
    );
    assert!(synced.contains("sent      nothing new"), "{synced}");

    // The same field on two laptops: announced at the sync that brings it.
    ok(
        &rep,
        &[
            "customer",
            "edit",
            "baotou coal",
            "--industry",
            "coal mining",
        ],
    );
    ok(
        &mgr,
        &[
            "customer",
            "edit",
            "baotou coal",
            "--industry",
            "thermal coal",
        ],
    );
    let synced = ok(&rep, &["sync"]);
    assert!(synced.contains("sent      1 customer\n"), "{synced}");
    let synced = ok(&mgr, &["sync"]);
    assert!(
        synced.contains("1 field now holds values edited on two laptops at once")
            && synced.contains("industry of customer Baotou Coal")
            && synced.contains("fieldsync conflicts")
            && synced.contains("fieldsync resolve ID FIELD VALUE"),
        "{synced}"
    );
    assert!(ok(&mgr, &["conflicts"]).contains("Baotou Coal"));
    let resolved = ok(
        &mgr,
        &["resolve", "baotou coal", "industry", "thermal coal"],
    );
    assert!(
        resolved.starts_with("Resolved industry of customer Baotou Coal ("),
        "{resolved}"
    );
    assert_eq!(json(&mgr, &["conflicts", "--json"]), serde_json::json!([]));
    ok(&mgr, &["sync"]);
    let synced = ok(&rep, &["sync"]);
    assert!(!synced.contains("now holds"), "{synced}");
    assert_eq!(
        json(&rep, &["customer", "show", "baotou coal", "--json"])["industry"],
        "thermal coal"
    );

    // The relay is down: exit 4, and the local edit is safe.
    relay.stop();
    ok(
        &rep,
        &["customer", "edit", "baotou coal", "--stage", "opportunity"],
    );
    let run = expect(&rep, &["sync", "--connect-timeout", "1"], 4);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains("no answer from the relay")
            && run
                .stderr
                .contains("Your 1 local change is safe on this laptop")
            && run.stderr.contains("next `fieldsync sync`"),
        "{}",
        run.stderr
    );

    // Back up; IT revokes the rep's laptop: exit 5 in plain words, the edit kept.
    let relay = RelayProcess::start(&relay_data, addr, &[]).expect("the relay restarts");
    relay_ok(&relay_data, &["device", "revoke", "Li Wei laptop"]);
    let run = expect(&rep, &["sync"], 5);
    assert!(
        run.stderr.contains(
            "this laptop's access was revoked by IT; local edits are kept (1 change waiting); \
             ask IT to enrol it again"
        ),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Unauthorized"), "{}", run.stderr);
    let status = ok(&rep, &["status"]);
    assert!(
        status.contains("Last error: this laptop's access was revoked by IT"),
        "{status}"
    );
    assert_eq!(json(&rep, &["status", "--json"])["outbox"], 1);

    // A laptop set up without enrolment does not know its scopes: said, and allowed. On a
    // relay that wants enrolment its sync exits 5 too.
    let stranger = tmp.path().join("stranger");
    ok(
        &stranger,
        &[
            "init",
            "--relay",
            &addr.to_string(),
            "--pin",
            &relay.fingerprint,
        ],
    );
    let run = expect(
        &stranger,
        &["customer", "add", "--name", "Somewhere", "--scope", "west"],
        0,
    );
    assert!(
        run.stderr
            .contains("has not synced yet, so the scopes IT granted it are not known"),
        "{}",
        run.stderr
    );
    let run = expect(&stranger, &["sync"], 5);
    assert!(
        run.stderr
            .contains("this laptop is not enrolled with the relay")
            && run.stderr.contains("fieldsync init --token"),
        "{}",
        run.stderr
    );
    relay.stop();
}

#[test]
fn after_a_relay_restore_the_laptop_says_so_and_what_it_sent_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    let relay_data = tmp.path().join("relay");
    let relay = start_relay(&relay_data);
    let addr = relay.addr;
    let rep = enrolled_laptop(
        tmp.path(),
        &relay,
        "rep",
        "Li Wei laptop",
        "rep",
        &["north-mines"],
    );
    ok(
        &rep,
        &[
            "customer",
            "add",
            "--name",
            "Baotou Mining Co",
            "--scope",
            "north-mines",
        ],
    );
    ok(&rep, &["sync"]);
    let backup = tmp.path().join("backup");
    relay_ok(
        &relay_data,
        &["backup", "--out", backup.to_str().expect("utf-8")],
    );

    // Acknowledged after the backup: two customers and a visit (three changes).
    for name in ["Baotou Coal", "Ordos Logistics"] {
        ok(
            &rep,
            &["customer", "add", "--name", name, "--scope", "north-mines"],
        );
    }
    ok(
        &rep,
        &[
            "visit",
            "log",
            "--customer",
            "ordos",
            "--notes",
            "Site tour",
        ],
    );
    let synced = ok(&rep, &["sync"]);
    assert!(
        synced.contains("sent      2 customers and 1 visit"),
        "{synced}"
    );
    assert!(!synced.contains("restored"), "{synced}");

    relay.stop();
    relay_ok(
        &relay_data,
        &["restore", "--from", backup.to_str().expect("utf-8")],
    );
    let relay = RelayProcess::start(&relay_data, addr, &[]).expect("the restored relay starts");
    let synced = ok(&rep, &["sync"]);
    assert!(
        synced.contains(
            "The relay was restored from a backup since this laptop last synced: this laptop \
             re-sent 3 changes the relay lacked."
        ),
        "{synced}"
    );
    assert!(synced.contains("re-sent   3 changes"), "{synced}");
    // The next sync is an ordinary one again.
    let report = json(&rep, &["sync", "--json"]);
    assert_eq!(report["relay_restored"], false, "{report}");
    assert_eq!(report["repaired"], 0, "{report}");
    // A fresh laptop gets everything from the restored relay.
    let other = enrolled_laptop(
        tmp.path(),
        &relay,
        "other",
        "Zhang Min laptop",
        "manager",
        &["north-mines"],
    );
    let synced = ok(&other, &["sync"]);
    assert!(
        synced.contains("received  3 customers and 1 visit"),
        "{synced}"
    );
    relay.stop();
}

#[test]
fn shell_completions_and_man_pages_are_generated_and_a_wrong_command_line_exits_2() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("laptop");
    for (shell, marker) in [
        ("bash", "_fieldsync()"),
        ("zsh", "#compdef fieldsync"),
        ("fish", "complete -c fieldsync"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let script = ok(&data, &["completions", shell]);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("outside-grant"), "{shell} completes flags");
    }
    assert!(
        !data.exists(),
        "describing the command line touches no data"
    );
    let pages = tmp.path().join("man");
    let out = ok(&data, &["man", "--out", pages.to_str().expect("utf-8")]);
    assert!(out.starts_with("Wrote "), "{out}");
    let main = std::fs::read_to_string(pages.join("fieldsync.1")).expect("fieldsync.1");
    assert!(main.contains(".TH fieldsync"), "{main}");
    assert!(
        main.contains("Exit status"),
        "the exit statuses are documented"
    );
    for page in [
        "fieldsync-sync.1",
        "fieldsync-customer-add.1",
        "fieldsync-quote-approve.1",
    ] {
        assert!(pages.join(page).is_file(), "{page}");
    }
    let run = expect(&data, &["customer", "frobnicate"], 2);
    assert!(
        run.stderr.contains("unrecognized subcommand"),
        "{}",
        run.stderr
    );
}

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
//! - Everything the Rust API does to customers, visits and quotes the CLI does too, and
//!   `--json` prints the record as the API returns it: contacts, addresses, equipment, notes,
//!   role-owned fields (refused in words of roles, exit status 1), lookup by phone, the
//!   timeline; visit status, needs, tasks and comments; quote lines, terms and the status from
//!   draft to order; a record exported on one laptop and imported on another shows the same.

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

/// A laptop set up without a relay to talk to (`init --relay … --pin …`): every record command
/// works offline, in the role given.
fn offline_laptop(tmp: &Path, dir: &str, name: &str, role: &str) -> PathBuf {
    let laptop = tmp.join(dir);
    let pin = "ab".repeat(32);
    ok(
        &laptop,
        &[
            "init",
            "--relay",
            "127.0.0.1:9",
            "--pin",
            &pin,
            "--name",
            name,
            "--role",
            role,
        ],
    );
    laptop
}

/// The object in `list` (a JSON array) whose `key` is `value`.
fn find<'v>(list: &'v Value, key: &str, value: &str) -> &'v Value {
    list.as_array()
        .and_then(|a| a.iter().find(|x| x[key] == value))
        .unwrap_or_else(|| panic!("no {key} = {value:?} in {list}"))
}

/// Exports `id` from `from` and imports it into `to`; the two `--json` outputs agree.
fn carry(tmp: &Path, from: &Path, to: &Path, id: &str) {
    let file = tmp.join(format!("{id}.automerge"));
    let file = file.to_str().expect("utf-8");
    let exported = json(from, &["export", id, "--out", file, "--json"]);
    let imported = json(to, &["import", file, "--json"]);
    assert_eq!(exported, imported);
    assert_eq!(exported["id"], id);
}

#[test]
fn customers_contacts_equipment_and_role_owned_fields_round_trip_through_json() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rep = offline_laptop(tmp.path(), "rep", "Li Wei", "rep");
    let c = json(
        &rep,
        &[
            "customer",
            "add",
            "--name",
            "Baotou Mining Co",
            "--scope",
            "north-mines",
            "--phone",
            "+86 472 555 0101",
            "--json",
        ],
    );
    let id = id_of(&c);

    // Contacts: added, then changed by name; `show --json` has them.
    let c = json(
        &rep,
        &[
            "customer",
            "add-contact",
            "baotou",
            "--name",
            "Wang Fang",
            "--title",
            "Purchasing manager",
            "--phone",
            "+86 138-0000-0001",
            "--purchaser",
            "--json",
        ],
    );
    let wang = find(&c["contacts"], "name", "Wang Fang");
    assert_eq!(wang["title"], "Purchasing manager");
    assert_eq!(wang["is_purchaser"], true);
    assert_eq!(wang["active"], true);
    let wang_id = wang["id"].as_str().expect("contact id").to_string();
    let added = ok(
        &rep,
        &["customer", "add-contact", "baotou", "--name", "Zhao Lei"],
    );
    assert!(
        added.starts_with("Added contact Zhao Lei (") && added.contains("Baotou Mining Co"),
        "{added}"
    );
    ok(
        &rep,
        &[
            "customer",
            "update-contact",
            "baotou",
            "zhao",
            "--inactive",
            "--email",
            "zl@example.com",
            "--notes",
            "moved to Ordos",
        ],
    );
    let c = json(&rep, &["customer", "show", &id, "--json"]);
    let zhao = find(&c["contacts"], "name", "Zhao Lei");
    assert_eq!(zhao["active"], false);
    assert_eq!(zhao["email"], "zl@example.com");
    assert_eq!(zhao["notes"], "moved to Ordos");
    let err = fails(
        &rep,
        &["customer", "update-contact", "baotou", "Li Na", "--active"],
    );
    assert!(
        err.contains(
            "Baotou Mining Co has no contact called or with an id starting with \"Li Na\""
        ),
        "{err}"
    );
    let err = fails(&rep, &["customer", "update-contact", "baotou", "wang"]);
    assert!(err.contains("nothing to change"), "{err}");

    // Addresses and equipment; a date is read as UTC.
    ok(
        &rep,
        &[
            "customer",
            "add-address",
            "baotou",
            "--label",
            "site",
            "--street",
            "12 Steel Rd",
            "--city",
            "Baotou",
        ],
    );
    let c = json(
        &rep,
        &[
            "customer",
            "update-address",
            "baotou",
            "site",
            "--postcode",
            "014010",
            "--archive",
            "--json",
        ],
    );
    let site = find(&c["addresses"], "label", "site");
    assert_eq!(site["postcode"], "014010");
    assert_eq!(site["city"], "Baotou");
    assert_eq!(site["archived"], true);
    ok(
        &rep,
        &[
            "customer",
            "add-equipment",
            "baotou",
            "--model",
            "WL-980",
            "--serial",
            "S-100",
            "--installed",
            "2020-05-01",
            "--status",
            "running",
        ],
    );
    let c = json(
        &rep,
        &[
            "customer",
            "update-equipment",
            "baotou",
            "S-100",
            "--status",
            "down",
            "--installed",
            "2020-05-01T09:30",
            "--json",
        ],
    );
    let unit = find(&c["equipment"], "serial", "S-100");
    assert_eq!(unit["model"], "WL-980");
    assert_eq!(unit["status"], "down");
    assert_eq!(unit["installed_at"], 1_588_325_400_000_i64);
    let err = fails(
        &rep,
        &[
            "customer",
            "add-equipment",
            "baotou",
            "--model",
            "X",
            "--installed",
            "2020-02-30",
        ],
    );
    assert!(err.contains("is not a date like 2026-12-08"), "{err}");
    let help = ok(&rep, &["customer", "add-equipment", "--help"]);
    assert!(help.contains("read as UTC"), "{help}");

    // Notes, product lines, competitors, more fields, a proposed credit limit.
    ok(
        &rep,
        &["customer", "add-note", "baotou", "Prefers morning visits"],
    );
    ok(&rep, &["customer", "add-product-line", "baotou", "loaders"]);
    ok(
        &rep,
        &["customer", "add-competitor", "baotou", "Rival Corp"],
    );
    ok(
        &rep,
        &[
            "customer",
            "edit",
            "baotou",
            "--short-name",
            "Baotou",
            "--business-type",
            "mining",
            "--size",
            "large",
            "--source",
            "trade fair",
        ],
    );
    let proposed = ok(
        &rep,
        &[
            "customer",
            "propose-credit-limit",
            "baotou",
            "500000.50",
            "--currency",
            "cny",
        ],
    );
    assert!(proposed.contains("500000.50 CNY"), "{proposed}");
    let c = json(&rep, &["customer", "show", "baotou", "--json"]);
    assert_eq!(c["notes"][0]["text"], "Prefers morning visits");
    assert_eq!(c["notes"][0]["author"], "Li Wei");
    assert_eq!(c["product_lines"], serde_json::json!(["loaders"]));
    assert_eq!(c["competitors"], serde_json::json!(["Rival Corp"]));
    assert_eq!(c["short_name"], "Baotou");
    assert_eq!(c["business_type"], "mining");
    assert_eq!(c["size"], "large");
    assert_eq!(c["source"], "trade fair");
    assert_eq!(
        c["proposed_credit_limit"],
        serde_json::json!({"amount_minor": 50_000_050, "currency": "CNY"})
    );
    let shown = ok(&rep, &["customer", "show", "baotou"]);
    assert!(
        shown.contains("Contacts:") && shown.contains("Wang Fang, Purchasing manager"),
        "{shown}"
    );

    // Found by phone in any notation, its own number or a contact's.
    for phone in ["+86 472 555 0101", "+864725550101", "472-555-0101"] {
        let found = json(&rep, &["customer", "find-phone", phone, "--json"]);
        assert_eq!(found[0]["id"], id.as_str(), "{phone}: {found}");
    }
    let found = json(&rep, &["customer", "find-phone", "13800000001", "--json"]);
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!(found[0]["id"], id.as_str());
    assert_eq!(
        json(&rep, &["customer", "find-phone", "13900000009", "--json"]),
        serde_json::json!([])
    );

    // Archived and restored.
    let c = json(&rep, &["customer", "archive", "baotou", "--json"]);
    assert_eq!(c["archived"], true);
    let c = json(&rep, &["customer", "unarchive", "baotou", "--json"]);
    assert_eq!(c["archived"], false);

    // The timeline: the customer's visits and quotes.
    ok(
        &rep,
        &[
            "visit",
            "log",
            "--customer",
            "baotou",
            "--notes",
            "Site tour",
        ],
    );
    ok(
        &rep,
        &["quote", "new", "--customer", "baotou", "--currency", "CNY"],
    );
    let timeline = json(&rep, &["customer", "timeline", "baotou", "--json"]);
    let kinds: Vec<&str> = timeline
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.len() == 2 && kinds.contains(&"visit") && kinds.contains(&"quote"),
        "{timeline}"
    );

    // Role-owned fields: the model's refusal, in words of roles, exit status 1.
    let err = fails(
        &rep,
        &[
            "customer",
            "set-credit-limit",
            "baotou",
            "600000",
            "--currency",
            "CNY",
        ],
    );
    assert!(
        err.contains("only a director (or above) may set credit limits")
            && err.contains("works as a rep"),
        "{err}"
    );
    let err = fails(&rep, &["customer", "set-owner", "baotou", "Li Wei"]);
    assert!(
        err.contains("only a manager (or above) may assign owners"),
        "{err}"
    );
    let err = fails(&rep, &["customer", "set-scope", "baotou", "south-ports"]);
    assert!(err.contains("only a manager (or above)"), "{err}");
    let err = fails(&rep, &["customer", "set-grade", "baotou", "A"]);
    assert!(
        err.contains("only an admin (or above) may set grades"),
        "{err}"
    );

    // A manager (the customer carried over by export and import) assigns and moves it, but
    // may not set the credit limit; a director may.
    let mgr = offline_laptop(tmp.path(), "mgr", "Zhang Min", "manager");
    carry(tmp.path(), &rep, &mgr, &id);
    assert_eq!(
        json(
            &mgr,
            &["customer", "set-owner", "baotou", "Li Wei", "--json"]
        )["owner"],
        "Li Wei"
    );
    let moved = json(
        &mgr,
        &["customer", "set-scope", "baotou", "south-ports", "--json"],
    );
    assert_eq!(moved["scope"], "south-ports");
    let err = fails(
        &mgr,
        &[
            "customer",
            "set-credit-limit",
            "baotou",
            "600000",
            "--currency",
            "CNY",
        ],
    );
    assert!(
        err.contains("only a director (or above)") && err.contains("works as a manager"),
        "{err}"
    );
    let director = offline_laptop(tmp.path(), "director", "Chen Jun", "director");
    carry(tmp.path(), &mgr, &director, &id);
    let c = json(
        &director,
        &[
            "customer",
            "set-credit-limit",
            "baotou",
            "600000",
            "--currency",
            "CNY",
            "--json",
        ],
    );
    assert_eq!(
        c["credit_limit"],
        serde_json::json!({"amount_minor": 60_000_000, "currency": "CNY"})
    );
    assert_eq!(c["owner"], "Li Wei");
    assert_eq!(c["contacts"].as_array().map(Vec::len), Some(2));
    assert!(
        c["contacts"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["id"] == wang_id.as_str()))
    );
}

#[test]
fn visits_keep_status_needs_tasks_and_comments() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rep = offline_laptop(tmp.path(), "rep", "Li Wei", "rep");
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
    let c = json(
        &rep,
        &[
            "customer",
            "add-contact",
            "baotou",
            "--name",
            "Wang Fang",
            "--json",
        ],
    );
    let wang = c["contacts"][0]["id"].clone();
    let v = json(
        &rep,
        &[
            "visit",
            "log",
            "--customer",
            "baotou",
            "--notes",
            "Plan the demo",
            "--status",
            "planned",
            "--at",
            "2026-12-08T09:30",
            "--json",
        ],
    );
    let visit = id_of(&v);
    assert_eq!(v["status"], "planned");
    assert_eq!(v["at"], 1_796_722_200_000_i64);

    // Status: done beats cancelled beats planned.
    assert_eq!(
        json(&rep, &["visit", "set-status", &visit, "done", "--json"])["status"],
        "done"
    );
    let said = ok(&rep, &["visit", "set-status", &visit, "planned"]);
    assert!(said.contains("but it stays done"), "{said}");
    assert_eq!(
        json(&rep, &["visit", "show", &visit, "--json"])["status"],
        "done"
    );

    let v = json(
        &rep,
        &[
            "visit",
            "edit",
            &visit,
            "--kind",
            "return_visit",
            "--location",
            "Site office",
            "--notes",
            "Demo went well",
            "--at",
            "2026-12-09",
            "--json",
        ],
    );
    assert_eq!(v["visit_kind"], "return_visit");
    assert_eq!(v["location"], "Site office");
    assert_eq!(v["notes"], "Demo went well");
    assert_eq!(v["at"], 1_796_774_400_000_i64);
    let err = fails(&rep, &["visit", "edit", &visit, "--kind", "party"]);
    assert!(err.contains("unknown visit kind"), "{err}");

    assert_eq!(
        json(&rep, &["visit", "satisfaction", &visit, "4", "--json"])["satisfaction"],
        4
    );
    let err = fails(&rep, &["visit", "satisfaction", &visit, "6"]);
    assert!(err.contains("1 (poor) to 5 (excellent)"), "{err}");
    assert_eq!(
        json(
            &rep,
            &["visit", "add-contact-met", &visit, "wang fang", "--json"]
        )["contacts_met"],
        serde_json::json!([wang])
    );
    let v = json(
        &rep,
        &[
            "visit",
            "add-need",
            &visit,
            "--product-line",
            "loaders",
            "--qty",
            "2",
            "--amount",
            "2500000.50",
            "--timeframe",
            "Q3",
            "--json",
        ],
    );
    assert_eq!(v["needs"][0]["product_line"], "loaders");
    assert_eq!(v["needs"][0]["quantity"], 2);
    assert_eq!(v["needs"][0]["amount_minor"], 250_000_050_i64);

    // Tasks: the open ones of the laptop's own author by default, soonest due first.
    ok(
        &rep,
        &[
            "visit",
            "add-task",
            &visit,
            "--title",
            "Send brochure",
            "--due",
            "2026-12-10",
        ],
    );
    ok(
        &rep,
        &[
            "visit",
            "add-task",
            &visit,
            "--title",
            "Call back",
            "--assignee",
            "Li Wei",
        ],
    );
    // Unassigned tasks of a visit the author logged are theirs too.
    let tasks = json(&rep, &["visit", "tasks", "--json"]);
    assert_eq!(tasks.as_array().map(Vec::len), Some(2), "{tasks}");
    assert_eq!(tasks[0]["title"], "Send brochure");
    assert_eq!(tasks[1]["title"], "Call back");
    ok(
        &rep,
        &[
            "visit",
            "update-task",
            &visit,
            "send brochure",
            "--assignee",
            "Li Wei",
        ],
    );
    let tasks = json(&rep, &["visit", "tasks", "--json"]);
    let titles: Vec<&str> = tasks
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["title"].as_str())
        .collect();
    assert_eq!(titles, ["Send brochure", "Call back"], "{tasks}");
    let v = json(&rep, &["visit", "complete-task", &visit, "call", "--json"]);
    let done = find(&v["tasks"], "title", "Call back");
    assert_eq!(done["done_by"], "Li Wei");
    assert!(done["done_at"].is_i64(), "{done}");
    assert_eq!(
        json(&rep, &["visit", "tasks", "--json"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        json(
            &rep,
            &["visit", "tasks", "--assignee", "Zhang Min", "--json"]
        ),
        serde_json::json!([])
    );

    let v = json(
        &rep,
        &["visit", "add-comment", &visit, "Good work", "--json"],
    );
    assert_eq!(v["comments"][0]["text"], "Good work");
    let shown = ok(&rep, &["visit", "show", &visit]);
    assert!(
        shown.contains("return visit at Baotou Mining Co")
            && shown.contains("Send brochure")
            && shown.contains("met:          Wang Fang"),
        "{shown}"
    );

    // Archived: out of the listing and the tasks, still there with --all.
    assert_eq!(
        json(&rep, &["visit", "archive", &visit, "--json"])["archived"],
        true
    );
    assert_eq!(
        json(&rep, &["visit", "list", "--json"]),
        serde_json::json!([])
    );
    assert_eq!(
        json(&rep, &["visit", "list", "--all", "--json"])[0]["id"],
        visit.as_str()
    );
    assert_eq!(
        json(&rep, &["visit", "tasks", "--json"]),
        serde_json::json!([])
    );
}

#[test]
fn quote_lines_change_the_total_and_the_status_moves_from_draft_to_order() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rep = offline_laptop(tmp.path(), "rep", "Li Wei", "rep");
    let mgr = offline_laptop(tmp.path(), "mgr", "Zhang Min", "manager");
    let customer = id_of(&json(
        &rep,
        &[
            "customer",
            "add",
            "--name",
            "Baotou Mining Co",
            "--scope",
            "north-mines",
            "--json",
        ],
    ));
    let q = json(
        &rep,
        &[
            "quote",
            "new",
            "--customer",
            "baotou",
            "--currency",
            "CNY",
            "--number",
            "Q-7",
            "--valid-until",
            "2026-12-31",
            "--json",
        ],
    );
    let quote = id_of(&q);
    assert_eq!(q["valid_until"], 1_798_675_200_000_i64);
    ok(
        &rep,
        &[
            "quote", "add-line", &quote, "--sku", "WL-980", "--qty", "2", "--price", "1250000",
        ],
    );
    let q = json(
        &rep,
        &[
            "quote", "add-line", &quote, "--sku", "BK-1", "--qty", "4", "--price", "100.25",
            "--json",
        ],
    );
    assert_eq!(q["total"]["amount_minor"], 250_040_100_i64);
    // Line edits change the total: 3 × 1,250,000.00 less 10 %, plus 4 × 100.25.
    let q = json(
        &rep,
        &[
            "quote",
            "update-line",
            &quote,
            "wl-980",
            "--qty",
            "3",
            "--discount",
            "10",
            "--json",
        ],
    );
    assert_eq!(q["total"]["amount_minor"], 337_540_100_i64);
    let line = find(&q["lines"], "sku", "WL-980");
    assert_eq!(line["qty"], 3);
    assert_eq!(line["discount_bp"], 1000);
    let removed = ok(&rep, &["quote", "remove-line", &quote, "BK-1"]);
    assert!(removed.contains("total now 3375000.00 CNY"), "{removed}");
    let q = json(
        &rep,
        &[
            "quote",
            "set",
            &quote,
            "--payment-terms",
            "30 days",
            "--delivery-terms",
            "FOB Tianjin",
            "--customer-response",
            "pending",
            "--json",
        ],
    );
    assert_eq!(q["payment_terms"], "30 days");
    assert_eq!(q["delivery_terms"], "FOB Tianjin");
    assert_eq!(q["customer_response"], "pending");
    assert_eq!(
        json(
            &rep,
            &["quote", "follow-up", &quote, "2026-12-20", "--json"]
        )["follow_up_due"],
        1_797_724_800_000_i64
    );
    assert_eq!(
        json(
            &rep,
            &[
                "quote",
                "add-note",
                &quote,
                "Wants March delivery",
                "--json"
            ]
        )["notes"][0]["text"],
        "Wants March delivery"
    );

    // Sending needs an approval; a rep may not approve: the model's reason, exit status 1.
    let err = fails(&rep, &["quote", "send", &quote]);
    assert!(err.contains("is still a draft"), "{err}");
    assert_eq!(
        json(&rep, &["quote", "submit", &quote, "--json"])["status"],
        "submitted"
    );
    let err = fails(&rep, &["quote", "send", &quote]);
    assert!(err.contains("waits for a manager's approval"), "{err}");
    let run = expect(&rep, &["quote", "approve", &quote], 1);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr
            .contains("only a manager (or above) may approve quotes")
            && run.stderr.contains("works as a rep"),
        "{}",
        run.stderr
    );
    let err = fails(&rep, &["quote", "set-owner", &quote, "Li Wei"]);
    assert!(
        err.contains("only a manager (or above) may assign owners"),
        "{err}"
    );

    // The manager's laptop gets the customer and the quote by export and import.
    carry(tmp.path(), &rep, &mgr, &customer);
    carry(tmp.path(), &rep, &mgr, &quote);
    let q = json(
        &mgr,
        &[
            "quote",
            "approve",
            &quote,
            "--reason",
            "margin is fine",
            "--json",
        ],
    );
    assert_eq!(q["status"], "approved");
    assert_eq!(q["approvals"][0]["approver"], "Zhang Min");
    assert_eq!(q["approvals"][0]["reason"], "margin is fine");
    // A changed line makes a new draft revision: the approval is void.
    let q = json(
        &mgr,
        &[
            "quote",
            "update-line",
            &quote,
            "WL-980",
            "--price",
            "1200000",
            "--json",
        ],
    );
    assert_eq!(q["status"], "draft");
    assert_eq!(q["revision"], 2);
    assert!(q["approvals"][0]["void"].is_string(), "{q}");
    ok(&mgr, &["quote", "submit", &quote]);
    ok(&mgr, &["quote", "approve", &quote]);
    let q = json(&mgr, &["quote", "send", &quote, "--json"]);
    assert_eq!(q["status"], "sent");
    assert!(q["sent_at"].is_i64() && q["follow_up_due"].is_i64(), "{q}");
    let due = json(&mgr, &["quote", "due", "--at", "2999-01-01", "--json"]);
    assert_eq!(due[0]["id"], quote.as_str(), "{due}");
    assert_eq!(
        json(&mgr, &["quote", "due", "--at", "2000-01-01", "--json"]),
        serde_json::json!([])
    );
    let err = fails(
        &mgr,
        &["quote", "update-line", &quote, "WL-980", "--qty", "1"],
    );
    assert!(err.contains("fixed once sent"), "{err}");
    assert_eq!(
        json(&mgr, &["quote", "win", &quote, "--json"])["status"],
        "won"
    );
    let err = fails(&mgr, &["quote", "lose", &quote]);
    assert!(err.contains("is already won"), "{err}");
    assert_eq!(
        json(&mgr, &["quote", "convert", &quote, "--json"])["status"],
        "converted"
    );
    assert_eq!(
        json(&mgr, &["quote", "set-owner", &quote, "Li Wei", "--json"])["owner"],
        "Li Wei"
    );

    // A second quote, lost with a reason; then what the customer was offered, and a SKU's
    // prices.
    let second = id_of(&json(
        &mgr,
        &[
            "quote",
            "new",
            "--customer",
            "baotou",
            "--currency",
            "CNY",
            "--json",
        ],
    ));
    ok(
        &mgr,
        &[
            "quote", "add-line", &second, "--sku", "WL-980", "--qty", "1", "--price", "1300000",
        ],
    );
    ok(&mgr, &["quote", "submit", &second]);
    ok(&mgr, &["quote", "approve", &second]);
    ok(&mgr, &["quote", "send", &second]);
    let q = json(
        &mgr,
        &[
            "quote",
            "lose",
            &second,
            "--reason",
            "price too high",
            "--json",
        ],
    );
    assert_eq!(q["status"], "lost");
    assert_eq!(q["win_loss_reason"], "price too high");
    let history = json(&mgr, &["quote", "history", "baotou", "--json"]);
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");
    assert_eq!(find(&history, "id", &quote)["status"], "converted");
    let prices = json(&mgr, &["quote", "price-history", "WL-980", "--json"]);
    let mut unit_prices: Vec<i64> = prices
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|l| l["unit_price_minor"].as_i64())
        .collect();
    unit_prices.sort_unstable();
    assert_eq!(unit_prices, [120_000_000, 130_000_000], "{prices}");
    assert_eq!(
        json(&mgr, &["quote", "archive", &second, "--json"])["archived"],
        true
    );
    assert_eq!(
        json(&mgr, &["quote", "history", "baotou", "--json"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn an_exported_record_imported_on_another_laptop_shows_the_same() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rep = offline_laptop(tmp.path(), "rep", "Li Wei", "rep");
    let other = offline_laptop(tmp.path(), "other", "Zhang Min", "manager");
    let customer = id_of(&json(
        &rep,
        &[
            "customer",
            "add",
            "--name",
            "Baotou Mining Co",
            "--scope",
            "north-mines",
            "--phone",
            "+86 138-0000-0001",
            "--json",
        ],
    ));
    ok(
        &rep,
        &["customer", "add-contact", "baotou", "--name", "Wang Fang"],
    );
    let visit = id_of(&json(
        &rep,
        &[
            "visit",
            "log",
            "--customer",
            "baotou",
            "--notes",
            "Site tour",
            "--json",
        ],
    ));
    ok(
        &rep,
        &["visit", "add-task", &visit, "--title", "Send brochure"],
    );
    let quote = id_of(&json(
        &rep,
        &[
            "quote",
            "new",
            "--customer",
            "baotou",
            "--currency",
            "CNY",
            "--json",
        ],
    ));
    ok(
        &rep,
        &[
            "quote", "add-line", &quote, "--sku", "WL-980", "--qty", "2", "--price", "1250.50",
        ],
    );
    for (kind, id) in [
        ("customer", &customer),
        ("visit", &visit),
        ("quote", &quote),
    ] {
        let file = tmp.path().join(format!("{kind}.automerge"));
        let file = file.to_str().expect("utf-8");
        let said = ok(&rep, &["export", id, "--out", file]);
        assert!(said.starts_with(&format!("Exported {kind} ")), "{said}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file).expect("file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
        }
        assert_eq!(
            json(&other, &["import", file, "--json"]),
            serde_json::json!({"id": id, "kind": kind})
        );
        // Importing again merges: nothing changes.
        let said = ok(&other, &["import", file]);
        assert!(
            said.contains("merged with the copy this laptop had"),
            "{said}"
        );
        assert_eq!(
            json(&rep, &[kind, "show", id, "--json"]),
            json(&other, &[kind, "show", id, "--json"]),
            "{kind}"
        );
    }
    assert_eq!(
        json(&other, &["customer", "find-phone", "13800000001", "--json"])[0]["id"],
        customer.as_str()
    );

    // Not a record, not a file, nowhere to write: said plainly, exit status 1.
    let junk = tmp.path().join("junk");
    std::fs::write(&junk, b"not a record").expect("write");
    let err = fails(&other, &["import", junk.to_str().expect("utf-8")]);
    assert!(
        err.contains("is it a record written by `fieldsync export`?"),
        "{err}"
    );
    let err = fails(&other, &["import", "/nonexistent/record"]);
    assert!(err.contains("cannot read /nonexistent/record"), "{err}");
    let err = fails(&rep, &["export", &customer, "--out", "/nonexistent/dir/x"]);
    assert!(
        err.contains("there is no directory /nonexistent/dir"),
        "{err}"
    );
}

#[test]
fn today_and_the_customer_brief_show_what_the_app_shows() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rep = offline_laptop(tmp.path(), "rep", "Li Wei", "rep");
    let c = json(
        &rep,
        &[
            "customer",
            "add",
            "--name",
            "Erdos Quarry",
            "--scope",
            "north",
            "--phone",
            "+86 477 555 0101",
            "--json",
        ],
    );
    let customer = id_of(&c);
    json(
        &rep,
        &[
            "customer",
            "add",
            "--name",
            "Hulun Grassland Coop",
            "--scope",
            "north",
            "--json",
        ],
    );
    ok(
        &rep,
        &["customer", "add-contact", "erdos", "--name", "Wang Fang"],
    );
    ok(
        &rep,
        &[
            "customer",
            "add-equipment",
            "erdos",
            "--model",
            "CAT 797F",
            "--serial",
            "LAJ00412",
        ],
    );
    let v = json(
        &rep,
        &[
            "visit",
            "log",
            "--customer",
            "erdos",
            "--notes",
            "Tyres worn",
            "--status",
            "done",
            "--json",
        ],
    );
    let visit = id_of(&v);
    ok(
        &rep,
        &[
            "visit",
            "add-task",
            &visit,
            "--title",
            "Send the tyre quote",
            "--due",
            "2026-12-10",
        ],
    );
    let planned = json(
        &rep,
        &[
            "visit",
            "log",
            "--customer",
            "hulun",
            "--kind",
            "care",
            "--notes",
            "Spring festival",
            "--status",
            "planned",
            "--at",
            "2099-01-01",
            "--json",
        ],
    );
    let q = json(
        &rep,
        &[
            "quote",
            "new",
            "--customer",
            "erdos",
            "--currency",
            "CNY",
            "--number",
            "Q-9",
            "--json",
        ],
    );
    let quote = id_of(&q);
    ok(
        &rep,
        &[
            "quote", "add-line", &quote, "--sku", "TYRE-59", "--qty", "2", "--price", "12500.00",
        ],
    );

    let t = json(&rep, &["today", "--json"]);
    assert_eq!(t["open_tasks"][0]["title"], "Send the tyre quote");
    // The care visit is far ahead: not yet a greeting, and not a planned sales visit either.
    assert_eq!(t["greetings"].as_array().map(Vec::len), Some(0));
    assert_eq!(t["planned_visits"].as_array().map(Vec::len), Some(0));
    // Both customers are new: not overdue for a visit within 30 days.
    assert_eq!(t["not_visited"].as_array().map(Vec::len), Some(0));
    // With no grace at all, Hulun (never visited) comes before Erdos (visited just now).
    let t = json(&rep, &["today", "--idle-days", "0", "--json"]);
    let idle = t["not_visited"].as_array().expect("list");
    assert_eq!(idle.len(), 2, "{t}");
    assert_eq!(idle[0]["customer"]["name"], "Hulun Grassland Coop");
    assert!(idle[0]["days"].is_null());
    assert_eq!(idle[1]["customer"]["name"], "Erdos Quarry");
    assert_eq!(idle[1]["days"], 0);
    let said = ok(&rep, &["today", "--idle-days", "0"]);
    assert!(
        said.contains("Your open tasks (1)") && said.contains("Send the tyre quote"),
        "{said}"
    );
    assert!(
        said.contains("Hulun Grassland Coop  never visited"),
        "{said}"
    );
    assert_eq!(id_of(&planned).len(), 36);

    let b = json(&rep, &["customer", "brief", "erdos", "--json"]);
    assert_eq!(b["customer"]["id"], customer);
    assert_eq!(b["customer"]["equipment"][0]["model"], "CAT 797F");
    assert_eq!(b["open_tasks"][0]["title"], "Send the tyre quote");
    assert_eq!(b["price_history"][0]["sku"], "TYRE-59");
    assert_eq!(b["price_history"][0]["unit_price_minor"], 1_250_000);
    assert_eq!(b["timeline"].as_array().map(Vec::len), Some(2));
    assert!(b["changed"]["since"].is_null(), "never synced");
    assert_eq!(b["changed"]["waiting"].as_array().map(Vec::len), Some(3));
    let said = ok(&rep, &["customer", "brief", "erdos"]);
    for part in [
        "Wang Fang",
        "CAT 797F",
        "TYRE-59",
        "Send the tyre quote",
        "never synced",
    ] {
        assert!(said.contains(part), "{part} in {said}");
    }
}

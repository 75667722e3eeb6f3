//! Encryption at rest of a laptop's replica, with real `fieldsync` (and `fieldsync-relay`)
//! processes, each laptop in a data directory of its own:
//!
//! - `a_kill_at_any_moment_of_in_place_encryption_loses_nothing`: `fieldsync encrypt` of a
//!   plain, enrolled replica (500 customers, a text and a photo-sized attachment, a device
//!   credential) is SIGKILLed at a range of moments, each on a fresh copy: while starting and
//!   stretching the passphrase (before the key file exists), at each step of the move (key
//!   file written, replica exported, renamed over, attachment store exported, renamed over)
//!   and at times across it, and not at all. Every time, the next `fieldsync customer list`
//!   (with the passphrase) lists every customer; a kill before the key file leaves a plain
//!   replica that `fieldsync encrypt` then encrypts, any later one a move that the next open
//!   finishes; the known customer is found by its phone with its attachment's bytes and the
//!   credential intact; and no file of the data directory holds the customer's name, phone,
//!   the attachment's text or the credential (which the same scan finds in the plain replica).
//! - `a_wrong_passphrase_is_refused_and_changes_no_byte`: `customer list`, `customer add`,
//!   `unlock` and `rekey` (with and without `--keep-key`) with a wrong passphrase exit 1
//!   saying "wrong passphrase", and every file in the data directory is byte for byte what it
//!   was.
//! - `an_encrypted_laptop_syncs_and_keeps_nothing_readable_on_disk`: a laptop created with
//!   `init --encrypt --token` adds a customer with a phone and a text attachment and syncs
//!   through a relay process; a second (plain) laptop receives both. No file of the encrypted
//!   laptop's data directory holds the name, the phone (as typed or as digits), the
//!   attachment's text or the device credential's secret (the credential file is sealed, not
//!   JSON), while the same scan of the plain laptop finds them (so the scan can see them).
//! - `encrypting_in_place_seals_a_credential_kept_in_config_toml`: a credential IT gave with
//!   `init --credential` leaves `config.toml` when the replica is encrypted, sealed instead.
//! - `unlock_keeps_the_replica_open_for_the_session_until_lock`: after `fieldsync unlock --for
//!   1h` commands run without the passphrase and without a terminal (only for that replica);
//!   after `fieldsync lock` they fail saying the replica is locked.
//! - `rekey_moves_to_a_new_key_and_only_the_new_passphrase_opens`: a rekey SIGKILLed between
//!   moving the replica and the attachment store is finished by the new passphrase alone;
//!   after `fieldsync rekey` the old passphrase is refused and the new one opens everything;
//!   `rekey --keep-key` changes the passphrase without rewriting the data files.
//! - Two `#[ignore]`d tests show a bug (see "Refused while another program has the replica
//!   open" below).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use fieldsync_client::vault::Unlock;
use fieldsync_client::{Client, CustomerFilter, CustomerId, Durability, NewCustomer, StoreOptions};
use fieldsync_tests::procs::{self, RelayProcess};
use serde_json::Value;

/// The customer whose data must never be readable on an encrypted laptop's disk.
const NAME: &str = "Baotou Heavy Haulage";
/// Its phone, as typed.
const PHONE: &str = "+86 472 555 0199";
/// Its phone, digits only (as the phone index keeps it).
const PHONE_DIGITS: &str = "864725550199";
/// The text of the file attached to it.
const ATTACHED_TEXT: &str = "Haulage contract BHH-7731: 40 tipper trucks, deposit received";
/// The territory everything is created in.
const SCOPE: &str = "inner-mongolia";

const PASSPHRASE: &str = "tundra-lantern-cobalt";
const OTHER_PASSPHRASE: &str = "saffron-quarry-violet";
const THIRD_PASSPHRASE: &str = "harbour-mosaic-ember";

/// A relay for laptops that never sync (`init` needs one).
const NO_RELAY: &str = "127.0.0.1:9";
const NO_PIN: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest any one command may take before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Processes.

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

/// The passphrases a command is given in its environment (none unless set here: the test
/// process's own environment is never passed on).
#[derive(Clone, Copy, Default)]
struct Keys<'a> {
    passphrase: Option<&'a str>,
    new_passphrase: Option<&'a str>,
}

/// With the passphrase `p`.
fn pass(p: &str) -> Keys<'_> {
    Keys {
        passphrase: Some(p),
        new_passphrase: None,
    }
}

/// Without any passphrase.
const NONE: Keys<'static> = Keys {
    passphrase: None,
    new_passphrase: None,
};

/// A `fieldsync` command on `data` (stdin not a terminal), given `keys`.
fn command(data: &Path, keys: Keys<'_>, args: &[&str]) -> std::process::Command {
    let mut c = procs::laptop_command(data).expect("the fieldsync binary");
    c.args(args)
        .env_remove("FIELDSYNC_PASSPHRASE")
        .env_remove("FIELDSYNC_NEW_PASSPHRASE");
    if let Some(p) = keys.passphrase {
        c.env("FIELDSYNC_PASSPHRASE", p);
    }
    if let Some(p) = keys.new_passphrase {
        c.env("FIELDSYNC_NEW_PASSPHRASE", p);
    }
    c
}

/// Runs `fieldsync ARGS` to its end (killed after `LIMIT`).
fn fieldsync(data: &Path, keys: Keys<'_>, args: &[&str]) -> Run {
    let mut child = command(data, keys, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fieldsync");
    // Drain the pipes while waiting, so a chatty command never blocks on them.
    let out = std::thread::spawn({
        let mut stdout = child.stdout.take().expect("stdout");
        move || {
            let mut s = Vec::new();
            std::io::Read::read_to_end(&mut stdout, &mut s).ok();
            s
        }
    });
    let err = std::thread::spawn({
        let mut stderr = child.stderr.take().expect("stderr");
        move || {
            let mut s = Vec::new();
            std::io::Read::read_to_end(&mut stderr, &mut s).ok();
            s
        }
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for fieldsync") {
            break s;
        }
        if Instant::now() > deadline {
            kill9(&mut child);
            panic!("fieldsync {args:?} did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
    .into()
}

/// Runs a command that must exit with `code`.
fn expect(data: &Path, keys: Keys<'_>, args: &[&str], code: i32) -> Run {
    let run = fieldsync(data, keys, args);
    assert_eq!(
        run.code,
        code,
        "fieldsync {args:?} in {}: exit {} instead of {code}\nstdout: {}\nstderr: {}",
        data.display(),
        run.code,
        run.stdout,
        run.stderr
    );
    run
}

/// Runs a command that must succeed; returns its stdout.
fn ok(data: &Path, keys: Keys<'_>, args: &[&str]) -> String {
    expect(data, keys, args, 0).stdout
}

/// Runs a command that must fail (status 1, nothing on stdout); returns its stderr.
fn fails(data: &Path, keys: Keys<'_>, args: &[&str]) -> String {
    let run = expect(data, keys, args, 1);
    assert!(
        run.stdout.is_empty(),
        "fieldsync {args:?} failed but printed {}",
        run.stdout
    );
    run.stderr
}

fn json(data: &Path, keys: Keys<'_>, args: &[&str]) -> Value {
    let out = ok(data, keys, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// An encrypted laptop that never syncs, its passphrase `p`.
fn encrypted_laptop(data: &Path, p: &str) {
    let out = ok(
        data,
        pass(p),
        &[
            "init",
            "--encrypt",
            "--no-keyring",
            "--relay",
            NO_RELAY,
            "--pin",
            NO_PIN,
        ],
    );
    assert!(out.contains("Encrypted"), "init --encrypt printed {out}");
}

/// Adds the known customer with its phone and the text attachment (written beside `data`).
fn add_known_customer(data: &Path, keys: Keys<'_>) {
    ok(
        data,
        keys,
        &[
            "customer", "add", "--name", NAME, "--scope", SCOPE, "--phone", PHONE,
        ],
    );
    let file = data.with_extension("contract.txt");
    std::fs::write(&file, ATTACHED_TEXT).expect("write the file to attach");
    let file = file.to_str().expect("a UTF-8 path");
    ok(data, keys, &["customer", "attach", NAME, file]);
}

/// The names of the customers `customer list --json` lists.
fn listed_names(data: &Path, keys: Keys<'_>) -> Vec<String> {
    json(data, keys, &["customer", "list", "--json"])
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["name"].as_str().expect("a name").to_string())
        .collect()
}

/// Saves the known customer's (only) attachment with `attachment get` and returns its bytes.
fn attachment_bytes(data: &Path, keys: Keys<'_>) -> Vec<u8> {
    let list = json(data, keys, &["attachment", "list", NAME, "--json"]);
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), 1, "{NAME} has one attachment: {list:?}");
    let id = list[0]["attachment"]["id"].as_str().expect("an id");
    let out = data.with_extension("got.txt");
    let _ = std::fs::remove_file(&out);
    let target = out.to_str().expect("a UTF-8 path");
    ok(
        data,
        keys,
        &["attachment", "get", NAME, id, "--out", target],
    );
    std::fs::read(&out).expect("the saved attachment")
}

// ---------------------------------------------------------------------------------------------
// The data directory, read from outside.

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read the data directory") {
            let p = e.expect("a directory entry").path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                // (A file removed in between is not there to hold anything.)
                out.insert(p, bytes);
            }
        }
    }
    out
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut from = 0;
    while let Some(i) = hay[from..].iter().position(|&b| b == first) {
        let at = from + i + 1;
        if hay.len() - at >= rest.len() && &hay[at..at + rest.len()] == rest {
            return true;
        }
        from = at;
    }
    false
}

/// Which of `needles` some file under `dir` holds, as `(file name, needle)`.
fn found_in(dir: &Path, needles: &[&str]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (path, bytes) in files(dir) {
        for n in needles {
            if contains(&bytes, n.as_bytes()) {
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                found.push((name, n.to_string()));
            }
        }
    }
    found
}

/// The BLAKE3 hash of every file under `dir`, by name.
fn hashes(dir: &Path) -> BTreeMap<PathBuf, String> {
    files(dir)
        .into_iter()
        .map(|(p, b)| (p, blake3::hash(&b).to_hex().to_string()))
        .collect()
}

/// The key file's state: `None` (no key file: a plain replica), or whether it lists a `key`
/// and a `next` (a move to a new key under way).
fn key_file(data: &Path) -> Option<(bool, bool, String)> {
    let bytes = std::fs::read(data.join("replica.db.keys")).ok()?;
    let v: Value = serde_json::from_slice(&bytes).expect("the key file is JSON");
    let id = v["key"]["id"].as_str().unwrap_or("").to_string();
    Some((!v["key"].is_null(), !v["next"].is_null(), id))
}

/// Whether the SQLite file at `path` is plain (starts with SQLite's header).
fn plain_sqlite(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"SQLite format 3\0"))
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL during `fieldsync encrypt`.

/// How many customers besides the known one.
const FILLER: usize = 500;

/// The plain replica's device credential.
const SEED_SECRET: &str = "seed-credential-3f9c27d1b08e4a65";

/// The size of a filler customer's attachment.
const PHOTO_BYTES: usize = 2_000_000;

/// Bytes that do not compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Creates the plain replica to encrypt in `dir` (in this process, through the library: the
/// CLI would take minutes for so many customers); returns the attachment's bytes.
fn plain_replica(dir: &Path) -> Vec<u8> {
    std::fs::create_dir_all(dir).expect("seed dir");
    let opts = StoreOptions {
        durability: Durability::Normal,
        ..StoreOptions::default()
    };
    let client = Client::open_with(dir.join("replica.db"), opts).expect("a plain replica");
    let customers = client.customers();
    let mut first = None;
    for i in 0..FILLER {
        let id = customers
            .create(NewCustomer {
                scope: SCOPE.into(),
                name: format!("Filler Customer {i:05}"),
                phone: Some(format!("+86 10 5550 {:04}", i % 10_000)),
                industry: Some("mining".into()),
                ..Default::default()
            })
            .expect("create a customer");
        first.get_or_insert(id);
    }
    // A photo-sized attachment, so moving the attachment store takes a while too.
    let photo = noise(PHOTO_BYTES, 7);
    client
        .attachments()
        .attach_bytes(
            first.expect("a filler customer"),
            "site.jpg",
            Some("application/octet-stream"),
            &photo,
            "",
        )
        .expect("attach the photo");
    let known = customers
        .create(NewCustomer {
            scope: SCOPE.into(),
            name: NAME.into(),
            phone: Some(PHONE.into()),
            industry: Some("logistics".into()),
            ..Default::default()
        })
        .expect("create the known customer");
    let mut contract = Vec::new();
    for i in 0..200 {
        contract.extend_from_slice(format!("{ATTACHED_TEXT} (page {i})\n").as_bytes());
    }
    client
        .attachments()
        .attach_bytes(known, "contract.txt", None, &contract, "")
        .expect("attach the contract");
    // Enrolled: its device credential is in the (plain) credential file beside it.
    fieldsync_client::sync::save_credential(&client, SEED_SECRET, Some(NO_RELAY))
        .expect("the credential");
    drop(client);
    contract
}

/// Copies every file of `from` into a new directory `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for e in std::fs::read_dir(from).expect("read the seed") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy a file");
    }
}

/// What a kill of `fieldsync encrypt` waits for before its delay starts.
#[derive(Clone, Copy, Debug)]
enum Mark {
    /// The process started.
    Start,
    /// This file (in the data directory) exists.
    Exists(&'static str),
    /// This SQLite file is no longer plain (renamed over by its encrypted copy).
    Encrypted(&'static str),
}

impl Mark {
    fn reached(self, data: &Path) -> bool {
        match self {
            Self::Start => true,
            Self::Exists(f) => data.join(f).exists(),
            Self::Encrypted(f) => !plain_sqlite(&data.join(f)),
        }
    }
}

/// When to SIGKILL `fieldsync encrypt`: `after` this long past `mark`; never when `None`.
#[derive(Clone, Copy, Debug)]
struct KillAt(Option<(Mark, Duration)>);

/// The key file, beside the replica.
const KEYS: &str = "replica.db.keys";
/// The attachment store.
const ATTACHMENTS: &str = "replica.attachments.db";

/// What became of one run of a command SIGKILLed at some point.
#[derive(Debug)]
struct Killed {
    /// It finished on its own (exit 0) rather than being killed.
    finished: bool,
    /// From its start to the key file's appearance, if seen.
    key_file_after: Option<Duration>,
    /// From its start to its end.
    ended_after: Duration,
}

/// Runs `fieldsync encrypt --no-keyring` on `data`, SIGKILLed as `kill` says.
fn encrypt_killed(data: &Path, kill: KillAt) -> Killed {
    run_killed(data, pass(PASSPHRASE), &["encrypt", "--no-keyring"], kill)
}

/// Runs `fieldsync ARGS` on `data`, SIGKILLed as `kill` says; it must succeed if not killed.
fn run_killed(data: &Path, keys: Keys<'_>, args: &[&str], kill: KillAt) -> Killed {
    // (The command is made before the clock starts: the first one may build the binary.)
    let mut cmd = command(data, keys, args);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn fieldsync");
    let mut key_file_after = None;
    let mut marked: Option<Instant> = None;
    loop {
        if key_file_after.is_none() && data.join(KEYS).exists() {
            key_file_after = Some(start.elapsed());
        }
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(
                status.success(),
                "fieldsync {args:?} failed on its own: {status}"
            );
            return Killed {
                finished: true,
                key_file_after,
                ended_after: start.elapsed(),
            };
        }
        if let KillAt(Some((mark, after))) = kill {
            if marked.is_none() && mark.reached(data) {
                marked = Some(Instant::now());
            }
            if marked.is_some_and(|m| m.elapsed() >= after) {
                kill9(&mut child);
                return Killed {
                    finished: false,
                    key_file_after,
                    ended_after: start.elapsed(),
                };
            }
        }
        assert!(start.elapsed() < LIMIT, "fieldsync {args:?} hangs");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Opens the replica in `data` in this process with the passphrase; checks the known customer
/// is found by its phone, its attachment holds `contract` and the device credential is the
/// seed's; returns how many customers.
fn check_in_process(data: &Path, contract: &[u8]) -> usize {
    let unlock = Unlock {
        no_keyring: true,
        no_session: true,
        ..Unlock::passphrase(PASSPHRASE)
    };
    let client = Client::open_unlocked(data.join("replica.db"), StoreOptions::default(), &unlock)
        .expect("the replica opens with the passphrase");
    let by_phone = client
        .customers()
        .find_by_phone(PHONE)
        .expect("find by phone");
    assert_eq!(
        by_phone.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        [NAME],
        "the known customer is found by its phone"
    );
    let id: CustomerId = by_phone[0].id;
    let atts = client.attachments().list(id).expect("its attachments");
    assert_eq!(atts.len(), 1, "{NAME} keeps its attachment");
    let bytes = client
        .attachments()
        .read(atts[0].attachment.hash)
        .expect("the attachment's bytes are here");
    assert!(bytes == contract, "the attachment's bytes are intact");
    assert_eq!(
        fieldsync_client::sync::load_credential(&client)
            .expect("the credential")
            .as_deref(),
        Some(SEED_SECRET),
        "the device credential is kept"
    );
    client
        .customers()
        .list(&CustomerFilter::new())
        .expect("list")
        .len()
}

#[test]
fn a_kill_at_any_moment_of_in_place_encryption_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seed = tmp.path().join("seed");
    let t = Instant::now();
    let contract = plain_replica(&seed);
    let total = FILLER + 1;
    eprintln!(
        "plain replica with {total} customers made in {:?}",
        t.elapsed()
    );
    // The control: the scan does find the customer in the plain replica's files.
    let plain_found = found_in(&seed, &[NAME, PHONE_DIGITS, ATTACHED_TEXT, SEED_SECRET]);
    for needle in [NAME, ATTACHED_TEXT, SEED_SECRET] {
        assert!(
            plain_found.iter().any(|(_, n)| n == needle),
            "the scan finds {needle:?} in the plain replica: {plain_found:?}"
        );
    }

    // An uninterrupted run first (the binary built before, so only the command is timed):
    // how long until the key file appears (the passphrase stretch), and the move after it.
    procs::binary(procs::CLIENT_BIN).expect("the fieldsync binary");
    let whole = tmp.path().join("whole");
    copy_dir(&seed, &whole);
    let run = encrypt_killed(&whole, KillAt(None));
    let key_at = run.key_file_after.expect("the key file was seen");
    let moving = run.ended_after.saturating_sub(key_at);
    eprintln!(
        "fieldsync encrypt: key file after {key_at:?}, done after {:?}",
        run.ended_after
    );

    let at = |mark, after| KillAt(Some((mark, after)));
    let zero = Duration::ZERO;
    let mut kills = vec![
        // Before the key file: while starting, while stretching the passphrase.
        at(Mark::Start, zero),
        at(Mark::Start, key_at / 2),
        // Each step of the move: the key file written, the replica exported, renamed over
        // (encrypted), the attachment store exported, renamed over.
        at(Mark::Exists(KEYS), zero),
        at(Mark::Exists("replica.db.encrypting"), zero),
        at(Mark::Encrypted("replica.db"), zero),
        at(Mark::Exists("replica.attachments.db.encrypting"), zero),
        at(Mark::Encrypted(ATTACHMENTS), zero),
    ];
    // And at times across the move.
    for i in 1..=2 {
        kills.push(at(Mark::Exists(KEYS), moving * i / 3));
    }
    kills.push(KillAt(None));

    let mut outcomes = Vec::new();
    for (round, kill) in kills.into_iter().enumerate() {
        let t = Instant::now();
        let data = tmp.path().join(format!("round-{round}"));
        copy_dir(&seed, &data);
        let run = encrypt_killed(&data, kill);
        let state = match key_file(&data) {
            None => "plain (no key file)",
            Some((_, true, _)) => "moving",
            Some((true, false, _)) => "encrypted",
            Some((false, false, _)) => unreachable!("a key file with no key"),
        };
        let db_plain = plain_sqlite(&data.join("replica.db"));
        let att_plain = plain_sqlite(&data.join(ATTACHMENTS));
        let what = format!(
            "round {round} ({kill:?}): {} after {:?}, {state}, replica.db {}, attachments {}",
            if run.finished { "finished" } else { "killed" },
            run.ended_after,
            if db_plain { "plain" } else { "encrypted" },
            if att_plain { "plain" } else { "encrypted" },
        );

        // Nothing is lost: the next command lists every customer.
        let names = listed_names(&data, pass(PASSPHRASE));
        assert_eq!(
            names.len(),
            total,
            "{what}: customers listed after the kill"
        );
        assert!(names.iter().any(|n| n == NAME), "{what}: {NAME} is listed");

        match key_file(&data) {
            // Killed before the key file existed: still plain, and encrypting again works.
            None => {
                assert!(db_plain && att_plain, "{what}: no key file, yet not plain");
                ok(&data, pass(PASSPHRASE), &["encrypt", "--no-keyring"]);
            }
            // The open finished what the kill interrupted.
            Some((true, false, _)) => {}
            Some(other) => panic!(
                "{what}: after the next open the key file is {other:?}: the move was not finished"
            ),
        }
        assert_eq!(
            key_file(&data).map(|(k, n, _)| (k, n)),
            Some((true, false)),
            "{what}: encrypted, no move pending"
        );
        assert!(!plain_sqlite(&data.join("replica.db")), "{what}");
        assert!(!plain_sqlite(&data.join(ATTACHMENTS)), "{what}");
        assert_eq!(check_in_process(&data, &contract), total, "{what}");
        let found = found_in(
            &data,
            &[NAME, PHONE, PHONE_DIGITS, ATTACHED_TEXT, SEED_SECRET],
        );
        assert!(
            found.is_empty(),
            "{what}: plaintext on disk after the encryption finished: {found:?}"
        );
        eprintln!("{what} (checked in {:?})", t.elapsed());
        outcomes.push((state, db_plain, att_plain));
    }
    // The kills did land in each stage (else the test would prove less than it says).
    for (stage, wanted) in [
        ("before the key file", ("plain (no key file)", true, true)),
        ("before any file moved", ("moving", true, true)),
        (
            "between the replica and the attachment store",
            ("moving", false, true),
        ),
        ("after the encryption finished", ("encrypted", false, false)),
    ] {
        assert!(
            outcomes.contains(&wanted),
            "no kill landed {stage}: {outcomes:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A wrong passphrase.

#[test]
fn a_wrong_passphrase_is_refused_and_changes_no_byte() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("laptop");
    encrypted_laptop(&data, PASSPHRASE);
    add_known_customer(&data, pass(PASSPHRASE));
    let before = hashes(&data);
    assert!(
        before.keys().any(|p| p.ends_with("replica.db")),
        "{before:?}"
    );

    let wrong = Keys {
        passphrase: Some(OTHER_PASSPHRASE),
        new_passphrase: Some(THIRD_PASSPHRASE),
    };
    for args in [
        &["customer", "list", "--json"][..],
        &["customer", "add", "--name", "Erdos Coal", "--scope", SCOPE],
        &["unlock", "--for", "1h"],
        &["rekey", "--no-keyring"],
        &["rekey", "--keep-key", "--no-keyring"],
    ] {
        let err = fails(&data, wrong, args);
        assert!(
            err.contains("wrong passphrase"),
            "fieldsync {args:?} with a wrong passphrase said: {err}"
        );
        assert_eq!(
            hashes(&data),
            before,
            "fieldsync {args:?} with a wrong passphrase changed the data directory"
        );
    }
    // Nothing was unlocked for the session by the failed `unlock` either.
    let err = fails(&data, NONE, &["customer", "list"]);
    assert!(err.contains("locked"), "{err}");
    // And the right passphrase still opens it, with everything.
    assert_eq!(listed_names(&data, pass(PASSPHRASE)), [NAME]);
}

// ---------------------------------------------------------------------------------------------
// 3. End to end through a relay.

fn relay_ok(relay: &Path, args: &[&str]) -> String {
    let out = procs::relay_command(relay, args)
        .expect("the relay binary")
        .output()
        .expect("run fieldsync-relay");
    assert!(
        out.status.success(),
        "fieldsync-relay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// IT enrols a laptop with `fieldsync-relay device enroll`; returns the token.
fn enrolment_token(relay: &RelayProcess, name: &str) -> String {
    let addr = relay.addr.to_string();
    let printed = relay_ok(
        &relay.data,
        &[
            "device",
            "enroll",
            "--name",
            name,
            "--role",
            "rep",
            "--relay-addr",
            &addr,
            "--scope",
            SCOPE,
        ],
    );
    let token = printed.lines().last().expect("the token line").trim();
    assert!(token.starts_with("fsyn1."), "not a token: {printed}");
    token.to_string()
}

#[test]
fn an_encrypted_laptop_syncs_and_keeps_nothing_readable_on_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = RelayProcess::start(
        &tmp.path().join("relay"),
        "127.0.0.1:0".parse().expect("addr"),
        &[],
    )
    .expect("the relay process starts");

    // The encrypted laptop: created encrypted and enrolled in one `init`.
    let secure = tmp.path().join("secure");
    let token = enrolment_token(&relay, "Li Wei");
    ok(
        &secure,
        pass(PASSPHRASE),
        &[
            "init",
            "--encrypt",
            "--no-keyring",
            "--token",
            &token,
            "--name",
            "Li Wei",
        ],
    );
    add_known_customer(&secure, pass(PASSPHRASE));
    ok(&secure, pass(PASSPHRASE), &["sync"]);

    // A plain laptop receives the customer and the attachment's bytes.
    let plain = tmp.path().join("plain");
    let token = enrolment_token(&relay, "Wang Fang");
    ok(
        &plain,
        NONE,
        &["init", "--token", &token, "--name", "Wang Fang"],
    );
    ok(&plain, NONE, &["sync"]);
    assert_eq!(listed_names(&plain, NONE), [NAME]);
    let shown = json(&plain, NONE, &["customer", "show", NAME, "--json"]);
    assert_eq!(shown["phones"][0]["raw"], PHONE, "{shown}");
    assert_eq!(attachment_bytes(&plain, NONE), ATTACHED_TEXT.as_bytes());
    // (It also syncs back: the encrypted laptop's credential still opens.)
    ok(&secure, pass(PASSPHRASE), &["sync"]);

    // The device credential's secret, read through the replica's key.
    let secret = {
        let unlock = Unlock {
            no_keyring: true,
            no_session: true,
            ..Unlock::passphrase(PASSPHRASE)
        };
        let client =
            Client::open_unlocked(secure.join("replica.db"), StoreOptions::default(), &unlock)
                .expect("the replica opens with its passphrase");
        fieldsync_client::sync::load_credential(&client)
            .expect("the credential")
            .expect("the laptop is enrolled")
    };
    let credential = std::fs::read(secure.join("replica.db.credential")).expect("credential");
    assert!(
        !credential.starts_with(b"{"),
        "the encrypted laptop's credential file is plain JSON"
    );
    let config = std::fs::read_to_string(secure.join("config.toml")).expect("config.toml");
    assert!(!config.contains("credential"), "config.toml: {config}");

    let needles = [NAME, PHONE, PHONE_DIGITS, ATTACHED_TEXT, secret.as_str()];
    let found = found_in(&secure, &needles);
    assert!(
        found.is_empty(),
        "the encrypted laptop's data directory holds plaintext: {found:?}"
    );
    // The same scan of the plain laptop finds them: the scan would have seen them.
    let plain_secret = std::fs::read_to_string(plain.join("replica.db.credential"))
        .expect("the plain laptop's credential");
    assert!(plain_secret.starts_with('{'), "{plain_secret}");
    let found = found_in(&plain, &[NAME, ATTACHED_TEXT]);
    for needle in [NAME, ATTACHED_TEXT] {
        assert!(
            found.iter().any(|(_, n)| n == needle),
            "the scan does not find {needle:?} on the plain laptop: {found:?}"
        );
    }
    relay.stop();
}

/// A laptop given its credential by IT without a token (`init --credential`, kept in
/// `config.toml`) and then encrypted in place keeps the credential only sealed.
#[test]
fn encrypting_in_place_seals_a_credential_kept_in_config_toml() {
    const SECRET: &str = "it-issued-credential-8d41f0c2a7e3";
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("laptop");
    ok(
        &data,
        NONE,
        &[
            "init",
            "--relay",
            NO_RELAY,
            "--pin",
            NO_PIN,
            "--credential",
            SECRET,
        ],
    );
    let config = std::fs::read_to_string(data.join("config.toml")).expect("config.toml");
    assert!(config.contains(SECRET), "the control: {config}");

    ok(&data, pass(PASSPHRASE), &["encrypt", "--no-keyring"]);
    let config = std::fs::read_to_string(data.join("config.toml")).expect("config.toml");
    assert!(
        !config.contains("credential"),
        "config.toml keeps the credential of an encrypted replica: {config}"
    );
    let found = found_in(&data, &[SECRET]);
    assert!(found.is_empty(), "the credential in the clear: {found:?}");
    // The sync still finds it, through the replica's key.
    let unlock = Unlock {
        no_keyring: true,
        no_session: true,
        ..Unlock::passphrase(PASSPHRASE)
    };
    let client = Client::open_unlocked(data.join("replica.db"), StoreOptions::default(), &unlock)
        .expect("the replica opens with its passphrase");
    assert_eq!(
        fieldsync_client::sync::load_credential(&client)
            .expect("the credential")
            .as_deref(),
        Some(SECRET)
    );
}

// ---------------------------------------------------------------------------------------------
// Refused while another program has the replica open (a `fieldsync sync --watch`, the
// desktop app): `encrypt` and `rekey` check that before they write anything, so the refusal
// changes nothing and the replica opens as before.

#[test]
fn a_refused_encrypt_of_a_replica_in_use_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("laptop");
    ok(&data, NONE, &["init", "--relay", NO_RELAY, "--pin", NO_PIN]);
    ok(
        &data,
        NONE,
        &["customer", "add", "--name", NAME, "--scope", SCOPE],
    );
    // Another program has the replica open.
    let other = Client::open(data.join("replica.db")).expect("open");
    let err = fails(&data, pass(PASSPHRASE), &["encrypt", "--no-keyring"]);
    assert!(err.contains("open in another program"), "{err}");
    assert!(
        key_file(&data).is_none(),
        "the refused encryption left a key file: {:?}",
        key_file(&data)
    );
    assert_eq!(listed_names(&data, NONE), [NAME]);
    drop(other);
}

#[test]
fn a_refused_rekey_of_a_replica_in_use_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("laptop");
    encrypted_laptop(&data, PASSPHRASE);
    ok(
        &data,
        pass(PASSPHRASE),
        &["customer", "add", "--name", NAME, "--scope", SCOPE],
    );
    let unlock = Unlock {
        no_keyring: true,
        no_session: true,
        ..Unlock::passphrase(PASSPHRASE)
    };
    let other = Client::open_unlocked(data.join("replica.db"), StoreOptions::default(), &unlock)
        .expect("open");
    // (No file of the replica is read in this process while `other` is open: closing any
    // descriptor of a file drops all of this process's POSIX locks on it, SQLite's too.)
    let err = fails(
        &data,
        Keys {
            passphrase: Some(PASSPHRASE),
            new_passphrase: Some(OTHER_PASSPHRASE),
        },
        &["rekey", "--no-keyring"],
    );
    assert!(err.contains("open in another program"), "{err}");
    assert_eq!(
        key_file(&data).map(|(k, n, _)| (k, n)),
        Some((true, false)),
        "the refused rekey left a pending move"
    );
    // The old passphrase still opens it, with the other program running and after.
    assert_eq!(listed_names(&data, pass(PASSPHRASE)), [NAME]);
    drop(other);
    assert_eq!(listed_names(&data, pass(PASSPHRASE)), [NAME]);
}

// ---------------------------------------------------------------------------------------------
// 4. unlock / lock.

/// Runs `fieldsync lock` on `data` when dropped, so a failed test leaves no key unlocked for
/// the rest of the session.
struct LockOnDrop<'a>(&'a Path);

impl Drop for LockOnDrop<'_> {
    fn drop(&mut self) {
        let _ = command(self.0, NONE, &["lock"]).output();
    }
}

#[test]
fn unlock_keeps_the_replica_open_for_the_session_until_lock() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("laptop");
    let other = tmp.path().join("other");
    encrypted_laptop(&data, PASSPHRASE);
    encrypted_laptop(&other, PASSPHRASE);
    let _locks = (LockOnDrop(&data), LockOnDrop(&other));
    ok(
        &data,
        pass(PASSPHRASE),
        &[
            "customer", "add", "--name", NAME, "--scope", SCOPE, "--phone", PHONE,
        ],
    );

    let err = fails(&data, NONE, &["customer", "list"]);
    assert!(err.contains("locked"), "before unlock: {err}");

    let out = ok(&data, pass(PASSPHRASE), &["unlock", "--for", "1h"]);
    assert!(out.contains("Unlocked for 1 hour"), "{out}");
    // No passphrase, no terminal: reads and writes work.
    assert_eq!(listed_names(&data, NONE), [NAME]);
    ok(
        &data,
        NONE,
        &["customer", "add", "--name", "Erdos Coal", "--scope", SCOPE],
    );
    assert_eq!(listed_names(&data, NONE).len(), 2);
    // Only this replica: another with the same passphrase stays locked.
    let err = fails(&other, NONE, &["customer", "list"]);
    assert!(err.contains("locked"), "another replica: {err}");

    ok(&data, NONE, &["lock"]);
    let err = fails(&data, NONE, &["customer", "list"]);
    assert!(
        err.contains("encrypted and locked"),
        "after lock, without the passphrase: {err}"
    );
    // The passphrase still opens it, with both customers.
    assert_eq!(listed_names(&data, pass(PASSPHRASE)).len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 5. rekey.

#[test]
fn rekey_moves_to_a_new_key_and_only_the_new_passphrase_opens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("laptop");
    encrypted_laptop(&data, PASSPHRASE);
    add_known_customer(&data, pass(PASSPHRASE));
    // A second customer with a photo-sized attachment, so the attachment store takes a while
    // to move to the new key.
    ok(
        &data,
        pass(PASSPHRASE),
        &["customer", "add", "--name", "Erdos Coal", "--scope", SCOPE],
    );
    let photo = noise(PHOTO_BYTES, 11);
    let photo_file = tmp.path().join("site.bin");
    std::fs::write(&photo_file, &photo).expect("write the photo");
    ok(
        &data,
        pass(PASSPHRASE),
        &[
            "customer",
            "attach",
            "Erdos Coal",
            photo_file.to_str().expect("UTF-8"),
        ],
    );
    let (_, _, old_id) = key_file(&data).expect("a key file");
    let old_files = hashes(&data);
    let rekey_keys = Keys {
        passphrase: Some(PASSPHRASE),
        new_passphrase: Some(OTHER_PASSPHRASE),
    };

    // A rekey SIGKILLed between moving the replica and moving the attachment store: the new
    // passphrase alone finishes it (the old key is sealed under the new one).
    let cut = tmp.path().join("cut");
    copy_dir(&data, &cut);
    let run = run_killed(
        &cut,
        rekey_keys,
        &["rekey", "--no-keyring"],
        KillAt(Some((
            Mark::Exists("replica.attachments.db.encrypting"),
            Duration::ZERO,
        ))),
    );
    assert!(!run.finished, "the rekey ended before the kill: {run:?}");
    assert_eq!(
        key_file(&cut).map(|(k, n, _)| (k, n)),
        Some((true, true)),
        "killed while moving"
    );
    let before = hashes(&cut);
    let err = fails(&cut, pass(PASSPHRASE), &["customer", "list"]);
    assert!(
        err.contains("wrong passphrase"),
        "the old passphrase during an interrupted rekey: {err}"
    );
    assert_eq!(hashes(&cut), before, "the old passphrase changed files");
    assert_eq!(
        listed_names(&cut, pass(OTHER_PASSPHRASE)),
        ["Baotou Heavy Haulage", "Erdos Coal"]
    );
    let (key, next, _) = key_file(&cut).expect("a key file");
    assert!(key && !next, "the next open finished the rekey");
    assert_eq!(
        attachment_bytes(&cut, pass(OTHER_PASSPHRASE)),
        ATTACHED_TEXT.as_bytes()
    );
    let list = json(
        &cut,
        pass(OTHER_PASSPHRASE),
        &["attachment", "list", "Erdos Coal", "--json"],
    );
    let photo_id = list[0]["attachment"]["id"]
        .as_str()
        .expect("the photo's id");
    let got = tmp.path().join("site.got");
    ok(
        &cut,
        pass(OTHER_PASSPHRASE),
        &[
            "attachment",
            "get",
            "Erdos Coal",
            photo_id,
            "--out",
            got.to_str().expect("UTF-8"),
        ],
    );
    assert!(
        std::fs::read(&got).expect("the photo") == photo,
        "the photo is intact"
    );

    // An uninterrupted rekey.
    let out = ok(&data, rekey_keys, &["rekey", "--no-keyring"]);
    assert!(out.contains("New data key"), "{out}");
    let (key, next, new_id) = key_file(&data).expect("a key file");
    assert!(key && !next, "the rekey finished");
    assert_ne!(new_id, old_id, "a new data key");
    let new_files = hashes(&data);
    for f in ["replica.db", ATTACHMENTS, "replica.db.credential"] {
        let f = data.join(f);
        if let Some(old) = old_files.get(&f) {
            assert_ne!(
                new_files.get(&f),
                Some(old),
                "{} was not rewritten",
                f.display()
            );
        }
    }

    let err = fails(&data, pass(PASSPHRASE), &["customer", "list"]);
    assert!(
        err.contains("wrong passphrase"),
        "the old passphrase: {err}"
    );
    assert_eq!(listed_names(&data, pass(OTHER_PASSPHRASE)).len(), 2);
    let shown = json(
        &data,
        pass(OTHER_PASSPHRASE),
        &["customer", "show", NAME, "--json"],
    );
    assert_eq!(shown["phones"][0]["raw"], PHONE, "{shown}");
    assert_eq!(
        attachment_bytes(&data, pass(OTHER_PASSPHRASE)),
        ATTACHED_TEXT.as_bytes()
    );
    let found = found_in(&data, &[NAME, PHONE, PHONE_DIGITS, ATTACHED_TEXT]);
    assert!(found.is_empty(), "plaintext after the rekey: {found:?}");

    // `--keep-key`: a new passphrase for the same data key; the data files are not rewritten.
    let before = hashes(&data);
    let out = ok(
        &data,
        Keys {
            passphrase: Some(OTHER_PASSPHRASE),
            new_passphrase: Some(THIRD_PASSPHRASE),
        },
        &["rekey", "--keep-key", "--no-keyring"],
    );
    assert!(out.contains("New protection"), "{out}");
    let after = hashes(&data);
    for f in ["replica.db", ATTACHMENTS] {
        let f = data.join(f);
        assert_eq!(after.get(&f), before.get(&f), "{} changed", f.display());
    }
    assert_ne!(
        after.get(&data.join(KEYS)),
        before.get(&data.join(KEYS)),
        "the key file holds the new passphrase's wrap"
    );
    let err = fails(&data, pass(OTHER_PASSPHRASE), &["customer", "list"]);
    assert!(
        err.contains("wrong passphrase"),
        "the old passphrase: {err}"
    );
    assert_eq!(listed_names(&data, pass(THIRD_PASSPHRASE)).len(), 2);
}

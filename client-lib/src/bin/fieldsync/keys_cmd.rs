//! Encryption at rest from the command line: `init --encrypt` and `encrypt` (a new or a plain
//! replica), `unlock` / `lock` (keep the unlocked key for a while in this login session),
//! `rekey` (a fresh data key, or `--keep-key` for only a new passphrase), and opening an
//! encrypted replica for every other command.
//!
//! Passphrases come from `--passphrase-file`, `$FIELDSYNC_PASSPHRASE`, or a prompt on the
//! terminal; new ones from `--new-passphrase-file`, `$FIELDSYNC_NEW_PASSPHRASE`, or a prompt
//! asked twice. They are never taken as command-line arguments (which other users can list).

use std::time::Duration;

use fieldsync_client::vault::{self, Protection, Unlock, VaultError};
use zeroize::Zeroizing;

use super::*;

/// The passphrase environment variable.
const PASSPHRASE_ENV: &str = "FIELDSYNC_PASSPHRASE";
/// The new passphrase's environment variable (`rekey`).
const NEW_PASSPHRASE_ENV: &str = "FIELDSYNC_NEW_PASSPHRASE";

#[derive(Args, Debug, Clone, Default)]
pub(super) struct KeyArgs {
    /// Read the passphrase from the first line of this file [default: $FIELDSYNC_PASSPHRASE,
    /// else ask on the terminal]
    #[arg(long, value_name = "FILE")]
    pub(super) passphrase_file: Option<PathBuf>,
    /// Do not keep the key in the OS keyring: only the passphrase opens the replica
    #[arg(long)]
    pub(super) no_keyring: bool,
}

#[derive(Args, Debug)]
pub(super) struct UnlockArgs {
    /// How long the key stays unlocked (e.g. 30m, 8h, 2d)
    #[arg(long = "for", value_name = "DURATION", default_value = "8h", value_parser = parse_duration)]
    pub(super) ttl: Duration,
    #[command(flatten)]
    pub(super) keys: KeyArgs,
}

#[derive(Args, Debug)]
pub(super) struct RekeyArgs {
    /// Keep the data key and only change how it is protected (a new passphrase, or adding or
    /// dropping the keyring): instant, the files are not rewritten
    #[arg(long)]
    pub(super) keep_key: bool,
    /// Read the new passphrase from the first line of this file [default:
    /// $FIELDSYNC_NEW_PASSPHRASE, else ask twice on the terminal]
    #[arg(long, value_name = "FILE")]
    pub(super) new_passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    pub(super) keys: KeyArgs,
}

/// `30m`, `8h`, `2d`, `90s`, or a number of seconds.
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30m, 8h, 2d)"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: use s, m, h or d")),
    };
    n.checked_mul(secs)
        .filter(|&t| t > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is not a usable duration"))
}

fn read_first_line(path: &Path) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the passphrase file {}", path.display()))?,
    );
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        bail!("the passphrase file {} is empty", path.display());
    }
    Ok(Zeroizing::new(line.to_string()))
}

/// The passphrase given without asking: the file, else the environment.
fn given_passphrase(file: Option<&Path>, env: &str) -> Result<Option<Zeroizing<String>>> {
    if let Some(f) = file {
        return read_first_line(f).map(Some);
    }
    Ok(std::env::var(env)
        .ok()
        .filter(|p| !p.is_empty())
        .map(Zeroizing::new))
}

fn prompt(text: &str) -> Result<Zeroizing<String>> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "the replica is encrypted: give its passphrase in ${PASSPHRASE_ENV} or --passphrase-file, or run `fieldsync unlock` first"
        );
    }
    Ok(Zeroizing::new(
        rpassword::prompt_password(text).context("cannot read the passphrase")?,
    ))
}

/// A new passphrase: given, or asked twice.
fn new_passphrase(file: Option<&Path>, env: &str) -> Result<Zeroizing<String>> {
    if let Some(p) = given_passphrase(file, env)? {
        return check_strength(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("give the new passphrase in ${env} or a passphrase file");
    }
    let first = prompt("New passphrase: ")?;
    let again = prompt("Repeat it: ")?;
    if *first != *again {
        bail!("the two passphrases differ; nothing was changed");
    }
    check_strength(first)
}

fn check_strength(p: Zeroizing<String>) -> Result<Zeroizing<String>> {
    if p.chars().count() < 8 {
        bail!("the passphrase must have at least 8 characters");
    }
    Ok(p)
}

/// Opens the replica at `path`, encrypted or not: with a key kept by `fieldsync unlock`, the
/// OS keyring, `$FIELDSYNC_PASSPHRASE`, or (on a terminal) the passphrase asked once.
pub(super) fn open_replica(path: &Path) -> Result<Client> {
    open_replica_with(path, false)
}

/// [`open_replica`]; `renewal`: also past the offline lease (for a sync, which renews it).
pub(super) fn open_replica_with(path: &Path, renewal: bool) -> Result<Client> {
    let open = |unlock: &Unlock| {
        if renewal {
            Client::open_for_renewal(path, Default::default(), unlock)
        } else {
            Client::open_unlocked(path, Default::default(), unlock)
        }
    };
    let unlock = Unlock {
        passphrase: given_passphrase(None, PASSPHRASE_ENV)?,
        ..Unlock::default()
    };
    match open(&unlock) {
        Err(ClientError::Vault(VaultError::Locked)) if std::io::stdin().is_terminal() => {
            let unlock = Unlock {
                passphrase: Some(prompt("Passphrase: ")?),
                ..Unlock::default()
            };
            Ok(open(&unlock)?)
        }
        r => Ok(r?),
    }
}

/// Encrypts the replica at `path` (new, or plain in place): the passphrase always (the way
/// back if the keyring is lost), the keyring too unless `--no-keyring` or there is none.
pub(super) fn encrypt_replica(path: &Path, keys: &KeyArgs, json: bool) -> Result<()> {
    let passphrase = new_passphrase(keys.passphrase_file.as_deref(), PASSPHRASE_ENV)?;
    let mut protection = Protection {
        passphrase: Some(passphrase),
        keyring: !keys.no_keyring,
    };
    let existed = path.exists();
    let (_, no_keyring) = vault::with_keyring_if_any(&mut protection, |p| vault::encrypt(path, p))?;
    if let Some(why) = no_keyring
        && !json
    {
        eprintln!("fieldsync: note: no OS keyring ({why}); the passphrase alone opens the replica");
    }
    if !json {
        println!(
            "Encrypted {}{}; opens with {}.",
            path.display(),
            if existed { " in place" } else { "" },
            if protection.keyring {
                "the OS keyring or the passphrase"
            } else {
                "the passphrase"
            }
        );
    }
    Ok(())
}

/// `fieldsync encrypt`.
pub(super) fn encrypt_cmd(dir: &Path, keys: &KeyArgs) -> Result<()> {
    let path = dir.join(REPLICA_FILE);
    if !path.exists() {
        bail!(
            "no replica in {}: `fieldsync init --encrypt` creates an encrypted one",
            dir.display()
        );
    }
    if !vault::is_encrypted(&path) {
        move_config_credential(dir)?;
    }
    encrypt_replica(&path, keys, false)
}

/// A device credential IT issued without a token (`init --credential`) is kept in
/// `config.toml` beside a plain replica; an encrypted replica keeps it sealed in its credential
/// file instead. Before a plain replica is encrypted in place, the credential moves into the
/// credential file (still plain), which the encryption then seals with the rest: a crash at any
/// point leaves it where the sync finds it, and never in the clear once encrypted.
fn move_config_credential(dir: &Path) -> Result<()> {
    if !dir.join(CONFIG_FILE).exists() {
        return Ok(());
    }
    let mut cfg = load_config(dir)?;
    let Some(secret) = cfg.credential.take() else {
        return Ok(());
    };
    let client = open(dir)?;
    sync::save_credential(&client, &secret, Some(&cfg.relay))?;
    drop(client);
    save_config(dir, &cfg)
}

/// The key of the encrypted replica at `path`, asking for the passphrase if needed.
fn current_key(path: &Path, keys: &KeyArgs) -> Result<fieldsync_core::store::cipher::DatabaseKey> {
    if !vault::is_encrypted(path) {
        bail!(
            "{} is not encrypted (`fieldsync encrypt` encrypts it)",
            path.display()
        );
    }
    let mut unlock = Unlock {
        passphrase: given_passphrase(keys.passphrase_file.as_deref(), PASSPHRASE_ENV)?,
        no_keyring: keys.no_keyring,
        no_session: false,
    };
    match vault::unlock(path, &unlock) {
        Err(VaultError::Locked) => {
            unlock.passphrase = Some(prompt("Passphrase: ")?);
            vault::unlock(path, &unlock)?.ok_or_else(|| anyhow!("the replica is not encrypted"))
        }
        r => r?.ok_or_else(|| anyhow!("the replica is not encrypted")),
    }
}

/// `fieldsync unlock --for 8h`.
pub(super) fn unlock_cmd(dir: &Path, args: &UnlockArgs) -> Result<()> {
    let path = dir.join(REPLICA_FILE);
    let mut keys = args.keys.clone();
    // Unlocking is about the passphrase: the keyring needs no unlocking.
    keys.no_keyring = true;
    let key = current_key(&path, &keys)?;
    vault::remember(&path, &key, args.ttl)?;
    println!(
        "Unlocked for {} in this login session (`fieldsync lock` locks it now).",
        spell_duration(args.ttl)
    );
    Ok(())
}

fn spell_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = match s {
        _ if s.is_multiple_of(86_400) => (s / 86_400, "day"),
        _ if s.is_multiple_of(3600) => (s / 3600, "hour"),
        _ if s.is_multiple_of(60) => (s / 60, "minute"),
        _ => (s, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// `fieldsync lock`.
pub(super) fn lock_cmd(dir: &Path) -> Result<()> {
    let path = dir.join(REPLICA_FILE);
    vault::forget(&path)?;
    let removed = vault::remove_opened(&path)?;
    println!("Locked: the passphrase (or the OS keyring) opens the replica again.");
    if removed > 0 {
        println!(
            "Removed {} opened for viewing.",
            plural(u64::from(removed), "file")
        );
    }
    Ok(())
}

/// `fieldsync rekey`.
pub(super) fn rekey_cmd(dir: &Path, args: &RekeyArgs) -> Result<()> {
    let path = dir.join(REPLICA_FILE);
    let key = current_key(&path, &args.keys)?;
    let new = new_passphrase(args.new_passphrase_file.as_deref(), NEW_PASSPHRASE_ENV)?;
    let mut protection = Protection {
        passphrase: Some(new),
        keyring: !args.keys.no_keyring,
    };
    let run = |p: &Protection| {
        if args.keep_key {
            vault::protect_with_key(&path, &key, p)
        } else {
            vault::rekey_with_key(&path, &key, p).map(|_| ())
        }
    };
    let (_, no_keyring) = vault::with_keyring_if_any(&mut protection, run)?;
    if let Some(why) = no_keyring {
        eprintln!("fieldsync: note: no OS keyring ({why}); the passphrase alone opens the replica");
    }
    vault::forget(&path)?;
    println!(
        "{} {}; opens with {}.",
        if args.keep_key {
            "New protection for the key of"
        } else {
            "New data key for"
        },
        path.display(),
        if protection.keyring {
            "the OS keyring or the new passphrase"
        } else {
            "the new passphrase"
        }
    );
    Ok(())
}

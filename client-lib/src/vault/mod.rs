//! Encryption at rest of a replica: its data key, how the key is protected, and moving the
//! replica's files from one key to another without losing them to a crash.
//!
//! An encrypted replica's files — the replica (`replica.db`, its WAL and temporary files),
//! the attachment store (`replica.attachments.db`) and the device credential
//! (`replica.db.credential`) — are encrypted with one random 256-bit *data key*: the SQLite
//! files by SQLCipher ([`fieldsync_core::store::cipher`]), the credential sealed with
//! ChaCha20-Poly1305. The data key is stored only sealed, in the key file beside the replica
//! (`replica.db.keys`, `keyfile.rs`), under one or both of:
//!
//! - a random wrapping key in the **OS keyring** (`keyring.rs`): the replica opens without a
//!   question for the logged-in user, and for nobody who only has the disk;
//! - a key stretched from a **passphrase** with Argon2id (shared and headless machines, and the
//!   way back when the keyring is lost).
//!
//! [`unlock`] finds the data key (an unlocked copy kept for the session by `fieldsync unlock`
//! (`session.rs`), the keyring, then the passphrase); [`encrypt`] encrypts a plain replica in
//! place; [`rekey`] moves it to a fresh data key; [`protect`] changes how the same key is
//! protected; [`shred`] destroys the wrapped keys and then the files (remote wipe).
//!
//! **Crash safety.** Encrypting and rekeying write the new key into the key file's `next` slot
//! *before* any file moves, then move each file by exporting it to a new file under the new key
//! and renaming that over the old one (atomic), then make `next` the key. A crash at any point
//! leaves each file under the old key or the new, with both in the key file; the next
//! [`unlock`] finishes the move. A rekey seals the old key under the new one, so the new
//! passphrase alone finishes it.

pub(crate) mod keyfile;
mod keyring;
mod seal;
mod session;

pub(crate) use seal::random as fill_random;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fieldsync_core::attachment::local::store_path as attachments_path;
use fieldsync_core::store::cipher::{self, DatabaseKey, FileState};
use rusqlite::OpenFlags;
use zeroize::Zeroizing;

pub use keyfile::{ARGON2_MEMORY_KIB, ARGON2_PASSES, key_file_path};
use keyfile::{KeyFile, Slot, Wrap};

/// Why the data key could not be had, or a file could not move.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The replica is encrypted and nothing at hand opens it.
    #[error(
        "the replica is encrypted and locked: give its passphrase (FIELDSYNC_PASSPHRASE, or `fieldsync unlock` for a while)"
    )]
    Locked,
    /// The passphrase given does not open the replica's key.
    #[error("wrong passphrase: the replica's key does not open with it (nothing was changed)")]
    WrongPassphrase,
    /// `encrypt` on a replica that already is.
    #[error("the replica is already encrypted")]
    AlreadyEncrypted,
    /// A key operation on a plain replica.
    #[error("the replica is not encrypted")]
    NotEncrypted,
    /// Neither a passphrase nor the keyring was asked for.
    #[error("nothing would protect the key: give a passphrase, or use the OS keyring")]
    NoProtection,
    /// Another program holds the replica open.
    #[error("{0} is open in another program: close it and try again")]
    InUse(PathBuf),
    /// The OS keyring failed or is not there.
    #[error("the OS keyring: {0}")]
    Keyring(String),
    /// Keeping an unlocked key for the session failed.
    #[error("keeping the unlocked key: {0}")]
    Session(String),
    /// The key file is damaged or of another format.
    #[error("{0}")]
    KeyFile(String),
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// SQLite failed while moving a file to a key.
    #[error("moving {0} to its new key: {1}")]
    Sqlite(PathBuf, #[source] rusqlite::Error),
    /// The system's random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// What may be used to open an encrypted replica's data key.
#[derive(Clone, Default)]
pub struct Unlock {
    /// The passphrase, if the caller has one.
    pub passphrase: Option<Zeroizing<String>>,
    /// Do not look in the OS keyring.
    pub no_keyring: bool,
    /// Do not look for a key kept by `fieldsync unlock`.
    pub no_session: bool,
}

impl Unlock {
    /// Unlock with this passphrase (after the session and the keyring).
    pub fn passphrase(p: impl Into<String>) -> Self {
        Self {
            passphrase: Some(Zeroizing::new(p.into())),
            ..Self::default()
        }
    }
}

impl std::fmt::Debug for Unlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unlock")
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("no_keyring", &self.no_keyring)
            .field("no_session", &self.no_session)
            .finish()
    }
}

/// How a data key is protected: a passphrase, the OS keyring, or both.
#[derive(Clone, Default)]
pub struct Protection {
    /// Seal the key under this passphrase.
    pub passphrase: Option<Zeroizing<String>>,
    /// Seal the key under a random key kept in the OS keyring.
    pub keyring: bool,
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protection")
            .field("passphrase", &self.passphrase.is_some())
            .field("keyring", &self.keyring)
            .finish()
    }
}

/// Runs `f` (an [`encrypt`], [`rekey_with_key`], [`protect_with_key`]) with `p`; when `p`
/// asks for the OS keyring and there is none, runs it again with the passphrase alone (when
/// there is one). Returns `f`'s result and, after such a fallback, why the keyring was not
/// used; `p.keyring` then says `false`.
pub fn with_keyring_if_any<T>(
    p: &mut Protection,
    f: impl Fn(&Protection) -> Result<T, VaultError>,
) -> Result<(T, Option<String>), VaultError> {
    match f(p) {
        Err(VaultError::Keyring(why)) if p.keyring && p.passphrase.is_some() => {
            p.keyring = false;
            f(p).map(|t| (t, Some(why)))
        }
        r => r.map(|t| (t, None)),
    }
}

/// How an encrypted replica's key is protected now (for `fieldsync status`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    /// A passphrase opens it.
    pub passphrase: bool,
    /// The OS keyring opens it.
    pub keyring: bool,
    /// A move to a new key was interrupted and finishes at the next unlock.
    pub moving: bool,
}

/// Whether the replica at `replica` is encrypted (has a key file).
pub fn is_encrypted(replica: &Path) -> bool {
    key_file_path(replica).exists()
}

/// How the replica's key is protected; `None` for a plain replica.
pub fn key_info(replica: &Path) -> Result<Option<KeyInfo>, VaultError> {
    let Some(kf) = KeyFile::read(&key_file_path(replica))? else {
        return Ok(None);
    };
    let slot = kf.key.as_ref().or(kf.next.as_ref());
    let has = |p: fn(&Wrap) -> bool| slot.is_some_and(|s| s.wraps.iter().any(p));
    Ok(Some(KeyInfo {
        passphrase: has(Wrap::is_passphrase),
        keyring: has(|w| !w.is_passphrase()),
        moving: kf.next.is_some(),
    }))
}

/// The SQLite files of a replica that hold its data.
fn database_files(replica: &Path) -> [PathBuf; 2] {
    [replica.to_path_buf(), attachments_path(replica)]
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Every file fieldsync keeps for the replica at `replica`.
pub fn replica_files(replica: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for db in database_files(replica) {
        for suffix in ["", "-wal", "-shm", "-journal", ".encrypting"] {
            out.push(with_suffix(&db, suffix));
        }
    }
    let cred = crate::sync::credential_path(replica);
    out.push(with_suffix(&cred, ".tmp"));
    out.push(cred);
    let keys = key_file_path(replica);
    out.push(with_suffix(&keys, ".tmp"));
    out.push(with_suffix(&keys, ".lock"));
    out.push(keys);
    out
}

/// Where attachments opened for viewing are written (plain copies a viewer can read): beside
/// the replica, removed by `fieldsync lock` and by [`shred`].
pub fn opened_dir(replica: &Path) -> PathBuf {
    with_suffix(replica, ".opened")
}

/// Removes the plain copies of attachments opened for viewing (overwritten first); returns
/// how many files went.
pub fn remove_opened(replica: &Path) -> Result<u32, VaultError> {
    let dir = opened_dir(replica);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(VaultError::Io(format!("reading {}", dir.display()), e)),
    };
    let mut n = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_file() {
            overwrite(&path)?;
            std::fs::remove_file(&path)
                .map_err(|e| VaultError::Io(format!("removing {}", path.display()), e))?;
            n += 1;
        }
    }
    let _ = std::fs::remove_dir(&dir);
    Ok(n)
}

/// Holds the replica's key lock: one process at a time moves files between keys.
struct KeyLock(#[allow(dead_code)] std::fs::File);

fn lock(replica: &Path) -> Result<KeyLock, VaultError> {
    let path = with_suffix(&key_file_path(replica), ".lock");
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let f = opts
        .open(&path)
        .map_err(|e| VaultError::Io(format!("opening {}", path.display()), e))?;
    #[cfg(unix)]
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| VaultError::InUse(replica.to_path_buf()))?;
    Ok(KeyLock(f))
}

fn random_key() -> Result<DatabaseKey, VaultError> {
    let mut b = Zeroizing::new([0u8; 32]);
    seal::random(b.as_mut())?;
    Ok(DatabaseKey::from_bytes(*b))
}

fn random_id() -> Result<String, VaultError> {
    let mut b = [0u8; 12];
    seal::random(&mut b)?;
    Ok(hex::encode(b))
}

/// A new slot for `key` under `p`; `previous` (the key it replaces) is sealed under `key`.
fn new_slot(
    key: &DatabaseKey,
    p: &Protection,
    previous: Option<&DatabaseKey>,
) -> Result<Slot, VaultError> {
    if p.passphrase.is_none() && !p.keyring {
        return Err(VaultError::NoProtection);
    }
    let id = random_id()?;
    let mut wraps = Vec::new();
    if p.keyring {
        let (account, kek) = keyring::create()?;
        let sealed = keyfile::wrap_with(&id, key, &kek)?;
        wraps.push(Wrap::Keyring {
            service: keyring::SERVICE.into(),
            account,
            sealed: hex::encode(sealed),
        });
    }
    if let Some(pass) = &p.passphrase {
        wraps.push(keyfile::wrap_passphrase(&id, key, pass)?);
    }
    let previous = previous
        .map(|prev| {
            seal::seal(
                key.as_bytes(),
                b"fieldsync previous data key",
                prev.as_bytes(),
            )
            .map(hex::encode)
        })
        .transpose()?;
    Ok(Slot {
        id,
        wraps,
        previous,
    })
}

/// Opens `slot`'s data key with what `u` allows.
fn unwrap_slot(slot: &Slot, u: &Unlock) -> Result<DatabaseKey, VaultError> {
    if !u.no_session
        && let Some(k) = session::recall(&slot.id)
    {
        return Ok(k);
    }
    if !u.no_keyring {
        for w in &slot.wraps {
            if let Wrap::Keyring {
                account, sealed, ..
            } = w
                && let Ok(Some(kek)) = keyring::read(account)
                && let Some(k) = keyfile::unwrap_with(&slot.id, sealed, &kek)
            {
                return Ok(k);
            }
        }
    }
    let Some(pass) = &u.passphrase else {
        return Err(VaultError::Locked);
    };
    let mut any = false;
    for w in slot.wraps.iter().filter(|w| w.is_passphrase()) {
        any = true;
        if let Some(k) = keyfile::unwrap_passphrase(&slot.id, w, pass)? {
            return Ok(k);
        }
    }
    Err(if any {
        VaultError::WrongPassphrase
    } else {
        VaultError::Locked
    })
}

/// Deletes the keyring entries and the session copy of `slot`.
fn drop_slot(slot: &Slot) {
    session::forget(&slot.id);
    for w in &slot.wraps {
        if let Wrap::Keyring { account, .. } = w
            && let Err(e) = keyring::delete(account)
        {
            tracing::warn!(error = %e, "could not delete an old key from the OS keyring");
        }
    }
}

/// The data key of the replica at `replica`, or `None` if it is plain. Finishes a move to a
/// new key that a crash interrupted.
pub fn unlock(replica: &Path, u: &Unlock) -> Result<Option<DatabaseKey>, VaultError> {
    let path = key_file_path(replica);
    let Some(kf) = KeyFile::read(&path)? else {
        return Ok(None);
    };
    match (kf.key, kf.next) {
        (Some(cur), None) => unwrap_slot(&cur, u).map(Some),
        (cur, Some(next)) => {
            let n = unwrap_slot(&next, u)?;
            let _lock = lock(replica)?;
            // Re-read under the lock: another process may have finished meanwhile.
            let Some(kf) = KeyFile::read(&path)? else {
                return Err(VaultError::KeyFile(format!("{} went away", path.display())));
            };
            let Some(next) = kf.next else {
                return Ok(Some(n));
            };
            let c = match (&cur, &next.previous) {
                (None, _) => None,
                (Some(_), Some(prev)) => Some(open_previous(&n, prev)?),
                (Some(cs), None) => Some(unwrap_slot(cs, u)?),
            };
            finish_move(replica, cur.as_ref(), c.as_ref(), next, &n)?;
            Ok(Some(n))
        }
        (None, None) => Err(VaultError::KeyFile(format!(
            "{} holds no key",
            path.display()
        ))),
    }
}

fn open_previous(n: &DatabaseKey, sealed_hex: &str) -> Result<DatabaseKey, VaultError> {
    let sealed = hex::decode(sealed_hex).map_err(|e| VaultError::KeyFile(e.to_string()))?;
    let plain = seal::open(n.as_bytes(), b"fieldsync previous data key", &sealed)
        .ok_or_else(|| VaultError::KeyFile("the previous key does not open".into()))?;
    let bytes: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| VaultError::KeyFile("the previous key is damaged".into()))?;
    Ok(DatabaseKey::from_bytes(bytes))
}

/// Moves every file from `c` (or plain) to `n`, then makes `next` the key.
fn finish_move(
    replica: &Path,
    cur: Option<&Slot>,
    c: Option<&DatabaseKey>,
    mut next: Slot,
    n: &DatabaseKey,
) -> Result<(), VaultError> {
    for db in database_files(replica) {
        move_database(&db, c, n)?;
    }
    crate::sync::credential::reseal(replica, c, n)?;
    next.previous = None;
    KeyFile::new(Some(next), None).write(&key_file_path(replica))?;
    if let Some(cur) = cur {
        drop_slot(cur);
    }
    Ok(())
}

/// Whether `db` opens with `key` (or is plain when `key` is `None`).
fn opens_with(db: &Path, key: Option<&DatabaseKey>) -> bool {
    fieldsync_core::store::open_sqlite(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        key,
    )
    .is_ok()
}

/// Moves one SQLite file from `from` (or plain) to `to`: folds its WAL in (which also proves
/// no other program has it open), exports it to a new file under `to`, and renames that over
/// it.
fn move_database(
    db: &Path,
    from: Option<&DatabaseKey>,
    to: &DatabaseKey,
) -> Result<(), VaultError> {
    let sql = |e| VaultError::Sqlite(db.to_path_buf(), e);
    match cipher::file_state(db)
        .map_err(|e| VaultError::Io(format!("reading {}", db.display()), e))?
    {
        FileState::Missing => return Ok(()),
        FileState::Encrypted if opens_with(db, Some(to)) => return Ok(()),
        _ => {}
    }
    fold_wal(db, from)?;
    let tmp = with_suffix(db, ".encrypting");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(VaultError::Io(format!("removing {}", tmp.display()), e)),
    }
    cipher::export(db, from, &tmp, Some(to)).map_err(sql)?;
    fieldsync_core::fsmode::prepare_database(&tmp);
    for suffix in ["-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(with_suffix(db, suffix));
    }
    std::fs::rename(&tmp, db)
        .map_err(|e| VaultError::Io(format!("replacing {}", db.display()), e))?;
    keyfile::sync_dir(db);
    Ok(())
}

/// Folds `db`'s WAL into the file and leaves WAL mode, which SQLite allows only to the one
/// connection that has the file open: the proof that no other program uses it. A missing file
/// passes.
fn fold_wal(db: &Path, key: Option<&DatabaseKey>) -> Result<(), VaultError> {
    if cipher::file_state(db).map_err(|e| VaultError::Io(format!("reading {}", db.display()), e))?
        == FileState::Missing
    {
        return Ok(());
    }
    let sql = |e| VaultError::Sqlite(db.to_path_buf(), e);
    let conn = fieldsync_core::store::open_sqlite(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        key,
    )
    .map_err(|e| VaultError::KeyFile(format!("{} does not open: {e}", db.display())))?;
    conn.busy_timeout(Duration::ZERO).map_err(sql)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(|_| VaultError::InUse(db.to_path_buf()))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(VaultError::InUse(db.to_path_buf()));
    }
    Ok(())
}

/// Refuses, before anything is written, to move a replica another program has open.
fn check_not_in_use(replica: &Path, key: Option<&DatabaseKey>) -> Result<(), VaultError> {
    for db in database_files(replica) {
        fold_wal(&db, key)?;
    }
    Ok(())
}

/// Encrypts the replica at `replica` (a plain one in place, or one not created yet) under a
/// new data key protected by `p`; returns the key. The replica must not be open elsewhere.
pub fn encrypt(replica: &Path, p: &Protection) -> Result<DatabaseKey, VaultError> {
    if p.passphrase.is_none() && !p.keyring {
        return Err(VaultError::NoProtection);
    }
    let _lock = lock(replica)?;
    let path = key_file_path(replica);
    if let Some(kf) = KeyFile::read(&path)? {
        if kf.next.is_some() {
            return Err(VaultError::KeyFile(
                "an encryption of this replica was interrupted: unlock it to finish".into(),
            ));
        }
        return Err(VaultError::AlreadyEncrypted);
    }
    check_not_in_use(replica, None)?;
    let n = random_key()?;
    let slot = new_slot(&n, p, None)?;
    KeyFile::new(None, Some(slot.clone())).write(&path)?;
    finish_move(replica, None, None, slot, &n)?;
    Ok(n)
}

/// Moves the replica to a fresh data key protected by `p` (its old key opened with `u`);
/// returns the new key.
pub fn rekey(replica: &Path, u: &Unlock, p: &Protection) -> Result<DatabaseKey, VaultError> {
    // Finishes an interrupted move first.
    let c = unlock(replica, u)?.ok_or(VaultError::NotEncrypted)?;
    rekey_with_key(replica, &c, p)
}

/// [`rekey`] with the current key already opened.
pub fn rekey_with_key(
    replica: &Path,
    c: &DatabaseKey,
    p: &Protection,
) -> Result<DatabaseKey, VaultError> {
    let _lock = lock(replica)?;
    let kf = settled_key_file(replica, c)?;
    check_not_in_use(replica, Some(c))?;
    let n = random_key()?;
    let slot = new_slot(&n, p, Some(c))?;
    KeyFile::new(kf.key.clone(), Some(slot.clone())).write(&key_file_path(replica))?;
    finish_move(replica, kf.key.as_ref(), Some(c), slot, &n)?;
    Ok(n)
}

/// The key file of an encrypted replica that is not moving between keys, once `c` is proven
/// to open its files (a wrong key must never be recorded as the one to move from).
fn settled_key_file(replica: &Path, c: &DatabaseKey) -> Result<KeyFile, VaultError> {
    let kf = KeyFile::read(&key_file_path(replica))?.ok_or(VaultError::NotEncrypted)?;
    if kf.next.is_some() {
        return Err(VaultError::KeyFile(
            "a move to a new key was interrupted: open the replica once to finish it".into(),
        ));
    }
    for db in database_files(replica) {
        let state = cipher::file_state(&db)
            .map_err(|e| VaultError::Io(format!("reading {}", db.display()), e))?;
        if state != FileState::Missing && !opens_with(&db, Some(c)) {
            return Err(VaultError::KeyFile(format!(
                "{} does not open with the replica's key",
                db.display()
            )));
        }
    }
    Ok(kf)
}

/// Protects the replica's data key (opened with `u`) by `p` instead of how it was protected:
/// a new passphrase, adding or dropping the keyring. The files are not touched.
pub fn protect(replica: &Path, u: &Unlock, p: &Protection) -> Result<(), VaultError> {
    let key = unlock(replica, u)?.ok_or(VaultError::NotEncrypted)?;
    protect_with_key(replica, &key, p)
}

/// [`protect`] with the key already opened.
pub fn protect_with_key(
    replica: &Path,
    key: &DatabaseKey,
    p: &Protection,
) -> Result<(), VaultError> {
    let _lock = lock(replica)?;
    let kf = settled_key_file(replica, key)?;
    let slot = new_slot(key, p, None)?;
    KeyFile::new(Some(slot), None).write(&key_file_path(replica))?;
    if let Some(old) = &kf.key {
        drop_slot(old);
    }
    Ok(())
}

/// Keeps the replica's unlocked data key for `ttl` in this login session (Linux), so later
/// opens need no passphrase.
pub fn remember(replica: &Path, key: &DatabaseKey, ttl: Duration) -> Result<(), VaultError> {
    let kf = KeyFile::read(&key_file_path(replica))?.ok_or(VaultError::NotEncrypted)?;
    let slot = kf.key.ok_or(VaultError::Locked)?;
    session::remember(&slot.id, key, ttl)
}

/// Drops the unlocked key kept by [`remember`].
pub fn forget(replica: &Path) -> Result<(), VaultError> {
    if let Some(kf) = KeyFile::read(&key_file_path(replica))? {
        for slot in kf.key.iter().chain(kf.next.iter()) {
            session::forget(&slot.id);
        }
    }
    Ok(())
}

/// What [`shred`] destroyed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Shredded {
    /// The replica was encrypted: its data key is gone, so any copy of its files is noise.
    pub keys_destroyed: bool,
    /// Files removed.
    pub files_removed: u32,
}

/// Destroys the replica at `replica` for good: first every wrapped copy of its data key (the
/// keyring entries, the session copy, the key file, overwritten before it is removed), which
/// makes any copy of the encrypted files unreadable; then the files themselves (a plain
/// replica's overwritten with zeros first).
pub fn shred(replica: &Path) -> Result<Shredded, VaultError> {
    let mut out = Shredded::default();
    let keys = key_file_path(replica);
    if let Ok(Some(kf)) = KeyFile::read(&keys) {
        for slot in kf.key.iter().chain(kf.next.iter()) {
            drop_slot(slot);
        }
    }
    if keys.exists() {
        overwrite(&keys)?;
        std::fs::remove_file(&keys)
            .map_err(|e| VaultError::Io(format!("removing {}", keys.display()), e))?;
        keyfile::sync_dir(&keys);
        out.keys_destroyed = true;
        out.files_removed += 1;
    }
    out.files_removed += remove_opened(replica)?;
    for f in replica_files(replica) {
        if !f.exists() {
            continue;
        }
        if !out.keys_destroyed {
            overwrite(&f)?;
        }
        std::fs::remove_file(&f)
            .map_err(|e| VaultError::Io(format!("removing {}", f.display()), e))?;
        out.files_removed += 1;
    }
    keyfile::sync_dir(replica);
    Ok(out)
}

/// Overwrites a file's bytes with zeros and flushes them.
fn overwrite(path: &Path) -> Result<(), VaultError> {
    use std::io::{Seek, Write};
    let fail = |e| VaultError::Io(format!("overwriting {}", path.display()), e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(fail)?;
    let len = f.metadata().map_err(fail)?.len();
    f.seek(std::io::SeekFrom::Start(0)).map_err(fail)?;
    let zeros = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        f.write_all(&zeros[..n]).map_err(fail)?;
        left -= n as u64;
    }
    f.sync_all().map_err(fail)
}

/// The magic that starts a file sealed with the data key.
const SEALED_MAGIC: &[u8] = b"fieldsync sealed v1\n";

/// Seals a small file's content with the data key (`what` names the file).
pub(crate) fn seal_file(
    key: &DatabaseKey,
    what: &str,
    plain: &[u8],
) -> Result<Vec<u8>, VaultError> {
    let mut out = SEALED_MAGIC.to_vec();
    out.extend(seal::seal(key.as_bytes(), what.as_bytes(), plain)?);
    Ok(out)
}

/// Whether a file's content is sealed.
pub(crate) fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(SEALED_MAGIC)
}

/// Opens a file sealed by [`seal_file`]; `None` when `key` is not its key.
pub(crate) fn open_file(key: &DatabaseKey, what: &str, bytes: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    seal::open(
        key.as_bytes(),
        what.as_bytes(),
        bytes.strip_prefix(SEALED_MAGIC)?,
    )
}

#[cfg(test)]
mod tests;

//! The key file beside an encrypted replica (`replica.db.keys`, owner-only): the replica's
//! data key, never stored in the clear, only sealed under each *wrapping key* that may open
//! it — a random key kept in the OS keyring, and/or a key stretched from a passphrase with
//! Argon2id.
//!
//! ```json
//! { "format": 1,
//!   "key":  { "id": "…", "wraps": [ {"kind": "passphrase", …}, {"kind": "keyring", …} ] },
//!   "next": null }
//! ```
//!
//! `key` is the data key the replica's files are encrypted with (`null` while a plain replica
//! is being encrypted); `next` is a data key they are moving to (encryption, `rekey`). Both
//! stay listed until every file has moved, so a crash at any point leaves a key that opens
//! each file. The file is replaced atomically (written beside, flushed, renamed).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use fieldsync_core::store::cipher::DatabaseKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{VaultError, seal};

/// The key file's format version.
const FORMAT: u32 = 1;

/// Argon2id cost for a new passphrase wrap: 64 MiB, 3 passes, one lane (about a quarter of a
/// second on a laptop; a guess at the passphrase costs an attacker the same).
pub const ARGON2_MEMORY_KIB: u32 = 64 * 1024;
/// Passes over the memory.
pub const ARGON2_PASSES: u32 = 3;

/// The key file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct KeyFile {
    pub format: u32,
    /// The data key the files are encrypted with; `None` while a plain replica is encrypted.
    pub key: Option<Slot>,
    /// The data key the files are moving to.
    #[serde(default)]
    pub next: Option<Slot>,
}

/// One data key, sealed under one or more wrapping keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Slot {
    /// A random name for this data key (names its unlocked copy in the session keyring, and
    /// binds each wrap to this slot).
    pub id: String,
    pub wraps: Vec<Wrap>,
    /// During a rekey: the key this one replaces, sealed under this one, so that whoever
    /// opens the new key can finish moving files still under the old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// The data key sealed under one wrapping key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Wrap {
    /// Under a key stretched from a passphrase.
    Passphrase {
        /// Argon2id memory in KiB.
        memory_kib: u32,
        /// Argon2id passes.
        passes: u32,
        /// Argon2id lanes.
        lanes: u32,
        /// Random salt, hex.
        salt: String,
        /// The sealed data key, hex.
        sealed: String,
    },
    /// Under a random key stored in the OS keyring.
    Keyring {
        /// Keyring service.
        service: String,
        /// Keyring account (random per wrap).
        account: String,
        /// The sealed data key, hex.
        sealed: String,
    },
}

impl Wrap {
    pub(crate) fn is_passphrase(&self) -> bool {
        matches!(self, Self::Passphrase { .. })
    }
}

/// Associated data binding a sealed data key to its slot.
fn slot_aad(slot_id: &str) -> Vec<u8> {
    format!("fieldsync data key {slot_id}").into_bytes()
}

/// Stretches `passphrase` into a 256-bit wrapping key.
pub(crate) fn stretch(
    passphrase: &str,
    salt: &[u8],
    memory_kib: u32,
    passes: u32,
    lanes: u32,
) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let params = Params::new(memory_kib, passes, lanes, Some(32))
        .map_err(|e| VaultError::KeyFile(format!("Argon2id parameters: {e}")))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, out.as_mut())
        .map_err(|e| VaultError::KeyFile(format!("Argon2id: {e}")))?;
    Ok(out)
}

/// Seals `key` under a passphrase.
pub(crate) fn wrap_passphrase(
    slot_id: &str,
    key: &DatabaseKey,
    passphrase: &str,
) -> Result<Wrap, VaultError> {
    let mut salt = [0u8; 16];
    seal::random(&mut salt)?;
    let kek = stretch(passphrase, &salt, ARGON2_MEMORY_KIB, ARGON2_PASSES, 1)?;
    let sealed = seal::seal(&kek, &slot_aad(slot_id), key.as_bytes())?;
    Ok(Wrap::Passphrase {
        memory_kib: ARGON2_MEMORY_KIB,
        passes: ARGON2_PASSES,
        lanes: 1,
        salt: hex::encode(salt),
        sealed: hex::encode(sealed),
    })
}

/// Seals `key` under a wrapping key kept elsewhere (the keyring's).
pub(crate) fn wrap_with(
    slot_id: &str,
    key: &DatabaseKey,
    kek: &[u8; 32],
) -> Result<Vec<u8>, VaultError> {
    seal::seal(kek, &slot_aad(slot_id), key.as_bytes())
}

/// Opens a sealed data key with a wrapping key; `None` when it is not the right one.
pub(crate) fn unwrap_with(slot_id: &str, sealed_hex: &str, kek: &[u8; 32]) -> Option<DatabaseKey> {
    let sealed = hex::decode(sealed_hex).ok()?;
    let plain = seal::open(kek, &slot_aad(slot_id), &sealed)?;
    let bytes: [u8; 32] = plain.as_slice().try_into().ok()?;
    Some(DatabaseKey::from_bytes(bytes))
}

/// Opens a passphrase wrap; `None` when the passphrase is not the one it was made with.
pub(crate) fn unwrap_passphrase(
    slot_id: &str,
    wrap: &Wrap,
    passphrase: &str,
) -> Result<Option<DatabaseKey>, VaultError> {
    let Wrap::Passphrase {
        memory_kib,
        passes,
        lanes,
        salt,
        sealed,
    } = wrap
    else {
        return Ok(None);
    };
    // A key file is the laptop's own, but a damaged or planted one must not make the
    // stretch take gigabytes.
    if *memory_kib > 1024 * 1024 || *passes > 64 || *lanes > 16 {
        return Err(VaultError::KeyFile(
            "the passphrase wrap asks for an unreasonable Argon2id cost".into(),
        ));
    }
    let salt = hex::decode(salt).map_err(|e| VaultError::KeyFile(format!("salt: {e}")))?;
    let kek = stretch(passphrase, &salt, *memory_kib, *passes, *lanes)?;
    Ok(unwrap_with(slot_id, sealed, &kek))
}

/// The key file of the replica at `replica`: the same path with `.keys` appended.
pub fn key_file_path(replica: &Path) -> PathBuf {
    let mut s = replica.as_os_str().to_owned();
    s.push(".keys");
    PathBuf::from(s)
}

impl KeyFile {
    /// Reads the key file; `None` when there is none (a plain replica).
    pub(crate) fn read(path: &Path) -> Result<Option<Self>, VaultError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(VaultError::Io(format!("reading {}", path.display()), e)),
        };
        let file: Self = serde_json::from_slice(&text).map_err(|e| {
            VaultError::KeyFile(format!("{} is not a key file: {e}", path.display()))
        })?;
        if file.format != FORMAT {
            return Err(VaultError::KeyFile(format!(
                "{} has format {}, this fieldsync reads format {FORMAT}",
                path.display(),
                file.format
            )));
        }
        if file.key.is_none() && file.next.is_none() {
            return Err(VaultError::KeyFile(format!(
                "{} holds no key",
                path.display()
            )));
        }
        Ok(Some(file))
    }

    /// A key file for a replica on `key` moving to `next`.
    pub(crate) fn new(key: Option<Slot>, next: Option<Slot>) -> Self {
        Self {
            format: FORMAT,
            key,
            next,
        }
    }

    /// Replaces the key file atomically (owner-only, flushed before the rename, directory
    /// flushed after).
    pub(crate) fn write(&self, path: &Path) -> Result<(), VaultError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| VaultError::KeyFile(format!("encoding the key file: {e}")))?;
        write_private(path, &json)
    }
}

/// Writes `bytes` to `path` atomically, readable by the owner only.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    let fail = |e| VaultError::Io(format!("writing {}", path.display()), e);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(fail)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
    }
    f.write_all(bytes).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(fail)?;
    sync_dir(path);
    Ok(())
}

/// Flushes the directory holding `path`, so a rename in it is durable.
pub(crate) fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = d.sync_all();
    }
}

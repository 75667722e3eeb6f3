//! An unlocked data key kept for a while (`fieldsync unlock --for 8h`), so every command of a
//! working day does not ask for the passphrase. On Linux it lives in the kernel's session
//! keyring (memory only, readable by the user's processes in this login session, dropped at
//! the timeout, at logout and at reboot — never on disk). Elsewhere there is no such cache:
//! the OS keyring wrap serves there, or the passphrase each time.

use std::time::Duration;

use fieldsync_core::store::cipher::DatabaseKey;

use super::VaultError;

fn description(slot_id: &str) -> String {
    format!("fieldsync:{slot_id}")
}

#[cfg(target_os = "linux")]
mod imp {
    use linux_keyutils::{KeyRing, KeyRingIdentifier};

    use super::*;

    fn ring() -> Result<KeyRing, String> {
        KeyRing::from_special_id(KeyRingIdentifier::Session, false)
            .or_else(|_| KeyRing::from_special_id(KeyRingIdentifier::UserSession, false))
            .map_err(|e| format!("the kernel keyring: {e}"))
    }

    pub(crate) fn remember(
        slot_id: &str,
        key: &DatabaseKey,
        ttl: Duration,
    ) -> Result<(), VaultError> {
        let ring = ring().map_err(VaultError::Session)?;
        let k = ring
            .add_key(&description(slot_id), key.as_bytes())
            .map_err(|e| VaultError::Session(format!("storing the key: {e}")))?;
        let secs = usize::try_from(ttl.as_secs().max(1)).unwrap_or(usize::MAX);
        k.set_timeout(secs)
            .map_err(|e| VaultError::Session(format!("setting its timeout: {e}")))
    }

    pub(crate) fn recall(slot_id: &str) -> Option<DatabaseKey> {
        let key = ring().ok()?.search(&description(slot_id)).ok()?;
        let mut buf = zeroize::Zeroizing::new([0u8; 32]);
        let n = key.read(&mut *buf).ok()?;
        (n == 32).then(|| DatabaseKey::from_bytes(*buf))
    }

    pub(crate) fn forget(slot_id: &str) {
        if let Ok(ring) = ring()
            && let Ok(key) = ring.search(&description(slot_id))
        {
            let _ = key.invalidate();
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    pub(crate) fn remember(_: &str, _: &DatabaseKey, _: Duration) -> Result<(), VaultError> {
        Err(VaultError::Session(
            "keeping an unlocked key is supported on Linux only; use the OS keyring".into(),
        ))
    }

    pub(crate) fn recall(_: &str) -> Option<DatabaseKey> {
        let _ = description;
        None
    }

    pub(crate) fn forget(_: &str) {}
}

pub(crate) use imp::{forget, recall, remember};

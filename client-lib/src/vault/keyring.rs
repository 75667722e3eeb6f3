//! Wrapping keys in the OS keyring (through `keyring-core`): the Secret Service on Linux
//! desktops, the Keychain on macOS, the Credential Manager on Windows. A host that has set
//! `keyring_core`'s default store (an embedding app with a store of its own, or a test with
//! the mock store) is used as it is.
//!
//! Each call runs on a thread of its own: the Linux store drives D-Bus with its own async
//! runtime, which must not start inside the caller's.

use std::sync::Arc;

use keyring_core::{CredentialStore, Entry};
use zeroize::Zeroizing;

use super::{VaultError, seal};

/// The keyring service fieldsync's wrapping keys are filed under.
pub(crate) const SERVICE: &str = "fieldsync";

fn platform_store() -> Result<Arc<CredentialStore>, String> {
    if let Some(store) = keyring_core::get_default_store() {
        return Ok(store);
    }
    #[cfg(target_os = "linux")]
    let store: keyring_core::Result<Arc<CredentialStore>> =
        zbus_secret_service_keyring_store::Store::new().map(|s| s as Arc<CredentialStore>);
    #[cfg(target_os = "macos")]
    let store: keyring_core::Result<Arc<CredentialStore>> =
        apple_native_keyring_store::keychain::Store::new().map(|s| s as Arc<CredentialStore>);
    #[cfg(windows)]
    let store: keyring_core::Result<Arc<CredentialStore>> =
        windows_native_keyring_store::Store::new().map(|s| s as Arc<CredentialStore>);
    #[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
    let store: keyring_core::Result<Arc<CredentialStore>> = Err(
        keyring_core::Error::NotSupportedByStore("no OS keyring on this platform".into()),
    );
    store.map_err(|e| e.to_string())
}

/// Runs `f` with the keyring's entry for `account` on a thread of its own.
fn with_entry<T: Send + 'static>(
    account: &str,
    f: impl FnOnce(Entry) -> keyring_core::Result<T> + Send + 'static,
) -> Result<T, String> {
    let account = account.to_string();
    std::thread::spawn(move || {
        let store = platform_store()?;
        let entry = Entry::new_in_store(&store, SERVICE, &account).map_err(|e| e.to_string())?;
        f(entry).map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the keyring call failed".to_string())?
}

/// Makes a fresh wrapping key and stores it in the keyring under a new random account;
/// returns the account and the key. Fails when there is no usable keyring.
pub(crate) fn create() -> Result<(String, Zeroizing<[u8; 32]>), VaultError> {
    let mut kek = Zeroizing::new([0u8; 32]);
    seal::random(kek.as_mut())?;
    let mut id = [0u8; 12];
    seal::random(&mut id)?;
    let account = format!("replica-{}", hex::encode(id));
    let secret = Zeroizing::new(kek.to_vec());
    with_entry(&account, move |e| e.set_secret(&secret)).map_err(VaultError::Keyring)?;
    Ok((account, kek))
}

/// The wrapping key stored under `account`, if the keyring has it.
pub(crate) fn read(account: &str) -> Result<Option<Zeroizing<[u8; 32]>>, VaultError> {
    let got = with_entry(account, |e| match e.get_secret() {
        Ok(s) => Ok(Some(Zeroizing::new(s))),
        Err(keyring_core::Error::NoEntry) => Ok(None),
        Err(e) => Err(e),
    })
    .map_err(VaultError::Keyring)?;
    Ok(got.and_then(|s| {
        let bytes: [u8; 32] = s.as_slice().try_into().ok()?;
        Some(Zeroizing::new(bytes))
    }))
}

/// Deletes the wrapping key stored under `account` (done when it is already gone).
pub(crate) fn delete(account: &str) -> Result<(), VaultError> {
    with_entry(account, |e| match e.delete_credential() {
        Ok(()) | Err(keyring_core::Error::NoEntry) => Ok(()),
        Err(e) => Err(e),
    })
    .map_err(VaultError::Keyring)
}

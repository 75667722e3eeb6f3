//! Sealing small secrets with a 256-bit key (ChaCha20-Poly1305, a fresh random nonce each
//! time): the data key under each wrapping key, and the files beside the replica that SQLCipher
//! does not cover (the device credential).
//!
//! A sealed blob is `nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`; the associated data names
//! what the blob is, so a blob moved into another slot does not open there.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::VaultError;

/// Fills `buf` from the system's random generator.
pub(crate) fn random(buf: &mut [u8]) -> Result<(), VaultError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| VaultError::Random)
}

fn aead_key(key: &[u8; 32]) -> Result<LessSafeKey, VaultError> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| VaultError::Random)
}

/// Seals `plain` under `key`, bound to `aad`.
pub(crate) fn seal(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, VaultError> {
    let mut nonce = [0u8; NONCE_LEN];
    random(&mut nonce)?;
    let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
    out.extend_from_slice(&nonce);
    let mut body = plain.to_vec();
    aead_key(key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .map_err(|_| VaultError::Random)?;
    out.extend_from_slice(&body);
    body.iter_mut().for_each(|b| *b = 0);
    Ok(out)
}

/// Opens a blob made by [`seal`] with the same key and `aad`; `None` when the key is not the
/// one it was sealed with, or the blob was changed.
pub(crate) fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + 16 {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut body = Zeroizing::new(body.to_vec());
    let len = aead_key(key)
        .ok()?
        .open_in_place(nonce, Aad::from(aad), &mut body)
        .ok()?
        .len();
    body.truncate(len);
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_blob_opens_only_with_its_key_and_slot() {
        let key = [7u8; 32];
        let blob = seal(&key, b"slot a", b"secret").expect("seal");
        assert_eq!(
            open(&key, b"slot a", &blob).expect("open").as_slice(),
            b"secret"
        );
        assert!(open(&[8u8; 32], b"slot a", &blob).is_none());
        assert!(open(&key, b"slot b", &blob).is_none());
        let mut bent = blob.clone();
        bent[14] ^= 1;
        assert!(open(&key, b"slot a", &bent).is_none());
        assert!(open(&key, b"slot a", &blob[..10]).is_none());
    }
}

use std::sync::Arc;

use super::*;
use crate::sync::{Credential, credential_path, read_credential, write_credential};
use crate::{Client, NewCustomer, StoreOptions};

const NAME: &str = "Baotou Heavy Haulage";
const PHONE: &str = "+86 472 555 0199";

fn pass(p: &str) -> Protection {
    Protection {
        passphrase: Some(Zeroizing::new(p.into())),
        keyring: false,
    }
}

fn with_pass(p: &str) -> Unlock {
    Unlock {
        passphrase: Some(Zeroizing::new(p.into())),
        no_keyring: true,
        no_session: true,
    }
}

/// A replica with a customer, an attachment and a credential, as a rep's laptop has.
fn fill(replica: &Path, unlock: &Unlock) {
    let client =
        Client::open_unlocked(replica, StoreOptions::default(), unlock).expect("open replica");
    let id = client
        .customers()
        .create(NewCustomer {
            scope: "north".into(),
            name: NAME.into(),
            phone: Some(PHONE.into()),
            ..Default::default()
        })
        .expect("create");
    client
        .attachments()
        .attach_bytes(
            id,
            "notes.txt",
            None,
            b"Baotou Heavy Haulage site notes",
            "",
        )
        .expect("attach");
    let cred = Credential {
        device_id: client.device_id(),
        secret: Some("00112233445566778899aabbccddeeff".into()),
        pending: None,
        relay: Some("relay.example:4433".into()),
    };
    write_credential(&credential_path(replica), &cred, client.key()).expect("credential");
}

fn check(replica: &Path, unlock: &Unlock) {
    let client =
        Client::open_unlocked(replica, StoreOptions::default(), unlock).expect("open replica");
    let found = client.customers().find_by_phone(PHONE).expect("find");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, NAME);
    let att = client.attachments().list(found[0].id).expect("list");
    assert_eq!(att.len(), 1);
    let bytes = client
        .attachments()
        .read(att[0].attachment.hash)
        .expect("read");
    assert_eq!(bytes, b"Baotou Heavy Haulage site notes");
    let cred = read_credential(&credential_path(replica), client.key())
        .expect("credential")
        .expect("present");
    assert_eq!(
        cred.secret.as_deref(),
        Some("00112233445566778899aabbccddeeff")
    );
}

/// No file in the directory holds the customer's name, phone or the credential in the clear.
fn assert_no_plaintext(dir: &Path) {
    let needles: [&[u8]; 4] = [
        NAME.as_bytes(),
        b"472 555 0199",
        b"site notes",
        b"00112233445566778899aabbccddeeff",
    ];
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        for n in needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n),
                "{} holds {:?} in the clear",
                path.display(),
                String::from_utf8_lossy(n)
            );
        }
    }
}

#[test]
fn a_new_encrypted_replica_opens_only_with_its_passphrase_and_shows_nothing_on_disk() {
    let dir = tempfile::tempdir().expect("dir");
    let replica = dir.path().join("replica.db");
    encrypt(&replica, &pass("correct horse")).expect("encrypt");
    fill(&replica, &with_pass("correct horse"));
    check(&replica, &with_pass("correct horse"));
    assert_no_plaintext(dir.path());

    let locked = Client::open_unlocked(
        &replica,
        StoreOptions::default(),
        &Unlock {
            no_keyring: true,
            no_session: true,
            ..Unlock::default()
        },
    );
    assert!(
        matches!(locked, Err(crate::ClientError::Vault(VaultError::Locked))),
        "{locked:?}"
    );
    let wrong = Client::open_unlocked(&replica, StoreOptions::default(), &with_pass("wrong"));
    assert!(
        matches!(
            wrong,
            Err(crate::ClientError::Vault(VaultError::WrongPassphrase))
        ),
        "{wrong:?}"
    );
    // A wrong key given directly is a clear error too, and changes nothing.
    let opts = StoreOptions {
        key: Some(DatabaseKey::from_bytes([9; 32])),
        ..StoreOptions::default()
    };
    let e = Client::open_with(&replica, opts).expect_err("wrong key opens");
    assert!(e.to_string().contains("wrong key"), "{e}");
    check(&replica, &with_pass("correct horse"));
    assert_eq!(
        key_info(&replica).expect("info"),
        Some(KeyInfo {
            passphrase: true,
            keyring: false,
            moving: false
        })
    );
}

#[test]
fn a_plain_replica_is_encrypted_in_place_with_everything_kept() {
    let dir = tempfile::tempdir().expect("dir");
    let replica = dir.path().join("replica.db");
    fill(&replica, &Unlock::default());
    let plain: Vec<u8> = std::fs::read_dir(dir.path())
        .expect("list")
        .flat_map(|e| std::fs::read(e.expect("entry").path()).expect("read"))
        .collect();
    assert!(
        plain.windows(NAME.len()).any(|w| w == NAME.as_bytes()),
        "the plain replica holds the name (so the check below means something)"
    );
    encrypt(&replica, &pass("pw")).expect("encrypt");
    assert_no_plaintext(dir.path());
    check(&replica, &with_pass("pw"));
    assert!(matches!(
        encrypt(&replica, &pass("pw")),
        Err(VaultError::AlreadyEncrypted)
    ));
}

#[test]
fn an_open_replica_is_not_encrypted_under_the_program_using_it() {
    let dir = tempfile::tempdir().expect("dir");
    let replica = dir.path().join("replica.db");
    fill(&replica, &Unlock::default());
    let client = Client::open(&replica).expect("open");
    let e = encrypt(&replica, &pass("pw")).expect_err("encrypted while open");
    assert!(matches!(e, VaultError::InUse(_)), "{e}");
    // Refused before anything was written: still plain, no key file.
    assert!(!is_encrypted(&replica));
    drop(client);
    encrypt(&replica, &pass("pw")).expect("encrypt once closed");
    check(&replica, &with_pass("pw"));
    assert_no_plaintext(dir.path());
}

/// A crash at each step of encrypting a plain replica: the next unlock finishes the move.
#[test]
fn a_crash_at_any_step_of_encryption_loses_nothing() {
    for step in 0..4 {
        let dir = tempfile::tempdir().expect("dir");
        let replica = dir.path().join("replica.db");
        fill(&replica, &Unlock::default());
        let n = random_key().expect("key");
        let slot = new_slot(&n, &pass("pw"), None).expect("slot");
        KeyFile::new(None, Some(slot.clone()))
            .write(&key_file_path(&replica))
            .expect("key file");
        let files = database_files(&replica);
        if step >= 1 {
            move_database(&files[0], None, &n).expect("move replica");
        }
        if step >= 2 {
            move_database(&files[1], None, &n).expect("move attachments");
        }
        if step >= 3 {
            crate::sync::credential::reseal(&replica, None, &n).expect("reseal");
        }
        if step == 1 {
            // Killed between writing the copy and renaming it: a leftover to ignore.
            std::fs::write(with_suffix(&files[1], ".encrypting"), b"half a copy").expect("w");
        }
        assert!(
            Client::open_unlocked(&replica, StoreOptions::default(), &with_pass("bad")).is_err(),
            "step {step}: a wrong passphrase finished the move"
        );
        check(&replica, &with_pass("pw"));
        assert_no_plaintext(dir.path());
        assert!(!key_info(&replica).expect("info").expect("encrypted").moving);
    }
}

#[test]
fn rekey_moves_to_a_new_key_and_an_interrupted_rekey_finishes_with_the_new_passphrase() {
    let dir = tempfile::tempdir().expect("dir");
    let replica = dir.path().join("replica.db");
    encrypt(&replica, &pass("old")).expect("encrypt");
    fill(&replica, &with_pass("old"));
    let before = std::fs::read(&replica).expect("read");
    rekey(&replica, &with_pass("old"), &pass("new")).expect("rekey");
    assert_ne!(std::fs::read(&replica).expect("read"), before);
    check(&replica, &with_pass("new"));
    assert!(matches!(
        unlock(&replica, &with_pass("old")),
        Err(VaultError::WrongPassphrase)
    ));

    // Interrupted after the replica moved, before the attachments and the credential did.
    let c = unlock(&replica, &with_pass("new"))
        .expect("unlock")
        .expect("key");
    let kf = KeyFile::read(&key_file_path(&replica))
        .expect("read")
        .expect("kf");
    let n = random_key().expect("key");
    let slot = new_slot(&n, &pass("newer"), Some(&c)).expect("slot");
    KeyFile::new(kf.key, Some(slot))
        .write(&key_file_path(&replica))
        .expect("write");
    move_database(&replica, Some(&c), &n).expect("move");
    check(&replica, &with_pass("newer"));
    assert_no_plaintext(dir.path());

    // A new passphrase for the same key leaves the files alone.
    let before = std::fs::read(&replica).expect("read");
    protect(&replica, &with_pass("newer"), &pass("newest")).expect("protect");
    assert_eq!(std::fs::read(&replica).expect("read"), before);
    check(&replica, &with_pass("newest"));
    assert!(unlock(&replica, &with_pass("newer")).is_err());
}

#[test]
fn the_keyring_opens_without_a_passphrase_and_the_passphrase_still_recovers() {
    keyring_core::set_default_store(Arc::new(
        Arc::into_inner(keyring_core::mock::Store::new().expect("mock")).expect("one"),
    ));
    let dir = tempfile::tempdir().expect("dir");
    let replica = dir.path().join("replica.db");
    let both = Protection {
        passphrase: Some(Zeroizing::new("recovery".into())),
        keyring: true,
    };
    encrypt(&replica, &both).expect("encrypt");
    fill(&replica, &Unlock::default());
    check(&replica, &Unlock::default());
    assert_eq!(
        key_info(&replica).expect("info"),
        Some(KeyInfo {
            passphrase: true,
            keyring: true,
            moving: false
        })
    );
    // Without the keyring (another machine's disk), only the passphrase opens it.
    let no_ring = Unlock {
        no_keyring: true,
        no_session: true,
        ..Unlock::default()
    };
    assert!(matches!(
        unlock(&replica, &no_ring),
        Err(VaultError::Locked)
    ));
    check(&replica, &with_pass("recovery"));

    // Shredding deletes the keyring entry and the key file, then the files.
    let kf = KeyFile::read(&key_file_path(&replica))
        .expect("read")
        .expect("kf");
    let account = kf
        .key
        .expect("slot")
        .wraps
        .iter()
        .find_map(|w| match w {
            Wrap::Keyring { account, .. } => Some(account.clone()),
            Wrap::Passphrase { .. } => None,
        })
        .expect("keyring wrap");
    assert!(keyring::read(&account).expect("read").is_some());
    let shredded = shred(&replica).expect("shred");
    assert!(shredded.keys_destroyed);
    assert!(keyring::read(&account).expect("read").is_none());
    assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
}

#[test]
fn shredding_a_plain_replica_removes_every_file() {
    let dir = tempfile::tempdir().expect("dir");
    let replica = dir.path().join("replica.db");
    fill(&replica, &Unlock::default());
    let out = shred(&replica).expect("shred");
    assert!(!out.keys_destroyed);
    assert!(out.files_removed >= 3, "{out:?}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
}

#[test]
fn a_damaged_key_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("dir");
    let replica = dir.path().join("replica.db");
    encrypt(&replica, &pass("pw")).expect("encrypt");
    std::fs::write(key_file_path(&replica), b"{ not json").expect("write");
    let e = unlock(&replica, &with_pass("pw")).expect_err("opens");
    assert!(e.to_string().contains("is not a key file"), "{e}");
}

#[cfg(target_os = "linux")]
#[test]
fn an_unlocked_key_kept_for_the_session_opens_until_it_is_forgotten() {
    let dir = tempfile::tempdir().expect("dir");
    let replica = dir.path().join("replica.db");
    let key = encrypt(&replica, &pass("pw")).expect("encrypt");
    let session_only = Unlock {
        no_keyring: true,
        ..Unlock::default()
    };
    assert!(matches!(
        unlock(&replica, &session_only),
        Err(VaultError::Locked)
    ));
    remember(&replica, &key, Duration::from_secs(60)).expect("remember");
    assert_eq!(unlock(&replica, &session_only).expect("unlock"), Some(key));
    forget(&replica).expect("forget");
    assert!(matches!(
        unlock(&replica, &session_only),
        Err(VaultError::Locked)
    ));
}

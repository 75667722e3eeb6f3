//! Enrolment with a one-time token, and the device credential file.
//!
//! IT runs `fieldsync-relay device enroll …`, which prints a token
//! ([`EnrolToken`]: relay address, certificate pin, one-time secret). [`enrol_replica`] redeems
//! it for this replica's device id:
//!
//! 1. it generates the device's long-term credential (256 random bits) and writes it, as
//!    *pending*, to the credential file next to the replica ([`credential_path`], mode 0600);
//! 2. it connects to the relay (pinning the certificate from the token) and sends
//!    [`Message::Enrol`] with the token and the credential; the relay binds the token to the
//!    device id, keeps a hash of the credential and marks the token used;
//! 3. on `Welcome` the credential becomes *confirmed*; every later sync presents it
//!    ([`load_credential`]).
//!
//! If the answer is lost, running it again with the same token resends the same pending
//! credential, which the relay accepts again; a refused token drops the pending credential and
//! leaves a confirmed one (an earlier enrolment) untouched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fieldsync_core::Role;
use fieldsync_core::protocol::client::ClientConfig as SessionConfig;
use fieldsync_core::protocol::{ClientSession, EnrolToken, ErrorCode, Message, SessionError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Connected, Link, Prepared, SyncConfig, SyncError};
use crate::{Client, vault};
use fieldsync_core::store::cipher::DatabaseKey;

/// The device credential as stored next to the replica.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The replica's device id the credential belongs to.
    pub device_id: Uuid,
    /// The credential the relay accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A credential sent with an enrolment token whose answer has not arrived yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// The relay it was enrolled with (`host:port`), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hide = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("Credential")
            .field("device_id", &self.device_id)
            .field("secret", &hide(&self.secret))
            .field("pending", &hide(&self.pending))
            .field("relay", &self.relay)
            .finish()
    }
}

/// The credential file of the replica at `replica`: the same path with `.credential`
/// appended (`replica.db` → `replica.db.credential`).
pub fn credential_path(replica: &Path) -> PathBuf {
    let mut s = replica.as_os_str().to_owned();
    s.push(".credential");
    PathBuf::from(s)
}

/// What sealed credential files are bound to.
const SEALED_AS: &str = "fieldsync device credential";

/// Reads a credential file; `None` when there is none. The credential of an encrypted replica
/// is sealed with its data key (`key`).
pub fn read_credential(
    path: &Path,
    key: Option<&DatabaseKey>,
) -> Result<Option<Credential>, SyncError> {
    let bytes = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(SyncError::Credential(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let plain = if vault::is_sealed(&bytes) {
        let key = key.ok_or_else(|| {
            SyncError::Credential(format!(
                "{} is encrypted: open the replica with its key",
                path.display()
            ))
        })?;
        vault::open_file(key, SEALED_AS, &bytes).ok_or_else(|| {
            SyncError::Credential(format!(
                "{} does not open with the replica's key",
                path.display()
            ))
        })?
    } else {
        zeroize::Zeroizing::new(bytes)
    };
    serde_json::from_slice(&plain).map(Some).map_err(|e| {
        SyncError::Credential(format!("{} is not a credential file: {e}", path.display()))
    })
}

/// Writes a credential file atomically, readable and writable by its owner only (0600 on
/// Unix), and flushed to disk before it replaces the old one; sealed with `key` when the
/// replica is encrypted.
pub fn write_credential(
    path: &Path,
    cred: &Credential,
    key: Option<&DatabaseKey>,
) -> Result<(), SyncError> {
    let json = zeroize::Zeroizing::new(
        serde_json::to_vec_pretty(cred).map_err(|e| SyncError::Credential(e.to_string()))?,
    );
    let bytes = match key {
        Some(k) => zeroize::Zeroizing::new(
            vault::seal_file(k, SEALED_AS, &json)
                .map_err(|e| SyncError::Credential(e.to_string()))?,
        ),
        None => json,
    };
    vault::keyfile::write_private(path, &bytes).map_err(|e| SyncError::Credential(e.to_string()))
}

/// Moves the credential of the replica at `replica` from key `from` (or plain) to `to`
/// (encrypting or rekeying a replica).
pub(crate) fn reseal(
    replica: &Path,
    from: Option<&DatabaseKey>,
    to: &DatabaseKey,
) -> Result<(), vault::VaultError> {
    let path = credential_path(replica);
    let fail = |e: SyncError| vault::VaultError::KeyFile(e.to_string());
    let cred = match read_credential(&path, Some(to)) {
        Ok(c) => c,
        Err(_) => read_credential(&path, from).map_err(fail)?,
    };
    if let Some(cred) = cred {
        write_credential(&path, &cred, Some(to)).map_err(fail)?;
    }
    Ok(())
}

/// The confirmed credential stored next to `client`'s replica, if it was enrolled with a
/// token (for [`SyncConfig::credential`]).
pub fn load_credential(client: &Client) -> Result<Option<String>, SyncError> {
    let path = credential_path(client.path());
    Ok(read_credential(&path, client.key())?
        .filter(|c| c.device_id == client.device_id())
        .and_then(|c| c.secret))
}

/// Stores `secret` as the confirmed credential of `client`'s replica (issued by IT without a
/// token), in the credential file beside it, sealed when the replica is encrypted; returns
/// the file.
pub fn save_credential(
    client: &Client,
    secret: &str,
    relay: Option<&str>,
) -> Result<PathBuf, SyncError> {
    let path = credential_path(client.path());
    let cred = Credential {
        device_id: client.device_id(),
        secret: Some(secret.to_string()),
        pending: None,
        relay: relay.map(str::to_string),
    };
    write_credential(&path, &cred, client.key())?;
    Ok(path)
}

/// What a successful enrolment granted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    /// The replica's device id, now bound to the token.
    pub device_id: Uuid,
    /// The relay address from the token.
    pub relay: String,
    /// The certificate pin from the token.
    pub pin: String,
    /// Scopes the relay granted.
    pub scopes: Vec<String>,
    /// Role the relay granted.
    pub role: Role,
    /// Where the credential is stored.
    pub credential_file: PathBuf,
}

/// Redeems `token` for `client`'s device id and stores the device's credential next to the
/// replica (see the module docs). `connect_timeout` bounds the connection attempt.
pub async fn enrol_replica(
    client: &Client,
    token: &EnrolToken,
    connect_timeout: Duration,
) -> Result<Enrolled, SyncError> {
    let path = credential_path(client.path());
    let device_id = client.device_id();
    let mut cred = read_credential(&path, client.key())?
        .filter(|c| c.device_id == device_id)
        .unwrap_or(Credential {
            device_id,
            secret: None,
            pending: None,
            relay: None,
        });
    let secret = match &cred.pending {
        Some(p) => p.clone(),
        None => {
            let mut raw = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
                .map_err(|_| SyncError::Credential("the system random generator failed".into()))?;
            hex::encode(raw)
        }
    };
    cred.pending = Some(secret.clone());
    write_credential(&path, &cred, client.key())?;
    let mut config = SyncConfig::new(token.relay.clone(), token.pin.clone());
    config.credential = Some(secret.clone());
    config.connect_timeout = connect_timeout;
    match enrol(client, &config, &token.secret).await {
        Ok((scopes, role)) => {
            cred.secret = Some(secret);
            cred.pending = None;
            cred.relay = Some(token.relay.clone());
            write_credential(&path, &cred, client.key())?;
            super::follow_grant(client, &scopes, role);
            Ok(Enrolled {
                device_id,
                relay: token.relay.clone(),
                pin: token.pin.clone(),
                scopes,
                role,
                credential_file: path,
            })
        }
        Err(e) => {
            if matches!(
                e,
                SyncError::Session(SessionError::Relay {
                    code: ErrorCode::Unauthorized,
                    ..
                })
            ) {
                // Refused for good: forget the pending credential (a confirmed one stays).
                cred.pending = None;
                if cred.secret.is_some() {
                    write_credential(&path, &cred, client.key())?;
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
            Err(e)
        }
    }
}

/// The protocol exchange of an enrolment: connects with `config` (whose
/// [`SyncConfig::credential`] is the device's new credential), sends [`Message::Enrol`] with
/// `token_secret`, and returns the scopes and role of the relay's `Welcome`. Stores nothing;
/// see [`enrol_replica`].
pub async fn enrol(
    client: &Client,
    config: &SyncConfig,
    token_secret: &str,
) -> Result<(Vec<String>, Role), SyncError> {
    let credential = config.credential.clone().ok_or_else(|| {
        SyncError::Config("enrolment needs the device's new credential in `credential`".into())
    })?;
    let prep = Prepared::new(config)?;
    let Connected { endpoint, conn, .. } = prep.connect(false).await?;
    let mut link = match Link::open(conn.clone()).await {
        Ok(l) => l,
        Err(e) => {
            conn.close(super::CLOSE_ERROR.into(), b"stream");
            return Err(e);
        }
    };
    let session = ClientSession::new(SessionConfig {
        agent: config.agent.clone(),
        credential: Some(credential),
        enrol_token: Some(token_secret.trim().to_ascii_lowercase()),
        ..SessionConfig::default()
    });
    let hello = client.with_store(|store| session.hello(store));
    let answer = async {
        link.send(&hello)?;
        match tokio::time::timeout(config.response_timeout, link.inbound.recv()).await {
            Err(_) => Err(SyncError::ResponseTimeout(config.response_timeout)),
            Ok(None) => Err(SyncError::Io("the connection's tasks ended".into())),
            Ok(Some(m)) => m,
        }
    }
    .await;
    let result = match answer {
        Ok(Message::Welcome { scopes, role, .. }) => Ok((scopes, role)),
        Ok(Message::Error { code, reason }) => {
            Err(SyncError::Session(SessionError::Relay { code, reason }))
        }
        Ok(other) => Err(SyncError::Session(SessionError::Protocol(format!(
            "expected Welcome, got {}",
            other.name()
        )))),
        Err(e) => Err(e),
    };
    match &result {
        Ok(_) => link.close(0, "enrolled").await,
        Err(e) => {
            let (code, reason) = super::close_reason(e);
            link.close(code, &reason).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    result
}

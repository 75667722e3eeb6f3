//! TLS for the relay: the self-signed certificate generated on first start, IT-supplied
//! certificates, SHA-256 fingerprints, and a client-side verifier that pins a fingerprint.
//!
//! Everything uses rustls with the **ring** provider explicitly (never the process default), and
//! TLS 1.3 only. A client pins the relay by the SHA-256 of its certificate's DER bytes (from the
//! enrolment bundle); the relay must still prove possession of the certificate's key in the
//! handshake, so a copied certificate is useless.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let cfg = fieldsync_relay::tls::client_config("ab12…")?;
//! let mut ep = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
//! ep.set_default_client_config(cfg);
//! let conn = ep.connect("203.0.113.7:4433".parse()?, fieldsync_relay::tls::SERVER_NAME)?.await?;
//! # Ok(()) }
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// The ALPN protocol of fieldsync's QUIC connections.
pub const ALPN: &[u8] = b"fieldsync/1";

/// The server name clients use; pinning ignores it, the generated certificate carries it.
pub const SERVER_NAME: &str = "fieldsync-relay";

/// File names of the generated certificate and key in the data directory.
pub const CERT_FILE: &str = "cert.der";
/// See [`CERT_FILE`].
pub const KEY_FILE: &str = "key.der";

/// Errors from certificate handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A certificate or key file holds nothing usable.
    #[error("{0}: {1}")]
    BadFile(PathBuf, String),
    /// Generating the certificate failed.
    #[error("generating the certificate: {0}")]
    Generate(String),
    /// A fingerprint is not 32 bytes of hex.
    #[error("bad certificate fingerprint `{0}`: expected 64 hex digits (colons allowed)")]
    BadFingerprint(String),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the rustls configuration.
    #[error("quic tls configuration: {0}")]
    Quic(String),
}

/// The relay's certificate chain and key.
#[derive(Debug)]
pub struct Identity {
    /// Certificate chain, end entity first.
    pub certs: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// The SHA-256 fingerprint (lower-case hex) of the end-entity certificate.
    pub fn fingerprint(&self) -> String {
        self.certs
            .first()
            .map(|c| fingerprint(c))
            .unwrap_or_default()
    }
}

/// SHA-256 of a certificate's DER bytes, lower-case hex without separators.
pub fn fingerprint(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

/// Parses a fingerprint written as 64 hex digits, optionally with `:` separators.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], TlsError> {
    let clean: String = s.trim().chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&clean).map_err(|_| TlsError::BadFingerprint(s.to_string()))?;
    bytes
        .try_into()
        .map_err(|_| TlsError::BadFingerprint(s.to_string()))
}

/// The ring crypto provider, used explicitly everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads the certificate and key given by IT (`cert`, `key`), or else the self-signed pair in
/// `data_dir`, generating it on first start (key file mode 0600).
pub fn load_or_create(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Identity, TlsError> {
    match (cert, key) {
        (Some(c), Some(k)) => load_files(c, k),
        _ => {
            let c = data_dir.join(CERT_FILE);
            let k = data_dir.join(KEY_FILE);
            // The key is written before the certificate: a key without a certificate is a
            // first start cut short (no fingerprint was ever published), so start over; a
            // certificate without its key is an error for IT to look at.
            if c.exists() {
                load_files(&c, &k)
            } else {
                generate(&c, &k)
            }
        }
    }
}

/// File in the data directory holding this relay node's QUIC secret (`0600`).
pub const NODE_SECRET_FILE: &str = "quic.key";

/// The keys of this relay node's QUIC stateless resets and connection ids, from a random
/// secret kept in its data directory ([`NODE_SECRET_FILE`], made at first start).
///
/// They survive a restart: a relay restarted on the same data recognises the old connections'
/// ids and answers their next packet with a reset the laptop accepts (each id's reset token is
/// a MAC under the reset key), so laptops reconnect at once instead of waiting out the idle
/// timeout. They are the node's own, not derived from the certificate that nodes on one
/// database share: a packet routed to another node must not draw a valid reset there.
pub struct NodeKeys {
    /// Key of the stateless reset tokens.
    pub reset: ring::hmac::Key,
    /// Key the connection ids are made and recognised with.
    pub connection_ids: u64,
    /// The node's name in `status` (hex digits derived from the secret: stable across
    /// restarts on the same data directory, different for each node).
    pub node: String,
}

impl NodeKeys {
    /// Loads the node's secret from `data_dir`, or makes one. A file of the wrong size is
    /// replaced (only resets of connections made before are lost).
    pub fn load_or_create(data_dir: &Path) -> Result<Self, TlsError> {
        let path = data_dir.join(NODE_SECRET_FILE);
        let secret = match fs::read(&path) {
            Ok(b) if b.len() == 32 => b,
            other => {
                if let Ok(b) = other {
                    tracing::warn!(path = %path.display(), len = b.len(), "replacing a QUIC secret of the wrong size");
                }
                let mut b = vec![0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).map_err(
                    |_| TlsError::Generate("no random bytes for the QUIC secret".into()),
                )?;
                write_file(&path, &b, true)?;
                b
            }
        };
        let master = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let reset = ring::hmac::sign(&master, b"fieldsync relay: QUIC stateless reset key");
        let ids = ring::hmac::sign(&master, b"fieldsync relay: QUIC connection id key");
        let node = ring::hmac::sign(&master, b"fieldsync relay: node name");
        let mut k = [0u8; 8];
        k.copy_from_slice(&ids.as_ref()[..8]);
        Ok(Self {
            reset: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref()),
            connection_ids: u64::from_le_bytes(k),
            node: hex::encode(&node.as_ref()[..6]),
        })
    }
}

/// Reads only the certificate of the relay (for `status`), without generating anything.
pub fn existing_fingerprint(data_dir: &Path, cert: Option<&Path>) -> Option<String> {
    let path = cert.map_or_else(|| data_dir.join(CERT_FILE), Path::to_path_buf);
    certificate_fingerprint(&path).ok()
}

/// The fingerprint of the (end-entity) certificate in the PEM or DER file `path`.
pub fn certificate_fingerprint(path: &Path) -> Result<String, TlsError> {
    let certs = read_certs(path)?;
    Ok(certs.first().map(|c| fingerprint(c)).unwrap_or_default())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|e| TlsError::Io(path.to_path_buf(), e))
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take(5)
        .eq(b"-----".iter())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = if is_pem(&bytes) {
        CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadFile(path.to_path_buf(), e.to_string()))?
    } else {
        vec![CertificateDer::from(bytes)]
    };
    if certs.is_empty() {
        return Err(TlsError::BadFile(
            path.to_path_buf(),
            "no certificate".into(),
        ));
    }
    Ok(certs)
}

fn load_files(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let certs = read_certs(cert)?;
    let bytes = read(key)?;
    let key_der = if is_pem(&bytes) {
        PrivateKeyDer::from_pem_slice(&bytes)
            .map_err(|e| TlsError::BadFile(key.to_path_buf(), e.to_string()))?
    } else {
        PrivateKeyDer::try_from(bytes)
            .map_err(|e| TlsError::BadFile(key.to_path_buf(), e.into()))?
    };
    // Check that rustls accepts the pair before the endpoint starts.
    provider()
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| TlsError::BadFile(key.to_path_buf(), e.to_string()))?;
    Ok(Identity {
        certs,
        key: key_der,
    })
}

fn generate(cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
    let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string(), "localhost".into()])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = ck.cert.der().clone();
    let key_bytes = ck.signing_key.serialize_der();
    write_file(key_path, &key_bytes, true)?;
    write_file(cert_path, &cert, false)?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed certificate");
    Ok(Identity {
        certs: vec![cert],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_bytes)),
    })
}

/// Writes a file atomically (temp file + rename), `0600` for secrets.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    let io = |e| TlsError::Io(path.to_path_buf(), e);
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// The rustls server configuration: TLS 1.3 only, ring, ALPN [`ALPN`].
pub fn server_crypto(identity: &Identity) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    // A laptop that was connected before resumes its TLS session and sends its first flight
    // (`Hello`, its waiting changes and a pull, all safe to receive twice: uploads are
    // idempotent, a pull only reads) as 0-RTT data, saving a round trip of a satellite link
    // on every reconnect. Tickets are kept here, in memory, and each is taken on use (a
    // replayed 0-RTT flight is refused); another node or a restarted relay does a full
    // handshake instead.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(RESUMABLE_SESSIONS);
    cfg.max_early_data_size = u32::MAX;
    cfg.send_half_rtt_data = true;
    Ok(cfg)
}

/// TLS sessions the relay keeps for resumption (two tickets per connection; a few hundred
/// bytes each).
const RESUMABLE_SESSIONS: usize = 16_384;

/// A [`ServerCertVerifier`] that accepts exactly one certificate, identified by the SHA-256 of
/// its DER bytes, and checks the handshake signature against that certificate's key.
#[derive(Debug)]
pub struct PinnedCertVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedCertVerifier {
    /// A verifier pinning `fingerprint` (64 hex digits, colons allowed).
    pub fn new(fingerprint: &str) -> Result<Self, TlsError> {
        Ok(Self::from_pin(parse_fingerprint(fingerprint)?))
    }

    /// A verifier pinning raw SHA-256 bytes.
    pub fn from_pin(pin: [u8; 32]) -> Self {
        Self {
            pin,
            provider: provider(),
        }
    }
}

/// Constant-time equality of two byte strings of equal length.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if ct_eq(Sha256::digest(end_entity.as_ref()).as_slice(), &self.pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls client configuration pinning `fingerprint`: TLS 1.3 only, ring, ALPN [`ALPN`].
pub fn client_crypto(fingerprint: &str) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = Arc::new(PinnedCertVerifier::new(fingerprint)?);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// A quinn client configuration pinning `fingerprint`, with keep-alives every 10 s and a
/// 30 s idle timeout (so a dead relay is noticed and the client reconnects).
pub fn client_config(fingerprint: &str) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_crypto(fingerprint)?)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        30_000,
    ))));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_quic_keys_survive_a_restart_and_are_its_own() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let first = NodeKeys::load_or_create(a.path()).unwrap();
        let again = NodeKeys::load_or_create(a.path()).unwrap();
        let other = NodeKeys::load_or_create(b.path()).unwrap();
        let tag = |k: &NodeKeys| ring::hmac::sign(&k.reset, b"cid").as_ref().to_vec();
        assert_eq!(tag(&first), tag(&again));
        assert_eq!(first.connection_ids, again.connection_ids);
        assert_ne!(tag(&first), tag(&other));
        assert_ne!(first.connection_ids, other.connection_ids);
        assert_eq!(first.node, again.node);
        assert_ne!(first.node, other.node);
        // A damaged file is replaced, not an error.
        fs::write(a.path().join(NODE_SECRET_FILE), b"short").unwrap();
        assert_ne!(
            tag(&NodeKeys::load_or_create(a.path()).unwrap()),
            tag(&first)
        );
    }

    #[test]
    fn generated_identity_is_reloaded_with_the_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), None, None).unwrap();
        let b = load_or_create(dir.path(), None, None).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        assert_eq!(
            existing_fingerprint(dir.path(), None).as_deref(),
            Some(a.fingerprint().as_str())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        server_crypto(&a).unwrap();
    }

    #[test]
    fn pem_files_supplied_by_it_are_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["relay.example".into()]).unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        fs::write(&c, ck.cert.pem()).unwrap();
        fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        let id = load_or_create(dir.path(), Some(&c), Some(&k)).unwrap();
        assert_eq!(id.fingerprint(), fingerprint(ck.cert.der()));
        fs::write(&k, b"garbage").unwrap();
        assert!(load_or_create(dir.path(), Some(&c), Some(&k)).is_err());
    }

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let fp = fingerprint(b"x");
        let pin = parse_fingerprint(&fp).unwrap();
        let colons: Vec<String> = pin.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")).unwrap(), pin);
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}

//! Certificate pinning for the relay connection.
//!
//! The relay runs with a self-signed certificate; clients are configured with the SHA-256
//! fingerprint of its DER encoding (`fieldsync-relay` prints it) and accept exactly that
//! certificate, whatever its names or validity dates say. The handshake signature is still
//! verified against the pinned certificate's key (ring provider), so a peer that merely
//! replays the certificate without its private key is refused.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// The ALPN protocol spoken over the QUIC connection.
pub const ALPN: &[u8] = b"fieldsync/1";

/// The SHA-256 fingerprint of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// Compares in constant time (the pin is not secret, but this costs nothing).
    fn matches(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Why a fingerprint string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid certificate fingerprint: {0} (expected 64 hex digits, the SHA-256 of the relay certificate's DER)"
)]
pub struct FingerprintError(String);

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    /// Parses 64 hex digits, case-insensitive; `:` and whitespace separators and a leading
    /// `sha256:` / `SHA256=` are tolerated (as printed by common tools).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = ["sha256:", "sha256=", "SHA256:", "SHA256="]
            .iter()
            .find_map(|p| t.strip_prefix(p))
            .unwrap_or(t);
        let digits: String = t
            .chars()
            .filter(|c| !(c.is_whitespace() || *c == ':'))
            .collect();
        if digits.len() != 64 {
            return Err(FingerprintError(format!(
                "{} hex digits instead of 64",
                digits.len()
            )));
        }
        let bytes = hex::decode(&digits).map_err(|e| FingerprintError(format!("not hex: {e}")))?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes);
        Ok(Self(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The certificate did not match the pin.
#[derive(Debug, thiserror::Error)]
#[error("relay certificate fingerprint {got} does not match the pinned {expected}")]
pub struct PinMismatch {
    /// The pinned fingerprint.
    pub expected: Fingerprint,
    /// The fingerprint the peer presented.
    pub got: Fingerprint,
}

/// A rustls server certificate verifier that accepts exactly one certificate, identified by
/// the SHA-256 of its DER encoding. Server names, chains and validity dates are not checked:
/// the pin is the trust decision. Signatures are checked with the ring provider.
#[derive(Debug)]
pub struct PinnedCertVerifier {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
    /// The last certificate seen that did not match, to explain the handshake failure.
    last_mismatch: Mutex<Option<Fingerprint>>,
}

impl PinnedCertVerifier {
    /// A verifier for `pin`, verifying handshake signatures with `provider`'s algorithms.
    pub fn new(pin: Fingerprint, provider: &CryptoProvider) -> Self {
        Self {
            pin,
            algorithms: provider.signature_verification_algorithms,
            last_mismatch: Mutex::new(None),
        }
    }

    /// The pinned fingerprint.
    pub fn pin(&self) -> Fingerprint {
        self.pin
    }

    /// The fingerprint of the last refused certificate, if any (cleared when read).
    pub fn take_mismatch(&self) -> Option<PinMismatch> {
        let got = match self.last_mismatch.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        }?;
        Some(PinMismatch {
            expected: self.pin,
            got,
        })
    }

    /// Checks a DER certificate against the pin.
    pub fn check(&self, der: &[u8]) -> Result<(), PinMismatch> {
        let got = Fingerprint::of(der);
        if got.matches(&self.pin) {
            Ok(())
        } else {
            Err(PinMismatch {
                expected: self.pin,
                got,
            })
        }
    }
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
        match self.check(end_entity.as_ref()) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(mismatch) => {
                tracing::warn!(%mismatch, "refusing the relay's certificate");
                match self.last_mismatch.lock() {
                    Ok(mut g) => *g = Some(mismatch.got),
                    Err(p) => *p.into_inner() = Some(mismatch.got),
                }
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(mismatch)),
                )))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A rustls client configuration (ring provider, TLS 1.3, ALPN [`ALPN`]) that trusts exactly
/// the pinned certificate; also returns the verifier to explain refusals.
///
/// Every configuration for one pin in this process is the same one (its verifier and its
/// store of TLS sessions are shared): a later connection, of the same sync or of the next,
/// resumes the session and sends its first flight as 0-RTT data. TLS only resumes a session
/// with the verifier that checked it, and a ticket is only ever offered to a relay behind the
/// same pin.
pub fn client_tls_config(
    pin: Fingerprint,
) -> Result<(rustls::ClientConfig, Arc<PinnedCertVerifier>), rustls::Error> {
    type Configs =
        std::collections::HashMap<[u8; 32], (rustls::ClientConfig, Arc<PinnedCertVerifier>)>;
    static CONFIGS: std::sync::OnceLock<Mutex<Configs>> = std::sync::OnceLock::new();
    let mut configs = CONFIGS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(made) = configs.get(&pin.0) {
        return Ok(made.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCertVerifier::new(pin, &provider));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    // Reconnects resume the TLS session (no certificate to send, and the first flight goes
    // as 0-RTT data): the tickets are kept for the life of the process.
    cfg.resumption = rustls::client::Resumption::store(Arc::new(
        rustls::client::ClientSessionMemoryCache::new(32),
    ));
    cfg.enable_early_data = true;
    configs.insert(pin.0, (cfg.clone(), verifier.clone()));
    Ok((cfg, verifier))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
        (ck.cert.der().clone(), ck.signing_key)
    }

    #[test]
    fn fingerprint_parses_common_spellings() {
        let der = b"not really a certificate";
        let fp = Fingerprint::of(der);
        let hex = fp.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex.parse::<Fingerprint>(), Ok(fp));
        assert_eq!(hex.to_uppercase().parse::<Fingerprint>(), Ok(fp));
        let colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(colons.join(":").parse::<Fingerprint>(), Ok(fp));
        assert_eq!(format!("sha256:{hex}").parse::<Fingerprint>(), Ok(fp));
        assert_eq!(format!("  {hex}\n").parse::<Fingerprint>(), Ok(fp));
        assert!(hex[..62].parse::<Fingerprint>().is_err());
        assert!(format!("{hex}00").parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
        assert!("".parse::<Fingerprint>().is_err());
    }

    #[test]
    fn verifier_accepts_only_the_pinned_certificate() {
        let (good, _) = self_signed("relay.example");
        let (other, _) = self_signed("relay.example");
        let provider = rustls::crypto::ring::default_provider();
        let v = PinnedCertVerifier::new(Fingerprint::of(good.as_ref()), &provider);
        let name = ServerName::try_from("anything.invalid").expect("name");
        let now = UnixTime::now();
        assert!(v.verify_server_cert(&good, &[], &name, &[], now).is_ok());
        // The server name is irrelevant to the pin.
        let ip = ServerName::try_from("127.0.0.1").expect("ip");
        assert!(v.verify_server_cert(&good, &[], &ip, &[], now).is_ok());
        let err = v
            .verify_server_cert(&other, &[], &name, &[], now)
            .expect_err("another certificate must be refused");
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
        let mismatch = v.take_mismatch().expect("mismatch recorded");
        assert_eq!(mismatch.got, Fingerprint::of(other.as_ref()));
        assert_eq!(mismatch.expected, v.pin());
        assert!(v.take_mismatch().is_none());
        // Presenting the pinned certificate with the wrong chain does not matter either.
        assert!(
            v.verify_server_cert(&good, std::slice::from_ref(&other), &name, &[], now)
                .is_ok()
        );
        assert!(!v.supported_verify_schemes().is_empty());
    }

    /// A QUIC server on 127.0.0.1 presenting `cert`, signing with `key` (which need not match).
    fn server(cert: CertificateDer<'static>, key: &rcgen::KeyPair) -> quinn::Endpoint {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        #[derive(Debug)]
        struct Fixed(Arc<rustls::sign::CertifiedKey>);
        impl rustls::server::ResolvesServerCert for Fixed {
            fn resolve(
                &self,
                _hello: rustls::server::ClientHello<'_>,
            ) -> Option<Arc<rustls::sign::CertifiedKey>> {
                Some(self.0.clone())
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = provider.key_provider.load_private_key(der).expect("key");
        // No key/certificate consistency check on purpose: the test needs a server that
        // replays a certificate without holding its private key.
        let ck = rustls::sign::CertifiedKey::new(vec![cert], signing);
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(Arc::new(ck))));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let qc = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic tls");
        let sc = quinn::ServerConfig::with_crypto(Arc::new(qc));
        let ep = quinn::Endpoint::server(sc, "127.0.0.1:0".parse().expect("addr")).expect("server");
        let accept = ep.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        let _ = conn.closed().await;
                    }
                });
            }
        });
        ep
    }

    async fn handshake(server: &quinn::Endpoint, pin: Fingerprint) -> Result<(), String> {
        let (cfg, _) = client_tls_config(pin).map_err(|e| e.to_string())?;
        let qc =
            quinn::crypto::rustls::QuicClientConfig::try_from(cfg).map_err(|e| e.to_string())?;
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr"))
            .map_err(|e| e.to_string())?;
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(qc)));
        let addr = server.local_addr().map_err(|e| e.to_string())?;
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            ep.connect(addr, "relay.example")
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| "timeout".to_string())?;
        if let Ok(c) = &r {
            c.close(0u32.into(), b"bye");
        }
        ep.wait_idle().await;
        r.map(|_| ())
    }

    #[tokio::test]
    async fn handshake_needs_the_pinned_certificate_and_its_key() {
        let (cert, key) = self_signed("relay.example");
        let (_, wrong_key) = self_signed("relay.example");
        let pin = Fingerprint::of(cert.as_ref());
        let honest = server(cert.clone(), &key);
        handshake(&honest, pin)
            .await
            .expect("pinned certificate accepted");
        let err = handshake(&honest, Fingerprint([1; 32]))
            .await
            .expect_err("another pin must refuse the certificate");
        assert!(err.contains("certificate"), "{err}");
        // Same certificate, but the server does not hold its private key.
        let impostor = server(cert, &wrong_key);
        handshake(&impostor, pin)
            .await
            .expect_err("a replayed certificate without its key must be refused");
    }

    #[test]
    fn client_config_speaks_fieldsync_alpn() {
        let (cfg, v) = client_tls_config(Fingerprint([7; 32])).expect("config");
        assert_eq!(cfg.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(v.pin(), Fingerprint([7; 32]));
        assert!(quinn::crypto::rustls::QuicClientConfig::try_from(cfg).is_ok());
    }
}

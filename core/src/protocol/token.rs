//! The one-time enrolment token that IT gives a device (`fieldsync-relay device enroll`
//! prints it; `fieldsync init --token` reads it). It carries everything the device needs to
//! reach and trust the relay and to prove it was enrolled, in one copy-pasteable word:
//!
//! ```text
//! fsyn1.<certificate pin: 64 hex digits>.<secret: 32 hex digits>.<relay address host:port>
//! ```
//!
//! The address comes last so it may contain any character a host name or an IPv6 literal
//! uses. The relay keeps only a hash of the secret; the token can be redeemed once (see
//! [`crate::protocol::Message::Enrol`]).

use std::fmt;
use std::str::FromStr;

/// The token's prefix, with the format version.
pub const TOKEN_PREFIX: &str = "fsyn1.";

/// Bytes of randomness in a token secret.
pub const TOKEN_SECRET_BYTES: usize = 16;

/// A parsed enrolment token.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolToken {
    /// The relay's address, `host:port`.
    pub relay: String,
    /// SHA-256 of the relay certificate's DER encoding, lower-case hex.
    pub pin: String,
    /// The one-time secret, lower-case hex.
    pub secret: String,
}

impl fmt::Debug for EnrolToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrolToken")
            .field("relay", &self.relay)
            .field("pin", &self.pin)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a fieldsync enrolment token: {0}")]
pub struct TokenError(String);

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl EnrolToken {
    /// A token for `relay` (`host:port`), `pin` (64 hex digits, `:` separators allowed) and
    /// `secret` (32 hex digits).
    pub fn new(relay: &str, pin: &str, secret: &str) -> Result<Self, TokenError> {
        let pin: String = pin
            .trim()
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        let secret = secret.trim().to_ascii_lowercase();
        let relay = relay.trim().to_string();
        if !is_hex(&pin, 64) {
            return Err(TokenError("the pin must be 64 hex digits".into()));
        }
        if !is_hex(&secret, TOKEN_SECRET_BYTES * 2) {
            return Err(TokenError(format!(
                "the secret must be {} hex digits",
                TOKEN_SECRET_BYTES * 2
            )));
        }
        let port_ok = relay
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok || relay.chars().any(char::is_whitespace) {
            return Err(TokenError(format!(
                "the relay address {relay:?} is not host:port"
            )));
        }
        Ok(Self { relay, pin, secret })
    }
}

impl fmt::Display for EnrolToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}{}.{}.{}",
            self.pin, self.secret, self.relay
        )
    }
}

impl FromStr for EnrolToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let rest = s
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| TokenError(format!("it does not start with `{TOKEN_PREFIX}`")))?;
        let mut parts = rest.splitn(3, '.');
        let (Some(pin), Some(secret), Some(relay)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError("it is cut short".into()));
        };
        Self::new(relay, pin, secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        let pin = "Ab".repeat(32);
        let secret = "0f".repeat(TOKEN_SECRET_BYTES);
        for relay in ["relay.example.com:4433", "127.0.0.1:9", "[::1]:4433"] {
            let t = EnrolToken::new(relay, &pin, &secret).unwrap();
            assert_eq!(t.pin, "ab".repeat(32));
            let text = t.to_string();
            assert!(text.starts_with(TOKEN_PREFIX));
            assert_eq!(text.parse::<EnrolToken>().unwrap(), t);
            assert_eq!(format!(" {text}\n").parse::<EnrolToken>().unwrap(), t);
        }
        assert!(!format!("{:?}", EnrolToken::new("h:1", &pin, &secret).unwrap()).contains(&secret));
        for bad in [
            String::new(),
            "fsyn1.".into(),
            format!("fsyn1.{pin}.{secret}"),
            format!("fsyn2.{pin}.{secret}.h:1"),
            format!("fsyn1.{}.{secret}.h:1", &pin[2..]),
            format!("fsyn1.{pin}.{}.h:1", &secret[2..]),
            format!("fsyn1.{pin}.{secret}.h"),
            format!("fsyn1.{pin}.{secret}.h:0"),
            format!("fsyn1.{pin}.{secret}.:4433"),
            format!("fsyn1.{pin}.zz{}.h:1", &secret[2..]),
        ] {
            assert!(bad.parse::<EnrolToken>().is_err(), "{bad:?} accepted");
        }
    }
}

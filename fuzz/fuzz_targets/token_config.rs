//! Text a person pastes or edits: an enrolment token (`fieldsync init --token`) and the
//! relay's TOML configuration (`fieldsync-relay serve --config`). The input, as UTF-8 (lossy),
//! goes to both parsers.
//!
//! Checked besides "never panics": a token that parses re-encodes (`Display`) to text that
//! parses to the same token and re-encodes to the same text, is the token `EnrolToken::new`
//! builds from its parts, holds a 64-digit pin and a 32-digit secret in lower-case hex and a
//! `host:port` address, and has a `Debug` that does not depend on the secret; a configuration
//! that parses and validates serialises back to TOML that parses to the same configuration,
//! and the values derived from it (token address, store options, session limits, database
//! path) are computed without a panic.
#![no_main]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::{fail, panic_message};
use fieldsync_core::protocol::EnrolToken;
use fieldsync_relay::RelayConfig;
use libfuzzer_sys::fuzz_target;

const TARGET: &str = "token_config";

fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => fail(
            TARGET,
            &format!("a panic escaped {what}: {}", panic_message(&*p)),
        ),
    }
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn token(s: &str) {
    let Ok(t) = guarded("EnrolToken::from_str", || s.parse::<EnrolToken>()) else {
        return;
    };
    let text = t.to_string();
    match text.parse::<EnrolToken>() {
        Ok(again) if again == t && again.to_string() == text => {}
        other => fail(
            TARGET,
            &format!("{s:?} parsed, but its encoding {text:?} parses to {other:?}"),
        ),
    }
    match EnrolToken::new(&t.relay, &t.pin, &t.secret) {
        Ok(built) if built == t => {}
        other => fail(
            TARGET,
            &format!("EnrolToken::new of {t:?}'s parts gives {other:?}"),
        ),
    }
    if !lower_hex(&t.pin, 64) || !lower_hex(&t.secret, 32) {
        fail(
            TARGET,
            &format!("{s:?} parsed into a pin or secret that is not lower-case hex"),
        );
    }
    let port_ok = t
        .relay
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok || t.relay.chars().any(char::is_whitespace) {
        fail(
            TARGET,
            &format!("{s:?} parsed into the address {:?}", t.relay),
        );
    }
    // Debug does not depend on the secret (the address and pin may contain its digits).
    let other = EnrolToken {
        secret: if t.secret == "0".repeat(32) {
            "1".repeat(32)
        } else {
            "0".repeat(32)
        },
        ..t.clone()
    };
    if format!("{t:?}") != format!("{other:?}") {
        fail(TARGET, "a token's Debug shows its secret");
    }
}

fn config(s: &str) {
    let Ok(cfg) = guarded("RelayConfig::from_toml_str", || {
        RelayConfig::from_toml_str(s)
    }) else {
        return;
    };
    guarded("the derived values", || {
        let _ = cfg.token_addr();
        let _ = cfg.store_options();
        let _ = cfg.limits();
        let _ = cfg.db_path();
    });
    let text = match toml::to_string(&cfg) {
        Ok(t) => t,
        Err(e) => fail(
            TARGET,
            &format!("a valid configuration does not serialise: {e}\n{s}"),
        ),
    };
    match RelayConfig::from_toml_str(&text) {
        Ok(again) if again == cfg => {}
        other => fail(
            TARGET,
            &format!("{s:?} parsed, its serialisation {text:?} parses to {other:?}"),
        ),
    }
}

fuzz_target!(
    init: {
        common::quiet_panics();
        let pin = "ab".repeat(32);
        let secret = "0f".repeat(16);
        common::write_seeds(
            TARGET,
            [
                format!("fsyn1.{pin}.{secret}.relay.example.com:4433"),
                format!("fsyn1.{pin}.{secret}.[::1]:4433"),
                include_str!("../../sync-server/relay.example.toml").to_string(),
                "data_dir = \"d\"\nlisten = \"127.0.0.1:9\"\npublic_addr = \"h:1\"\n\
                 metrics_listen = \"127.0.0.1:9464\"\nmetrics_token = \"0123456789abcdef\"\n\
                 open_enrollment = true\nopen_scopes = [\"north\"]\nopen_role = \"rep\"\n"
                    .to_string(),
            ]
            .into_iter()
            .map(String::into_bytes),
        );
    },
    |data: &[u8]| {
        let s = String::from_utf8_lossy(data);
        guarded("token", || token(&s));
        guarded("config", || config(&s));
    }
);

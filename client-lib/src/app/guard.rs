//! Every request's checks, in order: the `Host` header names this server (a rebound DNS
//! name does not), an `Origin` (required on anything that writes) and a `Sec-Fetch-Site` are
//! this server's own, and every request for data (`/api/…`) carries this launch's key as
//! `Authorization: Bearer KEY` (the event stream, which a browser opens without headers, as
//! `?key=KEY`). Every answer gets the security headers; none gets a CORS header.
//!
//! The key is never a cookie: browsers send cookies to every port of 127.0.0.1, so any other
//! server on the laptop would receive it. The printed address carries it in the fragment
//! (`/#key=…`, never sent to a server); the page keeps it in the tab's `sessionStorage`,
//! which is kept apart per origin, port included. The page's own code (HTML, scripts, styles:
//! the same bytes for everyone, compiled into the binary) is served without the key.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// The page may load only its own scripts, styles and images, talk only to this server, and
/// may not be framed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// A new random 256-bit key, as 64 hex digits.
pub(super) fn new_key() -> std::io::Result<String> {
    let mut key = [0u8; 32];
    crate::vault::fill_random(&mut key).map_err(std::io::Error::other)?;
    Ok(hex::encode(key))
}

pub(super) async fn guard(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let mut res = match check(&app, &req) {
        Ok(()) => next.run(req).await,
        Err((status, why)) => refuse(status, why),
    };
    secure(res.headers_mut());
    res
}

fn check(app: &AppState, req: &Request) -> Result<(), (StatusCode, &'static str)> {
    let headers = req.headers();
    let own = |v: &str| own_host(v, app.port);
    if !headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(own)
    {
        return Err((
            StatusCode::MISDIRECTED_REQUEST,
            "this app answers only at 127.0.0.1 or localhost on its own port",
        ));
    }
    match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        Some(Ok(origin))
            if origin
                .strip_prefix("http://")
                .is_some_and(|h| own(h) && !h.contains('/')) => {}
        Some(_) => {
            return Err((
                StatusCode::FORBIDDEN,
                "requests from other sites are refused",
            ));
        }
        None if !matches!(*req.method(), Method::GET | Method::HEAD) => {
            return Err((
                StatusCode::FORBIDDEN,
                "a change must come from the app's own page (no Origin header)",
            ));
        }
        None => {}
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err((
            StatusCode::FORBIDDEN,
            "requests from other sites are refused",
        ));
    }
    let path = req.uri().path();
    if !path.starts_with("/api/") {
        return Ok(());
    }
    let stream = req.method() == Method::GET && path == "/api/events";
    let key = bearer(headers).or_else(|| stream.then(|| query_key(req.uri().query())).flatten());
    if key.is_some_and(|k| same(k.as_bytes(), app.key.as_bytes())) {
        return Ok(());
    }
    Err((
        StatusCode::UNAUTHORIZED,
        "open the address `fieldsync app` printed (it carries this launch's key)",
    ))
}

/// `127.0.0.1:PORT` or `localhost:PORT`, nothing else.
fn own_host(host: &str, port: u16) -> bool {
    let Some((name, p)) = host.rsplit_once(':') else {
        return false;
    };
    p.parse::<u16>().ok() == Some(port)
        && (name == "127.0.0.1" || name.eq_ignore_ascii_case("localhost"))
}

/// The key from the `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// `key=…` in a query.
fn query_key(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(n, _)| *n == "key")
        .map(|(_, v)| v)
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refuse(status: StatusCode, why: &'static str) -> Response {
    let code = match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        _ => "refused",
    };
    (
        status,
        axum::Json(serde_json::json!({"error": why, "code": code})),
    )
        .into_response()
}

fn secure(h: &mut HeaderMap) {
    // An attached file is served with a stricter policy of its own (`files`).
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_keys_are_checked_exactly() {
        assert!(own_host("127.0.0.1:8080", 8080));
        assert!(own_host("LOCALHOST:8080", 8080));
        for bad in [
            "127.0.0.1:8081",
            "127.0.0.1",
            "evil.example:8080",
            "127.0.0.1.evil.example:8080",
            "[::1]:8080",
            "",
        ] {
            assert!(!own_host(bad, 8080), "{bad}");
        }
        assert_eq!(query_key(Some("a=1&key=abc")), Some("abc"));
        assert_eq!(query_key(Some("keys=abc")), None);
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer k1 "),
        );
        assert_eq!(bearer(&h), Some("k1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic k1"));
        assert_eq!(bearer(&h), None);
    }
}

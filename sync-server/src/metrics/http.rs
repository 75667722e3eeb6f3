//! The HTTP endpoint: `GET /metrics` (behind an optional bearer token) and `GET /healthz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::Metrics;
use crate::store::RelayStore;

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    store: RelayStore,
    log: watch::Receiver<u64>,
    /// SHA-256 of the bearer token `/metrics` requires, if any.
    token: Option<[u8; 32]>,
}

/// Whether the request carries the configured bearer token (compared as digests, in time
/// independent of where they differ).
fn authorized(headers: &HeaderMap, token: Option<&[u8; 32]>) -> bool {
    let Some(want) = token else {
        return true;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let got: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn metrics_page(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    if !authorized(&headers, s.token.as_ref()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response();
    }
    s.metrics
        .log_high_seq
        .set(i64::try_from(*s.log.borrow()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn health(State(s): State<HttpState>) -> (StatusCode, String) {
    if !s.metrics.accepting.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not accepting connections\n".into(),
        );
    }
    let store = s.store.clone();
    match tokio::task::spawn_blocking(move || store.high_seq()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n".into()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store check failed: {e}\n"),
        ),
    }
}

/// Binds `addr` and serves `/metrics` (behind `token` as a bearer token, when given) and
/// `/healthz` until `stop` turns true. Returns the bound address (port 0 picks one) and the
/// task.
pub async fn serve_http(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    store: RelayStore,
    token: Option<String>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the metrics address {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let state = HttpState {
        metrics,
        log: store.subscribe(),
        store,
        token: token.map(|t| Sha256::digest(t.as_bytes()).into()),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(health))
        .with_state(state);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|v| *v).await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok((bound, task))
}

//! The views the page reads: the session, Today, search, Customer 360 (the pre-visit
//! briefing) and single documents. Each is put together from the `Client`'s typed queries;
//! the answers are those types as JSON.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::reply::{ApiResult, blocking, parse_id, query};
use crate::{Briefing, CustomerId, CustomerRow, Identity, Quote, QuoteId, Today, Visit, VisitId};

#[derive(Serialize)]
pub(super) struct Session {
    identity: Identity,
    device_id: uuid::Uuid,
    relay: Option<String>,
    encrypted: bool,
    version: &'static str,
    lang: Option<String>,
    /// The scopes the relay granted this laptop (`*`: all), as it last said; `None` before
    /// the first enrolment or sync.
    scopes: Option<Vec<String>>,
}

/// `GET /api/session`: who edits, and how this replica is set up.
pub(super) async fn session(State(app): State<Arc<AppState>>) -> ApiResult<Json<Session>> {
    let a = app.clone();
    let (identity, scopes, device_id) = blocking(move || {
        Ok((
            a.client.identity()?,
            crate::sync::granted_scopes(&a.client)?,
            a.client.device_id(),
        ))
    })
    .await?;
    Ok(Json(Session {
        identity,
        scopes,
        device_id,
        relay: app.relay.clone(),
        encrypted: app.client.is_encrypted(),
        version: env!("CARGO_PKG_VERSION"),
        lang: app.lang.clone(),
    }))
}

#[derive(Deserialize)]
pub(super) struct TodayQuery {
    idle_days: Option<u32>,
}

/// `GET /api/today`: `Client::today`, customers idle for `idle_days` (default 30).
pub(super) async fn today(
    State(app): State<Arc<AppState>>,
    q: Result<Query<TodayQuery>, QueryRejection>,
) -> ApiResult<Json<Today>> {
    let q = query(q)?;
    let idle_days = q.idle_days.unwrap_or(30);
    blocking(move || Ok(Json(app.client.today(idle_days)?))).await
}

#[derive(Deserialize)]
pub(super) struct SearchQuery {
    q: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/customers?q=`: `Customers::search` (names, then phone numbers in any
/// notation); everything (by name) without a text.
pub(super) async fn customers(
    State(app): State<Arc<AppState>>,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<CustomerRow>>> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let text = q.q.unwrap_or_default();
    blocking(move || Ok(Json(app.client.customers().search(&text, limit)?))).await
}

/// `GET /api/customers/ID`: the pre-visit briefing (`Client::briefing`).
pub(super) async fn customer_360(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Briefing>> {
    let id: CustomerId = parse_id(&id)?;
    blocking(move || Ok(Json(app.client.briefing(id)?))).await
}

/// `GET /api/visits/ID`.
pub(super) async fn visit(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Visit>> {
    let id: VisitId = parse_id(&id)?;
    blocking(move || Ok(Json(app.client.visits().get(id)?))).await
}

/// `GET /api/quotes/ID`.
pub(super) async fn quote(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Quote>> {
    let id: QuoteId = parse_id(&id)?;
    blocking(move || Ok(Json(app.client.quotes().get(id)?))).await
}

//! The sync centre: where the background sync stands, what waits in each direction, the
//! changes the relay refused (with its reason, and a retry) and the fields in conflict (with
//! every value, and a way to keep one).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::reply::{ApiError, ApiResult, blocking, parse_id};
use crate::sync::{SyncState, load_status, session_started_at};
use crate::{BlobsWaiting, Client, DocId, DocKind, Document, Millis, OutboxSummary};

#[derive(Serialize)]
pub(super) struct Overview {
    /// `offline` when no relay is configured, else the background sync's state.
    state: String,
    relay: Option<String>,
    last_contact_at: Option<Millis>,
    last_sync_finished_at: Option<Millis>,
    last_error: Option<String>,
    progress: Progress,
    outbox: OutboxSummary,
    attachments: BlobsWaiting,
    refused: Vec<Refused>,
    conflicts: Vec<Conflict>,
}

#[derive(Default, Serialize)]
struct Progress {
    changes_sent: u64,
    changes_acked: u64,
    changes_rejected: u64,
    items_received: u64,
    bytes_sent: u64,
    bytes_received: u64,
}

#[derive(Serialize)]
struct Refused {
    doc_id: DocId,
    kind: Option<DocKind>,
    title: String,
    hash: String,
    reason: String,
    at: Millis,
}

#[derive(Serialize)]
struct Conflict {
    #[serde(flatten)]
    conflict: crate::DocConflict,
    title: String,
}

/// What people call a document: a customer's name, or the customer of a visit or quote.
pub(super) fn title_of(client: &Client, id: DocId) -> (Option<DocKind>, String) {
    let customer = |c| {
        client
            .customers()
            .get(c)
            .map(|c| c.name)
            .unwrap_or_default()
    };
    // A document whose creation the relay refused is known only from its refused changes.
    let doc = client.document(id).or_else(|e| {
        client
            .with_store(|s| s.quarantined_document(id))
            .ok()
            .flatten()
            .ok_or(e)
    });
    match doc {
        Ok(Document::Customer(c)) => (Some(DocKind::Customer), c.name),
        Ok(Document::Visit(v)) => (Some(DocKind::Visit), customer(v.customer_id)),
        Ok(Document::Quote(q)) => (
            Some(DocKind::Quote),
            match q.quote_no {
                Some(no) => format!("{no} · {}", customer(q.customer_id)),
                None => customer(q.customer_id),
            },
        ),
        Err(_) => (None, id.to_string()),
    }
}

/// `GET /api/sync`.
pub(super) async fn overview(State(app): State<Arc<AppState>>) -> ApiResult<Json<Overview>> {
    let live = app.sync_status();
    blocking(move || {
        let c = &app.client;
        let stored = load_status(c)?.unwrap_or_default();
        let mut progress = Progress::default();
        let (state, last_error) = match &live {
            None => ("offline".to_string(), stored.last_error.clone()),
            Some(s) => {
                progress = Progress {
                    changes_sent: s.changes_sent,
                    changes_acked: s.changes_acked,
                    changes_rejected: s.changes_rejected,
                    items_received: s.items_received,
                    bytes_sent: s.bytes_sent,
                    bytes_received: s.bytes_received,
                };
                (
                    super::live::state_name(s.state).to_string(),
                    s.last_error.clone().or(stored.last_error.clone()),
                )
            }
        };
        let last_sync_finished_at = live
            .as_ref()
            .and_then(|s| s.last_sync_finished_at)
            .max(stored.last_sync_finished_at);
        let connected_now = live
            .as_ref()
            .is_some_and(|s| matches!(s.state, SyncState::Syncing | SyncState::CaughtUp));
        let last_contact_at = if connected_now {
            Some(fieldsync_core::ids::now_millis())
        } else {
            session_started_at(c)?.max(last_sync_finished_at)
        };
        let refused = c
            .with_store(|s| s.quarantine())?
            .into_iter()
            .map(|q| {
                let (kind, title) = title_of(c, q.doc_id);
                Refused {
                    doc_id: q.doc_id,
                    kind,
                    title,
                    hash: q.hash,
                    reason: q.reason,
                    at: q.at,
                }
            })
            .collect();
        let conflicts = c
            .conflicts()?
            .into_iter()
            // The status lattice settled these; they are shown on the quote, not here.
            .filter(|x| !(x.kind == DocKind::Quote && x.path == "status"))
            .map(|x| Conflict {
                title: title_of(c, x.doc_id).1,
                conflict: x,
            })
            .collect();
        let outbox = c.outbox_summary()?;
        // Caught up, yet edits wait: they are on their way (or the connection died and the
        // sync has not noticed yet); not "up to date".
        let state = if state == "caught_up" && outbox.changes > 0 {
            "syncing".to_string()
        } else {
            state
        };
        Ok(Json(Overview {
            state,
            relay: app.relay.clone(),
            last_contact_at,
            last_sync_finished_at,
            last_error,
            progress,
            outbox,
            attachments: c.attachments().waiting()?,
            refused,
            conflicts,
        }))
    })
    .await
}

/// `POST /api/sync/now`: cuts a reconnect wait short.
pub(super) async fn sync_now(State(app): State<Arc<AppState>>) -> ApiResult<StatusCode> {
    let mut nudged = false;
    app.with_sync(|s| {
        s.nudge();
        nudged = true;
    });
    if nudged {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(ApiError::conflict(
            "no relay is configured on this laptop: `fieldsync init --token …` enrols it",
        ))
    }
}

#[derive(Deserialize)]
pub(super) struct RetryBody {
    doc_id: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Retried {
    changes: usize,
    stayed: usize,
}

/// `POST /api/refused/retry`: puts refused changes (all, or one document's) back into the
/// outbox for the next sync, and starts one.
pub(super) async fn retry(
    State(app): State<Arc<AppState>>,
    b: Result<Json<RetryBody>, JsonRejection>,
) -> ApiResult<Json<Retried>> {
    let Json(b) = b.map_err(|e| ApiError::invalid(e.body_text()))?;
    let doc: Option<DocId> = b.doc_id.as_deref().map(parse_id).transpose()?;
    let a = app.clone();
    let (changes, stayed) = blocking(move || Ok(a.client.retry_quarantined(doc)?)).await?;
    app.with_sync(crate::sync::SyncHandle::nudge);
    Ok(Json(Retried { changes, stayed }))
}

#[derive(Deserialize)]
pub(super) struct ResolveBody {
    doc_id: String,
    path: String,
    value: serde_json::Value,
}

/// `POST /api/conflicts/resolve`: keeps `value` at `path`, superseding the others.
pub(super) async fn resolve(
    State(app): State<Arc<AppState>>,
    b: Result<Json<ResolveBody>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(b) = b.map_err(|e| ApiError::invalid(e.body_text()))?;
    let doc: DocId = parse_id(&b.doc_id)?;
    blocking(move || {
        app.client.resolve_conflict(doc, &b.path, b.value)?;
        Ok(Json(serde_json::json!({})))
    })
    .await
}

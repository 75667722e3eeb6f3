//! Attachments in the app: photos taken at a visit, signed PDFs. The page lists a document's
//! attachments, uploads a file (its bytes go to the relay at the next sync, like the CLI's
//! `attach`), shows previews, and opens a file this laptop holds.
//!
//! Attached files are other people's bytes served from the app's own origin, so only images
//! and PDFs are shown inline; everything else downloads as a file, and every file is served
//! in a sandbox (no script of an attached HTML page could reach the API).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::reply::{ApiError, ApiResult, blocking, parse_id, query};
use crate::{AttachmentInfo, BlobHash, BytesState, DocId};

/// The largest file the page may upload in one request (a phone photo is a few MiB; larger
/// files are attached with `fieldsync customer|visit|quote attach`).
pub(super) const MAX_UPLOAD: usize = 64 << 20;

/// Media types shown in the page; anything else is served as a download.
const INLINE: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "application/pdf",
];

/// `GET /api/docs/ID/attachments`: the document's attachments (previews left out).
pub(super) async fn list(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<AttachmentInfo>>> {
    let doc: DocId = parse_id(&id)?;
    blocking(move || Ok(Json(app.client.attachments().list(doc)?))).await
}

#[derive(Deserialize)]
pub(super) struct UploadQuery {
    name: String,
    #[serde(default)]
    caption: String,
}

/// `POST /api/docs/ID/attachments?name=…&caption=…` with the file's bytes as the body.
pub(super) async fn upload(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    q: Result<Query<UploadQuery>, QueryRejection>,
    body: Bytes,
) -> ApiResult<Json<AttachmentInfo>> {
    let q = query(q)?;
    let doc: DocId = parse_id(&id)?;
    let name = q.name.trim().to_string();
    if name.is_empty() || name.contains(['/', '\\']) || name.len() > 255 {
        return Err(ApiError::invalid(
            "the file needs a plain name (no folders)",
        ));
    }
    blocking(move || {
        Ok(Json(app.client.attachments().attach_bytes(
            doc,
            &name,
            None,
            &body,
            q.caption.trim(),
        )?))
    })
    .await
}

/// Attachment `entry` of `doc` (removed ones are not listed), or a 404.
fn entry_of(app: &AppState, doc: DocId, entry: &str) -> Result<AttachmentInfo, ApiError> {
    app.client
        .attachments()
        .list(doc)?
        .into_iter()
        .find(|a| a.attachment.id == entry)
        .ok_or_else(|| ApiError::not_found("no such attachment on this document"))
}

/// `GET /api/docs/ID/attachments/ENTRY/preview`: the small JPEG preview made when an image
/// was attached (it travels with the document, so it shows before the file arrives).
pub(super) async fn preview(
    State(app): State<Arc<AppState>>,
    Path((id, entry)): Path<(String, String)>,
) -> ApiResult<Response> {
    let doc: DocId = parse_id(&id)?;
    blocking(
        move || match entry_of(&app, doc, &entry)?.attachment.preview {
            Some(jpeg) => Ok(([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response()),
            None => Err(ApiError::not_found("no preview for this attachment")),
        },
    )
    .await
}

/// `POST /api/docs/ID/attachments/ENTRY/fetch`: asks for the file at the next sync (the
/// background sync fetches it at once); `202`. Nothing happens if it is already here.
pub(super) async fn fetch(
    State(app): State<Arc<AppState>>,
    Path((id, entry)): Path<(String, String)>,
) -> ApiResult<axum::http::StatusCode> {
    let doc: DocId = parse_id(&id)?;
    blocking(move || {
        let a = entry_of(&app, doc, &entry)?;
        app.client
            .attachments()
            .fetch(doc, a.attachment.hash, a.attachment.size)?;
        Ok(axum::http::StatusCode::ACCEPTED)
    })
    .await
}

/// `GET /api/docs/ID/attachments/ENTRY`: the file, if this laptop holds it.
pub(super) async fn open(
    State(app): State<Arc<AppState>>,
    Path((id, entry)): Path<(String, String)>,
) -> ApiResult<Response> {
    let doc: DocId = parse_id(&id)?;
    blocking(move || {
        let a = entry_of(&app, doc, &entry)?;
        if !matches!(a.bytes, BytesState::Here { .. }) {
            return Err(ApiError::not_found(
                "the file is not on this laptop yet: it downloads at the next sync",
            ));
        }
        let hash: BlobHash = a.attachment.hash;
        let bytes = app.client.attachments().read(hash)?;
        let media = a.attachment.media_type.as_str();
        let (content_type, disposition) = if INLINE.contains(&media) {
            (media.to_string(), "inline")
        } else {
            ("application/octet-stream".to_string(), "attachment")
        };
        // An ASCII stand-in, and the real name (合同.pdf) percent-encoded (RFC 6266).
        let name = &a.attachment.name;
        let ascii: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .collect();
        let encoded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        Ok((
            [
                (header::CONTENT_TYPE, content_type),
                (
                    header::CONTENT_DISPOSITION,
                    format!("{disposition}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"),
                ),
                (header::CONTENT_SECURITY_POLICY, "sandbox".to_string()),
            ],
            bytes,
        )
            .into_response())
    })
    .await
}

//! Errors as the JSON API answers them: `{"error": "…", "code": "…"}` with a status that
//! says whose fault it was (see `docs/APP.md`).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fieldsync_core::model::ModelError;

use crate::ClientError;

/// A failed request.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: message.into(),
        }
    }

    pub(super) fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: message.into(),
        }
    }

    pub(super) fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }

    pub(super) fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: message.into(),
        }
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        let (status, code) = match &e {
            ClientError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ClientError::WrongKind { .. } | ClientError::InvalidInput(_) => {
                (StatusCode::BAD_REQUEST, "invalid")
            }
            ClientError::Model(ModelError::Forbidden { .. }) => (StatusCode::FORBIDDEN, "refused"),
            ClientError::Model(ModelError::NoSuchItem { .. }) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ClientError::Model(ModelError::Invalid(_)) => (StatusCode::BAD_REQUEST, "invalid"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl From<fieldsync_core::store::StoreError> for ApiError {
    fn from(e: fieldsync_core::store::StoreError) -> Self {
        ClientError::from(e).into()
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::internal(format!("the request's work failed: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(error = %self.message, "app request failed");
        }
        (
            self.status,
            Json(serde_json::json!({"error": self.message, "code": self.code})),
        )
            .into_response()
    }
}

/// A handler's result.
pub(super) type ApiResult<T> = Result<T, ApiError>;

/// Runs replica work (which blocks on SQLite) off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await?
}

/// A document id from the path or a body, or a clear 400.
pub(super) fn parse_id<T: From<crate::DocId>>(s: &str) -> Result<T, ApiError> {
    s.parse::<crate::DocId>()
        .map(T::from)
        .map_err(|_| ApiError::invalid(format!("{s:?} is not a document id")))
}

/// A query string, or a clear 400 saying what is wrong with it.
pub(super) fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|axum::extract::Query(t)| t).map_err(|e| {
        ApiError::invalid(format!(
            "the address's query is not valid: {}",
            e.body_text()
        ))
    })
}

//! One error type for every handler, one JSON shape for every error:
//! `{"error": {"code": "...", "message": "..."}}` with a stable `code`.

use axum::Json;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use imgfleet_core::filter::FilterError;
use imgfleet_core::ports::{EncoderError, StateError, VectorError};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_json`, `invalid_request`, `not_found`,
    /// `collection_exists`, `payload_too_large`, `unauthorized`, `unsupported_media_type`,
    /// `method_not_allowed`, `path_not_found`, `not_a_directory`, `path_not_allowed`,
    /// `job_finished`, `overloaded`, `unavailable`, `insufficient_storage`, `internal`.
    pub code: String,
    /// What went wrong and how to fix it.
    pub message: String,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// The request is well-formed but its values are not acceptable (422).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// A store's disk is full (507): reads still work, writes work again once space is made.
    pub fn storage_full(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            format!("the server's disk is full; free space and retry ({message})"),
        )
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        // A 503 is a dependency away for a moment (no GPU worker yet, Redis restarting): worth a
        // warning; any other 5xx is a fault of this server.
        if self.status == StatusCode::SERVICE_UNAVAILABLE || self.status == StatusCode::INSUFFICIENT_STORAGE {
            tracing::warn!(code = self.code, message = %self.message, "request refused: a dependency is unavailable");
        } else if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        (self.status, Json(body)).into_response()
    }
}

impl From<VectorError> for AppError {
    fn from(e: VectorError) -> Self {
        match e {
            VectorError::CollectionNotFound(name) => Self::not_found(format!(
                "collection {name:?} not found; GET /api/v1/collections lists them"
            )),
            VectorError::CollectionExists(name) => {
                Self::new(StatusCode::CONFLICT, "collection_exists", format!("collection {name:?} already exists"))
            }
            VectorError::Invalid(m) => Self::invalid(m),
            VectorError::Unavailable(m) => Self::unavailable(m),
            VectorError::StorageFull(m) => Self::storage_full(m),
            VectorError::Internal(m) => Self::internal(m),
        }
    }
}

impl From<StateError> for AppError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::JobNotFound(id) => Self::not_found(format!("job {id:?} not found")),
            StateError::JobExists(id) => Self::new(StatusCode::CONFLICT, "job_exists", format!("job {id:?} already exists")),
            StateError::Unavailable(m) => Self::unavailable(m),
            StateError::StorageFull(m) => Self::storage_full(m),
            StateError::Internal(m) => Self::internal(m),
        }
    }
}

impl From<EncoderError> for AppError {
    fn from(e: EncoderError) -> Self {
        match e {
            EncoderError::Invalid(m) => Self::invalid(m),
            EncoderError::Overloaded => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", "the encoder is busy; retry shortly")
            }
            EncoderError::Unavailable(m) => Self::unavailable(m),
            EncoderError::Internal(m) => Self::internal(m),
        }
    }
}

impl From<FilterError> for AppError {
    fn from(e: FilterError) -> Self {
        Self::invalid(e.to_string())
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// The code an error answer of `status` gets when nothing more specific is known.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        StatusCode::TOO_MANY_REQUESTS => "overloaded",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::INSUFFICIENT_STORAGE => "insufficient_storage",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

/// Middleware: an error answer that is not JSON yet (a rejection of the framework's own: a
/// path that does not decode, a body over the limit, …) gets the JSON error shape, with its
/// status, its text as the message, and its other headers (`Allow`, `Retry-After`) kept.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response;
    }
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Framework rejections are one line; anything longer is cut, not buffered whole.
    let text = axum::body::to_bytes(body, 4096).await.map(|b| String::from_utf8_lossy(&b).trim().to_owned()).unwrap_or_default();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { text };
    let mut shaped = AppError::new(status, code_for(status), message).into_response();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            shaped.headers_mut().append(name, value.clone());
        }
    }
    shaped
}

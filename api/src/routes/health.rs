//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{AppError, AppResult, ErrorBody};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// The stores (and the queue, where this server ingests) answer: ready to take requests.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(app): State<AppState>) -> AppResult<Json<Health>> {
    app.vectors
        .list_collections()
        .await
        .map_err(|e| AppError::unavailable(format!("vector store: {e}")))?;
    app.state
        .active_collection()
        .await
        .map_err(|e| AppError::unavailable(format!("state store: {e}")))?;
    if let Some(queue) = &app.queue {
        queue
            .depth(imgfleet_core::names::Stream::Scan)
            .await
            .map_err(|e| AppError::unavailable(format!("queue: {e}")))?;
    }
    Ok(Json(Health { status: "ready".into() }))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, body = String, content_type = "text/plain")))]
pub async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, imgfleet_core::metrics::TEXT_CONTENT_TYPE)], imgfleet_core::metrics::render())
}

//! imgfleet-api: the REST API of the seed (`/api/v1`), its extensions, OpenAPI, metrics.

pub mod config;
pub mod indexer;
/// Re-exported from `imgfleet_shared::http`, shared with the ML API.
pub use imgfleet_shared::http::{error, extract};
pub mod metrics;
pub mod routes;
pub mod state;
pub mod thumbnails;

use std::future::Future;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use crate::config::ApiConfig;
use crate::error::AppError;
pub use crate::state::{AppState, AppStateParts, Thumbnailer};

/// The whole HTTP surface. Built apart from `main` so tests can serve it on port 0.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .merge(routes::collections::routes())
        .merge(routes::search::routes())
        .merge(routes::images::routes())
        .merge(routes::duplicates::routes())
        .merge(routes::ingest::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    Router::new()
        .nest("/api/v1", api)
        .merge(routes::health::routes())
        .merge(routes::docs::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(|_| AppError::internal("the request handler panicked").into_response()))
        .with_state(state)
}

async fn not_found(request: Request) -> AppError {
    AppError::not_found(format!("no route for {} {}; see /docs", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request) -> AppError {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

async fn require_api_key(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if app.api_keys.is_empty() {
        return next.run(request).await;
    }
    let given = request.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    match given {
        Some(key) if app.api_keys.iter().any(|k| k == key) => next.run(request).await,
        Some(_) => AppError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the x-api-key header holds an unknown key").into_response(),
        None => AppError::new(StatusCode::UNAUTHORIZED, "unauthorized", "this server requires an x-api-key header").into_response(),
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    imgfleet_shared::http::ops::shutdown_signal().await;
}

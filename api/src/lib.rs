//! imgfleet-api: the REST API of the seed (`/api/v1`), its extensions, OpenAPI, metrics.

pub mod admission;
pub mod auth;
pub mod config;
pub mod contract;
/// Re-exported from `imgfleet_http`, shared with the ML API.
pub use imgfleet_http::{error, extract};
pub mod metrics;
pub mod originals;
pub mod routes;
pub mod state;
pub mod thumbnails;
pub mod ui;
pub mod watches;

use std::future::Future;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::IntoResponse;
use imgfleet_http::ServerLimits;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use crate::config::ApiConfig;
use crate::error::AppError;
pub use crate::state::{AppState, AppStateParts, Thumbnailer, Uploads};

/// The whole HTTP surface. Built apart from `main` so tests can serve it on port 0.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .merge(routes::collections::routes())
        .merge(routes::search::routes())
        .merge(routes::images::routes())
        .merge(routes::duplicates::routes())
        .merge(routes::ingest::routes())
        .merge(routes::upload::routes().layer(DefaultBodyLimit::disable()))
        .merge(routes::workers::routes())
        .merge(routes::watches::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_scope));
    Router::new()
        .nest("/api/v1", api)
        .merge(routes::health::routes())
        .merge(routes::docs::routes())
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(imgfleet_http::json_errors))
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

/// Serves `router` on `listener` with the default [`ServerLimits`] until `shutdown`
/// resolves, then lets in-flight requests finish within the grace period.
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    serve_with(listener, router, ServerLimits::default(), shutdown).await
}

/// [`serve`] within `limits`.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    imgfleet_http::server::serve(listener, router, limits, shutdown).await
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed by this call (see
/// [`imgfleet_http::ops::shutdown_signal`]).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    imgfleet_http::ops::shutdown_signal()
}

//! What every fleet process serves for operations (`/healthz`, `/metrics`), and how each one
//! stops: on SIGINT or SIGTERM it stops fetching, finishes and settles what it holds, then exits.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

/// `/healthz` (`{"status":"ok","process":..}`) and `/metrics` (Prometheus text), to merge
/// into a server's router.
pub fn router(process: &'static str) -> Router {
    Router::new()
        .route("/healthz", get(move || async move { axum::Json(json!({"status": "ok", "process": process})) }))
        .route("/metrics", get(metrics))
}

/// [`router`] as a whole server: any other path or method is an error in the JSON shape.
pub fn standalone(process: &'static str) -> Router {
    router(process)
        .fallback(|request: axum::extract::Request| async move {
            crate::AppError::not_found(format!("no route for {} {}", request.method(), request.uri().path()))
        })
        .layer(axum::middleware::from_fn(crate::json_errors))
}

async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, imgfleet_core::metrics::TEXT_CONTENT_TYPE)], imgfleet_core::metrics::render())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: call it before announcing the address, so that a signal sent as soon
/// as that line appears stops the process cleanly (before the handler exists, SIGTERM's default
/// action kills it).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let interrupt = signal(SignalKind::interrupt()).ok();
    async move {
        async fn recv(signal: Option<Signal>) {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = recv(term) => {},
            () = recv(interrupt) => {},
        }
        tracing::info!("shutdown signal received: stopping between batches");
    }
}

/// Binds `host:port`, prints `<process> listening on http://ADDR` (the line scripts and tests
/// wait for) and serves `router` within `limits` until `shutdown` resolves.
pub async fn serve(
    process: &'static str,
    host: std::net::IpAddr,
    port: u16,
    router: Router,
    limits: crate::ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = std::net::SocketAddr::new(host, port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    println!("{process} listening on http://{}", listener.local_addr()?);
    crate::server::serve(listener, router, limits, shutdown).await?;
    Ok(())
}

/// Waits for stage tasks to finish their current batch after a stop; after `grace` the rest is
/// aborted (their unsettled deliveries come back after the queue's ack wait: nothing is lost).
pub async fn join_stages(tasks: Vec<tokio::task::JoinHandle<()>>, grace: Duration) {
    let handles: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    if tokio::time::timeout(grace, futures::future::join_all(tasks)).await.is_err() {
        tracing::warn!(grace_secs = grace.as_secs(), "stages still busy after the grace period; stopping them");
        for handle in handles {
            handle.abort();
        }
    }
}

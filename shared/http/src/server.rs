//! Serving a router with bounds: a limit on open connections, a deadline for a request's
//! headers and one for its answer, and a graceful shutdown that ends within a grace period.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::error::AppError;

/// How a server bounds its clients. Every binary with an HTTP API takes these flags.
#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once; further ones wait in the kernel's accept queue.
    #[arg(long, env = "IMGFLEET_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (also how long an idle kept-alive
    /// connection stays open); slower clients are disconnected.
    #[arg(long, env = "IMGFLEET_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds from a request's headers to its answer (reading its body included); past it
    /// the answer is 503 `timeout`.
    #[arg(long, env = "IMGFLEET_REQUEST_TIMEOUT_SECS", default_value_t = 60)]
    pub request_timeout_secs: u64,
    /// Seconds requests in flight get to finish after a stop signal; then their connections
    /// are closed.
    #[arg(long, env = "IMGFLEET_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self { max_connections: 1024, header_timeout_secs: 10, request_timeout_secs: 60, shutdown_grace_secs: 30 }
    }
}

impl ServerLimits {
    fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs.max(1))
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }

    fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// Answers 503 `timeout` when the inner service has not answered within `limit`.
async fn request_deadline(limit: Duration, request: Request, next: Next) -> Response {
    let what = format!("{} {}", request.method(), request.uri().path());
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("{what} did not complete within {} s", limit.as_secs()),
        )
        .into_response(),
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets the
/// requests in flight finish for up to the grace period, and closes what is left.
pub async fn serve(listener: TcpListener, router: Router, limits: ServerLimits, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let deadline = limits.request_timeout();
    let router = router.layer(middleware::from_fn(move |request: Request, next: Next| request_deadline(deadline, request, next)));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // At the limit, stop accepting: new connections wait in the kernel's backlog.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut closing = closing.clone();
        let closing = async move {
            // The guard `wait_for` returns is dropped here, before anything else awaits.
            let _ = closing.wait_for(|closing| *closing).await;
        };
        let header_timeout = limits.header_timeout();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = closing => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let grace = limits.shutdown_grace();
    if tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(open = connections.len(), grace_secs = grace.as_secs(), "requests still running after the grace period; closing their connections");
        connections.shutdown().await;
    }
    Ok(())
}

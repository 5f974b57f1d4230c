//! API metrics: requests by route, method and status, and their latency.

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use imgfleet_core::metrics::register;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

pub struct ApiMetrics {
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    /// Time to answer a search, by what it searches with (`text`, `image`, `like`, `embedding`).
    pub search_seconds: HistogramVec,
}

pub static METRICS: LazyLock<ApiMetrics> = LazyLock::new(|| ApiMetrics {
    requests: register(
        IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests answered, by route, method and status"),
            &["route", "method", "status"],
        )
        .expect("valid metric"),
    ),
    latency: register(
        HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency, by route")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["route"],
        )
        .expect("valid metric"),
    ),
    search_seconds: {
        let search_seconds = register(
            HistogramVec::new(
                HistogramOpts::new("search_duration_seconds", "Time to answer a search that succeeded, by kind (text, image, like, embedding)")
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["kind"],
            )
            .expect("valid metric"),
        );
        // Series from the start: the first search of a kind then counts in its rates.
        for kind in ["text", "image", "like", "embedding"] {
            search_seconds.with_label_values(&[kind]);
        }
        search_seconds
    },
});

/// A bounded label: the standard methods by name, anything else `other` (a made-up method
/// must not create a series).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Middleware: counts and times every request under its route template (never the raw path,
/// which would make one series per id).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let start = Instant::now();
    let response = next.run(request).await;
    METRICS.latency.with_label_values(&[&route]).observe(start.elapsed().as_secs_f64());
    METRICS.requests.with_label_values(&[&route, method, response.status().as_str()]).inc();
    response
}
